/* What the multi-process tests (xport_mp, agent_mp, bwd_mp) share: helpers, the parent. */
#ifndef RDAG_TESTS_COMMON_MP_COMMON_H
#define RDAG_TESTS_COMMON_MP_COMMON_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <rdag/rdag.h>

#define MP_SKIP 77       /* exit status: the fabric is not available here */
#define MP_PHASE_LEN 128 /* a worker's phase on a board (what it is doing, for the messages) */

/*
 * The command line: [-n workers] [-t seconds] [-p provider] [-c count] scenario. Shared with
 * the workers (a copy each: they are forked after it is set).
 */
struct mp_cfg {
	int n;            /* workers */
	int timeout_s;    /* watchdog */
	const char *prov; /* libfabric provider, or NULL: RDAG_FABRIC / RDAG_OFI_PROVIDER as set */
	const char *scenario;
	int index;        /* the scenario's entry in the program's table (mp_select, or the program) */
	long count;       /* scenario size (messages, iterations); 0: its default */
	int victim;       /* kill scenarios: the rank the parent kills when it asks (-1: none) */
};

/* ---- time ------------------------------------------------------------------------------------ */

uint64_t mp_now_ns(void); /* CLOCK_MONOTONIC */
/* A worker's end: timeout_s from now, less margin_s if timeout_s > 2 * margin_s (the watchdog). */
uint64_t mp_worker_deadline(int timeout_s, int margin_s);
/* s seconds from now, never past limit_ns. */
uint64_t mp_deadline(uint64_t limit_ns, unsigned s);
/* 1 while now < dl; 0 once it has passed. Pauses ~0.5 ms per call (for polls of a condition). */
int mp_wait_until(uint64_t dl);

/* ---- byte patterns --------------------------------------------------------------------------- */

/* A deterministic byte pattern per seed; mp_check returns 0 or 1 + the first bad offset. */
void mp_fill(void *p, size_t n, uint64_t seed);
size_t mp_check(const void *p, size_t n, uint64_t seed);
static inline uint64_t mp_seed(uint64_t a, uint64_t b, uint64_t c)
{
	return (a << 48) ^ (b << 32) ^ (c * 0x9E3779B97F4A7C15ull) ^ 0x5bd1e995u;
}

/* ---- failed checks --------------------------------------------------------------------------- */

/* Prints a failed check of worker rank in phase: "rank R: file:line: message [phase: P]". */
void mp_vreport(int rank, const char *phase, const char *file, int line, const char *fmt,
		va_list ap) __attribute__((format(printf, 5, 0)));
/* The same for a return code: "what: returned got (text), expected want (text); last error: ..." */
void mp_vreport_rc(int rank, const char *phase, const char *file, int line, int got, int want,
		   const char *fmt, va_list ap) __attribute__((format(printf, 7, 0)));

/* ---- a worker's start and end ---------------------------------------------------------------- */

/* The fabric a worker opens: RDAG_FABRIC=ofi, RDAG_OFI_PROVIDER=prov (NULL: as the environment). */
void mp_use_provider(const char *prov);
/* A worker's exit status when its fabric or agent failed to open: MP_SKIP if not here, else 1. */
int mp_open_failed(int rc);
/*
 * Opens a test worker's agent: rank of world, meeting through 127.0.0.1:port (rank 0 serves the
 * rendezvous on lfd, the others close it), job token "<job>-<parent's pid>", default worker name,
 * progress mode progress with 4 handler threads (nested calls and concurrent passes need free
 * ones), local_only. 0, or (after saying why) the worker's exit status: mp_open_failed().
 */
int mp_agent_open(rdag_agent_t **a, const char *job, int rank, int world, int lfd, int port,
		  int progress);
/* A served function of a test program. */
struct mp_fn {
	const char *name;
	rdag_fn fn;
};
/* rdag_register() of fns[0..n) with arg: 0, or the first failure's code (*name: its function). */
int mp_register(rdag_agent_t *a, const struct mp_fn *fns, size_t n, void *arg, const char **name);
/* Rank 0's line once its scenario passed: "<scenario>: <n> workers on <provider>: passed". */
void mp_passed(const struct mp_cfg *cfg);

/* ---- the command line ------------------------------------------------------------------------ */

/*
 * getopt over optstring (of "n:t:p:c:"; -p tcp_rxm means "tcp;ofi_rxm", without a ';' for CMake
 * and shells) into cfg, from the defaults (2 workers, 120 s, victim -1); cfg->scenario is the
 * first operand, or NULL. 0, or -1 on an option not in optstring (getopt has said which).
 */
int mp_parse(int argc, char **argv, const char *optstring, struct mp_cfg *cfg);

/* A program's scenario table: an array of structs with members const char *name and int min_n. */
struct mp_table {
	const char *const *name; /* &table[0].name */
	const int *min_n;        /* &table[0].min_n */
	size_t stride, count;
};
#define MP_TABLE(t) \
	((struct mp_table){&(t)[0].name, &(t)[0].min_n, sizeof((t)[0]), sizeof(t) / sizeof((t)[0])})
/* The index of the scenario called name, or -1. */
int mp_find(struct mp_table t, const char *name);
/*
 * The command line of agent_mp and bwd_mp: [-n 1..maxw] [-t seconds] [-p shm|tcp_rxm|provider]
 * scenario, with at least the scenario's min_n workers. 0 (cfg->index set), or -1 after the
 * usage or the reason (the program then exits with 2).
 */
int mp_select(int argc, char **argv, int maxw, struct mp_table t, struct mp_cfg *cfg);

/* ---- the parent ------------------------------------------------------------------------------ */

/* An anonymous shared mapping of len zeroed bytes (parent and workers), or NULL (errno set). */
void *mp_shared_map(size_t len);
/*
 * libfabric's shm provider names a process's shared-memory region after its pid
 * (/dev/shm/<pid>:<n>:<n>) and removes it when the endpoint closes. A process killed (by a test,
 * the watchdog or a crash) leaves it behind, and a later process that gets the same pid then
 * fails in fi_enable (EBUSY). So the regions of the workers that die so go with them.
 */
void mp_forget_shm(pid_t pid);
/* A listening TCP socket on 127.0.0.1, on a free port (*port): the fd, or -1 (errno set). */
int mp_listen_any(int *port);

/* How mp_run runs the workers of cfg. */
struct mp_run {
	const struct mp_cfg *cfg;
	const char *prog; /* the parent's messages start with it ("xport_mp") */
	/* Rank's worker (in its own process), given arg: its exit status. ready_fd: see ready_pipe. */
	int (*worker)(const struct mp_cfg *cfg, void *arg, int rank, int lfd, int port, int ready_fd);
	void *arg;
	/*
	 * The workers get the write end of a pipe (ready_fd; else -1): a byte on it asks the parent
	 * to kill cfg->victim with SIGKILL (once it is ready to die), noting when in *kill_ns first
	 * (kill_ns: in the shared mapping, so the workers see it).
	 */
	bool ready_pipe;
	volatile uint64_t *kill_ns;
	bool victim_must_ask; /* a failure if the victim never asked to be killed */
	/* Each worker's phase, shown by the watchdog and for a failed worker; NULL: none. */
	const char (*phase)[MP_PHASE_LEN];
};

/*
 * Binds the rendezvous socket (mp_listen_any), forks the cfg->n workers and waits for them; past
 * cfg->timeout_s the watchdog kills those still running. The victim's SIGKILL after it asked is
 * no failure. Returns the program's exit status: 0 all passed, MP_SKIP some skipped (the fabric
 * is not here) and none failed, 1 a failure (a worker's, a crash, the watchdog, the set-up).
 */
int mp_run(const struct mp_run *r);

#endif /* RDAG_TESTS_COMMON_MP_COMMON_H */
