/* FORWARD_AUTOGRAD_REQ / _RESP: autograd metadata and a device map wrapped around an inner message. */
#include "wire/codec.h"

/*
 * Body: 24 u64 ctx_id | 32 u64 msg_id | 40 u16 from_worker | 42 u16 ndevmap | 44 u32 reserved (0)
 *   | 48 ndevmap x {device from, device to} (8 bytes each; a device is u8 type, u8 0, u16 index)
 *   | the inner message (a complete message with a zero env), to the end.
 */
#define FWD_FIXED 48u
#define DEVPAIR 8u

size_t wire_fwd_prefix(const struct wire_fwd *f)
{
	return FWD_FIXED + (size_t)DEVPAIR * f->ndevmap;
}

static int encode(uint8_t kind, uint8_t *p, size_t cap, const struct wire_env *env,
		  const struct wire_fwd *f, const void *inner, size_t inner_len, size_t *len)
{
	size_t prefix;
	int rc;

	if (f->ndevmap > WIRE_MAX_DEVMAP)
		return err_set(RDAG_EINVAL, "wire: %s: %u device-map entries (limit %u)",
			       wire_kind_name(kind), f->ndevmap, WIRE_MAX_DEVMAP);
	if (f->ndevmap && !f->devmap)
		return err_set(RDAG_EINVAL, "wire: %s: device map at NULL", wire_kind_name(kind));
	for (unsigned i = 0; i < f->ndevmap; i++) {
		if (!wire_device_ok(&f->devmap[i].from) || !wire_device_ok(&f->devmap[i].to))
			return err_set(RDAG_EINVAL, "wire: %s: device-map entry %u has a bad device",
				       wire_kind_name(kind), i);
	}
	rc = wire_check_inner_arg(kind, inner, inner_len);
	if (rc)
		return rc;
	prefix = wire_fwd_prefix(f);
	rc = wire_fit(kind, prefix + inner_len, cap, len);
	if (rc)
		return rc;
	if (inner)
		memmove(p + prefix, inner, inner_len);
	else if ((rc = wire_check_inner_arg(kind, p + prefix, inner_len)) != 0)
		return rc;
	wire_put_hdr(p, kind, *len, env);
	st64(p + 24, f->ctx_id);
	st64(p + 32, f->msg_id);
	st16(p + 40, f->from_worker);
	st16(p + 42, f->ndevmap);
	st32(p + 44, 0);
	for (unsigned i = 0; i < f->ndevmap; i++) {
		wire_put_device(p + FWD_FIXED + (size_t)DEVPAIR * i, &f->devmap[i].from);
		wire_put_device(p + FWD_FIXED + (size_t)DEVPAIR * i + 4, &f->devmap[i].to);
	}
	return 0;
}

int wire_encode_fwd_req(void *buf, size_t cap, const struct wire_env *env, const struct wire_fwd *f,
			const void *inner, size_t inner_len, size_t *len)
{
	return encode(WIRE_FORWARD_AUTOGRAD_REQ, buf, cap, env, f, inner, inner_len, len);
}

int wire_encode_fwd_resp(void *buf, size_t cap, const struct wire_env *env, const struct wire_fwd *f,
			 const void *inner, size_t inner_len, size_t *len)
{
	return encode(WIRE_FORWARD_AUTOGRAD_RESP, buf, cap, env, f, inner, inner_len, len);
}

int wire_dec_forward(const uint8_t *b, const uint8_t *end, struct wire_msg *m)
{
	const uint8_t *p = b - WIRE_HDR_SIZE, *q = p + FWD_FIXED;
	struct wire_fwd_view *f = &m->u.fwd;
	uint16_t n;
	int rc;

	if (left(b, end) < FWD_FIXED - WIRE_HDR_SIZE)
		return err_set(RDAG_EWIRE_TRUNCATED, "wire: %s: truncated", wire_kind_name(m->kind));
	f->ctx_id = ld64(p + 24);
	f->msg_id = ld64(p + 32);
	f->from_worker = ld16(p + 40);
	n = ld16(p + 42);
	if (ld32(p + 44))
		return err_set(RDAG_EWIRE_FIELD, "wire: %s: non-zero reserved field",
			       wire_kind_name(m->kind));
	if (n > WIRE_MAX_DEVMAP)
		return err_set(RDAG_EWIRE_COUNT, "wire: %s: %u device-map entries (limit %u)",
			       wire_kind_name(m->kind), n, WIRE_MAX_DEVMAP);
	if (left(q, end) < (size_t)DEVPAIR * n)
		return err_set(RDAG_EWIRE_TRUNCATED, "wire: %s: truncated in the device map",
			       wire_kind_name(m->kind));
	for (unsigned i = 0; i < 2u * n; i++) {
		struct wire_device d;

		rc = wire_get_device(q + (size_t)4 * i, m, i % 2 ? "device-map target" : "device-map source", &d);
		if (rc)
			return rc;
	}
	f->devmap.count = n;
	f->devmap.p = q;
	return wire_check_inner(q + (size_t)DEVPAIR * n, end, m, &f->inner);
}

void wire_devmap_get(const struct wire_devmap_list *l, uint16_t i, struct wire_devpair *out)
{
	wire_load_device(l->p + (size_t)DEVPAIR * i, &out->from);
	wire_load_device(l->p + (size_t)DEVPAIR * i + 4, &out->to);
}
