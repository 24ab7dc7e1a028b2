/* Distributed backward: local passes through the engine, gradients out of recv functions, requests served. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/agent_int.h"
#include "agent/agent_test.h"
#include "util/err.h"
#include "util/tbuf.h"
#include "util/log.h"

/* The gradients a local pass collects for one recv function (to send to the worker it names). */
struct rgrads {
	struct ctx_recvfn *fn;
	struct rdag_tensor *g;        /* fn->ntensors; data NULL where none arrived */
	bool *lent;                   /* fn->ntensors: g[i].data is a root's buffer, not ours */
};

/* One local pass of a context on this worker, and what leaves it. */
struct pass {
	rdag_agent_t *a;
	struct ctx *c;
	struct ctx_pass *ps;          /* this pass's record in c (its id, its abort) */
	bool retain;
	/*
	 * The engine is rdag_graph: every gradient it hands the sink without giving it away is a
	 * root's (or lies in one), and the roots outlive the pass (run_pass's caller holds them until
	 * it returns, after propagate()), so a recv gradient may be sent from where it lies.
	 */
	bool borrow;
	pthread_mutex_t lock;
	struct u64map recv;           /* (uintptr_t)recv fn -> struct rgrads */
};

static size_t numel(const struct rdag_tensor *t)
{
	size_t n = 1;

	for (unsigned i = 0; i < t->ndim; i++)
		n *= t->shape[i] > 0 ? (size_t)t->shape[i] : 0;
	return n;
}

/* ---- passes and their abort ------------------------------------------------------------- */

/*
 * Every request of a backward pass carries its root's pass id. A worker whose part fails marks
 * the pass aborted in its context and sends BACKWARD_ABORT to the context's known workers; one
 * that learns of it first-hand forwards it to its own. A local run of an aborted pass stops
 * before its next node (sink->check), stops waiting for answers, and later requests of the pass
 * are refused: the whole pass ends within a few message latencies, on every worker.
 */

static struct ctx_pass *pass_find(struct ctx *c, uint64_t id)
{
	for (struct ctx_pass *ps = c->passes; ps; ps = ps->next) {
		if (ps->id == id)
			return ps;
	}
	return NULL;
}

/* Under c->lock: a new record, first in the list (NULL when out of memory). */
static struct ctx_pass *pass_new(struct ctx *c, uint64_t id)
{
	struct ctx_pass *ps = calloc(1, sizeof(*ps));

	if (!ps)
		return NULL;
	ps->id = id;
	atomic_init(&ps->aborted, false);
	ps->next = c->passes;
	c->passes = ps;
	return ps;
}

/* Under c->lock: drops the oldest unused aborted records beyond CTX_MAX_ABORTED. */
static void pass_trim(struct ctx *c)
{
	struct ctx_pass **pp = &c->passes;
	unsigned n = 0;

	while (*pp) {
		struct ctx_pass *ps = *pp;

		if (atomic_load(&ps->aborted) && ++n > CTX_MAX_ABORTED && !ps->users) {
			*pp = ps->next;
			free(ps->text);
			free(ps);
			continue;
		}
		pp = &ps->next;
	}
}

/* The error of an aborted pass as this worker reports it (as a remote error reply would read). */
static int pass_error(rdag_agent_t *a, const struct ctx_pass *ps)
{
	const char *text = ps->text ? ps->text : "(no memory for the error text)";

	if (ps->origin == a->id)
		return err_set(ps->code, "%s", text);
	return err_set(RDAG_EREMOTE, "Error on Node %u: %s", ps->origin, text);
}

/* Joins pass id on c (a local run starts); RDAG_EABORTED-like error if the pass was aborted. */
static int pass_join(rdag_agent_t *a, struct ctx *c, uint64_t id, struct ctx_pass **out)
{
	struct ctx_pass *ps;
	int rc = 0;

	pthread_mutex_lock(&c->lock);
	ps = pass_find(c, id);
	if (!ps)
		ps = pass_new(c, id);
	if (!ps)
		rc = err_set(RDAG_ENOMEM, "worker %u: out of memory for a backward pass", a->id);
	else if (atomic_load(&ps->aborted))
		rc = pass_error(a, ps);
	else
		ps->users++;
	pthread_mutex_unlock(&c->lock);
	*out = rc ? NULL : ps;
	return rc;
}

static void pass_leave(struct ctx *c, struct ctx_pass *ps)
{
	pthread_mutex_lock(&c->lock);
	if (!--ps->users && !atomic_load(&ps->aborted)) {
		struct ctx_pass **pp = &c->passes;

		while (*pp != ps)
			pp = &(*pp)->next;
		*pp = ps->next;
		free(ps);
	}
	pthread_mutex_unlock(&c->lock);
}

/* Marks pass id of c aborted (code on worker origin, text); true if this call did it. */
static bool pass_mark(struct ctx *c, uint64_t id, int code, uint16_t origin, const char *text,
		      size_t len)
{
	struct ctx_pass *ps;
	bool marked = false;

	pthread_mutex_lock(&c->lock);
	ps = pass_find(c, id);
	if (!ps)
		ps = pass_new(c, id);
	if (ps && !atomic_load(&ps->aborted)) {
		ps->text = malloc(len + 1);
		if (ps->text) {
			memcpy(ps->text, text, len);
			ps->text[len] = '\0';
		}
		ps->code = code < 0 ? code : RDAG_EREMOTE;
		ps->origin = origin;
		atomic_store(&ps->aborted, true);
		pass_trim(c);
		marked = true;
	}
	pthread_mutex_unlock(&c->lock);
	return marked;
}

static void abort_sent(void *arg, int status)
{
	struct ag_out *o = arg;

	if (status)
		LOG_DEBUG("agent: BACKWARD_ABORT of pass %#llx not delivered: %s",
			  (unsigned long long)o->abort.pass_id, rdag_strerror(status));
	ag_out_free(o);
}

/* Tells the known workers of c (but this one and except) that pass pass_id is aborted. */
static void abort_tell(rdag_agent_t *a, struct ctx *c, uint64_t pass_id, int code, uint16_t origin,
		       const char *text, size_t len, uint32_t except)
{
	uint16_t small[64];
	size_t n;
	uint16_t *known = ctx_known_all(c, small, 64, &n);

	if (!known) {
		/* the others then learn of it only from the error replies */
		LOG_WARN("agent: out of memory telling the workers of an aborted pass");
		return;
	}
	if (len > WIRE_MAX_TEXT)
		len = WIRE_MAX_TEXT;
	for (size_t i = 0; i < n; i++) {
		struct ag_out *o;

		if (known[i] == a->id || known[i] == except)
			continue;
		o = calloc(1, sizeof(*o));
		if (o)
			o->own[0] = malloc(len ? len : 1);
		if (!o || !o->own[0]) {
			ag_out_free(o);
			LOG_WARN("agent: out of memory telling worker %u of an aborted pass", known[i]);
			continue;
		}
		memcpy(o->own[0], text, len);
		o->kind = WIRE_BACKWARD_ABORT;
		o->abort.ctx_id = c->id;
		o->abort.pass_id = pass_id;
		o->abort.code = code < 0 ? code : RDAG_EREMOTE;
		o->abort.origin = origin;
		o->abort.text.ptr = o->own[0];
		o->abort.text.len = (uint32_t)len;
		if (ag_send(a, known[i], 0, o, abort_sent, o))
			ag_out_free(o);
	}
	if (known != small)
		free(known);
}

/*
 * This worker's part of pass p failed with rc (its message in rdag_last_error()): abort it.
 * Returns false when the pass was aborted already (this run failed because of it).
 */
static bool pass_fail(struct pass *p, int rc)
{
	rdag_agent_t *a = p->a;
	char text[4096];
	const char *t = text;
	uint16_t origin = (uint16_t)a->id;
	size_t skip;

	snprintf(text, sizeof(text), "%s", rdag_last_error()[0] ? rdag_last_error() : rdag_strerror(rc));
	/* An error that came from another worker keeps its origin. */
	skip = ag_remote_origin(text, strlen(text), &origin);
	t += skip;
	if (!pass_mark(p->c, p->ps->id, rc, origin, t, strlen(t)))
		return false; /* aborted already: whoever did has told the others */
	pool_kick(&a->pool);
	abort_tell(a, p->c, p->ps->id, rc, origin, t, strlen(t), UINT32_MAX);
	err_set(rc, "%s", text); /* the caller reports the error it had */
	return true;
}

void agent_test_abort_stats(rdag_agent_t *a, unsigned *runs, unsigned *heard)
{
	*runs = atomic_load(&a->runs_aborted);
	*heard = atomic_load(&a->aborts_heard);
}

/* A BACKWARD_ABORT received and acted upon; forwarded from a handler thread. */
struct abort_fwd {
	struct ag_job job;
	rdag_agent_t *a;
	struct ctx *c;
	uint64_t pass_id;
	int code;
	uint16_t origin;
	uint32_t except;
	size_t len;
	char text[];
};

static void abort_forward(struct ag_job *j)
{
	struct abort_fwd *f = (struct abort_fwd *)j;

	abort_tell(f->a, f->c, f->pass_id, f->code, f->origin, f->text, f->len, f->except);
	ctx_put(f->c);
	atomic_fetch_sub(&f->a->serving, 1);
	free(f);
}

void ag_on_abort(struct ag_in *in)
{
	rdag_agent_t *a = in->a;
	const struct wire_abort *ab = &in->inner->u.abort;
	struct ctx *c = ctxmgr_get(&a->cm, ab->ctx_id);
	struct abort_fwd *f;

	/* On the progress thread: marking is a few instructions under the context's lock. */
	if (c && pass_mark(c, ab->pass_id, ab->code, ab->origin, ab->text.ptr, ab->text.len)) {
		LOG_DEBUG("agent: pass %#llx of context %#llx aborted by worker %u (error on %u)",
			  (unsigned long long)ab->pass_id, (unsigned long long)ab->ctx_id, in->src,
			  ab->origin);
		atomic_fetch_add(&a->aborts_heard, 1);
		pool_kick(&a->pool);
		f = malloc(sizeof(*f) + ab->text.len);
		if (f) {
			f->a = a;
			f->c = c;
			f->pass_id = ab->pass_id;
			f->code = ab->code;
			f->origin = ab->origin;
			f->except = in->src;
			f->len = ab->text.len;
			if (ab->text.len)
				memcpy(f->text, ab->text.ptr, ab->text.len);
			f->job.run = abort_forward;
			atomic_fetch_add(&a->serving, 1);
			pool_push(&a->pool, &f->job);
			c = NULL; /* the job's reference now */
		} else {
			LOG_WARN("agent: out of memory forwarding an aborted pass");
		}
	}
	if (c)
		ctx_put(c);
	ag_in_free(in);
}

/* sink->check: stops the local run of an aborted pass before its next node. */
static int pass_check(void *arg)
{
	struct pass *p = arg;

	return atomic_load(&p->ps->aborted) ? pass_error(p->a, p->ps) : 0;
}

/*
 * *dst += *src, dst (shaped like src) made the first time: from src's buffer itself when take
 * (the engine handed it over: no copy) or when lent is given (src outlives the pass: dst points
 * at it, *lent set), else a copy. A lent dst is copied before anything is added to it. When
 * take, src's buffer is ours in any case.
 */
static int acc(struct rdag_tensor *dst, struct rdag_tensor *src, bool take, bool *lent)
{
	int rc;

	if (dst->data && !tbuf_same_device(dst, src)) {
		rc = err_set(RDAG_EINVAL, "gradients on devices %u:%u and %u:%u for one tensor",
			     dst->device_type, dst->device_index, src->device_type,
			     src->device_index);
		if (take)
			tbuf_free(src);
		return rc;
	}
	if (!dst->data) {
		*dst = *src;
		dst->requires_grad = false;
		dst->grad_kind = RDAG_GRAD_NONE;
		memset(&dst->grad_fn, 0, sizeof(dst->grad_fn));
		if (take)
			return 0;
		if (lent) {
			*lent = true;
			return 0;
		}
		dst->data = NULL;
		return tbuf_dup(src, &dst->data);
	}
	if (lent && *lent) {
		/* a second gradient: never add into a root's buffer */
		void *p = NULL;

		rc = tbuf_dup(dst, &p);
		if (rc) {
			if (take)
				tbuf_free(src);
			return rc;
		}
		dst->data = p;
		*lent = false;
	}
	rc = tbuf_add(dst, src);
	if (take)
		tbuf_free(src);
	return rc;
}

/* A leaf's gradient accumulates in the context (variable -> gradient). */
static int leaf_acc(struct pass *p, void *var, struct rdag_tensor *grad, bool take)
{
	struct ctx *c = p->c;
	struct ctx_grad *g;
	int rc;

	pthread_mutex_lock(&c->lock);
	g = u64map_get(&c->grads, (uintptr_t)var);
	if (!g) {
		g = calloc(1, sizeof(*g));
		if (!g || u64map_put(&c->grads, (uintptr_t)var, g)) {
			free(g);
			pthread_mutex_unlock(&c->lock);
			if (take)
				tbuf_free(grad);
			return err_set(RDAG_ENOMEM, "out of memory for a gradient");
		}
		g->var = var;
	}
	if (g->t.data && numel(&g->t) != numel(grad)) {
		rc = err_set(RDAG_EINVAL, "gradients of different sizes for the same variable");
		if (take)
			tbuf_free(grad);
	} else {
		rc = acc(&g->t, grad, take, NULL); /* the context keeps it: never lent */
	}
	pthread_mutex_unlock(&c->lock);
	return rc;
}

static int sink_leaf(void *arg, void *var, const struct rdag_tensor *grad)
{
	struct rdag_tensor t = *grad;

	return leaf_acc(arg, var, &t, false);
}

static int sink_leaf_take(void *arg, void *var, struct rdag_tensor *grad)
{
	return leaf_acc(arg, var, grad, true);
}

/*
 * A gradient for a tensor that arrived by RPC; sent back once the local pass is done. borrow: grad
 * outlives the pass, and may be sent from where it lies.
 */
static int recv_acc(struct pass *p, struct ctx_recvfn *fn, uint32_t nr, struct rdag_tensor *grad,
		    bool take, bool borrow)
{
	struct rgrads *r;
	int rc;

	if (!fn || fn->magic != CTX_RECV_MAGIC || fn->ctx_id != p->c->id || nr >= fn->ntensors)
		rc = err_set(RDAG_EINVAL, "a gradient flows into a recv function that is not of "
			     "context %#llx", (unsigned long long)p->c->id);
	else if (grad->dtype != fn->meta[nr].dtype)
		rc = err_set(RDAG_EINVAL, "gradient of dtype %u for a tensor of dtype %u",
			     grad->dtype, fn->meta[nr].dtype);
	else
		rc = 0;
	if (rc) {
		if (take)
			tbuf_free(grad);
		return rc;
	}
	pthread_mutex_lock(&p->lock);
	r = u64map_get(&p->recv, (uintptr_t)fn);
	if (!r) {
		r = calloc(1, sizeof(*r));
		if (r) {
			r->g = calloc(fn->ntensors, sizeof(*r->g));
			r->lent = calloc(fn->ntensors, sizeof(*r->lent));
		}
		if (!r || !r->g || !r->lent || u64map_put(&p->recv, (uintptr_t)fn, r)) {
			if (r) {
				free(r->g);
				free(r->lent);
			}
			free(r);
			pthread_mutex_unlock(&p->lock);
			if (take)
				tbuf_free(grad);
			return err_set(RDAG_ENOMEM, "out of memory for a gradient");
		}
		r->fn = fn;
	}
	rc = acc(&r->g[nr], grad, take, borrow || r->lent[nr] ? &r->lent[nr] : NULL);
	pthread_mutex_unlock(&p->lock);
	return rc;
}

static int sink_recv(void *arg, void *fnp, uint32_t nr, const struct rdag_tensor *grad)
{
	struct pass *p = arg;
	struct rdag_tensor t = *grad;

	return recv_acc(p, fnp, nr, &t, false, p->borrow);
}

static int sink_recv_take(void *arg, void *fnp, uint32_t nr, struct rdag_tensor *grad)
{
	return recv_acc(arg, fnp, nr, grad, true, false);
}

static void pass_fini(struct pass *p)
{
	size_t i = 0;
	uint64_t k;
	void *v;

	while (u64map_next(&p->recv, &i, &k, &v)) {
		struct rgrads *r = v;

		for (uint32_t j = 0; j < r->fn->ntensors; j++)
			if (!r->lent[j])
				tbuf_free(&r->g[j]);
		free(r->g);
		free(r->lent);
		free(r);
	}
	u64map_fini(&p->recv);
	pthread_mutex_destroy(&p->lock);
}

/*
 * The recv functions the pass reached send their gradients (zeros for tensors that got none) to
 * the workers the forward tensors came from; waits for every answer. Returns the first error.
 */
static int propagate(struct pass *p)
{
	rdag_agent_t *a = p->a;
	size_t i = 0, nf = 0, cap = p->recv.count;
	rdag_future_t **fs;
	uint64_t k;
	void *v;
	int first = 0;

	if (!cap)
		return 0;
	fs = calloc(cap, sizeof(*fs)); /* NOLINT(bugprone-sizeof-expression) */
	if (!fs)
		return err_set(RDAG_ENOMEM, "out of memory sending gradients");
	while (u64map_next(&p->recv, &i, &k, &v)) {
		struct rgrads *r = v;
		struct ctx_recvfn *fn = r->fn;
		struct rdag_tensor *t = calloc(fn->ngrad ? fn->ngrad : 1, sizeof(*t));
		struct ag_out *o = calloc(1, sizeof(*o));
		uint32_t m = 0;
		int rc = 0;

		if (!t || !o) /* both freed below */
			rc = err_set(RDAG_ENOMEM, "out of memory sending gradients");
		for (uint32_t j = 0; !rc && j < fn->ntensors; j++) {
			const struct ctx_tmeta *mt = &fn->meta[j];

			if (!mt->rg)
				continue;
			if (!r->g[j].data) {
				struct rdag_tensor z;

				/* No gradient reached this tensor: zeros of its shape. */
				rdag_tensor_init(&z, NULL, mt->dtype, mt->ndim, mt->shape);
				z.device_type = mt->dev_type;
				z.device_index = mt->dev_index;
				r->g[j] = z;
				rc = tbuf_alloc(&z, rdag_tensor_nbytes(&z), true, &r->g[j].data);
				if (rc)
					break;
			}
			t[m++] = r->g[j];
		}
		if (!rc) {
			o->kind = WIRE_BACKWARD_AUTOGRAD_REQ;
			o->grad.ctx_id = p->c->id;
			o->grad.msg_id = fn->msg_id;
			o->grad.retain_graph = p->retain;
			o->grad.pass_id = p->ps->id;
			o->own[0] = t;
			rc = ag_start_call(a, fn->src, o, t, m, NULL, AGC_BACKWARD, &fs[nf]);
			if (!rc)
				nf++;
		} else {
			free(t);
			free(o);
		}
		if (rc && !first)
			first = rc;
	}
	/*
	 * Wait for every answer, but after the first error or an abort of the pass only until the
	 * other requests have left (their gradients are ours to free): the pass fails now, not when
	 * the slowest branch ends.
	 */
	for (size_t j = 0; j < nf; j++) {
		int rc;

		if (!first)
			pool_wait_either(&a->pool, &fs[j]->done, &p->ps->aborted, -1, a);
		if (!first && !atomic_load(&fs[j]->done))
			first = pass_error(a, p->ps);
		if (first) {
			pool_wait_flag(&a->pool, &fs[j]->left, -1, a);
			ag_future_put(fs[j]);
			continue;
		}
		rc = ag_wait(a, fs[j], -1);
		if (rc) {
			first = rc;
			err_set(rc, "%s", fs[j]->errtext ? fs[j]->errtext : rdag_strerror(rc));
		}
		ag_future_put(fs[j]);
	}
	free(fs);
	return first;
}

static int default_run(void *engine, const struct rdag_edge_grad *roots, uint32_t n, bool retain,
		       const struct rdag_grad_sink *sink);

/* Runs a local pass from roots (edges with their gradients), then sends what left it. */
static int run_pass(rdag_agent_t *a, struct ctx *c, uint64_t pass_id,
		    const struct rdag_edge_grad *roots, uint32_t n, bool retain)
{
	struct rdag_grad_sink sink;
	struct rdag_edge_grad *nodes;
	struct pass p;
	uint32_t nn = 0;
	int rc = 0;

	memset(&p, 0, sizeof(p));
	rc = pass_join(a, c, pass_id, &p.ps);
	if (rc) {
		if (rc != RDAG_ENOMEM)
			atomic_fetch_add(&a->runs_aborted, 1); /* a late request of an aborted pass */
		return rc;
	}
	p.a = a;
	p.c = c;
	p.retain = retain;
	p.borrow = a->engine.run == default_run;
	pthread_mutex_init(&p.lock, NULL);
	memset(&sink, 0, sizeof(sink)); /* fields added later stay NULL / 0 */
	sink.leaf = sink_leaf;
	sink.recv = sink_recv;
	sink.arg = &p;
	sink.check = pass_check;
	sink.leaf_take = sink_leaf_take;
	sink.recv_take = sink_recv_take;
	sink.pass_id = p.ps->id;
	nodes = calloc(n ? n : 1, sizeof(*nodes));
	if (!nodes) {
		rc = err_set(RDAG_ENOMEM, "out of memory for a backward pass");
		pass_fail(&p, rc);
		pass_leave(c, p.ps);
		pass_fini(&p);
		return rc;
	}
	/* Leaves and recv functions among the roots are rdag's; graph nodes go to the engine. */
	for (uint32_t i = 0; i < n && !rc; i++) {
		switch (roots[i].grad_kind) {
		case RDAG_GRAD_NODE:
			nodes[nn++] = roots[i];
			break;
		case RDAG_GRAD_LEAF:
			rc = sink_leaf(&p, roots[i].edge.node, &roots[i].grad);
			break;
		case RDAG_GRAD_RECV: {
			/* a root: it outlives the pass, whoever the engine is */
			struct rdag_tensor t = roots[i].grad;

			rc = recv_acc(&p, roots[i].edge.node, roots[i].edge.input_nr, &t, false, true);
			break;
		}
		default:
			break;
		}
	}
	if (!rc && nn) {
		/* A node may fail without a message: never let an older one stand for it. */
		err_clear();
		rc = a->engine.run(a->engine.engine, nodes, nn, retain, &sink);
		if (rc && !rdag_last_error()[0])
			err_set(rc, "worker %u: the local backward failed: %s", a->id, rdag_strerror(rc));
	}
	free(nodes);
	if (!rc)
		rc = pass_check(&p);
	if (!rc)
		rc = propagate(&p);
	if (rc && !pass_fail(&p, rc))
		atomic_fetch_add(&a->runs_aborted, 1);
	pass_leave(c, p.ps);
	pass_fini(&p);
	return rc;
}

/* A new pass id of this worker's, (worker << 48) | counter. */
static int new_pass_id(rdag_agent_t *a, uint64_t *id)
{
	int rc = ctxmgr_new_msg_id(&a->cm, id);

	if (rc)
		return err_set(rc, "backward: worker %u has used up its pass ids", a->id);
	return 0;
}

static int default_run(void *engine, const struct rdag_edge_grad *roots, uint32_t n, bool retain,
		       const struct rdag_grad_sink *sink)
{
	return rdag_graph_run(engine, roots, n, retain, sink);
}

int rdag_agent_set_engine(rdag_agent_t *a, const struct rdag_engine *e)
{
	if (!a)
		return err_set(RDAG_EINVAL, "rdag_agent_set_engine: NULL agent");
	if (e && !e->run)
		return err_set(RDAG_EINVAL, "rdag_agent_set_engine: the engine has no run function");
	if (e) {
		a->engine = *e;
	} else {
		a->engine.run = default_run;
		a->engine.engine = NULL;
	}
	return 0;
}

/* The seed gradient of one root: a 1 of its dtype, copied to its device for a CUDA root. */
struct one {
	union {
		double f64;
		float f32;
	} v;
	struct rdag_tensor dev; /* dev.data: the device copy, freed after the pass */
};

static void ones_free(struct one *ones, uint32_t n)
{
	for (uint32_t i = 0; ones && i < n; i++)
		tbuf_free(&ones[i].dev);
	free(ones);
}

static int seed(const struct rdag_tensor *root, uint32_t i, struct rdag_edge_grad *eg,
		struct one *store)
{
	memset(eg, 0, sizeof(*eg));
	if (!root->requires_grad)
		return err_set(RDAG_EINVAL, "backward: root %u does not require grad", i);
	if (numel(root) != 1)
		return err_set(RDAG_EINVAL, "backward: root %u has %zu elements: roots must be scalars",
			       i, numel(root));
	if (root->grad_kind == RDAG_GRAD_NONE)
		return err_set(RDAG_EINVAL, "backward: root %u has no grad_fn", i);
	eg->grad_kind = root->grad_kind;
	eg->edge = root->grad_fn;
	if (root->grad_kind == RDAG_GRAD_LEAF && !eg->edge.node)
		eg->edge.node = root->data;
	eg->grad = *root;
	eg->grad.requires_grad = false;
	eg->grad.grad_kind = RDAG_GRAD_NONE;
	if (root->dtype == RDAG_F64) {
		store->v.f64 = 1.0;
		eg->grad.data = &store->v.f64;
	} else if (root->dtype == RDAG_F32) {
		store->v.f32 = 1.0f;
		eg->grad.data = &store->v.f32;
	} else
		return err_set(RDAG_EINVAL, "backward: root %u is of dtype %u: roots must be f32 or f64",
			       i, root->dtype);
	if (root->device_type == RDAG_DEV_CUDA) {
		size_t es = rdag_tensor_nbytes(&eg->grad);
		int rc;

		store->dev = eg->grad;
		store->dev.data = NULL;
		rc = tbuf_alloc(&store->dev, es, false, &store->dev.data);
		if (!rc)
			rc = gpu_memcpy_htod(store->dev.data, eg->grad.data, es);
		if (rc) /* a buffer made is freed with the others (ones_free) */
			return err_set(rc, "backward: the seed of root %u on CUDA device %u: %s", i,
				       root->device_index, rdag_last_error());
		eg->grad.data = store->dev.data;
	}
	return 0;
}

int rdag_backward(rdag_agent_t *a, uint64_t ctx_id, const struct rdag_tensor *roots, uint32_t n,
		  bool retain_graph)
{
	struct rdag_edge_grad *eg;
	struct one *ones;
	struct ctx *c;
	uint64_t pid = 0;
	int rc = 0;

	if (!a)
		return err_set(RDAG_EINVAL, "rdag_backward: NULL agent");
	c = ctxmgr_get(&a->cm, ctx_id);
	if (!c)
		return err_set(RDAG_ENOENT, "backward: no autograd context %#llx on worker %u",
			       (unsigned long long)ctx_id, a->id);
	if (!n || !roots) {
		ctx_put(c);
		return err_set(RDAG_EINVAL, "backward: no roots given");
	}
	eg = calloc(n, sizeof(*eg));
	ones = calloc(n, sizeof(*ones));
	if (!eg || !ones)
		rc = err_set(RDAG_ENOMEM, "backward: out of memory");
	for (uint32_t i = 0; i < n && !rc; i++)
		rc = seed(&roots[i], i, &eg[i], &ones[i]);
	if (!rc)
		rc = new_pass_id(a, &pid);
	if (!rc)
		rc = run_pass(a, c, pid, eg, n, retain_graph);
	free(eg);
	ones_free(ones, n);
	ctx_put(c);
	return rc;
}

/* ---- serving ------------------------------------------------------------------------------- */

static void reply(struct ag_in *in, uint8_t kind, int rc)
{
	struct ag_out *o;

	if (rc) {
		char text[4096];

		snprintf(text, sizeof(text), "%s", rdag_last_error()[0] ? rdag_last_error() :
			 rdag_strerror(rc));
		o = ag_exception_out(in->a, rc, text);
	} else {
		o = calloc(1, sizeof(*o));
		if (o)
			o->kind = kind;
	}
	if (!o) {
		LOG_ERROR("agent: out of memory answering worker %u", in->src);
		atomic_fetch_sub(&in->a->serving, 1);
		ag_in_free(in);
		return;
	}
	ag_send_reply(in, true, o, NULL, NULL, true);
}

/* PropagateGradientsReq: find the send function, run the local part from its edges, propagate, answer. */
void ag_serve_backward(struct ag_job *j)
{
	struct ag_in *in = (struct ag_in *)j;
	rdag_agent_t *a = in->a;
	const struct wire_grad_req *g = &in->inner->u.grad.req;
	struct rdag_edge_grad *roots = NULL;
	struct ctx_sendfn *s;
	struct ctx *c;
	uint32_t n = in->rx->ntensors;
	int rc = 0;

	c = ctxmgr_get(&a->cm, g->ctx_id);
	if (!c) {
		reply(in, 0, err_set(RDAG_ENOENT, "worker %u has no autograd context %#llx", a->id,
				     (unsigned long long)g->ctx_id));
		return;
	}
	pthread_mutex_lock(&c->lock);
	s = u64map_get(&c->send_fns, g->msg_id);
	/*
	 * Only the worker the tensors went to may send their gradients: anything else is forged.
	 * (A replay by that worker cannot be told from a second local run of the same pass
	 * reaching the same recv function there, which is legitimate.)
	 */
	if (s && s->dst != in->src)
		rc = err_set(RDAG_EACCES, "worker %u: gradients for autograd message %#llx of context "
			     "%#llx came from worker %u, but its tensors went to worker %u", a->id,
			     (unsigned long long)g->msg_id, (unsigned long long)g->ctx_id, in->src,
			     s->dst);
	pthread_mutex_unlock(&c->lock);
	if (rc) {
		LOG_WARN("agent: %s", rdag_last_error());
	} else if (!s) {
		rc = err_set(RDAG_ENOENT, "worker %u: context %#llx has no send function for "
			     "autograd message %#llx", a->id, (unsigned long long)g->ctx_id,
			     (unsigned long long)g->msg_id);
	} else if (n != s->nedges) {
		rc = err_set(RDAG_EINVAL, "worker %u: %u gradients for a send function of %u tensors",
			     a->id, n, s->nedges);
	} else if (!(roots = calloc(n ? n : 1, sizeof(*roots)))) {
		rc = err_set(RDAG_ENOMEM, "worker %u: out of memory for a backward pass", a->id);
	}
	for (uint32_t i = 0; !rc && i < n; i++) {
		const struct ctx_edge *e = &s->edges[i];

		roots[i].grad_kind = e->kind;
		roots[i].edge.node = e->node;
		roots[i].edge.input_nr = e->input_nr;
		/* A gradient lands where its forward tensor was, whatever the sender says. */
		rc = ag_tensor_land_on(a, in->src, &roots[i].grad, &in->rx->tensors[i], i,
				       e->meta.dev_type, e->meta.dev_index);
		if (rc)
			rc = err_set(rc, "worker %u: gradient %u: %s", a->id, i, rdag_last_error());
		else if (roots[i].grad.dtype != e->meta.dtype)
			rc = err_set(RDAG_EINVAL, "worker %u: gradient %u is of dtype %u, its tensor of "
				     "dtype %u", a->id, i, roots[i].grad.dtype, e->meta.dtype);
	}
	if (!rc)
		rc = run_pass(a, c, g->pass_id, roots, n, g->retain_graph);
	free(roots);
	ctx_put(c);
	reply(in, WIRE_BACKWARD_AUTOGRAD_RESP, rc);
}

/* Backward from an RRef's value on its owner. */
static int rref_pass(rdag_agent_t *a, uint64_t ctx_id, uint64_t rref_id, bool retain)
{
	struct ag_rref_val *v = ag_rref_get(a, rref_id);
	struct rdag_edge_grad *eg = NULL;
	struct one *ones = NULL;
	struct ctx *c = NULL;
	uint64_t pid = 0;
	uint32_t n = 0;
	int rc = 0;

	if (!v)
		return err_set(RDAG_ENOENT, "worker %u holds no RRef %#llx", a->id,
			       (unsigned long long)rref_id);
	c = ctxmgr_get(&a->cm, ctx_id);
	if (!c) {
		rc = err_set(RDAG_ENOENT, "backward: no autograd context %#llx on worker %u",
			     (unsigned long long)ctx_id, a->id);
		goto out;
	}
	eg = calloc(v->ntensors ? v->ntensors : 1, sizeof(*eg));
	ones = calloc(v->ntensors ? v->ntensors : 1, sizeof(*ones));
	if (!eg || !ones) {
		rc = err_set(RDAG_ENOMEM, "backward: out of memory");
		goto out;
	}
	for (uint32_t i = 0; i < v->ntensors && !rc; i++) {
		if (!v->tensors[i].requires_grad)
			continue;
		rc = seed(&v->tensors[i], i, &eg[n], &ones[n]);
		n++;
	}
	if (!rc && !n)
		rc = err_set(RDAG_EINVAL, "backward: no tensor of RRef %#llx requires grad",
			     (unsigned long long)rref_id);
	if (!rc)
		rc = new_pass_id(a, &pid);
	if (!rc)
		rc = run_pass(a, c, pid, eg, n, retain);
out:
	free(eg);
	ones_free(ones, n);
	ctx_put(c);
	ag_rref_put(v);
	return rc;
}

void ag_serve_rref_backward(struct ag_job *j)
{
	struct ag_in *in = (struct ag_in *)j;
	const struct wire_rref_backward *r = &in->inner->u.rref_bwd;

	reply(in, WIRE_RREF_BACKWARD_RESP, rref_pass(in->a, r->ctx_id, r->rref.local_id,
						    r->retain_graph));
}

int rdag_rref_backward(rdag_agent_t *a, uint64_t ctx_id, const struct rdag_rref *r, bool retain_graph)
{
	struct ag_out *o;
	rdag_future_t *f;
	int rc;

	if (!a || !r)
		return err_set(RDAG_EINVAL, "rdag_rref_backward: NULL argument");
	if (r->owner == a->id)
		return rref_pass(a, ctx_id, r->id, retain_graph);
	o = calloc(1, sizeof(*o));
	if (!o)
		return err_set(RDAG_ENOMEM, "out of memory");
	o->kind = WIRE_RREF_BACKWARD_REQ;
	o->rref_bwd.rref.owner = r->owner;
	o->rref_bwd.rref.local_id = r->id;
	o->rref_bwd.ctx_id = ctx_id;
	o->rref_bwd.retain_graph = retain_graph;
	rc = ag_start_call(a, r->owner, o, NULL, 0, NULL, AGC_RREF_BACKWARD, &f);
	if (rc)
		return rc;
	return ag_finish_sync(a, f, NULL);
}
