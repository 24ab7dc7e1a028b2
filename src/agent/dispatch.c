/* Incoming messages: unwrap the profiling and autograd layers, then route by the innermost kind. */
#include <stdlib.h>
#include <string.h>

#include "agent/agent_int.h"
#include "util/err.h"
#include "util/log.h"

void ag_in_free(struct ag_in *in)
{
	if (!in)
		return;
	ag_rx_release(in->a, in->rx, in->loop);
	free(in);
}

/* Peels the wrappers of in->rx's message into in's fields; in->inner is the innermost message. */
static int unwrap(struct ag_in *in)
{
	const struct wire_msg *cur = &in->rx->msg;
	unsigned d = 0;

	for (;;) {
		if (cur->kind == WIRE_RUN_WITH_PROFILING_REQ || cur->kind == WIRE_RUN_WITH_PROFILING_RESP) {
			if (in->has_prof || in->has_fwd)
				return err_set(RDAG_EWIRE_NESTING, "profiling wrapper inside another wrapper");
			in->has_prof = true;
			if (cur->kind == WIRE_RUN_WITH_PROFILING_REQ) {
				in->prof_id = cur->u.prof_req.req.prof_id;
			} else {
				in->prof_id = cur->u.prof_resp.prof_id;
				in->events = cur->u.prof_resp.events;
			}
		} else if (cur->kind == WIRE_FORWARD_AUTOGRAD_REQ ||
			   cur->kind == WIRE_FORWARD_AUTOGRAD_RESP) {
			if (in->has_fwd)
				return err_set(RDAG_EWIRE_NESTING, "autograd wrapper inside another");
			in->has_fwd = true;
			in->fwd_kind = cur->kind;
			in->ctx_id = cur->u.fwd.ctx_id;
			in->msg_id = cur->u.fwd.msg_id;
			in->from = cur->u.fwd.from_worker;
			in->devmap = cur->u.fwd.devmap;
		} else {
			in->inner = cur;
			return 0;
		}
		if (d > WIRE_MAX_DEPTH)
			return err_set(RDAG_EWIRE_NESTING, "too many wrappers");
		{
			int rc = wire_decode_inner(cur, &in->levels[d]);

			if (rc)
				return rc;
		}
		cur = &in->levels[d++];
	}
}

static bool is_request(uint8_t kind)
{
	switch (kind) {
	case WIRE_RPC_CALL:
	case WIRE_RREF_CALL:
	case WIRE_RREF_FETCH_REQ:
	case WIRE_RREF_DELETE:
	case WIRE_CLEANUP_AUTOGRAD_CONTEXT_REQ:
	case WIRE_BACKWARD_AUTOGRAD_REQ:
	case WIRE_RREF_BACKWARD_REQ:
	case WIRE_BACKWARD_ABORT:
		return true;
	default:
		return false;
	}
}

/* Whether rx names tensors that come by NCCL (received before the message is routed). */
static bool has_nccl(const struct xport_rx *rx)
{
	for (uint32_t i = 0; i < rx->ntensors; i++)
		if (rx->tensors[i].desc.loc == WIRE_LOC_NCCL)
			return true;
	return false;
}

void ag_on_recv(void *arg, struct xport_rx *rx)
{
	rdag_agent_t *a = arg;
	struct ag_in *in = calloc(1, sizeof(*in));
	bool loop = rx->peer == a->id;

	AG_TSAN_ACQUIRE(a);
	if (!in) {
		LOG_ERROR("agent: out of memory for a message from worker %u: dropped", rx->peer);
		ag_rx_release(a, rx, loop);
		return;
	}
	if (!loop) {
		/*
		 * Requests are held while they are served and replies while their future lives: give
		 * the receive buffer (the sender's credit) back now, keeping only the tensors' slots.
		 * Otherwise two workers calling each other could each hold all of the other's credits.
		 */
		struct xport_rx *d = xport_detach(a->x, rx);

		if (d)
			rx = d;
	}
	in->a = a;
	in->rx = rx;
	in->loop = loop;
	in->src = (uint16_t)rx->peer;
	in->req_id = rx->msg.env.req_id;
	if (!loop && has_nccl(rx)) {
		/* Its tensors are on their way by NCCL: routed once they came (or failed). */
		ag_nccl_land(in);
		return;
	}
	ag_on_landed(in);
}

void ag_on_landed(struct ag_in *in)
{
	rdag_agent_t *a = in->a;
	int rc = unwrap(in);
	if (rc) {
		/* The transport validated every layer; anything left is a message we cannot use. */
		ag_reply_exception(in, rc, "worker %u cannot unwrap %s: %s", a->id,
				   wire_kind_name(in->rx->msg.kind), rdag_last_error());
		ag_in_free(in);
		return;
	}
	if (in->inner->kind == WIRE_NCCL_ID) {
		/* A communicator for the sender's device tensors: joined on a thread of its own. */
		ag_nccl_on_id(a, in->src, &in->inner->u.nccl_id);
		ag_in_free(in);
		return;
	}
	if (!is_request(in->inner->kind)) {
		ag_handle_reply(in);
		return;
	}
	if (in->has_fwd && in->fwd_kind != WIRE_FORWARD_AUTOGRAD_REQ) {
		ag_reply_exception(in, RDAG_EWIRE_KIND, "worker %u: %s wrapped in %s", a->id,
				   wire_kind_name(in->inner->kind), wire_kind_name(in->fwd_kind));
		ag_in_free(in);
		return;
	}
	switch (in->inner->kind) {
	case WIRE_RREF_DELETE:
		ag_rref_delete(a, in->inner->u.rref.local_id);
		ag_in_free(in);
		return;
	case WIRE_BACKWARD_ABORT:
		ag_on_abort(in);
		return;
	case WIRE_CLEANUP_AUTOGRAD_CONTEXT_REQ:
		atomic_fetch_add(&a->serving, 1);
		in->job.run = ag_serve_cleanup;
		pool_push(&a->pool, &in->job);
		return;
	case WIRE_BACKWARD_AUTOGRAD_REQ:
		/* A gradient request: its message and all its tensors have landed; run it off the progress loop. */
		atomic_fetch_add(&a->serving, 1);
		in->job.run = ag_serve_backward;
		pool_push(&a->pool, &in->job);
		return;
	case WIRE_RREF_BACKWARD_REQ:
		atomic_fetch_add(&a->serving, 1);
		in->job.run = ag_serve_rref_backward;
		pool_push(&a->pool, &in->job);
		return;
	default:
		atomic_fetch_add(&a->serving, 1);
		in->job.run = ag_serve;
		pool_push(&a->pool, &in->job);
		return;
	}
}
