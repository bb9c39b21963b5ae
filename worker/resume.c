/*
 * Resume and in-order delivery in the socket worker (rules in
 * worker/resume.h; the replay/live ordering argument in shm/mailbox.h).
 *
 * Replay state lives only while a replay runs: one heap struct per
 * replaying connection (its target, the user id, live frames held back),
 * and a list of (index, generation) pairs the loop walks, so a connection
 * that went away meanwhile is recognised and never touched. The mailbox
 * snapshot itself is one per-worker scratch struct, re-taken for every
 * chunk from the connection's seq_hi: a replay costs no 8 KiB per client,
 * and a reclaimed or expired entry is simply not there the next time.
 */
#include "worker/resume.h"
#include "worker/wk.h"
#include "shm/rt/clock.h"
#include "shm/rt/log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RP_CHUNK_FRAMES 32u                     /* per connection per loop iteration */
#define RP_ITER_FRAMES 4096u                    /* all connections together per loop iteration */
#define RP_WAIT_NS (10ull * 1000 * 1000 * 1000) /* a cache behind the client's since */

struct wk_replay {
    uint64_t target; /* replay stored seqs up to this one */
    int told_lost;   /* the client was told recovered:false: a further loss is no news */
    /*
     * The mailbox caches a cluster mailbox (JetStream) that has not reached
     * the client's since yet (the client got seq since from another node a
     * moment ago), or is still filling: the resume itself waits (live
     * frames above since are held meanwhile), at most RP_WAIT_NS.
     */
    int pending;
    uint64_t since, wait_until;
    uint32_t epoch_len;
    char epoch[TH_EPOCH_MAX];
    uint8_t *held; /* live frames held back: records {u64 nseq, u32 len, bytes} */
    uint32_t held_len, held_cap;
    uint32_t ulen;
    char user[TH_USER_MAX];
};

static int cache_behind(const struct worker *w, const struct th_resume_req *rr);
static void resume_pending(struct worker *w, uint32_t idx, int stale);

struct rp_ref {
    uint32_t idx, gen;
};

struct wk_resume {
    struct th_mbx mbx;
    struct th_mbx_replay *snap; /* scratch snapshot */
    char *frame;                /* scratch frame, TH_MBX_MAX_FRAME */
    struct rp_ref *list;
    uint32_t n, cap;
    uint64_t replayed; /* not yet added to the segment's counter */
};

int wk_resume_setup(struct worker *w)
{
    char err[160] = "";
    struct th_mbx probe;
    if (!w->cfg->mailbox_ttl_s)
        return 0; /* off: one an earlier group left behind must not be used */
    int rc = th_mbx_attach(&probe, w->cfg->shm_name, 1, err, sizeof(err));
    if (rc == -ENOENT)
        return 0;
    if (rc < 0) {
        th_error("th_mbx_attach: %s (%s): clients cannot resume", strerror(-rc), err);
        return 0; /* the worker still serves; resumes answer recovered:false */
    }
    struct wk_resume *r = calloc(1, sizeof(*r));
    if (!r || !(r->snap = malloc(sizeof(*r->snap))) || !(r->frame = malloc(TH_MBX_MAX_FRAME))) {
        th_error("out of memory for the resume state");
        goto fail;
    }
    r->mbx = probe;
    w->rs = r;
    return 0;
fail:
    th_mbx_detach(&probe);
    if (r) {
        free(r->snap);
        free(r->frame);
        free(r);
    }
    return -ENOMEM;
}

void wk_resume_shutdown(struct worker *w)
{
    struct wk_resume *r = w->rs;
    if (!r)
        return;
    th_mbx_detach(&r->mbx);
    free(r->snap);
    free(r->frame);
    free(r->list);
    free(r);
    w->rs = NULL;
}

static void rp_free(struct conn *c)
{
    if (!c->rp)
        return;
    free(c->rp->held);
    free(c->rp);
    c->rp = NULL;
}

void wk_resume_conn_free(struct worker *w, uint32_t idx)
{
    rp_free(&w->conns[idx]);
}

/* A replay for connection idx up to target (the list entry is added once). */
static struct wk_replay *rp_start(struct worker *w, uint32_t idx, uint64_t target, const char *user,
                                  size_t ulen, int told_lost)
{
    struct wk_resume *r = w->rs;
    struct conn *c = &w->conns[idx];
    if (c->rp) {
        if (target > c->rp->target)
            c->rp->target = target;
        return c->rp;
    }
    if (r->n == r->cap) {
        uint32_t nc = r->cap ? r->cap * 2 : 64;
        struct rp_ref *l = realloc(r->list, nc * sizeof(*l));
        if (!l)
            return NULL;
        r->list = l, r->cap = nc;
    }
    struct wk_replay *rp = calloc(1, sizeof(*rp));
    if (!rp)
        return NULL;
    rp->target = target;
    rp->told_lost = told_lost;
    rp->ulen = (uint32_t)ulen;
    memcpy(rp->user, user, ulen);
    c->rp = rp;
    r->list[r->n++] = (struct rp_ref){idx, c->gen};
    return rp;
}

/* Hold a live frame until the replay ends. 0, or -ENOBUFS past the send-queue cap. */
static int rp_hold(struct worker *w, uint32_t idx, uint64_t nseq, const uint8_t *p, uint32_t n)
{
    struct conn *c = &w->conns[idx];
    struct wk_replay *rp = c->rp;
    size_t need = (size_t)rp->held_len + 12 + n;
    if (need + wk_conn_queued(c) > w->cfg->send_queue_cap)
        return -ENOBUFS;
    if (need > rp->held_cap) {
        size_t cap = rp->held_cap ? rp->held_cap : 512;
        while (cap < need)
            cap *= 2;
        uint8_t *h = realloc(rp->held, cap);
        if (!h)
            return -ENOBUFS;
        rp->held = h, rp->held_cap = (uint32_t)cap;
    }
    memcpy(rp->held + rp->held_len, &nseq, 8);
    memcpy(rp->held + rp->held_len + 8, &n, 4);
    memcpy(rp->held + rp->held_len + 12, p, n);
    rp->held_len += 12 + n;
    return 0;
}

/*
 * With a cluster mailbox's cache (seqs are the stream's, not contiguous per
 * user) nearly every live frame "skips" seqs: does the cache hold anything
 * of the user between? One snapshot, no copy. On one node's own mailbox a
 * skip is a real gap: always filled (1).
 */
static int gap_holds_any(struct wk_resume *r, const char *user, size_t ulen, uint64_t from,
                         uint64_t nseq)
{
    uint64_t at;
    int filled;
    struct th_mbx_item it;
    if (!th_mbx_source(&r->mbx, &at, &filled) || !filled || at < nseq)
        return 1; /* not a cache, or it may not hold the gap yet: the replay path decides */
    th_mbx_replay_begin(&r->mbx, user, ulen, from, r->snap);
    return th_mbx_replay_next(&r->mbx, r->snap, 0, NULL, 0, &it) == 1 && it.seq < nseq;
}

/* The ordering rules for one stored frame with seq nseq (see resume.h). */
static uint16_t deliver_seq(struct worker *w, uint32_t idx, uint64_t nseq, const uint8_t *p,
                            uint32_t n)
{
    struct conn *c = &w->conns[idx];
    if ((c->flags & CF_SEQ_KNOWN) && nseq <= c->seq_hi)
        return TH_HO_OK; /* queued already, by a replay */
    if (c->rp) {
        if (nseq <= c->rp->target)
            return TH_HO_OK; /* the running replay sends it from the mailbox */
        if (rp_hold(w, idx, nseq, p, n) < 0) {
            wk_conn_abort(w, idx); /* as a client over --send-queue-cap */
            return TH_HO_BUSY;
        }
        return TH_HO_OK;
    }
    if ((c->flags & CF_SEQ_KNOWN) && nseq != c->seq_hi + 1 && w->rs) {
        char user[TH_USER_MAX + 1];
        size_t ulen = wk_conn_user(w, c, user);
        if (ulen && !gap_holds_any(w->rs, user, ulen, c->seq_hi, nseq))
            ulen = 0; /* a cluster cache's seqs skip: nothing stored in between, send it now */
        else if (ulen && rp_start(w, idx, nseq - 1, user, ulen, 0) &&
                 rp_hold(w, idx, nseq, p, n) == 0)
            return TH_HO_OK; /* the gap goes out first, then this frame */
        rp_free(c);          /* cannot fill it: deliver what we have */
    }
    wk_conn_send_frame(w, idx, TH_WS_TEXT, p, n);
    if (c->state != CS_OPEN)
        return TH_HO_BUSY;
    c->seq_hi = nseq;
    c->flags |= CF_SEQ_KNOWN;
    return TH_HO_OK;
}

uint16_t wk_resume_deliver(struct worker *w, uint32_t idx, const struct th_ho_msg *m,
                           const uint8_t *payload)
{
    if ((m->code & TH_HO_F_IF_RESUMED) && !(w->conns[idx].flags & CF_RESUMED))
        return TH_HO_GONE; /* stored before this client connected without since: not news */
    if (m->nseq == 0 || (m->code & TH_HO_F_NOT_STORED)) {
        wk_conn_send_frame(w, idx, TH_WS_TEXT, payload, m->len);
        return w->conns[idx].state == CS_OPEN ? TH_HO_OK : TH_HO_BUSY;
    }
    return deliver_seq(w, idx, m->nseq, payload, m->len);
}

/* The replay is over: seq_hi reaches its target, then the held frames go through the rules. */
static void rp_finish(struct worker *w, uint32_t idx)
{
    struct conn *c = &w->conns[idx];
    struct wk_replay *rp = c->rp;
    uint8_t *held = rp->held;
    uint32_t len = rp->held_len;
    if (rp->target > c->seq_hi)
        c->seq_hi = rp->target; /* what is missing below it expired or was evicted */
    c->flags |= CF_SEQ_KNOWN;
    c->rp = NULL;
    free(rp);
    for (uint32_t off = 0; off + 12 <= len && c->state == CS_OPEN;) {
        uint64_t nseq;
        uint32_t n;
        memcpy(&nseq, held + off, 8);
        memcpy(&n, held + off + 8, 4);
        deliver_seq(w, idx, nseq, held + off + 12,
                    n); /* may start another replay: it holds the rest */
        off += 12 + n;
    }
    free(held);
}

/* One chunk of connection idx's replay. Returns 1 done, 0 more to do, -1 waiting for the socket. */
static int rp_chunk(struct worker *w, uint32_t idx, uint32_t *budget)
{
    struct wk_resume *r = w->rs;
    struct conn *c = &w->conns[idx];
    struct wk_replay *rp = c->rp;
    size_t half = w->cfg->send_queue_cap / 2;
    if (wk_conn_queued(c) >= half)
        return -1; /* resumes on the send completion that drains it */
    uint64_t from = c->seq_hi;
    th_mbx_replay_begin(&r->mbx, rp->user, rp->ulen, from, r->snap);
    if (r->snap->dropped > from && !rp->told_lost) {
        /*
         * What this client still had to get left the mailbox (evicted
         * oldest first, or the record recycled) after it was promised:
         * close, so that it resumes and hears recovered:false, rather than
         * carry on with a hole it cannot see.
         */
        th_warn("user %.*s: seqs after %llu left the mailbox during the replay; closing 1011 so "
                "the client resumes",
                (int)rp->ulen, rp->user, (unsigned long long)from);
        wk_conn_close(w, idx, TH_WS_INTERNAL);
        return 1;
    }
    for (uint32_t k = 0; k < RP_CHUNK_FRAMES && *budget; k++) {
        struct th_mbx_item it;
        int got = th_mbx_replay_next(&r->mbx, r->snap, w->now_ns, r->frame, TH_MBX_MAX_FRAME, &it);
        if (got <= 0 || it.seq > rp->target)
            return 1;
        wk_conn_send_frame(w, idx, TH_WS_TEXT, r->frame, it.len);
        if (c->state != CS_OPEN)
            return 1;
        c->seq_hi = it.seq;
        r->replayed++;
        --*budget;
        if (wk_conn_queued(c) >= half)
            return -1;
    }
    return 0;
}

int wk_resume_run(struct worker *w)
{
    struct wk_resume *r = w->rs;
    if (!r || !r->n)
        return 0;
    uint32_t budget = RP_ITER_FRAMES, kept = 0;
    int more = 0;
    for (uint32_t i = 0; i < r->n; i++) { /* rp_finish may append: r->n is re-read */
        struct rp_ref ref = r->list[i];
        struct conn *c = &w->conns[ref.idx];
        if (c->gen != ref.gen || !c->rp)
            continue; /* gone, or finished */
        if (c->state != CS_OPEN) {
            rp_free(c);
            continue;
        }
        if (c->rp->pending) {
            struct th_resume_req rr = {.want = 1,
                                       .since = c->rp->since,
                                       .epoch = c->rp->epoch,
                                       .epoch_len = c->rp->epoch_len};
            int behind = cache_behind(w, &rr);
            if (behind && w->mono_ns < c->rp->wait_until) {
                r->list[kept++] = ref; /* the loop wakes every 50 ms at least */
                continue;
            }
            if (behind)
                th_warn("user %.*s: resuming from since %llu although the cluster mailbox "
                        "cache is still behind it after %llu ms",
                        (int)c->rp->ulen, c->rp->user, (unsigned long long)c->rp->since,
                        (unsigned long long)(RP_WAIT_NS / 1000000));
            resume_pending(w, ref.idx, behind);
            if (c->state != CS_OPEN || !c->rp) {
                rp_free(c);
                continue;
            }
        }
        int rc = budget ? rp_chunk(w, ref.idx, &budget) : 0;
        if (rc == 1 && c->state == CS_OPEN) {
            rp_finish(w, ref.idx); /* a new gap found meanwhile has its own entry, appended */
            continue;
        } else if (c->state != CS_OPEN) {
            rp_free(c);
            continue;
        }
        more |= rc == 0;
        r->list[kept++] = ref;
    }
    r->n = kept;
    if (r->replayed) {
        atomic_fetch_add_explicit(&r->mbx.hdr->counters.replayed, r->replayed,
                                  memory_order_relaxed);
        r->replayed = 0;
    }
    return more;
}

static int epoch_matches(const struct th_resume_req *rr, const char *ep)
{
    return rr->epoch && rr->epoch_len == strlen(ep) && !memcmp(rr->epoch, ep, rr->epoch_len);
}

static void send_resumed(struct worker *w, uint32_t idx, int recovered, const char *ep,
                         uint64_t since, uint32_t replay)
{
    char buf[192];
    int n = snprintf(buf, sizeof(buf),
                     "{\"type\":\"resumed\",\"recovered\":%s,\"epoch\":\"%s\",\"since\":%llu,"
                     "\"replay\":%u}",
                     recovered ? "true" : "false", ep, (unsigned long long)since, replay);
    wk_conn_send_frame(w, idx, TH_WS_TEXT, buf, (size_t)n);
}

/*
 * The resume itself. The slot is LIVE already (claimed before the 101), so
 * the snapshot below is taken after the claim: whatever it misses, the
 * notifier's lookup finds this connection and hands it over live. A first
 * walk without copying counts the replay and tells whether anything after
 * since is gone; the frames themselves go out in chunks from the loop.
 *
 * An epoch that does not match (or since without one) means the client's
 * seqs belong to a mailbox that no longer exists: recovered:false, and the
 * replay is everything stored now (the client learns the new epoch from
 * this frame). A since ahead of the user's latest seq: recovered:false, and
 * live frames flow from the latest seq on.
 */
/* stale: the cache never caught up (see cache_behind): never recovered:true then. */
static void resume_now(struct worker *w, uint32_t idx, const struct th_resume_req *rr,
                       const char *user, size_t ulen, int stale)
{
    struct wk_resume *r = w->rs;
    struct conn *c = &w->conns[idx];
    char ep[TH_MBX_EPOCH_LEN + 1] = "";
    if (!r) { /* mailbox off: nothing is ever stored */
        send_resumed(w, idx, 0, ep, rr->since, 0);
        th_info(
            "[WebSocket] User %s resumed: since %llu, replayed 0, recovered false (mailbox off)",
            user, (unsigned long long)rr->since);
        return;
    }
    th_mbx_epoch(&r->mbx, ep);
    int same = epoch_matches(rr, ep);
    uint64_t from = same || (rr->since == 0 && !rr->epoch) ? rr->since : 0;
    uint32_t k = 0;
    uint64_t last = from;
    struct th_mbx_item it;
    th_mbx_replay_begin(&r->mbx, user, ulen, from, r->snap);
    while (th_mbx_replay_next(&r->mbx, r->snap, w->now_ns, NULL, 0, &it) == 1) {
        k++;
        last = it.seq;
    }
    int recovered =
        th_mbx_replay_end(&r->mbx, r->snap) && from == rr->since && (same || !rr->epoch) && !stale;
    uint64_t latest = r->snap->latest;
    send_resumed(w, idx, recovered, ep, rr->since, k);
    atomic_fetch_add_explicit(recovered ? &r->mbx.hdr->counters.resumes_recovered
                                        : &r->mbx.hdr->counters.resumes_lost,
                              1, memory_order_relaxed);
    th_info("[WebSocket] User %s resumed: since %llu, replayed %u, recovered %s", user,
            (unsigned long long)rr->since, k, recovered ? "true" : "false");
    c->seq_hi = from > latest ? latest : from;
    c->flags |= CF_SEQ_KNOWN;
    if (c->rp) { /* it waited (pending): its held frames go after this replay */
        c->rp->target = k ? last : c->seq_hi;
        c->rp->told_lost = !recovered;
    } else if (k && !rp_start(w, idx, last, user, ulen, !recovered)) {
        th_warn("user %s: out of memory for the replay, closing", user);
        wk_conn_close(w, idx, TH_WS_INTERNAL);
    }
}

/*
 * Did the cache's writer (the notifier) run lately? Its loop beats every
 * TH_HEARTBEAT_NS / 5. A notifier stopped or hung keeps a live pid but
 * mirrors nothing, while other nodes store on. A resume answered from its
 * cache stays gap-free (what the cache lacks reaches the client once this
 * notifier, or the successor the supervisor starts after --hung-after,
 * applies it: TH_HO_F_IF_RESUMED), but only that late; waiting here lets
 * the replay carry it instead. A busy notifier only makes a resume wait
 * for its next beat.
 */
static int writer_running(const struct worker *w)
{
    uint64_t hb = atomic_load_explicit(&w->reg->hdr->roles[TH_ROLE_NOTIFIER].heartbeat_ns,
                                       memory_order_relaxed);
    return hb && (w->now_ns < hb || w->now_ns - hb <= TH_HEARTBEAT_NS);
}

/* Is the cache behind what this client resumes from (see struct wk_replay)? */
static int cache_behind(const struct worker *w, const struct th_resume_req *rr)
{
    const struct wk_resume *r = w->rs;
    uint64_t at;
    int filled;
    char ep[TH_MBX_EPOCH_LEN + 1];
    if (!r || !th_mbx_source(&r->mbx, &at, &filled))
        return 0;
    if (!filled || !th_mbx_writer_alive(&r->mbx) || !writer_running(w))
        return 1; /* filling, or its notifier is dead or stopped: others store, nobody mirrors */
    th_mbx_epoch(&r->mbx, ep);
    return epoch_matches(rr, ep) && rr->since > at;
}

void wk_resume_start(struct worker *w, uint32_t idx, const struct th_resume_req *rr,
                     const char *user, size_t ulen)
{
    if (!rr->want)
        return;
    /*
     * From here on, catch-up frames stored before this connection came
     * (TH_HO_F_IF_RESUMED) are for it too: the snapshot below, or the one a
     * pending resume takes later, may miss what the notifier applies only
     * after it, and the seq rules drop what the replay sends. Set before the
     * snapshot in this loop turn, so no such frame is taken before it.
     */
    w->conns[idx].flags |= CF_RESUMED;
    if (cache_behind(w, rr) && rr->epoch_len <= TH_EPOCH_MAX) {
        struct wk_replay *rp = rp_start(w, idx, rr->since, user, ulen, 0);
        if (rp) {
            rp->pending = 1;
            rp->since = rr->since;
            rp->wait_until = w->mono_ns + RP_WAIT_NS;
            rp->epoch_len = (uint32_t)rr->epoch_len;
            if (rr->epoch_len) /* a resume without epoch (since=0) has none: epoch is NULL */
                memcpy(rp->epoch, rr->epoch, rr->epoch_len);
            return;
        }
    }
    resume_now(w, idx, rr, user, ulen, 0);
}

/* A pending resume whose cache caught up (or that waited long enough). */
static void resume_pending(struct worker *w, uint32_t idx, int stale)
{
    struct wk_replay *rp = w->conns[idx].rp;
    struct th_resume_req rr = {
        .want = 1, .since = rp->since, .epoch = rp->epoch, .epoch_len = rp->epoch_len};
    rp->pending = 0;
    resume_now(w, idx, &rr, rp->user, rp->ulen, stale);
    struct conn *c = &w->conns[idx];
    char ep[TH_MBX_EPOCH_LEN + 1];
    th_mbx_epoch(&w->rs->mbx, ep);
    if (c->state == CS_OPEN && c->rp && epoch_matches(&rr, ep) && c->seq_hi < rr.since) {
        /*
         * The cache never reached since (it waited RP_WAIT_NS): the client
         * was told recovered:false, but since is a real seq of this epoch
         * (another node sent it), so what the mirror brings later up to
         * since is not sent again.
         */
        c->seq_hi = rr.since;
        if (c->rp->target < rr.since)
            c->rp->target = rr.since;
    }
}
