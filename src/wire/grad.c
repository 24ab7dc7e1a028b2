/* BACKWARD_AUTOGRAD_REQ (PropagateGradientsReq: gradients of a distributed backward pass) / _RESP,
 * and BACKWARD_ABORT (a failed pass, stopped on every worker of its context). */
#include "wire/codec.h"

/*
 * BACKWARD_AUTOGRAD_REQ body: 24 u64 ctx_id | 32 u64 msg_id | 40 u64 pass_id
 *   | 48 u32 flags (WIRE_RETAIN_GRAPH) | 52 u32 ntensors | 56 tensor section (descriptors, then
 *   inline bytes).
 * BACKWARD_AUTOGRAD_RESP: header only.
 * BACKWARD_ABORT body: 24 u64 ctx_id | 32 u64 pass_id | 40 i32 code (< 0) | 44 u16 origin
 *   | 46 u16 reserved (0) | 48 u32 text_len | 52 u32 reserved (0) | 56 text, zero-padded to 8.
 */
#define GRAD_FIXED 56u
#define ABORT_FIXED 56u

int wire_encode_grad_req(void *buf, size_t cap, const struct wire_env *env,
			 const struct wire_grad_req *req, const struct wire_tensor *tensors,
			 uint32_t n, size_t *len)
{
	uint8_t *p = buf;
	size_t size = GRAD_FIXED;
	int rc;

	rc = wire_tensors_size(WIRE_BACKWARD_AUTOGRAD_REQ, tensors, n, &size);
	if (rc)
		return rc;
	rc = wire_fit(WIRE_BACKWARD_AUTOGRAD_REQ, size, cap, len);
	if (rc)
		return rc;
	wire_put_hdr(p, WIRE_BACKWARD_AUTOGRAD_REQ, size, env);
	st64(p + 24, req->ctx_id);
	st64(p + 32, req->msg_id);
	st64(p + 40, req->pass_id);
	st32(p + 48, req->retain_graph ? WIRE_RETAIN_GRAPH : 0);
	st32(p + 52, n);
	return wire_tensors_put(WIRE_BACKWARD_AUTOGRAD_REQ, p + GRAD_FIXED, tensors, n);
}

int wire_encode_grad_resp(void *buf, size_t cap, const struct wire_env *env, size_t *len)
{
	return wire_encode_empty(buf, cap, WIRE_BACKWARD_AUTOGRAD_RESP, env, len);
}

int wire_encode_abort(void *buf, size_t cap, const struct wire_env *env,
		      const struct wire_abort *ab, size_t *len)
{
	uint8_t *p = buf;
	int rc;

	if (ab->code >= 0)
		return err_set(RDAG_EINVAL, "wire: BACKWARD_ABORT: code %d is not an error",
			       (int)ab->code);
	rc = wire_check_bytes_arg(WIRE_BACKWARD_ABORT, &ab->text, WIRE_MAX_TEXT, "error text");
	if (rc)
		return rc;
	rc = wire_fit(WIRE_BACKWARD_ABORT, ABORT_FIXED + pad8(ab->text.len), cap, len);
	if (rc)
		return rc;
	wire_put_hdr(p, WIRE_BACKWARD_ABORT, *len, env);
	st64(p + 24, ab->ctx_id);
	st64(p + 32, ab->pass_id);
	st32(p + 40, (uint32_t)ab->code);
	st16(p + 44, ab->origin);
	st16(p + 46, 0);
	st32(p + 48, ab->text.len);
	st32(p + 52, 0);
	wire_put_bytes(p + ABORT_FIXED, &ab->text);
	return 0;
}

static int dec_abort(const uint8_t *b, const uint8_t *end, struct wire_msg *m)
{
	const uint8_t *p = b - WIRE_HDR_SIZE, *q = p + ABORT_FIXED;
	struct wire_abort *ab = &m->u.abort;
	int rc;

	if (left(b, end) < ABORT_FIXED - WIRE_HDR_SIZE)
		return err_set(RDAG_EWIRE_TRUNCATED, "wire: BACKWARD_ABORT: truncated");
	ab->ctx_id = ld64(p + 24);
	ab->pass_id = ld64(p + 32);
	ab->code = (int32_t)ld32(p + 40);
	ab->origin = ld16(p + 44);
	if (ab->code >= 0)
		return err_set(RDAG_EWIRE_FIELD, "wire: BACKWARD_ABORT: code %d is not an error",
			       (int)ab->code);
	if (ld16(p + 46) || ld32(p + 52))
		return err_set(RDAG_EWIRE_FIELD, "wire: BACKWARD_ABORT: non-zero reserved field");
	rc = wire_get_bytes(&q, end, ld32(p + 48), WIRE_MAX_TEXT, "error text", m, &ab->text);
	if (rc)
		return rc;
	return wire_dec_empty(q, end, m);
}

int wire_dec_grad(const uint8_t *b, const uint8_t *end, struct wire_msg *m)
{
	const uint8_t *p = b - WIRE_HDR_SIZE;
	struct wire_grad_view *g = &m->u.grad;
	uint32_t flags, n;
	int rc;

	if (m->kind == WIRE_BACKWARD_AUTOGRAD_RESP)
		return wire_dec_empty(b, end, m);
	if (m->kind == WIRE_BACKWARD_ABORT)
		return dec_abort(b, end, m);
	if (left(b, end) < GRAD_FIXED - WIRE_HDR_SIZE)
		return err_set(RDAG_EWIRE_TRUNCATED, "wire: BACKWARD_AUTOGRAD_REQ: truncated");
	g->req.ctx_id = ld64(p + 24);
	g->req.msg_id = ld64(p + 32);
	g->req.pass_id = ld64(p + 40);
	flags = ld32(p + 48);
	n = ld32(p + 52);
	if (flags & ~WIRE_RETAIN_GRAPH)
		return err_set(RDAG_EWIRE_FLAGS, "wire: BACKWARD_AUTOGRAD_REQ: reserved flags 0x%x",
			       flags);
	g->req.retain_graph = flags & WIRE_RETAIN_GRAPH;
	rc = wire_check_tensor_count(n, m);
	if (rc)
		return rc;
	return wire_tensors_get(p + GRAD_FIXED, end, n, m, &g->tensors);
}
