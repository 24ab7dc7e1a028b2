/* BACKWARD_AUTOGRAD_REQ (PropagateGradientsReq: gradients of a distributed backward pass) / _RESP. */
#include "wire/codec.h"

/*
 * BACKWARD_AUTOGRAD_REQ body: 24 u64 ctx_id | 32 u64 msg_id | 40 u32 flags (WIRE_RETAIN_GRAPH)
 *   | 44 u32 ntensors | 48 tensor section (descriptors, then inline bytes).
 * BACKWARD_AUTOGRAD_RESP: header only.
 */
#define GRAD_FIXED 48u

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
	st32(p + 40, req->retain_graph ? WIRE_RETAIN_GRAPH : 0);
	st32(p + 44, n);
	return wire_tensors_put(WIRE_BACKWARD_AUTOGRAD_REQ, p + GRAD_FIXED, tensors, n);
}

int wire_encode_grad_resp(void *buf, size_t cap, const struct wire_env *env, size_t *len)
{
	return wire_encode_empty(buf, cap, WIRE_BACKWARD_AUTOGRAD_RESP, env, len);
}

int wire_dec_grad(const uint8_t *b, const uint8_t *end, struct wire_msg *m)
{
	const uint8_t *p = b - WIRE_HDR_SIZE;
	struct wire_grad_view *g = &m->u.grad;
	uint32_t flags, n;
	int rc;

	if (m->kind == WIRE_BACKWARD_AUTOGRAD_RESP)
		return wire_dec_empty(b, end, m);
	if (left(b, end) < GRAD_FIXED - WIRE_HDR_SIZE)
		return err_set(RDAG_EWIRE_TRUNCATED, "wire: BACKWARD_AUTOGRAD_REQ: truncated");
	g->req.ctx_id = ld64(p + 24);
	g->req.msg_id = ld64(p + 32);
	flags = ld32(p + 40);
	n = ld32(p + 44);
	if (flags & ~WIRE_RETAIN_GRAPH)
		return err_set(RDAG_EWIRE_FLAGS, "wire: BACKWARD_AUTOGRAD_REQ: reserved flags 0x%x",
			       flags);
	g->req.retain_graph = flags & WIRE_RETAIN_GRAPH;
	rc = wire_check_tensor_count(n, m);
	if (rc)
		return rc;
	return wire_tensors_get(p + GRAD_FIXED, end, n, m, &g->tensors);
}
