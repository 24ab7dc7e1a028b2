/* Distributed autograd contexts: creation, the thread's current context, release, gradients, introspection. */
#ifndef RDAG_CONTEXT_H
#define RDAG_CONTEXT_H

#include <stddef.h>
#include <stdint.h>

#include <rdag/agent.h>
#include <rdag/export.h>
#include <rdag/tensor.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * A context holds one iteration's distributed autograd state on this worker: the send and recv
 * functions recorded by RPCs under their autograd message ids, the workers it exchanged messages
 * with ("known workers"), and the gradients accumulated for leaves. Context ids and autograd
 * message ids are (worker id << 48) | counter, from two separate counters; running out of the
 * 2^48 ids of a worker is RDAG_ERANGE.
 */

/*
 * Creates a context and makes it the calling thread's current one. RDAG_EBUSY if the thread
 * already has a current context that is still alive (nested contexts are not allowed; one
 * released meanwhile elsewhere is simply replaced), RDAG_ERANGE when the ids are exhausted.
 * Thread-safe.
 */
RDAG_API int rdag_ctx_create(rdag_agent_t *a, uint64_t *id);

/* The calling thread's current context id in *id, or RDAG_ENOENT. Thread-safe. */
RDAG_API int rdag_ctx_current(rdag_agent_t *a, uint64_t *id);

/*
 * Makes id the calling thread's current context (RDAG_ENOENT if it is not on this worker), or
 * clears it when set is 0. For frameworks that move an iteration between threads. Thread-safe.
 */
RDAG_API int rdag_ctx_set_current(rdag_agent_t *a, uint64_t id, int set);

/*
 * Releases context id: erases it here (clearing it as the current context of the calling
 * thread), then sends CLEANUP_AUTOGRAD_CONTEXT_REQ to every known worker, which releases its
 * copy and forwards the request to its own known workers. Returns once those cleanups have been
 * answered (a peer that is dead or does not answer is logged and skipped). RDAG_ENOENT for an
 * id this worker does not hold. Another thread that has the context current (or any thread, when
 * a cleanup from another worker erased it) keeps it as its current id: its calls then fail with
 * RDAG_ENOENT ("the current context ... was released") until it clears it with
 * rdag_ctx_set_current(a, 0, 0) or creates a new one. Thread-safe.
 */
RDAG_API int rdag_ctx_release(rdag_agent_t *a, uint64_t id);

/* 0 if context id lives on this worker, else RDAG_ENOENT. Thread-safe. */
RDAG_API int rdag_ctx_lookup(rdag_agent_t *a, uint64_t id);

/* Number of contexts alive on this worker. Thread-safe. */
RDAG_API size_t rdag_ctx_count(rdag_agent_t *a);

/*
 * Known workers of context id, ascending: up to cap into out, the total in *n. RDAG_ENOENT for
 * an unknown context. Thread-safe (a snapshot).
 */
RDAG_API int rdag_ctx_known_workers(rdag_agent_t *a, uint64_t id, uint16_t *out, size_t cap, size_t *n);

/* A send or recv function of a context, for introspection. */
struct rdag_fn_info {
	uint64_t msg_id;          /* the autograd message id it is recorded under */
	uint16_t peer;            /* send: the destination; recv: the worker that sent the tensors */
	uint32_t ntensors;        /* send: tensors that required grad (= edges); recv: the same */
};

/*
 * Send (resp. recv) functions of context id, by ascending message id: up to cap into out, the
 * total in *n. RDAG_ENOENT for an unknown context. Thread-safe (a snapshot).
 */
RDAG_API int rdag_ctx_send_fns(rdag_agent_t *a, uint64_t id, struct rdag_fn_info *out, size_t cap,
			       size_t *n);
RDAG_API int rdag_ctx_recv_fns(rdag_agent_t *a, uint64_t id, struct rdag_fn_info *out, size_t cap,
			       size_t *n);

/* One next edge of a send function: where the gradient of one of its tensors goes. */
struct rdag_edge_info {
	uint8_t grad_kind;        /* enum rdag_grad_kind of the tensor that was sent */
	struct rdag_edge edge;    /* its grad_fn (for RDAG_GRAD_LEAF, node is the variable's key) */
	uint32_t tensor_index;    /* its index in the message */
};

/* Edges of the send function msg_id of context id (RDAG_ENOENT if either is unknown). Thread-safe. */
RDAG_API int rdag_ctx_send_fn_edges(rdag_agent_t *a, uint64_t id, uint64_t msg_id,
				    struct rdag_edge_info *out, size_t cap, size_t *n);

/* The autograd message id of an rdag recv function (grad_fn.node of an RDAG_GRAD_RECV tensor). */
RDAG_API uint64_t rdag_recv_fn_msg_id(const void *recv_fn);

/* A leaf's accumulated gradient: grad.data is owned by the context, valid until its release. */
struct rdag_grad {
	void *var;                /* the leaf's key */
	struct rdag_tensor grad;
};

/*
 * Gradients accumulated in context id (variable -> gradient): up to cap into out, the total in
 * *n. RDAG_ENOENT for an unknown context. Thread-safe (the data is not copied: do not read it
 * while a backward pass of the context runs).
 */
RDAG_API int rdag_ctx_grads(rdag_agent_t *a, uint64_t id, struct rdag_grad *out, size_t cap, size_t *n);

#ifdef __cplusplus
}
#endif

#endif /* RDAG_CONTEXT_H */
