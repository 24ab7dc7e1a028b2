/* Transport send side: send ops, protocol choice per tensor, writes, credits, backlog, rendezvous writes. */
#include <stdlib.h>
#include <string.h>

#include "xport/xport_int.h"

/*
 * A user op goes through: tensors placed (inline / slot / rendezvous) and the message encoded in
 * its registered buffer -> queued in the peer's backlog -> eager writes posted (no credit needed)
 * -> once they may be followed by the message (at once with ORDER_SAW, after their completions
 * with WRITE_DELIVERED) and a credit is available, the message is posted with the credits owed to
 * the peer in its header -> rendezvous tensors are written when RDV_ANSWERs come, each followed
 * by RDV_DONE -> the done callback, once every send and write has completed.
 *
 * A data message needs 2 credits: the last credit is kept for a CREDIT message returning at
 * least credit_thresh credits, so two peers that both used up their credits can always give
 * them back to each other (docs/transport.md, "Why the last credit is kept").
 */

void xport_dirty(struct xport *x, struct xp_peer *p)
{
	if (p->dirty || p->state == XP_PEER_DEAD)
		return;
	p->dirty = 1;
	p->dirty_next = x->dirty;
	x->dirty = p;
}

/* ---- ops ------------------------------------------------------------------------------------- */

static void op_reset(struct xp_op *op, struct xp_peer *p)
{
	op->next = op->rnext = NULL;
	op->peer = p;
	op->queued = op->in_rdv = op->sent = op->failed = op->cb_state = 0;
	op->needs_credit = 1;
	op->min_credits = 2;
	op->len = 0;
	op->send_out = op->writes_out = op->eager_left = op->rdv_left = 0;
	op->ntensors = 0;
	op->t = op->t_small;
	op->req_id = 0;
	op->done = NULL;
	op->done_arg = NULL;
	op->status = 0;
}

static struct xp_op *user_get(struct xport *x, struct xp_peer *p)
{
	struct xp_op *op = x->user_free;

	if (!op)
		return NULL;
	x->user_free = op->next;
	op_reset(op, p);
	return op;
}

struct xp_op *xport_ctl_get(struct xport *x, struct xp_peer *p)
{
	struct xp_op *op = x->ctl_free;

	if (!op)
		return NULL;
	x->ctl_free = op->next;
	x->ctl_inuse++;
	op_reset(op, p);
	return op;
}

void xport_op_free(struct xport *x, struct xp_op *op)
{
	for (uint32_t i = 0; i < op->ntensors; i++) {
		if (op->t[i].reg) {
			rcache_release(x->rc, op->t[i].reg);
			op->t[i].reg = NULL;
		}
	}
	if (op->t != op->t_small)
		free(op->t);
	op->t = op->t_small;
	op->ntensors = 0;
	op->peer = NULL;
	if (op->kind == XOP_USER) {
		op->next = x->user_free;
		x->user_free = op;
	} else {
		op->next = x->ctl_free;
		x->ctl_free = op;
		x->ctl_inuse--;
	}
}

void xport_op_check(struct xport *x, struct xp_op *op)
{
	if (op->cb_state == 0) {
		bool finished = op->failed || (op->sent && !op->send_out && !op->writes_out &&
					       !op->eager_left && !op->rdv_left);

		if (!finished)
			return;
		if (op->kind == XOP_USER && op->done) {
			op->cb_state = 1;
			op->next = NULL;
			if (x->done_tail)
				x->done_tail->next = op;
			else
				x->done_head = op;
			x->done_tail = op;
			return;
		}
		op->cb_state = 2;
	}
	if (op->cb_state == 2 && !op->send_out && !op->writes_out && !op->queued && !op->in_rdv)
		xport_op_free(x, op);
}

void xport_op_fail(struct xport *x, struct xp_op *op, int status)
{
	if (op->cb_state != 0 || op->failed)
		return;
	op->failed = 1;
	op->status = status;
	xport_op_check(x, op);
}

/* ---- posting --------------------------------------------------------------------------------- */

/* Posts op's message to p with the owed credits in its header. 0, RDAG_EAGAIN or an error. */
static int post_msg(struct xport *x, struct xp_peer *p, struct xp_op *op)
{
	uint32_t give = p->owed > 0xffffu ? 0xffffu : p->owed;
	int rc;

	xport_hdr_set_credits(op->buf, (uint16_t)give);
	if (x->can_inject && x->open && op->len <= x->inject_size) {
		rc = fab_inject(x->ep, p->rank, op->buf, op->len);
	} else {
		rc = fab_send(x->ep, p->rank, op->buf, op->len, op->desc,
			      (void *)((uintptr_t)op | XP_CTX_SEND));
		if (rc == 0)
			op->send_out = 1;
	}
	if (rc)
		return rc;
	op->sent = 1;
	p->owed -= give;
	if (op->needs_credit)
		p->credits--;
	return 0;
}

/* A post failed with something other than RDAG_EAGAIN: the channel to p is broken. */
static void post_failed(struct xport *x, struct xp_peer *p, int rc, const char *what)
{
	xport_peer_fail(x, p, RDAG_EPEER_DEAD, "posting a %s failed: %s (%s)", what,
			rdag_strerror(rc), rdag_last_error());
}

int xport_ctl_post(struct xport *x, struct xp_op *op)
{
	struct xp_peer *p = op->peer;
	int rc = post_msg(x, p, op);

	if (rc) {
		xport_op_free(x, op);
		if (rc != RDAG_EAGAIN)
			post_failed(x, p, rc, "transport message");
		return rc;
	}
	xport_op_check(x, op);
	return 0;
}

int xport_send_hs(struct xport *x, struct xp_peer *p, int ack)
{
	struct xp_op *op = xport_ctl_get(x, p);
	struct wire_env env = {.req_id = 0, .src = (uint16_t)x->rank, .credits = 0};
	struct wire_handshake hs = {
		.max_version = XP_HS_VERSION,
		.worker_id = (uint16_t)x->rank,
		.world_size = (uint16_t)x->world,
		.flags = (uint16_t)((ack ? WIRE_HS_ACK : 0) | x->o.offer),
		.job_token = x->job_token,
		.arena_addr = p->ain.size ? p->ain.mr.remote_base : 0,
		.arena_key = p->ain.size ? p->ain.mr.rkey : 0,
		.arena_size = p->ain.size,
		.credits = x->credits,
		.max_msg = (uint32_t)x->o.msg_max,
	};
	int rc;

	if (!op)
		return RDAG_EAGAIN;
	LOG_DEBUG("xport: handshake%s to worker %u", ack ? " answer" : "", p->rank);
	op->needs_credit = 0;
	rc = wire_encode_handshake(op->buf, op->cap, &env, &hs, &op->len);
	if (rc) {
		xport_op_free(x, op);
		return rc;
	}
	return xport_ctl_post(x, op);
}

/* post_writes: the peer's write window is full; its write completions make it dirty again. */
#define XP_WFULL 1

/*
 * Posts the remaining writes of tensor t. 0, RDAG_EAGAIN (tx queue full), XP_WFULL (the peer's
 * window is full: not a failure, the rest goes as earlier writes complete) or an error.
 */
static int post_writes(struct xport *x, struct xp_stensor *t)
{
	struct xp_op *op = t->op;
	struct xp_peer *p = op->peer;

	while (t->posted < t->len) {
		uint64_t chunk = t->len - t->posted;
		int rc;

		if (x->write_window && p->wbytes >= x->write_window) {
			if (!p->wwait)
				x->st.window_waits++;
			p->wwait = 1;
			return XP_WFULL;
		}
		if (chunk > x->max_write)
			chunk = x->max_write;
		rc = fab_write(x->ep, op->peer->rank, t->data + t->posted, (size_t)chunk, t->reg->mr.desc,
			       t->raddr + t->posted, t->rkey, 0, 0, (void *)((uintptr_t)t | XP_CTX_WRITE));
		if (rc)
			return rc;
		t->posted += chunk;
		t->wcharged += chunk;
		p->wbytes += chunk;
		if (p->wbytes > x->st.window_peak)
			x->st.window_peak = p->wbytes;
		x->st.writes++;
		t->writes_out++;
		op->writes_out++;
		x->st.bytes_written += chunk;
	}
	return 0;
}

/* Posts the eager writes op still has to post. 0, RDAG_EAGAIN, XP_WFULL or an error. */
static int post_eager(struct xport *x, struct xp_op *op)
{
	for (uint32_t i = 0; i < op->ntensors && op->eager_left; i++) {
		struct xp_stensor *t = &op->t[i];
		int rc;

		if (t->loc != WIRE_LOC_SLOT || t->posted == t->len)
			continue;
		rc = post_writes(x, t);
		if (rc)
			return rc;
		op->eager_left--;
	}
	return 0;
}

/* Another op of the peer's rendezvous list uses req_id: answers could not be told apart. */
static bool rdv_conflict(const struct xp_peer *p, uint64_t req_id)
{
	for (const struct xp_op *o = p->rdv_ops; o; o = o->rnext)
		if (o->req_id == req_id)
			return true;
	return false;
}

/*
 * Sends op's RDV_DONE: one per message, once every rendezvous tensor is written, naming the last
 * one (its answer's token as request id) and reporting all of them. Its credit was taken when the
 * message went (a rendezvous message costs two), so it never waits for credits: a receiver
 * whose buffers are all held by messages waiting for RDV_DONE can always be told.
 * 0, RDAG_EAGAIN (no control op free) or an error.
 */
static int send_rdv_done(struct xport *x, struct xp_peer *p, struct xp_op *op,
			 const struct xp_stensor *last, int32_t status)
{
	struct wire_env env = {.req_id = last->token, .src = (uint16_t)x->rank, .credits = 0};
	struct wire_rdv_done d = {.req_id = op->req_id, .index = last->index, .status = status};
	struct xp_op *c = xport_ctl_get(x, p);
	int rc;

	if (!c)
		return RDAG_EAGAIN;
	c->needs_credit = 0; /* prepaid */
	rc = wire_encode_rdv_done(c->buf, c->cap, &env, &d, &c->len);
	if (rc) {
		xport_op_free(x, c);
		return rc;
	}
	return xport_ctl_post(x, c);
}

/* Rendezvous work of p's ops: writes for answered tensors, then the message's RDV_DONE. */
static int flush_rdv(struct xport *x, struct xp_peer *p)
{
	struct xp_op **pp = &p->rdv_ops;

	while (*pp) {
		struct xp_op *op = *pp;
		const struct xp_stensor *last = NULL;
		bool written = true;
		int32_t status = 0;
		int rc = 0;

		for (uint32_t i = 0; i < op->ntensors; i++) {
			struct xp_stensor *t = &op->t[i];

			if (t->rdv == XRT_NONE)
				continue;
			if (t->rdv == XRT_WRITING) {
				rc = post_writes(x, t);
				if (rc)
					break;
				if (x->vis == XP_VIS_SAW || t->writes_out == 0)
					t->rdv = XRT_DONE_DUE;
			}
			if (t->rdv == XRT_WAIT_ANSWER || t->rdv == XRT_WRITING)
				written = false;
			if (t->rstatus)
				status = t->rstatus;
			last = t;
		}
		if (!rc && written && op->rdv_left && last) {
			rc = send_rdv_done(x, p, op, last, status);
			if (rc == 0) {
				for (uint32_t i = 0; i < op->ntensors; i++)
					if (op->t[i].rdv != XRT_NONE)
						op->t[i].rdv = XRT_FINISHED;
				op->rdv_left = 0;
			}
		}
		if (rc && rc != RDAG_EAGAIN && rc != XP_WFULL) {
			post_failed(x, p, rc, "rendezvous write");
			return rc;
		}
		if (op->rdv_left == 0) {
			*pp = op->rnext;
			op->in_rdv = 0;
			op->rnext = NULL;
			xport_op_check(x, op);
			continue;
		}
		if (rc == RDAG_EAGAIN || rc == XP_WFULL)
			return rc; /* later ops' writes wait too: the window is the peer's */
		pp = &op->rnext;
	}
	return 0;
}

/* Posts refusal replies queued for p. */
static int flush_refusals(struct xport *x, struct xp_peer *p)
{
	while (p->nrefusals) {
		struct xp_refusal *r = &p->refusals[0];
		struct wire_env env = {.req_id = r->req_id, .src = (uint16_t)x->rank, .credits = 0};
		struct wire_exception e = {.code = r->code, .origin = (uint16_t)x->rank,
					   .text = {r->text, (uint32_t)strlen(r->text)}};
		struct xp_op *op;
		int rc;

		if (p->credits < 2)
			return RDAG_EAGAIN;
		op = xport_ctl_get(x, p);
		if (!op)
			return RDAG_EAGAIN;
		rc = wire_encode_exception(op->buf, op->cap, &env, &e, &op->len);
		if (rc == 0)
			rc = xport_ctl_post(x, op);
		else
			xport_op_free(x, op);
		if (rc == RDAG_EAGAIN)
			return rc;
		if (rc)
			LOG_WARN("xport: error reply to worker %u dropped: %s", p->rank, rdag_last_error());
		p->nrefusals--;
		memmove(&p->refusals[0], &p->refusals[1], p->nrefusals * sizeof(p->refusals[0]));
	}
	return 0;
}

/* Sends a CREDIT message if p is owed enough credits or our arena tail moved. */
static int flush_credit(struct xport *x, struct xp_peer *p)
{
	struct xp_arena_in *a = &p->ain;
	uint64_t moved = a->tail - a->reported;
	bool tail_due = moved && (moved >= a->size / 8 || p->rdv_hint);
	bool owed_due = p->owed >= x->credit_thresh;
	struct wire_env env = {.src = (uint16_t)x->rank};
	struct wire_credit c = {.credits = 0};
	struct xp_op *op;
	int rc;

	if (!tail_due && !owed_due)
		return 0;
	if (p->credits < (owed_due ? 1u : 2u))
		return RDAG_EAGAIN;
	op = xport_ctl_get(x, p);
	if (!op)
		return RDAG_EAGAIN;
	/* The request id of a CREDIT carries our arena's tail (docs/transport.md). */
	env.req_id = a->tail;
	rc = wire_encode_credit(op->buf, op->cap, &env, &c, &op->len);
	if (rc) {
		xport_op_free(x, op);
		return rc;
	}
	rc = xport_ctl_post(x, op);
	if (rc)
		return rc;
	a->reported = env.req_id;
	p->rdv_hint = 0;
	x->st.credit_msgs_sent++;
	return 0;
}

/* Everything that can go to p now. Returns true if p still has work (stays dirty). */
static bool flush_peer(struct xport *x, struct xp_peer *p)
{
	bool blocked = false;
	int rc;

	if (p->state == XP_PEER_DEAD)
		return false;
	if (p->pong_due) {
		if (xport_send_hs(x, p, 1) == 0)
			p->pong_due = 0;
		else
			blocked = true;
	}
	if (p->ping_due && !p->ping_out && p->state == XP_PEER_UP) {
		if (xport_send_hs(x, p, 0) == 0) {
			p->ping_due = 0;
			p->ping_out = 1;
			p->ping_ns = x->now;
			x->st.pings_sent++;
		} else {
			blocked = true;
		}
	}
	if (p->state == XP_PEER_DEAD)
		return false;
	/* Eager writes need no credit: start them for every queued op. */
	for (struct xp_op *op = p->bl_head; op; op = op->next) {
		if (!op->eager_left)
			continue;
		rc = post_eager(x, op);
		if (rc == RDAG_EAGAIN || rc == XP_WFULL) {
			blocked = rc == RDAG_EAGAIN;
			break;
		}
		if (rc) {
			post_failed(x, p, rc, "write");
			return false;
		}
	}
	if (flush_refusals(x, p))
		blocked = true;
	if (p->state != XP_PEER_DEAD && xport_flush_answers(x, p))
		blocked = true;
	if (p->state != XP_PEER_DEAD) {
		rc = flush_rdv(x, p);
		if (rc && rc != XP_WFULL)
			blocked = true;
	}
	if (p->state == XP_PEER_DEAD)
		return false;
	while (p->bl_head) {
		struct xp_op *op = p->bl_head;

		if (op->eager_left || (x->vis == XP_VIS_DELIVERED && op->writes_out))
			break; /* waits for its writes; their completions make p dirty again */
		if (p->credits < op->min_credits) {
			blocked = true;
			break;
		}
		if (op->rdv_left && rdv_conflict(p, op->req_id))
			break; /* the op with the same request id finishing makes p dirty again */
		rc = post_msg(x, p, op);
		if (rc == RDAG_EAGAIN) {
			blocked = true;
			break;
		}
		if (rc) {
			post_failed(x, p, rc, "message");
			return false;
		}
		p->bl_head = op->next;
		if (!p->bl_head)
			p->bl_tail = NULL;
		op->next = NULL;
		op->queued = 0;
		x->st.msgs_sent++;
		if (op->rdv_left) {
			p->credits--; /* prepaid: its RDV_DONE */
			op->in_rdv = 1;
			op->rnext = p->rdv_ops;
			p->rdv_ops = op;
		}
		xport_op_check(x, op);
	}
	rc = flush_credit(x, p);
	if (rc == RDAG_EAGAIN)
		blocked = true;
	return blocked || p->pong_due || p->nrefusals;
}

void xport_flush(struct xport *x)
{
	struct xp_peer *list = x->dirty, *keep = NULL;

	x->dirty = NULL;
	while (list) {
		struct xp_peer *p = list;

		list = p->dirty_next;
		p->dirty = 0;
		if (flush_peer(x, p) && p->state != XP_PEER_DEAD && !p->dirty) {
			p->dirty = 1;
			p->dirty_next = keep;
			keep = p;
		}
	}
	/* Peers still blocked stay on the list (flush_peer may also have added some). */
	while (keep) {
		struct xp_peer *p = keep;

		keep = p->dirty_next;
		p->dirty_next = x->dirty;
		x->dirty = p;
	}
}

/* ---- completions ----------------------------------------------------------------------------- */

void xport_send_done(struct xport *x, struct xp_op *op, int status, const char *errmsg)
{
	op->send_out = 0;
	if (status < 0 && op->peer)
		xport_peer_fail(x, op->peer, RDAG_EPEER_DEAD, "a send failed: %s (%s)",
				rdag_strerror(status), errmsg);
	xport_op_check(x, op);
}

void xport_write_done(struct xport *x, struct xp_stensor *t, int status, const char *errmsg)
{
	struct xp_op *op = t->op;
	struct xp_peer *p = op->peer;
	uint64_t back = t->wcharged < x->max_write ? t->wcharged : x->max_write;

	/*
	 * Every write of t but its last is max_write long: giving back max_write (or what is left)
	 * per completion returns exactly what was charged, whichever write this was.
	 */
	t->wcharged -= back;
	p->wbytes -= back;
	if (p->wwait) {
		p->wwait = 0;
		xport_dirty(x, p);
	}
	t->writes_out--;
	op->writes_out--;
	if (status < 0) {
		xport_peer_fail(x, p, RDAG_EPEER_DEAD, "an RDMA write failed: %s (%s)",
				rdag_strerror(status), errmsg);
	} else if (x->vis == XP_VIS_DELIVERED) {
		if (t->rdv == XRT_WRITING && t->posted == t->len && t->writes_out == 0) {
			t->rdv = XRT_DONE_DUE;
			xport_dirty(x, p);
		}
		if (op->queued && op->writes_out == 0)
			xport_dirty(x, p);
	}
	xport_op_check(x, op);
}

void xport_rdv_answer(struct xport *x, struct xp_peer *p, const struct wire_msg *m)
{
	const struct wire_rdv_answer *a = &m->u.rdv_answer;
	struct xp_stensor *t = NULL;

	for (struct xp_op *op = p->rdv_ops; op && !t; op = op->rnext) {
		if (op->req_id == a->req_id && a->index < op->ntensors &&
		    op->t[a->index].rdv == XRT_WAIT_ANSWER)
			t = &op->t[a->index];
	}
	if (!t) {
		LOG_WARN("xport: RDV_ANSWER from worker %u (%s) for request %llu tensor %u matches no "
			 "pending rendezvous; ignored", p->rank, p->name, (unsigned long long)a->req_id,
			 a->index);
		return;
	}
	t->token = m->env.req_id;
	if (a->length < t->len) {
		LOG_WARN("xport: worker %u (%s) offers %llu bytes for a %llu-byte tensor; not written",
			 p->rank, p->name, (unsigned long long)a->length, (unsigned long long)t->len);
		t->rstatus = RDAG_EOVERFLOW;
		t->rdv = XRT_DONE_DUE;
		if (!t->op->status)
			t->op->status = RDAG_EOVERFLOW;
	} else {
		t->raddr = a->addr;
		t->rkey = a->key;
		t->rdv = XRT_WRITING;
	}
	xport_dirty(x, p);
}

/* ---- the send API ---------------------------------------------------------------------------- */

/* Chooses locations, encodes, registers. Called with the lock held; undoes everything on failure. */
static int build_user(struct xport *x, struct xp_peer *p, struct xp_op *op, uint64_t req_id,
		      xport_encode_fn enc, void *enc_arg, const struct xport_tensor *tensors, uint32_t n)
{
	struct wire_tensor small[XP_TX_SMALL], *wt = small;
	struct wire_env env = {.req_id = req_id, .src = (uint16_t)x->rank, .credits = 0};
	size_t cap = op->cap < p->max_msg ? op->cap : p->max_msg;
	uint64_t head0 = p->aout.head;
	int rc = 0, pass, any_inline = 0;

	if (n > XP_TX_SMALL) {
		op->t = calloc(n, sizeof(*op->t));
		wt = calloc(n, sizeof(*wt));
		if (!op->t || !wt) {
			free(wt);
			if (op->t)
				free(op->t);
			op->t = op->t_small;
			return err_set(RDAG_ENOMEM, "xport: no memory for %u tensor descriptors", n);
		}
	}
	op->ntensors = n;
	op->req_id = req_id;
	for (pass = 0; pass < 2; pass++) {
		long budget = (long)cap - 256 - 96 * (long)n;

		p->aout.head = head0;
		any_inline = 0;
		op->eager_left = op->rdv_left = 0;
		for (uint32_t i = 0; i < n; i++) {
			struct xp_stensor *t = &op->t[i];
			uint64_t nb = tensors[i].desc.nbytes, off;

			memset(t, 0, sizeof(*t));
			t->op = op;
			t->data = tensors[i].data;
			t->len = nb;
			t->index = i;
			wt[i] = tensors[i].desc;
			memset(&wt[i].u, 0, sizeof(wt[i].u));
			if (tensors[i].nccl) {
				/* The agent moves it by NCCL; the descriptor only names it. */
				if (wt[i].dev_type != WIRE_DEV_CUDA || !nb) {
					rc = err_set(RDAG_EINVAL, "xport: tensor %u goes by NCCL but is "
						     "not a CUDA tensor with bytes", i);
					goto undo;
				}
				t->loc = WIRE_LOC_NCCL;
				t->len = 0;
				wt[i].loc = WIRE_LOC_NCCL;
				wt[i].u.nccl_tag = tensors[i].nccl_tag;
				continue;
			}
			if (nb && !t->data) {
				rc = err_set(RDAG_EINVAL, "xport: tensor %u has %llu bytes but no data", i,
					     (unsigned long long)nb);
				goto undo;
			}
			if (nb && wt[i].dev_type != WIRE_DEV_CPU && !tensors[i].staged) {
				rc = err_set(RDAG_ENOSYS, "xport: tensor %u is on a %s device: the "
					     "transport moves host memory only", i,
					     wt[i].dev_type == WIRE_DEV_CUDA ? "CUDA" : "unknown");
				goto undo;
			}
			if (nb == 0 || (pass == 0 && nb <= x->o.inline_max && (long)nb <= budget)) {
				t->loc = WIRE_LOC_INLINE;
				wt[i].u.data = t->data;
				budget -= (long)((nb + 7) & ~(uint64_t)7);
				any_inline |= nb > 0;
			} else if (nb <= x->o.eager_max && xport_ring_alloc(&p->aout, nb, &off) == 0) {
				t->loc = WIRE_LOC_SLOT;
				wt[i].u.slot.offset = off;
				wt[i].u.slot.length = xport_slot_len(nb);
				t->raddr = p->aout.addr + off;
				t->rkey = p->aout.key;
				op->eager_left++;
			} else {
				t->loc = WIRE_LOC_RDV_PENDING;
				t->rdv = XRT_WAIT_ANSWER;
				op->rdv_left++;
			}
			wt[i].loc = t->loc;
		}
		rc = enc(enc_arg, op->buf, cap, &env, wt, n, &op->len);
		if (rc != RDAG_ENOSPC || !any_inline)
			break;
	}
	if (rc == RDAG_ENOSPC)
		rc = err_set(RDAG_EOVERFLOW, "xport: the message needs %zu bytes; worker %u (%s) "
			     "receives at most %zu", op->len, p->rank, p->name, cap);
	if (rc)
		goto undo;
	if (op->len < WIRE_HDR_SIZE || op->len > cap) {
		rc = err_set(RDAG_EINVAL, "xport: the encoder produced %zu bytes (room: %zu)", op->len,
			     cap);
		goto undo;
	}
	for (uint32_t i = 0; i < n; i++) {
		struct xp_stensor *t = &op->t[i];

		if (t->loc == WIRE_LOC_INLINE || t->loc == WIRE_LOC_NCCL)
			continue;
		rc = rcache_lookup(x->rc, t->data, (size_t)t->len, FAB_ACCESS_LOCAL, &t->reg);
		if (rc)
			goto undo;
	}
	/* A rendezvous message also pays for its RDV_DONE, and the last credit stays for CREDIT. */
	op->min_credits = op->rdv_left ? 3 : 2;
	for (uint32_t i = 0; i < n; i++) {
		if (op->t[i].loc == WIRE_LOC_INLINE)
			x->st.tensors_inline++;
		else if (op->t[i].loc == WIRE_LOC_NCCL)
			x->st.tensors_nccl++;
		else if (op->t[i].loc == WIRE_LOC_SLOT)
			x->st.tensors_eager++;
		else
			x->st.tensors_rdv++;
	}
	if (wt != small)
		free(wt);
	return 0;
undo:
	p->aout.head = head0;
	for (uint32_t i = 0; i < n; i++) {
		if (op->t[i].reg) {
			rcache_release(x->rc, op->t[i].reg);
			op->t[i].reg = NULL;
		}
	}
	op->eager_left = op->rdv_left = 0;
	if (wt != small)
		free(wt);
	return rc;
}

static void enqueue(struct xport *x, struct xp_peer *p, struct xp_op *op)
{
	/* Fast path: nothing waits before it and nothing to write first: post it now. */
	if (!p->bl_head && !op->eager_left && !op->rdv_left && p->credits >= op->min_credits &&
	    !p->pong_due && !p->ping_due && !p->nrefusals && p->state == XP_PEER_UP &&
	    post_msg(x, p, op) == 0) {
		x->st.msgs_sent++;
		xport_op_check(x, op);
		return;
	}
	op->queued = 1;
	op->next = NULL;
	if (p->bl_tail)
		p->bl_tail->next = op;
	else
		p->bl_head = op;
	p->bl_tail = op;
	if (op != p->bl_head || p->credits < op->min_credits)
		x->st.backlogged++;
	xport_dirty(x, p);
	(void)flush_peer(x, p);
}

/* Checks peer and takes a user op. Lock held. */
static int start(struct xport *x, uint32_t peer, struct xp_peer **pp, struct xp_op **opp)
{
	struct xp_peer *p;

	if (peer >= x->world || peer == x->rank)
		return err_set(RDAG_EINVAL, "xport: no peer %u (this is worker %u of %u)", peer, x->rank,
			       x->world);
	if (x->closing)
		return err_set(RDAG_ECANCELED, "xport: closing");
	p = &x->peers[peer];
	if (p->state == XP_PEER_DEAD)
		return xport_peer_err(p);
	*opp = user_get(x, p);
	if (!*opp)
		return err_set(RDAG_EAGAIN, "xport: all %u send ops are busy", x->nuser);
	*pp = p;
	return 0;
}

int xport_send(struct xport *x, uint32_t peer, uint64_t req_id, xport_encode_fn enc, void *enc_arg,
	       const struct xport_tensor *tensors, uint32_t n, xport_done_fn done, void *done_arg)
{
	struct xp_peer *p = NULL;
	struct xp_op *op = NULL;
	int rc;

	if (!x || !enc || (n && !tensors))
		return err_set(RDAG_EINVAL, "xport_send: missing argument");
	if (n > WIRE_MAX_TENSORS)
		return err_set(RDAG_EINVAL, "xport_send: %u tensors (limit %u)", n, WIRE_MAX_TENSORS);
	xp_lock(x);
	rc = start(x, peer, &p, &op);
	if (rc)
		goto out;
	rc = build_user(x, p, op, req_id, enc, enc_arg, tensors, n);
	if (rc) {
		xport_op_free(x, op);
		goto out;
	}
	op->done = done;
	op->done_arg = done_arg;
	enqueue(x, p, op);
out:
	xp_unlock(x);
	return rc;
}

static int send_bytes(struct xport *x, uint32_t peer, const void *msg, size_t len, xport_done_fn done,
		      void *done_arg, int check)
{
	struct xp_peer *p = NULL;
	struct xp_op *op = NULL;
	uint64_t req_id = 0;
	int rc;

	if (!x || !msg || len < WIRE_HDR_SIZE || len % WIRE_ALIGN)
		return err_set(RDAG_EINVAL, "xport: a message of %zu bytes is no message", len);
	if (check) {
		struct wire_msg m, inner[WIRE_MAX_DEPTH + 1];
		struct wire_tensor_list tl;
		struct wire_tensor_iter it;
		struct wire_tensor t;

		rc = wire_decode(msg, len, &m);
		if (rc)
			return err_set(RDAG_EINVAL, "xport_send_bytes: the message does not decode: %s",
				       rdag_last_error());
		rc = xport_msg_tensors(&m, inner, &tl);
		if (rc)
			return err_set(RDAG_EINVAL, "xport_send_bytes: an inner message does not decode: "
				       "%s", rdag_last_error());
		wire_tensors_begin(&tl, &it);
		while (wire_tensor_next(&it, &t))
			if (t.loc != WIRE_LOC_INLINE && t.loc != WIRE_LOC_NCCL)
				return err_set(RDAG_EINVAL, "xport_send_bytes: tensors must be inline "
					       "(use xport_send)");
		req_id = m.env.req_id;
	} else {
		memcpy(&req_id, (const uint8_t *)msg + 16, sizeof(req_id));
		req_id = le64toh(req_id);
	}
	xp_lock(x);
	rc = start(x, peer, &p, &op);
	if (rc)
		goto out;
	if (len > op->cap || len > p->max_msg) {
		rc = err_set(RDAG_EOVERFLOW, "xport: a %zu-byte message; worker %u (%s) receives at "
			     "most %u", len, p->rank, p->name, p->max_msg < op->cap ? p->max_msg
										 : (uint32_t)op->cap);
		xport_op_free(x, op);
		goto out;
	}
	memcpy(op->buf, msg, len);
	xport_hdr_set_src(op->buf, (uint16_t)x->rank);
	op->len = len;
	op->req_id = req_id;
	op->done = done;
	op->done_arg = done_arg;
	enqueue(x, p, op);
out:
	xp_unlock(x);
	return rc;
}

int xport_send_bytes(struct xport *x, uint32_t peer, const void *msg, size_t len, xport_done_fn done,
		     void *done_arg)
{
	return send_bytes(x, peer, msg, len, done, done_arg, 1);
}

int xport_test_send_raw(struct xport *x, uint32_t peer, const void *msg, size_t len,
			xport_done_fn done, void *done_arg)
{
	return send_bytes(x, peer, msg, len, done, done_arg, 0);
}
