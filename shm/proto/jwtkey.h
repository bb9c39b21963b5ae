/*
 * The keys a JWT may be signed with (--jwt-secret-file, --jwt-key-file,
 * --jwt-jwks-file), parsed from text the caller has read: no I/O here.
 *
 * Each key carries the one algorithm it may verify, fixed by its type:
 * an HS256 secret, an RSA public key (RS256, at least 2048 bits), an EC
 * P-256 public key (ES256), an Ed25519 public key (EdDSA). A token is only
 * ever checked with keys of the algorithm its header names, so an HS256
 * token "signed" with an RSA key's PEM text as the HMAC secret, or any other
 * alg/key mix-up, fails: there is no code path that feeds a public key to
 * HMAC.
 *
 * PEM input: any number of "-----BEGIN PUBLIC KEY-----" blocks; the line
 * "kid: NAME" right before a block (RFC 7468 allows text between blocks)
 * names it. JWKS input: {"keys":[...]} with kty RSA (n, e), EC (crv P-256,
 * x, y) or OKP (crv Ed25519, x); "kid" names a key; a key whose "use" is
 * not "sig", or whose "alg" does not fit its type, or of another kty/crv, is
 * skipped (identity providers publish encryption keys in the same set), and
 * a document with no usable key is refused. A token with "kid" is checked
 * with the keys of its alg that carry that kid, or, when none does, with the
 * alg's keys that have no kid (an HS256 secret); without "kid", with every
 * key of its alg.
 */
#ifndef TETHER_SHM_PROTO_JWTKEY_H
#define TETHER_SHM_PROTO_JWTKEY_H

#include <stddef.h>
#include <stdint.h>

#define TH_JWT_KID_MAX 128
#define TH_JWT_KEYS_MAX 64 /* keys in one set: a JWKS larger than that is refused */

enum th_jwt_alg { TH_JWT_HS256 = 1, TH_JWT_RS256, TH_JWT_ES256, TH_JWT_EDDSA };

struct th_jwt_key {
    int alg;                      /* enum th_jwt_alg */
    char kid[TH_JWT_KID_MAX + 1]; /* "" = none */
    void *pkey;                   /* EVP_PKEY * for the public-key algorithms */
    uint8_t *secret;              /* HS256 */
    size_t secret_len;
};

struct th_jwt_keys {
    size_t n;
    struct th_jwt_key k[TH_JWT_KEYS_MAX];
};

/* The "alg" header value of an algorithm ("HS256", "RS256", "ES256", "EdDSA"), or NULL. */
const char *th_jwt_alg_name(int alg);
/* The algorithm named by an "alg" header value (exact, case-sensitive), or 0. */
int th_jwt_alg_of(const char *name, size_t len);

/* Add an HS256 secret (copied). 0, or -ENOSPC / -ENOMEM / -EINVAL (empty). */
int th_jwt_keys_add_secret(struct th_jwt_keys *ks, const uint8_t *secret, size_t len);
/*
 * Add every public key of a PEM text. Returns the number added (>= 1), or
 * -EINVAL with the reason in err (no key, a block libcrypto cannot read, an
 * unsupported type or curve, RSA under 2048 bits, a kid too long), -ENOSPC.
 */
int th_jwt_keys_add_pem(struct th_jwt_keys *ks, const char *text, size_t len, char *err,
                        size_t errlen);
/* Add the usable keys of a JWKS document. Same returns as th_jwt_keys_add_pem. */
int th_jwt_keys_add_jwks(struct th_jwt_keys *ks, const char *text, size_t len, char *err,
                         size_t errlen);
/* Free every key (the set is empty afterwards). */
void th_jwt_keys_free(struct th_jwt_keys *ks);

#endif
