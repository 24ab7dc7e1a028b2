/* Bootstrap module internals: rendezvous frame codec and deadline-bounded socket helpers. */
#ifndef RDAG_BOOTSTRAP_BOOT_INT_H
#define RDAG_BOOTSTRAP_BOOT_INT_H

/*
 * Not for use outside src/bootstrap/ and its tests. docs/bootstrap.md describes the frames byte
 * by byte. Every function here is thread-safe in the sense that it touches only its arguments.
 */

#include <stddef.h>
#include <stdint.h>

#include "bootstrap/boot.h"

/* ---- frames ------------------------------------------------------------------------------ */

#define BOOT_MAGIC 0x54424452u /* "RDBT" as little-endian bytes 52 44 42 54 */
#define BOOT_PROTO_VERSION 1u
#define BOOT_HDR_LEN 12u
#define BOOT_MSG_MAX 1024u          /* text of a REFUSE/ABORT frame */
#define BOOT_HELLO_MAX 1024u        /* largest HELLO body */
#define BOOT_GATHER_HDR 16u         /* GATHER body before the blob */
#define BOOT_FRAME_MAX (256u << 20) /* no frame is ever larger (a RESULT of a huge world) */

enum boot_type {
	BOOT_HELLO = 1,   /* rank r -> 0: I am rank r of world w, with this token, name, host */
	BOOT_WELCOME = 2, /* 0 -> r: everyone joined; here are all names and hosts */
	BOOT_REFUSE = 3,  /* 0 -> r: your HELLO is refused (code + message); then close */
	BOOT_ABORT = 4,   /* 0 -> r: the rendezvous or a collective failed (code + message) */
	BOOT_GATHER = 5,  /* r -> 0: my contribution to collective #seq */
	BOOT_RESULT = 6,  /* 0 -> r: everyone's contributions to collective #seq */
};

enum boot_kind {
	BOOT_KIND_ALLGATHER = 1,
	BOOT_KIND_BARRIER = 2,
};

struct boot_hdr {
	uint16_t type;
	uint32_t len; /* body bytes after the header */
};

/* A growable output buffer; err latches the first allocation failure. */
struct boot_buf {
	uint8_t *p;
	size_t len, cap;
	int err;
};

struct boot_hello {
	uint32_t rank, world, timeout_left_ms;
	char token[BOOT_TOKEN_MAX];
	char name[BOOT_NAME_MAX];
	char host[BOOT_HOST_MAX];
};

struct boot_gather_msg {
	uint32_t seq, kind, timeout_left_ms;
	const uint8_t *blob; /* points into the decoded body */
	uint32_t len;
};

/* Writes a 12-byte header. */
void boot_hdr_encode(uint8_t *out, uint16_t type, uint32_t len);
/* Validates magic, version, type and len <= max_len. Returns 0 or RDAG_EWIRE_*. */
int boot_hdr_decode(const uint8_t *in, uint32_t max_len, struct boot_hdr *h);

void boot_buf_free(struct boot_buf *b);

/* Each appends one whole frame (header included) to out. Return 0 or RDAG_ENOMEM/EINVAL. */
int boot_hello_encode(struct boot_buf *out, const struct boot_hello *h);
int boot_welcome_encode(struct boot_buf *out, uint32_t world, char *const *names, char *const *hosts);
int boot_status_encode(struct boot_buf *out, uint16_t type, int code, const char *msg);
int boot_gather_encode(struct boot_buf *out, uint32_t seq, uint32_t kind, uint32_t left_ms,
		       const void *blob, size_t len);
/* RESULT frame from per-rank blobs. */
int boot_result_encode(struct boot_buf *out, uint32_t seq, uint32_t kind, uint32_t n,
		       const void *const *blobs, const size_t *lens);

/* Decoders of a frame's body (header already validated). Return 0, an RDAG_EWIRE_* code or RDAG_EINVAL. */
int boot_hello_decode(const uint8_t *body, size_t len, struct boot_hello *h);
/* Fills names[i], hosts[i] (malloc'd strings, n = world entries); frees them on failure. */
int boot_welcome_decode(const uint8_t *body, size_t len, uint32_t world, char **names, char **hosts);
/* *code is a negative RDAG_E* (anything else becomes RDAG_EIO); msg gets printable text. */
int boot_status_decode(const uint8_t *body, size_t len, int *code, char *msg, size_t msglen);
int boot_gather_decode(const uint8_t *body, size_t len, struct boot_gather_msg *g);
/* blobs[i]/lens[i] point into body for i < n (the RESULT must hold exactly n entries). */
int boot_result_decode(const uint8_t *body, size_t len, uint32_t seq, uint32_t kind, uint32_t n,
		       const void **blobs, size_t *lens);

/* Largest RESULT body for n ranks (capped at BOOT_FRAME_MAX). */
uint32_t boot_result_max(uint32_t n);
/* Largest WELCOME body for n ranks (capped at BOOT_FRAME_MAX). */
uint32_t boot_welcome_max(uint32_t n);

/* ---- sockets ----------------------------------------------------------------------------- */

/* Incremental frame reader for a non-blocking socket. */
struct boot_rx {
	uint8_t hdr[BOOT_HDR_LEN];
	size_t got;        /* bytes of header + body received so far */
	struct boot_hdr h; /* valid once got >= BOOT_HDR_LEN */
	uint8_t *body;     /* h.len bytes (NULL for an empty body) */
};

/* Milliseconds of CLOCK_MONOTONIC. */
int64_t boot_now_ms(void);

/*
 * Reads what is available: 1 when a whole frame is in rx (take rx->body, then boot_rx_reset),
 * 0 when more is needed, or an error: RDAG_ECONNRESET on EOF/reset (with got == 0 meaning a
 * clean close between frames), RDAG_EWIRE_* for a bad header, RDAG_ENOMEM.
 */
int boot_rx_step(int fd, struct boot_rx *rx, uint32_t max_len);
void boot_rx_reset(struct boot_rx *rx);
/* Waits (poll) until a whole frame is in rx or deadline_ms passes (RDAG_ETIMEDOUT). */
int boot_recv_frame(int fd, struct boot_rx *rx, uint32_t max_len, int64_t deadline_ms);
/* Sends all of buf before deadline_ms (MSG_NOSIGNAL). RDAG_ETIMEDOUT, RDAG_ECONNRESET. */
int boot_send_all(int fd, const void *buf, size_t len, int64_t deadline_ms);
/* Stops sending, discards what the peer sent (so close does not reset), closes. */
void boot_drain_close(int fd);

/* Binds the wildcard address (IPv6 dual-stack, else IPv4) on port and listens, non-blocking. */
int boot_listen(int port, int *fd);
/* Makes an already bound socket listen (if it does not yet) and non-blocking. */
int boot_listen_fd(int fd);
/*
 * Connects to host:port (getaddrinfo, every address in turn), retrying until deadline_ms while
 * rank 0 is not there yet; calls hook after each failed round. The socket is non-blocking.
 */
int boot_connect(const char *host, int port, int64_t deadline_ms,
		 void (*hook)(void *, unsigned, int), void *hook_arg, int *fd);
/* "ip:port" of the peer of fd, for log messages. */
void boot_peer_str(int fd, char *out, size_t outlen);

/* ---- misc -------------------------------------------------------------------------------- */

uint32_t boot_fnv1a(const void *data, size_t len);
/* 1 if name is 1..BOOT_NAME_MAX-1 characters of [A-Za-z0-9_.:-]. */
int boot_name_valid(const char *name);
/* 1 if host is 1..BOOT_HOST_MAX-1 printable ASCII characters without spaces. */
int boot_host_valid(const char *host);

#endif /* RDAG_BOOTSTRAP_BOOT_INT_H */
