/* The device registration cache's identity callback over the CUDA driver (buffer ids). */
#include "gpu/gpu.h"
#include "rcache/rcache_dev.h"
#include "util/err.h"

int gpu_rcache_ident(void *arg, const void *addr, struct rcache_dev_ident *out)
{
	struct gpu_ptr_info pi;
	int rc = gpu_ptr_classify(addr, &pi);

	(void)arg;
	if (rc)
		return rc;
	if (pi.type != GPU_MEM_DEVICE || !pi.buffer_id)
		return err_set(RDAG_EINVAL, "gpu: %p is not CUDA device memory", addr);
	out->buffer_id = pi.buffer_id;
	out->device = pi.device;
	out->base = pi.base;
	out->size = pi.size;
	return 0;
}
