/* Unit tests of the wire codec: round trips, truncations, bit flips, buffer sizes and one error per defect. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <rdag/error.h>

#include "roundtrip.h"
#include "samples.h"
#include "wire/wire.h"

#define U64MAX UINT64_MAX

/* ---- allocation counting (test_wire links with -Wl,--wrap=malloc,calloc,realloc) ----------- */

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_realloc(void *p, size_t n);
static unsigned long allocations;

void *__wrap_malloc(size_t n)
{
	allocations++;
	return __real_malloc(n);
}

void *__wrap_calloc(size_t n, size_t size)
{
	allocations++;
	return __real_calloc(n, size);
}

void *__wrap_realloc(void *p, size_t n)
{
	allocations++;
	return __real_realloc(p, n);
}

/* ---- helpers ------------------------------------------------------------------------------- */

/* Decodes a copy of buf[0, len) in an exactly-sized heap buffer, so ASan sees any over-read. */
static int decode_exact(const uint8_t *buf, size_t len, struct wire_msg *m, uint8_t **keep)
{
	uint8_t *copy = malloc(len ? len : 1);
	int rc;

	assert_non_null(copy);
	if (len)
		memcpy(copy, buf, len);
	rc = wire_decode(copy, len, m);
	if (keep)
		*keep = copy;
	else
		free(copy);
	return rc;
}

static void put_le(uint8_t *p, uint64_t v, unsigned size)
{
	for (unsigned i = 0; i < size; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static unsigned sample_by_name(const char *name)
{
	for (unsigned i = 0; i < sample_count(); i++) {
		if (strcmp(sample_name(i), name) == 0)
			return i;
	}
	fail_msg("no sample %s", name);
	return 0;
}

static void assert_tensors_equal(const struct wire_tensor *want, uint32_t n,
				 const struct wire_tensor_list *l)
{
	struct wire_tensor_iter it;
	struct wire_tensor t;
	uint32_t i = 0;

	assert_int_equal(l->count, n);
	wire_tensors_begin(l, &it);
	while (wire_tensor_next(&it, &t)) {
		const struct wire_tensor *w = &want[i];

		assert_true(i < n);
		assert_int_equal(t.dtype, w->dtype);
		assert_int_equal(t.rank, w->rank);
		assert_int_equal(t.loc, w->loc);
		assert_int_equal(t.flags, w->flags);
		assert_int_equal(t.dev_type, w->dev_type);
		assert_int_equal(t.dev_index, w->dev_index);
		assert_true(t.nbytes == w->nbytes);
		for (unsigned d = 0; d < t.rank; d++)
			assert_true(t.shape[d] == w->shape[d]);
		switch (t.loc) {
		case WIRE_LOC_INLINE:
			/* Zero-copy and 8-aligned relative to the message (and so in memory here). */
			assert_int_equal((uintptr_t)t.u.data % WIRE_ALIGN, 0);
			assert_memory_equal(t.u.data, w->u.data, (size_t)t.nbytes);
			break;
		case WIRE_LOC_SLOT:
			assert_true(t.u.slot.offset == w->u.slot.offset);
			assert_true(t.u.slot.length == w->u.slot.length);
			break;
		case WIRE_LOC_RDV:
			assert_true(t.u.rdv.addr == w->u.rdv.addr);
			assert_true(t.u.rdv.key == w->u.rdv.key);
			break;
		case WIRE_LOC_NCCL:
			assert_true(t.u.nccl_tag == w->u.nccl_tag);
			break;
		default:
			break;
		}
		i++;
	}
	assert_int_equal(i, n);
}

/* Encodes with an encoder call `expr` (using buf, cap, &len) into an 8-aligned buffer. */
static uint64_t abuf[(1u << 20) / 8];
#define ENC(expr)                                                                                  \
	do {                                                                                       \
		uint8_t *buf = (uint8_t *)abuf;                                                    \
		size_t cap = sizeof(abuf);                                                         \
		(void)buf;                                                                         \
		(void)cap;                                                                         \
		int rc_ = (expr);                                                                  \
		if (rc_)                                                                           \
			fail_msg("%s: %d %s", #expr, rc_, rdag_last_error());                     \
	} while (0)

static int64_t dims_a[] = {2, 3}, dims_b[] = {5}, dims_z[] = {0, 7, 1};
static uint8_t bytes_a[64];

static struct wire_tensor mk(uint8_t dtype, uint8_t loc, unsigned rank, const int64_t *dims)
{
	struct wire_tensor t = {.dtype = dtype, .rank = (uint8_t)rank, .loc = loc};
	uint64_t n = wire_dtype_size(dtype);

	for (unsigned i = 0; i < rank; i++) {
		t.shape[i] = dims[i];
		n *= (uint64_t)dims[i];
	}
	t.nbytes = n;
	if (loc == WIRE_LOC_INLINE)
		t.u.data = bytes_a;
	return t;
}

/* ---- round trips with edge values ---------------------------------------------------------- */

static void every_sample_round_trips(void **state)
{
	(void)state;
	for (unsigned i = 0; i < sample_count(); i++) {
		size_t len;
		uint8_t *buf = sample_alloc(i, &len);
		int inner_rc = -1;

		assert_int_equal(len % WIRE_ALIGN, 0);
		if (rt_check(buf, len, &inner_rc) != 0 || inner_rc != 0)
			fail_msg("sample %s: %s", sample_name(i), rdag_last_error());
		free(buf);
	}
}

static void grad_req_fields(void **state)
{
	struct wire_tensor t[4];
	struct wire_grad_req in[] = {{0, 0, false, 0}, {U64MAX, U64MAX, true, U64MAX}, {1ull << 48, 7, true, (2ull << 48) | 9}};
	struct wire_env envs[] = {{0, 0, 0}, {U64MAX, 0xffff, 0xffff}, {5, 1, 2}};
	struct wire_msg m;
	size_t len;
	(void)state;

	for (size_t i = 0; i < sizeof(bytes_a); i++)
		bytes_a[i] = (uint8_t)(i * 3 + 1);
	t[0] = mk(WIRE_DT_F32, WIRE_LOC_INLINE, 2, dims_a);
	t[1] = mk(WIRE_DT_F64, WIRE_LOC_SLOT, 1, dims_b);
	t[1].u.slot.offset = U64MAX - 40;
	t[1].u.slot.length = 40;
	t[1].flags = WIRE_TF_REQUIRES_GRAD;
	t[2] = mk(WIRE_DT_BF16, WIRE_LOC_RDV, 3, dims_z);
	t[2].u.rdv.addr = U64MAX;
	t[2].u.rdv.key = 0x1234;
	t[2].dev_type = WIRE_DEV_CUDA;
	t[2].dev_index = 7;
	t[3] = mk(WIRE_DT_BOOL, WIRE_LOC_INLINE, 1, dims_b);
	for (unsigned k = 0; k < 3; k++) {
		for (uint32_t n = 0; n <= 4; n++) {
			ENC(wire_encode_grad_req(buf, cap, &envs[k], &in[k], t, n, &len));
			assert_int_equal(wire_decode(abuf, len, &m), 0);
			assert_int_equal(m.kind, WIRE_BACKWARD_AUTOGRAD_REQ);
			assert_int_equal(m.depth, 0);
			assert_int_equal(m.length, len);
			assert_true(m.env.req_id == envs[k].req_id);
			assert_int_equal(m.env.src, envs[k].src);
			assert_int_equal(m.env.credits, envs[k].credits);
			assert_true(m.u.grad.req.ctx_id == in[k].ctx_id);
			assert_true(m.u.grad.req.msg_id == in[k].msg_id);
			assert_true(m.u.grad.req.pass_id == in[k].pass_id);
			assert_int_equal(m.u.grad.req.retain_graph, in[k].retain_graph);
			assert_tensors_equal(t, n, &m.u.grad.tensors);
		}
	}
}

static void many_tensors_need_no_allocation(void **state)
{
	static struct wire_tensor t[5000];
	struct wire_grad_req g = {1, 2, false, 0x0001000000000003ull};
	struct wire_msg m;
	size_t len;
	(void)state;

	for (unsigned i = 0; i < 5000; i++) {
		t[i] = mk(WIRE_DT_I64, i % 2 ? WIRE_LOC_NCCL : WIRE_LOC_INLINE, 1, dims_b);
		t[i].u.nccl_tag = i % 2 ? i : 0;
		if (i % 2 == 0)
			t[i].u.data = bytes_a;
	}
	{
		unsigned long before = allocations;
		struct wire_tensor_iter it;
		struct wire_tensor x;
		uint32_t k = 0;

		ENC(wire_encode_grad_req(buf, cap, NULL, &g, t, 5000, &len));
		assert_int_equal(wire_decode(abuf, len, &m), 0);
		wire_tensors_begin(&m.u.grad.tensors, &it);
		while (wire_tensor_next(&it, &x))
			k++;
		assert_int_equal(k, 5000);
		/* Neither the encoder, the decoder nor the iterator allocated anything. */
		assert_int_equal(allocations, before);
	}
	assert_tensors_equal(t, 5000, &m.u.grad.tensors);

	/* Nor do they for any sample, wrapped messages included. */
	for (unsigned i = 0; i < sample_count(); i++) {
		size_t slen, n;
		uint8_t *sbuf = sample_alloc(i, &slen);
		unsigned long before = allocations;
		struct wire_msg cur, in;

		assert_int_equal(sample_encode(i, abuf, sizeof(abuf), &n), 0);
		assert_int_equal(wire_decode(sbuf, slen, &cur), 0);
		while (wire_kind_wraps(cur.kind) && wire_decode_inner(&cur, &in) == 0)
			cur = in;
		assert_int_equal(allocations, before);
		free(sbuf);
	}
	/* The counting works. */
	free(malloc(1));
	assert_true(allocations > 0);
}

static void handshake_and_credit_fields(void **state)
{
	struct wire_handshake hs = {3, 2, 4, WIRE_HS_ACK | WIRE_HS_NCCL, 0xfeedfacecafebeefull, 0x1000,
				    0x77, 1u << 20, 64, 65536};
	struct wire_env env = {0, 2, 0};
	struct wire_msg m;
	size_t len;
	(void)state;

	ENC(wire_encode_handshake(buf, cap, &env, &hs, &len));
	assert_int_equal(len, 72);
	assert_int_equal(wire_decode(abuf, len, &m), 0);
	assert_int_equal(m.kind, WIRE_HANDSHAKE);
	assert_memory_equal(&m.u.hs, &hs, sizeof(hs));
	for (unsigned k = 0; k < 2; k++) {
		struct wire_credit c = {k ? UINT32_MAX : 0};
		struct wire_env e = {k ? U64MAX : 0, k ? 0xffff : 0, k ? 0xffff : 0};

		ENC(wire_encode_credit(buf, cap, &e, &c, &len));
		assert_int_equal(wire_decode(abuf, len, &m), 0);
		assert_int_equal(m.u.credit.credits, c.credits);
		assert_int_equal(m.env.credits, e.credits);
	}
}

static void nccl_id_fields(void **state)
{
	uint8_t id[WIRE_NCCL_ID_BYTES], *p = (uint8_t *)abuf;
	struct wire_env env = {0, 1, 0};
	struct wire_msg m;
	size_t len;
	(void)state;

	for (unsigned k = 0; k < sizeof(id); k++)
		id[k] = (uint8_t)(k * 37 + 5);
	ENC(wire_encode_nccl_id(buf, cap, &env, &(struct wire_nccl_id){7, 3, id}, &len));
	assert_int_equal(len, 160);
	assert_int_equal(wire_decode(abuf, len, &m), 0);
	assert_int_equal(m.kind, WIRE_NCCL_ID);
	assert_int_equal(m.u.nccl_id.device, 7);
	assert_int_equal(m.u.nccl_id.peer_device, 3);
	assert_memory_equal(m.u.nccl_id.id, id, sizeof(id));
	/* The id is a view into the message, not a copy. */
	assert_ptr_equal(m.u.nccl_id.id, p + 32);
	/* One byte of id missing or extra: the header's length must say exactly 160. */
	p[8] = 152;
	assert_int_equal(wire_decode(abuf, 152, &m), RDAG_EWIRE_TRUNCATED);
	p[8] = 168;
	memset(p + 160, 0, 8);
	assert_int_equal(wire_decode(abuf, 168, &m), RDAG_EWIRE_TRAILING);
	assert_int_equal(wire_encode_nccl_id(abuf, sizeof(abuf), &env,
					     &(struct wire_nccl_id){0, 0, NULL}, &len), RDAG_EINVAL);
}

static void exception_fields(void **state)
{
	static char text[WIRE_MAX_TEXT];
	uint32_t lens[] = {0, 1, 7, 8, 9, WIRE_MAX_TEXT};
	struct wire_msg m;
	size_t len;
	(void)state;

	memset(text, 'e', sizeof(text));
	for (size_t k = 0; k < sizeof(lens) / sizeof(lens[0]); k++) {
		struct wire_exception e = {k % 2 ? INT32_MIN : -1, (uint16_t)(k * 0x3333), {text, lens[k]}};

		ENC(wire_encode_exception(buf, cap, NULL, &e, &len));
		assert_int_equal(wire_decode(abuf, len, &m), 0);
		assert_int_equal(m.u.exc.code, e.code);
		assert_int_equal(m.u.exc.origin, e.origin);
		assert_int_equal(m.u.exc.text.len, lens[k]);
		if (lens[k])
			assert_memory_equal(m.u.exc.text.ptr, text, lens[k]);
	}
}

static void abort_fields(void **state)
{
	static char text[WIRE_MAX_TEXT + 8];
	uint32_t lens[] = {0, 1, 7, 8, 9, WIRE_MAX_TEXT};
	struct wire_msg m;
	size_t len;
	(void)state;

	memset(text, 'a', sizeof(text));
	for (size_t k = 0; k < sizeof(lens) / sizeof(lens[0]); k++) {
		struct wire_abort ab = {k * 0x1111111111ull, U64MAX - k, k % 2 ? INT32_MIN : RDAG_EREMOTE,
					(uint16_t)(k * 0x3333), {text, lens[k]}};

		ENC(wire_encode_abort(buf, cap, NULL, &ab, &len));
		assert_int_equal(len % 8, 0);
		assert_int_equal(wire_decode(abuf, len, &m), 0);
		assert_int_equal(m.kind, WIRE_BACKWARD_ABORT);
		assert_true(m.u.abort.ctx_id == ab.ctx_id);
		assert_true(m.u.abort.pass_id == ab.pass_id);
		assert_int_equal(m.u.abort.code, ab.code);
		assert_int_equal(m.u.abort.origin, ab.origin);
		assert_int_equal(m.u.abort.text.len, lens[k]);
		if (lens[k])
			assert_memory_equal(m.u.abort.text.ptr, text, lens[k]);
	}
	/* The encoder refuses what the decoder would: a code that is not an error, a text too long. */
	{
		struct wire_abort ab = {1, 2, 0, 0, {NULL, 0}};

		assert_int_equal(wire_encode_abort(abuf, sizeof(abuf), NULL, &ab, &len), RDAG_EINVAL);
		ab.code = RDAG_EREMOTE;
		ab.text.ptr = text;
		ab.text.len = WIRE_MAX_TEXT + 1;
		assert_int_not_equal(wire_encode_abort(abuf, sizeof(abuf), NULL, &ab, &len), 0);
	}
	/* The decoder: a positive code, a non-zero reserved field. */
	{
		struct wire_abort ab = {1, 2, RDAG_EREMOTE, 3, {text, 5}};
		uint8_t *b8 = (uint8_t *)abuf;

		ENC(wire_encode_abort(buf, cap, NULL, &ab, &len));
		b8[40] = 1;
		b8[41] = b8[42] = b8[43] = 0;
		assert_int_equal(wire_decode(abuf, len, &m), RDAG_EWIRE_FIELD);
		ENC(wire_encode_abort(buf, cap, NULL, &ab, &len));
		b8[46] = 1;
		assert_int_equal(wire_decode(abuf, len, &m), RDAG_EWIRE_FIELD);
		ENC(wire_encode_abort(buf, cap, NULL, &ab, &len));
		b8[52] = 1;
		assert_int_equal(wire_decode(abuf, len, &m), RDAG_EWIRE_FIELD);
		ENC(wire_encode_abort(buf, cap, NULL, &ab, &len));
		assert_int_equal(wire_decode(abuf, len - 8, &m), RDAG_EWIRE_TRUNCATED);
	}
}

static void rpc_and_rref_fields(void **state)
{
	static char name[WIRE_MAX_NAME];
	static uint8_t payload[3000];
	struct wire_tensor t[2] = {mk(WIRE_DT_U8, WIRE_LOC_INLINE, 1, dims_b),
				   mk(WIRE_DT_I32, WIRE_LOC_RDV_PENDING, 2, dims_a)};
	struct wire_rref_id ids[] = {{0, 0}, {0xffff, U64MAX}};
	struct wire_msg m;
	size_t len;
	(void)state;

	memset(name, 'n', sizeof(name));
	for (size_t i = 0; i < sizeof(payload); i++)
		payload[i] = (uint8_t)i;
	for (unsigned k = 0; k < 2; k++) {
		struct wire_call c = {ids[k], {name, k ? WIRE_MAX_NAME : 0}, {payload, k ? 3000 : 0}};
		struct wire_bytes pl = {payload, k ? 2999 : 0};

		ENC(wire_encode_rpc_call(buf, cap, NULL, &c, t, 2 * k, &len));
		assert_int_equal(wire_decode(abuf, len, &m), 0);
		assert_int_equal(m.kind, WIRE_RPC_CALL);
		assert_int_equal(m.u.call.call.name.len, c.name.len);
		assert_int_equal(m.u.call.call.payload.len, c.payload.len);
		assert_int_equal(m.u.call.call.rref.owner, 0); /* RPC_CALL carries no rref id */
		if (k) {
			assert_memory_equal(m.u.call.call.name.ptr, name, WIRE_MAX_NAME);
			assert_memory_equal(m.u.call.call.payload.ptr, payload, 3000);
		}
		assert_tensors_equal(t, 2 * k, &m.u.call.tensors);

		ENC(wire_encode_rref_call(buf, cap, NULL, &c, t, k, &len));
		assert_int_equal(wire_decode(abuf, len, &m), 0);
		assert_int_equal(m.kind, WIRE_RREF_CALL);
		assert_int_equal(m.u.call.call.rref.owner, ids[k].owner);
		assert_true(m.u.call.call.rref.local_id == ids[k].local_id);
		assert_tensors_equal(t, k, &m.u.call.tensors);

		ENC(wire_encode_rpc_resp(buf, cap, NULL, &pl, t, 2 * k, &len));
		assert_int_equal(wire_decode(abuf, len, &m), 0);
		assert_int_equal(m.kind, WIRE_RPC_RESP);
		assert_int_equal(m.u.resp.payload.len, pl.len);
		assert_tensors_equal(t, 2 * k, &m.u.resp.tensors);

		ENC(wire_encode_rref_fetch_resp(buf, cap, NULL, &pl, t, k, &len));
		assert_int_equal(wire_decode(abuf, len, &m), 0);
		assert_int_equal(m.kind, WIRE_RREF_FETCH_RESP);
		assert_tensors_equal(t, k, &m.u.resp.tensors);

		ENC(wire_encode_rref_fetch_req(buf, cap, NULL, &ids[k], &len));
		assert_int_equal(wire_decode(abuf, len, &m), 0);
		assert_int_equal(m.kind, WIRE_RREF_FETCH_REQ);
		assert_int_equal(m.u.rref.owner, ids[k].owner);
		assert_true(m.u.rref.local_id == ids[k].local_id);

		ENC(wire_encode_rref_delete(buf, cap, NULL, &ids[k], &len));
		assert_int_equal(wire_decode(abuf, len, &m), 0);
		assert_int_equal(m.kind, WIRE_RREF_DELETE);
		assert_int_equal(m.u.rref.owner, ids[k].owner);
		assert_true(m.u.rref.local_id == ids[k].local_id);

		struct wire_rref_backward rb = {ids[k], k ? U64MAX : 0, k};
		ENC(wire_encode_rref_bwd_req(buf, cap, NULL, &rb, &len));
		assert_int_equal(wire_decode(abuf, len, &m), 0);
		assert_int_equal(m.u.rref_bwd.rref.owner, rb.rref.owner);
		assert_true(m.u.rref_bwd.rref.local_id == rb.rref.local_id);
		assert_true(m.u.rref_bwd.ctx_id == rb.ctx_id);
		assert_int_equal(m.u.rref_bwd.retain_graph, rb.retain_graph);

		struct wire_rdv_answer a = {k ? U64MAX : 0, k ? UINT32_MAX : 0, k ? 1 : 0, k ? U64MAX : 0,
					    k ? U64MAX - 1 : 0};
		ENC(wire_encode_rdv_answer(buf, cap, NULL, &a, &len));
		assert_int_equal(wire_decode(abuf, len, &m), 0);
		assert_true(m.u.rdv_answer.req_id == a.req_id && m.u.rdv_answer.index == a.index);
		assert_true(m.u.rdv_answer.addr == a.addr && m.u.rdv_answer.key == a.key);
		assert_true(m.u.rdv_answer.length == a.length);

		struct wire_rdv_done d = {k ? U64MAX : 0, k ? UINT32_MAX : 0, k ? INT32_MIN : 0};
		ENC(wire_encode_rdv_done(buf, cap, NULL, &d, &len));
		assert_int_equal(wire_decode(abuf, len, &m), 0);
		assert_true(m.u.rdv_done.req_id == d.req_id && m.u.rdv_done.index == d.index);
		assert_int_equal(m.u.rdv_done.status, d.status);

		struct wire_cleanup cl = {k ? U64MAX : 0};
		ENC(wire_encode_cleanup_req(buf, cap, NULL, &cl, &len));
		assert_int_equal(wire_decode(abuf, len, &m), 0);
		assert_true(m.u.cleanup.ctx_id == cl.ctx_id);
	}
	/* The three empty responses. */
	ENC(wire_encode_grad_resp(buf, cap, &(struct wire_env){9, 1, 2}, &len));
	assert_int_equal(len, WIRE_HDR_SIZE);
	assert_int_equal(wire_decode(abuf, len, &m), 0);
	assert_int_equal(m.kind, WIRE_BACKWARD_AUTOGRAD_RESP);
	assert_true(m.env.req_id == 9);
	ENC(wire_encode_cleanup_resp(buf, cap, NULL, &len));
	assert_int_equal(wire_decode(abuf, len, &m), 0);
	assert_int_equal(m.kind, WIRE_CLEANUP_AUTOGRAD_CONTEXT_RESP);
	ENC(wire_encode_rref_bwd_resp(buf, cap, NULL, &len));
	assert_int_equal(wire_decode(abuf, len, &m), 0);
	assert_int_equal(m.kind, WIRE_RREF_BACKWARD_RESP);
}

static void wrappers_and_nesting(void **state)
{
	static uint8_t inner[256], a[4096], b[4096];
	struct wire_devpair dm[WIRE_MAX_DEVMAP];
	struct wire_grad_req g = {11, 12, true, 0x0001000000000003ull};
	struct wire_tensor t = mk(WIRE_DT_F16, WIRE_LOC_INLINE, 1, dims_b);
	struct wire_msg m, in;
	size_t ilen, len, len2;
	(void)state;

	for (unsigned i = 0; i < WIRE_MAX_DEVMAP; i++)
		dm[i] = (struct wire_devpair){{WIRE_DEV_CUDA, (uint16_t)i}, {WIRE_DEV_CPU, 0}};
	assert_int_equal(wire_encode_grad_req(inner, sizeof(inner), NULL, &g, &t, 1, &ilen), 0);
	for (uint16_t n = 0; n <= WIRE_MAX_DEVMAP; n += 16) {
		struct wire_fwd f = {U64MAX - n, n, 0xffff, n, dm};

		/* The copying and the in-place forms give the same bytes. */
		assert_int_equal(wire_encode_fwd_req(a, sizeof(a), NULL, &f, inner, ilen, &len), 0);
		assert_int_equal(wire_fwd_prefix(&f), 48 + 8u * n);
		memcpy(b + wire_fwd_prefix(&f), inner, ilen);
		assert_int_equal(wire_encode_fwd_req(b, sizeof(b), NULL, &f, NULL, ilen, &len2), 0);
		assert_int_equal(len, len2);
		assert_memory_equal(a, b, len);

		assert_int_equal(wire_decode(a, len, &m), 0);
		assert_int_equal(m.kind, WIRE_FORWARD_AUTOGRAD_REQ);
		assert_true(m.u.fwd.ctx_id == f.ctx_id && m.u.fwd.msg_id == f.msg_id);
		assert_int_equal(m.u.fwd.from_worker, 0xffff);
		assert_int_equal(m.u.fwd.devmap.count, n);
		for (uint16_t i = 0; i < n; i++) {
			struct wire_devpair p;

			wire_devmap_get(&m.u.fwd.devmap, i, &p);
			assert_int_equal(p.from.type, WIRE_DEV_CUDA);
			assert_int_equal(p.from.index, i);
			assert_int_equal(p.to.type, WIRE_DEV_CPU);
		}
		assert_int_equal(m.u.fwd.inner.len, ilen);
		assert_ptr_equal(m.u.fwd.inner.ptr, a + wire_fwd_prefix(&f));
		assert_int_equal(wire_decode_inner(&m, &in), 0);
		assert_int_equal(in.kind, WIRE_BACKWARD_AUTOGRAD_REQ);
		assert_int_equal(in.depth, 1);
		assert_true(in.u.grad.req.ctx_id == 11);
		assert_tensors_equal(&t, 1, &in.u.grad.tensors);
	}

	/* Profiling wrappers, with events, in both forms. */
	struct wire_prof_event ev[2] = {{{"a", 1}, 1, 2, 3, {WIRE_DEV_CPU, 0}},
					{{"mm", 2}, 5, 5, 9, {WIRE_DEV_CUDA, 1}}};
	size_t prefix;

	assert_int_equal(wire_prof_resp_prefix(ev, 2, &prefix), 0);
	assert_int_equal(wire_encode_prof_resp(a, sizeof(a), NULL, 77, ev, 2, inner, ilen, &len), 0);
	memcpy(b + prefix, inner, ilen);
	assert_int_equal(wire_encode_prof_resp(b, sizeof(b), NULL, 77, ev, 2, NULL, ilen, &len2), 0);
	assert_int_equal(len, len2);
	assert_memory_equal(a, b, len);
	assert_int_equal(wire_decode(a, len, &m), 0);
	assert_true(m.u.prof_resp.prof_id == 77);
	{
		struct wire_event_iter it;
		struct wire_prof_event e;
		unsigned i = 0;

		wire_events_begin(&m.u.prof_resp.events, &it);
		while (wire_event_next(&it, &e)) {
			assert_int_equal(e.name.len, ev[i].name.len);
			assert_memory_equal(e.name.ptr, ev[i].name.ptr, e.name.len);
			assert_true(e.start_ns == ev[i].start_ns && e.end_ns == ev[i].end_ns);
			assert_true(e.thread_id == ev[i].thread_id);
			assert_int_equal(e.device.type, ev[i].device.type);
			assert_int_equal(e.device.index, ev[i].device.index);
			i++;
		}
		assert_int_equal(i, 2);
	}
	assert_int_equal(wire_decode_inner(&m, &in), 0);
	assert_int_equal(in.kind, WIRE_BACKWARD_AUTOGRAD_REQ);

	struct wire_prof_req pr = {U64MAX, WIRE_PROF_CUDA, WIRE_PROF_MEMORY | WIRE_PROF_FLOPS};
	assert_int_equal(wire_encode_prof_req(a, sizeof(a), NULL, &pr, inner, ilen, &len), 0);
	memcpy(b + wire_prof_req_prefix(), inner, ilen);
	assert_int_equal(wire_encode_prof_req(b, sizeof(b), NULL, &pr, NULL, ilen, &len2), 0);
	assert_memory_equal(a, b, len);
	assert_int_equal(wire_decode(a, len, &m), 0);
	assert_true(m.u.prof_req.req.prof_id == U64MAX);
	assert_int_equal(m.u.prof_req.req.state, WIRE_PROF_CUDA);
	assert_int_equal(m.u.prof_req.req.flags, WIRE_PROF_MEMORY | WIRE_PROF_FLOPS);

	/* Only wrappers wrap. */
	assert_int_equal(wire_decode(inner, ilen, &m), 0);
	assert_int_equal(wire_decode_inner(&m, &in), RDAG_EINVAL);
}

/* WIRE_MAX_DEPTH wrappers decode all the way down; one more is RDAG_EWIRE_NESTING. */
static void nesting_is_bounded(void **state)
{
	static uint8_t a[4096], b[4096];
	struct wire_fwd f = {1, 2, 3, 0, NULL};
	struct wire_msg m[WIRE_MAX_DEPTH + 2];
	size_t len;
	uint8_t *cur = a, *other = b;
	(void)state;

	assert_int_equal(wire_encode_cleanup_req(a, sizeof(a), NULL, &(struct wire_cleanup){5}, &len), 0);
	for (unsigned level = 1; level <= WIRE_MAX_DEPTH + 1; level++) {
		int rc;
		unsigned d;

		assert_int_equal(wire_encode_fwd_req(other, sizeof(a), NULL, &f, cur, len, &len), 0);
		uint8_t *t = cur;
		cur = other;
		other = t;
		/* `level` wrappers around the cleanup request: decode the chain. */
		rc = wire_decode(cur, len, &m[0]);
		assert_int_equal(rc, 0);
		for (d = 1; d <= level; d++) {
			rc = wire_decode_inner(&m[d - 1], &m[d]);
			if (rc)
				break;
			assert_int_equal(m[d].depth, d);
		}
		if (level <= WIRE_MAX_DEPTH) {
			assert_int_equal(rc, 0);
			assert_int_equal(m[level].kind, WIRE_CLEANUP_AUTOGRAD_CONTEXT_REQ);
			assert_true(m[level].u.cleanup.ctx_id == 5);
		} else {
			assert_int_equal(rc, RDAG_EWIRE_NESTING);
			assert_int_equal(d, WIRE_MAX_DEPTH);
		}
	}
}

/* ---- defects ------------------------------------------------------------------------------- */

static void every_truncation_is_rejected(void **state)
{
	(void)state;
	for (unsigned i = 0; i < sample_count(); i++) {
		size_t len;
		uint8_t *buf = sample_alloc(i, &len);
		struct wire_msg m;

		for (size_t n = 0; n < len; n++) {
			int rc = decode_exact(buf, n, &m, NULL);

			if (rc != RDAG_EWIRE_TRUNCATED)
				fail_msg("sample %s cut to %zu of %zu bytes: %d (%s)", sample_name(i), n, len,
					 rc, rdag_strerror(rc));
		}
		assert_int_equal(decode_exact(buf, 0, &m, NULL), RDAG_EWIRE_TRUNCATED);
		assert_int_equal(wire_decode(NULL, 0, &m), RDAG_EWIRE_TRUNCATED);
		free(buf);
	}
}

static bool is_wire_error(int rc)
{
	return rc <= RDAG_EWIRE_TRUNCATED && rc >= RDAG_EWIRE_FLAGS;
}

/* Flips one bit at a time: decode never crashes; success means a valid message (round trip). */
static void bit_flips_never_crash(void **state)
{
	unsigned long decoded = 0, rejected = 0;
	uint64_t rng = 0x9e3779b97f4a7c15ull;
	(void)state;

	for (unsigned i = 0; i < sample_count(); i++) {
		size_t len;
		uint8_t *buf = sample_alloc(i, &len);
		size_t bits = len * 8;
		/* Every bit of small samples; 20000 random bits of the large ones. */
		size_t tries = bits <= 40000 ? bits : 20000;

		for (size_t k = 0; k < tries; k++) {
			size_t bit;
			uint8_t *copy = malloc(len);
			int rc, inner_rc;

			if (bits <= 40000) {
				bit = k;
			} else {
				rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
				bit = (size_t)(rng % bits);
			}
			assert_non_null(copy);
			memcpy(copy, buf, len);
			copy[bit / 8] ^= (uint8_t)(1u << (bit % 8));
			rc = rt_check(copy, len, &inner_rc); /* abort()s if a decoded message does not round-trip */
			if (rc == 0) {
				decoded++;
				if (inner_rc && !is_wire_error(inner_rc))
					fail_msg("%s bit %zu: inner %d", sample_name(i), bit, inner_rc);
			} else {
				rejected++;
				if (!is_wire_error(rc))
					fail_msg("%s bit %zu: %d is no wire error", sample_name(i), bit, rc);
			}
			free(copy);
		}
		free(buf);
	}
	/* Both outcomes happen (ids flip into other valid ids; magic flips are refused). */
	assert_true(decoded > 0);
	assert_true(rejected > 0);
	print_message("bit flips: %lu decoded to valid messages, %lu rejected\n", decoded, rejected);
}

static void encoders_report_the_size_needed(void **state)
{
	(void)state;
	for (unsigned i = 0; i < sample_count(); i++) {
		size_t need, len;
		uint8_t *full = sample_alloc(i, &need);
		uint8_t *buf = malloc(need + 16), *canary = malloc(need + 16);

		assert_non_null(buf);
		assert_non_null(canary);
		memset(canary, 0x5a, need + 16);
		memset(buf, 0x5a, need + 16);
		for (size_t cap = 0; cap < need; cap++) {
			int rc;

			len = 0;
			rc = sample_encode(i, buf, cap, &len);
			if (rc != RDAG_ENOSPC || len != need)
				fail_msg("sample %s at cap %zu of %zu: rc %d len %zu", sample_name(i), cap, need,
					 rc, len);
			/*
			 * Nothing written at all: the whole buffer checked at every capacity, except for
			 * the few samples above 8 KiB (the longest texts), where it is checked within
			 * 4 KiB of either end and at every 61st capacity in between (the check is
			 * quadratic).
			 */
			if (need > 8192 && cap > 4096 && cap + 4096 < need && cap % 61)
				continue;
			if (memcmp(buf, canary, need + 16) != 0)
				fail_msg("sample %s at cap %zu: the encoder wrote", sample_name(i), cap);
		}
		/* Exactly enough room writes exactly the message. */
		memset(buf, 0x5a, need + 16);
		assert_int_equal(sample_encode(i, buf, need, &len), 0);
		assert_int_equal(len, need);
		assert_memory_equal(buf, full, need);
		assert_memory_equal(buf + need, canary, 16);
		free(canary);
		free(buf);
		free(full);
	}
}

struct defect {
	const char *sample;
	size_t off;        /* where to patch (SIZE_MAX: off from the end, see below) */
	unsigned size;     /* bytes patched, little-endian */
	uint64_t value;
	bool xor;          /* xor instead of store */
	int want;
	const char *what;
};

/*
 * Offsets in the samples: header 0..23; grad_req_8_slot: ctx 24, msg 32, pass 40, flags 48,
 * count 52, descriptor 0 at 56 (dtype 56, rank 57, loc 58, device type 59, device index 60,
 * flags 62, nbytes 64, dims 72 and 80, slot offset 88, slot length 96).
 */
static const struct defect defects[] = {
	{"cleanup_req_0", 0, 1, 0x01, true, RDAG_EWIRE_MAGIC, "magic"},
	{"cleanup_req_0", 3, 1, 0x80, true, RDAG_EWIRE_MAGIC, "magic high byte"},
	{"cleanup_req_0", 4, 1, 2, false, RDAG_EWIRE_VERSION, "version 2"},
	{"cleanup_req_0", 4, 1, 0, false, RDAG_EWIRE_VERSION, "version 0"},
	{"cleanup_req_0", 5, 1, 0x7f, false, RDAG_EWIRE_KIND, "kind 0x7f"},
	{"cleanup_req_0", 5, 1, 0x00, false, RDAG_EWIRE_KIND, "kind 0"},
	{"cleanup_req_0", 6, 2, 0x8000, false, RDAG_EWIRE_FLAGS, "header flags"},
	{"cleanup_req_0", 8, 4, 16, false, RDAG_EWIRE_LENGTH, "length below a header"},
	{"cleanup_req_0", 8, 4, 33, false, RDAG_EWIRE_LENGTH, "length not a multiple of 8"},
	{"cleanup_req_0", 8, 4, 40, false, RDAG_EWIRE_TRUNCATED, "length beyond the buffer"},
	{"cleanup_req_0", 8, 4, 24, false, RDAG_EWIRE_TRAILING, "length short of the buffer"},
	{"cleanup_req_0", 8, 4, 0xfffffff8u, false, RDAG_EWIRE_TRUNCATED, "huge length"},
	{"handshake_min", 5, 1, WIRE_CREDIT, false, RDAG_EWIRE_TRAILING, "handshake read as credit"},
	{"credit_0", 5, 1, WIRE_HANDSHAKE, false, RDAG_EWIRE_TRUNCATED, "credit read as handshake"},
	{"credit_0", 28, 4, 1, false, RDAG_EWIRE_FIELD, "credit reserved"},
	{"handshake_min", 24, 2, 0, false, RDAG_EWIRE_FIELD, "handshake version 0"},
	{"handshake_min", 26, 2, 1, false, RDAG_EWIRE_FIELD, "handshake worker != sender"},
	{"handshake_min", 28, 2, 0, false, RDAG_EWIRE_FIELD, "handshake world size 0"},
	{"handshake_min", 30, 2, 0x0100, false, RDAG_EWIRE_FLAGS, "handshake flags"},
	{"handshake_min", 40, 8, 0x1000, false, RDAG_EWIRE_FIELD, "arena address without size"},
	{"handshake_max", 56, 8, U64MAX, false, RDAG_EWIRE_LENGTH, "arena address + size overflow"},
	{"handshake_min", 68, 4, 8, false, RDAG_EWIRE_FIELD, "max message below a header"},
	{"exception_text", 24, 4, 0, false, RDAG_EWIRE_FIELD, "exception code 0"},
	{"exception_text", 30, 2, 1, false, RDAG_EWIRE_FIELD, "exception reserved"},
	{"exception_text", 32, 4, WIRE_MAX_TEXT + 1, false, RDAG_EWIRE_COUNT, "text above its limit"},
	{"exception_text", 32, 4, 1000, false, RDAG_EWIRE_TRUNCATED, "text past the end"},
	{"exception_text", 32, 4, 49, false, RDAG_EWIRE_FIELD, "text padding not zero"},
	{"exception_text", 32, 4, 8, false, RDAG_EWIRE_TRAILING, "text shorter than its room"},
	{"grad_req_8_slot", 48, 4, 2, false, RDAG_EWIRE_FLAGS, "grad flags"},
	{"grad_req_8_slot", 52, 4, WIRE_MAX_TENSORS + 1, false, RDAG_EWIRE_COUNT, "tensor count"},
	{"grad_req_8_slot", 52, 4, 9, false, RDAG_EWIRE_TRUNCATED, "one tensor too many"},
	{"grad_req_8_slot", 52, 4, 7, false, RDAG_EWIRE_TRAILING, "one tensor too few"},
	{"grad_req_8_slot", 56, 1, 0, false, RDAG_EWIRE_DTYPE, "dtype 0"},
	{"grad_req_8_slot", 56, 1, WIRE_DT_COUNT_, false, RDAG_EWIRE_DTYPE, "dtype unknown"},
	{"grad_req_8_slot", 57, 1, 9, false, RDAG_EWIRE_COUNT, "rank 9"},
	{"grad_req_8_slot", 57, 1, 1, false, RDAG_EWIRE_SHAPE, "rank 1 of a 2-d tensor"},
	{"grad_req_8_slot", 58, 1, WIRE_LOC_COUNT_, false, RDAG_EWIRE_LOCATION, "location unknown"},
	{"grad_req_8_slot", 59, 1, 2, false, RDAG_EWIRE_DEVICE, "device type unknown"},
	{"grad_req_8_slot", 60, 2, 1, false, RDAG_EWIRE_FIELD, "cpu device 1"},
	{"grad_req_8_slot", 62, 2, 0x0003, false, RDAG_EWIRE_FLAGS, "tensor flags"},
	{"grad_req_8_slot", 64, 8, 4 * 64 * 64 + 4, false, RDAG_EWIRE_SHAPE, "nbytes != shape"},
	{"grad_req_8_slot", 72, 8, (uint64_t)-64, false, RDAG_EWIRE_SHAPE, "negative dim"},
	{"grad_req_8_slot", 72, 8, 1ull << 62, false, RDAG_EWIRE_SHAPE, "shape product overflow"},
	{"grad_req_8_slot", 88, 8, U64MAX, false, RDAG_EWIRE_LENGTH, "slot offset + length overflow"},
	{"grad_req_8_slot", 96, 8, 100, false, RDAG_EWIRE_FIELD, "slot smaller than the tensor"},
	{"grad_req_1_inline", 64, 8, 36, false, RDAG_EWIRE_SHAPE, "inline nbytes != shape"},
	{"grad_req_1_inline", 72, 8, 1000, false, RDAG_EWIRE_SHAPE, "inline dim changed"},
	{"fwd_req_no_devmap", 42, 2, WIRE_MAX_DEVMAP + 1, false, RDAG_EWIRE_COUNT, "device-map count"},
	{"fwd_req_no_devmap", 44, 4, 1, false, RDAG_EWIRE_FIELD, "forward reserved"},
	{"fwd_req_full_devmap", 48, 1, 5, false, RDAG_EWIRE_DEVICE, "device-map device type"},
	{"fwd_req_full_devmap", 49, 1, 1, false, RDAG_EWIRE_FIELD, "device-map reserved byte"},
	{"fwd_req_full_devmap", 52, 1, WIRE_DEV_CPU, false, RDAG_EWIRE_FIELD, "device-map cpu:1"},
	{"rref_bwd_req_0", 34, 2, 1, false, RDAG_EWIRE_FIELD, "rref id reserved"},
	{"rref_bwd_req_0", 48, 4, 4, false, RDAG_EWIRE_FLAGS, "rref backward flags"},
	{"rref_bwd_req_0", 52, 4, 4, false, RDAG_EWIRE_FIELD, "rref backward reserved"},
	{"rdv_answer_max", 36, 4, 1, false, RDAG_EWIRE_FIELD, "rdv answer reserved"},
	{"rdv_done_ok", 36, 4, 1, false, RDAG_EWIRE_FIELD, "rdv done positive status"},
	{"prof_req", 32, 1, 0, false, RDAG_EWIRE_FIELD, "profiler state 0"},
	{"prof_req", 32, 1, 9, false, RDAG_EWIRE_FIELD, "profiler state unknown"},
	{"prof_req", 34, 2, 0x40, false, RDAG_EWIRE_FLAGS, "profiler flags"},
	{"prof_resp_events", 32, 4, WIRE_MAX_EVENTS + 1, false, RDAG_EWIRE_COUNT, "event count"},
	{"prof_resp_events", 40, 8, 1000, false, RDAG_EWIRE_FIELD, "event ends before it starts"},
	{"prof_resp_events", 68, 4, WIRE_MAX_NAME + 1, false, RDAG_EWIRE_COUNT, "event name length"},
	{"rpc_call_tensors", 36, 4, 1, false, RDAG_EWIRE_FIELD, "call reserved"},
	{"rpc_call_tensors", 24, 4, WIRE_MAX_NAME + 1, false, RDAG_EWIRE_COUNT, "function name length"},
	{"rpc_call_tensors", 32, 4, WIRE_MAX_TENSORS + 1, false, RDAG_EWIRE_COUNT, "call tensor count"},
	{"rpc_call_tensors", 28, 4, 0x7fffffff, false, RDAG_EWIRE_TRUNCATED, "payload past the end"},
	{"rpc_resp_tensors", 28, 4, WIRE_MAX_TENSORS + 1, false, RDAG_EWIRE_COUNT, "resp tensor count"},
};

static void each_defect_has_its_error(void **state)
{
	(void)state;
	for (size_t k = 0; k < sizeof(defects) / sizeof(defects[0]); k++) {
		const struct defect *d = &defects[k];
		size_t len;
		uint8_t *buf = sample_alloc(sample_by_name(d->sample), &len);
		struct wire_msg m;
		int rc;

		assert_int_equal(wire_decode(buf, len, &m), 0);
		if (d->xor) {
			buf[d->off] ^= (uint8_t)d->value;
		} else {
			put_le(buf + d->off, d->value, d->size);
		}
		rc = decode_exact(buf, len, &m, NULL);
		if (rc != d->want)
			fail_msg("%s (%s): got %d (%s), want %d (%s): %s", d->what, d->sample, rc,
				 rdag_strerror(rc), d->want, rdag_strerror(d->want), rdag_last_error());
		free(buf);
	}
}

/* Defects that need more than a patch: trailing bytes, inner messages, inline padding. */
static void structural_defects(void **state)
{
	static uint8_t a[4096], b[4096];
	struct wire_msg m, in;
	size_t len, ilen;
	uint8_t *buf;
	(void)state;

	/* A valid message followed by anything: trailing. */
	buf = sample_alloc(sample_by_name("grad_req_8_slot"), &len);
	memcpy(a, buf, len);
	memset(a + len, 0, 8);
	assert_int_equal(decode_exact(a, len + 8, &m, NULL), RDAG_EWIRE_TRAILING);
	/* The header claims 8 more bytes and they are there: trailing inside the body. */
	put_le(a + 8, len + 8, 4);
	assert_int_equal(decode_exact(a, len + 8, &m, NULL), RDAG_EWIRE_TRAILING);
	free(buf);
	buf = sample_alloc(sample_by_name("cleanup_resp"), &len);
	memcpy(a, buf, len);
	memset(a + len, 0, 8);
	put_le(a + 8, len + 8, 4);
	assert_int_equal(decode_exact(a, len + 8, &m, NULL), RDAG_EWIRE_TRAILING);
	free(buf);

	/* Inline padding must be zero: grad_req_1_inline holds 32 bytes, so append a tensor of 3. */
	{
		struct wire_tensor t = mk(WIRE_DT_U8, WIRE_LOC_INLINE, 1, (int64_t[]){3});

		assert_int_equal(wire_encode_grad_req(a, sizeof(a), NULL, &(struct wire_grad_req){1, 2, 0, 0x0001000000000003ull},
						      &t, 1, &len), 0);
		assert_int_equal(len, 56 + 24 + 8);
		a[56 + 24 + 5] = 1; /* a padding byte after the 3 inline bytes */
		assert_int_equal(decode_exact(a, len, &m, NULL), RDAG_EWIRE_FIELD);
		/* Inline bytes that run past the end. */
		a[56 + 24 + 5] = 0;
		put_le(a + 64, 16, 8);
		put_le(a + 72, 16, 8);
		assert_int_equal(decode_exact(a, len, &m, NULL), RDAG_EWIRE_TRUNCATED);
	}

	/* An inner message must carry a zero env: the encoder refuses, the decoders too. */
	assert_int_equal(wire_encode_cleanup_req(b, sizeof(b), &(struct wire_env){1, 0, 0},
						 &(struct wire_cleanup){3}, &ilen), 0);
	assert_int_equal(wire_encode_fwd_req(a, sizeof(a), NULL, &(struct wire_fwd){0}, b, ilen, &len),
			 RDAG_EINVAL);
	assert_int_equal(wire_decode(b, ilen, &m), 0); /* fine at the top level */
	for (unsigned off = 12; off < 24; off += 2) {
		assert_int_equal(wire_encode_cleanup_req(b, sizeof(b), NULL, &(struct wire_cleanup){3}, &ilen), 0);
		assert_int_equal(wire_encode_fwd_req(a, sizeof(a), NULL, &(struct wire_fwd){0}, b, ilen, &len), 0);
		a[48 + off] = 1;
		assert_int_equal(decode_exact(a, len, &m, NULL), RDAG_EWIRE_FIELD);
	}
	/* A wrapper with less than a header left for its inner message. */
	assert_int_equal(wire_encode_fwd_req(a, sizeof(a), NULL, &(struct wire_fwd){0}, b, ilen, &len), 0);
	put_le(a + 8, 48 + 16, 4);
	assert_int_equal(decode_exact(a, 48 + 16, &m, NULL), RDAG_EWIRE_TRUNCATED);
	/* The wrapper checks its inner message's header: length, magic, version, kind, flags. */
	assert_int_equal(wire_encode_cleanup_req(b, sizeof(b), NULL, &(struct wire_cleanup){3}, &ilen), 0);
	assert_int_equal(wire_encode_fwd_req(a, sizeof(a), NULL, &(struct wire_fwd){0}, b, ilen, &len), 0);
	put_le(a + 48 + 8, 24, 4);
	assert_int_equal(decode_exact(a, len, &m, NULL), RDAG_EWIRE_TRAILING);
	put_le(a + 48 + 8, 40, 4);
	assert_int_equal(decode_exact(a, len, &m, NULL), RDAG_EWIRE_TRUNCATED);
	put_le(a + 48 + 8, 32, 4);
	a[48] ^= 0xff;
	assert_int_equal(decode_exact(a, len, &m, NULL), RDAG_EWIRE_MAGIC);
	a[48] ^= 0xff;
	a[48 + 4] = 3;
	assert_int_equal(decode_exact(a, len, &m, NULL), RDAG_EWIRE_VERSION);
	a[48 + 4] = WIRE_VERSION;
	a[48 + 5] = 0xee;
	assert_int_equal(decode_exact(a, len, &m, NULL), RDAG_EWIRE_KIND);
	a[48 + 5] = WIRE_CLEANUP_AUTOGRAD_CONTEXT_REQ;
	a[48 + 6] = 1;
	assert_int_equal(decode_exact(a, len, &m, NULL), RDAG_EWIRE_FLAGS);
	a[48 + 6] = 0;
	/* The header is fine but the inner body is not: only wire_decode_inner() sees that. */
	assert_int_equal(wire_encode_cleanup_resp(b, sizeof(b), NULL, &ilen), 0);
	assert_int_equal(wire_encode_fwd_req(a, sizeof(a), NULL, &(struct wire_fwd){0}, b, ilen, &len), 0);
	put_le(a + 48 + 8, 32, 4); /* a cleanup response with 8 body bytes */
	put_le(a + 8, len + 8, 4);
	memset(a + len, 0, 8);
	assert_int_equal(decode_exact(a, len + 8, &m, NULL), 0);
	assert_int_equal(wire_decode(a, len + 8, &m), 0);
	assert_int_equal(wire_decode_inner(&m, &in), RDAG_EWIRE_TRAILING);
	/* In-place encoding checks the inner header where it lies. */
	memset(a, 0, 256);
	assert_int_equal(wire_encode_fwd_req(a, sizeof(a), NULL, &(struct wire_fwd){0}, NULL, 32, &len),
			 RDAG_EINVAL);

	/* A rendezvous answer whose address + length wraps. */
	buf = sample_alloc(sample_by_name("rdv_answer_0"), &len);
	put_le(buf + 40, U64MAX, 8);
	put_le(buf + 56, 2, 8);
	assert_int_equal(decode_exact(buf, len, &m, NULL), RDAG_EWIRE_LENGTH);
	free(buf);

	/* wire_peek: header only, shorter buffers fine. */
	{
		uint8_t kind;
		uint32_t total;

		buf = sample_alloc(sample_by_name("grad_req_mixed"), &len);
		assert_int_equal(wire_peek(buf, WIRE_HDR_SIZE, &kind, &total), 0);
		assert_int_equal(kind, WIRE_BACKWARD_AUTOGRAD_REQ);
		assert_int_equal(total, len);
		assert_int_equal(wire_peek(buf, WIRE_HDR_SIZE - 1, &kind, &total), RDAG_EWIRE_TRUNCATED);
		buf[4] = 9;
		assert_int_equal(wire_peek(buf, len, &kind, &total), RDAG_EWIRE_VERSION);
		free(buf);
	}
}

/* Decoding does not depend on the buffer's alignment (loads go through memcpy). */
static void unaligned_buffers(void **state)
{
	static uint8_t raw[1 << 17];
	(void)state;

	for (unsigned i = 0; i < sample_count(); i++) {
		size_t len;
		uint8_t *buf = sample_alloc(i, &len);

		if (len + 8 > sizeof(raw)) {
			free(buf);
			continue;
		}
		for (unsigned shift = 1; shift < 8; shift += 3) {
			int inner_rc;

			memcpy(raw + shift, buf, len);
			assert_int_equal(rt_check(raw + shift, len, &inner_rc), 0);
			assert_int_equal(inner_rc, 0);
		}
		free(buf);
	}
}

/* ---- encoder input validation -------------------------------------------------------------- */

static void encoders_refuse_invalid_input(void **state)
{
	static uint8_t buf[4096];
	struct wire_grad_req g = {1, 2, false, 0x0001000000000003ull};
	struct wire_tensor ok = mk(WIRE_DT_F32, WIRE_LOC_SLOT, 2, dims_a), t;
	size_t len;
	(void)state;

	ok.u.slot.length = ok.nbytes;
	assert_int_equal(wire_encode_grad_req(buf, sizeof(buf), NULL, &g, &ok, 1, &len), 0);
#define BAD(field_change, code)                                                                    \
	do {                                                                                       \
		t = ok;                                                                            \
		field_change;                                                                      \
		assert_int_equal(wire_encode_grad_req(buf, sizeof(buf), NULL, &g, &t, 1, &len), code); \
	} while (0)
	BAD(t.dtype = 0, RDAG_EINVAL);
	BAD(t.dtype = WIRE_DT_COUNT_, RDAG_EINVAL);
	BAD(t.rank = 9, RDAG_EINVAL);
	BAD(t.loc = WIRE_LOC_COUNT_, RDAG_EINVAL);
	BAD(t.dev_type = 2, RDAG_EINVAL);
	BAD(t.dev_index = 1, RDAG_EINVAL);
	BAD(t.flags = 2, RDAG_EINVAL);
	BAD(t.nbytes++, RDAG_EINVAL);
	BAD(t.shape[0] = -2, RDAG_EINVAL);
	BAD((t.shape[0] = INT64_MAX, t.shape[1] = INT64_MAX), RDAG_EINVAL);
	BAD(t.u.slot.length = t.nbytes - 1, RDAG_EINVAL);
	BAD(t.u.slot.offset = U64MAX, RDAG_EINVAL);
	BAD((t.loc = WIRE_LOC_INLINE, t.u.data = NULL), RDAG_EINVAL);
	BAD((t.loc = WIRE_LOC_RDV, t.u.rdv.addr = U64MAX), RDAG_EINVAL);
	BAD((t.loc = WIRE_LOC_INLINE, t.dtype = WIRE_DT_U8, t.rank = 1, t.shape[0] = 1ll << 33,
	     t.nbytes = 1ull << 33, t.u.data = buf), RDAG_EOVERFLOW);
#undef BAD
	assert_int_equal(wire_encode_grad_req(buf, sizeof(buf), NULL, &g, NULL, 1, &len), RDAG_EINVAL);
	assert_int_equal(wire_encode_grad_req(buf, sizeof(buf), NULL, &g, &ok, WIRE_MAX_TENSORS + 1, &len),
			 RDAG_EINVAL);

	struct wire_handshake hs = {1, 0, 1, 0, 0, 0, 0, 0, 0, 64};
	assert_int_equal(wire_encode_handshake(buf, sizeof(buf), NULL, &hs, &len), 0);
	hs.world_size = 0;
	assert_int_equal(wire_encode_handshake(buf, sizeof(buf), NULL, &hs, &len), RDAG_EINVAL);
	hs.world_size = 1;
	assert_int_equal(wire_encode_handshake(buf, sizeof(buf), &(struct wire_env){0, 1, 0}, &hs, &len),
			 RDAG_EINVAL);
	hs.flags = 0x100;
	assert_int_equal(wire_encode_handshake(buf, sizeof(buf), NULL, &hs, &len), RDAG_EINVAL);

	assert_int_equal(wire_encode_exception(buf, sizeof(buf), NULL,
					       &(struct wire_exception){0, 0, {"x", 1}}, &len), RDAG_EINVAL);
	assert_int_equal(wire_encode_exception(buf, sizeof(buf), NULL,
					       &(struct wire_exception){-1, 0, {NULL, 1}}, &len), RDAG_EINVAL);
	assert_int_equal(wire_encode_exception(buf, sizeof(buf), NULL,
					       &(struct wire_exception){-1, 0, {buf, WIRE_MAX_TEXT + 1}}, &len),
			 RDAG_EINVAL);
	assert_int_equal(wire_encode_rpc_call(buf, sizeof(buf), NULL,
					      &(struct wire_call){{0, 0}, {buf, WIRE_MAX_NAME + 1}, {0}}, NULL,
					      0, &len), RDAG_EINVAL);
	assert_int_equal(wire_encode_rdv_done(buf, sizeof(buf), NULL, &(struct wire_rdv_done){0, 0, 1}, &len),
			 RDAG_EINVAL);
	assert_int_equal(wire_encode_rdv_answer(buf, sizeof(buf), NULL,
						&(struct wire_rdv_answer){0, 0, U64MAX, 0, 2}, &len),
			 RDAG_EINVAL);

	uint8_t inner[32];
	struct wire_devpair bad = {{WIRE_DEV_CPU, 3}, {WIRE_DEV_CPU, 0}};
	assert_int_equal(wire_encode_cleanup_req(inner, sizeof(inner), NULL, &(struct wire_cleanup){1},
						 &len), 0);
	assert_int_equal(wire_encode_fwd_req(buf, sizeof(buf), NULL, &(struct wire_fwd){0, 0, 0, 1, &bad},
					     inner, 32, &len), RDAG_EINVAL);
	assert_int_equal(wire_encode_fwd_req(buf, sizeof(buf), NULL,
					     &(struct wire_fwd){0, 0, 0, WIRE_MAX_DEVMAP + 1, &bad}, inner, 32,
					     &len), RDAG_EINVAL);
	assert_int_equal(wire_encode_fwd_req(buf, sizeof(buf), NULL, &(struct wire_fwd){0}, inner, 16, &len),
			 RDAG_EINVAL);
	assert_int_equal(wire_encode_fwd_req(buf, sizeof(buf), NULL, &(struct wire_fwd){0}, inner, 36, &len),
			 RDAG_EINVAL);
	assert_int_equal(wire_encode_prof_req(buf, sizeof(buf), NULL, &(struct wire_prof_req){1, 0, 0},
					      inner, 32, &len), RDAG_EINVAL);
	assert_int_equal(wire_encode_prof_req(buf, sizeof(buf), NULL,
					      &(struct wire_prof_req){1, WIRE_PROF_CPU, 0x20}, inner, 32, &len),
			 RDAG_EINVAL);
	struct wire_prof_event ev = {{"e", 1}, 5, 4, 0, {WIRE_DEV_CPU, 0}};
	assert_int_equal(wire_encode_prof_resp(buf, sizeof(buf), NULL, 1, &ev, 1, inner, 32, &len),
			 RDAG_EINVAL);
	/* Messages above 4 GiB cannot be described by the u32 length. */
	{
		static uint8_t one;
		struct wire_bytes huge = {&one, UINT32_MAX};

		assert_int_equal(wire_encode_rpc_resp(NULL, 0, NULL, &huge, NULL, 0, &len), RDAG_EOVERFLOW);
	}
}

static void helpers(void **state)
{
	(void)state;
	assert_int_equal(wire_dtype_size(WIRE_DT_F16), 2);
	assert_int_equal(wire_dtype_size(WIRE_DT_BF16), 2);
	assert_int_equal(wire_dtype_size(WIRE_DT_F32), 4);
	assert_int_equal(wire_dtype_size(WIRE_DT_F64), 8);
	assert_int_equal(wire_dtype_size(WIRE_DT_I32), 4);
	assert_int_equal(wire_dtype_size(WIRE_DT_I64), 8);
	assert_int_equal(wire_dtype_size(WIRE_DT_U8), 1);
	assert_int_equal(wire_dtype_size(WIRE_DT_BOOL), 1);
	assert_int_equal(wire_dtype_size(WIRE_DT_C128), 16);
	assert_int_equal(wire_dtype_size(0), 0);
	assert_int_equal(wire_dtype_size(255), 0);
	assert_string_equal(wire_kind_name(WIRE_BACKWARD_AUTOGRAD_REQ), "BACKWARD_AUTOGRAD_REQ");
	assert_string_equal(wire_kind_name(0xee), "UNKNOWN");
	assert_true(wire_kind_wraps(WIRE_FORWARD_AUTOGRAD_RESP));
	assert_false(wire_kind_wraps(WIRE_RPC_CALL));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(every_sample_round_trips),
		cmocka_unit_test(grad_req_fields),
		cmocka_unit_test(many_tensors_need_no_allocation),
		cmocka_unit_test(handshake_and_credit_fields),
		cmocka_unit_test(nccl_id_fields),
		cmocka_unit_test(exception_fields),
		cmocka_unit_test(abort_fields),
		cmocka_unit_test(rpc_and_rref_fields),
		cmocka_unit_test(wrappers_and_nesting),
		cmocka_unit_test(nesting_is_bounded),
		cmocka_unit_test(every_truncation_is_rejected),
		cmocka_unit_test(bit_flips_never_crash),
		cmocka_unit_test(encoders_report_the_size_needed),
		cmocka_unit_test(each_defect_has_its_error),
		cmocka_unit_test(structural_defects),
		cmocka_unit_test(unaligned_buffers),
		cmocka_unit_test(encoders_refuse_invalid_input),
		cmocka_unit_test(helpers),
	};

	return cmocka_run_group_tests_name("wire", tests, NULL, NULL);
}
