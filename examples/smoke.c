/* rdag_smoke: N processes on the auto-selected fabric ping-pong messages and an RDMA write, verified. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <rdag/rdag.h>

#include "fabric/fabric.h"
#include "harness.h" /* tests/fabric/harness.h: fork, exchange addresses, watchdog */

/*
 * Usage: rdag_smoke [-n procs] [-i iterations]
 * Forks the workers (2 by default), each opens the endpoint RDAG_FABRIC=auto picks (or what
 * the environment asks for: docs/env.md), they exchange addresses, rank 0 ping-pongs 64-byte
 * messages with every other rank and writes 1 MiB into each one's registered buffer (with
 * immediate data, so the target knows it landed). Every byte is checked. Exit 0 on success.
 */

#define NRECV 8
#define MSG 64
#define WRITE_LEN (1u << 20)

struct worker {
	struct hx *h;
	int rank, n, iters;
	struct fab_ep *ep;
	uint8_t *rbuf, *sbuf, *tgt, *src;
	struct fab_mr rmr, smr, tmr, srcmr;
	int rctx[NRECV];
};

struct remote {
	uint64_t base, rkey;
};

static double now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec * 1e-3;
}

static uint8_t pattern(uint32_t seed, size_t k)
{
	return (uint8_t)((k * 131u + seed * 7u) ^ (k >> 8));
}

static void progress(void *arg)
{
	(void)arg; /* completions are reaped by wait_for(); nothing to keep here */
}

/* Polls until the completion of ctx (or, with ctx NULL, the next receive or remote write). */
static int wait_for(struct worker *w, const void *ctx, struct fab_cqe *out)
{
	double deadline = now_us() + 30e6;

	while (now_us() < deadline) {
		int n = fab_poll(w->ep, out, 1);

		if (n < 0) {
			fprintf(stderr, "rank %d: poll: %s\n", w->rank, rdag_last_error());
			return -1;
		}
		if (n == 0)
			continue;
		if (out->status) {
			fprintf(stderr, "rank %d: operation failed: %s\n", w->rank, out->errmsg);
			return -1;
		}
		if (ctx ? out->context == ctx
			: (out->op == FAB_OP_RECV || out->op == FAB_OP_REMOTE_WRITE))
			return 0;
		if (out->op == FAB_OP_RECV || out->op == FAB_OP_REMOTE_WRITE) {
			fprintf(stderr, "rank %d: unexpected arrival\n", w->rank);
			return -1;
		}
	}
	fprintf(stderr, "rank %d: no completion within 30 s\n", w->rank);
	return -1;
}

/* Which receive buffer a completion's context names, or -1 (a write that consumed none). */
static int slot_of(const struct worker *w, const void *ctx)
{
	for (int i = 0; i < NRECV; i++) {
		if (ctx == &w->rctx[i])
			return i;
	}
	return -1;
}

static int repost(struct worker *w, const struct fab_cqe *c)
{
	int i = slot_of(w, c->context);

	if (i < 0)
		return 0;
	return fab_post_recv(w->ep, w->rbuf + (size_t)i * MSG, MSG, w->rmr.desc, &w->rctx[i]);
}

static int send_msg(struct worker *w, int peer, uint32_t seed)
{
	struct fab_cqe c;
	int ctx, rc;

	for (size_t k = 0; k < MSG; k++)
		w->sbuf[k] = pattern(seed, k);
	while ((rc = fab_send(w->ep, (fab_peer_t)peer, w->sbuf, MSG, w->smr.desc, &ctx)) ==
	       RDAG_EAGAIN)
		fab_poll(w->ep, &c, 0); /* the connection is being made: progress and retry */
	if (rc) {
		fprintf(stderr, "rank %d: send: %s\n", w->rank, rdag_last_error());
		return -1;
	}
	return wait_for(w, &ctx, &c);
}

static int recv_msg(struct worker *w, uint32_t seed)
{
	struct fab_cqe c;
	const uint8_t *p;

	if (wait_for(w, NULL, &c))
		return -1;
	if (c.op != FAB_OP_RECV || c.len != MSG || slot_of(w, c.context) < 0) {
		fprintf(stderr, "rank %d: expected a %d-byte message\n", w->rank, MSG);
		return -1;
	}
	p = w->rbuf + (size_t)slot_of(w, c.context) * MSG;
	for (size_t k = 0; k < MSG; k++) {
		if (p[k] != pattern(seed, k)) {
			fprintf(stderr, "rank %d: message byte %zu differs\n", w->rank, k);
			return -1;
		}
	}
	return repost(w, &c);
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static int run(struct worker *w)
{
	struct remote mine, *all;
	double *rtt;
	int rc = -1;

	all = calloc((size_t)w->n, sizeof(*all));
	rtt = calloc((size_t)w->iters, sizeof(*rtt));
	w->rbuf = calloc(NRECV, MSG);
	w->sbuf = calloc(1, MSG);
	w->tgt = calloc(1, WRITE_LEN);
	w->src = malloc(WRITE_LEN);
	if (!all || !rtt || !w->rbuf || !w->sbuf || !w->tgt || !w->src)
		goto out;
	if (fab_mr_reg(w->ep, w->rbuf, NRECV * MSG, FAB_ACCESS_LOCAL, &w->rmr) ||
	    fab_mr_reg(w->ep, w->sbuf, MSG, FAB_ACCESS_LOCAL, &w->smr) ||
	    fab_mr_reg(w->ep, w->tgt, WRITE_LEN, FAB_ACCESS_REMOTE_WRITE, &w->tmr) ||
	    fab_mr_reg(w->ep, w->src, WRITE_LEN, FAB_ACCESS_LOCAL, &w->srcmr)) {
		fprintf(stderr, "rank %d: registration: %s\n", w->rank, rdag_last_error());
		goto out;
	}
	for (int i = 0; i < NRECV; i++) {
		if (fab_post_recv(w->ep, w->rbuf + (size_t)i * MSG, MSG, w->rmr.desc, &w->rctx[i]))
			goto out;
	}
	mine = (struct remote){.base = w->tmr.remote_base, .rkey = w->tmr.rkey};
	if (hx_allgather_progress(w->h, &mine, sizeof(mine), all, progress, NULL))
		goto out;

	for (int peer = 1; peer < w->n; peer++) {
		/* One pair at a time; the others wait in the barrier without spinning on the CPU. */
		if (hx_barrier_progress(w->h, progress, NULL))
			goto out;
		if (w->rank == 0) {
			struct fab_cqe c;
			int ctx, r;

			for (int it = 0; it < w->iters; it++) {
				double t0 = now_us();

				if (send_msg(w, peer, (uint32_t)(peer * 100000 + it)) ||
				    recv_msg(w, (uint32_t)(peer * 100000 + it) ^ 0xffu))
					goto out;
				rtt[it] = now_us() - t0;
			}
			qsort(rtt, (size_t)w->iters, sizeof(*rtt), cmp_double);
			for (size_t k = 0; k < WRITE_LEN; k++)
				w->src[k] = pattern((uint32_t)peer, k);
			while ((r = fab_write(w->ep, (fab_peer_t)peer, w->src, WRITE_LEN, w->srcmr.desc,
					      all[peer].base, all[peer].rkey, 1, (uint32_t)peer,
					      &ctx)) == RDAG_EAGAIN)
				fab_poll(w->ep, &c, 0);
			if (r || wait_for(w, &ctx, &c) || recv_msg(w, 0xC0FFEEu + (uint32_t)peer)) {
				fprintf(stderr, "rank 0: RDMA write to rank %d failed: %s\n", peer,
					rdag_last_error());
				goto out;
			}
			printf("rank 0 <-> rank %d: %d-byte round trip median %.1f us, best %.1f us "
			       "(%d round trips); 1 MiB RDMA write verified by rank %d\n",
			       peer, MSG, rtt[w->iters / 2], rtt[0], w->iters, peer);
		} else if (w->rank == peer) {
			struct fab_cqe c;

			for (int it = 0; it < w->iters; it++) {
				if (recv_msg(w, (uint32_t)(peer * 100000 + it)) ||
				    send_msg(w, 0, (uint32_t)(peer * 100000 + it) ^ 0xffu))
					goto out;
			}
			/* The write-with-imm tells us its bytes are here. */
			if (wait_for(w, NULL, &c) || c.op != FAB_OP_REMOTE_WRITE || c.imm != (uint32_t)peer ||
			    repost(w, &c)) {
				fprintf(stderr, "rank %d: expected the write's immediate data\n", w->rank);
				goto out;
			}
			for (size_t k = 0; k < WRITE_LEN; k++) {
				if (w->tgt[k] != pattern((uint32_t)peer, k)) {
					fprintf(stderr, "rank %d: written byte %zu differs\n", w->rank, k);
					goto out;
				}
			}
			if (send_msg(w, 0, 0xC0FFEEu + (uint32_t)peer))
				goto out;
		}
	}
	if (hx_barrier_progress(w->h, progress, NULL))
		goto out;
	rc = 0;
out:
	if (w->rmr.prov)
		fab_mr_dereg(w->ep, &w->rmr);
	if (w->smr.prov)
		fab_mr_dereg(w->ep, &w->smr);
	if (w->tmr.prov)
		fab_mr_dereg(w->ep, &w->tmr);
	if (w->srcmr.prov)
		fab_mr_dereg(w->ep, &w->srcmr);
	free(all);
	free(rtt);
	free(w->rbuf);
	free(w->sbuf);
	free(w->tgt);
	free(w->src);
	return rc;
}

struct addr {
	int32_t status;
	uint32_t len;
	uint8_t bytes[256];
};

static int worker_main(struct hx *h, void *arg)
{
	struct worker w = {.h = h, .rank = hx_rank(h), .n = hx_size(h), .iters = *(int *)arg};
	struct fab_open_opts opts;
	struct addr mine = {0}, *all = calloc((size_t)w.n, sizeof(*all));
	const void **addrs = calloc((size_t)w.n, sizeof(*addrs));
	size_t *lens = calloc((size_t)w.n, sizeof(*lens));
	int rc = 1;

	if (!all || !addrs || !lens)
		goto out;
	fab_opts_from_env(&opts);
	opts.world_size = (uint32_t)w.n;
	opts.rank = (uint32_t)w.rank;
	opts.local_only = 1; /* every worker is a child of this process */
	if (w.rank == 0) {
		const struct fab_ops *ops;
		char why[700];

		if (fab_select(&opts, &ops, why, sizeof(why)) == 0)
			printf("fabric: %s\n", why);
	}
	mine.status = fab_open(&opts, &w.ep);
	if (mine.status) {
		fprintf(stderr, "rank %d: no fabric: %s\n", w.rank, rdag_last_error());
	} else {
		size_t len = sizeof(mine.bytes);

		mine.status = fab_name(w.ep, mine.bytes, &len);
		mine.len = (uint32_t)len;
	}
	if (hx_allgather(h, &mine, sizeof(mine), all))
		goto out;
	for (int i = 0; i < w.n; i++) {
		if (all[i].status)
			goto out;
		addrs[i] = all[i].bytes;
		lens[i] = all[i].len;
	}
	if (fab_connect(w.ep, (uint32_t)w.n, addrs, lens, 30000)) {
		fprintf(stderr, "rank %d: connect: %s\n", w.rank, rdag_last_error());
		goto out;
	}
	rc = run(&w) ? 1 : 0;
out:
	if (w.ep)
		fab_close(w.ep);
	free(all);
	free(addrs);
	free(lens);
	return rc;
}

int main(int argc, char **argv)
{
	int n = 2, iters = 1000, opt, rc;

	while ((opt = getopt(argc, argv, "n:i:h")) != -1) {
		switch (opt) {
		case 'n': n = atoi(optarg); break;
		case 'i': iters = atoi(optarg); break;
		default:
			fprintf(stderr, "usage: rdag_smoke [-n processes (2..64)] [-i round trips]\n");
			return opt == 'h' ? 0 : 2;
		}
	}
	if (n < 2 || n > 64 || iters < 1) {
		fprintf(stderr, "usage: rdag_smoke [-n processes (2..64)] [-i round trips]\n");
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("rdag %s smoke test: %d processes\n", rdag_version(), n);
	/*
	 * Nothing touches the fabric before the fork: RDMA device contexts (ibverbs) opened in a
	 * parent do not work in its children. Rank 0 reports the choice.
	 */
	rc = hx_run(n, 120, worker_main, &iters);
	printf("rdag_smoke: %s\n", rc == 0 ? "OK" : "FAILED");
	return rc == 0 ? 0 : 1;
}
