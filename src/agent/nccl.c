/*
 * Device tensors by NCCL point-to-point (docs/gpu.md, "Device tensors by NCCL").
 *
 * With the nccl path towards a peer, a CUDA tensor goes by a two-rank communicator that joins
 * its device here and its destination device there; one per direction and device pair, made on
 * first use by the sender (rank 0): it makes the id and offers it in an NCCL_ID; the peer answers
 * with the same id and joins (rank 1), or with an all-zero id (refused); on a yes the sender
 * joins too. Each joins on a thread of its own, so nobody starts waiting for a peer that said
 * no; where NCCL allows (ncclCommInitRankConfig, non-blocking) that thread polls the join and
 * gives it up after the peer timeout, when the peer dies or when the agent closes. The sender
 * waits for the communicator the first time (at most the peer timeout); if it cannot be made,
 * the pair's tensors keep going through host staging, which is logged once.
 *
 * Order: NCCL matches a pair's sends and receives in posting order. Each communicator numbers
 * its sends (the descriptor's nccl_tag: sequence in bits 0-31, sender's device 32-47, receiver's
 * device 48-63); the sender posts a message's tensors as one group in that order before the
 * control message leaves. A received message naming NCCL tensors is routed only once they came:
 * a handler thread allocates their buffers and parks one group per communicator in number
 * order; a group is posted (one ncclGroupStart/End) when its number is next, by whichever
 * thread made it so (the one posting the group before, or the one that opened the
 * communicator), so control messages may arrive in any order and no thread waits for a turn.
 *
 * Completion: the progress loop polls the events of posted sends and receives (ag_nccl_poll,
 * run by xport_progress as its poll_extra hook, which keeps it from blocking on the fabric while
 * any are pending and is woken by xport_wake when one appears). A message's sends end by
 * running its done; a message's receives end by routing it (ag_on_landed).
 *
 * Failure: a transfer that does not end within RDAG_NCCL_TIMEOUT_MS, a peer declared dead, or
 * an error NCCL reports fails the tensor and marks the communicator failed (host staging from
 * then on). What a failed transfer may still touch is kept until close (zombie), when the
 * communicators are aborted after the closing barrier.
 */
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "agent/agent_int.h"
#include "agent/agent_test.h"
#include "bootstrap/boot.h"
#include "gpu/gpu.h"
#include "util/err.h"
#include "util/log.h"
#include "util/tbuf.h"
#include "wire/wire.h"

enum { NC_OPENING, NC_READY, NC_FAILED };

struct ag_nccl {
	struct ag_nccl *next;
	rdag_agent_t *a;
	uint32_t peer;
	uint16_t dev;              /* this worker's device */
	uint16_t peer_dev;         /* the peer's */
	bool out;                  /* this worker sends on it (made the id: rank 0) */
	int state;                 /* NC_*, under a->nccl_lock */
	bool warned;
	struct gpu_nccl_comm *comm;
	pthread_t thr;
	bool thr_started;
	uint8_t id[GPU_NCCL_ID_BYTES];
	pthread_mutex_t post_lock; /* out: sends are numbered and posted in one order */
	uint32_t seq;              /* out: the next send's number (post_lock); in: the next receive's
				    * (a->nccl_lock) */
	struct ag_nccl_group *parked; /* in: receives waiting for their turn, by number */
	char why[200];
};

enum { G_PARKED, G_POSTED, G_DONE, G_FAILED };

/* A message's tensors on one communicator: consecutive numbers, received as one group. */
struct ag_nccl_group {
	struct ag_nccl_group *next; /* e->parked, by number */
	struct ag_nccl_land *land;
	struct ag_nccl *e;          /* NULL: there is none (failed at once) */
	uint32_t key;               /* the tag's device bits */
	int state;                  /* G_*, under a->nccl_lock once parked */
	uint32_t seq, n;            /* numbers seq .. seq + n - 1 */
	uint32_t *idx;              /* [n]: the message's tensor indices, in number order */
	struct gpu_nccl_req *req;
	int rc;
	char why[200];
};

struct ag_nccl_land {
	struct ag_nccl_land *next;  /* a->nccl_lands */
	struct ag_in *in;
	uint64_t deadline;
	uint32_t ngroups;
	struct ag_nccl_group *g;    /* [ngroups] */
	uint32_t idx[];             /* the groups' idx */
};

/*
 * What a transfer that failed in flight may still touch (NCCL may go on reading or writing it
 * until its communicator is aborted): a received tensor's buffer, or a message's sends (whose
 * done frees the sender's buffers). Kept until ag_nccl_fini aborted every communicator.
 */
struct ag_nccl_zombie {
	struct ag_nccl_zombie *next;
	void *dev;
	struct ag_nccl_sent *sent;
};

static void group_fail(struct ag_nccl_group *g, int rc, const char *why);
static void pump(struct ag_nccl *e);
static void polls_end(rdag_agent_t *a);
static void sent_put(struct ag_nccl_sent *s);

/* Keeps dev or s (one of them) for ag_nccl_fini; leaked if there is no memory to remember it. */
static void zombie(rdag_agent_t *a, void *dev, struct ag_nccl_sent *s)
{
	struct ag_nccl_zombie *z = calloc(1, sizeof(*z));

	if (!z) {
		LOG_WARN("agent: out of memory keeping a failed NCCL transfer's buffer: leaked");
		return;
	}
	z->dev = dev;
	z->sent = s;
	pthread_mutex_lock(&a->nccl_poll_lock);
	z->next = a->nccl_zombies;
	a->nccl_zombies = z;
	pthread_mutex_unlock(&a->nccl_poll_lock);
}

#define TAG(seq, sdev, rdev) ((uint64_t)(seq) | (uint64_t)(sdev) << 32 | (uint64_t)(rdev) << 48)

void ag_nccl_init(rdag_agent_t *a)
{
	pthread_condattr_t ca;

	pthread_mutex_init(&a->nccl_lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&a->nccl_cond, &ca);
	pthread_condattr_destroy(&ca);
	pthread_mutex_init(&a->nccl_poll_lock, NULL);
	a->nccl_join_ms = 30000; /* rdag_agent_open sets both once the peer timeout is known */
	a->nccl_timeout_ms = 600000;
}

void ag_nccl_fini(rdag_agent_t *a)
{
	struct ag_nccl *e, *next;

	if (a->nccl_ended) /* rdag_agent_close, then agent_free */
		return;
	a->nccl_ended = true;
	pthread_mutex_lock(&a->nccl_lock);
	a->nccl_closing = true;
	pthread_cond_broadcast(&a->nccl_cond);
	pthread_mutex_unlock(&a->nccl_lock);
	/*
	 * Nobody polls any more (progress and handlers stopped): what still waits ends here. After
	 * the closing barrier, the peers are done with us.
	 */
	polls_end(a);
	for (e = a->nccl; e; e = next) {
		next = e->next;
		if (e->thr_started)
			pthread_join(e->thr, NULL); /* a join ends on closing (a blocking one: with NCCL) */
		gpu_nccl_comm_close(e->comm);
		pthread_mutex_destroy(&e->post_lock);
		free(e);
	}
	a->nccl = NULL;
	/* Every communicator is aborted: nothing touches those buffers any more. */
	while (a->nccl_zombies) {
		struct ag_nccl_zombie *z = a->nccl_zombies;

		a->nccl_zombies = z->next;
		gpu_mem_free(z->dev);
		if (z->sent)
			sent_put(z->sent);
		free(z);
	}
	pthread_cond_destroy(&a->nccl_cond);
	pthread_mutex_destroy(&a->nccl_lock);
	pthread_mutex_destroy(&a->nccl_poll_lock);
}

bool ag_nccl_path(rdag_agent_t *a, uint32_t peer)
{
	return peer != a->id && peer < a->world && a->gpu_path && a->gpu_path[peer].rc == 0 &&
	       a->gpu_path[peer].t == GPU_TRANSPORT_NCCL;
}

/* Waits on a->nccl_cond (held) until deadline; false once it passed. */
static bool wait_until(rdag_agent_t *a, uint64_t deadline)
{
	uint64_t now = ag_now_ns(), step = 100000000u; /* re-check the peer's liveness every 100 ms */
	struct timespec ts;

	if (now >= deadline)
		return false;
	if (deadline - now < step)
		step = deadline - now;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += (time_t)(step / 1000000000u);
	ts.tv_nsec += (long)(step % 1000000000u);
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	pthread_cond_timedwait(&a->nccl_cond, &a->nccl_lock, &ts);
	return true;
}

/* When a transfer started now must have ended. */
static uint64_t deadline_of(rdag_agent_t *a)
{
	return ag_now_ns() + (uint64_t)a->nccl_timeout_ms * 1000000u;
}

/* Marks e failed (the pair goes back to host staging), logging why once. a->nccl_lock held. */
static void fail_locked(struct ag_nccl *e, const char *why)
{
	e->state = NC_FAILED;
	if (why && !e->why[0])
		snprintf(e->why, sizeof(e->why), "%s", why);
	if (!e->warned) {
		e->warned = true;
		LOG_WARN("agent: the NCCL communicator %s worker %u (device %u, its device %u) failed: "
			 "%s; its device tensors go through host memory from now on",
			 e->out ? "to" : "from", e->peer, e->dev, e->peer_dev, e->why);
	}
	while (e->parked) { /* their turn will never come */
		struct ag_nccl_group *g = e->parked;

		e->parked = g->next;
		g->next = NULL;
		group_fail(g, RDAG_EIO, e->why);
	}
	pthread_cond_broadcast(&e->a->nccl_cond);
}

static void fail(struct ag_nccl *e, const char *why)
{
	pthread_mutex_lock(&e->a->nccl_lock);
	fail_locked(e, why);
	pthread_mutex_unlock(&e->a->nccl_lock);
}

/*
 * Joins e's communicator. A non-blocking join (gpu_nccl_comm_open) is polled here until it
 * ended, the peer timeout passed, the peer died or the agent closes: whatever the peer does,
 * this thread ends, and the communicator is aborted at close.
 */
static void *opener(void *arg)
{
	struct ag_nccl *e = arg;
	rdag_agent_t *a = e->a;
	uint64_t deadline = ag_now_ns() + (uint64_t)a->nccl_join_ms * 1000000u;
	struct gpu_nccl_comm *c = NULL;
	int rc = gpu_nccl_comm_open(e->id, sizeof(e->id), e->out ? 0 : 1, e->dev,
				    a->nccl_join_ms, &c);

	pthread_mutex_lock(&a->nccl_lock);
	e->comm = c; /* closed at the end even if the pair gave up on it meanwhile */
	while (!rc && (rc = gpu_nccl_comm_ready(c)) == RDAG_EAGAIN) {
		if (a->nccl_closing) {
			rc = err_set(RDAG_ECANCELED, "the agent closed while it joined");
		} else if (xport_peer_dead(a->x, e->peer)) {
			rc = err_set(RDAG_EPEER_DEAD, "the peer died before it joined");
		} else if (ag_now_ns() >= deadline) {
			rc = err_set(RDAG_ETIMEDOUT, "the peer did not join within %d ms (the peer "
				     "timeout)", a->nccl_join_ms);
		} else {
			wait_until(a, ag_now_ns() + 1000000u); /* 1 ms; closing wakes it at once */
			rc = 0;
		}
	}
	if (rc)
		fail_locked(e, rdag_last_error());
	else if (e->state == NC_OPENING)
		e->state = NC_READY;
	pump(e); /* receives that came while it opened */
	pthread_cond_broadcast(&a->nccl_cond);
	pthread_mutex_unlock(&a->nccl_lock);
	if (!rc)
		LOG_INFO("agent: NCCL communicator %s worker %u is up (device %u, its device %u)",
			 e->out ? "to" : "from", e->peer, e->dev, e->peer_dev);
	return NULL;
}

static struct ag_nccl *find(rdag_agent_t *a, uint32_t peer, unsigned dev, unsigned peer_dev,
			    bool out)
{
	for (struct ag_nccl *e = a->nccl; e; e = e->next)
		if (e->peer == peer && e->dev == dev && e->peer_dev == peer_dev && e->out == out)
			return e;
	return NULL;
}

/* A new communicator record (a->nccl_lock held), or NULL when out of memory or closing. */
static struct ag_nccl *add(rdag_agent_t *a, uint32_t peer, unsigned dev, unsigned peer_dev,
			   bool out)
{
	struct ag_nccl *e;

	if (a->nccl_closing || !(e = calloc(1, sizeof(*e))))
		return NULL;
	e->a = a;
	e->peer = peer;
	e->dev = (uint16_t)dev;
	e->peer_dev = (uint16_t)peer_dev;
	e->out = out;
	e->state = NC_OPENING;
	pthread_mutex_init(&e->post_lock, NULL);
	e->next = a->nccl;
	a->nccl = e;
	return e;
}

static int start_opener(struct ag_nccl *e)
{
	if (pthread_create(&e->thr, NULL, opener, e))
		return err_set(RDAG_ENOMEM, "no thread to open an NCCL communicator");
	e->thr_started = true;
	return 0;
}

/* Whether the calling thread must drive progress itself while it waits (no progress thread). */
static bool self_driven(rdag_agent_t *a)
{
	return (a->mode == RDAG_PROGRESS_MANUAL || !a->progress_running) && !pool_is_mine(&a->pool);
}

/*
 * Sends NCCL_ID {dev, peer_dev, id} to peer, waiting for a free send op. Never from a dispatch
 * (answers go through the pool): progress must not be driven from inside one.
 */
static int send_id(rdag_agent_t *a, uint32_t peer, unsigned dev, unsigned peer_dev,
		   const uint8_t *id)
{
	struct wire_env env = {.req_id = 0, .src = a->id, .credits = 0};
	struct wire_nccl_id n = {.device = dev, .peer_device = peer_dev, .id = id};
	uint8_t buf[WIRE_HDR_SIZE + 8 + WIRE_NCCL_ID_BYTES];
	size_t len;
	int rc = wire_encode_nccl_id(buf, sizeof(buf), &env, &n, &len);

	while (!rc && (rc = xport_send_bytes(a->x, peer, buf, len, NULL, NULL)) == RDAG_EAGAIN) {
		if (a->mode == RDAG_PROGRESS_MANUAL || !a->progress_running)
			xport_progress(a->x, 1);
		else
			sched_yield();
	}
	return rc;
}

/* Makes the id and offers it; joining starts on the peer's answer. Without the lock. */
static int start_out(struct ag_nccl *e)
{
	int rc = gpu_nccl_id_create(e->id, sizeof(e->id));

	return rc ? rc : send_id(e->a, e->peer, e->dev, e->peer_dev, e->id);
}

/* The ready communicator for tensors from dev here to peer_dev on peer, or NULL (host). */
static struct ag_nccl *out_comm(rdag_agent_t *a, uint32_t peer, unsigned dev, unsigned peer_dev)
{
	uint64_t deadline = ag_now_ns() + (uint64_t)a->nccl_join_ms * 1000000u;
	struct ag_nccl *e;

	pthread_mutex_lock(&a->nccl_lock);
	e = find(a, peer, dev, peer_dev, true);
	if (!e) {
		e = add(a, peer, dev, peer_dev, true);
		if (!e) {
			pthread_mutex_unlock(&a->nccl_lock);
			return NULL;
		}
		pthread_mutex_unlock(&a->nccl_lock);
		if (start_out(e)) {
			fail(e, rdag_last_error());
			return NULL;
		}
		pthread_mutex_lock(&a->nccl_lock);
	}
	/* The first tensor waits for the communicator, so every later one can take it. */
	while (e->state == NC_OPENING && !a->nccl_closing) {
		if (xport_peer_dead(a->x, peer)) {
			fail_locked(e, "the peer is dead");
			break;
		}
		if (ag_now_ns() >= deadline) {
			fail_locked(e, "the peer did not join within the peer timeout");
			break;
		}
		if (self_driven(a)) {
			/* Manual progress: the answer comes only if this thread fetches it. */
			pthread_mutex_unlock(&a->nccl_lock);
			xport_progress(a->x, 1);
			pthread_mutex_lock(&a->nccl_lock);
		} else {
			wait_until(a, deadline);
		}
	}
	if (e->state != NC_READY)
		e = NULL;
	pthread_mutex_unlock(&a->nccl_lock);
	return e;
}

static bool zero_id(const uint8_t *id)
{
	for (unsigned i = 0; i < GPU_NCCL_ID_BYTES; i++)
		if (id[i])
			return false;
	return true;
}

/* An answer to an offer, sent by a handler thread (which may wait for a free send op). */
struct answer {
	struct ag_job job;         /* first: the pool runs it */
	rdag_agent_t *a;
	uint32_t peer;
	unsigned dev, peer_dev;
	uint8_t id[GPU_NCCL_ID_BYTES];
};

static void answer_job(struct ag_job *j)
{
	struct answer *an = (struct answer *)j;

	if (send_id(an->a, an->peer, an->dev, an->peer_dev, an->id))
		LOG_WARN("agent: answering worker %u's NCCL offer: %s", an->peer, rdag_last_error());
	free(an);
}

static void answer(rdag_agent_t *a, uint32_t peer, unsigned dev, unsigned peer_dev,
		   const uint8_t *id)
{
	struct answer *an = calloc(1, sizeof(*an));

	if (!an) {
		LOG_WARN("agent: no memory to answer worker %u's NCCL offer", peer);
		return;
	}
	an->a = a;
	an->peer = peer;
	an->dev = dev;
	an->peer_dev = peer_dev;
	if (id)
		memcpy(an->id, id, sizeof(an->id));
	an->job.run = answer_job;
	pool_push(&a->pool, &an->job);
}

void ag_nccl_on_id(rdag_agent_t *a, uint32_t src, const struct wire_nccl_id *n)
{
	bool refused = zero_id(n->id);
	struct ag_nccl *e;
	const char *why = NULL;

	/*
	 * The answer to our offer: the same id (it joins: so do we, even if we stopped waiting,
	 * or its join would never end) or none (refused). Never taken for an offer of its own.
	 */
	pthread_mutex_lock(&a->nccl_lock);
	e = find(a, src, n->peer_device, n->device, true);
	if (e && (refused || !memcmp(e->id, n->id, sizeof(e->id)))) {
		if (refused && e->state == NC_OPENING)
			fail_locked(e, "the peer refused it (no such device there, or NCCL is not its "
				    "GPU path with us)");
		else if (!refused && !e->thr_started && start_opener(e))
			fail_locked(e, rdag_last_error());
		pthread_mutex_unlock(&a->nccl_lock);
		return;
	}
	pthread_mutex_unlock(&a->nccl_lock);
	if (refused) {
		LOG_WARN("agent: worker %u refused an NCCL communicator we did not offer: dropped", src);
		return;
	}
	/* An offer: its device n->device to our n->peer_device. */
	if (!ag_nccl_path(a, src))
		why = "NCCL is not the GPU path with it";
	else if (n->peer_device >= (uint32_t)a->gpu_local.ndevices || n->device >= AG_MAX_DEVICES)
		why = "a device out of range";
	pthread_mutex_lock(&a->nccl_lock);
	if (!why && find(a, src, n->peer_device, n->device, false))
		why = "a second one for the same devices";
	if (!why) {
		e = add(a, src, n->peer_device, n->device, false);
		if (!e)
			why = a->nccl_closing ? "closing" : "out of memory";
	}
	if (!why) {
		memcpy(e->id, n->id, sizeof(e->id));
		if (start_opener(e)) {
			fail_locked(e, rdag_last_error());
			why = "no thread to join it";
		}
	}
	pthread_mutex_unlock(&a->nccl_lock);
	if (why)
		LOG_WARN("agent: worker %u offered an NCCL communicator from its device %u to our device "
			 "%u: %s; refused", src, n->device, n->peer_device, why);
	/* The answer goes with our devices first, as every NCCL_ID; no id: refused. */
	answer(a, src, n->peer_device, n->device, why ? NULL : n->id);
}

int ag_nccl_take(rdag_agent_t *a, uint32_t dst, struct ag_out *o, uint32_t i, unsigned dev,
		 unsigned to)
{
	struct ag_nccl *e = out_comm(a, dst, dev, to);

	if (!e)
		return 0;
	if (!o->nccl) {
		o->nccl = calloc(o->ntensors, sizeof(*o->nccl));
		if (!o->nccl)
			return 0; /* host staging still works */
	}
	o->nccl[i].e = e;
	return 1;
}

int ag_nccl_post(rdag_agent_t *a, struct ag_out *o)
{
	struct gpu_nccl_buf small[8], *bufs = small;
	int rc = 0;

	if (!o->nccl)
		return 0;
	if (o->ntensors > 8 && !(bufs = calloc(o->ntensors, sizeof(*bufs))))
		return err_set(RDAG_ENOMEM, "out of memory posting NCCL sends");
	/* One group per communicator, its tensors numbered in descriptor order. */
	for (uint32_t i = 0; i < o->ntensors && !rc; i++) {
		struct ag_nccl *e = o->nccl[i].e;
		size_t n = 0;

		if (!e || o->tensors[i].nccl) /* not by NCCL, or posted with an earlier one */
			continue;
		pthread_mutex_lock(&a->nccl_lock);
		rc = e->state == NC_READY ? 0 : err_set(RDAG_EIO, "the NCCL communicator to worker %u "
							   "failed meanwhile: %s", e->peer, e->why);
		pthread_mutex_unlock(&a->nccl_lock);
		if (rc)
			break;
		pthread_mutex_lock(&e->post_lock);
		for (uint32_t j = i; j < o->ntensors; j++) {
			struct xport_tensor *t = &o->tensors[j];

			if (o->nccl[j].e != e)
				continue;
			bufs[n++] = (struct gpu_nccl_buf){.dptr = (void *)t->data,
							  .len = t->desc.nbytes, .recv = false};
			t->nccl = true;
			t->nccl_tag = TAG(e->seq++, e->dev, e->peer_dev);
		}
		rc = gpu_nccl_post(e->comm, bufs, n, &o->nccl[i].req);
		pthread_mutex_unlock(&e->post_lock);
		if (rc) {
			rc = err_set(rc, "posting %zu NCCL sends to worker %u: %s", n, e->peer,
				     rdag_last_error());
			fail(e, rdag_last_error());
		}
	}
	if (rc) {
		/* The message will not leave: sends already posted would never be matched. */
		for (uint32_t i = 0; i < o->ntensors; i++)
			if (o->nccl[i].req)
				fail(o->nccl[i].e, "a message whose tensors were posted did not leave");
	}
	if (bufs != small)
		free(bufs);
	return rc;
}

/* ---- sends: done once the control message left and the NCCL sends ended ---------------- */

struct ag_nccl_sent {
	struct ag_nccl_sent *next;  /* a->nccl_sents */
	rdag_agent_t *a;
	struct ag_nccl_slot *slots;
	uint32_t n;
	xport_done_fn done;
	void *done_arg;
	int status;
	atomic_int left;            /* the xport's completion and the NCCL sends */
	uint64_t deadline;
	int rc;                     /* the first send that failed (the receiver reports the loss) */
	char why[200];
};

/* Frees s's requests (their events; the transfers may still run) and keeps s for close. */
static void sent_bury(rdag_agent_t *a, struct ag_nccl_sent *s)
{
	for (uint32_t i = 0; i < s->n; i++) {
		gpu_nccl_req_free(s->slots[i].req);
		s->slots[i].req = NULL;
	}
	zombie(a, NULL, s);
}

static void sent_free(struct ag_nccl_sent *s)
{
	for (uint32_t i = 0; i < s->n; i++)
		gpu_nccl_req_free(s->slots[i].req);
	free(s->slots);
	free(s);
}

static void sent_put(struct ag_nccl_sent *s)
{
	if (atomic_fetch_sub(&s->left, 1) != 1)
		return;
	s->done(s->done_arg, s->status);
	sent_free(s);
}

static void sent_done(void *arg, int status)
{
	struct ag_nccl_sent *s = arg;

	s->status = status;
	sent_put(s);
}

struct ag_nccl_sent *ag_nccl_sent_new(struct ag_out *o, xport_done_fn done, void *done_arg)
{
	struct ag_nccl_sent *s;

	if (!o->nccl)
		return NULL;
	s = calloc(1, sizeof(*s));
	if (!s) {
		for (uint32_t i = 0; i < o->ntensors; i++)
			if (o->nccl[i].req)
				fail(o->nccl[i].e, "out of memory");
		err_set(RDAG_ENOMEM, "out of memory sending tensors by NCCL");
		return NULL;
	}
	s->slots = o->nccl; /* the message's done may free o: the sends are ours now */
	o->nccl = NULL;
	s->n = o->ntensors;
	s->done = done;
	s->done_arg = done_arg;
	atomic_init(&s->left, 2);
	return s;
}

xport_done_fn ag_nccl_sent_fn(void)
{
	return sent_done;
}

/* Hands w (a land or a sent, pushed by push) to the progress loop, waking it. */
static void poll_add(rdag_agent_t *a, void (*push)(rdag_agent_t *, void *), void *w)
{
	pthread_mutex_lock(&a->nccl_poll_lock);
	push(a, w);
	atomic_fetch_add(&a->nccl_waits, 1);
	pthread_mutex_unlock(&a->nccl_poll_lock);
	xport_wake(a->x); /* after the count: a progress thread about to block sees one or other */
}

static void push_sent(rdag_agent_t *a, void *w)
{
	struct ag_nccl_sent *s = w;

	s->next = a->nccl_sents;
	a->nccl_sents = s;
}

void ag_nccl_sent_finish(rdag_agent_t *a, struct ag_nccl_sent *s, bool sent)
{
	if (!sent) {
		for (uint32_t i = 0; i < s->n; i++)
			if (s->slots[i].req)
				fail(s->slots[i].e, "a message whose tensors were posted did not leave");
		sent_free(s); /* not sent: no done, as ag_send promises */
		return;
	}
	s->a = a;
	s->deadline = deadline_of(a);
	poll_add(a, push_sent, s); /* done runs when the sends ended and the xport's came */
}

/* Whether s's sends all ended (failures recorded), without blocking. nccl_poll_lock held. */
static bool sent_test(rdag_agent_t *a, struct ag_nccl_sent *s, uint64_t now, bool check)
{
	bool pending = false;

	for (uint32_t i = 0; i < s->n; i++) {
		struct ag_nccl_slot *sl = &s->slots[i];
		int rc;

		if (!sl->req || sl->ended)
			continue;
		rc = gpu_nccl_test(sl->req);
		if (rc == RDAG_EAGAIN && check && xport_peer_dead(a->x, sl->e->peer))
			rc = err_set(RDAG_EPEER_DEAD, "it died during the transfer"); /* why: the peer */
		else if (rc == RDAG_EAGAIN && now > s->deadline)
			rc = err_set(RDAG_ETIMEDOUT, "an NCCL transfer did not end within %d ms "
				     "(RDAG_NCCL_TIMEOUT_MS)", a->nccl_timeout_ms);
		if (rc == RDAG_EAGAIN) {
			pending = true;
			continue;
		}
		sl->ended = true;
		if (rc) {
			/* NCCL's own words (a peer gone is ncclRemoteError: RDAG_EPEER_DEAD). */
			if (!s->rc) {
				s->rc = rc;
				snprintf(s->why, sizeof(s->why), "to worker %u (%s): %s", sl->e->peer,
					 boot_name(a->b, sl->e->peer), rdag_last_error());
			}
			fail(sl->e, rdag_last_error());
		}
	}
	return !pending;
}

void ag_nccl_out_free(struct ag_out *o)
{
	if (!o->nccl)
		return;
	for (uint32_t i = 0; i < o->ntensors; i++)
		gpu_nccl_req_free(o->nccl[i].req);
	free(o->nccl);
	o->nccl = NULL;
}

/*
 * A tensor that came to device from but belongs on rt->desc.dev_index (a gradient whose device
 * the sender guessed wrong): copied there through host memory (rdag has no peer copies yet).
 */
static int move(struct xport_rx_tensor *rt, unsigned from, uint32_t index)
{
	size_t nb = (size_t)rt->desc.nbytes;
	void *to = NULL;
	int rc = gpu_mem_alloc(rt->desc.dev_index, nb, &to);

	if (!rc)
		rc = tbuf_copy_dtod(to, rt->dev, nb);
	if (rc) {
		gpu_mem_free(to);
		return err_set(rc, "tensor %u came by NCCL to CUDA device %u; moving it to device %u: "
			       "%s", index, from, rt->desc.dev_index, rdag_last_error());
	}
	LOG_DEBUG("agent: tensor %u came by NCCL to device %u, belongs on %u: copied", index, from,
		  rt->desc.dev_index);
	gpu_mem_free(rt->dev);
	rt->dev = to;
	rt->nccl_dev = rt->desc.dev_index;
	return 0;
}

/* ---- receives: a message's NCCL tensors land before it is routed ----------------------- */

static void group_fail(struct ag_nccl_group *g, int rc, const char *why)
{
	if (g->state == G_DONE || g->state == G_FAILED)
		return;
	g->state = G_FAILED;
	g->rc = rc ? rc : RDAG_EIO;
	if (!g->why[0])
		snprintf(g->why, sizeof(g->why), "%s", why && why[0] ? why : "failed");
}

static void unpark(struct ag_nccl *e, struct ag_nccl_group *g)
{
	for (struct ag_nccl_group **p = &e->parked; *p; p = &(*p)->next) {
		if (*p == g) {
			*p = g->next;
			g->next = NULL;
			return;
		}
	}
}

/* Posts parked g, whose number is next on ready e. a->nccl_lock held. */
static void post_group(struct ag_nccl *e, struct ag_nccl_group *g)
{
	struct xport_rx *rx = g->land->in->rx;
	struct gpu_nccl_buf small[8], *bufs = small;
	int rc;

	if (g->n > 8 && !(bufs = calloc(g->n, sizeof(*bufs)))) {
		group_fail(g, RDAG_ENOMEM, "out of memory posting NCCL receives");
		fail_locked(e, g->why); /* its bytes stay in the pair's stream */
		return;
	}
	for (uint32_t k = 0; k < g->n; k++) {
		struct xport_rx_tensor *rt = &rx->tensors[g->idx[k]];

		bufs[k] = (struct gpu_nccl_buf){.dptr = rt->dev, .len = rt->desc.nbytes, .recv = true};
	}
	rc = gpu_nccl_post(e->comm, bufs, g->n, &g->req);
	if (bufs != small)
		free(bufs);
	if (rc) {
		group_fail(g, rc, rdag_last_error());
		fail_locked(e, g->why);
		return;
	}
	g->state = G_POSTED;
	e->seq += g->n;
}

/* Posts e's parked groups while the next is the one due. a->nccl_lock held. */
static void pump(struct ag_nccl *e)
{
	while (e->state == NC_READY && e->parked && e->parked->seq == e->seq) {
		struct ag_nccl_group *g = e->parked;

		e->parked = g->next;
		g->next = NULL;
		post_group(e, g);
	}
}

/* Parks g on e in number order and posts what is due. a->nccl_lock held. */
static void park(struct ag_nccl *e, struct ag_nccl_group *g)
{
	struct ag_nccl_group **p = &e->parked;
	uint32_t d = g->seq - e->seq; /* how far ahead of the next transfer (wrapping) */
	char why[200];

	if (e->state == NC_FAILED) {
		group_fail(g, RDAG_EIO, e->why);
		return;
	}
	/* A number already received or parked breaks the pair's order: the sender is wrong. */
	while (*p && (uint32_t)((*p)->seq - e->seq) < d)
		p = &(*p)->next;
	if (d >= 0x80000000u || (*p && (*p)->seq == g->seq)) {
		snprintf(why, sizeof(why), "a second transfer numbered %u (the next is %u)", g->seq,
			 e->seq);
		group_fail(g, RDAG_EWIRE_FIELD, why);
		fail_locked(e, why);
		return;
	}
	g->next = *p;
	*p = g;
	g->state = G_PARKED;
	pump(e);
	if (g->state == G_PARKED) /* an earlier message's turn, or the communicator opens */
		atomic_fetch_add(&e->a->nccl_parked, 1);
}

void agent_test_nccl_parked(rdag_agent_t *a, unsigned *parked)
{
	*parked = atomic_load(&a->nccl_parked);
}

static void push_land(rdag_agent_t *a, void *w)
{
	struct ag_nccl_land *l = w;

	l->next = a->nccl_lands;
	a->nccl_lands = l;
}

/* Gives every NCCL tensor of l's message its outcome, frees l, routes the message. */
static void land_finish(rdag_agent_t *a, struct ag_nccl_land *l)
{
	struct ag_in *in = l->in;
	struct xport_rx *rx = in->rx;

	for (uint32_t gi = 0; gi < l->ngroups; gi++) {
		struct ag_nccl_group *g = &l->g[gi];

		for (uint32_t k = 0; k < g->n; k++) {
			struct xport_rx_tensor *rt = &rx->tensors[g->idx[k]];

			rt->nccl_done = true;
			if (g->state == G_DONE) {
				rt->nccl_dev = (uint16_t)(rt->desc.u.nccl_tag >> 48);
				continue;
			}
			/* A receive posted and failed may still write into it: kept until close. */
			if (g->req && rt->dev)
				zombie(a, rt->dev, NULL);
			else
				gpu_mem_free(rt->dev);
			rt->dev = NULL;
			rt->nccl_rc = g->rc ? g->rc : RDAG_EIO;
			rt->nccl_why = strdup(g->why);
		}
		gpu_nccl_req_free(g->req);
	}
	free(l->g);
	free(l);
	atomic_fetch_sub(&a->serving, 1);
	ag_on_landed(in);
}

/* Whether l's groups all ended (failing the overdue), without blocking. nccl_poll_lock held. */
static bool land_test(rdag_agent_t *a, struct ag_nccl_land *l, uint64_t now, bool check)
{
	uint32_t src = l->in->src;
	bool pending = false, dead = check && xport_peer_dead(a->x, src);

	if (pthread_mutex_trylock(&a->nccl_lock))
		return false; /* someone posts or fails: next pass */
	for (uint32_t gi = 0; gi < l->ngroups; gi++) {
		struct ag_nccl_group *g = &l->g[gi];
		char why[200];
		int rc = 0;

		if (g->state == G_POSTED) {
			rc = gpu_nccl_test(g->req);
			if (rc == 0) {
				g->state = G_DONE;
			} else if (rc != RDAG_EAGAIN) {
				/* NCCL's own words (a peer gone is ncclRemoteError: RDAG_EPEER_DEAD). */
				snprintf(why, sizeof(why), "from worker %u (%s): %s", src,
					 boot_name(a->b, src), rdag_last_error());
				group_fail(g, rc, why);
				fail_locked(g->e, why);
			}
		}
		if (g->state != G_POSTED && g->state != G_PARKED)
			continue;
		if (dead) {
			snprintf(why, sizeof(why), "worker %u (%s) died during an NCCL transfer", src,
				 boot_name(a->b, src));
			rc = RDAG_EPEER_DEAD;
		} else if (now > l->deadline) {
			snprintf(why, sizeof(why), g->state == G_PARKED ?
				 "a transfer before this one did not come within %d ms "
				 "(RDAG_NCCL_TIMEOUT_MS)" :
				 "an NCCL transfer did not end within %d ms (RDAG_NCCL_TIMEOUT_MS)",
				 a->nccl_timeout_ms);
			rc = RDAG_ETIMEDOUT;
		} else {
			pending = true;
			continue;
		}
		if (g->state == G_PARKED)
			unpark(g->e, g);
		group_fail(g, rc, why);
		fail_locked(g->e, why);
	}
	pthread_mutex_unlock(&a->nccl_lock);
	return !pending;
}

/* At close, nobody polls any more: sends end (done runs), messages still landing are dropped. */
static void polls_end(rdag_agent_t *a)
{
	while (a->nccl_sents) {
		struct ag_nccl_sent *s = a->nccl_sents;

		a->nccl_sents = s->next;
		sent_bury(a, s); /* done once the communicators are aborted */
	}
	while (a->nccl_lands) {
		struct ag_nccl_land *l = a->nccl_lands;
		struct xport_rx *rx = l->in->rx;

		a->nccl_lands = l->next;
		for (uint32_t gi = 0; gi < l->ngroups; gi++) {
			for (uint32_t k = 0; k < l->g[gi].n; k++) {
				struct xport_rx_tensor *rt = &rx->tensors[l->g[gi].idx[k]];

				rt->nccl_done = true;
				if (l->g[gi].state == G_POSTED && rt->dev) {
					zombie(a, rt->dev, NULL);
					rt->dev = NULL;
				}
			}
			gpu_nccl_req_free(l->g[gi].req);
		}
		ag_in_free(l->in);
		free(l->g);
		free(l);
	}
	atomic_store(&a->nccl_waits, 0);
}

int ag_nccl_poll(void *arg, int *busy)
{
	rdag_agent_t *a = arg;
	struct ag_nccl_land *ldone = NULL, **lp;
	struct ag_nccl_sent *sdone = NULL, **sp;
	uint64_t now;
	bool check;
	int n = 0;

	if (atomic_load(&a->nccl_waits) == 0)
		return 0;
	*busy = 1;
	if (pthread_mutex_trylock(&a->nccl_poll_lock))
		return 0; /* another thread polls them */
	now = ag_now_ns();
	check = now - a->nccl_polled_ns >= 1000000u; /* peers' liveness: once a millisecond */
	if (check)
		a->nccl_polled_ns = now;
	/* Lists newest first: what ended is collected oldest first. */
	for (lp = &a->nccl_lands; *lp;) {
		struct ag_nccl_land *l = *lp;

		if (!land_test(a, l, now, check)) {
			lp = &l->next;
			continue;
		}
		*lp = l->next;
		l->next = ldone;
		ldone = l;
		n++;
	}
	for (sp = &a->nccl_sents; *sp;) {
		struct ag_nccl_sent *s = *sp;

		if (!sent_test(a, s, now, check)) {
			sp = &s->next;
			continue;
		}
		*sp = s->next;
		s->next = sdone;
		sdone = s;
		n++;
	}
	atomic_fetch_sub(&a->nccl_waits, n);
	pthread_mutex_unlock(&a->nccl_poll_lock);
	while (sdone) {
		struct ag_nccl_sent *s = sdone;

		sdone = s->next;
		if (s->rc) {
			/* Its buffers stay the sender's until the communicator is aborted at close. */
			LOG_WARN("agent: NCCL send %s (the receiver reports the tensor as lost)", s->why);
			sent_bury(a, s);
			continue;
		}
		sent_put(s); /* done runs once the xport's completion came too */
	}
	while (ldone) {
		struct ag_nccl_land *l = ldone;

		ldone = l->next;
		land_finish(a, l);
	}
	return n;
}

/* Sets up g for the NCCL tensors of rx whose device bits are key, from tensor `from` on. */
static void group_init(struct ag_nccl_group *g, const struct xport_rx *rx, uint32_t from,
		       uint32_t key)
{
	g->key = key;
	g->seq = (uint32_t)rx->tensors[from].desc.u.nccl_tag;
	for (uint32_t i = from; i < rx->ntensors; i++) {
		const struct wire_tensor *d = &rx->tensors[i].desc;

		if (d->loc == WIRE_LOC_NCCL && (uint32_t)(d->u.nccl_tag >> 32) == key)
			g->idx[g->n++] = i;
	}
}

/* Finds g's communicator, checks its numbering, allocates its buffers, parks it. */
static void group_start(rdag_agent_t *a, struct ag_nccl_group *g, uint32_t src)
{
	struct xport_rx *rx = g->land->in->rx;
	unsigned sdev = g->key & 0xffffu, rdev = g->key >> 16;
	char why[200];
	int rc = 0;

	pthread_mutex_lock(&a->nccl_lock);
	/* The sender's communicator was up before it sent, so ours exists (we answered it). */
	g->e = a->nccl_closing ? NULL : find(a, src, rdev, sdev, false);
	pthread_mutex_unlock(&a->nccl_lock);
	if (!g->e) {
		snprintf(why, sizeof(why), "it came from worker %u's device %u to device %u, but there "
			 "is no working communicator for them%s", src, sdev, rdev,
			 a->nccl_closing ? " (closing)" : "");
		group_fail(g, RDAG_EIO, why);
		return;
	}
	for (uint32_t k = 0; k < g->n; k++) {
		if ((uint32_t)rx->tensors[g->idx[k]].desc.u.nccl_tag != g->seq + k) {
			snprintf(why, sizeof(why), "the tensors of one message are numbered out of "
				 "order (%u at %u)", (uint32_t)rx->tensors[g->idx[k]].desc.u.nccl_tag,
				 k);
			group_fail(g, RDAG_EWIRE_FIELD, why);
			fail(g->e, why);
			return;
		}
	}
	for (uint32_t k = 0; k < g->n && !rc; k++) {
		struct xport_rx_tensor *rt = &rx->tensors[g->idx[k]];

		rc = gpu_mem_alloc((int)rdev, (size_t)rt->desc.nbytes, &rt->dev);
		if (rc) {
			snprintf(why, sizeof(why), "%s", rdag_last_error());
			group_fail(g, rc, why);
			fail(g->e, why); /* its bytes stay in the pair's stream */
		}
	}
	if (rc)
		return;
	pthread_mutex_lock(&a->nccl_lock);
	park(g->e, g);
	pthread_mutex_unlock(&a->nccl_lock);
}

static void land_job(struct ag_job *j)
{
	struct ag_in *in = (struct ag_in *)j;
	rdag_agent_t *a = in->a;
	struct xport_rx *rx = in->rx;
	struct ag_nccl_land *l;
	uint32_t nt = 0, *next;

	for (uint32_t i = 0; i < rx->ntensors; i++)
		nt += rx->tensors[i].desc.loc == WIRE_LOC_NCCL;
	l = calloc(1, sizeof(*l) + nt * sizeof(uint32_t));
	if (l)
		l->g = calloc(nt, sizeof(*l->g));
	if (!l || !l->g) {
		/* Nothing received: the pair's stream is lost, so are its communicators. */
		for (uint32_t i = 0; i < rx->ntensors; i++) {
			struct xport_rx_tensor *rt = &rx->tensors[i];

			if (rt->desc.loc != WIRE_LOC_NCCL)
				continue;
			rt->nccl_done = true;
			rt->nccl_rc = RDAG_ENOMEM;
		}
		ag_nccl_drop(a, rx, "out of memory receiving its tensors");
		free(l);
		atomic_fetch_sub(&a->serving, 1);
		ag_on_landed(in);
		return;
	}
	l->in = in;
	l->deadline = deadline_of(a);
	next = l->idx;
	for (uint32_t i = 0; i < rx->ntensors; i++) {
		const struct wire_tensor *d = &rx->tensors[i].desc;
		uint32_t key = (uint32_t)(d->u.nccl_tag >> 32);
		bool seen = false;

		if (d->loc != WIRE_LOC_NCCL)
			continue;
		for (uint32_t gi = 0; gi < l->ngroups && !seen; gi++)
			seen = l->g[gi].key == key;
		if (seen)
			continue;
		l->g[l->ngroups].land = l;
		l->g[l->ngroups].idx = next;
		group_init(&l->g[l->ngroups], rx, i, key);
		next += l->g[l->ngroups].n;
		l->ngroups++;
	}
	for (uint32_t gi = 0; gi < l->ngroups; gi++)
		group_start(a, &l->g[gi], in->src);
	poll_add(a, push_land, l);
}

void ag_nccl_land(struct ag_in *in)
{
	/* Counted as served, so closing waits for it; landed off the progress loop (cuMemAlloc). */
	atomic_fetch_add(&in->a->serving, 1);
	in->job.run = land_job;
	pool_push(&in->a->pool, &in->job);
}

int ag_nccl_recv(rdag_agent_t *a, uint32_t src, struct xport_rx_tensor *rt, uint32_t index)
{
	(void)a;
	if (!rt->nccl_done)
		return err_set(RDAG_EIO, "tensor %u from worker %u by NCCL was never received", index,
			       src);
	if (rt->nccl_rc)
		return err_set(rt->nccl_rc, "tensor %u from worker %u by NCCL: %s", index, src,
			       rt->nccl_why ? rt->nccl_why : "out of memory");
	if (rt->desc.dev_index != rt->nccl_dev)
		return move(rt, rt->nccl_dev, index);
	return 0;
}

/* Fails the communicators of rx's NCCL tensors not received: their pairs' order is lost. */
void ag_nccl_drop(rdag_agent_t *a, struct xport_rx *rx, const char *why)
{
	pthread_mutex_lock(&a->nccl_lock);
	for (uint32_t i = 0; i < rx->ntensors; i++) {
		const struct xport_rx_tensor *rt = &rx->tensors[i];
		uint64_t tag = rt->desc.u.nccl_tag;
		struct ag_nccl *e;

		if (rt->desc.loc != WIRE_LOC_NCCL || (rt->nccl_done && !rt->nccl_rc))
			continue;
		e = find(a, rx->peer, (unsigned)(tag >> 48), (unsigned)(tag >> 32) & 0xffffu, false);
		if (e && e->state != NC_FAILED)
			fail_locked(e, why);
	}
	pthread_mutex_unlock(&a->nccl_lock);
}

void ag_nccl_drain(rdag_agent_t *a, struct xport_rx *rx)
{
	bool lost = false;

	for (uint32_t i = 0; i < rx->ntensors; i++) {
		struct xport_rx_tensor *rt = &rx->tensors[i];

		if (rt->desc.loc != WIRE_LOC_NCCL)
			continue;
		lost |= !rt->nccl_done;
		free(rt->nccl_why);
		rt->nccl_why = NULL;
	}
	if (lost) /* released before landing (out of memory in dispatch) */
		ag_nccl_drop(a, rx, "a message was dropped before its NCCL tensors came");
}
