/*
 * The JetStream mailbox (see mailbox_js.h for what it is for).
 *
 * Stream. "TETHER_MAILBOX", subjects "tether.m.<hex of the user id>" (one
 * subject per user; hex, so no id names another subject or a wildcard),
 * file storage, --nats-replicas copies, limits policy with discard old,
 * MaxMsgsPerSubject = --mailbox-per-user, MaxAge = --mailbox-ttl, and the
 * de-duplication window = --mailbox-ttl. The set-up thread creates it, or
 * updates it when its settings differ, and re-checks it every second; a
 * stream that is gone or re-created (another creation time) starts a new
 * epoch: epoch = a hash of the stream's name and creation time.
 *
 * A message: the client frame without seq/epoch, headers
 *   Nats-Msg-Id  <hex user>-<hex id>  (so the same id of one user is stored
 *                once across nodes; the server answers a repeat with the
 *                first write's sequence and "duplicate")
 *   Tether-At    byte offset for ,"seq":N,"epoch":"E" (after the id)
 *   Tether-Ttl   seconds to keep it (the request's ttl_s, <= --mailbox-ttl;
 *                the stream keeps everything MaxAge, the cache honours this;
 *                a larger one, from another publisher, counts as --mailbox-ttl)
 *   Tether-Prev  the user's previous stream seq: a node that never saw
 *                that seq learns that everything up to it left the stream
 *                (recovered:false). Exact: the message is published with
 *                Nats-Expected-Last-Subject-Sequence = the same value (this
 *                cache's view first), and when another node wrote the user
 *                meanwhile the stream refuses it naming its real last seq,
 *                and it is published again with that (pub_send).
 * The seq is the stream sequence from the publish ack: the stream orders
 * every write, so two nodes accepting for one user at once get different,
 * increasing seqs without any coordination of ours.
 *
 * Store. th_mjs_store publishes asynchronously (ack within PUB_WAIT_MS,
 * else an error); the ack gives the seq; then the store waits until the
 * mirror has applied that seq (so the local cache holds it and everything
 * before it) and only then answers its caller, who delivers with that seq.
 * Not confirmed (broker away, no quorum, timeout): the caller delivers
 * without a seq and answers "stored":false, or 503 when nobody got it.
 *
 * Mirror. An ordered push consumer of the whole stream, from its first
 * message, applies each message to the cache in stream order
 * (th_mbx_prepare_at/commit with the stream seq; a seq the cache holds is
 * skipped). The cache is reset when the stream is (re)found: every floor
 * becomes the stream's first seq - 1 (what is older is gone), and its
 * epoch stays 0 (matching no client: recovered:false) until the mirror has
 * caught up with the stream's last seq at that moment. Unless the cache's
 * previous writer (a notifier killed or stopped) mirrored this very stream
 * (same epoch, counters.source_epoch): then the cache is kept and the
 * mirror goes on from where that writer had handed on (on_keep), not from
 * the stream's first message. The mirror hands every message it applies to
 * this node's live connections of the user (a store of this node
 * excepted: its caller delivers; and not during a refill from scratch: the
 * stream's old content is no news); the workers drop what they had by seq.
 * Seqs that left the stream before the mirror applied them, by max age
 * (the stream's first seq passed the mirror, or a hole in its seqs older
 * than max age), may have been anybody's: th_mbx_gone_upto makes every
 * resume from before them recovered:false. The mailbox connection lost:
 * the epoch is 0 again until the mirror caught up after the reconnection. This is what makes
 * resuming on another node gap-free: the worker claims its slot and then
 * reads the cache, the mirror commits to the cache and then looks the user
 * up (the shm mailbox's ordering argument), whatever route_nats did or
 * did not deliver meanwhile.
 *
 * Gate. route_nats hands a remote node's frame to the local route with
 * its seq; the gate holds it until the mirror has passed that seq (else a
 * worker could send seq 11 live, then drop 10 arriving from the mirror as
 * old). Held longer than --handoff-timeout-ms: answered 503 (the mirror
 * delivers it once it gets there).
 *
 * Threads: libnats callbacks push onto a mutex-protected queue and write
 * an eventfd (read by the loop's ring, user_data TH_UD_JS); the set-up
 * thread does the blocking JetStream API calls and tells the loop through
 * the same queue. Only the loop touches the cache, the tables and routes.
 */
#include "notifier/mailbox_js.h"
#include "notifier/api.h" /* th_buf */
#include "notifier/nats_opts.h"

#include <errno.h>
#include <inttypes.h>
#include <nats/nats.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "shm/proto/userid.h"
#include "shm/proto/utf8.h"
#include "shm/rt/clock.h"
#include "shm/rt/log.h"

#define STREAM "TETHER_MAILBOX"
#define SUBJ_PREFIX "tether.m."
#define SUBJ_ALL "tether.m.>"
#define SUBJ_MAX (sizeof(SUBJ_PREFIX) + 2 * TH_USER_MAX + 1)
#define MSGID_MAX (2 * TH_USER_MAX + 2 * TH_MBX_MAX_ID + 2)
#define NPUB 8192u       /* stores in flight */
#define NBUCKET 8192u    /* ack and seq lookup buckets */
#define PUB_WAIT_MS 2000 /* JetStream's ack */
#define PUB_TRIES 16     /* publishes of one store, the stream naming another last seq each time */
#define GUARD_NS (3000ull * 1000 * 1000)       /* our own bound on an ack (PUB_WAIT_MS + margin) */
#define MIRROR_WAIT_NS (1000ull * 1000 * 1000) /* ack seen, mirror not there yet */
#define CHECK_NS (50ull * 1000 * 1000)
#define WATCH_MS 500
#define STALL_CHECKS 3 /* looks at an unmoving mirror behind the stream before re-subscribing */
#define MIRROR_HB_NS (500ll * 1000 * 1000) /* the mirror's idle heartbeat */
#define NONE UINT32_MAX

enum ev_kind { EV_ACK, EV_MSG, EV_SETUP, EV_KEEP, EV_STATE, EV_LOST, EV_FOUND, EV_DOWN };

struct ev {
    struct ev *next;
    int kind;
    natsMsg *msg;        /* EV_ACK (the published one), EV_MSG: owned by the event */
    uint64_t a, b, c, d; /* EV_ACK: seq, duplicate, error; EV_SETUP, EV_KEEP: epoch, floor,
                            last, first's time; EV_STATE: first, last, downs, first's time;
                            EV_DOWN: downs */
};

enum { P_FREE, P_ACK, P_MIRROR, P_ACKED /* unlinked, being answered */ };

struct jpub {
    int state;
    uint32_t gen, next_free;
    uint32_t anext, snext; /* chains: by message pointer (P_ACK), by seq (P_MIRROR) */
    natsMsg *msg;          /* P_ACK: the key the ack comes back with */
    uint64_t seq, deadline;
    uint64_t prev; /* the user's last stream seq it was published expecting */
    int dup;
    unsigned tries;
    uint32_t ttl_s;
    th_mjs_done_fn done;
    void *arg;
    char *frame;
    size_t flen, at;
    uint32_t ulen, idlen;
    char user[TH_USER_MAX];
    char id[TH_MBX_MAX_ID];
};

struct parked {
    struct parked *next;
    uint64_t nseq, deadline;
    unsigned flags;
    th_route_done_fn done;
    void *arg;
    size_t ulen, flen;
    char user[TH_USER_MAX];
    char frame[];
};

struct gate {
    struct th_route base;
    struct th_mjs *j; /* NULL once the module is destroyed: everything passes */
    struct th_route *inner;
    struct parked *head, *tail;
    uint64_t timeout_ns;
};

struct th_mjs {
    const struct th_config *cfg;
    struct th_mbx *cache;
    struct io_uring *ring;
    struct th_route *local;
    struct gate *gate;
    /* libnats side */
    natsOptions *opts;
    natsConnection *nc;
    jsCtx *js;
    natsSubscription *sub; /* the mirror; set-up thread only */
    pthread_t thr;
    int thr_started;
    int closed;
    int warned; /* set-up thread only: */
    uint64_t stall_at;
    int stall_n;
    pthread_mutex_t mu; /* the queue, stop */
    pthread_cond_t cv;
    struct ev *qhead, *qtail;
    int stop;
    int efd, armed;
    uint64_t efd_buf;
    /* loop side */
    int ready;      /* stream known (EV_SETUP seen) */
    int caught_up;  /* mirror reached catch_to */
    uint64_t epoch; /* the stream's */
    char epoch_hex[TH_MBX_EPOCH_LEN + 1];
    /* mirror: every stream seq up to it applied or gone. Written by the loop
       only, read by the set-up thread (watch_mirror): every store is atomic. */
    uint64_t at_seq;
    uint64_t catch_to; /* the stream's last seq when found */
    /*
     * A lower bound on the stream timestamp of every message after at_seq
     * (the last applied one's, or the stream's first when it was looked
     * at): a hole in the mirror's seqs younger than max age cannot be an
     * expiry, only a per-subject eviction (which Tether-Prev accounts for).
     */
    uint64_t next_ts;
    int quiet;                       /* a refill from scratch: no deliveries until caught up */
    uint64_t rehand_from, rehand_to; /* re-hand seqs in (from, to] the mirror sees again */
    uint64_t seen;                   /* the last seq the mirror delivered */
    uint64_t handed_mark;            /* at_seq at the last tick: handed on by the wait after it */
    uint64_t handed_saved;           /* what source_handed says */
    int recatch;                     /* mirror connection was lost: stale until caught up again */
    uint64_t recatch_gen;            /* the EV_DOWN it waits past */
    _Atomic uint64_t downs;          /* disconnects (libnats thread) */
    /* What the previous writer of the cache left (th_mbx_source_left), read at start. */
    int left_ok;
    uint64_t left_epoch, left_at, left_handed;
    struct jpub pub[NPUB];
    uint32_t free_head, npend;
    uint32_t abucket[NBUCKET], sbucket[NBUCKET];
    uint64_t next_check;
    struct th_buf out; /* a frame with seq and epoch */
    struct th_mjs_stats st;
    uint64_t bad, bad_logged;
};

/* ---- libnats threads: queue and wake ------------------------------------------ */

static void push4(struct th_mjs *j, int kind, natsMsg *msg, uint64_t a, uint64_t b, uint64_t c,
                  uint64_t d)
{
    struct ev *e = malloc(sizeof(*e));
    if (!e) {
        natsMsg_Destroy(msg);
        return; /* an ack lost: the store times out (stored:false); a mirror message: the
                   ordered consumer does not resend it, the cache misses it (its next
                   message's Tether-Prev marks the loss) */
    }
    *e = (struct ev){NULL, kind, msg, a, b, c, d};
    pthread_mutex_lock(&j->mu);
    if (j->qtail)
        j->qtail->next = e;
    else
        j->qhead = e;
    j->qtail = e;
    pthread_mutex_unlock(&j->mu);
    uint64_t one = 1;
    if (write(j->efd, &one, sizeof(one)) < 0) { /* EAGAIN: already signalled */
    }
}

static void push(struct th_mjs *j, int kind, natsMsg *msg, uint64_t a, uint64_t b, uint64_t c)
{
    push4(j, kind, msg, a, b, c, 0);
}

static void on_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    (void)js;
    unsigned long long last = 0;
    if (pa) {
        push(closure, EV_ACK, msg, pa->Sequence, pa->Duplicate, 0);
        return;
    }
    /* "wrong last sequence: N": another node wrote the user (pub_send); N is its last. */
    int wrong = pae && pae->ErrCode == JSStreamWrongLastSequenceErr && pae->ErrText &&
                sscanf(pae->ErrText, "wrong last sequence: %llu", &last) == 1;
    push4(closure, EV_ACK, msg, 0, wrong, pae ? (uint64_t)pae->ErrCode + 1 : 1, last);
}

static void on_mirror_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    (void)sub;
    push(closure, EV_MSG, msg, 0, 0, 0);
}

static void on_connected(natsConnection *nc, void *closure)
{
    (void)nc;
    (void)closure;
}

static void on_disconnected(natsConnection *nc, void *closure)
{
    (void)nc;
    struct th_mjs *j = closure;
    push(j, EV_DOWN, NULL, atomic_fetch_add(&j->downs, 1) + 1, 0, 0);
}

/* ---- small helpers ---------------------------------------------------------------- */

static size_t hex_put(char *out, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hex[(unsigned char)s[i] >> 4];
        out[2 * i + 1] = hex[(unsigned char)s[i] & 15];
    }
    return 2 * n;
}

static int unhex(const char *h, size_t hl, char *out, size_t cap)
{
    if (hl % 2 || hl / 2 > cap)
        return -EINVAL;
    for (size_t i = 0; i < hl; i += 2) {
        int v = 0;
        for (int k = 0; k < 2; k++) {
            char c = h[i + k];
            int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
            if (d < 0)
                return -EINVAL;
            v = v << 4 | d;
        }
        out[i / 2] = (char)v;
    }
    return (int)(hl / 2);
}

static void bad_input(struct th_mjs *j, const char *why)
{
    j->bad++;
    uint64_t now = th_mono_ns();
    if (now - j->bad_logged >= TH_NS_PER_S) {
        j->bad_logged = now;
        th_warn("[Mailbox] JetStream: dropped a malformed stream message (%s); %llu so far", why,
                (unsigned long long)j->bad);
    }
}

/* frame[0, at) + ,"seq":N,"epoch":"E" + frame[at, flen) into j->out. */
static int frame_splice(struct th_mjs *j, const char *frame, size_t flen, size_t at, uint64_t seq)
{
    struct th_buf *b = &j->out;
    b->len = 0;
    b->oom = 0;
    if (at > flen)
        return -EINVAL;
    th_buf_put(b, frame, at);
    th_buf_printf(b, ",\"seq\":%" PRIu64 ",\"epoch\":\"%s\"", seq, j->epoch_hex);
    th_buf_put(b, frame + at, flen - at);
    return b->oom ? -ENOMEM : 0;
}

static uint32_t bucket_ptr(const void *p)
{
    uintptr_t v = (uintptr_t)p;
    return (uint32_t)((v >> 4) ^ (v >> 17)) & (NBUCKET - 1);
}

/* ---- stores in flight ---------------------------------------------------------------- */

static void pub_unlink_ack(struct th_mjs *j, uint32_t i)
{
    for (uint32_t *p = &j->abucket[bucket_ptr(j->pub[i].msg)]; *p != NONE; p = &j->pub[*p].anext)
        if (*p == i) {
            *p = j->pub[i].anext;
            return;
        }
}

static void pub_unlink_seq(struct th_mjs *j, uint32_t i)
{
    for (uint32_t *p = &j->sbucket[j->pub[i].seq & (NBUCKET - 1)]; *p != NONE;
         p = &j->pub[*p].snext)
        if (*p == i) {
            *p = j->pub[i].snext;
            return;
        }
}

/* Record i back on the free list (unlinked from its chain by the caller). */
static void pub_release(struct th_mjs *j, uint32_t i)
{
    struct jpub *p = &j->pub[i];
    p->state = P_FREE;
    p->gen++;
    p->msg = NULL;
    p->next_free = j->free_head;
    j->free_head = i;
    j->npend--;
}

/* Answer store i and free its record. */
static void pub_finish(struct th_mjs *j, uint32_t i, int stored, uint64_t pos)
{
    struct jpub *p = &j->pub[i];
    if (p->state == P_ACK)
        pub_unlink_ack(j, i);
    else if (p->state == P_MIRROR)
        pub_unlink_seq(j, i);
    struct th_mjs_result res = {.stored = stored,
                                .duplicate = stored && p->dup,
                                .seq = p->seq,
                                .pos = pos,
                                .frame = p->frame,
                                .flen = p->flen};
    if (stored && frame_splice(j, p->frame, p->flen, p->at, p->seq) == 0) {
        res.frame = j->out.p;
        res.flen = j->out.len;
    }
    if (stored)
        j->st.stored += !p->dup;
    else
        j->st.failed++;
    j->st.dups += stored && p->dup;
    th_mjs_done_fn done = p->done;
    void *arg = p->arg;
    char *frame = p->frame;
    pub_release(j, i);
    done(arg, &res);
    free(frame);
}

/* The cache entry of (user, id) when the mirror got there before the ack. */
static uint64_t cached_pos(struct th_mjs *j, const struct jpub *p)
{
    struct th_mbx_hit h;
    if (th_mbx_find_id(j->cache, p->user, p->ulen, p->id, p->idlen, th_now_ns(), &h) == 1 &&
        h.seq == p->seq)
        return h.pos;
    return 0;
}

static int pub_send(struct th_mjs *j, uint32_t i, uint64_t prev);

static void on_ack_ev(struct th_mjs *j, natsMsg *msg, uint64_t seq, int dup, uint64_t err,
                      uint64_t last)
{
    uint32_t i = j->abucket[bucket_ptr(msg)];
    while (i != NONE && j->pub[i].msg != msg)
        i = j->pub[i].anext;
    if (i == NONE)
        return; /* timed out by the guard already: answered "stored":false */
    struct jpub *p = &j->pub[i];
    if (err && dup /* wrong last seq */ && p->tries < PUB_TRIES && last != p->prev) {
        pub_unlink_ack(j, i);
        p->msg = NULL;
        p->tries++;
        j->st.retried++;
        if (pub_send(j, i, last) == 0)
            return;
        pub_finish(j, i, 0, 0);
        return;
    }
    if (err || !seq) {
        th_warn("[Mailbox] JetStream did not store a notification for user %.*s (%s)", (int)p->ulen,
                p->user, err > 1 ? "error from the stream" : "no ack");
        pub_finish(j, i, 0, 0);
        return;
    }
    pub_unlink_ack(j, i);
    p->msg = NULL;
    p->seq = seq;
    p->dup = dup;
    if (seq <= j->at_seq) {
        p->state = P_ACKED;
        pub_finish(j, i, 1, cached_pos(j, p));
        return;
    }
    p->state = P_MIRROR;
    p->deadline = th_mono_ns() + MIRROR_WAIT_NS;
    uint32_t *b = &j->sbucket[seq & (NBUCKET - 1)];
    p->snext = *b;
    *b = i;
}

/*
 * Publish store i's message, expecting prev as the user's last stream seq
 * (Nats-Expected-Last-Subject-Sequence; 0: none): the stream refuses it
 * when another node wrote the user meanwhile (or this cache was behind),
 * and on_ack_ev publishes again with the seq it names. So Tether-Prev is
 * exact: a node that never saw that seq knows it left the stream.
 */
static int pub_send(struct th_mjs *j, uint32_t i, uint64_t prev)
{
    struct jpub *p = &j->pub[i];
    char subj[SUBJ_MAX], msgid[MSGID_MAX + 1], num[24];
    size_t n = sizeof(SUBJ_PREFIX) - 1;
    memcpy(subj, SUBJ_PREFIX, n);
    subj[n + hex_put(subj + n, p->user, p->ulen)] = 0;
    n = hex_put(msgid, p->user, p->ulen);
    msgid[n++] = '-';
    msgid[n + hex_put(msgid + n, p->id, p->idlen)] = 0;
    natsMsg *msg = NULL;
    natsStatus s = natsMsg_Create(&msg, subj, NULL, p->frame, (int)p->flen);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(msg, "Nats-Msg-Id", msgid);
    snprintf(num, sizeof(num), "%zu", p->at);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(msg, "Tether-At", num);
    snprintf(num, sizeof(num), "%u", p->ttl_s);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(msg, "Tether-Ttl", num);
    snprintf(num, sizeof(num), "%" PRIu64, prev);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(msg, "Nats-Expected-Last-Subject-Sequence", num);
    if (s == NATS_OK && prev)
        s = natsMsgHeader_Set(msg, "Tether-Prev", num);
    if (s != NATS_OK) {
        natsMsg_Destroy(msg);
        return -ENOMEM;
    }
    p->msg = msg;
    p->prev = prev;
    uint32_t *b = &j->abucket[bucket_ptr(msg)];
    p->anext = *b;
    *b = i;
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = PUB_WAIT_MS;
    s = js_PublishMsgAsync(j->js, &msg, &po);
    if (s != NATS_OK) {
        natsMsg_Destroy(msg); /* still ours (not cleared) */
        pub_unlink_ack(j, i);
        p->msg = NULL;
        th_warn("[Mailbox] JetStream publish for user %.*s failed: %s", (int)p->ulen, p->user,
                natsStatus_GetText(s));
        return -EIO;
    }
    return 0;
}

int th_mjs_store(struct th_mjs *j, const char *user, size_t ulen, const char *id, size_t idlen,
                 uint32_t ttl_s, const char *frame, size_t flen, size_t at, th_mjs_done_fn done,
                 void *arg)
{
    if (!j->ready || !j->nc || natsConnection_Status(j->nc) != NATS_CONN_STATUS_CONNECTED)
        return -ENOTCONN;
    if (j->free_head == NONE)
        return -EAGAIN;
    if (!ulen || ulen > TH_USER_MAX || idlen > TH_MBX_MAX_ID || at > flen)
        return -EINVAL;
    char *copy = malloc(flen ? flen : 1);
    if (!copy)
        return -ENOMEM;
    uint32_t pending;
    uint64_t last = 0; /* this cache's view; the stream corrects it (pub_send) */
    if (th_mbx_user_info(j->cache, user, ulen, th_now_ns(), &pending, &last) != 0)
        last = 0;
    uint32_t i = j->free_head;
    struct jpub *p = &j->pub[i];
    j->free_head = p->next_free;
    j->npend++;
    p->state = P_ACK;
    p->msg = NULL;
    p->seq = 0;
    p->dup = 0;
    p->tries = 1;
    p->deadline = th_mono_ns() + GUARD_NS;
    p->done = done;
    p->arg = arg;
    memcpy(copy, frame, flen);
    p->frame = copy;
    p->flen = flen;
    p->at = at;
    p->ttl_s = ttl_s;
    p->ulen = (uint32_t)ulen;
    memcpy(p->user, user, ulen);
    p->idlen = (uint32_t)idlen;
    memcpy(p->id, id, idlen);
    int rc = pub_send(j, i, last);
    if (rc < 0) {
        pub_release(j, i);
        free(copy);
        return rc;
    }
    if (j->next_check > p->deadline)
        j->next_check = p->deadline;
    return 0;
}

/* ---- the mirror ----------------------------------------------------------------------- */

static uint64_t hdr_u64(natsMsg *m, const char *key, uint64_t dflt)
{
    const char *v = NULL;
    if (natsMsgHeader_Get(m, key, &v) != NATS_OK || !v || !*v)
        return dflt;
    char *end;
    unsigned long long x = strtoull(v, &end, 10);
    return *end ? dflt : (uint64_t)x;
}

static void noop_done(void *arg, const struct th_route_result *res)
{
    (void)arg;
    (void)res;
}

static void gate_release(struct gate *g);

/* A store of this node waiting for seq (the first write before its repeats), or NONE. */
static uint32_t waiting_for(struct th_mjs *j, uint64_t seq)
{
    uint32_t any = NONE;
    for (uint32_t i = j->sbucket[seq & (NBUCKET - 1)]; i != NONE; i = j->pub[i].snext)
        if (j->pub[i].seq == seq) {
            if (!j->pub[i].dup)
                return i;
            any = i;
        }
    return any;
}

static void mirror_advance(struct th_mjs *j, uint64_t seq)
{
    if (seq > j->at_seq)
        __atomic_store_n(&j->at_seq, seq, __ATOMIC_RELAXED); /* the set-up thread reads it */
    th_mbx_set_source_seq(j->cache, j->at_seq);
    if (!j->caught_up && !j->recatch && j->at_seq >= j->catch_to) {
        j->caught_up = 1;
        j->quiet = 0;
        th_mbx_set_source_epoch(j->cache, j->epoch); /* a successor may keep the cache */
        th_mbx_set_epoch(j->cache, j->epoch);
        th_info("[Mailbox] JetStream mirror caught up at seq %llu: epoch %s, resumes recover",
                (unsigned long long)j->at_seq, j->epoch_hex);
    }
}

/*
 * Could a message after at_seq have expired (max age) by now? Only when the
 * oldest of them may be max age old (less a margin for the server's clock
 * against ours). Otherwise a hole in the mirror's seqs is a per-subject
 * eviction, and the next message of that user names it (Tether-Prev).
 */
static int maybe_expired(const struct th_mjs *j, uint64_t now)
{
    uint64_t age = (uint64_t)j->cfg->mailbox_ttl_s * TH_NS_PER_S, margin = age / 4;
    if (margin > 2 * TH_NS_PER_S)
        margin = 2 * TH_NS_PER_S;
    return !j->next_ts || now + margin >= j->next_ts + age;
}

/*
 * Stream seqs up to upto left the stream before this cache applied them,
 * and whose they were is unknown: every user whose last seq is below upto
 * answers a resume from before it with recovered:false (th_mbx_gone_upto).
 */
static void lost_upto(struct th_mjs *j, uint64_t upto, const char *how)
{
    th_mbx_gone_upto(j->cache, upto);
    th_warn("[Mailbox] JetStream: stream seqs %llu..%llu left the stream (max age) before "
            "this node mirrored them (%s): resumes from before seq %llu answer recovered:false",
            (unsigned long long)j->at_seq + 1, (unsigned long long)upto, how,
            (unsigned long long)upto);
}

/*
 * j->out (seq) to this node's live connections of user. While catching up
 * (after the notifier or the broker connection was down) the message may be
 * old: only connections that were there when it was stored (ts), or that
 * resumed, get it (th_route_local_deliver_by). A resume answered while this
 * node's mirror lagged (a running notifier, its cache past since but not yet
 * at a seq another node stored) was promised it by the live mirror; if the
 * notifier dies first, this is how it reaches that client.
 */
static void hand_on(struct th_mjs *j, const char *user, size_t ulen, uint64_t seq, uint64_t ts,
                    int catching)
{
    if (!catching)
        j->local->ops->deliver(j->local, user, ulen, j->out.p, j->out.len, seq, 0, noop_done, NULL);
    else
        th_route_local_deliver_by(j->local, ts, user, ulen, j->out.p, j->out.len, seq, 0, noop_done,
                                  NULL);
}

/*
 * A stream message's frame can become a client's text frame: UTF-8, with
 * its seq and epoch going in at a character boundary (at). The stream takes
 * whatever anyone allowed to publish on tether.m.* sends, and a client must
 * fail its connection on a text frame that is not UTF-8.
 */
static int frame_ok(const char *frame, size_t flen, size_t at)
{
    return th_utf8_feed(TH_UTF8_ACCEPT, (const uint8_t *)frame, flen) == TH_UTF8_ACCEPT &&
           (at == flen || ((unsigned char)frame[at] & 0xc0) != 0x80);
}

static void on_mirror(struct th_mjs *j, natsMsg *m)
{
    jsMsgMetaData *md = NULL;
    char user[TH_USER_MAX], id[TH_MBX_MAX_ID];
    const char *subj = natsMsg_GetSubject(m), *mid = NULL;
    size_t pl = sizeof(SUBJ_PREFIX) - 1;
    if (natsMsg_GetMetaData(&md, m) != NATS_OK || !md) {
        bad_input(j, "no metadata");
        return;
    }
    uint64_t seq = md->Sequence.Stream, ts = (uint64_t)md->Timestamp;
    int at_end = md->NumPending == 0; /* nothing after it in the stream right now */
    jsMsgMetaData_Destroy(md);
    int ulen = strncmp(subj, SUBJ_PREFIX, pl) == 0
                   ? unhex(subj + pl, strlen(subj + pl), user, sizeof(user))
                   : -EINVAL;
    int idlen = -EINVAL;
    if (natsMsgHeader_Get(m, "Nats-Msg-Id", &mid) == NATS_OK && mid) {
        const char *dash = strchr(mid, '-');
        if (dash)
            idlen = unhex(dash + 1, strlen(dash + 1), id, sizeof(id));
    }
    int flen = natsMsg_GetDataLength(m);
    const char *frame = natsMsg_GetData(m);
    uint64_t at = hdr_u64(m, "Tether-At", UINT64_MAX), ttl = hdr_u64(m, "Tether-Ttl", 0);
    if (ttl > j->cfg->mailbox_ttl_s) /* a node writes at most that; ttl * 10^9 must not wrap */
        ttl = j->cfg->mailbox_ttl_s;
    uint64_t prev = hdr_u64(m, "Tether-Prev", 0);
    if (ulen <= 0 || !th_userid_valid(user, (size_t)ulen) || idlen < 0 || flen < 0 ||
        at > (uint64_t)flen) {
        bad_input(j, "subject or headers");
        mirror_advance(j, seq);
        return;
    }
    if (!frame_ok(frame, (size_t)flen, (size_t)at)) {
        bad_input(j, "frame not UTF-8, or Tether-At inside a character");
        mirror_advance(j, seq);
        return;
    }
    uint64_t now = th_now_ns(), exp = ts + ttl * TH_NS_PER_S, pos = 0;
    int live = exp > now;
    if (seq > j->seen)
        j->seen = seq;
    if (seq <= j->at_seq) {
        /* Applied already: the ordered consumer started over, or a restarted notifier
           re-reads what its predecessor applied but may not have handed on. */
        if (ts > j->next_ts)
            j->next_ts = ts; /* (after a restart: how old what follows can be) */
        if (seq > j->rehand_from && seq <= j->rehand_to && live && !j->quiet &&
            frame_splice(j, frame, (size_t)flen, at, seq) == 0)
            hand_on(j, user, (size_t)ulen, seq, ts, !j->caught_up);
        return;
    }
    if (seq > j->at_seq + 1 && maybe_expired(j, now))
        lost_upto(j, seq - 1, "a hole in the mirror's seqs");
    if (ts > j->next_ts)
        j->next_ts = ts;
    struct th_mbx_ticket t;
    int rc = th_mbx_prepare_at(j->cache, user, (size_t)ulen, seq, live ? prev : seq, now, &t);
    int have = rc == 1 && frame_splice(j, frame, (size_t)flen, at, seq) == 0;
    if (have) {
        rc = th_mbx_commit(j->cache, &t, j->out.p, j->out.len, id, (size_t)idlen,
                           live ? exp - now : 0, now, &pos);
        if (rc < 0)
            th_warn("[Mailbox] cache: storing seq %llu for user %.*s: %s", (unsigned long long)seq,
                    ulen, user, strerror(-rc));
    }
    j->st.mirrored++;
    j->st.mirror_at = seq;
    int quiet = j->quiet, catching = !j->caught_up; /* before this message's advance */
    if (at_end && seq < j->catch_to)
        j->catch_to = seq; /* the rest of what was there at set-up is gone */
    mirror_advance(j, seq);
    uint32_t w = waiting_for(j, seq);
    if (w != NONE) {
        for (; w != NONE; w = waiting_for(j, seq))
            pub_finish(j, w, 1, pos); /* its caller delivers (repeats answer as retries) */
    } else if (!quiet && live && have && rc >= 0) {
        /* A store of another node: this node's live connections of the user get it here. */
        hand_on(j, user, (size_t)ulen, seq, ts, catching);
    }
    gate_release(j->gate);
}

/* Stores acked by the stream's earlier life wait no longer (stored there; pos unknown). */
static void settle_waiting(struct th_mjs *j)
{
    for (uint32_t i = 0; i < NPUB; i++)
        if (j->pub[i].state == P_MIRROR)
            pub_finish(j, i, 1, 0);
}

static void set_stream(struct th_mjs *j, uint64_t epoch, uint64_t last, uint64_t first_ts)
{
    j->epoch = epoch;
    snprintf(j->epoch_hex, sizeof(j->epoch_hex), "%016" PRIx64, epoch);
    j->catch_to = last;
    j->caught_up = 0;
    j->recatch = 0;
    j->ready = 1;
    j->next_ts = first_ts;
}

/* The stream was (re)found: start the cache over for its epoch. */
static void on_setup(struct th_mjs *j, uint64_t epoch, uint64_t floor, uint64_t last,
                     uint64_t first_ts)
{
    /* Source epoch 0 first, then the reset and the new position; the epoch again only
       once caught up (mirror_advance): a successor of a notifier killed anywhere before
       that refills too, rather than keep a torn cache or hand the stream's old content
       to connected clients as news. */
    th_mbx_set_source_epoch(j->cache, 0);
    th_mbx_reset(j->cache, 0, floor);
    __atomic_store_n(&j->at_seq, floor, __ATOMIC_RELAXED);
    th_mbx_set_source_seq(j->cache, floor);
    set_stream(j, epoch, last, first_ts);
    j->quiet = 1; /* the stream's content is not news to connected clients */
    j->rehand_from = j->rehand_to = 0;
    th_info("[Mailbox] JetStream stream %s: epoch %s, seqs %llu..%llu stored; mirroring", STREAM,
            j->epoch_hex, (unsigned long long)floor + 1, (unsigned long long)last);
    mirror_advance(j, floor);
    settle_waiting(j);
}

/*
 * The stream the cache's previous writer mirrored, still in the same life:
 * keep the cache and go on from where that writer was (no refill). What it
 * applied but may not have handed on to this node's connections is handed
 * again (workers drop by seq what they had); what other nodes stored while
 * nobody mirrored goes to them as it is applied. Seqs that left the stream
 * meanwhile unapplied (max age) count as lost (lost_upto).
 */
static void on_keep(struct th_mjs *j, uint64_t epoch, uint64_t floor, uint64_t last,
                    uint64_t first_ts)
{
    set_stream(j, epoch, last, first_ts);
    __atomic_store_n(&j->at_seq, j->left_at, __ATOMIC_RELAXED);
    j->quiet = 0;
    j->rehand_from = j->left_handed;
    j->rehand_to = j->left_at;
    j->seen = j->handed_saved = j->left_handed;
    th_info("[Mailbox] JetStream stream %s: epoch %s, seqs %llu..%llu stored; the cache holds "
            "them up to seq %llu: mirroring from seq %llu on, no refill",
            STREAM, j->epoch_hex, (unsigned long long)floor + 1, (unsigned long long)last,
            (unsigned long long)j->left_at, (unsigned long long)j->left_handed + 1);
    if (floor > j->at_seq)
        lost_upto(j, floor, "while this node's notifier was down");
    mirror_advance(j, floor > j->at_seq ? floor : j->at_seq);
    settle_waiting(j);
}

/* The set-up thread's look at the stream: everything below first is gone. */
static void on_state(struct th_mjs *j, uint64_t first, uint64_t last, uint64_t downs,
                     uint64_t first_ts)
{
    if (!j->ready)
        return;
    if (j->recatch && downs >= j->recatch_gen &&
        natsConnection_Status(j->nc) == NATS_CONN_STATUS_CONNECTED) {
        j->recatch = 0; /* a look after the reconnection: catch up with what it saw */
        j->catch_to = last;
    }
    if (first && first - 1 > j->at_seq) {
        lost_upto(j, first - 1, "the stream's first seq passed the mirror");
        if (first_ts > j->next_ts)
            j->next_ts = first_ts;
        mirror_advance(j, first - 1);
        gate_release(j->gate);
    } else {
        mirror_advance(j, j->at_seq); /* a re-catch may be complete */
    }
}

/*
 * The mailbox's NATS connection dropped: the mirror misses what other nodes
 * store until it is back, so the cache matches no epoch (resumes wait,
 * worker/resume.c) until it has caught up with a look taken after the
 * reconnection. Deliveries go on (they are news to connected clients).
 */
static void on_down(struct th_mjs *j, uint64_t downs)
{
    if (!j->ready)
        return;
    if (!j->recatch)
        th_warn("[Mailbox] JetStream connection lost: resumes on this node wait until the "
                "mirror has caught up again");
    j->recatch = 1;
    j->recatch_gen = downs;
    if (j->caught_up) {
        j->caught_up = 0;
        th_mbx_set_epoch(j->cache, 0);
    }
}

static void drain(struct th_mjs *j, int closing)
{
    pthread_mutex_lock(&j->mu);
    struct ev *e = j->qhead;
    j->qhead = j->qtail = NULL;
    pthread_mutex_unlock(&j->mu);
    while (e) {
        struct ev *next = e->next;
        if (!closing) {
            switch (e->kind) {
            case EV_ACK:
                on_ack_ev(j, e->msg, e->a, (int)e->b, e->c, e->d);
                break;
            case EV_MSG:
                on_mirror(j, e->msg);
                break;
            case EV_SETUP:
                on_setup(j, e->a, e->b, e->c, e->d);
                break;
            case EV_KEEP:
                on_keep(j, e->a, e->b, e->c, e->d);
                break;
            case EV_STATE:
                on_state(j, e->a, e->b, e->c, e->d);
                break;
            case EV_DOWN:
                on_down(j, e->a);
                break;
            case EV_LOST:
                if (j->ready)
                    th_warn("[Mailbox] JetStream mirror of %s lost; stores fail until it is back",
                            STREAM);
                j->ready = 0;
                break;
            case EV_FOUND:
                th_info("[Mailbox] JetStream mirror of %s back from seq %llu", STREAM,
                        (unsigned long long)j->at_seq + 1);
                j->ready = 1;
                break;
            }
        }
        natsMsg_Destroy(e->msg);
        free(e);
        e = next;
    }
}

/* ---- the set-up thread --------------------------------------------------------------- */

static uint64_t stream_epoch(int64_t created)
{
    uint64_t h = 1469598103934665603ull;
    const char *n = STREAM;
    for (; *n; n++)
        h = (h ^ (unsigned char)*n) * 1099511628211ull;
    for (int k = 0; k < 8; k++)
        h = (h ^ ((uint64_t)created >> (8 * k) & 255)) * 1099511628211ull;
    return h ? h : 1;
}

static void stream_config(const struct th_mjs *j, jsStreamConfig *sc, const char **subjects)
{
    jsStreamConfig_Init(sc);
    sc->Name = STREAM;
    subjects[0] = SUBJ_ALL;
    sc->Subjects = subjects;
    sc->SubjectsLen = 1;
    sc->Storage = js_FileStorage;
    sc->Retention = js_LimitsPolicy;
    sc->Discard = js_DiscardOld;
    sc->Replicas = j->cfg->nats_replicas;
    sc->MaxMsgsPerSubject = j->cfg->mailbox_per_user;
    sc->MaxAge = (int64_t)j->cfg->mailbox_ttl_s * (int64_t)TH_NS_PER_S;
    sc->Duplicates = sc->MaxAge;
    sc->AllowDirect = true;
}

/* Make sure the stream exists with our settings; its creation time, or 0. */
static int64_t ensure_stream(struct th_mjs *j, uint64_t *first, uint64_t *last, uint64_t *first_ts)
{
    jsStreamConfig sc;
    const char *subjects[1];
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    stream_config(j, &sc, subjects);
    natsStatus s = js_GetStreamInfo(&si, j->js, STREAM, NULL, &jerr);
    if (s == NATS_NOT_FOUND || jerr == JSStreamNotFoundErr) {
        s = js_AddStream(&si, j->js, &sc, NULL, &jerr);
    } else if (s == NATS_OK &&
               (si->Config->Replicas != sc.Replicas || si->Config->MaxAge != sc.MaxAge ||
                si->Config->MaxMsgsPerSubject != sc.MaxMsgsPerSubject ||
                si->Config->Duplicates != sc.Duplicates)) {
        th_info("[Mailbox] JetStream stream %s: settings differ, updating them", STREAM);
        jsStreamInfo_Destroy(si);
        si = NULL;
        s = js_UpdateStream(&si, j->js, &sc, NULL, &jerr);
    }
    if (s != NATS_OK || !si) {
        if (!j->warned++)
            th_warn("[Mailbox] JetStream stream %s not ready: %s (code %d); stores fail "
                    "(\"stored\":false, 503 for users held nowhere) until it is%s",
                    STREAM, natsStatus_GetText(s), (int)jerr,
                    s == NATS_NO_RESPONDERS ? " (no JetStream answered: nats-server -js -sd DIR?)"
                                            : "");
        jsStreamInfo_Destroy(si);
        return 0;
    }
    if (j->warned)
        th_info("[Mailbox] JetStream stream %s ready again", STREAM);
    j->warned = 0;
    int64_t created = si->Created;
    *first = si->State.FirstSeq;
    *last = si->State.LastSeq;
    *first_ts = si->State.FirstTime > 0 ? (uint64_t)si->State.FirstTime : 0;
    jsStreamInfo_Destroy(si);
    return created ? created : 1;
}

/* The mirror from the stream's first message (from == 0) or from seq from on. */
static int subscribe_mirror(struct th_mjs *j, uint64_t from)
{
    jsSubOptions so;
    jsErrCode jerr = 0;
    jsSubOptions_Init(&so);
    so.Stream = STREAM;
    so.Ordered = true;
    so.Config.DeliverPolicy = from ? js_DeliverByStartSequence : js_DeliverAll;
    so.Config.OptStartSeq = from;
    /* A missed heartbeat is how libnats sees the consumer's server went away: notice it soon. */
    so.Config.Heartbeat = MIRROR_HB_NS;
    natsStatus s = js_Subscribe(&j->sub, j->js, SUBJ_ALL, on_mirror_msg, j, NULL, &so, &jerr);
    if (s != NATS_OK) {
        th_warn("[Mailbox] JetStream mirror subscription: %s (code %d)", natsStatus_GetText(s),
                (int)jerr);
        j->sub = NULL;
        return -EIO;
    }
    natsSubscription_SetPendingLimits(j->sub, -1, -1);
    return 0;
}

static int stopping(struct th_mjs *j, int wait_ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += wait_ms / 1000;
    ts.tv_nsec += (long)(wait_ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&j->mu);
    if (!j->stop && wait_ms)
        pthread_cond_timedwait(&j->cv, &j->mu, &ts);
    int st = j->stop;
    pthread_mutex_unlock(&j->mu);
    return st;
}

/*
 * The ordered consumer re-creates itself after missed heartbeats, but when
 * the server it lived on died it can stay silent for many seconds (a new
 * stream leader first): the stream has more than the mirror applied, and
 * nothing moved for STALL_CHECKS looks: subscribe again from where the
 * mirror is (what the old one still delivers is below at_seq: skipped).
 */
static void watch_mirror(struct th_mjs *j, uint64_t last)
{
    uint64_t at = __atomic_load_n(&j->at_seq, __ATOMIC_RELAXED);
    if (!j->sub || last <= at) {
        j->stall_n = 0;
        return;
    }
    if (at != j->stall_at) {
        j->stall_at = at;
        j->stall_n = 1;
        return;
    }
    if (++j->stall_n < STALL_CHECKS)
        return;
    th_warn("[Mailbox] JetStream mirror stalled at seq %llu (stream at %llu): subscribing again",
            (unsigned long long)at, (unsigned long long)last);
    natsSubscription_Unsubscribe(j->sub);
    natsSubscription_Destroy(j->sub);
    j->sub = NULL;
    j->stall_n = 0;
    if (subscribe_mirror(j, at + 1) < 0)
        push(j, EV_LOST, NULL, 0, 0, 0);
}

static void *setup_thread(void *arg)
{
    struct th_mjs *j = arg;
    int64_t created = 0;
    while (!stopping(j, 0)) {
        if (natsConnection_Status(j->nc) != NATS_CONN_STATUS_CONNECTED) {
            stopping(j, 200);
            continue;
        }
        uint64_t first = 0, last = 0, first_ts = 0;
        uint64_t downs = atomic_load(&j->downs); /* before the look: EV_STATE tells what it saw */
        int64_t now_created = ensure_stream(j, &first, &last, &first_ts);
        if (now_created && now_created != created) {
            if (j->sub) {
                natsSubscription_Unsubscribe(j->sub);
                natsSubscription_Destroy(j->sub);
                j->sub = NULL;
            }
            if (created)
                th_warn("[Mailbox] JetStream stream %s was re-created: new epoch", STREAM);
            /* EV_SETUP first: the loop resets the cache before any message of the mirror. */
            uint64_t floor = first ? first - 1 : last, ep = stream_epoch(now_created);
            int keep = !created && j->left_ok && ep == j->left_epoch;
            push4(j, keep ? EV_KEEP : EV_SETUP, NULL, ep, floor, last, first_ts);
            j->stall_n = 0;
            /* Kept: from the last seq handed on (re-read, not handed again: its time
               tells how old the seqs after it can be). */
            if (subscribe_mirror(j, keep ? j->left_handed : 0) == 0)
                created = now_created;
            else
                push(j, EV_LOST, NULL, 0, 0, 0);
        } else if (now_created && !j->sub) { /* a re-subscription failed: again */
            uint64_t at = __atomic_load_n(&j->at_seq, __ATOMIC_RELAXED);
            if (subscribe_mirror(j, at + 1) == 0)
                push(j, EV_FOUND, NULL, 0, 0, 0);
        } else if (now_created) {
            push4(j, EV_STATE, NULL, first, last, downs, first_ts);
            watch_mirror(j, last);
        }
        /* Unreachable or gone: the mirror stays (the ordered consumer resumes by itself
           after a broker restart); a stream found with another creation time starts over. */
        stopping(j, WATCH_MS);
    }
    return NULL;
}

/* ---- the loop's side ------------------------------------------------------------------ */

static void arm(struct th_mjs *j)
{
    if (j->armed)
        return;
    struct io_uring_sqe *sqe = th_uring_sqe(j->ring);
    if (!sqe)
        return; /* retried before the next wait */
    io_uring_prep_read(sqe, j->efd, &j->efd_buf, sizeof(j->efd_buf), 0);
    io_uring_sqe_set_data64(sqe, th_ud_make(TH_UD_JS, 0, 0));
    j->armed = 1;
}

void th_mjs_on_cqe(struct th_mjs *j, int res)
{
    j->armed = 0;
    if (res < 0 && res != -EAGAIN && res != -EINTR)
        th_warn("[Mailbox] read of the JetStream eventfd failed: %s", strerror(-res));
    drain(j, 0);
    arm(j);
}

uint64_t th_mjs_tick(struct th_mjs *j, uint64_t now)
{
    /* What the mirror handed to the local route by the last tick left with the wait after it
       (a refill from scratch hands nothing on: all of it counts as handed). */
    uint64_t handed = j->quiet ? j->at_seq : j->handed_mark;
    if (j->ready && handed > j->handed_saved) {
        th_mbx_set_source_handed(j->cache, handed);
        j->handed_saved = handed;
    }
    j->handed_mark = j->seen < j->rehand_to ? j->seen : j->at_seq; /* re-hands still to come */
    if (now >= j->next_check) {
        j->next_check = UINT64_MAX;
        for (uint32_t i = 0; i < NPUB; i++) {
            struct jpub *p = &j->pub[i];
            if (p->state != P_ACK && p->state != P_MIRROR)
                continue;
            if (now >= p->deadline)
                pub_finish(j, i, p->state == P_MIRROR, 0); /* acked: stored all the same */
            else if (p->deadline < j->next_check)
                j->next_check = p->deadline;
        }
        if (j->npend && j->next_check > now + CHECK_NS)
            j->next_check = now + CHECK_NS;
    }
    arm(j);
    return j->next_check;
}

void th_mjs_stats(const struct th_mjs *j, struct th_mjs_stats *out)
{
    *out = j->st;
    out->up = j->ready && j->nc && natsConnection_Status(j->nc) == NATS_CONN_STATUS_CONNECTED;
}

/* ---- the gate (a route in front of the local one) ----------------------------------- */

static int gate_deliver(struct th_route *r, const char *user, size_t ulen, const char *frame,
                        size_t flen, uint64_t nseq, unsigned ho_flags, th_route_done_fn done,
                        void *arg)
{
    struct gate *g = (struct gate *)r;
    if (!g->j || !nseq || nseq <= g->j->at_seq || ulen > TH_USER_MAX)
        return g->inner->ops->deliver(g->inner, user, ulen, frame, flen, nseq, ho_flags, done, arg);
    struct parked *p = malloc(sizeof(*p) + flen);
    if (!p)
        return -ENOMEM;
    p->next = NULL;
    p->nseq = nseq;
    p->deadline = th_mono_ns() + g->timeout_ns;
    p->flags = ho_flags;
    p->done = done;
    p->arg = arg;
    p->ulen = ulen;
    p->flen = flen;
    memcpy(p->user, user, ulen);
    memcpy(p->frame, frame, flen);
    if (g->tail)
        g->tail->next = p;
    else
        g->head = p;
    g->tail = p;
    return 0;
}

/* Hand on, in order, what the mirror has passed (or, with timed_out, what waited too long). */
static void gate_run(struct gate *g, uint64_t now, int timed_out)
{
    struct parked **pp = &g->head, *last = NULL;
    while (*pp) {
        struct parked *p = *pp;
        int pass = !g->j || p->nseq <= g->j->at_seq;
        if (!pass && !(timed_out && now >= p->deadline)) {
            last = p;
            pp = &p->next;
            continue;
        }
        *pp = p->next;
        if (pass) {
            int rc = g->inner->ops->deliver(g->inner, p->user, p->ulen, p->frame, p->flen, p->nseq,
                                            p->flags, p->done, p->arg);
            if (rc < 0)
                p->done(p->arg, &(struct th_route_result){.status = 503});
        } else {
            p->done(p->arg, &(struct th_route_result){.status = 503}); /* the mirror delivers it */
        }
        free(p);
    }
    g->tail = last;
}

static void gate_release(struct gate *g)
{
    if (g && g->head)
        gate_run(g, 0, 0);
}

static void gate_on_cqe(struct th_route *r, uint32_t idx, uint32_t gen, int res, unsigned flags)
{
    struct gate *g = (struct gate *)r;
    g->inner->ops->on_cqe(g->inner, idx, gen, res, flags);
}

static void gate_flush(struct th_route *r)
{
    struct gate *g = (struct gate *)r;
    g->inner->ops->flush(g->inner);
}

static uint64_t gate_next_deadline(struct th_route *r)
{
    struct gate *g = (struct gate *)r;
    uint64_t d = g->inner->ops->next_deadline(g->inner);
    return g->head && g->head->deadline < d ? g->head->deadline : d;
}

static void gate_expire(struct th_route *r, uint64_t now)
{
    struct gate *g = (struct gate *)r;
    g->inner->ops->expire(g->inner, now);
    if (g->head && now >= g->head->deadline)
        gate_run(g, now, 1);
}

static void gate_destroy(struct th_route *r)
{
    struct gate *g = (struct gate *)r;
    for (struct parked *p = g->head, *next; p; p = next) {
        next = p->next;
        free(p); /* dropped without callbacks, like every route's deliveries at stop */
    }
    if (g->j)
        g->j->gate = NULL;
    g->inner->ops->destroy(g->inner);
    free(g);
}

static const struct th_route_ops gate_ops = {
    .deliver = gate_deliver,
    .on_cqe = gate_on_cqe,
    .flush = gate_flush,
    .next_deadline = gate_next_deadline,
    .expire = gate_expire,
    .destroy = gate_destroy,
};

/* ---- life ------------------------------------------------------------------------------ */

static int connect_js(struct th_mjs *j)
{
    natsStatus s;
    char name[TH_PATH_MAX + 16];
    snprintf(name, sizeof(name), "tether-mailbox-%s", j->cfg->node);
    /* (Sends at once: libnats' buffered flush cost 3-5 ms per store ack here.) */
    if ((s = th_nats_options(&j->opts, j->cfg->nats_urls, name)) != NATS_OK ||
        (s = natsOptions_SetRetryOnFailedConnect(j->opts, true, on_connected, j)) != NATS_OK ||
        (s = natsOptions_SetDisconnectedCB(j->opts, on_disconnected, j)) != NATS_OK) {
        th_error("[Mailbox] NATS options (--nats %s): %s", j->cfg->nats_urls,
                 natsStatus_GetText(s));
        return -EINVAL;
    }
    s = natsConnection_Connect(&j->nc, j->opts);
    if (s != NATS_OK && s != NATS_NOT_YET_CONNECTED) {
        th_error("[Mailbox] natsConnection_Connect: %s", natsStatus_GetText(s));
        return -ECONNREFUSED;
    }
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = PUB_WAIT_MS;
    jo.PublishAsync.AckHandler = on_ack;
    jo.PublishAsync.AckHandlerClosure = j;
    jo.PublishAsync.MaxPending = NPUB;
    jo.PublishAsync.StallWait = 10;
    if ((s = natsConnection_JetStream(&j->js, j->nc, &jo)) != NATS_OK) {
        th_error("[Mailbox] natsConnection_JetStream: %s", natsStatus_GetText(s));
        return -EIO;
    }
    return 0;
}

struct th_mjs *th_mjs_new(const struct th_config *cfg, struct th_mbx *cache, struct io_uring *ring,
                          struct th_route *local, struct th_route **gated)
{
    struct th_mjs *j = calloc(1, sizeof(*j));
    struct gate *g = calloc(1, sizeof(*g));
    if (!j || !g) {
        free(j);
        free(g);
        return NULL;
    }
    j->cfg = cfg;
    j->cache = cache;
    j->ring = ring;
    j->local = local;
    j->next_check = UINT64_MAX;
    pthread_mutex_init(&j->mu, NULL);
    pthread_cond_init(&j->cv, NULL);
    for (uint32_t i = 0; i < NPUB; i++)
        j->pub[i].next_free = i + 1 < NPUB ? i + 1 : NONE;
    for (uint32_t i = 0; i < NBUCKET; i++)
        j->abucket[i] = j->sbucket[i] = NONE;
    j->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (j->efd < 0) {
        th_error("[Mailbox] eventfd: %s", strerror(errno));
        goto fail;
    }
    j->left_ok = th_mbx_source_left(cache, &j->left_epoch, &j->left_at, &j->left_handed);
    if (j->left_ok && !j->left_handed)
        j->left_handed = j->left_at; /* it never said: hand nothing again (not the stream) */
    th_mbx_set_epoch(cache, 0);      /* until the stream is found and mirrored */
    if (connect_js(j) < 0)
        goto fail;
    if (pthread_create(&j->thr, NULL, setup_thread, j) != 0) {
        th_error("[Mailbox] pthread_create failed");
        goto fail;
    }
    j->thr_started = 1;
    g->base.ops = &gate_ops;
    g->j = j;
    g->inner = local;
    g->timeout_ns = (uint64_t)cfg->handoff_timeout_ms * 1000000ull;
    j->gate = g;
    *gated = &g->base;
    th_info("[Mailbox] node %s: notifications are stored in JetStream (stream %s, %u replica(s))",
            cfg->node, STREAM, cfg->nats_replicas);
    return j;
fail:
    free(g);
    j->gate = NULL;
    th_mjs_close(j);
    nats_CloseAndWait(2000); /* no other connection yet (route_nats comes after): callbacks done */
    th_mjs_free(j);
    return NULL;
}

/*
 * The mirror is closed first, while the connection is up. libnats 3.4.1's
 * ordered consumer re-creates itself after a missed heartbeat on a thread
 * of its own (_recreateOrderedCons, started under the subscription's lock
 * by the heartbeat timer unless the subscription is closed) whose error
 * path calls natsThread_Detach(NULL) when writing its UNSUB/SUB or flushing
 * them fails (with SendAsap the flush is a socket write): a connection
 * closed under it SEGVs the notifier (seen once at stop under ASan in
 * cluster_jetstream_storm, where heartbeats go missing while a server is
 * down). Closed, no re-creation starts; one started just before writes on
 * a connection still open (the drain's round trips come first). What the
 * mirror had pending is dropped with it (stopping: nobody needs it).
 *
 * Then drain, as route_nats does: pending messages reach our callbacks (and
 * the queue, freed by th_mjs_free) before the connection closes, none is
 * left in libnats' global delivery pool.
 */
void th_mjs_close(struct th_mjs *j)
{
    if (!j || j->closed)
        return;
    j->closed = 1;
    pthread_mutex_lock(&j->mu);
    j->stop = 1;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
    if (j->thr_started)
        pthread_join(j->thr, NULL);
    _Atomic unsigned open = 0;
    if (j->sub)
        th_nats_sub_close(j->sub, &open); /* ephemeral consumer: the server drops it */
    j->sub = NULL;
    if (j->nc && natsConnection_Status(j->nc) == NATS_CONN_STATUS_CONNECTED &&
        natsConnection_DrainTimeout(j->nc, 1000) == NATS_OK)
        for (int i = 0; i < 150 && !natsConnection_IsClosed(j->nc); i++)
            usleep(10 * 1000);
    th_nats_closes_wait(&open, 1000);
    if (j->nc)
        natsConnection_Close(j->nc);
    jsCtx_Destroy(j->js);
    j->js = NULL;
    natsConnection_Destroy(j->nc);
    j->nc = NULL;
    natsOptions_Destroy(j->opts);
    j->opts = NULL;
    drain(j, 1); /* while the library is up: natsMsg_Destroy after nats_CloseAndWait crashes */
    if (j->gate)
        j->gate->j = NULL; /* from now on it passes everything through */
}

void th_mjs_free(struct th_mjs *j)
{
    if (!j)
        return;
    th_mjs_close(j);
    drain(j, 1);
    for (uint32_t i = 0; i < NPUB; i++)
        if (j->pub[i].state != P_FREE)
            free(j->pub[i].frame); /* no callbacks at stop (like the routes) */
    if (j->efd >= 0)
        close(j->efd);
    th_buf_free(&j->out);
    pthread_cond_destroy(&j->cv);
    pthread_mutex_destroy(&j->mu);
    free(j);
}
