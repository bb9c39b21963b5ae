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
 *     when the sub is valid.
 */
#include "tests/fuzz/fuzz.h"
#include "shm/proto/jwt.h"

#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

static const uint8_t secret[] = "fuzz-secret-0123456789";
#define SECRET_LEN (sizeof(secret) - 1)
#define NOW 1700000000

static size_t b64url(const uint8_t *in, size_t n, char *out)
{
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0) |
                     (i + 2 < n ? in[i + 2] : 0);
        size_t chars = n - i >= 3 ? 4 : n - i + 1;
        for (size_t k = 0; k < chars; k++)
            out[o++] = a[(v >> (18 - 6 * k)) & 63];
    }
    return o;
}

static size_t hmac_b64(const char *msg, size_t n, char *out)
{
    uint8_t mac[EVP_MAX_MD_SIZE];
    unsigned int mlen = 0;
    if (!HMAC(EVP_sha256(), secret, (int)SECRET_LEN, (const uint8_t *)msg, n, mac, &mlen))
        abort();
    return b64url(mac, mlen, out);
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
    FUZZ_CHECK(r >= TH_JWT_OK && r <= TH_JWT_BAD_CLAIM, "result %d", r);
    FUZZ_CHECK(th_jwt_strerror(r) != NULL, "no message");
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

/* The contract's verdict on a signed token made of these two JSON texts. */
static int reference_ok(const char *h, size_t hn, const char *p, size_t pn, char *sub,
                        size_t *sub_len)
{
    int ok = 0;
    json_t *hj = json_loadb(h, hn, JSON_REJECT_DUPLICATES, NULL);
    json_t *pj = json_loadb(p, pn, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(hj) || !json_is_object(pj))
        goto out;
    json_t *alg = json_object_get(hj, "alg");
    if (!json_is_string(alg) || json_string_length(alg) != 5 ||
        strcmp(json_string_value(alg), "HS256"))
        goto out;
    if (json_object_get(hj, "crit"))
        goto out;
    json_t *s = json_object_get(pj, "sub"), *exp = json_object_get(pj, "exp"),
           *nbf = json_object_get(pj, "nbf");
    if (!json_is_string(s) || !sub_ok(json_string_value(s), json_string_length(s)))
        goto out;
    if ((exp && !json_is_number(exp)) || (nbf && !json_is_number(nbf)))
        goto out;
    if ((exp && !date_ok(json_number_value(exp))) || (nbf && !date_ok(json_number_value(nbf))))
        goto out;
    if (exp && !(json_number_value(exp) > NOW))
        goto out;
    if (nbf && !(json_number_value(nbf) <= NOW))
        goto out;
    *sub_len = json_string_length(s);
    memcpy(sub, json_string_value(s), *sub_len);
    ok = 1;
out:
    json_decref(hj);
    json_decref(pj);
    return ok;
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
    size_t o = b64url((const uint8_t *)h, hn, tok);
    tok[o++] = '.';
    o += b64url((const uint8_t *)p, pn, tok + o);
    size_t signed_len = o;
    tok[o++] = '.';
    o += hmac_b64(tok, signed_len, tok + o);
    char *exact = (char *)fuzz_dup((const uint8_t *)tok, o);
    free(tok);

    struct th_jwt_claims c;
    int r = th_jwt_verify(exact, o, secret, SECRET_LEN, NOW, &c);
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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 3 * TH_JWT_MAX_TOKEN)
        return 0;
    uint8_t mode = data[0];
    uint8_t *rest = fuzz_dup(data + 1, size - 1);
    switch (mode % 3) {
    case 0:
        mode_raw((const char *)rest, size - 1);
        break;
    case 1:
        mode_signed(rest, size - 1);
        break;
    default:
        mode_sign(rest, size - 1, mode >> 2);
        break;
    }
    free(rest);
    return 0;
}
