/* Unit tests of the landing-arena ring: sender allocation, receiver claims, releases and the reported tail. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "xport/xport_int.h"

#define SIZE (64u * 1024u)

static void arena_init(struct xp_arena_in *a)
{
	memset(a, 0, sizeof(*a));
	a->size = SIZE;
	a->ngran = SIZE / XP_GRAN;
	a->held = calloc((a->ngran + 63) / 64, 8);
	a->released = calloc((a->ngran + 63) / 64, 8);
	assert_non_null(a->held);
	assert_non_null(a->released);
}

static void arena_fini(struct xp_arena_in *a)
{
	free(a->held);
	free(a->released);
}

static int claim(struct xp_arena_in *a, uint64_t off, uint64_t len, uint64_t nbytes)
{
	char why[200];

	return xport_arena_claim(a, off, len, nbytes, why, sizeof(why));
}

static void in_order(void **state)
{
	struct xp_arena_in a;
	struct xp_arena_out r = {.size = SIZE};
	uint64_t o1, o2, o3;

	(void)state;
	arena_init(&a);
	assert_int_equal(xport_ring_alloc(&r, 1000, &o1), 0);
	assert_int_equal(xport_ring_alloc(&r, 64, &o2), 0);
	assert_int_equal(xport_ring_alloc(&r, 1, &o3), 0);
	assert_int_equal(o1, 0);
	assert_int_equal(o2, 1024); /* 1000 rounded up to the granule */
	assert_int_equal(o3, 1088);
	assert_int_equal(claim(&a, o1, 1024, 1000), 0);
	assert_int_equal(claim(&a, o2, 64, 64), 0);
	assert_int_equal(claim(&a, o3, 64, 1), 0);
	xport_arena_release(&a, o1, 1024);
	assert_int_equal(a.tail, 1024);
	xport_arena_release(&a, o2, 64);
	xport_arena_release(&a, o3, 64);
	assert_int_equal(a.tail, r.head);
	arena_fini(&a);
}

static void out_of_order(void **state)
{
	struct xp_arena_in a;

	(void)state;
	arena_init(&a);
	/* Three slots arrive and are released in reverse order: the tail waits for the first. */
	assert_int_equal(claim(&a, 2048, 1024, 1024), 0);
	assert_int_equal(claim(&a, 1024, 1024, 1024), 0);
	xport_arena_release(&a, 2048, 1024);
	assert_int_equal(a.tail, 0);
	xport_arena_release(&a, 1024, 1024);
	assert_int_equal(a.tail, 0);    /* [0, 1024) is still in flight, never seen */
	assert_int_equal(claim(&a, 0, 1024, 1024), 0);
	assert_int_equal(a.tail, 0);
	xport_arena_release(&a, 0, 1024);
	assert_int_equal(a.tail, 3072);
	arena_fini(&a);
}

static void refusals(void **state)
{
	struct xp_arena_in a;

	(void)state;
	arena_init(&a);
	assert_int_equal(claim(&a, SIZE, 64, 64), RDAG_EACCES);        /* beyond the end */
	assert_int_equal(claim(&a, 0, SIZE + 64, 64), RDAG_EACCES);    /* longer than the arena */
	assert_int_equal(claim(&a, 65, 64, 64), RDAG_EACCES);          /* misaligned offset */
	assert_int_equal(claim(&a, 64, 100, 100), RDAG_EACCES);        /* misaligned length */
	assert_int_equal(claim(&a, 64, 64, 65), RDAG_EACCES);          /* bytes beyond the slot */
	assert_int_equal(claim(&a, 0, 0, 0), RDAG_EACCES);             /* empty slot */
	assert_int_equal(claim(&a, 0, 4096, 4096), 0);
	assert_int_equal(claim(&a, 1024, 64, 64), RDAG_EACCES);        /* overlaps a held slot */
	assert_int_equal(claim(&a, 4032, 128, 128), RDAG_EACCES);      /* overlaps its end */
	xport_arena_release(&a, 0, 4096);
	assert_int_equal(a.tail, 4096);
	/* Window: with the tail at 4096, [4096, SIZE) then [0, 4096) are usable, no further. */
	assert_int_equal(claim(&a, 4096 + 64, SIZE, SIZE), RDAG_EACCES);
	assert_int_equal(claim(&a, 4096, SIZE, SIZE), 0);                /* the whole ring */
	xport_arena_release(&a, 4096, SIZE);
	assert_int_equal(a.tail, 4096 + SIZE);
	assert_int_equal(claim(&a, 4096, SIZE - 64, SIZE - 64), 0);
	assert_int_equal(claim(&a, 4032, 64, 64), 0);                  /* the last granule before the tail */
	assert_int_equal(claim(&a, 0, 64, 64), RDAG_EACCES);           /* held (wrapped slot) */
	arena_fini(&a);
}

static void wrapping(void **state)
{
	struct xp_arena_in a;
	struct xp_arena_out r = {.size = SIZE};
	uint64_t o;

	(void)state;
	arena_init(&a);
	/* Fill 60 KiB, free it, then a 16 KiB slot runs over the end of the ring (double mapping). */
	assert_int_equal(xport_ring_alloc(&r, 60 * 1024, &o), 0);
	assert_int_equal(claim(&a, o, 60 * 1024, 60 * 1024), 0);
	xport_arena_release(&a, o, 60 * 1024);
	r.tail = a.tail;
	assert_int_equal(xport_ring_alloc(&r, 16 * 1024, &o), 0);
	assert_int_equal(o, 60 * 1024);
	assert_int_equal(claim(&a, o, 16 * 1024, 16 * 1024), 0);
	/* The ring holds 16 KiB: 48 KiB more fit, then it is full. */
	assert_int_equal(xport_ring_alloc(&r, 48 * 1024, &o), 0);
	assert_int_equal(o, 12 * 1024);
	assert_int_equal(xport_ring_alloc(&r, 64, &o), RDAG_ENOSPC);
	assert_int_equal(claim(&a, 12 * 1024, 48 * 1024, 48 * 1024), 0);
	xport_arena_release(&a, 60 * 1024, 16 * 1024);
	xport_arena_release(&a, 12 * 1024, 48 * 1024);
	assert_int_equal(a.tail, r.head);
	arena_fini(&a);
}

/* Sender and receiver driven at random: arrivals and releases out of order, tails reported late. */
static void random_traffic(void **state)
{
	struct xp_arena_in a;
	struct xp_arena_out r = {.size = SIZE};
	struct {
		uint64_t off, len;
		int state; /* 0 in flight, 1 claimed */
	} q[256];
	int n = 0;
	unsigned seed = 12345;

	(void)state;
	arena_init(&a);
	for (int step = 0; step < 200000; step++) {
		int what = (int)(rand_r(&seed) % 4);

		if (what == 0 && n < 256) {
			uint64_t len = 1 + rand_r(&seed) % 9000, off;

			if (xport_ring_alloc(&r, len, &off) == 0) {
				q[n].off = off;
				q[n].len = xport_slot_len(len);
				q[n].state = 0;
				n++;
			}
		} else if (what == 1 && n) {
			int i = (int)(rand_r(&seed) % (unsigned)n);

			if (q[i].state == 0) {
				assert_int_equal(claim(&a, q[i].off, q[i].len, q[i].len), 0);
				q[i].state = 1;
			}
		} else if (what == 2 && n) {
			int i = (int)(rand_r(&seed) % (unsigned)n);

			if (q[i].state == 1) {
				xport_arena_release(&a, q[i].off, q[i].len);
				q[i] = q[--n];
			}
		} else if (what == 3) {
			assert_true(a.tail <= r.head);
			if (a.tail > r.tail)
				r.tail = a.tail;
		}
	}
	for (int i = 0; i < n; i++) {
		if (q[i].state == 0)
			assert_int_equal(claim(&a, q[i].off, q[i].len, q[i].len), 0);
	}
	for (int i = 0; i < n; i++)
		xport_arena_release(&a, q[i].off, q[i].len);
	assert_int_equal(a.tail, r.head);
	arena_fini(&a);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(in_order),
		cmocka_unit_test(out_of_order),
		cmocka_unit_test(refusals),
		cmocka_unit_test(wrapping),
		cmocka_unit_test(random_traffic),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
