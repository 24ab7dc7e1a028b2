/* Backward scenarios under load: a parameter server, 1000 retained passes, 20 threads per worker. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bwd_mp.h"

/* ---- ps ----------------------------------------------------------------------------------- */

/*
 * Rank 0 is the parameter server: "chain" there returns its parameter times the input. Every
 * other rank is a trainer with its own context each round, all calling 0 at once, three passes
 * per context. Trainers of odd rank share 0's f64 parameter (one key, several contexts); even
 * ones use its f32 one. Rank 0 checks each trainer's context holds that trainer's gradient only.
 */
void sc_ps(struct bw_worker *w)
{
	static const uint16_t to_ps[] = {0};
	struct bw_chain cs[BW_MAXW];
	unsigned nc = 0;

	for (unsigned round = 0; round < 5; round++) {
		char what[64];

		nc = 0;
		for (int t = 1; t < w->world; t++) {
			struct bw_shape s = {t % 2 ? RDAG_F64 : RDAG_F32, 2, {3, 5, 0}};

			bw_chain_init(&cs[nc], t, &s, to_ps, 1, 100 * (uint64_t)t + round);
			cs[nc].passes = 3;
			cs[nc].frac = round % 2 == 1;
			nc++;
		}
		snprintf(what, sizeof(what), "ps: round %u, %u trainers", round, nc);
		bw_chain_rounds(w, cs, nc, what);
	}
}

/* ---- accumulate --------------------------------------------------------------------------- */

/* With dyadic values, k accumulated passes are exactly k times one pass (x's gradient here). */
static void k_times_one(struct bw_worker *w, const struct bw_chain *c, unsigned k, const void *gk,
			const char *what)
{
	struct bw_chain one = *c;
	size_t n = bw_numel(&c->shape), bad;
	void *g1 = bw_vals(w, c->shape.dtype, n), *gw[BW_MAXW];

	if (!g1)
		return;
	one.passes = 1;
	bw_chain_ref(w, &one, NULL, g1, gw);
	for (size_t i = 0; i < n; i++)
		bw_st(c->shape.dtype, g1, i, bw_ld(c->shape.dtype, g1, i) * k);
	bad = bw_cmp(c->shape.dtype, gk, g1, n, 0);
	CHECK(w, bad == 0, "%s: %u passes are not exactly %u x one pass at [%zu]", what, k, k, bad - 1);
	for (int r = 0; r < BW_MAXW; r++)
		free(gw[r]);
	free(g1);
}

/* Passes with retain_graph over one forward: k passes of chain c, checked on both sides. */
static void retained(struct bw_worker *w, const struct bw_chain *c0, unsigned k, const char *what)
{
	struct bw_expset es = {.n = 0};
	struct bw_chain c = *c0;
	struct bw_fwd f;
	uint64_t ctx = ~0ull, t0;
	int rc = 0;

	memset(&f, 0, sizeof(f));
	bw_phase(w, "%s: %u passes with retain_graph", what, k);
	if (w->rank == c.caller) {
		CHECK_RC(w, rdag_ctx_create(w->a, &ctx), 0, "%s: rdag_ctx_create", what);
		rc = bw_fwd_run(w, &c, NULL, &f, NULL);
		CHECK_RC(w, rc, 0, "%s: forward", what);
		t0 = mp_now_ns();
		for (unsigned p = 0; rc == 0 && p < k; p++) {
			rc = rdag_backward(w->a, ctx, &f.loss, 1, true);
			CHECK_RC(w, rc, 0, "%s: rdag_backward %u of %u (retain_graph)", what, p, k);
		}
		if (rc == 0)
			printf("%s: %u retained passes in %llu ms\n", what, k,
			       (unsigned long long)((mp_now_ns() - t0) / 1000000));
		c.passes = k;
		bw_chain_expect(w, &c, f.x, &es);
		if (!c.frac && es.n)
			k_times_one(w, &c, k, es.e[0].vals, what);
		CHECK_GRADS(w, ctx, &es, 0, what);
		bw_expset_free(&es);
		bw_put(w, BW_SLOT_CTX, ctx + 1);
	}
	bw_barrier(w, what);
	c.passes = k;
	ctx = bw_get(w, c.caller, BW_SLOT_CTX) - 1;
	if (w->rank != c.caller) {
		bw_chain_expect(w, &c, NULL, &es);
		CHECK_GRADS(w, ctx, &es, 0, what);
		bw_expset_free(&es);
	}
	bw_barrier(w, what);
	/* One more without retain_graph (k + 1 in all), then the graph is gone. */
	bw_phase(w, "%s: the last pass", what);
	if (w->rank == c.caller && rc == 0) {
		char text[1024];

		rc = rdag_backward(w->a, ctx, &f.loss, 1, false);
		CHECK_RC(w, rc, 0, "%s: the pass without retain_graph", what);
		rc = rdag_backward(w->a, ctx, &f.loss, 1, false);
		snprintf(text, sizeof(text), "%s", rdag_last_error());
		CHECK_RC(w, rc, RDAG_EINVAL, "%s: a pass after the graph was released", what);
		CHECK(w, strstr(text, "retain_graph") != NULL,
		      "%s: the error does not mention retain_graph: \"%s\"",
		      what, text);
		c.passes = k + 1;
		bw_chain_expect(w, &c, f.x, &es);
		CHECK_GRADS(w, ctx, &es, 0, what);
		bw_expset_free(&es);
	}
	bw_barrier(w, what);
	if (w->rank != c.caller) {
		c.passes = k + 1; /* the failed pass added nothing */
		bw_chain_expect(w, &c, NULL, &es);
		CHECK_GRADS(w, ctx, &es, 0, what);
		bw_expset_free(&es);
	}
	bw_barrier(w, what);
	if (w->rank == c.caller) {
		bw_fwd_free(&f);
		CHECK_RC(w, rdag_ctx_release(w->a, ctx), 0, "%s: rdag_ctx_release", what);
	}
}

void sc_accumulate(struct bw_worker *w)
{
	static const uint16_t to1[] = {1}, aba[] = {1, 0, 1};
	struct bw_shape s35 = {RDAG_F64, 2, {3, 5, 0}}, s234 = {RDAG_F32, 3, {2, 3, 4}};
	struct bw_chain c;

	/* Small-integer-like (dyadic) f64 values: 1000 x the single pass, exactly. */
	bw_chain_init(&c, 0, &s35, to1, 1, 110);
	retained(w, &c, 1000, "accumulate: 0 -> 1, f64 [3,5]");
	/* Through a round trip, f32, non-dyadic: the same additions in the same order as here. */
	bw_chain_init(&c, 0, &s234, aba, 3, 111);
	c.frac = true;
	retained(w, &c, 100, "accumulate: 0 -> 1 -> 0 -> 1, f32 [2,3,4]");
}

/* ---- threads ------------------------------------------------------------------------------ */

#define NTHREADS 20
#define TPASSES 10

struct tjob {
	struct bw_worker *w;
	int k;
	unsigned done;
};

/* One thread: its own context, TPASSES passes of its chain, its gradients here and on the peer. */
static void *thread_main(void *arg)
{
	static const struct bw_shape shapes[] = {
		{RDAG_F64, 1, {7, 0, 0}}, {RDAG_F64, 2, {3, 5, 0}}, {RDAG_F64, 3, {2, 3, 4}},
	};
	struct tjob *j = arg;
	struct bw_worker *w = j->w;
	struct bw_expset es = {.n = 0};
	struct bw_shape s = shapes[j->k % 3];
	uint16_t peer = (uint16_t)((w->rank + 1) % w->world), hops[2] = {peer, (uint16_t)w->rank};
	struct bw_chain c;
	uint64_t ctx = ~0ull;
	size_t n;
	void *x, *gw[BW_MAXW], *got;
	uint32_t count = 0;
	int rc;

	s.dtype = j->k % 2 ? RDAG_F32 : RDAG_F64;
	bw_chain_init(&c, w->rank, &s, hops, j->k % 4 < 2 ? 1 : 2, 1000 * (uint64_t)w->rank + (uint64_t)j->k);
	c.frac = j->k % 5 == 0;
	n = bw_numel(&s);
	x = bw_vals(w, s.dtype, n);
	got = bw_vals(w, s.dtype, n);
	if (!x || !got)
		goto out;
	rc = rdag_ctx_create(w->a, &ctx);
	CHECK_RC(w, rc, 0, "threads: thread %d: rdag_ctx_create", j->k);
	for (unsigned p = 0; rc == 0 && p < TPASSES; p++) {
		struct bw_fwd f;

		rc = bw_fwd_run(w, &c, NULL, &f, x);
		CHECK_RC(w, rc, 0, "threads: thread %d: forward %u", j->k, p);
		if (rc == 0) {
			rc = rdag_backward(w->a, ctx, &f.loss, 1, false);
			CHECK_RC(w, rc, 0, "threads: thread %d: rdag_backward %u", j->k, p);
		}
		bw_fwd_free(&f);
		if (rc == 0)
			j->done++;
	}
	if (rc)
		goto release;
	c.passes = TPASSES;
	/* Here: x and, through the round trip, this worker's own weight. */
	bw_chain_expect(w, &c, x, &es);
	CHECK_GRADS(w, ctx, &es, 0, "threads: local gradients");
	bw_expset_free(&es);
	/* On the peer, read by RPC: its weight's gradient in this context, and nothing else. */
	bw_chain_ref(w, &c, NULL, NULL, gw);
	rc = bw_peek(w, peer, ctx, s.dtype, n, 0, got, &count);
	CHECK_RC(w, rc, 0, "threads: thread %d: peek on %u", j->k, peer);
	if (rc == 0) {
		size_t bad = bw_cmp(s.dtype, got, gw[peer], n, 0);

		CHECK(w, count == 1, "threads: thread %d: %u gradients on %u, expected 1", j->k, count, peer);
		CHECK(w, bad == 0,
		      "threads: thread %d: the peer's gradient differs at [%zu]: %.17g, expected %.17g",
		      j->k, bad - 1, bad ? bw_ld(s.dtype, got, bad - 1) : 0.0,
		      bad ? bw_ld(s.dtype, gw[peer], bad - 1) : 0.0);
	}
	for (int r = 0; r < BW_MAXW; r++)
		free(gw[r]);
release:
	if (ctx != ~0ull) {
		CHECK_RC(w, rdag_ctx_release(w->a, ctx), 0, "threads: thread %d: rdag_ctx_release", j->k);
		CHECK_RC(w, rdag_ctx_lookup(w->a, ctx), RDAG_ENOENT,
			 "threads: a released context is still here");
	}
out:
	free(x);
	free(got);
	return NULL;
}

void sc_threads(struct bw_worker *w)
{
	pthread_t th[NTHREADS];
	struct tjob jobs[NTHREADS];
	unsigned done = 0;
	uint64_t t0 = mp_now_ns();
	int started = 0;

	bw_phase(w, "threads: %d threads x %d passes", NTHREADS, TPASSES);
	for (int k = 0; k < NTHREADS; k++) {
		jobs[k] = (struct tjob){.w = w, .k = k};
		if (pthread_create(&th[k], NULL, thread_main, &jobs[k]) != 0) {
			CHECK(w, 0, "threads: pthread_create %d", k);
			break;
		}
		started++;
	}
	for (int k = 0; k < started; k++) {
		pthread_join(th[k], NULL);
		done += jobs[k].done;
	}
	CHECK(w, done == NTHREADS * TPASSES, "threads: %u passes of %d done", done, NTHREADS * TPASSES);
	printf("threads: rank %d: %u passes in %llu ms\n", w->rank, done,
	       (unsigned long long)((mp_now_ns() - t0) / 1000000));
	bw_barrier(w, "threads: done");
}
