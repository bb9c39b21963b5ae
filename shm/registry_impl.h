/*
 * Internals shared by the registry's source files (registry.c: segment life
 * cycle; registry_slot.c: claim, release, lookups; registry_repair.c: dead
 * writers). Not part of the API: only shm/registry*.c and the registry's
 * white-box tests (tests/shm/test_registry*.c) include it.
 */
#ifndef TETHER_SHM_REGISTRY_IMPL_H
#define TETHER_SHM_REGISTRY_IMPL_H

#include "shm/registry.h"

#define TH_REG_LINE 16u   /* index buckets per 64-byte cache line */
#define TH_REG_WINDOW 32u /* buckets probed per user: its two candidate lines */
#define TH_REG_MAX_SLOTS (1u << TH_INDEX_SLOT_BITS) /* a slot number fits an index entry */

/* This process's pid, cached (reset in fork children). */
pid_t th_reg_self(void);

/* Word-wise atomic copies of a 64-byte user field (acquire loads, release stores: seqlock-safe). */
void th_user_load(char dst[TH_USER_MAX], const char *src);
void th_user_store(char *dst, const char *user, size_t ulen);

/* Finish the release of slot i, held by this process in state RELEASING (ctl c).
 * was_live: it was a real connection (record a disconnect if it was the user's last). */
void th_reg_finish_release(struct th_reg *r, uint32_t i, uint64_t c, int was_live);

/* Take over slot i whose ctl is c (CLAIMING/RELEASING with a dead actor, or LIVE):
 * CAS to RELEASING under this pid and finish. Returns 1 if this call released it. */
int th_reg_force_release(struct th_reg *r, uint32_t i, uint64_t c);

/* Saturating decrement of a header counter (drift must not wrap to 4 billion). */
void th_reg_counter_dec(_Atomic uint32_t *ctr);

static inline uint32_t th_reg_window(void)
{
    return TH_REG_WINDOW;
}

/*
 * The k-th candidate bucket (k < 32) of a user hash: the 16 buckets of its
 * first line, then the 16 of its second. Two lines chosen by hash and the
 * claimer taking the emptier ("two choices") keep the fullest line far below
 * 16 at load 0.5, and a lookup costs two cache lines fetched in parallel.
 */
static inline uint32_t th_reg_line(const struct th_reg *r, uint32_t h, int second)
{
    uint32_t lines = r->hdr->nbuckets / TH_REG_LINE, l1 = h & (lines - 1);
    if (!second)
        return l1;
    uint32_t l2 = ((h * 0x9e3779b1u) >> 7) & (lines - 1); /* other hash bits, mixed */
    return l2 == l1 ? (l1 + 1) & (lines - 1) : l2;
}

static inline uint32_t th_reg_bucket(const struct th_reg *r, uint32_t h, uint32_t k)
{
    return th_reg_line(r, h, k >= TH_REG_LINE) * TH_REG_LINE + k % TH_REG_LINE;
}

#endif
