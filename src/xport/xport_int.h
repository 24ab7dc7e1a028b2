/* Transport internals shared by its files: peers, send ops, receive slots, arenas, the xport itself. */
#ifndef RDAG_XPORT_INT_H
#define RDAG_XPORT_INT_H

#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rcache/rcache.h"
#include "util/err.h"
#include "util/log.h"
#include "xport/xport.h"

#define XP_GRAN 64u                /* arena slot granularity (bytes): offsets and lengths */
#define XP_CTL_BUF 512u            /* buffer of an internal message (credit, ping, answer, ...) */
#define XP_EXC_TEXT 200u           /* bytes of a refusal's text we keep */
#define XP_REFUSALS 8u             /* refusal replies queued per peer */
#define XP_RX_SMALL 8u             /* tensors described inside a receive slot without allocation */
#define XP_TX_SMALL 4u             /* tensors described inside a send op without allocation */
#define XP_HS_VERSION 1u           /* transport protocol version spoken in handshakes */
#define XP_EXTRA_RECV 2u           /* receive buffers per peer beyond its credits: ping + pong */
#define XP_CLOSE_DRAIN_MS 2000u    /* xport_close waits this long at most for sends in flight */

/* Completion contexts are pointers to our own objects, tagged in their low two bits. */
enum xp_ctx_tag {
	XP_CTX_SEND = 0u,  /* struct xp_op: its message send */
	XP_CTX_WRITE = 1u, /* struct xp_stensor: one write of that tensor */
	XP_CTX_RECV = 2u,  /* struct xp_recv: a posted receive */
	XP_CTX_MASK = 3u,
};

/* How the receiver learns that written bytes have landed before it reads the control message. */
enum xp_vis {
	XP_VIS_SAW = 1,       /* FAB_CAP_ORDER_SAW: the message may follow the writes at once */
	XP_VIS_DELIVERED = 2, /* FAB_CAP_WRITE_DELIVERED: the message waits for the writes' completions */
};

enum xp_peer_state { XP_PEER_CONNECTING = 0, XP_PEER_UP, XP_PEER_DEAD };

enum xp_op_kind {
	XOP_USER = 1, /* a caller's message (user op pool) */
	XOP_CTL,      /* a transport message (internal op pool) */
};

/* Rendezvous progress of one out-of-line tensor on the sending side. */
enum xp_rdv_tx_state {
	XRT_NONE = 0,     /* not a rendezvous tensor */
	XRT_WAIT_ANSWER,  /* the receiver has not said where to write yet */
	XRT_WRITING,      /* answer known: writes being posted */
	XRT_DONE_DUE,     /* written: RDV_DONE must be sent */
	XRT_FINISHED,     /* RDV_DONE posted */
};

struct xp_op;
struct xp_peer;

/* One tensor of a send op. */
struct xp_stensor {
	struct xp_op *op;
	const uint8_t *data;
	uint64_t len;
	uint8_t loc;            /* enum wire_loc chosen */
	uint8_t rdv;            /* enum xp_rdv_tx_state */
	uint32_t index;
	uint32_t writes_out;    /* posted writes not completed */
	uint64_t posted;        /* bytes of writes posted */
	uint64_t wcharged;      /* bytes of its writes counted in the peer's window, not yet given back */
	uint64_t raddr, rkey;   /* where the bytes go (slot or rendezvous destination) */
	uint64_t token;         /* rendezvous: the answer's request id, echoed in RDV_DONE */
	int32_t rstatus;        /* rendezvous: status RDV_DONE reports (0, or why it was not written) */
	struct rcache_reg *reg; /* registration of data (eager and rendezvous) */
} __attribute__((aligned(8)));

/* A send: a caller's message (XOP_USER) or a transport message (XOP_CTL). */
struct xp_op {
	struct xp_op *next;     /* free list, backlog, or done list */
	struct xp_op *rnext;    /* peer's list of ops in rendezvous */
	struct xp_peer *peer;
	uint8_t kind;           /* enum xp_op_kind */
	uint8_t queued;         /* in the peer's backlog */
	uint8_t in_rdv;         /* in the peer's rendezvous list */
	uint8_t sent;           /* the message went out (posted or injected) */
	uint8_t failed;         /* finished early with an error (peer dead, close) */
	uint8_t cb_state;       /* 0: callback not yet due, 1: on the done list, 2: called */
	uint8_t needs_credit;   /* consumes a credit (all but pings and pongs) */
	uint8_t min_credits;    /* credits the peer must have for it to go (1 or 2) */
	uint8_t *buf;           /* registered send buffer */
	void *desc;
	size_t cap, len;
	uint32_t send_out;      /* 1 while the posted send has not completed */
	uint32_t writes_out;    /* writes of all its tensors not completed */
	uint32_t eager_left;    /* eager tensors with writes still to post */
	uint32_t rdv_left;      /* rendezvous tensors not finished */
	uint32_t ntensors;
	struct xp_stensor *t;   /* t_small or allocated */
	uint64_t req_id;
	xport_done_fn done;
	void *done_arg;
	int status;
	struct xp_stensor t_small[XP_TX_SMALL];
} __attribute__((aligned(8)));

/* Receiving side of a rendezvous tensor. */
enum xp_rdv_rx_state { XRR_ANSWER_DUE = 1, XRR_ANSWERED, XRR_LANDED };

struct xp_rdv_in {
	struct xp_rdv_in *next;  /* peer's pending list (answer due / awaiting RDV_DONE) */
	struct xp_rdv_in *mnext; /* the message's list (for release) */
	struct xp_recv *r;
	uint32_t index;
	uint8_t state;
	uint8_t pending;         /* on the peer's pending list */
	uint64_t token;
	void *ptr;
	uint64_t len;
	struct rcache_reg *reg;
};

enum xp_recv_state {
	XRS_IDLE = 0,    /* not posted (to be posted) */
	XRS_POSTED,      /* posted to the endpoint */
	XRS_PARKED,      /* message waiting for rendezvous data */
	XRS_DELIVERING,  /* on the delivery list */
	XRS_USER,        /* owned by the receiver until xport_release */
};

/* One receive buffer of the shared pool, and the message it holds. */
struct xp_recv {
	struct xport_rx rx;      /* public part, first */
	struct xp_recv *next;    /* repost / delivery list */
	struct xp_peer *peer;    /* sender while holding a message */
	uint8_t *buf;
	void *desc;
	uint8_t state;           /* enum xp_recv_state */
	uint8_t counted;         /* consumed one of the peer's credits */
	uint32_t rdv_left;       /* rendezvous tensors not landed */
	struct xp_rdv_in *rdv;   /* its rendezvous tensors */
	struct xport_rx_tensor t_small[XP_RX_SMALL];
} __attribute__((aligned(8)));

/* The landing arena this worker granted to a peer, and the mirror of the peer's ring in it. */
struct xp_arena_in {
	uint8_t *base;           /* mapped twice: [base, base + 2 * size) */
	size_t size;             /* ring size, a multiple of the page size */
	struct fab_mr mr;
	int registered;
	size_t ngran;            /* size / XP_GRAN */
	uint64_t *held;          /* granules named by a message not yet released */
	uint64_t *released;      /* granules released ahead of the tail */
	uint64_t tail;           /* ring position (cumulative bytes) up to which all is released */
	uint64_t reported;       /* tail last sent to the peer */
};

/* The landing arena a peer granted to this worker: our ring in it. */
struct xp_arena_out {
	uint64_t addr, key, size; /* size 0: no arena, eager disabled */
	uint64_t head;            /* ring position of the next allocation */
	uint64_t tail;            /* released up to here, as the peer reported */
};

struct xp_refusal {
	uint64_t req_id;
	int32_t code;
	char text[XP_EXC_TEXT];
};

struct xp_peer {
	uint32_t rank;
	uint8_t state;            /* enum xp_peer_state */
	uint8_t hs_seen;          /* its first handshake arrived */
	uint8_t ping_out;         /* our ping (or opening handshake) awaits its answer */
	uint8_t ping_due;
	uint8_t pong_due;
	uint8_t dirty;            /* on the xport's work list */
	uint8_t dead_event;       /* on the xport's dead-peer event list */
	uint8_t rdv_hint;         /* report our arena tail soon (it used rendezvous, or we are idle) */
	uint8_t hs_sent;          /* our opening handshake went out */
	uint8_t ping_seen;        /* its opening handshake (or a keepalive) arrived */
	uint32_t credits;         /* messages we may still send it */
	uint32_t owed;            /* its buffers reposted and not yet returned */
	uint32_t held;            /* its messages holding buffers here */
	uint32_t max_msg;         /* largest message it receives */
	uint64_t wbytes;          /* bytes of RDMA writes to it posted and not completed */
	uint8_t wwait;            /* a write waits for room in the window: completions make it dirty */
	uint16_t offer;           /* its handshake's WIRE_HS_* offer bits (ACK masked off) */
	uint32_t nrefusals;
	struct xp_refusal refusals[XP_REFUSALS];
	struct xp_arena_in ain;
	struct xp_arena_out aout;
	struct xp_op *bl_head, *bl_tail; /* backlog: ops waiting for writes, credits or the tx queue */
	struct xp_op *rdv_ops;    /* user ops whose rendezvous tensors are in progress */
	struct xp_rdv_in *rdv_in; /* incoming rendezvous tensors: answer due, or awaiting RDV_DONE */
	uint64_t next_token;
	uint64_t last_rx_ns;      /* when anything last arrived from it */
	uint64_t ping_ns;         /* when our outstanding ping left */
	struct xp_peer *dirty_next;
	struct xp_peer *dead_next;
	char name[64];
	char why[320];            /* why it was declared dead */
};

#define XP_RDV_CACHE_SLOTS 16

struct xport {
	int lock;                 /* xp_lock */
	uint64_t now;             /* coarse time of the current progress pass */
	struct fab_ep *ep;
	const struct fab_attr *attr;
	struct xport_opts o;
	enum xp_vis vis;
	uint32_t rank, world;
	uint32_t credits;         /* per peer, in force */
	uint32_t credit_thresh;   /* owed credits that justify an explicit CREDIT message */
	uint64_t job_token;
	int open;                 /* handshakes done */
	int closing;
	int can_inject;
	int wake_fd;              /* eventfd that xport_wake writes; -1 without one */
	atomic_int sleeping;      /* threads blocked in xport_progress's poll() */
	size_t inject_size;
	size_t max_write;         /* largest single write: the provider's, or the window's chunk */
	size_t write_window;      /* bytes of writes in flight per peer (0: unbounded) */
	uint64_t ka_ns, timeout_ns;

	struct xp_peer *peers;    /* world entries (ours unused) */
	struct xp_peer *dirty;    /* peers with work to flush */
	struct xp_peer *dead_events;

	struct rcache *rc;
	int own_rcache;

	/* freed rendezvous buffers kept for the next ones of the same size (xp_lock) */
	struct { void *ptr; size_t cap; } rdvc[XP_RDV_CACHE_SLOTS];
	unsigned nrdvc;
	size_t rdvc_bytes;

	/* receive pool */
	uint8_t *rx_mem;
	size_t rx_mem_len;
	struct fab_mr rx_mr;
	int rx_registered;
	struct xp_recv *rx;
	uint32_t nrx;
	uint32_t posted;
	struct xp_recv *repost;   /* buffers to post again */
	struct xp_recv *deliver_head, *deliver_tail;

	/* send pools */
	uint8_t *tx_mem;
	size_t tx_mem_len;
	struct fab_mr tx_mr;
	int tx_registered;
	struct xp_op *ops;        /* user ops, then control ops */
	uint32_t nuser, nctl;
	uint32_t ctl_inuse;       /* control ops taken from the pool */
	struct xp_op *user_free, *ctl_free;
	struct xp_op *done_head, *done_tail;

	uint64_t timer_ns;        /* last timer pass */
	unsigned poll_count;
	struct xport_stats st;
};

/* ---- locking and time ------------------------------------------------------------------- */

/*
 * The xport's lock: a test-and-test-and-set spinlock that yields the CPU after a short spin.
 * Critical sections are short (no callbacks, no blocking), and the uncontended cost (one atomic
 * exchange, one store) matters: it is taken several times per message and per empty poll.
 */
static inline void xp_lock(struct xport *x)
{
	while (__atomic_exchange_n(&x->lock, 1, __ATOMIC_ACQUIRE)) {
		unsigned spins = 0;

		while (__atomic_load_n(&x->lock, __ATOMIC_RELAXED)) {
			if (++spins < 128) {
#if defined(__x86_64__) || defined(__i386__)
				__builtin_ia32_pause();
#endif
			} else {
				sched_yield();
				spins = 0;
			}
		}
	}
}
static inline void xp_unlock(struct xport *x)
{
	__atomic_store_n(&x->lock, 0, __ATOMIC_RELEASE);
}

/* Monotonic time in ns (precise). */
uint64_t xport_now_ns(void);
/* Monotonic time in ns at the clock tick's resolution (ms): cheap, for keepalive timing. */
uint64_t xport_coarse_ns(void);

/* ---- arena.c ----------------------------------------------------------------------------- */

/* Maps an arena of size bytes (rounded up to pages) twice in a row and registers it. */
int xport_arena_create(struct xport *x, struct xp_arena_in *a, size_t size);
/* Deregisters the arena (before fab_close); xport_arena_unmap frees its memory (after it). */
void xport_arena_destroy(struct xport *x, struct xp_arena_in *a);
void xport_arena_unmap(struct xp_arena_in *a);
/*
 * Checks a slot a peer named (offset, length, nbytes) against its arena and marks it held.
 * 0, or RDAG_EACCES with why filled (outside the arena, outside the ring window, overlapping).
 */
int xport_arena_claim(struct xp_arena_in *a, uint64_t offset, uint64_t length, uint64_t nbytes,
		      char *why, size_t whylen);
/* Undoes a claim (a message refused after some of its slots were claimed). */
void xport_arena_unclaim(struct xp_arena_in *a, uint64_t offset, uint64_t length);
/* Releases a claimed slot and advances the tail over what is now released in ring order. */
void xport_arena_release(struct xp_arena_in *a, uint64_t offset, uint64_t length);
/* Allocates len bytes in the peer's ring; the offset in *off. 0 or RDAG_ENOSPC. */
int xport_ring_alloc(struct xp_arena_out *r, uint64_t len, uint64_t *off);
/* Rounds a tensor length up to the slot granularity. */
static inline uint64_t xport_slot_len(uint64_t n)
{
	return (n + XP_GRAN - 1) & ~(uint64_t)(XP_GRAN - 1);
}

/* ---- send.c ------------------------------------------------------------------------------ */

/* Marks the peer as having work for xport_flush(). */
void xport_dirty(struct xport *x, struct xp_peer *p);
/* Posts what can go now for every dirty peer (writes, control messages, backlog, credits). */
void xport_flush(struct xport *x);
/* Completion of one of our sends / writes (context already untagged). */
void xport_send_done(struct xport *x, struct xp_op *op, int status, const char *errmsg);
void xport_write_done(struct xport *x, struct xp_stensor *t, int status, const char *errmsg);
/* RDV_ANSWER from p: start writing the named tensor. */
void xport_rdv_answer(struct xport *x, struct xp_peer *p, const struct wire_msg *m);
/* Finishes op with status (callback on the done list) and frees it once the fabric is done with it. */
void xport_op_fail(struct xport *x, struct xp_op *op, int status);
/* Frees op if finished and no completion is outstanding; queues its callback if due. */
void xport_op_check(struct xport *x, struct xp_op *op);
/* Returns an op to its pool (releasing its registrations). */
void xport_op_free(struct xport *x, struct xp_op *op);
/* Takes a control op from the internal pool (NULL if none is free). */
struct xp_op *xport_ctl_get(struct xport *x, struct xp_peer *p);
/* Posts a control op built in op->buf (no credits needed for pings/pongs). 0 or a code (op freed on error). */
int xport_ctl_post(struct xport *x, struct xp_op *op);
/* Sends our handshake to p (ack: answering its ping). 0, RDAG_EAGAIN (retry later) or a code. */
int xport_send_hs(struct xport *x, struct xp_peer *p, int ack);

/* ---- recv.c ------------------------------------------------------------------------------ */

/* Posts every idle receive buffer. */
void xport_post_receives(struct xport *x);
/* A receive completion (context already untagged). */
void xport_recv_done(struct xport *x, struct xp_recv *r, const struct fab_cqe *c);
/* Drops what a dead peer's messages hold here (parked messages, pending rendezvous). */
void xport_recv_peer_dead(struct xport *x, struct xp_peer *p);
/* Returns the receive buffer (and everything the message held) to the pool. */
void xport_recv_free(struct xport *x, struct xp_recv *r);
/* Frees the rendezvous buffers kept for reuse (at close). */
void xport_rdv_cache_drain(struct xport *x);
/* Flushes the rendezvous answers due to p (with credits). 0, or RDAG_EAGAIN to stop flushing p. */
int xport_flush_answers(struct xport *x, struct xp_peer *p);

/* ---- xport.c ----------------------------------------------------------------------------- */

/* Declares p dead: fails everything pending towards it, queues the dead-peer event. */
void xport_peer_fail(struct xport *x, struct xp_peer *p, int code, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
/* The error to report for an operation on dead peer p (records the detailed message). */
int xport_peer_err(struct xp_peer *p);

/* Header bytes 14-15 (credits, little-endian), as docs/wire-format.md lays out the header. */
static inline void xport_hdr_set_credits(uint8_t *msg, uint16_t credits)
{
	msg[14] = (uint8_t)(credits & 0xffu);
	msg[15] = (uint8_t)(credits >> 8);
}
/* Header bytes 12-13 (sending worker). */
static inline void xport_hdr_set_src(uint8_t *msg, uint16_t src)
{
	msg[12] = (uint8_t)(src & 0xffu);
	msg[13] = (uint8_t)(src >> 8);
}

#endif /* RDAG_XPORT_INT_H */
