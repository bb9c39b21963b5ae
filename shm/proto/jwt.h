/*
 * JWT (RFC 7519) verification for client connects: HS256 secrets and
 * RS256 / ES256 / EdDSA public keys (shm/proto/jwtkey.h), all in libcrypto;
 * HMAC compared in constant time; "alg" must match the key's type. "sub" is the
 * user id (the rule in shm/proto/userid.h); "exp" and "nbf" are
 * enforced when present (no leeway) and must be numbers. base64url parts
 * must be unpadded and canonical; tokens over TH_JWT_MAX_TOKEN are rejected. Also signs tokens, for
 * tether-token and the tests.
 */
#ifndef TETHER_SHM_PROTO_JWT_H
#define TETHER_SHM_PROTO_JWT_H

#include <stddef.h>
#include <stdint.h>

#include "shm/proto/jwtkey.h"
#include "shm/proto/userid.h"

/* Longer tokens are TH_JWT_MALFORMED without being decoded. */
#define TH_JWT_MAX_TOKEN 4096

enum th_jwt_result {
    TH_JWT_OK = 0,
    TH_JWT_MALFORMED, /* not three base64url parts of JSON objects */
    TH_JWT_BAD_ALG,   /* alg missing, unknown (none, HS384, ...), or no key of it configured */
    TH_JWT_BAD_SIG,
    TH_JWT_EXPIRED,     /* now >= exp */
    TH_JWT_NOT_YET,     /* now < nbf */
    TH_JWT_BAD_SUB,     /* missing, or not a valid user id (th_userid_valid) */
    TH_JWT_BAD_CLAIM,   /* exp/nbf present but not numbers */
    TH_JWT_UNKNOWN_KID, /* the header's kid names no key of its alg */
    TH_JWT_BAD_AUD,     /* --jwt-audience set and not in aud */
    TH_JWT_BAD_ISS,     /* --jwt-issuer set and iss differs */
};
#define TH_JWT_RESULT_MAX TH_JWT_BAD_ISS

/* Claims checked when set (NULL or "" = not checked). */
struct th_jwt_rules {
    const char *audience; /* must equal aud, or one element of an aud array */
    const char *issuer;   /* must equal iss */
};

struct th_jwt_claims {
    char sub[TH_USER_MAX + 1];
    size_t sub_len;
    int64_t exp; /* 0 when absent */
};

/* Largest exp/nbf accepted: 9999-12-31T23:59:59Z in Unix seconds. */
#define TH_JWT_MAX_DATE 253402300799.0

/*
 * Verify token[0..len) at now_s (Unix seconds) with the keys of its header's
 * alg (and kid), then exp/nbf/sub and the rules (rules may be NULL).
 */
int th_jwt_verify_keys(const char *token, size_t len, const struct th_jwt_keys *ks,
                       const struct th_jwt_rules *rules, int64_t now_s, struct th_jwt_claims *out);
/* th_jwt_verify_keys with one HS256 secret and no rules. */
int th_jwt_verify(const char *token, size_t len, const uint8_t *secret, size_t secret_len,
                  int64_t now_s, struct th_jwt_claims *out);
const char *th_jwt_strerror(int result);
/* Strict base64url decode (no padding, canonical); out needs n * 3 / 4 bytes. Length or -1. */
long th_b64url_decode(const char *in, size_t n, uint8_t *out);

/*
 * Sign an HS256 token for sub with exp = now + ttl (no exp when ttl_s is 0).
 * Writes a NUL-terminated token into out. Returns its length, -ENOSPC if cap
 * is short, or -EINVAL/-ENOMEM if the claims cannot be built.
 */
int th_jwt_sign(const char *sub, const uint8_t *secret, size_t secret_len, int64_t now_s,
                int64_t ttl_s, char *out, size_t cap);
/*
 * Sign arbitrary header and payload JSON texts as given (tests use it to
 * build tokens verify must reject). Same return as th_jwt_sign.
 */
int th_jwt_sign_raw(const char *header_json, const char *payload_json, const uint8_t *secret,
                    size_t secret_len, char *out, size_t cap);

#endif
