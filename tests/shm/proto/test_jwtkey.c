/*
 * Unit tests of JWT key sets and verification with them (shm/proto/jwtkey.c,
 * th_jwt_verify_keys): keys made and tokens signed here with libcrypto's EVP
 * (not tether's code), PEM with kid lines, JWKS with skipped members, the
 * refusals (small RSA, other curves, bad members, 64-key bound), and the
 * choice of key by alg and kid, audience and issuer.
 */
#include "shm/proto/jwt.h"
#include "shm/proto/jwtkey.h"
#include "tests/shm/proto/b64url_enc.h"

#include <criterion/criterion.h>

#include <errno.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <string.h>

#define NOW 1700000000

static EVP_PKEY *rsa, *rsa_small, *ec, *ec384, *ed, *ed2;

static void make_keys(void)
{
    rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    rsa_small = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
    ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    ec384 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
    ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    ed2 = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    cr_assert(rsa && rsa_small && ec && ec384 && ed && ed2);
}

static void free_keys(void)
{
    EVP_PKEY_free(rsa), EVP_PKEY_free(rsa_small), EVP_PKEY_free(ec);
    EVP_PKEY_free(ec384), EVP_PKEY_free(ed), EVP_PKEY_free(ed2);
}

TestSuite(jwtkey, .init = make_keys, .fini = free_keys);

/* "kid: <kid>\n" + the public key's PEM, appended to buf. */
static void pem_append(char *buf, size_t cap, const char *kid, EVP_PKEY *k)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *p;
    cr_assert(PEM_write_bio_PUBKEY(b, k) == 1);
    long n = BIO_get_mem_data(b, &p);
    size_t o = strlen(buf);
    if (kid)
        o += (size_t)snprintf(buf + o, cap - o, "kid: %s\n", kid);
    cr_assert_lt(o + (size_t)n, cap);
    memcpy(buf + o, p, (size_t)n);
    buf[o + (size_t)n] = 0;
    BIO_free(b);
}

/* A token over header/claims JSON signed with k for alg (ES256 as r||s). */
static char *sign(EVP_PKEY *k, const char *alg, const char *header, const char *claims)
{
    static char tok[4096];
    size_t o = test_b64url((const uint8_t *)header, strlen(header), tok);
    tok[o++] = '.';
    o += test_b64url((const uint8_t *)claims, strlen(claims), tok + o);
    uint8_t sig[600];
    size_t sl = sizeof(sig);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    cr_assert(EVP_DigestSignInit(ctx, NULL, strcmp(alg, "EdDSA") ? EVP_sha256() : NULL, NULL, k) ==
              1);
    cr_assert(EVP_DigestSign(ctx, sig, &sl, (const uint8_t *)tok, o) == 1);
    EVP_MD_CTX_free(ctx);
    if (!strcmp(alg, "ES256")) {
        const uint8_t *pp = sig;
        ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &pp, (long)sl);
        cr_assert_not_null(es);
        BN_bn2binpad(ECDSA_SIG_get0_r(es), sig, 32);
        BN_bn2binpad(ECDSA_SIG_get0_s(es), sig + 32, 32);
        ECDSA_SIG_free(es);
        sl = 64;
    }
    tok[o++] = '.';
    test_b64url(sig, sl, tok + o);
    return tok;
}

static int verify(const struct th_jwt_keys *ks, const struct th_jwt_rules *rules, const char *t)
{
    struct th_jwt_claims c;
    return th_jwt_verify_keys(t, strlen(t), ks, rules, NOW, &c);
}

static const char claims[] = "{\"sub\":\"u1\",\"aud\":\"app\",\"iss\":\"idp\",\"exp\":1700003600}";

Test(jwtkey, pem_keys_by_kid_and_alg)
{
    static char pem[16384];
    char err[200];
    struct th_jwt_keys ks = {0};
    pem[0] = 0;
    pem_append(pem, sizeof(pem), "r1", rsa);
    pem_append(pem, sizeof(pem), "c1", ec);
    pem_append(pem, sizeof(pem), NULL, ed);
    cr_assert_eq(th_jwt_keys_add_pem(&ks, pem, strlen(pem), err, sizeof(err)), 3, "%s", err);
    cr_assert_str_eq(ks.k[0].kid, "r1");
    cr_assert_eq(ks.k[0].alg, TH_JWT_RS256);
    cr_assert_eq(ks.k[1].alg, TH_JWT_ES256);
    cr_assert_eq(ks.k[2].alg, TH_JWT_EDDSA);
    cr_assert_str_eq(ks.k[2].kid, "", "no kid line");
    cr_assert_eq(
        verify(&ks, NULL, sign(rsa, "RS256", "{\"alg\":\"RS256\",\"kid\":\"r1\"}", claims)),
        TH_JWT_OK);
    cr_assert_eq(verify(&ks, NULL, sign(ec, "ES256", "{\"alg\":\"ES256\",\"kid\":\"c1\"}", claims)),
                 TH_JWT_OK);
    cr_assert_eq(verify(&ks, NULL, sign(ed, "EdDSA", "{\"alg\":\"EdDSA\"}", claims)), TH_JWT_OK,
                 "no kid: every key of the alg");
    cr_assert_eq(verify(&ks, NULL, sign(ed2, "EdDSA", "{\"alg\":\"EdDSA\"}", claims)),
                 TH_JWT_BAD_SIG);
    cr_assert_eq(verify(&ks, NULL, sign(ed, "EdDSA", "{\"alg\":\"EdDSA\",\"kid\":\"r1\"}", claims)),
                 TH_JWT_OK, "no EdDSA key named r1: the unnamed EdDSA key is tried");
    cr_assert_eq(
        verify(&ks, NULL, sign(ed2, "EdDSA", "{\"alg\":\"EdDSA\",\"kid\":\"r1\"}", claims)),
        TH_JWT_BAD_SIG, "and only that key");
    cr_assert_eq(verify(&ks, NULL, sign(ec, "ES256", "{\"alg\":\"ES256\",\"kid\":\"r1\"}", claims)),
                 TH_JWT_UNKNOWN_KID, "r1 is an RSA key, and every ES256 key has a kid");
    cr_assert_eq(
        verify(&ks, NULL, sign(rsa, "RS256", "{\"alg\":\"RS256\",\"kid\":\"zz\"}", claims)),
        TH_JWT_UNKNOWN_KID);
    cr_assert_eq(verify(&ks, NULL, sign(ec, "ES256", "{\"alg\":\"HS256\"}", claims)),
                 TH_JWT_BAD_ALG, "no HS256 secret in this set");
    /* Rules. */
    struct th_jwt_rules ok = {"app", "idp"}, aud = {"other", NULL}, iss = {NULL, "evil"};
    const char *t = sign(rsa, "RS256", "{\"alg\":\"RS256\",\"kid\":\"r1\"}", claims);
    cr_assert_eq(verify(&ks, &ok, t), TH_JWT_OK);
    cr_assert_eq(verify(&ks, &aud, t), TH_JWT_BAD_AUD);
    cr_assert_eq(verify(&ks, &iss, t), TH_JWT_BAD_ISS);
    th_jwt_keys_free(&ks);
    cr_assert_eq(ks.n, 0);
}

Test(jwtkey, pem_refusals)
{
    static char pem[8192];
    char err[200];
    struct th_jwt_keys ks = {0};
    pem[0] = 0;
    pem_append(pem, sizeof(pem), "s", rsa_small);
    cr_assert_eq(th_jwt_keys_add_pem(&ks, pem, strlen(pem), err, sizeof(err)), -EINVAL);
    cr_assert(strstr(err, "2048"), "%s", err);
    pem[0] = 0;
    pem_append(pem, sizeof(pem), "p", ec384);
    cr_assert_eq(th_jwt_keys_add_pem(&ks, pem, strlen(pem), err, sizeof(err)), -EINVAL);
    cr_assert(strstr(err, "P-256"), "%s", err);
    cr_assert_eq(th_jwt_keys_add_pem(&ks, "nothing", 7, err, sizeof(err)), -EINVAL);
    const char *trunc = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n";
    cr_assert_eq(th_jwt_keys_add_pem(&ks, trunc, strlen(trunc), err, sizeof(err)), -EINVAL);
    const char *junk = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
    cr_assert_eq(th_jwt_keys_add_pem(&ks, junk, strlen(junk), err, sizeof(err)), -EINVAL);
    cr_assert_eq(ks.n, 0);
}

static void raw_pub(EVP_PKEY *k, const char *name, char *out)
{
    uint8_t buf[600];
    size_t n = sizeof(buf);
    cr_assert(EVP_PKEY_get_octet_string_param(k, name, buf, sizeof(buf), &n) == 1);
    if (!strcmp(name, OSSL_PKEY_PARAM_PUB_KEY) && n == 65) { /* EC: 04 || x || y */
        char x[64], y[64];
        test_b64url(buf + 1, 32, x);
        test_b64url(buf + 33, 32, y);
        sprintf(out, "\"x\":\"%s\",\"y\":\"%s\"", x, y);
        return;
    }
    char v[100];
    test_b64url(buf, n, v);
    sprintf(out, "\"x\":\"%s\"", v);
}

Test(jwtkey, jwks_several_keys_and_skips)
{
    static char doc[8192];
    char ecx[256], edx[128], n64[400], err[200];
    BIGNUM *n = NULL;
    uint8_t nb[256];
    cr_assert(EVP_PKEY_get_bn_param(rsa, OSSL_PKEY_PARAM_RSA_N, &n) == 1);
    BN_bn2binpad(n, nb, 256);
    BN_free(n);
    test_b64url(nb, 256, n64);
    raw_pub(ec, OSSL_PKEY_PARAM_PUB_KEY, ecx);
    raw_pub(ed, OSSL_PKEY_PARAM_PUB_KEY, edx);
    snprintf(
        doc, sizeof(doc),
        "{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"r\",\"use\":\"sig\",\"n\":\"%s\",\"e\":\"AQAB\"},"
        "{\"kty\":\"EC\",\"crv\":\"P-256\",\"kid\":\"c\",\"alg\":\"ES256\",%s},"
        "{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"kid\":\"e\",%s},"
        "{\"kty\":\"RSA\",\"kid\":\"enc\",\"use\":\"enc\",\"n\":\"%s\",\"e\":\"AQAB\"},"
        "{\"kty\":\"RSA\",\"kid\":\"ps\",\"alg\":\"PS256\",\"n\":\"%s\",\"e\":\"AQAB\"},"
        "{\"kty\":\"oct\",\"k\":\"c2VjcmV0\"},{\"kty\":\"EC\",\"crv\":\"P-384\",\"x\":\"AA\"}]}",
        n64, ecx, edx, n64, n64);
    struct th_jwt_keys ks = {0};
    cr_assert_eq(th_jwt_keys_add_jwks(&ks, doc, strlen(doc), err, sizeof(err)), 3, "%s", err);
    cr_assert_eq(verify(&ks, NULL, sign(rsa, "RS256", "{\"alg\":\"RS256\",\"kid\":\"r\"}", claims)),
                 TH_JWT_OK);
    cr_assert_eq(verify(&ks, NULL, sign(ec, "ES256", "{\"alg\":\"ES256\",\"kid\":\"c\"}", claims)),
                 TH_JWT_OK);
    cr_assert_eq(verify(&ks, NULL, sign(ed, "EdDSA", "{\"alg\":\"EdDSA\",\"kid\":\"e\"}", claims)),
                 TH_JWT_OK);
    cr_assert_eq(
        verify(&ks, NULL, sign(rsa, "RS256", "{\"alg\":\"RS256\",\"kid\":\"enc\"}", claims)),
        TH_JWT_UNKNOWN_KID, "the encryption key was skipped");
    th_jwt_keys_free(&ks);
}

Test(jwtkey, jwks_refusals)
{
    struct th_jwt_keys ks = {0};
    char err[200];
    static const char *bad[] = {
        "not json",
        "[]",
        "{\"keys\":{}}",
        "{\"keys\":[]}",
        "{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"AA\",\"y\":\"AA\"}]}",
        "{\"keys\":[{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"AAAA\"}]}",
        "{\"keys\":[{\"kty\":\"RSA\",\"n\":\"AQAB\",\"e\":\"AQAB\"}]}", /* 17 bits */
        "{\"keys\":[{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"11qYAYKxCrfVS_"
        "7TyWQHOg7hcvPapiMlrwIaaPcHURo\",\"kid\":7}]}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = 0;
        cr_assert_eq(th_jwt_keys_add_jwks(&ks, bad[i], strlen(bad[i]), err, sizeof(err)), -EINVAL,
                     "case %zu", i);
        cr_assert(err[0], "case %zu without a reason", i);
        th_jwt_keys_free(&ks);
    }
}

Test(jwtkey, at_most_64_keys)
{
    struct th_jwt_keys ks = {0};
    for (int i = 0; i < TH_JWT_KEYS_MAX; i++)
        cr_assert_eq(th_jwt_keys_add_secret(&ks, (const uint8_t *)"s", 1), 0);
    cr_assert_eq(th_jwt_keys_add_secret(&ks, (const uint8_t *)"s", 1), -ENOSPC);
    cr_assert_eq(th_jwt_keys_add_secret(&ks, (const uint8_t *)"", 0), -EINVAL);
    th_jwt_keys_free(&ks);
}

Test(jwtkey, alg_names)
{
    cr_assert_eq(th_jwt_alg_of("EdDSA", 5), TH_JWT_EDDSA);
    cr_assert_eq(th_jwt_alg_of("eddsa", 5), 0, "case-sensitive");
    cr_assert_eq(th_jwt_alg_of("RS2566", 6), 0);
    cr_assert_eq(th_jwt_alg_of("none", 4), 0);
    cr_assert_str_eq(th_jwt_alg_name(TH_JWT_ES256), "ES256");
    cr_assert_null(th_jwt_alg_name(9));
}
