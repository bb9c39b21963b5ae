/*
 * Stage records (see shm/rt/stage.h): a fixed in-memory array per process,
 * written out at exit. Compiled to nothing without TETHER_STAGES.
 */
#include "shm/rt/stage.h"

#ifdef TETHER_STAGES
#include <stdio.h>
#include <stdlib.h>
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
