/* Tensor descriptors and devices on the wire: validation, encoding, and the decoded-list iterator. */
#include <limits.h>

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

static const uint8_t dtype_sizes[WIRE_DT_COUNT_] = {
	[WIRE_DT_F16] = 2, [WIRE_DT_BF16] = 2, [WIRE_DT_F32] = 4,  [WIRE_DT_F64] = 8,
	[WIRE_DT_I8] = 1,  [WIRE_DT_I16] = 2,  [WIRE_DT_I32] = 4,  [WIRE_DT_I64] = 8,
	[WIRE_DT_U8] = 1,  [WIRE_DT_BOOL] = 1, [WIRE_DT_C64] = 8,  [WIRE_DT_C128] = 16,
	[WIRE_DT_F8E4M3] = 1, [WIRE_DT_F8E5M2] = 1,
};

static const uint8_t loc_sizes[WIRE_LOC_COUNT_] = {
	[WIRE_LOC_INLINE] = 0, [WIRE_LOC_SLOT] = 16, [WIRE_LOC_RDV] = 16,
	[WIRE_LOC_RDV_PENDING] = 0, [WIRE_LOC_NCCL] = 8,
};

unsigned wire_dtype_size(uint8_t dtype)
{
	return dtype < WIRE_DT_COUNT_ ? dtype_sizes[dtype] : 0;
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
 * product(dims) * esize == nbytes, without overflow. Returns 0, or 1 for a negative dim, 2 for
 * an overflowing product, 3 for a mismatch.
 */
static int shape_check(const int64_t *dims, unsigned rank, unsigned esize, uint64_t nbytes)
{
	uint64_t prod = esize;
	bool zero = false;

	for (unsigned i = 0; i < rank; i++) {
		if (dims[i] < 0)
			return 1;
		zero |= dims[i] == 0;
	}
	if (zero)
		return nbytes == 0 ? 0 : 3;
	for (unsigned i = 0; i < rank; i++) {
		if (__builtin_mul_overflow(prod, (uint64_t)dims[i], &prod))
			return 2;
	}
	return prod == nbytes ? 0 : 3;
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
	for (uint32_t i = 0; i < n; i++, t++) {
		unsigned esize = wire_dtype_size(t->dtype);
		int bad;

		if (!esize)
			return err_set(RDAG_EINVAL, "wire: %s: tensor %u: unknown dtype %u",
				       wire_kind_name(kind), i, t->dtype);
		if (t->rank > WIRE_MAX_RANK)
			return err_set(RDAG_EINVAL, "wire: %s: tensor %u: rank %u (limit %u)",
				       wire_kind_name(kind), i, t->rank, WIRE_MAX_RANK);
		if (t->loc >= WIRE_LOC_COUNT_)
			return err_set(RDAG_EINVAL, "wire: %s: tensor %u: unknown location %u",
				       wire_kind_name(kind), i, t->loc);
		if (!wire_device_ok(&t->device))
			return err_set(RDAG_EINVAL, "wire: %s: tensor %u: bad device %u:%u",
				       wire_kind_name(kind), i, t->device.type, t->device.index);
		if (t->flags & ~WIRE_TF_REQUIRES_GRAD)
			return err_set(RDAG_EINVAL, "wire: %s: tensor %u: unknown flags 0x%x",
				       wire_kind_name(kind), i, t->flags);
		bad = shape_check(t->shape, t->rank, esize, t->nbytes);
		if (bad)
			return err_set(RDAG_EINVAL, "wire: %s: tensor %u: %s", wire_kind_name(kind), i,
				       shape_errs[bad]);
		sz += DESC_HEAD + 8u * t->rank + loc_sizes[t->loc];
		switch (t->loc) {
		case WIRE_LOC_INLINE:
			if (t->nbytes && !t->u.data)
				return err_set(RDAG_EINVAL, "wire: %s: tensor %u: inline without data",
					       wire_kind_name(kind), i);
			if (t->nbytes > WIRE_MAX_LENGTH || sz > WIRE_MAX_LENGTH)
				return err_set(RDAG_EOVERFLOW, "wire: %s: tensor %u: %llu inline bytes "
					       "do not fit in a message", wire_kind_name(kind), i,
					       (unsigned long long)t->nbytes);
			sz += pad8((size_t)t->nbytes);
			break;
		case WIRE_LOC_SLOT:
			if (t->u.slot.offset + t->u.slot.length < t->u.slot.offset)
				return err_set(RDAG_EINVAL, "wire: %s: tensor %u: slot offset + length "
					       "overflows", wire_kind_name(kind), i);
			if (t->nbytes > t->u.slot.length)
				return err_set(RDAG_EINVAL, "wire: %s: tensor %u: %llu bytes in a "
					       "%llu-byte slot", wire_kind_name(kind), i,
					       (unsigned long long)t->nbytes,
					       (unsigned long long)t->u.slot.length);
			break;
		case WIRE_LOC_RDV:
			if (t->u.rdv.addr + t->nbytes < t->u.rdv.addr)
				return err_set(RDAG_EINVAL, "wire: %s: tensor %u: address + length "
					       "overflows", wire_kind_name(kind), i);
			break;
		default:
			break;
		}
	}
	*size = sz;
	return 0;
}

uint8_t *wire_tensors_put(uint8_t *p, const struct wire_tensor *t, uint32_t n)
{
	uint8_t *data;
	uint32_t i;

	/* Descriptors first; the inline bytes go after the last one. */
	for (i = 0; i < n; i++) {
		const struct wire_tensor *x = &t[i];

		p[0] = x->dtype;
		p[1] = x->rank;
		p[2] = x->loc;
		p[3] = x->device.type;
		st16(p + 4, x->device.index);
		st16(p + 6, x->flags);
		st64(p + 8, x->nbytes);
		p += DESC_HEAD;
		for (unsigned d = 0; d < x->rank; d++, p += 8)
			st64(p, (uint64_t)x->shape[d]);
		switch (x->loc) {
		case WIRE_LOC_SLOT:
			st64(p, x->u.slot.offset);
			st64(p + 8, x->u.slot.length);
			p += 16;
			break;
		case WIRE_LOC_RDV:
			st64(p, x->u.rdv.addr);
			st64(p + 8, x->u.rdv.key);
			p += 16;
			break;
		case WIRE_LOC_NCCL:
			st64(p, x->u.nccl_tag);
			p += 8;
			break;
		default:
			break;
		}
	}
	data = p;
	for (i = 0; i < n; i++) {
		if (t[i].loc == WIRE_LOC_INLINE) {
			struct wire_bytes b = {t[i].u.data, (uint32_t)t[i].nbytes};

			data = wire_put_bytes(data, &b);
		}
	}
	return data;
}

int wire_tensors_get(const uint8_t *p, const uint8_t *end, uint32_t count, struct wire_msg *m,
		     struct wire_tensor_list *l)
{
	const char *kn = wire_kind_name(m->kind);
	uint64_t inline_total = 0; /* padded inline bytes, never above left(p, end) */
	uint32_t ninline = 0;
	int64_t dims[WIRE_MAX_RANK];

	l->count = count;
	l->desc = p;
	for (uint32_t i = 0; i < count; i++) {
		unsigned esize, rank, loc, bad;
		uint16_t flags;
		uint64_t nbytes;
		size_t need, avail;
		struct wire_device dev;

		if (left(p, end) < DESC_HEAD)
			return err_set(RDAG_EWIRE_TRUNCATED, "wire: %s: truncated in tensor %u", kn, i);
		esize = wire_dtype_size(p[0]);
		rank = p[1];
		loc = p[2];
		dev.type = p[3];
		dev.index = ld16(p + 4);
		flags = ld16(p + 6);
		nbytes = ld64(p + 8);
		if (!esize)
			return err_set(RDAG_EWIRE_DTYPE, "wire: %s: tensor %u: unknown dtype %u", kn, i,
				       p[0]);
		if (rank > WIRE_MAX_RANK)
			return err_set(RDAG_EWIRE_COUNT, "wire: %s: tensor %u: rank %u (limit %u)", kn, i,
				       rank, WIRE_MAX_RANK);
		if (loc >= WIRE_LOC_COUNT_)
			return err_set(RDAG_EWIRE_LOCATION, "wire: %s: tensor %u: unknown location %u",
				       kn, i, loc);
		if (dev.type != WIRE_DEV_CPU && dev.type != WIRE_DEV_CUDA)
			return err_set(RDAG_EWIRE_DEVICE, "wire: %s: tensor %u: unknown device type %u",
				       kn, i, dev.type);
		if (!wire_device_ok(&dev))
			return err_set(RDAG_EWIRE_FIELD, "wire: %s: tensor %u: cpu device with index %u",
				       kn, i, dev.index);
		if (flags & ~WIRE_TF_REQUIRES_GRAD)
			return err_set(RDAG_EWIRE_FLAGS, "wire: %s: tensor %u: reserved flags 0x%x", kn,
				       i, flags);
		need = DESC_HEAD + 8u * rank + loc_sizes[loc];
		if (left(p, end) < need)
			return err_set(RDAG_EWIRE_TRUNCATED, "wire: %s: truncated in tensor %u", kn, i);
		/* What follows this descriptor must hold the inline bytes seen so far. */
		avail = left(p, end) - need;
		if (inline_total > avail)
			return err_set(RDAG_EWIRE_TRUNCATED, "wire: %s: truncated in the inline bytes "
				       "before tensor %u", kn, i);
		p += DESC_HEAD;
		for (unsigned d = 0; d < rank; d++, p += 8)
			dims[d] = (int64_t)ld64(p);
		bad = (unsigned)shape_check(dims, rank, esize, nbytes);
		if (bad)
			return err_set(RDAG_EWIRE_SHAPE, "wire: %s: tensor %u: %s", kn, i, shape_errs[bad]);
		switch (loc) {
		case WIRE_LOC_INLINE: {
			uint64_t room = avail - inline_total;

			if (nbytes > room || pad8((size_t)nbytes) > room)
				return err_set(RDAG_EWIRE_TRUNCATED, "wire: %s: tensor %u: %llu inline "
					       "bytes run past the end", kn, i,
					       (unsigned long long)nbytes);
			inline_total += pad8((size_t)nbytes);
			ninline++;
			break;
		}
		case WIRE_LOC_SLOT: {
			uint64_t off = ld64(p), len = ld64(p + 8);

			if (off + len < off)
				return err_set(RDAG_EWIRE_LENGTH, "wire: %s: tensor %u: slot offset + "
					       "length overflows", kn, i);
			if (nbytes > len)
				return err_set(RDAG_EWIRE_FIELD, "wire: %s: tensor %u: %llu bytes in a "
					       "%llu-byte slot", kn, i, (unsigned long long)nbytes,
					       (unsigned long long)len);
			break;
		}
		case WIRE_LOC_RDV:
			if (ld64(p) + nbytes < ld64(p))
				return err_set(RDAG_EWIRE_LENGTH, "wire: %s: tensor %u: address + length "
					       "overflows", kn, i);
			break;
		default:
			break;
		}
		p += loc_sizes[loc];
	}
	l->data = p;
	if (inline_total < left(p, end))
		return err_set(RDAG_EWIRE_TRAILING, "wire: %s: %zu bytes after the tensors", kn,
			       left(p, end) - (size_t)inline_total);
	if (ninline) {
		/* Second pass, inline tensors only: their padding must be zero. */
		const uint8_t *d = l->desc, *data = l->data;

		for (uint32_t i = 0; i < count; i++) {
			uint64_t nbytes = ld64(d + 8);

			if (d[2] == WIRE_LOC_INLINE) {
				size_t padded = pad8((size_t)nbytes);

				if (!all_zero(data + nbytes, padded - (size_t)nbytes))
					return err_set(RDAG_EWIRE_FIELD, "wire: %s: tensor %u: non-zero "
						       "padding after its inline bytes", kn, i);
				data += padded;
			}
			d += DESC_HEAD + 8u * d[1] + loc_sizes[d[2]];
		}
	}
	return 0;
}

bool wire_tensor_next(struct wire_tensor_iter *it, struct wire_tensor *t)
{
	const uint8_t *p = it->desc;

	if (!it->left)
		return false;
	it->left--;
	t->dtype = p[0];
	t->rank = p[1];
	t->loc = p[2];
	t->device.type = p[3];
	t->device.index = ld16(p + 4);
	t->flags = ld16(p + 6);
	t->nbytes = ld64(p + 8);
	p += DESC_HEAD;
	for (unsigned d = 0; d < t->rank; d++, p += 8)
		t->shape[d] = (int64_t)ld64(p);
	switch (t->loc) {
	case WIRE_LOC_INLINE:
		t->u.data = it->data;
		it->data += pad8((size_t)t->nbytes);
		break;
	case WIRE_LOC_SLOT:
		t->u.slot.offset = ld64(p);
		t->u.slot.length = ld64(p + 8);
		p += 16;
		break;
	case WIRE_LOC_RDV:
		t->u.rdv.addr = ld64(p);
		t->u.rdv.key = ld64(p + 8);
		p += 16;
		break;
	case WIRE_LOC_NCCL:
		t->u.nccl_tag = ld64(p);
		p += 8;
		break;
	default:
		break;
	}
	it->desc = p;
	return true;
}
