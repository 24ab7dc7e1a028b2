/* GPU tests: device-memory registration, a gradient landing in device memory, staging, NCCL p2p. */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <rdag/error.h>

#include "fabric/fabric.h"
#include "gpu/gpu.h"
#include "rcache/rcache_dev.h"

/*
 * gpu_mp_test [-p ofi-provider] [-f ofi|verbs] scenario, scenario one of
 *   reg    device memory registered with the fabric (directly and through rcache_dev, with a
 *          freed-and-reallocated buffer that must not hit its predecessor's registration)
 *   land   2 processes: rank 0 writes a gradient from its device memory into rank 1's
 *          device memory (write with immediate data); rank 1 checks the bytes on the GPU
 *   stage  host staging: device -> pinned host -> device, with event-polled completions
 *   nccl   2 processes: a pair communicator from an id rank 0 makes, one grouped request of
 *          two buffers each way, completion polled without blocking
 * Exit 77 (skipped) when no GPU is usable here (the reason is printed), or for reg/land when
 * the fabric cannot register device memory. Runs unchanged on a GPU host (docs/gpu.md).
 */

#define TIMEOUT_S 120
#define GRAD_BYTES (1u << 20)
#define SKIP 77

#define CHECK(c, ...)                                                                       \
	do {                                                                                \
		if (!(c)) {                                                                 \
			fprintf(stderr, "rank %d: %s:%d: ", rank_, __FILE__, __LINE__);     \
			fprintf(stderr, __VA_ARGS__);                                       \
			fprintf(stderr, " (last error: %s)\n", rdag_last_error());          \
			exit(1);                                                            \
		}                                                                           \
	} while (0)

static int rank_ = -1;
static struct fab_open_opts opts_;

static void fill(uint8_t *p, size_t n, uint32_t seed)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)((i * 2654435761u + seed) >> 13);
}

static int device_of(int rank)
{
	struct gpu_info gi;

	gpu_probe(&gi);
	return gi.ndevices > 1 ? rank % gi.ndevices : 0;
}

/* Full-message I/O over the pair's socket (the test's own "control plane"). */
static void xfer(int fd, void *p, size_t n, int out)
{
	size_t done = 0;

	while (done < n) {
		ssize_t r = out ? write(fd, (char *)p + done, n - done) : read(fd, (char *)p + done, n - done);

		CHECK(r > 0 || (r < 0 && errno == EINTR), "socket %s: %s", out ? "write" : "read",
		      r == 0 ? "peer closed" : strerror(errno));
		if (r > 0)
			done += (size_t)r;
	}
}

static int open_ep(int rank, int world, int sock, struct fab_ep **ep)
{
	struct fab_open_opts o = opts_;
	uint8_t mine[256], theirs[256];
	size_t ml = sizeof(mine), tl = 0;
	const void *addrs[2];
	size_t lens[2];
	int rc;

	o.world_size = (uint32_t)world;
	o.rank = (uint32_t)rank;
	o.local_only = 1;
	if (!o.rx_depth)
		o.rx_depth = 64;
	if (!o.tx_depth)
		o.tx_depth = 64;
	rc = fab_open(&o, ep);
	if (rc)
		return rc;
	if (world == 1)
		return 0;
	CHECK(fab_name(*ep, mine, &ml) == 0, "fab_name");
	xfer(sock, &ml, sizeof(ml), 1);
	xfer(sock, mine, ml, 1);
	xfer(sock, &tl, sizeof(tl), 0);
	CHECK(tl <= sizeof(theirs), "peer address of %zu bytes", tl);
	xfer(sock, theirs, tl, 0);
	addrs[rank] = mine;
	lens[rank] = ml;
	addrs[1 - rank] = theirs;
	lens[1 - rank] = tl;
	CHECK(fab_connect(*ep, 2, addrs, lens, 30000) == 0, "fab_connect");
	return 0;
}

static int wait_one(struct fab_ep *ep, struct fab_cqe *c)
{
	int n;

	while ((n = fab_poll(ep, c, 1)) == 0)
		;
	return n;
}

/* ---- scenarios ---- */

static int sc_reg(int rank, int sock)
{
	struct rcache_dev_attr a = {.ident = gpu_rcache_ident, .reg = rcache_dev_fab_reg,
				    .dereg = rcache_dev_fab_dereg};
	struct rcache_dev_reg *r1, *r2;
	struct rcache_dev_stats st;
	struct rcache_dev *c;
	struct gpu_ptr_info pi;
	struct fab_ep *ep;
	struct fab_mr mr;
	void *d, *d2;
	int dev = device_of(rank), rc;

	CHECK(gpu_mem_alloc(dev, GRAD_BYTES, &d) == 0, "cuMemAlloc");
	CHECK(gpu_ptr_classify(d, &pi) == 0 && pi.type == GPU_MEM_DEVICE && pi.device == dev &&
		      pi.buffer_id != 0 && pi.base == (uintptr_t)d && pi.size >= GRAD_BYTES,
	      "classification of device memory");
	CHECK(gpu_ptr_classify(&pi, &pi) == 0 && pi.type == GPU_MEM_HOST, "classification of the stack");
	rc = open_ep(0, 1, sock, &ep);
	if (rc == RDAG_ENODEV) {
		printf("skipped: the fabric is not available here: %s\n", rdag_last_error());
		return SKIP;
	}
	CHECK(rc == 0, "fab_open: %s", rdag_strerror(rc));
	rc = fab_mr_reg_mem(ep, d, GRAD_BYTES, FAB_ACCESS_LOCAL | FAB_ACCESS_REMOTE_WRITE, FAB_MEM_CUDA,
			    dev, &mr);
	if (rc == RDAG_ENOSYS) {
		printf("skipped: %s/%s cannot register device memory: %s\n", fab_attr(ep)->provider,
		       fab_attr(ep)->fabric_name, rdag_last_error());
		fab_close(ep);
		return SKIP;
	}
	CHECK(rc == 0, "registering device memory: %s", rdag_strerror(rc));
	printf("registered %u bytes of GPU %d on %s/%s (rkey 0x%llx)\n", GRAD_BYTES, dev,
	       fab_attr(ep)->provider, fab_attr(ep)->fabric_name, (unsigned long long)mr.rkey);
	CHECK(fab_mr_dereg(ep, &mr) == 0, "dereg");
	/* Host memory presented as device memory is refused. */
	CHECK(fab_mr_reg_mem(ep, &pi, sizeof(pi), FAB_ACCESS_LOCAL, FAB_MEM_CUDA, dev, &mr) == RDAG_EINVAL,
	      "host memory as device memory");
	/* Through the cache: a freed-and-reallocated address gets a new registration. */
	a.arg = ep;
	CHECK(rcache_dev_create(&a, &c) == 0, "rcache_dev_create");
	CHECK(rcache_dev_lookup(c, d, GRAD_BYTES, FAB_ACCESS_REMOTE_WRITE, &r1) == 0, "lookup");
	rcache_dev_release(c, r1);
	gpu_mem_free(d);
	CHECK(gpu_mem_alloc(dev, GRAD_BYTES, &d2) == 0, "cuMemAlloc again");
	CHECK(rcache_dev_lookup(c, d2, GRAD_BYTES, FAB_ACCESS_REMOTE_WRITE, &r2) == 0, "lookup again");
	rcache_dev_get_stats(c, &st);
	printf("reallocation %s the address; cache: %llu hits, %llu misses, %llu stale drops\n",
	       d2 == d ? "reused" : "did not reuse", (unsigned long long)st.hits,
	       (unsigned long long)st.misses, (unsigned long long)st.stale_drops);
	CHECK(st.hits == 0 && st.misses == 2, "a new allocation never hits an old registration");
	CHECK(d2 != d || st.stale_drops == 1, "the reused address's old entry was dropped");
	rcache_dev_release(c, r2);
	CHECK(rcache_dev_destroy(c) == 0, "rcache_dev_destroy");
	gpu_mem_free(d2);
	fab_close(ep);
	return 0;
}

static int sc_land(int rank, int sock)
{
	uint8_t *host = malloc(GRAD_BYTES), *back = malloc(GRAD_BYTES);
	struct fab_ep *ep;
	struct fab_mr mr;
	struct fab_cqe c;
	uint64_t key[2];
	uint8_t rbuf[64];
	int dev = device_of(rank), rc, status = 0, peer = 0;
	void *d;

	CHECK(host && back, "malloc");
	CHECK(gpu_mem_alloc(dev, GRAD_BYTES, &d) == 0, "cuMemAlloc");
	rc = open_ep(rank, 2, sock, &ep);
	if (rc == RDAG_ENODEV) { /* both sides see the same host */
		printf("skipped: the fabric is not available here: %s\n", rdag_last_error());
		return SKIP;
	}
	CHECK(rc == 0, "fab_open: %s", rdag_strerror(rc));
	rc = fab_mr_reg_mem(ep, d, GRAD_BYTES,
			    rank ? FAB_ACCESS_LOCAL | FAB_ACCESS_REMOTE_WRITE : FAB_ACCESS_LOCAL,
			    FAB_MEM_CUDA, dev, &mr);
	/* Both sides agree: skip when either fabric cannot register device memory. */
	status = rc == RDAG_ENOSYS ? SKIP : rc ? 1 : 0;
	if (status == 1)
		fprintf(stderr, "rank %d: registering device memory: %s\n", rank, rdag_last_error());
	else if (status == SKIP)
		printf("skipped: %s/%s cannot register device memory: %s\n", fab_attr(ep)->provider,
		       fab_attr(ep)->fabric_name, rdag_last_error());
	xfer(sock, &status, sizeof(status), 1);
	xfer(sock, &peer, sizeof(peer), 0);
	if (status || peer) {
		if (status == 0)
			fab_mr_dereg(ep, &mr);
		fab_close(ep);
		gpu_mem_free(d);
		free(host);
		free(back);
		return status == 1 || peer == 1 ? 1 : SKIP;
	}
	if (rank == 1) {
		struct fab_mr rmr;

		CHECK(gpu_memset(d, 0, GRAD_BYTES) == 0, "cuMemsetD8");
		CHECK(fab_mr_reg(ep, rbuf, sizeof(rbuf), FAB_ACCESS_LOCAL, &rmr) == 0, "reg recv buffer");
		if (fab_attr(ep)->caps & FAB_CAP_IMM_CONSUMES_RECV)
			CHECK(fab_post_recv(ep, rbuf, sizeof(rbuf), rmr.desc, rbuf) == 0, "post_recv");
		key[0] = mr.remote_base;
		key[1] = mr.rkey;
		xfer(sock, key, sizeof(key), 1);
		CHECK(wait_one(ep, &c) == 1 && c.status == 0 && c.op == FAB_OP_REMOTE_WRITE && c.has_imm &&
			      c.imm == 0x6a7ad,
		      "the gradient's write-with-imm (op %d status %d imm 0x%x)", c.op, c.status, c.imm);
		CHECK(gpu_memcpy_dtoh(back, d, GRAD_BYTES) == 0, "cuMemcpyDtoH");
		fill(host, GRAD_BYTES, 7);
		CHECK(memcmp(back, host, GRAD_BYTES) == 0, "the gradient in device memory differs");
		printf("%u gradient bytes landed in GPU %d memory and match\n", GRAD_BYTES, dev);
		xfer(sock, &status, sizeof(status), 1); /* done: the writer may close */
		fab_mr_dereg(ep, &rmr);
	} else {
		fill(host, GRAD_BYTES, 7);
		CHECK(gpu_memcpy_htod(d, host, GRAD_BYTES) == 0, "cuMemcpyHtoD");
		xfer(sock, key, sizeof(key), 0);
		CHECK(fab_write(ep, 1, d, GRAD_BYTES, mr.desc, key[0], key[1], 1, 0x6a7ad, host) == 0,
		      "fab_write from device memory");
		CHECK(wait_one(ep, &c) == 1 && c.status == 0 && c.op == FAB_OP_WRITE, "write completion: %s",
		      c.errmsg);
		xfer(sock, &status, sizeof(status), 0);
	}
	fab_mr_dereg(ep, &mr);
	fab_close(ep);
	gpu_mem_free(d);
	free(host);
	free(back);
	return 0;
}

static int sc_stage(int rank, int sock)
{
	uint8_t *want = malloc(GRAD_BYTES), *got = malloc(GRAD_BYTES);
	struct gpu_stage *s;
	int dev = device_of(rank), rc;
	unsigned long polls = 0;
	void *d;

	CHECK(want && got, "malloc");
	fill(want, GRAD_BYTES, 3);
	CHECK(gpu_mem_alloc(dev, GRAD_BYTES, &d) == 0, "cuMemAlloc");
	CHECK(gpu_memcpy_htod(d, want, GRAD_BYTES) == 0, "cuMemcpyHtoD");
	CHECK(gpu_stage_create(dev, GRAD_BYTES, &s) == 0, "gpu_stage_create");
	CHECK(gpu_stage_to_host(s, d, GRAD_BYTES + 1) == RDAG_EINVAL, "oversized staging refused");
	CHECK(gpu_stage_to_host(s, d, GRAD_BYTES) == 0, "to host");
	CHECK(gpu_stage_to_host(s, d, GRAD_BYTES) == RDAG_EBUSY, "one copy in flight");
	while ((rc = gpu_stage_test(s)) == RDAG_EAGAIN)
		polls++;
	CHECK(rc == 0, "staging copy to host");
	CHECK(memcmp(gpu_stage_host(s), want, GRAD_BYTES) == 0, "staged bytes differ");
	memset(gpu_stage_host(s), 0x5a, GRAD_BYTES);
	CHECK(gpu_stage_to_device(s, d, GRAD_BYTES) == 0, "to device");
	while ((rc = gpu_stage_test(s)) == RDAG_EAGAIN)
		polls++;
	CHECK(rc == 0, "staging copy to device");
	CHECK(gpu_memcpy_dtoh(got, d, GRAD_BYTES) == 0, "cuMemcpyDtoH");
	memset(want, 0x5a, GRAD_BYTES);
	CHECK(memcmp(got, want, GRAD_BYTES) == 0, "bytes staged back differ");
	printf("staged %u bytes both ways through pinned memory (%lu polls)\n", GRAD_BYTES, polls);
	gpu_stage_destroy(s);
	gpu_mem_free(d);
	free(want);
	free(got);
	return 0;
}

static int sc_nccl(int rank, int sock)
{
	uint8_t id[GPU_NCCL_ID_BYTES];
	uint8_t *host = malloc(GRAD_BYTES), *back = malloc(GRAD_BYTES);
	struct gpu_nccl_comm *c;
	struct gpu_nccl_req *req;
	struct gpu_nccl_buf bufs[2];
	int dev = device_of(rank), rc, v = 0;
	unsigned long polls = 0, joins = 0;
	void *d[2];

	CHECK(host && back, "malloc");
	rc = gpu_nccl_load(&v);
	if (rc) {
		printf("skipped: %s\n", rdag_last_error());
		return SKIP;
	}
	if (rank == 0) {
		CHECK(gpu_nccl_id_create(id, sizeof(id)) == 0, "ncclGetUniqueId");
		xfer(sock, id, sizeof(id), 1);
	} else {
		xfer(sock, id, sizeof(id), 0);
	}
	CHECK(gpu_nccl_comm_open(id, sizeof(id), rank, dev, 30000, &c) == 0, "communicator");
	/* A non-blocking join ends on its own once both called (no deadline here but the test's). */
	while ((rc = gpu_nccl_comm_ready(c)) == RDAG_EAGAIN)
		joins++;
	CHECK(rc == 0, "joining: %s", rdag_last_error());
	for (int i = 0; i < 2; i++) {
		CHECK(gpu_mem_alloc(dev, GRAD_BYTES, &d[i]) == 0, "cuMemAlloc");
		if (rank == 0) {
			fill(host, GRAD_BYTES, 11u + (uint32_t)i);
			CHECK(gpu_memcpy_htod(d[i], host, GRAD_BYTES) == 0, "cuMemcpyHtoD");
		} else {
			CHECK(gpu_memset(d[i], 0, GRAD_BYTES) == 0, "cuMemsetD8");
		}
		bufs[i] = (struct gpu_nccl_buf){.dptr = d[i], .len = GRAD_BYTES - (size_t)i * 4096,
						.recv = rank == 1};
	}
	CHECK(gpu_nccl_post(c, bufs, 2, &req) == 0, "grouped send/recv");
	while ((rc = gpu_nccl_test(req)) == RDAG_EAGAIN)
		polls++;
	CHECK(rc == 0, "NCCL request");
	gpu_nccl_req_free(req);
	if (rank == 1) {
		for (int i = 0; i < 2; i++) {
			CHECK(gpu_memcpy_dtoh(back, d[i], GRAD_BYTES) == 0, "cuMemcpyDtoH");
			fill(host, GRAD_BYTES, 11u + (uint32_t)i);
			memset(host + bufs[i].len, 0, GRAD_BYTES - bufs[i].len);
			CHECK(memcmp(back, host, GRAD_BYTES) == 0, "buffer %d differs", i);
		}
		printf("NCCL %d: 2 buffers received on GPU %d, bytes match (%lu join polls, %lu polls)\n",
		       v, dev, joins, polls);
	}
	for (int i = 0; i < 2; i++)
		gpu_mem_free(d[i]);
	gpu_nccl_comm_close(c);
	free(host);
	free(back);
	return 0;
}

static const struct {
	const char *name;
	int procs;
	int (*fn)(int rank, int sock);
} scenarios[] = {
	{"reg", 1, sc_reg},
	{"land", 2, sc_land},
	{"stage", 1, sc_stage},
	{"nccl", 2, sc_nccl},
};

int main(int argc, char **argv)
{
	int opt, sv[2] = {-1, -1}, idx = -1, ret = 0, rc;
	pid_t pids[2];

	setvbuf(stdout, NULL, _IOLBF, 0);
	fab_opts_from_env(&opts_);
	while ((opt = getopt(argc, argv, "p:f:")) != -1) {
		switch (opt) {
		case 'p':
			opts_.provider = "ofi";
			opts_.ofi_provider = strcmp(optarg, "tcp_rxm") == 0 ? "tcp;ofi_rxm" : optarg;
			break;
		case 'f': opts_.provider = optarg; break;
		default: goto usage;
		}
	}
	for (size_t i = 0; optind < argc && i < sizeof(scenarios) / sizeof(scenarios[0]); i++) {
		if (strcmp(argv[optind], scenarios[i].name) == 0)
			idx = (int)i;
	}
	if (idx < 0)
		goto usage;
	rc = gpu_init();
	if (rc) {
		printf("skipped: no usable GPU here: %s: %s\n", rdag_strerror(rc), rdag_last_error());
		return SKIP;
	}
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) {
		perror("socketpair");
		return 1;
	}
	fflush(NULL);
	for (int r = 0; r < scenarios[idx].procs; r++) {
		pids[r] = fork();
		if (pids[r] < 0) {
			perror("fork");
			return 1;
		}
		if (pids[r] == 0) {
			rank_ = r;
			close(sv[1 - r]); /* the peer's death is then EOF on ours */
			alarm(TIMEOUT_S); /* a hang ends the worker (and fails the test) */
			exit(scenarios[idx].fn(r, sv[r]));
		}
	}
	close(sv[0]);
	close(sv[1]);
	for (int r = 0; r < scenarios[idx].procs; r++) {
		int st = 0;

		waitpid(pids[r], &st, 0);
		if (!WIFEXITED(st)) {
			fprintf(stderr, "rank %d died (signal %d)\n", r, WIFSIGNALED(st) ? WTERMSIG(st) : 0);
			ret = 1;
		} else if (WEXITSTATUS(st) == SKIP && ret == 0) {
			ret = SKIP;
		} else if (WEXITSTATUS(st) != 0 && WEXITSTATUS(st) != SKIP) {
			ret = 1;
		}
	}
	if (ret == 0)
		printf("%s passed\n", scenarios[idx].name);
	return ret;
usage:
	fprintf(stderr, "usage: gpu_mp_test [-p ofi-provider|tcp_rxm] [-f ofi|verbs] reg|land|stage|nccl\n");
	return 2;
}
