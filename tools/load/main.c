/*
 * tether-load: the load generator. The parent parses flags, forks load
 * processes (a process may hold at most 20,000 fds here, so one per
 * --per-proc connections, and one per core when pinging at saturation),
 * gathers their progress and final reports over one pipe each, merges the
 * histograms bucket by bucket and prints one JSON summary on stdout.
 * Exit 0 only when every connection opened, none was dropped and no
 * notification was lost; 2 for bad flags.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "shm/rt/stage.h"
#include "tools/load/load.h"

#define MAX_PROCS 256 /* 1M clients at 15,000 a process need 67 */

struct kid {
    pid_t pid;
    int fd;
    int final;
    struct load_rec last;
    struct lhist rtt, delivery;
};

static struct kid g_kids[MAX_PROCS];
static volatile sig_atomic_t g_parent_stop;
static void on_parent_stop(int sig)
{
    (void)sig;
    g_parent_stop = 1;
}

static void usage(FILE *f)
{
    fprintf(
        f, "usage: tether-load --url ws://HOST:PORT/ws --secret-file PATH --connections N\n"
           "                   --duration S [--ping-interval S] [--api http[s]://HOST:PORT] "
           "[--notify-rate R]\n"
           "Opens N authenticated WebSocket clients (one user each), pings them, posts\n"
           "notifications through the backend API and prints one JSON summary on stdout.\n"
           "  --url URL            client endpoint (ws:// or wss://, IPv4 host or name)\n"
           "  --ca FILE            wss:// and https://: verify the server's certificate\n"
           "                       against FILE (default: no verification)\n"
           "  --tls-resume         wss://: offer the session of each process's first client\n"
           "                       on every later handshake (resumed handshakes); the others\n"
           "                       wait until it is up\n"
           "  --api URL            backend API base, http:// or https:// (needed with\n"
           "                       --notify-rate)\n"
           "  --secret-file PATH   HS256 secret (trailing newline ignored)\n"
           "  --connections N      clients to open\n"
           "  --ping-interval S    seconds between pings per client, spread evenly;\n"
           "                       0 = saturate: one ping outstanding per client, as fast as "
           "possible\n"
           "  --saturate           same as --ping-interval 0\n"
           "  --idle               send no pings (hold connections only)\n"
           "  --duration S         seconds of load after all clients connected\n"
           "  --settle S           first stay idle S seconds after connecting (memory at rest\n"
           "                       can be measured; not with --saturate)\n"
           "  --notify-rate R      notifications per second to random connected users (default 0)\n"
           "  --connect-rate R     new connections per second (default 5000; 0 = unlimited)\n"
           "  --procs P            load processes (default: one per --per-proc clients,\n"
           "                       at least one per CPU with --saturate)\n"
           "  --per-proc N         clients per process (default 15000; fds are capped at 20000)\n"
           "  --api-conns K        keep-alive API connections per process (default 4)\n"
           "  --grace S            wait for late pongs and notifications (default 3)\n"
           "  --no-spread          do not spread clients over 127.0.0.x sources (5,000 each)\n"
           "  --user-prefix P      user ids are P-<n> (default load<pid>)\n"
           "  --ready-file PATH    written once every client has connected (for scripts)\n"
           "  --resume             every client reconnects on every close, resuming with\n"
           "                       ?since=<last seq>&epoch=<epoch>; notifications get numbered\n"
           "                       ids and go to any user (connected or not); a notify without\n"
           "                       an answer, or 503, is re-sent with the same id; the summary\n"
           "                       adds resumes, recovered_false, lost, dup, reordered\n"
           "  --drop-rate R        clients per second cut without a close (RST); needs --resume\n"
           "  --drop-max S         a cut client reconnects after 0..S seconds (default 3)\n"
           "  --help               this text\n"
           "lost counts notifications the API answered 200 (--resume: 200/202) that never\n"
           "arrived; a request whose API connection failed before an answer is sent again\n"
           "on a new connection (api_retries) and counts as api_failed only if it never\n"
           "got one; tether's own answers are in notify_status.\n"
           "undelivered counts every answered notification that never arrived (a 503 or\n"
           "404 among them).\n"
           "Exit status: 0 all clients connected, none dropped, every notification answered\n"
           "and received once (--resume: none lost, duplicated or out of order); 1\n"
           "otherwise; 2 bad flags.\n");
}

static _Noreturn void bad(const char *fmt, const char *arg)
{
    fprintf(stderr, "tether-load: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, " (see --help)\n");
    exit(2);
}

static double num_arg(const char *flag, const char *v, double lo, double hi)
{
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    if (errno || end == v || *end || d < lo || d > hi) {
        fprintf(stderr, "tether-load: bad value for %s: '%s' (see --help)\n", flag, v);
        exit(2);
    }
    return d;
}

/* "scheme://host:port/path" into an IPv4 address, Host header and path. */
static void parse_url(const char *flag, const char *url, const char *scheme, struct sockaddr_in *sa,
                      char *host, size_t hcap, char *path, size_t pcap)
{
    size_t sl = strlen(scheme);
    if (strncmp(url, scheme, sl) != 0)
        bad("bad URL (want %s...)", scheme);
    const char *h = url + sl, *slash = strchr(h, '/');
    size_t hl = slash ? (size_t)(slash - h) : strlen(h);
    if (hl == 0 || hl >= hcap)
        bad("bad host in URL '%s'", url);
    memcpy(host, h, hl);
    host[hl] = 0;
    snprintf(path, pcap, "%s", slash ? slash : "/");
    char name[128];
    snprintf(name, sizeof name, "%s", host);
    char *colon = strrchr(name, ':');
    const char *port = colon ? colon + 1 : scheme[sl - 4] == 's' ? "443" : "80"; /* wss, https */
    if (colon)
        *colon = 0;
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *res;
    if (getaddrinfo(name, port, &hints, &res) != 0)
        bad("cannot resolve URL '%s'", url);
    memcpy(sa, res->ai_addr, sizeof *sa);
    freeaddrinfo(res);
    (void)flag;
}

static void read_secret(struct load_opts *o, const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        bad("--secret-file: cannot open '%s'", path);
    ssize_t n = read(fd, o->secret, sizeof o->secret);
    close(fd);
    while (n > 0 && (o->secret[n - 1] == '\n' || o->secret[n - 1] == '\r'))
        n--;
    if (n <= 0 || (size_t)n >= sizeof o->secret)
        bad("--secret-file: '%s' is empty or too long", path);
    o->secret_len = (size_t)n;
}

enum {
    F_URL = 256,
    F_API,
    F_SECRET,
    F_CONNS,
    F_PING,
    F_SAT,
    F_IDLE,
    F_DUR,
    F_NRATE,
    F_CRATE,
    F_PROCS,
    F_PERPROC,
    F_APICONNS,
    F_GRACE,
    F_NOSPREAD,
    F_PREFIX,
    F_READY,
    F_RESUME,
    F_DROP,
    F_DROPMAX,
    F_CA,
    F_TLSRESUME,
    F_SETTLE,
    F_HELP
};

static const struct option g_longopts[] = {{"url", 1, 0, F_URL},
                                           {"api", 1, 0, F_API},
                                           {"secret-file", 1, 0, F_SECRET},
                                           {"connections", 1, 0, F_CONNS},
                                           {"ping-interval", 1, 0, F_PING},
                                           {"saturate", 0, 0, F_SAT},
                                           {"idle", 0, 0, F_IDLE},
                                           {"duration", 1, 0, F_DUR},
                                           {"notify-rate", 1, 0, F_NRATE},
                                           {"connect-rate", 1, 0, F_CRATE},
                                           {"procs", 1, 0, F_PROCS},
                                           {"per-proc", 1, 0, F_PERPROC},
                                           {"api-conns", 1, 0, F_APICONNS},
                                           {"grace", 1, 0, F_GRACE},
                                           {"no-spread", 0, 0, F_NOSPREAD},
                                           {"user-prefix", 1, 0, F_PREFIX},
                                           {"ready-file", 1, 0, F_READY},
                                           {"resume", 0, 0, F_RESUME},
                                           {"drop-rate", 1, 0, F_DROP},
                                           {"drop-max", 1, 0, F_DROPMAX},
                                           {"ca", 1, 0, F_CA},
                                           {"tls-resume", 0, 0, F_TLSRESUME},
                                           {"settle", 1, 0, F_SETTLE},
                                           {"help", 0, 0, F_HELP},
                                           {0, 0, 0, 0}};

static void apply_flag(struct load_opts *o, int f, const char *v, const char **url,
                       const char **api, const char **secret, long *per_proc, int *have)
{
    switch (f) {
    case F_URL:
        *url = v;
        break;
    case F_API:
        *api = v;
        break;
    case F_SECRET:
        *secret = v;
        break;
    case F_CONNS:
        o->connections = (long)num_arg("--connections", v, 1, 2000000);
        *have |= 1;
        break;
    case F_PING:
        o->ping_interval = num_arg("--ping-interval", v, 0, 86400);
        *have |= 2;
        break;
    case F_SAT:
        o->ping_interval = 0;
        *have |= 2;
        break;
    case F_IDLE:
        o->idle = 1;
        *have |= 2;
        break;
    case F_DUR:
        o->duration = num_arg("--duration", v, 0, 86400 * 7);
        *have |= 4;
        break;
    case F_NRATE:
        o->notify_rate = num_arg("--notify-rate", v, 0, 10000000);
        break;
    case F_CRATE:
        o->connect_rate = num_arg("--connect-rate", v, 0, 10000000);
        break;
    case F_PROCS:
        o->procs = (int)num_arg("--procs", v, 1, MAX_PROCS);
        break;
    case F_PERPROC:
        *per_proc = (long)num_arg("--per-proc", v, 1, 19000);
        break;
    case F_APICONNS:
        o->api_conns = (int)num_arg("--api-conns", v, 1, 256);
        break;
    case F_GRACE:
        o->grace = num_arg("--grace", v, 0, 3600);
        break;
    case F_NOSPREAD:
        o->spread_sources = 0;
        break;
    case F_PREFIX:
        if (!*v || strlen(v) >= sizeof o->user_prefix || strpbrk(v, "\"\\ "))
            bad("bad --user-prefix '%s'", v);
        snprintf(o->user_prefix, sizeof o->user_prefix, "%s", v);
        break;
    case F_READY:
        snprintf(o->ready_file, sizeof o->ready_file, "%s", v);
        break;
    case F_RESUME:
        o->resume = 1;
        break;
    case F_DROP:
        o->drop_rate = num_arg("--drop-rate", v, 0, 1000000);
        break;
    case F_DROPMAX:
        o->drop_max_s = num_arg("--drop-max", v, 0, 3600);
        break;
    case F_CA:
        if (strlen(v) >= sizeof o->tls_ca)
            bad("%s", "--ca: path too long");
        snprintf(o->tls_ca, sizeof o->tls_ca, "%s", v);
        break;
    case F_TLSRESUME:
        o->tls_resume = 1;
        break;
    case F_SETTLE:
        o->settle = num_arg("--settle", v, 0, 86400);
        break;
    case F_HELP:
        usage(stdout);
        exit(0);
    default:
        exit(2);
    }
}

static void parse_flags(int argc, char **argv, struct load_opts *o)
{
    const char *url = NULL, *api = NULL, *secret = NULL;
    long per_proc = 15000;
    int have = 0, f;
    o->connect_rate = 5000;
    o->api_conns = 4;
    o->grace = 3;
    o->spread_sources = 1;
    o->drop_max_s = 3;
    snprintf(o->user_prefix, sizeof o->user_prefix, "load%d", (int)getpid());
    opterr = 0;
    while ((f = getopt_long(argc, argv, "", g_longopts, NULL)) != -1) {
        if (f == '?')
            bad("unknown or incomplete flag '%s'", argv[optind - 1]);
        apply_flag(o, f, optarg, &url, &api, &secret, &per_proc, &have);
    }
    if (optind < argc)
        bad("unexpected argument '%s'", argv[optind]);
    if (!url || !secret || !(have & 1) || !(have & 4))
        bad("%s", "--url, --secret-file, --connections and --duration are required");
    if (!(have & 2))
        bad("%s", "give --ping-interval S (0 = saturate) or --idle");
    if (o->notify_rate > 0 && !api)
        bad("%s", "--notify-rate needs --api");
    if (o->settle > 0 && !o->idle && o->ping_interval <= 0)
        bad("%s", "--settle does not go with --saturate");
    if (o->drop_rate > 0 && !o->resume)
        bad("%s", "--drop-rate needs --resume");
    char path[256];
    o->tls = strncmp(url, "wss://", 6) == 0;
    o->api_tls = api && strncmp(api, "https://", 8) == 0;
    if (o->tls_resume && !o->tls)
        bad("%s", "--tls-resume needs a wss:// --url");
    if (o->tls_ca[0] && !o->tls && !o->api_tls)
        bad("%s", "--ca needs a wss:// --url or an https:// --api");
    parse_url("--url", url, o->tls ? "wss://" : "ws://", &o->ws_addr, o->ws_host, sizeof o->ws_host,
              o->ws_path, sizeof o->ws_path);
    if (api)
        parse_url("--api", api, o->api_tls ? "https://" : "http://", &o->api_addr, o->api_host,
                  sizeof o->api_host, path, sizeof path);
    read_secret(o, secret);
    if ((ntohl(o->ws_addr.sin_addr.s_addr) >> 24) != 127)
        o->spread_sources = 0; /* 127.0.0.x sources only reach loopback */
    if (!o->procs) {
        long p = (o->connections + per_proc - 1) / per_proc;
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        if (!o->idle && o->ping_interval <= 0 && p < cpus)
            p = cpus < o->connections ? cpus : o->connections;
        o->procs = (int)(p < 1 ? 1 : p > MAX_PROCS ? MAX_PROCS : p);
    }
    if (o->spread_sources && o->connections > LOAD_MAX_SPREAD)
        bad("%s", "more clients than 127.0.0.2-254 give (5,000 each): use --no-spread or fewer");
    if (o->connections / o->procs > 19000)
        bad("%s", "more than 19,000 clients per process: raise --procs");
}

/*
 * The children hold their connections after their final report until every
 * child has sent its own (the parent then closes g_hold_w): the processes'
 * measurement windows are not aligned (each starts when its own clients are
 * connected), and one process closing its 15,000 clients at once costs the
 * server a burst of closes that would land inside the others' windows.
 */
static int g_hold_w = -1;

static int spawn(const struct load_opts *o)
{
    int hold[2];
    if (pipe2(hold, O_CLOEXEC) < 0)
        return -errno;
    g_hold_w = hold[1];
    for (int k = 0; k < o->procs; k++) {
        int p[2];
        if (pipe2(p, O_CLOEXEC) < 0)
            return -errno;
        long first = o->connections * k / o->procs, last = o->connections * (k + 1) / o->procs;
        pid_t pid = fork();
        if (pid < 0)
            return -errno;
        if (pid == 0) {
            close(p[0]);
            close(hold[1]);
            for (int j = 0; j < k; j++)
                close(g_kids[j].fd);
            int rc = load_child_run(o, k, first, last - first, p[1], hold[0]);
            th_stage_flush(); /* a -DTETHER_STAGES=ON build's records (shm/rt/stage.h) */
            _exit(rc);
        }
        close(p[1]);
        g_kids[k].pid = pid;
        g_kids[k].fd = p[0];
    }
    close(hold[0]);
    return 0;
}

static int read_full(int fd, void *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, (char *)buf + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        got += (size_t)r;
    }
    return 0;
}

/* Reads one record; returns 0, or -1 when the child is gone (EOF). */
static int read_record(struct kid *k)
{
    struct load_rec r;
    if (read_full(k->fd, &r, sizeof r) < 0)
        return -1;
    k->last = r;
    if (r.type == LR_FINAL) {
        if (read_full(k->fd, &k->rtt, sizeof k->rtt) < 0 ||
            read_full(k->fd, &k->delivery, sizeof k->delivery) < 0)
            return -1;
        k->final = 1;
    }
    return 0;
}

static void sum_counts(int n, struct load_counts *s)
{
    memset(s, 0, sizeof *s);
    s->connect_done = 1;
    for (int k = 0; k < n; k++) {
        const struct load_counts *c = &g_kids[k].last.c;
        uint64_t *d = (uint64_t *)s;
        const uint64_t *a = (const uint64_t *)c;
        /* every field up to connect_start_ns is a plain counter */
        for (size_t i = 0; i < offsetof(struct load_counts, connect_start_ns) / 8; i++)
            d[i] += a[i];
        s->connect_done &= c->connect_done;
    }
}

static void progress(const struct load_opts *o, int secs)
{
    struct load_counts s;
    static uint64_t prev_pongs;
    sum_counts(o->procs, &s);
    fprintf(
        stderr,
        "tether-load: %3ds conns %llu/%ld errors %llu dropped %llu pongs/s %llu notify %llu/%llu\n",
        secs, (unsigned long long)s.connections_ok, o->connections,
        (unsigned long long)s.connect_errors, (unsigned long long)s.disconnects,
        (unsigned long long)(s.pongs_received - prev_pongs),
        (unsigned long long)s.notifications_received, (unsigned long long)s.notifications_sent);
    prev_pongs = s.pongs_received;
}

static void write_ready(const char *path)
{
    FILE *f = fopen(path, "w");
    if (f) {
        fprintf(f, "ready\n");
        fclose(f);
    }
}

/* Gathers reports until every child sent its final one or went away. */
static void gather(const struct load_opts *o)
{
    int tty = isatty(2), ready = 0, secs = 0;
    uint64_t next = load_mono_ns() + 1000000000ull;
    for (;;) {
        struct pollfd p[MAX_PROCS];
        int open = 0;
        for (int k = 0; k < o->procs; k++) {
            p[k].fd = g_kids[k].final ? -1 : g_kids[k].fd;
            p[k].events = POLLIN;
            open += !g_kids[k].final && g_kids[k].fd >= 0;
        }
        if (!open)
            return;
        if (g_parent_stop == 1) {
            for (int k = 0; k < o->procs; k++)
                kill(g_kids[k].pid, SIGTERM);
            g_parent_stop = 2;
        }
        int r = poll(p, (nfds_t)o->procs, 200);
        for (int k = 0; r > 0 && k < o->procs; k++)
            if (p[k].fd >= 0 && (p[k].revents & (POLLIN | POLLHUP)) &&
                read_record(&g_kids[k]) < 0) {
                close(g_kids[k].fd);
                g_kids[k].fd = -1;
                g_kids[k].final = 1;
                g_kids[k].last.type = 0; /* died without a final report */
            }
        struct load_counts s;
        sum_counts(o->procs, &s);
        if (!ready && o->ready_file[0] && s.connect_done) {
            write_ready(o->ready_file);
            ready = 1;
        }
        if (load_mono_ns() >= next) {
            next += 1000000000ull;
            if (tty)
                progress(o, ++secs);
        }
    }
}

static double us(uint64_t ns)
{
    return (double)ns / 1000.0;
}

static void print_hist(const char *name, const struct lhist *h)
{
    printf("\"%s\":{\"p50\":%.1f,\"p99\":%.1f,\"p999\":%.1f,\"max\":%.1f,\"count\":%llu}", name,
           us(lh_quantile(h, 0.5)), us(lh_quantile(h, 0.99)), us(lh_quantile(h, 0.999)),
           us(h->max_ns), (unsigned long long)h->count);
}

/* Prints the summary; returns the exit status. */
static int summarize(const struct load_opts *o)
{
    static struct lhist rtt, del;
    struct load_counts s;
    sum_counts(o->procs, &s);
    uint64_t cstart = UINT64_MAX, cend = 0, last_note = 0;
    double dur = 0, pps = 0;
    int died = 0;
    for (int k = 0; k < o->procs; k++) {
        const struct load_counts *c = &g_kids[k].last.c;
        died += g_kids[k].last.type != LR_FINAL;
        lh_merge(&rtt, &g_kids[k].rtt);
        lh_merge(&del, &g_kids[k].delivery);
        if (c->connect_start_ns && c->connect_start_ns < cstart)
            cstart = c->connect_start_ns;
        if (c->connect_end_ns > cend)
            cend = c->connect_end_ns;
        if (c->last_note_ns > last_note)
            last_note = c->last_note_ns;
        double d =
            c->ping_end_ns > c->ping_start_ns ? (c->ping_end_ns - c->ping_start_ns) * 1e-9 : 0;
        if (d > dur)
            dur = d;
        if (d > 0)
            pps += (double)c->pongs_received / d;
    }
    double cs = cend > cstart && cstart != UINT64_MAX ? (cend - cstart) * 1e-9 : 0;
    /* Only what the API answered delivered (--resume: accepted) counts, each by its number. */
    uint64_t lost = o->resume ? s.lost_resume : s.lost_notes;
    if (died)
        s.connect_errors = (uint64_t)o->connections - s.connections_ok;
    printf(
        "{\"connections\":%ld,\"procs\":%d,\"connections_ok\":%llu,\"connect_errors\":%llu,"
        "\"disconnects\":%llu,\"connect_s\":%.3f,\"connect_rate_per_s\":%.0f,\"duration_s\":%.3f,",
        o->connections, o->procs, (unsigned long long)s.connections_ok,
        (unsigned long long)s.connect_errors, (unsigned long long)s.disconnects, cs,
        cs > 0 ? (double)s.connections_ok / cs : 0, dur);
    printf(
        "\"pings_sent\":%llu,\"pongs_received\":%llu,\"pings_skipped\":%llu,\"pings_per_s\":%.0f,",
        (unsigned long long)s.pings_sent, (unsigned long long)s.pongs_received,
        (unsigned long long)s.pings_skipped, pps);
    print_hist("pong_rtt_us", &rtt);
    printf(",\"notifications_sent\":%llu,\"notifications_received\":%llu,",
           (unsigned long long)s.notifications_sent, (unsigned long long)s.notifications_received);
    print_hist("delivery_us", &del);
    printf(
        ",\"lost\":%llu,\"notify_status\":{\"2xx\":%llu,\"404\":%llu,\"503\":%llu,\"other\":%llu,"
        "\"io_error\":%llu},\"api_retries\":%llu,\"api_failed\":%llu,\"api_reconnects\":%llu,"
        "\"other_messages\":%llu,\"procs_failed\":%d",
        (unsigned long long)lost, (unsigned long long)s.notify_2xx,
        (unsigned long long)s.notify_404, (unsigned long long)s.notify_503,
        (unsigned long long)s.notify_other, (unsigned long long)s.api_failed,
        (unsigned long long)s.api_retries, (unsigned long long)s.api_failed,
        (unsigned long long)s.api_reconnects, (unsigned long long)s.other_messages, died);
    if (!o->resume)
        printf(",\"dup\":%llu,\"undelivered\":%llu", (unsigned long long)s.dup,
               (unsigned long long)s.undelivered);
    if (o->resume) {
        printf(",\"resumes\":%llu,\"recovered_false\":%llu,\"dup\":%llu,\"reordered\":%llu,"
               "\"resume\":{\"reconnects\":%llu,\"drops\":%llu,\"replayed\":%llu,"
               "\"accepted\":%llu,\"retries\":%llu,\"dup_frames_dropped\":%llu,"
               "\"epoch_changes\":%llu,\"bad_frames\":%llu,\"last_note_s\":%.3f}",
               (unsigned long long)s.resumes, (unsigned long long)s.recovered_false,
               (unsigned long long)s.dup, (unsigned long long)s.reordered,
               (unsigned long long)s.reconnects, (unsigned long long)s.drops,
               (unsigned long long)s.replayed, (unsigned long long)s.notify_accepted,
               (unsigned long long)s.notify_retries, (unsigned long long)s.dup_frames,
               (unsigned long long)s.epoch_changes, (unsigned long long)s.bad_frames,
               last_note > cstart && cstart != UINT64_MAX ? (last_note - cstart) * 1e-9 : 0.0);
    }
    if (o->tls)
        printf(",\"tls\":true,\"tls_resumed\":%llu", (unsigned long long)s.tls_resumed);
    if (o->api_tls)
        printf(",\"api_tls\":true");
    printf("}\n");
    fflush(stdout);
    /* Every client connected and stayed; every notification answered and received once. */
    int ok = !died && s.connections_ok == (uint64_t)o->connections && s.disconnects == 0 &&
             lost == 0 && s.undelivered == 0 && s.api_failed == 0 && s.dup == 0;
    if (o->resume) /* closes are part of the run; every client must have come back at least once */
        ok = !died && s.connections_ok >= (uint64_t)o->connections && lost == 0 && s.dup == 0 &&
             s.reordered == 0 && s.bad_frames == 0;
    return ok ? 0 : 1;
}

int main(int argc, char **argv)
{
    static struct load_opts o;
    parse_flags(argc, argv, &o);
    signal(SIGPIPE, SIG_IGN);
    if (spawn(&o) < 0) {
        fprintf(stderr, "tether-load: fork: %s\n", strerror(errno));
        return 1;
    }
    struct sigaction sa = {.sa_handler = on_parent_stop};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    gather(&o);
    close(g_hold_w); /* every final report is in: the children close their clients and exit */
    for (int k = 0; k < o.procs; k++)
        waitpid(g_kids[k].pid, NULL, 0);
    return summarize(&o);
}
