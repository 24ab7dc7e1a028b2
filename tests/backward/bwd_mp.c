/* Multi-process tests of distributed backward: forks N workers that open agents and run one scenario. */
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

#include "bwd_mp.h"

/*
 * Usage: bwd_mp [-n workers] [-t seconds] [-p shm|tcp_rxm|provider] scenario
 *
 * The parent binds the bootstrap's rendezvous socket to a free port on 127.0.0.1 and forks the
 * workers; rank 0 serves the rendezvous on it. Each worker opens its agent (RDAG_FABRIC=ofi and
 * the provider from -p; without -p the fabric the environment names, which is how the VM suite
 * runs it over verbs), registers the served functions, meets the others and runs the scenario;
 * phases are separated by agent_test_barrier(). Every gradient a pass leaves in a context is
 * compared with the same math done in this process (bwd_ref.c). Exit: 0 all passed, 77 the
 * fabric is not available here, 1 a failure (a check, a crash, the watchdog).
 */

#define SKIP 77

/* ---- checks and helpers ------------------------------------------------------------------- */

static void vfail(struct bw_worker *w, const char *file, int line, const char *fmt, va_list ap)
{
	char msg[2048];

	vsnprintf(msg, sizeof(msg), fmt, ap);
	fprintf(stderr, "rank %d: %s:%d: %s [phase: %s]\n", w->rank, file, line, msg,
		w->board->phase[w->rank]);
	atomic_store(&w->fail, 1);
}

void bw_fail(struct bw_worker *w, const char *file, int line, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vfail(w, file, line, fmt, ap);
	va_end(ap);
}

void bw_fail_rc(struct bw_worker *w, const char *file, int line, int got, int want, const char *fmt, ...)
{
	char what[1024], last[1024];
	va_list ap;

	snprintf(last, sizeof(last), "%s", rdag_last_error());
	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	bw_fail(w, file, line, "%s: returned %d (%s), expected %d (%s); last error: \"%s\"", what, got,
		rdag_strerror(got), want, rdag_strerror(want), last);
}

uint64_t bw_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t bw_deadline(struct bw_worker *w, unsigned s)
{
	uint64_t dl = bw_now_ns() + (uint64_t)s * 1000000000u;

	return dl < w->deadline_ns ? dl : w->deadline_ns;
}

int bw_wait_until(uint64_t dl)
{
	struct timespec ts = {0, 500000};

	if (bw_now_ns() >= dl)
		return 0;
	nanosleep(&ts, NULL);
	return 1;
}

void bw_phase(struct bw_worker *w, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(w->board->phase[w->rank], sizeof(w->board->phase[w->rank]), fmt, ap);
	va_end(ap);
}

void bw_barrier(struct bw_worker *w, const char *what)
{
	int rc;

	bw_phase(w, "barrier: %s", what);
	rc = agent_test_barrier(w->a);
	CHECK_RC(w, rc, 0, "agent_test_barrier (%s)", what);
}

void bw_put(struct bw_worker *w, unsigned slot, uint64_t v)
{
	__atomic_store_n(&w->board->v[w->rank][slot], v, __ATOMIC_SEQ_CST);
}

uint64_t bw_get(struct bw_worker *w, int rank, unsigned slot)
{
	return __atomic_load_n(&w->board->v[rank][slot], __ATOMIC_SEQ_CST);
}

int bw_await(struct bw_worker *w, int rank, unsigned slot, uint64_t v, unsigned s, const char *what)
{
	uint64_t dl = bw_deadline(w, s);

	while (bw_get(w, rank, slot) != v)
		if (!bw_wait_until(dl)) {
			bw_fail(w, __FILE__, __LINE__, "%s: rank %d's slot %u is %#llx after %u s, "
				"expected %#llx", what, rank, slot,
				(unsigned long long)bw_get(w, rank, slot), s, (unsigned long long)v);
			return -1;
		}
	return 0;
}

/* ---- the harness ----------------------------------------------------------------------------- */

static const struct {
	const char *name;
	void (*fn)(struct bw_worker *w);
	int min_n;
} scenarios[] = {
	{"simple", sc_simple, 2},
	{"round_trips", sc_round_trips, 2},
	{"dtypes_ranks", sc_dtypes_ranks, 2},
	{"unused", sc_unused, 3},
	{"multi", sc_multi, 2},
	{"local_only", sc_local_only, 1},
	{"grad_on_return", sc_grad_on_return, 2},
	{"rref", sc_rref, 3},
	{"ps", sc_ps, 2},
	{"accumulate", sc_accumulate, 2},
	{"threads", sc_threads, 2},
	{"errors", sc_errors, 4},
	{"kill", sc_kill, 3},
	{"release_during", sc_release_during, 2},
};

static void free_worker_state(struct bw_worker *w)
{
	rdag_graph_destroy(w->g);
	while (w->nodes) {
		struct bw_node *n = w->nodes;

		w->nodes = n->next;
		free(n->in[0]);
		free(n->in[1]);
		free(n);
	}
	while (w->weights) {
		struct bw_weight *wt = w->weights;

		w->weights = wt->next;
		free(wt->data);
		free(wt);
	}
}

static int worker(const struct bw_cfg *cfg, int rank, int lfd, int port, int ready_fd, struct bw_board *board,
		  void (*fn)(struct bw_worker *w))
{
	struct rdag_agent_opts o;
	struct bw_worker *w;
	char token[64];
	int rc, ret;

	w = calloc(1, sizeof(*w));
	if (!w) {
		fprintf(stderr, "rank %d: out of memory\n", rank);
		return 1;
	}
	w->rank = rank;
	w->world = cfg->n;
	w->cfg = cfg;
	w->board = board;
	w->ready_fd = ready_fd;
	w->deadline_ns = bw_now_ns() +
			 (uint64_t)(cfg->timeout_s > 20 ? cfg->timeout_s - 10 : cfg->timeout_s) * 1000000000u;
	pthread_mutex_init(&w->lock, NULL);
	if (cfg->prov) {
		setenv("RDAG_FABRIC", "ofi", 1);
		setenv("RDAG_OFI_PROVIDER", cfg->prov, 1);
	}
	if (cfg->victim >= 0)
		setenv("RDAG_PEER_TIMEOUT_MS", "2000", 1);
	unsetenv("RDAG_WORKER_NAME"); /* the kill scenario looks for the default name "worker<k>" */
	bw_phase(w, "rdag_graph_create");
	rc = rdag_graph_create(&w->g);
	if (rc) {
		fprintf(stderr, "rank %d: rdag_graph_create: %s\n", rank, rdag_last_error());
		ret = 1;
		goto out;
	}
	bw_phase(w, "rdag_agent_open");
	rdag_agent_opts_init(&o);
	o.rank = rank;
	o.world_size = cfg->n;
	o.name = NULL;
	o.master_addr = "127.0.0.1";
	o.master_port = port;
	snprintf(token, sizeof(token), "bwd-test-%d", (int)getppid());
	o.job_token = token;
	o.listen_fd = rank == 0 ? lfd : -1;
	if (rank != 0)
		close(lfd);
	o.progress = RDAG_PROGRESS_THREAD;
	o.threads = 4; /* nested calls and concurrent passes need free handler threads */
	o.local_only = 1;
	rc = rdag_agent_open(&o, &w->a);
	if (rc) {
		fprintf(stderr, "rank %d: rdag_agent_open: %s: %s\n", rank, rdag_strerror(rc),
			rdag_last_error());
		ret = rc == RDAG_ENODEV || rc == RDAG_ENOSYS ? SKIP : 1;
		goto out;
	}
	if (bw_register_all(w) == 0) {
		bw_barrier(w, "start");
		bw_phase(w, "scenario %s", cfg->scenario);
		fn(w);
		if (!cfg->no_end_barrier) {
			bw_barrier(w, "end");
			bw_phase(w, "final checks");
			CHECK(w, rdag_ctx_count(w->a) == 0, "%zu contexts left at the end",
			      rdag_ctx_count(w->a));
			CHECK(w, rdag_rref_count(w->a) == 0, "%zu RRefs left at the end",
			      rdag_rref_count(w->a));
		}
	}
	bw_phase(w, "rdag_agent_close");
	rc = rdag_agent_close(w->a);
	/* With a worker killed, the closing barrier may fail (backward.h leaves it to the caller). */
	if (!cfg->no_end_barrier)
		CHECK_RC(w, rc, 0, "rdag_agent_close");
	else if (rc)
		printf("rank %d: rdag_agent_close with a dead peer: %s (%s) (accepted)\n", rank,
		       rdag_strerror(rc), rdag_last_error());
	ret = atomic_load(&w->fail) ? 1 : 0;
	if (!ret && rank == 0)
		printf("%s: %d workers on %s: passed\n", cfg->scenario, cfg->n,
		       cfg->prov ? cfg->prov : "the environment's fabric");
out:
	free_worker_state(w);
	pthread_mutex_destroy(&w->lock);
	free(w);
	return ret;
}

/*
 * libfabric's shm provider names a process's shared-memory region after its pid
 * (/dev/shm/<pid>:<n>:<n>) and removes it when the endpoint closes. A process killed (by the test,
 * the watchdog or a crash) leaves it behind, and a later process reusing the pid fails in fi_enable.
 */
static void forget_shm(pid_t pid)
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

static void usage(const char *argv0)
{
	fprintf(stderr, "usage: %s [-n 1..%d] [-t seconds] [-p shm|tcp_rxm|provider] scenario\nscenarios:",
		argv0, BW_MAXW);
	for (size_t i = 0; i < sizeof(scenarios) / sizeof(scenarios[0]); i++)
		fprintf(stderr, " %s", scenarios[i].name);
	fprintf(stderr, "\n");
}

int main(int argc, char **argv)
{
	struct bw_cfg cfg = {.n = 2, .timeout_s = 120, .victim = -1};
	void (*fn)(struct bw_worker *w) = NULL;
	pid_t pids[BW_MAXW];
	int status[BW_MAXW], done[BW_MAXW];
	int lfd, port, c, nleft, ret = 0, skipped = 0, min_n = 1, ready[2] = {-1, -1};
	struct bw_board *board;
	uint64_t deadline;

	while ((c = getopt(argc, argv, "n:t:p:")) != -1) {
		switch (c) {
		case 'n': cfg.n = atoi(optarg); break;
		case 't': cfg.timeout_s = atoi(optarg); break;
		case 'p':
			/* "tcp_rxm" spells "tcp;ofi_rxm" without a ';' for CMake and shells. */
			cfg.prov = strcmp(optarg, "tcp_rxm") == 0 ? "tcp;ofi_rxm" : optarg;
			break;
		default: usage(argv[0]); return 2;
		}
	}
	if (optind >= argc || cfg.n < 1 || cfg.n > BW_MAXW || cfg.timeout_s < 1) {
		usage(argv[0]);
		return 2;
	}
	cfg.scenario = argv[optind];
	for (size_t i = 0; i < sizeof(scenarios) / sizeof(scenarios[0]); i++) {
		if (strcmp(scenarios[i].name, cfg.scenario) == 0) {
			fn = scenarios[i].fn;
			min_n = scenarios[i].min_n;
		}
	}
	if (!fn) {
		fprintf(stderr, "%s: unknown scenario '%s'\n", argv[0], cfg.scenario);
		usage(argv[0]);
		return 2;
	}
	if (cfg.n < min_n) {
		fprintf(stderr, "%s: scenario %s needs at least %d workers\n", argv[0], cfg.scenario, min_n);
		return 2;
	}
	if (strcmp(cfg.scenario, "kill") == 0) {
		cfg.victim = cfg.n - 1;
		cfg.no_end_barrier = true;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	board = mmap(NULL, sizeof(*board), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (board == MAP_FAILED || pipe(ready)) {
		perror("bwd_mp: set-up");
		return 1;
	}
	memset(board, 0, sizeof(*board));
	lfd = listen_any(&port);
	if (lfd < 0) {
		perror("bwd_mp: listen");
		return 1;
	}
	for (int r = 0; r < cfg.n; r++) {
		pids[r] = fork();
		if (pids[r] < 0) {
			perror("fork");
			for (int k = 0; k < r; k++)
				kill(pids[k], SIGKILL);
			return 1;
		}
		if (pids[r] == 0) {
			close(ready[0]);
			exit(worker(&cfg, r, lfd, port, ready[1], board, fn)); /* exit: LeakSanitizer runs */
		}
		done[r] = 0;
	}
	close(lfd);
	close(ready[1]);
	deadline = bw_now_ns() + (uint64_t)cfg.timeout_s * 1000000000u;
	nleft = cfg.n;
	while (nleft) {
		struct pollfd pfd = {.fd = ready[0], .events = POLLIN};
		char b;

		/* Kill scenario: the victim says when it is ready to die (in its node's backward). */
		if (ready[0] >= 0 && poll(&pfd, 1, 10) > 0) {
			if (read(ready[0], &b, 1) == 1 && cfg.victim >= 0 && !done[cfg.victim]) {
				board->kill_ns = bw_now_ns();
				kill(pids[cfg.victim], SIGKILL);
			} else {
				close(ready[0]);
				ready[0] = -1;
			}
		} else if (ready[0] < 0) {
			struct timespec ts = {0, 10000000};

			nanosleep(&ts, NULL);
		}
		for (int r = 0; r < cfg.n; r++) {
			if (done[r] || waitpid(pids[r], &status[r], WNOHANG) != pids[r])
				continue;
			done[r] = 1;
			nleft--;
		}
		if (nleft && bw_now_ns() > deadline) {
			fprintf(stderr, "bwd_mp: watchdog: %s still running after %d s; killing\n",
				cfg.scenario,
				cfg.timeout_s);
			for (int r = 0; r < cfg.n; r++) {
				if (done[r])
					continue;
				fprintf(stderr, "bwd_mp:   rank %d, in phase '%.127s'\n", r, board->phase[r]);
				kill(pids[r], SIGKILL);
				waitpid(pids[r], &status[r], 0);
				forget_shm(pids[r]);
				done[r] = 1;
			}
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
		if (WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL && r == cfg.victim && board->kill_ns)
			continue;
		fprintf(stderr, "bwd_mp: rank %d %s %d (phase '%.127s')\n", r,
			WIFEXITED(st) ? "exited with" : "killed by signal",
			WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st), board->phase[r]);
		ret = 1;
	}
	if (cfg.victim >= 0 && !board->kill_ns && !skipped) {
		fprintf(stderr, "bwd_mp: the victim (rank %d) never asked to be killed\n", cfg.victim);
		ret = 1;
	}
	if (!ret && skipped) {
		printf("%s: skipped: the fabric is not available here\n", cfg.scenario);
		return SKIP;
	}
	return ret;
}
