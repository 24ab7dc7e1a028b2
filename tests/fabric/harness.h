/* Multi-process test harness: fork N workers, allgather blobs over socketpairs, watchdog, exit codes. */
#ifndef RDAG_TESTS_FABRIC_HARNESS_H
#define RDAG_TESTS_FABRIC_HARNESS_H

#include <stddef.h>

/*
 * hx_run() forks nprocs children, each running fn(h, arg) with its own rank, and acts as the
 * coordinator: hx_allgather() rounds go through it over one socketpair per child (no TCP, no
 * bootstrap module). It returns:
 *   0  every child exited 0;
 *   77 no child failed and at least one exited 77 (skip: the machine lacks something);
 *   1  a child failed, crashed, left while others waited in a round, or the watchdog fired
 *      (after timeout_s seconds every child still running is killed and named).
 * Children exit with fn's return value. Not thread-safe; call from a single-threaded process.
 * Do not open or probe a fabric before hx_run: RDMA device contexts (ibverbs, libfabric's verbs
 * provider) opened in the parent fail in the children (ibv_post_send: EACCES).
 */
struct hx;

typedef int (*hx_fn)(struct hx *h, void *arg);

int hx_run(int nprocs, int timeout_s, hx_fn fn, void *arg);

int hx_rank(const struct hx *h);
int hx_size(const struct hx *h);

/*
 * Every rank contributes len bytes (the same len everywhere); all receives nprocs * len bytes,
 * rank order. Returns 0, or -1 if the coordinator is gone (the child should exit non-zero).
 */
int hx_allgather(struct hx *h, const void *mine, size_t len, void *all);

/* hx_allgather of nothing. */
int hx_barrier(struct hx *h);

/*
 * hx_allgather that calls progress(arg) while it waits for the others (about every
 * millisecond), so a worker keeps driving a manual-progress fabric that peers depend on.
 */
int hx_allgather_progress(struct hx *h, const void *mine, size_t len, void *all,
			  void (*progress)(void *arg), void *arg);
int hx_barrier_progress(struct hx *h, void (*progress)(void *arg), void *arg);

#endif /* RDAG_TESTS_FABRIC_HARNESS_H */
