/* GPU data path choice (RDAG_GPU_TRANSPORT), verbs registration method, peer-memory module probe. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "gpu/gpu.h"
#include "util/err.h"

int gpu_transport_parse(const char *s, enum gpu_transport *out)
{
	static const struct {
		const char *name;
		enum gpu_transport t;
	} names[] = {{"auto", GPU_TRANSPORT_AUTO},
		     {"gdr", GPU_TRANSPORT_GDR},
		     {"nccl", GPU_TRANSPORT_NCCL},
		     {"host", GPU_TRANSPORT_HOST}};

	if (!out)
		return err_set(RDAG_EINVAL, "gpu: gpu_transport_parse without an output");
	if (!s || !s[0]) {
		*out = GPU_TRANSPORT_AUTO;
		return 0;
	}
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if (strcmp(s, names[i].name) == 0) {
			*out = names[i].t;
			return 0;
		}
	}
	return err_set(RDAG_EINVAL, "gpu: RDAG_GPU_TRANSPORT='%s' is not one of auto, gdr, nccl, host", s);
}

int gpu_transport_env(enum gpu_transport *out)
{
	return gpu_transport_parse(getenv("RDAG_GPU_TRANSPORT"), out);
}

const char *gpu_transport_name(enum gpu_transport t)
{
	switch (t) {
	case GPU_TRANSPORT_AUTO: return "auto";
	case GPU_TRANSPORT_GDR: return "gdr";
	case GPU_TRANSPORT_NCCL: return "nccl";
	case GPU_TRANSPORT_HOST: return "host";
	}
	return "?";
}

/* Why a side has no device: the first missing layer. Returns the matching code. */
static int side_missing(const struct gpu_side_caps *s, const char *who, char *why, size_t whylen)
{
	if (!s->built) {
		snprintf(why, whylen, "%s was built without CUDA", who);
		return RDAG_ENOCUDA;
	}
	if (!s->cuda) {
		snprintf(why, whylen, "%s has no CUDA driver", who);
		return RDAG_ENOCUDA_DRIVER;
	}
	snprintf(why, whylen, "%s has no GPU device", who);
	return RDAG_ENOGPU;
}

static int side_has_gpu(const struct gpu_side_caps *s)
{
	return s->built && s->cuda && s->ndevices > 0;
}

int gpu_transport_select(enum gpu_transport want, const struct gpu_caps *caps,
			 enum gpu_transport *out, char *why, size_t whylen)
{
	const struct gpu_side_caps *l, *p;
	char tmp[1];
	int gdr, nccl;

	if (!why || !whylen) {
		why = tmp;
		whylen = sizeof(tmp);
	}
	why[0] = '\0';
	if (!caps || !out) {
		snprintf(why, whylen, "gpu_transport_select without caps or output");
		return err_set(RDAG_EINVAL, "gpu: %s", why);
	}
	l = &caps->local;
	p = &caps->peer;
	/* Every GPU path needs a device here: the gradient lives (or lands) on it. */
	if (!side_has_gpu(l)) {
		int rc = side_missing(l, "this worker", why, whylen);

		return err_set(rc, "gpu: RDAG_GPU_TRANSPORT=%s: %s", gpu_transport_name(want), why);
	}
	gdr = l->nic_device_mem && p->nic_device_mem;
	nccl = l->nccl && p->nccl && side_has_gpu(p);
	switch (want) {
	case GPU_TRANSPORT_AUTO:
		if (gdr) {
			*out = GPU_TRANSPORT_GDR;
			snprintf(why, whylen, "gdr: both fabrics register device memory");
		} else if (nccl) {
			*out = GPU_TRANSPORT_NCCL;
			snprintf(why, whylen, "nccl: %s cannot register device memory; NCCL and a GPU "
					      "on both sides",
				 l->nic_device_mem ? "the peer's fabric" : "this fabric");
		} else {
			*out = GPU_TRANSPORT_HOST;
			snprintf(why, whylen, "host staging: %s cannot register device memory and %s",
				 l->nic_device_mem ? "the peer's fabric" : "this fabric",
				 !l->nccl ? "NCCL is missing here"
				 : !side_has_gpu(p) ? "the peer has no GPU"
						    : "NCCL is missing on the peer");
		}
		return 0;
	case GPU_TRANSPORT_GDR:
		if (!gdr) {
			snprintf(why, whylen, "gdr forced, but %s cannot register device memory "
					      "(no dma-buf, peer-memory module or FI_HMEM)",
				 !l->nic_device_mem ? "this worker's fabric" : "the peer's fabric");
			return err_set(RDAG_ENOSYS, "gpu: %s", why);
		}
		*out = GPU_TRANSPORT_GDR;
		snprintf(why, whylen, "gdr (forced): both fabrics register device memory");
		return 0;
	case GPU_TRANSPORT_NCCL:
		if (!nccl) {
			int rc = !l->nccl || !p->nccl ? RDAG_ENONCCL : RDAG_ENOGPU;

			snprintf(why, whylen, "nccl forced, but %s",
				 !l->nccl ? "NCCL is missing on this worker"
				 : !p->nccl ? "NCCL is missing on the peer"
					    : "the peer has no GPU");
			return err_set(rc, "gpu: %s", why);
		}
		*out = GPU_TRANSPORT_NCCL;
		snprintf(why, whylen, "nccl (forced): NCCL and a GPU on both sides");
		return 0;
	case GPU_TRANSPORT_HOST:
		*out = GPU_TRANSPORT_HOST;
		snprintf(why, whylen, "host staging (forced)");
		return 0;
	}
	snprintf(why, whylen, "unknown transport %d", (int)want);
	return err_set(RDAG_EINVAL, "gpu: %s", why);
}

enum gpu_reg_method gpu_reg_method_choose(int dmabuf_ok, int peermem_ok)
{
	if (dmabuf_ok)
		return GPU_REG_DMABUF;
	if (peermem_ok)
		return GPU_REG_PEERMEM;
	return GPU_REG_NONE;
}

const char *gpu_reg_method_name(enum gpu_reg_method m)
{
	switch (m) {
	case GPU_REG_NONE: return "none";
	case GPU_REG_DMABUF: return "dmabuf";
	case GPU_REG_PEERMEM: return "peermem";
	}
	return "?";
}

const char *gpu_peermem_module(const char *sysfs_root)
{
	static const char *const mods[] = {"nvidia_peermem", "nv_peer_mem"};
	char path[512];
	struct stat st;

	if (!sysfs_root)
		sysfs_root = "/sys";
	for (size_t i = 0; i < sizeof(mods) / sizeof(mods[0]); i++) {
		snprintf(path, sizeof(path), "%s/module/%s", sysfs_root, mods[i]);
		if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
			return mods[i];
	}
	return NULL;
}
