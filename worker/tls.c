/*
 * wss:// in the worker: where the TLS engine (shm/proto/tls.h) meets the
 * connection table. Two hooks and nothing else in the loop changes:
 *
 * - recv: a connection's first bytes decide (a TLS handshake record starts
 *   with 0x16, an HTTP request never does); a TLS connection's recv
 *   buffers, straight from the provided-buffer ring, go to the engine, and
 *   the plaintext it yields (in the worker's one 16 KiB scratch) goes to
 *   the same HTTP/WebSocket code as a plain connection's bytes;
 * - send: the HTTP and WebSocket code queue plaintext as before
 *   (conn.c keeps it apart, in sendq.plain); at the end of each batch, just
 *   before the send, it is sealed into records appended to the ordinary
 *   queue, so a batch of frames costs one record. Handshake flights and
 *   alerts the engine produces go to that queue directly, in order.
 *
 * The handshake is part of CS_HANDSHAKE, so its 10 s deadline covers the
 * TLS handshake and the HTTP upgrade together. SIGHUP loads the pair again:
 * new handshakes use the new context, live connections keep the one they
 * were made with (libssl counts the references); a bad pair changes nothing.
 */
#include "worker/wk.h"
#include "worker/worker.h"
#include "shm/rt/log.h"

#include <malloc.h>
#include <stdlib.h>

static struct th_tls_ctx *tls_inherited; /* loaded by the supervisor before the fork */

void th_worker_use_tls(struct th_tls_ctx *ctx)
{
    tls_inherited = ctx;
}

int wk_tls_setup(struct worker *w)
{
    w->tls = tls_inherited;
    if (!w->tls)
        return 0;
    w->tls_scratch = malloc(TH_TLS_RECORD_MAX);
    if (!w->tls_scratch) {
        th_error("out of memory for the TLS scratch buffer");
        return -1;
    }
    return 0;
}

void wk_tls_reload(struct worker *w)
{
    char err[512], desc[256];
    if (!w->tls)
        return;
    struct th_tls_ctx *n = th_tls_ctx_new(w->cfg->tls_cert, w->cfg->tls_key,
                                          th_tls_ctx_tickets(w->tls), err, sizeof(err));
    if (!n) {
        th_error("TLS reload failed, keeping the current certificate: %s", err);
        return;
    }
    th_tls_ctx_free(w->tls);
    w->tls = n;
    th_tls_ctx_describe(n, desc, sizeof(desc));
    th_info("TLS certificate reloaded (%s)", desc);
}

/* The first bytes of a connection: 1 when it is TLS (its engine now made), else 0. */
int wk_tls_sniff(struct worker *w, uint32_t idx, const uint8_t *p, size_t n)
{
    struct conn *c = &w->conns[idx];
    if (!w->tls || (c->flags & CF_SNIFFED) || c->state != CS_HANDSHAKE)
        return 0;
    c->flags |= CF_SNIFFED;
    if (n == 0 || p[0] != 0x16)
        return 0;
    c->tls = th_tls_new(w->tls);
    if (!c->tls) {
        th_warn("connection %u: out of memory for TLS, closing", idx);
        wk_conn_abort(w, idx);
    }
    return 1;
}

struct feed {
    struct worker *w;
    uint32_t idx;
};

static int wire_sink(void *arg, const uint8_t *p, size_t n)
{
    struct feed *f = arg;
    return wk_conn_wire(f->w, f->idx, p, n);
}

static int plain_sink(void *arg, const uint8_t *p, size_t n)
{
    struct feed *f = arg;
    wk_conn_input(f->w, f->idx, (uint8_t *)p, n);
    uint8_t st = f->w->conns[f->idx].state;
    return st == CS_HANDSHAKE || st == CS_OPEN ? 0 : -1;
}

void wk_tls_input(struct worker *w, uint32_t idx, uint8_t *p, size_t n)
{
    struct conn *c = &w->conns[idx];
    if (!c->tls || (c->state != CS_HANDSHAKE && c->state != CS_OPEN))
        return; /* closing: the peer's bytes are discarded until its EOF */
    struct feed f = {w, idx};
    c->flags |= CF_TLS_ACTIVE;
    int was_up = th_tls_established(c->tls);
    int rc =
        th_tls_input(c->tls, p, n, w->tls_scratch, TH_TLS_RECORD_MAX, plain_sink, wire_sink, &f);
    if (!was_up && th_tls_established(c->tls) && ++w->tls_handshakes)
        th_debug("connection %u: %s handshake done%s", idx, th_tls_version(c->tls),
                 th_tls_resumed(c->tls) ? " (resumed)" : "");
    if (rc == TH_TLS_ERROR) {
        char why[128];
        th_debug("connection %u: TLS: %s", idx, th_tls_last_error(why, sizeof(why)));
        wk_conn_finish(w, idx); /* the alert (if any) is queued: flush it, FIN, wait for EOF */
    } else if (rc == TH_TLS_CLOSED) {
        wk_conn_abort(w, idx); /* close_notify without a WebSocket close: like an EOF */
    }
}

/* Seal the plaintext queued during this batch into records on the send queue. */
void wk_tls_seal(struct worker *w, uint32_t idx)
{
    struct conn *c = &w->conns[idx];
    struct sendq *q = c->sq;
    if (!c->tls || !q || !q->plain_len)
        return;
    struct feed f = {w, idx};
    c->flags |= CF_TLS_ACTIVE;
    uint32_t n = q->plain_len;
    q->plain_len = 0;
    w->queued_bytes -= n;
    if (th_tls_write(c->tls, q->plain, n, wire_sink, &f) != TH_TLS_OK) {
        char why[128];
        th_debug("connection %u: TLS write: %s", idx, th_tls_last_error(why, sizeof(why)));
        wk_conn_abort(w, idx);
    }
}

/* Before our FIN: the last plaintext, then close_notify. */
void wk_tls_finish(struct worker *w, uint32_t idx)
{
    struct conn *c = &w->conns[idx];
    if (!c->tls)
        return;
    wk_tls_seal(w, idx);
    struct feed f = {w, idx};
    if (c->state != CS_DEAD && c->state != CS_FREE)
        th_tls_close(c->tls, wire_sink, &f);
}

/*
 * Once a second. A connection with TLS traffic in the last second keeps
 * libssl's record buffers (about 34 KiB) for the next one, so a busy client
 * does not pay a malloc and free of each per record; one quiet for a whole
 * second gives them back, so an idle client holds only libssl's state.
 *
 * Then, after handshakes, the heap is trimmed: the pages that handshake
 * buffers left free between long-lived allocations go back to the kernel
 * (without it they stay resident: about 1 KiB more per idle TLS client).
 * Only once a burst is over (a second without a handshake), or every
 * TRIM_EVERY_S seconds of a burst that goes on: trimming in the middle of
 * a reconnect storm gave back pages the next handshakes faulted in again
 * (page faults and madvise: about 5% of a worker's CPU in a storm of
 * resumed handshakes, perf).
 */
#define TRIM_EVERY_S 10
void wk_tls_tick(struct worker *w)
{
    if (!w->tls)
        return;
    for (uint32_t i = 0; i < w->high; i++) {
        struct conn *c = &w->conns[i];
        if (!c->tls)
            continue;
        int active = (c->flags & CF_TLS_ACTIVE) != 0, busy = (c->flags & CF_TLS_BUSY) != 0;
        if (active != busy) {
            th_tls_busy(c->tls, active);
            c->flags ^= CF_TLS_BUSY;
        }
        c->flags &= ~CF_TLS_ACTIVE;
    }
    static unsigned burst_s; /* seconds of the current burst (one worker per process) */
    if (w->tls_handshakes && ++burst_s < TRIM_EVERY_S) {
        w->tls_handshakes = 0;
        return;
    }
    if (burst_s) {
        burst_s = 0;
        w->tls_handshakes = 0;
        malloc_trim(128 << 10);
    }
}
