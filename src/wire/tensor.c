/* Tensor descriptors and devices on the wire: validation and encoding (the iterator is in tensor_iter.h). */
#include <limits.h>
#include <stddef.h>

#include "wire/codec.h"

/*
 * Descriptor layout (all little-endian, 8-byte multiple):
 *   0 u8 dtype | 1 u8 rank | 2 u8 loc | 3 u8 device type | 4 u16 device index | 6 u16 flags
 *   8 u64 nbytes | 16 i64 dims[rank] | location payload (slot: u64 offset, u64 length;
 *   rendezvous: u64 addr, u64 key; NCCL: u64 tag; inline and pending: nothing)
 * The inline bytes of the section's tensors follow the last descriptor, in order, each padded
 * with zeros to WIRE_ALIGN.
 */
#define DESC_HEAD 16u

/* Indexed by any u8, so the hot paths need no bounds check: 0 means unknown. */
static const uint8_t dtype_sizes[256] = {
	[WIRE_DT_F16] = 2, [WIRE_DT_BF16] = 2, [WIRE_DT_F32] = 4,  [WIRE_DT_F64] = 8,
	[WIRE_DT_I8] = 1,  [WIRE_DT_I16] = 2,  [WIRE_DT_I32] = 4,  [WIRE_DT_I64] = 8,
	[WIRE_DT_U8] = 1,  [WIRE_DT_BOOL] = 1, [WIRE_DT_C64] = 8,  [WIRE_DT_C128] = 16,
	[WIRE_DT_F8E4M3] = 1, [WIRE_DT_F8E5M2] = 1,
};

/* Location payload sizes indexed by any u8, for sizing unvalidated encoder input (0 if unknown). */
static const uint8_t loc_sizes[256] = {
	[WIRE_LOC_INLINE] = 0, [WIRE_LOC_SLOT] = 16, [WIRE_LOC_RDV] = 16,
	[WIRE_LOC_RDV_PENDING] = 0, [WIRE_LOC_NCCL] = 8,
};

unsigned wire_dtype_size(uint8_t dtype)
{
	return dtype_sizes[dtype];
}

bool wire_device_ok(const struct wire_device *d)
{
	return d->type == WIRE_DEV_CUDA || (d->type == WIRE_DEV_CPU && d->index == 0);
}

int wire_get_device(const uint8_t *p, struct wire_msg *m, const char *what, struct wire_device *d)
{
	wire_load_device(p, d);
	if (d->type != WIRE_DEV_CPU && d->type != WIRE_DEV_CUDA)
		return err_set(RDAG_EWIRE_DEVICE, "wire: %s: %s has unknown device type %u",
			       wire_kind_name(m->kind), what, d->type);
	if (p[1] != 0)
		return err_set(RDAG_EWIRE_FIELD, "wire: %s: %s has a non-zero reserved byte",
			       wire_kind_name(m->kind), what);
	if (d->type == WIRE_DEV_CPU && d->index != 0)
		return err_set(RDAG_EWIRE_FIELD, "wire: %s: %s is cpu with index %u",
			       wire_kind_name(m->kind), what, d->index);
	return 0;
}

int wire_check_tensor_count(uint32_t count, struct wire_msg *m)
{
	if (count > WIRE_MAX_TENSORS)
		return err_set(RDAG_EWIRE_COUNT, "wire: %s: %u tensors (limit %u)",
			       wire_kind_name(m->kind), count, WIRE_MAX_TENSORS);
	return 0;
}

/*
 * The first 8 bytes of a descriptor as one little-endian word:
 *   bits 0-7 dtype, 8-15 rank, 16-23 loc, 24-31 device type, 32-47 device index, 48-63 flags.
 * struct wire_tensor starts with the same bytes (then nbytes and the dims, as on the wire), so
 * on little-endian hosts a descriptor and a struct convert by copying words.
 */
#define SAME_LAYOUT (__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__)
_Static_assert(offsetof(struct wire_tensor, dtype) == 0 && offsetof(struct wire_tensor, rank) == 1 &&
		       offsetof(struct wire_tensor, loc) == 2 &&
		       offsetof(struct wire_tensor, dev_type) == 3 &&
		       offsetof(struct wire_tensor, dev_index) == 4 &&
		       offsetof(struct wire_tensor, flags) == 6 &&
		       offsetof(struct wire_tensor, nbytes) == 8 &&
		       offsetof(struct wire_tensor, shape) == DESC_HEAD,
	       "struct wire_tensor must start like a descriptor");

static inline uint64_t head_of(const struct wire_tensor *t)
{
	uint64_t h;

	if (SAME_LAYOUT) {
		memcpy(&h, t, sizeof(h));
		return h;
	}
	return (uint64_t)t->dtype | (uint64_t)t->rank << 8 | (uint64_t)t->loc << 16 |
	       (uint64_t)t->dev_type << 24 | (uint64_t)t->dev_index << 32 | (uint64_t)t->flags << 48;
}

/*
 * All fixed fields of a descriptor checked with one branch on the hot path: true if any is out
 * of its domain (head_diagnose() then says which). esize is dtype_sizes[dtype]. Bytes 1-3
 * (rank <= 8, location <= 4, device type <= 1) are compared at once: with each byte's top bit
 * forced on, subtracting (max + 1) leaves that top bit set exactly when the byte exceeds max
 * (no borrow crosses bytes); a byte that had its top bit set exceeds max anyway.
 */
#define HEAD_TOPS 0x80808000ull
#define HEAD_LIMITS ((uint64_t)(WIRE_MAX_RANK + 1) << 8 | (uint64_t)WIRE_LOC_COUNT_ << 16 | \
		     (uint64_t)(WIRE_DEV_CUDA + 1) << 24)
static inline bool head_bad(uint64_t h, unsigned esize)
{
	uint64_t x = h & 0xffffff00u;

	return (esize == 0) | (((((x | HEAD_TOPS) - HEAD_LIMITS) | x) & HEAD_TOPS) != 0) |
	       (((h & 0xff000000u) == 0) & ((h & 0xffff00000000ull) != 0)) | ((h >> 49) != 0);
}

/* Which fixed field head_bad() objected to: the RDAG_EWIRE_* code and a description. */
static int head_diagnose(uint64_t h, const char **what)
{
	unsigned rank = (h >> 8) & 0xff, loc = (h >> 16) & 0xff, devtype = (h >> 24) & 0xff;
	unsigned devidx = (h >> 32) & 0xffff;

	if (!dtype_sizes[h & 0xff])
		return *what = "unknown dtype", RDAG_EWIRE_DTYPE;
	if (rank > WIRE_MAX_RANK)
		return *what = "rank above 8", RDAG_EWIRE_COUNT;
	if (loc >= WIRE_LOC_COUNT_)
		return *what = "unknown location", RDAG_EWIRE_LOCATION;
	if (devtype > WIRE_DEV_CUDA)
		return *what = "unknown device type", RDAG_EWIRE_DEVICE;
	if (devtype == WIRE_DEV_CPU && devidx != 0)
		return *what = "cpu device with an index", RDAG_EWIRE_FIELD;
	return *what = "reserved flags set", RDAG_EWIRE_FLAGS;
}

/*
 * product(dims) * esize == nbytes without overflow, in one branch-free pass over the dims
 * (dim(i) gives dim i as a u64). Sets result to 0, or 1 for a negative dim, 2 for an
 * overflowing product, 3 for a mismatch. A zero dim makes the product 0 whatever the others,
 * so an overflow is looked at again only then (rare path).
 */
#define SHAPE_STEP_(k, dim)                                                                           \
	case (k) + 1:                                                                              \
		d_ = (dim(k));                                                                     \
		or_ |= d_;                                                                         \
		ovf_ |= __builtin_mul_overflow(prod_, d_, &prod_);                                 \
		WIRE_FALLTHROUGH_
#define SHAPE_CHECK(rank, esize, nbytes, dim, result)                                              \
	do {                                                                                       \
		uint64_t prod_ = (esize), or_ = 0, d_;                                             \
		bool ovf_ = false;                                                                 \
		switch (rank) { /* unrolled: rank <= 8 was checked */                              \
			SHAPE_STEP_(7, dim);                                                            \
			SHAPE_STEP_(6, dim);                                                            \
			SHAPE_STEP_(5, dim);                                                            \
			SHAPE_STEP_(4, dim);                                                            \
			SHAPE_STEP_(3, dim);                                                            \
			SHAPE_STEP_(2, dim);                                                            \
			SHAPE_STEP_(1, dim);                                                            \
			SHAPE_STEP_(0, dim);                                                            \
		default:                                                                           \
			break;                                                                     \
		}                                                                                  \
		if (__builtin_expect(ovf_, 0)) {                                                   \
			bool zero_ = false;                                                        \
			for (unsigned i_ = 0; i_ < (rank); i_++)                                   \
				zero_ |= (dim(i_)) == 0;                                           \
			if (!zero_)                                                                \
				prod_ = 0, ovf_ = (or_ >> 63) == 0;                                \
			else                                                                       \
				prod_ = 0, ovf_ = false;                                           \
		}                                                                                  \
		(result) = (or_ >> 63) ? 1 : ovf_ ? 2 : prod_ == (nbytes) ? 0 : 3;                 \
	} while (0)

/* Size of the descriptor whose head is h; rank and location may be unchecked (bounded anyway). */
#define MAX_DESC (DESC_HEAD + 8u * WIRE_MAX_RANK + 16u)
static inline size_t desc_size(uint64_t h)
{
	return DESC_HEAD + 8u * ((h >> 8) & 0xff) + loc_sizes[(h >> 16) & 0xff];
}

static const char *const shape_errs[] = {"", "a negative dim", "a shape product that overflows",
					  "a shape product that does not match its byte length"};

int wire_tensors_size(uint8_t kind, const struct wire_tensor *t, uint32_t n, size_t *size)
{
	size_t sz = *size;

	if (n > WIRE_MAX_TENSORS)
		return err_set(RDAG_EINVAL, "wire: %s: %u tensors (limit %u)", wire_kind_name(kind), n,
			       WIRE_MAX_TENSORS);
	if (n && !t)
		return err_set(RDAG_EINVAL, "wire: %s: %u tensors but no array", wire_kind_name(kind), n);
	/* Sizes only (any rank and location give a bounded size): wire_tensors_put() validates. */
	for (uint32_t i = 0; i < n; i++, t++) {
		sz += DESC_HEAD + 8u * t->rank + loc_sizes[t->loc];
		if (t->loc == WIRE_LOC_INLINE) {
			if (t->nbytes > WIRE_MAX_LENGTH || sz > WIRE_MAX_LENGTH)
				return err_set(RDAG_EOVERFLOW, "wire: %s: tensor %u: %llu inline bytes "
					       "do not fit in a message", wire_kind_name(kind), i,
					       (unsigned long long)t->nbytes);
			sz += pad8((size_t)t->nbytes);
		}
	}
	*size = sz;
	return 0;
}

/* The encoder's rules for one descriptor (the decoder's, as RDAG_EINVAL); 0 if valid. */
static int check_tensor(uint8_t kind, uint32_t i, const struct wire_tensor *t)
{
	uint64_t h = head_of(t);
	unsigned esize = dtype_sizes[t->dtype];
	int bad;

	if (__builtin_expect(head_bad(h, esize), 0)) {
		const char *what;

		head_diagnose(h, &what);
		return err_set(RDAG_EINVAL, "wire: %s: tensor %u: %s", wire_kind_name(kind), i, what);
	}
#define DIM(k) (uint64_t)t->shape[k]
	SHAPE_CHECK(t->rank, esize, t->nbytes, DIM, bad);
#undef DIM
	if (__builtin_expect(bad, 0))
		return err_set(RDAG_EINVAL, "wire: %s: tensor %u: %s", wire_kind_name(kind), i,
			       shape_errs[bad]);
	switch (t->loc) {
	case WIRE_LOC_INLINE:
		if (t->nbytes && !t->u.data)
			return err_set(RDAG_EINVAL, "wire: %s: tensor %u: inline without data",
				       wire_kind_name(kind), i);
		break;
	case WIRE_LOC_SLOT:
		if (t->u.slot.offset + t->u.slot.length < t->u.slot.offset)
			return err_set(RDAG_EINVAL, "wire: %s: tensor %u: slot offset + length overflows",
				       wire_kind_name(kind), i);
		if (t->nbytes > t->u.slot.length)
			return err_set(RDAG_EINVAL, "wire: %s: tensor %u: %llu bytes in a %llu-byte slot",
				       wire_kind_name(kind), i, (unsigned long long)t->nbytes,
				       (unsigned long long)t->u.slot.length);
		break;
	case WIRE_LOC_RDV:
		if (t->u.rdv.addr + t->nbytes < t->u.rdv.addr)
			return err_set(RDAG_EINVAL, "wire: %s: tensor %u: address + length overflows",
				       wire_kind_name(kind), i);
		break;
	default:
		break;
	}
	return 0;
}

int wire_tensors_put(uint8_t kind, uint8_t *p, const struct wire_tensor *t, uint32_t n)
{
	uint8_t *data;
	uint32_t i, ninline = 0;
	int rc;

	/* Descriptors first (each checked, then written); the inline bytes go after the last. */
	for (i = 0; i < n; i++) {
		const struct wire_tensor *x = &t[i];
		unsigned rank = x->rank;

		rc = check_tensor(kind, i, x);
		if (__builtin_expect(rc, 0))
			return rc;
		if (SAME_LAYOUT) {
			/* head, nbytes, dims: 2 + rank words copied as they are */
			wire_copy_desc_(p, x, rank);
		} else {
			st64(p, head_of(x));
			st64(p + 8, x->nbytes);
			for (unsigned d = 0; d < rank; d++)
				st64(p + DESC_HEAD + (size_t)8 * d, (uint64_t)x->shape[d]);
		}
		p += DESC_HEAD + 8 * rank;
		switch (x->loc) {
		case WIRE_LOC_SLOT: /* slot {offset, length} and rdv {addr, key}: two u64 */
		case WIRE_LOC_RDV:
			st64(p, x->u.slot.offset);
			st64(p + 8, x->u.slot.length);
			p += 16;
			break;
		case WIRE_LOC_NCCL:
			st64(p, x->u.nccl_tag);
			p += 8;
			break;
		case WIRE_LOC_INLINE:
			ninline++;
			break;
		default:
			break;
		}
	}
	data = p;
	for (i = 0; ninline && i < n; i++) {
		if (t[i].loc == WIRE_LOC_INLINE) {
			struct wire_bytes b = {t[i].u.data, (uint32_t)t[i].nbytes};

			data = wire_put_bytes(data, &b);
			ninline--;
		}
	}
	return 0;
}

int wire_tensors_get(const uint8_t *p, const uint8_t *end, uint32_t count, struct wire_msg *m,
		     struct wire_tensor_list *l)
{
	uint64_t inline_total = 0; /* padded inline bytes, never above left(p, end) */
	uint32_t ninline = 0;

	l->count = count;
	l->desc = p;
	for (uint32_t i = 0; i < count; i++) {
		unsigned esize, rank, loc;
		uint64_t h, nbytes;
		int bad;

		/* Room for the largest descriptor: no bounds checks needed below (the common case). */
		if (__builtin_expect(left(p, end) < MAX_DESC, 0)) {
			if (left(p, end) < DESC_HEAD || left(p, end) < desc_size(ld64(p)))
				return err_set(RDAG_EWIRE_TRUNCATED, "wire: %s: truncated in tensor %u",
					       wire_kind_name(m->kind), i);
		}
		h = ld64(p);
		esize = dtype_sizes[h & 0xff];
		nbytes = ld64(p + 8);
		if (__builtin_expect(head_bad(h, esize), 0)) {
			const char *what;
			int code = head_diagnose(h, &what);

			return err_set(code, "wire: %s: tensor %u: %s (descriptor head 0x%016llx)",
				       wire_kind_name(m->kind), i, what, (unsigned long long)h);
		}
		rank = (h >> 8) & 0xff;
		loc = (h >> 16) & 0xff;
		p += DESC_HEAD;
#define DIM(k) ld64(p + (size_t)8 * (k))
		SHAPE_CHECK(rank, esize, nbytes, DIM, bad);
#undef DIM
		if (__builtin_expect(bad, 0))
			return err_set(RDAG_EWIRE_SHAPE, "wire: %s: tensor %u: %s",
				       wire_kind_name(m->kind), i, shape_errs[bad]);
		p += (size_t)8 * rank;
		switch (loc) {
		case WIRE_LOC_INLINE: {
			/* What follows must hold the inline bytes so far and these. */
			size_t avail = left(p, end);
			uint64_t room = inline_total > avail ? 0 : avail - inline_total;

			if (nbytes > room || pad8((size_t)nbytes) > room)
				return err_set(RDAG_EWIRE_TRUNCATED, "wire: %s: tensor %u: %llu inline "
					       "bytes run past the end", wire_kind_name(m->kind), i,
					       (unsigned long long)nbytes);
			inline_total += pad8((size_t)nbytes);
			ninline++;
			break;
		}
		case WIRE_LOC_SLOT: {
			uint64_t off = ld64(p), len = ld64(p + 8);

			if (__builtin_expect((off + len < off) | (nbytes > len), 0)) {
				if (off + len < off)
					return err_set(RDAG_EWIRE_LENGTH, "wire: %s: tensor %u: slot offset "
						       "+ length overflows", wire_kind_name(m->kind), i);
				return err_set(RDAG_EWIRE_FIELD, "wire: %s: tensor %u: %llu bytes in a "
					       "%llu-byte slot", wire_kind_name(m->kind), i,
					       (unsigned long long)nbytes, (unsigned long long)len);
			}
			break;
		}
		case WIRE_LOC_RDV:
			if (ld64(p) + nbytes < ld64(p))
				return err_set(RDAG_EWIRE_LENGTH, "wire: %s: tensor %u: address + length "
					       "overflows", wire_kind_name(m->kind), i);
			break;
		default:
			break;
		}
		p += wire_loc_size_(loc);
	}
	l->data = p;
	if (inline_total > left(p, end))
		return err_set(RDAG_EWIRE_TRUNCATED, "wire: %s: inline bytes run past the end",
			       wire_kind_name(m->kind));
	if (inline_total < left(p, end))
		return err_set(RDAG_EWIRE_TRAILING, "wire: %s: %zu bytes after the tensors",
			       wire_kind_name(m->kind), left(p, end) - (size_t)inline_total);
	if (ninline) {
		/* Second pass, inline tensors only: their padding must be zero. */
		const uint8_t *d = l->desc, *data = l->data;

		for (uint32_t i = 0; i < count; i++) {
			uint64_t nbytes = ld64(d + 8);

			if (d[2] == WIRE_LOC_INLINE) {
				size_t padded = pad8((size_t)nbytes);

				if (!all_zero(data + nbytes, padded - (size_t)nbytes))
					return err_set(RDAG_EWIRE_FIELD, "wire: %s: tensor %u: non-zero "
						       "padding after its inline bytes",
						       wire_kind_name(m->kind), i);
				data += padded;
			}
			d += DESC_HEAD + 8u * d[1] + wire_loc_size_(d[2]);
		}
	}
	return 0;
}
