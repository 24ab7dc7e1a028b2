/* A recording registrar for the rcache tests: every registration and deregistration is logged. */
#ifndef RDAG_TESTS_RCACHE_FAKE_REG_H
#define RDAG_TESTS_RCACHE_FAKE_REG_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "fabric/fabric.h"

/*
 * Registrations get increasing keys (mr.rkey, starting at 1). At registration time the fake reads
 * the first 8 bytes of the registered range (the "stamp"): tests write a generation number there,
 * so a registration handed out later can be checked against the memory mapped now.
 */
struct fake_rec {
	void *addr;
	size_t len;
	uint32_t access;
	uint64_t stamp;
	int live; /* registered and not yet deregistered */
};

struct fake_reg {
	pthread_mutex_t lock;
	struct fake_rec *recs; /* indexed by key - 1 */
	size_t nrecs, cap;
	size_t live;
	size_t deregs;
	size_t errors;    /* deregistration of an unknown or dead key */
	int fail_next;    /* next registration fails with this code (0: none) */
	int read_stamp;   /* read the stamp at registration */
};

void fake_init(struct fake_reg *f);
void fake_fini(struct fake_reg *f);
int fake_reg_cb(void *arg, void *addr, size_t len, uint32_t access, struct fab_mr *out);
int fake_dereg_cb(void *arg, struct fab_mr *mr);

/* A copy of the record for key (0 if unknown). */
int fake_get(struct fake_reg *f, uint64_t key, struct fake_rec *out);
int fake_is_live(struct fake_reg *f, uint64_t key);
size_t fake_nregs(struct fake_reg *f);
size_t fake_live(struct fake_reg *f);

#endif /* RDAG_TESTS_RCACHE_FAKE_REG_H */
