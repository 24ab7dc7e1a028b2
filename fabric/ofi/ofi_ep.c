/* ofi provider: endpoint life cycle (open, address vector, close), memory registration, wait fd. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <rdma/fi_cm.h>
#include <rdma/fi_errno.h>

#include "fabric/ofi/ofi.h"
#include "gpu/gpu.h"
#include "util/err.h"
#include "util/log.h"

#define OFI_ADDR_MAX 256
#define OFI_CLOSE_DRAIN_MS 500 /* bound on waiting for operations in flight at close */

static struct ofi_ep *to_ofi(struct fab_ep *fep)
{
	return (struct ofi_ep *)fep;
}

static int ofi_probe(const struct fab_open_opts *opts, char *why, size_t whylen)
{
	char prov[64];

	return ofi_choose(opts, prov, sizeof(prov), why, whylen);
}

/* Builds the context pool: tx_count entries for sends/writes, rx_count for receives. */
static int make_pool(struct ofi_ep *ep)
{
	size_t total = ep->tx_count + ep->rx_count;

	ep->reqs = calloc(total, sizeof(*ep->reqs));
	if (!ep->reqs)
		return err_set(RDAG_ENOMEM, "ofi: no memory for %zu operation contexts", total);
	ep->tx_free = NULL;
	ep->rx_free = NULL;
	for (size_t i = total; i-- > 0;) {
		struct ofi_req *r = &ep->reqs[i];

		if (i >= ep->tx_count) {
			r->next = ep->rx_free;
			ep->rx_free = r;
		} else {
			r->next = ep->tx_free;
			ep->tx_free = r;
		}
	}
	return 0;
}

static int close_fid(struct fid *fid, const char *what)
{
	int rc;

	if (!fid)
		return 0;
	rc = fi_close(fid);
	if (rc && rc != -FI_EBUSY)
		LOG_WARN("ofi: closing the %s: %s", what, fi_strerror(-rc));
	return rc;
}

static void ofi_close(struct fab_ep *fep)
{
	struct ofi_ep *ep = to_ofi(fep);
	int busy;

	if (!ep)
		return;
	/*
	 * Let what is in flight finish (receives are cancelled) for a bounded time: some
	 * providers mishandle closing with operations outstanding (verbs;ofi_rxm 1.17 crashed on
	 * in-flight writes, tcp;ofi_rxm keeps its domain busy). Then the endpoint, then what it
	 * was bound to.
	 */
	if (ep->outstanding) {
		size_t before = ep->outstanding, left = ofi_drain(ep, OFI_CLOSE_DRAIN_MS);

		LOG_DEBUG("ofi: close: %zu operations outstanding, %zu after draining", before, left);
	}
	close_fid(ep->ep ? &ep->ep->fid : NULL, "endpoint");
	while (ep->mrs.next && ep->mrs.next != &ep->mrs) {
		struct ofi_mr_node *n = ep->mrs.next;

		LOG_DEBUG("ofi: closing a registration the caller did not deregister");
		n->prev->next = n->next;
		n->next->prev = n->prev;
		close_fid(&n->mr->fid, "memory registration");
		free(n);
	}
	close_fid(ep->cq ? &ep->cq->fid : NULL, "completion queue");
	close_fid(ep->av ? &ep->av->fid : NULL, "address vector");
	busy = close_fid(ep->domain ? &ep->domain->fid : NULL, "domain") == -FI_EBUSY;
	busy |= close_fid(ep->fabric ? &ep->fabric->fid : NULL, "fabric") == -FI_EBUSY;
	if (busy && ep->outstanding)
		/*
		 * tcp;ofi_rxm 1.17 keeps the connection of a rendezvous still in flight, and with it
		 * its domain; libfabric still references (and frees at exit) what it keeps.
		 */
		LOG_INFO("ofi: %s kept its domain busy after closing an endpoint with %zu operations "
			 "in flight; libfabric releases it at exit",
			 ep->attr.fabric_name, ep->outstanding);
	else if (busy)
		LOG_WARN("ofi: %s: domain or fabric still busy after closing the endpoint",
			 ep->attr.fabric_name);
	if (ep->info)
		fi_freeinfo(ep->info);
	free(ep->peers);
	free(ep->rev);
	free(ep->reqs);
	free(ep);
}

/*
 * Whether to give the CQ a wait fd: never where the provider's fd does not wake (shm); else as
 * RDAG_OFI_WAIT says, auto meaning "unless the caller only busy-polls". Without a wait object
 * tcp;ofi_rxm's polls skip the epoll pass libfabric makes over its sockets on every read of a
 * waitable CQ (about 1 us per message here, docs/perf.md); callers that block then nap
 * (FAB_CAP_WAIT_FD is not advertised).
 */
static int want_wait_fd(const struct ofi_ep *ep, const struct fab_open_opts *opts)
{
	if (!ofi_wait_fd_usable(ep->info))
		return 0;
	switch (opts->ofi_wait) {
	case FAB_WAIT_FD: return 1;
	case FAB_WAIT_NONE:
		LOG_INFO("ofi: %s: CQ without a wait object (RDAG_OFI_WAIT=none): no wait fd",
			 ep->attr.fabric_name);
		return 0;
	default:
		if (!opts->poll_only)
			return 1;
		LOG_INFO("ofi: %s: CQ without a wait object (RDAG_OFI_WAIT=auto and the caller "
			 "busy-polls): no wait fd",
			 ep->attr.fabric_name);
		return 0;
	}
}

/* Opens the CQ, with a wait fd when the provider's fd is worth blocking on and wanted. */
static int open_cq(struct ofi_ep *ep, const struct fab_open_opts *opts)
{
	struct fi_cq_attr cq_attr = {
		.format = FI_CQ_FORMAT_DATA,
		/* Our pools bound local completions; remote-write data needs room as well. */
		.size = ep->tx_count + 2 * ep->rx_count,
		.wait_obj = FI_WAIT_NONE,
	};
	int rc;

	ep->wait_fd = -1;
	if (want_wait_fd(ep, opts)) {
		cq_attr.wait_obj = FI_WAIT_FD;
		rc = fi_cq_open(ep->domain, &cq_attr, &ep->cq, NULL);
		if (rc == 0) {
			int fd = -1;

			rc = fi_control(&ep->cq->fid, FI_GETWAIT, &fd);
			if (rc == 0 && fd >= 0) {
				ep->wait_fd = fd;
				return 0;
			}
			LOG_INFO("ofi: %s: no wait fd from the CQ (%s); blocking waits unsupported",
				 ep->attr.fabric_name, fi_strerror(-rc));
			close_fid(&ep->cq->fid, "completion queue");
			ep->cq = NULL;
		} else {
			LOG_INFO("ofi: %s: CQ with FI_WAIT_FD refused (%s); blocking waits unsupported",
				 ep->attr.fabric_name, fi_strerror(-rc));
		}
		cq_attr.wait_obj = FI_WAIT_NONE;
	}
	rc = fi_cq_open(ep->domain, &cq_attr, &ep->cq, NULL);
	if (rc)
		return err_set(ofi_status(-rc), "ofi: %s: fi_cq_open: %s", ep->attr.fabric_name,
			       fi_strerror(-rc));
	return 0;
}

/*
 * ofi_rxm 1.17 over verbs crashes (SIGSEGV inside fi_writemsg) when a write is posted while
 * many mid-size sends are in flight with its SAR protocol (measured in the Soft-RoCE VM: 31
 * sends of 64 KiB, then a write). Sending those by rendezvous instead avoids it. rxm reads the
 * limit when the endpoint is created, so it is set (unless the user did) just before.
 */
/*
 * libfabric's shm provider names an endpoint's shared-memory region after the process id
 * (/dev/shm/<pid>:<n>:<n>) and creates it exclusively in fi_enable. A process killed with SIGKILL
 * leaves its region behind, and a later process that is given the same pid then fails with
 * EBUSY. A region named after our own pid that we have not enabled yet cannot belong to a live
 * process: it is removed (logged) before fi_enable. Returns 1 if it removed one.
 */
static int remove_stale_shm(struct fid_ep *ep, const char *prov)
{
	char name[256], path[300], mine[32];
	size_t len = sizeof(name) - 1;
	const char *base;

	if (strcmp(prov, "shm") != 0)
		return 0;
	if (fi_getname(&ep->fid, name, &len) != 0)
		return 0;
	name[len < sizeof(name) ? len : sizeof(name) - 1] = 0;
	base = strrchr(name, '/');
	base = base ? base + 1 : name;
	snprintf(mine, sizeof(mine), "%d:", (int)getpid());
	if (strncmp(base, mine, strlen(mine)) != 0 || strchr(base, '/'))
		return 0;
	snprintf(path, sizeof(path), "/dev/shm/%s", base);
	if (unlink(path) != 0)
		return 0;
	LOG_WARN("ofi: shm: removed %s, left behind by a killed process that had our pid", path);
	return 1;
}

static void work_around_rxm_sar(const char *prov)
{
	const char *cur = getenv("FI_OFI_RXM_SAR_LIMIT");

	if (strncmp(prov, "verbs;ofi_rxm", 13) != 0 || (cur && *cur))
		return;
	setenv("FI_OFI_RXM_SAR_LIMIT", "16384", 0);
	LOG_INFO("ofi: FI_OFI_RXM_SAR_LIMIT=16384 (messages above the eager size go by rendezvous: "
		 "ofi_rxm 1.17's SAR path crashes over verbs)");
}

static void fill_attr(struct ofi_ep *ep)
{
	const struct fi_info *i = ep->info;
	uint32_t caps = ofi_caps_of(i);

	if (ep->wait_fd < 0)
		caps &= ~(uint32_t)FAB_CAP_WAIT_FD;
	ep->attr.provider = "ofi";
	snprintf(ep->attr.fabric_name, sizeof(ep->attr.fabric_name), "%s", i->fabric_attr->prov_name);
	ep->attr.caps = caps;
	ep->attr.max_msg_size = i->ep_attr->max_msg_size > SIZE_MAX ? SIZE_MAX
								     : (size_t)i->ep_attr->max_msg_size;
	/* libfabric has one limit for messages and RMA transfers on an endpoint. */
	ep->attr.max_write_size = ep->attr.max_msg_size;
	ep->attr.inject_size = i->tx_attr->inject_size;
	ep->attr.max_recv_posted = ep->rx_count;
}

static int ofi_open(const struct fab_open_opts *opts, struct fab_ep **out)
{
	struct ofi_ep *ep;
	struct fi_av_attr av_attr = {.type = FI_AV_UNSPEC};
	struct fi_info *list = NULL;
	char prov[64], why[600];
	char name[OFI_ADDR_MAX];
	size_t namelen = sizeof(name);
	int rc;

	*out = NULL;
	ep = calloc(1, sizeof(*ep));
	if (!ep)
		return err_set(RDAG_ENOMEM, "ofi: no memory for an endpoint");
	ep->base.ops = &fab_ofi_ops;
	ep->mrs.next = ep->mrs.prev = &ep->mrs;
	ep->wait_fd = -1;
	ep->rank = opts->rank;

	rc = ofi_choose(opts, prov, sizeof(prov), why, sizeof(why));
	if (rc) {
		rc = err_set(rc, "ofi: %s", why);
		goto fail;
	}
	rc = ofi_getinfo(opts, prov, &list, why, sizeof(why));
	if (rc) {
		rc = err_set(rc, "ofi: %s", why);
		goto fail;
	}
	/* The first usable entry (libfabric orders them best first); the rest are dropped. */
	ep->info = list;
	if (list->next) {
		fi_freeinfo(list->next);
		list->next = NULL;
	}
	snprintf(ep->attr.fabric_name, sizeof(ep->attr.fabric_name), "%s",
		 ep->info->fabric_attr->prov_name);
	ep->mr_mode = (uint64_t)ep->info->domain_attr->mr_mode;
	ep->need_desc = (ep->mr_mode & FI_MR_LOCAL) != 0;
	ep->use_source = (ep->info->caps & FI_SOURCE) != 0;
	ep->tx_count = ep->info->tx_attr->size ? ep->info->tx_attr->size : 256;
	ep->rx_count = ep->info->rx_attr->size ? ep->info->rx_attr->size : 256;
	/*
	 * Without send-after-write ordering the core must be able to wait for a write to land
	 * before telling the target: those providers complete writes at delivery
	 * (FAB_CAP_WRITE_DELIVERED). Where SAW holds, delivery completion would only add an
	 * acknowledgement per write (it halved tcp;ofi_rxm's 1 MiB write bandwidth here).
	 */
	ep->write_flags = FI_COMPLETION;
	if (ofi_caps_of(ep->info) & FAB_CAP_WRITE_DELIVERED)
		ep->write_flags |= FI_DELIVERY_COMPLETE;
	ep->next_key = 1;

	rc = make_pool(ep);
	if (rc)
		goto fail;
	rc = fi_fabric(ep->info->fabric_attr, &ep->fabric, NULL);
	if (rc) {
		rc = err_set(ofi_status(-rc), "ofi: %s: fi_fabric: %s", prov, fi_strerror(-rc));
		goto fail;
	}
	rc = fi_domain(ep->fabric, ep->info, &ep->domain, NULL);
	if (rc) {
		rc = err_set(ofi_status(-rc), "ofi: %s: fi_domain: %s", prov, fi_strerror(-rc));
		goto fail;
	}
	if (opts->world_size)
		av_attr.count = opts->world_size;
	rc = fi_av_open(ep->domain, &av_attr, &ep->av, NULL);
	if (rc) {
		rc = err_set(ofi_status(-rc), "ofi: %s: fi_av_open: %s", prov, fi_strerror(-rc));
		goto fail;
	}
	rc = open_cq(ep, opts);
	if (rc)
		goto fail;
	work_around_rxm_sar(prov);
	rc = fi_endpoint(ep->domain, ep->info, &ep->ep, NULL);
	if (rc) {
		rc = err_set(ofi_status(-rc), "ofi: %s: fi_endpoint: %s", prov, fi_strerror(-rc));
		goto fail;
	}
	rc = fi_ep_bind(ep->ep, &ep->av->fid, 0);
	if (rc == 0)
		rc = fi_ep_bind(ep->ep, &ep->cq->fid, FI_TRANSMIT | FI_RECV);
	if (rc) {
		rc = err_set(ofi_status(-rc), "ofi: %s: fi_ep_bind: %s", prov, fi_strerror(-rc));
		goto fail;
	}
	remove_stale_shm(ep->ep, prov);
	rc = fi_enable(ep->ep);
	if (rc) {
		rc = err_set(ofi_status(-rc), "ofi: %s: fi_enable: %s%s", prov, fi_strerror(-rc),
			     strstr(prov, "ofi_rxm") && !getenv("FI_UNIVERSE_SIZE")
				     ? " (ofi_rxm sizes its CQs from FI_UNIVERSE_SIZE: try a smaller value)"
				     : "");
		goto fail;
	}
	rc = fi_getname(&ep->ep->fid, name, &namelen);
	if (rc) {
		rc = err_set(ofi_status(-rc), "ofi: %s: fi_getname: %s", prov, fi_strerror(-rc));
		goto fail;
	}
	fill_attr(ep);
	ep->attr.addr_len = namelen;
	if (log_level() >= RDAG_LOG_DEBUG) {
		char mrs[128], modes[128], prog[64];

		fi_tostr_r(mrs, sizeof(mrs), &ep->info->domain_attr->mr_mode, FI_TYPE_MR_MODE);
		fi_tostr_r(modes, sizeof(modes), &ep->info->mode, FI_TYPE_MODE);
		fi_tostr_r(prog, sizeof(prog), &ep->info->domain_attr->data_progress,
			   FI_TYPE_PROGRESS);
		LOG_DEBUG("ofi: opened %s (domain %s, mr_mode [%s], mode [%s], tx %zu, rx %zu, "
			  "inject %zu, data progress %s)",
			  prov, ep->info->domain_attr->name, mrs, modes, ep->tx_count, ep->rx_count,
			  ep->attr.inject_size, prog);
	}
	*out = &ep->base;
	return 0;
fail:
	ofi_close(&ep->base);
	return rc;
}

static int ofi_name(struct fab_ep *fep, void *addr, size_t *len)
{
	struct ofi_ep *ep = to_ofi(fep);
	size_t n = *len;
	int rc = fi_getname(&ep->ep->fid, addr, &n);

	*len = n;
	if (rc == -FI_ETOOSMALL)
		return err_set(RDAG_ENOSPC, "ofi: the endpoint address needs %zu bytes", n);
	if (rc)
		return err_set(ofi_status(-rc), "ofi: fi_getname: %s", fi_strerror(-rc));
	return 0;
}

static int cmp_rev(const void *a, const void *b)
{
	const struct ofi_rev *x = a, *y = b;

	return x->addr < y->addr ? -1 : x->addr > y->addr;
}

static int ofi_connect(struct fab_ep *fep, uint32_t npeers, const void *const *addrs,
		       const size_t *lens, int timeout_ms)
{
	struct ofi_ep *ep = to_ofi(fep);
	fi_addr_t *peers = ep->peers;
	struct ofi_rev *rev = NULL;
	uint32_t nrev = 0;
	int rc = 0;

	(void)timeout_ms; /* RDM: inserting an address is local; connections are made on demand */
	if (npeers > ep->npeers) {
		peers = realloc(ep->peers, npeers * sizeof(*peers));
		if (!peers)
			return err_set(RDAG_ENOMEM, "ofi: no memory for %u peers", npeers);
		for (uint32_t i = ep->npeers; i < npeers; i++)
			peers[i] = FI_ADDR_NOTAVAIL;
		ep->peers = peers;
		ep->npeers = npeers;
	}
	/* Entries already inserted stay; NULL or empty ones are peers not known yet. */
	for (uint32_t i = 0; i < npeers; i++) {
		fi_addr_t fa = FI_ADDR_NOTAVAIL;
		int n;

		if (i == ep->rank || !addrs[i] || !lens[i] || peers[i] != FI_ADDR_NOTAVAIL)
			continue;
		if (lens[i] > OFI_ADDR_MAX) {
			rc = err_set(RDAG_EINVAL, "ofi: address of peer %u is %zu bytes (max %d)", i,
				     lens[i], OFI_ADDR_MAX);
			goto out;
		}
		n = fi_av_insert(ep->av, addrs[i], 1, &fa, 0, NULL);
		if (n != 1) {
			rc = err_set(n < 0 ? ofi_status(-n) : RDAG_EINVAL,
				     "ofi: %s: fi_av_insert(peer %u, %zu bytes): %s",
				     ep->attr.fabric_name, i, lens[i],
				     n < 0 ? fi_strerror(-n) : "address rejected");
			goto out;
		}
		peers[i] = fa;
	}
	/* Reverse map for receive completions that name their source. */
	if (ep->use_source) {
		rev = malloc((size_t)npeers * sizeof(*rev) + 1);
		if (!rev) {
			rc = err_set(RDAG_ENOMEM, "ofi: no memory for the peer map");
			goto out;
		}
		for (uint32_t i = 0; i < ep->npeers; i++) {
			if (peers[i] != FI_ADDR_NOTAVAIL)
				rev[nrev++] = (struct ofi_rev){.addr = peers[i], .rank = i};
		}
		qsort(rev, nrev, sizeof(*rev), cmp_rev);
		free(ep->rev);
		ep->rev = rev;
		ep->nrev = nrev;
	}
out:
	return rc;
}

/* Whether CUDA memory at addr on device can be registered here: 0, or why not. */
static int ofi_hmem_check(struct ofi_ep *ep, void *addr, int device)
{
	struct gpu_ptr_info pi;
	int rc;

	if (!(ep->info->caps & FI_HMEM))
		return err_set(RDAG_ENOSYS, "ofi: provider %s has no FI_HMEM: it cannot register CUDA "
					    "memory%s",
			       ep->attr.fabric_name,
			       ofi_want_hmem() ? "" : " (set RDAG_OFI_HMEM=1 to ask libfabric for it)");
	rc = gpu_init();
	if (rc) {
		char why[256];

		snprintf(why, sizeof(why), "%s", rdag_last_error());
		return err_set(rc, "ofi: %s: registering CUDA memory: %s", ep->attr.fabric_name, why);
	}
	rc = gpu_ptr_classify(addr, &pi);
	if (rc)
		return rc;
	if (pi.type != GPU_MEM_DEVICE || pi.device != device)
		return err_set(RDAG_EINVAL, "ofi: %p is not device memory of GPU %d", addr, device);
	return 0;
}

static int ofi_mr_reg(struct fab_ep *fep, void *addr, size_t len, uint32_t access,
		      enum fab_mem_kind kind, int device, struct fab_mr *mr)
{
	struct ofi_ep *ep = to_ofi(fep);
	struct ofi_mr_node *node = NULL;
	struct iovec iov = {.iov_base = addr, .iov_len = len};
	struct fi_mr_attr attr = {
		.mr_iov = &iov,
		.iov_count = 1,
		.iface = FI_HMEM_SYSTEM,
	};
	uint64_t key;
	int rc;

	memset(mr, 0, sizeof(*mr));
	if (!addr || !len)
		return err_set(RDAG_EINVAL, "ofi: cannot register an empty range");
	if (kind == FAB_MEM_CUDA) {
		rc = ofi_hmem_check(ep, addr, device);
		if (rc)
			return rc;
		attr.iface = FI_HMEM_CUDA;
		attr.device.cuda = device;
	} else if (kind != FAB_MEM_HOST) {
		return err_set(RDAG_EINVAL, "ofi: unknown memory kind %d", (int)kind);
	}
	if (access & FAB_ACCESS_LOCAL)
		attr.access |= FI_SEND | FI_RECV | FI_WRITE;
	if (access & FAB_ACCESS_REMOTE_WRITE)
		attr.access |= FI_REMOTE_WRITE;
	if (access & FAB_ACCESS_REMOTE_READ)
		attr.access |= FI_REMOTE_READ;
	if (!(ep->mr_mode & FI_MR_PROV_KEY))
		attr.requested_key = ep->next_key++;
	node = calloc(1, sizeof(*node));
	if (!node)
		return err_set(RDAG_ENOMEM, "ofi: no memory for a registration");
	rc = fi_mr_regattr(ep->domain, &attr, 0, &node->mr);
	if (rc) {
		node->mr = NULL;
		rc = err_set(ofi_status(-rc), "ofi: %s: fi_mr_regattr(%p, %zu bytes): %s",
			     ep->attr.fabric_name, addr, len, fi_strerror(-rc));
		goto fail;
	}
	if (ep->mr_mode & FI_MR_ENDPOINT) {
		rc = fi_mr_bind(node->mr, &ep->ep->fid, 0);
		if (rc == 0)
			rc = fi_mr_enable(node->mr);
		if (rc) {
			rc = err_set(ofi_status(-rc), "ofi: %s: binding a registration to the endpoint "
						      "(FI_MR_ENDPOINT): %s",
				     ep->attr.fabric_name, fi_strerror(-rc));
			goto fail;
		}
	}
	key = fi_mr_key(node->mr);
	if (key == FI_KEY_NOTAVAIL) {
		rc = err_set(RDAG_ENOSYS, "ofi: %s: the registration has no 64-bit key (FI_MR_RAW)",
			     ep->attr.fabric_name);
		goto fail;
	}
	mr->desc = fi_mr_desc(node->mr);
	mr->rkey = key;
	mr->addr = addr;
	mr->len = len;
	mr->remote_base = (ep->mr_mode & FI_MR_VIRT_ADDR) ? (uint64_t)(uintptr_t)addr : 0;
	mr->prov = node;
	node->next = ep->mrs.next;
	node->prev = &ep->mrs;
	ep->mrs.next->prev = node;
	ep->mrs.next = node;
	return 0;
fail:
	if (node->mr)
		close_fid(&node->mr->fid, "memory registration");
	free(node);
	return rc;
}

static int ofi_mr_dereg(struct fab_ep *fep, struct fab_mr *mr)
{
	struct ofi_mr_node *node = mr->prov;
	int rc;

	(void)fep;
	if (!node)
		return err_set(RDAG_EINVAL, "ofi: deregistering a registration that is not one");
	rc = fi_close(&node->mr->fid);
	if (rc)
		return err_set(ofi_status(-rc), "ofi: closing a registration: %s", fi_strerror(-rc));
	node->prev->next = node->next;
	node->next->prev = node->prev;
	free(node);
	memset(mr, 0, sizeof(*mr));
	return 0;
}

static int ofi_wait_fd(struct fab_ep *fep)
{
	struct ofi_ep *ep = to_ofi(fep);

	if (ep->wait_fd < 0)
		return err_set(RDAG_ENOSYS, "ofi: %s offers no usable wait fd: poll instead",
			       ep->attr.fabric_name);
	return ep->wait_fd;
}

static int ofi_arm(struct fab_ep *fep)
{
	struct ofi_ep *ep = to_ofi(fep);
	struct fid *fids[1];
	int rc;

	if (ep->wait_fd < 0)
		return err_set(RDAG_ENOSYS, "ofi: %s offers no usable wait fd: poll instead",
			       ep->attr.fabric_name);
	fids[0] = &ep->cq->fid;
	rc = fi_trywait(ep->fabric, fids, 1);
	if (rc == 0)
		return 0;
	if (rc == -FI_EAGAIN)
		return RDAG_EAGAIN;
	return err_set(ofi_status(-rc), "ofi: fi_trywait: %s", fi_strerror(-rc));
}

static const struct fab_attr *ofi_attr(struct fab_ep *fep)
{
	return &to_ofi(fep)->attr;
}

const struct fab_ops fab_ofi_ops = {
	.size = sizeof(struct fab_ops),
	.name = "ofi",
	.probe = ofi_probe,
	.open = ofi_open,
	.close = ofi_close,
	.name_get = ofi_name,
	.connect = ofi_connect,
	.mr_reg = ofi_mr_reg,
	.mr_dereg = ofi_mr_dereg,
	.post_recv = ofi_post_recv,
	.send = ofi_send,
	.write = ofi_write,
	.poll = ofi_poll,
	.wait_fd = ofi_wait_fd,
	.arm = ofi_arm,
	.attr = ofi_attr,
	.inject = ofi_inject,
};
