/* Shared parts of the raw fabric baselines: perftest-style options, out-of-band TCP socket, stats, output. */
#ifndef RDAG_PERF_RAW_COMMON_H
#define RDAG_PERF_RAW_COMMON_H

/*
 * The raw baselines (raw_ofi_lat, raw_ofi_bw, raw_verbs_lat, raw_verbs_bw) are plain programs on
 * libfabric or verbs, independent of rdag's library, so that every rdag figure can be divided by
 * what the fabric itself does in the same run. They take perftest's flags and print perftest's
 * kind of output (a header describing the setup, then one row per size). See perf/README.md.
 *
 * Exit codes: 0 success, 1 failure, 2 usage error, 77 the fabric or device is not available here.
 */

#include <stddef.h>
#include <stdint.h>

#define RAW_EXIT_FAIL 1
#define RAW_EXIT_USAGE 2
#define RAW_EXIT_SKIP 77

#define RAW_DEFAULT_PORT 18515

enum raw_kind {
	RAW_LAT, /* ping-pong latency */
	RAW_BW,  /* one-directional write bandwidth */
};

struct raw_opts {
	enum raw_kind kind;
	const char *tool;      /* program name for messages */
	const char *host;      /* server to connect to; NULL: we are the server */
	int port;              /* out-of-band TCP port; 0 on the server: any free port */
	size_t size;           /* -s */
	int all;               /* -a */
	long iters;            /* -n; iterations per size (scaled down for large sizes under -a) */
	int iters_given;       /* -n was on the command line */
	long warmup;           /* -w */
	int cpu;               /* -c; -1: not pinned */
	const char *provider;  /* -P (ofi) */
	const char *device;    /* -d (ofi domain / verbs device) */
	long inline_size;      /* -I; -1: provider's/device's own limit */
	int tx_depth;          /* -t (bw): writes in flight */
	int cq_mod;            /* -Q (bw, verbs): signal one write in cq_mod */
	int timeout_s;         /* -T: give up after this many seconds without progress */
	int check;             /* -C: check received bytes (slower; for tests) */
	int events;            /* -e: a bandwidth target sleeps on its CQ instead of busy-polling */
};

/*
 * Parses perftest-style arguments into o (defaults first). Exits with RAW_EXIT_USAGE after
 * printing the problem, or with 0 after -h.
 */
void raw_parse_args(struct raw_opts *o, enum raw_kind kind, int argc, char **argv);

/* Largest size -a runs to, and the first. */
size_t raw_max_size(const struct raw_opts *o);
size_t raw_first_size(const struct raw_opts *o);
/* Next size after s under -a (powers of two), or 0 when done; without -a: 0. */
size_t raw_next_size(const struct raw_opts *o, size_t s);
/* Iterations to run at size s (-n, capped for large sizes under -a so a sweep stays bounded). */
long raw_iters_for(const struct raw_opts *o, size_t s);
/* Warm-up iterations at size s (-w, at most a quarter of the measured ones, at least 1). */
long raw_warmup_for(const struct raw_opts *o, size_t s);

/* Pins the calling process to CPU o->cpu when given. Returns 0 or -1 (message printed). */
int raw_pin_cpu(const struct raw_opts *o);

/* Monotonic clock in nanoseconds. */
static inline uint64_t raw_now_ns(void);

/* ---- out-of-band TCP socket ---------------------------------------------------------------- */

/*
 * Server: listens on o->port (0: any free port), prints "listening on port N" on stdout (flushed,
 * so a launcher can start the client on that port), accepts one client. Client: connects to
 * o->host:o->port, retrying while the server is not yet listening, for up to o->timeout_s.
 * Returns the connected socket or -1 (message printed).
 */
int raw_oob_connect(const struct raw_opts *o);
/* Sends / receives exactly len bytes. Return 0 or -1 (message printed). */
int raw_oob_send(int fd, const void *buf, size_t len);
int raw_oob_recv(int fd, void *buf, size_t len);
/* Exchanges len bytes: both sides send theirs, then receive the peer's. 0 or -1. */
int raw_oob_xchg(int fd, const void *mine, void *theirs, size_t len);
/* Barrier over the socket. 0 or -1. */
int raw_oob_sync(int fd);
/*
 * Checks that both sides run the same test (sizes, iterations, warm-up): perftest's rule that
 * server and client take the same flags, enforced. 0, or -1 with the difference printed.
 */
int raw_oob_check_params(const struct raw_opts *o, int fd);
/* Non-blocking check whether the peer has closed the socket or sent something unexpected: 1 if gone. */
int raw_oob_peer_gone(int fd);

/*
 * Busy-poll watchdog: call raw_watch_tick() in every poll loop iteration and bump ->progress on
 * every completion; every 65536 calls it checks the clock and the peer socket. Returns 1 when the
 * loop must give up (no progress for o->timeout_s, or the peer went away), after printing why.
 */
struct raw_watch {
	const struct raw_opts *o;
	int fd;
	unsigned count;
	uint64_t progress;      /* bumped by the caller on every completion */
	uint64_t seen_progress; /* progress at the last check */
	uint64_t deadline_ns;
	const char *what;
};
void raw_watch_start(struct raw_watch *w, const struct raw_opts *o, int fd, const char *what);
static inline int raw_watch_tick(struct raw_watch *w);
int raw_watch_check(struct raw_watch *w);

/* ---- output --------------------------------------------------------------------------------- */

/* Prints the dashed rule that frames headers and tables. */
void raw_rule(void);
/* Prints one header line " key : value". */
void raw_hdr(const char *key, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prints the common header lines (side, peer, port, cpu, iterations). */
void raw_hdr_common(const struct raw_opts *o);

/* Latency table: samples are round-trip times in ns (sorted in place); one-way = RTT/2. */
void raw_lat_table_head(void);
void raw_lat_table_row(size_t size, uint64_t *rtt_ns, long n);

/* Bandwidth table: bytes*iters moved in elapsed_ns. MB = 2^20 bytes, as perftest. */
void raw_bw_table_head(void);
void raw_bw_table_row(size_t size, long iters, uint64_t elapsed_ns);

/* Fills buf with a pattern for size/iteration; raw_check_pattern returns 0 if it matches. */
void raw_fill_pattern(void *buf, size_t len, uint64_t seed);
int raw_check_pattern(const void *buf, size_t len, uint64_t seed);

/* ---- inline definitions --------------------------------------------------------------------- */

#include <time.h>

static inline uint64_t raw_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline int raw_watch_tick(struct raw_watch *w)
{
	if ((++w->count & 0xffffu) != 0)
		return 0;
	return raw_watch_check(w);
}

/* A byte count with an optional k/m/g suffix (binary; "KiB", "MB" also read): 0, or -1 if malformed. */
int raw_parse_size(const char *s, size_t *out);

#endif /* RDAG_PERF_RAW_COMMON_H */
