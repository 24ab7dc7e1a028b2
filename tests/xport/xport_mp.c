/* Multi-process transport tests: forks N workers that meet through the bootstrap on 127.0.0.1 and run one scenario. */
#include <errno.h>
#include <getopt.h>
#include <glob.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fabric/fabric.h"
#include "util/err.h"
#include "xport_mp.h"

/*
 * Usage: xport_mp [-n workers] [-t seconds] [-p provider] [-c count] scenario
 *
 * The parent binds the bootstrap's rendezvous socket to a free port on 127.0.0.1 and forks the
 * workers; rank 0 serves the rendezvous on that socket. Each worker opens the fabric endpoint
 * (provider from -p, else RDAG_FABRIC / RDAG_OFI_PROVIDER as the environment says, so the same
 * program runs on verbs in the VM), opens the xport and runs the scenario. Exit: 0 all passed,
 * 77 the fabric is not available here, 1 a failure (a check, a crash, the watchdog).
 */

#define SKIP 77

uint64_t mp_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void mp_fail(struct mp_worker *w, const char *file, int line, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "rank %d: %s:%d: ", w->rank, file, line);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	w->fail = 1;
}

int mp_late(struct mp_worker *w)
{
	if (mp_now_ns() < w->deadline_ns)
		return 0;
	if (!w->fail)
		mp_fail(w, __FILE__, __LINE__, "scenario deadline passed (sent %llu, done %llu ok + "
			"%llu failed)", (unsigned long long)w->sends, (unsigned long long)w->done_ok,
			(unsigned long long)w->done_err);
	return 1;
}

static inline uint64_t pat(uint64_t seed, uint64_t i)
{
	uint64_t z = seed + i * 0x9E3779B97F4A7C15ull;

	z ^= z >> 31;
	z *= 0xBF58476D1CE4E5B9ull;
	return z ^ (z >> 29);
}

void mp_fill(void *p, size_t n, uint64_t seed)
{
	uint8_t *q = p;
	size_t i, words = n / 8;

	for (i = 0; i < words; i++) {
		uint64_t v = pat(seed, i);

		memcpy(q + 8 * i, &v, 8);
	}
	if (n % 8) {
		uint64_t v = pat(seed, words);

		memcpy(q + 8 * words, &v, n % 8);
	}
}

size_t mp_check(const void *p, size_t n, uint64_t seed)
{
	const uint8_t *q = p;
	size_t i, words = n / 8;

	for (i = 0; i < words; i++) {
		uint64_t v = pat(seed, i), got;

		memcpy(&got, q + 8 * i, 8);
		if (got != v) {
			for (size_t k = 0; k < 8; k++)
				if (q[8 * i + k] != ((uint8_t *)&v)[k])
					return 1 + 8 * i + k;
		}
	}
	if (n % 8) {
		uint64_t v = pat(seed, words);

		for (size_t k = 0; k < n % 8; k++)
			if (q[8 * words + k] != ((uint8_t *)&v)[k])
				return 1 + 8 * words + k;
	}
	return 0;
}

void mp_desc_u8(struct wire_tensor *d, uint64_t n)
{
	memset(d, 0, sizeof(*d));
	d->dtype = WIRE_DT_U8;
	d->rank = 1;
	d->dev_type = WIRE_DEV_CPU;
	d->nbytes = n;
	d->shape[0] = (int64_t)n;
}

int mp_enc_rpc(void *arg, void *buf, size_t cap, const struct wire_env *env,
	       const struct wire_tensor *t, uint32_t n, size_t *len)
{
	const struct mp_rpc *r = arg;
	struct wire_call c;

	memset(&c, 0, sizeof(c));
	c.name.ptr = r->name;
	c.name.len = (uint32_t)strlen(r->name);
	c.payload.ptr = r->payload;
	c.payload.len = r->plen;
	return wire_encode_rpc_call(buf, cap, env, &c, t, n, len);
}

int mp_enc_grad(void *arg, void *buf, size_t cap, const struct wire_env *env,
		const struct wire_tensor *t, uint32_t n, size_t *len)
{
	struct wire_grad_req g = {.ctx_id = 0x1234, .msg_id = env->req_id, .retain_graph = false};

	(void)arg;
	return wire_encode_grad_req(buf, cap, env, &g, t, n, len);
}

int mp_enc_fwd(void *arg, void *buf, size_t cap, const struct wire_env *env,
	       const struct wire_tensor *t, uint32_t n, size_t *len)
{
	struct wire_fwd f = {.ctx_id = 77, .msg_id = env->req_id, .from_worker = env->src};
	size_t prefix = wire_fwd_prefix(&f), inner_len = 0;
	int rc;

	if (cap < prefix)
		return RDAG_ENOSPC;
	/* The inner RPC_CALL is encoded in place behind the wrapper's fields: no copy. */
	rc = mp_enc_rpc(arg, (uint8_t *)buf + prefix, cap - prefix, NULL, t, n, &inner_len);
	if (rc)
		return rc;
	return wire_encode_fwd_req(buf, cap, env, &f, NULL, inner_len, len);
}

static void on_done(void *arg, int status)
{
	struct mp_worker *w = arg;

	if (status == 0) {
		w->done_ok++;
	} else {
		w->done_err++;
		w->last_status = status;
		snprintf(w->last_err, sizeof(w->last_err), "%s", rdag_last_error());
	}
}

int mp_step(struct mp_worker *w)
{
	int rc = xport_progress(w->x, 5);

	if (rc < 0) {
		mp_fail(w, __FILE__, __LINE__, "xport_progress: %s: %s", rdag_strerror(rc),
			rdag_last_error());
		return -1;
	}
	return mp_late(w) ? -1 : 0;
}

int mp_send(struct mp_worker *w, uint32_t peer, uint64_t req, xport_encode_fn enc, void *arg,
	    const struct xport_tensor *t, uint32_t n)
{
	for (;;) {
		int rc = xport_send(w->x, peer, req, enc, arg, t, n, on_done, w);

		if (rc == 0) {
			w->sends++;
			return 0;
		}
		if (rc != RDAG_EAGAIN)
			return rc;
		if (mp_step(w))
			return RDAG_ETIMEDOUT;
	}
}

int mp_send_bytes(struct mp_worker *w, uint32_t peer, const void *msg, size_t len)
{
	for (;;) {
		int rc = xport_send_bytes(w->x, peer, msg, len, on_done, w);

		if (rc == 0) {
			w->sends++;
			return 0;
		}
		if (rc != RDAG_EAGAIN)
			return rc;
		if (mp_step(w))
			return RDAG_ETIMEDOUT;
	}
}

int mp_drain(struct mp_worker *w)
{
	while (w->done_ok + w->done_err < w->sends)
		if (mp_step(w))
			return -1;
	return 0;
}

static void on_recv(void *arg, struct xport_rx *rx)
{
	struct mp_worker *w = arg;

	if (w->on_rx) {
		w->on_rx(w, rx);
	} else if (w->nstash < (int)(sizeof(w->stash) / sizeof(w->stash[0]))) {
		/* A peer already in the next phase: kept for that phase's handler. */
		w->stash[w->nstash++] = rx;
	} else {
		mp_fail(w, __FILE__, __LINE__, "unexpected %s from %u", wire_kind_name(rx->msg.kind),
			rx->peer);
		xport_release(w->x, rx);
	}
}

static void on_dead(void *arg, uint32_t peer, int code, const char *why)
{
	struct mp_worker *w = arg;

	if (peer < MP_MAXW) {
		w->dead[peer] = 1;
		w->dead_ns[peer] = mp_now_ns();
		snprintf(w->dead_why[peer], sizeof(w->dead_why[peer]), "%s", why);
	}
	(void)code;
}

static const struct {
	const char *name;
	void (*fn)(struct mp_worker *w);
	int min_n;
} scenarios[] = {
	{"pingpong", sc_pingpong, 2}, {"burst", sc_burst, 2}, {"tensors", sc_tensors, 2},
	{"refuse", sc_refuse, 2},     {"kill", sc_kill, 2},   {"rcache", sc_rcache, 2},
	{"threads", sc_threads, 2},   {"hold", sc_hold, 2},
};

static int worker(const struct mp_cfg *cfg, int rank, int lfd, int port, int ready_fd,
		  struct mp_shared *sh, void (*fn)(struct mp_worker *w))
{
	struct mp_worker w;
	struct boot_opts bo;
	struct fab_open_opts fo;
	struct fab_ep *ep = NULL;
	int rc;

	memset(&w, 0, sizeof(w));
	w.rank = rank;
	w.world = cfg->n;
	w.cfg = cfg;
	w.sh = sh;
	w.ready_fd = ready_fd;
	w.deadline_ns = mp_now_ns() + (uint64_t)(cfg->timeout_s > 10 ? cfg->timeout_s - 5 : cfg->timeout_s) *
					    1000000000u;
	if (cfg->prov) {
		setenv("RDAG_FABRIC", "ofi", 1);
		setenv("RDAG_OFI_PROVIDER", cfg->prov, 1);
	}
	if (strcmp(cfg->scenario, "kill") == 0)
		setenv("RDAG_PEER_TIMEOUT_MS", "2000", 0);
	if (strcmp(cfg->scenario, "rcache") == 0)
		setenv("RDAG_RCACHE_MAX_ENTRIES", "4", 0);

	boot_opts_init(&bo);
	bo.rank = rank;
	bo.world_size = cfg->n;
	snprintf(bo.master_addr, sizeof(bo.master_addr), "127.0.0.1");
	bo.master_port = port;
	snprintf(bo.job_token, sizeof(bo.job_token), "xport-test-%d", (int)getppid());
	bo.job_token_set = 1;
	snprintf(bo.name, sizeof(bo.name), "worker%d", rank);
	bo.timeout_ms = 60000;
	if (rank == 0)
		bo.listen_fd = lfd;
	else if (lfd >= 0)
		close(lfd);
	rc = boot_open(&bo, &w.b);
	if (rc) {
		fprintf(stderr, "rank %d: boot_open: %s\n", rank, rdag_last_error());
		return 1;
	}
	fab_opts_from_env(&fo);
	xport_opts_init(&w.xo);
	w.xo.on_recv = on_recv;
	w.xo.recv_arg = &w;
	w.xo.on_peer_dead = on_dead;
	w.xo.peer_arg = &w;
	xport_fab_opts(&w.xo, (uint32_t)cfg->n, (uint32_t)rank, &fo);
	fo.local_only = 1;
	rc = fab_open(&fo, &ep);
	if (rc) {
		fprintf(stderr, "rank %d: fab_open: %s: %s\n", rank, rdag_strerror(rc), rdag_last_error());
		boot_close(w.b);
		return rc == RDAG_ENODEV || rc == RDAG_ENOSYS ? SKIP : 1;
	}
	rc = xport_open(&w.xo, w.b, ep, &w.x);
	if (rc) {
		fprintf(stderr, "rank %d: xport_open: %s: %s\n", rank, rdag_strerror(rc), rdag_last_error());
		boot_close(w.b);
		return 1;
	}
	fn(&w);
	MP_CHECK(&w, w.nstash == 0, "%d messages never handled", w.nstash);
	while (w.nstash)
		xport_release(w.x, w.stash[--w.nstash]);
	xport_close(w.x);
	boot_close(w.b);
	if (!w.fail && rank == 0)
		printf("%s: %d workers on %s: passed\n", cfg->scenario, cfg->n,
		       cfg->prov ? cfg->prov : "the environment's fabric");
	return w.fail ? 1 : 0;
}

/*
 * libfabric's shm provider names a process's shared-memory region after its pid
 * (/dev/shm/<pid>:<n>:<n>) and removes it when the endpoint closes. A process killed with
 * SIGKILL leaves it behind, and a later process that gets the same pid then fails in fi_enable
 * (EBUSY). So the regions of the processes this test kills go with them.
 */
static void forget_shm(pid_t pid)
{
	char pat[64];
	glob_t g;

	snprintf(pat, sizeof(pat), "/dev/shm/%d:*", (int)pid);
	if (glob(pat, 0, NULL, &g) == 0) {
		for (size_t i = 0; i < g.gl_pathc; i++)
			unlink(g.gl_pathv[i]);
		globfree(&g);
	}
}

static int listen_any(int *port)
{
	struct sockaddr_in sa;
	socklen_t sl = sizeof(sa);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -1;
	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) || listen(fd, 64) ||
	    getsockname(fd, (struct sockaddr *)&sa, &sl)) {
		close(fd);
		return -1;
	}
	*port = ntohs(sa.sin_port);
	return fd;
}

int main(int argc, char **argv)
{
	struct mp_cfg cfg = {.n = 2, .timeout_s = 120};
	void (*fn)(struct mp_worker *w) = NULL;
	pid_t pids[MP_MAXW];
	int status[MP_MAXW], done[MP_MAXW];
	int lfd, port, c, ready[2] = {-1, -1}, nleft, ret = 0, skipped = 0;
	struct mp_shared *sh;
	uint64_t deadline;
	size_t i;

	while ((c = getopt(argc, argv, "n:t:p:c:")) != -1) {
		switch (c) {
		case 'n': cfg.n = atoi(optarg); break;
		case 't': cfg.timeout_s = atoi(optarg); break;
		case 'p':
			/* "tcp_rxm" spells "tcp;ofi_rxm" without a ';' for CMake and shells. */
			cfg.prov = strcmp(optarg, "tcp_rxm") == 0 ? "tcp;ofi_rxm" : optarg;
			break;
		case 'c': cfg.count = atol(optarg); break;
		default:
			fprintf(stderr, "usage: %s [-n N] [-t s] [-p provider|tcp_rxm] [-c count] scenario\n", argv[0]);
			return 2;
		}
	}
	if (optind >= argc || cfg.n < 2 || cfg.n > MP_MAXW) {
		fprintf(stderr, "usage: %s [-n 2..%d] [-t s] [-p provider] [-c count] scenario\n", argv[0],
			MP_MAXW);
		return 2;
	}
	cfg.scenario = argv[optind];
	for (i = 0; i < sizeof(scenarios) / sizeof(scenarios[0]); i++)
		if (strcmp(scenarios[i].name, cfg.scenario) == 0)
			fn = scenarios[i].fn;
	if (!fn) {
		fprintf(stderr, "%s: unknown scenario '%s'\n", argv[0], cfg.scenario);
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED || pipe(ready)) {
		perror("xport_mp: set-up");
		return 1;
	}
	memset(sh, 0, sizeof(*sh));
	lfd = listen_any(&port);
	if (lfd < 0) {
		perror("xport_mp: listen");
		return 1;
	}
	for (int r = 0; r < cfg.n; r++) {
		pids[r] = fork();
		if (pids[r] < 0) {
			perror("fork");
			return 1;
		}
		if (pids[r] == 0) {
			close(ready[0]);
			exit(worker(&cfg, r, lfd, port, ready[1], sh, fn)); /* exit: LeakSanitizer runs */
		}
		done[r] = 0;
	}
	close(lfd);
	close(ready[1]);
	deadline = mp_now_ns() + (uint64_t)cfg.timeout_s * 1000000000u;
	nleft = cfg.n;
	while (nleft) {
		struct pollfd pfd = {.fd = ready[0], .events = POLLIN};
		char b;

		/* Kill scenario: the victim (the last rank) says when to kill it. */
		if (ready[0] >= 0 && poll(&pfd, 1, 10) > 0) {
			if (read(ready[0], &b, 1) == 1) {
				sh->kill_ns = mp_now_ns();
				kill(pids[cfg.n - 1], SIGKILL);
				sh->victim_pid = pids[cfg.n - 1];
			} else {
				close(ready[0]);
				ready[0] = -1;
			}
		} else if (ready[0] < 0) {
			usleep(10000);
		}
		for (int r = 0; r < cfg.n; r++) {
			if (done[r] || waitpid(pids[r], &status[r], WNOHANG) != pids[r])
				continue;
			done[r] = 1;
			nleft--;
		}
		if (nleft && mp_now_ns() > deadline) {
			fprintf(stderr, "xport_mp: watchdog: %s still running after %d s; killing",
				cfg.scenario, cfg.timeout_s);
			for (int r = 0; r < cfg.n; r++) {
				if (!done[r]) {
					fprintf(stderr, " rank %d", r);
					kill(pids[r], SIGKILL);
					waitpid(pids[r], &status[r], 0);
					forget_shm(pids[r]);
					done[r] = 1;
				}
			}
			fprintf(stderr, "\n");
			return 1;
		}
	}
	for (int r = 0; r < cfg.n; r++) {
		int st = status[r];

		if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
			continue;
		if (WIFEXITED(st) && WEXITSTATUS(st) == SKIP) {
			skipped++;
			continue;
		}
		if (WIFSIGNALED(st))
			forget_shm(pids[r]);
		if (WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL && strcmp(cfg.scenario, "kill") == 0 &&
		    r == cfg.n - 1 && sh->kill_ns)
			continue;
		fprintf(stderr, "xport_mp: rank %d %s %d\n", r, WIFEXITED(st) ? "exited with" : "killed by signal",
			WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
		ret = 1;
	}
	if (!ret && skipped) {
		printf("%s: skipped: the fabric is not available here\n", cfg.scenario);
		return SKIP;
	}
	return ret;
}
