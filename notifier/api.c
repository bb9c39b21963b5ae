/*
 * Request framing, notify validation and JSON rendering for the backend API
 * (see notifier/api.h). Pure functions: the same bytes always give the same
 * answer, which is what lets the tests and fuzzers call them without a
 * running group.
 */
#include "notifier/api.h"
#include "shm/rt/clock.h"
#include "shm/registry.h"
#include "shm/proto/userid.h"
#include "shm/proto/utf8.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- output buffer ------------------------------------------------------ */

static int buf_reserve(struct th_buf *b, size_t more)
{
    if (b->oom)
        return -ENOMEM;
    if (b->len + more + 1 <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + more + 1)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->oom = 1;
        return -ENOMEM;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

void th_buf_put(struct th_buf *b, const void *p, size_t n)
{
    if (buf_reserve(b, n) < 0)
        return;
    memcpy(b->p + b->len, p, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void th_buf_printf(struct th_buf *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof(tmp)) {
        th_buf_put(b, tmp, (size_t)n);
        return;
    }
    if (buf_reserve(b, (size_t)n) < 0)
        return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

/* Bytes in the UTF-8 sequence starting at p (max n), or 0 if it is not valid. */
static size_t utf8_seq(const unsigned char *p, size_t n)
{
    size_t len = p[0] < 0xc0 ? 0 : p[0] < 0xe0 ? 2 : p[0] < 0xf0 ? 3 : p[0] < 0xf8 ? 4 : 0;
    if (len == 0 || len > n || th_utf8_feed(TH_UTF8_ACCEPT, p, len) != TH_UTF8_ACCEPT)
        return 0;
    return len;
}

/*
 * Escape quotes, backslashes and control characters; copy valid UTF-8 as is
 * and replace each invalid byte with U+FFFD, so the output is always valid
 * JSON even for text that echoes a client's bytes (jansson's error messages,
 * a percent-decoded path).
 */
/* Bytes th_buf_json_str copies as they are: printable ASCII but 0x22 ("), 0x5c (\\). */
static const unsigned char json_plain[256] = {
    [0x20 ... 0x21] = 1, [0x23 ... 0x5b] = 1, [0x5d ... 0x7e] = 1};

void th_buf_json_str(struct th_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    /* Worst case every byte becomes \u00XX or a 3-byte U+FFFD. */
    if (buf_reserve(b, n * 6 + 2) < 0)
        return;
    char *o = b->p + b->len;
    *o++ = '"';
    for (size_t i = 0; i < n; i++) {
        size_t j = i; /* a run of printable ASCII needing no escape is copied at once */
        while (j < n && json_plain[(unsigned char)s[j]])
            j++;
        memcpy(o, s + i, j - i);
        o += j - i;
        if ((i = j) == n)
            break;
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x80) {
            size_t k = utf8_seq((const unsigned char *)s + i, n - i);
            if (k) {
                memcpy(o, s + i, k);
                o += k;
                i += k - 1;
            } else {
                memcpy(o, "\xef\xbf\xbd", 3);
                o += 3;
            }
        } else if (c == '"' || c == '\\') {
            *o++ = '\\';
            *o++ = (char)c;
        } else if (c < 0x20 || c == 0x7f) {
            memcpy(o, "\\u00", 4);
            o[4] = hex[c >> 4];
            o[5] = hex[c & 15];
            o += 6;
        } else {
            *o++ = (char)c;
        }
    }
    *o++ = '"';
    *o = '\0';
    b->len = (size_t)(o - b->p);
}

void th_buf_u64(struct th_buf *b, uint64_t v)
{
    char t[24], *p = t + sizeof(t);
    do
        *--p = (char)('0' + v % 10);
    while (v /= 10);
    th_buf_put(b, p, (size_t)(t + sizeof(t) - p));
}

void th_buf_json_time(struct th_buf *b, int has, uint64_t ns)
{
    /* Stamps repeat within a second on the hot path: format each second once. */
    static __thread uint64_t cached_s = UINT64_MAX;
    static __thread char t[40];
    static __thread size_t n;
    if (!has) {
        th_buf_puts(b, "null");
        return;
    }
    if (ns / TH_NS_PER_S != cached_s) {
        n = th_fmt_rfc3339(t + 1, sizeof(t) - 2, ns);
        t[0] = '"';
        t[n + 1] = '"';
        n += 2;
        cached_s = ns / TH_NS_PER_S;
    }
    th_buf_put(b, t, n);
}

void th_buf_free(struct th_buf *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

/* ---- framing ------------------------------------------------------------ */

static int str_eq(const struct th_str *s, const char *c)
{
    size_t n = strlen(c);
    return s->n == n && memcmp(s->p, c, n) == 0;
}

static int str_prefix(const struct th_str *s, const char *c)
{
    size_t n = strlen(c);
    return s->n >= n && memcmp(s->p, c, n) == 0;
}

/* Which endpoint, or 404/405 in req->status. */
static void resolve_route(struct th_api_req *req)
{
    const struct th_str *m = &req->http.method, *p = &req->http.path;
    int post = str_eq(m, "POST"), get = str_eq(m, "GET");
    int want_post = 0, route = 0;
    if (str_eq(p, "/v1/notify"))
        route = TH_API_NOTIFY, want_post = 1;
    else if (str_eq(p, "/v1/notify/batch"))
        route = TH_API_BATCH, want_post = 1;
    else if (str_prefix(p, "/v1/presence/") && p->n > strlen("/v1/presence/"))
        route = TH_API_PRESENCE;
    else if (str_eq(p, "/healthz"))
        route = TH_API_HEALTHZ;
    else if (str_eq(p, "/metrics"))
        route = TH_API_METRICS;
    if (!route) {
        req->status = 404;
        return;
    }
    if (want_post ? !post : !get) {
        req->status = 405;
        return;
    }
    req->route = route;
    if (route == TH_API_PRESENCE) {
        size_t k = strlen("/v1/presence/");
        req->presence_user = (struct th_str){p->p + k, p->n - k};
    }
}

/* Strict decimal Content-Length (no sign, no spaces inside, <= 10 digits). */
static int parse_length(const struct th_str *v, uint64_t *out)
{
    if (v->n == 0 || v->n > 10)
        return -EINVAL;
    uint64_t x = 0;
    for (size_t i = 0; i < v->n; i++) {
        if (v->p[i] < '0' || v->p[i] > '9')
            return -EINVAL;
        x = x * 10 + (uint64_t)(v->p[i] - '0');
    }
    *out = x;
    return 0;
}

/* Content-Length: every occurrence must agree (request smuggling guard). */
static int content_length(const struct th_http_req *h, uint64_t *out)
{
    int seen = 0;
    *out = 0;
    for (size_t i = 0; i < h->nheaders; i++) {
        uint64_t v;
        if (!th_str_ieq(&h->headers[i].name, "content-length"))
            continue;
        if (parse_length(&h->headers[i].value, &v) < 0 || (seen && v != *out))
            return -EINVAL;
        *out = v;
        seen = 1;
    }
    return 0;
}

static int keep_alive(const struct th_http_req *h)
{
    const struct th_str *c = th_http_header(h, "connection");
    if (h->minor_version >= 1)
        return !(c && th_http_has_token(c, "close"));
    return c && th_http_has_token(c, "keep-alive");
}

int th_api_frame(const char *buf, size_t len, struct th_api_req *req, const char **reason)
{
    int h = th_http_parse_request(&req->http, buf, len, TH_HTTP_MAX_HEAD);
    if (h == TH_HTTP_PARTIAL)
        return TH_API_PARTIAL;
    if (h == TH_HTTP_TOO_BIG) {
        *reason = "request head over 8192 bytes or over 64 headers";
        return -431;
    }
    if (h < 0) {
        *reason = "malformed HTTP request";
        return -400;
    }
    req->route = 0;
    req->status = 0;
    resolve_route(req);
    if (th_http_header(&req->http, "transfer-encoding")) {
        *reason = "Transfer-Encoding is not supported: send the body with Content-Length";
        return -411;
    }
    uint64_t cl;
    if (content_length(&req->http, &cl) < 0) {
        *reason = "invalid Content-Length";
        return -400;
    }
    uint64_t max = req->route == TH_API_BATCH ? TH_API_MAX_BATCH_BODY : TH_API_MAX_NOTIFY_BODY;
    if (cl > max) {
        *reason = req->route == TH_API_BATCH ? "body over 1048576 bytes (batch limit)"
                                             : "body over 65536 bytes";
        return -413;
    }
    req->head_len = (size_t)h;
    if (len - (size_t)h < cl)
        return TH_API_PARTIAL; /* head_len set: the caller may answer Expect: 100-continue */
    req->body_len = (size_t)cl;
    req->body = buf + h;
    req->keep_alive = keep_alive(&req->http);
    return (int)(h + cl);
}

/* ---- notify validation -------------------------------------------------- */

static int no_controls(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] == 0x7f)
            return 0;
    return 1;
}

static int failf(char *err, size_t errlen, const char *fmt, unsigned n)
{
    snprintf(err, errlen, fmt, n);
    return -EINVAL;
}

static int fail(char *err, size_t errlen, const char *msg)
{
    snprintf(err, errlen, "%s", msg);
    return -EINVAL;
}

int th_api_check_notify(json_t *obj, struct th_notify *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    if (!json_is_object(obj))
        return fail(err, errlen, "body must be a JSON object");
    json_t *u = json_object_get(obj, "user_id"), *t = json_object_get(obj, "type");
    json_t *d = json_object_get(obj, "data"), *id = json_object_get(obj, "id");
    if (!u)
        return fail(err, errlen, "missing field: user_id");
    if (!json_is_string(u) || !th_userid_valid(json_string_value(u), json_string_length(u)))
        return fail(err, errlen, "user_id must be a string of " TH_USERID_RULE_TEXT);
    if (!t)
        return fail(err, errlen, "missing field: type");
    if (!json_is_string(t) || json_string_length(t) == 0)
        return fail(err, errlen, "type must be a non-empty string");
    if (d && !json_is_null(d) && !json_is_object(d))
        return fail(err, errlen, "data must be a JSON object");
    if (id && !json_is_null(id)) {
        size_t n = json_is_string(id) ? json_string_length(id) : 0;
        if (n == 0 || n > TH_API_MAX_ID || !no_controls(json_string_value(id), n))
            return failf(err, errlen,
                         "id must be a string of 1 to %u bytes without control characters",
                         TH_API_MAX_ID);
        out->id = json_string_value(id);
        out->idlen = n;
    }
    out->user = json_string_value(u);
    out->ulen = json_string_length(u);
    out->type = json_string_value(t);
    out->tlen = json_string_length(t);
    out->data = json_is_null(d) ? NULL : d;
    json_t *ttl = json_object_get(obj, "ttl_s");
    if (ttl && !json_is_null(ttl)) {
        if (!json_is_integer(ttl) || json_integer_value(ttl) < 0 ||
            json_integer_value(ttl) > UINT32_MAX)
            return fail(err, errlen, "ttl_s must be a whole number of seconds, 0 or more");
        out->has_ttl = 1;
        out->ttl_s = (uint32_t)json_integer_value(ttl);
    }
    return 0;
}

int th_api_parse_notify(const char *body, size_t len, json_t **root, struct th_notify *out,
                        char *err, size_t errlen)
{
    json_error_t je;
    *root = json_loadb(body, len, 0, &je);
    if (!*root) {
        snprintf(err, errlen, "invalid JSON: %s (at byte %d)", je.text, je.position);
        return -EINVAL;
    }
    int rc = th_api_check_notify(*root, out, err, errlen);
    if (rc < 0) {
        json_decref(*root);
        *root = NULL;
    }
    return rc;
}

/* ---- rendering ---------------------------------------------------------- */

static int dump_cb(const char *p, size_t n, void *arg)
{
    th_buf_put(arg, p, n);
    return 0;
}

void th_api_render_frame_into(struct th_buf *b, const struct th_notify *n, const char *id,
                              size_t idlen, uint64_t now_ns)
{
    th_buf_puts(b, "{\"type\":");
    th_buf_json_str(b, n->type, n->tlen);
    th_buf_puts(b, ",\"id\":");
    th_buf_json_str(b, id, idlen);
    if (n->epoch) {
        th_buf_puts(b, ",\"seq\":");
        th_buf_u64(b, n->seq);
        th_buf_puts(b, ",\"epoch\":");
        th_buf_json_str(b, n->epoch, strlen(n->epoch));
    }
    th_buf_puts(b, ",\"timestamp\":");
    th_buf_json_time(b, 1, now_ns);
    th_buf_puts(b, ",\"data\":");
    if (n->data)
        json_dump_callback(n->data, dump_cb, b, JSON_COMPACT | JSON_ENCODE_ANY);
    else if (n->data_json)
        th_buf_put(b, n->data_json, n->data_jlen);
    else
        th_buf_puts(b, "{}");
    th_buf_puts(b, "}");
}

char *th_api_render_frame(const struct th_notify *n, const char *id, size_t idlen, uint64_t now_ns,
                          size_t *len)
{
    struct th_buf b = {0};
    th_api_render_frame_into(&b, n, id, idlen, now_ns);
    if (b.oom) {
        th_buf_free(&b);
        return NULL;
    }
    *len = b.len;
    return b.p;
}

void th_api_render_outcome(struct th_buf *b, const struct th_api_result *res, int with_code)
{
    int st = res->status;
    const char *name = st == TH_OUT_DELIVERED       ? "delivered"
                       : st == TH_OUT_STORED        ? "stored"
                       : st == TH_OUT_NOT_CONNECTED ? "not_connected"
                                                    : "unavailable";
    th_buf_puts(b, "{\"status\":\"");
    th_buf_puts(b, name);
    th_buf_puts(b, "\",\"user_id\":");
    th_buf_json_str(b, res->user, res->ulen);
    if (st != TH_OUT_NOT_CONNECTED) {
        th_buf_puts(b, ",\"id\":");
        th_buf_json_str(b, res->id, res->idlen);
    }
    if (res->seq && st != TH_OUT_NOT_CONNECTED) {
        th_buf_puts(b, ",\"seq\":");
        th_buf_u64(b, res->seq);
    }
    if (st == TH_OUT_DELIVERED) {
        th_buf_puts(b, ",\"connections\":");
        th_buf_u64(b, res->connections);
        if (res->nodes) {
            th_buf_puts(b, ",\"nodes\":");
            th_buf_u64(b, res->nodes);
        }
    }
    if (res->not_stored && st != TH_OUT_STORED)
        th_buf_puts(b, ",\"stored\":false");
    if (st == TH_OUT_STORED) {
        th_buf_puts(b, ",\"expires_in_s\":");
        th_buf_u64(b, res->expires_in_s);
    }
    if (st == TH_OUT_NOT_CONNECTED || st == TH_OUT_STORED) {
        th_buf_puts(b, ",\"last_seen\":");
        th_buf_json_time(b, res->has_last_seen, res->last_seen_ns);
    }
    if (with_code) {
        th_buf_puts(b, ",\"code\":");
        th_buf_u64(b, (uint64_t)st);
    }
    th_buf_puts(b, "}");
}

void th_api_render_result(struct th_buf *b, int status, const char *user, size_t ulen,
                          const char *id, size_t idlen, unsigned connections, int has_last_seen,
                          uint64_t last_seen_ns, int with_code)
{
    struct th_api_result res = {.status = status,
                                .user = user,
                                .ulen = ulen,
                                .id = id,
                                .idlen = idlen,
                                .connections = connections,
                                .has_last_seen = has_last_seen,
                                .last_seen_ns = last_seen_ns};
    th_api_render_outcome(b, &res, with_code);
}

void th_api_render_error(struct th_buf *b, const char *msg, int code, int with_code)
{
    th_buf_puts(b, "{\"error\":");
    th_buf_json_str(b, msg, strlen(msg));
    if (with_code)
        th_buf_printf(b, ",\"code\":%d", code);
    th_buf_puts(b, "}");
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c |= 0x20;
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

int th_api_pct_decode(const char *s, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)s[i];
        if (c == '%') {
            if (i + 2 >= n || hexval(s[i + 1]) < 0 || hexval(s[i + 2]) < 0)
                return -EINVAL;
            c = hexval(s[i + 1]) << 4 | hexval(s[i + 2]);
            i += 2;
        }
        if (o >= cap)
            return -ENOSPC;
        out[o++] = (char)c;
    }
    return (int)o;
}
