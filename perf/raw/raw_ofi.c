/* Plain libfabric set-up shared by raw_ofi_lat and raw_ofi_bw: RDM endpoint, CQ, AV, MRs as the provider asks. */
#include "raw_ofi.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <rdma/fi_cm.h>
#include <rdma/fi_errno.h>

#define RAW_OFI_API FI_VERSION(1, 14)
#define NAME_MAX_LEN 256

int raw_ofi_fail(const struct raw_ofi *r, const char *what, ssize_t rc)
{
	fprintf(stderr, "%s: %s: %s (%zd)\n", r->o->tool, what, fi_strerror((int)-rc), rc);
	return RAW_EXIT_FAIL;
}

int raw_ofi_open(struct raw_ofi *r, const struct raw_opts *o, uint64_t caps, int need_cq_data)
{
	struct fi_info *hints;
	struct fi_cq_attr cq_attr;
	struct fi_av_attr av_attr;
	int rc, ret = RAW_EXIT_FAIL;

	memset(r, 0, sizeof(*r));
	r->o = o;
	r->next_key = 1;
	hints = fi_allocinfo();
	if (!hints) {
		fprintf(stderr, "%s: fi_allocinfo failed\n", o->tool);
		return RAW_EXIT_FAIL;
	}
	hints->ep_attr->type = FI_EP_RDM;
	hints->caps = caps;
	/* The modes and MR bits this program honours; a provider may ask for any of them. */
	hints->mode = FI_CONTEXT | FI_CONTEXT2 | FI_RX_CQ_DATA;
	hints->domain_attr->mr_mode = FI_MR_LOCAL | FI_MR_VIRT_ADDR | FI_MR_ALLOCATED |
				      FI_MR_PROV_KEY | FI_MR_ENDPOINT;
	hints->domain_attr->threading = FI_THREAD_DOMAIN;
	if (o->provider)
		hints->fabric_attr->prov_name = strdup(o->provider);
	if (o->device)
		hints->domain_attr->name = strdup(o->device);
	rc = fi_getinfo(RAW_OFI_API, NULL, NULL, 0, hints, &r->info);
	if (rc == -FI_ENODATA) {
		fprintf(stderr, "%s: no libfabric provider '%s'%s%s offers an RDM endpoint with %s here\n",
			o->tool, o->provider ? o->provider : "(any)", o->device ? " on " : "",
			o->device ? o->device : "", caps & FI_RMA ? "FI_MSG and FI_RMA" : "FI_MSG");
		ret = RAW_EXIT_SKIP;
		goto out;
	}
	if (rc) {
		ret = raw_ofi_fail(r, "fi_getinfo", rc);
		goto out;
	}
	if (need_cq_data && r->info->domain_attr->cq_data_size < 4) {
		fprintf(stderr, "%s: provider %s carries only %zu bytes of remote CQ data (4 needed)\n",
			o->tool, r->info->fabric_attr->prov_name, r->info->domain_attr->cq_data_size);
		goto out;
	}
	r->inject_size = r->info->tx_attr->inject_size;
	if (o->inline_size >= 0 && (size_t)o->inline_size < r->inject_size)
		r->inject_size = (size_t)o->inline_size;

	rc = fi_fabric(r->info->fabric_attr, &r->fabric, NULL);
	if (rc) {
		ret = raw_ofi_fail(r, "fi_fabric", rc);
		goto out;
	}
	rc = fi_domain(r->fabric, r->info, &r->domain, NULL);
	if (rc) {
		ret = raw_ofi_fail(r, "fi_domain", rc);
		goto out;
	}
	memset(&cq_attr, 0, sizeof(cq_attr));
	cq_attr.format = FI_CQ_FORMAT_DATA;
	cq_attr.wait_obj = o->events ? FI_WAIT_UNSPEC : FI_WAIT_NONE; /* -e: sread; else busy-polled */
	cq_attr.size = r->info->tx_attr->size + r->info->rx_attr->size;
	rc = fi_cq_open(r->domain, &cq_attr, &r->cq, NULL);
	if (rc) {
		ret = raw_ofi_fail(r, "fi_cq_open", rc);
		goto out;
	}
	memset(&av_attr, 0, sizeof(av_attr));
	av_attr.type = r->info->domain_attr->av_type != FI_AV_UNSPEC ? r->info->domain_attr->av_type
								      : FI_AV_TABLE;
	av_attr.count = 2;
	rc = fi_av_open(r->domain, &av_attr, &r->av, NULL);
	if (rc) {
		ret = raw_ofi_fail(r, "fi_av_open", rc);
		goto out;
	}
	rc = fi_endpoint(r->domain, r->info, &r->ep, NULL);
	if (rc) {
		ret = raw_ofi_fail(r, "fi_endpoint", rc);
		goto out;
	}
	rc = fi_ep_bind(r->ep, &r->cq->fid, FI_TRANSMIT | FI_RECV);
	if (!rc)
		rc = fi_ep_bind(r->ep, &r->av->fid, 0);
	if (rc) {
		ret = raw_ofi_fail(r, "fi_ep_bind", rc);
		goto out;
	}
	rc = fi_enable(r->ep);
	if (rc) {
		ret = raw_ofi_fail(r, "fi_enable", rc);
		goto out;
	}
	ret = 0;
out:
	fi_freeinfo(hints);
	if (ret)
		raw_ofi_close(r);
	return ret;
}

void raw_ofi_close(struct raw_ofi *r)
{
	if (r->ep)
		fi_close(&r->ep->fid);
	if (r->av)
		fi_close(&r->av->fid);
	if (r->cq)
		fi_close(&r->cq->fid);
	if (r->domain)
		fi_close(&r->domain->fid);
	if (r->fabric)
		fi_close(&r->fabric->fid);
	if (r->info)
		fi_freeinfo(r->info);
	r->ep = NULL;
	r->av = NULL;
	r->cq = NULL;
	r->domain = NULL;
	r->fabric = NULL;
	r->info = NULL;
}

/* fi_tostr output without its trailing newline. */
static const char *str(const void *data, enum fi_type type, char *buf, size_t len)
{
	const char *s = fi_tostr(data, type);
	size_t n;

	snprintf(buf, len, "%s", s ? s : "?");
	n = strlen(buf);
	while (n && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
		buf[--n] = '\0';
	return buf;
}

void raw_ofi_print_setup(const struct raw_ofi *r)
{
	const struct fi_info *i = r->info;
	char a[512], b[512];
	int mr_mode = i->domain_attr->mr_mode;
	uint32_t v = fi_version();

	raw_hdr("libfabric", "%u.%u (API %u.%u requested)", FI_MAJOR(v), FI_MINOR(v),
		FI_MAJOR(RAW_OFI_API), FI_MINOR(RAW_OFI_API));
	raw_hdr("provider", "%s (fabric %s, domain %s)", i->fabric_attr->prov_name,
		i->fabric_attr->name, i->domain_attr->name);
	raw_hdr("endpoint", "FI_EP_RDM, caps %s", str(&i->caps, FI_TYPE_CAPS, a, sizeof(a)));
	raw_hdr("mode bits", "%s", i->mode ? str(&i->mode, FI_TYPE_MODE, a, sizeof(a)) : "none");
	raw_hdr("mr_mode", "%s", mr_mode ? str(&mr_mode, FI_TYPE_MR_MODE, a, sizeof(a)) : "none");
	raw_hdr("progress", "control %s, data %s",
		str(&i->domain_attr->control_progress, FI_TYPE_PROGRESS, a, sizeof(a)),
		str(&i->domain_attr->data_progress, FI_TYPE_PROGRESS, b, sizeof(b)));
	if (r->inject_size)
		raw_hdr("inject", "fi_inject up to %zu B (provider limit %zu B)", r->inject_size,
			i->tx_attr->inject_size);
	else
		raw_hdr("inject", "never (provider limit %zu B)", i->tx_attr->inject_size);
	raw_hdr("max_msg_size", "%zu", i->ep_attr->max_msg_size);
}

int raw_ofi_connect(struct raw_ofi *r, int fd)
{
	char mine[NAME_MAX_LEN], theirs[NAME_MAX_LEN];
	size_t len = sizeof(mine);
	uint32_t mylen, theirlen;
	int rc;

	memset(mine, 0, sizeof(mine));
	rc = fi_getname(&r->ep->fid, mine, &len);
	if (rc)
		return raw_ofi_fail(r, "fi_getname", rc);
	mylen = (uint32_t)len;
	if (raw_oob_xchg(fd, &mylen, &theirlen, sizeof(mylen)) ||
	    raw_oob_xchg(fd, mine, theirs, sizeof(mine)))
		return RAW_EXIT_FAIL;
	if (theirlen > sizeof(theirs)) {
		fprintf(stderr, "%s: peer's address is %u bytes (at most %zu)\n", r->o->tool, theirlen,
			sizeof(theirs));
		return RAW_EXIT_FAIL;
	}
	rc = fi_av_insert(r->av, theirs, 1, &r->peer, 0, NULL);
	if (rc != 1)
		return raw_ofi_fail(r, "fi_av_insert", rc < 0 ? rc : -FI_EINVAL);
	return 0;
}

int raw_ofi_mr_reg(struct raw_ofi *r, void *buf, size_t len, uint64_t access, struct raw_mr *mr)
{
	uint64_t mode = (uint64_t)r->info->domain_attr->mr_mode;
	int rc;

	memset(mr, 0, sizeof(*mr));
	/* Local-only buffers need a registration only when the provider asks for FI_MR_LOCAL. */
	if (!(access & (FI_REMOTE_WRITE | FI_REMOTE_READ)) && !(mode & FI_MR_LOCAL))
		return 0;
	rc = fi_mr_reg(r->domain, buf, len, access, 0, (mode & FI_MR_PROV_KEY) ? 0 : r->next_key++, 0,
		       &mr->mr, NULL);
	if (rc)
		return raw_ofi_fail(r, "fi_mr_reg", rc);
	if (mode & FI_MR_ENDPOINT) {
		rc = fi_mr_bind(mr->mr, &r->ep->fid, 0);
		if (!rc)
			rc = fi_mr_enable(mr->mr);
		if (rc) {
			raw_ofi_mr_close(mr);
			return raw_ofi_fail(r, "fi_mr_bind/fi_mr_enable", rc);
		}
	}
	mr->desc = fi_mr_desc(mr->mr);
	mr->key = fi_mr_key(mr->mr);
	if (mr->key == FI_KEY_NOTAVAIL) {
		raw_ofi_mr_close(mr);
		fprintf(stderr, "%s: the provider's MR key does not fit 64 bits (FI_MR_RAW)\n", r->o->tool);
		return RAW_EXIT_FAIL;
	}
	mr->remote_addr = (mode & FI_MR_VIRT_ADDR) ? (uint64_t)(uintptr_t)buf : 0;
	return 0;
}

void raw_ofi_mr_close(struct raw_mr *mr)
{
	if (mr->mr)
		fi_close(&mr->mr->fid);
	mr->mr = NULL;
	mr->desc = NULL;
}

void raw_ofi_own(struct raw_ofi *r, struct raw_ctx *ctxs, size_t n)
{
	if (r->nowned < (int)(sizeof(r->owned) / sizeof(r->owned[0]))) {
		r->owned[r->nowned].base = ctxs;
		r->owned[r->nowned].n = n;
		r->nowned++;
	}
}

static struct raw_ctx *ours(const struct raw_ofi *r, void *ctx)
{
	uintptr_t p = (uintptr_t)ctx;
	int i;

	for (i = 0; i < r->nowned; i++) {
		uintptr_t b = (uintptr_t)r->owned[i].base;

		if (p >= b && p < b + r->owned[i].n * sizeof(struct raw_ctx) &&
		    (p - b) % sizeof(struct raw_ctx) == 0)
			return ctx;
	}
	return NULL;
}

static int reap(struct raw_ofi *r, int timeout_ms);

int raw_ofi_progress(struct raw_ofi *r)
{
	return reap(r, -1);
}

int raw_ofi_progress_wait(struct raw_ofi *r, int timeout_ms)
{
	return reap(r, timeout_ms);
}

/* timeout_ms < 0: fi_cq_read (never blocks); else fi_cq_sread for up to timeout_ms. */
static int reap(struct raw_ofi *r, int timeout_ms)
{
	struct fi_cq_data_entry e[16];
	struct fi_cq_err_entry err;
	struct raw_ctx *c;
	char buf[256];
	ssize_t n, i;

	if (timeout_ms < 0)
		n = fi_cq_read(r->cq, e, 16);
	else
		n = fi_cq_sread(r->cq, e, 16, NULL, timeout_ms);
	if (n == -FI_EAGAIN || n == -FI_ETIMEDOUT)
		return 0;
	if (n == -FI_EAVAIL) {
		memset(&err, 0, sizeof(err));
		if (fi_cq_readerr(r->cq, &err, 0) < 0) {
			fprintf(stderr, "%s: completion error (fi_cq_readerr failed)\n", r->o->tool);
			return -1;
		}
		c = ours(r, err.op_context);
		fprintf(stderr, "%s: completion error on %s: %s (provider: %s)\n", r->o->tool,
			!c ? "remote data" : c->kind == RAW_CTX_SEND ? "send"
			: c->kind == RAW_CTX_RECV ? "receive" : "write",
			fi_strerror(err.err),
			fi_cq_strerror(r->cq, err.prov_errno, err.err_data, buf, sizeof(buf)));
		return -1;
	}
	if (n < 0) {
		raw_ofi_fail(r, "fi_cq_read", n);
		return -1;
	}
	for (i = 0; i < n; i++) {
		c = ours(r, e[i].op_context);
		if (!c) {
			/* Remote CQ data that consumed no posted receive (op_context NULL or junk). */
			if (!(e[i].flags & FI_REMOTE_CQ_DATA)) {
				fprintf(stderr, "%s: completion with unknown context %p and flags 0x%llx\n",
					r->o->tool, e[i].op_context, (unsigned long long)e[i].flags);
				return -1;
			}
			r->remote_data++;
			r->last_data = e[i].data;
			continue;
		}
		c->busy = 0;
		switch (c->kind) {
		case RAW_CTX_SEND:
			r->sends_done++;
			break;
		case RAW_CTX_WRITE:
			r->writes_done++;
			break;
		case RAW_CTX_RECV:
			if (e[i].flags & FI_REMOTE_CQ_DATA) {
				/* A write's notification that consumed a posted receive (FI_RX_CQ_DATA). */
				r->remote_data++;
				r->last_data = e[i].data;
			} else {
				r->recvs_done++;
				r->last_len = e[i].len;
			}
			break;
		}
	}
	return (int)n;
}
