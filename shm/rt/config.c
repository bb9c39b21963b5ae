/*
 * Flag and environment parsing for `tether run` (see shm/rt/config.h). One
 * table describes every flag: its name, where it is stored and how it is
 * checked, so the environment and argv paths, the usage text and the error
 * messages cannot drift apart.
 */
#include "shm/rt/config.h"
#include "shm/mailbox.h"
#include "shm/rt/log.h"
#include "shm/registry.h" /* TH_MAX_WORKERS, TH_INDEX_SLOT_BITS */

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum flag_kind {
    F_HOSTPORT_LISTEN,
    F_HOSTPORT_API,
    F_U32,
    F_U64,
    F_SHM,
    F_PATH,
    F_LEVEL,
    F_FORMAT,
    F_BOOL,
    F_TEXT /* free text up to TH_PATH_MAX - 1 bytes */
};

struct flag {
    const char *name; /* without the leading "--" */
    enum flag_kind kind;
    size_t off; /* offset of the field in struct th_config */
    uint64_t min, max;
    const char *help;
};

#define OFF(f) offsetof(struct th_config, f)
/* Help texts name no default: th_config_usage prints it from th_config_defaults. */
static const struct flag flags[] = {
    {"listen", F_HOSTPORT_LISTEN, 0, 0, 0, "ADDR:PORT  client WebSocket endpoint, path /ws"},
    {"api-listen", F_HOSTPORT_API, 0, 0, 0, "ADDR:PORT  backend HTTP API"},
    {"workers", F_U32, OFF(workers), 1, TH_MAX_WORKERS, "N  pre-forked socket workers"},
    {"shm-name", F_SHM, OFF(shm_name), 0, 0, "NAME  POSIX shared-memory segment"},
    {"slots", F_U32, OFF(slots), 16, 1u << TH_INDEX_SLOT_BITS,
     "N  connection slots, the connection limit"},
    {"stale-after", F_U32, OFF(stale_after_s), 1, 86400 * 7,
     "SECONDS  evict a connection silent this long"},
    {"sweep-every", F_U32, OFF(sweep_every_s), 1, 86400, "SECONDS  janitor sweep period"},
    {"max-conns-per-user", F_U32, OFF(max_conns_per_user), 1, 1024,
     "N  devices per user; a newer one replaces the oldest"},
    {"max-message", F_U32, OFF(max_message), 125, 16u << 20,
     "BYTES  largest client message, larger closes 1009"},
    {"send-queue-cap", F_U64, OFF(send_queue_cap), 4096, 1ull << 32,
     "BYTES  close a client whose unsent data passes this"},
    {"drain-timeout", F_U32, OFF(drain_timeout_s), 0, 3600,
     "SECONDS  grace for clients to close on SIGTERM"},
    {"handoff-timeout-ms", F_U32, OFF(handoff_timeout_ms), 1, 60000,
     "MS  notifier's bound for a worker to confirm a delivery"},
    {"hung-after", F_U32, OFF(hung_after_s), 1, 3600,
     "SECONDS  a role whose heartbeat is older is declared hung, gets no new\n"
     "                             clients, and is replaced"},
    /* The mailbox (shm/mailbox.h): kept across reconnects and graceful restarts. */
    {"mailbox-ttl", F_U32, OFF(mailbox_ttl_s), 0, 7 * 86400,
     "SECONDS  keep each notification this long for resume; 0 = mailbox off"},
    {"mailbox-per-user", F_U32, OFF(mailbox_per_user), 1, TH_MBX_PER_USER_MAX,
     "N  stored notifications per user, the oldest goes first"},
    {"mailbox-bytes", F_U64, OFF(mailbox_bytes), TH_MBX_BYTES_MIN, 1ull << 40,
     "BYTES  shared memory for the mailbox, the oldest goes first"},
    {"jwt-secret-file", F_PATH, OFF(jwt_secret_file), 0, 0,
     "PATH  HS256 secret (or TETHER_JWT_SECRET)"},
    {"log-level", F_LEVEL, OFF(log_level), 0, 0, "LEVEL  error, warn, info, debug"},
    {"log-format", F_FORMAT, OFF(log_format), 0, 0, "FMT  text or json"},
    {"log-file", F_PATH, OFF(log_file), 0, 0,
     "PATH  append logs there instead of stderr; SIGHUP reopens"},
    {"tls-cert", F_PATH, OFF(tls_cert), 0, 0,
     "FILE  PEM certificate chain: serve wss:// on --listen; SIGHUP reloads"},
    {"tls-key", F_PATH, OFF(tls_key), 0, 0, "FILE  PEM private key of --tls-cert"},
    {"tls-only", F_BOOL, OFF(tls_only), 0, 0,
     "refuse plain ws:// upgrades (no value; TETHER_TLS_ONLY=1)"},
    {"api-tls-cert", F_PATH, OFF(api_tls_cert), 0, 0,
     "FILE  PEM certificate chain: serve the backend API as https:// on --api-listen;\n"
     "                             SIGHUP reloads"},
    {"api-tls-key", F_PATH, OFF(api_tls_key), 0, 0, "FILE  PEM private key of --api-tls-cert"},
    /* Security flags (README "Security"). */
    {"api-key-file", F_PATH, OFF(api_key_file), 0, 0,
     "PATH  backend API keys, one a line; /v1/... then needs Authorization: Bearer KEY;\n"
     "                             without it --api-listen must be a loopback address"},
    {"jwt-key-file", F_PATH, OFF(jwt_key_file), 0, 0,
     "PATH  PEM public keys (RSA: RS256, P-256: ES256, Ed25519: EdDSA); SIGHUP re-reads"},
    {"jwt-jwks-file", F_PATH, OFF(jwt_jwks_file), 0, 0,
     "PATH  JWKS document (keys chosen by kid); SIGHUP re-reads"},
    {"jwt-audience", F_TEXT, OFF(jwt_audience), 0, 0, "AUD  tokens must carry this aud"},
    {"jwt-issuer", F_TEXT, OFF(jwt_issuer), 0, 0, "ISS  tokens must carry this iss"},
    {"allowed-origins", F_TEXT, OFF(allowed_origins), 0, 0,
     "LIST  comma-separated origins (https://app.example.com, *.example.com);\n"
     "                             other browser Origins get 403 (none: all pass)"},
    {"max-msgs-per-sec", F_U32, OFF(max_msgs_per_sec), 0, 1000000,
     "N  client frames a second per connection, burst 2 s; over: close 1008; 0 = off"},
    {"max-bytes-per-sec", F_U32, OFF(max_bytes_per_sec), 0, 1u << 30,
     "N  client bytes a second per connection, burst 2 s or --max-message;\n"
     "                             over: close 1008; 0 = off"},
    /* Cluster (README "Run several nodes"): the notifier routes over NATS. */
    {"nats", F_TEXT, OFF(nats_urls), 0, 0,
     "URL[,URL...]  NATS servers: route notifications to users on other nodes;\n"
     "                             none: this group is one node and needs no broker"},
    {"node", F_TEXT, OFF(node), 0, 0, "NAME  this node's name in replies and logs (host name)"},
    {"nats-replicas", F_U32, OFF(nats_replicas), 1, 5,
     "N  copies of the JetStream mailbox (with --nats and --mailbox-ttl > 0)"},
};
#define NFLAGS (sizeof(flags) / sizeof(flags[0]))

void th_config_defaults(struct th_config *c)
{
    memset(c, 0, sizeof(*c));
    snprintf(c->listen_host, sizeof(c->listen_host), "0.0.0.0");
    c->listen_port = 8080;
    snprintf(c->api_host, sizeof(c->api_host), "127.0.0.1");
    c->api_port = 8081;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    c->workers = ncpu < 1 ? 1 : ncpu > TH_MAX_WORKERS ? TH_MAX_WORKERS : (uint32_t)ncpu;
    snprintf(c->shm_name, sizeof(c->shm_name), "/tether");
    c->slots = 65536;
    c->stale_after_s = 300;
    c->sweep_every_s = 60;
    c->max_conns_per_user = 8;
    c->max_message = 65536;
    c->send_queue_cap = 1048576;
    c->drain_timeout_s = 10;
    c->handoff_timeout_ms = 200;
    c->hung_after_s = 3;
    c->mailbox_ttl_s = 120;
    c->mailbox_per_user = 64;
    c->mailbox_bytes = 64ull << 20;
    c->max_msgs_per_sec = 50;
    c->nats_replicas = 1;
    c->max_bytes_per_sec = 1048576;
    c->log_level = TH_LOG_INFO;
    c->log_format = TH_LOG_TEXT;
    if (gethostname(c->node, sizeof(c->node) - 1) < 0 || !c->node[0])
        snprintf(c->node, sizeof(c->node), "node");
}

/* " (default)" of flag f, read from the defaults d; "" when it has none. */
static void default_text(const struct th_config *d, const struct flag *f, char *buf, size_t cap)
{
    const char *base = (const char *)d;
    switch (f->kind) {
    case F_HOSTPORT_LISTEN:
        snprintf(buf, cap, " (%s:%u)", d->listen_host, d->listen_port);
        return;
    case F_HOSTPORT_API:
        snprintf(buf, cap, " (%s:%u)", d->api_host, d->api_port);
        return;
    case F_U32:
        if (f->off == OFF(workers))
            snprintf(buf, cap, " (number of CPUs)"); /* the default depends on the machine */
        else
            snprintf(buf, cap, " (%u)", *(const uint32_t *)(base + f->off));
        return;
    case F_U64:
        snprintf(buf, cap, " (%llu)", (unsigned long long)*(const uint64_t *)(base + f->off));
        return;
    case F_SHM:
        snprintf(buf, cap, " (%s)", d->shm_name);
        return;
    case F_LEVEL:
        snprintf(buf, cap, " (%s)", th_log_level_name(d->log_level));
        return;
    case F_FORMAT:
        snprintf(buf, cap, " (%s)", th_log_format_name(d->log_format));
        return;
    case F_PATH:
    case F_BOOL:
    case F_TEXT:
        break;
    }
    buf[0] = '\0';
}

void th_config_usage(FILE *out)
{
    struct th_config d;
    th_config_defaults(&d);
    fprintf(out,
            "usage: tether run [flags]\n\n"
            "Runs the tether process group: supervisor, socket workers, janitor, notifier.\n"
            "Every flag can also be set as TETHER_<NAME> in the environment\n"
            "(e.g. TETHER_STALE_AFTER=%u); the command line wins.\n\n",
            d.stale_after_s);
    for (size_t i = 0; i < NFLAGS; i++) {
        char def[TH_ADDR_MAX + 16];
        default_text(&d, &flags[i], def, sizeof(def));
        fprintf(out, "  --%-22s %s%s\n", flags[i].name, flags[i].help, def);
    }
    fprintf(out, "  --%-22s %s\n", "help", "show this text");
    fprintf(out,
            "\nEach worker holds at most %u file descriptors, so connection capacity is about\n"
            "%u x --workers (and at most --slots).\n",
            TH_WORKER_FDS, TH_WORKER_MAX_CONNS);
}

int th_parse_hostport(const char *s, char *host, size_t hostcap, uint16_t *port)
{
    const char *colon = strrchr(s, ':');
    if (!colon)
        return -EINVAL;
    size_t hl = (size_t)(colon - s);
    const char *h = s;
    if (hl >= 2 && s[0] == '[' && s[hl - 1] == ']') { /* [::1]:8080 */
        h++;
        hl -= 2;
    }
    if (hl >= hostcap)
        return -EINVAL;
    char *end;
    errno = 0;
    unsigned long p = strtoul(colon + 1, &end, 10);
    if (errno || *end || end == colon + 1 || p > 65535)
        return -EINVAL;
    if (hl == 0)
        snprintf(host, hostcap, "0.0.0.0");
    else
        snprintf(host, hostcap, "%.*s", (int)hl, h);
    *port = (uint16_t)p;
    return 0;
}

static int parse_u64(const char *v, uint64_t min, uint64_t max, uint64_t *out)
{
    char *end;
    if (!*v || *v == '-' || isspace((unsigned char)*v))
        return -EINVAL;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (errno || *end || x < min || x > max)
        return -EINVAL;
    *out = x;
    return 0;
}

static int apply(struct th_config *c, const struct flag *f, const char *v, const char *from,
                 char *err, size_t errlen)
{
    char *base = (char *)c;
    uint64_t x;
    switch (f->kind) {
    case F_HOSTPORT_LISTEN:
        if (th_parse_hostport(v, c->listen_host, sizeof(c->listen_host), &c->listen_port) == 0)
            return 0;
        break;
    case F_HOSTPORT_API:
        if (th_parse_hostport(v, c->api_host, sizeof(c->api_host), &c->api_port) == 0)
            return 0;
        break;
    case F_U32:
    case F_U64:
        if (parse_u64(v, f->min, f->max, &x) < 0) {
            snprintf(err, errlen,
                     "%s: invalid value '%s' (expected a whole number from %llu to %llu)", from, v,
                     (unsigned long long)f->min, (unsigned long long)f->max);
            return -EINVAL;
        }
        if (f->kind == F_U32)
            *(uint32_t *)(base + f->off) = (uint32_t)x; /* max <= UINT32_MAX in the table */
        else
            *(uint64_t *)(base + f->off) = x;
        return 0;
    case F_SHM: {
        size_t n = strlen(v);
        int bad = n == 0 || n + 2 > TH_SHM_NAME_MAX;
        for (const char *p = v + (v[0] == '/'); !bad && *p; p++)
            bad = !(isalnum((unsigned char)*p) || *p == '-' || *p == '_' || *p == '.');
        if (!bad) {
            snprintf(c->shm_name, sizeof(c->shm_name), "%s%s", v[0] == '/' ? "" : "/", v);
            return 0;
        }
        snprintf(err, errlen,
                 "%s: invalid segment name '%s' (letters, digits, '-', '_', '.'; at most %d)", from,
                 v, TH_SHM_NAME_MAX - 2);
        return -EINVAL;
    }
    case F_PATH:
    case F_TEXT:
        if (*v && strlen(v) < TH_PATH_MAX) {
            snprintf(base + f->off, TH_PATH_MAX, "%s", v);
            return 0;
        }
        break;
    case F_LEVEL:
        for (int i = 0; th_log_level_name(i); i++)
            if (strcmp(v, th_log_level_name(i)) == 0) {
                c->log_level = i;
                return 0;
            }
        break;
    case F_BOOL:
        if (!strcmp(v, "1") || !strcmp(v, "true") || !strcmp(v, "yes") || !strcmp(v, "0") ||
            !strcmp(v, "false") || !strcmp(v, "no")) {
            *(uint32_t *)(base + f->off) = v[0] == '1' || v[0] == 't' || v[0] == 'y';
            return 0;
        }
        break;
    case F_FORMAT:
        for (int i = 0; th_log_format_name(i); i++)
            if (strcmp(v, th_log_format_name(i)) == 0) {
                c->log_format = i;
                return 0;
            }
        break;
    }
    snprintf(err, errlen, "%s: invalid value '%s'", from, v);
    return -EINVAL;
}

static const struct flag *find_flag(const char *name, size_t len)
{
    for (size_t i = 0; i < NFLAGS; i++)
        if (strlen(flags[i].name) == len && strncmp(flags[i].name, name, len) == 0)
            return &flags[i];
    return NULL;
}

static int load_secret(struct th_config *c, char *err, size_t errlen)
{
    if (c->jwt_secret_file[0]) {
        int fd = open(c->jwt_secret_file, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            snprintf(err, errlen, "--jwt-secret-file %s: %s", c->jwt_secret_file, strerror(errno));
            return -EINVAL;
        }
        ssize_t n = read(fd, c->jwt_secret, sizeof(c->jwt_secret));
        close(fd);
        if (n < 0) {
            snprintf(err, errlen, "--jwt-secret-file %s: %s", c->jwt_secret_file, strerror(errno));
            return -EINVAL;
        }
        /* A trailing newline from `echo secret > file` is not part of the secret. */
        while (n > 0 && (c->jwt_secret[n - 1] == '\n' || c->jwt_secret[n - 1] == '\r'))
            n--;
        if (n == 0 || (size_t)n >= sizeof(c->jwt_secret)) {
            snprintf(err, errlen, "--jwt-secret-file %s: secret must be 1 to %zu bytes",
                     c->jwt_secret_file, sizeof(c->jwt_secret) - 1);
            return -EINVAL;
        }
        c->jwt_secret_len = (size_t)n;
        return 0;
    }
    const char *env = getenv("TETHER_JWT_SECRET");
    if (env && *env) {
        size_t n = strlen(env);
        if (n >= sizeof(c->jwt_secret)) {
            snprintf(err, errlen, "TETHER_JWT_SECRET: longer than %zu bytes",
                     sizeof(c->jwt_secret) - 1);
            return -EINVAL;
        }
        memcpy(c->jwt_secret, env, n);
        c->jwt_secret_len = n;
    }
    return 0;
}

/* 127.0.0.0/8, ::1 and "localhost": addresses only this machine reaches. */
static int is_loopback(const char *host)
{
    struct in_addr a4;
    struct in6_addr a6;
    if (strcmp(host, "localhost") == 0)
        return 1;
    if (inet_pton(AF_INET, host, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    return inet_pton(AF_INET6, host, &a6) == 1 && IN6_IS_ADDR_LOOPBACK(&a6);
}

/* The security flags' cross-checks (README "Security"). */
static int check_security(struct th_config *c, char *err, size_t errlen)
{
    if (c->jwt_secret_len == 0 && !c->jwt_key_file[0] && !c->jwt_jwks_file[0]) {
        snprintf(err, errlen,
                 "no JWT key: pass --jwt-secret-file PATH (or set TETHER_JWT_SECRET), "
                 "--jwt-key-file PATH or --jwt-jwks-file PATH");
        return -EINVAL;
    }
    if (!c->api_key_file[0] && !is_loopback(c->api_host)) {
        snprintf(err, errlen,
                 "--api-listen %s:%u is not a loopback address: anyone reaching it could notify "
                 "any user; pass --api-key-file PATH or listen on 127.0.0.1",
                 c->api_host, c->api_port);
        return -EINVAL;
    }
    return 0;
}

/*
 * One --nats URL: [nats://|tls://][user[:pass]@]host[:port], host without
 * spaces, port 1..65535. libnats would only fail later, in the notifier,
 * after the group started; a typo should stop `run` at once.
 */
static int nats_url_ok(const char *u, size_t n)
{
    static const char *const schemes[] = {"nats://", "tls://"};
    for (size_t k = 0; k < 2; k++)
        if (n > strlen(schemes[k]) && strncmp(u, schemes[k], strlen(schemes[k])) == 0) {
            u += strlen(schemes[k]);
            n -= strlen(schemes[k]);
            break;
        }
    const char *at = memchr(u, '@', n);
    if (at) {
        n -= (size_t)(at + 1 - u);
        u = at + 1;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)u[i];
        if (ch <= ' ' || ch == '/' || ch == '@' || ch >= 0x7f)
            return 0;
    }
    const char *host_end = u + n, *port = NULL;
    if (n && u[0] == '[') { /* an IPv6 literal */
        const char *rb = memchr(u, ']', n);
        if (!rb || rb == u + 1 || (rb + 1 < u + n && rb[1] != ':'))
            return 0;
        host_end = rb + 1;
        port = rb + 1 < u + n ? rb + 2 : NULL;
    } else {
        const char *colon = memchr(u, ':', n);
        if (colon && memchr(colon + 1, ':', (size_t)(u + n - colon - 1)))
            return 0; /* a bare IPv6 address needs brackets */
        if (colon) {
            host_end = colon;
            port = colon + 1;
        }
    }
    if (host_end == u)
        return 0;
    if (!port)
        return 1; /* libnats uses 4222 */
    size_t pl = (size_t)(u + n - port);
    unsigned long v = 0;
    if (pl == 0 || pl > 5)
        return 0;
    for (size_t i = 0; i < pl; i++) {
        if (port[i] < '0' || port[i] > '9')
            return 0;
        v = v * 10 + (unsigned long)(port[i] - '0');
    }
    return v >= 1 && v <= 65535;
}

/* The cluster flags' checks (README "Run several nodes"). */
static int check_cluster(struct th_config *c, char *err, size_t errlen)
{
    for (const char *p = c->nats_urls; c->nats_urls[0];) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        while (n && *p == ' ') /* spaces around a URL are fine (notifier/nats_opts.c) */
            p++, n--;
        while (n && p[n - 1] == ' ')
            n--;
        if (!nats_url_ok(p, n)) {
            snprintf(err, errlen,
                     "--nats: '%.*s' is not a NATS URL (nats://HOST:PORT, tls://HOST:PORT or "
                     "HOST:PORT, comma-separated)",
                     (int)(n > 200 ? 200 : n), p);
            return -EINVAL;
        }
        if (!comma)
            break;
        p = comma + 1;
    }
    size_t nl = strlen(c->node);
    int bad = nl == 0 || nl > TH_NODE_MAX;
    for (size_t i = 0; i < nl; i++)
        bad |= (unsigned char)c->node[i] <= ' ' || (unsigned char)c->node[i] >= 0x7f;
    if (bad) {
        snprintf(err, errlen, "--node: must be 1 to %u printable characters without spaces",
                 TH_NODE_MAX);
        return -EINVAL;
    }
    return 0;
}

static int check(struct th_config *c, char *err, size_t errlen)
{
    if (check_cluster(c, err, errlen) < 0)
        return -EINVAL;
    if (check_security(c, err, errlen) < 0)
        return -EINVAL;
    if (!c->tls_cert[0] != !c->tls_key[0]) {
        snprintf(err, errlen, "%s needs %s too", c->tls_cert[0] ? "--tls-cert" : "--tls-key",
                 c->tls_cert[0] ? "--tls-key" : "--tls-cert");
        return -EINVAL;
    }
    if (!c->api_tls_cert[0] != !c->api_tls_key[0]) {
        snprintf(err, errlen, "%s needs %s too",
                 c->api_tls_cert[0] ? "--api-tls-cert" : "--api-tls-key",
                 c->api_tls_cert[0] ? "--api-tls-key" : "--api-tls-cert");
        return -EINVAL;
    }
    if (c->tls_only && !c->tls_cert[0]) {
        snprintf(err, errlen, "--tls-only needs --tls-cert and --tls-key");
        return -EINVAL;
    }
    if (c->workers > c->slots) {
        snprintf(err, errlen, "--workers %u is more than --slots %u", c->workers, c->slots);
        return -EINVAL;
    }
    struct th_mbx_params mp = {c->mailbox_bytes, c->mailbox_per_user, 0};
    if (th_mbx_layout(&mp, NULL) == 0) {
        snprintf(err, errlen, "--mailbox-bytes %llu is too small for --mailbox-per-user %u",
                 (unsigned long long)c->mailbox_bytes, c->mailbox_per_user);
        return -EINVAL;
    }
    return 0;
}

int th_config_parse(struct th_config *c, int argc, char **argv, char *err, size_t errlen)
{
    /* --help answers even when the environment holds a bad value. */
    for (int i = 0; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
            return TH_CONFIG_HELP;
    for (size_t i = 0; i < NFLAGS; i++) {
        char env[64] = "TETHER_";
        size_t o = strlen(env);
        for (const char *p = flags[i].name; *p && o + 1 < sizeof(env); p++)
            env[o++] = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
        env[o] = '\0';
        const char *v = getenv(env);
        if (v && apply(c, &flags[i], v, env, err, errlen) < 0)
            return TH_CONFIG_ERROR;
    }
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0) {
            snprintf(err, errlen, "unexpected argument '%s'", a);
            return TH_CONFIG_ERROR;
        }
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        const struct flag *f = find_flag(name, nlen);
        if (!f) {
            snprintf(err, errlen, "unknown flag '--%.*s' (see --help)", (int)nlen, name);
            return TH_CONFIG_ERROR;
        }
        const char *v = eq ? eq + 1 : NULL;
        if (!v && f->kind == F_BOOL)
            v = "1"; /* a bare switch */
        if (!v) {
            if (i + 1 >= argc) {
                snprintf(err, errlen, "--%s: missing value", f->name);
                return TH_CONFIG_ERROR;
            }
            v = argv[++i];
        }
        char from[40];
        snprintf(from, sizeof(from), "--%s", f->name);
        if (apply(c, f, v, from, err, errlen) < 0)
            return TH_CONFIG_ERROR;
    }
    if (load_secret(c, err, errlen) < 0 || check(c, err, errlen) < 0)
        return TH_CONFIG_ERROR;
    return TH_CONFIG_OK;
}
