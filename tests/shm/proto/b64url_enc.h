/*
 * base64url without padding, written independently of shm/proto/jwt.c so
 * that the JWT tests and the JWT fuzz target build their tokens with an
 * encoder that is not the one under test.
 */
#ifndef TETHER_TESTS_PROTO_B64URL_ENC_H
#define TETHER_TESTS_PROTO_B64URL_ENC_H

#include <stddef.h>
#include <stdint.h>

/* Encode in[0..n) into out (room for 4 * (n + 2) / 3 + 1); NUL-terminated; returns the length. */
static inline size_t test_b64url(const uint8_t *in, size_t n, char *out)
{
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0) |
                     (i + 2 < n ? in[i + 2] : 0);
        size_t chars = n - i >= 3 ? 4 : n - i + 1;
        for (size_t k = 0; k < chars; k++)
            out[o++] = a[(v >> (18 - 6 * k)) & 63];
    }
    out[o] = 0;
    return o;
}

#endif
