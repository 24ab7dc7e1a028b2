/* The tensor-descriptor iterator of decoded messages, inline because receivers run it per tensor. */
#ifndef RDAG_WIRE_TENSOR_ITER_H
#define RDAG_WIRE_TENSOR_ITER_H

/* Included by wire/wire.h after its types; not meant to be included on its own. */

#include <string.h>

/*
 * Location payload sizes as bytes of one constant: inline 0, slot 16, rendezvous 16, pending 0,
 * NCCL 8. Only for locations already validated (< WIRE_LOC_COUNT_): no table load on the hot
 * path. Names ending in '_' here are helpers of the inline iterator, not API.
 */
#define WIRE_LOC_SIZES_ 0x0800101000ull
static inline unsigned wire_loc_size_(unsigned loc)
{
	return (unsigned)(WIRE_LOC_SIZES_ >> (8 * loc)) & 0xff;
}

static inline uint64_t wire_ld64_(const uint8_t *p)
{
	uint64_t v;

	memcpy(&v, p, sizeof(v));
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
	v = __builtin_bswap64(v);
#endif
	return v;
}

#if defined(__has_attribute)
#if __has_attribute(fallthrough)
#define WIRE_FALLTHROUGH_ __attribute__((fallthrough))
#endif
#endif
#ifndef WIRE_FALLTHROUGH_
#define WIRE_FALLTHROUGH_ ((void)0)
#endif

/* Copies the 2 + rank words (head, nbytes, dims) of a descriptor, unrolled by rank (<= 8). */
static inline void wire_copy_desc_(void *dst, const void *src, unsigned rank)
{
	uint8_t *d = (uint8_t *)dst;
	const uint8_t *s = (const uint8_t *)src;

	memcpy(d, s, 16);
	switch (rank) {
	case 8: memcpy(d + 72, s + 72, 8); WIRE_FALLTHROUGH_;
	case 7: memcpy(d + 64, s + 64, 8); WIRE_FALLTHROUGH_;
	case 6: memcpy(d + 56, s + 56, 8); WIRE_FALLTHROUGH_;
	case 5: memcpy(d + 48, s + 48, 8); WIRE_FALLTHROUGH_;
	case 4: memcpy(d + 40, s + 40, 8); WIRE_FALLTHROUGH_;
	case 3: memcpy(d + 32, s + 32, 8); WIRE_FALLTHROUGH_;
	case 2: memcpy(d + 24, s + 24, 8); WIRE_FALLTHROUGH_;
	case 1: memcpy(d + 16, s + 16, 8); WIRE_FALLTHROUGH_;
	default: break;
	}
}

/*
 * Reads the next descriptor of a validated list into *t; false once all have been read. The
 * descriptor was checked by the decoder, so nothing is checked again here. Thread-safe.
 */
static inline bool wire_tensor_next(struct wire_tensor_iter *it, struct wire_tensor *t)
{
	const uint8_t *p = it->desc;
	uint64_t h;
	unsigned rank, loc;

	if (!it->left)
		return false;
	it->left--;
	h = wire_ld64_(p);
	rank = (h >> 8) & 0xff;
	loc = (h >> 16) & 0xff;
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	/* struct wire_tensor starts with the descriptor's bytes: head, nbytes, dims. */
	wire_copy_desc_(t, p, rank);
#else
	t->dtype = (uint8_t)h;
	t->rank = (uint8_t)rank;
	t->loc = (uint8_t)loc;
	t->dev_type = (uint8_t)(h >> 24);
	t->dev_index = (uint16_t)(h >> 32);
	t->flags = (uint16_t)(h >> 48);
	t->nbytes = wire_ld64_(p + 8);
	for (unsigned d = 0; d < rank; d++)
		t->shape[d] = (int64_t)wire_ld64_(p + 16 + 8 * d);
#endif
	p += 16 + 8 * rank;
	/*
	 * The union is always written whole (unused words zero), so reading any member is
	 * defined: slot {offset, length}, rendezvous {addr, key} and NCCL {tag} share its words.
	 */
	t->u.slot.offset = 0;
	t->u.slot.length = 0;
	if (loc == WIRE_LOC_INLINE) {
		t->u.data = it->data;
		it->data += (t->nbytes + 7) & ~(uint64_t)7;
	} else if (loc != WIRE_LOC_RDV_PENDING) {
		t->u.slot.offset = wire_ld64_(p);
		if (loc != WIRE_LOC_NCCL)
			t->u.slot.length = wire_ld64_(p + 8);
	}
	it->desc = p + wire_loc_size_(loc);
	return true;
}

#endif /* RDAG_WIRE_TENSOR_ITER_H */
