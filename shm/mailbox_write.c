/*
 * The mailbox's one writer (the notifier): seqs, appends, evictions and the
 * repair of what a killed predecessor left. Every change to a user record
 * happens between rec_begin() and rec_end() (the record's seqlock, with
 * hdr->busy_rec naming it), and every store a reader may see is a release
 * store, in the order mailbox.h's protocol fixes.
 */
#include "shm/mailbox_impl.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>

/* ---- record changes ----------------------------------------------------- */

static void rec_begin(struct th_mbx *m, uint32_t i)
{
    struct th_mbx_user *r = th_mbx_rec(m, i);
    th_mbx_st32(&m->hdr->busy_rec, i);
    th_mbx_st(&r->ver, atomic_load_explicit(&r->ver, memory_order_relaxed) | 1);
}

static void rec_end(struct th_mbx *m, uint32_t i)
{
    struct th_mbx_user *r = th_mbx_rec(m, i);
    th_mbx_st(&r->ver, (atomic_load_explicit(&r->ver, memory_order_relaxed) | 1) + 1);
    th_mbx_st32(&m->hdr->busy_rec, TH_MBX_NONE);
}

static uint64_t relaxed(const _Atomic uint64_t *p)
{
    return atomic_load_explicit(p, memory_order_relaxed);
}

static void count_evicted(struct th_mbx *m, int reason)
{
    atomic_fetch_add_explicit(&m->hdr->counters.evicted[reason], 1, memory_order_relaxed);
}

static void gauge_sub(struct th_mbx *m, uint64_t size)
{
    struct th_mbx_hdr *h = m->hdr;
    uint64_t b = relaxed(&h->bytes), n = relaxed(&h->entries);
    atomic_store_explicit(&h->bytes, b > size ? b - size : 0, memory_order_relaxed);
    atomic_store_explicit(&h->entries, n ? n - 1 : 0, memory_order_relaxed);
}

/*
 * Inside a change of record r: drop its oldest ref. dropped is raised
 * before tail moves (protocol), the reason counted, the gauges lowered.
 */
static void pop_front(struct th_mbx *m, struct th_mbx_user *r, uint64_t now_ns, int reason)
{
    uint32_t per = m->hdr->per_user;
    uint64_t t = relaxed(&r->tail);
    uint64_t pos = th_mbx_ref_pos(relaxed(&r->ring[t % per]));
    struct th_mbx_entry *e = th_mbx_ent(m, pos);
    uint64_t seq = relaxed(&e->seq);
    if (seq > relaxed(&r->dropped))
        th_mbx_st(&r->dropped, seq);
    th_mbx_st(&r->tail, t + 1);
    if (reason == TH_MBX_EV_FULL && relaxed(&e->expires_ns) <= now_ns)
        reason = TH_MBX_EV_TTL; /* it had expired anyway */
    count_evicted(m, reason);
    gauge_sub(m, atomic_load_explicit(&e->size, memory_order_relaxed));
}

/* Is the entry at pos (committed, in the log) still its user's oldest ref? */
static struct th_mbx_user *owner_front(struct th_mbx *m, uint64_t pos, uint32_t *rec)
{
    struct th_mbx_entry *e = th_mbx_ent(m, pos);
    *rec = atomic_load_explicit(&e->rec, memory_order_relaxed);
    if (*rec >= m->hdr->nusers)
        return NULL;
    struct th_mbx_user *r = th_mbx_rec(m, *rec);
    uint64_t t = relaxed(&r->tail), hd = relaxed(&r->head);
    if (t == hd || th_mbx_ref_pos(relaxed(&r->ring[t % m->hdr->per_user])) != pos)
        return NULL;
    return r;
}

static uint32_t relaxed32(const _Atomic uint32_t *p)
{
    return atomic_load_explicit(p, memory_order_relaxed);
}

/*
 * Hints for the next reclaims, nothing else. A full log reclaims about one
 * entry per store, and each reclaim was a chain of misses: the tail entry's
 * header names its owner's record, whose tail names the ring slot compared
 * (owner_front). Each reclaim asks for the next ones one link further down
 * that chain, so every link has a store's time to arrive: the ring slot for
 * the entry now at the tail (its record was asked for by the previous
 * call), the record of the entry after it (whose header was), and the
 * header after that. It only reads the mapped segment: a position past head
 * or a torn size wastes a hint, never changes a result.
 */
static void reclaim_ahead(const struct th_mbx *m, uint64_t tail, uint64_t head)
{
    const struct th_mbx_hdr *h = m->hdr;
    const struct th_mbx_entry *e = th_mbx_ent(m, tail);
    uint32_t size = relaxed32(&e->size), rec = relaxed32(&e->rec);
    if (rec < h->nusers) {
        const struct th_mbx_user *r = th_mbx_rec(m, rec);
        __builtin_prefetch(&r->ring[relaxed(&r->tail) % h->per_user], 0);
    }
    if (size < 64 || size % 64 || size >= head - tail)
        return;
    e = th_mbx_ent(m, tail + size);
    uint32_t size2 = relaxed32(&e->size), rec2 = relaxed32(&e->rec);
    if (rec2 < h->nusers)
        __builtin_prefetch(th_mbx_rec(m, rec2), 0);
    if (size2 >= 64 && size2 % 64 == 0 && size2 < head - tail - size)
        __builtin_prefetch(th_mbx_ent(m, tail + size + size2), 0);
}

/*
 * Reclaim the entry at the log's tail: drop it from its user first (if it is
 * still held), then move tail. With only_expired, stop (return 0) at an
 * entry a user holds that has not expired. Returns 1 if one was reclaimed.
 */
static int reclaim_one(struct th_mbx *m, uint64_t now_ns, int only_expired)
{
    struct th_mbx_hdr *h = m->hdr;
    uint64_t tail = relaxed(&h->tail), head = relaxed(&h->head);
    if (tail == head)
        return 0;
    struct th_mbx_entry *e = th_mbx_ent(m, tail);
    uint32_t size = atomic_load_explicit(&e->size, memory_order_relaxed);
    if (relaxed(&e->pos) != tail || size < 64 || size % 64 ||
        tail % h->arena_bytes + size > h->arena_bytes || size > head - tail) {
        th_mbx_st(&h->tail, head); /* cannot happen by the protocol: drop the log, not the seqs */
        return 1;
    }
    if (!(atomic_load_explicit(&e->flags, memory_order_relaxed) & TH_MBX_E_PAD)) {
        uint32_t i;
        struct th_mbx_user *r = owner_front(m, tail, &i);
        if (r) {
            if (only_expired && relaxed(&e->expires_ns) > now_ns)
                return 0;
            rec_begin(m, i);
            pop_front(m, r, now_ns, TH_MBX_EV_FULL);
            rec_end(m, i);
        }
    }
    th_mbx_st(&h->tail, tail + size);
    if (size < head - tail)
        reclaim_ahead(m, tail + size, head);
    return 1;
}

int th_mbx_expire(struct th_mbx *m, uint64_t now_ns)
{
    int n = 0;
    while (n < TH_MBX_EXPIRE_BATCH && reclaim_one(m, now_ns, 1))
        n++;
    return n;
}

/* Make room for size contiguous bytes at head (padding to the arena's end if needed). */
static void reserve(struct th_mbx *m, uint32_t size, uint64_t now_ns)
{
    struct th_mbx_hdr *h = m->hdr;
    for (;;) {
        uint64_t head = relaxed(&h->head);
        uint64_t to_end = h->arena_bytes - head % h->arena_bytes;
        uint64_t need = to_end < size ? to_end : size;
        while (h->arena_bytes - (head - relaxed(&h->tail)) < need)
            reclaim_one(m, now_ns, 0);
        if (to_end >= size)
            return;
        struct th_mbx_entry *e = th_mbx_ent(m, head); /* filler up to the end */
        atomic_store_explicit(&e->size, (uint32_t)to_end, memory_order_release);
        atomic_store_explicit(&e->flags, TH_MBX_E_PAD, memory_order_release);
        th_mbx_st(&e->pos, head);
        th_mbx_st(&h->head, head + to_end);
    }
}

/* ---- seqs and appends --------------------------------------------------- */

/* Give record i to a new user (protocol: floor raised before the record changes). */
static void recycle(struct th_mbx *m, uint32_t i, const char *user, size_t ulen, uint32_t hash,
                    uint64_t now_ns)
{
    struct th_mbx_user *r = th_mbx_rec(m, i);
    uint32_t fmask = m->hdr->nfloors - 1;
    if (atomic_load_explicit(&r->user_len, memory_order_relaxed)) {
        _Atomic uint64_t *f = &m->floors[atomic_load(&r->user_hash) & fmask];
        if (relaxed(&r->seq) > relaxed(f))
            th_mbx_st(f, relaxed(&r->seq));
    }
    uint64_t floor = relaxed(&m->floors[hash & fmask]);
    rec_begin(m, i);
    th_mbx_st32(&r->user_len, 0);
    while (relaxed(&r->tail) != relaxed(&r->head))
        pop_front(m, r, now_ns, TH_MBX_EV_FULL);
    th_mbx_st32(&r->gen, atomic_load(&r->gen) + 1);
    th_mbx_st32(&r->user_hash, hash);
    char padded[TH_USER_MAX] = {0};
    memcpy(padded, user, ulen);
    th_mbx_words_store((_Atomic uint64_t *)(void *)r->user, padded, TH_USER_MAX);
    th_mbx_st(&r->seq, floor);
    th_mbx_st(&r->dropped, floor);
    th_mbx_st(&r->last_exp_ns, 0);
    th_mbx_st32(&r->user_len, (uint32_t)ulen);
    rec_end(m, i);
}

/* The user's record, found or made (recycling one, see protocol). */
static uint32_t user_record(struct th_mbx *m, const char *user, size_t ulen, uint64_t now_ns)
{
    uint32_t hash = th_user_hash(user, ulen);
    uint32_t empty[2] = {TH_MBX_NONE, TH_MBX_NONE}, nempty[2] = {0, 0}, oldest = TH_MBX_NONE;
    uint64_t oldest_exp = UINT64_MAX;
    for (uint32_t k = 0; k < TH_MBX_PROBE; k++) {
        uint32_t i = th_mbx_probe(m, hash, k), w = k >= TH_MBX_PROBE / 2;
        struct th_mbx_user *r = th_mbx_rec(m, i);
        uint32_t len = atomic_load_explicit(&r->user_len, memory_order_relaxed);
        if (len == ulen && atomic_load(&r->user_hash) == hash && memcmp(r->user, user, ulen) == 0)
            return i;
        if (len == 0) {
            if (empty[w] == TH_MBX_NONE)
                empty[w] = i;
            nempty[w]++;
        } else if (relaxed(&r->last_exp_ns) < oldest_exp) {
            oldest = i;
            oldest_exp = relaxed(&r->last_exp_ns);
        }
    }
    /*
     * A new user goes to an empty record of the emptier window (two
     * choices), else replaces the record whose entries expire first: one
     * with nothing unexpired costs only seq contiguity (the floor), one with
     * live entries loses them (reason full).
     */
    uint32_t pick = nempty[1] > nempty[0] ? empty[1] : empty[0] != TH_MBX_NONE ? empty[0] : oldest;
    recycle(m, pick, user, ulen, hash, now_ns);
    return pick;
}

void th_mbx_prefetch(const struct th_mbx *m, uint32_t hash, int stage)
{
    if (!m->writable || !m->gen)
        return;
    const struct th_mbx_user *r = th_mbx_rec(m, th_mbx_probe(m, hash, 0));
    if (stage == 0) {
        __builtin_prefetch(r, 1);       /* lengths, hash, counters */
        __builtin_prefetch(r->user, 0); /* the name compared */
        return;
    }
    /* A full ring: the store drops the oldest ref, whose slot takes the new one. */
    uint32_t per = m->hdr->per_user;
    uint64_t t = relaxed(&r->tail);
    if (relaxed32(&r->user_hash) != hash || relaxed(&r->head) - t < per)
        return;
    if (stage == 1)
        __builtin_prefetch(&r->ring[t % per], 1);
    else
        __builtin_prefetch(th_mbx_ent(m, th_mbx_ref_pos(relaxed(&r->ring[t % per]))), 0);
}

int th_mbx_prepare(struct th_mbx *m, const char *user, size_t ulen, uint64_t now_ns,
                   struct th_mbx_ticket *t)
{
    if (!m->writable || !m->gen)
        return -EROFS;
    if (ulen == 0 || ulen > TH_USER_MAX)
        return -EINVAL;
    uint32_t i = user_record(m, user, ulen, now_ns);
    struct th_mbx_user *r = th_mbx_rec(m, i);
    *t = (struct th_mbx_ticket){i, atomic_load(&r->gen), relaxed(&r->seq) + 1};
    return 0;
}

int th_mbx_prepare_at(struct th_mbx *m, const char *user, size_t ulen, uint64_t seq, uint64_t gone,
                      uint64_t now_ns, struct th_mbx_ticket *t)
{
    if (!m->writable || !m->gen)
        return -EROFS;
    if (ulen == 0 || ulen > TH_USER_MAX || seq == 0)
        return -EINVAL;
    uint32_t i = user_record(m, user, ulen, now_ns);
    struct th_mbx_user *r = th_mbx_rec(m, i);
    if (relaxed(&r->seq) >= seq)
        return 0; /* held already (or older than what is held): nothing to do */
    if (gone > relaxed(&r->seq) && gone > relaxed(&r->dropped) && gone <= seq) {
        rec_begin(m, i);
        th_mbx_st(&r->dropped, gone);
        rec_end(m, i);
    }
    *t = (struct th_mbx_ticket){i, atomic_load(&r->gen), seq};
    return 1;
}

void th_mbx_set_epoch(struct th_mbx *m, uint64_t epoch)
{
    if (m->writable && m->gen)
        __atomic_store_n(&m->hdr->epoch, epoch, __ATOMIC_RELEASE);
}

void th_mbx_set_source_seq(struct th_mbx *m, uint64_t seq)
{
    if (m->writable && m->gen)
        atomic_store_explicit(&m->hdr->counters.source_seq, seq + 1, memory_order_release);
}

void th_mbx_set_source_epoch(struct th_mbx *m, uint64_t epoch)
{
    if (m->writable && m->gen)
        atomic_store_explicit(&m->hdr->counters.source_epoch, epoch, memory_order_release);
}

void th_mbx_set_source_handed(struct th_mbx *m, uint64_t seq)
{
    if (m->writable && m->gen)
        atomic_store_explicit(&m->hdr->counters.source_handed, seq + 1, memory_order_release);
}

void th_mbx_gone_upto(struct th_mbx *m, uint64_t upto)
{
    struct th_mbx_hdr *h = m->hdr;
    if (!m->writable || !m->gen)
        return;
    /* Floors first: a user met from now on starts above what may have been its. */
    for (uint32_t i = 0; i < h->nfloors; i++)
        if (relaxed(&m->floors[i]) < upto)
            th_mbx_st(&m->floors[i], upto);
    for (uint32_t i = 0; i < h->nusers; i++) {
        struct th_mbx_user *r = th_mbx_rec(m, i);
        if (!atomic_load_explicit(&r->user_len, memory_order_relaxed) || relaxed(&r->seq) >= upto)
            continue;
        rec_begin(m, i);
        th_mbx_st(&r->dropped, upto); /* first: a half-done change reads as lost, never as held */
        th_mbx_st(&r->seq, upto);
        rec_end(m, i);
    }
}

void th_mbx_reset(struct th_mbx *m, uint64_t epoch, uint64_t floor)
{
    struct th_mbx_hdr *h = m->hdr;
    if (!m->writable || !m->gen)
        return;
    __atomic_store_n(&h->epoch, 0, __ATOMIC_RELEASE); /* no client's epoch while it changes */
    for (uint32_t i = 0; i < h->nusers; i++) {
        struct th_mbx_user *r = th_mbx_rec(m, i);
        if (!atomic_load_explicit(&r->user_len, memory_order_relaxed) && relaxed(&r->seq) == 0 &&
            relaxed(&r->dropped) == 0)
            continue;
        rec_begin(m, i);
        th_mbx_st32(&r->user_len, 0);
        th_mbx_st(&r->tail, relaxed(&r->head));
        th_mbx_st32(&r->gen, atomic_load(&r->gen) + 1);
        th_mbx_st(&r->seq, 0);
        th_mbx_st(&r->dropped, 0);
        th_mbx_st(&r->last_exp_ns, 0);
        rec_end(m, i);
    }
    th_mbx_st(&h->tail, relaxed(&h->head)); /* the log's entries are nobody's now */
    for (uint32_t i = 0; i < h->nfloors; i++)
        th_mbx_st(&m->floors[i], floor);
    atomic_store(&h->bytes, 0);
    atomic_store(&h->entries, 0);
    __atomic_store_n(&h->epoch, epoch, __ATOMIC_RELEASE);
}

/* Write the entry at head and publish it (commit word, then head). */
static uint64_t append(struct th_mbx *m, const struct th_mbx_ticket *t, uint32_t size,
                       const char *frame, size_t len, const char *id, size_t idlen, uint32_t tag,
                       uint64_t expires_ns, uint64_t now_ns)
{
    struct th_mbx_hdr *h = m->hdr;
    uint64_t pos = relaxed(&h->head);
    struct th_mbx_entry *e = th_mbx_ent(m, pos);
    th_mbx_st(&e->pos, 0); /* not committed (the old bytes may hold anything) */
    th_mbx_st(&e->seq, t->seq);
    th_mbx_st(&e->stored_ns, now_ns);
    th_mbx_st(&e->expires_ns, expires_ns);
    th_mbx_st(&e->outcome, (uint64_t)m->gen << 32);
    th_mbx_st32(&e->size, size);
    th_mbx_st32(&e->rec, t->rec);
    th_mbx_st32(&e->len, (uint32_t)len);
    th_mbx_st32(&e->connections, 0);
    atomic_store_explicit(&e->idlen, (uint16_t)idlen, memory_order_release);
    atomic_store_explicit(&e->flags, 0, memory_order_release);
    th_mbx_st32(&e->id_hash, tag);
    _Atomic uint64_t *w = th_mbx_ent_words(e);
    if (idlen)
        th_mbx_words_store(w, id, idlen);
    th_mbx_words_store(w + th_mbx_align8(idlen) / 8, frame, len);
    th_mbx_st(&e->pos, pos);
    th_mbx_st(&h->head, pos + size);
    return pos;
}

int th_mbx_commit(struct th_mbx *m, const struct th_mbx_ticket *t, const char *frame, size_t len,
                  const char *id, size_t idlen, uint64_t ttl_ns, uint64_t now_ns, uint64_t *pos)
{
    struct th_mbx_hdr *h = m->hdr;
    *pos = 0;
    if (!m->writable || !m->gen)
        return -EROFS;
    if (t->rec >= h->nusers)
        return -EINVAL;
    struct th_mbx_user *r = th_mbx_rec(m, t->rec);
    if (atomic_load(&r->gen) != t->gen || relaxed(&r->seq) >= t->seq)
        return -ESTALE;
    size_t size = (sizeof(struct th_mbx_entry) + th_mbx_align8(idlen) + len + 63) & ~(size_t)63;
    if (ttl_ns && (len > TH_MBX_MAX_FRAME || idlen > TH_MBX_MAX_ID || size > h->arena_bytes / 4))
        return -E2BIG;
    uint64_t p = 0, exp = now_ns + ttl_ns;
    uint32_t tag = idlen ? th_mbx_id_tag(id, idlen) : 0;
    if (ttl_ns) {
        reserve(m, (uint32_t)size, now_ns);
        if (atomic_load(&r->gen) != t->gen) /* reclaiming cannot recycle; belt and braces */
            return -ESTALE;
        p = append(m, t, (uint32_t)size, frame, len, id, idlen, tag, exp, now_ns);
    }
    rec_begin(m, t->rec);
    th_mbx_st(&r->seq, t->seq);
    if (p) {
        uint64_t hd = relaxed(&r->head);
        if (hd - relaxed(&r->tail) >= h->per_user) /* the ring slot we need is the oldest's */
            pop_front(m, r, now_ns, TH_MBX_EV_PER_USER);
        th_mbx_st(&r->ring[hd % h->per_user], th_mbx_ref(p, tag));
        th_mbx_st(&r->head, hd + 1);
        if (exp > relaxed(&r->last_exp_ns))
            th_mbx_st(&r->last_exp_ns, exp);
        atomic_store_explicit(&h->bytes, relaxed(&h->bytes) + size, memory_order_relaxed);
        atomic_store_explicit(&h->entries, relaxed(&h->entries) + 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&h->counters.stored, 1, memory_order_relaxed);
    }
    rec_end(m, t->rec);
    /* The seq is stored before the caller looks the user up (mailbox.h, the ordering argument). */
    atomic_thread_fence(memory_order_seq_cst);
    *pos = p;
    return 0;
}

void th_mbx_set_outcome(struct th_mbx *m, uint64_t pos, unsigned status, unsigned connections)
{
    if (!m->writable || !m->gen || pos == 0 || pos < relaxed(&m->hdr->tail) ||
        pos >= relaxed(&m->hdr->head))
        return;
    struct th_mbx_entry *e = th_mbx_ent(m, pos);
    if (relaxed(&e->pos) != pos)
        return;
    th_mbx_st32(&e->connections, connections);
    th_mbx_st(&e->outcome, (uint64_t)m->gen << 32 | status);
}

/* ---- writer life -------------------------------------------------------- */

/* Recount the gauges from the records' rings (after a predecessor died mid-change). */
static void recount(struct th_mbx *m)
{
    struct th_mbx_hdr *h = m->hdr;
    uint64_t bytes = 0, entries = 0, tail = relaxed(&h->tail), head = relaxed(&h->head);
    for (uint64_t pos = tail; pos < head;) {
        struct th_mbx_entry *e = th_mbx_ent(m, pos);
        uint32_t size = atomic_load_explicit(&e->size, memory_order_relaxed), i;
        if (size < 64 || size % 64 || size > head - pos)
            break;
        if (!(atomic_load_explicit(&e->flags, memory_order_relaxed) & TH_MBX_E_PAD) &&
            relaxed(&e->pos) == pos) {
            struct th_mbx_user *r = owner_front(m, pos, &i);
            if (!r && i < h->nusers) { /* not the front: is it further in its user's ring? */
                r = th_mbx_rec(m, i);
                uint64_t k = relaxed(&r->tail), hd = relaxed(&r->head);
                for (; k < hd; k++)
                    if (th_mbx_ref_pos(relaxed(&r->ring[k % h->per_user])) == pos)
                        break;
                r = k < hd ? r : NULL;
            }
            if (r) {
                bytes += size;
                entries++;
            }
        }
        pos += size;
    }
    atomic_store(&h->bytes, bytes);
    atomic_store(&h->entries, entries);
}

int th_mbx_writer_begin(struct th_mbx *m, pid_t pid, uint64_t now_ns, char *err, size_t errlen)
{
    struct th_mbx_hdr *h = m->hdr;
    if (!m->writable)
        return -EROFS;
    int32_t cur = atomic_load(&h->writer_pid);
    for (;;) {
        if (cur > 0 && cur != pid && th_mbx_writer_alive(m)) {
            if (err && errlen)
                snprintf(err, errlen, "mailbox: pid %d is its writer", (int)cur);
            return -EBUSY;
        }
        if (atomic_compare_exchange_strong(&h->writer_pid, &cur, pid))
            break;
    }
    /*
     * A cache of a mailbox kept elsewhere (JetStream) went stale when its
     * writer died: others stored on, nobody mirrored. Make it match no epoch
     * before this writer counts as alive (writer_start below), or a resume
     * in the window until the new writer resets it (the recount and expiry
     * below take a while on a big object) would be answered recovered:true
     * from it, missing what was stored meanwhile (worker/resume.c
     * cache_behind reads "writer alive and epoch set" as "caught up").
     */
    if (atomic_load_explicit(&h->counters.source_seq, memory_order_acquire))
        __atomic_store_n(&h->epoch, 0, __ATOMIC_RELEASE);
    atomic_store(&h->writer_start, th_proc_start_time(pid));
    m->gen = atomic_fetch_add(&h->writer_gen, 1) + 1;
    if (m->gen == 0) /* 0 means "not the writer" */
        m->gen = atomic_fetch_add(&h->writer_gen, 1) + 1;
    uint32_t b = atomic_load(&h->busy_rec);
    if (b != TH_MBX_NONE && b < h->nusers) { /* the predecessor died inside this change */
        struct th_mbx_user *r = th_mbx_rec(m, b);
        uint64_t t = relaxed(&r->tail), hd = relaxed(&r->head);
        if (t > hd)
            th_mbx_st(&r->tail, hd);
        else if (hd - t > h->per_user)
            th_mbx_st(&r->tail, hd - h->per_user);
        if (relaxed(&r->ver) & 1)
            th_mbx_st(&r->ver, relaxed(&r->ver) + 1);
    }
    th_mbx_st32(&h->busy_rec, TH_MBX_NONE);
    recount(m);
    while (th_mbx_expire(m, now_ns) == TH_MBX_EXPIRE_BATCH) /* at start: all of it */
        ;
    return 0;
}

void th_mbx_writer_end(struct th_mbx *m)
{
    int32_t pid = atomic_load(&m->hdr->writer_pid);
    if (m->gen && m->writable)
        atomic_compare_exchange_strong(&m->hdr->writer_pid, &pid, 0);
    m->gen = 0;
}
