/* The rcache over a real provider (ofi/shm): RDMA writes land through cached registrations, also after munmap + mmap at the same address. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "fabric/fabric.h"
#include "rcache/rcache.h"

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

#define NPAGES 4

static size_t pg;
static struct fab_ep *ep[2];
static struct rcache *cache[2];

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int open_pair(void)
{
	struct fab_open_opts o;
	char name[2][256];
	const void *addrs[2] = {name[0], name[1]};
	size_t lens[2];

	for (int r = 0; r < 2; r++) {
		fab_opts_from_env(&o);
		o.provider = "ofi";
		o.ofi_provider = "shm";
		o.local_only = 1;
		o.world_size = 2;
		o.rank = (uint32_t)r;
		o.rx_depth = 16;
		o.tx_depth = 16;
		if (fab_open(&o, &ep[r]) != 0) {
			fprintf(stderr, "skipping: no ofi/shm endpoint here: %s\n", rdag_last_error());
			return -1;
		}
		lens[r] = sizeof(name[r]);
		if (fab_name(ep[r], name[r], &lens[r]) != 0)
			return -1;
	}
	for (int r = 0; r < 2; r++) {
		if (fab_connect(ep[r], 2, addrs, lens, 10000) != 0)
			return -1;
	}
	return 0;
}

/* Writes len bytes of src (rank 0) into dst (rank 1) through registrations from the caches,
 * and waits (driving both endpoints) until the write completed and the bytes are there. */
static void write_through_caches(const char *src, char *dst, size_t len, uint64_t *dst_key)
{
	struct rcache_reg *rs = NULL, *rd = NULL;
	struct fab_cqe cqe[4];
	int done = 0, tag;
	double deadline = now_s() + 20;

	assert_int_equal(rcache_lookup(cache[0], src, len, FAB_ACCESS_LOCAL, &rs), 0);
	assert_int_equal(rcache_lookup(cache[1], dst, len, FAB_ACCESS_LOCAL | FAB_ACCESS_REMOTE_WRITE,
				       &rd), 0);
	*dst_key = rd->mr.rkey;
	for (;;) {
		int rc = fab_write(ep[0], 1, src, len, rs->mr.desc, rcache_remote_addr(rd, dst),
				   rd->mr.rkey, 0, 0, &tag);

		if (rc == 0)
			break;
		assert_int_equal(rc, RDAG_EAGAIN); /* busy: progress both sides and retry */
		assert_true(fab_poll(ep[0], cqe, 4) == 0);
		assert_true(fab_poll(ep[1], cqe, 4) >= 0);
		assert_true(now_s() < deadline);
	}
	while (!done || memcmp(dst, src, len) != 0) {
		int n = fab_poll(ep[0], cqe, 4);

		assert_true(n >= 0);
		for (int i = 0; i < n; i++) {
			assert_ptr_equal(cqe[i].context, &tag);
			assert_int_equal(cqe[i].status, 0);
			done = 1;
		}
		assert_true(fab_poll(ep[1], cqe, 4) >= 0);
		assert_true(now_s() < deadline);
	}
	rcache_release(cache[0], rs);
	rcache_release(cache[1], rd);
}

static void test_write_after_remap(void **state)
{
	char *src, *dst, *dst2;
	uint64_t k1, k2, k3;
	struct rcache_stats s;

	src = mmap(NULL, NPAGES * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	dst = mmap(NULL, NPAGES * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(src != MAP_FAILED && dst != MAP_FAILED);
	memset(src, 'a', NPAGES * pg);
	memset(dst, 0, NPAGES * pg);
	write_through_caches(src, dst, NPAGES * pg, &k1);

	memset(src, 'b', NPAGES * pg);
	write_through_caches(src, dst, NPAGES * pg, &k2); /* cached */
	rcache_get_stats(cache[1], &s);
	assert_int_equal(s.hits, 1);
	assert_int_equal(k2, k1);

	/* Free the target and map new memory at the same address: the write must land in the new
	 * pages, through a new registration, and the old one must have been deregistered. */
	assert_int_equal(munmap(dst, NPAGES * pg), 0);
	dst2 = mmap(dst, NPAGES * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS |
		    MAP_FIXED_NOREPLACE, -1, 0);
	if (dst2 == MAP_FAILED) /* another thread (ASan, the provider) took the hole meanwhile */
		dst2 = mmap(NULL, NPAGES * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			    -1, 0);
	assert_true(dst2 != MAP_FAILED);
	if (dst2 != dst)
		print_message("address not reused (%p, then %p)\n", (void *)dst, (void *)dst2);
	memset(dst2, 0, NPAGES * pg);
	memset(src, 'c', NPAGES * pg);
	write_through_caches(src, dst2, NPAGES * pg, &k3);
	rcache_get_stats(cache[1], &s);
	assert_int_equal(s.misses, 2);
	assert_int_equal(s.deregs, 1);
	assert_int_equal(s.dereg_errors, 0);
	assert_int_equal(s.mem_invalidations, 1);
	munmap(src, NPAGES * pg);
	munmap(dst2, NPAGES * pg);
	(void)k3;
	(void)state;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_write_after_remap),
	};
	struct rcache_attr a;
	char why[256];
	int rc;

	pg = (size_t)sysconf(_SC_PAGESIZE);
	if (rcache_monitor_probe(why, sizeof(why)) != RCACHE_MONITOR_UFFD) {
		fprintf(stderr, "skipping: no userfaultfd monitor here (%s)\n", why);
		return 77;
	}
	if (open_pair() != 0)
		return 77;
	for (int r = 0; r < 2; r++) {
		rcache_attr_init(&a, rcache_fab_reg, rcache_fab_dereg, ep[r]);
		a.monitor = RCACHE_MONITOR_UFFD;
		if (rcache_create(&a, &cache[r]) != 0) {
			fprintf(stderr, "rcache_create: %s\n", rdag_last_error());
			return 1;
		}
	}
	rc = cmocka_run_group_tests(tests, NULL, NULL);
	for (int r = 0; r < 2; r++) {
		if (rcache_destroy(cache[r]) != 0)
			rc = 1;
		fab_close(ep[r]);
	}
	return rc;
}
