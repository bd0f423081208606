/*
 * sha256.h — a small SHA-256 (FIPS 180-4) for tests that compare against
 * digests recorded by other tools (tests/data/gguf/expected.json).
 */
#ifndef ALLOY_TEST_SHA256_H
#define ALLOY_TEST_SHA256_H

#include <stddef.h>
#include <stdint.h>

struct sha256 {
    uint32_t h[8];
    uint64_t len;    /* bytes hashed so far */
    uint8_t buf[64];
    size_t nbuf;
};

void sha256_init(struct sha256 *s);
void sha256_update(struct sha256 *s, const void *data, size_t n);
/* The digest as 64 lowercase hex digits and a NUL into hex. */
void sha256_hex(struct sha256 *s, char hex[65]);
/* One-shot. */
void sha256_of(const void *data, size_t n, char hex[65]);

#endif
