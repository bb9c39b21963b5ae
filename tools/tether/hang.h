/*
 * Starved or stuck: what a child whose heartbeat is --hung-after old is
 * doing, told from the kernel's scheduler accounting of its main thread
 * (the thread that stamps the heartbeat). A stuck role (stopped, blocked,
 * or spinning in a loop that never beats) is killed and replaced; a
 * starved one (runnable, waiting for a CPU on an overcommitted machine) is
 * left running, because killing it drops its clients and frees no CPU.
 *
 * th_hang_read samples /proc/PID/schedstat (time on a CPU, time runnable on
 * a run queue) and the state letter of /proc/PID/stat. The supervisor opens
 * a window when the heartbeat goes quiet and adds a sample at every tick
 * while it stays quiet; th_hang_judge is pure. Run-queue time alone cannot
 * show starvation: the kernel adds a wait to it only when the wait ends
 * (the thread gets a CPU), so a thread kept off the CPU for ten seconds
 * shows no wait until then. Hence the state letters too: a thread found
 * runnable (R) at most ticks wants a CPU. Internal to tools/tether.
 */
#ifndef TETHER_TOOLS_TETHER_HANG_H
#define TETHER_TOOLS_TETHER_HANG_H

#include <stdint.h>
#include <sys/types.h>

struct th_hang_sample {
    uint64_t cpu_ns;  /* schedstat field 1: time spent running */
    uint64_t wait_ns; /* schedstat field 2: time runnable on a run queue (added when it ends) */
    char state;       /* /proc/PID/stat state: R S D T t Z X ... */
    int ok;           /* 0: could not be read (no such process, no schedstat) */
};

/* The samples of one quiet heartbeat: the first, the latest, how many found it runnable. */
struct th_hang_window {
    struct th_hang_sample first; /* taken when the heartbeat was first seen unchanged */
    struct th_hang_sample last;  /* the latest added (first, until one is) */
    uint32_t samples;            /* readable samples added since the first */
    uint32_t runnable;           /* of those, in state R */
};

enum th_hang_verdict {
    TH_HANG_STUCK,   /* kill it: stopped, blocked, spinning, or unknown */
    TH_HANG_STARVED, /* leave it: it wants a CPU and gets too little of one */
};

/* The scheduler's view of pid's main thread. Returns 0, or -errno (sample->ok = 0). */
int th_hang_read(pid_t pid, struct th_hang_sample *sample);

/* Open a window on `first`, then count each later sample into it. */
void th_hang_window_open(struct th_hang_window *w, const struct th_hang_sample *first);
void th_hang_window_add(struct th_hang_window *w, const struct th_hang_sample *s);

/*
 * What a process did from its window's first sample to its latest,
 * `elapsed_ns` apart on the supervisor's clock, given --hung-after `limit_ns`:
 * - stopped or traced (T, t), dead (Z, X), or the first or latest sample
 *   unreadable: stuck (without the kernel's accounting there is nothing to
 *   tell a starved role by, and the detector stays what it was);
 * - at least limit/2 of CPU time since the window opened: stuck (spinning:
 *   no role's loop needs that much CPU between two beats);
 * - runnable: found in state R in at least half of the samples, or on a
 *   CPU or waiting for one (schedstat) for at least half of elapsed:
 *   starved;
 * - otherwise stuck (blocked or asleep, and no role sleeps that long
 *   without beating).
 * `why` gets a short reason for the log ("runnable, waiting for a CPU").
 */
enum th_hang_verdict th_hang_judge(const struct th_hang_window *w, uint64_t elapsed_ns,
                                   uint64_t limit_ns, const char **why);

#endif
