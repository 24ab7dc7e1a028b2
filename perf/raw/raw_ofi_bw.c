/* raw_ofi_bw: plain libfabric RMA write bandwidth (fi_write, then fi_writedata as the final notification). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <rdma/fi_errno.h>
#include <rdma/fi_rma.h>

#include "raw_ofi.h"

/*
 * A round of count writes of one size: the client (initiator) keeps up to -t writes in flight,
 * waits for their completions, then posts the last write as fi_writedata carrying count as remote
 * CQ data. The server (target) busy-polls its CQ (which also drives progress on providers with
 * manual progress) until that notification arrives and answers with a small send, the ack. The
 * client's time runs from the first post to the ack, so it covers delivery, not just posting.
 */

struct target_info {
	uint64_t addr;
	uint64_t key;
	uint64_t len;
};

struct bw {
	const struct raw_opts *o;
	struct raw_ofi r;
	int fd;
	void *buf;           /* client: source; server: target */
	uint64_t *ctl;       /* ack / notification receive buffer (and ack source) */
	struct raw_mr bufmr, ctlmr;
	struct raw_ctx *wctx; /* one per write in flight */
	int nwctx, cursor;
	size_t chunk;         /* largest single write: the provider's max_msg_size */
	struct raw_ctx sctx, rctx;
	struct target_info peer;
	uint64_t writes_posted, sends_posted;
	struct raw_watch w;
};

static int progress(struct bw *b)
{
	int n = raw_ofi_progress(&b->r);

	if (n < 0)
		return RAW_EXIT_FAIL;
	b->w.progress += (uint64_t)n;
	return raw_watch_tick(&b->w) ? RAW_EXIT_FAIL : 0;
}

static int wait_for(struct bw *b, const uint64_t *counter, uint64_t target)
{
	while (*counter < target)
		if (progress(b))
			return RAW_EXIT_FAIL;
	return 0;
}

static int post_recv(struct bw *b)
{
	ssize_t rc;

	while ((rc = fi_recv(b->r.ep, b->ctl, sizeof(*b->ctl), b->ctlmr.desc, b->r.peer, &b->rctx.fi)) ==
	       -FI_EAGAIN)
		if (progress(b))
			return RAW_EXIT_FAIL;
	return rc ? raw_ofi_fail(&b->r, "fi_recv", rc) : 0;
}

static int send_ack(struct bw *b, uint64_t value)
{
	ssize_t rc;

	b->ctl[1] = value;
	for (;;) {
		if (sizeof(*b->ctl) <= b->r.inject_size) {
			rc = fi_inject(b->r.ep, &b->ctl[1], sizeof(*b->ctl), b->r.peer);
		} else {
			rc = fi_send(b->r.ep, &b->ctl[1], sizeof(*b->ctl), b->ctlmr.desc, b->r.peer, &b->sctx.fi);
			if (rc == 0)
				b->sends_posted++;
		}
		if (rc != -FI_EAGAIN)
			break;
		if (progress(b))
			return RAW_EXIT_FAIL;
	}
	if (rc)
		return raw_ofi_fail(&b->r, "fi_send (ack)", rc);
	return wait_for(b, &b->r.sends_done, b->sends_posted);
}

/*
 * Posts one write of len bytes at offset off (the final one with remote CQ data), retrying while
 * the provider is busy.
 */
static int post_write(struct bw *b, size_t off, size_t len, int last, uint64_t data)
{
	struct raw_ctx *c;
	ssize_t rc;

	/* A context whose write is still in flight is never reused (completions may come in any order). */
	while (b->wctx[b->cursor].busy) {
		b->cursor = (b->cursor + 1) % b->nwctx;
		if (b->cursor == 0 && progress(b))
			return RAW_EXIT_FAIL;
	}
	c = &b->wctx[b->cursor];
	b->cursor = (b->cursor + 1) % b->nwctx;
	for (;;) {
		if (last)
			rc = fi_writedata(b->r.ep, (char *)b->buf + off, len, b->bufmr.desc, data, b->r.peer,
					  b->peer.addr + off, b->peer.key, &c->fi);
		else
			rc = fi_write(b->r.ep, (char *)b->buf + off, len, b->bufmr.desc, b->r.peer,
				      b->peer.addr + off, b->peer.key, &c->fi);
		if (rc != -FI_EAGAIN)
			break;
		if (progress(b))
			return RAW_EXIT_FAIL;
	}
	if (rc)
		return raw_ofi_fail(&b->r, last ? "fi_writedata" : "fi_write", rc);
	c->busy = 1;
	b->writes_posted++;
	return 0;
}

/* Client side of one round; *elapsed gets first post .. ack received. */
static int client_round(struct bw *b, size_t size, long count, uint64_t *elapsed)
{
	long i;
	uint64_t t0, acks = b->r.recvs_done + 1;
	int rc;

	rc = post_recv(b);
	if (!rc && raw_oob_sync(b->fd))
		rc = RAW_EXIT_FAIL;
	raw_watch_start(&b->w, b->o, b->fd, "writing");
	t0 = raw_now_ns();
	/* A message larger than the provider's max_msg_size goes as several writes (chunks). */
	for (i = 0; !rc && i < count; i++) {
		size_t off;

		for (off = 0; !rc && off < size; off += b->chunk) {
			size_t len = size - off < b->chunk ? size - off : b->chunk;
			int last = i == count - 1 && off + len == size;

			/* Keep at most -t writes in flight. */
			while (!rc && b->writes_posted - b->r.writes_done >= (uint64_t)b->nwctx)
				rc = progress(b);
			/* The notification goes after every earlier write has completed, so it follows their data. */
			if (!rc && last)
				rc = wait_for(b, &b->r.writes_done, b->writes_posted);
			if (!rc)
				rc = post_write(b, off, len, last, (uint64_t)count);
		}
	}
	if (!rc)
		rc = wait_for(b, &b->r.recvs_done, acks);
	*elapsed = raw_now_ns() - t0;
	if (!rc)
		rc = wait_for(b, &b->r.writes_done, b->writes_posted);
	if (!rc && b->ctl[0] != (uint64_t)count) {
		fprintf(stderr, "%s: the server acknowledged %llu writes, %ld were sent\n", b->o->tool,
			(unsigned long long)b->ctl[0], count);
		rc = RAW_EXIT_FAIL;
	}
	return rc;
}

/* Server side of one round: wait for the notification, answer with the ack. */
static int server_round(struct bw *b, size_t size, long count, int last_round)
{
	uint64_t seen = b->r.remote_data + b->r.recvs_done;
	int rc = 0;

	/* With FI_RX_CQ_DATA the notification consumes a posted receive. */
	if (b->r.info->mode & FI_RX_CQ_DATA)
		rc = post_recv(b);
	if (!rc && raw_oob_sync(b->fd))
		rc = RAW_EXIT_FAIL;
	raw_watch_start(&b->w, b->o, b->fd, "waiting for the writes' notification");
	while (!rc && b->r.remote_data + b->r.recvs_done == seen) {
		if (b->o->events) {
			/* -e: sleep in the provider (which still makes progress) rather than spin. */
			int n = raw_ofi_progress_wait(&b->r, 1000);

			if (n < 0)
				rc = RAW_EXIT_FAIL;
			else
				b->w.progress += (uint64_t)n;
			if (!rc && raw_watch_check(&b->w))
				rc = RAW_EXIT_FAIL;
		} else {
			rc = progress(b);
		}
	}
	if (!rc && b->r.last_data != (uint64_t)count) {
		fprintf(stderr, "%s: notification says %llu writes, %ld expected\n", b->o->tool,
			(unsigned long long)b->r.last_data, count);
		rc = RAW_EXIT_FAIL;
	}
	if (!rc && last_round && b->o->check && raw_check_pattern(b->buf, size, size)) {
		fprintf(stderr, "%s: the written %zu B do not hold the expected bytes\n", b->o->tool, size);
		rc = RAW_EXIT_FAIL;
	}
	if (!rc)
		rc = send_ack(b, b->r.last_data);
	return rc;
}

static int run_size(struct bw *b, size_t size)
{
	const struct raw_opts *o = b->o;
	long n = raw_iters_for(o, size), warm = raw_warmup_for(o, size);
	uint64_t elapsed = 0;
	int rc;

	if (o->host) {
		if (o->check)
			raw_fill_pattern(b->buf, size, size);
		rc = client_round(b, size, warm, &elapsed);
		if (!rc)
			rc = client_round(b, size, n, &elapsed);
		if (!rc)
			raw_bw_table_row(size, n, elapsed);
	} else {
		rc = server_round(b, size, warm, 0);
		if (!rc)
			rc = server_round(b, size, n, 1);
	}
	return rc;
}

int main(int argc, char **argv)
{
	struct raw_opts o;
	struct bw b;
	struct target_info mine;
	size_t size, max;
	int rc, i;

	raw_parse_args(&o, RAW_BW, argc, argv);
	memset(&b, 0, sizeof(b));
	b.o = &o;
	b.fd = -1;
	b.sctx.kind = RAW_CTX_SEND;
	b.rctx.kind = RAW_CTX_RECV;
	if (raw_pin_cpu(&o))
		return RAW_EXIT_FAIL;
	rc = raw_ofi_open(&b.r, &o, FI_MSG | FI_RMA, 1);
	if (rc)
		return rc;

	max = raw_max_size(&o);
	rc = RAW_EXIT_FAIL;
	b.chunk = b.r.info->ep_attr->max_msg_size;
	b.nwctx = o.tx_depth;
	if ((size_t)b.nwctx > b.r.info->tx_attr->size && b.r.info->tx_attr->size > 0)
		b.nwctx = (int)b.r.info->tx_attr->size;
	b.wctx = calloc((size_t)b.nwctx, sizeof(*b.wctx));
	if (posix_memalign(&b.buf, 4096, max) || posix_memalign((void **)&b.ctl, 64, 4096) || !b.wctx) {
		fprintf(stderr, "%s: out of memory for a %zu B buffer\n", o.tool, max);
		goto out;
	}
	for (i = 0; i < b.nwctx; i++)
		b.wctx[i].kind = RAW_CTX_WRITE;
	raw_ofi_own(&b.r, b.wctx, (size_t)b.nwctx);
	raw_ofi_own(&b.r, &b.sctx, 1);
	raw_ofi_own(&b.r, &b.rctx, 1);
	memset(b.buf, o.host ? 0xa5 : 0, max);
	memset(b.ctl, 0, 4096);
	if (raw_ofi_mr_reg(&b.r, b.buf, max, o.host ? FI_WRITE : FI_REMOTE_WRITE, &b.bufmr) ||
	    raw_ofi_mr_reg(&b.r, b.ctl, 4096, FI_SEND | FI_RECV, &b.ctlmr))
		goto out;

	raw_rule();
	printf(" raw_ofi_bw: libfabric fi_write bandwidth, one direction, last write fi_writedata\n");
	raw_rule();
	raw_ofi_print_setup(&b.r);
	raw_hdr_common(&o);
	raw_hdr("writes in flight", "%d", b.nwctx);
	if (b.chunk < max)
		raw_hdr("large messages", "sent as writes of at most %zu B (max_msg_size)", b.chunk);
	raw_hdr("timing", "first write posted .. target's ack of the final notification");
	raw_hdr("target", "%s", o.events ? "sleeps in fi_cq_sread until the notification (-e)"
					 : "busy-polls its CQ until the notification");
	raw_hdr("units", "MB = 2^20 bytes (as perftest), Mpps = 10^6 writes/s");
	raw_rule();

	b.fd = raw_oob_connect(&o);
	if (b.fd < 0 || raw_ofi_connect(&b.r, b.fd))
		goto out;
	mine.addr = b.bufmr.remote_addr;
	mine.key = b.bufmr.key;
	mine.len = max;
	if (raw_oob_xchg(b.fd, &mine, &b.peer, sizeof(mine)))
		goto out;
	if (o.host && b.peer.len < max) {
		fprintf(stderr, "%s: the server's buffer is %llu B, %zu needed (give both the same -s/-a)\n",
			o.tool, (unsigned long long)b.peer.len, max);
		goto out;
	}
	if (raw_oob_check_params(&o, b.fd))
		goto out;
	if (o.host)
		raw_bw_table_head();
	rc = 0;
	for (size = raw_first_size(&o); !rc && size; size = raw_next_size(&o, size))
		rc = run_size(&b, size);
	if (!rc && raw_oob_sync(b.fd))
		rc = RAW_EXIT_FAIL;
	raw_rule();
	if (!o.host && !rc)
		printf(" server done\n");
out:
	raw_ofi_mr_close(&b.bufmr);
	raw_ofi_mr_close(&b.ctlmr);
	raw_ofi_close(&b.r);
	if (b.fd >= 0)
		close(b.fd);
	free(b.wctx);
	free(b.buf);
	free(b.ctl);
	return rc;
}
