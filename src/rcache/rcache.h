/* Registration cache: user memory registered with the fabric once and reused across messages. */
#ifndef RDAG_RCACHE_H
#define RDAG_RCACHE_H

#include <stddef.h>
#include <stdint.h>

#include "fabric/fabric.h"

/*
 * A cache maps (address range, access) to a fabric registration, generic over a registrar given
 * at creation (reg/dereg callbacks; rcache_fab_reg/rcache_fab_dereg adapt a struct fab_ep).
 * See docs/rcache.md for the full contract. In short:
 *
 *  - rcache_lookup() returns a registration covering [addr, addr + len) with at least the asked
 *    access, and takes a reference; rcache_release() drops it. The memory must stay mapped while
 *    the caller holds the reference.
 *  - Registrations are reused across lookups while cached. The cache is bounded (entries and
 *    registered bytes); least recently released entries are evicted, never one in use.
 *  - rcache_invalidate() drops every entry overlapping a range; entries in use are deregistered
 *    when their last reference goes, and no lookup returns them meanwhile.
 *  - Memory unmapped, remapped or discarded behind the cache's back is detected by a userfaultfd
 *    monitor; without one, nothing is kept across lookups (safe mode), never a stale entry.
 *
 * Thread safety: every function is thread-safe for a given cache (one mutex per cache); the
 * registrar's callbacks are called without the cache's lock held.
 */

struct rcache;

/* Registers [addr, addr + len) with the given FAB_ACCESS_* bits, filling *out. 0 or RDAG_E*. */
typedef int (*rcache_reg_fn)(void *arg, void *addr, size_t len, uint32_t access,
			     struct fab_mr *out);
/* Deregisters what reg filled in. 0 or RDAG_E* (a failure is logged and counted, not retried). */
typedef int (*rcache_dereg_fn)(void *arg, struct fab_mr *mr);

/* How freed-and-reused memory is detected. */
enum rcache_monitor {
	RCACHE_MONITOR_DEFAULT = 0, /* RDAG_RCACHE_MONITOR from the environment, else AUTO */
	RCACHE_MONITOR_AUTO,        /* userfaultfd if available, else NONE (logged at info level) */
	RCACHE_MONITOR_UFFD,        /* userfaultfd, or rcache_create fails */
	RCACHE_MONITOR_NONE,        /* no monitor: registrations live only while referenced */
};

struct rcache_attr {
	rcache_reg_fn reg;
	rcache_dereg_fn dereg;
	void *arg;                    /* passed to reg and dereg */
	size_t max_entries;           /* 0: RDAG_RCACHE_MAX_ENTRIES, default 4096 */
	size_t max_bytes;             /* 0: RDAG_RCACHE_MAX_BYTES, default a quarter of RAM */
	enum rcache_monitor monitor;  /* RCACHE_MONITOR_DEFAULT: RDAG_RCACHE_MONITOR */
	const char *name;             /* for log lines (copied); NULL: "rcache" */
};

/* A registration handed out by rcache_lookup. Fields are read-only and stable until released. */
struct rcache_reg {
	struct fab_mr mr;  /* covers [mr.addr, mr.addr + mr.len), a superset of the looked-up range */
	uint32_t access;   /* FAB_ACCESS_* bits of the registration (a superset of those asked) */
};

struct rcache_stats {
	uint64_t lookups;
	uint64_t hits;             /* served from a cached registration */
	uint64_t misses;           /* needed a new registration */
	uint64_t evictions;        /* cached, unused entries dropped to respect the bounds */
	uint64_t invalidations;    /* entries dropped by rcache_invalidate / rcache_flush */
	uint64_t mem_invalidations; /* entries dropped because their memory was unmapped/remapped/discarded */
	uint64_t uncached;         /* registrations made for one lookup only (safe mode, unwatchable
				      memory, too large, or bounds full of entries in use) */
	uint64_t log_overruns;     /* monitor events lost by falling behind: everything was dropped */
	uint64_t check_drops;      /* entries dropped because the lookup-time check failed */
	uint64_t check_busy;       /* lookups that found an unmap in progress for too long and
				      registered afresh (uncached) instead of trusting a cached entry */
	uint64_t regs, deregs;     /* registrar calls */
	uint64_t reg_errors, dereg_errors;
	size_t entries, bytes;     /* cached now (findable by lookups), and their registered bytes */
	size_t in_use;             /* registrations with references (cached or not) */
	size_t deferred;           /* invalidated but still referenced: deregistered on release */
	size_t max_entries, max_bytes;
	enum rcache_monitor monitor; /* in force: RCACHE_MONITOR_UFFD or RCACHE_MONITOR_NONE */
};

/* Fills attr with zeroes (every limit and the monitor from the environment) and reg/dereg/arg. */
void rcache_attr_init(struct rcache_attr *attr, rcache_reg_fn reg, rcache_dereg_fn dereg,
		      void *arg);

/*
 * Creates a cache. Fails with RDAG_EINVAL (missing callbacks), RDAG_ENOMEM, or, when the
 * userfaultfd monitor was required (RCACHE_MONITOR_UFFD) and cannot run, its error (RDAG_EPERM,
 * RDAG_ENOSYS) with the reason in rdag_last_error().
 */
int rcache_create(const struct rcache_attr *attr, struct rcache **out);

/*
 * Deregisters everything and frees the cache. RDAG_EBUSY (and nothing done) while a registration
 * is still referenced: release them first. NULL is a no-op.
 */
int rcache_destroy(struct rcache *c);

/*
 * Returns in *out a registration covering [addr, addr + len) with every FAB_ACCESS_* bit of
 * access, holding one reference. RDAG_EINVAL for a bad argument; the registrar's error if it
 * fails; RDAG_ENOMEM; RDAG_EPERM in a child after fork(). Release with rcache_release()
 * before the memory is freed or unmapped.
 */
int rcache_lookup(struct rcache *c, const void *addr, size_t len, uint32_t access,
		  struct rcache_reg **out);

/* Drops the reference lookup took. The registration stays cached unless invalidated/uncached. */
void rcache_release(struct rcache *c, struct rcache_reg *reg);

/*
 * Drops every entry overlapping [addr, addr + len): unused ones are deregistered now, ones in
 * use when released; no later lookup returns any of them. Returns how many entries were
 * dropped, or a negative code.
 */
int rcache_invalidate(struct rcache *c, const void *addr, size_t len);

/* Drops every entry (as rcache_invalidate over the whole address space). */
int rcache_flush(struct rcache *c);

/*
 * Applies pending monitor events (deregistering registrations of freed memory) without a
 * lookup; cheap when there is nothing to do. A progress thread may call it periodically so
 * that pages of freed memory are unpinned promptly.
 */
void rcache_progress(struct rcache *c);

void rcache_get_stats(struct rcache *c, struct rcache_stats *out);

/* "uffd" or "none". */
const char *rcache_monitor_name(enum rcache_monitor m);

/*
 * Which monitor RCACHE_MONITOR_AUTO would use in this process: RCACHE_MONITOR_UFFD or
 * RCACHE_MONITOR_NONE, with a one-line explanation in why (for rdag_info). Thread-safe.
 */
enum rcache_monitor rcache_monitor_probe(char *why, size_t whylen);

/* The remote address a peer writes to for local address ptr inside reg. */
static inline uint64_t rcache_remote_addr(const struct rcache_reg *reg, const void *ptr)
{
	return reg->mr.remote_base + (uint64_t)((const char *)ptr - (const char *)reg->mr.addr);
}

/* Registrar adapters over a fabric endpoint: pass the struct fab_ep * as attr.arg. */
int rcache_fab_reg(void *ep, void *addr, size_t len, uint32_t access, struct fab_mr *out);
int rcache_fab_dereg(void *ep, struct fab_mr *mr);

#endif /* RDAG_RCACHE_H */
