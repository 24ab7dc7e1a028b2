/* The agent: open (bootstrap, fabric, transport, threads), progress thread, peer failures, close. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "agent/agent_int.h"
#include "agent/agent_test.h"
#include "bootstrap/boot.h"
#include "fabric/fabric.h"
#include "util/envsize.h"
#include "util/err.h"
#include "util/gbuf.h"
#include "util/log.h"

#define DEF_THREADS 4
#define MAX_THREADS 256
#define CLOSE_DRAIN_MS 30000

uint64_t ag_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t ag_thread_id(void)
{
	return (uint64_t)syscall(SYS_gettid);
}

uint64_t ag_hash_name(const char *s, size_t len)
{
	uint64_t h = 0xcbf29ce484222325ull;

	for (size_t i = 0; i < len; i++) {
		h ^= (uint8_t)s[i];
		h *= 0x100000001b3ull;
	}
	return h;
}

void rdag_agent_opts_init(struct rdag_agent_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->rank = -1;
	o->world_size = -1;
	o->master_port = -1;
	o->listen_fd = -1;
	o->progress = -1;
}

/*
 * The contexts the dead peer created here will never get its cleanup: release them locally (every
 * other survivor sees the death through its own keepalives and does the same). A pass still
 * running in one keeps its reference until it ends.
 */
static void release_contexts_of(rdag_agent_t *a, uint32_t peer)
{
	struct ctx *cs[64];
	size_t n, total = 0;

	if (peer > UINT16_MAX)
		return;
	while ((n = ctxmgr_take_created_by(&a->cm, (uint16_t)peer, cs, 64)) > 0) {
		for (size_t i = 0; i < n; i++)
			ctx_put(cs[i]);
		total += n;
	}
	if (total)
		LOG_WARN("agent: released %zu context(s) created by dead worker %u", total, peer);
}

static void on_peer_dead(void *arg, uint32_t peer, int code, const char *why)
{
	rdag_agent_t *a = arg;

	LOG_WARN("agent: %s", why);
	ag_fail_peer(a, peer, code, why);
	release_contexts_of(a, peer);
}

static void *progress_main(void *arg)
{
	rdag_agent_t *a = arg;

	while (!atomic_load(&a->stop)) {
		int rc = xport_progress(a->x, 100);

		if (rc < 0) {
			LOG_ERROR("agent: progress failed: %s (%s); the progress thread stops",
				  rdag_strerror(rc), rdag_last_error());
			ag_fail_peer(a, UINT32_MAX, rc, "the transport failed");
			break;
		}
	}
	return NULL;
}

static int start_progress(rdag_agent_t *a)
{
	int rc;

	atomic_store(&a->stop, false);
	rc = pthread_create(&a->progress_thr, NULL, progress_main, a);
	if (rc)
		return err_set(RDAG_ENOMEM, "cannot start the progress thread: %s", strerror(rc));
	pthread_setname_np(a->progress_thr, "rdag-progress");
	a->progress_running = true;
	return 0;
}

static void stop_progress(rdag_agent_t *a)
{
	if (!a->progress_running)
		return;
	atomic_store(&a->stop, true);
	pthread_join(a->progress_thr, NULL);
	a->progress_running = false;
}

static int env_mode(const char *v, int *mode)
{
	if (!v || !*v || strcmp(v, "thread") == 0)
		*mode = RDAG_PROGRESS_THREAD;
	else if (strcmp(v, "manual") == 0)
		*mode = RDAG_PROGRESS_MANUAL;
	else
		return -1;
	return 0;
}

static int env_threads(void)
{
	const char *v = getenv("RDAG_HANDLER_THREADS");
	char *end;
	long n;

	if (!v || !*v)
		return DEF_THREADS;
	n = strtol(v, &end, 10);
	if (*end || n < 1 || n > MAX_THREADS) {
		LOG_WARN("RDAG_HANDLER_THREADS=%s is not 1..%d: using %d", v, MAX_THREADS, DEF_THREADS);
		return DEF_THREADS;
	}
	return (int)n;
}

static void agent_free(rdag_agent_t *a)
{
	size_t i = 0;
	uint64_t k;
	void *v;

	ag_rref_free_all(a);
	ag_prof_free_all(a);
	ctxmgr_fini(&a->cm);
	while (u64map_next(&a->reg, &i, &k, &v)) {
		struct ag_reg *r = v;

		while (r) {
			struct ag_reg *next = r->next;

			free(r);
			r = next;
		}
	}
	u64map_fini(&a->reg);
	u64map_fini(&a->pend);
	pthread_rwlock_destroy(&a->reg_lock);
	pthread_mutex_destroy(&a->pend_lock);
	pthread_mutex_destroy(&a->rref_lock);
	pthread_mutex_destroy(&a->prof_lock);
	pthread_mutex_destroy(&a->devmap_lock);
	ag_nccl_fini(a);
	free(a->devmap);
	boot_close(a->b);
	free(a->gpu_path);
	free(a);
	gbuf_use(false);
}

/* xport's hint: calls of ours wait for answers, so progress should not nap. */
static int expecting_answers(void *arg)
{
	rdag_agent_t *a = arg;
	size_t n;

	pthread_mutex_lock(&a->pend_lock);
	n = a->pend.count;
	pthread_mutex_unlock(&a->pend_lock);
	return n != 0;
}

int rdag_agent_open(const struct rdag_agent_opts *uo, rdag_agent_t **out)
{
	struct rdag_agent_opts o;
	struct boot_opts bo;
	struct fab_open_opts fo;
	struct xport_opts xo;
	struct fab_ep *ep = NULL;
	rdag_agent_t *a;
	int rc, threads;

	if (!out)
		return err_set(RDAG_EINVAL, "rdag_agent_open: NULL out");
	*out = NULL;
	if (uo)
		o = *uo;
	else
		rdag_agent_opts_init(&o);
	a = calloc(1, sizeof(*a));
	if (!a)
		return err_set(RDAG_ENOMEM, "rdag_agent_open: out of memory");
	pthread_rwlock_init(&a->reg_lock, NULL);
	pthread_mutex_init(&a->pend_lock, NULL);
	pthread_mutex_init(&a->rref_lock, NULL);
	pthread_mutex_init(&a->prof_lock, NULL);
	pthread_mutex_init(&a->devmap_lock, NULL);
	ag_nccl_init(a);
	gbuf_use(true); /* large gradient buffers are kept for reuse while an agent is open */
	atomic_init(&a->next_req, 1);
	atomic_init(&a->next_rref, 0);
	atomic_init(&a->serving, 0);
	atomic_init(&a->stop, false);

	if (o.progress < 0) {
		const char *v = getenv("RDAG_PROGRESS");

		if (env_mode(v, &a->mode)) {
			LOG_WARN("RDAG_PROGRESS=%s is not thread or manual: using thread", v);
			a->mode = RDAG_PROGRESS_THREAD;
		}
	} else if (o.progress == RDAG_PROGRESS_THREAD || o.progress == RDAG_PROGRESS_MANUAL) {
		a->mode = o.progress;
	} else {
		rc = err_set(RDAG_EINVAL, "rdag_agent_open: progress mode %d is not "
			     "RDAG_PROGRESS_THREAD or RDAG_PROGRESS_MANUAL", o.progress);
		goto fail_free;
	}
	threads = o.threads > 0 ? o.threads : env_threads();
	if (threads > MAX_THREADS)
		threads = MAX_THREADS;

	boot_opts_init(&bo);
	bo.rank = o.rank;
	bo.world_size = o.world_size;
	if (o.name)
		snprintf(bo.name, sizeof(bo.name), "%s", o.name);
	if (o.master_addr)
		snprintf(bo.master_addr, sizeof(bo.master_addr), "%s", o.master_addr);
	bo.master_port = o.master_port;
	if (o.job_token) {
		snprintf(bo.job_token, sizeof(bo.job_token), "%s", o.job_token);
		bo.job_token_set = 1;
	}
	bo.listen_fd = o.listen_fd;
	rc = boot_open(&bo, &a->b);
	if (rc)
		goto fail_free;
	a->id = (uint16_t)boot_rank(a->b);
	a->world = boot_world(a->b);
	log_set_rank(a->id);
	ctxmgr_init(&a->cm, a->id);
	rdag_agent_set_engine(a, NULL);

	fab_opts_from_env(&fo);
	xport_opts_init(&xo);
	xo.on_recv = ag_on_recv;
	xo.recv_arg = a;
	xo.on_peer_dead = on_peer_dead;
	xo.peer_arg = a;
	xo.expecting = expecting_answers;
	xo.poll_extra = ag_nccl_poll; /* device transfers by NCCL: events polled with the queue */
	xo.poll_arg = a;
	xo.expect_arg = a;
	xo.offer = ag_gpu_offer(a);
	xport_fab_opts(&xo, a->world, a->id, &fo);
	a->nccl_join_ms = xo.peer_timeout_ms > 0 ? xo.peer_timeout_ms : 30000;
	/* A live peer's transfer may be slow (big, or a sanitizer build): its own, longer bound. */
	a->nccl_timeout_ms = (int)rdag_env_size("RDAG_NCCL_TIMEOUT_MS", 600000, 1, 86400000);
	fo.local_only = o.local_only || boot_all_local(a->b);
	rc = fab_open(&fo, &ep);
	if (rc)
		goto fail_boot;
	rc = xport_open(&xo, a->b, ep, &a->x);
	if (rc)
		goto fail_boot;
	rc = ag_gpu_select(a);
	if (rc)
		goto fail_xport;
	rc = pool_start(&a->pool, threads, "rdag-handler");
	if (rc)
		goto fail_xport;
	if (a->mode == RDAG_PROGRESS_THREAD) {
		rc = start_progress(a);
		if (rc)
			goto fail_pool;
	}
	LOG_INFO("agent: worker %u (%s) of %u is up: %d handler threads, %s progress", a->id,
		 boot_name(a->b, a->id), a->world, threads,
		 a->mode == RDAG_PROGRESS_THREAD ? "thread" : "manual");
	*out = a;
	return 0;
fail_pool:
	pool_stop(&a->pool);
fail_xport:
	xport_close(a->x);
fail_boot:
	{
		/* Keep the reason: the teardown below may log and overwrite it. */
		char why[512];

		snprintf(why, sizeof(why), "%s", rdag_last_error());
		agent_free(a);
		return err_set(rc, "%s", why);
	}
fail_free:
	agent_free(a);
	return rc;
}

int rdag_agent_close(rdag_agent_t *a)
{
	uint64_t end;
	int rc;

	if (!a)
		return 0;
	/* Answer what we are serving first, so no caller waits on a reply that cannot come. */
	end = ag_now_ns() + (uint64_t)CLOSE_DRAIN_MS * 1000000u;
	while (atomic_load(&a->serving) > 0 && ag_now_ns() < end) {
		if (a->progress_running) {
			struct timespec ts = {0, 1000000};

			nanosleep(&ts, NULL);
		} else {
			xport_progress(a->x, 1);
		}
	}
	if (atomic_load(&a->serving) > 0)
		LOG_WARN("agent: closing with %d requests still being served",
			 atomic_load(&a->serving));
	/* Others may still call us until they are done too: keep progress going through the barrier. */
	if (!a->progress_running && start_progress(a))
		LOG_WARN("agent: no progress thread during close: %s", rdag_last_error());
	rc = boot_barrier(a->b);
	if (rc)
		LOG_WARN("agent: the closing barrier failed: %s", rdag_last_error());
	stop_progress(a);
	pool_stop(&a->pool);
	ag_nccl_fini(a); /* after the barrier: nobody sends to us by NCCL any more */
	xport_close(a->x);
	ag_fail_peer(a, UINT32_MAX, RDAG_ECANCELED, "the agent was closed");
	agent_free(a);
	return rc;
}

uint16_t rdag_agent_id(const rdag_agent_t *a)
{
	return a ? a->id : 0;
}

uint32_t rdag_agent_world(const rdag_agent_t *a)
{
	return a ? a->world : 0;
}

const char *rdag_worker_name(const rdag_agent_t *a, uint32_t id)
{
	return a ? boot_name(a->b, id) : NULL;
}

int rdag_worker_id(const rdag_agent_t *a, const char *name)
{
	if (!a || !name)
		return err_set(RDAG_EINVAL, "rdag_worker_id: NULL argument");
	for (uint32_t i = 0; i < a->world; i++)
		if (strcmp(boot_name(a->b, i), name) == 0)
			return (int)i;
	return err_set(RDAG_ENOENT, "no worker is called '%s'", name);
}

int rdag_agent_progress_mode(const rdag_agent_t *a)
{
	return a ? a->mode : RDAG_PROGRESS_THREAD;
}

int rdag_agent_progress(rdag_agent_t *a, int timeout_ms)
{
	if (!a)
		return err_set(RDAG_EINVAL, "rdag_agent_progress: NULL agent");
	return xport_progress(a->x, timeout_ms);
}

int agent_test_barrier(rdag_agent_t *a)
{
	bool started = false;
	int rc;

	/* In manual mode nobody would serve peers' calls while we wait here. */
	if (!a->progress_running) {
		if (start_progress(a))
			return RDAG_ENOMEM;
		started = true;
	}
	AG_TSAN_RELEASE(a);
	rc = boot_barrier(a->b);
	if (started)
		stop_progress(a);
	return rc;
}

void agent_test_set_id_counters(rdag_agent_t *a, uint64_t next_ctx_low, uint64_t next_msg_low)
{
	atomic_store(&a->cm.next_ctx, next_ctx_low);
	atomic_store(&a->cm.next_msg, next_msg_low);
}
