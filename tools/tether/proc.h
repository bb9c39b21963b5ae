/*
 * Child processes of the supervisor: how one is forked (the environment every
 * role may rely on: parent-death signal, default signal dispositions with
 * SIGPIPE ignored and SIGHUP ignored until the role handles it, its log role
 * and process name, only the descriptors it needs) and how its restart delay
 * grows when it keeps dying. Internal to janitor/.
 */
#ifndef TETHER_TOOLS_TETHER_PROC_H
#define TETHER_TOOLS_TETHER_PROC_H

#include "tools/tether/hang.h"

#include <stdint.h>
#include <sys/types.h>

/* Restart delay: 100 ms doubling to 10 s; back to 100 ms after 30 s of stable running. */
#define TH_BACKOFF_MIN_NS (100ULL * 1000000ULL)
#define TH_BACKOFF_MAX_NS (10ULL * 1000000000ULL)
#define TH_STABLE_NS (30ULL * 1000000000ULL)

struct th_child {
    char name[32];            /* log role: "worker[2]", "janitor", "notifier" */
    int worker;               /* worker index, or -1 for the janitor and the notifier */
    int role;                 /* enum th_role for the janitor and the notifier */
    pid_t pid;                /* 0 while not running */
    uint64_t started_mono;    /* when this incarnation was forked */
    uint64_t next_start_mono; /* earliest restart (monotonic ns), 0 = at once */
    uint64_t backoff_ns;      /* delay before the next restart */
    /* Hang detection (supervisor.c): ages are measured on the supervisor's
     * monotonic clock from the last time it saw the heartbeat word change,
     * so a wall-clock step never makes a live child look hung. */
    uint64_t hb_seen;   /* heartbeat word as last read (0: not beaten yet) */
    uint64_t hb_mono;   /* when it last changed (the fork, before the first beat) */
    uint64_t hung_mono; /* declared hung at, 0 = not */
    int stopped;        /* waitpid reported a stop and no continue since */
    /* Starved or stuck (tools/tether/hang.h): the scheduler's accounting when
     * the heartbeat was first seen unchanged, and since when a heartbeat
     * older than --hung-after has been put down to a CPU shortage. */
    struct th_hang_window quiet;
    uint64_t quiet_mono;   /* when `quiet` opened, 0 = the heartbeat moves */
    uint64_t starved_mono; /* starved past --hung-after since, 0 = not */
    int killed;            /* SIGKILL sent for hanging, not reaped yet */
    pid_t replaced_pid;    /* the hung incarnation the next start replaces, 0 = none */
};

/*
 * Fork a child that runs fn(arg) and _exits with its return value. In the
 * child, close_fds[0..nclose) are closed (those the role does not need; -1
 * entries are skipped). Returns the child's pid, or -errno if fork failed.
 */
pid_t th_proc_spawn(const char *role, const int *close_fds, int nclose, int (*fn)(void *),
                    void *arg);

/* The child died at now_mono: set next_start_mono and grow backoff_ns. Returns the delay. */
uint64_t th_proc_backoff(struct th_child *c, uint64_t now_mono);

/* "exited with status 3" / "killed by signal 9 (core dumped)". */
void th_proc_describe_status(int status, char *buf, size_t cap);

#endif
