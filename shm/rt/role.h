/*
 * What every tether process does to become a role (worker, janitor,
 * notifier, supervisor), in one place:
 *
 * - signals: the handlers only set the sig_atomic_t flags below; the role's
 *   loop acts on them. No SA_RESTART, so a blocking wait returns EINTR and
 *   the loop sees the flag at once. SIGPIPE is ignored (a peer that went
 *   away is an EPIPE, not a death).
 * - its entry in the segment's role table (struct th_proc_sh in
 *   shm/registry.h): started and heartbeat stamped, then the pid published
 *   with release order, so whoever sees the pid sees the stamps too.
 * - the heartbeat the supervisor's watchdog and /healthz read: stamped by
 *   the role's loop at least every TH_HEARTBEAT_NS (shm/registry.h).
 */
#ifndef TETHER_SHM_RT_ROLE_H
#define TETHER_SHM_RT_ROLE_H

#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>

#include "shm/registry.h"

extern volatile sig_atomic_t th_sig_stop; /* SIGTERM or SIGINT: drain and stop */
extern volatile sig_atomic_t th_sig_hup;  /* SIGHUP: reopen the log (and whatever else reloads) */
extern volatile sig_atomic_t th_sig_chld; /* SIGCHLD, with TH_SIG_CHLD: reap */

enum { TH_SIG_CHLD = 1u << 0 }; /* th_role_signals: also catch SIGCHLD (the supervisor) */

/*
 * Install the handlers for SIGTERM, SIGINT, SIGHUP (and SIGCHLD with
 * TH_SIG_CHLD) and ignore SIGPIPE. With waitmask, the handled signals are
 * also blocked and *waitmask is the mask to wait with (ppoll): they are then
 * delivered only inside the wait, so none slips in between a check of the
 * flags and the wait. Returns 0 or -errno (logged, naming the call).
 */
int th_role_signals(unsigned flags, sigset_t *waitmask);

/* Publish this process in its entry: started and heartbeat = now_ns, then the pid. */
void th_role_publish(struct th_proc_sh *me, uint64_t now_ns);

/* The role's loop is alive at now_ns (realtime). */
static inline void th_role_heartbeat(struct th_proc_sh *me, uint64_t now_ns)
{
    atomic_store_explicit(&me->heartbeat_ns, now_ns, memory_order_relaxed);
}

#endif
