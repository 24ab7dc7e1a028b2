/* rdag_perf_lat: control-message round trip through rdag's transport (xport), beside raw_ofi_lat / raw_verbs_lat. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rdag_perf.h"
#include "util/err.h"

/*
 * Each iteration, the client sends one control message of -s bytes (an RPC_CALL: its 40-byte
 * header and fields plus an opaque payload filling the rest, so the message on the wire has the
 * size the raw tools send; sizes under 40 B send the 40-byte minimum, sizes are rounded up to 8 B)
 * and the server answers with a message of the same size from its receive callback. Time runs
 * from xport_send to the reply's delivery on the client; one-way = RTT/2. Both sides busy-poll
 * xport_progress(x, 0), as the raw tools busy-poll their CQ. With --payload the -s bytes are the
 * payload alone (the message is 40 B longer). Sizes that do not fit in a control message
 * (RDAG_MSG_MAX) travel as one tensor of -s bytes beside an empty RPC_CALL, by the eager or
 * rendezvous protocol, into a destination buffer reused across iterations.
 */

#define RPC_MIN 40u /* header 24 + RPC_CALL fields 16, empty name and payload */

struct lat {
	struct rp r;
	uint8_t *payload;
	uint32_t plen;
	uint64_t tlen;          /* tensor bytes (sizes beyond a control message), else 0 */
	uint8_t *rdv_buf;       /* rendezvous destination, reused */
	uint64_t got;
	uint64_t sent, done;    /* sends posted / finished (a reply may need our progress to leave) */
	uint64_t t_recv;        /* when the last message was delivered (client: end of the RTT) */
	int failed;
	int check;
	uint64_t seq;
};

static int enc(void *arg, void *buf, size_t cap, const struct wire_env *env,
	       const struct wire_tensor *t, uint32_t n, size_t *len)
{
	struct lat *l = arg;
	struct wire_call c;

	memset(&c, 0, sizeof(c));
	c.payload.ptr = l->payload;
	c.payload.len = l->plen;
	return wire_encode_rpc_call(buf, cap, env, &c, t, n, len);
}

static void *rdv_alloc(void *arg, uint32_t peer, uint32_t index, const struct wire_tensor *d)
{
	struct lat *l = arg;

	return d->nbytes <= raw_max_size(&l->r.o) ? l->rdv_buf : NULL;
}

static void rdv_free(void *arg, void *ptr, size_t len)
{
}

static void on_done(void *arg, int status)
{
	struct lat *l = arg;

	l->done++;
	if (status) {
		fprintf(stderr, "%s: a send failed: %s\n", l->r.o.tool, rdag_last_error());
		l->failed = 1;
	}
}

/* Sends the current message (and tensor) to peer. */
static int send_msg(struct lat *l, uint32_t peer, uint64_t req)
{
	struct xport_tensor t = {0};
	int rc;

	t.data = l->payload;
	memset(&t.desc, 0, sizeof(t.desc));
	t.desc.dtype = WIRE_DT_U8;
	t.desc.rank = 1;
	t.desc.nbytes = l->tlen;
	t.desc.shape[0] = (int64_t)l->tlen;
	do
		rc = xport_send(l->r.x, peer, req, enc, l, &t, l->tlen ? 1 : 0, on_done, l);
	while (rc == RDAG_EAGAIN && xport_progress(l->r.x, 0) >= 0);
	if (rc)
		fprintf(stderr, "%s: send: %s\n", l->r.o.tool, rdag_last_error());
	else
		l->sent++;
	return rc;
}

static void on_recv(void *arg, struct xport_rx *rx)
{
	struct lat *l = arg;

	/* The reply's delivery ends the round trip (its buffer is re-posted after, as raw's is). */
	if (!l->r.server)
		l->t_recv = raw_now_ns();
	const void *data = l->tlen ? (rx->ntensors == 1 ? rx->tensors[0].data : NULL)
				   : rx->msg.u.call.call.payload.ptr;

	if (rx->msg.kind != WIRE_RPC_CALL || rx->msg.u.call.call.payload.len != l->plen ||
	    rx->ntensors != (l->tlen ? 1u : 0u) ||
	    (l->tlen && rx->tensors[0].desc.nbytes != l->tlen)) {
		fprintf(stderr, "%s: unexpected %s of %zu bytes\n", l->r.o.tool,
			wire_kind_name(rx->msg.kind), rx->len);
		l->failed = 1;
	} else if (l->check && raw_check_pattern(data, l->tlen ? l->tlen : l->plen, rx->msg.env.req_id)) {
		fprintf(stderr, "%s: message %llu does not hold the expected bytes\n", l->r.o.tool,
			(unsigned long long)rx->msg.env.req_id);
		l->failed = 1;
	}
	if (l->r.server && !l->failed) {
		/* The answer goes from the callback: nothing queued in between. */
		int rc;

		if (l->check)
			raw_fill_pattern(l->payload, l->tlen ? l->tlen : l->plen, rx->msg.env.req_id + 1);
		rc = send_msg(l, rx->peer, rx->msg.env.req_id + 1);
		if (rc)
			l->failed = 1;
	}
	l->got++;
	xport_release(l->r.x, rx);
}

static int wait_got(struct lat *l, uint64_t target)
{
	unsigned spins = 0;

	while (l->got < target && !l->failed) {
		int n = xport_progress(l->r.x, 0);

		if (n < 0) {
			fprintf(stderr, "%s: progress: %s\n", l->r.o.tool, rdag_last_error());
			return RAW_EXIT_FAIL;
		}
		l->r.progress += (uint64_t)n;
		if (n == 0 && (++spins & 0x3ff) == 0 && rp_expired(&l->r, "waiting for a message"))
			return RAW_EXIT_FAIL;
	}
	return l->failed ? RAW_EXIT_FAIL : 0;
}

static int wait_done(struct lat *l)
{
	unsigned spins = 0;

	while (l->done < l->sent && !l->failed) {
		int n = xport_progress(l->r.x, 0);

		if (n < 0)
			return RAW_EXIT_FAIL;
		l->r.progress += (uint64_t)n;
		if (n == 0 && (++spins & 0x3ff) == 0 &&
		    rp_expired(&l->r, "waiting for our sends to finish"))
			return RAW_EXIT_FAIL;
	}
	return l->failed ? RAW_EXIT_FAIL : 0;
}

static int run_size(struct lat *l, size_t size, int payload_sized, uint64_t *rtt)
{
	const struct raw_opts *o = &l->r.o;
	long n = raw_iters_for(o, size), warm = raw_warmup_for(o, size), i;
	size_t total = payload_sized ? size : (size < RPC_MIN ? RPC_MIN : size);
	int rc = 0;

	l->plen = payload_sized ? (uint32_t)size : (uint32_t)(((total + 7) & ~(size_t)7) - RPC_MIN);
	l->tlen = 0;
	if (l->plen + RPC_MIN > l->r.xo.msg_max) {
		l->plen = 0;
		l->tlen = size;
	}
	if (boot_barrier(l->r.b)) {
		fprintf(stderr, "%s: barrier: %s\n", o->tool, rdag_last_error());
		return RAW_EXIT_FAIL;
	}
	rp_watch(&l->r);
	if (!o->host) {
		rc = wait_got(l, l->got + (uint64_t)(warm + n));
		/* Our last answer may still need our progress to leave (its writes' completions). */
		return rc ? rc : wait_done(l);
	}
	for (i = 0; !rc && i < warm + n; i++) {
		uint64_t t0, target = l->got + 1;

		l->seq += 2;
		if (l->check)
			raw_fill_pattern(l->payload, l->tlen ? l->tlen : l->plen, l->seq);
		t0 = raw_now_ns();
		if (send_msg(l, 0, l->seq))
			return RAW_EXIT_FAIL;
		rc = wait_got(l, target);
		if (!rc && i >= warm)
			rtt[i - warm] = l->t_recv - t0;
	}
	if (!rc)
		rc = wait_done(l);
	if (!rc)
		raw_lat_table_row(size, rtt, n);
	return rc;
}

int main(int argc, char **argv)
{
	struct lat l;
	uint64_t *rtt = NULL;
	size_t size, max;
	int rc, payload_sized = 0;

	memset(&l, 0, sizeof(l));
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--payload") == 0) {
			payload_sized = 1;
			memmove(&argv[i], &argv[i + 1], (size_t)(argc - i) * sizeof(char *));
			argc--;
			break;
		}
	}
	rp_init(&l.r, RAW_LAT, &argc, argv);
	l.check = l.r.o.check;
	l.r.xo.on_recv = on_recv;
	l.r.xo.recv_arg = &l;
	l.r.xo.rdv_alloc = rdv_alloc;
	l.r.xo.rdv_free = rdv_free;
	l.r.xo.rdv_arg = &l;
	max = raw_max_size(&l.r.o);
	l.payload = aligned_alloc(4096, (max + 4096) & ~(size_t)4095);
	l.rdv_buf = aligned_alloc(4096, (max + 4096) & ~(size_t)4095);
	rc = rp_open(&l.r);
	if (rc)
		return rp_close(&l.r, rc);
	rc = RAW_EXIT_FAIL;
	rtt = calloc((size_t)l.r.o.iters, sizeof(*rtt));
	if (!l.payload || !rtt) {
		fprintf(stderr, "%s: out of memory\n", l.r.o.tool);
		goto out;
	}
	memset(l.payload, 0xa5, max);
	raw_rule();
	printf(" rdag_perf_lat: control-message ping-pong through rdag's transport, one-way = RTT/2\n");
	raw_rule();
	rp_print_setup(&l.r);
	raw_hdr_common(&l.r.o);
	raw_hdr("message", payload_sized ? "RPC_CALL with an -s byte payload (+40 B header)"
					 : "RPC_CALL of -s bytes in all (40 B header + payload; at least 40 B)");
	raw_hdr("large sizes", "above %zu B: an empty RPC_CALL + one tensor of -s bytes",
		l.r.xo.msg_max - RPC_MIN);
	raw_hdr("timing", "per iteration, xport_send .. the reply's receive callback");
	raw_rule();
	if (l.r.o.host)
		raw_lat_table_head();
	rc = 0;
	for (size = raw_first_size(&l.r.o); !rc && size; size = raw_next_size(&l.r.o, size))
		rc = run_size(&l, size, payload_sized, rtt);
	if (!rc && boot_barrier(l.r.b))
		rc = RAW_EXIT_FAIL;
	raw_rule();
	if (!l.r.o.host && !rc)
		printf(" server done\n");
out:
	rc = rp_close(&l.r, rc);
	free(l.payload);
	free(l.rdv_buf);
	free(rtt);
	return rc;
}
