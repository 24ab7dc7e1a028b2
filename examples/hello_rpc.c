/* hello_rpc: rank 0 calls "axpy" (a*x + y) on every other worker inside a distributed autograd context. */
#define _POSIX_C_SOURCE 200809L /* nanosleep */
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <rdag/rdag.h>

/*
 * Run it under a launcher, e.g. with Open MPI on one host:
 *   mpirun -np 3 -x RDAG_FABRIC=ofi -x RDAG_OFI_PROVIDER=shm ./hello_rpc
 * (torchrun and srun work too: docs/bootstrap.md). Workers 1..N-1 serve "axpy"; rank 0 calls each
 * of them with x requiring grad, checks the results and what the context recorded, releases the
 * context. Exit 0 on success, 1 on any failure (with rdag_last_error()'s text on stderr).
 */

#define LEN 16
#define MAXW 64

static atomic_int calls_in_ctx; /* calls this worker served inside a context */

static int fail(const char *what, int rc)
{
	const char *code = rdag_strerror(rc);

	fprintf(stderr, "hello_rpc: %s: %s (%s)\n", what, rdag_last_error(), code);
	return 1;
}

/* Runs on a handler thread of the callee. payload: float a; tensors: x, y (f32, 1-D, same length). */
static int axpy(void *arg, const struct rdag_caller *who, const struct rdag_msg *in, rdag_reply_t *out)
{
	const struct rdag_tensor *x = in->tensors, *y = x ? x + 1 : NULL;
	struct rdag_tensor r;
	float a, *res;
	size_t n;

	(void)arg; /* rdag_register()'s last argument: unused here */
	if (in->payload_len != sizeof(a) || in->ntensors != 2 || x->dtype != RDAG_F32 ||
	    y->dtype != RDAG_F32 || x->ndim != 1 || y->ndim != 1 || x->shape[0] != y->shape[0])
		return rdag_reply_error(out, RDAG_EINVAL, "axpy wants a float and two f32 vectors of one length");
	/* Inside a context, x (which requires grad) arrived with a recv function as its grad_fn. */
	if (who->has_context && (!x->requires_grad || x->grad_kind != RDAG_GRAD_RECV))
		return rdag_reply_error(out, RDAG_EINVAL, "x from worker %u lost its autograd edge", who->worker);
	memcpy(&a, in->payload, sizeof(a));
	n = (size_t)x->shape[0];
	res = rdag_reply_alloc(out, n * sizeof(float)); /* freed by rdag once the reply is sent */
	if (!res)
		return rdag_reply_error(out, RDAG_ENOMEM, "no memory for %zu floats", n);
	for (size_t k = 0; k < n; k++)
		res[k] = a * ((const float *)x->data)[k] + ((const float *)y->data)[k];
	rdag_tensor_init(&r, res, RDAG_F32, 1, x->shape);
	/*
	 * The result depends on x, so it requires grad too. A framework would point grad_fn at its
	 * multiply-add node, whose next edge is x's grad_fn (in C, rdag_graph_node() of rdag/graph.h
	 * makes one); this example keeps no graph and hands back x's edge itself. rdag records it in
	 * the reply's send function.
	 */
	r.requires_grad = x->requires_grad;
	r.grad_kind = x->grad_kind;
	r.grad_fn = x->grad_fn;
	if (who->has_context)
		atomic_fetch_add(&calls_in_ctx, 1);
	return rdag_reply_tensor(out, &r);
}

/*
 * A worker registers "axpy" after rdag_agent_open() returns and the API has no barrier yet, so a
 * first call may arrive too early ("Error on Node 1: worker 1 has no function 'axpy'"): retry it
 * for up to 5 s.
 */
static int wait_served(rdag_agent_t *ag, uint32_t dst, const struct rdag_msg *args)
{
	struct timespec pause = {0, 10 * 1000 * 1000};
	int rc = 0;

	for (int tries = 0; tries < 500; tries++) {
		rc = rdag_rpc_sync(ag, dst, "axpy", args, NULL, NULL); /* no context yet: plain call */
		if (rc != RDAG_EREMOTE)
			break;
		nanosleep(&pause, NULL);
	}
	return rc ? fail("first call to axpy", rc) : 0;
}

static int caller(rdag_agent_t *ag)
{
	uint32_t world = rdag_agent_world(ag);
	float x[LEN], y[LEN], a[MAXW];
	int64_t shape[1] = {LEN};
	struct rdag_tensor t[2];
	rdag_future_t *f[MAXW] = {0};
	struct rdag_msg args = {.payload_len = sizeof(float), .tensors = t, .ntensors = 2}, res;
	struct rdag_fn_info fns[MAXW];
	uint16_t known[MAXW];
	size_t nsend = 0, nrecv = 0, nknown = 0;
	uint64_t ctx;
	int rc, bad = 1;

	if (world > MAXW) {
		fprintf(stderr, "hello_rpc: this example handles up to %d workers\n", MAXW);
		return 1;
	}
	for (int k = 0; k < LEN; k++) {
		x[k] = (float)k;
		y[k] = 1000.0f + (float)k;
	}
	rdag_tensor_init(&t[0], x, RDAG_F32, 1, shape);
	rdag_tensor_init(&t[1], y, RDAG_F32, 1, shape);
	t[0].requires_grad = true;      /* x is a leaf variable; y is a constant */
	t[0].grad_kind = RDAG_GRAD_LEAF; /* grad_fn.node NULL: keyed by its data pointer */
	a[0] = 0.0f;
	args.payload = &a[0];
	for (uint32_t w = 1; w < world; w++) {
		if (wait_served(ag, w, &args))
			return 1;
	}

	if ((rc = rdag_ctx_create(ag, &ctx)) != 0)
		return fail("rdag_ctx_create", rc);
	/* Every call now carries the context. x and y must stay valid until each future completes. */
	for (uint32_t w = 1; w < world; w++) {
		a[w] = (float)w;
		args.payload = &a[w]; /* copied by the call */
		if ((rc = rdag_rpc_async(ag, w, "axpy", &args, NULL, &f[w])) != 0) {
			fail("rdag_rpc_async", rc);
			goto out;
		}
	}
	for (uint32_t w = 1; w < world; w++) {
		const float *r;

		if ((rc = rdag_future_wait(f[w], -1)) != 0 || (rc = rdag_future_result(f[w], &res)) != 0) {
			fail("axpy", rc);
			goto out;
		}
		r = res.ntensors == 1 && res.tensors[0].dtype == RDAG_F32 && res.tensors[0].shape[0] == LEN
			    ? res.tensors[0].data : NULL;
		for (int k = 0; r && k < LEN; k++) {
			if (r[k] != a[w] * x[k] + y[k])
				r = NULL;
		}
		/* The reply was recorded too: its recv function has a message id of the callee's. */
		if (!r || res.tensors[0].grad_kind != RDAG_GRAD_RECV ||
		    rdag_recv_fn_msg_id(res.tensors[0].grad_fn.node) >> 48 != w) {
			fprintf(stderr, "hello_rpc: wrong result from worker %u\n", w);
			goto out;
		}
	}
	if ((rc = rdag_ctx_send_fns(ag, ctx, fns, MAXW, &nsend)) != 0 ||
	    (rc = rdag_ctx_recv_fns(ag, ctx, fns, MAXW, &nrecv)) != 0 ||
	    (rc = rdag_ctx_known_workers(ag, ctx, known, MAXW, &nknown)) != 0) {
		fail("context introspection", rc);
		goto out;
	}
	printf("context 0x%016llx: %zu send functions, %zu recv functions, known workers:",
	       (unsigned long long)ctx, nsend, nrecv);
	for (size_t i = 0; i < nknown; i++)
		printf(" %u", known[i]);
	printf("\n");
	if (nsend != world - 1 || nrecv != world - 1 || nknown != world - 1) {
		fprintf(stderr, "hello_rpc: expected %u of each\n", world - 1);
		goto out;
	}
	bad = 0;
out:
	for (uint32_t w = 1; w < world; w++)
		rdag_future_free(f[w]); /* results were valid until here */
	if ((rc = rdag_ctx_release(ag, ctx)) != 0) /* here and on every known worker */
		bad = fail("rdag_ctx_release", rc);
	return bad;
}

int main(void)
{
	rdag_agent_t *ag;
	unsigned me;
	int rc, bad;

	setvbuf(stdout, NULL, _IOLBF, 0);
	if ((rc = rdag_agent_open(NULL, &ag)) != 0) /* rank, world, fabric: all from the environment */
		return fail("rdag_agent_open", rc);
	me = rdag_agent_id(ag);
	if (rdag_agent_world(ag) < 2) {
		fprintf(stderr, "hello_rpc: needs at least 2 workers (mpirun -np 3 ...)\n");
		bad = 1;
	} else if (me == 0) {
		bad = caller(ag);
	} else {
		bad = (rc = rdag_register(ag, "axpy", axpy, NULL)) != 0 ? fail("rdag_register", rc) : 0;
	}
	/* Collective: a worker serves calls until every worker has arrived here. */
	if ((rc = rdag_agent_close(ag)) != 0)
		bad = fail("rdag_agent_close", rc);
	if (!bad && me != 0 && atomic_load(&calls_in_ctx) != 1) {
		fprintf(stderr, "hello_rpc: worker %u served %d calls in a context, not 1\n", me,
			atomic_load(&calls_in_ctx));
		bad = 1;
	}
	if (!bad)
		printf("hello_rpc: worker %u OK\n", me);
	return bad;
}
