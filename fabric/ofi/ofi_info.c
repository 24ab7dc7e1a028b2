/* ofi provider: hints, capability checks with explanations, and automatic libfabric provider choice. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <rdma/fi_errno.h>

#include "fabric/ofi/ofi.h"
#include "util/err.h"
#include "util/log.h"

/*
 * Preference order when RDAG_OFI_PROVIDER is not set: hardware providers first, then the
 * portable TCP one. shm only sees peers on this host, so it leads only when opts->local_only.
 */
static const char *const pref_remote[] = {
	"verbs;ofi_rxm", "efa", "psm3", "cxi", "opx", "psm2", "tcp;ofi_rxm", "net", NULL,
};
static const char *const pref_local[] = {
	"shm", "verbs;ofi_rxm", "efa", "psm3", "cxi", "opx", "psm2", "tcp;ofi_rxm", "net", NULL,
};

const char *const *ofi_preference(int local_only)
{
	return local_only ? pref_local : pref_remote;
}

void ofi_set_universe(uint32_t world_size)
{
	char buf[16];
	const char *cur = getenv("FI_UNIVERSE_SIZE");

	/*
	 * ofi_rxm sizes its CQs from FI_UNIVERSE_SIZE (default 256), which overflows small devices
	 * such as Soft-RoCE (max_cqe 32767). The job's size is the right value when known.
	 */
	if (world_size == 0 || (cur && *cur))
		return;
	snprintf(buf, sizeof(buf), "%u", world_size < 2 ? 2u : world_size);
	setenv("FI_UNIVERSE_SIZE", buf, 0);
	LOG_DEBUG("ofi: FI_UNIVERSE_SIZE=%s (from the world size)", buf);
}

struct fi_info *ofi_hints(const struct fab_open_opts *opts, const char *prov, int with_raw)
{
	struct fi_info *h = fi_allocinfo();

	if (!h)
		return NULL;
	h->ep_attr->type = FI_EP_RDM;
	h->caps = OFI_CAPS;
	h->mode = OFI_MODES;
	h->domain_attr->mr_mode = OFI_MR_MODES | (with_raw ? FI_MR_RAW : 0);
	/* Device memory (gpu/): only on request, as it narrows the providers to those with FI_HMEM. */
	if (ofi_want_hmem()) {
		h->caps |= FI_HMEM;
		h->domain_attr->mr_mode |= FI_MR_HMEM;
	}
	/* One endpoint per domain, driven by one thread at a time: no locks needed inside. */
	h->domain_attr->threading = FI_THREAD_DOMAIN;
	h->domain_attr->cq_data_size = 4;
	/* Control messages between two workers must arrive in the order they were sent. */
	h->tx_attr->msg_order = FI_ORDER_SAS;
	h->rx_attr->msg_order = FI_ORDER_SAS;
	if (opts) {
		h->tx_attr->size = opts->tx_depth;
		h->rx_attr->size = opts->rx_depth;
	}
	if (prov && *prov) {
		h->fabric_attr->prov_name = strdup(prov);
		if (!h->fabric_attr->prov_name) {
			fi_freeinfo(h);
			return NULL;
		}
	}
	return h;
}

/* Appends ", item" (or "item") to why. */
static void add_why(char *why, size_t whylen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void add_why(char *why, size_t whylen, const char *fmt, ...)
{
	size_t n = strlen(why);
	va_list ap;

	if (n + 3 >= whylen)
		return;
	if (n) {
		memcpy(why + n, ", ", 3);
		n += 2;
	}
	va_start(ap, fmt);
	vsnprintf(why + n, whylen - n, fmt, ap);
	va_end(ap);
}

int ofi_check_info(const struct fi_info *info, char *why, size_t whylen)
{
	const char *name = info->fabric_attr && info->fabric_attr->prov_name
				   ? info->fabric_attr->prov_name
				   : "?";
	uint64_t mr_mode = info->domain_attr ? (uint64_t)info->domain_attr->mr_mode : 0;
	uint64_t bad_mode = info->mode & ~(uint64_t)OFI_MODES;
	char extra[128];

	if (whylen)
		why[0] = '\0';
	if (!info->ep_attr || info->ep_attr->type != FI_EP_RDM) {
		if (info->ep_attr && info->ep_attr->type == FI_EP_MSG && !strchr(name, ';'))
			add_why(why, whylen, "no FI_EP_RDM endpoints (connected MSG only: try '%s;ofi_rxm')",
				name);
		else if (info->ep_attr && info->ep_attr->type == FI_EP_DGRAM && !strchr(name, ';'))
			add_why(why, whylen, "no FI_EP_RDM endpoints (DGRAM only: try '%s;ofi_rxd')",
				name);
		else
			add_why(why, whylen, "no FI_EP_RDM endpoints");
	}
	if (!(info->caps & FI_MSG))
		add_why(why, whylen, "no two-sided messages (FI_MSG)");
	if (!(info->caps & FI_RMA) || !(info->caps & FI_WRITE) || !(info->caps & FI_REMOTE_WRITE))
		add_why(why, whylen, "no RDMA write (FI_RMA with FI_WRITE and FI_REMOTE_WRITE)");
	if (!info->tx_attr || !info->rx_attr || !(info->tx_attr->msg_order & FI_ORDER_SAS) ||
	    !(info->rx_attr->msg_order & FI_ORDER_SAS))
		add_why(why, whylen, "no send-after-send ordering (FI_ORDER_SAS)");
	if (!info->domain_attr || info->domain_attr->cq_data_size < 4) {
		snprintf(extra, sizeof(extra), "%zu",
			 info->domain_attr ? info->domain_attr->cq_data_size : (size_t)0);
		add_why(why, whylen, "no remote CQ data for write-with-immediate (cq_data_size %s < 4)",
			extra);
	}
	if (mr_mode & FI_MR_RAW)
		add_why(why, whylen, "needs FI_MR_RAW (raw keys), which rdag does not support");
	if (mr_mode & ~(uint64_t)(OFI_MR_MODES | FI_MR_RAW | ((info->caps & FI_HMEM) ? FI_MR_HMEM : 0))) {
		uint64_t rest = mr_mode & ~(uint64_t)(OFI_MR_MODES | FI_MR_RAW |
						      ((info->caps & FI_HMEM) ? FI_MR_HMEM : 0));
		int r = (int)rest;

		fi_tostr_r(extra, sizeof(extra), &r, FI_TYPE_MR_MODE);
		add_why(why, whylen, "needs MR mode bits rdag does not honour (%s)", extra);
	}
	if (bad_mode) {
		fi_tostr_r(extra, sizeof(extra), &bad_mode, FI_TYPE_MODE);
		add_why(why, whylen, "needs mode bits rdag does not satisfy (%s)", extra);
	}
	return why[0] ? RDAG_ENODEV : 0;
}

/* Explains why prov gave no usable info with rdag's hints. */
static void diagnose(const char *prov, char *why, size_t whylen)
{
	struct fi_info *h = fi_allocinfo(), *list = NULL;
	const struct fi_info *best = NULL;
	int rc;

	if (!h) {
		snprintf(why, whylen, "out of memory");
		return;
	}
	/* Ask for anything the provider has: every mode and MR mode bit accepted. */
	h->mode = ~0ULL;
	h->domain_attr->mr_mode = ~0 & ~(FI_MR_BASIC | FI_MR_SCALABLE);
	h->fabric_attr->prov_name = strdup(prov);
	rc = h->fabric_attr->prov_name ? fi_getinfo(OFI_API_VERSION, NULL, NULL, 0, h, &list)
				       : -FI_ENOMEM;
	if (rc || !list) {
		snprintf(why, whylen,
			 "libfabric has no provider '%s' usable here (%s; 'fi_info -l' lists the "
			 "built-in ones, 'rdag_info' the usable ones)",
			 prov, fi_strerror(-rc));
		goto out;
	}
	/* Prefer an RDM entry to explain from; else the first one. */
	for (const struct fi_info *i = list; i; i = i->next) {
		if (i->ep_attr && i->ep_attr->type == FI_EP_RDM) {
			best = i;
			break;
		}
	}
	if (!best)
		best = list;
	{
		char miss[400];
		int n;

		if (ofi_check_info(best, miss, sizeof(miss)) == 0)
			snprintf(miss, sizeof(miss), "its offers do not match rdag's hints (queue sizes, "
						     "threading or secondary capabilities)");
		n = snprintf(why, whylen, "libfabric provider '%s' lacks what rdag needs: %s", prov,
			     miss);
		(void)n;
	}
out:
	fi_freeinfo(list);
	fi_freeinfo(h);
}

int ofi_getinfo(const struct fab_open_opts *opts, const char *prov, struct fi_info **out,
		char *why, size_t whylen)
{
	struct fi_info *hints = NULL, *list = NULL, *keep = NULL, **tail = &keep;
	char first_why[300] = "";
	int rc;

	*out = NULL;
	ofi_set_universe(opts ? opts->world_size : 0);
	hints = ofi_hints(opts, prov, 0);
	if (!hints) {
		rc = RDAG_ENOMEM;
		snprintf(why, whylen, "out of memory");
		goto out;
	}
	rc = fi_getinfo(OFI_API_VERSION, NULL, NULL, 0, hints, &list);
	if (rc == -FI_ENODATA || (rc == 0 && !list)) {
		struct fi_info *raw = NULL;

		/* A provider needing FI_MR_RAW only shows up when we accept it: say so clearly. */
		fi_freeinfo(hints);
		hints = ofi_hints(opts, prov, 1);
		if (hints && fi_getinfo(OFI_API_VERSION, NULL, NULL, 0, hints, &raw) == 0 && raw) {
			snprintf(why, whylen,
				 "libfabric provider '%s' needs FI_MR_RAW (raw memory keys), which rdag "
				 "does not support",
				 prov && *prov ? prov : raw->fabric_attr->prov_name);
			fi_freeinfo(raw);
		} else if (prov && *prov) {
			diagnose(prov, why, whylen);
		} else {
			snprintf(why, whylen, "no libfabric provider offers what rdag needs");
		}
		rc = RDAG_ENODEV;
		goto out;
	}
	if (rc) {
		snprintf(why, whylen, "fi_getinfo(%s): %s", prov ? prov : "any", fi_strerror(-rc));
		rc = RDAG_ENODEV;
		goto out;
	}
	/* Keep the entries we can use, in libfabric's order. */
	while (list) {
		struct fi_info *i = list;
		char w[300];

		list = i->next;
		i->next = NULL;
		if (ofi_check_info(i, w, sizeof(w)) == 0) {
			*tail = i;
			tail = &i->next;
		} else {
			if (!first_why[0])
				snprintf(first_why, sizeof(first_why), "%s", w);
			fi_freeinfo(i);
		}
	}
	if (!keep) {
		snprintf(why, whylen, "libfabric provider '%s' lacks what rdag needs: %s",
			 prov && *prov ? prov : "any", first_why);
		rc = RDAG_ENODEV;
		goto out;
	}
	snprintf(why, whylen, "libfabric provider '%s' (fabric %s, domain %s)",
		 keep->fabric_attr->prov_name, keep->fabric_attr->name, keep->domain_attr->name);
	*out = keep;
	keep = NULL;
	rc = 0;
out:
	fi_freeinfo(keep);
	fi_freeinfo(list);
	if (hints)
		fi_freeinfo(hints);
	return rc;
}

int ofi_choose(const struct fab_open_opts *opts, char *prov, size_t provlen, char *why,
	       size_t whylen)
{
	const char *const *order = ofi_preference(opts->local_only);
	char w[400], skipped[600] = "";
	struct fi_info *info = NULL;
	int rc;

	if (opts->ofi_provider && *opts->ofi_provider) {
		rc = ofi_getinfo(opts, opts->ofi_provider, &info, w, sizeof(w));
		fi_freeinfo(info);
		snprintf(prov, provlen, "%s", opts->ofi_provider);
		if (rc == 0)
			snprintf(why, whylen, "%s, as RDAG_OFI_PROVIDER asks", w);
		else
			snprintf(why, whylen, "RDAG_OFI_PROVIDER=%s: %s", opts->ofi_provider, w);
		return rc;
	}
	for (const char *const *p = order; *p; p++) {
		rc = ofi_getinfo(opts, *p, &info, w, sizeof(w));
		fi_freeinfo(info);
		info = NULL;
		if (rc == 0) {
			snprintf(prov, provlen, "%s", *p);
			snprintf(why, whylen, "%s: first usable in rdag's order%s%s%s", w,
				 opts->local_only ? " (all peers on this host, so shm leads)" : "",
				 skipped[0] ? "; not usable here: " : "", skipped);
			return 0;
		}
		{
			size_t n = strlen(skipped);

			snprintf(skipped + n, sizeof(skipped) - n, "%s%s", n ? ", " : "", *p);
		}
	}
	if (provlen)
		prov[0] = '\0';
	snprintf(why, whylen, "no libfabric provider offers RDM endpoints with messages, RDMA write "
			      "and remote CQ data here (tried %s)",
		 skipped);
	return RDAG_ENODEV;
}

int ofi_wait_fd_usable(const struct fi_info *info)
{
	const char *name = info->fabric_attr->prov_name;

	/*
	 * With manual progress a CQ's fd only wakes when something in this process moves data.
	 * shm (1.17) moves incoming data only when we call into it, so its fd never wakes for a
	 * peer's message (measured: tests/fabric "wait" scenario); the socket- and verbs-based
	 * providers tie their fds to the sockets / completion channels, so they do wake.
	 */
	if (strncmp(name, "shm", 3) == 0)
		return 0;
	return 1;
}

int ofi_want_hmem(void)
{
	const char *s = getenv("RDAG_OFI_HMEM");

	return s && strcmp(s, "1") == 0;
}

uint32_t ofi_caps_of(const struct fi_info *info)
{
	uint32_t caps = FAB_CAP_WRITE_IMM;

	if (info->caps & FI_HMEM)
		caps |= FAB_CAP_HMEM_CUDA;

	if (info->mode & FI_RX_CQ_DATA)
		caps |= FAB_CAP_IMM_CONSUMES_RECV;
	if (info->caps & FI_SOURCE)
		caps |= FAB_CAP_RECV_SOURCE;
	if (info->tx_attr && info->tx_attr->inject_size > 0)
		caps |= FAB_CAP_INJECT;
	if (ofi_wait_fd_usable(info))
		caps |= FAB_CAP_WAIT_FD;
	if (info->tx_attr && info->rx_attr && (info->tx_attr->msg_order & FI_ORDER_SAW) &&
	    (info->rx_attr->msg_order & FI_ORDER_SAW))
		caps |= FAB_CAP_ORDER_SAW;
	else
		caps |= FAB_CAP_WRITE_DELIVERED; /* writes are posted with FI_DELIVERY_COMPLETE */
	return caps;
}

int ofi_status(int fi_err)
{
	switch (fi_err) {
	case 0: return 0;
	case FI_EAGAIN: return RDAG_EAGAIN;
	case FI_ECANCELED: return RDAG_ECANCELED;
	case FI_ETRUNC:
	case FI_EMSGSIZE:
	case FI_ETOOSMALL: return RDAG_EOVERFLOW;
	case FI_EACCES:
	case FI_EPERM:
	case FI_ENOKEY:
	case FI_EKEYREJECTED: return RDAG_EACCES;
	case FI_EINVAL:
	case FI_EBADFLAGS:
	case FI_EADDRNOTAVAIL: return RDAG_EINVAL;
	case FI_ENOMEM: return RDAG_ENOMEM;
	case FI_ENOSYS:
	case FI_EOPNOTSUPP: return RDAG_ENOSYS;
	case FI_ETIMEDOUT: return RDAG_ETIMEDOUT;
	case FI_ECONNREFUSED:
	case FI_ECONNRESET:
	case FI_ECONNABORTED:
	case FI_ENOTCONN:
	case FI_EHOSTUNREACH:
	case FI_ENETUNREACH:
	case FI_ENETDOWN:
	case FI_EHOSTDOWN:
	case FI_ESHUTDOWN: return RDAG_EPEER_DEAD;
	case FI_ENODATA:
	case FI_ENODEV:
	case FI_ENOENT: return RDAG_ENODEV;
	default: return RDAG_EIO;
	}
}
