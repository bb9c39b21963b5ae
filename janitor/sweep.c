/*
 * The janitor's sweep (janitor/sweep.h).
 *
 * The sweep never holds anything a worker or the notifier waits for: it
 * walks the slots with th_reg_foreach (seqlock copies, no lock), and an
 * eviction is one small TH_HO_CLOSE request on a persistent control
 * connection to the owning worker. Requests are pipelined, up to
 * TH_EVICT_WINDOW in flight per worker, because a mass eviction (every client
 * of a network that went away) would otherwise pay one round trip each.
 * A worker that does not answer a window within the timeout is not asked
 * again during the same sweep: its stale slots are released here
 * (generation-checked), so one hung worker costs one timeout per sweep, not
 * one per connection; a worker the supervisor already declared hung
 * (th_proc_sh.hung_ns) is not asked at all. The janitor's heartbeat is
 * stamped while a sweep runs and while it waits for replies, so a long
 * sweep is never taken for a hung janitor.
 *
 * A verdict of stale is a reading of LastSeen, and LastSeen is stamped by
 * the worker when it parses a frame: a worker starved past --stale-after has
 * not stamped the pings of clients that kept pinging. So the request carries
 * the LastSeen it judged, the worker refuses it (TH_HO_KEPT) when it holds
 * newer input (worker/conn.c wk_conn_heard_since), and a slot released here
 * after a timeout is released only if its LastSeen is still the one judged.
 * The contract's "Removing stale connection" line is logged once an eviction
 * has taken place, not when it is asked for.
 */
#include "janitor/sweep.h"
#include "shm/rt/clock.h"
#include "shm/rt/log.h"
#include "shm/rt/channel.h"
#include "shm/proto/wsclose.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define HEARTBEAT_EVERY 16384 /* slots visited between heartbeat stamps (well under 1 ms) */

static void stamp(struct th_sweeper *s)
{
    atomic_store_explicit(&s->reg->hdr->roles[TH_ROLE_JANITOR].heartbeat_ns, th_now_ns(),
                          memory_order_relaxed);
}

void th_sweeper_init(struct th_sweeper *s, const char *shm_name, struct th_reg *reg,
                     uint32_t stale_after_s, int timeout_ms)
{
    memset(s, 0, sizeof(*s));
    s->shm_name = shm_name;
    s->reg = reg;
    s->stale_ns = (uint64_t)stale_after_s * TH_NS_PER_S;
    s->timeout_ms = timeout_ms;
    for (int i = 0; i < TH_MAX_WORKERS; i++)
        s->fd[i] = -1;
}

static void drop_fd(struct th_sweeper *s, unsigned w)
{
    if (s->fd[w] >= 0)
        close(s->fd[w]);
    s->fd[w] = -1;
}

void th_sweeper_close(struct th_sweeper *s)
{
    for (unsigned w = 0; w < TH_MAX_WORKERS; w++)
        drop_fd(s, w);
}

/* The control connection to worker w's current incarnation. Returns fd or -errno. */
static int worker_fd(struct th_sweeper *s, unsigned w)
{
    int32_t pid = atomic_load(&s->reg->hdr->workers[w].pid);
    if (pid <= 0 || !th_pid_alive(pid))
        return -ESRCH;
    if (s->fd[w] >= 0 && s->fd_pid[w] == pid)
        return s->fd[w];
    drop_fd(s, w);
    int fd = th_ho_connect(s->shm_name, w, 0);
    if (fd < 0)
        return fd;
    /* th_ho_call's timeout covers the reply; this bounds a send into a full socket. */
    struct timeval tv = {.tv_sec = s->timeout_ms / 1000, .tv_usec = (s->timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    s->fd[w] = fd;
    s->fd_pid[w] = pid;
    return fd;
}

/* The contract's line for an eviction that took place (closed by the worker or released here). */
static void log_evicted(const struct th_inflight *e)
{
    char ts[40];
    th_fmt_rfc3339(ts, sizeof(ts), e->last_seen);
    th_info("[ConnectionManager] Removing stale connection: %s (LastSeen: %s)", e->user, ts);
}

/* Heard from after all: a worker's TH_HO_KEPT, or its LastSeen moved before we released it. */
static void kept(const struct th_inflight *e, unsigned w, struct th_sweep_stats *st)
{
    char ts[40];
    th_fmt_rfc3339(ts, sizeof(ts), e->last_seen);
    th_info("janitor: not evicting %s: heard from after the sweep read LastSeen %s (worker[%u] "
            "holds newer frames of it)",
            e->user, ts, w);
    st->kept++;
}

/*
 * The slot's eviction is settled here: release it if it still carries e's
 * generation and its LastSeen is still the one judged stale (a worker that
 * did not answer in time may have caught up on its input since).
 */
static void release_here(struct th_sweeper *s, const struct th_inflight *e, unsigned w,
                         struct th_sweep_stats *st)
{
    struct th_conn_info ci;
    if (th_reg_read(s->reg, e->h.slot, &ci) && ci.gen == e->h.gen && ci.last_seen != e->last_seen)
        return kept(e, w, st);
    if (th_reg_release(s->reg, e->h) != 0) {
        st->vanished++; /* closed or reused meanwhile: nothing was evicted */
        return;
    }
    log_evicted(e);
    st->released++;
    atomic_fetch_add_explicit(&s->reg->hdr->counters.stale_evictions, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->reg->hdr->counters.connections_closed, 1, memory_order_relaxed);
}

/* Worker w's answer to one eviction. */
static void settle(struct th_sweeper *s, const struct th_inflight *e, unsigned w, int status,
                   struct th_sweep_stats *st)
{
    if (status == TH_HO_KEPT)
        return kept(e, w, st);
    if (status == TH_HO_OK || status == TH_HO_BUSY) {
        /* The worker closes with 4000 and releases the slot itself. */
        log_evicted(e);
        st->closed++;
        atomic_fetch_add_explicit(&s->reg->hdr->counters.stale_evictions, 1, memory_order_relaxed);
        return;
    }
    /* GONE or BAD: the worker does not hold it (any more); nobody else will free it. */
    release_here(s, e, w, st);
}

/* Worker w stopped answering: settle everything in flight here and stop asking it this sweep. */
static void give_up(struct th_sweeper *s, unsigned w, int err, struct th_sweep_stats *st)
{
    if (!s->silent[w])
        th_warn(
            "janitor: worker[%u] did not take evictions (%s): releasing its stale slots directly "
            "for the rest of this sweep",
            w, strerror(-err));
    s->silent[w] = 1;
    for (int i = 0; i < s->nq[w]; i++)
        release_here(s, &s->q[w][i], w, st);
    s->nq[w] = 0;
    if (err != -ETIMEDOUT) /* a timed-out connection stays: late replies are skipped by seq */
        drop_fd(s, w);
}

/* Match one reply to its request in flight. */
static void take_reply(struct th_sweeper *s, unsigned w, const struct th_ho_msg *r,
                       struct th_sweep_stats *st)
{
    for (int i = 0; i < s->nq[w]; i++) {
        if (s->q[w][i].seq != r->seq)
            continue;
        settle(s, &s->q[w][i], w, r->code, st);
        s->q[w][i] = s->q[w][--s->nq[w]];
        return;
    }
}

/* Wait (up to timeout_ms overall) for every reply in flight to worker w. */
static void collect(struct th_sweeper *s, unsigned w, struct th_sweep_stats *st)
{
    uint64_t deadline = th_mono_ns() + (uint64_t)s->timeout_ms * TH_NS_PER_MS;
    while (s->nq[w] > 0) {
        uint64_t t = th_mono_ns();
        if (t >= deadline)
            return give_up(s, w, -ETIMEDOUT, st);
        stamp(s); /* waiting on a worker is not hanging */
        struct pollfd pfd = {.fd = s->fd[w], .events = POLLIN};
        int pr = poll(&pfd, 1, (int)((deadline - t + TH_NS_PER_MS - 1) / TH_NS_PER_MS));
        if (pr < 0 && errno != EINTR)
            return give_up(s, w, -errno, st);
        if (pr <= 0)
            continue;
        struct th_ho_msg r;
        ssize_t n = recv(s->fd[w], &r, sizeof(r), MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN))
            return give_up(s, w, n == 0 ? -ECONNRESET : -errno, st);
        if (n == (ssize_t)sizeof(r) && r.magic == TH_HO_MAGIC && r.type == TH_HO_REPLY)
            take_reply(s, w, &r, st);
    }
}

/* Send worker w a 4000 close for ci; collect the replies whenever the window fills. */
static void submit(struct th_sweeper *s, const struct th_conn_info *ci, struct th_sweep_stats *st)
{
    unsigned w = ci->worker;
    struct th_inflight e = {.h = {.slot = ci->slot, .gen = ci->gen}, .last_seen = ci->last_seen};
    memcpy(e.user, ci->user, ci->user_len + 1);
    if (w >= TH_MAX_WORKERS || s->silent[w])
        return release_here(s, &e, w, st);
    if (th_proc_hung(&s->reg->hdr->workers[w])) {
        th_warn("janitor: worker[%u] is declared hung: releasing its stale slots directly for the "
                "rest of this sweep",
                w);
        s->silent[w] = 1; /* give_up settles what is in flight without a second warning */
        give_up(s, w, -ETIMEDOUT, st);
        return release_here(s, &e, w, st);
    }
    if (s->nq[w] > 0 && s->fd_pid[w] != atomic_load(&s->reg->hdr->workers[w].pid)) {
        /* Restarted since: the requests in flight died with the old incarnation. */
        for (int i = 0; i < s->nq[w]; i++)
            release_here(s, &s->q[w][i], w, st);
        s->nq[w] = 0;
    }
    int fd = worker_fd(s, w);
    if (fd < 0) {
        give_up(s, w, fd, st);
        return release_here(s, &e, w, st);
    }
    e.seq = ++s->seq;
    struct th_ho_msg m = {.magic = TH_HO_MAGIC,
                          .type = TH_HO_CLOSE,
                          .code = TH_WS_STALE,
                          .slot = e.h.slot,
                          .gen = e.h.gen,
                          .seq = e.seq,
                          .nseq = e.last_seen};
    int rc = th_ho_send(fd, &m, NULL);
    if (rc < 0) {
        give_up(s, w, rc, st);
        return release_here(s, &e, w, st);
    }
    s->q[w][s->nq[w]++] = e;
    if (s->nq[w] == TH_EVICT_WINDOW)
        collect(s, w, st);
}

/*
 * The janitor keeps SIGTERM/SIGINT blocked outside its wait, so a sweep of a
 * huge table would otherwise hold up a drain: look at the pending set now and
 * then instead.
 */
static int stop_pending(void)
{
    sigset_t p;
    return sigpending(&p) == 0 && (sigismember(&p, SIGTERM) == 1 || sigismember(&p, SIGINT) == 1);
}

struct visit_ctx {
    struct th_sweeper *s;
    uint64_t now_ns;
    struct th_sweep_stats *st;
    uint32_t visited;
};

static int visit(const struct th_conn_info *ci, void *arg)
{
    struct visit_ctx *x = arg;
    x->st->live++;
    if (++x->visited % HEARTBEAT_EVERY == 0) {
        stamp(x->s);
        if (stop_pending())
            return 1; /* a drain is on: the next incarnation (if any) sweeps again */
    }
    if (ci->last_seen >= x->now_ns || x->now_ns - ci->last_seen <= x->s->stale_ns)
        return 0;
    x->st->stale++;
    submit(x->s, ci, x->st);
    return 0;
}

void th_sweep(struct th_sweeper *s, uint64_t now_ns, struct th_sweep_stats *st)
{
    uint64_t t0 = th_mono_ns();
    memset(st, 0, sizeof(*st));
    memset(s->silent, 0, sizeof(s->silent));
    /* Repair first: slots of dead owners go away without being reported as stale. */
    st->repaired = th_reg_repair(s->reg);
    if (st->repaired > 0) { /* the registry leaves these counters to its callers */
        atomic_fetch_add_explicit(&s->reg->hdr->counters.dead_reclaimed, (uint64_t)st->repaired,
                                  memory_order_relaxed);
        atomic_fetch_add_explicit(&s->reg->hdr->counters.connections_closed, (uint64_t)st->repaired,
                                  memory_order_relaxed);
    }
    struct visit_ctx x = {.s = s, .now_ns = now_ns, .st = st};
    th_reg_foreach(s->reg, visit, &x);
    for (unsigned w = 0; w < TH_MAX_WORKERS; w++)
        if (s->nq[w] > 0)
            collect(s, w, st);
    st->duration_ns = th_mono_ns() - t0;
}
