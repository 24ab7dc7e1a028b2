/* Gradient buffers: malloc'd memory, with the large ones kept for reuse after they are freed. */
#ifndef RDAG_UTIL_GBUF_H
#define RDAG_UTIL_GBUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * Large gradients come and go at the same sizes every pass. From glibc each one would be a fresh
 * mmap whose pages fault in (and are zeroed by the kernel) on first touch, registered anew with
 * the fabric, and unmapped on free. gbuf keeps freed buffers of at least GBUF_MIN bytes, up to
 * RDAG_GRAD_CACHE bytes in all (default 256 MiB, at most a sixteenth of the memory; 0 keeps
 * none), and hands them out again for a size they fit without wasting more than a quarter:
 * pages stay mapped and the registration cache keeps hitting. Buffers are kept only while an
 * agent is open (gbuf_use): the last rdag_agent_close() frees them, and rdag_graph alone keeps
 * nothing.
 *
 * Every buffer is from malloc: one that leaves rdag (a sink's *_take callback) may be released
 * with free(), it just does not come back. Thread-safe (one mutex).
 */
#define GBUF_MIN ((size_t)128 << 10)

/* nb bytes (at least 1), zeroed when zero; NULL when out of memory. */
void *gbuf_alloc(size_t nb, bool zero);
/* Gives p back (NULL is a no-op): kept when large and there is room, else free()d. */
void gbuf_free(void *p);
/* An agent opens (on) or closes (off); the last close frees what is kept. */
void gbuf_use(bool on);
/* Frees every kept buffer (tests). */
void gbuf_drain(void);

struct gbuf_stats {
	uint64_t hits, misses; /* large allocations served from the cache / from malloc */
	uint64_t kept, dropped; /* large frees kept / freed (no room, or the cache is off) */
	size_t bytes, limit;    /* bytes kept now, and the most that may be */
	unsigned count;         /* buffers kept now */
};
void gbuf_stats(struct gbuf_stats *s);

#endif /* RDAG_UTIL_GBUF_H */
