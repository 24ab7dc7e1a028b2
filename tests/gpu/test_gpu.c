/* Unit tests of gpu/ without a device: transport selection, cache keys, loader error paths. */
#include <dlfcn.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include <rdag/error.h>

#include "fabric/fabric.h"
#include "gpu/gpu.h"
#include "rcache/rcache_dev.h"
#include "util/err.h"

/* ---- error codes ---- */

static void error_codes_are_distinct(void **state)
{
	static const int codes[] = {RDAG_ENOCUDA, RDAG_ENOCUDA_DRIVER, RDAG_ENOGPU, RDAG_ENONCCL};
	(void)state;
	for (size_t i = 0; i < 4; i++) {
		assert_string_not_equal(rdag_strerror(codes[i]), "unknown error");
		for (size_t j = 0; j < i; j++) {
			assert_int_not_equal(codes[i], codes[j]);
			assert_string_not_equal(rdag_strerror(codes[i]), rdag_strerror(codes[j]));
		}
	}
	assert_non_null(strstr(rdag_strerror(RDAG_ENOCUDA), "without CUDA"));
	assert_non_null(strstr(rdag_strerror(RDAG_ENOCUDA_DRIVER), "libcuda.so.1"));
	assert_non_null(strstr(rdag_strerror(RDAG_ENOGPU), "no usable GPU device"));
	assert_non_null(strstr(rdag_strerror(RDAG_ENONCCL), "libnccl.so.2"));
}

/* ---- RDAG_GPU_TRANSPORT ---- */

static void transport_parse(void **state)
{
	enum gpu_transport t = GPU_TRANSPORT_HOST;
	(void)state;
	assert_int_equal(gpu_transport_parse(NULL, &t), 0);
	assert_int_equal(t, GPU_TRANSPORT_AUTO);
	assert_int_equal(gpu_transport_parse("", &t), 0);
	assert_int_equal(t, GPU_TRANSPORT_AUTO);
	assert_int_equal(gpu_transport_parse("gdr", &t), 0);
	assert_int_equal(t, GPU_TRANSPORT_GDR);
	assert_int_equal(gpu_transport_parse("nccl", &t), 0);
	assert_int_equal(t, GPU_TRANSPORT_NCCL);
	assert_int_equal(gpu_transport_parse("host", &t), 0);
	assert_int_equal(t, GPU_TRANSPORT_HOST);
	assert_int_equal(gpu_transport_parse("auto", &t), 0);
	assert_int_equal(t, GPU_TRANSPORT_AUTO);
	assert_int_equal(gpu_transport_parse("GDR", &t), RDAG_EINVAL);
	assert_string_equal(rdag_last_error(),
			    "gpu: RDAG_GPU_TRANSPORT='GDR' is not one of auto, gdr, nccl, host");
	for (int i = GPU_TRANSPORT_AUTO; i <= GPU_TRANSPORT_HOST; i++) {
		assert_int_equal(gpu_transport_parse(gpu_transport_name((enum gpu_transport)i), &t), 0);
		assert_int_equal((int)t, i);
	}
}

static const struct gpu_side_caps FULL = {.built = 1, .cuda = 1, .ndevices = 2, .nic_device_mem = 1, .nccl = 1};

struct sel_case {
	enum gpu_transport want;
	struct gpu_side_caps local, peer;
	int rc;
	enum gpu_transport got;
	const char *why;
};

static void transport_select(void **state)
{
	const struct gpu_side_caps nonic = {.built = 1, .cuda = 1, .ndevices = 1, .nic_device_mem = 0, .nccl = 1};
	const struct gpu_side_caps bare = {.built = 1, .cuda = 1, .ndevices = 1};
	const struct gpu_side_caps nodev = {.built = 1, .cuda = 1, .ndevices = 0, .nic_device_mem = 0, .nccl = 1};
	const struct gpu_side_caps nocuda = {0};
	const struct gpu_side_caps nodriver = {.built = 1, .nccl = 1};
	const struct sel_case cases[] = {
		{GPU_TRANSPORT_AUTO, FULL, FULL, 0, GPU_TRANSPORT_GDR, "gdr: both fabrics register device memory"},
		{GPU_TRANSPORT_AUTO, nonic, FULL, 0, GPU_TRANSPORT_NCCL,
		 "nccl: this fabric cannot register device memory; NCCL and a GPU on both sides"},
		{GPU_TRANSPORT_AUTO, FULL, nonic, 0, GPU_TRANSPORT_NCCL,
		 "nccl: the peer's fabric cannot register device memory; NCCL and a GPU on both sides"},
		{GPU_TRANSPORT_AUTO, bare, FULL, 0, GPU_TRANSPORT_HOST,
		 "host staging: this fabric cannot register device memory and NCCL is missing here"},
		{GPU_TRANSPORT_AUTO, nonic, nodev, 0, GPU_TRANSPORT_HOST,
		 "host staging: this fabric cannot register device memory and the peer has no GPU"},
		{GPU_TRANSPORT_AUTO, nonic, bare, 0, GPU_TRANSPORT_HOST,
		 "host staging: this fabric cannot register device memory and NCCL is missing on the peer"},
		{GPU_TRANSPORT_AUTO, nodev, FULL, RDAG_ENOGPU, GPU_TRANSPORT_AUTO, "this worker has no GPU device"},
		{GPU_TRANSPORT_AUTO, nocuda, FULL, RDAG_ENOCUDA, GPU_TRANSPORT_AUTO,
		 "this worker was built without CUDA"},
		{GPU_TRANSPORT_AUTO, nodriver, FULL, RDAG_ENOCUDA_DRIVER, GPU_TRANSPORT_AUTO,
		 "this worker has no CUDA driver"},
		{GPU_TRANSPORT_GDR, FULL, FULL, 0, GPU_TRANSPORT_GDR, "gdr (forced): both fabrics register device memory"},
		{GPU_TRANSPORT_GDR, nonic, FULL, RDAG_ENOSYS, GPU_TRANSPORT_AUTO,
		 "gdr forced, but this worker's fabric cannot register device memory (no dma-buf, "
		 "peer-memory module or FI_HMEM)"},
		{GPU_TRANSPORT_GDR, FULL, nonic, RDAG_ENOSYS, GPU_TRANSPORT_AUTO,
		 "gdr forced, but the peer's fabric cannot register device memory (no dma-buf, "
		 "peer-memory module or FI_HMEM)"},
		{GPU_TRANSPORT_NCCL, FULL, FULL, 0, GPU_TRANSPORT_NCCL, "nccl (forced): NCCL and a GPU on both sides"},
		{GPU_TRANSPORT_NCCL, bare, FULL, RDAG_ENONCCL, GPU_TRANSPORT_AUTO,
		 "nccl forced, but NCCL is missing on this worker"},
		{GPU_TRANSPORT_NCCL, FULL, bare, RDAG_ENONCCL, GPU_TRANSPORT_AUTO,
		 "nccl forced, but NCCL is missing on the peer"},
		{GPU_TRANSPORT_NCCL, FULL, nodev, RDAG_ENOGPU, GPU_TRANSPORT_AUTO,
		 "nccl forced, but the peer has no GPU"},
		{GPU_TRANSPORT_NCCL, nodev, FULL, RDAG_ENOGPU, GPU_TRANSPORT_AUTO, "this worker has no GPU device"},
		{GPU_TRANSPORT_HOST, bare, nocuda, 0, GPU_TRANSPORT_HOST, "host staging (forced)"},
		{GPU_TRANSPORT_HOST, nocuda, FULL, RDAG_ENOCUDA, GPU_TRANSPORT_AUTO,
		 "this worker was built without CUDA"},
		{GPU_TRANSPORT_GDR, nodriver, FULL, RDAG_ENOCUDA_DRIVER, GPU_TRANSPORT_AUTO,
		 "this worker has no CUDA driver"},
	};
	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct sel_case *c = &cases[i];
		struct gpu_caps caps = {.local = c->local, .peer = c->peer};
		enum gpu_transport got = GPU_TRANSPORT_AUTO;
		char why[256];
		int rc = gpu_transport_select(c->want, &caps, &got, why, sizeof(why));

		printf("case %zu: want %s -> %d %s (%s)\n", i, gpu_transport_name(c->want), rc,
		       gpu_transport_name(got), why);
		assert_int_equal(rc, c->rc);
		assert_string_equal(why, c->why);
		if (rc == 0)
			assert_int_equal(got, c->got);
		else
			assert_non_null(strstr(rdag_last_error(), c->why));
	}
	/* why too small or absent: still an answer, never an overflow. */
	{
		struct gpu_caps caps = {.local = FULL, .peer = FULL};
		enum gpu_transport got;
		char why[5];

		assert_int_equal(gpu_transport_select(GPU_TRANSPORT_AUTO, &caps, &got, why, sizeof(why)), 0);
		assert_string_equal(why, "gdr:");
		assert_int_equal(gpu_transport_select(GPU_TRANSPORT_AUTO, &caps, &got, NULL, 0), 0);
		assert_int_equal(got, GPU_TRANSPORT_GDR);
		assert_int_equal(gpu_transport_select(GPU_TRANSPORT_AUTO, NULL, &got, NULL, 0), RDAG_EINVAL);
	}
}

static void reg_method(void **state)
{
	(void)state;
	assert_int_equal(gpu_reg_method_choose(1, 1), GPU_REG_DMABUF);
	assert_int_equal(gpu_reg_method_choose(1, 0), GPU_REG_DMABUF);
	assert_int_equal(gpu_reg_method_choose(0, 1), GPU_REG_PEERMEM);
	assert_int_equal(gpu_reg_method_choose(0, 0), GPU_REG_NONE);
	assert_string_equal(gpu_reg_method_name(GPU_REG_DMABUF), "dmabuf");
	assert_string_equal(gpu_reg_method_name(GPU_REG_PEERMEM), "peermem");
	assert_string_equal(gpu_reg_method_name(GPU_REG_NONE), "none");
}

static void peermem_module(void **state)
{
	char root[] = "/tmp/rdag-sysfs-XXXXXX", path[256];
	(void)state;
	assert_non_null(mkdtemp(root));
	snprintf(path, sizeof(path), "%s/module", root);
	assert_int_equal(mkdir(path, 0700), 0);
	assert_null(gpu_peermem_module(root));
	snprintf(path, sizeof(path), "%s/module/nv_peer_mem", root);
	assert_int_equal(mkdir(path, 0700), 0);
	assert_string_equal(gpu_peermem_module(root), "nv_peer_mem");
	snprintf(path, sizeof(path), "%s/module/nvidia_peermem", root);
	assert_int_equal(mkdir(path, 0700), 0);
	assert_string_equal(gpu_peermem_module(root), "nvidia_peermem"); /* preferred */
	rmdir(path);
	snprintf(path, sizeof(path), "%s/module/nv_peer_mem", root);
	rmdir(path);
	snprintf(path, sizeof(path), "%s/module", root);
	rmdir(path);
	rmdir(root);
}

/* ---- device registration cache keys ---- */

static void dev_keys(void **state)
{
	const struct rcache_dev_key e = {.buffer_id = 7, .device = 1, .addr = 0x10000, .len = 0x1000,
					 .access = FAB_ACCESS_LOCAL | FAB_ACCESS_REMOTE_WRITE};
	struct rcache_dev_key q = e;
	(void)state;
	assert_true(rcache_dev_key_serves(&e, &q));
	assert_false(rcache_dev_key_stale(&e, &q));
	q.addr = 0x10800; q.len = 0x800; q.access = FAB_ACCESS_LOCAL;
	assert_true(rcache_dev_key_serves(&e, &q));     /* inside, fewer access bits */
	q.len = 0x801;
	assert_false(rcache_dev_key_serves(&e, &q));    /* one byte past the end */
	q = e; q.access = FAB_ACCESS_REMOTE_READ;
	assert_false(rcache_dev_key_serves(&e, &q));    /* access not granted */
	q = e; q.addr = 0xff00; q.len = 0x200;
	assert_false(rcache_dev_key_serves(&e, &q));    /* starts before */
	/* The same address in a later allocation: never served, and the entry is stale. */
	q = e; q.buffer_id = 8;
	assert_false(rcache_dev_key_serves(&e, &q));
	assert_true(rcache_dev_key_stale(&e, &q));
	q = e; q.device = 0;
	assert_false(rcache_dev_key_serves(&e, &q));
	assert_true(rcache_dev_key_stale(&e, &q));
	/* Another allocation next to it does not touch it. */
	q = e; q.buffer_id = 8; q.addr = 0x11000;
	assert_false(rcache_dev_key_stale(&e, &q));
	q.addr = 0x10fff; q.len = 1;
	assert_true(rcache_dev_key_stale(&e, &q));
	/* Buffer id 0 is never a device allocation. */
	{
		struct rcache_dev_key z = e;

		z.buffer_id = 0;
		q = z;
		assert_false(rcache_dev_key_serves(&z, &q));
	}
}

/* A fake "driver": one allocation at a fixed address whose buffer id the test changes. */
struct fake_dev {
	uint64_t id;
	uintptr_t base;
	size_t size;
	int regs, deregs;
	uint64_t next_rkey;
};

static int fake_ident(void *arg, const void *addr, struct rcache_dev_ident *out)
{
	struct fake_dev *f = arg;

	if ((uintptr_t)addr < f->base || (uintptr_t)addr >= f->base + f->size)
		return err_set(RDAG_EINVAL, "fake: %p is not device memory", addr);
	*out = (struct rcache_dev_ident){.buffer_id = f->id, .device = 0, .base = f->base, .size = f->size};
	return 0;
}

static int fake_reg(void *arg, void *addr, size_t len, uint32_t access, int device, struct fab_mr *out)
{
	struct fake_dev *f = arg;

	memset(out, 0, sizeof(*out));
	out->addr = addr;
	out->len = len;
	out->rkey = ++f->next_rkey;
	f->regs++;
	return 0;
}

static int fake_dereg(void *arg, struct fab_mr *mr)
{
	struct fake_dev *f = arg;

	f->deregs++;
	return 0;
}

static void dev_cache_reused_address(void **state)
{
	struct fake_dev f = {.id = 1, .base = 0x7f0000000000u, .size = 1 << 20};
	struct rcache_dev_attr a = {.ident = fake_ident, .reg = fake_reg, .dereg = fake_dereg,
				    .ident_arg = &f, .arg = &f, .max_entries = 2};
	struct rcache_dev *c;
	struct rcache_dev_reg *r1, *r2, *r3, *r4;
	struct rcache_dev_stats st;
	void *p = (void *)f.base;
	uint64_t k1;
	(void)state;
	assert_int_equal(rcache_dev_create(&a, &c), 0);
	assert_int_equal(rcache_dev_lookup(c, p, 4096, FAB_ACCESS_REMOTE_WRITE, &r1), 0);
	k1 = r1->mr.rkey;
	assert_int_equal(r1->key.buffer_id, 1);
	rcache_dev_release(c, r1);
	/* Same allocation: a hit, the same registration. */
	assert_int_equal(rcache_dev_lookup(c, (char *)p + 100, 100, FAB_ACCESS_REMOTE_WRITE, &r2), 0);
	assert_ptr_equal(r2, r1);
	rcache_dev_release(c, r2);
	/* cudaFree + cudaMalloc at the same address: a new buffer id, so no hit on the old key. */
	f.id = 2;
	assert_int_equal(rcache_dev_lookup(c, p, 4096, FAB_ACCESS_REMOTE_WRITE, &r3), 0);
	assert_int_equal(r3->key.buffer_id, 2);
	assert_int_not_equal(r3->mr.rkey, k1);
	rcache_dev_get_stats(c, &st);
	assert_int_equal(st.hits, 1);
	assert_int_equal(st.misses, 2);
	assert_int_equal(st.stale_drops, 1);
	assert_int_equal(f.deregs, 1);    /* the stale one, unused, went at once */
	assert_int_equal(st.entries, 1);
	/* Reused again while the registration is held: dropped from the cache, deregistered by
	   its last release, never handed out again. */
	f.id = 3;
	assert_int_equal(rcache_dev_lookup(c, p, 4096, FAB_ACCESS_REMOTE_WRITE, &r4), 0);
	assert_ptr_not_equal(r4, r3);
	assert_int_equal(r4->key.buffer_id, 3);
	assert_int_equal(f.deregs, 1);
	rcache_dev_release(c, r3);
	assert_int_equal(f.deregs, 2);
	/* Outside the allocation, or straddling its end: refused, nothing registered. */
	assert_int_equal(rcache_dev_lookup(c, (char *)p + f.size - 8, 16, FAB_ACCESS_LOCAL, &r1),
			 RDAG_EINVAL);
	assert_int_equal(rcache_dev_lookup(c, (char *)p - 8, 4, FAB_ACCESS_LOCAL, &r1), RDAG_EINVAL);
	assert_int_equal(f.regs, 3);
	/* Destroy refuses while held. */
	assert_int_equal(rcache_dev_destroy(c), RDAG_EBUSY);
	rcache_dev_release(c, r4);
	/* Explicit invalidation (before cudaFree). */
	assert_int_equal(rcache_dev_invalidate(c, p, 1), 1);
	assert_int_equal(f.deregs, 3);
	assert_int_equal(rcache_dev_destroy(c), 0);
	assert_int_equal(f.regs, f.deregs);
}

static void dev_cache_bounds(void **state)
{
	struct fake_dev f = {.id = 1, .base = 0x7f0000000000u, .size = 1 << 20};
	struct rcache_dev_attr a = {.ident = fake_ident, .reg = fake_reg, .dereg = fake_dereg,
				    .ident_arg = &f, .arg = &f, .max_entries = 2};
	struct rcache_dev *c;
	struct rcache_dev_reg *r[4];
	struct rcache_dev_stats st;
	char *p = (char *)f.base;
	(void)state;
	assert_int_equal(rcache_dev_create(&a, &c), 0);
	/* Three disjoint ranges held at once: the third is registered uncached. */
	for (int i = 0; i < 3; i++)
		assert_int_equal(rcache_dev_lookup(c, p + i * 4096, 4096, FAB_ACCESS_LOCAL, &r[i]), 0);
	rcache_dev_get_stats(c, &st);
	assert_int_equal(st.entries, 2);
	assert_int_equal(st.uncached, 1);
	for (int i = 0; i < 3; i++)
		rcache_dev_release(c, r[i]);
	assert_int_equal(f.deregs, 1);    /* the uncached one */
	/* A fourth range evicts the least recently released (range 0 was released first). */
	assert_int_equal(rcache_dev_lookup(c, p + 3 * 4096, 4096, FAB_ACCESS_LOCAL, &r[3]), 0);
	rcache_dev_get_stats(c, &st);
	assert_int_equal(st.evictions, 1);
	assert_int_equal(f.deregs, 2);
	rcache_dev_release(c, r[3]);
	assert_int_equal(rcache_dev_lookup(c, p + 4096, 4096, FAB_ACCESS_LOCAL, &r[1]), 0);
	rcache_dev_get_stats(c, &st);
	assert_int_equal(st.hits, 1);     /* range 1 stayed */
	rcache_dev_release(c, r[1]);
	assert_int_equal(rcache_dev_destroy(c), 0);
	assert_int_equal(f.regs, f.deregs);
	assert_int_equal(rcache_dev_create(NULL, &c), RDAG_EINVAL);
}

/* ---- the loader, each case in a fresh process (it loads once per process) ---- */

#define CHILD_CHECK(c)                                                                     \
	do {                                                                               \
		if (!(c)) {                                                                \
			fprintf(stderr, "%s:%d: check failed: %s (last error: %s)\n", __FILE__, \
				__LINE__, #c, rdag_last_error());                          \
			_exit(1);                                                          \
		}                                                                          \
	} while (0)

static void in_child(void (*fn)(void))
{
	int st = 0;
	pid_t pid;

	fflush(NULL);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		fn();
		fflush(NULL);
		_exit(0);
	}
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
}

/* Every device call of a process without a usable GPU answers code. */
static void all_refused(int code)
{
	struct gpu_ptr_info pi;
	struct gpu_stage *s = (struct gpu_stage *)1;
	struct gpu_nccl_comm *nc = (struct gpu_nccl_comm *)1;
	uint8_t id[GPU_NCCL_ID_BYTES] = {0};
	void *d = (void *)1;
	int fd;
	uint64_t off;
	char host[64];

	CHILD_CHECK(gpu_init() == code);
	CHILD_CHECK(gpu_init() == code); /* the same answer again */
	CHILD_CHECK(gpu_set_device(0) == code);
	CHILD_CHECK(gpu_mem_alloc(0, 4096, &d) == code && d == NULL);
	CHILD_CHECK(gpu_stage_create(0, 4096, &s) == code && s == NULL);
	CHILD_CHECK(gpu_dmabuf_get(host, sizeof(host), &fd, &off) == code);
	CHILD_CHECK(gpu_memcpy_htod(host, host, 1) == code);
#ifndef TEST_HAVE_NCCL
	if (gpu_built()) /* CUDA without NCCL: the NCCL calls say NCCL is missing */
		code = RDAG_ENONCCL;
#endif
	CHILD_CHECK(gpu_nccl_comm_open(id, sizeof(id), 0, 0, 0, &nc) == code && nc == NULL);
	/* Nothing is device memory then: host pointers classify as host. */
	CHILD_CHECK(gpu_ptr_classify(host, &pi) == 0 && pi.type == GPU_MEM_HOST && pi.device == -1 &&
		    pi.buffer_id == 0);
}

static void child_no_driver(void)
{
	setenv("RDAG_CUDA_LIBRARY", "/nonexistent/libcuda.so.1", 1);
	if (!gpu_built()) {
		all_refused(RDAG_ENOCUDA);
		CHILD_CHECK(strstr(rdag_last_error(), "built without CUDA") != NULL);
		return;
	}
	all_refused(RDAG_ENOCUDA_DRIVER);
	gpu_init();
	CHILD_CHECK(strstr(rdag_last_error(), "CUDA driver is missing: dlopen(/nonexistent/libcuda.so.1)"));
}

static void loader_no_driver(void **state)
{
	(void)state;
	in_child(child_no_driver);
}

/* This host as it is: on one without libcuda.so.1 (as here), the driver is reported missing. */
static void child_this_host(void)
{
	void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
	struct gpu_info gi;

	unsetenv("RDAG_CUDA_LIBRARY");
	if (!gpu_built()) {
		CHILD_CHECK(gpu_probe(&gi) == RDAG_ENOCUDA && !gi.built);
		return;
	}
	if (h) {
		printf("libcuda.so.1 is present here: driver-missing case not applicable\n");
		dlclose(h);
		return;
	}
	CHILD_CHECK(gpu_probe(&gi) == RDAG_ENOCUDA_DRIVER);
	CHILD_CHECK(gi.built && !gi.driver_loaded && gi.ndevices == 0);
	CHILD_CHECK(strcmp(gi.library, "libcuda.so.1") == 0);
	CHILD_CHECK(strstr(gi.why, "dlopen(libcuda.so.1)") != NULL);
}

static void loader_this_host(void **state)
{
	(void)state;
	in_child(child_this_host);
}

static void child_no_device(void)
{
	struct gpu_info gi;
	struct gpu_caps caps = {0};
	enum gpu_transport t;
	char why[128];

	setenv("RDAG_CUDA_LIBRARY", FAKE_CUDA_NODEV, 1);
	if (!gpu_built()) {
		all_refused(RDAG_ENOCUDA);
		return;
	}
	all_refused(RDAG_ENOGPU);
	gpu_init();
	CHILD_CHECK(strstr(rdag_last_error(), "no GPU device: cuInit: the driver") != NULL);
	CHILD_CHECK(strstr(rdag_last_error(), "(version 13000) found no CUDA device") != NULL);
	CHILD_CHECK(gpu_probe(&gi) == RDAG_ENOGPU);
	CHILD_CHECK(gi.built && gi.driver_loaded && gi.driver_version == 13000 && gi.ndevices == 0);
	caps.local.built = gi.built;
	caps.local.cuda = gi.driver_loaded;
	caps.local.ndevices = gi.ndevices;
	caps.peer = FULL;
	CHILD_CHECK(gpu_transport_select(GPU_TRANSPORT_AUTO, &caps, &t, why, sizeof(why)) == RDAG_ENOGPU);
	CHILD_CHECK(strcmp(why, "this worker has no GPU device") == 0);
}

static void loader_no_device(void **state)
{
	(void)state;
	in_child(child_no_device);
}

static void child_old_driver(void)
{
	setenv("RDAG_CUDA_LIBRARY", FAKE_CUDA_OLD, 1);
	if (!gpu_built()) {
		all_refused(RDAG_ENOCUDA);
		return;
	}
	all_refused(RDAG_ENOCUDA_DRIVER);
	gpu_init();
	CHILD_CHECK(strstr(rdag_last_error(), "lacks cuMemGetHandleForAddressRange (too old") != NULL);
}

static void loader_old_driver(void **state)
{
	(void)state;
	in_child(child_old_driver);
}

static void child_no_nccl(void)
{
	uint8_t id[GPU_NCCL_ID_BYTES];
	int v = -1;

	setenv("RDAG_NCCL_LIBRARY", "/nonexistent/libnccl.so.2", 1);
	if (!gpu_built()) {
		CHILD_CHECK(gpu_nccl_load(&v) == RDAG_ENOCUDA && v == 0);
		return;
	}
	CHILD_CHECK(gpu_nccl_load(&v) == RDAG_ENONCCL && v == 0);
	CHILD_CHECK(gpu_nccl_id_create(id, sizeof(id)) == RDAG_ENONCCL);
#ifdef TEST_HAVE_NCCL
	CHILD_CHECK(strstr(rdag_last_error(), "NCCL is missing: dlopen(/nonexistent/libnccl.so.2)") != NULL);
#else
	CHILD_CHECK(strstr(rdag_last_error(), "built without NCCL") != NULL);
#endif
}

static void nccl_missing(void **state)
{
	(void)state;
	in_child(child_no_nccl);
}

static void child_nccl_here(void)
{
#ifdef TEST_HAVE_NCCL
	void *h = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
	uint8_t id[8];
	int v = 0;

	unsetenv("RDAG_NCCL_LIBRARY");
	if (!h) {
		printf("libnccl.so.2 is not loadable here: nothing to check\n");
		return;
	}
	dlclose(h);
	CHILD_CHECK(gpu_nccl_load(&v) == 0 && v >= 20000);
	printf("NCCL version %d\n", v);
	CHILD_CHECK(gpu_nccl_id_create(id, sizeof(id)) == RDAG_ENOSPC);
	CHILD_CHECK(gpu_nccl_comm_open(id, sizeof(id), 0, 0, 0, &(struct gpu_nccl_comm *){NULL}) ==
		    RDAG_EINVAL);
	CHILD_CHECK(gpu_nccl_comm_open((uint8_t[GPU_NCCL_ID_BYTES]){0}, GPU_NCCL_ID_BYTES, 2, 0, 0,
				       &(struct gpu_nccl_comm *){NULL}) == RDAG_EINVAL);
#endif
}

static void nccl_loads_here(void **state)
{
	(void)state;
	in_child(child_nccl_here);
}

/* ---- the ofi provider and CUDA memory (shm: no CUDA in Debian's libfabric) ---- */

static struct fab_ep *open_shm(void)
{
	struct fab_open_opts o;
	struct fab_ep *ep = NULL;

	fab_opts_from_env(&o);
	o.provider = "ofi";
	o.ofi_provider = "shm";
	o.world_size = 2;
	o.local_only = 1;
	CHILD_CHECK(fab_open(&o, &ep) == 0);
	return ep;
}

static void child_ofi_no_hmem(void)
{
	char buf[64];
	struct fab_mr mr;
	struct fab_ep *ep;

	unsetenv("RDAG_OFI_HMEM");
	ep = open_shm();
	CHILD_CHECK(!(fab_attr(ep)->caps & FAB_CAP_HMEM_CUDA));
	CHILD_CHECK(fab_mr_reg_mem(ep, buf, sizeof(buf), FAB_ACCESS_LOCAL, FAB_MEM_CUDA, 0, &mr) ==
		    RDAG_ENOSYS);
	CHILD_CHECK(strcmp(rdag_last_error(), "ofi: provider shm has no FI_HMEM: it cannot register "
					      "CUDA memory (set RDAG_OFI_HMEM=1 to ask libfabric for it)") == 0);
	fab_close(ep);
}

static void child_ofi_hmem(void)
{
	char buf[64];
	struct fab_mr mr;
	struct fab_ep *ep;
	int want;

	setenv("RDAG_OFI_HMEM", "1", 1);
	ep = open_shm();
	if (!(fab_attr(ep)->caps & FAB_CAP_HMEM_CUDA)) {
		printf("shm offers no FI_HMEM with this libfabric: nothing more to check\n");
		fab_close(ep);
		return;
	}
	/* FI_HMEM asked and offered: a CUDA registration goes to the driver first. Without one,
	   its reason; with one, host memory presented as device memory is refused. */
	want = gpu_init() ? gpu_init() : RDAG_EINVAL;
	CHILD_CHECK(fab_mr_reg_mem(ep, buf, sizeof(buf), FAB_ACCESS_LOCAL, FAB_MEM_CUDA, 0, &mr) == want);
	if (want != RDAG_EINVAL)
		CHILD_CHECK(strncmp(rdag_last_error(), "ofi: shm: registering CUDA memory: gpu: ", 40) == 0);
	else
		CHILD_CHECK(strstr(rdag_last_error(), "is not device memory of GPU 0") != NULL);
	/* Host memory still registers as before. */
	CHILD_CHECK(fab_mr_reg(ep, buf, sizeof(buf), FAB_ACCESS_LOCAL, &mr) == 0);
	CHILD_CHECK(fab_mr_dereg(ep, &mr) == 0);
	fab_close(ep);
}

static void ofi_cuda_registration(void **state)
{
	(void)state;
	in_child(child_ofi_no_hmem);
	in_child(child_ofi_hmem);
}

#ifdef SIM_CUDA
/*
 * The simulated driver (tests/gpu/sim_cuda.c): two devices whose memory the host cannot touch.
 * What rdag's own code does with device memory runs for real: classification, copies, buffer
 * identity across a free and a reallocation at the same address, the device registration cache
 * with the driver's buffer ids, refusals.
 */
static void child_sim_driver(void)
{
	struct rcache_dev_attr a = {.ident = gpu_rcache_ident, .reg = fake_reg, .dereg = fake_dereg};
	struct fake_dev f = {0};
	struct gpu_device_info di;
	struct gpu_ptr_info pi, pi2;
	struct rcache_dev *c;
	struct rcache_dev_reg *r1, *r2;
	struct rcache_dev_stats st;
	uint8_t host[8192], back[8192];
	struct gpu_info gi;
	void *d, *d2;
	uint64_t id1, off;
	int fd;

	setenv("RDAG_CUDA_LIBRARY", SIM_CUDA, 1);
	CHILD_CHECK(gpu_probe(&gi) == 0 && gi.driver_loaded && gi.ndevices == 2);
	CHILD_CHECK(gpu_device_query(1, &di) == 0 && strcmp(di.name, "rdag simulated GPU 1") == 0);
	CHILD_CHECK(!di.dmabuf_supported && !di.gdr_supported && di.total_mem == (size_t)1 << 30);
	CHILD_CHECK(gpu_device_query(2, &di) == RDAG_ENOGPU);
	CHILD_CHECK(strstr(rdag_last_error(), "no GPU device 2 (2 present)") != NULL);
	CHILD_CHECK(gpu_dmabuf_supported(0) == 0);

	CHILD_CHECK(gpu_mem_alloc(1, sizeof(host), &d) == 0 && d != NULL);
	CHILD_CHECK(gpu_ptr_classify((uint8_t *)d + 100, &pi) == 0);
	CHILD_CHECK(pi.type == GPU_MEM_DEVICE && pi.device == 1 && pi.buffer_id != 0);
	CHILD_CHECK(pi.base == (uintptr_t)d && pi.size == sizeof(host));
	CHILD_CHECK(gpu_ptr_classify(host, &pi2) == 0 && pi2.type == GPU_MEM_HOST && pi2.device == -1);
	id1 = pi.buffer_id;
	for (size_t i = 0; i < sizeof(host); i++)
		host[i] = (uint8_t)(i * 7 + 1);
	CHILD_CHECK(gpu_memcpy_htod(d, host, sizeof(host)) == 0);
	CHILD_CHECK(gpu_memset((uint8_t *)d + 4096, 0xee, 16) == 0);
	memset(host + 4096, 0xee, 16);
	CHILD_CHECK(gpu_memcpy_dtoh(back, d, sizeof(back)) == 0 && memcmp(back, host, sizeof(host)) == 0);
	/* Host memory where device memory is wanted, and the other way round: refused, named. */
	CHILD_CHECK(gpu_memcpy_htod(back, host, 16) == RDAG_EINVAL);
	CHILD_CHECK(strstr(rdag_last_error(), "is not device memory") != NULL);
	CHILD_CHECK(gpu_memcpy_dtoh(back, host, 16) == RDAG_EINVAL);
	/* No dma-buf in this driver: the driver's "not supported" comes back as RDAG_ENOSYS. */
	CHILD_CHECK(gpu_dmabuf_get(d, 4096, &fd, &off) == RDAG_ENOSYS);
	CHILD_CHECK(strstr(rdag_last_error(), "cuMemGetHandleForAddressRange") != NULL);

	/* The device registration cache on the driver's buffer ids. */
	a.ident_arg = NULL;
	a.arg = &f;
	CHILD_CHECK(rcache_dev_create(&a, &c) == 0);
	CHILD_CHECK(rcache_dev_lookup(c, d, 4096, FAB_ACCESS_REMOTE_WRITE, &r1) == 0);
	CHILD_CHECK(r1->key.buffer_id == id1 && r1->key.device == 1);
	rcache_dev_release(c, r1);
	CHILD_CHECK(rcache_dev_lookup(c, (uint8_t *)d + 16, 64, FAB_ACCESS_REMOTE_WRITE, &r2) == 0);
	CHILD_CHECK(r2 == r1);
	rcache_dev_release(c, r2);
	CHILD_CHECK(rcache_dev_lookup(c, host, 64, FAB_ACCESS_LOCAL, &r2) == RDAG_EINVAL);
	/* Freed and allocated again: a new buffer id, whatever address the driver hands out. */
	gpu_mem_free(d);
	CHILD_CHECK(gpu_mem_alloc(1, sizeof(host), &d2) == 0);
	CHILD_CHECK(gpu_ptr_classify(d2, &pi2) == 0 && pi2.buffer_id != id1);
	CHILD_CHECK(rcache_dev_lookup(c, d2, 4096, FAB_ACCESS_REMOTE_WRITE, &r2) == 0);
	CHILD_CHECK(r2->key.buffer_id == pi2.buffer_id);
	rcache_dev_get_stats(c, &st);
	CHILD_CHECK(st.hits == 1 && st.misses == 2);
	if (d2 == d) /* the same address came back: the old registration was stale */
		CHILD_CHECK(st.stale_drops == 1 && f.deregs == 1);
	rcache_dev_release(c, r2);
	CHILD_CHECK(rcache_dev_destroy(c) == 0 && f.regs == f.deregs);
	printf("simulated driver: reallocation %s the address\n", d2 == d ? "reused" : "moved");
	gpu_mem_free(d2);
	/* The pool of staging buffers: reused by device and size, bounded. */
	{
		struct gpu_stage *s1, *s2, *s3, *many[GPU_STAGE_POOL + 2];

		CHILD_CHECK(gpu_stage_get(0, 1000, &s1) == 0 && gpu_stage_capacity(s1) == 64u << 10);
		CHILD_CHECK(gpu_stage_device(s1) == 0);
		gpu_stage_put(s1);
		CHILD_CHECK(gpu_stage_get(0, 40000, &s2) == 0 && s2 == s1); /* fits: reused */
		CHILD_CHECK(gpu_stage_get(0, 40000, &s3) == 0 && s3 != s1); /* taken: a new one */
		gpu_stage_put(s3);
		gpu_stage_put(s2);
		CHILD_CHECK(gpu_stage_get(1, 1000, &s3) == 0 && s3 != s1 && s3 != s2 &&
			    gpu_stage_device(s3) == 1); /* another device */
		gpu_stage_put(s3);
		CHILD_CHECK(gpu_stage_get(0, 200000, &s3) == 0 && s3 != s1 && s3 != s2 &&
			    gpu_stage_capacity(s3) == 200704); /* too small to reuse; 4 KiB rounded */
		gpu_stage_put(s3);
		CHILD_CHECK(gpu_stage_get(0, 1, &s3) == 0 && gpu_stage_capacity(s3) == 64u << 10 &&
			    gpu_stage_device(s3) == 0); /* small: an idle 64 KiB one */
		gpu_stage_put(s3);
		CHILD_CHECK(gpu_stage_get(0, 90000, &s3) == 0 && gpu_stage_capacity(s3) == 90112);
		gpu_stage_put(s3); /* at most twice the size: 200704 was not handed out for 90000 */
		CHILD_CHECK(gpu_stage_get(7, 1, &s3) == RDAG_ENOGPU && s3 == NULL);
		for (unsigned i = 0; i < GPU_STAGE_POOL + 2; i++)
			CHILD_CHECK(gpu_stage_get(1, 4096, &many[i]) == 0);
		for (unsigned i = 0; i < GPU_STAGE_POOL + 2; i++)
			gpu_stage_put(many[i]); /* the pool keeps 16 idle ones, the rest are destroyed */
	}
	/* With a device present, host memory offered to ofi as CUDA memory is refused by rdag. */
	child_ofi_hmem();
}

static void sim_driver(void **state)
{
	(void)state;
	in_child(child_sim_driver);
}
#endif

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(error_codes_are_distinct),
		cmocka_unit_test(transport_parse),
		cmocka_unit_test(transport_select),
		cmocka_unit_test(reg_method),
		cmocka_unit_test(peermem_module),
		cmocka_unit_test(dev_keys),
		cmocka_unit_test(dev_cache_reused_address),
		cmocka_unit_test(dev_cache_bounds),
		cmocka_unit_test(loader_no_driver),
		cmocka_unit_test(loader_this_host),
		cmocka_unit_test(loader_no_device),
		cmocka_unit_test(loader_old_driver),
		cmocka_unit_test(nccl_missing),
		cmocka_unit_test(nccl_loads_here),
		cmocka_unit_test(ofi_cuda_registration),
#ifdef SIM_CUDA
		cmocka_unit_test(sim_driver),
#endif
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
