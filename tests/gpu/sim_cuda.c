/*
 * A simulated CUDA driver for hosts without a GPU: every entry point rdag loads, behaving as a
 * driver with two devices whose memory is host memory behind addresses the host cannot touch.
 *
 * - Device memory: cuMemAlloc reserves an inaccessible range (PROT_NONE) as the device address
 *   and keeps the bytes elsewhere, so rdag code that dereferences a device pointer on the host
 *   crashes here as it would on a GPU host. Only the driver's copies and memset reach the bytes.
 * - Every allocation has a buffer id that is never reused, as CU_POINTER_ATTRIBUTE_BUFFER_ID.
 * - Streams queue their async copies; an event recorded on a stream answers CUDA_ERROR_NOT_READY
 *   to its first query, then runs the stream's copies up to it and answers CUDA_SUCCESS, so
 *   callers must poll. cuStreamDestroy runs what is still queued. The simulated NCCL
 *   (sim_nccl.c, in the same library where nccl.h is) queues its transfers on streams too: an
 *   event past one is ready only once the transfer is done.
 * - No dma-buf, no GPUDirect: cuMemGetHandleForAddressRange answers CUDA_ERROR_NOT_SUPPORTED.
 *
 * Built only where cuda.h is (the prototypes and enum values are the real ones). One lock around
 * its tables and one per stream, which is all the tests need.
 */
#include <cuda.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "sim_int.h"

#define SIM_DEVICES 2
#define SIM_MAX_ALLOCS 4096
#define SIM_MAX_OPS 256

struct sim_alloc {
	uintptr_t base;         /* the address handed out (PROT_NONE for device memory) */
	size_t size;
	void *bytes;            /* where device bytes really are (== base for pinned host memory) */
	int device;             /* -1: pinned host memory */
	unsigned long long id;
};

struct sim_op {
	void *dst;
	const void *src;
	size_t len;
	struct sim_wait *wait;  /* not a copy: done when wait->done (the simulated NCCL's transfers) */
};

struct CUstream_st {
	pthread_mutex_t lock;   /* streams are used from several threads, as on a GPU */
	struct sim_op ops[SIM_MAX_OPS];
	unsigned head;          /* the next op to run */
	unsigned nops;
	unsigned long long seq; /* ops queued so far */
	unsigned long long run; /* ops run so far */
};

struct CUevent_st {
	struct CUstream_st *stream;
	unsigned long long mark; /* the stream's seq when recorded */
	int queried;
};

struct CUctx_st {
	int device;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct sim_alloc allocs[SIM_MAX_ALLOCS];
static unsigned nallocs;
static unsigned long long next_id = 1;
static struct CUctx_st ctxs[SIM_DEVICES] = {{0}, {1}};
static _Thread_local struct CUctx_st *current;
static int initialized;

/* The allocation holding [p, p + len), or NULL. Lock held. */
static struct sim_alloc *find(uintptr_t p, size_t len)
{
	for (unsigned i = 0; i < nallocs; i++) {
		struct sim_alloc *a = &allocs[i];

		if (p >= a->base && p - a->base < a->size && len <= a->size - (p - a->base))
			return a;
	}
	return NULL;
}

/* The host bytes behind device range [d, d + len), or NULL when it is not one device buffer. */
static void *dev_bytes(CUdeviceptr d, size_t len)
{
	struct sim_alloc *a;
	void *p = NULL;

	pthread_mutex_lock(&lock);
	a = find((uintptr_t)d, len ? len : 1);
	if (a && a->device >= 0)
		p = (uint8_t *)a->bytes + ((uintptr_t)d - a->base);
	pthread_mutex_unlock(&lock);
	return p;
}

static CUresult add_alloc(uintptr_t base, size_t size, void *bytes, int device)
{
	pthread_mutex_lock(&lock);
	if (nallocs == SIM_MAX_ALLOCS) {
		pthread_mutex_unlock(&lock);
		return CUDA_ERROR_OUT_OF_MEMORY;
	}
	allocs[nallocs++] = (struct sim_alloc){base, size, bytes, device, next_id++};
	pthread_mutex_unlock(&lock);
	return CUDA_SUCCESS;
}

/* Removes the allocation starting at base; its record in *out. */
static int remove_alloc(uintptr_t base, int device_memory, struct sim_alloc *out)
{
	int found = 0;

	pthread_mutex_lock(&lock);
	for (unsigned i = 0; i < nallocs; i++) {
		if (allocs[i].base == base && (allocs[i].device >= 0) == device_memory) {
			*out = allocs[i];
			allocs[i] = allocs[--nallocs];
			found = 1;
			break;
		}
	}
	pthread_mutex_unlock(&lock);
	return found;
}

CUresult cuDriverGetVersion(int *v)
{
	*v = CUDA_VERSION;
	return CUDA_SUCCESS;
}

CUresult cuGetErrorString(CUresult r, const char **s)
{
	switch (r) {
	case CUDA_SUCCESS: *s = "no error"; break;
	case CUDA_ERROR_INVALID_VALUE: *s = "invalid argument (simulated driver)"; break;
	case CUDA_ERROR_OUT_OF_MEMORY: *s = "out of memory (simulated driver)"; break;
	case CUDA_ERROR_NOT_INITIALIZED: *s = "initialization error (simulated driver)"; break;
	case CUDA_ERROR_INVALID_DEVICE: *s = "invalid device ordinal (simulated driver)"; break;
	case CUDA_ERROR_INVALID_CONTEXT: *s = "invalid device context (simulated driver)"; break;
	case CUDA_ERROR_NOT_READY: *s = "device not ready"; break;
	case CUDA_ERROR_NOT_SUPPORTED: *s = "operation not supported (simulated driver)"; break;
	default: *s = "unknown error (simulated driver)"; break;
	}
	return CUDA_SUCCESS;
}

CUresult cuInit(unsigned int flags)
{
	if (flags)
		return CUDA_ERROR_INVALID_VALUE;
	initialized = 1;
	return CUDA_SUCCESS;
}

CUresult cuDeviceGetCount(int *n)
{
	if (!initialized)
		return CUDA_ERROR_NOT_INITIALIZED;
	*n = SIM_DEVICES;
	return CUDA_SUCCESS;
}

CUresult cuDeviceGet(CUdevice *dev, int ordinal)
{
	if (!initialized)
		return CUDA_ERROR_NOT_INITIALIZED;
	if (ordinal < 0 || ordinal >= SIM_DEVICES)
		return CUDA_ERROR_INVALID_DEVICE;
	*dev = ordinal;
	return CUDA_SUCCESS;
}

CUresult cuDeviceGetName(char *name, int len, CUdevice dev)
{
	if (dev < 0 || dev >= SIM_DEVICES)
		return CUDA_ERROR_INVALID_DEVICE;
	snprintf(name, (size_t)len, "rdag simulated GPU %d", dev);
	return CUDA_SUCCESS;
}

CUresult cuDeviceGetAttribute(int *v, CUdevice_attribute attr, CUdevice dev)
{
	if (dev < 0 || dev >= SIM_DEVICES)
		return CUDA_ERROR_INVALID_DEVICE;
	(void)attr;
	*v = 0; /* no dma-buf, no GPUDirect RDMA, nothing else asked for */
	return CUDA_SUCCESS;
}

CUresult cuDeviceGetPCIBusId(char *id, int len, CUdevice dev)
{
	if (dev < 0 || dev >= SIM_DEVICES)
		return CUDA_ERROR_INVALID_DEVICE;
	snprintf(id, (size_t)len, "0000:%02x:00.0", 0x40 + dev);
	return CUDA_SUCCESS;
}

CUresult cuDeviceTotalMem(size_t *bytes, CUdevice dev)
{
	if (dev < 0 || dev >= SIM_DEVICES)
		return CUDA_ERROR_INVALID_DEVICE;
	*bytes = (size_t)1 << 30;
	return CUDA_SUCCESS;
}

CUresult cuDevicePrimaryCtxRetain(CUcontext *ctx, CUdevice dev)
{
	if (dev < 0 || dev >= SIM_DEVICES)
		return CUDA_ERROR_INVALID_DEVICE;
	*ctx = &ctxs[dev];
	return CUDA_SUCCESS;
}

CUresult cuDevicePrimaryCtxRelease(CUdevice dev)
{
	return dev < 0 || dev >= SIM_DEVICES ? CUDA_ERROR_INVALID_DEVICE : CUDA_SUCCESS;
}

CUresult cuCtxSetCurrent(CUcontext ctx)
{
	if (ctx && ctx != &ctxs[0] && ctx != &ctxs[1])
		return CUDA_ERROR_INVALID_CONTEXT;
	current = ctx;
	return CUDA_SUCCESS;
}

CUresult cuPointerGetAttributes(unsigned int n, CUpointer_attribute *attrs, void **data,
				CUdeviceptr ptr)
{
	struct sim_alloc a = {0}, *f;
	int known;

	pthread_mutex_lock(&lock);
	f = find((uintptr_t)ptr, 1);
	known = f != NULL;
	if (f)
		a = *f;
	pthread_mutex_unlock(&lock);
	for (unsigned i = 0; i < n; i++) {
		switch (attrs[i]) {
		case CU_POINTER_ATTRIBUTE_MEMORY_TYPE:
			*(unsigned int *)data[i] = !known ? 0 : a.device >= 0 ? CU_MEMORYTYPE_DEVICE :
				CU_MEMORYTYPE_HOST;
			break;
		case CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL:
			*(int *)data[i] = known && a.device >= 0 ? a.device : -2;
			break;
		case CU_POINTER_ATTRIBUTE_BUFFER_ID:
			*(unsigned long long *)data[i] = known ? a.id : 0;
			break;
		case CU_POINTER_ATTRIBUTE_RANGE_START_ADDR:
			*(CUdeviceptr *)data[i] = known ? a.base : 0;
			break;
		case CU_POINTER_ATTRIBUTE_RANGE_SIZE:
			*(size_t *)data[i] = known ? a.size : 0;
			break;
		case CU_POINTER_ATTRIBUTE_IS_MANAGED:
			*(unsigned int *)data[i] = 0;
			break;
		default:
			return CUDA_ERROR_INVALID_VALUE;
		}
	}
	return CUDA_SUCCESS;
}

CUresult cuMemAlloc(CUdeviceptr *d, size_t len)
{
	void *addr, *bytes;
	CUresult r;

	if (!current)
		return CUDA_ERROR_INVALID_CONTEXT;
	if (!len)
		return CUDA_ERROR_INVALID_VALUE;
	addr = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (addr == MAP_FAILED)
		return CUDA_ERROR_OUT_OF_MEMORY;
	bytes = calloc(1, len);
	if (!bytes) {
		munmap(addr, len);
		return CUDA_ERROR_OUT_OF_MEMORY;
	}
	r = add_alloc((uintptr_t)addr, len, bytes, current->device);
	if (r != CUDA_SUCCESS) {
		free(bytes);
		munmap(addr, len);
		return r;
	}
	*d = (CUdeviceptr)(uintptr_t)addr;
	return CUDA_SUCCESS;
}

CUresult cuMemFree(CUdeviceptr d)
{
	struct sim_alloc a;

	if (!remove_alloc((uintptr_t)d, 1, &a))
		return CUDA_ERROR_INVALID_VALUE;
	free(a.bytes);
	munmap((void *)a.base, a.size);
	return CUDA_SUCCESS;
}

CUresult cuMemHostAlloc(void **p, size_t len, unsigned int flags)
{
	void *m;
	CUresult r;

	(void)flags;
	if (!current)
		return CUDA_ERROR_INVALID_CONTEXT;
	if (!len)
		return CUDA_ERROR_INVALID_VALUE;
	m = calloc(1, len);
	if (!m)
		return CUDA_ERROR_OUT_OF_MEMORY;
	r = add_alloc((uintptr_t)m, len, m, -1);
	if (r != CUDA_SUCCESS) {
		free(m);
		return r;
	}
	*p = m;
	return CUDA_SUCCESS;
}

CUresult cuMemFreeHost(void *p)
{
	struct sim_alloc a;

	if (!remove_alloc((uintptr_t)p, 0, &a))
		return CUDA_ERROR_INVALID_VALUE;
	free(a.bytes);
	return CUDA_SUCCESS;
}

CUresult cuMemcpyHtoD(CUdeviceptr dst, const void *src, size_t len)
{
	void *d = dev_bytes(dst, len);

	if (!d)
		return CUDA_ERROR_INVALID_VALUE;
	memcpy(d, src, len);
	return CUDA_SUCCESS;
}

CUresult cuMemcpyDtoH(void *dst, CUdeviceptr src, size_t len)
{
	void *s = dev_bytes(src, len);

	if (!s)
		return CUDA_ERROR_INVALID_VALUE;
	memcpy(dst, s, len);
	return CUDA_SUCCESS;
}

/* Runs a stream's queued ops in order, up to the first transfer still running. Stream lock held. */
static void advance(struct CUstream_st *s)
{
	while (s->head < s->nops) {
		struct sim_op *o = &s->ops[s->head];

		if (o->wait) {
			if (!atomic_load(&o->wait->done))
				break;
			sim_wait_put(o->wait);
		} else {
			memcpy(o->dst, o->src, o->len);
		}
		s->head++;
		s->run++;
	}
	if (s->head == s->nops)
		s->head = s->nops = 0;
}

static CUresult push(struct CUstream_st *s, struct sim_op op)
{
	pthread_mutex_lock(&s->lock);
	if (s->nops == SIM_MAX_OPS)
		advance(s);
	if (s->nops == SIM_MAX_OPS) {
		pthread_mutex_unlock(&s->lock);
		return CUDA_ERROR_OUT_OF_MEMORY;
	}
	s->ops[s->nops++] = op;
	s->seq++;
	pthread_mutex_unlock(&s->lock);
	return CUDA_SUCCESS;
}

static CUresult enqueue(CUstream s, void *dst, const void *src, size_t len)
{
	if (!s) { /* the legacy default stream: synchronous enough for rdag's uses */
		memcpy(dst, src, len);
		return CUDA_SUCCESS;
	}
	return push(s, (struct sim_op){dst, src, len, NULL});
}

CUresult sim_stream_push_wait(CUstream s, struct sim_wait *w)
{
	if (!s)
		return CUDA_ERROR_INVALID_VALUE;
	return push(s, (struct sim_op){NULL, NULL, 0, w});
}

void *sim_dev_bytes(CUdeviceptr d, size_t len, int *device)
{
	struct sim_alloc *a;
	void *p = NULL;

	pthread_mutex_lock(&lock);
	a = find((uintptr_t)d, len ? len : 1);
	if (a && a->device >= 0) {
		p = (uint8_t *)a->bytes + ((uintptr_t)d - a->base);
		*device = a->device;
	}
	pthread_mutex_unlock(&lock);
	return p;
}

int sim_current_device(void)
{
	return current ? current->device : -1;
}

CUresult cuMemcpyHtoDAsync(CUdeviceptr dst, const void *src, size_t len, CUstream s)
{
	void *d = dev_bytes(dst, len);

	return d ? enqueue(s, d, src, len) : CUDA_ERROR_INVALID_VALUE;
}

CUresult cuMemcpyDtoHAsync(void *dst, CUdeviceptr src, size_t len, CUstream s)
{
	void *p = dev_bytes(src, len);

	return p ? enqueue(s, dst, p, len) : CUDA_ERROR_INVALID_VALUE;
}

CUresult cuMemsetD8(CUdeviceptr dst, unsigned char v, size_t n)
{
	void *d = dev_bytes(dst, n);

	if (!d)
		return CUDA_ERROR_INVALID_VALUE;
	memset(d, v, n);
	return CUDA_SUCCESS;
}

CUresult cuMemGetHandleForAddressRange(void *handle, CUdeviceptr d, size_t len,
				       CUmemRangeHandleType type, unsigned long long flags)
{
	(void)handle;
	(void)d;
	(void)len;
	(void)type;
	(void)flags;
	return CUDA_ERROR_NOT_SUPPORTED;
}

CUresult cuStreamCreate(CUstream *s, unsigned int flags)
{
	(void)flags;
	if (!current)
		return CUDA_ERROR_INVALID_CONTEXT;
	*s = calloc(1, sizeof(**s));
	if (!*s)
		return CUDA_ERROR_OUT_OF_MEMORY;
	pthread_mutex_init(&(*s)->lock, NULL);
	return CUDA_SUCCESS;
}

CUresult cuStreamDestroy(CUstream s)
{
	if (!s)
		return CUDA_ERROR_INVALID_VALUE;
	pthread_mutex_lock(&s->lock);
	advance(s);
	/* Transfers still running keep their own reference: only the stream's goes. */
	for (unsigned i = s->head; i < s->nops; i++)
		if (s->ops[i].wait)
			sim_wait_put(s->ops[i].wait);
	pthread_mutex_unlock(&s->lock);
	pthread_mutex_destroy(&s->lock);
	free(s);
	return CUDA_SUCCESS;
}

CUresult cuEventCreate(CUevent *e, unsigned int flags)
{
	(void)flags;
	*e = calloc(1, sizeof(**e));
	return *e ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}

CUresult cuEventRecord(CUevent e, CUstream s)
{
	if (!e)
		return CUDA_ERROR_INVALID_VALUE;
	e->stream = s;
	if (s) {
		pthread_mutex_lock(&s->lock);
		e->mark = s->seq;
		pthread_mutex_unlock(&s->lock);
	}
	e->queried = 0;
	return CUDA_SUCCESS;
}

CUresult cuEventQuery(CUevent e)
{
	if (!e)
		return CUDA_ERROR_INVALID_VALUE;
	CUresult r;

	if (!e->stream)
		return CUDA_SUCCESS;
	pthread_mutex_lock(&e->stream->lock);
	if (e->stream->run >= e->mark) {
		r = CUDA_SUCCESS;
	} else if (!e->queried++) {
		r = CUDA_ERROR_NOT_READY;
	} else {
		advance(e->stream);
		r = e->stream->run >= e->mark ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY;
	}
	pthread_mutex_unlock(&e->stream->lock);
	return r;
}

CUresult cuEventDestroy(CUevent e)
{
	free(e);
	return CUDA_SUCCESS;
}
