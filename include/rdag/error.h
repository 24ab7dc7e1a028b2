/* Status codes, their text, and the per-thread detailed message of the last error. */
#ifndef RDAG_ERROR_H
#define RDAG_ERROR_H

#include <errno.h>

#include <rdag/export.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Every rdag function that can fail returns an int: 0 on success, a negative RDAG_E* code on
 * failure. The generic codes equal the negated errno values (as libfabric's FI_E* do); the
 * rdag-specific ones live at -1000 and below so they never collide with errno.
 */
enum rdag_status {
	RDAG_OK = 0,
	RDAG_EPERM = -EPERM,
	RDAG_ENOENT = -ENOENT,
	RDAG_EIO = -EIO,
	RDAG_EAGAIN = -EAGAIN,       /* try again after progress */
	RDAG_ENOMEM = -ENOMEM,
	RDAG_EACCES = -EACCES,       /* refused: wrong job token, slot not granted, ... */
	RDAG_EBUSY = -EBUSY,
	RDAG_EEXIST = -EEXIST,
	RDAG_EINVAL = -EINVAL,
	RDAG_ENOSPC = -ENOSPC,       /* a caller-provided buffer or a pool is too small */
	RDAG_ERANGE = -ERANGE,       /* an id space is exhausted, a value out of range */
	RDAG_ENOSYS = -ENOSYS,       /* not supported by this build or provider */
	RDAG_EOVERFLOW = -EOVERFLOW,
	RDAG_ENODEV = -ENODEV,       /* no usable device / provider / GPU */
	RDAG_ETIMEDOUT = -ETIMEDOUT,
	RDAG_ECONNREFUSED = -ECONNREFUSED,
	RDAG_ECONNRESET = -ECONNRESET, /* a peer died or the link went away */
	RDAG_ECANCELED = -ECANCELED,

	/* Wire decoding: one code per defect. */
	RDAG_EWIRE_TRUNCATED = -1000,   /* buffer ends before the message does */
	RDAG_EWIRE_MAGIC = -1001,       /* bad magic number */
	RDAG_EWIRE_VERSION = -1002,     /* unknown protocol version */
	RDAG_EWIRE_KIND = -1003,        /* unknown message kind */
	RDAG_EWIRE_LENGTH = -1004,      /* a length field disagrees with the buffer */
	RDAG_EWIRE_TRAILING = -1005,    /* bytes left over after the message */
	RDAG_EWIRE_COUNT = -1006,       /* an element count above its limit */
	RDAG_EWIRE_SHAPE = -1007,       /* shape product does not match the byte length */
	RDAG_EWIRE_NESTING = -1008,     /* wrapped messages nested too deeply */
	RDAG_EWIRE_FIELD = -1009,       /* a field holds a value outside its domain */
	RDAG_EWIRE_DTYPE = -1010,       /* unknown dtype */
	RDAG_EWIRE_DEVICE = -1011,      /* unknown device type */
	RDAG_EWIRE_LOCATION = -1012,    /* unknown tensor location kind */
	RDAG_EWIRE_FLAGS = -1013,       /* reserved flag bits set */

	/* Remote and autograd-level failures. */
	RDAG_EREMOTE = -1100,           /* a peer reported an error; see rdag_last_error() */
	RDAG_EPEER_DEAD = -1101,        /* a peer died or became unreachable */
	RDAG_EABORTED = -1102,          /* the operation's context or pass was aborted */
	RDAG_ENOCUDA = -1103,           /* this build has no CUDA support */
	RDAG_ENOGPU = -1104,            /* CUDA driver present, but no GPU device */
	RDAG_ENOCUDA_DRIVER = -1105,    /* built with CUDA, but the driver (libcuda.so.1) is missing */
	RDAG_ENONCCL = -1106,           /* NCCL (libnccl.so.2) is missing or unusable */
};

/* Short, static description of a status code; never NULL. Thread-safe. */
RDAG_API const char *rdag_strerror(int code);

/*
 * The detailed message of the last error raised on the calling thread (with the failing peer,
 * context id, provider error, ...), or "" if none. Valid until the thread's next rdag call.
 * Thread-safe (per-thread storage).
 */
RDAG_API const char *rdag_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* RDAG_ERROR_H */
