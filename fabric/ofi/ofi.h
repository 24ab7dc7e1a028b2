/* Internal interface of the ofi (libfabric) provider, shared by its files and by rdag_info. */
#ifndef RDAG_FABRIC_OFI_H
#define RDAG_FABRIC_OFI_H

#include <stddef.h>
#include <stdint.h>

#include <rdma/fabric.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_eq.h>

#include "fabric/fabric.h"

/* The libfabric API version we ask for (the headers we build against). */
#define OFI_API_VERSION FI_VERSION(FI_MAJOR_VERSION, FI_MINOR_VERSION)

/* What we need from a provider, as hints. */
#define OFI_CAPS (FI_MSG | FI_RMA | FI_SEND | FI_RECV | FI_WRITE | FI_REMOTE_WRITE)
/* The mode bits we can satisfy (FI_CONTEXT/FI_CONTEXT2: per-op context memory from our pool). */
#define OFI_MODES (FI_CONTEXT | FI_CONTEXT2 | FI_RX_CQ_DATA)
/* The MR mode bits we honour. FI_MR_RAW (keys larger than 64 bits) is refused. */
#define OFI_MR_MODES                                                                       \
	(FI_MR_LOCAL | FI_MR_VIRT_ADDR | FI_MR_ALLOCATED | FI_MR_PROV_KEY | FI_MR_ENDPOINT)

/* Per-operation context: the fi_context2 a provider may use is ours, from the endpoint's pool. */
struct ofi_req {
	struct fi_context2 fictx; /* first: &req->fictx is the op context given to libfabric */
	void *ctx;                /* the caller's context */
	struct ofi_req *next;     /* free-list link */
	fab_peer_t peer;
	uint8_t op;               /* enum fab_op of the posted operation */
	uint8_t posted;           /* posted and its completion not reaped yet */
};

/* A registration the endpoint still holds (so close can release what the caller forgot). */
struct ofi_mr_node {
	struct fid_mr *mr;
	struct ofi_mr_node *prev, *next;
};

/* Reverse map entry for FI_SOURCE: fi_addr_t -> rank. */
struct ofi_rev {
	fi_addr_t addr;
	fab_peer_t rank;
};

struct ofi_ep {
	struct fab_ep base; /* first: the common head */
	struct fab_attr attr;
	struct fi_info *info; /* the info the endpoint was opened with */
	struct fid_fabric *fabric;
	struct fid_domain *domain;
	struct fid_av *av;
	struct fid_cq *cq;
	struct fid_ep *ep;
	uint64_t mr_mode;
	uint64_t write_flags; /* op flags of every write (FI_COMPLETION | FI_DELIVERY_COMPLETE) */
	int need_desc;        /* FI_MR_LOCAL: local buffers need a registration's desc */
	int use_source;       /* FI_SOURCE: receive completions name the sender */
	int wait_fd;          /* the CQ's wait fd, or -1 */
	uint32_t rank;
	uint32_t npeers;      /* size of peers[] */
	fi_addr_t *peers;     /* rank -> fi_addr_t, FI_ADDR_NOTAVAIL if not inserted */
	struct ofi_rev *rev;  /* sorted by addr, nrev entries */
	uint32_t nrev;
	uint64_t next_key;    /* requested keys when the provider does not pick them */
	struct ofi_req *reqs; /* tx_count + rx_count contexts */
	struct ofi_req *tx_free, *rx_free;
	size_t tx_count, rx_count;
	size_t outstanding; /* posted operations whose completion was not reaped yet */
	struct ofi_mr_node mrs; /* list head */
};

/* RDAG_OFI_HMEM=1: ask libfabric for FI_HMEM (device memory registration, gpu/). */
int ofi_want_hmem(void);

/* Sets FI_UNIVERSE_SIZE from world_size when the user has not set it (before fi_getinfo). */
void ofi_set_universe(uint32_t world_size);

/*
 * Allocates rdag's hints for libfabric provider prov (NULL: any). with_raw also accepts
 * FI_MR_RAW (only to diagnose providers that need it). Free with fi_freeinfo.
 */
struct fi_info *ofi_hints(const struct fab_open_opts *opts, const char *prov, int with_raw);

/*
 * Checks that info offers what rdag needs (RDM, MSG, RMA write, remote CQ data >= 4 bytes,
 * no FI_MR_RAW, only mode/MR bits we honour). 0 if so; else RDAG_ENODEV and why lists every
 * missing piece, e.g. "no FI_EP_RDM endpoints (MSG only: try 'tcp;ofi_rxm'), no remote CQ data".
 */
int ofi_check_info(const struct fi_info *info, char *why, size_t whylen);

/*
 * fi_getinfo for provider prov with rdag's hints; *out is the list (free with fi_freeinfo) with
 * the entries rdag cannot use dropped. On failure (RDAG_ENODEV) why explains what prov lacks.
 */
int ofi_getinfo(const struct fab_open_opts *opts, const char *prov, struct fi_info **out,
		char *why, size_t whylen);

/*
 * The libfabric provider to use: opts->ofi_provider if set, else the first usable one in
 * preference order (shm first when opts->local_only). prov receives the name, why the reason.
 */
int ofi_choose(const struct fab_open_opts *opts, char *prov, size_t provlen, char *why,
	       size_t whylen);

/* The preference order auto selection walks (NULL-terminated), for rdag_info. */
const char *const *ofi_preference(int local_only);

/* fab_cap flags an endpoint opened with info would advertise (wait fd assumed available). */
uint32_t ofi_caps_of(const struct fi_info *info);

/* Whether the provider's CQ wait fd wakes on incoming traffic (see docs/fabric.md). */
int ofi_wait_fd_usable(const struct fi_info *info);

/* Maps a libfabric error (positive FI_E* / errno value) to an RDAG_E* code. */
int ofi_status(int fi_err);

/* Data-path ops (ofi_data.c). */
int ofi_post_recv(struct fab_ep *fep, void *buf, size_t len, void *desc, void *context);
int ofi_send(struct fab_ep *fep, fab_peer_t peer, const void *buf, size_t len, void *desc,
	     void *context);
int ofi_inject(struct fab_ep *fep, fab_peer_t peer, const void *buf, size_t len);
int ofi_write(struct fab_ep *fep, fab_peer_t peer, const void *buf, size_t len, void *desc,
	      uint64_t remote_addr, uint64_t rkey, int has_imm, uint32_t imm, void *context);
int ofi_poll(struct fab_ep *fep, struct fab_cqe *out, int max);

/*
 * Before closing: cancels the posted receives and reaps completions for up to ms milliseconds
 * or until nothing is outstanding, discarding them. Returns what is still outstanding.
 */
size_t ofi_drain(struct ofi_ep *ep, int ms);

#endif /* RDAG_FABRIC_OFI_H */
