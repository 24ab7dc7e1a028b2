/* rdag_info: lists the fabrics rdag can use here (libfabric providers, verbs devices) and what auto picks. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <rdag/rdag.h>

#include "fabric/fabric.h"
#include "fabric/ofi/ofi.h"
#include "gpu/gpu.h"

/*
 * Usage: rdag_info [-p provider] [-j] [-h]
 * Like fi_info and ibv_devinfo, from rdag's point of view: which libfabric providers offer what
 * rdag needs (RDM endpoints, messages, RDMA write, remote CQ data) and with which MR modes,
 * capabilities and limits; which are listed by libfabric but not usable, and why; whether the
 * verbs provider finds a device; and what RDAG_FABRIC=auto would choose, and why; then the GPU
 * side: CUDA build, driver, devices, dma-buf / peer-memory / FI_HMEM registration, NCCL, and
 * what RDAG_GPU_TRANSPORT would choose. With -j, run by a launcher as every rank of a job, each
 * worker opens an agent and prints what it chose with each peer (rdag_peer_info) instead.
 */

static void usage(FILE *f)
{
	fprintf(f, "usage: rdag_info [-p libfabric-provider] [-j] [-h]\n"
		   "  -p NAME  only this libfabric provider (e.g. shm, \"tcp;ofi_rxm\")\n"
		   "  -j       join the job the launcher started (every rank runs rdag_info -j): each\n"
		   "           worker prints, per peer, the peer's handshake offer and the GPU path\n"
		   "           chosen with it (rdag_peer_info)\n"
		   "Environment: RDAG_FABRIC, RDAG_OFI_PROVIDER, RDAG_IB_DEVICE, RDAG_IB_GID_INDEX "
		   "(see docs/env.md).\n");
}

static void print_size(const char *label, uint64_t v)
{
	if (v == UINT64_MAX || v >= (1ULL << 62))
		printf("%s unlimited", label);
	else if (v >= (1ULL << 30) && v % (1ULL << 30) == 0)
		printf("%s %llu GiB", label, (unsigned long long)(v >> 30));
	else if (v >= (1ULL << 20) && v % (1ULL << 20) == 0)
		printf("%s %llu MiB", label, (unsigned long long)(v >> 20));
	else
		printf("%s %llu B", label, (unsigned long long)v);
}

static const char *progress_name(enum fi_progress p)
{
	switch (p) {
	case FI_PROGRESS_AUTO: return "AUTO";
	case FI_PROGRESS_MANUAL: return "MANUAL";
	default: return "unspecified";
	}
}

static void print_caps(uint32_t caps)
{
	static const struct {
		uint32_t bit;
		const char *name;
	} names[] = {
		{FAB_CAP_WRITE_IMM, "write-imm"},
		{FAB_CAP_IMM_CONSUMES_RECV, "imm-consumes-recv"},
		{FAB_CAP_RECV_SOURCE, "recv-source"},
		{FAB_CAP_INJECT, "inject"},
		{FAB_CAP_WAIT_FD, "wait-fd"},
		{FAB_CAP_HMEM_CUDA, "cuda"},
		{FAB_CAP_ORDER_SAW, "send-after-write"},
		{FAB_CAP_WRITE_DELIVERED, "write-delivered"},
	};

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if (caps & names[i].bit)
			printf(" %s", names[i].name);
	}
}

static int both_order(const struct fi_info *i, uint64_t bit)
{
	return (i->tx_attr->msg_order & bit) && (i->rx_attr->msg_order & bit);
}

/* One usable provider: its first info describes it; the others add domains. */
static void print_provider(const struct fi_info *first)
{
	const char *name = first->fabric_attr->prov_name;
	uint32_t caps = ofi_caps_of(first);
	char buf[512];
	int n = 0;

	printf("  %s\n", name);
	printf("      domains      ");
	for (const struct fi_info *i = first; i; i = i->next) {
		const struct fi_info *j;

		if (strcmp(i->fabric_attr->prov_name, name) != 0)
			continue;
		/* each domain once */
		for (j = first; j != i; j = j->next) {
			if (strcmp(j->fabric_attr->prov_name, name) == 0 &&
			    strcmp(j->domain_attr->name, i->domain_attr->name) == 0 &&
			    strcmp(j->fabric_attr->name, i->fabric_attr->name) == 0)
				break;
		}
		if (j != i)
			continue;
		printf("%s%s (%s)", n++ ? ", " : "", i->domain_attr->name, i->fabric_attr->name);
	}
	printf("\n      rdag caps   ");
	print_caps(caps);
	printf("\n");
	fi_tostr_r(buf, sizeof(buf), &first->domain_attr->mr_mode, FI_TYPE_MR_MODE);
	printf("      mr_mode      [%s]  (remote addresses: %s%s%s)\n", buf,
	       first->domain_attr->mr_mode & FI_MR_VIRT_ADDR ? "virtual" : "offsets",
	       first->domain_attr->mr_mode & FI_MR_LOCAL ? "; local buffers must be registered" : "",
	       first->domain_attr->mr_mode & FI_MR_ENDPOINT ? "; MRs bound to the endpoint" : "");
	fi_tostr_r(buf, sizeof(buf), &first->mode, FI_TYPE_MODE);
	printf("      mode         [%s]\n", buf);
	fi_tostr_r(buf, sizeof(buf), &first->caps, FI_TYPE_CAPS);
	printf("      fi caps      %s\n", buf);
	printf("      progress     control %s, data %s%s\n",
	       progress_name(first->domain_attr->control_progress),
	       progress_name(first->domain_attr->data_progress),
	       first->domain_attr->data_progress == FI_PROGRESS_MANUAL
		       ? " (data moves only while the CQ is polled)"
		       : "");
	printf("      limits      ");
	print_size(" max message", first->ep_attr->max_msg_size);
	print_size(", inject", first->tx_attr->inject_size);
	printf(", tx queue %zu, rx queue %zu, CQ data %zu B, name %zu B\n", first->tx_attr->size,
	       first->rx_attr->size, first->domain_attr->cq_data_size, first->src_addrlen);
	printf("      order        send-after-send %s, send-after-write %s, write-after-write %s\n",
	       both_order(first, FI_ORDER_SAS) ? "yes" : "no",
	       both_order(first, FI_ORDER_SAW) ? "yes" : "no",
	       both_order(first, FI_ORDER_WAW) ? "yes" : "no");
	printf("      writes       complete %s\n",
	       caps & FAB_CAP_WRITE_DELIVERED
		       ? "at delivery (FI_DELIVERY_COMPLETE: no send-after-write ordering)"
		       : "when the source is reusable (send-after-write ordering tells the target)");
	printf("      wait fd      %s\n",
	       caps & FAB_CAP_WAIT_FD ? "yes (FI_WAIT_FD + fi_trywait)"
				      : "no (its fd does not wake for a peer's message: poll)");
}

/* Usable libfabric providers; returns how many, and leaves their names in seen. */
static int list_usable(const char *only, char seen[][64], int maxseen)
{
	struct fi_info *hints = ofi_hints(NULL, only, 0), *list = NULL;
	int n = 0, rc;

	if (!hints)
		return 0;
	rc = fi_getinfo(OFI_API_VERSION, NULL, NULL, 0, hints, &list);
	fi_freeinfo(hints);
	printf("libfabric providers offering what rdag needs (RDM endpoints, messages, RDMA write, "
	       "remote CQ data, send-after-send order):\n");
	if (rc || !list) {
		printf("  none%s%s\n", only ? " named " : "", only ? only : "");
		return 0;
	}
	for (const struct fi_info *i = list; i; i = i->next) {
		char why[300];
		int k;

		for (k = 0; k < n; k++) {
			if (strcmp(seen[k], i->fabric_attr->prov_name) == 0)
				break;
		}
		if (k < n || n >= maxseen)
			continue;
		if (ofi_check_info(i, why, sizeof(why)) != 0) {
			printf("  %s: %s\n", i->fabric_attr->prov_name, why);
			continue;
		}
		snprintf(seen[n++], 64, "%s", i->fabric_attr->prov_name);
		print_provider(i);
	}
	fi_freeinfo(list);
	return n;
}

/* Providers libfabric lists that are not usable as they are, each with the reason. */
static void list_unusable(const char *only, char seen[][64], int nseen)
{
	struct fi_info *hints = fi_allocinfo(), *list = NULL;
	char done[64][64];
	int ndone = 0, rc;

	if (!hints)
		return;
	hints->mode = ~0ULL;
	hints->domain_attr->mr_mode = ~0 & ~(FI_MR_BASIC | FI_MR_SCALABLE);
	if (only)
		hints->fabric_attr->prov_name = strdup(only);
	rc = fi_getinfo(OFI_API_VERSION, NULL, NULL, 0, hints, &list);
	fi_freeinfo(hints);
	if (rc || !list) {
		if (only && !nseen) {
			char why[600];
			struct fi_info *none = NULL;

			ofi_getinfo(NULL, only, &none, why, sizeof(why));
			fi_freeinfo(none);
			printf("\n%s\n", why);
		}
		return;
	}
	printf("\nlisted by libfabric but not usable by rdag as such:\n");
	for (const struct fi_info *i = list; i; i = i->next) {
		const char *name = i->fabric_attr->prov_name;
		const struct fi_info *best = i;
		char why[400];
		int k, skip = 0;

		for (k = 0; k < nseen && !skip; k++)
			skip = strcmp(seen[k], name) == 0;
		for (k = 0; k < ndone && !skip; k++)
			skip = strcmp(done[k], name) == 0;
		if (skip || ndone >= 64)
			continue;
		snprintf(done[ndone++], 64, "%s", name);
		/* Explain from an RDM entry if the provider has one. */
		for (const struct fi_info *j = i; j; j = j->next) {
			if (strcmp(j->fabric_attr->prov_name, name) == 0 && j->ep_attr->type == FI_EP_RDM) {
				best = j;
				break;
			}
		}
		if (ofi_check_info(best, why, sizeof(why)) == 0)
			snprintf(why, sizeof(why), "its offers do not match rdag's hints");
		printf("  %-14s %s\n", name, why);
	}
	if (!ndone)
		printf("  none\n");
	fi_freeinfo(list);
}

/* Whether some libfabric provider (opts->ofi_provider, or any) offers rdag's needs with FI_HMEM. */
static int ofi_hmem_provider(const struct fab_open_opts *opts, char *name, size_t len)
{
	struct fi_info *h = ofi_hints(opts, opts->ofi_provider, 0), *list = NULL;
	int found = 0;

	if (!h)
		return 0;
	h->caps |= FI_HMEM;
	h->domain_attr->mr_mode |= FI_MR_HMEM;
	if (fi_getinfo(FI_VERSION(1, 14), NULL, NULL, 0, h, &list) == 0) {
		for (struct fi_info *i = list; i && !found; i = i->next) {
			char why[400];

			if ((i->caps & FI_HMEM) && ofi_check_info(i, why, sizeof(why)) == 0) {
				snprintf(name, len, "%s", i->fabric_attr->prov_name);
				found = 1;
			}
		}
		fi_freeinfo(list);
	}
	fi_freeinfo(h);
	return found;
}

/* The GPU section: build, driver, devices, registration paths, NCCL, the transport auto picks. */
static void show_gpu(const struct fab_open_opts *opts)
{
	const char *peermem = gpu_peermem_module(NULL);
	struct gpu_caps caps = {0};
	struct gpu_info gi;
	const struct fab_ops *ops = NULL;
	enum gpu_transport want, got;
	enum gpu_reg_method method = GPU_REG_NONE;
	char why[400], prov[64] = "";
	int rc, nrc, nccl_version = 0, dmabuf0 = 0, hmem;

	printf("\nGPU (gpu/):\n");
	printf("  CUDA support in this build: %s\n", gpu_built() ? "on" : "off (RDAG_WITH_CUDA=OFF or no toolkit)");
	rc = gpu_probe(&gi);
	if (gi.built && gi.driver_loaded)
		printf("  CUDA driver: %s, version %d: %s\n", gi.library, gi.driver_version,
		       rc ? gi.why : "usable");
	else if (gi.built)
		printf("  CUDA driver: missing: %s\n", gi.why);
	printf("  devices: %d\n", gi.ndevices);
	for (int d = 0; d < gi.ndevices; d++) {
		struct gpu_device_info di;

		if (gpu_device_query(d, &di) != 0) {
			printf("    %d: %s\n", d, rdag_last_error());
			continue;
		}
		printf("    %d: %s, PCI %s, %zu MiB, dma-buf %s, GPUDirect RDMA %s\n", d, di.name,
		       di.pci_bus_id, di.total_mem >> 20, di.dmabuf_supported ? "yes" : "no",
		       di.gdr_supported ? "yes" : "no");
		if (d == 0)
			dmabuf0 = di.dmabuf_supported;
	}
	printf("  peer-memory module: %s\n", peermem ? peermem : "none loaded (nvidia_peermem, nv_peer_mem)");
	if (gi.ndevices > 0) {
		method = gpu_reg_method_choose(dmabuf0, peermem != NULL);
		printf("  verbs registration of device memory: %s\n", gpu_reg_method_name(method));
	} else {
		printf("  verbs registration of device memory: none (no device)\n");
	}
	hmem = ofi_hmem_provider(opts, prov, sizeof(prov));
	printf("  libfabric FI_HMEM: %s%s\n", hmem ? "offered by " : "no provider offers it", prov);
	if (hmem)
		printf("    (whether it covers CUDA shows only at registration: Debian's libfabric "
		       "1.17 is built without FI_HMEM_CUDA)\n");
	if (hmem && !ofi_want_hmem())
		printf("    (set RDAG_OFI_HMEM=1 so the ofi provider asks for it)\n");
	nrc = gpu_nccl_load(&nccl_version);
	if (nrc == 0)
		printf("  NCCL: version %d\n", nccl_version);
	else
		printf("  NCCL: %s\n", rdag_last_error());

	caps.local.built = gi.built;
	caps.local.cuda = gi.driver_loaded;
	caps.local.ndevices = gi.ndevices;
	caps.local.nccl = nrc == 0;
	if (fab_select(opts, &ops, why, sizeof(why)) == 0 && ops)
		caps.local.nic_device_mem = strcmp(ops->name, "verbs") == 0 ? method != GPU_REG_NONE
									      : hmem && ofi_want_hmem();
	caps.peer = caps.local; /* the peer is assumed alike this host */
	if (gpu_transport_env(&want) != 0) {
		printf("  RDAG_GPU_TRANSPORT: %s\n", rdag_last_error());
		return;
	}
	rc = gpu_transport_select(want, &caps, &got, why, sizeof(why));
	printf("  RDAG_GPU_TRANSPORT=%s (peers assumed alike this host, fabric %s):\n      -> %s%s\n",
	       gpu_transport_name(want), ops ? ops->name : "none", rc ? "no GPU path: " : "", why);
	if (rc == 0 && got == GPU_TRANSPORT_HOST)
		printf("      (host staging: GPU gradients go through pinned host buffers, neither "
		       "GPUDirect RDMA nor NCCL is available)\n");
}

static void show_choice(const char *label, const struct fab_open_opts *opts)
{
	const struct fab_ops *ops;
	char why[700];
	int rc = fab_select(opts, &ops, why, sizeof(why));

	printf("  %s\n      -> %s%s\n", label, rc ? "nothing usable: " : "", why);
}

/* -j: this rank's agent, and what it chose with each peer. 0, or 1 when something failed. */
static int show_job(void)
{
	rdag_agent_t *a = NULL;
	int rc = rdag_agent_open(NULL, &a), bad = 0;

	if (rc) {
		fprintf(stderr, "rdag_info: rdag_agent_open: %s: %s\n", rdag_strerror(rc),
			rdag_last_error());
		return 1;
	}
	printf("worker %u (%s) of %u:\n", rdag_agent_id(a), rdag_worker_name(a, rdag_agent_id(a)),
	       rdag_agent_world(a));
	for (uint32_t p = 0; p < rdag_agent_world(a); p++) {
		struct rdag_peer_info pi;

		if (p == rdag_agent_id(a))
			continue;
		rc = rdag_peer_info(a, p, &pi);
		if (rc) {
			printf("  peer %u: rdag_peer_info failed: %s\n", p, rdag_last_error());
			bad = 1;
			continue;
		}
		printf("  -> worker %u (%s): offers %s%s%s; GPU path: %s (%s%s%s)\n", pi.id, pi.name,
		       pi.offers ? "" : "nothing",
		       pi.offers & RDAG_PEER_OFFER_NCCL ? "nccl " : "",
		       pi.offers & RDAG_PEER_OFFER_GPU_ARENA ? "gpu-arena" : "",
		       pi.gpu_path ? pi.gpu_path : "none", pi.gpu_rc ? rdag_strerror(pi.gpu_rc) : "",
		       pi.gpu_rc ? ": " : "", pi.gpu_why);
	}
	fflush(stdout);
	rc = rdag_agent_close(a);
	if (rc) {
		fprintf(stderr, "rdag_info: rdag_agent_close: %s\n", rdag_last_error());
		bad = 1;
	}
	return bad;
}

int main(int argc, char **argv)
{
	const char *only = NULL;
	struct fab_open_opts opts, o;
	char seen[64][64];
	char host[256] = "?";
	const struct fab_ops *ops;
	char why[700];
	int opt, nseen, rc;

	int job = 0;

	while ((opt = getopt(argc, argv, "p:jh")) != -1) {
		switch (opt) {
		case 'p': only = optarg; break;
		case 'j': job = 1; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return 2;
	}
	if (job)
		return show_job();
	gethostname(host, sizeof(host) - 1);
	printf("rdag %s on %s, libfabric %u.%u (built against %d.%d)\n\n", rdag_version(), host,
	       FI_MAJOR(fi_version()), FI_MINOR(fi_version()), FI_MAJOR_VERSION, FI_MINOR_VERSION);

	nseen = list_usable(only, seen, 64);
	list_unusable(only, seen, nseen);

	fab_opts_from_env(&opts);
	printf("\nverbs devices (the verbs provider's probe):\n");
	o = opts;
	o.provider = "verbs";
	rc = fab_select(&o, &ops, why, sizeof(why));
	printf("  %s%s\n", rc ? "none usable: " : "", why);

	printf("\nwhat RDAG_FABRIC=auto would choose:\n");
	o = opts;
	o.provider = "auto";
	o.ofi_provider = NULL;
	o.local_only = 1;
	show_choice("all peers on this host (local_only):", &o);
	o.local_only = 0;
	show_choice("peers on other hosts:", &o);
	if (getenv("RDAG_FABRIC") || getenv("RDAG_OFI_PROVIDER")) {
		char label[256];

		snprintf(label, sizeof(label), "with this environment (RDAG_FABRIC=%s, RDAG_OFI_PROVIDER=%s):",
			 getenv("RDAG_FABRIC") ? getenv("RDAG_FABRIC") : "",
			 getenv("RDAG_OFI_PROVIDER") ? getenv("RDAG_OFI_PROVIDER") : "");
		show_choice(label, &opts);
	}
	o = opts;
	o.local_only = 1;
	show_gpu(&o);
	o = opts;
	o.provider = "auto";
	o.ofi_provider = NULL;
	o.local_only = 0;
	return fab_select(&o, &ops, why, sizeof(why)) == 0 ? 0 : 1;
}
