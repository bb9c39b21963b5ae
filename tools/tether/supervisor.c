/*
 * The supervisor behind `tether run` (tools/tether/supervisor.h).
 *
 * Start-up order matters for "touch nothing of another group": the segment
 * is created first (th_reg_create refuses one whose creator is alive, so a
 * second group on the same --shm-name stops there), then the listeners are
 * bound, one client listener per worker and the API's (a port in use stops
 * the start and removes only the segment this process just created), then
 * the runtime directory, then the children.
 *
 * The loop is single-threaded: signal handlers only set flags, the signals
 * stay blocked except inside ppoll(), which wakes at least every
 * TH_HEARTBEAT_NS (100 ms) to heartbeat, reap, watch for hung children,
 * start children whose backoff has elapsed and drive a drain.
 *
 * Hung children (--hung-after, default 3 s). A child is hung when it is
 * stopped (SIGCHLD without SA_NOCLDSTOP, waitpid WUNTRACED: seen at once)
 * or when its heartbeat, which every role's loop stamps at least every
 * 100 ms, has not changed for --hung-after (a loop stuck in user space is
 * only visible that way). A hung child is "declared" in the segment
 * (th_proc_sh.hung_ns): the notifier then answers deliveries to its
 * connections at once instead of waiting out the handoff timeout, and
 * /healthz names it. A hung worker also leaves the steering set at once:
 * the client listeners are one SO_REUSEPORT group with a BPF program this
 * loop regenerates (tools/tether/listeners.h), so no new client is handed to it,
 * and a live worker is named its adopter and accepts what already sits in
 * its queue. A stopped child that resumes and beats again before
 * --hung-after is taken back (a short stop by an operator costs its clients
 * nothing); otherwise, once its heartbeat is --hung-after old, it gets
 * SIGKILL and is replaced through the normal restart path (slots reclaimed,
 * its clients reconnect to the others). Why 3 s is safe: no role's loop
 * blocks for more than a fraction of a second (worker batches and ticks are
 * bounded, sweeps stamp the heartbeat as they go), so 30 missed beats only
 * happen to a process that does not run.
 *
 * Not running is not always a fault: on an overcommitted machine a role can
 * wait seconds for a CPU. So a heartbeat --hung-after old is first put to
 * the kernel's scheduler accounting (tools/tether/hang.h): a child that is
 * runnable and has been waiting on a run queue most of the time since its
 * heartbeat went quiet, without having used --hung-after/2 of CPU, is
 * starved, and is neither declared nor killed (logged once per episode,
 * and again when it beats); one that is stopped, traced, blocked, or
 * spinning is hung as above. Killing a starved worker would drop every one
 * of its clients and give back no CPU to anyone.
 */
#include "tools/tether/supervisor.h"
#include "janitor/janitor.h"
#include "tools/tether/limits.h"
#include "tools/tether/listeners.h"
#include "tools/tether/proc.h"
#include "notifier/notifier.h"
#include "shm/rt/clock.h"
#include "shm/rt/log.h"
#include "shm/proto/tls.h"
#include "shm/rt/role.h"
#include "shm/mailbox.h"
#include "shm/registry.h"
#include "worker/worker.h"
#include "shm/rt/paths.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define LISTEN_BACKLOG 4096
#define DRAIN_SLACK_S 2 /* beyond --drain-timeout before stragglers get SIGKILL */
#define BIND_RETRY_MS 2000ULL

struct sup {
    const struct th_config *cfg;
    struct th_reg reg;
    int listen_fds[TH_MAX_WORKERS]; /* one per worker, one SO_REUSEPORT group */
    int api_fd;
    uint64_t steer_mask; /* workers new clients go to; valid once steered */
    int steered;
    char rundir[TH_PATH_MAX];
    struct th_child kids[TH_MAX_WORKERS + 2];
    int nkids;
    int draining;
    uint64_t drain_deadline;            /* monotonic ns */
    int bad_exits;                      /* children that ended abnormally during the drain */
    struct th_tls_tickets *tickets;     /* made before the first fork: shared by every worker */
    struct th_tls_ctx *tls;             /* the pair a (re)started worker begins with */
    struct th_tls_tickets *api_tickets; /* the API's own: a client's ticket never opens it */
    struct th_tls_ctx *api_tls;         /* the pair a (re)started notifier begins with */
};

/* One supervisor per process; the child entry points reach it from here. */
static struct sup S;
/* A start-up failure: logged, and also on stderr when the log goes to a file. */
static void startup_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void startup_error(const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    th_error("%s", msg);
    if (S.cfg->log_file[0])
        fprintf(stderr, "tether run: %s\n", msg);
}

/* Workers hold up to TH_WORKER_FDS descriptors each: use the whole hard limit
 * (check_kernel_settings says when even that is too low for the scale). */
static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static void limits_line(void *ctx, int warning, const char *line)
{
    (void)ctx;
    if (warning)
        th_warn("sizing: %s", line);
    else /* notes concern clients on this host (a load test), not serving */
        th_debug("sizing: %s", line);
}

/* Every setting too low for --slots/--workers gets one warn line naming it. */
static void check_kernel_settings(const struct th_config *cfg)
{
    struct th_sysenv env;
    th_sysenv_read(&env);
    struct th_scale scale = {
        .workers = cfg->workers,
        .slots = cfg->slots,
        .backlog = LISTEN_BACKLOG,
        .worker_cap = TH_WORKER_MAX_CONNS,
        .worker_fds = TH_WORKER_FDS,
        .segment_bytes = S.reg.size + (cfg->mailbox_ttl_s ? cfg->mailbox_bytes : 0),
    };
    th_limits_check(&env, &scale, limits_line, NULL);
}

/* One attempt: socket, SO_REUSEADDR, bind, listen. Returns the fd, or -errno with *call naming the
 * step. */
static int try_listen(const struct addrinfo *ai, const char **call)
{
    int one = 1;
    *call = "socket";
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    *call = "bind";
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
        *call = "listen";
        if (listen(fd, LISTEN_BACKLOG) == 0)
            return fd;
    }
    int e = errno;
    close(fd);
    return -e;
}

/*
 * Bind and listen on host:port. Returns the fd or -errno after logging why, naming
 * flag and address. "In use" is retried for BIND_RETRY_MS: the listener of a
 * group that just stopped stays referenced by its workers' io_uring instances
 * until the kernel finishes tearing them down, a few milliseconds after exit,
 * and `systemctl restart` must not trip over that.
 */
static int open_listener(const char *flag, const char *host, uint16_t port)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV},
                    *ai = NULL;
    char portstr[8];
    snprintf(portstr, sizeof(portstr), "%u", port);
    int gai = getaddrinfo(host, portstr, &hints, &ai);
    if (gai != 0) {
        startup_error("%s %s:%u: cannot resolve address (getaddrinfo: %s)", flag, host, port,
                      gai_strerror(gai));
        return -EADDRNOTAVAIL;
    }
    const char *call;
    uint64_t give_up = th_mono_ns() + BIND_RETRY_MS * TH_NS_PER_MS;
    int fd;
    while ((fd = try_listen(ai, &call)) == -EADDRINUSE && th_mono_ns() < give_up)
        usleep(50 * 1000);
    freeaddrinfo(ai);
    if (fd >= 0)
        return fd;
    startup_error("%s %s:%u: %s failed: %s%s", flag, host, port, call, strerror(-fd),
                  fd == -EADDRINUSE ? " (another process is listening there)" : "");
    return fd;
}

/*
 * The client listeners, one per worker (tools/tether/listeners.h), with the same
 * "in use" retry as open_listener. Returns 0 or -1 after logging why.
 */
static int open_client_listeners(const struct th_config *cfg)
{
    char err[256] = "";
    uint64_t give_up = th_mono_ns() + BIND_RETRY_MS * TH_NS_PER_MS;
    int rc;
    while ((rc = th_listeners_open(cfg->listen_host, cfg->listen_port, cfg->workers, LISTEN_BACKLOG,
                                   S.listen_fds, err, sizeof(err))) == -EADDRINUSE &&
           th_mono_ns() < give_up)
        usleep(50 * 1000);
    if (rc == 0)
        return 0;
    startup_error("--listen %s:%u: %s%s", cfg->listen_host, cfg->listen_port, err,
                  rc == -EADDRINUSE ? " (another process is listening there)" : "");
    return -1;
}

/* ---- children ------------------------------------------------------------ */

static int worker_entry(void *arg)
{
    const struct th_child *c = arg;
    th_worker_use_tls(S.tls);
    return th_worker_main(S.cfg, &S.reg, (unsigned)c->worker, S.listen_fds);
}

static int janitor_entry(void *arg)
{
    (void)arg; /* the roles read the supervisor's state S */
    return th_janitor_main(S.cfg, &S.reg);
}

static int notifier_entry(void *arg)
{
    (void)arg;
    th_notifier_use_tls(S.api_tls);
    return th_notifier_main(S.cfg, &S.reg, S.api_fd);
}

static struct th_proc_sh *child_sh(const struct th_child *c)
{
    return c->worker >= 0 ? &S.reg.hdr->workers[c->worker] : &S.reg.hdr->roles[c->role];
}

static void init_children(void)
{
    S.nkids = 0;
    for (uint32_t i = 0; i < S.cfg->workers; i++) {
        struct th_child *c = &S.kids[S.nkids++];
        snprintf(c->name, sizeof(c->name), "worker[%u]", i);
        c->worker = (int)i;
    }
    struct th_child *j = &S.kids[S.nkids++];
    snprintf(j->name, sizeof(j->name), "janitor");
    j->worker = -1;
    j->role = TH_ROLE_JANITOR;
    struct th_child *n = &S.kids[S.nkids++];
    snprintf(n->name, sizeof(n->name), "notifier");
    n->worker = -1;
    n->role = TH_ROLE_NOTIFIER;
}

static void start_child(struct th_child *c, uint64_t now_mono)
{
    /* Workers keep every client listener (to adopt a hung peer's queue), the others none. */
    int closes[TH_MAX_WORKERS + 1], nclose = 0;
    int (*fn)(void *) = worker_entry;
    if (c->worker >= 0 || c->role == TH_ROLE_JANITOR)
        closes[nclose++] = S.api_fd;
    if (c->worker < 0) {
        for (uint32_t i = 0; i < S.cfg->workers; i++)
            closes[nclose++] = S.listen_fds[i];
        fn = c->role == TH_ROLE_JANITOR ? janitor_entry : notifier_entry;
    }
    if (c->worker >= 0) {
        atomic_store(&child_sh(c)->full, 0);
        atomic_store(&child_sh(c)->heartbeat_ns, 0); /* steered to once it has published itself */
    }
    pid_t pid = th_proc_spawn(c->name, closes, nclose, fn, c);
    if (pid < 0) {
        uint64_t delay = th_proc_backoff(c, now_mono);
        th_error("%s: fork failed: %s; retrying in %llu ms", c->name, strerror((int)-pid),
                 (unsigned long long)(delay / TH_NS_PER_MS));
        return;
    }
    c->pid = pid;
    c->started_mono = now_mono;
    c->next_start_mono = 0;
    c->hb_seen = atomic_load(&child_sh(c)->heartbeat_ns);
    c->hb_mono = now_mono;
    c->hung_mono = c->quiet_mono = c->starved_mono = 0;
    c->stopped = c->killed = 0;
    /* The child publishes itself too; storing the pid here makes it visible at once. */
    atomic_store(&child_sh(c)->pid, (int32_t)pid);
    if (c->replaced_pid)
        th_warn("%s started (pid %d), replacing hung pid %d", c->name, (int)pid,
                (int)c->replaced_pid);
    else
        th_info("%s started (pid %d)", c->name, (int)pid);
    c->replaced_pid = 0;
}

static void start_due_children(uint64_t now_mono)
{
    for (int i = 0; i < S.nkids; i++)
        if (S.kids[i].pid == 0 && now_mono >= S.kids[i].next_start_mono)
            start_child(&S.kids[i], now_mono);
}

/* Bookkeeping for a reaped child: reclaim, unpublish, count, schedule the restart. */
static void child_died(struct th_child *c, int status, uint64_t now_mono)
{
    char how[96];
    th_proc_describe_status(status, how, sizeof(how));
    struct th_proc_sh *sh = child_sh(c);
    atomic_store(&sh->pid, 0);
    atomic_store(&sh->hung_ns,
                 0); /* after pid: a reader never sees a live pid undeclared by mistake */
    atomic_store(&sh->starved_ns, 0);
    if (c->killed)
        c->replaced_pid = c->pid;
    c->pid = 0;
    c->hung_mono = c->quiet_mono = c->starved_mono = 0;
    c->stopped = c->killed = 0;
    int reclaimed = 0;
    if (c->worker >= 0) {
        reclaimed = th_reg_reclaim_worker(&S.reg, (uint16_t)c->worker);
        if (reclaimed > 0) { /* the registry leaves counters to its callers */
            atomic_fetch_add_explicit(&S.reg.hdr->counters.dead_reclaimed, (uint64_t)reclaimed,
                                      memory_order_relaxed);
            atomic_fetch_add_explicit(&S.reg.hdr->counters.connections_closed, (uint64_t)reclaimed,
                                      memory_order_relaxed);
        }
    }
    if (S.draining) {
        /*
         * A drained role exits 0. Anything else (a non-zero status such as a
         * LeakSanitizer report's, a crash, an abort) makes `tether run` exit 1,
         * so a service manager and the tests see it; the drain's own SIGTERM
         * and the stragglers' SIGKILL are the supervisor's doing, not a fault.
         */
        int ours =
            WIFSIGNALED(status) && (WTERMSIG(status) == SIGTERM || WTERMSIG(status) == SIGKILL);
        if (!ours && !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
            S.bad_exits++;
            th_warn("%s %s during the drain", c->name, how);
            return;
        }
        th_info("%s %s%s", c->name, how,
                c->worker >= 0 && reclaimed > 0 ? "; released its slots" : "");
        return;
    }
    atomic_fetch_add(&sh->restarts, 1);
    atomic_fetch_add_explicit(c->worker >= 0 ? &S.reg.hdr->counters.worker_restarts
                                             : &S.reg.hdr->counters.role_restarts,
                              1, memory_order_relaxed);
    uint64_t delay = th_proc_backoff(c, now_mono);
    if (c->worker >= 0)
        th_warn("%s %s; reclaimed %d slots; restarting in %llu ms", c->name, how,
                reclaimed < 0 ? 0 : reclaimed, (unsigned long long)(delay / TH_NS_PER_MS));
    else
        th_warn("%s %s; restarting in %llu ms", c->name, how,
                (unsigned long long)(delay / TH_NS_PER_MS));
}

static struct th_child *find_child(pid_t pid)
{
    for (int i = 0; i < S.nkids; i++)
        if (S.kids[i].pid == pid)
            return &S.kids[i];
    return NULL;
}

/* Stops and continues are reported too (WUNTRACED, WCONTINUED): a stop is a hang seen at once. */
static void reap_children(uint64_t now_mono)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG | WUNTRACED | WCONTINUED)) > 0) {
        struct th_child *c = find_child(pid);
        if (!c)
            continue;
        if (WIFSTOPPED(status)) {
            c->stopped = WSTOPSIG(status);
        } else if (WIFCONTINUED(status)) {
            c->stopped = 0;
            c->hb_mono = now_mono; /* a full --hung-after to beat again */
            c->quiet_mono = 0;     /* and the starvation window starts afresh */
        } else {
            child_died(c, status, th_mono_ns());
        }
    }
}

/*
 * Heartbeat age on our monotonic clock, from the last time the word changed.
 * Each time it is seen unchanged, the scheduler's accounting of the child is
 * sampled into its window (the first sample opens it), so a heartbeat that
 * grows old can be put down to starvation or not (starved() below); a
 * change ends a starvation episode.
 */
static uint64_t heartbeat_age(struct th_child *c, uint64_t now_mono)
{
    uint64_t hb = atomic_load_explicit(&child_sh(c)->heartbeat_ns, memory_order_relaxed);
    if (hb != c->hb_seen) {
        if (c->starved_mono) {
            char held[32], gap[32];
            th_fmt_duration(held, sizeof(held), now_mono - c->starved_mono);
            th_fmt_duration(gap, sizeof(gap), now_mono - c->hb_mono);
            th_warn("%s (pid %d) beats again after %s starved (heartbeat gap %s)", c->name,
                    (int)c->pid, held, gap);
        }
        c->hb_seen = hb;
        c->hb_mono = now_mono;
        if (c->starved_mono)
            atomic_store(&child_sh(c)->starved_ns, 0);
        c->quiet_mono = c->starved_mono = 0;
    } else {
        struct th_hang_sample s;
        th_hang_read(c->pid, &s);
        if (!c->quiet_mono) {
            th_hang_window_open(&c->quiet, &s);
            c->quiet_mono = now_mono;
        } else {
            th_hang_window_add(&c->quiet, &s);
        }
    }
    return now_mono > c->hb_mono ? now_mono - c->hb_mono : 0;
}

/*
 * A heartbeat --hung-after old from a child that is runnable and waiting
 * for a CPU (tools/tether/hang.h) is starvation, not a hang: killing it
 * would drop its clients and free no CPU. Logged once per episode. *why
 * gets the reason when it is not starved.
 */
static int starved(struct th_child *c, uint64_t now_mono, uint64_t age, const char **why)
{
    uint64_t limit = (uint64_t)S.cfg->hung_after_s * TH_NS_PER_S;
    if (!c->quiet_mono || c->stopped) {
        *why = c->stopped ? "stopped" : "not sampled";
        return 0;
    }
    uint64_t elapsed = now_mono - c->quiet_mono;
    if (th_hang_judge(&c->quiet, elapsed, limit, why) != TH_HANG_STARVED)
        return 0;
    if (!c->starved_mono) {
        const struct th_hang_window *w = &c->quiet;
        char ago[32], ran[32], span[32];
        c->starved_mono = now_mono;
        atomic_store(&child_sh(c)->starved_ns, th_now_ns());
        th_fmt_duration(ago, sizeof(ago), age);
        th_fmt_duration(ran, sizeof(ran), w->last.cpu_ns - w->first.cpu_ns);
        th_fmt_duration(span, sizeof(span), elapsed);
        th_warn("%s (pid %d) starved: heartbeat %s old, but it is %s (runnable at %u of %u "
                "looks, %s on a CPU in %s): left running, not replaced",
                c->name, (int)c->pid, ago, *why, w->runnable, w->samples, ran, span);
    }
    return 1;
}

static void declare_hung(struct th_child *c, uint64_t now_mono, uint64_t age, const char *how)
{
    char ago[32], why[96];
    snprintf(why, sizeof(why), "its heartbeat stopped (%s)", how);
    th_fmt_duration(ago, sizeof(ago), age);
    if (c->stopped)
        snprintf(why, sizeof(why), "stopped by signal %d (%s)", c->stopped, strsignal(c->stopped));
    c->hung_mono = now_mono;
    atomic_store(&child_sh(c)->hung_ns, th_now_ns());
    th_error("%s (pid %d) hung: %s, heartbeat %s old; %s, replaced unless it beats again within "
             "--hung-after %u s",
             c->name, (int)c->pid, why, ago,
             c->worker >= 0 ? "no new clients go to it" : "declared hung", S.cfg->hung_after_s);
}

/*
 * Declare, take back and replace hung children (see the top of this file).
 * The SIGKILL goes once; reaping then restarts the child like any crash.
 */
static void watch_children(uint64_t now_mono)
{
    uint64_t limit = (uint64_t)S.cfg->hung_after_s * TH_NS_PER_S;
    for (int i = 0; i < S.nkids; i++) {
        struct th_child *c = &S.kids[i];
        if (c->pid <= 0 || c->killed)
            continue;
        uint64_t before = c->hb_seen, age = heartbeat_age(c, now_mono);
        const char *how = "stopped";
        if (age >= limit && starved(c, now_mono, age, &how))
            continue; /* not hung: waiting for a CPU (starved() logs it) */
        if (!c->hung_mono && (c->stopped || age >= limit))
            declare_hung(c, now_mono, age, how);
        if (c->hung_mono && !c->stopped && c->hb_seen != before && age < limit) {
            char held[32];
            th_fmt_duration(held, sizeof(held), now_mono - c->hung_mono);
            th_warn("%s (pid %d) beats again after %s declared hung: taking it back", c->name,
                    (int)c->pid, held);
            c->hung_mono = 0;
            atomic_store(&child_sh(c)->hung_ns, 0);
        }
        if (c->hung_mono && age >= limit) {
            char ago[32];
            th_fmt_duration(ago, sizeof(ago), age);
            th_error(
                "%s (pid %d) hung: heartbeat %s old (--hung-after %u s): SIGKILL, replacing it",
                c->name, (int)c->pid, ago, S.cfg->hung_after_s);
            kill(c->pid, SIGKILL);
            c->killed = 1;
        }
    }
}

/*
 * A worker new clients may go to: running, published (it has beaten), not
 * hung, not full, and (with_starved 0) not starved: a worker waiting seconds
 * for a CPU would leave a new client's upgrade waiting as long, while
 * another may be getting its share.
 */
static int steerable(const struct th_child *c, int with_starved)
{
    return c->pid > 0 && !c->hung_mono && !c->killed && c->hb_seen != 0 &&
           (with_starved || !c->starved_mono) &&
           !atomic_load_explicit(&child_sh(c)->full, memory_order_relaxed);
}

/* The workers steerable(with_starved), as a mask of their indexes. */
static uint64_t steer_set(int with_starved)
{
    uint64_t mask = 0;
    for (int i = 0; i < S.nkids; i++)
        if (S.kids[i].worker >= 0 && steerable(&S.kids[i], with_starved))
            mask |= 1ull << S.kids[i].worker;
    return mask;
}

/* The live worker that takes over worker w's queue: the next steerable one after it. */
static int32_t pick_adopter(unsigned w, uint64_t mask)
{
    for (unsigned k = 1; k < S.cfg->workers; k++) {
        unsigned a = (w + k) % S.cfg->workers;
        if ((mask >> a) & 1)
            return (int32_t)a + 1;
    }
    return 0;
}

/*
 * Regenerate the steering program when the set changes, and give every
 * worker outside the set an adopter for what is already queued on its
 * listener (it stays named until the worker is back in the set). Starved
 * workers are left out while any other can take clients; when every one
 * that could is starved, they all stay in (a slow worker beats none).
 */
static void steer(void)
{
    uint64_t mask = steer_set(0);
    if (!mask)
        mask = steer_set(1);
    if (!S.steered || mask != S.steer_mask) {
        int rc = th_listeners_steer(S.listen_fds[0], S.cfg->workers, mask);
        if (rc < 0) {
            th_error("setsockopt SO_ATTACH_REUSEPORT_CBPF: %s: new clients are spread over every "
                     "worker, hung or not",
                     strerror(-rc));
        } else {
            char set[TH_MAX_WORKERS * 3 + 8] = "";
            size_t o = 0;
            for (unsigned w = 0; w < S.cfg->workers && o + 4 < sizeof(set); w++)
                if ((mask >> w) & 1)
                    o += (size_t)snprintf(set + o, sizeof(set) - o, "%s%u", o ? "," : "", w);
            th_info("new clients go to workers %s", mask ? set : "(any: none is ready)");
        }
        S.steer_mask = mask;
        S.steered = 1;
    }
    for (unsigned w = 0; w < S.cfg->workers; w++) {
        int32_t want = (mask >> w) & 1 ? 0 : pick_adopter(w, mask);
        struct th_proc_sh *sh = &S.reg.hdr->workers[w];
        int32_t had = atomic_load(&sh->adopter);
        if (want == had)
            continue;
        atomic_store(&sh->adopter, want);
        if (want && atomic_load(&sh->hung_ns))
            th_info("worker[%d] accepts the clients queued for hung worker[%u]", want - 1, w);
        else if (want)
            th_debug("worker[%d] accepts the clients queued for worker[%u]", want - 1, w);
    }
}

static int live_children(void)
{
    int n = 0;
    for (int i = 0; i < S.nkids; i++)
        n += S.kids[i].pid != 0;
    return n;
}

static void signal_children(int sig)
{
    for (int i = 0; i < S.nkids; i++)
        if (S.kids[i].pid > 0)
            kill(S.kids[i].pid, sig);
}

/* ---- drain and clean-up ------------------------------------------------- */

static void start_drain(uint64_t now_mono)
{
    S.draining = 1;
    S.drain_deadline = now_mono + (uint64_t)(S.cfg->drain_timeout_s + DRAIN_SLACK_S) * TH_NS_PER_S;
    th_info("draining: SIGTERM to %d processes, clients get 1001, up to %u s", live_children(),
            S.cfg->drain_timeout_s + DRAIN_SLACK_S);
    signal_children(SIGTERM);
    for (int i = 0; i < S.nkids;
         i++) /* a stopped child would hold its SIGTERM until the deadline */
        if (S.kids[i].pid > 0 && S.kids[i].stopped)
            kill(S.kids[i].pid, SIGCONT);
}

static void kill_stragglers(void)
{
    for (int i = 0; i < S.nkids; i++) {
        struct th_child *c = &S.kids[i];
        if (c->pid <= 0)
            continue;
        th_warn("%s (pid %d) did not stop within the drain timeout: SIGKILL", c->name, (int)c->pid);
        kill(c->pid, SIGKILL);
        int status;
        while (waitpid(c->pid, &status, 0) < 0 && errno == EINTR)
            ;
        child_died(c, status, th_mono_ns());
    }
}

static void remove_runtime_files(void)
{
    char path[TH_PATH_MAX];
    if (!S.rundir[0])
        return; /* never prepared (or refused as not ours): nothing of ours in it */
    for (uint32_t i = 0; i < S.cfg->workers; i++)
        if (th_worker_sock_path(S.cfg->shm_name, i, path, sizeof(path)) == 0)
            unlink(path);
    if (S.rundir[0] && rmdir(S.rundir) < 0 && errno != ENOENT)
        th_warn("runtime directory %s not removed: %s", S.rundir, strerror(errno));
}

static void shutdown_group(void)
{
    remove_runtime_files();
    atomic_store(&S.reg.hdr->roles[TH_ROLE_SUPERVISOR].pid, 0);
    int rc = th_reg_unlink(S.cfg->shm_name);
    if (rc < 0 && rc != -ENOENT)
        th_warn("segment %s not removed: %s", S.cfg->shm_name, strerror(-rc));
    th_reg_detach(&S.reg);
    th_listeners_close(S.listen_fds, TH_MAX_WORKERS);
    if (S.api_fd >= 0)
        close(S.api_fd);
    th_info("stopped");
}

/* ---- start-up and loop -------------------------------------------------- */

/*
 * The mailbox outlives the group (shm/mailbox.h): re-attach to the one a
 * previous group left when it fits, else start a new epoch. Only the
 * notifier writes it; the supervisor just makes sure it exists. Off
 * (--mailbox-ttl 0): left alone, whatever an earlier group stored.
 */
static int open_mailbox(const struct th_config *cfg)
{
    struct th_mbx mb;
    struct th_mbx_params p = {cfg->mailbox_bytes, cfg->mailbox_per_user, 0};
    char err[512] = "", epoch[TH_MBX_EPOCH_LEN + 1];
    int reused;
    if (!cfg->mailbox_ttl_s)
        return 0;
    int rc = th_mbx_open(&mb, cfg->shm_name, &p, &reused, err, sizeof(err));
    if (rc < 0) {
        startup_error("%s", err[0] ? err : strerror(-rc));
        return rc;
    }
    if (err[0])
        th_warn("%s", err);
    th_mbx_epoch(&mb, epoch);
    th_info("mailbox %s%s: epoch %s, %.1f MiB, %llu stored, ttl %u s, %u per user", cfg->shm_name,
            TH_MBX_SUFFIX, epoch, (double)mb.size / (1 << 20),
            (unsigned long long)atomic_load(&mb.hdr->entries), cfg->mailbox_ttl_s,
            cfg->mailbox_per_user);
    if (reused)
        th_info("mailbox re-attached: same epoch, stored notifications kept");
    th_mbx_detach(&mb);
    return 0;
}

/* Everything up to the first fork. Returns 0, or the exit status to stop with. */
static int start_up(const struct th_config *cfg)
{
    char err[512] = "";
    int rc = th_reg_create(&S.reg, cfg->shm_name, cfg->slots, err, sizeof(err));
    if (rc < 0) {
        startup_error("segment %s: %s", cfg->shm_name, err[0] ? err : strerror(-rc));
        return 1;
    }
    S.reg.hdr->nworkers = cfg->workers;
    S.reg.hdr->stale_after_s = cfg->stale_after_s;
    S.reg.hdr->sweep_every_s = cfg->sweep_every_s;
    th_role_publish(&S.reg.hdr->roles[TH_ROLE_SUPERVISOR], th_now_ns());
    if (open_client_listeners(cfg) == 0)
        S.api_fd = open_listener("--api-listen", cfg->api_host, cfg->api_port);
    if (S.listen_fds[0] < 0 || S.api_fd < 0)
        goto fail;
    char why[320];
    if (th_runtime_dir(cfg->shm_name, S.rundir, sizeof(S.rundir)) < 0) {
        startup_error("runtime directory for %s: path too long", cfg->shm_name);
        S.rundir[0] = '\0';
        goto fail;
    }
    if (th_runtime_dir_prepare(S.rundir, why, sizeof(why)) < 0) {
        startup_error("%s", why);
        S.rundir[0] = '\0'; /* not ours: remove nothing in it */
        goto fail;
    }
    if (open_mailbox(cfg) < 0)
        goto fail;
    return 0;
fail:
    /* Only what this process created: its own segment and listeners. */
    shutdown_group();
    return 1;
}

static void log_startup(const struct th_config *cfg)
{
    th_info("tether starting: segment %s, %u slots (%.1f MiB), %u workers, stale-after %u s, "
            "sweep-every %u s, pid %d",
            cfg->shm_name, cfg->slots, (double)S.reg.size / (1 << 20), cfg->workers,
            cfg->stale_after_s, cfg->sweep_every_s, (int)getpid());
    if (S.tls) {
        char desc[256];
        th_tls_ctx_describe(S.tls, desc, sizeof(desc));
        th_info("listening for clients on wss://%s:%u/ws%s (certificate %s)", cfg->listen_host,
                cfg->listen_port, cfg->tls_only ? ", TLS only" : ", plain ws:// too", desc);
    } else {
        th_info("listening for clients on ws://%s:%u/ws", cfg->listen_host, cfg->listen_port);
    }
    if (S.api_tls) {
        char desc[256];
        th_tls_ctx_describe(S.api_tls, desc, sizeof(desc));
        th_info("backend API on https://%s:%u (certificate %s; plain http:// only for /healthz "
                "and /metrics)",
                cfg->api_host, cfg->api_port, desc);
    } else {
        th_info("backend API on http://%s:%u", cfg->api_host, cfg->api_port);
    }
    th_info("runtime directory %s", S.rundir);
}

/*
 * --tls-cert/--tls-key, checked before anything starts (exit 2 on a bad or
 * expired pair). The supervisor keeps a context so that a worker it
 * restarts begins with the current pair; the ticket secret is made here,
 * once, so every worker (and every restarted one) resumes every other's
 * sessions.
 */
static int load_pair(const char *flags, const char *cert, const char *key,
                     struct th_tls_tickets **tk, struct th_tls_ctx **ctx)
{
    char err[512];
    if (!cert[0])
        return 0;
    if (!(*tk = th_tls_tickets_new(0))) {
        startup_error(
            "TLS: cannot make the session-ticket secret (out of memory or no randomness)");
        return -1;
    }
    if (!(*ctx = th_tls_ctx_new(cert, key, *tk, err, sizeof(err)))) {
        startup_error("%s: %s", flags, err);
        return -1;
    }
    return 0;
}

/* The client listener's pair and, separately (its own ticket secret), the API's. */
static int load_tls(const struct th_config *cfg)
{
    if (load_pair("--tls-cert/--tls-key", cfg->tls_cert, cfg->tls_key, &S.tickets, &S.tls) < 0)
        return -1;
    return load_pair("--api-tls-cert/--api-tls-key", cfg->api_tls_cert, cfg->api_tls_key,
                     &S.api_tickets, &S.api_tls);
}

static void reload_pair(const char *what, const char *cert, const char *key,
                        struct th_tls_tickets *tk, struct th_tls_ctx **ctx)
{
    char err[512];
    if (!*ctx)
        return;
    struct th_tls_ctx *n = th_tls_ctx_new(cert, key, tk, err, sizeof(err));
    if (!n) {
        th_error("%s reload failed, keeping the current certificate: %s", what, err);
        return;
    }
    th_tls_ctx_free(*ctx);
    *ctx = n;
}

/* SIGHUP: the pairs a restarted worker or notifier starts with; the children reload their own. */
static void reload_tls(void)
{
    reload_pair("TLS", S.cfg->tls_cert, S.cfg->tls_key, S.tickets, &S.tls);
    reload_pair("API TLS", S.cfg->api_tls_cert, S.cfg->api_tls_key, S.api_tickets, &S.api_tls);
}

/* Sleep until a signal (SIGCHLD: a death or a stop), the next beat, or the earliest restart. */
static void wait_tick(const sigset_t *waitmask, uint64_t now_mono)
{
    uint64_t wait = TH_HEARTBEAT_NS;
    for (int i = 0; i < S.nkids && !S.draining; i++) {
        const struct th_child *c = &S.kids[i];
        if (c->pid == 0 && c->next_start_mono > now_mono && c->next_start_mono - now_mono < wait)
            wait = c->next_start_mono - now_mono;
    }
    struct timespec ts = {.tv_sec = (time_t)(wait / TH_NS_PER_S),
                          .tv_nsec = (long)(wait % TH_NS_PER_S)};
    ppoll(NULL, 0, &ts, waitmask);
}

static void run_loop(const sigset_t *waitmask)
{
    for (;;) {
        uint64_t now = th_mono_ns();
        if (th_sig_hup) {
            th_sig_hup = 0;
            th_log_reopen();
            reload_tls();
            th_info("SIGHUP: log reopened, forwarded to children");
            signal_children(SIGHUP);
        }
        if (th_sig_stop && !S.draining)
            start_drain(now);
        th_sig_chld = 0;
        reap_children(now);
        if (S.draining) {
            if (live_children() == 0)
                return;
            if (now >= S.drain_deadline) {
                kill_stragglers();
                return;
            }
        } else {
            watch_children(now);
            start_due_children(now);
            steer();
        }
        th_role_heartbeat(&S.reg.hdr->roles[TH_ROLE_SUPERVISOR], th_now_ns());
        wait_tick(waitmask, th_mono_ns());
    }
}

int th_supervisor_run(const struct th_config *cfg)
{
    char err[512] = "";
    memset(&S, 0, sizeof(S));
    S.cfg = cfg;
    S.api_fd = -1;
    for (int i = 0; i < TH_MAX_WORKERS; i++)
        S.listen_fds[i] = -1;
    int rc = th_log_init(cfg->log_level, cfg->log_format, cfg->log_file[0] ? cfg->log_file : NULL);
    if (rc < 0) {
        fprintf(stderr, "tether run: --log-file %s: %s\n", cfg->log_file, strerror(-rc));
        return 2;
    }
    th_log_set_role("supervisor");
    if (th_janitor_check_config(cfg, err, sizeof(err)) < 0) {
        startup_error("%s", err);
        return 2;
    }
    if (load_tls(cfg) < 0)
        return 2;
    sigset_t waitmask; /* the signals arrive only inside ppoll: none is lost between checks */
    if (th_role_signals(TH_SIG_CHLD, &waitmask) < 0)
        return 1;
    raise_nofile();
    if ((rc = start_up(cfg)) != 0)
        return rc;
    log_startup(cfg);
    check_kernel_settings(cfg);
    init_children();
    run_loop(&waitmask);
    shutdown_group();
    if (S.bad_exits > 0) {
        th_error("%d child process(es) ended abnormally during the drain", S.bad_exits);
        return 1;
    }
    return 0;
}
