/* cmocka tests of the rcache's userfaultfd monitor: freed, remapped and discarded memory is never reused stale. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fake_reg.h"
#include "rcache/monitor.h"
#include "rcache/rcache.h"

#define L FAB_ACCESS_LOCAL

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

static size_t pg;

struct fx {
	struct fake_reg fake;
	struct rcache *c;
};

static struct fx *fx_new(void)
{
	struct fx *f = calloc(1, sizeof(*f));
	struct rcache_attr a;

	assert_non_null(f);
	fake_init(&f->fake);
	f->fake.read_stamp = 1;
	rcache_attr_init(&a, fake_reg_cb, fake_dereg_cb, &f->fake);
	a.max_entries = 64;
	a.max_bytes = 1ull << 30;
	a.monitor = RCACHE_MONITOR_UFFD;
	assert_int_equal(rcache_create(&a, &f->c), 0);
	return f;
}

static void fx_free(struct fx *f)
{
	assert_int_equal(rcache_destroy(f->c), 0);
	assert_int_equal(fake_live(&f->fake), 0);
	assert_int_equal(f->fake.errors, 0);
	fake_fini(&f->fake);
	free(f);
}

static struct rcache_stats stats(struct fx *f)
{
	struct rcache_stats s;

	rcache_get_stats(f->c, &s);
	return s;
}

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define SANITIZED 1
#endif
#endif

/*
 * Maps n pages (at hint if given, which must then be free) and stamps them with gen. Under ASan
 * or TSan, the sanitizer's own lazy mappings (ASan's fake stacks of the monitor thread, TSan's
 * allocator: seen once in CI) can take a hole we just made; then the pages go elsewhere and the
 * test checks what it still can.
 */
static char *map_stamped(void *hint, size_t n, uint64_t gen)
{
	int flags = MAP_PRIVATE | MAP_ANONYMOUS | (hint ? MAP_FIXED_NOREPLACE : 0);
	char *p = mmap(hint, n * pg, PROT_READ | PROT_WRITE, flags, -1, 0);

#ifdef SANITIZED
	if (p == MAP_FAILED && hint && errno == EEXIST) {
		print_message("address %p taken meanwhile (sanitizer mapping), mapping elsewhere\n", hint);
		return map_stamped(NULL, n, gen);
	}
#endif
	assert_true(p != MAP_FAILED);
	if (hint)
		assert_ptr_equal(p, hint);
	for (size_t i = 0; i < n; i++)
		memcpy(p + i * pg, &gen, sizeof(gen));
	return p;
}

/* Looks up [p, p + len), checks the registration is live and was made on the current memory. */
static struct rcache_reg *get(struct fx *f, void *p, size_t len)
{
	struct rcache_reg *r = NULL;
	struct fake_rec rec;
	uint64_t now;

	assert_int_equal(rcache_lookup(f->c, p, len, L, &r), 0);
	assert_true(fake_get(&f->fake, r->mr.rkey, &rec));
	assert_true(rec.live);
	if (f->fake.read_stamp) {
		memcpy(&now, r->mr.addr, sizeof(now));
		assert_int_equal(rec.stamp, now); /* not a registration of an earlier mapping */
	}
	return r;
}

static void test_munmap_then_mmap_fixed(void **state)
{
	struct fx *f = fx_new();
	char *p = map_stamped(NULL, 4, 1), *q;
	struct rcache_reg *r;
	uint64_t old;

	r = get(f, p, 4 * pg);
	old = r->mr.rkey;
	rcache_release(f->c, r);
	r = get(f, p, 4 * pg); /* cached */
	assert_int_equal(r->mr.rkey, old);
	rcache_release(f->c, r);
	assert_int_equal(munmap(p, 4 * pg), 0);
	q = map_stamped(p, 4, 2); /* same address, new pages */
	r = get(f, q, 4 * pg);
	assert_int_not_equal(r->mr.rkey, old);
	assert_false(fake_is_live(&f->fake, old)); /* the stale one was deregistered */
	rcache_release(f->c, r);
	assert_true(stats(f).mem_invalidations >= 1);
	munmap(q, 4 * pg);
	fx_free(f);
	(void)state;
}

static void test_mmap_fixed_over_mapping(void **state)
{
	struct fx *f = fx_new();
	char *p = map_stamped(NULL, 4, 1), *q;
	struct rcache_reg *r;
	uint64_t old, gen = 7;

	r = get(f, p + 100, 2 * pg);
	old = r->mr.rkey;
	rcache_release(f->c, r);
	/* MAP_FIXED over the live mapping: no munmap call, the kernel unmaps implicitly. */
	q = mmap(p + pg, pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	assert_ptr_equal(q, p + pg);
	memcpy(q, &gen, sizeof(gen));
	r = get(f, p + 100, 2 * pg);
	assert_int_not_equal(r->mr.rkey, old);
	assert_false(fake_is_live(&f->fake, old));
	rcache_release(f->c, r);
	munmap(p, 4 * pg);
	fx_free(f);
	(void)state;
}

static void test_natural_reuse(void **state)
{
	struct fx *f = fx_new();
	struct rcache_reg *r;
	char *prev = NULL;
	int reused = 0;

	/* munmap, then mmap without a hint: the kernel usually hands the same address back. */
	for (uint64_t gen = 1; gen <= 20; gen++) {
		char *p = map_stamped(NULL, 16, gen);
		uint64_t key;

		reused += p == prev;
		r = get(f, p, 16 * pg); /* get() checks the stamp: never an earlier mapping's */
		key = r->mr.rkey;
		rcache_release(f->c, r);
		assert_int_equal(munmap(p, 16 * pg), 0);
		rcache_progress(f->c);
		assert_false(fake_is_live(&f->fake, key));
		prev = p;
	}
	print_message("address reused %d times out of 19\n", reused);
	assert_int_equal(stats(f).hits, 0);
	assert_int_equal(stats(f).misses, 20);
	fx_free(f);
	(void)state;
}

static void test_madvise_dontneed(void **state)
{
	struct fx *f = fx_new();
	char *p = map_stamped(NULL, 4, 1);
	struct rcache_reg *r;
	uint64_t old;

	r = get(f, p, 4 * pg);
	old = r->mr.rkey;
	rcache_release(f->c, r);
	assert_int_equal(madvise(p + 2 * pg, pg, MADV_DONTNEED), 0);
	r = get(f, p, 4 * pg);
	assert_int_not_equal(r->mr.rkey, old);
	assert_false(fake_is_live(&f->fake, old));
	rcache_release(f->c, r);
	munmap(p, 4 * pg);
	fx_free(f);
	(void)state;
}

static void test_mremap_move(void **state)
{
	struct fx *f = fx_new();
	char *p = map_stamped(NULL, 4, 1), *hole, *q, *n;
	struct rcache_reg *r;
	uint64_t old;

	r = get(f, p, 4 * pg);
	old = r->mr.rkey;
	rcache_release(f->c, r);
	hole = mmap(NULL, 4 * pg, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(hole != MAP_FAILED);
	q = mremap(p, 4 * pg, 4 * pg, MREMAP_MAYMOVE | MREMAP_FIXED, hole);
	assert_ptr_equal(q, hole);
	n = map_stamped(p, 4, 2); /* new memory where the old was */
	rcache_progress(f->c);
	assert_false(fake_is_live(&f->fake, old));
	/* The moved pages are still readable at their new place (no fault left hanging). */
	assert_int_equal(*(uint64_t *)q, 1);
	r = get(f, n, 4 * pg);
	assert_int_not_equal(r->mr.rkey, old);
	rcache_release(f->c, r);
	r = get(f, q, 4 * pg);
	rcache_release(f->c, r);
	munmap(n, 4 * pg);
	munmap(q, 4 * pg);
	fx_free(f);
	(void)state;
}

static void test_unmap_while_referenced(void **state)
{
	struct fx *f = fx_new();
	char *p = map_stamped(NULL, 2, 1), *q;
	struct rcache_reg *r, *r2;
	uint64_t old;

	r = get(f, p, 2 * pg);
	old = r->mr.rkey;
	/* A buggy user frees memory it still holds a registration for: the registration is not
	 * deregistered under it, but no lookup hands it out again. */
	assert_int_equal(munmap(p, 2 * pg), 0);
	q = map_stamped(p, 2, 2);
	rcache_progress(f->c);
	assert_true(fake_is_live(&f->fake, old));
	assert_int_equal(stats(f).deferred, 1);
	r2 = get(f, q, 2 * pg);
	assert_int_not_equal(r2->mr.rkey, old);
	rcache_release(f->c, r);
	assert_false(fake_is_live(&f->fake, old));
	rcache_release(f->c, r2);
	munmap(q, 2 * pg);
	fx_free(f);
	(void)state;
}

static void test_partial_unmap(void **state)
{
	struct fx *f = fx_new();
	char *p = map_stamped(NULL, 8, 1);
	struct rcache_reg *r, *small;
	uint64_t old, ks;

	r = get(f, p, 4 * pg);
	old = r->mr.rkey;
	rcache_release(f->c, r);
	small = get(f, p + 6 * pg, 8);
	ks = small->mr.rkey;
	rcache_release(f->c, small);
	assert_int_equal(munmap(p + 3 * pg, pg), 0); /* last page of the first entry */
	rcache_progress(f->c);
	assert_false(fake_is_live(&f->fake, old));
	assert_true(fake_is_live(&f->fake, ks)); /* unrelated pages keep theirs */
	r = get(f, p, 3 * pg);
	assert_int_not_equal(r->mr.rkey, old);
	rcache_release(f->c, r);
	small = get(f, p + 6 * pg, 8);
	assert_int_equal(small->mr.rkey, ks);
	rcache_release(f->c, small);
	munmap(p, 3 * pg);
	munmap(p + 4 * pg, 4 * pg);
	fx_free(f);
	(void)state;
}

static void test_free_malloc_large(void **state)
{
	struct fx *f = fx_new();
	const size_t sz = 64u << 20; /* above glibc's largest mmap threshold: mmap-backed */
	char *p, *q;
	struct rcache_reg *r;
	uint64_t old;

	/* The registration starts at the page boundary below p, in malloc's header (a redzone
	 * under ASan): the fake must not read its stamp there. */
	f->fake.read_stamp = 0;
	p = malloc(sz);
	assert_non_null(p);
	memset(p, 1, sz);
	r = get(f, p, sz);
	old = r->mr.rkey;
	rcache_release(f->c, r);
	free(p);
	q = malloc(sz);
	assert_non_null(q);
	memset(q, 2, sz);
	r = get(f, q, sz);
	if (q == p) {
		/* Same address, new pages: the old registration must not come back. */
		assert_int_not_equal(r->mr.rkey, old);
		assert_false(fake_is_live(&f->fake, old));
	} else {
		print_message("malloc did not reuse the address (sanitizer quarantine?)\n");
	}
	rcache_release(f->c, r);
	free(q);
	fx_free(f);
	(void)state;
}

static void test_fault_in_watched_range(void **state)
{
	struct fx *f = fx_new();
	char *p = map_stamped(NULL, 4, 1);
	struct rcache_reg *r;
	struct rcache_mon_stats before, after;
	int fds[2];
	char msg[64];

	r = get(f, p, 4 * pg);
	rcache_release(f->c, r);
	rcache_mon_get_stats(&before);
	/* Discard a page and touch it before any cache call: the range is still watched, so the
	 * fault goes through the monitor, which must resolve it (zero page), not block. */
	assert_int_equal(madvise(p + pg, pg, MADV_DONTNEED), 0);
	assert_int_equal(p[pg + 10], 0);
	p[pg + 10] = 42;
	assert_int_equal(p[pg + 10], 42);
	/* A kernel-mode access (read(2) copying into a discarded, watched page). */
	assert_int_equal(madvise(p + 2 * pg, pg, MADV_DONTNEED), 0);
	assert_int_equal(pipe(fds), 0);
	memset(msg, 'x', sizeof(msg));
	assert_int_equal(write(fds[1], msg, sizeof(msg)), (ssize_t)sizeof(msg));
	assert_int_equal(read(fds[0], p + 2 * pg + 100, sizeof(msg)), (ssize_t)sizeof(msg));
	assert_memory_equal(p + 2 * pg + 100, msg, sizeof(msg));
	close(fds[0]);
	close(fds[1]);
	rcache_mon_get_stats(&after);
	assert_true(after.faults >= before.faults + 2);
	assert_true(after.remove_events >= before.remove_events + 2);
	munmap(p, 4 * pg);
	fx_free(f);
	(void)state;
}

static void test_untouched_memory(void **state)
{
	struct fx *f = fx_new();
	const size_t n = 256;
	char *p = mmap(NULL, n * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct rcache_reg *r = NULL;

	assert_true(p != MAP_FAILED);
	/* Registering memory nobody touched yet, then writing it all, works and stays cached. */
	assert_int_equal(rcache_lookup(f->c, p, n * pg, L, &r), 0);
	for (size_t i = 0; i < n; i++)
		p[i * pg] = (char)i;
	for (size_t i = 0; i < n; i++)
		assert_int_equal(p[i * pg], (char)i);
	rcache_release(f->c, r);
	assert_int_equal(rcache_lookup(f->c, p, n * pg, L, &r), 0);
	assert_int_equal(stats(f).hits, 1);
	rcache_release(f->c, r);
	munmap(p, n * pg);
	fx_free(f);
	(void)state;
}

static void test_file_mapping_uncached(void **state)
{
	struct fx *f = fx_new();
	char path[] = "/tmp/rdag_rcache_XXXXXX";
	int fd = mkstemp(path);
	char *p;
	struct rcache_reg *r = NULL;
	uint64_t k;

	assert_true(fd >= 0);
	unlink(path);
	assert_int_equal(ftruncate(fd, (off_t)(2 * pg)), 0);
	p = mmap(NULL, 2 * pg, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	assert_true(p != MAP_FAILED);
	/* The monitor cannot watch a file mapping: registered, but only for this lookup. */
	assert_int_equal(rcache_lookup(f->c, p, pg, L, &r), 0);
	k = r->mr.rkey;
	assert_int_equal(stats(f).entries, 0);
	assert_int_equal(stats(f).uncached, 1);
	rcache_release(f->c, r);
	assert_false(fake_is_live(&f->fake, k));
	munmap(p, 2 * pg);
	close(fd);
	fx_free(f);
	(void)state;
}

static void test_two_caches_share_watches(void **state)
{
	struct fx *a = fx_new(), *b = fx_new();
	char *p = map_stamped(NULL, 4, 1);
	struct rcache_reg *ra, *rb;
	uint64_t kb;

	ra = get(a, p, 4 * pg);
	rb = get(b, p + pg, pg);
	kb = rb->mr.rkey;
	rcache_release(a->c, ra);
	rcache_release(b->c, rb);
	/* A goes away (and stops watching its pages): B's page must stay watched. */
	fx_free(a);
	assert_int_equal(munmap(p + pg, pg), 0);
	rcache_progress(b->c);
	assert_false(fake_is_live(&b->fake, kb));
	munmap(p, pg);
	munmap(p + 2 * pg, 2 * pg);
	fx_free(b);
	(void)state;
}

static void test_event_log_overrun(void **state)
{
	struct fx *f = fx_new();
	char *p = map_stamped(NULL, 2, 1), *other = map_stamped(NULL, 1, 1);
	struct rcache_reg *r, *o;
	uint64_t ko;

	r = get(f, p, 2 * pg);
	rcache_release(f->c, r);
	o = get(f, other, pg);
	ko = o->mr.rkey;
	rcache_release(f->c, o);
	/* Far more events than the log holds, with no cache call in between. */
	for (int i = 0; i < 5000; i++)
		assert_int_equal(madvise(p, pg, MADV_DONTNEED), 0);
	rcache_progress(f->c);
	/* Unable to tell what was lost, the cache dropped everything, unrelated entries included. */
	assert_int_equal(stats(f).log_overruns, 1);
	assert_false(fake_is_live(&f->fake, ko));
	assert_int_equal(stats(f).entries, 0);
	munmap(p, 2 * pg);
	munmap(other, pg);
	fx_free(f);
	(void)state;
}

static void test_fork_child(void **state)
{
	struct fx *f = fx_new();
	char *p = map_stamped(NULL, 2, 1);
	struct rcache_reg *r;
	uint64_t key;
	pid_t pid;
	int status;

	r = get(f, p, 2 * pg);
	key = r->mr.rkey;
	rcache_release(f->c, r);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct rcache_reg *cr = NULL;
		int code = 0;

		/* The child refuses to use the parent's cache, and its memory is not watched:
		 * discarding and unmapping never waits for a monitor thread that is not there. */
		if (rcache_lookup(f->c, p, pg, L, &cr) != RDAG_EPERM || cr)
			code = 1;
		if (madvise(p, pg, MADV_DONTNEED) != 0 || p[0] != 0)
			code = 2;
		if (munmap(p, 2 * pg) != 0)
			code = 3;
		_exit(code);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
	/* The parent is unaffected. */
	r = get(f, p, 2 * pg);
	assert_int_equal(r->mr.rkey, key);
	rcache_release(f->c, r);
	munmap(p, 2 * pg);
	fx_free(f);
	(void)state;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_munmap_then_mmap_fixed),
		cmocka_unit_test(test_mmap_fixed_over_mapping),
		cmocka_unit_test(test_natural_reuse),
		cmocka_unit_test(test_madvise_dontneed),
		cmocka_unit_test(test_mremap_move),
		cmocka_unit_test(test_unmap_while_referenced),
		cmocka_unit_test(test_partial_unmap),
		cmocka_unit_test(test_free_malloc_large),
		cmocka_unit_test(test_fault_in_watched_range),
		cmocka_unit_test(test_untouched_memory),
		cmocka_unit_test(test_file_mapping_uncached),
		cmocka_unit_test(test_two_caches_share_watches),
		cmocka_unit_test(test_event_log_overrun),
		cmocka_unit_test(test_fork_child),
	};
	char why[256];

	pg = (size_t)sysconf(_SC_PAGESIZE);
	if (rcache_monitor_probe(why, sizeof(why)) != RCACHE_MONITOR_UFFD) {
		fprintf(stderr, "skipping: no userfaultfd monitor here (%s)\n", why);
		return 77;
	}
	return cmocka_run_group_tests(tests, NULL, NULL);
}
