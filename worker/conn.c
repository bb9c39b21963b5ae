/*
 * The worker's connection table and each connection's outbound path.
 *
 * Connections live in one preallocated array and are named by index; the
 * entry's generation goes into io_uring user_data so a completion can never
 * act on a reused entry. Outbound bytes go through a two-buffer send queue:
 * `fly` is what the kernel is sending (never moved while a send is
 * outstanding) and `pend` collects frames queued meanwhile, so appending
 * never invalidates a buffer the kernel holds. Both are allocated on demand
 * and freed as soon as they drain: an idle connection holds no heap (the
 * small ones go back to the worker's free lists, WK_SQ_CACHE in wk.h).
 *
 * Closing is always the same path: final bytes queued (a close frame or an
 * HTTP error), state CLOSING, the registry slot released at once; once the
 * queue drains we shutdown(SHUT_WR) (our FIN) and wait for the peer's EOF or
 * a deadline, then abort. Abort shuts the socket both ways, which ends any
 * outstanding recv/send; the entry is freed when the last one completes.
 */
#include "worker/wk.h"
#include "shm/rt/clock.h"
#include "shm/rt/log.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

int wk_conn_alloc(struct worker *w, int fd)
{
    uint32_t idx;
    if (w->free_head != UINT32_MAX) {
        idx = w->free_head;
        w->free_head = w->conns[idx].next;
    } else if (w->high < WK_MAX_CONNS) {
        idx = w->high++;
    } else {
        return -ENFILE;
    }
    struct conn *c = &w->conns[idx];
    uint32_t gen = c->gen;
    memset(c, 0, sizeof(*c));
    c->gen = gen;
    c->fd = fd;
    c->state = CS_HANDSHAKE;
    c->deadline_s = w->mono_s + WK_HANDSHAKE_S;
    w->tick_due[idx] = c->deadline_s;
    th_ws_reader_init(&c->rd, w->cfg->max_message);
    w->live++;
    return (int)idx;
}

size_t wk_conn_queued(const struct conn *c)
{
    if (!c->sq)
        return 0;
    return (size_t)(c->sq->fly_len - c->sq->fly_off) + c->sq->pend_len + c->sq->plain_len;
}

static void list_flush(struct worker *w, uint32_t idx)
{
    struct conn *c = &w->conns[idx];
    if (c->flags & CF_FLUSH_LISTED)
        return;
    c->flags |= CF_FLUSH_LISTED;
    w->flush[w->nflush++] = idx;
}

/* A buffer of cap bytes back to the free list (a WK_SQ_SMALL one) or the heap. */
static void buf_put(struct worker *w, uint8_t *p, uint32_t cap)
{
    if (p && cap == WK_SQ_SMALL && w->n_small_cache < WK_SQ_CACHE)
        w->small_cache[w->n_small_cache++] = p;
    else
        free(p);
}

/* Grow a queue buffer from cap to nc bytes, keeping its first len. */
static uint8_t *buf_grow(struct worker *w, uint8_t *p, uint32_t len, uint32_t cap, size_t nc)
{
    if (!p && nc == WK_SQ_SMALL && w->n_small_cache)
        return w->small_cache[--w->n_small_cache];
    if (cap != WK_SQ_SMALL)
        return realloc(p, nc); /* never a cached buffer: those are exactly WK_SQ_SMALL */
    uint8_t *np = malloc(nc);
    if (np) {
        memcpy(np, p, len);
        buf_put(w, p, cap);
    }
    return np;
}

static struct sendq *sq_get(struct worker *w)
{
    if (!w->n_sq_cache)
        return calloc(1, sizeof(struct sendq));
    struct sendq *q = w->sq_cache[--w->n_sq_cache];
    memset(q, 0, sizeof(*q));
    return q;
}

static void sq_put(struct worker *w, struct sendq *q)
{
    if (w->n_sq_cache < WK_SQ_CACHE)
        w->sq_cache[w->n_sq_cache++] = q;
    else
        free(q);
}

/* At exit: what the free lists hold. */
void wk_conn_cache_free(struct worker *w)
{
    while (w->n_sq_cache)
        free(w->sq_cache[--w->n_sq_cache]);
    while (w->n_small_cache)
        free(w->small_cache[--w->n_small_cache]);
}

enum sq_part { SQ_WIRE, SQ_PLAIN };

/* Room for n more bytes at the end of pend (for the socket) or plain (TLS plaintext); NULL: no
 * memory. */
static uint8_t *append(struct worker *w, uint32_t idx, enum sq_part part, size_t n)
{
    struct conn *c = &w->conns[idx];
    if (!c->sq && !(c->sq = sq_get(w)))
        return NULL;
    struct sendq *q = c->sq;
    uint8_t **buf = part == SQ_WIRE ? &q->pend : &q->plain;
    uint32_t *len = part == SQ_WIRE ? &q->pend_len : &q->plain_len;
    uint32_t *cap = part == SQ_WIRE ? &q->pend_cap : &q->plain_cap;
    if (*len + n > *cap) {
        size_t nc = *cap ? (size_t)*cap * 2 : WK_SQ_SMALL;
        while (nc < *len + n)
            nc *= 2;
        uint8_t *np = buf_grow(w, *buf, *len, *cap, nc);
        if (!np)
            return NULL;
        *buf = np;
        *cap = (uint32_t)nc;
    }
    list_flush(w, idx);
    uint8_t *at = *buf + *len;
    *len += (uint32_t)n;
    w->queued_bytes += n;
    return at;
}

/* Room for n more pending bytes; NULL (and the connection aborted) when over cap or out of memory.
 */
static uint8_t *reserve(struct worker *w, uint32_t idx, size_t n)
{
    struct conn *c = &w->conns[idx];
    if (c->state == CS_FREE || c->state == CS_DEAD || c->state == CS_CLOSING)
        return NULL; /* nothing may follow the close frame or the HTTP answer */
    if (wk_conn_queued(c) + n > w->cfg->send_queue_cap || w->queued_bytes + n > WK_QUEUE_BUDGET) {
        th_debug("connection %u: send queue over %llu bytes (worker total %llu), closing", idx,
                 (unsigned long long)w->cfg->send_queue_cap, (unsigned long long)w->queued_bytes);
        wk_conn_abort(w, idx);
        return NULL;
    }
    uint8_t *at = append(w, idx, c->tls ? SQ_PLAIN : SQ_WIRE, n);
    if (!at) {
        th_warn("connection %u: out of memory for the send queue, closing", idx);
        wk_conn_abort(w, idx);
    }
    return at;
}

/* TLS records for the socket (handshake flights, alerts, sealed plaintext): no cap, any live state.
 */
int wk_conn_wire(struct worker *w, uint32_t idx, const uint8_t *p, size_t n)
{
    struct conn *c = &w->conns[idx];
    if (c->state == CS_FREE || c->state == CS_DEAD)
        return -1;
    uint8_t *at = append(w, idx, SQ_WIRE, n);
    if (!at) {
        th_warn("connection %u: out of memory for the send queue, closing", idx);
        wk_conn_abort(w, idx);
        return -1;
    }
    memcpy(at, p, n);
    return 0;
}

void wk_conn_send(struct worker *w, uint32_t idx, const void *p, size_t n)
{
    uint8_t *at = reserve(w, idx, n);
    if (at)
        memcpy(at, p, n);
}

void wk_conn_send_frame(struct worker *w, uint32_t idx, enum th_ws_opcode op, const void *p,
                        size_t n)
{
    uint8_t hdr[10];
    size_t hl = th_ws_frame_hdr_write(hdr, op, n);
    uint8_t *at = reserve(w, idx, hl + n);
    if (!at)
        return;
    memcpy(at, hdr, hl);
    if (n)
        memcpy(at + hl, p, n);
}

static void send_fin(struct conn *c)
{
    if (c->flags & CF_FIN_SENT)
        return;
    c->flags |= CF_FIN_SENT;
    shutdown(c->fd, SHUT_WR);
}

/* Hand the queue's oldest bytes to the kernel (one send outstanding at a time). */
static void start_send(struct worker *w, uint32_t idx)
{
    struct conn *c = &w->conns[idx];
    struct sendq *q = c->sq;
    if (!q || (c->flags & CF_SENDING) || c->state == CS_DEAD || c->state == CS_FREE)
        return;
    if (q->fly_off == q->fly_len) {
        if (!q->pend_len)
            return;
        buf_put(w, q->fly, q->fly_cap);
        q->fly = q->pend, q->fly_len = q->pend_len, q->fly_off = 0, q->fly_cap = q->pend_cap;
        q->pend = NULL, q->pend_len = q->pend_cap = 0;
    }
    struct io_uring_sqe *sqe = th_uring_sqe(&w->ring);
    if (!sqe) { /* the bytes could never leave: end the connection rather than stall it */
        wk_conn_abort(w, idx);
        wk_conn_maybe_free(w, idx);
        return;
    }
    io_uring_prep_send(sqe, c->fd, q->fly + q->fly_off, q->fly_len - q->fly_off, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, th_ud_make(OP_SEND, idx, c->gen));
    c->flags |= CF_SENDING;
}

void wk_conn_flush_all(struct worker *w)
{
    for (uint32_t i = 0; i < w->nflush; i++) {
        uint32_t idx = w->flush[i];
        wk_tls_seal(w, idx); /* while still listed: its records join this flush */
        w->conns[idx].flags &= ~CF_FLUSH_LISTED;
        start_send(w, idx);
    }
    w->nflush = 0;
}

static void sendq_free(struct worker *w, struct conn *c)
{
    if (!c->sq)
        return;
    w->queued_bytes -= wk_conn_queued(c);
    buf_put(w, c->sq->fly, c->sq->fly_cap);
    buf_put(w, c->sq->pend, c->sq->pend_cap);
    buf_put(w, c->sq->plain, c->sq->plain_cap);
    sq_put(w, c->sq);
    c->sq = NULL;
}

void wk_on_send(struct worker *w, uint32_t idx, int res)
{
    struct conn *c = &w->conns[idx];
    c->flags &= ~CF_SENDING;
    if (c->state == CS_DEAD) {
        wk_conn_maybe_free(w, idx);
        return;
    }
    if (res < 0) { /* EPIPE, ECONNRESET: the peer is gone */
        wk_conn_abort(w, idx);
        wk_conn_maybe_free(w, idx);
        return;
    }
    struct sendq *q = c->sq;
    q->fly_off += (uint32_t)res;
    w->queued_bytes -= (uint64_t)res;
    if (q->fly_off < q->fly_len || q->pend_len) {
        start_send(w, idx);
        return;
    }
    if (q->plain_len)
        return;       /* TLS plaintext of this batch: sealed and sent by the flush */
    sendq_free(w, c); /* drained: idle connections hold no buffer */
    if (c->state == CS_CLOSING)
        send_fin(c);
}

void wk_conn_unregister(struct worker *w, uint32_t idx)
{
    struct conn *c = &w->conns[idx];
    if (!(c->flags & CF_REGISTERED))
        return;
    c->flags &= ~CF_REGISTERED;
    /* -ESTALE: a janitor released it for us (and counted it) while we were unresponsive. */
    if (th_reg_release(w->reg, c->h) == 0)
        atomic_fetch_add_explicit(&w->reg->hdr->counters.connections_closed, 1,
                                  memory_order_relaxed);
}

/* Final bytes are queued: release the slot, flush, FIN, wait for EOF until a deadline. */
void wk_conn_finish(struct worker *w, uint32_t idx)
{
    struct conn *c = &w->conns[idx];
    if (c->state == CS_FREE || c->state == CS_DEAD)
        return;
    wk_conn_unregister(w, idx);
    c->state = CS_CLOSING;
    c->deadline_s = w->mono_s + WK_CLOSE_WAIT_S;
    if (w->draining && c->deadline_s > w->drain_deadline_s)
        c->deadline_s = w->drain_deadline_s;
    w->tick_due[idx] = c->deadline_s;
    free(c->head);
    c->head = NULL;
    if (w->feeding != idx)
        th_ws_reader_free(&c->rd); /* else wk_ws_input frees it once the reader returns */
    wk_tls_finish(w, idx);         /* the last records and close_notify */
    if (!wk_conn_queued(c) && !(c->flags & CF_SENDING))
        send_fin(c);
}

void wk_conn_close(struct worker *w, uint32_t idx, uint16_t code)
{
    struct conn *c = &w->conns[idx];
    if (c->state == CS_HANDSHAKE) {
        wk_conn_abort(w, idx);
        return;
    }
    if (c->state != CS_OPEN)
        return;
    uint8_t body[2] = {(uint8_t)(code >> 8), (uint8_t)code};
    wk_conn_send_frame(w, idx, TH_WS_CLOSE, body, sizeof(body));
    wk_conn_finish(w, idx);
}

void wk_conn_abort(struct worker *w, uint32_t idx)
{
    struct conn *c = &w->conns[idx];
    if (c->state == CS_FREE || c->state == CS_DEAD)
        return;
    wk_conn_unregister(w, idx);
    c->state = CS_DEAD;
    /* Ends the outstanding multishot recv (EOF) and any send (EPIPE). */
    shutdown(c->fd, SHUT_RDWR);
    free(c->head);
    c->head = NULL;
    if (w->feeding != idx)
        th_ws_reader_free(&c->rd);
    if (c->sq) {
        w->queued_bytes -= c->sq->pend_len + c->sq->plain_len;
        buf_put(w, c->sq->pend, c->sq->pend_cap);
        buf_put(w, c->sq->plain, c->sq->plain_cap);
        c->sq->pend = c->sq->plain = NULL;
        c->sq->pend_len = c->sq->pend_cap = c->sq->plain_len = c->sq->plain_cap = 0;
    }
}

void wk_conn_maybe_free(struct worker *w, uint32_t idx)
{
    struct conn *c = &w->conns[idx];
    if (c->state != CS_DEAD || (c->flags & (CF_RECV_ARMED | CF_SENDING)))
        return;
    close(c->fd);
    sendq_free(w, c);
    wk_resume_conn_free(w, idx);
    th_ws_reader_free(&c->rd);
    th_tls_free(c->tls); /* only here: the engine may be mid-call whenever the entry is not free */
    c->tls = NULL;
    c->fd = -1;
    c->state = CS_FREE;
    w->tick_due[idx] = 0;
    c->gen++;
    c->next = w->free_head;
    w->free_head = idx;
    w->live--;
}

/* Does the registry slot still carry this connection's generation, LIVE? */
static int slot_still_ours(const struct worker *w, const struct conn *c)
{
    uint64_t ctl = atomic_load_explicit(&w->reg->slots[c->h.slot].ctl, memory_order_relaxed);
    return th_ctl_gen(ctl) == c->h.gen && th_ctl_state(ctl) == TH_SLOT_LIVE;
}

/*
 * Has connection idx been heard from after the janitor judged it stale on
 * LastSeen judged_ns (0: unknown)? Asked before a 4000 close (control.c),
 * because a worker starved past --stale-after (a loaded box, a page-fault
 * storm) has not stamped the pings of clients that kept pinging: their
 * frames wait in its ring or socket, and closing them would evict exactly
 * the clients the janitor must keep. Heard from: the slot's LastSeen moved
 * (a frame parsed since the janitor's read), a recv completion of this
 * connection waits in the completion ring behind the request being
 * handled, or bytes wait unread in the socket (they came after this loop
 * turn's io_uring_enter, so with DEFER_TASKRUN the recv that takes them has
 * not run yet; or the multishot recv ran out of buffers). Only the ring's
 * own consumer (this thread) walks it, without advancing it.
 */
int wk_conn_heard_since(struct worker *w, uint32_t idx, uint64_t judged_ns)
{
    struct conn *c = &w->conns[idx];
    if (judged_ns && atomic_load_explicit(&w->reg->slots[c->h.slot].last_seen,
                                          memory_order_relaxed) != judged_ns)
        return 1;
    uint64_t want = th_ud_make(OP_RECV, idx, c->gen);
    struct io_uring_cqe *cqe;
    unsigned head;
    io_uring_for_each_cqe(&w->ring, head, cqe)
    {
        if (cqe->user_data == want && cqe->res > 0)
            return 1;
    }
    int unread = 0;
    return ioctl(c->fd, FIONREAD, &unread) == 0 && unread > 0;
}

/*
 * Someone released our slot: a claim of the same user over the cap whose
 * 4001 request never arrived (its claimer died, or our control socket was
 * full), or the janitor while we did not answer. Either way the connection
 * no longer gets notifications, so it must not stay open looking connected.
 */
static void lost_slot(struct worker *w, uint32_t i)
{
    w->conns[i].flags &= ~CF_REGISTERED;
    th_debug("connection %u lost registry slot %u: closing it as replaced", i, w->conns[i].h.slot);
    wk_conn_close(w, i, TH_WS_REPLACED);
}

/*
 * The tick looks at a token's exp once a minute at most while it is far,
 * so a step of the wall clock is caught within a minute; near it, at the
 * second it falls due.
 */
#define WK_EXP_RECHECK_S 60u
static uint32_t exp_due(const struct worker *w, uint32_t exp_s)
{
    uint64_t wall_s = w->now_ns / TH_NS_PER_S;
    uint64_t wait = exp_s > wall_s ? exp_s - wall_s : 0;
    return w->mono_s + (uint32_t)(wait < 1 ? 1 : wait > WK_EXP_RECHECK_S ? WK_EXP_RECHECK_S : wait);
}

/* The upgrade is done: no handshake deadline; the token's exp (Unix seconds, 0 = none). */
void wk_conn_opened(struct worker *w, uint32_t idx, uint32_t exp_s)
{
    struct conn *c = &w->conns[idx];
    c->deadline_s = 0;
    c->exp_s = exp_s;
    w->tick_due[idx] = exp_s ? exp_due(w, exp_s) : 0;
}

/* A connection whose tick_due came: act on its deadline or exp, or set the next due second. */
static void tick_one(struct worker *w, uint32_t i)
{
    struct conn *c = &w->conns[i];
    w->tick_due[i] = 0;
    switch (c->state) {
    case CS_HANDSHAKE:
    case CS_CLOSING:
        if (c->deadline_s && w->mono_s >= c->deadline_s) {
            wk_conn_abort(w, i);
            wk_conn_maybe_free(w, i);
        } else {
            w->tick_due[i] = c->deadline_s;
        }
        break;
    case CS_OPEN:
        if (c->exp_s && w->now_ns / TH_NS_PER_S >= c->exp_s)
            wk_conn_close(w, i, TH_WS_POLICY);
        else if (c->exp_s)
            w->tick_due[i] = exp_due(w, c->exp_s);
        break;
    default:
        break;
    }
}

/*
 * Once a second: handshakes over 10 s (slowloris), closing connections past
 * their deadline, tokens past exp (1008), connections whose slot was released
 * by someone else (4001), with no timer and 4 bytes per connection: each
 * connection's next due second sits in the dense tick_due[] (set where a
 * deadline or an exp is set), so the pass reads 4 bytes a connection in
 * order and only the due ones' entries. At a million connections, reading
 * every struct conn each second (a cold line each) was 2.5% of a worker's
 * CPU at 200,000 and the registry slot check before it, a quarter of the
 * slots a second (one cold random line each), 3%: so the slots are checked
 * all at once only in a second after another process released one of ours
 * (th_proc_sh.released, raised by th_reg_release), and otherwise in a slow
 * rotation, every slot within WK_SLOT_ROTATE_S seconds, for a releaser
 * killed before it raised the count; a frame on a connection whose slot is
 * gone closes it at once (session.c).
 */
#define WK_SLOT_ROTATE_S 60u
void wk_conn_tick(struct worker *w)
{
    uint32_t now_s = w->mono_s;
    for (uint32_t i = 0; i < w->high; i++)
        if (w->tick_due[i] && w->tick_due[i] <= now_s)
            tick_one(w, i);
    /* Loaded before the slots (acquire, paired with the releaser's add after its release). */
    uint64_t rel =
        atomic_load_explicit(&w->reg->hdr->workers[w->index].released, memory_order_acquire);
    uint32_t step = rel != w->released_seen ? 1 : WK_SLOT_ROTATE_S;
    w->released_seen = rel;
    for (uint32_t i = step == 1 ? 0 : now_s % WK_SLOT_ROTATE_S; i < w->high; i += step) {
        struct conn *c = &w->conns[i];
        if (c->state == CS_OPEN && (c->flags & CF_REGISTERED) && !slot_still_ours(w, c))
            lost_slot(w, i);
    }
}

size_t wk_conn_user(const struct worker *w, const struct conn *c, char out[TH_USER_MAX + 1])
{
    struct th_conn_info ci;
    out[0] = '\0';
    if (!(c->flags & CF_REGISTERED) || !th_reg_read(w->reg, c->h.slot, &ci) || ci.gen != c->h.gen)
        return 0;
    memcpy(out, ci.user, ci.user_len + 1);
    return ci.user_len;
}
