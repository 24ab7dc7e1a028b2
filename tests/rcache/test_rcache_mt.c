/* cmocka test of the rcache under threads: lookups, releases, invalidations and memory churn at once. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fake_reg.h"
#include "rcache/monitor.h"
#include "rcache/rcache.h"

#define ARENA_PAGES 64
#define WORKERS 4
#define CHURNERS 2
#define ITERS 3000

static size_t pg;
static struct fake_reg fake;
static struct rcache *cache;
static char *arena;
static atomic_int failures;
static atomic_uint_fast64_t next_gen = 1;
static atomic_int workers_done;

#define CHECK(cond)                                                                          \
	do {                                                                                 \
		if (!(cond)) {                                                               \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
			atomic_fetch_add(&failures, 1);                                      \
		}                                                                            \
	} while (0)

/* Checks a registration handed out for [p, p + len) with access. */
static void check_reg(const struct rcache_reg *r, const void *p, size_t len, uint32_t access)
{
	struct fake_rec rec;

	CHECK((uintptr_t)r->mr.addr <= (uintptr_t)p);
	CHECK((uintptr_t)r->mr.addr + r->mr.len >= (uintptr_t)p + len);
	CHECK((r->access & access) == access);
	CHECK(fake_get(&fake, r->mr.rkey, &rec) && rec.live);
}

static void *worker(void *arg)
{
	unsigned seed = (unsigned)(uintptr_t)arg;
	struct rcache_reg *held[4] = {NULL};
	const void *hp[4];
	size_t hl[4];
	uint32_t ha[4];

	for (int i = 0; i < ITERS; i++) {
		int slot = (int)(rand_r(&seed) % 4);
		size_t off = (size_t)rand_r(&seed) % (ARENA_PAGES * pg - 1);
		size_t len = 1 + (size_t)rand_r(&seed) % (4 * pg);
		uint32_t access = 1u + (uint32_t)(rand_r(&seed) % 7);
		struct rcache_reg *r = NULL;

		if (off + len > ARENA_PAGES * pg)
			len = ARENA_PAGES * pg - off;
		if (held[slot]) {
			/* Still live when released, even if invalidated meanwhile. */
			check_reg(held[slot], hp[slot], hl[slot], ha[slot]);
			rcache_release(cache, held[slot]);
			held[slot] = NULL;
		}
		if (rcache_lookup(cache, arena + off, len, access, &r) != 0) {
			CHECK(0);
			continue;
		}
		check_reg(r, arena + off, len, access);
		held[slot] = r;
		hp[slot] = arena + off;
		hl[slot] = len;
		ha[slot] = access;
	}
	for (int s = 0; s < 4; s++) {
		if (held[s]) {
			check_reg(held[s], hp[s], hl[s], ha[s]);
			rcache_release(cache, held[s]);
		}
	}
	atomic_fetch_add(&workers_done, 1);
	return NULL;
}

static void *invalidator(void *arg)
{
	unsigned seed = (unsigned)(uintptr_t)arg;

	for (int i = 0; atomic_load(&workers_done) < WORKERS; i++) {
		size_t off = (size_t)rand_r(&seed) % (ARENA_PAGES * pg - 1);
		size_t len = 1 + (size_t)rand_r(&seed) % (8 * pg);

		if (off + len > ARENA_PAGES * pg)
			len = ARENA_PAGES * pg - off;
		if (i % 64 == 63)
			CHECK(rcache_flush(cache) >= 0);
		else
			CHECK(rcache_invalidate(cache, arena + off, len) >= 0);
		sched_yield();
	}
	return NULL;
}

static void stamp(char *p, size_t pages, uint64_t gen)
{
	for (size_t i = 0; i < pages; i++)
		memcpy(p + i * pg, &gen, sizeof(gen));
}

/* Looks up memory this thread just (re)stamped: the registration must be of this memory. */
static void lookup_fresh(char *p, size_t len, uint64_t gen)
{
	struct rcache_reg *r = NULL;
	struct fake_rec rec;

	if (rcache_lookup(cache, p, len, FAB_ACCESS_LOCAL, &r) != 0) {
		CHECK(0);
		return;
	}
	check_reg(r, p, len, FAB_ACCESS_LOCAL);
	CHECK(fake_get(&fake, r->mr.rkey, &rec) && rec.stamp == gen);
	rcache_release(cache, r);
}

static void *churner(void *arg)
{
	unsigned seed = (unsigned)(uintptr_t)arg;
	const size_t pages = 8;

	for (int i = 0; atomic_load(&workers_done) < WORKERS || i < 200; i++) {
		char *p = mmap(NULL, pages * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			       -1, 0);
		uint64_t gen = atomic_fetch_add(&next_gen, 1);

		if (p == MAP_FAILED) {
			CHECK(0);
			break;
		}
		stamp(p, pages, gen);
		lookup_fresh(p, pages * pg, gen);
		lookup_fresh(p, pages * pg, gen); /* usually a hit */
		switch (rand_r(&seed) % 3) {
		case 0: /* discard and rewrite */
			CHECK(madvise(p, pages * pg, MADV_DONTNEED) == 0);
			gen = atomic_fetch_add(&next_gen, 1);
			stamp(p, pages, gen);
			lookup_fresh(p, pages * pg, gen);
			break;
		case 1: /* replace in place */
			CHECK(mmap(p, pages * pg, PROT_READ | PROT_WRITE,
				   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == p);
			gen = atomic_fetch_add(&next_gen, 1);
			stamp(p, pages, gen);
			lookup_fresh(p, pages * pg, gen);
			break;
		default:
			break;
		}
		CHECK(munmap(p, pages * pg) == 0); /* the next mmap often lands here again */
	}
	return NULL;
}

static void test_threads(void **state)
{
	pthread_t w[WORKERS], ch[CHURNERS], inv;
	struct rcache_attr a;
	struct rcache_stats s;
	char why[256];

	if (rcache_monitor_probe(why, sizeof(why)) != RCACHE_MONITOR_UFFD)
		skip();
	fake_init(&fake);
	fake.read_stamp = 1;
	arena = mmap(NULL, ARENA_PAGES * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		     -1, 0);
	assert_true(arena != MAP_FAILED);
	memset(arena, 0, ARENA_PAGES * pg);
	rcache_attr_init(&a, fake_reg_cb, fake_dereg_cb, &fake);
	a.max_entries = 32; /* small, so evictions happen too */
	a.max_bytes = 48 * pg;
	a.monitor = RCACHE_MONITOR_UFFD;
	assert_int_equal(rcache_create(&a, &cache), 0);

	for (int i = 0; i < WORKERS; i++)
		assert_int_equal(pthread_create(&w[i], NULL, worker, (void *)(uintptr_t)(i + 1)), 0);
	for (int i = 0; i < CHURNERS; i++)
		assert_int_equal(pthread_create(&ch[i], NULL, churner, (void *)(uintptr_t)(i + 100)), 0);
	assert_int_equal(pthread_create(&inv, NULL, invalidator, (void *)(uintptr_t)7), 0);
	for (int i = 0; i < WORKERS; i++)
		pthread_join(w[i], NULL);
	for (int i = 0; i < CHURNERS; i++)
		pthread_join(ch[i], NULL);
	pthread_join(inv, NULL);

	rcache_get_stats(cache, &s);
	print_message("lookups %llu hits %llu misses %llu evictions %llu invalidations %llu "
		      "mem_invalidations %llu uncached %llu\n",
		      (unsigned long long)s.lookups, (unsigned long long)s.hits,
		      (unsigned long long)s.misses, (unsigned long long)s.evictions,
		      (unsigned long long)s.invalidations, (unsigned long long)s.mem_invalidations,
		      (unsigned long long)s.uncached);
	{
		struct rcache_mon_stats ms;

		rcache_mon_get_stats(&ms);
		print_message("check_drops %llu; monitor: checks %llu busy %llu gone %llu, unmap %llu "
			      "remove %llu events, %llu faults\n",
			      (unsigned long long)s.check_drops, (unsigned long long)ms.checks,
			      (unsigned long long)ms.checks_busy, (unsigned long long)ms.checks_gone,
			      (unsigned long long)ms.unmap_events, (unsigned long long)ms.remove_events,
			      (unsigned long long)ms.faults);
	}
	assert_int_equal(atomic_load(&failures), 0);
	assert_int_equal(s.in_use, 0);
	assert_int_equal(s.deferred, 0);
	assert_true(s.entries <= 32 && s.bytes <= 48 * pg);
	assert_true(s.hits > 0 && s.evictions > 0 && s.invalidations > 0 && s.mem_invalidations > 0);
	assert_int_equal(rcache_destroy(cache), 0);
	assert_int_equal(fake_live(&fake), 0);
	assert_int_equal(fake.errors, 0);
	munmap(arena, ARENA_PAGES * pg);
	fake_fini(&fake);
	(void)state;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_threads),
	};

	pg = (size_t)sysconf(_SC_PAGESIZE);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
