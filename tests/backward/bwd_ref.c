/* Backward tests' references: the same math done here, gradient checks, a chain pass on the caller. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bwd_mp.h"

static size_t tnumel(const struct rdag_tensor *t)
{
	size_t n = 1;

	for (unsigned i = 0; i < t->ndim; i++)
		n *= t->shape[i] > 0 ? (size_t)t->shape[i] : 0;
	return n;
}

/* ---- references and checks ------------------------------------------------------------------ */

void bw_chain_init(struct bw_chain *c, int caller, const struct bw_shape *s, const uint16_t *hops,
		   unsigned nhops, uint64_t xseed)
{
	memset(c, 0, sizeof(*c));
	c->caller = caller;
	c->shape = *s;
	c->nhops = nhops;
	memcpy(c->hops, hops, nhops * sizeof(hops[0]));
	c->xseed = xseed;
	c->passes = 1;
}

/* dst (n values) += src, or dst = src the first time (*first). */
static void acc(uint8_t dt, void *dst, const void *src, size_t n, bool *first)
{
	for (size_t i = 0; i < n; i++)
		bw_st(dt, dst, i, *first ? bw_ld(dt, src, i) : bw_ld(dt, dst, i) + bw_ld(dt, src, i));
	*first = false;
}

/* Weight r's value i as stored in dtype dt. */
static double wq(uint8_t dt, int r, unsigned which, size_t i)
{
	double v = bw_wval(r, which, i);

	return dt == RDAG_F32 ? (double)(float)v : v;
}

void bw_chain_ref(struct bw_worker *w, const struct bw_chain *c, void *y, void *gx, void *gw[BW_MAXW])
{
	uint8_t dt = c->shape.dtype;
	size_t n = bw_numel(&c->shape), es = rdag_dtype_size(dt);
	unsigned k = c->nhops;
	bool gx_first = true, gw_first[BW_MAXW];
	uint8_t *v = calloc((k + 1) * (n ? n : 1), es);
	void *g = bw_vals(w, dt, n), *t = bw_vals(w, dt, n);

	for (int r = 0; r < BW_MAXW; r++) {
		gw[r] = NULL;
		gw_first[r] = true;
	}
	for (unsigned h = 0; h < k; h++)
		if (!gw[c->hops[h]])
			gw[c->hops[h]] = bw_vals(w, dt, n);
	if (!v || !g || !t) {
		CHECK(w, 0, "out of memory for a reference");
		goto out;
	}
	for (unsigned p = 0; p < c->passes; p++) {
		/* forward: v[0] = x, v[h] = v[h-1] * w(hop h), rounded to the dtype at each step */
		bw_fill_x(dt, v, n, c->xseed, c->frac);
		for (unsigned h = 1; h <= k; h++)
			for (size_t i = 0; i < n; i++)
				bw_st(dt, v + h * n * es, i,
				      bw_ld(dt, v + (h - 1) * n * es, i) * wq(dt, c->hops[h - 1], c->which,
									      i));
		/* backward: the sum seeds ones; the last hop runs first, each hop's weight gets g * v[h-1] */
		for (size_t i = 0; i < n; i++)
			bw_st(dt, g, i, 1.0);
		for (unsigned h = k; h >= 1; h--) {
			int r = c->hops[h - 1];

			for (size_t i = 0; i < n; i++)
				bw_st(dt, t, i, bw_ld(dt, g, i) * bw_ld(dt, v + (h - 1) * n * es, i));
			acc(dt, gw[r], t, n, &gw_first[r]);
			for (size_t i = 0; i < n; i++)
				bw_st(dt, g, i, bw_ld(dt, g, i) * wq(dt, r, c->which, i));
		}
		if (gx)
			acc(dt, gx, g, n, &gx_first);
	}
	if (y)
		memcpy(y, v + k * n * es, n * es);
out:
	free(v);
	free(g);
	free(t);
}

void *bw_expect(struct bw_worker *w, struct bw_expset *s, void *key, uint8_t dtype, size_t n,
		const void *vals, const char *what)
{
	struct bw_exp *e;

	if (s->n >= BW_MAXEXP) {
		CHECK(w, 0, "too many expectations");
		return NULL;
	}
	e = &s->e[s->n++];
	e->key = key;
	e->dtype = dtype;
	e->n = n;
	e->what = what;
	e->vals = bw_vals(w, dtype, n);
	if (e->vals && vals)
		memcpy(e->vals, vals, n * rdag_dtype_size(dtype));
	return e->vals;
}

void bw_expset_free(struct bw_expset *s)
{
	for (unsigned i = 0; i < s->n; i++)
		free(s->e[i].vals);
	s->n = 0;
}

void bw_chain_expect(struct bw_worker *w, const struct bw_chain *c, void *xkey, struct bw_expset *s)
{
	uint8_t dt = c->shape.dtype;
	size_t n = bw_numel(&c->shape);
	void *gw[BW_MAXW], *gx = bw_vals(w, dt, n);

	bw_chain_ref(w, c, NULL, gx, gw);
	if (c->caller == w->rank)
		bw_expect(w, s, xkey, dt, n, gx, "x (the caller's leaf)");
	if (gw[w->rank]) {
		struct bw_weight *wt = bw_weight(w, dt, n, c->which);

		if (wt)
			bw_expect(w, s, &wt->key, dt, n, gw[w->rank], "w (this worker's weight)");
	}
	for (int r = 0; r < BW_MAXW; r++)
		free(gw[r]);
	free(gx);
}

size_t bw_cmp(uint8_t dtype, const void *got, const void *want, size_t n, double tol64)
{
	double tol = dtype == RDAG_F32 ? 1e-5 : tol64;

	for (size_t i = 0; i < n; i++) {
		double g = bw_ld(dtype, got, i), e = bw_ld(dtype, want, i);

		if (g == e)
			continue;
		if (tol == 0 || !(fabs(g - e) <= tol * fabs(e)))
			return i + 1;
	}
	return 0;
}

void bw_check_grads(struct bw_worker *w, const char *file, int line, uint64_t ctx,
		    const struct bw_expset *s, double tol64, const char *what)
{
	struct rdag_grad g[BW_MAXEXP * 2];
	size_t n = 0;
	int rc = rdag_ctx_grads(w->a, ctx, g, sizeof(g) / sizeof(g[0]), &n);

	if (rc) {
		bw_fail_rc(w, file, line, rc, 0, "%s: rdag_ctx_grads(%#llx)", what, (unsigned long long)ctx);
		return;
	}
	if (n != s->n)
		bw_fail(w, file, line, "%s: context %#llx holds %zu gradients, expected %u", what,
			(unsigned long long)ctx, n, s->n);
	for (unsigned k = 0; k < s->n; k++) {
		const struct bw_exp *e = &s->e[k];
		const struct rdag_grad *hit = NULL;
		size_t bad, gn;

		for (size_t i = 0; i < n && i < sizeof(g) / sizeof(g[0]); i++)
			if (g[i].var == e->key)
				hit = &g[i];
		if (!hit) {
			bw_fail(w, file, line, "%s: no gradient for %s (key %p) in context %#llx", what,
				e->what, e->key, (unsigned long long)ctx);
			continue;
		}
		gn = tnumel(&hit->grad);
		if (hit->grad.dtype != e->dtype || gn != e->n || !hit->grad.data) {
			bw_fail(w, file, line, "%s: gradient of %s: dtype %u, %zu elements; expected %u, %zu",
				what, e->what, hit->grad.dtype, gn, e->dtype, e->n);
			continue;
		}
		bad = bw_cmp(e->dtype, hit->grad.data, e->vals, e->n, tol64);
		if (bad)
			bw_fail(w, file, line, "%s: gradient of %s differs at [%zu] of %zu: %.17g, expected "
				"%.17g (%s)", what, e->what, bad - 1, e->n,
				bw_ld(e->dtype, hit->grad.data, bad - 1), bw_ld(e->dtype, e->vals, bad - 1),
				e->dtype == RDAG_F32 ? "f32, 1e-5 relative" :
				tol64 == 0 ? "f64, exact" : "f64, relative tolerance");
	}
}

/* ---- a chain pass on the caller ------------------------------------------------------------- */

int bw_fwd_run(struct bw_worker *w, const struct bw_chain *c, const struct bw_ctl *ctl, struct bw_fwd *f,
	       void *x)
{
	uint8_t dt = c->shape.dtype;
	size_t n = bw_numel(&c->shape), bad;
	struct rdag_msg args, res;
	void *want;
	int rc;

	memset(f, 0, sizeof(*f));
	f->c = *c;
	f->own_x = x == NULL;
	f->x = x ? x : bw_vals(w, dt, n);
	if (!f->x)
		return RDAG_ENOMEM;
	bw_fill_x(dt, f->x, n, c->xseed, c->frac);
	bw_tensor(&f->xt, f->x, &c->shape);
	bw_leaf(&f->xt, NULL); /* keyed by its data pointer */
	if (ctl)
		f->ctl = *ctl;
	else
		bw_ctl_init(&f->ctl, c->which);
	f->ctl.which = (uint16_t)c->which;
	f->ctl.nhops = (uint16_t)(c->nhops - 1);
	memcpy(f->ctl.hops, c->hops + 1, (c->nhops - 1) * sizeof(c->hops[0]));
	args = (struct rdag_msg){.payload = &f->ctl, .payload_len = sizeof(f->ctl), .tensors = &f->xt,
				 .ntensors = 1};
	rc = rdag_rpc_sync(w->a, c->hops[0], "chain", &args, NULL, &f->f);
	if (rc)
		return rc;
	rc = rdag_future_result(f->f, &res);
	CHECK_RC(w, rc, 0, "rdag_future_result of chain");
	if (rc)
		return rc;
	if (res.ntensors != 1) {
		CHECK(w, 0, "chain returned %u tensors", res.ntensors);
		return RDAG_EINVAL;
	}
	f->y = res.tensors[0];
	CHECK(w, f->y.requires_grad && f->y.grad_kind == RDAG_GRAD_RECV && f->y.dtype == dt &&
		 tnumel(&f->y) == n, "chain's result: requires_grad %d, grad_kind %u, dtype %u, %zu elements",
	      f->y.requires_grad, f->y.grad_kind, f->y.dtype, tnumel(&f->y));
	if (f->y.dtype != dt || tnumel(&f->y) != n)
		return RDAG_EINVAL;
	/* the forward value: same operations as the reference, so equal exactly */
	want = bw_vals(w, dt, n);
	if (want) {
		void *gw[BW_MAXW];

		bw_chain_ref(w, c, want, NULL, gw);
		for (int r = 0; r < BW_MAXW; r++)
			free(gw[r]);
		bad = bw_cmp(dt, f->y.data, want, n, 0);
		CHECK(w, bad == 0, "chain's forward result differs at [%zu]: %.17g, expected %.17g", bad - 1,
		      bad ? bw_ld(dt, f->y.data, bad - 1) : 0.0, bad ? bw_ld(dt, want, bad - 1) : 0.0);
		free(want);
	}
	f->loss.data = &f->loss_val;
	rc = bw_op(w, BW_SUM, &f->y, 1, &f->loss, NULL);
	CHECK_RC(w, rc, 0, "the loss node");
	return rc;
}

void bw_fwd_free(struct bw_fwd *f)
{
	rdag_future_free(f->f);
	f->f = NULL;
	if (f->own_x)
		free(f->x);
	f->x = NULL;
}

/* The caller's part of one chain: a context, its passes, the caller's check. Returns the context (or ~0). */
static uint64_t run_chain(struct bw_worker *w, const struct bw_chain *c, void **xp, const char *what)
{
	struct bw_expset es = {.n = 0};
	uint64_t ctx = ~0ull;
	int rc;

	rc = rdag_ctx_create(w->a, &ctx);
	CHECK_RC(w, rc, 0, "%s: rdag_ctx_create", what);
	if (rc)
		return ~0ull;
	*xp = bw_vals(w, c->shape.dtype, bw_numel(&c->shape));
	for (unsigned p = 0; *xp && rc == 0 && p < c->passes; p++) {
		struct bw_fwd f;

		rc = bw_fwd_run(w, c, NULL, &f, *xp);
		CHECK_RC(w, rc, 0, "%s: forward %u", what, p);
		if (rc == 0) {
			rc = rdag_backward(w->a, ctx, &f.loss, 1, false);
			CHECK_RC(w, rc, 0, "%s: rdag_backward %u", what, p);
		}
		bw_fwd_free(&f);
	}
	bw_chain_expect(w, c, *xp, &es);
	CHECK_GRADS(w, ctx, &es, 0, what);
	bw_expset_free(&es);
	/* the context stays alive for the others' checks, not current here */
	CHECK_RC(w, rdag_ctx_set_current(w->a, ctx, 0), 0, "%s: clearing the current context", what);
	return ctx;
}

void bw_chain_rounds(struct bw_worker *w, const struct bw_chain *cs, unsigned nc, const char *what)
{
	uint64_t ctx[BW_MAXW * 2];
	void *x[BW_MAXW * 2];
	char sh[64];

	if (nc > BW_MAXW * 2) {
		CHECK(w, 0, "%s: %u chains", what, nc);
		return;
	}
	bw_phase(w, "%s: %s...", what, bw_shape_str(&cs[0].shape, sh, sizeof(sh)));
	for (unsigned i = 0; i < nc; i++) {
		x[i] = NULL;
		ctx[i] = ~0ull;
		if (cs[i].caller != w->rank)
			continue;
		ctx[i] = run_chain(w, &cs[i], &x[i], what);
		bw_put(w, BW_SLOT_CTXS + i, ctx[i] + 1);
	}
	bw_barrier(w, what);
	for (unsigned i = 0; i < nc; i++) {
		struct bw_expset es = {.n = 0};
		bool hop = false;
		uint64_t id;

		if (cs[i].caller == w->rank)
			continue;
		for (unsigned h = 0; h < cs[i].nhops; h++)
			hop |= cs[i].hops[h] == w->rank;
		id = bw_get(w, cs[i].caller, BW_SLOT_CTXS + i) - 1;
		if (hop) {
			bw_chain_expect(w, &cs[i], NULL, &es);
			CHECK_GRADS(w, id, &es, 0, what);
			bw_expset_free(&es);
		} else {
			CHECK_RC(w, rdag_ctx_lookup(w->a, id), RDAG_ENOENT,
				 "%s: a worker off chain %u has its context", what, i);
		}
	}
	bw_barrier(w, what);
	for (unsigned i = 0; i < nc; i++) {
		if (cs[i].caller != w->rank)
			continue;
		if (ctx[i] != ~0ull)
			CHECK_RC(w, rdag_ctx_release(w->a, ctx[i]), 0, "%s: rdag_ctx_release", what);
		bw_put(w, BW_SLOT_CTXS + i, 0);
		free(x[i]);
	}
}

void bw_chain_round(struct bw_worker *w, const struct bw_chain *c, const char *what)
{
	bw_chain_rounds(w, c, 1, what);
}
