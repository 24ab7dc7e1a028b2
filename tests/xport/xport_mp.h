/* Multi-process transport tests: the worker context, helpers and the scenarios' entry points. */
#ifndef RDAG_TESTS_XPORT_MP_H
#define RDAG_TESTS_XPORT_MP_H

#include <stdint.h>
#include <stdio.h>

#include "bootstrap/boot.h"
#include "mp_common.h"
#include "xport/xport.h"

/* struct mp_cfg, mp_now_ns, mp_fill / mp_check / mp_seed, mp_run: tests/common/mp_common.h */
#define MP_MAXW 16

/* Shared between the parent and the workers (an anonymous shared mapping). */
struct mp_shared {
	volatile uint64_t kill_ns;  /* when the parent sent SIGKILL to the victim (CLOCK_MONOTONIC) */
};

struct mp_worker;
typedef void (*mp_rx_fn)(struct mp_worker *w, struct xport_rx *rx);

struct mp_worker {
	int rank, world;
	const struct mp_cfg *cfg;
	struct mp_shared *sh;
	int ready_fd;          /* kill scenario: the victim writes here when it is ready to die */
	struct boot *b;
	struct xport *x;
	struct xport_opts xo;
	mp_rx_fn on_rx;
	void *sc;              /* the scenario's state */
	int fail;
	uint64_t sends, done_ok, done_err;
	int last_status;
	char last_err[512];
	uint64_t deadline_ns;
	/* messages that came while no scenario handler was installed (replayed by the next one) */
	struct xport_rx *stash[256];
	int nstash;
	/* peer-death events */
	int dead[MP_MAXW];
	uint64_t dead_ns[MP_MAXW];
	char dead_why[MP_MAXW][320];
};

#define MP_CHECK(w, cond, ...)                                                             \
	do {                                                                               \
		if (!(cond)) {                                                             \
			mp_fail((w), __FILE__, __LINE__, __VA_ARGS__);                     \
		}                                                                          \
	} while (0)

void mp_fail(struct mp_worker *w, const char *file, int line, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
/* The handshake offer (WIRE_HS_* bits) each rank makes, so every pair sees a different one. */
static inline uint16_t mp_offer_of(uint32_t rank)
{
	return (uint16_t)((rank & 1 ? WIRE_HS_NCCL : 0) | (rank & 2 ? WIRE_HS_ARENA_GPU : 0));
}

/* Past the watchdog-independent deadline of the worker (prints and fails once). */
int mp_late(struct mp_worker *w);

/* Encoders (xport_encode_fn) for RPC_CALL, BACKWARD_AUTOGRAD_REQ, FORWARD_AUTOGRAD_REQ(RPC_CALL). */
struct mp_rpc {
	const char *name;
	const void *payload;
	uint32_t plen;
};
int mp_enc_rpc(void *arg, void *buf, size_t cap, const struct wire_env *env,
	       const struct wire_tensor *t, uint32_t n, size_t *len);
int mp_enc_grad(void *arg, void *buf, size_t cap, const struct wire_env *env,
		const struct wire_tensor *t, uint32_t n, size_t *len);
int mp_enc_fwd(void *arg, void *buf, size_t cap, const struct wire_env *env,
	       const struct wire_tensor *t, uint32_t n, size_t *len);

/* xport_send / xport_send_bytes retried while RDAG_EAGAIN, with progress in between. */
int mp_send(struct mp_worker *w, uint32_t peer, uint64_t req, xport_encode_fn enc, void *arg,
	    const struct xport_tensor *t, uint32_t n);
int mp_send_bytes(struct mp_worker *w, uint32_t peer, const void *msg, size_t len);
/* Progress until all our sends have called back (or the deadline). */
int mp_drain(struct mp_worker *w);
/* One progress step with a short wait; fails the worker on a progress error. */
int mp_step(struct mp_worker *w);

/* A U8 tensor descriptor of n bytes. */
void mp_desc_u8(struct wire_tensor *d, uint64_t n);

/* Scenarios: return nothing, set w->fail on a failed check. */
void sc_pingpong(struct mp_worker *w);
void sc_burst(struct mp_worker *w);
void sc_tensors(struct mp_worker *w);
void sc_refuse(struct mp_worker *w);
void sc_kill(struct mp_worker *w);
void sc_rcache(struct mp_worker *w);
void sc_threads(struct mp_worker *w);
void sc_hold(struct mp_worker *w);
/* Ping-pong among the ranks in mask, k round trips per pair (used by sc_pingpong and sc_kill). */
void mp_pingpong(struct mp_worker *w, uint32_t mask, long k);

#endif /* RDAG_TESTS_XPORT_MP_H */
