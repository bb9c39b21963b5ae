/*
 * The mailbox under kill -9: a forked writer stores self-checking frames
 * for a set of users and, like the notifier, reports each seq (over a pipe)
 * only after th_mbx_commit returned; it is killed with SIGKILL at a random
 * moment, ROUNDS times. Reader processes replay every user the whole time
 * and exit non-zero at the first frame that is not whole, not the user's,
 * out of order or above the user's latest seq. After each kill the parent
 * takes over as writer (repairing what the dead one left) and checks that
 * every reported seq is still below the user's counter (the counter
 * survived) and, for the recent ones the bounds keep, still replayable with
 * recovered true. A plain program: it also runs under ThreadSanitizer.
 */
#include "mbx_test.h"
#include "shm/mailbox_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <time.h>

#define ROUNDS 200
#define USERS 40
#define READERS 2
#define PER_USER 64
#define KEEP 16 /* reported seqs this far below the latest must be replayable */
#define S_NS 1000000000ull

static char shm[96];

static void check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void check(int ok, const char *fmt, ...)
{
    if (ok)
        return;
    va_list ap;
    va_start(ap, fmt);
    fputs("FAIL: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    th_mbx_unlink(shm);
    exit(1);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * S_NS + (uint64_t)ts.tv_nsec;
}

static void user_name(int k, char *buf)
{
    snprintf(buf, 16, "crash-u%d", k);
}

/* The writer: store forever, reporting (user, seq) after each commit. */
static void writer(int fd, unsigned seed)
{
    struct th_mbx m;
    char err[256], f[2048], u[16];
    check(th_mbx_attach(&m, shm, 1, err, sizeof(err)) == 0, "writer attach: %s", err);
    check(th_mbx_writer_begin(&m, getpid(), now_ns(), err, sizeof(err)) == 0, "writer: %s", err);
    srand(seed);
    for (;;) {
        int k = rand() % USERS;
        struct th_mbx_ticket t;
        uint64_t pos;
        user_name(k, u);
        check(th_mbx_prepare(&m, u, strlen(u), now_ns(), &t) == 0, "prepare");
        size_t len = mbx_frame(f, sizeof(f), u, t.seq, 1500);
        int ttl0 = rand() % 16 == 0; /* now and then a notification that is not stored */
        check(th_mbx_commit(&m, &t, f, len, NULL, 0, ttl0 ? 0 : 600 * S_NS, now_ns(), &pos) == 0,
              "commit");
        uint64_t rep[2] = {(uint64_t)k, t.seq | (uint64_t)ttl0 << 63};
        if (write(fd, rep, sizeof(rep)) != (ssize_t)sizeof(rep))
            _exit(3);
    }
}

/* A reader: replay every user over and over; any bad frame fails. */
static void reader(void)
{
    struct th_mbx m;
    static struct th_mbx_replay rp;
    static char buf[TH_MBX_MAX_FRAME];
    char err[256], u[16];
    prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive a failed test */
    if (getppid() == 1)
        _exit(0);
    check(th_mbx_attach(&m, shm, 0, err, sizeof(err)) == 0, "reader attach: %s", err);
    for (unsigned long pass = 0;; pass++) {
        for (int k = 0; k < USERS; k++) {
            struct th_mbx_item it;
            uint64_t prev = 0;
            user_name(k, u);
            check(th_mbx_replay_begin(&m, u, strlen(u), 0, &rp) == 0, "replay_begin");
            while (th_mbx_replay_next(&m, &rp, now_ns(), buf, sizeof(buf), &it) == 1) {
                check(mbx_frame_ok(buf, it.len, u, it.seq), "reader: torn frame %s seq %llu: %.*s",
                      u, (unsigned long long)it.seq, (int)(it.len > 80 ? 80 : it.len), buf);
                check(it.seq > prev, "reader: %s out of order", u);
                check(it.seq <= rp.latest, "reader: %s seq above latest", u);
                prev = it.seq;
            }
            th_mbx_replay_end(&m, &rp);
        }
    }
}

/* Drain what the writer reported; the pipe is non-blocking. */
static void drain(int fd, uint64_t *reported, uint64_t *stored_max)
{
    uint64_t rep[2];
    while (read(fd, rep, sizeof(rep)) == (ssize_t)sizeof(rep)) {
        uint64_t seq = rep[1] & ~(1ull << 63);
        check(rep[0] < USERS && seq > reported[rep[0]], "user %llu seq %llu reported after %llu",
              (unsigned long long)rep[0], (unsigned long long)seq,
              (unsigned long long)reported[rep[0]]);
        reported[rep[0]] = seq;
        if (!(rep[1] >> 63))
            stored_max[rep[0]] = seq;
    }
}

/* After a kill: take over, then every reported seq is below the counter and the recent ones replay.
 */
static void verify(struct th_mbx *m, const uint64_t *reported, const uint64_t *stored_max)
{
    static struct th_mbx_replay rp;
    static char buf[TH_MBX_MAX_FRAME];
    char err[256], u[16];
    check(th_mbx_writer_begin(m, getpid(), now_ns(), err, sizeof(err)) == 0, "take over: %s", err);
    check((atomic_load(&m->hdr->busy_rec)) == TH_MBX_NONE, "busy record not repaired");
    for (int k = 0; k < USERS; k++) {
        struct th_mbx_ticket t;
        struct th_mbx_item it;
        user_name(k, u);
        check(th_mbx_prepare(m, u, strlen(u), now_ns(), &t) == 0, "prepare");
        check(t.seq > reported[k], "%s: next seq %llu not above reported %llu", u,
              (unsigned long long)t.seq, (unsigned long long)reported[k]);
        uint64_t since = stored_max[k] > KEEP ? stored_max[k] - KEEP : 0;
        check(th_mbx_replay_begin(m, u, strlen(u), since, &rp) == 0, "replay_begin");
        uint64_t got_max = 0;
        while (th_mbx_replay_next(m, &rp, now_ns(), buf, sizeof(buf), &it) == 1) {
            check(mbx_frame_ok(buf, it.len, u, it.seq), "after kill: torn frame %s", u);
            got_max = it.seq;
        }
        check(got_max >= stored_max[k], "%s: reported stored seq %llu not replayable (got %llu)", u,
              (unsigned long long)stored_max[k], (unsigned long long)got_max);
        check(th_mbx_replay_end(m, &rp) == 1, "%s: not recovered since %llu", u,
              (unsigned long long)since);
    }
    th_mbx_writer_end(m);
}

int main(void)
{
    struct th_mbx m;
    struct th_mbx_params p = {2u << 20, PER_USER, 256}; /* small: evictions race the readers */
    char err[256];
    int reused, pfd[2];
    uint64_t reported[USERS] = {0}, stored_max[USERS] = {0};
    pid_t readers[READERS];
    mbx_test_name(shm, sizeof(shm), "crash");
    check(th_mbx_open(&m, shm, &p, &reused, err, sizeof(err)) == 0, "open: %s", err);
    for (int r = 0; r < READERS; r++)
        if ((readers[r] = fork()) == 0)
            reader();
    srand((unsigned)time(NULL));
    for (int round = 0; round < ROUNDS; round++) {
        check(pipe2(pfd, O_NONBLOCK | O_CLOEXEC) == 0, "pipe");
        unsigned seed = (unsigned)rand();
        pid_t w = fork();
        if (w == 0) {
            close(pfd[0]);
            fcntl(pfd[1], F_SETFL, 0); /* the writer blocks on a full pipe */
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            writer(pfd[1], seed);
        }
        close(pfd[1]);
        useconds_t pause = (useconds_t)(rand() % 20000);
        for (useconds_t slept = 0; slept < pause; slept += 1000) {
            usleep(1000);
            drain(pfd[0], reported, stored_max);
        }
        kill(w, SIGKILL);
        int st;
        waitpid(w, &st, 0);
        drain(pfd[0], reported, stored_max); /* what it reported before it died */
        close(pfd[0]);
        check(WIFSIGNALED(st), "writer exited by itself (status %d)", st);
        for (int r = 0; r < READERS; r++)
            check(waitpid(readers[r], &st, WNOHANG) == 0, "reader %d failed (status %d)", r, st);
        verify(&m, reported, stored_max);
    }
    uint64_t total = 0;
    for (int k = 0; k < USERS; k++)
        total += reported[k];
    for (int r = 0; r < READERS; r++) {
        int st;
        check(waitpid(readers[r], &st, WNOHANG) == 0, "reader %d failed (status %d)", r, st);
        kill(readers[r], SIGKILL);
        waitpid(readers[r], &st, 0);
    }
    printf("mailbox crash: %d writer kills, %llu seqs reported, %llu stored, evicted %llu, all "
           "frames whole\n",
           ROUNDS, (unsigned long long)total,
           (unsigned long long)atomic_load(&m.hdr->counters.stored),
           (unsigned long long)(atomic_load(&m.hdr->counters.evicted[0]) +
                                atomic_load(&m.hdr->counters.evicted[1]) +
                                atomic_load(&m.hdr->counters.evicted[2])));
    th_mbx_detach(&m);
    th_mbx_unlink(shm);
    return total > 0 ? 0 : 1;
}
