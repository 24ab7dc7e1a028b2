/* Multi-process tests of the autograd core: N forked workers open agents and run one scenario. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "agent_mp.h"

/*
 * Usage: agent_mp [-n workers] [-t seconds] [-p shm|tcp_rxm|provider] scenario
 *
 * The parent binds the bootstrap's rendezvous socket to a free port on 127.0.0.1 and forks the
 * workers; rank 0 serves the rendezvous on it. Each worker opens its agent (RDAG_FABRIC=ofi and
 * the provider from -p; without -p the fabric the environment names, which is how the VM suite
 * runs it over verbs), registers the served functions below, meets the others and runs the
 * scenario; phases are separated by agent_test_barrier(). Exit: 0 all passed, 77 the fabric is
 * not available here, 1 a failure (a check, a crash, the watchdog).
 */

char am_node_key;

/* ---- checks and helpers ---------------------------------------------------------------------- */

void am_fail(struct am_worker *w, const char *file, int line, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	mp_vreport(w->rank, w->board->phase[w->rank], file, line, fmt, ap);
	va_end(ap);
	atomic_store(&w->fail, 1);
}

void am_fail_rc(struct am_worker *w, const char *file, int line, int got, int want, const char *fmt,
		...)
{
	va_list ap;

	va_start(ap, fmt);
	mp_vreport_rc(w->rank, w->board->phase[w->rank], file, line, got, want, fmt, ap);
	va_end(ap);
	atomic_store(&w->fail, 1);
}

uint64_t am_deadline(struct am_worker *w, unsigned s)
{
	return mp_deadline(w->deadline_ns, s);
}

void am_phase(struct am_worker *w, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(w->board->phase[w->rank], sizeof(w->board->phase[w->rank]), fmt, ap);
	va_end(ap);
}

void am_barrier(struct am_worker *w, const char *what)
{
	int rc;

	am_phase(w, "barrier: %s", what);
	rc = agent_test_barrier(w->a);
	CHECK_RC(w, rc, 0, "agent_test_barrier (%s)", what);
}

void am_put(struct am_worker *w, unsigned slot, uint64_t v)
{
	__atomic_store_n(&w->board->v[w->rank][slot], v, __ATOMIC_SEQ_CST);
}

uint64_t am_get(struct am_worker *w, int rank, unsigned slot)
{
	return __atomic_load_n(&w->board->v[rank][slot], __ATOMIC_SEQ_CST);
}

void am_tensor_u8(struct rdag_tensor *t, void *buf, size_t n)
{
	int64_t shape = (int64_t)n;

	rdag_tensor_init(t, buf, RDAG_U8, 1, &shape);
}

void am_leaf(struct rdag_tensor *t, void *key)
{
	t->requires_grad = true;
	t->grad_kind = RDAG_GRAD_LEAF;
	t->grad_fn.node = key;
	t->grad_fn.input_nr = 0;
}

void am_ctl_init(struct am_ctl *c, enum am_ret ret, uint64_t seed)
{
	memset(c, 0, sizeof(*c));
	c->magic = AM_CTL_MAGIC;
	c->ret = (uint32_t)ret;
	c->seed = seed;
}

static unsigned copy_obs(struct am_obs *dst, unsigned cap, const struct rdag_msg *m)
{
	unsigned n = (unsigned)(m->payload_len / sizeof(struct am_obs));

	if (m->payload_len % sizeof(struct am_obs))
		return 0;
	if (n > cap)
		n = cap;
	if (n)
		memcpy(dst, m->payload, n * sizeof(struct am_obs));
	return n;
}

int am_call(struct am_worker *w, uint32_t dst, const struct am_ctl *ctl,
	    const struct rdag_tensor *t, uint32_t nt, uint32_t flags, struct am_res *res)
{
	struct rdag_msg args = {
		.payload = ctl, .payload_len = sizeof(*ctl), .tensors = t, .ntensors = nt};
	struct rdag_call_opts opts = {.flags = flags};
	int rc;

	memset(res, 0, sizeof(*res));
	rc = rdag_rpc_sync(w->a, dst, "f", &args, &opts, &res->f);
	if (rc) {
		snprintf(res->err, sizeof(res->err), "%s", rdag_last_error());
		CHECK(w, res->f == NULL, "rdag_rpc_sync failed (%d) but left a future", rc);
		res->f = NULL;
		return rc;
	}
	if (!res->f) {
		am_fail(w, __FILE__, __LINE__, "rdag_rpc_sync to %u returned 0 and no future", dst);
		return RDAG_EINVAL;
	}
	rc = rdag_future_result(res->f, &res->m);
	if (rc) {
		am_fail_rc(w, __FILE__, __LINE__, rc, 0, "rdag_future_result of a completed call");
		return rc;
	}
	res->nobs = copy_obs(res->obs, AM_MAXHOPS + 1, &res->m);
	if (res->nobs == 0 || res->obs[0].magic != AM_OBS_MAGIC) {
		am_fail(w, __FILE__, __LINE__,
			"reply of f on %u: %zu payload bytes, not observations", dst,
			res->m.payload_len);
		res->nobs = 0;
	}
	return 0;
}

void am_res_free(struct am_res *res)
{
	rdag_future_free(res->f);
	res->f = NULL;
}

int am_count(struct am_worker *w, uint32_t dst, uint64_t id, struct am_count *out)
{
	struct rdag_msg args = {.payload = &id, .payload_len = sizeof(id)}, m;
	struct rdag_call_opts opts = {.flags = RDAG_CALL_PLAIN}; /* never joins a current context */
	rdag_future_t *f = NULL;
	int rc;

	memset(out, 0, sizeof(*out));
	rc = rdag_rpc_sync(w->a, dst, "count", &args, &opts, &f);
	CHECK_RC(w, rc, 0, "count on %u", dst);
	if (rc)
		return rc;
	rc = rdag_future_result(f, &m);
	CHECK_RC(w, rc, 0, "rdag_future_result");
	if (rc == 0 && m.payload_len == sizeof(*out))
		memcpy(out, m.payload, sizeof(*out));
	else if (rc == 0)
		am_fail(w, __FILE__, __LINE__, "count reply of %zu bytes", m.payload_len);
	rdag_future_free(f);
	return rc;
}

size_t am_fns(struct am_worker *w, uint64_t id, int send, struct rdag_fn_info *out)
{
	size_t n = 0;
	int rc = send ? rdag_ctx_send_fns(w->a, id, out, AM_MAXFNS, &n)
		      : rdag_ctx_recv_fns(w->a, id, out, AM_MAXFNS, &n);

	CHECK_RC(w, rc, 0, "rdag_ctx_%s_fns(%#llx)", send ? "send" : "recv",
		 (unsigned long long)id);
	if (rc)
		return 0;
	for (size_t i = 1; i < n && i < AM_MAXFNS; i++)
		CHECK(w, out[i - 1].msg_id < out[i].msg_id,
		      "%s functions of %#llx not by ascending message id", send ? "send" : "recv",
		      (unsigned long long)id);
	return n < AM_MAXFNS ? n : AM_MAXFNS;
}

void am_check_fns(struct am_worker *w, const char *file, int line, uint64_t id, int send, size_t n,
		  int peer, int ntensors, struct rdag_fn_info *out)
{
	struct rdag_fn_info mine[AM_MAXFNS];
	struct rdag_fn_info *fi = out ? out : mine;
	size_t got = am_fns(w, id, send, fi);

	if (got != n) {
		am_fail(w, file, line, "context %#llx: %zu %s functions, expected %zu",
			(unsigned long long)id, got, send ? "send" : "recv", n);
		for (size_t i = 0; i < got; i++)
			fprintf(stderr, "rank %d:   %s fn %zu: msg %#llx peer %u ntensors %u\n",
				w->rank, send ? "send" : "recv", i,
				(unsigned long long)fi[i].msg_id, fi[i].peer, fi[i].ntensors);
		return;
	}
	for (size_t i = 0; i < got; i++) {
		if (peer >= 0 && fi[i].peer != (uint16_t)peer)
			am_fail(w, file, line,
				"context %#llx: %s function %zu (msg %#llx): peer %u, expected %d",
				(unsigned long long)id, send ? "send" : "recv", i,
				(unsigned long long)fi[i].msg_id, fi[i].peer, peer);
		if (ntensors >= 0 && fi[i].ntensors != (uint32_t)ntensors)
			am_fail(w, file, line,
				"context %#llx: %s function %zu: %u tensors, expected %d",
				(unsigned long long)id, send ? "send" : "recv", i, fi[i].ntensors,
				ntensors);
	}
}

uint32_t am_known(struct am_worker *w, uint64_t id)
{
	uint16_t out[4 * AM_MAXW];
	size_t n = 0;
	uint32_t mask = 0;
	int rc = rdag_ctx_known_workers(w->a, id, out, 4 * AM_MAXW, &n);

	CHECK_RC(w, rc, 0, "rdag_ctx_known_workers(%#llx)", (unsigned long long)id);
	if (rc)
		return 0;
	CHECK(w, n <= (size_t)w->world, "%zu known workers in a world of %d", n, w->world);
	for (size_t i = 0; i < n && i < 4 * AM_MAXW; i++) {
		CHECK(w, i == 0 || out[i - 1] < out[i], "known workers not ascending and unique");
		if (out[i] < 32)
			mask |= 1u << out[i];
	}
	return mask;
}

unsigned am_seen(struct am_worker *w, unsigned i, struct am_obs *o)
{
	unsigned n;

	memset(o, 0, sizeof(*o));
	pthread_mutex_lock(&w->lock);
	n = w->nseen;
	if (i < n && i < AM_MAXSEEN)
		*o = w->seen[i];
	pthread_mutex_unlock(&w->lock);
	return n;
}

/* ---- the served functions -------------------------------------------------------------------- */

static void remember(struct am_worker *w, const struct am_obs *o)
{
	pthread_mutex_lock(&w->lock);
	if (w->nseen < AM_MAXSEEN)
		w->seen[w->nseen] = *o;
	w->nseen++;
	pthread_mutex_unlock(&w->lock);
}

static void on_sent(void *arg)
{
	struct am_worker *w = arg;

	atomic_fetch_add(&w->replies_sent, 1u);
}

static void describe(struct am_tobs *d, const struct rdag_tensor *t, uint64_t seed)
{
	size_t n = rdag_tensor_nbytes(t);

	d->nbytes = n;
	d->bad = mp_check(t->data, n, seed);
	d->node = (uint64_t)(uintptr_t)t->grad_fn.node;
	d->input_nr = t->grad_fn.input_nr;
	d->requires_grad = t->requires_grad;
	d->grad_kind = t->grad_kind;
	d->dtype = t->dtype;
	d->ndim = t->ndim;
	d->shape0 = t->ndim > 0 ? t->shape[0] : 0;
	d->shape1 = t->ndim > 1 ? t->shape[1] : 0;
	d->msg_id = t->grad_kind == RDAG_GRAD_RECV && t->grad_fn.node
			    ? rdag_recv_fn_msg_id(t->grad_fn.node)
			    : 0;
}

static int ret_new(rdag_reply_t *out, bool grad, uint64_t seed)
{
	struct rdag_tensor t;
	void *p = rdag_reply_alloc(out, 32);

	if (!p)
		return rdag_reply_error(out, RDAG_ENOMEM, "rdag_reply_alloc(32) failed");
	mp_fill(p, 32, seed ^ 0x7265u);
	am_tensor_u8(&t, p, 32);
	if (grad) {
		t.requires_grad = true;
		t.grad_kind = RDAG_GRAD_NODE;
		t.grad_fn.node = &am_node_key;
		t.grad_fn.input_nr = 3;
	}
	return rdag_reply_tensor(out, &t);
}

/*
 * "f": describes what it received (the reply's payload: one struct am_obs per hop), forwards the
 * received tensors along ctl.hops with a nested rdag_rpc_sync, fails at hop ctl.fail_at, returns
 * ctl.ret. A failure of the forwarded call is returned with the text it came with.
 */
static int fn_f(void *arg, const struct rdag_caller *who, const struct rdag_msg *in,
		rdag_reply_t *out)
{
	struct am_worker *w = arg;
	struct am_obs obs[AM_MAXHOPS + 1];
	struct am_ctl ctl;
	unsigned nobs = 1;
	uint64_t cur = 0;
	int rc = 0;

	if (in->payload_len != sizeof(ctl))
		return rdag_reply_error(out, RDAG_EINVAL, "f: %zu payload bytes", in->payload_len);
	memcpy(&ctl, in->payload, sizeof(ctl));
	if (ctl.magic != AM_CTL_MAGIC || ctl.nhops > AM_MAXHOPS)
		return rdag_reply_error(out, RDAG_EINVAL, "f: bad control block");
	memset(obs, 0, sizeof(obs));
	obs[0].magic = AM_OBS_MAGIC;
	obs[0].worker = (uint16_t)w->rank;
	obs[0].caller = who->worker;
	obs[0].has_context = who->has_context;
	obs[0].context_id = who->context_id;
	obs[0].cur_rc = rdag_ctx_current(w->a, &cur);
	obs[0].cur_id = cur;
	if (ctl.opts & AM_TRY_CREATE) {
		uint64_t x = 0;

		obs[0].create_rc = rdag_ctx_create(w->a, &x);
		if (obs[0].create_rc == 0)
			rdag_ctx_release(w->a, x);
	}
	obs[0].ntensors = in->ntensors;
	for (uint32_t i = 0; i < in->ntensors && i < AM_MAXT; i++)
		describe(&obs[0].t[i], &in->tensors[i], ctl.seed + i);
	if (ctl.fail_at == 1) {
		remember(w, &obs[0]);
		return rdag_reply_error(out, RDAG_EINVAL, "bad thing %d", 7);
	}
	if (ctl.nhops) {
		struct am_ctl next = ctl;
		struct rdag_msg args = {.payload = &next,
					.payload_len = sizeof(next),
					.tensors = in->tensors,
					.ntensors = in->ntensors},
				res;
		struct rdag_call_opts opts = {.flags = ctl.flags};
		rdag_future_t *f = NULL;

		next.nhops--;
		memmove(next.hops, ctl.hops + 1, sizeof(next.hops) - sizeof(next.hops[0]));
		next.fail_at = ctl.fail_at ? ctl.fail_at - 1 : 0;
		rc = rdag_rpc_sync(w->a, ctl.hops[0], "f", &args, &opts, &f);
		obs[0].nested_rc = rc;
		remember(w, &obs[0]);
		if (rc) {
			char text[1024];

			snprintf(text, sizeof(text), "%s", rdag_last_error());
			return rdag_reply_error(out, rc, "%s", text);
		}
		if (rdag_future_result(f, &res) == 0)
			nobs += copy_obs(obs + 1, AM_MAXHOPS, &res);
		rdag_future_free(f);
	} else {
		remember(w, &obs[0]);
	}
	rc = rdag_reply_payload(out, obs, nobs * sizeof(obs[0]));
	if (rc)
		return rdag_reply_error(out, rc, "rdag_reply_payload failed");
	switch (ctl.ret) {
	case AM_RET_NOGRAD: rc = ret_new(out, false, ctl.seed); break;
	case AM_RET_NODE: rc = ret_new(out, true, ctl.seed); break;
	case AM_RET_INPUT:
		if (in->ntensors)
			rc = rdag_reply_tensor(out, &in->tensors[0]);
		break;
	case AM_RET_ECHO:
		for (uint32_t i = 0; i < in->ntensors && rc == 0; i++)
			rc = rdag_reply_tensor(out, &in->tensors[i]);
		break;
	default: break;
	}
	if (rc)
		return rc == RDAG_ENOMEM ? rc
					 : rdag_reply_error(out, rc, "rdag_reply_tensor failed");
	rdag_reply_on_sent(out, on_sent, w);
	return 0;
}

/* "echo": the payload and the tensors back, as received. */
static int fn_echo(void *arg, const struct rdag_caller *who, const struct rdag_msg *in,
		   rdag_reply_t *out)
{
	int rc = rdag_reply_payload(out, in->payload, in->payload_len);

	(void)arg;
	(void)who;
	for (uint32_t i = 0; i < in->ntensors && rc == 0; i++)
		rc = rdag_reply_tensor(out, &in->tensors[i]);
	return rc ? rdag_reply_error(out, rc, "echo: cannot build the reply") : 0;
}

/* "count": contexts and RRefs alive here, and the lookup of the context id in the payload. */
static int fn_count(void *arg, const struct rdag_caller *who, const struct rdag_msg *in,
		    rdag_reply_t *out)
{
	struct am_worker *w = arg;
	struct am_count c;
	uint64_t id = ~0ull;

	(void)who;
	if (in->payload_len == sizeof(id))
		memcpy(&id, in->payload, sizeof(id));
	memset(&c, 0, sizeof(c));
	c.ctx_count = rdag_ctx_count(w->a);
	c.rref_count = rdag_rref_count(w->a);
	c.lookup_rc = rdag_ctx_lookup(w->a, id);
	return rdag_reply_payload(out, &c, sizeof(c));
}

/* "gate_wait" returns once the caller has called "gate_open" (or fails after 60 s). */
static int fn_gate_wait(void *arg, const struct rdag_caller *who, const struct rdag_msg *in,
			rdag_reply_t *out)
{
	struct am_worker *w = arg;
	struct timespec ts;
	int open = 0;

	(void)in;
	if (who->worker >= AM_MAXW)
		return rdag_reply_error(out, RDAG_EINVAL, "gate: caller %u", who->worker);
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += 60;
	pthread_mutex_lock(&w->lock);
	while (!w->gate[who->worker])
		if (pthread_cond_timedwait(&w->cond, &w->lock, &ts) == ETIMEDOUT)
			break;
	open = w->gate[who->worker];
	w->gate[who->worker] = 0;
	pthread_mutex_unlock(&w->lock);
	if (!open)
		return rdag_reply_error(out, RDAG_ETIMEDOUT, "gate of %u never opened",
					who->worker);
	return rdag_reply_payload(out, "open", 4);
}

static int fn_gate_open(void *arg, const struct rdag_caller *who, const struct rdag_msg *in,
			rdag_reply_t *out)
{
	struct am_worker *w = arg;

	(void)in;
	(void)out;
	if (who->worker >= AM_MAXW)
		return rdag_reply_error(out, RDAG_EINVAL, "gate: caller %u", who->worker);
	pthread_mutex_lock(&w->lock);
	w->gate[who->worker] = 1;
	pthread_cond_broadcast(&w->cond);
	pthread_mutex_unlock(&w->lock);
	return 0;
}

/* "make": an RRef's value: AM_MAKE_PAYLOAD bytes of pattern seed, a tensor of pattern seed + 1. */
static int fn_make(void *arg, const struct rdag_caller *who, const struct rdag_msg *in,
		   rdag_reply_t *out)
{
	uint8_t payload[AM_MAKE_PAYLOAD];
	struct rdag_tensor t;
	struct am_make mk;
	void *p;
	int rc;

	(void)arg;
	(void)who;
	if (in->payload_len != sizeof(mk))
		return rdag_reply_error(out, RDAG_EINVAL, "make: %zu payload bytes",
					in->payload_len);
	memcpy(&mk, in->payload, sizeof(mk));
	mp_fill(payload, sizeof(payload), mk.seed);
	rc = rdag_reply_payload(out, payload, sizeof(payload));
	if (rc || mk.tensor_len == 0)
		return rc;
	p = rdag_reply_alloc(out, mk.tensor_len);
	if (!p)
		return rdag_reply_error(out, RDAG_ENOMEM, "make: no memory");
	mp_fill(p, mk.tensor_len, mk.seed + 1);
	am_tensor_u8(&t, p, mk.tensor_len);
	return rdag_reply_tensor(out, &t);
}

/* "prof_fn": times a little work and records it as the event "inner". */
static int fn_prof(void *arg, const struct rdag_caller *who, const struct rdag_msg *in,
		   rdag_reply_t *out)
{
	uint8_t buf[4096];
	struct am_prof p;

	(void)arg;
	(void)who;
	(void)in;
	memset(&p, 0, sizeof(p));
	p.t0 = mp_now_ns();
	mp_fill(buf, sizeof(buf), p.t0);
	p.t1 = mp_now_ns() + (buf[17] & 1);
	p.rc = rdag_prof_record("inner", p.t0, p.t1);
	return rdag_reply_payload(out, &p, sizeof(p));
}

static int register_all(struct am_worker *w)
{
	static const struct mp_fn fns[] = {
		{"f", fn_f},
		{"echo", fn_echo},
		{"count", fn_count},
		{"gate_wait", fn_gate_wait},
		{"gate_open", fn_gate_open},
		{"make", fn_make},
		{"prof_fn", fn_prof},
		{"gpu_add", am_fn_gpu_add},
		{"gpu_scale", am_fn_gpu_scale},
	};
	const char *name = NULL;
	int rc = mp_register(w->a, fns, sizeof(fns) / sizeof(fns[0]), w, &name);

	CHECK_RC(w, rc, 0, "rdag_register(%s)", name);
	return rc;
}

/* ---- the harness ----------------------------------------------------------------------------- */

static const struct {
	const char *name;
	void (*fn)(struct am_worker *w);
	int min_n;
} scenarios[] = {
	{"ids", sc_ids, 2},
	{"nested", sc_nested, 1},
	{"plain_call", sc_plain_call, 2},
	{"return_tensor", sc_return_tensor, 2},
	{"chain3", sc_chain3, 3},
	{"self_call", sc_self_call, 1},
	{"ping_back", sc_ping_back, 2},
	{"no_grad", sc_no_grad, 2},
	{"ten_tensors", sc_ten_tensors, 2},
	{"cleanup", sc_cleanup, 4},
	{"remote_error", sc_remote_error, 3},
	{"rref", sc_rref, 2},
	{"profiling", sc_profiling, 2},
	{"future", sc_future, 2},
	{"workers", sc_workers, 3},
	{"manual", sc_manual, 2},
	{"gpu_rpc", sc_gpu_rpc, 2},
	{"gpu_join_stall", sc_gpu_join_stall, 2},
	{"gpu_backward", sc_gpu_backward, 2},
};

static int worker(const struct mp_cfg *cfg, void *board, int rank, int lfd, int port, int ready_fd)
{
	struct am_worker *w;
	int rc, ret;

	w = calloc(1, sizeof(*w));
	if (!w) {
		fprintf(stderr, "rank %d: out of memory\n", rank);
		return 1;
	}
	w->rank = rank;
	w->world = cfg->n;
	w->cfg = cfg;
	w->board = board;
	w->deadline_ns = mp_worker_deadline(cfg->timeout_s, 10);
	pthread_mutex_init(&w->lock, NULL);
	pthread_cond_init(&w->cond, NULL);
	mp_use_provider(cfg->prov);
	am_phase(w, "rdag_agent_open");
	ret = mp_agent_open(&w->a, "agent-test", rank, cfg->n, lfd, port,
			    strcmp(cfg->scenario, "manual") == 0 ? RDAG_PROGRESS_MANUAL
								 : RDAG_PROGRESS_THREAD);
	if (ret)
		goto out;
	if (register_all(w) == 0) {
		am_barrier(w, "start");
		am_phase(w, "scenario %s", cfg->scenario);
		scenarios[cfg->index].fn(w);
		am_barrier(w, "end");
		am_phase(w, "final checks");
		CHECK(w, rdag_ctx_count(w->a) == 0, "%zu contexts left at the end",
		      rdag_ctx_count(w->a));
		CHECK(w, rdag_rref_count(w->a) == 0, "%zu RRefs left at the end",
		      rdag_rref_count(w->a));
	}
	am_phase(w, "rdag_agent_close");
	rc = rdag_agent_close(w->a);
	CHECK_RC(w, rc, 0, "rdag_agent_close");
	ret = atomic_load(&w->fail) ? 1 : w->skipped ? MP_SKIP : 0;
	if (!ret && rank == 0)
		mp_passed(cfg);
out:
	pthread_cond_destroy(&w->cond);
	pthread_mutex_destroy(&w->lock);
	free(w);
	return ret;
}

int main(int argc, char **argv)
{
	struct am_board *board;
	struct mp_cfg cfg;

	if (mp_select(argc, argv, AM_MAXW, MP_TABLE(scenarios), &cfg))
		return 2;
	setvbuf(stdout, NULL, _IOLBF, 0);
	board = mp_shared_map(sizeof(*board));
	if (!board) {
		perror("agent_mp: mmap");
		return 1;
	}
	return mp_run(&(struct mp_run){.cfg = &cfg, .prog = "agent_mp", .worker = worker, .arg = board,
				       .phase = board->phase});
}
