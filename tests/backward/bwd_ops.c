/* Backward tests' framework side: values, weights, graph nodes (rdag_graph), the served functions. */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bwd_mp.h"

/* ---- tensors and values --------------------------------------------------------------------- */

size_t bw_numel(const struct bw_shape *s)
{
	size_t n = 1;

	for (unsigned i = 0; i < s->ndim; i++)
		n *= (size_t)s->dims[i];
	return n;
}

static size_t tnumel(const struct rdag_tensor *t)
{
	size_t n = 1;

	for (unsigned i = 0; i < t->ndim; i++)
		n *= t->shape[i] > 0 ? (size_t)t->shape[i] : 0;
	return n;
}

double bw_ld(uint8_t dtype, const void *p, size_t i)
{
	return dtype == RDAG_F32 ? (double)((const float *)p)[i] : ((const double *)p)[i];
}

void bw_st(uint8_t dtype, void *p, size_t i, double v)
{
	if (dtype == RDAG_F32)
		((float *)p)[i] = (float)v;
	else
		((double *)p)[i] = v;
}

void *bw_vals(struct bw_worker *w, uint8_t dtype, size_t n)
{
	void *p = calloc(n ? n : 1, rdag_dtype_size(dtype));

	CHECK(w, p != NULL, "out of memory for %zu values", n);
	return p;
}

void bw_tensor(struct rdag_tensor *t, void *data, const struct bw_shape *s)
{
	rdag_tensor_init(t, data, s->dtype, s->ndim, s->dims);
}

void bw_leaf(struct rdag_tensor *t, void *key)
{
	t->requires_grad = true;
	t->grad_kind = RDAG_GRAD_LEAF;
	t->grad_fn.node = key;
	t->grad_fn.input_nr = 0;
}

const char *bw_shape_str(const struct bw_shape *s, char *buf, size_t len)
{
	size_t o = (size_t)snprintf(buf, len, "%s[", s->dtype == RDAG_F32 ? "f32" : "f64");

	for (unsigned i = 0; i < s->ndim && o < len; i++)
		o += (size_t)snprintf(buf + o, len - o, "%s%lld", i ? "," : "", (long long)s->dims[i]);
	if (o < len)
		snprintf(buf + o, len - o, "]");
	return buf;
}

double bw_wval(int rank, unsigned which, size_t i)
{
	return 0.5 + (double)(((size_t)rank * 3 + which * 5 + i * 7) % 9) * 0.125;
}

double bw_xval(uint64_t seed, size_t i, bool frac)
{
	if (!frac)
		return 0.25 * (double)(1 + (seed * 3 + i * 5) % 7);
	return 0.1 + 0.37 * (double)((seed * 13 + i) % 11) / 3.0;
}

void bw_fill_x(uint8_t dtype, void *p, size_t n, uint64_t seed, bool frac)
{
	for (size_t i = 0; i < n; i++)
		bw_st(dtype, p, i, bw_xval(seed, i, frac));
}

struct bw_weight *bw_weight(struct bw_worker *w, uint8_t dtype, size_t n, unsigned which)
{
	struct bw_weight *wt;

	pthread_mutex_lock(&w->lock);
	for (wt = w->weights; wt; wt = wt->next)
		if (wt->dtype == dtype && wt->n == n && wt->which == which)
			break;
	if (!wt) {
		wt = calloc(1, sizeof(*wt));
		if (wt)
			wt->data = calloc(n ? n : 1, rdag_dtype_size(dtype));
		if (!wt || !wt->data) {
			if (wt)
				free(wt->data);
			free(wt);
			wt = NULL;
		} else {
			wt->dtype = dtype;
			wt->n = n;
			wt->which = which;
			for (size_t i = 0; i < n; i++)
				bw_st(dtype, wt->data, i, bw_wval(w->rank, which, i));
			wt->next = w->weights;
			w->weights = wt;
		}
	}
	pthread_mutex_unlock(&w->lock);
	CHECK(w, wt != NULL, "out of memory for a weight of %zu values", n);
	return wt;
}

void bw_weight_tensor(struct rdag_tensor *t, struct bw_weight *wt, const struct rdag_tensor *like)
{
	rdag_tensor_init(t, wt->data, like->dtype, like->ndim, like->shape);
	bw_leaf(t, &wt->key);
}

/* ---- graph nodes ---------------------------------------------------------------------------- */

/* kill: tell the parent, then wait to be killed (a bounded wait: the test fails if nobody kills us). */
static int block_kill(struct bw_node *n)
{
	struct bw_worker *w = n->w;
	uint64_t dl = mp_now_ns() + 60000000000ull;
	char b = 'k';

	bw_phase(w, "kill: in the node's backward, waiting for SIGKILL");
	CHECK(w, write(w->ready_fd, &b, 1) == 1, "cannot tell the parent to kill us");
	while (mp_now_ns() < dl)
		poll(NULL, 0, 100);
	bw_fail(w, __FILE__, __LINE__, "still alive 60 s after asking to be killed");
	return RDAG_ETIMEDOUT;
}

/* release_during: say we are in the pass, wait until the creator released the context. */
static int block_gate(struct bw_node *n)
{
	struct bw_worker *w = n->w;
	int creator = (int)(n->gate_ctx >> 48);

	bw_put(w, BW_SLOT_IN_NODE, n->gate_ctx + 1);
	if (creator >= w->world)
		return RDAG_EINVAL;
	if (bw_await(w, creator, BW_SLOT_RELEASED, n->gate_ctx + 1, 60, "release_during: the release"))
		return RDAG_ETIMEDOUT;
	return 0;
}

static int node_bwd(void *arg, const struct rdag_tensor *go, uint32_t no, struct rdag_tensor *gi, uint32_t ni)
{
	struct bw_node *n = arg;
	struct bw_worker *w = n->w;
	uint32_t want_out = n->op == BW_PAIR ? 2 : 1, want_in = n->op == BW_SUM ? 1 : 2;
	uint8_t dt = n->dtype;

	atomic_fetch_add(&n->runs, 1);
	atomic_fetch_add(&w->node_runs, 1);
	if (n->block == BW_BLOCK_KILL)
		return block_kill(n);
	if (n->block == BW_BLOCK_GATE) {
		int rc = block_gate(n);

		if (rc)
			return rc;
	}
	if (n->block == BW_BLOCK_WAIT &&
	    bw_await(w, n->gate_rank, BW_SLOT_IN_NODE, n->gate_ctx + 1, 60, "abort: the other node"))
		return RDAG_ETIMEDOUT;
	if (n->fail)
		return RDAG_EIO; /* a framework's failure: no rdag text set */
	if (no != want_out || ni != want_in) {
		bw_fail(w, __FILE__, __LINE__, "node op %d called with %u outputs and %u inputs", n->op, no,
			ni);
		return RDAG_EINVAL;
	}
	for (uint32_t k = 0; k < no; k++) {
		size_t want = n->op == BW_SUM || n->op == BW_SUM2 ? 1 : n->n;

		if (go[k].dtype != dt || tnumel(&go[k]) != want || !go[k].data) {
			bw_fail(w, __FILE__, __LINE__, "node op %d: output gradient %u of dtype %u, %zu "
				"elements (expected %u, %zu)", n->op, k, go[k].dtype, tnumel(&go[k]), dt,
				want);
			return RDAG_EINVAL;
		}
	}
	for (uint32_t k = 0; k < ni; k++) {
		if (gi[k].data && (gi[k].dtype != dt || tnumel(&gi[k]) != n->n)) {
			bw_fail(w, __FILE__, __LINE__, "node op %d: input gradient %u of dtype %u, %zu "
				"elements (expected %u, %zu)", n->op, k, gi[k].dtype, tnumel(&gi[k]), dt,
				n->n);
			return RDAG_EINVAL;
		}
	}
	for (size_t i = 0; i < n->n; i++) {
		switch (n->op) {
		case BW_MUL: {
			double g = bw_ld(dt, go[0].data, i);

			if (gi[0].data)
				bw_st(dt, gi[0].data, i, g * bw_ld(dt, n->in[1], i));
			if (gi[1].data)
				bw_st(dt, gi[1].data, i, g * bw_ld(dt, n->in[0], i));
			break;
		}
		case BW_SUM:
		case BW_SUM2:
			for (uint32_t k = 0; k < ni; k++)
				if (gi[k].data)
					bw_st(dt, gi[k].data, i, bw_ld(dt, go[0].data, 0));
			break;
		case BW_PAIR: {
			double g1 = bw_ld(dt, go[0].data, i), g2 = bw_ld(dt, go[1].data, i), t;

			/* y1 = a * b, y2 = a + b: each product rounded to the dtype before the sum */
			if (gi[0].data) {
				bw_st(dt, gi[0].data, i, g1 * bw_ld(dt, n->in[1], i));
				t = bw_ld(dt, gi[0].data, i);
				bw_st(dt, gi[0].data, i, t + g2);
			}
			if (gi[1].data) {
				bw_st(dt, gi[1].data, i, g1 * bw_ld(dt, n->in[0], i));
				t = bw_ld(dt, gi[1].data, i);
				bw_st(dt, gi[1].data, i, t + g2);
			}
			break;
		}
		default:
			return RDAG_EINVAL;
		}
	}
	return 0;
}

int bw_op(struct bw_worker *w, int op, const struct rdag_tensor *in, uint32_t nin, struct rdag_tensor *out,
	  struct bw_node **np)
{
	uint32_t want_in = op == BW_SUM ? 1 : 2, nout = op == BW_PAIR ? 2 : 1;
	uint8_t dt = in[0].dtype;
	size_t n = tnumel(&in[0]), es = rdag_dtype_size(dt);
	bool rg = false;
	struct bw_node *nd;
	void *node = NULL;
	int rc;

	if (nin != want_in || (dt != RDAG_F32 && dt != RDAG_F64))
		return RDAG_EINVAL;
	for (uint32_t k = 0; k < nin; k++) {
		if (in[k].dtype != dt || tnumel(&in[k]) != n)
			return RDAG_EINVAL;
		rg |= in[k].requires_grad;
	}
	nd = calloc(1, sizeof(*nd));
	if (!nd)
		return RDAG_ENOMEM;
	nd->w = w;
	nd->op = op;
	nd->dtype = dt;
	nd->n = n;
	if (op == BW_MUL || op == BW_PAIR) {
		for (uint32_t k = 0; k < 2; k++) {
			nd->in[k] = malloc(n ? n * es : 1);
			if (!nd->in[k]) {
				free(nd->in[0]);
				free(nd);
				return RDAG_ENOMEM;
			}
			memcpy(nd->in[k], in[k].data, n * es);
		}
	}
	/* forward */
	for (uint32_t k = 0; k < nout; k++) {
		void *d = out[k].data;

		if (op == BW_SUM || op == BW_SUM2)
			rdag_tensor_init(&out[k], d, dt, 0, NULL);
		else
			rdag_tensor_init(&out[k], d, dt, in[0].ndim, in[0].shape);
	}
	switch (op) {
	case BW_MUL:
		for (size_t i = 0; i < n; i++)
			bw_st(dt, out[0].data, i, bw_ld(dt, in[0].data, i) * bw_ld(dt, in[1].data, i));
		break;
	case BW_SUM:
	case BW_SUM2: {
		double s = 0;

		for (uint32_t k = 0; k < nin; k++)
			for (size_t i = 0; i < n; i++)
				s += bw_ld(dt, in[k].data, i);
		bw_st(dt, out[0].data, 0, s);
		break;
	}
	case BW_PAIR:
		for (size_t i = 0; i < n; i++) {
			double a = bw_ld(dt, in[0].data, i), b = bw_ld(dt, in[1].data, i);

			bw_st(dt, out[0].data, i, a * b);
			bw_st(dt, out[1].data, i, a + b);
		}
		break;
	default: break;
	}
	rc = rdag_graph_node(w->g, node_bwd, nd, in, nin, out, nout, &node);
	if (rc) {
		free(nd->in[0]);
		free(nd->in[1]);
		free(nd);
		return rc;
	}
	pthread_mutex_lock(&w->lock);
	nd->next = w->nodes;
	w->nodes = nd;
	pthread_mutex_unlock(&w->lock);
	for (uint32_t k = 0; k < nout; k++) {
		out[k].requires_grad = rg;
		out[k].grad_kind = rg ? RDAG_GRAD_NODE : RDAG_GRAD_NONE;
		out[k].grad_fn.node = rg ? node : NULL;
		out[k].grad_fn.input_nr = k;
	}
	if (np)
		*np = nd;
	return 0;
}

/* ---- served functions ----------------------------------------------------------------------- */

void bw_ctl_init(struct bw_ctl *c, unsigned which)
{
	memset(c, 0, sizeof(*c));
	c->magic = BW_CTL_MAGIC;
	c->which = (uint16_t)which;
}

static int get_ctl(const struct rdag_msg *in, rdag_reply_t *out, struct bw_ctl *c, const char *fn)
{
	if (in->payload_len != sizeof(*c))
		return rdag_reply_error(out, RDAG_EINVAL, "%s: %zu payload bytes", fn, in->payload_len);
	memcpy(c, in->payload, sizeof(*c));
	if (c->magic != BW_CTL_MAGIC || c->nhops > BW_MAXHOPS)
		return rdag_reply_error(out, RDAG_EINVAL, "%s: bad control block", fn);
	return 0;
}

static bool float_tensor(const struct rdag_tensor *t)
{
	return t->dtype == RDAG_F32 || t->dtype == RDAG_F64;
}

/* Appends a copy of t (data in reply memory, autograd fields as t's). */
static int reply_copy(rdag_reply_t *out, const struct rdag_tensor *t)
{
	size_t nb = rdag_tensor_nbytes(t);
	struct rdag_tensor c = *t;

	c.data = rdag_reply_alloc(out, nb ? nb : 1);
	if (!c.data)
		return RDAG_ENOMEM;
	memcpy(c.data, t->data, nb);
	return rdag_reply_tensor(out, &c);
}

/*
 * "chain": y = x * w (this worker's weight), forwarded to the next hop if any; returns the last
 * hop's product (what came back, as a copy keeping its autograd edge: the recv function).
 */
static int fn_chain(void *arg, const struct rdag_caller *who, const struct rdag_msg *in, rdag_reply_t *out)
{
	struct bw_worker *w = arg;
	struct rdag_tensor io[2], y;
	struct bw_weight *wt;
	struct bw_node *nd = NULL;
	struct bw_ctl ctl;
	size_t nb;
	int rc;

	atomic_fetch_add(&w->fwd_calls, 1);
	if ((rc = get_ctl(in, out, &ctl, "chain")))
		return rc;
	if (!who->has_context)
		return rdag_reply_error(out, RDAG_EINVAL, "chain: called without an autograd context");
	if (in->ntensors < 1 || !float_tensor(&in->tensors[0]))
		return rdag_reply_error(out, RDAG_EINVAL, "chain: wants an f32 or f64 tensor");
	io[0] = in->tensors[0];
	if (io[0].requires_grad && io[0].grad_kind != RDAG_GRAD_RECV)
		return rdag_reply_error(out, RDAG_EINVAL, "chain: x from %u arrived with grad_kind %u",
					who->worker, io[0].grad_kind);
	wt = bw_weight(w, io[0].dtype, tnumel(&io[0]), ctl.which);
	if (!wt)
		return rdag_reply_error(out, RDAG_ENOMEM, "chain: no weight");
	bw_weight_tensor(&io[1], wt, &io[0]);
	nb = rdag_tensor_nbytes(&io[0]);
	y.data = ctl.nhops ? malloc(nb ? nb : 1) : rdag_reply_alloc(out, nb ? nb : 1);
	if (!y.data)
		return rdag_reply_error(out, RDAG_ENOMEM, "chain: no memory");
	rc = bw_op(w, BW_MUL, io, 2, &y, &nd);
	if (rc) {
		if (ctl.nhops)
			free(y.data);
		return rdag_reply_error(out, rc, "chain: bw_op failed");
	}
	nd->fail = ctl.fail_at == 1;
	nd->block = ctl.block_at == 1 ? ctl.block : BW_BLOCK_NONE;
	nd->gate_ctx = ctl.gate_ctx;
	nd->gate_rank = ctl.gate_rank;
	if (!ctl.nhops)
		return rdag_reply_tensor(out, &y);
	{
		struct bw_ctl next = ctl;
		struct rdag_msg args = {.payload = &next, .payload_len = sizeof(next), .tensors = &y,
					.ntensors = 1}, res;
		rdag_future_t *f = NULL;

		next.nhops--;
		memmove(next.hops, ctl.hops + 1, sizeof(next.hops) - sizeof(next.hops[0]));
		next.fail_at = ctl.fail_at ? (uint16_t)(ctl.fail_at - 1) : 0;
		next.block_at = ctl.block_at ? (uint16_t)(ctl.block_at - 1) : 0;
		rc = rdag_rpc_sync(w->a, ctl.hops[0], "chain", &args, NULL, &f);
		free(y.data); /* the call has completed: its tensor is no longer read */
		if (rc) {
			char text[1024];

			snprintf(text, sizeof(text), "%s", rdag_last_error());
			return rdag_reply_error(out, rc, "%s", text);
		}
		rc = rdag_future_result(f, &res);
		if (rc == 0 && (res.ntensors != 1 || res.tensors[0].grad_kind != RDAG_GRAD_RECV))
			rc = rdag_reply_error(out, RDAG_EINVAL, "chain: hop %u returned %u tensors (kind %u)",
					      ctl.hops[0], res.ntensors,
					      res.ntensors ? res.tensors[0].grad_kind : 0);
		else if (rc == 0)
			rc = reply_copy(out, &res.tensors[0]);
		rdag_future_free(f);
		return rc;
	}
}

/* The constant of "leafret" and "rref_make" when the call has no tensor: shape and seed from ctl. */
static void *make_const(struct bw_worker *w, const struct bw_ctl *ctl, struct rdag_tensor *t)
{
	size_t n = bw_numel(&ctl->shape);
	void *p = bw_vals(w, ctl->shape.dtype, n);

	if (p)
		bw_fill_x(ctl->shape.dtype, p, n, ctl->seed, false);
	bw_tensor(t, p, &ctl->shape);
	return p;
}

/*
 * "leafret": the only leaves are the callee's. Returns [w * c (this worker's node over its weight
 * `which`), v (its weight `which + 1` itself, a leaf)]; c is the received tensor 0 (not requiring
 * grad) or, without tensors, a constant of ctl.shape and ctl.seed.
 */
static int fn_leafret(void *arg, const struct rdag_caller *who, const struct rdag_msg *in, rdag_reply_t *out)
{
	struct bw_worker *w = arg;
	struct rdag_tensor io[2], y, v;
	struct bw_weight *wt, *vt;
	struct bw_ctl ctl;
	void *own = NULL;
	int rc;

	if ((rc = get_ctl(in, out, &ctl, "leafret")))
		return rc;
	if (!who->has_context)
		return rdag_reply_error(out, RDAG_EINVAL, "leafret: called without an autograd context");
	if (in->ntensors) {
		io[1] = in->tensors[0];
		if (io[1].requires_grad || !float_tensor(&io[1]))
			return rdag_reply_error(out, RDAG_EINVAL, "leafret: wants a constant f32/f64 tensor");
	} else {
		own = make_const(w, &ctl, &io[1]);
		if (!own)
			return rdag_reply_error(out, RDAG_ENOMEM, "leafret: no memory");
	}
	wt = bw_weight(w, io[1].dtype, tnumel(&io[1]), ctl.which);
	vt = bw_weight(w, io[1].dtype, tnumel(&io[1]), ctl.which + 1u);
	if (!wt || !vt) {
		free(own);
		return rdag_reply_error(out, RDAG_ENOMEM, "leafret: no weight");
	}
	bw_weight_tensor(&io[0], wt, &io[1]);
	y.data = rdag_reply_alloc(out, rdag_tensor_nbytes(&io[1]) + 8);
	rc = y.data ? bw_op(w, BW_MUL, io, 2, &y, NULL) : RDAG_ENOMEM;
	free(own);
	if (rc)
		return rdag_reply_error(out, rc, "leafret: bw_op failed");
	bw_weight_tensor(&v, vt, &io[1]); /* persistent memory: returned without a copy */
	rc = rdag_reply_tensor(out, &y);
	if (!rc)
		rc = rdag_reply_tensor(out, &v);
	return rc ? rdag_reply_error(out, rc, "leafret: rdag_reply_tensor failed") : 0;
}

/* "pair": one node with two outputs, y1 = x * w and y2 = x + w. */
static int fn_pair(void *arg, const struct rdag_caller *who, const struct rdag_msg *in, rdag_reply_t *out)
{
	struct bw_worker *w = arg;
	struct rdag_tensor io[2], y[2];
	struct bw_weight *wt;
	struct bw_ctl ctl;
	size_t nb;
	int rc;

	(void)who;
	if ((rc = get_ctl(in, out, &ctl, "pair")))
		return rc;
	if (in->ntensors != 1 || !float_tensor(&in->tensors[0]))
		return rdag_reply_error(out, RDAG_EINVAL, "pair: wants one f32 or f64 tensor");
	io[0] = in->tensors[0];
	wt = bw_weight(w, io[0].dtype, tnumel(&io[0]), ctl.which);
	if (!wt)
		return rdag_reply_error(out, RDAG_ENOMEM, "pair: no weight");
	bw_weight_tensor(&io[1], wt, &io[0]);
	nb = rdag_tensor_nbytes(&io[0]);
	y[0].data = rdag_reply_alloc(out, nb ? nb : 1);
	y[1].data = rdag_reply_alloc(out, nb ? nb : 1);
	if (!y[0].data || !y[1].data)
		return rdag_reply_error(out, RDAG_ENOMEM, "pair: no memory");
	rc = bw_op(w, BW_PAIR, io, 2, y, NULL);
	if (!rc)
		rc = rdag_reply_tensor(out, &y[0]);
	if (!rc)
		rc = rdag_reply_tensor(out, &y[1]);
	return rc ? rdag_reply_error(out, rc, "pair: failed (%d)", rc) : 0;
}

/*
 * "rref_make": a scalar s = sum(y * w) (this worker's nodes over its weight `which`), where y is
 * the received constant c, or, with a hop, what "chain" on hops[0] returns for c (so the value
 * depends on that worker's weight too). Meant for rdag_remote: the owner keeps s.
 */
static int fn_rref_make(void *arg, const struct rdag_caller *who, const struct rdag_msg *in,
			rdag_reply_t *out)
{
	struct bw_worker *w = arg;
	struct rdag_tensor io[2], z, s;
	rdag_future_t *f = NULL;
	struct bw_weight *wt;
	struct bw_ctl ctl;
	size_t nb;
	int rc;

	if ((rc = get_ctl(in, out, &ctl, "rref_make")))
		return rc;
	if (!who->has_context)
		return rdag_reply_error(out, RDAG_EINVAL, "rref_make: called without an autograd context");
	if (in->ntensors != 1 || !float_tensor(&in->tensors[0]) || in->tensors[0].requires_grad)
		return rdag_reply_error(out, RDAG_EINVAL, "rref_make: wants one constant f32/f64 tensor");
	io[0] = in->tensors[0];
	if (ctl.nhops) {
		struct bw_ctl next = ctl;
		struct rdag_msg args = {.payload = &next, .payload_len = sizeof(next), .tensors = in->tensors,
					.ntensors = 1}, res;

		next.nhops = 0;
		rc = rdag_rpc_sync(w->a, ctl.hops[0], "chain", &args, NULL, &f);
		if (rc) {
			char text[1024];

			snprintf(text, sizeof(text), "%s", rdag_last_error());
			return rdag_reply_error(out, rc, "%s", text);
		}
		rc = rdag_future_result(f, &res);
		if (rc || res.ntensors != 1 || res.tensors[0].grad_kind != RDAG_GRAD_RECV) {
			rdag_future_free(f);
			return rdag_reply_error(out, RDAG_EINVAL, "rref_make: hop %u returned no RECV tensor",
						ctl.hops[0]);
		}
		io[0] = res.tensors[0];
	}
	wt = bw_weight(w, io[0].dtype, tnumel(&io[0]), ctl.which);
	nb = rdag_tensor_nbytes(&io[0]);
	z.data = malloc(nb ? nb : 1);
	s.data = rdag_reply_alloc(out, 8);
	rc = wt && z.data && s.data ? 0 : RDAG_ENOMEM;
	if (!rc) {
		bw_weight_tensor(&io[1], wt, &io[0]);
		rc = bw_op(w, BW_MUL, io, 2, &z, NULL);
	}
	if (!rc)
		rc = bw_op(w, BW_SUM, &z, 1, &s, NULL);
	free(z.data);
	rdag_future_free(f);
	if (!rc)
		rc = rdag_reply_tensor(out, &s);
	return rc ? rdag_reply_error(out, rc, "rref_make: failed (%d)", rc) : 0;
}

/* "peek": the gradient of one of this worker's weights in a context, and how many there are. */
static int fn_peek(void *arg, const struct rdag_caller *who, const struct rdag_msg *in, rdag_reply_t *out)
{
	struct bw_worker *w = arg;
	struct bw_peek_resp resp;
	struct bw_peek_req req;
	struct rdag_grad g[BW_MAXEXP * 2];
	struct bw_weight *wt;
	size_t n = 0;
	int rc;

	if (who->has_context)
		return rdag_reply_error(out, RDAG_EINVAL, "peek: must be called plain");
	if (in->payload_len != sizeof(req))
		return rdag_reply_error(out, RDAG_EINVAL, "peek: %zu payload bytes", in->payload_len);
	memcpy(&req, in->payload, sizeof(req));
	memset(&resp, 0, sizeof(resp));
	wt = bw_weight(w, req.dtype, req.n, req.which);
	resp.rc = rdag_ctx_grads(w->a, req.ctx, g, sizeof(g) / sizeof(g[0]), &n);
	resp.count = (uint32_t)n;
	for (size_t i = 0; resp.rc == 0 && wt && i < n && i < sizeof(g) / sizeof(g[0]); i++) {
		if (g[i].var != &wt->key)
			continue;
		resp.found = 1;
		rc = reply_copy(out, &g[i].grad);
		if (rc)
			return rdag_reply_error(out, rc, "peek: cannot copy the gradient");
		break;
	}
	return rdag_reply_payload(out, &resp, sizeof(resp));
}

/* The backward of "twin"'s nodes, which the engine must never call (RDAG_NODE_IDENTITY). */
static int twin_bwd(void *arg, const struct rdag_tensor *go, uint32_t no, struct rdag_tensor *gi,
		    uint32_t ni)
{
	struct bw_worker *w = arg;

	(void)go, (void)no, (void)gi, (void)ni;
	bw_fail(w, __FILE__, __LINE__, "twin: the engine called an identity node's backward");
	return RDAG_EINVAL;
}

/*
 * "twin": returns [x, x] through two identity nodes (RDAG_NODE_IDENTITY) over the received x: in
 * backward both gradients reach x's recv function without a node running, the first lent from
 * where it landed, the second added to a copy of it.
 */
static int fn_twin(void *arg, const struct rdag_caller *who, const struct rdag_msg *in, rdag_reply_t *out)
{
	struct bw_worker *w = arg;
	struct rdag_tensor x, y[2];
	size_t nb;
	int rc = 0;

	if (!who->has_context)
		return rdag_reply_error(out, RDAG_EINVAL, "twin: called without an autograd context");
	if (in->ntensors != 1 || !float_tensor(&in->tensors[0]) || !in->tensors[0].requires_grad)
		return rdag_reply_error(out, RDAG_EINVAL, "twin: wants one f32/f64 tensor requiring grad");
	x = in->tensors[0];
	nb = rdag_tensor_nbytes(&x);
	for (int k = 0; k < 2 && !rc; k++) {
		void *node;

		y[k] = x;
		y[k].data = rdag_reply_alloc(out, nb ? nb : 1);
		if (!y[k].data)
			return rdag_reply_error(out, RDAG_ENOMEM, "twin: no memory");
		memcpy(y[k].data, x.data, nb);
		rc = rdag_graph_node(w->g, twin_bwd, w, &x, 1, &y[k], 1, &node);
		if (!rc)
			rc = rdag_graph_node_flags(node, RDAG_NODE_IDENTITY);
		y[k].requires_grad = true;
		y[k].grad_kind = RDAG_GRAD_NODE;
		y[k].grad_fn.node = node;
		y[k].grad_fn.input_nr = 0;
	}
	for (int k = 0; k < 2 && !rc; k++)
		rc = rdag_reply_tensor(out, &y[k]);
	return rc ? rdag_reply_error(out, rc, "twin: failed (%d): %s", rc, rdag_last_error()) : 0;
}

int bw_register_all(struct bw_worker *w)
{
	static const struct mp_fn fns[] = {
		{"chain", fn_chain}, {"leafret", fn_leafret}, {"pair", fn_pair},
		{"rref_make", fn_rref_make}, {"peek", fn_peek}, {"twin", fn_twin},
	};
	const char *name = NULL;
	int rc = mp_register(w->a, fns, sizeof(fns) / sizeof(fns[0]), w, &name);

	CHECK_RC(w, rc, 0, "rdag_register(%s)", name);
	return rc;
}

int bw_peek(struct bw_worker *w, uint32_t dst, uint64_t ctx, uint8_t dtype, size_t n, unsigned which,
	    void *vals, uint32_t *count)
{
	struct bw_peek_req req = {.ctx = ctx, .n = n, .which = which, .dtype = dtype};
	struct rdag_msg args = {.payload = &req, .payload_len = sizeof(req)}, m;
	struct rdag_call_opts opts = {.flags = RDAG_CALL_PLAIN};
	struct bw_peek_resp resp;
	rdag_future_t *f = NULL;
	int rc;

	rc = rdag_rpc_sync(w->a, dst, "peek", &args, &opts, &f);
	if (rc)
		return rc;
	rc = rdag_future_result(f, &m);
	if (rc == 0 && m.payload_len != sizeof(resp))
		rc = RDAG_EINVAL;
	if (rc == 0) {
		memcpy(&resp, m.payload, sizeof(resp));
		*count = resp.count;
		if (resp.rc)
			rc = resp.rc;
		else if (!resp.found)
			rc = 1;
		else if (m.ntensors != 1 || m.tensors[0].dtype != dtype || tnumel(&m.tensors[0]) != n)
			rc = RDAG_EINVAL;
		else
			memcpy(vals, m.tensors[0].data, n * rdag_dtype_size(dtype));
	}
	rdag_future_free(f);
	return rc;
}
