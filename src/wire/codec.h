/* Wire codec internals shared by the per-family files: little-endian access, header, strings, tensors. */
#ifndef RDAG_WIRE_CODEC_H
#define RDAG_WIRE_CODEC_H

#include <stdint.h>
#include <string.h>

#include "util/err.h"
#include "wire/wire.h"

/* Sums of u32 lengths and counts are done in size_t, which must not wrap on them. */
_Static_assert(sizeof(size_t) >= 8, "the wire codec's size arithmetic assumes a 64-bit size_t");

#if !defined(__BYTE_ORDER__) || (__BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__ && \
				 __BYTE_ORDER__ != __ORDER_BIG_ENDIAN__)
#error "unknown byte order"
#endif

/* Unaligned little-endian loads and stores through memcpy (no alignment or aliasing UB). */
static inline uint16_t ld16(const uint8_t *p)
{
	uint16_t v;
	memcpy(&v, p, sizeof(v));
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
	v = __builtin_bswap16(v);
#endif
	return v;
}

static inline uint32_t ld32(const uint8_t *p)
{
	uint32_t v;
	memcpy(&v, p, sizeof(v));
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
	v = __builtin_bswap32(v);
#endif
	return v;
}

static inline uint64_t ld64(const uint8_t *p)
{
	uint64_t v;
	memcpy(&v, p, sizeof(v));
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
	v = __builtin_bswap64(v);
#endif
	return v;
}

static inline void st16(uint8_t *p, uint16_t v)
{
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
	v = __builtin_bswap16(v);
#endif
	memcpy(p, &v, sizeof(v));
}

static inline void st32(uint8_t *p, uint32_t v)
{
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
	v = __builtin_bswap32(v);
#endif
	memcpy(p, &v, sizeof(v));
}

static inline void st64(uint8_t *p, uint64_t v)
{
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
	v = __builtin_bswap64(v);
#endif
	memcpy(p, &v, sizeof(v));
}

/* n rounded up to WIRE_ALIGN; callers keep n far below SIZE_MAX (u32 lengths). */
static inline size_t pad8(size_t n)
{
	return (n + (WIRE_ALIGN - 1)) & ~(size_t)(WIRE_ALIGN - 1);
}

/* True if the n bytes at p are all zero (padding and reserved fields). */
static inline bool all_zero(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (p[i])
			return false;
	}
	return true;
}

/* Bytes left between p and end (p <= end always holds in the decoders). */
static inline size_t left(const uint8_t *p, const uint8_t *end)
{
	return (size_t)(end - p);
}

/* ---- header (header.c) --------------------------------------------------------------------- */

/* Writes the 24-byte header; env may be NULL (all zero). */
static inline void wire_put_hdr(uint8_t *p, uint8_t kind, size_t total, const struct wire_env *env)
{
	st32(p, WIRE_MAGIC);
	p[4] = WIRE_VERSION;
	p[5] = kind;
	st16(p + 6, 0);
	st32(p + 8, (uint32_t)total);
	st16(p + 12, env ? env->src : 0);
	st16(p + 14, env ? env->credits : 0);
	st64(p + 16, env ? env->req_id : 0);
}

/*
 * The common end of every encoder's sizing step: refuses messages above WIRE_MAX_LENGTH
 * (RDAG_EOVERFLOW), sets *len = size, and returns RDAG_ENOSPC if size > cap.
 */
static inline int wire_fit(uint8_t kind, size_t size, size_t cap, size_t *len)
{
	if (size > WIRE_MAX_LENGTH) {
		*len = 0;
		return err_set(RDAG_EOVERFLOW, "wire: %s of %zu bytes exceeds the %u-byte limit",
			       wire_kind_name(kind), size, WIRE_MAX_LENGTH);
	}
	*len = size;
	if (size > cap)
		return err_set(RDAG_ENOSPC, "wire: %s needs %zu bytes, buffer has %zu",
			       wire_kind_name(kind), size, cap);
	return 0;
}

/* Encodes a header-only message (the empty *_RESP kinds). */
int wire_encode_empty(void *buf, size_t cap, uint8_t kind, const struct wire_env *env, size_t *len);

/* Decodes the message at p[0, len) at nesting depth `depth` (header.c). */
int wire_decode_at(const uint8_t *p, size_t len, unsigned depth, struct wire_msg *m);

/*
 * Per-family body decoders: the header is already checked and m's header fields set; the body
 * is [b, end). Each returns 0 or an RDAG_EWIRE_* code; all are called from wire_decode_at().
 */
int wire_dec_transport(const uint8_t *b, const uint8_t *end, struct wire_msg *m);
int wire_dec_exception(const uint8_t *b, const uint8_t *end, struct wire_msg *m);
int wire_dec_rpc(const uint8_t *b, const uint8_t *end, struct wire_msg *m);
int wire_dec_rref(const uint8_t *b, const uint8_t *end, struct wire_msg *m);
int wire_dec_forward(const uint8_t *b, const uint8_t *end, struct wire_msg *m);
int wire_dec_grad(const uint8_t *b, const uint8_t *end, struct wire_msg *m);
int wire_dec_cleanup(const uint8_t *b, const uint8_t *end, struct wire_msg *m);
int wire_dec_profiling(const uint8_t *b, const uint8_t *end, struct wire_msg *m);

/* A fixed-size body of `size` bytes: RDAG_EWIRE_TRUNCATED if shorter, _TRAILING if longer. */
static inline int wire_fixed(const uint8_t *b, const uint8_t *end, size_t size, const struct wire_msg *m)
{
	if (left(b, end) < size)
		return err_set(RDAG_EWIRE_TRUNCATED, "wire: %s: body of %zu bytes, needs %zu",
			       wire_kind_name(m->kind), left(b, end), size);
	if (left(b, end) > size)
		return err_set(RDAG_EWIRE_TRAILING, "wire: %s: %zu bytes after its body",
			       wire_kind_name(m->kind), left(b, end) - size);
	return 0;
}

/* Decoders of header-only bodies, and the end of variable ones: anything left is trailing. */
int wire_dec_empty(const uint8_t *b, const uint8_t *end, struct wire_msg *m);

/*
 * A wrapper's inner span [b, end): sets *inner and checks the inner message's header (valid,
 * its length exactly the span, zero env); its body is left to wire_decode_inner().
 */
int wire_check_inner(const uint8_t *b, const uint8_t *end, struct wire_msg *m, struct wire_bytes *inner);

/*
 * The same checks on a wrapper encoder's inner message (RDAG_EINVAL): its length, and its header
 * unless inner is NULL (encoded in place: the encoder checks it there once the size fits).
 */
int wire_check_inner_arg(uint8_t kind, const void *inner, size_t inner_len);

/* ---- byte strings (header.c) --------------------------------------------------------------- */

/*
 * Reads a string of `n` bytes (limit `max`, RDAG_EWIRE_COUNT above it) plus its zero padding
 * from *pp, advancing *pp. `what` names the field in error messages.
 */
int wire_get_bytes(const uint8_t **pp, const uint8_t *end, uint32_t n, uint32_t max,
		   const char *what, struct wire_msg *m, struct wire_bytes *out);

/* Writes b's bytes plus zero padding to WIRE_ALIGN at p; returns the next position. */
static inline uint8_t *wire_put_bytes(uint8_t *p, const struct wire_bytes *b)
{
	size_t n = b->len, padded = pad8(n);

	if (n)
		memcpy(p, b->ptr, n);
	memset(p + n, 0, padded - n);
	return p + padded;
}

/* Validates a string argument of an encoder (NULL with a non-zero length, above max). */
int wire_check_bytes_arg(uint8_t kind, const struct wire_bytes *b, uint32_t max, const char *what);

/* ---- calls and responses with payload and tensors (rpc.c), rref ids (rref.c) --------------- */

/*
 * RPC_CALL and RREF_CALL share their layout after the RREF_CALL's rref id; RPC_RESP and
 * RREF_FETCH_RESP share theirs completely. `at` is where the shared part starts.
 */
int wire_encode_call_at(uint8_t kind, size_t at, void *buf, size_t cap, const struct wire_env *env,
			const struct wire_call *c, const struct wire_tensor *tensors, uint32_t n,
			size_t *len);
int wire_dec_call_at(const uint8_t *q, const uint8_t *end, struct wire_msg *m);
int wire_encode_resp_kind(uint8_t kind, void *buf, size_t cap, const struct wire_env *env,
			  const struct wire_bytes *payload, const struct wire_tensor *tensors,
			  uint32_t n, size_t *len);
int wire_dec_resp(const uint8_t *b, const uint8_t *end, struct wire_msg *m);

/* An rref id on the wire: u64 local_id | u16 owner | u16 0 | u32 0 (16 bytes). */
#define WIRE_RREF_SIZE 16u
static inline void wire_put_rref(uint8_t *p, const struct wire_rref_id *r)
{
	st64(p, r->local_id);
	st16(p + 8, r->owner);
	st16(p + 10, 0);
	st32(p + 12, 0);
}
int wire_get_rref(const uint8_t *p, struct wire_msg *m, struct wire_rref_id *r);

/* ---- devices (tensor.c) -------------------------------------------------------------------- */

/* A device on the wire: u8 type, u8 zero, u16 index (4 bytes). */
int wire_get_device(const uint8_t *p, struct wire_msg *m, const char *what, struct wire_device *d);
static inline void wire_put_device(uint8_t *p, const struct wire_device *d)
{
	p[0] = d->type;
	p[1] = 0;
	st16(p + 2, d->index);
}
static inline void wire_load_device(const uint8_t *p, struct wire_device *d)
{
	d->type = p[0];
	d->index = ld16(p + 2);
}
bool wire_device_ok(const struct wire_device *d);

/* ---- tensor sections (tensor.c) ------------------------------------------------------------ */

/*
 * Adds the size of the tensor section of n encoder-side descriptors (descriptors + inline
 * bytes) to *size: RDAG_EINVAL for a count above the limit or a NULL array, RDAG_EOVERFLOW if
 * the inline bytes cannot fit a message. The descriptors are validated by wire_tensors_put().
 */
int wire_tensors_size(uint8_t kind, const struct wire_tensor *t, uint32_t n, size_t *size);

/*
 * Checks each of the n descriptors (RDAG_EINVAL for anything the decoder would refuse) and
 * writes it, then the inline bytes, at p, which has room for the size wire_tensors_size()
 * computed. On failure part of the section may have been written.
 */
int wire_tensors_put(uint8_t kind, uint8_t *p, const struct wire_tensor *t, uint32_t n);

/*
 * Validates a tensor section of `count` descriptors that runs from p to exactly end (the
 * section is always the last of a message) and fills *l.
 */
int wire_tensors_get(const uint8_t *p, const uint8_t *end, uint32_t count, struct wire_msg *m,
		     struct wire_tensor_list *l);

/* Checks the count field of a tensor section (RDAG_EWIRE_COUNT). */
int wire_check_tensor_count(uint32_t count, struct wire_msg *m);

#endif /* RDAG_WIRE_CODEC_H */
