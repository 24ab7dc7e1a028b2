/* Gradient buffers with reuse of the large ones (see gbuf.h). */
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/envsize.h"
#include "util/gbuf.h"
#include "util/log.h"

#define GBUF_SLOTS 32
#define DEF_LIMIT ((size_t)256 << 20)

struct gbuf_slot {
	void *ptr;
	size_t cap; /* malloc_usable_size(ptr) */
};

static struct {
	pthread_mutex_t lock;
	pthread_once_t once;
	size_t limit, bytes;
	unsigned users;                 /* open agents: nothing is kept without one */
	unsigned n;                     /* slots[0..n): oldest first */
	struct gbuf_slot slots[GBUF_SLOTS];
	uint64_t hits, misses, kept, dropped;
} gb = {
	.lock = PTHREAD_MUTEX_INITIALIZER,
	.once = PTHREAD_ONCE_INIT,
};

/* 256 MiB, but at most a sixteenth of the machine's memory */
static size_t default_limit(void)
{
	long pages = sysconf(_SC_PHYS_PAGES), pg = sysconf(_SC_PAGESIZE);
	size_t sixteenth;

	if (pages <= 0 || pg <= 0)
		return DEF_LIMIT;
	sixteenth = (size_t)pages / 16 * (size_t)pg;
	return sixteenth < DEF_LIMIT ? sixteenth : DEF_LIMIT;
}

static void gbuf_init(void)
{
	gb.limit = rdag_env_size("RDAG_GRAD_CACHE", default_limit(), 0, (size_t)1 << 40);
}

/* Removes slot i, keeping the others in age order. Lock held. */
static void *take_slot(unsigned i)
{
	void *p = gb.slots[i].ptr;

	gb.bytes -= gb.slots[i].cap;
	memmove(&gb.slots[i], &gb.slots[i + 1], (gb.n - i - 1) * sizeof(gb.slots[0]));
	gb.n--;
	return p;
}

/* Moves every kept buffer into old (GBUF_SLOTS room), to be freed outside the lock. Lock held. */
static unsigned take_all(void **old)
{
	unsigned nold = 0;

	while (gb.n)
		old[nold++] = take_slot(0);
	return nold;
}

static void free_all(void **old, unsigned nold)
{
	for (unsigned i = 0; i < nold; i++)
		free(old[i]);
}

void *gbuf_alloc(size_t nb, bool zero)
{
	void *p = NULL;

	if (!nb)
		nb = 1;
	if (nb < GBUF_MIN || nb > SIZE_MAX / 2) /* the second: no fit arithmetic to overflow */
		return zero ? calloc(1, nb) : malloc(nb);
	pthread_once(&gb.once, gbuf_init);
	pthread_mutex_lock(&gb.lock);
	{
		size_t best = SIZE_MAX, most = nb + nb / 4;
		unsigned bi = 0;

		/* the tightest fit; the newest of equals (its pages are the likeliest in cache) */
		for (unsigned i = 0; i < gb.n; i++) {
			size_t c = gb.slots[i].cap;

			if (c >= nb && c <= most && c <= best) {
				best = c;
				bi = i;
			}
		}
		if (best != SIZE_MAX) {
			p = take_slot(bi);
			gb.hits++;
		} else {
			gb.misses++;
		}
	}
	pthread_mutex_unlock(&gb.lock);
	if (p) {
		if (zero)
			memset(p, 0, nb);
		return p;
	}
	return zero ? calloc(1, nb) : malloc(nb);
}

void gbuf_free(void *p)
{
	size_t cap;
	void *old[GBUF_SLOTS];
	unsigned nold = 0;

	if (!p)
		return;
	cap = malloc_usable_size(p);
	if (cap < GBUF_MIN) {
		free(p);
		return;
	}
	pthread_once(&gb.once, gbuf_init);
	pthread_mutex_lock(&gb.lock);
	if (cap > gb.limit || !gb.users) {
		gb.dropped++;
		pthread_mutex_unlock(&gb.lock);
		free(p);
		return;
	}
	/* room: the oldest go (freed outside the lock) */
	while (gb.n && (gb.n == GBUF_SLOTS || gb.bytes + cap > gb.limit))
		old[nold++] = take_slot(0);
	gb.slots[gb.n].ptr = p;
	gb.slots[gb.n].cap = cap;
	gb.n++;
	gb.bytes += cap;
	gb.kept++;
	gb.dropped += nold;
	pthread_mutex_unlock(&gb.lock);
	free_all(old, nold);
}

void gbuf_use(bool on)
{
	void *old[GBUF_SLOTS];
	unsigned nold = 0;
	bool last;

	pthread_mutex_lock(&gb.lock);
	if (on)
		gb.users++;
	else if (gb.users)
		gb.users--;
	last = !on && !gb.users;
	if (last)
		nold = take_all(old);
	pthread_mutex_unlock(&gb.lock);
	free_all(old, nold);
	if (last) {
		struct gbuf_stats st;

		gbuf_stats(&st);
		if (st.hits + st.misses)
			LOG_DEBUG("gradient buffers: %llu reused, %llu new, %llu freed for want of "
				  "room (RDAG_GRAD_CACHE %zu bytes)", (unsigned long long)st.hits,
				  (unsigned long long)st.misses, (unsigned long long)st.dropped,
				  st.limit);
	}
}

void gbuf_drain(void)
{
	void *old[GBUF_SLOTS];
	unsigned nold;

	pthread_mutex_lock(&gb.lock);
	nold = take_all(old);
	pthread_mutex_unlock(&gb.lock);
	free_all(old, nold);
}

void gbuf_stats(struct gbuf_stats *s)
{
	pthread_once(&gb.once, gbuf_init);
	pthread_mutex_lock(&gb.lock);
	s->hits = gb.hits;
	s->misses = gb.misses;
	s->kept = gb.kept;
	s->dropped = gb.dropped;
	s->bytes = gb.bytes;
	s->limit = gb.limit;
	s->count = gb.n;
	pthread_mutex_unlock(&gb.lock);
}
