/* Launches 4 ranks with Open MPI's mpirun; each finds the others from OMPI_COMM_WORLD_* alone (exit 77 without mpirun). */
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <rdag/error.h>

#include "bootstrap/boot.h"

#define NP 4

static int failed(int rank, const char *what)
{
	fprintf(stderr, "rank %d: FAILED: %s: %s\n", rank, what, rdag_last_error());
	return 1;
}

/* One rank under mpirun: nothing is passed but the environment. */
static int child(void)
{
	struct boot_opts o;
	struct boot *b = NULL;
	struct boot_gather g;
	char mine[64], want[64];
	const char *lr = getenv("OMPI_COMM_WORLD_LOCAL_RANK");
	int rc = 1, rank = atoi(getenv("OMPI_COMM_WORLD_RANK"));

	boot_opts_init(&o);
	if (boot_opts_from_env(&o) != 0)
		return failed(rank, "boot_opts_from_env");
	if (strcmp(o.launcher, "openmpi") != 0 || o.rank != rank || o.world_size != NP ||
	    strcmp(o.master_addr, "localhost") != 0 || strncmp(o.job_token, "openmpi:", 8) != 0) {
		fprintf(stderr, "rank %d: FAILED: resolved launcher %s rank %d world %d master %s token %s\n",
			rank, o.launcher, o.rank, o.world_size, o.master_addr, o.job_token);
		return 1;
	}
	boot_opts_init(&o);
	if (boot_open(&o, &b) != 0)
		return failed(rank, "boot_open");
	if (!boot_all_local(b) || boot_local_size(b) != NP || !lr ||
	    boot_local_rank(b) != (uint32_t)atoi(lr)) {
		fprintf(stderr, "rank %d: FAILED: locality %d %u %u\n", rank, boot_all_local(b),
			boot_local_rank(b), boot_local_size(b));
		goto out;
	}
	snprintf(mine, sizeof(mine), "fabric-address-of-rank-%d-%.*s", rank, rank * 3, "xxxxxxxxxxxx");
	if (boot_allgather(b, mine, strlen(mine), &g) != 0) {
		failed(rank, "boot_allgather");
		goto out;
	}
	for (int r = 0; r < NP; r++) {
		char name[32];

		snprintf(want, sizeof(want), "fabric-address-of-rank-%d-%.*s", r, r * 3, "xxxxxxxxxxxx");
		snprintf(name, sizeof(name), "worker%d", r);
		if (g.lens[r] != strlen(want) || memcmp(g.blobs[r], want, g.lens[r]) != 0 ||
		    strcmp(boot_name(b, (uint32_t)r), name) != 0) {
			fprintf(stderr, "rank %d: FAILED: rank %d's blob or name differs\n", rank, r);
			goto out;
		}
	}
	if (boot_barrier(b) != 0) {
		failed(rank, "boot_barrier");
		goto out;
	}
	printf("rank %d of %d: rendezvous, allgather and barrier ok (job token %s)\n", rank, NP,
	       boot_job_token(b));
	rc = 0;
out:
	boot_close(b);
	return rc;
}

static int find_in_path(const char *prog, char *out, size_t outlen)
{
	const char *path = getenv("PATH");

	while (path && *path) {
		const char *end = strchr(path, ':');
		size_t n = end ? (size_t)(end - path) : strlen(path);

		snprintf(out, outlen, "%.*s/%s", (int)n, path, prog);
		if (n && access(out, X_OK) == 0)
			return 0;
		path += n + (end ? 1 : 0);
	}
	return -1;
}

static int free_port(void)
{
	struct sockaddr_in a;
	socklen_t l = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM, 0), port = -1;

	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
	    getsockname(fd, (struct sockaddr *)&a, &l) == 0)
		port = ntohs(a.sin_port);
	if (fd >= 0)
		close(fd);
	return port;
}

int main(void)
{
	static const char *const launcher_vars[] = {
		"RDAG_RANK", "RDAG_WORLD_SIZE", "RDAG_MASTER_ADDR", "RDAG_JOB_TOKEN", "RDAG_WORKER_NAME",
		"RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID",
	};
	char mpirun[PATH_MAX], self[PATH_MAX], portarg[64];
	ssize_t n;
	pid_t pid;
	int st = 0, port;

	if (getenv("OMPI_COMM_WORLD_RANK"))
		return child();
	if (find_in_path("mpirun", mpirun, sizeof(mpirun)) != 0) {
		printf("mpirun not found (Open MPI's openmpi-bin): skipped\n");
		return 77;
	}
	n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n <= 0)
		return 1;
	self[n] = '\0';
	for (size_t i = 0; i < sizeof(launcher_vars) / sizeof(launcher_vars[0]); i++)
		unsetenv(launcher_vars[i]);
	port = free_port();
	if (port <= 0)
		return 1;
	snprintf(portarg, sizeof(portarg), "RDAG_MASTER_PORT=%d", port);
	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		char np[8];

		snprintf(np, sizeof(np), "%d", NP);
		/* By name: given an absolute argv[0], Open MPI derives an install prefix from it. */
		execlp("mpirun", "mpirun", "--allow-run-as-root", "--oversubscribe", "-np", np, "-x", portarg,
		       "-x", "RDAG_BOOT_TIMEOUT=60", self, (char *)NULL);
		fprintf(stderr, "exec %s: %s\n", mpirun, strerror(errno));
		_exit(127);
	}
	if (pid < 0 || waitpid(pid, &st, 0) != pid)
		return 1;
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		fprintf(stderr, "mpirun -np %d failed (status 0x%x)\n", NP, st);
		return 1;
	}
	printf("mpirun -np %d: every rank found the others from the Open MPI environment\n", NP);
	return 0;
}
