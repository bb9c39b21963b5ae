/*
 * Unit tests of the start-up kernel-settings check (tools/tether/limits.c):
 * the settings of the 2-core, 24 GiB machine tether is benchmarked on (in
 * tools/bench --million's network namespace, for the established hash) hold a
 * million slots over 53 workers without a warning, and each setting made
 * too low on its own yields exactly one warning that names it and the value
 * to set.
 */
#include "tools/tether/limits.h"
#include "shm/rt/config.h"

#include <criterion/criterion.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

struct seen {
    int warnings, notes;
    char last_warning[512], last_note[512];
};

static void collect(void *ctx, int warning, const char *line)
{
    struct seen *s = ctx;
    if (warning) {
        s->warnings++;
        snprintf(s->last_warning, sizeof(s->last_warning), "%s", line);
    } else {
        s->notes++;
        snprintf(s->last_note, sizeof(s->last_note), "%s", line);
    }
}

/* Debian 12 as tuned on the benchmark machine (only RLIMIT_NOFILE raised). */
static struct th_sysenv bench_box(void)
{
    return (struct th_sysenv){.nofile_cur = 20000,
                              .nofile_max = 20000,
                              .nr_open = 1048576,
                              .file_max = 2466126,
                              .somaxconn = 4096,
                              .tcp_mem_max = 575784,
                              .page_size = 4096,
                              .port_lo = 32768,
                              .port_hi = 60999,
                              .conntrack_max = 262144,
                              .conntrack_count = 0,
                              .mem_total = 24ull << 30,
                              .ehash = 2097152}; /* tools/bench --million's namespace */
}

static struct th_scale million(void)
{
    return (struct th_scale){.workers = 53,
                             .slots = 1u << 20,
                             .backlog = 4096,
                             .worker_cap = TH_WORKER_MAX_CONNS,
                             .worker_fds = TH_WORKER_FDS,
                             .segment_bytes = 220ull << 20};
}

static struct seen run(const struct th_sysenv *e, const struct th_scale *s)
{
    struct seen out = {0};
    int n = th_limits_check(e, s, collect, &out);
    cr_assert_eq(n, out.warnings, "the return value counts the warnings");
    return out;
}

/* Exactly one warning, and it names what (and, if given, also). */
static void expect_one(const struct th_sysenv *e, const struct th_scale *s, const char *what,
                       const char *also)
{
    struct seen out = run(e, s);
    cr_assert_eq(out.warnings, 1, "%d warnings, the last: %s", out.warnings, out.last_warning);
    cr_assert(strstr(out.last_warning, what), "no '%s' in: %s", what, out.last_warning);
    cr_assert(!also || strstr(out.last_warning, also), "no '%s' in: %s", also, out.last_warning);
}

Test(limits, million_on_the_bench_machine_needs_nothing_more)
{
    struct th_sysenv e = bench_box();
    struct th_scale s = million();
    struct seen out = run(&e, &s);
    cr_assert_eq(out.warnings, 0, "unexpected: %s", out.last_warning);
    cr_assert_eq(out.notes, 1, "the port range note for a local load generator");
    cr_assert(strstr(out.last_note, "ip_local_port_range") && strstr(out.last_note, "38 127.0.0.x"),
              "%s", out.last_note);
}

Test(limits, too_few_workers_for_the_slots)
{
    struct th_sysenv e = bench_box();
    struct th_scale s = million();
    s.workers = 2;
    expect_one(&e, &s, "--workers 53 or more", NULL);
}

Test(limits, open_file_limit_below_a_workers_share)
{
    struct th_sysenv e = bench_box();
    e.nofile_cur = e.nofile_max = 1024;
    struct th_scale s = million();
    s.slots = 65536;
    s.workers = 4; /* 16,384 each: 16,484 descriptors with the worker's own */
    expect_one(&e, &s, "RLIMIT_NOFILE", "to 16484");
}

Test(limits, small_groups_fit_a_small_limit)
{
    struct th_sysenv e = bench_box();
    e.nofile_cur = 1024;
    struct th_scale s = million();
    s.slots = 1024;
    s.workers = 2; /* 512 each + 100 of its own */
    cr_assert_eq(run(&e, &s).warnings, 0);
}

/* Each machine setting lowered alone, and the value its one warning must ask for. */
static const struct {
    size_t field; /* offset of a uint64_t in struct th_sysenv */
    uint64_t value;
    const char *needle;
} g_low[] = {
    {offsetof(struct th_sysenv, nr_open), 10000, "fs.nr_open=19885"}, /* 19,785 + 100 a worker */
    {offsetof(struct th_sysenv, file_max), 500000, "fs.file-max=2099200"},
    {offsetof(struct th_sysenv, somaxconn), 128, "net.core.somaxconn=4096"},
    {offsetof(struct th_sysenv, tcp_mem_max), 100000, "net.ipv4.tcp_mem to 524288"},
    {offsetof(struct th_sysenv, mem_total), 4ull << 30, "has 4.0 GiB"},
    /* the host's boot-time table: 4 a chain at 2^20 slots */
    {offsetof(struct th_sysenv, ehash), 262144, "tcp_child_ehash_entries=1048576"},
};

Test(limits, each_setting_too_low_alone_is_named)
{
    for (size_t i = 0; i < sizeof(g_low) / sizeof(g_low[0]); i++) {
        struct th_sysenv e = bench_box();
        memcpy((char *)&e + g_low[i].field, &g_low[i].value, sizeof(uint64_t));
        struct th_scale s = million();
        expect_one(&e, &s, g_low[i].needle, NULL);
    }
}

Test(limits, conntrack_only_when_tracking)
{
    struct th_sysenv e = bench_box();
    struct th_scale s = million();
    cr_assert_eq(run(&e, &s).warnings, 0, "a loaded module that tracks nothing costs nothing");
    e.conntrack_count = 17;
    expect_one(&e, &s, "nf_conntrack_max=1310720", NULL);
}

Test(limits, unknown_settings_are_not_guessed)
{
    struct th_sysenv e = {0};
    struct th_scale s = million();
    struct seen out = run(&e, &s);
    cr_assert_eq(out.warnings, 0, "%s", out.last_warning);
    cr_assert_eq(out.notes, 0);
}
