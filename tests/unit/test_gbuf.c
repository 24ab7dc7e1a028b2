/* Unit tests of the gradient buffer cache: reuse, zeroing, the fit rule, the byte limit, threads. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "util/gbuf.h"

#define MIB ((size_t)1 << 20)

static size_t first_nonzero(const unsigned char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return i;
	return n;
}

static int setup(void **state)
{
	(void)state;
	gbuf_drain();
	return 0;
}

static void reused_and_zeroed(void **state)
{
	struct gbuf_stats a, b;
	unsigned char *p, *q;

	(void)state;
	gbuf_stats(&a);
	p = gbuf_alloc(MIB, true);
	assert_non_null(p);
	assert_int_equal(first_nonzero(p, MIB), MIB);
	memset(p, 0xab, MIB);
	gbuf_free(p);
	q = gbuf_alloc(MIB, true);
	assert_ptr_equal(q, p); /* the same pages again */
	assert_int_equal(first_nonzero(q, MIB), MIB);
	memset(q, 0xcd, MIB);
	gbuf_free(q);
	q = gbuf_alloc(MIB - 4096, false); /* fits, unzeroed: the old bytes are still there */
	assert_ptr_equal(q, p);
	assert_int_equal(q[0], 0xcd);
	gbuf_free(q);
	gbuf_stats(&b);
	assert_int_equal(b.hits - a.hits, 2);
	assert_int_equal(b.misses - a.misses, 1);
	assert_int_equal(b.kept - a.kept, 3);
	assert_int_equal(b.count, 1);
	assert_true(b.bytes >= MIB);
}

static void too_large_a_fit_is_a_miss(void **state)
{
	struct gbuf_stats s;
	void *big, *half;

	(void)state;
	big = gbuf_alloc(MIB, false);
	assert_non_null(big);
	gbuf_free(big);
	half = gbuf_alloc(MIB / 2, false); /* 1 MiB would waste half of it */
	assert_non_null(half);
	assert_ptr_not_equal(half, big);
	gbuf_stats(&s);
	assert_int_equal(s.count, 1); /* the 1 MiB buffer is still kept */
	gbuf_free(half);
	gbuf_stats(&s);
	assert_int_equal(s.count, 2);
}

static void small_buffers_are_not_kept(void **state)
{
	struct gbuf_stats a, b;
	void *p;

	(void)state;
	gbuf_stats(&a);
	p = gbuf_alloc(GBUF_MIN / 2, true);
	assert_non_null(p);
	gbuf_free(p);
	gbuf_free(NULL);
	gbuf_stats(&b);
	assert_int_equal(b.count, a.count);
	assert_int_equal(b.kept, a.kept);
	assert_int_equal(b.hits + b.misses, a.hits + a.misses); /* small ones are not counted */
	p = gbuf_alloc(0, false); /* a valid pointer, as malloc(1) */
	assert_non_null(p);
	gbuf_free(p);
}

/* The process runs with RDAG_GRAD_CACHE=3M (main): the oldest go when the bytes would exceed it. */
static void the_limit_drops_the_oldest(void **state)
{
	struct gbuf_stats a, s;
	void *p[4], *q;

	(void)state;
	for (int i = 0; i < 4; i++) {
		p[i] = gbuf_alloc(MIB + MIB / 16, false);
		assert_non_null(p[i]);
	}
	gbuf_stats(&a);
	for (int i = 0; i < 4; i++)
		gbuf_free(p[i]);
	gbuf_stats(&s);
	assert_int_equal(s.limit, 3 * MIB);
	assert_true(s.bytes <= s.limit);
	assert_int_equal(s.count, 2); /* three would be more than 3 MiB, whatever malloc adds */
	assert_int_equal(s.dropped - a.dropped, 2);
	/* the two newest are the ones left */
	q = gbuf_alloc(MIB + MIB / 16, false);
	assert_true(q == p[2] || q == p[3]);
	gbuf_free(q);
	/* larger than the whole limit: freed at once, nothing else dropped */
	q = gbuf_alloc(4 * MIB, false);
	assert_non_null(q);
	gbuf_stats(&a);
	gbuf_free(q);
	gbuf_stats(&s);
	assert_int_equal(s.count, a.count);
	assert_int_equal(s.dropped - a.dropped, 1);
}

static void a_buffer_may_leave_by_free(void **state)
{
	void *p = gbuf_alloc(MIB, true);

	(void)state;
	assert_non_null(p);
	free(p); /* what a sink's *_take callback does: the buffer never comes back */
}

static void nothing_is_kept_without_an_agent(void **state)
{
	struct gbuf_stats s;
	void *p = gbuf_alloc(MIB, false);

	(void)state;
	assert_non_null(p);
	gbuf_free(p);
	gbuf_stats(&s);
	assert_int_equal(s.count, 1);
	gbuf_use(false); /* the last agent closes: what is kept goes */
	gbuf_stats(&s);
	assert_int_equal(s.count, 0);
	assert_int_equal(s.bytes, 0);
	p = gbuf_alloc(MIB, false);
	assert_non_null(p);
	gbuf_free(p);
	gbuf_stats(&s);
	assert_int_equal(s.count, 0);
	gbuf_use(true);
}

struct worker {
	unsigned id;
	int bad;
};

static void *churn(void *arg)
{
	struct worker *w = arg;

	for (int i = 0; i < 200; i++) {
		size_t nb = GBUF_MIN + (size_t)(w->id % 2) * MIB / 2;
		unsigned char *p = gbuf_alloc(nb, i % 2 == 0);

		if (!p) {
			w->bad = 1;
			break;
		}
		if (i % 2 == 0 && first_nonzero(p, nb) != nb)
			w->bad = 1;
		memset(p, (int)(w->id + 1), nb);
		/* nobody else may write into it while it is ours */
		for (size_t j = 0; j < nb; j += 4096)
			if (p[j] != (unsigned char)(w->id + 1))
				w->bad = 1;
		gbuf_free(p);
	}
	return NULL;
}

static void threads_never_share_a_buffer(void **state)
{
	pthread_t t[4];
	struct worker w[4];
	struct gbuf_stats s;

	(void)state;
	for (unsigned i = 0; i < 4; i++) {
		w[i].id = i;
		w[i].bad = 0;
		assert_int_equal(pthread_create(&t[i], NULL, churn, &w[i]), 0);
	}
	for (unsigned i = 0; i < 4; i++) {
		assert_int_equal(pthread_join(t[i], NULL), 0);
		assert_int_equal(w[i].bad, 0);
	}
	gbuf_stats(&s);
	assert_true(s.bytes <= s.limit);
	assert_true(s.hits > 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup(reused_and_zeroed, setup),
		cmocka_unit_test_setup(too_large_a_fit_is_a_miss, setup),
		cmocka_unit_test_setup(small_buffers_are_not_kept, setup),
		cmocka_unit_test_setup(the_limit_drops_the_oldest, setup),
		cmocka_unit_test_setup(a_buffer_may_leave_by_free, setup),
		cmocka_unit_test_setup(nothing_is_kept_without_an_agent, setup),
		cmocka_unit_test_setup(threads_never_share_a_buffer, setup),
	};

	/* read once, at the first use */
	setenv("RDAG_GRAD_CACHE", "3M", 1);
	gbuf_use(true); /* as an open agent does */
	return cmocka_run_group_tests(tests, NULL, NULL);
}
