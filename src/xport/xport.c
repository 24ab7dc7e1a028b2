/* Transport life cycle and progress: options, open with handshakes, completion dispatch, keepalive, failure. */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bootstrap/boot.h"
#include "util/envsize.h"
#include "xport/xport_int.h"

#define DEF_ARENA ((size_t)8 << 20)
#define DEF_INLINE 4096u
#define DEF_EAGER ((size_t)2 << 20)
#define DEF_MSG 8192u
#define DEF_CREDITS 64u
#define DEF_SEND_DEPTH 256u
#define DEF_TIMEOUT_MS 30000
#define DEF_BUSY_US 1000
#define SPIN_NS 20000u /* of the busy-poll window, spent spinning without yielding */
#define DEF_IDLE_SLEEP_US 100
#define DEF_RDV_CACHE ((size_t)64 << 20)
#define DEF_WRITE_WINDOW ((size_t)8 << 20)
#define MIN_WRITE_CHUNK ((size_t)64 << 10)
#define OPEN_TIMEOUT_MIN_MS 30000
#define EV_BATCH 32
#define POLL_BATCH 16

uint64_t xport_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t xport_coarse_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- options --------------------------------------------------------------------------------- */

void xport_opts_init(struct xport_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->arena_size = rdag_env_size("RDAG_ARENA_SIZE", DEF_ARENA, 0, (size_t)1 << 36);
	o->inline_max = rdag_env_size("RDAG_INLINE_MAX", DEF_INLINE, 0, (size_t)1 << 24);
	o->eager_max = rdag_env_size("RDAG_EAGER_MAX", DEF_EAGER, 0, (size_t)1 << 36);
	o->msg_max = rdag_env_size("RDAG_MSG_MAX", DEF_MSG, 256, (size_t)1 << 24);
	o->credits = (uint32_t)rdag_env_size("RDAG_CREDITS", DEF_CREDITS, 3, 65535);
	o->send_depth = (uint32_t)rdag_env_size("RDAG_SEND_DEPTH", DEF_SEND_DEPTH, 1, 1u << 20);
	o->peer_timeout_ms = (int)rdag_env_size("RDAG_PEER_TIMEOUT_MS", DEF_TIMEOUT_MS, 10, 86400000);
	o->busy_poll_us = (int)rdag_env_size("RDAG_BUSY_POLL_US", DEF_BUSY_US, 0, 10000000);
	o->idle_sleep_us = (int)rdag_env_size("RDAG_IDLE_SLEEP_US", DEF_IDLE_SLEEP_US, 0, 100000);
	o->open_timeout_ms = 0;
	o->rdv_cache = rdag_env_size("RDAG_RDV_CACHE", DEF_RDV_CACHE, 0, (size_t)1 << 40);
	o->write_window = rdag_env_size("RDAG_WRITE_WINDOW", DEF_WRITE_WINDOW, 0, (size_t)1 << 40);
}

static uint32_t npeers_of(uint32_t world)
{
	return world > 1 ? world - 1 : 1;
}

void xport_fab_opts(const struct xport_opts *o, uint32_t world, uint32_t rank,
		    struct fab_open_opts *fo)
{
	uint32_t np = npeers_of(world);

	fo->world_size = world;
	fo->rank = rank;
	fo->rx_depth = (size_t)(o->credits + XP_EXTRA_RECV) * np;
	fo->tx_depth = (size_t)o->send_depth + 4 * (size_t)np + 64u + (size_t)o->credits * np;
}

/* ---- failure ------------------------------------------------------------------------------- */

int xport_peer_err(struct xp_peer *p)
{
	return err_set(RDAG_EPEER_DEAD, "%s", p->why);
}

void xport_peer_fail(struct xport *x, struct xp_peer *p, int code, const char *fmt, ...)
{
	char reason[200];
	va_list ap;

	if (p->state == XP_PEER_DEAD)
		return;
	va_start(ap, fmt);
	vsnprintf(reason, sizeof(reason), fmt, ap);
	va_end(ap);
	snprintf(p->why, sizeof(p->why), "peer %u (%s) is dead or unreachable: %s", p->rank, p->name,
		 reason);
	LOG_WARN("xport: %s", p->why);
	p->state = XP_PEER_DEAD;
	p->ping_due = p->pong_due = 0;
	p->nrefusals = 0;
	while (p->bl_head) {
		struct xp_op *op = p->bl_head;

		p->bl_head = op->next;
		op->next = NULL;
		op->queued = 0;
		if (op->kind == XOP_USER)
			xport_op_fail(x, op, RDAG_EPEER_DEAD);
		else
			xport_op_check(x, op);
	}
	p->bl_tail = NULL;
	while (p->rdv_ops) {
		struct xp_op *op = p->rdv_ops;

		p->rdv_ops = op->rnext;
		op->rnext = NULL;
		op->in_rdv = 0;
		xport_op_fail(x, op, RDAG_EPEER_DEAD);
	}
	for (uint32_t i = 0; i < x->nuser; i++) {
		struct xp_op *op = &x->ops[i];

		if (op->peer == p && op->cb_state == 0)
			xport_op_fail(x, op, RDAG_EPEER_DEAD);
	}
	xport_recv_peer_dead(x, p);
	(void)code;
	if (!p->dead_event) {
		p->dead_event = 1;
		p->dead_next = x->dead_events;
		x->dead_events = p;
	}
}

/* ---- events: callbacks run without the lock -------------------------------------------------- */

struct ev_batch {
	unsigned ndone, nrx, ndead;
	struct {
		xport_done_fn fn;
		void *arg;
		int status;
		const char *why;
	} done[EV_BATCH];
	struct xp_recv *rx[EV_BATCH];
	struct {
		uint32_t rank;
		const char *why;
	} dead[EV_BATCH];
	int more;
};

/* Takes up to EV_BATCH events of each kind off the lists. Lock held. */
static void collect(struct xport *x, struct ev_batch *b)
{
	b->ndone = b->nrx = b->ndead = 0;
	while (x->done_head && b->ndone < EV_BATCH) {
		struct xp_op *op = x->done_head;

		x->done_head = op->next;
		if (!x->done_head)
			x->done_tail = NULL;
		op->next = NULL;
		b->done[b->ndone].fn = op->done;
		b->done[b->ndone].arg = op->done_arg;
		b->done[b->ndone].status = op->status;
		b->done[b->ndone].why = op->status == RDAG_EPEER_DEAD ? op->peer->why
					: op->status == RDAG_ECANCELED ? "xport: closed before the send finished"
								       : "xport: send failed";
		b->ndone++;
		op->cb_state = 2;
		xport_op_check(x, op);
	}
	while (x->deliver_head && b->nrx < EV_BATCH) {
		struct xp_recv *r = x->deliver_head;

		x->deliver_head = r->next;
		if (!x->deliver_head)
			x->deliver_tail = NULL;
		r->next = NULL;
		r->state = XRS_USER;
		b->rx[b->nrx++] = r;
	}
	while (x->dead_events && b->ndead < EV_BATCH) {
		struct xp_peer *p = x->dead_events;

		x->dead_events = p->dead_next;
		p->dead_next = NULL;
		b->dead[b->ndead].rank = p->rank;
		b->dead[b->ndead].why = p->why;
		b->ndead++;
	}
	b->more = x->done_head || x->deliver_head || x->dead_events;
}

static int fire(struct xport *x, const struct ev_batch *b)
{
	for (unsigned i = 0; i < b->ndead; i++)
		if (x->o.on_peer_dead)
			x->o.on_peer_dead(x->o.peer_arg, b->dead[i].rank, RDAG_EPEER_DEAD, b->dead[i].why);
	for (unsigned i = 0; i < b->ndone; i++) {
		if (b->done[i].status)
			err_set(b->done[i].status, "%s", b->done[i].why);
		b->done[i].fn(b->done[i].arg, b->done[i].status);
	}
	for (unsigned i = 0; i < b->nrx; i++)
		x->o.on_recv(x->o.recv_arg, &b->rx[i]->rx);
	return (int)(b->ndead + b->ndone + b->nrx);
}

/* ---- progress -------------------------------------------------------------------------------- */

static void dispatch(struct xport *x, const struct fab_cqe *c)
{
	uintptr_t v = (uintptr_t)c->context;
	void *obj = (void *)(v & ~(uintptr_t)XP_CTX_MASK);

	if (!c->context) {
		/* Not ours to attribute (a failed injection, a write-with-imm we never ask for). */
		if (c->status < 0 && c->peer != FAB_PEER_UNKNOWN && c->peer < x->world &&
		    c->peer != x->rank)
			xport_peer_fail(x, &x->peers[c->peer], RDAG_EPEER_DEAD, "%s (%s)",
					rdag_strerror(c->status), c->errmsg);
		else if (c->status < 0)
			LOG_WARN("xport: completion error without context: %s (%s)",
				 rdag_strerror(c->status), c->errmsg);
		return;
	}
	if (c->op == FAB_OP_REMOTE_WRITE) {
		/* We never write with immediate data; a peer that does used up a receive buffer. */
		LOG_WARN("xport: unexpected write with immediate data from peer %u; ignored", c->peer);
		if ((v & XP_CTX_MASK) == XP_CTX_RECV) {
			struct xp_recv *r = obj;

			x->posted--;
			r->state = XRS_IDLE;
			r->next = x->repost;
			x->repost = r;
		}
		return;
	}
	switch (v & XP_CTX_MASK) {
	case XP_CTX_SEND:
		xport_send_done(x, obj, c->status, c->errmsg);
		break;
	case XP_CTX_WRITE:
		xport_write_done(x, obj, c->status, c->errmsg);
		break;
	case XP_CTX_RECV:
		xport_recv_done(x, obj, c);
		break;
	default:
		LOG_WARN("xport: completion with a foreign context %p", c->context);
		break;
	}
}

/* Keepalives and silence. Lock held. */
static void timers(struct xport *x, uint64_t now)
{
	if (now - x->timer_ns < x->ka_ns / 8)
		return;
	x->timer_ns = now;
	/*
	 * While opening, a peer that finished its handshakes sits in the bootstrap barrier and
	 * answers nothing: the open deadline and the bootstrap judge it then, not the liveness
	 * timeout (every clock restarts when the open completes).
	 */
	for (uint32_t i = 0; x->open && i < x->world; i++) {
		struct xp_peer *p = &x->peers[i];
		uint64_t silent;

		if (i == x->rank || p->state != XP_PEER_UP)
			continue;
		silent = now > p->last_rx_ns ? now - p->last_rx_ns : 0;
		if ((p->ping_out || p->ping_due) && silent >= x->timeout_ns) {
			xport_peer_fail(x, p, RDAG_EPEER_DEAD, "nothing heard from it for %llu ms, "
					"keepalive %s (RDAG_PEER_TIMEOUT_MS=%d)",
					(unsigned long long)(silent / 1000000u),
					p->ping_out ? "unanswered" : "could not be sent", x->o.peer_timeout_ms);
		} else if (!p->ping_out && silent >= x->ka_ns) {
			p->ping_due = 1;
			xport_dirty(x, p);
		}
	}
	rcache_progress(x->rc);
}

/* One pass: completions, reposts, pending posts, timers. Lock held. Returns completions or < 0. */
static int pass(struct xport *x, uint64_t now)
{
	struct fab_cqe cqe[POLL_BATCH];
	int total = 0, n;

	do {
		n = fab_poll(x->ep, cqe, POLL_BATCH);
		if (n < 0)
			return n;
		for (int i = 0; i < n; i++)
			dispatch(x, &cqe[i]);
		total += n;
	} while (n == POLL_BATCH && total < 4 * POLL_BATCH);
	if (x->repost)
		xport_post_receives(x);
	if (x->dirty)
		xport_flush(x);
	timers(x, now);
	return total;
}

/* Before blocking: arena tails not yet reported go out, so a sender never waits on a stale view. */
static void idle_tails(struct xport *x)
{
	for (uint32_t i = 0; i < x->world; i++) {
		struct xp_peer *p = &x->peers[i];

		if (i != x->rank && p->state == XP_PEER_UP && p->ain.tail != p->ain.reported) {
			p->rdv_hint = 1;
			xport_dirty(x, p);
		}
	}
	if (x->dirty)
		xport_flush(x);
}

int xport_progress(struct xport *x, int timeout_ms)
{
	uint64_t now = 0, deadline = 0, spin_end = 0, nap_ns = 0;
	int total = 0;

	for (;;) {
		struct ev_batch b;
		int n, busy = 0;

		xp_lock(x);
		x->now = xport_coarse_ns();
		n = pass(x, x->now);
		if (n < 0) {
			xp_unlock(x);
			return err_set(n, "xport: polling completions: %s", rdag_last_error());
		}
		if (!x->done_head && !x->deliver_head && !x->dead_events) {
			xp_unlock(x); /* the common case of an empty poll: no events to run */
		} else {
			do {
				collect(x, &b);
				xp_unlock(x);
				total += fire(x, &b);
				if (b.more)
					xp_lock(x);
			} while (b.more);
		}
		total += n;
		if (x->o.poll_extra)
			total += x->o.poll_extra(x->o.poll_arg, &busy);
		if (total || timeout_ms == 0)
			return total;
		now = xport_now_ns();
		if (!deadline) {
			deadline = timeout_ms < 0 ? UINT64_MAX : now + (uint64_t)timeout_ms * 1000000u;
			spin_end = now + (uint64_t)x->o.busy_poll_us * 1000u;
		}
		if (now >= deadline)
			return 0;
		if (busy) {
			/*
			 * Work without a completion queue to wait on is pending: poll it again. Arena
			 * tails are reported once a busy-poll window, as an idle loop would.
			 */
			if (now >= spin_end) {
				xp_lock(x);
				idle_tails(x);
				xp_unlock(x);
				spin_end = now + (uint64_t)x->o.busy_poll_us * 1000u;
			}
			sched_yield();
			nap_ns = 0;
			continue;
		}
		if (now < spin_end) {
			/*
			 * Spin the first SPIN_NS (a ping-pong's answer comes within them), then yield
			 * between polls: with more busy threads than CPUs, a spinning poller would
			 * hold a CPU the threads doing the work need (a 4-worker backward chain on 2
			 * CPUs ran a pass 3x faster yielding than spinning a window of 1 ms).
			 */
			if (now >= spin_end - (uint64_t)x->o.busy_poll_us * 1000u + SPIN_NS)
				sched_yield();
			continue;
		}
		/* Nothing for a while: report arena tails, then block (or yield without a wait fd). */
		xp_lock(x);
		idle_tails(x);
		if (!(x->attr->caps & FAB_CAP_WAIT_FD)) {
			/*
			 * No fd to sleep on (shm): nap, doubling up to idle_sleep_us, rather than
			 * spin. A spinning idle worker takes a CPU from the ones doing the work
			 * (several workers per host, handler threads copying gradients).
			 */
			static _Thread_local bool slack_set;
			struct timespec ts;

			xp_unlock(x);
			if (!x->o.idle_sleep_us ||
			    (x->o.expecting && x->o.expecting(x->o.expect_arg))) {
				sched_yield();
				nap_ns = 0;
				continue;
			}
			if (!slack_set) {
				/*
				 * Linux rounds a thread's sleeps up by its timer slack (50 µs by
				 * default): the 5 µs first nap would be 55. This thread polls a
				 * fabric: let its naps be as short as asked.
				 */
				(void)prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
				slack_set = true;
			}
			nap_ns = nap_ns ? 2 * nap_ns : 5000u;
			if (nap_ns > (uint64_t)x->o.idle_sleep_us * 1000u)
				nap_ns = (uint64_t)x->o.idle_sleep_us * 1000u;
			if (nap_ns > deadline - now)
				nap_ns = deadline - now;
			ts.tv_sec = 0;
			ts.tv_nsec = (long)nap_ns;
			nanosleep(&ts, NULL); /* short: new poll_extra work waits one nap at most */
			continue;
		}
		{
			int arm = fab_arm(x->ep), fd = fab_wait_fd(x->ep);
			uint64_t wait_ns = deadline - now;
			struct pollfd pfd[2];
			nfds_t nfd = 1;

			xp_unlock(x);
			if (arm == RDAG_EAGAIN)
				continue;
			if (arm < 0 || fd < 0)
				return err_set(arm < 0 ? arm : fd, "xport: cannot block on the endpoint: %s",
					       rdag_last_error());
			if (wait_ns > x->ka_ns / 8)
				wait_ns = x->ka_ns / 8;
			pfd[0].fd = fd;
			pfd[0].events = POLLIN;
			pfd[0].revents = 0;
			if (x->wake_fd >= 0) {
				pfd[1].fd = x->wake_fd;
				pfd[1].events = POLLIN;
				pfd[1].revents = 0;
				nfd = 2;
			}
			atomic_fetch_add(&x->sleeping, 1);
			/* Work that came for poll_extra just before we announced the wait: run it. */
			if (x->o.poll_extra) {
				int k = x->o.poll_extra(x->o.poll_arg, &busy);

				if (k || busy) {
					atomic_fetch_sub(&x->sleeping, 1);
					total += k;
					continue;
				}
			}
			(void)poll(pfd, nfd, (int)(wait_ns / 1000000u) + 1);
			atomic_fetch_sub(&x->sleeping, 1);
			if (nfd == 2 && (pfd[1].revents & POLLIN)) {
				uint64_t v;

				(void)!read(x->wake_fd, &v, sizeof(v));
			}
		}
	}
}

void xport_wake(struct xport *x)
{
	uint64_t one = 1;

	if (x && x->wake_fd >= 0 && atomic_load(&x->sleeping) > 0)
		(void)!write(x->wake_fd, &one, sizeof(one));
}

/* ---- open / close ---------------------------------------------------------------------------- */

static uint64_t fnv1a(const char *s)
{
	uint64_t h = 0xcbf29ce484222325ull;

	for (; s && *s; s++) {
		h ^= (uint8_t)*s;
		h *= 0x100000001b3ull;
	}
	return h;
}

static int setup_pools(struct xport *x)
{
	uint32_t np = npeers_of(x->world);
	size_t msg = x->o.msg_max, i;
	int rc;

	/* Receive pool: credits + ping + pong per peer. */
	x->nrx = (x->credits + XP_EXTRA_RECV) * np;
	x->rx_mem_len = (size_t)x->nrx * msg;
	x->rx = calloc(x->nrx, sizeof(*x->rx));
	if (!x->rx || posix_memalign((void **)&x->rx_mem, 4096, x->rx_mem_len))
		return err_set(RDAG_ENOMEM, "xport: no memory for %u receive buffers", x->nrx);
	memset(x->rx_mem, 0, x->rx_mem_len);
	rc = fab_mr_reg(x->ep, x->rx_mem, x->rx_mem_len, FAB_ACCESS_LOCAL, &x->rx_mr);
	if (rc)
		return rc;
	x->rx_registered = 1;
	for (i = 0; i < x->nrx; i++) {
		struct xp_recv *r = &x->rx[i];

		r->buf = x->rx_mem + i * msg;
		r->desc = x->rx_mr.desc;
		r->next = x->repost;
		x->repost = r;
	}

	/* Send ops: the callers' pool, then the transport's own for control messages. */
	x->nuser = x->o.send_depth;
	x->nctl = 8u * np + 32u;
	x->tx_mem_len = (size_t)x->nuser * msg + (size_t)x->nctl * XP_CTL_BUF;
	x->ops = calloc((size_t)x->nuser + x->nctl, sizeof(*x->ops));
	if (!x->ops || posix_memalign((void **)&x->tx_mem, 4096, x->tx_mem_len))
		return err_set(RDAG_ENOMEM, "xport: no memory for %u send buffers", x->nuser + x->nctl);
	memset(x->tx_mem, 0, x->tx_mem_len);
	rc = fab_mr_reg(x->ep, x->tx_mem, x->tx_mem_len, FAB_ACCESS_LOCAL, &x->tx_mr);
	if (rc)
		return rc;
	x->tx_registered = 1;
	for (i = x->nuser + x->nctl; i-- > 0;) {
		struct xp_op *op = &x->ops[i];

		op->t = op->t_small;
		op->desc = x->tx_mr.desc;
		if (i < x->nuser) {
			op->kind = XOP_USER;
			op->buf = x->tx_mem + i * msg;
			op->cap = msg;
			op->next = x->user_free;
			x->user_free = op;
		} else {
			op->kind = XOP_CTL;
			op->buf = x->tx_mem + (size_t)x->nuser * msg + (i - x->nuser) * XP_CTL_BUF;
			op->cap = XP_CTL_BUF;
			op->next = x->ctl_free;
			x->ctl_free = op;
		}
	}
	return 0;
}

/* Address exchange through the bootstrap, then fab_connect. */
static int connect_all(struct xport *x, struct boot *b)
{
	uint8_t addr[1024];
	size_t len = sizeof(addr);
	struct boot_gather g;
	int rc;

	rc = fab_name(x->ep, addr, &len);
	if (rc)
		return rc;
	rc = boot_allgather(b, addr, len, &g);
	if (rc)
		return rc;
	if (g.n != x->world)
		return err_set(RDAG_EINVAL, "xport: %u addresses gathered for %u workers", g.n, x->world);
	return fab_connect(x->ep, x->world, g.blobs, g.lens, x->o.open_timeout_ms);
}

/* Handshakes with every peer; every peer's handshake seen and ours answered, pongs sent. */
static int handshake_all(struct xport *x)
{
	uint64_t deadline = xport_now_ns() + (uint64_t)x->o.open_timeout_ms * 1000000u;

	for (;;) {
		struct ev_batch b;
		uint64_t now = xport_now_ns();
		uint32_t waiting = 0, i;
		int n;

		xp_lock(x);
		x->now = xport_coarse_ns();
		for (i = 0; i < x->world; i++) {
			struct xp_peer *p = &x->peers[i];

			if (i == x->rank || p->state == XP_PEER_DEAD)
				continue;
			if (!p->hs_sent) {
				int rc = xport_send_hs(x, p, 0);

				if (rc == 0) {
					p->hs_sent = 1;
					p->ping_out = 1;
					p->ping_ns = now;
				} else if (rc != RDAG_EAGAIN) {
					xp_unlock(x);
					return rc;
				}
			}
		}
		n = pass(x, x->now);
		for (i = 0; i < x->world; i++) {
			struct xp_peer *p = &x->peers[i];

			if (i == x->rank)
				continue;
			if (p->state == XP_PEER_DEAD) {
				int rc = err_set(RDAG_EPEER_DEAD, "xport: %s", p->why);

				if (strstr(p->why, "another job"))
					rc = err_set(RDAG_EACCES, "xport: %s", p->why);
				xp_unlock(x);
				return rc;
			}
			/*
			 * Done with p once our handshake was answered AND its handshake arrived and
			 * was answered: a peer that only saw our answer may still need us to answer
			 * its own (delayed by a connection being set up), so we keep progressing.
			 */
			if (!p->hs_seen || !p->ping_seen || p->ping_out || p->pong_due)
				waiting++;
		}
		if (!waiting && x->ctl_inuse == 0) {
			xp_unlock(x);
			return 0;
		}
		if (now > deadline) {
			char names[256];
			size_t off = 0;

			names[0] = '\0';
			for (i = 0; i < x->world && off < sizeof(names) - 32; i++) {
				struct xp_peer *p = &x->peers[i];

				if (i != x->rank && (!p->ping_seen || p->ping_out))
					off += (size_t)snprintf(names + off, sizeof(names) - off, "%s%u (%s)",
								off ? ", " : "", i, p->name);
			}
			xp_unlock(x);
			return err_set(RDAG_ETIMEDOUT, "xport: no handshake within %d ms from peer%s %s",
				       x->o.open_timeout_ms, strchr(names, ',') ? "s" : "",
				       names[0] ? names : "(all answered; our answers still in flight)");
		}
		if (n < 0) {
			xp_unlock(x);
			return n;
		}
		do {
			collect(x, &b);
			xp_unlock(x);
			fire(x, &b);
			if (b.more)
				xp_lock(x);
		} while (b.more);
		if (n == 0)
			sched_yield();
	}
}

static void teardown(struct xport *x);

int xport_open(const struct xport_opts *o, struct boot *b, struct fab_ep *ep, struct xport **out)
{
	struct xport *x;
	uint32_t np;
	int rc;

	*out = NULL;
	if (!o || !b || !ep || !o->on_recv) {
		if (ep)
			fab_close(ep);
		return err_set(RDAG_EINVAL, "xport_open: options, bootstrap, endpoint and a receive "
			       "callback are required");
	}
	if (o->offer & ~(WIRE_HS_NCCL | WIRE_HS_ARENA_GPU)) {
		fab_close(ep);
		return err_set(RDAG_EINVAL, "xport_open: offer 0x%x has bits other than NCCL (0x%x) "
			       "and GPU arena (0x%x)", o->offer, WIRE_HS_NCCL, WIRE_HS_ARENA_GPU);
	}
	if (boot_world(b) > 65535) {
		fab_close(ep);
		return err_set(RDAG_ERANGE, "xport_open: %u workers (worker ids are 16 bits)",
			       boot_world(b));
	}
	x = calloc(1, sizeof(*x));
	if (!x) {
		fab_close(ep);
		return err_set(RDAG_ENOMEM, "xport_open: no memory");
	}
	x->o = *o;
	x->ep = ep;
	/* Without an eventfd, a wait for poll_extra work ends with the provider's next event. */
	x->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	x->attr = fab_attr(ep);
	x->rank = boot_rank(b);
	x->world = boot_world(b);
	np = npeers_of(x->world);
	if (x->attr->caps & FAB_CAP_ORDER_SAW) {
		x->vis = XP_VIS_SAW;
	} else if (x->attr->caps & FAB_CAP_WRITE_DELIVERED) {
		x->vis = XP_VIS_DELIVERED;
	} else {
		rc = err_set(RDAG_ENOSYS, "xport: provider %s (%s) promises neither send-after-write "
			     "ordering nor delivery-complete writes", x->attr->provider,
			     x->attr->fabric_name);
		goto fail;
	}
	x->st.visibility = x->vis == XP_VIS_SAW ? "order-saw" : "write-delivered";
	/* Sanity of the options. */
	x->o.msg_max = (x->o.msg_max + XP_GRAN - 1) & ~(size_t)(XP_GRAN - 1);
	if (x->o.msg_max < 256)
		x->o.msg_max = 256;
	if (x->attr->max_msg_size && x->o.msg_max > x->attr->max_msg_size)
		x->o.msg_max = x->attr->max_msg_size & ~(size_t)(XP_GRAN - 1);
	if (x->o.inline_max > x->o.msg_max)
		x->o.inline_max = x->o.msg_max;
	if (x->o.eager_max > x->o.arena_size)
		x->o.eager_max = x->o.arena_size;
	if (x->o.send_depth == 0)
		x->o.send_depth = DEF_SEND_DEPTH;
	if (x->o.peer_timeout_ms < 10)
		x->o.peer_timeout_ms = DEF_TIMEOUT_MS;
	/*
	 * Opening waits for every peer's endpoint to come up and answer, which on a loaded host
	 * (TSan, 2 CPUs, network namespaces) took longer than a short liveness timeout such as the
	 * fault tests' 2 s. At least 30 s then; a peer that dies meanwhile is seen by the bootstrap.
	 */
	if (x->o.open_timeout_ms <= 0)
		x->o.open_timeout_ms = x->o.peer_timeout_ms > OPEN_TIMEOUT_MIN_MS ?
				       x->o.peer_timeout_ms : OPEN_TIMEOUT_MIN_MS;
	x->credits = x->o.credits < 3 ? 3 : x->o.credits > 65535 ? 65535 : x->o.credits;
	if (x->attr->max_recv_posted &&
	    (size_t)(x->credits + XP_EXTRA_RECV) * np > x->attr->max_recv_posted) {
		size_t c = x->attr->max_recv_posted / np;

		if (c < 3 + XP_EXTRA_RECV) {
			rc = err_set(RDAG_ENOSPC, "xport: the endpoint holds %zu posted receives: too few "
				     "for %u peers (size it with xport_fab_opts)",
				     x->attr->max_recv_posted, np);
			goto fail;
		}
		LOG_INFO("xport: %u credits per peer (the endpoint holds %zu receives)",
			 (unsigned)(c - XP_EXTRA_RECV), x->attr->max_recv_posted);
		x->credits = (uint32_t)(c - XP_EXTRA_RECV);
	}
	x->credit_thresh = x->credits / 2 < 2 ? 2 : x->credits / 2;
	x->st.credits = x->credits;
	x->can_inject = (x->attr->caps & FAB_CAP_INJECT) && x->attr->inject_size > 0;
	x->inject_size = x->attr->inject_size;
	x->max_write = x->attr->max_write_size ? x->attr->max_write_size : SIZE_MAX;
	/*
	 * The write window: a big tensor goes as chunks of a quarter of the window, at most a window
	 * of them in flight per peer. On providers that queue a peer's operations in order (a TCP
	 * stream, a verbs send queue), a keepalive answer or a control message then waits behind at
	 * most a window of data, not behind a whole tensor (docs/transport.md).
	 */
	x->write_window = x->o.write_window;
	if (x->write_window) {
		size_t chunk = x->write_window / 4 > MIN_WRITE_CHUNK ? x->write_window / 4 : MIN_WRITE_CHUNK;

		if (chunk < x->max_write)
			x->max_write = chunk;
	}
	x->st.write_window = x->write_window;
	x->st.write_chunk = x->max_write;
	x->timeout_ns = (uint64_t)x->o.peer_timeout_ms * 1000000u;
	x->ka_ns = x->timeout_ns / 4;
	x->job_token = fnv1a(boot_job_token(b));
	x->now = x->timer_ns = xport_coarse_ns();

	x->peers = calloc(x->world, sizeof(*x->peers));
	if (!x->peers) {
		rc = err_set(RDAG_ENOMEM, "xport: no memory for %u peers", x->world);
		goto fail;
	}
	for (uint32_t i = 0; i < x->world; i++) {
		struct xp_peer *p = &x->peers[i];
		const char *name = boot_name(b, i);

		p->rank = i;
		p->max_msg = WIRE_HDR_SIZE;
		p->last_rx_ns = x->timer_ns;
		snprintf(p->name, sizeof(p->name), "%s", name ? name : "?");
	}
	{
		struct rcache_attr ra;

		rcache_attr_init(&ra, rcache_fab_reg, rcache_fab_dereg, ep);
		ra.name = "xport";
		rc = rcache_create(&ra, &x->rc);
		if (rc)
			goto fail;
		x->own_rcache = 1;
	}
	rc = setup_pools(x);
	if (rc)
		goto fail;
	for (uint32_t i = 0; i < x->world; i++) {
		if (i == x->rank || !x->o.arena_size)
			continue;
		rc = xport_arena_create(x, &x->peers[i].ain, x->o.arena_size);
		if (rc)
			goto fail;
	}
	rc = connect_all(x, b);
	if (rc)
		goto fail;
	xport_post_receives(x);
	if (x->posted != x->nrx) {
		rc = err_set(RDAG_ENOSPC, "xport: the endpoint took %u of %u receive buffers",
			     x->posted, x->nrx);
		goto fail;
	}
	/* Everyone's receives are posted before anyone sends. */
	rc = boot_barrier(b);
	if (rc)
		goto fail;
	rc = handshake_all(x);
	if (rc)
		goto fail;
	/* No user message leaves before every worker has finished its handshakes. */
	rc = boot_barrier(b);
	if (rc)
		goto fail;
	xp_lock(x);
	x->open = 1;
	x->st.posted_total = x->nrx;
	x->st.posted_min = x->posted;
	x->now = xport_coarse_ns();
	for (uint32_t i = 0; i < x->world; i++)
		x->peers[i].last_rx_ns = x->now;
	xp_unlock(x);
	LOG_INFO("xport: worker %u of %u up on %s/%s (%s): %u credits per peer, arena %zu, inline "
		 "<= %zu, eager <= %zu, messages <= %zu", x->rank, x->world, x->attr->provider,
		 x->attr->fabric_name, x->st.visibility, x->credits, x->o.arena_size,
		 x->o.inline_max, x->o.eager_max, x->o.msg_max);
	*out = x;
	return 0;
fail:
	/*
	 * The endpoint goes too: it may hold receives posted into our buffers, which a NIC could
	 * still write into once they are freed.
	 */
	teardown(x);
	return rc;
}

/* Frees everything and closes the endpoint. */
static void teardown(struct xport *x)
{
	x->closing = 1;
	if (x->wake_fd >= 0)
		close(x->wake_fd);
	x->wake_fd = -1;
	if (x->rx) {
		for (uint32_t i = 0; i < x->nrx; i++) {
			struct xp_recv *r = &x->rx[i];

			if (r->state != XRS_IDLE && r->state != XRS_POSTED)
				xport_recv_free(x, r);
		}
	}
	if (x->ops) {
		for (uint32_t i = 0; i < x->nuser + x->nctl; i++)
			if (x->ops[i].peer)
				xport_op_free(x, &x->ops[i]);
	}
	if (x->own_rcache && x->rc) {
		int rc = rcache_destroy(x->rc);

		if (rc)
			LOG_WARN("xport: registration cache not destroyed: %s", rdag_last_error());
	}
	x->rc = NULL;
	xport_rdv_cache_drain(x);
	if (x->peers)
		for (uint32_t i = 0; i < x->world; i++)
			xport_arena_destroy(x, &x->peers[i].ain);
	if (x->rx_registered)
		(void)fab_mr_dereg(x->ep, &x->rx_mr);
	if (x->tx_registered)
		(void)fab_mr_dereg(x->ep, &x->tx_mr);
	if (x->ep)
		fab_close(x->ep);
	if (x->peers)
		for (uint32_t i = 0; i < x->world; i++)
			xport_arena_unmap(&x->peers[i].ain);
	free(x->rx_mem);
	free(x->rx);
	free(x->tx_mem);
	free(x->ops);
	free(x->peers);
	free(x);
}

/* True while a send to a live peer is still queued or in flight. Lock held. */
static bool sends_pending(struct xport *x)
{
	for (uint32_t i = 0; i < x->nuser + x->nctl; i++) {
		const struct xp_op *op = &x->ops[i];

		if (op->peer && op->peer->state != XP_PEER_DEAD &&
		    (op->queued || op->in_rdv || op->send_out || op->writes_out))
			return true;
	}
	return false;
}

void xport_close(struct xport *x)
{
	struct ev_batch b;
	uint64_t deadline;

	if (!x)
		return;
	/*
	 * Let what is already queued or in flight leave first (bounded): a message posted just
	 * before closing may still need our progress to go out (manual-progress providers).
	 */
	deadline = xport_now_ns() + XP_CLOSE_DRAIN_MS * 1000000ull;
	for (;;) {
		bool pending;

		xp_lock(x);
		pending = sends_pending(x);
		xp_unlock(x);
		if (!pending || xport_now_ns() > deadline)
			break;
		if (xport_progress(x, 1) < 0)
			break;
	}
	xp_lock(x);
	x->closing = 1;
	for (uint32_t i = 0; i < x->world; i++) {
		struct xp_peer *p = &x->peers[i];

		while (p->bl_head) {
			struct xp_op *op = p->bl_head;

			p->bl_head = op->next;
			op->next = NULL;
			op->queued = 0;
		}
		p->bl_tail = NULL;
		while (p->rdv_ops) {
			struct xp_op *op = p->rdv_ops;

			p->rdv_ops = op->rnext;
			op->rnext = NULL;
			op->in_rdv = 0;
		}
	}
	for (uint32_t i = 0; i < x->nuser; i++)
		if (x->ops[i].peer && x->ops[i].cb_state == 0)
			xport_op_fail(x, &x->ops[i], RDAG_ECANCELED);
	/* Messages not yet delivered are dropped; dead-peer events are not reported any more. */
	while (x->deliver_head) {
		struct xp_recv *r = x->deliver_head;

		x->deliver_head = r->next;
		xport_recv_free(x, r);
	}
	x->deliver_tail = NULL;
	x->dead_events = NULL;
	do {
		collect(x, &b);
		xp_unlock(x);
		fire(x, &b);
		xp_lock(x);
	} while (b.more);
	xp_unlock(x);
	teardown(x);
}

/* ---- introspection --------------------------------------------------------------------------- */

uint32_t xport_rank(const struct xport *x)
{
	return x->rank;
}

uint32_t xport_world(const struct xport *x)
{
	return x->world;
}

const char *xport_peer_name(const struct xport *x, uint32_t peer)
{
	return peer < x->world ? x->peers[peer].name : "?";
}

int xport_peer_offer(struct xport *x, uint32_t peer, uint16_t *flags)
{
	if (peer >= x->world)
		return err_set(RDAG_EINVAL, "xport: no peer %u in a world of %u", peer, x->world);
	if (peer == x->rank) {
		*flags = x->o.offer;
		return 0;
	}
	xp_lock(x);
	*flags = x->peers[peer].offer;
	xp_unlock(x);
	return 0;
}

int xport_peer_dead(struct xport *x, uint32_t peer)
{
	int dead;

	if (peer >= x->world)
		return 0;
	xp_lock(x);
	dead = x->peers[peer].state == XP_PEER_DEAD;
	xp_unlock(x);
	return dead;
}

struct rcache *xport_rcache(struct xport *x)
{
	return x->rc;
}

void xport_get_stats(struct xport *x, struct xport_stats *st)
{
	xp_lock(x);
	*st = x->st;
	xp_unlock(x);
}

int xport_test_arena(struct xport *x, uint32_t peer, void **base, size_t *size)
{
	if (peer >= x->world || peer == x->rank)
		return err_set(RDAG_EINVAL, "xport: no peer %u", peer);
	*base = x->peers[peer].ain.base;
	*size = x->peers[peer].ain.size;
	return 0;
}
