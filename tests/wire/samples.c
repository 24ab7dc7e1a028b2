/* Sample messages of every kind with edge values, built by the encoders (tests, fuzz seeds, docs). */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <rdag/error.h>

#include "samples.h"
#include "wire/wire.h"

#define U64MAX UINT64_MAX
#define NMANY 300u

enum sample_id {
	S_HS_MIN, S_HS_MAX, S_CREDIT_0, S_CREDIT_MAX, S_NCCL_ID_0, S_NCCL_ID_MAX,
	S_EXC_EMPTY, S_EXC_TEXT, S_EXC_LONG,
	S_CALL_EMPTY, S_CALL_FULL, S_CALL_LONGNAME, S_RESP_EMPTY, S_RESP_FULL,
	S_RREF_CALL_0, S_RREF_CALL_MAX, S_FETCH_REQ_0, S_FETCH_REQ_MAX, S_FETCH_RESP, S_DELETE,
	S_RDV_ANSWER_0, S_RDV_ANSWER_MAX, S_RDV_DONE_OK, S_RDV_DONE_ERR,
	S_FWD_REQ_EMPTYMAP, S_FWD_REQ_FULLMAP, S_FWD_RESP, S_FWD_NESTED_MAX,
	S_GRAD_0, S_GRAD_1_INLINE, S_GRAD_8_SLOT, S_GRAD_MIXED, S_GRAD_MANY, S_GRAD_RESP,
	S_ABORT_EMPTY, S_ABORT_TEXT,
	S_CLEANUP_0, S_CLEANUP_MAX, S_CLEANUP_RESP,
	S_RREF_BWD_0, S_RREF_BWD_MAX, S_RREF_BWD_RESP,
	S_PROF_REQ, S_PROF_REQ_ALL, S_PROF_RESP_0, S_PROF_RESP_EVENTS,
	S_COUNT
};

static const char *const names[S_COUNT] = {
	[S_HS_MIN] = "handshake_min", [S_HS_MAX] = "handshake_max",
	[S_CREDIT_0] = "credit_0", [S_CREDIT_MAX] = "credit_max",
	[S_NCCL_ID_0] = "nccl_id_0", [S_NCCL_ID_MAX] = "nccl_id_max",
	[S_EXC_EMPTY] = "exception_empty", [S_EXC_TEXT] = "exception_text",
	[S_EXC_LONG] = "exception_longest",
	[S_CALL_EMPTY] = "rpc_call_empty", [S_CALL_FULL] = "rpc_call_tensors",
	[S_CALL_LONGNAME] = "rpc_call_longest_name",
	[S_RESP_EMPTY] = "rpc_resp_empty", [S_RESP_FULL] = "rpc_resp_tensors",
	[S_RREF_CALL_0] = "rref_call_0", [S_RREF_CALL_MAX] = "rref_call_max",
	[S_FETCH_REQ_0] = "rref_fetch_req_0", [S_FETCH_REQ_MAX] = "rref_fetch_req_max",
	[S_FETCH_RESP] = "rref_fetch_resp", [S_DELETE] = "rref_delete",
	[S_RDV_ANSWER_0] = "rdv_answer_0", [S_RDV_ANSWER_MAX] = "rdv_answer_max",
	[S_RDV_DONE_OK] = "rdv_done_ok", [S_RDV_DONE_ERR] = "rdv_done_error",
	[S_FWD_REQ_EMPTYMAP] = "fwd_req_no_devmap", [S_FWD_REQ_FULLMAP] = "fwd_req_full_devmap",
	[S_FWD_RESP] = "fwd_resp", [S_FWD_NESTED_MAX] = "fwd_nested_max_depth",
	[S_GRAD_0] = "grad_req_0", [S_GRAD_1_INLINE] = "grad_req_1_inline",
	[S_GRAD_8_SLOT] = "grad_req_8_slot", [S_GRAD_MIXED] = "grad_req_mixed",
	[S_GRAD_MANY] = "grad_req_many", [S_GRAD_RESP] = "grad_resp",
	[S_ABORT_EMPTY] = "abort_empty", [S_ABORT_TEXT] = "abort_text",
	[S_CLEANUP_0] = "cleanup_req_0", [S_CLEANUP_MAX] = "cleanup_req_max",
	[S_CLEANUP_RESP] = "cleanup_resp",
	[S_RREF_BWD_0] = "rref_bwd_req_0", [S_RREF_BWD_MAX] = "rref_bwd_req_max",
	[S_RREF_BWD_RESP] = "rref_bwd_resp",
	[S_PROF_REQ] = "prof_req", [S_PROF_REQ_ALL] = "prof_req_all_flags",
	[S_PROF_RESP_0] = "prof_resp_no_events", [S_PROF_RESP_EVENTS] = "prof_resp_events",
};

static const struct wire_env env_zero = {0, 0, 0};
static const struct wire_env env_max = {U64MAX, 0xffff, 0xffff};
static const struct wire_env env_some = {0x0001000000000042ull, 1, 3};

static bool ready;
static char long_text[WIRE_MAX_TEXT];
static char long_name[WIRE_MAX_NAME];
static uint8_t payload[1000];
static uint8_t inline_bytes[64];
static struct wire_tensor mixed[24];
static unsigned nmixed;
static struct wire_tensor slot8[8];
static struct wire_tensor many[NMANY];
static struct wire_devpair devmap[WIRE_MAX_DEVMAP];
static struct wire_prof_event events[5];
static uint8_t scratch[2][4096];

static struct wire_tensor tensor(uint8_t dtype, uint8_t loc, unsigned rank, const int64_t *dims)
{
	struct wire_tensor t = {.dtype = dtype, .rank = (uint8_t)rank, .loc = loc};
	uint64_t n = wire_dtype_size(dtype);

	for (unsigned i = 0; i < rank; i++) {
		t.shape[i] = dims[i];
		n *= (uint64_t)dims[i];
	}
	t.nbytes = n;
	switch (loc) {
	case WIRE_LOC_INLINE:
		t.u.data = inline_bytes;
		break;
	case WIRE_LOC_SLOT:
		t.u.slot.offset = 4096;
		t.u.slot.length = n + 64;
		break;
	case WIRE_LOC_RDV:
		t.u.rdv.addr = 0x7f0000001000ull;
		t.u.rdv.key = 0xabcdef;
		break;
	case WIRE_LOC_NCCL:
		t.u.nccl_tag = 77;
		break;
	default:
		break;
	}
	return t;
}

static void init(void)
{
	static const int64_t d1[] = {1}, d3[] = {3}, d8[] = {8}, d2x3[] = {2, 3}, dz[] = {4, 0, 5};
	static const int64_t d64x64[] = {64, 64}, dbig[] = {1, 2, 3, 4, 5, 6, 7, 8};
	static const int64_t dhuge[] = {INT64_MAX / 8};
	unsigned n = 0;

	if (ready)
		return;
	for (size_t i = 0; i < sizeof(long_text); i++)
		long_text[i] = (char)('a' + i % 26);
	for (size_t i = 0; i < sizeof(long_name); i++)
		long_name[i] = (char)('A' + i % 26);
	for (size_t i = 0; i < sizeof(payload); i++)
		payload[i] = (uint8_t)(i * 7 + 1);
	for (size_t i = 0; i < sizeof(inline_bytes); i++)
		inline_bytes[i] = (uint8_t)(0xa0 + i);

	/* Every dtype, every location, ranks 0..8, an empty tensor, both devices and flags. */
	mixed[n++] = tensor(WIRE_DT_F16, WIRE_LOC_INLINE, 0, NULL);             /* 2 bytes */
	mixed[n++] = tensor(WIRE_DT_BF16, WIRE_LOC_INLINE, 1, d3);              /* 6 */
	mixed[n++] = tensor(WIRE_DT_F32, WIRE_LOC_INLINE, 1, d8);               /* 32 */
	mixed[n++] = tensor(WIRE_DT_F64, WIRE_LOC_SLOT, 2, d64x64);
	mixed[n++] = tensor(WIRE_DT_I8, WIRE_LOC_INLINE, 1, d3);                /* 3 */
	mixed[n++] = tensor(WIRE_DT_I16, WIRE_LOC_RDV, 2, d2x3);
	mixed[n++] = tensor(WIRE_DT_I32, WIRE_LOC_RDV_PENDING, 8, dbig);
	mixed[n++] = tensor(WIRE_DT_I64, WIRE_LOC_NCCL, 1, d1);
	mixed[n++] = tensor(WIRE_DT_U8, WIRE_LOC_INLINE, 3, dz);                /* 0 bytes */
	mixed[n++] = tensor(WIRE_DT_BOOL, WIRE_LOC_INLINE, 1, d1);              /* 1 */
	mixed[n++] = tensor(WIRE_DT_C64, WIRE_LOC_SLOT, 1, d3);
	mixed[n++] = tensor(WIRE_DT_C128, WIRE_LOC_INLINE, 1, d1);              /* 16 */
	mixed[n++] = tensor(WIRE_DT_F8E4M3, WIRE_LOC_RDV_PENDING, 1, dhuge);
	mixed[n++] = tensor(WIRE_DT_F8E5M2, WIRE_LOC_INLINE, 1, d8);            /* 8 */
	for (unsigned i = 0; i < n; i++) {
		if (i % 3 == 1)
			mixed[i].flags = WIRE_TF_REQUIRES_GRAD;
		if (i % 4 == 3)
			{
			mixed[i].dev_type = WIRE_DEV_CUDA;
			mixed[i].dev_index = (uint16_t)(i % 2 ? 0xffff : 0);
		}
	}
	mixed[3].u.slot.offset = U64MAX - mixed[3].u.slot.length; /* slot at the arena's very end */
	nmixed = n;

	for (unsigned i = 0; i < 8; i++) {
		slot8[i] = tensor(WIRE_DT_F32, WIRE_LOC_SLOT, 2, d64x64);
		slot8[i].u.slot.offset = (uint64_t)i << 16;
		slot8[i].u.slot.length = 1u << 16;
		slot8[i].flags = WIRE_TF_REQUIRES_GRAD;
	}
	for (unsigned i = 0; i < NMANY; i++)
		many[i] = i % 5 == 0 ? tensor(WIRE_DT_F32, WIRE_LOC_INLINE, 1, d1)
				     : tensor((uint8_t)(1 + i % (WIRE_DT_COUNT_ - 1)), (uint8_t)(1 + i % 4), 1, d3);

	for (unsigned i = 0; i < WIRE_MAX_DEVMAP; i++) {
		devmap[i].from = (struct wire_device){WIRE_DEV_CUDA, (uint16_t)i};
		devmap[i].to = i % 2 ? (struct wire_device){WIRE_DEV_CPU, 0}
				     : (struct wire_device){WIRE_DEV_CUDA, (uint16_t)(0xffff - i)};
	}

	events[0] = (struct wire_prof_event){{"forward", 7}, 100, 250, 1, {WIRE_DEV_CPU, 0}};
	events[1] = (struct wire_prof_event){{NULL, 0}, 0, 0, 0, {WIRE_DEV_CPU, 0}};
	events[2] = (struct wire_prof_event){{long_name, WIRE_MAX_NAME}, 5, U64MAX, U64MAX,
					     {WIRE_DEV_CUDA, 3}};
	events[3] = (struct wire_prof_event){{"aten::mm", 8}, U64MAX, U64MAX, 42, {WIRE_DEV_CUDA, 0xffff}};
	events[4] = (struct wire_prof_event){{"x", 1}, 1, 2, 3, {WIRE_DEV_CPU, 0}};
	ready = true;
}

unsigned sample_count(void)
{
	return S_COUNT;
}

const char *sample_name(unsigned i)
{
	return i < S_COUNT ? names[i] : "?";
}

/* An inner message encoded into scratch[k], with a zero env as inner messages require. */
static const uint8_t *inner_grad(unsigned k, size_t *len)
{
	struct wire_grad_req g = {5, 6, true, 0x0001000000000003ull};

	if (wire_encode_grad_req(scratch[k], sizeof(scratch[k]), NULL, &g, slot8, 2, len))
		abort();
	return scratch[k];
}

static const uint8_t *inner_call(unsigned k, size_t *len)
{
	struct wire_call c = {{0, 0}, {"add", 3}, {payload, 16}};

	if (wire_encode_rpc_call(scratch[k], sizeof(scratch[k]), NULL, &c, mixed, 3, len))
		abort();
	return scratch[k];
}

/* FORWARD_AUTOGRAD_REQ(RUN_WITH_PROFILING_REQ(FORWARD_AUTOGRAD_RESP(RUN_WITH_PROFILING_RESP(RPC_RESP)))) */
static int nested(void *buf, size_t cap, size_t *len)
{
	static uint8_t a[1024], b[1024];
	struct wire_bytes pl = {payload, 8};
	struct wire_fwd f = {1, 2, 3, 1, devmap};
	struct wire_prof_req pr = {9, WIRE_PROF_KINETO, WIRE_PROF_SHAPES};
	size_t n;

	if (wire_encode_rpc_resp(a, sizeof(a), NULL, &pl, mixed, 1, &n) ||
	    wire_encode_prof_resp(b, sizeof(b), NULL, 9, events, 1, a, n, &n) ||
	    wire_encode_fwd_resp(a, sizeof(a), NULL, &f, b, n, &n) ||
	    wire_encode_prof_req(b, sizeof(b), NULL, &pr, a, n, &n))
		abort();
	return wire_encode_fwd_req(buf, cap, &env_some, &f, b, n, len);
}

int sample_encode(unsigned i, void *buf, size_t cap, size_t *len)
{
	size_t n;
	const uint8_t *in;

	init();
	switch (i) {
	case S_HS_MIN: {
		struct wire_handshake hs = {.max_version = 1, .worker_id = 0, .world_size = 1,
					    .max_msg = WIRE_HDR_SIZE};
		return wire_encode_handshake(buf, cap, &env_zero, &hs, len);
	}
	case S_HS_MAX: {
		struct wire_handshake hs = {0xffff, 0xfffe, 0xffff,
					    WIRE_HS_ACK | WIRE_HS_ARENA_GPU | WIRE_HS_NCCL, U64MAX,
					    0x7f0000000000ull, U64MAX, U64MAX - 0x7f0000000000ull,
					    UINT32_MAX, UINT32_MAX};
		struct wire_env e = env_max;

		e.src = 0xfffe;
		return wire_encode_handshake(buf, cap, &e, &hs, len);
	}
	case S_CREDIT_0:
		return wire_encode_credit(buf, cap, &env_zero, &(struct wire_credit){0}, len);
	case S_CREDIT_MAX:
		return wire_encode_credit(buf, cap, &env_max, &(struct wire_credit){UINT32_MAX}, len);
	case S_NCCL_ID_0:
	case S_NCCL_ID_MAX: {
		uint8_t id[WIRE_NCCL_ID_BYTES];

		/* An id is opaque: all zeros, or every byte value in turn. */
		for (unsigned k = 0; k < sizeof(id); k++)
			id[k] = i == S_NCCL_ID_0 ? 0 : (uint8_t)(0xff - k);
		return wire_encode_nccl_id(buf, cap, i == S_NCCL_ID_0 ? &env_zero : &env_max,
					   &(struct wire_nccl_id){i == S_NCCL_ID_0 ? 0 : UINT32_MAX,
								  i == S_NCCL_ID_0 ? 0 : UINT32_MAX, id},
					   len);
	}
	case S_EXC_EMPTY:
		return wire_encode_exception(buf, cap, &env_zero,
					     &(struct wire_exception){-1, 0, {NULL, 0}}, len);
	case S_EXC_TEXT: {
		static const char t[] = "Error on Node 3: unknown autograd message id 12345";
		return wire_encode_exception(buf, cap, &env_some,
					     &(struct wire_exception){RDAG_EREMOTE, 3,
								      {t, sizeof(t) - 1}}, len);
	}
	case S_EXC_LONG:
		return wire_encode_exception(buf, cap, &env_max,
					     &(struct wire_exception){INT32_MIN, 0xffff,
								      {long_text, WIRE_MAX_TEXT}}, len);
	case S_CALL_EMPTY:
		return wire_encode_rpc_call(buf, cap, &env_zero, &(struct wire_call){{0, 0}, {NULL, 0}, {NULL, 0}},
					    NULL, 0, len);
	case S_CALL_FULL:
		return wire_encode_rpc_call(buf, cap, &env_some,
					    &(struct wire_call){{0, 0}, {"my_module.add", 13}, {payload, 1000}},
					    mixed, nmixed, len);
	case S_CALL_LONGNAME:
		return wire_encode_rpc_call(buf, cap, &env_max,
					    &(struct wire_call){{0, 0}, {long_name, WIRE_MAX_NAME}, {payload, 1}},
					    slot8, 1, len);
	case S_RESP_EMPTY:
		return wire_encode_rpc_resp(buf, cap, &env_zero, &(struct wire_bytes){NULL, 0}, NULL, 0, len);
	case S_RESP_FULL:
		return wire_encode_rpc_resp(buf, cap, &env_some, &(struct wire_bytes){payload, 999}, mixed,
					    nmixed, len);
	case S_RREF_CALL_0:
		return wire_encode_rref_call(buf, cap, &env_zero,
					     &(struct wire_call){{0, 0}, {"f", 1}, {NULL, 0}}, NULL, 0, len);
	case S_RREF_CALL_MAX:
		return wire_encode_rref_call(buf, cap, &env_max,
					     &(struct wire_call){{0xffff, U64MAX}, {"make_model", 10},
								 {payload, 33}}, mixed, 4, len);
	case S_FETCH_REQ_0:
		return wire_encode_rref_fetch_req(buf, cap, &env_zero, &(struct wire_rref_id){0, 0}, len);
	case S_FETCH_REQ_MAX:
		return wire_encode_rref_fetch_req(buf, cap, &env_max,
						  &(struct wire_rref_id){0xffff, U64MAX}, len);
	case S_FETCH_RESP:
		return wire_encode_rref_fetch_resp(buf, cap, &env_some, &(struct wire_bytes){payload, 5},
						   mixed + 1, 2, len);
	case S_DELETE:
		return wire_encode_rref_delete(buf, cap, &env_some, &(struct wire_rref_id){2, 0x20000000000007ull},
					       len);
	case S_RDV_ANSWER_0:
		return wire_encode_rdv_answer(buf, cap, &env_zero, &(struct wire_rdv_answer){0}, len);
	case S_RDV_ANSWER_MAX:
		return wire_encode_rdv_answer(buf, cap, &env_max,
					      &(struct wire_rdv_answer){U64MAX, UINT32_MAX, 0, U64MAX, U64MAX},
					      len);
	case S_RDV_DONE_OK:
		return wire_encode_rdv_done(buf, cap, &env_some, &(struct wire_rdv_done){42, 3, 0}, len);
	case S_RDV_DONE_ERR:
		return wire_encode_rdv_done(buf, cap, &env_max,
					    &(struct wire_rdv_done){U64MAX, UINT32_MAX, INT32_MIN}, len);
	case S_FWD_REQ_EMPTYMAP:
		in = inner_call(0, &n);
		return wire_encode_fwd_req(buf, cap, &env_some, &(struct wire_fwd){0, 0, 0, 0, NULL}, in, n,
					   len);
	case S_FWD_REQ_FULLMAP:
		in = inner_grad(0, &n);
		return wire_encode_fwd_req(buf, cap, &env_max,
					   &(struct wire_fwd){U64MAX, U64MAX, 0xffff, WIRE_MAX_DEVMAP, devmap},
					   in, n, len);
	case S_FWD_RESP: {
		struct wire_bytes pl = {payload, 24};

		if (wire_encode_rpc_resp(scratch[0], sizeof(scratch[0]), NULL, &pl, mixed + 2, 1, &n))
			abort();
		return wire_encode_fwd_resp(buf, cap, &env_some,
					    &(struct wire_fwd){0x0002000000000001ull, 0x0002000000000005ull, 2,
							       2, devmap}, scratch[0], n, len);
	}
	case S_FWD_NESTED_MAX:
		return nested(buf, cap, len);
	case S_GRAD_0:
		return wire_encode_grad_req(buf, cap, &env_zero, &(struct wire_grad_req){0, 0, false, 0x0001000000000003ull}, NULL, 0,
					    len);
	case S_GRAD_1_INLINE:
		return wire_encode_grad_req(buf, cap, &env_some, &(struct wire_grad_req){1, 2, true, 0x0001000000000003ull}, mixed + 2,
					    1, len);
	case S_GRAD_8_SLOT:
		return wire_encode_grad_req(buf, cap, &env_some,
					    &(struct wire_grad_req){0x0001000000000007ull, 0x0001000000000031ull,
								    false, 0x0001000000000003ull}, slot8, 8, len);
	case S_GRAD_MIXED:
		return wire_encode_grad_req(buf, cap, &env_max, &(struct wire_grad_req){U64MAX, U64MAX, true, 0x0001000000000003ull},
					    mixed, nmixed, len);
	case S_GRAD_MANY:
		return wire_encode_grad_req(buf, cap, &env_some, &(struct wire_grad_req){3, 4, false, 0x0001000000000003ull}, many,
					    NMANY, len);
	case S_GRAD_RESP:
		return wire_encode_grad_resp(buf, cap, &env_some, len);
	case S_ABORT_EMPTY:
		return wire_encode_abort(buf, cap, &env_zero,
					 &(struct wire_abort){0, 0, INT32_MIN, 0, {NULL, 0}}, len);
	case S_ABORT_TEXT: {
		static const char t[] = "Error on Node 2: the local backward failed";
		return wire_encode_abort(buf, cap, &env_max,
					 &(struct wire_abort){U64MAX, 0x0002000000000007ull, RDAG_EREMOTE,
							      0xffff, {t, sizeof(t) - 1}}, len);
	}
	case S_CLEANUP_0:
		return wire_encode_cleanup_req(buf, cap, &env_zero, &(struct wire_cleanup){0}, len);
	case S_CLEANUP_MAX:
		return wire_encode_cleanup_req(buf, cap, &env_max, &(struct wire_cleanup){U64MAX}, len);
	case S_CLEANUP_RESP:
		return wire_encode_cleanup_resp(buf, cap, &env_max, len);
	case S_RREF_BWD_0:
		return wire_encode_rref_bwd_req(buf, cap, &env_zero, &(struct wire_rref_backward){{0, 0}, 0, false},
						len);
	case S_RREF_BWD_MAX:
		return wire_encode_rref_bwd_req(buf, cap, &env_max,
						&(struct wire_rref_backward){{0xffff, U64MAX}, U64MAX, true}, len);
	case S_RREF_BWD_RESP:
		return wire_encode_rref_bwd_resp(buf, cap, &env_zero, len);
	case S_PROF_REQ:
		in = inner_grad(0, &n);
		return wire_encode_prof_req(buf, cap, &env_some,
					    &(struct wire_prof_req){0x0001000000000001ull, WIRE_PROF_CPU, 0}, in,
					    n, len);
	case S_PROF_REQ_ALL:
		in = inner_call(0, &n);
		return wire_encode_prof_req(buf, cap, &env_max,
					    &(struct wire_prof_req){U64MAX, WIRE_PROF_KINETO, 0x1f}, in, n, len);
	case S_PROF_RESP_0:
		if (wire_encode_grad_resp(scratch[0], sizeof(scratch[0]), NULL, &n))
			abort();
		return wire_encode_prof_resp(buf, cap, &env_zero, 0, NULL, 0, scratch[0], n, len);
	case S_PROF_RESP_EVENTS: {
		struct wire_bytes pl = {payload, 100};

		if (wire_encode_rpc_resp(scratch[0], sizeof(scratch[0]), NULL, &pl, mixed, 2, &n))
			abort();
		return wire_encode_prof_resp(buf, cap, &env_max, U64MAX, events, 5, scratch[0], n, len);
	}
	default:
		return RDAG_EINVAL;
	}
}

uint8_t *sample_alloc(unsigned i, size_t *len)
{
	size_t need = 0;
	uint8_t *buf;

	if (sample_encode(i, NULL, 0, &need) != RDAG_ENOSPC) {
		fprintf(stderr, "sample %s: no size: %s\n", sample_name(i), rdag_last_error());
		abort();
	}
	buf = malloc(need);
	if (!buf || sample_encode(i, buf, need, len) != 0 || *len != need) {
		fprintf(stderr, "sample %s: %s\n", sample_name(i), rdag_last_error());
		abort();
	}
	return buf;
}

int sample_doc_grad_req(void *buf, size_t cap, size_t *len)
{
	static const float grad0[3] = {0.5f, -1.0f, 2.0f};
	static const int64_t d3[] = {3}, d2x2[] = {2, 2};
	struct wire_tensor t[2];
	struct wire_env env = {0x0001000000000002ull, 1, 2};
	struct wire_grad_req req = {0x0001000000000005ull, 0x0001000000000009ull, true, 0x0001000000000003ull};

	init();
	t[0] = tensor(WIRE_DT_F32, WIRE_LOC_INLINE, 1, d3);
	t[0].u.data = grad0;
	t[1] = tensor(WIRE_DT_F32, WIRE_LOC_SLOT, 2, d2x2);
	t[1].u.slot.offset = 0x100;
	t[1].u.slot.length = 16;
	t[1].dev_type = WIRE_DEV_CUDA;
	t[1].flags = WIRE_TF_REQUIRES_GRAD;
	return wire_encode_grad_req(buf, cap, &env, &req, t, 2, len);
}
