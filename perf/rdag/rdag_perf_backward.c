/* rdag_perf_backward: distributed backward along a chain of workers, and the fan-in rate of gradient requests. */
#include <errno.h>
#include <glob.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <rdag/rdag.h>

#include "raw_common.h" /* raw_parse_size */

/*
 * Only the public API (include/rdag/rdag.h). The tool forks its W workers itself on this host
 * (as examples/train_pipeline does), or runs as one worker under a launcher (RDAG_RANK, ...).
 *
 * Chain mode (default). Each iteration, worker 0 creates a context and sends G f32 tensors of S
 * bytes to worker 1 by RPC; worker k records a node (identity or scale) on them and calls worker
 * k+1 with its outputs from inside its handler (nested RPCs, carrying the context), up to worker
 * W-1, which also records a sum node and answers with the resulting scalar; the scalar comes back
 * along the chain as each call's result. Worker 0 records a loss node on it and times
 * rdag_backward() alone (context creation, the forward and the release are outside the timed
 * window). What the pass does, on the wire:
 *   - down: the loss gradient (one f32 scalar) goes 0 -> 1 -> ... -> W-1, one request per hop
 *     (the send functions of the forward replies);
 *   - up: worker W-1 runs its sum and op nodes, then each worker k sends the G gradients of S
 *     bytes of its inputs to worker k-1 in one request, which runs its op node and passes them
 *     on; worker 0's gradients land in its leaves (the context);
 *   - answers: each request is answered once its part and everything it triggered are done, so
 *     2 (W-1) answers come back in the reverse order.
 * So 4 (W-1) messages one after the other, (W-1) of them carrying G * S bytes of gradients.
 *
 * Rate mode (-M). Workers 1..W-1 are senders: each makes -K calls to worker 0 inside one context
 * (worker 0 answers each with an S-byte tensor that requires grad, a leaf there), records a node
 * summing the K results, then runs -w + -n backward passes with retain_graph: each pass sends K
 * gradient requests of S bytes at once to worker 0's send functions, where they are served
 * concurrently (the leaf's gradient accumulates in worker 0's copy of the context). The senders
 * start their timed passes together (a barrier through worker 0); worker 0 reports the requests
 * it absorbed divided by the time from the first sender's start to the last one's end.
 *
 * Output (worker 0, stdout): header lines, then one row per size:
 *   chain: #bytes #iterations t_min t_typical t_max t_avg p99 (µs, of the backward pass) #moved
 *          (gradient bytes the pass moves: (W-1) * G * S);
 *   rate:  #bytes #requests MB/s Mpps (raw_ofi_bw's columns; MB = 2^20).
 * -D adds, per size, the medians of where the chain's time goes (node callbacks time-stamp into
 * memory shared by the forked workers).
 *
 * Exit status: 0 ok, 1 failure, 2 usage, 77 the fabric is not available here.
 */

#define EXIT_FAIL 1
#define EXIT_USAGE 2
#define EXIT_SKIP 77

#define MAXW 4
#define MAXG 64
#define MAXK 1024
#define MIN_SIZE ((size_t)4 << 10)     /* -a: 4 KiB .. -S (default 64 MiB), powers of 4 */
#define MAX_SIZE ((size_t)64 << 20)
#define SWEEP_BYTES ((size_t)1 << 30)  /* -a: gradient bytes per size, at most */
#define SWEEP_MIN_ITERS 8
#define SCALE 0.5f

enum op { OP_IDENTITY, OP_SCALE, OP_PASS };

static struct opts {
	const char *tool;
	int nw;                  /* -W */
	size_t size;             /* -s */
	int size_given;
	int all;                 /* -a */
	size_t max_size;         /* -S */
	long iters;              /* -n */
	long warmup;             /* -w */
	int ngrad;               /* -G */
	enum op op;              /* -o */
	int rate;                /* -M */
	int k;                   /* -K */
	const char *provider;    /* -P */
	const char *device;      /* -d */
	int cpus[8], ncpus;      /* -c */
	int timeout_s;           /* -T */
	int check;               /* -C */
	int detail;              /* -D */
	int zeroed;              /* -Z: nodes get zeroed input-gradient buffers (no RDAG_NODE_WRITES_ALL) */
} O = {
	.nw = 4, .size = (size_t)1 << 20, .max_size = MAX_SIZE, .iters = 100, .warmup = 10,
	.ngrad = 1, .op = OP_IDENTITY, .k = 16, .timeout_s = 120,
};

static rdag_agent_t *agent;
static uint16_t me;

/* ---- small helpers -------------------------------------------------------------------------- */

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int failed(const char *what, int rc)
{
	fprintf(stderr, "%s: worker %u: %s: %s (%s)\n", O.tool, me, what, rdag_last_error(),
		rdag_strerror(rc));
	return EXIT_FAIL;
}

#define TRY(call)                                                                                 \
	do {                                                                                      \
		int rc_ = (call);                                                                 \
		if (rc_)                                                                          \
			return failed(#call, rc_);                                                \
	} while (0)

static void vec(struct rdag_tensor *t, void *data, size_t bytes)
{
	int64_t n = (int64_t)(bytes / sizeof(float));

	rdag_tensor_init(t, data, RDAG_F32, 1, &n);
}

static void scalar(struct rdag_tensor *t, float *data)
{
	rdag_tensor_init(t, data, RDAG_F32, 0, NULL);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static double med_ns(uint64_t *v, long n)
{
	qsort(v, (size_t)n, sizeof(*v), cmp_u64);
	return (double)v[n / 2];
}

/* ---- time stamps for -D (memory shared by the forked workers) -------------------------------- */

enum { EV_FIRST, EV_OP_START, EV_OP_END, EV_N };

static _Atomic uint64_t (*stamps)[EV_N];   /* [worker][event], NULL without -D */

static void stamp(int ev)
{
	if (stamps)
		atomic_store_explicit(&stamps[me][ev], now_ns(), memory_order_release);
}

static void stamp_first(void)
{
	uint64_t zero = 0;

	if (stamps)
		atomic_compare_exchange_strong(&stamps[me][EV_FIRST], &zero, now_ns());
}

/* ---- the graph: node callbacks -------------------------------------------------------------- */

static pthread_mutex_t graph_lock = PTHREAD_MUTEX_INITIALIZER;
static rdag_graph_t *graph;
static uint64_t graph_ctx = UINT64_MAX;    /* context whose nodes graph holds */

/* The graph for context ctx: a new one when ctx changes (the previous pass is over by then). */
static rdag_graph_t *graph_for(uint64_t ctx)
{
	rdag_graph_t *g;

	pthread_mutex_lock(&graph_lock);
	if (ctx != graph_ctx) {
		rdag_graph_destroy(graph);
		graph = NULL;
		if (rdag_graph_create(&graph) == 0)
			graph_ctx = ctx;
	}
	g = graph;
	pthread_mutex_unlock(&graph_lock);
	return g;
}

/* identity / scale, elementwise on each of its n tensors */
static int op_bw(void *arg, const struct rdag_tensor *go, uint32_t n_out, struct rdag_tensor *gi,
		 uint32_t n_in)
{
	stamp_first();
	stamp(EV_OP_START);
	for (uint32_t i = 0; i < n_in && i < n_out; i++) {
		size_t nb = rdag_tensor_nbytes(&gi[i]);

		if (!gi[i].data)
			continue;
		if (O.op == OP_IDENTITY) {
			memcpy(gi[i].data, go[i].data, nb);
		} else {
			const float *s = go[i].data;
			float *d = gi[i].data;

			for (size_t j = 0; j < nb / sizeof(float); j++)
				d[j] = SCALE * s[j];
		}
	}
	stamp(EV_OP_END);
	return 0;
}

/* sum of all elements of its inputs: every input element gets the scalar's gradient */
static int sum_bw(void *arg, const struct rdag_tensor *go, uint32_t n_out, struct rdag_tensor *gi,
		  uint32_t n_in)
{
	float g = *(const float *)go[0].data;

	stamp_first();
	for (uint32_t i = 0; i < n_in; i++) {
		float *d = gi[i].data;
		size_t n = rdag_tensor_nbytes(&gi[i]) / sizeof(float);

		if (d)
			for (size_t j = 0; j < n; j++)
				d[j] = g;
	}
	return 0;
}

/* worker 0's loss = the scalar that came back */
static int loss_bw(void *arg, const struct rdag_tensor *go, uint32_t n_out, struct rdag_tensor *gi,
		   uint32_t n_in)
{
	*(float *)gi[0].data = *(const float *)go[0].data;
	return 0;
}

/* Records an op node over in[0..n) (outputs alias the inputs' data: forward values do not matter). */
static int record_op(rdag_graph_t *g, const struct rdag_tensor *in, uint32_t n, struct rdag_tensor *out)
{
	void *node;
	int rc;

	for (uint32_t i = 0; i < n; i++) {
		out[i] = in[i];
		out[i].requires_grad = false;
		out[i].grad_kind = RDAG_GRAD_NONE;
		memset(&out[i].grad_fn, 0, sizeof(out[i].grad_fn));
	}
	rc = rdag_graph_node(g, op_bw, NULL, in, n, out, n, &node);
	if (!rc && O.op == OP_PASS)
		rc = rdag_graph_node_flags(node, RDAG_NODE_IDENTITY); /* op_bw is never called */
	else if (!rc && !O.zeroed)
		rc = rdag_graph_node_flags(node, RDAG_NODE_WRITES_ALL); /* op_bw fills every byte */
	if (rc)
		return rc;
	for (uint32_t i = 0; i < n; i++) {
		out[i].requires_grad = true;
		out[i].grad_kind = RDAG_GRAD_NODE;
		out[i].grad_fn.node = node;
		out[i].grad_fn.input_nr = i;
	}
	return 0;
}

/* Records a node producing scalar *s from in[0..n) (sum) and makes *s require grad through it. */
static int record_sum(rdag_graph_t *g, rdag_node_fn fn, const struct rdag_tensor *in, uint32_t n,
		      float *data, struct rdag_tensor *s)
{
	void *node;
	int rc;

	*data = 0;
	scalar(s, data);
	rc = rdag_graph_node(g, fn, NULL, in, n, s, 1, &node);
	if (!rc && !O.zeroed)
		rc = rdag_graph_node_flags(node, RDAG_NODE_WRITES_ALL); /* sum_bw, loss_bw fill all */
	if (rc)
		return rc;
	s->requires_grad = true;
	s->grad_kind = RDAG_GRAD_NODE;
	s->grad_fn.node = node;
	s->grad_fn.input_nr = 0;
	return 0;
}

/* ---- served functions ----------------------------------------------------------------------- */

static pthread_mutex_t done_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t done_cond = PTHREAD_COND_INITIALIZER;
static int finished;

static void free_future(void *arg)
{
	rdag_future_free(arg);
}

/* "fwd" (chain, workers 1..W-1): op node, then the next worker, or the sum node at the end. */
static int serve_fwd(void *arg, const struct rdag_caller *who, const struct rdag_msg *in,
		     rdag_reply_t *out)
{
	struct rdag_tensor y[MAXG], s;
	rdag_graph_t *g;
	int rc;

	if (!who->has_context || in->ntensors == 0 || in->ntensors > MAXG)
		return rdag_reply_error(out, RDAG_EINVAL, "fwd wants 1..%d tensors inside a context", MAXG);
	for (uint32_t i = 0; i < in->ntensors; i++)
		if (in->tensors[i].grad_kind != RDAG_GRAD_RECV)
			return rdag_reply_error(out, RDAG_EINVAL, "tensor %u from worker %u lost its "
						"autograd edge", i, who->worker);
	g = graph_for(who->context_id);
	if (!g)
		return rdag_reply_error(out, RDAG_ENOMEM, "no graph");
	rc = record_op(g, in->tensors, in->ntensors, y);
	if (rc)
		return rdag_reply_error(out, rc, "%s", rdag_last_error());
	if (me + 1u < (unsigned)O.nw) {
		struct rdag_msg args = {.tensors = y, .ntensors = in->ntensors}, res;
		rdag_future_t *f;

		rc = rdag_rpc_sync(agent, me + 1u, "fwd", &args, NULL, &f);
		if (rc)
			return rdag_reply_error(out, rc, "%s", rdag_last_error());
		rdag_future_result(f, &res);
		rdag_reply_on_sent(out, free_future, f);   /* its tensor is our reply's */
		return rdag_reply_tensor(out, &res.tensors[0]);
	}
	{
		float *data = rdag_reply_alloc(out, sizeof(float));

		if (!data)
			return rdag_reply_error(out, RDAG_ENOMEM, "out of memory");
		rc = record_sum(g, sum_bw, y, in->ntensors, data, &s);
		if (rc)
			return rdag_reply_error(out, rc, "%s", rdag_last_error());
		return rdag_reply_tensor(out, &s);
	}
}

static int serve_finish(void *arg, const struct rdag_caller *who, const struct rdag_msg *in,
			rdag_reply_t *out)
{
	pthread_mutex_lock(&done_lock);
	finished = 1;
	pthread_cond_broadcast(&done_cond);
	pthread_mutex_unlock(&done_lock);
	return 0;
}

/* Rate mode, worker 0: the leaf every sender's gradients land in, the barrier, the reports. */
static float *leaf;
static atomic_int arrived[2];
static struct report {
	uint64_t t0, t1, requests;
} reports[MAXW];
static int nreports, check_failures;

static int serve_give(void *arg, const struct rdag_caller *who, const struct rdag_msg *in,
		      rdag_reply_t *out)
{
	struct rdag_tensor t;

	vec(&t, leaf, O.size);
	t.requires_grad = true;
	/* requires grad with no grad_fn: a leaf, keyed by its data pointer */
	return rdag_reply_tensor(out, &t);
}

static int serve_arrive(void *arg, const struct rdag_caller *who, const struct rdag_msg *in,
			rdag_reply_t *out)
{
	int phase, n;

	if (in->payload_len != sizeof(phase))
		return rdag_reply_error(out, RDAG_EINVAL, "arrive wants a phase");
	memcpy(&phase, in->payload, sizeof(phase));
	if (phase < 0 || phase > 1)
		return rdag_reply_error(out, RDAG_EINVAL, "no phase %d", phase);
	n = atomic_fetch_add(&arrived[phase], 1) + 1;
	return rdag_reply_payload(out, &n, sizeof(n));
}

static int serve_count(void *arg, const struct rdag_caller *who, const struct rdag_msg *in,
		       rdag_reply_t *out)
{
	int phase, n;

	if (in->payload_len != sizeof(phase))
		return rdag_reply_error(out, RDAG_EINVAL, "count wants a phase");
	memcpy(&phase, in->payload, sizeof(phase));
	if (phase < 0 || phase > 1)
		return rdag_reply_error(out, RDAG_EINVAL, "no phase %d", phase);
	n = atomic_load(&arrived[phase]);
	return rdag_reply_payload(out, &n, sizeof(n));
}

/* "report" (inside the sender's context, after its passes): times, and with -C the leaf's gradient. */
static int serve_report(void *arg, const struct rdag_caller *who, const struct rdag_msg *in,
			rdag_reply_t *out)
{
	struct report r;
	int bad = 0;

	if (in->payload_len != sizeof(r))
		return rdag_reply_error(out, RDAG_EINVAL, "report wants times");
	memcpy(&r, in->payload, sizeof(r));
	if (O.check && who->has_context) {
		/* every pass added 1 to each element, K times */
		float want = (float)((O.warmup + O.iters) * O.k);
		struct rdag_grad gr[2];
		size_t n = 0;
		int rc = rdag_ctx_grads(agent, who->context_id, gr, 2, &n);

		if (rc || n != 1 || rdag_tensor_nbytes(&gr[0].grad) != O.size) {
			bad = 1;
		} else {
			const float *d = gr[0].grad.data;

			for (size_t j = 0; j < O.size / sizeof(float); j++)
				if (d[j] != want) {
					bad = 1;
					break;
				}
		}
		if (bad)
			fprintf(stderr, "%s: worker 0: the gradient from worker %u is wrong (want %g, "
				"%zu gradients)\n", O.tool, who->worker, (double)want, n);
	}
	pthread_mutex_lock(&done_lock);
	if (who->worker < MAXW)
		reports[who->worker] = r;
	nreports++;
	check_failures += bad;
	pthread_cond_broadcast(&done_cond);
	pthread_mutex_unlock(&done_lock);
	return 0;
}

/* Calls "count" on worker w until it is registered there (workers start at their own pace). */
static int wait_for(uint32_t w)
{
	uint64_t end = now_ns() + (uint64_t)O.timeout_s * 1000000000u;
	struct rdag_call_opts plain = {.flags = RDAG_CALL_PLAIN};
	int phase = 1, rc;
	struct rdag_msg m = {.payload = &phase, .payload_len = sizeof(phase)};

	while ((rc = rdag_rpc_sync(agent, w, "count", &m, &plain, NULL)) != 0)
		if (rc != RDAG_EREMOTE || now_ns() > end)
			return failed("waiting for the workers", rc);
	return 0;
}

/* ---- worker 0, chain mode ------------------------------------------------------------------- */

static size_t first_size(void)
{
	return O.all ? MIN_SIZE : O.size;
}

static size_t next_size(size_t s)
{
	return O.all && s * 4 <= O.max_size ? s * 4 : 0;
}

static long iters_for(size_t s, long *warm)
{
	long n = O.iters, w;

	if (O.all) {
		long cap = (long)(SWEEP_BYTES / (s * (size_t)O.ngrad * (size_t)(O.nw - 1)));

		if (cap < SWEEP_MIN_ITERS)
			cap = SWEEP_MIN_ITERS;
		if (n > cap)
			n = cap;
	}
	w = n / 4 < 1 ? 1 : n / 4;
	*warm = O.warmup < w ? O.warmup : w;
	return n;
}

static void header(void)
{
	const char *f = getenv("RDAG_FABRIC"), *p = getenv("RDAG_OFI_PROVIDER");

	puts("---------------------------------------------------------------------------------------");
	printf(" %-22s: %s\n", "test", O.rate ? "fan-in rate of gradient requests" : "distributed backward, chain");
	printf(" %-22s: %s%s%s\n", "fabric", f ? f : "auto", p ? ", provider " : "", p ? p : "");
	if (O.device)
		printf(" %-22s: %s\n", "device", O.device);
	if (O.rate) {
		printf(" %-22s: %d senders (workers 1..%d) -> worker 0\n", "workers", O.nw - 1, O.nw - 1);
		printf(" %-22s: %d gradient requests of %zu B per pass (retain_graph), %ld passes "
		       "after %ld warm-up\n", "passes", O.k, O.size, O.iters, O.warmup);
	} else {
		printf(" %-22s: %d (0 -> ... -> %d by nested RPCs)\n", "workers", O.nw, O.nw - 1);
		printf(" %-22s: %d f32 tensor%s of -s bytes per hop, node %s\n", "gradients", O.ngrad,
		       O.ngrad > 1 ? "s" : "", O.op == OP_IDENTITY ? "identity" : O.op == OP_SCALE ? "scale" : "pass");
		printf(" %-22s: rdag_backward() on worker 0; %d messages in series: %d scalar "
		       "requests down, %d gradient requests up, %d answers\n", "timed", 4 * (O.nw - 1),
		       O.nw - 1, O.nw - 1, 2 * (O.nw - 1));
		if (O.all)
			printf(" %-22s: %zu B .. %zu B, powers of 4\n", "sizes", first_size(), O.max_size);
		printf(" %-22s: %ld per size%s, after up to %ld warm-up\n", "iterations", O.iters,
		       O.all ? " (capped for large sizes)" : "", O.warmup);
	}
	if (O.ncpus) {
		printf(" %-22s: worker r on CPU", "cpus");
		for (int i = 0; i < O.ncpus; i++)
			printf("%s%d", i ? "," : " ", O.cpus[i]);
		printf(" [r mod %d]\n", O.ncpus);
	} else {
		printf(" %-22s: not pinned (-c to pin)\n", "cpus");
	}
	printf(" %-22s: %s\n", "check", O.check ? "gradients checked (-C)" : "off");
	puts("---------------------------------------------------------------------------------------");
}

/*
 * -D: one row per pass, in the order the pass goes: the scalar's way down (to worker W-1's first
 * node); on worker W-1 from that node to its op node's start (sum node, the engine's buffers);
 * each op node; for each hop k -> k-1, from the end of worker k's op node to the start of worker
 * k-1's (the local pass's recv sink, the request, the transfer, the engine's buffers there);
 * last, from worker 0's op node to the end of rdag_backward (its leaves, then the answers).
 */
#define NDETAIL (2 * MAXW + 2)

static char detail_label[NDETAIL][32];

static int detail_row(uint64_t *row, uint64_t t0, uint64_t t1)
{
	uint64_t prev = t0;
	int c = 0;

	for (int w = O.nw - 1; w >= 0; w--) {
		uint64_t first = atomic_load_explicit(&stamps[w][EV_FIRST], memory_order_acquire);
		uint64_t os = atomic_load_explicit(&stamps[w][EV_OP_START], memory_order_acquire);
		uint64_t oe = atomic_load_explicit(&stamps[w][EV_OP_END], memory_order_acquire);

		if (w == O.nw - 1) {
			snprintf(detail_label[c], sizeof(detail_label[c]), "down");
			row[c++] = first - prev;
			snprintf(detail_label[c], sizeof(detail_label[c]), "w%d sum", w);
			row[c++] = os - first;
		} else {
			snprintf(detail_label[c], sizeof(detail_label[c]), "hop %d->%d", w + 1, w);
			row[c++] = os - prev;
		}
		snprintf(detail_label[c], sizeof(detail_label[c]), "w%d node", w);
		row[c++] = oe - os;
		prev = oe;
	}
	snprintf(detail_label[c], sizeof(detail_label[c]), "leaves+answers");
	row[c++] = t1 - prev;
	return c;
}

static void print_detail(size_t s, uint64_t (*d)[NDETAIL], long n, int ncol)
{
	uint64_t *col = malloc(sizeof(*col) * (size_t)n);

	if (!col)
		return;
	printf("# breakdown of %zu B, medians in us:", s);
	for (int c = 0; c < ncol; c++) {
		for (long i = 0; i < n; i++)
			col[i] = d[i][c];
		printf("%s %s %.1f", c ? " |" : "", detail_label[c], med_ns(col, n) / 1000.0);
	}
	printf("\n");
	free(col);
}

static int chain_size(size_t s)
{
	long warm, n = iters_for(s, &warm), total;
	uint32_t ng = (uint32_t)O.ngrad;
	float *x[MAXG];
	uint64_t *t = calloc((size_t)n, sizeof(*t));
	uint64_t (*d)[NDETAIL] = O.detail ? calloc((size_t)n, sizeof(*d)) : NULL;
	float want = 1.0f;
	int ncol = 0;
	double sum = 0;
	long p99;
	int ret = EXIT_FAIL;

	memset(x, 0, sizeof(x));
	if (!t || (O.detail && !d))
		goto out;
	for (int k = 0; k < O.nw; k++)
		want *= O.op == OP_SCALE ? SCALE : 1.0f;
	for (uint32_t i = 0; i < ng; i++) {
		if (posix_memalign((void **)&x[i], 64, s))
			goto out;
		for (size_t j = 0; j < s / sizeof(float); j++)
			x[i][j] = 1.0f;
	}
	total = warm + n;
	for (long it = 0; it < total; it++) {
		struct rdag_tensor xt[MAXG], y[MAXG], lt;
		struct rdag_msg args = {.tensors = y, .ntensors = ng}, res;
		rdag_future_t *f;
		rdag_graph_t *g;
		uint64_t ctx, t0, t1;
		float loss;

		alarm((unsigned)O.timeout_s);
		TRY(rdag_ctx_create(agent, &ctx));
		g = graph_for(ctx);
		if (!g)
			goto out;
		for (uint32_t i = 0; i < ng; i++) {
			vec(&xt[i], x[i], s);
			xt[i].requires_grad = true;     /* leaves, keyed by their data pointers */
		}
		if (stamps)
			for (int w = 0; w < O.nw; w++)
				for (int e = 0; e < EV_N; e++)
					atomic_store(&stamps[w][e], 0);
		TRY(record_op(g, xt, ng, y));
		TRY(rdag_rpc_sync(agent, 1, "fwd", &args, NULL, &f));
		TRY(rdag_future_result(f, &res));
		if (res.ntensors != 1 || res.tensors[0].grad_kind != RDAG_GRAD_RECV) {
			fprintf(stderr, "%s: the chain's result is not a scalar with autograd\n", O.tool);
			goto out;
		}
		TRY(record_sum(g, loss_bw, &res.tensors[0], 1, &loss, &lt));
		t0 = now_ns();
		TRY(rdag_backward(agent, ctx, &lt, 1, false));
		t1 = now_ns();
		if (it >= warm)
			t[it - warm] = t1 - t0;
		if (d && it >= warm)
			ncol = detail_row(d[it - warm], t0, t1);
		if (O.check) {
			struct rdag_grad gr[MAXG];
			size_t ngot = 0;

			TRY(rdag_ctx_grads(agent, ctx, gr, MAXG, &ngot));
			if (ngot != ng) {
				fprintf(stderr, "%s: %zu gradients on worker 0, expected %u\n", O.tool, ngot, ng);
				goto out;
			}
			for (size_t i = 0; i < ngot; i++) {
				const float *gd = gr[i].grad.data;

				for (size_t j = 0; j < s / sizeof(float); j++)
					if (gd[j] != want) {
						fprintf(stderr, "%s: gradient %zu element %zu is %g, expected %g\n",
							O.tool, i, j, (double)gd[j], (double)want);
						goto out;
					}
			}
		}
		rdag_future_free(f);
		TRY(rdag_ctx_release(agent, ctx));
	}
	qsort(t, (size_t)n, sizeof(*t), cmp_u64);
	for (long i = 0; i < n; i++)
		sum += (double)t[i];
	p99 = (n * 99 + 99) / 100 - 1;
	if (p99 >= n)
		p99 = n - 1;
	printf(" %-10zu %11ld %12.2f %16.2f %12.2f %12.2f %12.2f %14llu\n", s, n, (double)t[0] / 1000.0,
	       (double)t[n / 2] / 1000.0, (double)t[n - 1] / 1000.0, sum / (double)n / 1000.0,
	       (double)t[p99] / 1000.0, (unsigned long long)((size_t)(O.nw - 1) * ng * s));
	if (d)
		print_detail(s, d, n, ncol);
	ret = 0;
out:
	for (uint32_t i = 0; i < ng; i++)
		free(x[i]);
	free(t);
	free(d);
	return ret;
}

static int chain_leader(void)
{
	int ret = 0;

	header();
	printf(" %-10s %11s %12s %16s %12s %12s %12s %14s\n", "#bytes", "#iterations", "t_min[usec]",
	       "t_typical[usec]", "t_max[usec]", "t_avg[usec]", "p99[usec]", "#moved[bytes]");
	for (size_t s = first_size(); s && !ret; s = next_size(s))
		ret = chain_size(s);
	alarm(0);
	return ret;
}

/* ---- rate mode ------------------------------------------------------------------------------ */

static int barrier(int phase)
{
	struct rdag_msg m = {.payload = &phase, .payload_len = sizeof(phase)}, res;
	struct rdag_call_opts plain = {.flags = RDAG_CALL_PLAIN};
	rdag_future_t *f;
	int n = 0;

	TRY(rdag_rpc_sync(agent, 0, "arrive", &m, &plain, &f));
	TRY(rdag_future_result(f, &res));
	memcpy(&n, res.payload, sizeof(n));
	rdag_future_free(f);
	while (n < O.nw - 1) {
		struct timespec ts = {0, 50000};

		nanosleep(&ts, NULL);
		TRY(rdag_rpc_sync(agent, 0, "count", &m, &plain, &f));
		TRY(rdag_future_result(f, &res));
		memcpy(&n, res.payload, sizeof(n));
		rdag_future_free(f);
	}
	return 0;
}

static int rate_sender(void)
{
	rdag_future_t **f = calloc((size_t)O.k, sizeof(*f));
	struct rdag_tensor *r = calloc((size_t)O.k, sizeof(*r)), lt;
	struct report rep;
	rdag_graph_t *g;
	uint64_t ctx;
	float loss;
	int ret = EXIT_FAIL;

	if (!f || !r || wait_for(0))
		goto out;
	alarm((unsigned)O.timeout_s);
	TRY(rdag_ctx_create(agent, &ctx));
	g = graph_for(ctx);
	if (!g)
		goto out;
	for (int i = 0; i < O.k; i++) {
		struct rdag_msg res;

		TRY(rdag_rpc_sync(agent, 0, "give", NULL, NULL, &f[i]));
		TRY(rdag_future_result(f[i], &res));
		if (res.ntensors != 1 || res.tensors[0].grad_kind != RDAG_GRAD_RECV) {
			fprintf(stderr, "%s: worker %u: give's result has no autograd edge\n", O.tool, me);
			goto out;
		}
		r[i] = res.tensors[0];
	}
	TRY(record_sum(g, sum_bw, r, (uint32_t)O.k, &loss, &lt));
	for (long p = 0; p < O.warmup; p++)
		TRY(rdag_backward(agent, ctx, &lt, 1, true));
	if (barrier(0))
		goto out;
	alarm((unsigned)O.timeout_s);
	rep.t0 = now_ns();
	for (long p = 0; p < O.iters; p++)
		TRY(rdag_backward(agent, ctx, &lt, 1, true));
	rep.t1 = now_ns();
	rep.requests = (uint64_t)O.iters * (uint64_t)O.k;
	{
		struct rdag_msg m = {.payload = &rep, .payload_len = sizeof(rep)};

		TRY(rdag_rpc_sync(agent, 0, "report", &m, NULL, NULL));
	}
	for (int i = 0; i < O.k; i++)
		rdag_future_free(f[i]);
	memset(f, 0, sizeof(*f) * (size_t)O.k);
	TRY(rdag_ctx_release(agent, ctx));
	alarm(0);
	ret = 0;
out:
	if (f)
		for (int i = 0; i < O.k; i++)
			rdag_future_free(f[i]);
	free(f);
	free(r);
	return ret;
}

static int rate_leader(void)
{
	uint64_t t0 = UINT64_MAX, t1 = 0, total = 0;
	double sec;

	header();
	pthread_mutex_lock(&done_lock);
	while (nreports < O.nw - 1)
		pthread_cond_wait(&done_cond, &done_lock);
	pthread_mutex_unlock(&done_lock);
	for (int w = 1; w < O.nw; w++) {
		double ws = (double)(reports[w].t1 - reports[w].t0) / 1e9;

		t0 = reports[w].t0 < t0 ? reports[w].t0 : t0;
		t1 = reports[w].t1 > t1 ? reports[w].t1 : t1;
		total += reports[w].requests;
		printf("# sender %d: %llu requests in %.3f ms, %.4f Mpps alone\n", w,
		       (unsigned long long)reports[w].requests, ws * 1e3, (double)reports[w].requests / ws / 1e6);
	}
	sec = (double)(t1 - t0) / 1e9;
	printf(" %-10s %11s %20s %15s\n", "#bytes", "#requests", "BW average[MB/sec]", "MsgRate[Mpps]");
	printf(" %-10zu %11llu %20.2f %15.6f\n", O.size, (unsigned long long)total,
	       (double)O.size * (double)total / sec / (double)(1u << 20), (double)total / sec / 1e6);
	return check_failures ? EXIT_FAIL : 0;
}

/* ---- one worker ----------------------------------------------------------------------------- */

static int pin(int rank)
{
	cpu_set_t set;
	int cpu;

	if (!O.ncpus)
		return 0;
	cpu = O.cpus[rank % O.ncpus];
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(0, sizeof(set), &set)) {
		fprintf(stderr, "%s: cannot pin worker %d to CPU %d: %s\n", O.tool, rank, cpu, strerror(errno));
		return -1;
	}
	return 0;
}

static int worker(const struct rdag_agent_opts *o)
{
	int rc, ret;

	if (o->rank >= 0 && pin(o->rank))
		return EXIT_FAIL;
	rc = rdag_agent_open(o, &agent);
	if (rc) {
		fprintf(stderr, "%s: rdag_agent_open: %s: %s\n", O.tool, rdag_strerror(rc), rdag_last_error());
		return rc == RDAG_ENODEV || rc == RDAG_ENOSYS ? EXIT_SKIP : EXIT_FAIL;
	}
	me = rdag_agent_id(agent);
	if ((int)rdag_agent_world(agent) != O.nw) {
		fprintf(stderr, "%s: %u workers, -W says %d\n", O.tool, rdag_agent_world(agent), O.nw);
		rdag_agent_close(agent);
		return EXIT_USAGE;
	}
	if (o->rank < 0 && pin(me)) {
		rdag_agent_close(agent);
		return EXIT_FAIL;
	}
	if (O.rate && me == 0) {
		if (posix_memalign((void **)&leaf, 64, O.size)) {
			rdag_agent_close(agent);
			return EXIT_FAIL;
		}
		memset(leaf, 0, O.size);
	}
	if (rdag_register(agent, "fwd", serve_fwd, NULL) || rdag_register(agent, "finish", serve_finish, NULL) ||
	    rdag_register(agent, "give", serve_give, NULL) || rdag_register(agent, "arrive", serve_arrive, NULL) ||
	    rdag_register(agent, "count", serve_count, NULL) || rdag_register(agent, "report", serve_report, NULL)) {
		fprintf(stderr, "%s: register: %s\n", O.tool, rdag_last_error());
		rdag_agent_close(agent);
		return EXIT_FAIL;
	}
	if (O.rate) {
		ret = me == 0 ? rate_leader() : rate_sender();
	} else if (me == 0) {
		for (uint32_t w = 1; w < (uint32_t)O.nw; w++)
			if (wait_for(w))
				return EXIT_FAIL;
		ret = chain_leader();
		for (uint32_t w = 1; w < (uint32_t)O.nw; w++)
			if (rdag_rpc_sync(agent, w, "finish", NULL, NULL, NULL))
				fprintf(stderr, "%s: finish on worker %u: %s\n", O.tool, w, rdag_last_error());
	} else {
		pthread_mutex_lock(&done_lock);
		while (!finished)
			pthread_cond_wait(&done_cond, &done_lock);
		pthread_mutex_unlock(&done_lock);
		ret = 0;
	}
	rc = rdag_agent_close(agent);
	if (rc && !ret) {
		fprintf(stderr, "%s: worker %u: close: %s\n", O.tool, me, rdag_last_error());
		ret = EXIT_FAIL;
	}
	pthread_mutex_lock(&graph_lock);
	rdag_graph_destroy(graph);
	graph = NULL;
	pthread_mutex_unlock(&graph_lock);
	free(leaf);
	return ret;
}

/* ---- command line, forking the workers ------------------------------------------------------ */

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: %s [options]     forks W workers on this host (or one worker under a launcher)\n"
		"  -W <n>      workers, 2..%d (default 4)\n"
		"  -s <size>   bytes per gradient tensor, K/M suffix (default 1M; -M: 64)\n"
		"  -a          all sizes, powers of 4 from 4 KiB to -S (iterations capped so a size\n"
		"              moves at most 1 GiB of gradients, but never fewer than %d)\n"
		"  -S <size>   largest size under -a (default 64M)\n"
		"  -n <iters>  timed backward passes per size (default 100; -M: passes per sender, 200)\n"
		"  -w <iters>  warm-up passes (default 10; at most a quarter of -n, at least 1)\n"
		"  -G <n>      gradients per hop, 1..%d (default 1)\n"
		"  -o <op>     node at each stage: identity (default: its backward copies the gradient),\n"
		"              scale, or pass (RDAG_NODE_IDENTITY: the engine hands the gradient on)\n"
		"  -M          fan-in rate mode: workers 1..W-1 send gradient requests to worker 0\n"
		"  -K <n>      -M: gradient requests per pass (in flight at once), 1..%d (default 16)\n"
		"  -P <prov>   libfabric provider (sets RDAG_FABRIC=ofi, RDAG_OFI_PROVIDER)\n"
		"  -d <dev>    device: the interface for tcp (FI_TCP_IFACE), the verbs device\n"
		"  -c <cpus>   pin worker r to the r-th CPU of this list, round robin (e.g. 0,1)\n"
		"  -T <sec>    give up after this long without finishing a pass (default 120)\n"
		"  -C          check the gradients (for tests)\n"
		"  -D          print where the chain's time goes (medians), per size\n"
		"  -Z          nodes get zeroed input-gradient buffers, as without RDAG_NODE_WRITES_ALL\n"
		"              (default: the op and sum nodes declare they write every byte)\n"
		"Exit status: 0 ok, 1 failure, 2 usage, 77 fabric not available here.\n",
		O.tool, MAXW, SWEEP_MIN_ITERS, MAXG, MAXK);
}

static long parse_long(const char *s, long lo, long hi)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi)
		return LONG_MIN;
	return v;
}

static void bad(int c, const char *arg)
{
	fprintf(stderr, "%s: invalid value for -%c: '%s'\n", O.tool, c, arg);
	usage(stderr);
	exit(EXIT_USAGE);
}

static void parse_args(int argc, char **argv)
{
	const char *slash = strrchr(argv[0], '/');
	int c, iters_given = 0, warm_given = 0;
	long v;

	O.tool = slash ? slash + 1 : argv[0];
	while ((c = getopt(argc, argv, "W:s:aS:n:w:G:o:MK:P:d:c:T:CDZh")) != -1) {
		switch (c) {
		case 'W':
			if ((v = parse_long(optarg, 2, MAXW)) == LONG_MIN)
				bad(c, optarg);
			O.nw = (int)v;
			break;
		case 's':
			if (raw_parse_size(optarg, &O.size) || O.size < sizeof(float) || O.size % sizeof(float) ||
			    O.size > MAX_SIZE)
				bad(c, optarg);
			O.size_given = 1;
			break;
		case 'a': O.all = 1; break;
		case 'S':
			if (raw_parse_size(optarg, &O.max_size) || O.max_size < MIN_SIZE || O.max_size > MAX_SIZE)
				bad(c, optarg);
			break;
		case 'n':
			if ((v = parse_long(optarg, 1, LONG_MAX / 4)) == LONG_MIN)
				bad(c, optarg);
			O.iters = v;
			iters_given = 1;
			break;
		case 'w':
			if ((v = parse_long(optarg, 0, LONG_MAX / 4)) == LONG_MIN)
				bad(c, optarg);
			O.warmup = v;
			warm_given = 1;
			break;
		case 'G':
			if ((v = parse_long(optarg, 1, MAXG)) == LONG_MIN)
				bad(c, optarg);
			O.ngrad = (int)v;
			break;
		case 'o':
			if (strcmp(optarg, "identity") == 0)
				O.op = OP_IDENTITY;
			else if (strcmp(optarg, "scale") == 0)
				O.op = OP_SCALE;
			else if (strcmp(optarg, "pass") == 0)
				O.op = OP_PASS;
			else
				bad(c, optarg);
			break;
		case 'M': O.rate = 1; break;
		case 'K':
			if ((v = parse_long(optarg, 1, MAXK)) == LONG_MIN)
				bad(c, optarg);
			O.k = (int)v;
			break;
		case 'P': O.provider = optarg; break;
		case 'd': O.device = optarg; break;
		case 'c': {
			char *list = strdup(optarg), *tok, *save = NULL;

			O.ncpus = 0;
			for (tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
				if (O.ncpus == 8 || (v = parse_long(tok, 0, CPU_SETSIZE - 1)) == LONG_MIN)
					bad(c, optarg);
				O.cpus[O.ncpus++] = (int)v;
			}
			free(list);
			break;
		}
		case 'T':
			if ((v = parse_long(optarg, 1, 86400)) == LONG_MIN)
				bad(c, optarg);
			O.timeout_s = (int)v;
			break;
		case 'C': O.check = 1; break;
		case 'D': O.detail = 1; break;
		case 'Z': O.zeroed = 1; break;
		case 'h':
			usage(stdout);
			exit(0);
		default:
			usage(stderr);
			exit(EXIT_USAGE);
		}
	}
	if (optind < argc) {
		fprintf(stderr, "%s: unexpected argument '%s'\n", O.tool, argv[optind]);
		exit(EXIT_USAGE);
	}
	if (O.rate) {
		if (O.all) {
			fprintf(stderr, "%s: -M measures one size (-s), not -a\n", O.tool);
			exit(EXIT_USAGE);
		}
		if (!O.size_given)
			O.size = 64;
		if (!iters_given)
			O.iters = 200;
	} else if (!warm_given && O.warmup > O.iters / 4) {
		O.warmup = O.iters / 4 < 1 ? 1 : O.iters / 4;
	}
	if (O.provider) {
		setenv("RDAG_FABRIC", "ofi", 1);
		setenv("RDAG_OFI_PROVIDER", O.provider, 1);
	}
	if (O.device) {
		/* As rdag_perf_lat/bw: the interface for tcp, the device for verbs. */
		const char *f = getenv("RDAG_FABRIC"), *p = getenv("RDAG_OFI_PROVIDER");

		if (f && strcmp(f, "verbs") == 0)
			setenv("RDAG_IB_DEVICE", O.device, 1);
		else if (p && strstr(p, "tcp"))
			setenv("FI_TCP_IFACE", O.device, 0);
		else if (p && strstr(p, "verbs"))
			setenv("FI_VERBS_DEVICE_NAME", O.device, 0);
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
}

static int launched(void)
{
	static const char *vars[] = {"RDAG_RANK", "RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID"};

	for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++)
		if (getenv(vars[i]))
			return 1;
	return 0;
}

/* A killed shm worker leaves /dev/shm/<pid>:* behind, which breaks a later process with its pid. */
static void forget_shm(pid_t pid)
{
	char pat[64];
	glob_t g;

	snprintf(pat, sizeof(pat), "/dev/shm/%d:*", (int)pid);
	if (glob(pat, 0, NULL, &g) == 0) {
		for (size_t i = 0; i < g.gl_pathc; i++)
			unlink(g.gl_pathv[i]);
		globfree(&g);
	}
}

int main(int argc, char **argv)
{
	struct rdag_agent_opts o;
	struct sockaddr_in sa;
	socklen_t sl = sizeof(sa);
	pid_t pids[MAXW];
	int killed[MAXW] = {0};
	char token[64];
	int fd, ret = 0, left;

	parse_args(argc, argv);
	if (O.detail && O.op == OP_PASS) {
		fprintf(stderr, "%s: -D times the node callbacks, which -o pass never calls\n", O.tool);
		return EXIT_USAGE;
	}
	rdag_agent_opts_init(&o);
	if (launched()) {
		if (O.detail)
			fprintf(stderr, "%s: -D needs the workers forked by the tool: ignored\n", O.tool);
		O.detail = 0;
		return worker(&o);
	}
	if (O.detail) {
		void *p = mmap(NULL, sizeof(*stamps) * MAXW, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
			       -1, 0);

		if (p == MAP_FAILED) {
			perror("mmap");
			return EXIT_FAIL;
		}
		stamps = p;
	}
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) || listen(fd, 64) ||
	    getsockname(fd, (struct sockaddr *)&sa, &sl)) {
		perror("socket");
		return EXIT_FAIL;
	}
	snprintf(token, sizeof(token), "rdag-perf-backward-%d", (int)getpid());
	o.world_size = O.nw;
	o.master_addr = "127.0.0.1";
	o.master_port = ntohs(sa.sin_port);
	o.job_token = token;
	o.local_only = 1;
	fflush(stdout);
	for (int r = 0; r < O.nw; r++) {
		pids[r] = fork();
		if (pids[r] < 0) {
			perror("fork");
			for (int k = 0; k < r; k++)
				kill(pids[k], SIGKILL);
			return EXIT_FAIL;
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
	/* The first worker to fail ends the run: the others are stopped rather than left waiting. */
	for (left = O.nw; left > 0;) {
		int st, r = -1;
		pid_t p = wait(&st);

		if (p < 0 && errno == EINTR)
			continue;
		if (p < 0)
			break;
		for (int k = 0; k < O.nw; k++)
			if (pids[k] == p)
				r = k;
		if (r < 0)
			continue;
		left--;
		if (WIFSIGNALED(st))
			forget_shm(p);
		if ((WIFEXITED(st) && WEXITSTATUS(st) == 0) || killed[r])
			continue;
		if (WIFSIGNALED(st))
			fprintf(stderr, "%s: worker %d died of signal %d%s\n", O.tool, r, WTERMSIG(st),
				WTERMSIG(st) == SIGALRM ? " (no pass finished within -T)" : "");
		else if (WEXITSTATUS(st) != EXIT_SKIP)
			fprintf(stderr, "%s: worker %d failed (exit %d)\n", O.tool, r, WEXITSTATUS(st));
		if (!ret)
			ret = WIFEXITED(st) && WEXITSTATUS(st) == EXIT_SKIP ? EXIT_SKIP : EXIT_FAIL;
		for (int k = 0; k < O.nw; k++)
			if (k != r && !killed[k]) {
				killed[k] = 1;
				kill(pids[k], SIGKILL);
			}
	}
	return ret;
}
