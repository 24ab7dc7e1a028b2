/* Shared set-up of rdag's transport benchmarks: perftest flags, bootstrap as server/client, fabric and xport. */
#include "rdag_perf.h"

#include <arpa/inet.h>
#include <errno.h>
#include <glob.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fabric/fabric.h"
#include "rcache/rcache.h"
#include "util/err.h"

void rp_init(struct rp *r, enum raw_kind kind, int *argc, char **argv)
{
	memset(r, 0, sizeof(*r));
	if (*argc > 1 && strcmp(argv[1], "--local") == 0) {
		r->local = 1;
		memmove(&argv[1], &argv[2], (size_t)(*argc - 1) * sizeof(char *));
		(*argc)--;
	}
	raw_parse_args(&r->o, kind, *argc, argv);
	if (r->local && r->o.host) {
		fprintf(stderr, "%s: --local runs both sides: no host argument\n", r->o.tool);
		exit(RAW_EXIT_USAGE);
	}
	if (r->o.provider) {
		setenv("RDAG_FABRIC", "ofi", 1);
		setenv("RDAG_OFI_PROVIDER", r->o.provider, 1);
	}
	if (r->o.device) {
		/*
		 * -d names the libfabric domain or the verbs device. rdag's fabric options have no
		 * libfabric domain, so it goes to the providers' own variables, as the raw tools'
		 * domain choice would: the interface for tcp, the device for verbs.
		 */
		const char *f = getenv("RDAG_FABRIC"), *p = getenv("RDAG_OFI_PROVIDER");

		if (f && strcmp(f, "verbs") == 0)
			setenv("RDAG_IB_DEVICE", r->o.device, 1);
		else if (p && strstr(p, "tcp"))
			setenv("FI_TCP_IFACE", r->o.device, 0);
		else if (p && strstr(p, "verbs"))
			setenv("FI_VERBS_DEVICE_NAME", r->o.device, 0);
	}
	xport_opts_init(&r->xo);
}

/* Server side of the bootstrap: a socket on -p (0: any free port), announced on stdout. */
static int listen_port(struct rp *r, int *port)
{
	struct sockaddr_in sa;
	socklen_t sl = sizeof(sa);
	int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -1;
	(void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_addr.s_addr = htonl(r->local ? INADDR_LOOPBACK : INADDR_ANY);
	sa.sin_port = htons((uint16_t)*port);
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) || listen(fd, 4) ||
	    getsockname(fd, (struct sockaddr *)&sa, &sl)) {
		fprintf(stderr, "%s: cannot listen on TCP port %d: %s\n", r->o.tool, *port, strerror(errno));
		close(fd);
		return -1;
	}
	*port = ntohs(sa.sin_port);
	return fd;
}

static int meet(struct rp *r, int lfd)
{
	struct boot_opts bo;
	int rc;

	boot_opts_init(&bo);
	bo.rank = r->server ? 0 : 1;
	bo.world_size = 2;
	snprintf(bo.master_addr, sizeof(bo.master_addr), "%s", r->o.host ? r->o.host : "127.0.0.1");
	bo.master_port = r->o.port;
	snprintf(bo.job_token, sizeof(bo.job_token), "rdag-perf");
	bo.job_token_set = 1;
	snprintf(bo.name, sizeof(bo.name), "%s", r->server ? "server" : "client");
	bo.timeout_ms = r->o.timeout_s * 1000;
	if (r->server)
		bo.listen_fd = lfd;
	rc = boot_open(&bo, &r->b);
	if (rc)
		fprintf(stderr, "%s: bootstrap: %s\n", r->o.tool, rdag_last_error());
	return rc;
}

/* Both sides must run the same test: perftest's rule, enforced. */
static int check_params(struct rp *r)
{
	uint64_t mine[5] = {(uint64_t)r->o.kind, (uint64_t)r->o.all, r->o.all ? 0 : (uint64_t)r->o.size,
			    (uint64_t)r->o.iters, (uint64_t)r->o.warmup};
	uint64_t all[10];

	if (boot_allgather_fixed(r->b, mine, sizeof(mine), all)) {
		fprintf(stderr, "%s: exchanging parameters: %s\n", r->o.tool, rdag_last_error());
		return -1;
	}
	if (memcmp(all, all + 5, sizeof(mine)) != 0) {
		fprintf(stderr, "%s: server and client disagree on the test: give both the same "
			"-s/-a/-n/-w\n", r->o.tool);
		return -1;
	}
	return 0;
}

int rp_open(struct rp *r)
{
	struct fab_open_opts fo;
	struct fab_ep *ep = NULL;
	int lfd = -1, port = r->o.port, rc;

	r->server = !r->o.host;
	if (r->server || r->local) {
		if (r->local)
			port = 0;
		lfd = listen_port(r, &port);
		if (lfd < 0)
			return RAW_EXIT_FAIL;
		if (!r->local) {
			printf("listening on port %d\n", port);
			fflush(stdout);
		}
	}
	if (r->local) {
		pid_t pid;

		fflush(stdout);
		pid = fork();
		if (pid < 0) {
			perror("fork");
			close(lfd);
			return RAW_EXIT_FAIL;
		}
		if (pid == 0) {
			/* The forked server: quiet on stdout, same options otherwise. */
			if (!freopen("/dev/null", "w", stdout))
				_exit(RAW_EXIT_FAIL);
			r->server = 1;
			r->local = 0;
			r->o.host = NULL;
		} else {
			close(lfd);
			lfd = -1;
			r->child_pid = pid;
			r->server = 0;
			r->o.host = "127.0.0.1";
			r->o.port = port;
		}
	}
	if (raw_pin_cpu(&r->o))
		return RAW_EXIT_FAIL;
	if (meet(r, lfd))
		return RAW_EXIT_FAIL;
	fab_opts_from_env(&fo);
	xport_fab_opts(&r->xo, 2, r->server ? 0 : 1, &fo);
	fo.local_only = boot_all_local(r->b);
	/*
	 * Both tools busy-poll xport_progress(x, 0) on libfabric, as the raw tools poll a CQ opened
	 * without a wait object (rdag_perf_bw's server blocks only on verbs, which keeps its
	 * channel): RDAG_OFI_WAIT=auto then opens the CQ without one too.
	 */
	fo.poll_only = 1;
	rc = fab_open(&fo, &ep);
	if (rc) {
		fprintf(stderr, "%s: fabric: %s\n", r->o.tool, rdag_last_error());
		return rc == RDAG_ENODEV || rc == RDAG_ENOSYS ? RAW_EXIT_SKIP : RAW_EXIT_FAIL;
	}
	r->wait_fd = (fab_attr(ep)->caps & FAB_CAP_WAIT_FD) != 0;
	rc = xport_open(&r->xo, r->b, ep, &r->x);
	if (rc) {
		fprintf(stderr, "%s: transport: %s\n", r->o.tool, rdag_last_error());
		return RAW_EXIT_FAIL;
	}
	if (check_params(r))
		return RAW_EXIT_FAIL;
	return 0;
}

void rp_print_setup(const struct rp *r)
{
	struct xport_stats st;
	struct rcache_stats rs;

	xport_get_stats(r->x, &st);
	rcache_get_stats(xport_rcache(r->x), &rs);
	raw_hdr("fabric", "%s", getenv("RDAG_FABRIC") ? getenv("RDAG_FABRIC") : "auto");
	if (getenv("RDAG_OFI_PROVIDER"))
		raw_hdr("provider", "%s", getenv("RDAG_OFI_PROVIDER"));
	raw_hdr("transport", "rdag xport: %u credits, write visibility by %s", st.credits,
		st.visibility);
	raw_hdr("wait fd", "%s (RDAG_OFI_WAIT=%s)", r->wait_fd ? "yes" : "no",
		getenv("RDAG_OFI_WAIT") && *getenv("RDAG_OFI_WAIT") ? getenv("RDAG_OFI_WAIT")
								    : "auto");
	raw_hdr("thresholds", "inline <= %zu B, eager <= %zu B (arena %zu B), messages <= %zu B",
		r->xo.inline_max, r->xo.eager_max, r->xo.arena_size, r->xo.msg_max);
	raw_hdr("registration", "rcache, monitor %s", rcache_monitor_name(rs.monitor));
}

/* A killed shm process leaves /dev/shm/<pid>:*, which breaks a later process with that pid. */
static void forget_shm(pid_t pid)
{
	char pat[64];
	glob_t g;

	snprintf(pat, sizeof(pat), "/dev/shm/%d:*", (int)pid);
	if (glob(pat, 0, NULL, &g) == 0) {
		for (size_t i = 0; i < g.gl_pathc; i++)
			unlink(g.gl_pathv[i]);
		globfree(&g);
	}
}

int rp_close(struct rp *r, int rc)
{
	if (r->x)
		xport_close(r->x);
	r->x = NULL;
	if (r->b)
		boot_close(r->b);
	r->b = NULL;
	if (r->child_pid > 0) {
		int st = 0;

		if (rc)
			kill(r->child_pid, SIGTERM);
		if (waitpid(r->child_pid, &st, 0) == r->child_pid && WIFSIGNALED(st))
			forget_shm(r->child_pid);
		if (!rc && !(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
			fprintf(stderr, "%s: the forked server failed\n", r->o.tool);
			rc = WIFEXITED(st) && WEXITSTATUS(st) == RAW_EXIT_SKIP ? RAW_EXIT_SKIP
									       : RAW_EXIT_FAIL;
		}
	}
	return rc;
}

void rp_watch(struct rp *r)
{
	r->deadline_ns = raw_now_ns() + (uint64_t)r->o.timeout_s * 1000000000u;
}

int rp_expired(struct rp *r, const char *what)
{
	uint64_t now = raw_now_ns();

	if (r->progress != r->seen) {
		r->seen = r->progress;
		r->deadline_ns = now + (uint64_t)r->o.timeout_s * 1000000000u;
		return 0;
	}
	if (now < r->deadline_ns)
		return 0;
	fprintf(stderr, "%s: no progress for %d s while %s (-T to change)\n", r->o.tool,
		r->o.timeout_s, what);
	return 1;
}
