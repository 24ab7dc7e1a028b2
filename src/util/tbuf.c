/* Gradient buffers on a tensor's own device (see tbuf.h). */
#include <stdlib.h>
#include <string.h>

#include <rdag/graph.h>

#include "gpu/gpu.h"
#include "util/err.h"
#include "util/gbuf.h"
#include "util/tbuf.h"

static bool on_device(const struct rdag_tensor *t)
{
	return t->device_type == RDAG_DEV_CUDA;
}

bool tbuf_same_device(const struct rdag_tensor *a, const struct rdag_tensor *b)
{
	return a->device_type == b->device_type &&
	       (a->device_type == RDAG_DEV_CPU || a->device_index == b->device_index);
}

int tbuf_alloc(const struct rdag_tensor *meta, size_t nb, bool zero, void **out)
{
	void *p = NULL;
	int rc;

	*out = NULL;
	if (!on_device(meta)) {
		p = gbuf_alloc(nb, zero);
		if (!p)
			return err_set(RDAG_ENOMEM, "out of memory for a %zu-byte gradient", nb);
		*out = p;
		return 0;
	}
	rc = gpu_mem_alloc(meta->device_index, nb ? nb : 1, &p);
	if (!rc && zero && nb)
		rc = gpu_memset(p, 0, nb);
	if (rc) {
		gpu_mem_free(p);
		return err_set(rc, "a %zu-byte gradient on CUDA device %u: %s", nb,
			       meta->device_index, rdag_last_error());
	}
	*out = p;
	return 0;
}

void tbuf_free(const struct rdag_tensor *t)
{
	if (!t->data)
		return;
	if (on_device(t))
		gpu_mem_free(t->data);
	else
		gbuf_free(t->data);
}

int tbuf_copy_dtod(void *dst, const void *src, size_t nb)
{
	void *h = gbuf_alloc(nb, false);
	int rc = h ? gpu_memcpy_dtoh(h, src, nb) : err_set(RDAG_ENOMEM, "out of memory");

	if (!rc)
		rc = gpu_memcpy_htod(dst, h, nb);
	gbuf_free(h);
	return rc;
}

int tbuf_dup(const struct rdag_tensor *src, void **out)
{
	size_t nb = rdag_tensor_nbytes(src);
	void *p = NULL;
	int rc;

	*out = NULL;
	if (nb && !src->data)
		return err_set(RDAG_EINVAL, "a %zu-byte gradient without data", nb);
	rc = tbuf_alloc(src, nb, false, &p);
	if (rc)
		return rc;
	if (nb && !on_device(src)) {
		memcpy(p, src->data, nb);
	} else if (nb) {
		rc = tbuf_copy_dtod(p, src->data, nb);
		if (rc) {
			gpu_mem_free(p);
			return err_set(rc, "copying a gradient on CUDA device %u: %s",
				       src->device_index, rdag_last_error());
		}
	}
	*out = p;
	return 0;
}

int tbuf_add(struct rdag_tensor *dst, const struct rdag_tensor *src)
{
	size_t nb = rdag_tensor_nbytes(dst);
	struct rdag_tensor hd, hs;
	int rc;

	if (!on_device(dst) && !on_device(src))
		return rdag_tensor_add(dst, src);
	if (!tbuf_same_device(dst, src))
		return err_set(RDAG_EINVAL, "adding a gradient of device %u:%u into one of device %u:%u",
			       src->device_type, src->device_index, dst->device_type,
			       dst->device_index);
	if (nb != rdag_tensor_nbytes(src) || dst->dtype != src->dtype)
		return err_set(RDAG_EINVAL, "rdag_tensor_add: tensors of different types or sizes");
	hd = *dst;
	hs = *src;
	hd.data = gbuf_alloc(nb, false);
	hs.data = gbuf_alloc(nb, false);
	rc = hd.data && hs.data ? 0 : err_set(RDAG_ENOMEM, "out of memory adding gradients");
	if (!rc)
		rc = gpu_memcpy_dtoh(hd.data, dst->data, nb);
	if (!rc)
		rc = gpu_memcpy_dtoh(hs.data, src->data, nb);
	if (!rc)
		rc = rdag_tensor_add(&hd, &hs);
	if (!rc)
		rc = gpu_memcpy_htod(dst->data, hd.data, nb);
	gbuf_free(hd.data);
	gbuf_free(hs.data);
	return rc;
}
