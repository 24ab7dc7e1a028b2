/* Scenarios on contexts: ids, nesting, what each kind of call records on every side, cleanup. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent_mp.h"

/* ---- helpers --------------------------------------------------------------------------------- */

static uint64_t new_ctx(struct am_worker *w)
{
	uint64_t id = ~0ull;
	int rc = rdag_ctx_create(w->a, &id);

	CHECK_RC(w, rc, 0, "rdag_ctx_create");
	if (rc == 0)
		CHECK(w, am_top(id) == w->rank, "context id %#llx does not carry worker %d",
		      (unsigned long long)id, w->rank);
	return id;
}

static void release_ctx(struct am_worker *w, uint64_t id)
{
	uint64_t cur = 0;

	CHECK_RC(w, rdag_ctx_release(w->a, id), 0, "rdag_ctx_release(%#llx)",
		 (unsigned long long)id);
	CHECK_RC(w, rdag_ctx_lookup(w->a, id), RDAG_ENOENT, "lookup of %#llx after its release",
		 (unsigned long long)id);
	CHECK_RC(w, rdag_ctx_current(w->a, &cur), RDAG_ENOENT,
		 "current context after releasing %#llx", (unsigned long long)id);
}

/* One hop's observation: magic, who ran it, who called, the context it had (and made current). */
static void check_obs(struct am_worker *w, int line, const struct am_res *res, unsigned hop,
		      int worker, int caller, int has_ctx, uint64_t ctx)
{
	const struct am_obs *o = &res->obs[hop];

	if (hop >= res->nobs) {
		am_fail(w, __FILE__, line, "reply has %u observations, hop %u missing", res->nobs,
			hop);
		return;
	}
	if (o->magic != AM_OBS_MAGIC || o->worker != worker || o->caller != caller) {
		am_fail(w, __FILE__, line,
			"hop %u: ran on %u called by %u, expected %d called by %d", hop, o->worker,
			o->caller, worker, caller);
		return;
	}
	if (o->has_context != (has_ctx != 0))
		am_fail(w, __FILE__, line, "hop %u (worker %d): has_context %u, expected %d", hop,
			worker, o->has_context, has_ctx);
	if (has_ctx && o->context_id != ctx)
		am_fail(w, __FILE__, line, "hop %u (worker %d): context %#llx, expected %#llx", hop,
			worker, (unsigned long long)o->context_id, (unsigned long long)ctx);
	if (has_ctx && (o->cur_rc != 0 || o->cur_id != ctx))
		am_fail(w, __FILE__, line,
			"hop %u (worker %d): rdag_ctx_current in the function: %d, %#llx; "
			"expected the call's context %#llx",
			hop, worker, o->cur_rc, (unsigned long long)o->cur_id,
			(unsigned long long)ctx);
	if (!has_ctx && o->cur_rc != RDAG_ENOENT)
		am_fail(w, __FILE__, line,
			"hop %u (worker %d): a call without context found current context "
			"%#llx (rc %d)",
			hop, worker, (unsigned long long)o->cur_id, o->cur_rc);
}
#define CHECK_OBS(w, res, hop, worker, caller, has_ctx, ctx)                                       \
	check_obs((w), __LINE__, (res), (hop), (worker), (caller), (has_ctx), (ctx))

/* What a hop saw of received tensor i: bytes, requires_grad, grad kind (RECV: msg id, input_nr). */
static void check_tobs(struct am_worker *w, int line, const struct am_res *res, unsigned hop,
		       unsigned i, uint64_t nbytes, int grad, uint64_t msg_id)
{
	const struct am_tobs *t;

	if (hop >= res->nobs || i >= res->obs[hop].ntensors || i >= AM_MAXT) {
		am_fail(w, __FILE__, line, "hop %u: no received tensor %u", hop, i);
		return;
	}
	t = &res->obs[hop].t[i];
	if (t->nbytes != nbytes || t->bad)
		am_fail(w, __FILE__, line,
			"hop %u tensor %u: %llu bytes, expected %llu; first bad byte %lld", hop, i,
			(unsigned long long)t->nbytes, (unsigned long long)nbytes,
			(long long)t->bad - 1);
	if (grad) {
		if (!t->requires_grad || t->grad_kind != RDAG_GRAD_RECV || t->input_nr != i)
			am_fail(w, __FILE__, line,
				"hop %u tensor %u: requires_grad %u grad_kind %u input_nr %u, "
				"expected 1, RDAG_GRAD_RECV, %u",
				hop, i, t->requires_grad, t->grad_kind, t->input_nr, i);
		else if (t->msg_id != msg_id)
			am_fail(w, __FILE__, line,
				"hop %u tensor %u: its recv function has message id %#llx, "
				"expected %#llx",
				hop, i, (unsigned long long)t->msg_id, (unsigned long long)msg_id);
	} else if (t->requires_grad || t->grad_kind != RDAG_GRAD_NONE) {
		am_fail(w, __FILE__, line,
			"hop %u tensor %u: requires_grad %u grad_kind %u, expected 0 and "
			"RDAG_GRAD_NONE",
			hop, i, t->requires_grad, t->grad_kind);
	}
}
#define CHECK_TOBS(w, res, hop, i, nbytes, grad, msg_id)                                           \
	check_tobs((w), __LINE__, (res), (hop), (i), (nbytes), (grad), (msg_id))

/* Edges of send function msg_id of ctx into out (cap 16): how many (0 after a failed check). */
static size_t edges(struct am_worker *w, uint64_t ctx, uint64_t msg_id, struct rdag_edge_info *out)
{
	size_t n = 0;
	int rc = rdag_ctx_send_fn_edges(w->a, ctx, msg_id, out, 16, &n);

	CHECK_RC(w, rc, 0, "rdag_ctx_send_fn_edges(%#llx, %#llx)", (unsigned long long)ctx,
		 (unsigned long long)msg_id);
	return rc ? 0 : n < 16 ? n : 16;
}

/* The one edge of send function msg_id: kind, node, input_nr (if >= 0), tensor index. */
static void check_edge1(struct am_worker *w, int line, uint64_t ctx, uint64_t msg_id, int kind,
			const void *node, int input_nr)
{
	struct rdag_edge_info e[16];
	size_t n = edges(w, ctx, msg_id, e);

	if (n != 1) {
		am_fail(w, __FILE__, line, "send function %#llx: %zu edges, expected 1",
			(unsigned long long)msg_id, n);
		return;
	}
	if (e[0].grad_kind != kind || e[0].edge.node != node || e[0].tensor_index != 0 ||
	    (input_nr >= 0 && e[0].edge.input_nr != (uint32_t)input_nr))
		am_fail(w, __FILE__, line,
			"send function %#llx: edge kind %u node %p input_nr %u tensor %u; "
			"expected kind %d node %p input_nr %d tensor 0",
			(unsigned long long)msg_id, e[0].grad_kind, e[0].edge.node,
			e[0].edge.input_nr, e[0].tensor_index, kind, node, input_nr);
}
#define CHECK_EDGE1(w, ctx, msg_id, kind, node, input_nr)                                          \
	check_edge1((w), __LINE__, (ctx), (msg_id), (kind), (node), (input_nr))

/* Context ctx is gone on every worker: "count" on the others, lookups here. */
static void check_gone(struct am_worker *w, uint64_t ctx)
{
	struct am_count c;

	CHECK_RC(w, rdag_ctx_lookup(w->a, ctx), RDAG_ENOENT, "lookup of released context %#llx",
		 (unsigned long long)ctx);
	for (int r = 0; r < w->world; r++) {
		if (r == w->rank || am_count(w, (uint32_t)r, ctx, &c))
			continue;
		CHECK(w, c.lookup_rc == RDAG_ENOENT && c.ctx_count == 0,
		      "context %#llx released here, but worker %d still has it (lookup %d, %llu "
		      "contexts)",
		      (unsigned long long)ctx, r, c.lookup_rc, (unsigned long long)c.ctx_count);
	}
}

/* After a barrier that follows every release: nothing left here. */
static void check_none_here(struct am_worker *w, uint64_t ctx)
{
	CHECK(w, rdag_ctx_count(w->a) == 0, "%zu contexts alive after %#llx was released",
	      rdag_ctx_count(w->a), (unsigned long long)ctx);
	CHECK_RC(w, rdag_ctx_lookup(w->a, ctx), RDAG_ENOENT, "lookup of released context %#llx",
		 (unsigned long long)ctx);
}

/* check_none_here, then a barrier: the next phase must not create contexts before the check. */
static void settled(struct am_worker *w, uint64_t ctx, const char *what)
{
	check_none_here(w, ctx);
	am_barrier(w, what);
}

/* A 1-D U8 leaf of n bytes of pattern seed + idx, under key. */
static void leaf(struct rdag_tensor *t, void *buf, size_t n, uint64_t seed, void *key)
{
	mp_fill(buf, n, seed);
	am_tensor_u8(t, buf, n);
	am_leaf(t, key);
}

/*
 * A new context *c (published in this worker's board slot) and in it a call of "f" with x along
 * path[0..n) (to path[0], which forwards to path[1], ...), returning ret. Checks that it succeeds
 * ("call <me> -> <path[0]> -> ..."); returns its status.
 */
static int call_path(struct am_worker *w, unsigned slot, uint64_t *c, const struct rdag_tensor *x,
		     enum am_ret ret, uint64_t seed, const uint16_t *path, unsigned n,
		     struct am_res *res)
{
	struct am_ctl ctl;
	char what[64];
	size_t len;
	int rc;

	*c = new_ctx(w);
	am_put(w, slot, *c);
	am_ctl_init(&ctl, ret, seed);
	ctl.nhops = n - 1;
	len = (size_t)snprintf(what, sizeof(what), "call %d -> %u", w->rank, path[0]);
	for (unsigned i = 1; i < n; i++) {
		ctl.hops[i - 1] = path[i];
		if (len < sizeof(what))
			len += (size_t)snprintf(what + len, sizeof(what) - len, " -> %u", path[i]);
	}
	rc = am_call(w, path[0], &ctl, x, 1, 0, res);
	CHECK_RC(w, rc, 0, "%s", what);
	return rc;
}

/*
 * Worker 0's call 0 -> 1 -> hop of x (a leaf of nbytes, pattern seed) in a new context (slot 0),
 * and what every such call shows: one send function (to 1, *m1 its message id), two hops, the
 * first one's view. Returns the call's status.
 */
static int call_via_1(struct am_worker *w, uint16_t hop, const struct rdag_tensor *x, size_t nbytes,
		      uint64_t seed, uint64_t *c, uint64_t *m1, struct am_res *res)
{
	struct rdag_fn_info fi[AM_MAXFNS];
	int rc = call_path(w, 0, c, x, AM_RET_NOGRAD, seed, (const uint16_t[]){1, hop}, 2, res);

	CHECK_FNS(w, *c, 1, 1, 1, 1, fi);
	*m1 = fi[0].msg_id;
	if (rc == 0) {
		CHECK(w, res->nobs == 2, "%u hops reported", res->nobs);
		CHECK_OBS(w, res, 0, 1, 0, 1, *c);
		CHECK_TOBS(w, res, 0, 0, nbytes, 1, *m1);
	}
	return rc;
}

/* The end of a scenario on ctx: checked, released by its creator (then gone everywhere), none left. */
static void release_from(struct am_worker *w, int creator, uint64_t ctx, const char *name)
{
	char what[64];

	snprintf(what, sizeof(what), "%s: checked", name);
	am_barrier(w, what);
	if (w->rank == creator) {
		release_ctx(w, ctx);
		check_gone(w, ctx);
	}
	snprintf(what, sizeof(what), "%s: released", name);
	am_barrier(w, what);
	check_none_here(w, ctx);
}

/* ---- ids ------------------------------------------------------------------------------------- */

void sc_ids(struct am_worker *w)
{
	const uint64_t me = (uint64_t)w->rank << 48;
	uint32_t peer = (uint32_t)((w->rank + 1) % w->world);
	uint64_t id = 0, prev = 0, cur = 0, c;
	struct rdag_fn_info fi[AM_MAXFNS];
	struct rdag_tensor x;
	struct am_ctl ctl;
	struct am_res res;
	uint8_t buf[64];
	char key;
	size_t n;
	int rc;

	/* Contexts: 200 on every worker, (rank << 48) | 0, 1, 2, ... */
	am_phase(w, "ids: 200 contexts");
	for (int i = 0; i < 200; i++) {
		rc = rdag_ctx_create(w->a, &id);
		CHECK_RC(w, rc, 0, "context %d", i);
		if (rc)
			break;
		CHECK(w, am_top(id) == w->rank, "context %d: id %#llx", i, (unsigned long long)id);
		if (i == 0)
			CHECK(w, id == me, "first context id %#llx, expected %#llx",
			      (unsigned long long)id, (unsigned long long)me);
		else
			CHECK(w, am_low(id) == am_low(prev) + 1, "context %d: id %#llx after %#llx",
			      i, (unsigned long long)id, (unsigned long long)prev);
		CHECK_RC(w, rdag_ctx_current(w->a, &cur), 0, "current context");
		CHECK(w, cur == id, "current %#llx, created %#llx", (unsigned long long)cur,
		      (unsigned long long)id);
		CHECK_RC(w, rdag_ctx_release(w->a, id), 0, "release of context %d", i);
		prev = id;
	}
	CHECK(w, rdag_ctx_count(w->a) == 0, "%zu contexts after releasing them all",
	      rdag_ctx_count(w->a));
	am_barrier(w, "ids: contexts");

	/* Message ids: a counter of their own, in turns so that only the caller's counter moves. */
	mp_fill(buf, sizeof(buf), 11);
	am_tensor_u8(&x, buf, sizeof(buf));
	am_leaf(&x, &key);
	for (int t = 0; t < w->world; t++) {
		if (w->rank == t) {
			uint64_t m[3] = {0, 0, 0};

			am_phase(w, "ids: message ids");
			c = new_ctx(w);
			CHECK(w, am_low(c) == 200, "context after 200: %#llx",
			      (unsigned long long)c);
			for (unsigned i = 0; i < 3; i++) {
				am_ctl_init(&ctl, AM_RET_NOGRAD, 11);
				rc = am_call(w, peer, &ctl, &x, 1, 0, &res);
				CHECK_RC(w, rc, 0, "call %u to %u", i, peer);
				n = am_fns(w, c, 1, fi);
				CHECK(w, n == i + 1, "%zu send functions after %u calls", n, i + 1);
				if (rc == 0 && n == i + 1) {
					m[i] = fi[i].msg_id;
					CHECK(w, am_top(m[i]) == w->rank, "message id %#llx",
					      (unsigned long long)m[i]);
					CHECK(w, i == 0 || m[i] == m[i - 1] + 1,
					      "message id %#llx after %#llx",
					      (unsigned long long)m[i],
					      (unsigned long long)m[i - 1]);
					CHECK(w, res.nobs && res.obs[0].t[0].msg_id == m[i],
					      "the callee's recv function has message id %#llx, "
					      "the send function %#llx",
					      (unsigned long long)res.obs[0].t[0].msg_id,
					      (unsigned long long)m[i]);
				}
				am_res_free(&res);
			}
			/*
			 * The first message id: worker 0 has handed out none before; a later
			 * worker only for its <= 3 replies to the previous turn. The context
			 * counter is at 201.
			 */
			if (t == 0)
				CHECK(w, m[0] == me,
				      "first message id %#llx, expected %#llx (a counter of its "
				      "own)",
				      (unsigned long long)m[0], (unsigned long long)me);
			else
				CHECK(w, am_low(m[0]) <= 3,
				      "first own message id %#llx: not a counter of its own "
				      "(the context counter is at 201)",
				      (unsigned long long)m[0]);
			release_ctx(w, c);
			c = new_ctx(w);
			CHECK(w, am_low(c) == 201,
			      "context after the calls: %#llx, expected low bits 201 (message "
			      "ids must not move the context counter)",
			      (unsigned long long)c);
			release_ctx(w, c);
		}
		am_barrier(w, "ids: message id turn");
	}

	/* Exhaustion of context ids on every worker: 0xffffffffffff is the last one. */
	am_phase(w, "ids: context ids exhausted");
	agent_test_set_id_counters(w->a, AM_MASK48, 0x100000);
	rc = rdag_ctx_create(w->a, &id);
	CHECK_RC(w, rc, 0, "the last context id");
	if (rc == 0) {
		CHECK(w, id == (me | AM_MASK48), "last context id %#llx", (unsigned long long)id);
		CHECK_RC(w, rdag_ctx_release(w->a, id), 0, "release of the last context");
	}
	id = 0x1234;
	CHECK_RC(w, rdag_ctx_create(w->a, &id), RDAG_ERANGE, "a context past the last id");
	CHECK_RC(w, rdag_ctx_current(w->a, &cur), RDAG_ENOENT, "current after a failed create");
	CHECK_RC(w, rdag_ctx_create(w->a, &id), RDAG_ERANGE, "a context past the last id, again");
	CHECK(w, rdag_ctx_count(w->a) == 0, "%zu contexts", rdag_ctx_count(w->a));
	am_barrier(w, "ids: context exhaustion");

	/* Message id exhaustion, in turns (an exhausted worker cannot wrap replies: restored). */
	for (int t = 0; t < w->world; t++) {
		if (w->rank == t) {
			struct rdag_msg args = {.payload = &ctl,
						.payload_len = sizeof(ctl),
						.tensors = &x,
						.ntensors = 1};
			struct rdag_tensor y;
			rdag_future_t *f = NULL;

			am_phase(w, "ids: message ids exhausted");
			agent_test_set_id_counters(w->a, 0x1000, AM_MASK48);
			c = new_ctx(w);
			CHECK(w, am_low(c) == 0x1000,
			      "context id %#llx after setting the counter to 0x1000",
			      (unsigned long long)c);
			am_ctl_init(&ctl, AM_RET_NOGRAD, 11);
			rc = am_call(w, peer, &ctl, &x, 1, 0, &res);
			CHECK_RC(w, rc, 0, "call with the last message id");
			am_res_free(&res);
			n = am_fns(w, c, 1, fi);
			CHECK(w, n == 1 && fi[0].msg_id == (me | AM_MASK48),
			      "%zu send functions, first %#llx; "
			      "expected the last message id %#llx",
			      n, n ? (unsigned long long)fi[0].msg_id : 0ull,
			      (unsigned long long)(me | AM_MASK48));
			rc = am_call(w, peer, &ctl, &x, 1, 0, &res);
			CHECK_RC(w, rc, RDAG_ERANGE, "rdag_rpc_sync past the last message id");
			am_res_free(&res);
			rc = rdag_rpc_async(w->a, peer, "f", &args, NULL, &f);
			CHECK_RC(w, rc, RDAG_ERANGE, "rdag_rpc_async past the last message id");
			if (rc == 0)
				rdag_future_free(f);
			CHECK_FNS(w, c, 1, 1, (int)peer, 1, NULL);
			/* A PLAIN call without grad is not wrapped: it needs no id. */
			am_tensor_u8(&y, buf, 16);
			rc = am_call(w, peer, &ctl, &y, 1, RDAG_CALL_PLAIN, &res);
			CHECK_RC(w, rc, 0,
				 "RDAG_CALL_PLAIN call without grad while message ids are "
				 "exhausted");
			if (rc == 0)
				CHECK(w, res.nobs && !res.obs[0].has_context,
				      "a PLAIN call without grad carried the context");
			am_res_free(&res);
			release_ctx(w, c);
			/* Without a context nothing is wrapped either. */
			rc = am_call(w, peer, &ctl, &x, 1, 0, &res);
			CHECK_RC(w, rc, 0,
				 "call without a context while message ids are exhausted");
			am_res_free(&res);
			agent_test_set_id_counters(w->a, 0x2000, 0x200000);
			c = new_ctx(w);
			CHECK(w, am_low(c) == 0x2000, "context id %#llx", (unsigned long long)c);
			rc = am_call(w, peer, &ctl, &x, 1, 0, &res);
			CHECK_RC(w, rc, 0, "call after restoring the message counter");
			am_res_free(&res);
			n = am_fns(w, c, 1, fi);
			CHECK(w, n == 1 && fi[0].msg_id == (me | 0x200000),
			      "%zu send functions, first %#llx", n,
			      n ? (unsigned long long)fi[0].msg_id : 0ull);
			release_ctx(w, c);
		}
		am_barrier(w, "ids: message id exhaustion turn");
	}
	CHECK(w, rdag_ctx_count(w->a) == 0, "%zu contexts at the end", rdag_ctx_count(w->a));
}

/* ---- nested ---------------------------------------------------------------------------------- */

struct nest_thr {
	struct am_worker *w;
	uint64_t id1;
};

static void *nested_thread(void *arg)
{
	struct nest_thr *s = arg;
	struct am_worker *w = s->w;
	uint64_t cur = 0, id2 = 0;
	int rc;

	CHECK_RC(w, rdag_ctx_current(w->a, &cur), RDAG_ENOENT,
		 "a new thread has a current context");
	CHECK_RC(w, rdag_ctx_set_current(w->a, s->id1, 1), 0, "rdag_ctx_set_current(%#llx)",
		 (unsigned long long)s->id1);
	CHECK_RC(w, rdag_ctx_current(w->a, &cur), 0, "current after set_current");
	CHECK(w, cur == s->id1, "current %#llx after set_current(%#llx)", (unsigned long long)cur,
	      (unsigned long long)s->id1);
	CHECK_RC(w, rdag_ctx_create(w->a, &id2), RDAG_EBUSY, "create with a context set current");
	CHECK_RC(w, rdag_ctx_set_current(w->a, 0, 0), 0, "clearing the current context");
	CHECK_RC(w, rdag_ctx_current(w->a, &cur), RDAG_ENOENT, "current after clearing it");
	rc = rdag_ctx_create(w->a, &id2);
	CHECK_RC(w, rc, 0, "create on the second thread");
	if (rc == 0) {
		CHECK(w, id2 != s->id1 && am_low(id2) == am_low(s->id1) + 1,
		      "second context %#llx after %#llx", (unsigned long long)id2,
		      (unsigned long long)s->id1);
		CHECK_RC(w, rdag_ctx_current(w->a, &cur), 0, "current on the second thread");
		CHECK(w, cur == id2, "current %#llx", (unsigned long long)cur);
		CHECK_RC(w, rdag_ctx_release(w->a, id2), 0, "release on the second thread");
		CHECK_RC(w, rdag_ctx_current(w->a, &cur), RDAG_ENOENT, "current after the release");
	}
	CHECK_RC(w, rdag_ctx_set_current(w->a, ((uint64_t)w->rank << 48) | 0xabcdefu, 1),
		 RDAG_ENOENT, "set_current of an unknown context");
	return NULL;
}

void sc_nested(struct am_worker *w)
{
	struct nest_thr s = {.w = w};
	uint64_t cur = 0, id1 = 0, id = 0;
	pthread_t th;
	int rc;

	am_phase(w, "nested: one thread");
	CHECK_RC(w, rdag_ctx_current(w->a, &cur), RDAG_ENOENT, "current before any context");
	rc = rdag_ctx_create(w->a, &id1);
	CHECK_RC(w, rc, 0, "rdag_ctx_create");
	CHECK_RC(w, rdag_ctx_current(w->a, &cur), 0, "current after create");
	CHECK(w, cur == id1, "current %#llx, created %#llx", (unsigned long long)cur,
	      (unsigned long long)id1);
	id = 0x55;
	CHECK_RC(w, rdag_ctx_create(w->a, &id), RDAG_EBUSY, "nested rdag_ctx_create");
	CHECK_RC(w, rdag_ctx_current(w->a, &cur), 0, "current after the refused create");
	CHECK(w, cur == id1, "current %#llx after the refused create, expected %#llx",
	      (unsigned long long)cur, (unsigned long long)id1);
	CHECK(w, rdag_ctx_count(w->a) == 1, "%zu contexts", rdag_ctx_count(w->a));

	am_phase(w, "nested: second thread");
	s.id1 = id1;
	if (pthread_create(&th, NULL, nested_thread, &s) == 0)
		pthread_join(th, NULL);
	else
		CHECK(w, 0, "pthread_create");
	CHECK_RC(w, rdag_ctx_current(w->a, &cur), 0, "current after the second thread");
	CHECK(w, cur == id1, "the second thread changed this thread's current context to %#llx",
	      (unsigned long long)cur);
	CHECK(w, rdag_ctx_count(w->a) == 1, "%zu contexts", rdag_ctx_count(w->a));

	am_phase(w, "nested: release");
	CHECK_RC(w, rdag_ctx_release(w->a, ((uint64_t)w->rank << 48) | 0xabcdefu), RDAG_ENOENT,
		 "release of an unknown id");
	CHECK_RC(w, rdag_ctx_release(w->a, ((uint64_t)((w->rank + 1) % 65536) << 48) | 7u),
		 RDAG_ENOENT, "release of another worker's id this worker does not hold");
	CHECK_RC(w, rdag_ctx_release(w->a, id1), 0, "release");
	CHECK_RC(w, rdag_ctx_current(w->a, &cur), RDAG_ENOENT, "current after release");
	CHECK_RC(w, rdag_ctx_lookup(w->a, id1), RDAG_ENOENT, "lookup after release");
	CHECK(w, rdag_ctx_count(w->a) == 0, "%zu contexts after release", rdag_ctx_count(w->a));
	CHECK_RC(w, rdag_ctx_release(w->a, id1), RDAG_ENOENT, "second release");
	rc = rdag_ctx_create(w->a, &id);
	CHECK_RC(w, rc, 0, "create after release");
	if (rc == 0) {
		CHECK(w, am_low(id) == am_low(id1) + 2, "third context %#llx after %#llx",
		      (unsigned long long)id, (unsigned long long)id1);
		CHECK_RC(w, rdag_ctx_release(w->a, id), 0, "release");
	}
	am_barrier(w, "nested: local");

	/* In a function running with the caller's context current, creating one is nesting too. */
	if (w->world > 1) {
		uint32_t peer = (uint32_t)((w->rank + 1) % w->world);
		struct am_ctl ctl;
		struct am_res res;

		am_phase(w, "nested: in a function");
		id = new_ctx(w);
		am_ctl_init(&ctl, AM_RET_NONE, 0);
		ctl.opts = AM_TRY_CREATE;
		rc = am_call(w, peer, &ctl, NULL, 0, 0, &res);
		CHECK_RC(w, rc, 0, "call with AM_TRY_CREATE");
		if (rc == 0) {
			CHECK_OBS(w, &res, 0, (int)peer, w->rank, 1, id);
			CHECK_RC(w, res.obs[0].create_rc, RDAG_EBUSY,
				 "rdag_ctx_create inside a function with a context");
		}
		am_res_free(&res);
		release_ctx(w, id);
		/* Calls without context: no handler thread keeps a context current afterwards. */
		for (int i = 0; i < 8; i++) {
			rc = am_call(w, peer, &ctl, NULL, 0, 0, &res);
			CHECK_RC(w, rc, 0, "call %d without context", i);
			if (rc == 0) {
				CHECK_OBS(w, &res, 0, (int)peer, w->rank, 0, 0);
				CHECK_RC(w, res.obs[0].create_rc, 0,
					 "rdag_ctx_create inside a function without context");
			}
			am_res_free(&res);
		}
		am_barrier(w, "nested: functions");
		CHECK(w, rdag_ctx_count(w->a) == 0, "%zu contexts", rdag_ctx_count(w->a));
	}
}

/* ---- plain_call ------------------------------------------------------------------------------ */

void sc_plain_call(struct am_worker *w)
{
	struct rdag_fn_info fi[AM_MAXFNS];
	struct rdag_edge_info e[16];
	static uint8_t buf[1024];
	struct rdag_tensor x;
	struct am_ctl ctl;
	struct am_res res;
	uint64_t c = 0;
	size_t n;
	char key;
	int rc;

	if (w->rank == 0) {
		am_phase(w, "plain_call: call");
		c = new_ctx(w);
		am_put(w, 0, c);
		leaf(&x, buf, sizeof(buf), 21, &key);
		am_ctl_init(&ctl, AM_RET_NOGRAD, 21);
		rc = am_call(w, 1, &ctl, &x, 1, 0, &res);
		CHECK_RC(w, rc, 0, "call to 1");
		CHECK_FNS(w, c, 1, 1, 1, 1, fi);
		if (rc == 0) {
			const struct rdag_tensor *r = res.m.tensors;

			CHECK_OBS(w, &res, 0, 1, 0, 1, c);
			CHECK_TOBS(w, &res, 0, 0, sizeof(buf), 1, fi[0].msg_id);
			CHECK(w, am_top(fi[0].msg_id) == 0, "send function's message id %#llx",
			      (unsigned long long)fi[0].msg_id);
			CHECK(w, res.m.ntensors == 1, "%u result tensors", res.m.ntensors);
			if (res.m.ntensors == 1) {
				CHECK(w, !r->requires_grad && r->grad_kind == RDAG_GRAD_NONE,
				      "result requires_grad %u grad_kind %u", r->requires_grad,
				      r->grad_kind);
				CHECK(w,
				      rdag_tensor_nbytes(r) == 32 &&
					      !mp_check(r->data, 32, 21 ^ 0x7265u),
				      "result bytes differ");
			}
			am_put(w, 1, fi[0].msg_id);
		}
		am_res_free(&res);
		CHECK_EDGE1(w, c, fi[0].msg_id, RDAG_GRAD_LEAF, &key, -1);
		CHECK_RC(w, rdag_ctx_send_fn_edges(w->a, c, 0x1234, e, 16, &n), RDAG_ENOENT,
			 "edges of an unknown message id");
		CHECK_RC(w, rdag_ctx_send_fn_edges(w->a, c ^ 0x5555, fi[0].msg_id, e, 16, &n),
			 RDAG_ENOENT, "edges in an unknown context");
		CHECK_FNS(w, c, 0, 0, -1, -1, NULL);
		CHECK_KNOWN(w, c, 1u << 1);
	}
	am_barrier(w, "plain_call: called");
	c = am_get(w, 0, 0);
	am_phase(w, "plain_call: state");
	if (w->rank == 1) {
		struct am_obs o;

		CHECK_RC(w, rdag_ctx_lookup(w->a, c), 0, "the callee holds context %#llx",
			 (unsigned long long)c);
		CHECK(w, rdag_ctx_count(w->a) == 1, "%zu contexts", rdag_ctx_count(w->a));
		CHECK_FNS(w, c, 1, 0, -1, -1, NULL);
		CHECK_FNS(w, c, 0, 1, 0, 1, fi);
		CHECK(w, fi[0].msg_id == am_get(w, 0, 1),
		      "recv function %#llx, the caller's send function %#llx",
		      (unsigned long long)fi[0].msg_id, (unsigned long long)am_get(w, 0, 1));
		CHECK(w, am_seen(w, 0, &o) == 1, "f ran %u times", am_seen(w, 0, &o));
		CHECK(w, o.t[0].msg_id == fi[0].msg_id,
		      "the received tensor's recv function is %#llx",
		      (unsigned long long)o.t[0].msg_id);
		CHECK_KNOWN(w, c, 1u << 0);
	} else if (w->rank > 1) {
		CHECK_RC(w, rdag_ctx_lookup(w->a, c), RDAG_ENOENT,
			 "an uninvolved worker holds the context");
	}
	am_barrier(w, "plain_call: checked");
	if (w->rank == 0) {
		am_phase(w, "plain_call: release");
		release_ctx(w, c);
		CHECK_RC(w, rdag_ctx_send_fns(w->a, c, fi, AM_MAXFNS, &n), RDAG_ENOENT,
			 "send functions of a released context");
		CHECK_RC(w, rdag_ctx_recv_fns(w->a, c, fi, AM_MAXFNS, &n), RDAG_ENOENT,
			 "recv functions of a released context");
		CHECK_RC(w, rdag_ctx_known_workers(w->a, c, NULL, 0, &n), RDAG_ENOENT,
			 "known workers of a released context");
	}
	am_barrier(w, "plain_call: released");
	check_none_here(w, c);
}

/* ---- return_tensor --------------------------------------------------------------------------- */

void sc_return_tensor(struct am_worker *w)
{
	struct rdag_fn_info fi[AM_MAXFNS];
	static uint8_t buf[256];
	struct rdag_tensor x;
	struct am_ctl ctl;
	struct am_res res;
	uint64_t c = 0, m[2] = {0, 0}, r[2] = {0, 0};
	char key;
	int rc;

	if (w->rank == 0) {
		am_phase(w, "return_tensor: calls");
		c = new_ctx(w);
		am_put(w, 0, c);
		leaf(&x, buf, sizeof(buf), 31, &key);
		for (unsigned i = 0; i < 2; i++) {
			const struct rdag_tensor *t;

			am_ctl_init(&ctl, i == 0 ? AM_RET_INPUT : AM_RET_NODE, 31);
			rc = am_call(w, 1, &ctl, &x, 1, 0, &res);
			CHECK_RC(w, rc, 0, "call %u", i);
			if (rc) {
				am_res_free(&res);
				continue;
			}
			CHECK_OBS(w, &res, 0, 1, 0, 1, c);
			m[i] = res.obs[0].t[0].msg_id;
			CHECK_TOBS(w, &res, 0, 0, sizeof(buf), 1, m[i]);
			CHECK(w, res.m.ntensors == 1, "call %u: %u result tensors", i,
			      res.m.ntensors);
			if (res.m.ntensors != 1) {
				am_res_free(&res);
				continue;
			}
			t = res.m.tensors;
			CHECK(w,
			      t->requires_grad && t->grad_kind == RDAG_GRAD_RECV &&
				      t->grad_fn.node && t->grad_fn.input_nr == 0,
			      "call %u: result requires_grad %u grad_kind %u node %p input_nr %u, "
			      "expected a RECV "
			      "tensor",
			      i, t->requires_grad, t->grad_kind, t->grad_fn.node,
			      t->grad_fn.input_nr);
			if (t->grad_kind == RDAG_GRAD_RECV && t->grad_fn.node) {
				r[i] = rdag_recv_fn_msg_id(t->grad_fn.node);
				CHECK(w, am_top(r[i]) == 1,
				      "call %u: the reply's message id %#llx is not the callee's",
				      i, (unsigned long long)r[i]);
			}
			if (i == 0)
				CHECK(w,
				      rdag_tensor_nbytes(t) == sizeof(buf) &&
					      !mp_check(t->data, sizeof(buf), 31),
				      "returned input differs");
			else
				CHECK(w,
				      rdag_tensor_nbytes(t) == 32 &&
					      !mp_check(t->data, 32, 31 ^ 0x7265u),
				      "returned new tensor differs");
			am_res_free(&res);
		}
		CHECK(w, r[0] != r[1], "both replies under message id %#llx",
		      (unsigned long long)r[0]);
		CHECK_FNS(w, c, 1, 2, 1, 1, fi);
		CHECK(w, fi[0].msg_id == m[0] && fi[1].msg_id == m[1],
		      "send functions %#llx %#llx, expected %#llx %#llx",
		      (unsigned long long)fi[0].msg_id, (unsigned long long)fi[1].msg_id,
		      (unsigned long long)m[0], (unsigned long long)m[1]);
		CHECK_FNS(w, c, 0, 2, 1, 1, fi);
		CHECK(w, fi[0].msg_id == r[0] && fi[1].msg_id == r[1],
		      "recv functions %#llx %#llx, expected %#llx %#llx",
		      (unsigned long long)fi[0].msg_id, (unsigned long long)fi[1].msg_id,
		      (unsigned long long)r[0], (unsigned long long)r[1]);
		CHECK_KNOWN(w, c, 1u << 1);
		am_put(w, 1, m[0]);
		am_put(w, 2, m[1]);
		am_put(w, 3, r[0]);
		am_put(w, 4, r[1]);
	}
	am_barrier(w, "return_tensor: called");
	c = am_get(w, 0, 0);
	if (w->rank == 1) {
		struct am_obs o;

		am_phase(w, "return_tensor: callee state");
		for (unsigned i = 0; i < 2; i++) {
			m[i] = am_get(w, 0, 1 + i);
			r[i] = am_get(w, 0, 3 + i);
		}
		CHECK_FNS(w, c, 1, 2, 0, 1, fi);
		CHECK(w, fi[0].msg_id == r[0] && fi[1].msg_id == r[1],
		      "send functions %#llx %#llx, expected %#llx %#llx",
		      (unsigned long long)fi[0].msg_id, (unsigned long long)fi[1].msg_id,
		      (unsigned long long)r[0], (unsigned long long)r[1]);
		am_seen(w, 0, &o);
		/* The returned input's edge points at the recv function it arrived by. */
		CHECK_EDGE1(w, c, r[0], RDAG_GRAD_RECV, (void *)(uintptr_t)o.t[0].node, 0);
		if (o.t[0].node)
			CHECK(w, rdag_recv_fn_msg_id((void *)(uintptr_t)o.t[0].node) == m[0],
			      "recv function of %#llx", (unsigned long long)m[0]);
		CHECK_EDGE1(w, c, r[1], RDAG_GRAD_NODE, &am_node_key, 3);
		CHECK_FNS(w, c, 0, 2, 0, 1, fi);
		CHECK(w, fi[0].msg_id == m[0] && fi[1].msg_id == m[1],
		      "recv functions %#llx %#llx, expected %#llx %#llx",
		      (unsigned long long)fi[0].msg_id, (unsigned long long)fi[1].msg_id,
		      (unsigned long long)m[0], (unsigned long long)m[1]);
		CHECK_KNOWN(w, c, 1u << 0);
	}
	am_barrier(w, "return_tensor: checked");
	if (w->rank == 0)
		release_ctx(w, c);
	am_barrier(w, "return_tensor: released");
	check_none_here(w, c);
}

/* ---- chain3: 0 -> 1 -> 2, the middle forwarding what it received ----------------------------- */

void sc_chain3(struct am_worker *w)
{
	struct rdag_fn_info fi[AM_MAXFNS];
	static uint8_t buf[512];
	struct rdag_tensor x;
	struct am_res res;
	uint64_t c = 0, m1 = 0, m2 = 0;
	char key;

	if (w->rank == 0) {
		am_phase(w, "chain3: call");
		leaf(&x, buf, sizeof(buf), 41, &key);
		if (call_via_1(w, 2, &x, sizeof(buf), 41, &c, &m1, &res) == 0) {
			CHECK_RC(w, res.obs[0].nested_rc, 0, "the forwarded call on 1");
			CHECK_OBS(w, &res, 1, 2, 1, 1, c);
			if (res.nobs == 2) {
				m2 = res.obs[1].t[0].msg_id;
				CHECK_TOBS(w, &res, 1, 0, sizeof(buf), 1, m2);
				CHECK(w, am_top(m2) == 1 && m2 != m1,
				      "the forward 1 -> 2 under message id %#llx",
				      (unsigned long long)m2);
			}
		}
		am_res_free(&res);
		CHECK_EDGE1(w, c, m1, RDAG_GRAD_LEAF, &key, -1);
		CHECK_FNS(w, c, 0, 0, -1, -1, NULL);
		CHECK_KNOWN(w, c, 1u << 1);
		am_put(w, 1, m1);
		am_put(w, 2, m2);
	}
	am_barrier(w, "chain3: called");
	c = am_get(w, 0, 0);
	m1 = am_get(w, 0, 1);
	m2 = am_get(w, 0, 2);
	am_phase(w, "chain3: state");
	if (w->rank == 1) {
		struct am_obs o;

		CHECK_RC(w, rdag_ctx_lookup(w->a, c), 0, "the middle holds the context");
		CHECK_FNS(w, c, 0, 1, 0, 1, fi);
		CHECK(w, fi[0].msg_id == m1, "recv function %#llx, expected %#llx",
		      (unsigned long long)fi[0].msg_id, (unsigned long long)m1);
		CHECK_FNS(w, c, 1, 1, 2, 1, fi);
		CHECK(w, fi[0].msg_id == m2, "send function %#llx, expected %#llx",
		      (unsigned long long)fi[0].msg_id, (unsigned long long)m2);
		/* Its edge goes to the recv function the tensor came in by. */
		am_seen(w, 0, &o);
		CHECK_EDGE1(w, c, m2, RDAG_GRAD_RECV, (void *)(uintptr_t)o.t[0].node, 0);
		if (o.t[0].node)
			CHECK(w, rdag_recv_fn_msg_id((void *)(uintptr_t)o.t[0].node) == m1,
			      "the forwarded tensor's recv function is not that of %#llx",
			      (unsigned long long)m1);
		CHECK_KNOWN(w, c, 1u << 0 | 1u << 2);
	} else if (w->rank == 2) {
		CHECK_RC(w, rdag_ctx_lookup(w->a, c), 0, "the end of the chain holds the context");
		CHECK_FNS(w, c, 1, 0, -1, -1, NULL);
		CHECK_FNS(w, c, 0, 1, 1, 1, fi);
		CHECK(w, fi[0].msg_id == m2, "recv function %#llx, expected %#llx",
		      (unsigned long long)fi[0].msg_id, (unsigned long long)m2);
		CHECK_KNOWN(w, c, 1u << 1);
	} else if (w->rank > 2) {
		CHECK_RC(w, rdag_ctx_lookup(w->a, c), RDAG_ENOENT,
			 "an uninvolved worker holds the context");
	}
	release_from(w, 0, c, "chain3");
}

/* ---- self_call ------------------------------------------------------------------------------- */

void sc_self_call(struct am_worker *w)
{
	struct rdag_fn_info sf[AM_MAXFNS], rf[AM_MAXFNS];
	uint32_t me = (uint32_t)w->rank;
	static uint8_t buf[128];
	struct rdag_tensor x;
	struct am_ctl ctl;
	struct am_res res;
	uint64_t c, m1 = 0, m2 = 0, r = 0;
	size_t ns, nr;
	char key;
	int rc;

	am_phase(w, "self_call: no grad back");
	c = new_ctx(w);
	leaf(&x, buf, sizeof(buf), 51 + me, &key);
	am_ctl_init(&ctl, AM_RET_NOGRAD, 51 + me);
	rc = am_call(w, me, &ctl, &x, 1, 0, &res);
	CHECK_RC(w, rc, 0, "call to itself");
	CHECK_FNS(w, c, 1, 1, (int)me, 1, sf);
	CHECK_FNS(w, c, 0, 1, (int)me, 1, rf);
	m1 = sf[0].msg_id;
	CHECK(w, rf[0].msg_id == m1 && am_top(m1) == me, "send function %#llx, recv function %#llx",
	      (unsigned long long)m1, (unsigned long long)rf[0].msg_id);
	if (rc == 0) {
		CHECK_OBS(w, &res, 0, (int)me, (int)me, 1, c);
		CHECK_TOBS(w, &res, 0, 0, sizeof(buf), 1, m1);
	}
	am_res_free(&res);
	CHECK_EDGE1(w, c, m1, RDAG_GRAD_LEAF, &key, -1);
	CHECK_KNOWN(w, c, 1u << me);
	CHECK(w, rdag_ctx_count(w->a) == 1, "%zu contexts (the callee side must be the same one)",
	      rdag_ctx_count(w->a));

	am_phase(w, "self_call: grad back");
	am_ctl_init(&ctl, AM_RET_INPUT, 51 + me);
	rc = am_call(w, me, &ctl, &x, 1, 0, &res);
	CHECK_RC(w, rc, 0, "call to itself returning its input");
	if (rc == 0) {
		const struct rdag_tensor *t = res.m.tensors;

		m2 = res.nobs ? res.obs[0].t[0].msg_id : 0;
		CHECK(w, res.m.ntensors == 1 && t->grad_kind == RDAG_GRAD_RECV && t->grad_fn.node,
		      "result: %u tensors, grad_kind %u", res.m.ntensors,
		      res.m.ntensors ? t->grad_kind : 0);
		if (res.m.ntensors == 1 && t->grad_kind == RDAG_GRAD_RECV && t->grad_fn.node) {
			r = rdag_recv_fn_msg_id(t->grad_fn.node);
			CHECK(w, !mp_check(t->data, sizeof(buf), 51 + me), "returned bytes differ");
		}
	}
	am_res_free(&res);
	ns = am_fns(w, c, 1, sf);
	nr = am_fns(w, c, 0, rf);
	CHECK(w, ns == 3 && nr == 3,
	      "%zu send and %zu recv functions, expected 3 and 3 (call, call, reply)", ns, nr);
	for (size_t i = 0; i < ns && i < nr; i++)
		CHECK(w,
		      sf[i].msg_id == rf[i].msg_id && sf[i].peer == me && rf[i].peer == me &&
			      am_top(sf[i].msg_id) == me,
		      "function %zu: send %#llx (peer %u), recv %#llx (peer %u)", i,
		      (unsigned long long)sf[i].msg_id, sf[i].peer,
		      (unsigned long long)rf[i].msg_id, rf[i].peer);
	if (ns == 3)
		CHECK(w, sf[0].msg_id == m1 && sf[1].msg_id == m2 && sf[2].msg_id == r,
		      "message ids %#llx %#llx %#llx, expected call %#llx, call %#llx, reply %#llx",
		      (unsigned long long)sf[0].msg_id, (unsigned long long)sf[1].msg_id,
		      (unsigned long long)sf[2].msg_id, (unsigned long long)m1,
		      (unsigned long long)m2, (unsigned long long)r);
	if (ns == 3) {
		struct am_obs o;

		/* The reply returned the input: its edge is the second call's recv function. */
		am_seen(w, 1, &o);
		CHECK_EDGE1(w, c, r, RDAG_GRAD_RECV, (void *)(uintptr_t)o.t[0].node, 0);
	}
	CHECK_KNOWN(w, c, 1u << me);
	release_ctx(w, c);
	CHECK(w, rdag_ctx_count(w->a) == 0, "%zu contexts after release", rdag_ctx_count(w->a));
	am_barrier(w, "self_call: done");
}

/* ---- ping_back: 0 -> 1 -> 0 ------------------------------------------------------------------ */

void sc_ping_back(struct am_worker *w)
{
	struct rdag_fn_info fi[AM_MAXFNS];
	static uint8_t buf[300];
	struct rdag_tensor x;
	struct am_res res;
	uint64_t c = 0, m1 = 0, m2 = 0;
	char key;

	if (w->rank == 0) {
		am_phase(w, "ping_back: call");
		leaf(&x, buf, sizeof(buf), 61, &key);
		if (call_via_1(w, 0, &x, sizeof(buf), 61, &c, &m1, &res) == 0) {
			CHECK_OBS(w, &res, 1, 0, 1, 1, c);
			m2 = res.nobs == 2 ? res.obs[1].t[0].msg_id : 0;
			CHECK_TOBS(w, &res, 1, 0, sizeof(buf), 1, m2);
			CHECK(w, am_top(m2) == 1, "the call back under message id %#llx",
			      (unsigned long long)m2);
		}
		am_res_free(&res);
		CHECK_EDGE1(w, c, m1, RDAG_GRAD_LEAF, &key, -1);
		CHECK_FNS(w, c, 0, 1, 1, 1, fi);
		CHECK(w, fi[0].msg_id == m2, "recv function %#llx, expected %#llx",
		      (unsigned long long)fi[0].msg_id, (unsigned long long)m2);
		CHECK_KNOWN(w, c, 1u << 1);
		CHECK(w, rdag_ctx_count(w->a) == 1,
		      "%zu contexts: the call back must join the same one", rdag_ctx_count(w->a));
		am_put(w, 1, m1);
		am_put(w, 2, m2);
	}
	am_barrier(w, "ping_back: called");
	c = am_get(w, 0, 0);
	m1 = am_get(w, 0, 1);
	m2 = am_get(w, 0, 2);
	if (w->rank == 1) {
		struct am_obs o;

		am_phase(w, "ping_back: state");
		CHECK_FNS(w, c, 0, 1, 0, 1, fi);
		CHECK(w, fi[0].msg_id == m1, "recv function %#llx, expected %#llx",
		      (unsigned long long)fi[0].msg_id, (unsigned long long)m1);
		CHECK_FNS(w, c, 1, 1, 0, 1, fi);
		CHECK(w, fi[0].msg_id == m2, "send function %#llx, expected %#llx",
		      (unsigned long long)fi[0].msg_id, (unsigned long long)m2);
		am_seen(w, 0, &o);
		CHECK_EDGE1(w, c, m2, RDAG_GRAD_RECV, (void *)(uintptr_t)o.t[0].node, 0);
		CHECK_KNOWN(w, c, 1u << 0);
	}
	release_from(w, 0, c, "ping_back");
}

/* ---- no_grad --------------------------------------------------------------------------------- */

void sc_no_grad(struct am_worker *w)
{
	static uint8_t ybuf[128], xbuf[128];
	struct rdag_tensor x, y;
	struct am_ctl ctl;
	struct am_res res;
	struct am_count cnt;
	uint64_t c1 = 0, c2 = 0, cur = 0;
	char key;
	int rc;

	/* In a context, no grad: no functions, but the callee joins (forced recording). */
	if (w->rank == 0) {
		am_phase(w, "no_grad: forced");
		mp_fill(ybuf, sizeof(ybuf), 71);
		am_tensor_u8(&y, ybuf, sizeof(ybuf));
		c1 = new_ctx(w);
		am_put(w, 0, c1);
		am_ctl_init(&ctl, AM_RET_NOGRAD, 71);
		rc = am_call(w, 1, &ctl, &y, 1, 0, &res);
		CHECK_RC(w, rc, 0, "call without grad in a context");
		if (rc == 0) {
			CHECK_OBS(w, &res, 0, 1, 0, 1, c1);
			CHECK_TOBS(w, &res, 0, 0, sizeof(ybuf), 0, 0);
			CHECK(w,
			      res.m.ntensors == 1 && !res.m.tensors[0].requires_grad &&
				      res.m.tensors[0].grad_kind == RDAG_GRAD_NONE,
			      "result tensor");
		}
		am_res_free(&res);
		CHECK_FNS(w, c1, 1, 0, -1, -1, NULL);
		CHECK_FNS(w, c1, 0, 0, -1, -1, NULL);
		CHECK_KNOWN(w, c1, 1u << 1);
	}
	am_barrier(w, "no_grad: forced call");
	c1 = am_get(w, 0, 0);
	if (w->rank == 1) {
		am_phase(w, "no_grad: callee state");
		CHECK_RC(w, rdag_ctx_lookup(w->a, c1), 0, "the callee must hold the context");
		CHECK_FNS(w, c1, 1, 0, -1, -1, NULL);
		CHECK_FNS(w, c1, 0, 0, -1, -1, NULL);
		CHECK_KNOWN(w, c1, 1u << 0);
	}
	am_barrier(w, "no_grad: forced checked");

	/* RDAG_CALL_PLAIN: not wrapped without a tensor requiring grad, wrapped with one. */
	if (w->rank == 0) {
		am_phase(w, "no_grad: plain");
		release_ctx(w, c1);
		check_gone(w, c1);
		c2 = new_ctx(w);
		am_put(w, 1, c2);
		am_ctl_init(&ctl, AM_RET_NOGRAD, 71);
		rc = am_call(w, 1, &ctl, &y, 1, RDAG_CALL_PLAIN, &res);
		CHECK_RC(w, rc, 0, "PLAIN call without grad");
		if (rc == 0) {
			CHECK_OBS(w, &res, 0, 1, 0, 0, 0);
			CHECK_TOBS(w, &res, 0, 0, sizeof(ybuf), 0, 0);
		}
		am_res_free(&res);
		CHECK_KNOWN(w, c2, 0);
		CHECK_FNS(w, c2, 1, 0, -1, -1, NULL);
		CHECK_FNS(w, c2, 0, 0, -1, -1, NULL);
		if (am_count(w, 1, c2, &cnt) == 0)
			CHECK(w, cnt.lookup_rc == RDAG_ENOENT && cnt.ctx_count == 0,
			      "after a PLAIN call without grad the callee holds the context "
			      "(lookup %d, %llu contexts)",
			      cnt.lookup_rc, (unsigned long long)cnt.ctx_count);
		CHECK_RC(w, rdag_ctx_current(w->a, &cur), 0, "current context");
		CHECK(w, cur == c2, "current %#llx", (unsigned long long)cur);

		leaf(&x, xbuf, sizeof(xbuf), 71, &key);
		rc = am_call(w, 1, &ctl, &x, 1, RDAG_CALL_PLAIN, &res);
		CHECK_RC(w, rc, 0, "PLAIN call with grad");
		if (rc == 0) {
			CHECK_OBS(w, &res, 0, 1, 0, 1, c2);
			CHECK_TOBS(w, &res, 0, 0, sizeof(xbuf), 1, res.obs[0].t[0].msg_id);
		}
		am_res_free(&res);
		CHECK_FNS(w, c2, 1, 1, 1, 1, NULL);
		CHECK_KNOWN(w, c2, 1u << 1);
		if (am_count(w, 1, c2, &cnt) == 0)
			CHECK(w, cnt.lookup_rc == 0,
			      "after a PLAIN call with grad the callee does not hold the context");
		release_ctx(w, c2);
		check_gone(w, c2);

		/* Without a current context nothing is recorded and the function sees none. */
		am_phase(w, "no_grad: no context");
		rc = am_call(w, 1, &ctl, &x, 1, 0, &res);
		CHECK_RC(w, rc, 0, "call without context");
		if (rc == 0) {
			CHECK_OBS(w, &res, 0, 1, 0, 0, 0);
			CHECK(w,
			      res.obs[0].t[0].grad_kind == RDAG_GRAD_NONE &&
				      res.obs[0].t[0].requires_grad && res.obs[0].t[0].bad == 0,
			      "a tensor sent without context arrived with grad_kind %u",
			      res.obs[0].t[0].grad_kind);
		}
		am_res_free(&res);
		CHECK(w, rdag_ctx_count(w->a) == 0, "%zu contexts after a call without context",
		      rdag_ctx_count(w->a));
		if (am_count(w, 1, ~0ull, &cnt) == 0)
			CHECK(w, cnt.ctx_count == 0,
			      "the callee holds %llu contexts after a call without context",
			      (unsigned long long)cnt.ctx_count);
	}
	am_barrier(w, "no_grad: done");
	c2 = am_get(w, 0, 1);
	check_none_here(w, c2);
}

/* ---- ten_tensors ----------------------------------------------------------------------------- */

static const struct {
	size_t nbytes;
	uint8_t dtype, ndim;
	int64_t s0, s1;
	uint8_t kind; /* how the caller's tensor requires grad (RDAG_GRAD_NONE: it does not) */
} ten[10] = {
	{16, RDAG_U8, 1, 16, 0, RDAG_GRAD_LEAF},
	{4u << 20, RDAG_U8, 1, 4 << 20, 0, RDAG_GRAD_NONE},
	{64u << 10, RDAG_F32, 2, 128, 128, RDAG_GRAD_LEAF},
	{100, RDAG_U8, 1, 100, 0, RDAG_GRAD_NONE},
	{4u << 20, RDAG_F32, 2, 1024, 1024, RDAG_GRAD_NODE},
	{64u << 10, RDAG_U8, 1, 64 << 10, 0, RDAG_GRAD_NONE},
	{1, RDAG_U8, 1, 1, 0, RDAG_GRAD_LEAF},
	{3000, RDAG_U8, 1, 3000, 0, RDAG_GRAD_NONE},
	{(4u << 20) + 8, RDAG_U8, 1, (4 << 20) + 8, 0, RDAG_GRAD_LEAF},
	{64u << 10, RDAG_I64, 1, 8192, 0, RDAG_GRAD_NONE},
};

void sc_ten_tensors(struct am_worker *w)
{
	struct rdag_fn_info fi[AM_MAXFNS];
	struct rdag_edge_info e[16];
	struct rdag_tensor t[10];
	static char keys[10], node;
	uint8_t *bufs[10] = {NULL};
	uint64_t c = 0, m1 = 0, m2 = 0, r = 0;
	struct am_ctl ctl;
	struct am_res res;
	size_t n;
	int rc;

	if (w->rank == 0) {
		am_phase(w, "ten_tensors: calls");
		for (unsigned i = 0; i < 10; i++) {
			int64_t shape[2] = {ten[i].s0, ten[i].s1};

			bufs[i] = malloc(ten[i].nbytes);
			if (!bufs[i]) {
				CHECK(w, 0, "out of memory");
				goto out;
			}
			mp_fill(bufs[i], ten[i].nbytes, 81 + i);
			rdag_tensor_init(&t[i], bufs[i], ten[i].dtype, ten[i].ndim, shape);
			CHECK(w, rdag_tensor_nbytes(&t[i]) == ten[i].nbytes, "tensor %u: %zu bytes",
			      i, rdag_tensor_nbytes(&t[i]));
			if (ten[i].kind == RDAG_GRAD_LEAF) {
				am_leaf(&t[i], &keys[i]);
			} else if (ten[i].kind == RDAG_GRAD_NODE) {
				t[i].requires_grad = true;
				t[i].grad_kind = RDAG_GRAD_NODE;
				t[i].grad_fn.node = &node;
				t[i].grad_fn.input_nr = 2;
			}
		}
		c = new_ctx(w);
		am_put(w, 0, c);
		am_ctl_init(&ctl, AM_RET_NOGRAD, 81);
		rc = am_call(w, 1, &ctl, t, 10, 0, &res);
		CHECK_RC(w, rc, 0, "call with ten tensors");
		CHECK_FNS(w, c, 1, 1, 1, 5, fi);
		m1 = fi[0].msg_id;
		if (rc == 0) {
			CHECK_OBS(w, &res, 0, 1, 0, 1, c);
			CHECK(w, res.obs[0].ntensors == 10, "the callee got %u tensors",
			      res.obs[0].ntensors);
			for (unsigned i = 0; i < 10; i++) {
				const struct am_tobs *o = &res.obs[0].t[i];

				CHECK_TOBS(w, &res, 0, i, ten[i].nbytes, i % 2 == 0, m1);
				CHECK(w,
				      o->dtype == ten[i].dtype && o->ndim == ten[i].ndim &&
					      o->shape0 == ten[i].s0 && o->shape1 == ten[i].s1,
				      "tensor %u arrived as dtype %u, %u dims, shape %lld x %lld",
				      i, o->dtype, o->ndim, (long long)o->shape0,
				      (long long)o->shape1);
			}
		}
		am_res_free(&res);
		n = edges(w, c, m1, e);
		CHECK(w, n == 5, "%zu edges, expected 5", n);
		for (unsigned k = 0; k < n && k < 5; k++) {
			unsigned i = 2 * k;
			const void *want =
				ten[i].kind == RDAG_GRAD_NODE ? (void *)&node : (void *)&keys[i];

			CHECK(w,
			      e[k].tensor_index == i && e[k].grad_kind == ten[i].kind &&
				      e[k].edge.node == want &&
				      (ten[i].kind != RDAG_GRAD_NODE || e[k].edge.input_nr == 2),
			      "edge %u: tensor %u kind %u node %p input_nr %u; expected tensor %u "
			      "kind %u node %p",
			      k, e[k].tensor_index, e[k].grad_kind, e[k].edge.node,
			      e[k].edge.input_nr, i, ten[i].kind, want);
		}
		CHECK_FNS(w, c, 0, 0, -1, -1, NULL);

		/* The same tensors echoed: the reply records a send function of 5 on the callee. */
		am_phase(w, "ten_tensors: echo");
		am_ctl_init(&ctl, AM_RET_ECHO, 81);
		rc = am_call(w, 1, &ctl, t, 10, 0, &res);
		CHECK_RC(w, rc, 0, "call with ten tensors, echoed");
		CHECK_FNS(w, c, 1, 2, 1, 5, fi);
		m2 = fi[1].msg_id;
		if (rc == 0) {
			CHECK(w, res.m.ntensors == 10, "%u tensors echoed", res.m.ntensors);
			for (unsigned i = 0; i < res.m.ntensors && i < 10; i++) {
				const struct rdag_tensor *q = &res.m.tensors[i];
				size_t nb = rdag_tensor_nbytes(q);
				uint64_t bad = mp_check(q->data, nb, 81 + i);

				CHECK(w, nb == ten[i].nbytes && !bad,
				      "echoed tensor %u: %zu bytes, first bad byte %lld", i, nb,
				      (long long)bad - 1);
				if (i % 2) {
					CHECK(w,
					      !q->requires_grad && q->grad_kind == RDAG_GRAD_NONE,
					      "echoed tensor %u: requires_grad %u grad_kind %u", i,
					      q->requires_grad, q->grad_kind);
					continue;
				}
				CHECK(w,
				      q->requires_grad && q->grad_kind == RDAG_GRAD_RECV &&
					      q->grad_fn.node && q->grad_fn.input_nr == i,
				      "echoed tensor %u: requires_grad %u grad_kind %u input_nr %u",
				      i, q->requires_grad, q->grad_kind, q->grad_fn.input_nr);
				if (q->grad_kind == RDAG_GRAD_RECV && q->grad_fn.node) {
					uint64_t id = rdag_recv_fn_msg_id(q->grad_fn.node);

					CHECK(w, r == 0 || id == r,
					      "echoed tensors under message ids %#llx and %#llx",
					      (unsigned long long)r, (unsigned long long)id);
					r = id;
				}
			}
		}
		am_res_free(&res);
		CHECK(w, am_top(r) == 1, "the echo's message id %#llx", (unsigned long long)r);
		CHECK_FNS(w, c, 0, 1, 1, 5, fi);
		CHECK(w, fi[0].msg_id == r, "recv function %#llx, expected %#llx",
		      (unsigned long long)fi[0].msg_id, (unsigned long long)r);
		am_put(w, 1, m1);
		am_put(w, 2, m2);
		am_put(w, 3, r);
	}
	am_barrier(w, "ten_tensors: called");
	c = am_get(w, 0, 0);
	if (w->rank == 1) {
		struct am_obs o;

		am_phase(w, "ten_tensors: callee state");
		m1 = am_get(w, 0, 1);
		m2 = am_get(w, 0, 2);
		r = am_get(w, 0, 3);
		CHECK_FNS(w, c, 0, 2, 0, 5, fi);
		CHECK(w, fi[0].msg_id == m1 && fi[1].msg_id == m2,
		      "recv functions %#llx %#llx, expected %#llx %#llx",
		      (unsigned long long)fi[0].msg_id, (unsigned long long)fi[1].msg_id,
		      (unsigned long long)m1, (unsigned long long)m2);
		CHECK_FNS(w, c, 1, 1, 0, 5, fi);
		CHECK(w, fi[0].msg_id == r, "send function %#llx, expected %#llx",
		      (unsigned long long)fi[0].msg_id, (unsigned long long)r);
		am_seen(w, 1, &o);
		n = edges(w, c, r, e);
		CHECK(w, n == 5, "%zu edges of the echo's send function", n);
		for (unsigned k = 0; k < n && k < 5; k++)
			CHECK(w,
			      e[k].tensor_index == 2 * k && e[k].grad_kind == RDAG_GRAD_RECV &&
				      (uint64_t)(uintptr_t)e[k].edge.node == o.t[2 * k].node &&
				      e[k].edge.input_nr == 2 * k,
			      "echo edge %u: tensor %u kind %u node %p input_nr %u", k,
			      e[k].tensor_index, e[k].grad_kind, e[k].edge.node,
			      e[k].edge.input_nr);
	}
	am_barrier(w, "ten_tensors: checked");
	if (w->rank == 0)
		release_ctx(w, c);
	am_barrier(w, "ten_tensors: released");
	check_none_here(w, c);
out:
	for (unsigned i = 0; i < 10; i++)
		free(bufs[i]);
}

/* ---- cleanup --------------------------------------------------------------------------------- */

void sc_cleanup(struct am_worker *w)
{
	static uint8_t buf[2048];
	struct rdag_tensor x, y;
	struct am_ctl ctl;
	struct am_res res;
	uint64_t c = 0;
	char key;
	int rc;

	leaf(&x, buf, 1024, 91, &key);
	mp_fill(buf + 1024, 1024, 92);
	am_tensor_u8(&y, buf + 1024, 1024);

	/* 1. No tensors: the callee joins through forced recording, is cleaned by the release. */
	if (w->rank == 0) {
		am_phase(w, "cleanup: no tensors");
		c = new_ctx(w);
		am_put(w, 0, c);
		am_ctl_init(&ctl, AM_RET_NONE, 0);
		rc = am_call(w, 1, &ctl, NULL, 0, 0, &res);
		CHECK_RC(w, rc, 0, "call without tensors");
		if (rc == 0)
			CHECK_OBS(w, &res, 0, 1, 0, 1, c);
		am_res_free(&res);
		CHECK_KNOWN(w, c, 1u << 1);
	}
	am_barrier(w, "cleanup 1: called");
	c = am_get(w, 0, 0);
	if (w->rank == 1)
		CHECK_RC(w, rdag_ctx_lookup(w->a, c), 0, "the callee must hold the context");
	am_barrier(w, "cleanup 1: checked");
	if (w->rank == 0) {
		am_phase(w, "cleanup 1: release");
		release_ctx(w, c);
		check_gone(w, c);
	}
	am_barrier(w, "cleanup 1: released");
	settled(w, c, "cleanup 1: settled");

	/* 2. Tensors: 0 -> 1 with grad, 0 -> 2 without, 0 -> 3 with grad returned. */
	if (w->rank == 0) {
		am_phase(w, "cleanup 2: calls");
		c = new_ctx(w);
		am_put(w, 1, c);
		am_ctl_init(&ctl, AM_RET_NOGRAD, 91);
		rc = am_call(w, 1, &ctl, &x, 1, 0, &res);
		CHECK_RC(w, rc, 0, "call to 1");
		am_res_free(&res);
		am_ctl_init(&ctl, AM_RET_NOGRAD, 92);
		rc = am_call(w, 2, &ctl, &y, 1, 0, &res);
		CHECK_RC(w, rc, 0, "call to 2");
		am_res_free(&res);
		am_ctl_init(&ctl, AM_RET_INPUT, 91);
		rc = am_call(w, 3, &ctl, &x, 1, 0, &res);
		CHECK_RC(w, rc, 0, "call to 3");
		am_res_free(&res);
		CHECK_KNOWN(w, c, 0xeu);
		CHECK_FNS(w, c, 1, 2, -1, 1, NULL);
		CHECK_FNS(w, c, 0, 1, 3, 1, NULL);
		release_ctx(w, c);
		check_gone(w, c);
	}
	am_barrier(w, "cleanup 2: released");
	settled(w, am_get(w, 0, 1), "cleanup 2: settled");

	/* 3. The chain 0 -> 1 -> 2 -> 3, each hop forwarding in its function. */
	if (w->rank == 0) {
		am_phase(w, "cleanup 3: chain");
		rc = call_path(w, 2, &c, &x, AM_RET_NOGRAD, 91, (const uint16_t[]){1, 2, 3}, 3, &res);
		if (rc == 0) {
			CHECK(w, res.nobs == 3, "%u hops reported", res.nobs);
			CHECK_OBS(w, &res, 0, 1, 0, 1, c);
			CHECK_OBS(w, &res, 1, 2, 1, 1, c);
			CHECK_OBS(w, &res, 2, 3, 2, 1, c);
		}
		am_res_free(&res);
	}
	am_barrier(w, "cleanup 3: called");
	c = am_get(w, 0, 2);
	if (w->rank > 0) {
		static const uint32_t known[4] = {0, 0x5, 0xa, 0x4};

		am_phase(w, "cleanup 3: state");
		CHECK_RC(w, rdag_ctx_lookup(w->a, c), 0, "hop %d must hold the context", w->rank);
		CHECK_KNOWN(w, c, known[w->rank]);
		CHECK_FNS(w, c, 0, 1, w->rank - 1, 1, NULL);
		CHECK_FNS(w, c, 1, w->rank < 3 ? 1 : 0, w->rank + 1, 1, NULL);
	}
	am_barrier(w, "cleanup 3: checked");
	if (w->rank == 0) {
		am_phase(w, "cleanup 3: release");
		release_ctx(w, c);
		check_gone(w, c);
	}
	am_barrier(w, "cleanup 3: released");
	settled(w, c, "cleanup 3: settled");

	/* 4. A context 1 creates and spreads by its own calls (1 -> 2 -> 3). */
	if (w->rank == 1) {
		am_phase(w, "cleanup 4: from 1");
		call_path(w, 3, &c, &x, AM_RET_INPUT, 91, (const uint16_t[]){2, 3}, 2, &res);
		am_res_free(&res);
		CHECK_KNOWN(w, c, 1u << 2);
		release_ctx(w, c);
		check_gone(w, c);
	}
	am_barrier(w, "cleanup 4: released");
	settled(w, am_get(w, 1, 3), "cleanup 4: settled");

	/* 5. Released by a worker that only joined it: 0 -> 1 -> 2, then 2 releases. */
	if (w->rank == 0) {
		am_phase(w, "cleanup 5: chain");
		call_path(w, 4, &c, &x, AM_RET_NOGRAD, 91, (const uint16_t[]){1, 2}, 2, &res);
		am_res_free(&res);
		CHECK_RC(w, rdag_ctx_set_current(w->a, 0, 0), 0, "clearing the current context");
	}
	am_barrier(w, "cleanup 5: called");
	c = am_get(w, 0, 4);
	if (w->rank == 2) {
		am_phase(w, "cleanup 5: release from 2");
		CHECK_RC(w, rdag_ctx_lookup(w->a, c), 0, "2 must hold the context");
		CHECK_RC(w, rdag_ctx_release(w->a, c), 0, "release by a worker that joined");
		check_gone(w, c);
	}
	am_barrier(w, "cleanup 5: released");
	check_none_here(w, c);
	if (w->rank == 0)
		CHECK_RC(w, rdag_ctx_release(w->a, c), RDAG_ENOENT,
			 "release of a context released elsewhere");
}
