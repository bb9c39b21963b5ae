/*
 * One janitor sweep over the registry: repair what dead processes left, then
 * evict every connection whose LastSeen is older than --stale-after by asking
 * its worker to close it with 4000 (or releasing the slot here when the
 * worker cannot answer). Split from janitor.c so a benchmark and unit tests
 * can run a sweep on a segment of their own. Internal to janitor/.
 */
#ifndef TETHER_JANITOR_SWEEP_H
#define TETHER_JANITOR_SWEEP_H

#include "shm/rt/config.h"
#include "shm/registry.h"

#include <stdint.h>

/* Evictions in flight per worker: requests are pipelined, replies matched by seq. */
#define TH_EVICT_WINDOW 64

/* One eviction asked of a worker: what the contract's log line names once it is settled. */
struct th_inflight {
    struct th_handle h;
    uint64_t seq;
    uint64_t last_seen;         /* the LastSeen judged stale */
    char user[TH_USER_MAX + 1]; /* NUL-terminated */
};

struct th_sweeper {
    const char *shm_name; /* finds the workers' control sockets */
    struct th_reg *reg;
    uint64_t stale_ns;
    int timeout_ms; /* bound for one worker's answer */
    uint64_t seq;
    int fd[TH_MAX_WORKERS];         /* persistent control connections, -1 = none */
    int32_t fd_pid[TH_MAX_WORKERS]; /* the worker incarnation fd[] was opened to */
    uint8_t silent[TH_MAX_WORKERS]; /* did not answer during this sweep: stop asking */
    int nq[TH_MAX_WORKERS];         /* requests in flight per worker */
    struct th_inflight q[TH_MAX_WORKERS][TH_EVICT_WINDOW];
};

struct th_sweep_stats {
    uint32_t live;     /* live slots seen */
    uint32_t stale;    /* stale connections found */
    uint32_t closed;   /* ... closed by their worker (each logged) */
    uint32_t released; /* ... released here: worker silent, dead or lost it (each logged) */
    uint32_t vanished; /* ... gone before anyone acted (closed meanwhile) */
    uint32_t kept;     /* ... heard from after all (TH_HO_KEPT, or LastSeen moved) */
    int repaired;      /* slots released by th_reg_repair */
    uint64_t duration_ns;
};

void th_sweeper_init(struct th_sweeper *s, const char *shm_name, struct th_reg *reg,
                     uint32_t stale_after_s, int timeout_ms);
void th_sweeper_close(struct th_sweeper *s);
/* One sweep at wall-clock now_ns. Only reads the segment, CASes slots and sends small requests. */
void th_sweep(struct th_sweeper *s, uint64_t now_ns, struct th_sweep_stats *st);

#endif
