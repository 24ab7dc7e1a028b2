/* What the multi-process tests share: time, patterns, checks, agent start, command line, parent. */
#include <errno.h>
#include <getopt.h>
#include <glob.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mp_common.h"

#define MAX_WORKERS 64 /* mp_run's bound; the programs allow fewer */

/* ---- time ------------------------------------------------------------------------------------ */

uint64_t mp_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t mp_worker_deadline(int timeout_s, int margin_s)
{
	int s = timeout_s > 2 * margin_s ? timeout_s - margin_s : timeout_s;

	return mp_now_ns() + (uint64_t)s * 1000000000u;
}

uint64_t mp_deadline(uint64_t limit_ns, unsigned s)
{
	uint64_t dl = mp_now_ns() + (uint64_t)s * 1000000000u;

	return dl < limit_ns ? dl : limit_ns;
}

int mp_wait_until(uint64_t dl)
{
	struct timespec ts = {0, 500000};

	if (mp_now_ns() >= dl)
		return 0;
	nanosleep(&ts, NULL);
	return 1;
}

/* ---- byte patterns --------------------------------------------------------------------------- */

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
	size_t i;

	if (n && !p)
		return 1;
	for (i = 0; i < n; i += 8) {
		uint64_t v = pat(seed, i / 8);
		size_t k, len = n - i < 8 ? n - i : 8;

		if (memcmp(q + i, &v, len) == 0)
			continue;
		for (k = 0; k < len; k++)
			if (q[i + k] != ((const uint8_t *)&v)[k])
				return 1 + i + k;
	}
	return 0;
}

/* ---- failed checks --------------------------------------------------------------------------- */

void mp_vreport(int rank, const char *phase, const char *file, int line, const char *fmt,
		va_list ap)
{
	char msg[2048];

	vsnprintf(msg, sizeof(msg), fmt, ap);
	fprintf(stderr, "rank %d: %s:%d: %s [phase: %s]\n", rank, file, line, msg, phase);
}

static void report(int rank, const char *phase, const char *file, int line, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));

static void report(int rank, const char *phase, const char *file, int line, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	mp_vreport(rank, phase, file, line, fmt, ap);
	va_end(ap);
}

void mp_vreport_rc(int rank, const char *phase, const char *file, int line, int got, int want,
		   const char *fmt, va_list ap)
{
	char what[1024], last[1024];

	snprintf(last, sizeof(last), "%s", rdag_last_error());
	vsnprintf(what, sizeof(what), fmt, ap);
	report(rank, phase, file, line, "%s: returned %d (%s), expected %d (%s); last error: \"%s\"",
	       what, got, rdag_strerror(got), want, rdag_strerror(want), last);
}

/* ---- a worker's start and end ---------------------------------------------------------------- */

void mp_use_provider(const char *prov)
{
	if (prov) {
		setenv("RDAG_FABRIC", "ofi", 1);
		setenv("RDAG_OFI_PROVIDER", prov, 1);
	}
}

int mp_open_failed(int rc)
{
	return rc == RDAG_ENODEV || rc == RDAG_ENOSYS ? MP_SKIP : 1;
}

int mp_agent_open(rdag_agent_t **a, const char *job, int rank, int world, int lfd, int port,
		  int progress)
{
	struct rdag_agent_opts o;
	char token[64];
	int rc;

	unsetenv("RDAG_WORKER_NAME"); /* scenarios check the default names "worker<k>" */
	rdag_agent_opts_init(&o);
	o.rank = rank;
	o.world_size = world;
	o.name = NULL;
	o.master_addr = "127.0.0.1";
	o.master_port = port;
	snprintf(token, sizeof(token), "%s-%d", job, (int)getppid());
	o.job_token = token;
	o.listen_fd = rank == 0 ? lfd : -1;
	if (rank != 0)
		close(lfd);
	o.progress = progress;
	o.threads = 4;
	o.local_only = 1;
	rc = rdag_agent_open(&o, a);
	if (rc) {
		fprintf(stderr, "rank %d: rdag_agent_open: %s: %s\n", rank, rdag_strerror(rc),
			rdag_last_error());
		return mp_open_failed(rc);
	}
	return 0;
}

int mp_register(rdag_agent_t *a, const struct mp_fn *fns, size_t n, void *arg, const char **name)
{
	for (size_t i = 0; i < n; i++) {
		int rc = rdag_register(a, fns[i].name, fns[i].fn, arg);

		if (rc) {
			*name = fns[i].name;
			return rc;
		}
	}
	return 0;
}

void mp_passed(const struct mp_cfg *cfg)
{
	printf("%s: %d workers on %s: passed\n", cfg->scenario, cfg->n,
	       cfg->prov ? cfg->prov : "the environment's fabric");
}

/* ---- the command line ------------------------------------------------------------------------ */

int mp_parse(int argc, char **argv, const char *optstring, struct mp_cfg *cfg)
{
	int c;

	memset(cfg, 0, sizeof(*cfg));
	cfg->n = 2;
	cfg->timeout_s = 120;
	cfg->victim = -1;
	while ((c = getopt(argc, argv, optstring)) != -1) {
		switch (c) {
		case 'n': cfg->n = atoi(optarg); break;
		case 't': cfg->timeout_s = atoi(optarg); break;
		case 'p': cfg->prov = strcmp(optarg, "tcp_rxm") == 0 ? "tcp;ofi_rxm" : optarg; break;
		case 'c': cfg->count = atol(optarg); break;
		default: return -1;
		}
	}
	cfg->scenario = optind < argc ? argv[optind] : NULL;
	return 0;
}

static const char *name_at(struct mp_table t, size_t i)
{
	return *(const char *const *)((const char *)t.name + i * t.stride);
}

static int min_n_at(struct mp_table t, size_t i)
{
	return *(const int *)((const char *)t.min_n + i * t.stride);
}

int mp_find(struct mp_table t, const char *name)
{
	for (size_t i = 0; i < t.count; i++)
		if (strcmp(name_at(t, i), name) == 0)
			return (int)i;
	return -1;
}

static void usage(const char *argv0, int maxw, struct mp_table t)
{
	fprintf(stderr, "usage: %s [-n 1..%d] [-t seconds] [-p shm|tcp_rxm|provider] scenario\nscenarios:",
		argv0, maxw);
	for (size_t i = 0; i < t.count; i++)
		fprintf(stderr, " %s", name_at(t, i));
	fprintf(stderr, "\n");
}

int mp_select(int argc, char **argv, int maxw, struct mp_table t, struct mp_cfg *cfg)
{
	int i;

	if (mp_parse(argc, argv, "n:t:p:", cfg) || !cfg->scenario || cfg->n < 1 || cfg->n > maxw ||
	    cfg->timeout_s < 1) {
		usage(argv[0], maxw, t);
		return -1;
	}
	i = mp_find(t, cfg->scenario);
	if (i < 0) {
		fprintf(stderr, "%s: unknown scenario '%s'\n", argv[0], cfg->scenario);
		usage(argv[0], maxw, t);
		return -1;
	}
	if (cfg->n < min_n_at(t, (size_t)i)) {
		fprintf(stderr, "%s: scenario %s needs at least %d workers\n", argv[0], cfg->scenario,
			min_n_at(t, (size_t)i));
		return -1;
	}
	cfg->index = i;
	return 0;
}

/* ---- the parent ------------------------------------------------------------------------------ */

void *mp_shared_map(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		return NULL;
	memset(p, 0, len);
	return p;
}

void mp_forget_shm(pid_t pid)
{
	char pattern[64];
	glob_t g;

	snprintf(pattern, sizeof(pattern), "/dev/shm/%d:*", (int)pid);
	if (glob(pattern, 0, NULL, &g) == 0) {
		for (size_t i = 0; i < g.gl_pathc; i++)
			unlink(g.gl_pathv[i]);
		globfree(&g);
	}
}

int mp_listen_any(int *port)
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

/* perror("<prog>: <what>") */
static void say_errno(const char *prog, const char *what)
{
	fprintf(stderr, "%s: %s: %s\n", prog, what, strerror(errno));
}

/* The watchdog: kills the workers still running, naming each (with its phase, if any). */
static void kill_all(const struct mp_run *r, const pid_t *pids, int *status, int *done)
{
	const struct mp_cfg *cfg = r->cfg;

	fprintf(stderr, "%s: watchdog: %s still running after %d s; killing%s", r->prog, cfg->scenario,
		cfg->timeout_s, r->phase ? "\n" : "");
	for (int k = 0; k < cfg->n; k++) {
		if (done[k])
			continue;
		if (r->phase)
			fprintf(stderr, "%s:   rank %d, in phase '%.127s'\n", r->prog, k, r->phase[k]);
		else
			fprintf(stderr, " rank %d", k);
		kill(pids[k], SIGKILL);
		waitpid(pids[k], &status[k], 0);
		mp_forget_shm(pids[k]);
		done[k] = 1;
	}
	if (!r->phase)
		fprintf(stderr, "\n");
}

/* The program's exit status from the workers' (all of them have ended). */
static int verdict(const struct mp_run *r, const pid_t *pids, const int *status)
{
	const struct mp_cfg *cfg = r->cfg;
	int ret = 0, skipped = 0;

	for (int k = 0; k < cfg->n; k++) {
		int st = status[k];

		if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
			continue;
		if (WIFEXITED(st) && WEXITSTATUS(st) == MP_SKIP) {
			skipped++;
			continue;
		}
		if (WIFSIGNALED(st))
			mp_forget_shm(pids[k]);
		if (WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL && k == cfg->victim && r->kill_ns &&
		    *r->kill_ns)
			continue;
		if (r->phase)
			fprintf(stderr, "%s: rank %d %s %d (phase '%.127s')\n", r->prog, k,
				WIFEXITED(st) ? "exited with" : "killed by signal",
				WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st), r->phase[k]);
		else
			fprintf(stderr, "%s: rank %d %s %d\n", r->prog, k,
				WIFEXITED(st) ? "exited with" : "killed by signal",
				WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
		ret = 1;
	}
	if (r->victim_must_ask && cfg->victim >= 0 && r->kill_ns && !*r->kill_ns && !skipped) {
		fprintf(stderr, "%s: the victim (rank %d) never asked to be killed\n", r->prog,
			cfg->victim);
		ret = 1;
	}
	if (!ret && skipped) {
		printf("%s: skipped: the fabric is not available here\n", cfg->scenario);
		return MP_SKIP;
	}
	return ret;
}

int mp_run(const struct mp_run *r)
{
	const struct mp_cfg *cfg = r->cfg;
	pid_t pids[MAX_WORKERS];
	int status[MAX_WORKERS], done[MAX_WORKERS];
	int ready[2] = {-1, -1}, lfd, port, nleft;
	uint64_t deadline;

	if (cfg->n < 1 || cfg->n > MAX_WORKERS) {
		fprintf(stderr, "%s: %d workers: at most %d\n", r->prog, cfg->n, MAX_WORKERS);
		return 1;
	}
	if (r->ready_pipe && pipe(ready)) {
		say_errno(r->prog, "set-up");
		return 1;
	}
	lfd = mp_listen_any(&port);
	if (lfd < 0) {
		say_errno(r->prog, "listen");
		return 1;
	}
	for (int k = 0; k < cfg->n; k++) {
		pids[k] = fork();
		if (pids[k] < 0) {
			perror("fork");
			for (int j = 0; j < k; j++)
				kill(pids[j], SIGKILL);
			return 1;
		}
		if (pids[k] == 0) {
			if (ready[0] >= 0)
				close(ready[0]);
			exit(r->worker(cfg, r->arg, k, lfd, port, ready[1])); /* exit: LeakSanitizer runs */
		}
		done[k] = 0;
	}
	close(lfd);
	if (ready[1] >= 0)
		close(ready[1]);
	deadline = mp_now_ns() + (uint64_t)cfg->timeout_s * 1000000000u;
	nleft = cfg->n;
	while (nleft) {
		struct pollfd pfd = {.fd = ready[0], .events = POLLIN};
		char b;

		/* Kill scenarios: the victim says when it is ready to die. */
		if (ready[0] >= 0 && poll(&pfd, 1, 10) > 0) {
			if (read(ready[0], &b, 1) == 1 && cfg->victim >= 0 && r->kill_ns &&
			    !done[cfg->victim]) {
				*r->kill_ns = mp_now_ns();
				kill(pids[cfg->victim], SIGKILL);
			} else {
				close(ready[0]);
				ready[0] = -1;
			}
		} else if (ready[0] < 0) {
			struct timespec ts = {0, 10000000};

			nanosleep(&ts, NULL);
		}
		for (int k = 0; k < cfg->n; k++) {
			if (done[k] || waitpid(pids[k], &status[k], WNOHANG) != pids[k])
				continue;
			done[k] = 1;
			nleft--;
		}
		if (nleft && mp_now_ns() > deadline) {
			kill_all(r, pids, status, done);
			return 1;
		}
	}
	return verdict(r, pids, status);
}
