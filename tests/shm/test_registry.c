/*
 * Unit tests of the connection registry (shm/registry*.c), one process at a
 * time: sizing, create/attach and their refusals, claim/release and every
 * edge of user ids, the per-user cap, generations, lookups, disconnect
 * records, and the repair of states a dead process leaves behind (which the
 * tests build by hand with the pid of a child that has already been reaped).
 */
#include <criterion/criterion.h>

#include "reg_test.h"
#include "shm/registry_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>

TestSuite(registry, .fini = reg_test_fini);

/* A pid that certainly belongs to no process now: a child we have reaped. */
static pid_t dead_pid(void)
{
    pid_t p = fork();
    if (p == 0)
        _exit(0);
    waitpid(p, NULL, 0);
    return p;
}

static void publish_self(struct th_reg *r, unsigned w)
{
    atomic_store(&r->hdr->workers[w].pid, getpid());
}

static struct th_handle claim_ok(const char *user, uint16_t w, uint64_t now)
{
    struct th_handle h;
    int rc = th_reg_claim(&reg, user, strlen(user), w, 7, now, 0, &h, NULL, NULL);
    cr_assert_eq(rc, 0, "claim %s: %d", user, rc);
    return h;
}

/* ---- layout ---- */

Test(registry, layout_sizes_and_limits)
{
    struct th_reg_hdr h;
    size_t sz = th_reg_layout(1000, &h);
    cr_assert_gt(sz, 1000 * sizeof(struct th_slot));
    cr_assert_eq(sz, h.total_size);
    cr_assert_eq(sizeof(struct th_slot), 128);
    cr_assert_eq(h.nbuckets, 4096);
    cr_assert_eq(h.off_index % 64, 0);
    cr_assert_eq(h.off_freemap % 64, 0);
    cr_assert_eq(h.off_disc % 64, 0);
    cr_assert_eq(h.off_slots % 64, 0);
    /* The parts follow one another in the documented order without overlap. */
    cr_assert_eq(h.ndisc, 1024);
    cr_assert_geq(h.off_index, sizeof(struct th_reg_hdr));
    cr_assert_eq(h.off_index % 128, 0, "index groups never straddle a page");
    cr_assert_geq(h.off_freemap, h.off_index + h.nbuckets * sizeof(uint64_t));
    cr_assert_geq(h.off_disc, h.off_freemap + (1000 + 63) / 64 * sizeof(uint64_t));
    cr_assert_geq(h.off_slots, h.off_disc + h.ndisc * sizeof(struct th_disc));
    cr_assert_leq(h.off_slots + 1000 * sizeof(struct th_slot), sz);
    cr_assert_eq(th_reg_layout(0, NULL), 0);
    cr_assert_eq(th_reg_layout(UINT32_MAX, NULL), 0);
    cr_assert_gt(th_reg_layout(1u << 20, NULL), 0);
    cr_assert_gt(th_reg_layout(1u << 24, NULL), 0, "the largest --slots");
    cr_assert_eq(th_reg_layout((1u << 24) + 1, NULL), 0, "a slot number must fit an index entry");
}

/*
 * starved_ns lives in what was th_proc_sh's padding: the entry keeps its
 * version-3 size and offsets. A starved stamp counts only while no heartbeat
 * came after it, so one a dead supervisor left is never believed.
 */
Test(registry, proc_starved_flag_and_layout)
{
    cr_assert_eq(sizeof(struct th_proc_sh), 192);
    cr_assert_eq(offsetof(struct th_proc_sh, full), 156);
    cr_assert_eq(offsetof(struct th_proc_sh, starved_ns), 160);
    struct th_proc_sh p;
    memset(&p, 0, sizeof(p));
    atomic_store(&p.heartbeat_ns, 1000);
    cr_assert_not(th_proc_starved(&p), "never found starved");
    atomic_store(&p.starved_ns, 4000);
    cr_assert(th_proc_starved(&p), "found starved, no beat since");
    atomic_store(&p.heartbeat_ns, 4000);
    cr_assert(th_proc_starved(&p), "the beat it was judged on");
    atomic_store(&p.heartbeat_ns, 4001);
    cr_assert_not(th_proc_starved(&p), "beat again: a stale stamp is not believed");
    cr_assert_not(th_proc_hung(&p), "starved is not hung");
}

/*
 * A LIVE slot released by a process other than its worker's (a cap claimer
 * in another worker, the janitor) raises that worker's th_proc_sh.released,
 * so the worker checks its slots at its next tick; the worker's own
 * releases, and a release of a slot already gone, do not.
 */
Test(registry, release_by_another_process_counts_for_the_owner)
{
    cr_assert_eq(offsetof(struct th_proc_sh, released), 168, "in the version-3 padding");
    reg_test_create(&reg, name, sizeof(name), "released", 64);
    publish_self(&reg, 0);
    cr_assert_eq(th_reg_release(&reg, claim_ok("own", 0, 100)), 0);
    cr_assert_eq(atomic_load(&reg.hdr->workers[0].released), 0, "the owner's own release");
    struct th_handle h = claim_ok("victim", 0, 100);
    pid_t p = fork();
    if (p == 0) { /* another process: the janitor, or a claimer in another worker */
        struct th_reg r;
        char err[256];
        if (th_reg_attach(&r, name, 1, err, sizeof(err)) != 0)
            _exit(2);
        int first = th_reg_release(&r, h), again = th_reg_release(&r, h);
        _exit(first == 0 && again == -ESTALE ? 0 : 1);
    }
    int st;
    cr_assert_eq(waitpid(p, &st, 0), p);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the child's releases: %d", st);
    cr_assert_eq(atomic_load(&reg.hdr->workers[0].released), 1, "one release, counted once");
    struct th_conn_info ci;
    cr_assert_eq(th_reg_read(&reg, h.slot, &ci), 0, "the slot is free");
    /* A worker that is not this process (here: one whose pid is gone). */
    atomic_store(&reg.hdr->workers[1].pid, dead_pid());
    cr_assert_eq(th_reg_release(&reg, claim_ok("theirs", 1, 100)), 0);
    cr_assert_eq(atomic_load(&reg.hdr->workers[1].released), 1);
    cr_assert_eq(atomic_load(&reg.hdr->workers[0].released), 1, "nobody else's count moves");
}

/* ---- create / attach ---- */

Test(registry, create_then_attach_read_write_and_read_only)
{
    reg_test_create(&reg, name, sizeof(name), "attach", 64);
    publish_self(&reg, 0);
    struct th_handle h = claim_ok("alice", 0, 100);
    struct th_reg rw, ro;
    char err[256];
    cr_assert_eq(th_reg_attach(&rw, name, 1, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(th_reg_attach(&ro, name, 0, err, sizeof(err)), 0, "%s", err);
    struct th_conn_info ci;
    cr_assert_eq(th_reg_read(&ro, h.slot, &ci), 1);
    cr_assert_str_eq(ci.user, "alice");
    struct th_handle h2;
    cr_assert_eq(th_reg_claim(&ro, "bob", 3, 0, 1, 1, 0, &h2, NULL, NULL), -EROFS);
    cr_assert_eq(th_reg_release(&ro, h), -EROFS);
    cr_assert_eq(th_reg_claim(&rw, "bob", 3, 0, 1, 1, 0, &h2, NULL, NULL), 0);
    cr_assert_eq(th_reg_find_user(&reg, "bob", 3, &ci, 1), 1);
    cr_assert_eq(atomic_load(&reg.hdr->used), 2);
    cr_assert_eq(reg.hdr->magic, TH_REG_MAGIC, "initialisation finished (magic is written last)");
    cr_assert_neq(reg.hdr->boot_epoch, 0);
    th_reg_detach(&rw);
    th_reg_detach(&ro);
}

Test(registry, attach_missing_segment_fails_with_message)
{
    struct th_reg r;
    char err[256] = "";
    reg_test_name(name, sizeof(name), "missing");
    cr_assert_eq(th_reg_attach(&r, name, 0, err, sizeof(err)), -ENOENT);
    cr_assert(strstr(err, name) != NULL, "%s", err);
    name[0] = 0;
}

Test(registry, create_rejects_bad_slot_counts)
{
    struct th_reg r;
    char err[256] = "";
    reg_test_name(name, sizeof(name), "badslots");
    cr_assert_eq(th_reg_create(&r, name, 0, err, sizeof(err)), -EINVAL);
    cr_assert(strstr(err, "slots") != NULL, "%s", err);
    name[0] = 0;
}

/* Corrupt one header field through a writable mapping, then expect attach to refuse. */
static void expect_refused(void (*corrupt)(struct th_reg_hdr *), int want, const char *words)
{
    reg_test_create(&reg, name, sizeof(name), "badhdr", 16);
    corrupt(reg.hdr);
    struct th_reg r;
    char err[256] = "";
    cr_assert_eq(th_reg_attach(&r, name, 0, err, sizeof(err)), want, "%s", err);
    cr_assert(strstr(err, words) != NULL, "message '%s' lacks '%s'", err, words);
    cr_assert_null(r.base);
}

static void bad_magic(struct th_reg_hdr *h)
{
    h->magic ^= 1;
}
static void bad_version(struct th_reg_hdr *h)
{
    h->version = TH_REG_VERSION + 1;
}
static void older_version(struct th_reg_hdr *h)
{
    h->version = 3; /* the layout before 64-bit index entries */
}
static void bad_slot_size(struct th_reg_hdr *h)
{
    h->slot_size = 96;
}
static void bad_total(struct th_reg_hdr *h)
{
    h->total_size += 4096;
}
static void bad_nslots(struct th_reg_hdr *h)
{
    h->nslots = 1u << 20; /* would make every slot pointer run past the mapping */
}

Test(registry, attach_refuses_wrong_magic)
{
    expect_refused(bad_magic, -EPROTO, "magic");
}
Test(registry, attach_refuses_wrong_version)
{
    expect_refused(bad_version, -EPROTO, "version");
}
Test(registry, attach_refuses_a_version_3_segment_clearly)
{
    char words[96];
    snprintf(words, sizeof(words), "layout version 3, this build reads version %d", TH_REG_VERSION);
    expect_refused(older_version, -EPROTO, words);
}
Test(registry, attach_refuses_wrong_slot_size)
{
    expect_refused(bad_slot_size, -EPROTO, "slots");
}
Test(registry, attach_refuses_size_mismatch)
{
    expect_refused(bad_total, -EINVAL, "bytes");
}
Test(registry, attach_refuses_nslots_beyond_the_file)
{
    expect_refused(bad_nslots, -EINVAL, "corrupt");
}

Test(registry, attach_refuses_truncated_file)
{
    reg_test_create(&reg, name, sizeof(name), "trunc", 16);
    int fd = shm_open(name, O_RDWR, 0);
    cr_assert_geq(fd, 0);
    cr_assert_eq(ftruncate(fd, 100), 0);
    close(fd);
    th_reg_detach(&reg); /* its pages are gone */
    struct th_reg r;
    char err[256] = "";
    cr_assert_eq(th_reg_attach(&r, name, 0, err, sizeof(err)), -EPROTO);
    cr_assert(strstr(err, "too small") != NULL, "%s", err);
}

Test(registry, create_refuses_segment_of_a_live_group)
{
    reg_test_create(&reg, name, sizeof(name), "live", 16);
    uint64_t epoch = reg.hdr->boot_epoch;
    pid_t p = fork();
    if (p == 0) {
        struct th_reg r;
        char err[256] = "";
        int rc = th_reg_create(&r, name, 16, err, sizeof(err));
        _exit(rc == -EBUSY && strstr(err, "live") ? 0 : 1);
    }
    int st;
    waitpid(p, &st, 0);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    cr_assert_eq(reg.hdr->boot_epoch, epoch, "the refused create must not touch the segment");
}

Test(registry, create_takes_over_segment_of_a_dead_group)
{
    reg_test_name(name, sizeof(name), "dead");
    int pipefd[2];
    cr_assert_eq(pipe(pipefd), 0);
    pid_t p = fork();
    if (p == 0) {
        struct th_reg r;
        struct th_handle h;
        char err[256];
        if (th_reg_create(&r, name, 32, err, sizeof(err)) ||
            th_reg_claim(&r, "ghost", 5, 0, 1, 1, 0, &h, NULL, NULL))
            _exit(1);
        write(pipefd[1], &r.hdr->boot_epoch, 8);
        _exit(0); /* dies holding the segment, like a SIGKILLed supervisor */
    }
    uint64_t old_epoch = 0;
    cr_assert_eq(read(pipefd[0], &old_epoch, 8), 8);
    waitpid(p, NULL, 0);
    char err[256] = "";
    struct th_reg orphan; /* a process of the old group that outlived its supervisor */
    cr_assert_eq(th_reg_attach(&orphan, name, 1, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(th_reg_create(&reg, name, 64, err, sizeof(err)), 0, "%s", err);
    struct th_handle oh;
    cr_assert_eq(th_reg_claim(&orphan, "orphan", 6, 0, 1, 1, 0, &oh, NULL, NULL), 0);
    struct th_conn_info oci;
    cr_assert_eq(th_reg_find_user(&reg, "orphan", 6, &oci, 1), 0, "the old group writes elsewhere");
    th_reg_detach(&orphan);
    cr_assert_neq(reg.hdr->boot_epoch, old_epoch);
    cr_assert_eq(reg.hdr->nslots, 64, "re-sized to the new slot count");
    cr_assert_eq(atomic_load(&reg.hdr->creator_pid), getpid());
    cr_assert_eq(atomic_load(&reg.hdr->used), 0);
    struct th_conn_info ci;
    cr_assert_eq(th_reg_find_user(&reg, "ghost", 5, &ci, 1), 0);
}

/* Four supervisors start at once on one name: exactly one gets it. */
Test(registry, concurrent_creators_exactly_one_wins)
{
    reg_test_name(name, sizeof(name), "race");
    int go[2], res[2], hold[2];
    cr_assert(pipe(go) == 0 && pipe(res) == 0 && pipe(hold) == 0);
    pid_t kid[4];
    for (int i = 0; i < 4; i++) {
        kid[i] = fork();
        if (kid[i] == 0) {
            char c, err[256];
            struct th_reg r;
            close(go[1]);
            close(hold[1]);
            read(go[0], &c, 1); /* returns 0 when the parent closes it: all start together */
            signed char rc = (signed char)th_reg_create(&r, name, 64, err, sizeof(err));
            write(res[1], &rc, 1);
            read(hold[0], &c, 1); /* the winner must stay alive while the others look */
            _exit(0);
        }
    }
    close(go[0]);
    close(go[1]);
    int won = 0, busy = 0;
    for (int i = 0; i < 4; i++) {
        signed char rc;
        cr_assert_eq(read(res[0], &rc, 1), 1);
        won += rc == 0;
        busy += rc == -EBUSY;
    }
    close(hold[1]);
    for (int i = 0; i < 4; i++)
        waitpid(kid[i], NULL, 0);
    cr_assert_eq(won, 1);
    cr_assert_eq(busy, 3);
}

Test(registry, create_takes_over_when_creator_pid_was_reused)
{
    reg_test_create(&reg, name, sizeof(name), "reuse", 16);
    uint64_t epoch = reg.hdr->boot_epoch;
    /* Our parent is alive, but it did not start when the header says: pid reuse. */
    atomic_store(&reg.hdr->creator_pid, getppid());
    reg.hdr->creator_start = 1;
    th_reg_detach(&reg);
    char err[256] = "";
    cr_assert_eq(th_reg_create(&reg, name, 16, err, sizeof(err)), 0, "%s", err);
    cr_assert_neq(reg.hdr->boot_epoch, epoch);
}

Test(registry, create_refuses_foreign_object)
{
    reg_test_name(name, sizeof(name), "foreign");
    int fd = shm_open(name, O_RDWR | O_CREAT, 0600);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, "not a registry, but somebody's data......", 40), 40);
    close(fd);
    struct th_reg r;
    char err[256] = "";
    cr_assert_eq(th_reg_create(&r, name, 16, err, sizeof(err)), -EEXIST);
    cr_assert(strstr(err, "not a tether") != NULL, "%s", err);
}

/* ---- claim / release ---- */

Test(registry, full_table_gives_enospc_then_recovers)
{
    reg_test_create(&reg, name, sizeof(name), "full", 100);
    publish_self(&reg, 0);
    struct th_handle h[100], x;
    char user[TH_USER_MAX + 1];
    for (uint32_t k = 0; k < 100; k++) {
        size_t len = test_user(k, user);
        cr_assert_eq(th_reg_claim(&reg, user, len, 0, k, 1, 0, &h[k], NULL, NULL), 0, "claim %u",
                     k);
    }
    cr_assert_eq(atomic_load(&reg.hdr->used), 100);
    cr_assert_eq(th_reg_claim(&reg, "late", 4, 0, 0, 1, 0, &x, NULL, NULL), -ENOSPC);
    cr_assert_eq(th_reg_release(&reg, h[42]), 0);
    cr_assert_eq(atomic_load(&reg.hdr->used), 99);
    cr_assert_eq(th_reg_claim(&reg, "late", 4, 0, 0, 1, 0, &x, NULL, NULL), 0);
    cr_assert_eq(x.slot, h[42].slot, "the only free slot");
    cr_assert_eq(th_reg_count_used(&reg), 100);
}

Test(registry, user_id_lengths)
{
    reg_test_create(&reg, name, sizeof(name), "ids", 16);
    publish_self(&reg, 0);
    char u64[TH_USER_MAX + 2];
    memset(u64, 'x', sizeof(u64));
    u64[TH_USER_MAX - 1] = 'y';
    struct th_handle h;
    cr_assert_eq(th_reg_claim(&reg, u64, TH_USER_MAX, 0, 1, 1, 0, &h, NULL, NULL), 0);
    struct th_conn_info ci[2];
    cr_assert_eq(th_reg_find_user(&reg, u64, TH_USER_MAX, ci, 2), 1);
    cr_assert_eq(ci[0].user_len, TH_USER_MAX);
    cr_assert_eq(strlen(ci[0].user), TH_USER_MAX, "copy is NUL-terminated");
    cr_assert_eq(memcmp(ci[0].user, u64, TH_USER_MAX), 0);
    cr_assert_eq(th_reg_find_user(&reg, u64, TH_USER_MAX - 1, ci, 2), 0, "prefix is another user");
    cr_assert_eq(th_reg_claim(&reg, u64, TH_USER_MAX + 1, 0, 1, 1, 0, &h, NULL, NULL), -EINVAL);
    cr_assert_eq(th_reg_claim(&reg, "", 0, 0, 1, 1, 0, &h, NULL, NULL), -EINVAL);
    cr_assert_eq(th_reg_claim(&reg, NULL, 3, 0, 1, 1, 0, &h, NULL, NULL), -EINVAL);
    cr_assert_eq(th_reg_claim(&reg, "ok", 2, TH_MAX_WORKERS, 1, 1, 0, &h, NULL, NULL), -EINVAL);
    cr_assert_eq(th_reg_find_user(&reg, u64, TH_USER_MAX + 1, ci, 2), 0);
    cr_assert_eq(atomic_load(&reg.hdr->used), 1, "refused claims cost nothing");
}

Test(registry, ids_with_binary_bytes_and_shared_prefix_stay_apart)
{
    reg_test_create(&reg, name, sizeof(name), "bin", 16);
    publish_self(&reg, 0);
    const char a[] = {'a', 0, 'b'}, b[] = {'a', 0, 'c'};
    struct th_handle h;
    cr_assert_eq(th_reg_claim(&reg, a, 3, 0, 1, 1, 0, &h, NULL, NULL), 0);
    cr_assert_eq(th_reg_claim(&reg, b, 3, 0, 2, 1, 0, &h, NULL, NULL), 0);
    claim_ok("a", 0, 1);
    struct th_conn_info ci[4];
    cr_assert_eq(th_reg_find_user(&reg, a, 3, ci, 4), 1);
    cr_assert_eq(ci[0].conn_id, 1);
    cr_assert_eq(th_reg_find_user(&reg, "a", 1, ci, 4), 1);
    cr_assert_eq(ci[0].conn_id, 7);
}

/* Victims a claim released, as its callback saw them. */
struct victims {
    int n;
    struct th_conn_info v[8];
};

static void note_victim(const struct th_conn_info *ci, void *arg)
{
    struct victims *vs = arg;
    if (vs->n < 8)
        vs->v[vs->n] = *ci;
    vs->n++;
}

Test(registry, per_user_cap_releases_the_oldest_connection)
{
    reg_test_create(&reg, name, sizeof(name), "cap", 32);
    publish_self(&reg, 0);
    struct th_handle h[6], other;
    struct victims vs = {0};
    /* connected_at out of order on purpose: claim order (the ticket) decides, not the clock. */
    const uint64_t at[3] = {300, 100, 200};
    for (int i = 0; i < 3; i++)
        cr_assert_eq(th_reg_claim(&reg, "u", 1, 0, i, at[i], 3, &h[i], note_victim, &vs), 0);
    cr_assert_eq(vs.n, 0, "at the cap is fine");
    cr_assert_eq(th_reg_claim(&reg, "v", 1, 0, 9, 50, 3, &other, note_victim, &vs), 0);
    cr_assert_eq(vs.n, 0, "other users do not count");
    cr_assert_eq(th_reg_claim(&reg, "u", 1, 2, 3, 400, 3, &h[3], note_victim, &vs), 0);
    cr_assert_eq(vs.n, 1);
    cr_assert_eq(vs.v[0].slot, h[0].slot, "the first claim is the oldest");
    cr_assert_eq(vs.v[0].gen, h[0].gen);
    cr_assert_eq(vs.v[0].worker, 0, "the owner to tell");
    cr_assert_eq(vs.v[0].conn_id, 0);
    struct th_conn_info ci[8];
    cr_assert_eq(th_reg_find_user(&reg, "u", 1, ci, 8), 3, "released by the claim itself");
    cr_assert_eq(th_reg_release(&reg, h[0]), -ESTALE, "the owner's own release is stale");
    cr_assert_eq(atomic_load(&reg.hdr->used), 4);
    cr_assert_eq(th_reg_claim(&reg, "u", 1, 0, 4, 600, 0, &h[4], note_victim, &vs), 0);
    cr_assert_eq(vs.n, 1, "cap 0: no cap");
    cr_assert_eq(th_reg_find_user(&reg, "u", 1, ci, 8), 4);
    /* A lowered cap (a restart with a smaller flag) is restored by the next claim, oldest first. */
    cr_assert_eq(th_reg_claim(&reg, "u", 1, 0, 5, 700, 2, &h[5], NULL, NULL), 0,
                 "the callback may be NULL");
    cr_assert_eq(th_reg_find_user(&reg, "u", 1, ci, 8), 2);
    struct th_conn_info mine;
    cr_assert(th_reg_read(&reg, h[5].slot, &mine) && th_reg_read(&reg, h[4].slot, &mine),
              "the two newest stay");
}

Test(registry, a_claim_older_than_the_cap_releases_itself)
{
    reg_test_create(&reg, name, sizeof(name), "capself", 16);
    publish_self(&reg, 0);
    struct th_handle a, b, c;
    struct victims vs = {0};
    cr_assert_eq(th_reg_claim(&reg, "u", 1, 0, 1, 1, 0, &a, NULL, NULL), 0);
    cr_assert_eq(th_reg_claim(&reg, "u", 1, 0, 2, 1, 0, &b, NULL, NULL), 0);
    /* As if two claims that took later tickets than ours published first. */
    atomic_store(&reg.slots[a.slot].ticket, 1000);
    atomic_store(&reg.slots[b.slot].ticket, 1001);
    cr_assert_eq(th_reg_claim(&reg, "u", 1, 0, 3, 1, 2, &c, note_victim, &vs), 1);
    cr_assert_eq(vs.n, 0, "our own slot is not reported as a victim");
    struct th_conn_info ci[4];
    cr_assert_eq(th_reg_find_user(&reg, "u", 1, ci, 4), 2);
    cr_assert_eq(th_reg_release(&reg, c), -ESTALE, "already released");
    cr_assert_eq(atomic_load(&reg.hdr->used), 2, "nothing leaked");
}

Test(registry, generation_changes_on_reuse_and_stale_handles_fail)
{
    reg_test_create(&reg, name, sizeof(name), "gen", 1);
    publish_self(&reg, 0);
    struct th_handle a = claim_ok("alice", 0, 1);
    cr_assert_eq(th_reg_release(&reg, a), 0);
    cr_assert_eq(th_reg_release(&reg, a), -ESTALE, "double release");
    struct th_handle b = claim_ok("bob", 0, 3);
    cr_assert_eq(b.slot, a.slot);
    cr_assert_neq(b.gen, a.gen);
    cr_assert_eq(th_reg_release(&reg, a), -ESTALE, "old handle on a reused slot");
    struct th_conn_info ci;
    cr_assert_eq(th_reg_read(&reg, b.slot, &ci), 1);
    cr_assert_str_eq(ci.user, "bob");
    cr_assert_eq(ci.gen, b.gen);
    cr_assert_eq(th_reg_release(&reg, (struct th_handle){5, b.gen}), -EINVAL);
    cr_assert_eq(th_reg_read(&reg, 5, &ci), 0);
}

struct visit_log {
    uint32_t seen, last, stop_at;
};

static int visit(const struct th_conn_info *c, void *arg)
{
    struct visit_log *v = arg;
    cr_assert(v->seen == 0 || c->slot > v->last, "slot order");
    v->last = c->slot;
    v->seen++;
    return v->seen == v->stop_at;
}

Test(registry, touch_read_and_foreach)
{
    reg_test_create(&reg, name, sizeof(name), "foreach", 64);
    publish_self(&reg, 3);
    struct th_handle h[5];
    char user[TH_USER_MAX + 1];
    for (uint32_t k = 0; k < 5; k++) {
        size_t len = test_user(k, user);
        cr_assert_eq(th_reg_claim(&reg, user, len, 3, 100 + k, 1000, 0, &h[k], NULL, NULL), 0);
    }
    th_reg_touch(&reg, h[2], 5000);
    struct th_conn_info ci;
    cr_assert_eq(th_reg_read(&reg, h[2].slot, &ci), 1);
    cr_assert_eq(ci.last_seen, 5000);
    cr_assert_eq(ci.connected_at, 1000);
    cr_assert_eq(ci.worker, 3);
    cr_assert_eq(ci.conn_id, 102);
    cr_assert(test_user_intact(ci.user, ci.user_len, NULL));
    th_reg_release(&reg, h[4]);
    struct visit_log v = {0};
    th_reg_foreach(&reg, visit, &v);
    cr_assert_eq(v.seen, 4);
    v = (struct visit_log){.stop_at = 2};
    th_reg_foreach(&reg, visit, &v);
    cr_assert_eq(v.seen, 2, "stops when the visitor says so");
}

/* A pass in ranges (the cluster route's interest scan) meets what one foreach meets. */
Test(registry, foreach_range_in_steps_meets_every_live_slot_once)
{
    reg_test_create(&reg, name, sizeof(name), "range", 64);
    publish_self(&reg, 1);
    struct th_handle h[20];
    char user[TH_USER_MAX + 1];
    for (uint32_t k = 0; k < 20; k++) {
        size_t len = test_user(k, user);
        cr_assert_eq(th_reg_claim(&reg, user, len, 1, 100 + k, 1000, 0, &h[k], NULL, NULL), 0);
    }
    for (uint32_t k = 0; k < 20; k += 3)
        th_reg_release(&reg, h[k]);
    struct visit_log all = {0}, part = {0};
    th_reg_foreach(&reg, visit, &all);
    cr_assert_eq(all.seen, 13);
    uint32_t pos = 0, steps = 0, n = reg.hdr->nslots;
    while (pos < n) {
        uint32_t next = th_reg_foreach_range(&reg, pos, 5, visit, &part);
        cr_assert_eq(next, pos + 5 < n ? pos + 5 : n, "a step ends where it was told to");
        pos = next;
        steps++;
    }
    cr_assert_eq(steps, (n + 4) / 5);
    cr_assert_eq(part.seen, all.seen, "the steps together meet every live slot once");
    cr_assert_eq(part.last, all.last);
    struct visit_log none = {0};
    cr_assert_eq(th_reg_foreach_range(&reg, n, 5, visit, &none), n, "past the end: nothing");
    cr_assert_eq(none.seen, 0);
    cr_assert_eq(th_reg_foreach_range(&reg, n - 2, UINT32_MAX, visit, &none), n, "clipped");
    struct visit_log stop = {.stop_at = 2};
    uint32_t at = th_reg_foreach_range(&reg, 0, n, visit, &stop);
    cr_assert_eq(stop.seen, 2, "stops when the visitor says so");
    cr_assert_eq(at, stop.last + 1, "and says where to go on from");
}

Test(registry, last_seen_from_live_slots_then_disconnect_record)
{
    reg_test_create(&reg, name, sizeof(name), "seen", 64);
    publish_self(&reg, 0);
    uint64_t ns = 0;
    cr_assert_eq(th_reg_last_seen(&reg, "carol", 5, &ns), 0, "never seen");
    struct th_handle a = claim_ok("carol", 0, 100), b = claim_ok("carol", 0, 200);
    th_reg_touch(&reg, a, 900);
    cr_assert_eq(th_reg_last_seen(&reg, "carol", 5, &ns), 1);
    cr_assert_eq(ns, 900, "the newest of the live slots");
    cr_assert_eq(th_reg_release(&reg, a), 0);
    cr_assert_eq(th_reg_last_seen(&reg, "carol", 5, &ns), 1);
    cr_assert_eq(ns, 200, "only b is live now");
    th_reg_touch(&reg, b, 1500);
    cr_assert_eq(th_reg_release(&reg, b), 0);
    cr_assert_eq(th_reg_last_seen(&reg, "carol", 5, &ns), 1);
    cr_assert_eq(ns, 1500, "the disconnect record keeps the last LastSeen");
    cr_assert_eq(th_reg_last_seen(&reg, "carl", 4, &ns), 0);
    cr_assert_eq(th_reg_last_seen(&reg, "", 0, &ns), 0);
}

/* A 256-slot registry where dave's window is full of entries pointing at a free slot. */
static uint32_t dave_window_full(const char *tag)
{
    reg_test_create(&reg, name, sizeof(name), tag, 256);
    publish_self(&reg, 0);
    uint32_t h = th_user_hash("dave", 4);
    /* Entries pointing at free slots: readers ignore those. */
    for (uint32_t j = 0; j < th_reg_window(); j++)
        atomic_store(&reg.index[th_reg_bucket(&reg, h, j)], th_index_entry(h, 0, 200));
    return h;
}

Test(registry, lookup_falls_back_to_scan_when_window_is_full)
{
    dave_window_full("window");
    struct th_handle d = claim_ok("dave", 0, 1);
    cr_assert_eq(atomic_load(&reg.hdr->unindexed), 1);
    cr_assert_eq(atomic_load(&reg.slots[d.slot].bucket), TH_NO_SLOT);
    struct th_conn_info ci[2];
    cr_assert_eq(th_reg_find_user(&reg, "dave", 4, ci, 2), 1);
    cr_assert_eq(ci[0].slot, d.slot);
    cr_assert_eq(th_reg_release(&reg, d), 0);
    cr_assert_eq(atomic_load(&reg.hdr->unindexed), 0);
    cr_assert_eq(th_reg_find_user(&reg, "dave", 4, ci, 2), 0);
}

Test(registry, release_clears_its_index_entry)
{
    reg_test_create(&reg, name, sizeof(name), "index", 64);
    publish_self(&reg, 0);
    struct th_handle e = claim_ok("erin", 0, 1);
    uint32_t b = atomic_load(&reg.slots[e.slot].bucket);
    cr_assert_eq(atomic_load(&reg.index[b]), th_index_entry(th_user_hash("erin", 4), 0, e.slot));
    th_reg_release(&reg, e);
    for (uint32_t i = 0; i < reg.hdr->nbuckets; i++)
        cr_assert_eq(atomic_load(&reg.index[i]), 0, "bucket %u", i);
}

/* ---- the notify path's lookup (th_reg_find_conns) and the spill counts ---- */

/* Every ref is one of find_user's connections, each at most once. */
static void same_refs(const char *user, size_t len, const struct th_conn_info *ci,
                      const struct th_conn_ref *cr, int n, const char *what)
{
    for (int i = 0; i < n; i++) {
        int found = 0;
        for (int j = 0; j < n; j++)
            found += ci[j].slot == cr[i].slot && ci[j].gen == cr[i].gen &&
                     ci[j].worker == cr[i].worker && ci[j].conn_id == cr[i].conn_id;
        cr_assert_eq(found, 1, "%.*s: %s ref %d", (int)len, user, what, i);
    }
}

/*
 * find_conns, and find_owners as the owners confirm it, agree with find_user
 * on every user: same slots, generations, owners, conn ids.
 */
static void same_answer(const char *user, size_t len, int want)
{
    struct th_conn_info ci[8];
    struct th_conn_ref cr[8];
    int n = th_reg_find_user(&reg, user, len, ci, 8);
    cr_assert_eq(n, want, "%.*s", (int)len, user);
    cr_assert_eq(th_reg_find_conns(&reg, user, len, cr, 8), n, "%.*s", (int)len, user);
    same_refs(user, len, ci, cr, n, "find_conns");
    cr_assert_eq(reg_test_confirmed(&reg, user, len, cr, 8), n, "%.*s", (int)len, user);
    same_refs(user, len, ci, cr, n, "confirmed");
}

Test(registry, find_conns_matches_find_user_for_every_id_length)
{
    reg_test_create(&reg, name, sizeof(name), "conns", 512);
    publish_self(&reg, 0);
    publish_self(&reg, 3);
    char user[TH_USER_MAX + 1];
    for (uint32_t k = 0; k < 60; k++) { /* test_user lengths 6..64: both sides of 48 bytes */
        size_t len = test_user(k, user);
        for (uint32_t c = 0; c <= k % 3; c++) {
            struct th_handle h;
            cr_assert_eq(th_reg_claim(&reg, user, len, (uint16_t)(c ? 3 : 0), k * 10 + c, 1, 0, &h,
                                      NULL, NULL),
                         0);
        }
    }
    for (uint32_t k = 0; k < 60; k++) {
        size_t len = test_user(k, user);
        same_answer(user, len, (int)(k % 3) + 1);
        same_answer(user, len - 1, 0); /* a prefix is another user */
        user[len - 1] ^= 1;            /* so is an id differing in its last byte only */
        same_answer(user, len, 0);
    }
    struct th_conn_ref one;
    cr_assert_eq(th_reg_find_conns(&reg, "x", 0, &one, 1), 0, "empty id");
    cr_assert_eq(th_reg_find_conns(&reg, user, TH_USER_MAX + 1, &one, 1), 0, "too long");
    test_user(2, user); /* three connections, room for one */
    cr_assert_eq(th_reg_find_conns(&reg, user, strlen(user), &one, 1), 1);
}

Test(registry, find_conns_zero_padding_does_not_match_a_longer_id)
{
    reg_test_create(&reg, name, sizeof(name), "pad", 64);
    publish_self(&reg, 0);
    claim_ok("a", 0, 1);
    struct th_conn_ref cr[2];
    cr_assert_eq(th_reg_find_conns(&reg, "a\0", 2, cr, 2), 0, "\"a\\0\" is not \"a\"");
    cr_assert_eq(th_reg_find_conns(&reg, "a", 1, cr, 2), 1);
}

Test(registry, a_full_first_line_spills_into_the_second_and_back)
{
    reg_test_create(&reg, name, sizeof(name), "spill", 512); /* 128 lines */
    publish_self(&reg, 0);
    char user[TH_USER_MAX + 1];
    struct th_handle h[40];
    uint32_t k = 0, l = 0;
    for (int i = 0; i < 40; i++) { /* 40 users whose first line is line 0 */
        k = test_user_crowded(&reg, k, 1u << 30, 1) + 1;
        size_t len = test_user(k - 1, user);
        cr_assert_eq(th_reg_claim(&reg, user, len, 0, (uint32_t)i, 1, 0, &h[i], NULL, NULL), 0);
        uint32_t b = atomic_load(&reg.slots[h[i].slot].bucket);
        if (i < (int)(TH_REG_BUCKETS - TH_REG_FIRST_ROOM + 1)) /* while 6 buckets are free */
            cr_assert_eq(b / TH_REG_LINE, l, "user %d goes into its first line", i);
        else
            cr_assert(b != TH_NO_SLOT && b / TH_REG_LINE != l, "user %d spills", i);
        uint64_t counts = atomic_load(&reg.index[l]);
        cr_assert_eq(th_reg_count_spill(counts), reg_test_spilled_from(&reg, l),
                     "spill count after %d", i);
        cr_assert_eq(th_reg_count_spill(counts), (uint32_t)(i < 10 ? 0 : i - 9), "user %d", i);
        cr_assert_eq(th_reg_count_back(counts), reg_test_back_of(&reg, l), "back count after %d",
                     i);
        cr_assert_eq(th_reg_count_back(counts),
                     (uint32_t)(i < 7    ? 0
                                : i < 10 ? i - 6
                                         : 3),
                     "user %d: the front line's 7 buckets first", i);
    }
    /* Their second lines differ (other hash bits), so none of them was full. */
    cr_assert_eq(atomic_load(&reg.hdr->unindexed), 0);
    k = 0;
    for (int i = 0; i < 40; i++) { /* every one of them is found, by both lookups */
        k = test_user_crowded(&reg, k, 1u << 30, 1) + 1;
        size_t len = test_user(k - 1, user);
        same_answer(user, len, 1);
    }
    for (int i = 0; i < 40; i++) { /* release the first-line ones first: spills stay counted */
        cr_assert_eq(th_reg_release(&reg, h[i]), 0);
        uint64_t counts = atomic_load(&reg.index[l]);
        cr_assert_eq(th_reg_count_spill(counts), reg_test_spilled_from(&reg, l),
                     "spill count after release %d", i);
        cr_assert_eq(th_reg_count_back(counts), reg_test_back_of(&reg, l),
                     "back count after release %d", i);
    }
    cr_assert_eq(atomic_load(&reg.index[l]), 0);
    cr_assert_eq(atomic_load(&reg.hdr->unindexed), 0);
}

Test(registry, a_spill_count_left_high_by_a_dead_process_only_costs_a_line)
{
    reg_test_create(&reg, name, sizeof(name), "spillhigh", 512);
    publish_self(&reg, 0);
    struct th_handle a = claim_ok("alice", 0, 1);
    uint32_t h = th_user_hash("alice", 5);
    /* As a claimer killed between its spill increment and its bucket CAS, or a
     * releaser killed between its bucket clear and its decrement, leaves it. */
    atomic_fetch_add(th_reg_spill(&reg, h), 1);
    same_answer("alice", 5, 1);
    same_answer("bob", 3, 0);
    cr_assert_eq(th_reg_release(&reg, a), 0);
    cr_assert_eq(atomic_load(th_reg_spill(&reg, h)), 1, "nobody lowers it: it may be real");
    same_answer("alice", 5, 0);
    a = claim_ok("alice", 0, 2);
    same_answer("alice", 5, 1);
}

Test(registry, find_conns_scans_when_a_window_is_full)
{
    uint32_t h = dave_window_full("connsfull");
    atomic_store(th_reg_spill(&reg, h), 1); /* as if a claim had spilled */
    struct th_handle d = claim_ok("dave", 0, 1);
    struct th_handle d2 = claim_ok("dave", 0, 2);
    cr_assert_eq(atomic_load(&reg.hdr->unindexed), 2);
    same_answer("dave", 4, 2);
    th_reg_release(&reg, d);
    same_answer("dave", 4, 1);
    th_reg_release(&reg, d2);
    same_answer("dave", 4, 0);
}

/* ---- dead writers ---- */

Test(registry, reclaim_worker_releases_only_that_worker)
{
    reg_test_create(&reg, name, sizeof(name), "reclaim", 64);
    publish_self(&reg, 2);
    for (int i = 0; i < 5; i++)
        claim_ok("w1user", 1, 10 + i);
    struct th_handle keep = claim_ok("w2user", 2, 1);
    claim_ok("w1user", 2, 1);
    cr_assert_eq(th_reg_reclaim_worker(&reg, 1), 5);
    cr_assert_eq(atomic_load(&reg.hdr->used), 2);
    struct th_conn_info ci[8];
    cr_assert_eq(th_reg_find_user(&reg, "w1user", 6, ci, 8), 1);
    cr_assert_eq(ci[0].worker, 2);
    cr_assert_eq(th_reg_read(&reg, keep.slot, ci), 1);
    cr_assert_eq(th_reg_reclaim_worker(&reg, 1), 0);
}

Test(registry, repair_releases_slots_of_dead_or_unpublished_workers)
{
    reg_test_create(&reg, name, sizeof(name), "deadw", 64);
    publish_self(&reg, 0);
    atomic_store(&reg.hdr->workers[1].pid, dead_pid());
    struct th_handle alive = claim_ok("x", 0, 1);
    claim_ok("x", 1, 1);
    claim_ok("y", 5, 1); /* worker 5 never published a pid */
    cr_assert_eq(th_reg_repair(&reg), 2);
    cr_assert_eq(th_reg_count_used(&reg), 1);
    cr_assert_eq(atomic_load(&reg.hdr->used), 1);
    struct th_conn_info ci;
    cr_assert_eq(th_reg_read(&reg, alive.slot, &ci), 1);
    uint64_t ns;
    cr_assert_eq(th_reg_last_seen(&reg, "y", 1, &ns), 1, "a repaired release still records");
}

/*
 * A worker killed with SIGKILL and not yet reaped by the supervisor is a
 * zombie: kill(pid, 0) still succeeds, but it will never serve its slots
 * again, so the sweep's repair releases them at once instead of waiting for
 * the waitpid.
 */
Test(registry, repair_releases_slots_of_a_zombie_worker)
{
    reg_test_create(&reg, name, sizeof(name), "zombw", 64);
    publish_self(&reg, 0);
    pid_t child = fork();
    cr_assert_geq(child, 0);
    if (child == 0) {
        pause();
        _exit(0);
    }
    atomic_store(&reg.hdr->workers[1].pid, child);
    claim_ok("z", 0, 1);
    claim_ok("z", 1, 1);
    cr_assert_eq(th_reg_repair(&reg), 0, "a live worker's slot is kept");
    kill(child, SIGKILL);
    siginfo_t si; /* wait until it is a zombie, without reaping it */
    cr_assert_eq(waitid(P_PID, (id_t)child, &si, WEXITED | WNOWAIT), 0);
    cr_assert_eq(kill(child, 0), 0, "a zombie still answers kill(pid, 0)");
    cr_assert_not(th_pid_alive(child));
    cr_assert_eq(th_reg_repair(&reg), 1, "the zombie's slot is released");
    cr_assert_eq(th_reg_count_used(&reg), 1);
    waitpid(child, NULL, 0);
}

/* Leave slot i in state st under a dead actor, as a claimer/releaser killed mid-way would. */
static void leave_half_done(uint32_t i, uint8_t st, const char *user)
{
    struct th_slot *s = &reg.slots[i];
    uint64_t c = atomic_load(&s->ctl);
    uint32_t gen = th_ctl_gen(c) + (st == TH_SLOT_CLAIMING);
    atomic_store(&s->ctl, th_ctl_make_actor(gen, dead_pid(), st));
    uint32_t h = th_user_hash(user, strlen(user));
    atomic_store(&s->user_hash, h);
    th_user_store(s->user, user, strlen(user));
    atomic_store(&s->user_len, strlen(user));
    atomic_store(&reg.index[th_reg_bucket(&reg, h, 3)],
                 th_index_entry(h, 0, i)); /* it had inserted */
    atomic_fetch_and(&reg.freemap[i / 64], ~(1ull << (i % 64)));
}

Test(registry, repair_finishes_claiming_and_releasing_of_dead_actors)
{
    reg_test_create(&reg, name, sizeof(name), "half", 64);
    publish_self(&reg, 0);
    struct th_handle live = claim_ok("fred", 0, 1);
    struct th_handle rel = claim_ok("gina", 0, 1);
    leave_half_done(rel.slot, TH_SLOT_RELEASING, "gina");
    leave_half_done(10, TH_SLOT_CLAIMING, "hank");
    atomic_fetch_add(&reg.hdr->used, 1); /* the dead claimer had counted its slot */
    struct th_conn_info ci;
    cr_assert_eq(th_reg_find_user(&reg, "hank", 4, &ci, 1), 0, "CLAIMING is not visible");
    uint64_t before = atomic_load(&reg.hdr->counters.repairs);
    cr_assert_eq(th_reg_repair(&reg), 2);
    cr_assert_eq(atomic_load(&reg.hdr->counters.repairs), before + 2);
    cr_assert_eq(th_ctl_state(atomic_load(&reg.slots[10].ctl)), TH_SLOT_FREE);
    cr_assert_eq(th_ctl_state(atomic_load(&reg.slots[rel.slot].ctl)), TH_SLOT_FREE);
    cr_assert(atomic_load(&reg.freemap[0]) & (1ull << 10), "free hint restored");
    for (uint32_t b = 0; b < reg.hdr->nbuckets; b++) {
        uint64_t v = atomic_load(&reg.index[b]);
        cr_assert(v == 0 || th_index_slot(v) == live.slot, "bucket %u still points at %u", b,
                  th_index_slot(v));
    }
    cr_assert_eq(atomic_load(&reg.hdr->used), 1);
    uint64_t ns;
    cr_assert_eq(th_reg_last_seen(&reg, "hank", 4, &ns), 0, "a never-live claim leaves no record");
    cr_assert_eq(th_reg_last_seen(&reg, "gina", 4, &ns), 1);
    cr_assert_eq(th_reg_read(&reg, live.slot, &ci), 1);
}

Test(registry, repair_leaves_transitions_of_live_actors_alone)
{
    reg_test_create(&reg, name, sizeof(name), "busy", 16);
    struct th_slot *s = &reg.slots[4];
    atomic_store(&s->ctl, th_ctl_make_actor(1, getppid(), TH_SLOT_CLAIMING));
    cr_assert_eq(th_reg_repair(&reg), 0);
    cr_assert_eq(th_ctl_state(atomic_load(&s->ctl)), TH_SLOT_CLAIMING);
    cr_assert_eq(th_ctl_actor(atomic_load(&s->ctl)), getppid());
}

Test(registry, repair_resets_disconnect_record_left_odd)
{
    reg_test_create(&reg, name, sizeof(name), "disc", 64);
    publish_self(&reg, 0);
    struct th_handle h = claim_ok("ivy", 0, 1);
    th_reg_touch(&reg, h, 777);
    th_reg_release(&reg, h);
    uint64_t ns;
    cr_assert_eq(th_reg_last_seen(&reg, "ivy", 3, &ns), 1);
    struct th_disc *d = &reg.disc[th_user_hash("ivy", 3) & (reg.hdr->ndisc - 1)];
    uint64_t s = atomic_load(&d->seq);
    atomic_store(&d->seq, ((uint64_t)dead_pid() << 32) | (uint32_t)(s + 1)); /* died mid-write */
    cr_assert_eq(th_reg_last_seen(&reg, "ivy", 3, &ns), 0, "an odd record is not trusted");
    th_reg_repair(&reg);
    cr_assert_eq(atomic_load(&d->seq) & 1, 0);
    cr_assert_eq(th_reg_last_seen(&reg, "ivy", 3, &ns), 0, "its content is discarded");
    h = claim_ok("ivy", 0, 1000);
    th_reg_release(&reg, h);
    cr_assert_eq(th_reg_last_seen(&reg, "ivy", 3, &ns), 1, "the entry is writable again");
    cr_assert_eq(ns, 1000);
}

Test(registry, repair_leaves_odd_record_of_live_writer)
{
    reg_test_create(&reg, name, sizeof(name), "disclive", 16);
    struct th_disc *d = &reg.disc[0];
    uint64_t odd = ((uint64_t)getppid() << 32) | 1;
    atomic_store(&d->seq, odd);
    th_reg_repair(&reg);
    cr_assert_eq(atomic_load(&d->seq), odd);
}

Test(registry, repair_restores_lost_free_hints_and_counter_drift)
{
    reg_test_create(&reg, name, sizeof(name), "hint", 8);
    publish_self(&reg, 0);
    struct th_handle h[8];
    for (int i = 0; i < 7; i++)
        h[i] = claim_ok("z", 0, 1);
    uint32_t last = 0;
    while (th_ctl_state(atomic_load(&reg.slots[last].ctl)) != TH_SLOT_FREE)
        last++;
    atomic_fetch_and(&reg.freemap[0], ~(1ull << last)); /* a releaser died before the hint */
    cr_assert_eq(th_reg_claim(&reg, "z", 1, 0, 1, 1, 0, &h[7], NULL, NULL), -ENOSPC);
    atomic_store(&reg.hdr->used, 3); /* and a process died between CAS and count */
    cr_assert_eq(th_reg_repair(&reg), 0);
    cr_assert_eq(atomic_load(&reg.hdr->used), 7);
    cr_assert_eq(th_reg_claim(&reg, "z", 1, 0, 1, 1, 0, &h[7], NULL, NULL), 0);
    cr_assert_eq(h[7].slot, last);
}

/* ---- helpers ---- */

Test(registry, pid_alive_and_hash)
{
    cr_assert(th_pid_alive(getpid()));
    cr_assert_not(th_pid_alive(dead_pid()));
    cr_assert_not(th_pid_alive(0));
    cr_assert_eq(th_user_hash("abc", 3), th_user_hash("abc", 3));
    cr_assert_neq(th_user_hash("abc", 3), th_user_hash("abd", 3));
    cr_assert_neq(th_user_hash("a", 1), th_user_hash("a\0", 2));
    cr_assert_eq(th_ctl_actor(th_ctl_make_actor(5, 4194303, TH_SLOT_RELEASING)), 4194303);
    cr_assert_eq(th_ctl_gen(th_ctl_make_actor(5, 4194303, TH_SLOT_RELEASING)), 5);
    cr_assert_eq(th_ctl_state(th_ctl_make_actor(5, 4194303, TH_SLOT_RELEASING)), TH_SLOT_RELEASING);
    cr_assert_str_eq(th_slot_state_name(TH_SLOT_LIVE), "live");
}

Test(registry, self_pid_is_refreshed_in_fork_children)
{
    cr_assert_eq(th_reg_self(), getpid());
    pid_t p = fork();
    if (p == 0)
        _exit(th_reg_self() == getpid() ? 0 : 1);
    int st;
    waitpid(p, &st, 0);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* ---- the notify path's index-only lookup (th_reg_find_owners) and the owner's check ---- */

/*
 * Two different ids with the same th_user_hash (a birthday search over random
 * 10-letter ids: about 8 colliding pairs expected among 2^18 32-bit hashes;
 * ids that differ in a few bytes only, like "c-1" and "c-2", never collide
 * under FNV-1a, so they would find none).
 */
struct hash_id {
    uint32_t hash;
    char id[12];
};
static int hash_id_cmp(const void *x, const void *y)
{
    const struct hash_id *a = x, *b = y;
    return a->hash != b->hash ? (a->hash > b->hash) - (a->hash < b->hash) : strcmp(a->id, b->id);
}
static void colliding_ids(char a[12], char b[12])
{
    enum { N = 1 << 18 };
    struct hash_id *v = malloc(N * sizeof(*v));
    cr_assert_not_null(v);
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (uint32_t k = 0; k < N; k++) {
        for (int c = 0; c < 10; c++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            v[k].id[c] = (char)('a' + (x >> 33) % 26);
        }
        v[k].id[10] = 0;
        v[k].hash = th_user_hash(v[k].id, 10);
    }
    qsort(v, N, sizeof(*v), hash_id_cmp);
    uint32_t i = 0;
    while (i + 1 < N && (v[i].hash != v[i + 1].hash || !strcmp(v[i].id, v[i + 1].id)))
        i++;
    cr_assert_lt(i + 1, N, "no two of %d ids share a hash", N);
    memcpy(a, v[i].id, 11);
    memcpy(b, v[i + 1].id, 11);
    free(v);
    cr_assert_str_neq(a, b);
    cr_assert_eq(th_user_hash(a, strlen(a)), th_user_hash(b, strlen(b)));
}

Test(registry, a_hash_twin_is_a_candidate_the_owner_refuses)
{
    char a[12], b[12];
    colliding_ids(a, b);
    reg_test_create(&reg, name, sizeof(name), "twin", 64);
    publish_self(&reg, 2);
    struct th_handle h;
    cr_assert_eq(th_reg_claim(&reg, a, strlen(a), 2, 5, 1, 0, &h, NULL, NULL), 0);
    struct th_owner_ref ow[4];
    /* The index cannot tell the twins apart: b's lookup names a's slot and owner. */
    cr_assert_eq(th_reg_find_owners(&reg, b, strlen(b), ow, 4), 1, "%s and %s", a, b);
    cr_assert_eq(ow[0].slot, h.slot);
    cr_assert_eq(ow[0].worker, 2);
    cr_assert_eq(th_reg_find_owners(&reg, a, strlen(a), ow, 4), 1);
    /* The owner's check can. */
    struct th_conn_ref cr;
    cr_assert_eq(th_reg_confirm(&reg, h.slot, 2, b, strlen(b), &cr), 0, "not b's connection");
    cr_assert_eq(th_reg_confirm(&reg, h.slot, 2, a, strlen(a), &cr), 1);
    cr_assert_eq(cr.slot, h.slot);
    cr_assert_eq(cr.gen, h.gen);
    cr_assert_eq(cr.worker, 2);
    cr_assert_eq(cr.conn_id, 5);
    cr_assert_eq(th_reg_confirm(&reg, h.slot, 1, a, strlen(a), &cr), 0, "another worker's slot");
    same_answer(a, strlen(a), 1);
    same_answer(b, strlen(b), 0);
    /* Released, then reused by b: a's stale candidate is refused, b's confirmed. */
    cr_assert_eq(th_reg_release(&reg, h), 0);
    cr_assert_eq(th_reg_find_owners(&reg, a, strlen(a), ow, 4), 0, "its entry went with it");
    cr_assert_eq(th_reg_confirm(&reg, h.slot, 2, a, strlen(a), &cr), 0, "a free slot");
    struct th_handle hb;
    cr_assert_eq(th_reg_claim(&reg, b, strlen(b), 2, 6, 1, 0, &hb, NULL, NULL), 0);
    if (hb.slot == h.slot)
        cr_assert_eq(th_reg_confirm(&reg, h.slot, 2, a, strlen(a), &cr), 0, "b holds it now");
    same_answer(b, strlen(b), 1);
    same_answer(a, strlen(a), 0);
}

Test(registry, find_owners_reads_what_the_claim_wrote_and_nothing_of_the_slot)
{
    reg_test_create(&reg, name, sizeof(name), "owners", 64);
    publish_self(&reg, 0);
    publish_self(&reg, 63);
    struct th_handle h0 = claim_ok("olga", 0, 1), h63 = claim_ok("olga", 63, 1);
    uint32_t hash = th_user_hash("olga", 4);
    cr_assert_eq(atomic_load(&reg.index[atomic_load(&reg.slots[h63.slot].bucket)]),
                 th_index_entry(hash, 63, h63.slot), "the highest worker index fits");
    /* Wipe both slots' line 0 (as if it were not there to read): the index alone answers. */
    struct th_slot s0 = reg.slots[h0.slot], s63 = reg.slots[h63.slot];
    memset(&reg.slots[h0.slot], 0, 64);
    memset(&reg.slots[h63.slot], 0, 64);
    struct th_owner_ref ow[4];
    cr_assert_eq(th_reg_find_owners(&reg, "olga", 4, ow, 4), 2);
    cr_assert(ow[0].slot != ow[1].slot);
    for (int i = 0; i < 2; i++)
        cr_assert_eq(ow[i].worker, ow[i].slot == h0.slot ? 0 : 63);
    cr_assert_eq(th_reg_find_owners(&reg, "olga", 4, ow, 1), 1, "at most max");
    cr_assert_eq(th_reg_find_owners(&reg, "olg", 3, ow, 4), 0);
    cr_assert_eq(th_reg_find_owners(&reg, "", 0, ow, 4), 0, "empty id");
    memcpy(&reg.slots[h0.slot], &s0, 64);
    memcpy(&reg.slots[h63.slot], &s63, 64);
    same_answer("olga", 4, 2);
}

Test(registry, confirm_checks_every_byte_of_long_ids)
{
    reg_test_create(&reg, name, sizeof(name), "confirm", 64);
    publish_self(&reg, 0);
    char user[TH_USER_MAX + 1];
    size_t len = test_user(58, user); /* 64 bytes: 16 of them on line 1 */
    struct th_handle h;
    cr_assert_eq(th_reg_claim(&reg, user, len, 0, 1, 1, 0, &h, NULL, NULL), 0);
    struct th_conn_ref cr;
    cr_assert_eq(th_reg_confirm(&reg, h.slot, 0, user, len, &cr), 1);
    user[len - 1] ^= 1;
    cr_assert_eq(th_reg_confirm(&reg, h.slot, 0, user, len, &cr), 0, "last byte differs");
    user[len - 1] ^= 1;
    cr_assert_eq(th_reg_confirm(&reg, h.slot, 0, user, len - 1, &cr), 0, "a prefix");
    cr_assert_eq(th_reg_confirm(&reg, h.slot, 0, user, 0, &cr), 0, "empty id");
    cr_assert_eq(th_reg_confirm(&reg, reg.hdr->nslots, 0, user, len, &cr), 0, "no such slot");
}

/* A claimer killed after its bucket CAS, before LIVE: its entry names a slot the owner refuses. */
Test(registry, an_entry_of_a_dead_claimer_is_refused_then_repaired)
{
    reg_test_create(&reg, name, sizeof(name), "deadclaim", 64);
    publish_self(&reg, 0);
    leave_half_done(12, TH_SLOT_CLAIMING, "ivan");
    atomic_fetch_add(&reg.hdr->used, 1);
    struct th_owner_ref ow[2];
    cr_assert_eq(th_reg_find_owners(&reg, "ivan", 4, ow, 2), 1, "the index has its entry");
    struct th_conn_ref cr;
    cr_assert_eq(th_reg_confirm(&reg, ow[0].slot, ow[0].worker, "ivan", 4, &cr), 0,
                 "not LIVE: the owner answers gone");
    same_answer("ivan", 4, 0);
    cr_assert_eq(th_reg_repair(&reg), 1);
    cr_assert_eq(th_reg_find_owners(&reg, "ivan", 4, ow, 2), 0, "repair cleared the entry");
}
