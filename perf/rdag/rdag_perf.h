/* Shared set-up of rdag's transport benchmarks: perftest flags, bootstrap as server/client, fabric and xport. */
#ifndef RDAG_PERF_RDAG_PERF_H
#define RDAG_PERF_RDAG_PERF_H

/*
 * rdag_perf_lat and rdag_perf_bw take the raw baselines' flags (raw_parse_args, perf/README.md)
 * and print the same header and table, so perf/compare runs them beside raw_ofi_* / raw_verbs_*.
 * They differ in how the two sides meet: through rdag's bootstrap (the server is rank 0 and
 * serves the rendezvous on the -p port, printing "listening on port N"; the client is rank 1),
 * then the fabric chosen by -P (RDAG_FABRIC=ofi, RDAG_OFI_PROVIDER) or the environment, then the
 * transport (src/xport) with its RDAG_* options. With --local (first argument) the tool forks its
 * own server and runs as the client: one command, two processes.
 */

#include <stdint.h>

#include "bootstrap/boot.h"
#include "raw_common.h"
#include "xport/xport.h"

struct rp {
	struct raw_opts o;
	struct boot *b;
	struct xport *x;
	struct xport_opts xo;
	int server;
	int local;              /* --local: we forked the server */
	int child_pid;
	int wait_fd;            /* the endpoint offers a wait fd (FAB_CAP_WAIT_FD; RDAG_OFI_WAIT) */
	uint64_t deadline_ns;
	uint64_t progress, seen;  /* events handled; rp_expired restarts the clock when it moved */
};

/*
 * Parses the arguments (exits on a usage error), meets the peer, opens the fabric and the
 * transport with xo's callbacks (already set by the caller on r->xo after rp_init). Returns 0,
 * RAW_EXIT_SKIP (no such fabric here) or RAW_EXIT_FAIL (message printed).
 */
void rp_init(struct rp *r, enum raw_kind kind, int *argc, char **argv);
int rp_open(struct rp *r);
/* Prints the header lines describing the transport in force. */
void rp_print_setup(const struct rp *r);
/* Closes everything; waits for the forked server in --local mode. Returns rc or the server's failure. */
int rp_close(struct rp *r, int rc);

/*
 * Arms the no-progress watchdog (-T) / checks it: prints and returns 1 when r->progress has not
 * moved for -T seconds. Call rp_expired only now and then (it reads the clock).
 */
void rp_watch(struct rp *r);
int rp_expired(struct rp *r, const char *what);

#endif /* RDAG_PERF_RDAG_PERF_H */
