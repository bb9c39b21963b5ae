/*
 * JWT key sets (see jwtkey.h): HS256 secrets, and RSA / P-256 / Ed25519
 * public keys from PEM text or a JWKS document, each bound to the one
 * algorithm its type allows. Key construction is libcrypto's (PEM reader,
 * EVP_PKEY_fromdata, raw Ed25519 keys); this file only picks the pieces out.
 */
#include "shm/proto/jwtkey.h"
#include "shm/proto/jwt.h"

#include <errno.h>
#include <jansson.h>
#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const alg_names[] = {NULL, "HS256", "RS256", "ES256", "EdDSA"};

const char *th_jwt_alg_name(int alg)
{
    return alg >= TH_JWT_HS256 && alg <= TH_JWT_EDDSA ? alg_names[alg] : NULL;
}

int th_jwt_alg_of(const char *name, size_t len)
{
    for (int a = TH_JWT_HS256; a <= TH_JWT_EDDSA; a++)
        if (strlen(alg_names[a]) == len && memcmp(alg_names[a], name, len) == 0)
            return a;
    return 0;
}

static struct th_jwt_key *slot_new(struct th_jwt_keys *ks)
{
    if (ks->n >= TH_JWT_KEYS_MAX)
        return NULL;
    struct th_jwt_key *k = &ks->k[ks->n];
    memset(k, 0, sizeof(*k));
    return k;
}

int th_jwt_keys_add_secret(struct th_jwt_keys *ks, const uint8_t *secret, size_t len)
{
    if (len == 0)
        return -EINVAL;
    struct th_jwt_key *k = slot_new(ks);
    if (!k)
        return -ENOSPC;
    if (!(k->secret = malloc(len)))
        return -ENOMEM;
    memcpy(k->secret, secret, len);
    k->secret_len = len;
    k->alg = TH_JWT_HS256;
    ks->n++;
    return 0;
}

/* The algorithm a public key may verify, or 0 (with why) when tether does not take it. */
static int alg_of_pkey(EVP_PKEY *p, const char **why)
{
    if (EVP_PKEY_is_a(p, "RSA")) {
        *why = "RSA keys must have at least 2048 bits";
        return EVP_PKEY_get_bits(p) >= 2048 ? TH_JWT_RS256 : 0;
    }
    if (EVP_PKEY_is_a(p, "EC")) {
        char group[64] = "";
        size_t gl = 0;
        *why = "EC keys must be on P-256 (ES256)";
        if (EVP_PKEY_get_utf8_string_param(p, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
                                           &gl) != 1)
            return 0;
        return strcmp(group, "prime256v1") == 0 || strcmp(group, "P-256") == 0 ? TH_JWT_ES256 : 0;
    }
    if (EVP_PKEY_is_a(p, "ED25519"))
        return TH_JWT_EDDSA;
    *why = "unsupported key type (RSA, EC P-256 or Ed25519)";
    return 0;
}

/* Take p (owned) into the set under kid. 0, or -EINVAL / -ENOSPC with err. */
static int add_pkey(struct th_jwt_keys *ks, EVP_PKEY *p, const char *kid, size_t kidlen, char *err,
                    size_t errlen)
{
    const char *why = "";
    int alg = alg_of_pkey(p, &why);
    struct th_jwt_key *k = alg ? slot_new(ks) : NULL;
    if (!alg || !k || kidlen > TH_JWT_KID_MAX) {
        snprintf(err, errlen, "%s", !alg ? why : !k ? "more than 64 keys" : "kid over 128 bytes");
        EVP_PKEY_free(p);
        return !alg || k ? -EINVAL : -ENOSPC;
    }
    k->alg = alg;
    k->pkey = p;
    memcpy(k->kid, kid, kidlen);
    k->kid[kidlen] = '\0';
    ks->n++;
    return 0;
}

/* ---- PEM ---- */

/* The "kid: NAME" line ending right before pos (after the previous block), if any. */
static void kid_before(const char *text, const char *from, const char *pos, const char **kid,
                       size_t *kidlen)
{
    *kid = "", *kidlen = 0;
    const char *end = pos;
    while (end > from && (end[-1] == '\n' || end[-1] == '\r' || end[-1] == ' '))
        end--;
    const char *start = end;
    while (start > from && start[-1] != '\n')
        start--;
    (void)text;
    if (end - start > 5 && strncmp(start, "kid:", 4) == 0) {
        start += 4;
        while (start < end && (*start == ' ' || *start == '\t'))
            start++;
        *kid = start;
        *kidlen = (size_t)(end - start);
    }
}

static const char *find_mem(const char *hay, size_t n, const char *needle)
{
    size_t m = strlen(needle);
    for (size_t i = 0; i + m <= n; i++)
        if (hay[i] == needle[0] && memcmp(hay + i, needle, m) == 0)
            return hay + i;
    return NULL;
}

int th_jwt_keys_add_pem(struct th_jwt_keys *ks, const char *text, size_t len, char *err,
                        size_t errlen)
{
    static const char begin[] = "-----BEGIN PUBLIC KEY-----", end[] = "-----END PUBLIC KEY-----";
    const char *p = text, *stop = text + len, *prev_end = text;
    int added = 0;
    while (p < stop) {
        const char *b = find_mem(p, (size_t)(stop - p), begin);
        if (!b)
            break;
        const char *e = find_mem(b, (size_t)(stop - b), end);
        if (!e) {
            snprintf(err, errlen, "key %d: BEGIN PUBLIC KEY without END", added + 1);
            return -EINVAL;
        }
        e += sizeof(end) - 1;
        const char *kid;
        size_t kidlen;
        kid_before(text, prev_end, b, &kid, &kidlen);
        BIO *bio = BIO_new_mem_buf(b, (int)(e - b));
        EVP_PKEY *pk = bio ? PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL) : NULL;
        BIO_free(bio);
        if (!pk) {
            snprintf(err, errlen, "key %d: not a public key libcrypto can read", added + 1);
            return -EINVAL;
        }
        char why[96];
        int rc = add_pkey(ks, pk, kid, kidlen, why, sizeof(why));
        if (rc < 0) {
            snprintf(err, errlen, "key %d: %s", added + 1, why);
            return rc;
        }
        added++;
        p = prev_end = e;
    }
    if (!added) {
        snprintf(err, errlen, "no -----BEGIN PUBLIC KEY----- block");
        return -EINVAL;
    }
    return added;
}

/* ---- JWKS ---- */

/* Decode a base64url JSON string member into a malloc'd buffer. */
static uint8_t *member_b64(json_t *jwk, const char *name, size_t *n)
{
    json_t *v = json_object_get(jwk, name);
    if (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) > 2048)
        return NULL;
    uint8_t *buf = malloc(json_string_length(v));
    long got = buf ? th_b64url_decode(json_string_value(v), json_string_length(v), buf) : -1;
    if (got <= 0) {
        free(buf);
        return NULL;
    }
    *n = (size_t)got;
    return buf;
}

static EVP_PKEY *from_params(const char *type, OSSL_PARAM_BLD *bld)
{
    OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
    EVP_PKEY_CTX *ctx = params ? EVP_PKEY_CTX_new_from_name(NULL, type, NULL) : NULL;
    EVP_PKEY *p = NULL;
    if (!ctx || EVP_PKEY_fromdata_init(ctx) != 1 ||
        EVP_PKEY_fromdata(ctx, &p, EVP_PKEY_PUBLIC_KEY, params) != 1)
        p = NULL;
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    return p;
}

static EVP_PKEY *jwk_rsa(json_t *jwk)
{
    size_t nl = 0, el = 0;
    uint8_t *n = member_b64(jwk, "n", &nl), *e = member_b64(jwk, "e", &el);
    BIGNUM *bn = n ? BN_bin2bn(n, (int)nl, NULL) : NULL,
           *be = e ? BN_bin2bn(e, (int)el, NULL) : NULL;
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    EVP_PKEY *p = NULL;
    if (bn && be && bld && OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn) &&
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be))
        p = from_params("RSA", bld);
    OSSL_PARAM_BLD_free(bld);
    BN_free(bn);
    BN_free(be);
    free(n);
    free(e);
    return p;
}

static EVP_PKEY *jwk_ec(json_t *jwk)
{
    size_t xl = 0, yl = 0;
    uint8_t *x = member_b64(jwk, "x", &xl), *y = member_b64(jwk, "y", &yl), pt[65];
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    EVP_PKEY *p = NULL;
    if (x && y && xl == 32 && yl == 32 && bld) {
        pt[0] = 0x04; /* uncompressed point */
        memcpy(pt + 1, x, 32);
        memcpy(pt + 33, y, 32);
        if (OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) &&
            OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pt, sizeof(pt)))
            p = from_params("EC", bld);
    }
    OSSL_PARAM_BLD_free(bld);
    free(x);
    free(y);
    return p;
}

static EVP_PKEY *jwk_okp(json_t *jwk)
{
    size_t xl = 0;
    uint8_t *x = member_b64(jwk, "x", &xl);
    EVP_PKEY *p = x && xl == 32 ? EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, x, xl) : NULL;
    free(x);
    return p;
}

static int str_is(json_t *v, const char *s)
{
    return json_is_string(v) && strcmp(json_string_value(v), s) == 0;
}

/* One JWK: 1 added, 0 skipped (not a signing key tether takes), -EINVAL/-ENOSPC with why. */
static int add_jwk(struct th_jwt_keys *ks, json_t *jwk, char *why, size_t whylen)
{
    json_t *kty = json_object_get(jwk, "kty"), *crv = json_object_get(jwk, "crv"),
           *use = json_object_get(jwk, "use"), *alg = json_object_get(jwk, "alg"),
           *kid = json_object_get(jwk, "kid");
    if (!json_is_object(jwk) || (use && !str_is(use, "sig")))
        return 0;
    int want;
    EVP_PKEY *p;
    if (str_is(kty, "RSA"))
        want = TH_JWT_RS256, p = jwk_rsa(jwk);
    else if (str_is(kty, "EC") && str_is(crv, "P-256"))
        want = TH_JWT_ES256, p = jwk_ec(jwk);
    else if (str_is(kty, "OKP") && str_is(crv, "Ed25519"))
        want = TH_JWT_EDDSA, p = jwk_okp(jwk);
    else
        return 0; /* other kty/crv: not ours to verify */
    if (alg && !str_is(alg, th_jwt_alg_name(want))) {
        EVP_PKEY_free(p);
        return 0; /* e.g. an RSA key published for PS256 only */
    }
    if (!p) {
        snprintf(why, whylen, "%s key with bad or missing members", json_string_value(kty));
        return -EINVAL;
    }
    if (kid && !json_is_string(kid)) {
        EVP_PKEY_free(p);
        snprintf(why, whylen, "kid is not a string");
        return -EINVAL;
    }
    const char *k = kid ? json_string_value(kid) : "";
    int rc = add_pkey(ks, p, k, strlen(k), why, whylen);
    return rc < 0 ? rc : 1;
}

int th_jwt_keys_add_jwks(struct th_jwt_keys *ks, const char *text, size_t len, char *err,
                         size_t errlen)
{
    json_t *doc = json_loadb(text, len, JSON_REJECT_DUPLICATES, NULL);
    json_t *keys = json_object_get(doc, "keys");
    int added = 0, rc = 0;
    if (!json_is_array(keys)) {
        snprintf(err, errlen, "not a JWKS document (an object with a \"keys\" array)");
        json_decref(doc);
        return -EINVAL;
    }
    for (size_t i = 0; i < json_array_size(keys) && rc >= 0; i++) {
        char why[96] = "";
        rc = add_jwk(ks, json_array_get(keys, i), why, sizeof(why));
        if (rc < 0)
            snprintf(err, errlen, "key %zu: %s", i + 1, why);
        added += rc > 0;
    }
    json_decref(doc);
    if (rc < 0)
        return rc;
    if (!added) {
        snprintf(err, errlen, "no usable signing key (RSA, EC P-256 or Ed25519 with use \"sig\")");
        return -EINVAL;
    }
    return added;
}

void th_jwt_keys_free(struct th_jwt_keys *ks)
{
    for (size_t i = 0; i < ks->n; i++) {
        EVP_PKEY_free(ks->k[i].pkey);
        if (ks->k[i].secret)
            OPENSSL_cleanse(ks->k[i].secret, ks->k[i].secret_len);
        free(ks->k[i].secret);
    }
    ks->n = 0;
}
