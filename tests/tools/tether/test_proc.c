/*
 * Unit tests of the supervisor's child handling (tools/tether/proc.c): restart
 * pacing, and what a forked child starts with (default signal dispositions,
 * empty mask) and how its exit status is described.
 */
#include "tools/tether/proc.h"
#include "shm/rt/clock.h"

#include <criterion/criterion.h>
#include <signal.h>
#include <sys/wait.h>

/* ---- restart pacing ------------------------------------------------------ */

Test(proc, backoff_doubles_caps_and_resets_after_stable_run)
{
    struct th_child c = {.worker = 0};
    uint64_t now = 1000 * TH_NS_PER_S, expect = TH_BACKOFF_MIN_NS;
    for (int i = 0; i < 12; i++) {
        c.started_mono = now; /* died right after starting: a crash loop */
        now += TH_NS_PER_MS;
        cr_assert_eq(th_proc_backoff(&c, now), expect, "restart %d", i);
        cr_assert_eq(c.next_start_mono, now + expect);
        expect = expect * 2 > TH_BACKOFF_MAX_NS ? TH_BACKOFF_MAX_NS : expect * 2;
    }
    cr_assert_eq(expect, TH_BACKOFF_MAX_NS, "12 quick deaths must reach the cap");
    c.started_mono = now;
    now += TH_STABLE_NS;
    cr_assert_eq(th_proc_backoff(&c, now), TH_BACKOFF_MIN_NS, "30 s of running resets the delay");
}

static int exit_seven(void *arg)
{
    (void)arg;
    /* The child must start with default dispositions and an empty mask. */
    struct sigaction sa;
    sigaction(SIGTERM, NULL, &sa);
    sigset_t cur;
    sigprocmask(SIG_SETMASK, NULL, &cur);
    return sa.sa_handler == SIG_DFL && !sigismember(&cur, SIGTERM) ? 7 : 1;
}

static void ignore(int sig)
{
    (void)sig;
}

Test(proc, spawn_resets_signals_and_returns_the_status)
{
    struct sigaction sa = {.sa_handler = ignore};
    sigaction(SIGTERM, &sa, NULL);
    sigset_t b;
    sigemptyset(&b);
    sigaddset(&b, SIGTERM);
    sigprocmask(SIG_BLOCK, &b, NULL);
    pid_t pid = th_proc_spawn("worker[3]", NULL, 0, exit_seven, NULL);
    cr_assert_gt(pid, 0);
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    char how[96];
    th_proc_describe_status(status, how, sizeof(how));
    cr_assert_str_eq(how, "exited with status 7");
    sigprocmask(SIG_UNBLOCK, &b, NULL);
}
