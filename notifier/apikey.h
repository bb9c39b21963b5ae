/*
 * Backend API keys (--api-key-file): the set of keys the notifier accepts on
 * /v1/..., and the one comparison it makes against a request's bearer token.
 *
 * The file holds one key per line; blank lines and lines starting with '#'
 * are skipped, surrounding spaces and a CR are trimmed. Several keys let an
 * operator rotate: add the new key, SIGHUP, move the backends over, remove
 * the old key, SIGHUP. A key is 16 to 256 printable ASCII bytes without
 * spaces; a file with any other line is refused as a whole (the caller keeps
 * the keys it had).
 *
 * Keys are kept only as SHA-256 digests, and a check hashes the presented
 * token and compares it with every digest without stopping early
 * (CRYPTO_memcmp), so the time taken says nothing about how much of a key
 * matched, nor which key, nor how long the keys are. Parsing does no I/O;
 * th_apikeys_load is the file-reading wrapper.
 */
#ifndef TETHER_NOTIFIER_APIKEY_H
#define TETHER_NOTIFIER_APIKEY_H

#include <stddef.h>
#include <stdint.h>

#define TH_APIKEY_MIN 16
#define TH_APIKEY_MAX 256
#define TH_APIKEY_FILE_MAX (1u << 20)

struct th_apikeys {
    size_t n;
    uint8_t (*digest)[32]; /* n SHA-256 digests, malloc'd */
};

/*
 * Parse a key file's text into *out (replacing nothing: the caller swaps).
 * Returns the number of keys (>= 1), or -EINVAL with the line named in err
 * (a bad line, or no key at all), -ENOMEM.
 */
int th_apikeys_parse(const char *text, size_t len, struct th_apikeys *out, char *err,
                     size_t errlen);
void th_apikeys_free(struct th_apikeys *k);
/*
 * The one I/O helper: read path (at most TH_APIKEY_FILE_MAX bytes) and parse
 * it. Returns as th_apikeys_parse, or -errno; err names the file.
 */
int th_apikeys_load(const char *path, struct th_apikeys *out, char *err, size_t errlen);

/* Does token[0..len) equal one of the keys? 1 or 0, in time independent of the keys' bytes. */
int th_apikeys_match(const struct th_apikeys *k, const char *token, size_t len);

/*
 * The bearer token of an Authorization header value ("Bearer <key>", scheme
 * case-insensitive). Returns 1 with *tok and *tlen set, 0 when it is not one.
 */
int th_apikey_bearer(const char *value, size_t n, const char **tok, size_t *tlen);

#endif
