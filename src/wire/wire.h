/* Wire codec API: encoders into caller buffers and zero-copy, bounds-checked decoders of every message. */
#ifndef RDAG_WIRE_WIRE_H
#define RDAG_WIRE_WIRE_H

/*
 * Every message of rdag's control plane, in a fixed little-endian layout described byte by
 * byte in docs/wire-format.md. In short:
 *
 *   header (24 bytes) | body (kind-specific) | zero padding to a multiple of 8
 *
 * Strings, payloads and descriptors start on 8-byte boundaries (relative to the message start;
 * the whole message is a multiple of 8 bytes long), so inline tensor bytes are 8-aligned in
 * memory when the message buffer is. Padding and reserved bytes must be zero, so every valid
 * message has exactly one encoding: decode + re-encode gives the same bytes.
 *
 * Encoders (wire_encode_*):
 *   - write into a caller-provided buffer and never allocate;
 *   - compute the size first: if it exceeds cap they write nothing, set *len to the size
 *     needed and return RDAG_ENOSPC (cap may be 0 and buf NULL to ask for the size);
 *     otherwise they write the message, set *len to its length and return 0;
 *   - refuse input the decoder would reject with RDAG_EINVAL, so a message that encodes always
 *     decodes (RDAG_EOVERFLOW above WIRE_MAX_LENGTH). Fixed fields are checked before anything
 *     is written; tensor descriptors are checked as they are written (one pass on the hot
 *     path), so after an RDAG_EINVAL about a tensor the buffer holds a partial message, and an
 *     invalid tensor with a too-small buffer may report RDAG_ENOSPC first.
 *   - take a struct wire_env (request id, sender, piggybacked credits) for the header; NULL
 *     means all zero, which is what a message wrapped inside another must carry.
 *
 * Decoders (wire_decode, wire_decode_inner):
 *   - validate the whole message (header, every field, every tensor descriptor, padding) and
 *     fill a struct wire_msg view; they never read outside [buf, buf + len), never allocate and
 *     accept nothing trailing; a wrapper's inner message has its header checked (valid, exactly
 *     filling the rest of the wrapper, zero env) but its body is decoded by wire_decode_inner();
 *   - return one RDAG_EWIRE_* code per kind of defect (include/rdag/error.h) and record a
 *     detailed message with err_set(); a buffer shorter than the message always gives
 *     RDAG_EWIRE_TRUNCATED;
 *   - give zero-copy views: strings, payloads, inline tensor bytes and wrapped inner messages
 *     are pointers into the buffer, valid as long as the buffer is; repeated elements (tensor
 *     descriptors, device-map entries, profiling events) are read through iterators that need
 *     no further checks because the decoder validated them all.
 *
 * The hot path, for example (a PropagateGradientsReq and its receipt):
 *
 *   struct wire_env env = {req_id, my_worker_id, credits_to_return};
 *   struct wire_grad_req g = {ctx_id, msg_id, retain_graph, pass_id};
 *   size_t len;
 *   int rc = wire_encode_grad_req(buf, cap, &env, &g, grads, ngrads, &len);
 *   // rc == RDAG_ENOSPC: len is the size needed
 *
 *   struct wire_msg m;
 *   struct wire_tensor_iter it;
 *   struct wire_tensor t;
 *   if (wire_decode(rbuf, rlen, &m) == 0 && m.kind == WIRE_BACKWARD_AUTOGRAD_REQ) {
 *           wire_tensors_begin(&m.u.grad.tensors, &it);
 *           while (wire_tensor_next(&it, &t))
 *                   ... t.dtype, t.shape[0 .. t.rank), t.loc, t.u.slot.offset ...
 *   }
 *
 * Thread-safety: every function here is pure (no global state besides the calling thread's
 * last-error message) and may be called concurrently from any thread; concurrent calls must
 * not share an output buffer, a struct wire_msg or an iterator.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- constants ----------------------------------------------------------------------------- */

#define WIRE_MAGIC 0x47414452u     /* bytes 'R' 'D' 'A' 'G' as a little-endian u32 */
#define WIRE_VERSION 1u            /* the only protocol version this codec speaks */
#define WIRE_HDR_SIZE 24u          /* bytes of the common header */
#define WIRE_ALIGN 8u              /* alignment of fields, inline tensor bytes and message length */
#define WIRE_MAX_LENGTH 0xfffffff8u /* largest total message length (u32, multiple of 8) */

#define WIRE_MAX_DEPTH 4u          /* at most this many wrappers around an innermost message */
#define WIRE_MAX_RANK 8u           /* tensor rank limit */
#define WIRE_MAX_TENSORS 65536u    /* tensors per message */
#define WIRE_MAX_DEVMAP 64u        /* device-map entries in a forward wrapper */
#define WIRE_MAX_EVENTS 65536u     /* profiling events in one RUN_WITH_PROFILING_RESP */
#define WIRE_MAX_NAME 4096u        /* bytes of a function or profiling-event name */
#define WIRE_MAX_TEXT 65536u       /* bytes of an exception's error text */
#define WIRE_NCCL_ID_BYTES 128u    /* an ncclUniqueId (NCCL_UNIQUE_ID_BYTES) */

/* Message kinds (u8 on the wire). Requests and their responses are matched by env.req_id. */
enum wire_kind {
	/* transport */
	WIRE_HANDSHAKE = 0x01,         /* connection set-up, both directions */
	WIRE_CREDIT = 0x02,            /* flow-control credits returned */
	WIRE_EXCEPTION = 0x03,         /* error reply to any request */
	WIRE_NCCL_ID = 0x04,           /* an NCCL unique id for the pair's communicator (one way) */
	/* inner RPC messages */
	WIRE_RPC_CALL = 0x10,          /* user function call */
	WIRE_RPC_RESP = 0x11,          /* its reply (also the reply of WIRE_RREF_CALL) */
	WIRE_RREF_CALL = 0x12,         /* call whose result the callee keeps as an RRef */
	WIRE_RREF_FETCH_REQ = 0x13,    /* ask an RRef's owner for its value */
	WIRE_RREF_FETCH_RESP = 0x14,   /* the value */
	WIRE_RREF_DELETE = 0x15,       /* drop a reference held for the sender */
	WIRE_RDV_ANSWER = 0x16,        /* receiver: where to write a pending tensor */
	WIRE_RDV_DONE = 0x17,          /* sender: the pending tensor has been written */
	/* distributed autograd (PyTorch's MessageType names) */
	WIRE_FORWARD_AUTOGRAD_REQ = 0x20,
	WIRE_FORWARD_AUTOGRAD_RESP = 0x21,
	WIRE_BACKWARD_AUTOGRAD_REQ = 0x22,   /* PropagateGradientsReq */
	WIRE_BACKWARD_AUTOGRAD_RESP = 0x23,
	WIRE_CLEANUP_AUTOGRAD_CONTEXT_REQ = 0x24,
	WIRE_CLEANUP_AUTOGRAD_CONTEXT_RESP = 0x25,
	WIRE_RREF_BACKWARD_REQ = 0x26,
	WIRE_RREF_BACKWARD_RESP = 0x27,
	WIRE_RUN_WITH_PROFILING_REQ = 0x28,
	WIRE_RUN_WITH_PROFILING_RESP = 0x29,
	WIRE_BACKWARD_ABORT = 0x2A,          /* a pass failed: stop it (one way, no reply) */
};

/* Tensor element types (u8). 0 is never valid, so a zeroed descriptor is rejected. */
enum wire_dtype {
	WIRE_DT_F16 = 1,
	WIRE_DT_BF16 = 2,
	WIRE_DT_F32 = 3,
	WIRE_DT_F64 = 4,
	WIRE_DT_I8 = 5,
	WIRE_DT_I16 = 6,
	WIRE_DT_I32 = 7,
	WIRE_DT_I64 = 8,
	WIRE_DT_U8 = 9,
	WIRE_DT_BOOL = 10,
	WIRE_DT_C64 = 11,              /* complex of two f32 */
	WIRE_DT_C128 = 12,             /* complex of two f64 */
	WIRE_DT_F8E4M3 = 13,
	WIRE_DT_F8E5M2 = 14,
	WIRE_DT_COUNT_                 /* first unknown value */
};

/* Device types (u8). A CPU device has index 0. */
enum wire_devtype { WIRE_DEV_CPU = 0, WIRE_DEV_CUDA = 1 };

/* Where a tensor's bytes are (u8). */
enum wire_loc {
	WIRE_LOC_INLINE = 0,           /* in this message, after the descriptors */
	WIRE_LOC_SLOT = 1,             /* already written into the receiver's landing arena */
	WIRE_LOC_RDV = 2,              /* rendezvous: the receiver reads from address + key */
	WIRE_LOC_RDV_PENDING = 3,      /* rendezvous: the receiver will answer with WIRE_RDV_ANSWER */
	WIRE_LOC_NCCL = 4,             /* sent by NCCL point-to-point, matched by a tag */
	WIRE_LOC_COUNT_
};

#define WIRE_TF_REQUIRES_GRAD 0x0001u  /* struct wire_tensor.flags */
#define WIRE_RETAIN_GRAPH 0x00000001u  /* grad / rref-backward flags */

/* Handshake flags. */
#define WIRE_HS_ACK 0x0001u            /* this handshake answers the peer's */
#define WIRE_HS_ARENA_GPU 0x0002u      /* the landing arena is GPU memory */
#define WIRE_HS_NCCL 0x0004u           /* the sender can move tensors with NCCL */

/* Profiler states (u8) and configuration flags (u16) of RUN_WITH_PROFILING_REQ. */
enum wire_prof_state { WIRE_PROF_CPU = 1, WIRE_PROF_CUDA = 2, WIRE_PROF_NVTX = 3, WIRE_PROF_KINETO = 4 };
#define WIRE_PROF_SHAPES 0x0001u       /* record input shapes */
#define WIRE_PROF_MEMORY 0x0002u       /* profile memory */
#define WIRE_PROF_STACK 0x0004u        /* record stacks */
#define WIRE_PROF_FLOPS 0x0008u        /* estimate flops */
#define WIRE_PROF_MODULES 0x0010u      /* record module hierarchy */

/* ---- common types -------------------------------------------------------------------------- */

/* The per-message header fields a sender chooses. */
struct wire_env {
	uint64_t req_id;               /* request id: a response carries its request's */
	uint16_t src;                  /* sending worker id */
	uint16_t credits;              /* flow-control credits piggybacked to the receiver */
};

/* A byte string: a view into a decoded buffer, or the caller's bytes to encode. */
struct wire_bytes {
	const void *ptr;               /* may be NULL when len is 0 */
	uint32_t len;
};

struct wire_device {
	uint8_t type;                  /* enum wire_devtype */
	uint16_t index;                /* CUDA device ordinal; 0 for CPU */
};

/* A remote reference: created on worker `owner` with a 64-bit local id. */
struct wire_rref_id {
	uint16_t owner;
	uint64_t local_id;
};

/*
 * One tensor descriptor (encoder input, iterator output). Its first 16 + 8 * rank bytes have
 * the layout of the descriptor on the wire (on little-endian hosts), so the hot paths copy
 * words instead of fields: keep the order of these fields.
 */
struct wire_tensor {
	uint8_t dtype;                 /* enum wire_dtype */
	uint8_t rank;                  /* number of dims used in shape[], <= WIRE_MAX_RANK */
	uint8_t loc;                   /* enum wire_loc */
	uint8_t dev_type;              /* enum wire_devtype */
	uint16_t dev_index;            /* CUDA device ordinal; 0 for CPU */
	uint16_t flags;                /* WIRE_TF_* */
	uint64_t nbytes;               /* must equal product(shape) * element size */
	int64_t shape[WIRE_MAX_RANK];  /* dims >= 0 */
	union {
		const void *data;                                  /* WIRE_LOC_INLINE */
		struct { uint64_t offset, length; } slot;          /* WIRE_LOC_SLOT: nbytes <= length */
		struct { uint64_t addr, key; } rdv;                /* WIRE_LOC_RDV */
		uint64_t nccl_tag;                                 /* WIRE_LOC_NCCL */
	} u;                           /* nothing for WIRE_LOC_RDV_PENDING */
};

/* The validated tensor descriptors of a decoded message; read them with wire_tensor_next(). */
struct wire_tensor_list {
	uint32_t count;
	const uint8_t *desc;           /* first descriptor */
	const uint8_t *data;           /* first inline byte */
};

struct wire_tensor_iter {
	const uint8_t *desc;
	const uint8_t *data;
	uint32_t left;
};

struct wire_devpair {
	struct wire_device from, to;
};

/* Validated device-map entries of a decoded forward wrapper; read with wire_devmap_get(). */
struct wire_devmap_list {
	uint16_t count;
	const uint8_t *p;
};

struct wire_prof_event {
	struct wire_bytes name;
	uint64_t start_ns, end_ns;     /* start_ns <= end_ns */
	uint64_t thread_id;
	struct wire_device device;
};

/* Validated events of a decoded RUN_WITH_PROFILING_RESP; read with wire_event_next(). */
struct wire_event_list {
	uint32_t count;
	const uint8_t *p;
};

struct wire_event_iter {
	const uint8_t *p;
	uint32_t left;
};

/* ---- message bodies ------------------------------------------------------------------------ */

struct wire_handshake {
	uint16_t max_version;          /* highest protocol version the sender speaks (>= 1) */
	uint16_t worker_id;            /* must equal the header's env.src */
	uint16_t world_size;           /* worker_id < world_size */
	uint16_t flags;                /* WIRE_HS_* */
	uint64_t job_token;            /* 64-bit hash of the job's secret token */
	uint64_t arena_addr;           /* landing arena granted to the receiver of this message */
	uint64_t arena_key;            /*   (all three 0 when there is no arena) */
	uint64_t arena_size;
	uint32_t credits;              /* initial credits granted to the receiver */
	uint32_t max_msg;              /* largest message the sender can receive (>= WIRE_HDR_SIZE) */
};

struct wire_credit {
	uint32_t credits;              /* returned on top of the header's piggybacked credits */
};

/* NCCL_ID: the bytes of an ncclUniqueId the sender made for the communicator of this pair. */
struct wire_nccl_id {
	uint32_t device;               /* the sender's CUDA device ordinal for the communicator */
	uint32_t peer_device;          /* the receiver's device ordinal for it */
	const uint8_t *id;             /* WIRE_NCCL_ID_BYTES bytes (a view into the message) */
};

struct wire_exception {
	int32_t code;                  /* negative RDAG_E* code */
	uint16_t origin;               /* worker on which the error happened */
	struct wire_bytes text;        /* <= WIRE_MAX_TEXT bytes, not NUL-terminated */
};

/* FORWARD_AUTOGRAD_REQ / _RESP: autograd metadata around an inner message (encoder input). */
struct wire_fwd {
	uint64_t ctx_id;
	uint64_t msg_id;
	uint16_t from_worker;
	uint16_t ndevmap;              /* <= WIRE_MAX_DEVMAP */
	const struct wire_devpair *devmap;
};

struct wire_fwd_view {
	uint64_t ctx_id;
	uint64_t msg_id;
	uint16_t from_worker;
	struct wire_devmap_list devmap;
	struct wire_bytes inner;       /* the wrapped message; decode with wire_decode_inner() */
};

/* BACKWARD_AUTOGRAD_REQ (PropagateGradientsReq). */
struct wire_grad_req {
	uint64_t ctx_id;
	uint64_t msg_id;
	bool retain_graph;
	uint64_t pass_id;              /* the backward pass, (root worker << 48) | counter */
};

/* BACKWARD_ABORT: pass pass_id of context ctx_id failed with code on worker origin. */
struct wire_abort {
	uint64_t ctx_id;
	uint64_t pass_id;
	int32_t code;                  /* negative RDAG_E* code */
	uint16_t origin;               /* worker on which the error happened */
	struct wire_bytes text;        /* <= WIRE_MAX_TEXT bytes, not NUL-terminated */
};

struct wire_grad_view {
	struct wire_grad_req req;
	struct wire_tensor_list tensors;
};

struct wire_cleanup {
	uint64_t ctx_id;
};

struct wire_rref_backward {
	struct wire_rref_id rref;
	uint64_t ctx_id;
	bool retain_graph;
};

struct wire_prof_req {
	uint64_t prof_id;
	uint8_t state;                 /* enum wire_prof_state */
	uint16_t flags;                /* WIRE_PROF_* */
};

struct wire_prof_req_view {
	struct wire_prof_req req;
	struct wire_bytes inner;
};

struct wire_prof_resp_view {
	uint64_t prof_id;
	struct wire_event_list events;
	struct wire_bytes inner;
};

/* RPC_CALL (rref ignored) and RREF_CALL. */
struct wire_call {
	struct wire_rref_id rref;      /* RREF_CALL only: the id the result is kept under */
	struct wire_bytes name;        /* function name, <= WIRE_MAX_NAME bytes */
	struct wire_bytes payload;     /* opaque arguments */
};

struct wire_call_view {
	struct wire_call call;
	struct wire_tensor_list tensors;
};

/* RPC_RESP and RREF_FETCH_RESP. */
struct wire_resp_view {
	struct wire_bytes payload;
	struct wire_tensor_list tensors;
};

struct wire_rdv_answer {
	uint64_t req_id;               /* request id of the message that holds the pending tensor */
	uint32_t index;                /* its tensor index in that message */
	uint64_t addr, key, length;    /* where to write it */
};

struct wire_rdv_done {
	uint64_t req_id;
	uint32_t index;
	int32_t status;                /* 0, or the negative RDAG_E* code of a failed write */
};

/* A decoded message: the header plus a kind-specific view (union member named per kind). */
struct wire_msg {
	uint8_t kind;                  /* enum wire_kind; selects the union member */
	uint32_t length;               /* total bytes, header included */
	unsigned depth;                /* 0 for a top-level message, +1 per wrapper around it */
	struct wire_env env;
	union {
		struct wire_handshake hs;          /* HANDSHAKE */
		struct wire_credit credit;         /* CREDIT */
		struct wire_nccl_id nccl_id;       /* NCCL_ID */
		struct wire_exception exc;         /* EXCEPTION */
		struct wire_call_view call;        /* RPC_CALL, RREF_CALL */
		struct wire_resp_view resp;        /* RPC_RESP, RREF_FETCH_RESP */
		struct wire_rref_id rref;          /* RREF_FETCH_REQ, RREF_DELETE */
		struct wire_rdv_answer rdv_answer; /* RDV_ANSWER */
		struct wire_rdv_done rdv_done;     /* RDV_DONE */
		struct wire_fwd_view fwd;          /* FORWARD_AUTOGRAD_REQ/RESP */
		struct wire_grad_view grad;        /* BACKWARD_AUTOGRAD_REQ */
		struct wire_abort abort;           /* BACKWARD_ABORT */
		struct wire_cleanup cleanup;       /* CLEANUP_AUTOGRAD_CONTEXT_REQ */
		struct wire_rref_backward rref_bwd; /* RREF_BACKWARD_REQ */
		struct wire_prof_req_view prof_req; /* RUN_WITH_PROFILING_REQ */
		struct wire_prof_resp_view prof_resp; /* RUN_WITH_PROFILING_RESP */
	} u;                           /* nothing for the three empty *_RESP kinds */
};

/* ---- decoding ------------------------------------------------------------------------------ */

/*
 * Decodes and fully validates the top-level message in buf[0, len) (len must be exactly the
 * message's length) into *msg (depth 0). Returns 0 or an RDAG_EWIRE_* code; *msg is
 * unspecified on failure. Of a wrapper's inner message only the header is checked here:
 * decode it with wire_decode_inner(). Thread-safe.
 */
int wire_decode(const void *buf, size_t len, struct wire_msg *msg);

/*
 * Decodes the message wrapped by *outer (a FORWARD_AUTOGRAD_* or RUN_WITH_PROFILING_* view)
 * into *inner, with depth outer->depth + 1. An inner message must carry a zero env (request
 * id, sender, credits: RDAG_EWIRE_FIELD otherwise), and a wrapper deeper than WIRE_MAX_DEPTH
 * levels is refused with RDAG_EWIRE_NESTING. RDAG_EINVAL if *outer wraps nothing. Thread-safe.
 */
int wire_decode_inner(const struct wire_msg *outer, struct wire_msg *inner);

/*
 * Checks just the header at the start of buf (magic, version, kind, flags, length) and returns
 * the message's total length in *total, so a stream reader knows how much to wait for. len may
 * be shorter than the message but not than WIRE_HDR_SIZE (RDAG_EWIRE_TRUNCATED). Thread-safe.
 */
int wire_peek(const void *buf, size_t len, uint8_t *kind, uint32_t *total);

/*
 * Starts reading a decoded tensor list; wire_tensor_next() (inline, wire/tensor_iter.h) then
 * reads one descriptor per call into a struct wire_tensor and returns false after the last.
 * Thread-safe.
 */
static inline void wire_tensors_begin(const struct wire_tensor_list *l, struct wire_tensor_iter *it)
{
	it->desc = l->desc;
	it->data = l->data;
	it->left = l->count;
}

/* Entry i (< l->count) of a decoded device map. Thread-safe. */
void wire_devmap_get(const struct wire_devmap_list *l, uint16_t i, struct wire_devpair *out);

/* Reads the next profiling event into *ev; false once all have been read. Thread-safe. */
static inline void wire_events_begin(const struct wire_event_list *l, struct wire_event_iter *it)
{
	it->p = l->p;
	it->left = l->count;
}
bool wire_event_next(struct wire_event_iter *it, struct wire_prof_event *ev);

/* ---- encoding (see the contract at the top) ------------------------------------------------ */

/* HANDSHAKE, CREDIT, EXCEPTION (transport.c, exception.c). */
int wire_encode_handshake(void *buf, size_t cap, const struct wire_env *env,
			  const struct wire_handshake *hs, size_t *len);
int wire_encode_credit(void *buf, size_t cap, const struct wire_env *env,
		       const struct wire_credit *c, size_t *len);
/* NCCL_ID: n->id must hold WIRE_NCCL_ID_BYTES bytes. */
int wire_encode_nccl_id(void *buf, size_t cap, const struct wire_env *env,
			const struct wire_nccl_id *n, size_t *len);
int wire_encode_exception(void *buf, size_t cap, const struct wire_env *env,
			  const struct wire_exception *e, size_t *len);

/*
 * FORWARD_AUTOGRAD_REQ / _RESP (forward.c). The inner message must be a complete encoded
 * message with a zero env (its header is checked: RDAG_EINVAL). Two ways to pass it:
 *   - inner != NULL: its inner_len bytes are copied after the metadata;
 *   - inner == NULL: the caller already encoded it in place at buf + wire_fwd_prefix(f) (with
 *     cap - wire_fwd_prefix(f) bytes of room), so nothing is copied; inner_len is its length.
 */
size_t wire_fwd_prefix(const struct wire_fwd *f);
int wire_encode_fwd_req(void *buf, size_t cap, const struct wire_env *env, const struct wire_fwd *f,
			const void *inner, size_t inner_len, size_t *len);
int wire_encode_fwd_resp(void *buf, size_t cap, const struct wire_env *env, const struct wire_fwd *f,
			 const void *inner, size_t inner_len, size_t *len);

/* BACKWARD_AUTOGRAD_REQ with n gradient descriptors, and its empty response (grad.c). */
int wire_encode_grad_req(void *buf, size_t cap, const struct wire_env *env,
			 const struct wire_grad_req *req, const struct wire_tensor *tensors,
			 uint32_t n, size_t *len);
int wire_encode_grad_resp(void *buf, size_t cap, const struct wire_env *env, size_t *len);
int wire_encode_abort(void *buf, size_t cap, const struct wire_env *env,
		      const struct wire_abort *ab, size_t *len);

/* CLEANUP_AUTOGRAD_CONTEXT_REQ / _RESP (cleanup.c). */
int wire_encode_cleanup_req(void *buf, size_t cap, const struct wire_env *env,
			    const struct wire_cleanup *c, size_t *len);
int wire_encode_cleanup_resp(void *buf, size_t cap, const struct wire_env *env, size_t *len);

/* RREF_BACKWARD_REQ / _RESP, RREF_CALL, RREF_FETCH_REQ / _RESP, RREF_DELETE (rref.c). */
int wire_encode_rref_bwd_req(void *buf, size_t cap, const struct wire_env *env,
			     const struct wire_rref_backward *r, size_t *len);
int wire_encode_rref_bwd_resp(void *buf, size_t cap, const struct wire_env *env, size_t *len);
int wire_encode_rref_call(void *buf, size_t cap, const struct wire_env *env,
			  const struct wire_call *c, const struct wire_tensor *tensors, uint32_t n,
			  size_t *len);
int wire_encode_rref_fetch_req(void *buf, size_t cap, const struct wire_env *env,
			       const struct wire_rref_id *id, size_t *len);
int wire_encode_rref_fetch_resp(void *buf, size_t cap, const struct wire_env *env,
				const struct wire_bytes *payload, const struct wire_tensor *tensors,
				uint32_t n, size_t *len);
int wire_encode_rref_delete(void *buf, size_t cap, const struct wire_env *env,
			    const struct wire_rref_id *id, size_t *len);

/*
 * RUN_WITH_PROFILING_REQ / _RESP (profiling.c). Inner message passed as for the forward
 * wrapper: copied when inner != NULL, else already in place at buf + wire_prof_*_prefix().
 */
size_t wire_prof_req_prefix(void);
int wire_encode_prof_req(void *buf, size_t cap, const struct wire_env *env,
			 const struct wire_prof_req *p, const void *inner, size_t inner_len,
			 size_t *len);
/* Returns 0 and the prefix in *prefix, or RDAG_EINVAL if an event is invalid. */
int wire_prof_resp_prefix(const struct wire_prof_event *ev, uint32_t nev, size_t *prefix);
int wire_encode_prof_resp(void *buf, size_t cap, const struct wire_env *env, uint64_t prof_id,
			  const struct wire_prof_event *ev, uint32_t nev, const void *inner,
			  size_t inner_len, size_t *len);

/* RPC_CALL / RPC_RESP, RDV_ANSWER / RDV_DONE (rpc.c). */
int wire_encode_rpc_call(void *buf, size_t cap, const struct wire_env *env,
			 const struct wire_call *c, const struct wire_tensor *tensors, uint32_t n,
			 size_t *len);
int wire_encode_rpc_resp(void *buf, size_t cap, const struct wire_env *env,
			 const struct wire_bytes *payload, const struct wire_tensor *tensors,
			 uint32_t n, size_t *len);
int wire_encode_rdv_answer(void *buf, size_t cap, const struct wire_env *env,
			   const struct wire_rdv_answer *a, size_t *len);
int wire_encode_rdv_done(void *buf, size_t cap, const struct wire_env *env,
			 const struct wire_rdv_done *d, size_t *len);

/* ---- helpers ------------------------------------------------------------------------------- */

/* Bytes per element of a dtype, 0 if unknown. Thread-safe. */
unsigned wire_dtype_size(uint8_t dtype);

/* Name of a message kind ("BACKWARD_AUTOGRAD_REQ", ...), "UNKNOWN" if none. Thread-safe. */
const char *wire_kind_name(uint8_t kind);

/* True for the kinds that wrap an inner message. Thread-safe. */
bool wire_kind_wraps(uint8_t kind);

#include "wire/tensor_iter.h"

#endif /* RDAG_WIRE_WIRE_H */
