/*
 * Shared bits of tether's libFuzzer targets: a check that names the broken
 * property and aborts (so libFuzzer and the replay driver both report it as a
 * crash with the input saved), a small deterministic PRNG that turns a few
 * input bytes into split points, and an exact-size copy helper so that ASan
 * catches any read past the bytes a parser was given.
 */
#ifndef TETHER_TESTS_FUZZ_H
#define TETHER_TESTS_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_CHECK(cond, ...)                                                                      \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: property broken: %s: ", __FILE__, __LINE__, #cond);            \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* xorshift32: split points must be a pure function of the input. */
static inline uint32_t fuzz_rand(uint32_t *s)
{
    uint32_t x = *s ? *s : 0x9e3779b9u;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *s = x;
}

/* A heap copy of exactly n bytes (at least 1 allocated so the pointer is valid). */
static inline uint8_t *fuzz_dup(const uint8_t *p, size_t n)
{
    uint8_t *q = malloc(n ? n : 1);
    if (!q)
        abort();
    if (n)
        memcpy(q, p, n);
    else
        q[0] = 0; /* never read; keeps -Wmaybe-uninitialized quiet */
    return q;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#endif
