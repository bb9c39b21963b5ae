/*
 * Role set-up (see shm/rt/role.h): signal handlers that only set flags, and
 * the role-table entry every process publishes itself in.
 */
#include "shm/rt/role.h"
#include "shm/rt/log.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

volatile sig_atomic_t th_sig_stop, th_sig_hup, th_sig_chld;

static void on_signal(int sig)
{
    if (sig == SIGHUP)
        th_sig_hup = 1;
    else if (sig == SIGCHLD)
        th_sig_chld = 1;
    else
        th_sig_stop = 1;
}

int th_role_signals(unsigned flags, sigset_t *waitmask)
{
    int sigs[] = {SIGTERM, SIGINT, SIGHUP, SIGCHLD};
    size_t nsigs = flags & TH_SIG_CHLD ? 4 : 3;
    th_sig_stop = th_sig_hup = th_sig_chld = 0; /* a forked role does not inherit its parent's */
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal; /* no SA_NOCLDSTOP: a stopped child is a hung one, seen at once */
    sigemptyset(&sa.sa_mask);
    sigset_t block;
    sigemptyset(&block);
    for (size_t i = 0; i < nsigs; i++) {
        if (sigaction(sigs[i], &sa, NULL) < 0) {
            int e = errno;
            th_error("sigaction(%s): %s", strsignal(sigs[i]), strerror(e));
            return -e;
        }
        sigaddset(&block, sigs[i]);
    }
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
    if (!waitmask)
        return 0;
    if (sigprocmask(SIG_BLOCK, &block, waitmask) < 0) {
        int e = errno;
        th_error("sigprocmask: %s", strerror(e));
        return -e;
    }
    for (size_t i = 0; i < nsigs; i++)
        sigdelset(waitmask, sigs[i]);
    return 0;
}

void th_role_publish(struct th_proc_sh *me, uint64_t now_ns)
{
    atomic_store_explicit(&me->started_ns, now_ns, memory_order_relaxed);
    atomic_store_explicit(&me->heartbeat_ns, now_ns, memory_order_relaxed);
    atomic_store_explicit(&me->pid, (int32_t)getpid(), memory_order_release);
}
