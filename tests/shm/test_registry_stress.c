/*
 * Multi-process stress of the registry: forked writers (like workers)
 * claim, touch and release while reader threads (like the notifier and the
 * janitor) look users up and copy slots, checking on every read that what
 * they got is whole: the user id is exactly the one its own bytes name, the
 * conn_id and worker agree with it, no user has more connections than its
 * writer ever holds, and the used count never exceeds what can be claimed.
 * One writer runs as a thread of the test process, so ThreadSanitizer (this
 * test carries the "tsan" label) sees its stores race with the readers'
 * seqlock copies. At least a million operations in all. At the end the
 * registry must be empty before any repair runs (the writers released
 * everything), and the repair must find nothing to release. The users
 * crowd a quarter of the index lines, so entries spill into second lines
 * and some windows fill (lookups scan) while readers look them up with both
 * th_reg_find_user, th_reg_find_conns and the notify path's
 * th_reg_find_owners + th_reg_confirm; every spill
 * count must be back to 0 at the end.
 *
 * A plain program (exit 0 = pass), not Criterion: Criterion cannot start
 * under ThreadSanitizer (Snaipe/Criterion#274).
 */
#include "reg_test.h"
#include "shm/registry_impl.h"

#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>

#define NSLOTS 448
#define FORKED_WRITERS 2
#define WRITERS (FORKED_WRITERS + 1) /* the last one is a thread */
#define USERS 64                     /* per writer */
#define PER_USER 2                   /* connections a writer holds per user at most */
#if defined(__SANITIZE_THREAD__)
#define WRITER_OPS 340000 /* TSan is ~30x slower; writes alone still pass a million */
#else
#define WRITER_OPS 600000
#endif
#define READERS 2

static _Atomic int writers_left;
static _Atomic unsigned long read_ops, violations, spilled_reads;
static char first_violation[256];
/* Claims ever started per user key, shared with the forked writers (MAP_SHARED). */
static _Atomic uint32_t *claims_started;
#define MAX_KEY (WRITERS * 1000)

static void violation(const char *what, uint32_t a, uint32_t b)
{
    if (atomic_fetch_add(&violations, 1) == 0)
        snprintf(first_violation, sizeof(first_violation), "%s (%u, %u)", what, a, b);
}

/* Writer w's user u has key keys[w][u], in w*1000..w*1000+999 (u >= USERS: never claimed). */
static uint32_t keys[WRITERS][USERS + 4];

static uint32_t user_key(unsigned w, unsigned u)
{
    return keys[w][u];
}

static void crowd_keys(void)
{
    uint32_t lines = reg.hdr->nbuckets / TH_REG_LINE / 4;
    for (unsigned w = 0; w < WRITERS; w++)
        for (uint32_t u = 0, k = w * 1000; u < USERS + 4; u++, k++) {
            k = test_user_crowded(&reg, k, w * 1000 + 1000, lines);
            check(k != UINT32_MAX, "not enough crowded user ids for writer %u", w);
            keys[w][u] = k;
        }
}

static uint32_t next_rand(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return (uint32_t)(*s >> 16);
}

/* ---- writers ---- */

struct writer {
    struct th_reg r; /* own copy: the claim cursor is per process (here per thread) */
    unsigned w;
    uint64_t rng, now;
    struct th_handle h[USERS][PER_USER];
    int n[USERS];
    int errors;
};

static void writer_claim(struct writer *wr, unsigned u)
{
    char user[TH_USER_MAX + 1];
    uint32_t k = user_key(wr->w, u);
    size_t len = test_user(k, user);
    atomic_fetch_add(&claims_started[k], 1); /* before the claim: readers bound by it */
    int rc = th_reg_claim(&wr->r, user, len, (uint16_t)wr->w, k, ++wr->now, 0, &wr->h[u][wr->n[u]],
                          NULL, NULL);
    if (rc != 0)
        wr->errors++;
    else
        wr->n[u]++;
}

static void writer_release(struct writer *wr, unsigned u)
{
    int i = (int)(next_rand(&wr->rng) % (uint32_t)wr->n[u]);
    if (th_reg_release(&wr->r, wr->h[u][i]) != 0)
        wr->errors++;
    wr->h[u][i] = wr->h[u][--wr->n[u]];
}

static void writer_op(struct writer *wr)
{
    unsigned u = next_rand(&wr->rng) % USERS;
    uint32_t dice = next_rand(&wr->rng) % 4;
    if (dice < 2 && wr->n[u] > 0) /* touch: the hot path */
        th_reg_touch(&wr->r, wr->h[u][wr->n[u] - 1], ++wr->now);
    else if (wr->n[u] < PER_USER && (dice == 2 || wr->n[u] == 0))
        writer_claim(wr, u);
    else if (wr->n[u] > 0)
        writer_release(wr, u);
}

static int writer_run(struct writer *wr)
{
    atomic_store(&wr->r.hdr->workers[wr->w].pid, getpid());
    for (int i = 0; i < WRITER_OPS; i++)
        writer_op(wr);
    for (unsigned u = 0; u < USERS; u++)
        while (wr->n[u] > 0)
            writer_release(wr, u);
    return wr->errors;
}

static void writer_init(struct writer *wr, unsigned w)
{
    memset(wr, 0, sizeof(*wr));
    wr->r = reg;
    wr->r.cursor = w * (NSLOTS / WRITERS);
    wr->w = w;
    wr->rng = 0x9e3779b97f4a7c15ull * (w + 1);
    wr->now = (uint64_t)w << 40;
}

static void *writer_thread(void *arg)
{
    struct writer *wr = arg;
    writer_run(wr);
    atomic_fetch_sub(&writers_left, 1);
    return NULL;
}

/* ---- readers ---- */

/* A copy that claims to be live must be whole and belong to the writer its id names. */
static void check_copy(const struct th_conn_info *ci)
{
    uint32_t k;
    if (!test_user_intact(ci->user, ci->user_len, &k)) {
        violation("torn or foreign user id", ci->slot, (uint32_t)ci->user_len);
        return;
    }
    if (ci->conn_id != k || ci->worker != k / 1000)
        violation("fields of another connection", ci->slot, ci->conn_id);
    if (ci->last_seen < ci->connected_at)
        violation("last_seen before connected_at", ci->slot, ci->gen);
}

/*
 * A lookup is not a snapshot: it may see a connection that was released
 * after it was read and one claimed after that. Still, it can never see more
 * than the PER_USER held when it started plus the claims begun since.
 */
static void reader_lookup(const struct th_reg *r, uint32_t k)
{
    char user[TH_USER_MAX + 1];
    struct th_conn_info ci[8];
    size_t len = test_user(k, user);
    uint32_t c0 = atomic_load(&claims_started[k]);
    int n = th_reg_find_user(r, user, len, ci, 8);
    uint32_t c1 = atomic_load(&claims_started[k]);
    if ((uint32_t)n > PER_USER + (c1 - c0) || (c1 == 0 && n > 0))
        violation("more connections than were claimed", k, (uint32_t)n);
    for (int i = 0; i < n && i < 8; i++) {
        check_copy(&ci[i]);
        if (ci[i].conn_id != k)
            violation("lookup returned another user", k, ci[i].conn_id);
        for (int j = 0; j < i; j++)
            if (ci[j].slot == ci[i].slot && ci[j].gen == ci[i].gen)
                violation("lookup returned a connection twice", k, ci[i].slot);
    }
    /* The notify path's lookup, under the same bounds. */
    struct th_conn_ref cr[8];
    if (atomic_load(th_reg_spill(r, th_user_hash(user, len))) > 0)
        atomic_fetch_add_explicit(&spilled_reads, 1, memory_order_relaxed);
    c0 = atomic_load(&claims_started[k]);
    n = th_reg_find_conns(r, user, len, cr, 8);
    c1 = atomic_load(&claims_started[k]);
    if ((uint32_t)n > PER_USER + (c1 - c0) || (c1 == 0 && n > 0))
        violation("find_conns: more connections than were claimed", k, (uint32_t)n);
    for (int i = 0; i < n; i++) {
        if (cr[i].conn_id != k || cr[i].worker != k / 1000)
            violation("find_conns returned another user", k, cr[i].conn_id);
        for (int j = 0; j < i; j++)
            if (cr[j].slot == cr[i].slot && cr[j].gen == cr[i].gen)
                violation("find_conns returned a connection twice", k, cr[i].slot);
    }
    /*
     * The notify path since layout version 4: the index alone names (slot,
     * owner); an entry is written once and cleared before its slot is reused,
     * so every candidate names this user's writer, whatever the slot holds by
     * now. What the owner's check confirms is bounded as above, each once.
     */
    struct th_owner_ref ow[8];
    c0 = atomic_load(&claims_started[k]);
    int no = th_reg_find_owners(r, user, len, ow, 8);
    n = 0;
    for (int i = 0; i < no; i++) {
        if (ow[i].worker != k / 1000)
            violation("find_owners named another writer", k, ow[i].worker);
        n += th_reg_confirm(r, ow[i].slot, ow[i].worker, user, len, &cr[n]);
    }
    c1 = atomic_load(&claims_started[k]);
    if ((uint32_t)n > PER_USER + (c1 - c0) || (c1 == 0 && n > 0))
        violation("confirmed: more connections than were claimed", k, (uint32_t)n);
    for (int i = 0; i < n; i++) {
        if (cr[i].conn_id != k || cr[i].worker != k / 1000)
            violation("confirmed another user's slot", k, cr[i].conn_id);
        for (int j = 0; j < i; j++)
            if (cr[j].slot == cr[i].slot && cr[j].gen == cr[i].gen)
                violation("confirmed a connection twice", k, cr[i].slot);
    }
}

static void *reader_thread(void *arg)
{
    uint64_t rng = (uintptr_t)arg * 7919 + 1;
    struct th_conn_info ci;
    unsigned long ops = 0;
    while (atomic_load(&writers_left) > 0) {
        uint32_t k = user_key(next_rand(&rng) % WRITERS, next_rand(&rng) % (USERS + 4));
        reader_lookup(&reg, k);
        if (th_reg_read(&reg, next_rand(&rng) % NSLOTS, &ci))
            check_copy(&ci);
        if (atomic_load_explicit(&reg.hdr->used, memory_order_relaxed) >
            WRITERS * (USERS * PER_USER + 1))
            violation("used above what can be claimed", atomic_load(&reg.hdr->used), 0);
        ops += 2;
    }
    atomic_fetch_add(&read_ops, ops);
    return NULL;
}

/* ---- the test ---- */

static pid_t fork_writer(unsigned w)
{
    pid_t p = fork();
    check(p >= 0, "fork");
    if (p == 0) {
        static struct writer wr;
        writer_init(&wr, w);
        _exit(writer_run(&wr) ? 1 : 0);
    }
    return p;
}

static void check_quiet_registry(void)
{
    /*
     * Before any repair: every writer released all it claimed and none was
     * killed, so nothing may be left for the janitor to fix. Repairing first
     * would hide a release that leaves a count, a bucket or a record behind.
     */
    check(atomic_load(&reg.hdr->used) == 0, "used %u after everything was released",
          atomic_load(&reg.hdr->used));
    check(th_reg_count_used(&reg) == 0, "slots still in use");
    check(atomic_load(&reg.hdr->unindexed) == 0, "unindexed count not back to 0");
    for (uint32_t b = 0; b < reg.hdr->nbuckets; b++)
        check(atomic_load(&reg.index[b]) == 0, "index word %u left nonzero (%s)", b,
              th_reg_is_spill(b) ? "a spill count" : "a bucket pointing at a slot");
    for (uint32_t d = 0; d < reg.hdr->ndisc; d++)
        check((atomic_load(&reg.disc[d].seq) & 1) == 0, "disconnect record %u odd", d);
    int released = th_reg_repair(&reg);
    check(released == 0, "repair released %d slots the writers left behind", released);
    check(atomic_load(&reg.hdr->used) == 0, "repair changed used to %u",
          atomic_load(&reg.hdr->used));
    /* freemap bits are hints a lost claim race may clear on a free slot until the
     * next sweep (shm/registry.h), so they are checked after the repair. */
    for (uint32_t i = 0; i < NSLOTS; i++)
        check((atomic_load(&reg.freemap[i / 64]) & (1ull << (i % 64))) != 0, "slot %u hidden", i);
}

int main(void)
{
    char err[256];
    reg_test_name(name, sizeof(name), "stress");
    check(th_reg_create(&reg, name, NSLOTS, err, sizeof(err)) == 0, "create: %s", err);
    claims_started = mmap(NULL, MAX_KEY * sizeof(*claims_started), PROT_READ | PROT_WRITE,
                          MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    check(claims_started != MAP_FAILED, "mmap counters");
    crowd_keys();
    atomic_store(&writers_left, WRITERS);
    pid_t kids[FORKED_WRITERS];
    for (unsigned w = 0; w < FORKED_WRITERS; w++) /* fork before any thread exists */
        kids[w] = fork_writer(w);
    static struct writer self_writer;
    writer_init(&self_writer, FORKED_WRITERS);
    pthread_t wt, rt[READERS];
    pthread_create(&wt, NULL, writer_thread, &self_writer);
    for (uintptr_t i = 0; i < READERS; i++)
        pthread_create(&rt[i], NULL, reader_thread, (void *)i);
    int failed = 0;
    for (unsigned w = 0; w < FORKED_WRITERS; w++) {
        int st;
        waitpid(kids[w], &st, 0);
        failed += !(WIFEXITED(st) && WEXITSTATUS(st) == 0);
        atomic_fetch_sub(&writers_left, 1);
    }
    pthread_join(wt, NULL);
    for (int i = 0; i < READERS; i++)
        pthread_join(rt[i], NULL);
    unsigned long total = (unsigned long)WRITERS * WRITER_OPS + atomic_load(&read_ops);
    printf("stress: %lu operations (%lu reads, %lu lookups of a line with spilled entries)\n",
           total, atomic_load(&read_ops), atomic_load(&spilled_reads));
    check(atomic_load(&spilled_reads) > 0, "no lookup met a spilled line: spills untested");
    check(failed == 0, "a forked writer saw a claim or release fail");
    check(self_writer.errors == 0, "the writer thread saw a claim or release fail");
    check(atomic_load(&violations) == 0, "%lu violations, first: %s", atomic_load(&violations),
          first_violation);
    check(total >= 1000000, "only %lu operations", total);
    check_quiet_registry();
    th_reg_unlink(name);
    puts("PASS");
    return 0;
}
