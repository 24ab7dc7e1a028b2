/* rdag_graph: the reference local autograd engine (nodes with backward callbacks, dependency counts, a ready queue). */
#ifndef RDAG_GRAPH_H
#define RDAG_GRAPH_H

#include <stdbool.h>
#include <stdint.h>

#include <rdag/export.h>
#include <rdag/tensor.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * A framework brings its own autograd graph; rdag_graph is the small one rdag ships for C users,
 * the tests and the examples. A node stands for one forward operation: it knows the tensors it
 * consumed (their grad_kind and grad_fn are its next edges) and the shapes of its outputs. Its
 * backward callback turns the gradients of its outputs into gradients of its inputs.
 *
 * rdag_graph_run() runs backward from a set of (edge, gradient) roots: dependency counting over
 * the nodes reachable from the roots, a ready queue, each node run once all the gradients of its
 * outputs are in (outputs that got none are zeros). Gradients reaching a leaf or an rdag recv
 * function are handed to the sink. Supported dtypes for accumulation: f32, f64, i32, i64.
 *
 * Gradients are not copied: a node's output gradient is the buffer that reached it (a root's
 * gradient, read in place, or the buffer another node filled, moved), and is copied only when a
 * second one must be added to a buffer it does not own; the buffers a node fills move on to the
 * next node or, through the sink's *_take callbacks, to the sink.
 *
 * Threads: a graph may be built and run from several threads (one mutex per graph); callbacks
 * run on the thread inside rdag_graph_run(), without the graph's lock.
 */

typedef struct rdag_graph rdag_graph_t;

/*
 * A node's backward: grad_out[0..n_out) are the gradients of its outputs (never NULL data for a
 * non-empty tensor: zeros when an output got none), grad_in[0..n_in) are zeroed buffers shaped
 * like its inputs, to be filled (entries of inputs that do not require grad have data NULL).
 * Returns 0 or a negative code (the pass fails with it).
 */
typedef int (*rdag_node_fn)(void *arg, const struct rdag_tensor *grad_out, uint32_t n_out,
			    struct rdag_tensor *grad_in, uint32_t n_in);

RDAG_API int rdag_graph_create(rdag_graph_t **out);
/* Frees every node (and what their arguments need is the caller's). NULL is a no-op. */
RDAG_API void rdag_graph_destroy(rdag_graph_t *g);

/*
 * Adds a node for an operation that consumed inputs[0..n_in) and produced n_out outputs shaped
 * like outputs[0..n_out) (only dtype, ndim and shape are read). *node is the handle to put in
 * the outputs' grad_fn (grad_kind RDAG_GRAD_NODE, input_nr = the output's index). Thread-safe.
 */
RDAG_API int rdag_graph_node(rdag_graph_t *g, rdag_node_fn fn, void *arg,
			     const struct rdag_tensor *inputs, uint32_t n_in,
			     const struct rdag_tensor *outputs, uint32_t n_out, void **node);

/*
 * Node flags (rdag_graph_node_flags):
 * RDAG_NODE_WRITES_ALL: the backward writes every byte of each grad_in buffer it is given (data
 * not NULL), as most operations do (an identity, a scale, a broadcast of a sum). The engine then
 * hands it buffers that are not zeroed, which saves a pass over each input gradient; bytes such a
 * node leaves unwritten hold whatever the buffer held before.
 */
#define RDAG_NODE_WRITES_ALL 0x1u
/*
 * RDAG_NODE_IDENTITY: the backward is the identity, input i's gradient is output i's (a view, a
 * reshape, a copy, one operand of an add). The engine does not call the node: it hands each
 * output's gradient on as the input's, without a copy (a buffer it owns moves on; a root's is
 * lent on, read in place). Needs as many inputs as outputs, each with the dtype and the element
 * count of its output.
 */
#define RDAG_NODE_IDENTITY 0x2u

/*
 * Sets a node's flags (replacing the earlier ones), before it runs: a pass already running may
 * see either. RDAG_EINVAL for a handle that is not a node, an unknown flag, or RDAG_NODE_IDENTITY
 * on a node whose inputs and outputs do not pair up. Thread-safe.
 */
RDAG_API int rdag_graph_node_flags(void *node, uint32_t flags);

/* A root of a backward pass: the gradient flowing into one edge. */
struct rdag_edge_grad {
	uint8_t grad_kind;            /* enum rdag_grad_kind (NONE roots are ignored) */
	struct rdag_edge edge;
	struct rdag_tensor grad;      /* read during the call only */
};

/*
 * Where gradients leave the local graph. The tensors are valid during the call only. check, when
 * set, is called before each node runs: a non-zero return (RDAG_EABORTED when another worker's
 * part of the pass failed) stops the pass, which returns it. An engine of one's own should call
 * it as often (between its nodes): that is how a failed distributed pass stops everywhere.
 */
struct rdag_grad_sink {
	int (*leaf)(void *arg, void *var, const struct rdag_tensor *grad);
	int (*recv)(void *arg, void *recv_fn, uint32_t input_nr, const struct rdag_tensor *grad);
	void *arg;
	int (*check)(void *arg);
	/*
	 * Optional, and what keeps gradients from being copied: as leaf and recv, but grad->data
	 * (from malloc; for a CUDA tensor, device memory from cuMemAlloc) is handed over, the
	 * sink frees it (free(), cuMemFree), whatever it returns. An engine calls them, when set,
	 * for buffers it would free next (rdag_graph: the gradients a node computed); the others
	 * go to leaf and recv.
	 */
	int (*leaf_take)(void *arg, void *var, struct rdag_tensor *grad);
	int (*recv_take)(void *arg, void *recv_fn, uint32_t input_nr, struct rdag_tensor *grad);
	/*
	 * The distributed pass this run belongs to (0: none). The requests of one pass that reach
	 * a worker run there separately, so a node reached by two of them runs once per request
	 * (backward is linear in the incoming gradient: the sum is the same). With retain_graph
	 * false a node freed by a run of pass P may therefore run again in P, but not in another.
	 */
	uint64_t pass_id;
};

/*
 * Runs backward from roots[0..n) (g may be NULL: nodes of any graph may be reached). retain_graph false frees the nodes it ran (a later pass through
 * them, but one of the same sink->pass_id, fails with RDAG_EINVAL, "the graph was freed: run backward with retain_graph to run it
 * twice"). Returns 0, a node's or a sink's error (sink->check's included), RDAG_ENOSYS for a dtype it cannot add, or
 * RDAG_EINVAL for a gradient whose shape does not match. Thread-safe.
 */
RDAG_API int rdag_graph_run(rdag_graph_t *g, const struct rdag_edge_grad *roots, uint32_t n,
			    bool retain_graph, const struct rdag_grad_sink *sink);

/* dst += src elementwise (same dtype and element count); RDAG_ENOSYS for other dtypes. Thread-safe. */
RDAG_API int rdag_tensor_add(struct rdag_tensor *dst, const struct rdag_tensor *src);

#ifdef __cplusplus
}
#endif

#endif /* RDAG_GRAPH_H */
