/*
 * Benchmark peer for tether on libwebsockets (Debian libwebsockets-dev 4.1):
 * the same client protocol (GET /ws?token=JWT, HS256 verified with libcrypto
 * HMAC; {"type":"ping"} -> {"type":"pong","timestamp":...}, parsed with
 * jansson like tether) and the same notify API (POST /v1/notify on a second
 * vhost; 200 delivered / 404 not_connected). One process, one service
 * thread, as lws servers are usually deployed; outbound frames queue per
 * connection and go out in the WRITEABLE callback, the lws way. It keeps no
 * record of disconnected users, so its 404 always carries last_seen null.
 * --event-lib picks lws's own poll() loop (default) or the libuv / libev
 * plugins Debian ships; poll() costs O(connections) per wake-up, so
 * tools/bench runs both poll and uv.
 */
#include <jansson.h>
#include <libwebsockets.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NBUCKETS 65536

struct msg {
    struct msg *next;
    size_t len;
    unsigned char buf[]; /* LWS_PRE bytes of headroom, then the frame payload */
};

struct client { /* per WebSocket session */
    struct lws *wsi;
    struct client *hnext, **hprev; /* chain in the user's hash bucket */
    struct msg *head, *tail;
    time_t last_seen;
    char user[65];
};

struct api_req { /* per HTTP API transaction */
    char body[65536 + 1];
    size_t len;
    int too_big, status;
    char resp[512];
};

static struct client *g_users[NBUCKETS];
static unsigned char g_secret[512];
static size_t g_secret_len;
static char g_pending_user[65]; /* from the filter callback to ESTABLISHED */
static unsigned long g_next_id;
static volatile int g_stop;

static unsigned hash_user(const char *s)
{
    unsigned h = 2166136261u;
    while (*s)
        h = (h ^ (unsigned char)*s++) * 16777619u;
    return h % NBUCKETS;
}

/* base64url (no padding) into out; returns the decoded length or -1. */
static int b64url_decode(const char *in, size_t n, unsigned char *out, size_t cap)
{
    char tmp[1024];
    if (n + 4 > sizeof tmp || cap < (n + 4) / 4 * 3)
        return -1;
    for (size_t i = 0; i < n; i++)
        tmp[i] = in[i] == '-' ? '+' : in[i] == '_' ? '/' : in[i];
    size_t pad = (4 - n % 4) % 4;
    memset(tmp + n, '=', pad);
    int len = EVP_DecodeBlock(out, (unsigned char *)tmp, (int)(n + pad));
    return len < 0 ? -1 : len - (int)pad;
}

static json_t *b64_json(const char *p, size_t n)
{
    unsigned char buf[768];
    int len = b64url_decode(p, n, buf, sizeof buf);
    return len < 0 ? NULL : json_loadb((const char *)buf, (size_t)len, 0, NULL);
}

/* HS256 check; copies sub into user on success. */
static int jwt_verify(const char *tok, char *user)
{
    const char *d1 = strchr(tok, '.'), *d2 = d1 ? strchr(d1 + 1, '.') : NULL;
    if (!d2 || strchr(d2 + 1, '.'))
        return -1;
    unsigned char mac[EVP_MAX_MD_SIZE], sig[64];
    unsigned maclen = 0;
    HMAC(EVP_sha256(), g_secret, (int)g_secret_len, (const unsigned char *)tok, (size_t)(d2 - tok),
         mac, &maclen);
    int sl = b64url_decode(d2 + 1, strlen(d2 + 1), sig, sizeof sig);
    if (sl != (int)maclen || CRYPTO_memcmp(sig, mac, maclen) != 0)
        return -1;
    json_t *hdr = b64_json(tok, (size_t)(d1 - tok)), *cl = b64_json(d1 + 1, (size_t)(d2 - d1 - 1));
    const char *alg = json_string_value(json_object_get(hdr, "alg"));
    const char *sub = json_string_value(json_object_get(cl, "sub"));
    json_t *exp = json_object_get(cl, "exp"), *nbf = json_object_get(cl, "nbf");
    double now = (double)time(NULL);
    int ok = alg && !strcmp(alg, "HS256") && sub && *sub && strlen(sub) <= 64 &&
             (!exp || (json_is_number(exp) && now < json_number_value(exp))) &&
             (!nbf || (json_is_number(nbf) && now >= json_number_value(nbf)));
    for (const char *s = sub; ok && *s; s++)
        ok = (unsigned char)*s >= 0x20 && *s != 0x7f;
    if (ok)
        snprintf(user, 65, "%s", sub);
    json_decref(hdr);
    json_decref(cl);
    return ok ? 0 : -1;
}

static void rfc3339(char *out, size_t cap)
{
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static void queue_text(struct client *c, const char *s, size_t n)
{
    struct msg *m = malloc(sizeof *m + LWS_PRE + n);
    if (!m)
        return;
    m->next = NULL;
    m->len = n;
    memcpy(m->buf + LWS_PRE, s, n);
    if (c->tail)
        c->tail->next = m;
    else
        c->head = m;
    c->tail = m;
    lws_callback_on_writable(c->wsi);
}

static void on_message(struct client *c, const char *in, size_t len)
{
    c->last_seen = time(NULL);
    json_t *j = json_loadb(in, len, 0, NULL);
    const char *type = json_string_value(json_object_get(j, "type"));
    if (type && !strcmp(type, "ping")) {
        char ts[32], out[96];
        rfc3339(ts, sizeof ts);
        int n = snprintf(out, sizeof out, "{\"type\":\"pong\",\"timestamp\":\"%s\"}", ts);
        queue_text(c, out, (size_t)n);
    } else if (!type || strcmp(type, "ack")) {
        static const char err[] = "{\"type\":\"error\",\"error\":\"bad message\"}";
        queue_text(c, err, sizeof err - 1);
    }
    json_decref(j);
}

static int write_one(struct client *c)
{
    struct msg *m = c->head;
    if (!m)
        return 0;
    int r = lws_write(c->wsi, m->buf + LWS_PRE, m->len, LWS_WRITE_TEXT);
    c->head = m->next;
    if (!c->head)
        c->tail = NULL;
    free(m);
    if (r < 0)
        return -1;
    if (c->head)
        lws_callback_on_writable(c->wsi);
    return 0;
}

static void client_attach(struct client *c, struct lws *wsi)
{
    memset(c, 0, sizeof *c);
    c->wsi = wsi;
    snprintf(c->user, sizeof c->user, "%s", g_pending_user);
    c->last_seen = time(NULL);
    struct client **b = &g_users[hash_user(c->user)];
    c->hnext = *b;
    c->hprev = b;
    if (*b)
        (*b)->hprev = &c->hnext;
    *b = c;
}

static void client_detach(struct client *c)
{
    if (!c->hprev)
        return;
    *c->hprev = c->hnext;
    if (c->hnext)
        c->hnext->hprev = c->hprev;
    c->hprev = NULL;
    while (c->head) {
        struct msg *m = c->head;
        c->head = m->next;
        free(m);
    }
}

static int cb_ws(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                 size_t len)
{
    struct client *c = user;
    char buf[1024];
    switch (reason) {
    case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION: {
        const char *tok = lws_get_urlarg_by_name(wsi, "token=", buf, sizeof buf);
        if (!tok && lws_hdr_copy(wsi, buf, sizeof buf, WSI_TOKEN_HTTP_AUTHORIZATION) > 7 &&
            !strncmp(buf, "Bearer ", 7))
            tok = buf + 7;
        return !tok || jwt_verify(tok, g_pending_user) < 0; /* nonzero: refused */
    }
    case LWS_CALLBACK_ESTABLISHED:
        client_attach(c, wsi);
        break;
    case LWS_CALLBACK_RECEIVE:
        on_message(c, in, len);
        break;
    case LWS_CALLBACK_RECEIVE_PONG:
        c->last_seen = time(NULL);
        break;
    case LWS_CALLBACK_SERVER_WRITEABLE:
        return write_one(c);
    case LWS_CALLBACK_CLOSED:
        client_detach(c);
        break;
    case LWS_CALLBACK_HTTP:
        if (lws_return_http_status(wsi, strcmp(in, "/healthz") ? 404 : 200, NULL))
            return -1;
        return lws_http_transaction_completed(wsi) ? -1 : 0;
    default:
        return lws_callback_http_dummy(wsi, reason, user, in, len);
    }
    return 0;
}

/* POST /v1/notify: queue the rendered frame to each of the user's sessions. */
static void notify(struct api_req *r)
{
    r->body[r->len] = 0;
    json_t *j = json_loads(r->body, 0, NULL);
    const char *user = json_string_value(json_object_get(j, "user_id"));
    const char *type = json_string_value(json_object_get(j, "type"));
    if (!user || !type) {
        r->status = 400;
        snprintf(r->resp, sizeof r->resp, "{\"error\":\"user_id and type are required\"}");
        json_decref(j);
        return;
    }
    char id[64], ts[32];
    const char *given = json_string_value(json_object_get(j, "id"));
    snprintf(id, sizeof id, "%s", given ? given : "");
    if (!given)
        snprintf(id, sizeof id, "n%d-%lu", (int)getpid(), ++g_next_id);
    rfc3339(ts, sizeof ts);
    json_t *data = json_object_get(j, "data");
    json_t *frame = json_pack("{s:s,s:s,s:s,s:O}", "type", type, "id", id, "timestamp", ts, "data",
                              data ? data : json_object());
    char *text = json_dumps(frame, JSON_COMPACT);
    int n = 0;
    for (struct client *c = g_users[hash_user(user)]; c && text; c = c->hnext)
        if (!strcmp(c->user, user)) {
            queue_text(c, text, strlen(text));
            n++;
        }
    r->status = n ? 200 : 404;
    if (n)
        snprintf(r->resp, sizeof r->resp,
                 "{\"status\":\"delivered\",\"user_id\":\"%s\",\"id\":\"%s\",\"connections\":%d}",
                 user, id, n);
    else
        snprintf(r->resp, sizeof r->resp,
                 "{\"status\":\"not_connected\",\"user_id\":\"%s\",\"last_seen\":null}", user);
    free(text);
    json_decref(frame);
    json_decref(j);
}

static int api_respond(struct lws *wsi, struct api_req *r)
{
    unsigned char hdr[LWS_PRE + 512], *start = hdr + LWS_PRE, *p = start, *end = hdr + sizeof hdr;
    size_t n = strlen(r->resp);
    if (lws_add_http_common_headers(wsi, (unsigned)r->status, "application/json", n, &p, end) ||
        lws_finalize_write_http_header(wsi, start, &p, end))
        return -1;
    unsigned char body[LWS_PRE + sizeof r->resp];
    memcpy(body + LWS_PRE, r->resp, n);
    if (lws_write(wsi, body + LWS_PRE, n, LWS_WRITE_HTTP_FINAL) != (int)n)
        return -1;
    return lws_http_transaction_completed(wsi) ? -1 : 0;
}

static int cb_api(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                  size_t len)
{
    struct api_req *r = user;
    switch (reason) {
    case LWS_CALLBACK_HTTP:
        r->len = 0;
        r->too_big = 0;
        if (lws_hdr_total_length(wsi, WSI_TOKEN_POST_URI) && !strcmp(in, "/v1/notify"))
            return 0; /* the body follows */
        r->status = strcmp(in, "/healthz") ? 404 : 200;
        snprintf(r->resp, sizeof r->resp,
                 r->status == 200 ? "{\"status\":\"ok\"}" : "{\"error\":\"not found\"}");
        lws_callback_on_writable(wsi);
        return 0;
    case LWS_CALLBACK_HTTP_BODY:
        if (r->len + len > sizeof r->body - 1)
            r->too_big = 1;
        else
            memcpy(r->body + r->len, in, len), r->len += len;
        return 0;
    case LWS_CALLBACK_HTTP_BODY_COMPLETION:
        if (r->too_big) {
            r->status = 413;
            snprintf(r->resp, sizeof r->resp, "{\"error\":\"body too large\"}");
        } else {
            notify(r);
        }
        lws_callback_on_writable(wsi);
        return 0;
    case LWS_CALLBACK_HTTP_WRITEABLE:
        return api_respond(wsi, r);
    default:
        return lws_callback_http_dummy(wsi, reason, user, in, len);
    }
}

static const struct lws_protocols g_ws_protocols[] = {
    {"tether", cb_ws, sizeof(struct client), 65536, 0, NULL, 0}, {NULL, NULL, 0, 0, 0, NULL, 0}};
static const struct lws_protocols g_api_protocols[] = {
    {"http-api", cb_api, sizeof(struct api_req), 0, 0, NULL, 0}, {NULL, NULL, 0, 0, 0, NULL, 0}};

static void on_sig(int s)
{
    (void)s;
    g_stop = 1;
}

static int split_addr(const char *s, char *host, size_t cap, int *port)
{
    const char *c = strrchr(s, ':');
    if (!c || (size_t)(c - s) >= cap)
        return -1;
    memcpy(host, s, (size_t)(c - s));
    host[c - s] = 0;
    *port = atoi(c + 1);
    return *port > 0 ? 0 : -1;
}

static int load_secret(const char *path)
{
    FILE *f = path ? fopen(path, "r") : NULL;
    if (!f)
        return -1;
    g_secret_len = fread(g_secret, 1, sizeof g_secret - 1, f);
    fclose(f);
    while (g_secret_len &&
           (g_secret[g_secret_len - 1] == '\n' || g_secret[g_secret_len - 1] == '\r'))
        g_secret_len--;
    return g_secret_len ? 0 : -1;
}

static struct lws_vhost *vhost(struct lws_context *cx, const char *name, const char *addr,
                               const struct lws_protocols *prot, char *host, size_t cap)
{
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    int port;
    if (split_addr(addr, host, cap, &port) < 0)
        return NULL;
    info.vhost_name = name;
    info.port = port;
    info.iface = host;
    info.protocols = prot;
    info.keepalive_timeout = 60;
    return lws_create_vhost(cx, &info);
}

int main(int argc, char **argv)
{
    const char *listen = "127.0.0.1:8080", *api = "127.0.0.1:8081", *secret = NULL, *evlib = "poll";
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--listen"))
            listen = argv[i + 1];
        else if (!strcmp(argv[i], "--api-listen"))
            api = argv[i + 1];
        else if (!strcmp(argv[i], "--jwt-secret-file"))
            secret = argv[i + 1];
        else if (!strcmp(argv[i], "--event-lib"))
            evlib = argv[i + 1];
        else {
            fprintf(stderr, "tether-peer-lws: unknown flag %s\n", argv[i]);
            return 2;
        }
    }
    if (argc % 2 == 0) {
        fprintf(stderr, "tether-peer-lws: flag %s needs a value\n", argv[argc - 1]);
        return 2;
    }
    if (load_secret(secret) < 0) {
        fprintf(stderr, "tether-peer-lws: --jwt-secret-file missing or empty\n");
        return 2;
    }
    lws_set_log_level(LLL_ERR, NULL);
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.options = LWS_SERVER_OPTION_EXPLICIT_VHOSTS;
    if (!strcmp(evlib, "ev")) /* the libev plugin (epoll) instead of lws's own poll() loop */
        info.options |= LWS_SERVER_OPTION_LIBEV;
    else if (!strcmp(evlib, "uv"))
        info.options |= LWS_SERVER_OPTION_LIBUV;
    else if (strcmp(evlib, "poll")) {
        fprintf(stderr, "tether-peer-lws: --event-lib is poll, ev or uv\n");
        return 2;
    }
    struct lws_context *cx = lws_create_context(&info);
    char h1[64], h2[64];
    if (!cx || !vhost(cx, "ws", listen, g_ws_protocols, h1, sizeof h1) ||
        !vhost(cx, "api", api, g_api_protocols, h2, sizeof h2)) {
        fprintf(stderr, "tether-peer-lws: cannot listen on %s / %s\n", listen, api);
        return 1;
    }
    if (!strcmp(evlib, "poll")) { /* the ev and uv loops never return to check a flag: */
        signal(SIGINT, on_sig);   /* there SIGTERM keeps its default action */
        signal(SIGTERM, on_sig);
    }
    fprintf(stderr, "lws peer: ws://%s/ws api http://%s pid %d event lib %s\n", listen, api,
            (int)getpid(), evlib);
    while (!g_stop && lws_service(cx, 0) >= 0)
        ;
    lws_context_destroy(cx);
    return 0;
}
