/* Autograd-core mp tests: the worker, its checks, the served functions' protocol, scenarios. */
#ifndef RDAG_TESTS_AGENT_MP_H
#define RDAG_TESTS_AGENT_MP_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <rdag/rdag.h>

#include "agent/agent_test.h"
#include "mp_common.h"

#define AM_MAXW 8
#define AM_MASK48 0xffffffffffffull
#define AM_MAXT 10   /* tensors an observation describes */
#define AM_MAXHOPS 4 /* forwards of one call to "f" */
#define AM_MAXFNS 32 /* send/recv functions read back per context */
#define AM_MAXSEEN 64

static inline uint16_t am_top(uint64_t id)
{
	return (uint16_t)(id >> 48);
}

static inline uint64_t am_low(uint64_t id)
{
	return id & AM_MASK48;
}

/* Shared by the parent and every worker (an anonymous shared mapping). */
struct am_board {
	uint64_t v[AM_MAXW][32];           /* what a worker publishes for the others (read after a barrier) */
	char phase[AM_MAXW][MP_PHASE_LEN]; /* what each worker is doing, for the watchdog's message */
};

/* ---- the protocol of the served functions (same binary on both sides) ------------------------ */

/* What "f" returns at a hop (every hop returns the same kind). */
enum am_ret {
	AM_RET_NONE = 0,   /* no tensor */
	AM_RET_NOGRAD = 1, /* one new 32-byte tensor not requiring grad */
	AM_RET_INPUT = 2,  /* the received tensor 0, as received (requires grad, RECV) */
	AM_RET_NODE = 3,   /* one new 32-byte tensor requiring grad: NODE (&am_node_key, 3) */
	AM_RET_ECHO = 4,   /* every received tensor, as received */
};

#define AM_CTL_MAGIC 0x6374726cu
#define AM_OBS_MAGIC 0x6f627376u
#define AM_TRY_CREATE 0x1u /* ctl.opts: the function tries rdag_ctx_create (expects RDAG_EBUSY) */

/* Payload of a call to "f". */
struct am_ctl {
	uint32_t magic;
	uint32_t ret;   /* enum am_ret */
	uint32_t nhops; /* forward the received tensors to hops[0], which goes on with hops[1..] */
	uint16_t hops[AM_MAXHOPS];
	uint32_t fail_at; /* 1 + the hop (0: first callee) failing with "bad thing 7"; 0: none */
	uint32_t flags;   /* rdag_call_opts.flags of the forwarded calls */
	uint32_t opts;    /* AM_TRY_CREATE */
	uint64_t seed;    /* received tensor i must hold mp_fill(.., seed + i) */
};

/* One received tensor as the function saw it. */
struct am_tobs {
	uint64_t nbytes;
	uint64_t bad;    /* 0, or 1 + the first offset that differs from the pattern */
	uint64_t node;   /* grad_fn.node */
	uint64_t msg_id; /* rdag_recv_fn_msg_id(node) when grad_kind is RDAG_GRAD_RECV */
	int64_t shape0, shape1;
	uint32_t input_nr;
	uint8_t requires_grad, grad_kind, dtype, ndim;
};

/* What one hop of "f" saw; the reply's payload is one per hop, this hop's first. */
struct am_obs {
	uint32_t magic;
	uint16_t worker;     /* who ran it */
	uint16_t caller;     /* who->worker */
	uint8_t has_context; /* who->has_context */
	int32_t cur_rc;      /* rdag_ctx_current() inside the function */
	int32_t create_rc;   /* AM_TRY_CREATE: rdag_ctx_create() inside the function */
	int32_t nested_rc;   /* the forwarded call's status */
	uint64_t context_id; /* who->context_id */
	uint64_t cur_id;
	uint32_t ntensors;
	uint32_t pad;
	struct am_tobs t[AM_MAXT];
};

/* Reply of "count". */
struct am_count {
	uint64_t ctx_count;
	uint64_t rref_count;
	int32_t lookup_rc; /* rdag_ctx_lookup() of the id in the payload */
	int32_t pad;
};

/* Payload of "make" (the RRef value) and reply of "prof_fn". */
struct am_make {
	uint64_t seed;
	uint64_t tensor_len;
};
#define AM_MAKE_PAYLOAD 48

struct am_prof {
	int32_t rc; /* rdag_prof_record("inner", t0, t1) */
	int32_t pad;
	uint64_t t0, t1;
};

extern char am_node_key; /* the graph node of AM_RET_NODE results */

/* ---- the worker ------------------------------------------------------------------------------ */

struct am_worker {
	int rank, world;
	const struct mp_cfg *cfg;
	struct am_board *board;
	rdag_agent_t *a;
	atomic_int fail;
	uint64_t deadline_ns; /* the scenario's end (a little before the watchdog) */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int gate[AM_MAXW];              /* "gate_wait" calls from that worker may return */
	struct am_obs seen[AM_MAXSEEN]; /* what "f" saw on this worker, in order */
	unsigned nseen;
	atomic_uint replies_sent; /* replies of "f" that have left (rdag_reply_on_sent) */
	bool skipped;             /* the scenario cannot run here (exit 77) */
};

void am_fail(struct am_worker *w, const char *file, int line, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
void am_fail_rc(struct am_worker *w, const char *file, int line, int got, int want, const char *fmt,
		...) __attribute__((format(printf, 6, 7)));

#define CHECK(w, cond, ...)                                                                        \
	do {                                                                                       \
		if (!(cond))                                                                       \
			am_fail((w), __FILE__, __LINE__,                                           \
				"check (" #cond ") failed: " __VA_ARGS__);                         \
	} while (0)

/* rc (evaluated once) must be want; prints both codes and rdag_last_error(). */
#define CHECK_RC(w, rc, want, ...)                                                                 \
	do {                                                                                       \
		int am_rc_ = (rc), am_want_ = (want);                                              \
		if (am_rc_ != am_want_)                                                            \
			am_fail_rc((w), __FILE__, __LINE__, am_rc_, am_want_, __VA_ARGS__);        \
	} while (0)

/* Time, byte patterns and the harness: tests/common/mp_common.h. */
/* A deadline s seconds from now, never past the worker's. */
uint64_t am_deadline(struct am_worker *w, unsigned s);

/* What the worker is doing now (shown by the watchdog). */
void am_phase(struct am_worker *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* agent_test_barrier() with a phase label; a failure is a check failure. */
void am_barrier(struct am_worker *w, const char *what);

/* Values shared through the board: set mine, read anyone's (after a barrier). */
void am_put(struct am_worker *w, unsigned slot, uint64_t v);
uint64_t am_get(struct am_worker *w, int rank, unsigned slot);

/* A CPU U8 tensor of n bytes over buf, not requiring grad. */
void am_tensor_u8(struct rdag_tensor *t, void *buf, size_t n);
/* Makes t a leaf requiring grad under key. */
void am_leaf(struct rdag_tensor *t, void *key);

void am_ctl_init(struct am_ctl *c, enum am_ret ret, uint64_t seed);

/* A call of "f": the future, its result and the observations of every hop. */
struct am_res {
	rdag_future_t *f;
	struct rdag_msg m;
	struct am_obs obs[AM_MAXHOPS + 1];
	unsigned nobs;
	char err[1024]; /* rdag_last_error() after a failed call */
};

/* rdag_rpc_sync of "f" on dst (flags as rdag_call_opts.flags); returns its status. */
int am_call(struct am_worker *w, uint32_t dst, const struct am_ctl *ctl,
	    const struct rdag_tensor *t, uint32_t nt, uint32_t flags, struct am_res *res);
void am_res_free(struct am_res *res);

/* "count" on dst (RDAG_CALL_PLAIN, no tensors: never wrapped): contexts, RRefs, lookup of id. */
int am_count(struct am_worker *w, uint32_t dst, uint64_t id, struct am_count *out);

/* Send (send = 1) or recv functions of id into out[AM_MAXFNS]: how many (0 on a failed check). */
size_t am_fns(struct am_worker *w, uint64_t id, int send, struct rdag_fn_info *out);
/* Known workers of id as a bit mask (bit i: worker i); 0 after a failed check. */
uint32_t am_known(struct am_worker *w, uint64_t id);
/* Observation i (serving order) of "f" here into *o (zeroed if none); returns how many. */
unsigned am_seen(struct am_worker *w, unsigned i, struct am_obs *o);

/* Checks the number of send/recv functions of id, and each one's peer and ntensors (if >= 0). */
void am_check_fns(struct am_worker *w, const char *file, int line, uint64_t id, int send, size_t n,
		  int peer, int ntensors, struct rdag_fn_info *out);
#define CHECK_FNS(w, id, send, n, peer, ntensors, out)                                             \
	am_check_fns((w), __FILE__, __LINE__, (id), (send), (n), (peer), (ntensors), (out))
#define CHECK_KNOWN(w, id, mask)                                                                   \
	do {                                                                                       \
		uint32_t am_k_ = am_known((w), (id)), am_m_ = (mask);                              \
		if (am_k_ != am_m_)                                                                \
			am_fail((w), __FILE__, __LINE__,                                           \
				"known workers of %#llx: mask %#x, expected %#x",                  \
				(unsigned long long)(id), am_k_, am_m_);                           \
	} while (0)

/* Scenarios (sc_graph.c: contexts and recording; sc_misc.c: the rest). */
void sc_ids(struct am_worker *w);
void sc_nested(struct am_worker *w);
void sc_plain_call(struct am_worker *w);
void sc_return_tensor(struct am_worker *w);
void sc_chain3(struct am_worker *w);
void sc_self_call(struct am_worker *w);
void sc_ping_back(struct am_worker *w);
void sc_no_grad(struct am_worker *w);
void sc_ten_tensors(struct am_worker *w);
void sc_cleanup(struct am_worker *w);
void sc_remote_error(struct am_worker *w);
void sc_rref(struct am_worker *w);
void sc_profiling(struct am_worker *w);
void sc_future(struct am_worker *w);
void sc_workers(struct am_worker *w);
void sc_manual(struct am_worker *w);
void sc_gpu_rpc(struct am_worker *w);
void sc_gpu_join_stall(struct am_worker *w);
void sc_gpu_backward(struct am_worker *w);
int am_fn_gpu_scale(void *arg, const struct rdag_caller *who, const struct rdag_msg *in,
		    rdag_reply_t *out);
int am_fn_gpu_add(void *arg, const struct rdag_caller *who, const struct rdag_msg *in,
		  rdag_reply_t *out);

#endif /* RDAG_TESTS_AGENT_MP_H */
