/* Plain verbs set-up shared by raw_verbs_lat and raw_verbs_bw: one RC queue pair connected with rdma_cm. */
#ifndef RDAG_PERF_RAW_VERBS_H
#define RDAG_PERF_RAW_VERBS_H

#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>

#include "raw_common.h"

/* wr_id = (sequence << 2) | kind, so a completion says what it was and which WR it retires. */
enum raw_wr_kind {
	RAW_WR_SEND = 1,
	RAW_WR_RECV = 2,
	RAW_WR_WRITE = 3,
};
#define RAW_WR_ID(seq, kind) (((uint64_t)(seq) << 2) | (uint64_t)(kind))
#define RAW_WR_KIND(id) ((enum raw_wr_kind)((id) & 3u))
#define RAW_WR_SEQ(id) ((id) >> 2)

struct raw_verbs {
	const struct raw_opts *o;
	struct rdma_event_channel *ec;
	struct rdma_cm_id *listen_id; /* server only */
	struct rdma_cm_id *id;        /* the connected one */
	struct ibv_pd *pd;
	struct ibv_comp_channel *channel; /* for raw_verbs_sleep(); the CQ is busy-polled otherwise */
	struct ibv_cq *cq;
	unsigned unacked_events;
	struct ibv_qp *qp;
	uint32_t max_inline;          /* what the QP was created with */
	uint32_t send_depth, recv_depth;
	uint32_t max_msg;             /* the port's max_msg_sz: largest single send or write */
	int established;
};

/*
 * Checks that an RDMA device exists (RAW_EXIT_SKIP with a clear message if not), then connects
 * one RC QP to the peer: the server listens with rdma_cm on an ephemeral port and tells the
 * client over the out-of-band socket fd; both create PD, CQ (busy-polled) and QP on the device
 * rdma_cm chose. Receives can be posted after this and before raw_verbs_establish().
 * Returns 0, RAW_EXIT_SKIP or RAW_EXIT_FAIL (message printed).
 */
int raw_verbs_probe(const struct raw_opts *o);
int raw_verbs_open(struct raw_verbs *v, const struct raw_opts *o, int fd, uint32_t send_depth,
		   uint32_t recv_depth);
/* Client: rdma_connect; server: rdma_accept. Waits for ESTABLISHED. 0 or RAW_EXIT_FAIL. */
int raw_verbs_establish(struct raw_verbs *v);
void raw_verbs_close(struct raw_verbs *v);

/*
 * Sleeps until the CQ has a completion or timeout_ms passes: arms the CQ, and blocks on its
 * completion channel. The caller polls the CQ right after arming, since a completion may have
 * come in between (call with arm_only first). Returns 0 (event or timeout) or RAW_EXIT_FAIL.
 */
int raw_verbs_arm(struct raw_verbs *v);
int raw_verbs_sleep(struct raw_verbs *v, int timeout_ms);

/* Prints the header lines describing the device, port and QP. */
void raw_verbs_print_setup(const struct raw_verbs *v);

/* Registers buf with access flags. NULL on failure (message printed). */
struct ibv_mr *raw_verbs_reg(struct raw_verbs *v, void *buf, size_t len, int access);

/* Posts a receive of len bytes from mr (len 0 / mr NULL: no buffer, e.g. for write-with-imm). */
int raw_verbs_post_recv(struct raw_verbs *v, struct ibv_mr *mr, void *buf, size_t len, uint64_t wr_id);

/* Prints "tool: what: strerror(err)" and returns RAW_EXIT_FAIL. */
int raw_verbs_fail(const struct raw_verbs *v, const char *what, int err);

/* Checks a work completion's status; prints and returns RAW_EXIT_FAIL if it failed. */
int raw_verbs_wc_ok(const struct raw_verbs *v, const struct ibv_wc *wc);

#endif /* RDAG_PERF_RAW_VERBS_H */
