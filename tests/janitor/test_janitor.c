/*
 * Unit tests of the janitor (janitor/janitor.c, janitor/sweep.c). Sweeps run against a real
 * segment of their own; the owning "worker" is a thread of this test serving
 * a control socket at the path the sweeper looks up, so the 4000 requests it
 * sends are seen exactly as a worker would see them.
 */
#include "janitor/janitor.h"
#include "janitor/sweep.h"
#include "shm/rt/clock.h"
#include "shm/rt/log.h"
#include "shm/rt/channel.h"
#include "shm/rt/paths.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- config checks ------------------------------------------------------- */

static char logpath[256];

static char *read_log(void)
{
    static char buf[8192];
    FILE *f = fopen(logpath, "r");
    size_t n = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
    if (f)
        fclose(f);
    buf[n] = '\0';
    return buf;
}

static void log_to_file(void)
{
    snprintf(logpath, sizeof(logpath), "/tmp/test-janitor-%d.log", (int)getpid());
    unlink(logpath);
    th_log_init(TH_LOG_DEBUG, TH_LOG_TEXT, logpath);
}

static void cfg_with(struct th_config *c, uint32_t stale, uint32_t sweep)
{
    th_config_defaults(c);
    c->stale_after_s = stale;
    c->sweep_every_s = sweep;
}

Test(janitor_config, defaults_pass_without_warning, .init = log_to_file)
{
    struct th_config c;
    char err[256] = "";
    cfg_with(&c, 300, 60);
    cr_assert_eq(th_janitor_check_config(&c, err, sizeof(err)), 0);
    cr_assert_eq(strstr(read_log(), "WARN"), NULL, "%s", read_log());
}

Test(janitor_config, short_threshold_warns, .init = log_to_file)
{
    struct th_config c;
    char err[256] = "";
    cfg_with(&c, 2, 1);
    cr_assert_eq(th_janitor_check_config(&c, err, sizeof(err)), 0);
    cr_assert_neq(strstr(read_log(), "--stale-after 2 s is under 300 s"), NULL, "%s", read_log());
}

Test(janitor_config, threshold_not_above_sweep_is_refused)
{
    struct th_config c;
    char err[256] = "";
    cfg_with(&c, 60, 60);
    cr_assert_eq(th_janitor_check_config(&c, err, sizeof(err)), -EINVAL);
    cr_assert_neq(strstr(err, "--stale-after 60"), NULL, "%s", err);
    cr_assert_neq(strstr(err, "--sweep-every 60"), NULL, "%s", err);
    cfg_with(&c, 30, 60);
    cr_assert_eq(th_janitor_check_config(&c, err, sizeof(err)), -EINVAL);
    cfg_with(&c, 61, 60);
    cr_assert_eq(th_janitor_check_config(&c, err, sizeof(err)), 0);
}

/* ---- sweeps -------------------------------------------------------------- */

/*
 * ANSWER_KEPT: refuses as a worker holding newer input does. TOUCH_SILENT:
 * stamps the slot's LastSeen (the worker caught up on its input) but does not
 * answer in time.
 */
enum fake_mode { ANSWER_OK, ANSWER_GONE, ANSWER_KEPT, NEVER_ANSWER, TOUCH_SILENT };

struct fake_worker {
    int lfd;
    enum fake_mode mode;
    pthread_t thr;
    int requests;
    struct th_ho_msg last;
};

static struct th_reg reg;
static char shm_name[64], rundir[128];

static void seg_setup(void)
{
    char err[256];
    snprintf(shm_name, sizeof(shm_name), "/test-janitor-%d", (int)getpid());
    snprintf(rundir, sizeof(rundir), "/tmp/test-janitor-run-%d", (int)getpid());
    setenv("TETHER_RUNTIME_DIR", rundir, 1);
    mkdir(rundir, 0700);
    th_reg_unlink(shm_name);
    cr_assert_eq(th_reg_create(&reg, shm_name, 4096, err, sizeof(err)), 0, "%s", err);
    reg.hdr->nworkers = 2;
    th_log_init(TH_LOG_ERROR, TH_LOG_TEXT, NULL);
}

static void seg_teardown(void)
{
    char path[256];
    th_reg_detach(&reg);
    th_reg_unlink(shm_name);
    for (unsigned i = 0; i < 2; i++)
        if (th_worker_sock_path(shm_name, i, path, sizeof(path)) == 0)
            unlink(path);
    rmdir(rundir);
}

static void *fake_serve(void *arg)
{
    struct fake_worker *fw = arg;
    for (;;) {
        int fd = accept(fw->lfd, NULL, NULL);
        if (fd < 0)
            return NULL;
        struct th_ho_msg m;
        while (recv(fd, &m, sizeof(m), 0) == (ssize_t)sizeof(m)) {
            __atomic_add_fetch(&fw->requests, 1, __ATOMIC_SEQ_CST);
            fw->last = m;
            if (fw->mode == TOUCH_SILENT)
                th_reg_touch(&reg, (struct th_handle){.slot = m.slot, .gen = m.gen}, th_now_ns());
            if (fw->mode == NEVER_ANSWER || fw->mode == TOUCH_SILENT)
                continue;
            uint16_t code = fw->mode == ANSWER_OK     ? TH_HO_OK
                            : fw->mode == ANSWER_KEPT ? TH_HO_KEPT
                                                      : TH_HO_GONE;
            struct th_ho_msg r = {
                .magic = TH_HO_MAGIC, .type = TH_HO_REPLY, .seq = m.seq, .code = code};
            send(fd, &r, sizeof(r), MSG_NOSIGNAL);
        }
        close(fd);
    }
}

/* Serve worker index w's control socket from a thread, as worker pid getpid(). */
static void fake_start(struct fake_worker *fw, unsigned w, enum fake_mode mode)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    cr_assert_eq(th_worker_sock_path(shm_name, w, sa.sun_path, sizeof(sa.sun_path)), 0);
    unlink(sa.sun_path);
    fw->mode = mode;
    fw->lfd = socket(AF_UNIX, SOCK_SEQPACKET, 0);
    cr_assert_eq(bind(fw->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0, "%s", strerror(errno));
    cr_assert_eq(listen(fw->lfd, 8), 0);
    atomic_store(&reg.hdr->workers[w].pid, (int32_t)getpid());
    pthread_create(&fw->thr, NULL, fake_serve, fw);
}

static void fake_stop(struct fake_worker *fw)
{
    shutdown(fw->lfd, SHUT_RDWR);
    close(fw->lfd);
    pthread_join(fw->thr, NULL);
}

static struct th_handle claim(const char *user, uint16_t w, uint64_t last_seen)
{
    struct th_handle h;
    int rc = th_reg_claim(&reg, user, strlen(user), w, 1, last_seen, 8, &h, NULL, NULL);
    cr_assert_eq(rc, 0, "claim %s: %d", user, rc);
    return h;
}

static int slot_live(struct th_handle h)
{
    struct th_conn_info ci;
    return th_reg_read(&reg, h.slot, &ci) && ci.gen == h.gen;
}

TestSuite(sweep, .init = seg_setup, .fini = seg_teardown);

Test(sweep, stale_connection_is_sent_4000_fresh_one_is_left)
{
    struct fake_worker fw = {0};
    fake_start(&fw, 0, ANSWER_OK);
    uint64_t now = th_now_ns();
    struct th_handle old = claim("stale-user", 0, now - 20 * TH_NS_PER_S);
    struct th_handle fresh = claim("fresh-user", 0, now - 5 * TH_NS_PER_S);
    struct th_sweeper sw;
    struct th_sweep_stats st;
    th_sweeper_init(&sw, shm_name, &reg, 10, 500);
    th_sweep(&sw, now, &st);
    cr_assert_eq(st.live, 2);
    cr_assert_eq(st.stale, 1);
    cr_assert_eq(st.closed, 1);
    cr_assert_eq(fw.requests, 1);
    cr_assert_eq(fw.last.type, TH_HO_CLOSE);
    cr_assert_eq(fw.last.code, 4000);
    cr_assert_eq(fw.last.slot, old.slot);
    cr_assert_eq(fw.last.gen, old.gen);
    cr_assert_eq(fw.last.nseq, now - 20 * TH_NS_PER_S, "the request names the LastSeen judged");
    /* The worker releases on close; the janitor must not have. */
    cr_assert(slot_live(old));
    cr_assert(slot_live(fresh));
    cr_assert_eq(atomic_load(&reg.hdr->counters.stale_evictions), 1);
    th_sweeper_close(&sw);
    fake_stop(&fw);
}

Test(sweep, slot_the_worker_no_longer_holds_is_released_here)
{
    struct fake_worker fw = {0};
    fake_start(&fw, 0, ANSWER_GONE);
    uint64_t now = th_now_ns();
    struct th_handle h = claim("orphan", 0, now - 20 * TH_NS_PER_S);
    struct th_sweeper sw;
    struct th_sweep_stats st;
    th_sweeper_init(&sw, shm_name, &reg, 10, 500);
    th_sweep(&sw, now, &st);
    cr_assert_eq(st.released, 1);
    cr_assert_not(slot_live(h));
    th_sweeper_close(&sw);
    fake_stop(&fw);
}

/*
 * One stale connection of user's, swept against a worker in mode that keeps
 * it: the slot stays, nothing is counted, the contract's line is not logged
 * (an eviction that did not take place), the janitor's "not evicting" is.
 */
static void sweep_expecting_kept(enum fake_mode mode, const char *user, int timeout_ms)
{
    log_to_file();
    struct fake_worker fw = {0};
    fake_start(&fw, 0, mode);
    uint64_t now = th_now_ns();
    struct th_handle h = claim(user, 0, now - 20 * TH_NS_PER_S);
    struct th_sweeper sw;
    struct th_sweep_stats st;
    th_sweeper_init(&sw, shm_name, &reg, 10, timeout_ms);
    th_sweep(&sw, now, &st);
    cr_assert_eq(fw.requests, 1);
    cr_assert_eq(st.stale, 1);
    cr_assert_eq(st.kept, 1, "kept %u closed %u released %u", st.kept, st.closed, st.released);
    cr_assert(slot_live(h), "a kept connection keeps its slot");
    cr_assert_eq(atomic_load(&reg.hdr->counters.stale_evictions), 0);
    const char *log = read_log();
    cr_assert_null(strstr(log, "Removing stale connection"), "%s", log);
    char want[128];
    snprintf(want, sizeof(want), "janitor: not evicting %s: ", user);
    cr_assert_not_null(strstr(log, want), "%s", log);
    th_sweeper_close(&sw);
    fake_stop(&fw);
}

/* The worker refuses (it holds input newer than the LastSeen judged). */
Test(sweep, worker_that_heard_from_it_since_keeps_it)
{
    sweep_expecting_kept(ANSWER_KEPT, "late-pinger", 500);
}

/*
 * A worker too slow to answer, but which caught up on its input (stamped
 * LastSeen) meanwhile: the slot is not released behind its back. A slot whose
 * LastSeen did not move is (silent_worker_costs_one_window_per_sweep).
 */
Test(sweep, slow_worker_that_caught_up_keeps_its_slot)
{
    sweep_expecting_kept(TOUCH_SILENT, "caught-up", 100);
}

Test(sweep, silent_worker_costs_one_window_per_sweep)
{
    enum { N = TH_EVICT_WINDOW + 36 };
    struct fake_worker fw = {0};
    fake_start(&fw, 1, NEVER_ANSWER);
    uint64_t now = th_now_ns();
    static struct th_handle h[N];
    for (int i = 0; i < N; i++) {
        char user[16];
        snprintf(user, sizeof(user), "u%d", i);
        h[i] = claim(user, 1, now - 20 * TH_NS_PER_S);
    }
    struct th_sweeper sw;
    struct th_sweep_stats st;
    th_sweeper_init(&sw, shm_name, &reg, 10, 100);
    th_sweep(&sw, now, &st);
    cr_assert_eq(st.stale, N);
    cr_assert_eq(st.released, N, "a worker that does not answer: the janitor frees the slots");
    cr_assert_eq(fw.requests, TH_EVICT_WINDOW,
                 "asked %d times: once it timed out it must not be asked again", fw.requests);
    for (int i = 0; i < N; i++)
        cr_assert_not(slot_live(h[i]));
    cr_assert_eq(atomic_load(&reg.hdr->counters.stale_evictions), N);
    th_sweeper_close(&sw);
    fake_stop(&fw);
}

Test(sweep, many_evictions_pipelined_all_answered)
{
    enum { N = 3 * TH_EVICT_WINDOW + 5 };
    struct fake_worker fw = {0};
    fake_start(&fw, 0, ANSWER_OK);
    uint64_t now = th_now_ns();
    for (int i = 0; i < N; i++) {
        char user[16];
        snprintf(user, sizeof(user), "p%d", i);
        claim(user, 0, now - 20 * TH_NS_PER_S);
    }
    struct th_sweeper sw;
    struct th_sweep_stats st;
    th_sweeper_init(&sw, shm_name, &reg, 10, 1000);
    th_sweep(&sw, now, &st);
    cr_assert_eq(st.stale, N);
    cr_assert_eq(st.closed, N, "closed %u released %u", st.closed, st.released);
    cr_assert_eq(fw.requests, N);
    cr_assert_eq(atomic_load(&reg.hdr->counters.stale_evictions), N);
    th_sweeper_close(&sw);
    fake_stop(&fw);
}

Test(sweep, slots_of_a_dead_worker_go_in_one_sweep)
{
    /* Worker 1 "ran" as a child that has exited: its pid is dead. */
    pid_t pid = fork();
    if (pid == 0)
        _exit(0);
    waitpid(pid, NULL, 0);
    atomic_store(&reg.hdr->workers[1].pid, (int32_t)pid);
    uint64_t now = th_now_ns();
    struct th_handle a = claim("dead-a", 1, now), b = claim("dead-b", 1, now);
    struct th_sweeper sw;
    struct th_sweep_stats st;
    th_sweeper_init(&sw, shm_name, &reg, 10, 100);
    th_sweep(&sw, now, &st);
    cr_assert_eq(st.repaired, 2);
    cr_assert_eq(st.stale, 0, "fresh slots of a dead worker are repaired, not reported stale");
    cr_assert_not(slot_live(a));
    cr_assert_not(slot_live(b));
    th_sweeper_close(&sw);
}
