/*
 * tether-bench-registry: how fast the registry's hot paths are on a big,
 * half-full table, and what a slot costs in memory. Not a test: it asserts
 * nothing, it prints medians of several runs so figures can be compared
 * across changes (and against the targets in the registry issue).
 *
 *   tether-bench-registry [--slots N] [--runs R] [--only ROW]
 *
 * Operations are done in random order over the whole table, so the figures
 * include the cache misses a worker or the notifier really takes on a table
 * far bigger than the CPU caches. Time is this thread's CPU time, so a run
 * on a shared machine is not charged for the time others held the CPU.
 *
 * The find_user rows read each id from a 30 MB table of ids at random (one
 * more cache and TLB miss per lookup, kept for comparison with earlier
 * figures). The "hot ids" rows read the ids in lookup order from a copy made
 * before the clock starts, as the notifier does from its request buffer:
 * find_owners (present, hot ids) is the notify path's lookup (layout
 * version 4: the index group alone); find_conns reads each candidate's slot
 * too (the notify path's lookup of layout version 3, now the JetStream
 * catch-up's). "pipelined" is a batch: th_reg_prefetch_user fetches the
 * index group eight users ahead (and a spilled-to second group four ahead).
 * "confirm" is what the owner worker does per handoff since version 4: the
 * seqlock check of one slot's line 0 against the user id (th_reg_confirm),
 * on random live slots.
 * The rows above time a loop of lookups, whose misses the CPU may partly
 * overlap. "one at a time" times each find_owners call on its own (a
 * monotonic clock read on either side, the cost of two bare reads taken
 * off; median of the calls) after about half a microsecond of
 * register-only work, as a notifier meets a single request. "hinted" is the
 * same with th_reg_prefetch_user on the id before that work: the single
 * notify path since the notifier's parse-time hint (notifier/server.c
 * prefetch_one), where the log line, the mailbox store and the render run
 * in between (several microseconds there).
 * "floor" is no lookup: a chain of dependent reads at random 128-byte
 * groups of a shared mapping the size of the index (same page size as the
 * segment), one memory round trip each: what a cold lookup cannot go under
 * on this machine whatever its instructions.
 * --only ROW (touch, present, absent, hot, conns, batch, claim, sweep,
 * owners, confirm, one, hinted, floor) runs one row, for cache simulators (valgrind
 * --tool=cachegrind) to count the lines a lookup touches.
 */
#include "shm/rt/clock.h"
#include "shm/registry.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define USER_LEN 24
#define MAX_RUNS 15
#define NROWS 13 /* row_names[] */
#define AHEAD 4  /* batch row: index line prefetched 2 x AHEAD users ahead, slots AHEAD ahead */

struct bench {
    struct th_reg r;
    uint32_t nslots, nlive, nusers;
    struct th_handle *live; /* the half that is claimed */
    uint32_t *order;        /* a random permutation of 0..nlive-1 */
    char (*users)[USER_LEN];
    char (*keys)[USER_LEN];       /* the present users' ids in lookup order ("hot ids") */
    uint32_t hash[2 * AHEAD];     /* batch row: hashes of the users in the prefetch pipeline */
    uint32_t *ns;                 /* one at a time rows: each call's ns */
    int row, run;                 /* what run_row is measuring */
    double mean[NROWS][MAX_RUNS]; /* one at a time rows: mean ns per call, by row and run */
    uint64_t rng;
};

static uint64_t cpu_ns(void)
{
    return th_clock_ns(CLOCK_THREAD_CPUTIME_ID);
}

static uint32_t next_rand(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return (uint32_t)(*s >> 16);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(*v), cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* ---- set-up: half the slots claimed, two connections per user ---- */

static int setup(struct bench *b, uint32_t nslots)
{
    char name[64], err[256];
    snprintf(name, sizeof(name), "/th-bench-registry-%d", (int)getpid());
    if (th_reg_create(&b->r, name, nslots, err, sizeof(err)) < 0) {
        fprintf(stderr, "tether-bench-registry: %s\n", err);
        return -1;
    }
    th_reg_unlink(name); /* the mapping is all we need; nothing is left behind */
    atomic_store(&b->r.hdr->workers[0].pid, getpid());
    b->nslots = nslots;
    b->nlive = nslots / 2;
    b->nusers = b->nlive / 2;
    b->live = calloc(b->nlive, sizeof(*b->live));
    b->order = calloc(b->nlive, sizeof(*b->order));
    b->users = calloc(b->nusers + 1000000, USER_LEN);
    b->keys = calloc(b->nlive, USER_LEN);
    b->ns = calloc(b->nlive, sizeof(*b->ns));
    b->rng = 0x9e3779b97f4a7c15ull;
    if (!b->live || !b->order || !b->users || !b->keys || !b->ns)
        return -1;
    for (uint32_t u = 0; u < b->nusers + 1000000; u++)
        snprintf(b->users[u], USER_LEN, "user-%u", u);
    return 0;
}

static int fill(struct bench *b)
{
    uint64_t now = th_now_ns();
    for (uint32_t i = 0; i < b->nlive; i++) {
        const char *u = b->users[i / 2];
        if (th_reg_claim(&b->r, u, strlen(u), 0, i, now, 8, &b->live[i], NULL, NULL) < 0)
            return -1;
        b->order[i] = i;
    }
    for (uint32_t i = b->nlive - 1; i > 0; i--) { /* Fisher-Yates */
        uint32_t j = next_rand(&b->rng) % (i + 1), t = b->order[i];
        b->order[i] = b->order[j];
        b->order[j] = t;
    }
    return 0;
}

/* ---- the measurements (each returns ns per operation, or ms for the sweep) ---- */

static double bench_touch(struct bench *b)
{
    uint64_t now = th_now_ns(), t0 = cpu_ns();
    for (uint32_t i = 0; i < b->nlive; i++)
        th_reg_touch(&b->r, b->live[b->order[i]], now + i);
    return (double)(cpu_ns() - t0) / b->nlive;
}

static double bench_lookup(struct bench *b, uint32_t n, int absent)
{
    struct th_conn_info ci[8];
    volatile int found = 0;
    uint64_t t0 = cpu_ns();
    for (uint32_t i = 0; i < n; i++) {
        uint32_t u = absent ? b->nusers + next_rand(&b->rng) % 1000000 : b->order[i] / 2;
        const char *user = b->users[u];
        found += th_reg_find_user(&b->r, user, strlen(user), ci, 8);
    }
    return (double)(cpu_ns() - t0) / n;
}

/* The ids of n present users in lookup order, copied out before the clock starts. */
static void hot_keys(struct bench *b, uint32_t n, uint32_t from)
{
    for (uint32_t i = 0; i < n; i++)
        memcpy(b->keys[i], b->users[b->order[(from + i) % b->nlive] / 2], USER_LEN);
}

enum hot_kind { HOT_FIND_USER, HOT_FIND_CONNS, HOT_FIND_OWNERS_AHEAD, HOT_FIND_OWNERS };

static double bench_hot(struct bench *b, uint32_t n, uint32_t from, enum hot_kind kind)
{
    struct th_conn_info ci[8];
    struct th_conn_ref cr[8];
    struct th_owner_ref ow[8];
    volatile int found = 0;
    hot_keys(b, n, from);
    for (uint32_t i = 0; i < 2 * AHEAD && i < n; i++) { /* the pipeline's first users */
        b->hash[i] = th_user_hash(b->keys[i], strlen(b->keys[i]));
        if (kind == HOT_FIND_OWNERS_AHEAD)
            th_reg_prefetch_user(&b->r, b->hash[i], 0);
    }
    uint64_t t0 = cpu_ns();
    for (uint32_t i = 0; i < n; i++) {
        const char *user = b->keys[i];
        size_t len = strlen(user);
        if (kind == HOT_FIND_USER) {
            found += th_reg_find_user(&b->r, user, len, ci, 8);
            continue;
        }
        if (kind == HOT_FIND_OWNERS_AHEAD) {
            if (i + 2 * AHEAD < n) {
                const char *far = b->keys[i + 2 * AHEAD];
                b->hash[(i + 2 * AHEAD) % (2 * AHEAD)] = th_user_hash(far, strlen(far));
                th_reg_prefetch_user(&b->r, b->hash[(i + 2 * AHEAD) % (2 * AHEAD)], 0);
            }
            if (i + AHEAD < n)
                th_reg_prefetch_user(&b->r, b->hash[(i + AHEAD) % (2 * AHEAD)], 1);
        }
        if (kind == HOT_FIND_CONNS)
            found += th_reg_find_conns(&b->r, user, len, cr, 8);
        else
            found += th_reg_find_owners(&b->r, user, len, ow, 8);
    }
    if (found != 2 * (int)n)
        fprintf(stderr, "tether-bench-registry: %d connections found, expected %u\n", found, 2 * n);
    return (double)(cpu_ns() - t0) / n;
}

/* Register-only work of about 1,200 cycles (a dependent multiply chain): touches no memory. */
static uint64_t busy(uint64_t x)
{
    for (int i = 0; i < 300; i++)
        x = x * 6364136223846793005ull + 1442695040888963407ull;
    return x;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static uint32_t median_u32(uint32_t *v, uint32_t n)
{
    qsort(v, n, sizeof(*v), cmp_u32);
    return v[n / 2];
}

/* Median ns of one find_owners call after busy work, the id's group hinted first or not. */
static double bench_one(struct bench *b, uint32_t n, uint32_t from, int hinted)
{
    struct th_owner_ref ow[8];
    volatile int found = 0;
    volatile uint64_t sink;
    uint64_t x = 1;
    hot_keys(b, n, from);
    for (uint32_t i = 0; i < n; i++) { /* two bare clock reads: the bracket's own cost */
        uint64_t t0 = th_mono_ns();
        b->ns[i] = (uint32_t)(th_mono_ns() - t0);
    }
    uint32_t bare = median_u32(b->ns, n);
    uint64_t sum = 0;
    for (uint32_t i = 0; i < n; i++) {
        const char *user = b->keys[i];
        size_t len = strlen(user);
        if (hinted)
            th_reg_prefetch_user(&b->r, th_user_hash(user, len), 0);
        x = busy(x);
        uint64_t t0 = th_mono_ns();
        found += th_reg_find_owners(&b->r, user, len, ow, 8);
        b->ns[i] = (uint32_t)(th_mono_ns() - t0);
        sum += b->ns[i];
    }
    sink = x;
    (void)sink;
    if (found != 2 * (int)n)
        fprintf(stderr, "tether-bench-registry: %d connections found, expected %u\n", found, 2 * n);
    b->mean[b->row][b->run] = (double)sum / n - bare;
    return (double)median_u32(b->ns, n) - bare;
}

/* ns per dependent read at random 128-byte groups of a shared mapping the index's size. */
static double bench_floor(struct bench *b, uint32_t n)
{
    char name[64];
    size_t bytes = (size_t)b->r.hdr->nbuckets * sizeof(uint64_t), groups = bytes / 128;
    snprintf(name, sizeof(name), "/th-bench-floor-%d", (int)getpid());
    int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
    if (fd < 0)
        return -1;
    shm_unlink(name);
    uint64_t *m = ftruncate(fd, (off_t)bytes) == 0
                      ? mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
                      : MAP_FAILED;
    close(fd);
    if (m == MAP_FAILED)
        return -1;
    for (size_t g = 0; g < groups; g++)
        m[g * 16] = g;
    for (size_t g = groups - 1; g > 0; g--) { /* Sattolo: one cycle through every group */
        size_t j = next_rand(&b->rng) % g;
        uint64_t t = m[g * 16];
        m[g * 16] = m[j * 16];
        m[j * 16] = t;
    }
    volatile uint64_t sink;
    uint64_t at = 0, t0 = cpu_ns();
    for (uint32_t i = 0; i < n; i++)
        at = m[at * 16];
    double ns = (double)(cpu_ns() - t0) / n;
    sink = at;
    (void)sink;
    munmap(m, bytes);
    return ns;
}

/* The owner's check of a handoff: one live slot's line 0 against its user id (hot ids). */
static double bench_confirm(struct bench *b, uint32_t n, uint32_t from)
{
    struct th_conn_ref cr;
    volatile int found = 0;
    hot_keys(b, n, from);
    uint64_t t0 = cpu_ns();
    for (uint32_t i = 0; i < n; i++) {
        struct th_handle h = b->live[b->order[(from + i) % b->nlive]];
        found += th_reg_confirm(&b->r, h.slot, 0, b->keys[i], strlen(b->keys[i]), &cr);
    }
    if (found != (int)n)
        fprintf(stderr, "tether-bench-registry: %d slots confirmed, expected %u\n", found, n);
    return (double)(cpu_ns() - t0) / n;
}

/* Claim a new user's slot and release it again, as a short-lived connection does. */
static double bench_claim_release(struct bench *b, uint32_t n)
{
    uint64_t now = th_now_ns(), t0 = cpu_ns();
    for (uint32_t i = 0; i < n; i++) {
        const char *user = b->users[b->nusers + next_rand(&b->rng) % 1000000];
        struct th_handle h;
        if (th_reg_claim(&b->r, user, strlen(user), 0, i, now, 8, &h, NULL, NULL) == 0)
            th_reg_release(&b->r, h);
    }
    return (double)(cpu_ns() - t0) / n;
}

static int note_seen(const struct th_conn_info *ci, void *arg)
{
    uint64_t *oldest = arg;
    if (ci->last_seen < *oldest)
        *oldest = ci->last_seen;
    return 0;
}

static double bench_sweep(struct bench *b)
{
    uint64_t oldest = UINT64_MAX, t0 = cpu_ns();
    th_reg_foreach(&b->r, note_seen, &oldest);
    return (double)(cpu_ns() - t0) / 1e6;
}

/* ---- main ---- */

static const char *const row_names[] = {"touch", "present", "absent", "hot",    "conns",
                                        "batch", "claim",   "sweep",  "owners", "confirm",
                                        "one",   "hinted",  "floor"};
#define ONE_ROW 10 /* this row and the next report the median call and the mean */
#define SWEEP_ROW 7

static int parse(int argc, char **argv, uint32_t *slots, int *runs, int *only)
{
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--slots") && i + 1 < argc)
            *slots = (uint32_t)strtoul(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--runs") && i + 1 < argc)
            *runs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--only") && i + 1 < argc) {
            const char *row = argv[++i];
            for (*only = 0; *only < NROWS && strcmp(row_names[*only], row); (*only)++)
                ;
            if (*only == NROWS) {
                fprintf(stderr, "tether-bench-registry: --only: no row %s\n", row);
                return 2;
            }
        } else {
            fprintf(stderr, "usage: tether-bench-registry [--slots N] [--runs R] [--only ROW]\n");
            return argv[i][2] == 'h' ? 0 : 2;
        }
    }
    if (*slots < 1000 || *runs < 1 || *runs > MAX_RUNS) {
        fprintf(stderr, "tether-bench-registry: --slots >= 1000, --runs 1..%d\n", MAX_RUNS);
        return 2;
    }
    return -1;
}

static void print_memory(const struct bench *b)
{
    const struct th_reg_hdr *h = b->r.hdr;
    printf("memory: segment %.1f MiB for %u slots = %.1f bytes/slot "
           "(struct th_slot %zu, index %.1f, disconnect records %.1f, freemap %.3f, header %zu)\n",
           h->total_size / 1048576.0, h->nslots, (double)h->total_size / h->nslots,
           sizeof(struct th_slot), (double)sizeof(uint64_t) * h->nbuckets / h->nslots,
           (double)h->ndisc * sizeof(struct th_disc) / h->nslots, 1.0 / 8,
           sizeof(struct th_reg_hdr));
}

static double run_row(struct bench *b, int row, uint32_t n, int k)
{
    uint32_t from = (uint32_t)k * n; /* each run its own users: no help from the last run */
    b->row = row;
    b->run = k;
    switch (row) {
    case 0:
        return bench_touch(b);
    case 1:
        return bench_lookup(b, n, 0);
    case 2:
        return bench_lookup(b, n, 1);
    case 3:
        return bench_hot(b, n, from, HOT_FIND_USER);
    case 4:
        return bench_hot(b, n, from, HOT_FIND_CONNS);
    case 5:
        return bench_hot(b, n, from, HOT_FIND_OWNERS_AHEAD);
    case 6:
        return bench_claim_release(b, n);
    case SWEEP_ROW:
        return bench_sweep(b);
    case 8:
        return bench_hot(b, n, from, HOT_FIND_OWNERS);
    case 9:
        return bench_confirm(b, n, from);
    case ONE_ROW:
        return bench_one(b, n, from, 0);
    case ONE_ROW + 1:
        return bench_one(b, n, from, 1);
    default:
        return bench_floor(b, n);
    }
}

int main(int argc, char **argv)
{
    uint32_t slots = 1u << 20;
    int runs = 5, only = -1;
    int rc = parse(argc, argv, &slots, &runs, &only);
    if (rc >= 0)
        return rc;
    static struct bench b;
    if (setup(&b, slots) < 0 || fill(&b) < 0) {
        fprintf(stderr, "tether-bench-registry: set-up failed\n");
        return 1;
    }
    static double t[NROWS][MAX_RUNS];
    uint32_t n = b.nlive < 200000 ? b.nlive : 200000;
    for (int k = 0; k < runs; k++)
        for (int row = 0; row < NROWS; row++)
            if (only < 0 || only == row)
                t[row][k] = run_row(&b, row, n, k);
    static const char *const labels[NROWS] = {
        "touch              ",
        "find_user (present)",
        "find_user (absent) ",
        "find_user (present, hot ids)",
        "find_conns (present, hot ids, reads the slots)",
        "find_owners (present, hot ids, batch pipelined)",
        "claim+release      ",
        "sweep (foreach)    ",
        "find_owners (present, hot ids): the notify path's lookup",
        "confirm (the owner's check of one slot, per handoff)",
        "find_owners, one at a time (median call)",
        "find_owners, one at a time, group hinted ~0.5 us before (the notify path)",
        "floor: one dependent read at random in a mapping the index's size (no lookup)"};
    printf("registry: %u slots, %u live (%u users x 2), median of %d runs, random order, "
           "thread CPU time\n",
           slots, b.nlive, b.nusers, runs);
    for (int row = 0; row < NROWS; row++) {
        if (only >= 0 && only != row)
            continue;
        if (row == SWEEP_ROW)
            printf("%s %8.2f ms for %u slots\n", labels[row], median(t[row], runs), slots);
        else if (row == ONE_ROW || row == ONE_ROW + 1)
            printf("%s %8.1f ns/op (mean %.1f)\n", labels[row], median(t[row], runs),
                   median(b.mean[row], runs));
        else
            printf("%s %8.1f ns/op\n", labels[row], median(t[row], runs));
    }
    print_memory(&b);
    return 0;
}
