/*
 * Token keys from files (see shm/rt/jwtkeys.h): the I/O around the pure
 * parsers of shm/proto/jwtkey.c.
 */
#include "shm/rt/jwtkeys.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define KEY_FILE_MAX (1u << 20)

/* Read a whole (bounded) file into a malloc'd buffer. Returns its length or -errno. */
static long slurp(const char *path, char **out)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    char *buf = malloc(KEY_FILE_MAX);
    size_t len = 0;
    ssize_t n = 0;
    while (buf && len < KEY_FILE_MAX && (n = read(fd, buf + len, KEY_FILE_MAX - len)) > 0)
        len += (size_t)n;
    int e = !buf ? ENOMEM : n < 0 ? errno : len == KEY_FILE_MAX ? EFBIG : 0;
    close(fd);
    if (e) {
        free(buf);
        return -e;
    }
    *out = buf;
    return (long)len;
}

static void drop(char *buf, long len)
{
    OPENSSL_cleanse(buf, (size_t)len);
    free(buf);
}

static int load_secret(const struct th_config *cfg, struct th_jwt_keys *ks, char *err,
                       size_t errlen)
{
    if (!cfg->jwt_secret_file[0])
        return cfg->jwt_secret_len
                   ? th_jwt_keys_add_secret(ks, cfg->jwt_secret, cfg->jwt_secret_len)
                   : 0;
    char *buf;
    long n = slurp(cfg->jwt_secret_file, &buf);
    if (n < 0) {
        snprintf(err, errlen, "--jwt-secret-file %s: %s", cfg->jwt_secret_file, strerror((int)-n));
        return (int)n;
    }
    long len = n;
    while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r'))
        len--;
    int rc = len > 0 && len < TH_SECRET_MAX
                 ? th_jwt_keys_add_secret(ks, (const uint8_t *)buf, (size_t)len)
                 : -EINVAL;
    drop(buf, n);
    if (rc < 0)
        snprintf(err, errlen, "--jwt-secret-file %s: empty or over %d bytes", cfg->jwt_secret_file,
                 TH_SECRET_MAX - 1);
    return rc;
}

typedef int (*parse_fn)(struct th_jwt_keys *, const char *, size_t, char *, size_t);

static int load_file(const char *flag, const char *path, parse_fn parse, struct th_jwt_keys *ks,
                     char *err, size_t errlen)
{
    char *buf, why[200] = "";
    if (!path[0])
        return 0;
    long n = slurp(path, &buf);
    if (n < 0) {
        snprintf(err, errlen, "%s %s: %s", flag, path, strerror((int)-n));
        return (int)n;
    }
    int rc = parse(ks, buf, (size_t)n, why, sizeof(why));
    drop(buf, n);
    if (rc < 0)
        snprintf(err, errlen, "%s %s: %s", flag, path, why);
    return rc;
}

int th_jwt_keys_load(const struct th_config *cfg, struct th_jwt_keys *ks, char *err, size_t errlen)
{
    int rc = load_secret(cfg, ks, err, errlen);
    if (rc >= 0)
        rc = load_file("--jwt-key-file", cfg->jwt_key_file, th_jwt_keys_add_pem, ks, err, errlen);
    if (rc >= 0)
        rc =
            load_file("--jwt-jwks-file", cfg->jwt_jwks_file, th_jwt_keys_add_jwks, ks, err, errlen);
    if (rc >= 0 && ks->n == 0) {
        snprintf(err, errlen, "no JWT key configured");
        rc = -EINVAL;
    }
    if (rc < 0) {
        th_jwt_keys_free(ks);
        return rc;
    }
    return (int)ks->n;
}

struct th_jwt_rules th_jwt_rules_of(const struct th_config *cfg)
{
    return (struct th_jwt_rules){cfg->jwt_audience, cfg->jwt_issuer};
}
