/* The GPU data path per peer pair: what this worker offers in its handshake, and the choice made
 * with each peer's offer (RDAG_GPU_TRANSPORT) once the transport is up. */
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
