/*
 * RFC 6455 framing for the server side (see ws.h for the API and the close
 * codes).
 *
 * The reader is a byte-driven state machine: "between frames" (collecting a
 * header, at most 14 bytes, inline in the reader) and "inside a frame's
 * payload". Payload bytes are unmasked in the caller's buffer. A frame that
 * arrives whole in one feed and is not part of a fragmented message is
 * delivered straight from that buffer; anything else is copied into one
 * heap buffer that holds the fragmented message so far, followed by the
 * payload of a control frame interleaved in it. The buffer grows with the
 * bytes that actually arrived (never past the declared frame end), so a
 * header that declares 64 KiB and then stalls costs little; the size limit
 * is checked on the declared lengths, before any allocation. The buffer is
 * freed as soon as the message (or a lone control frame) completes.
 *
 * Choices the RFC leaves open or that differ between implementations:
 * - non-minimal length encodings (16-bit form carrying < 126, 64-bit form
 *   carrying < 65536) are accepted, as Autobahn-tested servers do: they cost
 *   nothing and some clients emit them;
 * - a message may have at most TH_WS_MAX_FRAGMENTS frames; past that the
 *   connection closes with 1009, so a flood of tiny fragments cannot keep
 *   the server busy for one message forever;
 * - after a close frame everything is ignored (the caller answers the close);
 *   so is everything after a protocol error, whose code the feed returned
 *   once; either way the buffer is freed at once.
 */
#include "worker/ws.h"
#include "shm/proto/utf8.h"

#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

static const char ws_guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

static int is_control(uint8_t op)
{
    return op >= 0x8;
}

static int is_known_opcode(uint8_t op)
{
    return op <= TH_WS_BINARY || (op >= TH_WS_CLOSE && op <= TH_WS_PONG);
}

/* Checks that need only the first two bytes, so a bad frame fails early. */
static int check_first_bytes(const uint8_t *buf, int need_mask)
{
    uint8_t op = buf[0] & 0x0F, len7 = buf[1] & 0x7F;
    if (buf[0] & 0x70)
        return -TH_WS_PROTOCOL_ERROR; /* no extension negotiated, so RSV must be 0 */
    if (!is_known_opcode(op))
        return -TH_WS_PROTOCOL_ERROR;
    if (!!(buf[1] & 0x80) != need_mask)
        return -TH_WS_PROTOCOL_ERROR;
    if (is_control(op) && (len7 > 125 || !(buf[0] & 0x80)))
        return -TH_WS_PROTOCOL_ERROR;
    return 0;
}

static int parse_hdr(const uint8_t *buf, size_t n, struct th_ws_frame_hdr *h, int need_mask)
{
    if (n < 2)
        return 0;
    int rc = check_first_bytes(buf, need_mask);
    if (rc < 0)
        return rc;
    uint8_t len7 = buf[1] & 0x7F;
    size_t ext = len7 == 127 ? 8 : len7 == 126 ? 2 : 0;
    size_t hlen = 2 + ext + (need_mask ? 4 : 0);
    if (n < hlen)
        return 0;
    uint64_t len = len7;
    if (ext) {
        len = 0;
        for (size_t i = 0; i < ext; i++)
            len = len << 8 | buf[2 + i];
        if (len >> 63)
            return -TH_WS_PROTOCOL_ERROR;
    }
    h->fin = buf[0] >> 7;
    h->rsv = (buf[0] >> 4) & 7;
    h->opcode = buf[0] & 0x0F;
    h->masked = (uint8_t)need_mask;
    memset(h->mask, 0, 4);
    if (need_mask)
        memcpy(h->mask, buf + 2 + ext, 4);
    h->len = len;
    h->hdr_len = hlen;
    return (int)hlen;
}

int th_ws_parse_frame_hdr(const uint8_t *buf, size_t n, struct th_ws_frame_hdr *h)
{
    return parse_hdr(buf, n, h, 1);
}

int th_ws_parse_server_frame_hdr(const uint8_t *buf, size_t n, struct th_ws_frame_hdr *h)
{
    return parse_hdr(buf, n, h, 0);
}

void th_ws_unmask(uint8_t *p, size_t n, const uint8_t mask[4], uint64_t off)
{
    uint8_t m[8];
    for (int i = 0; i < 8; i++)
        m[i] = mask[(off + (uint64_t)i) & 3];
    uint64_t w8;
    memcpy(&w8, m, 8);
    size_t i = 0;
    /* memcpy compiles to plain unaligned loads/stores: no alignment games needed. */
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        w ^= w8;
        memcpy(p + i, &w, 8);
    }
    for (; i < n; i++)
        p[i] ^= m[i & 7];
}

static size_t write_len(uint8_t *out, uint8_t b0, uint8_t mask_bit, uint64_t len)
{
    out[0] = b0;
    if (len < 126) {
        out[1] = (uint8_t)(mask_bit | len);
        return 2;
    }
    if (len <= 0xFFFF) {
        out[1] = mask_bit | 126;
        out[2] = (uint8_t)(len >> 8);
        out[3] = (uint8_t)len;
        return 4;
    }
    out[1] = mask_bit | 127;
    for (int i = 0; i < 8; i++)
        out[2 + i] = (uint8_t)(len >> (56 - 8 * i));
    return 10;
}

size_t th_ws_frame_hdr_write(uint8_t out[10], enum th_ws_opcode op, uint64_t len)
{
    return write_len(out, (uint8_t)(0x80 | op), 0, len);
}

size_t th_ws_frame_hdr_write_masked(uint8_t out[14], enum th_ws_opcode op, int fin, uint64_t len,
                                    const uint8_t mask[4])
{
    size_t n = write_len(out, (uint8_t)((fin ? 0x80 : 0) | op), 0x80, len);
    memcpy(out + n, mask, 4);
    return n + 4;
}

int th_ws_close_code_valid(uint16_t code)
{
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1011) ||
           (code >= 3000 && code <= 4999);
}

void th_ws_accept_key(const char *key, size_t n, char out[29])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx || !EVP_DigestInit_ex(ctx, EVP_sha1(), NULL) || !EVP_DigestUpdate(ctx, key, n) ||
        !EVP_DigestUpdate(ctx, ws_guid, sizeof(ws_guid) - 1) ||
        !EVP_DigestFinal_ex(ctx, md, &mdlen) || mdlen != 20) {
        /* Only on allocation failure; an empty accept makes the handshake fail safely. */
        out[0] = '\0';
        EVP_MD_CTX_free(ctx);
        return;
    }
    EVP_MD_CTX_free(ctx);
    EVP_EncodeBlock((unsigned char *)out, md, 20);
}

/* ---- the reader ---------------------------------------------------------- */

static const uint8_t empty_payload[1];

void th_ws_reader_init(struct th_ws_reader *r, uint32_t max_message)
{
    memset(r, 0, sizeof(*r));
    /* Keeps buffer sizes (message + one control payload) inside uint32_t. */
    if (max_message > TH_WS_MAX_MESSAGE_LIMIT)
        max_message = TH_WS_MAX_MESSAGE_LIMIT;
    r->max_message = max_message;
    r->utf8_state = TH_UTF8_ACCEPT;
}

void th_ws_reader_free(struct th_ws_reader *r)
{
    free(r->buf);
    r->buf = NULL;
    r->buf_len = r->buf_cap = 0;
}

/* The message in progress is done (delivered or abandoned): back to idle. */
static void end_message(struct th_ws_reader *r)
{
    th_ws_reader_free(r);
    r->msg_op = 0;
    r->frames_in_msg = 0;
    r->utf8_state = TH_UTF8_ACCEPT;
}

/*
 * A protocol error ends the stream: free what is buffered now (the caller is
 * about to close) and ignore anything fed later. Returns code.
 */
static int fail(struct th_ws_reader *r, int code)
{
    end_message(r);
    r->closed = 1;
    return code;
}

/* Validate a new frame against the message state; returns 0 or a close code. */
static int start_frame(struct th_ws_reader *r, const struct th_ws_frame_hdr *h)
{
    if (!is_control(h->opcode)) {
        if (h->opcode == TH_WS_CONT ? r->msg_op == 0 : r->msg_op != 0)
            return TH_WS_PROTOCOL_ERROR;
        if ((uint64_t)r->buf_len + h->len > r->max_message)
            return TH_WS_TOO_BIG;
        if (++r->frames_in_msg > TH_WS_MAX_FRAGMENTS)
            return TH_WS_TOO_BIG;
        if (h->opcode != TH_WS_CONT && !h->fin)
            r->msg_op = h->opcode;
    }
    r->cur = *h;
    r->cur_off = 0;
    r->in_frame = 1;
    return 0;
}

/*
 * Take the next frame header from p[0..n), using the inline buffer when it
 * straddles feeds. Returns bytes consumed (all of n if still incomplete) or
 * -code.
 */
static int take_header(struct th_ws_reader *r, const uint8_t *p, size_t n,
                       struct th_ws_frame_hdr *h)
{
    if (r->hdr_have == 0) {
        int rc = th_ws_parse_frame_hdr(p, n, h);
        if (rc != 0)
            return rc;
    }
    size_t old = r->hdr_have, k = sizeof(r->hdr_buf) - old;
    if (k > n)
        k = n;
    memcpy(r->hdr_buf + old, p, k);
    int rc = th_ws_parse_frame_hdr(r->hdr_buf, old + k, h);
    if (rc < 0)
        return rc;
    if (rc == 0) {
        r->hdr_have = (uint8_t)(old + k); /* k == n here: a header is at most 14 bytes */
        return (int)k;
    }
    r->hdr_have = 0;
    return rc - (int)old;
}

/* Make room for the payload bytes at buf[buf_len + cur_off ..+k). */
static int reserve(struct th_ws_reader *r, size_t k)
{
    uint64_t need = (uint64_t)r->buf_len + r->cur_off + k;
    if (need <= r->buf_cap)
        return 0;
    /* Double for amortised O(n) copying, but never past the current frame's end. */
    uint64_t limit = (uint64_t)r->buf_len + r->cur.len;
    uint64_t cap = r->buf_cap ? (uint64_t)r->buf_cap * 2 : 256;
    if (cap > limit)
        cap = limit;
    if (cap < need)
        cap = need;
    uint8_t *nb = realloc(r->buf, (size_t)cap);
    if (!nb)
        return TH_WS_INTERNAL;
    r->buf = nb;
    r->buf_cap = (uint32_t)cap;
    return 0;
}

static int deliver_close(struct th_ws_reader *r, const uint8_t *p, size_t n,
                         const struct th_ws_callbacks *cb, void *ctx)
{
    uint16_t code = TH_WS_NO_STATUS;
    if (n == 1)
        return fail(r, TH_WS_PROTOCOL_ERROR);
    if (n >= 2) {
        code = (uint16_t)(p[0] << 8 | p[1]);
        if (!th_ws_close_code_valid(code))
            return fail(r, TH_WS_PROTOCOL_ERROR);
        if (th_utf8_feed(TH_UTF8_ACCEPT, p + 2, n - 2) != TH_UTF8_ACCEPT)
            return fail(r, TH_WS_INVALID_UTF8);
    }
    r->closed = 1;
    if (cb->on_frame)
        cb->on_frame(ctx);
    return cb->on_close ? cb->on_close(ctx, code, n >= 2 ? p + 2 : p, n >= 2 ? n - 2 : 0) : 0;
}

/* A complete control frame whose payload is p[0..n). */
static int deliver_control(struct th_ws_reader *r, const uint8_t *p, size_t n,
                           const struct th_ws_callbacks *cb, void *ctx)
{
    if (r->cur.opcode == TH_WS_CLOSE)
        return deliver_close(r, p, n, cb, ctx);
    if (cb->on_frame)
        cb->on_frame(ctx);
    int (*fn)(void *, const uint8_t *, size_t) =
        r->cur.opcode == TH_WS_PING ? cb->on_ping : cb->on_pong;
    return fn ? fn(ctx, p, n) : 0;
}

/* A complete data frame; p[0..n) is the whole message when cur.fin. */
static int deliver_data(struct th_ws_reader *r, const uint8_t *p, size_t n,
                        const struct th_ws_callbacks *cb, void *ctx)
{
    uint8_t op = r->msg_op ? r->msg_op : r->cur.opcode;
    if (!r->cur.fin) {
        if (cb->on_frame)
            cb->on_frame(ctx);
        return 0;
    }
    if (op == TH_WS_TEXT && r->utf8_state != TH_UTF8_ACCEPT)
        return fail(r, TH_WS_INVALID_UTF8); /* the message ends inside a code point */
    if (cb->on_frame)
        cb->on_frame(ctx);
    int rc =
        cb->on_message ? cb->on_message(ctx, (enum th_ws_opcode)op, p ? p : empty_payload, n) : 0;
    end_message(r);
    return rc;
}

/* The current frame's payload is complete: hand it over. */
static int finish_frame(struct th_ws_reader *r, const uint8_t *direct,
                        const struct th_ws_callbacks *cb, void *ctx)
{
    r->in_frame = 0;
    size_t len = (size_t)r->cur.len;
    if (is_control(r->cur.opcode)) {
        const uint8_t *p = direct ? direct : r->buf ? r->buf + r->buf_len : empty_payload;
        int rc = deliver_control(r, p, len, cb, ctx);
        /* A lone control frame leaves the reader idle; after a close nothing more is read. */
        if (r->closed || (r->msg_op == 0 && r->buf_len == 0))
            end_message(r);
        return rc;
    }
    if (direct)
        return deliver_data(r, direct, len, cb, ctx);
    r->buf_len += (uint32_t)len;
    return deliver_data(r, r->buf, r->buf_len, cb, ctx);
}

/*
 * Consume payload bytes of the current frame from p[0..n) (n may be 0 for an
 * empty frame); *used is set to the bytes taken. Returns 0 or a nonzero code
 * (a close code or a callback's value).
 */
static int take_payload(struct th_ws_reader *r, uint8_t *p, size_t n, size_t *used,
                        const struct th_ws_callbacks *cb, void *ctx)
{
    uint64_t left = r->cur.len - r->cur_off;
    size_t k = left < n ? (size_t)left : n;
    *used = k;
    th_ws_unmask(p, k, r->cur.mask, r->cur_off);
    int text = !is_control(r->cur.opcode) && (r->msg_op ? r->msg_op : r->cur.opcode) == TH_WS_TEXT;
    if (text) {
        r->utf8_state = th_utf8_feed(r->utf8_state, p, k);
        if (r->utf8_state == TH_UTF8_REJECT)
            return fail(r, TH_WS_INVALID_UTF8);
    }
    /* Whole frame in hand and nothing of its message buffered: no copy. */
    int whole = r->cur_off == 0 && k == r->cur.len;
    int direct = whole && (is_control(r->cur.opcode) || (r->msg_op == 0 && r->cur.fin));
    if (!direct && k > 0) {
        int rc = reserve(r, k);
        if (rc)
            return fail(r, rc);
        memcpy(r->buf + r->buf_len + r->cur_off, p, k);
    }
    r->cur_off += k;
    if (r->cur_off < r->cur.len)
        return 0;
    return finish_frame(r, direct ? p : NULL, cb, ctx);
}

/* Take a frame header from p[0..n); sets *used. Returns 0 or a close code. */
static int take_frame_start(struct th_ws_reader *r, uint8_t *p, size_t n, size_t *used,
                            const struct th_ws_callbacks *cb, void *ctx)
{
    struct th_ws_frame_hdr h;
    int rc = take_header(r, p, n, &h);
    if (rc < 0)
        return fail(r, -rc);
    *used = (size_t)rc;
    if (r->hdr_have != 0)
        return 0; /* header still incomplete: all of p went into hdr_buf */
    if ((rc = start_frame(r, &h)) != 0)
        return fail(r, rc);
    if (h.len > 0)
        return 0;
    size_t none;
    return take_payload(r, p + *used, 0, &none, cb, ctx); /* an empty frame is complete now */
}

int th_ws_reader_feed(struct th_ws_reader *r, uint8_t *p, size_t n,
                      const struct th_ws_callbacks *cb, void *ctx)
{
    while (n > 0 && !r->closed) {
        size_t used = 0;
        int rc = r->in_frame ? take_payload(r, p, n, &used, cb, ctx)
                             : take_frame_start(r, p, n, &used, cb, ctx);
        if (rc)
            return rc;
        p += used;
        n -= used;
    }
    return 0;
}
