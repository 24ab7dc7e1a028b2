/* NCCL point-to-point data plane: a communicator per peer pair, grouped send/recv, polled events. */
#include <dlfcn.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wstrict-prototypes" /* nccl.h: ncclGroupStart(); */
#include <nccl.h>
#pragma GCC diagnostic pop

#include "gpu/gpu.h"
#include "gpu/gpu_cuda.h"
#include "util/err.h"
#include "util/log.h"

#define DEFAULT_NCCL_LIBRARY "libnccl.so.2"

_Static_assert(GPU_NCCL_ID_BYTES == NCCL_UNIQUE_ID_BYTES, "GPU_NCCL_ID_BYTES is NCCL's id size");
_Static_assert(sizeof(ncclUniqueId) == NCCL_UNIQUE_ID_BYTES, "ncclUniqueId is its bytes");

/* NCCL entry points (by their exported names; NCCL does not version its symbols). */
static struct {
	pthread_once_t once;
	void *handle;
	int rc;
	int version;
	char msg[256];
	ncclResult_t (*GetVersion)(int *);
	ncclResult_t (*GetUniqueId)(ncclUniqueId *);
	ncclResult_t (*CommInitRank)(ncclComm_t *, int, ncclUniqueId, int);
	/* NCCL >= 2.14, optional: a communicator that joins without blocking the caller. */
	ncclResult_t (*CommInitRankConfig)(ncclComm_t *, int, ncclUniqueId, int, ncclConfig_t *);
	ncclResult_t (*CommDestroy)(ncclComm_t);
	ncclResult_t (*CommAbort)(ncclComm_t);
	ncclResult_t (*CommGetAsyncError)(ncclComm_t, ncclResult_t *);
	const char *(*GetErrorString)(ncclResult_t);
	ncclResult_t (*Send)(const void *, size_t, ncclDataType_t, int, ncclComm_t, cudaStream_t);
	ncclResult_t (*Recv)(void *, size_t, ncclDataType_t, int, ncclComm_t, cudaStream_t);
	ncclResult_t (*GroupStart)(void);
	ncclResult_t (*GroupEnd)(void);
} nc = {.once = PTHREAD_ONCE_INIT};

struct gpu_nccl_comm {
	const struct gpu_cu *cu;
	ncclComm_t comm;
	CUstream stream;
	int device;
	int peer;               /* the other rank of the pair: 1 - pair_rank */
	int failed;             /* NCCL reported an error: no more posts */
	int joining;            /* a non-blocking join not yet seen to end */
	int timeout_ms;         /* how long a post waits for NCCL to enqueue (non-blocking) */
};

struct gpu_nccl_req {
	struct gpu_nccl_comm *c;
	CUevent done;
	int complete;
};

static void nccl_load_once(void)
{
	static const struct {
		const char *name;
		void **slot;
	} syms[] = {
		{"ncclGetVersion", (void **)&nc.GetVersion},
		{"ncclGetUniqueId", (void **)&nc.GetUniqueId},
		{"ncclCommInitRank", (void **)&nc.CommInitRank},
		{"ncclCommDestroy", (void **)&nc.CommDestroy},
		{"ncclCommAbort", (void **)&nc.CommAbort},
		{"ncclCommGetAsyncError", (void **)&nc.CommGetAsyncError},
		{"ncclGetErrorString", (void **)&nc.GetErrorString},
		{"ncclSend", (void **)&nc.Send},
		{"ncclRecv", (void **)&nc.Recv},
		{"ncclGroupStart", (void **)&nc.GroupStart},
		{"ncclGroupEnd", (void **)&nc.GroupEnd},
	};
	const char *lib = getenv("RDAG_NCCL_LIBRARY");

	if (!lib || !lib[0])
		lib = DEFAULT_NCCL_LIBRARY;
	nc.handle = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
	if (!nc.handle) {
		const char *e = dlerror();

		nc.rc = RDAG_ENONCCL;
		snprintf(nc.msg, sizeof(nc.msg), "gpu: NCCL is missing: dlopen(%s): %s", lib,
			 e ? e : "failed");
		return;
	}
	for (size_t i = 0; i < sizeof(syms) / sizeof(syms[0]); i++) {
		void *f = dlsym(nc.handle, syms[i].name);

		if (!f) {
			nc.rc = RDAG_ENONCCL;
			snprintf(nc.msg, sizeof(nc.msg), "gpu: NCCL library %s lacks %s", lib, syms[i].name);
			for (size_t j = 0; j < sizeof(syms) / sizeof(syms[0]); j++)
				*syms[j].slot = NULL;
			dlclose(nc.handle);
			nc.handle = NULL;
			return;
		}
		*syms[i].slot = f;
	}
	if (nc.GetVersion(&nc.version) != ncclSuccess)
		nc.version = 0;
	if (nc.version >= NCCL_VERSION(2, 14, 0))
		*(void **)&nc.CommInitRankConfig = dlsym(nc.handle, "ncclCommInitRankConfig");
	snprintf(nc.msg, sizeof(nc.msg), "NCCL %d from %s", nc.version, lib);
	LOG_INFO("gpu: %s", nc.msg);
}

int gpu_nccl_load(int *version)
{
	pthread_once(&nc.once, nccl_load_once);
	if (version)
		*version = nc.version;
	if (nc.rc)
		return err_set(nc.rc, "%s", nc.msg);
	return 0;
}

static int nccl_err(ncclResult_t r, const char *what)
{
	const char *s = nc.GetErrorString ? nc.GetErrorString(r) : "error";

	if (r == ncclInProgress)
		return RDAG_EAGAIN;
	if (r == ncclInvalidArgument || r == ncclInvalidUsage)
		return err_set(RDAG_EINVAL, "gpu: %s: %s (ncclResult %d)", what, s, (int)r);
	if (r == ncclRemoteError)
		return err_set(RDAG_EPEER_DEAD, "gpu: %s: %s (ncclResult %d)", what, s, (int)r);
	return err_set(RDAG_EIO, "gpu: %s: %s (ncclResult %d)", what, s, (int)r);
}

int gpu_nccl_id_create(uint8_t *id, size_t len)
{
	ncclUniqueId u;
	ncclResult_t r;
	int rc = gpu_nccl_load(NULL);

	if (rc)
		return rc;
	if (!id || len < GPU_NCCL_ID_BYTES)
		return err_set(RDAG_ENOSPC, "gpu: an NCCL id needs %d bytes, %zu given", GPU_NCCL_ID_BYTES,
			       len);
	r = nc.GetUniqueId(&u);
	if (r != ncclSuccess)
		return nccl_err(r, "ncclGetUniqueId");
	memcpy(id, u.internal, GPU_NCCL_ID_BYTES);
	return 0;
}

/* Whether communicators join without blocking (RDAG_NCCL_NONBLOCKING, default 1). */
static bool nonblocking(void)
{
	const char *v = getenv("RDAG_NCCL_NONBLOCKING");

	return nc.CommInitRankConfig && !(v && !strcmp(v, "0"));
}

int gpu_nccl_comm_open(const uint8_t *id, size_t len, int pair_rank, int device, int timeout_ms,
		       struct gpu_nccl_comm **out)
{
	struct gpu_nccl_comm *c = NULL;
	bool blocking;
	ncclUniqueId u;
	ncclResult_t r;
	CUresult cr;
	int rc;

	if (!out)
		return err_set(RDAG_EINVAL, "gpu: gpu_nccl_comm_open without an output");
	*out = NULL;
	if (!id || len != GPU_NCCL_ID_BYTES)
		return err_set(RDAG_EINVAL, "gpu: an NCCL id is %d bytes, not %zu", GPU_NCCL_ID_BYTES, len);
	if (pair_rank != 0 && pair_rank != 1)
		return err_set(RDAG_EINVAL, "gpu: pair rank %d is not 0 or 1", pair_rank);
	rc = gpu_set_device(device); /* the device first: without one NCCL cannot run */
	if (rc)
		return rc;
	rc = gpu_nccl_load(NULL);
	if (rc)
		return rc;
	c = calloc(1, sizeof(*c));
	if (!c)
		return err_set(RDAG_ENOMEM, "gpu: no memory for an NCCL communicator");
	c->cu = gpu_cu_get(NULL);
	c->device = device;
	c->peer = 1 - pair_rank;
	c->timeout_ms = timeout_ms > 0 ? timeout_ms : 30000;
	cr = c->cu->StreamCreate(&c->stream, CU_STREAM_NON_BLOCKING);
	if (cr != CUDA_SUCCESS) {
		c->stream = NULL;
		rc = gpu_cu_err(cr, "cuStreamCreate (NCCL)");
		goto fail;
	}
	memcpy(u.internal, id, GPU_NCCL_ID_BYTES);
	blocking = !nonblocking();
	if (!blocking) {
		ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;

		cfg.blocking = 0;
		r = nc.CommInitRankConfig(&c->comm, 2, u, pair_rank, &cfg);
		if (r == ncclInProgress || r == ncclSuccess) {
			c->joining = 1; /* gpu_nccl_comm_ready says when it ended */
			r = ncclSuccess;
		} else if (r == ncclInvalidArgument || r == ncclInvalidUsage) {
			/* An NCCL that does not take our configuration: the blocking join. */
			LOG_INFO("gpu: ncclCommInitRankConfig refused a non-blocking communicator (%s): "
				 "joining with ncclCommInitRank", nc.GetErrorString(r));
			if (c->comm)
				nc.CommAbort(c->comm);
			c->comm = NULL;
			blocking = true;
		}
	}
	if (blocking)
		r = nc.CommInitRank(&c->comm, 2, u, pair_rank);
	if (r != ncclSuccess) {
		if (c->comm)
			nc.CommAbort(c->comm);
		c->comm = NULL;
		rc = nccl_err(r, blocking ? "ncclCommInitRank" : "ncclCommInitRankConfig");
		goto fail;
	}
	*out = c;
	return 0;
fail:
	gpu_nccl_comm_close(c);
	return rc;
}

int gpu_nccl_comm_ready(struct gpu_nccl_comm *c)
{
	ncclResult_t async = ncclSuccess;
	ncclResult_t r;

	if (!c)
		return err_set(RDAG_EINVAL, "gpu: gpu_nccl_comm_ready without a communicator");
	if (c->failed)
		return err_set(RDAG_EIO, "gpu: the NCCL communicator with the peer failed earlier");
	if (!c->joining)
		return 0;
	r = nc.CommGetAsyncError(c->comm, &async);
	if (r != ncclSuccess)
		async = r;
	if (async == ncclInProgress)
		return RDAG_EAGAIN;
	if (async != ncclSuccess) {
		c->failed = 1;
		return nccl_err(async, "joining the NCCL communicator");
	}
	c->joining = 0;
	return 0;
}

void gpu_nccl_comm_close(struct gpu_nccl_comm *c)
{
	if (!c)
		return;
	gpu_set_device(c->device);
	if (c->comm)
		nc.CommAbort(c->comm); /* also ends transfers a dead peer will never match */
	if (c->stream)
		c->cu->StreamDestroy(c->stream);
	free(c);
}

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/*
 * On a non-blocking communicator, ncclGroupEnd may return ncclInProgress before the transfers
 * are on the stream (the first ones to a peer connect first): an event recorded then would not
 * follow them. Waits, at most c->timeout_ms, until NCCL says they are.
 */
static ncclResult_t enqueued(struct gpu_nccl_comm *c)
{
	uint64_t end = now_ms() + (uint64_t)c->timeout_ms;
	ncclResult_t async = ncclInProgress;

	for (;;) {
		ncclResult_t r = nc.CommGetAsyncError(c->comm, &async);

		if (r != ncclSuccess)
			return r;
		if (async != ncclInProgress)
			return async;
		if (now_ms() >= end)
			return ncclInProgress; /* reported as a failure: the pair goes to host staging */
		sched_yield();
	}
}

int gpu_nccl_post(struct gpu_nccl_comm *c, const struct gpu_nccl_buf *bufs, size_t n,
		  struct gpu_nccl_req **req)
{
	struct gpu_nccl_req *q;
	ncclResult_t r;
	CUresult cr;
	int rc;

	if (!c || !req || (n && !bufs))
		return err_set(RDAG_EINVAL, "gpu: gpu_nccl_post with a missing argument");
	*req = NULL;
	if (c->failed)
		return err_set(RDAG_EIO, "gpu: the NCCL communicator with the peer failed earlier");
	for (size_t i = 0; i < n; i++) {
		if (!bufs[i].dptr || !bufs[i].len)
			return err_set(RDAG_EINVAL, "gpu: NCCL buffer %zu is empty", i);
	}
	rc = gpu_set_device(c->device);
	if (rc)
		return rc;
	q = calloc(1, sizeof(*q));
	if (!q)
		return err_set(RDAG_ENOMEM, "gpu: no memory for an NCCL request");
	q->c = c;
	cr = c->cu->EventCreate(&q->done, CU_EVENT_DISABLE_TIMING);
	if (cr != CUDA_SUCCESS) {
		free(q);
		return gpu_cu_err(cr, "cuEventCreate (NCCL)");
	}
	r = nc.GroupStart();
	for (size_t i = 0; r == ncclSuccess && i < n; i++) {
		if (bufs[i].recv)
			r = nc.Recv(bufs[i].dptr, bufs[i].len, ncclUint8, c->peer, c->comm,
				    (cudaStream_t)c->stream);
		else
			r = nc.Send(bufs[i].dptr, bufs[i].len, ncclUint8, c->peer, c->comm,
				    (cudaStream_t)c->stream);
	}
	{
		/* The group is always closed, also after a failed call inside it. */
		ncclResult_t e = nc.GroupEnd();

		if (r == ncclSuccess)
			r = e;
	}
	if (r == ncclInProgress && (r = enqueued(c)) == ncclInProgress) {
		c->failed = 1;
		rc = err_set(RDAG_ETIMEDOUT, "gpu: NCCL did not take the transfers within %d ms",
			     c->timeout_ms);
		goto fail;
	}
	if (r != ncclSuccess) {
		c->failed = 1;
		rc = nccl_err(r, "ncclSend/ncclRecv group");
		goto fail;
	}
	cr = c->cu->EventRecord(q->done, c->stream);
	if (cr != CUDA_SUCCESS) {
		rc = gpu_cu_err(cr, "cuEventRecord (NCCL)");
		goto fail;
	}
	*req = q;
	return 0;
fail:
	c->cu->EventDestroy(q->done);
	free(q);
	return rc;
}

int gpu_nccl_test(struct gpu_nccl_req *req)
{
	ncclResult_t async = ncclSuccess;
	CUresult cr;

	if (!req)
		return err_set(RDAG_EINVAL, "gpu: gpu_nccl_test without a request");
	if (req->complete)
		return 0;
	cr = req->c->cu->EventQuery(req->done);
	if (cr == CUDA_ERROR_INVALID_CONTEXT && gpu_set_device(req->c->device) == 0)
		/* A thread that never posted (the progress loop) may have no context yet. */
		cr = req->c->cu->EventQuery(req->done);
	if (cr == CUDA_SUCCESS) {
		req->complete = 1;
		return 0;
	}
	if (cr != CUDA_ERROR_NOT_READY)
		return gpu_cu_err(cr, "cuEventQuery (NCCL)");
	/* Still running: a peer that failed shows up as the communicator's asynchronous error. */
	if (nc.CommGetAsyncError(req->c->comm, &async) == ncclSuccess && async != ncclSuccess &&
	    async != ncclInProgress) {
		req->c->failed = 1;
		return nccl_err(async, "NCCL transfer");
	}
	return RDAG_EAGAIN;
}

void gpu_nccl_req_free(struct gpu_nccl_req *req)
{
	if (!req)
		return;
	if (req->done)
		req->c->cu->EventDestroy(req->done);
	free(req);
}
