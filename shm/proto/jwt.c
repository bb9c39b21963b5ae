/*
 * HS256 JWT verification and signing (see jwt.h).
 *
 * Order of checks: size and shape first (cheap, no allocation), then the
 * header's "alg" (so "none" or an asymmetric algorithm can never reach the
 * HMAC), then the signature in constant time, and only then the payload:
 * unauthenticated JSON is parsed once (the header), authenticated JSON once.
 *
 * base64url is strict: the URL alphabet only, no '=' padding (RFC 7515
 * section 2 omits it), no length that is 1 mod 4, and unused low bits of the
 * last character must be zero, so every token has exactly one encoding and a
 * signature cannot be altered without invalidating it. Tokens are at most
 * TH_JWT_MAX_TOKEN bytes. JSON duplicate keys are rejected (a second "alg"
 * or "sub" must not be able to shadow the first). A "crit" header is
 * rejected: we implement no extensions.
 */
#include "shm/proto/jwt.h"
#include "shm/proto/userid.h"

#include <errno.h>
#include <jansson.h>
#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdlib.h>
#include <string.h>

static const char b64url_chars[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static int b64url_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

/* Decode in[0..n) into out (room for n*3/4 bytes). Returns the length or -EINVAL. */
static long b64url_decode(const char *in, size_t n, uint8_t *out)
{
    if (n % 4 == 1)
        return -EINVAL;
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int v = b64url_value((unsigned char)in[i]);
        if (v < 0)
            return -EINVAL;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
        }
    }
    if (bits > 0 && (acc & ((1u << bits) - 1)) != 0)
        return -EINVAL; /* non-canonical: leftover bits set */
    return (long)o;
}

/* Encode in[0..n) without padding into out; returns the length or -ENOSPC if cap is short. */
static long b64url_encode(const uint8_t *in, size_t n, char *out, size_t cap)
{
    size_t need = n / 3 * 4 + (n % 3 ? n % 3 + 1 : 0);
    if (need >= cap)
        return -ENOSPC;
    size_t o = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        for (int s = 18; s >= 0; s -= 6)
            out[o++] = b64url_chars[(v >> s) & 63];
    }
    if (n - i == 1) {
        out[o++] = b64url_chars[in[i] >> 2];
        out[o++] = b64url_chars[(in[i] & 3) << 4];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 8 | in[i + 1];
        out[o++] = b64url_chars[v >> 10];
        out[o++] = b64url_chars[(v >> 4) & 63];
        out[o++] = b64url_chars[(v << 2) & 63];
    }
    out[o] = '\0';
    return (long)o;
}

/* Decode a base64url part holding a JSON object. NULL when it is not one. */
static json_t *decode_json_part(const char *p, size_t n, size_t flags)
{
    uint8_t buf[TH_JWT_MAX_TOKEN];
    long len = b64url_decode(p, n, buf);
    if (len <= 0)
        return NULL;
    json_t *j = json_loadb((const char *)buf, (size_t)len, JSON_REJECT_DUPLICATES | flags, NULL);
    if (j && !json_is_object(j)) {
        json_decref(j);
        return NULL;
    }
    return j;
}

/* What the header says: the algorithm and the kid ("" when absent). */
struct jwt_header {
    int alg;
    char kid[TH_JWT_KID_MAX + 1];
};

static int check_header(const char *p, size_t n, struct jwt_header *hd)
{
    json_t *h = decode_json_part(p, n, 0);
    if (!h)
        return TH_JWT_MALFORMED;
    json_t *alg = json_object_get(h, "alg"), *kid = json_object_get(h, "kid");
    int rc = TH_JWT_OK;
    hd->kid[0] = '\0';
    if (json_object_get(h, "crit"))
        rc = TH_JWT_MALFORMED;
    else if (!json_is_string(alg) ||
             !(hd->alg = th_jwt_alg_of(json_string_value(alg), json_string_length(alg))))
        rc = TH_JWT_BAD_ALG;
    else if (kid && (!json_is_string(kid) || json_string_length(kid) > TH_JWT_KID_MAX))
        rc = TH_JWT_MALFORMED;
    else if (kid)
        memcpy(hd->kid, json_string_value(kid), json_string_length(kid) + 1);
    json_decref(h);
    return rc;
}

static int verify_hs256(const struct th_jwt_key *k, const char *msg, size_t n, const uint8_t *sig,
                        size_t sig_len)
{
    uint8_t want[EVP_MAX_MD_SIZE];
    unsigned int want_len = 0;
    if (k->secret_len == 0 || k->secret_len > INT32_MAX ||
        !HMAC(EVP_sha256(), k->secret, (int)k->secret_len, (const uint8_t *)msg, n, want,
              &want_len))
        return 0;
    return sig_len == want_len && CRYPTO_memcmp(want, sig, want_len) == 0;
}

/* ES256 signatures are r || s (32 bytes each, RFC 7518 3.4); libcrypto wants DER. */
static size_t es256_der(const uint8_t *sig, size_t n, uint8_t *der, size_t cap)
{
    if (n != 64)
        return 0;
    ECDSA_SIG *es = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(sig, 32, NULL), *s = BN_bin2bn(sig + 32, 32, NULL);
    if (!es || !r || !s || ECDSA_SIG_set0(es, r, s) != 1) {
        BN_free(r);
        BN_free(s);
        ECDSA_SIG_free(es);
        return 0;
    }
    int len = i2d_ECDSA_SIG(es, NULL);
    uint8_t *o = der;
    if (len <= 0 || (size_t)len > cap || i2d_ECDSA_SIG(es, &o) != len)
        len = 0;
    ECDSA_SIG_free(es);
    return (size_t)len;
}

static int verify_pkey(const struct th_jwt_key *k, const char *msg, size_t n, const uint8_t *sig,
                       size_t sig_len)
{
    uint8_t der[80];
    if (k->alg == TH_JWT_ES256) {
        sig_len = es256_der(sig, sig_len, der, sizeof(der));
        sig = der;
        if (!sig_len)
            return 0;
    }
    if (k->alg == TH_JWT_EDDSA && sig_len != 64)
        return 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    const EVP_MD *md = k->alg == TH_JWT_EDDSA ? NULL : EVP_sha256(); /* Ed25519 hashes itself */
    int ok = ctx && EVP_DigestVerifyInit(ctx, NULL, md, NULL, (EVP_PKEY *)k->pkey) == 1 &&
             EVP_DigestVerify(ctx, sig, sig_len, (const uint8_t *)msg, n) == 1;
    EVP_MD_CTX_free(ctx);
    return ok;
}

/*
 * The signature over token[0..signed_len) with the keys of the header's alg
 * (and kid, when it names one). A key is only ever used for its own alg.
 */
static int check_signature(const char *token, size_t signed_len, const char *sig, size_t sig_n,
                           const struct th_jwt_keys *ks, const struct jwt_header *hd)
{
    uint8_t got[TH_JWT_MAX_TOKEN];
    long got_len = b64url_decode(sig, sig_n, got);
    if (got_len < 0)
        return TH_JWT_MALFORMED;
    /* A kid picks the keys of that kid; a kid no key of the alg carries falls
     * back to the alg's unnamed keys (an HS256 secret has no kid). */
    int named = 0, candidates = 0;
    for (size_t i = 0; hd->kid[0] && i < ks->n; i++)
        named |= ks->k[i].alg == hd->alg && strcmp(ks->k[i].kid, hd->kid) == 0;
    for (size_t i = 0; i < ks->n; i++) {
        const struct th_jwt_key *k = &ks->k[i];
        if (k->alg != hd->alg || (named && strcmp(k->kid, hd->kid) != 0) ||
            (hd->kid[0] && !named && k->kid[0]))
            continue;
        candidates++;
        int ok = k->alg == TH_JWT_HS256 ? verify_hs256(k, token, signed_len, got, (size_t)got_len)
                                        : verify_pkey(k, token, signed_len, got, (size_t)got_len);
        if (ok)
            return TH_JWT_OK;
    }
    if (!candidates)
        return hd->kid[0] ? TH_JWT_UNKNOWN_KID : TH_JWT_BAD_ALG;
    return TH_JWT_BAD_SIG;
}

/*
 * A NumericDate claim: absent, or a JSON number (integer or fraction, RFC
 * 7519) from 0 to TH_JWT_MAX_DATE; anything else is TH_JWT_BAD_CLAIM. One
 * rule for every spelling: integers are decoded as doubles, so 2^63 and 1e30
 * are refused alike instead of one failing to parse and the other meaning
 * "never expires".
 */
static int get_time_claim(json_t *payload, const char *name, double *v, int *present)
{
    json_t *c = json_object_get(payload, name);
    *present = c != NULL;
    if (!c)
        return TH_JWT_OK;
    if (!json_is_number(c))
        return TH_JWT_BAD_CLAIM;
    *v = json_number_value(c);
    if (!(*v >= 0 && *v <= TH_JWT_MAX_DATE))
        return TH_JWT_BAD_CLAIM;
    return TH_JWT_OK;
}

static int check_sub(json_t *payload, struct th_jwt_claims *out)
{
    json_t *s = json_object_get(payload, "sub");
    if (!json_is_string(s))
        return TH_JWT_BAD_SUB;
    const char *p = json_string_value(s);
    size_t n = json_string_length(s);
    if (!th_userid_valid(p, n))
        return TH_JWT_BAD_SUB;
    memcpy(out->sub, p, n);
    out->sub[n] = '\0';
    out->sub_len = n;
    return TH_JWT_OK;
}

/* "aud" is a string or an array of strings (RFC 7519 4.1.3); one must equal want. */
static int aud_ok(json_t *aud, const char *want)
{
    if (json_is_string(aud))
        return strcmp(json_string_value(aud), want) == 0 && json_string_length(aud) == strlen(want);
    size_t i;
    json_t *v;
    json_array_foreach(aud, i, v) if (json_is_string(v) && json_string_length(v) == strlen(want) &&
                                      strcmp(json_string_value(v), want) == 0) return 1;
    return 0;
}

static int check_rules(json_t *payload, const struct th_jwt_rules *rules)
{
    if (!rules)
        return TH_JWT_OK;
    if (rules->audience && rules->audience[0] &&
        !aud_ok(json_object_get(payload, "aud"), rules->audience))
        return TH_JWT_BAD_AUD;
    json_t *iss = json_object_get(payload, "iss");
    if (rules->issuer && rules->issuer[0] &&
        !(json_is_string(iss) && json_string_length(iss) == strlen(rules->issuer) &&
          strcmp(json_string_value(iss), rules->issuer) == 0))
        return TH_JWT_BAD_ISS;
    return TH_JWT_OK;
}

static int check_claims(json_t *payload, int64_t now_s, struct th_jwt_claims *out)
{
    double exp = 0, nbf = 0;
    int has_exp, has_nbf;
    int rc = get_time_claim(payload, "exp", &exp, &has_exp);
    if (rc == TH_JWT_OK)
        rc = get_time_claim(payload, "nbf", &nbf, &has_nbf);
    if (rc == TH_JWT_OK)
        rc = check_sub(payload, out);
    if (rc != TH_JWT_OK)
        return rc;
    /* Compared as doubles: a fractional exp is allowed. */
    if (has_exp && (double)now_s >= exp)
        return TH_JWT_EXPIRED;
    if (has_nbf && (double)now_s < nbf)
        return TH_JWT_NOT_YET;
    out->exp = !has_exp ? 0 : (int64_t)exp; /* <= TH_JWT_MAX_DATE: fits */
    return TH_JWT_OK;
}

int th_jwt_verify_keys(const char *token, size_t len, const struct th_jwt_keys *ks,
                       const struct th_jwt_rules *rules, int64_t now_s, struct th_jwt_claims *out)
{
    struct jwt_header hd;
    memset(out, 0, sizeof(*out));
    if (len == 0 || len > TH_JWT_MAX_TOKEN)
        return TH_JWT_MALFORMED;
    const char *d1 = memchr(token, '.', len);
    const char *d2 = d1 ? memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - token)) : NULL;
    if (!d2 || memchr(d2 + 1, '.', len - (size_t)(d2 + 1 - token)))
        return TH_JWT_MALFORMED;
    int rc = check_header(token, (size_t)(d1 - token), &hd);
    if (rc == TH_JWT_OK)
        rc = check_signature(token, (size_t)(d2 - token), d2 + 1, len - (size_t)(d2 + 1 - token),
                             ks, &hd);
    if (rc != TH_JWT_OK)
        return rc;
    json_t *payload = decode_json_part(d1 + 1, (size_t)(d2 - d1 - 1),
                                       JSON_DECODE_INT_AS_REAL); /* one rule for 2^63 and 1e30 */
    if (!payload)
        return TH_JWT_MALFORMED;
    rc = check_claims(payload, now_s, out);
    if (rc == TH_JWT_OK)
        rc = check_rules(payload, rules);
    json_decref(payload);
    if (rc != TH_JWT_OK)
        memset(out, 0, sizeof(*out));
    return rc;
}

int th_jwt_verify(const char *token, size_t len, const uint8_t *secret, size_t secret_len,
                  int64_t now_s, struct th_jwt_claims *out)
{
    static _Thread_local struct th_jwt_keys one; /* one HS256 key, borrowed: nothing to free */
    one.n = 1;
    one.k[0] = (struct th_jwt_key){
        .alg = TH_JWT_HS256, .secret = (uint8_t *)secret, .secret_len = secret_len};
    return th_jwt_verify_keys(token, len, &one, NULL, now_s, out);
}

long th_b64url_decode(const char *in, size_t n, uint8_t *out)
{
    return b64url_decode(in, n, out);
}

const char *th_jwt_strerror(int result)
{
    switch (result) {
    case TH_JWT_OK:
        return "ok";
    case TH_JWT_MALFORMED:
        return "malformed token";
    case TH_JWT_BAD_ALG:
        return "algorithm not accepted (no key of it is configured)";
    case TH_JWT_BAD_SIG:
        return "bad signature";
    case TH_JWT_EXPIRED:
        return "token expired";
    case TH_JWT_NOT_YET:
        return "token not yet valid";
    case TH_JWT_BAD_SUB:
        return "bad sub claim";
    case TH_JWT_BAD_CLAIM:
        return "exp or nbf is not a date (seconds from 0 to 253402300799)";
    case TH_JWT_UNKNOWN_KID:
        return "no key with this kid";
    case TH_JWT_BAD_AUD:
        return "wrong audience";
    case TH_JWT_BAD_ISS:
        return "wrong issuer";
    default:
        return "unknown JWT error";
    }
}

/* Append ".<base64url of s>" (no dot when o == 0) at out[o..cap). */
static long append_part(char *out, size_t o, size_t cap, const uint8_t *s, size_t n)
{
    if (o > 0) {
        if (o + 1 >= cap)
            return -ENOSPC;
        out[o++] = '.';
    }
    long w = b64url_encode(s, n, out + o, cap - o);
    return w < 0 ? -ENOSPC : (long)o + w;
}

int th_jwt_sign_raw(const char *header_json, const char *payload_json, const uint8_t *secret,
                    size_t secret_len, char *out, size_t cap)
{
    long o = append_part(out, 0, cap, (const uint8_t *)header_json, strlen(header_json));
    if (o >= 0)
        o = append_part(out, (size_t)o, cap, (const uint8_t *)payload_json, strlen(payload_json));
    if (o < 0)
        return (int)o;
    if (secret_len > INT32_MAX)
        return -EINVAL;
    uint8_t mac[EVP_MAX_MD_SIZE];
    unsigned int mac_len = 0;
    if (!HMAC(EVP_sha256(), secret, (int)secret_len, (const uint8_t *)out, (size_t)o, mac,
              &mac_len))
        return -EINVAL; /* HMAC: libcrypto refused the key */
    o = append_part(out, (size_t)o, cap, mac, mac_len);
    return o < 0 ? (int)o : o > INT32_MAX ? -ENOSPC : (int)o;
}

int th_jwt_sign(const char *sub, const uint8_t *secret, size_t secret_len, int64_t now_s,
                int64_t ttl_s, char *out, size_t cap)
{
    json_t *claims = json_pack("{s:s, s:I}", "sub", sub, "iat", (json_int_t)now_s);
    if (!claims)
        return -EINVAL; /* json_pack: sub is not UTF-8, or out of memory */
    if (ttl_s != 0)
        json_object_set_new(claims, "exp", json_integer((json_int_t)(now_s + ttl_s)));
    char *payload = json_dumps(claims, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(claims);
    if (!payload)
        return -ENOMEM;
    int rc = th_jwt_sign_raw("{\"alg\":\"HS256\",\"typ\":\"JWT\"}", payload, secret, secret_len,
                             out, cap);
    free(payload);
    return rc;
}
