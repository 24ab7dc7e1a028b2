/* Sizes from the environment: "65536", "64K", "64KiB", "8M", "1G" (powers of 1024). */
#ifndef RDAG_UTIL_ENVSIZE_H
#define RDAG_UTIL_ENVSIZE_H

#include <stddef.h>

/* Parses s into *out; 0, or -1 (nothing written) for anything that is not such a size. */
int rdag_parse_size(const char *s, size_t *out);

/*
 * The size in the variable name, def when it is unset or empty; a value that does not parse or
 * lies outside [lo, hi] logs a warning and gives def.
 */
size_t rdag_env_size(const char *name, size_t def, size_t lo, size_t hi);

#endif /* RDAG_UTIL_ENVSIZE_H */
