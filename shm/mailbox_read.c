/*
 * Reading the mailbox from any process: the idempotency lookup, a stored
 * frame, presence figures, the resume snapshot and its walk, the gauges.
 * Nothing here writes to the object (the dump tool maps it read-only): a
 * record is copied under its seqlock, an entry is kept only if it was still
 * committed and unreclaimed after the copy (mailbox.h).
 */
#include "shm/mailbox_impl.h"

#include <errno.h>

static int valid_user(const char *user, size_t ulen)
{
    return user && ulen > 0 && ulen <= TH_USER_MAX;
}

int th_mbx_find_id(const struct th_mbx *m, const char *user, size_t ulen, const char *id,
                   size_t idlen, uint64_t now_ns, struct th_mbx_hit *out)
{
    uint64_t refs[TH_MBX_PER_USER_MAX];
    struct th_mbx_rec_copy c = {.refs = refs};
    if (!valid_user(user, ulen) || idlen == 0 || idlen > TH_MBX_MAX_ID)
        return -EINVAL;
    if (th_mbx_rec_find(m, user, ulen, th_user_hash(user, ulen), &c) == TH_MBX_NONE)
        return 0;
    uint32_t tag = th_mbx_id_tag(id, idlen);
    for (uint32_t k = c.nrefs; k-- > 0;) {
        if (th_mbx_ref_tag(refs[k]) != tag)
            continue;
        uint64_t pos = th_mbx_ref_pos(refs[k]);
        struct th_mbx_ent_copy e;
        char got[TH_MBX_MAX_ID];
        if (!th_mbx_ent_read(m, pos, &e) || e.idlen != idlen || e.expires_ns <= now_ns)
            continue;
        th_mbx_words_load(got, th_mbx_ent_words(th_mbx_ent(m, pos)), idlen);
        if (!th_mbx_ent_still(m, pos) || memcmp(got, id, idlen) != 0)
            continue;
        uint32_t status = (uint32_t)e.outcome, gen = (uint32_t)(e.outcome >> 32);
        *out = (struct th_mbx_hit){.pos = pos,
                                   .seq = e.seq,
                                   .expires_ns = e.expires_ns,
                                   .status = status,
                                   .connections = e.connections,
                                   .mine = status == 0 && m->gen && gen == m->gen};
        return 1;
    }
    return 0;
}

ssize_t th_mbx_read_frame(const struct th_mbx *m, uint64_t pos, char *buf, size_t cap)
{
    struct th_mbx_ent_copy e;
    if (!th_mbx_ent_read(m, pos, &e) || (e.flags & TH_MBX_E_PAD))
        return -ESTALE;
    if (e.len > cap)
        return -ENOBUFS;
    const _Atomic uint64_t *w = th_mbx_ent_words(th_mbx_ent(m, pos));
    th_mbx_words_load(buf, w + th_mbx_align8(e.idlen) / 8, e.len);
    return th_mbx_ent_still(m, pos) ? (ssize_t)e.len : -ESTALE;
}

int th_mbx_user_info(const struct th_mbx *m, const char *user, size_t ulen, uint64_t now_ns,
                     uint32_t *pending, uint64_t *last_seq)
{
    uint64_t refs[TH_MBX_PER_USER_MAX];
    struct th_mbx_rec_copy c = {.refs = refs};
    uint32_t hash = th_user_hash(user, ulen);
    *pending = 0;
    *last_seq = 0;
    if (!valid_user(user, ulen))
        return -EINVAL;
    if (th_mbx_rec_find(m, user, ulen, hash, &c) == TH_MBX_NONE) {
        *last_seq = th_mbx_ld(&m->floors[hash & (m->hdr->nfloors - 1)]);
        return 0;
    }
    *last_seq = c.seq;
    for (uint32_t k = 0; k < c.nrefs; k++) {
        struct th_mbx_ent_copy e;
        if (th_mbx_ent_read(m, th_mbx_ref_pos(refs[k]), &e) && e.expires_ns > now_ns)
            (*pending)++;
    }
    return 0;
}

/* ---- resume --------------------------------------------------------------- */

int th_mbx_replay_begin(const struct th_mbx *m, const char *user, size_t ulen, uint64_t since,
                        struct th_mbx_replay *rp)
{
    struct th_mbx_rec_copy c = {.refs = rp->refs};
    memset(rp, 0, offsetof(struct th_mbx_replay, refs));
    rp->since = since;
    if (!valid_user(user, ulen))
        return -EINVAL;
    /* The worker's slot claim before this snapshot (mailbox.h, the ordering argument). */
    atomic_thread_fence(memory_order_seq_cst);
    uint32_t hash = th_user_hash(user, ulen);
    rp->rec = TH_MBX_NONE;
    for (uint32_t k = 0; k < TH_MBX_PROBE; k++) {
        uint32_t i = th_mbx_probe(m, hash, k);
        const struct th_mbx_user *r = th_mbx_rec(m, i);
        if (th_mbx_ld32(&r->user_hash) != hash || th_mbx_ld32(&r->user_len) != ulen)
            continue; /* another user's (a record being made for this one is not yet) */
        int rc = th_mbx_rec_read(m, i, &c);
        if (rc == -EAGAIN) {
            rp->unreadable = 1; /* a live writer stuck mid-change: cannot tell */
            continue;
        }
        if (rc == 0 && c.user_len == ulen && c.user_hash == hash &&
            memcmp(c.user, user, ulen) == 0) {
            rp->rec = i;
            break;
        }
    }
    if (rp->rec == TH_MBX_NONE) {
        rp->latest = rp->dropped = th_mbx_ld(&m->floors[hash & (m->hdr->nfloors - 1)]);
        return 0;
    }
    rp->unreadable = 0;
    rp->found = 1;
    rp->gen = c.gen;
    rp->latest = c.seq;
    rp->dropped = c.dropped;
    rp->n = c.nrefs;
    return 0;
}

int th_mbx_replay_next(const struct th_mbx *m, struct th_mbx_replay *rp, uint64_t now_ns, char *buf,
                       size_t cap, struct th_mbx_item *out)
{
    while (rp->i < rp->n) {
        uint64_t pos = th_mbx_ref_pos(rp->refs[rp->i++]);
        struct th_mbx_ent_copy e;
        if (!th_mbx_ent_read(m, pos, &e) || (e.flags & TH_MBX_E_PAD))
            continue; /* reclaimed since the snapshot: replay_end sees it in dropped */
        if (e.seq <= rp->since)
            continue;
        if (e.expires_ns <= now_ns) {
            rp->lost = 1;
            continue;
        }
        if (buf) {
            if (cap < e.len)
                return -ENOBUFS;
            const _Atomic uint64_t *w = th_mbx_ent_words(th_mbx_ent(m, pos));
            th_mbx_words_load(buf, w + th_mbx_align8(e.idlen) / 8, e.len);
            if (!th_mbx_ent_still(m, pos))
                continue;
        }
        *out = (struct th_mbx_item){.seq = e.seq,
                                    .pos = pos,
                                    .stored_ns = e.stored_ns,
                                    .expires_ns = e.expires_ns,
                                    .len = e.len};
        return 1;
    }
    return 0;
}

int th_mbx_replay_end(const struct th_mbx *m, struct th_mbx_replay *rp)
{
    if (rp->unreadable || rp->lost || rp->since > rp->latest)
        return 0;
    if (!rp->found)
        return rp->since >= rp->latest; /* nothing stored; a floor may hide older seqs */
    struct th_mbx_rec_copy c = {.refs = NULL};
    if (th_mbx_rec_read(m, rp->rec, &c) < 0 || c.gen != rp->gen)
        return 0; /* recycled (or stuck) since the snapshot: its entries are gone */
    return c.dropped <= rp->since;
}

void th_mbx_stats(const struct th_mbx *m, struct th_mbx_stats *out)
{
    const struct th_mbx_hdr *h = m->hdr;
    memset(out, 0, sizeof(*out));
    out->bytes_total = h->total_size;
    out->arena_bytes = h->arena_bytes;
    uint64_t tail = th_mbx_ld(&h->tail), head = th_mbx_ld(&h->head);
    out->log_bytes = head >= tail ? head - tail : 0;
    out->bytes = atomic_load_explicit(&h->bytes, memory_order_relaxed);
    out->entries = atomic_load_explicit(&h->entries, memory_order_relaxed);
    out->nusers = h->nusers;
    out->per_user = h->per_user;
    th_mbx_epoch(m, out->epoch);
    /* The oldest committed notification: skip fillers and a few reclaimed-under-us positions. */
    for (int k = 0; k < 64 && tail < head; k++) {
        struct th_mbx_ent_copy e;
        if (!th_mbx_ent_read(m, tail, &e)) {
            tail = th_mbx_ld(&h->tail);
            continue;
        }
        if (!(e.flags & TH_MBX_E_PAD)) {
            out->oldest_ns = e.stored_ns;
            break;
        }
        tail += e.size;
    }
}

int th_mbx_source(const struct th_mbx *m, uint64_t *seq, int *epoch_set)
{
    uint64_t v = atomic_load_explicit(&m->hdr->counters.source_seq, memory_order_acquire);
    *seq = v ? v - 1 : 0;
    *epoch_set = __atomic_load_n(&m->hdr->epoch, __ATOMIC_ACQUIRE) != 0;
    return v != 0;
}

int th_mbx_source_left(const struct th_mbx *m, uint64_t *epoch, uint64_t *applied, uint64_t *handed)
{
    const struct th_mbx_counters_sh *c = &m->hdr->counters;
    uint64_t a = atomic_load_explicit(&c->source_seq, memory_order_acquire);
    uint64_t hd = atomic_load_explicit(&c->source_handed, memory_order_acquire);
    *epoch = atomic_load_explicit(&c->source_epoch, memory_order_acquire);
    *applied = a ? a - 1 : 0;
    *handed = hd ? hd - 1 : 0;
    if (*handed > *applied)
        *handed = *applied;
    return a != 0 && *epoch != 0;
}
