/* Sample messages of every kind with edge values, built by the encoders (tests, fuzz seeds, docs). */
#ifndef RDAG_TESTS_WIRE_SAMPLES_H
#define RDAG_TESTS_WIRE_SAMPLES_H

#include <stddef.h>
#include <stdint.h>

/* Number of samples. */
unsigned sample_count(void);

/* A short unique name of sample i ("grad_req_8_slot", ...), usable as a file name. */
const char *sample_name(unsigned i);

/*
 * Encodes sample i with the encoder's contract (RDAG_ENOSPC and the size needed in *len when
 * cap is too small). Deterministic: the same bytes on every call. Not thread-safe (samples
 * share static scratch buffers).
 */
int sample_encode(unsigned i, void *buf, size_t cap, size_t *len);

/* Encodes sample i into a malloc'ed buffer (abort()s on failure); *len gets its length. */
uint8_t *sample_alloc(unsigned i, size_t *len);

/* The PropagateGradientsReq shown byte by byte in docs/wire-format.md. */
int sample_doc_grad_req(void *buf, size_t cap, size_t *len);

#endif /* RDAG_TESTS_WIRE_SAMPLES_H */
