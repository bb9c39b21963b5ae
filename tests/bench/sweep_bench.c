/*
 * How long a janitor sweep takes on a big segment: creates a segment of
 * --slots slots (default 1M), fills --live of them (default all) with fresh
 * connections owned by this process as worker 0, and times th_sweep over it
 * --rounds times. Nothing is stale, so this is the pure scan cost every
 * sweep pays; run with --stale to time a sweep that evicts everything (no
 * worker socket: each slot is released by the janitor itself).
 *
 *   build/tests/bench_sweep --slots 1048576 --live 500000
 */
#include "janitor/sweep.h"
#include "shm/rt/clock.h"
#include "shm/rt/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    uint32_t slots = 1u << 20, live = 0, rounds = 5;
    int stale = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--slots") && i + 1 < argc)
            slots = (uint32_t)strtoul(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--live") && i + 1 < argc)
            live = (uint32_t)strtoul(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--rounds") && i + 1 < argc)
            rounds = (uint32_t)strtoul(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--stale"))
            stale = 1;
        else {
            fprintf(stderr, "usage: bench_sweep [--slots N] [--live N] [--rounds N] [--stale]\n");
            return 2;
        }
    }
    if (live == 0 || live > slots)
        live = slots;
    char name[64], err[256];
    snprintf(name, sizeof(name), "/bench-sweep-%d", (int)getpid());
    setenv("TETHER_RUNTIME_DIR", "/nonexistent-bench-sweep", 1);
    th_log_init(TH_LOG_ERROR, TH_LOG_TEXT, NULL);
    struct th_reg reg;
    if (th_reg_create(&reg, name, slots, err, sizeof(err)) < 0) {
        fprintf(stderr, "bench_sweep: %s\n", err);
        return 1;
    }
    reg.hdr->nworkers = 1;
    atomic_store(&reg.hdr->workers[0].pid, (int32_t)getpid());
    uint64_t now = th_now_ns(), seen = stale ? now - 3600 * TH_NS_PER_S : now;
    uint64_t t0 = th_mono_ns();
    uint32_t filled = 0;
    for (uint32_t i = 0; i < live; i++) {
        char user[32];
        struct th_handle h;
        int n = snprintf(user, sizeof(user), "bench-user-%u", i);
        filled += th_reg_claim(&reg, user, (size_t)n, 0, i, seen, 8, &h, NULL, NULL) == 0;
    }
    printf("{\"slots\":%u,\"live\":%u,\"fill_ms\":%.1f", slots, filled,
           (double)(th_mono_ns() - t0) / 1e6);
    struct th_sweeper sw;
    th_sweeper_init(&sw, name, &reg, 300, 100);
    printf(",\"sweep_ms\":[");
    for (uint32_t r = 0; r < (stale ? 1 : rounds); r++) {
        struct th_sweep_stats st;
        th_sweep(&sw, th_now_ns(), &st);
        printf("%s{\"ms\":%.2f,\"seen\":%u,\"stale\":%u,\"released\":%u}", r ? "," : "",
               (double)st.duration_ns / 1e6, st.live, st.stale, st.released);
    }
    printf("]}\n");
    th_sweeper_close(&sw);
    th_reg_detach(&reg);
    th_reg_unlink(name);
    return 0;
}
