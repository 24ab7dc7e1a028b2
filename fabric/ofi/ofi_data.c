/* ofi provider: the data path (post receive, send, inject, write, poll); no allocation, no locks. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <rdma/fi_errno.h>
#include <rdma/fi_rma.h>

#include "fabric/ofi/ofi.h"
#include "util/err.h"

#define POLL_BATCH 32

static inline struct ofi_ep *to_ofi(struct fab_ep *fep)
{
	return (struct ofi_ep *)fep;
}

/* The peer's fi_addr_t, or FI_ADDR_NOTAVAIL (with the error recorded) if it is not one. */
static inline fi_addr_t peer_addr(struct ofi_ep *ep, fab_peer_t peer, const char *what)
{
	if (peer < ep->npeers && ep->peers[peer] != FI_ADDR_NOTAVAIL)
		return ep->peers[peer];
	if (peer == ep->rank)
		err_set(RDAG_EINVAL, "ofi: %s to peer %u, which is this worker itself", what, peer);
	else
		err_set(RDAG_EINVAL, "ofi: %s to peer %u, which is not connected (%u peers known)",
			what, peer, ep->npeers);
	return FI_ADDR_NOTAVAIL;
}

static inline struct ofi_req *take(struct ofi_req **list)
{
	struct ofi_req *r = *list;

	if (r)
		*list = r->next;
	return r;
}

/* Returns a context to its pool (a failed post, or a reaped completion: see done()). */
static inline void give(struct ofi_ep *ep, struct ofi_req *r)
{
	struct ofi_req **list = r->op == FAB_OP_RECV ? &ep->rx_free : &ep->tx_free;

	r->next = *list;
	*list = r;
}

/* An operation was posted. */
static inline void posted(struct ofi_ep *ep, struct ofi_req *r)
{
	r->posted = 1;
	ep->outstanding++;
}

/* A posted operation's completion was reaped. */
static inline void done(struct ofi_ep *ep, struct ofi_req *r)
{
	r->posted = 0;
	ep->outstanding--;
	give(ep, r);
}

/* Maps a posting error; -FI_EAGAIN is not an error (the caller polls and retries). */
static int post_error(struct ofi_ep *ep, ssize_t ret, const char *what, fab_peer_t peer)
{
	if (ret == -FI_EAGAIN)
		return RDAG_EAGAIN;
	return err_set(ofi_status((int)-ret), "ofi: %s: %s to peer %u: %s", ep->attr.fabric_name,
		       what, peer, fi_strerror((int)-ret));
}

int ofi_post_recv(struct fab_ep *fep, void *buf, size_t len, void *desc, void *context)
{
	struct ofi_ep *ep = to_ofi(fep);
	struct ofi_req *r;
	ssize_t ret;

	if (ep->need_desc && !desc && len)
		return err_set(RDAG_EINVAL, "ofi: %s needs registered receive buffers (FI_MR_LOCAL): "
					    "pass the registration's desc",
			       ep->attr.fabric_name);
	r = take(&ep->rx_free);
	if (!r)
		return RDAG_EAGAIN; /* every receive context is posted */
	r->op = FAB_OP_RECV;
	r->ctx = context;
	r->peer = FAB_PEER_UNKNOWN;
	ret = fi_recv(ep->ep, buf, len, desc, FI_ADDR_UNSPEC, &r->fictx);
	if (ret) {
		give(ep, r);
		return post_error(ep, ret, "fi_recv", FAB_PEER_UNKNOWN);
	}
	posted(ep, r);
	return 0;
}

int ofi_send(struct fab_ep *fep, fab_peer_t peer, const void *buf, size_t len, void *desc,
	     void *context)
{
	struct ofi_ep *ep = to_ofi(fep);
	fi_addr_t dst = peer_addr(ep, peer, "send");
	struct ofi_req *r;
	ssize_t ret;

	if (dst == FI_ADDR_NOTAVAIL)
		return RDAG_EINVAL;
	if (len > ep->attr.max_msg_size)
		return err_set(RDAG_EINVAL, "ofi: send of %zu bytes exceeds the maximum of %zu", len,
			       ep->attr.max_msg_size);
	if (ep->need_desc && !desc && len)
		return err_set(RDAG_EINVAL, "ofi: %s needs registered send buffers (FI_MR_LOCAL): "
					    "pass the registration's desc",
			       ep->attr.fabric_name);
	r = take(&ep->tx_free);
	if (!r)
		return RDAG_EAGAIN;
	r->op = FAB_OP_SEND;
	r->ctx = context;
	r->peer = peer;
	ret = fi_send(ep->ep, buf, len, desc, dst, &r->fictx);
	if (ret) {
		give(ep, r);
		return post_error(ep, ret, "fi_send", peer);
	}
	posted(ep, r);
	return 0;
}

int ofi_inject(struct fab_ep *fep, fab_peer_t peer, const void *buf, size_t len)
{
	struct ofi_ep *ep = to_ofi(fep);
	fi_addr_t dst = peer_addr(ep, peer, "inject");
	ssize_t ret;

	if (dst == FI_ADDR_NOTAVAIL)
		return RDAG_EINVAL;
	if (len > ep->attr.inject_size)
		return err_set(ep->attr.inject_size ? RDAG_EINVAL : RDAG_ENOSYS,
			       "ofi: %s: inject of %zu bytes exceeds the inject size of %zu",
			       ep->attr.fabric_name, len, ep->attr.inject_size);
	ret = fi_inject(ep->ep, buf, len, dst);
	if (ret)
		return post_error(ep, ret, "fi_inject", peer);
	return 0;
}

int ofi_write(struct fab_ep *fep, fab_peer_t peer, const void *buf, size_t len, void *desc,
	      uint64_t remote_addr, uint64_t rkey, int has_imm, uint32_t imm, void *context)
{
	struct ofi_ep *ep = to_ofi(fep);
	fi_addr_t dst = peer_addr(ep, peer, "write");
	struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
	struct fi_rma_iov riov = {.addr = remote_addr, .len = len, .key = rkey};
	struct fi_msg_rma msg = {
		.msg_iov = &iov,
		.desc = &desc,
		.iov_count = len ? 1 : 0,
		.addr = dst,
		.rma_iov = &riov,
		.rma_iov_count = 1,
		.data = imm,
	};
	struct ofi_req *r;
	ssize_t ret;

	if (dst == FI_ADDR_NOTAVAIL)
		return RDAG_EINVAL;
	if (len > ep->attr.max_write_size)
		return err_set(RDAG_EINVAL, "ofi: write of %zu bytes exceeds the maximum of %zu", len,
			       ep->attr.max_write_size);
	if (!len && !has_imm)
		return err_set(RDAG_EINVAL, "ofi: an empty write without immediate data does nothing");
	if (ep->need_desc && !desc && len)
		return err_set(RDAG_EINVAL, "ofi: %s needs registered write sources (FI_MR_LOCAL): "
					    "pass the registration's desc",
			       ep->attr.fabric_name);
	r = take(&ep->tx_free);
	if (!r)
		return RDAG_EAGAIN;
	r->op = FAB_OP_WRITE;
	r->ctx = context;
	r->peer = peer;
	msg.context = &r->fictx;
	ret = fi_writemsg(ep->ep, &msg, ep->write_flags | (has_imm ? FI_REMOTE_CQ_DATA : 0));
	if (ret) {
		give(ep, r);
		return post_error(ep, ret, has_imm ? "fi_writedata" : "fi_write", peer);
	}
	posted(ep, r);
	return 0;
}

/* The rank behind a source address (FI_SOURCE), or FAB_PEER_UNKNOWN. */
static fab_peer_t source_rank(const struct ofi_ep *ep, fi_addr_t src)
{
	uint32_t lo = 0, hi = ep->nrev;

	if (src == FI_ADDR_NOTAVAIL)
		return FAB_PEER_UNKNOWN;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;

		if (ep->rev[mid].addr == src)
			return ep->rev[mid].rank;
		if (ep->rev[mid].addr < src)
			lo = mid + 1;
		else
			hi = mid;
	}
	return FAB_PEER_UNKNOWN;
}

/*
 * Turns one libfabric completion into ours. The posted operation is known from its context;
 * the only flag looked at is FI_REMOTE_CQ_DATA, on completions that are not ours to classify
 * (no context: a peer's write-with-imm) or that consumed a receive (FI_RX_CQ_DATA providers).
 * Returns 1 if out was filled, 0 if the entry is to be skipped.
 */
static inline int convert(struct ofi_ep *ep, const struct fi_cq_data_entry *e, fi_addr_t src,
			  struct fab_cqe *out)
{
	struct ofi_req *r = e->op_context;

	out->status = 0;
	out->errmsg[0] = '\0';
	out->has_imm = 0;
	out->imm = 0;
	out->len = e->len;
	if (!r) {
		if (!(e->flags & FI_REMOTE_CQ_DATA))
			return 0;
		out->op = FAB_OP_REMOTE_WRITE;
		out->context = NULL;
		out->peer = ep->use_source ? source_rank(ep, src) : FAB_PEER_UNKNOWN;
		out->imm = (uint32_t)e->data;
		out->has_imm = 1;
		return 1;
	}
	out->context = r->ctx;
	if (r->op == FAB_OP_RECV) {
		out->peer = ep->use_source ? source_rank(ep, src) : FAB_PEER_UNKNOWN;
		if (e->flags & FI_REMOTE_CQ_DATA) {
			out->op = FAB_OP_REMOTE_WRITE;
			out->imm = (uint32_t)e->data;
			out->has_imm = 1;
		} else {
			out->op = FAB_OP_RECV;
		}
	} else {
		out->op = (enum fab_op)r->op;
		out->peer = r->peer;
		out->len = 0;
	}
	done(ep, r);
	return 1;
}

/* snprintf into a fixed message field; cutting a long provider text short is fine. */
static void msgf(char *out, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void msgf(char *out, size_t len, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(out, len, fmt, ap);
	va_end(ap);
}

/* Reads one error entry into out. Returns 1, 0 (nothing after all), or a negative code. */
static int read_error(struct ofi_ep *ep, struct fab_cqe *out)
{
	struct fi_cq_err_entry err;
	struct ofi_req *r;
	char ptext[128];
	const char *ps;
	ssize_t ret;

	memset(&err, 0, sizeof(err));
	ret = fi_cq_readerr(ep->cq, &err, 0);
	if (ret == -FI_EAGAIN)
		return 0;
	if (ret < 0)
		return err_set(ofi_status((int)-ret), "ofi: %s: fi_cq_readerr: %s",
			       ep->attr.fabric_name, fi_strerror((int)-ret));
	r = err.op_context;
	out->status = ofi_status(err.err);
	if (out->status == 0)
		out->status = RDAG_EIO;
	out->has_imm = 0;
	out->imm = 0;
	out->len = err.len;
	if (r) {
		out->context = r->ctx;
		out->op = (enum fab_op)r->op;
		out->peer = r->peer;
		done(ep, r);
	} else {
		/* A failed injection or a failed incoming write: nothing of ours to return. */
		out->context = NULL;
		out->op = (err.flags & FI_REMOTE_CQ_DATA) ? FAB_OP_REMOTE_WRITE : FAB_OP_SEND;
		out->peer = FAB_PEER_UNKNOWN;
	}
	ptext[0] = '\0';
	ps = fi_cq_strerror(ep->cq, err.prov_errno, err.err_data, ptext, sizeof(ptext));
	if (!ps)
		ps = ptext;
	if (err.err == FI_ETRUNC && err.olen)
		msgf(out->errmsg, sizeof(out->errmsg),
			 "%s: message longer than the receive buffer by %zu bytes (%s, prov_errno %d)",
			 ep->attr.fabric_name, err.olen, ps, err.prov_errno);
	else if (err.err == FI_ETRUNC)
		msgf(out->errmsg, sizeof(out->errmsg),
			 "%s: message longer than the receive buffer (%s, prov_errno %d)",
			 ep->attr.fabric_name, ps, err.prov_errno);
	else
		msgf(out->errmsg, sizeof(out->errmsg), "%s: %s (%s, prov_errno %d)",
			 ep->attr.fabric_name, fi_strerror(err.err), ps, err.prov_errno);
	return 1;
}

int ofi_poll(struct fab_ep *fep, struct fab_cqe *out, int max)
{
	struct ofi_ep *ep = to_ofi(fep);
	struct fi_cq_data_entry ents[POLL_BATCH];
	fi_addr_t srcs[POLL_BATCH];
	int filled = 0;

	if (max <= 0) {
		/* Progress only (manual-progress providers move data and connections here). */
		(void)fi_cq_read(ep->cq, ents, 0);
		return 0;
	}
	while (filled < max) {
		int want = max - filled < POLL_BATCH ? max - filled : POLL_BATCH;
		ssize_t got = ep->use_source ? fi_cq_readfrom(ep->cq, ents, (size_t)want, srcs)
					     : fi_cq_read(ep->cq, ents, (size_t)want);

		if (got == -FI_EAGAIN)
			break;
		if (got == -FI_EAVAIL) {
			int rc = read_error(ep, &out[filled]);

			if (rc < 0)
				return filled ? filled : rc;
			filled += rc;
			if (rc == 0)
				break;
			continue;
		}
		if (got < 0)
			return filled ? filled
				      : err_set(ofi_status((int)-got), "ofi: %s: fi_cq_read: %s",
						ep->attr.fabric_name, fi_strerror((int)-got));
		for (ssize_t i = 0; i < got; i++)
			filled += convert(ep, &ents[i], ep->use_source ? srcs[i] : FI_ADDR_NOTAVAIL,
					  &out[filled]);
		if (got < want)
			break;
	}
	return filled;
}

size_t ofi_drain(struct ofi_ep *ep, int ms)
{
	struct fi_cq_data_entry ents[POLL_BATCH];
	struct timespec now;
	double deadline;

	if (!ep->ep || !ep->cq || !ep->outstanding)
		return ep->outstanding;
	for (size_t i = ep->tx_count; i < ep->tx_count + ep->rx_count; i++) {
		if (ep->reqs[i].posted)
			fi_cancel(&ep->ep->fid, &ep->reqs[i].fictx);
	}
	clock_gettime(CLOCK_MONOTONIC, &now);
	deadline = (double)now.tv_sec + (double)now.tv_nsec * 1e-9 + ms * 1e-3;
	while (ep->outstanding) {
		ssize_t got = fi_cq_read(ep->cq, ents, POLL_BATCH);

		if (got > 0) {
			for (ssize_t i = 0; i < got; i++) {
				struct ofi_req *r = ents[i].op_context;

				if (r && r->posted)
					done(ep, r);
			}
			continue;
		}
		if (got == -FI_EAVAIL) {
			struct fi_cq_err_entry err;

			memset(&err, 0, sizeof(err));
			if (fi_cq_readerr(ep->cq, &err, 0) > 0) {
				struct ofi_req *r = err.op_context;

				if (r && r->posted)
					done(ep, r);
			}
			continue;
		}
		if (got != -FI_EAGAIN)
			break;
		clock_gettime(CLOCK_MONOTONIC, &now);
		if ((double)now.tv_sec + (double)now.tv_nsec * 1e-9 > deadline)
			break;
	}
	return ep->outstanding;
}
