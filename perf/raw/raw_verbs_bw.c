/* raw_verbs_bw: plain verbs RDMA write bandwidth on an RC QP (rdma_cm); the last write carries immediate data. */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "raw_verbs.h"

/*
 * A round of count RDMA writes of one size: the client keeps up to -t writes in flight,
 * requesting a completion for one in -Q; the last one is RDMA WRITE WITH IMM carrying count, and
 * RC delivers it after every earlier write of the QP. The server busy-polls for the receive that
 * immediate consumes and answers with a small send, the ack. The client's time runs from the
 * first post to the ack. The target does not busy-poll meanwhile (see sleep_for_recv).
 */

struct target_info {
	uint64_t addr;
	uint64_t len;
	uint32_t rkey;
	uint32_t pad;
};

struct bw {
	const struct raw_opts *o;
	struct raw_verbs v;
	int fd;
	void *buf;          /* client: source; server: target */
	uint64_t *ctl;      /* [0]: ack received (client); [1]: ack sent (server) */
	struct ibv_mr *bufmr, *ctlmr;
	struct target_info peer;
	uint64_t writes_posted, writes_retired, sends_posted, sends_retired, recvs_done;
	uint32_t last_imm;
	int last_has_imm;
	struct raw_watch w;
};

static int progress(struct bw *b)
{
	struct ibv_wc wc[16];
	int n = ibv_poll_cq(b->v.cq, 16, wc), i;

	if (n < 0) {
		fprintf(stderr, "%s: ibv_poll_cq failed (%d)\n", b->o->tool, n);
		return RAW_EXIT_FAIL;
	}
	for (i = 0; i < n; i++) {
		if (raw_verbs_wc_ok(&b->v, &wc[i]))
			return RAW_EXIT_FAIL;
		switch (RAW_WR_KIND(wc[i].wr_id)) {
		case RAW_WR_RECV:
			b->recvs_done++;
			b->last_has_imm = !!(wc[i].wc_flags & IBV_WC_WITH_IMM);
			b->last_imm = ntohl(wc[i].imm_data);
			break;
		case RAW_WR_WRITE:
			b->writes_retired = RAW_WR_SEQ(wc[i].wr_id) + 1;
			break;
		case RAW_WR_SEND:
			b->sends_retired = RAW_WR_SEQ(wc[i].wr_id) + 1;
			break;
		}
	}
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

/* Posts one RDMA write of len bytes at offset off (the last one of a round with immediate data). */
static int post_write(struct bw *b, size_t off, size_t len, int last, uint32_t imm)
{
	struct ibv_sge sge = { .addr = (uintptr_t)b->buf + off, .length = (uint32_t)len, .lkey = b->bufmr->lkey };
	struct ibv_send_wr wr, *bad;
	uint64_t seq = b->writes_posted;
	int rc;

	while (b->writes_posted - b->writes_retired >= (uint64_t)b->o->tx_depth)
		if (progress(b))
			return RAW_EXIT_FAIL;
	memset(&wr, 0, sizeof(wr));
	wr.wr_id = RAW_WR_ID(seq, RAW_WR_WRITE);
	wr.sg_list = &sge;
	wr.num_sge = 1;
	wr.opcode = last ? IBV_WR_RDMA_WRITE_WITH_IMM : IBV_WR_RDMA_WRITE;
	wr.imm_data = htonl(imm);
	if (last || seq % (uint64_t)b->o->cq_mod == (uint64_t)b->o->cq_mod - 1)
		wr.send_flags |= IBV_SEND_SIGNALED;
	if (len <= b->v.max_inline)
		wr.send_flags |= IBV_SEND_INLINE;
	wr.wr.rdma.remote_addr = b->peer.addr + off;
	wr.wr.rdma.rkey = b->peer.rkey;
	rc = ibv_post_send(b->v.qp, &wr, &bad);
	if (rc)
		return raw_verbs_fail(&b->v, "ibv_post_send (RDMA write)", rc);
	b->writes_posted++;
	return 0;
}

static int client_round(struct bw *b, size_t size, long count, uint64_t *elapsed)
{
	uint64_t t0, acks = b->recvs_done + 1;
	long i;
	int rc;

	rc = raw_verbs_post_recv(&b->v, b->ctlmr, b->ctl, sizeof(*b->ctl), RAW_WR_ID(0, RAW_WR_RECV));
	if (!rc && raw_oob_sync(b->fd))
		rc = RAW_EXIT_FAIL;
	raw_watch_start(&b->w, b->o, b->fd, "writing");
	t0 = raw_now_ns();
	for (i = 0; !rc && i < count; i++) {
		size_t off, len;

		/* A message larger than the port's max_msg_sz goes as several writes. */
		for (off = 0; !rc && off < size; off += len) {
			len = size - off < b->v.max_msg ? size - off : b->v.max_msg;
			rc = post_write(b, off, len, i == count - 1 && off + len == size, (uint32_t)count);
		}
	}
	if (!rc)
		rc = wait_for(b, &b->recvs_done, acks);
	*elapsed = raw_now_ns() - t0;
	if (!rc)
		rc = wait_for(b, &b->writes_retired, b->writes_posted);
	if (!rc && b->ctl[0] != (uint64_t)count) {
		fprintf(stderr, "%s: the server acknowledged %llu writes, %ld were sent\n", b->o->tool,
			(unsigned long long)b->ctl[0], count);
		rc = RAW_EXIT_FAIL;
	}
	return rc;
}

static int send_ack(struct bw *b, uint64_t value)
{
	struct ibv_sge sge = { .addr = (uintptr_t)&b->ctl[1], .length = sizeof(*b->ctl), .lkey = b->ctlmr->lkey };
	struct ibv_send_wr wr, *bad;
	int rc;

	b->ctl[1] = value;
	memset(&wr, 0, sizeof(wr));
	wr.wr_id = RAW_WR_ID(b->sends_posted, RAW_WR_SEND);
	wr.sg_list = &sge;
	wr.num_sge = 1;
	wr.opcode = IBV_WR_SEND;
	wr.send_flags = IBV_SEND_SIGNALED | (sizeof(*b->ctl) <= b->v.max_inline ? IBV_SEND_INLINE : 0);
	rc = ibv_post_send(b->v.qp, &wr, &bad);
	if (rc)
		return raw_verbs_fail(&b->v, "ibv_post_send (ack)", rc);
	b->sends_posted++;
	return wait_for(b, &b->sends_retired, b->sends_posted);
}

/*
 * The target sleeps on the CQ's completion channel until the notification arrives, as
 * ib_write_bw's target sits idle: RDMA writes need nothing from it, and on Soft-RoCE a
 * busy-polling target takes the CPU from the kernel that places the data.
 */
static int sleep_for_recv(struct bw *b, uint64_t target)
{
	while (b->recvs_done < target) {
		if (progress(b) || raw_verbs_arm(&b->v) || progress(b))
			return RAW_EXIT_FAIL;
		if (b->recvs_done >= target)
			break;
		if (raw_verbs_sleep(&b->v, 1000) || raw_watch_check(&b->w))
			return RAW_EXIT_FAIL;
	}
	return 0;
}

static int server_round(struct bw *b, size_t size, long count, int last_round)
{
	uint64_t target = b->recvs_done + 1;
	int rc;

	/* The write-with-immediate consumes a receive (no buffer needed). */
	rc = raw_verbs_post_recv(&b->v, NULL, NULL, 0, RAW_WR_ID(0, RAW_WR_RECV));
	if (!rc && raw_oob_sync(b->fd))
		rc = RAW_EXIT_FAIL;
	raw_watch_start(&b->w, b->o, b->fd, "waiting for the writes' notification");
	if (!rc)
		rc = sleep_for_recv(b, target);
	if (!rc && (!b->last_has_imm || b->last_imm != (uint32_t)count)) {
		fprintf(stderr, "%s: notification says %u writes (imm %s), %ld expected\n", b->o->tool,
			b->last_imm, b->last_has_imm ? "present" : "missing", count);
		rc = RAW_EXIT_FAIL;
	}
	if (!rc && last_round && b->o->check && raw_check_pattern(b->buf, size, size)) {
		fprintf(stderr, "%s: the written %zu B do not hold the expected bytes\n", b->o->tool, size);
		rc = RAW_EXIT_FAIL;
	}
	if (!rc)
		rc = send_ack(b, b->last_imm);
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
	int rc;

	raw_parse_args(&o, RAW_BW, argc, argv);
	memset(&b, 0, sizeof(b));
	b.o = &o;
	b.fd = -1;
	if (raw_pin_cpu(&o))
		return RAW_EXIT_FAIL;
	rc = raw_verbs_probe(&o);
	if (rc)
		return rc;
	max = raw_max_size(&o);
	rc = RAW_EXIT_FAIL;
	if (posix_memalign(&b.buf, 4096, max) || posix_memalign((void **)&b.ctl, 64, 4096)) {
		fprintf(stderr, "%s: out of memory for a %zu B buffer\n", o.tool, max);
		goto out;
	}
	memset(b.buf, o.host ? 0xa5 : 0, max);
	memset(b.ctl, 0, 4096);

	b.fd = raw_oob_connect(&o);
	if (b.fd < 0 || raw_oob_check_params(&o, b.fd))
		goto out;
	rc = raw_verbs_open(&b.v, &o, b.fd, (uint32_t)o.tx_depth + 2, 4);
	if (rc)
		goto out;
	rc = RAW_EXIT_FAIL;
	b.bufmr = raw_verbs_reg(&b.v, b.buf, max,
				o.host ? IBV_ACCESS_LOCAL_WRITE : IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
	b.ctlmr = raw_verbs_reg(&b.v, b.ctl, 4096, IBV_ACCESS_LOCAL_WRITE);
	if (!b.bufmr || !b.ctlmr || raw_verbs_establish(&b.v))
		goto out;
	mine.addr = (uint64_t)(uintptr_t)b.buf;
	mine.len = max;
	mine.rkey = b.bufmr->rkey;
	mine.pad = 0;
	if (raw_oob_xchg(b.fd, &mine, &b.peer, sizeof(mine)))
		goto out;
	if (o.host && b.peer.len < max) {
		fprintf(stderr, "%s: the server's buffer is %llu B, %zu needed\n", o.tool,
			(unsigned long long)b.peer.len, max);
		goto out;
	}

	raw_rule();
	printf(" raw_verbs_bw: verbs RDMA write bandwidth on an RC QP, one direction, last write with imm\n");
	raw_rule();
	raw_verbs_print_setup(&b.v);
	raw_hdr_common(&o);
	raw_hdr("writes in flight", "%d, a completion for one in %d", o.tx_depth, o.cq_mod);
	if (b.v.max_msg < max)
		raw_hdr("large messages", "sent as writes of at most %u B (max_msg_sz)", b.v.max_msg);
	raw_hdr("timing", "first write posted .. target's ack of the write with immediate");
	raw_hdr("target", "sleeps on the CQ's completion channel until the notification (as ib_write_bw's, idle)");
	raw_hdr("units", "MB = 2^20 bytes (as perftest), Mpps = 10^6 writes/s");
	raw_rule();
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
	if (b.bufmr)
		ibv_dereg_mr(b.bufmr);
	if (b.ctlmr)
		ibv_dereg_mr(b.ctlmr);
	raw_verbs_close(&b.v);
	if (b.fd >= 0)
		close(b.fd);
	free(b.buf);
	free(b.ctl);
	return rc;
}
