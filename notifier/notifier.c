/*
 * The notifier role's entry point: signal handling, its entry in the
 * segment's role table, then the API server loop (notifier/server.c).
 */
#include "notifier/notifier.h"
#include "notifier/server.h"
#include "shm/rt/clock.h"
#include "shm/rt/log.h"

#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t stop_flag, hup_flag;

static void on_stop(int sig)
{
    (void)sig;
    stop_flag = 1;
}

static void on_hup(int sig)
{
    (void)sig;
    hup_flag = 1;
}

/* No SA_RESTART: a signal must interrupt the ring wait so the loop sees the flag. */
static void install_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_stop;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = on_hup;
    sigaction(SIGHUP, &sa, NULL);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
}

static void publish(struct th_reg *reg, pid_t pid)
{
    struct th_proc_sh *me = &reg->hdr->roles[TH_ROLE_NOTIFIER];
    uint64_t now = th_now_ns();
    atomic_store_explicit(&me->started_ns, now, memory_order_relaxed);
    atomic_store_explicit(&me->heartbeat_ns, now, memory_order_relaxed);
    atomic_store_explicit(&me->pid, pid, memory_order_release);
}

int th_notifier_main(const struct th_config *cfg, struct th_reg *reg, int api_fd)
{
    install_signals();
    publish(reg, getpid());
    th_info("[Notifier] serving the backend API on %s:%u", cfg->api_host, cfg->api_port);
    int rc = th_server_run(cfg, reg, api_fd, &stop_flag, &hup_flag);
    if (rc < 0)
        return 1;
    th_info("[Notifier] stopped");
    return 0;
}
