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
#include <stdlib.h>
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

struct keyset {
    const char *k[MAX_KEYS];
    size_t n[MAX_KEYS];
    int count;
};

/* Remember key k of an object; BAIL on a repeat or past MAX_KEYS. */
static int new_key(struct keyset *ks, const char *k, size_t n)
{
    if (ks->count == MAX_KEYS)
        return BAIL;
    for (int i = 0; i < ks->count; i++)
        if (ks->n[i] == n && memcmp(ks->k[i], k, n) == 0)
            return BAIL;
    ks->k[ks->count] = k;
    ks->n[ks->count++] = n;
    return OK;
}

/* A member's key (not seen before in ks) and its colon, emitted; s->p then at the value. */
static int scan_key(struct scan *s, struct keyset *ks, const char **k, size_t *kn)
{
    if (!scan_str(s, k, kn) || !new_key(ks, *k, *kn))
        return BAIL;
    emit(s, *k - 1, *kn + 2);
    skip_ws(s);
    if (s->p >= s->end || *s->p++ != ':')
        return BAIL;
    emit(s, ":", 1);
    skip_ws(s);
    return OK;
}

typedef int (*item_fn)(struct scan *s, void *arg);

/*
 * An object or array at s->p ('{' or '['), closed by close: item() reads
 * each element; the brackets and commas are emitted, whitespace dropped.
 */
static int scan_list(struct scan *s, char close, item_fn item, void *arg)
{
    if (++s->depth > MAX_DEPTH)
        return BAIL;
    emit(s, s->p++, 1);
    skip_ws(s);
    if (s->p < s->end && *s->p == close) {
        emit(s, s->p++, 1);
        s->depth--;
        return OK;
    }
    for (;;) {
        skip_ws(s);
        if (!item(s, arg))
            return BAIL;
        skip_ws(s);
        if (s->p >= s->end)
            return BAIL;
        char c = *s->p++;
        emit(s, &c, 1);
        if (c == close)
            break;
        if (c != ',')
            return BAIL;
    }
    s->depth--;
    return OK;
}

static int member(struct scan *s, void *arg)
{
    const char *k;
    size_t kn;
    return scan_key(s, arg, &k, &kn) && scan_value(s);
}

static int element(struct scan *s, void *arg)
{
    (void)arg;
    return scan_value(s);
}

static int scan_object(struct scan *s)
{
    struct keyset ks = {.count = 0};
    return scan_list(s, '}', member, &ks);
}

static int scan_array(struct scan *s)
{
    return scan_list(s, ']', element, NULL);
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
                      struct th_buf *data, size_t *data_off)
{
    int rc = BAIL;
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
            s->out = data; /* the one part re-emitted */
            *data_off = data->len;
            rc = scan_object(s);
            out->data_jlen = data->len - *data_off;
            s->out = NULL;
        }
    } else {
        rc = scan_value(s);
    }
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

struct top {
    struct keyset ks;
    struct th_notify *out;
    struct th_buf *data;
    size_t *data_off;
};

static int field(struct scan *s, void *arg)
{
    struct top *t = arg;
    const char *k;
    size_t kn;
    return scan_key(s, &t->ks, &k, &kn) && scan_field(s, k, kn, t->out, t->data, t->data_off);
}

/*
 * One notify object at s->p (whitespace before it skipped); its data is
 * emitted to data at *data_off (SIZE_MAX: none), nothing else is. Depth
 * counts from this object, so an element of a batch nests as deep as a
 * single body may.
 */
static int scan_notify(struct scan *s, struct th_buf *data, struct th_notify *out, size_t *data_off)
{
    struct top t = {.ks = {.count = 0}, .out = out, .data = data, .data_off = data_off};
    memset(out, 0, sizeof(*out));
    *data_off = SIZE_MAX;
    skip_ws(s);
    if (s->p >= s->end || *s->p != '{')
        return BAIL;
    int depth = s->depth;
    s->depth = 0;
    s->out = NULL;
    int rc = scan_list(s, '}', field, &t);
    s->depth = depth;
    return rc && fields_ok(out) ? OK : BAIL;
}

int th_api_fast_notify(const char *body, size_t len, struct th_buf *scratch, struct th_notify *out)
{
    struct scan s = {body, body + len, NULL, 0};
    size_t off;
    scratch->len = 0;
    scratch->oom = 0;
    if (!scan_notify(&s, scratch, out, &off))
        return BAIL;
    skip_ws(&s);
    if (s.p != s.end)
        return BAIL;
    if (scratch->oom)
        return -ENOMEM;
    out->data_json = off == SIZE_MAX ? NULL : scratch->p + off;
    return OK;
}

struct batch {
    struct th_buf *data;
    struct th_notify *items;
    size_t *offs; /* data offsets, made pointers once scratch stops moving */
    size_t max, n;
};

static int batch_item(struct scan *s, void *arg)
{
    struct batch *b = arg;
    if (b->n == b->max || !scan_notify(s, b->data, &b->items[b->n], &b->offs[b->n]))
        return BAIL;
    b->n++;
    return OK;
}

int th_api_fast_batch(const char *body, size_t len, struct th_buf *scratch, struct th_notify *items,
                      size_t max, size_t *n)
{
    struct scan s = {body, body + len, NULL, 0};
    struct batch b = {scratch, items, NULL, max, 0};
    int rc = BAIL;
    scratch->len = 0;
    scratch->oom = 0;
    *n = 0;
    skip_ws(&s);
    if (s.p >= s.end || *s.p != '[' || !(b.offs = malloc((max ? max : 1) * sizeof(*b.offs))))
        return BAIL;
    if (scan_list(&s, ']', batch_item, &b)) {
        skip_ws(&s);
        rc = s.p == s.end ? OK : BAIL;
    }
    if (rc == OK && scratch->oom)
        rc = -ENOMEM;
    for (size_t i = 0; rc == OK && i < b.n; i++)
        items[i].data_json = b.offs[i] == SIZE_MAX ? NULL : scratch->p + b.offs[i];
    if (rc == OK)
        *n = b.n;
    free(b.offs);
    return rc;
}
