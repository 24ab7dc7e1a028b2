/* verbs provider: chooses the RDMA device, port, GID and local rdma_cm address, refusing unfit ones. */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fabric/verbs/verbs.h"
#include "util/log.h"

/* Appends a formatted reason to buf (what was refused and why), separated by "; ". */
static void note(char *buf, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void note(char *buf, size_t len, const char *fmt, ...)
{
	size_t used = strnlen(buf, len);
	va_list ap;

	if (used + 3 >= len)
		return;
	if (used > 0) {
		memcpy(buf + used, "; ", 3);
		used += 2;
	}
	va_start(ap, fmt);
	vsnprintf(buf + used, len - used, fmt, ap);
	va_end(ap);
}

const char *verbs_gid_type_str(uint32_t type)
{
	switch (type) {
	case IBV_GID_TYPE_IB: return "IB";
	case IBV_GID_TYPE_ROCE_V1: return "RoCE v1";
	case IBV_GID_TYPE_ROCE_V2: return "RoCE v2";
	default: return "unknown";
	}
}

static const char *port_state_str(enum ibv_port_state s)
{
	return ibv_port_state_str(s);
}

static int gid_is_zero(const union ibv_gid *g)
{
	static const uint8_t zero[16];

	return memcmp(g->raw, zero, 16) == 0;
}

static int gid_is_v4mapped(const union ibv_gid *g)
{
	static const uint8_t prefix[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

	return memcmp(g->raw, prefix, 12) == 0;
}

static int gid_is_linklocal(const union ibv_gid *g)
{
	return g->raw[0] == 0xfe && (g->raw[1] & 0xc0) == 0x80;
}

static void gid_str(const union ibv_gid *g, char *buf, size_t len)
{
	if (!inet_ntop(AF_INET6, g->raw, buf, (socklen_t)len))
		snprintf(buf, len, "?");
}

/* Ranks a GID for automatic choice on a RoCE port; 0 means unusable. */
static int roce_gid_rank(const struct ibv_gid_entry *e)
{
	if (gid_is_zero(&e->gid) || e->ndev_ifindex == 0)
		return 0;
	if (gid_is_v4mapped(&e->gid))
		return e->gid_type == IBV_GID_TYPE_ROCE_V2 ? 4 : 3;
	if (gid_is_linklocal(&e->gid))
		return 0; /* would need a scope id on every peer */
	return e->gid_type == IBV_GID_TYPE_ROCE_V2 ? 2 : 1;
}

/* Finds an IPv4 address of the named interface; 0 when found. */
static int ifname_ipv4(const char *ifname, struct sockaddr_in *out)
{
	struct ifaddrs *ifs, *i;
	int rc = -1;

	if (getifaddrs(&ifs) != 0)
		return -1;
	for (i = ifs; i; i = i->ifa_next) {
		if (i->ifa_addr && i->ifa_addr->sa_family == AF_INET && strcmp(i->ifa_name, ifname) == 0) {
			memcpy(out, i->ifa_addr, sizeof(*out));
			rc = 0;
			break;
		}
	}
	freeifaddrs(ifs);
	return rc;
}

/* InfiniBand port: the IPoIB interfaces of the device, then the GID's netdev, give the address. */
static int ib_port_addr(const char *dev, const struct ibv_gid_entry *e, struct sockaddr_in *out)
{
	char path[256], ifname[IF_NAMESIZE];
	struct dirent *d;
	DIR *dir;
	int rc = -1;

	if (e->ndev_ifindex && if_indextoname(e->ndev_ifindex, ifname) && ifname_ipv4(ifname, out) == 0)
		return 0;
	snprintf(path, sizeof(path), "/sys/class/infiniband/%s/device/net", dev);
	dir = opendir(path);
	if (!dir)
		return -1;
	while ((d = readdir(dir)) != NULL) {
		if (d->d_name[0] == '.')
			continue;
		if (ifname_ipv4(d->d_name, out) == 0) {
			rc = 0;
			break;
		}
	}
	closedir(dir);
	return rc;
}

static void addr_to_str(const struct sockaddr *sa, char *buf, size_t len)
{
	const void *a = sa->sa_family == AF_INET ? (const void *)&((const struct sockaddr_in *)sa)->sin_addr
						: (const void *)&((const struct sockaddr_in6 *)sa)->sin6_addr;

	if (!inet_ntop(sa->sa_family, a, buf, (socklen_t)len))
		snprintf(buf, len, "?");
}

/* Parses a numeric IPv4/IPv6 address (RDAG_IB_ADDR) into sel->addr. */
static int parse_addr(const char *text, struct verbs_sel *sel)
{
	struct addrinfo hints, *res = NULL;

	memset(&hints, 0, sizeof(hints));
	hints.ai_flags = AI_NUMERICHOST;
	hints.ai_family = AF_UNSPEC;
	if (getaddrinfo(text, NULL, &hints, &res) != 0 || !res)
		return -1;
	memcpy(&sel->addr, res->ai_addr, res->ai_addrlen);
	sel->addr_len = res->ai_addrlen;
	freeaddrinfo(res);
	return 0;
}

/*
 * Chooses the GID (forced index or automatic) and the local address on one active port.
 * Returns 0, or -1 with the reason noted in why.
 */
static int pick_gid_and_addr(struct ibv_context *ctx, const struct fab_open_opts *opts,
			     struct verbs_sel *sel, char *why, size_t whylen)
{
	const char *dev = sel->dev_name;
	struct ibv_gid_entry *tab = NULL, *best = NULL;
	ssize_t n;
	int best_rank = 0, rc = -1;
	char gs[INET6_ADDRSTRLEN];

	tab = calloc((size_t)sel->port_attr.gid_tbl_len * sel->dev_attr.phys_port_cnt + 1, sizeof(*tab));
	if (!tab) {
		note(why, whylen, "%s: out of memory", dev);
		return -1;
	}
	n = ibv_query_gid_table(ctx, tab, (size_t)sel->port_attr.gid_tbl_len * sel->dev_attr.phys_port_cnt + 1,
				0);
	if (n < 0) {
		/* Older kernels: read this port's entries one by one (empty ones fail). */
		LOG_DEBUG("verbs: ibv_query_gid_table on %s: %s; querying GIDs one by one", dev,
			  strerror((int)-n));
		n = 0;
		for (int i = 0; i < sel->port_attr.gid_tbl_len; i++)
			if (ibv_query_gid_ex(ctx, sel->port, (uint32_t)i, &tab[n], 0) == 0)
				n++;
		if (n == 0) {
			note(why, whylen, "%s port %u: cannot read any GID (ibv_query_gid_ex: %s)", dev,
			     sel->port, strerror(errno));
			goto out;
		}
	}
	for (ssize_t i = 0; i < n; i++) {
		struct ibv_gid_entry *e = &tab[i];
		int r;

		if (e->port_num != sel->port)
			continue;
		if (opts->ib_gid_index >= 0) {
			if ((int)e->gid_index == opts->ib_gid_index) {
				best = e;
				break;
			}
			continue;
		}
		if (sel->link_layer == IBV_LINK_LAYER_ETHERNET)
			r = roce_gid_rank(e);
		else
			r = gid_is_zero(&e->gid) ? 0 : (e->gid_index == 0 ? 2 : 1);
		if (r > best_rank) {
			best_rank = r;
			best = e;
		}
	}
	if (!best) {
		if (opts->ib_gid_index >= 0)
			note(why, whylen, "%s port %u: GID index %d (RDAG_IB_GID_INDEX) is not in its GID table",
			     dev, sel->port, opts->ib_gid_index);
		else if (sel->link_layer == IBV_LINK_LAYER_ETHERNET)
			note(why, whylen,
			     "%s port %u: no usable RoCE GID (needs an IP address on its network interface)",
			     dev, sel->port);
		else
			note(why, whylen, "%s port %u: no usable GID", dev, sel->port);
		goto out;
	}
	sel->gid_index = (int)best->gid_index;
	sel->gid_type = best->gid_type;
	sel->gid = best->gid;
	gid_str(&best->gid, gs, sizeof(gs));

	if (opts->iface_addr && opts->iface_addr[0]) {
		if (parse_addr(opts->iface_addr, sel) != 0) {
			note(why, whylen, "RDAG_IB_ADDR='%s' is not a numeric IPv4 or IPv6 address",
			     opts->iface_addr);
			goto out;
		}
	} else if (sel->link_layer == IBV_LINK_LAYER_ETHERNET) {
		if (gid_is_v4mapped(&best->gid)) {
			struct sockaddr_in *sin = (struct sockaddr_in *)&sel->addr;

			memset(sin, 0, sizeof(*sin));
			sin->sin_family = AF_INET;
			memcpy(&sin->sin_addr, best->gid.raw + 12, 4);
			sel->addr_len = sizeof(*sin);
		} else {
			struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&sel->addr;

			memset(sin6, 0, sizeof(*sin6));
			sin6->sin6_family = AF_INET6;
			memcpy(&sin6->sin6_addr, best->gid.raw, 16);
			if (gid_is_linklocal(&best->gid))
				sin6->sin6_scope_id = best->ndev_ifindex;
			sel->addr_len = sizeof(*sin6);
		}
	} else {
		struct sockaddr_in *sin = (struct sockaddr_in *)&sel->addr;

		if (ib_port_addr(dev, best, sin) != 0) {
			note(why, whylen,
			     "%s port %u: no IPv4 address on its IPoIB interface for rdma_cm (set RDAG_IB_ADDR)",
			     dev, sel->port);
			goto out;
		}
		sin->sin_port = 0;
		sel->addr_len = sizeof(*sin);
	}
	addr_to_str((struct sockaddr *)&sel->addr, sel->addr_str, sizeof(sel->addr_str));
	LOG_DEBUG("verbs: %s port %u: GID[%d] %s (%s), rdma_cm address %s", dev, sel->port,
		  sel->gid_index, gs, verbs_gid_type_str(sel->gid_type), sel->addr_str);
	rc = 0;
out:
	free(tab);
	return rc;
}

/* Checks a device as a whole; 0 if usable, else -1 with the reason noted. */
static int check_device(struct ibv_device *d, const struct ibv_device_attr *a, char *why, size_t whylen)
{
	const char *name = ibv_get_device_name(d);

	if (d->transport_type != IBV_TRANSPORT_IB) {
		note(why, whylen, "%s: transport %s is not InfiniBand/RoCE (reliable connections with "
				  "immediate data are needed)",
		     name, d->transport_type == IBV_TRANSPORT_IWARP ? "iWARP" : "other");
		return -1;
	}
	if (a->max_srq == 0 || a->max_srq_wr == 0) {
		note(why, whylen, "%s: no shared receive queue support (max_srq %d)", name, a->max_srq);
		return -1;
	}
	if (a->max_qp_wr < 16 || a->max_cqe < 64 || a->max_srq_wr < 16) {
		note(why, whylen, "%s: queues too small (max_qp_wr %d, max_cqe %d, max_srq_wr %d)", name,
		     a->max_qp_wr, a->max_cqe, a->max_srq_wr);
		return -1;
	}
	return 0;
}

int verbs_select(const struct fab_open_opts *opts, struct verbs_sel *sel, char *why, size_t whylen)
{
	struct ibv_device **list;
	char want[64] = "";
	int want_port = 0, n = 0, rc = RDAG_ENODEV, found_name = 0;

	memset(sel, 0, sizeof(*sel));
	why[0] = '\0';
	if (opts->ib_device && opts->ib_device[0]) {
		const char *colon = strchr(opts->ib_device, ':');

		snprintf(want, sizeof(want), "%.*s",
			 (int)(colon ? (size_t)(colon - opts->ib_device) : strlen(opts->ib_device)),
			 opts->ib_device);
		if (colon) {
			char *end;
			long p = strtol(colon + 1, &end, 10);

			if (*end || p < 1 || p > 255) {
				snprintf(why, whylen, "RDAG_IB_DEVICE='%s': port must be a number 1-255",
					 opts->ib_device);
				return RDAG_EINVAL;
			}
			want_port = (int)p;
		}
	}

	errno = 0;
	list = ibv_get_device_list(&n);
	if (!list) {
		snprintf(why, whylen, "no RDMA device found (ibv_get_device_list: %s)",
			 strerror(errno ? errno : ENODEV));
		return RDAG_ENODEV;
	}
	if (n == 0) {
		snprintf(why, whylen, "no RDMA device found (ibv_get_device_list: no devices; is an RDMA "
				      "driver such as rdma_rxe loaded?)");
		goto out;
	}

	for (int i = 0; i < n && rc != 0; i++) {
		const char *name = ibv_get_device_name(list[i]);
		struct ibv_context *ctx;

		if (want[0] && strcmp(name, want) != 0)
			continue;
		found_name = 1;
		ctx = ibv_open_device(list[i]);
		if (!ctx) {
			note(why, whylen, "%s: cannot open (%s)", name, strerror(errno));
			continue;
		}
		snprintf(sel->dev_name, sizeof(sel->dev_name), "%s", name);
		if (ibv_query_device(ctx, &sel->dev_attr) != 0) {
			note(why, whylen, "%s: ibv_query_device: %s", name, strerror(errno));
		} else if (check_device(list[i], &sel->dev_attr, why, whylen) == 0) {
			for (int port = 1; port <= sel->dev_attr.phys_port_cnt && rc != 0; port++) {
				if (want_port && port != want_port)
					continue;
				if (ibv_query_port(ctx, (uint8_t)port, &sel->port_attr) != 0) {
					note(why, whylen, "%s port %d: ibv_query_port: %s", name, port,
					     strerror(errno));
					continue;
				}
				if (sel->port_attr.state != IBV_PORT_ACTIVE) {
					note(why, whylen, "%s port %d: not active (state %s)", name, port,
					     port_state_str(sel->port_attr.state));
					continue;
				}
				sel->port = (uint8_t)port;
				sel->link_layer = sel->port_attr.link_layer;
				if (pick_gid_and_addr(ctx, opts, sel, why, whylen) == 0)
					rc = 0;
			}
			if (want_port && want_port > sel->dev_attr.phys_port_cnt)
				note(why, whylen, "%s has no port %d (it has %u)", name, want_port,
				     sel->dev_attr.phys_port_cnt);
		}
		ibv_close_device(ctx);
	}
	if (rc != 0) {
		char prefix[160];
		char names[128] = "";

		for (int i = 0; i < n; i++)
			note(names, sizeof(names), "%s", ibv_get_device_name(list[i]));
		for (char *c = names; *c; c++)
			if (*c == ';')
				*c = ',';
		if (want[0] && !found_name) {
			snprintf(why, whylen, "RDMA device '%s' (RDAG_IB_DEVICE) not found; devices: %s", want,
				 names);
		} else {
			snprintf(prefix, sizeof(prefix), "no usable RDMA device: ");
			if (strlen(prefix) + strlen(why) + 1 < whylen) {
				memmove(why + strlen(prefix), why, strlen(why) + 1);
				memcpy(why, prefix, strlen(prefix));
			}
		}
		memset(sel, 0, sizeof(*sel));
	}
out:
	ibv_free_device_list(list);
	return rc;
}
