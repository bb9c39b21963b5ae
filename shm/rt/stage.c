/*
 * Stage records (see shm/rt/stage.h): a fixed in-memory array per process,
 * written out at exit. Compiled to nothing without TETHER_STAGES.
 */
#include "shm/rt/stage.h"

#ifdef TETHER_STAGES
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_RECORDS (1u << 20)

struct rec {
    uint64_t key, ns;
    uint32_t st;
};

static struct rec *recs;
static uint32_t nrecs;
static int off; /* no TETHER_STAGES_DIR, or out of memory */

void th_stage_mark(uint64_t key, enum th_stage st, uint64_t mono_ns)
{
    if (off || nrecs == MAX_RECORDS)
        return;
    if (!recs && (!getenv("TETHER_STAGES_DIR") || !(recs = malloc(MAX_RECORDS * sizeof(*recs))))) {
        off = 1;
        return;
    }
    recs[nrecs++] = (struct rec){key, mono_ns, (uint32_t)st};
}

uint64_t th_stage_wake_ns;
static uint64_t cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t wake_cpu;

void th_stage_woke(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    th_stage_wake_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
    wake_cpu = cpu_ns();
}

void th_stage_iter(void)
{
    uint64_t w = th_stage_wake_ns, c = wake_cpu;
    th_stage_woke();
    if (w && th_stage_wake_ns - w > 200000) {
        th_stage_mark(w, TH_ST_ITER, th_stage_wake_ns);
        th_stage_mark(w, TH_ST_ITER_CPU, wake_cpu - c);
    }
}

uint64_t th_stage_tns(const void *p, size_t n)
{
    const char *t = memmem(p, n, "\"t_ns\":", 7);
    if (!t)
        return 0;
    uint64_t v = 0;
    for (t += 7; t < (const char *)p + n && *t >= '0' && *t <= '9'; t++)
        v = v * 10 + (uint64_t)(*t - '0');
    return v;
}

void th_stage_flush(void)
{
    const char *dir = getenv("TETHER_STAGES_DIR");
    if (!recs || !dir)
        return;
    char path[512];
    snprintf(path, sizeof(path), "%s/stages-%d.txt", dir, (int)getpid());
    FILE *f = fopen(path, "w");
    if (f) {
        for (uint32_t i = 0; i < nrecs; i++)
            fprintf(f, "%llu %u %llu\n", (unsigned long long)recs[i].key, recs[i].st,
                    (unsigned long long)recs[i].ns);
        fclose(f);
    }
    free(recs);
    recs = NULL;
    nrecs = 0;
}
#else
typedef int th_stage_unused; /* ISO C: a translation unit is not empty */
#endif
