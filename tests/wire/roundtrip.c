/* Decode, walk every view and re-encode: the round-trip invariant checked by the tests and fuzzers. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <rdag/error.h>

#include "roundtrip.h"

static volatile uint8_t sink;

static void touch(const void *p, size_t n)
{
	const uint8_t *b = p;
	uint8_t x = 0;

	for (size_t i = 0; i < n; i++)
		x ^= b[i];
	sink ^= x;
}

static void die(const char *what, const struct wire_msg *m)
{
	fprintf(stderr, "round-trip invariant broken: %s (%s, depth %u, %u bytes): %s\n", what,
		wire_kind_name(m->kind), m->depth, m->length, rdag_last_error());
	abort();
}

/* Reads a tensor list into a malloc'ed array (NULL when empty); touches inline bytes. */
static struct wire_tensor *tensors_of(const struct wire_tensor_list *l)
{
	struct wire_tensor *t = NULL;
	struct wire_tensor_iter it;
	uint32_t i = 0;

	if (l->count) {
		t = calloc(l->count, sizeof(*t));
		if (!t)
			abort();
	}
	wire_tensors_begin(l, &it);
	while (i < l->count && wire_tensor_next(&it, &t[i])) {
		if (t[i].loc == WIRE_LOC_INLINE)
			touch(t[i].u.data, (size_t)t[i].nbytes);
		i++;
	}
	if (i != l->count || wire_tensor_next(&it, &(struct wire_tensor){0}))
		abort();
	return t;
}

int rt_reencode(const struct wire_msg *m, void *out, size_t cap, size_t *len)
{
	const struct wire_env *env = &m->env;
	struct wire_tensor *t = NULL;
	int rc;

	switch (m->kind) {
	case WIRE_HANDSHAKE:
		return wire_encode_handshake(out, cap, env, &m->u.hs, len);
	case WIRE_CREDIT:
		return wire_encode_credit(out, cap, env, &m->u.credit, len);
	case WIRE_NCCL_ID:
		touch(m->u.nccl_id.id, WIRE_NCCL_ID_BYTES);
		return wire_encode_nccl_id(out, cap, env, &m->u.nccl_id, len);
	case WIRE_EXCEPTION:
		return wire_encode_exception(out, cap, env, &m->u.exc, len);
	case WIRE_RPC_CALL:
	case WIRE_RREF_CALL:
		t = tensors_of(&m->u.call.tensors);
		rc = (m->kind == WIRE_RPC_CALL ? wire_encode_rpc_call : wire_encode_rref_call)(
			out, cap, env, &m->u.call.call, t, m->u.call.tensors.count, len);
		break;
	case WIRE_RPC_RESP:
	case WIRE_RREF_FETCH_RESP:
		t = tensors_of(&m->u.resp.tensors);
		rc = (m->kind == WIRE_RPC_RESP ? wire_encode_rpc_resp : wire_encode_rref_fetch_resp)(
			out, cap, env, &m->u.resp.payload, t, m->u.resp.tensors.count, len);
		break;
	case WIRE_RREF_FETCH_REQ:
		return wire_encode_rref_fetch_req(out, cap, env, &m->u.rref, len);
	case WIRE_RREF_DELETE:
		return wire_encode_rref_delete(out, cap, env, &m->u.rref, len);
	case WIRE_RDV_ANSWER:
		return wire_encode_rdv_answer(out, cap, env, &m->u.rdv_answer, len);
	case WIRE_RDV_DONE:
		return wire_encode_rdv_done(out, cap, env, &m->u.rdv_done, len);
	case WIRE_FORWARD_AUTOGRAD_REQ:
	case WIRE_FORWARD_AUTOGRAD_RESP: {
		const struct wire_fwd_view *v = &m->u.fwd;
		struct wire_devpair dm[WIRE_MAX_DEVMAP];
		struct wire_fwd f = {v->ctx_id, v->msg_id, v->from_worker, v->devmap.count, dm};

		for (uint16_t i = 0; i < v->devmap.count; i++)
			wire_devmap_get(&v->devmap, i, &dm[i]);
		return (m->kind == WIRE_FORWARD_AUTOGRAD_REQ ? wire_encode_fwd_req : wire_encode_fwd_resp)(
			out, cap, env, &f, v->inner.ptr, v->inner.len, len);
	}
	case WIRE_BACKWARD_AUTOGRAD_REQ:
		t = tensors_of(&m->u.grad.tensors);
		rc = wire_encode_grad_req(out, cap, env, &m->u.grad.req, t, m->u.grad.tensors.count, len);
		break;
	case WIRE_BACKWARD_AUTOGRAD_RESP:
		return wire_encode_grad_resp(out, cap, env, len);
	case WIRE_BACKWARD_ABORT:
		return wire_encode_abort(out, cap, env, &m->u.abort, len);
	case WIRE_CLEANUP_AUTOGRAD_CONTEXT_REQ:
		return wire_encode_cleanup_req(out, cap, env, &m->u.cleanup, len);
	case WIRE_CLEANUP_AUTOGRAD_CONTEXT_RESP:
		return wire_encode_cleanup_resp(out, cap, env, len);
	case WIRE_RREF_BACKWARD_REQ:
		return wire_encode_rref_bwd_req(out, cap, env, &m->u.rref_bwd, len);
	case WIRE_RREF_BACKWARD_RESP:
		return wire_encode_rref_bwd_resp(out, cap, env, len);
	case WIRE_RUN_WITH_PROFILING_REQ:
		return wire_encode_prof_req(out, cap, env, &m->u.prof_req.req, m->u.prof_req.inner.ptr,
					    m->u.prof_req.inner.len, len);
	case WIRE_RUN_WITH_PROFILING_RESP: {
		const struct wire_prof_resp_view *v = &m->u.prof_resp;
		struct wire_prof_event *ev = NULL;
		struct wire_event_iter it;
		uint32_t i = 0;

		if (v->events.count) {
			ev = calloc(v->events.count, sizeof(*ev));
			if (!ev)
				abort();
		}
		wire_events_begin(&v->events, &it);
		while (i < v->events.count && wire_event_next(&it, &ev[i])) {
			touch(ev[i].name.ptr, ev[i].name.len);
			i++;
		}
		if (i != v->events.count)
			abort();
		rc = wire_encode_prof_resp(out, cap, env, v->prof_id, ev, v->events.count, v->inner.ptr,
					   v->inner.len, len);
		free(ev);
		return rc;
	}
	default:
		abort();
	}
	free(t);
	return rc;
}

/* Round trip of one decoded message whose bytes are buf[0, len). */
static void check_one(const struct wire_msg *m, const uint8_t *buf, size_t len)
{
	uint8_t *out = malloc(len);
	size_t got = 0;

	if (!out)
		abort();
	if (m->length != len)
		die("length", m);
	if (m->kind == WIRE_EXCEPTION)
		touch(m->u.exc.text.ptr, m->u.exc.text.len);
	if (m->kind == WIRE_BACKWARD_ABORT)
		touch(m->u.abort.text.ptr, m->u.abort.text.len);
	if (m->kind == WIRE_RPC_CALL || m->kind == WIRE_RREF_CALL) {
		touch(m->u.call.call.name.ptr, m->u.call.call.name.len);
		touch(m->u.call.call.payload.ptr, m->u.call.call.payload.len);
	}
	if (m->kind == WIRE_RPC_RESP || m->kind == WIRE_RREF_FETCH_RESP)
		touch(m->u.resp.payload.ptr, m->u.resp.payload.len);
	if (rt_reencode(m, out, len, &got) != 0)
		die("re-encoding a decoded message failed", m);
	if (got != len || memcmp(out, buf, len) != 0)
		die("re-encoded bytes differ", m);
	/* One byte short: the encoder must refuse and say how much it needs. */
	if (rt_reencode(m, out, len - 1, &got) != RDAG_ENOSPC || got != len)
		die("no RDAG_ENOSPC with one byte too few", m);
	free(out);
}

int rt_check(const uint8_t *buf, size_t len, int *inner_rc)
{
	struct wire_msg m, in;
	int rc;

	if (inner_rc)
		*inner_rc = 0;
	rc = wire_decode(buf, len, &m);
	if (rc)
		return rc;
	check_one(&m, buf, len);
	while (wire_kind_wraps(m.kind)) {
		const struct wire_bytes *b = m.kind == WIRE_RUN_WITH_PROFILING_REQ ? &m.u.prof_req.inner
					     : m.kind == WIRE_RUN_WITH_PROFILING_RESP ? &m.u.prof_resp.inner
										: &m.u.fwd.inner;
		int irc = wire_decode_inner(&m, &in);

		if (irc) {
			if (inner_rc)
				*inner_rc = irc;
			break;
		}
		check_one(&in, b->ptr, b->len);
		m = in;
	}
	return 0;
}
