/*
 * Fuzz target for the notifier's request handling (notifier/api.h, its pure
 * half: no sockets, no registry).
 *
 * Even first byte: the rest is a backend's byte stream. Requests are framed
 * one after another (keep-alive pipelining) by th_api_frame, once with the
 * whole stream and once with the bytes arriving in input-chosen chunks, and
 * both must frame the same requests with the same verdicts. Each framed
 * request must be self-consistent; a notify body is validated, rendered into
 * the client frame, and the frame must parse back (jansson) to the same
 * type, id and data. Odd first byte: the rest is a notify body, and when
 * the fast path (notifier/notify_fast.h) takes it, jansson's path must take
 * it too, with the same fields and a byte-identical frame; the body wrapped
 * in a one-element array must then be taken by the batch fast path alike.
 */
#include "tests/fuzz/fuzz.h"
#include "notifier/api.h"
#include "notifier/notify_fast.h"
#include "shm/registry.h"
#include "shm/proto/userid.h"

#include <errno.h>

#define MAX_REQUESTS 8

static void check_json_object(const char *p, size_t n, const char *what)
{
    json_t *j = json_loadb(p, n, 0, NULL);
    FUZZ_CHECK(json_is_object(j), "%s is not a JSON object: %.*s", what, (int)(n > 200 ? 200 : n),
               p);
    json_decref(j);
}

static void same_notify(const struct th_notify *a, const struct th_notify *b, const char *what)
{
    FUZZ_CHECK(a->ulen == b->ulen && !memcmp(a->user, b->user, a->ulen) && a->tlen == b->tlen &&
                   !memcmp(a->type, b->type, a->tlen) && !a->id == !b->id &&
                   (!a->id || (a->idlen == b->idlen && !memcmp(a->id, b->id, a->idlen))) &&
                   a->has_ttl == b->has_ttl && (!a->has_ttl || a->ttl_s == b->ttl_s),
               "%s: fields differ from jansson's", what);
    char *fa, *fb;
    size_t la, lb;
    fa = th_api_render_frame(a, "x", 1, 1700000000ull * 1000000000ull, &la);
    fb = th_api_render_frame(b, "x", 1, 1700000000ull * 1000000000ull, &lb);
    FUZZ_CHECK(fa && fb && la == lb && !memcmp(fa, fb, la), "%s: frame %.*s, jansson's %.*s", what,
               (int)(la > 200 ? 200 : la), fa, (int)(lb > 200 ? 200 : lb), fb);
    free(fa);
    free(fb);
}

/* The fast paths never take what jansson's refuses, and agree on what they take. */
static void check_fast(const char *body, size_t len, int slow_rc, const struct th_notify *slow)
{
    struct th_buf scratch = {0};
    struct th_notify fast;
    int rc = th_api_fast_notify(body, len, &scratch, &fast);
    if (rc == 1) {
        FUZZ_CHECK(slow_rc == 0, "fast path took a body jansson refuses");
        same_notify(&fast, slow, "single");
        char *arr = malloc(len + 2);
        arr[0] = '[';
        memcpy(arr + 1, body, len);
        arr[len + 1] = ']';
        struct th_notify items[2];
        size_t n = 0;
        struct th_buf s2 = {0};
        FUZZ_CHECK(th_api_fast_batch(arr, len + 2, &s2, items, 2, &n) == 1 && n == 1,
                   "batch fast path refused a body the single one takes");
        same_notify(&items[0], slow, "batch");
        th_buf_free(&s2);
        free(arr);
    }
    th_buf_free(&scratch);
}

static void check_notify(const char *body, size_t len)
{
    json_t *root = NULL;
    struct th_notify n;
    char err[256];
    int rc = th_api_parse_notify(body, len, &root, &n, err, sizeof(err));
    check_fast(body, len, rc, &n);
    if (rc != 0) {
        FUZZ_CHECK(rc == -EINVAL && root == NULL && err[0],
                   "failure without a message or with a root");
        struct th_buf b = {0};
        th_api_render_error(&b, err, 400, 1);
        check_json_object(b.p, b.len, "error reply");
        th_buf_free(&b);
        return;
    }
    FUZZ_CHECK(th_userid_valid(n.user, n.ulen) && n.ulen <= TH_USER_MAX, "bad user accepted");
    FUZZ_CHECK(n.tlen > 0 && (!n.id || (n.idlen > 0 && n.idlen <= TH_API_MAX_ID)),
               "bad type or id");
    const char *id = n.id ? n.id : "generated-id";
    size_t idlen = n.id ? n.idlen : strlen(id), flen = 0;
    char *frame = th_api_render_frame(&n, id, idlen, 1700000000ull * 1000000000ull, &flen);
    FUZZ_CHECK(frame != NULL, "render failed");
    json_t *f = json_loadb(frame, flen, 0, NULL);
    FUZZ_CHECK(json_is_object(f), "rendered frame is not JSON: %.*s",
               (int)(flen > 200 ? 200 : flen), frame);
    json_t *t = json_object_get(f, "type"), *i = json_object_get(f, "id"),
           *d = json_object_get(f, "data");
    FUZZ_CHECK(json_is_string(t) && json_string_length(t) == n.tlen &&
                   !memcmp(json_string_value(t), n.type, n.tlen),
               "type changed in the frame");
    FUZZ_CHECK(json_is_string(i) && json_string_length(i) == idlen &&
                   !memcmp(json_string_value(i), id, idlen),
               "id changed in the frame");
    FUZZ_CHECK(json_is_string(json_object_get(f, "timestamp")), "no timestamp");
    FUZZ_CHECK(n.data ? json_equal(d, n.data) : json_is_object(d) && json_object_size(d) == 0,
               "data changed in the frame");
    json_decref(f);
    free(frame);
    for (int status = 200; status <= 503; status += status == 200 ? 204 : 99) {
        struct th_buf b = {0};
        th_api_render_result(&b, status, n.user, n.ulen, id, idlen, 3, status == 404, 1700000000ull,
                             1);
        check_json_object(b.p, b.len, "result reply");
        th_buf_free(&b);
    }
    json_decref(root);
}

static void check_framed(const struct th_api_req *req, const char *buf, int r)
{
    FUZZ_CHECK(req->head_len + req->body_len == (size_t)r && req->body == buf + req->head_len,
               "framing lengths disagree");
    FUZZ_CHECK(req->status == 0 || req->status == 404 || req->status == 405, "status %d",
               req->status);
    FUZZ_CHECK((req->route != 0) == (req->status == 0), "route %d with status %d", req->route,
               req->status);
    FUZZ_CHECK(req->keep_alive == 0 || req->keep_alive == 1, "keep_alive %d", req->keep_alive);
    FUZZ_CHECK(th_http_reason(req->status ? req->status : 200) != NULL, "no reason phrase");
    if (req->route == TH_API_PRESENCE) {
        const struct th_str *u = &req->presence_user;
        FUZZ_CHECK(u->n > 0 && u->p >= buf && u->p + u->n <= buf + req->head_len,
                   "presence user slice");
        char out[3 * TH_USER_MAX];
        (void)th_api_pct_decode(u->p, u->n, out, sizeof(out));
    }
    if (req->route == TH_API_NOTIFY)
        check_notify(req->body, req->body_len);
}

/* Frame up to MAX_REQUESTS requests; verdicts go to out[] (0 ends the list). */
static void frame_stream(const uint8_t *data, size_t size, uint32_t seed, int chunked,
                         int out[MAX_REQUESTS], int check)
{
    size_t start = 0;
    for (int k = 0; k < MAX_REQUESTS; k++) {
        struct th_api_req req;
        memset(&req, 0, sizeof(req));
        size_t avail = chunked ? 0 : size - start;
        int r = TH_API_PARTIAL;
        char *buf = NULL;
        for (;;) {
            if (chunked) {
                size_t left = size - start - avail;
                if (left == 0)
                    break;
                avail += 1 + fuzz_rand(&seed) % (left < 8 ? left : left / 4 + 1);
                if (avail > size - start)
                    avail = size - start;
            }
            free(buf);
            buf = (char *)fuzz_dup(data + start, avail);
            const char *reason = NULL;
            r = th_api_frame(buf, avail, &req, &reason);
            if (r < 0)
                FUZZ_CHECK(reason && (r == -400 || r == -411 || r == -413 || r == -431),
                           "verdict %d", r);
            if (r != TH_API_PARTIAL || !chunked)
                break;
        }
        out[k] = r;
        if (r > 0 && check)
            check_framed(&req, buf, r);
        free(buf);
        if (r <= 0) {
            if (k + 1 < MAX_REQUESTS)
                out[k + 1] = 0;
            return;
        }
        start += (size_t)r;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 256 * 1024)
        return 0;
    uint8_t sel = data[0];
    data++, size--;
    if (sel & 1) {
        char *body = (char *)fuzz_dup(data, size);
        check_notify(body, size);
        free(body);
        return 0;
    }
    int whole[MAX_REQUESTS] = {0}, chunked[MAX_REQUESTS] = {0};
    frame_stream(data, size, 0, 0, whole, 1);
    frame_stream(data, size, sel * 2654435761u + (uint32_t)size, 1, chunked, 0);
    for (int k = 0; k < MAX_REQUESTS; k++) {
        FUZZ_CHECK(whole[k] == chunked[k], "request %d: whole stream gave %d, chunked %d", k,
                   whole[k], chunked[k]);
        if (whole[k] <= 0)
            break;
    }
    return 0;
}
