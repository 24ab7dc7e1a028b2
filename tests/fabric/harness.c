/* Multi-process test harness: fork N workers, allgather blobs over socketpairs, watchdog, exit codes. */
#include "harness.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define HX_MAX_BLOB (1u << 20)

struct hx {
	int rank;
	int size;
	int fd; /* the child's end of its socketpair */
};

int hx_rank(const struct hx *h)
{
	return h->rank;
}

int hx_size(const struct hx *h)
{
	return h->size;
}

static int full_write(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len) {
		ssize_t w = write(fd, p, len);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		len -= (size_t)w;
	}
	return 0;
}

static int full_read(int fd, void *buf, size_t len)
{
	char *p = buf;

	while (len) {
		ssize_t r = read(fd, p, len);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		p += r;
		len -= (size_t)r;
	}
	return 0;
}

int hx_allgather(struct hx *h, const void *mine, size_t len, void *all)
{
	return hx_allgather_progress(h, mine, len, all, NULL, NULL);
}

int hx_allgather_progress(struct hx *h, const void *mine, size_t len, void *all,
			  void (*progress)(void *arg), void *arg)
{
	uint32_t hdr = (uint32_t)len, total;
	char *msg;
	int rc;

	if (len > HX_MAX_BLOB)
		return -1;
	msg = malloc(sizeof(hdr) + len);
	if (!msg)
		return -1;
	memcpy(msg, &hdr, sizeof(hdr));
	if (len)
		memcpy(msg + sizeof(hdr), mine, len);
	rc = full_write(h->fd, msg, sizeof(hdr) + len);
	free(msg);
	while (rc == 0 && progress) {
		struct pollfd p = {.fd = h->fd, .events = POLLIN};
		int r = poll(&p, 1, 1);

		if (r > 0)
			break;
		if (r < 0 && errno != EINTR)
			rc = -1;
		else
			progress(arg);
	}
	if (rc || full_read(h->fd, &total, sizeof(total)))
		return -1;
	if (total != (uint64_t)len * (uint64_t)h->size)
		return -1;
	return total ? full_read(h->fd, all, total) : 0;
}

int hx_barrier(struct hx *h)
{
	return hx_allgather(h, NULL, 0, NULL);
}

int hx_barrier_progress(struct hx *h, void (*progress)(void *arg), void *arg)
{
	return hx_allgather_progress(h, NULL, 0, NULL, progress, arg);
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

struct child {
	pid_t pid;
	int fd;       /* parent's end, -1 once closed */
	int status;   /* from waitpid, valid when reaped */
	int reaped;
	int has_blob; /* contributed to the current round */
	uint32_t len;
	char *blob;
};

static void reap(struct child *c, int block)
{
	int st;
	pid_t p;

	if (c->reaped)
		return;
	do {
		p = waitpid(c->pid, &st, block ? 0 : WNOHANG);
	} while (p < 0 && errno == EINTR);
	if (p == c->pid) {
		c->status = st;
		c->reaped = 1;
	}
}

static void describe(int rank, int st, char *buf, size_t len)
{
	if (WIFEXITED(st))
		snprintf(buf, len, "rank %d exited %d", rank, WEXITSTATUS(st));
	else if (WIFSIGNALED(st))
		snprintf(buf, len, "rank %d killed by signal %d (%s)", rank, WTERMSIG(st),
			 strsignal(WTERMSIG(st)));
	else
		snprintf(buf, len, "rank %d ended with status 0x%x", rank, st);
}

/* Completes a round when everyone has contributed. Returns 0, or -1 on a protocol failure. */
static int finish_round(struct child *cs, int n)
{
	uint32_t len = cs[0].len;
	uint64_t total = (uint64_t)len * (uint64_t)n;
	uint32_t t32 = (uint32_t)total;
	char *all;

	for (int i = 0; i < n; i++) {
		if (!cs[i].has_blob)
			return 0;
		if (cs[i].len != len) {
			fprintf(stderr, "harness: rank %d contributed %u bytes, rank 0 %u\n", i,
				cs[i].len, len);
			return -1;
		}
	}
	all = malloc(total ? total : 1);
	if (!all)
		return -1;
	for (int i = 0; i < n; i++) {
		if (len)
			memcpy(all + (size_t)i * len, cs[i].blob, len);
		free(cs[i].blob);
		cs[i].blob = NULL;
		cs[i].has_blob = 0;
	}
	for (int i = 0; i < n; i++) {
		/* A child that has already left cannot be in this round: checked by the caller. */
		if (full_write(cs[i].fd, &t32, sizeof(t32)) || (total && full_write(cs[i].fd, all, total))) {
			fprintf(stderr, "harness: cannot answer rank %d\n", i);
			free(all);
			return -1;
		}
	}
	free(all);
	return 0;
}

static void kill_all(struct child *cs, int n)
{
	for (int i = 0; i < n; i++) {
		if (!cs[i].reaped)
			kill(cs[i].pid, SIGKILL);
	}
	for (int i = 0; i < n; i++)
		reap(&cs[i], 1);
}

int hx_run(int nprocs, int timeout_s, hx_fn fn, void *arg)
{
	struct child *cs = calloc((size_t)nprocs, sizeof(*cs));
	struct pollfd *pfds = calloc((size_t)nprocs, sizeof(*pfds));
	double deadline = now_s() + timeout_s;
	int failed = 0, skipped = 0, live;
	char what[160];

	if (!cs || !pfds) {
		free(cs);
		free(pfds);
		return 1;
	}
	fflush(stdout);
	fflush(stderr);
	for (int i = 0; i < nprocs; i++) {
		int sv[2];

		if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) {
			perror("harness: socketpair");
			failed = 1;
			nprocs = i;
			break;
		}
		cs[i].pid = fork();
		if (cs[i].pid < 0) {
			perror("harness: fork");
			close(sv[0]);
			close(sv[1]);
			failed = 1;
			nprocs = i;
			break;
		}
		if (cs[i].pid == 0) {
			struct hx h = {.rank = i, .size = nprocs, .fd = sv[1]};
			int rc;

			/* Only our own channel stays open, so the coordinator sees EOF when we go. */
			close(sv[0]);
			for (int j = 0; j < i; j++)
				close(cs[j].fd);
			signal(SIGPIPE, SIG_IGN);
			rc = fn(&h, arg);
			fflush(stdout);
			fflush(stderr);
			_exit(rc);
		}
		close(sv[1]);
		cs[i].fd = sv[0];
	}
	signal(SIGPIPE, SIG_IGN);

	live = nprocs;
	while (live > 0 && !failed) {
		double left = deadline - now_s();
		int np = 0, r;

		if (left <= 0) {
			int any = 0;

			fprintf(stderr, "harness: watchdog: still running after %d s:", timeout_s);
			for (int i = 0; i < nprocs; i++) {
				reap(&cs[i], 0);
				if (!cs[i].reaped) {
					fprintf(stderr, " rank %d%s", i,
						cs[i].has_blob ? " (waiting in a collective)" : "");
					any = 1;
				}
			}
			fprintf(stderr, "%s\n", any ? "" : " none");
			failed = 1;
			break;
		}
		for (int i = 0; i < nprocs; i++) {
			if (cs[i].fd >= 0) {
				pfds[np].fd = cs[i].fd;
				pfds[np].events = POLLIN;
				pfds[np].revents = 0;
				np++;
			}
		}
		r = poll(pfds, (nfds_t)np, (int)(left * 1000) + 1);
		if (r < 0 && errno != EINTR) {
			perror("harness: poll");
			failed = 1;
			break;
		}
		for (int k = 0; k < np && r > 0; k++) {
			int i;
			uint32_t len;

			if (!pfds[k].revents)
				continue;
			for (i = 0; i < nprocs && cs[i].fd != pfds[k].fd; i++)
				;
			if (full_read(cs[i].fd, &len, sizeof(len)) == 0) {
				if (cs[i].has_blob || len > HX_MAX_BLOB) {
					fprintf(stderr, "harness: rank %d broke the protocol\n", i);
					failed = 1;
					break;
				}
				cs[i].blob = malloc(len ? len : 1);
				if (!cs[i].blob || (len && full_read(cs[i].fd, cs[i].blob, len))) {
					fprintf(stderr, "harness: rank %d: short contribution\n", i);
					failed = 1;
					break;
				}
				cs[i].len = len;
				cs[i].has_blob = 1;
				for (int j = 0; j < nprocs; j++) {
					if (cs[j].fd < 0) {
						describe(j, cs[j].status, what, sizeof(what));
						fprintf(stderr, "harness: rank %d waits in a collective, "
								"but %s\n",
							i, what);
						failed = 1;
					}
				}
				if (failed || finish_round(cs, nprocs)) {
					failed = 1;
					break;
				}
				continue;
			}
			/* EOF: the child is leaving. */
			close(cs[i].fd);
			cs[i].fd = -1;
			live--;
			reap(&cs[i], 1);
			if (!WIFEXITED(cs[i].status) ||
			    (WEXITSTATUS(cs[i].status) != 0 && WEXITSTATUS(cs[i].status) != 77)) {
				describe(i, cs[i].status, what, sizeof(what));
				fprintf(stderr, "harness: %s\n", what);
				failed = 1;
			} else {
				/* Leaving is fine only if nobody waits in a round it would have to join. */
				for (int j = 0; j < nprocs; j++) {
					if (cs[j].has_blob) {
						describe(i, cs[i].status, what, sizeof(what));
						fprintf(stderr, "harness: %s while rank %d waits in a "
								"collective\n",
							what, j);
						failed = 1;
						break;
					}
				}
			}
		}
	}
	if (failed)
		kill_all(cs, nprocs);
	for (int i = 0; i < nprocs; i++) {
		reap(&cs[i], 1);
		if (cs[i].fd >= 0)
			close(cs[i].fd);
		free(cs[i].blob);
		if (WIFEXITED(cs[i].status) && WEXITSTATUS(cs[i].status) == 77)
			skipped = 1;
		else if (!WIFEXITED(cs[i].status) || WEXITSTATUS(cs[i].status) != 0)
			failed = 1;
	}
	free(cs);
	free(pfds);
	if (failed)
		return 1;
	return skipped ? 77 : 0;
}
