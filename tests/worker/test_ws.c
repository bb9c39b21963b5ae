/*
 * Unit tests of RFC 6455 framing (worker/ws.c): the frame-header parser in
 * every length form and at every split, each 1002 the header alone reveals,
 * unmasking, the header writers, close codes, the accept key, and the
 * reader: zero-copy delivery, fragmentation with interleaved control frames,
 * 1007 at the first bad fragment, 1009 before any allocation, the fragment
 * cap, close-frame rules, callbacks stopping the feed, and "an idle reader
 * holds no heap buffer". Frames are built here by an independent encoder
 * (not th_ws_frame_hdr_write_masked) and fed from guarded buffers.
 */
#include "worker/ws.h"
#include "tests/shm/proto/guard.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

/* ---- building client frames --------------------------------------------- */

struct wire {
    uint8_t *p;
    size_t n, cap;
};

static void wire_put(struct wire *w, const void *src, size_t n)
{
    if (w->n + n > w->cap) {
        w->cap = (w->n + n) * 2 + 64;
        w->p = realloc(w->p, w->cap);
        cr_assert(w->p != NULL);
    }
    memcpy(w->p + w->n, src, n);
    w->n += n;
}

enum { LEN_MINIMAL = 0, LEN_16 = 16, LEN_64 = 64 };

/* Append a frame: b0 is FIN|RSV|opcode; payload masked with a fixed pattern. */
static void frame_raw(struct wire *w, uint8_t b0, int masked, int len_form, const void *payload,
                      size_t n)
{
    uint8_t h[14];
    size_t k = 0;
    uint8_t mbit = masked ? 0x80 : 0;
    h[k++] = b0;
    if (len_form == LEN_64 || (len_form == LEN_MINIMAL && n > 0xFFFF)) {
        h[k++] = mbit | 127;
        for (int i = 7; i >= 0; i--)
            h[k++] = (uint8_t)((uint64_t)n >> (8 * i));
    } else if (len_form == LEN_16 || n >= 126) {
        h[k++] = mbit | 126;
        h[k++] = (uint8_t)(n >> 8);
        h[k++] = (uint8_t)n;
    } else {
        h[k++] = mbit | (uint8_t)n;
    }
    static const uint8_t mask[4] = {0x37, 0xfa, 0x21, 0x3d};
    if (masked) {
        memcpy(h + k, mask, 4);
        k += 4;
    }
    wire_put(w, h, k);
    size_t at = w->n;
    wire_put(w, payload, n);
    for (size_t i = 0; masked && i < n; i++)
        w->p[at + i] ^= mask[i % 4];
}

static void frame(struct wire *w, int fin, uint8_t op, const void *payload, size_t n)
{
    frame_raw(w, (uint8_t)((fin ? 0x80 : 0) | op), 1, LEN_MINIMAL, payload, n);
}

static void frame_str(struct wire *w, int fin, uint8_t op, const char *s)
{
    frame(w, fin, op, s, strlen(s));
}

/* ---- recording what the reader reports ---------------------------------- */

#define MAX_EVENTS 64

struct event {
    char kind; /* 'm' message, 'p' ping, 'o' pong, 'c' close */
    int op;
    uint16_t code;
    size_t n;
    uint8_t *data;
    const uint8_t *ptr; /* where the reader pointed (zero-copy checks) */
};

struct rec {
    struct event ev[MAX_EVENTS];
    int nev;
    int frames;
    int stop_after; /* return 1 from the callback that records event number stop_after */
};

static int record(struct rec *r, char kind, int op, uint16_t code, const uint8_t *p, size_t n)
{
    cr_assert(r->nev < MAX_EVENTS);
    struct event *e = &r->ev[r->nev++];
    e->kind = kind, e->op = op, e->code = code, e->n = n, e->ptr = p;
    e->data = malloc(n + 1);
    memcpy(e->data, p, n);
    return r->stop_after && r->nev == r->stop_after;
}

static int on_message(void *c, enum th_ws_opcode op, const uint8_t *p, size_t n)
{
    return record(c, 'm', op, 0, p, n);
}
static int on_ping(void *c, const uint8_t *p, size_t n)
{
    return record(c, 'p', TH_WS_PING, 0, p, n);
}
static int on_pong(void *c, const uint8_t *p, size_t n)
{
    return record(c, 'o', TH_WS_PONG, 0, p, n);
}
static int on_close(void *c, uint16_t code, const uint8_t *p, size_t n)
{
    return record(c, 'c', TH_WS_CLOSE, code, p, n);
}
static void on_frame(void *c)
{
    ((struct rec *)c)->frames++;
}

static const struct th_ws_callbacks cbs = {on_message, on_ping, on_pong, on_close, on_frame};

static void rec_free(struct rec *r)
{
    for (int i = 0; i < r->nev; i++)
        free(r->ev[i].data);
    r->nev = 0;
}

/* Feed w in chunks of `chunk` bytes (0 = all at once), each from a guarded copy. */
static int feed_chunked(struct th_ws_reader *rd, const struct wire *w, size_t chunk, struct rec *r)
{
    size_t off = 0;
    if (chunk == 0)
        chunk = w->n ? w->n : 1;
    while (off < w->n) {
        size_t k = w->n - off < chunk ? w->n - off : chunk;
        struct guard g;
        uint8_t *p = guard_copy(&g, w->p + off, k);
        int rc = th_ws_reader_feed(rd, p, k, &cbs, r);
        guard_free(&g);
        if (rc)
            return rc;
        off += k;
    }
    return 0;
}

/* Feed all of w at once into a fresh reader; return the feed's result. */
static int feed_fresh(const struct wire *w, uint32_t max_message, struct rec *r)
{
    struct th_ws_reader rd;
    th_ws_reader_init(&rd, max_message);
    int rc = feed_chunked(&rd, w, 0, r);
    th_ws_reader_free(&rd);
    return rc;
}

static void expect_event(const struct rec *r, int i, char kind, int op, const void *data, size_t n)
{
    cr_assert(i < r->nev, "event %d missing (have %d)", i, r->nev);
    const struct event *e = &r->ev[i];
    cr_assert_eq(e->kind, kind, "event %d kind %c", i, e->kind);
    cr_assert_eq(e->op, op, "event %d op %d", i, e->op);
    cr_assert_eq(e->n, n, "event %d length %zu, want %zu", i, e->n, n);
    cr_assert(n == 0 || memcmp(e->data, data, n) == 0, "event %d payload differs", i);
}

/* ---- frame headers -------------------------------------------------------- */

static int parse_guarded(const uint8_t *b, size_t n, struct th_ws_frame_hdr *h)
{
    struct guard g;
    const uint8_t *p = guard_copy(&g, b, n);
    int rc = th_ws_parse_frame_hdr(p, n, h);
    guard_free(&g);
    return rc;
}

Test(ws_hdr, every_length_form_and_every_split)
{
    static const struct {
        uint64_t len;
        int form;
        size_t hdr_len;
    } cases[] = {
        {0, LEN_MINIMAL, 6},     {125, LEN_MINIMAL, 6},    {126, LEN_MINIMAL, 8},
        {65535, LEN_MINIMAL, 8}, {65536, LEN_MINIMAL, 14}, {5, LEN_16, 8},
        {100, LEN_64, 14},       {65535, LEN_64, 14},
    };
    static uint8_t payload[65536];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct wire w = {0};
        frame_raw(&w, 0x82, 1, cases[i].form, payload, (size_t)cases[i].len);
        struct th_ws_frame_hdr h;
        for (size_t k = 0; k < cases[i].hdr_len; k++)
            cr_assert_eq(parse_guarded(w.p, k, &h), 0, "case %zu, %zu bytes", i, k);
        cr_assert_eq(parse_guarded(w.p, cases[i].hdr_len, &h), (int)cases[i].hdr_len, "case %zu",
                     i);
        cr_assert_eq(h.len, cases[i].len);
        cr_assert_eq(h.opcode, TH_WS_BINARY);
        cr_assert(h.fin && h.masked && h.rsv == 0);
        cr_assert_eq(memcmp(h.mask, "\x37\xfa\x21\x3d", 4), 0);
        free(w.p);
    }
}

Test(ws_hdr, huge_64_bit_lengths)
{
    uint8_t b[14] = {0x82, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4};
    struct th_ws_frame_hdr h;
    cr_assert_eq(parse_guarded(b, 14, &h), 14);
    cr_assert_eq(h.len, 0x7fffffffffffffffull);
    b[2] = 0x80; /* the most significant bit must be 0 */
    cr_assert_eq(parse_guarded(b, 14, &h), -1002);
}

Test(ws_hdr, protocol_errors_from_the_first_two_bytes)
{
    static const uint8_t bad[][2] = {
        {0x81, 0x05},                                           /* unmasked */
        {0xc1, 0x85}, {0xa1, 0x85}, {0x91, 0x85},               /* RSV1, RSV2, RSV3 */
        {0x83, 0x80}, {0x84, 0x80}, {0x85, 0x80}, {0x86, 0x80}, /* reserved data opcodes */
        {0x87, 0x80}, {0x8b, 0x80}, {0x8c, 0x80}, {0x8d, 0x80}, /* reserved control opcodes */
        {0x8e, 0x80}, {0x8f, 0x80}, {0x89, 0xfe}, {0x89, 0xff},
        {0x88, 0xfe},                             /* control payload > 125 */
        {0x09, 0x80}, {0x08, 0x80}, {0x0a, 0x80}, /* fragmented control */
    };
    struct th_ws_frame_hdr h;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        cr_assert_eq(parse_guarded(bad[i], 2, &h), -1002, "case %zu", i);
    static const uint8_t ok[] = {0x89, 0xfd}; /* ping with 125 bytes: fine */
    cr_assert_eq(parse_guarded(ok, 2, &h), 0);
}

Test(ws_hdr, server_side_parse_wants_unmasked)
{
    struct th_ws_frame_hdr h;
    static const uint8_t unmasked[] = {0x81, 0x7e, 0x01, 0x00};
    cr_assert_eq(th_ws_parse_server_frame_hdr(unmasked, 4, &h), 4);
    cr_assert_eq(h.len, 256);
    cr_assert_not(h.masked);
    static const uint8_t masked[] = {0x81, 0x80, 0, 0, 0, 0};
    cr_assert_eq(th_ws_parse_server_frame_hdr(masked, 6, &h), -1002);
}

Test(ws_hdr, writers)
{
    uint8_t out[14];
    struct th_ws_frame_hdr h;
    static const uint64_t lens[] = {0, 1, 125, 126, 65535, 65536, 1ull << 40};
    static const size_t want[] = {2, 2, 2, 4, 4, 10, 10};
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        size_t n = th_ws_frame_hdr_write(out, TH_WS_TEXT, lens[i]);
        cr_assert_eq(n, want[i]);
        cr_assert_eq(out[0], 0x81);
        cr_assert_eq(th_ws_parse_server_frame_hdr(out, n, &h), (int)n);
        cr_assert_eq(h.len, lens[i]);
        static const uint8_t mask[4] = {9, 8, 7, 6};
        n = th_ws_frame_hdr_write_masked(out, TH_WS_BINARY, 0, lens[i], mask);
        cr_assert_eq(n, want[i] + 4);
        cr_assert_eq(th_ws_parse_frame_hdr(out, n, &h), (int)n);
        cr_assert(h.len == lens[i] && !h.fin && h.opcode == TH_WS_BINARY);
        cr_assert_eq(memcmp(h.mask, mask, 4), 0);
    }
    cr_assert_eq(th_ws_frame_hdr_write(out, TH_WS_CLOSE, 2), 2);
    cr_assert(out[0] == 0x88 && out[1] == 2);
}

Test(ws_hdr, unmask_matches_bytewise_at_any_offset_and_alignment)
{
    static const uint8_t mask[4] = {0xde, 0xad, 0xbe, 0xef};
    uint8_t orig[80], buf[80];
    for (size_t i = 0; i < sizeof(orig); i++)
        orig[i] = (uint8_t)(i * 7 + 1);
    for (size_t align = 0; align < 8; align++)
        for (uint64_t off = 0; off < 9; off++)
            for (size_t n = 0; n + align <= 64; n++) {
                memcpy(buf, orig, sizeof(buf));
                th_ws_unmask(buf + align, n, mask, off);
                for (size_t i = 0; i < sizeof(buf); i++) {
                    uint8_t want = orig[i];
                    if (i >= align && i < align + n)
                        want ^= mask[(off + i - align) % 4];
                    cr_assert_eq(buf[i], want, "align %zu off %lu n %zu i %zu", align,
                                 (unsigned long)off, n, i);
                }
            }
}

Test(ws_hdr, close_code_validity)
{
    static const uint16_t ok[] = {1000, 1001, 1002, 1003, 1007, 1008,
                                  1009, 1010, 1011, 3000, 4000, 4999};
    static const uint16_t bad[] = {0,    999,  1004, 1005, 1006, 1012, 1013, 1014,
                                   1015, 1016, 1100, 2000, 2999, 5000, 65535};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
        cr_assert(th_ws_close_code_valid(ok[i]), "%u", ok[i]);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        cr_assert_not(th_ws_close_code_valid(bad[i]), "%u", bad[i]);
}

Test(ws_hdr, accept_key_rfc_example)
{
    char out[29];
    const char *key = "dGhlIHNhbXBsZSBub25jZQ==";
    th_ws_accept_key(key, strlen(key), out);
    cr_assert_str_eq(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

/* ---- the reader ------------------------------------------------------------ */

/* A stream with a bit of everything, used by the split tests. */
static void mixed_stream(struct wire *w)
{
    static uint8_t bin[300];
    for (size_t i = 0; i < sizeof(bin); i++)
        bin[i] = (uint8_t)i;
    frame_str(w, 1, TH_WS_TEXT, "{\"type\":\"ping\"}");
    frame(w, 1, TH_WS_BINARY, bin, sizeof(bin)); /* 16-bit length */
    frame_str(w, 0, TH_WS_TEXT, "frag\xc3");     /* a code point split across fragments */
    frame_str(w, 1, TH_WS_PING, "p1");
    frame_str(w, 0, TH_WS_CONT, "\xa9-");
    frame(w, 1, TH_WS_PONG, "", 0);
    frame(w, 0, TH_WS_CONT, "", 0);
    frame_str(w, 1, TH_WS_CONT, "end");
    frame(w, 1, TH_WS_TEXT, "", 0);
    frame_str(w, 1, TH_WS_CLOSE,
              "\x03\xe8"
              "bye");
}

static void expect_mixed(const struct rec *r)
{
    static uint8_t bin[300];
    for (size_t i = 0; i < sizeof(bin); i++)
        bin[i] = (uint8_t)i;
    cr_assert_eq(r->nev, 7);
    expect_event(r, 0, 'm', TH_WS_TEXT, "{\"type\":\"ping\"}", 15);
    expect_event(r, 1, 'm', TH_WS_BINARY, bin, sizeof(bin));
    expect_event(r, 2, 'p', TH_WS_PING, "p1", 2);
    expect_event(r, 3, 'o', TH_WS_PONG, "", 0);
    expect_event(r, 4, 'm', TH_WS_TEXT, "frag\xc3\xa9-end", 10);
    expect_event(r, 5, 'm', TH_WS_TEXT, "", 0);
    expect_event(r, 6, 'c', TH_WS_CLOSE, "bye", 3);
    cr_assert_eq(r->ev[6].code, 1000);
    cr_assert_eq(r->frames, 10, "on_frame once per frame, got %d", r->frames);
}

Test(ws_reader, mixed_stream_whole)
{
    struct wire w = {0};
    mixed_stream(&w);
    struct rec r = {0};
    cr_assert_eq(feed_fresh(&w, 65536, &r), 0);
    expect_mixed(&r);
    rec_free(&r);
    free(w.p);
}

Test(ws_reader, mixed_stream_split_in_two_at_every_byte)
{
    struct wire w = {0};
    mixed_stream(&w);
    for (size_t cut = 1; cut < w.n; cut++) {
        struct th_ws_reader rd;
        th_ws_reader_init(&rd, 65536);
        struct rec r = {0};
        struct wire a = {w.p, cut, cut}, b = {w.p + cut, w.n - cut, w.n - cut};
        cr_assert_eq(feed_chunked(&rd, &a, 0, &r), 0, "cut %zu", cut);
        cr_assert_eq(feed_chunked(&rd, &b, 0, &r), 0, "cut %zu", cut);
        expect_mixed(&r);
        rec_free(&r);
        th_ws_reader_free(&rd);
    }
    free(w.p);
}

Test(ws_reader, mixed_stream_in_small_chunks)
{
    struct wire w = {0};
    mixed_stream(&w);
    for (size_t chunk = 1; chunk <= 17; chunk++) {
        struct th_ws_reader rd;
        th_ws_reader_init(&rd, 65536);
        struct rec r = {0};
        cr_assert_eq(feed_chunked(&rd, &w, chunk, &r), 0, "chunk %zu", chunk);
        expect_mixed(&r);
        rec_free(&r);
        th_ws_reader_free(&rd);
    }
    free(w.p);
}

Test(ws_reader, every_length_form_byte_by_byte)
{
    static const size_t lens[] = {0, 1, 125, 126, 127, 65535, 65536, 70000};
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++)
        for (int form = 0; form < 3; form++) {
            int f = form == 0 ? LEN_MINIMAL : form == 1 ? LEN_16 : LEN_64;
            if (f == LEN_16 && lens[i] > 0xFFFF)
                continue;
            uint8_t *payload = malloc(lens[i] + 1);
            for (size_t k = 0; k < lens[i]; k++)
                payload[k] = (uint8_t)(k * 31);
            struct wire w = {0};
            frame_raw(&w, 0x82, 1, f, payload, lens[i]);
            struct th_ws_reader rd;
            th_ws_reader_init(&rd, 100000);
            struct rec r = {0};
            cr_assert_eq(feed_chunked(&rd, &w, lens[i] > 1000 ? 997 : 1, &r), 0);
            cr_assert_eq(r.nev, 1);
            expect_event(&r, 0, 'm', TH_WS_BINARY, payload, lens[i]);
            cr_assert_null(rd.buf, "buffer freed once the message is delivered");
            rec_free(&r);
            th_ws_reader_free(&rd);
            free(payload);
            free(w.p);
        }
}

Test(ws_reader, whole_frames_are_delivered_without_copy)
{
    struct wire w = {0};
    frame_str(&w, 1, TH_WS_TEXT, "hello");
    frame_str(&w, 1, TH_WS_PING, "pp");
    struct th_ws_reader rd;
    th_ws_reader_init(&rd, 1024);
    struct rec r = {0};
    struct guard g;
    uint8_t *p = guard_copy(&g, w.p, w.n);
    cr_assert_eq(th_ws_reader_feed(&rd, p, w.n, &cbs, &r), 0);
    cr_assert_eq(r.nev, 2);
    cr_assert(r.ev[0].ptr >= p && r.ev[0].ptr < p + w.n, "message not delivered in place");
    cr_assert(r.ev[1].ptr >= p && r.ev[1].ptr < p + w.n, "ping not delivered in place");
    expect_event(&r, 0, 'm', TH_WS_TEXT, "hello", 5);
    cr_assert_null(rd.buf);
    guard_free(&g);
    rec_free(&r);
    th_ws_reader_free(&rd);
    free(w.p);
}

Test(ws_reader, idle_reader_holds_no_buffer)
{
    struct wire w = {0};
    frame_str(&w, 0, TH_WS_TEXT, "abc");
    frame_str(&w, 1, TH_WS_CONT, "def");
    frame_str(&w, 1, TH_WS_PING, "xyz");
    struct th_ws_reader rd;
    th_ws_reader_init(&rd, 1024);
    struct rec r = {0};
    /* Partial first fragment: buffered. */
    struct wire a = {w.p, 8, 8};
    cr_assert_eq(feed_chunked(&rd, &a, 0, &r), 0);
    cr_assert_not_null(rd.buf);
    struct wire b = {w.p + 8, 10, 10}; /* rest of fragment 1 and all of fragment 2 (9 bytes each) */
    cr_assert_eq(feed_chunked(&rd, &b, 0, &r), 0);
    cr_assert_eq(r.nev, 1);
    cr_assert_null(rd.buf, "message complete: buffer must be freed");
    /* A ping split in the middle of its payload, with no message in progress. */
    struct wire c = {w.p + 18, 8, 8}, d = {w.p + 26, w.n - 26, w.n - 26};
    cr_assert_eq(feed_chunked(&rd, &c, 0, &r), 0);
    cr_assert_eq(feed_chunked(&rd, &d, 0, &r), 0);
    expect_event(&r, 1, 'p', TH_WS_PING, "xyz", 3);
    cr_assert_null(rd.buf);
    cr_assert_eq(rd.buf_cap, 0);
    cr_assert_leq(sizeof(struct th_ws_reader), 96, "the reader lives in every connection");
    rec_free(&r);
    th_ws_reader_free(&rd);
    free(w.p);
}

Test(ws_reader, interleaved_control_split_keeps_message_intact)
{
    struct wire w = {0};
    frame_str(&w, 0, TH_WS_BINARY, "first-part|");
    frame_str(&w, 1, TH_WS_PING, "0123456789");
    frame_str(&w, 0, TH_WS_CONT, "second|");
    frame_str(&w, 1, TH_WS_PONG, "abcdefghij");
    frame_str(&w, 1, TH_WS_CONT, "third");
    for (size_t chunk = 1; chunk < w.n; chunk += 3) {
        struct th_ws_reader rd;
        th_ws_reader_init(&rd, 1024);
        struct rec r = {0};
        cr_assert_eq(feed_chunked(&rd, &w, chunk, &r), 0);
        cr_assert_eq(r.nev, 3);
        expect_event(&r, 0, 'p', TH_WS_PING, "0123456789", 10);
        expect_event(&r, 1, 'o', TH_WS_PONG, "abcdefghij", 10);
        expect_event(&r, 2, 'm', TH_WS_BINARY, "first-part|second|third", 23);
        cr_assert_eq(r.frames, 5);
        rec_free(&r);
        th_ws_reader_free(&rd);
    }
    free(w.p);
}

static int feed_one_frame(uint8_t b0, int masked, int form, const void *p, size_t n)
{
    struct wire w = {0};
    frame_raw(&w, b0, masked, form, p, n);
    struct rec r = {0};
    int rc = feed_fresh(&w, 65536, &r);
    cr_assert_eq(r.nev, 0, "no event for a bad frame");
    free(w.p);
    return rc;
}

Test(ws_reader, protocol_errors_1002)
{
    uint8_t big[126] = {0};
    cr_assert_eq(feed_one_frame(0x81, 0, LEN_MINIMAL, "x", 1), 1002, "unmasked");
    cr_assert_eq(feed_one_frame(0xc1, 1, LEN_MINIMAL, "x", 1), 1002, "RSV1");
    cr_assert_eq(feed_one_frame(0xa1, 1, LEN_MINIMAL, "x", 1), 1002, "RSV2");
    cr_assert_eq(feed_one_frame(0x91, 1, LEN_MINIMAL, "x", 1), 1002, "RSV3");
    for (uint8_t op = 3; op <= 15; op++)
        if (op < 8 || op > 10)
            cr_assert_eq(feed_one_frame(0x80 | op, 1, LEN_MINIMAL, "x", 1), 1002, "opcode %u", op);
    cr_assert_eq(feed_one_frame(0x89, 1, LEN_MINIMAL, big, 126), 1002, "ping of 126 bytes");
    cr_assert_eq(feed_one_frame(0x89, 1, LEN_16, "x", 1), 1002, "control with 16-bit length");
    cr_assert_eq(feed_one_frame(0x09, 1, LEN_MINIMAL, "x", 1), 1002, "fragmented ping");
    cr_assert_eq(feed_one_frame(0x80, 1, LEN_MINIMAL, "x", 1), 1002, "continuation, no message");
    cr_assert_eq(feed_one_frame(0x00, 1, LEN_MINIMAL, "x", 1), 1002, "continuation, no message");
    /* A new data frame inside a fragmented message. */
    struct wire w = {0};
    frame_str(&w, 0, TH_WS_TEXT, "a");
    frame_str(&w, 1, TH_WS_TEXT, "b");
    struct rec r = {0};
    cr_assert_eq(feed_fresh(&w, 1024, &r), 1002);
    free(w.p);
    w = (struct wire){0};
    frame_str(&w, 0, TH_WS_BINARY, "a");
    frame_str(&w, 0, TH_WS_BINARY, "b");
    cr_assert_eq(feed_fresh(&w, 1024, &r), 1002);
    cr_assert_eq(r.nev, 0);
    free(w.p);
}

Test(ws_reader, errors_are_reported_from_the_header_bytes_alone)
{
    /* Only two bytes of an unmasked frame: no need to wait for the rest. */
    struct th_ws_reader rd;
    th_ws_reader_init(&rd, 1024);
    uint8_t two[2] = {0x81, 0x7e};
    cr_assert_eq(th_ws_reader_feed(&rd, two, 2, &cbs, NULL), 1002);
    th_ws_reader_free(&rd);
    /* A 64-bit length with the top bit set, fed a byte at a time. */
    uint8_t b[14] = {0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4};
    th_ws_reader_init(&rd, 1024);
    int rc = 0;
    size_t i;
    for (i = 0; i < sizeof(b) && rc == 0; i++)
        rc = th_ws_reader_feed(&rd, b + i, 1, &cbs, NULL);
    cr_assert_eq(rc, 1002);
    cr_assert_eq(i, 14);
    th_ws_reader_free(&rd);
}

Test(ws_reader, too_big_fails_before_allocating)
{
    struct th_ws_reader rd;
    th_ws_reader_init(&rd, 65536);
    /* Declares 2^62 bytes; only the header is sent. */
    uint8_t b[14] = {0x82, 0xff, 0x40, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4};
    cr_assert_eq(th_ws_reader_feed(&rd, b, sizeof(b), &cbs, NULL), 1009);
    cr_assert_null(rd.buf);
    cr_assert_eq(rd.buf_cap, 0);
    th_ws_reader_free(&rd);
    /* Exactly max_message is fine, one more is not. */
    static uint8_t payload[1001];
    struct wire w = {0};
    frame(&w, 1, TH_WS_BINARY, payload, 1000);
    struct rec r = {0};
    cr_assert_eq(feed_fresh(&w, 1000, &r), 0);
    cr_assert_eq(r.nev, 1);
    rec_free(&r);
    free(w.p);
    w = (struct wire){0};
    frame(&w, 1, TH_WS_BINARY, payload, 1001);
    cr_assert_eq(feed_fresh(&w, 1000, &r), 1009);
    free(w.p);
}

Test(ws_reader, too_big_across_fragments_counts_what_is_buffered)
{
    static uint8_t payload[600];
    struct wire w = {0};
    frame(&w, 0, TH_WS_BINARY, payload, 600);
    frame(&w, 0, TH_WS_CONT, payload, 400); /* 1000 so far: at the limit */
    frame(&w, 1, TH_WS_CONT, payload, 1);   /* one over */
    struct th_ws_reader rd;
    th_ws_reader_init(&rd, 1000);
    struct rec r = {0};
    cr_assert_eq(feed_chunked(&rd, &w, 0, &r), 1009);
    cr_assert_eq(r.nev, 0);
    cr_assert_leq(rd.buf_cap, 1000, "never allocated past what was declared and allowed");
    th_ws_reader_free(&rd);
    free(w.p);
}

Test(ws_reader, a_stalled_large_frame_holds_only_what_arrived)
{
    static uint8_t payload[60000];
    struct wire w = {0};
    frame(&w, 1, TH_WS_BINARY, payload, sizeof(payload));
    struct wire head = {w.p, 8 + 100, 0};
    struct th_ws_reader rd;
    th_ws_reader_init(&rd, 65536);
    struct rec r = {0};
    cr_assert_eq(feed_chunked(&rd, &head, 0, &r), 0);
    cr_assert_leq(rd.buf_cap, 256, "cap %u after 100 bytes of a 60000-byte frame", rd.buf_cap);
    th_ws_reader_free(&rd);
    free(w.p);
}

Test(ws_reader, fragment_flood_is_capped)
{
    struct wire w = {0};
    frame_str(&w, 0, TH_WS_TEXT, "a");
    for (int i = 1; i < 100000; i++)
        frame_str(&w, 0, TH_WS_CONT, "a");
    struct th_ws_reader rd;
    th_ws_reader_init(&rd, 1 << 20);
    struct rec r = {0};
    cr_assert_eq(th_ws_reader_feed(&rd, w.p, w.n, &cbs, &r), 1009);
    cr_assert_eq(r.frames, TH_WS_MAX_FRAGMENTS, "stopped right after the cap");
    th_ws_reader_free(&rd);
    free(w.p);
    /* Exactly TH_WS_MAX_FRAGMENTS fragments is a valid message. */
    w = (struct wire){0};
    frame_str(&w, 0, TH_WS_TEXT, "a");
    for (int i = 2; i < TH_WS_MAX_FRAGMENTS; i++)
        frame_str(&w, 0, TH_WS_CONT, "a");
    frame_str(&w, 1, TH_WS_CONT, "a");
    cr_assert_eq(feed_fresh(&w, 1 << 20, &r), 0);
    cr_assert_eq(r.nev, 1);
    cr_assert_eq(r.ev[0].n, TH_WS_MAX_FRAGMENTS);
    rec_free(&r);
    free(w.p);
}

Test(ws_reader, invalid_utf8_fails_at_the_first_bad_fragment)
{
    struct wire w = {0};
    frame_str(&w, 0, TH_WS_TEXT, "ok \xed\xa0\x80"); /* a surrogate in fragment 1 */
    struct rec r = {0};
    cr_assert_eq(feed_fresh(&w, 1024, &r), 1007, "no need to wait for the rest of the message");
    free(w.p);
    /* Bad byte in the middle of a frame that has not fully arrived yet. */
    w = (struct wire){0};
    frame_str(&w, 1, TH_WS_TEXT,
              "abc\xff"
              "defghijklmnop");
    struct wire part = {w.p, 6 + 5, 0};
    cr_assert_eq(feed_fresh(&part, 1024, &r), 1007);
    free(w.p);
    /* A message that ends inside a code point. */
    w = (struct wire){0};
    frame_str(&w, 0, TH_WS_TEXT, "ab");
    frame_str(&w, 1, TH_WS_CONT, "\xe2\x82");
    cr_assert_eq(feed_fresh(&w, 1024, &r), 1007);
    free(w.p);
    /* Binary messages are not UTF-8 checked. */
    w = (struct wire){0};
    frame_str(&w, 1, TH_WS_BINARY, "\xff\xfe");
    cr_assert_eq(feed_fresh(&w, 1024, &r), 0);
    cr_assert_eq(r.nev, 1);
    rec_free(&r);
    free(w.p);
}

Test(ws_reader, close_frames)
{
    struct {
        const char *payload;
        size_t n;
        int rc;
        uint16_t code;
    } cases[] = {
        {"", 0, 0, TH_WS_NO_STATUS},
        {"\x03", 1, 1002, 0},
        {"\x03\xe8", 2, 0, 1000},
        {"\x0b\xb8", 2, 0, 3000},
        {"\x13\x87"
         "bye",
         5, 0, 4999},
        {"\x03\xe7", 2, 1002, 0}, /* 999 */
        {"\x03\xed", 2, 1002, 0}, /* 1005 */
        {"\x03\xee", 2, 1002, 0}, /* 1006 */
        {"\x03\xf7", 2, 1002, 0}, /* 1015 */
        {"\x13\x88", 2, 1002, 0}, /* 5000 */
        {"\x03\xe8\xc3", 3, 1007, 0},
        {"\x03\xe8\xed\xa0\x80", 5, 1007, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct wire w = {0};
        frame(&w, 1, TH_WS_CLOSE, cases[i].payload, cases[i].n);
        struct rec r = {0};
        cr_assert_eq(feed_fresh(&w, 1024, &r), cases[i].rc, "case %zu", i);
        cr_assert_eq(r.nev, cases[i].rc ? 0 : 1, "case %zu", i);
        if (r.nev)
            cr_assert_eq(r.ev[0].code, cases[i].code, "case %zu", i);
        rec_free(&r);
        free(w.p);
    }
}

Test(ws_reader, everything_after_close_is_ignored)
{
    struct wire w = {0};
    frame_str(&w, 1, TH_WS_CLOSE, "\x03\xe8");
    frame_str(&w, 1, TH_WS_TEXT, "after");
    wire_put(&w, "\xff\xff garbage", 10);
    struct th_ws_reader rd;
    th_ws_reader_init(&rd, 1024);
    struct rec r = {0};
    cr_assert_eq(feed_chunked(&rd, &w, 3, &r), 0);
    cr_assert_eq(r.nev, 1);
    cr_assert_eq(r.ev[0].kind, 'c');
    cr_assert_eq(r.frames, 1);
    cr_assert_eq(th_ws_reader_feed(&rd, (uint8_t *)"\x81\x05", 2, &cbs, &r), 0);
    cr_assert_eq(r.nev, 1);
    rec_free(&r);
    th_ws_reader_free(&rd);
    free(w.p);
}

Test(ws_reader, callback_stop_leaves_the_rest_unconsumed)
{
    struct wire w = {0};
    frame_str(&w, 1, TH_WS_TEXT, "one");
    frame_str(&w, 1, TH_WS_TEXT, "two");
    struct rec r = {.stop_after = 1};
    cr_assert_eq(feed_fresh(&w, 1024, &r), 1);
    cr_assert_eq(r.nev, 1);
    expect_event(&r, 0, 'm', TH_WS_TEXT, "one", 3);
    rec_free(&r);
    free(w.p);
}

Test(ws_reader, null_callbacks_are_allowed)
{
    struct wire w = {0};
    frame_str(&w, 1, TH_WS_TEXT, "one");
    frame_str(&w, 1, TH_WS_PING, "p");
    frame_str(&w, 1, TH_WS_CLOSE, "");
    struct th_ws_reader rd;
    th_ws_reader_init(&rd, 1024);
    struct th_ws_callbacks none = {0};
    cr_assert_eq(th_ws_reader_feed(&rd, w.p, w.n, &none, NULL), 0);
    cr_assert(rd.closed);
    th_ws_reader_free(&rd);
    free(w.p);
}

Test(ws_reader, free_in_the_middle_of_a_message)
{
    struct wire w = {0};
    frame_str(&w, 0, TH_WS_TEXT, "partial message");
    struct th_ws_reader rd;
    th_ws_reader_init(&rd, 1024);
    struct rec r = {0};
    cr_assert_eq(th_ws_reader_feed(&rd, w.p, w.n, &cbs, &r), 0);
    cr_assert_eq(r.frames, 1);
    cr_assert_eq(r.nev, 0);
    cr_assert_not_null(rd.buf);
    th_ws_reader_free(&rd); /* LeakSanitizer checks nothing is left */
    cr_assert_null(rd.buf);
    free(w.p);
}

Test(ws_reader, errors_free_the_buffer_and_end_the_stream)
{
    struct wire w = {0};
    frame_str(&w, 0, TH_WS_TEXT, "buffered part");
    frame_str(&w, 1, TH_WS_TEXT, "a new message inside the first");
    struct th_ws_reader rd;
    th_ws_reader_init(&rd, 1024);
    struct rec r = {0};
    struct wire first = {w.p, 6 + 13, 0}, rest = {w.p + 19, w.n - 19, 0};
    cr_assert_eq(feed_chunked(&rd, &first, 0, &r), 0);
    cr_assert_not_null(rd.buf);
    cr_assert_eq(feed_chunked(&rd, &rest, 0, &r), 1002);
    cr_assert_null(rd.buf, "the buffer is freed as soon as the error is found");
    /* The code was reported once; later bytes are ignored. */
    cr_assert_eq(feed_chunked(&rd, &first, 0, &r), 0);
    cr_assert_eq(r.nev, 0);
    th_ws_reader_free(&rd);
    free(w.p);
}

Test(ws_reader, close_inside_a_fragmented_message_frees_the_buffer)
{
    struct wire w = {0};
    frame_str(&w, 0, TH_WS_BINARY, "half a message");
    frame_str(&w, 1, TH_WS_CLOSE,
              "\x03\xe9"
              "going");
    struct th_ws_reader rd;
    th_ws_reader_init(&rd, 1024);
    struct rec r = {0};
    cr_assert_eq(feed_chunked(&rd, &w, 5, &r), 0); /* the close payload arrives in pieces */
    cr_assert_eq(r.nev, 1);
    expect_event(&r, 0, 'c', TH_WS_CLOSE, "going", 5);
    cr_assert_eq(r.ev[0].code, 1001);
    cr_assert_null(rd.buf);
    rec_free(&r);
    th_ws_reader_free(&rd);
    free(w.p);
}
