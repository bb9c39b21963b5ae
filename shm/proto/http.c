/*
 * A bounded HTTP/1.1 request-head parser (see http.h for the API).
 *
 * Two passes, each over the bytes once: while the head is incomplete we only
 * look for its end (CRLFCRLF), remembering in req->scanned how far we got so
 * a head trickling in byte by byte costs O(n) in total, not O(n^2). Once the
 * whole head is there it is parsed in one go into slices of the caller's
 * buffer.
 *
 * Strictness, chosen because both listeners face untrusted peers and a lax
 * parser is how request smuggling starts:
 * - every line must end in CRLF; a bare LF anywhere in the head is
 *   TH_HTTP_BAD (detected while scanning, so it fails early);
 * - method and header names must be RFC 9110 tokens; no whitespace before
 *   the colon; obsolete line folding (a line starting with SP or HTAB) is bad;
 * - header values may hold VCHAR, obs-text, SP and HTAB only (no NUL or other
 *   control characters); the request target must be 1+ visible ASCII bytes;
 * - only HTTP/1.0 and HTTP/1.1.
 * The head, CRLFCRLF included, may be at most max_head bytes; more, or more
 * than TH_HTTP_MAX_HEADERS header lines, is TH_HTTP_TOO_BIG.
 */
#include "shm/proto/http.h"

#include <errno.h>

#include <string.h>

/* RFC 9110 tchar: "!#$%&'*+-.^_`|~" plus DIGIT and ALPHA. */
static int is_tchar(unsigned char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return 1;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static int is_value_char(unsigned char c)
{
    return c == '\t' || (c >= 0x20 && c != 0x7f);
}

static unsigned char lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c;
}

/*
 * Look for the end of the head in buf[req->scanned..limit). Every LF seen
 * must follow a CR. Returns the head length, 0 if not found yet, -1 if bad.
 */
static size_t find_head_end(struct th_http_req *req, const char *buf, size_t limit, int *bad)
{
    size_t i = req->scanned;
    while (i < limit) {
        const char *lf = memchr(buf + i, '\n', limit - i);
        if (!lf)
            break;
        size_t at = (size_t)(lf - buf);
        if (at == 0 || buf[at - 1] != '\r') {
            *bad = 1;
            return 0;
        }
        /* The head ends at the first empty line: CRLF right after a CRLF. */
        if (at >= 3 && buf[at - 2] == '\n' && buf[at - 3] == '\r')
            return at + 1;
        i = at + 1;
    }
    req->scanned = limit;
    return 0;
}

static int parse_version(const char *p, size_t n, int *minor)
{
    if (n != 8 || memcmp(p, "HTTP/1.", 7) != 0 || (p[7] != '0' && p[7] != '1'))
        return -EINVAL;
    *minor = p[7] - '0';
    return 0;
}

/* "METHOD SP target SP HTTP/1.x" (line without its CRLF). */
static int parse_request_line(struct th_http_req *req, const char *p, size_t n)
{
    size_t i = 0;
    while (i < n && is_tchar((unsigned char)p[i]))
        i++;
    if (i == 0 || i == n || p[i] != ' ')
        return -EINVAL;
    req->method = (struct th_str){p, i};
    size_t t = ++i;
    while (i < n && (unsigned char)p[i] > 0x20 && (unsigned char)p[i] < 0x7f)
        i++;
    if (i == t || i == n || p[i] != ' ')
        return -EINVAL;
    req->target = (struct th_str){p + t, i - t};
    const char *q = memchr(req->target.p, '?', req->target.n);
    size_t plen = q ? (size_t)(q - req->target.p) : req->target.n;
    req->path = (struct th_str){req->target.p, plen};
    if (q)
        req->query = (struct th_str){q + 1, req->target.n - plen - 1};
    else
        req->query = (struct th_str){req->target.p + req->target.n, 0};
    return parse_version(p + i + 1, n - i - 1, &req->minor_version);
}

/* "name: value" (line without its CRLF); value trimmed of SP/HTAB. */
static int parse_header_line(struct th_http_header *h, const char *p, size_t n)
{
    size_t i = 0;
    while (i < n && is_tchar((unsigned char)p[i]))
        i++;
    if (i == 0 || i == n || p[i] != ':')
        return -EINVAL; /* also catches obs-fold (leading SP/HTAB) and "name :" */
    h->name = (struct th_str){p, i};
    size_t b = i + 1, e = n;
    for (size_t k = b; k < e; k++)
        if (!is_value_char((unsigned char)p[k]))
            return -EINVAL;
    while (b < e && (p[b] == ' ' || p[b] == '\t'))
        b++;
    while (e > b && (p[e - 1] == ' ' || p[e - 1] == '\t'))
        e--;
    h->value = (struct th_str){p + b, e - b};
    return 0;
}

/* Parse the complete head buf[0..head_len), which ends in CRLFCRLF. */
static int parse_head(struct th_http_req *req, const char *buf, size_t head_len)
{
    const char *end = buf + head_len - 2; /* the final empty line's CRLF */
    const char *eol = memchr(buf, '\r', (size_t)(end - buf));
    if (!eol || eol[1] != '\n' || parse_request_line(req, buf, (size_t)(eol - buf)) < 0)
        return TH_HTTP_BAD;
    req->nheaders = 0;
    for (const char *p = eol + 2; p < end; p = eol + 2) {
        eol = memchr(p, '\r', (size_t)(end - p));
        /* Every LF follows a CR (checked while scanning), so a CR not before LF is bad. */
        if (!eol || eol[1] != '\n')
            return TH_HTTP_BAD;
        if (req->nheaders == TH_HTTP_MAX_HEADERS)
            return TH_HTTP_TOO_BIG;
        if (parse_header_line(&req->headers[req->nheaders++], p, (size_t)(eol - p)) < 0)
            return TH_HTTP_BAD;
    }
    return (int)head_len;
}

int th_http_parse_request(struct th_http_req *req, const char *buf, size_t len, size_t max_head)
{
    if (max_head == 0 || max_head > TH_HTTP_MAX_HEAD)
        max_head = TH_HTTP_MAX_HEAD;
    size_t limit = len < max_head ? len : max_head;
    if (req->scanned > limit)
        req->scanned = 0; /* a stale resume point from another request: start over */
    int bad = 0;
    size_t head_len = find_head_end(req, buf, limit, &bad);
    if (bad)
        return TH_HTTP_BAD;
    if (head_len == 0)
        return len >= max_head ? TH_HTTP_TOO_BIG : TH_HTTP_PARTIAL;
    return parse_head(req, buf, head_len);
}

int th_str_ieq(const struct th_str *s, const char *c)
{
    size_t n = strlen(c);
    if (s->n != n)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (lower((unsigned char)s->p[i]) != lower((unsigned char)c[i]))
            return 0;
    return 1;
}

const struct th_str *th_http_header(const struct th_http_req *req, const char *name)
{
    for (size_t i = 0; i < req->nheaders; i++)
        if (th_str_ieq(&req->headers[i].name, name))
            return &req->headers[i].value;
    return NULL;
}

int th_http_has_token(const struct th_str *value, const char *token)
{
    const char *p = value->p, *end = value->p + value->n;
    while (p < end) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *e = comma ? comma : end;
        const char *b = p;
        while (b < e && (*b == ' ' || *b == '\t'))
            b++;
        const char *t = e;
        while (t > b && (t[-1] == ' ' || t[-1] == '\t'))
            t--;
        struct th_str item = {b, (size_t)(t - b)};
        if (th_str_ieq(&item, token))
            return 1;
        p = comma ? comma + 1 : end;
    }
    return 0;
}

int th_http_query_param(const struct th_str *query, const char *name, struct th_str *out)
{
    size_t nlen = strlen(name);
    const char *p = query->p, *end = query->p + query->n;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *e = amp ? amp : end;
        const char *eq = memchr(p, '=', (size_t)(e - p));
        const char *ke = eq ? eq : e;
        if ((size_t)(ke - p) == nlen && memcmp(p, name, nlen) == 0) {
            /* "name" alone counts as present with an empty value. */
            *out = eq ? (struct th_str){eq + 1, (size_t)(e - eq - 1)} : (struct th_str){e, 0};
            return 1;
        }
        p = amp ? amp + 1 : end;
    }
    return 0;
}

const char *th_http_reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 202:
        return "Accepted";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 411:
        return "Length Required";
    case 413:
        return "Payload Too Large";
    case 426:
        return "Upgrade Required";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 503:
        return "Service Unavailable";
    default:
        return "Unknown";
    }
}
