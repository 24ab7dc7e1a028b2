/* verbs provider: rdma_cm connection set-up between every pair of ranks, and later connection events. */
#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fabric/verbs/verbs.h"
#include "util/err.h"
#include "util/log.h"

/*
 * Who connects: for every pair of ranks, the lower rank is the active side (rdma_resolve_addr,
 * rdma_resolve_route, rdma_connect); the higher rank accepts on the listener it opened in
 * fab_open (so the listener exists before anyone knows its address). Connection requests carry
 * both ranks and both endpoints' nonces, so a request meant for another process (or an earlier
 * incarnation on the same port) is refused rather than wired to the wrong peer.
 */

#define ADDR_MAGIC 0x42564452u  /* "RDVB" little-endian */
#define CONN_MAGIC 0x43564452u  /* "RDVC" */
#define WIRE_VERSION 1u
#define CONN_PDATA_LEN 32u
#define RESOLVE_TIMEOUT_MS 5000 /* rdma_resolve_addr / rdma_resolve_route (TCG guests are slow) */

enum conn_kind { CONN_REQ = 1, CONN_REP = 2, CONN_REJ = 3 };

enum rej_reason {
	REJ_BAD_MSG = 1,   /* private data is not ours */
	REJ_NOT_READY,     /* connect() is not running here (finished or not called) */
	REJ_BAD_RANK,      /* rank out of range or wrong direction */
	REJ_STALE,         /* nonce mismatch: meant for another endpoint */
	REJ_DUPLICATE,     /* already connected to that rank */
	REJ_RESOURCES,     /* cannot create the QP */
};

static const char *rej_reason_str(uint32_t r)
{
	switch (r) {
	case REJ_BAD_MSG: return "malformed connection request";
	case REJ_NOT_READY: return "endpoint is not accepting connections (not inside fab_connect)";
	case REJ_BAD_RANK: return "rank out of range or wrong connection direction";
	case REJ_STALE: return "request meant for another endpoint (nonce mismatch)";
	case REJ_DUPLICATE: return "already connected to that rank";
	case REJ_RESOURCES: return "cannot create a queue pair";
	default: return "unknown reason";
	}
}

/* ---- little-endian helpers ---- */
static void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}
static void put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}
static void put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}
static uint16_t get16(const uint8_t *p)
{
	return (uint16_t)(p[0] | (p[1] << 8));
}
static uint32_t get32(const uint8_t *p)
{
	uint32_t v = 0;

	for (int i = 3; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}
static uint64_t get64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 7; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}

/*
 * Address layout (VERBS_ADDR_LEN = 40 bytes, little-endian):
 *   0 magic u32 | 4 version u16 | 6 family u8 (4 or 6) | 7 zero | 8 rdma_cm port u16 | 10 zero u16
 *  12 IP address (16 bytes; IPv4 in the first 4) | 28 rank u32 | 32 nonce u64
 */
void verbs_addr_encode(const struct verbs_ep *ep, uint8_t *out)
{
	memset(out, 0, VERBS_ADDR_LEN);
	put32(out, ADDR_MAGIC);
	put16(out + 4, WIRE_VERSION);
	if (ep->sel.addr.ss_family == AF_INET) {
		out[6] = 4;
		memcpy(out + 12, &((const struct sockaddr_in *)&ep->sel.addr)->sin_addr, 4);
	} else {
		out[6] = 6;
		memcpy(out + 12, &((const struct sockaddr_in6 *)&ep->sel.addr)->sin6_addr, 16);
	}
	put16(out + 8, ep->port);
	put32(out + 28, ep->rank);
	put64(out + 32, ep->nonce);
}

static int addr_decode(const struct verbs_ep *ep, uint32_t i, const uint8_t *a, size_t len,
		       struct verbs_peer *p)
{
	uint16_t port;

	if (!a || len < VERBS_ADDR_LEN || get32(a) != ADDR_MAGIC)
		return err_set(RDAG_EINVAL, "verbs: address of rank %u is not a verbs address (%zu bytes)",
			       i, a ? len : 0);
	if (get16(a + 4) != WIRE_VERSION)
		return err_set(RDAG_EINVAL, "verbs: address of rank %u has version %u, expected %u", i,
			       get16(a + 4), WIRE_VERSION);
	if (get32(a + 28) != i)
		return err_set(RDAG_EINVAL, "verbs: address given for rank %u belongs to rank %u", i,
			       get32(a + 28));
	port = get16(a + 8);
	memset(&p->sa, 0, sizeof(p->sa));
	if (a[6] == 4) {
		struct sockaddr_in *sin = (struct sockaddr_in *)&p->sa;

		sin->sin_family = AF_INET;
		sin->sin_port = htons(port);
		memcpy(&sin->sin_addr, a + 12, 4);
		inet_ntop(AF_INET, &sin->sin_addr, p->addr_str, sizeof(p->addr_str));
	} else if (a[6] == 6) {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&p->sa;

		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons(port);
		memcpy(&sin6->sin6_addr, a + 12, 16);
		if (ep->sel.addr.ss_family == AF_INET6)
			sin6->sin6_scope_id = ((const struct sockaddr_in6 *)&ep->sel.addr)->sin6_scope_id;
		inet_ntop(AF_INET6, &sin6->sin6_addr, p->addr_str, sizeof(p->addr_str));
	} else {
		return err_set(RDAG_EINVAL, "verbs: address of rank %u has address family %u", i, a[6]);
	}
	snprintf(p->addr_str + strlen(p->addr_str), sizeof(p->addr_str) - strlen(p->addr_str), ":%u",
		 port);
	p->nonce = get64(a + 32);
	return 0;
}

static void pdata_build(uint8_t *pd, enum conn_kind kind, uint32_t from, uint32_t to, uint64_t from_nonce,
			uint64_t to_nonce)
{
	memset(pd, 0, CONN_PDATA_LEN);
	put32(pd, CONN_MAGIC);
	put16(pd + 4, WIRE_VERSION);
	put16(pd + 6, (uint16_t)kind);
	put32(pd + 8, from);
	put32(pd + 12, to);
	put64(pd + 16, from_nonce);
	put64(pd + 24, to_nonce);
}

/* Parsed private data; 0 if it is ours. */
struct pdata {
	uint32_t kind, from, to;
	uint64_t from_nonce, to_nonce;
};

static int pdata_parse(const void *data, size_t len, struct pdata *out)
{
	const uint8_t *p = data;

	if (!p || len < CONN_PDATA_LEN || get32(p) != CONN_MAGIC || get16(p + 4) != WIRE_VERSION)
		return -1;
	out->kind = get16(p + 6);
	out->from = get32(p + 8);
	out->to = get32(p + 12);
	out->from_nonce = get64(p + 16);
	out->to_nonce = get64(p + 24);
	return 0;
}

static void conn_param(const struct verbs_ep *ep, struct rdma_conn_param *cp, const uint8_t *pd)
{
	memset(cp, 0, sizeof(*cp));
	cp->private_data = pd;
	cp->private_data_len = CONN_PDATA_LEN;
	/* Only RDMA WRITE and SEND are used; one READ credit each way is kept for later use. */
	cp->responder_resources = ep->sel.dev_attr.max_qp_rd_atom > 0 ? 1 : 0;
	cp->initiator_depth = ep->sel.dev_attr.max_qp_init_rd_atom > 0 ? 1 : 0;
	cp->retry_count = 7;
	/* Infinite RNR retry: the core's credits keep receives posted, so an RNR NAK means "slow
	 * receiver", not "dead peer" (a dead peer disconnects or times out on transport retries). */
	cp->rnr_retry_count = 7;
}

/* ---- qp_num -> peer map ---- */
static uint32_t qphash(const struct verbs_ep *ep, uint32_t qp_num)
{
	return (qp_num * 0x9E3779B1u) & ep->qpmap_mask;
}

void verbs_qpmap_rebuild(struct verbs_ep *ep)
{
	if (!ep->qpmap_num)
		return;
	for (uint32_t i = 0; i <= ep->qpmap_mask; i++)
		ep->qpmap_num[i] = UINT32_MAX;
	for (uint32_t r = 0; r < ep->npeers; r++) {
		struct verbs_peer *p = &ep->peers[r];
		uint32_t h;

		if (!p->qp)
			continue;
		h = qphash(ep, p->qp_num);
		while (ep->qpmap_num[h] != UINT32_MAX)
			h = (h + 1) & ep->qpmap_mask;
		ep->qpmap_num[h] = p->qp_num;
		ep->qpmap_peer[h] = r;
	}
}

uint32_t verbs_qpmap_find(const struct verbs_ep *ep, uint32_t qp_num)
{
	uint32_t h;

	if (!ep->qpmap_num)
		return FAB_PEER_UNKNOWN;
	for (h = qphash(ep, qp_num); ep->qpmap_num[h] != UINT32_MAX; h = (h + 1) & ep->qpmap_mask)
		if (ep->qpmap_num[h] == qp_num)
			return ep->qpmap_peer[h];
	return FAB_PEER_UNKNOWN;
}

int verbs_peer_sq_init(struct verbs_ep *ep, struct verbs_peer *p)
{
	p->slots = calloc(ep->sq_depth, sizeof(*p->slots));
	p->sigs = calloc(ep->sq_depth, sizeof(*p->sigs));
	if (!p->slots || !p->sigs)
		return err_set(RDAG_ENOMEM, "verbs: out of memory for send-queue accounting");
	return 0;
}

static void reset_sq(struct verbs_peer *p)
{
	p->sq_used = 0;
	p->unsignaled = 0;
	p->slot_head = 0;
	p->sig_head = 0;
	p->sig_count = 0;
}

void verbs_peer_teardown(struct verbs_ep *ep, struct verbs_peer *p)
{
	int had_qp = p->qp != NULL;

	if (p->id) {
		if (p->state == VP_CONNECTED)
			rdma_disconnect(p->id);
		if (p->id->qp)
			rdma_destroy_qp(p->id);
		rdma_destroy_id(p->id);
	}
	p->id = NULL;
	p->qp = NULL;
	p->qp_num = 0;
	reset_sq(p);
	if (had_qp)
		verbs_qpmap_rebuild(ep);
}

/* ---- connection state machine ---- */
static const char *state_str(const struct verbs_peer *p)
{
	switch (p->state) {
	case VP_IDLE: return p->active ? "not started" : "no connection request arrived from it";
	case VP_ADDR: return "resolving its address";
	case VP_ROUTE: return "resolving the route to it";
	case VP_CONNECTING: return "connection request sent, no answer";
	case VP_RETRY: return "waiting to retry";
	case VP_ACCEPTING: return "accepted its request, waiting for the connection to be established";
	case VP_CONNECTED: return "connected";
	case VP_FAILED: return "failed";
	case VP_DISCONNECTED: return "disconnected";
	}
	return "?";
}

static struct verbs_peer *peer_of(struct verbs_ep *ep, struct rdma_cm_id *id)
{
	struct verbs_peer *p;

	if (!id || id == ep->listen_id || !ep->peers || id->context == (void *)ep)
		return NULL;
	p = id->context;
	if (p < ep->peers || p >= ep->peers + ep->npeers || p->id != id)
		return NULL;
	return p;
}

static void schedule_retry(struct verbs_peer *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void schedule_retry(struct verbs_peer *p, const char *fmt, ...)
{
	va_list ap;
	int64_t backoff = 50LL << (p->attempts < 4 ? p->attempts : 4);

	va_start(ap, fmt);
	vsnprintf(p->why, sizeof(p->why), fmt, ap);
	va_end(ap);
	LOG_DEBUG("verbs: rank %u -> %u: %s; retrying in %lld ms", p->ep->rank, p->rank, p->why,
		  (long long)backoff);
	p->state = VP_RETRY;
	p->retry_at_ms = verbs_now_ms() + backoff;
}

static void fail_peer(struct verbs_peer *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail_peer(struct verbs_peer *p, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(p->why, sizeof(p->why), fmt, ap);
	va_end(ap);
	p->state = VP_FAILED;
}

/* Starts (or restarts) the active side towards p: rdma_resolve_addr. */
static void start_active(struct verbs_ep *ep, struct verbs_peer *p)
{
	verbs_peer_teardown(ep, p);
	p->attempts++;
	if (rdma_create_id(ep->cm_ch, &p->id, p, RDMA_PS_TCP) != 0) {
		p->id = NULL;
		schedule_retry(p, "rdma_create_id: %s", strerror(errno));
		return;
	}
	if (rdma_resolve_addr(p->id, (struct sockaddr *)&ep->sel.addr, (struct sockaddr *)&p->sa,
			      RESOLVE_TIMEOUT_MS) != 0) {
		schedule_retry(p, "rdma_resolve_addr(%s): %s", p->addr_str, strerror(errno));
		return;
	}
	p->state = VP_ADDR;
}

static int create_qp(struct verbs_ep *ep, struct verbs_peer *p, struct rdma_cm_id *id)
{
	struct ibv_qp_init_attr qa;

	if (id->verbs != ep->ctx) {
		snprintf(p->why, sizeof(p->why), "the route to it goes through device %s, not %s",
			 id->verbs ? ibv_get_device_name(id->verbs->device) : "(none)", ep->sel.dev_name);
		return -1;
	}
	verbs_qp_init_attr(ep, &qa);
	if (rdma_create_qp(id, ep->pd, &qa) != 0) {
		snprintf(p->why, sizeof(p->why), "rdma_create_qp: %s", strerror(errno));
		return -1;
	}
	p->qp = id->qp;
	p->qp_num = id->qp->qp_num;
	/* Mapped now: on the accepting side messages may land before ESTABLISHED is handled. */
	verbs_qpmap_rebuild(ep);
	return 0;
}

static void established(struct verbs_ep *ep, struct verbs_peer *p)
{
	struct ibv_qp_attr qattr;
	struct ibv_qp_init_attr qinit;

	p->state = VP_CONNECTED;
	p->why[0] = '\0';
	reset_sq(p);
	verbs_qpmap_rebuild(ep);
	if (log_level() >= RDAG_LOG_DEBUG &&
	    ibv_query_qp(p->qp, &qattr, IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_TIMEOUT, &qinit) == 0)
		LOG_DEBUG("verbs: rank %u <-> %u connected (%s), qp %u -> %u, sgid index %u, mtu %d, ack "
			  "timeout %u",
			  ep->rank, p->rank, p->addr_str, p->qp_num, qattr.dest_qp_num,
			  qattr.ah_attr.grh.sgid_index, 128 << qattr.path_mtu, qattr.timeout);
	if (p->id && p->id->qp && ibv_query_qp(p->qp, &qattr, IBV_QP_AV, &qinit) == 0 &&
	    qattr.ah_attr.is_global && (int)qattr.ah_attr.grh.sgid_index != ep->sel.gid_index)
		LOG_WARN("verbs: connection to rank %u uses GID index %u, not the selected %d", p->rank,
			 qattr.ah_attr.grh.sgid_index, ep->sel.gid_index);
}

static void reject(struct rdma_cm_id *id, const struct verbs_ep *ep, uint32_t from, uint32_t reason)
{
	uint8_t pd[CONN_PDATA_LEN];

	pdata_build(pd, CONN_REJ, ep->rank, from, ep->nonce, reason);
	if (rdma_reject(id, pd, CONN_PDATA_LEN) != 0)
		LOG_DEBUG("verbs: rdma_reject: %s", strerror(errno));
}

/* What the event loop must do after acknowledging an event. */
struct after_ack {
	struct rdma_cm_id *destroy;  /* a refused request's id */
	struct verbs_peer *teardown; /* a peer whose QP and id go */
};

/* Passive side: a connection request on the listener. */
static void on_request(struct verbs_ep *ep, struct rdma_cm_event *ev, struct after_ack *aa)
{
	struct rdma_cm_id *id = ev->id;
	struct rdma_conn_param cp;
	struct verbs_peer *p;
	struct pdata in;
	uint8_t pd[CONN_PDATA_LEN];
	uint32_t reason = 0;

	if (pdata_parse(ev->param.conn.private_data, ev->param.conn.private_data_len, &in) != 0 ||
	    in.kind != CONN_REQ) {
		LOG_WARN("verbs: rank %u: refused a connection request that is not rdag's", ep->rank);
		reject(id, ep, UINT32_MAX, REJ_BAD_MSG);
		aa->destroy = id;
		return;
	}
	if (!ep->connecting)
		reason = REJ_NOT_READY;
	else if (in.from >= ep->npeers || in.from >= ep->rank || in.to != ep->rank)
		reason = REJ_BAD_RANK;
	else if (in.to_nonce != ep->nonce || in.from_nonce != ep->peers[in.from].nonce)
		reason = REJ_STALE;
	else if (ep->peers[in.from].state == VP_CONNECTED)
		reason = REJ_DUPLICATE;
	if (reason) {
		LOG_WARN("verbs: rank %u: refused connection request from rank %u: %s", ep->rank, in.from,
			 rej_reason_str(reason));
		reject(id, ep, in.from, reason);
		aa->destroy = id;
		return;
	}
	p = &ep->peers[in.from];
	if (p->id) {
		/* The peer gave up on an earlier attempt and started over. */
		LOG_DEBUG("verbs: rank %u: rank %u connects again; dropping the earlier attempt", ep->rank,
			  p->rank);
		verbs_peer_teardown(ep, p);
	}
	if (create_qp(ep, p, id) != 0) {
		LOG_WARN("verbs: rank %u: cannot accept rank %u: %s", ep->rank, p->rank, p->why);
		reject(id, ep, in.from, REJ_RESOURCES);
		aa->destroy = id;
		return;
	}
	id->context = p;
	p->id = id;
	pdata_build(pd, CONN_REP, ep->rank, p->rank, ep->nonce, p->nonce);
	conn_param(ep, &cp, pd);
	if (rdma_accept(id, &cp) != 0) {
		snprintf(p->why, sizeof(p->why), "rdma_accept: %s", strerror(errno));
		LOG_WARN("verbs: rank %u: cannot accept rank %u: %s", ep->rank, p->rank, p->why);
		p->state = VP_IDLE;
		aa->teardown = p;
		return;
	}
	p->state = VP_ACCEPTING;
}

static void on_event(struct verbs_ep *ep, struct rdma_cm_event *ev, struct after_ack *aa)
{
	struct verbs_peer *p;
	struct rdma_conn_param cp;
	uint8_t pd[CONN_PDATA_LEN];
	struct pdata in;

	aa->destroy = NULL;
	aa->teardown = NULL;
	if (ev->event == RDMA_CM_EVENT_CONNECT_REQUEST) {
		on_request(ep, ev, aa);
		return;
	}
	if (ev->event == RDMA_CM_EVENT_DEVICE_REMOVAL) {
		LOG_ERROR("verbs: device %s was removed", ep->sel.dev_name);
		for (uint32_t i = 0; ep->peers && i < ep->npeers; i++)
			if (!ep->peers[i].self)
				fail_peer(&ep->peers[i], "device %s was removed", ep->sel.dev_name);
		return;
	}
	p = peer_of(ep, ev->id);
	if (!p) {
		LOG_DEBUG("verbs: rank %u: ignoring rdma_cm event %s on an id we do not track", ep->rank,
			  rdma_event_str(ev->event));
		return;
	}
	switch (ev->event) {
	case RDMA_CM_EVENT_ADDR_RESOLVED:
		if (rdma_resolve_route(p->id, RESOLVE_TIMEOUT_MS) != 0) {
			schedule_retry(p, "rdma_resolve_route(%s): %s", p->addr_str, strerror(errno));
			aa->teardown = p;
		} else {
			p->state = VP_ROUTE;
		}
		break;
	case RDMA_CM_EVENT_ROUTE_RESOLVED:
		if (create_qp(ep, p, p->id) != 0) {
			fail_peer(p, "%s", p->why);
			aa->teardown = p;
			break;
		}
		pdata_build(pd, CONN_REQ, ep->rank, p->rank, ep->nonce, p->nonce);
		conn_param(ep, &cp, pd);
		if (rdma_connect(p->id, &cp) != 0) {
			schedule_retry(p, "rdma_connect(%s): %s", p->addr_str, strerror(errno));
			aa->teardown = p;
		} else {
			p->state = VP_CONNECTING;
		}
		break;
	case RDMA_CM_EVENT_ESTABLISHED:
		if (p->active) {
			if (pdata_parse(ev->param.conn.private_data, ev->param.conn.private_data_len, &in) != 0 ||
			    in.kind != CONN_REP || in.from != p->rank || in.to != ep->rank ||
			    in.from_nonce != p->nonce || in.to_nonce != ep->nonce) {
				fail_peer(p, "the process at %s answered, but it is not rank %u of this job",
					  p->addr_str, p->rank);
				aa->teardown = p;
				break;
			}
		}
		established(ep, p);
		break;
	case RDMA_CM_EVENT_REJECTED:
		if (pdata_parse(ev->param.conn.private_data, ev->param.conn.private_data_len, &in) == 0 &&
		    in.kind == CONN_REJ) {
			fail_peer(p, "rank %u refused the connection: %s", p->rank,
				  rej_reason_str((uint32_t)in.to_nonce));
		} else {
			schedule_retry(p, "connection to %s rejected (reason %d; no listener there yet?)",
				       p->addr_str, ev->status);
		}
		aa->teardown = p;
		break;
	case RDMA_CM_EVENT_ADDR_ERROR:
	case RDMA_CM_EVENT_ROUTE_ERROR:
	case RDMA_CM_EVENT_UNREACHABLE:
	case RDMA_CM_EVENT_CONNECT_ERROR:
		if (p->active) {
			schedule_retry(p, "%s for %s (status %d: %s)", rdma_event_str(ev->event), p->addr_str,
				       ev->status, strerror(ev->status < 0 ? -ev->status : ev->status));
		} else {
			/* Passive side: the peer will start over. */
			snprintf(p->why, sizeof(p->why), "%s while accepting (status %d)",
				 rdma_event_str(ev->event), ev->status);
			p->state = VP_IDLE;
		}
		aa->teardown = p;
		break;
	case RDMA_CM_EVENT_DISCONNECTED:
		if (p->state == VP_CONNECTED) {
			/* After our own failure (and disconnect) keep the first reason. */
			if (!p->qp_error) {
				snprintf(p->why, sizeof(p->why), "rank %u disconnected (closed or died)",
					 p->rank);
				LOG_INFO("verbs: rank %u: %s", ep->rank, p->why);
				p->qp_error = 1;
				p->first_code = RDAG_EPEER_DEAD;
			}
			p->state = VP_DISCONNECTED;
			/* Moves our QP to error so its outstanding work requests complete (flushed). */
			rdma_disconnect(p->id);
		} else if (p->active && p->state != VP_DISCONNECTED && p->state != VP_FAILED) {
			schedule_retry(p, "disconnected during set-up");
			aa->teardown = p;
		} else if (!p->active && p->state == VP_ACCEPTING) {
			p->state = VP_IDLE;
			aa->teardown = p;
		}
		break;
	case RDMA_CM_EVENT_ADDR_CHANGE:
		LOG_WARN("verbs: rank %u: address of the connection to rank %u changed", ep->rank, p->rank);
		break;
	default:
		LOG_DEBUG("verbs: rank %u: rdma_cm event %s for rank %u", ep->rank, rdma_event_str(ev->event),
			  p->rank);
		break;
	}
}

/* Handles every queued rdma_cm event; returns how many. */
static int drain(struct verbs_ep *ep)
{
	struct rdma_cm_event *ev;
	int n = 0;

	while (rdma_get_cm_event(ep->cm_ch, &ev) == 0) {
		struct after_ack aa;

		LOG_TRACE("verbs: rank %u: rdma_cm %s (status %d)", ep->rank, rdma_event_str(ev->event),
			  ev->status);
		on_event(ep, ev, &aa);
		rdma_ack_cm_event(ev);
		if (aa.destroy)
			rdma_destroy_id(aa.destroy);
		if (aa.teardown) {
			enum verbs_peer_state keep = aa.teardown->state;

			verbs_peer_teardown(ep, aa.teardown);
			aa.teardown->state = keep;
		}
		n++;
	}
	return n;
}

void verbs_cm_drain(struct verbs_ep *ep)
{
	if (ep->cm_ch)
		drain(ep);
}

static int timeout_error(struct verbs_ep *ep, int timeout_ms)
{
	char msg[900];
	size_t used;
	uint32_t missing = 0;

	for (uint32_t i = 0; i < ep->npeers; i++)
		if (!ep->peers[i].self && ep->peers[i].state != VP_CONNECTED)
			missing++;
	used = (size_t)snprintf(msg, sizeof(msg), "verbs: rank %u: timed out after %d ms, %u of %u peer(s) "
						  "not connected:",
				ep->rank, timeout_ms, missing, ep->npeers - 1);
	for (uint32_t i = 0; i < ep->npeers && used < sizeof(msg); i++) {
		const struct verbs_peer *p = &ep->peers[i];

		if (p->self || p->state == VP_CONNECTED)
			continue;
		used += (size_t)snprintf(msg + used, sizeof(msg) - used, "%s rank %u (%s, %s): %s%s%s%s",
					 used && msg[used - 1] != ':' ? ";" : "", p->rank, p->addr_str,
					 p->active ? "we connect" : "it connects", state_str(p),
					 p->why[0] ? " [last: " : "", p->why, p->why[0] ? "]" : "");
	}
	return err_set(RDAG_ETIMEDOUT, "%s", msg);
}

int verbs_connect(struct fab_ep *fep, uint32_t npeers, const void *const *addrs, const size_t *lens,
		  int timeout_ms)
{
	struct verbs_ep *ep = (struct verbs_ep *)fep;
	int64_t deadline;
	uint32_t size;
	int rc = 0;

	if (ep->peers)
		return err_set(RDAG_EINVAL, "verbs: fab_connect called twice on one endpoint");
	if (npeers == 0 || ep->rank >= npeers)
		return err_set(RDAG_EINVAL, "verbs: rank %u is not among %u peers", ep->rank, npeers);
	if (npeers > ep->world_sized)
		return err_set(RDAG_EINVAL, "verbs: %u peers, but the endpoint was opened for world_size %u",
			       npeers, ep->world_sized);
	if (!addrs || !lens)
		return err_set(RDAG_EINVAL, "verbs: fab_connect without addresses");
	ep->peers = calloc(npeers, sizeof(*ep->peers));
	for (size = 8; size < 2 * npeers; size *= 2)
		;
	ep->qpmap_num = calloc(size, sizeof(uint32_t));
	ep->qpmap_peer = calloc(size, sizeof(uint32_t));
	if (!ep->peers || !ep->qpmap_num || !ep->qpmap_peer) {
		free(ep->peers);
		ep->peers = NULL;
		return err_set(RDAG_ENOMEM, "verbs: out of memory for %u peers", npeers);
	}
	ep->qpmap_mask = size - 1;
	ep->npeers = npeers;
	verbs_qpmap_rebuild(ep);
	for (uint32_t i = 0; i < npeers; i++) {
		struct verbs_peer *p = &ep->peers[i];

		p->ep = ep;
		p->rank = i;
		if (i == ep->rank) {
			p->self = 1;
			continue;
		}
		p->active = ep->rank < i;
		rc = addr_decode(ep, i, addrs[i], lens[i], p);
		if (rc)
			return rc;
		rc = verbs_peer_sq_init(ep, p);
		if (rc)
			return rc;
	}

	deadline = verbs_now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
	ep->connecting = 1;
	for (uint32_t i = ep->rank + 1; i < npeers; i++)
		start_active(ep, &ep->peers[i]);
	for (;;) {
		uint32_t done = 0;
		int64_t now = verbs_now_ms(), wait;
		struct pollfd pfd;
		const struct verbs_peer *bad = NULL;

		for (uint32_t i = 0; i < npeers; i++) {
			const struct verbs_peer *p = &ep->peers[i];

			if (p->self || p->state == VP_CONNECTED)
				done++;
			else if ((p->state == VP_FAILED || p->state == VP_DISCONNECTED) && !bad)
				bad = p;
		}
		if (bad) {
			rc = err_set(RDAG_ECONNREFUSED, "verbs: rank %u: cannot connect to rank %u (%s): %s",
				     ep->rank, bad->rank, bad->addr_str, bad->why);
			break;
		}
		if (done == npeers)
			break;
		if (now >= deadline) {
			rc = timeout_error(ep, timeout_ms);
			break;
		}
		wait = deadline - now;
		for (uint32_t i = 0; i < npeers; i++) {
			struct verbs_peer *p = &ep->peers[i];

			if (p->state != VP_RETRY)
				continue;
			if (p->retry_at_ms <= now)
				start_active(ep, p);
			else if (p->retry_at_ms - now < wait)
				wait = p->retry_at_ms - now;
		}
		if (wait > 1000)
			wait = 1000;
		pfd.fd = ep->cm_ch->fd;
		pfd.events = POLLIN;
		pfd.revents = 0;
		if (poll(&pfd, 1, (int)wait) < 0 && errno != EINTR) {
			rc = err_set(RDAG_EIO, "verbs: poll(rdma_cm channel): %s", strerror(errno));
			break;
		}
		drain(ep);
	}
	ep->connecting = 0;
	if (rc == 0) {
		ep->connected = 1;
		LOG_INFO("verbs: rank %u connected to %u peer(s) on %s", ep->rank, npeers - 1,
			 ep->sel.dev_name);
	}
	return rc;
}
