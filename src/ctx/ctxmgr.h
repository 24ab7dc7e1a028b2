/* Context manager: sharded map of autograd contexts, id counters, the thread's current context. */
#ifndef RDAG_CTX_CTXMGR_H
#define RDAG_CTX_CTXMGR_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <rdag/context.h>
#include <rdag/tensor.h>

#include "util/u64map.h"
#include "wire/wire.h"

/*
 * One struct ctxmgr per agent. Contexts live in 64 shards (a mutex and a hash map each), so
 * threads working on different contexts rarely meet; each context has its own mutex for its
 * functions, known workers and gradients, and a reference count: ctxmgr_get() hands out a
 * reference, ctx_put() drops it, and the context is freed when its last reference goes after it
 * was removed from the map. Ids: (worker << 48) | counter, one counter for contexts and one for
 * autograd message ids; the 2^48th id of either is RDAG_ERANGE. Everything here is thread-safe.
 */

#define CTXMGR_SHARDS 64u
#define CTX_ID_LOW_MASK 0x0000ffffffffffffull

/* Shape and placement of one tensor of a send or recv function (what backward needs for zeros). */
struct ctx_tmeta {
	uint8_t dtype, ndim, dev_type;
	bool rg;                   /* the tensor required grad */
	uint16_t dev_index;
	int64_t shape[WIRE_MAX_RANK];
};

/* A next edge of a send function: the grad_fn of one tensor that required grad. */
struct ctx_edge {
	uint8_t kind;              /* enum rdag_grad_kind */
	void *node;
	uint32_t input_nr;
	uint32_t index;            /* the tensor's index in the message */
	struct ctx_tmeta meta;
};

/* SendRpcBackward: recorded by the sender of tensors that require grad. */
struct ctx_sendfn {
	uint64_t msg_id;
	uint16_t dst;
	uint32_t nedges;
	struct ctx_edge edges[];
};

#define CTX_RECV_MAGIC 0x52435646u  /* "RCVF": checks what rdag_recv_fn_msg_id() is given */

/* RecvRpcBackward: recorded by the receiver; received tensors that require grad point at it. */
struct ctx_recvfn {
	uint32_t magic;
	uint64_t ctx_id;
	uint64_t msg_id;
	uint16_t src;              /* the worker that sent the tensors (gets the gradients back) */
	uint16_t ndevmap;
	struct wire_devpair *devmap; /* ndevmap, reversed (our device -> the sender's), after meta[] */
	uint32_t ntensors;         /* tensors in the message */
	uint32_t ngrad;            /* of them, requiring grad */
	struct ctx_tmeta meta[];   /* per tensor of the message */
};

struct ctx_grad {
	void *var;
	struct rdag_tensor t;      /* t.data owned by the context */
};

/*
 * A backward pass of a context as this worker sees it (under the context's lock). A record lives
 * while local runs of the pass are in progress; an aborted one stays (at most CTX_MAX_ABORTED per
 * context, the oldest dropped) so that late requests of that pass are refused.
 */
struct ctx_pass {
	struct ctx_pass *next;
	uint64_t id;               /* (root worker << 48) | counter */
	unsigned users;            /* local runs of the pass in progress */
	atomic_bool aborted;       /* set once; code, origin and text are then fixed */
	int code;
	uint16_t origin;
	char *text;                /* the error, without the "Error on Node <id>: " prefix */
};

#define CTX_MAX_ABORTED 16u

struct ctx {
	uint64_t id;
	atomic_int refs;
	pthread_mutex_t lock;
	struct u64map send_fns;    /* msg id -> struct ctx_sendfn */
	struct u64map recv_fns;    /* msg id -> struct ctx_recvfn */
	struct u64map grads;       /* (uintptr_t)var -> struct ctx_grad */
	uint16_t *known;           /* sorted, unique */
	uint32_t nknown, capknown;
	struct ctx_pass *passes;   /* newest first */
};

struct ctxmgr_shard {
	pthread_mutex_t lock;
	struct u64map map;         /* ctx id -> struct ctx */
};

struct ctxmgr {
	uint16_t worker;
	atomic_uint_fast64_t next_ctx;  /* low 48 bits of the next id */
	atomic_uint_fast64_t next_msg;
	atomic_size_t count;
	struct ctxmgr_shard shards[CTXMGR_SHARDS];
};

int ctxmgr_init(struct ctxmgr *m, uint16_t worker);
/* Frees every context, whatever its references (call once nothing else uses m). */
void ctxmgr_fini(struct ctxmgr *m);

/* A new autograd message id, or RDAG_ERANGE when the worker's 2^48 are used up. */
int ctxmgr_new_msg_id(struct ctxmgr *m, uint64_t *id);

/* Creates a context and makes it current on this thread (RDAG_EBUSY if one is, RDAG_ERANGE). */
int ctxmgr_create(struct ctxmgr *m, uint64_t *id);

/* The context with this id, with a reference (NULL if absent). */
struct ctx *ctxmgr_get(struct ctxmgr *m, uint64_t id);
/* The context with this id, created if absent (a remote context appearing here); with a reference. */
int ctxmgr_get_or_create(struct ctxmgr *m, uint64_t id, struct ctx **out);
/* Removes id from the map; returns the context with the map's reference moved to the caller, or NULL. */
struct ctx *ctxmgr_remove(struct ctxmgr *m, uint64_t id);
void ctx_put(struct ctx *c);
/*
 * Removes up to cap contexts created by worker (the id's top 16 bits) from the map, moving the
 * map's references into out[]; returns how many (0: none left). For a creator declared dead,
 * whose cleanups will never come. A thread whose current context is one of them keeps it until
 * it sets another (as after a remote cleanup).
 */
size_t ctxmgr_take_created_by(struct ctxmgr *m, uint16_t worker, struct ctx **out, size_t cap);

size_t ctxmgr_count(struct ctxmgr *m);

/* The calling thread's current context of m. */
int ctxmgr_current(struct ctxmgr *m, uint64_t *id);
/* Sets (has = true) or clears the current context; the previous state goes to *prev_has / *prev_id. */
void ctxmgr_swap_current(struct ctxmgr *m, bool has, uint64_t id, bool *prev_has, uint64_t *prev_id);

/* Adds w to the known workers (RDAG_ENOMEM). */
int ctx_add_known(struct ctx *c, uint16_t w);
/* Copies the known workers (up to cap) and returns how many there are. */
size_t ctx_known(struct ctx *c, uint16_t *out, size_t cap);
/*
 * The known workers, all of them: in small[0..nsmall) when they fit, else in a malloc'ed array
 * (free it when it is not small). Their number in *n. NULL (and *n 0) when out of memory.
 */
uint16_t *ctx_known_all(struct ctx *c, uint16_t *small, size_t nsmall, size_t *n);
/* Records fn (taking it; freed with the context). RDAG_EEXIST if the id is taken (fn not taken). */
int ctx_add_send(struct ctx *c, struct ctx_sendfn *fn);
int ctx_add_recv(struct ctx *c, struct ctx_recvfn *fn);

void ctx_meta_from_wire(struct ctx_tmeta *m, const struct wire_tensor *t);

#endif /* RDAG_CTX_CTXMGR_H */
