/* Backward scenarios that fail: bad arguments, a failing node 3 hops away, a worker killed, a context released. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bwd_mp.h"

static const struct bw_shape S4 = {RDAG_F64, 1, {4, 0, 0}};
static const struct bw_shape S35 = {RDAG_F64, 2, {3, 5, 0}};

/* rc must be want and rdag_last_error() (read at once by the caller into text) contain needle. */
#define CHECK_ERR(w, rc, want, text, needle, ...)                                                   \
	do {                                                                                       \
		CHECK_RC((w), (rc), (want), __VA_ARGS__);                                          \
		CHECK((w), strstr((text), (needle)) != NULL, "error text \"%s\" lacks \"%s\"", (text), \
		      (needle));                                                                   \
	} while (0)

/* ---- errors ------------------------------------------------------------------------------- */

/* Argument errors on 0, before anything runs; then the real pass on the same context works. */
static void validation(struct bw_worker *w)
{
	static const uint16_t to1[] = {1};
	struct bw_expset es = {.n = 0};
	struct rdag_tensor bad, roots[2];
	struct bw_chain c;
	struct bw_fwd f;
	char text[1024];
	uint64_t ctx = ~0ull;
	double one = 1.0;
	int rc;

	bw_chain_init(&c, 0, &S4, to1, 1, 200);
	bw_phase(w, "errors: validation");
	if (w->rank == 0) {
		struct rdag_rref no_rref = {1, 0xdeadbeefull};

		CHECK_RC(w, rdag_ctx_create(w->a, &ctx), 0, "errors: rdag_ctx_create");
		rc = bw_fwd_run(w, &c, NULL, &f, NULL);
		CHECK_RC(w, rc, 0, "errors: forward");
		if (rc == 0) {
			/* an id no worker made (worker 200 does not exist) */
			rc = rdag_backward(w->a, (200ull << 48) | 12345, &f.loss, 1, false);
			snprintf(text, sizeof(text), "%s", rdag_last_error());
			CHECK_ERR(w, rc, RDAG_ENOENT, text, "context", "errors: unknown context");
			rc = rdag_backward(w->a, ctx, &f.loss, 0, false);
			snprintf(text, sizeof(text), "%s", rdag_last_error());
			CHECK_ERR(w, rc, RDAG_EINVAL, text, "root", "errors: no roots (n = 0)");
			rc = rdag_backward(w->a, ctx, NULL, 1, false);
			CHECK_RC(w, rc, RDAG_EINVAL, "errors: NULL roots");
			bad = f.loss;
			bad.requires_grad = false;
			rc = rdag_backward(w->a, ctx, &bad, 1, false);
			snprintf(text, sizeof(text), "%s", rdag_last_error());
			CHECK_ERR(w, rc, RDAG_EINVAL, text, "require", "errors: a root not requiring grad");
			rc = rdag_backward(w->a, ctx, &f.y, 1, false); /* [4]: not a scalar */
			snprintf(text, sizeof(text), "%s", rdag_last_error());
			CHECK_ERR(w, rc, RDAG_EINVAL, text, "scalar", "errors: a non-scalar root");
			rdag_tensor_init(&bad, &one, RDAG_F64, 0, NULL);
			bad.requires_grad = true; /* but grad_kind NONE: no grad_fn */
			rc = rdag_backward(w->a, ctx, &bad, 1, false);
			snprintf(text, sizeof(text), "%s", rdag_last_error());
			CHECK_ERR(w, rc, RDAG_EINVAL, text, "grad_fn", "errors: a root without grad_fn");
			/* a good root and a bad one: nothing may run */
			roots[0] = f.loss;
			roots[1] = f.loss;
			roots[1].requires_grad = false;
			rc = rdag_backward(w->a, ctx, roots, 2, false);
			snprintf(text, sizeof(text), "%s", rdag_last_error());
			CHECK_ERR(w, rc, RDAG_EINVAL, text, "require", "errors: roots[1] bad");
			CHECK_GRADS(w, ctx, &es, 0, "errors: after failed validations (nothing)");
			/* backward from an RRef its owner never had */
			rc = rdag_rref_backward(w->a, ctx, &no_rref, false);
			snprintf(text, sizeof(text), "%s", rdag_last_error());
			CHECK_ERR(w, rc, RDAG_EREMOTE, text, "RRef",
				  "errors: rdag_rref_backward of an unknown RRef");
			/* the context and its graph are intact: the real pass */
			CHECK_RC(w, rdag_backward(w->a, ctx, &f.loss, 1, false), 0,
				 "errors: the pass after the errors");
			bw_chain_expect(w, &c, f.x, &es);
			CHECK_GRADS(w, ctx, &es, 0, "errors: the pass after the errors, on 0");
			bw_expset_free(&es);
		}
		bw_fwd_free(&f);
		bw_put(w, BW_SLOT_CTX, ctx + 1);
	}
	bw_barrier(w, "errors: validation");
	if (w->rank == 1) {
		ctx = bw_get(w, 0, BW_SLOT_CTX) - 1;
		bw_chain_expect(w, &c, NULL, &es); /* one pass: the failed ones ran nothing here */
		CHECK_GRADS(w, ctx, &es, 0, "errors: the pass after the errors, on 1");
		bw_expset_free(&es);
	}
	bw_barrier(w, "errors: validation checked");
	if (w->rank == 0)
		CHECK_RC(w, rdag_ctx_release(w->a, ctx), 0, "errors: rdag_ctx_release");
}

/*
 * One pass of chain c on a new context whose node at hop fail_at fails: rdag_backward must fail
 * with RDAG_EREMOTE and a text naming want_node (the text is copied to text_out). Returns 0, 1
 * (right code, the text names another worker) or -1 (wrong code, a failed check).
 */
static int failing_pass(struct bw_worker *w, const struct bw_chain *c, unsigned fail_at, int want_node,
			char *text_out, size_t out_len)
{
	struct bw_ctl ctl;
	struct bw_fwd f;
	char text[1024], needle[64];
	uint64_t ctx;
	int rc;

	CHECK_RC(w, rdag_ctx_create(w->a, &ctx), 0, "errors: rdag_ctx_create");
	bw_ctl_init(&ctl, c->which);
	ctl.fail_at = (uint16_t)fail_at;
	rc = bw_fwd_run(w, c, &ctl, &f, NULL);
	CHECK_RC(w, rc, 0, "errors: forward of the failing chain");
	if (rc == 0) {
		rc = rdag_backward(w->a, ctx, &f.loss, 1, false);
		snprintf(text, sizeof(text), "%s", rdag_last_error());
		snprintf(needle, sizeof(needle), "Error on Node %d:", want_node);
		CHECK_RC(w, rc, RDAG_EREMOTE, "errors: a node failing on worker %d", want_node);
		snprintf(text_out, out_len, "%s", text);
		if (rc != RDAG_EREMOTE) {
			rc = -1;
		} else if (!strstr(text, needle)) {
			rc = 1;
		} else {
			rc = 0;
		}
	}
	bw_fwd_free(&f);
	CHECK_RC(w, rdag_ctx_release(w->a, ctx), 0, "errors: rdag_ctx_release after a failed pass");
	return rc;
}

void sc_errors(struct bw_worker *w)
{
	static const uint16_t abcd[] = {1, 2, 3};
	struct bw_chain c;

	validation(w);

	/* A -> B -> C -> D; D's node backward fails: "Error on Node 3:" reaches A. */
	bw_chain_init(&c, 0, &S35, abcd, 3, 210);
	bw_phase(w, "errors: failing node on 3");
	if (w->rank == 0) {
		char bad[1024];
		int wrong = 0, res;

		/*
		 * The node callback fails like a framework's would: a code, no rdag text. The text
		 * must still name the worker that failed (it must not be some earlier error's).
		 */
		for (unsigned k = 0; k < 2; k++) {
			int node = k == 0 ? 3 : 2;

			res = failing_pass(w, &c, (unsigned)node, node, bad, sizeof(bad));
			CHECK(w, res != 1, "errors: the node on %d failed, rdag_last_error() says \"%s\"",
			      node, bad);
			if (res == 0)
				printf("errors: node of worker %d failed: rdag_backward: RDAG_EREMOTE, \"%s\"\n",
				       node, bad);
		}
		/* A local node failing: its own code comes back as it is. */
		{
			struct rdag_tensor loss;
			struct bw_node *nd = NULL;
			struct bw_fwd f;
			double lv = 0;
			uint64_t ctx;
			int rc;

			CHECK_RC(w, rdag_ctx_create(w->a, &ctx), 0, "errors: rdag_ctx_create");
			rc = bw_fwd_run(w, &c, NULL, &f, NULL);
			CHECK_RC(w, rc, 0, "errors: forward");
			loss.data = &lv;
			if (rc == 0 && (rc = bw_op(w, BW_SUM, &f.y, 1, &loss, &nd)) == 0) {
				nd->fail = true;
				CHECK_RC(w, rdag_backward(w->a, ctx, &loss, 1, false), RDAG_EIO,
					 "errors: the caller's own node failing");
			}
			bw_fwd_free(&f);
			CHECK_RC(w, rdag_ctx_release(w->a, ctx), 0, "errors: rdag_ctx_release");
		}
		/* 50 failing passes in a row, each on its own context. */
		bw_phase(w, "errors: 50 failing passes");
		for (int i = 0; i < 50; i++) {
			res = failing_pass(w, &c, 3, 3, bad, sizeof(bad));
			if (res < 0)
				break;
			if (res == 1 && wrong++ == 0)
				printf("errors: failing pass %d: the node on 3 failed, rdag_last_error() says "
				       "\"%s\"\n",
				       i, bad);
		}
		CHECK(w, wrong == 0, "errors: %d of 50 failing passes (node on worker 3) reported another "
		      "worker's or an earlier pass's error text", wrong);
	}
	bw_barrier(w, "errors: failures done");
	/* Then a good pass on a new context: gradients right on all four. */
	bw_chain_round(w, &c, "errors: a good pass after 52 failed ones");
}

/* ---- kill --------------------------------------------------------------------------------- */

/*
 * 0 -> 1 -> victim (the last rank). The victim's node backward tells the parent, which SIGKILLs
 * it. rdag_backward on 0 must fail within 15 s naming the victim; 0 and 1 go on working.
 */
void sc_kill(struct bw_worker *w)
{
	int victim = w->cfg->victim;
	uint16_t hops[2] = {1, (uint16_t)victim};
	char name[32];

	snprintf(name, sizeof(name), "worker%d", victim);
	if (w->rank == victim) {
		/* Serve until killed (from inside the node's backward); the wait is bounded. */
		bw_phase(w, "kill: victim serving");
		bw_await(w, 0, BW_SLOT_DONE, 1, 200, "kill: the victim was never killed");
		return;
	}
	if (w->rank == 0) {
		static const uint16_t to1[] = {1};
		struct bw_expset es = {.n = 0};
		struct bw_chain c;
		struct bw_ctl ctl;
		struct bw_fwd f;
		char text[1024];
		uint64_t ctx, t0, ms, after;
		int rc;

		bw_phase(w, "kill: the pass that loses a worker");
		bw_chain_init(&c, 0, &S35, hops, 2, 300);
		CHECK_RC(w, rdag_ctx_create(w->a, &ctx), 0, "kill: rdag_ctx_create");
		bw_ctl_init(&ctl, 0);
		ctl.block_at = 2;
		ctl.block = BW_BLOCK_KILL;
		rc = bw_fwd_run(w, &c, &ctl, &f, NULL);
		CHECK_RC(w, rc, 0, "kill: forward");
		if (rc == 0) {
			t0 = mp_now_ns();
			rc = rdag_backward(w->a, ctx, &f.loss, 1, false);
			snprintf(text, sizeof(text), "%s", rdag_last_error());
			ms = (mp_now_ns() - t0) / 1000000;
			CHECK(w, rc == RDAG_EPEER_DEAD || rc == RDAG_EREMOTE,
			      "kill: rdag_backward returned %d (%s), expected RDAG_EPEER_DEAD or "
			      "RDAG_EREMOTE: \"%s\"",
			      rc, rdag_strerror(rc), text);
			CHECK(w, strstr(text, name) != NULL, "kill: the error does not name %s: \"%s\"", name,
			      text);
			CHECK(w, ms <= 15000, "kill: rdag_backward failed after %llu ms (bound 15000)",
			      (unsigned long long)ms);
			CHECK(w, w->board->kill_ns != 0, "kill: the parent never killed the victim");
			after = w->board->kill_ns ? (mp_now_ns() - w->board->kill_ns) / 1000000 : 0;
			printf("kill: rdag_backward failed after %llu ms (%llu ms after SIGKILL): %s: "
			       "\"%s\"\n", (unsigned long long)ms, (unsigned long long)after,
			       rdag_strerror(rc), text);
		}
		bw_fwd_free(&f);
		t0 = mp_now_ns();
		CHECK_RC(w, rdag_ctx_release(w->a, ctx), 0, "kill: rdag_ctx_release with a dead worker");
		printf("kill: rdag_ctx_release took %llu ms\n",
		       (unsigned long long)((mp_now_ns() - t0) / 1000000));
		/* Calls to the dead worker fail at once. */
		bw_phase(w, "kill: after");
		{
			struct bw_chain d;

			bw_chain_init(&d, 0, &S4, hops + 1, 1, 301);
			CHECK_RC(w, rdag_ctx_create(w->a, &ctx), 0, "kill: rdag_ctx_create");
			t0 = mp_now_ns();
			rc = bw_fwd_run(w, &d, NULL, &f, NULL);
			snprintf(text, sizeof(text), "%s", rdag_last_error());
			CHECK_RC(w, rc, RDAG_EPEER_DEAD, "kill: a call to the dead worker");
			CHECK(w, strstr(text, name) != NULL, "kill: the error does not name %s: \"%s\"", name,
			      text);
			CHECK(w, mp_now_ns() - t0 < 5000000000ull,
			      "kill: a call to the dead worker took %llu ms",
			      (unsigned long long)((mp_now_ns() - t0) / 1000000));
			bw_fwd_free(&f);
			CHECK_RC(w, rdag_ctx_release(w->a, ctx), 0, "kill: rdag_ctx_release");
		}
		/* The survivors: a pass 0 -> 1 on a new context, 1's gradient read by RPC. */
		bw_chain_init(&c, 0, &S35, to1, 1, 302);
		CHECK_RC(w, rdag_ctx_create(w->a, &ctx), 0, "kill: rdag_ctx_create");
		rc = bw_fwd_run(w, &c, NULL, &f, NULL);
		CHECK_RC(w, rc, 0, "kill: forward among the survivors");
		if (rc == 0) {
			double got[15];
			void *gw[BW_MAXW];
			uint32_t count = 0;

			CHECK_RC(w, rdag_backward(w->a, ctx, &f.loss, 1, false), 0,
				 "kill: a pass among the survivors");
			bw_chain_expect(w, &c, f.x, &es);
			CHECK_GRADS(w, ctx, &es, 0, "kill: after the death, on 0");
			bw_expset_free(&es);
			bw_chain_ref(w, &c, NULL, NULL, gw);
			rc = bw_peek(w, 1, ctx, RDAG_F64, 15, 0, got, &count);
			CHECK_RC(w, rc, 0, "kill: peek on 1");
			if (rc == 0)
				CHECK(w, count == 1 && bw_cmp(RDAG_F64, got, gw[1], 15, 0) == 0,
				      "kill: 1's gradient after the death is wrong (%u gradients)", count);
			for (int r = 0; r < BW_MAXW; r++)
				free(gw[r]);
		}
		bw_fwd_free(&f);
		CHECK_RC(w, rdag_ctx_release(w->a, ctx), 0, "kill: rdag_ctx_release");
		bw_put(w, BW_SLOT_DONE, 1);
		bw_await(w, 1, BW_SLOT_DONE, 1, 60, "kill: 1 done");
	} else {
		bw_phase(w, "kill: serving");
		bw_await(w, 0, BW_SLOT_DONE, 1, 200, "kill: 0 done");
		bw_put(w, BW_SLOT_DONE, 1);
	}
	/* Every context of 0's is released here too (cleanups reached us; the dead one skipped). */
	{
		uint64_t dl = bw_deadline(w, 30);

		while (rdag_ctx_count(w->a) != 0 && mp_wait_until(dl))
			;
		CHECK(w, rdag_ctx_count(w->a) == 0, "kill: %zu contexts left", rdag_ctx_count(w->a));
	}
}

/* ---- release_during ----------------------------------------------------------------------- */

struct releaser {
	struct bw_worker *w;
	uint64_t ctx;
	int rc;
	uint64_t ms;
};

/* Another thread of 0: once 1's node is inside the pass, release the context. */
static void *release_main(void *arg)
{
	struct releaser *r = arg;
	struct bw_worker *w = r->w;
	uint64_t t0;

	r->rc = -1;
	if (bw_await(w, 1, BW_SLOT_IN_NODE, r->ctx + 1, 60, "release_during: 1's node running"))
		return NULL;
	t0 = mp_now_ns();
	r->rc = rdag_ctx_release(w->a, r->ctx);
	r->ms = (mp_now_ns() - t0) / 1000000;
	bw_put(w, BW_SLOT_RELEASED, r->ctx + 1);
	return NULL;
}

void sc_release_during(struct bw_worker *w)
{
	static const uint16_t to1[] = {1}, aba[] = {1, 0, 1};
	struct bw_chain c;

	for (int round = 0; round < 2; round++) {
		uint64_t ctx = ~0ull;

		bw_phase(w, "release_during: round %d", round);
		if (w->rank == 0) {
			struct releaser r = {.w = w};
			struct bw_ctl ctl;
			struct bw_fwd f;
			pthread_t th;
			char text[1024];
			uint64_t t0, ms;
			int rc;

			/* round 0: 0 -> 1, 1's node blocks; round 1: 0 -> 1 -> 0 -> 1, the first hop's node */
			bw_chain_init(&c, 0, &S35, round ? aba : to1, round ? 3 : 1, 400 + (uint64_t)round);
			CHECK_RC(w, rdag_ctx_create(w->a, &ctx), 0, "release_during: rdag_ctx_create");
			bw_ctl_init(&ctl, 0);
			ctl.block_at = 1;
			ctl.block = BW_BLOCK_GATE;
			ctl.gate_ctx = ctx;
			rc = bw_fwd_run(w, &c, &ctl, &f, NULL);
			CHECK_RC(w, rc, 0, "release_during: forward");
			r.ctx = ctx;
			if (rc == 0 && pthread_create(&th, NULL, release_main, &r) == 0) {
				t0 = mp_now_ns();
				rc = rdag_backward(w->a, ctx, &f.loss, 1, false);
				snprintf(text, sizeof(text), "%s", rdag_last_error());
				ms = (mp_now_ns() - t0) / 1000000;
				pthread_join(th, NULL);
				CHECK_RC(w, r.rc, 0, "release_during: rdag_ctx_release from another thread");
				/* Either outcome is allowed; a failure must say what happened. */
				CHECK(w, rc == 0 || (text[0] != '\0' && strstr(text, "context") != NULL),
				      "release_during: rdag_backward: %d (%s) with an unclear error \"%s\"",
				      rc,
				      rdag_strerror(rc), text);
				CHECK(w, ms < 60000, "release_during: rdag_backward took %llu ms",
				      (unsigned long long)ms);
				printf("release_during: round %d: rdag_backward %s after %llu ms%s%s%s (release "
				       "took %llu ms)\n",
				       round, rc ? rdag_strerror(rc) : "succeeded", (unsigned long long)ms,
				       rc ? ": \"" : "", rc ? text : "", rc ? "\"" : "",
				       (unsigned long long)r.ms);
				CHECK_RC(w, rdag_ctx_lookup(w->a, ctx), RDAG_ENOENT,
					 "release_during: the context survived");
			} else if (rc == 0) {
				CHECK(w, 0, "release_during: pthread_create");
			}
			bw_fwd_free(&f);
			/* Released by another thread, the context stays current on this one: clear it. */
			rdag_ctx_set_current(w->a, ctx, 0);
			bw_put(w, BW_SLOT_CTX, ctx + 1);
		}
		bw_barrier(w, "release_during: pass over");
		ctx = bw_get(w, 0, BW_SLOT_CTX) - 1;
		if (w->rank == 1) {
			/* the cleanup reached 1 while its pass ran: the context is gone here too */
			CHECK_RC(w, rdag_ctx_lookup(w->a, ctx), RDAG_ENOENT,
				 "release_during: 1 still has the context");
			CHECK(w, rdag_ctx_count(w->a) == 0, "release_during: %zu contexts on 1",
			      rdag_ctx_count(w->a));
		}
		bw_barrier(w, "release_during: checked");
	}
	/* Later passes on new contexts work. */
	bw_chain_init(&c, 0, &S35, to1, 1, 410);
	bw_chain_round(w, &c, "release_during: a pass afterwards");
	bw_chain_init(&c, 1, &S4, aba, 3, 411);
	c.hops[0] = 0;
	c.hops[1] = 1;
	c.hops[2] = 0;
	bw_chain_round(w, &c, "release_during: a round trip afterwards");
}

/* ---- abort -------------------------------------------------------------------------------- */

/* Publishes this worker's abort counters (+ 1) until want of them are seen, or s seconds. */
static void publish_aborts(struct bw_worker *w, unsigned want_runs, unsigned want_heard, unsigned s)
{
	uint64_t dl = bw_deadline(w, s);
	unsigned runs = 0, heard = 0;

	for (;;) {
		agent_test_abort_stats(w->a, &runs, &heard);
		bw_put(w, BW_SLOT_ABORT_RUNS, runs + 1ull);
		bw_put(w, BW_SLOT_ABORT_HEARD, heard + 1ull);
		if ((runs >= want_runs && heard >= want_heard) || !mp_wait_until(dl))
			break;
	}
}

/*
 * An error aborts the pass on every worker of the context, not only up the failing chain. Two
 * roots on 0: 0 -> 1, whose node fails once 3's node is running; and 0 -> 2 -> 3, whose node
 * on 3 blocks until 0 lets it go. 0's rdag_backward fails with 1's error; then, while 3's node
 * still blocks, 2 must have stopped waiting for 3 (its run aborted) and 3 must have heard of
 * the abort (forwarded by 2: 0 never talked to 3). Let go, 3's run stops before sending its
 * gradients. After that, a good pass on a new context.
 */
void sc_abort(struct bw_worker *w)
{
	static const uint16_t to1[] = {1}, to23[] = {2, 3};
	struct bw_chain ca, cb;

	bw_chain_init(&ca, 0, &S35, to1, 1, 500);
	bw_chain_init(&cb, 0, &S35, to23, 2, 501);
	bw_phase(w, "abort: the failing pass");
	if (w->rank == 0) {
		struct bw_ctl cta, ctb;
		struct bw_fwd fa, fb;
		struct rdag_tensor roots[2];
		char text[1024];
		uint64_t ctx = ~0ull, t0, ms;
		int rc, rc2;

		CHECK_RC(w, rdag_ctx_create(w->a, &ctx), 0, "abort: rdag_ctx_create");
		bw_ctl_init(&cta, 0);
		cta.fail_at = 1;
		cta.block_at = 1;
		cta.block = BW_BLOCK_WAIT;
		cta.gate_rank = 3;
		cta.gate_ctx = ctx;
		bw_ctl_init(&ctb, 0);
		ctb.block_at = 2;
		ctb.block = BW_BLOCK_GATE;
		ctb.gate_ctx = ctx;
		rc = bw_fwd_run(w, &ca, &cta, &fa, NULL);
		CHECK_RC(w, rc, 0, "abort: forward 0 -> 1");
		rc2 = bw_fwd_run(w, &cb, &ctb, &fb, NULL);
		CHECK_RC(w, rc2, 0, "abort: forward 0 -> 2 -> 3");
		if (rc == 0 && rc2 == 0) {
			roots[0] = fa.loss;
			roots[1] = fb.loss;
			t0 = mp_now_ns();
			rc = rdag_backward(w->a, ctx, roots, 2, false);
			snprintf(text, sizeof(text), "%s", rdag_last_error());
			ms = (mp_now_ns() - t0) / 1000000;
			CHECK_ERR(w, rc, RDAG_EREMOTE, text, "Error on Node 1:", "abort: rdag_backward");
			printf("abort: rdag_backward failed after %llu ms: \"%s\"\n", (unsigned long long)ms,
			       text);
			/* 3's node is still blocked: 2 gave up on it, and 3 knows. */
			t0 = mp_now_ns();
			if (bw_await(w, 2, BW_SLOT_ABORT_RUNS, 2, 30, "abort: 2's run was not aborted") == 0 &&
			    bw_await(w, 3, BW_SLOT_ABORT_HEARD, 2, 30, "abort: 3 never heard of it") == 0)
				printf("abort: 2's run aborted and 3 told within %llu ms of the failure, while "
				       "3's node was still running\n",
				       (unsigned long long)((mp_now_ns() - t0) / 1000000));
			CHECK(w, bw_get(w, 3, BW_SLOT_IN_NODE) == ctx + 1, "abort: 3's node never ran");
		}
		/* Let 3's node go: its run must end aborted, sending nothing. */
		bw_put(w, BW_SLOT_RELEASED, ctx + 1);
		bw_await(w, 3, BW_SLOT_ABORT_RUNS, 2, 30, "abort: 3's run was not aborted");
		bw_fwd_free(&fa);
		bw_fwd_free(&fb);
		CHECK_RC(w, rdag_ctx_release(w->a, ctx), 0, "abort: rdag_ctx_release");
		bw_put(w, BW_SLOT_DONE, 1);
	} else if (w->rank == 2) {
		publish_aborts(w, 1, 1, 60);
	} else if (w->rank == 3) {
		publish_aborts(w, 0, 1, 60);   /* heard, while the node blocks */
		publish_aborts(w, 1, 1, 60);   /* then the run ends */
	}
	if (w->rank != 0)
		bw_await(w, 0, BW_SLOT_DONE, 1, 120, "abort: 0 done");
	bw_barrier(w, "abort: failing pass over");
	/* The same workers, a good pass on a new context. */
	bw_chain_round(w, &cb, "abort: a good pass after the aborted one");
}
