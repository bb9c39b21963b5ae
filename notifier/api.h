/*
 * The backend API's pure half: framing one HTTP request out of a byte
 * stream, validating notify bodies and rendering every JSON the notifier
 * sends (notification frames, replies). Nothing here does I/O, touches the
 * registry or keeps state, so the unit tests and the fuzzers drive it
 * directly; notifier/server.c wires it to sockets.
 *
 * Fuzzing entry points: th_api_frame() (request framing) and
 * th_api_parse_notify() (a notify body).
 */
#ifndef TETHER_NOTIFIER_API_H
#define TETHER_NOTIFIER_API_H

#include "shm/proto/http.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#define TH_API_MAX_NOTIFY_BODY (64u * 1024u)   /* POST /v1/notify and every other path */
#define TH_API_MAX_BATCH_BODY (1024u * 1024u)  /* POST /v1/notify/batch */
#define TH_API_MAX_FRAME (64u * 1024u + 1024u) /* one rendered notification frame */
#define TH_API_MAX_ID 128u                     /* notification id bytes */
#define TH_API_MAX_BATCH_ITEMS 10000u          /* notifications in one batch */

enum th_api_route {
    TH_API_NOTIFY = 1,
    TH_API_BATCH,
    TH_API_PRESENCE,
    TH_API_HEALTHZ,
    TH_API_METRICS,
};

/* One framed request. Every pointer points into the caller's buffer. */
struct th_api_req {
    struct th_http_req http;
    size_t head_len, body_len; /* total = head_len + body_len */
    const char *body;
    int keep_alive;              /* HTTP/1.1 default, Connection: close/keep-alive */
    int route;                   /* enum th_api_route, 0 when status says why not */
    int status;                  /* 0, or 404/405 for a well-framed request we refuse */
    struct th_str presence_user; /* TH_API_PRESENCE: the path's user id, as sent */
};

#define TH_API_PARTIAL 0

/*
 * Frame the request at the start of buf[0..len). Returns its total length
 * (head + body, > 0), TH_API_PARTIAL when more bytes are needed, or -status
 * (-400, -411, -413, -431) with *reason set to a static text when the stream
 * cannot be framed (the caller answers and closes). A framed request can
 * still carry req->status 404/405 (answer it, keep the connection).
 * TH_API_PARTIAL with req->head_len set means the head is complete and
 * acceptable and only body bytes are missing (zero *req before each call).
 * Body: Content-Length only; Transfer-Encoding is refused (411).
 */
int th_api_frame(const char *buf, size_t len, struct th_api_req *req, const char **reason);

/* A validated notification; the strings borrow from the parsed JSON. */
struct th_notify {
    const char *user, *type, *id; /* id NULL when the backend gave none */
    size_t ulen, tlen, idlen;
    json_t *data; /* borrowed; NULL (and no data_json) means {} */
    /* The fast path's data instead (notifier/notify_fast.h): the object's compact text. */
    const char *data_json;
    size_t data_jlen;
    int has_ttl; /* "ttl_s" given: seconds to keep it in the mailbox, 0 = do not store */
    uint32_t ttl_s;
    uint64_t seq; /* set by the notifier: rendered with epoch when epoch is not NULL */
    const char *epoch;
};

/*
 * Validate one notify object (from a single body or a batch element).
 * Returns 0, or -EINVAL with a message naming the field in err.
 */
int th_api_check_notify(json_t *obj, struct th_notify *out, char *err, size_t errlen);

/*
 * Parse and validate a notify body. On success *root receives the parsed
 * JSON (caller json_decref()s it) and out borrows from it.
 */
int th_api_parse_notify(const char *body, size_t len, json_t **root, struct th_notify *out,
                        char *err, size_t errlen);

/*
 * The frame a client receives:
 * {"type":..,"id":..,"seq":..,"epoch":..,"timestamp":"<RFC 3339>","data":..}
 * (seq and epoch only when n->epoch is set). Returns a malloc'd
 * NUL-terminated string with *len set, or NULL (out of memory).
 */
char *th_api_render_frame(const struct th_notify *n, const char *id, size_t idlen, uint64_t now_ns,
                          size_t *len);

struct th_buf;
/* The same frame appended to b (b->oom set on failure). */
void th_api_render_frame_into(struct th_buf *b, const struct th_notify *n, const char *id,
                              size_t idlen, uint64_t now_ns);

/* A growable output buffer for the renderers below. */
struct th_buf {
    char *p;
    size_t len, cap;
    int oom; /* set once an append failed; the content is then truncated */
};
void th_buf_put(struct th_buf *b, const void *p, size_t n);
/* Inline so a literal's length is known at compile time (answers are built from many). */
static inline void th_buf_puts(struct th_buf *b, const char *s)
{
    th_buf_put(b, s, __builtin_strlen(s));
}
void th_buf_printf(struct th_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Append s as a JSON string literal (quotes included). */
void th_buf_json_str(struct th_buf *b, const char *s, size_t n);
/* Append v in decimal. */
void th_buf_u64(struct th_buf *b, uint64_t v);
/* Append a RFC 3339 time as a JSON string, or null when has == 0. */
void th_buf_json_time(struct th_buf *b, int has, uint64_t ns);
void th_buf_free(struct th_buf *b);

/* Outcome of one notification, as the API reports it. */
enum th_api_outcome {
    TH_OUT_DELIVERED = 200,
    TH_OUT_STORED = 202, /* no live connection; in the mailbox for the user's resume */
    TH_OUT_NOT_CONNECTED = 404,
    TH_OUT_UNAVAILABLE = 503
};

/* Everything one notification's reply says. */
struct th_api_result {
    int status; /* enum th_api_outcome */
    const char *user, *id;
    size_t ulen, idlen;
    unsigned connections; /* 200 */
    unsigned nodes;       /* 200 with --nats: nodes that confirmed ("nodes":N); 0 = omitted */
    int has_last_seen;    /* 202, 404 */
    uint64_t last_seen_ns;
    uint64_t seq;          /* 0: none (mailbox off, 404) */
    uint32_t expires_in_s; /* 202 */
    int not_stored;        /* JetStream mailbox (--nats): the store failed: "stored":false */
};

/* The reply object for one notification; "code":N appended when with_code (batch items). */
void th_api_render_outcome(struct th_buf *b, const struct th_api_result *res, int with_code);

/*
 * The reply object for one notification (no trailing newline). code is
 * appended as "code":N when with_code (batch items).
 */
void th_api_render_result(struct th_buf *b, int status, const char *user, size_t ulen,
                          const char *id, size_t idlen, unsigned connections, int has_last_seen,
                          uint64_t last_seen_ns, int with_code);
/* {"error":"..."} (plus "code" when with_code). */
void th_api_render_error(struct th_buf *b, const char *msg, int code, int with_code);

/*
 * Percent-decode a path segment into out (cap bytes). Returns the decoded
 * length, -EINVAL for a bad escape or -ENOSPC when it does not fit.
 */
int th_api_pct_decode(const char *s, size_t n, char *out, size_t cap);

#endif
