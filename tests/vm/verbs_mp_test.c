/* Multi-process tests of the verbs provider over a real device (Soft-RoCE in the VM): data, errors, close. */
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fabric/fabric.h"
#include "gpu/gpu.h"
#include "mp.h"

/*
 * Usage: verbs_mp_test <scenario>   (scenarios: see the table at the bottom; "all" runs each)
 * Every scenario forks its workers (mp.h), which open a verbs endpoint, exchange addresses
 * through the parent and connect. Exits 77 when there is no usable RDMA device (the host).
 */

#define CONNECT_MS 60000 /* TCG guests are slow: connection set-up may take seconds */
#define WAIT_MS 60000    /* longest wait for one completion */

struct w {
	struct mp *m;
	struct fab_ep *ep;
	const struct fab_attr *a;
	int rank, size;
};

static int failf(struct w *w, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int failf(struct w *w, int line, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "rank %d: FAIL (line %d): ", w ? w->rank : -1, line);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, " [last error: %s]\n", rdag_last_error());
	return 1;
}

#define CHECK(cond, ...)                                                                   \
	do {                                                                               \
		if (!(cond))                                                               \
			return failf(w, __LINE__, __VA_ARGS__);                            \
	} while (0)

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static double now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static void opts_init(struct fab_open_opts *o, int rank, int size)
{
	const char *gid = getenv("RDAG_IB_GID_INDEX");

	memset(o, 0, sizeof(*o));
	o->provider = "verbs";
	o->ib_device = getenv("RDAG_IB_DEVICE");
	o->iface_addr = getenv("RDAG_IB_ADDR");
	o->ib_gid_index = gid && *gid ? atoi(gid) : -1;
	o->rank = (uint32_t)rank;
	o->world_size = (uint32_t)size;
}

/* Opens, exchanges addresses, connects. Returns 0, 77 (no device) or 1. */
static int setup_opts(struct w *w, struct mp *m, const struct fab_open_opts *o, int connect)
{
	uint8_t name[64], all[64 * 16];
	size_t len = sizeof(name);
	const void *addrs[16];
	size_t lens[16];
	char why[256];
	int rc;

	memset(w, 0, sizeof(*w));
	w->m = m;
	w->rank = m->rank;
	w->size = m->size;
	rc = fab_verbs_ops.probe(o, why, sizeof(why));
	if (rc == RDAG_ENODEV) {
		fprintf(stderr, "rank %d: skip: %s\n", w->rank, why);
		return 77;
	}
	CHECK(rc == 0, "probe: %d %s", rc, why);
	rc = fab_verbs_ops.open(o, &w->ep);
	CHECK(rc == 0, "open: %d", rc);
	w->a = fab_attr(w->ep);
	rc = fab_name(w->ep, name, &len);
	CHECK(rc == 0 && len <= sizeof(name), "name: %d len %zu", rc, len);
	CHECK(mp_allgather(m, name, len, all) == 0, "allgather");
	for (int i = 0; i < m->size; i++) {
		addrs[i] = all + (size_t)i * len;
		lens[i] = len;
	}
	if (!connect)
		return 0;
	rc = fab_connect(w->ep, (uint32_t)m->size, addrs, lens, CONNECT_MS);
	CHECK(rc == 0, "connect: %d", rc);
	return 0;
}

static int setup(struct w *w, struct mp *m, size_t rx_depth)
{
	struct fab_open_opts o;

	opts_init(&o, m->rank, m->size);
	o.rx_depth = rx_depth;
	return setup_opts(w, m, &o, 1);
}

/* Waits for one completion, blocking on the wait fd (arm first) or busy-polling. */
static int next_cqe(struct w *w, struct fab_cqe *c, int blocking)
{
	int64_t deadline = now_ms() + WAIT_MS;

	for (;;) {
		int n = fab_poll(w->ep, c, 1), rc;
		struct pollfd pfd;

		if (n < 0)
			return failf(w, __LINE__, "poll: %d", n);
		if (n == 1)
			return 0;
		if (now_ms() > deadline)
			return failf(w, __LINE__, "no completion within %d ms", WAIT_MS);
		if (!blocking)
			continue;
		rc = fab_arm(w->ep);
		if (rc == RDAG_EAGAIN)
			continue;
		if (rc != 0)
			return failf(w, __LINE__, "arm: %d", rc);
		pfd.fd = fab_wait_fd(w->ep);
		pfd.events = POLLIN;
		if (poll(&pfd, 1, 1000) < 0 && errno != EINTR)
			return failf(w, __LINE__, "poll(2): %s", strerror(errno));
	}
}

/* Waits for a completion and checks it succeeded. */
static int next_ok(struct w *w, struct fab_cqe *c, int blocking)
{
	if (next_cqe(w, c, blocking))
		return 1;
	CHECK(c->status == 0, "completion op %d context %p failed: %d %s", c->op, c->context, c->status,
	      c->errmsg);
	return 0;
}

/* Registered buffers for receives: n slots of sz bytes. */
struct rbufs {
	uint8_t *mem;
	size_t sz;
	int n;
	struct fab_mr mr;
};

static int rbufs_init(struct w *w, struct rbufs *r, int n, size_t sz)
{
	int rc;

	r->n = n;
	r->sz = sz;
	r->mem = calloc((size_t)n, sz);
	CHECK(r->mem, "calloc");
	rc = fab_mr_reg(w->ep, r->mem, (size_t)n * sz, FAB_ACCESS_LOCAL, &r->mr);
	CHECK(rc == 0, "mr_reg: %d", rc);
	return 0;
}

static int repost(struct w *w, struct rbufs *r, int i)
{
	int rc = fab_post_recv(w->ep, r->mem + (size_t)i * r->sz, r->sz, r->mr.desc,
			       (void *)(uintptr_t)(i + 1));

	CHECK(rc == 0, "post_recv %d: %d", i, rc);
	return 0;
}

static int rbufs_post_all(struct w *w, struct rbufs *r)
{
	for (int i = 0; i < r->n; i++)
		if (repost(w, r, i))
			return 1;
	return 0;
}

/* The receive slot a completion's context names. */
static int slot_of(const struct fab_cqe *c)
{
	return (int)(uintptr_t)c->context - 1;
}

static void rbufs_fini(struct w *w, struct rbufs *r)
{
	if (r->mr.prov)
		fab_mr_dereg(w->ep, &r->mr);
	free(r->mem);
}

static int finish(struct w *w, int rc)
{
	if (w->ep)
		fab_close(w->ep);
	w->ep = NULL;
	return rc;
}

static uint8_t pat(uint32_t step, size_t j)
{
	return (uint8_t)((j * 131u) ^ (j >> 8) ^ (j >> 17) ^ (step * 29u + 7u));
}

/* ------------------------------------------------------------------------------------------ */
/* ping-pong between ranks 0 and 1: inline, registered and large messages, polled and blocking. */

static int sc_pingpong(struct mp *m, void *arg)
{
	static const size_t sizes[] = { 0, 1, 8, 64, 200, 4096, 100000 };
	const int iters = 60;
	struct rbufs r;
	struct w wv, *w = &wv;
	struct fab_mr smr;
	uint8_t *sbuf;
	int rc, peer;
	double lat_sum = 0;
	int lat_n = 0;

	(void)arg;
	rc = setup(w, m, 0);
	if (rc)
		return rc;
	peer = 1 - w->rank;
	if (rbufs_init(w, &r, 16, 100000) || rbufs_post_all(w, &r))
		return finish(w, 1);
	sbuf = malloc(100000);
	CHECK(sbuf, "malloc");
	CHECK(fab_mr_reg(w->ep, sbuf, 100000, FAB_ACCESS_LOCAL, &smr) == 0, "mr_reg");
	CHECK(w->a->inject_size > 0, "inject_size %zu", w->a->inject_size);
	CHECK((w->a->caps & (FAB_CAP_WRITE_IMM | FAB_CAP_IMM_CONSUMES_RECV | FAB_CAP_RECV_SOURCE |
			     FAB_CAP_WAIT_FD | FAB_CAP_INJECT)) ==
		      (FAB_CAP_WRITE_IMM | FAB_CAP_IMM_CONSUMES_RECV | FAB_CAP_RECV_SOURCE |
		       FAB_CAP_WAIT_FD | FAB_CAP_INJECT),
	      "caps 0x%x", w->a->caps);
	CHECK(mp_barrier(m) == 0, "barrier"); /* both have receives posted */

	for (size_t si = 0; si < sizeof(sizes) / sizeof(sizes[0]); si++) {
		size_t len = sizes[si];

		for (int it = 0; it < iters; it++) {
			int blocking = it & 1, use_inject = (it % 3 == 2) && len <= w->a->inject_size;
			uint32_t step = (uint32_t)(si * 1000 + (size_t)it);
			struct fab_cqe c;
			int got_send = use_inject, got_recv = 0;
			double t0 = now_us();

			for (size_t j = 0; j < len; j++)
				sbuf[j] = pat(step + (uint32_t)w->rank, j);
			if (w->rank == 1) {
				/* Wait for the ping first. */
				CHECK(next_ok(w, &c, blocking) == 0, "ping");
				CHECK(c.op == FAB_OP_RECV && c.peer == 0 && c.len == len,
				      "ping: op %d peer %u len %zu (want %zu)", c.op, c.peer, c.len, len);
				for (size_t j = 0; j < len; j++)
					CHECK(r.mem[(size_t)slot_of(&c) * r.sz + j] == pat(step, j),
					      "ping byte %zu of %zu", j, len);
				CHECK(repost(w, &r, slot_of(&c)) == 0, "repost");
				got_recv = 1;
			}
			if (use_inject)
				rc = fab_inject(w->ep, (fab_peer_t)peer, sbuf, len);
			else
				rc = fab_send(w->ep, (fab_peer_t)peer, sbuf, len, smr.desc, sbuf);
			CHECK(rc == 0, "send %zu bytes: %d", len, rc);
			while (!got_send || !got_recv) {
				CHECK(next_ok(w, &c, blocking) == 0, "pong");
				if (c.op == FAB_OP_SEND) {
					CHECK(!got_send && c.context == sbuf && c.peer == (fab_peer_t)peer,
					      "send completion: context %p peer %u", c.context, c.peer);
					got_send = 1;
					continue;
				}
				CHECK(c.op == FAB_OP_RECV && !got_recv && c.peer == (fab_peer_t)peer && c.len == len,
				      "recv: op %d peer %u len %zu", c.op, c.peer, c.len);
				for (size_t j = 0; j < len; j++)
					CHECK(r.mem[(size_t)slot_of(&c) * r.sz + j] == pat(step + 1, j),
					      "pong byte %zu", j);
				CHECK(repost(w, &r, slot_of(&c)) == 0, "repost");
				got_recv = 1;
			}
			if (w->rank == 0 && len == 8 && !blocking && !use_inject) {
				lat_sum += now_us() - t0;
				lat_n++;
			}
		}
	}
	if (w->rank == 0 && lat_n)
		printf("pingpong: 8 B send round trip, busy-polled: %.1f us average over %d\n",
		       lat_sum / lat_n, lat_n);
	/* Latency figure: 8 B injections both ways, busy-polled; median and best of many. */
	{
		enum { N = 400 };
		static double rtt[N];
		struct fab_cqe c;

		CHECK(mp_barrier(m) == 0, "barrier");
		for (int it = 0; it < N; it++) {
			double t0 = now_us();

			if (w->rank == 0)
				CHECK(fab_inject(w->ep, 1, sbuf, 8) == 0, "inject");
			CHECK(next_ok(w, &c, 0) == 0 && c.op == FAB_OP_RECV && c.len == 8, "lat recv");
			CHECK(repost(w, &r, slot_of(&c)) == 0, "repost");
			if (w->rank == 1)
				CHECK(fab_inject(w->ep, 0, sbuf, 8) == 0, "inject");
			rtt[it] = now_us() - t0;
		}
		if (w->rank == 0) {
			for (int i = 1; i < N; i++)
				for (int j = i; j > 0 && rtt[j] < rtt[j - 1]; j--) {
					double x = rtt[j];

					rtt[j] = rtt[j - 1];
					rtt[j - 1] = x;
				}
			printf("pingpong: 8 B inject round trip, busy-polled, %d samples: best %.1f us, "
			       "median %.1f us, p90 %.1f us\n",
			       N, rtt[0], rtt[N / 2], rtt[N * 9 / 10]);
		}
	}
	CHECK(mp_barrier(m) == 0, "barrier");
	fab_mr_dereg(w->ep, &smr);
	free(sbuf);
	rbufs_fini(w, &r);
	return finish(w, 0);
}

/* ------------------------------------------------------------------------------------------ */
/* many-to-one: ranks 1..n-1 each send per_src messages to rank 0 (sends and injections). */

static int sc_many2one(struct mp *m, void *arg)
{
	const int per_src = 300;
	struct w wv, *w = &wv;
	int rc;

	(void)arg;
	rc = setup(w, m, 1024);
	if (rc)
		return rc;
	if (w->rank == 0) {
		struct rbufs r;
		int next[16] = { 0 }, total = (w->size - 1) * per_src;

		if (rbufs_init(w, &r, 1024, 64) || rbufs_post_all(w, &r))
			return finish(w, 1);
		CHECK(mp_barrier(m) == 0, "barrier");
		for (int got = 0; got < total; got++) {
			struct fab_cqe c;
			uint32_t src, seq;
			const uint8_t *b;

			CHECK(next_ok(w, &c, got & 1) == 0, "recv %d", got);
			b = r.mem + (size_t)slot_of(&c) * r.sz;
			memcpy(&src, b, 4);
			memcpy(&seq, b + 4, 4);
			CHECK(c.op == FAB_OP_RECV && c.len == 32, "op %d len %zu", c.op, c.len);
			CHECK(src >= 1 && src < (uint32_t)w->size && c.peer == src,
			      "message from %u reported as peer %u", src, c.peer);
			CHECK(seq == (uint32_t)next[src], "from %u: seq %u, expected %d (order)", src, seq,
			      next[src]);
			for (int j = 8; j < 32; j++)
				CHECK(b[j] == (uint8_t)(src + seq + (uint32_t)j), "payload byte %d", j);
			next[src]++;
			CHECK(repost(w, &r, slot_of(&c)) == 0, "repost");
		}
		CHECK(mp_barrier(m) == 0, "barrier");
		rbufs_fini(w, &r);
	} else {
		uint8_t (*msgs)[32] = calloc((size_t)per_src, 32);
		int outstanding = 0;

		CHECK(msgs, "calloc");
		CHECK(mp_barrier(m) == 0, "barrier");
		for (int s = 0; s < per_src; s++) {
			uint32_t src = (uint32_t)w->rank, seq = (uint32_t)s;
			struct fab_cqe c;

			memcpy(msgs[s], &src, 4);
			memcpy(msgs[s] + 4, &seq, 4);
			for (int j = 8; j < 32; j++)
				msgs[s][j] = (uint8_t)(src + seq + (uint32_t)j);
			for (;;) {
				rc = (s & 1) ? fab_inject(w->ep, 0, msgs[s], 32)
					     : fab_send(w->ep, 0, msgs[s], 32, NULL, msgs[s]);
				if (rc != RDAG_EAGAIN)
					break;
				/* Queue full: progress (injections retire without completions). */
				rc = fab_poll(w->ep, &c, 1);
				CHECK(rc >= 0, "poll: %d", rc);
				if (rc == 1) {
					CHECK(c.status == 0 && c.op == FAB_OP_SEND && c.peer == 0, "op %d status %d",
					      c.op, c.status);
					outstanding--;
				}
			}
			CHECK(rc == 0, "send %d: %d", s, rc);
			if (!(s & 1))
				outstanding++;
		}
		while (outstanding > 0) {
			struct fab_cqe c;

			CHECK(next_ok(w, &c, 1) == 0, "send completion");
			CHECK(c.op == FAB_OP_SEND && c.context != NULL, "op %d context %p", c.op, c.context);
			outstanding--;
		}
		CHECK(mp_barrier(m) == 0, "barrier");
		free(msgs);
	}
	return finish(w, 0);
}

/* ------------------------------------------------------------------------------------------ */
/* writes: 1 B .. 64 MiB into the peer's memory, every byte verified, three ways of telling it. */

#define WR_MAX (64u << 20)
static const size_t wr_sizes[] = { 1,     2,       3,     7,           8,        63,       64,
				   65,    255,     256,   257,         1000,     4095,     4096,
				   4097,  65536,   65537, (1u << 20) - 1, 1u << 20, 8u << 20, (8u << 20) + 1,
				   (16u << 20) + 3, WR_MAX };
#define WR_N (sizeof(wr_sizes) / sizeof(wr_sizes[0]))

enum { MSG_TARGET = 1, MSG_READY, MSG_CHECK, MSG_OK };
struct wmsg {
	uint32_t kind, step;
	uint64_t addr, rkey, len;
};

static size_t wr_off(uint32_t step)
{
	return (step * 13u) % 64u;
}

static int sc_writes(struct mp *m, void *arg)
{
	struct w wv, *w = &wv;
	struct rbufs r;
	struct fab_mr mr;
	uint8_t *mem;
	struct wmsg msg;
	struct fab_cqe c;
	int rc;
	double t_big = 0;

	(void)arg;
	rc = setup(w, m, 0);
	if (rc)
		return rc;
	if (rbufs_init(w, &r, 8, sizeof(struct wmsg)) || rbufs_post_all(w, &r))
		return finish(w, 1);
	mem = malloc(WR_MAX + 128);
	CHECK(mem, "malloc");
	CHECK(fab_mr_reg(w->ep, mem, WR_MAX + 128,
			 FAB_ACCESS_LOCAL | (w->rank == 1 ? FAB_ACCESS_REMOTE_WRITE : 0), &mr) == 0,
	      "mr_reg");
	CHECK(mr.remote_base == (uint64_t)(uintptr_t)mem, "remote_base is not the virtual address");
	CHECK(mp_barrier(m) == 0, "barrier");

	if (w->rank == 1) {
		int sends = 0;

		/* Target: advertise, then for each step arm guards, say READY, verify. */
		memset(mem, 0x5a, WR_MAX + 128);
		msg = (struct wmsg){ MSG_TARGET, 0, mr.remote_base, mr.rkey, WR_MAX + 128 };
		CHECK(fab_send(w->ep, 0, &msg, sizeof(msg), r.mr.desc, &msg) == 0, "send target");
		CHECK(next_ok(w, &c, 1) == 0 && c.op == FAB_OP_SEND, "target sent");
		for (uint32_t step = 0; step < WR_N; step++) {
			size_t len = wr_sizes[step], off = wr_off(step);
			uint32_t mode = step % 3;
			size_t bad = SIZE_MAX;

			mem[off + len] = 0xa5;
			if (off)
				mem[off - 1] = 0xa5;
			msg = (struct wmsg){ MSG_READY, step, 0, 0, 0 };
			CHECK(fab_send(w->ep, 0, &msg, sizeof(msg), NULL, &msg) == 0, "send ready");
			sends++;
			for (int seen = 0; seen < 1 || sends > 0;) {
				CHECK(next_ok(w, &c, step & 1) == 0, "step %u", step);
				if (c.op == FAB_OP_SEND) {
					sends--;
					continue;
				}
				CHECK(c.peer == 0, "peer %u", c.peer);
				if (mode == 2) {
					CHECK(c.op == FAB_OP_REMOTE_WRITE && c.has_imm &&
						      c.imm == (0xC0DE0000u | step),
					      "step %u: op %d imm 0x%x", step, c.op, c.imm);
					CHECK(c.len == len || (len > w->a->max_msg_size && c.len == 0),
					      "step %u: remote write len %zu of %zu", step, c.len, len);
				} else {
					struct wmsg in;

					memcpy(&in, r.mem + (size_t)slot_of(&c) * r.sz, sizeof(in));
					CHECK(c.op == FAB_OP_RECV && in.kind == MSG_CHECK && in.step == step,
					      "step %u: op %d kind %u step %u", step, c.op, in.kind, in.step);
				}
				CHECK(c.context != NULL, "consumed receive has no context");
				CHECK(repost(w, &r, slot_of(&c)) == 0, "repost");
				seen++;
			}
			for (size_t j = 0; j < len; j++)
				if (mem[off + j] != pat(step, j)) {
					bad = j;
					break;
				}
			CHECK(bad == SIZE_MAX, "step %u (%zu bytes at +%zu, mode %u): byte %zu is 0x%02x, want 0x%02x",
			      step, len, off, mode, bad, mem[off + bad], pat(step, bad));
			CHECK(mem[off + len] == 0xa5 && (!off || mem[off - 1] == 0xa5),
			      "step %u: write spilled outside [%zu, %zu)", step, off, off + len);
			msg = (struct wmsg){ MSG_OK, step, 0, 0, 0 };
			CHECK(fab_send(w->ep, 0, &msg, sizeof(msg), NULL, &msg) == 0, "send ok");
			sends++;
		}
		/* The last OK's completion. */
		CHECK(next_ok(w, &c, 1) == 0 && c.op == FAB_OP_SEND, "last ok sent");
	} else {
		struct wmsg tgt, in;

		CHECK(next_ok(w, &c, 1) == 0, "target");
		memcpy(&tgt, r.mem + (size_t)slot_of(&c) * r.sz, sizeof(tgt));
		CHECK(c.op == FAB_OP_RECV && tgt.kind == MSG_TARGET, "kind %u", tgt.kind);
		CHECK(repost(w, &r, slot_of(&c)) == 0, "repost");
		for (uint32_t step = 0; step < WR_N; step++) {
			size_t len = wr_sizes[step], off = wr_off(step);
			uint32_t mode = step % 3;
			int want = mode == 2 ? 3 : 4, seen = 0, ready = 0, wdone = 0;
			double t0 = 0;

			for (size_t j = 0; j < len; j++)
				mem[j] = pat(step, j);
			/* READY, our write, [our CHECK send,] OK */
			while (seen < want) {
				CHECK(next_ok(w, &c, step & 1) == 0, "step %u", step);
				seen++;
				if (c.op == FAB_OP_RECV) {
					memcpy(&in, r.mem + (size_t)slot_of(&c) * r.sz, sizeof(in));
					CHECK(repost(w, &r, slot_of(&c)) == 0, "repost");
					CHECK(in.step == step, "step %u got message for %u", step, in.step);
					if (in.kind == MSG_OK)
						continue;
					CHECK(in.kind == MSG_READY && !ready, "kind %u", in.kind);
					ready = 1;
					t0 = now_us();
					rc = fab_write(w->ep, 1, mem, len, mr.desc, tgt.addr + off, tgt.rkey,
						       mode == 2, 0xC0DE0000u | step, mem);
					CHECK(rc == 0, "write %zu: %d", len, rc);
					if (mode == 1) {
						/* Send right behind the write: ordered by FAB_CAP_ORDER_SAW. */
						msg = (struct wmsg){ MSG_CHECK, step, 0, 0, 0 };
						CHECK(fab_send(w->ep, 1, &msg, sizeof(msg), NULL, &msg) == 0,
						      "send check");
					}
					continue;
				}
				if (c.op == FAB_OP_WRITE) {
					CHECK(c.context == mem && c.peer == 1 && !wdone, "write completion");
					wdone = 1;
					if (len == WR_MAX)
						t_big = now_us() - t0;
					if (mode == 0) {
						msg = (struct wmsg){ MSG_CHECK, step, 0, 0, 0 };
						CHECK(fab_send(w->ep, 1, &msg, sizeof(msg), NULL, &msg) == 0,
						      "send check");
					}
					continue;
				}
				CHECK(c.op == FAB_OP_SEND, "op %d", c.op);
			}
		}
		printf("writes: %zu steps verified, 64 MiB write took %.0f ms (%.1f MB/s)\n", WR_N,
		       t_big / 1000, t_big > 0 ? WR_MAX / t_big : 0);
	}
	CHECK(mp_barrier(m) == 0, "barrier");
	CHECK(fab_mr_dereg(w->ep, &mr) == 0, "dereg");
	free(mem);
	rbufs_fini(w, &r);
	return finish(w, 0);
}

/* ------------------------------------------------------------------------------------------ */
/* mesh: every rank writes-with-imm and sends to every other; counts per source and order. */

static int sc_mesh(struct mp *m, void *arg)
{
	const int per = 40;
	struct w wv, *w = &wv;
	struct rbufs r;
	struct fab_mr mr;
	uint8_t *land, *src;
	uint64_t *addrs, *rkeys, mine[2];
	uint64_t all[2 * 16];
	int rc, expect, got = 0, sent_done = 0, to_send;
	int next_msg[16] = { 0 }, next_imm[16] = { 0 };

	(void)arg;
	rc = setup(w, m, 0);
	if (rc)
		return rc;
	if (rbufs_init(w, &r, 256, 16) || rbufs_post_all(w, &r))
		return finish(w, 1);
	/* One landing area per source rank, 4 KiB per message. */
	land = calloc((size_t)w->size * per, 4096);
	src = calloc(1, 4096);
	CHECK(land && src, "calloc");
	CHECK(fab_mr_reg(w->ep, land, (size_t)w->size * per * 4096,
			 FAB_ACCESS_LOCAL | FAB_ACCESS_REMOTE_WRITE, &mr) == 0,
	      "mr_reg");
	mine[0] = mr.remote_base;
	mine[1] = mr.rkey;
	CHECK(mp_allgather(m, mine, sizeof(mine), all) == 0, "allgather keys");
	addrs = malloc(sizeof(uint64_t) * 16);
	rkeys = malloc(sizeof(uint64_t) * 16);
	for (int i = 0; i < w->size; i++) {
		addrs[i] = all[2 * i];
		rkeys[i] = all[2 * i + 1];
	}
	{
		struct fab_mr smr;

		CHECK(fab_mr_reg(w->ep, src, 4096, FAB_ACCESS_LOCAL, &smr) == 0, "mr_reg src");
		expect = 2 * per * (w->size - 1);
		to_send = 2 * per * (w->size - 1);
		CHECK(mp_barrier(m) == 0, "barrier");
		for (int k = 0; k < per; k++) {
			for (int d = 0; d < w->size; d++) {
				uint32_t msg[4] = { (uint32_t)w->rank, (uint32_t)k, 0xfeed, 0 };

				if (d == w->rank)
					continue;
				memset(src, (int)(w->rank * 16 + k), 4096);
				/* At most one write and per sends outstanding: the queue never fills. */
				rc = fab_write(w->ep, (fab_peer_t)d, src, 4096, smr.desc,
					       addrs[d] + ((size_t)w->rank * per + (size_t)k) * 4096, rkeys[d], 1,
					       ((uint32_t)w->rank << 16) | (uint32_t)k, src);
				CHECK(rc == 0, "write: %d", rc);
				/* Wait for the write: src is reused. */
				for (;;) {
					struct fab_cqe c;

					CHECK(next_ok(w, &c, 1) == 0, "completion");
					if (c.op == FAB_OP_WRITE && c.context == src) {
						sent_done++;
						break;
					}
					if (c.op == FAB_OP_SEND) {
						sent_done++;
						continue;
					}
					/* An incoming message or write: account it. */
					if (c.op == FAB_OP_REMOTE_WRITE) {
						uint32_t s = c.imm >> 16, kk = c.imm & 0xffff;

						CHECK(c.peer == s && (int)kk == next_imm[s], "imm from %u: %u", s, kk);
						for (int j = 0; j < 4096; j++)
							CHECK(land[((size_t)s * per + kk) * 4096 + (size_t)j] ==
								      (uint8_t)(s * 16 + kk),
							      "landing byte");
						next_imm[s]++;
					} else {
						uint32_t in[4];

						memcpy(in, r.mem + (size_t)slot_of(&c) * r.sz, 16);
						CHECK(c.op == FAB_OP_RECV && c.peer == in[0] &&
							      (int)in[1] == next_msg[in[0]] && in[2] == 0xfeed,
						      "message from %u seq %u", in[0], in[1]);
						next_msg[in[0]]++;
					}
					CHECK(repost(w, &r, slot_of(&c)) == 0, "repost");
					got++;
				}
				rc = fab_send(w->ep, (fab_peer_t)d, msg, sizeof(msg), NULL, msg);
				CHECK(rc == 0, "send: %d", rc);
			}
		}
		while (got < expect || sent_done < to_send) {
			struct fab_cqe c;

			CHECK(next_ok(w, &c, 1) == 0, "completion (got %d of %d, sent %d of %d)", got, expect,
			      sent_done, to_send);
			if (c.op == FAB_OP_SEND || c.op == FAB_OP_WRITE) {
				sent_done++;
				continue;
			}
			if (c.op == FAB_OP_REMOTE_WRITE) {
				uint32_t s = c.imm >> 16, kk = c.imm & 0xffff;

				CHECK(c.peer == s && (int)kk == next_imm[s], "imm from %u: %u", s, kk);
				for (int j = 0; j < 4096; j++)
					CHECK(land[((size_t)s * per + kk) * 4096 + (size_t)j] == (uint8_t)(s * 16 + kk),
					      "landing byte");
				next_imm[s]++;
			} else {
				uint32_t in[4];

				memcpy(in, r.mem + (size_t)slot_of(&c) * r.sz, 16);
				CHECK(c.peer == in[0] && (int)in[1] == next_msg[in[0]], "message from %u seq %u",
				      in[0], in[1]);
				next_msg[in[0]]++;
			}
			CHECK(repost(w, &r, slot_of(&c)) == 0, "repost");
			got++;
		}
		for (int s = 0; s < w->size; s++)
			CHECK(s == w->rank || (next_msg[s] == per && next_imm[s] == per), "from %d: %d msgs %d writes",
			      s, next_msg[s], next_imm[s]);
		CHECK(mp_barrier(m) == 0, "barrier");
		fab_mr_dereg(w->ep, &smr);
	}
	fab_mr_dereg(w->ep, &mr);
	free(land);
	free(src);
	free(addrs);
	free(rkeys);
	rbufs_fini(w, &r);
	return finish(w, 0);
}

/* ------------------------------------------------------------------------------------------ */
/* errors: API misuse, a write with a bad key (0 -> 1), a message too long for the receive (0 -> 2). */

static int wait_peer_gone(struct w *w, fab_peer_t peer, char *how, size_t howlen)
{
	int64_t deadline = now_ms() + WAIT_MS;
	char b[8] = "x";

	/* Keep sending until the provider says the peer is gone (error or error completion). */
	while (now_ms() < deadline) {
		struct fab_cqe c;
		int rc = fab_send(w->ep, peer, b, sizeof(b), NULL, b);

		if (rc < 0) {
			CHECK(strstr(rdag_last_error(), "rank") != NULL, "message does not name the rank: %s",
			      rdag_last_error());
			snprintf(how, howlen, "send refused: %s", rdag_last_error());
			return 0;
		}
		CHECK(next_cqe(w, &c, 1) == 0, "completion");
		if (c.status < 0) {
			CHECK(c.peer == peer && c.context == b, "error completion names peer %u ctx %p", c.peer,
			      c.context);
			snprintf(how, howlen, "error completion: %s", c.errmsg);
			return 0;
		}
	}
	return failf(w, __LINE__, "peer %u never reported as gone", peer);
}

static int sc_errors(struct mp *m, void *arg)
{
	struct w wv, *w = &wv;
	struct fab_mr mr;
	uint8_t *mem = calloc(1, 4096), tiny[8];
	uint64_t key[2], keys[2 * 3];
	struct fab_cqe c;
	char big[1024];
	int rc;

	(void)arg;
	CHECK(mem, "calloc");
	rc = setup(w, m, 0);
	if (rc)
		return rc;
	CHECK(w->size == 3, "needs 3 ranks");
	CHECK(fab_mr_reg(w->ep, mem, 4096, FAB_ACCESS_LOCAL | FAB_ACCESS_REMOTE_WRITE, &mr) == 0, "mr_reg");

	/* API misuse: clear errors, nothing posted. */
	CHECK(fab_send(w->ep, (fab_peer_t)w->rank, "x", 1, NULL, NULL) == RDAG_EINVAL, "send to self");
	CHECK(fab_send(w->ep, 3, "x", 1, NULL, NULL) == RDAG_EINVAL, "send to rank 3 of 3");
	CHECK(fab_inject(w->ep, (fab_peer_t)((w->rank + 1) % 3), big, w->a->inject_size + 1) == RDAG_EINVAL,
	      "oversized inject");
	CHECK(fab_send(w->ep, (fab_peer_t)((w->rank + 1) % 3), big, sizeof(big), NULL, NULL) == RDAG_EINVAL,
	      "unregistered send above the inline size");
	CHECK(fab_post_recv(w->ep, tiny, sizeof(tiny), NULL, NULL) == RDAG_EINVAL, "unregistered receive");
	{
		struct fab_mr cm;

		/* Without a GPU: gpu_init's reason (no CUDA build / driver / device); with one, host
		   memory offered as device memory is refused. */
		int want = gpu_init() ? gpu_init() : RDAG_EINVAL;

		CHECK(fab_mr_reg_mem(w->ep, mem, 4096, FAB_ACCESS_LOCAL, FAB_MEM_CUDA, 0, &cm) == want,
		      "CUDA registration");
	}
	key[0] = mr.remote_base;
	key[1] = mr.rkey;
	CHECK(mp_allgather(m, key, sizeof(key), keys) == 0, "allgather");

	if (w->rank == 2) {
		/* One 8-byte receive: rank 0's 100-byte message cannot fit. */
		struct fab_mr tmr;

		CHECK(fab_mr_reg(w->ep, tiny, sizeof(tiny), FAB_ACCESS_LOCAL, &tmr) == 0, "mr_reg");
		CHECK(fab_post_recv(w->ep, tiny, sizeof(tiny), tmr.desc, tiny) == 0, "post");
		CHECK(mp_barrier(m) == 0, "barrier");
		CHECK(next_cqe(w, &c, 1) == 0, "recv");
		CHECK(c.op == FAB_OP_RECV && c.status < 0 && c.context == tiny && c.peer == 0,
		      "too-long message: op %d status %d ctx %p peer %u", c.op, c.status, c.context, c.peer);
		CHECK(strstr(c.errmsg, "rank 0") != NULL, "errmsg does not name rank 0: %s", c.errmsg);
		printf("errors: rank 2 receive: %s\n", c.errmsg);
		CHECK(mp_barrier(m) == 0, "barrier");
		fab_mr_dereg(w->ep, &tmr);
	} else if (w->rank == 1) {
		CHECK(mp_barrier(m) == 0, "barrier");
		/* Rank 0 wrote with a bad key: our side of that connection must die too. */
		char how[300];

		CHECK(wait_peer_gone(w, 0, how, sizeof(how)) == 0, "peer 0 gone");
		printf("errors: rank 1 sees: %s\n", how);
		CHECK(mp_barrier(m) == 0, "barrier");
	} else {
		struct fab_mr smr;
		int seen = 0;

		CHECK(fab_mr_reg(w->ep, big, sizeof(big), FAB_ACCESS_LOCAL, &smr) == 0, "mr_reg");
		CHECK(mp_barrier(m) == 0, "barrier");
		/* Bad key to rank 1, then a send queued behind it: two completions, both errors. */
		CHECK(fab_write(w->ep, 1, big, 512, smr.desc, keys[2], keys[3] ^ 0x5a5a00, 0, 0, mem) == 0, "write");
		CHECK(fab_send(w->ep, 1, big, 16, NULL, big + 1) == 0, "send behind it");
		/* Message too long for rank 2's receive. */
		CHECK(fab_send(w->ep, 2, big, 100, NULL, big + 2) == 0, "send to 2");
		for (int k = 0; k < 3; k++) {
			CHECK(next_cqe(w, &c, 1) == 0, "completion");
			CHECK(c.status < 0, "op %d ctx %p succeeded", c.op, c.context);
			if (c.context == mem) {
				CHECK(c.op == FAB_OP_WRITE && c.peer == 1 && c.status == RDAG_EACCES,
				      "bad-key write: op %d peer %u status %d", c.op, c.peer, c.status);
				CHECK(strstr(c.errmsg, "rank 1") && strstr(c.errmsg, "emote access"),
				      "errmsg: %s", c.errmsg);
				printf("errors: rank 0 write: %s\n", c.errmsg);
			} else if (c.context == big + 1) {
				CHECK(c.op == FAB_OP_SEND && c.peer == 1, "flushed send: op %d peer %u", c.op, c.peer);
				printf("errors: rank 0 queued send: %s\n", c.errmsg);
			} else {
				CHECK(c.context == big + 2 && c.op == FAB_OP_SEND && c.peer == 2,
				      "too-long send: op %d ctx %p peer %u", c.op, c.context, c.peer);
				printf("errors: rank 0 too-long send: %s\n", c.errmsg);
			}
			seen++;
		}
		CHECK(seen == 3, "seen %d", seen);
		/* Exactly one completion each: nothing more arrives. */
		CHECK(fab_poll(w->ep, &c, 1) == 0, "extra completion op %d ctx %p", c.op, c.context);
		/* A post to the failed connection is accepted and gets one error completion. */
		rc = fab_send(w->ep, 1, "x", 1, NULL, big + 3);
		CHECK(rc == 0, "send after failure: %d", rc);
		CHECK(next_cqe(w, &c, 1) == 0, "completion");
		CHECK(c.context == big + 3 && c.status < 0 && c.peer == 1 && strstr(c.errmsg, "rank 1"),
		      "send after failure: ctx %p status %d: %s", c.context, c.status, c.errmsg);
		printf("errors: rank 0 send after the failure: %d %s\n", c.status, c.errmsg);
		CHECK(fab_poll(w->ep, &c, 1) == 0, "extra completion op %d ctx %p", c.op, c.context);
		CHECK(mp_barrier(m) == 0, "barrier");
		fab_mr_dereg(w->ep, &smr);
	}
	fab_mr_dereg(w->ep, &mr);
	free(mem);
	return finish(w, 0);
}

/* ------------------------------------------------------------------------------------------ */
/* close with outstanding operations: posts everything, closes without polling, opens again. */

static int sc_close(struct mp *m, void *arg)
{
	struct w wv, *w = &wv;
	struct rbufs r;
	struct fab_mr mr;
	uint8_t *mem;
	uint64_t key[2], keys[4];
	int rc;

	(void)arg;
	rc = setup(w, m, 0);
	if (rc)
		return rc;
	mem = malloc(8u << 20);
	CHECK(mem, "malloc");
	memset(mem, 1, 8u << 20);
	if (rbufs_init(w, &r, 64, 256) || rbufs_post_all(w, &r))
		return finish(w, 1);
	CHECK(fab_mr_reg(w->ep, mem, 8u << 20, FAB_ACCESS_LOCAL | FAB_ACCESS_REMOTE_WRITE, &mr) == 0, "mr");
	key[0] = mr.remote_base;
	key[1] = mr.rkey;
	CHECK(mp_allgather(m, key, sizeof(key), keys) == 0, "allgather");
	{
		fab_peer_t peer = (fab_peer_t)(1 - w->rank);
		int posted = 0;

		for (int i = 0; i < 16; i++) {
			/* The peer may close first: then posts fail, which is fine here. */
			rc = fab_write(w->ep, peer, mem, 1u << 20, mr.desc, keys[2 * peer] + ((size_t)i << 18),
				       keys[2 * peer + 1], i & 1, (uint32_t)i, mem + i);
			if (rc != 0)
				break;
			posted++;
			if (fab_send(w->ep, peer, mem, 64, mr.desc, mem + 100 + i) != 0)
				break;
		}
		CHECK(posted > 0, "nothing posted");
	}
	/* Close with writes, sends and receives outstanding, memory still registered. */
	fab_close(w->ep);
	w->ep = NULL;
	/* Everything was freed: a new endpoint opens and probes fine in the same process. */
	{
		struct fab_open_opts o;
		struct fab_ep *ep2;

		opts_init(&o, w->rank, w->size);
		CHECK(fab_verbs_ops.open(&o, &ep2) == 0, "reopen");
		fab_close(ep2);
	}
	free(mem);
	free(r.mem);
	return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* connect timeouts: a peer that never calls connect is named, from both directions. */

static int sc_timeout(struct mp *m, void *arg)
{
	struct w wv, *w = &wv;
	struct fab_open_opts o;
	int rc;

	(void)arg;
	opts_init(&o, m->rank, m->size);
	for (int phase = 0; phase < 2; phase++) {
		/* Phase 0: only rank 0 (the connecting side) calls connect; phase 1: only rank 1. */
		int me_connects;

		rc = setup_opts(w, m, &o, 0);
		if (rc)
			return rc;
		me_connects = (phase == 0) == (w->rank == 0);
		if (me_connects) {
			uint8_t name[64], all[128];
			size_t len = sizeof(name);
			const void *addrs[2];
			size_t lens[2];
			int64_t t0 = now_ms();

			/* Addresses again (setup gathered them but did not keep them). */
			CHECK(fab_name(w->ep, name, &len) == 0, "name");
			CHECK(mp_allgather(m, name, len, all) == 0, "allgather");
			addrs[0] = all;
			addrs[1] = all + len;
			lens[0] = lens[1] = len;
			rc = fab_connect(w->ep, 2, addrs, lens, 3000);
			CHECK(rc == RDAG_ETIMEDOUT, "connect: %d (want timeout)", rc);
			CHECK(now_ms() - t0 < 30000, "timeout took %lld ms", (long long)(now_ms() - t0));
			CHECK(strstr(rdag_last_error(), phase == 0 ? "rank 1 (" : "rank 0 ("),
			      "message does not name the peer: %s", rdag_last_error());
			CHECK(strstr(rdag_last_error(), phase == 0 ? "we connect" : "no connection request"),
			      "message does not say what happened: %s", rdag_last_error());
			printf("timeout phase %d: %s\n", phase, rdag_last_error());
		} else {
			uint8_t name[64], all[128];
			size_t len = sizeof(name);

			CHECK(fab_name(w->ep, name, &len) == 0, "name");
			CHECK(mp_allgather(m, name, len, all) == 0, "allgather");
		}
		CHECK(mp_barrier(m) == 0, "barrier"); /* the silent side stays until the other is done */
		finish(w, 0);
	}
	return 0;
}

/* ------------------------------------------------------------------------------------------ */

struct scenario {
	const char *name;
	int nprocs;
	int (*fn)(struct mp *m, void *arg);
};

static const struct scenario scenarios[] = {
	{ "pingpong", 2, sc_pingpong }, { "many2one", 4, sc_many2one }, { "writes", 2, sc_writes },
	{ "mesh", 4, sc_mesh },         { "errors", 3, sc_errors },     { "close", 2, sc_close },
	{ "timeout", 2, sc_timeout },
};

int main(int argc, char **argv)
{
	const char *which = argc > 1 ? argv[1] : "all";
	int rc = 0, ran = 0, skipped = 0;

	setvbuf(stdout, NULL, _IOLBF, 0);
	for (size_t i = 0; i < sizeof(scenarios) / sizeof(scenarios[0]); i++) {
		const struct scenario *s = &scenarios[i];
		double t0;
		int r;

		if (strcmp(which, "all") != 0 && strcmp(which, s->name) != 0)
			continue;
		t0 = now_us();
		r = mp_run(s->nprocs, 600, s->fn, NULL);
		printf("verbs_mp_test %s (%d processes): %s (%.1f s)\n", s->name, s->nprocs,
		       r == 0 ? "PASS" : r == 77 ? "SKIP" : "FAIL", (now_us() - t0) / 1e6);
		ran++;
		if (r == 77)
			skipped++;
		else if (r)
			rc = 1;
	}
	if (!ran) {
		fprintf(stderr, "unknown scenario '%s'\n", which);
		return 2;
	}
	return rc ? 1 : (skipped == ran ? 77 : 0);
}
