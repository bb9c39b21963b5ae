/*
 * The backend API server (see notifier/server.h).
 *
 * Connections live in a fixed table found by index (user_data carries index
 * and generation). Each connection keeps one recv and at most one send in
 * flight. Requests are framed from its input buffer as they arrive; each gets
 * a response record queued in arrival order, and records are written out
 * strictly in that order once complete, so pipelined requests are answered in
 * order even though notifications finish out of order. A notification's
 * record waits for its route callback; when the client goes away first, the
 * record is orphaned and freed by the last callback.
 *
 * Memory per connection is bounded by the request limits (8 KiB head, 1 MiB
 * batch body) and by TH_API_MAX_PIPELINE: past it, reading pauses until
 * answers drain.
 */
#include "notifier/server.h"
#include "notifier/api.h"
#include "notifier/api_tls.h"
#include "notifier/metrics.h"
#include "notifier/apikey.h"
#include "notifier/mailbox_js.h"
#include "notifier/notify_fast.h"
#include "notifier/route.h"
#include "shm/mailbox.h"
#include "shm/rt/channel.h"
#include "shm/rt/clock.h"
#include "shm/rt/log.h"
#include "shm/rt/role.h"
#include "shm/rt/stage.h"
#include "shm/proto/userid.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#define NO_CONN UINT32_MAX
#define INFLIGHT_BUCKETS 4096
#define RING_SQ 2048u  /* submission queue entries */
#define RING_CQ 16384u /* completion queue entries */
/* Connections a presence answer lists (--max-conns-per-user is lower in practice). */
#define PRESENCE_MAX_CONNS 256
#define RECV_MIN 16384
#define RECV_MAX_BUF (TH_HTTP_MAX_HEAD + TH_API_MAX_BATCH_BODY + 4096)

struct resp;

/* One notification inside a response (a single notify has one). */
struct item {
    struct resp *r;
    int code;
    unsigned connections;
    unsigned nodes; /* with --nats: nodes that confirmed */
    int has_ls;
    uint64_t ls, t0;
    char *err;             /* 400/413 reason (malloc'd) */
    uint64_t seq, pos;     /* mailbox seq and entry (0: none) */
    uint32_t expires_in_s; /* with pos: its ttl, for a 202 */
    uint8_t js_stored;     /* JetStream mailbox: stored with seq (pos may be 0: not cached yet) */
    uint8_t js_unstored;   /* JetStream mailbox: the store failed ("stored":false, never 202) */
    struct item *waiters;  /* same-id requests answered with this one's result */
    struct item *wnext;    /* next waiter, or next in the in-flight hash chain */
    uint8_t ulen, idlen;
    char user[TH_USER_MAX];
    char id[TH_API_MAX_ID];
};

struct resp {
    struct resp *next;
    struct conn *c; /* NULL once the connection is gone */
    int status;
    const char *ctype;
    struct th_buf body; /* complete body for non-notify answers */
    int batch, close_after, keep10;
    uint32_t nitems, pending;
    struct item *items; /* &one for a single notify: no allocation */
    struct item one;
    struct presence_wait *pw; /* a presence answer waiting for the other nodes */
};

/* GET /v1/presence with --nats: the user, until the other nodes answered. */
struct presence_wait {
    struct resp *r;
    size_t ulen;
    char user[TH_USER_MAX];
};

struct conn {
    int fd;
    uint32_t gen, next_free;
    int in_use, recv_busy, send_busy, closing, woken, paused;
    int stop_read;         /* answering a last request (Connection: close, unframeable input) */
    int continued;         /* "100 Continue" sent for the request being received */
    int eof;               /* the peer finished sending */
    uint64_t linger_until; /* lingering close: draining the peer after our last answer */
    char *in;
    size_t in_len, in_cap;
    struct th_buf out, sending; /* appended while a send is in flight / owned by the kernel */
    size_t sent;
    struct resp *rhead, *rtail;
    unsigned nresp;
    uint64_t last_active;
    struct conn *wake_next;
    struct th_api_tls *tls; /* --api-tls-cert: every connection (notifier/api_tls.h) */
};

struct server {
    const struct th_config *cfg;
    struct th_reg *reg;
    struct io_uring ring;
    struct th_route *route;
    int api_fd;
    int accept_paused; /* multishot accept ended on EMFILE & co: re-armed by the tick */
    struct conn conns[TH_API_MAX_CONNS];
    uint32_t free_head;
    unsigned nconns;
    struct conn *wake;
    uint64_t owed;   /* notifications accepted, answer not yet written */
    int owed_paused; /* some connection paused on MAX_OWED */
    struct th_notifier_stats stats;
    uint64_t id_prefix, id_counter;
    struct th_buf frame;  /* reused for every rendering: the route copies what it keeps */
    struct th_buf answer; /* a notification answer's body, rendered here then copied out */
    struct resp *spare;   /* freed answer records kept for reuse (up to SPARE_RESP) */
    unsigned nspare;
    uint64_t batch_mono; /* while a batch's items start: its one monotonic reading, else 0 */
    /*
     * Outcomes counted since the last counters_flush(): one atomic add to
     * the segment per loop iteration instead of one per notification (a
     * locked add drains the store buffer; the line is shared with the
     * workers' counters). Flushed before any answer leaves and before
     * /metrics renders, so nobody sees an answer its count is missing from.
     */
    uint64_t n_delivered, n_not_connected, n_unavailable;
    struct th_buf fast;           /* the fast path's data texts (notify_fast.h), reused */
    struct th_notify *fast_items; /* a batch's items on the fast path (TH_API_MAX_BATCH_ITEMS) */
    struct th_apikeys keys;       /* --api-key-file, re-read on SIGHUP; n == 0: no keys required */
    struct th_conn_info infos[PRESENCE_MAX_CONNS];
    /* The mailbox (shm/mailbox.h): this process is its one writer while mbx_on. */
    struct th_mbx mbx;
    int mbx_on;
    char epoch[TH_MBX_EPOCH_LEN + 1];
    struct item *inflight[INFLIGHT_BUCKETS]; /* stored items being delivered, by entry */
    char *stored_frame;                      /* a frame read back for a retry */
    /* With --nats and the mailbox on: JetStream holds it; S->mbx is its local cache. */
    struct th_mjs *js;
};

static struct server *S; /* route callbacks carry only an item pointer */

/* The in-flight table: a retry of an id whose first delivery is under way waits for it. */
static struct item **inflight_slot(uint64_t pos)
{
    struct item **p = &S->inflight[(pos >> 6) & (INFLIGHT_BUCKETS - 1)];
    while (*p && (*p)->pos != pos)
        p = &(*p)->wnext;
    return p;
}

/*
 * Notifications accepted but not yet answered, over every connection: past
 * this, every connection stops reading until half have been answered. With
 * the per-batch cap it bounds the memory held by answers in progress.
 */
#define MAX_OWED 100000
#define SPARE_RESP 256 /* answer records kept for reuse */

/* ---- small helpers ------------------------------------------------------ */

static uint32_t conn_index(struct conn *c)
{
    return (uint32_t)(c - S->conns);
}

static void conn_close(struct conn *c);

/*
 * Where the next recv goes and how much it may take (0: not now). Plain:
 * c->in, grown; with TLS the wrapper's ciphertext buffer (the plaintext
 * lands in c->in), paused like a full buffer once c->in holds the limit.
 */
static size_t recv_room(struct conn *c, char **dst)
{
    if (c->tls)
        return c->in_len >= RECV_MAX_BUF ? 0 : th_api_tls_rbuf(c->tls, dst);
    if (c->in_cap - c->in_len < RECV_MIN / 2 && c->in_cap < RECV_MAX_BUF) {
        size_t ncap = c->in_cap ? c->in_cap * 2 : RECV_MIN;
        char *p = realloc(c->in, ncap > RECV_MAX_BUF ? RECV_MAX_BUF : ncap);
        if (!p)
            return 0; /* retried on the next wake; the idle sweep ends a stuck one */
        c->in = p;
        c->in_cap = ncap > RECV_MAX_BUF ? RECV_MAX_BUF : ncap;
    }
    *dst = c->in + c->in_len;
    return c->in_cap - c->in_len;
}

static void submit_recv(struct conn *c)
{
    char *dst;
    size_t room = recv_room(c, &dst);
    if (!room)
        return;
    struct io_uring_sqe *sqe = th_uring_sqe(&S->ring);
    if (!sqe) { /* a ring that takes no request: end the connection rather than stall it */
        conn_close(c);
        return;
    }
    io_uring_prep_recv(sqe, c->fd, dst, room, 0);
    io_uring_sqe_set_data64(sqe, th_ud_make(TH_UD_RECV, conn_index(c), c->gen));
    c->recv_busy = 1;
}

static void submit_send(struct conn *c)
{
    if (c->send_busy || c->closing)
        return;
    struct th_buf *out = &c->out; /* TLS: the records sealed from it */
    if (c->tls && !(out = th_api_tls_wire(c->tls, &c->out))) {
        conn_close(c);
        return;
    }
    if (c->sent == c->sending.len) {
        if (out->len == 0)
            return;
        struct th_buf t = c->sending;
        c->sending = *out;
        *out = t;
        out->len = 0;
        c->sent = 0;
    }
    struct io_uring_sqe *sqe = th_uring_sqe(&S->ring);
    if (!sqe) {
        conn_close(c);
        return;
    }
    io_uring_prep_send(sqe, c->fd, c->sending.p + c->sent, c->sending.len - c->sent, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, th_ud_make(TH_UD_SEND, conn_index(c), c->gen));
    c->send_busy = 1;
}

static void conn_wake(struct conn *c);

static void resp_free(struct resp *r)
{
    S->owed -= r->nitems;
    if (S->owed_paused && S->owed < MAX_OWED / 2) {
        S->owed_paused = 0;
        for (unsigned i = 0; i < TH_API_MAX_CONNS; i++)
            if (S->conns[i].in_use && S->conns[i].paused) {
                S->conns[i].paused = 0;
                conn_wake(&S->conns[i]);
            }
    }
    for (uint32_t i = 0; i < r->nitems; i++)
        free(r->items[i].err);
    if (r->items != &r->one)
        free(r->items);
    free(r->pw);
    r->pw = NULL;
    th_buf_free(&r->body);
    if (S->nspare < SPARE_RESP) { /* the next request reuses it: no malloc per notification */
        r->next = S->spare;
        S->spare = r;
        S->nspare++;
        return;
    }
    free(r);
}

/* Free the connection's slot once the kernel holds none of its buffers. */
static void conn_try_release(struct conn *c)
{
    if (!c->closing || c->recv_busy || c->send_busy || !c->in_use)
        return;
    close(c->fd);
    free(c->in);
    th_buf_free(&c->out);
    th_buf_free(&c->sending);
    th_api_tls_free(c->tls);
    uint32_t gen = c->gen + 1, idx = conn_index(c);
    int woken = c->woken;
    struct conn *wake_next = c->wake_next;
    memset(c, 0, sizeof(*c));
    c->fd = -1;
    c->gen = gen;
    c->woken = woken; /* still linked in the wake list: run_wakes unlinks it */
    c->wake_next = wake_next;
    c->next_free = S->free_head;
    S->free_head = idx;
    S->nconns--;
}

static void conn_close(struct conn *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    shutdown(c->fd, SHUT_RDWR); /* completes an in-flight recv */
    for (struct resp *r = c->rhead, *next; r; r = next) {
        next = r->next;
        if (r->pending) {
            r->c = NULL; /* the last route callback frees it */
            r->next = NULL;
        } else {
            resp_free(r);
        }
    }
    c->rhead = c->rtail = NULL;
    c->nresp = 0;
    conn_try_release(c);
}

/* ---- answers ------------------------------------------------------------ */

static void render_item(struct th_buf *b, const struct item *it, int with_code)
{
    if (it->err)
        th_api_render_error(b, it->err, it->code, with_code);
    else
        th_api_render_outcome(b,
                              &(struct th_api_result){.status = it->code,
                                                      .user = it->user,
                                                      .ulen = it->ulen,
                                                      .id = it->id,
                                                      .idlen = it->idlen,
                                                      .connections = it->connections,
                                                      .nodes = it->nodes,
                                                      .has_last_seen = it->has_ls,
                                                      .last_seen_ns = it->ls,
                                                      .seq = it->seq,
                                                      .expires_in_s = it->expires_in_s,
                                                      .not_stored = it->js_unstored},
                              with_code);
}

/* Status line, headers and body of a complete response into c->out. */
static void write_resp(struct conn *c, struct resp *r)
{
    struct th_buf *body = &r->body;
    if (r->nitems) { /* rendered in the reused buffer, not the record's own */
        body = &S->answer;
        body->len = 0;
        body->oom = 0;
    }
    if (r->nitems && !r->batch) {
        r->status = r->items[0].code;
        render_item(body, &r->items[0], 0);
    } else if (r->batch) {
        r->status = 200;
        th_buf_puts(body, "{\"results\":[");
        for (uint32_t i = 0; i < r->nitems; i++) {
            if (i)
                th_buf_puts(body, ",");
            render_item(body, &r->items[i], 1);
        }
        th_buf_puts(body, "]}");
    }
    if (body->oom) {
        r->status = 500;
        r->close_after = 1;
        body->len = 0;
    }
    /* Pieces, not printf: this runs once per answer. */
    th_buf_puts(&c->out, "HTTP/1.1 ");
    th_buf_u64(&c->out, (uint64_t)r->status);
    th_buf_puts(&c->out, " ");
    th_buf_puts(&c->out, th_http_reason(r->status));
    th_buf_puts(&c->out, "\r\nContent-Type: ");
    th_buf_puts(&c->out, r->ctype ? r->ctype : "application/json");
    th_buf_puts(&c->out, "\r\nContent-Length: ");
    th_buf_u64(&c->out, body->len + 1);
    th_buf_puts(&c->out, r->close_after ? "\r\nConnection: close\r\n\r\n"
                         : r->keep10    ? "\r\nConnection: keep-alive\r\n\r\n"
                                        : "\r\n\r\n");
    th_buf_put(&c->out, body->p ? body->p : "", body->len);
    th_buf_put(&c->out, "\n", 1);
    if (body == &S->answer && body->cap > 4 * RECV_MIN)
        th_buf_free(body); /* a big batch's answer: give its buffer back */
}

static void conn_wake(struct conn *c)
{
    if (!c->woken) {
        c->woken = 1;
        c->wake_next = S->wake;
        S->wake = c;
    }
}

/* Write every answer at the head of the queue that is complete, in order. */
static void conn_emit(struct conn *c)
{
    while (c->rhead && c->rhead->pending == 0) {
        struct resp *r = c->rhead;
        c->rhead = r->next;
        if (!c->rhead)
            c->rtail = NULL;
        c->nresp--;
        for (uint32_t i = 0; i < r->nitems; i++)
            TH_STAGE((uintptr_t)&r->items[i], TH_ST_N_ANSWER, th_mono_ns());
        write_resp(c, r);
        if (r->close_after)
            c->stop_read = 1;
        resp_free(r);
    }
    if (c->out.oom) {
        conn_close(c);
        return;
    }
    submit_send(c);
    if (c->paused && c->nresp < TH_API_MAX_PIPELINE / 2) {
        if (S->owed >= MAX_OWED) {
            S->owed_paused = 1; /* resp_free wakes it once enough is answered */
        } else {
            c->paused = 0;
            conn_wake(c);
        }
    }
}

static struct resp *resp_new(struct conn *c, const struct th_api_req *req)
{
    struct resp *r = S->spare;
    if (r) {
        S->spare = r->next;
        S->nspare--;
        memset(r, 0, sizeof(*r));
    } else if (!(r = calloc(1, sizeof(*r)))) {
        return NULL;
    }
    r->c = c;
    r->close_after = req ? !req->keep_alive : 1;
    r->keep10 = req && req->keep_alive && req->http.minor_version == 0;
    if (c->rtail)
        c->rtail->next = r;
    else
        c->rhead = r;
    c->rtail = r;
    c->nresp++;
    return r;
}

static void resp_error(struct resp *r, int status, const char *msg)
{
    r->status = status;
    th_api_render_error(&r->body, msg, status, 0);
}

/* ---- notifications ------------------------------------------------------ */

/* One part of r's answer is in: the last one lets it go (or frees it, its connection gone). */
static void resp_settle(struct resp *r)
{
    if (--r->pending)
        return;
    if (!r->c)
        resp_free(r);
    else if (r == r->c->rhead)
        conn_emit(r->c);
}

static void item_settle(struct item *it)
{
    resp_settle(it->r);
}

/*
 * A stored notification's result goes into its entry, so a retry of its id
 * gets the same answer; a 503 stays "unknown" there (a retry delivers the
 * stored frame again, same seq). Waiting retries get this result too.
 */
static void item_outcome(struct item *it)
{
    struct item **p = inflight_slot(it->pos);
    if (*p == it)
        *p = it->wnext;
    if (it->code == 404) {
        it->code = TH_OUT_STORED;
        atomic_fetch_add_explicit(&S->mbx.hdr->counters.answered_stored, 1, memory_order_relaxed);
    }
    if (it->code == 200 || it->code == TH_OUT_STORED)
        th_mbx_set_outcome(&S->mbx, it->pos, (unsigned)it->code, it->connections);
    for (struct item *w = it->waiters, *next; w; w = next) {
        next = w->wnext;
        w->code = it->code;
        w->connections = it->connections;
        w->nodes = it->nodes;
        w->has_ls = it->has_ls;
        w->ls = it->ls;
        item_settle(w);
    }
    it->waiters = NULL;
}

/* Add the outcomes counted since the last call to the segment's counters. */
static void counters_flush(void)
{
    struct th_counters_sh *k = &S->reg->hdr->counters;
    if (S->n_delivered)
        atomic_fetch_add_explicit(&k->notify_delivered, S->n_delivered, memory_order_relaxed);
    if (S->n_not_connected)
        atomic_fetch_add_explicit(&k->notify_not_connected, S->n_not_connected,
                                  memory_order_relaxed);
    if (S->n_unavailable)
        atomic_fetch_add_explicit(&k->notify_unavailable, S->n_unavailable, memory_order_relaxed);
    S->n_delivered = S->n_not_connected = S->n_unavailable = 0;
}

static void item_done(void *arg, const struct th_route_result *res)
{
    struct item *it = arg;
    int st = res->status;
    if (st == 404 && it->js_unstored)
        st = 503; /* nobody has it and JetStream did not store it: never 202, never a false 404 */
    it->code = st;
    it->connections = res->confirmed;
    it->nodes = res->nodes;
    it->has_ls = res->has_last_seen;
    it->ls = res->last_seen_ns;
    if (st == 200) {
        S->n_delivered++;
        th_hist_add(&S->stats.confirm, (res->mono_ns ? res->mono_ns : th_mono_ns()) - it->t0);
    } else if (st == 404) {
        if (!it->pos && !it->js_stored)
            S->n_not_connected++;
    } else {
        S->n_unavailable++;
    }
    if (it->pos)
        item_outcome(it);
    else if (it->js_stored && st == 404)
        it->code = TH_OUT_STORED; /* in the stream; this node's cache did not have it in time */
    item_settle(it);
}

static void item_fail(struct item *it, int code, const char *msg)
{
    it->code = code;
    it->err = strdup(msg);
    if (!it->err)
        it->code = 500;
    atomic_fetch_add_explicit(&S->reg->hdr->counters.notify_bad_request, 1, memory_order_relaxed);
}

/* 32 hex digits: a random per-process prefix and a counter, unique across restarts. */
static void make_id(char out[32])
{
    static const char hex[] = "0123456789abcdef";
    uint64_t parts[2] = {S->id_prefix, ++S->id_counter};
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < 16; i++)
            out[k * 16 + i] = hex[(parts[k] >> (60 - 4 * i)) & 15];
}

/* Hand the frame to the route (it copies it). it->r->pending covers it. */
static void item_deliver(struct item *it, const char *frame, size_t flen, unsigned ho_flags)
{
    it->r->pending++;
    it->t0 = S->batch_mono ? S->batch_mono : th_mono_ns();
    if (it->pos) {
        struct item **p = inflight_slot(it->pos);
        if (!*p) { /* (a second in-flight copy of one entry is not registered) */
            it->wnext = NULL;
            *p = it;
        }
    }
    int rc = S->route->ops->deliver(S->route, it->user, it->ulen, frame, flen, it->seq, ho_flags,
                                    item_done, it);
    if (rc < 0) {
        struct th_route_result res = {.status = 503};
        th_warn("[Notifier] Delivery to user %.*s refused: %s", (int)it->ulen, it->user,
                strerror(-rc));
        item_done(it, &res);
    }
}

/*
 * The same id for the same user is still in the mailbox: answer with the
 * first result (nothing stored or delivered again), wait for it if its
 * delivery is under way here, or, when a killed notifier never recorded
 * it, deliver the stored frame again (same seq: clients drop what they
 * had). Returns 1 when it took care of the item.
 */
static int item_retry(struct item *it, uint64_t now)
{
    struct th_mbx_hit h;
    if (th_mbx_find_id(&S->mbx, it->user, it->ulen, it->id, it->idlen, now, &h) != 1)
        return 0;
    atomic_fetch_add_explicit(&S->mbx.hdr->counters.duplicates, 1, memory_order_relaxed);
    it->seq = h.seq;
    it->pos = h.pos;
    it->expires_in_s = (uint32_t)((h.expires_ns - now) / TH_NS_PER_S);
    struct item *first = h.mine ? *inflight_slot(h.pos) : NULL;
    if (h.status == 200 || h.status == TH_OUT_STORED) {
        it->code = (int)h.status;
        it->connections = h.connections;
        if (h.status == TH_OUT_STORED)
            it->has_ls = th_reg_last_seen(S->reg, it->user, it->ulen, &it->ls) == 1;
        it->pos = 0; /* answered: no outcome to record */
        it->r->pending++;
        item_settle(it);
        return 1;
    }
    if (first) {
        it->r->pending++;
        it->wnext = first->waiters;
        first->waiters = it;
        return 1;
    }
    if (!S->stored_frame && !(S->stored_frame = malloc(TH_MBX_MAX_FRAME)))
        return 0;
    ssize_t n = th_mbx_read_frame(&S->mbx, h.pos, S->stored_frame, TH_MBX_MAX_FRAME);
    if (n < 0)
        return 0;                             /* reclaimed meanwhile: a new notification then */
    th_mbx_set_outcome(&S->mbx, h.pos, 0, 0); /* under way here now */
    item_deliver(it, S->stored_frame, (size_t)n, 0);
    return 1;
}

/*
 * The JetStream mailbox answered a store (notifier/mailbox_js.h): deliver
 * with the stream's seq; a repeat of an id answers like a retry on one
 * node; not stored: delivered all the same, answered "stored":false (503
 * when nobody got it). Then the hold js_start took is released.
 */
static void js_done(void *arg, const struct th_mjs_result *res)
{
    struct item *it = arg;
    if (res->duplicate) {
        if (!item_retry(it, th_now_ns())) { /* gone from the cache meanwhile: it was stored */
            it->seq = res->seq;
            it->code = TH_OUT_STORED;
            it->expires_in_s = 0;
            it->r->pending++;
            item_settle(it);
        }
    } else if (res->stored) {
        it->seq = res->seq;
        it->pos = res->pos;
        it->js_stored = 1;
        item_deliver(it, res->frame, res->flen, 0);
    } else {
        it->js_unstored = 1;
        item_deliver(it, res->frame, res->flen, TH_HO_F_NOT_STORED);
    }
    item_settle(it);
}

/* Where ,"seq":N,"epoch":"E" goes in a frame rendered without them: after the id. */
static size_t frame_seq_at(const struct th_notify *n, const char *id, size_t idlen)
{
    struct th_buf b = {0};
    th_buf_puts(&b, "{\"type\":");
    th_buf_json_str(&b, n->type, n->tlen);
    th_buf_puts(&b, ",\"id\":");
    th_buf_json_str(&b, id, idlen);
    size_t at = b.oom || b.len > S->frame.len || memcmp(b.p, S->frame.p, b.len) ? 0 : b.len;
    th_buf_free(&b);
    return at;
}

/*
 * With JetStream: the frame without seq/epoch goes to the stream; the seq
 * comes back with the ack (js_done). ttl 0 is not stored anywhere and
 * carries no seq.
 */
static void js_start(struct item *it, const struct th_notify *n, const char *id, size_t idlen,
                     uint32_t ttl, uint64_t now)
{
    struct th_buf *f = &S->frame;
    f->len = 0;
    f->oom = 0;
    th_api_render_frame_into(f, n, id, idlen, now);
    size_t at = f->oom ? 0 : frame_seq_at(n, id, idlen);
    if (f->oom || f->len > TH_API_MAX_FRAME + 64 || !at) {
        char msg[64];
        snprintf(msg, sizeof(msg), "notification frame over %u bytes", TH_API_MAX_FRAME);
        item_fail(it, f->len > TH_API_MAX_FRAME + 64 ? 413 : 500,
                  f->len > TH_API_MAX_FRAME + 64 ? msg : "out of memory");
        if (f->cap > 4 * TH_API_MAX_FRAME)
            th_buf_free(f);
        return;
    }
    if (!ttl) {
        item_deliver(it, f->p, f->len, TH_HO_F_NOT_STORED);
        return;
    }
    it->expires_in_s = ttl;
    it->r->pending++; /* held until js_done */
    int rc = th_mjs_store(S->js, it->user, it->ulen, id, idlen, ttl, f->p, f->len, at, js_done, it);
    if (rc < 0) {
        it->js_unstored = 1;
        item_deliver(it, f->p, f->len, TH_HO_F_NOT_STORED);
        item_settle(it);
    }
}

/*
 * Store it in the mailbox (seq first, frame rendered with it), then deliver.
 * now: the request's wall clock (a batch's items share one reading).
 */
static void item_start(struct item *it, const struct th_notify *n0, uint64_t now)
{
    char idbuf[32];
    struct th_notify n = *n0;
    const char *id = n.id;
    size_t idlen = n.idlen;
    th_info("[Notifier] Attempting to send notification to user %.*s%s", (int)n.ulen, n.user,
            th_route_where(S->cfg));
    if (!id) {
        make_id(idbuf);
        id = idbuf;
        idlen = sizeof(idbuf);
    }
    memcpy(it->user, n.user, n.ulen);
    it->ulen = (uint8_t)n.ulen;
    memcpy(it->id, id, idlen);
    it->idlen = (uint8_t)idlen;
    uint32_t ttl = S->cfg->mailbox_ttl_s;
    if (n.has_ttl && n.ttl_s < ttl)
        ttl = n.ttl_s;
    struct th_mbx_ticket t = {0};
    if (S->mbx_on) {
        if (n0->id && item_retry(it, now))
            return;
        if (S->js) {
            js_start(it, &n, id, idlen, ttl, now);
            return;
        }
        if (th_mbx_prepare(&S->mbx, n.user, n.ulen, now, &t) < 0) {
            item_fail(it, 500, "mailbox: cannot assign a seq");
            return;
        }
        n.seq = t.seq;
        n.epoch = S->epoch;
    }
    struct th_buf *f = &S->frame;
    f->len = 0;
    f->oom = 0;
    th_api_render_frame_into(f, &n, id, idlen, now);
    if (f->oom || f->len > TH_API_MAX_FRAME + 64) {
        char msg[64];
        snprintf(msg, sizeof(msg), "notification frame over %u bytes", TH_API_MAX_FRAME);
        item_fail(it, f->oom ? 500 : 413, f->oom ? "out of memory" : msg);
        if (f->cap > 4 * TH_API_MAX_FRAME)
            th_buf_free(f);
        return;
    }
    if (S->mbx_on) {
        int rc = th_mbx_commit(&S->mbx, &t, f->p, f->len, id, idlen, (uint64_t)ttl * TH_NS_PER_S,
                               now, &it->pos);
        if (rc < 0) {
            th_error("[Notifier] mailbox: storing a notification for user %.*s: %s", (int)n.ulen,
                     n.user, strerror(-rc));
            item_fail(it, 500, "mailbox: cannot store the notification");
            return;
        }
        it->seq = t.seq;
        it->expires_in_s = ttl;
    }
    item_deliver(it, f->p, f->len, S->mbx_on && !it->pos ? TH_HO_F_NOT_STORED : 0);
}

/*
 * A single notification's hint, given as soon as its user id is known: the
 * user's index group (the route's lookup, shm/registry.h) and mailbox record
 * (the store) are first read only after the log line, and the lookup after
 * the store and the render too, microseconds later. Each was a cache and
 * TLB miss (~250 ns on this VM with 4 KiB pages) waited for at its read;
 * started here, they arrive while that work runs. Hints only.
 */
static void prefetch_one(const struct th_notify *n)
{
    uint32_t h = th_user_hash(n->user, n->ulen);
    th_reg_prefetch_user(S->reg, h, 0);
    if (S->mbx_on && !S->js)
        th_mbx_prefetch(&S->mbx, h, 0);
}

static void handle_notify(struct resp *r, const struct th_api_req *req)
{
    char err[256];
    json_t *root;
    struct th_notify n;
    r->items = &r->one;
    r->nitems = 1;
    S->owed++;
    r->items[0].r = r;
    root = NULL;
    int fast = th_api_fast_notify(req->body, req->body_len, &S->fast, &n);
    if (fast < 0) {
        item_fail(&r->items[0], 500, "out of memory");
        return;
    }
    if (!fast && th_api_parse_notify(req->body, req->body_len, &root, &n, err, sizeof(err)) < 0) {
        item_fail(&r->items[0], 400, err);
        return;
    }
    TH_STAGE((uintptr_t)&r->items[0], TH_ST_N_RECV, r->c->last_active);
    TH_STAGE((uintptr_t)&r->items[0], TH_ST_N_PARSED, th_mono_ns());
    TH_STAGE(th_stage_tns(req->body, req->body_len), TH_ST_H_WAKE, th_stage_wake_ns);
    TH_STAGE(th_stage_tns(req->body, req->body_len), TH_ST_H_RECV, r->c->last_active);
    prefetch_one(&n);
    r->pending++; /* hold: a synchronous answer must not emit mid-setup */
    item_start(&r->items[0], &n, th_now_ns());
    json_decref(root);
    r->pending--;
    if (S->fast.cap > 4 * TH_API_MAX_FRAME)
        th_buf_free(&S->fast); /* a big body's buffer goes back */
}

/*
 * A batch's items are started back to back with one clock reading (their
 * frames' timestamp, the confirmation latency's start), and the memory each
 * item will touch is asked for ahead of it, so the cache and TLB misses of
 * several users overlap instead of queueing (each was a few hundred ns,
 * most of a store and of a lookup): the registry index line BATCH_FAR items
 * ahead, then, once that line is in, the slots it names and the user's
 * mailbox record BATCH_NEAR items ahead, then the ring slot and the oldest
 * entry a full ring's store evicts (shm/registry.h th_reg_prefetch_user,
 * shm/mailbox.h th_mbx_prefetch). Hints only.
 */
#define BATCH_FAR 8
#define BATCH_NEAR 4
#define BATCH_RING 2    /* the mailbox ring slot an eviction reads; its entry 1 ahead */
#define BATCH_HASHES 16 /* ring of the hashes in flight: > BATCH_FAR */

static void batch_begin(void)
{
    S->batch_mono = th_mono_ns();
}

static void prefetch_far(const struct th_notify *items, size_t j, uint32_t *hash)
{
    hash[j % BATCH_HASHES] = th_user_hash(items[j].user, items[j].ulen);
    th_reg_prefetch_user(S->reg, hash[j % BATCH_HASHES], 0);
}

/* The pipeline's step before item i of items[0..n) starts. */
static void batch_prefetch(const struct th_notify *items, size_t n, size_t i, uint32_t *hash)
{
    if (i == 0)
        for (size_t j = 0; j < BATCH_FAR && j < n; j++)
            prefetch_far(items, j, hash);
    if (i + BATCH_FAR < n)
        prefetch_far(items, i + BATCH_FAR, hash);
    if (i + BATCH_NEAR < n) {
        uint32_t h = hash[(i + BATCH_NEAR) % BATCH_HASHES];
        th_reg_prefetch_user(S->reg, h, 1);
        if (S->mbx_on && !S->js)
            th_mbx_prefetch(&S->mbx, h, 0);
    }
    if (S->mbx_on && !S->js && i + BATCH_RING < n)
        th_mbx_prefetch(&S->mbx, hash[(i + BATCH_RING) % BATCH_HASHES], 1);
    if (S->mbx_on && !S->js && i + 1 < n)
        th_mbx_prefetch(&S->mbx, hash[(i + 1) % BATCH_HASHES], 2);
}

/* A batch the fast path takes (all or nothing): 1 when started, 0 when jansson must parse it. */
static int batch_fast(struct resp *r, const struct th_api_req *req)
{
    size_t n;
    if (!S->fast_items &&
        !(S->fast_items = malloc(TH_API_MAX_BATCH_ITEMS * sizeof(*S->fast_items))))
        return 0;
    if (th_api_fast_batch(req->body, req->body_len, &S->fast, S->fast_items, TH_API_MAX_BATCH_ITEMS,
                          &n) != 1)
        return 0;
    r->items = calloc(n ? n : 1, sizeof(*r->items));
    if (!r->items)
        return 0;
    r->batch = 1;
    r->nitems = (uint32_t)n;
    S->owed += n;
    r->pending++;
    batch_begin();
    uint64_t now = th_now_ns();
    uint32_t hash[BATCH_HASHES];
    for (size_t i = 0; i < n; i++) {
        r->items[i].r = r;
        batch_prefetch(S->fast_items, n, i, hash);
        item_start(&r->items[i], &S->fast_items[i], now);
    }
    S->batch_mono = 0;
    r->pending--;
    if (S->fast.cap > 4 * TH_API_MAX_FRAME)
        th_buf_free(&S->fast);
    return 1;
}

static void handle_batch(struct resp *r, const struct th_api_req *req)
{
    if (batch_fast(r, req))
        return;
    json_error_t je;
    json_t *root = json_loadb(req->body, req->body_len, 0, &je);
    r->batch = 1;
    if (!root || !json_is_array(root)) {
        char err[256];
        snprintf(err, sizeof(err),
                 root ? "batch body must be a JSON array" : "invalid JSON: %s (at byte %d)",
                 je.text, je.position);
        r->batch = 0;
        resp_error(r, 400, err);
        atomic_fetch_add_explicit(&S->reg->hdr->counters.notify_bad_request, 1,
                                  memory_order_relaxed);
        json_decref(root);
        return;
    }
    size_t n = json_array_size(root);
    if (n > TH_API_MAX_BATCH_ITEMS) {
        r->batch = 0;
        char msg[64];
        snprintf(msg, sizeof(msg), "batch over %u notifications", TH_API_MAX_BATCH_ITEMS);
        resp_error(r, 413, msg);
        atomic_fetch_add_explicit(&S->reg->hdr->counters.notify_bad_request, 1,
                                  memory_order_relaxed);
        json_decref(root);
        return;
    }
    r->items = calloc(n ? n : 1, sizeof(*r->items));
    if (!r->items) {
        r->batch = 0;
        resp_error(r, 500, "out of memory");
        json_decref(root);
        return;
    }
    r->nitems = (uint32_t)n;
    S->owed += n;
    r->pending++;
    batch_begin();
    uint64_t now = th_now_ns();
    for (size_t i = 0; i < n; i++) {
        struct th_notify nt;
        char err[256];
        r->items[i].r = r;
        if (th_api_check_notify(json_array_get(root, i), &nt, err, sizeof(err)) < 0)
            item_fail(&r->items[i], 400, err);
        else
            item_start(&r->items[i], &nt, now);
    }
    S->batch_mono = 0;
    json_decref(root);
    r->pending--;
}

/* ---- other endpoints ---------------------------------------------------- */

/* One connection of the presence answer; node NULL on one node. */
static void presence_conn(struct th_buf *b, int first, const char *node, unsigned worker,
                          uint64_t connected_at, uint64_t last_seen)
{
    th_buf_puts(b, first ? "{" : ",{");
    if (node) {
        th_buf_puts(b, "\"node\":");
        th_buf_json_str(b, node, strlen(node));
        th_buf_puts(b, ",");
    }
    th_buf_printf(b, "\"worker\":%u,\"connected_at\":", worker);
    th_buf_json_time(b, 1, connected_at);
    th_buf_puts(b, ",\"last_seen\":");
    th_buf_json_time(b, 1, last_seen);
    th_buf_puts(b, "}");
}

/*
 * The presence body: this node's connections (read now) and, with --nats,
 * what the other nodes said (rp; NULL on one node). last_seen is the latest
 * anywhere; "partial":true when a live node did not answer in time.
 */
static void render_presence(struct th_buf *b, const char *user, size_t ulen,
                            const struct th_route_presence *rp)
{
    int n = th_reg_find_user(S->reg, user, ulen, S->infos, PRESENCE_MAX_CONNS);
    uint64_t ls = 0;
    int has_ls = 0;
    for (int i = 0; i < n; i++)
        if (!has_ls || S->infos[i].last_seen > ls)
            ls = S->infos[i].last_seen, has_ls = 1;
    if (n <= 0)
        has_ls = th_reg_last_seen(S->reg, user, ulen, &ls) == 1;
    if (rp && rp->has_last_seen && (!has_ls || rp->last_seen_ns > ls))
        ls = rp->last_seen_ns, has_ls = 1;
    th_buf_puts(b, "{\"user_id\":");
    th_buf_json_str(b, user, ulen);
    th_buf_printf(
        b, ",\"connected\":%s,\"last_seen\":", n > 0 || (rp && rp->n > 0) ? "true" : "false");
    th_buf_json_time(b, has_ls, ls);
    th_buf_puts(b, ",\"connections\":[");
    const char *here = rp ? S->cfg->node : NULL;
    for (int i = 0; i < n; i++)
        presence_conn(b, i == 0, here, S->infos[i].worker, S->infos[i].connected_at,
                      S->infos[i].last_seen);
    for (unsigned i = 0; rp && i < rp->n; i++)
        presence_conn(b, n <= 0 && i == 0, rp->conns[i].node, rp->conns[i].worker,
                      rp->conns[i].connected_at, rp->conns[i].last_seen);
    th_buf_puts(b, "]");
    if (rp && rp->partial)
        th_buf_puts(b, ",\"partial\":true");
    uint32_t pending;
    uint64_t last;
    if (S->mbx_on && th_mbx_user_info(&S->mbx, user, ulen, th_now_ns(), &pending, &last) == 0)
        th_buf_printf(b, ",\"mailbox\":{\"pending\":%u,\"seq\":%llu}", pending,
                      (unsigned long long)last);
    th_buf_puts(b, "}");
}

/* The other nodes answered (or the timeout passed): render and let the answer go. */
static void presence_done(void *arg, const struct th_route_presence *rp)
{
    struct presence_wait *pw = arg;
    struct resp *r = pw->r;
    r->status = 200;
    render_presence(&r->body, pw->user, pw->ulen, rp);
    r->pw = NULL;
    free(pw);
    resp_settle(r);
}

static void handle_presence(struct resp *r, const struct th_api_req *req)
{
    char user[TH_USER_MAX];
    int ulen = th_api_pct_decode(req->presence_user.p, req->presence_user.n, user, sizeof(user));
    if (ulen < 0 || !th_userid_valid(user, (size_t)ulen)) {
        resp_error(r, 400, "user id must be " TH_USERID_RULE_TEXT);
        return;
    }
    r->status = 200;
    if (!S->route->ops->presence || !(r->pw = calloc(1, sizeof(*r->pw)))) {
        struct th_route_presence away = {.partial = 1};
        render_presence(&r->body, user, (size_t)ulen, S->route->ops->presence ? &away : NULL);
        return;
    }
    r->pw->r = r;
    r->pw->ulen = (size_t)ulen;
    memcpy(r->pw->user, user, (size_t)ulen);
    r->pending += 2; /* one held: an answer given at once must not emit mid-setup */
    if (S->route->ops->presence(S->route, user, (size_t)ulen, presence_done, r->pw) < 0) {
        struct th_route_presence away = {.partial = 1};
        presence_done(r->pw, &away);
    }
    r->pending--;
}

/*
 * With --api-key-file, /v1/... needs "Authorization: Bearer <key>". Returns 1
 * when the request may go on; else answers 401 (nothing delivered or
 * stored), counts it and logs why without the token.
 */
static int authorized(struct resp *r, const struct th_api_req *req)
{
    if (!S->cfg->api_key_file[0] || req->route == TH_API_HEALTHZ || req->route == TH_API_METRICS)
        return 1;
    const struct th_str *h = th_http_header(&req->http, "authorization");
    const char *tok;
    size_t tlen;
    int given = h && th_apikey_bearer(h->p, h->n, &tok, &tlen);
    if (given && th_apikeys_match(&S->keys, tok, tlen))
        return 1;
    atomic_fetch_add_explicit(&S->reg->hdr->counters.api_unauthorized, 1, memory_order_relaxed);
    th_info("[Notifier] API request refused: %s API key (%.*s)", given ? "wrong" : "no",
            (int)(req->http.path.n > 80 ? 80 : req->http.path.n), req->http.path.p);
    resp_error(r, 401, given ? "invalid API key" : "missing API key (Authorization: Bearer <key>)");
    return 0;
}

/* SIGHUP: take the key file's new contents, or keep the old keys if it is bad. */
static void reload_keys(void)
{
    struct th_apikeys k;
    char err[320];
    if (!S->cfg->api_key_file[0])
        return;
    int rc = th_apikeys_load(S->cfg->api_key_file, &k, err, sizeof(err));
    if (rc < 0) {
        th_error("[Notifier] API keys not reloaded, keeping the %zu loaded: %s", S->keys.n, err);
        return;
    }
    th_apikeys_free(&S->keys);
    S->keys = k;
    th_info("[Notifier] API keys reloaded: %d key(s) from %s", rc, S->cfg->api_key_file);
}

static void render_js_metrics(struct th_buf *b)
{
    struct th_mjs_stats st;
    th_mjs_stats(S->js, &st);
    th_buf_printf(b,
                  "# TYPE tether_jetstream_up gauge\ntether_jetstream_up %d\n"
                  "# TYPE tether_jetstream_stored_total counter\ntether_jetstream_stored_total "
                  "%llu\n# TYPE tether_jetstream_store_failed_total counter\n"
                  "tether_jetstream_store_failed_total %llu\n"
                  "# TYPE tether_jetstream_duplicates_total counter\n"
                  "tether_jetstream_duplicates_total %llu\n"
                  "# TYPE tether_jetstream_mirrored_total counter\ntether_jetstream_mirrored_total "
                  "%llu\n# TYPE tether_jetstream_mirror_seq gauge\ntether_jetstream_mirror_seq "
                  "%llu\n# TYPE tether_jetstream_republished_total counter\n"
                  "tether_jetstream_republished_total %llu\n",
                  st.up, (unsigned long long)st.stored, (unsigned long long)st.failed,
                  (unsigned long long)st.dups, (unsigned long long)st.mirrored,
                  (unsigned long long)st.mirror_at, (unsigned long long)st.retried);
}

static void handle_request(struct conn *c, const struct th_api_req *req)
{
    struct resp *r = resp_new(c, req);
    if (!r) {
        conn_close(c);
        return;
    }
    if (!req->status && c->tls && th_api_tls_refuses(c->tls, req->route)) {
        resp_error(r, 403, "TLS required: use https://");
        return;
    }
    if (!req->status && !authorized(r, req))
        return;
    if (req->status) {
        resp_error(r, req->status, req->status == 404 ? "no such endpoint" : "method not allowed");
        return;
    }
    switch (req->route) {
    case TH_API_NOTIFY:
        handle_notify(r, req);
        break;
    case TH_API_BATCH:
        handle_batch(r, req);
        break;
    case TH_API_PRESENCE:
        handle_presence(r, req);
        break;
    case TH_API_HEALTHZ:
        r->status =
            th_health_render(&r->body, S->reg, S->cfg->hung_after_s,
                             S->route->ops->broker_up ? S->route->ops->broker_up(S->route) : -1);
        break;
    case TH_API_METRICS:
        r->status = 200;
        r->ctype = "text/plain; version=0.0.4";
        S->stats.api_conns = S->nconns;
        S->stats.owed = S->owed;
        S->stats.stored = S->mbx_on ? atomic_load(&S->mbx.hdr->counters.answered_stored) : 0;
        counters_flush();
        th_metrics_render(&r->body, S->reg, &S->stats);
        th_metrics_render_mailbox(&r->body, S->mbx_on ? &S->mbx : NULL);
        if (S->js)
            render_js_metrics(&r->body);
        if (S->route->ops->render_metrics)
            S->route->ops->render_metrics(S->route, &r->body);
        break;
    }
}

/*
 * curl and others send "Expect: 100-continue" with larger bodies and wait
 * (1 s for curl) before sending them. Once the head is accepted, say go on,
 * unless earlier answers are still owed (a 100 must not overtake them).
 */
static void maybe_continue(struct conn *c, const struct th_api_req *req)
{
    const struct th_str *e;
    if (!req->head_len || c->continued || c->rhead || req->http.minor_version < 1 ||
        !(e = th_http_header(&req->http, "expect")) || !th_str_ieq(e, "100-continue"))
        return;
    c->continued = 1;
    th_buf_puts(&c->out, "HTTP/1.1 100 Continue\r\n\r\n");
    submit_send(c);
}

/* May this connection take another request now (answers owed are bounded)? */
static int may_take(struct conn *c)
{
    if (c->nresp >= TH_API_MAX_PIPELINE || S->owed >= MAX_OWED) {
        c->paused = 1;
        if (S->owed >= MAX_OWED && !S->owed_paused)
            th_debug("[Notifier] %llu notifications owed an answer: reading paused",
                     (unsigned long long)S->owed);
        S->owed_paused |= S->owed >= MAX_OWED;
        return 0;
    }
    return 1;
}

/* Frame and dispatch every complete request in the input buffer. */
static void conn_parse(struct conn *c)
{
    size_t off = 0;
    while (!c->closing && !c->stop_read && off < c->in_len && may_take(c)) {
        struct th_api_req req;
        const char *reason = NULL;
        memset(&req, 0, sizeof(req));
        int rc = th_api_frame(c->in + off, c->in_len - off, &req, &reason);
        if (rc == TH_API_PARTIAL) {
            maybe_continue(c, &req);
            break;
        }
        c->continued = 0;
        if (rc < 0) {
            struct resp *r = resp_new(c, NULL);
            if (r)
                resp_error(r, -rc, reason);
            atomic_fetch_add_explicit(&S->reg->hdr->counters.notify_bad_request, 1,
                                      memory_order_relaxed);
            c->stop_read = 1;
            off = c->in_len;
            break;
        }
        handle_request(c, &req);
        off += (size_t)rc;
        if (!req.keep_alive)
            c->stop_read = 1; /* answer this one last, then close */
    }
    if (c->closing)
        return;
    if (off) {
        memmove(c->in, c->in + off, c->in_len - off);
        c->in_len -= off;
    }
    if (c->in_len == 0 && c->in_cap > 4 * RECV_MIN) {
        free(c->in); /* a big body is gone: give its buffer back */
        c->in = NULL;
        c->in_cap = 0;
    }
    conn_emit(c);
    if (!c->closing && !c->stop_read && !c->eof && !c->recv_busy && !c->paused)
        submit_recv(c);
}

/* ---- completions -------------------------------------------------------- */

static struct conn *conn_of(uint64_t ud)
{
    uint32_t i = th_ud_idx(ud);
    if (i >= TH_API_MAX_CONNS || !S->conns[i].in_use || S->conns[i].gen != th_ud_gen(ud))
        return NULL;
    return &S->conns[i];
}

#define LINGER_NS (2 * TH_NS_PER_S)

/*
 * Everything answered and sent on a connection that is finishing: close it.
 * When we chose to close (the peer may still be sending, e.g. the rest of a
 * 413 body), half-close and drain for a moment first: closing with unread
 * bytes would reset the connection and could destroy the answer in flight.
 */
static void conn_maybe_finish(struct conn *c)
{
    if (!(c->eof || c->stop_read) || c->closing || c->linger_until || c->rhead || c->send_busy ||
        c->out.len || c->sent != c->sending.len)
        return;
    if (c->eof) {
        conn_close(c);
        return;
    }
    if (c->tls && th_api_tls_close(c->tls)) { /* our close_notify goes before the FIN */
        submit_send(c);
        if (c->send_busy)
            return; /* on_send comes back here */
    }
    shutdown(c->fd, SHUT_WR);
    c->linger_until = th_mono_ns() + LINGER_NS;
    c->in_len = 0;
    if (!c->recv_busy)
        submit_recv(c);
}

static void on_recv(struct conn *c, int res)
{
    c->recv_busy = 0;
    if (c->closing) {
        conn_try_release(c);
        return;
    }
    if (res < 0 || (res == 0 && c->linger_until)) {
        conn_close(c);
        return;
    }
    if (c->linger_until) { /* discard what the peer still sends */
        submit_recv(c);
        return;
    }
    if (res == 0) {
        c->eof = 1; /* peer done sending: answer what was asked, then close */
        conn_maybe_finish(c);
        return;
    }
    c->last_active = th_mono_ns();
    if (!c->tls) {
        c->in_len += (size_t)res;
    } else {
        int t = th_api_tls_input(c->tls, (size_t)res, &c->in, &c->in_len, &c->in_cap, RECV_MAX_BUF);
        if (t == TH_API_TLS_FATAL) { /* send the alert (if any), then close */
            c->stop_read = 1;
            submit_send(c);
            conn_maybe_finish(c);
            return;
        }
        c->eof = t == TH_API_TLS_EOF;
    }
    conn_parse(c);
    conn_maybe_finish(c);
}

static void on_send(struct conn *c, int res)
{
    c->send_busy = 0;
    if (c->closing) {
        conn_try_release(c);
        return;
    }
    if (res <= 0) {
        conn_close(c);
        return;
    }
    c->sent += (size_t)res;
    c->last_active = th_mono_ns();
    if (c->sent == c->sending.len) {
        c->sending.len = c->sent = 0;
        if (c->sending.cap > 4 * RECV_MIN)
            th_buf_free(&c->sending);
    }
    submit_send(c);
    conn_maybe_finish(c);
}

static void submit_accept(void)
{
    struct io_uring_sqe *sqe = th_uring_sqe(&S->ring);
    if (!sqe) {
        S->accept_paused = 1; /* the tick tries again */
        return;
    }
    io_uring_prep_multishot_accept(sqe, S->api_fd, NULL, NULL, SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, th_ud_make(TH_UD_ACCEPT, 0, 0));
}

static void on_accept(int res, unsigned flags)
{
    if (res == -EMFILE || res == -ENFILE || res == -ENOMEM || res == -ENOBUFS) {
        /* Out of descriptors or memory: retrying at once would spin; the tick re-arms. */
        th_warn("[Notifier] accept: %s; retrying in a second", strerror(-res));
        S->accept_paused = !(flags & IORING_CQE_F_MORE);
        return;
    }
    if (!(flags & IORING_CQE_F_MORE))
        submit_accept();
    if (res < 0) {
        if (res != -ECANCELED)
            th_warn("[Notifier] accept: %s", strerror(-res));
        return;
    }
    struct th_api_tls *tls = NULL;
    if (S->free_head == NO_CONN || (th_api_tls_on() && !(tls = th_api_tls_new(th_mono_ns())))) {
        close(res); /* over TH_API_MAX_CONNS: refuse rather than grow */
        return;
    }
    struct conn *c = &S->conns[S->free_head];
    c->tls = tls;
    S->free_head = c->next_free;
    S->nconns++;
    c->in_use = 1;
    c->fd = res;
    c->last_active = th_mono_ns();
    int one = 1;
    setsockopt(res, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    submit_recv(c);
}

static void dispatch(struct io_uring_cqe *cqe)
{
    uint64_t ud = io_uring_cqe_get_data64(cqe);
    struct conn *c;
    switch (th_ud_kind(ud)) {
    case TH_UD_ACCEPT:
        on_accept(cqe->res, cqe->flags);
        break;
    case TH_UD_RECV:
        if ((c = conn_of(ud)))
            on_recv(c, cqe->res);
        break;
    case TH_UD_SEND:
        if ((c = conn_of(ud)))
            on_send(c, cqe->res);
        break;
    case TH_UD_ROUTE:
        S->route->ops->on_cqe(S->route, th_ud_idx(ud), th_ud_gen(ud), cqe->res, cqe->flags);
        break;
    case TH_UD_JS:
        if (S->js)
            th_mjs_on_cqe(S->js, cqe->res);
        break;
    default:
        break;
    }
}

/* Connections that paused reading (too many answers owed) and may go on. */
static void run_wakes(void)
{
    while (S->wake) {
        struct conn *c = S->wake;
        S->wake = c->wake_next;
        c->woken = 0;
        if (c->in_use && !c->closing)
            conn_parse(c);
    }
}

/*
 * Become the mailbox's writer. Until it works (it should at once: the
 * supervisor made the object and reaped any earlier notifier) every
 * notification is answered as with the mailbox off.
 */
static void mailbox_open(void)
{
    char err[256] = "";
    static int said;
    int rc = th_mbx_attach(&S->mbx, S->cfg->shm_name, 1, err, sizeof(err));
    if (rc == 0 && (rc = th_mbx_writer_begin(&S->mbx, getpid(), th_now_ns(), err, sizeof(err))) < 0)
        th_mbx_detach(&S->mbx);
    if (rc < 0) {
        if (!said++)
            th_error("[Notifier] mailbox: %s; notifications are not stored until it works",
                     err[0] ? err : strerror(-rc));
        return;
    }
    S->mbx_on = 1;
    if (S->cfg->nats_urls[0]) /* a JetStream cache: stale until the mirror refills it */
        th_mbx_set_epoch(&S->mbx, 0);
    th_mbx_epoch(&S->mbx, S->epoch);
    th_info("[Notifier] mailbox writer: epoch %s, %llu stored, ttl %u s", S->epoch,
            (unsigned long long)atomic_load(&S->mbx.hdr->entries), S->cfg->mailbox_ttl_s);
}

/* Once a second: idle keep-alive connections (the heartbeat is stamped in the loop), expiry. */
static void tick(uint64_t now)
{
    if (S->accept_paused) {
        S->accept_paused = 0;
        submit_accept();
    }
    if (S->mbx_on)
        th_mbx_expire(&S->mbx, th_now_ns());
    else if (S->cfg->mailbox_ttl_s)
        mailbox_open(); /* it failed at start: keep trying, the log says why */
    for (unsigned i = 0; i < TH_API_MAX_CONNS; i++) {
        struct conn *c = &S->conns[i];
        if (c->in_use && !c->closing && c->linger_until && now > c->linger_until)
            conn_close(c);
        else if (c->in_use && !c->closing && !c->rhead && !c->send_busy &&
                 now - c->last_active > (uint64_t)TH_API_IDLE_S * TH_NS_PER_S)
            conn_close(c);
        else if (c->in_use && !c->closing && c->tls && th_api_tls_tick(c->tls, now) < 0)
            conn_close(c); /* TLS handshake overdue */
    }
}

static void loop(void)
{
    uint64_t next_tick = th_mono_ns(), next_beat = 0;
    while (!th_sig_stop) {
        uint64_t now = th_mono_ns();
        if (now >= next_beat) { /* the supervisor replaces a notifier silent for --hung-after */
            th_role_heartbeat(&S->reg->hdr->roles[TH_ROLE_NOTIFIER], th_now_ns());
            next_beat = now + TH_HEARTBEAT_NS / 5;
        }
        S->route->ops->expire(S->route, now);
        if (now >= next_tick) {
            tick(now);
            next_tick = now + TH_NS_PER_S;
        }
        if (th_sig_hup) {
            th_sig_hup = 0;
            th_log_reopen();
            reload_keys();
            th_api_tls_reload(S->cfg);
        }
        run_wakes();
        S->route->ops->flush(S->route);
        uint64_t until = S->route->ops->next_deadline(S->route);
        if (S->js) {
            uint64_t d = th_mjs_tick(S->js, th_mono_ns());
            until = d < until ? d : until;
        }
        if (until > next_tick)
            until = next_tick;
        if (until > now + TH_HEARTBEAT_NS / 2)
            until = now + TH_HEARTBEAT_NS / 2;
        counters_flush(); /* before the answers queued in this iteration leave */
        TH_STAGE_ITER();
        th_uring_wait(&S->ring, until > now ? until - now : 0); /* failures are logged */
        TH_STAGE_WOKE();
        struct io_uring_cqe *cqe;
        unsigned head, seen = 0;
        io_uring_for_each_cqe(&S->ring, head, cqe)
        {
            dispatch(cqe);
            seen++;
        }
        io_uring_cq_advance(&S->ring, seen);
    }
}

/* Stop: the route drops its deliveries without callbacks, so every answer goes too. */
static void server_free(void)
{
    th_mjs_close(S->js); /* first: its NATS connection must be gone before route_nats waits */
    S->route->ops->destroy(S->route); /* nats_CloseAndWait: no libnats thread left after it */
    th_mjs_free(S->js);
    S->js = NULL;
    io_uring_queue_exit(&S->ring);
    for (unsigned i = 0; i < TH_API_MAX_CONNS; i++) {
        struct conn *c = &S->conns[i];
        if (!c->in_use)
            continue;
        for (struct resp *r = c->rhead, *next; r; r = next) {
            next = r->next;
            resp_free(r);
        }
        close(c->fd);
        free(c->in);
        th_buf_free(&c->out);
        th_buf_free(&c->sending);
        th_api_tls_free(c->tls);
    }
    th_buf_free(&S->frame);
    th_buf_free(&S->answer);
    while (S->spare) {
        struct resp *r = S->spare;
        S->spare = r->next;
        free(r);
    }
    th_buf_free(&S->fast);
    free(S->fast_items);
    free(S->stored_frame);
    if (S->mbx_on) {
        th_mbx_writer_end(&S->mbx);
        th_mbx_detach(&S->mbx);
    }
    th_apikeys_free(&S->keys);
    free(S);
    S = NULL;
}

int th_server_run(const struct th_config *cfg, struct th_reg *reg, int api_fd)
{
    S = calloc(1, sizeof(*S));
    if (!S)
        return -ENOMEM;
    S->cfg = cfg;
    S->reg = reg;
    S->api_fd = api_fd;
    for (uint32_t i = 0; i < TH_API_MAX_CONNS; i++) {
        S->conns[i].fd = -1;
        S->conns[i].next_free = i + 1 < TH_API_MAX_CONNS ? i + 1 : NO_CONN;
    }
    if (cfg->api_key_file[0]) {
        char err[320];
        int krc = th_apikeys_load(cfg->api_key_file, &S->keys, err, sizeof(err));
        if (krc < 0) {
            th_error("[Notifier] %s", err);
            free(S);
            S = NULL;
            return krc;
        }
        th_info("[Notifier] API keys: %d key(s) from %s; /v1/... needs one", krc,
                cfg->api_key_file);
    }
    if (getrandom(&S->id_prefix, sizeof(S->id_prefix), 0) != sizeof(S->id_prefix))
        S->id_prefix = reg->hdr->boot_epoch ^ th_now_ns();
    int rc = th_uring_init(&S->ring, RING_SQ, RING_CQ);
    if (rc < 0) {
        free(S);
        return rc;
    }
    if (cfg->mailbox_ttl_s)
        mailbox_open();
    S->route = th_route_local_new(cfg, reg, &S->ring);
    if (S->route && cfg->nats_urls[0] && cfg->mailbox_ttl_s) {
        struct th_route *gated = NULL;
        /* Without its cache the JetStream mailbox cannot run, and a node of its own seqs
           must not join the others (they take a TN1 seq for the stream's): exit instead. */
        S->js = S->mbx_on ? th_mjs_new(cfg, &S->mbx, &S->ring, S->route, &gated) : NULL;
        if (S->js) {
            S->route = gated;
        } else { /* other nodes take this node's seqs for the stream's: never mix them */
            th_error("[Notifier] JetStream mailbox not started: exiting (restarted with backoff)");
            S->route->ops->destroy(S->route);
            S->route = NULL;
        }
    }
    if (S->route && cfg->nats_urls[0])
        S->route = th_route_nats_new(cfg, reg, &S->ring, S->route);
    if (!S->route) {
        th_mjs_free(S->js); /* (route_nats failed: it waited for libnats' threads) */
        io_uring_queue_exit(&S->ring);
        if (S->mbx_on) {
            th_mbx_writer_end(&S->mbx);
            th_mbx_detach(&S->mbx);
        }
        free(S);
        return -ENOMEM;
    }
    submit_accept();
    loop();
    counters_flush();
    server_free();
    th_stage_flush();
    return 0;
}
