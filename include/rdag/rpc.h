/* RPC with autograd: named functions, calls with futures, RRefs, profiling of remote calls. */
#ifndef RDAG_RPC_H
#define RDAG_RPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <rdag/agent.h>
#include <rdag/export.h>
#include <rdag/tensor.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Arguments or results of a call: an opaque byte payload and tensors. */
struct rdag_msg {
	const void *payload;
	size_t payload_len;
	const struct rdag_tensor *tensors;
	uint32_t ntensors;
};

/* ---- serving ------------------------------------------------------------------------------- */

/* The reply a function builds (opaque; filled with the rdag_reply_* calls below). */
typedef struct rdag_reply rdag_reply_t;

/* Who called, as a function sees it. */
struct rdag_caller {
	uint16_t worker;          /* the calling worker's id */
	bool has_context;         /* the call carried an autograd context (it is current now) */
	uint64_t context_id;
};

/*
 * A registered function. in's tensors point into rdag's receive buffers: valid until the reply
 * has been sent (so they may be returned as results without a copy). Returns 0, or a negative
 * code after rdag_reply_error() (the caller gets RDAG_EREMOTE and "Error on Node <id>: <text>").
 * Runs on one of the agent's handler threads, with the call's autograd context current, so RPCs
 * it makes carry that context. It may make synchronous RPCs (even back to its caller).
 */
typedef int (*rdag_fn)(void *arg, const struct rdag_caller *who, const struct rdag_msg *in,
		       rdag_reply_t *out);

/*
 * Registers fn under name (1..4096 bytes) on this worker. RDAG_EEXIST if the name is taken.
 * Register before other workers may call (e.g. before a barrier). Thread-safe.
 */
RDAG_API int rdag_register(rdag_agent_t *a, const char *name, rdag_fn fn, void *arg);

/* Copies len bytes as the reply's payload (replacing an earlier one). Returns 0 or RDAG_ENOMEM. */
RDAG_API int rdag_reply_payload(rdag_reply_t *r, const void *p, size_t len);

/*
 * Memory owned by the reply (8-aligned), freed once the reply has been sent: a place for result
 * tensors' data. NULL on allocation failure.
 */
RDAG_API void *rdag_reply_alloc(rdag_reply_t *r, size_t len);

/*
 * Appends a result tensor. Its data must stay valid until the reply is sent: memory from
 * rdag_reply_alloc(), one of the call's input tensors, or memory the function's owner keeps
 * alive (rdag_reply_on_sent() says when it may be reused). Its requires_grad and grad_fn decide
 * the autograd recording of the reply. Returns 0, RDAG_EINVAL, RDAG_ENOSPC (over 65536), RDAG_ENOMEM.
 */
RDAG_API int rdag_reply_tensor(rdag_reply_t *r, const struct rdag_tensor *t);

/* fn(arg) runs once the reply has left (or failed to): the memory of its tensors is free again. */
RDAG_API void rdag_reply_on_sent(rdag_reply_t *r, void (*fn)(void *arg), void *arg);

/* Sets the error text the caller sees (after "Error on Node <id>: "). Returns code, for "return rdag_reply_error(...)". */
RDAG_API int rdag_reply_error(rdag_reply_t *r, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* ---- calling ------------------------------------------------------------------------------- */

typedef struct rdag_future rdag_future_t;

/*
 * Call options. flags:
 *  - RDAG_CALL_PLAIN: PyTorch's rule exactly: with a current context the call is wrapped with
 *    autograd metadata only if a tensor requires grad. Without it (default) every call made
 *    while a context is current carries the context (forced recording), so the callee joins it
 *    and both sides know each other, as PyTorch does for its Python RPC API.
 * prof_id != 0 wraps the call for profiling: the callee records timed events and returns them
 * with the reply; rdag_prof_events() reads them here afterwards.
 */
#define RDAG_CALL_PLAIN 0x1u

struct rdag_call_opts {
	uint32_t flags;
	uint64_t prof_id;
};

/*
 * Calls fn on worker dst (which may be this worker) with args. args' payload is copied; its
 * tensors' data is read in place and must stay valid until the future completes. opts may be
 * NULL. Returns 0 and a future, or an error before anything was sent (RDAG_EINVAL,
 * RDAG_EPEER_DEAD, RDAG_ERANGE when ids are exhausted, ...). Thread-safe.
 */
RDAG_API int rdag_rpc_async(rdag_agent_t *a, uint32_t dst, const char *fn, const struct rdag_msg *args,
			    const struct rdag_call_opts *opts, rdag_future_t **out);

/*
 * rdag_rpc_async() then rdag_future_wait() with no limit. On success *out holds the result
 * (read it with rdag_future_result, then rdag_future_free); on failure *out is NULL and the
 * error (RDAG_EREMOTE "Error on Node <id>: ...", RDAG_EPEER_DEAD naming the peer, ...) is in
 * rdag_last_error(). out may be NULL if the result is not wanted. Thread-safe.
 */
RDAG_API int rdag_rpc_sync(rdag_agent_t *a, uint32_t dst, const char *fn, const struct rdag_msg *args,
			   const struct rdag_call_opts *opts, rdag_future_t **out);

/*
 * Waits up to timeout_ms (< 0: no limit) for f. Returns 0 (result ready), the call's error
 * (its text in rdag_last_error() and rdag_future_error()), or RDAG_ETIMEDOUT (still running).
 * A dead callee fails the call with RDAG_EPEER_DEAD within RDAG_PEER_TIMEOUT_MS. Thread-safe.
 */
RDAG_API int rdag_future_wait(rdag_future_t *f, int timeout_ms);

/* RDAG_EAGAIN while running, else as rdag_future_wait(). Never blocks. Thread-safe. */
RDAG_API int rdag_future_test(rdag_future_t *f);

/*
 * cb(arg, f, status) runs once when f completes (at once, on this thread, if it already has),
 * otherwise on the thread completing it (progress or handler thread: it must not block). At
 * most one callback per future (RDAG_EBUSY). Thread-safe.
 */
RDAG_API int rdag_future_then(rdag_future_t *f, void (*cb)(void *arg, rdag_future_t *f, int status),
			      void *arg);

/*
 * The result of a completed call: views valid until rdag_future_free(). Result tensors that
 * require grad and came back with autograd have grad_kind RDAG_GRAD_RECV. RDAG_EAGAIN while
 * running; the call's error if it failed. Thread-safe.
 */
RDAG_API int rdag_future_result(rdag_future_t *f, struct rdag_msg *out);

/* The error text of a failed call ("" otherwise). Valid until rdag_future_free(). */
RDAG_API const char *rdag_future_error(rdag_future_t *f);

/* Frees f (waiting for it first if it is still running, so its tensors are no longer read). NULL is a no-op. */
RDAG_API void rdag_future_free(rdag_future_t *f);

/* ---- RRefs --------------------------------------------------------------------------------- */

/* A value kept on worker owner under id (ids are made by the creating worker, as message ids). */
struct rdag_rref {
	uint16_t owner;
	uint64_t id;
};

/*
 * Runs fn on dst with args and keeps the result there, as an RRef (PyTorch's rpc.remote).
 * Returns once the owner holds the value (or the call's error). Thread-safe.
 */
RDAG_API int rdag_remote(rdag_agent_t *a, uint32_t dst, const char *fn, const struct rdag_msg *args,
			 const struct rdag_call_opts *opts, struct rdag_rref *out);

/*
 * Fetches the value of r from its owner (a copy travels; with a current context the transfer
 * is recorded for autograd like a call's reply). *out as for rdag_rpc_sync(). An unknown or
 * released RRef fails with RDAG_EREMOTE ("Error on Node <owner>: ... holds no RRef ..."). Thread-safe.
 */
RDAG_API int rdag_rref_fetch(rdag_agent_t *a, const struct rdag_rref *r, rdag_future_t **out);

/* Asks the owner to drop r (its memory is freed there). Returns once the request has left. Thread-safe. */
RDAG_API int rdag_rref_release(rdag_agent_t *a, const struct rdag_rref *r);

/* Number of RRef values this worker owns. Thread-safe. */
RDAG_API size_t rdag_rref_count(rdag_agent_t *a);

/* ---- profiling ----------------------------------------------------------------------------- */

struct rdag_prof_event {
	const char *name;         /* NUL-terminated, valid until rdag_prof_clear() */
	uint64_t start_ns, end_ns; /* CLOCK_MONOTONIC of the worker that recorded it */
	uint64_t thread_id;
	uint16_t worker;          /* where it was recorded */
};

/*
 * Inside a function running for a profiled call: records an event (start_ns <= end_ns) that
 * goes back with the reply. RDAG_ENOENT when the current call is not profiled. Thread-safe.
 */
RDAG_API int rdag_prof_record(const char *name, uint64_t start_ns, uint64_t end_ns);

/*
 * Copies up to cap events received so far for prof_id into out (in arrival order) and sets *n
 * to how many there are. Thread-safe.
 */
RDAG_API int rdag_prof_events(rdag_agent_t *a, uint64_t prof_id, struct rdag_prof_event *out,
			      size_t cap, size_t *n);

/* Forgets the events of prof_id. Thread-safe. */
RDAG_API void rdag_prof_clear(rdag_agent_t *a, uint64_t prof_id);

#ifdef __cplusplus
}
#endif

#endif /* RDAG_RPC_H */
