/*
 * The janitor role (janitor/janitor.h): a loop that heartbeats in the
 * segment's role table every TH_HEARTBEAT_NS (the supervisor replaces a
 * role whose heartbeat is --hung-after old; a sweep stamps it as it goes)
 * and runs a sweep (janitor/sweep.c) every --sweep-every seconds. Also the start-up check of the
 * stale/sweep settings, run by the supervisor before anything is created.
 */
#include "janitor/janitor.h"
#include "janitor/sweep.h"
#include "shm/rt/clock.h"
#include "shm/rt/log.h"
#include "shm/rt/role.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#define CLIENT_PING_S 30    /* the mobile clients' ping interval */
#define MIN_PINGS_MISSED 10 /* --stale-after below this many intervals risks live clients */
#define EVICT_TIMEOUT_MS 250

int th_janitor_check_config(const struct th_config *cfg, char *err, size_t errlen)
{
    if (cfg->stale_after_s <= cfg->sweep_every_s) {
        snprintf(
            err, errlen,
            "--stale-after %u must be above --sweep-every %u (otherwise a connection is evicted "
            "before it had one sweep period to show it is alive)",
            cfg->stale_after_s, cfg->sweep_every_s);
        return -EINVAL;
    }
    if (cfg->stale_after_s < CLIENT_PING_S * MIN_PINGS_MISSED)
        th_warn(
            "--stale-after %u s is under %u s (%u client ping intervals of %u s): a client that "
            "misses a few pings will be evicted and stop receiving notifications",
            cfg->stale_after_s, CLIENT_PING_S * MIN_PINGS_MISSED, MIN_PINGS_MISSED, CLIENT_PING_S);
    if (cfg->sweep_every_s < 1)
        th_warn("--sweep-every %u s is under 1 s: the janitor would sweep continuously",
                cfg->sweep_every_s);
    return 0;
}

/*
 * Once a minute, at info, how long the sweeps took (wall clock, from the
 * first slot to the last): what an operator sizing for a million slots, or
 * a benchmark, reads without turning on per-ping debug lines.
 */
#define SWEEP_SUMMARY_NS (60ull * TH_NS_PER_S)

struct sweep_summary {
    uint64_t since, longest_ns;
    unsigned sweeps, longest_live;
};

static void summarise(struct sweep_summary *sum, const struct th_sweep_stats *st)
{
    uint64_t now = th_mono_ns();
    if (!sum->since)
        sum->since = now;
    sum->sweeps++;
    if (st->duration_ns >= sum->longest_ns) {
        sum->longest_ns = st->duration_ns;
        sum->longest_live = st->live;
    }
    if (now - sum->since < SWEEP_SUMMARY_NS)
        return;
    th_info("janitor: %u sweeps in the last %.0f s, the longest %.1f ms (%u live connections), "
            "the last %.1f ms (%u live)",
            sum->sweeps, (double)(now - sum->since) / 1e9, (double)sum->longest_ns / 1e6,
            sum->longest_live, (double)st->duration_ns / 1e6, st->live);
    *sum = (struct sweep_summary){.since = now};
}

static void sweep_once(struct th_sweeper *sw, struct sweep_summary *sum)
{
    struct th_sweep_stats st;
    th_sweep(sw, th_now_ns(), &st);
    summarise(sum, &st);
    if (st.repaired > 0)
        th_info("janitor: released %d slots left by dead processes", st.repaired);
    if (st.stale > 0)
        th_info("janitor: evicted %u of %u stale connections (%u closed by their worker, %u "
                "released here, %u already gone, %u heard from after all) in a %.1f ms sweep",
                st.closed + st.released, st.stale, st.closed, st.released, st.vanished, st.kept,
                (double)st.duration_ns / 1e6);
    th_debug("janitor: sweep of %u live connections took %.3f ms (%u stale, %d repaired)", st.live,
             (double)st.duration_ns / 1e6, st.stale, st.repaired);
}

int th_janitor_main(const struct th_config *cfg, struct th_reg *reg)
{
    sigset_t waitmask; /* the signals arrive only inside ppoll: none is missed */
    if (th_role_signals(0, &waitmask) < 0)
        return 1;
    struct th_proc_sh *me = &reg->hdr->roles[TH_ROLE_JANITOR];
    th_role_publish(me, th_now_ns());
    struct th_sweeper sw;
    th_sweeper_init(&sw, cfg->shm_name, reg, cfg->stale_after_s, EVICT_TIMEOUT_MS);
    th_info("janitor running (pid %d): evicting connections silent over %u s, sweeping every %u s",
            (int)getpid(), cfg->stale_after_s, cfg->sweep_every_s);
    uint64_t period = (uint64_t)cfg->sweep_every_s * TH_NS_PER_S;
    uint64_t next = th_mono_ns() + period;
    struct sweep_summary sum = {0};
    while (!th_sig_stop) {
        if (th_sig_hup) {
            th_sig_hup = 0;
            th_log_reopen();
        }
        uint64_t now = th_mono_ns();
        if (now >= next) {
            sweep_once(&sw, &sum);
            next += period;
            now = th_mono_ns();
            if (next <= now) /* a sweep longer than the period: do not run them back to back */
                next = now + period;
        }
        th_role_heartbeat(me, th_now_ns());
        uint64_t wait = next - now < TH_HEARTBEAT_NS ? next - now : TH_HEARTBEAT_NS;
        struct timespec ts = {.tv_sec = (time_t)(wait / TH_NS_PER_S),
                              .tv_nsec = (long)(wait % TH_NS_PER_S)};
        ppoll(NULL, 0, &ts, &waitmask);
    }
    th_sweeper_close(&sw);
    atomic_store(&me->pid, 0);
    th_info("janitor stopped");
    return 0;
}
