/*
 * Spawning and restart pacing for the supervisor's children (tools/tether/proc.h).
 * Roles are forked without exec: they inherit the registry mapping and the
 * listening sockets, so everything a role must not inherit (the supervisor's
 * signal handlers and mask, descriptors of other roles) is undone here,
 * before the role's main runs.
 */
#include "tools/tether/proc.h"
#include "shm/rt/log.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

/*
 * A role ends with _exit (no atexit handlers of the supervisor's image may
 * run in a forked child), which skips LeakSanitizer's at-exit check; in an
 * AddressSanitizer/LeakSanitizer build the role runs that check itself
 * before _exit, so leaks of every role are reported (and exit non-zero).
 */
#if defined(__SANITIZE_ADDRESS__)
#define TH_HAVE_LSAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(leak_sanitizer)
#define TH_HAVE_LSAN 1
#endif
#endif
#ifdef TH_HAVE_LSAN
#include <sanitizer/lsan_interface.h>
#endif

/*
 * Dispositions the supervisor changes; a child starts from the defaults,
 * except SIGHUP: it is ignored until the role installs its log-reopen
 * handler, so a SIGHUP forwarded right after a fork cannot kill the child.
 */
static const int reset_signals[] = {SIGTERM, SIGINT, SIGCHLD, SIGQUIT, SIGUSR1, SIGUSR2};

static void child_setup(const char *role, pid_t parent)
{
    /* Die with the supervisor; if it is already gone, the signal will never come. */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent)
        _exit(0);
    struct sigaction sa = {.sa_handler = SIG_DFL};
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof(reset_signals) / sizeof(reset_signals[0]); i++)
        sigaction(reset_signals[i], &sa, NULL);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    th_log_set_role(role);
    /* ps, top and the fault tests tell the roles apart by name: "tether-worker2". */
    char comm[16] = "tether-";
    size_t o = strlen(comm);
    for (const char *p = role; *p && o + 1 < sizeof(comm); p++)
        if (*p != '[' && *p != ']')
            comm[o++] = *p;
    comm[o] = '\0';
    prctl(PR_SET_NAME, comm);
}

pid_t th_proc_spawn(const char *role, const int *close_fds, int nclose, int (*fn)(void *),
                    void *arg)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0)
        return -errno;
    if (pid > 0)
        return pid;
    child_setup(role, parent);
    for (int i = 0; i < nclose; i++)
        if (close_fds[i] >= 0)
            close(close_fds[i]);
    int rc = fn(arg);
#ifdef TH_HAVE_LSAN
    __lsan_do_leak_check();
#endif
    _exit(rc);
}

uint64_t th_proc_backoff(struct th_child *c, uint64_t now_mono)
{
    if (c->backoff_ns == 0 || now_mono - c->started_mono >= TH_STABLE_NS)
        c->backoff_ns = TH_BACKOFF_MIN_NS;
    uint64_t delay = c->backoff_ns;
    c->next_start_mono = now_mono + delay;
    c->backoff_ns = delay * 2 > TH_BACKOFF_MAX_NS ? TH_BACKOFF_MAX_NS : delay * 2;
    return delay;
}

void th_proc_describe_status(int status, char *buf, size_t cap)
{
    if (WIFEXITED(status))
        snprintf(buf, cap, "exited with status %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(buf, cap, "killed by signal %d (%s)%s", WTERMSIG(status),
                 strsignal(WTERMSIG(status)), WCOREDUMP(status) ? ", core dumped" : "");
    else
        snprintf(buf, cap, "stopped (status 0x%x)", status);
}
