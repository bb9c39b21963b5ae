/*
 * Unit tests of HS256 JWT verification and signing (shm/proto/jwt.c): a token
 * from an independent signer (the jwt.io example), every rejection the
 * contract names (signature, alg, exp, nbf, sub, claim types, base64url,
 * JSON, part count, size), and the signer's round trip. Tokens are verified
 * from guarded copies so an over-read crashes.
 */
#include "shm/proto/jwt.h"
#include "tests/shm/proto/guard.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

static const uint8_t *SECRET = (const uint8_t *)"test-secret-0123456789";
#define SECRET_LEN 22
#define NOW 1700000000LL
#define HDR "{\"alg\":\"HS256\",\"typ\":\"JWT\"}"

static int verify_s(const char *tok, size_t n, const uint8_t *secret, size_t slen,
                    struct th_jwt_claims *c)
{
    struct guard g;
    const char *p = (const char *)guard_copy(&g, tok, n);
    int rc = th_jwt_verify(p, n, secret, slen, NOW, c);
    guard_free(&g);
    return rc;
}

static int verify(const char *tok)
{
    struct th_jwt_claims c;
    return verify_s(tok, strlen(tok), SECRET, SECRET_LEN, &c);
}

/* Sign header and payload texts with the test secret. */
static const char *raw(const char *hdr, const char *payload)
{
    static char tok[8192];
    cr_assert(th_jwt_sign_raw(hdr, payload, SECRET, SECRET_LEN, tok, sizeof(tok)) > 0);
    return tok;
}

static const char *claims(const char *payload)
{
    return raw(HDR, payload);
}

Test(jwt, independent_signer_vector)
{
    /* The jwt.io example, signed with "your-256-bit-secret" by another implementation. */
    const char *tok = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
                      "eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ."
                      "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
    struct th_jwt_claims c;
    const uint8_t *s = (const uint8_t *)"your-256-bit-secret";
    cr_assert_eq(verify_s(tok, strlen(tok), s, 19, &c), TH_JWT_OK);
    cr_assert_str_eq(c.sub, "1234567890");
    cr_assert_eq(c.sub_len, 10);
    cr_assert_eq(c.exp, 0);
    cr_assert_eq(verify_s(tok, strlen(tok), s, 18, &c), TH_JWT_BAD_SIG);
}

Test(jwt, sign_round_trip)
{
    char tok[1024];
    int n = th_jwt_sign("user-\xc3\xa9", SECRET, SECRET_LEN, NOW, 3600, tok, sizeof(tok));
    cr_assert_gt(n, 0);
    cr_assert_eq((size_t)n, strlen(tok));
    struct th_jwt_claims c;
    cr_assert_eq(verify_s(tok, (size_t)n, SECRET, SECRET_LEN, &c), TH_JWT_OK);
    cr_assert_str_eq(c.sub, "user-\xc3\xa9");
    cr_assert_eq(c.exp, NOW + 3600);
    n = th_jwt_sign("u", SECRET, SECRET_LEN, NOW, 0, tok, sizeof(tok));
    cr_assert_eq(verify_s(tok, (size_t)n, SECRET, SECRET_LEN, &c), TH_JWT_OK);
    cr_assert_eq(c.exp, 0, "ttl 0 means no exp");
    /* Output capacity: exactly enough works, one byte less fails. */
    cr_assert_eq(th_jwt_sign("u", SECRET, SECRET_LEN, NOW, 0, tok, (size_t)n + 1), n);
    cr_assert_eq(th_jwt_sign("u", SECRET, SECRET_LEN, NOW, 0, tok, (size_t)n), -ENOSPC);
}

Test(jwt, spaced_json_from_other_signers)
{
    /* Python's json.dumps puts spaces after ':' and ','. */
    cr_assert_eq(verify(raw("{\"alg\": \"HS256\", \"typ\": \"JWT\"}",
                            "{\"sub\": \"u1\", \"iat\": 1700000000, \"exp\": 1700003600}")),
                 TH_JWT_OK);
}

Test(jwt, bad_signature)
{
    char tok[1024];
    int n = th_jwt_sign("u1", SECRET, SECRET_LEN, NOW, 60, tok, sizeof(tok));
    struct th_jwt_claims c;
    cr_assert_eq(verify_s(tok, (size_t)n, (const uint8_t *)"other", 5, &c), TH_JWT_BAD_SIG);
    cr_assert_eq(verify_s(tok, (size_t)n, SECRET, 0, &c), TH_JWT_BAD_SIG, "empty secret");
    char t2[1024];
    memcpy(t2, tok, (size_t)n + 1);
    t2[n - 5] = t2[n - 5] == 'A' ? 'B' : 'A';
    cr_assert_eq(verify(t2), TH_JWT_BAD_SIG);
    memcpy(t2, tok, (size_t)n + 1);
    t2[n - 3] = '\0'; /* a 30-byte signature (still canonical base64url) */
    cr_assert_eq(verify(t2), TH_JWT_BAD_SIG);
    memcpy(t2, tok, (size_t)n + 1);
    *strrchr(t2, '.') = '\0';
    strcat(t2, ".");
    cr_assert_eq(verify(t2), TH_JWT_BAD_SIG, "empty signature");
    /* The payload changed after signing. */
    memcpy(t2, tok, (size_t)n + 1);
    char *dot = strchr(t2, '.');
    dot[2] = dot[2] == 'A' ? 'B' : 'A';
    cr_assert_eq(verify(t2), TH_JWT_BAD_SIG);
}

Test(jwt, algorithms_other_than_hs256)
{
    const char *p = "{\"sub\":\"u1\"}";
    cr_assert_eq(verify(raw("{\"alg\":\"none\"}", p)), TH_JWT_BAD_ALG);
    cr_assert_eq(verify(raw("{\"alg\":\"HS384\"}", p)), TH_JWT_BAD_ALG);
    cr_assert_eq(verify(raw("{\"alg\":\"RS256\"}", p)), TH_JWT_BAD_ALG);
    cr_assert_eq(verify(raw("{\"alg\":\"hs256\"}", p)), TH_JWT_BAD_ALG);
    /* jansson refuses \u0000 in strings, so this never reaches the alg compare. */
    cr_assert_eq(verify(raw("{\"alg\":\"HS256\\u0000\"}", p)), TH_JWT_MALFORMED);
    cr_assert_eq(verify(raw("{\"typ\":\"JWT\"}", p)), TH_JWT_BAD_ALG, "alg missing");
    cr_assert_eq(verify(raw("{\"alg\":256}", p)), TH_JWT_BAD_ALG);
    cr_assert_eq(verify(raw("{\"alg\":null}", p)), TH_JWT_BAD_ALG);
    /* The classic "alg":"none" attack: no signature at all. */
    char tok[512];
    snprintf(tok, sizeof(tok), "%s", raw("{\"alg\":\"none\"}", p));
    *(strrchr(tok, '.') + 1) = '\0';
    cr_assert_eq(verify(tok), TH_JWT_BAD_ALG);
}

Test(jwt, header_rules)
{
    const char *p = "{\"sub\":\"u1\"}";
    cr_assert_eq(verify(raw("{\"alg\":\"HS256\",\"alg\":\"none\"}", p)), TH_JWT_MALFORMED,
                 "duplicate keys");
    cr_assert_eq(verify(raw("{\"alg\":\"HS256\",\"crit\":[\"exp\"]}", p)), TH_JWT_MALFORMED);
    cr_assert_eq(verify(raw("[\"HS256\"]", p)), TH_JWT_MALFORMED);
    cr_assert_eq(verify(raw("not json", p)), TH_JWT_MALFORMED);
}

Test(jwt, exp_and_nbf)
{
    char p[128];
    snprintf(p, sizeof(p), "{\"sub\":\"u\",\"exp\":%lld}", NOW);
    cr_assert_eq(verify(claims(p)), TH_JWT_EXPIRED, "exp == now is expired");
    snprintf(p, sizeof(p), "{\"sub\":\"u\",\"exp\":%lld}", NOW - 1000);
    cr_assert_eq(verify(claims(p)), TH_JWT_EXPIRED);
    snprintf(p, sizeof(p), "{\"sub\":\"u\",\"exp\":%lld}", NOW + 1);
    cr_assert_eq(verify(claims(p)), TH_JWT_OK);
    snprintf(p, sizeof(p), "{\"sub\":\"u\",\"exp\":%lld.5}", NOW);
    cr_assert_eq(verify(claims(p)), TH_JWT_OK, "fractional exp after now");
    cr_assert_eq(verify(claims("{\"sub\":\"u\",\"exp\":1e300}")), TH_JWT_BAD_CLAIM, "one rule");
    cr_assert_eq(verify(claims("{\"sub\":\"u\",\"exp\":1e30}")), TH_JWT_BAD_CLAIM);
    cr_assert_eq(verify(claims("{\"sub\":\"u\",\"exp\":9223372036854775808}")), TH_JWT_BAD_CLAIM,
                 "2^63 as an integer: the same answer as 1e30");
    cr_assert_eq(verify(claims("{\"sub\":\"u\",\"exp\":253402300799}")), TH_JWT_OK, "year 9999");
    cr_assert_eq(verify(claims("{\"sub\":\"u\",\"exp\":253402300800}")), TH_JWT_BAD_CLAIM);
    cr_assert_eq(verify(claims("{\"sub\":\"u\",\"nbf\":-1}")), TH_JWT_BAD_CLAIM, "negative");
    snprintf(p, sizeof(p), "{\"sub\":\"u\",\"nbf\":%lld}", NOW + 1);
    cr_assert_eq(verify(claims(p)), TH_JWT_NOT_YET);
    snprintf(p, sizeof(p), "{\"sub\":\"u\",\"nbf\":%lld}", NOW);
    cr_assert_eq(verify(claims(p)), TH_JWT_OK);
    cr_assert_eq(verify(claims("{\"sub\":\"u\",\"exp\":\"2030\"}")), TH_JWT_BAD_CLAIM);
    cr_assert_eq(verify(claims("{\"sub\":\"u\",\"exp\":null}")), TH_JWT_BAD_CLAIM);
    cr_assert_eq(verify(claims("{\"sub\":\"u\",\"nbf\":true}")), TH_JWT_BAD_CLAIM);
    cr_assert_eq(verify(claims("{\"sub\":\"u\",\"nbf\":[1]}")), TH_JWT_BAD_CLAIM);
}

Test(jwt, sub_rules)
{
    struct th_jwt_claims c;
    char p[256], sub[70];
    cr_assert_eq(verify(claims("{\"iat\":1}")), TH_JWT_BAD_SUB, "missing");
    cr_assert_eq(verify(claims("{\"sub\":\"\"}")), TH_JWT_BAD_SUB, "empty");
    cr_assert_eq(verify(claims("{\"sub\":42}")), TH_JWT_BAD_SUB, "not a string");
    cr_assert_eq(verify(claims("{\"sub\":\"a\\u0001b\"}")), TH_JWT_BAD_SUB);
    cr_assert_eq(verify(claims("{\"sub\":\"a\\u001fb\"}")), TH_JWT_BAD_SUB);
    cr_assert_eq(verify(claims("{\"sub\":\"a\\u007fb\"}")), TH_JWT_BAD_SUB);
    cr_assert_eq(verify(claims("{\"sub\":\"a\\u0000b\"}")), TH_JWT_MALFORMED,
                 "embedded NUL: jansson refuses the JSON");
    cr_assert_eq(verify(claims("{\"sub\":\"a\\nb\"}")), TH_JWT_BAD_SUB);
    memset(sub, 'x', 64);
    sub[64] = '\0';
    snprintf(p, sizeof(p), "{\"sub\":\"%s\"}", sub);
    const char *tok = claims(p);
    cr_assert_eq(verify_s(tok, strlen(tok), SECRET, SECRET_LEN, &c), TH_JWT_OK, "64 bytes");
    cr_assert_eq(c.sub_len, 64);
    cr_assert_str_eq(c.sub, sub);
    sub[64] = 'x', sub[65] = '\0';
    snprintf(p, sizeof(p), "{\"sub\":\"%s\"}", sub);
    cr_assert_eq(verify(claims(p)), TH_JWT_BAD_SUB, "65 bytes");
    /* 32 two-byte characters are 64 bytes: fine. */
    char wide[200] = "{\"sub\":\"";
    for (int i = 0; i < 32; i++)
        strcat(wide, "\xc3\xa9");
    strcat(wide, "\"}");
    cr_assert_eq(verify(claims(wide)), TH_JWT_OK);
}

Test(jwt, payload_must_be_a_json_object)
{
    cr_assert_eq(verify(claims("not json")), TH_JWT_MALFORMED);
    cr_assert_eq(verify(claims("\"u1\"")), TH_JWT_MALFORMED);
    cr_assert_eq(verify(claims("[1,2]")), TH_JWT_MALFORMED);
    cr_assert_eq(verify(claims("{\"sub\":\"u\"} trailing")), TH_JWT_MALFORMED);
    cr_assert_eq(verify(claims("{\"sub\":\"u\",\"sub\":\"admin\"}")), TH_JWT_MALFORMED);
}

/* Replace part `which` (0..2) of a valid token with `text`. */
static const char *with_part(int which, const char *text)
{
    static char out[2048];
    char tok[1024];
    th_jwt_sign("u1", SECRET, SECRET_LEN, NOW, 60, tok, sizeof(tok));
    char *d1 = strchr(tok, '.'), *d2 = strrchr(tok, '.');
    *d1 = *d2 = '\0';
    const char *parts[3] = {tok, d1 + 1, d2 + 1};
    parts[which] = text;
    snprintf(out, sizeof(out), "%s.%s.%s", parts[0], parts[1], parts[2]);
    return out;
}

Test(jwt, malformed_base64url)
{
    char tok[1024];
    int n = th_jwt_sign("u1", SECRET, SECRET_LEN, NOW, 60, tok, sizeof(tok));
    char t2[1100];
    snprintf(t2, sizeof(t2), "%s=", tok);
    cr_assert_eq(verify(t2), TH_JWT_MALFORMED, "padding");
    cr_assert_eq(verify(with_part(0, "eyJhbGciOiJIUzI1NiJ9==")), TH_JWT_MALFORMED);
    cr_assert_eq(verify(with_part(0, "eyJhbGciOiJIUzI1NiJ9+")), TH_JWT_MALFORMED, "'+'");
    cr_assert_eq(verify(with_part(0, "eyJhbGci/iJIUzI1NiJ9")), TH_JWT_MALFORMED, "'/'");
    cr_assert_eq(verify(with_part(0, "eyJhbGciOiJIUzI1N*J9")), TH_JWT_MALFORMED);
    cr_assert_eq(verify(with_part(0, "eyJhbGciOiJIUzI1NiJ9e")), TH_JWT_MALFORMED, "length 1 mod 4");
    cr_assert_eq(verify(with_part(0, "")), TH_JWT_MALFORMED, "empty header");
    cr_assert_eq(verify(with_part(1, "")), TH_JWT_BAD_SIG, "payload changed");
    /* {"alg":"HS256" } is eyJhbGciOiJIUzI1NiIgfQ (4 unused low bits, all 0); ...fR sets one. */
    cr_assert_eq(verify(with_part(0, "eyJhbGciOiJIUzI1NiIgfQ")), TH_JWT_BAD_SIG, "canonical");
    cr_assert_eq(verify(with_part(0, "eyJhbGciOiJIUzI1NiIgfR")), TH_JWT_MALFORMED, "non-canonical");
    memcpy(t2, tok, (size_t)n + 1);
    t2[n - 1] = '!';
    cr_assert_eq(verify(t2), TH_JWT_MALFORMED, "bad signature character");
    memcpy(t2, tok, (size_t)n + 1);
    t2[10] = ' ';
    cr_assert_eq(verify(t2), TH_JWT_MALFORMED, "space in header");
}

Test(jwt, wrong_number_of_parts)
{
    char tok[1024], t2[1100];
    th_jwt_sign("u1", SECRET, SECRET_LEN, NOW, 60, tok, sizeof(tok));
    cr_assert_eq(verify(""), TH_JWT_MALFORMED);
    cr_assert_eq(verify("."), TH_JWT_MALFORMED);
    cr_assert_eq(verify(".."), TH_JWT_MALFORMED);
    cr_assert_eq(verify("abc"), TH_JWT_MALFORMED);
    snprintf(t2, sizeof(t2), "%s.", tok);
    cr_assert_eq(verify(t2), TH_JWT_MALFORMED, "four parts");
    snprintf(t2, sizeof(t2), "%s.e30", tok);
    cr_assert_eq(verify(t2), TH_JWT_MALFORMED);
    *strrchr(tok, '.') = '\0';
    cr_assert_eq(verify(tok), TH_JWT_MALFORMED, "two parts");
}

Test(jwt, size_limit)
{
    static char p[TH_JWT_MAX_TOKEN], tok[2 * TH_JWT_MAX_TOKEN];
    /* Grow a padding claim until the token is exactly at, then just past, the limit. */
    /* Header texts of 27, 28 and 29 bytes encode to 36, 38, 39 characters: together with
     * the padding's steps of 1 or 2 characters they reach every total length. */
    static const char *hdrs[] = {HDR, "{\"alg\":\"HS256\", \"typ\":\"JWT\"}",
                                 "{\"alg\": \"HS256\", \"typ\":\"JWT\"}"};
    size_t pad = 2000;
    int n = 0;
    for (; pad < TH_JWT_MAX_TOKEN && n != TH_JWT_MAX_TOKEN; pad++) {
        int k = snprintf(p, sizeof(p), "{\"sub\":\"u\",\"pad\":\"%0*d\"}", (int)pad, 0);
        cr_assert(k > 0 && (size_t)k < sizeof(p));
        for (size_t h = 0; h < 3 && n != TH_JWT_MAX_TOKEN; h++)
            n = th_jwt_sign_raw(hdrs[h], p, SECRET, SECRET_LEN, tok, sizeof(tok));
    }
    cr_assert_eq(n, TH_JWT_MAX_TOKEN, "no padding hits the limit exactly");
    struct th_jwt_claims c;
    cr_assert_eq(verify_s(tok, (size_t)n, SECRET, SECRET_LEN, &c), TH_JWT_OK);
    for (; n <= TH_JWT_MAX_TOKEN; pad++) {
        snprintf(p, sizeof(p), "{\"sub\":\"u\",\"pad\":\"%0*d\"}", (int)pad, 0);
        n = th_jwt_sign_raw(HDR, p, SECRET, SECRET_LEN, tok, sizeof(tok));
    }
    cr_assert_eq(verify_s(tok, (size_t)n, SECRET, SECRET_LEN, &c), TH_JWT_MALFORMED,
                 "a valid signature does not excuse a %d-byte token", n);
    /* A megabyte of garbage is rejected without looking at it. */
    static char huge[1 << 20];
    memset(huge, 'a', sizeof(huge));
    cr_assert_eq(verify_s(huge, sizeof(huge), SECRET, SECRET_LEN, &c), TH_JWT_MALFORMED);
}

Test(jwt, claims_cleared_on_failure)
{
    struct th_jwt_claims c;
    const char *tok = claims("{\"sub\":\"u1\",\"exp\":1}");
    cr_assert_eq(verify_s(tok, strlen(tok), SECRET, SECRET_LEN, &c), TH_JWT_EXPIRED);
    cr_assert_eq(c.sub_len, 0);
    cr_assert_eq(c.sub[0], '\0');
}

Test(jwt, strerror_names_every_result)
{
    for (int r = TH_JWT_OK; r <= TH_JWT_BAD_CLAIM; r++) {
        const char *s = th_jwt_strerror(r);
        cr_assert(s && *s);
        for (int q = TH_JWT_OK; q < r; q++)
            cr_assert_str_neq(s, th_jwt_strerror(q));
    }
    cr_assert_str_eq(th_jwt_strerror(99), "unknown JWT error");
}
