/* Context manager: sharded context map, id counters, current context per thread, per-context records. */
#include <stdlib.h>
#include <string.h>

#include "ctx/ctxmgr.h"
#include "util/err.h"
#include "util/gbuf.h"
#include "util/tbuf.h"

/* The calling thread's current context, and the manager it belongs to. */
static _Thread_local struct {
	const struct ctxmgr *m;
	uint64_t id;
} cur;

static inline struct ctxmgr_shard *shard_of(struct ctxmgr *m, uint64_t id)
{
	/* Ids of one worker differ in their low bits: mix them so shards fill evenly. */
	return &m->shards[(id ^ (id >> 48) ^ (id >> 6)) % CTXMGR_SHARDS];
}

int ctxmgr_init(struct ctxmgr *m, uint16_t worker)
{
	memset(m, 0, sizeof(*m));
	m->worker = worker;
	atomic_init(&m->next_ctx, 0);
	atomic_init(&m->next_msg, 0);
	atomic_init(&m->count, 0);
	for (unsigned i = 0; i < CTXMGR_SHARDS; i++)
		pthread_mutex_init(&m->shards[i].lock, NULL);
	return 0;
}

static void ctx_free(struct ctx *c)
{
	size_t i = 0;
	uint64_t k;
	void *v;

	while (u64map_next(&c->send_fns, &i, &k, &v))
		free(v);
	i = 0;
	while (u64map_next(&c->recv_fns, &i, &k, &v)) {
		((struct ctx_recvfn *)v)->magic = 0;
		free(v);
	}
	i = 0;
	while (u64map_next(&c->grads, &i, &k, &v)) {
		tbuf_free(&((struct ctx_grad *)v)->t);
		free(v);
	}
	u64map_fini(&c->send_fns);
	u64map_fini(&c->recv_fns);
	u64map_fini(&c->grads);
	while (c->passes) {
		struct ctx_pass *ps = c->passes;

		c->passes = ps->next;
		free(ps->text);
		free(ps);
	}
	free(c->known);
	pthread_mutex_destroy(&c->lock);
	free(c);
}

void ctxmgr_fini(struct ctxmgr *m)
{
	for (unsigned s = 0; s < CTXMGR_SHARDS; s++) {
		size_t i = 0;
		uint64_t k;
		void *v;

		while (u64map_next(&m->shards[s].map, &i, &k, &v))
			ctx_free(v);
		u64map_fini(&m->shards[s].map);
		pthread_mutex_destroy(&m->shards[s].lock);
	}
	if (cur.m == m)
		cur.m = NULL;
}

static int new_id(atomic_uint_fast64_t *ctr, uint16_t worker, const char *what, uint64_t *id)
{
	uint64_t low = atomic_fetch_add(ctr, 1);

	if (low > CTX_ID_LOW_MASK) {
		atomic_store(ctr, CTX_ID_LOW_MASK + 1); /* stays exhausted, never wraps */
		return err_set(RDAG_ERANGE, "worker %u has used all 2^48 %s ids", worker, what);
	}
	*id = ((uint64_t)worker << 48) | low;
	return 0;
}

int ctxmgr_new_msg_id(struct ctxmgr *m, uint64_t *id)
{
	return new_id(&m->next_msg, m->worker, "autograd message", id);
}

static struct ctx *ctx_new(uint64_t id)
{
	struct ctx *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->id = id;
	atomic_init(&c->refs, 1);
	pthread_mutex_init(&c->lock, NULL);
	return c;
}

/* Inserts a new context under id unless one exists; returns it with a reference for the caller. */
static int insert(struct ctxmgr *m, uint64_t id, bool must_be_new, struct ctx **out)
{
	struct ctxmgr_shard *s = shard_of(m, id);
	struct ctx *c;
	int rc = 0;

	pthread_mutex_lock(&s->lock);
	c = u64map_get(&s->map, id);
	if (c) {
		if (must_be_new)
			rc = err_set(RDAG_EEXIST, "context %#llx already exists", (unsigned long long)id);
		else
			atomic_fetch_add(&c->refs, 1);
	} else {
		c = ctx_new(id);
		if (!c || u64map_put(&s->map, id, c)) {
			if (c)
				ctx_free(c);
			c = NULL;
			rc = err_set(RDAG_ENOMEM, "out of memory creating context %#llx",
				     (unsigned long long)id);
		} else {
			atomic_fetch_add(&c->refs, 1); /* the map's and the caller's */
			atomic_fetch_add(&m->count, 1);
		}
	}
	pthread_mutex_unlock(&s->lock);
	*out = rc ? NULL : c;
	return rc;
}

int ctxmgr_create(struct ctxmgr *m, uint64_t *id)
{
	struct ctx *c;
	uint64_t nid = 0;
	int rc;

	if (cur.m == m) {
		struct ctx *live = ctxmgr_get(m, cur.id);

		/* A current context released meanwhile (by another thread, or a remote cleanup) is gone. */
		if (live) {
			ctx_put(live);
			return err_set(RDAG_EBUSY, "this thread already has a current context (%#llx): "
				       "nested contexts are not allowed", (unsigned long long)cur.id);
		}
		cur.m = NULL;
	}
	rc = new_id(&m->next_ctx, m->worker, "context", &nid);
	if (rc)
		return rc;
	rc = insert(m, nid, true, &c);
	if (rc)
		return rc;
	ctx_put(c);
	cur.m = m;
	cur.id = nid;
	*id = nid;
	return 0;
}

struct ctx *ctxmgr_get(struct ctxmgr *m, uint64_t id)
{
	struct ctxmgr_shard *s = shard_of(m, id);
	struct ctx *c;

	pthread_mutex_lock(&s->lock);
	c = u64map_get(&s->map, id);
	if (c)
		atomic_fetch_add(&c->refs, 1);
	pthread_mutex_unlock(&s->lock);
	return c;
}

int ctxmgr_get_or_create(struct ctxmgr *m, uint64_t id, struct ctx **out)
{
	return insert(m, id, false, out);
}

struct ctx *ctxmgr_remove(struct ctxmgr *m, uint64_t id)
{
	struct ctxmgr_shard *s = shard_of(m, id);
	struct ctx *c;

	pthread_mutex_lock(&s->lock);
	c = u64map_del(&s->map, id);
	pthread_mutex_unlock(&s->lock);
	if (c)
		atomic_fetch_sub(&m->count, 1);
	if (cur.m == m && cur.id == id)
		cur.m = NULL;
	return c;
}

size_t ctxmgr_take_created_by(struct ctxmgr *m, uint16_t worker, struct ctx **out, size_t cap)
{
	size_t n = 0;

	for (size_t k = 0; k < CTXMGR_SHARDS && n < cap; k++) {
		struct ctxmgr_shard *s = &m->shards[k];
		size_t first = n, i = 0;
		uint64_t id;
		void *v;

		pthread_mutex_lock(&s->lock);
		while (n < cap && u64map_next(&s->map, &i, &id, &v))
			if ((id >> 48) == worker)
				out[n++] = v;
		for (size_t j = first; j < n; j++)
			u64map_del(&s->map, out[j]->id);
		pthread_mutex_unlock(&s->lock);
		atomic_fetch_sub(&m->count, n - first);
	}
	return n;
}

void ctx_put(struct ctx *c)
{
	if (c && atomic_fetch_sub(&c->refs, 1) == 1)
		ctx_free(c);
}

size_t ctxmgr_count(struct ctxmgr *m)
{
	return atomic_load(&m->count);
}

int ctxmgr_current(struct ctxmgr *m, uint64_t *id)
{
	if (cur.m != m)
		return RDAG_ENOENT;
	*id = cur.id;
	return 0;
}

void ctxmgr_swap_current(struct ctxmgr *m, bool has, uint64_t id, bool *prev_has, uint64_t *prev_id)
{
	if (prev_has)
		*prev_has = cur.m == m;
	if (prev_id)
		*prev_id = cur.m == m ? cur.id : 0;
	cur.m = has ? m : NULL;
	cur.id = has ? id : 0;
}

int ctx_add_known(struct ctx *c, uint16_t w)
{
	uint32_t lo = 0, hi;
	int rc = 0;

	pthread_mutex_lock(&c->lock);
	hi = c->nknown;
	while (lo < hi) {
		uint32_t mid = (lo + hi) / 2;

		if (c->known[mid] < w)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo < c->nknown && c->known[lo] == w)
		goto out;
	if (c->nknown == c->capknown) {
		uint32_t ncap = c->capknown ? 2 * c->capknown : 8;
		uint16_t *nk = realloc(c->known, ncap * sizeof(*nk));

		if (!nk) {
			rc = err_set(RDAG_ENOMEM, "out of memory recording a known worker");
			goto out;
		}
		c->known = nk;
		c->capknown = ncap;
	}
	memmove(c->known + lo + 1, c->known + lo, (c->nknown - lo) * sizeof(*c->known));
	c->known[lo] = w;
	c->nknown++;
out:
	pthread_mutex_unlock(&c->lock);
	return rc;
}

size_t ctx_known(struct ctx *c, uint16_t *out, size_t cap)
{
	size_t n;

	pthread_mutex_lock(&c->lock);
	n = c->nknown;
	if (out && n && cap)
		memcpy(out, c->known, (n < cap ? n : cap) * sizeof(*out));
	pthread_mutex_unlock(&c->lock);
	return n;
}

uint16_t *ctx_known_all(struct ctx *c, uint16_t *small, size_t nsmall, size_t *n)
{
	uint16_t *out = small;
	size_t cap = nsmall;

	pthread_mutex_lock(&c->lock);
	if (c->nknown > cap) {
		cap = c->nknown;
		out = malloc(cap * sizeof(*out));
	}
	*n = out ? c->nknown : 0;
	if (*n)
		memcpy(out, c->known, *n * sizeof(*out));
	pthread_mutex_unlock(&c->lock);
	return out;
}

static int add_fn(struct ctx *c, struct u64map *map, uint64_t msg_id, void *fn)
{
	int rc;

	pthread_mutex_lock(&c->lock);
	if (u64map_get(map, msg_id))
		rc = err_set(RDAG_EEXIST, "context %#llx already has a function for message %#llx",
			     (unsigned long long)c->id, (unsigned long long)msg_id);
	else if (u64map_put(map, msg_id, fn))
		rc = err_set(RDAG_ENOMEM, "out of memory recording an autograd function");
	else
		rc = 0;
	pthread_mutex_unlock(&c->lock);
	return rc;
}

int ctx_add_send(struct ctx *c, struct ctx_sendfn *fn)
{
	return add_fn(c, &c->send_fns, fn->msg_id, fn);
}

int ctx_add_recv(struct ctx *c, struct ctx_recvfn *fn)
{
	return add_fn(c, &c->recv_fns, fn->msg_id, fn);
}

void ctx_meta_from_wire(struct ctx_tmeta *m, const struct wire_tensor *t)
{
	memset(m, 0, sizeof(*m));
	m->dtype = t->dtype;
	m->ndim = t->rank;
	m->dev_type = t->dev_type;
	m->dev_index = t->dev_index;
	memcpy(m->shape, t->shape, t->rank * sizeof(m->shape[0]));
}
