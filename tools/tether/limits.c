/*
 * Kernel settings against the configured scale (tools/tether/limits.h). Each
 * check is one function that knows one setting: what the scale needs of it,
 * and the line an operator reads to fix it (the sysctl or limit by name, the
 * value it has, the value to set and the arithmetic behind it).
 */
#include "tools/tether/limits.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

struct out {
    th_limits_emit emit;
    void *ctx;
    int warnings;
};

static void say(struct out *o, int warning, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void say(struct out *o, int warning, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    o->warnings += warning;
    o->emit(o->ctx, warning, line);
}

static uint64_t div_up(uint64_t a, uint64_t b)
{
    return b ? (a + b - 1) / b : 0;
}

/* Connections one worker holds when the registry is full (never above its cap). */
static uint64_t per_worker(const struct th_scale *s)
{
    uint64_t n = div_up(s->slots, s->workers ? s->workers : 1);
    return n < s->worker_cap ? n : s->worker_cap;
}

/* --slots beyond what the workers can hold: the registry never fills. */
static void check_workers(struct out *o, const struct th_scale *s)
{
    uint64_t can = (uint64_t)s->workers * s->worker_cap;
    if (s->slots > can)
        say(o, 1,
            "--slots %u is more than --workers %u x %u connections per worker = %llu: the group "
            "holds at most %llu; use --workers %llu or more",
            s->slots, s->workers, s->worker_cap, (unsigned long long)can, (unsigned long long)can,
            (unsigned long long)div_up(s->slots, s->worker_cap));
}

/* RLIMIT_NOFILE (and fs.nr_open, its ceiling) per worker. */
static void check_fds(struct out *o, const struct th_sysenv *e, const struct th_scale *s)
{
    uint64_t conns = per_worker(s);
    uint64_t need = conns + (s->worker_fds - s->worker_cap); /* its own files besides clients */
    if (e->nofile_cur && e->nofile_cur < need)
        say(o, 1,
            "open-file limit (RLIMIT_NOFILE, ulimit -n) is %llu: each worker holds up to %llu "
            "connections (--slots %u / --workers %u, at most %u) and needs %llu descriptors; raise "
            "the hard limit (LimitNOFILE= in the unit, ulimit -Hn) to %llu",
            (unsigned long long)e->nofile_cur, (unsigned long long)conns, s->slots, s->workers,
            s->worker_cap, (unsigned long long)need, (unsigned long long)need);
    if (e->nr_open && e->nr_open < need)
        say(o, 1,
            "fs.nr_open is %llu, below the %llu descriptors a worker needs: sysctl -w "
            "fs.nr_open=%llu",
            (unsigned long long)e->nr_open, (unsigned long long)need, (unsigned long long)need);
}

/* fs.file-max counts every open file on the machine: one per client socket. */
static void check_file_max(struct out *o, const struct th_sysenv *e, const struct th_scale *s)
{
    uint64_t need = (uint64_t)s->slots + TH_GROUP_SPARE_FILES;
    if (e->file_max && e->file_max < need)
        say(o, 1,
            "fs.file-max is %llu, below --slots %u + %u of the group's own files: sysctl -w "
            "fs.file-max=%llu (twice --slots when the clients run on this machine too)",
            (unsigned long long)e->file_max, s->slots, TH_GROUP_SPARE_FILES,
            (unsigned long long)(2 * need));
}

/* The kernel silently caps each listen() backlog at net.core.somaxconn. */
static void check_backlog(struct out *o, const struct th_sysenv *e, const struct th_scale *s)
{
    if (e->somaxconn && e->somaxconn < s->backlog)
        say(o, 1,
            "net.core.somaxconn is %llu: each worker's listen backlog (%u) is cut to it, so a "
            "burst of reconnecting clients (after a restart) meets dropped SYNs and 1 s retries; "
            "sysctl -w net.core.somaxconn=%u",
            (unsigned long long)e->somaxconn, s->backlog, s->backlog);
}

/* Above tcp_mem's maximum the kernel drops data of every socket. */
static void check_tcp_mem(struct out *o, const struct th_sysenv *e, const struct th_scale *s)
{
    if (!e->tcp_mem_max || !e->page_size)
        return;
    uint64_t need = div_up((uint64_t)s->slots * TH_CONN_TCP_MEM_BYTES, e->page_size);
    if (e->tcp_mem_max < need)
        say(o, 1,
            "net.ipv4.tcp_mem allows at most %llu pages (%llu MiB) of socket buffers: one small "
            "frame queued on each of --slots %u connections at once (a notification to all) takes "
            "about %u bytes each, %llu pages; raise the third value of net.ipv4.tcp_mem to %llu",
            (unsigned long long)e->tcp_mem_max,
            (unsigned long long)(e->tcp_mem_max * e->page_size >> 20), s->slots,
            TH_CONN_TCP_MEM_BYTES, (unsigned long long)need, (unsigned long long)need);
}

/* A conntrack table that is tracking (count > 0) drops new connections once full. */
static void check_conntrack(struct out *o, const struct th_sysenv *e, const struct th_scale *s)
{
    if (e->conntrack_max && e->conntrack_count && e->conntrack_max < s->slots)
        say(o, 1,
            "net.netfilter.nf_conntrack_max is %llu and connections are being tracked: past it "
            "new connections are dropped (\"table full\"); sysctl -w "
            "net.netfilter.nf_conntrack_max=%llu, or exempt the port from tracking",
            (unsigned long long)e->conntrack_max,
            (unsigned long long)((uint64_t)s->slots + s->slots / 4));
}

/* Memory a full registry takes: the kernel's sockets, tether's state, the segment. */
static void check_memory(struct out *o, const struct th_sysenv *e, const struct th_scale *s)
{
    uint64_t need =
        (uint64_t)s->slots * (TH_CONN_KERNEL_BYTES + TH_CONN_USER_BYTES) + s->segment_bytes;
    if (e->mem_total && e->mem_total < need)
        say(o, 1,
            "a full registry needs about %.1f GiB (--slots %u x (%u kernel + %u user bytes per "
            "idle connection) + %.1f GiB of segments); this machine has %.1f GiB",
            (double)need / (1 << 30), s->slots, TH_CONN_KERNEL_BYTES, TH_CONN_USER_BYTES,
            (double)s->segment_bytes / (1 << 30), (double)e->mem_total / (1 << 30));
}

/*
 * Every segment received walks one chain of the TCP established hash, sized
 * at boot from memory (262,144 buckets on 24 GiB). Past about 2 sockets a
 * chain the walk is measurable: at 12 it was 8.9% of the workers' CPU, at 0.2
 * 1.3% (README "Sizing"). Wanted: a bucket per connection.
 */
static void check_ehash(struct out *o, const struct th_sysenv *e, const struct th_scale *s)
{
    if (!e->ehash || s->slots <= 2 * e->ehash)
        return;
    uint64_t want = 1;
    while (want < s->slots)
        want <<= 1;
    say(o, 1,
        "the TCP established hash has %llu buckets: --slots %u connections make chains of %.1f "
        "sockets, walked on every segment received; boot with thash_entries=%llu, or run the group "
        "in a network namespace created after sysctl -w net.ipv4.tcp_child_ehash_entries=%llu",
        (unsigned long long)e->ehash, s->slots, (double)s->slots / (double)e->ehash,
        (unsigned long long)want, (unsigned long long)want);
}

/* Not the server's limit (accepted sockets use no ephemeral port), but a load
 * generator on this host needs source addresses for it: a note, not a warning. */
static void note_ports(struct out *o, const struct th_sysenv *e, const struct th_scale *s)
{
    uint64_t range = e->port_hi >= e->port_lo && e->port_lo ? e->port_hi - e->port_lo + 1 : 0;
    if (range && s->slots > range)
        say(o, 0,
            "net.ipv4.ip_local_port_range %llu-%llu gives a client host %llu connections per "
            "source address to one port: clients on this machine (tether-load) need %llu "
            "127.0.0.x addresses for --slots %u",
            (unsigned long long)e->port_lo, (unsigned long long)e->port_hi,
            (unsigned long long)range, (unsigned long long)div_up(s->slots, range), s->slots);
}

int th_limits_check(const struct th_sysenv *env, const struct th_scale *scale, th_limits_emit emit,
                    void *ctx)
{
    struct out o = {.emit = emit, .ctx = ctx};
    check_workers(&o, scale);
    check_fds(&o, env, scale);
    check_file_max(&o, env, scale);
    check_backlog(&o, env, scale);
    check_tcp_mem(&o, env, scale);
    check_conntrack(&o, env, scale);
    check_memory(&o, env, scale);
    check_ehash(&o, env, scale);
    note_ports(&o, env, scale);
    return o.warnings;
}

/* Up to three unsigned numbers from a /proc file; returns how many were read. */
static int read_nums(const char *path, uint64_t *a, uint64_t *b, uint64_t *c)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return 0;
    unsigned long long x = 0, y = 0, z = 0;
    int n = fscanf(f, "%llu %llu %llu", &x, &y, &z);
    fclose(f);
    if (n >= 1 && a)
        *a = x;
    if (n >= 2 && b)
        *b = y;
    if (n >= 3 && c)
        *c = z;
    return n < 0 ? 0 : n;
}

static uint64_t meminfo_total(void)
{
    FILE *f = fopen("/proc/meminfo", "re");
    if (!f)
        return 0;
    char line[128];
    unsigned long long kb = 0;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "MemTotal: %llu kB", &kb) == 1)
            break;
    fclose(f);
    return (uint64_t)kb * 1024;
}

void th_sysenv_read(struct th_sysenv *e)
{
    memset(e, 0, sizeof(*e));
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        e->nofile_cur = rl.rlim_cur == RLIM_INFINITY ? UINT64_MAX : rl.rlim_cur;
        e->nofile_max = rl.rlim_max == RLIM_INFINITY ? UINT64_MAX : rl.rlim_max;
    }
    read_nums("/proc/sys/fs/nr_open", &e->nr_open, NULL, NULL);
    read_nums("/proc/sys/fs/file-max", &e->file_max, NULL, NULL);
    read_nums("/proc/sys/net/core/somaxconn", &e->somaxconn, NULL, NULL);
    read_nums("/proc/sys/net/ipv4/tcp_mem", NULL, NULL, &e->tcp_mem_max);
    read_nums("/proc/sys/net/ipv4/ip_local_port_range", &e->port_lo, &e->port_hi, NULL);
    read_nums("/proc/sys/net/netfilter/nf_conntrack_max", &e->conntrack_max, NULL, NULL);
    read_nums("/proc/sys/net/netfilter/nf_conntrack_count", &e->conntrack_count, NULL, NULL);
    /* Negative: this namespace shares the host's table (of that many buckets). */
    FILE *f = fopen("/proc/sys/net/ipv4/tcp_ehash_entries", "re");
    long long eh = 0;
    if (f) {
        if (fscanf(f, "%lld", &eh) != 1)
            eh = 0;
        fclose(f);
    }
    e->ehash = (uint64_t)(eh < 0 ? -eh : eh);
    long ps = sysconf(_SC_PAGESIZE);
    e->page_size = ps > 0 ? (uint64_t)ps : 4096;
    e->mem_total = meminfo_total();
}
