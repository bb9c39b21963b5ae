/*
 * Unit tests of the role set-up (shm/rt/role.c): handlers only set the flags;
 * with a waitmask the signals are held until the wait (none is lost between a
 * check and ppoll); SIGPIPE is ignored; publishing fills the role-table entry
 * with the pid last.
 */
#include "shm/rt/role.h"

#include <criterion/criterion.h>
#include <poll.h>
#include <unistd.h>

Test(role, handlers_set_flags)
{
    cr_assert_eq(th_role_signals(0, NULL), 0);
    cr_assert_eq(th_sig_stop + th_sig_hup + th_sig_chld, 0, "fresh flags");
    raise(SIGHUP);
    cr_assert_eq(th_sig_hup, 1);
    cr_assert_eq(th_sig_stop, 0);
    raise(SIGTERM);
    cr_assert_eq(th_sig_stop, 1);
    th_sig_stop = 0;
    raise(SIGINT);
    cr_assert_eq(th_sig_stop, 1);
    raise(SIGPIPE); /* ignored: the test process survives */
    raise(SIGCHLD); /* not caught without TH_SIG_CHLD */
    cr_assert_eq(th_sig_chld, 0);
}

Test(role, waitmask_holds_signals_until_the_wait)
{
    sigset_t waitmask;
    cr_assert_eq(th_role_signals(TH_SIG_CHLD, &waitmask), 0);
    raise(SIGTERM);
    raise(SIGCHLD);
    cr_assert_eq(th_sig_stop, 0, "blocked outside the wait");
    cr_assert_eq(th_sig_chld, 0);
    struct timespec ts = {.tv_sec = 1};
    ppoll(NULL, 0, &ts, &waitmask); /* returns EINTR at once: the pending signals arrive */
    cr_assert_eq(th_sig_stop, 1);
    cr_assert_eq(th_sig_chld, 1);
}

Test(role, publish_and_heartbeat)
{
    struct th_proc_sh me = {0};
    th_role_publish(&me, 1234);
    cr_assert_eq(atomic_load(&me.pid), getpid());
    cr_assert_eq(atomic_load(&me.started_ns), 1234);
    cr_assert_eq(atomic_load(&me.heartbeat_ns), 1234);
    th_role_heartbeat(&me, 5678);
    cr_assert_eq(atomic_load(&me.heartbeat_ns), 5678);
    cr_assert_eq(atomic_load(&me.started_ns), 1234, "the heartbeat leaves the start time");
}
