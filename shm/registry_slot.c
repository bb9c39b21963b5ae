/*
 * Slot operations on a mapped registry: claim and release (the only writers
 * of slot fields), seqlock-checked reads, lookups by user through the index
 * window, the recent-disconnect records and the full-table visit. Every step
 * follows the protocol in registry.h; comments here say why each ordering
 * matters for a reader that races with us or a survivor that repairs after us.
 */
#include "shm/registry_impl.h"

#include <errno.h>
#include <string.h>

#define RELAXED memory_order_relaxed
#define ACQ memory_order_acquire
#define REL memory_order_release

/* ---- reads ---- */

/* Seqlock copy of slot i; on success also its hash and flags. */
static int read_slot(const struct th_reg *r, uint32_t i, struct th_conn_info *out, uint32_t *hash,
                     uint32_t *flags)
{
    struct th_slot *s = &r->slots[i];
    /* seq_cst (a plain move on x86): the cap protocol's gather must see every
     * slot published before its own claim's seq_cst publish. */
    uint64_t c1 = atomic_load_explicit(&s->ctl, memory_order_seq_cst);
    if (th_ctl_state(c1) != TH_SLOT_LIVE)
        return 0;
    out->slot = i;
    out->gen = th_ctl_gen(c1);
    out->worker = th_ctl_owner(c1);
    /* Acquire loads (plain moves on x86) keep the ctl re-check below after
     * them, and pair with the claimer's release stores in fill_slot. */
    out->conn_id = atomic_load_explicit(&s->conn_id, ACQ);
    out->connected_at = atomic_load_explicit(&s->connected_at, ACQ);
    out->last_seen = atomic_load_explicit(&s->last_seen, ACQ);
    out->ticket = atomic_load_explicit(&s->ticket, ACQ);
    *hash = atomic_load_explicit(&s->user_hash, ACQ);
    *flags = atomic_load_explicit(&s->flags, ACQ);
    size_t len = atomic_load_explicit(&s->user_len, ACQ);
    th_user_load(out->user, s->user);
    if (atomic_load_explicit(&s->ctl, RELAXED) != c1)
        return 0; /* released or reused while we copied */
    out->user_len = len > TH_USER_MAX ? TH_USER_MAX : len;
    out->user[out->user_len] = 0;
    return 1;
}

int th_reg_read(const struct th_reg *r, uint32_t slot, struct th_conn_info *out)
{
    uint32_t hash, flags;
    if (slot >= r->hdr->nslots)
        return 0;
    return read_slot(r, slot, out, &hash, &flags);
}

uint64_t th_reg_peek(const struct th_reg *r, uint32_t i, struct th_conn_info *out)
{
    struct th_slot *s = &r->slots[i];
    uint64_t c = atomic_load_explicit(&s->ctl, memory_order_acquire);
    size_t len = atomic_load_explicit(&s->user_len, RELAXED);
    out->slot = i;
    out->gen = th_ctl_gen(c);
    out->worker = th_ctl_owner(c);
    out->conn_id = atomic_load_explicit(&s->conn_id, RELAXED);
    out->connected_at = atomic_load_explicit(&s->connected_at, RELAXED);
    out->last_seen = atomic_load_explicit(&s->last_seen, RELAXED);
    out->ticket = atomic_load_explicit(&s->ticket, RELAXED);
    th_user_load(out->user, s->user);
    out->user_len = len > TH_USER_MAX ? TH_USER_MAX : len;
    out->user[out->user_len] = 0;
    return c;
}

void th_reg_foreach(const struct th_reg *r, th_reg_visit_fn fn, void *arg)
{
    th_reg_foreach_range(r, 0, r->hdr->nslots, fn, arg);
}

uint32_t th_reg_foreach_range(const struct th_reg *r, uint32_t first, uint32_t count,
                              th_reg_visit_fn fn, void *arg)
{
    struct th_conn_info ci;
    uint32_t hash, flags, n = r->hdr->nslots;
    uint32_t end = first < n && count < n - first ? first + count : n;
    for (uint32_t i = first; i < end; i++)
        if (read_slot(r, i, &ci, &hash, &flags) && fn(&ci, arg))
            return i + 1;
    return end;
}

/* ---- lookups by user ---- */

struct user_key {
    const char *user;
    size_t ulen;
    uint32_t hash;
};

static int key_matches(const struct user_key *k, const struct th_conn_info *ci, uint32_t hash)
{
    return hash == k->hash && ci->user_len == k->ulen && memcmp(ci->user, k->user, k->ulen) == 0;
}

/* The rare slow path: slots whose two lines were full are found by a table scan. */
static int scan_unindexed(const struct th_reg *r, const struct user_key *k, th_reg_visit_fn fn,
                          void *arg)
{
    struct th_conn_info ci;
    uint32_t hash, flags;
    for (uint32_t i = 0; i < r->hdr->nslots; i++) {
        if (!read_slot(r, i, &ci, &hash, &flags) || !(flags & TH_SLOT_F_UNINDEXED) ||
            !key_matches(k, &ci, hash))
            continue;
        int rc = fn(&ci, arg);
        if (rc)
            return rc;
    }
    return 0;
}

/*
 * Has slot already been gathered? Two buckets can name the same slot for a
 * moment: a lookup that races a release and a re-claim by the same user sees
 * the old bucket in one line and the new one in the other. Without this the
 * caller would get the connection twice (and deliver twice).
 */
static int seen(const uint32_t *cand, uint32_t nc, uint32_t slot)
{
    for (uint32_t i = 0; i < nc; i++)
        if (cand[i] == slot)
            return 1;
    return 0;
}

/* How much of each candidate slot the caller will read (what gather prefetches). */
enum slot_reads { READS_NO_SLOT, READS_LINE0, READS_BOTH_LINES };

/*
 * Hash matches of one index group, added to cand (each slot once, its owner
 * in owner when given), their slots prefetched as the caller will read them:
 * its front line, and its back line only while the group's back count says
 * an entry may be there. *spill (if given) gets the group's spill count.
 */
static uint32_t gather_line(const struct th_reg *r, const struct user_key *k, uint32_t line,
                            uint32_t *cand, uint16_t *owner, uint32_t nc, enum slot_reads reads,
                            uint32_t *spill)
{
    uint32_t n = r->hdr->nslots;
    const _Atomic uint64_t *g = &r->index[line * TH_REG_LINE];
    /* seq_cst, before the buckets: an entry of a claim published before we started is on the
     * front line, or its back count is here already (raised before its bucket CAS). */
    uint64_t counts = atomic_load_explicit(&g[0], memory_order_seq_cst);
    uint32_t end = th_reg_count_back(counts) ? TH_REG_LINE : TH_REG_FRONT;
    for (uint32_t j = 1; j < end; j++) {
        /* seq_cst for the cap protocol (see read_slot); a plain move on x86. */
        uint64_t v = atomic_load_explicit(&g[j], memory_order_seq_cst);
        uint32_t i = th_index_slot(v);
        if (!v || !th_index_tag_matches(v, k->hash) || i >= n || seen(cand, nc, i))
            continue;
        if (owner)
            owner[nc] = th_index_worker(v);
        cand[nc++] = i;
        if (reads != READS_NO_SLOT)
            __builtin_prefetch(&r->slots[i]);
        if (reads == READS_BOTH_LINES)
            __builtin_prefetch((const char *)&r->slots[i] + 64);
    }
    if (spill)
        *spill = th_reg_count_spill(counts);
    return nc;
}

/*
 * The candidate slots of a user: the hash matches in its first index group,
 * and in its second only when the first group's spill count says some entry
 * of this group went there (each group's back line only when its back count
 * is not 0): usually one cache line.
 */
static uint32_t gather(const struct th_reg *r, const struct user_key *k,
                       uint32_t cand[TH_REG_WINDOW], uint16_t *owner, enum slot_reads reads)
{
    uint32_t spill;
    uint32_t nc = gather_line(r, k, th_reg_line(r, k->hash, 0), cand, owner, 0, reads, &spill);
    if (spill)
        nc = gather_line(r, k, th_reg_line(r, k->hash, 1), cand, owner, nc, reads, NULL);
    return nc;
}

/*
 * Visit every live slot of a user: its index window (usually one line), plus
 * a table scan for slots that found their window full (hdr->unindexed > 0,
 * rare). Stops and returns fn's value when it is nonzero.
 */
static int each_user_slot(const struct th_reg *r, const struct user_key *k, th_reg_visit_fn fn,
                          void *arg)
{
    struct th_conn_info ci;
    uint32_t hash, flags, cand[TH_REG_WINDOW];
    uint32_t nc = gather(r, k, cand, NULL, READS_BOTH_LINES);
    for (uint32_t c = 0; c < nc; c++) {
        if (!read_slot(r, cand[c], &ci, &hash, &flags) || (flags & TH_SLOT_F_UNINDEXED) ||
            !key_matches(k, &ci, hash))
            continue;
        int rc = fn(&ci, arg);
        if (rc)
            return rc;
    }
    if (atomic_load_explicit(&r->hdr->unindexed, memory_order_seq_cst) == 0)
        return 0;
    return scan_unindexed(r, k, fn, arg);
}

/*
 * Line 0 of slot i, if it is LIVE and holds exactly the user whose id words
 * (zero-padded) are kw: the seqlock read of the fields a delivery needs. Only
 * the words the id covers are loaded, so an id of up to TH_SLOT_HOT_USER bytes
 * never touches line 1.
 */
static int read_hot(const struct th_reg *r, uint32_t i, const struct user_key *k,
                    const uint64_t *kw, struct th_conn_ref *out)
{
    struct th_slot *s = &r->slots[i];
    uint64_t c1 = atomic_load_explicit(&s->ctl, memory_order_seq_cst);
    if (th_ctl_state(c1) != TH_SLOT_LIVE ||
        atomic_load_explicit(&s->user_len, ACQ) != (uint8_t)k->ulen)
        return 0;
    const uint64_t *w = (const uint64_t *)(const void *)s->user;
    for (size_t j = 0; j < (k->ulen + 7) / 8; j++)
        if (__atomic_load_n(&w[j], __ATOMIC_ACQUIRE) != kw[j])
            return 0;
    out->slot = i;
    out->gen = th_ctl_gen(c1);
    out->worker = th_ctl_owner(c1);
    out->conn_id = atomic_load_explicit(&s->conn_id, ACQ);
    return atomic_load_explicit(&s->ctl, RELAXED) == c1; /* not released or reused meanwhile */
}

/* The registry holds any bytes within the rule's length (see shm/proto/userid.h). */
static bool valid_user(const char *user, size_t ulen)
{
    return user && th_userid_len_ok(ulen);
}

struct collect {
    struct th_conn_info *out;
    int max, n;
};

static int collect_one(const struct th_conn_info *ci, void *arg)
{
    struct collect *c = arg;
    if (c->n < c->max)
        c->out[c->n] = *ci;
    c->n++;
    return c->n >= c->max;
}

int th_reg_find_user(const struct th_reg *r, const char *user, size_t ulen,
                     struct th_conn_info *out, int max)
{
    if (!valid_user(user, ulen) || max <= 0)
        return 0;
    struct user_key k = {user, ulen, th_user_hash(user, ulen)};
    struct collect c = {out, max, 0};
    each_user_slot(r, &k, collect_one, &c);
    return c.n;
}

struct collect_ref {
    struct th_conn_ref *out;
    int max, n;
};

static int collect_ref(const struct th_conn_info *ci, void *arg)
{
    struct collect_ref *c = arg;
    c->out[c->n++] = (struct th_conn_ref){ci->slot, ci->gen, ci->worker, ci->conn_id};
    return c->n >= c->max;
}

int th_reg_find_conns(const struct th_reg *r, const char *user, size_t ulen,
                      struct th_conn_ref *out, int max)
{
    if (!valid_user(user, ulen) || max <= 0)
        return 0;
    struct user_key k = {user, ulen, th_user_hash(user, ulen)};
    uint64_t kw[TH_USER_MAX / 8] = {0};
    memcpy(kw, user, ulen);
    uint32_t cand[TH_REG_WINDOW],
        nc = gather(r, &k, cand, NULL, ulen > TH_SLOT_HOT_USER ? READS_BOTH_LINES : READS_LINE0);
    int n = 0;
    for (uint32_t c = 0; c < nc && n < max; c++)
        n += read_hot(r, cand[c], &k, kw, &out[n]);
    /* Read after the index, as each_user_slot does. Some slot is unindexed (rare): the
     * full lookup, which dedupes by the slots' flags and scans for them. */
    if (atomic_load_explicit(&r->hdr->unindexed, memory_order_seq_cst) != 0) {
        struct collect_ref c = {out, max, 0};
        each_user_slot(r, &k, collect_ref, &c);
        return c.n;
    }
    return n;
}

/* Keep candidate (slot, owner) unless it is there already; returns the new count. */
static int owner_add(struct th_owner_ref *out, int n, uint32_t slot, uint16_t worker)
{
    for (int j = 0; j < n; j++)
        if (out[j].slot == slot)
            return n;
    out[n] = (struct th_owner_ref){slot, worker};
    return n + 1;
}

struct collect_owner {
    struct th_owner_ref *out;
    int max, n;
};

static int collect_owner(const struct th_conn_info *ci, void *arg)
{
    struct collect_owner *c = arg;
    c->n = owner_add(c->out, c->n, ci->slot, ci->worker);
    return c->n >= c->max;
}

int th_reg_find_owners(const struct th_reg *r, const char *user, size_t ulen,
                       struct th_owner_ref *out, int max)
{
    if (!valid_user(user, ulen) || max <= 0)
        return 0;
    struct user_key k = {user, ulen, th_user_hash(user, ulen)};
    uint32_t cand[TH_REG_WINDOW];
    uint16_t owner[TH_REG_WINDOW];
    uint32_t nc = gather(r, &k, cand, owner, READS_NO_SLOT);
    int n = 0;
    for (uint32_t c = 0; c < nc && n < max; c++)
        out[n++] = (struct th_owner_ref){cand[c], owner[c]};
    /* Read after the index, as each_user_slot does. Some slot is unindexed (rare): the table
     * scan adds the ones that hold this user (confirmed slots; the owner confirms again). */
    if (n < max && atomic_load_explicit(&r->hdr->unindexed, memory_order_seq_cst) != 0) {
        struct collect_owner c = {out, max, n};
        scan_unindexed(r, &k, collect_owner, &c);
        n = c.n;
    }
    return n;
}

int th_reg_confirm(const struct th_reg *r, uint32_t slot, uint16_t worker, const char *user,
                   size_t ulen, struct th_conn_ref *out)
{
    if (!valid_user(user, ulen) || slot >= r->hdr->nslots)
        return 0;
    struct user_key k = {user, ulen, 0};
    uint64_t kw[TH_USER_MAX / 8] = {0};
    memcpy(kw, user, ulen);
    return read_hot(r, slot, &k, kw, out) && out->worker == worker;
}

void th_reg_prefetch_user(const struct th_reg *r, uint32_t hash, int slots)
{
    const _Atomic uint64_t *g = &r->index[th_reg_line(r, hash, 0) * TH_REG_LINE];
    if (!slots) {
        __builtin_prefetch((const void *)g);
        return;
    }
    uint64_t counts = atomic_load_explicit(g, RELAXED); /* a hint: nothing decided on it */
    if (th_reg_count_back(counts))
        __builtin_prefetch((const void *)(g + TH_REG_FRONT));
    if (th_reg_count_spill(counts))
        __builtin_prefetch((const void *)&r->index[th_reg_line(r, hash, 1) * TH_REG_LINE]);
}

/* ---- disconnect records ---- */

static struct th_disc *disc_of(const struct th_reg *r, uint32_t hash)
{
    return &r->disc[hash & (r->hdr->ndisc - 1)];
}

/* Remember a user's LastSeen after its last connection went. Best effort: skips a busy entry. */
static void disc_record(struct th_reg *r, const struct user_key *k, uint64_t last_seen)
{
    struct th_disc *d = disc_of(r, k->hash);
    uint64_t s = atomic_load_explicit(&d->seq, RELAXED);
    uint32_t seq = (uint32_t)s;
    if (seq & 1)
        return;
    uint64_t held = ((uint64_t)(uint32_t)th_reg_self() << 32) | (uint32_t)(seq + 1);
    if (!atomic_compare_exchange_strong(&d->seq, &s, held))
        return;
    /* Release stores: a reader that sees any new byte also sees the odd seq. */
    atomic_store_explicit(&d->user_hash, k->hash, REL);
    atomic_store_explicit(&d->last_seen, last_seen, REL);
    atomic_store_explicit(&d->user_len, (uint8_t)k->ulen, REL);
    th_user_store(d->user, k->user, k->ulen);
    atomic_store_explicit(&d->seq, (uint32_t)(seq + 2), memory_order_release);
}

/* The disconnect record's LastSeen for a user: 1 with *ns, else 0. */
static int disc_lookup(const struct th_reg *r, const struct user_key *k, uint64_t *ns)
{
    struct th_disc *d = disc_of(r, k->hash);
    char user[TH_USER_MAX];
    uint64_t s1 = atomic_load_explicit(&d->seq, memory_order_acquire);
    if (s1 & 1)
        return 0;
    uint32_t hash = atomic_load_explicit(&d->user_hash, ACQ);
    uint64_t seen = atomic_load_explicit(&d->last_seen, ACQ);
    size_t len = atomic_load_explicit(&d->user_len, ACQ);
    th_user_load(user, d->user);
    if (atomic_load_explicit(&d->seq, RELAXED) != s1 || hash != k->hash || len != k->ulen ||
        memcmp(user, k->user, len) != 0)
        return 0;
    *ns = seen;
    return 1;
}

static int max_seen(const struct th_conn_info *ci, void *arg)
{
    uint64_t *best = arg;
    if (ci->last_seen > *best)
        *best = ci->last_seen;
    return 0;
}

int th_reg_last_seen(const struct th_reg *r, const char *user, size_t ulen, uint64_t *ns)
{
    if (!valid_user(user, ulen))
        return 0;
    struct user_key k = {user, ulen, th_user_hash(user, ulen)};
    uint64_t best = 0;
    each_user_slot(r, &k, max_seen, &best);
    if (best) {
        *ns = best;
        return 1;
    }
    return disc_lookup(r, &k, ns);
}

/* ---- claim ---- */

/* Try to take slot i (hinted free) for this process. Returns 1 with *ctl = CLAIMING word. */
static int try_take(struct th_reg *r, uint32_t i, uint64_t *ctl)
{
    _Atomic uint64_t *word = &r->freemap[i / 64];
    uint64_t bit = 1ull << (i % 64);
    uint64_t c = atomic_load_explicit(&r->slots[i].ctl, RELAXED);
    if (th_ctl_state(c) != TH_SLOT_FREE) {
        atomic_fetch_and_explicit(word, ~bit, RELAXED); /* stale hint */
        return 0;
    }
    uint64_t want = th_ctl_make_actor(th_ctl_gen(c) + 1, th_reg_self(), TH_SLOT_CLAIMING);
    if (!atomic_compare_exchange_strong(&r->slots[i].ctl, &c, want))
        return 0; /* another claimer won; it clears the hint */
    atomic_fetch_add_explicit(&r->hdr->transitions, 1, RELAXED);
    atomic_fetch_add_explicit(&r->hdr->used, 1, RELAXED);
    atomic_fetch_and_explicit(word, ~bit, RELAXED);
    *ctl = want;
    return 1;
}

/* Scan the free hints from this process's cursor; returns the slot or TH_NO_SLOT. */
static uint32_t grab_slot(struct th_reg *r, uint64_t *ctl)
{
    uint32_t n = r->hdr->nslots, words = (n + 63) / 64;
    if (r->cursor == 0) /* spread processes over the table so claimers rarely collide */
        r->cursor = (uint32_t)(((uint64_t)th_reg_self() * 2654435761u) % n);
    uint32_t w0 = (r->cursor % n) / 64;
    for (uint32_t k = 0; k <= words; k++) {
        uint32_t w = (w0 + k) % words;
        uint64_t bits = atomic_load_explicit(&r->freemap[w], RELAXED);
        while (bits) {
            uint32_t i = w * 64 + (uint32_t)__builtin_ctzll(bits);
            bits &= bits - 1;
            if (i < n && try_take(r, i, ctl)) {
                r->cursor = i + 1 < n ? i + 1 : 0;
                return i;
            }
        }
    }
    return TH_NO_SLOT;
}

static void fill_slot(struct th_slot *s, const struct user_key *k, uint32_t conn_id, uint64_t now)
{
    /* Release stores (plain moves on x86): a reader whose acquire load sees
     * any of them also sees our CLAIMING ctl on its re-check and drops the copy. */
    atomic_store_explicit(&s->user_hash, k->hash, REL);
    atomic_store_explicit(&s->conn_id, conn_id, REL);
    atomic_store_explicit(&s->connected_at, now, REL);
    atomic_store_explicit(&s->last_seen, now, REL);
    atomic_store_explicit(&s->flags, 0, REL);
    atomic_store_explicit(&s->user_len, (uint8_t)k->ulen, REL);
    th_user_store(s->user, k->user, k->ulen);
}

/* Empty buckets in one of the hash's lines. */
static uint32_t line_room(const struct th_reg *r, uint32_t hash, int second)
{
    uint32_t room = 0;
    for (uint32_t j = 0; j < TH_REG_BUCKETS; j++)
        room += atomic_load_explicit(
                    &r->index[th_reg_bucket(r, hash, (uint32_t)second * TH_REG_BUCKETS + j)],
                    RELAXED) == 0;
    return room;
}

/*
 * CAS slot i's entry into an empty bucket of one of the hash's lines, front
 * buckets first; 1 when it went in. A back bucket's line counts it first
 * (so the count never lags the entry) and uncounts it if the CAS lost.
 */
static int line_insert(struct th_reg *r, uint32_t i, uint32_t hash, uint16_t worker, int second)
{
    for (uint32_t j = 0; j < TH_REG_BUCKETS; j++) {
        uint32_t b = th_reg_bucket(r, hash, (uint32_t)second * TH_REG_BUCKETS + j);
        uint64_t empty = 0;
        if (atomic_load_explicit(&r->index[b], RELAXED) != 0)
            continue;
        _Atomic uint64_t *counts = &r->index[b - b % TH_REG_LINE];
        int back = b % TH_REG_LINE >= TH_REG_FRONT;
        if (back)
            atomic_fetch_add(counts, TH_REG_BACK_ONE);
        if (atomic_compare_exchange_strong(&r->index[b], &empty, th_index_entry(hash, worker, i))) {
            atomic_store_explicit(&r->slots[i].bucket, b, RELAXED);
            return 1;
        }
        if (back)
            th_reg_counts_dec(counts, TH_REG_BACK_ONE);
    }
    return 0;
}

/* Into the second line, its spill counted first (so the count never lags the entry). */
static int spill_insert(struct th_reg *r, uint32_t i, uint32_t hash, uint16_t worker)
{
    _Atomic uint64_t *spill = th_reg_spill(r, hash);
    atomic_fetch_add(spill, 1);
    if (line_insert(r, i, hash, worker, 1))
        return 1;
    th_reg_counts_dec(spill, 1); /* nothing spilled after all */
    return 0;
}

/*
 * The first line while it has TH_REG_FIRST_ROOM empty buckets (lookups then
 * read one line), else the emptier of the two ("two choices", so a user's
 * several devices and unlucky lines rarely fill both: always the first line
 * filled both lines of some user at 1M slots half full). Both full marks the
 * slot unindexed.
 */
static void index_insert(struct th_reg *r, uint32_t i, uint32_t hash, uint16_t worker)
{
    uint32_t room = line_room(r, hash, 0);
    int done;
    if (room >= TH_REG_FIRST_ROOM || line_room(r, hash, 1) <= room)
        done = line_insert(r, i, hash, worker, 0) || spill_insert(r, i, hash, worker);
    else
        done = spill_insert(r, i, hash, worker) || line_insert(r, i, hash, worker, 0);
    if (done)
        return;
    /* Count first: a crash here over-counts (lookups scan more), never under-counts. */
    atomic_fetch_add(&r->hdr->unindexed, 1);
    atomic_store_explicit(&r->slots[i].flags, TH_SLOT_F_UNINDEXED, RELAXED);
}

/* The user's live slots as one gather sees them: how many, and the oldest (smallest ticket). */
struct census {
    uint32_t live;
    struct th_conn_info oldest;
};

static int count_live(const struct th_conn_info *ci, void *arg)
{
    struct census *c = arg;
    if (c->live++ == 0 || ci->ticket < c->oldest.ticket)
        c->oldest = *ci;
    return 0;
}

/*
 * The cap protocol's step (4) (registry.h): release the oldest live slot of
 * the user until at most cap remain. Each round releases one slot or loses
 * the race for it to another releaser, so the loop ends; the bound only
 * guards against a table being rewritten under us forever.
 * Returns 1 if our own slot went, else 0.
 */
static int enforce_cap(struct th_reg *r, const struct user_key *k, struct th_handle self,
                       uint32_t cap, th_reg_evict_fn evicted, void *arg)
{
    for (uint32_t round = 0; round < 4 * r->hdr->nslots + 64; round++) {
        struct census c = {0};
        each_user_slot(r, k, count_live, &c);
        if (c.live <= cap)
            return 0;
        struct th_handle v = {c.oldest.slot, c.oldest.gen};
        if (th_reg_release(r, v) < 0)
            continue; /* released by someone else meanwhile: look again */
        if (v.slot == self.slot && v.gen == self.gen)
            return 1;
        if (evicted)
            evicted(&c.oldest, arg);
    }
    return 0;
}

int th_reg_claim(struct th_reg *r, const char *user, size_t ulen, uint16_t worker, uint32_t conn_id,
                 uint64_t now_ns, uint32_t cap, struct th_handle *out, th_reg_evict_fn evicted,
                 void *arg)
{
    if (!valid_user(user, ulen) || worker >= TH_MAX_WORKERS)
        return -EINVAL;
    if (!r->writable)
        return -EROFS;
    struct user_key k = {user, ulen, th_user_hash(user, ulen)};
    uint64_t c;
    uint32_t i = grab_slot(r, &c);
    if (i == TH_NO_SLOT)
        return -ENOSPC;
    fill_slot(&r->slots[i], &k, conn_id, now_ns);
    index_insert(r, i, k.hash, worker); /* the owner the LIVE publish below names */
    uint64_t ticket = atomic_fetch_add(&r->hdr->tickets, 1) + 1;
    atomic_store_explicit(&r->slots[i].ticket, ticket, REL);
    /* seq_cst, not just release: see THE PER-USER CAP in registry.h. */
    atomic_store_explicit(&r->slots[i].ctl, th_ctl_make(th_ctl_gen(c), worker, TH_SLOT_LIVE),
                          memory_order_seq_cst);
    *out = (struct th_handle){i, th_ctl_gen(c)};
    if (cap && enforce_cap(r, &k, *out, cap, evicted, arg))
        return 1;
    return 0;
}

/* ---- release ---- */

static int any_live(const struct th_conn_info *ci, void *arg)
{
    (void)ci, (void)arg; /* finding one is the answer */
    return 1;
}

/*
 * Clear every bucket of the slot's window that points at it (a dead claimer
 * may have left one); a second-line one lowers the first line's spill after
 * it is gone (the count stays >= the spilled entries).
 */
static void index_remove(struct th_reg *r, uint32_t i, uint32_t hash)
{
    for (uint32_t j = 0, win = th_reg_window(); j < win; j++) {
        uint32_t b = th_reg_bucket(r, hash, j);
        uint64_t v = atomic_load_explicit(&r->index[b], RELAXED);
        if (!v || th_index_slot(v) != i || /* any tag: we hold the slot, nobody else inserts it */
            !atomic_compare_exchange_strong(&r->index[b], &v, 0))
            continue;
        if (b % TH_REG_LINE >= TH_REG_FRONT) /* after the clear: counts never lag entries */
            th_reg_counts_dec(&r->index[b - b % TH_REG_LINE], TH_REG_BACK_ONE);
        if (j >= TH_REG_BUCKETS)
            th_reg_counts_dec(th_reg_spill(r, hash), 1);
    }
    atomic_store_explicit(&r->slots[i].bucket, TH_NO_SLOT, RELAXED);
    if (atomic_load_explicit(&r->slots[i].flags, RELAXED) & TH_SLOT_F_UNINDEXED) {
        atomic_store_explicit(&r->slots[i].flags, 0, RELAXED);
        th_reg_counter_dec(&r->hdr->unindexed);
    }
}

void th_reg_finish_release(struct th_reg *r, uint32_t i, uint64_t c, int was_live)
{
    struct th_slot *s = &r->slots[i];
    char user[TH_USER_MAX];
    /* We hold the slot (RELEASING under our pid): its fields no longer change. */
    struct user_key k = {user, atomic_load_explicit(&s->user_len, RELAXED),
                         atomic_load_explicit(&s->user_hash, RELAXED)};
    uint64_t seen = atomic_load_explicit(&s->last_seen, RELAXED);
    th_user_load(user, s->user);
    index_remove(r, i, k.hash);
    /* Our slot is already not LIVE, so of two last connections released at
     * once at least one sees the other gone and writes the record. */
    if (was_live && valid_user(user, k.ulen) && !each_user_slot(r, &k, any_live, NULL))
        disc_record(r, &k, seen);
    if (!atomic_compare_exchange_strong(&s->ctl, &c, th_ctl_make(th_ctl_gen(c), 0, TH_SLOT_FREE)))
        return; /* taken over by a repairer: only possible if our pid looked dead */
    atomic_fetch_add_explicit(&r->hdr->transitions, 1, RELAXED);
    th_reg_counter_dec(&r->hdr->used);
    atomic_fetch_or_explicit(&r->freemap[i / 64], 1ull << (i % 64), memory_order_release);
}

int th_reg_force_release(struct th_reg *r, uint32_t i, uint64_t c)
{
    uint64_t want = th_ctl_make_actor(th_ctl_gen(c), th_reg_self(), TH_SLOT_RELEASING);
    if (!atomic_compare_exchange_strong(&r->slots[i].ctl, &c, want))
        return 0;
    atomic_fetch_add_explicit(&r->hdr->transitions, 1, RELAXED);
    /* A dead claimer's slot was never LIVE: it leaves no disconnect record. */
    th_reg_finish_release(r, i, want, th_ctl_state(c) != TH_SLOT_CLAIMING);
    return 1;
}

int th_reg_release(struct th_reg *r, struct th_handle h)
{
    if (h.slot >= r->hdr->nslots)
        return -EINVAL;
    if (!r->writable)
        return -EROFS;
    uint64_t c = atomic_load_explicit(&r->slots[h.slot].ctl, memory_order_acquire);
    if (th_ctl_gen(c) != h.gen || th_ctl_state(c) != TH_SLOT_LIVE)
        return -ESTALE;
    if (!th_reg_force_release(r, h.slot, c))
        return -ESTALE;
    /* Someone else's connection: tell its worker (registry.h, th_proc_sh.released). */
    uint16_t owner = th_ctl_owner(c);
    if (owner < TH_MAX_WORKERS &&
        atomic_load_explicit(&r->hdr->workers[owner].pid, RELAXED) != th_reg_self())
        atomic_fetch_add_explicit(&r->hdr->workers[owner].released, 1, memory_order_release);
    return 0;
}
