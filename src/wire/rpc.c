/* Inner RPC messages: RPC_CALL / RPC_RESP, and the rendezvous pair RDV_ANSWER / RDV_DONE. */
#include "wire/codec.h"

/*
 * RPC_CALL body: 24 u32 name_len | 28 u32 payload_len | 32 u32 ntensors | 36 u32 reserved (0)
 *   | 40 name (padded to 8) | payload (padded to 8) | tensor section.
 *   (RREF_CALL has the same fields after a 16-byte rref id at 24.)
 * RPC_RESP body: 24 u32 payload_len | 28 u32 ntensors | 32 payload (padded) | tensor section.
 *   (RREF_FETCH_RESP: same layout.)
 * RDV_ANSWER body: 24 u64 req_id | 32 u32 index | 36 u32 reserved (0) | 40 u64 addr | 48 u64 key
 *   | 56 u64 length (message 64).
 * RDV_DONE body: 24 u64 req_id | 32 u32 index | 36 i32 status (<= 0) (message 40).
 */
#define CALL_FIXED 16u
#define RESP_FIXED 32u
#define RDV_ANSWER_SIZE 64u
#define RDV_DONE_SIZE 40u

int wire_encode_call_at(uint8_t kind, size_t at, void *buf, size_t cap, const struct wire_env *env,
			const struct wire_call *c, const struct wire_tensor *tensors, uint32_t n,
			size_t *len)
{
	uint8_t *p = buf, *q;
	size_t size;
	int rc;

	rc = wire_check_bytes_arg(kind, &c->name, WIRE_MAX_NAME, "function name");
	if (rc)
		return rc;
	rc = wire_check_bytes_arg(kind, &c->payload, UINT32_MAX, "payload");
	if (rc)
		return rc;
	size = at + CALL_FIXED + pad8(c->name.len) + pad8(c->payload.len);
	rc = wire_tensors_size(kind, tensors, n, &size);
	if (rc)
		return rc;
	rc = wire_fit(kind, size, cap, len);
	if (rc)
		return rc;
	wire_put_hdr(p, kind, size, env);
	if (kind == WIRE_RREF_CALL)
		wire_put_rref(p + WIRE_HDR_SIZE, &c->rref);
	q = p + at;
	st32(q, c->name.len);
	st32(q + 4, c->payload.len);
	st32(q + 8, n);
	st32(q + 12, 0);
	q = wire_put_bytes(q + CALL_FIXED, &c->name);
	q = wire_put_bytes(q, &c->payload);
	return wire_tensors_put(kind, q, tensors, n);
}

int wire_dec_call_at(const uint8_t *q, const uint8_t *end, struct wire_msg *m)
{
	struct wire_call_view *v = &m->u.call;
	uint32_t n;
	int rc;

	if (left(q, end) < CALL_FIXED)
		return err_set(RDAG_EWIRE_TRUNCATED, "wire: %s: truncated", wire_kind_name(m->kind));
	n = ld32(q + 8);
	if (ld32(q + 12))
		return err_set(RDAG_EWIRE_FIELD, "wire: %s: non-zero reserved field",
			       wire_kind_name(m->kind));
	rc = wire_check_tensor_count(n, m);
	if (rc)
		return rc;
	{
		uint32_t name_len = ld32(q), payload_len = ld32(q + 4);

		q += CALL_FIXED;
		rc = wire_get_bytes(&q, end, name_len, WIRE_MAX_NAME, "function name", m,
				    &v->call.name);
		if (rc)
			return rc;
		rc = wire_get_bytes(&q, end, payload_len, UINT32_MAX, "payload", m, &v->call.payload);
		if (rc)
			return rc;
	}
	return wire_tensors_get(q, end, n, m, &v->tensors);
}

int wire_encode_rpc_call(void *buf, size_t cap, const struct wire_env *env,
			 const struct wire_call *c, const struct wire_tensor *tensors, uint32_t n,
			 size_t *len)
{
	return wire_encode_call_at(WIRE_RPC_CALL, WIRE_HDR_SIZE, buf, cap, env, c, tensors, n, len);
}

int wire_encode_resp_kind(uint8_t kind, void *buf, size_t cap, const struct wire_env *env,
			  const struct wire_bytes *payload, const struct wire_tensor *tensors,
			  uint32_t n, size_t *len)
{
	uint8_t *p = buf, *q;
	size_t size;
	int rc;

	rc = wire_check_bytes_arg(kind, payload, UINT32_MAX, "payload");
	if (rc)
		return rc;
	size = RESP_FIXED + pad8(payload->len);
	rc = wire_tensors_size(kind, tensors, n, &size);
	if (rc)
		return rc;
	rc = wire_fit(kind, size, cap, len);
	if (rc)
		return rc;
	wire_put_hdr(p, kind, size, env);
	st32(p + 24, payload->len);
	st32(p + 28, n);
	q = wire_put_bytes(p + RESP_FIXED, payload);
	return wire_tensors_put(kind, q, tensors, n);
}

int wire_dec_resp(const uint8_t *b, const uint8_t *end, struct wire_msg *m)
{
	struct wire_resp_view *v = &m->u.resp;
	const uint8_t *q = b + (RESP_FIXED - WIRE_HDR_SIZE);
	uint32_t n;
	int rc;

	if (left(b, end) < RESP_FIXED - WIRE_HDR_SIZE)
		return err_set(RDAG_EWIRE_TRUNCATED, "wire: %s: truncated", wire_kind_name(m->kind));
	n = ld32(b + 4);
	rc = wire_check_tensor_count(n, m);
	if (rc)
		return rc;
	rc = wire_get_bytes(&q, end, ld32(b), UINT32_MAX, "payload", m, &v->payload);
	if (rc)
		return rc;
	return wire_tensors_get(q, end, n, m, &v->tensors);
}

int wire_encode_rpc_resp(void *buf, size_t cap, const struct wire_env *env,
			 const struct wire_bytes *payload, const struct wire_tensor *tensors,
			 uint32_t n, size_t *len)
{
	return wire_encode_resp_kind(WIRE_RPC_RESP, buf, cap, env, payload, tensors, n, len);
}

int wire_encode_rdv_answer(void *buf, size_t cap, const struct wire_env *env,
			   const struct wire_rdv_answer *a, size_t *len)
{
	uint8_t *p = buf;
	int rc;

	if (a->addr + a->length < a->addr)
		return err_set(RDAG_EINVAL, "wire: RDV_ANSWER: address + length overflows");
	rc = wire_fit(WIRE_RDV_ANSWER, RDV_ANSWER_SIZE, cap, len);
	if (rc)
		return rc;
	wire_put_hdr(p, WIRE_RDV_ANSWER, RDV_ANSWER_SIZE, env);
	st64(p + 24, a->req_id);
	st32(p + 32, a->index);
	st32(p + 36, 0);
	st64(p + 40, a->addr);
	st64(p + 48, a->key);
	st64(p + 56, a->length);
	return 0;
}

int wire_encode_rdv_done(void *buf, size_t cap, const struct wire_env *env,
			 const struct wire_rdv_done *d, size_t *len)
{
	uint8_t *p = buf;
	int rc;

	if (d->status > 0)
		return err_set(RDAG_EINVAL, "wire: RDV_DONE: status %d is neither 0 nor an error",
			       (int)d->status);
	rc = wire_fit(WIRE_RDV_DONE, RDV_DONE_SIZE, cap, len);
	if (rc)
		return rc;
	wire_put_hdr(p, WIRE_RDV_DONE, RDV_DONE_SIZE, env);
	st64(p + 24, d->req_id);
	st32(p + 32, d->index);
	st32(p + 36, (uint32_t)d->status);
	return 0;
}

int wire_dec_rpc(const uint8_t *b, const uint8_t *end, struct wire_msg *m)
{
	int rc;

	switch (m->kind) {
	case WIRE_RPC_CALL:
		memset(&m->u.call.call.rref, 0, sizeof(m->u.call.call.rref));
		return wire_dec_call_at(b, end, m);
	case WIRE_RPC_RESP:
		return wire_dec_resp(b, end, m);
	case WIRE_RDV_ANSWER: {
		struct wire_rdv_answer *a = &m->u.rdv_answer;

		rc = wire_fixed(b, end, RDV_ANSWER_SIZE - WIRE_HDR_SIZE, m);
		if (rc)
			return rc;
		a->req_id = ld64(b);
		a->index = ld32(b + 8);
		a->addr = ld64(b + 16);
		a->key = ld64(b + 24);
		a->length = ld64(b + 32);
		if (ld32(b + 12))
			return err_set(RDAG_EWIRE_FIELD, "wire: RDV_ANSWER: non-zero reserved field");
		if (a->addr + a->length < a->addr)
			return err_set(RDAG_EWIRE_LENGTH, "wire: RDV_ANSWER: address + length overflows");
		return 0;
	}
	default: { /* WIRE_RDV_DONE */
		struct wire_rdv_done *d = &m->u.rdv_done;

		rc = wire_fixed(b, end, RDV_DONE_SIZE - WIRE_HDR_SIZE, m);
		if (rc)
			return rc;
		d->req_id = ld64(b);
		d->index = ld32(b + 8);
		d->status = (int32_t)ld32(b + 12);
		if (d->status > 0)
			return err_set(RDAG_EWIRE_FIELD, "wire: RDV_DONE: status %d is neither 0 nor an "
				       "error", (int)d->status);
		return 0;
	}
	}
}
