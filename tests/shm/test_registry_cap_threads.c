/*
 * The per-user cap with claimer threads (the Criterion test uses forked
 * processes, which ThreadSanitizer cannot watch): 4 threads, each its own
 * "worker", claim slots of one user at the same instant with cap 2, 300
 * rounds; after each round at most 2 live, each claim accounted once (live,
 * reported victim, or self-released). Run plain and under TSan, where the
 * claims, gathers and releases racing on the same slots are checked for data
 * races. A plain program (exit 0 = pass), like the stress test.
 */
#include "reg_test.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>

#define THREADS 4
#define PER 8
#define CAP 2
#define ROUNDS 300

static _Atomic int go, ready, released;

static void count(const struct th_conn_info *ci, void *arg)
{
    (void)ci, (void)arg;
    atomic_fetch_add(&released, 1);
}

static void *claimer(void *arg)
{
    struct th_reg r = reg; /* own cursor, like a worker process */
    unsigned w = (unsigned)(uintptr_t)arg;
    r.cursor = w * 64;
    atomic_fetch_add(&ready, 1);
    while (!atomic_load(&go))
        sched_yield(); /* 2 cores, 5 threads */
    for (int k = 0; k < PER; k++) {
        struct th_handle h;
        int rc = th_reg_claim(&r, "burst", 5, (uint16_t)w, (uint32_t)k, 1, CAP, &h, count, NULL);
        check(rc == 0 || rc == 1, "claim: %d", rc);
        if (rc == 1)
            atomic_fetch_add(&released, 1);
    }
    return NULL;
}

int main(void)
{
    char err[256];
    reg_test_name(name, sizeof(name), "capthr");
    check(th_reg_create(&reg, name, 512, err, sizeof(err)) == 0, "create: %s", err);
    for (unsigned w = 0; w < THREADS; w++)
        atomic_store(&reg.hdr->workers[w].pid, getpid());
    for (int round = 0; round < ROUNDS; round++) {
        pthread_t t[THREADS];
        atomic_store(&go, 0), atomic_store(&ready, 0), atomic_store(&released, 0);
        for (unsigned w = 0; w < THREADS; w++)
            check(pthread_create(&t[w], NULL, claimer, (void *)(uintptr_t)w) == 0, "thread");
        while (atomic_load(&ready) < THREADS)
            sched_yield();
        atomic_store(&go, 1);
        for (unsigned w = 0; w < THREADS; w++)
            pthread_join(t[w], NULL);
        struct th_conn_info ci[64];
        int live = th_reg_find_user(&reg, "burst", 5, ci, 64);
        check(live >= 1 && live <= CAP, "round %d: %d live, cap %d", round, live, CAP);
        check(live + atomic_load(&released) == THREADS * PER, "round %d: %d live + %d released",
              round, live, atomic_load(&released));
        check(atomic_load(&reg.hdr->used) == (uint32_t)live, "round %d: used %u", round,
              atomic_load(&reg.hdr->used));
        for (int i = 0; i < live; i++)
            check(th_reg_release(&reg, (struct th_handle){ci[i].slot, ci[i].gen}) == 0, "release");
    }
    printf("cap threads: %d rounds of %d x %d claims, cap %d held\n", ROUNDS, THREADS, PER, CAP);
    th_reg_unlink(name);
    return 0;
}
