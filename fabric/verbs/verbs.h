/* Internal state of the verbs provider (rdma-core): endpoint, peers, send-queue accounting. */
#ifndef RDAG_FABRIC_VERBS_H
#define RDAG_FABRIC_VERBS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>

#include "fabric/fabric.h"

/*
 * Layout of the provider (docs/verbs.md says why):
 *  - verbs_dev.c   picks the device, port, GID and the local IP that rdma_cm binds to;
 *  - verbs_ep.c    opens the endpoint (PD, two CQs on one completion channel, one SRQ, the
 *                  rdma_cm listener), closes it, and holds the ops table;
 *  - verbs_cm.c    connects every pair of ranks with rdma_cm (the lower rank connects), and
 *                  handles connection events afterwards (disconnects);
 *  - verbs_data.c  memory registration, posting, completion polling, the wait fd.
 */

/* Defaults when fab_open_opts leaves a size at 0. */
#define VERBS_DEFAULT_TX_DEPTH 128u /* send queue entries per peer */
#define VERBS_DEFAULT_RX_DEPTH 512u /* shared receive queue entries */
#define VERBS_DEFAULT_WORLD 16u     /* peers to size the send CQ for when world_size is 0 */
#define VERBS_MAX_INLINE 256u       /* inline data we ask the device for */
#define VERBS_PENDING 32            /* completions reaped by arm() before they are polled */
#define VERBS_CM_CHECK_MS 100       /* busy poll() looks for rdma_cm events this often at most */

/* What verbs_select() chose: device, port, GID and the address rdma_cm binds to. */
struct verbs_sel {
	char dev_name[64];
	uint8_t port;
	int gid_index;
	uint32_t gid_type; /* enum ibv_gid_type */
	union ibv_gid gid;
	int link_layer;    /* IBV_LINK_LAYER_* */
	struct sockaddr_storage addr; /* port 0 */
	socklen_t addr_len;
	char addr_str[64];
	struct ibv_device_attr dev_attr;
	struct ibv_port_attr port_attr;
};

/*
 * Selects device, port, GID and local address from opts (RDAG_IB_DEVICE, RDAG_IB_GID_INDEX,
 * RDAG_IB_ADDR), refusing devices that lack what the provider needs. Returns 0 or a negative
 * code with the reason in why (no "verbs:" prefix).
 */
int verbs_select(const struct fab_open_opts *opts, struct verbs_sel *sel, char *why, size_t whylen);

/* Text of a GID type ("IB", "RoCE v1", "RoCE v2"). */
const char *verbs_gid_type_str(uint32_t type);

/* What a posted work request is, for the completion it may produce. */
enum verbs_slot_kind {
	VS_OP = 1, /* ends a send or write: exactly one completion, with the caller's context */
	VS_MIDDLE, /* a non-final chunk of a large write: no completion of its own */
	VS_INJECT, /* fab_inject: no completion on success; a failure comes with context NULL */
};

/*
 * One slot of a peer's send queue. wr_id is the caller's context for VS_OP, and the slot's own
 * address otherwise, so an error completion is matched to its slot without ambiguity.
 */
struct verbs_sq_slot {
	uint64_t wr_id;
	uint8_t op;   /* enum fab_op */
	uint8_t kind; /* enum verbs_slot_kind */
};

/* A signalled work request: how many send-queue slots its completion retires, and whether it
 * reports (VS_OP) or was signalled only so that the queue's slots come back. */
struct verbs_sig {
	uint32_t retire;
	uint8_t report;
};

enum verbs_peer_state {
	VP_IDLE = 0,     /* nothing going on (passive side: waiting for the peer's request) */
	VP_ADDR,         /* active: resolving the address */
	VP_ROUTE,        /* active: resolving the route */
	VP_CONNECTING,   /* active: request sent */
	VP_RETRY,        /* active: waiting to try again */
	VP_ACCEPTING,    /* passive: accepted, waiting for ESTABLISHED */
	VP_CONNECTED,
	VP_FAILED,       /* connection set-up failed for good, or the QP went to error */
	VP_DISCONNECTED, /* the peer disconnected (closed or died) */
};

struct verbs_ep;

struct verbs_peer {
	struct verbs_ep *ep;
	uint32_t rank;
	enum verbs_peer_state state;
	int self;                 /* this entry is ourselves */
	int active;               /* we connect to it (we have the lower rank) */
	struct sockaddr_storage sa; /* its rdma_cm listening address */
	char addr_str[80];
	uint64_t nonce;           /* its endpoint's nonce, from its address */
	struct rdma_cm_id *id;
	struct ibv_qp *qp;
	uint32_t qp_num;
	int attempts;
	int64_t retry_at_ms;      /* VP_RETRY: when to start over */
	char why[160];            /* last problem seen, for error messages */
	int qp_error;             /* the QP is in error (first failure recorded in why) */
	int first_code;           /* RDAG code of that first failure */
	int carry;                /* a middle chunk failed: its operation's completion gets first_code */

	/* Send-queue accounting (see verbs_data.c). */
	uint32_t sq_used;         /* posted WRs not yet retired */
	uint32_t unsignaled;      /* WRs posted since the last signalled one */
	struct verbs_sq_slot *slots; /* ring of sq_depth */
	uint32_t slot_head;       /* oldest outstanding WR */
	struct verbs_sig *sigs;   /* FIFO of signalled WRs, capacity sq_depth */
	uint32_t sig_head, sig_count;
};

/* A registration, listed so close() can free what callers forgot. */
struct verbs_mr {
	struct ibv_mr *mr;
	struct verbs_mr *prev, *next;
};

struct verbs_ep {
	struct fab_ep base;
	struct fab_attr attr;
	struct verbs_sel sel;
	uint32_t rank;
	uint32_t world_sized; /* peers the queues were sized for */

	struct rdma_event_channel *cm_ch;
	struct rdma_cm_id *listen_id;
	uint16_t port;        /* rdma_cm listening port, host order */
	uint64_t nonce;       /* identifies this endpoint incarnation */

	struct ibv_context *ctx; /* the listener's (rdma_cm's) device context */
	struct ibv_pd *pd;
	struct ibv_comp_channel *comp_ch;
	struct ibv_cq *scq, *rcq;
	unsigned scq_unacked, rcq_unacked;
	struct ibv_srq *srq;
	int epfd;             /* epoll over the completion channel and the rdma_cm channel */

	uint32_t sq_depth;    /* send WRs per QP */
	uint32_t sig_interval; /* at most this many WRs in a row unsignalled */
	uint32_t srq_depth;
	uint32_t srq_posted;
	uint32_t max_inline;
	size_t chunk;         /* largest single RDMA WRITE (port max_msg_sz) */
	struct ibv_send_wr wrs[16]; /* a batch of WRs being posted (writes split into chunks) */
	struct ibv_sge sges[16];

	struct verbs_peer *peers;
	uint32_t npeers;
	int connecting;       /* inside verbs_connect(): connection requests are welcome */
	int connected;        /* verbs_connect() has succeeded */

	/* qp_num -> peer, open addressing, rebuilt when a QP comes or goes. */
	uint32_t *qpmap_num;
	uint32_t *qpmap_peer;
	uint32_t qpmap_mask;

	struct fab_cqe pending[VERBS_PENDING]; /* reaped by arm(), handed out by poll() first */
	int pending_head, pending_count;
	unsigned empty_polls; /* empty polls, to look at rdma_cm events now and then */
	int64_t cm_checked_ms; /* when poll() last looked */

	struct verbs_mr *mrs;
	unsigned nmrs;
};

/* ---- verbs_cm.c ---- */
#define VERBS_ADDR_LEN 40u

/* Encodes the endpoint's address (IP, rdma_cm port, rank, nonce) into VERBS_ADDR_LEN bytes. */
void verbs_addr_encode(const struct verbs_ep *ep, uint8_t *out);

int verbs_connect(struct fab_ep *fep, uint32_t npeers, const void *const *addrs, const size_t *lens,
		  int timeout_ms);

/* Handles rdma_cm events that are already queued (disconnects after set-up); never blocks. */
void verbs_cm_drain(struct verbs_ep *ep);

/* Tears down one peer's QP and rdma_cm id (disconnecting first if connected). */
void verbs_peer_teardown(struct verbs_ep *ep, struct verbs_peer *p);

/* Rebuilds the qp_num -> peer map from the peers' current QPs. */
void verbs_qpmap_rebuild(struct verbs_ep *ep);

/* The peer owning local QP qp_num, or FAB_PEER_UNKNOWN. */
uint32_t verbs_qpmap_find(const struct verbs_ep *ep, uint32_t qp_num);

/* Allocates a peer's send-queue accounting; 0 or RDAG_ENOMEM. */
int verbs_peer_sq_init(struct verbs_ep *ep, struct verbs_peer *p);

/* The QP attributes every peer's QP is created with. */
void verbs_qp_init_attr(const struct verbs_ep *ep, struct ibv_qp_init_attr *qa);

/* ---- verbs_data.c ---- */
int verbs_mr_reg(struct fab_ep *fep, void *addr, size_t len, uint32_t access,
		 enum fab_mem_kind kind, int device, struct fab_mr *mr);
int verbs_mr_dereg(struct fab_ep *fep, struct fab_mr *mr);
int verbs_post_recv(struct fab_ep *fep, void *buf, size_t len, void *desc, void *context);
int verbs_send(struct fab_ep *fep, fab_peer_t peer, const void *buf, size_t len, void *desc,
	       void *context);
int verbs_write(struct fab_ep *fep, fab_peer_t peer, const void *buf, size_t len, void *desc,
		uint64_t remote_addr, uint64_t rkey, int has_imm, uint32_t imm, void *context);
int verbs_inject(struct fab_ep *fep, fab_peer_t peer, const void *buf, size_t len);
int verbs_poll(struct fab_ep *fep, struct fab_cqe *out, int max);
int verbs_wait_fd(struct fab_ep *fep);
int verbs_arm(struct fab_ep *fep);

/* Acknowledges the completion events counted so far (ibv_ack_cq_events). */
void verbs_ack_cq_events(struct verbs_ep *ep);

/* Monotonic milliseconds. */
int64_t verbs_now_ms(void);

#endif /* RDAG_FABRIC_VERBS_H */
