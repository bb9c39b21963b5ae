/*
 * Helpers shared by the registry tests: unique segment names (pid plus a
 * counter, so parallel ctest runs never collide), create-or-fail, and
 * self-checking user ids whose bytes encode their own number, so a torn
 * copy of a slot is recognisable without knowing what the writer meant.
 * Criterion tests include <criterion/criterion.h> first to get
 * reg_test_create; the stress and crash tests are plain programs because
 * Criterion cannot run under ThreadSanitizer (Snaipe/Criterion#274).
 */
#ifndef TETHER_TESTS_SHM_REG_TEST_H
#define TETHER_TESTS_SHM_REG_TEST_H

#include "shm/registry_impl.h" /* th_reg_line: crowded users */

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The segment under test: one per test binary. */
static struct th_reg reg;
static char name[96];

/* Detach and remove the segment under test (a Criterion suite's .fini). */
static inline void reg_test_fini(void)
{
    if (reg.base)
        th_reg_detach(&reg);
    if (name[0])
        th_reg_unlink(name);
}

static inline void reg_test_name(char *buf, size_t cap, const char *tag)
{
    static unsigned seq;
    snprintf(buf, cap, "/th-test-%s-%d-%u", tag, (int)getpid(), seq++);
}

#ifndef CRITERION_H_
/*
 * Plain test programs: fail with a message, remove the segment, exit 1. Only
 * unlinks: other threads may still be reading the mapping.
 */
static inline void check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static inline void check(int ok, const char *fmt, ...)
{
    if (ok)
        return;
    va_list ap;
    va_start(ap, fmt);
    fputs("FAIL: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    if (name[0])
        th_reg_unlink(name);
    exit(1);
}
#endif

#ifdef CRITERION_H_
/* Create a fresh segment or fail the test with the registry's message. */
static inline void reg_test_create(struct th_reg *r, char *buf, size_t cap, const char *tag,
                                   uint32_t nslots)
{
    char err[256] = "";
    reg_test_name(buf, cap, tag);
    int rc = th_reg_create(r, buf, nslots, err, sizeof(err));
    cr_assert_eq(rc, 0, "th_reg_create(%s): %d %s", buf, rc, err);
}
#endif

/* "u<k>:" then a filler letter derived from k up to a length derived from k (6..64). */
static inline size_t test_user(uint32_t k, char *buf)
{
    int n = snprintf(buf, TH_USER_MAX + 1, "u%u:", k);
    size_t len = 6 + (k * 7) % (TH_USER_MAX - 5);
    if (len < (size_t)n)
        len = (size_t)n;
    memset(buf + n, 'a' + (int)(k % 26), len - (size_t)n);
    buf[len] = 0;
    return len;
}

/*
 * The smallest k >= from whose test_user(k) id has its first index line
 * below `lines` in r: users that crowd a few lines, so lines fill, entries
 * spill into second lines and some windows fill up. UINT32_MAX if none
 * before `to`.
 */
static inline uint32_t test_user_crowded(const struct th_reg *r, uint32_t from, uint32_t to,
                                         uint32_t lines)
{
    char buf[TH_USER_MAX + 1];
    for (uint32_t k = from; k < to; k++) {
        size_t len = test_user(k, buf);
        if (th_reg_line(r, th_user_hash(buf, len), 0) < lines)
            return k;
    }
    return UINT32_MAX;
}

/*
 * Entries of r's index sitting in their second line whose first line is l,
 * counted from the buckets and their slots' hashes (a slot's fields are
 * written before its entry): what line l's spill count must never be below.
 */
static inline uint32_t reg_test_spilled_from(const struct th_reg *r, uint32_t l)
{
    uint32_t n = 0;
    for (uint32_t b = 0; b < r->hdr->nbuckets; b++) {
        uint64_t v = atomic_load(&r->index[b]);
        if (th_reg_is_spill(b) || !v || th_index_slot(v) >= r->hdr->nslots)
            continue;
        uint32_t h = atomic_load(&r->slots[th_index_slot(v)].user_hash);
        n += th_reg_line(r, h, 0) == l && b / TH_REG_LINE != l;
    }
    return n;
}

/*
 * The notify path's answer as the owner workers settle it (layout version
 * 4): the th_reg_find_owners candidates that th_reg_confirm accepts for the
 * worker the index named. Must equal th_reg_find_user's slots at any quiet
 * instant, also right after a writer was killed halfway. Returns the count.
 */
static inline int reg_test_confirmed(const struct th_reg *r, const char *user, size_t len,
                                     struct th_conn_ref *out, int max)
{
    struct th_owner_ref ow[64];
    int n = th_reg_find_owners(r, user, len, ow, 64), k = 0;
    for (int i = 0; i < n && k < max; i++)
        k += th_reg_confirm(r, ow[i].slot, ow[i].worker, user, len, &out[k]);
    return k;
}

/* Entries in the back line of r's index line l: what its back count must never be below. */
static inline uint32_t reg_test_back_of(const struct th_reg *r, uint32_t l)
{
    uint32_t n = 0;
    for (uint32_t j = TH_REG_FRONT; j < TH_REG_LINE; j++)
        n += atomic_load(&r->index[l * TH_REG_LINE + j]) != 0;
    return n;
}

/* Does this copy hold exactly test_user(k) for the k its own prefix names? */
static inline int test_user_intact(const char *user, size_t len, uint32_t *k_out)
{
    char want[TH_USER_MAX + 1];
    unsigned k;
    if (sscanf(user, "u%u:", &k) != 1)
        return 0;
    size_t wl = test_user(k, want);
    if (k_out)
        *k_out = k;
    return wl == len && memcmp(want, user, len) == 0;
}

#endif
