/* RRefs: values kept on their owner (rdag_remote), fetched by copy, released by their creator. */
#include <stdlib.h>
#include <string.h>

#include "agent/agent_int.h"
#include "util/err.h"
#include "util/log.h"

static void val_free(struct ag_rref_val *v)
{
	for (uint32_t i = 0; i < v->ntensors; i++)
		free(v->tensors[i].data);
	free(v->tensors);
	free(v->payload);
	free(v);
}

void ag_rref_put(struct ag_rref_val *v)
{
	if (v && atomic_fetch_sub(&v->refs, 1) == 1)
		val_free(v);
}

struct ag_rref_val *ag_rref_get(rdag_agent_t *a, uint64_t id)
{
	struct ag_rref_val *v;

	pthread_mutex_lock(&a->rref_lock);
	v = u64map_get(&a->rrefs, id);
	if (v)
		atomic_fetch_add(&v->refs, 1);
	pthread_mutex_unlock(&a->rref_lock);
	return v;
}

int ag_rref_store(rdag_agent_t *a, uint64_t id, uint16_t creator, const struct rdag_msg *val)
{
	struct ag_rref_val *v = calloc(1, sizeof(*v));
	int rc = RDAG_ENOMEM;

	if (!v)
		goto fail;
	atomic_init(&v->refs, 1);
	v->id = id;
	v->creator = creator;
	/* The result's memory belongs to the reply (or the framework): the RRef keeps a copy. */
	if (val->payload_len) {
		v->payload = malloc(val->payload_len);
		if (!v->payload)
			goto fail;
		memcpy(v->payload, val->payload, val->payload_len);
		v->payload_len = val->payload_len;
	}
	if (val->ntensors) {
		v->tensors = calloc(val->ntensors, sizeof(*v->tensors));
		if (!v->tensors)
			goto fail;
		for (uint32_t i = 0; i < val->ntensors; i++) {
			size_t nb = rdag_tensor_nbytes(&val->tensors[i]);

			v->tensors[i] = val->tensors[i];
			v->tensors[i].data = malloc(nb ? nb : 1);
			if (!v->tensors[i].data)
				goto fail;
			v->ntensors = i + 1;
			if (nb)
				memcpy(v->tensors[i].data, val->tensors[i].data, nb);
		}
	}
	pthread_mutex_lock(&a->rref_lock);
	if (u64map_get(&a->rrefs, id)) {
		rc = err_set(RDAG_EEXIST, "worker %u already holds RRef %#llx", a->id,
			     (unsigned long long)id);
	} else {
		rc = u64map_put(&a->rrefs, id, v);
		if (rc)
			rc = err_set(RDAG_ENOMEM, "out of memory keeping an RRef");
	}
	pthread_mutex_unlock(&a->rref_lock);
	if (rc)
		goto fail;
	return 0;
fail:
	if (v)
		val_free(v);
	return rc == RDAG_ENOMEM ? err_set(rc, "worker %u: out of memory keeping an RRef", a->id) : rc;
}

void ag_rref_delete(rdag_agent_t *a, uint64_t id)
{
	struct ag_rref_val *v;

	pthread_mutex_lock(&a->rref_lock);
	v = u64map_del(&a->rrefs, id);
	pthread_mutex_unlock(&a->rref_lock);
	if (!v)
		LOG_DEBUG("agent: delete of unknown RRef %#llx ignored", (unsigned long long)id);
	ag_rref_put(v);
}

void ag_rref_free_all(rdag_agent_t *a)
{
	size_t i = 0;
	uint64_t k;
	void *v;

	while (u64map_next(&a->rrefs, &i, &k, &v))
		ag_rref_put(v);
	u64map_fini(&a->rrefs);
}

int rdag_remote(rdag_agent_t *a, uint32_t dst, const char *fn, const struct rdag_msg *args,
		const struct rdag_call_opts *opts, struct rdag_rref *out)
{
	rdag_future_t *f;
	uint64_t id;
	int rc;

	if (!a || !out)
		return err_set(RDAG_EINVAL, "rdag_remote: NULL agent or RRef");
	/* Ids are made by the creator, as message ids: unique in the job without asking the owner. */
	id = ((uint64_t)a->id << 48) | (atomic_fetch_add(&a->next_rref, 1) & CTX_ID_LOW_MASK);
	rc = ag_start_rref_call(a, dst, fn, args, opts, id, &f);
	if (rc)
		return rc;
	rc = ag_finish_sync(a, f, NULL);
	if (rc)
		return rc;
	out->owner = (uint16_t)dst;
	out->id = id;
	return 0;
}

int rdag_rref_fetch(rdag_agent_t *a, const struct rdag_rref *r, rdag_future_t **out)
{
	rdag_future_t *f;
	int rc;

	if (!a || !r || !out)
		return err_set(RDAG_EINVAL, "rdag_rref_fetch: NULL argument");
	*out = NULL;
	rc = ag_start_simple(a, r->owner, WIRE_RREF_FETCH_REQ, r->id, r->owner, &f);
	if (rc)
		return rc;
	return ag_finish_sync(a, f, out);
}

struct del_wait {
	atomic_bool done;
	int status;
	rdag_agent_t *a;
	struct ag_out *o;
};

static void del_done(void *arg, int status)
{
	struct del_wait *w = arg;

	w->status = status;
	atomic_store(&w->done, true);
	pool_kick(&w->a->pool);
}

int rdag_rref_release(rdag_agent_t *a, const struct rdag_rref *r)
{
	struct del_wait w;
	struct ag_out *o;
	int rc;

	if (!a || !r)
		return err_set(RDAG_EINVAL, "rdag_rref_release: NULL argument");
	if (r->owner >= a->world)
		return err_set(RDAG_EINVAL, "RRef owner %u out of range", r->owner);
	if (r->owner == a->id) {
		ag_rref_delete(a, r->id);
		return 0;
	}
	o = calloc(1, sizeof(*o));
	if (!o)
		return err_set(RDAG_ENOMEM, "out of memory releasing an RRef");
	o->kind = WIRE_RREF_DELETE;
	o->rref.owner = r->owner;
	o->rref.local_id = r->id;
	atomic_init(&w.done, false);
	w.status = 0;
	w.a = a;
	w.o = o;
	rc = ag_send(a, r->owner, 0, o, del_done, &w);
	if (rc == 0) {
		pool_wait_flag(&a->pool, &w.done, -1, a);
		rc = w.status;
		if (rc)
			err_set(rc, "releasing RRef %#llx on worker %u: %s", (unsigned long long)r->id,
				r->owner, rdag_strerror(rc));
	}
	ag_out_free(o);
	return rc;
}

size_t rdag_rref_count(rdag_agent_t *a)
{
	size_t n;

	if (!a)
		return 0;
	pthread_mutex_lock(&a->rref_lock);
	n = a->rrefs.count;
	pthread_mutex_unlock(&a->rref_lock);
	return n;
}
