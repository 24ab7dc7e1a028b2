/* Transport receive side: the shared receive pool, validation of arrivals, rendezvous answers, delivery, release. */
#include <endian.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xport/xport_int.h"

/*
 * Every message lands in a buffer of one receive pool shared by all peers (receives are posted
 * per endpoint). A message from peer p is decoded and checked completely before anything else:
 * its slots must lie in the arena granted to p, inside the part of the ring p may be using, and
 * must not overlap a slot still in use; otherwise it is refused with an EXCEPTION reply and never
 * delivered. Rendezvous tensors get a destination (allocated, registered through the rcache) and
 * an RDV_ANSWER; the message is parked until every RDV_DONE has come. Then it is delivered: the
 * receiver owns the buffer, the slots and the rendezvous buffers until xport_release().
 */

void xport_post_receives(struct xport *x)
{
	while (x->repost && !x->closing) {
		struct xp_recv *r = x->repost;
		int rc = fab_post_recv(x->ep, r->buf, x->o.msg_max, r->desc,
				       (void *)((uintptr_t)r | XP_CTX_RECV));

		if (rc) {
			if (rc != RDAG_EAGAIN)
				LOG_ERROR("xport: posting a receive buffer: %s", rdag_last_error());
			return; /* retried at the next progress */
		}
		x->repost = r->next;
		r->next = NULL;
		r->state = XRS_POSTED;
		x->posted++;
	}
}

static void requeue(struct xport *x, struct xp_recv *r)
{
	r->state = XRS_IDLE;
	r->next = x->repost;
	x->repost = r;
}

static void rdv_unlink(struct xp_peer *p, struct xp_rdv_in *rec)
{
	if (!rec->pending)
		return;
	for (struct xp_rdv_in **pp = &p->rdv_in; *pp; pp = &(*pp)->next) {
		if (*pp == rec) {
			*pp = rec->next;
			break;
		}
	}
	rec->pending = 0;
	rec->next = NULL;
}

/*
 * Default rendezvous buffers (no rdv_alloc given): sizes rounded up to pages, and freed ones of
 * up to o.rdv_cache bytes in all kept for the next tensor of the same size. A gradient of a
 * given shape comes every pass: reusing its buffer saves the page faults of fresh memory and
 * a registration (the registration cache still holds it). Under xp_lock.
 */
static size_t rdv_cap(uint64_t len)
{
	return ((size_t)len + 4095) & ~(size_t)4095;
}

static void *rdv_buf_alloc(struct xport *x, uint64_t len)
{
	size_t cap = rdv_cap(len);
	void *ptr = NULL;

	for (unsigned i = 0; i < x->nrdvc; i++) {
		if (x->rdvc[i].cap == cap) {
			ptr = x->rdvc[i].ptr;
			x->rdvc_bytes -= cap;
			x->rdvc[i] = x->rdvc[--x->nrdvc];
			return ptr;
		}
	}
	if (posix_memalign(&ptr, 4096, cap ? cap : 4096))
		return NULL;
	return ptr;
}

static void rdv_buf_free(struct xport *x, void *ptr, uint64_t len)
{
	size_t cap = rdv_cap(len);

	if (x->o.rdv_free) {
		x->o.rdv_free(x->o.rdv_arg, ptr, (size_t)len);
		return;
	}
	if (x->o.rdv_alloc)
		return;
	if (!x->closing && cap && x->rdvc_bytes + cap <= x->o.rdv_cache) {
		if (x->nrdvc == XP_RDV_CACHE_SLOTS) {
			/* full: the oldest goes */
			x->rdvc_bytes -= x->rdvc[0].cap;
			free(x->rdvc[0].ptr);
			x->rdvc[0] = x->rdvc[--x->nrdvc];
		}
		x->rdvc[x->nrdvc].ptr = ptr;
		x->rdvc[x->nrdvc].cap = cap;
		x->nrdvc++;
		x->rdvc_bytes += cap;
		return;
	}
	free(ptr);
}

void xport_rdv_cache_drain(struct xport *x)
{
	while (x->nrdvc) {
		x->nrdvc--;
		free(x->rdvc[x->nrdvc].ptr);
	}
	x->rdvc_bytes = 0;
}

/* Gives back what a message's tensors hold of p's: arena slots, rendezvous buffers (*rdv emptied). */
static void tensors_free(struct xport *x, struct xp_peer *p, const struct xport_rx *rx,
			 struct xp_rdv_in **rdv)
{
	for (uint32_t i = 0; p && i < rx->ntensors; i++) {
		const struct wire_tensor *d = &rx->tensors[i].desc;

		if (d->loc == WIRE_LOC_SLOT)
			xport_arena_release(&p->ain, d->u.slot.offset, d->u.slot.length);
	}
	while (*rdv) {
		struct xp_rdv_in *rec = *rdv;

		*rdv = rec->mnext;
		if (p)
			rdv_unlink(p, rec);
		if (rec->reg)
			rcache_release(x->rc, rec->reg);
		if (rec->ptr)
			rdv_buf_free(x, rec->ptr, rec->len);
		free(rec);
	}
}

void xport_recv_free(struct xport *x, struct xp_recv *r)
{
	struct xp_peer *p = r->peer;

	tensors_free(x, p, &r->rx, &r->rdv);
	if (r->rx.tensors && r->rx.tensors != r->t_small)
		free(r->rx.tensors);
	r->rx.tensors = NULL;
	r->rx.ntensors = 0;
	r->rdv_left = 0;
	if (p && r->counted) {
		p->held--;
		if (p->state != XP_PEER_DEAD) {
			p->owed++;
			if (p->owed >= x->credit_thresh || p->ain.tail - p->ain.reported >= p->ain.size / 8)
				xport_dirty(x, p);
		}
	}
	r->counted = 0;
	r->peer = NULL;
	requeue(x, r);
	xport_post_receives(x);
}

static void deliver(struct xport *x, struct xp_recv *r)
{
	r->state = XRS_DELIVERING;
	r->next = NULL;
	if (x->deliver_tail)
		x->deliver_tail->next = r;
	else
		x->deliver_head = r;
	x->deliver_tail = r;
	x->st.msgs_recv++;
}

/* Refuses r (from p, counted): queues an EXCEPTION reply and frees the buffer. */
static void refuse(struct xport *x, struct xp_peer *p, struct xp_recv *r, uint64_t req_id, int code,
		   const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static void refuse(struct xport *x, struct xp_peer *p, struct xp_recv *r, uint64_t req_id, int code,
		   const char *fmt, ...)
{
	char text[XP_EXC_TEXT];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	x->st.refused++;
	LOG_WARN("xport: refused a message from worker %u (%s): %s", p->rank, p->name, text);
	if (p->nrefusals < XP_REFUSALS) {
		struct xp_refusal *f = &p->refusals[p->nrefusals++];

		f->req_id = req_id;
		f->code = code;
		snprintf(f->text, sizeof(f->text), "%s", text);
		xport_dirty(x, p);
	} else {
		LOG_WARN("xport: too many refusals queued for worker %u: no reply for this one", p->rank);
	}
	xport_recv_free(x, r);
}

int xport_msg_tensors(const struct wire_msg *m, struct wire_msg *inner, struct wire_tensor_list *out)
{
	const struct wire_msg *cur = m;

	for (unsigned d = 0;; d++) {
		switch (cur->kind) {
		case WIRE_RPC_CALL:
		case WIRE_RREF_CALL:
			*out = cur->u.call.tensors;
			return 0;
		case WIRE_RPC_RESP:
		case WIRE_RREF_FETCH_RESP:
			*out = cur->u.resp.tensors;
			return 0;
		case WIRE_BACKWARD_AUTOGRAD_REQ:
			*out = cur->u.grad.tensors;
			return 0;
		default:
			break;
		}
		if (!wire_kind_wraps(cur->kind) || d > WIRE_MAX_DEPTH) {
			memset(out, 0, sizeof(*out));
			return 0;
		}
		{
			int rc = wire_decode_inner(cur, &inner[d]);

			if (rc)
				return rc;
		}
		cur = &inner[d];
	}
}

/* A rendezvous tensor of r: destination, registration, answer due. */
static int rdv_prepare(struct xport *x, struct xp_peer *p, struct xp_recv *r, uint32_t index,
		       const struct wire_tensor *t, void **data, char *why, size_t whylen)
{
	struct xp_rdv_in *rec = calloc(1, sizeof(*rec));
	void *ptr = NULL;
	int rc;

	if (!rec) {
		snprintf(why, whylen, "no memory for a rendezvous");
		return RDAG_ENOMEM;
	}
	if (x->o.rdv_alloc)
		ptr = x->o.rdv_alloc(x->o.rdv_arg, p->rank, index, t);
	else
		ptr = rdv_buf_alloc(x, t->nbytes);
	if (!ptr) {
		free(rec);
		snprintf(why, whylen, "no memory for tensor %u's %llu bytes", index,
			 (unsigned long long)t->nbytes);
		return RDAG_ENOMEM;
	}
	rec->r = r;
	rec->index = index;
	rec->ptr = ptr;
	rec->len = t->nbytes;
	rc = rcache_lookup(x->rc, ptr, (size_t)t->nbytes, FAB_ACCESS_REMOTE_WRITE, &rec->reg);
	if (rc) {
		snprintf(why, whylen, "registering tensor %u's destination failed: %s", index,
			 rdag_last_error());
		rec->reg = NULL;
	}
	/* On the message's list even on failure, so that freeing the message frees it. */
	rec->mnext = r->rdv;
	r->rdv = rec;
	if (rc)
		return rc;
	rec->token = ++p->next_token;
	rec->state = XRR_ANSWER_DUE;
	rec->pending = 1;
	rec->next = p->rdv_in;
	p->rdv_in = rec;
	r->rdv_left++;
	*data = ptr;
	return 0;
}

/* A message of a user kind (or an EXCEPTION): place its tensors, then deliver or park it. */
static void user_msg(struct xport *x, struct xp_peer *p, struct xp_recv *r)
{
	struct wire_msg inner[WIRE_MAX_DEPTH + 1];
	struct wire_tensor_list tl;
	struct wire_tensor_iter it;
	struct xport_rx_tensor *ts;
	uint64_t req_id = r->rx.msg.env.req_id;
	char why[XP_EXC_TEXT - 64];
	uint32_t n, i;
	int rc;

	rc = xport_msg_tensors(&r->rx.msg, inner, &tl);
	if (rc) {
		refuse(x, p, r, req_id, rc, "worker %u: wrapped message does not decode: %s", x->rank,
		       rdag_last_error());
		return;
	}
	n = tl.count;
	ts = n <= XP_RX_SMALL ? r->t_small : calloc(n, sizeof(*ts));
	if (!ts) {
		refuse(x, p, r, req_id, RDAG_ENOMEM, "worker %u: no memory for %u tensors", x->rank, n);
		return;
	}
	r->rx.tensors = ts;
	r->rx.ntensors = 0;
	wire_tensors_begin(&tl, &it);
	for (i = 0; i < n; i++) {
		struct xport_rx_tensor *d = &ts[i];

		if (!wire_tensor_next(&it, &d->desc))
			break;
		d->dev = NULL; /* the user's fields start empty (t_small is reused) */
		d->nccl_done = false;
		d->nccl_rc = 0;
		d->nccl_dev = 0;
		d->nccl_why = NULL;
		rc = 0;
		switch (d->desc.loc) {
		case WIRE_LOC_INLINE:
			d->data = (void *)d->desc.u.data;
			break;
		case WIRE_LOC_SLOT:
			rc = xport_arena_claim(&p->ain, d->desc.u.slot.offset, d->desc.u.slot.length,
					       d->desc.nbytes, why, sizeof(why));
			d->data = rc ? NULL : p->ain.base + d->desc.u.slot.offset;
			break;
		case WIRE_LOC_RDV_PENDING:
			if (d->desc.nbytes == 0) {
				snprintf(why, sizeof(why), "asks a rendezvous for an empty tensor");
				rc = RDAG_EINVAL;
				break;
			}
			rc = rdv_prepare(x, p, r, i, &d->desc, &d->data, why, sizeof(why));
			break;
		case WIRE_LOC_NCCL:
			/* Bytes the agent receives by NCCL: only CUDA tensors, and only if we offered it. */
			d->data = NULL;
			if (!(x->o.offer & WIRE_HS_NCCL)) {
				snprintf(why, sizeof(why), "goes by NCCL, which this worker did not offer");
				rc = RDAG_EINVAL;
			} else if (d->desc.dev_type != WIRE_DEV_CUDA || d->desc.nbytes == 0) {
				snprintf(why, sizeof(why), "goes by NCCL but is not a CUDA tensor with "
					 "bytes");
				rc = RDAG_EINVAL;
			}
			break;
		default:
			snprintf(why, sizeof(why), "uses tensor location %u, which this transport does not "
				 "serve", d->desc.loc);
			rc = RDAG_EINVAL;
			break;
		}
		if (rc)
			break;
		/* Counted only once placed: freeing the message releases exactly these. */
		r->rx.ntensors = i + 1;
	}
	if (i < n) {
		refuse(x, p, r, req_id, rc ? rc : RDAG_EINVAL, "worker %u refuses %s from worker %u: "
		       "tensor %u %s", x->rank, wire_kind_name(r->rx.msg.kind), p->rank, i,
		       rc ? why : "is missing");
		return;
	}
	if (r->rdv_left) {
		r->state = XRS_PARKED;
		p->rdv_hint = 1; /* it could not use its arena: tell it how far ours is free */
		xport_dirty(x, p);
		return;
	}
	deliver(x, r);
}

/*
 * RDV_DONE: one per message, naming its last rendezvous tensor (by the answer's token) and
 * reporting every rendezvous tensor of that message written (docs/transport.md).
 */
static void rdv_done(struct xport *x, struct xp_peer *p, const struct wire_msg *m)
{
	struct xp_rdv_in *rec;
	struct xp_recv *r;

	for (rec = p->rdv_in; rec; rec = rec->next)
		if (rec->token == m->env.req_id && rec->state == XRR_ANSWERED &&
		    rec->index == m->u.rdv_done.index)
			break;
	if (!rec) {
		LOG_WARN("xport: RDV_DONE from worker %u (%s) for token %llu matches no rendezvous; "
			 "ignored", p->rank, p->name, (unsigned long long)m->env.req_id);
		return;
	}
	r = rec->r;
	if (m->u.rdv_done.status < 0) {
		LOG_WARN("xport: worker %u (%s) could not write the tensors of its %s (%s): message "
			 "dropped", p->rank, p->name, wire_kind_name(r->rx.msg.kind),
			 rdag_strerror(m->u.rdv_done.status));
		xport_recv_free(x, r);
		return;
	}
	for (struct xp_rdv_in *q = r->rdv; q; q = q->mnext) {
		if (q->state != XRR_ANSWERED) {
			LOG_WARN("xport: worker %u (%s) reports tensor %u of its %s written before it was "
				 "told where: message dropped", p->rank, p->name, q->index,
				 wire_kind_name(r->rx.msg.kind));
			xport_recv_free(x, r);
			return;
		}
	}
	for (struct xp_rdv_in *q = r->rdv; q; q = q->mnext) {
		rdv_unlink(p, q);
		q->state = XRR_LANDED;
	}
	r->rdv_left = 0;
	deliver(x, r);
}

int xport_flush_answers(struct xport *x, struct xp_peer *p)
{
	for (struct xp_rdv_in *rec = p->rdv_in; rec; rec = rec->next) {
		struct wire_env env = {.req_id = rec->token, .src = (uint16_t)x->rank};
		struct wire_rdv_answer a;
		struct xp_op *op;
		int rc;

		if (rec->state != XRR_ANSWER_DUE)
			continue;
		if (p->credits < 2)
			return RDAG_EAGAIN;
		op = xport_ctl_get(x, p);
		if (!op)
			return RDAG_EAGAIN;
		a.req_id = rec->r->rx.msg.env.req_id;
		a.index = rec->index;
		a.addr = rcache_remote_addr(rec->reg, rec->ptr);
		a.key = rec->reg->mr.rkey;
		a.length = rec->len;
		rc = wire_encode_rdv_answer(op->buf, op->cap, &env, &a, &op->len);
		if (rc) {
			xport_op_free(x, op);
			return rc;
		}
		rc = xport_ctl_post(x, op);
		if (rc)
			return rc;
		rec->state = XRR_ANSWERED;
	}
	return 0;
}

static void handshake(struct xport *x, struct xp_peer *p, const struct wire_msg *m)
{
	const struct wire_handshake *hs = &m->u.hs;

	LOG_DEBUG("xport: handshake%s from worker %u", hs->flags & WIRE_HS_ACK ? " answer" : "",
		  p->rank);
	if (hs->job_token != x->job_token) {
		xport_peer_fail(x, p, RDAG_EACCES, "it belongs to another job (job token differs)");
		return;
	}
	if (hs->world_size != x->world) {
		xport_peer_fail(x, p, RDAG_EINVAL, "it counts %u workers, this one %u", hs->world_size,
				x->world);
		return;
	}
	if (!p->hs_seen) {
		p->hs_seen = 1;
		p->credits += hs->credits > 0xffffu ? 0xffffu : hs->credits;
		p->max_msg = hs->max_msg;
		p->offer = hs->flags & (uint16_t)~WIRE_HS_ACK;
		if (hs->arena_size && hs->arena_size % XP_GRAN == 0) {
			p->aout.addr = hs->arena_addr;
			p->aout.key = hs->arena_key;
			p->aout.size = hs->arena_size;
		}
		if (p->state == XP_PEER_CONNECTING)
			p->state = XP_PEER_UP;
		LOG_DEBUG("xport: worker %u (%s) up: %u credits, arena %llu bytes, messages up to %u",
			  p->rank, p->name, hs->credits, (unsigned long long)hs->arena_size,
			  hs->max_msg);
	}
	if (hs->flags & WIRE_HS_ACK) {
		p->ping_out = 0;
	} else {
		p->ping_seen = 1;
		p->pong_due = 1;
	}
	xport_dirty(x, p);
}

/* Reads the sender of a message that did not decode, if its header says one. */
static int raw_sender(const uint8_t *buf, size_t len, uint32_t *src, uint64_t *req_id)
{
	uint32_t magic;
	uint16_t s;

	if (len < WIRE_HDR_SIZE)
		return -1;
	memcpy(&magic, buf, 4);
	memcpy(&s, buf + 12, 2);
	memcpy(req_id, buf + 16, 8);
	if (le32toh(magic) != WIRE_MAGIC)
		return -1;
	*src = le16toh(s);
	*req_id = le64toh(*req_id);
	return 0;
}

void xport_recv_done(struct xport *x, struct xp_recv *r, const struct fab_cqe *c)
{
	struct wire_msg *m = &r->rx.msg;
	struct xp_peer *p;
	uint64_t req_id = 0;
	uint32_t src;
	int rc;

	x->posted--;
	if (x->open && x->posted < x->st.posted_min)
		x->st.posted_min = x->posted;
	r->state = XRS_IDLE;
	r->peer = NULL;
	r->counted = 0;
	r->rx.tensors = NULL;
	r->rx.ntensors = 0;
	if (c->status < 0) {
		x->st.recv_errors++;
		if (c->peer != FAB_PEER_UNKNOWN && c->peer < x->world && c->peer != x->rank)
			xport_peer_fail(x, &x->peers[c->peer], RDAG_EPEER_DEAD, "a receive failed: %s (%s)",
					rdag_strerror(c->status), c->errmsg);
		else
			LOG_WARN("xport: a receive failed: %s (%s)", rdag_strerror(c->status), c->errmsg);
		requeue(x, r);
		xport_post_receives(x);
		return;
	}
	rc = wire_decode(r->buf, c->len, m);
	if (rc) {
		char detail[160];

		snprintf(detail, sizeof(detail), "%s", rdag_last_error());
		if (raw_sender(r->buf, c->len, &src, &req_id) == 0 && src < x->world && src != x->rank &&
		    x->peers[src].state != XP_PEER_DEAD) {
			p = &x->peers[src];
			p->held++;
			r->peer = p;
			r->counted = 1;
			refuse(x, p, r, req_id, rc, "worker %u: message does not decode: %s", x->rank,
			       detail);
		} else {
			LOG_WARN("xport: dropped a %zu-byte message from an unknown sender: %s", c->len,
				 detail);
			requeue(x, r);
			xport_post_receives(x);
		}
		return;
	}
	src = m->env.src;
	if (src >= x->world || src == x->rank ||
	    ((x->attr->caps & FAB_CAP_RECV_SOURCE) && c->peer != FAB_PEER_UNKNOWN && c->peer != src)) {
		LOG_WARN("xport: dropped %s claiming to come from worker %u (fabric says %u)",
			 wire_kind_name(m->kind), src, c->peer);
		requeue(x, r);
		xport_post_receives(x);
		return;
	}
	p = &x->peers[src];
	if (p->state == XP_PEER_DEAD) {
		requeue(x, r);
		xport_post_receives(x);
		return;
	}
	p->last_rx_ns = x->now;
	if (m->env.credits) {
		p->credits += m->env.credits;
		/* Only worth a flush if something waits for credits. */
		if (p->bl_head || p->rdv_in || p->nrefusals || p->owed >= x->credit_thresh ||
		    p->ain.tail != p->ain.reported)
			xport_dirty(x, p);
	}
	r->rx.peer = src;
	r->rx.buf = r->buf;
	r->rx.len = c->len;
	if (m->kind == WIRE_HANDSHAKE) {
		/* Handshakes and keepalives travel outside the credits (XP_EXTRA_RECV buffers). */
		handshake(x, p, m);
		requeue(x, r);
		xport_post_receives(x);
		return;
	}
	if (p->held + p->owed + 1 > x->credits) {
		if (!x->st.credit_overruns)
			LOG_WARN("xport: worker %u (%s) sent beyond its %u credits", p->rank, p->name,
				 x->credits);
		x->st.credit_overruns++;
	}
	p->held++;
	r->peer = p;
	r->counted = 1;
	switch (m->kind) {
	case WIRE_CREDIT:
		p->credits += m->u.credit.credits;
		if (m->env.req_id > p->aout.tail && m->env.req_id <= p->aout.head)
			p->aout.tail = m->env.req_id;
		else if (m->env.req_id > p->aout.head)
			LOG_WARN("xport: worker %u (%s) reports arena tail %llu beyond our head %llu",
				 p->rank, p->name, (unsigned long long)m->env.req_id,
				 (unsigned long long)p->aout.head);
		xport_dirty(x, p);
		xport_recv_free(x, r);
		return;
	case WIRE_RDV_ANSWER:
		xport_rdv_answer(x, p, m);
		xport_recv_free(x, r);
		return;
	case WIRE_RDV_DONE:
		rdv_done(x, p, m);
		xport_recv_free(x, r);
		return;
	default:
		user_msg(x, p, r);
		return;
	}
}

void xport_recv_peer_dead(struct xport *x, struct xp_peer *p)
{
	/* Parked messages of p (waiting for rendezvous data that will not come) are dropped. */
	while (p->rdv_in) {
		struct xp_recv *r = p->rdv_in->r;

		xport_recv_free(x, r);
	}
}

/* A message detached from its receive buffer: the copy, and what it still holds of the peer's. */
struct xp_held {
	struct xport_rx rx;      /* public part, first */
	struct xp_peer *peer;
	struct xp_rdv_in *rdv;   /* its rendezvous tensors (landed, so unlinked from the peer) */
};

struct xport_rx *xport_detach(struct xport *x, struct xport_rx *rx)
{
	struct xp_recv *r = (struct xp_recv *)rx;
	struct xp_held *h;
	uint8_t *copy;
	uint32_t n;

	if (!x || !rx)
		return NULL;
	if (rx->detached)
		return rx;
	n = rx->ntensors;
	h = calloc(1, sizeof(*h));
	copy = malloc(rx->len ? rx->len : 1);
	if (h && n)
		h->rx.tensors = malloc(n * sizeof(*h->rx.tensors));
	if (!h || !copy || (n && !h->rx.tensors)) {
		if (h)
			free(h->rx.tensors);
		free(h);
		free(copy);
		err_set(RDAG_ENOMEM, "xport_detach: out of memory");
		return NULL;
	}
	xp_lock(x);
	if (r->state != XRS_USER) {
		xp_unlock(x);
		LOG_ERROR("xport_detach: message %p is not held by the receiver (state %u)", (void *)rx,
			  r->state);
		free(h->rx.tensors);
		free(h);
		free(copy);
		return NULL;
	}
	memcpy(copy, rx->buf, rx->len);
	h->rx.peer = rx->peer;
	h->rx.len = rx->len;
	h->rx.buf = copy;
	h->rx.ntensors = n;
	h->rx.detached = 1;
	/* The decoded views point into the buffer: the same offsets in the copy. */
	if (wire_decode(copy, rx->len, &h->rx.msg)) {
		LOG_ERROR("xport_detach: a delivered message no longer decodes");
		h->rx.msg = rx->msg;
	}
	for (uint32_t i = 0; i < n; i++) {
		struct xport_rx_tensor *t = &h->rx.tensors[i];

		*t = rx->tensors[i];
		if (t->desc.loc == WIRE_LOC_INLINE && t->data) {
			t->data = copy + ((const uint8_t *)t->data - (const uint8_t *)rx->buf);
			t->desc.u.data = t->data;
		}
	}
	h->peer = r->peer;
	h->rdv = r->rdv;
	r->rdv = NULL;
	/* The slots are the held copy's now: the buffer goes back without releasing them. */
	r->rx.ntensors = 0;
	xport_recv_free(x, r);
	xport_flush(x);
	xp_unlock(x);
	return &h->rx;
}

static void held_free(struct xport *x, struct xp_held *h)
{
	struct xp_peer *p = h->peer;

	tensors_free(x, p, &h->rx, &h->rdv);
	if (p && p->state != XP_PEER_DEAD && p->ain.tail - p->ain.reported >= p->ain.size / 8)
		xport_dirty(x, p);
	free(h->rx.tensors);
	free((void *)h->rx.buf);
	free(h);
}

void xport_release(struct xport *x, struct xport_rx *rx)
{
	struct xp_recv *r = (struct xp_recv *)rx;

	if (!x || !rx)
		return;
	if (rx->detached) {
		xp_lock(x);
		held_free(x, (struct xp_held *)rx);
		xport_flush(x);
		xp_unlock(x);
		return;
	}
	xp_lock(x);
	if (r->state != XRS_USER) {
		LOG_ERROR("xport_release: message %p is not held by the receiver (state %u)", (void *)rx,
			  r->state);
	} else {
		xport_recv_free(x, r);
		xport_flush(x);
	}
	xp_unlock(x);
}
