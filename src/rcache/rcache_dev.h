/* Device-memory registration cache: registrations of GPU buffers keyed on the allocation's identity. */
#ifndef RDAG_RCACHE_DEV_H
#define RDAG_RCACHE_DEV_H

#include <stddef.h>
#include <stdint.h>

#include "fabric/fabric.h"

/*
 * Device memory cannot be watched like host memory (no userfaultfd on it): a cudaFree followed
 * by a cudaMalloc often returns the same device address for a new allocation, and a cache keyed
 * on addresses alone would hand out a registration of the freed pages. This cache keys every
 * entry on the allocation's *buffer id* (CU_POINTER_ATTRIBUTE_BUFFER_ID, unique per process and
 * never reused) as well as its device and range: each lookup asks an identity callback (the
 * driver, in gpu/; a fake in the unit test) for the current id at the address, and
 *  - an entry with the same id, device, covering range and a superset of the access bits is a hit;
 *  - an entry overlapping the range with ANOTHER id is stale (its memory was freed and the
 *    address reused): it is dropped, deregistered now if unused, at its last release otherwise.
 * Bounded (max_entries, default 256); the least recently released unused entry is evicted;
 * when every entry is in use, a lookup still succeeds with an uncached registration.
 * Thread-safe (one mutex); callbacks run without it held.
 */

/* The identity of the allocation holding an address. */
struct rcache_dev_ident {
	uint64_t buffer_id;     /* never 0 for device memory */
	int device;
	uintptr_t base;         /* the allocation: [base, base + size) */
	size_t size;
};

/* What a registration was made for, or what a lookup asks for. */
struct rcache_dev_key {
	uint64_t buffer_id;
	int device;
	uintptr_t addr;
	size_t len;
	uint32_t access;        /* FAB_ACCESS_* */
};

/* 1 if a registration made for entry can serve query (same allocation, covers it, access). Pure. */
int rcache_dev_key_serves(const struct rcache_dev_key *entry, const struct rcache_dev_key *query);
/* 1 if entry is stale for query: its range overlaps query's but it belongs to another allocation. */
int rcache_dev_key_stale(const struct rcache_dev_key *entry, const struct rcache_dev_key *query);

/* Identity of the allocation at addr: 0, or RDAG_EINVAL if addr is not device memory. */
typedef int (*rcache_dev_ident_fn)(void *arg, const void *addr, struct rcache_dev_ident *out);
typedef int (*rcache_dev_reg_fn)(void *arg, void *addr, size_t len, uint32_t access, int device,
				 struct fab_mr *out);
typedef int (*rcache_dev_dereg_fn)(void *arg, struct fab_mr *mr);

struct rcache_dev_attr {
	rcache_dev_ident_fn ident;
	rcache_dev_reg_fn reg;
	rcache_dev_dereg_fn dereg;
	void *ident_arg;        /* passed to ident */
	void *arg;              /* passed to reg and dereg */
	size_t max_entries;     /* 0: 256 */
};

struct rcache_dev_reg {
	struct fab_mr mr;
	struct rcache_dev_key key;
};

struct rcache_dev_stats {
	uint64_t lookups, hits, misses, stale_drops, evictions, uncached, regs, deregs;
	size_t entries, in_use;
};

struct rcache_dev;

int rcache_dev_create(const struct rcache_dev_attr *attr, struct rcache_dev **out);
/* RDAG_EBUSY (nothing done) while a registration is referenced. NULL is a no-op. */
int rcache_dev_destroy(struct rcache_dev *c);
/*
 * A registration covering [addr, addr + len) of one device allocation with the access bits,
 * holding a reference. RDAG_EINVAL when the range is not inside one device allocation.
 */
int rcache_dev_lookup(struct rcache_dev *c, const void *addr, size_t len, uint32_t access,
		      struct rcache_dev_reg **out);
void rcache_dev_release(struct rcache_dev *c, struct rcache_dev_reg *reg);
/* Drops every entry overlapping the range (call before freeing device memory). Returns count. */
int rcache_dev_invalidate(struct rcache_dev *c, const void *addr, size_t len);
void rcache_dev_get_stats(struct rcache_dev *c, struct rcache_dev_stats *out);

/* Registrar adapter over a fabric endpoint (FAB_MEM_CUDA): pass the struct fab_ep * as arg. */
int rcache_dev_fab_reg(void *ep, void *addr, size_t len, uint32_t access, int device,
		       struct fab_mr *out);
int rcache_dev_fab_dereg(void *ep, struct fab_mr *mr);

#endif /* RDAG_RCACHE_DEV_H */
