/*
 * Internals shared by the mailbox's source files (mailbox.c: the object's
 * life cycle; mailbox_write.c: the writer; mailbox_read.c: lookups and
 * replay). Not part of the API: nothing outside shm/mailbox*.c includes it.
 */
#ifndef TETHER_SHM_MAILBOX_IMPL_H
#define TETHER_SHM_MAILBOX_IMPL_H

#include "shm/mailbox.h"

#include <string.h>

#define TH_MBX_NAME_MAX 128 /* the object's name: --shm-name plus the suffix */
#define TH_MBX_REF_TAG_BITS 24
#define TH_MBX_REF_TAG_MASK ((1u << TH_MBX_REF_TAG_BITS) - 1)

static inline struct th_mbx_user *th_mbx_rec(const struct th_mbx *m, uint32_t i)
{
    return (struct th_mbx_user *)(void *)(m->users + (size_t)i * m->hdr->rec_size);
}

static inline struct th_mbx_entry *th_mbx_ent(const struct th_mbx *m, uint64_t pos)
{
    return (struct th_mbx_entry *)(void *)(m->arena + pos % m->hdr->arena_bytes);
}

/* The 64-bit words after an entry's header: id, then frame. */
static inline _Atomic uint64_t *th_mbx_ent_words(struct th_mbx_entry *e)
{
    return (_Atomic uint64_t *)(void *)(e + 1);
}

static inline size_t th_mbx_align8(size_t n)
{
    return (n + 7) & ~(size_t)7;
}

static inline uint64_t th_mbx_ref(uint64_t pos, uint32_t tag)
{
    return (pos >> 6) << TH_MBX_REF_TAG_BITS | (tag & TH_MBX_REF_TAG_MASK);
}
static inline uint64_t th_mbx_ref_pos(uint64_t ref)
{
    return (ref >> TH_MBX_REF_TAG_BITS) << 6;
}
static inline uint32_t th_mbx_ref_tag(uint64_t ref)
{
    return (uint32_t)ref & TH_MBX_REF_TAG_MASK;
}
/* An id's ring tag: 24 bits of its hash, never 0 (0 = no id). */
static inline uint32_t th_mbx_id_tag(const char *id, size_t idlen)
{
    uint32_t t = th_user_hash(id, idlen) & TH_MBX_REF_TAG_MASK;
    return t ? t : 1;
}

static inline uint64_t th_mbx_ld(const _Atomic uint64_t *p)
{
    return atomic_load_explicit(p, memory_order_acquire);
}
static inline uint32_t th_mbx_ld32(const _Atomic uint32_t *p)
{
    return atomic_load_explicit(p, memory_order_acquire);
}
static inline void th_mbx_st(_Atomic uint64_t *p, uint64_t v)
{
    atomic_store_explicit(p, v, memory_order_release);
}
static inline void th_mbx_st32(_Atomic uint32_t *p, uint32_t v)
{
    atomic_store_explicit(p, v, memory_order_release);
}

/*
 * The k-th record (k < TH_MBX_PROBE) a user may live in: 8 consecutive
 * records from its hash, then 8 from a second, mixed hash ("two choices":
 * at 60% of records used a single window of 8 is full often enough to
 * evict a live user's entries; two make it vanishingly rare).
 */
static inline uint32_t th_mbx_probe(const struct th_mbx *m, uint32_t hash, uint32_t k)
{
    uint32_t mask = m->hdr->nusers - 1;
    uint32_t base = k < TH_MBX_PROBE / 2 ? hash : (hash * 0x9e3779b1u) ^ (hash >> 15);
    return (base + k % (TH_MBX_PROBE / 2)) & mask;
}

/* Copy n bytes out of / into 64-bit atomic words (acquire loads, release stores). */
void th_mbx_words_load(char *dst, const _Atomic uint64_t *src, size_t n);
void th_mbx_words_store(_Atomic uint64_t *dst, const char *src, size_t n);

/* A consistent copy of one user record (ring refs only when asked for). */
struct th_mbx_rec_copy {
    uint64_t seq, dropped, last_exp_ns, head, tail;
    uint32_t gen, user_hash, user_len;
    char user[TH_USER_MAX];
    uint32_t nrefs;
    uint64_t *refs; /* caller's array of per_user, or NULL */
    int torn;       /* taken mid-change of a dead writer */
};

/* Copy record i under its seqlock. Returns 0, or -EAGAIN if a live writer kept it busy. */
int th_mbx_rec_read(const struct th_mbx *m, uint32_t i, struct th_mbx_rec_copy *c);

/* The record holding user (index), or TH_MBX_NONE; c receives its copy when found. */
uint32_t th_mbx_rec_find(const struct th_mbx *m, const char *user, size_t ulen, uint32_t hash,
                         struct th_mbx_rec_copy *c);

/*
 * Copy an entry's header fields; 1 when pos is a committed, unreclaimed
 * entry (checked again by th_mbx_ent_still()), else 0.
 */
struct th_mbx_ent_copy {
    uint64_t seq, stored_ns, expires_ns, outcome;
    uint32_t size, rec, len, connections, id_hash;
    uint16_t idlen, flags;
};
int th_mbx_ent_read(const struct th_mbx *m, uint64_t pos, struct th_mbx_ent_copy *c);
/* After copying more of an entry: is it still the committed, unreclaimed one at pos? */
int th_mbx_ent_still(const struct th_mbx *m, uint64_t pos);

#endif
