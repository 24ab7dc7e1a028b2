/* verbs provider: opens and closes the endpoint (PD, CQs, SRQ, rdma_cm listener) and holds the ops table. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "fabric/verbs/verbs.h"
#include "util/err.h"
#include "util/log.h"

int64_t verbs_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static uint32_t min_u32(uint32_t a, uint32_t b)
{
	return a < b ? a : b;
}

void verbs_qp_init_attr(const struct verbs_ep *ep, struct ibv_qp_init_attr *qa)
{
	memset(qa, 0, sizeof(*qa));
	qa->send_cq = ep->scq;
	qa->recv_cq = ep->rcq;
	qa->srq = ep->srq;
	qa->qp_type = IBV_QPT_RC;
	qa->sq_sig_all = 0;
	qa->cap.max_send_wr = ep->sq_depth;
	qa->cap.max_send_sge = 1;
	qa->cap.max_recv_wr = 0;
	qa->cap.max_recv_sge = 0;
	qa->cap.max_inline_data = ep->max_inline;
}

/*
 * Finds how much inline data an RC QP on this device takes, by creating one (which also proves
 * the device does RC with an SRQ). Returns 0 or a code with the reason in why.
 */
static int probe_rc_qp(struct verbs_ep *ep, char *why, size_t whylen)
{
	static const uint32_t tries[] = { VERBS_MAX_INLINE, 128, 64, 32, 0 };
	int err = 0;

	for (size_t i = 0; i < sizeof(tries) / sizeof(tries[0]); i++) {
		struct ibv_qp_init_attr qa;
		struct ibv_qp *qp;

		ep->max_inline = tries[i];
		verbs_qp_init_attr(ep, &qa);
		qp = ibv_create_qp(ep->pd, &qa);
		if (!qp) {
			err = errno;
			continue;
		}
		ep->max_inline = min_u32(tries[i], qa.cap.max_inline_data);
		ibv_destroy_qp(qp);
		return 0;
	}
	snprintf(why, whylen, "%s: cannot create a reliable-connection queue pair with a shared "
			      "receive queue (ibv_create_qp: %s)",
		 ep->sel.dev_name, strerror(err));
	return RDAG_ENODEV;
}

/* Creates everything but the peers; on failure the caller closes. */
static int setup(struct verbs_ep *ep, const struct fab_open_opts *opts, int probe_only, char *why,
		 size_t whylen)
{
	const struct ibv_device_attr *da;
	struct epoll_event ev;
	uint32_t tx, rx, cqe;
	int rc;

	rc = verbs_select(opts, &ep->sel, why, whylen);
	if (rc)
		return rc;
	da = &ep->sel.dev_attr;

	ep->cm_ch = rdma_create_event_channel();
	if (!ep->cm_ch) {
		snprintf(why, whylen, "rdma_create_event_channel: %s", strerror(errno));
		return RDAG_ENODEV;
	}
	if (set_nonblock(ep->cm_ch->fd) != 0) {
		snprintf(why, whylen, "fcntl(rdma_cm channel): %s", strerror(errno));
		return RDAG_EIO;
	}
	if (rdma_create_id(ep->cm_ch, &ep->listen_id, ep, RDMA_PS_TCP) != 0) {
		ep->listen_id = NULL;
		snprintf(why, whylen, "rdma_create_id: %s", strerror(errno));
		return RDAG_ENODEV;
	}
	if (rdma_bind_addr(ep->listen_id, (struct sockaddr *)&ep->sel.addr) != 0) {
		snprintf(why, whylen, "rdma_bind_addr(%s): %s (is that address on %s's interface?)",
			 ep->sel.addr_str, strerror(errno), ep->sel.dev_name);
		return RDAG_ENODEV;
	}
	if (!ep->listen_id->verbs) {
		snprintf(why, whylen, "rdma_cm: address %s is not on an RDMA device", ep->sel.addr_str);
		return RDAG_ENODEV;
	}
	if (strcmp(ibv_get_device_name(ep->listen_id->verbs->device), ep->sel.dev_name) != 0) {
		snprintf(why, whylen, "rdma_cm: address %s belongs to device %s, not %s (set RDAG_IB_ADDR "
				      "or RDAG_IB_DEVICE)",
			 ep->sel.addr_str, ibv_get_device_name(ep->listen_id->verbs->device),
			 ep->sel.dev_name);
		return RDAG_ENODEV;
	}
	if (ep->listen_id->port_num && ep->listen_id->port_num != ep->sel.port)
		LOG_WARN("verbs: rdma_cm bound %s to port %u of %s, selected port %u", ep->sel.addr_str,
			 ep->listen_id->port_num, ep->sel.dev_name, ep->sel.port);
	if (!probe_only && rdma_listen(ep->listen_id, 128) != 0) {
		snprintf(why, whylen, "rdma_listen(%s): %s", ep->sel.addr_str, strerror(errno));
		return RDAG_ENODEV;
	}
	ep->port = ntohs(rdma_get_src_port(ep->listen_id));
	ep->ctx = ep->listen_id->verbs;

	/* Sizing (docs/verbs.md): per-peer SQ, send CQ for all SQs, receive CQ for the SRQ. */
	tx = opts->tx_depth ? (uint32_t)(opts->tx_depth < (1u << 20) ? opts->tx_depth : (1u << 20))
			    : VERBS_DEFAULT_TX_DEPTH;
	rx = opts->rx_depth ? (uint32_t)(opts->rx_depth < (1u << 20) ? opts->rx_depth : (1u << 20))
			    : VERBS_DEFAULT_RX_DEPTH;
	ep->world_sized = opts->world_size ? opts->world_size : VERBS_DEFAULT_WORLD;
	tx = min_u32(tx, (uint32_t)da->max_qp_wr);
	if ((uint64_t)tx * ep->world_sized > (uint64_t)da->max_cqe)
		tx = (uint32_t)da->max_cqe / ep->world_sized;
	if (tx < 8) {
		snprintf(why, whylen, "%s: completion queues too small for %u peers (max_cqe %d)",
			 ep->sel.dev_name, ep->world_sized, da->max_cqe);
		return RDAG_ENODEV;
	}
	rx = min_u32(rx, min_u32((uint32_t)da->max_srq_wr, (uint32_t)da->max_cqe));
	ep->sq_depth = tx;
	ep->sig_interval = tx / 4 < 1 ? 1 : (tx / 4 > 64 ? 64 : tx / 4);
	ep->srq_depth = rx;
	cqe = tx * ep->world_sized;
	ep->chunk = ep->sel.port_attr.max_msg_sz ? ep->sel.port_attr.max_msg_sz : (1u << 30);
	if (ep->chunk > (1u << 30))
		ep->chunk = 1u << 30;

	ep->pd = ibv_alloc_pd(ep->ctx);
	if (!ep->pd) {
		snprintf(why, whylen, "%s: ibv_alloc_pd: %s", ep->sel.dev_name, strerror(errno));
		return RDAG_ENODEV;
	}
	ep->comp_ch = ibv_create_comp_channel(ep->ctx);
	if (!ep->comp_ch || set_nonblock(ep->comp_ch->fd) != 0) {
		snprintf(why, whylen, "%s: ibv_create_comp_channel: %s", ep->sel.dev_name, strerror(errno));
		return RDAG_ENODEV;
	}
	ep->scq = ibv_create_cq(ep->ctx, (int)cqe, ep, ep->comp_ch, 0);
	if (!ep->scq) {
		snprintf(why, whylen, "%s: ibv_create_cq(%u entries): %s", ep->sel.dev_name, cqe,
			 strerror(errno));
		return RDAG_ENODEV;
	}
	ep->rcq = ibv_create_cq(ep->ctx, (int)rx, ep, ep->comp_ch, 0);
	if (!ep->rcq) {
		snprintf(why, whylen, "%s: ibv_create_cq(%u entries): %s", ep->sel.dev_name, rx,
			 strerror(errno));
		return RDAG_ENODEV;
	}
	{
		struct ibv_srq_init_attr sa;

		memset(&sa, 0, sizeof(sa));
		sa.attr.max_wr = rx;
		sa.attr.max_sge = 1;
		ep->srq = ibv_create_srq(ep->pd, &sa);
		if (!ep->srq) {
			snprintf(why, whylen, "%s: ibv_create_srq(%u entries): %s", ep->sel.dev_name, rx,
				 strerror(errno));
			return RDAG_ENODEV;
		}
	}
	rc = probe_rc_qp(ep, why, whylen);
	if (rc)
		return rc;

	ep->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (ep->epfd < 0) {
		snprintf(why, whylen, "epoll_create1: %s", strerror(errno));
		return RDAG_EIO;
	}
	memset(&ev, 0, sizeof(ev));
	ev.events = EPOLLIN;
	ev.data.fd = ep->comp_ch->fd;
	if (epoll_ctl(ep->epfd, EPOLL_CTL_ADD, ep->comp_ch->fd, &ev) != 0) {
		snprintf(why, whylen, "epoll_ctl: %s", strerror(errno));
		return RDAG_EIO;
	}
	ev.data.fd = ep->cm_ch->fd;
	if (epoll_ctl(ep->epfd, EPOLL_CTL_ADD, ep->cm_ch->fd, &ev) != 0) {
		snprintf(why, whylen, "epoll_ctl: %s", strerror(errno));
		return RDAG_EIO;
	}
	if (getrandom(&ep->nonce, sizeof(ep->nonce), 0) != (ssize_t)sizeof(ep->nonce))
		ep->nonce = ((uint64_t)getpid() << 32) ^ (uint64_t)verbs_now_ms() ^ (uintptr_t)ep;

	ep->attr.provider = "verbs";
	snprintf(ep->attr.fabric_name, sizeof(ep->attr.fabric_name), "%s", ep->sel.dev_name);
	ep->attr.caps = FAB_CAP_WRITE_IMM | FAB_CAP_IMM_CONSUMES_RECV | FAB_CAP_RECV_SOURCE |
			FAB_CAP_WAIT_FD | FAB_CAP_ORDER_SAW | FAB_CAP_WRITE_DELIVERED;
	if (ep->max_inline > 0)
		ep->attr.caps |= FAB_CAP_INJECT;
	ep->attr.max_msg_size = ep->chunk;
	/* A write is split into chunks of at most max_msg_sz, all of which must fit in the SQ. */
	ep->attr.max_write_size = ep->chunk * (size_t)(ep->sq_depth / 2 ? ep->sq_depth / 2 : 1);
	if (da->max_mr_size && ep->attr.max_write_size > da->max_mr_size)
		ep->attr.max_write_size = (size_t)da->max_mr_size;
	ep->attr.inject_size = ep->max_inline;
	ep->attr.max_recv_posted = ep->srq_depth;
	ep->attr.addr_len = VERBS_ADDR_LEN;
	return 0;
}

static void verbs_close(struct fab_ep *fep);

static int open_internal(const struct fab_open_opts *opts, int probe_only, struct fab_ep **out, char *why,
			 size_t whylen)
{
	struct verbs_ep *ep;
	int rc;

	*out = NULL;
	ep = calloc(1, sizeof(*ep));
	if (!ep) {
		snprintf(why, whylen, "out of memory");
		return RDAG_ENOMEM;
	}
	ep->base.ops = &fab_verbs_ops;
	ep->epfd = -1;
	ep->rank = opts->rank;
	rc = setup(ep, opts, probe_only, why, whylen);
	if (rc) {
		verbs_close(&ep->base);
		return rc;
	}
	*out = &ep->base;
	return 0;
}

/* One line naming what the endpoint uses (probe's answer, and the open log line). */
static void describe(const struct verbs_ep *ep, char *buf, size_t len)
{
	char gid[64];

	if (!inet_ntop(AF_INET6, ep->sel.gid.raw, gid, sizeof(gid)))
		snprintf(gid, sizeof(gid), "?");
	snprintf(buf, len, "%s port %u gid %d (%s, %s), rdma_cm on %s, inline %u", ep->sel.dev_name,
		 ep->sel.port, ep->sel.gid_index, gid, verbs_gid_type_str(ep->sel.gid_type),
		 ep->sel.addr_str, ep->max_inline);
}

/*
 * Checks everything open would need on the selected device (device and port state, GID, local
 * address bound by rdma_cm, PD, CQs, SRQ, an RC QP), then frees it all; no listener is started.
 */
static int verbs_probe(const struct fab_open_opts *opts, char *why, size_t whylen)
{
	struct fab_ep *ep;
	char buf[512];
	int rc;

	buf[0] = '\0';
	rc = open_internal(opts, 1, &ep, buf, sizeof(buf));
	if (rc == 0) {
		describe((struct verbs_ep *)ep, buf, sizeof(buf));
		verbs_close(ep);
	}
	if (why && whylen)
		snprintf(why, whylen, "%s", buf);
	return rc;
}

static int verbs_open(const struct fab_open_opts *opts, struct fab_ep **out)
{
	struct verbs_ep *ep;
	char why[512];
	int rc;

	why[0] = '\0';
	rc = open_internal(opts, 0, out, why, sizeof(why));
	if (rc)
		return err_set(rc, "verbs: %s", why);
	ep = (struct verbs_ep *)*out;
	describe(ep, why, sizeof(why));
	LOG_INFO("verbs: rank %u: %s, port %u; sq %u per peer (signal at least every %u), srq %u, "
		 "write chunk %zu",
		 ep->rank, why, ep->port, ep->sq_depth, ep->sig_interval, ep->srq_depth, ep->chunk);
	return 0;
}

static void verbs_close(struct fab_ep *fep)
{
	struct verbs_ep *ep = (struct verbs_ep *)fep;

	if (!ep)
		return;
	/* Peers first: disconnect, destroy QPs and rdma_cm ids, in whatever state they are. */
	if (ep->peers) {
		for (uint32_t i = 0; i < ep->npeers; i++) {
			verbs_peer_teardown(ep, &ep->peers[i]);
			free(ep->peers[i].slots);
			free(ep->peers[i].sigs);
		}
		free(ep->peers);
	}
	free(ep->qpmap_num);
	free(ep->qpmap_peer);
	if (ep->nmrs)
		LOG_WARN("verbs: closing with %u memory registration(s) still in place; deregistering them",
			 ep->nmrs);
	while (ep->mrs) {
		struct verbs_mr *m = ep->mrs;

		ep->mrs = m->next;
		ibv_dereg_mr(m->mr);
		free(m);
	}
	if (ep->srq)
		ibv_destroy_srq(ep->srq);
	if (ep->comp_ch) {
		/* Events must be acknowledged before their CQ can be destroyed. */
		struct ibv_cq *cq;
		void *cctx;

		while (ibv_get_cq_event(ep->comp_ch, &cq, &cctx) == 0) {
			if (cq == ep->scq)
				ep->scq_unacked++;
			else
				ep->rcq_unacked++;
		}
		verbs_ack_cq_events(ep);
	}
	if (ep->scq)
		ibv_destroy_cq(ep->scq);
	if (ep->rcq)
		ibv_destroy_cq(ep->rcq);
	if (ep->comp_ch)
		ibv_destroy_comp_channel(ep->comp_ch);
	if (ep->pd) {
		int e = ibv_dealloc_pd(ep->pd);

		if (e)
			LOG_WARN("verbs: ibv_dealloc_pd: %s", strerror(e));
	}
	if (ep->listen_id)
		rdma_destroy_id(ep->listen_id);
	if (ep->cm_ch)
		rdma_destroy_event_channel(ep->cm_ch);
	if (ep->epfd >= 0)
		close(ep->epfd);
	free(ep);
}

static int verbs_name_get(struct fab_ep *fep, void *addr, size_t *len)
{
	struct verbs_ep *ep = (struct verbs_ep *)fep;

	if (!len)
		return err_set(RDAG_EINVAL, "verbs: name_get without a length");
	if (!addr || *len < VERBS_ADDR_LEN) {
		*len = VERBS_ADDR_LEN;
		return err_set(RDAG_ENOSPC, "verbs: address needs %u bytes", VERBS_ADDR_LEN);
	}
	verbs_addr_encode(ep, addr);
	*len = VERBS_ADDR_LEN;
	return 0;
}

static const struct fab_attr *verbs_attr(struct fab_ep *fep)
{
	return &((struct verbs_ep *)fep)->attr;
}

const struct fab_ops fab_verbs_ops = {
	.size = sizeof(struct fab_ops),
	.name = "verbs",
	.probe = verbs_probe,
	.open = verbs_open,
	.close = verbs_close,
	.name_get = verbs_name_get,
	.connect = verbs_connect,
	.mr_reg = verbs_mr_reg,
	.mr_dereg = verbs_mr_dereg,
	.post_recv = verbs_post_recv,
	.send = verbs_send,
	.write = verbs_write,
	.poll = verbs_poll,
	.wait_fd = verbs_wait_fd,
	.arm = verbs_arm,
	.attr = verbs_attr,
	.inject = verbs_inject,
};
