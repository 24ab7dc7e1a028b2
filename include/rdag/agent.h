/* The agent: one per worker process; bootstrap, fabric, transport, progress and request handlers. */
#ifndef RDAG_AGENT_H
#define RDAG_AGENT_H

#include <stddef.h>
#include <stdint.h>

#include <rdag/export.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct rdag_agent rdag_agent_t;

/*
 * Progress modes:
 *  - RDAG_PROGRESS_THREAD (default): an internal thread drives the transport; callers only wait.
 *  - RDAG_PROGRESS_MANUAL: nothing moves unless some thread is inside rdag_agent_progress() or
 *    waiting on a future (waits drive progress themselves). Like FI_PROGRESS_MANUAL.
 * In both modes the functions registered with rdag_register() run on the agent's handler threads.
 */
enum rdag_progress_mode { RDAG_PROGRESS_THREAD = 0, RDAG_PROGRESS_MANUAL = 1 };

struct rdag_agent_opts {
	int rank;                /* -1: from the launcher's environment (docs/bootstrap.md) */
	int world_size;          /* -1: from the environment */
	const char *name;        /* NULL: RDAG_WORKER_NAME, else "worker<rank>" */
	const char *master_addr; /* NULL: from the environment */
	int master_port;         /* -1: from the environment */
	const char *job_token;   /* NULL: from the environment */
	int listen_fd;           /* rank 0: an already bound socket to serve the rendezvous on; -1 */
	int progress;            /* enum rdag_progress_mode; -1: RDAG_PROGRESS (default thread) */
	int threads;             /* handler threads; 0: RDAG_HANDLER_THREADS (default 4) */
	int local_only;          /* 1: every worker is on this host (lets the fabric pick shm) */
};

/* Fills o with "everything from the environment". Thread-safe. */
RDAG_API void rdag_agent_opts_init(struct rdag_agent_opts *o);

/*
 * Opens this worker's agent (collective: every worker of the job calls it): rendezvous through
 * the bootstrap, opens the fabric RDAG_FABRIC picks, connects to every worker, starts the
 * handler threads and (thread mode) the progress thread. o may be NULL (all from the
 * environment). Fails with rdag_last_error() saying why (a rank that never showed up, a wrong
 * job token, no usable fabric, ...). Thread-safe (one agent per process is the rule).
 */
RDAG_API int rdag_agent_open(const struct rdag_agent_opts *o, rdag_agent_t **out);

/*
 * Graceful shutdown (collective, as PyTorch's rpc.shutdown): waits for this worker's requests
 * in progress to be answered, meets every other worker (bootstrap barrier), then stops the
 * threads and releases every context, RRef, registration and fabric resource. Contexts still
 * alive are released locally only. Returns 0, or the error of the final barrier (a dead peer):
 * the agent is freed whatever it returns. Call it once no other thread uses a. NULL is a no-op.
 */
RDAG_API int rdag_agent_close(rdag_agent_t *a);

/* This worker's id (= rank, 16 bits) and the number of workers. Thread-safe. */
RDAG_API uint16_t rdag_agent_id(const rdag_agent_t *a);
RDAG_API uint32_t rdag_agent_world(const rdag_agent_t *a);

/* Name of worker id, or NULL if there is no such worker. Thread-safe. */
RDAG_API const char *rdag_worker_name(const rdag_agent_t *a, uint32_t id);

/* Id of the worker called name, or RDAG_ENOENT. Thread-safe. */
RDAG_API int rdag_worker_id(const rdag_agent_t *a, const char *name);

/* What a peer offered in its transport handshake (rdag_peer_info.offers). */
#define RDAG_PEER_OFFER_GPU_ARENA 0x1u /* its landing arena is GPU memory (GPUDirect RDMA) */
#define RDAG_PEER_OFFER_NCCL 0x2u      /* it has a GPU and NCCL */

/* What this worker knows of one peer (rdag_peer_info). */
struct rdag_peer_info {
	uint32_t id;
	const char *name;   /* the peer's worker name (valid while the agent is open) */
	uint32_t offers;    /* RDAG_PEER_OFFER_* */
	/*
	 * The path device tensors take to this peer, chosen at rdag_agent_open from both sides'
	 * offers and RDAG_GPU_TRANSPORT (docs/gpu.md): gpu_rc 0 and gpu_path "gdr", "nccl" or
	 * "host"; or gpu_rc the reason there is none (RDAG_ENOCUDA, RDAG_ENOCUDA_DRIVER,
	 * RDAG_ENOGPU, RDAG_ENONCCL, RDAG_ENOSYS, ...) and gpu_path NULL. gpu_why says why, in words.
	 */
	int gpu_rc;
	const char *gpu_path;
	char gpu_why[256];
	/*
	 * CUDA tensors (call arguments, replies, gradients) sent to this peer so far, and received
	 * from it and landed on a device here; with their bytes. Of these, gpu_nccl_tensors_out
	 * and _in went by NCCL, device to device; the others were staged through host memory.
	 */
	uint64_t gpu_tensors_out, gpu_bytes_out, gpu_tensors_in, gpu_bytes_in;
	uint64_t gpu_nccl_tensors_out, gpu_nccl_tensors_in;
};

/*
 * Fills *out for worker peer (not this one). RDAG_EINVAL for a NULL argument, an id out of range
 * or this worker's own. Thread-safe.
 */
RDAG_API int rdag_peer_info(rdag_agent_t *a, uint32_t peer, struct rdag_peer_info *out);

/*
 * Where this worker's CUDA tensors land on worker peer, as PyTorch's RPC device maps:
 * map[i] is peer's device for this worker's device i, -1 for none; n entries (at most 64;
 * 0 clears the map). A CUDA tensor sent to peer (call arguments, replies) without an entry for
 * its device is refused with RDAG_EINVAL; with one it arrives on the mapped device. Until
 * GPUDirect RDMA and NCCL carry tensors, the bytes travel through host memory (docs/gpu.md).
 * RDAG_ENOGPU (or gpu_init's code) when a mapped local device does not exist. peer may be this
 * worker (calls to itself). Thread-safe.
 */
RDAG_API int rdag_agent_set_device_map(rdag_agent_t *a, uint32_t peer, const int *map, uint32_t n);

/* The progress mode in force (enum rdag_progress_mode). Thread-safe. */
RDAG_API int rdag_agent_progress_mode(const rdag_agent_t *a);

/*
 * Drives the transport for up to timeout_ms (0: one pass; < 0: until something happens).
 * Returns the number of events handled or a negative code. Needed only in manual mode; harmless
 * in thread mode. Thread-safe.
 */
RDAG_API int rdag_agent_progress(rdag_agent_t *a, int timeout_ms);

#ifdef __cplusplus
}
#endif

#endif /* RDAG_AGENT_H */
