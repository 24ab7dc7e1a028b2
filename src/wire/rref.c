/* RRef messages: RREF_CALL, RREF_FETCH_REQ / _RESP, RREF_DELETE and RREF_BACKWARD_REQ / _RESP. */
#include "wire/codec.h"

/*
 * An rref id is 16 bytes: u64 local_id | u16 owner | u16 0 | u32 0.
 * RREF_CALL body: 24 rref id | 40 the RPC_CALL fields (name_len, payload_len, ntensors, 0,
 *   name, payload, tensor section).
 * RREF_FETCH_REQ, RREF_DELETE body: 24 rref id (message 40).
 * RREF_FETCH_RESP: the RPC_RESP layout.
 * RREF_BACKWARD_REQ body: 24 rref id | 40 u64 ctx_id | 48 u32 flags (WIRE_RETAIN_GRAPH)
 *   | 52 u32 reserved (0) (message 56). RREF_BACKWARD_RESP: header only.
 */
#define RREF_MSG_SIZE 40u
#define RREF_BWD_SIZE 56u

int wire_get_rref(const uint8_t *p, struct wire_msg *m, struct wire_rref_id *r)
{
	r->local_id = ld64(p);
	r->owner = ld16(p + 8);
	if (ld16(p + 10) || ld32(p + 12))
		return err_set(RDAG_EWIRE_FIELD, "wire: %s: non-zero reserved bytes in the rref id",
			       wire_kind_name(m->kind));
	return 0;
}

int wire_encode_rref_call(void *buf, size_t cap, const struct wire_env *env,
			  const struct wire_call *c, const struct wire_tensor *tensors, uint32_t n,
			  size_t *len)
{
	return wire_encode_call_at(WIRE_RREF_CALL, WIRE_HDR_SIZE + WIRE_RREF_SIZE, buf, cap, env, c,
				   tensors, n, len);
}

static int encode_rref_only(uint8_t kind, void *buf, size_t cap, const struct wire_env *env,
			    const struct wire_rref_id *id, size_t *len)
{
	uint8_t *p = buf;
	int rc = wire_fit(kind, RREF_MSG_SIZE, cap, len);

	if (rc)
		return rc;
	wire_put_hdr(p, kind, RREF_MSG_SIZE, env);
	wire_put_rref(p + WIRE_HDR_SIZE, id);
	return 0;
}

int wire_encode_rref_fetch_req(void *buf, size_t cap, const struct wire_env *env,
			       const struct wire_rref_id *id, size_t *len)
{
	return encode_rref_only(WIRE_RREF_FETCH_REQ, buf, cap, env, id, len);
}

int wire_encode_rref_delete(void *buf, size_t cap, const struct wire_env *env,
			    const struct wire_rref_id *id, size_t *len)
{
	return encode_rref_only(WIRE_RREF_DELETE, buf, cap, env, id, len);
}

int wire_encode_rref_fetch_resp(void *buf, size_t cap, const struct wire_env *env,
				const struct wire_bytes *payload, const struct wire_tensor *tensors,
				uint32_t n, size_t *len)
{
	return wire_encode_resp_kind(WIRE_RREF_FETCH_RESP, buf, cap, env, payload, tensors, n, len);
}

int wire_encode_rref_bwd_req(void *buf, size_t cap, const struct wire_env *env,
			     const struct wire_rref_backward *r, size_t *len)
{
	uint8_t *p = buf;
	int rc = wire_fit(WIRE_RREF_BACKWARD_REQ, RREF_BWD_SIZE, cap, len);

	if (rc)
		return rc;
	wire_put_hdr(p, WIRE_RREF_BACKWARD_REQ, RREF_BWD_SIZE, env);
	wire_put_rref(p + WIRE_HDR_SIZE, &r->rref);
	st64(p + 40, r->ctx_id);
	st32(p + 48, r->retain_graph ? WIRE_RETAIN_GRAPH : 0);
	st32(p + 52, 0);
	return 0;
}

int wire_encode_rref_bwd_resp(void *buf, size_t cap, const struct wire_env *env, size_t *len)
{
	return wire_encode_empty(buf, cap, WIRE_RREF_BACKWARD_RESP, env, len);
}

int wire_dec_rref(const uint8_t *b, const uint8_t *end, struct wire_msg *m)
{
	int rc;

	switch (m->kind) {
	case WIRE_RREF_CALL:
		if (left(b, end) < WIRE_RREF_SIZE)
			return err_set(RDAG_EWIRE_TRUNCATED, "wire: RREF_CALL: truncated");
		rc = wire_get_rref(b, m, &m->u.call.call.rref);
		if (rc)
			return rc;
		return wire_dec_call_at(b + WIRE_RREF_SIZE, end, m);
	case WIRE_RREF_FETCH_REQ:
	case WIRE_RREF_DELETE:
		rc = wire_fixed(b, end, RREF_MSG_SIZE - WIRE_HDR_SIZE, m);
		if (rc)
			return rc;
		return wire_get_rref(b, m, &m->u.rref);
	case WIRE_RREF_FETCH_RESP:
		return wire_dec_resp(b, end, m);
	case WIRE_RREF_BACKWARD_REQ: {
		struct wire_rref_backward *r = &m->u.rref_bwd;
		uint32_t flags;

		rc = wire_fixed(b, end, RREF_BWD_SIZE - WIRE_HDR_SIZE, m);
		if (rc)
			return rc;
		rc = wire_get_rref(b, m, &r->rref);
		if (rc)
			return rc;
		r->ctx_id = ld64(b + 16);
		flags = ld32(b + 24);
		if (flags & ~WIRE_RETAIN_GRAPH)
			return err_set(RDAG_EWIRE_FLAGS, "wire: RREF_BACKWARD_REQ: reserved flags 0x%x",
				       flags);
		if (ld32(b + 28))
			return err_set(RDAG_EWIRE_FIELD, "wire: RREF_BACKWARD_REQ: non-zero reserved "
				       "field");
		r->retain_graph = flags & WIRE_RETAIN_GRAPH;
		return 0;
	}
	default: /* WIRE_RREF_BACKWARD_RESP */
		return wire_dec_empty(b, end, m);
	}
}
