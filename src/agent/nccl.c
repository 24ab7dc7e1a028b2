/*
 * Device tensors by NCCL point-to-point (docs/gpu.md, "Device tensors by NCCL").
 *
 * With the nccl path towards a peer, a CUDA tensor goes by a two-rank communicator that joins
 * its device here and its destination device there; one per direction and device pair, made on
 * first use by the sender (rank 0): it makes the id and offers it in an NCCL_ID; the peer answers
 * with the same id and joins (rank 1), or with an all-zero id (refused); on a yes the sender
 * joins too. Each joins on a thread of its own (ncclCommInitRank blocks until both did), so
 * nobody starts waiting for a peer that said no. The sender waits for the communicator the
 * first time (at most the peer timeout); if it cannot be made, the pair's tensors keep going
 * through host staging, which is logged once.
 *
 * Order: NCCL matches a pair's sends and receives in posting order. Each communicator numbers
 * its sends (the descriptor's nccl_tag: sequence in bits 0-31, sender's device 32-47, receiver's
 * device 48-63); the sender posts a message's tensors as one group in that order before the
 * control message leaves, and the receiver posts each receive only when its number is next, so
 * messages may arrive in any order. A message that never lands its tensors (refused, failed)
 * still receives them (into a scratch buffer) when it is released, or the pair would stall.
 *
 * Failure: a transfer that does not end within the peer timeout, a peer declared dead, or an
 * error NCCL reports fails the tensor and marks the communicator failed (host staging from then
 * on). Communicators are aborted at close, after the closing barrier.
 */
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "agent/agent_int.h"
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
	char why[200];
};

#define TAG(seq, sdev, rdev) ((uint64_t)(seq) | (uint64_t)(sdev) << 32 | (uint64_t)(rdev) << 48)

void ag_nccl_init(rdag_agent_t *a)
{
	pthread_condattr_t ca;

	pthread_mutex_init(&a->nccl_lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&a->nccl_cond, &ca);
	pthread_condattr_destroy(&ca);
	a->nccl_timeout_ms = 30000; /* rdag_agent_open sets the peer timeout once it is known */
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
	for (e = a->nccl; e; e = next) {
		next = e->next;
		if (e->thr_started)
			pthread_join(e->thr, NULL); /* an ncclCommInitRank still waiting for the peer */
		gpu_nccl_comm_close(e->comm);
		pthread_mutex_destroy(&e->post_lock);
		free(e);
	}
	a->nccl = NULL;
	pthread_cond_destroy(&a->nccl_cond);
	pthread_mutex_destroy(&a->nccl_lock);
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
	pthread_cond_broadcast(&e->a->nccl_cond);
}

static void fail(struct ag_nccl *e, const char *why)
{
	pthread_mutex_lock(&e->a->nccl_lock);
	fail_locked(e, why);
	pthread_mutex_unlock(&e->a->nccl_lock);
}

static void *opener(void *arg)
{
	struct ag_nccl *e = arg;
	rdag_agent_t *a = e->a;
	struct gpu_nccl_comm *c = NULL;
	int rc = gpu_nccl_comm_open(e->id, sizeof(e->id), e->out ? 0 : 1, e->dev, &c);

	pthread_mutex_lock(&a->nccl_lock);
	e->comm = c; /* closed at the end even if the pair gave up on it meanwhile */
	if (rc)
		fail_locked(e, rdag_last_error());
	else if (e->state == NC_OPENING)
		e->state = NC_READY;
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
	uint64_t deadline = deadline_of(a);
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

/* Polls req to its end: 0, or an error (the communicator is then failed). */
static int finish(rdag_agent_t *a, struct ag_nccl *e, struct gpu_nccl_req *req)
{
	uint64_t deadline = deadline_of(a);
	unsigned long polls = 0;
	int rc;

	while ((rc = gpu_nccl_test(req)) == RDAG_EAGAIN) {
		if ((++polls & 1023) == 0) {
			if (xport_peer_dead(a->x, e->peer)) {
				rc = err_set(RDAG_EPEER_DEAD, "worker %u died during an NCCL transfer",
					     e->peer);
				break;
			}
			if (ag_now_ns() > deadline) {
				rc = err_set(RDAG_ETIMEDOUT, "an NCCL transfer did not end within %d ms",
					     a->nccl_timeout_ms);
				break;
			}
		}
		sched_yield();
	}
	if (rc) {
		/* NCCL's own words (a peer gone is ncclRemoteError: RDAG_EPEER_DEAD), with the peer. */
		rc = err_set(rc, "%s worker %u (%s): %s", e->out ? "to" : "from", e->peer,
			     boot_name(a->b, e->peer), rdag_last_error());
		fail(e, rdag_last_error());
	}
	return rc;
}

struct ag_nccl_sent {
	struct ag_nccl_slot *slots;
	uint32_t n;
	xport_done_fn done;
	void *done_arg;
	int status;
	atomic_int left;           /* the xport's completion and the NCCL sends */
};

static void sent_put(struct ag_nccl_sent *s)
{
	if (atomic_fetch_sub(&s->left, 1) != 1)
		return;
	s->done(s->done_arg, s->status);
	for (uint32_t i = 0; i < s->n; i++)
		gpu_nccl_req_free(s->slots[i].req);
	free(s->slots);
	free(s);
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

void ag_nccl_sent_finish(rdag_agent_t *a, struct ag_nccl_sent *s, bool sent)
{
	for (uint32_t i = 0; i < s->n; i++) {
		if (!s->slots[i].req)
			continue;
		if (!sent)
			fail(s->slots[i].e, "a message whose tensors were posted did not leave");
		else if (finish(a, s->slots[i].e, s->slots[i].req))
			LOG_WARN("agent: %s (the receiver reports the tensor as lost)", rdag_last_error());
	}
	if (sent) {
		sent_put(s); /* done runs once the xport's completion came too */
		return;
	}
	for (uint32_t i = 0; i < s->n; i++) /* not sent: no done, as ag_send promises */
		gpu_nccl_req_free(s->slots[i].req);
	free(s->slots);
	free(s);
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
	return 0;
}

int ag_nccl_recv(rdag_agent_t *a, uint32_t src, struct xport_rx_tensor *rt, uint32_t index)
{
	uint64_t tag = rt->desc.u.nccl_tag, nb = rt->desc.nbytes, deadline = deadline_of(a);
	unsigned sdev = (unsigned)(tag >> 32) & 0xffffu, rdev = (unsigned)(tag >> 48);
	uint32_t seq = (uint32_t)tag;
	struct gpu_nccl_buf b = {.len = nb, .recv = true};
	struct gpu_nccl_req *req = NULL;
	struct ag_nccl *e;
	int rc;

	rt->nccl_done = true;
	pthread_mutex_lock(&a->nccl_lock);
	/*
	 * The sender's communicator was up before it sent, so ours exists (we answered its offer)
	 * and is up or about to be. None at all: a sender that never offered one; refused at once.
	 */
	while ((e = find(a, src, rdev, sdev, false)) && e->state == NC_OPENING) {
		if (a->nccl_closing || xport_peer_dead(a->x, src) || !wait_until(a, deadline))
			break;
	}
	if (!e || e->state != NC_READY) {
		pthread_mutex_unlock(&a->nccl_lock);
		return err_set(RDAG_EIO, "tensor %u came by NCCL from worker %u's device %u to device "
			       "%u, but there is no working communicator for them%s%s", index, src,
			       sdev, rdev, e && e->why[0] ? ": " : "", e ? e->why : "");
	}
	pthread_mutex_unlock(&a->nccl_lock);
	rc = gpu_mem_alloc((int)rdev, nb, &b.dptr);
	if (rc) {
		rc = err_set(rc, "tensor %u: %s", index, rdag_last_error());
		fail(e, rdag_last_error()); /* its bytes stay in the pair's stream */
		return rc;
	}
	pthread_mutex_lock(&a->nccl_lock);
	while (e->seq != seq && e->state == NC_READY && !a->nccl_closing) {
		if (xport_peer_dead(a->x, src) || !wait_until(a, deadline)) {
			fail_locked(e, "a transfer before this one never came");
			break;
		}
	}
	rc = e->state == NC_READY && e->seq == seq ? gpu_nccl_post(e->comm, &b, 1, &req) : RDAG_EIO;
	if (!rc)
		e->seq++;
	pthread_cond_broadcast(&a->nccl_cond);
	pthread_mutex_unlock(&a->nccl_lock);
	if (!rc)
		rc = finish(a, e, req);
	else if (!e->why[0])
		fail(e, rdag_last_error());
	gpu_nccl_req_free(req);
	if (rc) {
		char why[256];

		snprintf(why, sizeof(why), "%s", e->why[0] ? e->why : rdag_last_error());
		gpu_mem_free(b.dptr);
		return err_set(rc ? rc : RDAG_EIO, "tensor %u from worker %u by NCCL: %s", index, src,
			       why);
	}
	rt->dev = b.dptr;
	if (rt->desc.dev_index != rdev)
		return move(rt, rdev, index);
	return 0;
}

void ag_nccl_drain(rdag_agent_t *a, struct xport_rx *rx)
{
	for (uint32_t i = 0; i < rx->ntensors; i++) {
		struct xport_rx_tensor *rt = &rx->tensors[i];

		if (rt->desc.loc != WIRE_LOC_NCCL || rt->nccl_done)
			continue;
		/* Received and dropped: the pair's later transfers depend on it. */
		if (ag_nccl_recv(a, rx->peer, rt, i))
			LOG_WARN("agent: dropping an unused NCCL tensor: %s", rdag_last_error());
	}
}
