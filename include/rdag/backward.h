/* Distributed backward: run a pass from roots across every worker the context touched; the local engine interface. */
#ifndef RDAG_BACKWARD_H
#define RDAG_BACKWARD_H

#include <stdbool.h>
#include <stdint.h>

#include <rdag/agent.h>
#include <rdag/export.h>
#include <rdag/graph.h>
#include <rdag/rpc.h>
#include <rdag/tensor.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * The local graph belongs to the framework; rdag drives it through one call: run backward from
 * these (edge, gradient) roots, handing gradients that leave the local graph to the sink (leaves:
 * accumulated in the context; rdag recv functions: sent back to the worker the tensors came
 * from). The default engine is rdag_graph's (rdag_graph_run: nodes made by rdag_graph_node()).
 * The engine is called on rdag's handler threads (or the caller's, for the root), possibly for
 * several passes of different contexts at once; it must not call back into rdag's backward.
 */
struct rdag_engine {
	int (*run)(void *engine, const struct rdag_edge_grad *roots, uint32_t n, bool retain_graph,
		   const struct rdag_grad_sink *sink);
	void *engine;
};

/* Installs e (copied) as this worker's engine; NULL restores rdag_graph's. Set it before any pass. */
RDAG_API int rdag_agent_set_engine(rdag_agent_t *a, const struct rdag_engine *e);

/*
 * Distributed backward (PyTorch's dist_autograd.backward): runs the pass of context ctx_id from
 * roots[0..n), each a scalar that requires grad, seeded with ones. Recv functions reached send
 * their gradients (zeros for the tensors that got none) to the worker the forward tensors came
 * from, which finds the send function by autograd message id, runs its part, and answers once
 * its part and everything it triggered are done; so this returns when the whole distributed
 * graph is done, or fails with the first error ("Error on Node <id>: ..." for a remote one).
 * Gradients of leaves accumulate in the context (rdag_ctx_grads) across passes. Errors, before
 * anything runs: RDAG_ENOENT (no such context), RDAG_EINVAL (no roots, a root that does not
 * require grad, is not a scalar, or has no grad_fn). A send function whose output never reached
 * the loss is simply not run: nothing waits for it. Thread-safe.
 *
 * retain_graph false releases what the pass ran (a later pass through it is an error). Within
 * one pass, each request a worker receives runs as its own local pass; with retain_graph false,
 * a local node reached by two of them fails the second: use retain_graph when a tensor that was
 * sent by RPC is also used locally on the sending worker.
 */
RDAG_API int rdag_backward(rdag_agent_t *a, uint64_t ctx_id, const struct rdag_tensor *roots,
			   uint32_t n, bool retain_graph);

/*
 * Backward from the value of RRef r, on its owner, inside context ctx_id (RREF_BACKWARD_REQ):
 * the value's tensors that require grad are the roots (scalars, seeded with ones). Returns when
 * the owner's pass, and all it triggered, is done. Thread-safe.
 */
RDAG_API int rdag_rref_backward(rdag_agent_t *a, uint64_t ctx_id, const struct rdag_rref *r,
				bool retain_graph);

#ifdef __cplusplus
}
#endif

#endif /* RDAG_BACKWARD_H */
