/* Registration cache: lookup/release with reference counts, LRU bounds, invalidation, monitor replay. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "rcache/itree.h"
#include "rcache/monitor.h"
#include "rcache/rcache.h"
#include "util/err.h"
#include "util/log.h"

#define ACCESS_ALL (FAB_ACCESS_LOCAL | FAB_ACCESS_REMOTE_WRITE | FAB_ACCESS_REMOTE_READ)
#define NMASKS (ACCESS_ALL + 1) /* one tree per access mask, so a covering lookup stays O(log n) */
#define DEFAULT_MAX_ENTRIES 4096
#define CHECK_RETRIES 200 /* lookup-time checks that may find an unmap in progress */

enum entry_state {
	ENTRY_CACHED = 1, /* in a tree: lookups may return it; on the LRU list when unreferenced */
	ENTRY_DEFERRED,   /* invalidated while referenced: deregistered by the last release */
	ENTRY_PRIVATE,    /* made for one lookup, never findable: deregistered by its release */
};

struct entry {
	struct rcache_reg pub; /* what lookup hands out */
	struct rcache_itree_node node; /* in c->trees[pub.access] while cached */
	struct rcache_mon_range watch; /* the pages the monitor watches for us */
	uint32_t refs;
	enum entry_state state;
	struct entry *lru_prev, *lru_next; /* cached and unreferenced: most recently released first */
	struct entry *next;                /* scratch list link (collections, deregistration) */
};

/* A registration in progress (lock dropped): events overlapping it make it stale. */
struct pending {
	uintptr_t start, end;
	int stale;
	struct pending *next;
};

struct rcache {
	pthread_mutex_t lock;
	rcache_reg_fn reg;
	rcache_dereg_fn dereg;
	void *arg;
	size_t max_entries, max_bytes;
	enum rcache_monitor mode; /* in force: UFFD or NONE */
	int mon_ref;              /* holds a monitor reference */
	uint64_t applied;         /* last monitor event replayed */
	int check_stuck;          /* the last lookup-time check timed out */
	struct rcache_itree trees[NMASKS];
	struct entry lru; /* sentinel: lru.lru_next is the most recently released */
	struct pending *pending;
	struct rcache_stats st; /* counters and gauges kept under lock */
	_Atomic uint64_t deregs, dereg_errors; /* updated outside the lock */
	char name[32];
};

static struct entry *entry_of_node(struct rcache_itree_node *n)
{
	return (struct entry *)(void *)((char *)n - offsetof(struct entry, node));
}

static struct entry *entry_of_reg(struct rcache_reg *r)
{
	return (struct entry *)(void *)r; /* pub is the first member */
}

/* ---- environment ---------------------------------------------------------------------------- */

/* Parses a positive size with an optional binary suffix (k, m, g, t). 0 on success. */
static int parse_size(const char *s, size_t *out)
{
	char *end;
	unsigned long long v;
	unsigned shift = 0;

	if (!s || !*s || *s == '-')
		return -1;
	v = strtoull(s, &end, 10);
	if (end == s)
		return -1;
	switch (*end) {
	case 'k': case 'K': shift = 10; end++; break;
	case 'm': case 'M': shift = 20; end++; break;
	case 'g': case 'G': shift = 30; end++; break;
	case 't': case 'T': shift = 40; end++; break;
	default: break;
	}
	if ((*end == 'b' || *end == 'B') && shift)
		end++;
	if (*end != '\0' || v == 0 || v > (SIZE_MAX >> shift))
		return -1;
	*out = (size_t)(v << shift);
	return 0;
}

static size_t env_size(const char *var, size_t dflt)
{
	const char *s = getenv(var);
	size_t v;

	if (!s || !*s)
		return dflt;
	if (parse_size(s, &v) != 0) {
		LOG_WARN("unknown %s=%s (a positive number, optionally with k/m/g/t), using %zu", var, s,
			 dflt);
		return dflt;
	}
	return v;
}

static size_t default_max_bytes(void)
{
	long pages = sysconf(_SC_PHYS_PAGES);
	size_t pg = rcache_page_size();

	if (pages <= 0)
		return (size_t)1 << 30;
	return (size_t)pages / 4 * pg;
}

static enum rcache_monitor env_monitor(void)
{
	const char *s = getenv("RDAG_RCACHE_MONITOR");

	if (!s || !*s || strcasecmp(s, "auto") == 0)
		return RCACHE_MONITOR_AUTO;
	if (strcasecmp(s, "uffd") == 0 || strcasecmp(s, "userfaultfd") == 0)
		return RCACHE_MONITOR_UFFD;
	if (strcasecmp(s, "none") == 0)
		return RCACHE_MONITOR_NONE;
	LOG_WARN("unknown RDAG_RCACHE_MONITOR=%s (use auto|uffd|none), using auto", s);
	return RCACHE_MONITOR_AUTO;
}

const char *rcache_monitor_name(enum rcache_monitor m)
{
	switch (m) {
	case RCACHE_MONITOR_UFFD: return "uffd";
	case RCACHE_MONITOR_NONE: return "none";
	case RCACHE_MONITOR_AUTO: return "auto";
	default: return "default";
	}
}

enum rcache_monitor rcache_monitor_probe(char *why, size_t whylen)
{
	return rcache_mon_probe(why, whylen) == 0 ? RCACHE_MONITOR_UFFD : RCACHE_MONITOR_NONE;
}

/* ---- LRU and trees (lock held) -------------------------------------------------------------- */

static void lru_push(struct rcache *c, struct entry *e)
{
	e->lru_prev = &c->lru;
	e->lru_next = c->lru.lru_next;
	c->lru.lru_next->lru_prev = e;
	c->lru.lru_next = e;
}

static void lru_remove(struct entry *e)
{
	e->lru_prev->lru_next = e->lru_next;
	e->lru_next->lru_prev = e->lru_prev;
	e->lru_prev = e->lru_next = NULL;
}

static struct entry *find_locked(struct rcache *c, uintptr_t start, uintptr_t end, uint32_t access)
{
	for (uint32_t m = access; m < NMASKS; m++) {
		struct rcache_itree_node *n;

		if ((m & access) != access)
			continue;
		n = rcache_itree_find_cover(&c->trees[m], start, end);
		if (n)
			return entry_of_node(n);
	}
	return NULL;
}

/* Takes an entry out of the lookup structures; unreferenced ones go to *dead for deregistration. */
static void uncache_locked(struct rcache *c, struct entry *e, struct entry **dead)
{
	rcache_itree_remove(&c->trees[e->pub.access], &e->node);
	rcache_mon_del(&e->watch);
	c->st.entries--;
	c->st.bytes -= e->pub.mr.len;
	if (e->refs == 0) {
		lru_remove(e);
		e->next = *dead;
		*dead = e;
	} else {
		e->state = ENTRY_DEFERRED;
		c->st.deferred++;
	}
}

static int collect(struct rcache_itree_node *n, void *arg)
{
	struct entry **list = arg;
	struct entry *e = entry_of_node(n);

	e->next = *list;
	*list = e;
	return 0;
}

/* Drops every cached entry overlapping [start, end); returns how many. */
static size_t invalidate_locked(struct rcache *c, uintptr_t start, uintptr_t end, struct entry **dead)
{
	struct entry *list = NULL, *e;
	size_t n = 0;

	for (struct pending *p = c->pending; p; p = p->next) {
		if (p->start < end && start < p->end)
			p->stale = 1;
	}
	for (uint32_t m = 1; m < NMASKS; m++)
		rcache_itree_walk_overlaps(&c->trees[m], start, end, collect, &list);
	while (list) {
		e = list;
		list = e->next;
		uncache_locked(c, e, dead);
		n++;
	}
	return n;
}

/* ---- monitor replay (lock held) ------------------------------------------------------------- */

static void to_safe_mode_locked(struct rcache *c, const char *why, struct entry **dead)
{
	c->st.mem_invalidations += invalidate_locked(c, 0, UINTPTR_MAX, dead);
	c->mode = RCACHE_MONITOR_NONE;
	if (c->mon_ref) {
		rcache_mon_put();
		c->mon_ref = 0;
	}
	LOG_WARN("rcache %s: %s: dropped every cached registration, no longer caching", c->name, why);
}

/* Replays the monitor's events since the last call: registrations of memory that was unmapped,
 * moved or discarded are dropped before any lookup can see them. */
static void sync_locked(struct rcache *c, struct entry **dead)
{
	struct rcache_mon_event ev;
	uint64_t tail;

	if (c->mode != RCACHE_MONITOR_UFFD)
		return;
	if (rcache_mon_failed()) {
		to_safe_mode_locked(c, "the userfaultfd monitor failed", dead);
		return;
	}
	tail = rcache_mon_sync();
	for (uint64_t s = c->applied + 1; s <= tail; s++) {
		if (rcache_mon_read(s, &ev) != 0) {
			/* Fell a whole ring behind: what was lost is unknown, so drop everything. */
			c->st.log_overruns++;
			c->st.mem_invalidations += invalidate_locked(c, 0, UINTPTR_MAX, dead);
			break;
		}
		c->st.mem_invalidations += invalidate_locked(c, ev.start, ev.end, dead);
		if (ev.kind == RCACHE_MON_REMAP)
			rcache_mon_unwatch(ev.to, ev.to + (ev.end - ev.start));
	}
	c->applied = tail;
}

/*
 * Finds a cached entry covering [start, end) with access, checked before it is handed out.
 * The event log alone leaves a gap: munmap() removes the mapping first, and only then queues
 * its event and waits for the monitor to read it, so another thread can map new memory at the
 * same address and look it up in between (the threaded test hits this within milliseconds).
 * The kernel raises a count (mmap_changing) before removing the mapping and lowers it once the
 * event was read; rcache_mon_check() reads it. Clear: every change made so far has been read,
 * and replaying the log once more (if anything new came) makes the answer exact. Raised:
 * replay and retry; if it does not settle, the caller registers afresh for itself (a miss is
 * always safe). If the check cannot be made at all, the entry is dropped.
 */
static struct entry *find_valid_locked(struct rcache *c, uintptr_t start, uintptr_t end,
				       uint32_t access, struct entry **dead, int *busy)
{
	struct entry *e;
	uint64_t applied;
	int tries = 0, rc;

	*busy = 0;
	while (c->mode == RCACHE_MONITOR_UFFD) {
		e = find_locked(c, start, end, access);
		if (!e)
			return NULL;
		rc = rcache_mon_check();
		applied = c->applied;
		if (rc == 0) {
			c->check_stuck = 0;
			sync_locked(c, dead);
			if (c->applied == applied)
				return e;
			continue; /* events read before the check: applied now, look again */
		}
		if (rc == RDAG_EAGAIN) {
			/* After a time-out, retry little until a check succeeds again, so that a
			 * count that never settles (a kernel bug) costs a registration per lookup,
			 * not a wait. */
			if (tries++ < (c->check_stuck ? 2 : CHECK_RETRIES)) {
				sched_yield(); /* let the monitor read the pending event */
				sync_locked(c, dead);
				continue;
			}
			/* Cannot tell yet: the caller registers afresh, for itself only. */
			if (!c->check_stuck)
				LOG_DEBUG("rcache %s: an unmap stayed in progress through %d checks; "
					  "registering without the cache meanwhile", c->name, tries);
			c->check_stuck = 1;
			c->st.check_busy++;
			*busy = 1;
			return NULL;
		}
		/* The monitor's descriptor is unusable: whatever it was, it is not to be trusted. */
		uncache_locked(c, e, dead);
		c->st.check_drops++;
	}
	return NULL;
}

/* ---- deregistration (lock not held) ---------------------------------------------------------- */

static void dereg_list(struct rcache *c, struct entry *list)
{
	struct entry *e;
	int rc;

	while (list) {
		e = list;
		list = e->next;
		rc = c->dereg(c->arg, &e->pub.mr);
		atomic_fetch_add_explicit(&c->deregs, 1, memory_order_relaxed);
		if (rc != 0) {
			atomic_fetch_add_explicit(&c->dereg_errors, 1, memory_order_relaxed);
			LOG_WARN("rcache %s: deregistering [%p, +%zu) failed: %s (%s)", c->name,
				 e->pub.mr.addr, e->pub.mr.len, rdag_strerror(rc), rdag_last_error());
		}
		free(e);
	}
}

/* ---- API ------------------------------------------------------------------------------------ */

void rcache_attr_init(struct rcache_attr *attr, rcache_reg_fn reg, rcache_dereg_fn dereg, void *arg)
{
	memset(attr, 0, sizeof(*attr));
	attr->reg = reg;
	attr->dereg = dereg;
	attr->arg = arg;
}

int rcache_create(const struct rcache_attr *attr, struct rcache **out)
{
	struct rcache *c = NULL;
	enum rcache_monitor want;
	char why[256] = "";
	int rc;

	if (!attr || !attr->reg || !attr->dereg || !out)
		return err_set(RDAG_EINVAL, "rcache_create: registrar callbacks and out are required");
	rcache_fork_guard_init();
	c = calloc(1, sizeof(*c));
	if (!c)
		return err_set(RDAG_ENOMEM, "rcache_create: out of memory");
	rc = pthread_mutex_init(&c->lock, NULL);
	if (rc != 0) {
		free(c);
		return err_set(RDAG_ENOMEM, "rcache_create: pthread_mutex_init: %s", strerror(rc));
	}
	snprintf(c->name, sizeof(c->name), "%s", attr->name ? attr->name : "rcache");
	c->reg = attr->reg;
	c->dereg = attr->dereg;
	c->arg = attr->arg;
	c->max_entries = attr->max_entries ? attr->max_entries
					   : env_size("RDAG_RCACHE_MAX_ENTRIES", DEFAULT_MAX_ENTRIES);
	c->max_bytes = attr->max_bytes ? attr->max_bytes
				       : env_size("RDAG_RCACHE_MAX_BYTES", default_max_bytes());
	for (int m = 0; m < NMASKS; m++)
		rcache_itree_init(&c->trees[m]);
	c->lru.lru_next = c->lru.lru_prev = &c->lru;

	want = attr->monitor != RCACHE_MONITOR_DEFAULT ? attr->monitor : env_monitor();
	c->mode = RCACHE_MONITOR_NONE;
	if (want == RCACHE_MONITOR_AUTO || want == RCACHE_MONITOR_UFFD) {
		rc = rcache_mon_get(why, sizeof(why));
		if (rc == 0) {
			c->mode = RCACHE_MONITOR_UFFD;
			c->mon_ref = 1;
			c->applied = rcache_mon_sync(); /* older events concern nothing of ours */
		} else if (want == RCACHE_MONITOR_UFFD) {
			err_set(rc, "rcache %s: the userfaultfd memory monitor is required "
				    "(RDAG_RCACHE_MONITOR=uffd) but cannot run: %s", c->name, why);
			goto fail;
		} else {
			LOG_INFO("rcache %s: no memory monitor (%s): safe mode, registrations are not "
				 "kept across lookups", c->name, why);
		}
	} else {
		LOG_INFO("rcache %s: memory monitor disabled (RDAG_RCACHE_MONITOR=none): registrations "
			 "are not kept across lookups", c->name);
	}
	if (c->mode == RCACHE_MONITOR_UFFD)
		LOG_DEBUG("rcache %s: userfaultfd monitor, at most %zu entries and %zu bytes cached",
			  c->name, c->max_entries, c->max_bytes);
	*out = c;
	return 0;

fail:
	pthread_mutex_destroy(&c->lock);
	free(c);
	return rc;
}

int rcache_destroy(struct rcache *c)
{
	struct entry *dead = NULL;
	size_t in_use;

	if (!c)
		return 0;
	if (rcache_forked_child()) {
		/* The registrations belong to the parent: free our copy of the bookkeeping only. */
		for (uint32_t m = 1; m < NMASKS; m++) {
			struct entry *list = NULL;

			rcache_itree_walk_overlaps(&c->trees[m], 0, UINTPTR_MAX, collect, &list);
			while (list) {
				struct entry *e = list;

				list = e->next;
				free(e);
			}
		}
		free(c);
		return 0;
	}
	pthread_mutex_lock(&c->lock);
	sync_locked(c, &dead);
	in_use = c->st.in_use;
	if (in_use == 0)
		invalidate_locked(c, 0, UINTPTR_MAX, &dead);
	pthread_mutex_unlock(&c->lock);
	dereg_list(c, dead);
	if (in_use > 0)
		return err_set(RDAG_EBUSY, "rcache %s: cannot destroy, %zu registrations still referenced",
			       c->name, in_use);
	if (c->mon_ref)
		rcache_mon_put();
	pthread_mutex_destroy(&c->lock);
	free(c);
	return 0;
}

static int check_range(const void *addr, size_t len, uintptr_t *start, uintptr_t *end)
{
	*start = (uintptr_t)addr;
	/* The range and its page-rounded end must fit in the address space. */
	if (!addr || len == 0 || *start > UINTPTR_MAX - rcache_page_size() ||
	    len > UINTPTR_MAX - rcache_page_size() - *start)
		return -1;
	*end = *start + len;
	return 0;
}

/* Takes one reference on a cached entry for a lookup. Lock held. */
static struct rcache_reg *take_locked(struct rcache *c, struct entry *e)
{
	if (e->refs++ == 0) {
		lru_remove(e);
		c->st.in_use++;
	}
	return &e->pub;
}

int rcache_lookup(struct rcache *c, const void *addr, size_t len, uint32_t access,
		  struct rcache_reg **out)
{
	struct entry *dead = NULL, *e, *other;
	struct pending p = {0};
	uintptr_t start, end, rs, re, ws, we;
	size_t pg = rcache_page_size();
	int rc = 0, cacheable, busy = 0;

	if (!c || !out || access == 0 || (access & ~(uint32_t)ACCESS_ALL) ||
	    check_range(addr, len, &start, &end) != 0)
		return err_set(RDAG_EINVAL, "rcache_lookup: bad argument (addr %p, len %zu, access %#x)",
			       addr, len, access);
	if (rcache_forked_child())
		return err_set(RDAG_EPERM, "rcache %s: cannot be used in a child process after fork()",
			       c->name);
	*out = NULL;
	/* The pages the registration lies in: what the monitor watches. */
	ws = start & ~(uintptr_t)(pg - 1);
	we = (end + pg - 1) & ~(uintptr_t)(pg - 1);
	/* Local-only registrations cover whole pages, so neighbours on the same pages share them.
	 * Remote-accessible ones cover exactly what was asked: a key handed to a peer never
	 * reaches bytes nobody asked to expose. */
	rs = access == FAB_ACCESS_LOCAL ? ws : start;
	re = access == FAB_ACCESS_LOCAL ? we : end;

	pthread_mutex_lock(&c->lock);
	c->st.lookups++;
	sync_locked(c, &dead);
	if (c->mode == RCACHE_MONITOR_UFFD) {
		e = find_valid_locked(c, start, end, access, &dead, &busy);
		if (e) {
			c->st.hits++;
			*out = take_locked(c, e);
			goto out_unlock;
		}
	}
	c->st.misses++;
	e = calloc(1, sizeof(*e));
	if (!e) {
		rc = err_set(RDAG_ENOMEM, "rcache %s: out of memory", c->name);
		goto out_unlock;
	}
	/* Not cached: safe mode, too large, or the memory could not be checked just now. */
	cacheable = c->mode == RCACHE_MONITOR_UFFD && !busy && re - rs <= c->max_bytes &&
		    c->max_entries > 0;
	if (cacheable) {
		p.start = ws;
		p.end = we;
		p.next = c->pending;
		c->pending = &p;
	}
	pthread_mutex_unlock(&c->lock);

	/* Watch first, then register: a change of the memory during the registration is seen. */
	if (cacheable && rcache_mon_add(&e->watch, ws, we) != 0)
		cacheable = -1; /* unwatchable memory (file mapping, hugetlbfs, ...) */
	rc = c->reg(c->arg, (void *)rs, re - rs, access, &e->pub.mr);

	pthread_mutex_lock(&c->lock);
	if (cacheable) {
		struct pending **pp = &c->pending;

		if (rc == 0 && cacheable > 0)
			sync_locked(c, &dead); /* events that came while registering mark p stale */
		while (*pp != &p)
			pp = &(*pp)->next;
		*pp = p.next;
	}
	if (rc != 0) {
		c->st.reg_errors++;
		if (rc > 0)
			rc = err_set(RDAG_EIO, "rcache %s: registrar returned %d", c->name, rc);
		rcache_mon_del(&e->watch);
		free(e);
		goto out_unlock;
	}
	c->st.regs++;
	e->pub.access = access;
	if (cacheable > 0 && (p.stale || c->mode != RCACHE_MONITOR_UFFD)) {
		/* The memory changed while it was being registered (or the monitor went away):
		 * good for this caller, who looked it up concurrently, but not to be kept. */
		cacheable = 0;
	}
	if (cacheable > 0) {
		other = find_valid_locked(c, start, end, access, &dead, &busy);
		if (other) {
			/* Another thread cached a covering registration meanwhile: share it. */
			rcache_mon_del(&e->watch);
			e->next = dead;
			dead = e;
			*out = take_locked(c, other);
			goto out_unlock;
		}
		/* Make room: evict the least recently released entries, never one in use. */
		while (c->st.entries + 1 > c->max_entries || c->st.bytes + (re - rs) > c->max_bytes) {
			struct entry *victim = c->lru.lru_prev;

			if (victim == &c->lru)
				break;
			uncache_locked(c, victim, &dead);
			c->st.evictions++;
		}
		if (c->st.entries + 1 > c->max_entries || c->st.bytes + (re - rs) > c->max_bytes) {
			LOG_DEBUG("rcache %s: full of registrations in use (%zu entries, %zu bytes): "
				  "[%p, +%zu) registered for this lookup only", c->name, c->st.entries,
				  c->st.bytes, addr, len);
			cacheable = 0;
		}
	}
	if (cacheable > 0) {
		e->node.start = rs;
		e->node.end = re;
		rcache_itree_insert(&c->trees[access], &e->node);
		e->state = ENTRY_CACHED;
		c->st.entries++;
		c->st.bytes += re - rs;
	} else {
		rcache_mon_del(&e->watch);
		e->state = ENTRY_PRIVATE;
		c->st.uncached++;
	}
	e->refs = 1;
	c->st.in_use++;
	*out = &e->pub;

out_unlock:
	pthread_mutex_unlock(&c->lock);
	dereg_list(c, dead);
	return rc;
}

void rcache_release(struct rcache *c, struct rcache_reg *reg)
{
	struct entry *dead = NULL, *e;

	if (!c || !reg || rcache_forked_child())
		return;
	e = entry_of_reg(reg);
	pthread_mutex_lock(&c->lock);
	if (e->refs == 0) {
		LOG_ERROR("rcache %s: release of [%p, +%zu) that holds no reference", c->name,
			  e->pub.mr.addr, e->pub.mr.len);
		pthread_mutex_unlock(&c->lock);
		return;
	}
	if (--e->refs == 0) {
		c->st.in_use--;
		switch (e->state) {
		case ENTRY_CACHED:
			lru_push(c, e);
			break;
		case ENTRY_DEFERRED:
			c->st.deferred--;
			/* fall through */
		case ENTRY_PRIVATE:
			e->next = dead;
			dead = e;
			break;
		}
	}
	sync_locked(c, &dead);
	pthread_mutex_unlock(&c->lock);
	dereg_list(c, dead);
}

int rcache_invalidate(struct rcache *c, const void *addr, size_t len)
{
	struct entry *dead = NULL;
	uintptr_t start, end;
	size_t n;

	if (!c || check_range(addr, len, &start, &end) != 0)
		return err_set(RDAG_EINVAL, "rcache_invalidate: bad range (addr %p, len %zu)", addr, len);
	if (rcache_forked_child())
		return err_set(RDAG_EPERM, "rcache %s: cannot be used in a child process after fork()",
			       c->name);
	pthread_mutex_lock(&c->lock);
	sync_locked(c, &dead);
	n = invalidate_locked(c, start, end, &dead);
	c->st.invalidations += n;
	pthread_mutex_unlock(&c->lock);
	dereg_list(c, dead);
	return n > INT32_MAX ? INT32_MAX : (int)n;
}

int rcache_flush(struct rcache *c)
{
	struct entry *dead = NULL;
	size_t n;

	if (!c)
		return err_set(RDAG_EINVAL, "rcache_flush: no cache");
	if (rcache_forked_child())
		return err_set(RDAG_EPERM, "rcache %s: cannot be used in a child process after fork()",
			       c->name);
	pthread_mutex_lock(&c->lock);
	sync_locked(c, &dead);
	n = invalidate_locked(c, 0, UINTPTR_MAX, &dead);
	c->st.invalidations += n;
	pthread_mutex_unlock(&c->lock);
	dereg_list(c, dead);
	return n > INT32_MAX ? INT32_MAX : (int)n;
}

void rcache_progress(struct rcache *c)
{
	struct entry *dead = NULL;

	if (!c || rcache_forked_child() || c->mode != RCACHE_MONITOR_UFFD)
		return;
	pthread_mutex_lock(&c->lock);
	sync_locked(c, &dead);
	pthread_mutex_unlock(&c->lock);
	dereg_list(c, dead);
}

void rcache_get_stats(struct rcache *c, struct rcache_stats *out)
{
	int locked = !rcache_forked_child();

	if (locked)
		pthread_mutex_lock(&c->lock);
	*out = c->st;
	out->max_entries = c->max_entries;
	out->max_bytes = c->max_bytes;
	out->monitor = c->mode;
	if (locked)
		pthread_mutex_unlock(&c->lock);
	out->deregs = atomic_load_explicit(&c->deregs, memory_order_relaxed);
	out->dereg_errors = atomic_load_explicit(&c->dereg_errors, memory_order_relaxed);
}

/* ---- fabric adapters ------------------------------------------------------------------------ */

int rcache_fab_reg(void *ep, void *addr, size_t len, uint32_t access, struct fab_mr *out)
{
	return fab_mr_reg((struct fab_ep *)ep, addr, len, access, out);
}

int rcache_fab_dereg(void *ep, struct fab_mr *mr)
{
	return fab_mr_dereg((struct fab_ep *)ep, mr);
}
