/* The gpu/ interface in a build without CUDA: nothing is device memory, GPU calls say RDAG_ENOCUDA. */
#include <stdio.h>
#include <string.h>

#include "gpu/gpu.h"
#include "util/err.h"

#define NOCUDA() err_set(RDAG_ENOCUDA, "gpu: this librdag was built without CUDA (RDAG_WITH_CUDA=OFF or no CUDA toolkit found)")

int gpu_built(void)
{
	return 0;
}

int gpu_init(void)
{
	return NOCUDA();
}

int gpu_probe(struct gpu_info *info)
{
	memset(info, 0, sizeof(*info));
	snprintf(info->why, sizeof(info->why), "built without CUDA");
	return NOCUDA();
}

int gpu_device_query(int device, struct gpu_device_info *out)
{
	memset(out, 0, sizeof(*out));
	return NOCUDA();
}

int gpu_set_device(int device)
{
	return NOCUDA();
}

int gpu_ptr_classify(const void *ptr, struct gpu_ptr_info *out)
{
	if (!out)
		return err_set(RDAG_EINVAL, "gpu: gpu_ptr_classify without an output");
	memset(out, 0, sizeof(*out));
	out->type = GPU_MEM_HOST;
	out->device = -1;
	return 0;
}

int gpu_mem_alloc(int device, size_t len, void **out)
{
	if (out)
		*out = NULL;
	return NOCUDA();
}

void gpu_mem_free(void *dptr)
{
}

int gpu_memcpy_htod(void *dst, const void *src, size_t len)
{
	return NOCUDA();
}

int gpu_memcpy_dtoh(void *dst, const void *src, size_t len)
{
	return NOCUDA();
}

int gpu_memset(void *dst, uint8_t byte, size_t len)
{
	return NOCUDA();
}

int gpu_dmabuf_get(const void *addr, size_t len, int *fd, uint64_t *offset)
{
	return NOCUDA();
}

int gpu_dmabuf_supported(int device)
{
	return NOCUDA();
}

int gpu_stage_create(int device, size_t capacity, struct gpu_stage **out)
{
	if (out)
		*out = NULL;
	return NOCUDA();
}

/* No stage can exist in this build: the accessors below are never reached with one. */
void gpu_stage_destroy(struct gpu_stage *s)
{
}

void *gpu_stage_host(struct gpu_stage *s)
{
	return NULL;
}

size_t gpu_stage_capacity(const struct gpu_stage *s)
{
	return 0;
}

int gpu_stage_to_host(struct gpu_stage *s, const void *src, size_t len)
{
	return NOCUDA();
}

int gpu_stage_to_device(struct gpu_stage *s, void *dst, size_t len)
{
	return NOCUDA();
}

int gpu_stage_test(struct gpu_stage *s)
{
	return NOCUDA();
}

int gpu_stage_device(const struct gpu_stage *s)
{
	return -1;
}

int gpu_stage_get(int device, size_t len, struct gpu_stage **out)
{
	if (out)
		*out = NULL;
	return NOCUDA();
}

void gpu_stage_put(struct gpu_stage *s)
{
}
