/*
 * tether-bench-mailbox: what the mailbox costs the notifier per notification
 * and a resuming worker per replayed one, and what a stored notification
 * costs in shared memory. Not a test: it asserts nothing and prints medians
 * of several runs (this thread's CPU time, so a shared machine does not
 * charge it for others' time).
 *
 *   tether-bench-mailbox [--users N] [--runs R] [--frame BYTES]
 *
 * store:   th_mbx_prepare + th_mbx_commit of one frame (the notifier's path
 *          before a handoff), users in random order, the default 64 MiB
 *          object wrapping its log many times (evictions included)
 * find_id: the idempotency lookup of a request id (a miss: the common case)
 * replay:  th_mbx_replay_begin + _next over a user's 64 stored frames
 */
#include "shm/mailbox.h"
#include "shm/rt/clock.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_RUNS 15

static uint64_t cpu_ns(void)
{
    return th_clock_ns(CLOCK_THREAD_CPUTIME_ID);
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(*v), cmp_d);
    return v[n / 2];
}

int main(int argc, char **argv)
{
    uint32_t nusers = 10000, runs = 5, flen = 200;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--users"))
            nusers = (uint32_t)atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--runs"))
            runs = (uint32_t)atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--frame"))
            flen = (uint32_t)atoi(argv[i + 1]);
    }
    if (runs < 1 || runs > MAX_RUNS || nusers < 1 || flen < 16 || flen > 60000) {
        fprintf(stderr,
                "usage: tether-bench-mailbox [--users N] [--runs 1..15] [--frame 16..60000]\n");
        return 2;
    }
    char name[64], err[256], id[33], user[32];
    snprintf(name, sizeof(name), "/tether-bench-mbx-%d", (int)getpid());
    struct th_mbx m;
    struct th_mbx_params p = {64ull << 20, 64, 0};
    int reused;
    if (th_mbx_open(&m, name, &p, &reused, err, sizeof(err)) < 0 ||
        th_mbx_writer_begin(&m, getpid(), th_now_ns(), err, sizeof(err)) < 0) {
        fprintf(stderr, "tether-bench-mailbox: %s\n", err);
        return 1;
    }
    char *frame = malloc(flen);
    static char buf[TH_MBX_MAX_FRAME];
    struct th_mbx_replay *rp = malloc(sizeof(*rp));
    memset(frame, 'x', flen);
    double store[MAX_RUNS], find[MAX_RUNS], replay[MAX_RUNS];
    uint64_t rng = 88172645463325252ull, ops = 200000, stored = 0;
    for (uint32_t r = 0; r < runs; r++) {
        uint64_t now = th_now_ns(), t0 = cpu_ns();
        for (uint64_t k = 0; k < ops; k++) {
            rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
            int ul = snprintf(user, sizeof(user), "bench-user-%u", (unsigned)(rng % nusers));
            int il = snprintf(id, sizeof(id), "%016llx%016llx", (unsigned long long)rng,
                              (unsigned long long)k);
            struct th_mbx_ticket t;
            uint64_t pos;
            th_mbx_prepare(&m, user, (size_t)ul, now, &t);
            th_mbx_commit(&m, &t, frame, flen, id, (size_t)il, 120 * TH_NS_PER_S, now, &pos);
            stored += pos != 0;
        }
        store[r] = (double)(cpu_ns() - t0) / (double)ops;
        t0 = cpu_ns();
        for (uint64_t k = 0; k < ops; k++) {
            struct th_mbx_hit h;
            int ul = snprintf(user, sizeof(user), "bench-user-%u", (unsigned)(k % nusers));
            th_mbx_find_id(&m, user, (size_t)ul, "no-such-request-id", 18, now, &h);
        }
        find[r] = (double)(cpu_ns() - t0) / (double)ops;
        uint64_t frames = 0;
        t0 = cpu_ns();
        for (uint32_t u = 0; u < 2000; u++) {
            struct th_mbx_item it;
            int ul = snprintf(user, sizeof(user), "bench-user-%u", u % nusers);
            th_mbx_replay_begin(&m, user, (size_t)ul, 0, rp);
            while (th_mbx_replay_next(&m, rp, now, buf, sizeof(buf), &it) == 1)
                frames++;
        }
        replay[r] = frames ? (double)(cpu_ns() - t0) / (double)frames : 0;
    }
    struct th_mbx_stats st;
    th_mbx_stats(&m, &st);
    printf("mailbox 64 MiB, %u users (%u records x %u), frame %u B + 32 B id, %u runs (medians)\n",
           nusers, st.nusers, st.per_user, flen, runs);
    printf("store (prepare+commit)   %.0f ns\n", median(store, (int)runs));
    printf("find_id (miss)           %.0f ns\n", median(find, (int)runs));
    printf("replay per frame         %.0f ns\n", median(replay, (int)runs));
    printf("shm per stored entry     %.0f B (log) + 8 B (ring ref); %llu entries held, %.1f MiB\n",
           st.entries ? (double)st.bytes / (double)st.entries : 0.0, (unsigned long long)st.entries,
           (double)st.bytes / (1 << 20));
    printf("evicted: ttl %llu, full %llu, per_user %llu of %llu stored\n",
           (unsigned long long)atomic_load(&m.hdr->counters.evicted[TH_MBX_EV_TTL]),
           (unsigned long long)atomic_load(&m.hdr->counters.evicted[TH_MBX_EV_FULL]),
           (unsigned long long)atomic_load(&m.hdr->counters.evicted[TH_MBX_EV_PER_USER]),
           (unsigned long long)stored);
    th_mbx_writer_end(&m);
    th_mbx_detach(&m);
    th_mbx_unlink(name);
    free(rp);
    free(frame);
    return 0;
}
