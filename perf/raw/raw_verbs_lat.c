/* raw_verbs_lat: plain verbs send/recv ping-pong on an RC QP (rdma_cm); the verbs latency baseline. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "raw_verbs.h"

struct lat {
	const struct raw_opts *o;
	struct raw_verbs v;
	int fd;
	void *txbuf, *rxbuf;
	struct ibv_mr *txmr, *rxmr;
	uint64_t sends_posted, sends_retired, recvs_done;
	uint32_t last_len;
	uint32_t sig_every;
	struct raw_watch w;
};

/* Reaps completions; a signalled send retires every send posted before it. */
static int progress(struct lat *l)
{
	struct ibv_wc wc[16];
	int n = ibv_poll_cq(l->v.cq, 16, wc), i;

	if (n < 0) {
		fprintf(stderr, "%s: ibv_poll_cq failed (%d)\n", l->o->tool, n);
		return RAW_EXIT_FAIL;
	}
	for (i = 0; i < n; i++) {
		if (raw_verbs_wc_ok(&l->v, &wc[i]))
			return RAW_EXIT_FAIL;
		if (RAW_WR_KIND(wc[i].wr_id) == RAW_WR_RECV) {
			l->recvs_done++;
			l->last_len = wc[i].byte_len;
		} else {
			l->sends_retired = RAW_WR_SEQ(wc[i].wr_id) + 1;
		}
	}
	l->w.progress += (uint64_t)n;
	return raw_watch_tick(&l->w) ? RAW_EXIT_FAIL : 0;
}

static int post_send(struct lat *l, size_t size)
{
	struct ibv_sge sge = { .addr = (uintptr_t)l->txbuf, .length = (uint32_t)size, .lkey = l->txmr->lkey };
	struct ibv_send_wr wr, *bad;
	uint64_t seq = l->sends_posted;
	int rc;

	/* Room in the send queue: unsignalled sends free their slots when a later signalled one completes. */
	while (l->sends_posted - l->sends_retired >= l->v.send_depth)
		if (progress(l))
			return RAW_EXIT_FAIL;
	memset(&wr, 0, sizeof(wr));
	wr.wr_id = RAW_WR_ID(seq, RAW_WR_SEND);
	wr.sg_list = &sge;
	wr.num_sge = 1;
	wr.opcode = IBV_WR_SEND;
	if (seq % l->sig_every == l->sig_every - 1)
		wr.send_flags |= IBV_SEND_SIGNALED;
	if (size <= l->v.max_inline)
		wr.send_flags |= IBV_SEND_INLINE;
	rc = ibv_post_send(l->v.qp, &wr, &bad);
	if (rc)
		return raw_verbs_fail(&l->v, "ibv_post_send", rc);
	l->sends_posted++;
	return 0;
}

static int wait_recv(struct lat *l, uint64_t target)
{
	while (l->recvs_done < target)
		if (progress(l))
			return RAW_EXIT_FAIL;
	return 0;
}

static int check(struct lat *l, size_t size, uint64_t seed)
{
	if (!l->o->check)
		return 0;
	if (l->last_len != size || raw_check_pattern(l->rxbuf, size, seed)) {
		fprintf(stderr, "%s: message of %zu B (got %u B) does not hold the expected bytes\n",
			l->o->tool, size, l->last_len);
		return RAW_EXIT_FAIL;
	}
	return 0;
}

static int run_size(struct lat *l, size_t size, uint64_t *rtt)
{
	const struct raw_opts *o = l->o;
	long n = raw_iters_for(o, size), warm = raw_warmup_for(o, size), i;
	uint64_t seed_base = (uint64_t)size << 32;
	int rc;

	rc = raw_verbs_post_recv(&l->v, l->rxmr, l->rxbuf, size, RAW_WR_ID(0, RAW_WR_RECV));
	if (!rc && raw_oob_sync(l->fd))
		rc = RAW_EXIT_FAIL;
	raw_watch_start(&l->w, o, l->fd, "waiting for a message");
	for (i = 0; !rc && i < warm + n; i++) {
		uint64_t target = l->recvs_done + 1, t0;

		if (o->host) {
			if (o->check)
				raw_fill_pattern(l->txbuf, size, seed_base + (uint64_t)i * 2);
			t0 = raw_now_ns();
			rc = post_send(l, size);
			if (!rc)
				rc = wait_recv(l, target);
			if (!rc && i >= warm)
				rtt[i - warm] = raw_now_ns() - t0;
			if (!rc)
				rc = check(l, size, seed_base + (uint64_t)i * 2 + 1);
			if (!rc && i + 1 < warm + n)
				rc = raw_verbs_post_recv(&l->v, l->rxmr, l->rxbuf, size, RAW_WR_ID(0, RAW_WR_RECV));
		} else {
			rc = wait_recv(l, target);
			if (!rc)
				rc = check(l, size, seed_base + (uint64_t)i * 2);
			if (!rc && i + 1 < warm + n)
				rc = raw_verbs_post_recv(&l->v, l->rxmr, l->rxbuf, size, RAW_WR_ID(0, RAW_WR_RECV));
			if (!rc && o->check)
				raw_fill_pattern(l->txbuf, size, seed_base + (uint64_t)i * 2 + 1);
			if (!rc)
				rc = post_send(l, size);
		}
	}
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
	if (raw_pin_cpu(&o))
		return RAW_EXIT_FAIL;
	rc = raw_verbs_probe(&o);
	if (rc)
		return rc;
	max = raw_max_size(&o);
	rc = RAW_EXIT_FAIL;
	if (posix_memalign(&l.txbuf, 4096, max) || posix_memalign(&l.rxbuf, 4096, max) ||
	    !(rtt = calloc((size_t)o.iters, sizeof(*rtt)))) {
		fprintf(stderr, "%s: out of memory for %zu B buffers\n", o.tool, max);
		goto out;
	}
	memset(l.txbuf, 0xa5, max);
	memset(l.rxbuf, 0, max);

	l.fd = raw_oob_connect(&o);
	if (l.fd < 0)
		goto out;
	if (raw_oob_check_params(&o, l.fd))
		goto out;
	rc = raw_verbs_open(&l.v, &o, l.fd, 128, 4);
	if (rc)
		goto out;
	rc = RAW_EXIT_FAIL;
	if (max > l.v.max_msg) {
		fprintf(stderr, "%s: %zu B is above the port's max_msg_sz %u\n", o.tool, max, l.v.max_msg);
		goto out;
	}
	l.sig_every = l.v.send_depth / 2;
	l.txmr = raw_verbs_reg(&l.v, l.txbuf, max, IBV_ACCESS_LOCAL_WRITE);
	l.rxmr = raw_verbs_reg(&l.v, l.rxbuf, max, IBV_ACCESS_LOCAL_WRITE);
	if (!l.txmr || !l.rxmr || raw_verbs_establish(&l.v))
		goto out;

	raw_rule();
	printf(" raw_verbs_lat: verbs send/recv ping-pong on an RC QP, one-way latency = RTT/2\n");
	raw_rule();
	raw_verbs_print_setup(&l.v);
	raw_hdr("signalling", "one send in %u", l.sig_every);
	raw_hdr_common(&o);
	raw_hdr("timing", "per iteration, send posted .. reply received (receive re-posted outside)");
	raw_rule();
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
	if (l.txmr)
		ibv_dereg_mr(l.txmr);
	if (l.rxmr)
		ibv_dereg_mr(l.rxmr);
	raw_verbs_close(&l.v);
	if (l.fd >= 0)
		close(l.fd);
	free(rtt);
	free(l.txbuf);
	free(l.rxbuf);
	return rc;
}
