/* Plain libfabric set-up shared by raw_ofi_lat and raw_ofi_bw: RDM endpoint, CQ, AV, MRs as the provider asks. */
#ifndef RDAG_PERF_RAW_OFI_H
#define RDAG_PERF_RAW_OFI_H

#include <rdma/fabric.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>

#include "raw_common.h"

/* What a posted operation was, found again from its completion's context (never from flags). */
enum raw_ctx_kind {
	RAW_CTX_SEND = 1,
	RAW_CTX_RECV,
	RAW_CTX_WRITE,
};

/* Per-operation context: big enough for FI_CONTEXT / FI_CONTEXT2 providers. */
struct raw_ctx {
	struct fi_context2 fi; /* must stay first: its address is the operation's context */
	enum raw_ctx_kind kind;
	int busy; /* posted, completion not yet reaped (cleared by raw_ofi_progress) */
};

struct raw_ofi {
	const struct raw_opts *o;
	struct fi_info *info;
	struct fid_fabric *fabric;
	struct fid_domain *domain;
	struct fid_cq *cq;
	struct fid_av *av;
	struct fid_ep *ep;
	fi_addr_t peer;
	size_t inject_size;    /* sends up to this size go by fi_inject (0: none) */
	uint64_t next_key;     /* requested keys, when the provider does not choose them */
	/* Completion counters, updated by raw_ofi_progress(). */
	uint64_t sends_done, recvs_done, writes_done, remote_data;
	uint64_t last_data;    /* remote CQ data of the last notification */
	size_t last_len;       /* bytes of the last receive */
	/* Our contexts (raw_ofi_own); a completion naming any other context is remote data. */
	struct {
		struct raw_ctx *base;
		size_t n;
	} owned[4];
	int nowned;
};

/* A registration as the provider asks for it; desc is NULL when no local descriptor is needed. */
struct raw_mr {
	struct fid_mr *mr;
	void *desc;
	uint64_t key;
	uint64_t remote_addr; /* what a peer writes to for offset 0 (VA or 0) */
};

/*
 * Opens an RDM endpoint on o->provider / o->device with caps (FI_MSG, FI_MSG | FI_RMA), binding
 * one busy-polled CQ and an AV. need_cq_data: the endpoint must carry 4 bytes of remote CQ data.
 * Returns 0, RAW_EXIT_SKIP when no such provider exists here, or RAW_EXIT_FAIL (message printed).
 */
int raw_ofi_open(struct raw_ofi *r, const struct raw_opts *o, uint64_t caps, int need_cq_data);
void raw_ofi_close(struct raw_ofi *r);

/* Prints the header lines describing the provider, endpoint, MR and mode bits in force. */
void raw_ofi_print_setup(const struct raw_ofi *r);

/* Exchanges endpoint names over the out-of-band socket and inserts the peer. 0 or RAW_EXIT_FAIL. */
int raw_ofi_connect(struct raw_ofi *r, int fd);

/*
 * Registers buf for access (FI_SEND | FI_RECV | FI_WRITE for local use, FI_REMOTE_WRITE for a
 * write target), honouring FI_MR_LOCAL (local buffers are registered only when asked for),
 * FI_MR_PROV_KEY, FI_MR_VIRT_ADDR and FI_MR_ENDPOINT. 0 or RAW_EXIT_FAIL.
 */
int raw_ofi_mr_reg(struct raw_ofi *r, void *buf, size_t len, uint64_t access, struct raw_mr *mr);
void raw_ofi_mr_close(struct raw_mr *mr);

/*
 * Declares n contexts at ctxs as ours. Completions are classified by their context: shm (1.17)
 * hands back a non-NULL garbage op_context for remote CQ data at the target, where the spec says
 * NULL, so a context is trusted only if it is one of ours.
 */
void raw_ofi_own(struct raw_ofi *r, struct raw_ctx *ctxs, size_t n);

/*
 * Reaps whatever completions are ready and updates the counters. Returns the number reaped, or
 * -1 on a completion error (message printed, with the provider's explanation).
 */
int raw_ofi_progress(struct raw_ofi *r);
/* The same, but blocks up to timeout_ms for a completion (fi_cq_sread; needs o->events at open). */
int raw_ofi_progress_wait(struct raw_ofi *r, int timeout_ms);

/* Prints "tool: what: fi_strerror" and returns RAW_EXIT_FAIL. */
int raw_ofi_fail(const struct raw_ofi *r, const char *what, ssize_t rc);

#endif /* RDAG_PERF_RAW_OFI_H */
