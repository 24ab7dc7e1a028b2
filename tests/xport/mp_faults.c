/* Transport scenarios around faults: refused slots, a peer killed with SIGKILL, and the registration cache. */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "rcache/rcache.h"
#include "xport_mp.h"

/* ---- refusal of slots outside the granted arena ------------------------------------------------ */

struct refuse {
	int exc[8];                 /* EXCEPTION replies seen per crafted request (101..104) */
	char exc_text[8][256];
	int exc_code[8];
	int got[16];                /* messages delivered on rank 1, by request id - 100 */
	struct xport_rx *held;
	int release_now;
};

static void refuse_rx(struct mp_worker *w, struct xport_rx *rx)
{
	struct refuse *s = w->sc;
	uint64_t req = rx->msg.env.req_id;

	if (w->rank == 0) {
		MP_CHECK(w, rx->peer == 1 && rx->msg.kind == WIRE_EXCEPTION && req >= 101 && req <= 104,
			 "rank 0 got %s %llu from %u", wire_kind_name(rx->msg.kind),
			 (unsigned long long)req, rx->peer);
		if (rx->msg.kind == WIRE_EXCEPTION && req >= 101 && req <= 104) {
			const struct wire_exception *e = &rx->msg.u.exc;

			s->exc[req - 100]++;
			s->exc_code[req - 100] = e->code;
			snprintf(s->exc_text[req - 100], sizeof(s->exc_text[0]), "%.*s", (int)e->text.len,
				 (const char *)e->text.ptr);
			MP_CHECK(w, e->origin == 1, "refusal from origin %u", e->origin);
		}
		xport_release(w->x, rx);
		return;
	}
	MP_CHECK(w, req >= 100 && req < 116, "rank 1 got request %llu", (unsigned long long)req);
	if (req < 100 || req >= 116) {
		xport_release(w->x, rx);
		return;
	}
	s->got[req - 100]++;
	if (req == 103 || req == 106) {
		MP_CHECK(w, rx->ntensors == 1 && rx->tensors[0].desc.loc == WIRE_LOC_SLOT &&
				    rx->tensors[0].desc.nbytes == 65536 &&
				    !mp_check(rx->tensors[0].data, 65536, mp_seed(0, 1, req)),
			 "eager message %llu: wrong tensor", (unsigned long long)req);
	}
	if (req == 103) {
		s->held = rx; /* held: its slot stays in use */
		return;
	}
	if (req == 105)
		s->release_now = 1;
	xport_release(w->x, rx);
}

/* A BACKWARD_AUTOGRAD_REQ naming slot [off, +len) for nbytes, encoded by hand. */
static size_t craft(struct mp_worker *w, uint8_t *buf, size_t cap, uint64_t req, uint64_t off,
		    uint64_t len, uint64_t nbytes)
{
	struct wire_env env = {.req_id = req, .src = (uint16_t)w->rank};
	struct wire_grad_req g = {.ctx_id = 1, .msg_id = req};
	struct wire_tensor t;
	size_t n = 0;

	mp_desc_u8(&t, nbytes);
	t.loc = WIRE_LOC_SLOT;
	t.u.slot.offset = off;
	t.u.slot.length = len;
	MP_CHECK(w, wire_encode_grad_req(buf, cap, &env, &g, &t, 1, &n) == 0, "crafting: %s",
		 rdag_last_error());
	return n;
}

static int wait_for(struct mp_worker *w, const int *flag)
{
	while (!*flag && !w->fail)
		if (mp_step(w))
			return -1;
	return w->fail ? -1 : 0;
}

static void send_eager(struct mp_worker *w, uint64_t req, uint8_t *buf)
{
	struct xport_tensor t = {0};

	mp_fill(buf, 65536, mp_seed(0, 1, req));
	t.data = buf;
	mp_desc_u8(&t.desc, 65536);
	MP_CHECK(w, mp_send(w, 1, req, mp_enc_grad, NULL, &t, 1) == 0, "eager %llu: %s",
		 (unsigned long long)req, rdag_last_error());
}

void sc_refuse(struct mp_worker *w)
{
	struct refuse s;
	struct xport_stats st;
	uint8_t msg[512], *tensor = malloc(65536);
	void *base;
	size_t asz, n;

	memset(&s, 0, sizeof(s));
	w->sc = &s;
	w->on_rx = refuse_rx;
	MP_CHECK(w, tensor != NULL, "out of memory");
	if (w->rank == 0 && tensor) {
		/* Arenas are sized alike on every worker: ours for peer 1 tells the size of its. */
		MP_CHECK(w, xport_test_arena(w->x, 1, &base, &asz) == 0, "arena: %s", rdag_last_error());
		/* 101: a slot beyond the end of the arena. */
		n = craft(w, msg, sizeof(msg), 101, asz, 4096, 4096);
		MP_CHECK(w, xport_test_send_raw(w->x, 1, msg, n, NULL, NULL) == 0, "raw: %s",
			 rdag_last_error());
		MP_CHECK(w, wait_for(w, &s.exc[1]) == 0, "no reply to 101");
		/* 102: a misaligned slot. */
		n = craft(w, msg, sizeof(msg), 102, 3 * 64 + 1, 128, 100);
		MP_CHECK(w, xport_test_send_raw(w->x, 1, msg, n, NULL, NULL) == 0, "raw: %s",
			 rdag_last_error());
		MP_CHECK(w, wait_for(w, &s.exc[2]) == 0, "no reply to 102");
		/* 103: a real eager message; rank 1 holds it, so its slot [0, 64 KiB) stays in use. */
		send_eager(w, 103, tensor);
		mp_drain(w);
		/* 104: the same slot again, overlapping the held one. */
		n = craft(w, msg, sizeof(msg), 104, 0, 65536, 65536);
		MP_CHECK(w, xport_test_send_raw(w->x, 1, msg, n, NULL, NULL) == 0, "raw: %s",
			 rdag_last_error());
		MP_CHECK(w, wait_for(w, &s.exc[4]) == 0, "no reply to 104");
		/* 105 tells rank 1 to release 103; then 106, a normal eager message, must go through. */
		{
			struct mp_rpc rpc = {"release", NULL, 0};

			MP_CHECK(w, mp_send(w, 1, 105, mp_enc_rpc, &rpc, NULL, 0) == 0, "105: %s",
				 rdag_last_error());
		}
		send_eager(w, 106, tensor);
		mp_drain(w);
		for (int i = 1; i <= 4; i++) {
			if (i == 3)
				continue;
			MP_CHECK(w, s.exc[i] == 1 && s.exc_code[i] == RDAG_EACCES && strstr(s.exc_text[i], "slot"),
				 "request %d: %d replies, code %d, '%s'", 100 + i, s.exc[i], s.exc_code[i],
				 s.exc_text[i]);
		}
		MP_CHECK(w, w->done_err == 0, "sends failed: %s", w->last_err);
		if (!w->fail)
			printf("refuse: replies: '%s' | '%s' | '%s'\n", s.exc_text[1], s.exc_text[2],
			       s.exc_text[4]);
	}
	if (w->rank == 1) {
		while (!w->fail && !(s.got[6] && s.release_now)) {
			if (s.release_now && s.held) {
				xport_release(w->x, s.held);
				s.held = NULL;
			}
			if (mp_step(w))
				break;
		}
		if (s.held) {
			xport_release(w->x, s.held);
			s.held = NULL;
		}
		xport_get_stats(w->x, &st);
		MP_CHECK(w, st.refused == 3, "%llu messages refused, expected 3",
			 (unsigned long long)st.refused);
		MP_CHECK(w, !s.got[1] && !s.got[2] && !s.got[4], "a refused message was delivered");
		MP_CHECK(w, s.got[3] == 1 && s.got[5] == 1 && s.got[6] == 1,
			 "delivered: 103 x%d, 105 x%d, 106 x%d", s.got[3], s.got[5], s.got[6]);
	}
	w->on_rx = NULL;
	w->sc = NULL;
	MP_CHECK(w, boot_barrier(w->b) == 0, "barrier: %s", rdag_last_error());
	free(tensor);
}

/* ---- a peer killed with SIGKILL --------------------------------------------------------------- */

struct killsc {
	int victim;
	long held;
	struct xport_rx **hold;
	long cap;
};

static void victim_rx(struct mp_worker *w, struct xport_rx *rx)
{
	struct killsc *s = w->sc;

	/* The victim keeps everything: its senders run out of credits and queue the rest. */
	if (s->held < s->cap)
		s->hold[s->held++] = rx;
	else
		xport_release(w->x, rx);
}

void sc_kill(struct mp_worker *w)
{
	struct killsc s;
	struct xport_stats st;
	int victim = w->world - 1;
	long extra = 10, per;
	uint64_t timeout_ms = (uint64_t)w->xo.peer_timeout_ms, lat_ms;
	char who[64];

	memset(&s, 0, sizeof(s));
	s.victim = victim;
	w->sc = &s;
	xport_get_stats(w->x, &st);
	per = (long)st.credits + extra;
	if (w->rank == victim) {
		/* A data message needs two credits: a sender stops with credits - 1 outstanding. */
		long want = ((long)st.credits - 1) * (w->world - 1);
		char b = 'k';

		s.cap = per * (w->world - 1);
		s.hold = calloc((size_t)s.cap, sizeof(*s.hold));
		w->on_rx = victim_rx;
		while (!w->fail && s.held < want)
			if (mp_step(w))
				break;
		/* Ready: every sender is out of credits. The parent kills us now; keep serving. */
		MP_CHECK(w, write(w->ready_fd, &b, 1) == 1, "cannot tell the parent");
		for (;;)
			(void)xport_progress(w->x, 100);
	}
	/* Survivors: credits plus 10 messages each to the victim. A faster survivor's ping-pong
	 * messages may arrive while we still wait: they are stashed for mp_pingpong. */
	w->on_rx = NULL;
	{
		uint8_t payload[32];
		struct mp_rpc rpc = {"k", payload, sizeof(payload)};

		memset(payload, 0x5a, sizeof(payload));
		for (long i = 0; i < per && !w->fail; i++)
			MP_CHECK(w, mp_send(w, (uint32_t)victim, (uint64_t)i, mp_enc_rpc, &rpc, NULL, 0) == 0,
				 "send %ld: %s", i, rdag_last_error());
	}
	while (!w->fail && (!w->dead[victim] || w->done_ok + w->done_err < w->sends))
		if (mp_step(w))
			break;
	snprintf(who, sizeof(who), "peer %d (worker%d)", victim, victim);
	MP_CHECK(w, w->dead[victim], "the victim was never declared dead");
	MP_CHECK(w, w->done_err >= (uint64_t)extra, "%llu sends failed, expected >= %ld",
		 (unsigned long long)w->done_err, extra);
	MP_CHECK(w, w->last_status == RDAG_EPEER_DEAD, "failed with %d (%s), expected RDAG_EPEER_DEAD",
		 w->last_status, rdag_strerror(w->last_status));
	MP_CHECK(w, strstr(w->last_err, who) != NULL, "the error does not name %s: '%s'", who,
		 w->last_err);
	MP_CHECK(w, strstr(w->dead_why[victim], who) != NULL, "the event does not name %s: '%s'", who,
		 w->dead_why[victim]);
	MP_CHECK(w, w->sh->kill_ns != 0, "the parent never killed the victim");
	lat_ms = w->dead_ns[victim] > w->sh->kill_ns ? (w->dead_ns[victim] - w->sh->kill_ns) / 1000000u
						     : 0;
	/* Within the timeout, plus slack for a loaded 2-CPU machine. */
	MP_CHECK(w, lat_ms <= timeout_ms + 3000, "detected %llu ms after the kill (timeout %llu ms)",
		 (unsigned long long)lat_ms, (unsigned long long)timeout_ms);
	/* Later sends fail at once, naming the peer. */
	{
		struct mp_rpc rpc = {"k", NULL, 0};
		int rc = xport_send(w->x, (uint32_t)victim, 1, mp_enc_rpc, &rpc, NULL, 0, NULL, NULL);

		MP_CHECK(w, rc == RDAG_EPEER_DEAD && strstr(rdag_last_error(), who),
			 "send after death: %d (%s)", rc, rdag_last_error());
	}
	xport_get_stats(w->x, &st);
	if (!w->fail)
		printf("kill: rank %d saw %s dead %llu ms after SIGKILL (timeout %llu ms); %llu pending "
		       "sends failed: %s\n", w->rank, who, (unsigned long long)lat_ms,
		       (unsigned long long)timeout_ms, (unsigned long long)w->done_err, w->last_err);
	/* The survivors still talk to each other. */
	w->done_ok = w->done_err = w->sends = 0;
	if (w->world > 2)
		mp_pingpong(w, (1u << victim) - 1, 200);
	w->sc = NULL;
	free(s.hold);
}

/* ---- the registration cache over a real fabric -------------------------------------------------- */

struct rcsc {
	long got;
	long want;
};

static void rcache_rx(struct mp_worker *w, struct xport_rx *rx)
{
	struct rcsc *s = w->sc;
	uint64_t seed = rx->msg.env.req_id;

	MP_CHECK(w, rx->ntensors == 1, "%u tensors", rx->ntensors);
	if (rx->ntensors == 1) {
		const struct xport_rx_tensor *t = &rx->tensors[0];
		size_t bad = mp_check(t->data, (size_t)t->desc.nbytes, seed);

		MP_CHECK(w, !bad, "message %llx (%llu bytes, location %u): byte %zu differs",
			 (unsigned long long)seed, (unsigned long long)t->desc.nbytes, t->desc.loc,
			 bad - 1);
	}
	s->got++;
	xport_release(w->x, rx);
}

/* Sends n bytes at p (filled for seed) to rank 1 and waits for the send to finish. */
static void rc_send(struct mp_worker *w, void *p, size_t n, uint64_t seed)
{
	struct xport_tensor t = {0};

	mp_fill(p, n, seed);
	t.data = p;
	mp_desc_u8(&t.desc, n);
	MP_CHECK(w, mp_send(w, 1, seed, mp_enc_grad, NULL, &t, 1) == 0, "send: %s", rdag_last_error());
	mp_drain(w);
}

void sc_rcache(struct mp_worker *w)
{
	struct rcsc s = {0, 0};
	struct rcache_stats a, b;
	const size_t big = 1u << 20, small = 64u << 10;
	uint64_t seed = 1;

	w->sc = &s;
	w->on_rx = rcache_rx;
	if (w->rank == 0) {
		struct rcache *rc = xport_rcache(w->x);
		void *buf = mmap(NULL, big, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), *again;
		void *bufs[8];

		MP_CHECK(w, buf != MAP_FAILED, "mmap");
		rcache_get_stats(rc, &a);
		/* Hits: the same buffer five times (eager: the source is registered, never copied). */
		for (int i = 0; i < 5; i++)
			rc_send(w, buf, big, seed++);
		rcache_get_stats(rc, &b);
		MP_CHECK(w, b.misses - a.misses >= 1 && (b.monitor == RCACHE_MONITOR_NONE ||
							  b.hits - a.hits >= 4),
			 "same buffer x5: %llu misses, %llu hits (monitor %s)",
			 (unsigned long long)(b.misses - a.misses), (unsigned long long)(b.hits - a.hits),
			 rcache_monitor_name(b.monitor));
		/* Evictions: 8 buffers, twice, through a cache bounded to 4 entries. */
		for (int i = 0; i < 8; i++) {
			bufs[i] = mmap(NULL, small, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			MP_CHECK(w, bufs[i] != MAP_FAILED, "mmap");
		}
		a = b;
		for (int round = 0; round < 2 && !w->fail; round++)
			for (int i = 0; i < 8; i++)
				rc_send(w, bufs[i], small, seed++);
		rcache_get_stats(rc, &b);
		MP_CHECK(w, b.monitor == RCACHE_MONITOR_NONE || b.evictions > a.evictions,
			 "16 sends of 8 buffers through %zu entries: %llu evictions", b.max_entries,
			 (unsigned long long)(b.evictions - a.evictions));
		MP_CHECK(w, b.entries <= b.max_entries, "%zu entries cached, bound %zu", b.entries,
			 b.max_entries);
		for (int i = 0; i < 8; i++)
			munmap(bufs[i], small);
		/* Invalidation: unmap a registered buffer, map new memory at the same address. */
		a = b;
		rc_send(w, buf, big, seed++);
		munmap(buf, big);
		again = mmap(buf, big, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
		MP_CHECK(w, again == buf, "mmap at the same address");
		rc_send(w, again, big, seed++);
		rcache_get_stats(rc, &b);
		MP_CHECK(w, b.monitor == RCACHE_MONITOR_NONE || b.mem_invalidations > a.mem_invalidations,
			 "no invalidation after munmap (monitor %s)", rcache_monitor_name(b.monitor));
		if (!w->fail)
			printf("rcache: monitor %s; hits %llu, misses %llu, evictions %llu, memory "
			       "invalidations %llu, uncached %llu\n", rcache_monitor_name(b.monitor),
			       (unsigned long long)b.hits, (unsigned long long)b.misses,
			       (unsigned long long)b.evictions, (unsigned long long)b.mem_invalidations,
			       (unsigned long long)b.uncached);
		munmap(again, big);
		MP_CHECK(w, w->done_err == 0, "sends failed: %s", w->last_err);
	}
	if (w->rank == 1) {
		s.want = 5 + 16 + 2;
		while (!w->fail && s.got < s.want)
			if (mp_step(w))
				break;
	}
	w->on_rx = NULL;
	w->sc = NULL;
	MP_CHECK(w, boot_barrier(w->b) == 0, "barrier: %s", rdag_last_error());
}
