/*
 * JWT (RFC 7519) verification for client connects: HS256 only, HMAC from
 * libcrypto, signature compared in constant time, "alg" pinned. "sub" is the
 * user id (the rule in shm/proto/userid.h); "exp" and "nbf" are
 * enforced when present (no leeway) and must be numbers. base64url parts
 * must be unpadded and canonical; tokens over TH_JWT_MAX_TOKEN are rejected. Also signs tokens, for
 * tether-token and the tests.
 */
#ifndef TETHER_SHM_PROTO_JWT_H
#define TETHER_SHM_PROTO_JWT_H

#include <stddef.h>
#include <stdint.h>

#include "shm/proto/userid.h"

/* Longer tokens are TH_JWT_MALFORMED without being decoded. */
#define TH_JWT_MAX_TOKEN 4096

enum th_jwt_result {
    TH_JWT_OK = 0,
    TH_JWT_MALFORMED, /* not three base64url parts of JSON objects */
    TH_JWT_BAD_ALG,   /* alg missing or not HS256 (none, HS384, RS256, ...) */
    TH_JWT_BAD_SIG,
    TH_JWT_EXPIRED,   /* now >= exp */
    TH_JWT_NOT_YET,   /* now < nbf */
    TH_JWT_BAD_SUB,   /* missing, or not a valid user id (th_userid_valid) */
    TH_JWT_BAD_CLAIM, /* exp/nbf present but not numbers */
};

struct th_jwt_claims {
    char sub[TH_USER_MAX + 1];
    size_t sub_len;
    int64_t exp; /* 0 when absent */
};

/* Largest exp/nbf accepted: 9999-12-31T23:59:59Z in Unix seconds. */
#define TH_JWT_MAX_DATE 253402300799.0

/* Verify token[0..len) with the secret at now_s (Unix seconds). */
int th_jwt_verify(const char *token, size_t len, const uint8_t *secret, size_t secret_len,
                  int64_t now_s, struct th_jwt_claims *out);
const char *th_jwt_strerror(int result);

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
