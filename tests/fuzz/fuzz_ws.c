/*
 * Fuzz target for RFC 6455 framing (worker/ws.h).
 *
 * Input: byte 0 picks max_message and which event (if any) a callback stops
 * the reader at; byte 1 seeds the split points; the rest is a client's byte
 * stream. The stream is fed to a reader whole, then to a fresh reader split
 * at input-chosen points (or one byte at a time), each piece an exact-size
 * heap copy so over-reads are caught. Both runs must report the same events
 * (messages, pings, pongs, closes, frame stamps, byte for byte) and the same
 * result. Every event must also keep the reader's promises: text is valid
 * UTF-8 (checked by a plain decoder), messages fit max_message, control
 * payloads fit 125 bytes, close codes are legal. The frame-header parser,
 * the header writer (round trip) and the unmasker (against a byte loop) are
 * checked on the same bytes.
 */
#include "tests/fuzz/fuzz.h"
#include "shm/proto/utf8.h"
#include "worker/ws.h"

static const uint32_t max_messages[8] = {0, 1, 16, 125, 126, 1000, 65536, 0xFFFFFFFFu};

struct log {
    uint8_t *p;
    size_t len, cap;
    unsigned events, stop_at; /* stop_at 0: never stop */
    uint32_t max_message;
};

static void put(struct log *l, const void *p, size_t n)
{
    if (l->len + n > l->cap) {
        l->cap = (l->len + n) * 2 + 64;
        l->p = realloc(l->p, l->cap);
        if (!l->p)
            abort();
    }
    memcpy(l->p + l->len, p, n);
    l->len += n;
}

static int event(struct log *l, uint8_t kind, uint32_t arg, const uint8_t *p, size_t n)
{
    uint32_t n32 = (uint32_t)n;
    put(l, &kind, 1);
    put(l, &arg, 4);
    put(l, &n32, 4);
    put(l, p, n);
    return ++l->events == l->stop_at ? 77 : 0;
}

/* Plain UTF-8 check, independent of the validator under test. */
static int utf8_ok(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n;) {
        uint8_t c = p[i];
        uint32_t cp;
        size_t len;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            len = 2, cp = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            len = 3, cp = c & 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            len = 4, cp = c & 0x07;
        } else {
            return 0;
        }
        if (i + len > n)
            return 0;
        for (size_t k = 1; k < len; k++) {
            if ((p[i + k] & 0xC0) != 0x80)
                return 0;
            cp = cp << 6 | (p[i + k] & 0x3F);
        }
        static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min_cp[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += len;
    }
    return 1;
}

static int on_message(void *ctx, enum th_ws_opcode op, const uint8_t *p, size_t n)
{
    struct log *l = ctx;
    FUZZ_CHECK(op == TH_WS_TEXT || op == TH_WS_BINARY, "message opcode %d", op);
    FUZZ_CHECK(n <= l->max_message, "message of %zu bytes over max %u", n, l->max_message);
    if (op == TH_WS_TEXT)
        FUZZ_CHECK(utf8_ok(p, n), "text message of %zu bytes is not valid UTF-8", n);
    return event(l, 'M', op, p, n);
}

static int on_ping(void *ctx, const uint8_t *p, size_t n)
{
    FUZZ_CHECK(n <= 125, "ping payload %zu", n);
    return event(ctx, 'P', 0, p, n);
}

static int on_pong(void *ctx, const uint8_t *p, size_t n)
{
    FUZZ_CHECK(n <= 125, "pong payload %zu", n);
    return event(ctx, 'O', 0, p, n);
}

static int on_close(void *ctx, uint16_t code, const uint8_t *reason, size_t n)
{
    FUZZ_CHECK(code == TH_WS_NO_STATUS ? n == 0 : th_ws_close_code_valid(code), "close code %u",
               code);
    FUZZ_CHECK(n <= 123 && utf8_ok(reason, n), "close reason of %zu bytes", n);
    return event(ctx, 'C', code, reason, n);
}

static void on_frame(void *ctx)
{
    struct log *l = ctx;
    uint8_t k = 'F';
    put(l, &k, 1);
}

static const struct th_ws_callbacks cbs = {on_message, on_ping, on_pong, on_close, on_frame};

static int result_ok(int rc)
{
    return rc == 0 || rc == 77 || rc == TH_WS_PROTOCOL_ERROR || rc == TH_WS_INVALID_UTF8 ||
           rc == TH_WS_TOO_BIG;
}

/* Feed data in pieces; piece sizes come from seed (0: whole, ~0u: one byte each). */
static int run(const uint8_t *data, size_t size, uint32_t max_message, unsigned stop_at,
               uint32_t seed, int mode, struct log *l)
{
    struct th_ws_reader r;
    th_ws_reader_init(&r, max_message);
    l->stop_at = stop_at;
    l->max_message = r.max_message;
    int rc = 0;
    size_t off = 0;
    while (off < size && rc == 0) {
        size_t k = size - off;
        if (mode == 1)
            k = 1;
        else if (mode == 2)
            k = 1 + fuzz_rand(&seed) % (k < 16 ? k : k / 3 + 1);
        if (k > size - off)
            k = size - off;
        uint8_t *piece = fuzz_dup(data + off, k);
        rc = th_ws_reader_feed(&r, piece, k, &cbs, l);
        free(piece);
        off += k;
    }
    FUZZ_CHECK(result_ok(rc), "feed returned %d", rc);
    if (rc == 0 && !r.closed)
        FUZZ_CHECK(r.buf == NULL || r.in_frame || r.msg_op, "idle reader holds a buffer");
    if (rc != 0 && rc != 77) {
        /* A protocol error ends the stream: buffer freed at once, later bytes ignored. */
        FUZZ_CHECK(r.buf == NULL, "buffer kept after protocol error %d", rc);
        size_t before = l->len;
        uint8_t *again = fuzz_dup(data, size);
        FUZZ_CHECK(th_ws_reader_feed(&r, again, size, &cbs, l) == 0 && l->len == before,
                   "bytes after protocol error %d were not ignored", rc);
        free(again);
    }
    th_ws_reader_free(&r);
    return rc;
}

static void check_header_functions(const uint8_t *d, size_t n)
{
    struct th_ws_frame_hdr h;
    int rc = th_ws_parse_frame_hdr(d, n, &h);
    FUZZ_CHECK(rc >= -TH_WS_PROTOCOL_ERROR && (rc >= 0 || rc == -TH_WS_PROTOCOL_ERROR), "hdr rc %d",
               rc);
    if (rc > 0) {
        FUZZ_CHECK((size_t)rc == h.hdr_len && (size_t)rc <= n, "hdr_len %zu rc %d", h.hdr_len, rc);
        FUZZ_CHECK(h.masked && h.rsv == 0 && (h.opcode <= 2 || (h.opcode >= 8 && h.opcode <= 10)),
                   "accepted header with mask %d rsv %d opcode %d", h.masked, h.rsv, h.opcode);
        FUZZ_CHECK(h.opcode < 8 || (h.fin && h.len <= 125), "bad control frame accepted");
        FUZZ_CHECK(rc == 6   ? h.len < 126
                   : rc == 8 ? h.len <= 0xFFFF
                             : rc == 14 && !(h.len >> 63),
                   "length %llu in a %d-byte header", (unsigned long long)h.len, rc);
    }
    if (n >= 9) {
        uint64_t len;
        memcpy(&len, d + 1, 8);
        len >>= d[0] & 63; /* spread lengths over every encoding */
        len &= ~(1ull << 63);
        enum th_ws_opcode op = (d[0] & 0x40) ? TH_WS_TEXT : TH_WS_PING;
        if (op == TH_WS_PING)
            len %= 126;
        uint8_t out[14];
        size_t w = th_ws_frame_hdr_write(out, op, len);
        FUZZ_CHECK(w == 2 || w == 4 || w == 10, "wrote %zu", w);
        FUZZ_CHECK(th_ws_parse_server_frame_hdr(out, w, &h) == (int)w && h.len == len && h.fin &&
                       h.opcode == op && !h.masked,
                   "header round trip failed for len %llu", (unsigned long long)len);
    }
    if (n >= 5) {
        uint8_t *a = fuzz_dup(d + 4, n - 4), *b = fuzz_dup(d + 4, n - 4);
        uint64_t off = d[0];
        th_ws_unmask(a, n - 4, d, off);
        for (size_t i = 0; i < n - 4; i++)
            b[i] ^= d[(off + i) & 3];
        FUZZ_CHECK(memcmp(a, b, n - 4) == 0, "unmask differs from a byte loop");
        free(a);
        free(b);
    }
    if (n <= 64) {
        char acc[29];
        th_ws_accept_key((const char *)d, n, acc);
        FUZZ_CHECK(strlen(acc) == 28, "accept key length %zu", strlen(acc));
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    uint32_t max_message = max_messages[data[0] & 7];
    unsigned stop_at = (data[0] >> 3) & 7; /* 0: never */
    int one_byte = (data[0] & 0xC0) == 0xC0;
    uint32_t seed = data[1] * 2654435761u + (uint32_t)size;
    data += 2, size -= 2;

    check_header_functions(data, size);
    struct log a = {0}, b = {0};
    int ra = run(data, size, max_message, stop_at, 0, 0, &a);
    int rb = run(data, size, max_message, stop_at, seed, one_byte && size <= 4096 ? 1 : 2, &b);
    FUZZ_CHECK(ra == rb, "whole feed returned %d, split feed %d", ra, rb);
    FUZZ_CHECK(a.len == b.len && (a.len == 0 || memcmp(a.p, b.p, a.len) == 0),
               "whole and split feeds reported different events (%u vs %u)", a.events, b.events);
    free(a.p);
    free(b.p);
    return 0;
}
