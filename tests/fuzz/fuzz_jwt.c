/*
 * Fuzz target for the JWT verifier (shm/proto/jwt.h), with a fixed secret and
 * a fixed clock. The first byte picks a mode:
 *  0: the rest is a token, verified as is (any OK must carry a signature
 *     that an independent HMAC over the first two parts reproduces);
 *  1: the rest is "<header JSON>\0<claims JSON>" (or just claims under an
 *     HS256 header): the harness encodes and signs it itself, so the fuzzer
 *     reaches the claim checks, and the verdict must match a reference
 *     reading of the contract done here with jansson (alg exactly HS256, no
 *     crit, no duplicate keys, sub 1..64 bytes without control characters,
 *     exp/nbf numbers from 0 to 253402300799 with now < exp and nbf <= now);
 *  2: the rest is a sub for th_jwt_sign; the token must verify to that sub
 *     when the sub is valid;
 *  3: the rest is key material for shm/proto/jwtkey.h (next byte even: PEM,
 *     odd: JWKS): parsing must not crash, and a success must report the
 *     keys it added;
 *  4: the rest is a claims JSON the harness signs with a fixed Ed25519 key
 *     (kid "ed") through libcrypto; the verdict of th_jwt_verify_keys over a
 *     set holding that key and the HS256 secret must match the reference.
 * Modes 0 and 1 also run th_jwt_verify_keys with that mixed set: it may only
 * accept what the HS256-only verifier accepts, plus EdDSA tokens (the
 * fuzzer cannot forge a signature, so anything else accepted is a hole,
 * e.g. an HS256 token checked with the public key).
 */
#include "tests/fuzz/fuzz.h"
#include "shm/proto/jwt.h"
#include "tests/shm/proto/b64url_enc.h"

#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>

static const uint8_t secret[] = "fuzz-secret-0123456789";
#define SECRET_LEN (sizeof(secret) - 1)
#define NOW 1700000000

/* A fixed Ed25519 key (RFC 8032 test 1 seed), so corpus tokens stay valid across runs. */
static const uint8_t ed_seed[32] = {
    0x9d, 0x61, 0xb1, 0x9d, 0xef, 0xfd, 0x5a, 0x60, 0xba, 0x84, 0x4a, 0xf4, 0x92, 0xec, 0x2c, 0xc4,
    0x44, 0x49, 0xc5, 0x69, 0x7b, 0x32, 0x69, 0x19, 0x70, 0x3b, 0xac, 0x03, 0x1c, 0xae, 0x7f, 0x60};
static EVP_PKEY *ed_priv;
static struct th_jwt_keys mixed; /* the HS256 secret + the Ed25519 public key (kid "ed") */

static void init_keys(void)
{
    if (ed_priv)
        return;
    ed_priv = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, ed_seed, sizeof(ed_seed));
    uint8_t pub[32];
    size_t pl = sizeof(pub);
    if (!ed_priv || EVP_PKEY_get_raw_public_key(ed_priv, pub, &pl) != 1 ||
        th_jwt_keys_add_secret(&mixed, secret, SECRET_LEN) < 0)
        abort();
    /* Through the PEM parser, as a --jwt-key-file would arrive. */
    BIO *b = BIO_new(BIO_s_mem());
    EVP_PKEY *pk = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, pub, pl);
    char *pem, err[160];
    BIO_puts(b, "kid: ed\n");
    if (!pk || PEM_write_bio_PUBKEY(b, pk) != 1)
        abort();
    long n = BIO_get_mem_data(b, &pem);
    if (th_jwt_keys_add_pem(&mixed, pem, (size_t)n, err, sizeof(err)) != 1)
        abort();
    EVP_PKEY_free(pk);
    BIO_free(b);
}

/* The token's header alg, as jansson reads it ("" when unreadable). */
static void header_alg(const char *tok, size_t n, char out[16]);

static size_t hmac_b64(const char *msg, size_t n, char *out)
{
    uint8_t mac[EVP_MAX_MD_SIZE];
    unsigned int mlen = 0;
    if (!HMAC(EVP_sha256(), secret, (int)SECRET_LEN, (const uint8_t *)msg, n, mac, &mlen))
        abort();
    return test_b64url(mac, mlen, out);
}

static void header_alg(const char *tok, size_t n, char out[16])
{
    out[0] = '\0';
    const char *dot = memchr(tok, '.', n);
    size_t hn = dot ? (size_t)(dot - tok) : 0;
    uint8_t *raw = malloc(hn + 4);
    long got = raw ? th_b64url_decode(tok, hn, raw) : -1;
    json_t *h = got > 0 ? json_loadb((const char *)raw, (size_t)got, 0, NULL) : NULL;
    const char *alg = json_string_value(json_object_get(h, "alg"));
    if (alg && strlen(alg) < 16)
        strcpy(out, alg);
    json_decref(h);
    free(raw);
}

/* The mixed key set accepts no more than HS256 (as hs_ok says) and EdDSA. */
static void check_mixed(const char *tok, size_t n, int hs_ok)
{
    struct th_jwt_claims c;
    char alg[16];
    int r = th_jwt_verify_keys(tok, n, &mixed, NULL, NOW, &c);
    FUZZ_CHECK(r >= TH_JWT_OK && r <= TH_JWT_RESULT_MAX, "result %d", r);
    if (r != TH_JWT_OK)
        return;
    header_alg(tok, n, alg);
    FUZZ_CHECK(hs_ok || strcmp(alg, "EdDSA") == 0,
               "mixed set accepted an %s token the "
               "HS256 verifier refuses",
               alg);
}

static int sub_ok(const char *s, size_t n)
{
    if (n == 0 || n > 64)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return 0;
    return 1;
}

static void check_ok_claims(const struct th_jwt_claims *c)
{
    FUZZ_CHECK(sub_ok(c->sub, c->sub_len) && c->sub[c->sub_len] == '\0', "OK with a bad sub");
}

static void mode_raw(const char *tok, size_t n)
{
    struct th_jwt_claims c;
    int r = th_jwt_verify(tok, n, secret, SECRET_LEN, NOW, &c);
    FUZZ_CHECK(r >= TH_JWT_OK && r <= TH_JWT_RESULT_MAX, "result %d", r);
    FUZZ_CHECK(th_jwt_strerror(r) != NULL, "no message");
    check_mixed(tok, n, r == TH_JWT_OK);
    if (r != TH_JWT_OK)
        return;
    check_ok_claims(&c);
    const char *d2 = memrchr(tok, '.', n);
    FUZZ_CHECK(d2 != NULL, "OK without dots");
    char want[128];
    size_t wl = hmac_b64(tok, (size_t)(d2 - tok), want);
    size_t sl = n - (size_t)(d2 + 1 - tok);
    FUZZ_CHECK(sl == wl && memcmp(d2 + 1, want, wl) == 0, "OK with a signature HMAC does not give");
}

/* NumericDate: 0 to year 9999 (integers too large for jansson fail to load above). */
static int date_ok(double v)
{
    return v >= 0 && v <= 253402300799.0;
}

static int claims_ok(json_t *pj, char *sub, size_t *sub_len);

/* The claims with their numbers as reals, as the verifier reads them: NumericDate is
 * any JSON number, and an unknown claim holding an integer past 2^63 is still valid
 * JSON (jansson's default would reject it as "too big integer"). */
static json_t *load_claims(const char *p, size_t pn)
{
    return json_loadb(p, pn, JSON_REJECT_DUPLICATES | JSON_DECODE_INT_AS_REAL, NULL);
}

/* The contract's verdict on a signed token made of these two JSON texts. */
static int reference_ok(const char *h, size_t hn, const char *p, size_t pn, char *sub,
                        size_t *sub_len)
{
    int ok = 0;
    json_t *hj = json_loadb(h, hn, JSON_REJECT_DUPLICATES, NULL);
    json_t *pj = load_claims(p, pn);
    if (!json_is_object(hj) || !json_is_object(pj))
        goto out;
    json_t *alg = json_object_get(hj, "alg");
    if (!json_is_string(alg) || json_string_length(alg) != 5 ||
        strcmp(json_string_value(alg), "HS256"))
        goto out;
    if (json_object_get(hj, "crit"))
        goto out;
    ok = claims_ok(pj, sub, sub_len);
out:
    json_decref(hj);
    json_decref(pj);
    return ok;
}

/* The contract's verdict on authenticated claims. */
static int claims_ok(json_t *pj, char *sub, size_t *sub_len)
{
    json_t *s = json_object_get(pj, "sub"), *exp = json_object_get(pj, "exp"),
           *nbf = json_object_get(pj, "nbf");
    if (!json_is_string(s) || !sub_ok(json_string_value(s), json_string_length(s)))
        return 0;
    if ((exp && !json_is_number(exp)) || (nbf && !json_is_number(nbf)))
        return 0;
    if ((exp && !date_ok(json_number_value(exp))) || (nbf && !date_ok(json_number_value(nbf))))
        return 0;
    if (exp && !(json_number_value(exp) > NOW))
        return 0;
    if (nbf && !(json_number_value(nbf) <= NOW))
        return 0;
    *sub_len = json_string_length(s);
    memcpy(sub, json_string_value(s), *sub_len);
    return 1;
}

static void mode_signed(const uint8_t *d, size_t n)
{
    static const char hs256[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
    const uint8_t *nul = memchr(d, 0, n);
    const char *h = hs256, *p = (const char *)d;
    size_t hn = sizeof(hs256) - 1, pn = n;
    if (nul) {
        h = (const char *)d, hn = (size_t)(nul - d);
        p = (const char *)nul + 1, pn = n - hn - 1;
    }
    size_t cap = (hn + pn) * 4 / 3 + 64;
    char *tok = malloc(cap);
    size_t o = test_b64url((const uint8_t *)h, hn, tok);
    tok[o++] = '.';
    o += test_b64url((const uint8_t *)p, pn, tok + o);
    size_t signed_len = o;
    tok[o++] = '.';
    o += hmac_b64(tok, signed_len, tok + o);
    char *exact = (char *)fuzz_dup((const uint8_t *)tok, o);
    free(tok);

    struct th_jwt_claims c;
    int r = th_jwt_verify(exact, o, secret, SECRET_LEN, NOW, &c);
    check_mixed(exact, o, r == TH_JWT_OK);
    char sub[65];
    size_t sub_len = 0;
    int ref =
        o <= TH_JWT_MAX_TOKEN && hn > 0 && pn > 0 && reference_ok(h, hn, p, pn, sub, &sub_len);
    FUZZ_CHECK((r == TH_JWT_OK) == ref, "verifier says %s, the contract says %s",
               th_jwt_strerror(r), ref ? "ok" : "reject");
    if (r == TH_JWT_OK) {
        check_ok_claims(&c);
        FUZZ_CHECK(c.sub_len == sub_len && memcmp(c.sub, sub, sub_len) == 0, "sub differs");
    }
    free(exact);
}

static void mode_sign(const uint8_t *d, size_t n, uint8_t ttl_sel)
{
    static const int64_t ttls[4] = {0, 1, 3600, -1};
    char sub[80];
    size_t sn = n < sizeof(sub) - 1 ? n : sizeof(sub) - 1;
    memcpy(sub, d, sn);
    sub[sn] = '\0';
    sn = strlen(sub);
    int64_t ttl = ttls[ttl_sel & 3];
    char tok[TH_JWT_MAX_TOKEN + 1];
    int len = th_jwt_sign(sub, secret, SECRET_LEN, NOW, ttl, tok, sizeof(tok));
    if (len < 0)
        return; /* e.g. sub not valid UTF-8: jansson refuses it */
    FUZZ_CHECK((size_t)len == strlen(tok), "length %d", len);
    struct th_jwt_claims c;
    int r = th_jwt_verify(tok, (size_t)len, secret, SECRET_LEN, NOW, &c);
    if (!sub_ok(sub, sn))
        FUZZ_CHECK(r == TH_JWT_BAD_SUB, "signed bad sub gave %s", th_jwt_strerror(r));
    else if (ttl < 0)
        FUZZ_CHECK(r == TH_JWT_EXPIRED, "expired token gave %s", th_jwt_strerror(r));
    else
        FUZZ_CHECK(r == TH_JWT_OK && c.sub_len == sn && memcmp(c.sub, sub, sn) == 0 &&
                       c.exp == (ttl ? NOW + ttl : 0),
                   "own token gave %s", th_jwt_strerror(r));
}

static void mode_keys(const uint8_t *d, size_t n)
{
    static struct th_jwt_keys ks;
    char err[200] = "";
    if (n < 1)
        return;
    int rc = d[0] & 1 ? th_jwt_keys_add_jwks(&ks, (const char *)d + 1, n - 1, err, sizeof(err))
                      : th_jwt_keys_add_pem(&ks, (const char *)d + 1, n - 1, err, sizeof(err));
    FUZZ_CHECK(rc < 0 ? err[0] != '\0' : (size_t)rc == ks.n, "rc %d, %zu keys, err '%s'", rc, ks.n,
               err);
    for (size_t i = 0; i < ks.n; i++)
        FUZZ_CHECK(ks.k[i].alg >= TH_JWT_RS256 && ks.k[i].alg <= TH_JWT_EDDSA && ks.k[i].pkey,
                   "key %zu: alg %d", i, ks.k[i].alg);
    th_jwt_keys_free(&ks);
}

static void mode_eddsa(const uint8_t *p, size_t pn)
{
    static const char hdr[] = "{\"alg\":\"EdDSA\",\"kid\":\"ed\"}";
    size_t cap = (sizeof(hdr) + pn) * 4 / 3 + 128;
    char *tok = malloc(cap);
    size_t o = test_b64url((const uint8_t *)hdr, sizeof(hdr) - 1, tok);
    tok[o++] = '.';
    o += test_b64url(p, pn, tok + o);
    uint8_t sig[64];
    size_t sl = sizeof(sig);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx || EVP_DigestSignInit(ctx, NULL, NULL, NULL, ed_priv) != 1 ||
        EVP_DigestSign(ctx, sig, &sl, (const uint8_t *)tok, o) != 1)
        abort();
    EVP_MD_CTX_free(ctx);
    tok[o++] = '.';
    o += test_b64url(sig, sl, tok + o);
    char *exact = (char *)fuzz_dup((const uint8_t *)tok, o);
    free(tok);
    struct th_jwt_claims c;
    int r = th_jwt_verify_keys(exact, o, &mixed, NULL, NOW, &c);
    json_t *pj = load_claims((const char *)p, pn);
    char sub[65];
    size_t sub_len = 0;
    int ref = o <= TH_JWT_MAX_TOKEN && json_is_object(pj) && claims_ok(pj, sub, &sub_len);
    json_decref(pj);
    FUZZ_CHECK((r == TH_JWT_OK) == ref, "EdDSA: verifier says %s, the contract says %s",
               th_jwt_strerror(r), ref ? "ok" : "reject");
    if (r == TH_JWT_OK)
        FUZZ_CHECK(c.sub_len == sub_len && memcmp(c.sub, sub, sub_len) == 0, "sub differs");
    free(exact);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 3 * TH_JWT_MAX_TOKEN)
        return 0;
    init_keys();
    uint8_t mode = data[0];
    uint8_t *rest = fuzz_dup(data + 1, size - 1);
    switch (mode % 5) {
    case 0:
        mode_raw((const char *)rest, size - 1);
        break;
    case 1:
        mode_signed(rest, size - 1);
        break;
    case 2:
        mode_sign(rest, size - 1, mode >> 3);
        break;
    case 3:
        mode_keys(rest, size - 1);
        break;
    default:
        mode_eddsa(rest, size - 1);
        break;
    }
    free(rest);
    return 0;
}
