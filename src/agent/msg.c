/* Outgoing messages: the layered encoder (profiling / autograd wrappers), tensor conversion, loopback. */
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "agent/agent_int.h"
#include "util/err.h"
#include "util/log.h"

/* Encodes the innermost message of o at buf (zero env: it is wrapped) or with env (top level). */
static int encode_inner(const struct ag_out *o, void *buf, size_t cap, const struct wire_env *env,
			const struct wire_tensor *t, uint32_t n, size_t *len)
{
	switch (o->kind) {
	case WIRE_RPC_CALL:
		return wire_encode_rpc_call(buf, cap, env, &o->call, t, n, len);
	case WIRE_RREF_CALL:
		return wire_encode_rref_call(buf, cap, env, &o->call, t, n, len);
	case WIRE_RPC_RESP:
		return wire_encode_rpc_resp(buf, cap, env, &o->payload, t, n, len);
	case WIRE_RREF_FETCH_REQ:
		return wire_encode_rref_fetch_req(buf, cap, env, &o->rref, len);
	case WIRE_RREF_FETCH_RESP:
		return wire_encode_rref_fetch_resp(buf, cap, env, &o->payload, t, n, len);
	case WIRE_RREF_DELETE:
		return wire_encode_rref_delete(buf, cap, env, &o->rref, len);
	case WIRE_CLEANUP_AUTOGRAD_CONTEXT_REQ:
		return wire_encode_cleanup_req(buf, cap, env, &o->cleanup, len);
	case WIRE_CLEANUP_AUTOGRAD_CONTEXT_RESP:
		return wire_encode_cleanup_resp(buf, cap, env, len);
	case WIRE_EXCEPTION:
		return wire_encode_exception(buf, cap, env, &o->exc, len);
	case WIRE_BACKWARD_AUTOGRAD_REQ:
		return wire_encode_grad_req(buf, cap, env, &o->grad, t, n, len);
	case WIRE_BACKWARD_AUTOGRAD_RESP:
		return wire_encode_grad_resp(buf, cap, env, len);
	case WIRE_BACKWARD_ABORT:
		return wire_encode_abort(buf, cap, env, &o->abort, len);
	case WIRE_RREF_BACKWARD_REQ:
		return wire_encode_rref_bwd_req(buf, cap, env, &o->rref_bwd, len);
	case WIRE_RREF_BACKWARD_RESP:
		return wire_encode_rref_bwd_resp(buf, cap, env, len);
	default:
		return err_set(RDAG_EINVAL, "agent: cannot encode message kind %u", o->kind);
	}
}

int ag_encode(void *arg, void *buf, size_t cap, const struct wire_env *env,
	      const struct wire_tensor *tensors, uint32_t n, size_t *len)
{
	const struct ag_out *o = arg;
	size_t pprof = 0, pfwd = 0, inner_len = 0, fwd_len = 0;
	uint8_t *p = buf;
	int rc;

	if (!o->has_prof && !o->has_fwd)
		return encode_inner(o, buf, cap, env, tensors, n, len);
	if (o->has_prof) {
		if (o->prof_kind == WIRE_RUN_WITH_PROFILING_REQ) {
			pprof = wire_prof_req_prefix();
		} else {
			rc = wire_prof_resp_prefix(o->events, o->nevents, &pprof);
			if (rc)
				return rc;
		}
	}
	if (o->has_fwd)
		pfwd = wire_fwd_prefix(&o->fwd);
	/* Innermost first, in place behind the wrappers' fields: nothing is copied. */
	rc = encode_inner(o, cap > pprof + pfwd ? p + pprof + pfwd : NULL,
			  cap > pprof + pfwd ? cap - pprof - pfwd : 0, NULL, tensors, n, &inner_len);
	if (rc == RDAG_ENOSPC) {
		*len = pprof + pfwd + inner_len;
		return rc;
	}
	if (rc)
		return rc;
	if (o->has_fwd) {
		const struct wire_env *fenv = o->has_prof ? NULL : env;

		if (o->fwd_kind == WIRE_FORWARD_AUTOGRAD_REQ)
			rc = wire_encode_fwd_req(p + pprof, cap - pprof, fenv, &o->fwd, NULL, inner_len,
						 &fwd_len);
		else
			rc = wire_encode_fwd_resp(p + pprof, cap - pprof, fenv, &o->fwd, NULL, inner_len,
						  &fwd_len);
		if (rc)
			return rc;
	} else {
		fwd_len = inner_len;
	}
	if (!o->has_prof) {
		*len = fwd_len;
		return 0;
	}
	if (o->prof_kind == WIRE_RUN_WITH_PROFILING_REQ)
		return wire_encode_prof_req(buf, cap, env, &o->prof, NULL, fwd_len, len);
	return wire_encode_prof_resp(buf, cap, env, o->prof.prof_id, o->events, o->nevents, NULL,
				     fwd_len, len);
}

void ag_out_free(struct ag_out *o)
{
	if (!o)
		return;
	for (unsigned i = 0; i < sizeof(o->own) / sizeof(o->own[0]); i++)
		free(o->own[i]);
	ag_nccl_out_free(o);
	if (o->staged) {
		for (uint32_t i = 0; i < o->ntensors; i++)
			gpu_stage_put(o->staged[i]);
		free(o->staged);
	}
	if (o->events) {
		for (uint32_t i = 0; i < o->nevents; i++)
			free((void *)o->events[i].name.ptr);
		free(o->events);
	}
	free(o->tensors);
	free(o);
}

int ag_desc_from_tensor(struct wire_tensor *d, const struct rdag_tensor *t, uint32_t index)
{
	unsigned es = wire_dtype_size(t->dtype);
	uint64_t n = es;

	memset(d, 0, sizeof(*d));
	if (!es)
		return err_set(RDAG_EINVAL, "tensor %u: unknown dtype %u", index, t->dtype);
	if (t->ndim > WIRE_MAX_RANK)
		return err_set(RDAG_EINVAL, "tensor %u: %u dims (limit %u)", index, t->ndim,
			       WIRE_MAX_RANK);
	if (t->device_type != RDAG_DEV_CPU && t->device_type != RDAG_DEV_CUDA)
		return err_set(RDAG_EINVAL, "tensor %u: unknown device type %u", index,
			       t->device_type);
	if (t->device_type == RDAG_DEV_CUDA && !gpu_built())
		return err_set(RDAG_ENOCUDA, "tensor %u is on CUDA device %u: rdag was built without "
			       "CUDA", index, t->device_index);
	if (t->device_type == RDAG_DEV_CUDA && t->device_index >= AG_MAX_DEVICES)
		return err_set(RDAG_EINVAL, "tensor %u: CUDA device %u (at most %u)", index,
			       t->device_index, AG_MAX_DEVICES - 1);
	for (unsigned i = 0; i < t->ndim; i++) {
		if (t->shape[i] < 0)
			return err_set(RDAG_EINVAL, "tensor %u: negative dim %u", index, i);
		if (t->shape[i] && n > UINT64_MAX / (uint64_t)t->shape[i])
			return err_set(RDAG_EOVERFLOW, "tensor %u: size overflows", index);
		n *= (uint64_t)t->shape[i];
		d->shape[i] = t->shape[i];
	}
	if (n && !t->data)
		return err_set(RDAG_EINVAL, "tensor %u: %llu bytes at NULL", index,
			       (unsigned long long)n);
	d->dtype = t->dtype;
	d->rank = t->ndim;
	d->dev_type = t->device_type;
	d->dev_index = t->device_index;
	d->flags = t->requires_grad ? WIRE_TF_REQUIRES_GRAD : 0;
	d->nbytes = n;
	return 0;
}

void ag_tensor_from_rx(struct rdag_tensor *t, const struct xport_rx_tensor *rt)
{
	const struct wire_tensor *d = &rt->desc;

	memset(t, 0, sizeof(*t));
	t->data = rt->data;
	t->dtype = d->dtype;
	t->ndim = d->rank;
	t->device_type = d->dev_type;
	t->device_index = d->dev_index;
	t->requires_grad = (d->flags & WIRE_TF_REQUIRES_GRAD) != 0;
	memcpy(t->shape, d->shape, d->rank * sizeof(t->shape[0]));
}

/* ---- loopback: a message to this worker is encoded, decoded and dispatched without the fabric */

struct loop_rx {
	struct xport_rx rx;
	void *buf;
};

static int loopback(rdag_agent_t *a, uint64_t req_id, struct ag_out *o)
{
	struct wire_env env = {.req_id = req_id, .src = a->id, .credits = 0};
	struct wire_tensor *d = NULL;
	struct loop_rx *l = calloc(1, sizeof(*l));
	struct wire_msg levels[WIRE_MAX_DEPTH + 1];
	struct wire_tensor_list tl;
	size_t cap = 4096, len = 0;
	int rc = RDAG_ENOMEM;

	if (!l)
		goto fail;
	if (o->ntensors) {
		d = calloc(o->ntensors, sizeof(*d));
		if (!d)
			goto fail;
	}
	for (uint32_t i = 0; i < o->ntensors; i++) {
		d[i] = o->tensors[i].desc;
		d[i].loc = WIRE_LOC_INLINE;
		d[i].u.data = o->tensors[i].data;
		cap += (size_t)d[i].nbytes + 256;
	}
	for (;;) {
		l->buf = malloc(cap);
		if (!l->buf) {
			rc = err_set(RDAG_ENOMEM, "agent: out of memory for a %zu-byte loopback message",
				     cap);
			goto fail;
		}
		rc = ag_encode(o, l->buf, cap, &env, d, o->ntensors, &len);
		if (rc != RDAG_ENOSPC)
			break;
		free(l->buf);
		l->buf = NULL;
		cap = len > cap ? len : 2 * cap;
	}
	if (rc)
		goto fail;
	rc = wire_decode(l->buf, len, &l->rx.msg);
	if (rc)
		goto fail;
	rc = xport_msg_tensors(&l->rx.msg, levels, &tl);
	if (rc)
		goto fail;
	l->rx.peer = a->id;
	l->rx.buf = l->buf;
	l->rx.len = len;
	l->rx.ntensors = tl.count;
	if (tl.count) {
		struct wire_tensor_iter it;
		uint32_t i = 0;

		l->rx.tensors = calloc(tl.count, sizeof(*l->rx.tensors));
		if (!l->rx.tensors) {
			rc = RDAG_ENOMEM;
			goto fail;
		}
		wire_tensors_begin(&tl, &it);
		while (i < tl.count && wire_tensor_next(&it, &l->rx.tensors[i].desc)) {
			l->rx.tensors[i].data = (void *)l->rx.tensors[i].desc.u.data;
			i++;
		}
	}
	free(d);
	ag_on_recv(a, &l->rx);
	return 0;
fail:
	free(d);
	if (l) {
		free(l->rx.tensors);
		free(l->buf);
		free(l);
	}
	return rc;
}

void ag_rx_release(rdag_agent_t *a, struct xport_rx *rx, bool loop)
{
	if (!rx)
		return;
	if (!loop)
		ag_nccl_drain(a, rx);
	ag_rx_unland(rx);
	if (loop) {
		struct loop_rx *l = (struct loop_rx *)rx;

		free(l->rx.tensors);
		free(l->buf);
		free(l);
	} else {
		xport_release(a->x, rx);
	}
}

int ag_send(rdag_agent_t *a, uint32_t dst, uint64_t req_id, struct ag_out *o,
	    xport_done_fn done, void *done_arg)
{
	struct ag_nccl_sent *s = NULL;
	int rc = ag_stage_out(a, dst, o);

	if (rc)
		return rc;
	if (dst == a->id) {
		rc = loopback(a, req_id, o);
		if (rc == 0)
			done(done_arg, 0);
		return rc;
	}
	if (o->nccl) {
		/* Tensors posted to NCCL: done waits for their sends too (o may go with done). */
		s = ag_nccl_sent_new(o, done, done_arg);
		if (!s)
			return RDAG_ENOMEM;
		done = ag_nccl_sent_fn();
		done_arg = s;
	}
	for (;;) {
		rc = xport_send(a->x, dst, req_id, ag_encode, o, o->tensors, o->ntensors, done, done_arg);
		if (rc != RDAG_EAGAIN) {
			if (s)
				ag_nccl_sent_finish(a, s, rc == 0);
			return rc;
		}
		/* Every send op is busy: let completions come back, then retry. */
		if (a->mode == RDAG_PROGRESS_MANUAL || !a->progress_running)
			xport_progress(a->x, 1);
		else
			sched_yield();
	}
}
