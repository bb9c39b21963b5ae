/*
 * Crash test of the registry: writers (forked, like workers) claim, touch and
 * release as fast as they can and are killed with SIGKILL at random moments,
 * 200 times (more, up to 2000, until kills have left a half-done slot, an
 * odd disconnect record and a drifted used count: the test fails if they
 * never do, since it would have exercised no repair). After each
 * kill the survivors recover the way tether does: like the supervisor (zero
 * the pid, th_reg_reclaim_worker), like the janitor (th_reg_repair with the
 * dead pid still published), or both. The test then checks that the
 * registry is whole: every slot FREE or LIVE with a live owner, every index
 * entry pointing at a live slot of the right user, the used count equal to
 * the slots in use, no disconnect record left odd, and every free slot
 * claimable again. The test process's own connections must survive it all.
 * The writers' users crowd one index line, so first lines fill and entries
 * spill into second lines all the time; right after each kill, before any
 * repair, every line's spill count must be at least the entries that spilled
 * from it, its back count at least the entries on its back cache line, and
 * every LIVE slot must be found by every lookup (a spill count
 * too low would hide connections; one left too high only costs a line).
 * The notify path's lookup (th_reg_find_owners, the index alone) is checked
 * there too, as the owner workers settle it: every index entry of a LIVE
 * slot names that slot's owner and its user's hash, and the candidates
 * th_reg_confirm accepts are exactly th_reg_find_user's slots, while the
 * ones it refuses (entries of slots a killed writer left CLAIMING or
 * RELEASING) are counted.
 *
 * A plain program (exit 0 = pass), like the stress test.
 */
#include "reg_test.h"
#include "shm/rt/clock.h"
#include "shm/registry_impl.h"

#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>

#define NSLOTS 1024
#define ROUNDS 200
#define MAX_ROUNDS 2000 /* more rounds only until every kind of damage was seen */
#define KEEPERS 20
#define KEEPER_WORKER 63
#define POOL 40 /* users the writers share */
#define HOLD 16 /* connections a writer holds at most */

static struct th_handle keepers[KEEPERS];
static uint32_t pool[POOL]; /* test_user keys of the writers' users, crowding one line */

static uint32_t next_rand(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return (uint32_t)(*s >> 16);
}

/* ---- the writer that gets killed ---- */

static void writer_step(struct th_reg *r, uint16_t w, uint64_t *rng, struct th_handle *h, int *n)
{
    char user[TH_USER_MAX + 1];
    uint32_t dice = next_rand(rng) % 8;
    if (*n > 0 && dice < 2) {
        th_reg_touch(r, h[next_rand(rng) % (uint32_t)*n], th_now_ns());
    } else if (*n < HOLD && dice < 5) {
        size_t len = test_user(pool[next_rand(rng) % POOL], user);
        if (th_reg_claim(r, user, len, w, 0, th_now_ns(), 3, &h[*n], NULL, NULL) == 0)
            (*n)++;
    } else if (*n > 0) {
        int i = (int)(next_rand(rng) % (uint32_t)*n);
        th_reg_release(r, h[i]);
        h[i] = h[--*n];
    }
}

static void writer_main(uint16_t w, uint64_t seed)
{
    struct th_reg r = reg; /* a forked worker's own cursor */
    struct th_handle h[HOLD];
    int n = 0;
    uint64_t rng = seed | 1;
    r.cursor = next_rand(&rng) % NSLOTS;
    atomic_store(&reg.hdr->workers[w].pid, getpid()); /* before the first claim */
    for (;;)
        writer_step(&r, w, &rng, h, &n);
}

/* ---- checks ---- */

static int in_window(uint32_t b, uint32_t hash)
{
    for (uint32_t k = 0; k < th_reg_window(); k++)
        if (th_reg_bucket(&reg, hash, k) == b)
            return 1;
    return 0;
}

static void check_keepers(void)
{
    for (int k = 0; k < KEEPERS; k++) {
        struct th_conn_info ci;
        check(th_reg_read(&reg, keepers[k].slot, &ci) == 1 && ci.gen == keepers[k].gen &&
                  ci.worker == KEEPER_WORKER,
              "keeper %d (slot %u) lost", k, keepers[k].slot);
    }
}

/* After recovery: nothing of the dead writers is left, nothing is half-done. */
static void check_round(uint16_t w0, uint16_t w1, int round)
{
    for (uint32_t i = 0; i < NSLOTS; i++) {
        uint64_t c = atomic_load(&reg.slots[i].ctl);
        uint8_t st = th_ctl_state(c);
        check(st == TH_SLOT_FREE || st == TH_SLOT_LIVE, "round %d: slot %u left %s", round, i,
              th_slot_state_name(st));
        check(st != TH_SLOT_LIVE || (th_ctl_owner(c) != w0 && th_ctl_owner(c) != w1),
              "round %d: slot %u still owned by dead worker %u", round, i, th_ctl_owner(c));
    }
    check_keepers();
}

static void check_index(void)
{
    for (uint32_t b = 0; b < reg.hdr->nbuckets; b++) {
        uint64_t v = atomic_load(&reg.index[b]);
        struct th_conn_info ci;
        if (v == 0 || th_reg_is_spill(b))
            continue;
        uint32_t i = th_index_slot(v);
        check(i < NSLOTS && th_reg_read(&reg, i, &ci), "bucket %u points at a dead slot", b);
        uint32_t h = th_user_hash(ci.user, ci.user_len);
        check(in_window(b, h) && v == th_index_entry(h, ci.worker, i),
              "bucket %u: wrong window, hash or owner", b);
        check(atomic_load(&reg.slots[i].bucket) == b, "slot %u does not own bucket %u", i, b);
    }
}

static void check_slots(void)
{
    uint32_t live = 0;
    for (uint32_t i = 0; i < NSLOTS; i++) {
        uint64_t c = atomic_load(&reg.slots[i].ctl);
        if (th_ctl_state(c) == TH_SLOT_FREE)
            continue;
        check(th_ctl_state(c) == TH_SLOT_LIVE && th_ctl_owner(c) == KEEPER_WORKER,
              "slot %u: %s, owner %u", i, th_slot_state_name(th_ctl_state(c)), th_ctl_owner(c));
        struct th_conn_info ci[4];
        struct th_conn_info me;
        check(th_reg_read(&reg, i, &me) == 1, "slot %u unreadable", i);
        int n = th_reg_find_user(&reg, me.user, me.user_len, ci, 4);
        check(n == 1 && ci[0].slot == i, "slot %u not found by its user", i);
        live++;
    }
    check(live == KEEPERS, "%u live slots, expected the %d keepers", live, KEEPERS);
    check(atomic_load(&reg.hdr->used) == live, "used %u, slots in use %u",
          atomic_load(&reg.hdr->used), live);
    check(atomic_load(&reg.hdr->unindexed) == 0, "unindexed %u", atomic_load(&reg.hdr->unindexed));
    for (uint32_t d = 0; d < reg.hdr->ndisc; d++)
        check((atomic_load(&reg.disc[d].seq) & 1) == 0, "disconnect record %u left odd", d);
}

/* Every free slot can be claimed again, and given back. */
static void check_all_claimable(void)
{
    static struct th_handle h[NSLOTS];
    uint32_t n = 0;
    while (th_reg_claim(&reg, "refill", 6, KEEPER_WORKER, 0, 1, 0, &h[n], NULL, NULL) == 0)
        n++;
    check(n == NSLOTS - KEEPERS, "claimed %u free slots, expected %d", n, NSLOTS - KEEPERS);
    for (uint32_t i = 0; i < n; i++)
        check(th_reg_release(&reg, h[i]) == 0, "release refill %u", i);
    check(atomic_load(&reg.hdr->used) == KEEPERS, "used %u after refill",
          atomic_load(&reg.hdr->used));
    check(atomic_load(&reg.hdr->unindexed) == 0,
          "unindexed %u after refill (one user, full windows)", atomic_load(&reg.hdr->unindexed));
}

/* ---- the rounds ---- */

struct stats {
    int half_done_slots, odd_records, drifted_rounds;
    int spilled_rounds, spill_high_rounds; /* kills with entries spilled / a count left high */
    int drift_recounted; /* drifted rounds whose repair recounted (and had to fix) used */
    int refused;         /* find_owners candidates the owner's check refused, after kills */
};

/* Every kind of damage a kill can leave was left at least once. */
static int saw_every_damage(const struct stats *s)
{
    return s->half_done_slots > 0 && s->odd_records > 0 && s->drift_recounted > 0;
}

/* Right after a kill: no spill count below its entries, every LIVE slot found by its user. */
static void check_lookups_after_kill(struct stats *s, int round)
{
    int spilled = 0, high = 0;
    for (uint32_t l = 0; l < reg.hdr->nbuckets / TH_REG_LINE; l++) {
        uint32_t want = reg_test_spilled_from(&reg, l), back = reg_test_back_of(&reg, l);
        uint64_t counts = atomic_load(&reg.index[l * TH_REG_LINE]);
        uint32_t got = th_reg_count_spill(counts), got_back = th_reg_count_back(counts);
        check(got >= want, "round %d: line %u spill count %u below its %u spilled entries", round,
              l, got, want);
        check(got_back >= back, "round %d: line %u back count %u below its %u back entries", round,
              l, got_back, back);
        spilled |= want > 0;
        high |= got > want || got_back > back;
    }
    s->spilled_rounds += spilled;
    s->spill_high_rounds += high;
    for (uint32_t b = 0; b < reg.hdr->nbuckets; b++) { /* an entry of a LIVE slot names its owner */
        uint64_t v = atomic_load(&reg.index[b]);
        struct th_conn_info ci;
        if (th_reg_is_spill(b) || v == 0 || !th_reg_read(&reg, th_index_slot(v), &ci))
            continue;
        check(th_index_worker(v) == ci.worker &&
                  th_index_tag_matches(v, th_user_hash(ci.user, ci.user_len)),
              "round %d: bucket %u names worker %u for slot %u of worker %u (or another hash)",
              round, b, th_index_worker(v), ci.slot, ci.worker);
    }
    for (uint32_t i = 0; i < NSLOTS; i++) {
        struct th_conn_info me, ci[8];
        struct th_conn_ref cr[8];
        struct th_owner_ref ow[64];
        if (!th_reg_read(&reg, i, &me))
            continue;
        int owners = th_reg_find_owners(&reg, me.user, me.user_len, ow, 64);
        int confirmed = reg_test_confirmed(&reg, me.user, me.user_len, cr, 8), found = 0;
        for (int j = 0; j < confirmed; j++)
            found |= cr[j].slot == i && cr[j].gen == me.gen && cr[j].worker == me.worker;
        check(found, "round %d: live slot %u not confirmed through th_reg_find_owners", round, i);
        check(confirmed == th_reg_find_user(&reg, me.user, me.user_len, ci, 8),
              "round %d: %d confirmed candidates of slot %u's user, find_user says otherwise",
              round, confirmed, i);
        s->refused += owners - confirmed;
        int n = th_reg_find_user(&reg, me.user, me.user_len, ci, 8);
        found = 0;
        for (int j = 0; j < n && j < 8; j++)
            found |= ci[j].slot == i && ci[j].gen == me.gen;
        check(found, "round %d: live slot %u not found by th_reg_find_user", round, i);
        n = th_reg_find_conns(&reg, me.user, me.user_len, cr, 8), found = 0;
        for (int j = 0; j < n; j++)
            found |= cr[j].slot == i && cr[j].gen == me.gen && cr[j].worker == me.worker;
        check(found, "round %d: live slot %u not found by th_reg_find_conns", round, i);
    }
}

/* What the kill left: counted before recovery. Returns 1 if the used count drifted. */
static int note_damage(struct stats *s, int round)
{
    check_lookups_after_kill(s, round);
    uint32_t busy = th_reg_count_used(&reg);
    int drift = busy != atomic_load(&reg.hdr->used);
    s->drifted_rounds += drift;
    for (uint32_t i = 0; i < NSLOTS; i++) {
        uint8_t st = th_ctl_state(atomic_load(&reg.slots[i].ctl));
        s->half_done_slots += st == TH_SLOT_CLAIMING || st == TH_SLOT_RELEASING;
    }
    for (uint32_t d = 0; d < reg.hdr->ndisc; d++)
        s->odd_records += atomic_load(&reg.disc[d].seq) & 1;
    return drift;
}

/* Returns what the janitor's repair released, or -1 if no repair ran. */
static int recover(uint16_t w[2], int mode)
{
    if (mode != 1) { /* the supervisor after waitpid */
        for (int j = 0; j < 2; j++) {
            atomic_store(&reg.hdr->workers[w[j]].pid, 0);
            th_reg_reclaim_worker(&reg, w[j]);
        }
    }
    if (mode != 0) /* the janitor's sweep, maybe with the dead pids still published */
        return th_reg_repair(&reg);
    return -1;
}

static void round_once(int round, uint64_t *rng, struct stats *s)
{
    uint16_t w[2] = {(uint16_t)(round % 30 * 2), (uint16_t)(round % 30 * 2 + 1)};
    pid_t kid[2];
    for (int j = 0; j < 2; j++) {
        uint64_t seed = ((uint64_t)round << 8) + (uint64_t)j * 977 + 12345;
        kid[j] = fork();
        check(kid[j] >= 0, "fork");
        if (kid[j] == 0)
            writer_main(w[j], seed);
    }
    struct timespec t = {0, (long)(200 + next_rand(rng) % 3000) * 1000};
    nanosleep(&t, NULL);
    for (int j = 0; j < 2; j++) {
        kill(kid[j], SIGKILL);
        waitpid(kid[j], NULL, 0);
    }
    int drift = note_damage(s, round);
    int released = recover(w, round % 3);
    if (released == 0) {
        /* A repair that released nothing recounts used (the writers are dead: quiet). */
        check(atomic_load(&reg.hdr->used) == th_reg_count_used(&reg),
              "round %d: used %u after the repair's recount, %u slots in use", round,
              atomic_load(&reg.hdr->used), th_reg_count_used(&reg));
        s->drift_recounted += drift;
    }
    check_round(w[0], w[1], round);
}

int main(void)
{
    char err[256];
    reg_test_name(name, sizeof(name), "crash");
    check(th_reg_create(&reg, name, NSLOTS, err, sizeof(err)) == 0, "create: %s", err);
    atomic_store(&reg.hdr->workers[KEEPER_WORKER].pid, getpid());
    for (uint32_t p = 0, k = 0; p < POOL; p++, k++)
        check((pool[p] = k = test_user_crowded(&reg, k, 1u << 30, 1)) != UINT32_MAX, "crowd");
    for (int k = 0; k < KEEPERS; k++) {
        char user[TH_USER_MAX + 1];
        size_t len = test_user(5000 + (uint32_t)k, user);
        check(th_reg_claim(&reg, user, len, KEEPER_WORKER, 0, 1, 0, &keepers[k], NULL, NULL) == 0,
              "keeper");
    }
    uint64_t rng = 0x2545F4914F6CDD1Dull;
    struct stats s = {0};
    int rounds = 0;
    while (rounds < ROUNDS || (!saw_every_damage(&s) && rounds < MAX_ROUNDS))
        round_once(rounds++, &rng, &s);
    /* Kills that never landed mid-operation would have tested no repair at all. */
    check(s.spilled_rounds > 0, "%d rounds and no kill found an entry spilled", rounds);
    check(saw_every_damage(&s),
          "%d rounds and no kill left each kind of damage: %d half-done slots, %d odd records, "
          "%d drifted rounds recounted",
          rounds, s.half_done_slots, s.odd_records, s.drift_recounted);
    th_reg_repair(&reg); /* quiet now: also corrects counter drift */
    check_slots();
    check_index();
    check_keepers();
    check_all_claimable();
    printf("crash: %d rounds; kills left %d half-done slots, %d odd disconnect records, "
           "counter drift in %d rounds (%d recounted in the round); spilled entries in %d rounds, "
           "a spill count left high in %d; index candidates refused by the owner's check %d; "
           "repairs counted %llu; all recovered\n",
           rounds, s.half_done_slots, s.odd_records, s.drifted_rounds, s.drift_recounted,
           s.spilled_rounds, s.spill_high_rounds, s.refused,
           (unsigned long long)atomic_load(&reg.hdr->counters.repairs));
    th_reg_unlink(name);
    return 0;
}
