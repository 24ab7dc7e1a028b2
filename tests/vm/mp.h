/* Tiny fork-and-socketpair harness for the VM tests: N worker processes, allgather through the parent. */
#ifndef RDAG_TESTS_VM_MP_H
#define RDAG_TESTS_VM_MP_H

#include <stddef.h>

/*
 * mp_run() forks n children running fn(m, arg); the parent relays mp_allgather() rounds over one
 * socketpair per child and kills everyone after timeout_s. Returns 0 if every child exited 0,
 * 77 if none failed and one exited 77, else 1 (naming the failed children on stderr).
 */
struct mp {
	int rank;
	int size;
	int fd;
};

int mp_run(int n, int timeout_s, int (*fn)(struct mp *m, void *arg), void *arg);

/* Every rank gives len bytes (same len on all); all gets n * len bytes in rank order. 0 or -1. */
int mp_allgather(struct mp *m, const void *mine, size_t len, void *all);

/* mp_allgather of one byte. */
int mp_barrier(struct mp *m);

#endif /* RDAG_TESTS_VM_MP_H */
