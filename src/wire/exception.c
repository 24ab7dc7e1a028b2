/* EXCEPTION: the error reply to any request, with its origin worker and text. */
#include "wire/codec.h"

/*
 * EXCEPTION body: 24 i32 code (< 0) | 28 u16 origin | 30 u16 reserved (0) | 32 u32 text_len
 *   | 36 u32 reserved (0) | 40 text, zero-padded to 8.
 */
#define EXC_FIXED 40u

int wire_encode_exception(void *buf, size_t cap, const struct wire_env *env,
			  const struct wire_exception *e, size_t *len)
{
	uint8_t *p = buf;
	int rc;

	if (e->code >= 0)
		return err_set(RDAG_EINVAL, "wire: EXCEPTION: code %d is not an error", (int)e->code);
	rc = wire_check_bytes_arg(WIRE_EXCEPTION, &e->text, WIRE_MAX_TEXT, "error text");
	if (rc)
		return rc;
	rc = wire_fit(WIRE_EXCEPTION, EXC_FIXED + pad8(e->text.len), cap, len);
	if (rc)
		return rc;
	wire_put_hdr(p, WIRE_EXCEPTION, *len, env);
	st32(p + 24, (uint32_t)e->code);
	st16(p + 28, e->origin);
	st16(p + 30, 0);
	st32(p + 32, e->text.len);
	st32(p + 36, 0);
	wire_put_bytes(p + EXC_FIXED, &e->text);
	return 0;
}

int wire_dec_exception(const uint8_t *b, const uint8_t *end, struct wire_msg *m)
{
	const uint8_t *p = b - WIRE_HDR_SIZE, *q = p + EXC_FIXED;
	struct wire_exception *e = &m->u.exc;
	int rc;

	if (left(b, end) < EXC_FIXED - WIRE_HDR_SIZE)
		return err_set(RDAG_EWIRE_TRUNCATED, "wire: EXCEPTION: truncated");
	e->code = (int32_t)ld32(p + 24);
	e->origin = ld16(p + 28);
	if (e->code >= 0)
		return err_set(RDAG_EWIRE_FIELD, "wire: EXCEPTION: code %d is not an error", (int)e->code);
	if (ld16(p + 30) || ld32(p + 36))
		return err_set(RDAG_EWIRE_FIELD, "wire: EXCEPTION: non-zero reserved field");
	rc = wire_get_bytes(&q, end, ld32(p + 32), WIRE_MAX_TEXT, "error text", m, &e->text);
	if (rc)
		return rc;
	return wire_dec_empty(q, end, m);
}
