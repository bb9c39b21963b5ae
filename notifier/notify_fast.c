/*
 * The notify body's fast path (see notifier/notify_fast.h): a recursive
 * descent over the body that validates, picks the fields out and re-emits
 * data compact into a scratch buffer in one pass. It accepts a strict
 * subset of what jansson accepts and, on that subset, yields what jansson
 * yields: a string without escapes or control characters is valid UTF-8
 * copied as is (jansson's compact dump writes it back unchanged), an
 * integer of up to 18 digits without a leading zero prints the same, and
 * keys keep their order when none repeats. "-0", reals, escapes, deep
 * nesting, many keys and every error go to the general parser.
 */
#include "notifier/notify_fast.h"
#include "shm/proto/userid.h"
#include "shm/proto/utf8.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>

#define MAX_DEPTH 32 /* nesting of data: deeper goes to jansson */
#define MAX_KEYS 16  /* keys of one object checked for repeats; more goes to jansson */

struct scan {
    const char *p, *end;
    struct th_buf *out; /* NULL: validate only */
    int depth;
};

enum { BAIL = 0, OK = 1 };

static void skip_ws(struct scan *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\n' || *s->p == '\r' || *s->p == '\t'))
        s->p++;
}

static void emit(struct scan *s, const char *p, size_t n)
{
    if (s->out)
        th_buf_put(s->out, p, n);
}

/* A string without escapes: its contents in *v, *n. */
static int scan_str(struct scan *s, const char **v, size_t *n)
{
    if (s->p >= s->end || *s->p != '"')
        return BAIL;
    const char *b = ++s->p;
    unsigned char hi = 0;
    for (; s->p < s->end; s->p++) {
        unsigned char c = (unsigned char)*s->p;
        if (c == '"')
            break;
        if (c == '\\' || c < 0x20)
            return BAIL;
        hi |= c;
    }
    if (s->p >= s->end)
        return BAIL;
    *v = b;
    *n = (size_t)(s->p - b);
    s->p++;
    if ((hi & 0x80) && th_utf8_feed(TH_UTF8_ACCEPT, (const uint8_t *)b, *n) != TH_UTF8_ACCEPT)
        return BAIL;
    return OK;
}

/* An integer of 1 to 18 digits (no leading zero, no "-0", no fraction or exponent). */
static int scan_int(struct scan *s, int allow_minus, uint64_t *val)
{
    const char *b = s->p;
    if (allow_minus && s->p < s->end && *s->p == '-')
        s->p++;
    const char *d = s->p;
    uint64_t v = 0;
    while (s->p < s->end && *s->p >= '0' && *s->p <= '9' && s->p - d < 19)
        v = v * 10 + (uint64_t)(*s->p++ - '0');
    size_t nd = (size_t)(s->p - d);
    if (nd == 0 || nd > 18 || (*d == '0' && (nd > 1 || d != b)))
        return BAIL;
    if (s->p < s->end && (*s->p == '.' || *s->p == 'e' || *s->p == 'E' || *s->p == '-' ||
                          (*s->p >= '0' && *s->p <= '9')))
        return BAIL;
    if (val)
        *val = v;
    emit(s, b, (size_t)(s->p - b));
    return OK;
}

static int scan_value(struct scan *s);

/* Remember key k of an object; BAIL on a repeat or past MAX_KEYS. */
static int new_key(const char *keys[], size_t lens[], int *nk, const char *k, size_t n)
{
    if (*nk == MAX_KEYS)
        return BAIL;
    for (int i = 0; i < *nk; i++)
        if (lens[i] == n && memcmp(keys[i], k, n) == 0)
            return BAIL;
    keys[*nk] = k;
    lens[(*nk)++] = n;
    return OK;
}

static int scan_object(struct scan *s)
{
    const char *keys[MAX_KEYS];
    size_t lens[MAX_KEYS];
    int nk = 0;
    if (++s->depth > MAX_DEPTH)
        return BAIL;
    s->p++; /* '{' */
    emit(s, "{", 1);
    skip_ws(s);
    if (s->p < s->end && *s->p == '}') {
        s->p++;
        emit(s, "}", 1);
        s->depth--;
        return OK;
    }
    for (;;) {
        const char *k;
        size_t kn;
        skip_ws(s);
        if (!scan_str(s, &k, &kn) || !new_key(keys, lens, &nk, k, kn))
            return BAIL;
        emit(s, k - 1, kn + 2);
        skip_ws(s);
        if (s->p >= s->end || *s->p++ != ':')
            return BAIL;
        emit(s, ":", 1);
        skip_ws(s);
        if (!scan_value(s))
            return BAIL;
        skip_ws(s);
        if (s->p >= s->end)
            return BAIL;
        char c = *s->p++;
        emit(s, &c, 1);
        if (c == '}')
            break;
        if (c != ',')
            return BAIL;
    }
    s->depth--;
    return OK;
}

static int scan_array(struct scan *s)
{
    if (++s->depth > MAX_DEPTH)
        return BAIL;
    s->p++; /* '[' */
    emit(s, "[", 1);
    skip_ws(s);
    if (s->p < s->end && *s->p == ']') {
        s->p++;
        emit(s, "]", 1);
        s->depth--;
        return OK;
    }
    for (;;) {
        skip_ws(s);
        if (!scan_value(s))
            return BAIL;
        skip_ws(s);
        if (s->p >= s->end)
            return BAIL;
        char c = *s->p++;
        emit(s, &c, 1);
        if (c == ']')
            break;
        if (c != ',')
            return BAIL;
    }
    s->depth--;
    return OK;
}

static int scan_word(struct scan *s, const char *w, size_t n)
{
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, w, n) != 0)
        return BAIL;
    s->p += n;
    emit(s, w, n);
    return OK;
}

static int scan_value(struct scan *s)
{
    if (s->p >= s->end)
        return BAIL;
    const char *v;
    size_t n;
    switch (*s->p) {
    case '{':
        return scan_object(s);
    case '[':
        return scan_array(s);
    case '"':
        if (!scan_str(s, &v, &n))
            return BAIL;
        emit(s, v - 1, n + 2);
        return OK;
    case 't':
        return scan_word(s, "true", 4);
    case 'f':
        return scan_word(s, "false", 5);
    case 'n':
        return scan_word(s, "null", 4);
    default:
        return scan_int(s, 1, NULL);
    }
}

static int is_null(struct scan *s)
{
    if ((size_t)(s->end - s->p) >= 4 && memcmp(s->p, "null", 4) == 0) {
        s->p += 4;
        return 1;
    }
    return 0;
}

static int key_is(const char *k, size_t n, const char *name)
{
    return strlen(name) == n && memcmp(k, name, n) == 0;
}

/* One top-level field: the ones th_api_check_notify reads, the rest validated and skipped. */
static int scan_field(struct scan *s, const char *k, size_t kn, struct th_notify *out,
                      size_t *data_off)
{
    struct th_buf *keep = s->out;
    int rc = BAIL;
    s->out = NULL;
    if (key_is(k, kn, "user_id")) {
        rc = scan_str(s, &out->user, &out->ulen);
    } else if (key_is(k, kn, "type")) {
        rc = scan_str(s, &out->type, &out->tlen);
    } else if (key_is(k, kn, "id")) {
        rc = is_null(s) || scan_str(s, &out->id, &out->idlen);
    } else if (key_is(k, kn, "ttl_s")) {
        uint64_t v = 0;
        if (is_null(s)) {
            rc = OK;
            out->has_ttl = 0;
        } else {
            rc = scan_int(s, 0, &v) && v <= UINT32_MAX; /* else jansson's path says why */
            out->has_ttl = 1;
            out->ttl_s = (uint32_t)v;
        }
    } else if (key_is(k, kn, "data")) {
        if (is_null(s)) {
            rc = OK;
        } else if (s->p < s->end && *s->p == '{') {
            s->out = keep;
            *data_off = keep->len;
            rc = scan_object(s);
            out->data_jlen = keep->len - *data_off;
        }
    } else {
        rc = scan_value(s);
    }
    s->out = keep;
    return rc;
}

/* th_api_check_notify's rules, on fields that were all plain strings. */
static int fields_ok(const struct th_notify *n)
{
    if (!n->user || !th_userid_valid(n->user, n->ulen) || !n->type || n->tlen == 0)
        return 0;
    if (n->id) {
        if (n->idlen == 0 || n->idlen > TH_API_MAX_ID)
            return 0;
        for (size_t i = 0; i < n->idlen; i++)
            if (n->id[i] == 0x7f) /* below 0x20 cannot occur: scan_str bails on it */
                return 0;
    }
    return 1;
}

/* One notify object at s->p; data emitted to s->out at *data_off (SIZE_MAX: none). */
static int scan_notify(struct scan *s, struct th_notify *out, size_t *data_off)
{
    const char *keys[MAX_KEYS];
    size_t lens[MAX_KEYS];
    int nk = 0;
    memset(out, 0, sizeof(*out));
    *data_off = SIZE_MAX;
    skip_ws(s);
    if (s->p >= s->end || *s->p++ != '{')
        return BAIL;
    s->depth = 1;
    skip_ws(s);
    if (s->p < s->end && *s->p == '}')
        return BAIL; /* no user_id: jansson's path says so */
    for (;;) {
        const char *k;
        size_t kn;
        skip_ws(s);
        if (!scan_str(s, &k, &kn) || !new_key(keys, lens, &nk, k, kn))
            return BAIL;
        skip_ws(s);
        if (s->p >= s->end || *s->p++ != ':')
            return BAIL;
        skip_ws(s);
        if (!scan_field(s, k, kn, out, data_off))
            return BAIL;
        skip_ws(s);
        if (s->p >= s->end)
            return BAIL;
        char c = *s->p++;
        if (c == '}')
            break;
        if (c != ',')
            return BAIL;
    }
    return fields_ok(out) ? OK : BAIL;
}

int th_api_fast_notify(const char *body, size_t len, struct th_buf *scratch, struct th_notify *out)
{
    struct scan s = {body, body + len, scratch, 0};
    size_t off;
    scratch->len = 0;
    scratch->oom = 0;
    if (!scan_notify(&s, out, &off))
        return BAIL;
    skip_ws(&s);
    if (s.p != s.end)
        return BAIL;
    if (scratch->oom)
        return -ENOMEM;
    out->data_json = off == SIZE_MAX ? NULL : scratch->p + off;
    return OK;
}

int th_api_fast_batch(const char *body, size_t len, struct th_buf *scratch, struct th_notify *items,
                      size_t max, size_t *n)
{
    struct scan s = {body, body + len, scratch, 0};
    scratch->len = 0;
    scratch->oom = 0;
    *n = 0;
    skip_ws(&s);
    if (s.p >= s.end || *s.p++ != '[')
        return BAIL;
    skip_ws(&s);
    if (s.p < s.end && *s.p == ']') {
        s.p++;
    } else {
        for (;;) {
            size_t off;
            if (*n == max || !scan_notify(&s, &items[*n], &off))
                return BAIL;
            /* An offset until scratch stops moving; a pointer below. */
            items[(*n)++].data_json = off == SIZE_MAX ? NULL : (const char *)(uintptr_t)(off + 1);
            skip_ws(&s);
            if (s.p >= s.end)
                return BAIL;
            char c = *s.p++;
            if (c == ']')
                break;
            if (c != ',')
                return BAIL;
        }
    }
    skip_ws(&s);
    if (s.p != s.end)
        return BAIL;
    if (scratch->oom)
        return -ENOMEM;
    for (size_t i = 0; i < *n; i++)
        if (items[i].data_json)
            items[i].data_json = scratch->p + ((uintptr_t)items[i].data_json - 1);
    return OK;
}
