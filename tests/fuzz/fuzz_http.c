/*
 * Fuzz target for the HTTP request-head parser (shm/proto/http.h).
 *
 * The first input byte picks max_head (small values reach the size limit
 * quickly) and seeds the split points; the rest is the request stream. Each
 * input is parsed whole, then fed incrementally the way the workers do it
 * (the same request struct, the buffer growing by chunks, each step an
 * exact-size copy so over-reads are caught), and both must agree. On
 * success every slice must lie inside the head, the head must end at the
 * first CRLFCRLF, and the helper functions are run on what was parsed.
 */
#include "tests/fuzz/fuzz.h"
#include "shm/proto/http.h"

static const size_t max_heads[8] = {0, 1, 4, 17, 64, 300, TH_HTTP_MAX_HEAD, TH_HTTP_MAX_HEAD + 1};

static void check_in(const struct th_str *s, const char *buf, size_t head, const char *what)
{
    FUZZ_CHECK(s->p >= buf && s->p + s->n <= buf + head, "%s outside the head", what);
}

static const uint8_t *find4(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i + 4 <= n; i++)
        if (memcmp(p + i, "\r\n\r\n", 4) == 0)
            return p + i;
    return NULL;
}

static void check_parsed(const struct th_http_req *req, const char *buf, size_t len, int r,
                         size_t max_head)
{
    size_t head = (size_t)r;
    FUZZ_CHECK(head <= len && head <= max_head && head >= 4, "head %zu len %zu max %zu", head, len,
               max_head);
    FUZZ_CHECK(find4((const uint8_t *)buf, len) == (const uint8_t *)buf + head - 4,
               "head does not end at the first CRLFCRLF");
    check_in(&req->method, buf, head, "method");
    check_in(&req->target, buf, head, "target");
    check_in(&req->path, buf, head, "path");
    check_in(&req->query, buf, head, "query");
    FUZZ_CHECK(req->method.n > 0 && req->target.n > 0, "empty method or target");
    FUZZ_CHECK(req->path.p == req->target.p, "path does not start the target");
    int has_q = req->path.n < req->target.n;
    FUZZ_CHECK(req->path.n + (has_q ? 1 + req->query.n : 0) == req->target.n,
               "path+query != target");
    FUZZ_CHECK(!memchr(req->path.p, '?', req->path.n), "'?' in path");
    FUZZ_CHECK(req->minor_version >= 0 && req->minor_version <= 9, "minor %d", req->minor_version);
    FUZZ_CHECK(req->nheaders <= TH_HTTP_MAX_HEADERS, "nheaders %zu", req->nheaders);
    for (size_t i = 0; i < req->nheaders; i++) {
        const struct th_http_header *h = &req->headers[i];
        check_in(&h->name, buf, head, "header name");
        check_in(&h->value, buf, head, "header value");
        FUZZ_CHECK(h->name.n > 0, "empty header name");
        if (h->value.n) {
            char a = h->value.p[0], z = h->value.p[h->value.n - 1];
            FUZZ_CHECK(a != ' ' && a != '\t' && z != ' ' && z != '\t', "value not trimmed");
        }
        FUZZ_CHECK(!memchr(h->value.p, '\r', h->value.n) && !memchr(h->value.p, '\n', h->value.n),
                   "CR or LF inside a header value");
        (void)th_http_has_token(&h->value, "upgrade");
        const struct th_str *first = th_http_header(req, "connection");
        if (first)
            check_in(first, buf, head, "th_http_header result");
    }
    struct th_str tok;
    if (th_http_query_param(&req->query, "token", &tok))
        FUZZ_CHECK(tok.p >= req->query.p && tok.p + tok.n <= req->query.p + req->query.n,
                   "query param outside the query");
}

/* Consistency of a non-success result with the bytes. */
static void check_failed(const char *buf, size_t len, int r, size_t max_head)
{
    size_t limit = len < max_head ? len : max_head;
    const uint8_t *end = find4((const uint8_t *)buf, limit);
    if (r == TH_HTTP_PARTIAL)
        FUZZ_CHECK(!end && len < max_head, "PARTIAL with a complete head or at the limit");
    else if (r == TH_HTTP_TOO_BIG && !end)
        FUZZ_CHECK(len >= max_head, "TOO_BIG without reaching the limit");
    else
        FUZZ_CHECK(r == TH_HTTP_BAD || r == TH_HTTP_TOO_BIG, "unknown result %d", r);
}

static size_t offset_of(const struct th_str *s, const char *buf)
{
    return (size_t)(s->p - buf);
}

/* The incremental run must end where the whole run did, with the same slices. */
static void check_same(const struct th_http_req *a, const char *abuf, const struct th_http_req *b,
                       const char *bbuf)
{
    FUZZ_CHECK(offset_of(&a->target, abuf) == offset_of(&b->target, bbuf) &&
                   a->target.n == b->target.n && a->query.n == b->query.n &&
                   a->nheaders == b->nheaders && a->minor_version == b->minor_version,
               "incremental parse differs from whole parse");
    for (size_t i = 0; i < a->nheaders; i++)
        FUZZ_CHECK(offset_of(&a->headers[i].value, abuf) == offset_of(&b->headers[i].value, bbuf) &&
                       a->headers[i].value.n == b->headers[i].value.n,
                   "header %zu differs between whole and incremental parse", i);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint32_t seed = data[0] * 2654435761u + (uint32_t)size;
    size_t max_head = max_heads[data[0] & 7];
    size_t eff = max_head == 0 || max_head > TH_HTTP_MAX_HEAD ? TH_HTTP_MAX_HEAD : max_head;
    int byte_at_a_time = (data[0] & 0x18) == 0x18 && size <= 2048;
    data++, size--;

    char *whole = (char *)fuzz_dup(data, size);
    struct th_http_req wreq;
    memset(&wreq, 0, sizeof(wreq));
    int wr = th_http_parse_request(&wreq, whole, size, max_head);
    if (wr > 0)
        check_parsed(&wreq, whole, size, wr, eff);
    else
        check_failed(whole, size, wr, eff);

    struct th_http_req ireq;
    memset(&ireq, 0, sizeof(ireq));
    size_t len = 0;
    int ir = TH_HTTP_PARTIAL;
    char *step = NULL;
    while (ir == TH_HTTP_PARTIAL && len < size) {
        size_t grow = byte_at_a_time ? 1 : 1 + fuzz_rand(&seed) % (size / 4 + 1);
        len = len + grow > size ? size : len + grow;
        free(step);
        step = (char *)fuzz_dup(data, len);
        ir = th_http_parse_request(&ireq, step, len, max_head);
    }
    if (len < size || size == 0) {
        /* Stopped early: the verdict on a prefix must be the verdict on the whole. */
        if (size == 0)
            ir = th_http_parse_request(&ireq, whole, 0, max_head);
        FUZZ_CHECK(ir == wr, "prefix of %zu bytes gave %d, whole %zu bytes gave %d", len, ir, size,
                   wr);
    } else {
        FUZZ_CHECK(ir == wr, "incremental gave %d, whole gave %d", ir, wr);
    }
    if (wr > 0)
        check_same(&wreq, whole, &ireq, step);
    free(step);
    free(whole);
    return 0;
}
