/* Multi-process transport tests: forks N workers that meet through the bootstrap on 127.0.0.1 and run one scenario. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fabric/fabric.h"
#include "util/err.h"
#include "xport_mp.h"

/*
 * Usage: xport_mp [-n workers] [-t seconds] [-p provider] [-c count] scenario
 *
 * The parent binds the bootstrap's rendezvous socket to a free port on 127.0.0.1 and forks the
 * workers; rank 0 serves the rendezvous on that socket. Each worker opens the fabric endpoint
 * (provider from -p, else RDAG_FABRIC / RDAG_OFI_PROVIDER as the environment says, so the same
 * program runs on verbs in the VM), opens the xport and runs the scenario. Exit: 0 all passed,
 * 77 the fabric is not available here, 1 a failure (a check, a crash, the watchdog).
 */

void mp_fail(struct mp_worker *w, const char *file, int line, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "rank %d: %s:%d: ", w->rank, file, line);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	w->fail = 1;
}

int mp_late(struct mp_worker *w)
{
	if (mp_now_ns() < w->deadline_ns)
		return 0;
	if (!w->fail)
		mp_fail(w, __FILE__, __LINE__, "scenario deadline passed (sent %llu, done %llu ok + "
			"%llu failed)", (unsigned long long)w->sends, (unsigned long long)w->done_ok,
			(unsigned long long)w->done_err);
	return 1;
}

void mp_desc_u8(struct wire_tensor *d, uint64_t n)
{
	memset(d, 0, sizeof(*d));
	d->dtype = WIRE_DT_U8;
	d->rank = 1;
	d->dev_type = WIRE_DEV_CPU;
	d->nbytes = n;
	d->shape[0] = (int64_t)n;
}

int mp_enc_rpc(void *arg, void *buf, size_t cap, const struct wire_env *env,
	       const struct wire_tensor *t, uint32_t n, size_t *len)
{
	const struct mp_rpc *r = arg;
	struct wire_call c;

	memset(&c, 0, sizeof(c));
	c.name.ptr = r->name;
	c.name.len = (uint32_t)strlen(r->name);
	c.payload.ptr = r->payload;
	c.payload.len = r->plen;
	return wire_encode_rpc_call(buf, cap, env, &c, t, n, len);
}

int mp_enc_grad(void *arg, void *buf, size_t cap, const struct wire_env *env,
		const struct wire_tensor *t, uint32_t n, size_t *len)
{
	struct wire_grad_req g = {.ctx_id = 0x1234, .msg_id = env->req_id, .retain_graph = false};

	(void)arg;
	return wire_encode_grad_req(buf, cap, env, &g, t, n, len);
}

int mp_enc_fwd(void *arg, void *buf, size_t cap, const struct wire_env *env,
	       const struct wire_tensor *t, uint32_t n, size_t *len)
{
	struct wire_fwd f = {.ctx_id = 77, .msg_id = env->req_id, .from_worker = env->src};
	size_t prefix = wire_fwd_prefix(&f), inner_len = 0;
	int rc;

	if (cap < prefix)
		return RDAG_ENOSPC;
	/* The inner RPC_CALL is encoded in place behind the wrapper's fields: no copy. */
	rc = mp_enc_rpc(arg, (uint8_t *)buf + prefix, cap - prefix, NULL, t, n, &inner_len);
	if (rc)
		return rc;
	return wire_encode_fwd_req(buf, cap, env, &f, NULL, inner_len, len);
}

static void on_done(void *arg, int status)
{
	struct mp_worker *w = arg;

	if (status == 0) {
		w->done_ok++;
	} else {
		w->done_err++;
		w->last_status = status;
		snprintf(w->last_err, sizeof(w->last_err), "%s", rdag_last_error());
	}
}

int mp_step(struct mp_worker *w)
{
	int rc = xport_progress(w->x, 5);

	if (rc < 0) {
		mp_fail(w, __FILE__, __LINE__, "xport_progress: %s: %s", rdag_strerror(rc),
			rdag_last_error());
		return -1;
	}
	return mp_late(w) ? -1 : 0;
}

int mp_send(struct mp_worker *w, uint32_t peer, uint64_t req, xport_encode_fn enc, void *arg,
	    const struct xport_tensor *t, uint32_t n)
{
	for (;;) {
		int rc = xport_send(w->x, peer, req, enc, arg, t, n, on_done, w);

		if (rc == 0) {
			w->sends++;
			return 0;
		}
		if (rc != RDAG_EAGAIN)
			return rc;
		if (mp_step(w))
			return RDAG_ETIMEDOUT;
	}
}

int mp_send_bytes(struct mp_worker *w, uint32_t peer, const void *msg, size_t len)
{
	for (;;) {
		int rc = xport_send_bytes(w->x, peer, msg, len, on_done, w);

		if (rc == 0) {
			w->sends++;
			return 0;
		}
		if (rc != RDAG_EAGAIN)
			return rc;
		if (mp_step(w))
			return RDAG_ETIMEDOUT;
	}
}

int mp_drain(struct mp_worker *w)
{
	while (w->done_ok + w->done_err < w->sends)
		if (mp_step(w))
			return -1;
	return 0;
}

static void on_recv(void *arg, struct xport_rx *rx)
{
	struct mp_worker *w = arg;

	if (w->on_rx) {
		w->on_rx(w, rx);
	} else if (w->nstash < (int)(sizeof(w->stash) / sizeof(w->stash[0]))) {
		/* A peer already in the next phase: kept for that phase's handler. */
		w->stash[w->nstash++] = rx;
	} else {
		mp_fail(w, __FILE__, __LINE__, "unexpected %s from %u", wire_kind_name(rx->msg.kind),
			rx->peer);
		xport_release(w->x, rx);
	}
}

static void on_dead(void *arg, uint32_t peer, int code, const char *why)
{
	struct mp_worker *w = arg;

	if (peer < MP_MAXW) {
		w->dead[peer] = 1;
		w->dead_ns[peer] = mp_now_ns();
		snprintf(w->dead_why[peer], sizeof(w->dead_why[peer]), "%s", why);
	}
	(void)code;
}

static const struct {
	const char *name;
	void (*fn)(struct mp_worker *w);
	int min_n;
} scenarios[] = {
	{"pingpong", sc_pingpong, 2}, {"burst", sc_burst, 2}, {"tensors", sc_tensors, 2},
	{"refuse", sc_refuse, 2},     {"kill", sc_kill, 2},   {"rcache", sc_rcache, 2},
	{"threads", sc_threads, 2},   {"hold", sc_hold, 2},
};

static int worker(const struct mp_cfg *cfg, void *sh, int rank, int lfd, int port, int ready_fd)
{
	struct mp_worker w;
	struct boot_opts bo;
	struct fab_open_opts fo;
	struct fab_ep *ep = NULL;
	int rc;

	memset(&w, 0, sizeof(w));
	w.rank = rank;
	w.world = cfg->n;
	w.cfg = cfg;
	w.sh = sh;
	w.ready_fd = ready_fd;
	w.deadline_ns = mp_worker_deadline(cfg->timeout_s, 5);
	mp_use_provider(cfg->prov);
	if (strcmp(cfg->scenario, "kill") == 0)
		setenv("RDAG_PEER_TIMEOUT_MS", "2000", 0);
	if (strcmp(cfg->scenario, "rcache") == 0)
		setenv("RDAG_RCACHE_MAX_ENTRIES", "4", 0);

	boot_opts_init(&bo);
	bo.rank = rank;
	bo.world_size = cfg->n;
	snprintf(bo.master_addr, sizeof(bo.master_addr), "127.0.0.1");
	bo.master_port = port;
	snprintf(bo.job_token, sizeof(bo.job_token), "xport-test-%d", (int)getppid());
	bo.job_token_set = 1;
	snprintf(bo.name, sizeof(bo.name), "worker%d", rank);
	bo.timeout_ms = 60000;
	if (rank == 0)
		bo.listen_fd = lfd;
	else if (lfd >= 0)
		close(lfd);
	rc = boot_open(&bo, &w.b);
	if (rc) {
		fprintf(stderr, "rank %d: boot_open: %s\n", rank, rdag_last_error());
		return 1;
	}
	fab_opts_from_env(&fo);
	xport_opts_init(&w.xo);
	w.xo.on_recv = on_recv;
	w.xo.recv_arg = &w;
	w.xo.on_peer_dead = on_dead;
	w.xo.peer_arg = &w;
	w.xo.offer = mp_offer_of((uint32_t)rank);
	xport_fab_opts(&w.xo, (uint32_t)cfg->n, (uint32_t)rank, &fo);
	fo.local_only = 1;
	rc = fab_open(&fo, &ep);
	if (rc) {
		fprintf(stderr, "rank %d: fab_open: %s: %s\n", rank, rdag_strerror(rc), rdag_last_error());
		boot_close(w.b);
		return mp_open_failed(rc);
	}
	rc = xport_open(&w.xo, w.b, ep, &w.x);
	if (rc) {
		fprintf(stderr, "rank %d: xport_open: %s: %s\n", rank, rdag_strerror(rc), rdag_last_error());
		boot_close(w.b);
		return 1;
	}
	scenarios[cfg->index].fn(&w);
	MP_CHECK(&w, w.nstash == 0, "%d messages never handled", w.nstash);
	while (w.nstash)
		xport_release(w.x, w.stash[--w.nstash]);
	xport_close(w.x);
	boot_close(w.b);
	if (!w.fail && rank == 0)
		mp_passed(cfg);
	return w.fail ? 1 : 0;
}

int main(int argc, char **argv)
{
	struct mp_cfg cfg;
	struct mp_shared *sh;

	if (mp_parse(argc, argv, "n:t:p:c:", &cfg)) {
		fprintf(stderr, "usage: %s [-n N] [-t s] [-p provider|tcp_rxm] [-c count] scenario\n", argv[0]);
		return 2;
	}
	if (!cfg.scenario || cfg.n < 2 || cfg.n > MP_MAXW) {
		fprintf(stderr, "usage: %s [-n 2..%d] [-t s] [-p provider] [-c count] scenario\n", argv[0],
			MP_MAXW);
		return 2;
	}
	cfg.index = mp_find(MP_TABLE(scenarios), cfg.scenario);
	if (cfg.index < 0) {
		fprintf(stderr, "%s: unknown scenario '%s'\n", argv[0], cfg.scenario);
		return 2;
	}
	/* Kill scenario: the victim (the last rank) says when to kill it. */
	if (strcmp(cfg.scenario, "kill") == 0)
		cfg.victim = cfg.n - 1;
	setvbuf(stdout, NULL, _IOLBF, 0);
	sh = mp_shared_map(sizeof(*sh));
	if (!sh) {
		perror("xport_mp: set-up");
		return 1;
	}
	return mp_run(&(struct mp_run){.cfg = &cfg, .prog = "xport_mp", .worker = worker, .arg = sh,
				       .ready_pipe = true, .kill_ns = &sh->kill_ns});
}
