/*
 * Internals shared by the registry's source files (registry.c: segment life
 * cycle; registry_slot.c: claim, release, lookups; registry_repair.c: dead
 * writers). Not part of the API: only shm/registry*.c and the registry's
 * white-box tests (tests/shm/test_registry*.c) include it.
 */
#ifndef TETHER_SHM_REGISTRY_IMPL_H
#define TETHER_SHM_REGISTRY_IMPL_H

#include "shm/registry.h"

/*
 * Index words per group (a "line" in the names below: 128 bytes of 64-bit
 * words, two cache lines in one page): the count word, then 15 buckets, 7 on
 * the group's front cache line with the count word and 8 on its back line.
 * The count word holds the spill count (low 32 bits: entries of this group's
 * users living in their second group) and the back count (high 32 bits:
 * entries in this group's back line), so a lookup reads the front line alone
 * while both are 0.
 */
#define TH_REG_LINE 16u
#define TH_REG_LINE_BYTES (TH_REG_LINE * sizeof(uint64_t))
#define TH_REG_FRONT 8u              /* words on the front line: the count word and buckets 1-7 */
#define TH_REG_BACK_ONE (1ull << 32) /* one entry in a back count */
static inline uint32_t th_reg_count_spill(uint64_t counts)
{
    return (uint32_t)counts;
}
static inline uint32_t th_reg_count_back(uint64_t counts)
{
    return (uint32_t)(counts >> 32);
}
#define TH_REG_BUCKETS 15u /* buckets per line */
#define TH_REG_WINDOW 30u  /* buckets a user may use: its first line, then its second */
/* A claimer takes its first line while this many of its buckets are empty, else the emptier line.
 */
#define TH_REG_FIRST_ROOM 6u
/* Index words per slot (rounded up to a power of two): 4, so lines stay sparse enough that
 * almost every lookup reads one line (see th_reg_layout and the index protocol). */
#define TH_REG_INDEX_FACTOR 4u
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
/* The same for one half of a count word: one (1) off the spill or TH_REG_BACK_ONE off the back. */
void th_reg_counts_dec(_Atomic uint64_t *counts, uint64_t one);

static inline uint32_t th_reg_window(void)
{
    return TH_REG_WINDOW;
}

/*
 * A user hash's first line (bits of the hash) or second line (other bits,
 * mixed; never the first). The claimer fills the first and spills into the
 * second only when the first is full, so a lookup usually reads one line.
 */
static inline uint32_t th_reg_line(const struct th_reg *r, uint32_t h, int second)
{
    uint32_t lines = r->hdr->nbuckets / TH_REG_LINE, l1 = h & (lines - 1);
    if (!second)
        return l1;
    uint32_t l2 = ((h * 0x9e3779b1u) >> 7) & (lines - 1);
    return l2 == l1 ? (l1 + 1) & (lines - 1) : l2;
}

/* The k-th bucket (k < 30) of a user hash: the 15 of its first line, then the 15 of its second. */
static inline uint32_t th_reg_bucket(const struct th_reg *r, uint32_t h, uint32_t k)
{
    return th_reg_line(r, h, k >= TH_REG_BUCKETS) * TH_REG_LINE + 1 + k % TH_REG_BUCKETS;
}

/* The count word of a user hash's first line (its spill: entries of that line living in their
 * second; th_reg_count_spill). */
static inline _Atomic uint64_t *th_reg_spill(const struct th_reg *r, uint32_t h)
{
    return &r->index[th_reg_line(r, h, 0) * TH_REG_LINE];
}

/* Is index word b a line's count word (not a bucket)? */
static inline int th_reg_is_spill(uint32_t b)
{
    return b % TH_REG_LINE == 0;
}

#endif
