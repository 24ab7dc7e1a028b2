/* Status code text and the per-thread last-error message (rdag_strerror, rdag_last_error). */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <rdag/error.h>

#include "util/err.h"
#include "util/log.h"

#define LAST_ERROR_MAX 512

static _Thread_local char last_error[LAST_ERROR_MAX];

RDAG_API const char *rdag_strerror(int code)
{
	switch (code) {
	case RDAG_OK: return "success";
	case RDAG_EPERM: return "operation not permitted";
	case RDAG_ENOENT: return "no such entry";
	case RDAG_EIO: return "input/output error";
	case RDAG_EAGAIN: return "resource temporarily unavailable, try again after progress";
	case RDAG_ENOMEM: return "out of memory";
	case RDAG_EACCES: return "access refused";
	case RDAG_EBUSY: return "resource busy";
	case RDAG_EEXIST: return "already exists";
	case RDAG_EINVAL: return "invalid argument";
	case RDAG_ENOSPC: return "buffer or pool too small";
	case RDAG_ERANGE: return "value out of range or id space exhausted";
	case RDAG_ENOSYS: return "not supported";
	case RDAG_EOVERFLOW: return "value too large";
	case RDAG_ENODEV: return "no usable device or provider";
	case RDAG_ETIMEDOUT: return "timed out";
	case RDAG_ECONNREFUSED: return "connection refused";
	case RDAG_ECONNRESET: return "connection reset by peer";
	case RDAG_ECANCELED: return "operation canceled";
	case RDAG_EWIRE_TRUNCATED: return "wire: message truncated";
	case RDAG_EWIRE_MAGIC: return "wire: bad magic";
	case RDAG_EWIRE_VERSION: return "wire: unknown protocol version";
	case RDAG_EWIRE_KIND: return "wire: unknown message kind";
	case RDAG_EWIRE_LENGTH: return "wire: length field disagrees with the message";
	case RDAG_EWIRE_TRAILING: return "wire: trailing bytes after the message";
	case RDAG_EWIRE_COUNT: return "wire: element count above its limit";
	case RDAG_EWIRE_SHAPE: return "wire: tensor shape does not match its byte length";
	case RDAG_EWIRE_NESTING: return "wire: wrapped messages nested too deeply";
	case RDAG_EWIRE_FIELD: return "wire: field value out of its domain";
	case RDAG_EWIRE_DTYPE: return "wire: unknown dtype";
	case RDAG_EWIRE_DEVICE: return "wire: unknown device type";
	case RDAG_EWIRE_LOCATION: return "wire: unknown tensor location";
	case RDAG_EWIRE_FLAGS: return "wire: reserved flag bits set";
	case RDAG_EREMOTE: return "error on a remote worker";
	case RDAG_EPEER_DEAD: return "peer died or became unreachable";
	case RDAG_EABORTED: return "operation aborted";
	case RDAG_ENOCUDA: return "rdag was built without CUDA support";
	case RDAG_ENOGPU: return "no usable GPU device (the CUDA driver found none)";
	case RDAG_ENOCUDA_DRIVER: return "CUDA driver missing (libcuda.so.1 could not be loaded)";
	case RDAG_ENONCCL: return "NCCL missing (libnccl.so.2 could not be loaded or used)";
	default: return "unknown error";
	}
}

RDAG_API const char *rdag_last_error(void)
{
	return last_error;
}

int err_set(int code, const char *fmt, ...)
{
	va_list ap;

	/*
	 * Into a buffer of our own first: the arguments may quote rdag_last_error(), and vsnprintf
	 * must not read the buffer it writes.
	 */
	char tmp[LAST_ERROR_MAX];

	va_start(ap, fmt);
	vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	memcpy(last_error, tmp, strlen(tmp) + 1);
	log_msg(RDAG_LOG_DEBUG, "error %d (%s): %s", code, rdag_strerror(code), last_error);
	return code;
}

void err_clear(void)
{
	last_error[0] = '\0';
}
