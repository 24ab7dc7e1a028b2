/* RUN_WITH_PROFILING_REQ / _RESP: profiler config around a request, recorded events around its reply. */
#include "wire/codec.h"

/*
 * RUN_WITH_PROFILING_REQ body: 24 u64 prof_id | 32 u8 state | 33 u8 0 | 34 u16 flags
 *   | 36 u32 0 | 40 the inner message, to the end.
 * RUN_WITH_PROFILING_RESP body: 24 u64 prof_id | 32 u32 nevents | 36 u32 0 | 40 events
 *   | the inner message, to the end.
 * Event: 0 u64 start_ns | 8 u64 end_ns | 16 u64 thread_id | 24 device (u8 type, u8 0, u16 index)
 *   | 28 u32 name_len | 32 name (padded to 8).
 */
#define PROF_REQ_FIXED 40u
#define PROF_RESP_FIXED 40u
#define EVENT_FIXED 32u
#define PROF_FLAGS (WIRE_PROF_SHAPES | WIRE_PROF_MEMORY | WIRE_PROF_STACK | WIRE_PROF_FLOPS | \
		    WIRE_PROF_MODULES)

static bool state_ok(uint8_t s)
{
	return s >= WIRE_PROF_CPU && s <= WIRE_PROF_KINETO;
}

size_t wire_prof_req_prefix(void)
{
	return PROF_REQ_FIXED;
}

int wire_encode_prof_req(void *buf, size_t cap, const struct wire_env *env,
			 const struct wire_prof_req *r, const void *inner, size_t inner_len,
			 size_t *len)
{
	uint8_t *p = buf;
	int rc;

	if (!state_ok(r->state))
		return err_set(RDAG_EINVAL, "wire: RUN_WITH_PROFILING_REQ: unknown profiler state %u",
			       r->state);
	if (r->flags & ~PROF_FLAGS)
		return err_set(RDAG_EINVAL, "wire: RUN_WITH_PROFILING_REQ: unknown flags 0x%x",
			       r->flags);
	rc = wire_check_inner_arg(WIRE_RUN_WITH_PROFILING_REQ, inner, inner_len);
	if (rc)
		return rc;
	rc = wire_fit(WIRE_RUN_WITH_PROFILING_REQ, PROF_REQ_FIXED + inner_len, cap, len);
	if (rc)
		return rc;
	if (inner)
		memmove(p + PROF_REQ_FIXED, inner, inner_len);
	else if ((rc = wire_check_inner_arg(WIRE_RUN_WITH_PROFILING_REQ, p + PROF_REQ_FIXED,
					    inner_len)) != 0)
		return rc;
	wire_put_hdr(p, WIRE_RUN_WITH_PROFILING_REQ, *len, env);
	st64(p + 24, r->prof_id);
	p[32] = r->state;
	p[33] = 0;
	st16(p + 34, r->flags);
	st32(p + 36, 0);
	return 0;
}

int wire_prof_resp_prefix(const struct wire_prof_event *ev, uint32_t nev, size_t *prefix)
{
	size_t size = PROF_RESP_FIXED;
	int rc;

	if (nev > WIRE_MAX_EVENTS)
		return err_set(RDAG_EINVAL, "wire: RUN_WITH_PROFILING_RESP: %u events (limit %u)", nev,
			       WIRE_MAX_EVENTS);
	if (nev && !ev)
		return err_set(RDAG_EINVAL, "wire: RUN_WITH_PROFILING_RESP: events at NULL");
	for (uint32_t i = 0; i < nev; i++) {
		rc = wire_check_bytes_arg(WIRE_RUN_WITH_PROFILING_RESP, &ev[i].name, WIRE_MAX_NAME,
					  "event name");
		if (rc)
			return rc;
		if (ev[i].start_ns > ev[i].end_ns || !wire_device_ok(&ev[i].device))
			return err_set(RDAG_EINVAL, "wire: RUN_WITH_PROFILING_RESP: event %u ends before "
				       "it starts or has a bad device", i);
		size += EVENT_FIXED + pad8(ev[i].name.len);
	}
	*prefix = size;
	return 0;
}

int wire_encode_prof_resp(void *buf, size_t cap, const struct wire_env *env, uint64_t prof_id,
			  const struct wire_prof_event *ev, uint32_t nev, const void *inner,
			  size_t inner_len, size_t *len)
{
	uint8_t *p = buf, *q;
	size_t prefix;
	int rc;

	rc = wire_prof_resp_prefix(ev, nev, &prefix);
	if (rc)
		return rc;
	rc = wire_check_inner_arg(WIRE_RUN_WITH_PROFILING_RESP, inner, inner_len);
	if (rc)
		return rc;
	rc = wire_fit(WIRE_RUN_WITH_PROFILING_RESP, prefix + inner_len, cap, len);
	if (rc)
		return rc;
	if (inner)
		memmove(p + prefix, inner, inner_len);
	else if ((rc = wire_check_inner_arg(WIRE_RUN_WITH_PROFILING_RESP, p + prefix, inner_len)) != 0)
		return rc;
	wire_put_hdr(p, WIRE_RUN_WITH_PROFILING_RESP, *len, env);
	st64(p + 24, prof_id);
	st32(p + 32, nev);
	st32(p + 36, 0);
	q = p + PROF_RESP_FIXED;
	for (uint32_t i = 0; i < nev; i++) {
		st64(q, ev[i].start_ns);
		st64(q + 8, ev[i].end_ns);
		st64(q + 16, ev[i].thread_id);
		wire_put_device(q + 24, &ev[i].device);
		st32(q + 28, ev[i].name.len);
		q = wire_put_bytes(q + EVENT_FIXED, &ev[i].name);
	}
	return 0;
}

static int dec_events(const uint8_t **pp, const uint8_t *end, uint32_t n, struct wire_msg *m)
{
	const uint8_t *q = *pp;
	int rc;

	for (uint32_t i = 0; i < n; i++) {
		struct wire_device d;
		struct wire_bytes name;

		if (left(q, end) < EVENT_FIXED)
			return err_set(RDAG_EWIRE_TRUNCATED, "wire: RUN_WITH_PROFILING_RESP: truncated "
				       "in event %u", i);
		if (ld64(q) > ld64(q + 8))
			return err_set(RDAG_EWIRE_FIELD, "wire: RUN_WITH_PROFILING_RESP: event %u ends "
				       "before it starts", i);
		rc = wire_get_device(q + 24, m, "event device", &d);
		if (rc)
			return rc;
		{
			uint32_t nlen = ld32(q + 28);

			q += EVENT_FIXED;
			rc = wire_get_bytes(&q, end, nlen, WIRE_MAX_NAME, "event name", m, &name);
			if (rc)
				return rc;
		}
	}
	*pp = q;
	return 0;
}

int wire_dec_profiling(const uint8_t *b, const uint8_t *end, struct wire_msg *m)
{
	const uint8_t *p = b - WIRE_HDR_SIZE, *q;
	int rc;

	if (m->kind == WIRE_RUN_WITH_PROFILING_REQ) {
		struct wire_prof_req_view *v = &m->u.prof_req;

		if (left(b, end) < PROF_REQ_FIXED - WIRE_HDR_SIZE)
			return err_set(RDAG_EWIRE_TRUNCATED, "wire: RUN_WITH_PROFILING_REQ: truncated");
		v->req.prof_id = ld64(p + 24);
		v->req.state = p[32];
		v->req.flags = ld16(p + 34);
		if (p[33] || ld32(p + 36))
			return err_set(RDAG_EWIRE_FIELD, "wire: RUN_WITH_PROFILING_REQ: non-zero "
				       "reserved field");
		if (!state_ok(v->req.state))
			return err_set(RDAG_EWIRE_FIELD, "wire: RUN_WITH_PROFILING_REQ: unknown "
				       "profiler state %u", v->req.state);
		if (v->req.flags & ~PROF_FLAGS)
			return err_set(RDAG_EWIRE_FLAGS, "wire: RUN_WITH_PROFILING_REQ: reserved flags "
				       "0x%x", v->req.flags);
		return wire_check_inner(p + PROF_REQ_FIXED, end, m, &v->inner);
	}

	struct wire_prof_resp_view *v = &m->u.prof_resp;
	uint32_t n;

	if (left(b, end) < PROF_RESP_FIXED - WIRE_HDR_SIZE)
		return err_set(RDAG_EWIRE_TRUNCATED, "wire: RUN_WITH_PROFILING_RESP: truncated");
	v->prof_id = ld64(p + 24);
	n = ld32(p + 32);
	if (ld32(p + 36))
		return err_set(RDAG_EWIRE_FIELD, "wire: RUN_WITH_PROFILING_RESP: non-zero reserved "
			       "field");
	if (n > WIRE_MAX_EVENTS)
		return err_set(RDAG_EWIRE_COUNT, "wire: RUN_WITH_PROFILING_RESP: %u events (limit %u)",
			       n, WIRE_MAX_EVENTS);
	q = p + PROF_RESP_FIXED;
	v->events.count = n;
	v->events.p = q;
	rc = dec_events(&q, end, n, m);
	if (rc)
		return rc;
	return wire_check_inner(q, end, m, &v->inner);
}

bool wire_event_next(struct wire_event_iter *it, struct wire_prof_event *ev)
{
	const uint8_t *q = it->p;

	if (!it->left)
		return false;
	it->left--;
	ev->start_ns = ld64(q);
	ev->end_ns = ld64(q + 8);
	ev->thread_id = ld64(q + 16);
	wire_load_device(q + 24, &ev->device);
	ev->name.len = ld32(q + 28);
	ev->name.ptr = q + EVENT_FIXED;
	it->p = q + EVENT_FIXED + pad8(ev->name.len);
	return true;
}
