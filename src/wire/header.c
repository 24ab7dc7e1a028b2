/* Wire header, dispatch by kind, nesting of wrapped messages, and the byte-string helpers. */
#include "wire/codec.h"

/*
 * Header layout (24 bytes):
 *   0 u32 magic | 4 u8 version | 5 u8 kind | 6 u16 flags (none defined: must be 0)
 *   8 u32 total length | 12 u16 sending worker | 14 u16 credits | 16 u64 request id
 */

static const char *const kind_names[256] = {
	[WIRE_HANDSHAKE] = "HANDSHAKE",
	[WIRE_CREDIT] = "CREDIT",
	[WIRE_EXCEPTION] = "EXCEPTION",
	[WIRE_NCCL_ID] = "NCCL_ID",
	[WIRE_RPC_CALL] = "RPC_CALL",
	[WIRE_RPC_RESP] = "RPC_RESP",
	[WIRE_RREF_CALL] = "RREF_CALL",
	[WIRE_RREF_FETCH_REQ] = "RREF_FETCH_REQ",
	[WIRE_RREF_FETCH_RESP] = "RREF_FETCH_RESP",
	[WIRE_RREF_DELETE] = "RREF_DELETE",
	[WIRE_RDV_ANSWER] = "RDV_ANSWER",
	[WIRE_RDV_DONE] = "RDV_DONE",
	[WIRE_FORWARD_AUTOGRAD_REQ] = "FORWARD_AUTOGRAD_REQ",
	[WIRE_FORWARD_AUTOGRAD_RESP] = "FORWARD_AUTOGRAD_RESP",
	[WIRE_BACKWARD_AUTOGRAD_REQ] = "BACKWARD_AUTOGRAD_REQ",
	[WIRE_BACKWARD_AUTOGRAD_RESP] = "BACKWARD_AUTOGRAD_RESP",
	[WIRE_CLEANUP_AUTOGRAD_CONTEXT_REQ] = "CLEANUP_AUTOGRAD_CONTEXT_REQ",
	[WIRE_CLEANUP_AUTOGRAD_CONTEXT_RESP] = "CLEANUP_AUTOGRAD_CONTEXT_RESP",
	[WIRE_RREF_BACKWARD_REQ] = "RREF_BACKWARD_REQ",
	[WIRE_RREF_BACKWARD_RESP] = "RREF_BACKWARD_RESP",
	[WIRE_RUN_WITH_PROFILING_REQ] = "RUN_WITH_PROFILING_REQ",
	[WIRE_RUN_WITH_PROFILING_RESP] = "RUN_WITH_PROFILING_RESP",
	[WIRE_BACKWARD_ABORT] = "BACKWARD_ABORT",
};

const char *wire_kind_name(uint8_t kind)
{
	return kind_names[kind] ? kind_names[kind] : "UNKNOWN";
}

bool wire_kind_wraps(uint8_t kind)
{
	return kind == WIRE_FORWARD_AUTOGRAD_REQ || kind == WIRE_FORWARD_AUTOGRAD_RESP ||
	       kind == WIRE_RUN_WITH_PROFILING_REQ || kind == WIRE_RUN_WITH_PROFILING_RESP;
}

/* Header checks shared by wire_peek and the decoders; len >= WIRE_HDR_SIZE. */
static int check_hdr(const uint8_t *p, uint8_t *kind, uint32_t *total)
{
	uint32_t magic = ld32(p), len = ld32(p + 8);
	uint16_t flags = ld16(p + 6);

	if (magic != WIRE_MAGIC)
		return err_set(RDAG_EWIRE_MAGIC, "wire: bad magic 0x%08x", magic);
	if (p[4] != WIRE_VERSION)
		return err_set(RDAG_EWIRE_VERSION, "wire: protocol version %u (this side speaks %u)",
			       p[4], WIRE_VERSION);
	if (!kind_names[p[5]])
		return err_set(RDAG_EWIRE_KIND, "wire: unknown message kind 0x%02x", p[5]);
	if (flags)
		return err_set(RDAG_EWIRE_FLAGS, "wire: %s: reserved header flags 0x%04x",
			       wire_kind_name(p[5]), flags);
	if (len < WIRE_HDR_SIZE || len % WIRE_ALIGN)
		return err_set(RDAG_EWIRE_LENGTH, "wire: %s: total length %u is not a multiple of %u "
			       "of at least %u", wire_kind_name(p[5]), len, WIRE_ALIGN, WIRE_HDR_SIZE);
	*kind = p[5];
	*total = len;
	return 0;
}

int wire_peek(const void *buf, size_t len, uint8_t *kind, uint32_t *total)
{
	if (!buf || len < WIRE_HDR_SIZE)
		return err_set(RDAG_EWIRE_TRUNCATED, "wire: %zu bytes, less than a header", len);
	return check_hdr(buf, kind, total);
}

int wire_decode_at(const uint8_t *p, size_t len, unsigned depth, struct wire_msg *m)
{
	const uint8_t *body, *end;
	uint32_t total;
	uint8_t kind;
	int rc;

	if (!p || len < WIRE_HDR_SIZE)
		return err_set(RDAG_EWIRE_TRUNCATED, "wire: %zu bytes, less than a header", len);
	rc = check_hdr(p, &kind, &total);
	if (rc)
		return rc;
	if (total > len)
		return err_set(RDAG_EWIRE_TRUNCATED, "wire: %s: %zu of its %u bytes",
			       wire_kind_name(kind), len, total);
	if (total < len)
		return err_set(RDAG_EWIRE_TRAILING, "wire: %s: %zu bytes after its %u",
			       wire_kind_name(kind), len - total, total);
	m->kind = kind;
	m->length = total;
	m->depth = depth;
	m->env.src = ld16(p + 12);
	m->env.credits = ld16(p + 14);
	m->env.req_id = ld64(p + 16);
	if (depth > 0 && (m->env.src || m->env.credits || m->env.req_id))
		return err_set(RDAG_EWIRE_FIELD, "wire: inner %s carries a sender, credits or request "
			       "id", wire_kind_name(kind));
	if (depth >= WIRE_MAX_DEPTH && wire_kind_wraps(kind))
		return err_set(RDAG_EWIRE_NESTING, "wire: %s at depth %u: more than %u wrappers",
			       wire_kind_name(kind), depth, WIRE_MAX_DEPTH);
	body = p + WIRE_HDR_SIZE;
	end = p + total;
	switch (kind) {
	case WIRE_HANDSHAKE:
	case WIRE_CREDIT:
	case WIRE_NCCL_ID:
		return wire_dec_transport(body, end, m);
	case WIRE_EXCEPTION:
		return wire_dec_exception(body, end, m);
	case WIRE_RPC_CALL:
	case WIRE_RPC_RESP:
	case WIRE_RDV_ANSWER:
	case WIRE_RDV_DONE:
		return wire_dec_rpc(body, end, m);
	case WIRE_RREF_CALL:
	case WIRE_RREF_FETCH_REQ:
	case WIRE_RREF_FETCH_RESP:
	case WIRE_RREF_DELETE:
	case WIRE_RREF_BACKWARD_REQ:
	case WIRE_RREF_BACKWARD_RESP:
		return wire_dec_rref(body, end, m);
	case WIRE_FORWARD_AUTOGRAD_REQ:
	case WIRE_FORWARD_AUTOGRAD_RESP:
		return wire_dec_forward(body, end, m);
	case WIRE_BACKWARD_AUTOGRAD_REQ:
	case WIRE_BACKWARD_AUTOGRAD_RESP:
	case WIRE_BACKWARD_ABORT:
		return wire_dec_grad(body, end, m);
	case WIRE_CLEANUP_AUTOGRAD_CONTEXT_REQ:
	case WIRE_CLEANUP_AUTOGRAD_CONTEXT_RESP:
		return wire_dec_cleanup(body, end, m);
	default: /* WIRE_RUN_WITH_PROFILING_REQ / _RESP: check_hdr() refused unknown kinds */
		return wire_dec_profiling(body, end, m);
	}
}

int wire_decode(const void *buf, size_t len, struct wire_msg *msg)
{
	return wire_decode_at(buf, len, 0, msg);
}

int wire_decode_inner(const struct wire_msg *outer, struct wire_msg *inner)
{
	const struct wire_bytes *b;

	switch (outer->kind) {
	case WIRE_FORWARD_AUTOGRAD_REQ:
	case WIRE_FORWARD_AUTOGRAD_RESP:
		b = &outer->u.fwd.inner;
		break;
	case WIRE_RUN_WITH_PROFILING_REQ:
		b = &outer->u.prof_req.inner;
		break;
	case WIRE_RUN_WITH_PROFILING_RESP:
		b = &outer->u.prof_resp.inner;
		break;
	default:
		return err_set(RDAG_EINVAL, "wire: %s wraps no message", wire_kind_name(outer->kind));
	}
	return wire_decode_at(b->ptr, b->len, outer->depth + 1, inner);
}

int wire_encode_empty(void *buf, size_t cap, uint8_t kind, const struct wire_env *env, size_t *len)
{
	int rc = wire_fit(kind, WIRE_HDR_SIZE, cap, len);

	if (rc)
		return rc;
	wire_put_hdr(buf, kind, WIRE_HDR_SIZE, env);
	return 0;
}

int wire_dec_empty(const uint8_t *b, const uint8_t *end, struct wire_msg *m)
{
	if (b != end)
		return err_set(RDAG_EWIRE_TRAILING, "wire: %s: %zu bytes after its last field",
			       wire_kind_name(m->kind), left(b, end));
	return 0;
}

/* An inner message's header: valid, exactly `len` long, zero env. */
static int check_inner_hdr(const uint8_t *p, size_t len)
{
	uint32_t total;
	uint8_t kind;
	int rc = check_hdr(p, &kind, &total);

	if (rc)
		return rc;
	if (total > len)
		return err_set(RDAG_EWIRE_TRUNCATED, "wire: inner %s of %u bytes in %zu",
			       wire_kind_name(kind), total, len);
	if (total < len)
		return err_set(RDAG_EWIRE_TRAILING, "wire: inner %s of %u bytes in %zu",
			       wire_kind_name(kind), total, len);
	if (ld16(p + 12) || ld16(p + 14) || ld64(p + 16))
		return err_set(RDAG_EWIRE_FIELD, "wire: inner %s carries a sender, credits or request "
			       "id", wire_kind_name(kind));
	return 0;
}

int wire_check_inner(const uint8_t *b, const uint8_t *end, struct wire_msg *m, struct wire_bytes *inner)
{
	if (left(b, end) < WIRE_HDR_SIZE)
		return err_set(RDAG_EWIRE_TRUNCATED, "wire: %s: %zu bytes left for the wrapped message",
			       wire_kind_name(m->kind), left(b, end));
	inner->ptr = b;
	inner->len = (uint32_t)left(b, end);
	return check_inner_hdr(b, inner->len);
}

int wire_check_inner_arg(uint8_t kind, const void *inner, size_t inner_len)
{
	int rc;

	if (inner_len < WIRE_HDR_SIZE || inner_len % WIRE_ALIGN || inner_len > WIRE_MAX_LENGTH)
		return err_set(RDAG_EINVAL, "wire: %s: a wrapped message of %zu bytes is no message",
			       wire_kind_name(kind), inner_len);
	rc = inner ? check_inner_hdr(inner, inner_len) : 0;
	if (rc)
		return err_set(RDAG_EINVAL, "wire: %s: bad wrapped message: %s (%s)",
			       wire_kind_name(kind), rdag_strerror(rc), rdag_last_error());
	return 0;
}

int wire_get_bytes(const uint8_t **pp, const uint8_t *end, uint32_t n, uint32_t max,
		   const char *what, struct wire_msg *m, struct wire_bytes *out)
{
	const uint8_t *p = *pp;
	size_t padded = pad8(n);

	if (n > max)
		return err_set(RDAG_EWIRE_COUNT, "wire: %s: %s of %u bytes (limit %u)",
			       wire_kind_name(m->kind), what, n, max);
	if (left(p, end) < padded)
		return err_set(RDAG_EWIRE_TRUNCATED, "wire: %s: %s of %u bytes runs past the end",
			       wire_kind_name(m->kind), what, n);
	if (!all_zero(p + n, padded - n))
		return err_set(RDAG_EWIRE_FIELD, "wire: %s: non-zero padding after %s",
			       wire_kind_name(m->kind), what);
	out->ptr = p;
	out->len = n;
	*pp = p + padded;
	return 0;
}

int wire_check_bytes_arg(uint8_t kind, const struct wire_bytes *b, uint32_t max, const char *what)
{
	if (b->len > max)
		return err_set(RDAG_EINVAL, "wire: %s: %s of %u bytes (limit %u)", wire_kind_name(kind),
			       what, b->len, max);
	if (b->len && !b->ptr)
		return err_set(RDAG_EINVAL, "wire: %s: %s of %u bytes at NULL", wire_kind_name(kind),
			       what, b->len);
	return 0;
}
