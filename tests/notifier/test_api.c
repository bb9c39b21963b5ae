/*
 * Unit tests of notifier/api.c: request framing (pipelining, body limits,
 * refused transfer codings, routing), notify validation naming the field,
 * and the exact JSON of frames and replies. Framing inputs are placed at the
 * end of a page followed by a PROT_NONE page, so any over-read crashes.
 */
#include "notifier/api.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* Copy s to the end of a readable page that is followed by a PROT_NONE page. */
static const char *guarded(const char *s, size_t n)
{
    static char *base;
    static size_t mapped;
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    size_t need = (n + pg - 1) / pg * pg + pg;
    if (base)
        munmap(base, mapped);
    base = mmap(NULL, need, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    cr_assert(base != MAP_FAILED);
    mapped = need;
    mprotect(base + need - pg, pg, PROT_NONE);
    char *p = base + need - pg - n;
    memcpy(p, s, n);
    return p;
}

static int frame(const char *s, struct th_api_req *req, const char **reason)
{
    size_t n = strlen(s);
    memset(req, 0, sizeof(*req));
    *reason = NULL;
    return th_api_frame(guarded(s, n), n, req, reason);
}

Test(frame, get_healthz)
{
    struct th_api_req r;
    const char *why;
    const char *s = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    cr_assert_eq(frame(s, &r, &why), (int)strlen(s));
    cr_assert_eq(r.route, TH_API_HEALTHZ);
    cr_assert_eq(r.status, 0);
    cr_assert(r.keep_alive);
    cr_assert_eq(r.body_len, 0);
}

Test(frame, partial_head_and_partial_body)
{
    struct th_api_req r;
    const char *why;
    cr_assert_eq(frame("GET /healthz HTTP/1.1\r\nHost:", &r, &why), TH_API_PARTIAL);
    cr_assert_eq(frame("POST /v1/notify HTTP/1.1\r\nContent-Length: 10\r\n\r\n{\"a\"", &r, &why),
                 TH_API_PARTIAL);
}

Test(frame, body_and_pipelining)
{
    struct th_api_req r;
    const char *why;
    const char *two = "POST /v1/notify HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"
                      "GET /metrics HTTP/1.1\r\n\r\n";
    int n = frame(two, &r, &why);
    const char *first = "POST /v1/notify HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}";
    cr_assert_eq(n, (int)strlen(first));
    cr_assert_eq(r.route, TH_API_NOTIFY);
    cr_assert_eq(r.body_len, 2);
    cr_assert_eq(memcmp(r.body, "{}", 2), 0);
    cr_assert_eq(frame(two + n, &r, &why), (int)strlen(two + n));
    cr_assert_eq(r.route, TH_API_METRICS);
}

Test(frame, chunked_refused)
{
    struct th_api_req r;
    const char *why;
    cr_assert_eq(frame("POST /v1/notify HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", &r, &why),
                 -411);
    cr_assert(why && strstr(why, "Content-Length"));
}

Test(frame, body_limits)
{
    struct th_api_req r;
    const char *why;
    cr_assert_eq(frame("POST /v1/notify HTTP/1.1\r\nContent-Length: 65537\r\n\r\n", &r, &why),
                 -413);
    cr_assert_eq(frame("POST /v1/notify HTTP/1.1\r\nContent-Length: 65536\r\n\r\n", &r, &why),
                 TH_API_PARTIAL);
    cr_assert_eq(
        frame("POST /v1/notify/batch HTTP/1.1\r\nContent-Length: 1048576\r\n\r\n", &r, &why),
        TH_API_PARTIAL);
    cr_assert_eq(
        frame("POST /v1/notify/batch HTTP/1.1\r\nContent-Length: 1048577\r\n\r\n", &r, &why), -413);
    cr_assert_eq(frame("POST /v1/notify HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n", &r, &why),
                 -400);
}

Test(frame, bad_content_length)
{
    struct th_api_req r;
    const char *why;
    cr_assert_eq(frame("POST /v1/notify HTTP/1.1\r\nContent-Length: 1x\r\n\r\n", &r, &why), -400);
    cr_assert_eq(frame("POST /v1/notify HTTP/1.1\r\nContent-Length: -1\r\n\r\n", &r, &why), -400);
    cr_assert_eq(
        frame("POST /v1/notify HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}x", &r,
              &why),
        -400);
    cr_assert_eq(
        frame("POST /v1/notify HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}", &r,
              &why),
        (int)strlen(
            "POST /v1/notify HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}"));
}

Test(frame, malformed_head)
{
    struct th_api_req r;
    const char *why;
    cr_assert_eq(frame("garbage\r\n\r\n", &r, &why), -400);
    cr_assert(why);
}

Test(frame, routing_404_405)
{
    struct th_api_req r;
    const char *why;
    cr_assert_gt(frame("GET /nope HTTP/1.1\r\n\r\n", &r, &why), 0);
    cr_assert_eq(r.status, 404);
    cr_assert_gt(frame("GET /v1/notify HTTP/1.1\r\n\r\n", &r, &why), 0);
    cr_assert_eq(r.status, 405);
    cr_assert_gt(frame("POST /healthz HTTP/1.1\r\nContent-Length: 0\r\n\r\n", &r, &why), 0);
    cr_assert_eq(r.status, 405);
    cr_assert_gt(frame("GET /v1/presence/ HTTP/1.1\r\n\r\n", &r, &why), 0);
    cr_assert_eq(r.status, 404);
    cr_assert_gt(frame("GET /v1/presence/u%201?x=1 HTTP/1.1\r\n\r\n", &r, &why), 0);
    cr_assert_eq(r.route, TH_API_PRESENCE);
    cr_assert_eq(r.presence_user.n, 5);
    cr_assert_eq(memcmp(r.presence_user.p, "u%201", 5), 0);
}

Test(frame, keep_alive_rules)
{
    struct th_api_req r;
    const char *why;
    frame("GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n", &r, &why);
    cr_assert_not(r.keep_alive);
    frame("GET /healthz HTTP/1.0\r\n\r\n", &r, &why);
    cr_assert_not(r.keep_alive);
    frame("GET /healthz HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", &r, &why);
    cr_assert(r.keep_alive);
}

static int check(const char *body, struct th_notify *n, json_t **root, char *err)
{
    return th_api_parse_notify(body, strlen(body), root, n, err, 256);
}

Test(notify, valid_minimal_and_full)
{
    struct th_notify n;
    json_t *root;
    char err[256];
    cr_assert_eq(check("{\"user_id\":\"u1\",\"type\":\"t\"}", &n, &root, err), 0);
    cr_assert_eq(n.ulen, 2);
    cr_assert_null(n.id);
    cr_assert_null(n.data);
    json_decref(root);
    cr_assert_eq(
        check("{\"user_id\":\"u1\",\"type\":\"meal\",\"data\":{\"a\":[1,2]},\"id\":\"abc\"}", &n,
              &root, err),
        0);
    cr_assert_eq(n.idlen, 3);
    cr_assert(json_is_object(n.data));
    json_decref(root);
    cr_assert_eq(check("{\"user_id\":\"u1\",\"type\":\"t\",\"data\":null}", &n, &root, err), 0);
    cr_assert_null(n.data, "null data is no data");
    json_decref(root);
}

Test(notify, errors_name_the_field)
{
    struct th_notify n;
    json_t *root;
    char err[256];
    struct {
        const char *body, *needle;
    } cases[] = {
        {"{", "invalid JSON"},
        {"[1]", "JSON object"},
        {"{\"type\":\"t\"}", "user_id"},
        {"{\"user_id\":\"\",\"type\":\"t\"}", "user_id"},
        {"{\"user_id\":7,\"type\":\"t\"}", "user_id"},
        {"{\"user_id\":\"a\\u0001b\",\"type\":\"t\"}", "user_id"},
        {"{\"user_id\":\"u\"}", "type"},
        {"{\"user_id\":\"u\",\"type\":\"\"}", "type"},
        {"{\"user_id\":\"u\",\"type\":3}", "type"},
        {"{\"user_id\":\"u\",\"type\":\"t\",\"id\":5}", "id"},
        {"{\"user_id\":\"u\",\"type\":\"t\",\"id\":\"\"}", "id"},
        {"{\"user_id\":\"u\",\"type\":\"t\",\"data\":[1,2]}", "data must be a JSON object"},
        {"{\"user_id\":\"u\",\"type\":\"t\",\"data\":\"x\"}", "data"},
        {"{\"user_id\":\"u\",\"type\":\"t\",\"data\":3}", "data"},
        {"{\"user_id\":\"u\",\"type\":\"t\",\"data\":true}", "data"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        err[0] = '\0';
        cr_assert_lt(check(cases[i].body, &n, &root, err), 0, "case %zu accepted", i);
        cr_assert_null(root);
        cr_assert(strstr(err, cases[i].needle), "case %zu: '%s' lacks '%s'", i, err,
                  cases[i].needle);
    }
}

Test(notify, user_id_length_bounds)
{
    struct th_notify n;
    json_t *root;
    char err[256], body[256];
    char u[66];
    memset(u, 'a', 65);
    u[64] = '\0';
    snprintf(body, sizeof(body), "{\"user_id\":\"%s\",\"type\":\"t\"}", u);
    cr_assert_eq(check(body, &n, &root, err), 0);
    json_decref(root);
    u[64] = 'a';
    u[65] = '\0';
    snprintf(body, sizeof(body), "{\"user_id\":\"%s\",\"type\":\"t\"}", u);
    cr_assert_lt(check(body, &n, &root, err), 0);
}

Test(render, frame_exact)
{
    struct th_notify n;
    json_t *root;
    char err[256];
    cr_assert_eq(check("{\"user_id\":\"u1\",\"type\":\"a\\\"b\",\"data\":{\"k\":[1,\"x\"]}}", &n,
                       &root, err),
                 0);
    size_t len;
    /* 2025-11-08T10:07:29Z */
    char *f = th_api_render_frame(&n, "id-1", 4, 1762596449ULL * 1000000000ULL + 5, &len);
    cr_assert_str_eq(f,
                     "{\"type\":\"a\\\"b\",\"id\":\"id-1\",\"timestamp\":\"2025-11-08T10:07:29Z\","
                     "\"data\":{\"k\":[1,\"x\"]}}");
    cr_assert_eq(len, strlen(f));
    free(f);
    n.data = NULL;
    f = th_api_render_frame(&n, "z", 1, 0, &len);
    cr_assert(strstr(f, "\"data\":{}}"));
    free(f);
    json_decref(root);
}

Test(render, results_exact)
{
    struct th_buf b = {0};
    th_api_render_result(&b, 200, "u1", 2, "n1", 2, 2, 0, 0, 0);
    cr_assert_str_eq(
        b.p, "{\"status\":\"delivered\",\"user_id\":\"u1\",\"id\":\"n1\",\"connections\":2}");
    b.len = 0;
    th_api_render_result(&b, 404, "u1", 2, "n1", 2, 0, 0, 0, 1);
    cr_assert_str_eq(
        b.p, "{\"status\":\"not_connected\",\"user_id\":\"u1\",\"last_seen\":null,\"code\":404}");
    b.len = 0;
    th_api_render_result(&b, 404, "u1", 2, "n1", 2, 0, 1, 1762596449ULL * 1000000000ULL, 0);
    cr_assert_str_eq(
        b.p,
        "{\"status\":\"not_connected\",\"user_id\":\"u1\",\"last_seen\":\"2025-11-08T10:07:29Z\"}");
    b.len = 0;
    th_api_render_result(&b, 503, "u\"1", 3, "n1", 2, 0, 0, 0, 0);
    cr_assert_str_eq(b.p, "{\"status\":\"unavailable\",\"user_id\":\"u\\\"1\",\"id\":\"n1\"}");
    b.len = 0;
    th_api_render_error(&b, "bad \"x\"\n", 400, 1);
    cr_assert_str_eq(b.p, "{\"error\":\"bad \\\"x\\\"\\u000a\",\"code\":400}");
    th_buf_free(&b);
}

Test(notify, ttl_s)
{
    struct th_notify n;
    json_t *root;
    char err[256];
    cr_assert_eq(check("{\"user_id\":\"u\",\"type\":\"t\"}", &n, &root, err), 0);
    cr_assert_eq(n.has_ttl, 0);
    json_decref(root);
    cr_assert_eq(check("{\"user_id\":\"u\",\"type\":\"t\",\"ttl_s\":0}", &n, &root, err), 0);
    cr_assert_eq(n.has_ttl, 1);
    cr_assert_eq(n.ttl_s, 0);
    json_decref(root);
    cr_assert_eq(check("{\"user_id\":\"u\",\"type\":\"t\",\"ttl_s\":90}", &n, &root, err), 0);
    cr_assert_eq(n.ttl_s, 90);
    json_decref(root);
    const char *bad[] = {"-1", "1.5", "\"5\"", "true", "4294967296"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char body[128];
        snprintf(body, sizeof(body), "{\"user_id\":\"u\",\"type\":\"t\",\"ttl_s\":%s}", bad[i]);
        cr_assert_eq(check(body, &n, &root, err), -EINVAL, "%s", bad[i]);
        cr_assert(strstr(err, "ttl_s"), "%s", err);
    }
}

Test(render, frame_with_seq_and_epoch)
{
    struct th_notify n = {.type = "t", .tlen = 1, .seq = 17, .epoch = "3d15540311ddfde9"};
    size_t len;
    char *f = th_api_render_frame(&n, "i", 1, 1762596449ULL * 1000000000ULL, &len);
    cr_assert_str_eq(f, "{\"type\":\"t\",\"id\":\"i\",\"seq\":17,\"epoch\":\"3d15540311ddfde9\","
                        "\"timestamp\":\"2025-11-08T10:07:29Z\",\"data\":{}}");
    free(f);
}

Test(render, stored_and_seq_results)
{
    struct th_buf b = {0};
    struct th_api_result r = {.status = TH_OUT_STORED,
                              .user = "u1",
                              .ulen = 2,
                              .id = "n1",
                              .idlen = 2,
                              .seq = 18,
                              .expires_in_s = 120};
    th_api_render_outcome(&b, &r, 0);
    cr_assert_str_eq(b.p, "{\"status\":\"stored\",\"user_id\":\"u1\",\"id\":\"n1\",\"seq\":18,"
                          "\"expires_in_s\":120,\"last_seen\":null}");
    b.len = 0;
    r = (struct th_api_result){
        .status = 200, .user = "u1", .ulen = 2, .id = "n1", .idlen = 2, .seq = 3, .connections = 2};
    th_api_render_outcome(&b, &r, 1);
    cr_assert_str_eq(b.p, "{\"status\":\"delivered\",\"user_id\":\"u1\",\"id\":\"n1\",\"seq\":3,"
                          "\"connections\":2,\"code\":200}");
    b.len = 0;
    r.status = 404; /* nothing stored: no seq to tell */
    th_api_render_outcome(&b, &r, 0);
    cr_assert_str_eq(b.p, "{\"status\":\"not_connected\",\"user_id\":\"u1\",\"last_seen\":null}");
    th_buf_free(&b);
}

Test(render, pct_decode)
{
    char out[8];
    cr_assert_eq(th_api_pct_decode("a%20b", 5, out, sizeof(out)), 3);
    cr_assert_eq(memcmp(out, "a b", 3), 0);
    cr_assert_eq(th_api_pct_decode("a%2", 3, out, sizeof(out)), -EINVAL);
    cr_assert_eq(th_api_pct_decode("a%zz", 4, out, sizeof(out)), -EINVAL);
    cr_assert_eq(th_api_pct_decode("123456789", 9, out, sizeof(out)), -ENOSPC);
}

Test(render, json_str_always_valid_utf8)
{
    struct th_buf b = {0};
    /* valid 2-, 3- and 4-byte sequences pass through; stray, truncated,
     * overlong and surrogate bytes become U+FFFD */
    const char in[] =
        "a\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80|\xff|\xc3|\xc0\xaf|\xed\xa0\x80|\xe2\x82";
    th_buf_json_str(&b, in, sizeof(in) - 1);
    json_error_t je;
    json_t *j = json_loadb(b.p, b.len, JSON_DECODE_ANY, &je);
    cr_assert(json_is_string(j), "not a JSON string: %s (%s)", b.p, je.text);
    cr_assert_str_eq(json_string_value(j),
                     "a\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80|\xef\xbf\xbd|\xef\xbf\xbd|"
                     "\xef\xbf\xbd\xef\xbf\xbd|\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd|"
                     "\xef\xbf\xbd\xef\xbf\xbd");
    json_decref(j);
    th_buf_free(&b);
}

Test(frame, partial_body_reports_accepted_head)
{
    struct th_api_req r;
    const char *why;
    const char *head =
        "POST /v1/notify HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n";
    cr_assert_eq(frame(head, &r, &why), TH_API_PARTIAL);
    cr_assert_eq(r.head_len, strlen(head));
    cr_assert_eq(frame("POST /v1/notify HTTP/1.1\r\nContent-Le", &r, &why), TH_API_PARTIAL);
    cr_assert_eq(r.head_len, 0);
}
