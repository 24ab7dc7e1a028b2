/* Fabric core: options from the environment, provider selection (auto|ofi|verbs), fab_open. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "fabric/fabric.h"
#include "util/err.h"
#include "util/log.h"

/*
 * The verbs provider is written in parallel with this file. When its sources are part of the
 * build, fabric/CMakeLists.txt defines RDAG_FAB_HAVE_VERBS and we take a strong reference (which
 * also pulls it out of the static library). Otherwise the weak reference resolves to NULL and
 * selection reports that this build has no verbs provider.
 */
#ifndef RDAG_FAB_HAVE_VERBS
extern const struct fab_ops fab_verbs_ops __attribute__((weak));
#endif

static const struct fab_ops *verbs_ops(void)
{
	const struct fab_ops *ops = &fab_verbs_ops;

	return ops; /* NULL when the weak reference is unresolved */
}

int fab_op_nosys(void)
{
	return err_set(RDAG_ENOSYS, "operation not supported by this fabric provider");
}

static const char *env_str(const char *name)
{
	const char *v = getenv(name);

	return v && *v ? v : NULL;
}

void fab_opts_from_env(struct fab_open_opts *opts)
{
	const char *v;

	memset(opts, 0, sizeof(*opts));
	opts->provider = "auto";
	opts->ib_gid_index = -1;

	v = env_str("RDAG_FABRIC");
	if (v) {
		if (strcasecmp(v, "auto") == 0 || strcasecmp(v, "ofi") == 0 ||
		    strcasecmp(v, "verbs") == 0)
			opts->provider = v;
		else
			LOG_WARN("unknown RDAG_FABRIC=%s (use auto, ofi or verbs), using auto", v);
	}
	opts->ofi_provider = env_str("RDAG_OFI_PROVIDER");
	v = env_str("RDAG_OFI_WAIT");
	if (v) {
		if (strcasecmp(v, "fd") == 0)
			opts->ofi_wait = FAB_WAIT_FD;
		else if (strcasecmp(v, "none") == 0)
			opts->ofi_wait = FAB_WAIT_NONE;
		else if (strcasecmp(v, "auto") != 0)
			LOG_WARN("unknown RDAG_OFI_WAIT=%s (use auto, fd or none), using auto", v);
	}
	opts->ib_device = env_str("RDAG_IB_DEVICE");
	opts->iface_addr = env_str("RDAG_IB_ADDR");
	v = env_str("RDAG_IB_GID_INDEX");
	if (v) {
		char *end;
		long idx = strtol(v, &end, 10);

		if (*end == '\0' && idx >= 0 && idx <= 255)
			opts->ib_gid_index = (int)idx;
		else
			LOG_WARN("bad RDAG_IB_GID_INDEX=%s (use 0..255), using automatic choice", v);
	}
}

static int try_probe(const struct fab_ops *ops, const struct fab_open_opts *opts, char *why,
		     size_t whylen)
{
	why[0] = '\0';
	return ops->probe(opts, why, whylen);
}

int fab_select(const struct fab_open_opts *opts, const struct fab_ops **ops, char *why,
	       size_t whylen)
{
	const char *prov = opts->provider && *opts->provider ? opts->provider : "auto";
	const struct fab_ops *verbs = verbs_ops();
	char vwhy[256], owhy[256];
	int rc;

	*ops = NULL;
	if (whylen)
		why[0] = '\0';

	if (strcasecmp(prov, "ofi") == 0) {
		rc = try_probe(&fab_ofi_ops, opts, owhy, sizeof(owhy));
		if (rc == 0)
			*ops = &fab_ofi_ops;
		snprintf(why, whylen, "ofi (RDAG_FABRIC=ofi): %s", owhy);
		return rc == 0 ? 0 : err_set(rc, "%s", why);
	}
	if (strcasecmp(prov, "verbs") == 0) {
		if (!verbs) {
			snprintf(why, whylen, "verbs (RDAG_FABRIC=verbs): this build has no verbs provider");
			return err_set(RDAG_ENODEV, "%s", why);
		}
		rc = try_probe(verbs, opts, vwhy, sizeof(vwhy));
		if (rc == 0)
			*ops = verbs;
		snprintf(why, whylen, "verbs (RDAG_FABRIC=verbs): %s", vwhy);
		return rc == 0 ? 0 : err_set(rc, "%s", why);
	}
	if (strcasecmp(prov, "auto") != 0) {
		snprintf(why, whylen, "unknown fabric provider '%s' (use auto, ofi or verbs)", prov);
		return err_set(RDAG_EINVAL, "%s", why);
	}

	/* auto: an explicit libfabric provider name means the user wants ofi. */
	if (opts->ofi_provider && *opts->ofi_provider) {
		rc = try_probe(&fab_ofi_ops, opts, owhy, sizeof(owhy));
		if (rc == 0)
			*ops = &fab_ofi_ops;
		snprintf(why, whylen, "ofi (auto, RDAG_OFI_PROVIDER is set): %s", owhy);
		return rc == 0 ? 0 : err_set(rc, "%s", why);
	}
	if (verbs) {
		rc = try_probe(verbs, opts, vwhy, sizeof(vwhy));
		if (rc == 0) {
			*ops = verbs;
			snprintf(why, whylen, "verbs (auto: a usable RDMA device exists): %s", vwhy);
			return 0;
		}
	} else {
		snprintf(vwhy, sizeof(vwhy), "this build has no verbs provider");
	}
	rc = try_probe(&fab_ofi_ops, opts, owhy, sizeof(owhy));
	if (rc == 0) {
		*ops = &fab_ofi_ops;
		snprintf(why, whylen, "ofi (auto: verbs not usable: %s): %s", vwhy, owhy);
		return 0;
	}
	snprintf(why, whylen, "no usable fabric: verbs: %s; ofi: %s", vwhy, owhy);
	return err_set(RDAG_ENODEV, "%s", why);
}

long fab_live_eps_, fab_live_mrs_;

void fab_get_live(struct fab_live *out)
{
	out->eps = __atomic_load_n(&fab_live_eps_, __ATOMIC_RELAXED);
	out->mrs = __atomic_load_n(&fab_live_mrs_, __ATOMIC_RELAXED);
}

int fab_open(const struct fab_open_opts *opts, struct fab_ep **ep)
{
	const struct fab_ops *ops;
	char why[600];
	int rc;

	*ep = NULL;
	rc = fab_select(opts, &ops, why, sizeof(why));
	if (rc)
		return rc; /* fab_select recorded the message */
	LOG_INFO("fabric: %s", why);
	rc = ops->open(opts, ep);
	if (rc == 0) {
		const struct fab_attr *a = fab_attr(*ep);

		__atomic_add_fetch(&fab_live_eps_, 1, __ATOMIC_RELAXED);
		LOG_INFO("fabric: opened %s/%s (caps 0x%x, max msg %zu, max write %zu, inject %zu)",
			 a->provider, a->fabric_name, a->caps, a->max_msg_size, a->max_write_size,
			 a->inject_size);
	}
	return rc;
}
