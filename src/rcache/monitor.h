/* Memory monitor for the registration cache: a process-wide userfaultfd watching cached ranges. */
#ifndef RDAG_RCACHE_MONITOR_H
#define RDAG_RCACHE_MONITOR_H

#include <stddef.h>
#include <stdint.h>

#include "rcache/itree.h"

/*
 * One userfaultfd per process (the kernel lets only one context watch a mapping), shared by every
 * cache, started by the first cache that wants it and stopped when the last one is destroyed.
 *
 * - Caches watch the page-aligned ranges they cache (rcache_mon_add / rcache_mon_del). The monitor
 *   counts overlapping watches and unregisters a page only when nobody watches it any more.
 * - A handler thread reads the descriptor. munmap/mremap/madvise(DONTNEED...) of a watched range
 *   do not return before that thread has read their event; it appends each event to a lock-free
 *   log (a ring of sequence-numbered slots). Caches replay the log under their own lock before
 *   every lookup, so once munmap() has returned, no later lookup can return a registration of
 *   the unmapped range.
 * - Missing-page faults in watched ranges (a page that was discarded, or never touched) stop the
 *   faulting thread until the handler resolves them: it installs the zero page (what the kernel
 *   would have done) and the thread continues. The handler takes no lock, allocates nothing and
 *   touches only its own stack and static memory, so it can always make progress.
 */

enum rcache_mon_kind {
	RCACHE_MON_UNMAP = 1, /* munmap, or the unmap part of mmap(MAP_FIXED), mremap, brk */
	RCACHE_MON_REMOVE,    /* madvise(MADV_DONTNEED / MADV_REMOVE / MADV_FREE) */
	RCACHE_MON_REMAP,     /* mremap moved [start, end) to [to, to + end - start) */
	RCACHE_MON_LOST,      /* the monitor stopped watching [start, end) (could not resolve a fault) */
};

struct rcache_mon_event {
	enum rcache_mon_kind kind;
	uintptr_t start, end;
	uintptr_t to; /* RCACHE_MON_REMAP only */
};

/* A watch on a range, embedded in the watcher's structure. */
struct rcache_mon_range {
	struct rcache_itree_node node;
	int active;
};

struct rcache_mon_stats {
	uint64_t unmap_events, remove_events, remap_events, lost_events;
	uint64_t faults;       /* missing-page faults in watched ranges */
	uint64_t faults_zero;  /* resolved by installing a zero page */
	uint64_t faults_woken; /* page already there or range gone: the thread was just woken */
	uint64_t watch_fail;   /* ranges the monitor refused (not anonymous/shmem, watched by another uffd, ...) */
	uint64_t checks, checks_busy, checks_gone; /* rcache_mon_check calls, EAGAIN, other answers */
	size_t watched;        /* ranges watched now */
	int running;
};

/*
 * Whether a userfaultfd monitor can run in this process; 0 if yes, else a negative code and the
 * reason in why. Does not start anything. Thread-safe.
 */
int rcache_mon_probe(char *why, size_t whylen);

/*
 * Takes a reference on the monitor, starting it if needed. 0, or a negative code with the reason
 * in why (userfaultfd denied, ...). Thread-safe.
 */
int rcache_mon_get(char *why, size_t whylen);

/* Drops a reference taken by rcache_mon_get; the last one stops the monitor. Thread-safe. */
void rcache_mon_put(void);

/*
 * Starts watching the pages covering [start, end) (page-aligned by the caller). Returns 0, or
 * a negative code if this range cannot be watched (file-backed mapping, hugetlbfs, watched by
 * another userfaultfd, monitor not running): the caller must then not cache it. Pre-faults the
 * range (read) so that touching it later does not go through the handler. Thread-safe; may be
 * called with a cache lock held (the monitor never takes a cache lock).
 */
int rcache_mon_add(struct rcache_mon_range *r, uintptr_t start, uintptr_t end);

/* Stops watching r (no-op if r is not active). Thread-safe, may hold a cache lock. */
void rcache_mon_del(struct rcache_mon_range *r);

/* Unregisters the parts of [start, end) nobody watches (after a mapping moved away). */
void rcache_mon_unwatch(uintptr_t start, uintptr_t end);

/*
 * Sequence number of the last event in the log, once every event the handler has read so far
 * is in it (waits for an in-flight batch to be published). 0 before the first event.
 */
uint64_t rcache_mon_sync(void);

/*
 * The lookup-time check, done before a cached registration is handed out: 0 if no unmap, remap
 * or remove of a watched range is in progress (every such change made so far has had its event
 * read by the handler: one more rcache_mon_sync() makes the log complete), RDAG_EAGAIN while
 * one is (its event is not read yet: sync and retry), RDAG_EIO if the descriptor is unusable.
 * The kernel raises the userfaultfd's mmap_changing count before munmap removes a mapping and
 * lowers it once the event was read; one ioctl reads it (UFFDIO_WRITEPROTECT on a misaligned
 * range: EAGAIN, or EINVAL from the range check, and nothing else done). Thread-safe.
 */
int rcache_mon_check(void);

/* Reads event seq (1-based); 0, or RDAG_ENOENT if it was overwritten (the reader fell behind). */
int rcache_mon_read(uint64_t seq, struct rcache_mon_event *ev);

/* Nonzero once the monitor has failed (its descriptor went away): events may have been lost. */
int rcache_mon_failed(void);

void rcache_mon_get_stats(struct rcache_mon_stats *st);

/* Nonzero in the child of a fork() made after the monitor or a cache was set up. */
int rcache_forked_child(void);

/* Registers the fork handler (once). */
void rcache_fork_guard_init(void);

/* The system page size. */
size_t rcache_page_size(void);

#endif /* RDAG_RCACHE_MONITOR_H */
