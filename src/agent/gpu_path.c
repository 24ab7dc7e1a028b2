/* The GPU data path per peer pair: what this worker offers in its handshake, and the choice made
 * with each peer's offer (RDAG_GPU_TRANSPORT) once the transport is up. */
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/agent_int.h"
#include "agent/agent_test.h"
#include "bootstrap/boot.h"
#include "gpu/gpu.h"
#include "util/err.h"
#include "util/log.h"

uint16_t ag_gpu_offer(rdag_agent_t *a)
{
	struct gpu_info gi;
	int version = 0;

	memset(&a->gpu_local, 0, sizeof(a->gpu_local));
	a->gpu_local.built = gpu_built();
	if (!a->gpu_local.built)
		return 0;
	/* A failed probe is an answer (no driver, no device), not an error of the agent. */
	(void)gpu_probe(&gi);
	a->gpu_local.cuda = gi.driver_loaded;
	a->gpu_local.ndevices = gi.ndevices;
	a->gpu_local.nccl = gi.ndevices > 0 && gpu_nccl_load(&version) == 0;
	/* nic_device_mem stays 0: GPU landing arenas do not exist yet. */
	return a->gpu_local.nccl ? WIRE_HS_NCCL : 0;
}

int ag_gpu_select(rdag_agent_t *a)
{
	enum gpu_transport want;
	int rc = gpu_transport_env(&want);

	if (rc) {
		LOG_WARN("agent: %s; taking auto", rdag_last_error());
		want = GPU_TRANSPORT_AUTO;
	}
	a->gpu_path = calloc(a->world, sizeof(*a->gpu_path));
	if (!a->gpu_path)
		return err_set(RDAG_ENOMEM, "out of memory for the GPU paths of %u workers", a->world);
	for (uint32_t r = 0; r < a->world; r++) {
		struct gpu_caps caps = {.local = a->gpu_local};
		uint16_t offer = 0;
		char *why = a->gpu_path[r].why;

		if (r == a->id)
			continue;
		if (xport_peer_offer(a->x, r, &offer))
			continue;
		/* A peer says only what it can do beyond host memory; either bit means a device. */
		caps.peer.nccl = !!(offer & WIRE_HS_NCCL);
		caps.peer.nic_device_mem = !!(offer & WIRE_HS_ARENA_GPU);
		caps.peer.ndevices = caps.peer.nccl || caps.peer.nic_device_mem;
		caps.peer.built = caps.peer.cuda = caps.peer.ndevices;
		rc = gpu_transport_select(want, &caps, &a->gpu_path[r].t, why,
					  sizeof(a->gpu_path[r].why));
		a->gpu_path[r].rc = rc;
		if (a->gpu_local.ndevices > 0)
			LOG_INFO("agent: GPU path to worker %u (%s): %s%s", r, boot_name(a->b, r),
				 rc ? "none: " : "", why);
	}
	/* Without a device here every peer gets the same answer: said once, quietly. */
	if (a->gpu_local.ndevices == 0 && a->world > 1)
		LOG_DEBUG("agent: no GPU path to any peer: %s", a->gpu_path[a->id ? 0 : 1].why);
	return 0;
}

/* The path with peer, or NULL (error set) for this worker, one out of range or before open. */
static const struct ag_gpu_path *path_to(rdag_agent_t *a, uint32_t peer, const char *who)
{
	if (peer >= a->world || peer == a->id || !a->gpu_path) {
		err_set(RDAG_EINVAL, "%s: worker %u is %s", who, peer,
			peer == a->id ? "this worker" : "not in the job");
		return NULL;
	}
	return &a->gpu_path[peer];
}

int rdag_peer_info(rdag_agent_t *a, uint32_t peer, struct rdag_peer_info *out)
{
	uint16_t offer = 0;
	const struct ag_gpu_path *gp;

	if (!a || !out)
		return err_set(RDAG_EINVAL, "rdag_peer_info: NULL argument");
	gp = path_to(a, peer, "rdag_peer_info");
	if (!gp)
		return RDAG_EINVAL;
	memset(out, 0, sizeof(*out));
	out->id = peer;
	out->name = rdag_worker_name(a, peer);
	(void)xport_peer_offer(a->x, peer, &offer); /* peer is in range */
	if (offer & WIRE_HS_ARENA_GPU)
		out->offers |= RDAG_PEER_OFFER_GPU_ARENA;
	if (offer & WIRE_HS_NCCL)
		out->offers |= RDAG_PEER_OFFER_NCCL;
	out->gpu_rc = gp->rc;
	out->gpu_path = gp->rc ? NULL : gpu_transport_name(gp->t);
	out->gpu_tensors_out = atomic_load(&gp->staged_tensors);
	out->gpu_bytes_out = atomic_load(&gp->staged_bytes);
	out->gpu_tensors_in = atomic_load(&gp->landed_tensors);
	out->gpu_bytes_in = atomic_load(&gp->landed_bytes);
	out->gpu_nccl_tensors_out = atomic_load(&gp->nccl_tensors_out);
	out->gpu_nccl_tensors_in = atomic_load(&gp->nccl_tensors_in);
	snprintf(out->gpu_why, sizeof(out->gpu_why), "%s", gp->why);
	return 0;
}

int agent_test_gpu_path(rdag_agent_t *a, uint32_t peer, uint16_t *peer_offer, char *why,
			size_t whylen)
{
	const struct ag_gpu_path *gp = path_to(a, peer, "agent");

	if (!gp)
		return RDAG_EINVAL;
	if (peer_offer)
		(void)xport_peer_offer(a->x, peer, peer_offer); /* peer is in range */
	if (why && whylen)
		snprintf(why, whylen, "%s", gp->why);
	return gp->rc ? gp->rc : (int)gp->t;
}

/* ---- device maps and host staging ------------------------------------------------------------ */

int rdag_agent_set_device_map(rdag_agent_t *a, uint32_t peer, const int *map, uint32_t n)
{
	int rc;

	if (!a || (n && !map))
		return err_set(RDAG_EINVAL, "rdag_agent_set_device_map: NULL argument");
	if (peer >= a->world)
		return err_set(RDAG_EINVAL, "rdag_agent_set_device_map: worker %u is not in the job "
			       "(%u workers)", peer, a->world);
	if (n > AG_MAX_DEVICES)
		return err_set(RDAG_EINVAL, "rdag_agent_set_device_map: %u entries (at most %u)", n,
			       AG_MAX_DEVICES);
	for (uint32_t i = 0; i < n; i++) {
		if (map[i] < -1 || map[i] >= AG_MAX_DEVICES)
			return err_set(RDAG_EINVAL, "rdag_agent_set_device_map: device %u maps to %d "
				       "(-1, or 0..%d)", i, map[i], AG_MAX_DEVICES - 1);
		if (map[i] < 0)
			continue;
		rc = gpu_init();
		if (rc)
			return err_set(rc, "rdag_agent_set_device_map: %s", rdag_last_error());
		if (i >= (uint32_t)a->gpu_local.ndevices)
			return err_set(RDAG_ENOGPU, "rdag_agent_set_device_map: this worker has no CUDA "
				       "device %u (%d present)", i, a->gpu_local.ndevices);
	}
	pthread_mutex_lock(&a->devmap_lock);
	if (!a->devmap) {
		a->devmap = malloc(a->world * sizeof(*a->devmap));
		if (!a->devmap) {
			pthread_mutex_unlock(&a->devmap_lock);
			return err_set(RDAG_ENOMEM, "rdag_agent_set_device_map: out of memory");
		}
		memset(a->devmap, -1, a->world * sizeof(*a->devmap));
	}
	memset(a->devmap[peer], -1, sizeof(a->devmap[peer]));
	for (uint32_t i = 0; i < n; i++)
		a->devmap[peer][i] = (int16_t)map[i];
	pthread_mutex_unlock(&a->devmap_lock);
	return 0;
}

/* The device of dst that local device dev maps to, or -1. */
static int mapped(rdag_agent_t *a, uint32_t dst, unsigned dev)
{
	int to = -1;

	if (dev >= AG_MAX_DEVICES || dst >= a->world)
		return -1;
	pthread_mutex_lock(&a->devmap_lock);
	if (a->devmap)
		to = a->devmap[dst][dev];
	pthread_mutex_unlock(&a->devmap_lock);
	return to;
}

int ag_stage_out(rdag_agent_t *a, uint32_t dst, struct ag_out *o)
{
	for (uint32_t i = 0; i < o->ntensors; i++) {
		struct xport_tensor *t = &o->tensors[i];
		uint64_t nb = t->desc.nbytes;
		struct gpu_ptr_info pi;
		int to, nto, rc;

		if (t->desc.dev_type != WIRE_DEV_CUDA || t->staged || (o->nccl && o->nccl[i].e))
			continue;
		/* Gradients land where the receiver's send function says: no map needed. */
		to = o->kind == WIRE_BACKWARD_AUTOGRAD_REQ ? (int)t->desc.dev_index :
			mapped(a, dst, t->desc.dev_index);
		if (to < 0)
			return err_set(RDAG_EINVAL, "tensor %u is on CUDA device %u, which has no device "
				       "map entry towards worker %u (%s): set one with "
				       "rdag_agent_set_device_map, or move the tensor to the CPU", i,
				       t->desc.dev_index, dst, boot_name(a->b, dst));
		if (nb) {
			rc = gpu_ptr_classify(t->data, &pi);
			if (rc)
				return rc;
			if (pi.type != GPU_MEM_DEVICE || pi.device != (int)t->desc.dev_index ||
			    (uintptr_t)t->data - pi.base > pi.size ||
			    nb > pi.size - ((uintptr_t)t->data - pi.base))
				return err_set(RDAG_EINVAL, "tensor %u says CUDA device %u, but its %llu "
					       "bytes at %p are not in one allocation of that device", i,
					       t->desc.dev_index, (unsigned long long)nb, t->data);
			/*
			 * By NCCL from the device itself, posted below before the message. A
			 * gradient's device there is the receiver's to choose: the communicator
			 * is a guess (our map, else the same ordinal); a wrong one costs a copy.
			 */
			nto = to;
			if (o->kind == WIRE_BACKWARD_AUTOGRAD_REQ && (nto = mapped(a, dst, pi.device)) < 0)
				nto = pi.device;
			if (ag_nccl_path(a, dst) &&
			    ag_nccl_take(a, dst, o, i, t->desc.dev_index, (unsigned)nto)) {
				t->desc.dev_index = (uint16_t)nto;
				atomic_fetch_add(&a->gpu_path[dst].staged_tensors, 1);
				atomic_fetch_add(&a->gpu_path[dst].staged_bytes, nb);
				atomic_fetch_add(&a->gpu_path[dst].nccl_tensors_out, 1);
				continue;
			}
			if (!o->staged) {
				/* NOLINTNEXTLINE(bugprone-sizeof-expression): an array of pointers */
				o->staged = calloc(o->ntensors, sizeof(*o->staged));
				if (!o->staged)
					return err_set(RDAG_ENOMEM, "out of memory staging device tensors");
			}
			/* A pinned buffer of the pool, filled by an async copy polled to its end. */
			rc = gpu_stage_get(pi.device, nb, &o->staged[i]);
			if (!rc)
				rc = gpu_stage_to_host(o->staged[i], t->data, nb);
			if (!rc) {
				while ((rc = gpu_stage_test(o->staged[i])) == RDAG_EAGAIN)
					sched_yield();
			}
			if (rc) {
				rc = err_set(rc, "staging %llu bytes of tensor %u from CUDA device %u: %s",
					     (unsigned long long)nb, i, t->desc.dev_index,
					     rdag_last_error());
				gpu_stage_put(o->staged[i]); /* destroyed if its copy never ended */
				o->staged[i] = NULL;
				return rc;
			}
			t->data = gpu_stage_host(o->staged[i]);
		}
		t->desc.dev_index = (uint16_t)to;
		t->staged = true;
		if (a->gpu_path && dst < a->world) {
			atomic_fetch_add(&a->gpu_path[dst].staged_tensors, 1);
			atomic_fetch_add(&a->gpu_path[dst].staged_bytes, nb);
		}
	}
	return ag_nccl_post(a, o);
}

int ag_tensor_land(rdag_agent_t *a, uint32_t src, struct rdag_tensor *t,
		   struct xport_rx_tensor *rt, uint32_t index)
{
	uint64_t nb = rt->desc.nbytes;
	int rc;

	ag_tensor_from_rx(t, rt);
	if (rt->desc.dev_type != WIRE_DEV_CUDA)
		return 0;
	if (rt->desc.loc == WIRE_LOC_NCCL) {
		/* Received before the message was routed: its outcome, on the device it belongs. */
		rc = ag_nccl_recv(a, src, rt, index);
		if (rc)
			return rc;
		if (a->gpu_path && src < a->world)
			atomic_fetch_add(&a->gpu_path[src].nccl_tensors_in, 1);
	}
	if (!rt->dev && nb) {
		if (!rt->data)
			return err_set(RDAG_EINVAL, "tensor %u for CUDA device %u came without its bytes",
				       index, rt->desc.dev_index);
		rc = gpu_mem_alloc(rt->desc.dev_index, nb, &rt->dev);
		if (!rc)
			rc = gpu_memcpy_htod(rt->dev, rt->data, nb);
		if (rc) {
			gpu_mem_free(rt->dev);
			rt->dev = NULL;
			return err_set(rc, "tensor %u for CUDA device %u: %s", index,
				       rt->desc.dev_index, rdag_last_error());
		}
	}
	if (a->gpu_path && src < a->world) {
		atomic_fetch_add(&a->gpu_path[src].landed_tensors, 1);
		atomic_fetch_add(&a->gpu_path[src].landed_bytes, nb);
	}
	t->data = rt->dev;
	return 0;
}

int ag_tensor_land_on(rdag_agent_t *a, uint32_t src, struct rdag_tensor *t,
		      struct xport_rx_tensor *rt, uint32_t index, uint8_t dev_type, uint16_t dev_index)
{
	if (dev_type == RDAG_DEV_CPU) {
		if (rt->desc.dev_type != WIRE_DEV_CPU)
			return err_set(RDAG_EINVAL, "tensor %u says CUDA device %u, but it belongs on "
				       "the CPU here", index, rt->desc.dev_index);
		ag_tensor_from_rx(t, rt);
		return 0;
	}
	if (dev_type != RDAG_DEV_CUDA)
		return err_set(RDAG_EINVAL, "tensor %u belongs on device type %u", index, dev_type);
	if (rt->dev && rt->desc.loc != WIRE_LOC_NCCL &&
	    (rt->desc.dev_type != WIRE_DEV_CUDA || rt->desc.dev_index != dev_index))
		return err_set(RDAG_EINVAL, "tensor %u already landed elsewhere", index);
	rt->desc.dev_type = WIRE_DEV_CUDA;
	rt->desc.dev_index = dev_index;
	return ag_tensor_land(a, src, t, rt, index);
}

void ag_rx_unland(struct xport_rx *rx)
{
	for (uint32_t i = 0; i < rx->ntensors; i++) {
		gpu_mem_free(rx->tensors[i].dev);
		rx->tensors[i].dev = NULL;
	}
}
