/*
 * Unit tests of starved-or-stuck (tools/tether/hang.c): the verdict table on
 * made-up samples, then the kernel's own accounting of real child
 * processes: one asleep (blocked: stuck), one stopped (stuck), one spinning
 * alone (stuck once it has used limit/2 of CPU), and one spinning at
 * SCHED_IDLE on the CPU of a busy sibling (runnable, waiting: starved).
 * Waits are bounded waits for a condition; nothing depends on how fast the
 * machine is.
 */
#include "tools/tether/hang.h"
#include "shm/rt/clock.h"

#include <criterion/criterion.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MS (1000ULL * 1000ULL)

/* The real-process tests need the kernel's scheduler accounting (CONFIG_SCHED_INFO). */
#define NEED_SCHEDSTAT()                                                                           \
    do {                                                                                           \
        if (access("/proc/self/schedstat", R_OK) != 0)                                             \
            cr_skip_test("no /proc/PID/schedstat on this kernel");                                 \
    } while (0)
#define S_NS (1000ULL * MS)

static struct th_hang_sample sample(uint64_t cpu, uint64_t wait, char state)
{
    return (struct th_hang_sample){.cpu_ns = cpu, .wait_ns = wait, .state = state, .ok = 1};
}

/* A window from a to b with `runnable` of `samples` looks in state R (b is the last look). */
static enum th_hang_verdict judge_seen(struct th_hang_sample a, struct th_hang_sample b,
                                       uint32_t samples, uint32_t runnable, uint64_t elapsed,
                                       const char **why)
{
    struct th_hang_window w;
    th_hang_window_open(&w, &a);
    th_hang_window_add(&w, &b);
    w.samples = samples, w.runnable = runnable;
    return th_hang_judge(&w, elapsed, 3 * S_NS, why);
}

/* The same, every look like b. */
static enum th_hang_verdict judge(struct th_hang_sample a, struct th_hang_sample b,
                                  uint64_t elapsed, const char **why)
{
    return judge_seen(a, b, 30, b.state == 'R' ? 30 : 0, elapsed, why);
}

Test(hang, verdict_table)
{
    const char *why;
    /* Runnable at every look, a few ms on a CPU, no wait ended yet: starved. */
    cr_expect_eq(judge(sample(1 * S_NS, 0, 'S'), sample(1 * S_NS + 5 * MS, 0, 'R'), 3 * S_NS, &why),
                 TH_HANG_STARVED);
    cr_expect_str_eq(why, "runnable, waiting for a CPU");
    /* Runnable at half the looks: starved; below half, with no wait recorded: blocked. */
    cr_expect_eq(judge_seen(sample(0, 0, 'S'), sample(0, 0, 'S'), 30, 15, 3 * S_NS, &why),
                 TH_HANG_STARVED);
    cr_expect_eq(judge_seen(sample(0, 0, 'S'), sample(0, 0, 'S'), 30, 14, 3 * S_NS, &why),
                 TH_HANG_STUCK);
    cr_expect_str_eq(why, "blocked");
    /* Caught asleep in its ring wait at every look, but its waits (ended) fill the time. */
    cr_expect_eq(judge(sample(0, 0, 'R'), sample(40 * MS, 2900 * MS, 'S'), 3 * S_NS, &why),
                 TH_HANG_STARVED);
    /* Neither ran nor waited: blocked (asleep, or in D). */
    cr_expect_eq(judge(sample(0, 0, 'S'), sample(1 * MS, 10 * MS, 'S'), 3 * S_NS, &why),
                 TH_HANG_STUCK);
    cr_expect_str_eq(why, "blocked");
    cr_expect_eq(judge(sample(0, 0, 'D'), sample(0, 0, 'D'), 3 * S_NS, &why), TH_HANG_STUCK);
    /* Ran limit/2 without beating: spinning, however runnable it also was. */
    cr_expect_eq(judge(sample(0, 0, 'R'), sample(1500 * MS, 20 * S_NS, 'R'), 30 * S_NS, &why),
                 TH_HANG_STUCK);
    cr_expect_str_eq(why, "running without beating");
    cr_expect_eq(judge(sample(0, 0, 'R'), sample(1499 * MS, 20 * S_NS, 'R'), 30 * S_NS, &why),
                 TH_HANG_STARVED);
    /* Stopped, traced, dead: stuck whatever the counters and earlier looks say. */
    const char stuck_states[] = {'T', 't', 'Z', 'X'};
    for (size_t i = 0; i < sizeof(stuck_states); i++)
        cr_expect_eq(judge_seen(sample(0, 0, 'R'), sample(0, 3 * S_NS, stuck_states[i]), 30, 30,
                                3 * S_NS, &why),
                     TH_HANG_STUCK, "state %c", stuck_states[i]);
    /* Unknown: no first or latest sample, or counters of another process (smaller). */
    struct th_hang_sample none = {0};
    cr_expect_eq(judge_seen(none, sample(0, 0, 'R'), 30, 30, 3 * S_NS, &why), TH_HANG_STUCK);
    cr_expect_eq(judge_seen(sample(0, 0, 'R'), none, 30, 30, 3 * S_NS, &why), TH_HANG_STUCK);
    cr_expect_eq(judge(sample(5 * S_NS, 0, 'R'), sample(1 * S_NS, 3 * S_NS, 'R'), 3 * S_NS, &why),
                 TH_HANG_STUCK);
}

Test(hang, window_counts)
{
    struct th_hang_window w;
    struct th_hang_sample r = sample(1, 1, 'R'), s = sample(2, 2, 'S'), bad = {0};
    th_hang_window_open(&w, &s);
    cr_expect_eq(w.samples, 0);
    th_hang_window_add(&w, &r);
    th_hang_window_add(&w, &s);
    th_hang_window_add(&w, &bad); /* unreadable: not a look, but the latest */
    cr_expect_eq(w.samples, 2);
    cr_expect_eq(w.runnable, 1);
    cr_expect_eq(w.last.ok, 0);
}

Test(hang, read_self_and_missing)
{
    NEED_SCHEDSTAT();
    struct th_hang_sample s;
    cr_assert_eq(th_hang_read(getpid(), &s), 0);
    cr_expect(s.ok);
    cr_expect_eq(s.state, 'R'); /* it is reading its own stat: on a CPU */
    cr_expect_gt(s.cpu_ns, 0);
    pid_t gone = fork();
    if (gone == 0)
        _exit(0);
    waitpid(gone, NULL, 0);
    cr_expect_lt(th_hang_read(gone, &s), 0);
    cr_expect_eq(s.ok, 0);
}

static void spin_forever(void)
{
    volatile uint64_t x = 0;
    for (;;)
        x++;
}

static pid_t child(void (*fn)(void))
{
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        fn();
        _exit(0);
    }
    return pid;
}

static void end(pid_t pid)
{
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

static void sleep_forever(void)
{
    for (;;)
        pause();
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/*
 * Sample pid, then add a sample every 50 ms and judge, up to 30 s, until the
 * verdict is `want`; returns the last verdict and its reason.
 */
static enum th_hang_verdict watch(pid_t pid, uint64_t limit, enum th_hang_verdict want,
                                  uint64_t at_least, const char **why)
{
    struct th_hang_sample s;
    struct th_hang_window w;
    cr_assert_eq(th_hang_read(pid, &s), 0);
    th_hang_window_open(&w, &s);
    uint64_t t0 = th_mono_ns();
    enum th_hang_verdict v;
    do {
        sleep_ms(50);
        cr_assert_eq(th_hang_read(pid, &s), 0);
        th_hang_window_add(&w, &s);
        v = th_hang_judge(&w, th_mono_ns() - t0, limit, why);
    } while ((v != want || th_mono_ns() - t0 < at_least) && th_mono_ns() - t0 < 30 * S_NS);
    return v;
}

Test(hang, real_processes_blocked_stopped_spinning)
{
    NEED_SCHEDSTAT();
    const char *why;
    pid_t sleeper = child(sleep_forever);
    sleep_ms(100);
    cr_expect_eq(watch(sleeper, 3 * S_NS, TH_HANG_STUCK, 1 * S_NS, &why), TH_HANG_STUCK);
    cr_expect_str_eq(why, "blocked");
    kill(sleeper, SIGSTOP);
    siginfo_t si;
    waitid(P_PID, (id_t)sleeper, &si, WSTOPPED);
    cr_expect_eq(watch(sleeper, 3 * S_NS, TH_HANG_STUCK, 0, &why), TH_HANG_STUCK);
    cr_expect_str_eq(why, "stopped or traced");
    end(sleeper);
    /* A spinner gets the CPU (limit 200 ms: stuck after 100 ms of it, however long that takes). */
    pid_t spinner = child(spin_forever);
    cr_expect_eq(watch(spinner, 200 * MS, TH_HANG_STUCK, 0, &why), TH_HANG_STUCK);
    cr_expect_str_eq(why, "running without beating");
    end(spinner);
}

static int cpu_of_test;

static void pin(void)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu_of_test, &set);
    sched_setaffinity(0, sizeof(set), &set);
}

static void busy_sibling(void)
{
    pin();
    spin_forever();
}

static void idle_spinner(void)
{
    pin();
    struct sched_param sp = {0};
    sched_setscheduler(0, SCHED_IDLE, &sp);
    spin_forever();
}

/*
 * Starved: a spinner at SCHED_IDLE shares one CPU with a spinner at the
 * default policy, so it is runnable all the time and gets a sliver of the
 * CPU (weights 3 against 1024): with a limit of 1 s judged over 1 s, far
 * from the 0.5 s of CPU that would make it a spinner (alone on a CPU it
 * would be one: the test above).
 */
Test(hang, real_process_starved)
{
    NEED_SCHEDSTAT();
    cpu_set_t mine;
    cr_assert_eq(sched_getaffinity(0, sizeof(mine), &mine), 0);
    while (!CPU_ISSET(cpu_of_test, &mine))
        cpu_of_test++;
    pid_t hog = child(busy_sibling), starved = child(idle_spinner);
    sleep_ms(200); /* both pinned and running */
    const char *why;
    enum th_hang_verdict v = watch(starved, 1 * S_NS, TH_HANG_STARVED, 1 * S_NS, &why);
    struct th_hang_sample last;
    cr_assert_eq(th_hang_read(starved, &last), 0);
    end(starved);
    end(hog);
    cr_expect_eq(v, TH_HANG_STARVED, "%s", why);
    cr_expect_eq(last.state, 'R');
}
