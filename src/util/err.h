/* Internal error helpers: record a detailed per-thread message and return the status code. */
#ifndef RDAG_UTIL_ERR_H
#define RDAG_UTIL_ERR_H

#include <rdag/error.h>

/*
 * Records a detailed message for rdag_last_error() on the calling thread, logs it at debug
 * level, and returns code, so failure paths read: return err_set(RDAG_EINVAL, "...", ...);
 */
int err_set(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Forgets the calling thread's last error message. */
void err_clear(void);

#endif /* RDAG_UTIL_ERR_H */
