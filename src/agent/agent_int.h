/* Agent internals shared by its files: the agent, futures, handler pool, outgoing and incoming messages. */
#ifndef RDAG_AGENT_AGENT_INT_H
#define RDAG_AGENT_AGENT_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <rdag/rdag.h>

#include "ctx/ctxmgr.h"
#include "gpu/gpu.h"
#include "util/u64map.h"
#include "wire/wire.h"
#include "xport/xport.h"

struct boot;

#define AG_MAX_DEVICES 64 /* CUDA ordinals a device map can name */

/* ---- handler pool (pool.c) ----------------------------------------------------------------- */

struct ag_job {
	struct ag_job *next;
	void (*run)(struct ag_job *j);
};

struct ag_pool {
	pthread_mutex_t lock;
	pthread_cond_t cond;       /* idle handler threads: a job came */
	pthread_cond_t hcond;      /* handler threads inside pool_wait_flag: their flag, or a job */
	pthread_cond_t wcond;      /* other threads waiting for a flag */
	int idle;                  /* handler threads waiting on cond */
	int idle_signaled;         /* of them, signalled and not yet awake */
	int helpers_waiting;       /* handler threads waiting on hcond */
	struct ag_job *head, *tail;
	bool stop;
	int nthreads;
	pthread_t *threads;
	atomic_int busy;           /* jobs queued or running */
};

int pool_start(struct ag_pool *p, int nthreads, const char *name);
void pool_stop(struct ag_pool *p);
void pool_push(struct ag_pool *p, struct ag_job *j);
/* 1 if the calling thread is one of p's handler threads. */
int pool_is_mine(struct ag_pool *p);
/*
 * Waits until *flag becomes true, running queued jobs meanwhile when called on a handler thread
 * (so a handler waiting for a nested call never starves the pool). timeout_ms < 0: no limit.
 * Returns 0 or RDAG_ETIMEDOUT. Completers call pool_kick() after setting the flag.
 */
int pool_wait_flag(struct ag_pool *p, atomic_bool *flag, int timeout_ms, rdag_agent_t *a);
/* As pool_wait_flag, until flag or or2 (NULL: only flag) is set. */
int pool_wait_either(struct ag_pool *p, atomic_bool *flag, atomic_bool *or2, int timeout_ms,
		     rdag_agent_t *a);
void pool_kick(struct ag_pool *p);

/* ---- futures (rpc.c) ----------------------------------------------------------------------- */

enum ag_call_kind {
	AGC_CALL = 1, AGC_RREF_CALL, AGC_FETCH, AGC_CLEANUP, AGC_DELETE, AGC_BACKWARD, AGC_RREF_BACKWARD
};

struct rdag_future {
	rdag_agent_t *a;
	atomic_int refs;           /* the caller's + the pending map's + the send's */
	uint64_t req_id;
	uint32_t dst;
	int kind;                  /* enum ag_call_kind */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	atomic_bool done;
	atomic_bool left;            /* the send has finished: its tensors are no longer read */
	bool got_reply, sent;      /* done = got_reply && sent, or a failure */
	int status;
	char *errtext;
	struct xport_rx *rx;       /* the reply, held until free */
	bool rx_loop;              /* rx is a loopback copy (agent frees it) */
	struct rdag_msg result;
	struct rdag_tensor *tensors;
	void (*cb)(void *arg, rdag_future_t *f, int status);
	void *cb_arg;
	bool cb_set;
	/* autograd: the call's context (for the recv function of a wrapped reply) */
	bool wrapped;
	uint64_t ctx_id;
	struct ag_out *out;        /* the outgoing message, freed once sent */
};

/* ---- outgoing messages (msg.c) ------------------------------------------------------------- */

/* A message to send, with its optional profiling and autograd wrappers; the encoder's argument. */
struct ag_out {
	uint8_t kind;              /* innermost kind */
	bool has_fwd;
	uint8_t fwd_kind;          /* FORWARD_AUTOGRAD_REQ or _RESP */
	struct wire_fwd fwd;
	bool has_prof;
	uint8_t prof_kind;         /* RUN_WITH_PROFILING_REQ or _RESP */
	struct wire_prof_req prof;
	struct wire_prof_event *events; /* _RESP */
	uint32_t nevents;
	/* innermost fields */
	struct wire_call call;     /* RPC_CALL, RREF_CALL */
	struct wire_bytes payload; /* RPC_RESP, RREF_FETCH_RESP */
	struct wire_rref_id rref;  /* RREF_FETCH_REQ, RREF_DELETE */
	struct wire_cleanup cleanup;
	struct wire_exception exc;
	struct wire_grad_req grad;    /* BACKWARD_AUTOGRAD_REQ */
	struct wire_abort abort;      /* BACKWARD_ABORT */
	struct wire_rref_backward rref_bwd;
	/* tensors: descriptors + data, for xport_send */
	uint32_t ntensors;
	struct xport_tensor *tensors;
	/* owned memory freed with the message */
	void *own[4];
	struct gpu_stage **staged; /* [ntensors] pinned copies of device tensors (pool), or NULL */
	struct ag_nccl_slot *nccl; /* [ntensors]: the tensors that go by NCCL (nccl.c), or NULL */
};

int ag_encode(void *arg, void *buf, size_t cap, const struct wire_env *env,
	      const struct wire_tensor *tensors, uint32_t n, size_t *len);
void ag_out_free(struct ag_out *o);
/* Fills desc from t (validated: RDAG_EINVAL with a message naming index). */
int ag_desc_from_tensor(struct wire_tensor *desc, const struct rdag_tensor *t, uint32_t index);
void ag_tensor_from_rx(struct rdag_tensor *t, const struct xport_rx_tensor *rt);

/*
 * Sends o to dst: by the xport, or through the loopback when dst is this worker. done(arg,
 * status) is called exactly once when it returns 0. Retries while the xport is out of send ops.
 */
int ag_send(rdag_agent_t *a, uint32_t dst, uint64_t req_id, struct ag_out *o,
	    xport_done_fn done, void *done_arg);

/*
 * ThreadSanitizer cannot see an order that goes through another process: a test reads a
 * context's gradients, meets the other workers at agent_test_barrier(), and then a cleanup from
 * one of them frees the context on a handler thread. The barrier releases, and every received
 * message acquires, one sync object per agent (only in TSan builds), which states exactly that.
 */
#if defined(__SANITIZE_THREAD__)
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#define AG_TSAN_RELEASE(a) __tsan_release(&(a)->tsan_sync)
#define AG_TSAN_ACQUIRE(a) __tsan_acquire(&(a)->tsan_sync)
#else
#define AG_TSAN_RELEASE(a) ((void)(a))
#define AG_TSAN_ACQUIRE(a) ((void)(a))
#endif

/* ---- incoming messages (dispatch.c) -------------------------------------------------------- */

/* A received message, unwrapped. */
struct ag_in {
	struct ag_job job;
	rdag_agent_t *a;
	struct xport_rx *rx;
	bool loop;                 /* rx came through the loopback (agent-owned) */
	uint16_t src;
	uint64_t req_id;
	bool has_prof;
	uint64_t prof_id;
	struct wire_event_list events;
	bool has_fwd;
	uint8_t fwd_kind;
	uint64_t ctx_id, msg_id;
	uint16_t from;
	struct wire_devmap_list devmap;
	const struct wire_msg *inner; /* points into levels[] */
	struct wire_msg levels[WIRE_MAX_DEPTH + 1];
};

void ag_on_recv(void *arg, struct xport_rx *rx);
void ag_in_free(struct ag_in *in);
/* Releases a received message (xport or loopback). */
void ag_rx_release(rdag_agent_t *a, struct xport_rx *rx, bool loop);

/* ---- the agent ----------------------------------------------------------------------------- */

struct ag_reg {
	struct ag_reg *next;
	rdag_fn fn;
	void *arg;
	size_t len;
	char name[];
};

struct ag_rref_val {
	atomic_int refs;
	uint64_t id;
	uint16_t creator;
	void *payload;
	size_t payload_len;
	uint32_t ntensors;
	struct rdag_tensor *tensors; /* data owned (one block each) */
};

struct ag_prof_list {
	size_t n, cap;
	struct rdag_prof_event *ev; /* names owned */
};

struct rdag_agent {
	struct boot *b;
	struct xport *x;
	struct ctxmgr cm;
	uint16_t id;
	uint32_t world;
	int mode;
	pthread_t progress_thr;
	bool progress_running;
	atomic_bool stop;
	struct ag_pool pool;

	pthread_rwlock_t reg_lock;
	struct u64map reg;         /* hash(name) -> chain of struct ag_reg */

	pthread_mutex_t pend_lock;
	struct u64map pend;        /* req id -> struct rdag_future */
	atomic_uint_fast64_t next_req;

	pthread_mutex_t rref_lock;
	struct u64map rrefs;       /* rref id -> struct ag_rref_val (values this worker owns) */
	atomic_uint_fast64_t next_rref;

	pthread_mutex_t prof_lock;
	struct u64map prof;        /* prof id -> struct ag_prof_list */

	atomic_int serving;        /* requests received and not yet answered */
	char tsan_sync;            /* AG_TSAN_*: a sync object for ThreadSanitizer only */
	atomic_uint runs_aborted;  /* local runs of a pass ended (or refused) by another's abort */
	atomic_uint aborts_heard;  /* BACKWARD_ABORTs that aborted a pass here first */
	struct rdag_engine engine; /* the local autograd engine */
	struct gpu_side_caps gpu_local; /* what this worker has (ag_gpu_offer) */
	struct ag_gpu_path *gpu_path;   /* [world]: the GPU data path with each peer (ag_gpu_select) */
	pthread_mutex_t devmap_lock;
	int16_t (*devmap)[AG_MAX_DEVICES]; /* [world][local device]: the peer's device, -1: none */
	pthread_mutex_t nccl_lock;      /* NCCL communicators (nccl.c) */
	pthread_cond_t nccl_cond;
	struct ag_nccl *nccl;
	bool nccl_closing;
	bool nccl_ended;
	int nccl_join_ms;               /* a communicator's first use waits this long (peer timeout) */
	int nccl_timeout_ms;            /* a transfer, this long (RDAG_NCCL_TIMEOUT_MS) */
	pthread_mutex_t nccl_poll_lock; /* what the progress loop polls (ag_nccl_poll) */
	struct ag_nccl_land *nccl_lands; /* messages whose NCCL tensors are on their way */
	struct ag_nccl_sent *nccl_sents; /* messages whose NCCL sends are */
	atomic_int nccl_waits;          /* entries on those two lists */
	atomic_uint nccl_parked;        /* receive groups that waited for an earlier one's turn */
	struct ag_nccl_zombie *nccl_zombies; /* buffers of transfers that failed in flight: kept
					      * until the communicators are aborted at close */
	uint64_t nccl_polled_ns;        /* last check of deadlines and peers (nccl_poll_lock) */
};

/*
 * Device tensors (gpu_path.c). A CUDA tensor leaves as host bytes staged from the device, with
 * the destination device of the sender's device map in its descriptor; the receiver lands it in
 * a device buffer of that device, freed with the message.
 */
int ag_stage_out(rdag_agent_t *a, uint32_t dst, struct ag_out *o);
/* t from rt, landed on its device first for a CUDA descriptor (rt->dev). */
int ag_tensor_land(rdag_agent_t *a, uint32_t src, struct rdag_tensor *t,
		   struct xport_rx_tensor *rt, uint32_t index);
/* The same on the device the receiver chooses (dev_type RDAG_DEV_CPU: host bytes expected). */
int ag_tensor_land_on(rdag_agent_t *a, uint32_t src, struct rdag_tensor *t,
		      struct xport_rx_tensor *rt, uint32_t index, uint8_t dev_type, uint16_t dev_index);
/* Frees what ag_tensor_land made for rx's tensors. */
void ag_rx_unland(struct xport_rx *rx);

/* The GPU data path chosen with one peer (gpu_path.c). */
struct ag_gpu_path {
	enum gpu_transport t;      /* valid when rc == 0 */
	int rc;                    /* 0, or why there is none (RDAG_ENOCUDA, RDAG_ENOGPU, ...) */
	char why[256];
	/* device tensors staged through host memory to this peer / landed on a device from it */
	atomic_uint_fast64_t staged_tensors, staged_bytes, landed_tensors, landed_bytes;
	/* ... of which these went by NCCL */
	atomic_uint_fast64_t nccl_tensors_out, nccl_tensors_in;
};

/*
 * Device tensors by NCCL (nccl.c). ag_nccl_take (from ag_stage_out) picks the communicator for
 * tensor i from device dev to the peer's device to (made and waited for on first use; 0: none,
 * stage through host); ag_nccl_post posts the message's sends; ag_send wraps its done in an
 * ag_nccl_sent, which the progress loop completes once the sends are done too. A received
 * message naming NCCL tensors goes to ag_nccl_land (from ag_on_recv): its receives are posted
 * from a handler thread, polled by the progress loop (ag_nccl_poll, xport's poll_extra), and
 * the message is routed (ag_on_landed) when they all ended. ag_nccl_recv then gives a tensor's
 * outcome (rt->dev on its device, or the error); ag_nccl_drain frees what landing left.
 */
struct ag_nccl;
struct ag_nccl_slot {
	struct ag_nccl *e;         /* NULL: this tensor does not go by NCCL */
	struct gpu_nccl_req *req;  /* at the first tensor of each communicator */
	bool ended;                /* req ended (polled by the progress loop) */
};
struct ag_nccl_sent;
struct ag_nccl_land;
void ag_nccl_init(rdag_agent_t *a);
void ag_nccl_fini(rdag_agent_t *a);
bool ag_nccl_path(rdag_agent_t *a, uint32_t peer);
void ag_nccl_on_id(rdag_agent_t *a, uint32_t src, const struct wire_nccl_id *n);
int ag_nccl_take(rdag_agent_t *a, uint32_t dst, struct ag_out *o, uint32_t i, unsigned dev,
		 unsigned to);
int ag_nccl_post(rdag_agent_t *a, struct ag_out *o);
struct ag_nccl_sent *ag_nccl_sent_new(struct ag_out *o, xport_done_fn done, void *done_arg);
xport_done_fn ag_nccl_sent_fn(void);
void ag_nccl_sent_finish(rdag_agent_t *a, struct ag_nccl_sent *s, bool sent);
void ag_nccl_out_free(struct ag_out *o);
int ag_nccl_recv(rdag_agent_t *a, uint32_t src, struct xport_rx_tensor *rt, uint32_t index);
void ag_nccl_drain(rdag_agent_t *a, struct xport_rx *rx);
void ag_nccl_drop(rdag_agent_t *a, struct xport_rx *rx, const char *why);
void ag_nccl_land(struct ag_in *in);
int ag_nccl_poll(void *arg, int *busy);
/* The rest of ag_on_recv once a message's NCCL tensors ended (dispatch.c). */
void ag_on_landed(struct ag_in *in);

/* Probes CUDA and NCCL into a->gpu_local; returns the handshake offer (WIRE_HS_* bits). */
uint16_t ag_gpu_offer(rdag_agent_t *a);
/* After xport_open: chooses the GPU path with every peer from its offer (RDAG_GPU_TRANSPORT). */
int ag_gpu_select(rdag_agent_t *a);

uint64_t ag_hash_name(const char *s, size_t len);
uint64_t ag_now_ns(void);
uint64_t ag_thread_id(void);

/* rpc.c */
struct rdag_future *ag_future_new(rdag_agent_t *a, uint32_t dst, int kind);
void ag_future_put(struct rdag_future *f);
/* Completes f with status (0, or an error with text); takes rx (may be NULL). */
void ag_future_complete(struct rdag_future *f, int status, const char *text, struct xport_rx *rx,
			bool loop);
/* Registers f under a fresh request id (f->req_id). */
int ag_pend_add(rdag_agent_t *a, struct rdag_future *f);
struct rdag_future *ag_pend_take(rdag_agent_t *a, uint64_t req_id);
void ag_fail_peer(rdag_agent_t *a, uint32_t peer, int code, const char *why);
void ag_send_done(void *arg, int status);
/* The reply to a call arrived (in is consumed). */
void ag_handle_reply(struct ag_in *in);
/* Runs a received request on a handler thread (job callback). */
void ag_serve(struct ag_job *j);
/* Handles CLEANUP_AUTOGRAD_CONTEXT_REQ on a handler thread. */
void ag_serve_cleanup(struct ag_job *j);
/* Sends an EXCEPTION reply for in (consumes nothing). */
void ag_reply_exception(struct ag_in *in, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
int ag_wait(rdag_agent_t *a, struct rdag_future *f, int timeout_ms);
/* Waits for f, then hands it to *out (out non-NULL, success) or frees it, keeping its error. */
int ag_finish_sync(rdag_agent_t *a, rdag_future_t *f, rdag_future_t **out);
/* RREF_CALL of fn on dst, the result kept there under id. */
int ag_start_rref_call(rdag_agent_t *a, uint32_t dst, const char *fn, const struct rdag_msg *args,
		       const struct rdag_call_opts *opts, uint64_t id, rdag_future_t **out);
/* CLEANUP_AUTOGRAD_CONTEXT_REQ (id = context) or RREF_FETCH_REQ (id, owner) to dst. */
int ag_start_simple(rdag_agent_t *a, uint32_t dst, uint8_t kind, uint64_t id, uint16_t owner,
		    rdag_future_t **out);
/* Sends cleanups of context id to peers[] (but this worker and exclude), waits; returns failures. */
int ag_cleanup_peers(rdag_agent_t *a, uint64_t id, const uint16_t *peers, size_t n, int exclude);

/*
 * Sends o (innermost message filled in) to dst as a call of kind: wrapped for autograd
 * (getMessageWithAutograd) for calls, fetches and RRef calls made in a context, and for
 * profiling as opts says. Takes o; t[0..n) are its tensors. Thread-safe.
 */
int ag_start_call(rdag_agent_t *a, uint32_t dst, struct ag_out *o, const struct rdag_tensor *t,
		  uint32_t n, const struct rdag_call_opts *opts, int kind, rdag_future_t **out);
int ag_out_tensors(struct ag_out *o, const struct rdag_tensor *t, uint32_t n);
/* An EXCEPTION message (origin: this worker, or the one named by a leading "Error on Node <id>: "). */
/*
 * "Error on Node <id>: " at the start of text[0, len): the prefix's length with the id in
 * *origin, or 0 (no such prefix, or an id above 65535).
 */
size_t ag_remote_origin(const char *text, size_t len, uint16_t *origin);
struct ag_out *ag_exception_out(rdag_agent_t *a, int code, const char *text);
struct rdag_reply;
void ag_reply_free(struct rdag_reply *r);
/* Sends o as the reply to in; takes o, r, val, and in when own_in; counted: in->a->serving drops. */
void ag_send_reply(struct ag_in *in, bool own_in, struct ag_out *o, struct rdag_reply *r,
		   struct ag_rref_val *val, bool counted);

/* backward.c */
void ag_serve_backward(struct ag_job *j);
void ag_serve_rref_backward(struct ag_job *j);
/* BACKWARD_ABORT received (on the progress thread): stops the pass here and tells the others. */
void ag_on_abort(struct ag_in *in);

/* rref.c */
void ag_rref_free_all(rdag_agent_t *a);
void ag_rref_put(struct ag_rref_val *v);
struct ag_rref_val *ag_rref_get(rdag_agent_t *a, uint64_t id);
int ag_rref_store(rdag_agent_t *a, uint64_t id, uint16_t creator, const struct rdag_msg *val);
void ag_rref_delete(rdag_agent_t *a, uint64_t id);

/* prof.c */
void ag_prof_store(rdag_agent_t *a, uint64_t prof_id, uint16_t worker, const struct wire_event_list *l);
void ag_prof_free_all(rdag_agent_t *a);
/* The calling thread's profiling session while it runs a profiled request. */
struct ag_prof_sess {
	uint32_t n, cap;
	struct wire_prof_event *ev;   /* names owned (char *) */
	uint16_t worker;
};
/*
 * Makes s (NULL: none) the calling thread's session and returns the previous one, to be put back
 * afterwards (a handler waiting for a nested call may run another request meanwhile).
 */
struct ag_prof_sess *ag_prof_swap(struct ag_prof_sess *s);
void ag_prof_sess_free(struct ag_prof_sess *s);
int ag_prof_add(struct ag_prof_sess *s, const char *name, uint64_t start, uint64_t end);

#endif /* RDAG_AGENT_AGENT_INT_H */
