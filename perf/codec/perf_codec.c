/* rdag_perf_codec: nanoseconds per encode and per decode (with a full walk) of every wire message kind. */
#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <rdag/error.h>

#include "wire/wire.h"

/*
 * Each case encodes one representative message into a buffer (the encoder's whole job: checks,
 * sizing, writing), decodes it (full validation, wrapped messages included), and decodes it
 * again while also reading what a receiver must read to use it: every tensor descriptor,
 * device-map entry and event through the iterators. Timing: a loop of n calls between two
 * clock_gettime() reads,
 * repeated r times; the median of the r per-call figures is reported. n is calibrated so a
 * repeat takes about 2 ms unless -n is given.
 */

#define BUF_SIZE 65536

static uint8_t enc_buf[BUF_SIZE] __attribute__((aligned(64)));
static uint8_t msg_buf[BUF_SIZE] __attribute__((aligned(64)));
static size_t msg_len;
static volatile uint64_t sink;

static struct wire_tensor grads[64];
static struct wire_tensor call_tensors[2];
static struct wire_devpair devmap[2];
static struct wire_prof_event events[4];
static uint8_t payload[64];
static float small_grad[16];
static const struct wire_env env = {0x0001000000000042ull, 1, 2};

/* ---- cases --------------------------------------------------------------------------------- */

struct bench_case {
	const char *name;
	int (*encode)(void *buf, size_t cap, size_t *len);
};

static int enc_grad(void *buf, size_t cap, size_t *len, uint32_t n)
{
	struct wire_grad_req g = {0x0001000000000007ull, 0x0001000000000031ull, false, 0x0001000000000003ull};

	return wire_encode_grad_req(buf, cap, &env, &g, grads, n, len);
}
static int enc_grad1(void *buf, size_t cap, size_t *len) { return enc_grad(buf, cap, len, 1); }
static int enc_grad8(void *buf, size_t cap, size_t *len) { return enc_grad(buf, cap, len, 8); }
static int enc_grad64(void *buf, size_t cap, size_t *len) { return enc_grad(buf, cap, len, 64); }

static int enc_grad1_inline(void *buf, size_t cap, size_t *len)
{
	struct wire_grad_req g = {7, 31, true, 0x0001000000000003ull};
	struct wire_tensor t = {.dtype = WIRE_DT_F32, .rank = 1, .loc = WIRE_LOC_INLINE, .nbytes = 64,
				.shape = {16}, .u.data = small_grad};

	return wire_encode_grad_req(buf, cap, &env, &g, &t, 1, len);
}

static int enc_grad_resp(void *buf, size_t cap, size_t *len)
{
	return wire_encode_grad_resp(buf, cap, &env, len);
}

static int enc_call(void *buf, size_t cap, size_t *len)
{
	struct wire_call c = {{0, 0}, {"my_module.linear", 16}, {payload, sizeof(payload)}};

	return wire_encode_rpc_call(buf, cap, NULL, &c, call_tensors, 2, len);
}

static int enc_rpc_resp(void *buf, size_t cap, size_t *len)
{
	struct wire_bytes pl = {payload, 16};

	return wire_encode_rpc_resp(buf, cap, NULL, &pl, call_tensors, 1, len);
}

/* Wrappers encode their inner message in place, as the RPC layer would. */
static int enc_fwd_req(void *buf, size_t cap, size_t *len)
{
	struct wire_fwd f = {0x0001000000000005ull, 0x0001000000000009ull, 1, 2, devmap};
	size_t pre = wire_fwd_prefix(&f), n;
	int rc = cap >= pre ? enc_call((uint8_t *)buf + pre, cap - pre, &n) : RDAG_ENOSPC;

	return rc ? rc : wire_encode_fwd_req(buf, cap, &env, &f, NULL, n, len);
}

static int enc_fwd_resp(void *buf, size_t cap, size_t *len)
{
	struct wire_fwd f = {0x0001000000000005ull, 0x000200000000000aull, 2, 2, devmap};
	size_t pre = wire_fwd_prefix(&f), n;
	int rc = cap >= pre ? enc_rpc_resp((uint8_t *)buf + pre, cap - pre, &n) : RDAG_ENOSPC;

	return rc ? rc : wire_encode_fwd_resp(buf, cap, &env, &f, NULL, n, len);
}

static int enc_cleanup(void *buf, size_t cap, size_t *len)
{
	return wire_encode_cleanup_req(buf, cap, &env, &(struct wire_cleanup){0x0001000000000005ull}, len);
}

static int enc_cleanup_resp(void *buf, size_t cap, size_t *len)
{
	return wire_encode_cleanup_resp(buf, cap, &env, len);
}

static int enc_rref_bwd(void *buf, size_t cap, size_t *len)
{
	struct wire_rref_backward r = {{3, 0x0003000000000011ull}, 0x0001000000000005ull, true};

	return wire_encode_rref_bwd_req(buf, cap, &env, &r, len);
}

static int enc_rref_bwd_resp(void *buf, size_t cap, size_t *len)
{
	return wire_encode_rref_bwd_resp(buf, cap, &env, len);
}

static int enc_prof_req(void *buf, size_t cap, size_t *len)
{
	struct wire_prof_req p = {0x0001000000000002ull, WIRE_PROF_CPU, WIRE_PROF_SHAPES};
	size_t pre = wire_prof_req_prefix(), n;
	int rc = cap >= pre ? enc_call((uint8_t *)buf + pre, cap - pre, &n) : RDAG_ENOSPC;

	return rc ? rc : wire_encode_prof_req(buf, cap, &env, &p, NULL, n, len);
}

static int enc_prof_resp(void *buf, size_t cap, size_t *len)
{
	size_t pre, n;
	int rc = wire_prof_resp_prefix(events, 4, &pre);

	if (!rc)
		rc = cap >= pre ? enc_rpc_resp((uint8_t *)buf + pre, cap - pre, &n) : RDAG_ENOSPC;
	return rc ? rc : wire_encode_prof_resp(buf, cap, &env, 0x0001000000000002ull, events, 4, NULL, n, len);
}

static int enc_exception(void *buf, size_t cap, size_t *len)
{
	static const char text[] = "Error on Node 2: RuntimeError: grad can be implicitly created only for scalars";
	struct wire_exception e = {RDAG_EREMOTE, 2, {text, sizeof(text) - 1}};

	return wire_encode_exception(buf, cap, &env, &e, len);
}

static int enc_handshake(void *buf, size_t cap, size_t *len)
{
	struct wire_handshake hs = {1, 1, 4, 0, 0x5eed5eed5eed5eedull, 0x7f0000000000ull, 0x1234,
				    1u << 24, 64, 65536};

	return wire_encode_handshake(buf, cap, &env, &hs, len);
}

static int enc_credit(void *buf, size_t cap, size_t *len)
{
	return wire_encode_credit(buf, cap, &env, &(struct wire_credit){8}, len);
}

static int enc_rref_call(void *buf, size_t cap, size_t *len)
{
	struct wire_call c = {{1, 0x0001000000000003ull}, {"make_model", 10}, {payload, 32}};

	return wire_encode_rref_call(buf, cap, NULL, &c, call_tensors, 1, len);
}

static int enc_fetch_req(void *buf, size_t cap, size_t *len)
{
	return wire_encode_rref_fetch_req(buf, cap, &env, &(struct wire_rref_id){1, 3}, len);
}

static int enc_fetch_resp(void *buf, size_t cap, size_t *len)
{
	struct wire_bytes pl = {payload, 16};

	return wire_encode_rref_fetch_resp(buf, cap, &env, &pl, call_tensors, 1, len);
}

static int enc_delete(void *buf, size_t cap, size_t *len)
{
	return wire_encode_rref_delete(buf, cap, &env, &(struct wire_rref_id){1, 3}, len);
}

static int enc_rdv_answer(void *buf, size_t cap, size_t *len)
{
	struct wire_rdv_answer a = {0x42, 3, 0x7f0000100000ull, 0x99, 1u << 26};

	return wire_encode_rdv_answer(buf, cap, &env, &a, len);
}

static int enc_rdv_done(void *buf, size_t cap, size_t *len)
{
	return wire_encode_rdv_done(buf, cap, &env, &(struct wire_rdv_done){0x42, 3, 0}, len);
}

static const struct bench_case cases[] = {
	{"grad_req_1", enc_grad1},
	{"grad_req_8", enc_grad8},
	{"grad_req_64", enc_grad64},
	{"grad_req_1_inline64B", enc_grad1_inline},
	{"grad_resp", enc_grad_resp},
	{"fwd_req(rpc_call)", enc_fwd_req},
	{"fwd_resp(rpc_resp)", enc_fwd_resp},
	{"cleanup_req", enc_cleanup},
	{"cleanup_resp", enc_cleanup_resp},
	{"rref_bwd_req", enc_rref_bwd},
	{"rref_bwd_resp", enc_rref_bwd_resp},
	{"prof_req(rpc_call)", enc_prof_req},
	{"prof_resp(rpc_resp)", enc_prof_resp},
	{"exception", enc_exception},
	{"handshake", enc_handshake},
	{"credit", enc_credit},
	{"rpc_call", enc_call},
	{"rpc_resp", enc_rpc_resp},
	{"rref_call", enc_rref_call},
	{"rref_fetch_req", enc_fetch_req},
	{"rref_fetch_resp", enc_fetch_resp},
	{"rref_delete", enc_delete},
	{"rdv_answer", enc_rdv_answer},
	{"rdv_done", enc_rdv_done},
};

#define NCASES (sizeof(cases) / sizeof(cases[0]))

static void init(void)
{
	for (unsigned i = 0; i < 64; i++) {
		/* A gradient of a 64x64 f32 weight, already written into a landing slot. */
		grads[i] = (struct wire_tensor){.dtype = WIRE_DT_F32, .rank = 2, .loc = WIRE_LOC_SLOT,
						.flags = 0, .nbytes = 64 * 64 * 4, .shape = {64, 64}};
		grads[i].u.slot.offset = (uint64_t)i << 14;
		grads[i].u.slot.length = 1u << 14;
	}
	call_tensors[0] = (struct wire_tensor){.dtype = WIRE_DT_F32, .rank = 2, .loc = WIRE_LOC_SLOT,
					       .flags = WIRE_TF_REQUIRES_GRAD, .nbytes = 32 * 16 * 4,
					       .shape = {32, 16}};
	call_tensors[0].u.slot.length = 32 * 16 * 4;
	call_tensors[1] = (struct wire_tensor){.dtype = WIRE_DT_I64, .rank = 1, .loc = WIRE_LOC_INLINE,
					       .nbytes = 64, .shape = {8}};
	call_tensors[1].u.data = payload;
	devmap[0] = (struct wire_devpair){{WIRE_DEV_CUDA, 0}, {WIRE_DEV_CUDA, 1}};
	devmap[1] = (struct wire_devpair){{WIRE_DEV_CUDA, 1}, {WIRE_DEV_CUDA, 0}};
	for (unsigned i = 0; i < 4; i++)
		events[i] = (struct wire_prof_event){{"aten::linear", 12}, 1000 * i, 1000 * i + 500, 7,
						     {WIRE_DEV_CPU, 0}};
}

/* ---- decode and walk ----------------------------------------------------------------------- */

static uint64_t walk_tensors(const struct wire_tensor_list *l)
{
	struct wire_tensor_iter it;
	struct wire_tensor t;
	uint64_t acc = 0;

	wire_tensors_begin(l, &it);
	while (wire_tensor_next(&it, &t)) {
		acc += t.nbytes + t.rank;
		if (t.rank)
			acc += (uint64_t)t.shape[t.rank - 1];
		if (t.loc == WIRE_LOC_SLOT)
			acc += t.u.slot.offset;
	}
	return acc;
}

/*
 * Decodes (the message and any wrapped ones) and, if `read`, reads everything a receiver reads;
 * returns a checksum (or a negative code).
 */
static int64_t decode_walk(const uint8_t *buf, size_t len, bool read)
{
	struct wire_msg m, in;
	uint64_t acc;
	int rc = wire_decode(buf, len, &m);

	if (rc)
		return rc;
	acc = m.env.req_id + m.kind;
	for (;;) {
		switch (read ? m.kind : 0) {
		case WIRE_BACKWARD_AUTOGRAD_REQ:
			acc += m.u.grad.req.ctx_id + walk_tensors(&m.u.grad.tensors);
			break;
		case WIRE_RPC_CALL:
		case WIRE_RREF_CALL:
			acc += m.u.call.call.name.len + walk_tensors(&m.u.call.tensors);
			break;
		case WIRE_RPC_RESP:
		case WIRE_RREF_FETCH_RESP:
			acc += m.u.resp.payload.len + walk_tensors(&m.u.resp.tensors);
			break;
		case WIRE_FORWARD_AUTOGRAD_REQ:
		case WIRE_FORWARD_AUTOGRAD_RESP:
			for (uint16_t i = 0; i < m.u.fwd.devmap.count; i++) {
				struct wire_devpair p;

				wire_devmap_get(&m.u.fwd.devmap, i, &p);
				acc += p.to.index;
			}
			acc += m.u.fwd.ctx_id;
			break;
		case WIRE_RUN_WITH_PROFILING_RESP: {
			struct wire_event_iter it;
			struct wire_prof_event ev;

			wire_events_begin(&m.u.prof_resp.events, &it);
			while (wire_event_next(&it, &ev))
				acc += ev.end_ns - ev.start_ns;
			break;
		}
		default:
			acc += m.length;
			break;
		}
		if (!wire_kind_wraps(m.kind))
			break;
		rc = wire_decode_inner(&m, &in);
		if (rc)
			return rc;
		m = in;
	}
	return (int64_t)(acc & INT64_MAX);
}

/* ---- timing -------------------------------------------------------------------------------- */

static double now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static double run_encode(const struct bench_case *c, long n)
{
	size_t len = 0;
	double t0 = now_ns();

	for (long i = 0; i < n; i++) {
		if (c->encode(enc_buf, sizeof(enc_buf), &len))
			abort();
		__asm__ volatile("" : : "r"(enc_buf) : "memory");
	}
	return (now_ns() - t0) / (double)n;
}

static double run_decode(long n, bool read)
{
	uint64_t acc = 0;
	double t0 = now_ns();

	for (long i = 0; i < n; i++) {
		int64_t r = decode_walk(msg_buf, msg_len, read);

		if (r < 0)
			abort();
		acc += (uint64_t)r;
		__asm__ volatile("" : : "r"(msg_buf) : "memory");
	}
	sink = acc;
	return (now_ns() - t0) / (double)n;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static double median(double *v, int r)
{
	qsort(v, (size_t)r, sizeof(*v), cmp_double);
	return r % 2 ? v[r / 2] : (v[r / 2 - 1] + v[r / 2]) / 2;
}

/* Iterations for about target_ns per repeat (at least 1). */
static long calibrate(double per_call_ns, double target_ns)
{
	long n = (long)(target_ns / (per_call_ns > 1 ? per_call_ns : 1));

	return n < 1 ? 1 : n;
}

static void usage(const char *prog)
{
	fprintf(stderr,
		"usage: %s [-n iterations] [-r repeats] [-k case] [--csv]\n"
		"  -n N     calls per timed loop (default: calibrated to ~2 ms per loop)\n"
		"  -r R     timed loops per figure; the median is reported (default 11)\n"
		"  -k NAME  run only the case NAME (repeatable); -l lists the cases\n"
		"  --csv    print name,bytes,encode_ns,decode_ns,decode_read_ns,iterations lines only\n",
		prog);
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {{"csv", no_argument, NULL, 'c'},
						 {"help", no_argument, NULL, 'h'},
						 {NULL, 0, NULL, 0}};
	const char *only[NCASES];
	unsigned nonly = 0;
	long iters = 0;
	int repeats = 11, csv = 0, opt;
	double enc[101], dec[101], rd[101];

	while ((opt = getopt_long(argc, argv, "n:r:k:lh", longopts, NULL)) != -1) {
		switch (opt) {
		case 'n':
			iters = strtol(optarg, NULL, 10);
			break;
		case 'r':
			repeats = atoi(optarg);
			break;
		case 'k':
			if (nonly < NCASES)
				only[nonly++] = optarg;
			break;
		case 'l':
			for (unsigned i = 0; i < NCASES; i++)
				printf("%s\n", cases[i].name);
			return 0;
		case 'c':
			csv = 1;
			break;
		default:
			usage(argv[0]);
			return opt == 'h' ? 0 : 2;
		}
	}
	if (iters < 0 || repeats < 1 || repeats > 101) {
		usage(argv[0]);
		return 2;
	}
	init();
	if (!csv) {
		printf("# rdag_perf_codec: wire codec, ns per call (median of %d loops of %s calls)\n",
		       repeats, iters ? "-n" : "~2 ms of");
		printf("# encode: checks + size + write into a caller buffer\n"
		       "# decode: wire_decode(), full validation (wrapped messages decoded too)\n"
		       "# dec+read: decode, then read every descriptor/entry/event via the iterators\n");
		printf("%-24s %7s %10s %10s %10s %10s %10s\n", "message", "bytes", "encode", "decode",
		       "dec+read", "enc+dec", "enc+dec+rd");
	}
	for (unsigned c = 0; c < NCASES; c++) {
		long n = iters;
		double e, d, dr;
		int rc;

		if (nonly) {
			unsigned k;

			for (k = 0; k < nonly && strcmp(only[k], cases[c].name); k++)
				;
			if (k == nonly)
				continue;
		}
		rc = cases[c].encode(msg_buf, sizeof(msg_buf), &msg_len);
		if (rc) {
			fprintf(stderr, "%s: encode failed: %s\n", cases[c].name, rdag_last_error());
			return 1;
		}
		if (decode_walk(msg_buf, msg_len, true) < 0) {
			fprintf(stderr, "%s: decode failed: %s\n", cases[c].name, rdag_last_error());
			return 1;
		}
		if (!n)
			n = calibrate(run_encode(&cases[c], 1000) + 2 * run_decode(1000, true), 2e6);
		for (int r = 0; r < repeats; r++) {
			enc[r] = run_encode(&cases[c], n);
			dec[r] = run_decode(n, false);
			rd[r] = run_decode(n, true);
		}
		e = median(enc, repeats);
		d = median(dec, repeats);
		dr = median(rd, repeats);
		if (csv)
			printf("%s,%zu,%.2f,%.2f,%.2f,%ld\n", cases[c].name, msg_len, e, d, dr, n);
		else
			printf("%-24s %7zu %10.1f %10.1f %10.1f %10.1f %10.1f\n", cases[c].name, msg_len, e, d,
			       dr, e + d, e + dr);
	}
	return 0;
}
