/* Landing arenas: double-mapped rings a peer writes into, the sender's ring allocator and the receiver's mirror. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "xport/xport_int.h"

/*
 * The arena a worker grants a peer is a byte ring of `size` bytes, mapped twice in a row
 * ([base, base + size) and [base + size, base + 2 * size) are the same pages), so a slot that runs
 * past the end of the ring is still contiguous in memory: the sender allocates strictly in ring
 * order with no gaps, and a tensor always lands in one piece.
 *
 * Only the sending peer allocates in it (a head it keeps); the receiver mirrors the ring with two
 * bitmaps over XP_GRAN-byte granules (held: named by a message not yet released; released:
 * released while an older slot is still held) and a tail: every ring position below the tail is
 * free again. The receiver reports the tail to the sender (docs/transport.md, CREDIT messages).
 * Since allocation has no gaps, a granule at the tail that is neither held nor released belongs
 * to a message still in flight, so the tail never passes bytes the peer may still be writing.
 */

int xport_arena_create(struct xport *x, struct xp_arena_in *a, size_t size)
{
	long pg = sysconf(_SC_PAGESIZE);
	size_t words;
	void *res = MAP_FAILED, *m1, *m2;
	int fd = -1, rc;

	memset(a, 0, sizeof(*a));
	if (pg <= 0)
		pg = 4096;
	size = (size + (size_t)pg - 1) & ~((size_t)pg - 1);
	if (size == 0 || size > ((size_t)1 << 40))
		return err_set(RDAG_EINVAL, "xport: arena size %zu out of range", size);
	fd = memfd_create("rdag-arena", MFD_CLOEXEC);
	if (fd < 0) {
		rc = err_set(RDAG_ENOMEM, "xport: memfd_create for a landing arena: %s", strerror(errno));
		goto fail;
	}
	if (ftruncate(fd, (off_t)size)) {
		rc = err_set(RDAG_ENOMEM, "xport: sizing a %zu-byte landing arena: %s", size,
			     strerror(errno));
		goto fail;
	}
	res = mmap(NULL, 2 * size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (res == MAP_FAILED) {
		rc = err_set(RDAG_ENOMEM, "xport: reserving %zu bytes for a landing arena: %s",
			     2 * size, strerror(errno));
		goto fail;
	}
	m1 = mmap(res, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0);
	m2 = mmap((uint8_t *)res + size, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0);
	if (m1 == MAP_FAILED || m2 == MAP_FAILED) {
		rc = err_set(RDAG_ENOMEM, "xport: mapping a landing arena twice: %s", strerror(errno));
		goto fail;
	}
	close(fd);
	fd = -1;
	a->base = res;
	a->size = size;
	a->ngran = size / XP_GRAN;
	words = (a->ngran + 63) / 64;
	a->held = calloc(words, sizeof(uint64_t));
	a->released = calloc(words, sizeof(uint64_t));
	if (!a->held || !a->released) {
		rc = err_set(RDAG_ENOMEM, "xport: no memory for arena bitmaps");
		goto fail;
	}
	rc = fab_mr_reg(x->ep, a->base, 2 * size, FAB_ACCESS_LOCAL | FAB_ACCESS_REMOTE_WRITE, &a->mr);
	if (rc)
		goto fail;
	a->registered = 1;
	return 0;
fail:
	if (fd >= 0)
		close(fd);
	if (res != MAP_FAILED)
		munmap(res, 2 * size);
	free(a->held);
	free(a->released);
	memset(a, 0, sizeof(*a));
	return rc;
}

void xport_arena_destroy(struct xport *x, struct xp_arena_in *a)
{
	if (a->registered)
		(void)fab_mr_dereg(x->ep, &a->mr);
	a->registered = 0;
}

/* Unmapping happens after the endpoint is closed (nothing may write into it any more). */
static void arena_unmap(struct xp_arena_in *a)
{
	if (a->base)
		munmap(a->base, 2 * a->size);
	free(a->held);
	free(a->released);
	memset(a, 0, sizeof(*a));
}

/* ---- bitmap ranges [g, g + cnt) without wrap ------------------------------------------------- */

enum { BITS_ANY, BITS_SET, BITS_CLEAR };

static int bits_range(uint64_t *bm, size_t g, size_t cnt, int op)
{
	while (cnt) {
		size_t w = g / 64, b = g % 64, n = 64 - b < cnt ? 64 - b : cnt;
		uint64_t mask = (n == 64 ? ~(uint64_t)0 : (((uint64_t)1 << n) - 1)) << b;

		switch (op) {
		case BITS_ANY:
			if (bm[w] & mask)
				return 1;
			break;
		case BITS_SET:
			bm[w] |= mask;
			break;
		default:
			bm[w] &= ~mask;
			break;
		}
		g += n;
		cnt -= n;
	}
	return 0;
}

/* The same over a ring of ngran granules: the range may wrap once. */
static int ring_bits(uint64_t *bm, size_t ngran, size_t g, size_t cnt, int op)
{
	size_t first = g + cnt <= ngran ? cnt : ngran - g;
	int r = bits_range(bm, g, first, op);

	if (cnt > first)
		r |= bits_range(bm, 0, cnt - first, op);
	return r;
}

int xport_arena_claim(struct xp_arena_in *a, uint64_t offset, uint64_t length, uint64_t nbytes,
		      char *why, size_t whylen)
{
	uint64_t size = a->size, dist;

	if (!size) {
		snprintf(why, whylen, "names a slot but no landing arena was granted to it");
		return RDAG_EACCES;
	}
	if (offset >= size || length > size || length == 0 || offset % XP_GRAN || length % XP_GRAN ||
	    nbytes > length) {
		snprintf(why, whylen, "names slot [%llu, +%llu) for %llu bytes, not a slot of the "
			 "%llu-byte arena granted to it", (unsigned long long)offset,
			 (unsigned long long)length, (unsigned long long)nbytes,
			 (unsigned long long)size);
		return RDAG_EACCES;
	}
	dist = (offset + size - a->tail % size) % size;
	if (dist + length > size) {
		snprintf(why, whylen, "names slot [%llu, +%llu) beyond the space released to it (ring "
			 "tail at %llu)", (unsigned long long)offset, (unsigned long long)length,
			 (unsigned long long)(a->tail % size));
		return RDAG_EACCES;
	}
	if (ring_bits(a->held, a->ngran, offset / XP_GRAN, length / XP_GRAN, BITS_ANY) ||
	    ring_bits(a->released, a->ngran, offset / XP_GRAN, length / XP_GRAN, BITS_ANY)) {
		snprintf(why, whylen, "names slot [%llu, +%llu), overlapping a slot still in use",
			 (unsigned long long)offset, (unsigned long long)length);
		return RDAG_EACCES;
	}
	ring_bits(a->held, a->ngran, offset / XP_GRAN, length / XP_GRAN, BITS_SET);
	return 0;
}

void xport_arena_unclaim(struct xp_arena_in *a, uint64_t offset, uint64_t length)
{
	ring_bits(a->held, a->ngran, offset / XP_GRAN, length / XP_GRAN, BITS_CLEAR);
}

void xport_arena_release(struct xp_arena_in *a, uint64_t offset, uint64_t length)
{
	size_t g;

	ring_bits(a->held, a->ngran, offset / XP_GRAN, length / XP_GRAN, BITS_CLEAR);
	ring_bits(a->released, a->ngran, offset / XP_GRAN, length / XP_GRAN, BITS_SET);
	/* Advance the tail over the released granules that follow it, a word at a time. */
	g = (size_t)((a->tail % a->size) / XP_GRAN);
	for (size_t left = a->ngran; left;) {
		size_t w = g / 64, b = g % 64, run, avail = 64 - b;
		uint64_t bits = a->released[w] >> b;

		if (avail > left)
			avail = left;
		run = ~bits ? (size_t)__builtin_ctzll(~bits) : 64;
		if (run > avail)
			run = avail;
		if (run == 0)
			break;
		bits_range(a->released, g, run, BITS_CLEAR);
		a->tail += (uint64_t)run * XP_GRAN;
		left -= run;
		g = (g + run) % a->ngran;
		if (run < avail)
			break;
	}
}

int xport_ring_alloc(struct xp_arena_out *r, uint64_t len, uint64_t *off)
{
	uint64_t l = xport_slot_len(len ? len : 1);

	if (!r->size || l > r->size || r->head + l - r->tail > r->size)
		return RDAG_ENOSPC;
	*off = r->head % r->size;
	r->head += l;
	return 0;
}

void xport_arena_unmap(struct xp_arena_in *a)
{
	arena_unmap(a);
}
