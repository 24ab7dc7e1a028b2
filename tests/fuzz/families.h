/* The decoder families the fuzz targets cover: which message kinds each one feeds the decoder. */
#ifndef RDAG_TESTS_FUZZ_FAMILIES_H
#define RDAG_TESTS_FUZZ_FAMILIES_H

#include <stdint.h>

#include "wire/wire.h"

struct fuzz_family {
	const char *name;          /* target fuzz_<name>, corpus tests/fuzz/corpus/fuzz_<name>/ */
	uint8_t kinds[6];
	unsigned nkinds;
};

static const struct fuzz_family fuzz_families[] = {
	{"transport", {WIRE_HANDSHAKE, WIRE_CREDIT, WIRE_NCCL_ID}, 3},
	{"exception", {WIRE_EXCEPTION}, 1},
	{"rpc", {WIRE_RPC_CALL, WIRE_RPC_RESP, WIRE_RDV_ANSWER, WIRE_RDV_DONE}, 4},
	{"rref", {WIRE_RREF_CALL, WIRE_RREF_FETCH_REQ, WIRE_RREF_FETCH_RESP, WIRE_RREF_DELETE,
		  WIRE_RREF_BACKWARD_REQ, WIRE_RREF_BACKWARD_RESP}, 6},
	{"forward", {WIRE_FORWARD_AUTOGRAD_REQ, WIRE_FORWARD_AUTOGRAD_RESP}, 2},
	{"grad", {WIRE_BACKWARD_AUTOGRAD_REQ, WIRE_BACKWARD_AUTOGRAD_RESP, WIRE_BACKWARD_ABORT}, 3},
	{"cleanup", {WIRE_CLEANUP_AUTOGRAD_CONTEXT_REQ, WIRE_CLEANUP_AUTOGRAD_CONTEXT_RESP}, 2},
	{"profiling", {WIRE_RUN_WITH_PROFILING_REQ, WIRE_RUN_WITH_PROFILING_RESP}, 2},
};

#define FUZZ_NFAMILIES (sizeof(fuzz_families) / sizeof(fuzz_families[0]))

static inline int fuzz_family_has(const struct fuzz_family *f, uint8_t kind)
{
	for (unsigned i = 0; i < f->nkinds; i++) {
		if (f->kinds[i] == kind)
			return 1;
	}
	return 0;
}

#endif /* RDAG_TESTS_FUZZ_FAMILIES_H */
