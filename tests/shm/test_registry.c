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
    cr_assert_geq(h.off_freemap, h.off_index + h.nbuckets * sizeof(uint32_t));
    cr_assert_geq(h.off_disc, h.off_freemap + (1000 + 63) / 64 * sizeof(uint64_t));
    cr_assert_geq(h.off_slots, h.off_disc + h.ndisc * sizeof(struct th_disc));
    cr_assert_leq(h.off_slots + 1000 * sizeof(struct th_slot), sz);
    cr_assert_eq(th_reg_layout(0, NULL), 0);
    cr_assert_eq(th_reg_layout(UINT32_MAX, NULL), 0);
    cr_assert_gt(th_reg_layout(1u << 20, NULL), 0);
    cr_assert_gt(th_reg_layout(1u << 24, NULL), 0, "the largest --slots");
    cr_assert_eq(th_reg_layout((1u << 24) + 1, NULL), 0, "a slot number must fit an index entry");
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
        atomic_store(&reg.index[th_reg_bucket(&reg, h, j)], th_index_entry(h, 200));
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
    cr_assert_eq(atomic_load(&reg.index[b]), th_index_entry(th_user_hash("erin", 4), e.slot));
    th_reg_release(&reg, e);
    for (uint32_t i = 0; i < reg.hdr->nbuckets; i++)
        cr_assert_eq(atomic_load(&reg.index[i]), 0, "bucket %u", i);
}

/* ---- the notify path's lookup (th_reg_find_conns) and the spill counts ---- */

/* find_conns and find_user agree on every user: same slots, generations, owners, conn ids. */
static void same_answer(const char *user, size_t len, int want)
{
    struct th_conn_info ci[8];
    struct th_conn_ref cr[8];
    int n = th_reg_find_user(&reg, user, len, ci, 8);
    cr_assert_eq(th_reg_find_conns(&reg, user, len, cr, 8), n, "%.*s", (int)len, user);
    cr_assert_eq(n, want, "%.*s", (int)len, user);
    for (int i = 0; i < n; i++) {
        int found = 0;
        for (int j = 0; j < n; j++)
            found += ci[j].slot == cr[i].slot && ci[j].gen == cr[i].gen &&
                     ci[j].worker == cr[i].worker && ci[j].conn_id == cr[i].conn_id;
        cr_assert_eq(found, 1, "%.*s: ref %d", (int)len, user, i);
    }
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
        cr_assert_eq(atomic_load(&reg.index[l]), reg_test_spilled_from(&reg, l),
                     "spill count after %d", i);
        cr_assert_eq(atomic_load(&reg.index[l]), (uint32_t)(i < 10 ? 0 : i - 9), "user %d", i);
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
        cr_assert_eq(atomic_load(&reg.index[l]), reg_test_spilled_from(&reg, l),
                     "spill count after release %d", i);
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
    atomic_store(&reg.index[th_reg_bucket(&reg, h, 3)], th_index_entry(h, i)); /* it had inserted */
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
        uint32_t v = atomic_load(&reg.index[b]);
        cr_assert(v == 0 || th_index_slot(v) == live.slot, "bucket %u still points at %u", b, v);
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
