/* Transport scenarios on healthy peers: ping-pong, the 100,000-message burst, tensors of every size, threads. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "xport_mp.h"

/* ---- ping-pong ------------------------------------------------------------------------------- */

struct pp {
	long k;
	uint32_t mask;
	size_t big;                   /* payload of the occasional near-maximal message */
	long pongs[MP_MAXW];          /* pongs received from a higher rank */
	long pings[MP_MAXW];          /* pings received from a lower rank */
	int ping_due[MP_MAXW];        /* the next ping to that higher rank may go */
	long reply_seq[MP_MAXW];      /* ping to answer from a lower rank (-1: none) */
	uint8_t *payload;
};

static uint32_t pp_len(const struct pp *s, long seq)
{
	return seq % 97 == 96 ? (uint32_t)s->big : (uint32_t)(8 + (seq * 37) % 1000);
}

static void pp_rx(struct mp_worker *w, struct xport_rx *rx)
{
	struct pp *s = w->sc;
	const struct wire_call *c = &rx->msg.u.call.call;
	uint32_t src = rx->peer;
	long seq = (long)rx->msg.env.req_id;
	int ping;

	MP_CHECK(w, rx->msg.kind == WIRE_RPC_CALL, "expected RPC_CALL from %u, got %s", src,
		 wire_kind_name(rx->msg.kind));
	if (rx->msg.kind != WIRE_RPC_CALL || src >= MP_MAXW)
		goto out;
	ping = c->name.len == 4 && memcmp(c->name.ptr, "ping", 4) == 0;
	MP_CHECK(w, c->payload.len == pp_len(s, seq), "%s %ld from %u: %u payload bytes, expected %u",
		 ping ? "ping" : "pong", seq, src, c->payload.len, pp_len(s, seq));
	MP_CHECK(w, !mp_check(c->payload.ptr, c->payload.len, mp_seed(ping ? src : (uint32_t)w->rank,
								     ping ? (uint32_t)w->rank : src,
								     (uint64_t)seq)),
		 "%s %ld from %u: payload differs", ping ? "ping" : "pong", seq, src);
	if (ping) {
		MP_CHECK(w, (int)src < w->rank && seq == s->pings[src], "ping %ld from %u, expected %ld",
			 seq, src, s->pings[src]);
		s->pings[src]++;
		s->reply_seq[src] = seq;
	} else {
		MP_CHECK(w, (int)src > w->rank && seq == s->pongs[src], "pong %ld from %u, expected %ld",
			 seq, src, s->pongs[src]);
		s->pongs[src]++;
		if (s->pongs[src] < s->k)
			s->ping_due[src] = 1;
	}
out:
	xport_release(w->x, rx);
}

void mp_pingpong(struct mp_worker *w, uint32_t mask, long k)
{
	struct pp s;
	uint8_t *msg;
	size_t cap = w->xo.msg_max;

	memset(&s, 0, sizeof(s));
	s.k = k;
	s.mask = mask;
	s.big = w->xo.msg_max - 128;
	s.payload = malloc(w->xo.msg_max);
	msg = malloc(cap);
	if (!s.payload || !msg) {
		MP_CHECK(w, 0, "out of memory");
		goto out;
	}
	for (int r = 0; r < w->world; r++) {
		s.reply_seq[r] = -1;
		s.ping_due[r] = r > w->rank && (mask >> r & 1);
	}
	w->sc = &s;
	w->on_rx = pp_rx;
	for (int i = 0; i < w->nstash; i++)
		pp_rx(w, w->stash[i]);
	w->nstash = 0;
	for (;;) {
		int busy = 0;

		for (int r = 0; r < w->world && !w->fail; r++) {
			if (!(mask >> r & 1) || r == w->rank)
				continue;
			if (s.reply_seq[r] >= 0) {
				/* Pongs go pre-encoded through xport_send_bytes. */
				long seq = s.reply_seq[r];
				struct wire_env env = {.req_id = (uint64_t)seq, .src = (uint16_t)w->rank};
				struct wire_call c;
				size_t len;

				memset(&c, 0, sizeof(c));
				c.name.ptr = "pong";
				c.name.len = 4;
				c.payload.ptr = s.payload;
				c.payload.len = pp_len(&s, seq);
				mp_fill(s.payload, c.payload.len, mp_seed((uint32_t)r, (uint32_t)w->rank,
									  (uint64_t)seq));
				MP_CHECK(w, wire_encode_rpc_call(msg, cap, &env, &c, NULL, 0, &len) == 0,
					 "encoding a pong: %s", rdag_last_error());
				MP_CHECK(w, mp_send_bytes(w, (uint32_t)r, msg, len) == 0, "pong to %d: %s", r,
					 rdag_last_error());
				s.reply_seq[r] = -1;
			}
			if (s.ping_due[r]) {
				long seq = s.pongs[r];
				struct mp_rpc rpc = {"ping", s.payload, pp_len(&s, seq)};

				mp_fill(s.payload, rpc.plen, mp_seed((uint32_t)w->rank, (uint32_t)r,
								     (uint64_t)seq));
				s.ping_due[r] = 0;
				MP_CHECK(w, mp_send(w, (uint32_t)r, (uint64_t)seq, mp_enc_rpc, &rpc, NULL, 0) == 0,
					 "ping to %d: %s", r, rdag_last_error());
			}
			if (r > w->rank ? s.pongs[r] < k : s.pings[r] < k)
				busy = 1;
		}
		if (w->fail || (!busy && w->done_ok + w->done_err == w->sends))
			break;
		if (mp_step(w))
			break;
	}
	MP_CHECK(w, w->done_err == 0, "%llu sends failed: %s", (unsigned long long)w->done_err,
		 w->last_err);
out:
	w->on_rx = NULL;
	w->sc = NULL;
	free(s.payload);
	free(msg);
}

void sc_pingpong(struct mp_worker *w)
{
	long k = w->cfg->count ? w->cfg->count : 2000;
	struct xport_stats st;

	/* Every worker knows what each other offered in its handshake (and its own offer). */
	for (uint32_t r = 0; r < (uint32_t)w->world; r++) {
		uint16_t got = 0xffff;
		int rc = xport_peer_offer(w->x, r, &got);

		MP_CHECK(w, rc == 0 && got == mp_offer_of(r), "offer of worker %u: rc %d, 0x%x, not 0x%x",
			 r, rc, got, mp_offer_of(r));
	}
	{
		uint16_t got;

		MP_CHECK(w, xport_peer_offer(w->x, (uint32_t)w->world, &got) == RDAG_EINVAL,
			 "offer of a worker past the world");
	}
	mp_pingpong(w, ~0u, k);
	xport_get_stats(w->x, &st);
	MP_CHECK(w, st.credit_overruns == 0 && st.refused == 0 && st.recv_errors == 0,
		 "overruns %llu, refused %llu, receive errors %llu",
		 (unsigned long long)st.credit_overruns, (unsigned long long)st.refused,
		 (unsigned long long)st.recv_errors);
	MP_CHECK(w, boot_barrier(w->b) == 0, "barrier: %s", rdag_last_error());
}

/* ---- burst: many senders, one receiver --------------------------------------------------------- */

#define BURST_HOLD 16

struct burst {
	long per_sender;
	uint8_t *seen[MP_MAXW];       /* per sender: one byte per sequence number */
	long received;
	struct xport_rx *held[BURST_HOLD];
	unsigned nheld, head;
};

static void burst_rx(struct mp_worker *w, struct xport_rx *rx)
{
	struct burst *s = w->sc;
	const struct wire_call *c = &rx->msg.u.call.call;
	uint64_t seq = rx->msg.env.req_id;
	uint32_t src = rx->peer;

	if (rx->msg.kind != WIRE_RPC_CALL || src == 0 || src >= (uint32_t)w->world ||
	    seq >= (uint64_t)s->per_sender) {
		MP_CHECK(w, 0, "unexpected %s %llu from %u", wire_kind_name(rx->msg.kind),
			 (unsigned long long)seq, src);
		xport_release(w->x, rx);
		return;
	}
	MP_CHECK(w, !s->seen[src][seq], "message %llu from %u arrived twice", (unsigned long long)seq,
		 src);
	s->seen[src][seq] = 1;
	MP_CHECK(w, c->payload.len == 8 + 8 * (seq % 7) &&
			    !mp_check(c->payload.ptr, c->payload.len, mp_seed(src, 0, seq)),
		 "message %llu from %u: bad payload", (unsigned long long)seq, src);
	s->received++;
	/* Hold the latest messages a while: credits stay tied up, as when a worker is busy. */
	if (s->nheld == BURST_HOLD) {
		xport_release(w->x, s->held[s->head]);
		s->held[s->head] = rx;
		s->head = (s->head + 1) % BURST_HOLD;
	} else {
		s->held[(s->head + s->nheld++) % BURST_HOLD] = rx;
	}
}

void sc_burst(struct mp_worker *w)
{
	long total = w->cfg->count ? w->cfg->count : 100000;
	struct burst s;
	struct xport_stats st;
	uint64_t t0 = mp_now_ns();

	memset(&s, 0, sizeof(s));
	s.per_sender = (total + w->world - 2) / (w->world - 1); /* at least `total` in all */
	w->sc = &s;
	if (w->rank == 0) {
		for (int r = 1; r < w->world; r++) {
			s.seen[r] = calloc((size_t)s.per_sender, 1);
			if (!s.seen[r])
				MP_CHECK(w, 0, "out of memory");
		}
		w->on_rx = burst_rx;
		while (!w->fail && s.received < s.per_sender * (w->world - 1))
			if (mp_step(w))
				break;
		while (s.nheld) {
			xport_release(w->x, s.held[s.head]);
			s.head = (s.head + 1) % BURST_HOLD;
			s.nheld--;
		}
		xport_get_stats(w->x, &st);
		MP_CHECK(w, st.credit_overruns == 0, "%llu messages beyond the credits",
			 (unsigned long long)st.credit_overruns);
		MP_CHECK(w, st.recv_errors == 0 && st.refused == 0, "receive errors %llu, refused %llu",
			 (unsigned long long)st.recv_errors, (unsigned long long)st.refused);
		MP_CHECK(w, st.msgs_recv == (uint64_t)(s.per_sender * (w->world - 1)),
			 "%llu messages delivered", (unsigned long long)st.msgs_recv);
		if (!w->fail)
			printf("burst: %ld messages from %d senders in %.0f ms; %llu CREDIT messages "
			       "sent back; fewest receives posted %u of %u; %u credits per peer\n",
			       s.received, w->world - 1, (double)(mp_now_ns() - t0) / 1e6,
			       (unsigned long long)st.credit_msgs_sent, st.posted_min, st.posted_total,
			       st.credits);
		for (int r = 1; r < w->world; r++)
			free(s.seen[r]);
	} else {
		uint8_t payload[64];

		for (long i = 0; i < s.per_sender && !w->fail; i++) {
			struct mp_rpc rpc = {"b", payload, (uint32_t)(8 + 8 * (i % 7))};

			mp_fill(payload, rpc.plen, mp_seed((uint32_t)w->rank, 0, (uint64_t)i));
			MP_CHECK(w, mp_send(w, 0, (uint64_t)i, mp_enc_rpc, &rpc, NULL, 0) == 0,
				 "send %ld: %s", i, rdag_last_error());
			/* Keep the completions flowing without waiting. */
			if ((i & 63) == 0 && xport_progress(w->x, 0) < 0)
				MP_CHECK(w, 0, "progress: %s", rdag_last_error());
		}
		mp_drain(w);
		xport_get_stats(w->x, &st);
		MP_CHECK(w, w->done_err == 0, "%llu sends failed: %s", (unsigned long long)w->done_err,
			 w->last_err);
		MP_CHECK(w, st.backlogged > 0, "the burst never waited for credits: flow control not "
			 "exercised");
	}
	w->on_rx = NULL;
	w->sc = NULL;
	MP_CHECK(w, boot_barrier(w->b) == 0, "barrier: %s", rdag_last_error());
}

/* ---- tensors of every size through the three protocols ---------------------------------------- */

#define T_MAXT 24
#define T_BIG ((uint64_t)64 << 20) /* the largest tensor */

struct tmsg {
	int kind;                 /* 0: BACKWARD_AUTOGRAD_REQ, 1: FORWARD_AUTOGRAD_REQ(RPC_CALL),
				     2: RPC_CALL with a large payload */
	uint32_t n;
	uint64_t size[T_MAXT];
	uint8_t *buf[T_MAXT];
};

struct tens {
	struct tmsg *msgs;
	uint32_t nmsgs;
	uint32_t received;
	int prev;
	uint64_t got_loc[WIRE_LOC_COUNT_];
};

static const uint64_t t_sizes[] = {
	1, 7, 8, 100, 4095, 4096, 4097, 8191, 65536 + 3, 1u << 20, 2u << 20, (2u << 20) + 1,
	(3u << 20) + 5, 8u << 20, (16u << 20) + 64, T_BIG,
};

static void build_msgs(struct tens *s)
{
	uint32_t nsz = sizeof(t_sizes) / sizeof(t_sizes[0]), m = 0;

	s->nmsgs = nsz + 4;
	s->msgs = calloc(s->nmsgs, sizeof(*s->msgs));
	for (uint32_t i = 0; i < nsz; i++, m++) {
		s->msgs[m].n = 1;
		s->msgs[m].size[0] = t_sizes[i];
	}
	/* One of each protocol in a wrapped message. */
	s->msgs[m].kind = 1;
	s->msgs[m].n = 3;
	s->msgs[m].size[0] = 100;
	s->msgs[m].size[1] = 512u << 10;
	s->msgs[m].size[2] = 5u << 20;
	m++;
	/* More tensors than the small inline arrays, mixed sizes, some empty. */
	s->msgs[m].n = 20;
	for (uint32_t i = 0; i < 20; i++)
		s->msgs[m].size[i] = i % 5 == 4 ? 0 : (uint64_t)(i * 1237 % 9000) * (i % 3 ? 1 : 17);
	m++;
	/* Tensors that do not fit inline together: the message goes out of line. */
	s->msgs[m].n = 4;
	for (uint32_t i = 0; i < 4; i++)
		s->msgs[m].size[i] = 4000;
	m++;
	/* Inline by size, but the payload leaves no room: encoded again with the tensor out of line. */
	s->msgs[m].kind = 2;
	s->msgs[m].n = 1;
	s->msgs[m].size[0] = 4000;
}

static void tens_rx(struct mp_worker *w, struct xport_rx *rx)
{
	struct tens *s = w->sc;
	uint64_t idx = rx->msg.env.req_id;
	const struct tmsg *m;

	MP_CHECK(w, (int)rx->peer == s->prev && idx < s->nmsgs, "message %llu from %u",
		 (unsigned long long)idx, rx->peer);
	if ((int)rx->peer != s->prev || idx >= s->nmsgs)
		goto out;
	m = &s->msgs[idx];
	MP_CHECK(w, rx->msg.kind == (m->kind == 1 ? WIRE_FORWARD_AUTOGRAD_REQ
				     : m->kind == 2 ? WIRE_RPC_CALL : WIRE_BACKWARD_AUTOGRAD_REQ),
		 "message %llu is %s", (unsigned long long)idx, wire_kind_name(rx->msg.kind));
	if (m->kind == 2)
		MP_CHECK(w, rx->msg.u.call.call.payload.len == w->xo.msg_max - 2048 &&
				    !mp_check(rx->msg.u.call.call.payload.ptr, rx->msg.u.call.call.payload.len,
					      mp_seed(rx->peer, idx, 99)),
			 "message %llu: payload differs", (unsigned long long)idx);
	MP_CHECK(w, rx->ntensors == m->n, "message %llu: %u tensors, expected %u",
		 (unsigned long long)idx, rx->ntensors, m->n);
	for (uint32_t i = 0; i < rx->ntensors && i < m->n; i++) {
		const struct xport_rx_tensor *t = &rx->tensors[i];
		uint64_t n = m->size[i];
		size_t bad;

		MP_CHECK(w, t->desc.nbytes == n, "message %llu tensor %u: %llu bytes, expected %llu",
			 (unsigned long long)idx, i, (unsigned long long)t->desc.nbytes,
			 (unsigned long long)n);
		if (t->desc.nbytes != n)
			continue;
		if (t->desc.loc < WIRE_LOC_COUNT_)
			s->got_loc[t->desc.loc]++;
		/* The protocol the sizes call for (eager may fall back to rendezvous when full). */
		if (m->n == 1 && m->kind != 2 && n <= w->xo.inline_max)
			MP_CHECK(w, t->desc.loc == WIRE_LOC_INLINE, "%llu bytes went by location %u",
				 (unsigned long long)n, t->desc.loc);
		else if (n > w->xo.eager_max)
			MP_CHECK(w, t->desc.loc == WIRE_LOC_RDV_PENDING, "%llu bytes went by location %u",
				 (unsigned long long)n, t->desc.loc);
		else if (n > w->xo.inline_max)
			MP_CHECK(w, t->desc.loc == WIRE_LOC_SLOT || t->desc.loc == WIRE_LOC_RDV_PENDING,
				 "%llu bytes went by location %u", (unsigned long long)n, t->desc.loc);
		bad = n ? mp_check(t->data, n, mp_seed(rx->peer, idx, i)) : 0;
		MP_CHECK(w, !bad, "message %llu tensor %u (%llu bytes, location %u): byte %zu differs",
			 (unsigned long long)idx, i, (unsigned long long)n, t->desc.loc, bad - 1);
	}
	s->received++;
out:
	xport_release(w->x, rx);
}

void sc_tensors(struct mp_worker *w)
{
	struct tens s;
	struct xport_stats st;
	int next = (w->rank + 1) % w->world;

	memset(&s, 0, sizeof(s));
	s.prev = (w->rank + w->world - 1) % w->world;
	build_msgs(&s);
	w->sc = &s;
	w->on_rx = tens_rx;
	for (uint32_t i = 0; i < s.nmsgs && !w->fail; i++) {
		struct tmsg *m = &s.msgs[i];
		struct xport_tensor t[T_MAXT] = {{0}};
		struct mp_rpc rpc = {"fn", "args", 4};
		uint8_t *big = NULL;
		xport_encode_fn enc = m->kind == 1 ? mp_enc_fwd : m->kind == 2 ? mp_enc_rpc : mp_enc_grad;

		for (uint32_t j = 0; j < m->n; j++) {
			m->buf[j] = m->size[j] ? malloc(m->size[j]) : NULL;
			MP_CHECK(w, !m->size[j] || m->buf[j], "out of memory");
			if (m->buf[j])
				mp_fill(m->buf[j], m->size[j], mp_seed((uint32_t)w->rank, i, j));
			t[j].data = m->buf[j];
			mp_desc_u8(&t[j].desc, m->size[j]);
		}
		if (m->kind == 2) {
			rpc.plen = (uint32_t)w->xo.msg_max - 2048;
			big = malloc(rpc.plen);
			MP_CHECK(w, big != NULL, "out of memory");
			if (big)
				mp_fill(big, rpc.plen, mp_seed((uint32_t)w->rank, i, 99));
			rpc.payload = big;
		}
		if (w->fail)
			break;
		MP_CHECK(w, mp_send(w, (uint32_t)next, i, enc, &rpc, t, m->n) == 0, "message %u: %s", i,
			 rdag_last_error());
		free(big); /* the message was encoded (copied) by xport_send */
	}
	while (!w->fail && (s.received < s.nmsgs || w->done_ok + w->done_err < w->sends))
		if (mp_step(w))
			break;
	MP_CHECK(w, w->done_err == 0, "%llu sends failed: %s", (unsigned long long)w->done_err,
		 w->last_err);
	xport_get_stats(w->x, &st);
	MP_CHECK(w, st.tensors_inline && st.tensors_eager && st.tensors_rdv,
		 "protocols used: %llu inline, %llu eager, %llu rendezvous",
		 (unsigned long long)st.tensors_inline, (unsigned long long)st.tensors_eager,
		 (unsigned long long)st.tensors_rdv);
	MP_CHECK(w, s.got_loc[WIRE_LOC_INLINE] && s.got_loc[WIRE_LOC_SLOT] &&
			    s.got_loc[WIRE_LOC_RDV_PENDING],
		 "received: %llu inline, %llu eager, %llu rendezvous",
		 (unsigned long long)s.got_loc[WIRE_LOC_INLINE],
		 (unsigned long long)s.got_loc[WIRE_LOC_SLOT],
		 (unsigned long long)s.got_loc[WIRE_LOC_RDV_PENDING]);
	MP_CHECK(w, st.credit_overruns == 0 && st.refused == 0, "overruns %llu, refused %llu",
		 (unsigned long long)st.credit_overruns, (unsigned long long)st.refused);
	/*
	 * The write window (RDAG_WRITE_WINDOW): writes no longer than its chunk, never more than a
	 * window (plus the write that crossed it) in flight to one peer, and the 64 MiB tensor had
	 * to wait for room. Without a window: nothing waited.
	 */
	MP_CHECK(w, st.write_chunk && st.writes * st.write_chunk >= st.bytes_written,
		 "%llu writes for %llu bytes, at most %llu each", (unsigned long long)st.writes,
		 (unsigned long long)st.bytes_written, (unsigned long long)st.write_chunk);
	if (st.write_window) {
		MP_CHECK(w, st.window_peak < st.write_window + st.write_chunk,
			 "%llu bytes of writes in flight to one peer, window %llu",
			 (unsigned long long)st.window_peak, (unsigned long long)st.write_window);
		MP_CHECK(w, st.write_window >= T_BIG || st.window_waits > 0,
			 "no write waited for the %llu-byte window", (unsigned long long)st.write_window);
	} else {
		MP_CHECK(w, st.window_waits == 0, "%llu writes waited without a window",
			 (unsigned long long)st.window_waits);
	}
	if (!w->fail && w->rank == 0)
		printf("tensors: %u messages, 1 B .. 64 MiB, verified (%s); sent %llu inline, %llu "
		       "eager, %llu rendezvous; %llu writes of at most %llu bytes, window %llu, "
		       "%llu waits for it, at most %llu bytes in flight\n", s.nmsgs, st.visibility,
		       (unsigned long long)st.tensors_inline, (unsigned long long)st.tensors_eager,
		       (unsigned long long)st.tensors_rdv, (unsigned long long)st.writes,
		       (unsigned long long)st.write_chunk, (unsigned long long)st.write_window,
		       (unsigned long long)st.window_waits, (unsigned long long)st.window_peak);
	w->on_rx = NULL;
	w->sc = NULL;
	MP_CHECK(w, boot_barrier(w->b) == 0, "barrier: %s", rdag_last_error());
	for (uint32_t i = 0; i < s.nmsgs; i++)
		for (uint32_t j = 0; j < s.msgs[i].n; j++)
			free(s.msgs[i].buf[j]);
	free(s.msgs);
}

/* ---- a progress thread beside the sending thread ----------------------------------------------- */

#define THR_SIZES 3
static const uint64_t thr_sizes[THR_SIZES] = {100, 20000, 3u << 20}; /* inline, eager, rendezvous */

struct thr {
	struct mp_worker *w;
	long per_peer;
	uint8_t *buf[THR_SIZES];
	int stop;                      /* atomics: the threads share these */
	long received, done, failed, bad;
	pthread_mutex_t m;
	pthread_cond_t c;
};

static void *thr_progress(void *arg)
{
	struct thr *s = arg;

	while (!__atomic_load_n(&s->stop, __ATOMIC_ACQUIRE))
		if (xport_progress(s->w->x, 20) < 0)
			__atomic_add_fetch(&s->failed, 1, __ATOMIC_RELAXED);
	return NULL;
}

static void thr_kick(struct thr *s)
{
	pthread_mutex_lock(&s->m);
	pthread_cond_broadcast(&s->c);
	pthread_mutex_unlock(&s->m);
}

static void thr_done(void *arg, int status)
{
	struct thr *s = arg;

	if (status)
		__atomic_add_fetch(&s->failed, 1, __ATOMIC_RELAXED);
	__atomic_add_fetch(&s->done, 1, __ATOMIC_RELEASE);
	thr_kick(s);
}

/* Runs on the progress thread. */
static void thr_rx(struct mp_worker *w, struct xport_rx *rx)
{
	struct thr *s = w->sc;
	uint64_t k = rx->msg.env.req_id % THR_SIZES;

	if (rx->ntensors != 1 || rx->tensors[0].desc.nbytes != thr_sizes[k] ||
	    mp_check(rx->tensors[0].data, thr_sizes[k], mp_seed(rx->peer, k, 7)))
		__atomic_add_fetch(&s->bad, 1, __ATOMIC_RELAXED);
	xport_release(w->x, rx);
	__atomic_add_fetch(&s->received, 1, __ATOMIC_RELEASE);
	thr_kick(s);
}

void sc_threads(struct mp_worker *w)
{
	struct thr s;
	pthread_t th;
	long want, sent = 0;

	memset(&s, 0, sizeof(s));
	s.w = w;
	s.per_peer = w->cfg->count ? w->cfg->count : 300;
	want = s.per_peer * (w->world - 1);
	pthread_mutex_init(&s.m, NULL);
	pthread_cond_init(&s.c, NULL);
	for (int k = 0; k < THR_SIZES; k++) {
		s.buf[k] = malloc(thr_sizes[k]);
		MP_CHECK(w, s.buf[k] != NULL, "out of memory");
		if (s.buf[k])
			mp_fill(s.buf[k], thr_sizes[k], mp_seed((uint32_t)w->rank, (uint64_t)k, 7));
	}
	w->sc = &s;
	w->on_rx = thr_rx;
	MP_CHECK(w, pthread_create(&th, NULL, thr_progress, &s) == 0, "pthread_create");
	/* This thread only sends; the progress thread runs every callback. */
	for (long i = 0; i < s.per_peer && !w->fail; i++) {
		for (int r = 0; r < w->world; r++) {
			struct xport_tensor t = {0};
			uint64_t k = (uint64_t)i % THR_SIZES;
			int rc;

			if (r == w->rank)
				continue;
			t.data = s.buf[k];
			mp_desc_u8(&t.desc, thr_sizes[k]);
			while ((rc = xport_send(w->x, (uint32_t)r, (uint64_t)i, mp_enc_grad, NULL, &t, 1, thr_done,
						&s)) == RDAG_EAGAIN) {
				pthread_mutex_lock(&s.m);
				/* An op comes free when a send finishes: wait for that, not for a time. */
				if (__atomic_load_n(&s.done, __ATOMIC_ACQUIRE) < sent)
					pthread_cond_wait(&s.c, &s.m);
				pthread_mutex_unlock(&s.m);
				if (mp_late(w))
					break;
			}
			MP_CHECK(w, rc == 0, "send %ld to %d: %s", i, r, rdag_last_error());
			if (rc)
				break;
			sent++;
		}
	}
	pthread_mutex_lock(&s.m);
	while (!w->fail && (__atomic_load_n(&s.received, __ATOMIC_ACQUIRE) < want ||
			    __atomic_load_n(&s.done, __ATOMIC_ACQUIRE) < sent)) {
		struct timespec ts;

		/* A bounded wait so the scenario deadline is checked; completion wakes it earlier. */
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += 1;
		pthread_cond_timedwait(&s.c, &s.m, &ts);
		if (mp_late(w))
			break;
	}
	pthread_mutex_unlock(&s.m);
	__atomic_store_n(&s.stop, 1, __ATOMIC_RELEASE);
	pthread_join(th, NULL);
	MP_CHECK(w, s.received == want && s.done == sent, "received %ld of %ld, %ld of %ld sends done",
		 s.received, want, s.done, sent);
	MP_CHECK(w, s.failed == 0 && s.bad == 0, "%ld failures, %ld bad messages", s.failed, s.bad);
	if (!w->fail && w->rank == 0)
		printf("threads: %ld messages per peer, sent from the main thread, delivered on the "
		       "progress thread\n", s.per_peer);
	w->on_rx = NULL;
	w->sc = NULL;
	MP_CHECK(w, boot_barrier(w->b) == 0, "barrier: %s", rdag_last_error());
	for (int k = 0; k < THR_SIZES; k++)
		free(s.buf[k]);
	pthread_cond_destroy(&s.c);
	pthread_mutex_destroy(&s.m);
}

/* ---- hold: the receiver keeps every message (detached) until all have come ------------------- */

/*
 * Every other rank sends 4 x credits messages to rank 0, each with an inline, an eager and (one
 * in 16) a 1 MiB tensor. Rank 0 detaches each message as it comes and releases none until the
 * last has arrived: without xport_detach the senders would run out of credits after `credits`
 * messages and the scenario would never end. Then every held message's bytes are checked (the
 * receive buffers have been reused many times meanwhile) and everything is released.
 */
struct hold {
	struct xport_rx **held;
	long n, want, per_sender;
};

#define HOLD_SMALL 512
#define HOLD_EAGER 16384
#define HOLD_BIG (1 << 20)

static void hold_rx(struct mp_worker *w, struct xport_rx *rx)
{
	struct hold *s = w->sc;
	struct xport_rx *d = xport_detach(w->x, rx);

	MP_CHECK(w, d != NULL && d->detached, "xport_detach failed: %s", rdag_last_error());
	if (!d) {
		xport_release(w->x, rx);
		return;
	}
	if (s->n < s->want)
		s->held[s->n++] = d;
	else
		xport_release(w->x, d);
}

void sc_hold(struct mp_worker *w)
{
	struct xport_stats st;
	struct hold s;

	memset(&s, 0, sizeof(s));
	s.per_sender = 4L * w->xo.credits;
	s.want = s.per_sender * (w->world - 1);
	if (w->rank == 0) {
		s.held = calloc((size_t)s.want, sizeof(*s.held));
		MP_CHECK(w, s.held != NULL, "out of memory");
		w->sc = &s;
		w->on_rx = hold_rx;
		while (!w->fail && s.n < s.want)
			if (mp_step(w))
				break;
		for (long i = 0; i < s.n && !w->fail; i++) {
			struct xport_rx *rx = s.held[i];
			uint64_t seq = rx->msg.env.req_id;

			MP_CHECK(w, rx->ntensors == (seq % 16 == 0 ? 3u : 2u), "message %ld: %u tensors", i,
				 rx->ntensors);
			for (uint32_t j = 0; j < rx->ntensors && !w->fail; j++) {
				size_t bad = mp_check(rx->tensors[j].data, rx->tensors[j].desc.nbytes,
						      mp_seed(rx->peer, seq, j));

				MP_CHECK(w, bad == 0, "message %llu from %u, tensor %u (%s): byte %zu differs "
					 "after the receive buffer went back", (unsigned long long)seq,
					 rx->peer, j, j == 0 ? "inline" : j == 1 ? "eager" : "large", bad - 1);
			}
		}
		for (long i = 0; i < s.n; i++)
			xport_release(w->x, s.held[i]);
		free(s.held);
		w->on_rx = NULL;
		xport_get_stats(w->x, &st);
		MP_CHECK(w, st.credit_overruns == 0 && st.refused == 0, "overruns %llu, refused %llu",
			 (unsigned long long)st.credit_overruns, (unsigned long long)st.refused);
	} else {
		uint8_t *buf[3];

		buf[0] = malloc(HOLD_SMALL);
		buf[1] = malloc(HOLD_EAGER);
		buf[2] = malloc(HOLD_BIG);
		MP_CHECK(w, buf[0] && buf[1] && buf[2], "out of memory");
		for (long seq = 0; seq < s.per_sender && !w->fail; seq++) {
			struct xport_tensor t[3] = {{0}};
			struct mp_rpc rpc = {"hold", "", 0};
			uint32_t n = seq % 16 == 0 ? 3 : 2;
			static const size_t sz[3] = {HOLD_SMALL, HOLD_EAGER, HOLD_BIG};

			/* A buffer is reused once its send is done: wait for the previous ones. */
			if (mp_drain(w))
				break;
			for (uint32_t j = 0; j < n; j++) {
				mp_fill(buf[j], sz[j], mp_seed((uint64_t)w->rank, (uint64_t)seq, j));
				t[j].data = buf[j];
				mp_desc_u8(&t[j].desc, sz[j]);
			}
			MP_CHECK(w, mp_send(w, 0, (uint64_t)seq, mp_enc_rpc, &rpc, t, n) == 0,
				 "message %ld: %s", seq, rdag_last_error());
		}
		mp_drain(w);
		MP_CHECK(w, w->done_err == 0, "%llu sends failed: %s", (unsigned long long)w->done_err,
			 w->last_err);
		for (int j = 0; j < 3; j++)
			free(buf[j]);
	}
	MP_CHECK(w, boot_barrier(w->b) == 0, "barrier: %s", rdag_last_error());
}
