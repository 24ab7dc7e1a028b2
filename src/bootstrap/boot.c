/* Bootstrap rendezvous: rank 0 serves a TCP star; ranks join with a job token, then run allgathers and barriers over it. */
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bootstrap/boot.h"
#include "bootstrap/boot_int.h"
#include "util/err.h"
#include "util/log.h"

#define MAX_PENDING 64         /* connections accepted but not yet identified */
#define HANDSHAKE_MAX_MS 10000 /* a connection has this long to send its HELLO */
#define ABORT_SEND_MS 1000     /* budget for telling every rank that we failed */
#define MISSING_SHOWN 32       /* ranks listed by name in a message; the rest are counted */

/* Rank 0's view of one other rank's connection. */
struct peer {
	int fd; /* -1: not joined */
	struct boot_rx rx;
	char addr[80];
};

/* A connection rank 0 accepted whose HELLO has not arrived yet. */
struct pending {
	int fd;
	struct boot_rx rx;
	int64_t deadline;
	char addr[80];
};

struct boot {
	uint32_t rank, world, local_rank, local_size;
	int all_local;
	int timeout_ms;
	char **names, **hosts;
	char token[BOOT_TOKEN_MAX];
	const char *token_src;
	char where[BOOT_ADDR_MAX + 160]; /* how we reach rank 0, for messages */
	int fd;                 /* other ranks: the connection to rank 0 */
	struct boot_rx rx;      /* other ranks: frame being received from rank 0 */
	struct peer *peers;     /* rank 0: world entries ([0] unused) */
	uint32_t seq;           /* collectives run so far */
	int broken;             /* 0, or the code of the error that broke the handle */
	char broken_msg[512];
	uint8_t *result;        /* storage the last collective's blobs point into */
	const void **blobs;
	size_t *lens;
};

static const char *kind_name(uint32_t kind)
{
	return kind == BOOT_KIND_BARRIER ? "barrier" : "allgather";
}

/* Grace a non-root rank gives rank 0 past its own deadline, to hear rank 0's verdict. */
static int64_t grace_ms(const struct boot *b)
{
	return 1000 + b->timeout_ms / 20;
}

static uint32_t left_u32(int64_t deadline)
{
	int64_t d = deadline - boot_now_ms();

	return d <= 0 ? 0 : d > UINT32_MAX ? UINT32_MAX : (uint32_t)d;
}

/* Marks the handle broken with the calling thread's last error; returns code. */
static int breaks(struct boot *b, int code)
{
	if (!b->broken) {
		b->broken = code;
		snprintf(b->broken_msg, sizeof(b->broken_msg), "%s", rdag_last_error());
	}
	return code;
}

/* "3, 5, 7" for ranks r with !present[r] (first MISSING_SHOWN), and how many there are. */
static uint32_t missing_list(const struct boot *b, const char *present, char *out, size_t outlen)
{
	uint32_t n = 0;
	size_t used = 0;

	out[0] = '\0';
	for (uint32_t r = 0; r < b->world; r++) {
		if (present[r])
			continue;
		if (n < MISSING_SHOWN && used < outlen) {
			int w = snprintf(out + used, outlen - used, "%s%u", n ? ", " : "", r);
			used += w > 0 ? (size_t)w : 0;
		}
		n++;
	}
	if (n > MISSING_SHOWN && used < outlen)
		snprintf(out + used, outlen - used, ", ... (%u in all)", n);
	return n;
}

/* Sends a REFUSE or ABORT frame without waiting long (the peer may be gone). */
static void send_status(int fd, uint16_t type, int code, const char *msg, int64_t deadline)
{
	struct boot_buf buf = {0};

	if (boot_status_encode(&buf, type, code, msg) == 0)
		(void)boot_send_all(fd, buf.p, buf.len, deadline);
	boot_buf_free(&buf);
}

/*
 * Rank 0 gives up: records the error, tells every joined rank (ABORT with the same message, so
 * each of them fails with it), and breaks the handle. Returns code.
 */
static int root_abort(struct boot *b, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int root_abort(struct boot *b, int code, const char *fmt, ...)
{
	char msg[BOOT_MSG_MAX];
	int64_t deadline = boot_now_ms() + ABORT_SEND_MS;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	LOG_ERROR("bootstrap: %s", msg);
	for (uint32_t r = 1; r < b->world; r++) {
		if (b->peers[r].fd >= 0)
			send_status(b->peers[r].fd, BOOT_ABORT, code, msg, deadline);
	}
	err_set(code, "%s", msg);
	return breaks(b, code);
}

/* ---- rank 0: accepting the other ranks ------------------------------------------------- */

static void drop_pending(struct pending *p)
{
	boot_drain_close(p->fd);
	boot_rx_reset(&p->rx);
	p->fd = -1;
}

/* Refuses a pending connection: logs why, tells the peer (REFUSE), closes it. */
static void refuse(struct pending *p, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void refuse(struct pending *p, int code, const char *fmt, ...)
{
	char msg[BOOT_MSG_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	LOG_WARN("bootstrap: rank 0 refused the connection from %s: %s; still waiting for the right ranks",
		 p->addr, msg);
	send_status(p->fd, BOOT_REFUSE, code, msg, boot_now_ms() + 200);
	drop_pending(p);
}

/* Looks without reading: 1 data waiting, 0 open and idle, -1 closed or failed. */
static int peek_state(int fd)
{
	char c;
	ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);

	if (n > 0)
		return 1;
	return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) ? 0 : -1;
}

/* 1 if the connection still looks open (data waiting stays for the next frame). */
static int conn_alive(int fd)
{
	return peek_state(fd) >= 0;
}

static int token_equal(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	unsigned char d = la != lb;

	for (size_t i = 0; i < la && i < lb; i++)
		d |= (unsigned char)(a[i] ^ b[i]);
	return d == 0;
}

static void forget_rank(struct boot *b, uint32_t r)
{
	boot_drain_close(b->peers[r].fd);
	boot_rx_reset(&b->peers[r].rx);
	b->peers[r].fd = -1;
	free(b->names[r]);
	free(b->hosts[r]);
	b->names[r] = b->hosts[r] = NULL;
}

/* A whole frame arrived on a pending connection: admit the rank or refuse it. */
static void handle_hello(struct boot *b, struct pending *p, uint32_t *joined, int64_t *deadline)
{
	struct boot_hello h;
	uint32_t r;

	if (p->rx.h.type != BOOT_HELLO) {
		refuse(p, RDAG_EINVAL, "protocol error: expected a HELLO frame, got type %u", p->rx.h.type);
		return;
	}
	if (boot_hello_decode(p->rx.body, p->rx.h.len, &h) != 0) {
		refuse(p, RDAG_EINVAL, "malformed HELLO: %s", rdag_last_error());
		return;
	}
	if (!token_equal(h.token, b->token)) {
		refuse(p, RDAG_EACCES, "wrong job token: a process claiming rank %u ('%s' on %s) presented a "
		       "job token that differs from rank 0's (rank 0's comes from %s); every rank of a job "
		       "must have the same RDAG_JOB_TOKEN or come from the same launcher job",
		       h.rank, h.name, h.host, b->token_src);
		return;
	}
	r = h.rank;
	if (r == 0) {
		refuse(p, RDAG_EEXIST, "duplicate rank 0: rank 0 is already '%s' on %s", b->names[0],
		       b->hosts[0]);
		return;
	}
	if (r >= b->world) {
		refuse(p, RDAG_ERANGE, "rank %u is out of range for rank 0's world of %u ranks", r, b->world);
		return;
	}
	if (h.world != b->world) {
		refuse(p, RDAG_EINVAL, "world size mismatch: rank %u says %u ranks, rank 0 says %u", r,
		       h.world, b->world);
		return;
	}
	if (b->peers[r].fd >= 0) {
		if (conn_alive(b->peers[r].fd)) {
			refuse(p, RDAG_EEXIST, "duplicate rank %u: rank %u already joined as '%s' on %s (from %s)",
			       r, r, b->names[r], b->hosts[r], b->peers[r].addr);
			return;
		}
		LOG_WARN("bootstrap: rank %u's earlier connection from %s is gone; taking the new one from %s",
			 r, b->peers[r].addr, p->addr);
		forget_rank(b, r);
		(*joined)--;
	}
	for (uint32_t q = 0; q < b->world; q++) {
		if (b->names[q] && strcmp(b->names[q], h.name) == 0) {
			refuse(p, RDAG_EEXIST, "duplicate worker name '%s': rank %u already uses it, rank %u "
			       "asked for it", h.name, q, r);
			return;
		}
	}
	b->names[r] = strdup(h.name);
	b->hosts[r] = strdup(h.host);
	if (!b->names[r] || !b->hosts[r]) {
		free(b->names[r]);
		free(b->hosts[r]);
		b->names[r] = b->hosts[r] = NULL;
		refuse(p, RDAG_ENOMEM, "rank 0 is out of memory");
		return;
	}
	b->peers[r].fd = p->fd;
	snprintf(b->peers[r].addr, sizeof(b->peers[r].addr), "%s", p->addr);
	boot_rx_reset(&p->rx);
	p->fd = -1;
	(*joined)++;
	/* The whole job fails when the first rank gives up: rank 0 says so then, naming the missing. */
	if (boot_now_ms() + h.timeout_left_ms < *deadline)
		*deadline = boot_now_ms() + h.timeout_left_ms;
	LOG_DEBUG("bootstrap: rank %u ('%s' on %s, from %s) joined; %u of %u present", r, h.name, h.host,
		  b->peers[r].addr, *joined, b->world);
}

/* Warns when rank 0's advertised address is not one of this host's (the others will not find us). */
static void warn_if_not_local(const char *addr)
{
	struct addrinfo hints, *res = NULL;
	int local = 0;

	if (!addr[0])
		return;
	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_DGRAM;
	if (getaddrinfo(addr, NULL, &hints, &res) != 0)
		return; /* name resolution problems show on the ranks that connect */
	for (struct addrinfo *ai = res; ai && !local; ai = ai->ai_next) {
		int fd = socket(ai->ai_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);

		if (fd >= 0) {
			local = bind(fd, ai->ai_addr, ai->ai_addrlen) == 0;
			close(fd);
		}
	}
	freeaddrinfo(res);
	if (!local)
		LOG_WARN("bootstrap: rank 0's address '%s' is not an address of this host; other ranks "
			 "will try to reach rank 0 there (set RDAG_MASTER_ADDR to this host's name)", addr);
}

/* Rank 0 holds a socket per rank: raise the soft descriptor limit towards the hard one if needed. */
static void ensure_fd_room(uint32_t world)
{
	struct rlimit rl;
	rlim_t want = (rlim_t)world + MAX_PENDING + 64;

	if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= want)
		return;
	rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= want ? want : rl.rlim_max;
	if (setrlimit(RLIMIT_NOFILE, &rl) == 0)
		LOG_INFO("bootstrap: raised the open-file limit to %llu for %u ranks",
			 (unsigned long long)rl.rlim_cur, world);
}

static int root_open(struct boot *b, const struct boot_opts *o)
{
	struct pending pend[MAX_PENDING];
	struct pollfd *pfds = NULL;
	int *who = NULL; /* per pollfd: -1 listen, >= 0 pending index, <= -2 rank -(r + 2) */
	struct boot_buf buf = {0};
	int npend = 0, lfd = o->listen_fd, rc = 0, port = o->master_port;
	int64_t start = boot_now_ms(), deadline = start + b->timeout_ms;
	uint32_t joined = 1;

	if (lfd >= 0)
		rc = boot_listen_fd(lfd);
	else
		rc = boot_listen(port, &lfd);
	if (rc) {
		char why[256];

		snprintf(why, sizeof(why), "%s", rdag_last_error());
		rc = err_set(rc, "rank 0 cannot serve the rendezvous (port from %s): %s", o->master_port_src,
			     why);
		goto out;
	}
	warn_if_not_local(o->master_addr);
	ensure_fd_room(b->world);
	pfds = calloc(1 + MAX_PENDING + b->world, sizeof(*pfds));
	who = calloc(1 + MAX_PENDING + b->world, sizeof(*who));
	if (!pfds || !who) {
		rc = err_set(RDAG_ENOMEM, "bootstrap: out of memory for %u ranks", b->world);
		goto out;
	}
	LOG_INFO("bootstrap: rank 0 waiting for %u other ranks (timeout %.1f s)", b->world - 1,
		 b->timeout_ms / 1000.0);

	while (joined < b->world) {
		int64_t now = boot_now_ms(), wake = deadline;
		int n = 0;

		if (now >= deadline) {
			char *present = calloc(b->world, 1), list[512];
			uint32_t nmiss;

			if (!present) {
				rc = root_abort(b, RDAG_ETIMEDOUT, "bootstrap timed out");
				goto out;
			}
			for (uint32_t r = 0; r < b->world; r++)
				present[r] = r == 0 || b->peers[r].fd >= 0;
			nmiss = missing_list(b, present, list, sizeof(list));
			free(present);
			rc = root_abort(b, RDAG_ETIMEDOUT, "bootstrap timed out after %.1f s: %s %s of %u never "
					"joined rank 0 (%u of %u ranks present)", (now - start) / 1000.0,
					nmiss == 1 ? "rank" : "ranks", list, b->world, joined, b->world);
			goto out;
		}
		pfds[n] = (struct pollfd){lfd, POLLIN, 0};
		who[n++] = -1;
		for (int i = 0; i < npend; i++) {
			if (pend[i].deadline < wake)
				wake = pend[i].deadline;
			pfds[n] = (struct pollfd){pend[i].fd, POLLIN, 0};
			who[n++] = i;
		}
		for (uint32_t r = 1; r < b->world; r++) {
			if (b->peers[r].fd < 0)
				continue;
			pfds[n] = (struct pollfd){b->peers[r].fd, POLLIN, 0};
			who[n++] = -(int)r - 2;
		}
		if (poll(pfds, (nfds_t)n, wake > now ? (int)(wake - now) : 0) < 0 && errno != EINTR) {
			rc = root_abort(b, RDAG_EIO, "bootstrap: poll failed: %s", strerror(errno));
			goto out;
		}
		now = boot_now_ms();
		for (int k = 0; k < n; k++) {
			if (who[k] >= 0) {
				struct pending *p = &pend[who[k]];
				int s;

				if (p->fd < 0)
					continue;
				if (!pfds[k].revents) {
					if (now >= p->deadline) {
						LOG_WARN("bootstrap: closing the connection from %s: no HELLO within "
							 "%d ms", p->addr, HANDSHAKE_MAX_MS);
						drop_pending(p);
					}
					continue;
				}
				s = boot_rx_step(p->fd, &p->rx, BOOT_HELLO_MAX);
				if (s == 1)
					handle_hello(b, p, &joined, &deadline); /* admits or refuses: p is done */
				else if (s < 0 && s != RDAG_ECONNRESET) {
					refuse(p, RDAG_EINVAL, "malformed frame: %s", rdag_last_error());
				} else if (s < 0) {
					LOG_INFO("bootstrap: connection from %s closed before its HELLO", p->addr);
					drop_pending(p);
				}
			} else if (who[k] <= -2 && pfds[k].revents) {
				uint32_t r = (uint32_t)(-who[k] - 2);

				int st = b->peers[r].fd >= 0 ? peek_state(b->peers[r].fd) : 0;

				/* A joined rank must stay silent until WELCOME: readable means gone or broken. */
				if (st < 0) {
					LOG_WARN("bootstrap: rank %u ('%s' on %s) left before every rank joined; "
						 "waiting for it to come back", r, b->names[r], b->hosts[r]);
					forget_rank(b, r);
					joined--;
				} else if (st > 0) {
					LOG_WARN("bootstrap: rank %u ('%s' on %s) sent data before every rank "
						 "joined; dropping it", r, b->names[r], b->hosts[r]);
					forget_rank(b, r);
					joined--;
				}
			}
		}
		/* Forget closed pending slots, then take new connections. */
		{
			int j = 0;

			for (int i = 0; i < npend; i++) {
				if (pend[i].fd >= 0)
					pend[j++] = pend[i];
			}
			npend = j;
		}
		if (pfds[0].revents) {
			for (;;) {
				int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

				if (fd < 0) {
					if (errno == EINTR || errno == ECONNABORTED)
						continue;
					if (errno == EMFILE || errno == ENFILE) {
						struct rlimit rl = {0, 0};

						getrlimit(RLIMIT_NOFILE, &rl);
						rc = root_abort(b, RDAG_ENOSPC, "rank 0 ran out of file descriptors "
								"with %u of %u ranks joined (open-file limit %llu): "
								"raise it (ulimit -n) to at least %u", joined,
								b->world, (unsigned long long)rl.rlim_cur,
								b->world + MAX_PENDING + 64);
						goto out;
					}
					if (errno != EAGAIN && errno != EWOULDBLOCK)
						LOG_WARN("bootstrap: accept failed: %s", strerror(errno));
					break;
				}
				if (npend == MAX_PENDING) {
					char addr[80];

					boot_peer_str(fd, addr, sizeof(addr));
					LOG_WARN("bootstrap: %d connections are waiting to identify themselves; "
						 "closing the new one from %s", MAX_PENDING, addr);
					close(fd);
					continue;
				}
				memset(&pend[npend], 0, sizeof(pend[npend]));
				pend[npend].fd = fd;
				pend[npend].deadline =
					now + (b->timeout_ms < HANDSHAKE_MAX_MS ? b->timeout_ms : HANDSHAKE_MAX_MS);
				boot_peer_str(fd, pend[npend].addr, sizeof(pend[npend].addr));
				npend++;
			}
		}
	}

	/* Everyone is here: tell them who is who. */
	if ((rc = boot_welcome_encode(&buf, b->world, b->names, b->hosts))) {
		rc = root_abort(b, rc, "bootstrap: cannot encode the rank table: %s", rdag_last_error());
		goto out;
	}
	deadline = boot_now_ms() + b->timeout_ms;
	for (uint32_t r = 1; r < b->world; r++) {
		if (boot_send_all(b->peers[r].fd, buf.p, buf.len, deadline) != 0) {
			rc = root_abort(b, RDAG_EPEER_DEAD, "rank %u ('%s' on %s) went away before the "
					"rendezvous completed: %s", r, b->names[r], b->hosts[r], rdag_last_error());
			goto out;
		}
	}
	LOG_INFO("bootstrap: all %u ranks joined in %.3f s", b->world, (boot_now_ms() - start) / 1000.0);
out:
	for (int i = 0; i < npend; i++) {
		if (pend[i].fd >= 0)
			drop_pending(&pend[i]);
	}
	if (lfd >= 0)
		close(lfd); /* no one joins later: the port is free again */
	boot_buf_free(&buf);
	free(pfds);
	free(who);
	return rc;
}

/* ---- other ranks: joining rank 0 --------------------------------------------------------- */

/* Takes the rank table from a WELCOME body; our own entry must be what we sent. */
static int welcome(struct boot *b, const struct boot_opts *o)
{
	char **names = calloc(b->world, sizeof(char *)), **hosts = calloc(b->world, sizeof(char *));
	char why[256];
	int rc;

	if (!names || !hosts) {
		rc = err_set(RDAG_ENOMEM, "bootstrap: out of memory for %u ranks", b->world);
		goto out;
	}
	rc = boot_welcome_decode(b->rx.body, b->rx.h.len, b->world, names, hosts);
	if (rc) {
		snprintf(why, sizeof(why), "%s", rdag_last_error());
		rc = err_set(rc, "rank %u got a malformed rank table from %s: %s", b->rank, b->where, why);
		goto out;
	}
	if (strcmp(names[b->rank], o->name) != 0 || strcmp(hosts[b->rank], o->host) != 0) {
		rc = err_set(RDAG_EINVAL, "rank %u got a rank table from %s that lists it as '%s' on %s, not "
			     "'%s' on %s", b->rank, b->where, names[b->rank], hosts[b->rank], o->name, o->host);
		goto out;
	}
	for (uint32_t r = 0; r < b->world; r++) {
		char *t;

		t = b->names[r], b->names[r] = names[r], names[r] = t;
		t = b->hosts[r], b->hosts[r] = hosts[r], hosts[r] = t;
	}
out:
	for (uint32_t r = 0; names && r < b->world; r++)
		free(names[r]);
	for (uint32_t r = 0; hosts && r < b->world; r++)
		free(hosts[r]);
	free(names);
	free(hosts);
	return rc;
}

static int client_open(struct boot *b, const struct boot_opts *o)
{
	struct boot_hello h;
	struct boot_buf buf = {0};
	int64_t start = boot_now_ms(), deadline = start + b->timeout_ms;
	uint32_t maxlen = boot_welcome_max(b->world);
	int rc;

	if (maxlen < 6 + BOOT_MSG_MAX)
		maxlen = 6 + BOOT_MSG_MAX;
	memset(&h, 0, sizeof(h));
	h.rank = b->rank;
	h.world = b->world;
	memcpy(h.token, b->token, sizeof(h.token));
	memcpy(h.name, o->name, sizeof(h.name));
	memcpy(h.host, o->host, sizeof(h.host));

	for (;;) {
		char why[256];

		rc = boot_connect(o->master_addr, o->master_port, deadline, o->retry_hook, o->retry_arg,
				  &b->fd);
		if (rc) {
			snprintf(why, sizeof(why), "%s", rdag_last_error());
			rc = err_set(rc, "rank %u cannot reach %s within %.1f s: %s; is rank 0 running there?",
				     b->rank, b->where, (boot_now_ms() - start) / 1000.0, why);
			goto out;
		}
		h.timeout_left_ms = left_u32(deadline);
		buf.len = 0;
		if ((rc = boot_hello_encode(&buf, &h)))
			goto out;
		rc = boot_send_all(b->fd, buf.p, buf.len, deadline + grace_ms(b));
		if (rc == 0)
			rc = boot_recv_frame(b->fd, &b->rx, maxlen, deadline + grace_ms(b));
		if (rc == 1)
			break;
		if (rc == RDAG_ECONNRESET && b->rx.got == 0 && boot_now_ms() < deadline) {
			/* Closed before answering (rank 0 restarting or overloaded): try again. */
			LOG_INFO("bootstrap: rank 0 at %s closed the connection before answering; retrying",
				 b->where);
			boot_rx_reset(&b->rx);
			close(b->fd);
			b->fd = -1;
			continue;
		}
		snprintf(why, sizeof(why), "%s", rdag_last_error());
		if (rc == RDAG_ETIMEDOUT)
			rc = err_set(rc, "rank %u joined %s but heard nothing back within %.1f s: some rank "
				     "never joined (rank 0's log names it) or rank 0 is stuck", b->rank, b->where,
				     (boot_now_ms() - start) / 1000.0);
		else
			rc = err_set(rc, "rank %u lost its connection to %s during the rendezvous: %s", b->rank,
				     b->where, why);
		goto out;
	}

	switch (b->rx.h.type) {
	case BOOT_WELCOME:
		rc = welcome(b, o);
		break;
	case BOOT_REFUSE:
	case BOOT_ABORT: {
		char msg[BOOT_MSG_MAX];
		int code;

		rc = boot_status_decode(b->rx.body, b->rx.h.len, &code, msg, sizeof(msg));
		if (rc == 0 && b->rx.h.type == BOOT_REFUSE)
			rc = err_set(code, "%s refused rank %u: %s (this rank's job token comes from "
				     "%s)", b->where, b->rank, msg, b->token_src);
		else if (rc == 0)
			rc = err_set(code, "rank 0 at %s aborted the rendezvous: %s", b->where, msg);
		break;
	}
	default:
		rc = err_set(RDAG_EWIRE_KIND, "rank %u got an unexpected frame (type %u) from %s during the "
			     "rendezvous", b->rank, b->rx.h.type, b->where);
	}
	boot_rx_reset(&b->rx);
out:
	boot_buf_free(&buf);
	return rc;
}

/* ---- open / close ------------------------------------------------------------------------ */

static void compute_locality(struct boot *b)
{
	const char *me = b->hosts[b->rank];

	b->all_local = 1;
	b->local_rank = 0;
	b->local_size = 0;
	for (uint32_t r = 0; r < b->world; r++) {
		int same = strcmp(b->hosts[r], me) == 0;

		if (same && r < b->rank)
			b->local_rank++;
		b->local_size += (uint32_t)same;
		if (strcmp(b->hosts[r], b->hosts[0]) != 0)
			b->all_local = 0;
	}
}

int boot_open(const struct boot_opts *opts, struct boot **out)
{
	struct boot_opts o;
	struct boot *b = NULL;
	int lfd = opts ? opts->listen_fd : -1; /* ours to close until root_open takes it */
	int rc;

	if (!opts || !out) {
		rc = err_set(RDAG_EINVAL, "boot_open: NULL argument");
		goto fail;
	}
	*out = NULL;
	o = *opts;
	if ((rc = boot_opts_from_env(&o)))
		goto fail;
	b = calloc(1, sizeof(*b));
	if (!b || !(b->names = calloc((size_t)o.world_size, sizeof(char *))) ||
	    !(b->hosts = calloc((size_t)o.world_size, sizeof(char *))) ||
	    !(b->blobs = calloc((size_t)o.world_size, sizeof(void *))) ||
	    !(b->lens = calloc((size_t)o.world_size, sizeof(size_t)))) {
		rc = err_set(RDAG_ENOMEM, "bootstrap: out of memory for %d ranks", o.world_size);
		goto fail;
	}
	b->fd = -1;
	b->rank = (uint32_t)o.rank;
	b->world = (uint32_t)o.world_size;
	b->timeout_ms = o.timeout_ms;
	b->token_src = o.token_src;
	memcpy(b->token, o.job_token, sizeof(b->token));
	snprintf(b->where, sizeof(b->where), "rank 0 at %s:%d (address from %s, port from %s)",
		 o.master_addr, o.master_port, o.master_addr_src ? o.master_addr_src : "-",
		 o.master_port_src ? o.master_port_src : "-");
	b->names[b->rank] = strdup(o.name);
	b->hosts[b->rank] = strdup(o.host);
	if (!b->names[b->rank] || !b->hosts[b->rank]) {
		rc = err_set(RDAG_ENOMEM, "bootstrap: out of memory");
		goto fail;
	}
	LOG_DEBUG("bootstrap: rank %u of %u ('%s' on %s), launcher %s, %s, job token from %s, timeout %d ms",
		  b->rank, b->world, o.name, o.host, o.launcher, b->where, o.token_src, o.timeout_ms);
	if (b->world > 1 && b->rank == 0) {
		b->peers = calloc(b->world, sizeof(*b->peers));
		if (!b->peers) {
			rc = err_set(RDAG_ENOMEM, "bootstrap: out of memory for %u ranks", b->world);
			goto fail;
		}
		for (uint32_t r = 0; r < b->world; r++)
			b->peers[r].fd = -1;
		lfd = -1; /* root_open closes it */
		if ((rc = root_open(b, &o)))
			goto fail;
	} else {
		if (lfd >= 0) /* only rank 0 of a world above 1 serves */
			close(lfd);
		lfd = -1;
		if (b->world > 1 && (rc = client_open(b, &o)))
			goto fail;
	}
	compute_locality(b);
	*out = b;
	return 0;
fail:
	if (lfd >= 0)
		close(lfd);
	boot_close(b);
	return rc;
}

/* ---- collectives ------------------------------------------------------------------------- */

/* Points the handle's result arrays into a RESULT body it now owns. */
static int take_result(struct boot *b, uint8_t *body, uint32_t len, uint32_t seq, uint32_t kind)
{
	int rc = boot_result_decode(body, len, seq, kind, b->world, b->blobs, b->lens);

	if (rc) {
		free(body);
		return rc;
	}
	free(b->result);
	b->result = body;
	return 0;
}

static int root_collective(struct boot *b, uint32_t kind, const void *mine, size_t len)
{
	uint32_t seq = ++b->seq, have = 1;
	int64_t start = boot_now_ms(), deadline = start + b->timeout_ms;
	uint8_t **bodies = calloc(b->world, sizeof(*bodies));
	const void **cb = calloc(b->world, sizeof(*cb));
	size_t *cl = calloc(b->world, sizeof(*cl));
	char *got = calloc(b->world, 1);
	struct pollfd *pfds = calloc(b->world, sizeof(*pfds));
	uint32_t *who = calloc(b->world, sizeof(*who));
	struct boot_buf buf = {0};
	int rc = 0;

	if (!bodies || !cb || !cl || !got || !pfds || !who) {
		rc = root_abort(b, RDAG_ENOMEM, "%s #%u: rank 0 is out of memory", kind_name(kind), seq);
		goto out;
	}
	cb[0] = mine;
	cl[0] = len;
	got[0] = 1;
	while (have < b->world) {
		int64_t now = boot_now_ms();
		int n = 0;

		if (now >= deadline) {
			char list[512];
			uint32_t nmiss = missing_list(b, got, list, sizeof(list));

			rc = root_abort(b, RDAG_ETIMEDOUT, "%s #%u timed out after %.1f s: %s %s did not enter it",
					kind_name(kind), seq, (now - start) / 1000.0,
					nmiss == 1 ? "rank" : "ranks", list);
			goto out;
		}
		for (uint32_t r = 1; r < b->world; r++) {
			if (got[r])
				continue;
			pfds[n] = (struct pollfd){b->peers[r].fd, POLLIN, 0};
			who[n++] = r;
		}
		if (poll(pfds, (nfds_t)n, (int)(deadline - now)) < 0 && errno != EINTR) {
			rc = root_abort(b, RDAG_EIO, "%s #%u: poll failed: %s", kind_name(kind), seq,
					strerror(errno));
			goto out;
		}
		for (int k = 0; k < n; k++) {
			uint32_t r = who[k];
			struct peer *p = &b->peers[r];
			struct boot_gather_msg g;
			int s;

			if (!pfds[k].revents)
				continue;
			s = boot_rx_step(p->fd, &p->rx, BOOT_GATHER_HDR + BOOT_BLOB_MAX);
			if (s == 0)
				continue;
			if (s == RDAG_ECONNRESET) {
				rc = root_abort(b, RDAG_EPEER_DEAD, "rank %u ('%s' on %s) closed its bootstrap "
						"connection during %s #%u: it died, or closed the bootstrap while "
						"others still use it", r, b->names[r], b->hosts[r], kind_name(kind), seq);
				goto out;
			}
			if (s < 0 || p->rx.h.type != BOOT_GATHER ||
			    boot_gather_decode(p->rx.body, p->rx.h.len, &g) != 0) {
				rc = root_abort(b, RDAG_EINVAL, "rank %u ('%s' on %s) sent a malformed frame in "
						"%s #%u: %s", r, b->names[r], b->hosts[r], kind_name(kind), seq,
						s < 0 || p->rx.h.type == BOOT_GATHER ? rdag_last_error()
										 : "not a GATHER frame");
				goto out;
			}
			if (g.seq != seq || g.kind != kind) {
				rc = root_abort(b, RDAG_EINVAL, "rank %u ('%s' on %s) entered %s #%u while rank 0 "
						"is in %s #%u: every rank must call the same collectives in the "
						"same order", r, b->names[r], b->hosts[r], kind_name(g.kind), g.seq,
						kind_name(kind), seq);
				goto out;
			}
			bodies[r] = p->rx.body;
			p->rx.body = NULL;
			boot_rx_reset(&p->rx);
			cb[r] = g.blob;
			cl[r] = g.len;
			got[r] = 1;
			have++;
			if (boot_now_ms() + g.timeout_left_ms < deadline)
				deadline = boot_now_ms() + g.timeout_left_ms;
		}
	}
	if ((rc = boot_result_encode(&buf, seq, kind, b->world, cb, cl))) {
		rc = root_abort(b, rc, "%s #%u: cannot encode the result: %s", kind_name(kind), seq,
				rdag_last_error());
		goto out;
	}
	deadline = boot_now_ms() + b->timeout_ms;
	for (uint32_t r = 1; r < b->world; r++) {
		if (boot_send_all(b->peers[r].fd, buf.p, buf.len, deadline) != 0) {
			rc = root_abort(b, RDAG_EPEER_DEAD, "rank %u ('%s' on %s) went away during %s #%u: %s",
					r, b->names[r], b->hosts[r], kind_name(kind), seq, rdag_last_error());
			goto out;
		}
	}
	/* Our own copy of the result: the frame's body, as the other ranks see it. */
	memmove(buf.p, buf.p + BOOT_HDR_LEN, buf.len - BOOT_HDR_LEN);
	rc = take_result(b, buf.p, (uint32_t)(buf.len - BOOT_HDR_LEN), seq, kind);
	buf.p = NULL;
	if (rc)
		rc = breaks(b, rc);
out:
	if (bodies) {
		for (uint32_t r = 0; r < b->world; r++)
			free(bodies[r]);
	}
	boot_buf_free(&buf);
	free(bodies);
	free(cb);
	free(cl);
	free(got);
	free(pfds);
	free(who);
	return rc;
}

/* Turns a REFUSE/ABORT body from rank 0 into this rank's error. */
static int status_error(struct boot *b, const char *during)
{
	char msg[BOOT_MSG_MAX];
	int code, rc;

	rc = boot_status_decode(b->rx.body, b->rx.h.len, &code, msg, sizeof(msg));
	if (rc)
		return rc;
	return err_set(code, "%s reported a failure%s%s: %s", b->where, during ? " during " : "",
		       during ? during : "", msg);
}

static int client_collective(struct boot *b, uint32_t kind, const void *mine, size_t len)
{
	uint32_t seq = ++b->seq;
	int64_t start = boot_now_ms(), deadline = start + b->timeout_ms;
	struct boot_buf buf = {0};
	char what[48], why[256];
	int rc;

	snprintf(what, sizeof(what), "%s #%u", kind_name(kind), seq);
	if ((rc = boot_gather_encode(&buf, seq, kind, (uint32_t)b->timeout_ms, mine, len)))
		goto out; /* too large: our own error, the handle stays usable */
	rc = boot_send_all(b->fd, buf.p, buf.len, deadline);
	if (rc == 0 || rc == RDAG_ECONNRESET) /* if rank 0 aborted, its ABORT may be waiting */
		rc = boot_recv_frame(b->fd, &b->rx, boot_result_max(b->world) < 6 + BOOT_MSG_MAX
							    ? 6 + BOOT_MSG_MAX : boot_result_max(b->world),
				     deadline + grace_ms(b));
	if (rc == 1) {
		if (b->rx.h.type == BOOT_RESULT) {
			rc = take_result(b, b->rx.body, b->rx.h.len, seq, kind);
			b->rx.body = NULL;
			if (rc) {
				snprintf(why, sizeof(why), "%s", rdag_last_error());
				rc = err_set(rc, "%s: bad result from %s: %s", what, b->where, why);
			}
		} else if (b->rx.h.type == BOOT_ABORT) {
			rc = status_error(b, what);
		} else {
			rc = err_set(RDAG_EWIRE_KIND, "%s: unexpected frame type %u from %s", what, b->rx.h.type,
				     b->where);
		}
		boot_rx_reset(&b->rx);
	} else if (rc == RDAG_ECONNRESET) {
		rc = err_set(RDAG_EPEER_DEAD, "%s: %s closed the connection: rank 0 died or closed the "
			     "bootstrap", what, b->where);
	} else if (rc == RDAG_ETIMEDOUT) {
		rc = err_set(rc, "%s: no answer from %s within %.1f s: some rank did not enter it (rank 0's "
			     "log names it) or rank 0 is stuck", what, b->where, (boot_now_ms() - start) / 1000.0);
	} else {
		snprintf(why, sizeof(why), "%s", rdag_last_error());
		rc = err_set(rc, "%s: bad frame from %s: %s", what, b->where, why);
	}
	if (rc)
		rc = breaks(b, rc);
out:
	boot_buf_free(&buf);
	return rc;
}

static int collective(struct boot *b, uint32_t kind, const void *mine, size_t len, struct boot_gather *out)
{
	int rc;

	if (!b)
		return err_set(RDAG_EINVAL, "bootstrap: NULL handle");
	if (b->broken)
		return err_set(b->broken, "bootstrap unusable after an earlier error: %s", b->broken_msg);
	if (len > BOOT_BLOB_MAX)
		return err_set(RDAG_EINVAL, "%s: a contribution of %zu bytes is above the %u-byte limit",
			       kind_name(kind), len, (unsigned)BOOT_BLOB_MAX);
	if (len && !mine)
		return err_set(RDAG_EINVAL, "%s: NULL data of %zu bytes", kind_name(kind), len);
	rc = b->rank == 0 ? root_collective(b, kind, mine, len) : client_collective(b, kind, mine, len);
	if (rc == 0 && out) {
		out->n = b->world;
		out->blobs = (const void *const *)b->blobs;
		out->lens = b->lens;
	}
	return rc;
}

int boot_allgather(struct boot *b, const void *mine, size_t len, struct boot_gather *out)
{
	if (!out)
		return err_set(RDAG_EINVAL, "boot_allgather: NULL output");
	return collective(b, BOOT_KIND_ALLGATHER, mine, len, out);
}

int boot_allgather_fixed(struct boot *b, const void *mine, size_t len, void *out)
{
	struct boot_gather g;
	int rc;

	if (!out && len)
		return err_set(RDAG_EINVAL, "boot_allgather_fixed: NULL output");
	if ((rc = collective(b, BOOT_KIND_ALLGATHER, mine, len, &g)))
		return rc;
	for (uint32_t r = 0; r < g.n; r++) {
		if (g.lens[r] != len)
			return err_set(RDAG_EINVAL, "allgather #%u: rank %u contributed %zu bytes where every "
				       "rank must contribute %zu", b->seq, r, g.lens[r], len);
	}
	for (uint32_t r = 0; r < g.n; r++) {
		if (len)
			memcpy((char *)out + (size_t)r * len, g.blobs[r], len);
	}
	return 0;
}

int boot_barrier(struct boot *b)
{
	return collective(b, BOOT_KIND_BARRIER, NULL, 0, NULL);
}

int boot_check(struct boot *b)
{
	if (!b)
		return err_set(RDAG_EINVAL, "boot_check: NULL handle");
	if (b->broken)
		return err_set(b->broken, "bootstrap unusable after an earlier error: %s", b->broken_msg);
	if (b->world == 1)
		return 0;
	if (b->rank == 0) {
		for (uint32_t r = 1; r < b->world; r++) {
			if (!conn_alive(b->peers[r].fd))
				return root_abort(b, RDAG_EPEER_DEAD, "rank %u ('%s' on %s) closed its bootstrap "
						  "connection: it died or closed the bootstrap", r, b->names[r],
						  b->hosts[r]);
		}
		return 0;
	}
	if (b->rx.got == 0 && peek_state(b->fd) == 0)
		return 0; /* open and quiet */
	/* Rank 0 sends nothing unasked but ABORT: read it (or see the close). */
	{
		int rc = boot_rx_step(b->fd, &b->rx, 6 + BOOT_MSG_MAX);

		if (rc == 0)
			return 0; /* part of a frame: the rest follows */
		if (rc == 1 && b->rx.h.type == BOOT_ABORT)
			rc = status_error(b, NULL);
		else if (rc == 1)
			rc = err_set(RDAG_EWIRE_KIND, "unexpected frame type %u from %s", b->rx.h.type, b->where);
		else if (rc == RDAG_ECONNRESET)
			rc = err_set(RDAG_EPEER_DEAD, "%s closed the bootstrap connection: rank 0 died or "
				     "closed the bootstrap", b->where);
		boot_rx_reset(&b->rx);
		return breaks(b, rc);
	}
}

void boot_close(struct boot *b)
{
	if (!b)
		return;
	if (b->peers) {
		for (uint32_t r = 1; r < b->world; r++) {
			boot_drain_close(b->peers[r].fd);
			boot_rx_reset(&b->peers[r].rx);
		}
		free(b->peers);
	}
	boot_drain_close(b->fd);
	boot_rx_reset(&b->rx);
	for (uint32_t r = 0; b->names && r < b->world; r++)
		free(b->names[r]);
	for (uint32_t r = 0; b->hosts && r < b->world; r++)
		free(b->hosts[r]);
	free(b->names);
	free(b->hosts);
	free(b->result);
	free(b->blobs);
	free(b->lens);
	free(b);
}

/* ---- facts --------------------------------------------------------------------------------- */

uint32_t boot_rank(const struct boot *b)
{
	return b->rank;
}

uint32_t boot_world(const struct boot *b)
{
	return b->world;
}

const char *boot_name(const struct boot *b, uint32_t rank)
{
	return rank < b->world ? b->names[rank] : NULL;
}

const char *boot_host(const struct boot *b, uint32_t rank)
{
	return rank < b->world ? b->hosts[rank] : NULL;
}

uint32_t boot_local_rank(const struct boot *b)
{
	return b->local_rank;
}

uint32_t boot_local_size(const struct boot *b)
{
	return b->local_size;
}

int boot_all_local(const struct boot *b)
{
	return b->all_local;
}

const char *boot_job_token(const struct boot *b)
{
	return b->token;
}
