/*
 * The janitor's sweep (janitor/sweep.h).
 *
 * The sweep never holds anything a worker or the notifier waits for: it
 * walks the slots with th_reg_foreach (seqlock copies, no lock), and an
 * eviction is one small TH_HO_CLOSE request on a persistent control
 * connection to the owning worker, with a short timeout. A worker that does
 * not answer once is not asked again during the same sweep: its stale slots
 * are released here (generation-checked), so one hung worker costs one
 * timeout per sweep, not one per connection.
 */
#include "janitor/sweep.h"
#include "shm/clock.h"
#include "shm/log.h"
#include "worker/handoff.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define CLOSE_STALE 4000
#define HEARTBEAT_EVERY 65536 /* slots visited between heartbeat stamps */

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
    int fd = th_ho_connect(s->shm_name, w);
    if (fd < 0)
        return fd;
    /* th_ho_call's timeout covers the reply; this bounds a send into a full socket. */
    struct timeval tv = {.tv_sec = s->timeout_ms / 1000, .tv_usec = (s->timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    s->fd[w] = fd;
    s->fd_pid[w] = pid;
    return fd;
}

/* Ask the owner to close h with 4000. Returns its reply status, or -errno if it could not answer. */
static int ask_close(struct th_sweeper *s, unsigned w, struct th_handle h)
{
    if (w >= TH_MAX_WORKERS)
        return -EINVAL;
    if (s->silent[w])
        return -ETIMEDOUT;
    struct th_ho_msg m = {.magic = TH_HO_MAGIC, .type = TH_HO_CLOSE, .code = CLOSE_STALE,
                          .slot = h.slot, .gen = h.gen};
    int rc = -ESRCH;
    /* Two attempts: the first may go over a connection to a worker that has since restarted. */
    for (int attempt = 0; attempt < 2; attempt++) {
        int fd = worker_fd(s, w);
        if (fd < 0) {
            rc = fd;
            break;
        }
        m.seq = ++s->seq;
        rc = th_ho_call(fd, &m, NULL, s->timeout_ms);
        if (rc >= 0)
            return rc;
        if (rc == -ETIMEDOUT || rc == -EAGAIN)
            break; /* keep the connection: a late reply is skipped by its seq */
        drop_fd(s, w);
    }
    s->silent[w] = 1;
    th_warn("janitor: worker[%u] did not take an eviction (%s): releasing its stale slots directly "
            "for the rest of this sweep", w, strerror(-rc));
    return rc;
}

static void evict(struct th_sweeper *s, const struct th_conn_info *ci, uint64_t now_ns,
                  struct th_sweep_stats *st)
{
    struct th_handle h = {.slot = ci->slot, .gen = ci->gen};
    int rc = ask_close(s, ci->worker, h);
    if (rc == TH_HO_OK || rc == TH_HO_BUSY) {
        /* The worker closes with 4000 and releases the slot itself. */
        st->closed++;
    } else if (th_reg_release(s->reg, h, now_ns) == 0) {
        /* Silent, dead, or the worker no longer holds it (GONE): nobody else will free it. */
        st->released++;
    } else {
        st->vanished++;
        return;
    }
    atomic_fetch_add_explicit(&s->reg->hdr->counters.stale_evictions, 1, memory_order_relaxed);
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
    if (++x->visited % HEARTBEAT_EVERY == 0)
        atomic_store(&x->s->reg->hdr->roles[TH_ROLE_JANITOR].heartbeat_ns, th_now_ns());
    if (ci->last_seen >= x->now_ns || x->now_ns - ci->last_seen <= x->s->stale_ns)
        return 0;
    char ts[40];
    th_fmt_rfc3339(ts, sizeof(ts), ci->last_seen);
    th_info("[ConnectionManager] Removing stale connection: %s (LastSeen: %s)", ci->user, ts);
    x->st->stale++;
    evict(x->s, ci, x->now_ns, x->st);
    return 0;
}

void th_sweep(struct th_sweeper *s, uint64_t now_ns, struct th_sweep_stats *st)
{
    uint64_t t0 = th_mono_ns();
    memset(st, 0, sizeof(*st));
    memset(s->silent, 0, sizeof(s->silent));
    /* Repair first: slots of dead owners go away without being reported as stale. */
    st->repaired = th_reg_repair(s->reg, now_ns);
    struct visit_ctx x = {.s = s, .now_ns = now_ns, .st = st};
    th_reg_foreach(s->reg, visit, &x);
    st->duration_ns = th_mono_ns() - t0;
}
