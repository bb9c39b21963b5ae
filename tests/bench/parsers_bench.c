/*
 * A short throughput benchmark of the worker's parsers (not a test: ctest
 * does not run it, and nothing here asserts a speed). Prints one line per
 * measurement: UTF-8 validation (ASCII JSON and mixed text), unmasking, the
 * frame reader on small zero-copy frames and on 64 KiB messages split in
 * 1 KiB reads, the upgrade-request parser, and HS256 verification.
 *
 *   build/tests/bench_worker_parsers [seconds-per-case, default 0.3]
 */
#include "shm/proto/http.h"
#include "shm/proto/jwt.h"
#include "shm/proto/utf8.h"
#include "worker/ws.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double budget = 0.3;
static volatile uint64_t sink;

/* Run fn repeatedly for the budget; returns seconds per call. */
static double time_it(void (*fn)(void *), void *arg)
{
    uint64_t iters = 0;
    double t0 = now_s(), t;
    do {
        for (int i = 0; i < 64; i++)
            fn(arg);
        iters += 64;
        t = now_s();
    } while (t - t0 < budget);
    return (t - t0) / (double)iters;
}

struct buf {
    uint8_t *p;
    size_t n;
};

static void utf8_case(void *a)
{
    struct buf *b = a;
    sink += th_utf8_feed(TH_UTF8_ACCEPT, b->p, b->n);
}

static void unmask_case(void *a)
{
    struct buf *b = a;
    static const uint8_t mask[4] = {1, 2, 3, 4};
    th_ws_unmask(b->p, b->n, mask, 1);
}

static int count_msg(void *c, enum th_ws_opcode op, const uint8_t *p, size_t n)
{
    (void)c, (void)op, (void)p;
    sink += n;
    return 0;
}

static const struct th_ws_callbacks cbs = {.on_message = count_msg};

struct reader_case {
    struct buf wire; /* pristine frames */
    uint8_t *work;   /* the reader unmasks in place: fed from a copy */
    size_t chunk;
};

static void reader_case(void *a)
{
    struct reader_case *rc = a;
    memcpy(rc->work, rc->wire.p, rc->wire.n);
    struct th_ws_reader r;
    th_ws_reader_init(&r, 1 << 20);
    for (size_t off = 0; off < rc->wire.n; off += rc->chunk) {
        size_t k = rc->wire.n - off < rc->chunk ? rc->wire.n - off : rc->chunk;
        th_ws_reader_feed(&r, rc->work + off, k, &cbs, NULL);
    }
    th_ws_reader_free(&r);
}

/* count masked frames of len bytes each (unmasked text "aaa..."). */
static struct buf make_frames(size_t count, size_t len)
{
    static const uint8_t mask[4] = {0x11, 0x22, 0x33, 0x44};
    struct buf b = {malloc(count * (len + 14)), 0};
    for (size_t i = 0; i < count; i++) {
        b.n += th_ws_frame_hdr_write_masked(b.p + b.n, TH_WS_TEXT, 1, len, mask);
        memset(b.p + b.n, 'a', len);
        th_ws_unmask(b.p + b.n, len, mask, 0);
        b.n += len;
    }
    return b;
}

static const char request[] =
    "GET /ws?token=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1MSJ9.sig HTTP/1.1\r\n"
    "Host: 127.0.0.1:8080\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\nUser-Agent: bench/1.0\r\n\r\n";

static void http_case(void *a)
{
    (void)a;
    static struct th_http_req req;
    req.scanned = 0;
    sink += (uint64_t)th_http_parse_request(&req, request, sizeof(request) - 1, 0);
}

static char token[512];
static void jwt_case(void *a)
{
    (void)a;
    struct th_jwt_claims c;
    sink +=
        (uint64_t)th_jwt_verify(token, strlen(token), (const uint8_t *)"secret", 6, 1700000000, &c);
}

int main(int argc, char **argv)
{
    if (argc > 1)
        budget = atof(argv[1]);
    size_t n = 1 << 20;
    struct buf ascii = {malloc(n), n}, mixed = {malloc(n), n};
    for (size_t i = 0; i < n; i++)
        ascii.p[i] = (uint8_t) "{\"type\":\"ping\",\"id\":\"0123456789\"} "[i % 35];
    for (size_t i = 0; i + 3 <= n; i += 3)
        memcpy(mixed.p + i, i % 2 ? "\xe2\x82\xac" : "a\xc3\xa9", 3);
    mixed.n = n / 3 * 3;
    printf("utf8 ascii json     %8.0f MB/s\n", (double)n / time_it(utf8_case, &ascii) / 1e6);
    printf("utf8 mixed text     %8.0f MB/s\n", (double)mixed.n / time_it(utf8_case, &mixed) / 1e6);
    printf("unmask              %8.0f MB/s\n", (double)n / time_it(unmask_case, &ascii) / 1e6);

    struct reader_case small = {make_frames(1000, 20), NULL, 64 * 1024};
    small.work = malloc(small.wire.n);
    printf("reader 20 B frames  %8.2f M frames/s (64 KiB reads, zero-copy)\n",
           1000 / time_it(reader_case, &small) / 1e6);
    struct reader_case big = {make_frames(16, 65536), NULL, 1024};
    big.work = malloc(big.wire.n);
    printf("reader 64 KiB msgs  %8.0f MB/s (1 KiB reads, buffered)\n",
           (double)big.wire.n / time_it(reader_case, &big) / 1e6);
    printf("http upgrade head   %8.0f ns/request (%zu bytes)\n", time_it(http_case, NULL) * 1e9,
           sizeof(request) - 1);
    th_jwt_sign("user-1", (const uint8_t *)"secret", 6, 1700000000, 3600, token, sizeof(token));
    printf("jwt hs256 verify    %8.2f us/token\n", time_it(jwt_case, NULL) * 1e6);
    free(ascii.p), free(mixed.p), free(small.wire.p), free(small.work), free(big.wire.p),
        free(big.work);
    return 0;
}
