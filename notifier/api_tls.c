/*
 * https:// on the backend API (see notifier/api_tls.h): one wrapper per API
 * connection around the shared TLS engine. It owns the connection's
 * ciphertext recv buffer (the kernel writes there while a recv is in
 * flight; the server frees the wrapper only once none is), the engine, and
 * the wire buffer of records not yet handed to the send path. Plaintext
 * lives in the server's own buffers, so framing, pipelining, 100-continue
 * and lingering close work as for plain HTTP.
 */
#include "notifier/api_tls.h"
#include "notifier/notifier.h"
#include "shm/proto/tls.h"
#include "shm/rt/clock.h"
#include "shm/rt/log.h"

#include <stdlib.h>
#include <string.h>

#define RBUF_SIZE 16384 /* one recv's ciphertext; libssl keeps a record cut across recvs */

enum mode { M_SNIFF, M_TLS, M_PLAIN };

struct th_api_tls {
    struct th_tls *tls; /* M_TLS only */
    uint8_t mode, active, busy, closed;
    uint64_t born_ns;
    uint8_t *rbuf;
    struct th_buf wire; /* records and handshake flights, in the order libssl made them */
    /* the current th_api_tls_input call's plaintext destination */
    char **in;
    size_t *in_len, *in_cap, max;
};

static struct th_tls_ctx *ctx; /* new connections' pair; live ones keep the one they began with */
static uint8_t scratch[TH_TLS_RECORD_MAX];

void th_notifier_use_tls(struct th_tls_ctx *c)
{
    ctx = c;
}

int th_api_tls_on(void)
{
    return ctx != NULL;
}

void th_api_tls_reload(const struct th_config *cfg)
{
    char err[512], desc[256];
    if (!ctx)
        return;
    struct th_tls_ctx *n = th_tls_ctx_new(cfg->api_tls_cert, cfg->api_tls_key,
                                          th_tls_ctx_tickets(ctx), err, sizeof(err));
    if (!n) {
        th_error("[Notifier] API TLS reload failed, keeping the current certificate: %s", err);
        return;
    }
    th_tls_ctx_free(ctx); /* connections made from it keep their reference */
    ctx = n;
    th_tls_ctx_describe(n, desc, sizeof(desc));
    th_info("[Notifier] API TLS certificate reloaded (%s)", desc);
}

struct th_api_tls *th_api_tls_new(uint64_t now_ns)
{
    struct th_api_tls *t = calloc(1, sizeof(*t));
    if (t)
        t->born_ns = now_ns;
    return t;
}

void th_api_tls_free(struct th_api_tls *t)
{
    if (!t)
        return;
    th_tls_free(t->tls);
    free(t->rbuf);
    th_buf_free(&t->wire);
    free(t);
}

size_t th_api_tls_rbuf(struct th_api_tls *t, char **p)
{
    if (!t->rbuf && !(t->rbuf = malloc(RBUF_SIZE)))
        return 0;
    *p = (char *)t->rbuf;
    return RBUF_SIZE;
}

/* Append to the server's input buffer, growing it (never past max). */
static int append_in(struct th_api_tls *t, const uint8_t *p, size_t n)
{
    size_t need = *t->in_len + n;
    if (need > t->max)
        return -1;
    if (need > *t->in_cap) {
        size_t ncap = *t->in_cap ? *t->in_cap : RBUF_SIZE;
        while (ncap < need)
            ncap *= 2;
        if (ncap > t->max)
            ncap = t->max;
        char *q = realloc(*t->in, ncap);
        if (!q)
            return -1;
        *t->in = q;
        *t->in_cap = ncap;
    }
    memcpy(*t->in + *t->in_len, p, n);
    *t->in_len = need;
    return 0;
}

static int plain_sink(void *arg, const uint8_t *p, size_t n)
{
    return append_in(arg, p, n);
}

static int wire_sink(void *arg, const uint8_t *p, size_t n)
{
    struct th_api_tls *t = arg;
    th_buf_put(&t->wire, p, n);
    return t->wire.oom ? -1 : 0;
}

int th_api_tls_input(struct th_api_tls *t, size_t n, char **in, size_t *in_len, size_t *in_cap,
                     size_t max)
{
    t->in = in, t->in_len = in_len, t->in_cap = in_cap;
    t->max = max + 3 * TH_TLS_RECORD_MAX; /* what one recv may complete past a full buffer */
    t->active = 1;
    if (t->mode == M_SNIFF && n) {
        if (t->rbuf[0] != 0x16) {
            t->mode = M_PLAIN;
        } else if ((t->tls = th_tls_new(ctx))) {
            t->mode = M_TLS;
        } else {
            th_warn("[Notifier] API connection: out of memory for TLS, closing");
            return TH_API_TLS_FATAL;
        }
    }
    if (t->mode == M_PLAIN)
        return append_in(t, t->rbuf, n) < 0 ? TH_API_TLS_FATAL : TH_API_TLS_OK;
    int was_up = th_tls_established(t->tls);
    int rc = th_tls_input(t->tls, t->rbuf, n, scratch, sizeof(scratch), plain_sink, wire_sink, t);
    if (!was_up && th_tls_established(t->tls))
        th_debug("[Notifier] API connection: %s handshake done%s", th_tls_version(t->tls),
                 th_tls_resumed(t->tls) ? " (resumed)" : "");
    if (rc == TH_TLS_OK)
        return TH_API_TLS_OK;
    if (rc == TH_TLS_CLOSED)
        return TH_API_TLS_EOF;
    char why[128];
    th_debug("[Notifier] API connection: TLS: %s",
             rc == TH_TLS_STOPPED ? "input over the request limits or out of memory"
                                  : th_tls_last_error(why, sizeof(why)));
    return TH_API_TLS_FATAL;
}

struct th_buf *th_api_tls_wire(struct th_api_tls *t, struct th_buf *out)
{
    if (t->mode != M_TLS)
        return out;
    if (out->len) {
        t->active = 1;
        if (th_tls_write(t->tls, (const uint8_t *)out->p, out->len, wire_sink, t) != TH_TLS_OK) {
            char why[128];
            th_debug("[Notifier] API connection: TLS write: %s",
                     th_tls_last_error(why, sizeof(why)));
            return NULL;
        }
        out->len = 0;
    }
    return t->wire.oom ? NULL : &t->wire;
}

int th_api_tls_close(struct th_api_tls *t)
{
    if (t->mode != M_TLS || t->closed || !th_tls_established(t->tls))
        return 0;
    t->closed = 1;
    size_t before = t->wire.len;
    th_tls_close(t->tls, wire_sink, t);
    return t->wire.len > before;
}

int th_api_tls_refuses(const struct th_api_tls *t, int route)
{
    return t->mode == M_PLAIN && route != TH_API_HEALTHZ && route != TH_API_METRICS;
}

int th_api_tls_tick(struct th_api_tls *t, uint64_t now_ns)
{
    if (t->mode != M_TLS)
        return 0;
    if (!th_tls_established(t->tls) &&
        now_ns - t->born_ns > (uint64_t)TH_API_TLS_HANDSHAKE_S * TH_NS_PER_S) {
        th_debug("[Notifier] API connection: TLS handshake not done in %d s, closing",
                 TH_API_TLS_HANDSHAKE_S);
        return -1;
    }
    if (t->active != t->busy) {
        th_tls_busy(t->tls, t->active);
        t->busy = t->active;
    }
    t->active = 0;
    return 0;
}
