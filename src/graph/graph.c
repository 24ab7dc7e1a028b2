/* rdag_graph: reference local engine: nodes, dependency counting over the reachable nodes, a ready queue. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <rdag/graph.h>

#include "util/err.h"
#include "util/gbuf.h"
#include "util/tbuf.h"
#include "util/u64map.h"

#define NODE_MAGIC 0x474e4f44u /* "GNOD" */
#define FREED_NO_PASS UINT64_MAX

struct gedge {
	uint8_t kind;                 /* enum rdag_grad_kind; NONE: the input needs no gradient */
	struct rdag_edge e;
};

struct gnode {
	uint32_t magic;
	struct gnode *all;            /* every node of the graph, for destroy */
	rdag_node_fn fn;
	void *arg;
	/*
	 * 0, or it ran with retain_graph false: in this distributed pass (which may run it again,
	 * on several threads at once), or FREED_NO_PASS. One atomic word, so a run of the same pass
	 * can never see it freed by no pass.
	 */
	_Atomic uint64_t freed_by;
	_Atomic uint32_t flags;       /* RDAG_NODE_* */
	uint32_t n_in, n_out;
	struct gedge *next;           /* n_in */
	struct rdag_tensor *in_meta;  /* n_in */
	struct rdag_tensor *out_meta; /* n_out */
};

struct rdag_graph {
	pthread_mutex_t lock;
	struct gnode *nodes;
};

int rdag_graph_create(rdag_graph_t **out)
{
	rdag_graph_t *g;

	if (!out)
		return err_set(RDAG_EINVAL, "rdag_graph_create: NULL out");
	g = calloc(1, sizeof(*g));
	if (!g)
		return err_set(RDAG_ENOMEM, "rdag_graph_create: out of memory");
	pthread_mutex_init(&g->lock, NULL);
	*out = g;
	return 0;
}

static void node_free(struct gnode *n)
{
	n->magic = 0;
	free(n->next);
	free(n->in_meta);
	free(n->out_meta);
	free(n);
}

void rdag_graph_destroy(rdag_graph_t *g)
{
	if (!g)
		return;
	while (g->nodes) {
		struct gnode *n = g->nodes;

		g->nodes = n->all;
		node_free(n);
	}
	pthread_mutex_destroy(&g->lock);
	free(g);
}

static void meta_copy(struct rdag_tensor *dst, const struct rdag_tensor *src)
{
	memset(dst, 0, sizeof(*dst));
	dst->dtype = src->dtype;
	dst->ndim = src->ndim <= RDAG_MAX_DIMS ? src->ndim : RDAG_MAX_DIMS;
	dst->device_type = src->device_type;
	dst->device_index = src->device_index;
	memcpy(dst->shape, src->shape, dst->ndim * sizeof(dst->shape[0]));
}

int rdag_graph_node(rdag_graph_t *g, rdag_node_fn fn, void *arg, const struct rdag_tensor *inputs,
		    uint32_t n_in, const struct rdag_tensor *outputs, uint32_t n_out, void **node)
{
	struct gnode *n;

	if (!g || !fn || !node || (n_in && !inputs) || (n_out && !outputs))
		return err_set(RDAG_EINVAL, "rdag_graph_node: NULL argument");
	n = calloc(1, sizeof(*n));
	if (!n)
		return err_set(RDAG_ENOMEM, "rdag_graph_node: out of memory");
	n->next = calloc(n_in ? n_in : 1, sizeof(*n->next));
	n->in_meta = calloc(n_in ? n_in : 1, sizeof(*n->in_meta));
	n->out_meta = calloc(n_out ? n_out : 1, sizeof(*n->out_meta));
	if (!n->next || !n->in_meta || !n->out_meta) {
		node_free(n);
		return err_set(RDAG_ENOMEM, "rdag_graph_node: out of memory");
	}
	n->magic = NODE_MAGIC;
	n->fn = fn;
	n->arg = arg;
	n->n_in = n_in;
	n->n_out = n_out;
	for (uint32_t i = 0; i < n_in; i++) {
		const struct rdag_tensor *t = &inputs[i];

		meta_copy(&n->in_meta[i], t);
		if (!t->requires_grad)
			continue;
		n->next[i].kind = t->grad_kind != RDAG_GRAD_NONE ? t->grad_kind : RDAG_GRAD_LEAF;
		n->next[i].e = t->grad_fn;
		if (n->next[i].kind == RDAG_GRAD_LEAF && !n->next[i].e.node)
			n->next[i].e.node = t->data;
	}
	for (uint32_t i = 0; i < n_out; i++)
		meta_copy(&n->out_meta[i], &outputs[i]);
	pthread_mutex_lock(&g->lock);
	n->all = g->nodes;
	g->nodes = n;
	pthread_mutex_unlock(&g->lock);
	*node = n;
	return 0;
}

static size_t numel(const struct rdag_tensor *t)
{
	size_t n = 1;

	for (unsigned i = 0; i < t->ndim; i++)
		n *= t->shape[i] > 0 ? (size_t)t->shape[i] : 0;
	return n;
}

int rdag_tensor_add(struct rdag_tensor *dst, const struct rdag_tensor *src)
{
	size_t n;

	if (!dst || !src)
		return err_set(RDAG_EINVAL, "rdag_tensor_add: NULL tensor");
	n = numel(dst);
	if (dst->dtype != src->dtype || numel(src) != n)
		return err_set(RDAG_EINVAL, "rdag_tensor_add: tensors of different types or sizes");
	if (n && (!dst->data || !src->data))
		return err_set(RDAG_EINVAL, "rdag_tensor_add: NULL data");
	switch (dst->dtype) {
	case RDAG_F32: {
		float *d = dst->data;
		const float *s = src->data;

		for (size_t i = 0; i < n; i++)
			d[i] += s[i];
		return 0;
	}
	case RDAG_F64: {
		double *d = dst->data;
		const double *s = src->data;

		for (size_t i = 0; i < n; i++)
			d[i] += s[i];
		return 0;
	}
	case RDAG_I32: {
		int32_t *d = dst->data;
		const int32_t *s = src->data;

		for (size_t i = 0; i < n; i++)
			d[i] = (int32_t)((uint32_t)d[i] + (uint32_t)s[i]);
		return 0;
	}
	case RDAG_I64: {
		int64_t *d = dst->data;
		const int64_t *s = src->data;

		for (size_t i = 0; i < n; i++)
			d[i] = (int64_t)((uint64_t)d[i] + (uint64_t)s[i]);
		return 0;
	}
	default:
		return err_set(RDAG_ENOSYS, "cannot accumulate gradients of dtype %u", dst->dtype);
	}
}

/* Per-pass state of a reachable node. */
struct nstate {
	struct gnode *n;
	uint32_t deps;                /* edges from reachable nodes not yet run */
	struct rdag_tensor *grads;    /* n_out accumulated output gradients (data NULL: none yet) */
	bool *owned;                  /* n_out: grads[i].data is ours (else a root's, read only) */
	struct nstate *qnext;
};

/* A buffer shaped like meta into *t: zeroed, unless zero is false. */
static void *buf_like(const struct rdag_tensor *meta, struct rdag_tensor *t, bool zero)
{
	size_t nb = rdag_tensor_nbytes(meta);

	*t = *meta;
	(void)tbuf_alloc(meta, nb, zero, &t->data); /* NULL: the caller reports it */
	return t->data;
}

static void *zeros_like(const struct rdag_tensor *meta, struct rdag_tensor *t)
{
	return buf_like(meta, t, true);
}

static int check_shape(const struct rdag_tensor *meta, const struct rdag_tensor *g)
{
	if (g->dtype != meta->dtype || numel(g) != numel(meta))
		return err_set(RDAG_EINVAL, "a gradient of dtype %u with %zu elements flows into a "
			       "tensor of dtype %u with %zu", g->dtype, numel(g), meta->dtype,
			       numel(meta));
	if (!tbuf_same_device(g, meta))
		return err_set(RDAG_EINVAL, "a gradient on device %u:%u flows into a tensor on device "
			       "%u:%u", g->device_type, g->device_index, meta->device_type,
			       meta->device_index);
	return 0;
}

/*
 * Adds g into output slot i of s. The first gradient is not copied: a root's (own false) is read
 * in place, a node's (own true) is moved (g->data becomes NULL). A second one is added into a
 * buffer of our own (the borrowed one copied first).
 */
static int accumulate(struct nstate *s, uint32_t i, struct rdag_tensor *g, bool own)
{
	struct rdag_tensor *dst = &s->grads[i];
	int rc = check_shape(&s->n->out_meta[i], g);

	if (rc)
		return rc;
	if (!dst->data) {
		*dst = s->n->out_meta[i];
		dst->data = g->data;
		s->owned[i] = own;
		if (own)
			g->data = NULL;
		if (dst->data || !rdag_tensor_nbytes(dst))
			return 0;
		/* an empty gradient without a buffer: zeros of its (empty) shape */
		s->owned[i] = true;
		return zeros_like(&s->n->out_meta[i], dst) ? 0 :
		       err_set(RDAG_ENOMEM, "out of memory for a gradient");
	}
	if (!s->owned[i]) {
		void *p = NULL;

		rc = tbuf_dup(dst, &p);
		if (rc)
			return rc;
		dst->data = p;
		s->owned[i] = true;
	}
	return tbuf_add(dst, g);
}

static struct gnode *as_node(void *p)
{
	struct gnode *n = p;

	return n && n->magic == NODE_MAGIC ? n : NULL;
}

int rdag_graph_node_flags(void *node, uint32_t flags)
{
	struct gnode *n = as_node(node);

	if (!n)
		return err_set(RDAG_EINVAL, "rdag_graph_node_flags: not a node of rdag_graph");
	if (flags & ~(RDAG_NODE_WRITES_ALL | RDAG_NODE_IDENTITY))
		return err_set(RDAG_EINVAL, "rdag_graph_node_flags: unknown flags %#x",
			       flags & ~(RDAG_NODE_WRITES_ALL | RDAG_NODE_IDENTITY));
	if (flags & RDAG_NODE_IDENTITY) {
		if (n->n_in != n->n_out)
			return err_set(RDAG_EINVAL, "rdag_graph_node_flags: an identity node needs as "
				       "many inputs as outputs (%u, %u)", n->n_in, n->n_out);
		for (uint32_t i = 0; i < n->n_in; i++)
			if (check_shape(&n->in_meta[i], &n->out_meta[i]))
				return err_set(RDAG_EINVAL, "rdag_graph_node_flags: an identity node's "
					       "input %u does not match its output: %s", i,
					       rdag_last_error());
	}
	atomic_store(&n->flags, flags);
	return 0;
}

/*
 * Hands a gradient for edge e on: into a node's slot (counting the dependency down), or to the
 * sink. own: g->data is ours to give away (it is NULL on return if it was given).
 */
static int deliver(struct u64map *st, const struct gedge *e, struct rdag_tensor *g, bool own,
		   const struct rdag_grad_sink *sink, struct nstate ***tail, bool count)
{
	int rc;

	switch (e->kind) {
	case RDAG_GRAD_NODE: {
		struct nstate *s = u64map_get(st, (uintptr_t)e->e.node);

		if (!s)
			return err_set(RDAG_EINVAL, "a gradient flows into a node that is not in the graph");
		if (e->e.input_nr >= s->n->n_out)
			return err_set(RDAG_EINVAL, "a gradient flows into output %u of a node with %u",
				       e->e.input_nr, s->n->n_out);
		rc = accumulate(s, e->e.input_nr, g, own);
		if (rc)
			return rc;
		if (count && --s->deps == 0) {
			**tail = s;
			*tail = &s->qnext;
		}
		return 0;
	}
	case RDAG_GRAD_LEAF:
		if (!sink)
			return 0;
		if (own && sink->leaf_take && g->data) {
			rc = sink->leaf_take(sink->arg, e->e.node, g);
			g->data = NULL;
			return rc;
		}
		return sink->leaf ? sink->leaf(sink->arg, e->e.node, g) : 0;
	case RDAG_GRAD_RECV:
		if (!sink)
			return 0;
		if (own && sink->recv_take && g->data) {
			rc = sink->recv_take(sink->arg, e->e.node, e->e.input_nr, g);
			g->data = NULL;
			return rc;
		}
		return sink->recv ? sink->recv(sink->arg, e->e.node, e->e.input_nr, g) : 0;
	default:
		return 0;
	}
}

/* Finds the nodes reachable from roots and counts the edges between them. */
static int discover(struct u64map *st, const struct rdag_edge_grad *roots, uint32_t n)
{
	struct gnode **stack = NULL;
	size_t sp = 0, cap = 0;
	int rc = 0;

	for (uint32_t r = 0; r < n && !rc; r++) {
		struct gnode *root;

		if (roots[r].grad_kind != RDAG_GRAD_NODE)
			continue;
		root = as_node(roots[r].edge.node);
		if (!root) {
			rc = err_set(RDAG_EINVAL, "backward root %u is not a node of this graph", r);
			break;
		}
		if (u64map_get(st, (uintptr_t)root))
			continue;
		for (sp = 0;;) {
			struct nstate *s = calloc(1, sizeof(*s));

			/* grads and owned in one block */
			if (!s || !(s->grads = calloc(root->n_out ? root->n_out : 1,
						     sizeof(*s->grads) + sizeof(bool))) ||
			    u64map_put(st, (uintptr_t)root, s)) {
				if (s)
					free(s->grads);
				free(s);
				rc = err_set(RDAG_ENOMEM, "out of memory running backward");
				break;
			}
			s->n = root;
			s->owned = (bool *)(s->grads + (root->n_out ? root->n_out : 1));
			if (sp == cap) {
				size_t ncap = cap ? 2 * cap : 64;
				struct gnode **ns = realloc(stack, ncap * sizeof(*ns)); /* NOLINT(bugprone-sizeof-expression) */

				if (!ns) {
					rc = err_set(RDAG_ENOMEM, "out of memory running backward");
					break;
				}
				stack = ns;
				cap = ncap;
			}
			stack[sp++] = root;
			/* depth-first: push unseen successors; count every edge between nodes */
			root = NULL;
			while (sp && !root) {
				struct gnode *top = stack[sp - 1];
				bool pushed = false;

				for (uint32_t i = 0; i < top->n_in && !pushed; i++) {
					struct gnode *nx;

					if (top->next[i].kind != RDAG_GRAD_NODE)
						continue;
					nx = as_node(top->next[i].e.node);
					if (!nx) {
						rc = err_set(RDAG_EINVAL, "a next edge points at no node");
						goto out;
					}
					if (!u64map_get(st, (uintptr_t)nx)) {
						root = nx;
						pushed = true;
					}
				}
				if (!pushed)
					sp--;
			}
			if (!root)
				break;
		}
	}
	if (!rc) {
		/* dependency counts: one per edge from a reachable node */
		size_t i = 0;
		uint64_t k;
		void *v;

		while (u64map_next(st, &i, &k, &v)) {
			struct gnode *g = ((struct nstate *)v)->n;

			for (uint32_t j = 0; j < g->n_in; j++) {
				if (g->next[j].kind == RDAG_GRAD_NODE) {
					struct nstate *t = u64map_get(st, (uintptr_t)g->next[j].e.node);

					if (t)
						t->deps++;
				}
			}
		}
	}
out:
	free(stack);
	return rc;
}

static void free_state(struct u64map *st)
{
	size_t i = 0;
	uint64_t k;
	void *v;

	while (u64map_next(st, &i, &k, &v)) {
		struct nstate *s = v;

		for (uint32_t j = 0; j < s->n->n_out; j++)
			if (s->owned[j])
				tbuf_free(&s->grads[j]);
		free(s->grads);
		free(s);
	}
	u64map_fini(st);
}

/*
 * An identity node: output i's gradient goes on as input i's, moved when it is ours (s->grads[i]
 * then empty), lent when it is a root's. Its outputs' slots are filled (zeros for none) already.
 */
static int run_identity(struct u64map *st, struct nstate *s, bool retain,
			const struct rdag_grad_sink *sink, struct nstate ***tail)
{
	struct gnode *n = s->n;
	uint64_t pass = sink ? sink->pass_id : 0;
	int rc = 0;

	if (!retain)
		atomic_store(&n->freed_by, pass ? pass : FREED_NO_PASS);
	for (uint32_t i = 0; i < n->n_in && !rc; i++) {
		struct rdag_tensor g;

		if (n->next[i].kind == RDAG_GRAD_NONE)
			continue;
		g = n->in_meta[i];
		g.data = s->grads[i].data;
		rc = deliver(st, &n->next[i], &g, s->owned[i], sink, tail, true);
		if (s->owned[i] && !g.data)
			s->grads[i].data = NULL; /* moved on */
	}
	return rc;
}

static int run_node(struct u64map *st, struct nstate *s, bool retain,
		    const struct rdag_grad_sink *sink, struct nstate ***tail)
{
	struct gnode *n = s->n;
	uint64_t pass = sink ? sink->pass_id : 0, freed = atomic_load(&n->freed_by);
	struct rdag_tensor *gin;
	uint32_t flags;
	bool zero;
	int rc = 0;

	if (freed && (!pass || freed != pass))
		return err_set(RDAG_EINVAL, "the graph was freed: run backward with retain_graph to "
			       "run it twice");
	for (uint32_t i = 0; i < n->n_out; i++) {
		if (s->grads[i].data)
			continue;
		if (!zeros_like(&n->out_meta[i], &s->grads[i]))
			return err_set(RDAG_ENOMEM, "out of memory for a gradient");
		s->owned[i] = true;
	}
	flags = atomic_load(&n->flags);
	if (flags & RDAG_NODE_IDENTITY)
		return run_identity(st, s, retain, sink, tail);
	gin = calloc(n->n_in ? n->n_in : 1, sizeof(*gin));
	if (!gin)
		return err_set(RDAG_ENOMEM, "out of memory for gradients");
	zero = !(flags & RDAG_NODE_WRITES_ALL);
	for (uint32_t i = 0; i < n->n_in && !rc; i++) {
		if (n->next[i].kind == RDAG_GRAD_NONE) {
			gin[i] = n->in_meta[i];
			gin[i].data = NULL;
		} else if (!buf_like(&n->in_meta[i], &gin[i], zero)) {
			rc = err_set(RDAG_ENOMEM, "out of memory for a gradient");
		}
	}
	if (!rc)
		rc = n->fn(n->arg, s->grads, n->n_out, gin, n->n_in);
	if (!retain) {
		atomic_store(&n->freed_by, pass ? pass : FREED_NO_PASS);
	}
	for (uint32_t i = 0; i < n->n_in && !rc; i++)
		if (n->next[i].kind != RDAG_GRAD_NONE)
			rc = deliver(st, &n->next[i], &gin[i], true, sink, tail, true);
	for (uint32_t i = 0; i < n->n_in; i++)
		tbuf_free(&gin[i]);
	free(gin);
	return rc;
}

int rdag_graph_run(rdag_graph_t *g, const struct rdag_edge_grad *roots, uint32_t n,
		   bool retain_graph, const struct rdag_grad_sink *sink)
{
	struct u64map st;
	struct nstate *head = NULL, **tail = &head;
	int rc;

	(void)g; /* nodes identify themselves: a pass may span the nodes of several graphs */
	if (n && !roots)
		return err_set(RDAG_EINVAL, "rdag_graph_run: NULL roots");
	memset(&st, 0, sizeof(st));
	rc = discover(&st, roots, n);
	for (uint32_t r = 0; r < n && !rc; r++) {
		struct gedge e = {.kind = roots[r].grad_kind, .e = roots[r].edge};
		struct rdag_tensor rg = roots[r].grad; /* read in place, never written */

		rc = deliver(&st, &e, &rg, false, sink, &tail, false);
	}
	if (!rc) {
		/* ready: the reachable nodes no other reachable node feeds */
		size_t i = 0;
		uint64_t k;
		void *v;

		while (u64map_next(&st, &i, &k, &v)) {
			struct nstate *s = v;

			if (s->deps == 0) {
				*tail = s;
				tail = &s->qnext;
			}
		}
	}
	while (!rc && head) {
		struct nstate *s = head;

		head = s->qnext;
		if (!head)
			tail = &head;
		if (sink && sink->check) {
			rc = sink->check(sink->arg);
			if (rc)
				break;
		}
		rc = run_node(&st, s, retain_graph, sink, &tail);
	}
	free_state(&st);
	return rc;
}
