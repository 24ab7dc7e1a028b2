/* A small open-addressing hash map from 64-bit keys to pointers (not thread-safe: callers lock). */
#ifndef RDAG_UTIL_U64MAP_H
#define RDAG_UTIL_U64MAP_H

#include <stddef.h>
#include <stdint.h>

/*
 * Linear probing with tombstones; grows at 50% load (counting tombstones), so lookups stay
 * short. Values must not be NULL (NULL means "absent"). Zero-initialise a map to use it; free
 * it with u64map_fini(). Not thread-safe.
 */
struct u64map {
	uint64_t *keys;
	void **vals;     /* NULL: empty slot; U64MAP_TOMB: deleted */
	size_t cap;      /* power of two, or 0 */
	size_t count;    /* live entries */
	size_t used;     /* live + tombstones */
};

void *u64map_get(const struct u64map *m, uint64_t key);
/* Inserts or replaces; returns 0 or RDAG_ENOMEM. */
int u64map_put(struct u64map *m, uint64_t key, void *val);
/* Removes key and returns its value (NULL if absent). */
void *u64map_del(struct u64map *m, uint64_t key);
void u64map_fini(struct u64map *m);

/* Iteration: for (size_t i = 0; u64map_next(m, &i, &k, &v);) ... (no changes while iterating). */
int u64map_next(const struct u64map *m, size_t *i, uint64_t *key, void **val);

#endif /* RDAG_UTIL_U64MAP_H */
