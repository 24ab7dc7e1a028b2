/* Multi-process tests of the bootstrap rendezvous: forked ranks meet over real TCP on the loopback. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <rdag/error.h>

#include "bootstrap/boot.h"
#include "bootstrap/boot_int.h"

#define TOKEN "rdv-test-token"
#define TIMEOUT_MS 20000 /* generous: only failure tests wait for a timeout, and they set short ones */

/* What a forked rank does after boot_open(). */
enum how {
	RUN_ALL,           /* names/hosts, several allgathers (sizes up to the limit), barriers, fixed */
	OPEN_ONLY,         /* just the rendezvous (refused ranks stop here) */
	DIE_AFTER_OPEN,    /* reports, then _exit()s without closing: a crash */
	GO_THEN_ALLGATHER, /* waits for a byte on down_fd, then one allgather */
	GO_THEN_BARRIER,   /* waits for a byte on down_fd, then a barrier */
	BARRIER_MARKS,     /* writes 'B' to up_fd, barrier, writes 'A' */
	MIXED,             /* rank 2 calls barrier while the others call allgather */
	FIXED_MISMATCH,    /* allgather_fixed with a size that depends on the rank */
	CHECK_UNTIL_DEAD,  /* rank 0: boot_check()==0, tells up_fd, then boot_check until it fails */
	CLOSE_ON_GO,       /* waits for a byte on down_fd, then boot_close() */
};

struct proc {
	int rank, world;  /* what this process claims */
	const char *token;
	const char *name; /* NULL: default "worker<rank>" */
	int two_hosts;    /* host "hostA"/"hostB" by rank parity instead of gethostname() */
	int lfd;          /* rank 0: the listener the parent bound; -1 */
	int port;
	const char *addr;
	int via_env;      /* 1: torchrun-style RANK/WORLD_SIZE/MASTER_*; 2: RDAG_* variables */
	int timeout_ms;
	enum how how;
	int up_fd, down_fd, hook_fd;
	int fd_room;      /* > 0: before opening, cap the open-file limit at (open now + fd_room) */
};

struct result {
	int rc;
	double secs;
	char msg[1024];
};

struct child {
	pid_t pid;
	int fd; /* read end of the result pipe */
};

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ---- what a rank checks ------------------------------------------------------------------ */

static size_t blob_len(int rank, int round)
{
	if (round == 3)
		return BOOT_BLOB_MAX - (size_t)rank; /* the largest contributions, several frames' worth */
	return (size_t)(rank * 37 + round * 101) % 3000; /* rank 0, round 0: empty */
}

static uint8_t blob_byte(int rank, int round, size_t i)
{
	return (uint8_t)(rank * 131 + round * 17 + i * 7 + (i >> 8));
}

#define CHECK(cond, ...)                                                                           \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			snprintf(msg, msglen, __VA_ARGS__);                                        \
			rc = -1;                                                                   \
			goto out;                                                                  \
		}                                                                                  \
	} while (0)
#define CALL(expr)                                                                                 \
	do {                                                                                       \
		if ((rc = (expr)) != 0) {                                                          \
			snprintf(msg, msglen, "%s", rdag_last_error());                            \
			goto out;                                                                  \
		}                                                                                  \
	} while (0)

static void expected_host(const struct proc *p, int rank, char *out, size_t outlen)
{
	if (p->two_hosts)
		snprintf(out, outlen, "host%c", rank % 2 ? 'B' : 'A');
	else if (gethostname(out, outlen) != 0)
		snprintf(out, outlen, "?");
}

static void hook(void *arg, unsigned attempt, int code)
{
	int fd = *(int *)arg;

	(void)code;
	if (attempt == 1 && write(fd, "r", 1) != 1)
		_exit(3);
}

static void set_env(const char *name, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_env(const char *name, const char *fmt, ...)
{
	char v[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(v, sizeof(v), fmt, ap);
	va_end(ap);
	setenv(name, v, 1);
}

static void make_opts(const struct proc *p, struct boot_opts *o)
{
	boot_opts_init(o);
	if (p->via_env == 1) {
		/* torchrun-style: rdag listens on MASTER_PORT + 1. */
		set_env("RANK", "%d", p->rank);
		set_env("WORLD_SIZE", "%d", p->world);
		set_env("MASTER_ADDR", "%s", p->addr);
		set_env("MASTER_PORT", "%d", p->port - 1);
		set_env("RDAG_BOOT_TIMEOUT", "%g", p->timeout_ms / 1000.0);
	} else if (p->via_env == 2) {
		set_env("RDAG_RANK", "%d", p->rank);
		set_env("RDAG_WORLD_SIZE", "%d", p->world);
		set_env("RDAG_MASTER_ADDR", "%s", p->addr);
		set_env("RDAG_MASTER_PORT", "%d", p->port);
		set_env("RDAG_JOB_TOKEN", "%s", p->token);
		set_env("RDAG_WORKER_NAME", "worker%%r");
		set_env("RDAG_BOOT_TIMEOUT", "%g", p->timeout_ms / 1000.0);
	} else {
		o->rank = p->rank;
		o->world_size = p->world;
		snprintf(o->master_addr, sizeof(o->master_addr), "%s", p->addr);
		o->master_port = p->port;
		snprintf(o->job_token, sizeof(o->job_token), "%s", p->token);
		o->job_token_set = 1;
		o->timeout_ms = p->timeout_ms;
	}
	if (p->name)
		snprintf(o->name, sizeof(o->name), "%s", p->name);
	if (p->two_hosts)
		expected_host(p, p->rank, o->host, sizeof(o->host));
	if (p->rank == 0)
		o->listen_fd = p->lfd;
	if (p->hook_fd >= 0) {
		o->retry_hook = hook;
		o->retry_arg = (void *)&p->hook_fd;
	}
}

static int wait_go(int fd)
{
	char c;

	return read(fd, &c, 1) == 1 ? 0 : -1;
}

static int run_all(const struct proc *p, struct boot *b, char *msg, size_t msglen)
{
	uint8_t *mine = malloc(BOOT_BLOB_MAX);
	uint64_t *fixed = calloc((size_t)p->world, sizeof(uint64_t));
	struct boot_gather g;
	char host[BOOT_HOST_MAX];
	int rc = 0;

	CHECK(mine && fixed, "out of memory");
	CHECK(boot_rank(b) == (uint32_t)p->rank && boot_world(b) == (uint32_t)p->world,
	      "rank/world %u/%u, expected %d/%d", boot_rank(b), boot_world(b), p->rank, p->world);
	for (int r = 0; r < p->world; r++) {
		char name[BOOT_NAME_MAX];

		snprintf(name, sizeof(name), "worker%d", r);
		expected_host(p, r, host, sizeof(host));
		CHECK(strcmp(boot_name(b, (uint32_t)r), name) == 0, "rank %d's name is '%s'", r,
		      boot_name(b, (uint32_t)r));
		CHECK(strcmp(boot_host(b, (uint32_t)r), host) == 0, "rank %d's host is '%s', expected '%s'",
		      r, boot_host(b, (uint32_t)r), host);
	}
	if (p->two_hosts) {
		CHECK(!boot_all_local(b) && boot_local_rank(b) == (uint32_t)p->rank / 2 &&
		      boot_local_size(b) == (uint32_t)(p->world + 1 - p->rank % 2) / 2,
		      "locality %d %u %u", boot_all_local(b), boot_local_rank(b), boot_local_size(b));
	} else {
		CHECK(boot_all_local(b) && boot_local_rank(b) == (uint32_t)p->rank &&
		      boot_local_size(b) == (uint32_t)p->world,
		      "locality %d %u %u", boot_all_local(b), boot_local_rank(b), boot_local_size(b));
	}
	for (int round = 0; round < 6; round++) {
		size_t n = blob_len(p->rank, round);

		for (size_t i = 0; i < n; i++)
			mine[i] = blob_byte(p->rank, round, i);
		CALL(boot_allgather(b, mine, n, &g));
		CHECK(g.n == (uint32_t)p->world, "round %d: %u entries", round, g.n);
		for (int r = 0; r < p->world; r++) {
			const uint8_t *got = g.blobs[r];

			CHECK(g.lens[r] == blob_len(r, round), "round %d: rank %d's blob has %zu bytes, "
			      "expected %zu", round, r, g.lens[r], blob_len(r, round));
			for (size_t i = 0; i < g.lens[r]; i++)
				CHECK(got[i] == blob_byte(r, round, i), "round %d: rank %d's byte %zu differs",
				      round, r, i);
		}
		if (round % 2)
			CALL(boot_barrier(b));
	}
	{
		uint64_t v = (uint64_t)p->rank * 1000 + 7;

		CALL(boot_allgather_fixed(b, &v, sizeof(v), fixed));
		for (int r = 0; r < p->world; r++)
			CHECK(fixed[r] == (uint64_t)r * 1000 + 7, "fixed allgather: rank %d gave %llu", r,
			      (unsigned long long)fixed[r]);
	}
	CALL(boot_check(b));
	CALL(boot_barrier(b));
out:
	free(mine);
	free(fixed);
	return rc;
}

static rlim_t open_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	rlim_t n = 0;

	while (d && readdir(d))
		n++;
	if (d)
		closedir(d);
	return n >= 3 ? n - 3 : 0; /* less ".", ".." and the DIR's own descriptor */
}

static int rank_body(const struct proc *p, char *msg, size_t msglen)
{
	struct boot_opts o;
	struct boot *b = NULL;
	struct boot_gather g;
	int rc;

	if (p->fd_room > 0) {
		struct rlimit rl;

		rl.rlim_cur = rl.rlim_max = open_fds() + (rlim_t)p->fd_room;
		CHECK(setrlimit(RLIMIT_NOFILE, &rl) == 0, "setrlimit: %s", strerror(errno));
	}
	make_opts(p, &o);
	CALL(boot_open(&o, &b));
	switch (p->how) {
	case RUN_ALL:
		rc = run_all(p, b, msg, msglen);
		break;
	case OPEN_ONLY:
		CALL(boot_barrier(b));
		break;
	case DIE_AFTER_OPEN:
		break; /* the caller reports and _exit()s */
	case GO_THEN_ALLGATHER:
		CHECK(wait_go(p->down_fd) == 0, "no go");
		CALL(boot_allgather(b, "x", 1, &g));
		break;
	case GO_THEN_BARRIER:
		CHECK(wait_go(p->down_fd) == 0, "no go");
		CALL(boot_barrier(b));
		break;
	case BARRIER_MARKS:
		CHECK(write(p->up_fd, "B", 1) == 1, "write");
		CALL(boot_barrier(b));
		CHECK(write(p->up_fd, "A", 1) == 1, "write");
		break;
	case MIXED:
		if (p->rank == 2)
			CALL(boot_barrier(b));
		else
			CALL(boot_allgather(b, "y", 1, &g));
		break;
	case FIXED_MISMATCH: {
		uint64_t v[2] = {1, 2}, out[4];

		CALL(boot_allgather_fixed(b, v, p->rank ? 8 : 16, out));
		break;
	}
	case CHECK_UNTIL_DEAD: {
		double until;

		CALL(boot_check(b));
		CHECK(write(p->up_fd, "c", 1) == 1, "write");
		/* boot_check() never blocks: call it until the close shows, for at most 10 s. */
		until = now_s() + 10;
		while ((rc = boot_check(b)) == 0 && now_s() < until)
			poll(NULL, 0, 5);
		CHECK(rc != 0, "boot_check() never saw rank 1 go");
		snprintf(msg, msglen, "%s", rdag_last_error());
		/* The handle is broken now: collectives fail with the same error. */
		CHECK(boot_barrier(b) == rc, "barrier after a dead rank: %s", rdag_last_error());
		rc = 0;
		break;
	}
	case CLOSE_ON_GO:
		CHECK(wait_go(p->down_fd) == 0, "no go");
		break;
	}
out:
	if (p->how == DIE_AFTER_OPEN && b)
		return 0;
	boot_close(b);
	return rc;
}

/* ---- the parent's side ------------------------------------------------------------------- */

static struct proc base_proc(int rank, int world, int lfd, int port)
{
	struct proc p = {
		.rank = rank, .world = world, .token = TOKEN, .lfd = lfd, .port = port, .addr = "127.0.0.1",
		.timeout_ms = TIMEOUT_MS, .how = RUN_ALL, .up_fd = -1, .down_fd = -1, .hook_fd = -1,
	};

	return p;
}

static struct child spawn(const struct proc *p)
{
	struct child c;
	int fds[2];

	assert_int_equal(pipe(fds), 0);
	fflush(stdout);
	fflush(stderr);
	c.pid = fork();
	assert_true(c.pid >= 0);
	if (c.pid == 0) {
		struct result r;
		double t0 = now_s();

		memset(&r, 0, sizeof(r));
		close(fds[0]);
		if (p->rank != 0 && p->lfd >= 0)
			close(p->lfd); /* only rank 0 serves on the parent's listener */
		r.rc = rank_body(p, r.msg, sizeof(r.msg));
		r.secs = now_s() - t0;
		if (write(fds[1], &r, sizeof(r)) != (ssize_t)sizeof(r))
			_exit(2);
		if (p->how == DIE_AFTER_OPEN)
			_exit(0);
		exit(r.rc == 0 ? 0 : 1);
	}
	close(fds[1]);
	c.fd = fds[0];
	return c;
}

static struct result collect(struct child c)
{
	struct result r;
	size_t got = 0;
	int st = 0;

	memset(&r, 0, sizeof(r));
	while (got < sizeof(r)) {
		ssize_t n = read(c.fd, (char *)&r + got, sizeof(r) - got);

		if (n <= 0)
			break;
		got += (size_t)n;
	}
	close(c.fd);
	waitpid(c.pid, &st, 0);
	if (got != sizeof(r)) {
		r.rc = -9999;
		snprintf(r.msg, sizeof(r.msg), "child %d died without a report (status 0x%x)", (int)c.pid, st);
	} else if (!WIFEXITED(st) || WEXITSTATUS(st) != (r.rc == 0 ? 0 : 1)) {
		/* A sanitizer (leak report at exit, ...) or a crash after the report. */
		r.rc = -9998;
		snprintf(r.msg, sizeof(r.msg), "child %d reported, then ended with status 0x%x", (int)c.pid, st);
	}
	return r;
}

static void expect_ok(struct result r, const char *who)
{
	if (r.rc != 0)
		fail_msg("%s failed (%d): %s", who, r.rc, r.msg);
}

static void expect_fail(struct result r, int code, const char *needle, const char *who)
{
	if (r.rc != code || !strstr(r.msg, needle))
		fail_msg("%s: expected error %d mentioning '%s', got %d: %s", who, code, needle, r.rc, r.msg);
}

/* A TCP socket bound to 127.0.0.1 on a free port; listening or not. */
static int bound_socket(int *port, int do_listen)
{
	struct sockaddr_in a;
	socklen_t l = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	assert_true(fd >= 0);
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &l), 0);
	*port = ntohs(a.sin_port);
	if (do_listen)
		assert_int_equal(listen(fd, 64), 0);
	return fd;
}

/* A port that was free a moment ago (for the paths where rank 0 binds by itself). */
static int free_port(int family)
{
	struct sockaddr_storage ss;
	socklen_t l = sizeof(ss);
	int fd = socket(family, SOCK_STREAM, 0), port;

	if (fd < 0)
		return -1;
	memset(&ss, 0, sizeof(ss));
	ss.ss_family = (sa_family_t)family;
	if (bind(fd, (struct sockaddr *)&ss, family == AF_INET6 ? sizeof(struct sockaddr_in6)
								 : sizeof(struct sockaddr_in)) != 0 ||
	    getsockname(fd, (struct sockaddr *)&ss, &l) != 0) {
		close(fd);
		return -1;
	}
	port = ntohs(family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
					: ((struct sockaddr_in *)&ss)->sin_port);
	close(fd);
	return port;
}

static void rendezvous_n(int world, int two_hosts)
{
	struct child *c = calloc((size_t)world, sizeof(*c));
	int port, lfd = bound_socket(&port, 1);
	char who[32];

	assert_non_null(c);
	for (int r = 0; r < world; r++) {
		struct proc p = base_proc(r, world, lfd, port);

		p.two_hosts = two_hosts;
		c[r] = spawn(&p);
		if (r == 0)
			close(lfd);
	}
	for (int r = 0; r < world; r++) {
		snprintf(who, sizeof(who), "rank %d of %d", r, world);
		expect_ok(collect(c[r]), who);
	}
	free(c);
}

static void rendezvous_2(void **state)
{
	(void)state;
	rendezvous_n(2, 0);
}

static void rendezvous_4_two_hosts(void **state)
{
	(void)state;
	rendezvous_n(4, 1);
}

static void rendezvous_8(void **state)
{
	(void)state;
	rendezvous_n(8, 0);
}

/* Rank 0 binds the port itself, every rank reads only the environment. */
static void rendezvous_env(int via_env, int family, const char *addr, int world)
{
	struct child c[4];
	int port = free_port(family);

	assert_true(port > 1);
	for (int r = 0; r < world; r++) {
		struct proc p = base_proc(r, world, -1, port);

		p.via_env = via_env;
		p.addr = addr;
		c[r] = spawn(&p);
	}
	for (int r = 0; r < world; r++)
		expect_ok(collect(c[r]), addr);
}

static void rendezvous_master_port_env(void **state)
{
	(void)state;
	rendezvous_env(1, AF_INET, "127.0.0.1", 3);
}

static void rendezvous_rdag_env_ipv6_and_names(void **state)
{
	int fd = socket(AF_INET6, SOCK_STREAM, 0);
	struct sockaddr_in6 a;
	int have_v6;

	(void)state;
	memset(&a, 0, sizeof(a));
	a.sin6_family = AF_INET6;
	a.sin6_addr = in6addr_loopback;
	have_v6 = fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
	if (fd >= 0)
		close(fd);
	rendezvous_env(2, AF_INET, "localhost", 2);
	if (!have_v6) {
		print_message("no IPv6 loopback here: [::1] part skipped\n");
		return;
	}
	rendezvous_env(2, AF_INET6, "::1", 2);
	rendezvous_env(2, AF_INET6, "[::1]", 2);
}

static void barrier_holds_everyone(void **state)
{
	struct child c[4];
	int port, lfd = bound_socket(&port, 1), marks[2];
	char seen[8];
	size_t got = 0;

	(void)state;
	assert_int_equal(pipe(marks), 0);
	for (int r = 0; r < 4; r++) {
		struct proc p = base_proc(r, 4, lfd, port);

		p.how = BARRIER_MARKS;
		p.up_fd = marks[1];
		c[r] = spawn(&p);
		if (r == 0)
			close(lfd);
	}
	close(marks[1]);
	while (got < sizeof(seen)) {
		ssize_t n = read(marks[0], seen + got, sizeof(seen) - got);

		assert_true(n > 0);
		got += (size_t)n;
	}
	close(marks[0]);
	for (int r = 0; r < 4; r++)
		expect_ok(collect(c[r]), "barrier rank");
	/* No rank left the barrier before every rank had entered it. */
	assert_memory_equal(seen, "BBBBAAAA", 8);
}

static void wrong_token_refused(void **state)
{
	struct child c0, c1, c2, rogue;
	int port, lfd = bound_socket(&port, 1);
	struct proc p0 = base_proc(0, 3, lfd, port), pr = base_proc(1, 3, lfd, port);
	struct proc p1 = base_proc(1, 3, lfd, port), p2 = base_proc(2, 3, lfd, port);

	(void)state;
	c0 = spawn(&p0);
	close(lfd);
	pr.token = "another-job";
	pr.how = OPEN_ONLY;
	rogue = spawn(&pr);
	expect_fail(collect(rogue), RDAG_EACCES, "job token", "rogue rank");
	/* Rank 0 kept waiting: the right ranks still complete. */
	c1 = spawn(&p1);
	c2 = spawn(&p2);
	expect_ok(collect(c0), "rank 0");
	expect_ok(collect(c1), "rank 1");
	expect_ok(collect(c2), "rank 2");
}

static void wrong_world_or_rank_refused(void **state)
{
	struct child c0, c1, bad;
	int port, lfd = bound_socket(&port, 1);
	struct proc p0 = base_proc(0, 2, lfd, port), p1 = base_proc(1, 2, lfd, port);
	struct proc pw = base_proc(1, 3, lfd, port), pz = base_proc(5, 6, lfd, port);

	(void)state;
	c0 = spawn(&p0);
	close(lfd);
	pw.how = pz.how = OPEN_ONLY;
	bad = spawn(&pw);
	expect_fail(collect(bad), RDAG_EINVAL, "world size mismatch", "rank claiming world 3");
	bad = spawn(&pz);
	expect_fail(collect(bad), RDAG_ERANGE, "out of range", "rank 5");
	c1 = spawn(&p1);
	expect_ok(collect(c0), "rank 0");
	expect_ok(collect(c1), "rank 1");
}

/* Waits for whichever of two children reports first. */
static int first_of(struct child a, struct child b)
{
	struct pollfd p[2] = {{a.fd, POLLIN, 0}, {b.fd, POLLIN, 0}};

	assert_true(poll(p, 2, 60000) > 0);
	return p[0].revents ? 0 : 1;
}

static void duplicate_rank_refused(void **state)
{
	struct child c0, c2, d[2];
	int port, lfd = bound_socket(&port, 1), first;
	struct proc p0 = base_proc(0, 3, lfd, port), p1 = base_proc(1, 3, lfd, port);
	struct proc p2 = base_proc(2, 3, lfd, port);

	(void)state;
	c0 = spawn(&p0);
	close(lfd);
	d[0] = spawn(&p1);
	d[1] = spawn(&p1);
	/* Whichever came second is refused; the first keeps its place. */
	first = first_of(d[0], d[1]);
	expect_fail(collect(d[first]), RDAG_EEXIST, "duplicate rank 1", "second rank 1");
	c2 = spawn(&p2);
	expect_ok(collect(c0), "rank 0");
	expect_ok(collect(d[1 - first]), "first rank 1");
	expect_ok(collect(c2), "rank 2");
}

static void duplicate_name_refused(void **state)
{
	struct child c0, d[2];
	int port, lfd = bound_socket(&port, 1), first;
	struct proc p0 = base_proc(0, 3, lfd, port), p[2] = {base_proc(1, 3, lfd, port), base_proc(2, 3, lfd, port)};

	(void)state;
	p0.how = p[0].how = p[1].how = OPEN_ONLY;
	p[0].name = p[1].name = "same";
	c0 = spawn(&p0);
	close(lfd);
	d[0] = spawn(&p[0]);
	d[1] = spawn(&p[1]);
	first = first_of(d[0], d[1]);
	expect_fail(collect(d[first]), RDAG_EEXIST, "duplicate worker name 'same'", "second 'same'");
	/* The refused rank comes back under another name. */
	p[first].name = "other";
	d[first] = spawn(&p[first]);
	expect_ok(collect(c0), "rank 0");
	expect_ok(collect(d[0]), "rank 1");
	expect_ok(collect(d[1]), "rank 2");
}

static void missing_rank_times_out(void **state)
{
	struct child c[3];
	int port, lfd = bound_socket(&port, 1);

	(void)state;
	for (int r = 0; r < 3; r++) {
		struct proc p = base_proc(r, 4, lfd, port);

		p.timeout_ms = 2000;
		p.how = OPEN_ONLY;
		c[r] = spawn(&p);
		if (r == 0)
			close(lfd);
	}
	for (int r = 0; r < 3; r++) {
		struct result res = collect(c[r]);

		expect_fail(res, RDAG_ETIMEDOUT, "rank 3 of 4 never joined", "rank waiting for rank 3");
		if (res.secs < 1.0 || res.secs > 2.0 + 3.0)
			fail_msg("rank %d gave up after %.2f s with a 2 s timeout", r, res.secs);
	}
}

/* Rank 0 would wait 60 s, but the others give up after 2 s: the first deadline rules everyone. */
static void missing_rank_first_deadline_wins(void **state)
{
	struct child c[3];
	int port, lfd = bound_socket(&port, 1);

	(void)state;
	for (int r = 0; r < 3; r++) {
		struct proc p = base_proc(r, 4, lfd, port);

		p.timeout_ms = r == 0 ? 60000 : 2000;
		p.how = OPEN_ONLY;
		c[r] = spawn(&p);
		if (r == 0)
			close(lfd);
	}
	for (int r = 0; r < 3; r++) {
		struct result res = collect(c[r]);

		expect_fail(res, RDAG_ETIMEDOUT, "rank 3 of 4 never joined", "rank waiting for rank 3");
		if (res.secs > 2.0 + 3.0)
			fail_msg("rank %d gave up after %.2f s; the earliest timeout was 2 s", r, res.secs);
	}
}

/* Rank 0 runs out of descriptors: a clear error at once, no busy loop until the deadline. */
static void rank0_out_of_descriptors(void **state)
{
	struct child c[8];
	int port, lfd = bound_socket(&port, 1);

	(void)state;
	for (int r = 0; r < 8; r++) {
		struct proc p = base_proc(r, 8, lfd, port);

		p.how = OPEN_ONLY;
		p.timeout_ms = r == 0 ? 60000 : 3000;
		p.fd_room = r == 0 ? 3 : 0;
		c[r] = spawn(&p);
		if (r == 0)
			close(lfd);
	}
	{
		struct result res = collect(c[0]);

		expect_fail(res, RDAG_ENOSPC, "ran out of file descriptors", "rank 0");
		if (res.secs > 3.0 + 3.0)
			fail_msg("rank 0 needed %.2f s to notice", res.secs);
	}
	for (int r = 1; r < 8; r++) {
		struct result res = collect(c[r]);

		if (res.rc == 0 || res.secs > 3.0 + 3.0)
			fail_msg("rank %d: %d after %.2f s: %s", r, res.rc, res.secs, res.msg);
	}
}

static void rank0_unreachable_times_out(void **state)
{
	int port, lfd = bound_socket(&port, 0); /* bound, never listening: connections are refused */
	struct proc p = base_proc(1, 2, lfd, port);
	struct result res;

	(void)state;
	p.timeout_ms = 1500;
	res = collect(spawn(&p));
	close(lfd);
	expect_fail(res, RDAG_ETIMEDOUT, "cannot reach rank 0", "rank 1 alone");
	assert_non_null(strstr(res.msg, "127.0.0.1"));
	if (res.secs < 1.0 || res.secs > 1.5 + 3.0)
		fail_msg("rank 1 gave up after %.2f s with a 1.5 s timeout", res.secs);
}

static void rank0_started_last(void **state)
{
	struct child c[4];
	int port, lfd = bound_socket(&port, 0), tries[2];
	char buf[3];
	size_t got = 0;

	(void)state;
	assert_int_equal(pipe(tries), 0);
	for (int r = 1; r < 4; r++) {
		struct proc p = base_proc(r, 4, lfd, port);

		p.hook_fd = tries[1];
		c[r] = spawn(&p);
	}
	/* Every other rank has been turned away at least once before rank 0 exists. */
	while (got < sizeof(buf)) {
		ssize_t n = read(tries[0], buf + got, sizeof(buf) - got);

		assert_true(n > 0);
		got += (size_t)n;
	}
	{
		struct proc p = base_proc(0, 4, lfd, port);

		c[0] = spawn(&p);
	}
	close(lfd);
	close(tries[0]);
	close(tries[1]);
	for (int r = 0; r < 4; r++)
		expect_ok(collect(c[r]), "rank (rank 0 last)");
}

/* ---- raw sockets against rank 0 ---------------------------------------------------------- */

static int raw_connect(int port)
{
	struct sockaddr_in a;
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	assert_true(fd >= 0);
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	a.sin_port = htons((uint16_t)port);
	assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	return fd;
}

/* Reads what rank 0 answers until it closes: a REFUSE frame (code, message) or nothing. */
static int read_refusal(int fd, int *code, char *msg, size_t msglen)
{
	uint8_t buf[2048];
	size_t got = 0;
	struct boot_hdr h;

	for (;;) {
		struct pollfd p = {fd, POLLIN, 0};
		ssize_t n;

		assert_true(poll(&p, 1, 30000) > 0); /* rank 0 answers or closes; never silence */
		n = recv(fd, buf + got, sizeof(buf) - got, 0);
		if (n <= 0)
			break;
		got += (size_t)n;
		assert_true(got < sizeof(buf));
	}
	if (got == 0)
		return 0;
	assert_true(got >= BOOT_HDR_LEN);
	assert_int_equal(boot_hdr_decode(buf, sizeof(buf), &h), 0);
	assert_int_equal(h.type, BOOT_REFUSE);
	assert_int_equal(got, BOOT_HDR_LEN + h.len);
	assert_int_equal(boot_status_decode(buf + BOOT_HDR_LEN, h.len, code, msg, msglen), 0);
	return 1;
}

static void send_raw_expect(int port, const void *bytes, size_t len, int code, const char *needle)
{
	int fd = raw_connect(port), got_code = 0;
	char msg[BOOT_MSG_MAX];

	assert_int_equal(send(fd, bytes, len, MSG_NOSIGNAL), (ssize_t)len);
	if (!read_refusal(fd, &got_code, msg, sizeof(msg)))
		fail_msg("no REFUSE for '%s'", needle);
	if (got_code != code || !strstr(msg, needle))
		fail_msg("REFUSE %d '%s', expected %d mentioning '%s'", got_code, msg, code, needle);
	close(fd);
}

static void hello_frame(struct boot_buf *b, uint32_t rank, uint32_t world, const char *token)
{
	struct boot_hello h;

	memset(&h, 0, sizeof(h));
	h.rank = rank;
	h.world = world;
	h.timeout_left_ms = 60000;
	snprintf(h.token, sizeof(h.token), "%s", token);
	snprintf(h.name, sizeof(h.name), "raw%u", rank);
	snprintf(h.host, sizeof(h.host), "rawhost");
	b->len = 0;
	assert_int_equal(boot_hello_encode(b, &h), 0);
}

static void malformed_frames_rejected(void **state)
{
	int port, lfd = bound_socket(&port, 1), idle, fd, code;
	struct proc p0 = base_proc(0, 2, lfd, port), p1 = base_proc(1, 2, lfd, port);
	struct child c0, c1;
	struct boot_buf b = {0};
	uint8_t frame[64], junk[40];
	char msg[BOOT_MSG_MAX];

	(void)state;
	c0 = spawn(&p0);
	close(lfd);
	/* A connection that never says anything must not hold rank 0 up. */
	idle = raw_connect(port);

	send_raw_expect(port, "GET / HTTP/1.0\r\n\r\n", 18, RDAG_EINVAL, "magic");
	boot_hdr_encode(frame, BOOT_HELLO, 1u << 30);
	send_raw_expect(port, frame, BOOT_HDR_LEN, RDAG_EINVAL, "announces");
	boot_hdr_encode(frame, BOOT_HELLO, 4);
	frame[4] = 9; /* version */
	send_raw_expect(port, frame, BOOT_HDR_LEN + 4, RDAG_EINVAL, "version");
	boot_hdr_encode(frame, 42, 4);
	send_raw_expect(port, frame, BOOT_HDR_LEN + 4, RDAG_EINVAL, "unknown type");
	boot_hdr_encode(frame, BOOT_GATHER, 16);
	memset(frame + BOOT_HDR_LEN, 0, 16);
	send_raw_expect(port, frame, BOOT_HDR_LEN + 16, RDAG_EINVAL, "expected a HELLO");
	boot_hdr_encode(frame, BOOT_HELLO, 20);
	memset(frame + BOOT_HDR_LEN, 0xff, 20);
	send_raw_expect(port, frame, BOOT_HDR_LEN + 20, RDAG_EINVAL, "malformed HELLO");
	hello_frame(&b, 1, 2, TOKEN);
	b.p[b.len - 3] = '\n'; /* a control character in the host name */
	send_raw_expect(port, b.p, b.len, RDAG_EINVAL, "malformed HELLO");
	hello_frame(&b, 7, 2, TOKEN);
	send_raw_expect(port, b.p, b.len, RDAG_ERANGE, "out of range");
	hello_frame(&b, 1, 2, "not-the-token");
	send_raw_expect(port, b.p, b.len, RDAG_EACCES, "job token");
	hello_frame(&b, 0, 2, TOKEN);
	send_raw_expect(port, b.p, b.len, RDAG_EEXIST, "duplicate rank 0");

	/* Half a frame, then the sender stops: rank 0 just closes. */
	fd = raw_connect(port);
	hello_frame(&b, 1, 2, TOKEN);
	assert_int_equal(send(fd, b.p, 10, MSG_NOSIGNAL), 10);
	shutdown(fd, SHUT_WR);
	assert_int_equal(read_refusal(fd, &code, msg, sizeof(msg)), 0);
	close(fd);
	/* Random bytes, a few times. */
	for (int i = 0; i < 5; i++) {
		for (size_t k = 0; k < sizeof(junk); k++)
			junk[k] = (uint8_t)(rand() & 0xff);
		if (i % 2) /* a valid header over random bytes, so the body decoders run too */
			boot_hdr_encode(junk, (uint16_t)(1 + i % 6), (uint32_t)(rand() % 64));
		fd = raw_connect(port);
		assert_int_equal(send(fd, junk, sizeof(junk), MSG_NOSIGNAL), (ssize_t)sizeof(junk));
		shutdown(fd, SHUT_WR);
		(void)read_refusal(fd, &code, msg, sizeof(msg));
		close(fd);
	}

	/* After all that, the real rank 1 joins and the job runs. */
	c1 = spawn(&p1);
	expect_ok(collect(c0), "rank 0");
	expect_ok(collect(c1), "rank 1");
	close(idle);
	boot_buf_free(&b);
}

/* ---- failures after the rendezvous ------------------------------------------------------- */

static void dead_rank_fails_collectives(void **state)
{
	struct child c[3];
	int port, lfd = bound_socket(&port, 1), go[2];

	(void)state;
	assert_int_equal(pipe(go), 0);
	for (int r = 0; r < 3; r++) {
		struct proc p = base_proc(r, 3, lfd, port);

		p.how = r == 2 ? DIE_AFTER_OPEN : GO_THEN_ALLGATHER;
		p.down_fd = go[0];
		c[r] = spawn(&p);
		if (r == 0)
			close(lfd);
	}
	expect_ok(collect(c[2]), "rank 2 (before dying)");
	assert_int_equal(write(go[1], "gg", 2), 2);
	for (int r = 0; r < 2; r++)
		expect_fail(collect(c[r]), RDAG_EPEER_DEAD, "rank 2 ('worker2'", "survivor");
	close(go[0]);
	close(go[1]);
}

static void dead_rank0_fails_collectives(void **state)
{
	struct child c[2];
	int port, lfd = bound_socket(&port, 1), go[2];

	(void)state;
	assert_int_equal(pipe(go), 0);
	for (int r = 0; r < 2; r++) {
		struct proc p = base_proc(r, 2, lfd, port);

		p.how = r == 0 ? DIE_AFTER_OPEN : GO_THEN_BARRIER;
		p.down_fd = go[0];
		c[r] = spawn(&p);
		if (r == 0)
			close(lfd);
	}
	expect_ok(collect(c[0]), "rank 0 (before dying)");
	assert_int_equal(write(go[1], "g", 1), 1);
	expect_fail(collect(c[1]), RDAG_EPEER_DEAD, "rank 0 died", "rank 1");
	close(go[0]);
	close(go[1]);
}

static void check_sees_a_closed_rank(void **state)
{
	struct child c[2];
	int port, lfd = bound_socket(&port, 1), up[2], down[2];
	char ch;

	(void)state;
	assert_int_equal(pipe(up), 0);
	assert_int_equal(pipe(down), 0);
	for (int r = 0; r < 2; r++) {
		struct proc p = base_proc(r, 2, lfd, port);

		p.how = r == 0 ? CHECK_UNTIL_DEAD : CLOSE_ON_GO;
		p.up_fd = up[1];
		p.down_fd = down[0];
		c[r] = spawn(&p);
		if (r == 0)
			close(lfd);
	}
	/* Rank 0 has seen everyone alive; now rank 1 closes. */
	assert_int_equal(read(up[0], &ch, 1), 1);
	assert_int_equal(write(down[1], "g", 1), 1);
	expect_ok(collect(c[1]), "rank 1");
	{
		struct result res = collect(c[0]);

		expect_ok(res, "rank 0");
		if (!strstr(res.msg, "rank 1 ('worker1'"))
			fail_msg("boot_check() said: %s", res.msg);
	}
	close(up[0]);
	close(up[1]);
	close(down[0]);
	close(down[1]);
}

static void mixed_collectives_fail_everywhere(void **state)
{
	struct child c[3];
	int port, lfd = bound_socket(&port, 1);

	(void)state;
	for (int r = 0; r < 3; r++) {
		struct proc p = base_proc(r, 3, lfd, port);

		p.how = MIXED;
		c[r] = spawn(&p);
		if (r == 0)
			close(lfd);
	}
	for (int r = 0; r < 3; r++)
		expect_fail(collect(c[r]), RDAG_EINVAL, "same order", "rank in mixed collectives");
}

static void fixed_size_mismatch_fails_everywhere(void **state)
{
	struct child c[2];
	int port, lfd = bound_socket(&port, 1);

	(void)state;
	for (int r = 0; r < 2; r++) {
		struct proc p = base_proc(r, 2, lfd, port);

		p.how = FIXED_MISMATCH;
		c[r] = spawn(&p);
		if (r == 0)
			close(lfd);
	}
	for (int r = 0; r < 2; r++)
		expect_fail(collect(c[r]), RDAG_EINVAL, "every rank must contribute", "fixed mismatch");
}

static int clear_env(void **state)
{
	static const char *const vars[] = {
		"RDAG_RANK", "RDAG_WORLD_SIZE", "RDAG_MASTER_ADDR", "RDAG_MASTER_PORT", "RDAG_JOB_TOKEN",
		"RDAG_WORKER_NAME", "RDAG_BOOT_TIMEOUT", "RANK", "WORLD_SIZE", "LOCAL_RANK",
		"LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID",
		"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
		"OMPI_COMM_WORLD_LOCAL_SIZE", "OMPI_MCA_ess_base_jobid", "PMIX_NAMESPACE", "SLURM_PROCID",
		"SLURM_NTASKS", "SLURM_NPROCS", "SLURM_LOCALID", "SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST",
		"SLURM_NODELIST", "SLURM_JOB_ID", "SLURM_STEP_ID",
	};

	(void)state;
	for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++)
		unsetenv(vars[i]);
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(rendezvous_2),
		cmocka_unit_test(rendezvous_4_two_hosts),
		cmocka_unit_test(rendezvous_8),
		cmocka_unit_test(rendezvous_master_port_env),
		cmocka_unit_test(rendezvous_rdag_env_ipv6_and_names),
		cmocka_unit_test(barrier_holds_everyone),
		cmocka_unit_test(wrong_token_refused),
		cmocka_unit_test(wrong_world_or_rank_refused),
		cmocka_unit_test(duplicate_rank_refused),
		cmocka_unit_test(duplicate_name_refused),
		cmocka_unit_test(missing_rank_times_out),
		cmocka_unit_test(missing_rank_first_deadline_wins),
		cmocka_unit_test(rank0_out_of_descriptors),
		cmocka_unit_test(rank0_unreachable_times_out),
		cmocka_unit_test(rank0_started_last),
		cmocka_unit_test(malformed_frames_rejected),
		cmocka_unit_test(dead_rank_fails_collectives),
		cmocka_unit_test(dead_rank0_fails_collectives),
		cmocka_unit_test(check_sees_a_closed_rank),
		cmocka_unit_test(mixed_collectives_fail_everywhere),
		cmocka_unit_test(fixed_size_mismatch_fails_everywhere),
	};

	signal(SIGPIPE, SIG_DFL); /* the library must not need SIGPIPE ignored */
	return cmocka_run_group_tests(tests, clear_env, NULL);
}
