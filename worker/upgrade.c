/*
 * The HTTP side of a client connection: reading the request head (bounded
 * to 8 KiB and 64 headers, resumed across reads), /healthz, the WebSocket
 * upgrade checks, JWT authentication and the registry claim.
 *
 * A head that arrives in one read is parsed straight from the io_uring
 * buffer; only a partial head is copied, into a buffer that grows with it
 * and is freed after the handshake. Every refusal is a short JSON answer
 * followed by a TCP close, and none of them takes a registry slot.
 */
#include "worker/wk.h"
#include "shm/proto/jwt.h"
#include "shm/proto/resume_req.h"
#include "shm/rt/clock.h"
#include "shm/rt/log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Answer and close (Connection: close): every non-upgrade outcome ends here. */
void wk_http_reply(struct worker *w, uint32_t idx, int status, const char *extra_hdrs,
                   const char *body)
{
    char buf[512];
    int n =
        snprintf(buf, sizeof(buf),
                 "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                 "Content-Length: %zu\r\nConnection: close\r\n%s\r\n%s",
                 status, th_http_reason(status), strlen(body), extra_hdrs ? extra_hdrs : "", body);
    if (n > 0 && (size_t)n < sizeof(buf))
        wk_conn_send(w, idx, buf, (size_t)n);
    wk_conn_finish(w, idx);
}

static void reply_error(struct worker *w, uint32_t idx, int status, const char *why)
{
    char body[160];
    snprintf(body, sizeof(body), "{\"error\":\"%s\"}", why);
    wk_http_reply(w, idx, status, NULL, body);
}

/* Token from "Authorization: Bearer <t>", else "?token=<t>". */
static int find_token(const struct th_http_req *req, struct th_str *tok)
{
    const struct th_str *auth = th_http_header(req, "Authorization");
    if (auth && auth->n > 7 && !strncasecmp(auth->p, "Bearer ", 7)) {
        tok->p = auth->p + 7, tok->n = auth->n - 7;
        while (tok->n && *tok->p == ' ')
            tok->p++, tok->n--;
        return tok->n > 0;
    }
    return th_http_query_param(&req->query, "token", tok) && tok->n > 0;
}

/* The RFC 6455 upgrade requirements; 0 or the status to answer (reason in *why). */
static int check_upgrade(const struct th_http_req *req, const struct th_str **key, const char **why)
{
    const struct th_str *up = th_http_header(req, "Upgrade");
    const struct th_str *conn = th_http_header(req, "Connection");
    const struct th_str *ver = th_http_header(req, "Sec-WebSocket-Version");
    *key = th_http_header(req, "Sec-WebSocket-Key");
    *why = "not a WebSocket upgrade";
    if (!up || !th_http_has_token(up, "websocket") || !conn || !th_http_has_token(conn, "upgrade"))
        return 400;
    if (!ver || !th_str_ieq(ver, "13")) {
        *why = "unsupported WebSocket version";
        return 426;
    }
    *why = "bad Sec-WebSocket-Key";
    if (!*key || (*key)->n != 24)
        return 400;
    return 0;
}

/* A slot the claim released to keep the user within the cap: close it with 4001. */
static void on_evicted(const struct th_conn_info *victim, void *arg)
{
    struct worker *w = arg;
    struct th_counters_sh *ctr = &w->reg->hdr->counters;
    atomic_fetch_add_explicit(&ctr->replaced, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&ctr->connections_closed, 1, memory_order_relaxed);
    wk_evict(w, victim, TH_WS_REPLACED);
}

static void accept_upgrade(struct worker *w, uint32_t idx, const struct th_str *key,
                           const struct th_jwt_claims *cl, const struct th_resume_req *rr)
{
    struct conn *c = &w->conns[idx];
    struct th_handle h;
    int rc = th_reg_claim(w->reg, cl->sub, cl->sub_len, (uint16_t)w->index, idx, w->now_ns,
                          w->cfg->max_conns_per_user, &h, on_evicted, w);
    if (rc == -ENOSPC) {
        atomic_fetch_add_explicit(&w->reg->hdr->counters.registry_full, 1, memory_order_relaxed);
        reply_error(w, idx, 503, "registry full");
        return;
    }
    if (rc < 0) {
        th_warn("registry claim for user %s failed: %s", cl->sub, strerror(-rc));
        reply_error(w, idx, 500, "internal error");
        return;
    }
    c->h = h;
    c->flags |= rc == 0 ? CF_REGISTERED : 0;
    c->state = CS_OPEN;
    wk_conn_opened(w, idx,
                   cl->exp <= 0           ? 0
                   : cl->exp > UINT32_MAX ? UINT32_MAX
                                          : (uint32_t)cl->exp);
    atomic_fetch_add_explicit(&w->reg->hdr->counters.connections_opened, 1, memory_order_relaxed);
    char acc[29], resp[160];
    th_ws_accept_key(key->p, key->n, acc);
    int n = snprintf(resp, sizeof(resp),
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
                     acc);
    wk_conn_send(w, idx, resp, (size_t)n);
    th_info("[WebSocket] User %s connected and added to registry", cl->sub);
    if (rc == 1) {
        /* Newer connections of this user took the cap while we claimed: this
         * one is the oldest, so it is the one replaced (already released). */
        struct th_counters_sh *ctr = &w->reg->hdr->counters;
        atomic_fetch_add_explicit(&ctr->replaced, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&ctr->connections_closed, 1, memory_order_relaxed);
        wk_conn_close(w, idx, TH_WS_REPLACED);
        return;
    }
    wk_resume_start(w, idx, rr, cl->sub, cl->sub_len); /* after the claim: see worker/resume.c */
}

/* A complete head. Returns 1 when the connection is now a WebSocket. */
static int handle_request(struct worker *w, uint32_t idx, const struct th_http_req *req)
{
    const char *why;
    const struct th_str *key;
    struct th_str tok;
    struct th_jwt_claims cl;
    if (!th_str_ieq(&req->method, "GET")) {
        wk_http_reply(w, idx, 405, "Allow: GET\r\n", "{\"error\":\"method not allowed\"}");
        return 0;
    }
    if (req->path.n == 8 && !memcmp(req->path.p, "/healthz", 8)) {
        char body[64];
        snprintf(body, sizeof(body), "{\"status\":\"ok\",\"worker\":%u}", w->index);
        wk_http_reply(w, idx, 200, NULL, body);
        return 0;
    }
    if (req->path.n != 3 || memcmp(req->path.p, "/ws", 3)) {
        reply_error(w, idx, 404, "not found");
        return 0;
    }
    if (w->cfg->tls_only && !w->conns[idx].tls) {
        reply_error(w, idx, 403, "TLS required: use wss://");
        return 0;
    }
    int status = check_upgrade(req, &key, &why);
    if (status) {
        wk_http_reply(w, idx, status, status == 426 ? "Sec-WebSocket-Version: 13\r\n" : NULL,
                      status == 426 ? "{\"error\":\"unsupported WebSocket version\"}"
                                    : "{\"error\":\"not a WebSocket upgrade\"}");
        return 0;
    }
    const struct th_str *origin = th_http_header(req, "Origin");
    struct th_counters_sh *ctr = &w->reg->hdr->counters;
    if (origin && !wk_origin_allowed(w->cfg->allowed_origins, origin->p, origin->n)) {
        /* A browser page of another site: it must not use a user's token here. */
        th_debug("connection %u refused: origin %.*s not allowed", idx,
                 (int)(origin->n > 200 ? 200 : origin->n), origin->p);
        atomic_fetch_add_explicit(&ctr->origin_refused, 1, memory_order_relaxed);
        reply_error(w, idx, 403, "origin not allowed");
        return 0;
    }
    if (!find_token(req, &tok)) {
        th_debug("connection %u refused: no token", idx);
        atomic_fetch_add_explicit(&ctr->token_refused, 1, memory_order_relaxed);
        reply_error(w, idx, 401, "missing token");
        return 0;
    }
    int jr = th_jwt_verify_keys(tok.p, tok.n, w->jwt_keys, &w->jwt_rules,
                                (int64_t)(w->now_ns / TH_NS_PER_S), &cl);
    if (jr != TH_JWT_OK) {
        th_debug("connection %u refused: token %s", idx, th_jwt_strerror(jr));
        atomic_fetch_add_explicit(&ctr->token_refused, 1, memory_order_relaxed);
        reply_error(w, idx, 401, th_jwt_strerror(jr));
        return 0;
    }
    struct th_resume_req rr;
    if (th_resume_parse(&req->query, &rr, &why) < 0) {
        th_debug("connection %u refused: %s", idx, why);
        reply_error(w, idx, 400, why);
        return 0;
    }
    accept_upgrade(w, idx, key, &cl, &rr);
    return w->conns[idx].state == CS_OPEN;
}

/* Keep a partial head: grow the copy up to TH_HTTP_MAX_HEAD. 0, -EMSGSIZE over the bound, or
 * -ENOMEM. */
static int keep_partial(struct conn *c, const uint8_t *p, size_t n)
{
    if ((size_t)c->head_len + n > TH_HTTP_MAX_HEAD)
        return -EMSGSIZE;
    if (c->head_len + n > c->head_cap) {
        size_t cap = c->head_cap ? c->head_cap : 512;
        while (cap < c->head_len + n)
            cap *= 2;
        if (cap > TH_HTTP_MAX_HEAD)
            cap = TH_HTTP_MAX_HEAD;
        char *nh = realloc(c->head, cap);
        if (!nh)
            return -ENOMEM;
        c->head = nh;
        c->head_cap = (uint16_t)cap;
    }
    memcpy(c->head + c->head_len, p, n);
    c->head_len += (uint16_t)n;
    return 0;
}

void wk_handshake_input(struct worker *w, uint32_t idx, uint8_t *p, size_t n)
{
    struct conn *c = &w->conns[idx];
    size_t old = c->head_len;
    const char *buf = (const char *)p;
    size_t len = n;
    if (c->head) {
        size_t take = old + n > TH_HTTP_MAX_HEAD ? TH_HTTP_MAX_HEAD - old : n;
        keep_partial(c, p, take);
        buf = c->head, len = c->head_len;
    }
    memset(&w->req, 0, offsetof(struct th_http_req, headers));
    w->req.scanned = c->head_scanned;
    int hl = th_http_parse_request(&w->req, buf, len, TH_HTTP_MAX_HEAD);
    if (hl == TH_HTTP_PARTIAL && len >= TH_HTTP_MAX_HEAD)
        hl = TH_HTTP_TOO_BIG;
    if (hl == TH_HTTP_PARTIAL) {
        c->head_scanned = (uint32_t)w->req.scanned;
        if (!c->head && keep_partial(c, p, n) < 0)
            reply_error(w, idx, 431, "request head too large");
        return;
    }
    if (hl == TH_HTTP_BAD || hl == TH_HTTP_TOO_BIG || hl <= 0) {
        if (hl == TH_HTTP_TOO_BIG)
            reply_error(w, idx, 431, "request head too large");
        else
            reply_error(w, idx, 400, "malformed request");
        return;
    }
    if (!handle_request(w, idx, &w->req))
        return;
    free(c->head);
    c->head = NULL;
    c->head_len = c->head_cap = 0;
    /* Bytes after the head (frames sent before our 101) belong to the WebSocket. */
    if ((size_t)hl >= old && (size_t)hl - old < n)
        wk_ws_input(w, idx, p + (hl - old), n - (hl - old));
}
