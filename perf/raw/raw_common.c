/* Shared parts of the raw fabric baselines: perftest-style options, out-of-band TCP socket, stats, output. */
#include "raw_common.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define LAT_MAX_SIZE ((size_t)8 << 20)  /* -a for latency: 2 B .. 8 MiB, as perftest */
#define BW_MAX_SIZE ((size_t)64 << 20)  /* -a for bandwidth: 2 B .. 64 MiB */
#define LAT_SWEEP_BYTES ((size_t)64 << 20)  /* -a: bytes per size and direction, at most */
#define BW_SWEEP_BYTES ((size_t)1 << 30)
#define SWEEP_MIN_ITERS 16

static void usage(const struct raw_opts *o, FILE *f)
{
	fprintf(f,
		"Usage: %s [options]            start a server\n"
		"       %s [options] <host>     connect to the server on <host>\n"
		"Options (as perftest's):\n"
		"  -s <size>   message size in bytes, suffix K/M/G allowed (default %s)\n"
		"  -a          all sizes, powers of two from 2 B to %s\n"
		"  -n <iters>  iterations per size (default %ld; under -a capped so a size moves at\n"
		"              most %s, but never fewer than %d)\n"
		"  -w <iters>  warm-up iterations per size, not measured (default %ld)\n"
		"  -p <port>   out-of-band TCP port (default %d; 0 on the server: any free port,\n"
		"              printed as \"listening on port N\")\n"
		"  -P <prov>   libfabric provider, e.g. shm, \"tcp;ofi_rxm\", \"verbs;ofi_rxm\" (ofi tools)\n"
		"  -d <dev>    libfabric domain / verbs device (default: the first that fits)\n"
		"  -c <cpu>    pin the process to this CPU\n"
		"  -I <size>   send inline (fi_inject / IBV_SEND_INLINE) up to this size (default: the\n"
		"              provider's limit; 0: never)\n"
		"  -t <depth>  writes in flight (bw, default 128)\n"
		"  -Q <n>      verbs bw: request a completion for one write in n (default 64)\n"
		"  -T <sec>    give up after this many seconds without progress (default 120)\n"
		"  -C          check the received bytes (for tests; not for timing)\n"
		"  -e          raw_ofi_bw: the target sleeps on its CQ (fi_cq_sread) instead of busy-polling\n"
		"              (raw_verbs_bw's target always sleeps on its completion channel)\n"
		"  -h          this help\n"
		"Exit status: 0 ok, 1 failure, 2 usage, 77 fabric/device not available here.\n",
		o->tool, o->tool, o->kind == RAW_LAT ? "2" : "65536",
		o->kind == RAW_LAT ? "8 MiB" : "64 MiB", o->kind == RAW_LAT ? 1000L : 5000L,
		o->kind == RAW_LAT ? "64 MiB" : "1 GiB", SWEEP_MIN_ITERS, 100L, RAW_DEFAULT_PORT);
}

int raw_parse_size(const char *s, size_t *out)
{
	char *end;
	unsigned long long v;
	unsigned shift = 0;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s || s[0] == '-')
		return -1;
	switch (*end) {
	case 'k': case 'K': shift = 10; end++; break;
	case 'm': case 'M': shift = 20; end++; break;
	case 'g': case 'G': shift = 30; end++; break;
	default: break;
	}
	if (*end == 'i' || *end == 'B')
		end++;
	if (*end == 'B')
		end++;
	if (*end != '\0' || (shift && v > (ULLONG_MAX >> shift)))
		return -1;
	*out = (size_t)(v << shift);
	return 0;
}

static int parse_long(const char *s, long lo, long hi, long *out)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end != '\0' || v < lo || v > hi)
		return -1;
	*out = v;
	return 0;
}

static void bad(const struct raw_opts *o, int c, const char *arg)
{
	fprintf(stderr, "%s: invalid value for -%c: '%s'\n", o->tool, c, arg);
	usage(o, stderr);
	exit(RAW_EXIT_USAGE);
}

void raw_parse_args(struct raw_opts *o, enum raw_kind kind, int argc, char **argv)
{
	const char *slash = strrchr(argv[0], '/');
	long v;
	int c;

	memset(o, 0, sizeof(*o));
	o->kind = kind;
	o->tool = slash ? slash + 1 : argv[0];
	o->port = RAW_DEFAULT_PORT;
	o->size = kind == RAW_LAT ? 2 : 65536;
	o->iters = kind == RAW_LAT ? 1000 : 5000;
	o->warmup = 100;
	o->cpu = -1;
	o->inline_size = -1;
	o->tx_depth = 128;
	o->cq_mod = 64;
	o->timeout_s = 120;

	while ((c = getopt(argc, argv, "s:an:w:p:P:d:c:I:t:Q:T:Ceh")) != -1) {
		switch (c) {
		case 's':
			if (raw_parse_size(optarg, &o->size) || o->size == 0)
				bad(o, c, optarg);
			break;
		case 'a': o->all = 1; break;
		case 'n':
			if (parse_long(optarg, 1, LONG_MAX / 2, &o->iters))
				bad(o, c, optarg);
			o->iters_given = 1;
			break;
		case 'w':
			if (parse_long(optarg, 0, LONG_MAX / 2, &o->warmup))
				bad(o, c, optarg);
			break;
		case 'p':
			if (parse_long(optarg, 0, 65535, &v))
				bad(o, c, optarg);
			o->port = (int)v;
			break;
		case 'P': o->provider = optarg; break;
		case 'd': o->device = optarg; break;
		case 'c':
			if (parse_long(optarg, 0, CPU_SETSIZE - 1, &v))
				bad(o, c, optarg);
			o->cpu = (int)v;
			break;
		case 'I':
			if (parse_long(optarg, 0, INT_MAX, &o->inline_size))
				bad(o, c, optarg);
			break;
		case 't':
			if (parse_long(optarg, 1, 65536, &v))
				bad(o, c, optarg);
			o->tx_depth = (int)v;
			break;
		case 'Q':
			if (parse_long(optarg, 1, 65536, &v))
				bad(o, c, optarg);
			o->cq_mod = (int)v;
			break;
		case 'T':
			if (parse_long(optarg, 1, 86400, &v))
				bad(o, c, optarg);
			o->timeout_s = (int)v;
			break;
		case 'C': o->check = 1; break;
		case 'e': o->events = 1; break;
		case 'h':
			usage(o, stdout);
			exit(0);
		default:
			usage(o, stderr);
			exit(RAW_EXIT_USAGE);
		}
	}
	if (optind < argc)
		o->host = argv[optind++];
	if (optind < argc) {
		fprintf(stderr, "%s: unexpected argument '%s'\n", o->tool, argv[optind]);
		exit(RAW_EXIT_USAGE);
	}
	if (o->host && o->port == 0) {
		fprintf(stderr, "%s: the client needs the server's port (-p)\n", o->tool);
		exit(RAW_EXIT_USAGE);
	}
	if (!o->all && o->size > (kind == RAW_LAT ? LAT_MAX_SIZE : BW_MAX_SIZE)) {
		fprintf(stderr, "%s: -s %zu is above the limit of %zu\n", o->tool, o->size,
			kind == RAW_LAT ? LAT_MAX_SIZE : BW_MAX_SIZE);
		exit(RAW_EXIT_USAGE);
	}
	if (o->cq_mod > o->tx_depth)
		o->cq_mod = o->tx_depth;
	/* Line-buffered stdout so a launcher sees the port line and rows as they come. */
	setvbuf(stdout, NULL, _IOLBF, 0);
}

size_t raw_max_size(const struct raw_opts *o)
{
	if (!o->all)
		return o->size;
	return o->kind == RAW_LAT ? LAT_MAX_SIZE : BW_MAX_SIZE;
}

size_t raw_first_size(const struct raw_opts *o)
{
	return o->all ? 2 : o->size;
}

size_t raw_next_size(const struct raw_opts *o, size_t s)
{
	if (!o->all || s >= raw_max_size(o))
		return 0;
	return s * 2;
}

long raw_iters_for(const struct raw_opts *o, size_t s)
{
	size_t budget = o->kind == RAW_LAT ? LAT_SWEEP_BYTES : BW_SWEEP_BYTES;
	long cap;

	if (!o->all)
		return o->iters;
	cap = (long)(budget / s);
	if (cap < SWEEP_MIN_ITERS)
		cap = SWEEP_MIN_ITERS;
	return o->iters < cap ? o->iters : cap;
}

long raw_warmup_for(const struct raw_opts *o, size_t s)
{
	long w = raw_iters_for(o, s) / 4;

	if (w < 1)
		w = 1;
	return o->warmup < w ? o->warmup : w;
}

int raw_pin_cpu(const struct raw_opts *o)
{
	cpu_set_t set;

	if (o->cpu < 0)
		return 0;
	CPU_ZERO(&set);
	CPU_SET(o->cpu, &set);
	if (sched_setaffinity(0, sizeof(set), &set)) {
		fprintf(stderr, "%s: cannot pin to CPU %d: %s\n", o->tool, o->cpu, strerror(errno));
		return -1;
	}
	return 0;
}

/* ---- out-of-band TCP socket ---------------------------------------------------------------- */

static void tune(int fd)
{
	int one = 1;

	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static int serve(const struct raw_opts *o)
{
	struct sockaddr_in sa;
	socklen_t salen = sizeof(sa);
	struct pollfd pfd;
	int lfd, fd = -1, one = 1, rc;

	lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (lfd < 0) {
		fprintf(stderr, "%s: socket: %s\n", o->tool, strerror(errno));
		return -1;
	}
	(void)setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_addr.s_addr = htonl(INADDR_ANY);
	sa.sin_port = htons((uint16_t)o->port);
	if (bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) || listen(lfd, 1) ||
	    getsockname(lfd, (struct sockaddr *)&sa, &salen)) {
		fprintf(stderr, "%s: cannot listen on TCP port %d: %s\n", o->tool, o->port, strerror(errno));
		goto out;
	}
	printf("listening on port %u\n", ntohs(sa.sin_port));
	fflush(stdout);
	pfd.fd = lfd;
	pfd.events = POLLIN;
	do {
		rc = poll(&pfd, 1, o->timeout_s * 1000);
	} while (rc < 0 && errno == EINTR);
	if (rc <= 0) {
		fprintf(stderr, "%s: no client connected within %d s\n", o->tool, o->timeout_s);
		goto out;
	}
	fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	if (fd < 0)
		fprintf(stderr, "%s: accept: %s\n", o->tool, strerror(errno));
	else
		tune(fd);
out:
	close(lfd);
	return fd;
}

static int dial(const struct raw_opts *o)
{
	struct addrinfo hints, *res = NULL, *ai;
	uint64_t deadline = raw_now_ns() + (uint64_t)o->timeout_s * 1000000000u;
	char port[16];
	int fd = -1, rc, err = 0;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	snprintf(port, sizeof(port), "%d", o->port);
	rc = getaddrinfo(o->host, port, &hints, &res);
	if (rc) {
		fprintf(stderr, "%s: cannot resolve %s: %s\n", o->tool, o->host, gai_strerror(rc));
		return -1;
	}
	for (;;) {
		for (ai = res; ai; ai = ai->ai_next) {
			fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
			if (fd < 0) {
				err = errno;
				continue;
			}
			if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
				tune(fd);
				goto out;
			}
			err = errno;
			close(fd);
			fd = -1;
		}
		/* The server may not be listening yet: retry until the deadline. */
		if ((err != ECONNREFUSED && err != ETIMEDOUT) || raw_now_ns() > deadline)
			break;
		usleep(20000);
	}
	fprintf(stderr, "%s: cannot connect to %s:%d: %s\n", o->tool, o->host, o->port, strerror(err));
out:
	freeaddrinfo(res);
	return fd;
}

int raw_oob_connect(const struct raw_opts *o)
{
	return o->host ? dial(o) : serve(o);
}

int raw_oob_send(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			fprintf(stderr, "out-of-band send: %s\n", n < 0 ? strerror(errno) : "closed");
			return -1;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int raw_oob_recv(int fd, void *buf, size_t len)
{
	char *p = buf;

	while (len) {
		ssize_t n = recv(fd, p, len, 0);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			fprintf(stderr, "out-of-band recv: %s\n", n < 0 ? strerror(errno) : "peer closed the connection");
			return -1;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int raw_oob_xchg(int fd, const void *mine, void *theirs, size_t len)
{
	if (raw_oob_send(fd, mine, len))
		return -1;
	return raw_oob_recv(fd, theirs, len);
}

int raw_oob_sync(int fd)
{
	char a = 's', b = 0;

	if (raw_oob_xchg(fd, &a, &b, 1))
		return -1;
	if (b != 's') {
		fprintf(stderr, "out-of-band sync: unexpected byte 0x%02x\n", (unsigned char)b);
		return -1;
	}
	return 0;
}

int raw_oob_check_params(const struct raw_opts *o, int fd)
{
	uint64_t mine[5], theirs[5];

	mine[0] = (uint64_t)o->kind;
	mine[1] = (uint64_t)o->all;
	mine[2] = o->all ? 0 : (uint64_t)o->size;
	mine[3] = (uint64_t)o->iters;
	mine[4] = (uint64_t)o->warmup;
	if (raw_oob_xchg(fd, mine, theirs, sizeof(mine)))
		return -1;
	if (memcmp(mine, theirs, sizeof(mine)) != 0) {
		fprintf(stderr,
			"%s: server and client disagree on the test (here: %s, -s %llu, -n %llu, -w %llu; "
			"peer: %s, -s %llu, -n %llu, -w %llu): give both the same -s/-a/-n/-w\n",
			o->tool, mine[1] ? "-a" : "one size", (unsigned long long)mine[2],
			(unsigned long long)mine[3], (unsigned long long)mine[4], theirs[1] ? "-a" : "one size",
			(unsigned long long)theirs[2], (unsigned long long)theirs[3],
			(unsigned long long)theirs[4]);
		return -1;
	}
	return 0;
}

int raw_oob_peer_gone(int fd)
{
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	char c;
	ssize_t n;

	if (poll(&pfd, 1, 0) <= 0)
		return 0;
	if (pfd.revents & (POLLERR | POLLNVAL))
		return 1;
	n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
	return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

void raw_watch_start(struct raw_watch *w, const struct raw_opts *o, int fd, const char *what)
{
	w->o = o;
	w->fd = fd;
	w->count = 0;
	w->progress = 0;
	w->seen_progress = 0;
	w->deadline_ns = raw_now_ns() + (uint64_t)o->timeout_s * 1000000000u;
	w->what = what;
}

int raw_watch_check(struct raw_watch *w)
{
	uint64_t now = raw_now_ns();

	if (w->progress != w->seen_progress) {
		w->seen_progress = w->progress;
		w->deadline_ns = now + (uint64_t)w->o->timeout_s * 1000000000u;
	}
	if (raw_oob_peer_gone(w->fd)) {
		fprintf(stderr, "%s: the peer went away while %s\n", w->o->tool, w->what);
		return 1;
	}
	if (now > w->deadline_ns) {
		fprintf(stderr, "%s: no progress for %d s while %s (-T to change)\n", w->o->tool,
			w->o->timeout_s, w->what);
		return 1;
	}
	return 0;
}

/* ---- output --------------------------------------------------------------------------------- */

void raw_rule(void)
{
	puts("---------------------------------------------------------------------------------------");
}

void raw_hdr(const char *key, const char *fmt, ...)
{
	va_list ap;

	printf(" %-22s: ", key);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
}

void raw_hdr_common(const struct raw_opts *o)
{
	if (o->host)
		raw_hdr("side", "client (server %s, out-of-band TCP port %d)", o->host, o->port);
	else
		raw_hdr("side", "server");
	if (o->cpu >= 0)
		raw_hdr("cpu", "pinned to %d", o->cpu);
	else
		raw_hdr("cpu", "not pinned (-c N to pin)");
	if (o->all)
		raw_hdr("sizes", "2 B .. %zu B, powers of two", raw_max_size(o));
	else
		raw_hdr("sizes", "%zu B", o->size);
	raw_hdr("iterations", "%ld per size%s, after up to %ld warm-up", o->iters,
		o->all ? " (capped for large sizes)" : "", o->warmup);
	raw_hdr("completions", "busy-polled");
}

void raw_lat_table_head(void)
{
	printf(" %-10s %11s %12s %16s %12s %12s %12s\n", "#bytes", "#iterations", "t_min[usec]",
	       "t_typical[usec]", "t_max[usec]", "t_avg[usec]", "p99[usec]");
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

void raw_lat_table_row(size_t size, uint64_t *rtt, long n)
{
	double sum = 0;
	long i, p99;

	qsort(rtt, (size_t)n, sizeof(*rtt), cmp_u64);
	for (i = 0; i < n; i++)
		sum += (double)rtt[i];
	p99 = (n * 99 + 99) / 100 - 1; /* ceil(0.99 n) - 1 */
	if (p99 >= n)
		p99 = n - 1;
	/* One-way = RTT / 2, in microseconds (as perftest's ib_send_lat reports). */
	printf(" %-10zu %11ld %12.2f %16.2f %12.2f %12.2f %12.2f\n", size, n, (double)rtt[0] / 2000.0,
	       (double)rtt[n / 2] / 2000.0, (double)rtt[n - 1] / 2000.0, sum / (double)n / 2000.0,
	       (double)rtt[p99] / 2000.0);
}

void raw_bw_table_head(void)
{
	printf(" %-10s %11s %20s %15s\n", "#bytes", "#iterations", "BW average[MB/sec]", "MsgRate[Mpps]");
}

void raw_bw_table_row(size_t size, long iters, uint64_t elapsed_ns)
{
	double sec = (double)elapsed_ns / 1e9;

	printf(" %-10zu %11ld %20.2f %15.6f\n", size, iters,
	       (double)size * (double)iters / sec / (double)(1u << 20), (double)iters / sec / 1e6);
}

void raw_fill_pattern(void *buf, size_t len, uint64_t seed)
{
	unsigned char *p = buf;
	size_t i;

	for (i = 0; i < len; i++)
		p[i] = (unsigned char)((seed * 131u + i * 7u + (i >> 8)) & 0xffu);
}

int raw_check_pattern(const void *buf, size_t len, uint64_t seed)
{
	const unsigned char *p = buf;
	size_t i;

	for (i = 0; i < len; i++)
		if (p[i] != (unsigned char)((seed * 131u + i * 7u + (i >> 8)) & 0xffu))
			return -1;
	return 0;
}
