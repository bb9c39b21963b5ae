/*
 * Unit tests of the start-up kernel-settings check (tools/tether/limits.c):
 * the settings of the 2-core, 24 GiB machine tether is benchmarked on hold a
 * million slots over 53 workers without a warning, and each setting made
 * too low on its own yields exactly one warning that names it and the value
 * to set.
 */
#include "tools/tether/limits.h"
#include "shm/rt/config.h"

#include <criterion/criterion.h>
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
                              .mem_total = 24ull << 30};
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
    struct seen out = run(&e, &s);
    cr_assert_eq(out.warnings, 1, "%s", out.last_warning);
    cr_assert(strstr(out.last_warning, "--workers 53 or more"), "%s", out.last_warning);
}

Test(limits, open_file_limit_below_a_workers_share)
{
    struct th_sysenv e = bench_box();
    e.nofile_cur = e.nofile_max = 1024;
    struct th_scale s = million();
    s.slots = 65536;
    s.workers = 4; /* 16,384 each: 16,484 descriptors with the worker's own */
    struct seen out = run(&e, &s);
    cr_assert_eq(out.warnings, 1, "%s", out.last_warning);
    cr_assert(strstr(out.last_warning, "RLIMIT_NOFILE") && strstr(out.last_warning, "to 16484"),
              "%s", out.last_warning);
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

Test(limits, nr_open_caps_the_limit)
{
    struct th_sysenv e = bench_box();
    e.nr_open = 10000;
    struct th_scale s = million();
    struct seen out = run(&e, &s);
    cr_assert_eq(out.warnings, 1, "%s", out.last_warning);
    cr_assert(strstr(out.last_warning, "fs.nr_open=19885"), "%s", out.last_warning);
}

Test(limits, file_max_below_the_slots)
{
    struct th_sysenv e = bench_box();
    e.file_max = 500000;
    struct th_scale s = million();
    struct seen out = run(&e, &s);
    cr_assert_eq(out.warnings, 1, "%s", out.last_warning);
    cr_assert(strstr(out.last_warning, "fs.file-max=2099200"), "%s", out.last_warning);
}

Test(limits, somaxconn_below_the_backlog)
{
    struct th_sysenv e = bench_box();
    e.somaxconn = 128;
    struct th_scale s = million();
    struct seen out = run(&e, &s);
    cr_assert_eq(out.warnings, 1, "%s", out.last_warning);
    cr_assert(strstr(out.last_warning, "net.core.somaxconn=4096"), "%s", out.last_warning);
}

Test(limits, tcp_mem_below_one_small_frame_each)
{
    struct th_sysenv e = bench_box();
    e.tcp_mem_max = 100000;
    struct th_scale s = million();
    struct seen out = run(&e, &s);
    cr_assert_eq(out.warnings, 1, "%s", out.last_warning);
    cr_assert(strstr(out.last_warning, "net.ipv4.tcp_mem to 524288"), "%s", out.last_warning);
}

Test(limits, conntrack_only_when_tracking)
{
    struct th_sysenv e = bench_box();
    struct th_scale s = million();
    cr_assert_eq(run(&e, &s).warnings, 0, "a loaded module that tracks nothing costs nothing");
    e.conntrack_count = 17;
    struct seen out = run(&e, &s);
    cr_assert_eq(out.warnings, 1, "%s", out.last_warning);
    cr_assert(strstr(out.last_warning, "nf_conntrack_max=1310720"), "%s", out.last_warning);
}

Test(limits, memory_for_a_full_registry)
{
    struct th_sysenv e = bench_box();
    e.mem_total = 4ull << 30;
    struct th_scale s = million();
    struct seen out = run(&e, &s);
    cr_assert_eq(out.warnings, 1, "%s", out.last_warning);
    cr_assert(strstr(out.last_warning, "has 4.0 GiB"), "%s", out.last_warning);
}

Test(limits, unknown_settings_are_not_guessed)
{
    struct th_sysenv e = {0};
    struct th_scale s = million();
    struct seen out = run(&e, &s);
    cr_assert_eq(out.warnings, 0, "%s", out.last_warning);
    cr_assert_eq(out.notes, 0);
}
