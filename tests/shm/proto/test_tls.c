/*
 * Unit tests of the TLS engine (shm/proto/tls.h) against an OpenSSL client
 * in memory: nothing but bytes handed back and forth, so every property is
 * checked without sockets: handshakes (TLS 1.3, TLS 1.2, ALPN), records
 * split at every byte, a KeyUpdate mid-stream, session resumption across
 * contexts that share a ticket secret (two workers, or a context reloaded
 * by SIGHUP) and its
 * refusal across secrets, renegotiation refused, garbage instead of a
 * ClientHello, close_notify both ways, and the load errors (missing file,
 * no PEM, mismatched key, expired certificate). The certificates are made
 * at test time with the `openssl` command.
 */
#include "shm/proto/tls.h"
#include "tls_pair.h"

#include <criterion/criterion.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[64];
static char ca[128], cert[128], key[128], key2[128], expired[128];

static void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sh(const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    cr_assert_eq(system(cmd), 0, "failed: %s", cmd);
}

static void make_certs(void)
{
    snprintf(dir, sizeof(dir), "/tmp/tether-tls-test-XXXXXX");
    cr_assert(mkdtemp(dir));
    snprintf(ca, sizeof(ca), "%s/ca.pem", dir);
    snprintf(cert, sizeof(cert), "%s/cert.pem", dir);
    snprintf(key, sizeof(key), "%s/key.pem", dir);
    snprintf(key2, sizeof(key2), "%s/key2.pem", dir);
    snprintf(expired, sizeof(expired), "%s/expired.pem", dir);
    const char *ec = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
    sh("cd %s && openssl req -x509 %s -keyout ca.key -out ca.pem -days 2 -subj '/CN=test CA' "
       "2>/dev/null",
       dir, ec);
    sh("cd %s && openssl req %s -keyout key.pem -out srv.csr -subj /CN=localhost 2>/dev/null", dir,
       ec);
    sh("cd %s && openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out "
       "cert.pem -days 1 2>/dev/null",
       dir);
    sh("cd %s && openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -out expired.pem -days -1 "
       "2>/dev/null",
       dir);
    sh("cd %s && openssl genpkey -algorithm ec -pkeyopt ec_paramgen_curve:P-256 -out key2.pem "
       "2>/dev/null",
       dir);
}

static void drop_certs(void)
{
    sh("rm -rf %s", dir);
}

TestSuite(tls, .init = make_certs, .fini = drop_certs);

/* ---- a client in memory, and the pump between it and the engine ---------- */

static SSL_CTX *client_ctx(int max_version, const char *alpn, size_t alpn_len)
{
    SSL_CTX *c = SSL_CTX_new(TLS_client_method());
    cr_assert(c);
    SSL_CTX_set_verify(c, SSL_VERIFY_PEER, NULL);
    cr_assert_eq(SSL_CTX_load_verify_locations(c, ca, NULL), 1);
    if (max_version)
        SSL_CTX_set_max_proto_version(c, max_version);
    if (alpn)
        SSL_CTX_set_alpn_protos(c, (const uint8_t *)alpn, (unsigned)alpn_len);
    SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_CLIENT);
    return c;
}

/* The client and the pump: tls_pair.h (shared with tether-bench-tls). */
static void pair_init(struct tp_pair *p, struct th_tls_ctx *sctx, SSL_CTX *cctx, SSL_SESSION *sess)
{
    cr_assert_eq(tp_pair_init(p, sctx, cctx, sess), 0);
}

static int client_read(struct tp_pair *p, char *out, size_t cap)
{
    size_t got = 0;
    int r = SSL_read_ex(p->c, out, cap - 1, &got);
    out[r == 1 ? got : 0] = '\0';
    return r == 1 ? (int)got : -SSL_get_error(p->c, r);
}

static struct th_tls_ctx *server_ctx(struct th_tls_tickets *tk)
{
    char err[512] = "";
    struct th_tls_ctx *c = th_tls_ctx_new(cert, key, tk, err, sizeof(err));
    cr_assert(c, "load: %s", err);
    return c;
}

/* A whole exchange: handshake, "hello" up, "world" down. */
static void exchange(struct tp_pair *p)
{
    cr_assert_eq(tp_pump(p), TH_TLS_OK);
    cr_assert(SSL_is_init_finished(p->c), "client handshake not finished");
    cr_assert(th_tls_established(p->s));
    cr_assert_eq(SSL_write(p->c, "hello", 5), 5);
    cr_assert_eq(tp_pump(p), TH_TLS_OK);
    cr_assert_eq(p->plain.n, 5);
    cr_assert_eq(memcmp(p->plain.p, "hello", 5), 0);
    cr_assert_eq(th_tls_write(p->s, (const uint8_t *)"world", 5, tp_wire_sink, p), TH_TLS_OK);
    cr_assert_eq(tp_pump(p), TH_TLS_OK);
    char got[64];
    cr_assert_eq(client_read(p, got, sizeof(got)), 5);
    cr_assert_str_eq(got, "world");
}

Test(tls, tls13_handshake_alpn_and_data)
{
    struct th_tls_tickets *tk = th_tls_tickets_new(0);
    struct th_tls_ctx *sctx = server_ctx(tk);
    struct tp_pair p;
    pair_init(&p, sctx, client_ctx(0, "\x02h2\x08http/1.1", 12), NULL);
    exchange(&p);
    cr_assert_str_eq(th_tls_version(p.s), "TLSv1.3");
    const uint8_t *proto;
    unsigned plen;
    SSL_get0_alpn_selected(p.c, &proto, &plen);
    cr_assert_eq(plen, 8);
    cr_assert_eq(memcmp(proto, "http/1.1", 8), 0);
    cr_assert_not(th_tls_resumed(p.s));
    SSL_CTX_free(p.cctx);
    tp_pair_free(&p);
    th_tls_ctx_free(sctx);
    th_tls_tickets_free(tk);
}

Test(tls, tls12_handshake_and_data)
{
    struct th_tls_tickets *tk = th_tls_tickets_new(0);
    struct th_tls_ctx *sctx = server_ctx(tk);
    struct tp_pair p;
    pair_init(&p, sctx, client_ctx(TLS1_2_VERSION, NULL, 0), NULL);
    exchange(&p);
    cr_assert_str_eq(th_tls_version(p.s), "TLSv1.2");
    SSL_CTX_free(p.cctx);
    tp_pair_free(&p);
    th_tls_ctx_free(sctx);
    th_tls_tickets_free(tk);
}

Test(tls, records_split_at_every_byte)
{
    struct th_tls_tickets *tk = th_tls_tickets_new(0);
    struct th_tls_ctx *sctx = server_ctx(tk);
    struct tp_pair p;
    pair_init(&p, sctx, client_ctx(0, NULL, 0), NULL);
    p.chop = 1;
    exchange(&p);
    /* several records in one input, the last one cut short, then its end */
    for (int i = 0; i < 3; i++)
        cr_assert_eq(SSL_write(p.c, "abc", 3), 3);
    uint8_t tmp[4096];
    int n = BIO_read(p.c_out, tmp, sizeof(tmp));
    cr_assert_gt(n, 10);
    uint8_t scratch[TH_TLS_RECORD_MAX];
    p.plain.n = 0;
    cr_assert_eq(th_tls_input(p.s, tmp, (size_t)n - 7, scratch, sizeof(scratch), tp_plain_sink,
                              tp_wire_sink, &p),
                 TH_TLS_OK);
    cr_assert_eq(p.plain.n, 6, "two whole records: %zu bytes", p.plain.n);
    cr_assert_eq(th_tls_input(p.s, tmp + n - 7, 7, scratch, sizeof(scratch), tp_plain_sink,
                              tp_wire_sink, &p),
                 TH_TLS_OK);
    cr_assert_eq(p.plain.n, 9);
    cr_assert_eq(memcmp(p.plain.p, "abcabcabc", 9), 0);
    SSL_CTX_free(p.cctx);
    tp_pair_free(&p);
    th_tls_ctx_free(sctx);
    th_tls_tickets_free(tk);
}

/* Full handshake on a, then a resumption attempt on b with a's session: resumed? */
static int resumes(int version, struct th_tls_ctx *a, struct th_tls_ctx *b)
{
    SSL_CTX *cc = client_ctx(version, NULL, 0);
    struct tp_pair p;
    pair_init(&p, a, cc, NULL);
    exchange(&p); /* TLS 1.3 tickets arrive after the handshake: read with the data */
    SSL_SESSION *sess = SSL_get1_session(p.c);
    cr_assert(sess);
    cr_assert(SSL_SESSION_is_resumable(sess), "no ticket was issued");
    SSL_shutdown(p.c); /* freed without it, libssl marks the client's session not resumable */
    tp_pair_free(&p);
    pair_init(&p, b, cc, sess);
    exchange(&p);
    int r = th_tls_resumed(p.s);
    cr_assert_eq(r, SSL_session_reused(p.c));
    SSL_SESSION_free(sess);
    tp_pair_free(&p);
    SSL_CTX_free(cc);
    return r;
}

Test(tls, resumption_shared_by_contexts_of_one_secret)
{
    struct th_tls_tickets *tk = th_tls_tickets_new(0);
    struct th_tls_ctx *a = server_ctx(tk), *b = server_ctx(tk); /* two workers, or a reload */
    cr_assert(resumes(0, a, a));
    cr_assert(resumes(0, a, b));
    cr_assert(resumes(TLS1_2_VERSION, a, b));
    th_tls_ctx_free(a);
    th_tls_ctx_free(b);
    th_tls_tickets_free(tk);
}

Test(tls, no_resumption_across_secrets)
{
    struct th_tls_tickets *t1 = th_tls_tickets_new(0), *t2 = th_tls_tickets_new(0);
    struct th_tls_ctx *a = server_ctx(t1), *b = server_ctx(t2);
    cr_assert_not(resumes(0, a, b));
    cr_assert_not(resumes(TLS1_2_VERSION, a, b));
    th_tls_ctx_free(a);
    th_tls_ctx_free(b);
    th_tls_tickets_free(t1);
    th_tls_tickets_free(t2);
}

Test(tls, alpn_without_http11_refused)
{
    struct th_tls_tickets *tk = th_tls_tickets_new(0);
    struct th_tls_ctx *sctx = server_ctx(tk);
    struct tp_pair p;
    pair_init(&p, sctx, client_ctx(0, "\x02h2", 3), NULL);
    cr_assert_eq(tp_pump(&p), TH_TLS_ERROR);
    cr_assert_not(th_tls_established(p.s));
    SSL_CTX_free(p.cctx);
    tp_pair_free(&p);
    th_tls_ctx_free(sctx);
    th_tls_tickets_free(tk);
}

Test(tls, renegotiation_refused)
{
    struct th_tls_tickets *tk = th_tls_tickets_new(0);
    struct th_tls_ctx *sctx = server_ctx(tk);
    struct tp_pair p;
    pair_init(&p, sctx, client_ctx(TLS1_2_VERSION, NULL, 0), NULL);
    exchange(&p);
    cr_assert_eq(SSL_renegotiate(p.c), 1);
    SSL_do_handshake(p.c); /* sends the new ClientHello */
    uint8_t hello[4096], scratch[TH_TLS_RECORD_MAX];
    int n = BIO_read(p.c_out, hello, sizeof(hello));
    cr_assert_gt(n, 0);
    p.wire.n = 0;
    int rc = th_tls_input(p.s, hello, (size_t)n, scratch, sizeof(scratch), tp_plain_sink,
                          tp_wire_sink, &p);
    /* the answer is an alert (no_renegotiation), never a ServerHello */
    cr_assert_gt(p.wire.n, 0, "no answer (rc %d)", rc);
    cr_assert_eq(p.wire.p[0], 0x15, "record type %u, not an alert", p.wire.p[0]);
    cr_assert_neq(tp_pump(&p), TH_TLS_OK, "the renegotiation went on");
    cr_assert(SSL_renegotiate_pending(p.c), "the client's renegotiation completed");
    SSL_CTX_free(p.cctx);
    tp_pair_free(&p);
    th_tls_ctx_free(sctx);
    th_tls_tickets_free(tk);
}

Test(tls, garbage_instead_of_client_hello)
{
    struct th_tls_tickets *tk = th_tls_tickets_new(0);
    struct th_tls_ctx *sctx = server_ctx(tk);
    struct th_tls *s = th_tls_new(sctx);
    struct tp_buf wire = {0}, plain = {0};
    uint8_t scratch[TH_TLS_RECORD_MAX];
    /* a whole handshake record whose message is no ClientHello (type 0x68, 4 bytes) */
    static const char junk[] = "\x16\x03\x01\x00\x08\x68\x00\x00\x04"
                               "abcd";
    int rc = th_tls_input(s, (const uint8_t *)junk, sizeof(junk) - 1, scratch, sizeof(scratch),
                          tp_buf_sink, tp_buf_sink, &wire);
    cr_assert_eq(rc, TH_TLS_ERROR);
    cr_assert_eq(plain.n, 0);
    cr_assert_gt(wire.n, 0, "no alert was sent");
    cr_assert_eq(wire.p[0], 0x15, "not an alert record");
    char why[128];
    cr_assert_neq(strlen(th_tls_last_error(why, sizeof(why))), 0);
    free(wire.p);
    th_tls_free(s);
    th_tls_ctx_free(sctx);
    th_tls_tickets_free(tk);
}

/* A plaintext sink that answers each piece at once, from inside th_tls_input. */
static int echo_sink(void *arg, const uint8_t *p, size_t n)
{
    struct tp_pair *pr = arg;
    tp_buf_sink(&pr->plain, p, n);
    return th_tls_write(pr->s, p, n, tp_wire_sink, pr) == TH_TLS_OK ? 0 : -1;
}

Test(tls, write_from_inside_input)
{
    struct th_tls_tickets *tk = th_tls_tickets_new(0);
    struct th_tls_ctx *sctx = server_ctx(tk);
    struct tp_pair p;
    pair_init(&p, sctx, client_ctx(0, NULL, 0), NULL);
    exchange(&p);
    cr_assert_eq(SSL_write(p.c, "one", 3), 3);
    cr_assert_eq(SSL_write(p.c, "two", 3), 3);
    uint8_t in[4096], scratch[TH_TLS_RECORD_MAX];
    int n = BIO_read(p.c_out, in, sizeof(in));
    p.plain.n = p.wire.n = 0;
    cr_assert_eq(
        th_tls_input(p.s, in, (size_t)n, scratch, sizeof(scratch), echo_sink, tp_wire_sink, &p),
        TH_TLS_OK);
    cr_assert_eq(p.plain.n, 6, "the second record was lost after the write (%zu bytes)", p.plain.n);
    tp_pump(&p);
    char got[64];
    int k = client_read(&p, got, sizeof(got));
    k += client_read(&p, got + k, sizeof(got) - (size_t)k);
    cr_assert_eq(k, 6);
    cr_assert_eq(memcmp(got, "onetwo", 6), 0);
    SSL_CTX_free(p.cctx);
    tp_pair_free(&p);
    th_tls_ctx_free(sctx);
    th_tls_tickets_free(tk);
}

Test(tls, key_update_mid_stream)
{
    struct th_tls_tickets *tk = th_tls_tickets_new(0);
    struct th_tls_ctx *sctx = server_ctx(tk);
    struct tp_pair p;
    pair_init(&p, sctx, client_ctx(0, NULL, 0), NULL);
    exchange(&p);
    /* the client rekeys (and asks the server to): data keeps flowing both ways */
    cr_assert_eq(SSL_key_update(p.c, SSL_KEY_UPDATE_REQUESTED), 1);
    cr_assert_eq(SSL_write(p.c, "after", 5), 5);
    p.plain.n = 0;
    cr_assert_eq(tp_pump(&p), TH_TLS_OK);
    cr_assert_eq(p.plain.n, 5);
    cr_assert_eq(memcmp(p.plain.p, "after", 5), 0);
    cr_assert_eq(th_tls_write(p.s, (const uint8_t *)"rekeyed", 7, tp_wire_sink, &p), TH_TLS_OK);
    cr_assert_eq(tp_pump(&p), TH_TLS_OK);
    char got[64];
    cr_assert_eq(client_read(&p, got, sizeof(got)), 7);
    cr_assert_str_eq(got, "rekeyed");
    SSL_CTX_free(p.cctx);
    tp_pair_free(&p);
    th_tls_ctx_free(sctx);
    th_tls_tickets_free(tk);
}

Test(tls, close_notify_both_ways)
{
    struct th_tls_tickets *tk = th_tls_tickets_new(0);
    struct th_tls_ctx *sctx = server_ctx(tk);
    struct tp_pair p;
    pair_init(&p, sctx, client_ctx(0, NULL, 0), NULL);
    exchange(&p);
    th_tls_close(p.s, tp_wire_sink, &p);
    cr_assert_gt(p.wire.n, 0);
    tp_pump(&p);
    char got[16];
    cr_assert_eq(client_read(&p, got, sizeof(got)), -SSL_ERROR_ZERO_RETURN);
    SSL_shutdown(p.c);
    cr_assert_eq(tp_pump(&p), TH_TLS_CLOSED);
    SSL_CTX_free(p.cctx);
    tp_pair_free(&p);
    th_tls_ctx_free(sctx);
    th_tls_tickets_free(tk);
}

static void load_fails(const char *c, const char *k, const char *want)
{
    struct th_tls_tickets *tk = th_tls_tickets_new(0);
    char err[512] = "";
    struct th_tls_ctx *ctx = th_tls_ctx_new(c, k, tk, err, sizeof(err));
    cr_assert_null(ctx);
    cr_assert(strstr(err, want), "error '%s' lacks '%s'", err, want);
    cr_assert_null(strchr(err, '\n'), "not one line: %s", err);
    th_tls_tickets_free(tk);
}

Test(tls, load_errors)
{
    load_fails("/nonexistent/cert.pem", key, "No such file");
    load_fails(cert, "/nonexistent/key.pem", "No such file");
    load_fails(key, key, "no usable PEM certificate");
    load_fails(cert, cert, "no usable PEM private key");
    load_fails(cert, key2, "does not match");
    load_fails(expired, key, "expired");
    char desc[256];
    struct th_tls_tickets *tk = th_tls_tickets_new(0);
    struct th_tls_ctx *ok = server_ctx(tk);
    th_tls_ctx_describe(ok, desc, sizeof(desc));
    cr_assert(strstr(desc, "CN=localhost"), "%s", desc);
    th_tls_ctx_free(ok);
    th_tls_tickets_free(tk);
}
