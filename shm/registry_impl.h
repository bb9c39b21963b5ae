/*
 * Internals shared by the registry's source files (registry.c: segment life
 * cycle; registry_slot.c: claim, release, lookups; registry_repair.c: dead
 * writers). Not part of the API: nothing outside shm/registry*.c includes it.
 */
#ifndef TETHER_SHM_REGISTRY_IMPL_H
#define TETHER_SHM_REGISTRY_IMPL_H

#include "shm/registry.h"

#define TH_REG_WINDOW 64u     /* index buckets probed per user hash */
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
int th_reg_force_release(struct th_reg *r, uint32_t i, uint64_t c, uint64_t now_ns);

/* Saturating decrement of a header counter (drift must not wrap to 4 billion). */
void th_reg_counter_dec(_Atomic uint32_t *ctr);

/* Buckets probed per user: 64, or the whole index when it is smaller (no bucket twice). */
static inline uint32_t th_reg_window(const struct th_reg *r)
{
    return r->hdr->nbuckets < TH_REG_WINDOW ? r->hdr->nbuckets : TH_REG_WINDOW;
}

static inline uint32_t th_reg_bucket(const struct th_reg *r, uint32_t h, uint32_t k)
{
    return (h + k) & (r->hdr->nbuckets - 1);
}

#endif
