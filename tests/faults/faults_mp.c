/* Fault injection over real processes: a worker killed, stopped or cut off at each phase; what the survivors see and what they keep. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <rdag/rdag.h>

#include "agent/agent_int.h"
#include "agent/agent_test.h"
#include "fabric/fabric.h"
#include "gpu/gpu.h"
#include "mp_common.h"
#include "rcache/rcache.h"

/*
 * Usage: faults_mp [-n workers] [-t seconds] [-p shm|tcp_rxm|provider] scenario
 *
 * RDAG_TEST_BIG_MIB (default 64) sizes kill_reply's and kill_grad's tensors. RDMA writes
 * arriving are not "heard" by the keepalive: a writer stays alive by its keepalive answers,
 * which wait behind at most the write window (RDAG_WRITE_WINDOW), so a link must move a window
 * well within RDAG_PEER_TIMEOUT_MS (docs/reliability.md); the Soft-RoCE VM moves 64 MiB in
 * about a second.
 *
 * The parent forks the workers (tests/common's harness); the victim is the last rank. Every
 * worker sets RDAG_PEER_TIMEOUT_MS=2000 (FT_TIMEOUT_MS). Scenarios:
 *   kill_forward  the victim's function asks to be SIGKILLed and blocks; the caller has 8 calls
 *                 pending on it (the autograd context current);
 *   kill_reply    the victim's reply carries a 64 MiB tensor (rendezvous); it asks for its
 *                 SIGKILL as it hands the reply over (a first reply checks the bytes);
 *   kill_grad     a distributed backward pass: the victim's node sends back a 64 MiB gradient
 *                 (rendezvous) and is asks for its SIGKILL as it hands the gradient over (a first pass
 *                 without the kill checks the gradient's values);
 *   kill_cleanup  3 workers, a context that went 0 -> 1 -> 2: 0 asks for the kill of 2 and
 *                 releases the context at once (the cleanup reaches 2 as it dies);
 *   stop          the victim SIGSTOPs itself inside a call; 8 calls with 1 MiB tensors pending;
 *   link_cut      (network namespaces only) the victim's veth goes down for good: both sides'
 *                 pending calls fail, naming each other;
 *   link_blip     (network namespaces only) the veth goes down for FT_BLIP_MS, calls are made
 *                 meanwhile, then it comes back up: every call completes, nobody is declared dead.
 * For each: the survivors' pending operations fail with RDAG_EPEER_DEAD (or RDAG_EREMOTE from a
 * relaying worker) naming the victim, within FT_BOUND_MS of the fault; contexts go to 0;
 * registrations in use return to what they were before the fault; after rdag_agent_close, the
 * open fds are those before rdag_agent_open and no fabric endpoint or registration is left
 * (fab_get_live). Heap leaks: the ASan build's LeakSanitizer at each worker's exit.
 *
 * Network namespaces: tests/faults/netns-run.sh creates two namespaces joined by a veth pair and
 * runs this program with RDAG_TEST_NETNS="<nsA> <nsB> <ifA> <ifB> <addrA>" set. The parent and
 * every rank but the victim then run in nsA, the victim in nsB; the bootstrap meets on addrA and
 * the tcp provider uses each side's veth (FI_TCP_IFACE).
 */

#define FT_MAXW 4
#define FT_TIMEOUT_MS 2000
#define FT_BOUND_MS (3 * FT_TIMEOUT_MS) /* the timeout plus generous slack (loaded CI, ASan) */
#define FT_PENDING 8
#define FT_BIG_DEF 64 /* MiB: kill_reply's and kill_grad's tensors (RDAG_TEST_BIG_MIB) */
#define FT_BLIP_MS 300

struct ft_board {
	char phase[FT_MAXW][MP_PHASE_LEN];
	volatile uint64_t kill_ns;   /* when the parent sent SIGKILL */
	volatile uint64_t fault_ns;  /* stop, link_*: when the fault was injected */
	volatile uint64_t armed_at;  /* kill_reply, kill_grad: when the victim asked (its rendezvous started) */
	volatile int done;           /* rank 0 is done (link_*: the victim may close) */
	volatile pid_t pid[FT_MAXW]; /* each worker's */
	volatile int seen_dead;      /* link_cut: the victim's calls have failed */
};

struct ft_netns {
	bool on;
	char ns[2][64], ifc[2][32], addr[64];
};

struct ft_worker {
	int rank, world, victim;
	const struct mp_cfg *cfg;
	struct ft_board *board;
	const struct ft_netns *nn;
	rdag_agent_t *a;
	rdag_graph_t *g;
	int ready_fd;
	atomic_int fail;
	atomic_int asked;            /* the kill was asked for (once) */
	bool skipped;                /* what the scenario needs is missing here: exit 77 */
	uint64_t deadline_ns;
	pthread_mutex_t lock;
	struct ft_node *nodes;       /* node arguments, freed at the end */
};

struct ft_node {
	struct ft_node *next;
	struct ft_worker *w;
	int arm;                     /* kill once the gradient's rendezvous starts */
};

static struct ft_netns g_nn;
static size_t ft_big = (size_t)FT_BIG_DEF << 20;

/* ---- checks ---------------------------------------------------------------------------------- */

static void ft_fail(struct ft_worker *w, const char *file, int line, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static void ft_fail(struct ft_worker *w, const char *file, int line, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	mp_vreport(w->rank, w->board->phase[w->rank], file, line, fmt, ap);
	va_end(ap);
	atomic_store(&w->fail, 1);
}

static void ft_fail_rc(struct ft_worker *w, const char *file, int line, int got, int want,
		       const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static void ft_fail_rc(struct ft_worker *w, const char *file, int line, int got, int want,
		       const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	mp_vreport_rc(w->rank, w->board->phase[w->rank], file, line, got, want, fmt, ap);
	va_end(ap);
	atomic_store(&w->fail, 1);
}

#define CHECK(w, cond, ...)                                                                        \
	do {                                                                                       \
		if (!(cond))                                                                       \
			ft_fail((w), __FILE__, __LINE__, "check (" #cond ") failed: " __VA_ARGS__); \
	} while (0)
#define CHECK_RC(w, rc, want, ...)                                                                 \
	do {                                                                                       \
		int ft_rc_ = (rc), ft_want_ = (want);                                              \
		if (ft_rc_ != ft_want_)                                                            \
			ft_fail_rc((w), __FILE__, __LINE__, ft_rc_, ft_want_, __VA_ARGS__);          \
	} while (0)

static void ft_phase(struct ft_worker *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void ft_phase(struct ft_worker *w, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(w->board->phase[w->rank], sizeof(w->board->phase[w->rank]), fmt, ap);
	va_end(ap);
}

static void ft_barrier(struct ft_worker *w, const char *what)
{
	ft_phase(w, "barrier: %s", what);
	CHECK_RC(w, agent_test_barrier(w->a), 0, "agent_test_barrier (%s)", what);
}

static uint64_t ms_since(uint64_t t0)
{
	return t0 ? (mp_now_ns() - t0) / 1000000 : 0;
}

/* Asks the parent to SIGKILL the victim (once per run). */
static void ask_kill(struct ft_worker *w)
{
	if (atomic_exchange(&w->asked, 1) == 0 && write(w->ready_fd, "k", 1) != 1)
		ft_fail(w, __FILE__, __LINE__, "asking for the kill: %s", strerror(errno));
}

/* ---- what leaks are measured with ------------------------------------------------------------ */

#define FT_MAXFD 4096

/* Marks the open fds in open[] (below FT_MAXFD); returns how many, or -1. */
static int list_fds(bool *open_fds)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0, self;

	if (!d)
		return -1;
	self = dirfd(d);
	memset(open_fds, 0, FT_MAXFD * sizeof(*open_fds));
	while ((e = readdir(d))) {
		int fd = atoi(e->d_name);

		if (e->d_name[0] == '.' || fd == self || fd < 0 || fd >= FT_MAXFD)
			continue;
		open_fds[fd] = true;
		n++;
	}
	closedir(d);
	return n;
}

/*
 * Every fd open now was open at the baseline, except the verbs libraries' own: librdmacm opens
 * the device (/dev/infiniband/uverbsN and its async event fd, anon_inode:[infinibandevent]) on
 * the first bind and keeps that context for the process's life, whatever rdag opens and closes
 * (the verbs provider's CQ channel, the same kind of inode, is destroyed in verbs_ep.c). Returns
 * the fds rdag left (0: none).
 */
static int fds_left(struct ft_worker *w, const bool *base, int *lib)
{
	static bool now[FT_MAXFD];
	int left = 0;

	*lib = 0;
	if (list_fds(now) < 0)
		return -1;
	for (int fd = 0; fd < FT_MAXFD; fd++) {
		char path[64], target[256];
		ssize_t n;

		if (!now[fd] || base[fd])
			continue;
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
		n = readlink(path, target, sizeof(target) - 1);
		target[n > 0 ? n : 0] = 0;
		if (strncmp(target, "/dev/infiniband/", 16) == 0 ||
		    strcmp(target, "anon_inode:[infinibandevent]") == 0) {
			(*lib)++;
			continue;
		}
		ft_fail(w, __FILE__, __LINE__, "fd %d (%s) open after rdag_agent_close, not before "
			"rdag_agent_open", fd, target);
		left++;
	}
	return left;
}

static size_t regs_in_use(struct ft_worker *w)
{
	struct rcache_stats st;

	rcache_get_stats(xport_rcache(w->a->x), &st);
	return st.in_use;
}

/* Polls until the registrations in use are back to base (they are given back as ops finish). */
static void check_regs(struct ft_worker *w, size_t base, const char *what)
{
	uint64_t dl = mp_deadline(w->deadline_ns, 10);

	while (regs_in_use(w) > base && mp_wait_until(dl))
		;
	CHECK(w, regs_in_use(w) <= base, "%s: %zu registrations in use, %zu before the fault", what,
	      regs_in_use(w), base);
}

static void check_ctx_zero(struct ft_worker *w, const char *what)
{
	uint64_t dl = mp_deadline(w->deadline_ns, 15);

	while (rdag_ctx_count(w->a) != 0 && mp_wait_until(dl))
		;
	CHECK(w, rdag_ctx_count(w->a) == 0, "%s: %zu contexts left", what, rdag_ctx_count(w->a));
}

/* rc must be a dead-peer failure (RDAG_EPEER_DEAD, or RDAG_EREMOTE relayed) naming worker<peer>. */
static void check_dead(struct ft_worker *w, int rc, const char *text, int peer, uint64_t fault_ns,
		       const char *what)
{
	char name[32];
	uint64_t ms = ms_since(fault_ns);

	snprintf(name, sizeof(name), "worker%d", peer);
	CHECK(w, rc == RDAG_EPEER_DEAD || rc == RDAG_EREMOTE,
	      "%s: returned %d (%s), expected RDAG_EPEER_DEAD: \"%s\"", what, rc, rdag_strerror(rc), text);
	CHECK(w, strstr(text, name) != NULL, "%s: the error does not name %s: \"%s\"", what, name, text);
	CHECK(w, fault_ns != 0, "%s: failed before the fault was injected", what);
	CHECK(w, ms <= FT_BOUND_MS, "%s: failed %llu ms after the fault (bound %d)", what,
	      (unsigned long long)ms, FT_BOUND_MS);
}

/* ---- served functions ------------------------------------------------------------------------ */

struct ft_req {
	uint64_t len;     /* bigreply: bytes */
	uint32_t arm;     /* ask for the kill (once the reply's or gradient's rendezvous starts) */
	uint32_t peer;    /* relay: whom to call */
};

static int fn_echo(void *arg, const struct rdag_caller *who, const struct rdag_msg *in, rdag_reply_t *out)
{
	(void)arg;
	(void)who;
	return rdag_reply_payload(out, in->payload, in->payload_len);
}

/* The victim: asks for its own kill, then waits (the kill comes first; bounded anyway). */
static int fn_block(void *arg, const struct rdag_caller *who, const struct rdag_msg *in, rdag_reply_t *out)
{
	struct ft_worker *w = arg;
	uint64_t dl = mp_deadline(w->deadline_ns, 60);

	(void)who;
	(void)in;
	ask_kill(w);
	while (!w->board->done && mp_wait_until(dl))
		;
	return rdag_reply_error(out, RDAG_EIO, "worker %d was to be killed and was not", w->rank);
}

/* The victim stops (SIGSTOP) inside the call: from outside, a process that no longer reads. */
static int fn_stop(void *arg, const struct rdag_caller *who, const struct rdag_msg *in, rdag_reply_t *out)
{
	struct ft_worker *w = arg;

	(void)who;
	(void)in;
	raise(SIGSTOP);
	return rdag_reply_error(out, RDAG_EIO, "worker %d was continued after SIGSTOP", w->rank);
}

/*
 * Armed: asks for the kill now, as the function (or node) is about to hand over its 64 MiB
 * result: the parent's SIGKILL lands while the result is encoded and sent by rendezvous (tens
 * of ms for 64 MiB here), which the survivor sees as a message whose data never comes.
 */
static void arm_kill(struct ft_worker *w)
{
	w->board->armed_at = mp_now_ns();
	ask_kill(w);
}

/* Replies a tensor of req.len bytes (a byte pattern); armed: asks for the kill as it is written. */
static int fn_bigreply(void *arg, const struct rdag_caller *who, const struct rdag_msg *in, rdag_reply_t *out)
{
	struct ft_worker *w = arg;
	struct ft_req req;
	struct rdag_tensor t;
	int64_t shape[1];
	void *p;

	(void)who;
	if (in->payload_len != sizeof(req))
		return rdag_reply_error(out, RDAG_EINVAL, "bigreply: payload of %zu bytes", in->payload_len);
	memcpy(&req, in->payload, sizeof(req));
	p = rdag_reply_alloc(out, req.len);
	if (!p)
		return rdag_reply_error(out, RDAG_ENOMEM, "bigreply: %llu bytes", (unsigned long long)req.len);
	mp_fill(p, req.len, mp_seed(7, 7, req.len));
	shape[0] = (int64_t)req.len;
	rdag_tensor_init(&t, p, RDAG_U8, 1, shape);
	if (req.arm)
		arm_kill(w);
	return rdag_reply_tensor(out, &t);
}

static void free_dev(void *d)
{
	gpu_mem_free(d);
}

/*
 * As bigreply, from device memory of the victim's device 1 to the caller's device 0 (the victim
 * maps 1 -> 0 towards worker 0): by NCCL where that is the path. Armed: asks for the kill as it
 * hands the reply over, so the caller is left with a transfer its sender will never finish.
 */
static int fn_gpureply(void *arg, const struct rdag_caller *who, const struct rdag_msg *in,
		       rdag_reply_t *out)
{
	struct ft_worker *w = arg;
	int map[2] = {-1, 0}, rc;
	struct ft_req req;
	struct rdag_tensor t;
	int64_t shape[1];
	void *d = NULL;
	uint8_t *h;

	if (in->payload_len != sizeof(req) || who->worker != 0)
		return rdag_reply_error(out, RDAG_EINVAL, "gpureply: payload of %zu bytes from %u",
					in->payload_len, who->worker);
	memcpy(&req, in->payload, sizeof(req));
	rc = rdag_agent_set_device_map(w->a, 0, map, 2);
	h = malloc(req.len);
	if (!rc)
		rc = h ? gpu_mem_alloc(1, req.len, &d) : RDAG_ENOMEM;
	if (!rc) {
		mp_fill(h, req.len, mp_seed(7, 7, req.len));
		rc = gpu_memcpy_htod(d, h, req.len);
	}
	free(h);
	if (rc) {
		gpu_mem_free(d);
		return rdag_reply_error(out, rc, "gpureply: %s", rdag_last_error());
	}
	shape[0] = (int64_t)req.len;
	rdag_tensor_init(&t, d, RDAG_U8, 1, shape);
	t.device_type = RDAG_DEV_CUDA;
	t.device_index = 1;
	if (req.arm)
		arm_kill(w);
	rc = rdag_reply_tensor(out, &t);
	if (rc) {
		gpu_mem_free(d);
		return rc;
	}
	rdag_reply_on_sent(out, free_dev, d);
	return 0;
}

/* s = sum(x): backward broadcasts the scalar's gradient (x's size: by rendezvous when large). */
static int node_sum_bwd(void *arg, const struct rdag_tensor *grad_out, uint32_t n_out,
			struct rdag_tensor *grad_in, uint32_t n_in)
{
	struct ft_node *nd = arg;
	double g;
	size_t n;

	if (n_out != 1 || n_in != 1 || !grad_in[0].data)
		return RDAG_EINVAL;
	g = *(const double *)grad_out[0].data;
	n = rdag_tensor_nbytes(&grad_in[0]) / sizeof(double);
	for (size_t i = 0; i < n; i++)
		((double *)grad_in[0].data)[i] = g;
	if (nd->arm)
		arm_kill(nd->w);
	return 0;
}

static int fn_sum(void *arg, const struct rdag_caller *who, const struct rdag_msg *in, rdag_reply_t *out)
{
	struct ft_worker *w = arg;
	struct rdag_tensor s;
	struct ft_node *nd;
	struct ft_req req;
	double *sp, acc = 0;
	void *node;
	size_t n;
	int rc;

	(void)who;
	if (in->payload_len != sizeof(req) || in->ntensors != 1 || in->tensors[0].dtype != RDAG_F64)
		return rdag_reply_error(out, RDAG_EINVAL, "sum: one f64 tensor and a request expected");
	memcpy(&req, in->payload, sizeof(req));
	n = rdag_tensor_nbytes(&in->tensors[0]) / sizeof(double);
	for (size_t i = 0; i < n; i++)
		acc += ((const double *)in->tensors[0].data)[i];
	sp = rdag_reply_alloc(out, sizeof(*sp));
	nd = calloc(1, sizeof(*nd));
	if (!sp || !nd) {
		free(nd);
		return rdag_reply_error(out, RDAG_ENOMEM, "sum: out of memory");
	}
	*sp = acc;
	rdag_tensor_init(&s, sp, RDAG_F64, 0, NULL);
	nd->w = w;
	nd->arm = (int)req.arm;
	rc = rdag_graph_node(w->g, node_sum_bwd, nd, in->tensors, 1, &s, 1, &node);
	if (rc) {
		free(nd);
		return rdag_reply_error(out, rc, "sum: rdag_graph_node: %s", rdag_last_error());
	}
	pthread_mutex_lock(&w->lock);
	nd->next = w->nodes;
	w->nodes = nd;
	pthread_mutex_unlock(&w->lock);
	s.requires_grad = true;
	s.grad_kind = RDAG_GRAD_NODE;
	s.grad_fn.node = node;
	s.grad_fn.input_nr = 0;
	return rdag_reply_tensor(out, &s);
}

/* Calls "echo" on req.peer in the current context (so the context reaches it too). */
static int fn_relay(void *arg, const struct rdag_caller *who, const struct rdag_msg *in, rdag_reply_t *out)
{
	struct ft_worker *w = arg;
	struct rdag_msg args = {.payload = "relayed", .payload_len = 8};
	rdag_future_t *f = NULL;
	struct ft_req req;
	int rc;

	(void)who;
	if (in->payload_len != sizeof(req))
		return rdag_reply_error(out, RDAG_EINVAL, "relay: payload of %zu bytes", in->payload_len);
	memcpy(&req, in->payload, sizeof(req));
	rc = rdag_rpc_sync(w->a, req.peer, "echo", &args, NULL, &f);
	rdag_future_free(f);
	return rc;
}

static const struct mp_fn fns[] = {
	{"echo", fn_echo}, {"block", fn_block}, {"stop", fn_stop},
	{"bigreply", fn_bigreply}, {"sum", fn_sum}, {"relay", fn_relay}, {"gpureply", fn_gpureply},
};

/* ---- scenarios ------------------------------------------------------------------------------- */

static uint64_t new_ctx(struct ft_worker *w)
{
	uint64_t ctx = 0;

	CHECK_RC(w, rdag_ctx_create(w->a, &ctx), 0, "rdag_ctx_create");
	return ctx;
}

static void release_ctx(struct ft_worker *w, uint64_t ctx, const char *what)
{
	uint64_t t0 = mp_now_ns(), ms;

	CHECK_RC(w, rdag_ctx_release(w->a, ctx), 0, "%s: rdag_ctx_release", what);
	ms = ms_since(t0);
	CHECK(w, ms <= FT_BOUND_MS, "%s: rdag_ctx_release took %llu ms (bound %d)", what,
	      (unsigned long long)ms, FT_BOUND_MS);
	printf("%s: rdag_ctx_release took %llu ms\n", what, (unsigned long long)ms);
}

/*
 * A call to the victim after its death fails naming it within the bound of the fault; at once
 * when the transport knew already (at_once).
 */
static void call_dead_within(struct ft_worker *w, const char *what, bool at_once)
{
	rdag_future_t *f = NULL;
	char text[1024];
	uint64_t t0 = mp_now_ns();
	int rc;

	rc = rdag_rpc_sync(w->a, (uint32_t)w->victim, "echo", &(struct rdag_msg){.payload = "x",
								       .payload_len = 1}, NULL, &f);
	snprintf(text, sizeof(text), "%s", rdag_last_error());
	rdag_future_free(f);
	check_dead(w, rc, text, w->victim, w->board->kill_ns ? w->board->kill_ns : w->board->fault_ns,
		   what);
	CHECK(w, !at_once || ms_since(t0) < 1000, "%s: a call to the dead worker took %llu ms", what,
	      (unsigned long long)ms_since(t0));
}

static void call_dead(struct ft_worker *w, const char *what)
{
	call_dead_within(w, what, true);
}

/* Waits for fs[0..n): each must fail naming the victim within the bound of the fault. */
static void wait_dead(struct ft_worker *w, rdag_future_t **fs, int n, volatile uint64_t *fault_ns,
		      const char *what)
{
	uint64_t worst = 0;

	for (int i = 0; i < n; i++) {
		char text[1024];
		int rc;

		if (!fs[i])
			continue;
		rc = rdag_future_wait(fs[i], 30000);
		snprintf(text, sizeof(text), "%s", rdag_future_error(fs[i]));
		if (ms_since(*fault_ns) > worst)
			worst = ms_since(*fault_ns);
		check_dead(w, rc, text, w->victim, *fault_ns, what);
		if (i == n - 1)
			printf("%s: %d pending calls failed, the last %llu ms after the fault: %s: \"%s\"\n",
			       what, n, (unsigned long long)worst, rdag_strerror(rc), text);
		rdag_future_free(fs[i]);
		fs[i] = NULL;
	}
}

static void sc_kill_forward(struct ft_worker *w)
{
	rdag_future_t *fs[FT_PENDING] = {NULL};
	uint64_t ctx;
	size_t regs;

	if (w->rank == w->victim) {
		/* A context of the victim's on rank 0, never released: rank 0 drops it at the death. */
		int rc;

		ctx = new_ctx(w);
		rc = rdag_rpc_sync(w->a, 0, "echo", &(struct rdag_msg){.payload = "v", .payload_len = 1},
				   NULL, &fs[0]);
		CHECK_RC(w, rc, 0, "kill_forward: the victim's call in its context");
		rdag_future_free(fs[0]);
	}
	ft_barrier(w, "kill_forward: the victim's context is on 0");
	if (w->rank != 0)
		return;
	CHECK(w, rdag_ctx_count(w->a) == 1, "kill_forward: %zu contexts on 0, expected the victim's",
	      rdag_ctx_count(w->a));
	ft_phase(w, "kill_forward: calls pending on the victim");
	ctx = new_ctx(w);
	regs = regs_in_use(w);
	for (int i = 0; i < FT_PENDING; i++)
		CHECK_RC(w, rdag_rpc_async(w->a, (uint32_t)w->victim, "block",
					   &(struct rdag_msg){.payload = &i, .payload_len = sizeof(i)}, NULL,
					   &fs[i]),
			 0, "kill_forward: call %d", i);
	wait_dead(w, fs, FT_PENDING, &w->board->kill_ns, "kill_forward");
	call_dead(w, "kill_forward: a later call");
	check_regs(w, regs, "kill_forward");
	release_ctx(w, ctx, "kill_forward");
}

static void sc_kill_reply(struct ft_worker *w)
{
	struct ft_req req = {.len = ft_big, .arm = 0};
	struct rdag_msg args = {.payload = &req, .payload_len = sizeof(req)}, res;
	rdag_future_t *f = NULL;
	uint64_t ctx;
	size_t regs;
	int rc;

	if (w->rank != 0)
		return;
	ft_phase(w, "kill_reply: a big reply that arrives");
	ctx = new_ctx(w);
	rc = rdag_rpc_sync(w->a, (uint32_t)w->victim, "bigreply", &args, NULL, &f);
	CHECK_RC(w, rc, 0, "kill_reply: the first reply");
	if (rc == 0) {
		rc = rdag_future_result(f, &res);
		CHECK(w, rc == 0 && res.ntensors == 1 && rdag_tensor_nbytes(&res.tensors[0]) == ft_big &&
			 mp_check(res.tensors[0].data, ft_big, mp_seed(7, 7, ft_big)) == 0,
		      "kill_reply: the first reply's bytes are wrong");
	}
	rdag_future_free(f);
	f = NULL;
	regs = regs_in_use(w);
	ft_phase(w, "kill_reply: a big reply whose sender dies as it writes");
	req.arm = 1;
	CHECK_RC(w, rdag_rpc_async(w->a, (uint32_t)w->victim, "bigreply", &args, NULL, &f), 0,
		 "kill_reply: the armed call");
	wait_dead(w, &f, 1, &w->board->kill_ns, "kill_reply");
	printf("kill_reply: the victim asked for the kill as it handed over its reply; killed %llu us later\n",
	       (unsigned long long)((w->board->kill_ns - w->board->armed_at) / 1000));
	call_dead(w, "kill_reply: a later call");
	check_regs(w, regs, "kill_reply");
	release_ctx(w, ctx, "kill_reply");
}

/*
 * A device tensor in a reply whose sender dies as it hands it over (with the nccl path: while
 * the NCCL transfer is under way). Needs a driver with two devices (the simulated one here).
 */
static void sc_kill_gpu_reply(struct ft_worker *w)
{
	struct ft_req req = {.len = ft_big, .arm = 0};
	struct rdag_msg args = {.payload = &req, .payload_len = sizeof(req)}, res;
	struct rdag_peer_info pi;
	struct gpu_ptr_info gp;
	struct gpu_info gi;
	rdag_future_t *f = NULL;
	uint8_t *h;
	int rc;

	/* Both workers decide alike (same host, same environment): skipped without 2 devices. */
	rc = gpu_init();
	if (!rc) {
		gpu_probe(&gi);
		rc = gi.ndevices >= 2 ? 0 : RDAG_ENOGPU;
	}
	if (rc) {
		if (w->rank == 0)
			printf("skipped: kill_gpu_reply needs 2 CUDA devices (or the simulated driver): "
			       "%s\n", rdag_strerror(rc));
		w->skipped = true;
		return;
	}
	if (w->rank != 0)
		return;
	ft_phase(w, "kill_gpu_reply: a device reply that arrives");
	rc = rdag_rpc_sync(w->a, (uint32_t)w->victim, "gpureply", &args, NULL, &f);
	CHECK_RC(w, rc, 0, "kill_gpu_reply: the first reply: %s", rdag_last_error());
	if (rc == 0 && rdag_future_result(f, &res) == 0 && res.ntensors == 1) {
		h = malloc(ft_big);
		CHECK(w, res.tensors[0].device_type == RDAG_DEV_CUDA && res.tensors[0].device_index == 0 &&
			 gpu_ptr_classify(res.tensors[0].data, &gp) == 0 && gp.type == GPU_MEM_DEVICE &&
			 h && gpu_memcpy_dtoh(h, res.tensors[0].data, ft_big) == 0 &&
			 mp_check(h, ft_big, mp_seed(7, 7, ft_big)) == 0,
		      "kill_gpu_reply: the first reply is not the bytes on device 0");
		free(h);
	} else {
		CHECK(w, 0, "kill_gpu_reply: the first reply has no tensor");
	}
	rdag_future_free(f);
	f = NULL;
	CHECK_RC(w, rdag_peer_info(w->a, (uint32_t)w->victim, &pi), 0, "rdag_peer_info");
	CHECK(w, pi.gpu_tensors_in == 1 &&
		 pi.gpu_nccl_tensors_in == (pi.gpu_path && !strcmp(pi.gpu_path, "nccl") ? 1u : 0u),
	      "kill_gpu_reply: %llu device tensors in, %llu by NCCL (path %s)",
	      (unsigned long long)pi.gpu_tensors_in, (unsigned long long)pi.gpu_nccl_tensors_in,
	      pi.gpu_path ? pi.gpu_path : "none");
	printf("kill_gpu_reply: the first reply went by %s\n", pi.gpu_nccl_tensors_in ? "NCCL" : "host");
	ft_phase(w, "kill_gpu_reply: a device reply whose sender dies as it hands it over");
	req.arm = 1;
	CHECK_RC(w, rdag_rpc_async(w->a, (uint32_t)w->victim, "gpureply", &args, NULL, &f), 0,
		 "kill_gpu_reply: the armed call");
	wait_dead(w, &f, 1, &w->board->kill_ns, "kill_gpu_reply");
	/* NCCL may have told first (the transfer broke off): the transport's verdict can come later. */
	call_dead_within(w, "kill_gpu_reply: a later call", false);
}

/* One pass: x (n f64 of value 1/8 .. ) -> "sum" on the victim -> backward. Returns rdag_backward's code. */
static int grad_pass(struct ft_worker *w, double *x, size_t n, int arm, char *text, size_t tlen,
		     uint64_t *ctx_out)
{
	struct ft_req req = {.arm = (uint32_t)arm};
	struct rdag_tensor xt;
	struct rdag_msg args, res;
	rdag_future_t *f = NULL;
	int64_t shape[1] = {(int64_t)n};
	uint64_t ctx;
	int rc;

	ctx = new_ctx(w);
	*ctx_out = ctx;
	rdag_tensor_init(&xt, x, RDAG_F64, 1, shape);
	xt.requires_grad = true;
	xt.grad_kind = RDAG_GRAD_LEAF;
	xt.grad_fn.node = x;
	args = (struct rdag_msg){.payload = &req, .payload_len = sizeof(req), .tensors = &xt, .ntensors = 1};
	rc = rdag_rpc_sync(w->a, (uint32_t)w->victim, "sum", &args, NULL, &f);
	CHECK_RC(w, rc, 0, "kill_grad: the forward call");
	if (rc == 0) {
		rc = rdag_future_result(f, &res);
		CHECK(w, rc == 0 && res.ntensors == 1 && res.tensors[0].ndim == 0 &&
			 *(const double *)res.tensors[0].data == 0.125 * (double)n,
		      "kill_grad: the forward's sum is wrong");
		if (rc == 0 && res.ntensors == 1) {
			struct rdag_tensor root = res.tensors[0];

			rc = rdag_backward(w->a, ctx, &root, 1, false);
			snprintf(text, tlen, "%s", rdag_last_error());
		}
	}
	rdag_future_free(f);
	return rc;
}

static void sc_kill_grad(struct ft_worker *w)
{
	size_t n = ft_big / sizeof(double);
	double *x;
	char text[1024] = "";
	uint64_t ctx;
	size_t regs;
	int rc;

	if (w->rank != 0)
		return;
	x = malloc(ft_big);
	if (!x) {
		ft_fail(w, __FILE__, __LINE__, "kill_grad: out of memory");
		return;
	}
	for (size_t i = 0; i < n; i++)
		x[i] = 0.125;
	ft_phase(w, "kill_grad: a pass that completes");
	rc = grad_pass(w, x, n, 0, text, sizeof(text), &ctx);
	CHECK_RC(w, rc, 0, "kill_grad: the first pass (%s)", text);
	if (rc == 0) {
		struct rdag_grad g;
		size_t ng = 0;
		bool ok;

		rc = rdag_ctx_grads(w->a, ctx, &g, 1, &ng);
		ok = rc == 0 && ng == 1 && g.var == x && rdag_tensor_nbytes(&g.grad) == ft_big;
		for (size_t i = 0; ok && i < n; i++)
			ok = ((const double *)g.grad.data)[i] == 1.0;
		CHECK(w, ok, "kill_grad: the first pass's gradient is wrong (rc %d, %zu gradients)", rc, ng);
	}
	release_ctx(w, ctx, "kill_grad: first pass");
	regs = regs_in_use(w);
	ft_phase(w, "kill_grad: a pass whose gradient's writer dies");
	{
		uint64_t t0 = mp_now_ns();

		rc = grad_pass(w, x, n, 1, text, sizeof(text), &ctx);
		check_dead(w, rc, text, w->victim, w->board->kill_ns, "kill_grad: rdag_backward");
		printf("kill_grad: rdag_backward failed after %llu ms (%llu ms after SIGKILL, sent %llu us "
		       "after the victim's node asked): %s: \"%s\"\n",
		       (unsigned long long)ms_since(t0), (unsigned long long)ms_since(w->board->kill_ns),
		       (unsigned long long)((w->board->kill_ns - w->board->armed_at) / 1000),
		       rdag_strerror(rc), text);
	}
	check_regs(w, regs, "kill_grad");
	release_ctx(w, ctx, "kill_grad: the failed pass");
	call_dead(w, "kill_grad: a later call");
	free(x);
}

static void sc_kill_cleanup(struct ft_worker *w)
{
	struct ft_req req = {.peer = (uint32_t)w->victim};
	rdag_future_t *f = NULL;
	uint64_t ctx;
	int rc;

	if (w->rank == 0) {
		ft_phase(w, "kill_cleanup: a context through 1 to the victim");
		ctx = new_ctx(w);
		rc = rdag_rpc_sync(w->a, 1, "relay", &(struct rdag_msg){.payload = &req,
									.payload_len = sizeof(req)},
				   NULL, &f);
		CHECK_RC(w, rc, 0, "kill_cleanup: relay through 1 (%s)", rdag_last_error());
		rdag_future_free(f);
		ft_phase(w, "kill_cleanup: the kill and the release");
		ask_kill(w);
		release_ctx(w, ctx, "kill_cleanup");
		w->board->done = 1;
	} else if (w->rank != w->victim) {
		uint64_t dl = mp_deadline(w->deadline_ns, 60);

		ft_phase(w, "kill_cleanup: waiting for 0");
		while (!w->board->done && mp_wait_until(dl))
			;
	}
}

/* 1 once process pid is stopped (state T in /proc/<pid>/stat), 0 if not yet, -1 unreadable. */
static int is_stopped(pid_t pid)
{
	char path[64], buf[256], *p;
	FILE *f;
	size_t n;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	f = fopen(path, "r");
	if (!f)
		return -1;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = 0;
	p = strrchr(buf, ')'); /* "pid (comm) S ..." */
	return p && p[1] == ' ' && p[2] == 'T' ? 1 : 0;
}

static void sc_stop(struct ft_worker *w)
{
	rdag_future_t *fs[FT_PENDING] = {NULL};
	const size_t len = (size_t)1 << 20;
	uint8_t *buf;
	struct rdag_tensor t;
	int64_t shape[1] = {(int64_t)len};
	uint64_t ctx;
	size_t regs;

	if (w->rank != 0)
		return;
	buf = malloc(len);
	if (!buf) {
		ft_fail(w, __FILE__, __LINE__, "stop: out of memory");
		return;
	}
	mp_fill(buf, len, 11);
	rdag_tensor_init(&t, buf, RDAG_U8, 1, shape);
	ft_phase(w, "stop: calls pending on a stopped worker");
	ctx = new_ctx(w);
	regs = regs_in_use(w);
	CHECK_RC(w, rdag_rpc_async(w->a, (uint32_t)w->victim, "stop", &(struct rdag_msg){0}, NULL, &fs[0]),
		 0, "stop: the call that stops it");
	{
		uint64_t dl = mp_deadline(w->deadline_ns, 30);
		int st;

		while ((st = is_stopped(w->board->pid[w->victim])) == 0 && mp_wait_until(dl))
			;
		CHECK(w, st == 1, "stop: the victim (pid %d) did not stop", (int)w->board->pid[w->victim]);
		w->board->fault_ns = mp_now_ns(); /* the fault: from now on it reads nothing */
	}
	for (int i = 1; i < FT_PENDING; i++)
		CHECK_RC(w, rdag_rpc_async(w->a, (uint32_t)w->victim, "echo",
					   &(struct rdag_msg){.payload = &i, .payload_len = sizeof(i),
							      .tensors = &t, .ntensors = 1},
					   NULL, &fs[i]),
			 0, "stop: call %d", i);
	wait_dead(w, fs, FT_PENDING, &w->board->fault_ns, "stop");
	call_dead(w, "stop: a later call");
	printf("stop: %zu registrations in use with the victim stopped, %zu before\n", regs_in_use(w), regs);
	ask_kill(w); /* the stopped process goes */
	if (w->cfg->prov && strcmp(w->cfg->prov, "shm") == 0) {
		/*
		 * libfabric 1.17's shm never completes a send whose receiver stopped (nor, once it is
		 * killed, reports an error): the xport keeps that op's registration until the agent
		 * closes (checked there: fab_get_live). docs/reliability.md, "Failure model".
		 */
		uint64_t dl = mp_deadline(w->deadline_ns, 3);

		while (regs_in_use(w) > regs && mp_wait_until(dl))
			;
		printf("stop: shm: %zu registrations still in use 3 s after the kill, %zu before "
		       "(held until rdag_agent_close)\n", regs_in_use(w), regs);
	} else {
		check_regs(w, regs, "stop");
	}
	release_ctx(w, ctx, "stop");
	free(buf);
}

static int link_set(struct ft_worker *w, const char *state)
{
	char cmd[256];
	int rc;

	snprintf(cmd, sizeof(cmd), "ip -n %s link set dev %s %s", w->nn->ns[1], w->nn->ifc[1], state);
	rc = system(cmd);
	if (rc != 0)
		ft_fail(w, __FILE__, __LINE__, "\"%s\" failed (%d)", cmd, rc);
	return rc;
}

/* link_cut and link_blip: both sides call each other across the link while it is down. */
static void sc_link(struct ft_worker *w, bool blip)
{
	const char *what = blip ? "link_blip" : "link_cut";
	rdag_future_t *fs[FT_PENDING] = {NULL};
	int peer = w->rank == 0 ? w->victim : 0;
	uint64_t ctx = 0, dl = mp_deadline(w->deadline_ns, 60);
	size_t regs;
	int rc;

	if (w->rank != 0 && w->rank != w->victim)
		return;
	/* Only rank 0 calls in a context (the victim's calls are plain). */
	if (w->rank == 0)
		ctx = new_ctx(w);
	rc = rdag_rpc_sync(w->a, (uint32_t)peer, "echo", &(struct rdag_msg){.payload = "hi", .payload_len = 2},
			   NULL, &fs[0]);
	CHECK_RC(w, rc, 0, "%s: a call before the cut", what);
	rdag_future_free(fs[0]);
	fs[0] = NULL;
	regs = regs_in_use(w);
	ft_barrier(w, "before the cut");
	if (w->rank == 0) {
		ft_phase(w, "%s: cutting the link", what);
		link_set(w, "down");
		w->board->fault_ns = mp_now_ns();
	}
	while (!w->board->fault_ns && mp_wait_until(dl))
		;
	ft_phase(w, "%s: calls across the cut link", what);
	for (int i = 0; i < FT_PENDING; i++)
		CHECK_RC(w, rdag_rpc_async(w->a, (uint32_t)peer, "echo",
					   &(struct rdag_msg){.payload = &i, .payload_len = sizeof(i)}, NULL,
					   &fs[i]),
			 0, "%s: call %d", what, i);
	if (blip) {
		if (w->rank == 0) {
			/* the outage's length is the fault itself, not a synchronisation */
			struct timespec ts = {0, FT_BLIP_MS * 1000000L};

			nanosleep(&ts, NULL);
			link_set(w, "up");
		}
		for (int i = 0; i < FT_PENDING; i++) {
			int got = -1;
			struct rdag_msg res;

			rc = rdag_future_wait(fs[i], 30000);
			CHECK_RC(w, rc, 0, "%s: call %d across the blip (%s)", what, i, rdag_future_error(fs[i]));
			if (rc == 0 && rdag_future_result(fs[i], &res) == 0 && res.payload_len == sizeof(got))
				memcpy(&got, res.payload, sizeof(got));
			CHECK(w, got == i, "%s: call %d came back as %d", what, i, got);
			rdag_future_free(fs[i]);
			fs[i] = NULL;
		}
		printf("%s: rank %d: %d calls made during a %d ms outage completed %llu ms after the cut\n",
		       what, w->rank, FT_PENDING, FT_BLIP_MS, (unsigned long long)ms_since(w->board->fault_ns));
		rc = rdag_rpc_sync(w->a, (uint32_t)peer, "echo", &(struct rdag_msg){.payload = "hi", .payload_len = 2},
				   NULL, &fs[0]);
		CHECK_RC(w, rc, 0, "%s: a call after the link came back", what);
		rdag_future_free(fs[0]);
		fs[0] = NULL;
	} else {
		int save = w->victim;

		w->victim = peer; /* what wait_dead and call_dead name */
		wait_dead(w, fs, FT_PENDING, &w->board->fault_ns, what);
		/* The bootstrap's connection crosses the same link: no barrier until it is back. */
		if (w->rank == 0) {
			while (!w->board->seen_dead && mp_wait_until(dl))
				;
			link_set(w, "up");
		} else {
			w->board->seen_dead = 1;
		}
		ft_barrier(w, "the link is back");
		/* A peer declared dead stays dead: the transport does not bring it back. */
		w->board->fault_ns = mp_now_ns(); /* call_dead's bound: from now */
		call_dead(w, "link_cut: a call after the link came back");
		w->victim = save;
	}
	check_regs(w, regs, what);
	if (w->rank == 0)
		release_ctx(w, ctx, what);
	ft_barrier(w, "end of the link scenario");
	/*
	 * link_cut: rank 0's context on the victim got no cleanup (rank 0 skipped a peer dead to it);
	 * the victim released it when it declared rank 0 dead (the final checks: no context left).
	 */
}

static void sc_link_cut(struct ft_worker *w)
{
	sc_link(w, false);
}

static void sc_link_blip(struct ft_worker *w)
{
	sc_link(w, true);
}

enum { FT_KILLS = 1, FT_NETNS = 2 };

static const struct {
	const char *name;
	void (*fn)(struct ft_worker *w);
	int min_n;
	int flags;
} scenarios[] = {
	{"kill_forward", sc_kill_forward, 2, FT_KILLS},
	{"kill_reply", sc_kill_reply, 2, FT_KILLS},
	{"kill_gpu_reply", sc_kill_gpu_reply, 2, FT_KILLS},
	{"kill_grad", sc_kill_grad, 2, FT_KILLS},
	{"kill_cleanup", sc_kill_cleanup, 3, FT_KILLS},
	{"stop", sc_stop, 2, FT_KILLS},
	{"link_cut", sc_link_cut, 2, FT_NETNS},
	{"link_blip", sc_link_blip, 2, FT_NETNS},
};

/* ---- the worker ------------------------------------------------------------------------------ */

static int enter_netns(const char *ns)
{
	char path[128];
	int fd, rc;

	snprintf(path, sizeof(path), "/var/run/netns/%s", ns);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	rc = setns(fd, CLONE_NEWNET);
	close(fd);
	return rc;
}

/* Rank 0 in netns mode serves the bootstrap on addrA:port (the parent's socket is on 127.0.0.1). */
static int listen_on(const char *addr, int port)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	int fd, one = 1;

	if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1)
		return -1;
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) || listen(fd, 64)) {
		close(fd);
		return -1;
	}
	return fd;
}

static int open_agent(struct ft_worker *w, int lfd, int port)
{
	struct rdag_agent_opts o;
	char token[64];
	int rc;

	unsetenv("RDAG_WORKER_NAME");
	rdag_agent_opts_init(&o);
	o.rank = w->rank;
	o.world_size = w->world;
	o.master_addr = w->nn->on ? w->nn->addr : "127.0.0.1";
	o.master_port = port;
	snprintf(token, sizeof(token), "faults-%d", (int)getppid());
	o.job_token = token;
	o.listen_fd = w->rank == 0 ? lfd : -1;
	o.progress = RDAG_PROGRESS_THREAD;
	o.threads = 4;
	o.local_only = 1;
	rc = rdag_agent_open(&o, &w->a);
	if (rc) {
		fprintf(stderr, "rank %d: rdag_agent_open: %s: %s\n", w->rank, rdag_strerror(rc),
			rdag_last_error());
		return mp_open_failed(rc);
	}
	return 0;
}

static int worker(const struct mp_cfg *cfg, void *board, int rank, int lfd, int port, int ready_fd)
{
	struct ft_worker *w;
	struct fab_live live;
	const char *name;
	static bool fds0[FT_MAXFD];
	int rc, ret, left, lib;
	bool clean_end; /* no worker dies: a closing barrier */

	w = calloc(1, sizeof(*w));
	if (!w)
		return 1;
	w->rank = rank;
	w->world = cfg->n;
	w->victim = cfg->n - 1;
	w->cfg = cfg;
	w->board = board;
	w->nn = &g_nn;
	w->ready_fd = ready_fd;
	w->board->pid[rank] = getpid();
	w->deadline_ns = mp_worker_deadline(cfg->timeout_s, 10);
	pthread_mutex_init(&w->lock, NULL);
	clean_end = (scenarios[cfg->index].flags & FT_KILLS) == 0;
	mp_use_provider(cfg->prov);
	setenv("RDAG_PEER_TIMEOUT_MS", "2000", 1);
	if (g_nn.on) {
		int side = rank == w->victim ? 1 : 0;

		if (side == 1 && enter_netns(g_nn.ns[1])) {
			fprintf(stderr, "rank %d: entering %s: %s\n", rank, g_nn.ns[1], strerror(errno));
			ret = 1;
			goto out_free;
		}
		setenv("FI_TCP_IFACE", g_nn.ifc[side], 1);
		if (rank == 0) {
			close(lfd);
			lfd = listen_on(g_nn.addr, port);
			if (lfd < 0) {
				fprintf(stderr, "rank 0: listening on %s:%d: %s\n", g_nn.addr, port,
					strerror(errno));
				ret = 1;
				goto out_free;
			}
		}
	}
	if (rank != 0) {
		close(lfd);
		lfd = -1;
	}
	/* The baseline: what is open before the agent (rank 0's listening socket goes to it). */
	list_fds(fds0);
	ft_phase(w, "rdag_graph_create");
	rc = rdag_graph_create(&w->g);
	if (rc) {
		fprintf(stderr, "rank %d: rdag_graph_create: %s\n", rank, rdag_last_error());
		ret = 1;
		goto out_free;
	}
	ft_phase(w, "rdag_agent_open");
	ret = open_agent(w, lfd, port);
	if (ret)
		goto out;
	rc = mp_register(w->a, fns, sizeof(fns) / sizeof(fns[0]), w, &name);
	CHECK_RC(w, rc, 0, "rdag_register %s", name);
	if (rc == 0) {
		ft_barrier(w, "start");
		ft_phase(w, "scenario %s", cfg->scenario);
		scenarios[cfg->index].fn(w);
		if (clean_end)
			ft_barrier(w, "end");
		ft_phase(w, "final checks");
		check_ctx_zero(w, "the end");
		CHECK(w, rdag_rref_count(w->a) == 0, "%zu RRefs left", rdag_rref_count(w->a));
	}
	ft_phase(w, "rdag_agent_close");
	rc = rdag_agent_close(w->a);
	w->a = NULL;
	/* With a peer dead (or declared dead), the closing meeting may fail: backward.h leaves it to us. */
	if (rc)
		printf("rank %d: rdag_agent_close after the fault: %s (%s) (accepted)\n", rank,
		       rdag_strerror(rc), rdag_last_error());
	left = fds_left(w, fds0, &lib);
	fab_get_live(&live);
	CHECK(w, left == 0, "%d fds left by the agent", left);
	CHECK(w, live.eps == 0 && live.mrs == 0,
	      "after rdag_agent_close: %ld fabric endpoints and %ld registrations left", live.eps, live.mrs);
	printf("rank %d: after close: %d fds left (and %d of the verbs libraries' device files), %ld "
	       "endpoints, %ld registrations\n", rank, left, lib, live.eps, live.mrs);
	ret = atomic_load(&w->fail) ? 1 : w->skipped ? MP_SKIP : 0;
	if (!ret && rank == 0)
		mp_passed(cfg);
out:
	rdag_graph_destroy(w->g);
out_free:
	while (w->nodes) {
		struct ft_node *nd = w->nodes;

		w->nodes = nd->next;
		free(nd);
	}
	pthread_mutex_destroy(&w->lock);
	free(w);
	return ret;
}

/* RDAG_TEST_NETNS="<nsA> <nsB> <ifA> <ifB> <addrA>" (tests/faults/netns-run.sh): 0, 1 absent, -1 bad. */
static int parse_netns(void)
{
	const char *v = getenv("RDAG_TEST_NETNS");

	if (!v || !*v)
		return 1;
	if (sscanf(v, "%63s %63s %31s %31s %63s", g_nn.ns[0], g_nn.ns[1], g_nn.ifc[0], g_nn.ifc[1],
		   g_nn.addr) != 5)
		return -1;
	g_nn.on = true;
	return 0;
}

int main(int argc, char **argv)
{
	struct ft_board *board;
	struct mp_cfg cfg;
	int nn;

	if (mp_select(argc, argv, FT_MAXW, MP_TABLE(scenarios), &cfg))
		return 2;
	nn = parse_netns();
	if (nn < 0) {
		fprintf(stderr, "faults_mp: RDAG_TEST_NETNS is not \"<nsA> <nsB> <ifA> <ifB> <addrA>\"\n");
		return 2;
	}
	if ((scenarios[cfg.index].flags & FT_NETNS) && !g_nn.on) {
		fprintf(stderr, "faults_mp: %s runs across network namespaces (tests/faults/netns-run.sh)\n",
			cfg.scenario);
		return 2;
	}
	if (g_nn.on && enter_netns(g_nn.ns[0])) {
		fprintf(stderr, "faults_mp: entering %s: %s\n", g_nn.ns[0], strerror(errno));
		return 1;
	}
	if (scenarios[cfg.index].flags & FT_KILLS)
		cfg.victim = cfg.n - 1;
	if (getenv("RDAG_TEST_BIG_MIB")) {
		long mib = atol(getenv("RDAG_TEST_BIG_MIB"));

		if (mib < 4 || mib > 1024) {
			fprintf(stderr, "faults_mp: RDAG_TEST_BIG_MIB=%ld: 4..1024 (MiB)\n", mib);
			return 2;
		}
		ft_big = (size_t)mib << 20;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	board = mp_shared_map(sizeof(*board));
	if (!board) {
		perror("faults_mp: set-up");
		return 1;
	}
	return mp_run(&(struct mp_run){.cfg = &cfg, .prog = "faults_mp", .worker = worker, .arg = board,
				       .ready_pipe = true, .kill_ns = &board->kill_ns,
				       .victim_must_ask = cfg.victim >= 0, .phase = board->phase});
}
