/*
 * The TLS server engine (shm/proto/tls.h): libssl behind a BIO of our own
 * whose read side is the caller's input buffer of the current call and
 * whose write side is the caller's wire sink. So ciphertext is never copied
 * into a per-connection BIO buffer (a memory BIO would keep one per
 * connection), and a connection between calls holds only libssl's own
 * state, with its record buffers released while idle.
 *
 * Session tickets: the key of period n (n = unix time / rotate_s) is
 * derived as HMAC-SHA256(secret, "tether ticket <label>" || n) for the key
 * name, the AES-256-CBC key and the HMAC key, so processes forked from the
 * one that made the secret agree on every period's key without talking.
 */
#include "shm/proto/tls.h"

#include <errno.h>
#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- ticket keys ---------------------------------------------------------- */

struct tk_period {
    uint64_t n;
    int valid;
    uint8_t name[16], aes[32], mac[32];
};

struct th_tls_tickets {
    uint8_t secret[32];
    unsigned rotate_s;
    EVP_CIPHER *aes;       /* fetched once: an implicit fetch per ticket costs locks and lookups */
    struct tk_period p[2]; /* cache: the two periods most recently used */
};

struct th_tls_tickets *th_tls_tickets_new(unsigned rotate_s)
{
    struct th_tls_tickets *tk = calloc(1, sizeof(*tk));
    if (!tk)
        return NULL;
    tk->rotate_s = rotate_s ? rotate_s : 3600;
    if (RAND_bytes(tk->secret, sizeof(tk->secret)) != 1 ||
        !(tk->aes = EVP_CIPHER_fetch(NULL, "AES-256-CBC", NULL))) {
        OPENSSL_cleanse(tk, sizeof(*tk));
        free(tk);
        return NULL;
    }
    return tk;
}

void th_tls_tickets_free(struct th_tls_tickets *tk)
{
    if (!tk)
        return;
    EVP_CIPHER_free(tk->aes);
    OPENSSL_cleanse(tk, sizeof(*tk)); /* calloc'd: freed by free, not CRYPTO_free */
    free(tk);
}

static int derive(const struct th_tls_tickets *tk, uint64_t n, const char *label, uint8_t out[32])
{
    uint8_t msg[64];
    int len = snprintf((char *)msg, sizeof(msg) - 8, "tether ticket %s", label);
    for (int i = 0; i < 8; i++)
        msg[len + i] = (uint8_t)(n >> (56 - 8 * i));
    unsigned outlen = 32;
    return HMAC(EVP_sha256(), tk->secret, sizeof(tk->secret), msg, (size_t)len + 8, out, &outlen)
               ? 0
               : -1;
}

static const struct tk_period *period(struct th_tls_tickets *tk, uint64_t n)
{
    for (int i = 0; i < 2; i++)
        if (tk->p[i].valid && tk->p[i].n == n)
            return &tk->p[i];
    struct tk_period *p =
        tk->p[0].valid && (!tk->p[1].valid || tk->p[1].n < tk->p[0].n) ? &tk->p[1] : &tk->p[0];
    uint8_t name[32];
    p->valid = 0;
    if (derive(tk, n, "name", name) < 0 || derive(tk, n, "aes", p->aes) < 0 ||
        derive(tk, n, "mac", p->mac) < 0)
        return NULL;
    memcpy(p->name, name, sizeof(p->name));
    p->n = n;
    p->valid = 1;
    return p;
}

static int set_mac_key(EVP_MAC_CTX *hctx, const uint8_t key[32])
{
    OSSL_PARAM params[3];
    params[0] = OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, (void *)key, 32);
    params[1] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0);
    params[2] = OSSL_PARAM_construct_end();
    return EVP_MAC_CTX_set_params(hctx, params);
}

/* libssl's ticket hook: 1 = use this key, 2 = accepted but issue a fresh ticket, 0 = unknown, -1 =
 * error. */
static int ticket_cb(SSL *s, unsigned char key_name[16], unsigned char *iv, EVP_CIPHER_CTX *cctx,
                     EVP_MAC_CTX *hctx, int enc)
{
    struct th_tls_tickets *tk = SSL_CTX_get_app_data(SSL_get_SSL_CTX(s));
    uint64_t now = (uint64_t)time(NULL) / tk->rotate_s;
    if (enc) {
        const struct tk_period *p = period(tk, now);
        if (!p || RAND_bytes(iv, EVP_CIPHER_get_iv_length(tk->aes)) != 1)
            return -1;
        memcpy(key_name, p->name, 16);
        if (!EVP_EncryptInit_ex2(cctx, tk->aes, p->aes, iv, NULL) || !set_mac_key(hctx, p->mac))
            return -1;
        return 1;
    }
    for (uint64_t back = 0; back < 2 && back <= now; back++) {
        const struct tk_period *p = period(tk, now - back);
        if (!p || memcmp(key_name, p->name, 16) != 0)
            continue;
        if (!EVP_DecryptInit_ex2(cctx, tk->aes, p->aes, iv, NULL) || !set_mac_key(hctx, p->mac))
            return -1;
        return back == 0 ? 1 : 2;
    }
    return 0; /* older or foreign: a full handshake */
}

/* ---- context ------------------------------------------------------------- */

struct th_tls_ctx {
    SSL_CTX *ssl;
    struct th_tls_tickets *tk;
    char desc[256];
};

/* ALPN: http/1.1 when offered; a client offering only other protocols gets no_application_protocol.
 */
static int alpn_cb(SSL *s, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned int inlen, void *arg)
{
    (void)s, (void)arg;
    for (unsigned i = 0; i < inlen;) {
        unsigned n = in[i];
        if (i + 1 + n > inlen)
            break;
        if (n == 8 && memcmp(in + i + 1, "http/1.1", 8) == 0) {
            *out = in + i + 1;
            *outlen = 8;
            return SSL_TLSEXT_ERR_OK;
        }
        i += 1 + n;
    }
    return SSL_TLSEXT_ERR_ALERT_FATAL;
}

/* Never prompt for a passphrase (an encrypted key is refused). */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf, (void)size, (void)rwflag, (void)u;
    return -1;
}

static const char *ssl_reason(void)
{
    unsigned long e = ERR_peek_last_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    return r ? r : "unknown error";
}

static void fmt_time(const ASN1_TIME *t, char *buf, size_t cap)
{
    struct tm tm;
    if (!t || ASN1_TIME_to_tm(t, &tm) != 1 || !strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm))
        snprintf(buf, cap, "?");
}

static int load_cert(SSL_CTX *c, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "certificate %s: %s", path, strerror(errno));
        return -1;
    }
    fclose(f);
    if (SSL_CTX_use_certificate_chain_file(c, path) != 1) {
        snprintf(err, errlen, "certificate %s: no usable PEM certificate (%s)", path, ssl_reason());
        return -1;
    }
    X509 *x = SSL_CTX_get0_certificate(c);
    if (x && X509_cmp_current_time(X509_get0_notAfter(x)) < 0) {
        char when[40];
        fmt_time(X509_get0_notAfter(x), when, sizeof(when));
        snprintf(err, errlen, "certificate %s expired on %s", path, when);
        return -1;
    }
    return 0;
}

static int load_key(SSL_CTX *c, const char *path, const char *cert_path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "key %s: %s", path, strerror(errno));
        return -1;
    }
    EVP_PKEY *k = PEM_read_PrivateKey(f, NULL, no_passphrase, NULL);
    fclose(f);
    if (!k) {
        snprintf(err, errlen, "key %s: no usable PEM private key (%s)", path, ssl_reason());
        return -1;
    }
    int rc = -1;
    if (X509_check_private_key(SSL_CTX_get0_certificate(c), k) != 1)
        snprintf(err, errlen, "key %s does not match certificate %s", path, cert_path);
    else if (SSL_CTX_use_PrivateKey(c, k) != 1)
        snprintf(err, errlen, "key %s: %s", path, ssl_reason());
    else
        rc = 0;
    EVP_PKEY_free(k);
    return rc;
}

static void describe(struct th_tls_ctx *ctx)
{
    X509 *x = SSL_CTX_get0_certificate(ctx->ssl);
    char cn[64] = "?", serial[64] = "?", until[40];
    X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn, sizeof(cn));
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
    char *hex = bn ? BN_bn2hex(bn) : NULL;
    if (hex)
        snprintf(serial, sizeof(serial), "%s", hex);
    OPENSSL_free(hex);
    BN_free(bn);
    fmt_time(X509_get0_notAfter(x), until, sizeof(until));
    snprintf(ctx->desc, sizeof(ctx->desc), "CN=%s, serial %s, expires %s", cn, serial, until);
}

static SSL_CTX *new_ssl_ctx(struct th_tls_tickets *tk)
{
    SSL_CTX *c = SSL_CTX_new(TLS_server_method());
    if (!c)
        return NULL;
    SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION);
    SSL_CTX_set_options(c, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                               SSL_OP_NO_COMPRESSION);
    SSL_CTX_set_mode(c, SSL_MODE_RELEASE_BUFFERS);
    /* Resumption is by tickets only: a per-process cache would not be shared anyway. */
    SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_num_tickets(c, 1);
    SSL_CTX_set_timeout(c, (long)tk->rotate_s);
    SSL_CTX_set_app_data(c, tk);
    SSL_CTX_set_tlsext_ticket_key_evp_cb(c, ticket_cb);
    SSL_CTX_set_alpn_select_cb(c, alpn_cb, NULL);
    SSL_CTX_set_default_passwd_cb(c, no_passphrase);
    return c;
}

struct th_tls_ctx *th_tls_ctx_new(const char *cert_file, const char *key_file,
                                  struct th_tls_tickets *tk, char *err, size_t errlen)
{
    ERR_clear_error();
    struct th_tls_ctx *ctx = calloc(1, sizeof(*ctx));
    if (!ctx || !(ctx->ssl = new_ssl_ctx(tk))) {
        snprintf(err, errlen, "out of memory for the TLS context");
        free(ctx);
        return NULL;
    }
    ctx->tk = tk;
    if (load_cert(ctx->ssl, cert_file, err, errlen) < 0 ||
        load_key(ctx->ssl, key_file, cert_file, err, errlen) < 0) {
        th_tls_ctx_free(ctx);
        ERR_clear_error();
        return NULL;
    }
    describe(ctx);
    ERR_clear_error();
    return ctx;
}

void th_tls_ctx_free(struct th_tls_ctx *ctx)
{
    if (!ctx)
        return;
    SSL_CTX_free(ctx->ssl); /* reference counted: live connections keep theirs */
    free(ctx);
}

struct th_tls_tickets *th_tls_ctx_tickets(const struct th_tls_ctx *ctx)
{
    return ctx->tk;
}

void th_tls_ctx_describe(const struct th_tls_ctx *ctx, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s", ctx->desc);
}

/* ---- connection ------------------------------------------------------------ */

struct th_tls {
    SSL *ssl;
    const uint8_t *in; /* the current call's input, NULL between calls */
    size_t in_len, in_off;
    th_tls_sink wire;
    void *arg;
    uint8_t wire_failed, close_sent;
};

static BIO_METHOD *bio_method;
static CRYPTO_ONCE bio_once = CRYPTO_ONCE_STATIC_INIT;

static int bio_write(BIO *b, const char *p, int n)
{
    struct th_tls *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (!t->wire || t->wire(t->arg, (const uint8_t *)p, (size_t)n) < 0) {
        t->wire_failed = 1;
        return -1;
    }
    return n;
}

static int bio_read(BIO *b, char *p, int n)
{
    struct th_tls *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    size_t avail = t->in ? t->in_len - t->in_off : 0;
    if (avail == 0) {
        BIO_set_retry_read(b); /* "no more for now": libssl keeps a partial record */
        return -1;
    }
    size_t k = avail < (size_t)n ? avail : (size_t)n;
    memcpy(p, t->in + t->in_off, k);
    t->in_off += k;
    return (int)k;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)b, (void)num, (void)ptr;
    return cmd == BIO_CTRL_FLUSH ? 1 : 0; /* writes reach the sink at once */
}

static int bio_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

static void bio_init_method(void)
{
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "tether sink");
    if (m && BIO_meth_set_write(m, bio_write) && BIO_meth_set_read(m, bio_read) &&
        BIO_meth_set_ctrl(m, bio_ctrl) && BIO_meth_set_create(m, bio_create))
        bio_method = m;
    else
        BIO_meth_free(m);
}

struct th_tls *th_tls_new(struct th_tls_ctx *ctx)
{
    if (!CRYPTO_THREAD_run_once(&bio_once, bio_init_method) || !bio_method)
        return NULL;
    struct th_tls *t = calloc(1, sizeof(*t));
    BIO *b = NULL;
    if (!t || !(t->ssl = SSL_new(ctx->ssl)) || !(b = BIO_new(bio_method))) {
        if (t)
            SSL_free(t->ssl);
        free(t);
        ERR_clear_error();
        return NULL;
    }
    BIO_set_data(b, t);
    SSL_set_bio(t->ssl, b, b); /* one BIO both ways, owned by the SSL */
    SSL_set_accept_state(t->ssl);
    return t;
}

void th_tls_free(struct th_tls *t)
{
    if (!t)
        return;
    SSL_free(t->ssl);
    free(t);
}

static void begin(struct th_tls *t, const uint8_t *in, size_t n, th_tls_sink wire, void *arg)
{
    ERR_clear_error(); /* SSL_get_error reads the thread's queue: start clean */
    t->in = in, t->in_len = n, t->in_off = 0;
    t->wire = wire, t->arg = arg;
    t->wire_failed = 0;
}

static void end(struct th_tls *t)
{
    t->in = NULL, t->in_len = t->in_off = 0;
    t->wire = NULL, t->arg = NULL;
}

/* After a write or close made from inside a sink of th_tls_input: that call's input and sinks. */
static void restore(struct th_tls *t, const struct th_tls *saved)
{
    t->in = saved->in, t->in_len = saved->in_len, t->in_off = saved->in_off;
    t->wire = saved->wire, t->arg = saved->arg;
}

int th_tls_input(struct th_tls *t, const uint8_t *in, size_t n, uint8_t *scratch,
                 size_t scratch_cap, th_tls_sink plain, th_tls_sink wire, void *arg)
{
    begin(t, in, n, wire, arg);
    int rc = TH_TLS_OK;
    for (;;) {
        size_t got = 0, before = t->in_off;
        int r = SSL_read_ex(t->ssl, scratch, scratch_cap, &got);
        if (r == 1) {
            if (plain(arg, scratch, got) < 0) {
                rc = TH_TLS_STOPPED;
                break;
            }
            continue;
        }
        int e = SSL_get_error(t->ssl, r);
        if (e == SSL_ERROR_WANT_READ && t->in_off < t->in_len && t->in_off > before)
            continue; /* a non-data record was handled: more input is waiting */
        if (e == SSL_ERROR_WANT_READ)
            break;
        rc = e == SSL_ERROR_ZERO_RETURN ? TH_TLS_CLOSED
             : t->wire_failed           ? TH_TLS_STOPPED
                                        : TH_TLS_ERROR;
        break;
    }
    end(t);
    return rc;
}

int th_tls_write(struct th_tls *t, const uint8_t *p, size_t n, th_tls_sink wire, void *arg)
{
    if (!SSL_is_init_finished(t->ssl))
        return TH_TLS_ERROR;  /* the handshake is driven by input only */
    struct th_tls saved = *t; /* a sink of th_tls_input may be writing: that call's input stays */
    begin(t, NULL, 0, wire, arg);
    int rc = TH_TLS_OK;
    while (n) {
        size_t done = 0;
        if (SSL_write_ex(t->ssl, p, n, &done) != 1) {
            rc = TH_TLS_ERROR;
            break;
        }
        p += done, n -= done;
    }
    restore(t, &saved);
    return rc;
}

void th_tls_close(struct th_tls *t, th_tls_sink wire, void *arg)
{
    if (t->close_sent || !SSL_is_init_finished(t->ssl))
        return;
    t->close_sent = 1;
    struct th_tls saved = *t;
    begin(t, NULL, 0, wire, arg);
    /* 0: sent, the peer's not yet seen; < 0 after a fatal error: nothing to send */
    SSL_shutdown(t->ssl);
    ERR_clear_error();
    restore(t, &saved);
}

void th_tls_busy(struct th_tls *t, int busy)
{
    if (busy) {
        SSL_clear_mode(t->ssl, SSL_MODE_RELEASE_BUFFERS);
        return;
    }
    SSL_set_mode(t->ssl, SSL_MODE_RELEASE_BUFFERS);
    SSL_free_buffers(t->ssl); /* refuses (harmlessly) while a record is half read or written */
}

int th_tls_established(const struct th_tls *t)
{
    return SSL_is_init_finished(t->ssl);
}

int th_tls_resumed(const struct th_tls *t)
{
    return SSL_session_reused(t->ssl);
}

const char *th_tls_version(const struct th_tls *t)
{
    return SSL_get_version(t->ssl);
}

const char *th_tls_last_error(char *buf, size_t cap)
{
    unsigned long e = ERR_peek_last_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    snprintf(buf, cap, "%s", r ? r : "connection error");
    ERR_clear_error();
    return buf;
}
