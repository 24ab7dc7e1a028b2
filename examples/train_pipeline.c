/* train_pipeline: pipeline-parallel training of a small MLP across N workers with distributed autograd. */
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <rdag/rdag.h>

/*
 * Usage: train_pipeline [-n workers] [-s steps] [-b batch] [-l lr]
 *
 * The model is an MLP with one layer per worker: 16 -> 64 -> ... -> 64 -> 4, tanh between the
 * layers. Worker s holds layer s (its weights are leaves there). Each step, worker 0 creates a
 * context, runs its layer on a synthetic batch and sends the activations to worker 1 by RPC;
 * worker 1 runs its layer and calls worker 2 from inside its handler, and so on; the last layer's
 * output comes back along the chain. Worker 0 computes the mean squared error against the
 * targets, runs rdag_backward on it (gradients travel back by RDMA into landing buffers), every
 * worker applies SGD to its own layer from the context's gradients, and the context is released.
 *
 * At the end worker 0 fetches every layer and compares it with a single-process run of the same
 * steps (same data, same formulas): the weights must agree within a relative 1e-12 (the two runs
 * add in the same order, so they are equal in practice; the bound allows reassociation).
 *
 * Without a launcher's environment (RDAG_RANK, RANK, OMPI_COMM_WORLD_RANK, SLURM_PROCID) it
 * forks the workers itself on this machine, over the fabric RDAG_FABRIC picks. Exit 0 on success.
 */

#define DIN 16
#define DHID 64
#define DOUT 4
#define MAXW 16

static int nw = 3, steps = 400, batch = 32;
static double lr = 0.2;

static unsigned dim(int s)            /* input width of layer s (s = nw: the output width) */
{
	return s == 0 ? DIN : s == nw ? DOUT : DHID;
}

/* ---- the math, shared by the distributed run and the reference ------------------------------ */

struct layer {
	unsigned din, dout;
	bool last;
	double *w, *b;                /* dout x din, dout */
};

static uint64_t mix(uint64_t z)
{
	z += 0x9E3779B97F4A7C15ull;
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

static double unit(uint64_t seed)    /* deterministic value in [-1, 1) */
{
	return (double)(mix(seed) >> 11) / 4503599627370496.0 - 1.0;
}

static void layer_init(struct layer *L, int s)
{
	double scale;

	L->din = dim(s);
	L->dout = dim(s + 1);
	L->last = s == nw - 1;
	L->w = malloc(sizeof(double) * L->din * L->dout);
	L->b = calloc(L->dout, sizeof(double));
	scale = 1.0 / sqrt((double)L->din);
	for (unsigned i = 0; i < L->din * L->dout; i++)
		L->w[i] = scale * unit(((uint64_t)s << 32) | i);
}

static void batch_of(int step, double *x, double *t)
{
	for (int r = 0; r < batch; r++) {
		double acc = 0;

		for (int i = 0; i < DIN; i++) {
			x[r * DIN + i] = unit(((uint64_t)(step * batch + r) << 8) | (uint64_t)i | (1ull << 62));
			acc += x[r * DIN + i] * (i % 3 - 1);
		}
		for (int k = 0; k < DOUT; k++)
			t[r * DOUT + k] = sin(acc + k);
	}
}

static void layer_fwd(const struct layer *L, const double *x, double *y)
{
	for (int r = 0; r < batch; r++)
		for (unsigned o = 0; o < L->dout; o++) {
			double z = L->b[o];

			for (unsigned i = 0; i < L->din; i++)
				z += x[r * L->din + i] * L->w[o * L->din + i];
			y[r * L->dout + o] = L->last ? z : tanh(z);
		}
}

/* Given dY, x and y: dX (may be NULL), dW, db. */
/* Writes every element of dx (when not NULL), dw and db. 0 or RDAG_ENOMEM. */
static int layer_bwd(const struct layer *L, const double *x, const double *y, const double *dy,
		     double *dx, double *dw, double *db)
{
	double *dz = malloc(sizeof(double) * (size_t)batch * L->dout);

	if (!dz)
		return RDAG_ENOMEM;
	for (int r = 0; r < batch; r++)
		for (unsigned o = 0; o < L->dout; o++) {
			double g = dy[r * L->dout + o], v = y[r * L->dout + o];

			dz[r * L->dout + o] = L->last ? g : g * (1 - v * v);
		}
	for (unsigned o = 0; o < L->dout; o++) {
		db[o] = 0;
		for (int r = 0; r < batch; r++)
			db[o] += dz[r * L->dout + o];
		for (unsigned i = 0; i < L->din; i++) {
			double s = 0;

			for (int r = 0; r < batch; r++)
				s += dz[r * L->dout + o] * x[r * L->din + i];
			dw[o * L->din + i] = s;
		}
	}
	if (dx)
		for (int r = 0; r < batch; r++)
			for (unsigned i = 0; i < L->din; i++) {
				double s = 0;

				for (unsigned o = 0; o < L->dout; o++)
					s += dz[r * L->dout + o] * L->w[o * L->din + i];
				dx[r * L->din + i] = s;
			}
	free(dz);
	return 0;
}

static double mse(const double *out, const double *t, double *dout)
{
	double l = 0, n = (double)batch * DOUT;

	for (int i = 0; i < batch * DOUT; i++) {
		double d = out[i] - t[i];

		l += d * d;
		if (dout)
			dout[i] = 2 * d / n;
	}
	return l / n;
}

static void sgd(struct layer *L, const double *dw, const double *db)
{
	for (unsigned i = 0; i < L->din * L->dout; i++)
		L->w[i] -= lr * dw[i];
	for (unsigned o = 0; o < L->dout; o++)
		L->b[o] -= lr * db[o];
}

/* ---- graph nodes ---------------------------------------------------------------------------- */

/* What a layer's backward needs, saved at forward time; freed at the step. */
struct saved {
	struct saved *next;
	const struct layer *L;
	double *x, *y;
};

static struct layer me;               /* this worker's layer */
static struct saved *saved_list;
static pthread_mutex_t saved_lock = PTHREAD_MUTEX_INITIALIZER;
static rdag_graph_t *graph;

static int layer_node_bw(void *arg, const struct rdag_tensor *go, uint32_t n_out,
			 struct rdag_tensor *gi, uint32_t n_in)
{
	struct saved *s = arg;

	(void)n_out;
	(void)n_in;
	return layer_bwd(s->L, s->x, s->y, go[0].data, gi[0].data, gi[1].data, gi[2].data);
}

static int loss_node_bw(void *arg, const struct rdag_tensor *go, uint32_t n_out,
			struct rdag_tensor *gi, uint32_t n_in)
{
	const double *dout = arg, g = *(const double *)go[0].data;

	(void)n_out;
	(void)n_in;
	for (int i = 0; i < batch * DOUT; i++)
		((double *)gi[0].data)[i] = g * dout[i];
	return 0;
}

static void mat(struct rdag_tensor *t, double *data, int64_t rows, int64_t cols)
{
	int64_t shape[2] = {rows, cols};

	rdag_tensor_init(t, data, RDAG_F64, cols ? 2 : 1, shape);
}

/* Runs this worker's layer on x (a tensor with its grad edge) into y; records the node. */
static int run_layer(const struct rdag_tensor *x, double *ydata, struct rdag_tensor *y)
{
	struct saved *s = calloc(1, sizeof(*s));
	struct rdag_tensor in[3];
	size_t xb = sizeof(double) * (size_t)batch * me.din, yb = sizeof(double) * (size_t)batch * me.dout;
	void *node;
	int rc;

	if (!s || !(s->x = malloc(xb)) || !(s->y = malloc(yb)))
		return RDAG_ENOMEM;
	s->L = &me;
	memcpy(s->x, x->data, xb);
	layer_fwd(&me, s->x, ydata);
	memcpy(s->y, ydata, yb);
	in[0] = *x;
	mat(&in[1], me.w, me.dout, me.din);
	in[1].requires_grad = true;           /* leaves: keyed by their data pointers */
	mat(&in[2], me.b, me.dout, 0);
	in[2].requires_grad = true;
	mat(y, ydata, batch, me.dout);
	rc = rdag_graph_node(graph, layer_node_bw, s, in, 3, y, 1, &node);
	if (!rc) /* layer_bwd writes every element: the engine need not zero the buffers */
		rc = rdag_graph_node_flags(node, RDAG_NODE_WRITES_ALL);
	if (rc)
		return rc;
	y->requires_grad = true;
	y->grad_kind = RDAG_GRAD_NODE;
	y->grad_fn.node = node;
	pthread_mutex_lock(&saved_lock);
	s->next = saved_list;
	saved_list = s;
	pthread_mutex_unlock(&saved_lock);
	return 0;
}

static void forget_saved(void)
{
	pthread_mutex_lock(&saved_lock);
	while (saved_list) {
		struct saved *s = saved_list;

		saved_list = s->next;
		free(s->x);
		free(s->y);
		free(s);
	}
	pthread_mutex_unlock(&saved_lock);
	rdag_graph_destroy(graph);
	rdag_graph_create(&graph);
}

/* ---- served functions ----------------------------------------------------------------------- */

static rdag_agent_t *agent;
static pthread_mutex_t done_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t done_cond = PTHREAD_COND_INITIALIZER;
static int finished;

static void free_future(void *arg)
{
	rdag_future_free(arg);
}

/* "fwd": run this layer, pass the result on to the next worker, return the last layer's output. */
static int serve_fwd(void *arg, const struct rdag_caller *who, const struct rdag_msg *in,
		     rdag_reply_t *out)
{
	uint16_t self = rdag_agent_id(agent);
	struct rdag_tensor y;
	double *ydata;
	int rc;

	(void)arg;
	if (in->ntensors != 1 || !who->has_context)
		return rdag_reply_error(out, RDAG_EINVAL, "fwd wants one tensor inside a context");
	ydata = rdag_reply_alloc(out, sizeof(double) * (size_t)batch * me.dout);
	if (!ydata)
		return rdag_reply_error(out, RDAG_ENOMEM, "out of memory");
	rc = run_layer(&in->tensors[0], ydata, &y);
	if (rc)
		return rdag_reply_error(out, rc, "layer %u: %s", self, rdag_last_error());
	if (self + 1 < nw) {
		/* Nested call, carrying the context: the output of the last layer comes back here. */
		struct rdag_msg args = {.tensors = &y, .ntensors = 1}, res;
		rdag_future_t *f;

		rc = rdag_rpc_sync(agent, self + 1u, "fwd", &args, NULL, &f);
		if (rc)
			return rdag_reply_error(out, rc, "%s", rdag_last_error());
		rdag_future_result(f, &res);
		rdag_reply_on_sent(out, free_future, f);   /* its tensor is our reply's */
		return rdag_reply_tensor(out, &res.tensors[0]);
	}
	return rdag_reply_tensor(out, &y);
}

/* "step": SGD from the gradients of the context named in the payload; forget the step's graph. */
static int serve_step(void *arg, const struct rdag_caller *who, const struct rdag_msg *in,
		      rdag_reply_t *out)
{
	struct rdag_grad g[2];
	uint64_t ctx;
	size_t n = 0;
	const double *dw = NULL, *db = NULL;

	(void)arg;
	(void)who;
	if (in->payload_len != sizeof(ctx))
		return rdag_reply_error(out, RDAG_EINVAL, "step wants a context id");
	memcpy(&ctx, in->payload, sizeof(ctx));
	if (rdag_ctx_grads(agent, ctx, g, 2, &n) || n != 2)
		return rdag_reply_error(out, RDAG_EINVAL, "context %#llx holds %zu gradients here, not 2",
					(unsigned long long)ctx, n);
	for (size_t i = 0; i < n; i++) {
		if (g[i].var == me.w)
			dw = g[i].grad.data;
		else if (g[i].var == me.b)
			db = g[i].grad.data;
	}
	if (!dw || !db)
		return rdag_reply_error(out, RDAG_EINVAL, "gradients of other variables");
	sgd(&me, dw, db);
	forget_saved();
	return 0;
}

/* "weights": this layer's parameters, W then b. */
static int serve_weights(void *arg, const struct rdag_caller *who, const struct rdag_msg *in,
			 rdag_reply_t *out)
{
	struct rdag_tensor w, b;

	(void)arg, (void)who, (void)in;
	mat(&w, me.w, me.dout, me.din);
	mat(&b, me.b, me.dout, 0);
	if (rdag_reply_tensor(out, &w) || rdag_reply_tensor(out, &b))
		return rdag_reply_error(out, RDAG_EINVAL, "%s", rdag_last_error());
	return 0;
}

static int serve_finish(void *arg, const struct rdag_caller *who, const struct rdag_msg *in,
			rdag_reply_t *out)
{
	(void)arg, (void)who, (void)in, (void)out;
	pthread_mutex_lock(&done_lock);
	finished = 1;
	pthread_cond_signal(&done_cond);
	pthread_mutex_unlock(&done_lock);
	return 0;
}

/* ---- worker 0: the training loop and the check ---------------------------------------------- */

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

#define TRY(call)                                                                                 \
	do {                                                                                      \
		int rc_ = (call);                                                                 \
		if (rc_) {                                                                        \
			fprintf(stderr, "train_pipeline: %s: %s: %s\n", #call, rdag_strerror(rc_),  \
				rdag_last_error());                                               \
			return 1;                                                                 \
		}                                                                                 \
	} while (0)

/* Calls fn on every other worker until it is registered there (workers start at their own pace). */
static int wait_for_workers(void)
{
	for (uint32_t w = 1; w < (uint32_t)nw; w++) {
		double end = now_s() + 60;
		int rc;

		while ((rc = rdag_rpc_sync(agent, w, "weights", NULL, NULL, NULL)) != 0) {
			if (rc != RDAG_EREMOTE || now_s() > end) {
				fprintf(stderr, "train_pipeline: worker %u: %s\n", w, rdag_last_error());
				return 1;
			}
		}
	}
	return 0;
}

static int leader(void)
{
	double *x = malloc(sizeof(double) * (size_t)batch * DIN), *t = malloc(sizeof(double) * (size_t)batch * DOUT);
	double *h = malloc(sizeof(double) * (size_t)batch * DHID), *dout = malloc(sizeof(double) * (size_t)batch * DOUT);
	struct layer ref[MAXW];
	double t0 = now_s(), bytes_step = 0, worst = 0;
	int bad = 0;

	if (wait_for_workers())
		return 1;
	/* Tensor bytes one step moves: activations forward, the last output back along the chain,
	 * and the same again as gradients during backward. */
	for (int s = 1; s < nw; s++)
		bytes_step += 8.0 * batch * (dim(s) + DOUT);
	bytes_step *= 2;
	for (int step = 0; step < steps; step++) {
		struct rdag_tensor xt, ht, lt;
		struct rdag_msg args = {.tensors = &ht, .ntensors = 1}, res;
		rdag_future_t *f;
		uint64_t ctx;
		double loss;
		void *node;

		batch_of(step, x, t);
		TRY(rdag_ctx_create(agent, &ctx));
		mat(&xt, x, batch, DIN);              /* the data: no gradient */
		TRY(run_layer(&xt, h, &ht));
		TRY(rdag_rpc_sync(agent, 1, "fwd", &args, NULL, &f));
		TRY(rdag_future_result(f, &res));
		loss = mse(res.tensors[0].data, t, dout);
		rdag_tensor_init(&lt, &loss, RDAG_F64, 0, NULL);
		TRY(rdag_graph_node(graph, loss_node_bw, dout, &res.tensors[0], 1, &lt, 1, &node));
		TRY(rdag_graph_node_flags(node, RDAG_NODE_WRITES_ALL));
		lt.requires_grad = true;
		lt.grad_kind = RDAG_GRAD_NODE;
		lt.grad_fn.node = node;
		TRY(rdag_backward(agent, ctx, &lt, 1, false));
		rdag_future_free(f);
		{
			/* Every worker steps its own layer (plain calls: no autograd around them). */
			struct rdag_msg sp = {.payload = &ctx, .payload_len = sizeof(ctx)};
			struct rdag_call_opts plain = {.flags = RDAG_CALL_PLAIN};

			for (uint32_t w = 0; w < (uint32_t)nw; w++)
				TRY(rdag_rpc_sync(agent, w, "step", &sp, &plain, NULL));
		}
		TRY(rdag_ctx_release(agent, ctx));
		if (step % 20 == 0 || step == steps - 1) {
			double el = now_s() - t0;

			printf("step %4d  loss %.6f  %.1f steps/s  %.2f MB of tensors moved\n", step, loss,
			       (step + 1) / el, bytes_step * (step + 1) / 1e6);
		}
	}
	/* The same steps in one process, then the layers compared. */
	for (int s = 0; s < nw; s++)
		layer_init(&ref[s], s);
	{
		double *act[MAXW + 1], *grad[MAXW + 1];

		act[0] = x;
		for (int s = 0; s < nw; s++) {
			act[s + 1] = malloc(sizeof(double) * (size_t)batch * dim(s + 1));
			grad[s + 1] = malloc(sizeof(double) * (size_t)batch * dim(s + 1));
		}
		for (int step = 0; step < steps; step++) {
			batch_of(step, x, t);
			for (int s = 0; s < nw; s++)
				layer_fwd(&ref[s], act[s], act[s + 1]);
			mse(act[nw], t, grad[nw]);
			for (int s = nw - 1; s >= 0; s--) {
				double *dw = malloc(sizeof(double) * ref[s].din * ref[s].dout);
				double *db = malloc(sizeof(double) * ref[s].dout);

				TRY(dw && db ? layer_bwd(&ref[s], act[s], act[s + 1], grad[s + 1],
							 s ? grad[s] : NULL, dw, db)
					     : RDAG_ENOMEM);
				sgd(&ref[s], dw, db);
				free(dw);
				free(db);
			}
		}
	}
	for (int s = 0; s < nw; s++) {
		struct rdag_msg res;
		rdag_future_t *f;
		const double *w, *b;

		TRY(rdag_rpc_sync(agent, (uint32_t)s, "weights", NULL, NULL, &f));
		TRY(rdag_future_result(f, &res));
		w = res.tensors[0].data;
		b = res.tensors[1].data;
		for (unsigned i = 0; i < ref[s].din * ref[s].dout; i++) {
			double e = fabs(w[i] - ref[s].w[i]) / (fabs(ref[s].w[i]) + 1e-30);

			worst = e > worst ? e : worst;
		}
		for (unsigned o = 0; o < ref[s].dout; o++) {
			double e = fabs(b[o] - ref[s].b[o]) / (fabs(ref[s].b[o]) + 1e-30);

			worst = e > worst ? e : worst;
		}
		rdag_future_free(f);
	}
	bad = worst > 1e-12;
	printf("final weights vs a single-process run of the same %d steps: largest relative "
	       "difference %.3g (bound 1e-12): %s\n", steps, worst, bad ? "MISMATCH" : "equal");
	return bad;
}

static int worker(const struct rdag_agent_opts *o)
{
	int rc = rdag_agent_open(o, &agent), ret;

	if (rc) {
		fprintf(stderr, "train_pipeline: rdag_agent_open: %s: %s\n", rdag_strerror(rc),
			rdag_last_error());
		return rc == RDAG_ENODEV ? 77 : 1;
	}
	nw = (int)rdag_agent_world(agent);
	if (nw < 2 || nw > MAXW) {
		fprintf(stderr, "train_pipeline: needs 2..%d workers\n", MAXW);
		rdag_agent_close(agent);
		return 1;
	}
	rdag_graph_create(&graph);
	layer_init(&me, rdag_agent_id(agent));
	if (rdag_register(agent, "fwd", serve_fwd, NULL) || rdag_register(agent, "step", serve_step, NULL) ||
	    rdag_register(agent, "weights", serve_weights, NULL) ||
	    rdag_register(agent, "finish", serve_finish, NULL)) {
		fprintf(stderr, "train_pipeline: register: %s\n", rdag_last_error());
		return 1;
	}
	if (rdag_agent_id(agent) == 0) {
		printf("train_pipeline: %d workers, MLP %d", nw, DIN);
		for (int s = 1; s <= nw; s++)
			printf("-%u", dim(s));
		printf(", batch %d, %d steps, lr %g\n", batch, steps, lr);
		ret = leader();
		/* Whatever happened, let the others go. */
		for (uint32_t w = 1; w < (uint32_t)nw; w++)
			if (rdag_rpc_sync(agent, w, "finish", NULL, NULL, NULL))
				fprintf(stderr, "train_pipeline: finish on worker %u: %s\n", w,
					rdag_last_error());
	} else {
		pthread_mutex_lock(&done_lock);
		while (!finished)
			pthread_cond_wait(&done_cond, &done_lock);
		pthread_mutex_unlock(&done_lock);
		ret = 0;
	}
	rc = rdag_agent_close(agent);
	if (rc && !ret) {
		fprintf(stderr, "train_pipeline: close: %s\n", rdag_last_error());
		ret = 1;
	}
	forget_saved();
	rdag_graph_destroy(graph);
	free(me.w);
	free(me.b);
	return ret;
}

static int launched(void)
{
	static const char *vars[] = {"RDAG_RANK", "RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID"};

	for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++)
		if (getenv(vars[i]))
			return 1;
	return 0;
}

int main(int argc, char **argv)
{
	struct rdag_agent_opts o;
	struct sockaddr_in sa;
	socklen_t sl = sizeof(sa);
	pid_t pids[MAXW];
	char token[64];
	int c, fd, ret = 0;

	while ((c = getopt(argc, argv, "n:s:b:l:")) != -1) {
		switch (c) {
		case 'n': nw = atoi(optarg); break;
		case 's': steps = atoi(optarg); break;
		case 'b': batch = atoi(optarg); break;
		case 'l': lr = atof(optarg); break;
		default:
			fprintf(stderr, "usage: %s [-n workers] [-s steps] [-b batch] [-l lr]\n", argv[0]);
			return 2;
		}
	}
	if (nw < 2 || nw > MAXW || steps < 1 || batch < 1) {
		fprintf(stderr, "%s: 2..%d workers, at least one step and one sample\n", argv[0], MAXW);
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	rdag_agent_opts_init(&o);
	if (launched())
		return worker(&o);     /* mpirun / srun / torchrun: one worker per process */
	/* Otherwise: N processes on this machine, meeting at a port the kernel picks. */
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) || listen(fd, 64) ||
	    getsockname(fd, (struct sockaddr *)&sa, &sl)) {
		perror("train_pipeline: socket");
		return 1;
	}
	snprintf(token, sizeof(token), "train-pipeline-%d", (int)getpid());
	o.world_size = nw;
	o.master_addr = "127.0.0.1";
	o.master_port = ntohs(sa.sin_port);
	o.job_token = token;
	o.local_only = 1;
	for (int r = 0; r < nw; r++) {
		pids[r] = fork();
		if (pids[r] < 0) {
			perror("fork");
			return 1;
		}
		if (pids[r] == 0) {
			o.rank = r;
			o.listen_fd = r == 0 ? fd : -1;
			if (r)
				close(fd);
			exit(worker(&o));
		}
	}
	close(fd);
	for (int r = 0; r < nw; r++) {
		int st;

		if (waitpid(pids[r], &st, 0) != pids[r] || !WIFEXITED(st) || WEXITSTATUS(st)) {
			fprintf(stderr, "train_pipeline: worker %d failed\n", r);
			ret = ret ? ret : (WIFEXITED(st) && WEXITSTATUS(st) == 77 ? 77 : 1);
			for (int k = 0; k < nw; k++)
				if (k != r)
					kill(pids[k], SIGTERM);
		}
	}
	return ret;
}
