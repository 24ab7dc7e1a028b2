/* Multi-process tests of distributed backward: worker, checks, graph nodes, served functions, references. */
#ifndef RDAG_TESTS_BWD_MP_H
#define RDAG_TESTS_BWD_MP_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <rdag/rdag.h>

#include "agent/agent_test.h"
#include "mp_common.h"

#define BW_MAXW 8
#define BW_MAXHOPS 8       /* RPC hops of one chain */
#define BW_MAXEXP 8        /* gradients one worker expects in one context */
#define BW_SLOTS 64

/* Shared by the parent and every worker (an anonymous shared mapping). */
struct bw_board {
	uint64_t v[BW_MAXW][BW_SLOTS];     /* values a worker publishes (context ids, flags) */
	char phase[BW_MAXW][MP_PHASE_LEN]; /* what each worker is doing, for the watchdog's message */
	volatile uint64_t kill_ns;         /* kill: when the parent sent SIGKILL (CLOCK_MONOTONIC) */
};

/* A weight: a leaf variable of this worker, persistent, shared by every context (explicit key). */
struct bw_weight {
	struct bw_weight *next;
	uint8_t dtype;
	size_t n;
	unsigned which;
	void *data;
	char key;                  /* &key is the variable's key (grad_fn.node) */
};

struct bw_node;

struct bw_worker {
	int rank, world;
	const struct mp_cfg *cfg;  /* victim: the rank the kill scenario kills (-1: none) */
	struct bw_board *board;
	rdag_agent_t *a;
	rdag_graph_t *g;
	int ready_fd;              /* kill: the victim writes a byte here when it is ready to die */
	atomic_int fail;
	uint64_t deadline_ns;      /* the scenario's end (a little before the watchdog) */
	pthread_mutex_t lock;      /* weights and nodes */
	struct bw_weight *weights;
	struct bw_node *nodes;     /* every node argument, freed at the end */
	atomic_uint node_runs;     /* node backward callbacks run on this worker */
	atomic_uint fwd_calls;     /* "chain" calls served */
};

/* ---- checks (bwd_mp.c) ----------------------------------------------------------------------- */

void bw_fail(struct bw_worker *w, const char *file, int line, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
void bw_fail_rc(struct bw_worker *w, const char *file, int line, int got, int want, const char *fmt, ...)
	__attribute__((format(printf, 6, 7)));

#define CHECK(w, cond, ...)                                                                        \
	do {                                                                                       \
		if (!(cond))                                                                       \
			bw_fail((w), __FILE__, __LINE__, "check (" #cond ") failed: " __VA_ARGS__); \
	} while (0)

/* rc (evaluated once) must be want; prints both codes and rdag_last_error(). */
#define CHECK_RC(w, rc, want, ...)                                                                 \
	do {                                                                                       \
		int bw_rc_ = (rc), bw_want_ = (want);                                              \
		if (bw_rc_ != bw_want_)                                                            \
			bw_fail_rc((w), __FILE__, __LINE__, bw_rc_, bw_want_, __VA_ARGS__);          \
	} while (0)

static inline bool bw_failed(struct bw_worker *w)
{
	return atomic_load(&w->fail) != 0;
}

/* Time, byte patterns and the harness: tests/common/mp_common.h. */
/* A deadline s seconds from now, never past the worker's. */
uint64_t bw_deadline(struct bw_worker *w, unsigned s);

/* What the worker is doing now (shown by the watchdog and by failed checks). */
void bw_phase(struct bw_worker *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* agent_test_barrier() with a phase label; a failure is a check failure. */
void bw_barrier(struct bw_worker *w, const char *what);

/* The board: set mine, read anyone's (after a barrier, or polled). */
void bw_put(struct bw_worker *w, unsigned slot, uint64_t v);
uint64_t bw_get(struct bw_worker *w, int rank, unsigned slot);
/* Polls until rank's slot holds v (or the deadline s seconds away): 0, or -1 after a failed check. */
int bw_await(struct bw_worker *w, int rank, unsigned slot, uint64_t v, unsigned s, const char *what);

/* ---- tensors and values (bwd_ops.c) ---------------------------------------------------------- */

/* Shape of the tensors of one pass. */
struct bw_shape {
	uint8_t dtype;             /* RDAG_F32 or RDAG_F64 */
	uint8_t ndim;
	int64_t dims[3];
};

size_t bw_numel(const struct bw_shape *s);
double bw_ld(uint8_t dtype, const void *p, size_t i);
void bw_st(uint8_t dtype, void *p, size_t i, double v);
/* A zeroed buffer of n elements (NULL and a failed check on allocation failure). */
void *bw_vals(struct bw_worker *w, uint8_t dtype, size_t n);
/* t over data, shaped s, not requiring grad. */
void bw_tensor(struct rdag_tensor *t, void *data, const struct bw_shape *s);
/* Makes t a leaf requiring grad under key (NULL: its data pointer). */
void bw_leaf(struct rdag_tensor *t, void *key);
const char *bw_shape_str(const struct bw_shape *s, char *buf, size_t len);

/*
 * Deterministic values. Dyadic ones (multiples of 1/8 between 0.5 and 1.5) keep every product
 * and sum of the tests exact in f64, so the order of additions cannot matter; the others (frac)
 * are not dyadic, so results are exact only when done in the same order as the reference.
 */
double bw_wval(int rank, unsigned which, size_t i);
double bw_xval(uint64_t seed, size_t i, bool frac);
void bw_fill_x(uint8_t dtype, void *p, size_t n, uint64_t seed, bool frac);

/* This worker's weight (dtype, n elements, family which), made on first use: bw_wval(rank, which, i). */
struct bw_weight *bw_weight(struct bw_worker *w, uint8_t dtype, size_t n, unsigned which);
/* t: a view of the weight, requiring grad, grad_kind LEAF with the weight's key. */
void bw_weight_tensor(struct rdag_tensor *t, struct bw_weight *wt, const struct rdag_tensor *like);

/* ---- graph nodes (the framework's side: rdag_graph nodes with copies of their inputs) ----------- */

enum bw_op {
	BW_MUL = 1,                /* y = a * b elementwise */
	BW_SUM,                    /* s = sum(a) (a scalar of a's dtype) */
	BW_SUM2,                   /* s = sum(a) + sum(b) */
	BW_PAIR,                   /* y1 = a * b, y2 = a + b (one node, two outputs) */
};

/*
 * KILL: the node asks the parent to SIGKILL its worker; GATE: it says it is running (its slot
 * BW_SLOT_IN_NODE) and waits for the context's release (creator's BW_SLOT_RELEASED); WAIT: it
 * waits until worker gate_rank's node is in its GATE, then goes on (and fails, if it fails).
 */
enum bw_block { BW_BLOCK_NONE = 0, BW_BLOCK_KILL, BW_BLOCK_GATE, BW_BLOCK_WAIT };

struct bw_node {
	struct bw_node *next;
	struct bw_worker *w;
	int op;
	uint8_t dtype;
	size_t n;                  /* elements of each input */
	void *in[2];               /* copies of the inputs' values */
	bool fail;                 /* the backward callback fails (errors) */
	int block;                 /* enum bw_block */
	uint64_t gate_ctx;         /* BW_BLOCK_GATE: the context it waits for (board slot BW_SLOT_RELEASED) */
	int gate_rank;             /* BW_BLOCK_WAIT: the worker whose GATE it waits for */
	atomic_uint runs;
};

/*
 * Records op over in[0..nin) (computing its outputs into out[k].data, which the caller provides,
 * shaped like in[0] or scalars) as an rdag_graph node; sets the outputs' autograd fields (requires
 * grad if an input does; RDAG_GRAD_NODE, input_nr k). *np (if not NULL) is the node's argument.
 */
int bw_op(struct bw_worker *w, int op, const struct rdag_tensor *in, uint32_t nin, struct rdag_tensor *out,
	  struct bw_node **np);

/* ---- the served functions' protocol --------------------------------------------------------- */

#define BW_CTL_MAGIC 0x62776374u

/*
 * Payload of "chain": the callee multiplies the received tensor 0 by its weight (family which),
 * forwards the product along hops (each next callee does the same), and returns what comes back
 * (or its product, at the end). Other received tensors are not used.
 */
struct bw_ctl {
	uint32_t magic;
	uint16_t nhops;            /* workers after this callee */
	uint16_t hops[BW_MAXHOPS];
	uint16_t fail_at;          /* 1 + the hop (1: this callee) whose node backward fails; 0: none */
	uint16_t block_at;         /* likewise, whose node backward blocks (block) */
	uint16_t block;            /* enum bw_block */
	uint16_t which;            /* weight family */
	uint64_t gate_ctx;
	uint16_t gate_rank;        /* BW_BLOCK_WAIT */
	uint64_t seed;             /* "leafret", "rref_make": values of the constant */
	struct bw_shape shape;     /* "leafret" without tensors: the constant's shape */
};

void bw_ctl_init(struct bw_ctl *c, unsigned which);

/* "peek": a context's gradient of one of the callee's weights (RDAG_CALL_PLAIN, never wrapped). */
struct bw_peek_req {
	uint64_t ctx;
	uint64_t n;
	uint32_t which;
	uint8_t dtype;
	uint8_t pad[3];
};

struct bw_peek_resp {
	int32_t rc;                /* rdag_ctx_grads() */
	uint32_t count;            /* gradients in the context */
	int32_t found;             /* the weight has a gradient (the reply's tensor) */
	int32_t pad;
};

int bw_register_all(struct bw_worker *w);

/* Board slots. */
enum {
	BW_SLOT_CTX = 0,           /* a context id + 1 (0: none yet) */
	BW_SLOT_CTX2 = 1,
	BW_SLOT_IN_NODE = 8,       /* release_during: ctx + 1 once the blocked node runs */
	BW_SLOT_RELEASED = 9,      /* release_during: ctx + 1 once it was released */
	BW_SLOT_DONE = 10,         /* kill: the caller is done */
	BW_SLOT_ABORT_RUNS = 11,   /* abort: 1 + this worker's runs aborted by another's failure */
	BW_SLOT_ABORT_HEARD = 12,  /* abort: 1 + BACKWARD_ABORTs that were news here */
	BW_SLOT_CTXS = 16,         /* ps: 16.. trainers' contexts (+ 1) per round */
};

/* ---- references and gradient checks (bwd_ref.c) ---------------------------------------------- */

/* A chain pass: caller's x (seed xseed) through hops, each multiplying by its weight. */
struct bw_chain {
	int caller;
	struct bw_shape shape;
	unsigned nhops;
	uint16_t hops[BW_MAXHOPS];
	unsigned which;
	uint64_t xseed;
	bool frac;
	unsigned passes;           /* identical passes accumulated in the context */
};

void bw_chain_init(struct bw_chain *c, int caller, const struct bw_shape *s, const uint16_t *hops,
		   unsigned nhops, uint64_t xseed);

/* An expected gradient: variable key, dtype, elements, values (owned). */
struct bw_exp {
	void *key;
	uint8_t dtype;
	size_t n;
	void *vals;
	const char *what;
};

struct bw_expset {
	struct bw_exp e[BW_MAXEXP];
	unsigned n;
};

/* Adds an expectation (values copied from vals, or zeros when vals is NULL). Returns its values. */
void *bw_expect(struct bw_worker *w, struct bw_expset *s, void *key, uint8_t dtype, size_t n,
		const void *vals, const char *what);
void bw_expset_free(struct bw_expset *s);

/*
 * The chain's reference, computed in the same order as the distributed pass: y (forward result,
 * may be NULL), the gradient of x, and the gradient of the weight of each worker (gw[r], NULL
 * where r is not a hop; allocated). Each pass in order, hops from the last one back.
 */
void bw_chain_ref(struct bw_worker *w, const struct bw_chain *c, void *y, void *gx, void *gw[BW_MAXW]);
/*
 * What worker w->rank expects in a context where c ran: its weight's gradient if it is a hop,
 * and x's (under xkey) if it is the caller.
 */
void bw_chain_expect(struct bw_worker *w, const struct bw_chain *c, void *xkey, struct bw_expset *s);

/*
 * The gradients of ctx here must be exactly the expected ones (as many, same keys, dtypes,
 * sizes; values equal for f64 when tol64 is 0, else within the relative tolerance; f32 within
 * 1e-5 relative).
 */
void bw_check_grads(struct bw_worker *w, const char *file, int line, uint64_t ctx,
		    const struct bw_expset *s, double tol64, const char *what);
#define CHECK_GRADS(w, ctx, s, tol64, what) \
	bw_check_grads((w), __FILE__, __LINE__, (ctx), (s), (tol64), (what))

/* Compares n values (f32: 1e-5 relative; f64: tol64 relative, 0 = exact); 0 or 1 + the first bad index. */
size_t bw_cmp(uint8_t dtype, const void *got, const void *want, size_t n, double tol64);

/* ---- a chain pass on the caller ------------------------------------------------------------- */

/* A chain's forward on the caller: its x, the call's future, y and the loss node. */
struct bw_fwd {
	struct bw_chain c;
	void *x;                   /* the leaf's data (key: this pointer) */
	bool own_x;                /* x was allocated by bw_fwd_run */
	struct rdag_tensor xt;
	rdag_future_t *f;
	struct rdag_tensor y;      /* the result (RECV), valid until bw_fwd_free */
	double loss_val;
	struct rdag_tensor loss;   /* scalar, RDAG_GRAD_NODE */
	struct bw_ctl ctl;
};

/*
 * Runs c's forward in the current context: x (leaf), "chain" to c->hops[0] with the rest, checks
 * y against the reference, sum node. ctl (may be NULL) gives fail_at/block_at. x: the leaf's
 * buffer (NULL: allocated; a given one keeps the key across passes). Returns the call's status
 * (0: f->loss ready). bw_fwd_free() in any case.
 */
int bw_fwd_run(struct bw_worker *w, const struct bw_chain *c, const struct bw_ctl *ctl, struct bw_fwd *f,
	       void *x);
void bw_fwd_free(struct bw_fwd *f);

/*
 * Collective. Each chain's caller creates a context and runs its passes (callers of different
 * chains at once; one chain per caller), checks its gradients and publishes the context; after a
 * barrier every hop checks its own, the others check they never had the context; after another
 * barrier the callers release.
 */
void bw_chain_rounds(struct bw_worker *w, const struct bw_chain *cs, unsigned nc, const char *what);
void bw_chain_round(struct bw_worker *w, const struct bw_chain *c, const char *what);

/* "peek" on dst for its weight (dtype, n, which) in ctx: 0 and its values in out, 1 absent, < 0 an error. */
int bw_peek(struct bw_worker *w, uint32_t dst, uint64_t ctx, uint8_t dtype, size_t n, unsigned which,
	    void *out, uint32_t *count);

/* ---- scenarios ------------------------------------------------------------------------------ */

/* sc_basic.c */
void sc_simple(struct bw_worker *w);
void sc_round_trips(struct bw_worker *w);
void sc_dtypes_ranks(struct bw_worker *w);
void sc_unused(struct bw_worker *w);
void sc_multi(struct bw_worker *w);
void sc_local_only(struct bw_worker *w);
void sc_grad_on_return(struct bw_worker *w);
void sc_identity(struct bw_worker *w);
void sc_rref(struct bw_worker *w);
void sc_shared(struct bw_worker *w);
/* sc_load.c */
void sc_ps(struct bw_worker *w);
void sc_accumulate(struct bw_worker *w);
void sc_threads(struct bw_worker *w);
/* sc_fault.c */
void sc_errors(struct bw_worker *w);
void sc_kill(struct bw_worker *w);
void sc_release_during(struct bw_worker *w);
void sc_abort(struct bw_worker *w);

#endif /* RDAG_TESTS_BWD_MP_H */
