/* RPC with autograd: registry, futures, the calling side (recording send functions) and serving requests. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/agent_int.h"
#include "util/err.h"
#include "util/log.h"

/* ---- registry ------------------------------------------------------------------------------ */

int rdag_register(rdag_agent_t *a, const char *name, rdag_fn fn, void *arg)
{
	size_t len = name ? strlen(name) : 0;
	uint64_t h;
	struct ag_reg *r, *head;
	int rc = 0;

	if (!a || !fn || len == 0 || len > WIRE_MAX_NAME)
		return err_set(RDAG_EINVAL, "rdag_register: need an agent, a function and a name of "
			       "1..%u bytes", WIRE_MAX_NAME);
	r = malloc(sizeof(*r) + len + 1);
	if (!r)
		return err_set(RDAG_ENOMEM, "rdag_register: out of memory");
	r->fn = fn;
	r->arg = arg;
	r->len = len;
	memcpy(r->name, name, len + 1);
	h = ag_hash_name(name, len);
	pthread_rwlock_wrlock(&a->reg_lock);
	head = u64map_get(&a->reg, h);
	for (struct ag_reg *e = head; e; e = e->next)
		if (e->len == len && memcmp(e->name, name, len) == 0)
			rc = err_set(RDAG_EEXIST, "function '%s' is already registered on worker %u",
				     name, a->id);
	if (!rc) {
		r->next = head;
		if (u64map_put(&a->reg, h, r))
			rc = err_set(RDAG_ENOMEM, "rdag_register: out of memory");
	}
	pthread_rwlock_unlock(&a->reg_lock);
	if (rc)
		free(r);
	return rc;
}

static int lookup(rdag_agent_t *a, const void *name, size_t len, rdag_fn *fn, void **arg)
{
	int found = 0;

	pthread_rwlock_rdlock(&a->reg_lock);
	for (struct ag_reg *e = u64map_get(&a->reg, ag_hash_name(name, len)); e; e = e->next) {
		if (e->len == len && memcmp(e->name, name, len) == 0) {
			*fn = e->fn;
			*arg = e->arg;
			found = 1;
			break;
		}
	}
	pthread_rwlock_unlock(&a->reg_lock);
	return found;
}

/* ---- futures ------------------------------------------------------------------------------- */

struct rdag_future *ag_future_new(rdag_agent_t *a, uint32_t dst, int kind)
{
	struct rdag_future *f = calloc(1, sizeof(*f));

	if (!f)
		return NULL;
	f->a = a;
	f->dst = dst;
	f->kind = kind;
	atomic_init(&f->refs, 1);
	atomic_init(&f->done, false);
	atomic_init(&f->left, false);
	pthread_mutex_init(&f->lock, NULL);
	pthread_cond_init(&f->cond, NULL);
	return f;
}

void ag_future_put(struct rdag_future *f)
{
	if (!f || atomic_fetch_sub(&f->refs, 1) != 1)
		return;
	ag_rx_release(f->a, f->rx, f->rx_loop);
	ag_out_free(f->out);
	free(f->tensors);
	free(f->errtext);
	pthread_cond_destroy(&f->cond);
	pthread_mutex_destroy(&f->lock);
	free(f);
}

/* Under f->lock: marks f done once its send has finished and its outcome is known. */
static bool settle_locked(struct rdag_future *f)
{
	if (atomic_load(&f->done) || !f->sent || (!f->got_reply && f->status == 0))
		return false;
	atomic_store(&f->done, true);
	pthread_cond_broadcast(&f->cond);
	return true;
}

static void after_settle(struct rdag_future *f)
{
	void (*cb)(void *, rdag_future_t *, int);

	pool_kick(&f->a->pool);
	pthread_mutex_lock(&f->lock);
	cb = f->cb;
	f->cb = NULL;
	pthread_mutex_unlock(&f->lock);
	if (cb)
		cb(f->cb_arg, f, f->status);
}

void ag_future_complete(struct rdag_future *f, int status, const char *text, struct xport_rx *rx,
			bool loop)
{
	bool settled;

	pthread_mutex_lock(&f->lock);
	if (f->got_reply || f->status) {
		pthread_mutex_unlock(&f->lock);
		ag_rx_release(f->a, rx, loop);
		return;
	}
	f->status = status;
	if (status && text)
		f->errtext = strdup(text);
	f->rx = rx;
	f->rx_loop = loop;
	f->got_reply = status == 0;
	settled = settle_locked(f);
	pthread_mutex_unlock(&f->lock);
	if (settled)
		after_settle(f);
}

void ag_send_done(void *arg, int status)
{
	struct rdag_future *f = arg;
	bool settled;

	pthread_mutex_lock(&f->lock);
	f->sent = true;
	if (status && !f->got_reply && !f->status) {
		f->status = status;
		f->errtext = strdup(rdag_last_error()[0] ? rdag_last_error() : rdag_strerror(status));
	}
	settled = settle_locked(f);
	atomic_store(&f->left, true);
	pthread_mutex_unlock(&f->lock);
	if (!settled)
		pool_kick(&f->a->pool);
	if (status) {
		/* No reply will come for a request that never left: forget it. */
		struct rdag_future *p = ag_pend_take(f->a, f->req_id);

		if (p)
			ag_future_put(p);
	}
	if (settled)
		after_settle(f);
	ag_future_put(f);
}

int ag_pend_add(rdag_agent_t *a, struct rdag_future *f)
{
	int rc;

	f->req_id = ((uint64_t)a->id << 48) | (atomic_fetch_add(&a->next_req, 1) & CTX_ID_LOW_MASK);
	atomic_fetch_add(&f->refs, 1);
	pthread_mutex_lock(&a->pend_lock);
	rc = u64map_put(&a->pend, f->req_id, f);
	pthread_mutex_unlock(&a->pend_lock);
	if (rc) {
		atomic_fetch_sub(&f->refs, 1);
		return err_set(RDAG_ENOMEM, "out of memory for a pending call");
	}
	return 0;
}

struct rdag_future *ag_pend_take(rdag_agent_t *a, uint64_t req_id)
{
	struct rdag_future *f;

	pthread_mutex_lock(&a->pend_lock);
	f = u64map_del(&a->pend, req_id);
	pthread_mutex_unlock(&a->pend_lock);
	return f;
}

void ag_fail_peer(rdag_agent_t *a, uint32_t peer, int code, const char *why)
{
	struct rdag_future *victims[64];
	size_t nv;
	char text[512];

	snprintf(text, sizeof(text), "%s", why);
	do {
		size_t i = 0;
		uint64_t k;
		void *v;

		nv = 0;
		pthread_mutex_lock(&a->pend_lock);
		while (nv < 64 && u64map_next(&a->pend, &i, &k, &v))
			if (((struct rdag_future *)v)->dst == peer || peer == UINT32_MAX)
				victims[nv++] = v;
		for (size_t j = 0; j < nv; j++)
			u64map_del(&a->pend, victims[j]->req_id);
		pthread_mutex_unlock(&a->pend_lock);
		for (size_t j = 0; j < nv; j++) {
			if (peer == UINT32_MAX) {
				/* Closing: the transport is gone, the send will never report. */
				pthread_mutex_lock(&victims[j]->lock);
				victims[j]->sent = true;
				atomic_store(&victims[j]->left, true);
				pthread_mutex_unlock(&victims[j]->lock);
			}
			ag_future_complete(victims[j], code, text, NULL, false);
			ag_future_put(victims[j]);
		}
	} while (nv == 64);
}

int ag_wait(rdag_agent_t *a, struct rdag_future *f, int timeout_ms)
{
	int rc = pool_wait_flag(&a->pool, &f->done, timeout_ms, a);

	if (rc)
		return err_set(rc, "call to worker %u still running after %d ms", f->dst, timeout_ms);
	if (f->status)
		return err_set(f->status, "%s", f->errtext ? f->errtext : rdag_strerror(f->status));
	return 0;
}

int rdag_future_wait(rdag_future_t *f, int timeout_ms)
{
	if (!f)
		return err_set(RDAG_EINVAL, "rdag_future_wait: NULL future");
	return ag_wait(f->a, f, timeout_ms);
}

int rdag_future_test(rdag_future_t *f)
{
	if (!f)
		return err_set(RDAG_EINVAL, "rdag_future_test: NULL future");
	if (!atomic_load(&f->done)) {
		if (f->a->mode == RDAG_PROGRESS_MANUAL && !f->a->progress_running)
			xport_progress(f->a->x, 0);
		if (!atomic_load(&f->done))
			return RDAG_EAGAIN;
	}
	return ag_wait(f->a, f, 0);
}

int rdag_future_then(rdag_future_t *f, void (*cb)(void *arg, rdag_future_t *f, int status), void *arg)
{
	bool now;

	if (!f || !cb)
		return err_set(RDAG_EINVAL, "rdag_future_then: NULL future or callback");
	pthread_mutex_lock(&f->lock);
	if (f->cb_set) {
		pthread_mutex_unlock(&f->lock);
		return err_set(RDAG_EBUSY, "rdag_future_then: the future already has a callback");
	}
	f->cb_set = true;
	f->cb_arg = arg;
	now = atomic_load(&f->done);
	if (!now)
		f->cb = cb;
	pthread_mutex_unlock(&f->lock);
	if (now)
		cb(arg, f, f->status);
	return 0;
}

int rdag_future_result(rdag_future_t *f, struct rdag_msg *out)
{
	if (!f || !out)
		return err_set(RDAG_EINVAL, "rdag_future_result: NULL argument");
	if (!atomic_load(&f->done))
		return err_set(RDAG_EAGAIN, "the call to worker %u has not completed", f->dst);
	if (f->status)
		return err_set(f->status, "%s", f->errtext ? f->errtext : rdag_strerror(f->status));
	*out = f->result;
	return 0;
}

const char *rdag_future_error(rdag_future_t *f)
{
	return f && atomic_load(&f->done) && f->errtext ? f->errtext : "";
}

void rdag_future_free(rdag_future_t *f)
{
	if (!f)
		return;
	pool_wait_flag(&f->a->pool, &f->done, -1, f->a);
	ag_future_put(f);
}

/* ---- recording ----------------------------------------------------------------------------- */

static void meta_from_tensor(struct ctx_tmeta *m, const struct rdag_tensor *t)
{
	memset(m, 0, sizeof(*m));
	m->dtype = t->dtype;
	m->ndim = t->ndim <= WIRE_MAX_RANK ? t->ndim : WIRE_MAX_RANK;
	m->dev_type = t->device_type;
	m->dev_index = t->device_index;
	m->rg = t->requires_grad;
	memcpy(m->shape, t->shape, m->ndim * sizeof(m->shape[0]));
}

/* addSendRpcBackward: a send function with one edge per tensor that requires grad. */
static int record_send(struct ctx *c, uint16_t dst, uint64_t msg_id, const struct rdag_tensor *t,
		       uint32_t n)
{
	uint32_t rg = 0, k = 0;
	struct ctx_sendfn *fn;
	int rc;

	for (uint32_t i = 0; i < n; i++)
		rg += t[i].requires_grad;
	if (!rg)
		return 0;
	fn = calloc(1, sizeof(*fn) + rg * sizeof(fn->edges[0]));
	if (!fn)
		return err_set(RDAG_ENOMEM, "out of memory recording a send function");
	fn->msg_id = msg_id;
	fn->dst = dst;
	fn->nedges = rg;
	for (uint32_t i = 0; i < n; i++) {
		struct ctx_edge *e;

		if (!t[i].requires_grad)
			continue;
		e = &fn->edges[k++];
		e->kind = t[i].grad_kind != RDAG_GRAD_NONE ? t[i].grad_kind : RDAG_GRAD_LEAF;
		e->node = t[i].grad_fn.node;
		if (e->kind == RDAG_GRAD_LEAF && !e->node)
			e->node = t[i].data;
		e->input_nr = t[i].grad_fn.input_nr;
		e->index = i;
		meta_from_tensor(&e->meta, &t[i]);
	}
	rc = ctx_add_send(c, fn);
	if (rc)
		free(fn);
	return rc;
}

/* addRecvRpcBackward: a recv function the received tensors that require grad point at. */
static int record_recv(struct ctx *c, const struct ag_in *in, struct rdag_tensor *t, uint32_t n)
{
	uint32_t rg = 0;
	struct ctx_recvfn *fn;
	int rc;

	for (uint32_t i = 0; i < n; i++)
		rg += t[i].requires_grad;
	if (!rg)
		return 0;
	/* one block: the function, its tensors' metadata, its device map */
	fn = calloc(1, sizeof(*fn) + n * sizeof(fn->meta[0]) +
		    in->devmap.count * sizeof(struct wire_devpair));
	if (!fn)
		return err_set(RDAG_ENOMEM, "out of memory recording a recv function");
	fn->devmap = (struct wire_devpair *)(void *)(fn->meta + n);
	fn->magic = CTX_RECV_MAGIC;
	fn->ctx_id = c->id;
	fn->msg_id = in->msg_id;
	fn->src = in->src;
	fn->ntensors = n;
	fn->ngrad = rg;
	/* Gradients go back the other way: reverse the sender's device map. */
	fn->ndevmap = in->devmap.count;
	for (uint16_t i = 0; i < in->devmap.count; i++) {
		struct wire_devpair p;

		wire_devmap_get(&in->devmap, i, &p);
		fn->devmap[i].from = p.to;
		fn->devmap[i].to = p.from;
	}
	for (uint32_t i = 0; i < n; i++)
		meta_from_tensor(&fn->meta[i], &t[i]);
	rc = ctx_add_recv(c, fn);
	if (rc) {
		free(fn);
		return rc;
	}
	for (uint32_t i = 0; i < n; i++) {
		if (!t[i].requires_grad)
			continue;
		t[i].grad_kind = RDAG_GRAD_RECV;
		t[i].grad_fn.node = fn;
		t[i].grad_fn.input_nr = i;
	}
	return 0;
}

uint64_t rdag_recv_fn_msg_id(const void *recv_fn)
{
	const struct ctx_recvfn *fn = recv_fn;

	return fn && fn->magic == CTX_RECV_MAGIC ? fn->msg_id : UINT64_MAX;
}

/* Converts n tensors into o's xport tensors. */
int ag_out_tensors(struct ag_out *o, const struct rdag_tensor *t, uint32_t n)
{
	if (n > WIRE_MAX_TENSORS)
		return err_set(RDAG_EINVAL, "%u tensors in one message (limit %u)", n, WIRE_MAX_TENSORS);
	if (n && !t)
		return err_set(RDAG_EINVAL, "%u tensors at NULL", n);
	o->ntensors = n;
	if (!n)
		return 0;
	o->tensors = calloc(n, sizeof(*o->tensors));
	if (!o->tensors)
		return err_set(RDAG_ENOMEM, "out of memory for %u tensors", n);
	for (uint32_t i = 0; i < n; i++) {
		int rc = ag_desc_from_tensor(&o->tensors[i].desc, &t[i], i);

		if (rc)
			return rc;
		o->tensors[i].data = t[i].data;
	}
	return 0;
}

/* ---- calling ------------------------------------------------------------------------------- */

/*
 * Sends o (innermost message filled in) to dst as a call of kind, wrapping it for autograd
 * (getMessageWithAutograd) and profiling as the options and the thread's context say. Takes o.
 */
int ag_start_call(rdag_agent_t *a, uint32_t dst, struct ag_out *o, const struct rdag_tensor *t,
		      uint32_t n, const struct rdag_call_opts *opts, int kind, rdag_future_t **out)
{
	struct rdag_future *f = NULL;
	uint64_t cid;
	int rc;

	*out = NULL;
	if (dst >= a->world) {
		rc = err_set(RDAG_EINVAL, "no worker %u (world of %u)", dst, a->world);
		goto fail;
	}
	if (dst != a->id && xport_peer_dead(a->x, dst)) {
		rc = err_set(RDAG_EPEER_DEAD, "worker %u (%s) is dead", dst,
			     xport_peer_name(a->x, dst));
		goto fail;
	}
	rc = ag_out_tensors(o, t, n);
	if (rc)
		goto fail;
	f = ag_future_new(a, dst, kind);
	if (!f) {
		rc = err_set(RDAG_ENOMEM, "out of memory for a call");
		goto fail;
	}
	if ((kind == AGC_CALL || kind == AGC_RREF_CALL || kind == AGC_FETCH) &&
	    ctxmgr_current(&a->cm, &cid) == 0) {
		bool rg = false, force = kind != AGC_CALL || !opts || !(opts->flags & RDAG_CALL_PLAIN);
		struct ctx *c;

		for (uint32_t i = 0; i < n; i++)
			rg |= t[i].requires_grad;
		if (rg || force) {
			uint64_t mid;

			c = ctxmgr_get(&a->cm, cid);
			if (!c) {
				rc = err_set(RDAG_ENOENT, "the current context %#llx was released",
					     (unsigned long long)cid);
				goto fail;
			}
			rc = ctxmgr_new_msg_id(&a->cm, &mid);
			if (!rc)
				rc = record_send(c, (uint16_t)dst, mid, t, n);
			if (!rc)
				rc = ctx_add_known(c, (uint16_t)dst);
			ctx_put(c);
			if (rc)
				goto fail;
			o->has_fwd = true;
			o->fwd_kind = WIRE_FORWARD_AUTOGRAD_REQ;
			o->fwd.ctx_id = cid;
			o->fwd.msg_id = mid;
			o->fwd.from_worker = a->id;
			f->wrapped = true;
			f->ctx_id = cid;
		}
	}
	if (opts && opts->prof_id) {
		o->has_prof = true;
		o->prof_kind = WIRE_RUN_WITH_PROFILING_REQ;
		o->prof.prof_id = opts->prof_id;
		o->prof.state = WIRE_PROF_CPU;
	}
	f->out = o;
	o = NULL;
	rc = ag_pend_add(a, f);
	if (rc)
		goto fail;
	atomic_fetch_add(&f->refs, 1); /* the send's */
	rc = ag_send(a, dst, f->req_id, f->out, ag_send_done, f);
	if (rc) {
		struct rdag_future *p = ag_pend_take(a, f->req_id);

		if (p)
			ag_future_put(p);
		atomic_fetch_sub(&f->refs, 1);
		goto fail;
	}
	*out = f;
	return 0;
fail:
	ag_out_free(o);
	if (f) {
		/* its refs are the caller's only now */
		f->sent = true;
		atomic_store(&f->left, true);
		ag_future_put(f);
	}
	return rc;
}

/* "Error on Node <id>: " at the start of text[0, len): returns the prefix's length and stores the
 * id, or returns 0 (no such prefix, or an id above 65535). Unlike sscanf's %u, a long digit
 * string cannot overflow. */
size_t ag_remote_origin(const char *text, size_t len, uint16_t *origin)
{
	static const char pre[] = "Error on Node ";
	size_t i = sizeof(pre) - 1;
	uint32_t v = 0;

	if (len < i || memcmp(text, pre, i) != 0)
		return 0;
	if (i >= len || text[i] < '0' || text[i] > '9')
		return 0;
	for (; i < len && text[i] >= '0' && text[i] <= '9'; i++) {
		v = v * 10 + (uint32_t)(text[i] - '0');
		if (v > UINT16_MAX)
			return 0;
	}
	if (i + 1 >= len || text[i] != ':' || text[i + 1] != ' ')
		return 0;
	*origin = (uint16_t)v;
	return i + 2;
}

static struct ag_out *new_call(const char *fn, const struct rdag_msg *args, uint8_t kind, int *rc)
{
	struct ag_out *o = calloc(1, sizeof(*o));
	size_t len = fn ? strlen(fn) : 0;

	*rc = 0;
	if (!o) {
		*rc = err_set(RDAG_ENOMEM, "out of memory for a call");
		return NULL;
	}
	if (len == 0 || len > WIRE_MAX_NAME) {
		*rc = err_set(RDAG_EINVAL, "function name of %zu bytes (1..%u)", len, WIRE_MAX_NAME);
		goto fail;
	}
	o->kind = kind;
	o->own[0] = malloc(len + (args ? args->payload_len : 0) + 1);
	if (!o->own[0]) {
		*rc = err_set(RDAG_ENOMEM, "out of memory for a call");
		goto fail;
	}
	memcpy(o->own[0], fn, len); /* NOLINT(bugprone-not-null-terminated-result): ptr + len */
	o->call.name.ptr = o->own[0];
	o->call.name.len = (uint32_t)len;
	if (args && args->payload_len) {
		if (args->payload_len > WIRE_MAX_LENGTH || !args->payload) {
			*rc = err_set(RDAG_EINVAL, "bad payload (%zu bytes)", args->payload_len);
			goto fail;
		}
		memcpy((char *)o->own[0] + len, args->payload, args->payload_len);
		o->call.payload.ptr = (char *)o->own[0] + len;
		o->call.payload.len = (uint32_t)args->payload_len;
	}
	return o;
fail:
	ag_out_free(o);
	return NULL;
}

int rdag_rpc_async(rdag_agent_t *a, uint32_t dst, const char *fn, const struct rdag_msg *args,
		   const struct rdag_call_opts *opts, rdag_future_t **out)
{
	struct ag_out *o;
	int rc;

	if (!a || !out)
		return err_set(RDAG_EINVAL, "rdag_rpc_async: NULL agent or future");
	o = new_call(fn, args, WIRE_RPC_CALL, &rc);
	if (!o)
		return rc;
	return ag_start_call(a, dst, o, args ? args->tensors : NULL, args ? args->ntensors : 0, opts,
			  AGC_CALL, out);
}

/* Waits for f and hands it over (out) or frees it, keeping its error as the thread's last error. */
int ag_finish_sync(rdag_agent_t *a, rdag_future_t *f, rdag_future_t **out)
{
	int rc = ag_wait(a, f, -1);

	if (rc || !out) {
		char *text = rc && f->errtext ? strdup(f->errtext) : NULL;

		ag_future_put(f);
		if (rc)
			err_set(rc, "%s", text ? text : rdag_strerror(rc));
		free(text);
		if (out)
			*out = NULL;
		return rc;
	}
	*out = f;
	return 0;
}

int rdag_rpc_sync(rdag_agent_t *a, uint32_t dst, const char *fn, const struct rdag_msg *args,
		  const struct rdag_call_opts *opts, rdag_future_t **out)
{
	rdag_future_t *f;
	int rc = rdag_rpc_async(a, dst, fn, args, opts, &f);

	if (out)
		*out = NULL;
	if (rc)
		return rc;
	return ag_finish_sync(a, f, out);
}

int ag_start_rref_call(rdag_agent_t *a, uint32_t dst, const char *fn, const struct rdag_msg *args,
		       const struct rdag_call_opts *opts, uint64_t id, rdag_future_t **out)
{
	int rc;
	struct ag_out *o = new_call(fn, args, WIRE_RREF_CALL, &rc);

	if (!o)
		return rc;
	o->call.rref.owner = (uint16_t)dst;
	o->call.rref.local_id = id;
	return ag_start_call(a, dst, o, args ? args->tensors : NULL, args ? args->ntensors : 0, opts,
			  AGC_RREF_CALL, out);
}

int ag_start_simple(rdag_agent_t *a, uint32_t dst, uint8_t kind, uint64_t id, uint16_t owner,
		    rdag_future_t **out)
{
	struct ag_out *o = calloc(1, sizeof(*o));

	if (!o)
		return err_set(RDAG_ENOMEM, "out of memory for a request");
	o->kind = kind;
	if (kind == WIRE_CLEANUP_AUTOGRAD_CONTEXT_REQ) {
		o->cleanup.ctx_id = id;
		return ag_start_call(a, dst, o, NULL, 0, NULL, AGC_CLEANUP, out);
	}
	o->rref.owner = owner;
	o->rref.local_id = id;
	return ag_start_call(a, dst, o, NULL, 0, NULL, AGC_FETCH, out);
}

/* ---- replies arriving ---------------------------------------------------------------------- */

static uint8_t expected_reply(int kind)
{
	switch (kind) {
	case AGC_CALL:
	case AGC_RREF_CALL:
		return WIRE_RPC_RESP;
	case AGC_FETCH:
		return WIRE_RREF_FETCH_RESP;
	case AGC_CLEANUP:
		return WIRE_CLEANUP_AUTOGRAD_CONTEXT_RESP;
	case AGC_BACKWARD:
		return WIRE_BACKWARD_AUTOGRAD_RESP;
	case AGC_RREF_BACKWARD:
		return WIRE_RREF_BACKWARD_RESP;
	default:
		return 0;
	}
}

void ag_handle_reply(struct ag_in *in)
{
	rdag_agent_t *a = in->a;
	struct rdag_future *f = ag_pend_take(a, in->req_id);
	const struct wire_msg *m = in->inner;
	char text[WIRE_MAX_TEXT + 64];
	uint32_t n = in->rx->ntensors;
	int rc = 0;

	if (!f) {
		LOG_DEBUG("agent: %s from worker %u for no pending call (req %#llx): dropped",
			  wire_kind_name(m->kind), in->src, (unsigned long long)in->req_id);
		ag_in_free(in);
		return;
	}
	if (m->kind == WIRE_EXCEPTION) {
		snprintf(text, sizeof(text), "Error on Node %u: %.*s", m->u.exc.origin,
			 (int)m->u.exc.text.len, (const char *)m->u.exc.text.ptr);
		ag_future_complete(f, RDAG_EREMOTE, text, NULL, false);
		goto out;
	}
	if (m->kind != expected_reply(f->kind) || in->src != f->dst) {
		snprintf(text, sizeof(text), "worker %u answered a call with %s", in->src,
			 wire_kind_name(m->kind));
		ag_future_complete(f, RDAG_EIO, text, NULL, false);
		goto out;
	}
	if (in->has_prof)
		ag_prof_store(a, in->prof_id, in->src, &in->events);
	if (n) {
		f->tensors = calloc(n, sizeof(*f->tensors));
		if (!f->tensors) {
			ag_future_complete(f, RDAG_ENOMEM, "out of memory for a reply's tensors", NULL,
					   false);
			goto out;
		}
		for (uint32_t i = 0; i < n && !rc; i++)
			rc = ag_tensor_land(a, in->src, &f->tensors[i], &in->rx->tensors[i], i);
		if (rc) {
			snprintf(text, sizeof(text), "worker %u: the reply of worker %u: %s", a->id,
				 in->src, rdag_last_error());
			ag_future_complete(f, rc, text, NULL, false);
			goto out;
		}
	}
	if (in->has_fwd && f->wrapped) {
		struct ctx *c = ctxmgr_get(&a->cm, f->ctx_id);

		if (c) {
			rc = ctx_add_known(c, in->src);
			if (!rc)
				rc = record_recv(c, in, f->tensors, n);
			ctx_put(c);
		}
		if (rc) {
			ag_future_complete(f, rc, rdag_last_error(), NULL, false);
			goto out;
		}
	}
	if (m->kind == WIRE_RPC_RESP || m->kind == WIRE_RREF_FETCH_RESP) {
		f->result.payload = m->u.resp.payload.ptr;
		f->result.payload_len = m->u.resp.payload.len;
	}
	f->result.tensors = f->tensors;
	f->result.ntensors = n;
	ag_future_complete(f, 0, NULL, in->rx, in->loop);
	in->rx = NULL;
out:
	ag_future_put(f);
	ag_in_free(in);
}

/* ---- serving ------------------------------------------------------------------------------- */

struct rdag_reply {
	rdag_agent_t *a;
	void *payload;
	size_t payload_len;
	struct rdag_tensor *tensors;
	uint32_t n, cap;
	void **allocs;
	uint32_t nallocs, capallocs;
	void (*on_sent)(void *arg);
	void *on_sent_arg;
	int err_code;
	char *err_text;
};

void ag_reply_free(struct rdag_reply *r)
{
	if (!r)
		return;
	if (r->on_sent)
		r->on_sent(r->on_sent_arg);
	for (uint32_t i = 0; i < r->nallocs; i++)
		free(r->allocs[i]);
	free(r->allocs);
	free(r->payload);
	free(r->tensors);
	free(r->err_text);
	free(r);
}

int rdag_reply_payload(rdag_reply_t *r, const void *p, size_t len)
{
	void *q;

	if (!r || (len && !p))
		return err_set(RDAG_EINVAL, "rdag_reply_payload: NULL argument");
	if (len > WIRE_MAX_LENGTH)
		return err_set(RDAG_EINVAL, "rdag_reply_payload: %zu bytes is too long", len);
	q = malloc(len ? len : 1);
	if (!q)
		return err_set(RDAG_ENOMEM, "rdag_reply_payload: out of memory");
	memcpy(q, p, len);
	free(r->payload);
	r->payload = q;
	r->payload_len = len;
	return 0;
}

void *rdag_reply_alloc(rdag_reply_t *r, size_t len)
{
	void *p = NULL;

	if (!r)
		return NULL;
	if (r->nallocs == r->capallocs) {
		uint32_t ncap = r->capallocs ? 2 * r->capallocs : 4;
		void **na = realloc(r->allocs, ncap * sizeof(*na));

		if (!na)
			return NULL;
		r->allocs = na;
		r->capallocs = ncap;
	}
	if (posix_memalign(&p, 64, len ? len : 1))
		return NULL;
	r->allocs[r->nallocs++] = p;
	return p;
}

int rdag_reply_tensor(rdag_reply_t *r, const struct rdag_tensor *t)
{
	struct wire_tensor d;
	int rc;

	if (!r || !t)
		return err_set(RDAG_EINVAL, "rdag_reply_tensor: NULL argument");
	rc = ag_desc_from_tensor(&d, t, r->n);
	if (rc)
		return rc;
	if (r->n >= WIRE_MAX_TENSORS)
		return err_set(RDAG_ENOSPC, "a reply holds at most %u tensors", WIRE_MAX_TENSORS);
	if (r->n == r->cap) {
		uint32_t ncap = r->cap ? 2 * r->cap : 4;
		struct rdag_tensor *nt = realloc(r->tensors, ncap * sizeof(*nt));

		if (!nt)
			return err_set(RDAG_ENOMEM, "rdag_reply_tensor: out of memory");
		r->tensors = nt;
		r->cap = ncap;
	}
	r->tensors[r->n++] = *t;
	return 0;
}

void rdag_reply_on_sent(rdag_reply_t *r, void (*fn)(void *arg), void *arg)
{
	if (!r)
		return;
	r->on_sent = fn;
	r->on_sent_arg = arg;
}

int rdag_reply_error(rdag_reply_t *r, int code, const char *fmt, ...)
{
	va_list ap;
	char buf[4096];

	if (code >= 0)
		code = RDAG_EREMOTE;
	if (!r)
		return code;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	free(r->err_text);
	r->err_text = strdup(buf);
	r->err_code = code;
	return code;
}

/* A reply on its way: everything it holds until the transport is done with it. */
struct ag_resp {
	rdag_agent_t *a;
	struct ag_out *o;
	struct rdag_reply *r;
	struct ag_in *in;
	struct ag_rref_val *val;
	bool counted;
};

static void resp_done(void *arg, int status)
{
	struct ag_resp *s = arg;

	if (status)
		LOG_WARN("agent: reply to worker %u failed: %s (%s)", s->in ? s->in->src : 0,
			 rdag_strerror(status), rdag_last_error());
	ag_out_free(s->o);
	ag_reply_free(s->r);
	ag_rref_put(s->val);
	if (s->counted)
		atomic_fetch_sub(&s->a->serving, 1);
	ag_in_free(s->in);
	free(s);
}

/* Sends o as the reply to in; takes o, r, val, and in when own_in. */
void ag_send_reply(struct ag_in *in, bool own_in, struct ag_out *o, struct rdag_reply *r,
		       struct ag_rref_val *val, bool counted)
{
	struct ag_resp *s = calloc(1, sizeof(*s));
	rdag_agent_t *a = in->a;
	uint16_t src = in->src;
	uint64_t req = in->req_id;
	int rc;

	if (!s) {
		LOG_ERROR("agent: out of memory replying to worker %u", src);
		ag_out_free(o);
		ag_reply_free(r);
		ag_rref_put(val);
		if (counted)
			atomic_fetch_sub(&a->serving, 1);
		if (own_in)
			ag_in_free(in);
		return;
	}
	s->a = a;
	s->o = o;
	s->r = r;
	s->val = val;
	s->in = own_in ? in : NULL;
	s->counted = counted;
	rc = ag_send(a, src, req, o, resp_done, s);
	if (rc && o->kind != WIRE_EXCEPTION) {
		/* The caller waits for an answer: tell it why the reply cannot come (too large, ...). */
		char text[600];
		struct ag_out *e;
		struct ag_resp *es;

		snprintf(text, sizeof(text), "worker %u could not send its %s: %s (%s)", a->id,
			 wire_kind_name(o->kind), rdag_strerror(rc), rdag_last_error());
		e = ag_exception_out(a, rc, text);
		es = e ? calloc(1, sizeof(*es)) : NULL;
		if (es) {
			es->a = a;
			es->o = e;
			if (ag_send(a, src, req, e, resp_done, es))
				resp_done(es, rc);
		} else {
			ag_out_free(e);
		}
	}
	if (rc)
		resp_done(s, rc);
}

struct ag_out *ag_exception_out(rdag_agent_t *a, int code, const char *text)
{
	struct ag_out *o = calloc(1, sizeof(*o));
	size_t len = strlen(text);

	if (!o)
		return NULL;
	if (len > WIRE_MAX_TEXT)
		len = WIRE_MAX_TEXT;
	o->own[0] = malloc(len + 1);
	if (!o->own[0]) {
		free(o);
		return NULL;
	}
	o->kind = WIRE_EXCEPTION;
	o->exc.code = code < 0 ? code : RDAG_EREMOTE;
	o->exc.origin = a->id;
	{
		/* An error that came from another worker keeps its origin through a chain of calls. */
		uint16_t origin;
		size_t skip = ag_remote_origin(text, len, &origin);

		if (skip) {
			o->exc.origin = origin;
			text += skip;
			len -= skip;
		}
	}
	memcpy(o->own[0], text, len); /* NOLINT(bugprone-not-null-terminated-result): ptr + len */
	o->exc.text.ptr = o->own[0];
	o->exc.text.len = (uint32_t)len;
	return o;
}

void ag_reply_exception(struct ag_in *in, int code, const char *fmt, ...)
{
	char text[4096];
	struct ag_out *o;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	o = ag_exception_out(in->a, code, text);
	if (!o) {
		LOG_ERROR("agent: out of memory replying to worker %u", in->src);
		return;
	}
	ag_send_reply(in, false, o, NULL, NULL, false);
}

static void serve_fail(struct ag_in *in, struct rdag_reply *r, int code, const char *text)
{
	struct ag_out *o = ag_exception_out(in->a, code, text);

	if (!o) {
		LOG_ERROR("agent: out of memory replying to worker %u", in->src);
		ag_reply_free(r);
		atomic_fetch_sub(&in->a->serving, 1);
		ag_in_free(in);
		return;
	}
	ag_send_reply(in, true, o, r, NULL, true);
}

void ag_serve(struct ag_job *j)
{
	struct ag_in *in = (struct ag_in *)j;
	rdag_agent_t *a = in->a;
	const struct wire_msg *m = in->inner;
	uint32_t n = in->rx->ntensors;
	struct rdag_tensor *ts = NULL;
	struct rdag_reply *r = calloc(1, sizeof(*r));
	struct ag_rref_val *val = NULL;
	struct ag_prof_sess sess, *prev_sess = NULL;
	bool swapped = false;
	struct ag_out *o = NULL;
	struct ctx *c = NULL;
	const struct rdag_tensor *rt = NULL;
	uint32_t rn = 0;
	char text[4200];
	int rc = 0;

	text[0] = 0;
	memset(&sess, 0, sizeof(sess));
	if (!r || (n && !(ts = calloc(n, sizeof(*ts))))) {
		rc = err_set(RDAG_ENOMEM, "worker %u: out of memory serving %s", a->id,
			     wire_kind_name(m->kind));
		goto fail;
	}
	r->a = a;
	for (uint32_t i = 0; i < n && !rc; i++)
		rc = ag_tensor_land(a, in->src, &ts[i], &in->rx->tensors[i], i);
	if (rc) {
		rc = err_set(rc, "worker %u: %s", a->id, rdag_last_error());
		goto fail;
	}
	if (in->has_fwd) {
		/* A remote context appears here lazily; the caller becomes a known worker. */
		rc = ctxmgr_get_or_create(&a->cm, in->ctx_id, &c);
		if (!rc)
			rc = ctx_add_known(c, in->src);
		if (!rc)
			rc = record_recv(c, in, ts, n);
		if (rc)
			goto fail;
	}
	/* Always swapped: a request served while another one waits must not see its session. */
	prev_sess = ag_prof_swap(in->has_prof ? &sess : NULL);
	swapped = true;
	if (m->kind == WIRE_RREF_FETCH_REQ) {
		val = ag_rref_get(a, m->u.rref.local_id);
		if (!val) {
			rc = err_set(RDAG_ENOENT, "worker %u holds no RRef %#llx (never created, or "
				     "released)", a->id, (unsigned long long)m->u.rref.local_id);
			goto fail;
		}
		rt = val->tensors;
		rn = val->ntensors;
		if (val->payload_len && rdag_reply_payload(r, val->payload, val->payload_len)) {
			rc = RDAG_ENOMEM;
			goto fail;
		}
	} else {
		const struct wire_call *call = &m->u.call.call;
		struct rdag_caller who = {.worker = in->src, .has_context = in->has_fwd,
					  .context_id = in->ctx_id};
		struct rdag_msg args = {.payload = call->payload.ptr, .payload_len = call->payload.len,
					.tensors = ts, .ntensors = n};
		bool prev_has;
		uint64_t prev_id, t0;
		rdag_fn fn;
		void *arg;

		if (!lookup(a, call->name.ptr, call->name.len, &fn, &arg)) {
			rc = err_set(RDAG_ENOENT, "worker %u has no function '%.*s'", a->id,
				     (int)call->name.len, (const char *)call->name.ptr);
			goto fail;
		}
		ctxmgr_swap_current(&a->cm, in->has_fwd, in->ctx_id, &prev_has, &prev_id);
		t0 = ag_now_ns();
		err_clear();
		rc = fn(arg, &who, &args, r);
		if (in->has_prof) {
			char ev[WIRE_MAX_NAME];

			snprintf(ev, sizeof(ev), "rpc:%.*s", (int)call->name.len,
				 (const char *)call->name.ptr);
			ag_prof_add(&sess, ev, t0, ag_now_ns());
		}
		ctxmgr_swap_current(&a->cm, prev_has, prev_id, NULL, NULL);
		if (rc) {
			if (r->err_text)
				snprintf(text, sizeof(text), "%s", r->err_text);
			else
				snprintf(text, sizeof(text), "%s: %s", rdag_strerror(rc),
					 rdag_last_error());
			goto fail_text;
		}
		if (m->kind == WIRE_RREF_CALL) {
			struct rdag_msg v = {.payload = r->payload, .payload_len = r->payload_len,
					     .tensors = r->tensors, .ntensors = r->n};

			rc = ag_rref_store(a, call->rref.local_id, in->src, &v);
			if (rc)
				goto fail;
			rn = 0;
		} else {
			rt = r->tensors;
			rn = r->n;
		}
	}
	o = calloc(1, sizeof(*o));
	if (!o) {
		rc = err_set(RDAG_ENOMEM, "worker %u: out of memory for a reply", a->id);
		goto fail;
	}
	o->kind = m->kind == WIRE_RREF_FETCH_REQ ? WIRE_RREF_FETCH_RESP : WIRE_RPC_RESP;
	if (m->kind != WIRE_RREF_CALL) {
		o->payload.ptr = r->payload;
		o->payload.len = (uint32_t)r->payload_len;
	}
	rc = ag_out_tensors(o, rt, rn);
	if (rc)
		goto fail;
	if (in->has_fwd) {
		/* The reply is wrapped with a message id of this worker's (known workers both ways). */
		uint64_t mid;

		rc = ctxmgr_new_msg_id(&a->cm, &mid);
		if (!rc)
			rc = record_send(c, in->src, mid, rt, rn);
		if (rc)
			goto fail;
		o->has_fwd = true;
		o->fwd_kind = WIRE_FORWARD_AUTOGRAD_RESP;
		o->fwd.ctx_id = in->ctx_id;
		o->fwd.msg_id = mid;
		o->fwd.from_worker = a->id;
	}
	if (in->has_prof) {
		o->has_prof = true;
		o->prof_kind = WIRE_RUN_WITH_PROFILING_RESP;
		o->prof.prof_id = in->prof_id;
		o->events = sess.ev;
		o->nevents = sess.n;
		sess.ev = NULL;
		sess.n = 0;
	}
	ag_prof_swap(prev_sess);
	ctx_put(c);
	free(ts);
	ag_send_reply(in, true, o, r, val, true);
	return;
fail:
	snprintf(text, sizeof(text), "%s", rdag_last_error()[0] ? rdag_last_error() : rdag_strerror(rc));
fail_text:
	if (swapped)
		ag_prof_swap(prev_sess);
	ag_prof_sess_free(&sess);
	ag_out_free(o);
	ag_rref_put(val);
	ctx_put(c);
	free(ts);
	serve_fail(in, r, rc ? rc : RDAG_EREMOTE, text);
}

/* ---- cleanup ------------------------------------------------------------------------------- */

#define CLEANUP_TRIES 3

int ag_cleanup_peers(rdag_agent_t *a, uint64_t id, const uint16_t *peers, size_t n, int exclude)
{
	rdag_future_t **fs = calloc(n ? n : 1, sizeof(*fs)); /* NOLINT(bugprone-sizeof-expression) */
	int failed = 0;

	if (!fs)
		return err_set(RDAG_ENOMEM, "out of memory releasing context %#llx",
			       (unsigned long long)id);
	for (int attempt = 0; attempt < CLEANUP_TRIES; attempt++) {
		int again = 0;

		for (size_t i = 0; i < n; i++) {
			if (peers[i] == a->id || (int)peers[i] == exclude || fs[i])
				continue;
			if (ag_start_simple(a, peers[i], WIRE_CLEANUP_AUTOGRAD_CONTEXT_REQ, id, 0, &fs[i])) {
				LOG_WARN("agent: cleanup of context %#llx on worker %u: %s",
					 (unsigned long long)id, peers[i], rdag_last_error());
				fs[i] = NULL;
				if (!xport_peer_dead(a->x, peers[i]))
					again = 1;
			}
		}
		for (size_t i = 0; i < n; i++) {
			int rc;

			if (!fs[i] || (intptr_t)fs[i] == 1)
				continue;
			rc = ag_wait(a, fs[i], -1);
			if (rc) {
				LOG_WARN("agent: cleanup of context %#llx on worker %u failed: %s",
					 (unsigned long long)id, peers[i], rdag_last_error());
				if (rc != RDAG_EPEER_DEAD && rc != RDAG_EREMOTE && !xport_peer_dead(a->x, peers[i]))
					again = 1;
				ag_future_put(fs[i]);
				fs[i] = NULL;
				failed++;
			} else {
				ag_future_put(fs[i]);
				fs[i] = (rdag_future_t *)(intptr_t)1; /* done */
			}
		}
		if (!again)
			break;
	}
	free(fs);
	return failed;
}

void ag_serve_cleanup(struct ag_job *j)
{
	struct ag_in *in = (struct ag_in *)j;
	rdag_agent_t *a = in->a;
	uint64_t id = in->inner->u.cleanup.ctx_id;
	struct ctx *c = ctxmgr_remove(&a->cm, id);
	struct ag_out *o;

	if (c) {
		/* Release here, then tell our own known workers (the sender knows already). */
		uint16_t small[64];
		size_t n;
		uint16_t *known = ctx_known_all(c, small, 64, &n);

		ctx_put(c);
		if (known)
			ag_cleanup_peers(a, id, known, n, in->src);
		else
			LOG_ERROR("agent: out of memory: context %#llx is released here only",
				  (unsigned long long)id);
		if (known != small)
			free(known);
	}
	o = calloc(1, sizeof(*o));
	if (!o) {
		atomic_fetch_sub(&a->serving, 1);
		ag_in_free(in);
		return;
	}
	o->kind = WIRE_CLEANUP_AUTOGRAD_CONTEXT_RESP;
	ag_send_reply(in, true, o, NULL, NULL, true);
}
