/* Profiling of remote calls: the callee's per-thread session, the caller's events by profiling id. */
#include <stdlib.h>
#include <string.h>

#include "agent/agent_int.h"
#include "util/err.h"

static _Thread_local struct ag_prof_sess *sess;

struct ag_prof_sess *ag_prof_swap(struct ag_prof_sess *s)
{
	struct ag_prof_sess *prev = sess;

	sess = s;
	return prev;
}

void ag_prof_sess_free(struct ag_prof_sess *s)
{
	for (uint32_t i = 0; i < s->n; i++)
		free((void *)s->ev[i].name.ptr);
	free(s->ev);
	s->ev = NULL;
	s->n = s->cap = 0;
}

int ag_prof_add(struct ag_prof_sess *s, const char *name, uint64_t start, uint64_t end)
{
	size_t len = strlen(name);
	char *copy;

	if (len == 0 || len > WIRE_MAX_NAME || start > end)
		return err_set(RDAG_EINVAL, "profiling event: name of 1..%u bytes and start <= end",
			       WIRE_MAX_NAME);
	if (s->n >= WIRE_MAX_EVENTS)
		return err_set(RDAG_ENOSPC, "at most %u profiling events per call", WIRE_MAX_EVENTS);
	if (s->n == s->cap) {
		uint32_t ncap = s->cap ? 2 * s->cap : 8;
		struct wire_prof_event *ne = realloc(s->ev, ncap * sizeof(*ne));

		if (!ne)
			return err_set(RDAG_ENOMEM, "out of memory for a profiling event");
		s->ev = ne;
		s->cap = ncap;
	}
	copy = strdup(name);
	if (!copy)
		return err_set(RDAG_ENOMEM, "out of memory for a profiling event");
	memset(&s->ev[s->n], 0, sizeof(s->ev[s->n]));
	s->ev[s->n].name.ptr = copy;
	s->ev[s->n].name.len = (uint32_t)len;
	s->ev[s->n].start_ns = start;
	s->ev[s->n].end_ns = end;
	s->ev[s->n].thread_id = ag_thread_id();
	s->ev[s->n].device.type = WIRE_DEV_CPU;
	s->n++;
	return 0;
}

int rdag_prof_record(const char *name, uint64_t start_ns, uint64_t end_ns)
{
	if (!sess)
		return err_set(RDAG_ENOENT, "rdag_prof_record: the current call is not profiled");
	if (!name)
		return err_set(RDAG_EINVAL, "rdag_prof_record: NULL name");
	return ag_prof_add(sess, name, start_ns, end_ns);
}

void ag_prof_store(rdag_agent_t *a, uint64_t prof_id, uint16_t worker, const struct wire_event_list *l)
{
	struct wire_event_iter it;
	struct wire_prof_event ev;
	struct ag_prof_list *pl;

	pthread_mutex_lock(&a->prof_lock);
	pl = u64map_get(&a->prof, prof_id);
	if (!pl) {
		pl = calloc(1, sizeof(*pl));
		if (!pl || u64map_put(&a->prof, prof_id, pl)) {
			free(pl);
			pthread_mutex_unlock(&a->prof_lock);
			return;
		}
	}
	wire_events_begin(l, &it);
	while (wire_event_next(&it, &ev)) {
		char *name;

		if (pl->n == pl->cap) {
			size_t ncap = pl->cap ? 2 * pl->cap : 16;
			struct rdag_prof_event *ne = realloc(pl->ev, ncap * sizeof(*ne));

			if (!ne)
				break;
			pl->ev = ne;
			pl->cap = ncap;
		}
		name = malloc(ev.name.len + 1);
		if (!name)
			break;
		memcpy(name, ev.name.ptr, ev.name.len);
		name[ev.name.len] = 0;
		pl->ev[pl->n].name = name;
		pl->ev[pl->n].start_ns = ev.start_ns;
		pl->ev[pl->n].end_ns = ev.end_ns;
		pl->ev[pl->n].thread_id = ev.thread_id;
		pl->ev[pl->n].worker = worker;
		pl->n++;
	}
	pthread_mutex_unlock(&a->prof_lock);
}

int rdag_prof_events(rdag_agent_t *a, uint64_t prof_id, struct rdag_prof_event *out, size_t cap,
		     size_t *n)
{
	struct ag_prof_list *pl;

	if (!a || !n || (cap && !out))
		return err_set(RDAG_EINVAL, "rdag_prof_events: NULL argument");
	pthread_mutex_lock(&a->prof_lock);
	pl = u64map_get(&a->prof, prof_id);
	*n = pl ? pl->n : 0;
	if (pl && cap)
		memcpy(out, pl->ev, (pl->n < cap ? pl->n : cap) * sizeof(*out));
	pthread_mutex_unlock(&a->prof_lock);
	return 0;
}

static void list_free(struct ag_prof_list *pl)
{
	for (size_t i = 0; i < pl->n; i++)
		free((void *)pl->ev[i].name);
	free(pl->ev);
	free(pl);
}

void rdag_prof_clear(rdag_agent_t *a, uint64_t prof_id)
{
	struct ag_prof_list *pl;

	if (!a)
		return;
	pthread_mutex_lock(&a->prof_lock);
	pl = u64map_del(&a->prof, prof_id);
	pthread_mutex_unlock(&a->prof_lock);
	if (pl)
		list_free(pl);
}

void ag_prof_free_all(rdag_agent_t *a)
{
	size_t i = 0;
	uint64_t k;
	void *v;

	while (u64map_next(&a->prof, &i, &k, &v))
		list_free(v);
	u64map_fini(&a->prof);
}
