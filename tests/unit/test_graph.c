/* Unit tests of rdag_graph, the reference engine: chains, diamonds, multiple roots, retain_graph, sinks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <rdag/rdag.h>

#include "util/gbuf.h"

#define N 4

/* out = k * in (f64), so d in = k * d out */
static int scale_bw(void *arg, const struct rdag_tensor *go, uint32_t n_out, struct rdag_tensor *gi,
		    uint32_t n_in)
{
	double k = *(const double *)arg;
	const double *g = go[0].data;
	double *d = gi[0].data;

	assert_int_equal(n_out, 1);
	assert_int_equal(n_in, 1);
	for (int i = 0; i < N; i++)
		d[i] = k * g[i];
	return 0;
}

/* out = a + b: both get the output's gradient */
static int add_bw(void *arg, const struct rdag_tensor *go, uint32_t n_out, struct rdag_tensor *gi,
		  uint32_t n_in)
{
	(void)arg;
	(void)n_out;
	for (uint32_t j = 0; j < n_in; j++)
		if (gi[j].data)
			memcpy(gi[j].data, go[0].data, N * sizeof(double));
	return 0;
}

static int fail_bw(void *arg, const struct rdag_tensor *go, uint32_t n_out, struct rdag_tensor *gi,
		   uint32_t n_in)
{
	(void)arg, (void)go, (void)n_out, (void)gi, (void)n_in;
	return RDAG_EIO;
}

struct sink_state {
	double leaf[2][N];
	void *keys[2];
	int leaf_calls, recv_calls;
	uint32_t recv_nr;
	double recv[N];
};

static int on_leaf(void *arg, void *var, const struct rdag_tensor *g)
{
	struct sink_state *s = arg;

	for (int k = 0; k < 2; k++) {
		if (s->keys[k] == var) {
			for (int i = 0; i < N; i++)
				s->leaf[k][i] += ((const double *)g->data)[i];
			s->leaf_calls++;
			return 0;
		}
	}
	return RDAG_ENOENT;
}

static int on_recv(void *arg, void *fn, uint32_t nr, const struct rdag_tensor *g)
{
	struct sink_state *s = arg;

	(void)fn;
	s->recv_nr = nr;
	memcpy(s->recv, g->data, sizeof(s->recv));
	s->recv_calls++;
	return 0;
}

static void vec(struct rdag_tensor *t, double *data, bool rg)
{
	int64_t shape[1] = {N};

	rdag_tensor_init(t, data, RDAG_F64, 1, shape);
	t->requires_grad = rg;
}

static void out_of(struct rdag_tensor *t, double *data, void *node, uint32_t nr)
{
	vec(t, data, true);
	t->grad_kind = RDAG_GRAD_NODE;
	t->grad_fn.node = node;
	t->grad_fn.input_nr = nr;
}

/* x -> y1 = 2x, y2 = 3x -> z = y1 + y2; dz/dx = 5, through a diamond (x's node feeds two). */
static void diamond_counts_dependencies(void **state)
{
	rdag_graph_t *g;
	double xd[N] = {1, 2, 3, 4}, buf[N], ones[N] = {1, 1, 1, 1}, two = 2, three = 3, one = 1;
	struct rdag_tensor x, xc, y1, y2, in2[2], z;
	struct sink_state s;
	void *nid, *n1, *n2, *nz;
	struct rdag_edge_grad root;
	struct rdag_grad_sink sink = {.leaf = on_leaf, .recv = on_recv, .arg = &s};

	(void)state;
	memset(&s, 0, sizeof(s));
	assert_int_equal(rdag_graph_create(&g), 0);
	vec(&x, xd, true);                  /* leaf, keyed by its data pointer */
	s.keys[0] = xd;
	assert_int_equal(rdag_graph_node(g, scale_bw, &one, &x, 1, &x, 1, &nid), 0);
	out_of(&xc, buf, nid, 0);           /* an identity in front, so both branches share a node */
	assert_int_equal(rdag_graph_node(g, scale_bw, &two, &xc, 1, &xc, 1, &n1), 0);
	assert_int_equal(rdag_graph_node(g, scale_bw, &three, &xc, 1, &xc, 1, &n2), 0);
	out_of(&y1, buf, n1, 0);
	out_of(&y2, buf, n2, 0);
	in2[0] = y1;
	in2[1] = y2;
	assert_int_equal(rdag_graph_node(g, add_bw, NULL, in2, 2, &y1, 1, &nz), 0);
	out_of(&z, buf, nz, 0);
	memset(&root, 0, sizeof(root));
	root.grad_kind = RDAG_GRAD_NODE;
	root.edge = z.grad_fn;
	vec(&root.grad, ones, false);
	assert_int_equal(rdag_graph_run(g, &root, 1, true, &sink), 0);
	assert_int_equal(s.leaf_calls, 1); /* the identity node ran once, after both branches */
	for (int i = 0; i < N; i++)
		assert_true(s.leaf[0][i] == 5.0);
	/* retained: a second pass accumulates */
	assert_int_equal(rdag_graph_run(g, &root, 1, false, &sink), 0);
	for (int i = 0; i < N; i++)
		assert_true(s.leaf[0][i] == 10.0);
	/* freed now */
	assert_int_equal(rdag_graph_run(g, &root, 1, false, &sink), RDAG_EINVAL);
	assert_non_null(strstr(rdag_last_error(), "retain_graph"));
	rdag_graph_destroy(g);
}

static int check_calls;

/* Says "stop" on its third call: the pass has run two nodes by then. */
static int stop_third(void *arg)
{
	(void)arg;
	return ++check_calls >= 3 ? RDAG_EABORTED : 0;
}

/* sink->check runs before every node and stops the pass with its code: a chain of 5 runs 2. */
static void check_stops_the_pass(void **state)
{
	rdag_graph_t *g;
	double xd[N] = {1, 2, 3, 4}, buf[N], ones[N] = {1, 1, 1, 1}, two = 2;
	struct rdag_tensor x, y;
	struct sink_state s;
	void *node = NULL;
	struct rdag_edge_grad root;
	struct rdag_grad_sink sink = {.leaf = on_leaf, .recv = on_recv, .arg = &s, .check = stop_third};

	(void)state;
	memset(&s, 0, sizeof(s));
	assert_int_equal(rdag_graph_create(&g), 0);
	vec(&x, xd, true);
	s.keys[0] = xd;
	y = x;
	for (int i = 0; i < 5; i++) {
		assert_int_equal(rdag_graph_node(g, scale_bw, &two, &y, 1, &y, 1, &node), 0);
		out_of(&y, buf, node, 0);
	}
	memset(&root, 0, sizeof(root));
	root.grad_kind = RDAG_GRAD_NODE;
	root.edge = y.grad_fn;
	vec(&root.grad, ones, false);
	check_calls = 0;
	assert_int_equal(rdag_graph_run(g, &root, 1, true, &sink), RDAG_EABORTED);
	assert_int_equal(check_calls, 3);
	assert_int_equal(s.leaf_calls, 0);  /* the leaf is behind the fifth node */
	/* without the check the same (retained) graph runs through: 2^5 */
	sink.check = NULL;
	assert_int_equal(rdag_graph_run(g, &root, 1, true, &sink), 0);
	assert_int_equal(s.leaf_calls, 1);
	for (int i = 0; i < N; i++)
		assert_true(s.leaf[0][i] == 32.0);
	rdag_graph_destroy(g);
}

static void *last_gin;         /* the buffer the last pointer-recording node filled */
static void *taken;            /* what leaf_take was handed */
static int take_calls;

/* Scales by *arg like scale_bw and remembers the buffer it filled. */
static int scale_rec_bw(void *arg, const struct rdag_tensor *go, uint32_t no, struct rdag_tensor *gi,
			uint32_t ni)
{
	const double k = *(const double *)arg;

	(void)no;
	(void)ni;
	for (int i = 0; i < N; i++)
		((double *)gi[0].data)[i] = k * ((const double *)go[0].data)[i];
	last_gin = gi[0].data;
	return 0;
}

static int on_leaf_take(void *arg, void *var, struct rdag_tensor *g)
{
	int rc = on_leaf(arg, var, g);

	taken = g->data;
	take_calls++;
	free(g->data);
	return rc;
}

/*
 * Gradients are not copied: a root's buffer is read in place (two roots into one slot: the
 * first is copied only when the second is added, and neither root buffer changes), and the
 * buffer a node fills is the one the sink's leaf_take gets.
 */
static void gradients_move_without_copies(void **state)
{
	rdag_graph_t *g;
	double xd[N] = {1, 2, 3, 4}, buf[N], r1[N] = {1, 1, 1, 1}, r2[N] = {1, 2, 3, 4}, two = 2;
	struct rdag_tensor x, y;
	struct sink_state s;
	void *node;
	struct rdag_edge_grad roots[2];
	struct rdag_grad_sink sink = {.leaf = on_leaf, .recv = on_recv, .arg = &s,
				      .leaf_take = on_leaf_take};

	(void)state;
	memset(&s, 0, sizeof(s));
	assert_int_equal(rdag_graph_create(&g), 0);
	vec(&x, xd, true);
	s.keys[0] = xd;
	assert_int_equal(rdag_graph_node(g, scale_rec_bw, &two, &x, 1, &x, 1, &node), 0);
	out_of(&y, buf, node, 0);
	memset(roots, 0, sizeof(roots));
	for (int r = 0; r < 2; r++) {
		roots[r].grad_kind = RDAG_GRAD_NODE;
		roots[r].edge = y.grad_fn;
	}
	vec(&roots[0].grad, r1, false);
	vec(&roots[1].grad, r2, false);
	take_calls = 0;
	assert_int_equal(rdag_graph_run(g, roots, 2, true, &sink), 0);
	assert_int_equal(take_calls, 1);
	assert_int_equal(s.leaf_calls, 1);
	assert_ptr_equal(taken, last_gin);  /* the node's own buffer, not a copy */
	for (int i = 0; i < N; i++) {
		assert_true(s.leaf[0][i] == 2.0 * (1.0 + (i + 1)));
		assert_true(r1[i] == 1.0 && r2[i] == (double)(i + 1)); /* roots untouched */
	}
	/* one root: its buffer is the node's output gradient as it is */
	assert_int_equal(rdag_graph_run(g, roots + 1, 1, true, &sink), 0);
	for (int i = 0; i < N; i++)
		assert_true(s.leaf[0][i] == 2.0 * (1.0 + (i + 1)) + 2.0 * (i + 1));
	/* without leaf_take the sink gets a view, and the engine frees its buffer */
	sink.leaf_take = NULL;
	assert_int_equal(rdag_graph_run(g, roots, 2, false, &sink), 0);
	assert_int_equal(take_calls, 2);
	assert_int_equal(s.leaf_calls, 3);
	rdag_graph_destroy(g);
}

/* retain_graph false frees a node for other passes, not for more runs of the same pass. */
static void freed_within_a_pass(void **state)
{
	rdag_graph_t *g;
	double xd[N] = {1, 2, 3, 4}, buf[N], ones[N] = {1, 1, 1, 1}, two = 2;
	struct rdag_tensor x, y;
	struct sink_state s;
	void *node;
	struct rdag_edge_grad root;
	struct rdag_grad_sink sink = {.leaf = on_leaf, .recv = on_recv, .arg = &s, .pass_id = 7};

	(void)state;
	memset(&s, 0, sizeof(s));
	assert_int_equal(rdag_graph_create(&g), 0);
	vec(&x, xd, true);
	s.keys[0] = xd;
	assert_int_equal(rdag_graph_node(g, scale_bw, &two, &x, 1, &x, 1, &node), 0);
	out_of(&y, buf, node, 0);
	memset(&root, 0, sizeof(root));
	root.grad_kind = RDAG_GRAD_NODE;
	root.edge = y.grad_fn;
	vec(&root.grad, ones, false);
	assert_int_equal(rdag_graph_run(g, &root, 1, false, &sink), 0);
	assert_int_equal(rdag_graph_run(g, &root, 1, false, &sink), 0); /* pass 7 again */
	assert_int_equal(s.leaf_calls, 2);
	for (int i = 0; i < N; i++)
		assert_true(s.leaf[0][i] == 4.0);
	sink.pass_id = 8;
	assert_int_equal(rdag_graph_run(g, &root, 1, false, &sink), RDAG_EINVAL);
	sink.pass_id = 0;                                                /* no pass: freed */
	assert_int_equal(rdag_graph_run(g, &root, 1, false, &sink), RDAG_EINVAL);
	assert_int_equal(s.leaf_calls, 2);
	rdag_graph_destroy(g);
}

/* Two roots, a leaf root, a recv-function edge, inputs that need no gradient, and errors. */
static void roots_sinks_and_errors(void **state)
{
	rdag_graph_t *g;
	double ad[N] = {0}, bd[N] = {0}, buf[N], g1[N] = {1, 1, 1, 1}, g2[N] = {1, 2, 3, 4}, k = 4;
	struct rdag_tensor a, b, c, in3[3], o;
	struct sink_state s;
	void *nadd, *nscale, *nfail;
	struct rdag_edge_grad roots[3];
	struct rdag_grad_sink sink = {.leaf = on_leaf, .recv = on_recv, .arg = &s};
	static int fake_recv_fn;

	(void)state;
	memset(&s, 0, sizeof(s));
	assert_int_equal(rdag_graph_create(&g), 0);
	vec(&a, ad, true);
	s.keys[0] = ad;
	vec(&b, bd, false);                /* constant: no edge */
	vec(&c, buf, true);                /* arrived by RPC: its gradient goes to the recv function */
	c.grad_kind = RDAG_GRAD_RECV;
	c.grad_fn.node = &fake_recv_fn;
	c.grad_fn.input_nr = 3;
	in3[0] = a;
	in3[1] = b;
	in3[2] = c;
	assert_int_equal(rdag_graph_node(g, add_bw, NULL, in3, 3, &a, 1, &nadd), 0);
	out_of(&o, buf, nadd, 0);
	assert_int_equal(rdag_graph_node(g, scale_bw, &k, &o, 1, &o, 1, &nscale), 0);
	memset(roots, 0, sizeof(roots));
	roots[0].grad_kind = RDAG_GRAD_NODE;   /* d(scale output) = 1 */
	roots[0].edge.node = nscale;
	vec(&roots[0].grad, g1, false);
	roots[1].grad_kind = RDAG_GRAD_NODE;   /* plus d(add output) = g2 directly */
	roots[1].edge.node = nadd;
	vec(&roots[1].grad, g2, false);
	roots[2].grad_kind = RDAG_GRAD_LEAF;   /* plus a gradient straight into the leaf */
	roots[2].edge.node = ad;
	vec(&roots[2].grad, g1, false);
	assert_int_equal(rdag_graph_run(g, roots, 3, true, &sink), 0);
	for (int i = 0; i < N; i++) {
		assert_true(s.leaf[0][i] == 4.0 + g2[i] + 1.0);
		assert_true(s.recv[i] == 4.0 + g2[i]);
	}
	assert_int_equal(s.recv_calls, 1);
	assert_int_equal(s.recv_nr, 3);
	/* a node's error ends the pass with it */
	assert_int_equal(rdag_graph_node(g, fail_bw, NULL, &o, 1, &o, 1, &nfail), 0);
	roots[0].edge.node = nfail;
	assert_int_equal(rdag_graph_run(g, roots, 1, true, &sink), RDAG_EIO);
	/* a gradient of the wrong size is refused */
	roots[0].edge.node = nscale;
	roots[0].grad.shape[0] = 3;
	assert_int_equal(rdag_graph_run(g, roots, 1, true, &sink), RDAG_EINVAL);
	/* something that is not a node */
	roots[0].grad.shape[0] = N;
	roots[0].edge.node = &fake_recv_fn;
	assert_int_equal(rdag_graph_run(g, roots, 1, true, &sink), RDAG_EINVAL);
	rdag_graph_destroy(g);
}

static void tensor_add_dtypes(void **state)
{
	float f[2] = {1, 2}, f2[2] = {3, 4};
	int64_t l[2] = {5, 6}, l2[2] = {7, 8}, shape[1] = {2};
	uint8_t u[2] = {1, 2};
	struct rdag_tensor a, b;

	(void)state;
	rdag_tensor_init(&a, f, RDAG_F32, 1, shape);
	rdag_tensor_init(&b, f2, RDAG_F32, 1, shape);
	assert_int_equal(rdag_tensor_add(&a, &b), 0);
	assert_true(f[0] == 4 && f[1] == 6);
	rdag_tensor_init(&a, l, RDAG_I64, 1, shape);
	rdag_tensor_init(&b, l2, RDAG_I64, 1, shape);
	assert_int_equal(rdag_tensor_add(&a, &b), 0);
	assert_true(l[0] == 12 && l[1] == 14);
	assert_int_equal(rdag_tensor_add(&a, &(struct rdag_tensor){.dtype = RDAG_F32, .ndim = 1,
								   .shape = {2}, .data = f}), RDAG_EINVAL);
	rdag_tensor_init(&a, u, RDAG_U8, 1, shape);
	assert_int_equal(rdag_tensor_add(&a, &a), RDAG_ENOSYS);
	/* NULL tensors are an error, not a crash */
	assert_int_equal(rdag_tensor_add(NULL, &a), RDAG_EINVAL);
	assert_int_equal(rdag_tensor_add(&a, NULL), RDAG_EINVAL);
}

/* ---- RDAG_NODE_WRITES_ALL and reused buffers ------------------------------------------------- */

#define BIG (64 * 1024) /* f32 elements: 256 KiB buffers, large enough for gbuf to keep */

struct big_node {
	uint8_t fill;      /* written over every byte of grad_in (when not 0) */
	size_t nonzero;    /* fill 0: bytes of grad_in that were not zero on entry */
	const void *seen;  /* grad_in[0].data */
};

static int big_bw(void *arg, const struct rdag_tensor *go, uint32_t n_out, struct rdag_tensor *gi,
		  uint32_t n_in)
{
	struct big_node *b = arg;
	const unsigned char *p = gi[0].data;
	size_t nb = rdag_tensor_nbytes(&gi[0]);

	(void)go, (void)n_out, (void)n_in;
	b->seen = p;
	b->nonzero = 0;
	if (b->fill) /* only writes: its buffer may be fresh from malloc, never written */
		memset(gi[0].data, b->fill, nb);
	else
		for (size_t i = 0; i < nb; i++)
			b->nonzero += p[i] != 0;
	return 0;
}

static void one_big_pass(struct big_node *b, uint32_t flags, float *x, float *ones)
{
	int64_t shape[1] = {BIG};
	struct rdag_tensor xt, yt;
	struct rdag_edge_grad root;
	rdag_graph_t *g;
	void *node;

	assert_int_equal(rdag_graph_create(&g), 0);
	rdag_tensor_init(&xt, x, RDAG_F32, 1, shape);
	xt.requires_grad = true; /* a leaf: no sink, so the gradient is dropped and its buffer freed */
	assert_int_equal(rdag_graph_node(g, big_bw, b, &xt, 1, &xt, 1, &node), 0);
	assert_int_equal(rdag_graph_node_flags(node, flags), 0);
	yt = xt;
	yt.grad_kind = RDAG_GRAD_NODE;
	yt.grad_fn.node = node;
	yt.grad_fn.input_nr = 0;
	memset(&root, 0, sizeof(root));
	root.grad_kind = RDAG_GRAD_NODE;
	root.edge = yt.grad_fn;
	rdag_tensor_init(&root.grad, ones, RDAG_F32, 1, shape);
	assert_int_equal(rdag_graph_run(g, &root, 1, false, NULL), 0);
	rdag_graph_destroy(g);
}

/*
 * A node that writes everything may get a used buffer; one that did not say so always gets zeros,
 * even in a buffer another node dirtied, reused through gbuf (as while an agent is open).
 */
static void writes_all_and_reused_buffers(void **state)
{
	static float x[BIG], ones[BIG];
	struct big_node dirty = {.fill = 0xff}, clean = {0}, dirty2 = {.fill = 0};
	struct gbuf_stats a, b;
	int one = 0; /* not a node: its first word is not the node magic */

	(void)state;
	assert_int_equal(rdag_graph_node_flags(&one, 0), RDAG_EINVAL); /* not a node */
	gbuf_use(true);
	gbuf_stats(&a);
	one_big_pass(&dirty, RDAG_NODE_WRITES_ALL, x, ones);
	one_big_pass(&clean, 0, x, ones);
	gbuf_stats(&b);
	assert_true(b.hits > a.hits);        /* the second pass reused the first one's buffer */
	assert_ptr_equal(clean.seen, dirty.seen);
	assert_int_equal(clean.nonzero, 0);  /* ... and zeroed it */
	/* with the flag, the buffer comes as it was left: that is the pass it saves */
	one_big_pass(&dirty, RDAG_NODE_WRITES_ALL, x, ones);
	one_big_pass(&dirty2, RDAG_NODE_WRITES_ALL, x, ones);
	assert_ptr_equal(dirty2.seen, dirty.seen);
	assert_int_equal(dirty2.nonzero, (size_t)BIG * sizeof(float));
	gbuf_use(false);
	gbuf_stats(&b);
	assert_int_equal(b.count, 0);
}

static void node_flags_are_checked(void **state)
{
	rdag_graph_t *g;
	double xd[N] = {0}, one = 1;
	struct rdag_tensor x;
	void *node;

	(void)state;
	assert_int_equal(rdag_graph_create(&g), 0);
	vec(&x, xd, true);
	assert_int_equal(rdag_graph_node(g, scale_bw, &one, &x, 1, &x, 1, &node), 0);
	assert_int_equal(rdag_graph_node_flags(node, RDAG_NODE_WRITES_ALL), 0);
	assert_int_equal(rdag_graph_node_flags(node, 0x80), RDAG_EINVAL);
	assert_non_null(strstr(rdag_last_error(), "unknown flags"));
	assert_int_equal(rdag_graph_node_flags(NULL, 0), RDAG_EINVAL);
	rdag_graph_destroy(g);
}

/* ---- RDAG_NODE_IDENTITY --------------------------------------------------------------------- */

struct id_sink {
	const void *recv_data, *leaf_data; /* what reached the sink */
	bool recv_taken, leaf_taken;
	double leaf_sum[N];
};

static int id_recv(void *arg, void *fn, uint32_t nr, const struct rdag_tensor *g)
{
	struct id_sink *s = arg;

	(void)fn, (void)nr;
	s->recv_data = g->data;
	return 0;
}

static int id_leaf_take(void *arg, void *var, struct rdag_tensor *g)
{
	struct id_sink *s = arg;

	(void)var;
	s->leaf_data = g->data;
	s->leaf_taken = true;
	memcpy(s->leaf_sum, g->data, sizeof(s->leaf_sum));
	free(g->data);
	return 0;
}

static int never_bw(void *arg, const struct rdag_tensor *go, uint32_t n_out, struct rdag_tensor *gi,
		    uint32_t n_in)
{
	(void)arg, (void)go, (void)n_out, (void)gi, (void)n_in;
	fail_msg("the engine called an identity node's backward");
	return RDAG_EINVAL;
}

/*
 * root -> identity -> recv: the sink sees the root's own buffer (lent, no copy). root -> scale ->
 * identity -> leaf: the buffer the scale node filled moves through to leaf_take.
 */
static void identity_hands_gradients_on(void **state)
{
	rdag_graph_t *g;
	double xd[N] = {0}, ones[N] = {1, 1, 1, 1}, three = 3;
	int recv_fn_token;
	struct rdag_tensor r, x, y;
	struct rdag_edge_grad root;
	struct id_sink s;
	struct rdag_grad_sink sink = {.recv = id_recv, .leaf_take = id_leaf_take, .arg = &s};
	void *id1, *sc, *id2;

	(void)state;
	memset(&s, 0, sizeof(s));
	assert_int_equal(rdag_graph_create(&g), 0);
	/* r: a tensor that came by RPC (its edge: a recv function) */
	vec(&r, xd, true);
	r.grad_kind = RDAG_GRAD_RECV;
	r.grad_fn.node = &recv_fn_token;
	r.grad_fn.input_nr = 0;
	assert_int_equal(rdag_graph_node(g, never_bw, NULL, &r, 1, &r, 1, &id1), 0);
	assert_int_equal(rdag_graph_node_flags(id1, RDAG_NODE_IDENTITY), 0);
	memset(&root, 0, sizeof(root));
	root.grad_kind = RDAG_GRAD_NODE;
	root.edge.node = id1;
	vec(&root.grad, ones, false);
	assert_int_equal(rdag_graph_run(g, &root, 1, true, &sink), 0);
	assert_ptr_equal(s.recv_data, ones); /* the root's buffer itself */

	/* root -> identity -> scale by 3 -> leaf x: the root is lent through the identity to the
	 * scale node, whose buffer moves on to leaf_take */
	vec(&x, xd, true);
	assert_int_equal(rdag_graph_node(g, scale_bw, &three, &x, 1, &x, 1, &sc), 0);
	out_of(&y, xd, sc, 0);
	assert_int_equal(rdag_graph_node(g, never_bw, NULL, &y, 1, &y, 1, &id2), 0);
	assert_int_equal(rdag_graph_node_flags(id2, RDAG_NODE_IDENTITY | RDAG_NODE_WRITES_ALL), 0);
	root.edge.node = id2;
	assert_int_equal(rdag_graph_run(g, &root, 1, false, &sink), 0);
	assert_true(s.leaf_taken);
	for (int i = 0; i < N; i++)
		assert_true(s.leaf_sum[i] == 3.0);
	/* the identity does not run twice after retain_graph false */
	assert_int_equal(rdag_graph_run(g, &root, 1, false, &sink), RDAG_EINVAL);
	rdag_graph_destroy(g);

	/* root -> scale by 3 -> identity -> leaf x: the buffer the scale node filled moves on */
	{
		struct rdag_tensor x3, y3, z;
		void *id3, *sc2;

		assert_int_equal(rdag_graph_create(&g), 0);
		memset(&s, 0, sizeof(s));
		vec(&x3, xd, true);
		assert_int_equal(rdag_graph_node(g, never_bw, NULL, &x3, 1, &x3, 1, &id3), 0);
		assert_int_equal(rdag_graph_node_flags(id3, RDAG_NODE_IDENTITY), 0);
		out_of(&y3, xd, id3, 0);
		assert_int_equal(rdag_graph_node(g, scale_bw, &three, &y3, 1, &y3, 1, &sc2), 0);
		out_of(&z, xd, sc2, 0);
		root.edge = z.grad_fn;
		assert_int_equal(rdag_graph_run(g, &root, 1, false, &sink), 0);
		assert_true(s.leaf_taken);
		assert_ptr_not_equal(s.leaf_data, ones);
		for (int i = 0; i < N; i++)
			assert_true(s.leaf_sum[i] == 3.0);
		rdag_graph_destroy(g);
	}
}

static void identity_needs_matching_inputs(void **state)
{
	rdag_graph_t *g;
	double xd[N] = {0}, f32d[N] = {0};
	struct rdag_tensor in2[2], x, xf;
	int64_t shape[1] = {N};
	void *two_in, *other_dtype;

	(void)state;
	assert_int_equal(rdag_graph_create(&g), 0);
	vec(&in2[0], xd, true);
	vec(&in2[1], xd, true);
	assert_int_equal(rdag_graph_node(g, never_bw, NULL, in2, 2, in2, 1, &two_in), 0);
	assert_int_equal(rdag_graph_node_flags(two_in, RDAG_NODE_IDENTITY), RDAG_EINVAL);
	assert_non_null(strstr(rdag_last_error(), "as many inputs as outputs"));
	vec(&x, xd, true);
	rdag_tensor_init(&xf, f32d, RDAG_F32, 1, shape);
	assert_int_equal(rdag_graph_node(g, never_bw, NULL, &x, 1, &xf, 1, &other_dtype), 0);
	assert_int_equal(rdag_graph_node_flags(other_dtype, RDAG_NODE_IDENTITY), RDAG_EINVAL);
	assert_non_null(strstr(rdag_last_error(), "does not match"));
	rdag_graph_destroy(g);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(diamond_counts_dependencies),
		cmocka_unit_test(roots_sinks_and_errors),
		cmocka_unit_test(check_stops_the_pass),
		cmocka_unit_test(gradients_move_without_copies),
		cmocka_unit_test(freed_within_a_pass),
		cmocka_unit_test(tensor_add_dtypes),
		cmocka_unit_test(writes_all_and_reused_buffers),
		cmocka_unit_test(node_flags_are_checked),
		cmocka_unit_test(identity_hands_gradients_on),
		cmocka_unit_test(identity_needs_matching_inputs),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
