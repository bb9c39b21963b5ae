/*
 * Unit tests of the HTTP request-head parser (shm/proto/http.c): a real
 * upgrade request, every partial prefix, the size and header-count limits,
 * malformed lines, and the header/query helpers. Every input is parsed from
 * a guarded copy, so reading past the given length crashes the test.
 */
#include "shm/proto/http.h"
#include "tests/shm/proto/guard.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

static const char upgrade_req[] = "GET /ws?x=1&token=abc.def.ghi&empty=&flag HTTP/1.1\r\n"
                                  "Host: example.com:8080\r\n"
                                  "Upgrade: websocket\r\n"
                                  "Connection: keep-alive, Upgrade\r\n"
                                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                                  "Sec-WebSocket-Version: 13\r\n"
                                  "Authorization:  \t Bearer tok \t\r\n"
                                  "X-Empty:\r\n"
                                  "\r\n";

/*
 * Parse s[0..n) from a guarded copy with a fresh request. The copy stays
 * mapped until the next call, since the request's slices point into it.
 */
static int parse_n(struct th_http_req *req, const char *s, size_t n, size_t max_head)
{
    static struct guard g;
    guard_free(&g);
    const char *p = (const char *)guard_copy(&g, s, n);
    memset(req, 0, sizeof(*req));
    return th_http_parse_request(req, p, n, max_head);
}

static int parse(const char *s)
{
    struct th_http_req req;
    return parse_n(&req, s, strlen(s), TH_HTTP_MAX_HEAD);
}

static void expect_str(const struct th_str *s, const char *want)
{
    cr_assert(s != NULL, "expected \"%s\", got NULL", want);
    cr_assert(s->n == strlen(want) && memcmp(s->p, want, s->n) == 0,
              "expected \"%s\", got \"%.*s\"", want, (int)s->n, s->p);
}

Test(http, upgrade_request_fields)
{
    size_t n = strlen(upgrade_req);
    struct guard g;
    const char *p = (const char *)guard_copy(&g, upgrade_req, n);
    struct th_http_req req = {0};
    cr_assert_eq(th_http_parse_request(&req, p, n, TH_HTTP_MAX_HEAD), (int)n);
    expect_str(&req.method, "GET");
    expect_str(&req.target, "/ws?x=1&token=abc.def.ghi&empty=&flag");
    expect_str(&req.path, "/ws");
    expect_str(&req.query, "x=1&token=abc.def.ghi&empty=&flag");
    cr_assert_eq(req.minor_version, 1);
    cr_assert_eq(req.nheaders, 7);
    expect_str(&req.headers[0].name, "Host");
    expect_str(th_http_header(&req, "host"), "example.com:8080");
    expect_str(th_http_header(&req, "UPGRADE"), "websocket");
    expect_str(th_http_header(&req, "authorization"), "Bearer tok");
    expect_str(th_http_header(&req, "x-empty"), "");
    cr_assert_null(th_http_header(&req, "cookie"));
    cr_assert(th_http_has_token(th_http_header(&req, "connection"), "upgrade"));
    cr_assert(th_http_has_token(th_http_header(&req, "connection"), "Keep-Alive"));
    guard_free(&g);
}

Test(http, returns_head_length_not_buffer_length)
{
    char buf[512];
    int n = snprintf(buf, sizeof(buf), "POST /v1/notify HTTP/1.0\r\nContent-Length: 4\r\n\r\nbody");
    struct th_http_req req;
    cr_assert_eq(parse_n(&req, buf, (size_t)n, TH_HTTP_MAX_HEAD), n - 4);
    cr_assert_eq(req.minor_version, 0);
    expect_str(&req.query, "");
    expect_str(&req.path, "/v1/notify");
}

Test(http, every_prefix_is_partial)
{
    size_t n = strlen(upgrade_req);
    for (size_t i = 0; i < n; i++) {
        struct th_http_req req;
        cr_assert_eq(parse_n(&req, upgrade_req, i, TH_HTTP_MAX_HEAD), TH_HTTP_PARTIAL,
                     "prefix of %zu bytes", i);
    }
}

Test(http, incremental_resume_does_not_rescan)
{
    size_t n = strlen(upgrade_req);
    struct th_http_req req = {0};
    for (size_t i = 1; i < n; i++) {
        struct guard g;
        const char *p = (const char *)guard_copy(&g, upgrade_req, i);
        cr_assert_eq(th_http_parse_request(&req, p, i, TH_HTTP_MAX_HEAD), TH_HTTP_PARTIAL);
        /* The resume point moved to the end of what was given. */
        cr_assert_eq(req.scanned, i, "scanned %zu after %zu bytes", req.scanned, i);
        guard_free(&g);
    }
    cr_assert_eq(th_http_parse_request(&req, upgrade_req, n, TH_HTTP_MAX_HEAD), (int)n);
    expect_str(th_http_header(&req, "sec-websocket-version"), "13");
}

Test(http, split_in_two_at_every_point)
{
    size_t n = strlen(upgrade_req);
    for (size_t i = 1; i < n; i++) {
        struct th_http_req req = {0};
        cr_assert_eq(th_http_parse_request(&req, upgrade_req, i, 0), TH_HTTP_PARTIAL);
        cr_assert_eq(th_http_parse_request(&req, upgrade_req, n, 0), (int)n, "split at %zu", i);
        cr_assert_eq(req.nheaders, 7);
    }
}

/* A request whose head is exactly `total` bytes, padded in one header. */
static size_t make_sized(char *buf, size_t total)
{
    const char *pre = "GET / HTTP/1.1\r\nX-Pad: ";
    size_t fixed = strlen(pre) + 4;
    memcpy(buf, pre, strlen(pre));
    memset(buf + strlen(pre), 'a', total - fixed);
    memcpy(buf + total - 4, "\r\n\r\n", 4);
    return total;
}

Test(http, head_size_limit)
{
    static char buf[TH_HTTP_MAX_HEAD + 64];
    struct th_http_req req;
    size_t n = make_sized(buf, TH_HTTP_MAX_HEAD);
    cr_assert_eq(parse_n(&req, buf, n, TH_HTTP_MAX_HEAD), TH_HTTP_MAX_HEAD);
    n = make_sized(buf, TH_HTTP_MAX_HEAD + 1);
    cr_assert_eq(parse_n(&req, buf, n, TH_HTTP_MAX_HEAD), TH_HTTP_TOO_BIG);
    /* No end in sight: partial below the limit, too big at it. */
    cr_assert_eq(parse_n(&req, buf, TH_HTTP_MAX_HEAD - 1, TH_HTTP_MAX_HEAD), TH_HTTP_PARTIAL);
    cr_assert_eq(parse_n(&req, buf, TH_HTTP_MAX_HEAD, TH_HTTP_MAX_HEAD), TH_HTTP_TOO_BIG);
    /* A smaller caller limit, and a larger one clamped to TH_HTTP_MAX_HEAD. */
    n = make_sized(buf, 1025);
    cr_assert_eq(parse_n(&req, buf, n, 1024), TH_HTTP_TOO_BIG);
    cr_assert_eq(parse_n(&req, buf, n, 1025), 1025);
    n = make_sized(buf, TH_HTTP_MAX_HEAD + 1);
    cr_assert_eq(parse_n(&req, buf, n, 1 << 20), TH_HTTP_TOO_BIG);
}

static size_t make_headers(char *buf, int count)
{
    size_t n = (size_t)sprintf(buf, "GET /ws HTTP/1.1\r\n");
    for (int i = 0; i < count; i++)
        n += (size_t)sprintf(buf + n, "X-H%d: v%d\r\n", i, i);
    n += (size_t)sprintf(buf + n, "\r\n");
    return n;
}

Test(http, header_count_limit)
{
    static char buf[4096];
    struct th_http_req req;
    size_t n = make_headers(buf, TH_HTTP_MAX_HEADERS);
    cr_assert_eq(parse_n(&req, buf, n, 0), (int)n);
    cr_assert_eq(req.nheaders, TH_HTTP_MAX_HEADERS);
    expect_str(th_http_header(&req, "x-h63"), "v63");
    n = make_headers(buf, TH_HTTP_MAX_HEADERS + 1);
    cr_assert_eq(parse_n(&req, buf, n, 0), TH_HTTP_TOO_BIG);
}

Test(http, malformed_request_lines)
{
    static const char *bad[] = {
        "\r\n\r\n",
        " GET / HTTP/1.1\r\n\r\n",
        "GET  / HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1 \r\n\r\n",
        "GET /  HTTP/1.1\r\n\r\n",
        "GET\r\n\r\n",
        "GET /\r\n\r\n",
        "GET / \r\n\r\n",
        "GE(T / HTTP/1.1\r\n\r\n",
        "G\x01T / HTTP/1.1\r\n\r\n",
        "GET /a\x7f HTTP/1.1\r\n\r\n",
        "GET /a\x80 HTTP/1.1\r\n\r\n",
        "GET /\tx HTTP/1.1\r\n\r\n",
        "GET / HTTP/2.0\r\n\r\n",
        "GET / HTTP/1.10\r\n\r\n",
        "GET / HTTP/1.9\r\n\r\n", /* only 1.0 and 1.1 exist */
        "GET / HTTP/1.2\r\n\r\n",
        "GET / HTTP/1.x\r\n\r\n",
        "GET / http/1.1\r\n\r\n",
        "GET / HTTP/1.1\rX\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        cr_assert_eq(parse(bad[i]), TH_HTTP_BAD, "case %zu: \"%s\"", i, bad[i]);
}

Test(http, malformed_header_lines)
{
    static const char *bad[] = {
        "GET / HTTP/1.1\r\nHost : x\r\n\r\n", /* space before colon */
        "GET / HTTP/1.1\r\n: x\r\n\r\n",      /* empty name */
        "GET / HTTP/1.1\r\nNoColon\r\n\r\n",
        "GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n", /* obsolete line folding */
        "GET / HTTP/1.1\r\nA: b\r\n\tfolded\r\n\r\n",
        "GET / HTTP/1.1\r\n Host: x\r\n\r\n",
        "GET / HTTP/1.1\r\nA: b\x01\r\n\r\n",
        "GET / HTTP/1.1\r\nA: b\x7f\r\n\r\n",
        "GET / HTTP/1.1\r\nA: b\rc\r\n\r\n", /* bare CR */
        "GET / HTTP/1.1\r\nA(b: c\r\n\r\n",  /* not a token */
        "GET / HTTP/1.1\r\nA\x80: c\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        cr_assert_eq(parse(bad[i]), TH_HTTP_BAD, "case %zu", i);
    /* NUL inside a value (strlen would stop there, so give the length). */
    static const char nul[] = "GET / HTTP/1.1\r\nA: b\0c\r\n\r\n";
    struct th_http_req req;
    cr_assert_eq(parse_n(&req, nul, sizeof(nul) - 1, 0), TH_HTTP_BAD);
}

Test(http, bare_lf_is_bad_even_before_the_head_ends)
{
    cr_assert_eq(parse("GET / HTTP/1.1\n\n"), TH_HTTP_BAD);
    cr_assert_eq(parse("GET / HTTP/1.1\r\nHost: x\n\r\n"), TH_HTTP_BAD);
    /* Detected while scanning: no need to wait for a CRLFCRLF that never comes. */
    cr_assert_eq(parse("GET / HTTP/1.1\nHost: x"), TH_HTTP_BAD);
    cr_assert_eq(parse("\n"), TH_HTTP_BAD);
}

Test(http, tolerated_forms)
{
    struct th_http_req req;
    const char *s = "OPTIONS * HTTP/1.1\r\nX-Obs: caf\xc3\xa9\r\nX-Tab:\tv\t1\t\r\n\r\n";
    cr_assert_eq(parse_n(&req, s, strlen(s), 0), (int)strlen(s));
    expect_str(&req.target, "*");
    expect_str(th_http_header(&req, "x-obs"), "caf\xc3\xa9");
    expect_str(th_http_header(&req, "x-tab"), "v\t1");
    /* The first of repeated headers wins. */
    s = "GET / HTTP/1.1\r\nA: 1\r\na: 2\r\n\r\n";
    cr_assert_eq(parse_n(&req, s, strlen(s), 0), (int)strlen(s));
    expect_str(th_http_header(&req, "A"), "1");
}

Test(http, query_params)
{
    struct th_str q = {"x=1&token=abc.def&empty=&flag&tokenx=no&=v", 0}, out;
    q.n = strlen(q.p);
    cr_assert(th_http_query_param(&q, "token", &out));
    expect_str(&out, "abc.def");
    cr_assert(th_http_query_param(&q, "x", &out));
    expect_str(&out, "1");
    cr_assert(th_http_query_param(&q, "empty", &out));
    expect_str(&out, "");
    cr_assert(th_http_query_param(&q, "flag", &out));
    expect_str(&out, "");
    cr_assert_not(th_http_query_param(&q, "tok", &out));
    cr_assert_not(th_http_query_param(&q, "missing", &out));
    cr_assert_not(th_http_query_param(&q, "Token", &out), "names are case-sensitive");
    struct th_str none = {"", 0};
    cr_assert_not(th_http_query_param(&none, "token", &out));
    /* The value ends at the slice's end, not at a NUL further on. */
    struct th_str cut = {"token=abcdef", 9};
    cr_assert(th_http_query_param(&cut, "token", &out));
    expect_str(&out, "abc");
}

Test(http, has_token)
{
    struct {
        const char *value, *token;
        int want;
    } cases[] = {
        {"Upgrade", "upgrade", 1},          {"keep-alive, Upgrade", "upgrade", 1},
        {" upgrade ,\tclose ", "close", 1}, {"upgrades", "upgrade", 0},
        {"up grade", "upgrade", 0},         {"", "upgrade", 0},
        {",,upgrade,,", "upgrade", 1},      {"keep-alive", "upgrade", 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct th_str v = {cases[i].value, strlen(cases[i].value)};
        cr_assert_eq(th_http_has_token(&v, cases[i].token), cases[i].want, "case %zu", i);
    }
}

Test(http, str_ieq)
{
    struct th_str s = {"WebSocket", 9};
    cr_assert(th_str_ieq(&s, "websocket"));
    cr_assert(th_str_ieq(&s, "WEBSOCKET"));
    cr_assert_not(th_str_ieq(&s, "websockets"));
    cr_assert_not(th_str_ieq(&s, "websocke"));
    struct th_str e = {"", 0};
    cr_assert(th_str_ieq(&e, ""));
}
