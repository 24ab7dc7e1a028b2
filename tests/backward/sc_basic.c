/* Backward scenarios on the shape of a pass: chains, round trips, dtypes, unused calls, several roots, RRefs. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bwd_mp.h"

static const struct bw_shape S4 = {RDAG_F64, 1, {4, 0, 0}};
static const struct bw_shape S35 = {RDAG_F64, 2, {3, 5, 0}};
static const struct bw_shape S234 = {RDAG_F64, 3, {2, 3, 4}};

static struct bw_shape as(const struct bw_shape *s, uint8_t dtype)
{
	struct bw_shape r = *s;

	r.dtype = dtype;
	return r;
}

static uint64_t new_ctx(struct bw_worker *w)
{
	uint64_t id = ~0ull;

	CHECK_RC(w, rdag_ctx_create(w->a, &id), 0, "rdag_ctx_create");
	return id;
}

/* The creator publishes ctx; everyone meets; then each worker checks what it expects. */
static uint64_t share_ctx(struct bw_worker *w, int creator, uint64_t ctx, const char *what)
{
	if (w->rank == creator)
		bw_put(w, BW_SLOT_CTX, ctx + 1);
	bw_barrier(w, what);
	return bw_get(w, creator, BW_SLOT_CTX) - 1;
}

/* After the checks: everyone meets again, the creator releases. */
static void end_ctx(struct bw_worker *w, int creator, uint64_t ctx, const char *what)
{
	bw_barrier(w, what);
	if (w->rank == creator) {
		CHECK_RC(w, rdag_ctx_release(w->a, ctx), 0, "%s: rdag_ctx_release", what);
		bw_put(w, BW_SLOT_CTX, 0);
	}
}

/* ---- simple ------------------------------------------------------------------------------- */

void sc_simple(struct bw_worker *w)
{
	static const uint16_t to1[] = {1}, to0[] = {0};
	struct bw_chain c;
	unsigned runs0 = atomic_load(&w->node_runs);

	/* A (0) calls B (1) with its leaf x; B returns y = w_B * x; A: loss = sum(y). */
	bw_chain_init(&c, 0, &S4, to1, 1, 1);
	bw_chain_round(w, &c, "simple: 0 -> 1, f64 [4]");
	/* B's node ran once (its backward), A's sum once (read before anyone starts the next pass). */
	runs0 = atomic_load(&w->node_runs) - runs0;
	bw_barrier(w, "simple: node runs counted");
	CHECK(w, runs0 == 1, "%u node backwards ran here, expected 1", runs0);
	/* The other way round, 2-D f32. */
	bw_chain_init(&c, 1, &(struct bw_shape){RDAG_F32, 2, {3, 5, 0}}, to0, 1, 2);
	bw_chain_round(w, &c, "simple: 1 -> 0, f32 [3,5]");
}

/* ---- round_trips -------------------------------------------------------------------------- */

/*
 * Sequential calls from the caller: x to hops[0], what came back (a RECV tensor) to hops[1], and
 * so on; the loss over the last result. The same math as the nested chain over the same hops.
 */
static void sequential(struct bw_worker *w, const struct bw_chain *c, const char *what)
{
	struct bw_expset es = {.n = 0};
	rdag_future_t *f[BW_MAXHOPS] = {NULL};
	struct rdag_tensor xt, cur, loss;
	uint8_t dt = c->shape.dtype;
	size_t n = bw_numel(&c->shape);
	double loss_val = 0;
	uint64_t ctx = ~0ull;
	void *x = NULL;
	int rc = 0;

	bw_phase(w, "%s", what);
	if (w->rank == c->caller) {
		ctx = new_ctx(w);
		x = bw_vals(w, dt, n);
		if (!x)
			return;
		bw_fill_x(dt, x, n, c->xseed, c->frac);
		bw_tensor(&xt, x, &c->shape);
		bw_leaf(&xt, NULL);
		cur = xt;
		for (unsigned h = 0; h < c->nhops && rc == 0; h++) {
			struct rdag_msg args, res;
			struct bw_ctl ctl;

			bw_ctl_init(&ctl, c->which);
			args = (struct rdag_msg){.payload = &ctl, .payload_len = sizeof(ctl), .tensors = &cur,
						 .ntensors = 1};
			rc = rdag_rpc_sync(w->a, c->hops[h], "chain", &args, NULL, &f[h]);
			CHECK_RC(w, rc, 0, "%s: call %u to %u", what, h, c->hops[h]);
			if (rc == 0)
				rc = rdag_future_result(f[h], &res);
			if (rc == 0) {
				cur = res.tensors[0];
				CHECK(w, cur.grad_kind == RDAG_GRAD_RECV, "%s: result %u has grad_kind %u",
				      what, h,
				      cur.grad_kind);
			}
		}
		if (rc == 0) {
			loss.data = &loss_val;
			rc = bw_op(w, BW_SUM, &cur, 1, &loss, NULL);
			CHECK_RC(w, rc, 0, "%s: loss node", what);
		}
		if (rc == 0)
			CHECK_RC(w, rdag_backward(w->a, ctx, &loss, 1, false), 0, "%s: rdag_backward", what);
		for (unsigned h = 0; h < c->nhops; h++)
			rdag_future_free(f[h]);
	}
	ctx = share_ctx(w, c->caller, ctx, what);
	bw_chain_expect(w, c, x, &es);
	if (es.n || w->rank == c->caller)
		CHECK_GRADS(w, ctx, &es, 0, what);
	bw_expset_free(&es);
	end_ctx(w, c->caller, ctx, what);
	free(x);
}

void sc_round_trips(struct bw_worker *w)
{
	static const uint16_t aba[] = {1, 0, 1}, many3[] = {1, 2, 0, 2, 1, 0}, many2[] = {1, 0, 1, 0, 1, 0};
	int last = w->world - 1;
	uint16_t back[4] = {0, (uint16_t)last, 0, (uint16_t)last};
	struct bw_chain c, cs[BW_MAXW];

	/* A -> B -> A -> B, nested: each callee calls the next from its handler. */
	bw_chain_init(&c, 0, &S35, aba, 3, 3);
	bw_chain_round(w, &c, "round_trips: 0->1->0->1 nested");
	/* Six hops, every worker twice (weights accumulate from two local passes). */
	bw_chain_init(&c, 0, &S234, w->world >= 3 ? many3 : many2, 6, 4);
	bw_chain_round(w, &c, "round_trips: six nested hops");
	/* The last worker calls back and forth with 0, f32. */
	bw_chain_init(&c, last, &(struct bw_shape){RDAG_F32, 1, {6, 0, 0}}, back, 4, 5);
	c.frac = true;
	bw_chain_round(w, &c, "round_trips: last<->0 f32, four hops");
	/* Sequential calls, results sent on as arguments: 0 calls 1, then 2 (or 1) with that, then 1. */
	{
		uint16_t seq[3] = {1, (uint16_t)(w->world >= 3 ? 2 : 1), 1};

		bw_chain_init(&c, 0, &S35, seq, 3, 6);
		sequential(w, &c, "round_trips: sequential calls");
	}
	/* Every worker a caller at once, each chain through the others and back through itself. */
	for (int r = 0; r < w->world; r++) {
		uint16_t h[3] = {(uint16_t)((r + 1) % w->world), (uint16_t)r, (uint16_t)((r + 2) % w->world)};

		bw_chain_init(&cs[r], r, &S4, h, 3, 7 + (uint64_t)r);
		cs[r].which = (unsigned)r + 1; /* several weights per worker, one context each */
	}
	bw_chain_rounds(w, cs, (unsigned)w->world, "round_trips: every worker calling at once");
}

/* ---- dtypes_ranks ------------------------------------------------------------------------- */

void sc_dtypes_ranks(struct bw_worker *w)
{
	static const struct bw_shape shapes[] = {
		{RDAG_F64, 0, {0, 0, 0}},     {RDAG_F64, 1, {7, 0, 0}},      {RDAG_F64, 2, {3, 5, 0}},
		{RDAG_F64, 3, {2, 3, 4}},     {RDAG_F64, 2, {64, 80, 0}},    /* 40 KiB: out of line */
		{RDAG_F64, 3, {3, 512, 200}},                              /* 2.4 MB: rendezvous */
	};
	static const uint8_t dtypes[] = {RDAG_F64, RDAG_F32};
	unsigned k = 0;

	for (size_t d = 0; d < sizeof(dtypes); d++) {
		for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++, k++) {
			struct bw_shape s = as(&shapes[i], dtypes[d]);
			int caller = (int)(k % 2);
			uint16_t hops[3] = {(uint16_t)(1 - caller), (uint16_t)caller, (uint16_t)(1 - caller)};
			struct bw_chain c;
			char what[96], sh[64];

			/* Non-dyadic values: f64 is exact only because the operations run in the same order. */
			bw_chain_init(&c, caller, &s, hops, 3, 20 + k);
			c.frac = true;
			snprintf(what, sizeof(what), "dtypes_ranks: %s, %d->%d->%d->%d",
				 bw_shape_str(&s, sh, sizeof(sh)), caller, hops[0], hops[1], hops[2]);
			bw_chain_round(w, &c, what);
		}
	}
}

/* ---- unused ------------------------------------------------------------------------------- */

void sc_unused(struct bw_worker *w)
{
	static const struct bw_shape S6 = {RDAG_F64, 1, {6, 0, 0}};
	struct bw_expset es = {.n = 0};
	double x[15], xu[4], x2[6], loss_val = 0;
	struct rdag_tensor t[2], t2, loss;
	rdag_future_t *f1 = NULL, *f2 = NULL;
	unsigned runs0 = atomic_load(&w->node_runs);
	uint64_t ctx = ~0ull, t0;
	struct bw_ctl ctl;
	int rc;

	bw_phase(w, "unused: forward");
	if (w->rank == 0) {
		struct rdag_msg args, res;

		ctx = new_ctx(w);
		bw_fill_x(RDAG_F64, x, 15, 30, false);
		bw_fill_x(RDAG_F64, xu, 4, 31, false);
		bw_fill_x(RDAG_F64, x2, 6, 32, false);
		bw_tensor(&t[0], x, &S35);
		bw_leaf(&t[0], NULL);
		bw_tensor(&t[1], xu, &S4); /* sent, requires grad, but B does not use it */
		bw_leaf(&t[1], NULL);
		bw_tensor(&t2, x2, &S6);
		bw_leaf(&t2, NULL);
		bw_ctl_init(&ctl, 0);
		args = (struct rdag_msg){.payload = &ctl, .payload_len = sizeof(ctl), .tensors = t,
					 .ntensors = 2};
		rc = rdag_rpc_sync(w->a, 1, "chain", &args, NULL, &f1);
		CHECK_RC(w, rc, 0, "unused: call to 1");
		/* A call whose result never reaches the loss. */
		args.tensors = &t2;
		args.ntensors = 1;
		CHECK_RC(w, rdag_rpc_sync(w->a, 2, "chain", &args, NULL, &f2), 0, "unused: call to 2");
		if (rc == 0 && (rc = rdag_future_result(f1, &res)) == 0) {
			loss.data = &loss_val;
			rc = bw_op(w, BW_SUM, &res.tensors[0], 1, &loss, NULL);
			CHECK_RC(w, rc, 0, "unused: loss node");
		}
		if (rc == 0) {
			bw_phase(w, "unused: backward");
			t0 = mp_now_ns();
			rc = rdag_backward(w->a, ctx, &loss, 1, false);
			CHECK_RC(w, rc, 0, "unused: rdag_backward");
			CHECK(w, mp_now_ns() - t0 < 30000000000ull, "unused: rdag_backward took %llu ms",
			      (unsigned long long)((mp_now_ns() - t0) / 1000000));
		}
		rdag_future_free(f1);
		rdag_future_free(f2);
	}
	ctx = share_ctx(w, 0, ctx, "unused: backward done");
	bw_phase(w, "unused: checks");
	if (w->rank == 0) {
		double gx[15];

		for (size_t i = 0; i < 15; i++)
			gx[i] = bw_wval(1, 0, i);
		bw_expect(w, &es, x, RDAG_F64, 15, gx, "x (used by 1)");
		bw_expect(w, &es, xu, RDAG_F64, 4, NULL, "xu (sent to 1, not used there: zeros)");
		/* x2 (behind the unused call) must be absent: the count says so. */
		CHECK_GRADS(w, ctx, &es, 0, "unused: on 0");
		CHECK(w, atomic_load(&w->node_runs) == runs0 + 1,
		      "unused: %u nodes ran on 0, expected 1 (the loss)",
		      atomic_load(&w->node_runs) - runs0);
	} else if (w->rank == 1) {
		struct bw_weight *wt = bw_weight(w, RDAG_F64, 15, 0);
		double gw[15];

		bw_fill_x(RDAG_F64, gw, 15, 30, false); /* 0's x */
		if (wt)
			bw_expect(w, &es, &wt->key, RDAG_F64, 15, gw, "w of 1 (gets x)");
		CHECK_GRADS(w, ctx, &es, 0, "unused: on 1");
		CHECK(w, atomic_load(&w->node_runs) == runs0 + 1, "unused: %u nodes ran on 1, expected 1",
		      atomic_load(&w->node_runs) - runs0);
	} else if (w->rank == 2) {
		/* The context is here (the call joined it), with no gradient; its node never ran. */
		CHECK_RC(w, rdag_ctx_lookup(w->a, ctx), 0, "unused: 2 does not have the context");
		CHECK_GRADS(w, ctx, &es, 0, "unused: on 2 (nothing)");
		CHECK(w, atomic_load(&w->node_runs) == runs0,
		      "unused: %u nodes ran on 2 behind an unused call",
		      atomic_load(&w->node_runs) - runs0);
	}
	bw_expset_free(&es);
	end_ctx(w, 0, ctx, "unused: checked");
}

/* ---- multi -------------------------------------------------------------------------------- */

/*
 * x on 0 to "pair" on 1: y1 = x * w, y2 = x + w (one node); loss1 = sum(y1), loss2 = sum(y2).
 * roots: bit 0 loss1, bit 1 loss2. gx = g1 * w + g2, gw = g1 * x + g2 (g = 1 or 0).
 */
static void multi_pass(struct bw_worker *w, const struct bw_shape *s, unsigned roots, uint64_t seed,
		       const char *what)
{
	struct bw_expset es = {.n = 0};
	struct rdag_tensor xt, l[2], r[2];
	uint8_t dt = s->dtype;
	size_t n = bw_numel(s);
	double lv[2] = {0, 0};
	rdag_future_t *f = NULL;
	uint64_t ctx = ~0ull;
	void *x = bw_vals(w, dt, n), *g = bw_vals(w, dt, n);
	uint32_t nr = 0;

	if (!x || !g)
		goto out;
	bw_fill_x(dt, x, n, seed, true);
	bw_phase(w, "%s", what);
	if (w->rank == 0) {
		struct bw_ctl ctl;
		struct rdag_msg args, res;
		int rc;

		ctx = new_ctx(w);
		bw_tensor(&xt, x, s);
		bw_leaf(&xt, NULL);
		bw_ctl_init(&ctl, 3);
		args = (struct rdag_msg){.payload = &ctl, .payload_len = sizeof(ctl), .tensors = &xt,
					 .ntensors = 1};
		rc = rdag_rpc_sync(w->a, 1, "pair", &args, NULL, &f);
		CHECK_RC(w, rc, 0, "%s: pair", what);
		if (rc == 0 && (rc = rdag_future_result(f, &res)) == 0) {
			CHECK(w, res.ntensors == 2 && res.tensors[0].grad_kind == RDAG_GRAD_RECV &&
				 res.tensors[1].grad_kind == RDAG_GRAD_RECV &&
				 res.tensors[0].grad_fn.node == res.tensors[1].grad_fn.node &&
				 res.tensors[1].grad_fn.input_nr == 1,
			      "%s: the two outputs are not edges 0 and 1 of one recv function", what);
			for (int k = 0; k < 2 && rc == 0; k++) {
				l[k].data = &lv[k];
				rc = bw_op(w, BW_SUM, &res.tensors[k], 1, &l[k], NULL);
				if (roots & (1u << k))
					r[nr++] = l[k];
			}
			CHECK_RC(w, rc, 0, "%s: loss nodes", what);
			if (rc == 0)
				CHECK_RC(w, rdag_backward(w->a, ctx, r, nr, false), 0,
					 "%s: rdag_backward (%u roots)",
					 what, nr);
		}
		rdag_future_free(f);
	}
	ctx = share_ctx(w, 0, ctx, what);
	{
		double g1 = roots & 1 ? 1 : 0, g2 = roots & 2 ? 1 : 0;
		/* the other input of the node: w for x's gradient, x for w's */
		for (size_t i = 0; i < n; i++) {
			double wv = dt == RDAG_F32 ? (double)(float)bw_wval(1, 3, i) : bw_wval(1, 3, i);
			double other = w->rank == 0 ? wv : bw_ld(dt, x, i);

			bw_st(dt, g, i, g1 * other);
			bw_st(dt, g, i, bw_ld(dt, g, i) + g2);
		}
	}
	if (w->rank == 0) {
		bw_expect(w, &es, x, dt, n, g, "x");
		CHECK_GRADS(w, ctx, &es, 0, what);
	} else if (w->rank == 1) {
		struct bw_weight *wt = bw_weight(w, dt, n, 3);

		if (wt)
			bw_expect(w, &es, &wt->key, dt, n, g, "w of 1");
		CHECK_GRADS(w, ctx, &es, 0, what);
	}
	bw_expset_free(&es);
	end_ctx(w, 0, ctx, what);
out:
	free(x);
	free(g);
}

void sc_multi(struct bw_worker *w)
{
	multi_pass(w, &S35, 3, 40, "multi: two outputs, two roots (f64 [3,5])");
	multi_pass(w, &S35, 1, 41, "multi: only loss1 (loss2's input gets zeros)");
	multi_pass(w, &(struct bw_shape){RDAG_F32, 3, {2, 3, 4}}, 2, 42, "multi: only loss2 (f32 [2,3,4])");
	multi_pass(w, &(struct bw_shape){RDAG_F32, 1, {9, 0, 0}}, 3, 43, "multi: two roots (f32 [9])");
	/* Roots of two different calls (to 1 and back to 0 itself) in one rdag_backward. */
	{
		struct bw_chain cs[2];
		static const uint16_t h1[] = {1}, h0[] = {0};
		struct bw_shape s35f = as(&S35, RDAG_F32);

		if (w->rank == 0) {
			struct bw_expset es = {.n = 0}, e1 = {.n = 0};
			struct bw_fwd f1, f2;
			struct rdag_tensor roots[2];
			uint64_t ctx = new_ctx(w);
			int rc;

			bw_chain_init(&cs[0], 0, &S4, h1, 1, 44);
			bw_chain_init(&cs[1], 0, &s35f, h0, 1, 45);
			bw_phase(w, "multi: roots of two calls");
			rc = bw_fwd_run(w, &cs[0], NULL, &f1, NULL);
			CHECK_RC(w, rc, 0, "multi: call to 1");
			rc |= bw_fwd_run(w, &cs[1], NULL, &f2, NULL);
			CHECK(w, rc == 0, "multi: call to itself failed");
			if (rc == 0) {
				roots[0] = f1.loss;
				roots[1] = f2.loss;
				CHECK_RC(w, rdag_backward(w->a, ctx, roots, 2, false), 0,
					 "multi: two calls' roots");
			}
			/* here: x1, x2 and this worker's own f32 [3,5] weight (hop of chain 2) */
			bw_chain_expect(w, &cs[0], f1.x, &es);
			bw_chain_expect(w, &cs[1], f2.x, &e1);
			for (unsigned k = 0; k < e1.n; k++)
				bw_expect(w, &es, e1.e[k].key, e1.e[k].dtype, e1.e[k].n, e1.e[k].vals,
					  e1.e[k].what);
			CHECK_GRADS(w, ctx, &es, 0, "multi: roots of two calls, on 0");
			bw_expset_free(&es);
			bw_expset_free(&e1);
			bw_fwd_free(&f1);
			bw_fwd_free(&f2);
			bw_put(w, BW_SLOT_CTX, ctx + 1);
		}
		bw_barrier(w, "multi: roots of two calls");
		if (w->rank == 1) {
			struct bw_expset es = {.n = 0};
			uint64_t ctx = bw_get(w, 0, BW_SLOT_CTX) - 1;

			bw_chain_init(&cs[0], 0, &S4, h1, 1, 44);
			bw_chain_expect(w, &cs[0], NULL, &es);
			CHECK_GRADS(w, ctx, &es, 0, "multi: roots of two calls, on 1");
			bw_expset_free(&es);
		}
		end_ctx(w, 0, bw_get(w, 0, BW_SLOT_CTX) - 1, "multi: roots of two calls checked");
	}
}

/* ---- local_only --------------------------------------------------------------------------- */

/* x (leaf) * w (leaf) = y; y * w = z; loss = sum(z); s a scalar leaf as a second root. No RPC. */
static void local_pass(struct bw_worker *w, const struct bw_shape *s, uint64_t seed, const char *what)
{
	struct bw_expset es = {.n = 0};
	struct rdag_tensor in[2], y, z, loss, st, roots[2];
	uint8_t dt = s->dtype;
	size_t n = bw_numel(s), nk = 0;
	struct bw_weight *wt = bw_weight(w, dt, n, 7);
	void *x = bw_vals(w, dt, n), *yv = bw_vals(w, dt, n), *zv = bw_vals(w, dt, n);
	void *gx = bw_vals(w, dt, n), *gw = bw_vals(w, dt, n);
	double lv = 0, sv = 0;
	uint64_t ctx;
	int rc;

	if (!wt || !x || !yv || !zv || !gx || !gw)
		goto out;
	bw_phase(w, "%s", what);
	ctx = new_ctx(w);
	bw_fill_x(dt, x, n, seed, true);
	bw_tensor(&in[0], x, s);
	bw_leaf(&in[0], NULL);
	bw_weight_tensor(&in[1], wt, &in[0]);
	y.data = yv;
	rc = bw_op(w, BW_MUL, in, 2, &y, NULL);
	in[0] = y;
	z.data = zv;
	if (!rc)
		rc = bw_op(w, BW_MUL, in, 2, &z, NULL);
	loss.data = &lv;
	if (!rc)
		rc = bw_op(w, BW_SUM, &z, 1, &loss, NULL);
	CHECK_RC(w, rc, 0, "%s: local nodes", what);
	rdag_tensor_init(&st, &sv, dt, 0, NULL);
	bw_st(dt, &sv, 0, 2.5);
	bw_leaf(&st, NULL);
	roots[0] = loss;
	roots[1] = st; /* a leaf as a root: its gradient is the seed, 1 */
	if (!rc)
		CHECK_RC(w, rdag_backward(w->a, ctx, roots, 2, false), 0, "%s: rdag_backward", what);
	/* gz = 1: gy = w, gw = y; then gx = gy * w, gw += gy * x */
	for (size_t i = 0; i < n; i++) {
		double wv = bw_ld(dt, wt->data, i), t;

		bw_st(dt, gx, i, wv * wv);
		bw_st(dt, gw, i, wv * bw_ld(dt, x, i));
		t = bw_ld(dt, gw, i);
		bw_st(dt, gw, i, bw_ld(dt, yv, i) + t);
	}
	bw_expect(w, &es, x, dt, n, gx, "x");
	bw_expect(w, &es, &wt->key, dt, n, gw, "w (used twice)");
	{
		double one = 0;

		bw_st(dt, &one, 0, 1.0);
		bw_expect(w, &es, &sv, dt, 1, &one, "s (a root)");
	}
	CHECK_GRADS(w, ctx, &es, 0, what);
	CHECK_RC(w, rdag_ctx_known_workers(w->a, ctx, NULL, 0, &nk), 0, "%s: known workers", what);
	CHECK(w, nk == 0, "%s: a local pass has %zu known workers", what, nk);
	CHECK_RC(w, rdag_ctx_send_fns(w->a, ctx, NULL, 0, &nk), 0, "%s: send functions", what);
	CHECK(w, nk == 0, "%s: a local pass has %zu send functions", what, nk);
	CHECK_RC(w, rdag_ctx_release(w->a, ctx), 0, "%s: rdag_ctx_release", what);
out:
	bw_expset_free(&es);
	free(x);
	free(yv);
	free(zv);
	free(gx);
	free(gw);
}

void sc_local_only(struct bw_worker *w)
{
	unsigned calls0 = atomic_load(&w->fwd_calls);
	struct bw_shape s234f = as(&S234, RDAG_F32);

	local_pass(w, &S35, 50 + (uint64_t)w->rank, "local_only: f64 [3,5]");
	local_pass(w, &s234f, 60 + (uint64_t)w->rank, "local_only: f32 [2,3,4]");
	local_pass(w, &(struct bw_shape){RDAG_F64, 1, {1000, 0, 0}}, 70, "local_only: f64 [1000]");
	CHECK(w, atomic_load(&w->fwd_calls) == calls0, "local_only: a function was called");
	bw_barrier(w, "local_only: done");
}

/* ---- grad_on_return ----------------------------------------------------------------------- */

/*
 * 0 calls "leafret" on 1 (with the constant c, or without tensors): the results are 1's node over
 * its weight and 1's other weight itself; 0 sums both. The gradients land on 1 only.
 */
static void on_return(struct bw_worker *w, const struct bw_shape *s, bool send_c, uint64_t seed,
		      const char *what)
{
	struct bw_expset es = {.n = 0};
	uint8_t dt = s->dtype;
	size_t n = bw_numel(s);
	void *c = bw_vals(w, dt, n);
	uint64_t ctx = ~0ull;

	if (!c)
		return;
	bw_fill_x(dt, c, n, seed, false);
	bw_phase(w, "%s", what);
	if (w->rank == 0) {
		struct rdag_tensor ct, loss;
		struct rdag_msg args, res;
		rdag_future_t *f = NULL;
		struct bw_ctl ctl;
		double lv = 0;
		size_t nf = 9;
		int rc;

		ctx = new_ctx(w);
		bw_tensor(&ct, c, s); /* a constant: does not require grad */
		bw_ctl_init(&ctl, 2);
		ctl.shape = *s;
		ctl.seed = seed;
		args = (struct rdag_msg){.payload = &ctl, .payload_len = sizeof(ctl),
					 .tensors = send_c ? &ct : NULL,
					 .ntensors = send_c ? 1 : 0};
		rc = rdag_rpc_sync(w->a, 1, "leafret", &args, NULL, &f);
		CHECK_RC(w, rc, 0, "%s: leafret", what);
		/* nothing here requires grad: no send function for the call */
		CHECK_RC(w, rdag_ctx_send_fns(w->a, ctx, NULL, 0, &nf), 0, "%s: send functions", what);
		CHECK(w, nf == 0, "%s: %zu send functions for a call without tensors requiring grad", what,
		      nf);
		if (rc == 0 && (rc = rdag_future_result(f, &res)) == 0) {
			CHECK(w, res.ntensors == 2 && res.tensors[0].grad_kind == RDAG_GRAD_RECV &&
				 res.tensors[1].grad_kind == RDAG_GRAD_RECV,
			      "%s: results are not RECV tensors", what);
			loss.data = &lv;
			rc = bw_op(w, BW_SUM2, res.tensors, 2, &loss, NULL);
			CHECK_RC(w, rc, 0, "%s: loss node", what);
			if (rc == 0)
				CHECK_RC(w, rdag_backward(w->a, ctx, &loss, 1, false), 0, "%s: rdag_backward",
					 what);
		}
		rdag_future_free(f);
	}
	ctx = share_ctx(w, 0, ctx, what);
	if (w->rank == 1) {
		struct bw_weight *wt = bw_weight(w, dt, n, 2), *vt = bw_weight(w, dt, n, 3);
		void *ones = bw_vals(w, dt, n);

		for (size_t i = 0; ones && i < n; i++)
			bw_st(dt, ones, i, 1.0);
		if (wt && vt && ones) {
			bw_expect(w, &es, &wt->key, dt, n, c, "w of 1 (gets c)");
			bw_expect(w, &es, &vt->key, dt, n, ones, "v of 1 (returned itself: ones)");
		}
		free(ones);
	}
	if (w->rank <= 1)
		CHECK_GRADS(w, ctx, &es, 0, what); /* on 0: none at all */
	bw_expset_free(&es);
	end_ctx(w, 0, ctx, what);
	free(c);
}

void sc_grad_on_return(struct bw_worker *w)
{
	struct bw_shape s234f = as(&S234, RDAG_F32);

	on_return(w, &S35, true, 80, "grad_on_return: constant sent, f64 [3,5]");
	on_return(w, &s234f, false, 81, "grad_on_return: no tensors sent, f32 [2,3,4]");
	on_return(w, &S4, false, 82, "grad_on_return: no tensors sent, f64 [4]");
}

/* ---- identity ----------------------------------------------------------------------------- */

/*
 * x (a leaf of 0) goes to 1, which returns [x, x] through identity nodes; loss = sum of both.
 * x's gradient is 2 everywhere: worker 1's part of the pass runs no node, lends the first gradient
 * from where it landed (inline, an arena slot, a rendezvous buffer, by size) and copies it before
 * adding the second.
 */
static void twin(struct bw_worker *w, const struct bw_shape *s, uint64_t seed, const char *what)
{
	struct bw_expset es = {.n = 0};
	uint8_t dt = s->dtype;
	size_t n = bw_numel(s);
	uint64_t ctx = ~0ull;
	void *x = NULL;

	bw_phase(w, "%s", what);
	if (w->rank == 0) {
		struct rdag_tensor xt, loss;
		struct rdag_msg args, res;
		rdag_future_t *f = NULL;
		double lv = 0;
		int rc;

		ctx = new_ctx(w);
		x = bw_vals(w, dt, n);
		if (x) {
			bw_fill_x(dt, x, n, seed, true);
			bw_tensor(&xt, x, s);
			bw_leaf(&xt, NULL);
			args = (struct rdag_msg){.tensors = &xt, .ntensors = 1};
			rc = rdag_rpc_sync(w->a, 1, "twin", &args, NULL, &f);
			CHECK_RC(w, rc, 0, "%s: twin", what);
			if (rc == 0 && (rc = rdag_future_result(f, &res)) == 0) {
				CHECK(w, res.ntensors == 2 && res.tensors[0].grad_kind == RDAG_GRAD_RECV &&
					 res.tensors[1].grad_kind == RDAG_GRAD_RECV,
				      "%s: results are not two RECV tensors", what);
				loss.data = &lv;
				rc = bw_op(w, BW_SUM2, res.tensors, 2, &loss, NULL);
				CHECK_RC(w, rc, 0, "%s: loss node", what);
				if (rc == 0)
					CHECK_RC(w, rdag_backward(w->a, ctx, &loss, 1, false), 0,
						 "%s: rdag_backward", what);
			}
			rdag_future_free(f);
		}
	}
	ctx = share_ctx(w, 0, ctx, what);
	if (w->rank == 0 && x) {
		void *two = bw_expect(w, &es, x, dt, n, NULL, "x of 0 (twice through identities)");

		for (size_t i = 0; two && i < n; i++)
			bw_st(dt, two, i, 2.0);
	}
	if (w->rank <= 1)
		CHECK_GRADS(w, ctx, &es, 0, what); /* on 1: none at all */
	bw_expset_free(&es);
	end_ctx(w, 0, ctx, what);
	free(x);
}

void sc_identity(struct bw_worker *w)
{
	static const struct bw_shape small = {RDAG_F64, 2, {3, 5, 0}};
	static const struct bw_shape slot = {RDAG_F32, 1, {64 << 10, 0, 0}};     /* 256 KiB */
	static const struct bw_shape rdv = {RDAG_F32, 2, {768, 1024, 0}};        /* 3 MiB */

	twin(w, &small, 90, "identity: f64 [3,5], inline");
	twin(w, &slot, 91, "identity: f32 [65536], an arena slot");
	twin(w, &rdv, 92, "identity: f32 [768,1024], rendezvous");
}

/* ---- rref --------------------------------------------------------------------------------- */

/*
 * 0 makes an RRef on owner with "rref_make" (s = sum(y * w_owner), y = c or, with via >= 0,
 * c * w_via computed on via), then runs rdag_rref_backward on it. Gradients: owner's w gets y,
 * via's w gets w_owner * c.
 */
static void rref_pass(struct bw_worker *w, int owner, int via, const struct bw_shape *s, uint64_t seed,
		      unsigned which, const char *what)
{
	struct bw_expset es = {.n = 0};
	uint8_t dt = s->dtype;
	size_t n = bw_numel(s);
	void *c = bw_vals(w, dt, n), *y = bw_vals(w, dt, n), *g = bw_vals(w, dt, n);
	struct rdag_rref r = {0, 0};
	uint64_t ctx = ~0ull;

	if (!c || !y || !g)
		goto out;
	bw_fill_x(dt, c, n, seed, true);
	bw_phase(w, "%s", what);
	if (w->rank == 0) {
		struct rdag_tensor ct;
		struct rdag_msg args;
		struct bw_ctl ctl;
		int rc;

		ctx = new_ctx(w);
		bw_tensor(&ct, c, s);
		bw_ctl_init(&ctl, which);
		if (via >= 0) {
			ctl.nhops = 1;
			ctl.hops[0] = (uint16_t)via;
		}
		args = (struct rdag_msg){.payload = &ctl, .payload_len = sizeof(ctl), .tensors = &ct,
					 .ntensors = 1};
		rc = rdag_remote(w->a, (uint32_t)owner, "rref_make", &args, NULL, &r);
		CHECK_RC(w, rc, 0, "%s: rdag_remote on %d", what, owner);
		if (rc == 0) {
			CHECK(w, r.owner == owner, "%s: RRef owned by %u", what, r.owner);
			rc = rdag_rref_backward(w->a, ctx, &r, false);
			CHECK_RC(w, rc, 0, "%s: rdag_rref_backward", what);
		}
		bw_put(w, BW_SLOT_CTX2, rc == 0 ? 1 : 0);
	}
	ctx = share_ctx(w, 0, ctx, what);
	/* y = c, or c * w_via */
	for (size_t i = 0; i < n; i++) {
		double wv = via >= 0 ? bw_wval(via, which, i) : 1.0;

		wv = dt == RDAG_F32 ? (double)(float)wv : wv;
		bw_st(dt, y, i, bw_ld(dt, c, i) * wv);
	}
	if (w->rank == owner) {
		struct bw_weight *wt = bw_weight(w, dt, n, which);

		if (wt)
			bw_expect(w, &es, &wt->key, dt, n, y, "the owner's w");
	}
	if (w->rank == via) {
		struct bw_weight *wt = bw_weight(w, dt, n, which);

		for (size_t i = 0; i < n; i++) {
			double wo = bw_wval(owner, which, i);

			wo = dt == RDAG_F32 ? (double)(float)wo : wo;
			bw_st(dt, g, i, wo * bw_ld(dt, c, i));
		}
		if (wt)
			bw_expect(w, &es, &wt->key, dt, n, g, "w of the worker the owner called");
	}
	if (w->rank == 0 || w->rank == owner || w->rank == via)
		CHECK_GRADS(w, ctx, &es, 0, what);
	else
		CHECK_RC(w, rdag_ctx_lookup(w->a, ctx), RDAG_ENOENT,
			 "%s: a worker off the pass has the context", what);
	bw_expset_free(&es);
	bw_barrier(w, what);
	if (w->rank == 0) {
		CHECK_RC(w, rdag_ctx_release(w->a, ctx), 0, "%s: rdag_ctx_release", what);
		if (bw_get(w, 0, BW_SLOT_CTX2))
			CHECK_RC(w, rdag_rref_release(w->a, &r), 0, "%s: rdag_rref_release", what);
	}
	bw_barrier(w, what);
	if (w->rank == owner) {
		uint64_t dl = bw_deadline(w, 30), t0 = mp_now_ns();

		while (rdag_rref_count(w->a) != 0 && mp_wait_until(dl))
			;
		if (mp_now_ns() - t0 > 1000000000ull)
			printf("%s: rank %d: the RRef was dropped %llu ms after the release (count now %zu)\n",
			       what, w->rank, (unsigned long long)((mp_now_ns() - t0) / 1000000),
			       rdag_rref_count(w->a));
		CHECK(w, rdag_rref_count(w->a) == 0, "%s: the owner still holds %zu RRefs", what,
		      rdag_rref_count(w->a));
	}
	bw_barrier(w, what); /* before the next pass makes another RRef on the same owner */
out:
	free(c);
	free(y);
	free(g);
}

void sc_rref(struct bw_worker *w)
{
	rref_pass(w, 1, -1, &S35, 90, 4, "rref: value on 1 over its own leaf");
	if (w->world >= 3)
		rref_pass(w, 1, 2, &(struct bw_shape){RDAG_F32, 1, {7, 0, 0}}, 91, 5,
			  "rref: value on 1 computed from a tensor of 2");
	rref_pass(w, 0, -1, &S4, 92, 6, "rref: value on the caller itself");
	if (w->world >= 3)
		rref_pass(w, 2, 1, &S234, 93, 7, "rref: value on 2 computed from a tensor of 1, f64 [2,3,4]");
}

/* ---- shared ------------------------------------------------------------------------------- */

/*
 * One local node reached by two requests of one pass, with retain_graph false: 0 computes
 * u = x * w0 (a node), sends u to 1 twice ("chain": y_k = u * w1), and backward runs from
 * sum(y1) + sum(y2). Both of 1's answers reach u's node on 0, each as its own request: the node
 * runs twice in the pass (its gradients add up), which the freed graph must allow within the
 * pass; a second pass on the same graph must still fail.
 */
void sc_shared(struct bw_worker *w)
{
	const struct bw_shape *s = &S35;
	struct bw_expset es = {.n = 0};
	uint8_t dt = s->dtype;
	size_t n = bw_numel(s);
	uint64_t ctx = ~0ull;
	const char *what = "shared: one node, two requests, retain_graph false";

	bw_phase(w, "%s", what);
	if (w->rank == 0) {
		struct bw_weight *w0 = bw_weight(w, dt, n, 5);
		void *x = bw_vals(w, dt, n), *u = bw_vals(w, dt, n), *g = bw_vals(w, dt, n);
		struct rdag_tensor xt, in[2], ut, ys[2], loss;
		rdag_future_t *f[2] = {NULL, NULL};
		struct rdag_msg res[2];
		double lv = 0;
		int rc = 0;

		ctx = new_ctx(w);
		if (!w0 || !x || !u || !g)
			rc = RDAG_ENOMEM;
		if (rc == 0) {
			bw_fill_x(dt, x, n, 90, false);
			bw_tensor(&xt, x, s);
			bw_leaf(&xt, NULL);
			in[0] = xt;
			bw_weight_tensor(&in[1], w0, &xt);
			ut.data = u;
			rc = bw_op(w, BW_MUL, in, 2, &ut, NULL);
			CHECK_RC(w, rc, 0, "%s: u = x * w0", what);
		}
		for (int k = 0; k < 2 && rc == 0; k++) {
			struct bw_ctl ctl;
			struct rdag_msg args;

			bw_ctl_init(&ctl, 6);
			args = (struct rdag_msg){.payload = &ctl, .payload_len = sizeof(ctl), .tensors = &ut,
						 .ntensors = 1};
			rc = rdag_rpc_sync(w->a, 1, "chain", &args, NULL, &f[k]);
			CHECK_RC(w, rc, 0, "%s: call %d", what, k);
			if (rc == 0)
				rc = rdag_future_result(f[k], &res[k]);
			if (rc == 0)
				ys[k] = res[k].tensors[0];
		}
		if (rc == 0) {
			loss.data = &lv;
			rc = bw_op(w, BW_SUM2, ys, 2, &loss, NULL);
			CHECK_RC(w, rc, 0, "%s: loss node", what);
		}
		if (rc == 0) {
			CHECK_RC(w, rdag_backward(w->a, ctx, &loss, 1, false), 0, "%s: rdag_backward", what);
			/* dL/dx = 2 w1 w0, dL/dw0 = 2 w1 x: each term exact in f64 (dyadic values) */
			for (size_t i = 0; i < n; i++)
				bw_st(dt, g, i, 2.0 * bw_wval(1, 6, i) * bw_wval(0, 5, i));
			bw_expect(w, &es, x, dt, n, g, "x of 0");
			for (size_t i = 0; i < n; i++)
				bw_st(dt, g, i, 2.0 * bw_wval(1, 6, i) * bw_ld(dt, x, i));
			bw_expect(w, &es, &w0->key, dt, n, g, "w0 of 0");
			CHECK_GRADS(w, ctx, &es, 0, what);
			/* the graph is freed for any other pass */
			rc = rdag_backward(w->a, ctx, &loss, 1, false);
			CHECK_RC(w, rc, RDAG_EINVAL, "%s: a second pass on the freed graph", what);
			CHECK(w, strstr(rdag_last_error(), "retain_graph") != NULL,
			      "%s: the second pass's error does not say why: \"%s\"", what, rdag_last_error());
		}
		for (int k = 0; k < 2; k++)
			rdag_future_free(f[k]);
		bw_expset_free(&es);
		free(x);
		free(u);
		free(g);
	}
	ctx = share_ctx(w, 0, ctx, what);
	if (w->rank == 1) {
		struct bw_weight *w1 = bw_weight(w, dt, n, 6);
		void *g = bw_vals(w, dt, n);

		/* dL/dw1 = 2 u = 2 x w0 */
		for (size_t i = 0; g && i < n; i++)
			bw_st(dt, g, i, 2.0 * bw_xval(90, i, false) * bw_wval(0, 5, i));
		if (w1 && g)
			bw_expect(w, &es, &w1->key, dt, n, g, "w1 of 1");
		CHECK_GRADS(w, ctx, &es, 0, what);
		bw_expset_free(&es);
		free(g);
	}
	end_ctx(w, 0, ctx, what);
}
