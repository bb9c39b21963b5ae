/*
 * The per-user cap under concurrency, with real processes: forked claimers
 * (each a "worker" with its own index and published pid) start at the same
 * instant and claim many slots of one user with --max-conns-per-user N. After
 * every burst the user holds at most N live slots, and every claim is
 * accounted for exactly once: live, released as a victim (reported to the
 * claimer that released it) or released by its own claim (return 1). Then
 * claimers killed with SIGKILL mid-burst: after the supervisor's reclaim the
 * cap holds again and nothing is left half-done or leaked.
 */
#include <criterion/criterion.h>

#include "reg_test.h"
#include "shm/rt/clock.h"

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>

#define MAX_CLAIMERS 8
#define KEEPER_WORKER 60

/* What the claimers report, in a shared anonymous page. */
struct board {
    _Atomic int ready, go;
    _Atomic int partner_dead; /* set once claimer 0 is reaped */
    _Atomic int claimed[MAX_CLAIMERS], victims[MAX_CLAIMERS], selves[MAX_CLAIMERS];
};

static struct board *board;

static void setup(void)
{
    board = mmap(NULL, sizeof(*board), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(board, MAP_FAILED);
}

static void teardown(void)
{
    munmap(board, sizeof(*board));
    reg_test_fini();
}

TestSuite(registry_cap, .init = setup, .fini = teardown);

static void count_victim(const struct th_conn_info *ci, void *arg)
{
    (void)ci;
    atomic_fetch_add((_Atomic int *)arg, 1);
}

/*
 * A claimer: publish the pid, wait for the start, claim m slots; m = -1:
 * until killed; m = -2: until ten claims after board->partner_dead.
 */
static void claimer(int j, int m, uint32_t cap, const char *user)
{
    atomic_store(&reg.hdr->workers[j].pid, getpid());
    atomic_fetch_add(&board->ready, 1);
    while (!atomic_load(&board->go))
        sched_yield(); /* two cores shared with the parent and the other claimers */
    int after = 0;
    for (int k = 0; m < 0 || k < m; k++) {
        if (m == -2 && atomic_load(&board->partner_dead) && ++after > 10)
            break;
        struct th_handle h;
        int rc = th_reg_claim(&reg, user, strlen(user), (uint16_t)j, (uint32_t)k, th_now_ns(), cap,
                              &h, count_victim, &board->victims[j]);
        if (rc >= 0)
            atomic_fetch_add(&board->claimed[j], 1);
        if (rc == 1)
            atomic_fetch_add(&board->selves[j], 1);
    }
    _exit(0);
}

static void start(pid_t *kids, int nk, int m, uint32_t cap, const char *user)
{
    atomic_store(&board->ready, 0);
    atomic_store(&board->go, 0);
    atomic_store(&board->partner_dead, 0);
    for (int j = 0; j < MAX_CLAIMERS; j++)
        board->claimed[j] = board->victims[j] = board->selves[j] = 0;
    for (int j = 0; j < nk; j++) {
        kids[j] = fork();
        cr_assert_geq(kids[j], 0, "fork");
        if (kids[j] == 0)
            claimer(j, m, cap, user);
    }
    while (atomic_load(&board->ready) < nk)
        sched_yield();
    atomic_store(&board->go, 1);
}

static int live_of(const char *user)
{
    static struct th_conn_info ci[1024];
    return th_reg_find_user(&reg, user, strlen(user), ci, 1024);
}

/* Every slot FREE or LIVE, and the used count equal to the live slots. */
static void assert_whole(uint32_t expect_used)
{
    uint32_t live = 0;
    for (uint32_t i = 0; i < reg.hdr->nslots; i++) {
        uint8_t st = th_ctl_state(atomic_load(&reg.slots[i].ctl));
        cr_assert(st == TH_SLOT_FREE || st == TH_SLOT_LIVE, "slot %u left %s", i,
                  th_slot_state_name(st));
        live += st == TH_SLOT_LIVE;
    }
    cr_assert_eq(live, expect_used, "live slots %u, expected %u", live, expect_used);
    cr_assert_eq(atomic_load(&reg.hdr->used), live, "used %u, live %u", atomic_load(&reg.hdr->used),
                 live);
}

/* Release every slot the user still holds (between rounds). */
static void clear_user(const char *user)
{
    static struct th_conn_info ci[1024];
    int n = th_reg_find_user(&reg, user, strlen(user), ci, 1024);
    for (int i = 0; i < n; i++)
        cr_assert_eq(th_reg_release(&reg, (struct th_handle){ci[i].slot, ci[i].gen}), 0);
}

/* nk claimers, m claims each, cap n, `rounds` times: at most n live, each claim counted once. */
static void burst(int nk, int m, uint32_t n, int rounds)
{
    char user[32];
    snprintf(user, sizeof(user), "burst-%d-%d-%u", nk, m, n);
    int under = 0;
    for (int r = 0; r < rounds; r++) {
        pid_t kids[MAX_CLAIMERS];
        start(kids, nk, m, n, user);
        for (int j = 0; j < nk; j++)
            waitpid(kids[j], NULL, 0);
        int live = live_of(user), claimed = 0, released = 0;
        for (int j = 0; j < nk; j++) {
            claimed += board->claimed[j];
            released += board->victims[j] + board->selves[j];
        }
        cr_assert_eq(claimed, nk * m, "round %d: every claim got a slot", r);
        cr_assert(live >= 1 && (uint32_t)live <= n, "round %d: %d live slots, cap %u", r, live, n);
        cr_assert_eq(live + released, claimed,
                     "round %d: %d live + %d released != %d claimed (a release reported twice or "
                     "never)",
                     r, live, released, claimed);
        under += (uint32_t)live < n;
        assert_whole((uint32_t)live);
        clear_user(user);
    }
    cr_log_info("burst %d x %d, cap %u: %d rounds, %d ended under the cap (a victim chosen from "
                "a view older than another claim's)",
                nk, m, n, rounds, under);
}

Test(registry_cap, twenty_at_once_over_two_claimers_cap_2)
{
    reg_test_create(&reg, name, sizeof(name), "cap20", 256);
    burst(2, 10, 2, 100);
}

Test(registry_cap, sixty_four_at_once_over_two_claimers_cap_2)
{
    reg_test_create(&reg, name, sizeof(name), "cap64", 256);
    burst(2, 32, 2, 60);
}

Test(registry_cap, eight_claimers_cap_1_and_cap_5)
{
    reg_test_create(&reg, name, sizeof(name), "cap8", 256);
    burst(8, 8, 1, 30);
    burst(8, 8, 5, 30);
}

/* The cap keeps other users out of it: a flood of one user leaves the rest of the table free. */
Test(registry_cap, one_user_cannot_fill_the_registry)
{
    reg_test_create(&reg, name, sizeof(name), "capfill", 64);
    pid_t kids[MAX_CLAIMERS];
    start(kids, 4, 64, 2, "greedy");
    for (int j = 0; j < 4; j++)
        waitpid(kids[j], NULL, 0);
    cr_assert_leq(live_of("greedy"), 2);
    for (int i = 0; i < 60; i++) {
        char u[16];
        snprintf(u, sizeof(u), "other%d", i);
        struct th_handle h;
        cr_assert_eq(th_reg_claim(&reg, u, strlen(u), KEEPER_WORKER, 0, 1, 2, &h, NULL, NULL), 0,
                     "user %d refused after the flood", i);
    }
}

/*
 * Claimers killed with SIGKILL at random moments of a never-ending burst,
 * beside keepers of the same user owned by this process. After the
 * supervisor's reclaim of the dead workers (pid zeroed, th_reg_reclaim_worker)
 * the user is within the cap, no slot is half-done, the count matches.
 */
Test(registry_cap, claimers_killed_mid_burst_leave_the_cap_holding)
{
    reg_test_create(&reg, name, sizeof(name), "capkill", 512);
    atomic_store(&reg.hdr->workers[KEEPER_WORKER].pid, getpid());
    uint64_t rng = 0x9E3779B97F4A7C15ull;
    const uint32_t cap = 3;
    for (int round = 0; round < 60; round++) {
        for (int k = 0; k < 3; k++) {
            struct th_handle h;
            cr_assert_geq(
                th_reg_claim(&reg, "victim", 6, KEEPER_WORKER, (uint32_t)k, 1, cap, &h, NULL, NULL),
                0);
        }
        pid_t kids[MAX_CLAIMERS];
        start(kids, 2, -1, cap, "victim");
        rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
        struct timespec t = {0, (long)(50 + rng % 2000) * 1000};
        nanosleep(&t, NULL);
        for (int j = 0; j < 2; j++) {
            kill(kids[j], SIGKILL);
            waitpid(kids[j], NULL, 0);
        }
        for (int j = 0; j < 2; j++) { /* the supervisor after waitpid */
            atomic_store(&reg.hdr->workers[j].pid, 0);
            th_reg_reclaim_worker(&reg, (uint16_t)j);
        }
        th_reg_repair(&reg); /* the janitor: also corrects counter drift */
        int live = live_of("victim");
        cr_assert_leq(live, (int)cap, "round %d: %d live after the kill", round, live);
        assert_whole((uint32_t)live);
        clear_user("victim");
    }
}

/*
 * One claimer killed mid-burst, the other alive and claiming on: the
 * survivor's later claims keep the cap, counting the dead one's slots, and
 * the reclaim of the dead worker only lowers the count.
 */
Test(registry_cap, a_survivor_keeps_the_cap_beside_a_dead_claimer)
{
    reg_test_create(&reg, name, sizeof(name), "capsurv", 256);
    for (int round = 0; round < 30; round++) {
        pid_t kids[2];
        atomic_store(&board->ready, 0);
        atomic_store(&board->go, 0);
        atomic_store(&board->partner_dead, 0);
        kids[0] = fork();
        cr_assert_geq(kids[0], 0);
        if (kids[0] == 0)
            claimer(0, -1, 2, "pair");
        kids[1] = fork();
        cr_assert_geq(kids[1], 0);
        if (kids[1] == 0)
            claimer(1, -2, 2, "pair");
        while (atomic_load(&board->ready) < 2)
            sched_yield();
        atomic_store(&board->go, 1);
        struct timespec t = {0, (long)(100 + round * 37) * 1000};
        nanosleep(&t, NULL);
        kill(kids[0], SIGKILL);
        waitpid(kids[0], NULL, 0);
        atomic_store(&board->partner_dead, 1);
        waitpid(kids[1], NULL, 0);
        cr_assert_leq(live_of("pair"), 2, "round %d: survivor over the cap", round);
        atomic_store(&reg.hdr->workers[0].pid, 0);
        th_reg_reclaim_worker(&reg, 0);
        atomic_store(&reg.hdr->workers[1].pid, getpid()); /* the survivor's worker lives on */
        th_reg_repair(&reg); /* the janitor: also corrects counter drift */
        int live = live_of("pair");
        cr_assert(live >= 1 && live <= 2, "round %d: %d live after the reclaim", round, live);
        assert_whole((uint32_t)live);
        clear_user("pair");
    }
}
