/* verbs provider: memory registration, posting sends/writes/receives, completions and the wait fd. */
#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fabric/verbs/verbs.h"
#include "gpu/gpu.h"
#include "util/err.h"
#include "util/log.h"

/*
 * Send-queue accounting (per peer QP, sq_depth slots):
 *  - every posted WR takes a slot (ring `slots`, oldest at slot_head) saying what it is;
 *  - a WR is signalled when it ends a send or write (each produces exactly one completion) or
 *    when sig_interval-1 WRs in a row went unsignalled (injections, middle chunks of large
 *    writes), so a full queue always holds a signalled WR whose completion frees it;
 *  - signalled WRs are queued in `sigs` with the number of slots their completion retires
 *    (themselves and the unsignalled ones before them: RC completes in order);
 *  - a post that would need more slots than are free returns RDAG_EAGAIN.
 * After an error completion the QP is dead and every outstanding WR completes (flushed) in
 * order: each retires the oldest slot; sends and writes get their one (error) completion.
 */

/* ---- memory registration ---- */

/* Says once per process and method, at info level, how device memory gets registered. */
static void report_method(const struct verbs_ep *ep, enum gpu_reg_method m, const char *peermem)
{
	static _Atomic unsigned reported;
	unsigned bit = 1u << (unsigned)m;

	if (atomic_fetch_or(&reported, bit) & bit)
		return;
	if (m == GPU_REG_DMABUF)
		LOG_INFO("verbs: %s: GPU memory is registered with dma-buf (ibv_reg_dmabuf_mr)",
			 ep->sel.dev_name);
	else
		LOG_INFO("verbs: %s: GPU memory is registered through the peer-memory module %s "
			 "(ibv_reg_mr)", ep->sel.dev_name, peermem);
}

/*
 * CUDA device memory: a dma-buf from the driver registered with ibv_reg_dmabuf_mr, else (no
 * dma-buf support, or the NIC driver refuses it) ibv_reg_mr on the device address when a GPU
 * peer-memory module (nvidia_peermem, nv_peer_mem) is loaded to pin it. *out set on success.
 */
static int reg_device(struct verbs_ep *ep, void *addr, size_t len, int flags, int device,
		      struct ibv_mr **out)
{
	const char *peermem = gpu_peermem_module(NULL);
	struct gpu_ptr_info pi;
	enum gpu_reg_method method;
	char dmabuf_err[160] = "";
	int rc = gpu_init(), dmabuf_ok;

	*out = NULL;
	if (rc) {
		char why[256];

		snprintf(why, sizeof(why), "%s", rdag_last_error());
		return err_set(rc, "verbs: %s: registering device memory: %s", ep->sel.dev_name, why);
	}
	rc = gpu_ptr_classify(addr, &pi);
	if (rc)
		return rc;
	if (pi.type != GPU_MEM_DEVICE || pi.device != device)
		return err_set(RDAG_EINVAL, "verbs: %p is not device memory of GPU %d (%s, device %d)", addr,
			       device, pi.type == GPU_MEM_DEVICE ? "device memory" : "host memory",
			       pi.device);
	dmabuf_ok = gpu_dmabuf_supported(device) > 0;
	method = gpu_reg_method_choose(dmabuf_ok, peermem != NULL);
	if (method == GPU_REG_DMABUF) {
		uint64_t off = 0;
		int fd = -1;

		rc = gpu_dmabuf_get(addr, len, &fd, &off);
		if (rc == 0) {
			*out = ibv_reg_dmabuf_mr(ep->pd, off, len, (uint64_t)(uintptr_t)addr, fd, flags);
			if (!*out)
				snprintf(dmabuf_err, sizeof(dmabuf_err), "ibv_reg_dmabuf_mr: %s",
					 strerror(errno));
			close(fd); /* the registration holds its own reference to the dma-buf */
		} else {
			snprintf(dmabuf_err, sizeof(dmabuf_err), "%s", rdag_last_error());
		}
		if (*out) {
			report_method(ep, GPU_REG_DMABUF, NULL);
			LOG_DEBUG("verbs: %s: %zu bytes of GPU %d registered with a dma-buf",
				  ep->sel.dev_name, len, device);
			return 0;
		}
		if (!peermem)
			return err_set(RDAG_EIO, "verbs: %s: registering %zu bytes of GPU %d: %s, and no "
						 "peer-memory module (nvidia_peermem, nv_peer_mem) is loaded",
				       ep->sel.dev_name, len, device, dmabuf_err);
		method = GPU_REG_PEERMEM;
	}
	if (method == GPU_REG_PEERMEM) {
		*out = ibv_reg_mr(ep->pd, addr, len, flags);
		if (!*out)
			return err_set(RDAG_EIO, "verbs: %s: ibv_reg_mr(%p, %zu bytes of GPU %d) with %s: %s%s%s",
				       ep->sel.dev_name, addr, len, device, peermem, strerror(errno),
				       dmabuf_err[0] ? "; dma-buf before it: " : "", dmabuf_err);
		report_method(ep, GPU_REG_PEERMEM, peermem);
		LOG_DEBUG("verbs: %s: %zu bytes of GPU %d registered through %s", ep->sel.dev_name, len,
			  device, peermem);
		return 0;
	}
	return err_set(RDAG_ENOSYS, "verbs: %s: cannot register memory of GPU %d: the device has no "
				    "dma-buf support and no peer-memory module (nvidia_peermem, "
				    "nv_peer_mem) is loaded",
		       ep->sel.dev_name, device);
}

int verbs_mr_reg(struct fab_ep *fep, void *addr, size_t len, uint32_t access, enum fab_mem_kind kind,
		 int device, struct fab_mr *mr)
{
	struct verbs_ep *ep = (struct verbs_ep *)fep;
	struct verbs_mr *m;
	int flags = IBV_ACCESS_LOCAL_WRITE;

	if (!mr)
		return err_set(RDAG_EINVAL, "verbs: mr_reg without a fab_mr");
	memset(mr, 0, sizeof(*mr));
	if (kind != FAB_MEM_HOST && kind != FAB_MEM_CUDA)
		return err_set(RDAG_EINVAL, "verbs: unknown memory kind %d", (int)kind);
	if (!addr || len == 0)
		return err_set(RDAG_EINVAL, "verbs: cannot register %zu bytes at %p", len, addr);
	if (access & ~(uint32_t)(FAB_ACCESS_LOCAL | FAB_ACCESS_REMOTE_WRITE | FAB_ACCESS_REMOTE_READ))
		return err_set(RDAG_EINVAL, "verbs: unknown access bits 0x%x", access);
	if (access & FAB_ACCESS_REMOTE_WRITE)
		flags |= IBV_ACCESS_REMOTE_WRITE;
	if (access & FAB_ACCESS_REMOTE_READ)
		flags |= IBV_ACCESS_REMOTE_READ;
	m = calloc(1, sizeof(*m));
	if (!m)
		return err_set(RDAG_ENOMEM, "verbs: out of memory");
	if (kind == FAB_MEM_CUDA) {
		int rc = reg_device(ep, addr, len, flags, device, &m->mr);

		if (rc) {
			free(m);
			return rc;
		}
	} else {
		m->mr = ibv_reg_mr(ep->pd, addr, len, flags);
	}
	if (!m->mr) {
		int e = errno;

		free(m);
		return err_set(e == ENOMEM ? RDAG_ENOMEM : RDAG_EIO,
			       "verbs: ibv_reg_mr(%p, %zu bytes) on %s: %s%s", addr, len, ep->sel.dev_name,
			       strerror(e), e == ENOMEM || e == EPERM ? " (check ulimit -l, RLIMIT_MEMLOCK)" : "");
	}
	m->next = ep->mrs;
	if (ep->mrs)
		ep->mrs->prev = m;
	ep->mrs = m;
	ep->nmrs++;
	mr->desc = m->mr;
	mr->rkey = m->mr->rkey;
	mr->addr = addr;
	mr->len = len;
	mr->remote_base = (uint64_t)(uintptr_t)addr;
	mr->prov = m;
	return 0;
}

int verbs_mr_dereg(struct fab_ep *fep, struct fab_mr *mr)
{
	struct verbs_ep *ep = (struct verbs_ep *)fep;
	struct verbs_mr *m;
	int e;

	if (!mr || !mr->prov)
		return err_set(RDAG_EINVAL, "verbs: mr_dereg of a registration that is not there");
	m = mr->prov;
	e = ibv_dereg_mr(m->mr);
	if (e)
		return err_set(RDAG_EBUSY, "verbs: ibv_dereg_mr: %s", strerror(e));
	if (m->prev)
		m->prev->next = m->next;
	else
		ep->mrs = m->next;
	if (m->next)
		m->next->prev = m->prev;
	ep->nmrs--;
	free(m);
	memset(mr, 0, sizeof(*mr));
	return 0;
}

/* ---- posting ---- */

static int lkey_of(void *desc, uint32_t *lkey)
{
	if (!desc)
		return -1;
	*lkey = ((struct ibv_mr *)desc)->lkey;
	return 0;
}

/*
 * The peer to post to, or an error naming why not. A connection that failed (or whose peer
 * disconnected) keeps its QP, in error, until close: posts to it are accepted and each completes
 * with an error (flushed), so every operation still gets its one completion.
 */
static int post_peer(struct verbs_ep *ep, fab_peer_t peer, struct verbs_peer **out)
{
	struct verbs_peer *p;

	if (!ep->peers || peer >= ep->npeers)
		return err_set(RDAG_EINVAL, "verbs: peer %u is not a connected rank (%u peers)", peer,
			       ep->peers ? ep->npeers : 0);
	p = &ep->peers[peer];
	if (p->self)
		return err_set(RDAG_EINVAL, "verbs: rank %u cannot post to itself", peer);
	if (!p->qp || (p->state != VP_CONNECTED && p->state != VP_DISCONNECTED))
		return err_set(RDAG_EINVAL, "verbs: rank %u is not connected (%s)", peer,
			       p->why[0] ? p->why : "connection not set up");
	*out = p;
	return 0;
}

/* Accounts one posted WR (see the comment at the top). */
static void account(struct verbs_ep *ep, struct verbs_peer *p, const struct ibv_send_wr *wr,
		    enum fab_op op, enum verbs_slot_kind kind)
{
	struct verbs_sq_slot *s = &p->slots[(p->slot_head + p->sq_used) % ep->sq_depth];

	s->wr_id = wr->wr_id;
	s->op = (uint8_t)op;
	s->kind = (uint8_t)kind;
	p->sq_used++;
	if (wr->send_flags & IBV_SEND_SIGNALED) {
		struct verbs_sig *g = &p->sigs[(p->sig_head + p->sig_count) % ep->sq_depth];

		g->retire = p->unsignaled + 1;
		g->report = kind == VS_OP;
		p->sig_count++;
		p->unsignaled = 0;
	} else {
		p->unsignaled++;
	}
}

/*
 * Posts n WRs (filled but for wr_id, next and the signalled flag). The last one of the last
 * batch ends the operation and is of kind `last_kind` (VS_OP or VS_INJECT); the others are
 * middle chunks. The caller has checked that the queue has room.
 */
static int post_wrs(struct verbs_ep *ep, struct verbs_peer *p, struct ibv_send_wr *wrs, uint32_t n,
		    enum fab_op op, void *context, int last_batch, enum verbs_slot_kind last_kind)
{
	struct ibv_send_wr *bad = NULL;
	uint32_t unsig = p->unsignaled;
	int e;

	for (uint32_t i = 0; i < n; i++) {
		int last = last_batch && i + 1 == n;
		enum verbs_slot_kind kind = last ? last_kind : VS_MIDDLE;

		if (kind == VS_OP)
			wrs[i].wr_id = (uint64_t)(uintptr_t)context;
		else
			wrs[i].wr_id = (uint64_t)(uintptr_t)&p->slots[(p->slot_head + p->sq_used + i) %
								  ep->sq_depth];
		wrs[i].next = i + 1 < n ? &wrs[i + 1] : NULL;
		if (kind == VS_OP || unsig + 1 >= ep->sig_interval) {
			wrs[i].send_flags |= IBV_SEND_SIGNALED;
			unsig = 0;
		} else {
			unsig++;
		}
	}
	e = ibv_post_send(p->qp, wrs, &bad);
	for (uint32_t i = 0; i < n; i++) {
		if (e && &wrs[i] == bad)
			break;
		account(ep, p, &wrs[i], op, last_batch && i + 1 == n ? last_kind : VS_MIDDLE);
	}
	if (e)
		return err_set(e == ENOMEM ? RDAG_EAGAIN : RDAG_EIO, "verbs: ibv_post_send to rank %u: %s",
			       p->rank, strerror(e));
	return 0;
}

/* Fills ep->wrs[0] for a send of len bytes; inline when it fits. */
static int fill_send(struct verbs_ep *ep, const void *buf, size_t len, void *desc)
{
	struct ibv_send_wr *wr = &ep->wrs[0];
	struct ibv_sge *sge = &ep->sges[0];

	memset(wr, 0, sizeof(*wr));
	wr->opcode = IBV_WR_SEND;
	if (!len)
		return 0;
	sge->addr = (uint64_t)(uintptr_t)buf;
	sge->length = (uint32_t)len;
	sge->lkey = 0;
	wr->sg_list = sge;
	wr->num_sge = 1;
	if (len <= ep->max_inline)
		wr->send_flags = IBV_SEND_INLINE;
	else if (lkey_of(desc, &sge->lkey) != 0)
		return err_set(RDAG_EINVAL, "verbs: send of %zu bytes (above inline %u) from an "
					    "unregistered buffer (desc NULL)",
			       len, ep->max_inline);
	return 0;
}

int verbs_send(struct fab_ep *fep, fab_peer_t peer, const void *buf, size_t len, void *desc, void *context)
{
	struct verbs_ep *ep = (struct verbs_ep *)fep;
	struct verbs_peer *p;
	int rc;

	rc = post_peer(ep, peer, &p);
	if (rc)
		return rc;
	if (len > ep->attr.max_msg_size)
		return err_set(RDAG_EINVAL, "verbs: send of %zu bytes exceeds max_msg_size %zu", len,
			       ep->attr.max_msg_size);
	if (p->sq_used + 1 > ep->sq_depth)
		return RDAG_EAGAIN;
	rc = fill_send(ep, buf, len, desc);
	if (rc)
		return rc;
	return post_wrs(ep, p, ep->wrs, 1, FAB_OP_SEND, context, 1, VS_OP);
}

int verbs_inject(struct fab_ep *fep, fab_peer_t peer, const void *buf, size_t len)
{
	struct verbs_ep *ep = (struct verbs_ep *)fep;
	struct verbs_peer *p;
	int rc;

	rc = post_peer(ep, peer, &p);
	if (rc)
		return rc;
	if (ep->max_inline == 0)
		return err_set(RDAG_ENOSYS, "verbs: %s takes no inline data: no inject", ep->sel.dev_name);
	if (len > ep->max_inline)
		return err_set(RDAG_EINVAL, "verbs: inject of %zu bytes exceeds inject_size %u", len,
			       ep->max_inline);
	if (p->sq_used + 1 > ep->sq_depth)
		return RDAG_EAGAIN;
	rc = fill_send(ep, buf, len, NULL);
	if (rc)
		return rc;
	return post_wrs(ep, p, ep->wrs, 1, FAB_OP_SEND, NULL, 1, VS_INJECT);
}

int verbs_write(struct fab_ep *fep, fab_peer_t peer, const void *buf, size_t len, void *desc,
		uint64_t remote_addr, uint64_t rkey, int has_imm, uint32_t imm, void *context)
{
	struct verbs_ep *ep = (struct verbs_ep *)fep;
	struct verbs_peer *p;
	uint32_t lkey = 0, nch, done = 0;
	size_t off = 0;
	int rc, inl;

	rc = post_peer(ep, peer, &p);
	if (rc)
		return rc;
	if (len > ep->attr.max_write_size)
		return err_set(RDAG_EINVAL, "verbs: write of %zu bytes exceeds max_write_size %zu", len,
			       ep->attr.max_write_size);
	if (rkey > UINT32_MAX)
		return err_set(RDAG_EINVAL, "verbs: rkey 0x%llx does not fit 32 bits",
			       (unsigned long long)rkey);
	/*
	 * Larger than one WR can carry: chunks of ep->chunk bytes, the immediate (if any) on a
	 * trailing zero-length WR so the target's completion does not show a partial length.
	 */
	nch = len ? (uint32_t)((len + ep->chunk - 1) / ep->chunk) : 1;
	if (nch > 1 && has_imm)
		nch++;
	inl = len > 0 && len <= ep->max_inline;
	if (len && !inl && lkey_of(desc, &lkey) != 0)
		return err_set(RDAG_EINVAL, "verbs: write of %zu bytes from an unregistered buffer (desc NULL)",
			       len);
	if (p->sq_used + nch > ep->sq_depth)
		return RDAG_EAGAIN;
	while (done < nch) {
		uint32_t batch = nch - done < 16 ? nch - done : 16;

		for (uint32_t i = 0; i < batch; i++) {
			struct ibv_send_wr *wr = &ep->wrs[i];
			struct ibv_sge *sge = &ep->sges[i];
			size_t n = len - off < ep->chunk ? len - off : ep->chunk;
			int last = done + i + 1 == nch;

			memset(wr, 0, sizeof(*wr));
			wr->opcode = last && has_imm ? IBV_WR_RDMA_WRITE_WITH_IMM : IBV_WR_RDMA_WRITE;
			if (last && has_imm)
				wr->imm_data = htonl(imm);
			wr->wr.rdma.remote_addr = remote_addr + (n ? off : 0);
			wr->wr.rdma.rkey = (uint32_t)rkey;
			if (n) {
				sge->addr = (uint64_t)(uintptr_t)buf + off;
				sge->length = (uint32_t)n;
				sge->lkey = lkey;
				wr->sg_list = sge;
				wr->num_sge = 1;
				if (inl)
					wr->send_flags = IBV_SEND_INLINE;
			}
			off += n;
		}
		rc = post_wrs(ep, p, ep->wrs, batch, FAB_OP_WRITE, context, done + batch == nch, VS_OP);
		if (rc)
			return rc;
		done += batch;
	}
	return 0;
}

int verbs_post_recv(struct fab_ep *fep, void *buf, size_t len, void *desc, void *context)
{
	struct verbs_ep *ep = (struct verbs_ep *)fep;
	struct ibv_recv_wr wr, *bad = NULL;
	struct ibv_sge sge;
	int e;

	if (ep->srq_posted >= ep->srq_depth)
		return err_set(RDAG_EAGAIN, "verbs: shared receive queue full (%u posted)", ep->srq_posted);
	if (len > UINT32_MAX)
		return err_set(RDAG_EINVAL, "verbs: receive buffer of %zu bytes is too large", len);
	memset(&wr, 0, sizeof(wr));
	wr.wr_id = (uint64_t)(uintptr_t)context;
	if (len) {
		sge.addr = (uint64_t)(uintptr_t)buf;
		sge.length = (uint32_t)len;
		if (lkey_of(desc, &sge.lkey) != 0)
			return err_set(RDAG_EINVAL, "verbs: receive into an unregistered buffer (desc NULL)");
		wr.sg_list = &sge;
		wr.num_sge = 1;
	}
	e = ibv_post_srq_recv(ep->srq, &wr, &bad);
	if (e)
		return err_set(e == ENOMEM ? RDAG_EAGAIN : RDAG_EIO, "verbs: ibv_post_srq_recv: %s",
			       strerror(e));
	ep->srq_posted++;
	return 0;
}

/* ---- completions ---- */

static int status_code(enum ibv_wc_status s)
{
	switch (s) {
	case IBV_WC_SUCCESS: return 0;
	case IBV_WC_WR_FLUSH_ERR: return RDAG_ECANCELED;
	case IBV_WC_RETRY_EXC_ERR: return RDAG_EPEER_DEAD;
	case IBV_WC_RNR_RETRY_EXC_ERR: return RDAG_ECONNRESET;
	case IBV_WC_REM_ACCESS_ERR:
	case IBV_WC_LOC_PROT_ERR:
	case IBV_WC_LOC_ACCESS_ERR: return RDAG_EACCES;
	case IBV_WC_LOC_LEN_ERR:
	case IBV_WC_REM_INV_REQ_ERR: return RDAG_EINVAL;
	case IBV_WC_REM_ABORT_ERR: return RDAG_ECONNRESET;
	default: return RDAG_EIO;
	}
}

static const char *op_str(enum fab_op op)
{
	switch (op) {
	case FAB_OP_SEND: return "send";
	case FAB_OP_RECV: return "receive";
	case FAB_OP_WRITE: return "write";
	case FAB_OP_REMOTE_WRITE: return "remote write";
	}
	return "operation";
}

/* First failure on a peer's QP: remember it, move the connection to error, tell the peer. */
static void peer_qp_failed(struct verbs_ep *ep, struct verbs_peer *p, const char *what,
			   const struct ibv_wc *wc)
{
	if (p->qp_error)
		return;
	p->qp_error = 1;
	if (wc->status == IBV_WC_WR_FLUSH_ERR)
		snprintf(p->why, sizeof(p->why), "%s failed: the connection was already in error (work "
						 "request flushed; the peer hit an error or went away)",
			 what);
	else
		snprintf(p->why, sizeof(p->why), "%s failed: %s (status %d, vendor error 0x%x)", what,
			 ibv_wc_status_str(wc->status), (int)wc->status, wc->vendor_err);
	LOG_WARN("verbs: rank %u: connection to rank %u failed: %s", ep->rank, p->rank, p->why);
	if (p->state == VP_CONNECTED && p->id)
		rdma_disconnect(p->id); /* the peer learns at once (DISCONNECTED) */
}

static void fill_error(struct fab_cqe *c, void *context, enum fab_op op, int status, uint32_t peer,
		       const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static void fill_error(struct fab_cqe *c, void *context, enum fab_op op, int status, uint32_t peer,
		       const char *fmt, ...)
{
	va_list ap;

	memset(c, 0, sizeof(*c));
	c->context = context;
	c->op = op;
	c->status = status;
	c->peer = peer;
	va_start(ap, fmt);
	vsnprintf(c->errmsg, sizeof(c->errmsg), fmt, ap);
	va_end(ap);
}

/* Finds the slot of wr_id among the outstanding ones, oldest first; its offset or UINT32_MAX. */
static uint32_t find_slot(const struct verbs_ep *ep, const struct verbs_peer *p, uint64_t wr_id)
{
	for (uint32_t k = 0; k < p->sq_used; k++)
		if (p->slots[(p->slot_head + k) % ep->sq_depth].wr_id == wr_id)
			return k;
	return UINT32_MAX;
}

/* An error on a peer's send queue; returns 1 if it produced a fab_cqe in *c, else 0. */
static int send_error(struct verbs_ep *ep, struct verbs_peer *p, const struct ibv_wc *wc,
		      struct fab_cqe *c)
{
	struct verbs_sq_slot s = { wc->wr_id, FAB_OP_SEND, VS_OP };
	int first = !p->qp_error, code = status_code(wc->status);

	if (wc->status == IBV_WC_WR_FLUSH_ERR && p->qp_error && p->first_code == RDAG_EPEER_DEAD)
		code = RDAG_EPEER_DEAD; /* flushed because the peer disconnected */
	uint32_t k;

	/*
	 * Every WR before the failing one completed: on the first error the failing WR lies in the
	 * unsignalled run at the head (wr_ids there are unique); flushes then come in order.
	 */
	k = find_slot(ep, p, wc->wr_id);
	if (k != UINT32_MAX) {
		s = p->slots[(p->slot_head + k) % ep->sq_depth];
		p->slot_head = (p->slot_head + k + 1) % ep->sq_depth;
		p->sq_used -= k + 1;
	} else {
		LOG_ERROR("verbs: error completion for rank %u matches no posted work request", p->rank);
	}
	p->sig_head = 0;
	p->sig_count = 0;
	p->unsignaled = 0;
	if (first) {
		char what[48];

		snprintf(what, sizeof(what), "%s to rank %u", op_str((enum fab_op)s.op), p->rank);
		p->first_code = code;
		peer_qp_failed(ep, p, what, wc);
	}
	switch (s.kind) {
	case VS_MIDDLE:
		if (first)
			p->carry = 1; /* the operation's final WR (flushed next) reports this error */
		return 0;
	case VS_INJECT:
		if (!first)
			return 0;
		fill_error(c, NULL, FAB_OP_SEND, code, p->rank, "verbs: inject to rank %u failed: %s",
			   p->rank, p->why);
		return 1;
	default:
		break;
	}
	if (code == RDAG_EPEER_DEAD && wc->status == IBV_WC_WR_FLUSH_ERR) {
		fill_error(c, (void *)(uintptr_t)s.wr_id, (enum fab_op)s.op, code, p->rank,
			   "verbs: %s to rank %u failed: %s", op_str((enum fab_op)s.op), p->rank, p->why);
	} else if (first || wc->status != IBV_WC_WR_FLUSH_ERR) {
		fill_error(c, (void *)(uintptr_t)s.wr_id, (enum fab_op)s.op, code, p->rank,
			   "verbs: %s to rank %u failed: %s (vendor error 0x%x)", op_str((enum fab_op)s.op),
			   p->rank, ibv_wc_status_str(wc->status), wc->vendor_err);
	} else if (p->carry) {
		p->carry = 0;
		fill_error(c, (void *)(uintptr_t)s.wr_id, (enum fab_op)s.op, p->first_code, p->rank,
			   "verbs: %s", p->why);
	} else {
		fill_error(c, (void *)(uintptr_t)s.wr_id, (enum fab_op)s.op, RDAG_ECANCELED, p->rank,
			   "verbs: %s to rank %u cancelled: %s", op_str((enum fab_op)s.op), p->rank,
			   p->why);
	}
	return 1;
}

/* A send-queue completion; returns 1 if it produced a fab_cqe in *c, else 0. */
static int send_wc(struct verbs_ep *ep, const struct ibv_wc *wc, struct fab_cqe *c)
{
	uint32_t r = verbs_qpmap_find(ep, wc->qp_num);
	struct verbs_peer *p = r == FAB_PEER_UNKNOWN ? NULL : &ep->peers[r];
	const struct verbs_sq_slot *s;
	struct verbs_sig g;

	if (!p) {
		/* A QP we no longer track (cannot happen before close); report errors only. */
		if (wc->status == IBV_WC_SUCCESS)
			return 0;
		fill_error(c, NULL, FAB_OP_SEND, status_code(wc->status), FAB_PEER_UNKNOWN,
			   "verbs: operation on qp %u failed: %s", wc->qp_num, ibv_wc_status_str(wc->status));
		return 1;
	}
	if (wc->status != IBV_WC_SUCCESS)
		return send_error(ep, p, wc, c);
	if (p->sig_count == 0 || p->sigs[p->sig_head].retire > p->sq_used) {
		LOG_ERROR("verbs: send-queue accounting out of step for rank %u (%u signalled, %u used)",
			  p->rank, p->sig_count, p->sq_used);
		return 0;
	}
	g = p->sigs[p->sig_head];
	p->sig_head = (p->sig_head + 1) % ep->sq_depth;
	p->sig_count--;
	s = &p->slots[(p->slot_head + g.retire - 1) % ep->sq_depth];
	if (s->wr_id != wc->wr_id)
		LOG_ERROR("verbs: completion for rank %u does not match its slot", p->rank);
	p->slot_head = (p->slot_head + g.retire) % ep->sq_depth;
	p->sq_used -= g.retire;
	if (!g.report)
		return 0;
	memset(c, 0, sizeof(*c));
	c->context = (void *)(uintptr_t)wc->wr_id;
	c->op = (enum fab_op)s->op;
	c->peer = p->rank;
	return 1;
}

/* A receive completion (always one fab_cqe). */
static void recv_wc(struct verbs_ep *ep, const struct ibv_wc *wc, struct fab_cqe *c)
{
	uint32_t r = verbs_qpmap_find(ep, wc->qp_num);

	if (ep->srq_posted)
		ep->srq_posted--;
	memset(c, 0, sizeof(*c));
	c->context = (void *)(uintptr_t)wc->wr_id;
	c->peer = r;
	if (wc->status != IBV_WC_SUCCESS) {
		struct verbs_peer *p = r == FAB_PEER_UNKNOWN ? NULL : &ep->peers[r];

		if (p && wc->status != IBV_WC_WR_FLUSH_ERR) {
			char what[48];

			snprintf(what, sizeof(what), "receive from rank %u", p->rank);
			peer_qp_failed(ep, p, what, wc);
		}
		fill_error(c, c->context, FAB_OP_RECV, status_code(wc->status), r,
			   "verbs: receive from rank %d failed: %s (vendor error 0x%x)",
			   r == FAB_PEER_UNKNOWN ? -1 : (int)r, ibv_wc_status_str(wc->status), wc->vendor_err);
		return;
	}
	c->len = wc->byte_len;
	if (wc->opcode == IBV_WC_RECV_RDMA_WITH_IMM) {
		c->op = FAB_OP_REMOTE_WRITE;
		c->imm = ntohl(wc->imm_data);
		c->has_imm = 1;
	} else {
		c->op = FAB_OP_RECV;
		if (wc->wc_flags & IBV_WC_WITH_IMM) {
			c->imm = ntohl(wc->imm_data);
			c->has_imm = 1;
		}
	}
}

/* Reaps completions from both CQs into out (at most max); returns the count or a code. */
static int reap(struct verbs_ep *ep, struct fab_cqe *out, int max)
{
	struct ibv_wc wc[16];
	int n = 0, k;

	while (n < max) {
		int want = max - n < 16 ? max - n : 16;

		k = ibv_poll_cq(ep->scq, want, wc);
		if (k < 0)
			return err_set(RDAG_EIO, "verbs: ibv_poll_cq (send): %d", k);
		for (int i = 0; i < k; i++)
			n += send_wc(ep, &wc[i], &out[n]);
		if (k < want)
			break;
	}
	while (n < max) {
		int want = max - n < 16 ? max - n : 16;

		k = ibv_poll_cq(ep->rcq, want, wc);
		if (k < 0)
			return err_set(RDAG_EIO, "verbs: ibv_poll_cq (receive): %d", k);
		for (int i = 0; i < k; i++)
			recv_wc(ep, &wc[i], &out[n++]);
		if (k < want)
			break;
	}
	return n;
}

int verbs_poll(struct fab_ep *fep, struct fab_cqe *out, int max)
{
	struct verbs_ep *ep = (struct verbs_ep *)fep;
	int n = 0, k;

	if (max <= 0)
		return 0;
	while (ep->pending_count > 0 && n < max) {
		out[n++] = ep->pending[ep->pending_head];
		ep->pending_head = (ep->pending_head + 1) % VERBS_PENDING;
		ep->pending_count--;
	}
	if (n < max) {
		k = reap(ep, out + n, max - n);
		if (k < 0)
			return k;
		n += k;
	}
	if (n == 0 && (++ep->empty_polls & 255) == 0) {
		/*
		 * Busy-pollers never call arm: look for disconnects now and then, at most every
		 * VERBS_CM_CHECK_MS (a syscall each; expensive in a TCG guest, so never per poll).
		 */
		int64_t now = verbs_now_ms();

		if (now - ep->cm_checked_ms >= VERBS_CM_CHECK_MS) {
			ep->cm_checked_ms = now;
			verbs_cm_drain(ep);
		}
	}
	return n;
}

int verbs_wait_fd(struct fab_ep *fep)
{
	return ((struct verbs_ep *)fep)->epfd;
}

void verbs_ack_cq_events(struct verbs_ep *ep)
{
	if (ep->scq_unacked) {
		ibv_ack_cq_events(ep->scq, ep->scq_unacked);
		ep->scq_unacked = 0;
	}
	if (ep->rcq_unacked) {
		ibv_ack_cq_events(ep->rcq, ep->rcq_unacked);
		ep->rcq_unacked = 0;
	}
}

int verbs_arm(struct fab_ep *fep)
{
	struct verbs_ep *ep = (struct verbs_ep *)fep;
	struct ibv_cq *cq;
	void *cctx;
	int k;

	/* Consume the channel's events so the fd stops being readable, then acknowledge them. */
	while (ibv_get_cq_event(ep->comp_ch, &cq, &cctx) == 0) {
		if (cq == ep->scq)
			ep->scq_unacked++;
		else
			ep->rcq_unacked++;
	}
	verbs_ack_cq_events(ep);
	verbs_cm_drain(ep);
	if (ep->pending_count > 0)
		return RDAG_EAGAIN;
	if (ibv_req_notify_cq(ep->scq, 0) != 0 || ibv_req_notify_cq(ep->rcq, 0) != 0)
		return err_set(RDAG_EIO, "verbs: ibv_req_notify_cq: %s", strerror(errno));
	/* Close the race: completions that arrived before the request would raise no event. */
	ep->pending_head = 0;
	k = reap(ep, ep->pending, VERBS_PENDING);
	if (k < 0)
		return k;
	ep->pending_count = k;
	return k > 0 ? RDAG_EAGAIN : 0;
}
