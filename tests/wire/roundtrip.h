/* Decode, walk every view and re-encode: the round-trip invariant checked by the tests and fuzzers. */
#ifndef RDAG_TESTS_WIRE_ROUNDTRIP_H
#define RDAG_TESTS_WIRE_ROUNDTRIP_H

#include <stddef.h>
#include <stdint.h>

#include "wire/wire.h"

/*
 * Re-encodes a decoded message from its view with the public encoders (inner messages are
 * copied from the view). Returns the encoder's status; *len as the encoders set it.
 */
int rt_reencode(const struct wire_msg *m, void *out, size_t cap, size_t *len);

/*
 * Decodes buf[0, len) at the top level; if that succeeds, reads every element through the
 * iterators (touching every inline byte and string), re-encodes the message and abort()s
 * unless the bytes are identical, then does the same for each wrapped message down the chain
 * (an inner message that fails to decode stops the descent). Returns the top-level decode
 * status. *inner_rc (may be NULL) gets the status of the first failing inner decode, else 0.
 */
int rt_check(const uint8_t *buf, size_t len, int *inner_rc);

#endif /* RDAG_TESTS_WIRE_ROUNDTRIP_H */
