/*
 * A socket worker's process: set-up, the io_uring loop and the completion
 * dispatch. One thread, one ring: a multishot accept on the shared client
 * listener, a multishot recv per connection over one provided-buffer ring
 * shared by all connections, sends queued during a batch submitted together
 * with the next wait, and the control socket served in the same loop.
 *
 * The loop wakes at least once a second (wait timeout) to stamp the
 * heartbeat, expire handshakes and closing connections, and notice signals:
 * the handlers only set flags. SIGTERM/SIGINT start a drain (stop
 * accepting, close every client with 1001, wait for them up to
 * --drain-timeout, release every slot, exit 0); SIGHUP reopens the log.
 */
#include "worker/worker.h"
#include "worker/wk.h"
#include "shm/rt/clock.h"
#include "shm/rt/log.h"
#include "shm/rt/role.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
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
    w->accepted = 0;
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
 * Spreading clients over the workers. A multishot accept stays at its place
 * in the listener's wait queue, and the kernel wakes only the first waiter
 * of an accept (exclusive wake-up), so without this the first worker would
 * take every client. Every WK_ACCEPT_BATCH clients a worker re-arms its
 * accept, which queues it behind the other workers: round robin by batches,
 * and a busy worker (slower to re-arm) naturally takes fewer. A full
 * connection table stops accepting until the next tick frees room.
 */
static void after_accept(struct worker *w)
{
    if (w->live >= WK_MAX_CONNS) {
        stop_accept(w);
        w->accept_paused = 1;
    } else if (w->cfg->workers > 1 && ++w->accepted >= WK_ACCEPT_BATCH) {
        stop_accept(w);
        if (!w->accepting)
            arm_accept(w);
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
    if (w->draining) {
        close(res);
        return;
    }
    int idx = wk_conn_alloc(w, res);
    if (idx < 0) {
        th_warn("connection table full (%u per worker): refusing a client", WK_MAX_CONNS);
        close(res);
        return;
    }
    int one = 1;
    setsockopt(res, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    wk_arm_recv(w, (uint32_t)idx);
    after_accept(w);
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
    if (c->state == CS_HANDSHAKE)
        wk_handshake_input(w, idx, p, (size_t)res);
    else if (c->state == CS_OPEN)
        wk_ws_input(w, idx, p, (size_t)res);
    /* CS_CLOSING: discard what the peer sends until its EOF. */
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
    case OP_CTL_POLL:
        wk_ctl_on_poll(w, idx, gen, cqe->res);
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

/* Once a second (or more): heartbeat, deadlines, paused accept. */
static void tick(struct worker *w)
{
    th_role_heartbeat(&w->reg->hdr->workers[w->index], w->now_ns);
    wk_conn_tick(w);
    if (w->accept_paused && !w->draining && !w->accepting && w->live < WK_MAX_CONNS) {
        w->accept_paused = 0;
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
        }
        if (th_sig_stop && !w->draining)
            start_drain(w);
        if (w->draining && (w->live == 0 || w->mono_s >= w->drain_deadline_s))
            return;
        wk_conn_flush_all(w);
        flush_counters(w);
        th_uring_wait(&w->ring, TH_NS_PER_S); /* a failure is logged; the tick still runs */
        read_clocks(w);
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
    w->flush = malloc(WK_MAX_CONNS * sizeof(*w->flush));
    w->ctl_buf = malloc(sizeof(struct th_ho_msg) + TH_HO_MAX_PAYLOAD);
    if (!w->conns || !w->flush || !w->ctl_buf) {
        th_error("out of memory for the connection table");
        return -ENOMEM;
    }
    w->free_head = UINT32_MAX;
    w->feeding = UINT32_MAX;
    for (unsigned i = 0; i < WK_MAX_CTL; i++)
        w->ctl[i].fd = -1;
    for (unsigned i = 0; i < TH_MAX_WORKERS; i++)
        w->peer_fd[i] = -1;
    if (th_uring_init(&w->ring, WK_RING_SQ, WK_RING_CQ) < 0)
        return -1;
    if (bufring_setup(w) < 0 || wk_ctl_listen(w) < 0)
        return -1;
    arm_accept(w);
    wk_ctl_arm_accept(w);
    return 0;
}

int th_worker_main(const struct th_config *cfg, struct th_reg *reg, unsigned index, int listen_fd)
{
    static struct worker W; /* one per process; large (parser scratch, tables) */
    struct worker *w = &W;
    w->cfg = cfg, w->reg = reg, w->index = index, w->listen_fd = listen_fd, w->ctl_fd = -1;
    if (index >= TH_MAX_WORKERS)
        return 1;
    if (th_role_signals(0, NULL) < 0) /* the ring wait returns EINTR on a signal */
        return 1;
    read_clocks(w);
    th_role_publish(&reg->hdr->workers[index], w->now_ns);
    int n = th_reg_reclaim_worker(reg, (uint16_t)index);
    if (n > 0)
        th_info("reclaimed %d slots of a previous worker %u", n, index);
    if (setup(w) < 0)
        return 1;
    th_info("worker %u serving (pid %d, up to %u connections)", index, (int)getpid(), WK_MAX_CONNS);
    loop(w);
    for (uint32_t i = 0; i < w->high; i++) /* drain over: whoever is left is cut */
        wk_conn_abort(w, i);
    wk_ctl_shutdown(w);
    io_uring_queue_exit(&w->ring);
    th_info("worker %u stopped", index);
    return 0;
}
