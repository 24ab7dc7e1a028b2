/* CLEANUP_AUTOGRAD_CONTEXT_REQ / _RESP: release a distributed autograd context everywhere. */
#include "wire/codec.h"

/* CLEANUP_AUTOGRAD_CONTEXT_REQ body: 24 u64 ctx_id (message 32). _RESP: header only. */
#define CLEANUP_SIZE 32u

int wire_encode_cleanup_req(void *buf, size_t cap, const struct wire_env *env,
			    const struct wire_cleanup *c, size_t *len)
{
	uint8_t *p = buf;
	int rc = wire_fit(WIRE_CLEANUP_AUTOGRAD_CONTEXT_REQ, CLEANUP_SIZE, cap, len);

	if (rc)
		return rc;
	wire_put_hdr(p, WIRE_CLEANUP_AUTOGRAD_CONTEXT_REQ, CLEANUP_SIZE, env);
	st64(p + 24, c->ctx_id);
	return 0;
}

int wire_encode_cleanup_resp(void *buf, size_t cap, const struct wire_env *env, size_t *len)
{
	return wire_encode_empty(buf, cap, WIRE_CLEANUP_AUTOGRAD_CONTEXT_RESP, env, len);
}

int wire_dec_cleanup(const uint8_t *b, const uint8_t *end, struct wire_msg *m)
{
	int rc;

	if (m->kind == WIRE_CLEANUP_AUTOGRAD_CONTEXT_RESP)
		return wire_dec_empty(b, end, m);
	rc = wire_fixed(b, end, CLEANUP_SIZE - WIRE_HDR_SIZE, m);
	if (rc)
		return rc;
	m->u.cleanup.ctx_id = ld64(b);
	return 0;
}
