/* Logging as NCCL users expect it: RDAG_LOG picks the level, RDAG_LOG_FILE the destination. */
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "util/log.h"

static pthread_once_t log_once = PTHREAD_ONCE_INIT;
static enum log_level level_in_force = RDAG_LOG_WARN;
static FILE *log_out;
static char host[64];
static atomic_int log_rank = -1;

static const char *const level_names[] = {"NONE", "ERROR", "WARN", "INFO", "DEBUG", "TRACE"};

static enum log_level parse_level(const char *s)
{
	for (int i = 0; i <= RDAG_LOG_TRACE; i++) {
		if (strcasecmp(s, level_names[i]) == 0)
			return (enum log_level)i;
	}
	/* Unknown text: keep the default and say so once the output is open. */
	return (enum log_level)-1;
}

/* Expands %h (host name) and %p (pid) in RDAG_LOG_FILE, as NCCL_DEBUG_FILE does. */
static void expand_path(const char *pattern, char *out, size_t outlen)
{
	size_t n = 0;

	for (const char *p = pattern; *p && n + 1 < outlen; p++) {
		if (p[0] == '%' && (p[1] == 'h' || p[1] == 'p')) {
			int w = p[1] == 'h' ? snprintf(out + n, outlen - n, "%s", host)
					    : snprintf(out + n, outlen - n, "%d", (int)getpid());
			if (w < 0 || (size_t)w >= outlen - n)
				break;
			n += (size_t)w;
			p++;
		} else {
			out[n++] = *p;
		}
	}
	out[n] = '\0';
}

static void log_init(void)
{
	const char *lvl = getenv("RDAG_LOG");
	const char *file = getenv("RDAG_LOG_FILE");
	int bad_level = 0;

	if (gethostname(host, sizeof(host)) != 0)
		strcpy(host, "?");
	host[sizeof(host) - 1] = '\0';
	log_out = stderr;
	if (file && *file) {
		char path[4096];
		FILE *f;

		expand_path(file, path, sizeof(path));
		f = fopen(path, "a");
		if (f) {
			setvbuf(f, NULL, _IOLBF, 0);
			log_out = f;
		} else {
			fprintf(stderr, "%s:%d rdag WARN cannot open RDAG_LOG_FILE=%s, logging to stderr\n",
				host, (int)getpid(), path);
		}
	}
	if (lvl && *lvl) {
		int l = (int)parse_level(lvl);
		if (l < 0)
			bad_level = 1;
		else
			level_in_force = (enum log_level)l;
	}
	if (bad_level)
		fprintf(log_out, "%s:%d rdag WARN unknown RDAG_LOG=%s (use error|warn|info|debug|trace), using warn\n",
			host, (int)getpid(), lvl);
}

enum log_level log_level(void)
{
	pthread_once(&log_once, log_init);
	return level_in_force;
}

void log_set_rank(int rank)
{
	atomic_store(&log_rank, rank);
}

void log_msg(enum log_level level, const char *fmt, ...)
{
	char line[1024];
	int n;
	va_list ap;

	if (level == RDAG_LOG_NONE || level > log_level())
		return;
	n = snprintf(line, sizeof(line), "%s:%d:%ld [%d] rdag %s ", host, (int)getpid(),
		     (long)syscall(SYS_gettid), atomic_load(&log_rank), level_names[level]);
	if (n < 0 || (size_t)n >= sizeof(line))
		return;
	va_start(ap, fmt);
	vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
	va_end(ap);
	/* One write per line keeps lines from several threads whole. */
	fprintf(log_out, "%s\n", line);
}
