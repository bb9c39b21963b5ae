/*
 * What survivors do about dead writers. A worker killed at any instruction
 * leaves its LIVE slots (its clients are gone with it), maybe one slot in
 * CLAIMING or RELEASING, maybe one disconnect record odd, maybe a freemap
 * hint or a counter off by one. th_reg_reclaim_worker (supervisor, right
 * after waitpid) and th_reg_repair (janitor, every sweep) put all of that
 * right without stopping anybody: every fix is a CAS that fails harmlessly
 * if a live process got there first.
 */
#include "shm/registry_impl.h"

#include <time.h>

#define RELAXED memory_order_relaxed

/* Worker liveness cached per sweep; re-checked whenever the published pid changes. */
struct liveness {
    int32_t pid[TH_MAX_WORKERS];
    unsigned char alive[TH_MAX_WORKERS];
    unsigned char known[TH_MAX_WORKERS];
};

static int worker_alive(const struct th_reg *r, struct liveness *l, uint16_t w)
{
    if (w >= TH_MAX_WORKERS)
        return 0;
    /* Loaded after the slot's ctl (acquire): a new incarnation publishes its
     * pid before its first claim, so its slots never look orphaned. */
    int32_t pid = atomic_load(&r->hdr->workers[w].pid);
    if (!l->known[w] || l->pid[w] != pid) {
        l->pid[w] = pid;
        l->alive[w] = pid > 0 && th_pid_alive(pid);
        l->known[w] = 1;
    }
    return l->alive[w];
}

static int in_transition(uint64_t c)
{
    return th_ctl_state(c) == TH_SLOT_CLAIMING || th_ctl_state(c) == TH_SLOT_RELEASING;
}

/* Finish slot i if a dead actor left it half-way. Returns 1 if released. */
static int finish_dead_transition(struct th_reg *r, uint32_t i, uint64_t c)
{
    if (!in_transition(c) || th_pid_alive(th_ctl_actor(c)))
        return 0;
    if (!th_reg_force_release(r, i, c))
        return 0;
    atomic_fetch_add_explicit(&r->hdr->counters.repairs, 1, RELAXED);
    return 1;
}

int th_reg_reclaim_worker(struct th_reg *r, uint16_t worker)
{
    int n = 0;
    for (uint32_t i = 0; i < r->hdr->nslots; i++) {
        uint64_t c = atomic_load_explicit(&r->slots[i].ctl, memory_order_acquire);
        if (th_ctl_state(c) == TH_SLOT_LIVE && th_ctl_owner(c) == worker)
            n += th_reg_force_release(r, i, c);
        else
            n += finish_dead_transition(r, i, c);
    }
    return n;
}

/* Re-set the free hint of a FREE slot that lost it (a releaser died before setting it). */
static void restore_hint(struct th_reg *r, uint32_t i)
{
    uint64_t bit = 1ull << (i % 64);
    if (!(atomic_load_explicit(&r->freemap[i / 64], RELAXED) & bit))
        atomic_fetch_or_explicit(&r->freemap[i / 64], bit, RELAXED);
}

struct tally {
    uint32_t used, unindexed;
};

/* Repair slot i if needed and count what it is afterwards. Returns 1 if released. */
static int repair_slot(struct th_reg *r, uint32_t i, struct liveness *l, struct tally *t)
{
    uint64_t c = atomic_load_explicit(&r->slots[i].ctl, memory_order_acquire);
    if (th_ctl_state(c) == TH_SLOT_FREE) {
        restore_hint(r, i);
        return 0;
    }
    if (th_ctl_state(c) == TH_SLOT_LIVE && !worker_alive(r, l, th_ctl_owner(c)))
        return th_reg_force_release(r, i, c);
    if (finish_dead_transition(r, i, c))
        return 1;
    t->used++;
    if (atomic_load_explicit(&r->slots[i].flags, RELAXED) & TH_SLOT_F_UNINDEXED)
        t->unindexed++;
    return 0;
}

/* Invalidate disconnect records left odd (mid-write) by a dead writer. */
static void repair_disc(struct th_reg *r)
{
    uint64_t me = (uint64_t)(uint32_t)th_reg_self() << 32;
    for (uint32_t j = 0; j < r->hdr->ndisc; j++) {
        struct th_disc *d = &r->disc[j];
        uint64_t s = atomic_load_explicit(&d->seq, memory_order_acquire);
        if (!(s & 1) || th_pid_alive((pid_t)(s >> 32)))
            continue;
        /* Take it over (still odd, now ours), blank it, then make it even. */
        if (!atomic_compare_exchange_strong(&d->seq, &s, me | (uint32_t)s))
            continue;
        atomic_store_explicit(&d->user_len, 0, RELAXED);
        atomic_store_explicit(&d->user_hash, 0, RELAXED);
        atomic_store_explicit(&d->last_seen, 0, RELAXED);
        atomic_store_explicit(&d->seq, (uint32_t)s + 1, memory_order_release);
        atomic_fetch_add_explicit(&r->hdr->counters.repairs, 1, RELAXED);
    }
}

/*
 * Correct counter drift left by a process killed between a slot CAS and the
 * counter add. Only trusted when no transition ran during the scan and the
 * counters did not move for a moment after it (a live process in that gap
 * finishes its add within microseconds).
 */
static void correct_counters(struct th_reg *r, uint64_t e0, uint32_t u0, uint32_t x0,
                             const struct tally *t)
{
    if (atomic_load(&r->hdr->transitions) != e0 || (t->used == u0 && t->unindexed == x0))
        return;
    struct timespec pause = {0, 2000000};
    nanosleep(&pause, NULL);
    if (atomic_load(&r->hdr->transitions) != e0)
        return;
    atomic_compare_exchange_strong(&r->hdr->used, &u0, t->used);
    atomic_compare_exchange_strong(&r->hdr->unindexed, &x0, t->unindexed);
}

int th_reg_repair(struct th_reg *r)
{
    struct liveness l = {0};
    struct tally t = {0};
    uint32_t u0 = atomic_load(&r->hdr->used), x0 = atomic_load(&r->hdr->unindexed);
    uint64_t e0 = atomic_load(&r->hdr->transitions);
    int released = 0;
    for (uint32_t i = 0; i < r->hdr->nslots; i++)
        released += repair_slot(r, i, &l, &t);
    repair_disc(r);
    if (!released)
        correct_counters(r, e0, u0, x0, &t);
    return released;
}

uint32_t th_reg_count_used(const struct th_reg *r)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < r->hdr->nslots; i++)
        n += th_ctl_state(atomic_load_explicit(&r->slots[i].ctl, RELAXED)) != TH_SLOT_FREE;
    return n;
}
