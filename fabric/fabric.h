/* Internal provider interface: what rdag's core needs from a fabric, as an ops table per provider. */
#ifndef RDAG_FABRIC_H
#define RDAG_FABRIC_H

/*
 * The model (shared by every provider):
 *
 *  - A worker opens ONE endpoint (struct fab_ep). Peers are small integers (fab_peer_t, the peer's
 *    worker rank) once fab_ep_connect() has inserted their addresses; the provider maps them to
 *    fi_addr_t (ofi) or to an RC queue pair (verbs).
 *  - Receives are posted to the endpoint, not to a peer (ofi RDM receive queue, verbs SRQ). A
 *    receive completion says how many bytes landed and, when the provider can tell, from whom;
 *    rdag's own headers carry the sender's id, so the core never depends on that.
 *  - Writes go into memory the peer registered and advertised (address + key). A write may carry
 *    32 bits of immediate data, delivered in a completion on the peer. On providers with
 *    FAB_CAP_IMM_CONSUMES_RECV (verbs, ofi providers asking for FI_RX_CQ_DATA) such a write
 *    consumes one posted receive buffer on the target, which the core must budget for.
 *  - Every posted operation takes a caller context pointer, returned in its completion. The core
 *    classifies completions by that context (never by provider flags, which differ).
 *  - Functions return 0 or a negative RDAG_E* code; RDAG_EAGAIN means "resources busy: make
 *    progress (poll) and retry". A failure records a detailed message (err_set), including the
 *    provider's own text.
 *  - Threads: one endpoint is driven by one progress thread at a time; the ops are not required to
 *    be thread-safe for concurrent calls on the same endpoint. Different endpoints are independent.
 *  - A peer is never the worker itself: posting to one's own rank, to a rank >= npeers or to a rank
 *    connect() has not inserted returns RDAG_EINVAL (checked on every post; never a crash).
 *  - Completions: fab_send, fab_write and fab_post_recv each produce EXACTLY ONE completion (success
 *    or error) carrying the caller's context, unless the post itself returned an error, in which
 *    case none comes. Only fab_inject produces none. Closing an endpoint discards every completion
 *    still outstanding; the contexts are never returned after fab_close.
 *  - Write visibility: a write's local completion always means its source buffer may be reused.
 *    The target may read the bytes once (a) it sees the FAB_OP_REMOTE_WRITE of a write-with-imm
 *    (after that write's bytes landed), or (b) with FAB_CAP_ORDER_SAW, it receives a message the
 *    initiator sent to it after posting the write, or (c) with FAB_CAP_WRITE_DELIVERED, it
 *    receives a message the initiator sent after reaping the write's completion (the completion
 *    then means the bytes are in the target's memory). Every provider offers ORDER_SAW or
 *    WRITE_DELIVERED or both, so "write, then tell the target" always has a correct form.
 *  - Ordering: messages from one worker to one peer are matched with posted receives in the
 *    order they were sent (verbs RC gives it; the ofi provider requires FI_ORDER_SAS). Their
 *    COMPLETIONS may still be reported out of that order (tcp;ofi_rxm reports a small message
 *    before an earlier large, rendezvous one): the core orders by its own sequence numbers.
 *    Nothing else is ordered unless a FAB_CAP_ORDER_* flag says so.
 *  - Refused writes (bad key, outside the registration) end in an error, never in a silent
 *    success: in the write's own completion on FAB_CAP_WRITE_DELIVERED providers (and verbs);
 *    otherwise the target may drop the link and the error surfaces on a later operation to that
 *    peer (tcp;ofi_rxm: RDAG_EPEER_DEAD). Known exception: libfabric 1.17's shm drops such a
 *    write without ever completing it (docs/fabric.md).
 *  - Remote addresses: a peer writes to mr.remote_base + offset with mr.rkey. remote_base is the
 *    virtual address on providers that address by it (verbs, ofi with FI_MR_VIRT_ADDR), else 0.
 *
 * Changes to this interface since the first draft (fabric core/ofi owner; all additive except the
 * meaning of FAB_CAP_INJECT, which no provider implemented yet):
 *  1. The rules above on completions ("exactly one"), write visibility, refused writes, peers
 *     ("never self") and ordering (send-after-send matching only; completions may come out of
 *     order).
 *  2. fab_send ALWAYS generates a completion, whatever its size (a provider may still send small
 *     messages inline internally). Injection without completion is a separate, optional op,
 *     fab_ops.inject (appended at the end of the table), trampoline fab_inject(): the buffer is
 *     reusable on return, no completion comes on success, len <= fab_attr.inject_size. A provider
 *     advertises FAB_CAP_INJECT when it implements it; a NULL or fab_op_nosys entry gives
 *     RDAG_ENOSYS. A failed injection may surface later as a FAB_OP_SEND error with context NULL.
 *  3. probe() fills why on success too: one line saying what would be used ("shm (local_only)",
 *     "rxe0 port 1 gid 1"), printed by rdag_info and logged by fab_open.
 *  4. fab_select(): the choice fab_open makes, without opening (for rdag_info and logs).
 *  5. fab_mr_reg_mem(): trampoline for mr_reg with a memory kind and device (for gpu/).
 *  6. fab_cqe.len for FAB_OP_REMOTE_WRITE is the provider's figure and may be 0 on providers that do
 *     not report it; errors a provider cannot attribute to a posted op come with context NULL.
 *  7. FAB_CAP_ORDER_SAW is set only when the provider guarantees it (ofi: FI_ORDER_SAW in both the
 *     tx and rx msg_order of the opened endpoint; shm 1.17 does not, tcp;ofi_rxm does).
 *  8. FAB_CAP_WRITE_DELIVERED (new flag, see "Write visibility"). verbs RC completions imply it.
 *     The ofi provider asks libfabric for FI_DELIVERY_COMPLETE on writes only where the provider
 *     lacks FI_ORDER_SAW (shm), since it costs a round trip per write elsewhere (tcp;ofi_rxm).
 *  9. fab_poll(ep, out, 0) drives progress without reaping (a no-op where hardware progresses).
 */

#include <stddef.h>
#include <stdint.h>

#include <rdag/error.h>

typedef uint32_t fab_peer_t;
#define FAB_PEER_UNKNOWN UINT32_MAX

/* Capability flags a provider advertises; they must match what it implements. */
enum fab_cap {
	FAB_CAP_WRITE_IMM = 1u << 0,         /* write with 32-bit immediate data */
	FAB_CAP_IMM_CONSUMES_RECV = 1u << 1, /* an incoming write-with-imm uses a posted receive */
	FAB_CAP_RECV_SOURCE = 1u << 2,       /* receive completions name the sending peer */
	FAB_CAP_INJECT = 1u << 3,            /* fab_inject() works for len <= inject_size */
	FAB_CAP_WAIT_FD = 1u << 4,           /* fab_wait_fd()/fab_arm() work (else RDAG_ENOSYS) */
	FAB_CAP_HMEM_CUDA = 1u << 5,         /* can register CUDA memory */
	FAB_CAP_ORDER_SAW = 1u << 6,         /* a send is delivered after earlier writes to that peer */
	FAB_CAP_WRITE_DELIVERED = 1u << 7,   /* a write's completion means its bytes are at the target */
};

/* Memory access a registration must allow. */
enum fab_access {
	FAB_ACCESS_LOCAL = 1u << 0,        /* source of sends and writes, target of receives */
	FAB_ACCESS_REMOTE_WRITE = 1u << 1, /* target of peers' writes */
	FAB_ACCESS_REMOTE_READ = 1u << 2,
};

enum fab_mem_kind {
	FAB_MEM_HOST = 0,
	FAB_MEM_CUDA = 1,
};

/* Describes a provider and its limits, filled by the provider at open time. */
struct fab_attr {
	const char *provider;   /* "ofi" or "verbs" */
	char fabric_name[64];   /* e.g. "shm", "tcp;ofi_rxm", "rxe0" */
	uint32_t caps;          /* enum fab_cap */
	size_t max_msg_size;    /* largest single send */
	size_t max_write_size;  /* largest single write */
	size_t inject_size;     /* fab_inject() takes up to this size (0: no inject) */
	size_t max_recv_posted; /* receives the endpoint can hold posted */
	size_t addr_len;        /* bytes of fab_ep_name() */
};

/* A registration. remote_base is what a peer adds an offset to when writing into it. */
struct fab_mr {
	void *desc;          /* local descriptor for ops on this memory (may be NULL) */
	uint64_t rkey;       /* key a peer writes with */
	void *addr;          /* registered range */
	size_t len;
	uint64_t remote_base; /* address peers use for addr (addr itself, or 0 for offset-based MRs) */
	void *prov;           /* provider's own handle */
};

enum fab_op {
	FAB_OP_SEND = 1,      /* a send posted here completed */
	FAB_OP_RECV,          /* a message landed in a posted receive */
	FAB_OP_WRITE,         /* a write posted here completed */
	FAB_OP_REMOTE_WRITE,  /* a peer's write-with-imm landed here (imm valid) */
};

/* One completion. status < 0 is an error; errmsg then holds the provider's explanation. */
struct fab_cqe {
	void *context;      /* the context given when posting (for REMOTE_WRITE: the receive's, if consumed, else NULL) */
	enum fab_op op;
	int status;         /* 0 or RDAG_E* */
	size_t len;         /* bytes received (RECV) or written (REMOTE_WRITE; 0 if not reported) */
	fab_peer_t peer;    /* the peer involved, or FAB_PEER_UNKNOWN */
	uint32_t imm;       /* immediate data (REMOTE_WRITE) */
	int has_imm;
	char errmsg[160];   /* set when status < 0 */
};

struct fab_ep;

/* Whether the ofi provider opens its completion queue with a wait object (RDAG_OFI_WAIT). */
enum fab_wait {
	FAB_WAIT_AUTO = 0, /* a wait fd, unless the caller said it only busy-polls (poll_only) */
	FAB_WAIT_FD,       /* a wait fd wherever the provider's fd wakes (not shm) */
	FAB_WAIT_NONE,     /* no wait object: no FAB_CAP_WAIT_FD; cheaper polls on tcp;ofi_rxm */
};

/* Options for opening an endpoint (from the environment by default; see docs/env.md). */
struct fab_open_opts {
	const char *provider;       /* "auto", "ofi" or "verbs" (RDAG_FABRIC) */
	const char *ofi_provider;   /* libfabric provider name, e.g. "shm", "tcp" (RDAG_OFI_PROVIDER) */
	const char *ib_device;      /* verbs device, e.g. "rxe0" (RDAG_IB_DEVICE) */
	int ib_gid_index;           /* -1: automatic (RDAG_IB_GID_INDEX) */
	const char *iface_addr;     /* local IP for verbs/rdma_cm, NULL: from the device (RDAG_IB_ADDR) */
	uint32_t world_size;        /* number of peers that will be connected (sizes queues) */
	uint32_t rank;              /* this worker's rank */
	size_t rx_depth;            /* receives to size queues for */
	size_t tx_depth;            /* outstanding sends/writes to size queues for */
	int local_only;             /* all peers on this host (lets auto pick shm) */
	int ofi_wait;               /* enum fab_wait (RDAG_OFI_WAIT); verbs always has its channel */
	int poll_only;              /* the caller busy-polls and never blocks on the wait fd */
};

/* The ops every provider implements (unsupported ones point at fab_op_nosys). */
struct fab_ops {
	size_t size; /* sizeof(struct fab_ops) at build time, so the table can grow */
	const char *name;
	/*
	 * Probes whether the provider is usable here with these options: 0 if so (why says what
	 * would be used), else a negative code (why says what is missing). Never opens an endpoint.
	 */
	int (*probe)(const struct fab_open_opts *opts, char *why, size_t whylen);
	int (*open)(const struct fab_open_opts *opts, struct fab_ep **ep);
	void (*close)(struct fab_ep *ep);
	/* This endpoint's address, to hand to peers (bootstrap). *len in: room, out: size. */
	int (*name_get)(struct fab_ep *ep, void *addr, size_t *len);
	/*
	 * Makes peers reachable: addrs[i] (lens[i] bytes) is the address of rank i; entry `rank`
	 * (ourselves) is ignored. Blocks until every peer is reachable or timeout_ms passes
	 * (connection-oriented providers connect here; both sides call it).
	 */
	int (*connect)(struct fab_ep *ep, uint32_t npeers, const void *const *addrs, const size_t *lens,
		       int timeout_ms);
	int (*mr_reg)(struct fab_ep *ep, void *addr, size_t len, uint32_t access, enum fab_mem_kind kind,
		      int device, struct fab_mr *mr);
	int (*mr_dereg)(struct fab_ep *ep, struct fab_mr *mr);
	int (*post_recv)(struct fab_ep *ep, void *buf, size_t len, void *desc, void *context);
	int (*send)(struct fab_ep *ep, fab_peer_t peer, const void *buf, size_t len, void *desc,
		    void *context);
	/* Writes len bytes to (remote_addr, rkey) on peer; with has_imm, the peer gets imm. */
	int (*write)(struct fab_ep *ep, fab_peer_t peer, const void *buf, size_t len, void *desc,
		     uint64_t remote_addr, uint64_t rkey, int has_imm, uint32_t imm, void *context);
	/*
	 * Reaps up to max completions; returns how many (0: none), or a negative code. max 0 only
	 * drives the provider's progress (reaping nothing): what to call while retrying a post that
	 * returned RDAG_EAGAIN when completions must not be taken yet.
	 */
	int (*poll)(struct fab_ep *ep, struct fab_cqe *out, int max);
	/* A descriptor that becomes readable when completions may be ready, or a negative code. */
	int (*wait_fd)(struct fab_ep *ep);
	/*
	 * Arms the wait fd before blocking: 0 if it is safe to block in poll(2), RDAG_EAGAIN if
	 * completions are already pending (poll instead of blocking).
	 */
	int (*arm)(struct fab_ep *ep);
	/* Attributes of the opened endpoint. */
	const struct fab_attr *(*attr)(struct fab_ep *ep);
	/*
	 * Sends len <= attr.inject_size bytes; the buffer is reusable on return and no completion
	 * is generated on success (optional: NULL or fab_op_nosys if not FAB_CAP_INJECT).
	 */
	int (*inject)(struct fab_ep *ep, fab_peer_t peer, const void *buf, size_t len);
};

/* Common head of every provider's endpoint struct. */
struct fab_ep {
	const struct fab_ops *ops;
};

/* Stub for operations a provider does not support: returns RDAG_ENOSYS. */
int fab_op_nosys(void);

/* Fills opts from the environment (RDAG_FABRIC, RDAG_OFI_PROVIDER, RDAG_IB_*). */
void fab_opts_from_env(struct fab_open_opts *opts);

/*
 * The provider fab_open would use with opts, without opening anything: *ops is set and why holds
 * one line explaining the choice (or, on failure, why nothing is usable). RDAG_EINVAL for an
 * unknown opts->provider, RDAG_ENODEV when nothing usable is found. Thread-safe.
 */
int fab_select(const struct fab_open_opts *opts, const struct fab_ops **ops, char *why,
	       size_t whylen);

/*
 * Opens an endpoint on the provider opts selects ("auto": verbs if a usable device exists, else
 * the best libfabric provider), explaining the choice in the log at info level.
 */
int fab_open(const struct fab_open_opts *opts, struct fab_ep **ep);

/*
 * What this process holds through the trampolines below, for leak checks (tests/faults): open
 * endpoints (fab_open - fab_close) and memory registrations (successful fab_mr_reg* - successful
 * fab_mr_dereg; a failed deregistration stays counted, as the provider may still hold it).
 */
struct fab_live {
	long eps, mrs;
};
extern long fab_live_eps_, fab_live_mrs_; /* fabric.c; use fab_get_live() */
void fab_get_live(struct fab_live *out);  /* a snapshot (atomic reads). Thread-safe */

/* Thin trampolines, as libfabric's inline calls. */
static inline void fab_close(struct fab_ep *ep)
{
	ep->ops->close(ep);
	__atomic_sub_fetch(&fab_live_eps_, 1, __ATOMIC_RELAXED);
}
static inline int fab_name(struct fab_ep *ep, void *addr, size_t *len)
{
	return ep->ops->name_get(ep, addr, len);
}
static inline int fab_connect(struct fab_ep *ep, uint32_t npeers, const void *const *addrs,
			      const size_t *lens, int timeout_ms)
{
	return ep->ops->connect(ep, npeers, addrs, lens, timeout_ms);
}
static inline int fab_mr_reg(struct fab_ep *ep, void *addr, size_t len, uint32_t access,
			     struct fab_mr *mr)
{
	int rc = ep->ops->mr_reg(ep, addr, len, access, FAB_MEM_HOST, 0, mr);

	if (rc == 0)
		__atomic_add_fetch(&fab_live_mrs_, 1, __ATOMIC_RELAXED);
	return rc;
}
static inline int fab_mr_reg_mem(struct fab_ep *ep, void *addr, size_t len, uint32_t access,
				 enum fab_mem_kind kind, int device, struct fab_mr *mr)
{
	int rc = ep->ops->mr_reg(ep, addr, len, access, kind, device, mr);

	if (rc == 0)
		__atomic_add_fetch(&fab_live_mrs_, 1, __ATOMIC_RELAXED);
	return rc;
}
static inline int fab_mr_dereg(struct fab_ep *ep, struct fab_mr *mr)
{
	int rc = ep->ops->mr_dereg(ep, mr);

	if (rc == 0)
		__atomic_sub_fetch(&fab_live_mrs_, 1, __ATOMIC_RELAXED);
	return rc;
}
static inline int fab_post_recv(struct fab_ep *ep, void *buf, size_t len, void *desc, void *ctx)
{
	return ep->ops->post_recv(ep, buf, len, desc, ctx);
}
static inline int fab_send(struct fab_ep *ep, fab_peer_t peer, const void *buf, size_t len,
			   void *desc, void *ctx)
{
	return ep->ops->send(ep, peer, buf, len, desc, ctx);
}
static inline int fab_write(struct fab_ep *ep, fab_peer_t peer, const void *buf, size_t len,
			    void *desc, uint64_t raddr, uint64_t rkey, int has_imm, uint32_t imm,
			    void *ctx)
{
	return ep->ops->write(ep, peer, buf, len, desc, raddr, rkey, has_imm, imm, ctx);
}
static inline int fab_inject(struct fab_ep *ep, fab_peer_t peer, const void *buf, size_t len)
{
	if (ep->ops->size < offsetof(struct fab_ops, inject) + sizeof(ep->ops->inject) ||
	    !ep->ops->inject)
		return RDAG_ENOSYS;
	return ep->ops->inject(ep, peer, buf, len);
}
static inline int fab_poll(struct fab_ep *ep, struct fab_cqe *out, int max)
{
	return ep->ops->poll(ep, out, max);
}
static inline int fab_wait_fd(struct fab_ep *ep)
{
	return ep->ops->wait_fd(ep);
}
static inline int fab_arm(struct fab_ep *ep)
{
	return ep->ops->arm(ep);
}
static inline const struct fab_attr *fab_attr(struct fab_ep *ep)
{
	return ep->ops->attr(ep);
}

/* The providers compiled in. */
extern const struct fab_ops fab_ofi_ops;
extern const struct fab_ops fab_verbs_ops;

#endif /* RDAG_FABRIC_H */
