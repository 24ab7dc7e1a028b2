/* Gradient buffers on a tensor's own device: host memory (gbuf) or CUDA device memory. */
#ifndef RDAG_UTIL_TBUF_H
#define RDAG_UTIL_TBUF_H

#include <stdbool.h>
#include <stddef.h>

#include <rdag/tensor.h>

/*
 * The engine and the backward sinks make, copy, add and free gradients wherever they live. For a
 * CPU tensor these are gbuf_alloc / memcpy / rdag_tensor_add / gbuf_free, unchanged. For a CUDA
 * tensor (device_type RDAG_DEV_CUDA, device_index d) the buffer is device memory of d
 * (gpu_mem_alloc), and copies and sums go through host memory: rdag has no device kernels, so a
 * device gradient that meets a second one costs two copies each way (docs/gpu.md).
 */

/* Whether a and b live on the same device (the CPU's index is not compared). */
bool tbuf_same_device(const struct rdag_tensor *a, const struct rdag_tensor *b);
/* nb bytes on meta's device (zeroed when zero) in *out; the error (RDAG_ENOMEM, ...) else. */
int tbuf_alloc(const struct rdag_tensor *meta, size_t nb, bool zero, void **out);
/* Frees t->data, which tbuf_alloc made for t's device (NULL is a no-op). */
void tbuf_free(const struct rdag_tensor *t);
/* A new buffer on src's device holding src's bytes in *out; the error else. */
int tbuf_dup(const struct rdag_tensor *src, void **out);
/*
 * Copies nb bytes of device memory src to device memory dst (the same or another device)
 * through a host buffer: rdag has no peer copies. 0, or the driver's error.
 */
int tbuf_copy_dtod(void *dst, const void *src, size_t nb);
/* *dst += *src, both on dst's device (RDAG_EINVAL when the devices differ). */
int tbuf_add(struct rdag_tensor *dst, const struct rdag_tensor *src);

#endif /* RDAG_UTIL_TBUF_H */
