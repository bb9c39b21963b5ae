/*
 * tether-token --secret-file PATH --user ID [--ttl SECONDS]
 *
 * Prints an HS256 JWT whose "sub" is ID, valid for SECONDS (default 3600;
 * 0 means no "exp"). The secret file is read exactly as `tether run
 * --jwt-secret-file` reads it (trailing CR/LF dropped), so a token printed
 * here is accepted by a group started with the same file. The token is
 * verified with th_jwt_verify before it is printed, so a user id the server
 * would refuse (empty, over 64 bytes, control characters) is an error here
 * rather than a token that can never connect.
 *
 * Exit status: 0 printed, 2 bad or missing flag (one line naming it), 1 other.
 */
#include "shm/proto/jwt.h"
#include "shm/rt/config.h" /* TH_SECRET_MAX (a header-only use: nothing of th_rt is linked) */

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define TTL_MAX (100LL * 366 * 24 * 3600) /* keeps now + ttl far from overflow */

struct opts {
    const char *secret_file, *user;
    long long ttl;
};

static void usage(FILE *out)
{
    fprintf(out,
            "usage: tether-token --secret-file PATH --user ID [--ttl SECONDS]\n"
            "  --secret-file PATH  file holding the HS256 secret (trailing newline ignored)\n"
            "  --user ID           the token's sub: 1 to 64 bytes of UTF-8, no control characters\n"
            "  --ttl SECONDS       lifetime, default 3600; 0 means no expiry\n");
}

static int bad(const char *flag, const char *why)
{
    fprintf(stderr, "tether-token: %s: %s\n", flag, why);
    return 2;
}

static int parse_ttl(const char *s, long long *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (*s == '\0' || *end != '\0' || errno || v < 0 || v > TTL_MAX)
        return -1;
    *out = v;
    return 0;
}

/* Accepts "--flag VALUE" and "--flag=VALUE". Returns 0, 1 for --help, or 2. */
static int parse_args(int argc, char **argv, struct opts *o)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *eq = strchr(a, '=');
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0)
            return 1;
        size_t nlen = eq ? (size_t)(eq - a) : strlen(a);
        const char *val = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
        char flag[32];
        snprintf(flag, sizeof(flag), "%.*s", (int)(nlen < 31 ? nlen : 31), a);
        if (strcmp(flag, "--secret-file") != 0 && strcmp(flag, "--user") != 0 &&
            strcmp(flag, "--ttl") != 0)
            return bad(a, "unknown flag (see --help)");
        if (!val)
            return bad(flag, "missing value");
        if (strcmp(flag, "--secret-file") == 0)
            o->secret_file = val;
        else if (strcmp(flag, "--user") == 0)
            o->user = val;
        else if (parse_ttl(val, &o->ttl) < 0)
            return bad("--ttl", "must be a whole number of seconds from 0 to 3162240000");
    }
    if (!o->secret_file)
        return bad("--secret-file", "required");
    if (!o->user)
        return bad("--user", "required");
    return 0;
}

/* Read the secret like shm/rt/config.c does. Returns its length, or -1 with a message printed. */
static long read_secret(const char *path, uint8_t *buf)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "tether-token: --secret-file %s: %s\n", path, strerror(errno));
        return -1;
    }
    ssize_t n = read(fd, buf, TH_SECRET_MAX);
    int err = errno;
    close(fd);
    if (n < 0) {
        fprintf(stderr, "tether-token: --secret-file %s: %s\n", path, strerror(err));
        return -1;
    }
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        n--;
    if (n == 0 || n >= TH_SECRET_MAX) {
        fprintf(stderr, "tether-token: --secret-file %s: secret must be 1 to %d bytes\n", path,
                TH_SECRET_MAX - 1);
        return -1;
    }
    return (long)n;
}

int main(int argc, char **argv)
{
    struct opts o = {.ttl = 3600};
    int rc = parse_args(argc, argv, &o);
    if (rc == 1) {
        usage(stdout);
        return 0;
    }
    if (rc)
        return rc;
    uint8_t secret[TH_SECRET_MAX];
    long slen = read_secret(o.secret_file, secret);
    if (slen < 0)
        return 2;
    int64_t now = (int64_t)time(NULL);
    char tok[TH_JWT_MAX_TOKEN + 1];
    int n = th_jwt_sign(o.user, secret, (size_t)slen, now, o.ttl, tok, sizeof(tok));
    struct th_jwt_claims claims;
    int v =
        n < 0 ? TH_JWT_BAD_SUB : th_jwt_verify(tok, (size_t)n, secret, (size_t)slen, now, &claims);
    if (v != TH_JWT_OK)
        return bad("--user", v == TH_JWT_BAD_SUB
                                 ? "must be 1 to 64 bytes of UTF-8 without control characters"
                                 : th_jwt_strerror(v));
    printf("%s\n", tok);
    return fflush(stdout) == 0 ? 0 : 1;
}
