/*
 * The local route: finds a user's live connections in this node's registry
 * and hands the rendered frame to each owning worker over that worker's
 * control socket (shm/rt/channel.h), without ever blocking the notifier's
 * loop.
 *
 * One persistent non-blocking SOCK_SEQPACKET connection per worker ("channel"),
 * opened lazily and reopened when the worker's pid in the segment changes or
 * the socket fails. Legs queued for a worker during one loop iteration leave
 * together at the flush: packed up to TH_HO_BATCH_MAX requests a packet and
 * several packets a sendmmsg, and the worker answers each packet with one
 * packet of replies, so a burst costs a few syscalls and wake-ups on each
 * side instead of a few per notification. A delivery is a "job" with one "leg" per connection; a
 * leg's request seq encodes (job generation, job index, leg number) so a
 * reply finds its leg in O(1) and a late reply for a finished job (its
 * generation moved on) is dropped. Jobs live in a list ordered by creation,
 * which is also deadline order since every job gets the same bound, counted
 * from the flush after its creation (one clock reading per flush, never
 * earlier than the job), so expiry only looks at the head.
 *
 * Outcome: any leg confirmed (TH_HO_OK) -> 200 with that count, even if
 * others timed out or failed (the backend learns the notification reached
 * the user); every leg GONE -> 404 (the connections went away between the
 * lookup and the handoff); otherwise -> 503.
 *
 * The lookup reads the user's index group only (th_reg_find_owners: slot and
 * owner worker of each entry, no slot read: one memory round trip), and each
 * leg names the user (TH_HO_F_USER) so the owner confirms the id against its
 * own slot before it delivers: a stale or falsely matching entry comes back
 * GONE, never as a delivery to someone else, and only confirmed legs count.
 * The one path that reads the slots here is th_route_local_deliver_by (the
 * JetStream catch-up): it sorts on the slot's connected_at, so it takes
 * exact (slot, gen) legs from th_reg_find_conns as before. A connection
 * there by connected_by gets the frame; a later one gets it with
 * TH_HO_F_IF_RESUMED, and its worker delivers only if it resumed (only
 * the worker knows that, and the seq rules there drop what it had).
 *
 * A worker the supervisor declared hung (th_proc_sh.hung_ns: stopped, or
 * its heartbeat is --hung-after old) gets no leg: that leg fails at once,
 * so a delivery never waits out the handoff timeout on a worker known not
 * to run. Its connections are gone once the supervisor replaces it.
 */
#include "notifier/route.h"
#include "shm/rt/clock.h"
#include "shm/rt/log.h"
#include "shm/rt/channel.h"
#include "shm/rt/paths.h"
#include "shm/rt/stage.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define NO_JOB UINT32_MAX
#define MAX_LEGS 256        /* leg number is 8 bits of the seq */
#define MAX_JOBS (1u << 16) /* deliveries in flight; more gets 503 */
#define JOB_MEM_KEEP 4096   /* a job's legs + frame buffer up to this size is reused */
/*
 * Legs in flight per worker. The worker answers each packet of up to
 * TH_HO_BATCH_MAX requests with one reply packet and waits for room when
 * our receive side is full, so the window bounds only how much one worker
 * holds for us: 1,024 frames, a few packets' worth.
 */
#define CHAN_WINDOW 1024
#define PACK_BYTES (64u * 1024u) /* a packet's target size: many small frames, or one big one */
#define IO_PACKETS 8             /* packets per sendmmsg */
#define IO_BATCH 16              /* reply packets per recvmmsg */

enum { LEG_QUEUED = 1, LEG_SENT, LEG_DONE };

struct leg {
    uint32_t slot, gen;
    uint16_t worker;
    uint8_t state;
    uint8_t flags; /* TH_HO_F_IF_RESUMED, or 0: this leg's own bits of the request's code */
};

struct job {
    uint32_t gen; /* 0 while free */
    uint32_t prev, next;
    th_route_done_fn done;
    void *arg;
    char *frame;
    size_t flen;
    void *mem; /* legs + frame copy; kept when the job is freed, for the next one in this entry */
    size_t memcap;
    uint64_t deadline;
    struct leg *legs;
    uint16_t nlegs, outstanding, ok, gone;
    uint8_t ulen;
    uint8_t by_user; /* legs carry the user id, not a gen (TH_HO_F_USER) */
    char user[TH_USER_MAX];
    uint64_t nseq;     /* mailbox seq, passed to the worker */
    unsigned ho_flags; /* TH_HO_F_* code bits */
};

struct chan {
    int fd;
    int inflight; /* legs SENT and not yet answered: bounded by CHAN_WINDOW */
    pid_t pid;
    uint32_t gen;
    int out_armed;
    uint64_t *q; /* ring of seqs waiting for socket space, in order */
    size_t qhead, qlen, qcap;
};

struct route_local {
    struct th_route base;
    const struct th_config *cfg;
    struct th_reg *reg;
    struct io_uring *ring;
    struct job *jobs;
    uint32_t cap, free_head, head, tail, next_gen;
    struct th_owner_ref *owners; /* th_reg_find_owners: the notify path reads no slot */
    struct th_conn_ref *infos;   /* th_reg_find_conns: th_route_local_deliver_by only */
    int ninfos;
    uint64_t connected_by; /* th_route_local_deliver_by: only slots connected by then (0: all) */
    uint64_t timeout_ns;
    uint64_t reply_mono; /* while chan_read resolves replies: when they were read, else 0 */
    uint64_t dirty;      /* bit per worker channel with legs queued since the last flush */
    struct chan ch[TH_MAX_WORKERS];
    /* chan_flush's and chan_read's scratch (the loop is single-threaded). */
    struct th_ho_msg tx_hdr[IO_PACKETS * TH_HO_BATCH_MAX];
    struct iovec tx_iov[IO_PACKETS][3 * TH_HO_BATCH_MAX]; /* header, user id, frame */
    struct th_ho_msg rx[IO_BATCH][TH_HO_BATCH_MAX + 1];
};

/* A leg's request seq: the user_data codec's packing (kind = leg, index = job, job generation). */
static uint64_t seq_make(uint32_t gen, uint32_t job, unsigned leg)
{
    return th_ud_make(leg, job, gen);
}

/* ---- jobs --------------------------------------------------------------- */

static uint32_t job_alloc(struct route_local *rl)
{
    if (rl->free_head == NO_JOB) {
        if (rl->cap >= MAX_JOBS)
            return NO_JOB;
        uint32_t ncap = rl->cap ? rl->cap * 2 : 256;
        struct job *j = realloc(rl->jobs, ncap * sizeof(*j));
        if (!j)
            return NO_JOB;
        memset(j + rl->cap, 0, (ncap - rl->cap) * sizeof(*j));
        for (uint32_t i = rl->cap; i < ncap; i++)
            j[i].next = i + 1 < ncap ? i + 1 : NO_JOB;
        rl->jobs = j;
        rl->free_head = rl->cap;
        rl->cap = ncap;
    }
    uint32_t i = rl->free_head;
    struct job *j = &rl->jobs[i];
    rl->free_head = j->next;
    if (rl->free_head != NO_JOB) { /* the next delivery's entry: its first touch was a cache miss */
        const char *nj = (const char *)&rl->jobs[rl->free_head];
        for (size_t off = 0; off < sizeof(*j); off += 64)
            __builtin_prefetch(nj + off, 1);
    }
    void *mem = j->mem;
    size_t memcap = j->memcap;
    memset(j, 0, sizeof(*j));
    j->mem = mem;
    j->memcap = memcap;
    j->gen = ++rl->next_gen ? rl->next_gen : ++rl->next_gen; /* never 0 */
    j->prev = rl->tail;
    j->next = NO_JOB;
    if (rl->tail != NO_JOB)
        rl->jobs[rl->tail].next = i;
    else
        rl->head = i;
    rl->tail = i;
    return i;
}

static void job_unlink_free(struct route_local *rl, uint32_t i)
{
    struct job *j = &rl->jobs[i];
    if (j->prev != NO_JOB)
        rl->jobs[j->prev].next = j->next;
    else
        rl->head = j->next;
    if (j->next != NO_JOB)
        rl->jobs[j->next].prev = j->prev;
    else
        rl->tail = j->prev;
    for (unsigned n = 0; n < j->nlegs; n++)
        if (j->legs[n].state == LEG_SENT) /* timed out: its window share comes back now */
            rl->ch[j->legs[n].worker].inflight--;
    if (j->memcap > JOB_MEM_KEEP) { /* a big frame's copy: give it back */
        free(j->mem);
        j->mem = NULL;
        j->memcap = 0;
    }
    j->frame = NULL;
    j->legs = NULL;
    j->gen = 0;
    j->next = rl->free_head;
    rl->free_head = i;
}

static void not_connected_result(struct route_local *rl, const char *user, size_t ulen,
                                 struct th_route_result *res)
{
    res->status = 404;
    res->has_last_seen = th_reg_last_seen(rl->reg, user, ulen, &res->last_seen_ns) == 1;
    if (th_log_level_now < TH_LOG_INFO)
        return;
    if (!res->has_last_seen) {
        th_info("[Notifier] User %.*s NOT connected (never in registry)%s", (int)ulen, user,
                th_route_where(rl->cfg));
        return;
    }
    char t[40], d[32];
    uint64_t now = th_now_ns();
    th_fmt_rfc3339(t, sizeof(t), res->last_seen_ns);
    th_fmt_duration(d, sizeof(d), now > res->last_seen_ns ? now - res->last_seen_ns : 0);
    th_info("[Notifier] User %.*s NOT connected (LastSeen: %s, %s ago)%s", (int)ulen, user, t, d,
            th_route_where(rl->cfg));
}

/* Answer the job's caller and free it. */
static void job_finish(struct route_local *rl, uint32_t i, int timed_out)
{
    struct job *j = &rl->jobs[i];
    struct th_route_result res = {.status = 503, .confirmed = j->ok, .mono_ns = rl->reply_mono};
    if (j->ok)
        res.status = 200;
    else if (!timed_out && j->gone == j->nlegs)
        not_connected_result(rl, j->user, j->ulen, &res);
    if (timed_out)
        th_warn("[Notifier] Delivery to user %.*s: %u of %u connections confirmed within %u ms",
                (int)j->ulen, j->user, j->ok, j->nlegs, rl->cfg->handoff_timeout_ms);
    th_route_done_fn done = j->done;
    void *arg = j->arg;
    job_unlink_free(rl, i);
    done(arg, &res);
}

/* Drop one outstanding count; the last one answers the caller. */
static void job_release(struct route_local *rl, uint32_t i)
{
    if (--rl->jobs[i].outstanding == 0)
        job_finish(rl, i, 0);
}

/* A leg got its answer (status < 0: the channel failed). */
static void leg_resolve(struct route_local *rl, uint32_t i, unsigned n, int status)
{
    struct job *j = &rl->jobs[i];
    if (j->legs[n].state == LEG_SENT)
        rl->ch[j->legs[n].worker].inflight--;
    j->legs[n].state = LEG_DONE;
    if (status == TH_HO_OK)
        j->ok++;
    else if (status == TH_HO_GONE)
        j->gone++;
    job_release(rl, i);
}

/* ---- channels ----------------------------------------------------------- */

static void chan_close(struct route_local *rl, unsigned w, const char *why);

/* Watch channel w for replies (or, out, for room to send). A ring that takes no
 * request closes the channel, failing its legs (503), and returns -EBUSY. */
static int chan_arm(struct route_local *rl, unsigned w, int out)
{
    struct chan *c = &rl->ch[w];
    struct io_uring_sqe *sqe = th_uring_sqe(rl->ring);
    if (!sqe) {
        chan_close(rl, w, "no io_uring submission entry to watch it");
        return -EBUSY;
    }
    if (out) {
        io_uring_prep_poll_add(sqe, c->fd, POLLOUT);
        c->out_armed = 1;
    } else {
        io_uring_prep_poll_multishot(sqe, c->fd, POLLIN);
    }
    io_uring_sqe_set_data64(sqe, th_ud_make(TH_UD_ROUTE, w << 1 | (unsigned)out, c->gen));
    return 0;
}

static void chan_cancel(struct route_local *rl, unsigned w, int out)
{
    struct io_uring_sqe *sqe = th_uring_sqe(rl->ring);
    if (!sqe)
        return; /* the poll stays, but its generation is stale: its completion is ignored */
    io_uring_prep_poll_remove(sqe, th_ud_make(TH_UD_ROUTE, w << 1 | (unsigned)out, rl->ch[w].gen));
    io_uring_sqe_set_data64(sqe, th_ud_make(TH_UD_NONE, 0, 0));
}

/* Close a channel and fail every leg still waiting on it. */
static void chan_close(struct route_local *rl, unsigned w, const char *why)
{
    struct chan *c = &rl->ch[w];
    if (c->fd < 0)
        return;
    th_warn("[Notifier] control channel to worker %u closed: %s", w, why);
    chan_cancel(rl, w, 0);
    if (c->out_armed)
        chan_cancel(rl, w, 1);
    close(c->fd);
    c->fd = -1;
    c->gen++;
    c->out_armed = 0;
    c->qlen = c->qhead = 0;
    for (uint32_t i = rl->head, next; i != NO_JOB; i = next) {
        next = rl->jobs[i].next;
        /* Resolving the job's last leg frees it: stop at that point. */
        for (unsigned n = 0; n < rl->jobs[i].nlegs && rl->jobs[i].gen; n++) {
            struct leg *l = &rl->jobs[i].legs[n];
            if (l->worker == w && (l->state == LEG_QUEUED || l->state == LEG_SENT))
                leg_resolve(rl, i, n, -1);
        }
    }
    c->inflight = 0;
}

/* Non-blocking connect: a worker whose backlog is full must not stall the loop. */
static int chan_connect(const char *path)
{
    int fd = th_ho_connect_path(path, 1);
    if (fd < 0)
        return fd;
    th_ho_set_sndbuf(fd); /* best effort: the default buffer still works, with less in flight */
    return fd;
}

/* The channel to worker w, (re)opened for its current pid; NULL if unreachable. */
static struct chan *chan_get(struct route_local *rl, unsigned w)
{
    struct chan *c = &rl->ch[w];
    pid_t pid = atomic_load_explicit(&rl->reg->hdr->workers[w].pid, memory_order_acquire);
    if (c->fd >= 0 && c->pid == pid)
        return c;
    if (c->fd >= 0)
        chan_close(rl, w, "worker restarted");
    if (pid <= 0)
        return NULL;
    char path[sizeof(rl->reg->hdr->workers[w].sock_path) + 1];
    memcpy(path, rl->reg->hdr->workers[w].sock_path, sizeof(path) - 1);
    path[sizeof(path) - 1] = '\0';
    if (!path[0] && th_worker_sock_path(rl->cfg->shm_name, w, path, sizeof(path)) < 0)
        return NULL;
    int fd = chan_connect(path);
    if (fd < 0) {
        th_warn("[Notifier] cannot connect to worker %u at %s: %s", w, path, strerror(-fd));
        return NULL;
    }
    c->fd = fd;
    c->pid = pid;
    return chan_arm(rl, w, 0) < 0 ? NULL : c;
}

static int seq_queued(struct route_local *rl, uint64_t seq, uint32_t *i, unsigned *n);

/*
 * Drop entries whose job already finished (timed out while the worker was
 * not reading), so a stuck worker's queue holds only live legs: at most one
 * per delivery in flight.
 */
static void chan_compact(struct route_local *rl, struct chan *c)
{
    size_t kept = 0;
    for (size_t k = 0; k < c->qlen; k++) {
        uint64_t seq = c->q[(c->qhead + k) % c->qcap];
        uint32_t i;
        unsigned n;
        if (seq_queued(rl, seq, &i, &n))
            c->q[(c->qhead + kept++) % c->qcap] = seq;
    }
    c->qlen = kept;
}

static int chan_push(struct route_local *rl, struct chan *c, uint64_t seq)
{
    if (c->qlen == c->qcap)
        chan_compact(rl, c);
    if (c->qlen == c->qcap) {
        size_t ncap = c->qcap ? c->qcap * 2 : 64;
        uint64_t *q = malloc(ncap * sizeof(*q));
        if (!q)
            return -ENOMEM;
        for (size_t k = 0; k < c->qlen; k++)
            q[k] = c->q[(c->qhead + k) % c->qcap];
        free(c->q);
        c->q = q;
        c->qhead = 0;
        c->qcap = ncap;
    }
    c->q[(c->qhead + c->qlen++) % c->qcap] = seq;
    return 0;
}

/* Is queue entry seq still a leg waiting to be sent? */
static int seq_queued(struct route_local *rl, uint64_t seq, uint32_t *i, unsigned *n)
{
    *i = th_ud_idx(seq);
    *n = th_ud_kind(seq);
    return *i < rl->cap && rl->jobs[*i].gen == th_ud_gen(seq) &&
           rl->jobs[*i].legs[*n].state == LEG_QUEUED;
}

/*
 * Fill one packet (shm/rt/channel.h: up to TH_HO_BATCH_MAX requests back to
 * back, about PACK_BYTES) from c's queue, starting at *scanned, with at most
 * room legs; their headers go to hdr. Returns the legs packed (0: nothing
 * left to send), *scanned past what it consumed.
 */
static int pack(struct route_local *rl, struct chan *c, size_t *scanned, int room,
                struct th_ho_msg *hdr, struct iovec *iov, int *niov)
{
    int k = 0;
    size_t bytes = 0;
    const char *prev = NULL;
    *niov = 0;
    while (k < (int)TH_HO_BATCH_MAX && k < room && *scanned < c->qlen) {
        uint32_t i;
        unsigned n;
        if (!seq_queued(rl, c->q[(c->qhead + *scanned) % c->qcap], &i, &n)) {
            ++*scanned; /* its job finished (timeout) before it could be sent */
            continue;
        }
        struct job *j = &rl->jobs[i];
        /* Another connection of the user the previous request was for: its frame once
           (its own flags may differ: only the payload is shared). */
        int same = k && j->frame == prev;
        size_t ulen = j->by_user ? j->ulen : 0, plen = same ? 0 : ulen + j->flen;
        if (k && bytes + sizeof(*hdr) + plen > PACK_BYTES)
            break; /* the next packet takes it */
        ++*scanned;
        bytes += sizeof(*hdr) + plen;
        unsigned code = j->ho_flags | j->legs[n].flags | (same ? TH_HO_F_SAME_FRAME : 0) |
                        (j->by_user ? TH_HO_F_USER : 0);
        hdr[k] = (struct th_ho_msg){.magic = TH_HO_MAGIC,
                                    .type = TH_HO_DELIVER,
                                    .slot = j->legs[n].slot,
                                    .gen = j->legs[n].gen,
                                    .seq = seq_make(j->gen, i, n),
                                    .len = (uint32_t)plen,
                                    .code = (uint16_t)code,
                                    .conn = (uint32_t)ulen,
                                    .nseq = j->nseq};
        iov[(*niov)++] = (struct iovec){&hdr[k], sizeof(hdr[k])};
        if (!same && ulen)
            iov[(*niov)++] = (struct iovec){j->user, ulen};
        if (!same)
            iov[(*niov)++] = (struct iovec){j->frame, j->flen};
        prev = j->frame;
        k++;
    }
    return k;
}

/*
 * Send what waits on channel w, in order, packed into packets and up to
 * IO_PACKETS packets per syscall, until the queue is empty, the window is
 * full (replies reopen it) or the socket is full (then wait for POLLOUT).
 */
static void chan_flush(struct route_local *rl, unsigned w)
{
    struct chan *c = &rl->ch[w];
    struct mmsghdr mm[IO_PACKETS];
    size_t upto[IO_PACKETS];
    int legs[IO_PACKETS + 1];
    while (c->fd >= 0 && c->qlen && c->inflight < CHAN_WINDOW) {
        int np = 0, room = CHAN_WINDOW - c->inflight;
        size_t scanned = 0;
        legs[0] = 0;
        while (np < IO_PACKETS && legs[np] < room && scanned < c->qlen) {
            struct th_ho_msg *hdr = &rl->tx_hdr[np * TH_HO_BATCH_MAX];
            int niov;
            int k = pack(rl, c, &scanned, room - legs[np], hdr, rl->tx_iov[np], &niov);
            if (!k)
                break;
            mm[np] = (struct mmsghdr){.msg_hdr = {.msg_iov = rl->tx_iov[np], .msg_iovlen = niov}};
            upto[np] = scanned;
            legs[np + 1] = legs[np] + k;
            np++;
        }
#ifdef TETHER_STAGES
        uint64_t t_flush = th_mono_ns();
        for (int p = 0; p < np; p++)
            for (int m = 0; m < legs[p + 1] - legs[p]; m++)
                TH_STAGE(rl->tx_hdr[p * TH_HO_BATCH_MAX + m].seq, TH_ST_N_FLUSH, t_flush);
#endif
        int sent = np ? sendmmsg(c->fd, mm, (unsigned)np, MSG_DONTWAIT | MSG_NOSIGNAL) : 0;
        if (sent < 0) {
            if (errno == EAGAIN || errno == EINTR)
                chan_arm(rl, w, 1);
            else
                chan_close(rl, w, strerror(errno));
            return;
        }
        for (int p = 0; p < sent; p++)
            for (int m = 0; m < legs[p + 1] - legs[p]; m++) {
                uint32_t i;
                unsigned n;
                seq_queued(rl, rl->tx_hdr[p * TH_HO_BATCH_MAX + m].seq, &i, &n);
                rl->jobs[i].legs[n].state = LEG_SENT;
                TH_STAGE(rl->tx_hdr[p * TH_HO_BATCH_MAX + m].seq, TH_ST_N_SENT, th_mono_ns());
            }
        c->inflight += legs[sent];
        size_t used = sent == np ? scanned : upto[sent - 1];
        c->qhead = (c->qhead + used) % c->qcap;
        c->qlen -= used;
        if (sent < np) {
            chan_arm(rl, w, 1); /* socket full: the rest goes on POLLOUT */
            return;
        }
    }
}

/* Queue leg n of job i on its worker's channel; local_flush() sends it. */
static void leg_start(struct route_local *rl, uint32_t i, unsigned n)
{
    unsigned w = rl->jobs[i].legs[n].worker;
    int ok = w < rl->reg->hdr->nworkers && w < TH_MAX_WORKERS &&
             !th_proc_hung(&rl->reg->hdr->workers[w]);
    struct chan *c = ok ? chan_get(rl, w) : NULL;
    if (!c || chan_push(rl, c, seq_make(rl->jobs[i].gen, i, n)) < 0) {
        leg_resolve(rl, i, n, -1);
        return;
    }
    rl->jobs[i].legs[n].state = LEG_QUEUED;
    rl->dirty |= 1ull << w;
}

/* ---- route operations --------------------------------------------------- */

/*
 * A catch-up leg's own flags: a connection that came after the frame was
 * stored gets it only if it resumed (TH_HO_F_IF_RESUMED; connected_at is
 * on the slot's line 1, read only on this path). If the slot was reused
 * meanwhile its gen no longer matches and the worker answers GONE anyway.
 */
static uint8_t late_flags(const struct route_local *rl, uint32_t slot)
{
    uint64_t at = atomic_load_explicit(&rl->reg->slots[slot].connected_at, memory_order_relaxed);
    return at > rl->connected_by ? TH_HO_F_IF_RESUMED : 0;
}

static int local_deliver(struct th_route *r, const char *user, size_t ulen, const char *frame,
                         size_t flen, uint64_t nseq, unsigned ho_flags, th_route_done_fn done,
                         void *arg)
{
    struct route_local *rl = (struct route_local *)r;
    int n;
    if (rl->connected_by) { /* late hand-over: every live connection, sorted below */
        n = th_reg_find_conns(rl->reg, user, ulen, rl->infos, rl->ninfos);
    } else {
        n = th_reg_find_owners(rl->reg, user, ulen, rl->owners, rl->ninfos);
    }
    if (n <= 0) {
        struct th_route_result res = {0};
        not_connected_result(rl, user, ulen, &res);
        done(arg, &res);
        return 0;
    }
    th_info("[Notifier] User %.*s IS connected - sending notification%s", (int)ulen, user,
            th_route_where(rl->cfg));
    uint32_t i = job_alloc(rl);
    if (i == NO_JOB)
        return -EBUSY;
    struct job *j = &rl->jobs[i];
    /* One buffer for the legs and the frame copy, reused by the entry's next job. */
    size_t need = (size_t)n * sizeof(*j->legs) + flen;
    if (need > j->memcap) {
        void *m = realloc(j->mem, need);
        if (!m) {
            job_unlink_free(rl, i);
            return -ENOMEM;
        }
        j->mem = m;
        j->memcap = need;
    }
    j->legs = j->mem;
    j->frame = (char *)(j->legs + n);
    memcpy(j->frame, frame, flen);
    memcpy(j->user, user, ulen);
    j->ulen = (uint8_t)ulen;
    j->flen = flen;
    j->nseq = nseq;
    j->ho_flags = ho_flags;
    j->done = done;
    j->arg = arg;
    j->nlegs = (uint16_t)n;
    j->deadline = 0; /* dated by the flush that sends its legs (local_flush) */
    j->by_user = !rl->connected_by;
    for (int k = 0; k < n; k++)
        j->legs[k] = j->by_user
                         ? (struct leg){rl->owners[k].slot, 0, rl->owners[k].worker, 0, 0}
                         : (struct leg){rl->infos[k].slot, rl->infos[k].gen, rl->infos[k].worker, 0,
                                        late_flags(rl, rl->infos[k].slot)};
    /* The stage records' link from the caller's key (its arg) to the first leg's seq. */
    TH_STAGE(seq_make(j->gen, i, 0), TH_ST_LINK, (uintptr_t)arg);
    TH_STAGE(seq_make(j->gen, i, 0), TH_ST_N_RENDERED, th_mono_ns());
    TH_STAGE(seq_make(j->gen, i, 0), TH_ST_T_KEY, th_stage_tns(frame, flen));
    /* Hold one extra count so a leg failing at once cannot finish the job mid-loop. */
    j->outstanding = (uint16_t)(n + 1);
    for (int k = 0; k < n; k++)
        leg_start(rl, i, (unsigned)k);
    job_release(rl, i);
    return 0;
}

/* One reply: find its leg and resolve it. Late or foreign replies are dropped. */
static void on_reply(struct route_local *rl, unsigned w, const struct th_ho_msg *m)
{
    if (m->magic != TH_HO_MAGIC || m->type != TH_HO_REPLY)
        return;
    uint32_t i = th_ud_idx(m->seq);
    unsigned n = th_ud_kind(m->seq);
    if (i >= rl->cap || rl->jobs[i].gen != th_ud_gen(m->seq) || n >= rl->jobs[i].nlegs)
        return; /* late reply for a finished job */
    struct leg *l = &rl->jobs[i].legs[n];
    TH_STAGE(m->seq, TH_ST_N_REPLY, th_mono_ns());
    if (l->state == LEG_SENT && l->worker == w)
        leg_resolve(rl, i, n, m->code);
}

/*
 * Hints for the replies just read, before the first is resolved: each one's
 * job entry (the words a reply checks span two cache lines), then, once
 * those are on their way in, the leg it resolves (in the job's own buffer,
 * another miss). Both were a miss per reply, one after the other.
 */
static void replies_prefetch(struct route_local *rl, const struct mmsghdr *mm, int got)
{
    for (int k = 0; k < got; k++)
        for (size_t r = 0; r < mm[k].msg_len / sizeof(rl->rx[k][0]); r++) {
            uint32_t i = th_ud_idx(rl->rx[k][r].seq);
            if (i < rl->cap) {
                __builtin_prefetch(&rl->jobs[i], 1);
                __builtin_prefetch(&rl->jobs[i].legs, 1);
            }
        }
    for (int k = 0; k < got; k++)
        for (size_t r = 0; r < mm[k].msg_len / sizeof(rl->rx[k][0]); r++) {
            uint32_t i = th_ud_idx(rl->rx[k][r].seq);
            unsigned n = th_ud_kind(rl->rx[k][r].seq);
            if (i < rl->cap && n < rl->jobs[i].nlegs)
                __builtin_prefetch(&rl->jobs[i].legs[n], 1);
        }
}

/* Read every reply packet waiting on channel w, IO_BATCH per syscall. */
static void chan_read(struct route_local *rl, unsigned w)
{
    struct chan *c = &rl->ch[w];
    struct iovec iov[IO_BATCH];
    struct mmsghdr mm[IO_BATCH];
    uint32_t gen = c->gen;
    for (;;) {
        for (int k = 0; k < IO_BATCH; k++) {
            iov[k] = (struct iovec){rl->rx[k], sizeof(rl->rx[k])};
            mm[k] = (struct mmsghdr){.msg_hdr = {.msg_iov = &iov[k], .msg_iovlen = 1}};
        }
        int got = recvmmsg(c->fd, mm, IO_BATCH, MSG_DONTWAIT, NULL);
        if (got < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        if (got < 0) {
            chan_close(rl, w, strerror(errno));
            return;
        }
        rl->reply_mono = th_mono_ns(); /* one reading for every reply just read */
        replies_prefetch(rl, mm, got);
        int closed = 0;
        for (int k = 0; k < got && !closed; k++) {
            if (mm[k].msg_len == 0) { /* end of stream: the worker went away */
                chan_close(rl, w, "worker closed it");
                closed = 1;
                break;
            }
            for (size_t r = 0; r < mm[k].msg_len / sizeof(rl->rx[k][0]) && !closed; r++) {
                on_reply(rl, w, &rl->rx[k][r]);
                closed = c->gen != gen; /* closed while resolving */
            }
        }
        rl->reply_mono = 0;
        if (closed || got < IO_BATCH)
            return;
    }
}

static void local_on_cqe(struct th_route *r, uint32_t idx, uint32_t gen, int res, unsigned flags)
{
    struct route_local *rl = (struct route_local *)r;
    unsigned w = idx >> 1, out = idx & 1;
    if (w >= TH_MAX_WORKERS || rl->ch[w].gen != gen || rl->ch[w].fd < 0)
        return; /* for a channel since closed */
    if (out) {
        rl->ch[w].out_armed = 0;
        chan_flush(rl, w);
        return;
    }
    chan_read(rl, w);
    if (rl->ch[w].fd >= 0 && rl->ch[w].gen == gen && res > 0 && (res & (POLLHUP | POLLERR)))
        chan_close(rl, w, "hang-up");
    if (rl->ch[w].fd >= 0 && rl->ch[w].gen == gen && rl->ch[w].qlen && !rl->ch[w].out_armed)
        rl->dirty |= 1ull << w; /* replies reopened the window: send more on the next flush */
    if (rl->ch[w].fd >= 0 && rl->ch[w].gen == gen && !(flags & IORING_CQE_F_MORE))
        chan_arm(rl, w, 0);
}

/*
 * Give the jobs created since the last flush their deadline: one clock
 * reading for all, taken after they were made, so none is early (the bound
 * counts from the flush that sends the legs) and the list stays in deadline
 * order. They are the undated (0) tail of the creation-ordered list.
 */
static void date_new_jobs(struct route_local *rl)
{
    uint64_t deadline = 0;
    for (uint32_t i = rl->tail; i != NO_JOB && rl->jobs[i].deadline == 0; i = rl->jobs[i].prev) {
        if (!deadline)
            deadline = th_mono_ns() + rl->timeout_ns;
        rl->jobs[i].deadline = deadline;
    }
}

static void local_flush(struct th_route *r)
{
    struct route_local *rl = (struct route_local *)r;
    date_new_jobs(rl);
    while (rl->dirty) {
        unsigned w = (unsigned)__builtin_ctzll(rl->dirty);
        rl->dirty &= rl->dirty - 1;
        if (rl->ch[w].fd >= 0 && !rl->ch[w].out_armed)
            chan_flush(rl, w);
    }
}

static uint64_t local_next_deadline(struct th_route *r)
{
    struct route_local *rl = (struct route_local *)r;
    if (rl->head == NO_JOB)
        return UINT64_MAX;
    uint64_t d = rl->jobs[rl->head].deadline;
    return d ? d : th_mono_ns() + rl->timeout_ns; /* not flushed yet: dated later than this */
}

static void local_expire(struct th_route *r, uint64_t now)
{
    struct route_local *rl = (struct route_local *)r;
    /* An undated job (0: created since the last flush) and all after it are not due. */
    while (rl->head != NO_JOB && rl->jobs[rl->head].deadline && rl->jobs[rl->head].deadline <= now)
        job_finish(rl, rl->head, 1);
}

static void local_destroy(struct th_route *r)
{
    struct route_local *rl = (struct route_local *)r;
    for (unsigned w = 0; w < TH_MAX_WORKERS; w++) {
        if (rl->ch[w].fd >= 0)
            close(rl->ch[w].fd);
        free(rl->ch[w].q);
    }
    for (uint32_t i = 0; i < rl->cap; i++)
        free(rl->jobs[i].mem);
    free(rl->jobs);
    free(rl->infos);
    free(rl->owners);
    free(rl);
}

static const struct th_route_ops local_ops = {
    .deliver = local_deliver,
    .on_cqe = local_on_cqe,
    .flush = local_flush,
    .next_deadline = local_next_deadline,
    .expire = local_expire,
    .destroy = local_destroy,
};

int th_route_local_deliver_by(struct th_route *local, uint64_t connected_by, const char *user,
                              size_t ulen, const char *frame, size_t flen, uint64_t nseq,
                              unsigned ho_flags, th_route_done_fn done, void *arg)
{
    struct route_local *rl = (struct route_local *)local;
    if (local->ops != &local_ops)
        return -EINVAL;
    rl->connected_by = connected_by ? connected_by : 1;
    int rc = local_deliver(local, user, ulen, frame, flen, nseq, ho_flags, done, arg);
    rl->connected_by = 0;
    return rc;
}

const char *th_route_where(const struct th_config *cfg)
{
    static char where[TH_NODE_NAME_MAX + 16];
    if (!cfg->nats_urls[0])
        return "";
    if (!where[0])
        snprintf(where, sizeof(where), " on node %.*s", TH_NODE_NAME_MAX, cfg->node);
    return where;
}

struct th_route *th_route_local_new(const struct th_config *cfg, struct th_reg *reg,
                                    struct io_uring *ring)
{
    struct route_local *rl = calloc(1, sizeof(*rl));
    if (!rl)
        return NULL;
    rl->base.ops = &local_ops;
    rl->cfg = cfg;
    rl->reg = reg;
    rl->ring = ring;
    rl->free_head = rl->head = rl->tail = NO_JOB;
    rl->timeout_ns = (uint64_t)cfg->handoff_timeout_ms * TH_NS_PER_MS; /* default: config.c */
    uint32_t want = cfg->max_conns_per_user + 8;
    rl->ninfos = (int)(want > MAX_LEGS - 1 ? MAX_LEGS - 1 : want);
    rl->infos = calloc((size_t)rl->ninfos, sizeof(*rl->infos));
    rl->owners = calloc((size_t)rl->ninfos, sizeof(*rl->owners));
    if (!rl->infos || !rl->owners) {
        free(rl->infos);
        free(rl->owners);
        free(rl);
        return NULL;
    }
    for (unsigned w = 0; w < TH_MAX_WORKERS; w++)
        rl->ch[w].fd = -1;
    return &rl->base;
}
