/* Host staging: pinned bounce buffer (cuMemHostAlloc), async copies on a stream, event polling. */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#include "gpu/gpu.h"
#include "gpu/gpu_cuda.h"
#include "util/err.h"

struct gpu_stage {
	const struct gpu_cu *cu;
	int device;
	void *host;
	size_t capacity;
	CUstream stream;
	CUevent done;
	int pending;            /* a copy was started and not seen complete yet */
};

int gpu_stage_create(int device, size_t capacity, struct gpu_stage **out)
{
	struct gpu_stage *s;
	CUresult r;
	int rc;

	if (!out || !capacity)
		return err_set(RDAG_EINVAL, "gpu: a staging buffer of %zu bytes", capacity);
	*out = NULL;
	rc = gpu_set_device(device);
	if (rc)
		return rc;
	s = calloc(1, sizeof(*s));
	if (!s)
		return err_set(RDAG_ENOMEM, "gpu: no memory for a staging buffer");
	s->cu = gpu_cu_get(NULL);
	s->device = device;
	s->capacity = capacity;
	r = s->cu->MemHostAlloc(&s->host, capacity, CU_MEMHOSTALLOC_PORTABLE);
	if (r != CUDA_SUCCESS) {
		s->host = NULL;
		rc = gpu_cu_err(r, "cuMemHostAlloc (staging buffer)");
		goto fail;
	}
	r = s->cu->StreamCreate(&s->stream, CU_STREAM_NON_BLOCKING);
	if (r != CUDA_SUCCESS) {
		s->stream = NULL;
		rc = gpu_cu_err(r, "cuStreamCreate (staging)");
		goto fail;
	}
	r = s->cu->EventCreate(&s->done, CU_EVENT_DISABLE_TIMING);
	if (r != CUDA_SUCCESS) {
		s->done = NULL;
		rc = gpu_cu_err(r, "cuEventCreate (staging)");
		goto fail;
	}
	*out = s;
	return 0;
fail:
	gpu_stage_destroy(s);
	return rc;
}

void gpu_stage_destroy(struct gpu_stage *s)
{
	if (!s)
		return;
	if (gpu_set_device(s->device) == 0) {
		if (s->done)
			s->cu->EventDestroy(s->done);
		if (s->stream)
			s->cu->StreamDestroy(s->stream); /* waits for work in flight */
		if (s->host)
			s->cu->MemFreeHost(s->host);
	}
	free(s);
}

void *gpu_stage_host(struct gpu_stage *s)
{
	return s->host;
}

size_t gpu_stage_capacity(const struct gpu_stage *s)
{
	return s->capacity;
}

static int start(struct gpu_stage *s, void *dev, size_t len, int to_host)
{
	CUresult r;
	int rc;

	if (!dev || !len || len > s->capacity)
		return err_set(RDAG_EINVAL, "gpu: staging %zu bytes through a %zu-byte buffer", len,
			       s->capacity);
	if (s->pending)
		return err_set(RDAG_EBUSY, "gpu: a staging copy is already in flight");
	rc = gpu_set_device(s->device);
	if (rc)
		return rc;
	if (to_host)
		r = s->cu->MemcpyDtoHAsync(s->host, (CUdeviceptr)(uintptr_t)dev, len, s->stream);
	else
		r = s->cu->MemcpyHtoDAsync((CUdeviceptr)(uintptr_t)dev, s->host, len, s->stream);
	if (r != CUDA_SUCCESS)
		return gpu_cu_err(r, to_host ? "cuMemcpyDtoHAsync (staging)" : "cuMemcpyHtoDAsync (staging)");
	r = s->cu->EventRecord(s->done, s->stream);
	if (r != CUDA_SUCCESS)
		return gpu_cu_err(r, "cuEventRecord (staging)");
	s->pending = 1;
	return 0;
}

int gpu_stage_to_host(struct gpu_stage *s, const void *src, size_t len)
{
	return start(s, (void *)(uintptr_t)src, len, 1);
}

int gpu_stage_to_device(struct gpu_stage *s, void *dst, size_t len)
{
	return start(s, dst, len, 0);
}

int gpu_stage_test(struct gpu_stage *s)
{
	CUresult r;

	if (!s->pending)
		return 0;
	r = s->cu->EventQuery(s->done);
	if (r == CUDA_ERROR_NOT_READY)
		return RDAG_EAGAIN;
	s->pending = 0;
	return r == CUDA_SUCCESS ? 0 : gpu_cu_err(r, "cuEventQuery (staging)");
}

int gpu_stage_device(const struct gpu_stage *s)
{
	return s->device;
}

#define STAGE_MIN ((size_t)64 << 10)

static struct {
	pthread_mutex_t lock;
	struct gpu_stage *idle[GPU_STAGE_POOL];
	unsigned n;
} pool = {.lock = PTHREAD_MUTEX_INITIALIZER};

int gpu_stage_get(int device, size_t len, struct gpu_stage **out)
{
	/* the smallest stage is 64 KiB: any smaller request may have one */
	size_t most = len > SIZE_MAX / 2 ? SIZE_MAX : len < STAGE_MIN / 2 ? STAGE_MIN : 2 * len, cap;
	unsigned best = GPU_STAGE_POOL;

	if (!out)
		return err_set(RDAG_EINVAL, "gpu: gpu_stage_get without an output");
	*out = NULL;
	pthread_mutex_lock(&pool.lock);
	for (unsigned i = 0; i < pool.n; i++) {
		size_t c = pool.idle[i]->capacity;

		if (pool.idle[i]->device == device && c >= len && c <= most &&
		    (best == GPU_STAGE_POOL || c < pool.idle[best]->capacity))
			best = i;
	}
	if (best < GPU_STAGE_POOL) {
		*out = pool.idle[best];
		pool.idle[best] = pool.idle[--pool.n];
	}
	pthread_mutex_unlock(&pool.lock);
	if (*out)
		return 0;
	cap = len < STAGE_MIN ? STAGE_MIN : (len + 4095) & ~(size_t)4095;
	return gpu_stage_create(device, cap, out);
}

void gpu_stage_put(struct gpu_stage *s)
{
	if (!s)
		return;
	if (!s->pending) {
		pthread_mutex_lock(&pool.lock);
		if (pool.n < GPU_STAGE_POOL) {
			pool.idle[pool.n++] = s;
			s = NULL;
		}
		pthread_mutex_unlock(&pool.lock);
	}
	gpu_stage_destroy(s); /* a full pool, or a copy never seen done: not reused */
}
