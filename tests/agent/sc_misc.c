/* Scenarios on the RPC layer: remote errors, RRefs, profiling, futures, names, manual progress. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent_mp.h"
#include "gpu/gpu.h"
#include "wire/wire.h"

#define LONG_NAME 4096

static int fn_long(void *arg, const struct rdag_caller *who, const struct rdag_msg *in,
		   rdag_reply_t *out)
{
	(void)arg;
	(void)who;
	(void)in;
	return rdag_reply_payload(out, "long", 4);
}

static uint64_t new_ctx(struct am_worker *w)
{
	uint64_t id = ~0ull;

	CHECK_RC(w, rdag_ctx_create(w->a, &id), 0, "rdag_ctx_create");
	return id;
}

/* ---- remote_error ---------------------------------------------------------------------------- */

void sc_remote_error(struct am_worker *w)
{
	uint32_t b = (uint32_t)((w->rank + 1) % w->world),
		 c3 = (uint32_t)((w->rank + 2) % w->world);
	struct rdag_msg args, m;
	char want[128], *name;
	rdag_future_t *f = NULL;
	struct am_ctl ctl;
	struct am_res res;
	uint64_t ctx;
	int rc;

	/* Registration errors; a name of the largest size. */
	am_phase(w, "remote_error: registration");
	CHECK_RC(w, rdag_register(w->a, "f", fn_long, w), RDAG_EEXIST, "registering \"f\" twice");
	CHECK(w, rdag_register(w->a, "", fn_long, w) < 0, "an empty name was accepted");
	name = malloc(LONG_NAME + 2);
	if (!name) {
		CHECK(w, 0, "out of memory");
		return;
	}
	memset(name, 'n', LONG_NAME + 1);
	name[LONG_NAME + 1] = '\0';
	CHECK(w, rdag_register(w->a, name, fn_long, w) < 0, "a name of %d bytes was accepted",
	      LONG_NAME + 1);
	name[LONG_NAME] = '\0';
	CHECK_RC(w, rdag_register(w->a, name, fn_long, w), 0, "a name of %d bytes", LONG_NAME);
	CHECK_RC(w, rdag_register(w->a, name, fn_long, w), RDAG_EEXIST, "the long name twice");
	am_barrier(w, "remote_error: registered");

	/* A function failing: "Error on Node <callee>: bad thing 7", exactly. */
	am_phase(w, "remote_error: direct");
	snprintf(want, sizeof(want), "Error on Node %u: bad thing 7", b);
	am_ctl_init(&ctl, AM_RET_NOGRAD, 0);
	ctl.fail_at = 1;
	rc = am_call(w, b, &ctl, NULL, 0, 0, &res);
	CHECK_RC(w, rc, RDAG_EREMOTE, "a failing function");
	CHECK(w, strcmp(res.err, want) == 0, "error text \"%s\", expected \"%s\"", res.err, want);
	am_res_free(&res);

	/* The same through a future. */
	args = (struct rdag_msg){.payload = &ctl, .payload_len = sizeof(ctl)};
	rc = rdag_rpc_async(w->a, b, "f", &args, NULL, &f);
	CHECK_RC(w, rc, 0, "rdag_rpc_async of a failing function");
	if (rc == 0) {
		char text[1024];

		rc = rdag_future_wait(f, 60000);
		snprintf(text, sizeof(text), "%s", rdag_last_error());
		CHECK_RC(w, rc, RDAG_EREMOTE, "rdag_future_wait of a failing call");
		CHECK(w, strcmp(text, want) == 0, "rdag_last_error() \"%s\", expected \"%s\"", text,
		      want);
		CHECK(w, strcmp(rdag_future_error(f), want) == 0,
		      "rdag_future_error \"%s\", expected \"%s\"", rdag_future_error(f), want);
		CHECK_RC(w, rdag_future_result(f, &m), RDAG_EREMOTE,
			 "rdag_future_result of a failed call");
		CHECK_RC(w, rdag_future_test(f), RDAG_EREMOTE, "rdag_future_test of a failed call");
		rdag_future_free(f);
	}

	/* Chain rank -> b -> c3: c3 fails, b returns the text it got. The origin stays c3. */
	am_phase(w, "remote_error: chain");
	snprintf(want, sizeof(want), "Error on Node %u: bad thing 7", c3);
	am_ctl_init(&ctl, AM_RET_NOGRAD, 0);
	ctl.nhops = 1;
	ctl.hops[0] = (uint16_t)c3;
	ctl.fail_at = 2;
	rc = am_call(w, b, &ctl, NULL, 0, 0, &res);
	CHECK_RC(w, rc, RDAG_EREMOTE, "a chain whose end fails");
	CHECK(w, strstr(res.err, want) != NULL, "error text \"%s\" does not contain \"%s\"",
	      res.err, want);
	CHECK(w, strncmp(res.err, "Error on Node ", 14) == 0, "error text \"%s\"", res.err);
	am_res_free(&res);

	/* An unregistered name. */
	am_phase(w, "remote_error: unregistered");
	f = NULL;
	args = (struct rdag_msg){.payload = "x", .payload_len = 1};
	rc = rdag_rpc_sync(w->a, b, "no_such_function", &args, NULL, &f);
	{
		char text[1024];

		snprintf(text, sizeof(text), "%s", rdag_last_error());
		CHECK_RC(w, rc, RDAG_EREMOTE, "calling an unregistered name");
		snprintf(want, sizeof(want), "Error on Node %u: ", b);
		CHECK(w, strstr(text, "no_such_function") && strncmp(text, want, strlen(want)) == 0,
		      "error text \"%s\": expected \"%s...no_such_function...\"", text, want);
	}
	CHECK(w, f == NULL, "a failed rdag_rpc_sync left a future");
	if (rc == 0)
		rdag_future_free(f);

	/* The long name works remotely. */
	f = NULL;
	rc = rdag_rpc_sync(w->a, b, name, &args, NULL, &f);
	CHECK_RC(w, rc, 0, "calling a %d-byte name", LONG_NAME);
	if (rc == 0 && rdag_future_result(f, &m) == 0)
		CHECK(w, m.payload_len == 4 && memcmp(m.payload, "long", 4) == 0,
		      "reply of the long name");
	rdag_future_free(f);
	free(name);

	/* After the errors, a normal call works; and errors in a context leave it usable. */
	am_phase(w, "remote_error: after");
	am_ctl_init(&ctl, AM_RET_NOGRAD, 5);
	rc = am_call(w, b, &ctl, NULL, 0, 0, &res);
	CHECK_RC(w, rc, 0, "a normal call after the errors");
	am_res_free(&res);
	ctx = new_ctx(w);
	ctl.fail_at = 1;
	rc = am_call(w, b, &ctl, NULL, 0, 0, &res);
	CHECK_RC(w, rc, RDAG_EREMOTE, "a failing call in a context");
	am_res_free(&res);
	ctl.fail_at = 0;
	rc = am_call(w, b, &ctl, NULL, 0, 0, &res);
	CHECK_RC(w, rc, 0, "a normal call in the context after an error");
	if (rc == 0)
		CHECK(w, res.nobs && res.obs[0].has_context && res.obs[0].context_id == ctx,
		      "context not carried");
	am_res_free(&res);
	CHECK_RC(w, rdag_ctx_release(w->a, ctx), 0, "release");
	am_barrier(w, "remote_error: done");
}

/* ---- rref ------------------------------------------------------------------------------------ */

static void check_fetch(struct am_worker *w, const struct rdag_rref *r, uint64_t seed, size_t tlen)
{
	rdag_future_t *f = NULL;
	struct rdag_msg m;
	int rc = rdag_rref_fetch(w->a, r, &f);

	CHECK_RC(w, rc, 0, "fetch of RRef %#llx owned by %u", (unsigned long long)r->id, r->owner);
	if (rc)
		return;
	rc = rdag_future_result(f, &m);
	CHECK_RC(w, rc, 0, "rdag_future_result of a fetch");
	if (rc == 0) {
		CHECK(w,
		      m.payload_len == AM_MAKE_PAYLOAD &&
			      !mp_check(m.payload, AM_MAKE_PAYLOAD, seed),
		      "fetched payload: %zu bytes or contents differ", m.payload_len);
		CHECK(w, m.ntensors == 1, "fetched %u tensors", m.ntensors);
		if (m.ntensors == 1) {
			size_t nb = rdag_tensor_nbytes(&m.tensors[0]);
			uint64_t bad = mp_check(m.tensors[0].data, nb, seed + 1);

			CHECK(w, nb == tlen && !bad,
			      "fetched tensor: %zu bytes (expected %zu), first bad byte %lld", nb,
			      tlen, (long long)bad - 1);
		}
	}
	rdag_future_free(f);
}

void sc_rref(struct am_worker *w)
{
	uint32_t next = (uint32_t)((w->rank + 1) % w->world), me = (uint32_t)w->rank;
	struct am_make mk1 = {mp_seed(me, next, 1), 100000}, mk2 = {mp_seed(me, me, 2), 5000};
	struct rdag_msg a1 = {.payload = &mk1, .payload_len = sizeof(mk1)};
	struct rdag_msg a2 = {.payload = &mk2, .payload_len = sizeof(mk2)};
	struct rdag_rref r1 = {0, 0}, r2 = {0, 0}, r3 = {0, 0};
	rdag_future_t *f = NULL;
	struct am_ctl ctl;
	int rc;

	am_phase(w, "rref: remote");
	rc = rdag_remote(w->a, next, "make", &a1, NULL, &r1);
	CHECK_RC(w, rc, 0, "rdag_remote on %u", next);
	CHECK(w, r1.owner == next, "RRef owner %u, expected %u", r1.owner, next);
	CHECK(w, am_top(r1.id) == me, "RRef id %#llx not made by its creator %u",
	      (unsigned long long)r1.id, me);
	rc = rdag_remote(w->a, me, "make", &a2, NULL, &r2);
	CHECK_RC(w, rc, 0, "rdag_remote on itself");
	CHECK(w, r2.owner == me, "RRef owner %u, expected itself", r2.owner);
	CHECK(w, r2.id != r1.id, "two RRefs with id %#llx", (unsigned long long)r1.id);
	CHECK(w, rdag_rref_count(w->a) >= 1, "own RRef not counted right after rdag_remote");
	/* A failing function makes no RRef. */
	am_ctl_init(&ctl, AM_RET_NOGRAD, 0);
	ctl.fail_at = 1;
	{
		struct rdag_msg a3 = {.payload = &ctl, .payload_len = sizeof(ctl)};
		char want[64], text[1024];

		rc = rdag_remote(w->a, next, "f", &a3, NULL, &r3);
		snprintf(text, sizeof(text), "%s", rdag_last_error());
		snprintf(want, sizeof(want), "Error on Node %u: bad thing 7", next);
		CHECK_RC(w, rc, RDAG_EREMOTE, "rdag_remote of a failing function");
		CHECK(w, strcmp(text, want) == 0, "error \"%s\", expected \"%s\"", text, want);
	}
	am_barrier(w, "rref: made");
	/* Every worker owns its own RRef and its predecessor's (one in a world of 1). */
	CHECK(w, rdag_rref_count(w->a) == (w->world > 1 ? 2u : 1u), "this worker owns %zu RRefs",
	      rdag_rref_count(w->a));

	am_phase(w, "rref: fetch");
	for (int k = 0; k < 2; k++) {
		check_fetch(w, &r1, mk1.seed, mk1.tensor_len);
		check_fetch(w, &r2, mk2.seed, mk2.tensor_len);
	}
	am_barrier(w, "rref: fetched");
	CHECK(w, rdag_rref_count(w->a) == (w->world > 1 ? 2u : 1u),
	      "fetching changed the count to %zu", rdag_rref_count(w->a));
	am_barrier(w, "rref: counted"); /* before anyone releases what this worker owns */

	am_phase(w, "rref: release");
	CHECK_RC(w, rdag_rref_release(w->a, &r1), 0, "rdag_rref_release (remote owner)");
	CHECK_RC(w, rdag_rref_release(w->a, &r2), 0, "rdag_rref_release (own)");
	{
		uint64_t dl = am_deadline(w, 30);

		while (rdag_rref_count(w->a) != 0 && mp_wait_until(dl))
			;
		CHECK(w, rdag_rref_count(w->a) == 0, "%zu RRefs owned 30 s after every release",
		      rdag_rref_count(w->a));
	}
	am_barrier(w, "rref: released");

	am_phase(w, "rref: fetch released");
	f = NULL;
	rc = rdag_rref_fetch(w->a, &r1, &f);
	CHECK_RC(w, rc, RDAG_EREMOTE, "fetch of a released RRef (remote owner)");
	if (rc == 0)
		rdag_future_free(f);
	f = NULL;
	rc = rdag_rref_fetch(w->a, &r2, &f);
	CHECK_RC(w, rc, RDAG_EREMOTE, "fetch of a released RRef (own)");
	if (rc == 0)
		rdag_future_free(f);
	am_barrier(w, "rref: done");
}

/* ---- profiling ------------------------------------------------------------------------------- */

#define PROF_K 5

static int prof_call(struct am_worker *w, uint32_t dst, uint64_t prof_id, struct am_prof *out)
{
	struct rdag_call_opts opts = {.flags = 0, .prof_id = prof_id};
	struct rdag_msg args = {.payload = "p", .payload_len = 1}, m;
	rdag_future_t *f = NULL;
	int rc = rdag_rpc_sync(w->a, dst, "prof_fn", &args, prof_id ? &opts : NULL, &f);

	memset(out, 0, sizeof(*out));
	CHECK_RC(w, rc, 0, "prof_fn on %u (prof_id %#llx)", dst, (unsigned long long)prof_id);
	if (rc)
		return rc;
	rc = rdag_future_result(f, &m);
	if (rc == 0 && m.payload_len == sizeof(*out))
		memcpy(out, m.payload, sizeof(*out));
	else
		CHECK(w, 0, "prof_fn's reply: rc %d, %zu bytes", rc, rc ? 0 : m.payload_len);
	rdag_future_free(f);
	return rc;
}

void sc_profiling(struct am_worker *w)
{
	uint32_t callee = (uint32_t)((w->rank + 1) % w->world);
	uint64_t p = ((uint64_t)getpid() << 8) | 0x5au, p2 = p + 1;
	struct rdag_prof_event ev[64];
	struct am_prof got[PROF_K], q;
	int matched[PROF_K] = {0};
	size_t n = 0, inner = 0, outer = 0;
	int rc;

	am_phase(w, "profiling: calls");
	CHECK_RC(w, rdag_prof_record("outside", 1, 2), RDAG_ENOENT,
		 "rdag_prof_record outside a profiled call");
	for (int k = 0; k < PROF_K; k++) {
		prof_call(w, callee, p, &got[k]);
		CHECK_RC(w, got[k].rc, 0, "rdag_prof_record in profiled call %d", k);
		CHECK(w, got[k].t0 <= got[k].t1, "times");
	}
	prof_call(w, callee, 0, &q);
	CHECK_RC(w, q.rc, RDAG_ENOENT, "rdag_prof_record in a call without prof_id");
	prof_call(w, callee, p2, &q);
	CHECK_RC(w, q.rc, 0, "rdag_prof_record in a call with another prof_id");

	am_phase(w, "profiling: events");
	rc = rdag_prof_events(w->a, p, ev, 64, &n);
	CHECK_RC(w, rc, 0, "rdag_prof_events");
	CHECK(w, n == 2 * PROF_K, "%zu events for %d profiled calls, expected %d", n, PROF_K,
	      2 * PROF_K);
	for (size_t i = 0; rc == 0 && i < n && i < 64; i++) {
		const struct rdag_prof_event *e = &ev[i];

		CHECK(w, e->worker == callee && e->start_ns <= e->end_ns && e->name,
		      "event %zu (%s): worker %u (expected %u), %llu..%llu", i,
		      e->name ? e->name : "(null)", e->worker, callee,
		      (unsigned long long)e->start_ns, (unsigned long long)e->end_ns);
		if (!e->name)
			continue;
		if (strcmp(e->name, "inner") == 0) {
			int hit = 0;

			inner++;
			for (int k = 0; k < PROF_K; k++) {
				if (!matched[k] && got[k].t0 == e->start_ns &&
				    got[k].t1 == e->end_ns) {
					matched[k] = hit = 1;
					break;
				}
			}
			CHECK(w, hit,
			      "event \"inner\" %llu..%llu matches no recorded one (or one twice)",
			      (unsigned long long)e->start_ns, (unsigned long long)e->end_ns);
		} else if (strstr(e->name, "prof_fn")) {
			outer++;
		} else {
			CHECK(w, 0, "unexpected event \"%s\"", e->name);
		}
	}
	CHECK(w, inner == PROF_K && outer == PROF_K,
	      "%zu \"inner\" events and %zu of the call, expected %d each", inner, outer, PROF_K);
	n = 99;
	CHECK_RC(w, rdag_prof_events(w->a, p2, ev, 64, &n), 0, "rdag_prof_events (second id)");
	CHECK(w, n == 2, "%zu events for the second id, expected 2", n);
	n = 99;
	CHECK_RC(w, rdag_prof_events(w->a, p + 1000, ev, 64, &n), 0,
		 "rdag_prof_events of an unused id");
	CHECK(w, n == 0, "%zu events for an unused id", n);

	am_phase(w, "profiling: clear");
	rdag_prof_clear(w->a, p);
	n = 99;
	CHECK_RC(w, rdag_prof_events(w->a, p, ev, 64, &n), 0, "rdag_prof_events after clear");
	CHECK(w, n == 0, "%zu events after rdag_prof_clear", n);
	n = 99;
	CHECK_RC(w, rdag_prof_events(w->a, p2, ev, 64, &n), 0, "rdag_prof_events (second id)");
	CHECK(w, n == 2, "clearing one id removed the other's events (%zu left)", n);
	rdag_prof_clear(w->a, p2);
	am_barrier(w, "profiling: done");
}

/* ---- future ---------------------------------------------------------------------------------- */

struct cb_state {
	atomic_int count;
	atomic_int status;
	pthread_t thread;
	atomic_int errors; /* shared counter: calls that completed with an error */
};

static void on_done(void *arg, rdag_future_t *f, int status)
{
	struct cb_state *s = arg;

	(void)f;
	s->thread = pthread_self();
	atomic_store(&s->status, status);
	atomic_fetch_add(&s->count, 1);
}

/* The callback of the concurrent calls: counts only (many threads run it at once). */
static void on_count(void *arg, rdag_future_t *f, int status)
{
	struct cb_state *s = arg;

	(void)f;
	if (status)
		atomic_fetch_add(&s->errors, 1);
	atomic_fetch_add(&s->count, 1);
}

static void wait_count(struct am_worker *w, struct cb_state *s, int n, const char *what)
{
	uint64_t dl = am_deadline(w, 30);

	while (atomic_load(&s->count) < n && mp_wait_until(dl))
		;
	CHECK(w, atomic_load(&s->count) == n, "%s: %d callbacks, expected %d", what,
	      atomic_load(&s->count), n);
}

struct fcall {
	rdag_future_t *f;
	uint8_t *payload, *data;
	size_t plen, tlen;
	struct rdag_tensor t;
	uint64_t seed;
	int dst;
};

void sc_future(struct am_worker *w)
{
	uint32_t peer = (uint32_t)((w->rank + 1) % w->world);
	struct rdag_msg args = {.payload = "g", .payload_len = 1}, m;
	struct cb_state s1, s2, s3, all;
	const int per_peer = 100;
	struct fcall *calls = NULL;
	int total = per_peer * (w->world - 1), k = 0;
	rdag_future_t *f = NULL;
	uint64_t dl;
	struct am_ctl ctl;
	int rc;

	memset(&s1, 0, sizeof(s1));
	memset(&s2, 0, sizeof(s2));
	memset(&s3, 0, sizeof(s3));
	memset(&all, 0, sizeof(all));

	/* A call held by the callee until we open its gate: EAGAIN, a timed-out wait, done. */
	am_phase(w, "future: gated call");
	rc = rdag_rpc_async(w->a, peer, "gate_wait", &args, NULL, &f);
	CHECK_RC(w, rc, 0, "rdag_rpc_async(gate_wait)");
	if (rc == 0) {
		CHECK_RC(w, rdag_future_test(f), RDAG_EAGAIN,
			 "rdag_future_test of a call still held");
		CHECK_RC(w, rdag_future_wait(f, 50), RDAG_ETIMEDOUT,
			 "rdag_future_wait(50 ms) of a held call");
		CHECK_RC(w, rdag_future_result(f, &m), RDAG_EAGAIN,
			 "rdag_future_result of a held call");
		CHECK_RC(w, rdag_future_then(f, on_done, &s1), 0, "rdag_future_then");
		CHECK_RC(w, rdag_future_then(f, on_done, &s1), RDAG_EBUSY,
			 "a second rdag_future_then");
		CHECK(w, atomic_load(&s1.count) == 0, "the callback ran before the call completed");
		CHECK_RC(w, rdag_rpc_sync(w->a, peer, "gate_open", &args, NULL, NULL), 0,
			 "gate_open");
		CHECK_RC(w, rdag_future_wait(f, 60000), 0,
			 "rdag_future_wait once the gate is open");
		CHECK_RC(w, rdag_future_test(f), 0, "rdag_future_test of a completed call");
		wait_count(w, &s1, 1, "gated call");
		CHECK_RC(w, atomic_load(&s1.status), 0, "status given to the callback");
		if (rdag_future_result(f, &m) == 0)
			CHECK(w, m.payload_len == 4 && memcmp(m.payload, "open", 4) == 0,
			      "gate_wait's reply");
		else
			CHECK(w, 0, "rdag_future_result of a completed call");
		rdag_future_free(f);
		CHECK(w, atomic_load(&s1.count) == 1, "the callback ran %d times",
		      atomic_load(&s1.count));
	}

	/* then() on a completed future runs at once, on this thread. */
	am_phase(w, "future: then after completion");
	f = NULL;
	rc = rdag_rpc_async(w->a, peer, "echo", &args, NULL, &f);
	CHECK_RC(w, rc, 0, "rdag_rpc_async(echo)");
	if (rc == 0) {
		CHECK_RC(w, rdag_future_wait(f, 60000), 0, "rdag_future_wait(echo)");
		CHECK_RC(w, rdag_future_then(f, on_done, &s2), 0,
			 "rdag_future_then on a completed future");
		CHECK(w, atomic_load(&s2.count) == 1 && pthread_equal(s2.thread, pthread_self()),
		      "the callback of a completed future did not run at once on the calling "
		      "thread (%d runs)",
		      atomic_load(&s2.count));
		rdag_future_free(f);
	}

	/* A failing call's callback gets its status. */
	am_phase(w, "future: failing call");
	am_ctl_init(&ctl, AM_RET_NONE, 0);
	ctl.fail_at = 1;
	{
		struct rdag_msg a3 = {.payload = &ctl, .payload_len = sizeof(ctl)};

		f = NULL;
		rc = rdag_rpc_async(w->a, peer, "f", &a3, NULL, &f);
		CHECK_RC(w, rc, 0, "rdag_rpc_async of a failing function");
		if (rc == 0) {
			CHECK_RC(w, rdag_future_then(f, on_done, &s3), 0, "rdag_future_then");
			CHECK_RC(w, rdag_future_wait(f, 60000), RDAG_EREMOTE,
				 "rdag_future_wait of a failing call");
			wait_count(w, &s3, 1, "failing call");
			CHECK_RC(w, atomic_load(&s3.status), RDAG_EREMOTE,
				 "status given to the callback");
			rdag_future_free(f);
		}
	}
	am_barrier(w, "future: single calls");

	/* 100 concurrent calls from every worker to every other, each echoing its own pattern. */
	am_phase(w, "future: %d concurrent calls", total);
	calls = calloc((size_t)(total ? total : 1), sizeof(*calls));
	if (!calls) {
		CHECK(w, 0, "out of memory");
		am_barrier(w, "future: concurrent");
		return;
	}
	for (int dst = 0; dst < w->world; dst++) {
		if (dst == w->rank)
			continue;
		for (int i = 0; i < per_peer; i++, k++) {
			static const size_t sizes[4] = {0, 100, 64 << 10, 256 << 10};
			struct fcall *c = &calls[k];
			struct rdag_msg a = {0};

			c->dst = dst;
			c->seed = mp_seed((uint64_t)w->rank, (uint64_t)dst, (uint64_t)i);
			c->plen = 16 + (size_t)(i * 37) % 1000;
			c->tlen = sizes[i % 4];
			c->payload = malloc(c->plen);
			c->data = c->tlen ? malloc(c->tlen) : NULL;
			if (!c->payload || (c->tlen && !c->data)) {
				CHECK(w, 0, "out of memory");
				break;
			}
			mp_fill(c->payload, c->plen, c->seed);
			a.payload = c->payload;
			a.payload_len = c->plen;
			if (c->tlen) {
				mp_fill(c->data, c->tlen, c->seed + 1);
				am_tensor_u8(&c->t, c->data, c->tlen);
				a.tensors = &c->t;
				a.ntensors = 1;
			}
			rc = rdag_rpc_async(w->a, (uint32_t)dst, "echo", &a, NULL, &c->f);
			CHECK_RC(w, rc, 0, "async call %d to %d", i, dst);
			if (rc) {
				c->f = NULL;
				continue;
			}
			CHECK_RC(w, rdag_future_then(c->f, on_count, &all), 0,
				 "rdag_future_then of call %d", i);
		}
	}
	dl = am_deadline(w, 90);
	for (int i = 0; i < total; i++) {
		struct fcall *c = &calls[i];
		uint64_t now = mp_now_ns();

		if (!c->f)
			continue;
		rc = rdag_future_wait(c->f, now < dl ? (int)((dl - now) / 1000000u) : 0);
		if (rc == RDAG_ETIMEDOUT) {
			/* Stuck calls can be neither freed (it waits) nor closed. */
			int running = 0;

			for (int j = i; j < total; j++)
				running +=
					calls[j].f && rdag_future_test(calls[j].f) == RDAG_EAGAIN;
			am_fail(w, __FILE__, __LINE__,
				"%d of the %d concurrent calls still running after 90 s "
				"(%d callbacks ran; call %d to %d with a %zu-byte tensor is one): "
				"giving up",
				running, k, atomic_load(&all.count), i, c->dst, c->tlen);
			fflush(NULL);
			_exit(1);
		}
		CHECK_RC(w, rc, 0, "wait of concurrent call %d", i);
		if (rc == 0 && rdag_future_result(c->f, &m) == 0) {
			CHECK(w, m.payload_len == c->plen && !mp_check(m.payload, c->plen, c->seed),
			      "call %d: payload of %zu bytes (sent %zu) or its contents differ", i,
			      m.payload_len, c->plen);
			CHECK(w, m.ntensors == (c->tlen ? 1u : 0u), "call %d: %u tensors", i,
			      m.ntensors);
			if (c->tlen && m.ntensors == 1) {
				size_t nb = rdag_tensor_nbytes(&m.tensors[0]);
				uint64_t bad = mp_check(m.tensors[0].data, nb, c->seed + 1);

				CHECK(w, nb == c->tlen && !bad,
				      "call %d: tensor of %zu bytes (sent %zu), first bad byte "
				      "%lld",
				      i, nb, c->tlen, (long long)bad - 1);
			}
		}
		rdag_future_free(c->f);
		c->f = NULL;
	}
	wait_count(w, &all, k, "concurrent calls");
	CHECK(w, atomic_load(&all.errors) == 0, "%d concurrent calls failed",
	      atomic_load(&all.errors));
	for (int i = 0; i < total; i++) {
		free(calls[i].payload);
		free(calls[i].data);
	}
	free(calls);
	am_barrier(w, "future: concurrent");
}

/* ---- workers --------------------------------------------------------------------------------- */

void sc_workers(struct am_worker *w)
{
	char want[32];

	am_phase(w, "workers");
	CHECK(w, rdag_agent_id(w->a) == w->rank, "rdag_agent_id %u, rank %d", rdag_agent_id(w->a),
	      w->rank);
	CHECK(w, rdag_agent_world(w->a) == (uint32_t)w->world, "rdag_agent_world %u",
	      rdag_agent_world(w->a));
	for (int i = 0; i < w->world; i++) {
		const char *name = rdag_worker_name(w->a, (uint32_t)i);

		snprintf(want, sizeof(want), "worker%d", i);
		CHECK(w, name && strcmp(name, want) == 0, "rdag_worker_name(%d) = \"%s\"", i,
		      name ? name : "(null)");
		CHECK_RC(w, rdag_worker_id(w->a, want), i, "rdag_worker_id(%s)", want);
	}
	CHECK(w, rdag_worker_name(w->a, (uint32_t)w->world) == NULL, "a name for worker %d",
	      w->world);
	CHECK(w, rdag_worker_name(w->a, 65535) == NULL, "a name for worker 65535");
	if (w->world > 2)
		CHECK_RC(w, rdag_worker_id(w->a, "worker2"), 2, "rdag_worker_id(worker2)");
	/*
	 * The GPU path with every peer, chosen at open from what each offered in its handshake. All
	 * workers share this host: without a usable device here, every path is refused with the code
	 * gpu_init gives (and peers offered nothing); with one, a path exists (host staging at least).
	 */
	{
		int ginit = gpu_init();

		for (int i = 0; i < w->world; i++) {
			uint16_t offer = 0xffff;
			char why[256] = "";
			int rc = agent_test_gpu_path(w->a, (uint32_t)i, &offer, why, sizeof(why));

			if (i == w->rank) {
				CHECK_RC(w, rc, RDAG_EINVAL, "GPU path to itself");
				continue;
			}
			if (ginit) {
				CHECK(w, rc == ginit && offer == 0 && why[0],
				      "GPU path to %d: %d (%s), offer 0x%x; want %d, no offer", i, rc, why,
				      offer, ginit);
			} else {
				/* set by the tests that know what this host must choose */
				const char *path = getenv("RDAG_TEST_GPU_PATH");

				CHECK(w, rc >= 0 && why[0], "GPU path to %d: %d (%s)", i, rc, why);
				if (path)
					CHECK(w, strcmp(gpu_transport_name((enum gpu_transport)rc),
							path) == 0,
					      "GPU path to %d: %s (%s), want %s", i,
					      gpu_transport_name((enum gpu_transport)rc), why, path);
			}
			/* the public view says the same */
			{
				struct rdag_peer_info pi;
				uint32_t want_offers =
					((offer & WIRE_HS_ARENA_GPU) ? RDAG_PEER_OFFER_GPU_ARENA : 0) |
					((offer & WIRE_HS_NCCL) ? RDAG_PEER_OFFER_NCCL : 0);

				memset(&pi, 0x5a, sizeof(pi));
				CHECK_RC(w, rdag_peer_info(w->a, (uint32_t)i, &pi), 0, "rdag_peer_info(%d)", i);
				CHECK(w, pi.id == (uint32_t)i && pi.name &&
					 strcmp(pi.name, rdag_worker_name(w->a, (uint32_t)i)) == 0 &&
					 pi.offers == want_offers && strcmp(pi.gpu_why, why) == 0,
				      "rdag_peer_info(%d): id %u, name %s, offers 0x%x (want 0x%x), why '%s'",
				      i, pi.id, pi.name ? pi.name : "(null)", pi.offers, want_offers,
				      pi.gpu_why);
				if (rc < 0)
					CHECK(w, pi.gpu_rc == rc && pi.gpu_path == NULL,
					      "rdag_peer_info(%d): gpu_rc %d, path %s; want %d, none", i,
					      pi.gpu_rc, pi.gpu_path ? pi.gpu_path : "(null)", rc);
				else
					CHECK(w, pi.gpu_rc == 0 && pi.gpu_path &&
						 strcmp(pi.gpu_path, gpu_transport_name((enum gpu_transport)rc)) == 0,
					      "rdag_peer_info(%d): gpu_rc %d, path %s", i, pi.gpu_rc,
					      pi.gpu_path ? pi.gpu_path : "(null)");
			}
		}
		CHECK_RC(w, agent_test_gpu_path(w->a, (uint32_t)w->world, NULL, NULL, 0), RDAG_EINVAL,
			 "GPU path to a worker past the world");
		{
			struct rdag_peer_info pi;

			CHECK_RC(w, rdag_peer_info(w->a, (uint32_t)w->rank, &pi), RDAG_EINVAL,
				 "rdag_peer_info of itself");
			CHECK_RC(w, rdag_peer_info(w->a, (uint32_t)w->world, &pi), RDAG_EINVAL,
				 "rdag_peer_info past the world");
			CHECK_RC(w, rdag_peer_info(w->a, 0, NULL), RDAG_EINVAL, "rdag_peer_info(NULL)");
		}
	}
	CHECK_RC(w, rdag_worker_id(w->a, "nobody"), RDAG_ENOENT, "rdag_worker_id(nobody)");
	CHECK_RC(w, rdag_worker_id(w->a, ""), RDAG_ENOENT, "rdag_worker_id(\"\")");
	snprintf(want, sizeof(want), "worker%d", w->world);
	CHECK_RC(w, rdag_worker_id(w->a, want), RDAG_ENOENT, "rdag_worker_id(%s)", want);
	CHECK_RC(w, rdag_agent_progress_mode(w->a), RDAG_PROGRESS_THREAD,
		 "rdag_agent_progress_mode");
	CHECK(w, rdag_agent_progress(w->a, 0) >= 0, "rdag_agent_progress in thread mode");
	am_barrier(w, "workers: done");
}

/* ---- manual ---------------------------------------------------------------------------------- */

/* Drives progress until n replies of "f" have left this worker (the peer's call was served). */
static void serve(struct am_worker *w, unsigned n, const char *what)
{
	uint64_t dl = am_deadline(w, 60);
	int rc = 0;

	am_phase(w, "manual: serving (%s)", what);
	while (atomic_load(&w->replies_sent) < n && mp_now_ns() < dl) {
		rc = rdag_agent_progress(w->a, 10);
		if (rc < 0)
			break;
	}
	CHECK(w, rc >= 0, "rdag_agent_progress: %d (%s): %s", rc, rdag_strerror(rc),
	      rdag_last_error());
	CHECK(w, atomic_load(&w->replies_sent) >= n, "%s: %u replies left, expected %u", what,
	      atomic_load(&w->replies_sent), n);
}

struct pump {
	struct am_worker *w;
	atomic_int stop;
	int rc;
};

static void *pump_thread(void *arg)
{
	struct pump *p = arg;

	while (!atomic_load(&p->stop)) {
		int rc = rdag_agent_progress(p->w->a, 10);

		if (rc < 0) {
			p->rc = rc;
			break;
		}
	}
	return NULL;
}

void sc_manual(struct am_worker *w)
{
	uint32_t peer = (uint32_t)((w->rank + 1) % w->world),
		 pred = (uint32_t)((w->rank + w->world - 1) % w->world);
	unsigned base = atomic_load(&w->replies_sent);
	struct rdag_fn_info fi[AM_MAXFNS];
	struct rdag_tensor t[2];
	struct pump p = {.w = w};
	uint8_t *big = malloc(4u << 20);
	static uint8_t small[1024];
	struct am_ctl ctl;
	struct am_res res;
	rdag_future_t *f = NULL;
	pthread_t th;
	uint64_t c = ~0ull, pc;
	char key;
	int rc;

	CHECK_RC(w, rdag_agent_progress_mode(w->a), RDAG_PROGRESS_MANUAL,
		 "rdag_agent_progress_mode");
	if (!big) {
		CHECK(w, 0, "out of memory");
		return;
	}

	/* 1. Every worker calls the next (its wait drives progress), then serves the previous. */
	am_phase(w, "manual: plain call");
	mp_fill(big, 4u << 20, 101);
	mp_fill(small, sizeof(small), 102);
	am_tensor_u8(&t[0], big, 4u << 20);
	am_tensor_u8(&t[1], small, sizeof(small));
	am_ctl_init(&ctl, AM_RET_NOGRAD, 101);
	rc = am_call(w, peer, &ctl, t, 1, 0, &res);
	CHECK_RC(w, rc, 0, "call with a 4 MiB tensor in manual mode");
	if (rc == 0)
		CHECK(w, res.nobs && res.obs[0].t[0].bad == 0 && res.obs[0].t[0].nbytes == 4u << 20,
		      "the 4 MiB tensor arrived damaged");
	am_res_free(&res);
	serve(w, base + 1, "plain call");
	am_barrier(w, "manual: plain call");

	/* 2. In a context, with a tensor requiring grad: recording as in thread mode. */
	am_phase(w, "manual: context");
	c = new_ctx(w);
	am_put(w, 0, c);
	am_tensor_u8(&t[1], small, sizeof(small));
	am_leaf(&t[1], &key);
	am_ctl_init(&ctl, AM_RET_NOGRAD, 102);
	rc = am_call(w, peer, &ctl, &t[1], 1, 0, &res);
	CHECK_RC(w, rc, 0, "call in a context in manual mode");
	if (rc == 0)
		CHECK(w,
		      res.nobs && res.obs[0].has_context && res.obs[0].context_id == c &&
			      res.obs[0].t[0].grad_kind == RDAG_GRAD_RECV &&
			      res.obs[0].t[0].bad == 0,
		      "the callee saw has_context %u, context %#llx, grad_kind %u",
		      res.nobs ? res.obs[0].has_context : 0,
		      res.nobs ? (unsigned long long)res.obs[0].context_id : 0ull,
		      res.nobs ? res.obs[0].t[0].grad_kind : 0);
	am_res_free(&res);
	serve(w, base + 2, "call in a context");
	am_barrier(w, "manual: context");
	pc = am_get(w, (int)pred, 0);
	CHECK_FNS(w, c, 1, 1, (int)peer, 1, NULL);
	CHECK_FNS(w, c, 0, 0, -1, -1, NULL);
	CHECK_KNOWN(w, c, 1u << peer);
	CHECK_RC(w, rdag_ctx_lookup(w->a, pc), 0, "the predecessor's context %#llx",
		 (unsigned long long)pc);
	CHECK_FNS(w, pc, 0, 1, (int)pred, 1, fi);
	CHECK_FNS(w, pc, 1, 0, -1, -1, NULL);
	CHECK(w, rdag_ctx_count(w->a) == 2, "%zu contexts: its own and its predecessor's",
	      rdag_ctx_count(w->a));
	am_barrier(w, "manual: context checked");

	/* 3. An async call driven by hand: rdag_future_test and rdag_agent_progress. */
	am_phase(w, "manual: async by hand");
	{
		struct rdag_msg args = {.payload = &ctl,
					.payload_len = sizeof(ctl),
					.tensors = &t[1],
					.ntensors = 1};
		uint64_t dl = am_deadline(w, 60);

		rc = rdag_rpc_async(w->a, peer, "f", &args, NULL, &f);
		CHECK_RC(w, rc, 0, "rdag_rpc_async in manual mode");
		if (rc == 0) {
			while ((rc = rdag_future_test(f)) == RDAG_EAGAIN && mp_now_ns() < dl) {
				int prc = rdag_agent_progress(w->a, 10);

				if (prc < 0) {
					CHECK_RC(w, prc, 0, "rdag_agent_progress");
					break;
				}
			}
			CHECK_RC(w, rc, 0, "the async call, progressed by hand");
			rdag_future_free(f);
		}
	}
	serve(w, base + 3, "async call");
	am_barrier(w, "manual: async");

	/* 4. rdag_future_wait with a timeout drives progress too. */
	am_phase(w, "manual: timed wait");
	{
		struct rdag_msg args = {.payload = &ctl,
					.payload_len = sizeof(ctl),
					.tensors = &t[1],
					.ntensors = 1};

		f = NULL;
		rc = rdag_rpc_async(w->a, peer, "f", &args, NULL, &f);
		CHECK_RC(w, rc, 0, "rdag_rpc_async in manual mode");
		if (rc == 0) {
			CHECK_RC(w, rdag_future_wait(f, 60000), 0,
				 "rdag_future_wait in manual mode");
			rdag_future_free(f);
		}
	}
	serve(w, base + 4, "timed wait");
	am_barrier(w, "manual: timed wait");
	CHECK_FNS(w, c, 1, 3, (int)peer, 1, NULL);

	/* 5. Releases (cleanups must be served on both sides): a progress thread of our own. */
	am_phase(w, "manual: release");
	if (pthread_create(&th, NULL, pump_thread, &p) == 0) {
		CHECK_RC(w, rdag_ctx_release(w->a, c), 0, "rdag_ctx_release in manual mode");
		am_barrier(w, "manual: released");
		atomic_store(&p.stop, 1);
		pthread_join(th, NULL);
		CHECK_RC(w, p.rc, 0, "rdag_agent_progress on the progress thread");
	} else {
		CHECK(w, 0, "pthread_create");
	}
	CHECK(w, rdag_ctx_count(w->a) == 0, "%zu contexts after both releases",
	      rdag_ctx_count(w->a));
	free(big);
}

/* ---- gpu_rpc --------------------------------------------------------------------------------- */

#define GR_BYTES (256u << 10) /* above the inline limit: the staged bytes go by RDMA write */

/* A CUDA u8 tensor of n bytes over device memory d of device dev. */
static void gr_tensor(struct rdag_tensor *t, void *d, size_t n, int dev)
{
	int64_t shape[1] = {(int64_t)n};

	rdag_tensor_init(t, d, RDAG_U8, 1, shape);
	t->device_type = RDAG_DEV_CUDA;
	t->device_index = (uint16_t)dev;
}

/* Where tensor t is and whether its bytes are the pattern of seed; 0 or a message in why. */
static int gr_verify(const struct rdag_tensor *t, int want_dev, uint64_t seed, char *why, size_t wl)
{
	size_t n = rdag_tensor_nbytes(t), bad;
	struct gpu_ptr_info pi;
	uint8_t *h;

	if (t->device_type != RDAG_DEV_CUDA || t->device_index != want_dev)
		return snprintf(why, wl, "device type %u index %u, want CUDA %d", t->device_type,
				t->device_index, want_dev), 1;
	if (gpu_ptr_classify(t->data, &pi) || pi.type != GPU_MEM_DEVICE || pi.device != want_dev)
		return snprintf(why, wl, "data %p is not memory of device %d", t->data, want_dev), 1;
	h = malloc(n ? n : 1);
	if (!h || gpu_memcpy_dtoh(h, t->data, n))
		return free(h), snprintf(why, wl, "cannot read it back: %s", rdag_last_error()), 1;
	bad = mp_check(h, n, seed);
	free(h);
	if (bad)
		return snprintf(why, wl, "byte %zu differs", bad - 1), 1;
	return 0;
}

#define GR_MAXT 4 /* tensors in one gpu_add call */

struct gr_sent {
	void *d;
	void *more[GR_MAXT - 1];
};

static void gr_free_sent(void *arg)
{
	struct gr_sent *s = arg;

	gpu_mem_free(s->d);
	for (int k = 0; k < GR_MAXT - 1; k++)
		gpu_mem_free(s->more[k]);
	free(s);
}

/* Replies with the n device tensors t over s's memory (freed once sent), or with the error rc. */
static int gr_reply(rdag_reply_t *out, int rc, const struct rdag_tensor *t, uint32_t n,
		    struct gr_sent *s, const char *who)
{
	for (uint32_t k = 0; !rc && k < n; k++)
		rc = rdag_reply_tensor(out, &t[k]);
	if (rc) {
		gr_free_sent(s);
		return rdag_reply_error(out, rc, "%s: %s", who, rdag_last_error());
	}
	rdag_reply_on_sent(out, gr_free_sent, s);
	return 0;
}

/*
 * "gpu_add": the payload is {seed, want device}. The arguments (1 to GR_MAXT) must be CUDA
 * tensors on that device, argument k holding the pattern of seed + 1000 k; the reply has one new
 * device tensor there per argument, of its size, with the pattern of seed + 1000 k + 1.
 */
int am_fn_gpu_add(void *arg, const struct rdag_caller *who, const struct rdag_msg *in,
		  rdag_reply_t *out)
{
	struct rdag_tensor t[GR_MAXT];
	uint64_t p[2];
	struct gr_sent *s;
	char why[160];
	int rc = 0;

	(void)arg;
	(void)who;
	if (in->payload_len != sizeof(p) || in->ntensors < 1 || in->ntensors > GR_MAXT)
		return rdag_reply_error(out, RDAG_EINVAL, "gpu_add: %zu payload bytes, %u tensors",
					in->payload_len, in->ntensors);
	memcpy(p, in->payload, sizeof(p));
	for (uint32_t k = 0; k < in->ntensors; k++)
		if (gr_verify(&in->tensors[k], (int)p[1], p[0] + 1000 * k, why, sizeof(why)))
			return rdag_reply_error(out, RDAG_EINVAL, "gpu_add: argument %u: %s", k, why);
	s = calloc(1, sizeof(*s));
	if (!s)
		return rdag_reply_error(out, RDAG_ENOMEM, "gpu_add: no memory for the reply");
	for (uint32_t k = 0; !rc && k < in->ntensors; k++) {
		size_t n = rdag_tensor_nbytes(&in->tensors[k]);
		void **d = k ? &s->more[k - 1] : &s->d;
		uint8_t *h = malloc(n);

		rc = h ? gpu_mem_alloc((int)p[1], n, d) : RDAG_ENOMEM;
		if (!rc) {
			mp_fill(h, n, p[0] + 1000 * k + 1);
			rc = gpu_memcpy_htod(*d, h, n);
			gr_tensor(&t[k], *d, n, (int)p[1]);
		}
		free(h);
	}
	return gr_reply(out, rc, t, in->ntensors, s, "gpu_add");
}

/* A call of gpu_add from device dev's memory to dst, expected on dst's device dst_dev. */
static int gr_call(struct am_worker *w, uint32_t dst, void *d, int dev, int dst_dev, uint64_t seed,
		   rdag_future_t **f)
{
	uint64_t p[2] = {seed, (uint64_t)dst_dev};
	struct rdag_tensor t;
	struct rdag_msg m;

	gr_tensor(&t, d, GR_BYTES, dev);
	m = (struct rdag_msg){.payload = p, .payload_len = sizeof(p), .tensors = &t, .ntensors = 1};
	return rdag_rpc_sync(w->a, dst, "gpu_add", &m, NULL, f);
}

/*
 * CUDA tensors in calls and replies over a device map (host staging): worker 0's device 0 maps
 * to worker 1's device 1 and to its own device 1; worker 1's device 1 maps back to worker 0's
 * device 0. Needs a device (the simulated driver, tests/gpu/sim_cuda.c, here); skipped without.
 */
/*
 * With the nccl path to the peer, exactly nout of the device tensors sent and nin of those
 * received went by NCCL (the rest through host staging); with another path, none did.
 */
static void gpu_check_nccl(struct am_worker *w, const struct rdag_peer_info *pi, uint64_t nout,
			   uint64_t nin)
{
	bool nccl = pi->gpu_path && strcmp(pi->gpu_path, "nccl") == 0;

	if (!nccl)
		nout = nin = 0;
	CHECK(w, pi->gpu_nccl_tensors_out == nout && pi->gpu_nccl_tensors_in == nin,
	      "by NCCL (path %s): %llu out, %llu in; want %llu and %llu",
	      pi->gpu_path ? pi->gpu_path : "none", (unsigned long long)pi->gpu_nccl_tensors_out,
	      (unsigned long long)pi->gpu_nccl_tensors_in, (unsigned long long)nout,
	      (unsigned long long)nin);
}

/* Concurrent calls with device tensors: GR_THREADS threads of GR_CALLS calls each. */
#define GR_THREADS 4
#define GR_CALLS 4

struct gr_conc {
	struct am_worker *w;
	int id;
	int failed;               /* calls that went wrong */
	char why[200];            /* the first one's story */
};

static void *gr_conc_main(void *arg)
{
	struct gr_conc *c = arg;
	uint8_t *h = malloc(GR_BYTES);
	void *d = NULL;
	char why[160];

	if (!h || gpu_mem_alloc(0, GR_BYTES, &d)) {
		snprintf(c->why, sizeof(c->why), "thread %d: memory: %s", c->id, rdag_last_error());
		c->failed = GR_CALLS;
		free(h);
		return NULL;
	}
	for (int i = 0; i < GR_CALLS; i++) {
		uint64_t seed = 2000 + 100 * (uint64_t)c->id + (uint64_t)i;
		rdag_future_t *f = NULL;
		struct rdag_msg res;
		int rc;

		mp_fill(h, GR_BYTES, seed);
		rc = gpu_memcpy_htod(d, h, GR_BYTES);
		if (!rc)
			rc = gr_call(c->w, 1, d, 0, 1, seed, &f);
		if (!rc)
			rc = rdag_future_result(f, &res);
		if (rc)
			snprintf(why, sizeof(why), "%s", rdag_last_error());
		else if (res.ntensors != 1 || gr_verify(&res.tensors[0], 0, seed + 1, why, sizeof(why)))
			rc = -1;
		if (rc == -1 && res.ntensors != 1)
			snprintf(why, sizeof(why), "%u result tensors", res.ntensors);
		if (rc && !c->failed++)
			snprintf(c->why, sizeof(c->why), "thread %d call %d: %s", c->id, i, why);
		rdag_future_free(f);
	}
	gpu_mem_free(d);
	free(h);
	return NULL;
}

void sc_gpu_rpc(struct am_worker *w)
{
	int rc = gpu_init(), m01[2] = {1, -1}, m10[2] = {-1, 0}, self[1] = {1}, far[1] = {63};
	struct gpu_info gi;
	uint8_t *h = NULL;
	void *d = NULL;
	char why[160];

	if (rc) {
		if (w->rank == 0)
			printf("skipped: no usable GPU here: %s: %s\n", rdag_strerror(rc),
			       rdag_last_error());
		w->skipped = true;
		return;
	}
	gpu_probe(&gi);
	if (gi.ndevices < 2) {
		if (w->rank == 0)
			printf("skipped: %d CUDA device(s) here, the scenario maps across 2\n",
			       gi.ndevices);
		w->skipped = true;
		return;
	}
	am_phase(w, "gpu_rpc: maps");
	/* Refusals: a local device that does not exist, a target out of range, bad arguments. */
	{
		int from2[3] = {-1, -1, 0}, oob[1] = {64}, neg[1] = {-2};

		CHECK_RC(w, rdag_agent_set_device_map(w->a, 1 - w->rank, from2, 3), RDAG_ENOGPU,
			 "a map from local device 2");
		CHECK(w, strstr(rdag_last_error(), "no CUDA device 2 (2 present)") != NULL,
		      "error: %s", rdag_last_error());
		CHECK_RC(w, rdag_agent_set_device_map(w->a, 1 - w->rank, oob, 1), RDAG_EINVAL,
			 "a map to device 64");
		CHECK_RC(w, rdag_agent_set_device_map(w->a, 1 - w->rank, neg, 1), RDAG_EINVAL,
			 "a map to device -2");
		CHECK_RC(w, rdag_agent_set_device_map(w->a, (uint32_t)w->world, m01, 2), RDAG_EINVAL,
			 "a map towards a worker past the world");
		CHECK_RC(w, rdag_agent_set_device_map(w->a, 0, NULL, 2), RDAG_EINVAL, "a NULL map");
		CHECK_RC(w, rdag_agent_set_device_map(NULL, 0, m01, 2), RDAG_EINVAL, "no agent");
		CHECK_RC(w, rdag_agent_set_device_map(w->a, 1 - w->rank, NULL, 0), 0,
			 "clearing a map that was never set");
	}
	am_barrier(w, "gpu_rpc: refusals");
	if (w->rank == 0) {
		rdag_future_t *f = NULL;

		am_phase(w, "gpu_rpc: unmapped");
		h = malloc(GR_BYTES);
		CHECK(w, h && gpu_mem_alloc(0, GR_BYTES, &d) == 0, "device memory: %s",
		      rdag_last_error());
		if (!h || !d)
			goto out;
		mp_fill(h, GR_BYTES, 11);
		CHECK_RC(w, gpu_memcpy_htod(d, h, GR_BYTES), 0, "filling device 0");
		/* No map yet: refused before anything leaves, naming the way out. */
		rc = gr_call(w, 1, d, 0, 1, 11, &f);
		CHECK_RC(w, rc, RDAG_EINVAL, "a CUDA tensor without a device map");
		CHECK(w, strstr(rdag_last_error(), "no device map entry towards worker 1") != NULL,
		      "error: %s", rdag_last_error());
		/* Host memory claiming to be on device 0: refused as well. */
		CHECK_RC(w, rdag_agent_set_device_map(w->a, 1, m01, 2), 0, "map 0 -> 1");
		{
			uint64_t p[2] = {11, 1};
			struct rdag_tensor t;
			struct rdag_msg m = {.payload = p, .payload_len = sizeof(p), .tensors = &t,
					     .ntensors = 1};

			gr_tensor(&t, h, GR_BYTES, 0);
			CHECK_RC(w, rdag_rpc_sync(w->a, 1, "gpu_add", &m, NULL, &f), RDAG_EINVAL,
				 "host memory sent as CUDA memory");
			CHECK(w, strstr(rdag_last_error(), "not in one allocation of that device"),
			      "error: %s", rdag_last_error());
		}
		/* A device the peer does not have: accepted here, refused where it would land. */
		CHECK_RC(w, rdag_agent_set_device_map(w->a, 1, far, 1), 0, "map 0 -> 63");
		rc = gr_call(w, 1, d, 0, 63, 11, &f);
		CHECK_RC(w, rc, RDAG_EREMOTE, "a tensor for the peer's device 63");
		CHECK(w, strstr(rdag_last_error(), "tensor 0 for CUDA device 63") != NULL, "error: %s",
		      rdag_last_error());
		CHECK_RC(w, rdag_agent_set_device_map(w->a, 1, m01, 2), 0, "map 0 -> 1");
		/* Worker 1 has no map back yet: its reply fails there, and the call with it. */
		rc = gr_call(w, 1, d, 0, 1, 11, &f);
		CHECK_RC(w, rc, RDAG_EREMOTE, "a reply without a map back");
		CHECK(w, strstr(rdag_last_error(), "no device map entry towards worker 0") != NULL,
		      "error: %s", rdag_last_error());
	}
	am_barrier(w, "gpu_rpc: unmapped");
	if (w->rank == 1)
		CHECK_RC(w, rdag_agent_set_device_map(w->a, 0, m10, 2), 0, "map 1 -> 0");
	am_barrier(w, "gpu_rpc: mapped");
	if (w->rank == 0) {
		am_phase(w, "gpu_rpc: calls");
		for (uint64_t i = 0; i < 20; i++) {
			rdag_future_t *f = NULL;
			struct rdag_msg res;

			mp_fill(h, GR_BYTES, 100 + i);
			CHECK_RC(w, gpu_memcpy_htod(d, h, GR_BYTES), 0, "filling device 0");
			rc = gr_call(w, 1, d, 0, 1, 100 + i, &f);
			CHECK_RC(w, rc, 0, "call %llu: %s", (unsigned long long)i, rdag_last_error());
			if (rc)
				break;
			CHECK_RC(w, rdag_future_result(f, &res), 0, "result");
			CHECK(w, res.ntensors == 1, "%u result tensors", res.ntensors);
			if (res.ntensors == 1 && gr_verify(&res.tensors[0], 0, 101 + i, why, sizeof(why)))
				CHECK(w, 0, "call %llu: the reply: %s", (unsigned long long)i, why);
			rdag_future_free(f);
		}
		/* Three tensors in one call (one NCCL group each way), down to an 8-byte one. */
		{
			static const size_t sz[3] = {GR_BYTES, 4104, 8};
			uint64_t p[2] = {500, 1};
			struct rdag_tensor t[3];
			struct rdag_msg m = {.payload = p, .payload_len = sizeof(p), .tensors = t,
					     .ntensors = 3}, res;
			rdag_future_t *f = NULL;
			void *dd[3] = {d, NULL, NULL};

			for (int k = 1; k < 3; k++)
				CHECK_RC(w, gpu_mem_alloc(0, sz[k], &dd[k]), 0, "device memory");
			for (int k = 0; k < 3 && dd[k]; k++) {
				mp_fill(h, sz[k], 500 + 1000 * (uint64_t)k);
				CHECK_RC(w, gpu_memcpy_htod(dd[k], h, sz[k]), 0, "filling device 0");
				gr_tensor(&t[k], dd[k], sz[k], 0);
			}
			rc = dd[1] && dd[2] ? rdag_rpc_sync(w->a, 1, "gpu_add", &m, NULL, &f) : RDAG_ENOMEM;
			CHECK_RC(w, rc, 0, "a call with three tensors: %s", rdag_last_error());
			if (!rc) {
				CHECK_RC(w, rdag_future_result(f, &res), 0, "result");
				CHECK(w, res.ntensors == 3, "%u result tensors", res.ntensors);
				for (uint32_t k = 0; k < res.ntensors && k < 3; k++) {
					if (rdag_tensor_nbytes(&res.tensors[k]) != sz[k] ||
					    gr_verify(&res.tensors[k], 0, 501 + 1000 * (uint64_t)k, why,
						      sizeof(why)))
						CHECK(w, 0, "three tensors: reply %u (%zu bytes): %s", k,
						      rdag_tensor_nbytes(&res.tensors[k]), why);
				}
				rdag_future_free(f);
			}
			gpu_mem_free(dd[1]);
			gpu_mem_free(dd[2]);
		}
		/*
		 * Calls from several threads at once: their messages leave in another order than
		 * their NCCL transfers were numbered, and the replies too (handlers run them in
		 * parallel); every byte is checked. How many arrived early is printed (not fixed).
		 */
		{
			struct gr_conc c[GR_THREADS];
			pthread_t th[GR_THREADS];
			unsigned parked = 0;
			int started = 0;

			am_phase(w, "gpu_rpc: concurrent calls");
			memset(c, 0, sizeof(c));
			for (int k = 0; k < GR_THREADS; k++) {
				c[k].w = w;
				c[k].id = k;
				if (pthread_create(&th[k], NULL, gr_conc_main, &c[k]) == 0)
					started++;
				else
					break;
			}
			CHECK(w, started == GR_THREADS, "%d of %d threads started", started,
			      GR_THREADS);
			for (int k = 0; k < started; k++) {
				pthread_join(th[k], NULL);
				CHECK(w, c[k].failed == 0, "%d concurrent calls failed; %s", c[k].failed,
				      c[k].why);
			}
			agent_test_nccl_parked(w->a, &parked);
			printf("gpu_rpc: %d concurrent calls passed; %u NCCL receives here waited for "
			       "an earlier one\n", GR_THREADS * GR_CALLS, parked);
		}
		/* To itself: device 0 -> device 1 and back through the loopback. */
		CHECK_RC(w, rdag_agent_set_device_map(w->a, 0, self, 1), 0, "map 0 -> 1 to itself");
		rc = gr_call(w, 0, d, 0, 1, 100, NULL);
		CHECK_RC(w, rc, RDAG_EREMOTE, "a reply to itself from unmapped device 1");
		{
			int both[2] = {1, 0};
			rdag_future_t *f = NULL;
			struct rdag_msg res;

			CHECK_RC(w, rdag_agent_set_device_map(w->a, 0, both, 2), 0, "0 <-> 1 to itself");
			mp_fill(h, GR_BYTES, 7);
			CHECK_RC(w, gpu_memcpy_htod(d, h, GR_BYTES), 0, "filling device 0");
			rc = gr_call(w, 0, d, 0, 1, 7, &f);
			CHECK_RC(w, rc, 0, "a call to itself: %s", rdag_last_error());
			if (!rc && rdag_future_result(f, &res) == 0 && res.ntensors == 1 &&
			    gr_verify(&res.tensors[0], 0, 8, why, sizeof(why)))
				CHECK(w, 0, "the reply to itself: %s", why);
			rdag_future_free(f);
		}
	}
out:
	am_barrier(w, "gpu_rpc: done");
	/*
	 * What went through host staging, per peer. Worker 0 staged 22 tensors to 1: the one for
	 * device 63, the one whose reply had no map back, 20 good calls (the unmapped one and the
	 * host memory were refused first). Worker 1 landed 21 (not the one for device 63) and staged
	 * 20 replies (not the unmapped one), which worker 0 landed; then the call with three
	 * tensors (GR_BYTES + 4104 + 8 bytes) and its reply, and the concurrent calls (one tensor
	 * each way each). With the nccl path, all of them but
	 * the one for device 63 (its communicator refused) go by NCCL.
	 */
	{
		struct rdag_peer_info pi;
		const uint64_t three = GR_BYTES + 4104 + 8;
		uint64_t conc = GR_THREADS * GR_CALLS;
		uint64_t out = (w->rank ? 20 : 22) + conc, in = (w->rank ? 21 : 20) + conc;
		uint64_t nout = (w->rank ? 20 : 21) + 3 + conc, nin = (w->rank ? 21 : 20) + 3 + conc;

		CHECK_RC(w, rdag_peer_info(w->a, (uint32_t)(1 - w->rank), &pi), 0, "rdag_peer_info");
		CHECK(w, pi.gpu_tensors_out == out + 3 && pi.gpu_bytes_out == out * GR_BYTES + three &&
			 pi.gpu_tensors_in == in + 3 && pi.gpu_bytes_in == in * GR_BYTES + three,
		      "device tensors: %llu out (%llu bytes), %llu in (%llu bytes); want %llu and %llu",
		      (unsigned long long)pi.gpu_tensors_out, (unsigned long long)pi.gpu_bytes_out,
		      (unsigned long long)pi.gpu_tensors_in, (unsigned long long)pi.gpu_bytes_in,
		      (unsigned long long)out + 3, (unsigned long long)in + 3);
		gpu_check_nccl(w, &pi, nout, nin);
	}
	gpu_mem_free(d);
	free(h);
}

/*
 * A peer that said yes to an NCCL communicator and then never joins it (SIM_NCCL_STALL_JOIN on
 * worker 1: its joins never reach worker 0, and it never accepts worker 0's). Each side gives
 * its joins up after the peer timeout: the calls and their replies go through host staging with
 * every byte right, and both agents close (the communicators still joining are aborted) instead
 * of waiting for a join that never ends. Needs the simulated driver and NCCL.
 */
void sc_gpu_join_stall(struct am_worker *w)
{
	int rc = gpu_init(), m01[2] = {1, -1}, m10[2] = {-1, 0};
	struct rdag_peer_info pi;
	struct gpu_info gi;
	uint8_t *h = NULL;
	void *d = NULL;
	char why[160];

	if (!rc)
		gpu_probe(&gi);
	if (rc || gi.ndevices < 2 || rdag_peer_info(w->a, (uint32_t)(1 - w->rank), &pi) ||
	    !pi.gpu_path || strcmp(pi.gpu_path, "nccl")) {
		if (w->rank == 0)
			printf("skipped: gpu_join_stall needs 2 CUDA devices and the nccl path (the "
			       "simulated driver and NCCL)\n");
		w->skipped = true;
		return;
	}
	am_phase(w, "gpu_join_stall: maps");
	if (w->rank == 1)
		CHECK(w, setenv("SIM_NCCL_STALL_JOIN", "1", 1) == 0, "setenv");
	CHECK_RC(w, rdag_agent_set_device_map(w->a, (uint32_t)(1 - w->rank), w->rank ? m10 : m01, 2),
		 0, "the device map");
	am_barrier(w, "gpu_join_stall: mapped");
	if (w->rank == 0) {
		h = malloc(GR_BYTES);
		CHECK(w, h && gpu_mem_alloc(0, GR_BYTES, &d) == 0, "device memory: %s",
		      rdag_last_error());
		/* The first waits out the join each way; the others find the pair on host staging. */
		for (uint64_t i = 0; h && d && i < 3; i++) {
			rdag_future_t *f = NULL;
			struct rdag_msg res;

			am_phase(w, "gpu_join_stall: a call");
			mp_fill(h, GR_BYTES, 300 + i);
			CHECK_RC(w, gpu_memcpy_htod(d, h, GR_BYTES), 0, "filling device 0");
			rc = gr_call(w, 1, d, 0, 1, 300 + i, &f);
			CHECK_RC(w, rc, 0, "call %llu: %s", (unsigned long long)i, rdag_last_error());
			if (rc)
				break;
			CHECK_RC(w, rdag_future_result(f, &res), 0, "result");
			CHECK(w, res.ntensors == 1, "%u result tensors", res.ntensors);
			if (res.ntensors == 1 && gr_verify(&res.tensors[0], 0, 301 + i, why, sizeof(why)))
				CHECK(w, 0, "call %llu: the reply: %s", (unsigned long long)i, why);
			rdag_future_free(f);
		}
		gpu_mem_free(d);
		free(h);
	}
	am_barrier(w, "gpu_join_stall: calls");
	CHECK_RC(w, rdag_peer_info(w->a, (uint32_t)(1 - w->rank), &pi), 0, "rdag_peer_info");
	CHECK(w, pi.gpu_tensors_out == 3 && pi.gpu_tensors_in == 3 && pi.gpu_nccl_tensors_out == 0 &&
		 pi.gpu_nccl_tensors_in == 0,
	      "device tensors %llu out, %llu in, %llu and %llu of them by NCCL; want 3, 3, 0, 0",
	      (unsigned long long)pi.gpu_tensors_out, (unsigned long long)pi.gpu_tensors_in,
	      (unsigned long long)pi.gpu_nccl_tensors_out, (unsigned long long)pi.gpu_nccl_tensors_in);
	am_barrier(w, "gpu_join_stall: done");
}

/* ---- gpu_backward ---------------------------------------------------------------------------- */

#define GB_N 4096u /* f32 elements: 16 KiB, eager */

static rdag_graph_t *gb_graph;

/* Reads n floats of device memory d, or NULL. */
static float *gb_read(const void *d, size_t n)
{
	float *h = malloc(n * sizeof(*h));

	if (h && gpu_memcpy_dtoh(h, d, n * sizeof(*h))) {
		free(h);
		h = NULL;
	}
	return h;
}

/* y = 3 x on the device: dx = 3 dy, read and written on the device the tensors are on. */
static int gb_scale_bw(void *arg, const struct rdag_tensor *go, uint32_t n_out,
		       struct rdag_tensor *gi, uint32_t n_in)
{
	size_t n = GB_N;
	float *h;
	int rc;

	(void)arg;
	if (n_out != 1 || n_in != 1 || go[0].device_type != RDAG_DEV_CUDA || go[0].device_index != 1 ||
	    gi[0].device_type != RDAG_DEV_CUDA || gi[0].device_index != 1)
		return RDAG_EINVAL; /* the gradients must be on device 1, where x' and y are */
	h = gb_read(go[0].data, n);
	if (!h)
		return RDAG_EIO;
	for (size_t i = 0; i < n; i++)
		h[i] *= 3.0f;
	rc = gpu_memcpy_htod(gi[0].data, h, n * sizeof(*h));
	free(h);
	return rc;
}

/* loss = sum(y') on device 0: dy' = dloss everywhere. */
static int gb_sum_bw(void *arg, const struct rdag_tensor *go, uint32_t n_out,
		     struct rdag_tensor *gi, uint32_t n_in)
{
	float g, *h;
	int rc;

	(void)arg;
	if (n_out != 1 || n_in != 1 || go[0].device_type != RDAG_DEV_CUDA || go[0].device_index != 0 ||
	    gi[0].device_type != RDAG_DEV_CUDA || gi[0].device_index != 0)
		return RDAG_EINVAL;
	if (gpu_memcpy_dtoh(&g, go[0].data, sizeof(g)))
		return RDAG_EIO;
	h = malloc(GB_N * sizeof(*h));
	if (!h)
		return RDAG_ENOMEM;
	for (size_t i = 0; i < GB_N; i++)
		h[i] = g;
	rc = gpu_memcpy_htod(gi[0].data, h, GB_N * sizeof(*h));
	free(h);
	return rc;
}

/* A CUDA f32 tensor of n elements over d on device dev. */
static void gb_tensor(struct rdag_tensor *t, void *d, size_t n, int dev)
{
	int64_t shape[1] = {(int64_t)n};

	rdag_tensor_init(t, d, RDAG_F32, n == 1 ? 0 : 1, shape);
	t->device_type = RDAG_DEV_CUDA;
	t->device_index = (uint16_t)dev;
}

/* "gpu_scale" (worker 1): y = 3 x' for x' on device 1, recorded; y, on device 1, returned. */
int am_fn_gpu_scale(void *arg, const struct rdag_caller *who, const struct rdag_msg *in,
		    rdag_reply_t *out)
{
	struct rdag_tensor y;
	struct gr_sent *s;
	void *node = NULL;
	float *h;
	int rc;

	(void)arg;
	(void)who;
	if (in->ntensors != 1 || in->tensors[0].device_type != RDAG_DEV_CUDA ||
	    in->tensors[0].device_index != 1 || !in->tensors[0].requires_grad ||
	    in->tensors[0].grad_kind != RDAG_GRAD_RECV)
		return rdag_reply_error(out, RDAG_EINVAL, "gpu_scale: want one tensor on device 1 "
					"that requires grad (recv)");
	h = gb_read(in->tensors[0].data, GB_N);
	s = calloc(1, sizeof(*s));
	if (!h || !s || gpu_mem_alloc(1, GB_N * sizeof(float), &s->d)) {
		free(h);
		free(s);
		return rdag_reply_error(out, RDAG_ENOMEM, "gpu_scale: no memory");
	}
	for (size_t i = 0; i < GB_N; i++)
		h[i] *= 3.0f;
	rc = gpu_memcpy_htod(s->d, h, GB_N * sizeof(float));
	free(h);
	gb_tensor(&y, s->d, GB_N, 1);
	if (!rc)
		rc = rdag_graph_node(gb_graph, gb_scale_bw, NULL, in->tensors, 1, &y, 1, &node);
	if (!rc) {
		y.requires_grad = true;
		y.grad_kind = RDAG_GRAD_NODE;
		y.grad_fn.node = node;
		y.grad_fn.input_nr = 0;
	}
	return gr_reply(out, rc, &y, 1, s, "gpu_scale");
}

/* Every one of n floats at device memory d equals want. */
static int gb_all(const void *d, size_t n, float want, char *why, size_t wl)
{
	float *h = gb_read(d, n);
	int bad = !h;

	for (size_t i = 0; h && i < n && !bad; i++)
		if (h[i] != want) {
			snprintf(why, wl, "element %zu is %g, want %g", i, (double)h[i], (double)want);
			bad = 1;
		}
	if (!h)
		snprintf(why, wl, "cannot read it back: %s", rdag_last_error());
	free(h);
	return bad;
}

/*
 * Distributed backward through CUDA tensors over device maps: worker 0's leaf x on device 0 goes
 * to worker 1's device 1 (map 0 -> 1), which returns y = 3 x on its device 1, landing on worker
 * 0's device 0 (map 1 -> 0); loss = sum(y) there, a scalar on device 0. Each gradient must land
 * on the device its forward tensor was on: dy on worker 1's device 1, dx on worker 0's device 0,
 * where it accumulates in the context over two passes (3, then 6). Needs two devices.
 */
void sc_gpu_backward(struct am_worker *w)
{
	int rc = gpu_init(), m01[1] = {1}, m10[2] = {-1, 0};
	struct gpu_info gi;
	char why[160];

	if (rc || (gpu_probe(&gi), gi.ndevices < 2)) {
		if (w->rank == 0)
			printf("skipped: this scenario needs 2 CUDA devices: %s\n",
			       rc ? rdag_last_error() : "fewer here");
		w->skipped = true;
		return;
	}
	am_phase(w, "gpu_backward: set-up");
	CHECK_RC(w, rdag_graph_create(&gb_graph), 0, "rdag_graph_create");
	CHECK_RC(w, rdag_agent_set_device_map(w->a, (uint32_t)(1 - w->rank), w->rank ? m10 : m01,
					      w->rank ? 2 : 1), 0, "device map");
	am_barrier(w, "gpu_backward: maps");
	if (w->rank == 0) {
		static char xkey;
		struct rdag_tensor x, loss;
		struct rdag_grad g[2];
		rdag_future_t *f = NULL;
		struct rdag_msg args, res;
		void *dx = NULL, *dl = NULL, *node = NULL;
		float *h = malloc(GB_N * sizeof(float));
		uint64_t c = 0;
		size_t ng = 0;

		am_phase(w, "gpu_backward: forward");
		CHECK(w, h && gpu_mem_alloc(0, GB_N * sizeof(float), &dx) == 0 &&
			 gpu_mem_alloc(0, sizeof(float), &dl) == 0, "device memory");
		if (!h || !dx || !dl)
			goto out0;
		for (size_t i = 0; i < GB_N; i++)
			h[i] = (float)i;
		CHECK_RC(w, gpu_memcpy_htod(dx, h, GB_N * sizeof(float)), 0, "x");
		gb_tensor(&x, dx, GB_N, 0);
		x.requires_grad = true;
		x.grad_kind = RDAG_GRAD_LEAF;
		x.grad_fn.node = &xkey;
		CHECK_RC(w, rdag_ctx_create(w->a, &c), 0, "context");
		args = (struct rdag_msg){.tensors = &x, .ntensors = 1};
		rc = rdag_rpc_sync(w->a, 1, "gpu_scale", &args, NULL, &f);
		CHECK_RC(w, rc, 0, "gpu_scale: %s", rdag_last_error());
		if (rc)
			goto out0;
		CHECK_RC(w, rdag_future_result(f, &res), 0, "result");
		CHECK(w, res.ntensors == 1 && res.tensors[0].device_type == RDAG_DEV_CUDA &&
			 res.tensors[0].device_index == 0 && res.tensors[0].grad_kind == RDAG_GRAD_RECV,
		      "y' is not a recv tensor on device 0");
		if (res.ntensors == 1 && gb_all(res.tensors[0].data, 1, 0.0f, why, sizeof(why)))
			CHECK(w, 0, "y'[0]: %s", why); /* 3 * x[0] = 0, read from device 0 */
		gb_tensor(&loss, dl, 1, 0);
		rc = rdag_graph_node(gb_graph, gb_sum_bw, NULL, res.tensors, 1, &loss, 1, &node);
		CHECK_RC(w, rc, 0, "loss node");
		loss.requires_grad = true;
		loss.grad_kind = RDAG_GRAD_NODE;
		loss.grad_fn.node = node;
		for (int pass = 1; pass <= 2 && !rc; pass++) {
			am_phase(w, "gpu_backward: pass %d", pass);
			rc = rdag_backward(w->a, c, &loss, 1, true);
			CHECK_RC(w, rc, 0, "pass %d: %s", pass, rdag_last_error());
			if (rc)
				break;
			CHECK_RC(w, rdag_ctx_grads(w->a, c, g, 2, &ng), 0, "rdag_ctx_grads");
			CHECK(w, ng == 1 && g[0].var == &xkey, "%zu gradients", ng);
			if (ng != 1)
				break;
			CHECK(w, g[0].grad.device_type == RDAG_DEV_CUDA && g[0].grad.device_index == 0 &&
				 rdag_tensor_nbytes(&g[0].grad) == GB_N * sizeof(float),
			      "pass %d: dx on device %u:%u", pass, g[0].grad.device_type,
			      g[0].grad.device_index);
			if (gb_all(g[0].grad.data, GB_N, 3.0f * (float)pass, why, sizeof(why)))
				CHECK(w, 0, "pass %d: dx: %s", pass, why);
		}
		rdag_future_free(f);
		CHECK_RC(w, rdag_ctx_release(w->a, c), 0, "release");
out0:
		gpu_mem_free(dx);
		gpu_mem_free(dl);
		free(h);
	}
	am_barrier(w, "gpu_backward: done");
	/* Each way: x (or y), then one gradient per pass, 16 KiB each, all device tensors. */
	{
		struct rdag_peer_info pi;
		const uint64_t nb = GB_N * sizeof(float);

		CHECK_RC(w, rdag_peer_info(w->a, (uint32_t)(1 - w->rank), &pi), 0, "rdag_peer_info");
		CHECK(w, pi.gpu_tensors_out == 3 && pi.gpu_bytes_out == 3 * nb &&
			 pi.gpu_tensors_in == 3 && pi.gpu_bytes_in == 3 * nb,
		      "device tensors: %llu out (%llu bytes), %llu in (%llu bytes); want 3 each way",
		      (unsigned long long)pi.gpu_tensors_out, (unsigned long long)pi.gpu_bytes_out,
		      (unsigned long long)pi.gpu_tensors_in, (unsigned long long)pi.gpu_bytes_in);
		gpu_check_nccl(w, &pi, 3, 3);
	}
	rdag_graph_destroy(gb_graph);
	gb_graph = NULL;
}
