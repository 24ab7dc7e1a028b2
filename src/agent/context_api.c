/* Public context calls: create, current, release (with cleanup propagation), introspection, gradients. */
#include <stdlib.h>
#include <string.h>

#include "agent/agent_int.h"
#include "util/err.h"
#include "util/log.h"

int rdag_ctx_create(rdag_agent_t *a, uint64_t *id)
{
	if (!a || !id)
		return err_set(RDAG_EINVAL, "rdag_ctx_create: NULL argument");
	return ctxmgr_create(&a->cm, id);
}

int rdag_ctx_current(rdag_agent_t *a, uint64_t *id)
{
	if (!a || !id)
		return err_set(RDAG_EINVAL, "rdag_ctx_current: NULL argument");
	if (ctxmgr_current(&a->cm, id))
		return err_set(RDAG_ENOENT, "this thread has no current context");
	return 0;
}

int rdag_ctx_set_current(rdag_agent_t *a, uint64_t id, int set)
{
	if (!a)
		return err_set(RDAG_EINVAL, "rdag_ctx_set_current: NULL agent");
	if (set) {
		struct ctx *c = ctxmgr_get(&a->cm, id);

		if (!c)
			return err_set(RDAG_ENOENT, "no context %#llx on worker %u",
				       (unsigned long long)id, a->id);
		ctx_put(c);
	}
	ctxmgr_swap_current(&a->cm, set != 0, id, NULL, NULL);
	return 0;
}

int rdag_ctx_release(rdag_agent_t *a, uint64_t id)
{
	uint16_t small[64], *known = small;
	struct ctx *c;
	size_t n;

	if (!a)
		return err_set(RDAG_EINVAL, "rdag_ctx_release: NULL agent");
	c = ctxmgr_remove(&a->cm, id);
	if (!c)
		return err_set(RDAG_ENOENT, "no context %#llx on worker %u", (unsigned long long)id,
			       a->id);
	known = ctx_known_all(c, small, 64, &n);
	if (!known)
		LOG_ERROR("agent: out of memory: context %#llx is released here only",
			  (unsigned long long)id);
	ctx_put(c);
	if (n)
		ag_cleanup_peers(a, id, known, n, -1);
	if (known != small)
		free(known);
	err_clear();
	return 0;
}

int rdag_ctx_lookup(rdag_agent_t *a, uint64_t id)
{
	struct ctx *c;

	if (!a)
		return err_set(RDAG_EINVAL, "rdag_ctx_lookup: NULL agent");
	c = ctxmgr_get(&a->cm, id);
	if (!c)
		return err_set(RDAG_ENOENT, "no context %#llx on worker %u", (unsigned long long)id,
			       a->id);
	ctx_put(c);
	return 0;
}

size_t rdag_ctx_count(rdag_agent_t *a)
{
	return a ? ctxmgr_count(&a->cm) : 0;
}

static struct ctx *get(rdag_agent_t *a, uint64_t id, const void *out, size_t cap, size_t *n)
{
	struct ctx *c;

	if (!a || !n || (cap && !out)) {
		err_set(RDAG_EINVAL, "NULL argument");
		return NULL;
	}
	c = ctxmgr_get(&a->cm, id);
	if (!c)
		err_set(RDAG_ENOENT, "no context %#llx on worker %u", (unsigned long long)id, a->id);
	return c;
}

int rdag_ctx_known_workers(rdag_agent_t *a, uint64_t id, uint16_t *out, size_t cap, size_t *n)
{
	struct ctx *c = get(a, id, out, cap, n);

	if (!c)
		return a && n ? RDAG_ENOENT : RDAG_EINVAL;
	*n = ctx_known(c, out, cap);
	ctx_put(c);
	return 0;
}

static int cmp_info(const void *x, const void *y)
{
	const struct rdag_fn_info *p = x, *q = y;

	return p->msg_id < q->msg_id ? -1 : p->msg_id > q->msg_id;
}

static int fns(rdag_agent_t *a, uint64_t id, bool send, struct rdag_fn_info *out, size_t cap,
	       size_t *n)
{
	struct ctx *c = get(a, id, out, cap, n);
	struct rdag_fn_info *all;
	struct u64map *map;
	size_t i = 0, k = 0;
	uint64_t key;
	void *v;

	if (!c)
		return a && n ? RDAG_ENOENT : RDAG_EINVAL;
	pthread_mutex_lock(&c->lock);
	map = send ? &c->send_fns : &c->recv_fns;
	all = calloc(map->count ? map->count : 1, sizeof(*all));
	if (!all) {
		pthread_mutex_unlock(&c->lock);
		ctx_put(c);
		return err_set(RDAG_ENOMEM, "out of memory");
	}
	while (u64map_next(map, &i, &key, &v)) {
		if (send) {
			const struct ctx_sendfn *s = v;

			all[k].msg_id = s->msg_id;
			all[k].peer = s->dst;
			all[k].ntensors = s->nedges;
		} else {
			const struct ctx_recvfn *r = v;

			all[k].msg_id = r->msg_id;
			all[k].peer = r->src;
			all[k].ntensors = r->ngrad;
		}
		k++;
	}
	pthread_mutex_unlock(&c->lock);
	ctx_put(c);
	qsort(all, k, sizeof(*all), cmp_info);
	*n = k;
	if (cap)
		memcpy(out, all, (k < cap ? k : cap) * sizeof(*out));
	free(all);
	return 0;
}

int rdag_ctx_send_fns(rdag_agent_t *a, uint64_t id, struct rdag_fn_info *out, size_t cap, size_t *n)
{
	return fns(a, id, true, out, cap, n);
}

int rdag_ctx_recv_fns(rdag_agent_t *a, uint64_t id, struct rdag_fn_info *out, size_t cap, size_t *n)
{
	return fns(a, id, false, out, cap, n);
}

int rdag_ctx_send_fn_edges(rdag_agent_t *a, uint64_t id, uint64_t msg_id, struct rdag_edge_info *out,
			   size_t cap, size_t *n)
{
	struct ctx *c = get(a, id, out, cap, n);
	const struct ctx_sendfn *s;
	int rc = 0;

	if (!c)
		return a && n ? RDAG_ENOENT : RDAG_EINVAL;
	pthread_mutex_lock(&c->lock);
	s = u64map_get(&c->send_fns, msg_id);
	if (!s) {
		rc = err_set(RDAG_ENOENT, "context %#llx has no send function %#llx",
			     (unsigned long long)id, (unsigned long long)msg_id);
	} else {
		*n = s->nedges;
		for (uint32_t i = 0; i < s->nedges && i < cap; i++) {
			out[i].grad_kind = s->edges[i].kind;
			out[i].edge.node = s->edges[i].node;
			out[i].edge.input_nr = s->edges[i].input_nr;
			out[i].tensor_index = s->edges[i].index;
		}
	}
	pthread_mutex_unlock(&c->lock);
	ctx_put(c);
	return rc;
}

int rdag_ctx_grads(rdag_agent_t *a, uint64_t id, struct rdag_grad *out, size_t cap, size_t *n)
{
	struct ctx *c = get(a, id, out, cap, n);
	size_t i = 0, k = 0;
	uint64_t key;
	void *v;

	if (!c)
		return a && n ? RDAG_ENOENT : RDAG_EINVAL;
	pthread_mutex_lock(&c->lock);
	*n = c->grads.count;
	while (k < cap && u64map_next(&c->grads, &i, &key, &v)) {
		const struct ctx_grad *g = v;

		out[k].var = g->var;
		out[k].grad = g->t;
		k++;
	}
	pthread_mutex_unlock(&c->lock);
	ctx_put(c);
	return 0;
}
