/* Test hooks of the agent (tests only, reached through rdag_internal): barriers and id counters. */
#ifndef RDAG_AGENT_AGENT_TEST_H
#define RDAG_AGENT_AGENT_TEST_H

#include <stdint.h>

#include <rdag/agent.h>

/*
 * Bootstrap barrier among every worker of a's job (collective; one caller at a time per agent).
 * Returns 0 or the bootstrap's error.
 */
int agent_test_barrier(rdag_agent_t *a);

/*
 * Sets the low 48 bits of the next context id and of the next autograd message id this worker
 * hands out (to test exhaustion: 0xffffffffffff is the last valid one).
 */
void agent_test_set_id_counters(rdag_agent_t *a, uint64_t next_ctx_low, uint64_t next_msg_low);

/*
 * Aborted backward passes seen here: local runs of a pass that ended, or were refused, because
 * another worker's part failed (*runs), and BACKWARD_ABORT messages that were the first news of
 * an abort here (*heard).
 */
void agent_test_abort_stats(rdag_agent_t *a, unsigned *runs, unsigned *heard);

/*
 * The GPU data path chosen with peer: the enum gpu_transport (>= 0), or the negative RDAG_E*
 * code saying why there is none; why gets the reason, *peer_offer what peer offered in its
 * handshake (WIRE_HS_* bits; either may be NULL). RDAG_EINVAL for a bad peer or for this worker.
 */
int agent_test_gpu_path(rdag_agent_t *a, uint32_t peer, uint16_t *peer_offer, char *why,
			size_t whylen);

/*
 * NCCL receive groups that, when their control message came, had to wait for an earlier
 * message's transfers on the same communicator (or for it to open): out-of-order arrivals.
 */
void agent_test_nccl_parked(rdag_agent_t *a, unsigned *parked);

#endif /* RDAG_AGENT_AGENT_TEST_H */
