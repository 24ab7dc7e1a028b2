/* Open-addressing hash map from 64-bit keys to pointers. */
#include <stdlib.h>

#include <rdag/error.h>

#include "util/u64map.h"

static char tomb_;
#define TOMB ((void *)&tomb_)

static inline size_t hash(uint64_t k)
{
	k ^= k >> 33;
	k *= 0xff51afd7ed558ccdull;
	k ^= k >> 33;
	k *= 0xc4ceb9fe1a85ec53ull;
	k ^= k >> 33;
	return (size_t)k;
}

/* Slot of key, or SIZE_MAX. */
static size_t find(const struct u64map *m, uint64_t key)
{
	size_t mask, i;

	if (!m->cap)
		return SIZE_MAX;
	mask = m->cap - 1;
	for (i = hash(key) & mask;; i = (i + 1) & mask) {
		void *v = m->vals[i];

		if (!v)
			return SIZE_MAX;
		if (v != TOMB && m->keys[i] == key)
			return i;
	}
}

void *u64map_get(const struct u64map *m, uint64_t key)
{
	size_t i = find(m, key);

	return i == SIZE_MAX ? NULL : m->vals[i];
}

static int grow(struct u64map *m)
{
	size_t ncap = m->cap ? m->cap : 4, i; /* small first: a context holds three maps */
	uint64_t *nk;
	void **nv;

	while (m->count * 4 >= ncap)
		ncap *= 2;
	nk = malloc(ncap * sizeof(*nk));
	nv = calloc(ncap, sizeof(*nv));
	if (!nk || !nv) {
		free(nk);
		free(nv);
		return RDAG_ENOMEM;
	}
	for (i = 0; i < m->cap; i++) {
		size_t j;

		if (!m->vals[i] || m->vals[i] == TOMB)
			continue;
		for (j = hash(m->keys[i]) & (ncap - 1); nv[j]; j = (j + 1) & (ncap - 1))
			;
		nk[j] = m->keys[i];
		nv[j] = m->vals[i];
	}
	free(m->keys);
	free(m->vals);
	m->keys = nk;
	m->vals = nv;
	m->cap = ncap;
	m->used = m->count;
	return 0;
}

int u64map_put(struct u64map *m, uint64_t key, void *val)
{
	size_t mask, i, tomb = SIZE_MAX;

	if ((m->used + 1) * 2 > m->cap) {
		int rc = grow(m);

		if (rc)
			return rc;
	}
	mask = m->cap - 1;
	for (i = hash(key) & mask;; i = (i + 1) & mask) {
		void *v = m->vals[i];

		if (!v)
			break;
		if (v == TOMB) {
			if (tomb == SIZE_MAX)
				tomb = i;
		} else if (m->keys[i] == key) {
			m->vals[i] = val;
			return 0;
		}
	}
	if (tomb != SIZE_MAX) {
		i = tomb;
	} else {
		m->used++;
	}
	m->keys[i] = key;
	m->vals[i] = val;
	m->count++;
	return 0;
}

void *u64map_del(struct u64map *m, uint64_t key)
{
	size_t i = find(m, key);
	void *v;

	if (i == SIZE_MAX)
		return NULL;
	v = m->vals[i];
	m->vals[i] = TOMB;
	m->count--;
	return v;
}

int u64map_next(const struct u64map *m, size_t *i, uint64_t *key, void **val)
{
	for (; *i < m->cap; (*i)++) {
		void *v = m->vals[*i];

		if (v && v != TOMB) {
			*key = m->keys[*i];
			*val = v;
			(*i)++;
			return 1;
		}
	}
	return 0;
}

void u64map_fini(struct u64map *m)
{
	free(m->keys);
	free(m->vals);
	m->keys = NULL;
	m->vals = NULL;
	m->cap = m->count = m->used = 0;
}
