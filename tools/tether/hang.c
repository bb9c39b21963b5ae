/*
 * Starved or stuck (tools/tether/hang.h). The accounting is the scheduler's
 * own: /proc/PID/schedstat is "run time, run-queue wait, time slices" in
 * nanoseconds for the thread group leader, which is the thread every role's
 * loop runs on (libraries' helper threads, such as libnats's in the
 * notifier, and io_uring's kernel workers do not stamp the heartbeat, so
 * their time does not count). The wait field is time runnable and not on a
 * CPU, which is "starved", but it is added only when the wait ends.
 */
#include "tools/tether/hang.h"

#include "shm/registry.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The whole of a small /proc file into buf (NUL-terminated). Returns its length or -errno. */
static ssize_t read_small(const char *path, char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    ssize_t n = read(fd, buf, cap - 1);
    int e = errno;
    close(fd);
    if (n < 0)
        return -e;
    buf[n] = '\0';
    return n;
}

int th_hang_read(pid_t pid, struct th_hang_sample *s)
{
    char path[64], buf[512];
    memset(s, 0, sizeof(*s));
    snprintf(path, sizeof(path), "/proc/%d/schedstat", (int)pid);
    ssize_t n = read_small(path, buf, sizeof(buf));
    if (n < 0)
        return (int)n;
    char *end;
    s->cpu_ns = strtoull(buf, &end, 10);
    if (end == buf)
        return -EINVAL;
    char *p = end;
    s->wait_ns = strtoull(p, &end, 10);
    if (end == p)
        return -EINVAL;
    th_proc_stat(pid, &s->state); /* shm's parser of /proc/PID/stat */
    if (!s->state)
        return -ESRCH;
    s->ok = 1;
    return 0;
}

void th_hang_window_open(struct th_hang_window *w, const struct th_hang_sample *first)
{
    w->first = w->last = *first;
    w->samples = w->runnable = 0;
}

void th_hang_window_add(struct th_hang_window *w, const struct th_hang_sample *s)
{
    w->last = *s;
    if (!s->ok)
        return;
    w->samples++;
    w->runnable += s->state == 'R';
}

enum th_hang_verdict th_hang_judge(const struct th_hang_window *w, uint64_t elapsed_ns,
                                   uint64_t limit_ns, const char **why)
{
    const struct th_hang_sample *since = &w->first, *now = &w->last;
    if (!since->ok || !now->ok) {
        *why = "no scheduler accounting to tell starved from stuck";
        return TH_HANG_STUCK;
    }
    switch (now->state) {
    case 'T':
    case 't':
        *why = "stopped or traced";
        return TH_HANG_STUCK;
    case 'Z':
    case 'X':
        *why = "exited";
        return TH_HANG_STUCK;
    default:
        break;
    }
    /* Counters only grow; a smaller one means another process (pid reuse): unknown. */
    if (now->cpu_ns < since->cpu_ns || now->wait_ns < since->wait_ns) {
        *why = "scheduler accounting went back";
        return TH_HANG_STUCK;
    }
    uint64_t cpu = now->cpu_ns - since->cpu_ns, wait = now->wait_ns - since->wait_ns;
    if (cpu >= limit_ns / 2) {
        *why = "running without beating";
        return TH_HANG_STUCK;
    }
    if ((w->samples && w->runnable * 2 >= w->samples) || wait + cpu >= elapsed_ns / 2) {
        *why = "runnable, waiting for a CPU";
        return TH_HANG_STARVED;
    }
    *why = "blocked";
    return TH_HANG_STUCK;
}
