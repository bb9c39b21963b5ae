/*
 * Broker message parsing for the cluster route (see notifier/cluster_msg.h).
 * Hand-written scanners instead of sscanf: sscanf's %u on an out-of-range
 * number is undefined behaviour and its whitespace directives accept more
 * than one form; here each field is read exactly, with its bound.
 */
#include "notifier/cluster_msg.h"
#include "shm/proto/userid.h"
#include "shm/proto/utf8.h"

#include <errno.h>
#include <string.h>

#define SUBJ_PREFIX "tether.u."

static const char hexdig[] = "0123456789abcdef";

int th_cm_text(const void *d, size_t n, char *buf, size_t cap)
{
    if (!d || n == 0 || n >= cap || memchr(d, 0, n))
        return -EINVAL;
    memcpy(buf, d, n);
    buf[n] = 0;
    return (int)n;
}

size_t th_cm_hex_put(char *out, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hexdig[(unsigned char)s[i] >> 4];
        out[2 * i + 1] = hexdig[(unsigned char)s[i] & 15];
    }
    out[2 * n] = 0;
    return 2 * n;
}

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

int th_cm_hex_user(const char *h, size_t hl, char *user)
{
    if (hl == 0 || hl % 2 || hl / 2 > TH_USER_MAX)
        return -EINVAL;
    for (size_t i = 0; i < hl / 2; i++) {
        int a = hexval(h[2 * i]), b = hexval(h[2 * i + 1]);
        if (a < 0 || b < 0)
            return -EINVAL;
        user[i] = (char)(a << 4 | b);
    }
    return th_userid_valid(user, hl / 2) ? (int)(hl / 2) : -EINVAL;
}

int th_cm_subject_user(const char *subj, char *user)
{
    size_t pl = sizeof(SUBJ_PREFIX) - 1;
    if (strncmp(subj, SUBJ_PREFIX, pl) != 0)
        return -EINVAL;
    return th_cm_hex_user(subj + pl, strlen(subj + pl), user);
}

void th_cm_id_hex(char out[17], uint64_t id)
{
    for (int i = 0; i < 16; i++)
        out[i] = hexdig[(id >> (60 - 4 * i)) & 15];
    out[16] = 0;
}

/* Exactly 16 lowercase hex digits, ending the token (NUL, ' ' or '\n'). */
static int scan_id(const char **s, uint64_t *id)
{
    uint64_t v = 0;
    for (int i = 0; i < 16; i++) {
        int d = hexval((*s)[i]);
        if (d < 0)
            return -EINVAL;
        v = v << 4 | (uint64_t)d;
    }
    char end = (*s)[16];
    if (end && end != ' ' && end != '\n')
        return -EINVAL;
    *id = v;
    *s += 16;
    return 0;
}

/* Decimal, 1 to 20 digits, at most max. */
static int scan_u64(const char **s, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;
    const char *p = *s;
    if (*p < '0' || *p > '9')
        return -EINVAL;
    for (; *p >= '0' && *p <= '9'; p++) {
        unsigned d = (unsigned)(*p - '0');
        if (d > max || v > (max - d) / 10)
            return -EINVAL;
        v = v * 10 + d;
    }
    *out = v;
    *s = p;
    return 0;
}

static int expect(const char **s, char c)
{
    if (**s != c)
        return -EINVAL;
    (*s)++;
    return 0;
}

/* "XXX " with tag the three letters: 0 and s past it. */
static int scan_tag(const char **s, const char *tag)
{
    if (strncmp(*s, tag, 3) != 0 || (*s)[3] != ' ')
        return -EINVAL;
    *s += 4;
    return 0;
}

/* A node name: 1 to TH_CM_NAME_MAX printable bytes, no spaces, ending at NUL or '\n'. */
static int scan_name(const char **s, char name[TH_CM_NAME_MAX + 1])
{
    size_t n = 0;
    const char *p = *s;
    while (*p && *p != '\n') {
        unsigned char c = (unsigned char)*p++;
        if (c <= ' ' || c >= 0x7f || n == TH_CM_NAME_MAX)
            return -EINVAL;
        name[n++] = (char)c;
    }
    if (n == 0)
        return -EINVAL;
    name[n] = 0;
    *s = p;
    return 0;
}

int th_cm_reply_token(const char *tok, uint32_t *idx, uint32_t *gen)
{
    uint64_t i, g;
    int kind = 'd';
    if (strcmp(tok, "b") == 0)
        return 'b';
    if (*tok == 'p') {
        kind = 'p';
        tok++;
    }
    if (scan_u64(&tok, UINT32_MAX, &i) < 0 || expect(&tok, '_') < 0 ||
        scan_u64(&tok, UINT32_MAX, &g) < 0 || *tok)
        return -EINVAL;
    *idx = (uint32_t)i;
    *gen = (uint32_t)g;
    return kind;
}

int th_cm_batch_subject(const char *reply, char *out, size_t cap)
{
    const char *dot = strrchr(reply, '.');
    uint32_t idx, gen;
    if (!dot || dot == reply || th_cm_reply_token(dot + 1, &idx, &gen) != 'd')
        return -EINVAL;
    size_t plen = (size_t)(dot - reply);
    if (plen > 2 && memcmp(dot - 2, ".a", 2) == 0)
        plen -= 2; /* "<I>.a.<idx>_<gen>": batches on "<I>.b" */
    if (plen + 3 > cap)
        return -EINVAL;
    memcpy(out, reply, plen);
    memcpy(out + plen, ".b", 3);
    return (int)(plen + 2);
}

int th_cm_is_request(const void *d, size_t n)
{
    return d && n >= 4 && memcmp(d, "TN1\0", 4) == 0;
}

int th_cm_request(const void *d, size_t n, uint64_t *nseq, const char **frame, size_t *flen)
{
    if (!th_cm_is_request(d, n) || n <= TH_CM_REQ_HDR || n - TH_CM_REQ_HDR > TH_CM_FRAME_MAX)
        return -EINVAL;
    const unsigned char *b = d;
    if (th_utf8_feed(TH_UTF8_ACCEPT, b + TH_CM_REQ_HDR, n - TH_CM_REQ_HDR) != TH_UTF8_ACCEPT)
        return -EINVAL;
    uint64_t v = 0;
    for (int k = 0; k < 8; k++)
        v |= (uint64_t)b[4 + k] << (8 * k);
    *nseq = v;
    *frame = (const char *)b + TH_CM_REQ_HDR;
    *flen = n - TH_CM_REQ_HDR;
    return 0;
}

/* "<status> <confirmed>" of a reply. */
static int scan_outcome(const char **s, struct th_cm_reply *out)
{
    uint64_t st, conf;
    if (scan_u64(s, 999, &st) < 0 || expect(s, ' ') < 0 || scan_u64(s, 1u << 20, &conf) < 0)
        return -EINVAL;
    out->status = (unsigned)st;
    out->confirmed = (unsigned)conf;
    return 0;
}

/* "[ <peer id>...]" up to TH_CM_PEERS_MAX. */
static int scan_peers(const char **s, struct th_cm_reply *out)
{
    while (**s == ' ') {
        (*s)++;
        if (out->npeers == TH_CM_PEERS_MAX || scan_id(s, &out->peers[out->npeers]) < 0)
            return -EINVAL;
        out->npeers++;
    }
    return 0;
}

int th_cm_reply(const char *s, struct th_cm_reply *out)
{
    memset(out, 0, sizeof(*out));
    if (scan_tag(&s, "TR2") < 0 || scan_outcome(&s, out) < 0 || expect(&s, ' ') < 0 ||
        scan_id(&s, &out->id) < 0 || scan_peers(&s, out) < 0)
        return -EINVAL;
    return *s ? -EINVAL : 0;
}

int th_cm_reply_batch(const char *s, uint64_t *id)
{
    const char *p = s;
    if (scan_tag(&p, "TR3") < 0 || scan_id(&p, id) < 0 || expect(&p, '\n') < 0)
        return -EINVAL;
    return (int)(p - s);
}

int th_cm_reply_line(const char *s, size_t *off, uint32_t *idx, uint32_t *gen,
                     struct th_cm_reply *out)
{
    const char *p = s + *off;
    uint64_t i, g, id;
    if (!*p)
        return 0;
    id = out->id;
    memset(out, 0, sizeof(*out));
    out->id = id;
    if (scan_u64(&p, UINT32_MAX, &i) < 0 || expect(&p, '_') < 0 ||
        scan_u64(&p, UINT32_MAX, &g) < 0 || expect(&p, ' ') < 0 || scan_outcome(&p, out) < 0 ||
        scan_peers(&p, out) < 0 || expect(&p, '\n') < 0)
        return -EINVAL;
    *idx = (uint32_t)i;
    *gen = (uint32_t)g;
    *off = (size_t)(p - s);
    return 1;
}

/* Decimal of v at out; its length. */
static size_t put_u64(char *out, uint64_t v)
{
    char t[20];
    size_t n = 0, k = 0;
    do
        t[n++] = (char)('0' + v % 10);
    while ((v /= 10));
    while (n)
        out[k++] = t[--n];
    return k;
}

size_t th_cm_reply_line_put(char *out, uint32_t idx, uint32_t gen, unsigned status,
                            unsigned confirmed, const uint64_t *peers, unsigned npeers)
{
    size_t n = put_u64(out, idx);
    out[n++] = '_';
    n += put_u64(out + n, gen);
    out[n++] = ' ';
    n += put_u64(out + n, status);
    out[n++] = ' ';
    n += put_u64(out + n, confirmed);
    for (unsigned k = 0; k < npeers && k < TH_CM_PEERS_MAX; k++) {
        out[n++] = ' ';
        th_cm_id_hex(out + n, peers[k]);
        n += 16;
    }
    out[n++] = '\n';
    out[n] = 0;
    return n;
}

int th_cm_holder(const char *s, uint64_t *id, int *bye)
{
    if (scan_tag(&s, "TH1") == 0)
        *bye = 0;
    else if (scan_tag(&s, "TB1") == 0)
        *bye = 1;
    else
        return -EINVAL;
    return scan_id(&s, id) < 0 || *s ? -EINVAL : 0;
}

int th_cm_hello_answer(const char *s, uint64_t *id, char *user)
{
    if (scan_tag(&s, "TI1") < 0 || scan_id(&s, id) < 0 || expect(&s, ' ') < 0)
        return -EINVAL;
    return th_cm_hex_user(s, strlen(s), user);
}

int th_cm_node(const char *s, uint64_t *id, int *leaving, char name[TH_CM_NAME_MAX + 1])
{
    if (scan_tag(&s, "TX1") == 0) {
        *leaving = 1;
        return scan_id(&s, id) < 0 || *s ? -EINVAL : 0;
    }
    *leaving = 0;
    if (scan_tag(&s, "TK1") < 0 || scan_id(&s, id) < 0 || expect(&s, ' ') < 0 ||
        scan_name(&s, name) < 0)
        return -EINVAL;
    return *s ? -EINVAL : 0;
}

int th_cm_presence_question(const char *s, char *user)
{
    if (scan_tag(&s, "TP1") < 0)
        return -EINVAL;
    return th_cm_hex_user(s, strlen(s), user);
}

int th_cm_presence_head(const char *s, struct th_cm_presence_head *out)
{
    const char *p = s;
    uint64_t has;
    memset(out, 0, sizeof(*out));
    if (scan_tag(&p, "TQ1") < 0 || scan_id(&p, &out->id) < 0 || expect(&p, ' ') < 0 ||
        scan_u64(&p, 1, &has) < 0 || expect(&p, ' ') < 0 ||
        scan_u64(&p, UINT64_MAX, &out->last_seen) < 0 || expect(&p, ' ') < 0 ||
        scan_name(&p, out->name) < 0)
        return -EINVAL;
    if (*p == '\n')
        p++;
    else if (*p)
        return -EINVAL;
    out->has_last_seen = (int)has;
    return (int)(p - s);
}

int th_cm_presence_line(const char *s, size_t *off, struct th_cm_pconn *out)
{
    const char *p = s + *off;
    uint64_t w;
    if (!*p)
        return 0;
    if (scan_u64(&p, 0xffff, &w) < 0 || expect(&p, ' ') < 0 ||
        scan_u64(&p, UINT64_MAX, &out->connected_at) < 0 || expect(&p, ' ') < 0 ||
        scan_u64(&p, UINT64_MAX, &out->last_seen) < 0)
        return -EINVAL;
    if (*p == '\n')
        p++;
    else if (*p)
        return -EINVAL;
    out->worker = (unsigned)w;
    *off = (size_t)(p - s);
    return 1;
}
