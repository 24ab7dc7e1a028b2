/* Handler pool: the threads that run registered functions and other requests that may block. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "agent/agent_int.h"
#include "util/err.h"
#include "util/log.h"

static _Thread_local struct ag_pool *mine;

static struct ag_job *pop(struct ag_pool *p)
{
	struct ag_job *j = p->head;

	if (j) {
		p->head = j->next;
		if (!p->head)
			p->tail = NULL;
	}
	return j;
}

/* Runs j with p->lock dropped around it (held on entry and on return). */
static void run_unlocked(struct ag_pool *p, struct ag_job *j)
{
	pthread_mutex_unlock(&p->lock);
	j->run(j);
	atomic_fetch_sub(&p->busy, 1);
	pthread_mutex_lock(&p->lock);
}

static void *thread_main(void *arg)
{
	struct ag_pool *p = arg;

	mine = p;
	pthread_mutex_lock(&p->lock);
	for (;;) {
		struct ag_job *j = pop(p);

		if (j) {
			run_unlocked(p, j);
			continue;
		}
		if (p->stop)
			break;
		p->idle++;
		pthread_cond_wait(&p->cond, &p->lock);
		p->idle--;
		if (p->idle_signaled > 0)
			p->idle_signaled--;
	}
	pthread_mutex_unlock(&p->lock);
	return NULL;
}

int pool_start(struct ag_pool *p, int nthreads, const char *name)
{
	memset(p, 0, sizeof(*p));
	pthread_mutex_init(&p->lock, NULL);
	pthread_cond_init(&p->cond, NULL);
	pthread_cond_init(&p->hcond, NULL);
	pthread_cond_init(&p->wcond, NULL);
	atomic_init(&p->busy, 0);
	p->threads = calloc((size_t)nthreads, sizeof(*p->threads));
	if (!p->threads)
		return err_set(RDAG_ENOMEM, "out of memory for %d handler threads", nthreads);
	for (int i = 0; i < nthreads; i++) {
		int rc = pthread_create(&p->threads[i], NULL, thread_main, p);

		if (rc) {
			pool_stop(p);
			return err_set(RDAG_ENOMEM, "cannot start handler thread %d: %s", i, strerror(rc));
		}
		p->nthreads++;
		{
			char tn[16];

			snprintf(tn, sizeof(tn), "%s%d", name, i);
			pthread_setname_np(p->threads[i], tn);
		}
	}
	return 0;
}

void pool_stop(struct ag_pool *p)
{
	if (!p->threads)
		return;
	pthread_mutex_lock(&p->lock);
	p->stop = true;
	pthread_cond_broadcast(&p->cond);
	pthread_cond_broadcast(&p->hcond);
	pthread_mutex_unlock(&p->lock);
	for (int i = 0; i < p->nthreads; i++)
		pthread_join(p->threads[i], NULL);
	free(p->threads);
	p->threads = NULL;
	pthread_cond_destroy(&p->cond);
	pthread_cond_destroy(&p->hcond);
	pthread_cond_destroy(&p->wcond);
	pthread_mutex_destroy(&p->lock);
}

void pool_push(struct ag_pool *p, struct ag_job *j)
{
	j->next = NULL;
	atomic_fetch_add(&p->busy, 1);
	pthread_mutex_lock(&p->lock);
	if (p->tail)
		p->tail->next = j;
	else
		p->head = j;
	p->tail = j;
	/*
	 * One thread is enough: an idle one, else one of the handlers waiting for a nested call
	 * (they run jobs while they wait, so all threads being such helpers cannot starve it).
	 * Waking every helper as well made each job wake all of them, for one to take it.
	 */
	if (p->idle > p->idle_signaled) {
		pthread_cond_signal(&p->cond);
		p->idle_signaled++;
	} else if (p->helpers_waiting) {
		pthread_cond_signal(&p->hcond);
	}
	pthread_mutex_unlock(&p->lock);
}

int pool_is_mine(struct ag_pool *p)
{
	return mine == p;
}

void pool_kick(struct ag_pool *p)
{
	/* A flag was set: wake its waiters, not the idle handler threads. */
	pthread_mutex_lock(&p->lock);
	pthread_cond_broadcast(&p->wcond);
	if (p->helpers_waiting)
		pthread_cond_broadcast(&p->hcond);
	pthread_mutex_unlock(&p->lock);
}

static void deadline_of(struct timespec *ts, int timeout_ms)
{
	clock_gettime(CLOCK_REALTIME, ts);
	ts->tv_sec += timeout_ms / 1000;
	ts->tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
	if (ts->tv_nsec >= 1000000000L) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000L;
	}
}

int pool_wait_flag(struct ag_pool *p, atomic_bool *flag, int timeout_ms, rdag_agent_t *a)
{
	return pool_wait_either(p, flag, NULL, timeout_ms, a);
}

/* Either flag set (or2 may be NULL); raise them with pool_kick. */
#define SET(f, g) (atomic_load(f) || ((g) && atomic_load(g)))

int pool_wait_either(struct ag_pool *p, atomic_bool *flag, atomic_bool *or2, int timeout_ms,
		     rdag_agent_t *a)
{
	uint64_t end = timeout_ms >= 0 ? ag_now_ns() + (uint64_t)timeout_ms * 1000000u : UINT64_MAX;
	bool manual = a->mode == RDAG_PROGRESS_MANUAL && !a->progress_running;
	bool helper = mine == p;
	int rc;

	while (!SET(flag, or2)) {
		uint64_t now = ag_now_ns();

		if (now >= end)
			return RDAG_ETIMEDOUT;
		if (manual) {
			/* Nobody else moves the transport: this wait does (and runs jobs in between). */
			int prc = xport_progress(a->x, 1);

			if (prc < 0)
				LOG_WARN("agent: progress failed while waiting: %s", rdag_strerror(prc));
			if (!helper)
				continue;
		}
		pthread_mutex_lock(&p->lock);
		while (!SET(flag, or2)) {
			struct ag_job *j = helper ? pop(p) : NULL;

			if (j) {
				run_unlocked(p, j);
				continue;
			}
			if (manual)
				break;
			{
				struct timespec ts;
				uint64_t left = end - ag_now_ns();
				int ms = end == UINT64_MAX || left > 100000000u ? 100 : (int)(left / 1000000u) + 1;

				deadline_of(&ts, ms);
				if (helper)
					p->helpers_waiting++;
				rc = pthread_cond_timedwait(helper ? &p->hcond : &p->wcond, &p->lock, &ts);
				if (helper)
					p->helpers_waiting--;
				if (rc == ETIMEDOUT && ag_now_ns() >= end)
					break;
			}
		}
		pthread_mutex_unlock(&p->lock);
	}
	return 0;
}
