/* userfaultfd memory monitor: watches cached ranges, logs unmap/remap/remove events, resolves faults. */
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "rcache/monitor.h"
#include "util/err.h"
#include "util/log.h"

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif

#define MON_FEATURES (UFFD_FEATURE_EVENT_UNMAP | UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_REMAP)
#define MON_NEEDED_IOCTLS ((1ULL << _UFFDIO_ZEROPAGE) | (1ULL << _UFFDIO_WAKE))

/* Ranges up to this size are pre-faulted when watched. */
#define POPULATE_MAX ((uintptr_t)1 << 30)

/* The event log: a power-of-two ring of seqlock-protected slots, one writer (the handler). */
#define RING_SLOTS 4096u

struct ring_slot {
	_Atomic uint64_t seq; /* event number stored here, 0 while being written */
	_Atomic uint64_t kind;
	_Atomic uint64_t start, end, to;
};

enum mon_state { MON_STOPPED = 0, MON_RUNNING, MON_FAILED };

static struct {
	pthread_mutex_t lock; /* lifecycle and the watch tree; never taken by the handler */
	int users;
	int fd;
	int stop_fd;
	int fd_gone; /* the descriptor was closed under us: do not close it again */
	pthread_t thread;
	struct rcache_itree watches;
	_Atomic int state;
	/* Odd while the handler holds events it has read but not yet published. */
	_Atomic uint64_t batch_gen;
	_Atomic uint64_t tail;
	_Atomic uint64_t unmap_events, remove_events, remap_events, lost_events;
	_Atomic uint64_t faults, faults_zero, faults_woken, watch_fail;
	_Atomic uint64_t checks, checks_busy, checks_gone;
} mon = {
	.lock = PTHREAD_MUTEX_INITIALIZER,
	.fd = -1,
	.stop_fd = -1,
};

static struct ring_slot ring[RING_SLOTS];

/* ---- fork guard and page size --------------------------------------------------------------- */

static atomic_int forked_child;
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;

static void on_fork_child(void)
{
	/* The handler thread does not exist here, and the child's mappings are not watched (the
	 * kernel drops userfaultfd registrations from a child unless EVENT_FORK was asked for). */
	atomic_store(&forked_child, 1);
}

static void fork_guard_setup(void)
{
	pthread_atfork(NULL, NULL, on_fork_child);
}

void rcache_fork_guard_init(void)
{
	pthread_once(&fork_once, fork_guard_setup);
}

int rcache_forked_child(void)
{
	return atomic_load_explicit(&forked_child, memory_order_relaxed);
}

size_t rcache_page_size(void)
{
	static _Atomic size_t page;
	size_t p = atomic_load_explicit(&page, memory_order_relaxed);

	if (!p) {
		long v = sysconf(_SC_PAGESIZE);
		p = v > 0 ? (size_t)v : 4096;
		atomic_store_explicit(&page, p, memory_order_relaxed);
	}
	return p;
}

/* ---- creating the descriptor ---------------------------------------------------------------- */

/* Opens a userfaultfd with the unmap/remove/remap events; returns the fd or a negative code. */
static int open_uffd(char *why, size_t whylen)
{
	struct uffdio_api api;
	int fd = -1, dev, e = ENOSYS;

#ifdef SYS_userfaultfd
	/* Not UFFD_USER_MODE_ONLY: with it, a kernel access (read(2), a peer's process_vm_writev, a
	 * NIC driver pinning pages) to a missing watched page would fail with EFAULT instead of being
	 * resolved by the handler. Without the privilege we fall back to the device, then give up. */
	fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		e = errno;
#endif
	if (fd < 0) {
		dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
		if (dev >= 0) {
			fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
			if (fd < 0)
				e = errno;
			close(dev);
		}
	}
	if (fd < 0) {
		snprintf(why, whylen,
			 "userfaultfd unavailable (%s; unprivileged use needs vm.unprivileged_userfaultfd=1, "
			 "CAP_SYS_PTRACE or access to /dev/userfaultfd)",
			 strerror(e));
		return e == ENOSYS ? RDAG_ENOSYS : RDAG_EPERM;
	}
	memset(&api, 0, sizeof(api));
	api.api = UFFD_API;
	api.features = MON_FEATURES;
	if (ioctl(fd, UFFDIO_API, &api) != 0 || (api.features & MON_FEATURES) != MON_FEATURES) {
		snprintf(why, whylen, "userfaultfd lacks unmap/remove/remap events (%s)", strerror(errno));
		close(fd);
		return RDAG_ENOSYS;
	}
	/* The lookup-time check (rcache_mon_check) reads the kernel's mmap_changing count through
	 * UFFDIO_WRITEPROTECT, which tests it before reading its argument (Linux >= 5.7). Nothing is
	 * registered yet, so the count is 0: such a kernel answers EFAULT to a NULL argument, an
	 * older one (no such ioctl) EINVAL. Without it the window between an munmap and its event
	 * could not be closed: no monitor then. */
	if (ioctl(fd, UFFDIO_WRITEPROTECT, NULL) == 0 || errno != EFAULT) {
		snprintf(why, whylen, "userfaultfd lacks UFFDIO_WRITEPROTECT (Linux >= 5.7 needed)");
		close(fd);
		return RDAG_ENOSYS;
	}
	return fd;
}

int rcache_mon_probe(char *why, size_t whylen)
{
	int fd;

	if (rcache_forked_child()) {
		snprintf(why, whylen, "forked child of a process using the cache");
		return RDAG_EPERM;
	}
	fd = open_uffd(why, whylen);
	if (fd < 0)
		return fd;
	close(fd);
	snprintf(why, whylen, "userfaultfd (unmap, remove, remap events)");
	return 0;
}

/* ---- the handler thread --------------------------------------------------------------------- */

static void publish(enum rcache_mon_kind kind, uint64_t start, uint64_t end, uint64_t to)
{
	uint64_t s = atomic_load_explicit(&mon.tail, memory_order_relaxed) + 1;
	struct ring_slot *slot = &ring[s & (RING_SLOTS - 1)];

	atomic_store_explicit(&slot->seq, 0, memory_order_relaxed);
	atomic_thread_fence(memory_order_release);
	atomic_store_explicit(&slot->kind, (uint64_t)kind, memory_order_relaxed);
	atomic_store_explicit(&slot->start, start, memory_order_relaxed);
	atomic_store_explicit(&slot->end, end, memory_order_relaxed);
	atomic_store_explicit(&slot->to, to, memory_order_relaxed);
	atomic_store_explicit(&slot->seq, s, memory_order_release);
	atomic_store_explicit(&mon.tail, s, memory_order_release);
}

static void wake_page(int fd, uintptr_t page, size_t pg)
{
	struct uffdio_range r = {.start = page, .len = pg};

	(void)ioctl(fd, UFFDIO_WAKE, &r);
	atomic_fetch_add_explicit(&mon.faults_woken, 1, memory_order_relaxed);
}

/* Gives up watching one page: caches drop what overlaps it, the kernel handles its faults. */
static void lose_page(int fd, uintptr_t page, size_t pg)
{
	struct uffdio_range r = {.start = page, .len = pg};

	publish(RCACHE_MON_LOST, page, page + pg, 0);
	atomic_fetch_add_explicit(&mon.lost_events, 1, memory_order_relaxed);
	if (ioctl(fd, UFFDIO_UNREGISTER, &r) != 0)
		wake_page(fd, page, pg); /* unregistering wakes the faulting thread itself */
}

/* Returns 1 if the fault must be retried later (the address space is changing), else 0. */
static int resolve_fault(int fd, uintptr_t addr, size_t pg, int last_try)
{
	uintptr_t page = addr & ~(uintptr_t)(pg - 1);
	struct uffdio_zeropage zp;

	memset(&zp, 0, sizeof(zp));
	zp.range.start = page;
	zp.range.len = pg;
	if (ioctl(fd, UFFDIO_ZEROPAGE, &zp) == 0) {
		atomic_fetch_add_explicit(&mon.faults_zero, 1, memory_order_relaxed);
		return 0;
	}
	switch (errno) {
	case EAGAIN:
		/* An unmap/remap/remove event is queued and not read yet: read it first. If it is
		 * still changing afterwards, wake the thread: it faults again and comes back. */
		if (!last_try)
			return 1;
		wake_page(fd, page, pg);
		return 0;
	case EEXIST: /* someone populated the page meanwhile */
	case ENOENT: /* the mapping went away or is no longer watched */
	case ESRCH:  /* the process is exiting */
		wake_page(fd, page, pg);
		return 0;
	default:
		lose_page(fd, page, pg);
		return 0;
	}
}

#define MAX_DEFERRED 64

static int drain(int fd, size_t pg)
{
	struct uffd_msg msgs[32];
	uintptr_t deferred[MAX_DEFERRED];
	int ndef = 0, rc = 0;

	for (;;) {
		ssize_t n = read(fd, msgs, sizeof(msgs));

		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN)
				rc = -errno;
			break;
		}
		for (size_t i = 0; i < (size_t)n / sizeof(msgs[0]); i++) {
			const struct uffd_msg *m = &msgs[i];

			switch (m->event) {
			case UFFD_EVENT_PAGEFAULT:
				atomic_fetch_add_explicit(&mon.faults, 1, memory_order_relaxed);
				if (resolve_fault(fd, (uintptr_t)m->arg.pagefault.address, pg,
						  ndef == MAX_DEFERRED))
					deferred[ndef++] = (uintptr_t)m->arg.pagefault.address;
				break;
			case UFFD_EVENT_UNMAP:
				publish(RCACHE_MON_UNMAP, m->arg.remove.start, m->arg.remove.end, 0);
				atomic_fetch_add_explicit(&mon.unmap_events, 1, memory_order_relaxed);
				break;
			case UFFD_EVENT_REMOVE:
				publish(RCACHE_MON_REMOVE, m->arg.remove.start, m->arg.remove.end, 0);
				atomic_fetch_add_explicit(&mon.remove_events, 1, memory_order_relaxed);
				break;
			case UFFD_EVENT_REMAP:
				publish(RCACHE_MON_REMAP, m->arg.remap.from,
					m->arg.remap.from + m->arg.remap.len, m->arg.remap.to);
				atomic_fetch_add_explicit(&mon.remap_events, 1, memory_order_relaxed);
				break;
			default:
				break; /* FORK was not asked for; nothing else is defined */
			}
		}
	}
	for (int i = 0; i < ndef; i++)
		resolve_fault(fd, deferred[i], pg, 1);
	return rc;
}

static void *handler(void *arg)
{
	int fd = mon.fd, stop_fd = mon.stop_fd;
	size_t pg = rcache_page_size();

	(void)arg;
	for (;;) {
		struct pollfd p[2] = {{.fd = fd, .events = POLLIN}, {.fd = stop_fd, .events = POLLIN}};
		int r = poll(p, 2, -1);

		if (r < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (p[1].revents)
			return NULL;
		if (p[0].revents & POLLNVAL) {
			mon.fd_gone = 1;
			break;
		}
		if (p[0].revents & POLLERR)
			break;
		atomic_fetch_add(&mon.batch_gen, 1); /* odd: events in hand */
		r = drain(fd, pg);
		atomic_fetch_add(&mon.batch_gen, 1);
		if (r == -EBADF) {
			mon.fd_gone = 1;
			break;
		}
		if (r < 0 && r != -ENOMEM)
			break;
	}
	/* The descriptor is unusable: events may have been missed. Caches see this and stop
	 * caching; no logging or locking here (a faulting thread may hold the locks they take). */
	atomic_store(&mon.state, MON_FAILED);
	return NULL;
}

/* ---- lifecycle ------------------------------------------------------------------------------ */

static int start_locked(char *why, size_t whylen)
{
	sigset_t all, old;
	int fd, rc;

	fd = open_uffd(why, whylen);
	if (fd < 0)
		return fd;
	mon.stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (mon.stop_fd < 0) {
		snprintf(why, whylen, "eventfd: %s", strerror(errno));
		rc = RDAG_EIO;
		goto close_fd;
	}
	mon.fd = fd;
	mon.fd_gone = 0;
	/* mon.watches persists across restarts (zero is an empty tree): a watch taken before a
	 * failure may still be removed after a restart. */
	atomic_store(&mon.state, MON_RUNNING);
	/* The handler takes no signals: the application's handlers must not run on it. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	rc = pthread_create(&mon.thread, NULL, handler, NULL);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc == 0)
		pthread_setname_np(mon.thread, "rdag-rcache-mon");
	if (rc != 0) {
		snprintf(why, whylen, "cannot start the monitor thread: %s", strerror(rc));
		rc = RDAG_ENOMEM;
		goto close_stop;
	}
	LOG_DEBUG("rcache: userfaultfd monitor started (fd %d)", fd);
	return 0;

close_stop:
	atomic_store(&mon.state, MON_STOPPED);
	close(mon.stop_fd);
	mon.stop_fd = -1;
	mon.fd = -1;
close_fd:
	close(fd);
	return rc;
}

static void stop_locked(void)
{
	uint64_t one = 1;

	if (write(mon.stop_fd, &one, sizeof(one)) != (ssize_t)sizeof(one))
		LOG_WARN("rcache: cannot signal the monitor thread to stop: %s", strerror(errno));
	pthread_join(mon.thread, NULL);
	/* Closing the descriptor unregisters whatever is still watched and wakes any waiter. */
	if (!mon.fd_gone)
		close(mon.fd);
	close(mon.stop_fd);
	mon.fd = -1;
	mon.stop_fd = -1;
	atomic_store(&mon.state, MON_STOPPED);
	LOG_DEBUG("rcache: userfaultfd monitor stopped");
}

int rcache_mon_get(char *why, size_t whylen)
{
	int rc = 0;

	rcache_fork_guard_init();
	if (rcache_forked_child()) {
		snprintf(why, whylen, "forked child of a process using the cache");
		return RDAG_EPERM;
	}
	pthread_mutex_lock(&mon.lock);
	if (mon.users == 0) {
		if (atomic_load(&mon.state) == MON_FAILED)
			stop_locked(); /* restart a failed monitor once nobody depends on it */
		rc = start_locked(why, whylen);
	} else if (atomic_load(&mon.state) != MON_RUNNING) {
		snprintf(why, whylen, "the userfaultfd monitor has failed");
		rc = RDAG_EIO;
	}
	if (rc == 0)
		mon.users++;
	pthread_mutex_unlock(&mon.lock);
	return rc;
}

void rcache_mon_put(void)
{
	if (rcache_forked_child())
		return; /* no thread to stop here; the child's mappings are not watched */
	pthread_mutex_lock(&mon.lock);
	if (mon.users > 0 && --mon.users == 0)
		stop_locked();
	pthread_mutex_unlock(&mon.lock);
}

/* ---- watches -------------------------------------------------------------------------------- */

struct gap_state {
	uintptr_t cursor;
	int fd;
};

static void unregister_range(int fd, uintptr_t start, uintptr_t end)
{
	struct uffdio_range r = {.start = start, .len = end - start};

	/* Failure is harmless: a range left registered only routes its missing-page faults
	 * through the handler (resolved like the kernel would) and reports events nobody needs. */
	(void)ioctl(fd, UFFDIO_UNREGISTER, &r);
}

static int unregister_gap(struct rcache_itree_node *n, void *arg)
{
	struct gap_state *g = arg;

	if (n->start > g->cursor)
		unregister_range(g->fd, g->cursor, n->start);
	if (n->end > g->cursor)
		g->cursor = n->end;
	return 0;
}

/* Unregisters the parts of [start, end) no watch covers. Lock held. */
static void unwatch_locked(uintptr_t start, uintptr_t end)
{
	struct gap_state g = {.cursor = start, .fd = mon.fd};

	if (atomic_load(&mon.state) != MON_RUNNING)
		return;
	rcache_itree_walk_overlaps(&mon.watches, start, end, unregister_gap, &g);
	if (g.cursor < end)
		unregister_range(mon.fd, g.cursor, end);
}

int rcache_mon_add(struct rcache_mon_range *r, uintptr_t start, uintptr_t end)
{
	struct uffdio_register reg;
	int rc = 0;

	r->active = 0;
	pthread_mutex_lock(&mon.lock);
	if (atomic_load(&mon.state) != MON_RUNNING) {
		rc = RDAG_EIO;
		goto out;
	}
	/* Pre-fault (zero page for untouched anonymous memory, no allocation) so that first
	 * touches do not each take a round trip through the handler. Best effort, and not for
	 * huge ranges, whose page tables alone would cost more than the faults they save. */
	if (end - start <= POPULATE_MAX)
		(void)madvise((void *)start, end - start, MADV_POPULATE_READ);
	memset(&reg, 0, sizeof(reg));
	reg.range.start = start;
	reg.range.len = end - start;
	reg.mode = UFFDIO_REGISTER_MODE_MISSING;
	if (ioctl(mon.fd, UFFDIO_REGISTER, &reg) != 0) {
		LOG_DEBUG("rcache: cannot watch [%#lx, %#lx): %s", (unsigned long)start,
			  (unsigned long)end, strerror(errno));
		rc = errno == ENOMEM ? RDAG_ENOMEM : RDAG_ENOSYS;
		atomic_fetch_add_explicit(&mon.watch_fail, 1, memory_order_relaxed);
		goto out;
	}
	if ((reg.ioctls & MON_NEEDED_IOCTLS) != MON_NEEDED_IOCTLS) {
		/* e.g. hugetlbfs: no zero page to resolve faults with. */
		LOG_DEBUG("rcache: cannot watch [%#lx, %#lx): faults there cannot be resolved",
			  (unsigned long)start, (unsigned long)end);
		unwatch_locked(start, end);
		rc = RDAG_ENOSYS;
		atomic_fetch_add_explicit(&mon.watch_fail, 1, memory_order_relaxed);
		goto out;
	}
	r->node.start = start;
	r->node.end = end;
	rcache_itree_insert(&mon.watches, &r->node);
	r->active = 1;
out:
	pthread_mutex_unlock(&mon.lock);
	return rc;
}

void rcache_mon_del(struct rcache_mon_range *r)
{
	if (!r->active)
		return;
	pthread_mutex_lock(&mon.lock);
	rcache_itree_remove(&mon.watches, &r->node);
	r->active = 0;
	unwatch_locked(r->node.start, r->node.end);
	pthread_mutex_unlock(&mon.lock);
}

void rcache_mon_unwatch(uintptr_t start, uintptr_t end)
{
	pthread_mutex_lock(&mon.lock);
	unwatch_locked(start, end);
	pthread_mutex_unlock(&mon.lock);
}

int rcache_mon_check(void)
{
	/* UFFDIO_WRITEPROTECT tests mmap_changing before anything else, then rejects the misaligned
	 * range: EAGAIN or EINVAL, without touching the address space (open_uffd checked that this
	 * kernel has it). */
	struct uffdio_writeprotect wp = {.range = {.start = 1, .len = 0}, .mode = 0};

	atomic_fetch_add_explicit(&mon.checks, 1, memory_order_relaxed);
	if (ioctl(mon.fd, UFFDIO_WRITEPROTECT, &wp) != 0 && errno == EINVAL)
		return 0;
	if (errno == EAGAIN) {
		atomic_fetch_add_explicit(&mon.checks_busy, 1, memory_order_relaxed);
		return RDAG_EAGAIN;
	}
	/* The descriptor is not what it was (closed under us?): trust nothing. */
	atomic_fetch_add_explicit(&mon.checks_gone, 1, memory_order_relaxed);
	return RDAG_EIO;
}

/* ---- the event log -------------------------------------------------------------------------- */

uint64_t rcache_mon_sync(void)
{
	uint64_t g = atomic_load(&mon.batch_gen);

	/* A batch in flight may hold the event of an munmap that has already returned: wait for
	 * it (and only it: later batches hold events of calls that returned after ours began). */
	if (g & 1) {
		while (atomic_load(&mon.batch_gen) == g && atomic_load(&mon.state) == MON_RUNNING)
			sched_yield();
	}
	return atomic_load_explicit(&mon.tail, memory_order_acquire);
}

int rcache_mon_read(uint64_t seq, struct rcache_mon_event *ev)
{
	const struct ring_slot *slot = &ring[seq & (RING_SLOTS - 1)];
	uint64_t s1, s2;

	s1 = atomic_load_explicit(&slot->seq, memory_order_acquire);
	if (s1 != seq)
		return RDAG_ENOENT;
	ev->kind = (enum rcache_mon_kind)atomic_load_explicit(&slot->kind, memory_order_relaxed);
	ev->start = (uintptr_t)atomic_load_explicit(&slot->start, memory_order_relaxed);
	ev->end = (uintptr_t)atomic_load_explicit(&slot->end, memory_order_relaxed);
	ev->to = (uintptr_t)atomic_load_explicit(&slot->to, memory_order_relaxed);
	atomic_thread_fence(memory_order_acquire);
	s2 = atomic_load_explicit(&slot->seq, memory_order_relaxed);
	return s2 == seq ? 0 : RDAG_ENOENT;
}

int rcache_mon_failed(void)
{
	return atomic_load(&mon.state) == MON_FAILED;
}

void rcache_mon_get_stats(struct rcache_mon_stats *st)
{
	st->unmap_events = atomic_load(&mon.unmap_events);
	st->remove_events = atomic_load(&mon.remove_events);
	st->remap_events = atomic_load(&mon.remap_events);
	st->lost_events = atomic_load(&mon.lost_events);
	st->faults = atomic_load(&mon.faults);
	st->faults_zero = atomic_load(&mon.faults_zero);
	st->faults_woken = atomic_load(&mon.faults_woken);
	st->watch_fail = atomic_load(&mon.watch_fail);
	st->checks = atomic_load(&mon.checks);
	st->checks_busy = atomic_load(&mon.checks_busy);
	st->checks_gone = atomic_load(&mon.checks_gone);
	pthread_mutex_lock(&mon.lock);
	st->watched = mon.watches.count;
	st->running = atomic_load(&mon.state) == MON_RUNNING;
	pthread_mutex_unlock(&mon.lock);
}
