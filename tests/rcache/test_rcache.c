/* cmocka tests of the registration cache: hits, misses, covering hits, LRU bounds, refcounts, invalidation. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fake_reg.h"
#include "rcache/itree.h"
#include "rcache/rcache.h"

#define L FAB_ACCESS_LOCAL
#define RW FAB_ACCESS_REMOTE_WRITE
#define RR FAB_ACCESS_REMOTE_READ

static size_t pg;

struct fx {
	struct fake_reg fake;
	struct rcache *c;
	char *mem; /* 64 pages, mapped and touched */
	size_t memlen;
};

static int have_uffd(void)
{
	char why[256];

	return rcache_monitor_probe(why, sizeof(why)) == RCACHE_MONITOR_UFFD;
}

static struct fx *fx_new(size_t max_entries, size_t max_bytes, enum rcache_monitor mon)
{
	struct fx *f = calloc(1, sizeof(*f));
	struct rcache_attr a;

	assert_non_null(f);
	fake_init(&f->fake);
	rcache_attr_init(&a, fake_reg_cb, fake_dereg_cb, &f->fake);
	a.max_entries = max_entries;
	a.max_bytes = max_bytes;
	a.monitor = mon;
	a.name = "test";
	assert_int_equal(rcache_create(&a, &f->c), 0);
	f->memlen = 64 * pg;
	f->mem = mmap(NULL, f->memlen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(f->mem != MAP_FAILED);
	memset(f->mem, 0x5a, f->memlen);
	return f;
}

static void fx_free(struct fx *f)
{
	assert_int_equal(rcache_destroy(f->c), 0);
	/* Every registration was deregistered exactly once. */
	assert_int_equal(fake_live(&f->fake), 0);
	assert_int_equal(f->fake.errors, 0);
	munmap(f->mem, f->memlen);
	fake_fini(&f->fake);
	free(f);
}

static struct rcache_stats stats(struct fx *f)
{
	struct rcache_stats s;

	rcache_get_stats(f->c, &s);
	return s;
}

static struct rcache_reg *get(struct fx *f, const void *addr, size_t len, uint32_t access)
{
	struct rcache_reg *r = NULL;

	assert_int_equal(rcache_lookup(f->c, addr, len, access, &r), 0);
	assert_non_null(r);
	/* Whatever comes back covers the request with at least the access asked. */
	assert_true((uintptr_t)r->mr.addr <= (uintptr_t)addr);
	assert_true((uintptr_t)r->mr.addr + r->mr.len >= (uintptr_t)addr + len);
	assert_int_equal(r->access & access, access);
	assert_true(fake_is_live(&f->fake, r->mr.rkey));
	return r;
}

#define SKIP_WITHOUT_UFFD()                                                                  \
	do {                                                                                 \
		if (!have_uffd())                                                            \
			skip();                                                              \
	} while (0)

static void test_miss_then_hit(void **state)
{
	struct fx *f;
	struct rcache_reg *a, *b;
	struct rcache_stats s;
	uint64_t key;

	SKIP_WITHOUT_UFFD();
	f = fx_new(16, 1 << 20, RCACHE_MONITOR_UFFD);
	a = get(f, f->mem + 100, 1000, L);
	key = a->mr.rkey;
	/* Local registrations cover whole pages. */
	assert_ptr_equal(a->mr.addr, f->mem);
	assert_int_equal(a->mr.len, pg);
	rcache_release(f->c, a);
	assert_true(fake_is_live(&f->fake, key)); /* kept cached after release */
	b = get(f, f->mem + 100, 1000, L);
	assert_int_equal(b->mr.rkey, key);
	assert_int_equal(fake_nregs(&f->fake), 1);
	rcache_release(f->c, b);
	s = stats(f);
	assert_int_equal(s.lookups, 2);
	assert_int_equal(s.hits, 1);
	assert_int_equal(s.misses, 1);
	assert_int_equal(s.entries, 1);
	assert_int_equal(s.bytes, pg);
	assert_int_equal(s.in_use, 0);
	assert_int_equal(s.monitor, RCACHE_MONITOR_UFFD);
	/* Remote address of a byte inside the registration. */
	assert_int_equal(rcache_remote_addr(b, f->mem + 123), (uint64_t)(uintptr_t)(f->mem + 123));
	fx_free(f);
	(void)state;
}

static void test_covering_hit(void **state)
{
	struct fx *f;
	struct rcache_reg *big, *r;
	uint64_t key;

	SKIP_WITHOUT_UFFD();
	f = fx_new(16, 1 << 20, RCACHE_MONITOR_UFFD);
	big = get(f, f->mem + 10, 3 * pg - 20, L); /* pages 0..2 */
	key = big->mr.rkey;
	rcache_release(f->c, big);
	r = get(f, f->mem + pg + 7, 100, L); /* inside: hit */
	assert_int_equal(r->mr.rkey, key);
	rcache_release(f->c, r);
	r = get(f, f->mem, 3 * pg, L); /* exactly the pages: hit */
	assert_int_equal(r->mr.rkey, key);
	rcache_release(f->c, r);
	r = get(f, f->mem + 2 * pg, pg + 1, L); /* one byte past: miss */
	assert_int_not_equal(r->mr.rkey, key);
	rcache_release(f->c, r);
	assert_int_equal(stats(f).hits, 2);
	assert_int_equal(stats(f).misses, 2);
	fx_free(f);
	(void)state;
}

static void test_access_and_exact_remote(void **state)
{
	struct fx *f;
	struct rcache_reg *loc, *rw, *r;

	SKIP_WITHOUT_UFFD();
	f = fx_new(16, 1 << 20, RCACHE_MONITOR_UFFD);
	loc = get(f, f->mem + 64, 256, L);
	/* A remote-writable registration is needed: the local one does not do. */
	rw = get(f, f->mem + 64, 256, L | RW);
	assert_int_not_equal(rw->mr.rkey, loc->mr.rkey);
	/* Remote-accessible registrations cover exactly the bytes asked, not their pages. */
	assert_ptr_equal(rw->mr.addr, f->mem + 64);
	assert_int_equal(rw->mr.len, 256);
	/* Subranges with fewer rights hit the remote one (or the local one for local access). */
	r = get(f, f->mem + 100, 16, RW);
	assert_int_equal(r->mr.rkey, rw->mr.rkey);
	rcache_release(f->c, r);
	/* Remote read was never granted: a new registration. */
	r = get(f, f->mem + 100, 16, RR);
	assert_int_not_equal(r->mr.rkey, rw->mr.rkey);
	assert_int_not_equal(r->mr.rkey, loc->mr.rkey);
	rcache_release(f->c, r);
	rcache_release(f->c, rw);
	rcache_release(f->c, loc);
	assert_int_equal(fake_nregs(&f->fake), 3);
	fx_free(f);
	(void)state;
}

static void test_lru_by_entries(void **state)
{
	struct fx *f;
	struct rcache_reg *a, *b, *c;
	uint64_t ka, kb, kc;

	SKIP_WITHOUT_UFFD();
	f = fx_new(2, 1 << 20, RCACHE_MONITOR_UFFD);
	a = get(f, f->mem, 8, L);
	ka = a->mr.rkey;
	rcache_release(f->c, a);
	b = get(f, f->mem + 2 * pg, 8, L);
	kb = b->mr.rkey;
	rcache_release(f->c, b);
	a = get(f, f->mem, 8, L); /* A becomes the most recently used */
	assert_int_equal(a->mr.rkey, ka);
	rcache_release(f->c, a);
	c = get(f, f->mem + 4 * pg, 8, L); /* a third entry: B, the least recent, goes */
	kc = c->mr.rkey;
	rcache_release(f->c, c);
	assert_false(fake_is_live(&f->fake, kb));
	assert_true(fake_is_live(&f->fake, ka));
	assert_true(fake_is_live(&f->fake, kc));
	assert_int_equal(stats(f).evictions, 1);
	assert_int_equal(stats(f).entries, 2);
	fx_free(f);
	(void)state;
}

static void test_lru_by_bytes(void **state)
{
	struct fx *f;
	struct rcache_reg *a, *b, *c;
	uint64_t ka, kb;

	SKIP_WITHOUT_UFFD();
	f = fx_new(100, 3 * pg, RCACHE_MONITOR_UFFD);
	a = get(f, f->mem, pg, L); /* 1 page */
	ka = a->mr.rkey;
	b = get(f, f->mem + 4 * pg, 2 * pg, L); /* 2 pages: 3 in all, at the bound */
	kb = b->mr.rkey;
	rcache_release(f->c, a);
	rcache_release(f->c, b);
	assert_int_equal(stats(f).bytes, 3 * pg);
	c = get(f, f->mem + 8 * pg, pg, L); /* 1 more page: A (least recent) goes, B stays */
	rcache_release(f->c, c);
	assert_false(fake_is_live(&f->fake, ka));
	assert_true(fake_is_live(&f->fake, kb));
	assert_int_equal(stats(f).bytes, 3 * pg);
	c = get(f, f->mem + 12 * pg, 3 * pg, L); /* 3 pages: both others go */
	rcache_release(f->c, c);
	assert_false(fake_is_live(&f->fake, kb));
	assert_int_equal(stats(f).entries, 1);
	assert_int_equal(stats(f).evictions, 3);
	fx_free(f);
	(void)state;
}

static void test_in_use_never_evicted(void **state)
{
	struct fx *f;
	struct rcache_reg *a, *b, *a2;
	uint64_t ka, kb;

	SKIP_WITHOUT_UFFD();
	f = fx_new(1, 1 << 20, RCACHE_MONITOR_UFFD);
	a = get(f, f->mem, 8, L);
	ka = a->mr.rkey;
	/* The only slot is in use: B is registered for this lookup only. */
	b = get(f, f->mem + 2 * pg, 8, L);
	kb = b->mr.rkey;
	assert_true(fake_is_live(&f->fake, ka));
	assert_int_equal(stats(f).uncached, 1);
	assert_int_equal(stats(f).in_use, 2);
	rcache_release(f->c, b);
	assert_false(fake_is_live(&f->fake, kb)); /* uncached: gone at release */
	a2 = get(f, f->mem, 8, L);                /* two references on A */
	assert_int_equal(a2->mr.rkey, ka);
	rcache_release(f->c, a);
	assert_true(fake_is_live(&f->fake, ka));
	rcache_release(f->c, a2);
	assert_true(fake_is_live(&f->fake, ka)); /* still cached */
	/* Unused now: a new entry may evict it. */
	b = get(f, f->mem + 2 * pg, 8, L);
	assert_false(fake_is_live(&f->fake, ka));
	rcache_release(f->c, b);
	assert_int_equal(stats(f).evictions, 1);
	fx_free(f);
	(void)state;
}

static void test_too_large_is_uncached(void **state)
{
	struct fx *f;
	struct rcache_reg *r;
	uint64_t k;

	SKIP_WITHOUT_UFFD();
	f = fx_new(100, 2 * pg, RCACHE_MONITOR_UFFD);
	r = get(f, f->mem, 4 * pg, L);
	k = r->mr.rkey;
	assert_int_equal(stats(f).entries, 0);
	rcache_release(f->c, r);
	assert_false(fake_is_live(&f->fake, k));
	assert_int_equal(stats(f).uncached, 1);
	fx_free(f);
	(void)state;
}

static void test_invalidate_unused(void **state)
{
	struct fx *f;
	struct rcache_reg *a, *b;
	uint64_t ka, kb;

	SKIP_WITHOUT_UFFD();
	f = fx_new(16, 1 << 20, RCACHE_MONITOR_UFFD);
	a = get(f, f->mem, 3 * pg, L);
	ka = a->mr.rkey;
	rcache_release(f->c, a);
	b = get(f, f->mem + 8 * pg, pg, L);
	kb = b->mr.rkey;
	rcache_release(f->c, b);
	/* One byte in the middle page of A: A goes, B (elsewhere) stays. */
	assert_int_equal(rcache_invalidate(f->c, f->mem + pg + 5, 1), 1);
	assert_false(fake_is_live(&f->fake, ka));
	assert_true(fake_is_live(&f->fake, kb));
	a = get(f, f->mem, 3 * pg, L);
	assert_int_not_equal(a->mr.rkey, ka);
	rcache_release(f->c, a);
	assert_int_equal(stats(f).invalidations, 1);
	assert_int_equal(rcache_invalidate(f->c, f->mem + 20 * pg, pg), 0);
	assert_int_equal(rcache_flush(f->c), 2);
	assert_int_equal(stats(f).entries, 0);
	assert_int_equal(fake_live(&f->fake), 0);
	fx_free(f);
	(void)state;
}

static void test_invalidate_in_use(void **state)
{
	struct fx *f;
	struct rcache_reg *a, *a2, *n;
	uint64_t ka;

	SKIP_WITHOUT_UFFD();
	f = fx_new(16, 1 << 20, RCACHE_MONITOR_UFFD);
	a = get(f, f->mem, pg, L);
	a2 = get(f, f->mem, pg, L);
	ka = a->mr.rkey;
	assert_int_equal(rcache_invalidate(f->c, f->mem, pg), 1);
	/* Still referenced: not deregistered under the user, but never returned again. */
	assert_true(fake_is_live(&f->fake, ka));
	assert_int_equal(stats(f).deferred, 1);
	n = get(f, f->mem, pg, L);
	assert_int_not_equal(n->mr.rkey, ka);
	rcache_release(f->c, a);
	assert_true(fake_is_live(&f->fake, ka));
	rcache_release(f->c, a2); /* the last reference */
	assert_false(fake_is_live(&f->fake, ka));
	assert_int_equal(stats(f).deferred, 0);
	rcache_release(f->c, n);
	assert_true(fake_is_live(&f->fake, n->mr.rkey)); /* the new one is cached */
	fx_free(f);
	(void)state;
}

static void test_safe_mode(void **state)
{
	struct fx *f = fx_new(16, 1 << 20, RCACHE_MONITOR_NONE);
	struct rcache_reg *a, *b;
	uint64_t ka;
	struct rcache_stats s;

	a = get(f, f->mem, 100, L);
	b = get(f, f->mem, 100, L);
	/* Nothing is shared or kept: every lookup registers, every release deregisters. */
	assert_int_not_equal(a->mr.rkey, b->mr.rkey);
	ka = a->mr.rkey;
	rcache_release(f->c, a);
	assert_false(fake_is_live(&f->fake, ka));
	rcache_release(f->c, b);
	a = get(f, f->mem, 100, L);
	rcache_release(f->c, a);
	s = stats(f);
	assert_int_equal(s.monitor, RCACHE_MONITOR_NONE);
	assert_int_equal(s.hits, 0);
	assert_int_equal(s.misses, 3);
	assert_int_equal(s.uncached, 3);
	assert_int_equal(s.entries, 0);
	assert_int_equal(fake_live(&f->fake), 0);
	fx_free(f);
	(void)state;
}

static void test_destroy_busy(void **state)
{
	struct fx *f = fx_new(16, 1 << 20, RCACHE_MONITOR_AUTO);
	struct rcache_reg *a;

	a = get(f, f->mem, 100, L);
	assert_int_equal(rcache_destroy(f->c), RDAG_EBUSY);
	assert_non_null(strstr(rdag_last_error(), "still referenced"));
	assert_true(fake_is_live(&f->fake, a->mr.rkey));
	rcache_release(f->c, a);
	fx_free(f);
	(void)state;
}

static void test_registrar_failure(void **state)
{
	struct fx *f = fx_new(16, 1 << 20, RCACHE_MONITOR_AUTO);
	struct rcache_reg *r = NULL;

	f->fake.fail_next = RDAG_ENOSPC;
	assert_int_equal(rcache_lookup(f->c, f->mem, 100, L, &r), RDAG_ENOSPC);
	assert_null(r);
	assert_int_equal(stats(f).reg_errors, 1);
	assert_int_equal(stats(f).entries, 0);
	assert_int_equal(stats(f).in_use, 0);
	r = get(f, f->mem, 100, L); /* and it works again */
	rcache_release(f->c, r);
	fx_free(f);
	(void)state;
}

static void test_bad_arguments(void **state)
{
	struct fx *f = fx_new(16, 1 << 20, RCACHE_MONITOR_AUTO);
	struct rcache_reg *r = NULL;
	struct rcache *c = NULL;
	struct rcache_attr a;

	assert_int_equal(rcache_lookup(f->c, NULL, 10, L, &r), RDAG_EINVAL);
	assert_int_equal(rcache_lookup(f->c, f->mem, 0, L, &r), RDAG_EINVAL);
	assert_int_equal(rcache_lookup(f->c, f->mem, 10, 0, &r), RDAG_EINVAL);
	assert_int_equal(rcache_lookup(f->c, f->mem, 10, 1u << 7, &r), RDAG_EINVAL);
	assert_int_equal(rcache_lookup(f->c, f->mem, SIZE_MAX, L, &r), RDAG_EINVAL);
	assert_int_equal(rcache_invalidate(f->c, f->mem, 0), RDAG_EINVAL);
	rcache_attr_init(&a, NULL, fake_dereg_cb, NULL);
	assert_int_equal(rcache_create(&a, &c), RDAG_EINVAL);
	assert_int_equal(rcache_destroy(NULL), 0);
	fx_free(f);
	(void)state;
}

static void test_environment(void **state)
{
	struct fake_reg fake;
	struct rcache_attr a;
	struct rcache *c;
	struct rcache_stats s;

	fake_init(&fake);
	rcache_attr_init(&a, fake_reg_cb, fake_dereg_cb, &fake);
	setenv("RDAG_RCACHE_MAX_ENTRIES", "7", 1);
	setenv("RDAG_RCACHE_MAX_BYTES", "3m", 1);
	setenv("RDAG_RCACHE_MONITOR", "none", 1);
	assert_int_equal(rcache_create(&a, &c), 0);
	rcache_get_stats(c, &s);
	assert_int_equal(s.max_entries, 7);
	assert_int_equal(s.max_bytes, 3u << 20);
	assert_int_equal(s.monitor, RCACHE_MONITOR_NONE);
	assert_int_equal(rcache_destroy(c), 0);
	/* Unusable values fall back to the defaults (with a warning). */
	setenv("RDAG_RCACHE_MAX_ENTRIES", "-3", 1);
	setenv("RDAG_RCACHE_MAX_BYTES", "12q", 1);
	setenv("RDAG_RCACHE_MONITOR", "bogus", 1);
	assert_int_equal(rcache_create(&a, &c), 0);
	rcache_get_stats(c, &s);
	assert_int_equal(s.max_entries, 4096);
	assert_true(s.max_bytes > 0);
	assert_int_equal(s.monitor, have_uffd() ? RCACHE_MONITOR_UFFD : RCACHE_MONITOR_NONE);
	assert_int_equal(rcache_destroy(c), 0);
	/* Explicit attributes win over the environment. */
	a.max_entries = 3;
	a.monitor = RCACHE_MONITOR_NONE;
	assert_int_equal(rcache_create(&a, &c), 0);
	rcache_get_stats(c, &s);
	assert_int_equal(s.max_entries, 3);
	assert_int_equal(rcache_destroy(c), 0);
	unsetenv("RDAG_RCACHE_MAX_ENTRIES");
	unsetenv("RDAG_RCACHE_MAX_BYTES");
	unsetenv("RDAG_RCACHE_MONITOR");
	fake_fini(&fake);
	(void)state;
}

/* A minimal endpoint whose ops table counts registrations: checks the fab adapters. */
struct count_ep {
	struct fab_ep ep;
	int regs, deregs;
};

static int count_mr_reg(struct fab_ep *ep, void *addr, size_t len, uint32_t access,
			enum fab_mem_kind kind, int device, struct fab_mr *mr)
{
	struct count_ep *ce = (struct count_ep *)ep;

	assert_int_equal(kind, FAB_MEM_HOST);
	memset(mr, 0, sizeof(*mr));
	mr->addr = addr;
	mr->len = len;
	mr->rkey = (uint64_t)++ce->regs;
	(void)access;
	(void)device;
	return 0;
}

static int count_mr_dereg(struct fab_ep *ep, struct fab_mr *mr)
{
	((struct count_ep *)ep)->deregs++;
	(void)mr;
	return 0;
}

static void test_fab_adapters(void **state)
{
	static struct fab_ops ops;
	struct count_ep ce;
	struct rcache_attr a;
	struct rcache *c;
	struct rcache_reg *r;
	char buf[256];

	memset(&ce, 0, sizeof(ce));
	ops.size = sizeof(ops);
	ops.mr_reg = count_mr_reg;
	ops.mr_dereg = count_mr_dereg;
	ce.ep.ops = &ops;
	rcache_attr_init(&a, rcache_fab_reg, rcache_fab_dereg, &ce.ep);
	a.monitor = RCACHE_MONITOR_NONE;
	assert_int_equal(rcache_create(&a, &c), 0);
	assert_int_equal(rcache_lookup(c, buf, sizeof(buf), L, &r), 0);
	assert_int_equal(ce.regs, 1);
	rcache_release(c, r);
	assert_int_equal(ce.deregs, 1);
	assert_int_equal(rcache_destroy(c), 0);
	(void)state;
}

/* ---- the interval tree against a brute-force list ------------------------------------------- */

#define NT 400

struct tnode {
	struct rcache_itree_node n;
	int in;
};

static struct tnode tn[NT];

static int collect_cb(struct rcache_itree_node *n, void *arg)
{
	int *seen = arg;

	seen[(struct tnode *)(void *)n - tn] += 1;
	return 0;
}

static void test_itree(void **state)
{
	struct rcache_itree t;
	unsigned seed = 12345;
	int seen[NT];

	rcache_itree_init(&t);
	for (int round = 0; round < 20000; round++) {
		int i = (int)(rand_r(&seed) % NT);
		uintptr_t a = 1 + (uintptr_t)(rand_r(&seed) % 1000);
		uintptr_t b = a + 1 + (uintptr_t)(rand_r(&seed) % 200);

		if (tn[i].in) {
			rcache_itree_remove(&t, &tn[i].n);
			tn[i].in = 0;
		} else {
			tn[i].n.start = 1 + (uintptr_t)(rand_r(&seed) % 1000);
			tn[i].n.end = tn[i].n.start + 1 + (uintptr_t)(rand_r(&seed) % 300);
			rcache_itree_insert(&t, &tn[i].n);
			tn[i].in = 1;
		}
		if (round % 50 == 0)
			assert_int_equal(rcache_itree_check(&t), 0);
		/* find_cover finds a cover exactly when one exists. */
		{
			struct rcache_itree_node *got = rcache_itree_find_cover(&t, a, b);
			int exists = 0;

			for (int k = 0; k < NT; k++)
				exists |= tn[k].in && tn[k].n.start <= a && tn[k].n.end >= b;
			assert_int_equal(got != NULL, exists);
			if (got)
				assert_true(got->start <= a && got->end >= b);
		}
		/* walk_overlaps visits exactly the overlapping nodes, once each. */
		memset(seen, 0, sizeof(seen));
		rcache_itree_walk_overlaps(&t, a, b, collect_cb, seen);
		for (int k = 0; k < NT; k++) {
			int ov = tn[k].in && tn[k].n.start < b && a < tn[k].n.end;

			assert_int_equal(seen[k], ov);
		}
	}
	assert_int_equal(rcache_itree_check(&t), 0);
	(void)state;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_itree),
		cmocka_unit_test(test_miss_then_hit),
		cmocka_unit_test(test_covering_hit),
		cmocka_unit_test(test_access_and_exact_remote),
		cmocka_unit_test(test_lru_by_entries),
		cmocka_unit_test(test_lru_by_bytes),
		cmocka_unit_test(test_in_use_never_evicted),
		cmocka_unit_test(test_too_large_is_uncached),
		cmocka_unit_test(test_invalidate_unused),
		cmocka_unit_test(test_invalidate_in_use),
		cmocka_unit_test(test_safe_mode),
		cmocka_unit_test(test_destroy_busy),
		cmocka_unit_test(test_registrar_failure),
		cmocka_unit_test(test_bad_arguments),
		cmocka_unit_test(test_environment),
		cmocka_unit_test(test_fab_adapters),
	};

	pg = (size_t)sysconf(_SC_PAGESIZE);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
