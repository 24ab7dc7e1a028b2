/* Transport: per-peer channels with credits, landing arenas and the three tensor protocols over one fab_ep. */
#ifndef RDAG_XPORT_XPORT_H
#define RDAG_XPORT_XPORT_H

/*
 * One struct xport per worker, on top of ONE fabric endpoint (docs/transport.md has the design).
 *
 *  - xport_open() exchanges endpoint addresses through the bootstrap, connects, posts the shared
 *    receive pool and runs a HANDSHAKE with every peer (protocol version, job token, the landing
 *    arena the peer may write into, initial credits, largest receivable message).
 *  - xport_send() sends one control message (encoded by the caller's callback, once the xport has
 *    chosen where each tensor travels) plus its tensors: INLINE in the message (<= inline_max),
 *    EAGER by RDMA write into a slot of the peer's landing arena (<= eager_max and room in the
 *    arena), or RENDEZVOUS (the receiver allocates and registers the destination and answers with
 *    RDV_ANSWER; the sender writes, then sends RDV_DONE). Tensor bytes are never copied on the
 *    eager and rendezvous paths: the fabric reads them from the caller's memory, registered
 *    through the registration cache.
 *  - A message is delivered (the receive callback) only once it and all its tensors' bytes have
 *    landed; the view points into the receive buffer, the arena slots and the rendezvous buffers,
 *    and stays valid until xport_release(), which gives the slots and the buffer back.
 *  - Flow control: at most `credits` messages outstanding towards each peer; credits come back
 *    piggybacked in every message header or by CREDIT messages; messages beyond the credits wait
 *    in a per-peer backlog (bounded: the send-op pool). Tensor bytes go as writes of at most a
 *    quarter of write_window, at most a window of them in flight per peer, so a control message
 *    or keepalive answer queued behind a big tensor waits for a window of data, not all of it.
 *  - Failure: a completion error, or silence beyond peer_timeout_ms while keepalives go
 *    unanswered, declares a peer dead: every pending operation towards it fails with
 *    RDAG_EPEER_DEAD and a message naming the peer (rank and name); later sends fail at once.
 *
 * Ordering: messages are delivered in arrival order. That is send order on providers that report
 * completions in order, but not promised in general, and a message waiting for rendezvous data is
 * overtaken by later ones.
 *
 * Threads: every function here is thread-safe (one mutex per xport) unless said otherwise.
 * Callbacks (encode excepted) never run under the xport's lock: they run from xport_progress(),
 * on the thread that called it, and may call xport_send() and xport_release(). The encode
 * callback runs inside xport_send() under the lock and must not call back into the xport.
 */

#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>

#include "fabric/fabric.h"
#include "wire/wire.h"

struct boot;
struct rcache;
struct xport;

/* ---- callbacks ----------------------------------------------------------------------------- */

/*
 * Encodes the message into buf (cap bytes) and sets *len, following the wire encoders' contract
 * (RDAG_ENOSPC if it does not fit). env is the header to use for the top-level message (sender,
 * request id; credits are filled in by the xport when the message is posted); tensors[0..n) are
 * the caller's descriptors with loc and u filled in by the xport, to be encoded in that order
 * (in the innermost message when wrappers are used). Called with the xport's lock held: it must
 * not call into the xport. May be called twice (a second time with every tensor out of line, when
 * the first encoding did not fit).
 */
typedef int (*xport_encode_fn)(void *arg, void *buf, size_t cap, const struct wire_env *env,
			       const struct wire_tensor *tensors, uint32_t n, size_t *len);

/*
 * A send finished: status 0 (message sent and every tensor written; the tensor memory may be
 * reused), or a negative code (RDAG_EPEER_DEAD, ...; rdag_last_error() on the calling thread has
 * the detail, naming the peer).
 */
typedef void (*xport_done_fn)(void *arg, int status);

struct xport_rx;
/* A message arrived (with all its tensors). The receiver owns rx until xport_release(). */
typedef void (*xport_recv_fn)(void *arg, struct xport_rx *rx);

/* Peer `peer` was declared dead (code RDAG_EPEER_DEAD); why names it and says how it was seen. */
typedef void (*xport_peer_fn)(void *arg, uint32_t peer, int code, const char *why);

/*
 * Rendezvous destination for tensor `index` (desc->nbytes bytes, > 0) of a message from peer:
 * host memory that stays valid until rdv_free. NULL refuses the message (RDAG_ENOMEM at the
 * sender). Called from xport_progress() with the lock held: must not call into the xport.
 */
typedef void *(*xport_rdv_alloc_fn)(void *arg, uint32_t peer, uint32_t index,
				    const struct wire_tensor *desc);
typedef void (*xport_rdv_free_fn)(void *arg, void *ptr, size_t len);

/* ---- options ------------------------------------------------------------------------------- */

struct xport_opts {
	size_t arena_size;       /* landing arena per peer, bytes (RDAG_ARENA_SIZE, 8 MiB) */
	size_t inline_max;       /* tensors up to this travel in the message (RDAG_INLINE_MAX, 4096) */
	size_t eager_max;        /* tensors up to this go to an arena slot (RDAG_EAGER_MAX, 2 MiB) */
	size_t msg_max;          /* receive buffer size = largest message (RDAG_MSG_MAX, 8192) */
	uint32_t credits;        /* messages in flight per peer (RDAG_CREDITS, 64) */
	uint32_t send_depth;     /* send ops for callers (RDAG_SEND_DEPTH, 256): the backlog bound */
	int peer_timeout_ms;     /* dead after this much silence (RDAG_PEER_TIMEOUT_MS, 30000) */
	int busy_poll_us;        /* xport_progress polls this long before blocking (RDAG_BUSY_POLL_US, 1000; yielding after 20 µs) */
	int idle_sleep_us;       /* without a wait fd: longest sleep between idle polls (RDAG_IDLE_SLEEP_US, 100; 0: yield) */
	int open_timeout_ms;     /* handshakes must finish within this (default: peer_timeout_ms) */
	size_t rdv_cache;        /* bytes of freed rendezvous buffers kept for reuse (RDAG_RDV_CACHE, 64 MiB) */
	size_t write_window;     /* bytes of RDMA writes in flight per peer (RDAG_WRITE_WINDOW, 8 MiB; 0: unbounded) */
	xport_recv_fn on_recv;   /* required */
	void *recv_arg;
	xport_peer_fn on_peer_dead; /* optional */
	void *peer_arg;
	/*
	 * Optional: non-zero while the user waits for traffic (answers to calls it made). Progress
	 * without a wait fd then yields between polls instead of napping: a nap would delay each
	 * answer by up to RDAG_IDLE_SLEEP_US. Called without the xport's lock.
	 */
	int (*expecting)(void *arg);
	void *expect_arg;
	/*
	 * Optional: work of the layer above that has no completion queue (device transfers whose
	 * events it polls), run at every pass of xport_progress without the xport's lock. Returns
	 * how many things it finished (counted as progress) and sets *busy while it has some
	 * pending: xport_progress then keeps polling (yielding) instead of blocking on the
	 * provider. It must not block; xport_wake ends a wait it started before work appeared.
	 */
	int (*poll_extra)(void *arg, int *busy);
	void *poll_arg;
	/*
	 * What this worker offers its peers beyond host memory, sent in every handshake:
	 * WIRE_HS_NCCL (it can move tensors with NCCL), WIRE_HS_ARENA_GPU (its landing arena is GPU
	 * memory). Any other bit: xport_open fails RDAG_EINVAL. Peers read it with xport_peer_offer.
	 */
	uint16_t offer;
	xport_rdv_alloc_fn rdv_alloc; /* optional: default posix_memalign / free */
	xport_rdv_free_fn rdv_free;
	void *rdv_arg;
};

/*
 * Fills o with the defaults, overridden by the RDAG_* variables above (a malformed value is
 * logged and ignored). Callbacks are NULL. Reads the environment; thread-safe otherwise.
 */
void xport_opts_init(struct xport_opts *o);

/*
 * Fills the queue sizes, rank and world size of fabric open options so the endpoint can hold
 * what the xport will post (call before fab_open). Thread-safe.
 */
void xport_fab_opts(const struct xport_opts *o, uint32_t world, uint32_t rank,
		    struct fab_open_opts *fo);

/* ---- life cycle ---------------------------------------------------------------------------- */

/*
 * Creates the transport of this worker: allgathers endpoint addresses through b, connects ep,
 * registers pools and arenas, and handshakes with every peer (collective: every rank of b calls
 * it). Takes ownership of ep whatever happens: xport_close closes it, and so does a failed
 * xport_open (receives may be posted into buffers it frees). b stays the caller's, not kept.
 * Fails with the reason in rdag_last_error(): RDAG_EACCES (a peer has another job token),
 * RDAG_ETIMEDOUT (naming the peers that did not answer), RDAG_ENOSYS (the provider offers
 * neither FAB_CAP_ORDER_SAW nor FAB_CAP_WRITE_DELIVERED), RDAG_EINVAL (bad options). Not
 * thread-safe with respect to b.
 */
int xport_open(const struct xport_opts *o, struct boot *b, struct fab_ep *ep, struct xport **out);

/*
 * Tears down: first gives sends already queued or in flight to live peers up to 2 s to finish
 * (making progress, so callbacks may run), then pending sends fail with RDAG_ECANCELED
 * (callbacks run here, on the calling thread), undelivered messages are dropped, messages still
 * held are released, then registrations, the endpoint and the memory go. Call it once no other
 * thread uses x. NULL is a no-op.
 */
void xport_close(struct xport *x);

/* ---- sending ------------------------------------------------------------------------------- */

/* A tensor to send: its bytes (host memory, untouched until the done callback) and descriptor. */
struct xport_tensor {
	const void *data;          /* desc.nbytes bytes (NULL allowed when 0) */
	struct wire_tensor desc;   /* dtype, rank, shape, flags, device, nbytes; loc/u ignored */
	bool staged;               /* data is host memory though desc names a device (host staging) */
	bool nccl;                 /* moved by NCCL, not by the xport: location NCCL with nccl_tag */
	uint64_t nccl_tag;
};

/*
 * Sends a message with n tensors to peer (not this worker). enc encodes it once the locations are
 * chosen (see xport_encode_fn); req_id goes into the header. done (may be NULL) reports the end
 * from xport_progress(). Returns 0 (queued or sent; done will be called exactly once), or an
 * error with no callback: RDAG_EAGAIN (every send op is busy: call xport_progress and retry),
 * RDAG_EPEER_DEAD (the peer is dead), RDAG_EINVAL (bad peer or tensor), RDAG_EOVERFLOW (the
 * message does not fit in the peer's receive buffers even with every tensor out of line), or the
 * encoder's or the registration's error. Thread-safe.
 */
int xport_send(struct xport *x, uint32_t peer, uint64_t req_id, xport_encode_fn enc, void *enc_arg,
	       const struct xport_tensor *tensors, uint32_t n, xport_done_fn done, void *done_arg);

/*
 * Sends an already encoded message (len bytes, a valid wire message without out-of-line tensor
 * locations). Its header's sender and credits are set by the xport; its request id is kept. The
 * bytes are copied before returning. Same returns as xport_send (RDAG_EINVAL for a message that
 * does not decode or names slots / rendezvous tensors). Thread-safe.
 */
int xport_send_bytes(struct xport *x, uint32_t peer, const void *msg, size_t len, xport_done_fn done,
		     void *done_arg);

/* ---- receiving ----------------------------------------------------------------------------- */

struct xport_rx_tensor {
	struct wire_tensor desc;   /* as sent; desc.loc says which protocol brought it */
	void *data;                /* its desc.nbytes bytes (NULL for NCCL tensors, which the xport does not move) */
	void *dev;                 /* the user's: NULL when delivered, never read or freed by the xport */
	/* The user's, for tensors that come by NCCL (all empty when delivered): */
	bool nccl_done;            /* its receive ended */
	uint16_t nccl_dev;         /* the device dev is on, when it ended well */
	int nccl_rc;               /* 0, or why it failed (nccl_why, malloc'd, says more) */
	char *nccl_why;
};

/* A delivered message: read-only for the receiver, valid until xport_release(). */
struct xport_rx {
	uint32_t peer;                   /* sender's rank */
	struct wire_msg msg;             /* decoded top-level message (views into the buffer) */
	const void *buf;                 /* the encoded message */
	size_t len;
	uint32_t ntensors;               /* tensors of the innermost message, in order */
	struct xport_rx_tensor *tensors;
	uint8_t detached;                /* set by xport_detach(): the receive buffer went back */
};

/*
 * The tensor list of a decoded message: the innermost message's, decoding wrappers (depth-first,
 * inner views in inner[], WIRE_MAX_DEPTH + 1 entries). 0 with count 0 for kinds without tensors;
 * a decoding error of an inner message otherwise.
 */
int xport_msg_tensors(const struct wire_msg *m, struct wire_msg *inner, struct wire_tensor_list *out);

/*
 * Gives the message's receive buffer back now (returning the peer's credit) while the receiver
 * keeps the message: its bytes are copied (at most RDAG_MSG_MAX) and the views re-pointed, inline
 * tensors included; arena slots and rendezvous buffers stay held, not copied. Returns the new
 * handle (rx is gone) to read and to xport_release() later, or NULL (RDAG_ENOMEM: rx is still
 * valid and held). Use it for messages held for long (a request being served, a reply kept in a
 * future), so that held messages never starve a peer of credits. Thread-safe.
 */
struct xport_rx *xport_detach(struct xport *x, struct xport_rx *rx);

/* Gives the message's receive buffer, arena slots and rendezvous buffers back. Thread-safe. */
void xport_release(struct xport *x, struct xport_rx *rx);

/* ---- progress ------------------------------------------------------------------------------ */

/*
 * Drives the transport: reaps completions, posts what waits for credits, sends keepalives and
 * detects dead peers, then runs callbacks (without the lock). Busy-polls up to busy_poll_us while
 * nothing happens, then blocks on the provider's wait fd (or keeps polling if it has none) until
 * something happens or timeout_ms passes (0: one pass, no waiting; < 0: no limit). Returns the
 * number of callbacks and completions handled (0 on timeout), or a negative code on a fatal
 * endpoint error. Callable from a progress thread or manually; thread-safe.
 */
int xport_progress(struct xport *x, int timeout_ms);

/*
 * Ends a wait of xport_progress on the provider's fd (or a nap) early, so that it runs another
 * pass: for work the poll_extra hook has to see that arrived while it was blocked. Cheap (one
 * eventfd write when someone may be waiting); thread-safe.
 */
void xport_wake(struct xport *x);

/* ---- introspection ------------------------------------------------------------------------- */

uint32_t xport_rank(const struct xport *x);
uint32_t xport_world(const struct xport *x);
/* Peer's worker name (from the bootstrap), or "?" for a bad rank. Thread-safe. */
const char *xport_peer_name(const struct xport *x, uint32_t peer);
/* 1 if peer was declared dead. Thread-safe. */
int xport_peer_dead(struct xport *x, uint32_t peer);
/*
 * What peer offered in its handshake (its xport_opts.offer: WIRE_HS_* bits) into *flags; this
 * worker's own offer for peer == xport_rank(x). Known for every live peer once xport_open has
 * returned. RDAG_EINVAL for a bad rank. Thread-safe.
 */
int xport_peer_offer(struct xport *x, uint32_t peer, uint16_t *flags);
/*
 * The registration cache the xport created over its endpoint (RDAG_RCACHE_* variables), for
 * statistics and for layers above that register memory on the same endpoint. Valid until
 * xport_close. Thread-safe (the cache is).
 */
struct rcache *xport_rcache(struct xport *x);

struct xport_stats {
	uint64_t msgs_sent, msgs_recv;        /* user messages */
	uint64_t tensors_inline, tensors_eager, tensors_rdv; /* sent, by protocol */
	uint64_t tensors_nccl;     /* sent with location NCCL (the agent moved their bytes) */
	uint64_t bytes_written;               /* by RDMA write (eager + rendezvous) */
	uint64_t writes;                      /* RDMA writes posted */
	uint64_t window_waits;                /* times a write waited for room in a peer's window */
	uint64_t window_peak;                 /* most write bytes in flight towards one peer */
	uint64_t write_window, write_chunk;   /* in force: the window (0: none), the largest write */
	uint64_t credit_msgs_sent;            /* explicit CREDIT messages */
	uint64_t pings_sent;                  /* keepalives */
	uint64_t backlogged;                  /* sends that waited for credits */
	uint64_t refused;                     /* received messages refused with an error reply */
	uint64_t credit_overruns;             /* a peer sent beyond its credits (must stay 0) */
	uint64_t recv_errors;                 /* receive completions with an error */
	uint32_t posted_min;                  /* fewest receive buffers seen posted (after open) */
	uint32_t posted_total;                /* size of the receive pool */
	uint32_t credits;                     /* credits per peer in force */
	const char *visibility;               /* "order-saw" or "write-delivered" */
};

/* A snapshot of the counters. Thread-safe. */
void xport_get_stats(struct xport *x, struct xport_stats *st);

/* ---- test hooks (tests only) --------------------------------------------------------------- */

/*
 * Sends msg as is (header sender and credits set), without any check of its tensor locations, so
 * a test can name slots it was never granted. Same returns as xport_send_bytes.
 */
int xport_test_send_raw(struct xport *x, uint32_t peer, const void *msg, size_t len,
			xport_done_fn done, void *done_arg);

/* The landing arena this worker granted to peer: its address and size (for such tests). */
int xport_test_arena(struct xport *x, uint32_t peer, void **base, size_t *size);

#endif /* RDAG_XPORT_XPORT_H */
