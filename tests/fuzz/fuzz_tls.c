/*
 * Fuzz target for the TLS engine (shm/proto/tls.h) as a server facing
 * arbitrary client bytes: ClientHellos, records, alerts, garbage.
 *
 * The input (after 4 bytes that seed the split points) is fed once whole
 * and once in input-chosen pieces to two fresh connections. Properties: no
 * plaintext ever comes out of a connection whose handshake is not done; no
 * piece after a fatal error yields plaintext; a plaintext piece fits the
 * scratch it was written into; and whether the input ends in a fatal error
 * does not depend on how it was split (the record layer must not care).
 * The certificate and key are made once, in memory, with libcrypto, and
 * written to a temporary directory for th_tls_ctx_new.
 */
#include "tests/fuzz/fuzz.h"
#include "shm/proto/tls.h"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <unistd.h>

static struct th_tls_ctx *ctx;

static void write_pem(const char *path, X509 *x, EVP_PKEY *k)
{
    FILE *f = fopen(path, "w");
    FUZZ_CHECK(f, "cannot write %s", path);
    FUZZ_CHECK(x ? PEM_write_X509(f, x) : PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL),
               "PEM write of %s", path);
    fclose(f);
}

/* A self-signed P-256 certificate valid for a day, and its key. */
static void make_ctx(void)
{
    char dir[] = "/tmp/tether-fuzz-tls-XXXXXX", cert[64], key[64], err[256];
    FUZZ_CHECK(mkdtemp(dir), "mkdtemp");
    snprintf(cert, sizeof(cert), "%s/cert.pem", dir);
    snprintf(key, sizeof(key), "%s/key.pem", dir);
    EVP_PKEY *k = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    FUZZ_CHECK(k && x, "key or certificate allocation");
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), -60);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    X509_set_pubkey(x, k);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"localhost", -1, -1,
                               0);
    X509_set_issuer_name(x, name);
    FUZZ_CHECK(X509_sign(x, k, EVP_sha256()) > 0, "self-signing");
    write_pem(cert, x, NULL);
    write_pem(key, NULL, k);
    X509_free(x);
    EVP_PKEY_free(k);
    ctx = th_tls_ctx_new(cert, key, th_tls_tickets_new(0), err, sizeof(err));
    FUZZ_CHECK(ctx, "context: %s", err);
    unlink(cert);
    unlink(key);
    rmdir(dir);
}

struct run {
    struct th_tls *t;
    int failed;   /* a fatal error was returned */
    size_t plain; /* plaintext bytes out */
};

static int wire_sink(void *arg, const uint8_t *p, size_t n)
{
    (void)arg, (void)p, (void)n;
    return 0;
}

static int plain_sink(void *arg, const uint8_t *p, size_t n)
{
    struct run *r = arg;
    (void)p;
    FUZZ_CHECK(th_tls_established(r->t), "plaintext before the handshake finished");
    FUZZ_CHECK(n <= TH_TLS_RECORD_MAX, "a plaintext piece of %zu bytes", n);
    r->plain += n;
    return 0;
}

static void feed(struct run *r, const uint8_t *p, size_t n)
{
    static uint8_t scratch[TH_TLS_RECORD_MAX];
    uint8_t *copy = fuzz_dup(p, n); /* exact size: ASan sees any over-read */
    size_t before = r->plain;
    int rc = th_tls_input(r->t, copy, n, scratch, sizeof(scratch), plain_sink, wire_sink, r);
    free(copy);
    if (r->failed)
        FUZZ_CHECK(r->plain == before, "plaintext after a fatal error");
    if (rc == TH_TLS_ERROR) {
        char why[128];
        th_tls_last_error(why, sizeof(why));
        r->failed = 1;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!ctx)
        make_ctx();
    if (size < 4)
        return 0;
    uint32_t seed = (uint32_t)data[0] | (uint32_t)data[1] << 8 | (uint32_t)data[2] << 16 |
                    (uint32_t)data[3] << 24;
    data += 4, size -= 4;
    struct run whole = {th_tls_new(ctx), 0, 0}, split = {th_tls_new(ctx), 0, 0};
    FUZZ_CHECK(whole.t && split.t, "out of memory");
    feed(&whole, data, size);
    for (size_t off = 0; off < size;) {
        size_t k = 1 + fuzz_rand(&seed) % 64;
        if (k > size - off)
            k = size - off;
        feed(&split, data + off, k);
        off += k;
    }
    FUZZ_CHECK(whole.failed == split.failed, "fatal error whole %d, split %d", whole.failed,
               split.failed);
    th_tls_free(whole.t);
    th_tls_free(split.t);
    return 0;
}
