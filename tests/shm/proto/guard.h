/*
 * Guarded copies of parser inputs: the bytes are placed at the very end of
 * read-write pages followed by a PROT_NONE page, so a parser that reads (or
 * writes) even one byte past the input faults at once instead of silently
 * passing (the picohttpparser test.c trick).
 */
#ifndef TETHER_TESTS_WORKER_GUARD_H
#define TETHER_TESTS_WORKER_GUARD_H

#include <stddef.h>
#include <stdint.h>

struct guard {
    uint8_t *p; /* the copy: p[0..n) ends right before the guard page */
    size_t n;
    void *map;
    size_t map_len;
};

/* Copy src[0..n) into a fresh guarded mapping (aborts the test on failure). */
uint8_t *guard_copy(struct guard *g, const void *src, size_t n);
void guard_free(struct guard *g);

#endif
