/* Transport messages: HANDSHAKE (connection set-up), CREDIT (flow-control credits returned) and
 * NCCL_ID (the unique id of a pair's NCCL communicator). */
#include "wire/codec.h"

/*
 * HANDSHAKE body (48 bytes, message 72):
 *   24 u16 max_version | 26 u16 worker_id | 28 u16 world_size | 30 u16 flags
 *   32 u64 job_token | 40 u64 arena_addr | 48 u64 arena_key | 56 u64 arena_size
 *   64 u32 credits | 68 u32 max_msg
 * CREDIT body (8 bytes, message 32): 24 u32 credits | 28 u32 reserved (0)
 * NCCL_ID body (136 bytes, message 160): 24 u32 device | 28 u32 peer_device | 32 u8 id[128]
 */
#define HS_SIZE 72u
#define CREDIT_SIZE 32u
#define NCCL_ID_SIZE (32u + WIRE_NCCL_ID_BYTES)
#define HS_FLAGS (WIRE_HS_ACK | WIRE_HS_ARENA_GPU | WIRE_HS_NCCL)

/* The handshake's rules, shared by encoder and decoder: returns a message or NULL if valid. */
static const char *hs_invalid(const struct wire_handshake *hs, uint16_t src, int *code)
{
	*code = RDAG_EWIRE_FIELD;
	if (hs->max_version < 1)
		return "protocol version 0";
	if (hs->worker_id != src)
		return "worker id differs from the header's sender";
	if (hs->worker_id >= hs->world_size)
		return "worker id not below the world size";
	if (hs->max_msg < WIRE_HDR_SIZE)
		return "largest receivable message smaller than a header";
	if (!hs->arena_size && (hs->arena_addr || hs->arena_key))
		return "arena address or key without an arena";
	if (hs->arena_addr + hs->arena_size < hs->arena_addr) {
		*code = RDAG_EWIRE_LENGTH;
		return "arena address + size overflows";
	}
	if (hs->flags & ~HS_FLAGS) {
		*code = RDAG_EWIRE_FLAGS;
		return "reserved flags set";
	}
	return NULL;
}

int wire_encode_handshake(void *buf, size_t cap, const struct wire_env *env,
			  const struct wire_handshake *hs, size_t *len)
{
	uint8_t *p = buf;
	const char *why;
	int code, rc;

	why = hs_invalid(hs, env ? env->src : 0, &code);
	if (why)
		return err_set(RDAG_EINVAL, "wire: HANDSHAKE: %s", why);
	rc = wire_fit(WIRE_HANDSHAKE, HS_SIZE, cap, len);
	if (rc)
		return rc;
	wire_put_hdr(p, WIRE_HANDSHAKE, HS_SIZE, env);
	st16(p + 24, hs->max_version);
	st16(p + 26, hs->worker_id);
	st16(p + 28, hs->world_size);
	st16(p + 30, hs->flags);
	st64(p + 32, hs->job_token);
	st64(p + 40, hs->arena_addr);
	st64(p + 48, hs->arena_key);
	st64(p + 56, hs->arena_size);
	st32(p + 64, hs->credits);
	st32(p + 68, hs->max_msg);
	return 0;
}

int wire_encode_credit(void *buf, size_t cap, const struct wire_env *env,
		       const struct wire_credit *c, size_t *len)
{
	uint8_t *p = buf;
	int rc = wire_fit(WIRE_CREDIT, CREDIT_SIZE, cap, len);

	if (rc)
		return rc;
	wire_put_hdr(p, WIRE_CREDIT, CREDIT_SIZE, env);
	st32(p + 24, c->credits);
	st32(p + 28, 0);
	return 0;
}

int wire_encode_nccl_id(void *buf, size_t cap, const struct wire_env *env,
			const struct wire_nccl_id *n, size_t *len)
{
	uint8_t *p = buf;
	int rc;

	if (!n->id)
		return err_set(RDAG_EINVAL, "wire: NCCL_ID: no id bytes");
	rc = wire_fit(WIRE_NCCL_ID, NCCL_ID_SIZE, cap, len);
	if (rc)
		return rc;
	wire_put_hdr(p, WIRE_NCCL_ID, NCCL_ID_SIZE, env);
	st32(p + 24, n->device);
	st32(p + 28, n->peer_device);
	memcpy(p + 32, n->id, WIRE_NCCL_ID_BYTES);
	return 0;
}

int wire_dec_transport(const uint8_t *b, const uint8_t *end, struct wire_msg *m)
{
	const uint8_t *p = b - WIRE_HDR_SIZE;
	int rc;

	if (m->kind == WIRE_NCCL_ID) {
		/* Exactly one id: shorter or longer is truncated or trailing, as for any fixed body. */
		rc = wire_fixed(b, end, NCCL_ID_SIZE - WIRE_HDR_SIZE, m);
		if (rc)
			return rc;
		m->u.nccl_id.device = ld32(p + 24);
		m->u.nccl_id.peer_device = ld32(p + 28);
		m->u.nccl_id.id = p + 32;
		return 0;
	}

	if (m->kind == WIRE_CREDIT) {
		rc = wire_fixed(b, end, CREDIT_SIZE - WIRE_HDR_SIZE, m);
		if (rc)
			return rc;
		m->u.credit.credits = ld32(p + 24);
		if (ld32(p + 28))
			return err_set(RDAG_EWIRE_FIELD, "wire: CREDIT: non-zero reserved field");
		return 0;
	}

	struct wire_handshake *hs = &m->u.hs;
	const char *why;
	int code;

	rc = wire_fixed(b, end, HS_SIZE - WIRE_HDR_SIZE, m);
	if (rc)
		return rc;
	hs->max_version = ld16(p + 24);
	hs->worker_id = ld16(p + 26);
	hs->world_size = ld16(p + 28);
	hs->flags = ld16(p + 30);
	hs->job_token = ld64(p + 32);
	hs->arena_addr = ld64(p + 40);
	hs->arena_key = ld64(p + 48);
	hs->arena_size = ld64(p + 56);
	hs->credits = ld32(p + 64);
	hs->max_msg = ld32(p + 68);
	why = hs_invalid(hs, m->env.src, &code);
	if (why)
		return err_set(code, "wire: HANDSHAKE: %s", why);
	return 0;
}
