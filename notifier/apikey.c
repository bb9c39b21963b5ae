/*
 * Backend API keys (see notifier/apikey.h): parse the key file's text, match
 * a bearer token in constant time over hashed keys. No I/O here.
 */
#include "notifier/apikey.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static int key_byte_ok(unsigned char ch)
{
    return ch > 0x20 && ch < 0x7f;
}

/* One line, trimmed: 1 = a key at [*p, *p + *n), 0 = skip, -1 = bad. */
static int line_key(const char **p, size_t *n)
{
    while (*n && (**p == ' ' || **p == '\t'))
        (*p)++, (*n)--;
    while (*n && ((*p)[*n - 1] == ' ' || (*p)[*n - 1] == '\t' || (*p)[*n - 1] == '\r'))
        (*n)--;
    if (*n == 0 || **p == '#')
        return 0;
    if (*n < TH_APIKEY_MIN || *n > TH_APIKEY_MAX)
        return -1;
    for (size_t i = 0; i < *n; i++)
        if (!key_byte_ok((unsigned char)(*p)[i]))
            return -1;
    return 1;
}

int th_apikeys_parse(const char *text, size_t len, struct th_apikeys *out, char *err, size_t errlen)
{
    out->n = 0;
    out->digest = NULL;
    size_t cap = 0;
    unsigned lineno = 0;
    for (size_t off = 0; off < len;) {
        const char *nl = memchr(text + off, '\n', len - off);
        size_t end = nl ? (size_t)(nl - text) : len;
        const char *p = text + off;
        size_t n = end - off;
        off = end + 1;
        lineno++;
        int k = line_key(&p, &n);
        if (k == 0)
            continue;
        if (k < 0) {
            snprintf(err, errlen, "line %u: a key is %d to %d printable ASCII bytes without spaces",
                     lineno, TH_APIKEY_MIN, TH_APIKEY_MAX);
            th_apikeys_free(out);
            return -EINVAL;
        }
        if (out->n == cap) {
            size_t nc = cap ? cap * 2 : 4;
            void *d = realloc(out->digest, nc * sizeof(*out->digest));
            if (!d) {
                th_apikeys_free(out);
                return -ENOMEM;
            }
            out->digest = d;
            cap = nc;
        }
        SHA256((const unsigned char *)p, n, out->digest[out->n++]);
    }
    if (out->n == 0) {
        snprintf(err, errlen, "no key in it (one key a line; '#' starts a comment)");
        return -EINVAL;
    }
    return (int)out->n;
}

void th_apikeys_free(struct th_apikeys *k)
{
    free(k->digest);
    k->digest = NULL;
    k->n = 0;
}

int th_apikeys_match(const struct th_apikeys *k, const char *token, size_t len)
{
    uint8_t d[32];
    SHA256((const unsigned char *)token, len, d);
    int hit = 0;
    for (size_t i = 0; i < k->n; i++) /* every key, no early exit */
        hit |= CRYPTO_memcmp(d, k->digest[i], sizeof(d)) == 0;
    return hit;
}

int th_apikey_bearer(const char *value, size_t n, const char **tok, size_t *tlen)
{
    if (n < 7 || strncasecmp(value, "Bearer ", 7) != 0)
        return 0;
    const char *p = value + 7;
    size_t m = n - 7;
    while (m && *p == ' ')
        p++, m--;
    while (m && p[m - 1] == ' ')
        m--;
    if (m == 0)
        return 0;
    *tok = p;
    *tlen = m;
    return 1;
}

int th_apikeys_load(const char *path, struct th_apikeys *out, char *err, size_t errlen)
{
    char why[160] = "";
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        snprintf(err, errlen, "--api-key-file %s: %s", path, strerror(e));
        return -e;
    }
    char *buf = malloc(TH_APIKEY_FILE_MAX);
    size_t len = 0;
    ssize_t n = 0;
    while (buf && len < TH_APIKEY_FILE_MAX &&
           (n = read(fd, buf + len, TH_APIKEY_FILE_MAX - len)) > 0)
        len += (size_t)n;
    int e = n < 0 ? errno : 0;
    close(fd);
    if (!buf || e) {
        free(buf);
        snprintf(err, errlen, "--api-key-file %s: %s", path, strerror(buf ? e : ENOMEM));
        return buf ? -e : -ENOMEM;
    }
    int rc = th_apikeys_parse(buf, len, out, why, sizeof(why));
    OPENSSL_cleanse(buf, len); /* the keys' text does not linger on the heap */
    free(buf);
    if (rc < 0)
        snprintf(err, errlen, "--api-key-file %s: %s", path, why[0] ? why : strerror(-rc));
    return rc;
}
