/* Plain verbs set-up shared by raw_verbs_lat and raw_verbs_bw: one RC queue pair connected with rdma_cm. */
#include "raw_verbs.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CM_TIMEOUT_MS 5000

int raw_verbs_fail(const struct raw_verbs *v, const char *what, int err)
{
	fprintf(stderr, "%s: %s: %s\n", v->o->tool, what, strerror(err));
	return RAW_EXIT_FAIL;
}

int raw_verbs_probe(const struct raw_opts *o)
{
	struct ibv_device **list;
	int n = 0, found = 0, i;

	errno = 0;
	list = ibv_get_device_list(&n);
	if (!list || n == 0) {
		fprintf(stderr, "%s: no RDMA device here (ibv_get_device_list: %s); run it inside "
			"../shared/rdma-vm for Soft-RoCE\n", o->tool,
			errno ? strerror(errno) : "no devices");
		if (list)
			ibv_free_device_list(list);
		return RAW_EXIT_SKIP;
	}
	for (i = 0; i < n && o->device; i++)
		if (strcmp(ibv_get_device_name(list[i]), o->device) == 0)
			found = 1;
	ibv_free_device_list(list);
	if (o->device && !found) {
		fprintf(stderr, "%s: no RDMA device named %s here\n", o->tool, o->device);
		return RAW_EXIT_SKIP;
	}
	return 0;
}

/* Waits for the next rdma_cm event, which must be `expected`; the event is acked. */
static int wait_event(struct raw_verbs *v, enum rdma_cm_event_type expected, struct rdma_cm_id **new_id)
{
	struct rdma_cm_event *ev;
	struct pollfd pfd = { .fd = v->ec->fd, .events = POLLIN };
	int rc, timeout = expected == RDMA_CM_EVENT_CONNECT_REQUEST ? v->o->timeout_s * 1000 : CM_TIMEOUT_MS * 4;

	do {
		rc = poll(&pfd, 1, timeout);
	} while (rc < 0 && errno == EINTR);
	if (rc <= 0) {
		fprintf(stderr, "%s: no rdma_cm event (waiting for %s) within %d ms\n", v->o->tool,
			rdma_event_str(expected), timeout);
		return RAW_EXIT_FAIL;
	}
	if (rdma_get_cm_event(v->ec, &ev))
		return raw_verbs_fail(v, "rdma_get_cm_event", errno);
	if (ev->event != expected) {
		fprintf(stderr, "%s: rdma_cm: got %s (status %d) while waiting for %s\n", v->o->tool,
			rdma_event_str(ev->event), ev->status, rdma_event_str(expected));
		rdma_ack_cm_event(ev);
		return RAW_EXIT_FAIL;
	}
	if (new_id)
		*new_id = ev->id;
	rdma_ack_cm_event(ev);
	return 0;
}

/* PD, CQ and QP on the device of v->id; the largest inline size the device grants, up to -I. */
static int create_qp(struct raw_verbs *v)
{
	const struct raw_opts *o = v->o;
	struct ibv_qp_init_attr attr;
	struct ibv_port_attr pa;
	uint32_t want = o->inline_size >= 0 ? (uint32_t)o->inline_size : 256;

	if (o->device && strcmp(ibv_get_device_name(v->id->verbs->device), o->device) != 0) {
		fprintf(stderr, "%s: rdma_cm routes to %s, but -d asks for %s\n", o->tool,
			ibv_get_device_name(v->id->verbs->device), o->device);
		return RAW_EXIT_FAIL;
	}
	memset(&pa, 0, sizeof(pa));
	if (ibv_query_port(v->id->verbs, v->id->port_num, &pa))
		return raw_verbs_fail(v, "ibv_query_port", errno);
	v->max_msg = pa.max_msg_sz;
	v->pd = ibv_alloc_pd(v->id->verbs);
	if (!v->pd)
		return raw_verbs_fail(v, "ibv_alloc_pd", errno);
	v->channel = ibv_create_comp_channel(v->id->verbs);
	if (!v->channel)
		return raw_verbs_fail(v, "ibv_create_comp_channel", errno);
	v->cq = ibv_create_cq(v->id->verbs, (int)(v->send_depth + v->recv_depth), NULL, v->channel, 0);
	if (!v->cq)
		return raw_verbs_fail(v, "ibv_create_cq", errno);
	for (;;) {
		memset(&attr, 0, sizeof(attr));
		attr.send_cq = v->cq;
		attr.recv_cq = v->cq;
		attr.qp_type = IBV_QPT_RC;
		attr.sq_sig_all = 0; /* selective signalling */
		attr.cap.max_send_wr = v->send_depth;
		attr.cap.max_recv_wr = v->recv_depth;
		attr.cap.max_send_sge = 1;
		attr.cap.max_recv_sge = 1;
		attr.cap.max_inline_data = want;
		if (rdma_create_qp(v->id, v->pd, &attr) == 0)
			break;
		if (want == 0)
			return raw_verbs_fail(v, "rdma_create_qp", errno);
		want = want > 64 ? want / 2 : 0; /* the device grants less inline data: ask for less */
	}
	v->qp = v->id->qp;
	v->max_inline = attr.cap.max_inline_data;
	if (o->inline_size >= 0 && v->max_inline > (uint32_t)o->inline_size)
		v->max_inline = (uint32_t)o->inline_size;
	return 0;
}

int raw_verbs_open(struct raw_verbs *v, const struct raw_opts *o, int fd, uint32_t send_depth,
		   uint32_t recv_depth)
{
	struct sockaddr_in sa;
	struct addrinfo hints, *res = NULL;
	uint16_t cm_port;
	char port[16];
	int rc;

	memset(v, 0, sizeof(*v));
	v->o = o;
	v->send_depth = send_depth;
	v->recv_depth = recv_depth;
	v->ec = rdma_create_event_channel();
	if (!v->ec) {
		rc = errno;
		fprintf(stderr, "%s: rdma_create_event_channel: %s\n", o->tool, strerror(rc));
		return rc == ENODEV || rc == ENOENT ? RAW_EXIT_SKIP : RAW_EXIT_FAIL;
	}
	if (!o->host) {
		if (rdma_create_id(v->ec, &v->listen_id, NULL, RDMA_PS_TCP))
			return raw_verbs_fail(v, "rdma_create_id", errno);
		memset(&sa, 0, sizeof(sa));
		sa.sin_family = AF_INET;
		sa.sin_addr.s_addr = htonl(INADDR_ANY);
		if (rdma_bind_addr(v->listen_id, (struct sockaddr *)&sa) || rdma_listen(v->listen_id, 1))
			return raw_verbs_fail(v, "rdma_bind_addr/rdma_listen", errno);
		cm_port = ntohs(rdma_get_src_port(v->listen_id));
		if (raw_oob_send(fd, &cm_port, sizeof(cm_port)))
			return RAW_EXIT_FAIL;
		rc = wait_event(v, RDMA_CM_EVENT_CONNECT_REQUEST, &v->id);
		if (rc)
			return rc;
	} else {
		if (raw_oob_recv(fd, &cm_port, sizeof(cm_port)))
			return RAW_EXIT_FAIL;
		if (rdma_create_id(v->ec, &v->id, NULL, RDMA_PS_TCP))
			return raw_verbs_fail(v, "rdma_create_id", errno);
		memset(&hints, 0, sizeof(hints));
		hints.ai_family = AF_INET;
		hints.ai_socktype = SOCK_STREAM;
		snprintf(port, sizeof(port), "%u", cm_port);
		rc = getaddrinfo(o->host, port, &hints, &res);
		if (rc) {
			fprintf(stderr, "%s: cannot resolve %s: %s\n", o->tool, o->host, gai_strerror(rc));
			return RAW_EXIT_FAIL;
		}
		rc = rdma_resolve_addr(v->id, NULL, res->ai_addr, CM_TIMEOUT_MS);
		freeaddrinfo(res);
		if (rc)
			return raw_verbs_fail(v, "rdma_resolve_addr", errno);
		rc = wait_event(v, RDMA_CM_EVENT_ADDR_RESOLVED, NULL);
		if (rc)
			return rc;
		if (rdma_resolve_route(v->id, CM_TIMEOUT_MS))
			return raw_verbs_fail(v, "rdma_resolve_route", errno);
		rc = wait_event(v, RDMA_CM_EVENT_ROUTE_RESOLVED, NULL);
		if (rc)
			return rc;
	}
	return create_qp(v);
}

int raw_verbs_establish(struct raw_verbs *v)
{
	struct rdma_conn_param p;

	memset(&p, 0, sizeof(p));
	p.responder_resources = 1;
	p.initiator_depth = 1;
	p.retry_count = 7;
	p.rnr_retry_count = 7; /* infinite: a late receive post waits instead of failing */
	if (v->o->host ? rdma_connect(v->id, &p) : rdma_accept(v->id, &p))
		return raw_verbs_fail(v, v->o->host ? "rdma_connect" : "rdma_accept", errno);
	if (wait_event(v, RDMA_CM_EVENT_ESTABLISHED, NULL))
		return RAW_EXIT_FAIL;
	v->established = 1;
	return 0;
}

void raw_verbs_close(struct raw_verbs *v)
{
	if (v->established)
		rdma_disconnect(v->id);
	if (v->qp)
		rdma_destroy_qp(v->id);
	if (v->cq) {
		if (v->unacked_events)
			ibv_ack_cq_events(v->cq, v->unacked_events);
		ibv_destroy_cq(v->cq);
	}
	if (v->channel)
		ibv_destroy_comp_channel(v->channel);
	if (v->pd)
		ibv_dealloc_pd(v->pd);
	if (v->id)
		rdma_destroy_id(v->id);
	if (v->listen_id)
		rdma_destroy_id(v->listen_id);
	if (v->ec)
		rdma_destroy_event_channel(v->ec);
	memset(v, 0, sizeof(*v));
}

int raw_verbs_arm(struct raw_verbs *v)
{
	int rc = ibv_req_notify_cq(v->cq, 0);

	return rc ? raw_verbs_fail(v, "ibv_req_notify_cq", rc) : 0;
}

int raw_verbs_sleep(struct raw_verbs *v, int timeout_ms)
{
	struct pollfd pfd = { .fd = v->channel->fd, .events = POLLIN };
	struct ibv_cq *cq;
	void *ctx;
	int rc;

	do {
		rc = poll(&pfd, 1, timeout_ms);
	} while (rc < 0 && errno == EINTR);
	if (rc < 0)
		return raw_verbs_fail(v, "poll (completion channel)", errno);
	if (rc == 0)
		return 0;
	if (ibv_get_cq_event(v->channel, &cq, &ctx))
		return raw_verbs_fail(v, "ibv_get_cq_event", errno);
	/* Acked in batches: each ack takes a lock in the kernel driver. */
	if (++v->unacked_events >= 64) {
		ibv_ack_cq_events(v->cq, v->unacked_events);
		v->unacked_events = 0;
	}
	return 0;
}

void raw_verbs_print_setup(const struct raw_verbs *v)
{
	struct ibv_port_attr pa;
	const char *link = "?";

	memset(&pa, 0, sizeof(pa));
	if (ibv_query_port(v->id->verbs, v->id->port_num, &pa) == 0)
		link = pa.link_layer == IBV_LINK_LAYER_ETHERNET ? "Ethernet (RoCE)" : "InfiniBand";
	raw_hdr("device", "%s, port %u, link layer %s, MTU %d", ibv_get_device_name(v->id->verbs->device),
		v->id->port_num, link, 128 << pa.active_mtu);
	raw_hdr("connection", "RC QP %u, connected with rdma_cm", v->qp->qp_num);
	raw_hdr("max_msg_sz", "%u", v->max_msg);
	raw_hdr("queues", "send %u, receive %u, one CQ (busy-polled), selective signalling",
		v->send_depth, v->recv_depth);
	if (v->max_inline)
		raw_hdr("inline", "IBV_SEND_INLINE up to %u B", v->max_inline);
	else
		raw_hdr("inline", "never");
}

struct ibv_mr *raw_verbs_reg(struct raw_verbs *v, void *buf, size_t len, int access)
{
	struct ibv_mr *mr = ibv_reg_mr(v->pd, buf, len, access);

	if (!mr)
		raw_verbs_fail(v, "ibv_reg_mr", errno);
	return mr;
}

int raw_verbs_post_recv(struct raw_verbs *v, struct ibv_mr *mr, void *buf, size_t len, uint64_t wr_id)
{
	struct ibv_sge sge = { .addr = (uintptr_t)buf, .length = (uint32_t)len, .lkey = mr ? mr->lkey : 0 };
	struct ibv_recv_wr wr = { .wr_id = wr_id, .sg_list = &sge, .num_sge = len ? 1 : 0 };
	struct ibv_recv_wr *bad;
	int rc = ibv_post_recv(v->qp, &wr, &bad);

	return rc ? raw_verbs_fail(v, "ibv_post_recv", rc) : 0;
}

int raw_verbs_wc_ok(const struct raw_verbs *v, const struct ibv_wc *wc)
{
	static const char *const kind[] = { "?", "send", "receive", "RDMA write" };

	if (wc->status == IBV_WC_SUCCESS)
		return 0;
	fprintf(stderr, "%s: %s completion failed: %s (vendor error 0x%x)\n", v->o->tool,
		kind[RAW_WR_KIND(wc->wr_id)], ibv_wc_status_str(wc->status), wc->vendor_err);
	return RAW_EXIT_FAIL;
}
