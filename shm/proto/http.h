/*
 * A bounded HTTP/1.1 request-head parser, shared by the socket workers (the
 * WebSocket upgrade, /healthz) and the notifier (the backend API).
 *
 * Nothing allocates: the caller owns the request struct, and every string
 * points into the caller's buffer. Partial input is normal: call again with
 * the same buffer grown by the new bytes; req->scanned remembers how far the
 * search for the end of the head got, so bytes are not rescanned.
 */
#ifndef TETHER_SHM_PROTO_HTTP_H
#define TETHER_SHM_PROTO_HTTP_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>

#define TH_HTTP_MAX_HEAD 8192
#define TH_HTTP_MAX_HEADERS 64

/* th_http_parse_request's failures, negative errno like every internal function. */
enum {
    TH_HTTP_BAD = -EINVAL,       /* malformed: answer 400 */
    TH_HTTP_PARTIAL = -EAGAIN,   /* need more bytes */
    TH_HTTP_TOO_BIG = -EMSGSIZE, /* head over max bytes or over 64 headers: answer 431 */
};

struct th_str {
    const char *p;
    size_t n;
};

struct th_http_header {
    struct th_str name, value; /* value trimmed of surrounding spaces and tabs */
};

struct th_http_req {
    struct th_str method, target; /* target as sent, e.g. "/ws?token=..." */
    struct th_str path, query;    /* target split at '?' (query without the '?') */
    int minor_version;            /* HTTP/1.x */
    size_t nheaders;
    struct th_http_header headers[TH_HTTP_MAX_HEADERS];
    size_t scanned; /* resume point for the end-of-head search; 0 to start */
};

/*
 * Parse the request head at buf[0..len). max_head bounds the head
 * (at most TH_HTTP_MAX_HEAD). Returns the head's length including the final
 * CRLFCRLF (> 0), or one of TH_HTTP_BAD / TH_HTTP_PARTIAL / TH_HTTP_TOO_BIG.
 */
int th_http_parse_request(struct th_http_req *req, const char *buf, size_t len, size_t max_head);

/* First header with this name (case-insensitive), or NULL. */
const struct th_str *th_http_header(const struct th_http_req *req, const char *name);
/* Does a comma-separated header value contain token (case-insensitive)? */
int th_http_has_token(const struct th_str *value, const char *token);
/* Value of a query parameter (not percent-decoded; JWTs need none). 1 found, 0 not. */
int th_http_query_param(const struct th_str *query, const char *name, struct th_str *out);
/* Case-insensitive equality of a th_str with a C string. */
int th_str_ieq(const struct th_str *s, const char *c);
/* Reason phrase of a status tether sends ("Not Found"); "Unknown" for others. */
const char *th_http_reason(int status);

#endif
