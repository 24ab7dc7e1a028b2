/* Multi-process tests of distributed backward: forks N workers that open agents and run one scenario. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* ---- checks and helpers ------------------------------------------------------------------- */

void bw_fail(struct bw_worker *w, const char *file, int line, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	mp_vreport(w->rank, w->board->phase[w->rank], file, line, fmt, ap);
	va_end(ap);
	atomic_store(&w->fail, 1);
}

void bw_fail_rc(struct bw_worker *w, const char *file, int line, int got, int want, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	mp_vreport_rc(w->rank, w->board->phase[w->rank], file, line, got, want, fmt, ap);
	va_end(ap);
	atomic_store(&w->fail, 1);
}

uint64_t bw_deadline(struct bw_worker *w, unsigned s)
{
	return mp_deadline(w->deadline_ns, s);
}

void bw_phase(struct bw_worker *w, const char *fmt, ...)
{
	static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER; /* main and handler threads */
	va_list ap;

	pthread_mutex_lock(&lock);
	va_start(ap, fmt);
	vsnprintf(w->board->phase[w->rank], sizeof(w->board->phase[w->rank]), fmt, ap);
	va_end(ap);
	pthread_mutex_unlock(&lock);
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
		if (!mp_wait_until(dl)) {
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
	{"identity", sc_identity, 2},
	{"rref", sc_rref, 3},
	{"ps", sc_ps, 2},
	{"accumulate", sc_accumulate, 2},
	{"threads", sc_threads, 2},
	{"errors", sc_errors, 4},
	{"kill", sc_kill, 3},
	{"release_during", sc_release_during, 2},
	{"abort", sc_abort, 4},
	{"shared", sc_shared, 2},
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

static int worker(const struct mp_cfg *cfg, void *board, int rank, int lfd, int port, int ready_fd)
{
	bool end_barrier = cfg->victim < 0; /* kill: a worker is dead at the end, so no collective barrier */
	struct bw_worker *w;
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
	w->deadline_ns = mp_worker_deadline(cfg->timeout_s, 10);
	pthread_mutex_init(&w->lock, NULL);
	mp_use_provider(cfg->prov);
	if (cfg->victim >= 0)
		setenv("RDAG_PEER_TIMEOUT_MS", "2000", 1);
	bw_phase(w, "rdag_graph_create");
	rc = rdag_graph_create(&w->g);
	if (rc) {
		fprintf(stderr, "rank %d: rdag_graph_create: %s\n", rank, rdag_last_error());
		ret = 1;
		goto out;
	}
	bw_phase(w, "rdag_agent_open");
	ret = mp_agent_open(&w->a, "bwd-test", rank, cfg->n, lfd, port, RDAG_PROGRESS_THREAD);
	if (ret)
		goto out;
	if (bw_register_all(w) == 0) {
		bw_barrier(w, "start");
		bw_phase(w, "scenario %s", cfg->scenario);
		scenarios[cfg->index].fn(w);
		if (end_barrier) {
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
	if (end_barrier)
		CHECK_RC(w, rc, 0, "rdag_agent_close");
	else if (rc)
		printf("rank %d: rdag_agent_close with a dead peer: %s (%s) (accepted)\n", rank,
		       rdag_strerror(rc), rdag_last_error());
	ret = atomic_load(&w->fail) ? 1 : 0;
	if (!ret && rank == 0)
		mp_passed(cfg);
out:
	free_worker_state(w);
	pthread_mutex_destroy(&w->lock);
	free(w);
	return ret;
}

int main(int argc, char **argv)
{
	struct bw_board *board;
	struct mp_cfg cfg;

	if (mp_select(argc, argv, BW_MAXW, MP_TABLE(scenarios), &cfg))
		return 2;
	/* Kill scenario: the victim (the last rank) says when to kill it (in its node's backward). */
	if (strcmp(cfg.scenario, "kill") == 0)
		cfg.victim = cfg.n - 1;
	setvbuf(stdout, NULL, _IOLBF, 0);
	board = mp_shared_map(sizeof(*board));
	if (!board) {
		perror("bwd_mp: set-up");
		return 1;
	}
	return mp_run(&(struct mp_run){.cfg = &cfg, .prog = "bwd_mp", .worker = worker, .arg = board,
				       .ready_pipe = true, .kill_ns = &board->kill_ns,
				       .victim_must_ask = true, .phase = board->phase});
}
