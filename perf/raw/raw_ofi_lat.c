/* raw_ofi_lat: plain libfabric send/recv ping-pong on an RDM endpoint; the latency baseline for rdag. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <rdma/fi_errno.h>

#include "raw_ofi.h"

struct lat {
	const struct raw_opts *o;
	struct raw_ofi r;
	int fd;
	void *txbuf, *rxbuf;
	struct raw_mr txmr, rxmr;
	struct raw_ctx txctx, rxctx;
	uint64_t sends_posted;
	struct raw_watch w;
};

/* Busy-polls until counter reaches target. 0, or RAW_EXIT_FAIL. */
static int wait_for(struct lat *l, const uint64_t *counter, uint64_t target)
{
	while (*counter < target) {
		int n = raw_ofi_progress(&l->r);

		if (n < 0)
			return RAW_EXIT_FAIL;
		l->w.progress += (uint64_t)n;
		if (raw_watch_tick(&l->w))
			return RAW_EXIT_FAIL;
	}
	return 0;
}

static int post_recv(struct lat *l, size_t size)
{
	ssize_t rc;

	while ((rc = fi_recv(l->r.ep, l->rxbuf, size, l->rxmr.desc, l->r.peer, &l->rxctx.fi)) == -FI_EAGAIN) {
		if (raw_ofi_progress(&l->r) < 0 || raw_watch_tick(&l->w))
			return RAW_EXIT_FAIL;
	}
	return rc ? raw_ofi_fail(&l->r, "fi_recv", rc) : 0;
}

static int post_send(struct lat *l, size_t size)
{
	ssize_t rc;

	for (;;) {
		if (size <= l->r.inject_size) {
			rc = fi_inject(l->r.ep, l->txbuf, size, l->r.peer);
		} else {
			/* The previous send's completion must be reaped before its context is reused. */
			if (wait_for(l, &l->r.sends_done, l->sends_posted))
				return RAW_EXIT_FAIL;
			rc = fi_send(l->r.ep, l->txbuf, size, l->txmr.desc, l->r.peer, &l->txctx.fi);
			if (rc == 0)
				l->sends_posted++;
		}
		if (rc != -FI_EAGAIN)
			break;
		if (raw_ofi_progress(&l->r) < 0 || raw_watch_tick(&l->w))
			return RAW_EXIT_FAIL;
	}
	return rc ? raw_ofi_fail(&l->r, size <= l->r.inject_size ? "fi_inject" : "fi_send", rc) : 0;
}

static int check(struct lat *l, size_t size, uint64_t seed)
{
	if (!l->o->check)
		return 0;
	if (l->r.last_len != size || raw_check_pattern(l->rxbuf, size, seed)) {
		fprintf(stderr, "%s: message of %zu B (got %zu B) does not hold the expected bytes\n",
			l->o->tool, size, l->r.last_len);
		return RAW_EXIT_FAIL;
	}
	return 0;
}

/* One size: warm-up then measured round trips. The client records RTTs; the server echoes. */
static int run_size(struct lat *l, size_t size, uint64_t *rtt)
{
	const struct raw_opts *o = l->o;
	long n = raw_iters_for(o, size), warm = raw_warmup_for(o, size), i;
	uint64_t seed_base = (uint64_t)size << 32;
	int rc;

	if (raw_oob_sync(l->fd))
		return RAW_EXIT_FAIL;
	raw_watch_start(&l->w, o, l->fd, "waiting for a message");
	rc = post_recv(l, size);
	for (i = 0; !rc && i < warm + n; i++) {
		uint64_t target = l->r.recvs_done + 1, t0 = 0;

		if (o->host) {
			if (o->check)
				raw_fill_pattern(l->txbuf, size, seed_base + (uint64_t)i * 2);
			t0 = raw_now_ns();
			rc = post_send(l, size);
			if (!rc)
				rc = wait_for(l, &l->r.recvs_done, target);
			if (!rc && i >= warm)
				rtt[i - warm] = raw_now_ns() - t0;
			if (!rc)
				rc = check(l, size, seed_base + (uint64_t)i * 2 + 1);
			if (!rc && i + 1 < warm + n)
				rc = post_recv(l, size);
		} else {
			rc = wait_for(l, &l->r.recvs_done, target);
			if (!rc)
				rc = check(l, size, seed_base + (uint64_t)i * 2);
			if (!rc && i + 1 < warm + n)
				rc = post_recv(l, size);
			if (!rc && o->check)
				raw_fill_pattern(l->txbuf, size, seed_base + (uint64_t)i * 2 + 1);
			if (!rc)
				rc = post_send(l, size);
		}
	}
	/* Every send must have completed before the buffers change size or go away. */
	if (!rc)
		rc = wait_for(l, &l->r.sends_done, l->sends_posted);
	if (!rc && o->host)
		raw_lat_table_row(size, rtt, n);
	return rc;
}

int main(int argc, char **argv)
{
	struct raw_opts o;
	struct lat l;
	uint64_t *rtt = NULL;
	size_t size, max;
	int rc;

	raw_parse_args(&o, RAW_LAT, argc, argv);
	memset(&l, 0, sizeof(l));
	l.o = &o;
	l.fd = -1;
	l.txctx.kind = RAW_CTX_SEND;
	l.rxctx.kind = RAW_CTX_RECV;
	if (raw_pin_cpu(&o))
		return RAW_EXIT_FAIL;
	rc = raw_ofi_open(&l.r, &o, FI_MSG, 0);
	if (rc)
		return rc;
	raw_ofi_own(&l.r, &l.txctx, 1);
	raw_ofi_own(&l.r, &l.rxctx, 1);

	max = raw_max_size(&o);
	rc = RAW_EXIT_FAIL;
	if (max > l.r.info->ep_attr->max_msg_size) {
		fprintf(stderr, "%s: %zu B is above the provider's max_msg_size %zu\n", o.tool, max,
			l.r.info->ep_attr->max_msg_size);
		goto out;
	}
	if (posix_memalign(&l.txbuf, 4096, max) || posix_memalign(&l.rxbuf, 4096, max)) {
		fprintf(stderr, "%s: out of memory for %zu B buffers\n", o.tool, max);
		goto out;
	}
	memset(l.txbuf, 0xa5, max);
	memset(l.rxbuf, 0, max);
	rtt = calloc((size_t)o.iters, sizeof(*rtt));
	if (!rtt) {
		fprintf(stderr, "%s: out of memory for %ld samples\n", o.tool, o.iters);
		goto out;
	}
	if (raw_ofi_mr_reg(&l.r, l.txbuf, max, FI_SEND, &l.txmr) ||
	    raw_ofi_mr_reg(&l.r, l.rxbuf, max, FI_RECV, &l.rxmr))
		goto out;

	raw_rule();
	printf(" raw_ofi_lat: libfabric fi_send/fi_recv ping-pong, one-way latency = RTT/2\n");
	raw_rule();
	raw_ofi_print_setup(&l.r);
	raw_hdr_common(&o);
	raw_hdr("timing", "per iteration, send posted .. reply received (receive re-posted outside)");
	raw_rule();

	l.fd = raw_oob_connect(&o);
	if (l.fd < 0 || raw_ofi_connect(&l.r, l.fd))
		goto out;
	if (raw_oob_check_params(&o, l.fd))
		goto out;
	if (o.host)
		raw_lat_table_head();
	rc = 0;
	for (size = raw_first_size(&o); !rc && size; size = raw_next_size(&o, size))
		rc = run_size(&l, size, rtt);
	if (!rc && raw_oob_sync(l.fd))
		rc = RAW_EXIT_FAIL;
	raw_rule();
	if (!o.host && !rc)
		printf(" server done\n");
out:
	raw_ofi_mr_close(&l.txmr);
	raw_ofi_mr_close(&l.rxmr);
	raw_ofi_close(&l.r);
	if (l.fd >= 0)
		close(l.fd);
	free(rtt);
	free(l.txbuf);
	free(l.rxbuf);
	return rc;
}
