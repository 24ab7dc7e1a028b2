/* Internal GPU interface: CUDA driver and NCCL loaded at run time, pointers, registration helpers. */
#ifndef RDAG_GPU_H
#define RDAG_GPU_H

/*
 * The model:
 *
 *  - librdag never links CUDA or NCCL. gpu_cuda.c loads the CUDA driver API (libcuda.so.1, or
 *    RDAG_CUDA_LIBRARY) and gpu_nccl.c loads NCCL (libnccl.so.2, or RDAG_NCCL_LIBRARY) with
 *    dlopen the first time they are needed, so one librdag runs on hosts with and without a GPU.
 *  - What is missing is told apart, each with its own code (rdag_strerror) and a detailed
 *    message (rdag_last_error):
 *      RDAG_ENOCUDA         this build has no GPU support (-DRDAG_WITH_CUDA=OFF, or no toolkit)
 *      RDAG_ENOCUDA_DRIVER  libcuda.so.1 cannot be loaded, lacks a symbol, or is too old
 *      RDAG_ENOGPU          the driver loads but reports no device (or the device asked for)
 *      RDAG_ENONCCL         libnccl.so.2 cannot be loaded or lacks a symbol
 *    The answer of the first attempt is kept: later calls return the same code and message.
 *  - CPU paths never call into gpu/ unless a pointer is classified as device memory, so a
 *    machine without CUDA pays nothing.
 *  - gpu_select.c (transport selection, registration method, peer-memory module detection) and
 *    gpu_none.c (this header's functions when CUDA is not built) need no CUDA headers.
 *
 * Threads: every function here is thread-safe unless its comment says otherwise; the loaders
 * run once (pthread_once).
 */

#include <stddef.h>
#include <stdint.h>

#include <rdag/error.h>

/* ---- build and driver ---- */

/* 1 when this librdag was built with the GPU data plane (CUDA headers found), else 0. */
int gpu_built(void);

/*
 * Loads the CUDA driver and initialises it (cuInit). 0 when at least one device is usable;
 * RDAG_ENOCUDA, RDAG_ENOCUDA_DRIVER or RDAG_ENOGPU otherwise (see the model above).
 */
int gpu_init(void);

/* What the driver offers; filled by gpu_probe (which calls gpu_init). */
struct gpu_info {
	int built;              /* gpu_built() */
	int driver_loaded;      /* libcuda was loaded and cuInit succeeded or said "no device" */
	int driver_version;     /* cuDriverGetVersion, e.g. 13000; 0 if unknown */
	int ndevices;           /* 0 when none */
	char library[128];      /* the libcuda file loaded (or tried) */
	char why[256];          /* the status in one line ("2 devices", "libcuda.so.1: not found") */
};

/* Fills info; returns what gpu_init returns. */
int gpu_probe(struct gpu_info *info);

/* Per-device facts for rdag_info and for choosing a registration method. */
struct gpu_device_info {
	char name[96];
	char pci_bus_id[32];
	size_t total_mem;
	int dmabuf_supported;   /* CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED */
	int gdr_supported;      /* CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_SUPPORTED */
};
int gpu_device_query(int device, struct gpu_device_info *out);

/*
 * Makes device's primary context current on the calling thread (the context CUDA's runtime and
 * NCCL use too). Every call below that touches device memory does it itself.
 */
int gpu_set_device(int device);

/* ---- pointers ---- */

enum gpu_mem_type {
	GPU_MEM_HOST = 0,       /* ordinary host memory (or unknown to CUDA) */
	GPU_MEM_HOST_PINNED,    /* host memory CUDA allocated or registered (cuMemHostAlloc) */
	GPU_MEM_DEVICE,         /* device memory (cuMemAlloc, cudaMalloc) */
	GPU_MEM_MANAGED,        /* managed (unified) memory */
};

/* What the driver says about a pointer (CU_POINTER_ATTRIBUTE_*). */
struct gpu_ptr_info {
	enum gpu_mem_type type;
	int device;             /* the device ordinal, -1 for host memory */
	uint64_t buffer_id;     /* process-wide unique id of the allocation (0 for host memory) */
	uintptr_t base;         /* start of the allocation containing the pointer */
	size_t size;            /* its size */
};

/*
 * Classifies ptr. Host memory (also when there is no CUDA build, driver or device: nothing
 * can be device memory then) gives GPU_MEM_HOST and returns 0. Errors only for a driver failure.
 */
int gpu_ptr_classify(const void *ptr, struct gpu_ptr_info *out);

/* ---- device memory (tests, staging, landing arenas) ---- */

int gpu_mem_alloc(int device, size_t len, void **out);
void gpu_mem_free(void *dptr);
int gpu_memcpy_htod(void *dst, const void *src, size_t len);
int gpu_memcpy_dtoh(void *dst, const void *src, size_t len);
int gpu_memset(void *dst, uint8_t byte, size_t len);

/* ---- registration helpers for the fabric providers ---- */

/*
 * A dma-buf for [addr, addr + len) of device memory (cuMemGetHandleForAddressRange): *fd (the
 * caller closes it once registered) covers the page-aligned range around it and *offset is
 * where addr falls inside it. RDAG_ENOSYS when the driver or device has no dma-buf support.
 */
int gpu_dmabuf_get(const void *addr, size_t len, int *fd, uint64_t *offset);

/* Whether device supports dma-buf export (0/1), or a negative code. */
int gpu_dmabuf_supported(int device);

/*
 * The GPU peer-memory kernel module that lets ibv_reg_mr pin device memory: "nvidia_peermem" or
 * "nv_peer_mem" when loaded (looked up under sysfs_root/module; sysfs_root NULL: "/sys"), else
 * NULL. Needs no CUDA.
 */
const char *gpu_peermem_module(const char *sysfs_root);

/* How the verbs provider registers device memory. */
enum gpu_reg_method {
	GPU_REG_NONE = 0,   /* cannot */
	GPU_REG_DMABUF,     /* ibv_reg_dmabuf_mr with a dma-buf fd from the driver */
	GPU_REG_PEERMEM,    /* ibv_reg_mr on the device address, pinned by the peer-memory module */
};

/* The method from what is available: dma-buf first, else peer memory, else none. Pure. */
enum gpu_reg_method gpu_reg_method_choose(int dmabuf_ok, int peermem_ok);
const char *gpu_reg_method_name(enum gpu_reg_method m);

/*
 * rcache_dev_ident_fn over the driver (src/rcache/rcache_dev.h): the buffer id, device and
 * allocation range of addr; RDAG_EINVAL when addr is not device memory. arg is unused.
 */
struct rcache_dev_ident;
int gpu_rcache_ident(void *arg, const void *addr, struct rcache_dev_ident *out);

/* ---- transport selection (RDAG_GPU_TRANSPORT) ---- */

enum gpu_transport {
	GPU_TRANSPORT_AUTO = 0,
	GPU_TRANSPORT_GDR,      /* the NIC reads/writes device memory (GPUDirect RDMA) */
	GPU_TRANSPORT_NCCL,     /* NCCL point-to-point between the two GPUs */
	GPU_TRANSPORT_HOST,     /* pinned host bounce buffers + async copies */
};

/* What one side offers. */
struct gpu_side_caps {
	int built;              /* built with CUDA */
	int cuda;               /* ... and the driver loads */
	int ndevices;           /* usable devices */
	int nic_device_mem;     /* the fabric can register device memory (dma-buf, peermem, FI_HMEM) */
	int nccl;               /* NCCL loads */
};

struct gpu_caps {
	struct gpu_side_caps local;
	struct gpu_side_caps peer;
};

/* Parses "auto", "gdr", "nccl", "host" (NULL or "": auto). RDAG_EINVAL for anything else. */
int gpu_transport_parse(const char *s, enum gpu_transport *out);
/* gpu_transport_parse of RDAG_GPU_TRANSPORT (unset: auto). */
int gpu_transport_env(enum gpu_transport *out);
const char *gpu_transport_name(enum gpu_transport t);

/*
 * The GPU data path between two workers. Pure function of want and caps:
 *  - auto: gdr when both sides' fabrics can register device memory, else nccl when NCCL and a
 *    device exist on both sides, else host staging when this side has a device;
 *  - a forced choice is taken only when available.
 * Returns 0 and *out (why says why), or RDAG_ENOCUDA / RDAG_ENOCUDA_DRIVER / RDAG_ENOGPU /
 * RDAG_ENONCCL / RDAG_ENOSYS
 * with why saying what is missing. why is always filled (whylen > 0).
 */
int gpu_transport_select(enum gpu_transport want, const struct gpu_caps *caps,
			 enum gpu_transport *out, char *why, size_t whylen);

/* ---- host staging (gpu_stage.c) ---- */

/*
 * One pinned host bounce buffer (cuMemHostAlloc) with a stream and an event: a device buffer is
 * copied to the host buffer (to send it from host memory) or back (after it landed there)
 * asynchronously, and gpu_stage_test polls the event. One copy in flight per stage. Not
 * thread-safe per stage.
 */
struct gpu_stage;
int gpu_stage_create(int device, size_t capacity, struct gpu_stage **out);
void gpu_stage_destroy(struct gpu_stage *s);
void *gpu_stage_host(struct gpu_stage *s);      /* the pinned buffer (register it as host memory) */
size_t gpu_stage_capacity(const struct gpu_stage *s);
/* Starts copying len bytes from device src into the host buffer. */
int gpu_stage_to_host(struct gpu_stage *s, const void *src, size_t len);
/* Starts copying len bytes from the host buffer into device dst. */
int gpu_stage_to_device(struct gpu_stage *s, void *dst, size_t len);
/* 0 when the last copy is done, RDAG_EAGAIN while it runs, else an error. Never blocks. */
int gpu_stage_test(struct gpu_stage *s);
/* Which device a stage copies to and from. */
int gpu_stage_device(const struct gpu_stage *s);

/*
 * A process-wide pool of stages, so that pinned memory is allocated once per size, not per
 * message: gpu_stage_get hands out an idle stage of device with room for len bytes (the
 * smallest that fits, at most twice len or 64 KiB) or creates one (len rounded up to 4 KiB,
 * at least 64 KiB);
 * gpu_stage_put gives it back once its copy is done and its buffer no longer read. At most
 * GPU_STAGE_POOL idle stages are kept; others are destroyed. Thread-safe.
 */
#define GPU_STAGE_POOL 16
int gpu_stage_get(int device, size_t len, struct gpu_stage **out);
void gpu_stage_put(struct gpu_stage *s);

/* ---- NCCL point-to-point (gpu_nccl.c) ---- */

#define GPU_NCCL_ID_BYTES 128 /* NCCL_UNIQUE_ID_BYTES */

/* Loads NCCL; 0, or RDAG_ENOCUDA / RDAG_ENONCCL. *version as NCCL_VERSION_CODE (22809). */
int gpu_nccl_load(int *version);

/*
 * Makes the bytes of a new ncclUniqueId (on the worker that creates the pair's communicator;
 * the agent sends them to the peer as a control message). len must be >= GPU_NCCL_ID_BYTES.
 */
int gpu_nccl_id_create(uint8_t *id, size_t len);

/*
 * A two-rank communicator between this worker (pair_rank 0 or 1) and one peer, from the id
 * bytes both received, on device, with its own non-blocking stream. Collective: both workers
 * call it. Where NCCL can (ncclCommInitRankConfig, NCCL >= 2.14; RDAG_NCCL_NONBLOCKING=0 turns
 * it off) it returns at once and the join goes on inside NCCL: gpu_nccl_comm_ready says when it
 * ended, and gpu_nccl_comm_close aborts it if it never does. Otherwise it blocks until both
 * joined or NCCL failed. timeout_ms bounds how long gpu_nccl_post waits for a non-blocking NCCL
 * to put transfers on the stream (<= 0: 30 s).
 */
struct gpu_nccl_comm;
int gpu_nccl_comm_open(const uint8_t *id, size_t len, int pair_rank, int device, int timeout_ms,
		       struct gpu_nccl_comm **out);
/* 0 once c joined, RDAG_EAGAIN while it joins, an error if the join failed. Never blocks. */
int gpu_nccl_comm_ready(struct gpu_nccl_comm *c);
/* Aborts outstanding work and frees the communicator. NULL is a no-op. */
void gpu_nccl_comm_close(struct gpu_nccl_comm *c);

/* One buffer of a gradient request: sent to or received from the peer. */
struct gpu_nccl_buf {
	void *dptr;             /* device memory on the communicator's device */
	size_t len;             /* bytes (sent as ncclUint8) */
	int recv;               /* 1: receive into dptr, 0: send from it */
};

/*
 * Posts every buffer of one gradient request as one ncclGroupStart/ncclSend/ncclRecv/
 * ncclGroupEnd on the communicator's stream and records an event after it. *req is polled
 * with gpu_nccl_test and freed with gpu_nccl_req_free. Not thread-safe per communicator.
 */
struct gpu_nccl_req;
int gpu_nccl_post(struct gpu_nccl_comm *c, const struct gpu_nccl_buf *bufs, size_t n,
		  struct gpu_nccl_req **req);
/*
 * 0 when the request's transfers completed, RDAG_EAGAIN while they run (or NCCL is still
 * connecting), an error when NCCL reported one. Never blocks: for the progress loop.
 */
int gpu_nccl_test(struct gpu_nccl_req *req);
void gpu_nccl_req_free(struct gpu_nccl_req *req);

#endif /* RDAG_GPU_H */
