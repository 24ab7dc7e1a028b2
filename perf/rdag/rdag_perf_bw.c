/* rdag_perf_bw: tensor bandwidth through rdag's transport (eager / rendezvous writes), beside raw_ofi_bw / raw_verbs_bw. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rdag_perf.h"
#include "util/err.h"

/*
 * A round of count messages of one size: the client sends count BACKWARD_AUTOGRAD_REQs, each
 * carrying one tensor of -s bytes from the same source buffer, as fast as the transport takes
 * them (credits, arena space and send ops are the only window). The transport picks the
 * protocol: inline up to RDAG_INLINE_MAX, an RDMA write into the server's landing arena up to
 * RDAG_EAGER_MAX, rendezvous beyond (the server's destination buffer is reused, as raw_ofi_bw
 * reuses its target, so its registration is a cache hit). The server releases each message as it
 * arrives and, after the count-th, answers with a small message. Time runs from the first send
 * to that answer, so it covers delivery, as raw_ofi_bw's does. The client busy-polls; the server
 * busy-polls on libfabric and sleeps on the wait fd on verbs, as the raw targets do.
 */

struct bw {
	struct rp r;
	uint8_t *src, *dst;
	uint64_t got, acks;
	uint64_t sent, done;
	size_t size;
	int failed;
	int sleepy;             /* server: block when idle (verbs) */
};

static int enc_grad(void *arg, void *buf, size_t cap, const struct wire_env *env,
		    const struct wire_tensor *t, uint32_t n, size_t *len)
{
	struct wire_grad_req g = {.ctx_id = 1, .msg_id = env->req_id, .retain_graph = false};

	return wire_encode_grad_req(buf, cap, env, &g, t, n, len);
}

static void *rdv_alloc(void *arg, uint32_t peer, uint32_t index, const struct wire_tensor *d)
{
	struct bw *b = arg;

	return d->nbytes <= raw_max_size(&b->r.o) ? b->dst : NULL;
}

static void rdv_free(void *arg, void *ptr, size_t len)
{
}

static void on_done(void *arg, int status)
{
	struct bw *b = arg;

	b->done++;
	if (status) {
		fprintf(stderr, "%s: a send failed: %s\n", b->r.o.tool, rdag_last_error());
		b->failed = 1;
	}
}

static void on_recv(void *arg, struct xport_rx *rx)
{
	struct bw *b = arg;

	if (b->r.server) {
		if (rx->msg.kind != WIRE_BACKWARD_AUTOGRAD_REQ || rx->ntensors != 1 ||
		    rx->tensors[0].desc.nbytes != b->size) {
			fprintf(stderr, "%s: unexpected %s\n", b->r.o.tool, wire_kind_name(rx->msg.kind));
			b->failed = 1;
		} else if (b->r.o.check && raw_check_pattern(rx->tensors[0].data, b->size, b->size)) {
			fprintf(stderr, "%s: the %zu B tensor does not hold the expected bytes\n",
				b->r.o.tool, b->size);
			b->failed = 1;
		}
		b->got++;
	} else {
		b->acks++;
	}
	xport_release(b->r.x, rx);
}

static int wait_for(struct bw *b, const uint64_t *counter, uint64_t target, const char *what)
{
	unsigned spins = 0;

	rp_watch(&b->r);
	while (*counter < target && !b->failed) {
		/*
		 * The client busy-polls. The server does what the raw target on the same fabric does:
		 * raw_ofi_bw's busy-polls (shm and rxm move data only when polled), raw_verbs_bw's
		 * sleeps on its completion channel, leaving the CPUs to the fabric (Soft-RoCE moves
		 * data on them): on verbs it spins RDAG_BUSY_POLL_US, then sleeps on the wait fd.
		 */
		int n = xport_progress(b->r.x, b->r.server && b->sleepy ? 100 : 0);

		if (n < 0) {
			fprintf(stderr, "%s: progress: %s\n", b->r.o.tool, rdag_last_error());
			return RAW_EXIT_FAIL;
		}
		b->r.progress += (uint64_t)n;
		if (n == 0 && (++spins & 0x3ff) == 0 && rp_expired(&b->r, what))
			return RAW_EXIT_FAIL;
	}
	return b->failed ? RAW_EXIT_FAIL : 0;
}

static int client_round(struct bw *b, size_t size, long count, uint64_t *elapsed)
{
	struct xport_tensor t = {0};
	uint64_t t0, acks = b->acks + 1;
	int rc = 0;

	t.data = b->src;
	memset(&t.desc, 0, sizeof(t.desc));
	t.desc.dtype = WIRE_DT_U8;
	t.desc.rank = 1;
	t.desc.nbytes = size;
	t.desc.shape[0] = (int64_t)size;
	if (boot_barrier(b->r.b))
		return RAW_EXIT_FAIL;
	rp_watch(&b->r);
	t0 = raw_now_ns();
	for (long i = 0; !rc && i < count; i++) {
		for (;;) {
			rc = xport_send(b->r.x, 0, (uint64_t)i, enc_grad, NULL, &t, 1, on_done, b);
			if (rc != RDAG_EAGAIN)
				break;
			int n = xport_progress(b->r.x, 0);

			if (n < 0 || rp_expired(&b->r, "sending")) {
				rc = RAW_EXIT_FAIL;
				break;
			}
			b->r.progress += (uint64_t)n;
		}
		if (rc && rc != RAW_EXIT_FAIL) {
			fprintf(stderr, "%s: send: %s\n", b->r.o.tool, rdag_last_error());
			rc = RAW_EXIT_FAIL;
		}
		if (!rc)
			b->sent++;
	}
	if (!rc)
		rc = wait_for(b, &b->acks, acks, "waiting for the server's answer");
	*elapsed = raw_now_ns() - t0;
	/* Every send finished (its writes completed) before the next round. */
	if (!rc)
		rc = wait_for(b, &b->done, b->sent, "waiting for our sends to finish");
	return rc;
}

static int server_round(struct bw *b, long count)
{
	struct wire_env env = {.req_id = (uint64_t)count, .src = 0};
	uint8_t msg[64];
	size_t len;
	int rc;

	if (boot_barrier(b->r.b))
		return RAW_EXIT_FAIL;
	rc = wait_for(b, &b->got, b->got + (uint64_t)count, "waiting for the tensors");
	if (rc)
		return rc;
	if (wire_encode_grad_resp(msg, sizeof(msg), &env, &len))
		return RAW_EXIT_FAIL;
	do
		rc = xport_send_bytes(b->r.x, 1, msg, len, on_done, b);
	while (rc == RDAG_EAGAIN && xport_progress(b->r.x, 0) >= 0);
	if (rc) {
		fprintf(stderr, "%s: answer: %s\n", b->r.o.tool, rdag_last_error());
		return RAW_EXIT_FAIL;
	}
	b->sent++;
	return wait_for(b, &b->done, b->sent, "waiting for the answer to leave");
}

static int run_size(struct bw *b, size_t size)
{
	const struct raw_opts *o = &b->r.o;
	long n = raw_iters_for(o, size), warm = raw_warmup_for(o, size);
	uint64_t elapsed = 0;
	int rc;

	b->size = size;
	if (o->host) {
		if (o->check)
			raw_fill_pattern(b->src, size, size);
		rc = client_round(b, size, warm, &elapsed);
		if (!rc)
			rc = client_round(b, size, n, &elapsed);
		if (!rc)
			raw_bw_table_row(size, n, elapsed);
	} else {
		rc = server_round(b, warm);
		if (!rc)
			rc = server_round(b, n);
	}
	return rc;
}

int main(int argc, char **argv)
{
	struct bw b;
	size_t size, max, alloc;
	int rc;

	memset(&b, 0, sizeof(b));
	rp_init(&b.r, RAW_BW, &argc, argv);
	b.r.xo.on_recv = on_recv;
	b.r.xo.recv_arg = &b;
	b.r.xo.rdv_alloc = rdv_alloc;
	b.r.xo.rdv_free = rdv_free;
	b.r.xo.rdv_arg = &b;
	max = raw_max_size(&b.r.o);
	alloc = (max + 4095) & ~(size_t)4095;
	b.src = aligned_alloc(4096, alloc);
	b.dst = aligned_alloc(4096, alloc);
	if (!b.src || !b.dst) {
		fprintf(stderr, "%s: out of memory for %zu B buffers\n", b.r.o.tool, max);
		return RAW_EXIT_FAIL;
	}
	memset(b.src, 0xa5, alloc);
	memset(b.dst, 0, alloc);
	rc = rp_open(&b.r);
	if (rc)
		goto out;
	b.sleepy = getenv("RDAG_FABRIC") && strcmp(getenv("RDAG_FABRIC"), "verbs") == 0;
	raw_rule();
	printf(" rdag_perf_bw: tensor bandwidth through rdag's transport, one direction\n");
	raw_rule();
	rp_print_setup(&b.r);
	raw_hdr_common(&b.r.o);
	raw_hdr("messages", "BACKWARD_AUTOGRAD_REQ with one -s byte tensor each, from one buffer");
	raw_hdr("timing", "first send .. the server's answer to the last message");
	raw_hdr("units", "MB = 2^20 bytes (as perftest), Mpps = 10^6 messages/s");
	raw_rule();
	if (b.r.o.host)
		raw_bw_table_head();
	for (size = raw_first_size(&b.r.o); !rc && size; size = raw_next_size(&b.r.o, size))
		rc = run_size(&b, size);
	if (!rc && boot_barrier(b.r.b))
		rc = RAW_EXIT_FAIL;
	raw_rule();
	if (!b.r.o.host && !rc) {
		struct xport_stats st;

		xport_get_stats(b.r.x, &st);
		printf(" server done (received %llu messages)\n", (unsigned long long)st.msgs_recv);
	}
out:
	rc = rp_close(&b.r, rc);
	free(b.src);
	free(b.dst);
	return rc;
}
