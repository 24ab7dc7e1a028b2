/* Tensors as a framework hands them to rdag: data pointer, dtype, shape, device, requires-grad, grad edge. */
#ifndef RDAG_TENSOR_H
#define RDAG_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <rdag/export.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * rdag never owns a framework's tensor memory: a struct rdag_tensor is a description of memory
 * the framework keeps alive for as long as the call that takes it says (docs/api.md).
 */

/* Element types (the same values as on the wire). */
enum rdag_dtype {
	RDAG_F16 = 1,
	RDAG_BF16 = 2,
	RDAG_F32 = 3,
	RDAG_F64 = 4,
	RDAG_I8 = 5,
	RDAG_I16 = 6,
	RDAG_I32 = 7,
	RDAG_I64 = 8,
	RDAG_U8 = 9,
	RDAG_BOOL = 10,
	RDAG_C64 = 11,
	RDAG_C128 = 12,
	RDAG_F8E4M3 = 13,
	RDAG_F8E5M2 = 14,
};

enum rdag_devtype { RDAG_DEV_CPU = 0, RDAG_DEV_CUDA = 1 };

#define RDAG_MAX_DIMS 8

/*
 * What a tensor's gradient flows back to (its grad_kind):
 *  - RDAG_GRAD_NONE: nothing (a constant, or a tensor that does not require grad);
 *  - RDAG_GRAD_LEAF: a leaf variable: its gradient accumulates in the context under
 *    grad_fn.node (the framework's key for the variable; NULL means "the data pointer");
 *  - RDAG_GRAD_NODE: grad_fn.node is the framework's graph node that produced the tensor and
 *    grad_fn.input_nr which of its outputs it is (rdag only records and hands it back);
 *  - RDAG_GRAD_RECV: the tensor arrived by an RPC with autograd: grad_fn.node is rdag's recv
 *    function (rdag_recv_fn_msg_id() names it) and input_nr the tensor's index in the message.
 */
enum rdag_grad_kind { RDAG_GRAD_NONE = 0, RDAG_GRAD_LEAF = 1, RDAG_GRAD_NODE = 2, RDAG_GRAD_RECV = 3 };

struct rdag_edge {
	void *node;
	uint32_t input_nr;
};

struct rdag_tensor {
	void *data;                   /* nbytes = product(shape) * element size */
	uint8_t dtype;                /* enum rdag_dtype */
	uint8_t ndim;                 /* <= RDAG_MAX_DIMS (0: a scalar) */
	uint8_t device_type;          /* enum rdag_devtype */
	uint16_t device_index;        /* CUDA ordinal; 0 for CPU */
	bool requires_grad;
	uint8_t grad_kind;            /* enum rdag_grad_kind */
	struct rdag_edge grad_fn;
	int64_t shape[RDAG_MAX_DIMS];
};

/* Bytes per element of dtype (0 if unknown). Thread-safe. */
RDAG_API size_t rdag_dtype_size(int dtype);

/* Bytes of t's data (product of the shape times the element size; 0 for a bad dtype). Thread-safe. */
RDAG_API size_t rdag_tensor_nbytes(const struct rdag_tensor *t);

/*
 * Fills t as a CPU tensor of dtype over data with ndim dims (shape may be NULL when ndim is 0),
 * not requiring grad. Thread-safe.
 */
RDAG_API void rdag_tensor_init(struct rdag_tensor *t, void *data, int dtype, unsigned ndim,
			       const int64_t *shape);

#ifdef __cplusplus
}
#endif

#endif /* RDAG_TENSOR_H */
