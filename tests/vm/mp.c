/* Tiny fork-and-socketpair harness for the VM tests: N worker processes, allgather through the parent. */
#include "mp.h"

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

#define MP_MAX 64

static int xfer(int fd, void *buf, size_t len, int writing)
{
	char *p = buf;

	while (len) {
		ssize_t r = writing ? write(fd, p, len) : read(fd, p, len);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		p += r;
		len -= (size_t)r;
	}
	return 0;
}

int mp_allgather(struct mp *m, const void *mine, size_t len, void *all)
{
	uint32_t l = (uint32_t)len;

	if (xfer(m->fd, &l, sizeof(l), 1) || (len && xfer(m->fd, (void *)mine, len, 1)))
		return -1;
	return xfer(m->fd, all, len * (size_t)m->size, 0);
}

int mp_barrier(struct mp *m)
{
	char c = 0, all[MP_MAX];

	return mp_allgather(m, &c, 1, all);
}

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int mp_run(int n, int timeout_s, int (*fn)(struct mp *m, void *arg), void *arg)
{
	pid_t pid[MP_MAX];
	int fd[MP_MAX], alive = 0, status[MP_MAX], done[MP_MAX] = { 0 }, have[MP_MAX] = { 0 };
	char *blob[MP_MAX] = { 0 };
	uint32_t blen = 0;
	int64_t deadline = now_ms() + (int64_t)timeout_s * 1000;
	int rc = 0, skipped = 0, killed = 0;

	if (n < 1 || n > MP_MAX)
		return 1;
	fflush(NULL);
	for (int i = 0; i < n; i++) {
		int sv[2];

		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
			perror("socketpair");
			return 1;
		}
		pid[i] = fork();
		if (pid[i] < 0) {
			perror("fork");
			return 1;
		}
		if (pid[i] == 0) {
			struct mp m = { i, n, sv[1] };

			close(sv[0]);
			for (int j = 0; j < i; j++)
				close(fd[j]);
			/* exit, not _exit: atexit handlers run (LeakSanitizer checks the child). */
			exit(fn(&m, arg));
		}
		close(sv[1]);
		fd[i] = sv[0];
		alive++;
	}
	while (alive > 0) {
		struct pollfd pfd[MP_MAX];
		int64_t left = deadline - now_ms();
		int pending = 0, any_have = 0;

		if (left <= 0) {
			for (int i = 0; i < n; i++)
				if (!done[i]) {
					fprintf(stderr, "mp: watchdog: rank %d still running after %d s, killing it\n",
						i, timeout_s);
					kill(pid[i], SIGKILL);
				}
			killed = 1;
			break;
		}
		for (int i = 0; i < n; i++) {
			pfd[i].fd = done[i] ? -1 : fd[i];
			pfd[i].events = POLLIN;
			pfd[i].revents = 0;
		}
		if (poll(pfd, (nfds_t)n, (int)(left > 1000 ? 1000 : left)) < 0 && errno != EINTR)
			break;
		for (int i = 0; i < n; i++) {
			uint32_t l;

			if (done[i] || !(pfd[i].revents & (POLLIN | POLLHUP | POLLERR)))
				continue;
			if (xfer(fd[i], &l, sizeof(l), 0) != 0) {
				done[i] = 1; /* exited (EOF) */
				alive--;
				continue;
			}
			blob[i] = malloc(l ? l : 1);
			if (!blob[i] || (l && xfer(fd[i], blob[i], l, 0) != 0)) {
				done[i] = 1;
				alive--;
				continue;
			}
			blen = l;
			have[i] = 1;
		}
		for (int i = 0; i < n; i++) {
			any_have |= have[i];
			pending += !have[i];
		}
		if (any_have && pending == 0) {
			char *all = malloc((size_t)blen * (size_t)n + 1);

			for (int i = 0; i < n; i++)
				memcpy(all + (size_t)i * blen, blob[i], blen);
			for (int i = 0; i < n; i++) {
				if (xfer(fd[i], all, (size_t)blen * (size_t)n, 1) != 0)
					fprintf(stderr, "mp: cannot answer rank %d\n", i);
				free(blob[i]);
				blob[i] = NULL;
				have[i] = 0;
			}
			free(all);
		} else if (any_have) {
			for (int i = 0; i < n; i++)
				if (done[i] && !have[i]) {
					fprintf(stderr, "mp: rank %d left while others wait in a round\n", i);
					for (int j = 0; j < n; j++)
						if (!done[j])
							kill(pid[j], SIGKILL);
					killed = 1;
					alive = 0;
					break;
				}
		}
	}
	for (int i = 0; i < n; i++) {
		free(blob[i]);
		close(fd[i]);
		if (waitpid(pid[i], &status[i], 0) < 0)
			status[i] = 1 << 8;
		if (WIFEXITED(status[i]) && WEXITSTATUS(status[i]) == 0)
			continue;
		if (WIFEXITED(status[i]) && WEXITSTATUS(status[i]) == 77) {
			skipped = 1;
			continue;
		}
		if (WIFSIGNALED(status[i]))
			fprintf(stderr, "mp: rank %d died of signal %d\n", i, WTERMSIG(status[i]));
		else
			fprintf(stderr, "mp: rank %d exited %d\n", i, WEXITSTATUS(status[i]));
		rc = 1;
	}
	if (killed)
		rc = 1;
	return rc ? rc : (skipped ? 77 : 0);
}
