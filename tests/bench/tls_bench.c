/*
 * tether-bench-tls: what the TLS engine (shm/proto/tls.h) costs the server,
 * measured on the engine alone against OpenSSL clients in memory: no
 * sockets, no worker, and no load generator competing for the CPU.
 *
 *   tether-bench-tls [--conns N] [--handshakes N] [--tls12]
 *
 * Memory: N server connections, each handshaken, one small request and
 * answer exchanged (as an upgrade would), then made idle (th_tls_busy 0).
 * Every libssl/libcrypto allocation is counted through
 * CRYPTO_set_mem_functions, charged to the server or the client by who was
 * running, and grouped by the OpenSSL source line that made it; the table
 * gives the bytes each idle server connection still holds, requested and
 * as glibc chunks (what the heap really spends), and the top allocation
 * sites. Our own allocations (the struct th_tls) are malloc'd outside
 * OpenSSL and listed apart.
 *
 * Handshakes: N full, then N resumed (the session of the first offered on
 * every later one), timing only the server's calls with the thread's CPU
 * clock, so the client's half (certificate verification, its key share) is
 * left out; plus the same split by phase (SSL_new/free, the handshake
 * flights, the ticket callback's share is in the flights).
 */
#include "shm/proto/tls.h"
#include "tests/shm/proto/tls_pair.h"

#include <malloc.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- allocation accounting --------------------------------------------- */

#define SITES 4096

struct site {
    const char *file;
    int line;
    long live_bytes, live_n; /* server side */
};

/* A header before every OpenSSL allocation: its size and whom it is charged to. */
struct hdr {
    size_t n;
    int site; /* -1: the client's */
    int pad;
};
#define HDR sizeof(struct hdr) /* 16: keeps OpenSSL's alignment */

static struct site sites[SITES];
static int nsites;
static int server_running, counting = 1; /* counting 0: headers only (timing runs) */
static long srv_bytes, srv_chunks, srv_n;

static int site_of(const char *file, int line)
{
    for (int i = 0; i < nsites; i++)
        if (sites[i].line == line && sites[i].file == file)
            return i;
    if (nsites == SITES)
        return SITES - 1;
    sites[nsites].file = file;
    sites[nsites].line = line;
    return nsites++;
}

static size_t chunk(size_t n) /* glibc: request + 8-byte header, 16-aligned, >= 32 */
{
    size_t c = (n + 8 + 15) & ~(size_t)15;
    return c < 32 ? 32 : c;
}

static void *track(struct hdr *h, size_t n, const char *file, int line)
{
    h->n = n;
    h->site = server_running && counting ? site_of(file, line) : -1;
    if (h->site >= 0) {
        sites[h->site].live_bytes += (long)n;
        sites[h->site].live_n++;
        srv_bytes += (long)n, srv_chunks += (long)chunk(n), srv_n++;
    }
    return (char *)h + HDR;
}

static struct hdr *untrack(void *p)
{
    struct hdr *h = (struct hdr *)((char *)p - HDR);
    if (h->site >= 0) {
        sites[h->site].live_bytes -= (long)h->n;
        sites[h->site].live_n--;
        srv_bytes -= (long)h->n, srv_chunks -= (long)chunk(h->n), srv_n--;
    }
    return h;
}

static void *m_malloc(size_t n, const char *file, int line)
{
    struct hdr *h = malloc(n + HDR);
    return h ? track(h, n, file, line) : NULL;
}

static void m_free(void *p, const char *file, int line)
{
    (void)file, (void)line;
    if (p)
        free(untrack(p));
}

static void *m_realloc(void *p, size_t n, const char *file, int line)
{
    if (!p)
        return m_malloc(n, file, line);
    struct hdr *old = untrack(p), *h = realloc(old, n + HDR);
    if (!h) {
        track(old, old->n, file, line); /* unchanged */
        return NULL;
    }
    return track(h, n, file, line);
}

/* ---- server and clients in memory ---------------------------------------- */

static char dir[64], ca[128], cert[128], key[128];
static struct th_tls_ctx *sctx;
static double srv_cpu; /* seconds of server calls */
static double hook_t0;

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Around every server call: its allocations and its CPU are the server's. */
static void server_hook(int entering)
{
    if (entering) {
        hook_t0 = cpu_now();
        server_running = 1;
    } else {
        server_running = 0;
        srv_cpu += cpu_now() - hook_t0;
    }
}

#define SERVER(stmt)                                                                               \
    do {                                                                                           \
        server_hook(1);                                                                            \
        stmt;                                                                                      \
        server_hook(0);                                                                            \
    } while (0)

static void pair_init(struct tp_pair *p, SSL_CTX *cctx, SSL_SESSION *sess)
{
    if (tp_pair_init(p, sctx, cctx, sess) < 0)
        abort();
}

/* Handshake, a 200-byte request up and a 129-byte answer down, then idle. */
static void exchange(struct tp_pair *p)
{
    static const char req[200] = "GET /ws?token=... HTTP/1.1";
    static const char resp[129] = "HTTP/1.1 101 Switching Protocols";
    char got[512];
    int rc = TH_TLS_OK;
    if (tp_pump(p) != TH_TLS_OK || !SSL_is_init_finished(p->c) ||
        SSL_write(p->c, req, 200) != 200 || tp_pump(p) != TH_TLS_OK || p->plain.n != 200)
        abort();
    SERVER(rc = th_tls_write(p->s, (const uint8_t *)resp, sizeof(resp), tp_wire_sink, p));
    if (rc != TH_TLS_OK || tp_pump(p) != TH_TLS_OK || SSL_read(p->c, got, sizeof(got)) != 129)
        abort();
    SERVER(th_tls_busy(p->s, 0));
}

static void sh(const char *cmd)
{
    char full[1024];
    snprintf(full, sizeof(full), "cd %s && %s 2>/dev/null", dir, cmd);
    if (system(full) != 0) {
        fprintf(stderr, "tether-bench-tls: failed: %s\n", cmd);
        exit(1);
    }
}

static void make_certs(void)
{
    snprintf(dir, sizeof(dir), "/tmp/tether-bench-tls-XXXXXX");
    if (!mkdtemp(dir))
        exit(1);
    snprintf(ca, sizeof(ca), "%s/ca.pem", dir);
    snprintf(cert, sizeof(cert), "%s/cert.pem", dir);
    snprintf(key, sizeof(key), "%s/key.pem", dir);
    sh("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key "
       "-out ca.pem -days 2 -subj '/CN=bench CA'");
    sh("openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout key.pem -out "
       "srv.csr -subj /CN=localhost");
    sh("openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out cert.pem "
       "-days 1");
}

static int by_bytes(const void *a, const void *b)
{
    long x = ((const struct site *)a)->live_bytes, y = ((const struct site *)b)->live_bytes;
    return x < y ? 1 : x > y ? -1 : 0;
}

static void memory(SSL_CTX *cctx, int conns)
{
    struct tp_pair *ps = calloc((size_t)conns, sizeof(*ps));
    struct site base[SITES];
    long b0 = srv_bytes, c0 = srv_chunks, n0 = srv_n;
    memcpy(base, sites, sizeof(base));
    for (int i = 0; i < conns; i++) {
        pair_init(&ps[i], cctx, NULL);
        exchange(&ps[i]);
    }
    printf("idle server connection (%s, %d connections, after th_tls_busy(0)):\n",
           SSL_get_version(ps[0].c), conns);
    printf("  OpenSSL allocations: %.1f per connection, %.0f B requested, %.0f B as glibc "
           "chunks\n",
           (double)(srv_n - n0) / conns, (double)(srv_bytes - b0) / conns,
           (double)(srv_chunks - c0) / conns);
    printf("  ours (struct th_tls, plain malloc): %zu B chunk\n", chunk(48));
    struct site d[SITES];
    for (int i = 0; i < nsites; i++) {
        d[i] = sites[i];
        d[i].live_bytes -= base[i].live_bytes;
        d[i].live_n -= base[i].live_n;
    }
    qsort(d, (size_t)nsites, sizeof(d[0]), by_bytes);
    printf("  %-44s %10s %8s\n", "site (OpenSSL source line)", "B/conn", "n/conn");
    for (int i = 0; i < nsites && d[i].live_bytes > 0 && i < 16; i++)
        printf("  %-44.44s:%-5d %8.0f %8.1f\n", d[i].file ? d[i].file : "?", d[i].line,
               (double)d[i].live_bytes / conns, (double)d[i].live_n / conns);
    for (int i = 0; i < conns; i++)
        tp_pair_free(&ps[i]);
    free(ps);
}

static int by_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* One handshake (resumed with sess), its exchange and free; returns the server's CPU seconds. */
static double one(SSL_CTX *cctx, SSL_SESSION *sess, int *reused)
{
    struct tp_pair p;
    srv_cpu = 0;
    pair_init(&p, cctx, sess);
    exchange(&p);
    *reused += sess && SSL_session_reused(p.c);
    tp_pair_free(&p);
    return srv_cpu;
}

/*
 * Batches of 50 full then 50 resumed handshakes, alternating, so both
 * kinds see the same machine (this one is shared: a CPU clock runs slower
 * or faster with the neighbours); the medians of the batches are reported.
 */
static void handshakes(SSL_CTX *cctx, int n)
{
    struct tp_pair p;
    counting = 0;              /* the accounting's own cost stays out of the times */
    pair_init(&p, cctx, NULL); /* warm up, and the session to resume */
    exchange(&p);
    SSL_SESSION *sess = SSL_get1_session(p.c);
    tp_pair_free(&p);
    enum { BATCH = 50 };
    int nb = n / BATCH < 1 ? 1 : n / BATCH, reused = 0;
    double *full = calloc((size_t)nb, sizeof(double)), *res = calloc((size_t)nb, sizeof(double));
    double *ratio = calloc((size_t)nb, sizeof(double));
    for (int b = 0; b < nb; b++) {
        for (int i = 0; i < BATCH; i++)
            full[b] += one(cctx, NULL, &reused) / BATCH;
        for (int i = 0; i < BATCH; i++)
            res[b] += one(cctx, sess, &reused) / BATCH;
        ratio[b] = full[b] / res[b];
    }
    qsort(full, (size_t)nb, sizeof(double), by_double);
    qsort(res, (size_t)nb, sizeof(double), by_double);
    qsort(ratio, (size_t)nb, sizeof(double), by_double);
    printf("server CPU per handshake (%d batches of %d full + %d resumed, medians; new "
           "connection + handshake + 200 B up/129 B down + free):\n  full %.1f us, resumed %.1f "
           "us (%d of %d resumed): full/resumed %.2fx (batches: %.2fx..%.2fx)\n",
           nb, BATCH, BATCH, full[nb / 2] * 1e6, res[nb / 2] * 1e6, reused, nb * BATCH,
           ratio[nb / 2], ratio[0], ratio[nb - 1]);
    free(full), free(res), free(ratio);
    SSL_SESSION_free(sess);
}

int main(int argc, char **argv)
{
    int conns = 2000, hs = 2000, tls12 = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--conns") && i + 1 < argc)
            conns = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--handshakes") && i + 1 < argc)
            hs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--tls12"))
            tls12 = 1;
        else {
            fprintf(stderr, "usage: tether-bench-tls [--conns N] [--handshakes N] [--tls12]\n");
            return 2;
        }
    }
    tp_server_hook = server_hook;
    if (!CRYPTO_set_mem_functions(m_malloc, m_realloc, m_free)) {
        fprintf(stderr, "tether-bench-tls: cannot count OpenSSL's allocations\n");
        return 1;
    }
    make_certs();
    struct th_tls_tickets *tk = th_tls_tickets_new(0);
    char err[512];
    SERVER(sctx = th_tls_ctx_new(cert, key, tk, err, sizeof(err)));
    if (!sctx) {
        fprintf(stderr, "tether-bench-tls: %s\n", err);
        return 1;
    }
    SSL_CTX *cctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_load_verify_locations(cctx, ca, NULL);
    SSL_CTX_set_verify(cctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_alpn_protos(cctx, (const uint8_t *)"\x08http/1.1", 9);
    if (tls12)
        SSL_CTX_set_max_proto_version(cctx, TLS1_2_VERSION);
    if (getenv("TLS_BENCH_SUITES")) /* the client offers only these (TLS 1.3 names) */
        SSL_CTX_set_ciphersuites(cctx, getenv("TLS_BENCH_SUITES"));
    printf("tether-bench-tls: %s, EC P-256 certificate\n", OpenSSL_version(OPENSSL_VERSION));
    if (conns > 0)
        memory(cctx, conns);
    if (hs > 0)
        handshakes(cctx, hs);
    SSL_CTX_free(cctx);
    char rm[128];
    snprintf(rm, sizeof(rm), "rm -rf %s", dir);
    return system(rm) == 0 ? 0 : 1;
}
