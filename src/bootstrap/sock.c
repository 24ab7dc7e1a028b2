/* Bootstrap sockets: dual-stack listen, connect with retries, and frame I/O that never blocks past a deadline. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "bootstrap/boot_int.h"
#include "util/err.h"
#include "util/log.h"

#define CONNECT_ATTEMPT_MAX_MS 3000 /* one connect() may wait this long for an answer */
#define RETRY_MIN_MS 10
#define RETRY_MAX_MS 500

int64_t boot_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Milliseconds left before deadline, clamped to [0, INT_MAX-ish] for poll(). */
static int left_ms(int64_t deadline)
{
	int64_t d = deadline - boot_now_ms();

	if (d < 0)
		return 0;
	return d > 1000000000 ? 1000000000 : (int)d;
}

static int errno_code(int e)
{
	switch (e) {
	case ECONNREFUSED: return RDAG_ECONNREFUSED;
	case ETIMEDOUT: return RDAG_ETIMEDOUT;
	case ECONNRESET:
	case EPIPE:
	case ENOTCONN: return RDAG_ECONNRESET;
	case ENOMEM:
	case ENOBUFS: return RDAG_ENOMEM;
	case EACCES:
	case EPERM: return RDAG_EACCES;
	case EADDRINUSE: return RDAG_EBUSY;
	default: return RDAG_EIO;
	}
}

void boot_rx_reset(struct boot_rx *rx)
{
	free(rx->body);
	memset(rx, 0, sizeof(*rx));
}

int boot_rx_step(int fd, struct boot_rx *rx, uint32_t max_len)
{
	for (;;) {
		uint8_t *dst;
		size_t want;
		ssize_t n;
		int rc;

		if (rx->got < BOOT_HDR_LEN) {
			dst = rx->hdr + rx->got;
			want = BOOT_HDR_LEN - rx->got;
		} else {
			size_t body_got = rx->got - BOOT_HDR_LEN;

			if (body_got == rx->h.len)
				return 1;
			dst = rx->body + body_got;
			want = rx->h.len - body_got;
		}
		n = recv(fd, dst, want, MSG_DONTWAIT);
		if (n == 0)
			return err_set(RDAG_ECONNRESET, "connection closed by the peer%s",
				       rx->got ? " in the middle of a frame" : "");
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return 0;
			return err_set(errno_code(errno), "receive failed: %s", strerror(errno));
		}
		rx->got += (size_t)n;
		if (rx->got == BOOT_HDR_LEN) {
			if ((rc = boot_hdr_decode(rx->hdr, max_len, &rx->h)))
				return rc;
			if (rx->h.len) {
				rx->body = malloc(rx->h.len);
				if (!rx->body)
					return err_set(RDAG_ENOMEM, "no memory for a %u-byte bootstrap frame",
						       rx->h.len);
			}
		}
	}
}

int boot_recv_frame(int fd, struct boot_rx *rx, uint32_t max_len, int64_t deadline_ms)
{
	for (;;) {
		struct pollfd p = {fd, POLLIN, 0};
		int rc = boot_rx_step(fd, rx, max_len);

		if (rc)
			return rc;
		if (left_ms(deadline_ms) == 0)
			return err_set(RDAG_ETIMEDOUT, "timed out waiting for a bootstrap frame");
		rc = poll(&p, 1, left_ms(deadline_ms));
		if (rc < 0 && errno != EINTR)
			return err_set(RDAG_EIO, "poll failed: %s", strerror(errno));
	}
}

int boot_send_all(int fd, const void *buf, size_t len, int64_t deadline_ms)
{
	const uint8_t *p = buf;

	while (len) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);

		if (n > 0) {
			p += n;
			len -= (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
			return err_set(errno_code(errno), "send failed: %s", strerror(errno));
		if (left_ms(deadline_ms) == 0)
			return err_set(RDAG_ETIMEDOUT, "timed out sending a bootstrap frame (%zu bytes left)",
				       len);
		struct pollfd pf = {fd, POLLOUT, 0};
		if (poll(&pf, 1, left_ms(deadline_ms)) < 0 && errno != EINTR)
			return err_set(RDAG_EIO, "poll failed: %s", strerror(errno));
	}
	return 0;
}

void boot_drain_close(int fd)
{
	char scratch[4096];

	if (fd < 0)
		return;
	shutdown(fd, SHUT_WR);
	/* Unread bytes at close() turn the FIN into a reset, which can destroy what we sent last. */
	for (int i = 0; i < 64; i++) {
		if (recv(fd, scratch, sizeof(scratch), MSG_DONTWAIT) <= 0)
			break;
	}
	close(fd);
}

static int set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return err_set(RDAG_EIO, "fcntl(O_NONBLOCK) failed: %s", strerror(errno));
	return 0;
}

int boot_listen(int port, int *out)
{
	int one = 1, zero = 0, fd, e;
	struct sockaddr_in6 a6;
	struct sockaddr_in a4;

	/* IPv6 wildcard with V6ONLY off takes IPv4 too; hosts without IPv6 fall back to IPv4. */
	fd = socket(AF_INET6, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd >= 0) {
		memset(&a6, 0, sizeof(a6));
		a6.sin6_family = AF_INET6;
		a6.sin6_addr = in6addr_any;
		a6.sin6_port = htons((uint16_t)port);
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero)) == 0 &&
		    bind(fd, (struct sockaddr *)&a6, sizeof(a6)) == 0)
			goto bound;
		e = errno;
		close(fd);
		if (e == EADDRINUSE || e == EACCES)
			goto fail_errno;
	}
	fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		e = errno;
		goto fail_errno;
	}
	memset(&a4, 0, sizeof(a4));
	a4.sin_family = AF_INET;
	a4.sin_addr.s_addr = htonl(INADDR_ANY);
	a4.sin_port = htons((uint16_t)port);
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&a4, sizeof(a4)) != 0) {
		e = errno;
		close(fd);
		goto fail_errno;
	}
bound:
	if (listen(fd, SOMAXCONN) != 0) {
		e = errno;
		close(fd);
		goto fail_errno;
	}
	*out = fd;
	return 0;
fail_errno:
	return err_set(errno_code(e), "cannot listen on TCP port %d: %s%s", port, strerror(e),
		       e == EADDRINUSE ? " (another job's rank 0 on this host? set RDAG_MASTER_PORT to a "
					 "free port)" : "");
}

int boot_listen_fd(int fd)
{
	int acc = 0;
	socklen_t l = sizeof(acc);

	if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &l) != 0)
		return err_set(RDAG_EINVAL, "listen_fd %d is not a socket: %s", fd, strerror(errno));
	if (!acc && listen(fd, SOMAXCONN) != 0)
		return err_set(errno_code(errno), "listen on listen_fd %d failed: %s", fd, strerror(errno));
	fcntl(fd, F_SETFD, FD_CLOEXEC);
	return set_nonblock(fd);
}

static void sockaddr_str(const struct sockaddr *sa, char *out, size_t outlen)
{
	char ip[INET6_ADDRSTRLEN] = "?";

	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *a = (const struct sockaddr_in *)sa;

		inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip));
		snprintf(out, outlen, "%s:%u", ip, ntohs(a->sin_port));
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;

		if (IN6_IS_ADDR_V4MAPPED(&a->sin6_addr)) {
			inet_ntop(AF_INET, &a->sin6_addr.s6_addr[12], ip, sizeof(ip));
			snprintf(out, outlen, "%s:%u", ip, ntohs(a->sin6_port));
		} else {
			inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof(ip));
			snprintf(out, outlen, "[%s]:%u", ip, ntohs(a->sin6_port));
		}
	} else {
		snprintf(out, outlen, "(family %d)", sa->sa_family);
	}
}

void boot_peer_str(int fd, char *out, size_t outlen)
{
	struct sockaddr_storage ss;
	socklen_t l = sizeof(ss);

	if (getpeername(fd, (struct sockaddr *)&ss, &l) != 0)
		snprintf(out, outlen, "(unknown peer)");
	else
		sockaddr_str((struct sockaddr *)&ss, out, outlen);
}

/* One non-blocking connect to one address, bounded by deadline. Returns 0 or -errno. */
static int connect_one(const struct addrinfo *ai, int64_t deadline, int *out)
{
	int fd, e = 0, one = 1;
	socklen_t l = sizeof(e);
	struct pollfd p;
	int64_t cap = boot_now_ms() + CONNECT_ATTEMPT_MAX_MS;

	fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
	if (fd < 0)
		return -errno;
	if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
		if (errno != EINPROGRESS) {
			e = errno;
			goto fail;
		}
		p.fd = fd;
		p.events = POLLOUT;
		p.revents = 0;
		for (;;) {
			int rc = poll(&p, 1, left_ms(deadline < cap ? deadline : cap));

			if (rc > 0)
				break;
			if (rc == 0) {
				e = ETIMEDOUT;
				goto fail;
			}
			if (errno != EINTR) {
				e = errno;
				goto fail;
			}
		}
		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &l) != 0)
			e = errno;
		if (e)
			goto fail;
	}
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	*out = fd;
	return 0;
fail:
	close(fd);
	return -e;
}

int boot_connect(const char *host, int port, int64_t deadline, void (*hook)(void *, unsigned, int),
		 void *hook_arg, int *out)
{
	struct addrinfo hints, *res = NULL;
	char portstr[16], last[192] = "no attempt made";
	unsigned attempt = 0;
	int backoff = RETRY_MIN_MS, code = RDAG_ETIMEDOUT;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV;
	snprintf(portstr, sizeof(portstr), "%d", port);
	for (;;) {
		int g = getaddrinfo(host, portstr, &hints, &res);

		if (g == 0) {
			for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
				char where[80];
				int rc = connect_one(ai, deadline, out);

				if (rc == 0) {
					freeaddrinfo(res);
					return 0;
				}
				sockaddr_str(ai->ai_addr, where, sizeof(where));
				snprintf(last, sizeof(last), "%s: %s", where, strerror(-rc));
				code = errno_code(-rc);
			}
			freeaddrinfo(res);
			res = NULL;
		} else if (g == EAI_AGAIN) {
			snprintf(last, sizeof(last), "resolving '%s': %s", host, gai_strerror(g));
			code = RDAG_EAGAIN;
		} else {
			return err_set(RDAG_ENOENT, "cannot resolve rank 0's address '%s': %s", host,
				       g == EAI_SYSTEM ? strerror(errno) : gai_strerror(g));
		}
		attempt++;
		LOG_DEBUG("bootstrap: attempt %u to reach %s:%d failed (%s); retrying", attempt, host, port,
			  last);
		if (hook)
			hook(hook_arg, attempt, code);
		if (left_ms(deadline) == 0)
			return err_set(RDAG_ETIMEDOUT, "could not connect after %u attempts (last: %s)",
				       attempt, last);
		poll(NULL, 0, backoff < left_ms(deadline) ? backoff : left_ms(deadline));
		backoff = backoff * 2 > RETRY_MAX_MS ? RETRY_MAX_MS : backoff * 2;
	}
}
