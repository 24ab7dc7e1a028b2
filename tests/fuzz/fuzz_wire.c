/* libFuzzer target of one decoder family (FUZZ_FAMILY picks it): decode, walk, and check the round trip. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "families.h"
#include "roundtrip.h"

#ifndef FUZZ_FAMILY
#error "compile with -DFUZZ_FAMILY=<index into fuzz_families>"
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const struct fuzz_family *f = &fuzz_families[FUZZ_FAMILY];
	/* An exactly-sized copy: ASan flags any read past the message, and the kind can be set. */
	uint8_t *buf = malloc(size ? size : 1);

	if (!buf)
		return 0;
	if (size)
		memcpy(buf, data, size);
	/* Keep the fuzzer on this family's decoders: map any other kind onto one of ours. */
	if (size > 5 && !fuzz_family_has(f, buf[5]))
		buf[5] = f->kinds[buf[5] % f->nkinds];
	/*
	 * rt_check() decodes; on success it reads every tensor, event, device-map entry and string,
	 * re-encodes and abort()s unless the bytes are identical (and unless the encoder refuses one
	 * byte less with the right size), then descends into wrapped messages the same way.
	 */
	(void)rt_check(buf, size, NULL);
	free(buf);
	return 0;
}
