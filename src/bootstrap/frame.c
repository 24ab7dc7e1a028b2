/* Bootstrap rendezvous frames: little-endian, length-prefixed, bounds-checked encoders and decoders. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bootstrap/boot_int.h"
#include "util/err.h"

/* ---- output buffer ----------------------------------------------------------------------- */

void boot_buf_free(struct boot_buf *b)
{
	free(b->p);
	memset(b, 0, sizeof(*b));
}

static uint8_t *buf_room(struct boot_buf *b, size_t n)
{
	if (b->err)
		return NULL;
	if (n > BOOT_FRAME_MAX || b->len + n > BOOT_FRAME_MAX + (size_t)BOOT_HDR_LEN) {
		b->err = RDAG_EINVAL;
		return NULL;
	}
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		uint8_t *p;

		while (cap < b->len + n)
			cap *= 2;
		p = realloc(b->p, cap);
		if (!p) {
			b->err = RDAG_ENOMEM;
			return NULL;
		}
		b->p = p;
		b->cap = cap;
	}
	b->len += n;
	return b->p + b->len - n;
}

static void put_u16(struct boot_buf *b, uint16_t v)
{
	uint8_t *p = buf_room(b, 2);

	if (p) {
		p[0] = (uint8_t)v;
		p[1] = (uint8_t)(v >> 8);
	}
}

static void put_u32(struct boot_buf *b, uint32_t v)
{
	uint8_t *p = buf_room(b, 4);

	if (p) {
		for (int i = 0; i < 4; i++)
			p[i] = (uint8_t)(v >> (8 * i));
	}
}

static void put_bytes(struct boot_buf *b, const void *src, size_t n)
{
	uint8_t *p = buf_room(b, n);

	if (p && n)
		memcpy(p, src, n);
}

/* A string as u16 length + bytes (no NUL); longer than max is the caller's bug. */
static void put_str(struct boot_buf *b, const char *s, size_t max)
{
	size_t n = strnlen(s, max + 1);

	if (n > max) {
		b->err = b->err ? b->err : RDAG_EINVAL;
		return;
	}
	put_u16(b, (uint16_t)n);
	put_bytes(b, s, n);
}

static uint32_t rd32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

void boot_hdr_encode(uint8_t *out, uint16_t type, uint32_t len)
{
	for (int i = 0; i < 4; i++)
		out[i] = (uint8_t)(BOOT_MAGIC >> (8 * i));
	out[4] = (uint8_t)BOOT_PROTO_VERSION;
	out[5] = (uint8_t)(BOOT_PROTO_VERSION >> 8);
	out[6] = (uint8_t)type;
	out[7] = (uint8_t)(type >> 8);
	for (int i = 0; i < 4; i++)
		out[8 + i] = (uint8_t)(len >> (8 * i));
}

int boot_hdr_decode(const uint8_t *in, uint32_t max_len, struct boot_hdr *h)
{
	uint32_t magic = rd32(in);
	uint16_t version = (uint16_t)(in[4] | in[5] << 8);
	uint16_t type = (uint16_t)(in[6] | in[7] << 8);
	uint32_t len = rd32(in + 8);

	if (magic != BOOT_MAGIC)
		return err_set(RDAG_EWIRE_MAGIC, "bootstrap frame: bad magic 0x%08x (not an rdag bootstrap "
			       "peer?)", magic);
	if (version != BOOT_PROTO_VERSION)
		return err_set(RDAG_EWIRE_VERSION, "bootstrap frame: protocol version %u, this rdag speaks "
			       "%u (mixed rdag versions in one job?)", version, BOOT_PROTO_VERSION);
	if (type < BOOT_HELLO || type > BOOT_RESULT)
		return err_set(RDAG_EWIRE_KIND, "bootstrap frame: unknown type %u", type);
	if (len > max_len)
		return err_set(RDAG_EWIRE_LENGTH, "bootstrap frame: type %u announces %u bytes, at most %u "
			       "allowed here", type, len, max_len);
	h->type = type;
	h->len = len;
	return 0;
}

/* Starts a frame: reserves the header; finish_frame fills it in once the body is written. */
static size_t start_frame(struct boot_buf *b)
{
	size_t at = b->len;

	buf_room(b, BOOT_HDR_LEN);
	return at;
}

static int finish_frame(struct boot_buf *b, size_t at, uint16_t type)
{
	if (b->err)
		return err_set(b->err, "bootstrap: cannot encode a frame of type %u (%s)", type,
			       b->err == RDAG_ENOMEM ? "out of memory" : "a field is over its limit");
	boot_hdr_encode(b->p + at, type, (uint32_t)(b->len - at - BOOT_HDR_LEN));
	return 0;
}

int boot_hello_encode(struct boot_buf *out, const struct boot_hello *h)
{
	size_t at = start_frame(out);

	put_u32(out, h->rank);
	put_u32(out, h->world);
	put_u32(out, h->timeout_left_ms);
	put_str(out, h->token, BOOT_TOKEN_MAX - 1);
	put_str(out, h->name, BOOT_NAME_MAX - 1);
	put_str(out, h->host, BOOT_HOST_MAX - 1);
	return finish_frame(out, at, BOOT_HELLO);
}

int boot_welcome_encode(struct boot_buf *out, uint32_t world, char *const *names, char *const *hosts)
{
	size_t at = start_frame(out);

	put_u32(out, world);
	for (uint32_t r = 0; r < world; r++) {
		put_str(out, names[r], BOOT_NAME_MAX - 1);
		put_str(out, hosts[r], BOOT_HOST_MAX - 1);
	}
	return finish_frame(out, at, BOOT_WELCOME);
}

int boot_status_encode(struct boot_buf *out, uint16_t type, int code, const char *msg)
{
	size_t at = start_frame(out);
	size_t n = strnlen(msg, BOOT_MSG_MAX - 1);

	put_u32(out, (uint32_t)code);
	put_u16(out, (uint16_t)n); /* messages are cut to the limit, never refused */
	put_bytes(out, msg, n);
	return finish_frame(out, at, type);
}

int boot_gather_encode(struct boot_buf *out, uint32_t seq, uint32_t kind, uint32_t left_ms,
		       const void *blob, size_t len)
{
	size_t at = start_frame(out);

	if (len > BOOT_BLOB_MAX)
		return err_set(RDAG_EINVAL, "bootstrap: a contribution of %zu bytes is above the %u-byte "
			       "limit", len, (unsigned)BOOT_BLOB_MAX);
	put_u32(out, seq);
	put_u32(out, kind);
	put_u32(out, left_ms);
	put_u32(out, (uint32_t)len);
	put_bytes(out, blob, len);
	return finish_frame(out, at, BOOT_GATHER);
}

int boot_result_encode(struct boot_buf *out, uint32_t seq, uint32_t kind, uint32_t n,
		       const void *const *blobs, const size_t *lens)
{
	size_t at = start_frame(out);

	put_u32(out, seq);
	put_u32(out, kind);
	put_u32(out, n);
	for (uint32_t r = 0; r < n; r++) {
		if (lens[r] > BOOT_BLOB_MAX) {
			out->err = RDAG_EINVAL;
			break;
		}
		put_u32(out, (uint32_t)lens[r]);
		put_bytes(out, blobs[r], lens[r]);
	}
	return finish_frame(out, at, BOOT_RESULT);
}

uint32_t boot_result_max(uint32_t n)
{
	uint64_t m = 12 + (uint64_t)n * (4 + BOOT_BLOB_MAX);

	return m > BOOT_FRAME_MAX ? BOOT_FRAME_MAX : (uint32_t)m;
}

uint32_t boot_welcome_max(uint32_t n)
{
	uint64_t m = 4 + (uint64_t)n * (2 + BOOT_NAME_MAX - 1 + 2 + BOOT_HOST_MAX - 1);

	return m > BOOT_FRAME_MAX ? BOOT_FRAME_MAX : (uint32_t)m;
}

/* ---- input: a bounds-checked cursor ------------------------------------------------------ */

struct rd {
	const uint8_t *p;
	size_t left;
	int err;      /* first defect, RDAG_EWIRE_* */
	const char *what; /* the field being read when it happened */
};

static int need(struct rd *r, size_t n, const char *what)
{
	if (r->err)
		return 0;
	if (r->left < n) {
		r->err = RDAG_EWIRE_TRUNCATED;
		r->what = what;
		return 0;
	}
	return 1;
}

static uint32_t get_u32(struct rd *r, const char *what)
{
	uint32_t v;

	if (!need(r, 4, what))
		return 0;
	v = rd32(r->p);
	r->p += 4;
	r->left -= 4;
	return v;
}

static const uint8_t *get_bytes(struct rd *r, size_t n, const char *what)
{
	const uint8_t *p;

	if (!need(r, n, what))
		return NULL;
	p = r->p;
	r->p += n;
	r->left -= n;
	return p;
}

/* A u16-prefixed string of at most max bytes without NUL, copied into out (room > max). */
static void get_str(struct rd *r, char *out, size_t max, const char *what)
{
	const uint8_t *p;
	uint16_t n;

	out[0] = '\0';
	if (!need(r, 2, what))
		return;
	n = (uint16_t)(r->p[0] | r->p[1] << 8);
	r->p += 2;
	r->left -= 2;
	if (n > max) {
		r->err = RDAG_EWIRE_LENGTH;
		r->what = what;
		return;
	}
	p = get_bytes(r, n, what);
	if (!p)
		return;
	if (memchr(p, '\0', n)) {
		r->err = RDAG_EWIRE_FIELD;
		r->what = what;
		return;
	}
	memcpy(out, p, n);
	out[n] = '\0';
}

static int done(struct rd *r, const char *frame)
{
	if (!r->err && r->left)
		return err_set(RDAG_EWIRE_TRAILING, "bootstrap %s: %zu trailing bytes", frame, r->left);
	if (r->err == RDAG_EWIRE_TRUNCATED)
		return err_set(r->err, "bootstrap %s: truncated in field '%s'", frame, r->what);
	if (r->err == RDAG_EWIRE_LENGTH)
		return err_set(r->err, "bootstrap %s: field '%s' is longer than allowed", frame, r->what);
	if (r->err)
		return err_set(r->err, "bootstrap %s: field '%s' is malformed", frame, r->what);
	return 0;
}

int boot_hello_decode(const uint8_t *body, size_t len, struct boot_hello *h)
{
	struct rd r = {body, len, 0, NULL};
	int rc;

	h->rank = get_u32(&r, "rank");
	h->world = get_u32(&r, "world size");
	h->timeout_left_ms = get_u32(&r, "timeout");
	get_str(&r, h->token, BOOT_TOKEN_MAX - 1, "job token");
	get_str(&r, h->name, BOOT_NAME_MAX - 1, "worker name");
	get_str(&r, h->host, BOOT_HOST_MAX - 1, "host name");
	if ((rc = done(&r, "HELLO")))
		return rc;
	if (!boot_name_valid(h->name))
		return err_set(RDAG_EWIRE_FIELD, "bootstrap HELLO: worker name '%s' is not 1..%d characters "
			       "of [A-Za-z0-9_.:-]", h->name, BOOT_NAME_MAX - 1);
	if (!boot_host_valid(h->host))
		return err_set(RDAG_EWIRE_FIELD, "bootstrap HELLO: host name is empty or not printable");
	return 0;
}

int boot_welcome_decode(const uint8_t *body, size_t len, uint32_t world, char **names, char **hosts)
{
	struct rd r = {body, len, 0, NULL};
	char name[BOOT_NAME_MAX], host[BOOT_HOST_MAX];
	uint32_t n, i;
	int rc = 0;

	memset(names, 0, sizeof(*names) * world);
	memset(hosts, 0, sizeof(*hosts) * world);
	n = get_u32(&r, "world size");
	if (!r.err && n != world)
		return err_set(RDAG_EWIRE_COUNT, "bootstrap WELCOME: %u ranks, expected %u", n, world);
	for (i = 0; i < world && !r.err; i++) {
		get_str(&r, name, BOOT_NAME_MAX - 1, "worker name");
		get_str(&r, host, BOOT_HOST_MAX - 1, "host name");
		if (r.err)
			break;
		if (!boot_name_valid(name) || !boot_host_valid(host)) {
			rc = err_set(RDAG_EWIRE_FIELD, "bootstrap WELCOME: rank %u's name or host is malformed", i);
			goto fail;
		}
		names[i] = strdup(name);
		hosts[i] = strdup(host);
		if (!names[i] || !hosts[i]) {
			rc = err_set(RDAG_ENOMEM, "bootstrap WELCOME: out of memory");
			goto fail;
		}
	}
	if ((rc = done(&r, "WELCOME")))
		goto fail;
	return 0;
fail:
	for (i = 0; i < world; i++) {
		free(names[i]);
		free(hosts[i]);
		names[i] = hosts[i] = NULL;
	}
	return rc;
}

int boot_status_decode(const uint8_t *body, size_t len, int *code, char *msg, size_t msglen)
{
	struct rd r = {body, len, 0, NULL};
	char text[BOOT_MSG_MAX];
	const uint8_t *p;
	uint16_t n = 0;
	int32_t c;
	int rc;

	c = (int32_t)get_u32(&r, "code");
	if (need(&r, 2, "message length")) {
		n = (uint16_t)(r.p[0] | r.p[1] << 8);
		r.p += 2;
		r.left -= 2;
		if (n >= BOOT_MSG_MAX) {
			r.err = RDAG_EWIRE_LENGTH;
			r.what = "message";
		}
	}
	p = get_bytes(&r, n, "message");
	if ((rc = done(&r, "REFUSE/ABORT")))
		return rc;
	/* Only printable text reaches our messages, whatever the peer sent. */
	for (uint16_t i = 0; i < n; i++)
		text[i] = p[i] >= ' ' && p[i] < 0x7f ? (char)p[i] : '?';
	text[n] = '\0';
	snprintf(msg, msglen, "%s", text);
	*code = c < 0 && c > -2000 ? (int)c : RDAG_EIO;
	return 0;
}

int boot_gather_decode(const uint8_t *body, size_t len, struct boot_gather_msg *g)
{
	struct rd r = {body, len, 0, NULL};

	g->seq = get_u32(&r, "sequence");
	g->kind = get_u32(&r, "kind");
	g->timeout_left_ms = get_u32(&r, "timeout");
	g->len = get_u32(&r, "blob length");
	if (!r.err && g->len > BOOT_BLOB_MAX)
		return err_set(RDAG_EWIRE_LENGTH, "bootstrap GATHER: blob of %u bytes, at most %u allowed",
			       g->len, (unsigned)BOOT_BLOB_MAX);
	g->blob = get_bytes(&r, g->len, "blob");
	if (!r.err && g->kind != BOOT_KIND_ALLGATHER && g->kind != BOOT_KIND_BARRIER)
		return err_set(RDAG_EWIRE_FIELD, "bootstrap GATHER: unknown collective kind %u", g->kind);
	return done(&r, "GATHER");
}

int boot_result_decode(const uint8_t *body, size_t len, uint32_t seq, uint32_t kind, uint32_t n,
		       const void **blobs, size_t *lens)
{
	struct rd r = {body, len, 0, NULL};
	uint32_t s, k, cnt;

	s = get_u32(&r, "sequence");
	k = get_u32(&r, "kind");
	cnt = get_u32(&r, "count");
	if (r.err)
		return done(&r, "RESULT");
	if (s != seq || k != kind)
		return err_set(RDAG_EWIRE_FIELD, "bootstrap RESULT: for collective #%u of kind %u, expected "
			       "#%u of kind %u", s, k, seq, kind);
	if (cnt != n)
		return err_set(RDAG_EWIRE_COUNT, "bootstrap RESULT: %u entries, expected %u", cnt, n);
	for (uint32_t i = 0; i < n; i++) {
		uint32_t l = get_u32(&r, "blob length");

		if (!r.err && l > BOOT_BLOB_MAX)
			return err_set(RDAG_EWIRE_LENGTH, "bootstrap RESULT: rank %u's blob of %u bytes is "
				       "above the limit", i, l);
		blobs[i] = get_bytes(&r, l, "blob");
		lens[i] = l;
		if (r.err)
			break;
	}
	return done(&r, "RESULT");
}
