/*
 * A socket worker's process: set-up, the io_uring loop and the completion
 * dispatch. One thread, one ring: a multishot accept on this worker's own
 * client listener (one per worker, in one SO_REUSEPORT group the
 * supervisor steers: tools/tether/listeners.h), a multishot recv per connection
 * over one provided-buffer ring shared by all connections, sends queued
 * during a batch submitted together with the next wait, and the control
 * socket served in the same loop.
 *
 * The loop wakes at least every 50 ms (wait timeout) and stamps the
 * heartbeat then (at most every 20 ms, so the line the notifier reads is
 * not rewritten on every batch): the supervisor declares a worker hung when
 * its heartbeat is --hung-after old, so nothing in this loop may block for
 * long; every step is bounded (CQE batches, control reads of 256 packets,
 * the once-a-second table pass, adoption batches). At each beat it also
 * looks at which peers name it their adopter (th_proc_sh.adopter: the
 * supervisor's choice while a peer is hung, dead or full) and accepts from
 * those peers' listeners, through a plain (not exclusive) readiness poll:
 * the stopped peer's own multishot accept keeps its place at the head of
 * that listener's exclusive wait queue and would absorb every wake-up.
 * Once a second it expires handshakes and closing connections. Signals:
 * the handlers only set flags. SIGTERM/SIGINT start a drain (stop
 * accepting, close every client with 1001, wait for them up to
 * --drain-timeout, release every slot, exit 0); SIGHUP reopens the log and
 * reloads the TLS certificate (worker/tls.c).
 */
#include "worker/worker.h"
#include "worker/wk.h"
#include "shm/rt/clock.h"
#include "shm/rt/log.h"
#include "shm/rt/stage.h"
#include "shm/rt/role.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

/* Arm the connection's multishot recv; a ring that takes no request ends the connection. */
void wk_arm_recv(struct worker *w, uint32_t idx)
{
    struct conn *c = &w->conns[idx];
    struct io_uring_sqe *sqe = th_uring_sqe(&w->ring);
    if (!sqe) {
        wk_conn_abort(w, idx);
        wk_conn_maybe_free(w, idx);
        return;
    }
    io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = WK_BGID;
    io_uring_sqe_set_data64(sqe, th_ud_make(OP_RECV, idx, c->gen));
    c->flags |= CF_RECV_ARMED;
}

static void arm_accept(struct worker *w)
{
    struct io_uring_sqe *sqe = th_uring_sqe(&w->ring);
    if (!sqe) {
        w->accept_paused = 1; /* the tick tries again */
        return;
    }
    io_uring_prep_multishot_accept(sqe, w->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, th_ud_make(OP_ACCEPT, 0, ++w->accept_gen));
    w->accepting = 1;
}

static void set_full(struct worker *w, uint32_t full)
{
    atomic_store_explicit(&w->reg->hdr->workers[w->index].full, full, memory_order_relaxed);
}

static void stop_accept(struct worker *w)
{
    if (!w->accepting)
        return;
    struct io_uring_sqe *sqe = th_uring_sqe(&w->ring);
    if (!sqe)
        return; /* still accepting; on_accept refuses clients while draining */
    io_uring_prep_cancel64(sqe, th_ud_make(OP_ACCEPT, 0, w->accept_gen), 0);
    io_uring_sqe_set_data64(sqe, th_ud_make(OP_CANCEL, 0, 0));
    w->accepting = 0;
}

/*
 * The kernel spreads clients over the workers' listeners (the supervisor's
 * steering program). A full connection table stops accepting and says so
 * in the segment: the supervisor then steers new clients to the others and
 * names an adopter for what is queued here, until the next tick frees room.
 */
static void after_accept(struct worker *w)
{
    if (w->live >= WK_MAX_CONNS && !w->accept_paused) {
        stop_accept(w);
        w->accept_paused = 1;
        set_full(w, 1);
    }
}

/*
 * The provided-buffer ring (liburing 2.3 has no io_uring_setup_buf_ring):
 * map the ring, register it, hand every buffer to the kernel. The buffers
 * are populated up front: they are a fixed per-worker cost, not a cost of
 * the connections that happen to touch them first.
 */
static int bufring_setup(struct worker *w)
{
    w->br_size = WK_BUF_COUNT * sizeof(struct io_uring_buf);
    w->br = mmap(NULL, w->br_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    w->bufs = mmap(NULL, (size_t)WK_BUF_COUNT * WK_BUF_SIZE, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (w->br == MAP_FAILED || w->bufs == MAP_FAILED) {
        th_error("mmap of the recv buffers: %s", strerror(errno));
        return -ENOMEM;
    }
    struct io_uring_buf_reg reg;
    memset(&reg, 0, sizeof(reg));
    reg.ring_addr = (uintptr_t)w->br;
    reg.ring_entries = WK_BUF_COUNT;
    reg.bgid = WK_BGID;
    int rc = io_uring_register_buf_ring(&w->ring, &reg, 0);
    if (rc < 0) {
        th_error("io_uring_register_buf_ring: %s (kernel too old for provided-buffer rings?)",
                 strerror(-rc));
        return rc;
    }
    io_uring_buf_ring_init(w->br);
    for (unsigned i = 0; i < WK_BUF_COUNT; i++)
        io_uring_buf_ring_add(w->br, w->bufs + (size_t)i * WK_BUF_SIZE, WK_BUF_SIZE,
                              (unsigned short)i, io_uring_buf_ring_mask(WK_BUF_COUNT), (int)i);
    io_uring_buf_ring_advance(w->br, WK_BUF_COUNT);
    return 0;
}

/* Give a recv buffer back; the ring's tail moves once per batch. */
static void buf_return(struct worker *w, unsigned bid)
{
    io_uring_buf_ring_add(w->br, w->bufs + (size_t)bid * WK_BUF_SIZE, WK_BUF_SIZE,
                          (unsigned short)bid, io_uring_buf_ring_mask(WK_BUF_COUNT),
                          (int)w->br_returned++);
}

/* A new client socket, from our listener or an adopted one. */
static void take_client(struct worker *w, int fd)
{
    if (w->draining) {
        close(fd);
        return;
    }
    int idx = wk_conn_alloc(w, fd);
    if (idx < 0) {
        th_warn("connection table full (%u per worker): refusing a client", WK_MAX_CONNS);
        close(fd);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    wk_arm_recv(w, (uint32_t)idx);
    after_accept(w);
}

/* A plain readiness poll, not an accept: see the top of this file. */
static void arm_adopt(struct worker *w, unsigned p)
{
    struct io_uring_sqe *sqe = th_uring_sqe(&w->ring);
    if (!sqe)
        return; /* not armed: the next beat tries again */
    io_uring_prep_poll_add(sqe, w->listen_fds[p], POLLIN);
    io_uring_sqe_set_data64(sqe, th_ud_make(OP_ADOPT, p, w->adopt_gen[p]));
    w->adopt_mask |= 1ull << p;
}

static void on_accept(struct worker *w, int res, unsigned flags, uint32_t gen)
{
    if (!(flags & IORING_CQE_F_MORE) && gen == w->accept_gen && w->accepting) {
        w->accepting = 0; /* the kernel ended our current accept */
        if (res == -EMFILE || res == -ENFILE || res == -ENOBUFS || res == -ENOMEM)
            w->accept_paused = 1; /* re-armed by the next tick, not in a hot loop */
        else if (!w->draining)
            arm_accept(w);
    }
    if (res < 0) {
        if (res != -ECANCELED && res != -EAGAIN)
            th_warn("accept: %s", strerror(-res));
        return;
    }
    take_client(w, res);
}

/* Readiness of adopted peer p's listener: take what is queued there, a bounded batch at a time. */
static void on_adopt(struct worker *w, uint32_t p, uint32_t gen, int res)
{
    if (p >= TH_MAX_WORKERS || !((w->adopt_mask >> p) & 1) || gen != w->adopt_gen[p])
        return;                    /* adoption ended since */
    w->adopt_mask &= ~(1ull << p); /* one-shot poll: the next beat re-arms it */
    if (res < 0)
        return;
    for (unsigned k = 0; k < WK_ADOPT_BATCH && w->live < WK_MAX_CONNS && !w->draining; k++) {
        int fd = accept4(w->listen_fds[p], NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            break; /* EAGAIN: emptied (the peer's replacement may have taken some) */
        take_client(w, fd);
    }
    if (w->live < WK_MAX_CONNS && !w->draining)
        arm_adopt(w, p); /* full: the beat re-arms it once there is room */
}

/* Bytes from the client (plaintext of a TLS connection) for the HTTP or WebSocket code. */
void wk_conn_input(struct worker *w, uint32_t idx, uint8_t *p, size_t n)
{
    struct conn *c = &w->conns[idx];
    if (c->state == CS_HANDSHAKE)
        wk_handshake_input(w, idx, p, n);
    else if (c->state == CS_OPEN)
        wk_ws_input(w, idx, p, n);
    /* CS_CLOSING: discard what the peer sends until its EOF. */
}

static void on_recv(struct worker *w, uint32_t idx, uint32_t gen, int res, unsigned flags)
{
    struct conn *c = &w->conns[idx];
    int has_buf = (flags & IORING_CQE_F_BUFFER) != 0;
    unsigned bid = flags >> IORING_CQE_BUFFER_SHIFT;
    if (c->gen != gen || c->state == CS_FREE) {
        if (has_buf)
            buf_return(w, bid);
        return;
    }
    if (!(flags & IORING_CQE_F_MORE))
        c->flags &= ~CF_RECV_ARMED;
    /* Failed completions first: an empty buffer ring just re-arms. */
    if (res == -ENOBUFS) {
        if (c->state != CS_DEAD && !(c->flags & CF_RECV_ARMED))
            wk_arm_recv(w, idx);
        return;
    }
    if (res <= 0) { /* EOF, reset, cancel: the connection is over */
        if (has_buf)
            buf_return(w, bid);
        wk_conn_abort(w, idx);
        wk_conn_maybe_free(w, idx);
        return;
    }
    uint8_t *p = w->bufs + (size_t)bid * WK_BUF_SIZE;
    if (c->tls || wk_tls_sniff(w, idx, p, (size_t)res))
        wk_tls_input(w, idx, p, (size_t)res);
    else
        wk_conn_input(w, idx, p, (size_t)res);
    buf_return(w, bid);
    if (c->state == CS_DEAD)
        wk_conn_maybe_free(w, idx);
    else if (!(c->flags & CF_RECV_ARMED))
        wk_arm_recv(w, idx);
}

static void dispatch(struct worker *w, const struct io_uring_cqe *cqe)
{
    uint64_t ud = cqe->user_data;
    uint32_t idx = th_ud_idx(ud), gen = th_ud_gen(ud);
    switch ((enum wk_op)th_ud_kind(ud)) {
    case OP_ACCEPT:
        on_accept(w, cqe->res, cqe->flags, gen);
        break;
    case OP_RECV:
        on_recv(w, idx, gen, cqe->res, cqe->flags);
        break;
    case OP_SEND:
        if (idx < w->high && w->conns[idx].gen == gen)
            wk_on_send(w, idx, cqe->res);
        break;
    case OP_CTL_ACCEPT:
        if (!(cqe->flags & IORING_CQE_F_MORE) && !w->draining && cqe->res != -ECANCELED)
            wk_ctl_arm_accept(w);
        wk_ctl_on_accept(w, cqe->res);
        break;
    case OP_CTL_RECV:
        wk_ctl_on_recv(w, idx, gen, cqe->res);
        break;
    case OP_CTL_SEND:
        wk_ctl_on_send(w, idx, gen, cqe->res);
        break;
    case OP_ADOPT:
        on_adopt(w, idx, gen, cqe->res);
        break;
    default:
        break;
    }
}

static void start_drain(struct worker *w)
{
    w->draining = 1;
    w->drain_deadline_s = w->mono_s + w->cfg->drain_timeout_s;
    th_info("draining: closing %u connections (up to %us)", w->live, w->cfg->drain_timeout_s);
    stop_accept(w);
    for (uint32_t i = 0; i < w->high; i++) {
        if (w->conns[i].state == CS_OPEN)
            wk_conn_close(w, i, TH_WS_GOING_AWAY);
        else if (w->conns[i].state == CS_HANDSHAKE)
            wk_conn_abort(w, i);
    }
}

static void flush_counters(struct worker *w)
{
    struct th_counters_sh *k = &w->reg->hdr->counters;
    if (w->c_frames)
        atomic_fetch_add_explicit(&k->frames_in, w->c_frames, memory_order_relaxed);
    if (w->c_pings)
        atomic_fetch_add_explicit(&k->pings, w->c_pings, memory_order_relaxed);
    if (w->c_acks)
        atomic_fetch_add_explicit(&k->acks, w->c_acks, memory_order_relaxed);
    w->c_frames = w->c_pings = w->c_acks = 0;
}

/* Start and stop accepting from the peers whose adopter the supervisor made us. */
static void adopt_update(struct worker *w)
{
    const struct th_reg_hdr *hdr = w->reg->hdr;
    uint64_t want = 0;
    unsigned n = w->cfg->workers < TH_MAX_WORKERS ? w->cfg->workers : TH_MAX_WORKERS;
    for (unsigned p = 0; p < n && !w->draining && w->live < WK_MAX_CONNS; p++)
        if (p != w->index && atomic_load_explicit(&hdr->workers[p].adopter, memory_order_relaxed) ==
                                 (int32_t)w->index + 1)
            want |= 1ull << p;
    for (unsigned p = 0; p < n; p++) {
        uint64_t bit = 1ull << p;
        int had = (w->adopting >> p) & 1, wants = (want & bit) != 0;
        int hung = atomic_load_explicit(&hdr->workers[p].hung_ns, memory_order_relaxed) != 0;
        if (wants && !had)
            th_log(hung ? TH_LOG_INFO : TH_LOG_DEBUG,
                   "accepting the clients queued for %sworker[%u]", hung ? "hung " : "", p);
        else if (had && !wants && !w->draining && w->live < WK_MAX_CONNS)
            th_debug("no longer accepting for worker[%u]", p);
        if (wants && !(w->adopt_mask & bit)) {
            arm_adopt(w, p);
        } else if (!wants && (w->adopt_mask & bit)) {
            struct io_uring_sqe *sqe = th_uring_sqe(&w->ring);
            if (sqe) { /* without one the poll stays armed; its completion is ignored (gen) */
                io_uring_prep_poll_remove(sqe, th_ud_make(OP_ADOPT, p, w->adopt_gen[p]));
                io_uring_sqe_set_data64(sqe, th_ud_make(OP_CANCEL, 0, 0));
            }
            w->adopt_gen[p]++;
            w->adopt_mask &= ~bit;
        }
    }
    w->adopting = want;
}

/*
 * Every 20 ms or so (the loop wakes at least every 50 ms): heartbeat,
 * adoption, and the counter deltas into the segment. The counters used to be
 * added every loop iteration: at a ping a wake-up (a million clients over 54
 * workers) that was two locked adds a ping on lines every worker writes,
 * about 1% of a worker's CPU; /metrics now lags by a beat at most.
 */
static void beat(struct worker *w)
{
    flush_counters(w);
    th_role_heartbeat(&w->reg->hdr->workers[w->index], w->now_ns);
    w->beat_mono = w->mono_ns;
    adopt_update(w);
}

/* Once a second: deadlines, paused accept. */
static void tick(struct worker *w)
{
    wk_conn_tick(w);
    wk_tls_tick(w);
    if (w->accept_paused && !w->draining && !w->accepting && w->live < WK_MAX_CONNS) {
        w->accept_paused = 0;
        set_full(w, 0);
        arm_accept(w);
    }
    if (w->ctl_accept_paused && !w->draining) {
        w->ctl_accept_paused = 0;
        wk_ctl_arm_accept(w);
    }
}

static void read_clocks(struct worker *w)
{
    w->now_ns = th_now_ns();
    w->mono_ns = th_mono_ns();
    w->mono_s = (uint32_t)(w->mono_ns / TH_NS_PER_S);
}

static void loop(struct worker *w)
{
    uint32_t last_tick = w->mono_s;
    for (;;) {
        if (th_sig_hup) {
            th_sig_hup = 0;
            th_log_reopen();
            wk_tls_reload(w);
            wk_auth_reload(w);
        }
        if (th_sig_stop && !w->draining)
            start_drain(w);
        if (w->draining && (w->live == 0 || w->mono_s >= w->drain_deadline_s)) {
            flush_counters(w);
            return;
        }
        int more = wk_resume_run(w); /* replays queue a chunk each, before the flush */
        wk_conn_flush_all(w);
        wk_stage_submit(w);
        /* a failure is logged; the beat still runs. Replay work left: do not block */
        TH_STAGE_ITER();
        th_uring_wait(&w->ring, more ? 0 : TH_HEARTBEAT_NS / 2);
        TH_STAGE_WOKE();
        read_clocks(w);
        if (w->mono_ns - w->beat_mono >= TH_HEARTBEAT_NS / 5)
            beat(w);
        if (w->mono_s != last_tick) {
            last_tick = w->mono_s;
            tick(w);
        }
        struct io_uring_cqe *cqe;
        unsigned head, n = 0;
        io_uring_for_each_cqe(&w->ring, head, cqe)
        {
            dispatch(w, cqe);
            n++;
        }
        io_uring_cq_advance(&w->ring, n);
        if (w->br_returned) {
            io_uring_buf_ring_advance(w->br, (int)w->br_returned);
            w->br_returned = 0;
        }
    }
}

static int setup(struct worker *w)
{
    w->conns = calloc(WK_MAX_CONNS, sizeof(*w->conns)); /* pages are touched only when used */
    w->tick_due = calloc(WK_MAX_CONNS, sizeof(*w->tick_due));
    w->flush = malloc(WK_MAX_CONNS * sizeof(*w->flush));
    if (!w->conns || !w->tick_due || !w->flush) {
        th_error("out of memory for the connection table");
        return -ENOMEM;
    }
    w->free_head = UINT32_MAX;
    w->feeding = UINT32_MAX;
    for (unsigned i = 0; i < WK_MAX_CTL; i++)
        w->ctl[i].fd = -1;
    for (unsigned i = 0; i < TH_MAX_WORKERS; i++)
        w->peer_fd[i] = -1;
    int rc = th_uring_init(&w->ring, WK_RING_SQ, WK_RING_CQ);
    if (rc < 0 || (rc = bufring_setup(w)) < 0 || (rc = wk_ctl_listen(w)) < 0 ||
        (rc = wk_resume_setup(w)) < 0 || (rc = wk_tls_setup(w)) < 0 || (rc = wk_auth_setup(w)) < 0)
        return rc;
    arm_accept(w);
    wk_ctl_arm_accept(w);
    return 0;
}

int th_worker_main(const struct th_config *cfg, struct th_reg *reg, unsigned index,
                   const int *listen_fds)
{
    static struct worker W; /* one per process; large (parser scratch, tables) */
    struct worker *w = &W;
    if (index >= TH_MAX_WORKERS || index >= cfg->workers)
        return 1;
    w->cfg = cfg, w->reg = reg, w->index = index, w->ctl_fd = -1;
    w->listen_fds = listen_fds, w->listen_fd = listen_fds[index];
    if (th_role_signals(0, NULL) < 0) /* the ring wait returns EINTR on a signal */
        return 1;
    read_clocks(w);
    th_role_publish(&reg->hdr->workers[index], w->now_ns);
    int n = th_reg_reclaim_worker(reg, (uint16_t)index);
    if (n > 0)
        th_info("reclaimed %d slots of a previous worker %u", n, index);
    w->released_seen = atomic_load(&reg->hdr->workers[index].released); /* before any claim */
    if (setup(w) < 0)
        return 1;
    th_info("worker %u serving (pid %d, up to %u connections)", index, (int)getpid(), WK_MAX_CONNS);
    beat(w);
    loop(w);
    for (uint32_t i = 0; i < w->high; i++) /* drain over: whoever is left is cut */
        wk_conn_abort(w, i);
    wk_ctl_shutdown(w);
    wk_resume_shutdown(w);
    wk_auth_shutdown(w);
    io_uring_queue_exit(&w->ring);
    wk_ctl_free(w);
    wk_conn_cache_free(w);
    th_stage_flush();
    th_info("worker %u stopped", index);
    return 0;
}
