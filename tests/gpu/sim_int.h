/* What the simulated NCCL (sim_nccl.c) needs from the simulated CUDA driver (sim_cuda.c). */
#ifndef RDAG_TESTS_SIM_INT_H
#define RDAG_TESTS_SIM_INT_H

#include <cuda.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>

/*
 * A stream op that is not a copy: the stream gets past it once done is set. Two references, the
 * stream's and the transfer's; the last one frees the struct it is the first member of.
 */
struct sim_wait {
	atomic_int done;
	atomic_int refs;
};

static inline void sim_wait_put(struct sim_wait *w)
{
	if (atomic_fetch_sub(&w->refs, 1) == 1)
		free(w);
}

/* Queues w on stream s (not the legacy stream); the stream holds one of w's references. */
CUresult sim_stream_push_wait(CUstream s, struct sim_wait *w);
/* The host bytes behind the device range [d, d + len) and its device, or NULL. */
void *sim_dev_bytes(CUdeviceptr d, size_t len, int *device);
/* The calling thread's current device, or -1. */
int sim_current_device(void);

#endif
