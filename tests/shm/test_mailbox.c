/*
 * Unit tests of the mailbox (shm/mailbox*.c), one process at a time:
 * sizing, open/re-attach/replace and the epoch, the writer lock, seqs,
 * replay and its recovered verdict, each bound (ttl, per user, bytes) with
 * its eviction counter, idempotency lookups and outcomes, record
 * recycling keeping seqs increasing, arena wrap-around, and what a writer
 * killed inside a record change leaves (built by hand with a dead pid).
 */
#include <criterion/criterion.h>

#include "mbx_test.h"
#include "shm/mailbox_impl.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define S_NS 1000000000ull
#define T0 (1700000000ull * S_NS)

static struct th_mbx mb;
static char shm[96];

static void fini(void)
{
    if (mb.base)
        th_mbx_detach(&mb);
    if (shm[0])
        th_mbx_unlink(shm);
}

TestSuite(mailbox, .fini = fini);

static void open_new(uint64_t bytes, uint32_t per_user, uint32_t users)
{
    struct th_mbx_params p = {bytes, per_user, users};
    char err[256];
    int reused = -1;
    mbx_test_name(shm, sizeof(shm), "u");
    int rc = th_mbx_open(&mb, shm, &p, &reused, err, sizeof(err));
    cr_assert_eq(rc, 0, "open: %d %s", rc, err);
    cr_assert_eq(reused, 0);
    rc = th_mbx_writer_begin(&mb, getpid(), T0, err, sizeof(err));
    cr_assert_eq(rc, 0, "writer_begin: %d %s", rc, err);
}

/* Store one self-checking frame for user; returns its seq. */
static uint64_t put(const char *user, const char *id, uint64_t ttl_s, uint64_t now, size_t padmax)
{
    struct th_mbx_ticket t;
    char f[4096];
    uint64_t pos;
    cr_assert_eq(th_mbx_prepare(&mb, user, strlen(user), now, &t), 0);
    size_t len = mbx_frame(f, sizeof(f), user, t.seq, padmax);
    int rc = th_mbx_commit(&mb, &t, f, len, id, id ? strlen(id) : 0, ttl_s * S_NS, now, &pos);
    cr_assert_eq(rc, 0, "commit %s: %d", user, rc);
    cr_assert_eq(pos != 0, ttl_s != 0);
    return t.seq;
}

/* Replay user since; fills seqs (checking every frame); returns count, *rec the verdict. */
static int replay(const char *user, uint64_t since, uint64_t now, uint64_t *seqs, int max, int *rec)
{
    static struct th_mbx_replay rp;
    static char buf[TH_MBX_MAX_FRAME];
    struct th_mbx_item it;
    int n = 0;
    cr_assert_eq(th_mbx_replay_begin(&mb, user, strlen(user), since, &rp), 0);
    while (th_mbx_replay_next(&mb, &rp, now, buf, sizeof(buf), &it) == 1) {
        cr_assert(mbx_frame_ok(buf, it.len, user, it.seq), "frame of %s seq %llu torn", user,
                  (unsigned long long)it.seq);
        cr_assert_gt(it.seq, since);
        if (n)
            cr_assert_gt(it.seq, seqs[n - 1], "replay out of order");
        cr_assert_lt(n, max);
        seqs[n++] = it.seq;
    }
    *rec = th_mbx_replay_end(&mb, &rp);
    return n;
}

Test(mailbox, layout_sizes_and_limits)
{
    struct th_mbx_hdr h;
    struct th_mbx_params p = {64u << 20, 64, 0};
    cr_assert_eq(sizeof(struct th_mbx_entry), 64);
    cr_assert_eq(sizeof(struct th_mbx_user), 128);
    size_t sz = th_mbx_layout(&p, &h);
    cr_assert_eq(sz, 64u << 20);
    cr_assert_eq(h.total_size, sz);
    cr_assert_eq(h.nusers & (h.nusers - 1), 0);
    cr_assert_eq(h.rec_size, 128 + 64 * 8);
    cr_assert_geq(h.arena_bytes, sz / 2);
    cr_assert_eq(h.off_arena + h.arena_bytes, sz);
    cr_assert_eq(h.off_users % 64, 0);
    cr_assert_eq(h.off_arena % 64, 0);
    cr_assert_leq((uint64_t)h.nusers * h.rec_size, sz / 4);
    struct th_mbx_params small = {TH_MBX_BYTES_MIN - 1, 64, 0}, per0 = {64u << 20, 0, 0},
                         perbig = {64u << 20, TH_MBX_PER_USER_MAX + 1, 0},
                         toomany = {TH_MBX_BYTES_MIN, 1024, 100000};
    cr_assert_eq(th_mbx_layout(&small, NULL), 0);
    cr_assert_eq(th_mbx_layout(&per0, NULL), 0);
    cr_assert_eq(th_mbx_layout(&perbig, NULL), 0);
    cr_assert_eq(th_mbx_layout(&toomany, NULL), 0);
    char n[16];
    cr_assert_eq(th_mbx_name("/tether", n, sizeof(n)), 0);
    cr_assert_str_eq(n, "/tether.mailbox");
    cr_assert_eq(th_mbx_name("/tether-long", n, sizeof(n)), -ENAMETOOLONG);
}

Test(mailbox, reopen_keeps_epoch_and_entries_layout_change_does_not)
{
    open_new(2u << 20, 16, 0);
    char e1[TH_MBX_EPOCH_LEN + 1], e2[TH_MBX_EPOCH_LEN + 1], err[256];
    th_mbx_epoch(&mb, e1);
    cr_assert_eq(strlen(e1), 16);
    cr_assert_eq(put("alice", "id1", 60, T0, 100), 1);
    cr_assert_eq(put("alice", NULL, 60, T0, 100), 2);
    th_mbx_writer_end(&mb);
    th_mbx_detach(&mb);

    struct th_mbx_params p = {2u << 20, 16, 0};
    int reused = 0;
    cr_assert_eq(th_mbx_open(&mb, shm, &p, &reused, err, sizeof(err)), 0);
    cr_assert_eq(reused, 1, "not reused: %s", err);
    th_mbx_epoch(&mb, e2);
    cr_assert_str_eq(e1, e2);
    uint64_t seqs[8];
    int rec;
    cr_assert_eq(replay("alice", 0, T0 + S_NS, seqs, 8, &rec), 2);
    cr_assert_eq(rec, 1);
    cr_assert_eq(th_mbx_writer_begin(&mb, getpid(), T0, err, sizeof(err)), 0);
    cr_assert_eq(put("alice", NULL, 60, T0, 100), 3, "seq continues after a restart");
    th_mbx_detach(&mb);

    struct th_mbx_params q = {2u << 20, 32, 0}; /* --mailbox-per-user changed */
    cr_assert_eq(th_mbx_open(&mb, shm, &q, &reused, err, sizeof(err)), 0);
    cr_assert_eq(reused, 0);
    cr_assert(strstr(err, "layout differs"), "%s", err);
    th_mbx_epoch(&mb, e2);
    cr_assert_str_neq(e1, e2);
    cr_assert_eq(replay("alice", 0, T0, seqs, 8, &rec), 0);
}

Test(mailbox, reopen_refuses_a_live_writer_and_drops_expired)
{
    open_new(2u << 20, 16, 0);
    put("bob", NULL, 5, T0, 50);
    put("bob", NULL, 100, T0, 50);
    th_mbx_detach(&mb); /* our own pid stays the writer: alive */
    pid_t child = fork();
    if (child == 0) { /* another process: sees a live writer that is not itself */
        struct th_mbx m2;
        char err[256];
        cr_assert_eq(th_mbx_attach(&m2, shm, 1, err, sizeof(err)), 0);
        int rc = th_mbx_writer_begin(&m2, getpid(), T0, err, sizeof(err));
        _exit(rc == -EBUSY ? 0 : 1);
    }
    int st;
    waitpid(child, &st, 0);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "second live writer not refused");

    char err[256];
    cr_assert_eq(th_mbx_attach(&mb, shm, 1, err, sizeof(err)), 0);
    atomic_store(&mb.hdr->writer_pid, mbx_dead_pid());
    cr_assert_eq(th_mbx_writer_begin(&mb, getpid(), T0 + 10 * S_NS, err, sizeof(err)), 0);
    uint64_t seqs[4];
    int rec;
    cr_assert_eq(replay("bob", 0, T0 + 10 * S_NS, seqs, 4, &rec), 1);
    cr_assert_eq(seqs[0], 2);
    cr_assert_eq(rec, 0, "seq 1 expired: not recovered from 0");
    cr_assert_eq(replay("bob", 1, T0 + 10 * S_NS, seqs, 4, &rec), 1);
    cr_assert_eq(rec, 1);
    cr_assert_eq(atomic_load(&mb.hdr->counters.evicted[TH_MBX_EV_TTL]), 1);
    cr_assert_eq(atomic_load(&mb.hdr->entries), 1);
}

Test(mailbox, another_boot_or_a_live_old_writer_starts_a_new_epoch)
{
    struct th_mbx_params p = {2u << 20, 16, 0};
    char e1[TH_MBX_EPOCH_LEN + 1], e2[TH_MBX_EPOCH_LEN + 1], err[256];
    int reused;
    open_new(2u << 20, 16, 0);
    put("boot", NULL, 60, T0, 10);
    th_mbx_epoch(&mb, e1);
    th_mbx_writer_end(&mb);
    memcpy(mb.hdr->boot_id, "another-boot", 13); /* as if made before a reboot */
    th_mbx_detach(&mb);
    cr_assert_eq(th_mbx_open(&mb, shm, &p, &reused, err, sizeof(err)), 0);
    cr_assert_eq(reused, 0);
    cr_assert(strstr(err, "before the last reboot"), "%s", err);
    th_mbx_epoch(&mb, e2);
    cr_assert_str_neq(e1, e2);

    /* A process of an earlier group that still writes it (alive, not us). */
    pid_t child = fork();
    if (child == 0) {
        pause();
        _exit(0);
    }
    atomic_store(&mb.hdr->writer_pid, child);
    atomic_store(&mb.hdr->writer_start, th_proc_start_time(child));
    th_mbx_detach(&mb);
    int rc = th_mbx_open(&mb, shm, &p, &reused, err, sizeof(err));
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    cr_assert_eq(rc, 0);
    cr_assert_eq(reused, 0);
    cr_assert(strstr(err, "still writes it"), "%s", err);
}

Test(mailbox, attach_missing_and_read_only)
{
    struct th_mbx m2;
    char err[256];
    cr_assert_eq(th_mbx_attach(&m2, "/th-test-mbx-none", 0, err, sizeof(err)), -ENOENT);
    open_new(2u << 20, 8, 0);
    put("carol", NULL, 60, T0, 10);
    cr_assert_eq(th_mbx_attach(&m2, shm, 0, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(m2.writable, 0);
    struct th_mbx_ticket t;
    cr_assert_eq(th_mbx_prepare(&m2, "carol", 5, T0, &t), -EROFS);
    uint32_t pending;
    uint64_t last;
    cr_assert_eq(th_mbx_user_info(&m2, "carol", 5, T0, &pending, &last), 0);
    cr_assert_eq(pending, 1);
    cr_assert_eq(last, 1);
    th_mbx_detach(&m2);
}

Test(mailbox, seqs_per_user_and_replay_since)
{
    open_new(4u << 20, 64, 0);
    for (int k = 1; k <= 10; k++) {
        cr_assert_eq(put("u1", NULL, 60, T0, 300), (uint64_t)k);
        cr_assert_eq(put("u2", NULL, 60, T0, 300), (uint64_t)k);
    }
    uint64_t seqs[64];
    int rec;
    cr_assert_eq(replay("u1", 0, T0, seqs, 64, &rec), 10);
    cr_assert_eq(rec, 1);
    cr_assert_eq(replay("u2", 7, T0, seqs, 64, &rec), 3);
    cr_assert_eq(seqs[0], 8);
    cr_assert_eq(rec, 1);
    cr_assert_eq(replay("u1", 10, T0, seqs, 64, &rec), 0);
    cr_assert_eq(rec, 1);
    cr_assert_eq(replay("u1", 11, T0, seqs, 64, &rec), 0);
    cr_assert_eq(rec, 0, "since ahead of the latest seq");
    cr_assert_eq(replay("nobody", 0, T0, seqs, 64, &rec), 0);
    cr_assert_eq(rec, 1);
    cr_assert_eq(replay("nobody", 3, T0, seqs, 64, &rec), 0);
    cr_assert_eq(rec, 0);
    cr_assert_eq(atomic_load(&mb.hdr->counters.stored), 20);
    struct th_mbx_stats st;
    th_mbx_stats(&mb, &st);
    cr_assert_eq(st.entries, 20);
    cr_assert_eq(st.oldest_ns, T0);
    cr_assert_gt(st.bytes, 20 * 64);
}

Test(mailbox, ttl_zero_keeps_only_the_seq)
{
    open_new(2u << 20, 8, 0);
    cr_assert_eq(put("d", NULL, 60, T0, 10), 1);
    cr_assert_eq(put("d", NULL, 0, T0, 10), 2);
    cr_assert_eq(put("d", NULL, 60, T0, 10), 3);
    uint64_t seqs[8];
    int rec;
    cr_assert_eq(replay("d", 0, T0, seqs, 8, &rec), 2);
    cr_assert_eq(seqs[0], 1);
    cr_assert_eq(seqs[1], 3);
    cr_assert_eq(rec, 1, "an unstored notification is not a loss");
}

Test(mailbox, per_user_bound_evicts_oldest)
{
    open_new(2u << 20, 4, 0);
    for (int k = 0; k < 6; k++)
        put("e", NULL, 60, T0, 10);
    uint64_t seqs[8];
    int rec;
    cr_assert_eq(replay("e", 0, T0, seqs, 8, &rec), 4);
    cr_assert_eq(seqs[0], 3);
    cr_assert_eq(rec, 0);
    cr_assert_eq(replay("e", 2, T0, seqs, 8, &rec), 4);
    cr_assert_eq(rec, 1);
    cr_assert_eq(atomic_load(&mb.hdr->counters.evicted[TH_MBX_EV_PER_USER]), 2);
    cr_assert_eq(atomic_load(&mb.hdr->entries), 4);
}

Test(mailbox, byte_bound_evicts_oldest_and_wraps)
{
    open_new(TH_MBX_BYTES_MIN, 256, 64);
    uint64_t arena = mb.hdr->arena_bytes;
    int total = 0;
    char user[8];
    /* Several laps of the arena with frames of varying size. */
    for (uint64_t written = 0; written < 4 * arena; total++) {
        snprintf(user, sizeof(user), "w%d", total % 5);
        put(user, NULL, 60, T0, 3000);
        written += 64 + 3000;
    }
    cr_assert_gt(atomic_load(&mb.hdr->counters.evicted[TH_MBX_EV_FULL]), 0);
    struct th_mbx_stats st;
    th_mbx_stats(&mb, &st);
    cr_assert_leq(st.log_bytes, arena);
    cr_assert_leq(st.bytes, st.log_bytes);
    uint64_t kept = 0;
    for (int u = 0; u < 5; u++) {
        uint64_t seqs[1024], latest;
        uint32_t pending;
        int rec;
        snprintf(user, sizeof(user), "w%d", u);
        int n = replay(user, 0, T0, seqs, 1024, &rec);
        cr_assert_gt(n, 0);
        cr_assert_eq(rec, 0, "the oldest were evicted");
        th_mbx_user_info(&mb, user, strlen(user), T0, &pending, &latest);
        cr_assert_eq(seqs[n - 1], latest, "the newest is kept");
        cr_assert_eq(seqs[n - 1] - seqs[0] + 1, (uint64_t)n, "what is kept is contiguous");
        cr_assert_eq(pending, (uint32_t)n);
        kept += (uint64_t)n;
    }
    cr_assert_eq(kept, st.entries);
    cr_assert_eq(kept + atomic_load(&mb.hdr->counters.evicted[TH_MBX_EV_FULL]), (uint64_t)total);
}

/*
 * th_mbx_prefetch is a hint: every stage, for users with full rings, users
 * with room, users never seen and hashes of nobody, leaves every byte of
 * the object as it was, and the stores and replays after it are the same.
 * (The reclaim lookahead inside the stores is covered by the wrap tests.)
 */
Test(mailbox, prefetch_hints_change_nothing)
{
    open_new(TH_MBX_BYTES_MIN, 8, 64);
    char user[8];
    for (int k = 0; k < 200; k++) { /* p0..p3: full rings; p4: room left */
        snprintf(user, sizeof(user), "p%d", k % 4);
        put(user, NULL, 60, T0, 500);
    }
    put("p4", NULL, 60, T0, 500);
    size_t size = mb.size;
    char *before = malloc(size);
    cr_assert(before);
    memcpy(before, mb.base, size);
    const char *who[] = {"p0", "p1", "p2", "p3", "p4", "nobody"};
    for (int stage = 0; stage < 3; stage++) {
        for (int u = 0; u < 6; u++)
            th_mbx_prefetch(&mb, th_user_hash(who[u], strlen(who[u])), stage);
        for (uint32_t h = 0; h < 4096; h += 7)
            th_mbx_prefetch(&mb, h * 0x9e3779b1u, stage);
    }
    cr_assert_eq(memcmp(before, mb.base, size), 0, "a prefetch changed the mailbox");
    free(before);
    for (int u = 0; u < 5; u++) {
        uint64_t seqs[16];
        int rec;
        uint64_t next = put(who[u], NULL, 60, T0, 500);
        int n = replay(who[u], 0, T0, seqs, 16, &rec);
        cr_assert_eq(seqs[n - 1], next, "%s: the new one is kept", who[u]);
        cr_assert_eq(n, u < 4 ? 8 : 2, "%s: %d kept", who[u], n);
    }
}

Test(mailbox, ttl_expiry_and_per_notification_ttl)
{
    open_new(2u << 20, 16, 0);
    put("f", NULL, 10, T0, 10);
    put("f", NULL, 2, T0, 10); /* shorter ttl in the middle */
    put("f", NULL, 10, T0, 10);
    uint64_t seqs[8];
    int rec;
    cr_assert_eq(replay("f", 0, T0 + 1 * S_NS, seqs, 8, &rec), 3);
    cr_assert_eq(rec, 1);
    cr_assert_eq(replay("f", 0, T0 + 3 * S_NS, seqs, 8, &rec), 2);
    cr_assert_eq(rec, 0, "seq 2 expired");
    cr_assert_eq(replay("f", 2, T0 + 3 * S_NS, seqs, 8, &rec), 1);
    cr_assert_eq(rec, 1);
    cr_assert_eq(th_mbx_expire(&mb, T0 + 3 * S_NS), 0, "tail not expired yet");
    cr_assert_eq(th_mbx_expire(&mb, T0 + 11 * S_NS), 3);
    cr_assert_eq(atomic_load(&mb.hdr->counters.evicted[TH_MBX_EV_TTL]), 3);
    cr_assert_eq(atomic_load(&mb.hdr->entries), 0);
    cr_assert_eq(replay("f", 0, T0 + 11 * S_NS, seqs, 8, &rec), 0);
    cr_assert_eq(rec, 0);
    cr_assert_eq(replay("f", 3, T0 + 11 * S_NS, seqs, 8, &rec), 0);
    cr_assert_eq(rec, 1);
}

Test(mailbox, idempotency_lookup_and_outcomes)
{
    open_new(2u << 20, 16, 0);
    put("g", "req-1", 60, T0, 10);
    put("g", "req-2", 60, T0, 10);
    put("h", "req-1", 60, T0, 10);
    struct th_mbx_hit hit;
    cr_assert_eq(th_mbx_find_id(&mb, "g", 1, "req-2", 5, T0, &hit), 1);
    cr_assert_eq(hit.seq, 2);
    cr_assert_eq(hit.status, 0);
    cr_assert_eq(hit.mine, 1, "in flight by this writer");
    cr_assert_eq(th_mbx_find_id(&mb, "g", 1, "req-3", 5, T0, &hit), 0);
    cr_assert_eq(th_mbx_find_id(&mb, "h", 1, "req-2", 5, T0, &hit), 0);
    cr_assert_eq(th_mbx_find_id(&mb, "h", 1, "req-1", 5, T0, &hit), 1);
    cr_assert_eq(hit.seq, 1);
    th_mbx_set_outcome(&mb, hit.pos, 200, 2);
    cr_assert_eq(th_mbx_find_id(&mb, "h", 1, "req-1", 5, T0, &hit), 1);
    cr_assert_eq(hit.status, 200);
    cr_assert_eq(hit.connections, 2);
    cr_assert_eq(hit.mine, 0);
    char buf[TH_MBX_MAX_FRAME];
    ssize_t n = th_mbx_read_frame(&mb, hit.pos, buf, sizeof(buf));
    cr_assert_gt(n, 0);
    cr_assert(mbx_frame_ok(buf, (size_t)n, "h", 1));
    /* A successor writer: the old writer's unanswered entries are "unknown", answered ones stay. */
    char err[128];
    cr_assert_eq(th_mbx_writer_begin(&mb, getpid(), T0, err, sizeof(err)), 0);
    cr_assert_eq(th_mbx_find_id(&mb, "g", 1, "req-1", 5, T0, &hit), 1);
    cr_assert_eq(hit.status, 0);
    cr_assert_eq(hit.mine, 0);
    cr_assert_eq(th_mbx_find_id(&mb, "h", 1, "req-1", 5, T0, &hit), 1);
    cr_assert_eq(hit.status, 200);
    /* Past its ttl an id is free again. */
    cr_assert_eq(th_mbx_find_id(&mb, "g", 1, "req-1", 5, T0 + 61 * S_NS, &hit), 0);
    th_mbx_expire(&mb, T0 + 61 * S_NS);
    cr_assert_eq(th_mbx_read_frame(&mb, hit.pos, buf, sizeof(buf)), -ESTALE);
}

Test(mailbox, recycled_records_keep_seqs_increasing)
{
    open_new(4u << 20, 8, 64); /* 64 records: many more users must recycle them */
    char u[16];
    uint64_t last[400] = {0};
    for (int round = 0; round < 3; round++)
        for (int k = 0; k < 400; k++) {
            snprintf(u, sizeof(u), "r%d", k);
            uint64_t s = put(u, NULL, 1, T0 + (uint64_t)round * 10 * S_NS, 10);
            cr_assert_gt(s, last[k], "user %s got seq %llu after %llu", u, (unsigned long long)s,
                         (unsigned long long)last[k]);
            last[k] = s;
        }
    uint64_t seqs[8];
    int rec;
    /* A user whose record went away: recovered only if nothing after since could be lost. */
    snprintf(u, sizeof(u), "r%d", 0);
    replay(u, 0, T0 + 100 * S_NS, seqs, 8, &rec);
    cr_assert_eq(rec, 0);
}

Test(mailbox, users_up_to_60_percent_of_records_keep_their_entries)
{
    open_new(8u << 20, 8, 1024);
    cr_assert_eq(mb.hdr->nusers, 1024);
    char u[16];
    for (int k = 0; k < 614; k++) {
        snprintf(u, sizeof(u), "live%d", k);
        put(u, NULL, 60, T0, 10);
    }
    cr_assert_eq(atomic_load(&mb.hdr->counters.evicted[TH_MBX_EV_FULL]), 0,
                 "a live user's entries were evicted to make room for another user");
    cr_assert_eq(atomic_load(&mb.hdr->entries), 614);
}

Test(mailbox, dead_writer_mid_change_is_readable_and_repaired)
{
    open_new(2u << 20, 8, 0);
    put("k", NULL, 60, T0, 10);
    put("k", NULL, 60, T0, 10);
    /* Hand-made: the writer died inside a change of k's record (seq stored, ring not yet). */
    struct th_mbx_rec_copy c = {0};
    uint32_t i = th_mbx_rec_find(&mb, "k", 1, th_user_hash("k", 1), &c);
    cr_assert_neq(i, TH_MBX_NONE);
    struct th_mbx_user *r = th_mbx_rec(&mb, i);
    atomic_store(&mb.hdr->busy_rec, i);
    atomic_store(&r->ver, atomic_load(&r->ver) | 1);
    atomic_store(&r->seq, 3);
    atomic_store(&mb.hdr->writer_pid, mbx_dead_pid());
    uint64_t seqs[8];
    int rec;
    cr_assert_eq(replay("k", 0, T0, seqs, 8, &rec), 2, "readable while the writer is dead");
    cr_assert_eq(rec, 1);
    char err[128];
    cr_assert_eq(th_mbx_writer_begin(&mb, getpid(), T0, err, sizeof(err)), 0);
    cr_assert_eq(atomic_load(&r->ver) & 1, 0, "repaired");
    cr_assert_eq(atomic_load(&mb.hdr->busy_rec), TH_MBX_NONE);
    cr_assert_eq(put("k", NULL, 60, T0, 10), 4, "the seq taken by the dead writer is not reused");
    cr_assert_eq(atomic_load(&mb.hdr->entries), 3);
}

Test(mailbox, oversized_frames_refused)
{
    open_new(TH_MBX_BYTES_MIN, 8, 0);
    struct th_mbx_ticket t;
    static char big[TH_MBX_MAX_FRAME + 1];
    uint64_t pos;
    memset(big, 'x', sizeof(big));
    cr_assert_eq(th_mbx_prepare(&mb, "z", 1, T0, &t), 0);
    cr_assert_eq(th_mbx_commit(&mb, &t, big, sizeof(big), NULL, 0, S_NS, T0, &pos), -E2BIG);
    cr_assert_eq(th_mbx_commit(&mb, &t, big, 100, NULL, 0, S_NS, T0, &pos), 0);
    cr_assert_eq(th_mbx_commit(&mb, &t, big, 100, NULL, 0, S_NS, T0, &pos), -ESTALE);
}

/* As a cache of a JetStream mailbox (notifier/mailbox_js.c): the seq is given. */
static int put_at(const char *user, uint64_t seq, uint64_t gone, uint64_t ttl_s)
{
    struct th_mbx_ticket t;
    char f[512];
    uint64_t pos;
    int rc = th_mbx_prepare_at(&mb, user, strlen(user), seq, gone, T0, &t);
    if (rc != 1)
        return rc;
    size_t len = mbx_frame(f, sizeof(f), user, seq, 20);
    cr_assert_eq(th_mbx_commit(&mb, &t, f, len, NULL, 0, ttl_s * S_NS, T0, &pos), 0);
    return 1;
}

Test(mailbox, cache_takes_given_seqs_in_order)
{
    open_new(2u << 20, 8, 0);
    th_mbx_reset(&mb, 0, 0);
    cr_assert_eq(put_at("c", 5, 0, 60), 1);
    cr_assert_eq(put_at("c", 9, 5, 60), 1, "prev 5 held: nothing gone");
    cr_assert_eq(put_at("c", 9, 5, 60), 0, "held already");
    cr_assert_eq(put_at("c", 7, 0, 60), 0, "older than held: skipped");
    uint64_t seqs[8];
    int rec;
    cr_assert_eq(replay("c", 0, T0, seqs, 8, &rec), 2);
    cr_assert_eq(seqs[0], 5);
    cr_assert_eq(seqs[1], 9);
    cr_assert_eq(rec, 1, "non-contiguous seqs are no loss");
    cr_assert_eq(replay("c", 5, T0, seqs, 8, &rec), 1);
    cr_assert_eq(rec, 1);
    /* A message whose prev (12) this cache never saw: everything up to 12 is gone. */
    cr_assert_eq(put_at("c", 14, 12, 60), 1);
    cr_assert_eq(replay("c", 9, T0, seqs, 8, &rec), 1);
    cr_assert_eq(rec, 0, "seq 12 left the stream before this cache saw it");
    cr_assert_eq(replay("c", 12, T0, seqs, 8, &rec), 1);
    cr_assert_eq(rec, 1);
    /* Expired before it was mirrored: kept as a seq, counted as gone. */
    cr_assert_eq(put_at("c", 20, 20, 0), 1);
    cr_assert_eq(replay("c", 14, T0, seqs, 8, &rec), 0);
    cr_assert_eq(rec, 0);
}

Test(mailbox, cache_reset_floor_and_source)
{
    open_new(2u << 20, 8, 0);
    uint64_t at;
    int filled;
    cr_assert_eq(th_mbx_source(&mb, &at, &filled), 0, "a mailbox of its own");
    put("old", NULL, 60, T0, 10);
    th_mbx_reset(&mb, 0, 100);
    th_mbx_set_source_seq(&mb, 100);
    cr_assert_eq(th_mbx_source(&mb, &at, &filled), 1);
    cr_assert_eq(at, 100);
    cr_assert_eq(filled, 0, "epoch 0 while filling");
    char ep[TH_MBX_EPOCH_LEN + 1];
    th_mbx_epoch(&mb, ep);
    cr_assert_str_eq(ep, "0000000000000000");
    uint64_t seqs[8];
    int rec;
    cr_assert_eq(replay("old", 0, T0, seqs, 8, &rec), 0, "reset dropped it");
    cr_assert_eq(put_at("new", 101, 0, 60), 1);
    cr_assert_eq(replay("new", 0, T0, seqs, 8, &rec), 1);
    cr_assert_eq(rec, 0, "seqs up to the floor may have been this user's");
    cr_assert_eq(replay("new", 100, T0, seqs, 8, &rec), 1);
    cr_assert_eq(rec, 1);
    th_mbx_set_epoch(&mb, 0x1234);
    th_mbx_set_source_seq(&mb, 101);
    cr_assert_eq(th_mbx_source(&mb, &at, &filled), 1);
    cr_assert_eq(filled, 1);
    cr_assert_eq(at, 101);
    th_mbx_epoch(&mb, ep);
    cr_assert_str_eq(ep, "0000000000001234");
}

/*
 * Seqs that left the source before the cache applied them, nobody knows
 * whose (expired from the stream ahead of the mirror): a user whose last
 * seq is below them must not resume recovered:true from before them, one
 * whose seqs are all above stays exact, and so does a user met later.
 */
Test(mailbox, cache_gone_upto_unknown_owner)
{
    open_new(2u << 20, 8, 0);
    uint64_t seqs[8];
    int rec;
    cr_assert_eq(put_at("held", 10, 0, 60), 1);
    cr_assert_eq(put_at("later", 30, 0, 60), 1);
    cr_assert_eq(replay("held", 10, T0, seqs, 8, &rec), 0);
    cr_assert_eq(rec, 1, "nothing after 10 known gone yet");
    th_mbx_gone_upto(&mb, 20); /* 11..20 left unapplied */
    cr_assert_eq(replay("held", 10, T0, seqs, 8, &rec), 0);
    cr_assert_eq(rec, 0, "seq 11..20 may have been held's: not recovered");
    cr_assert_eq(replay("held", 0, T0, seqs, 8, &rec), 1, "what is stored still replays");
    cr_assert_eq(seqs[0], 10);
    cr_assert_eq(replay("held", 20, T0, seqs, 8, &rec), 0);
    cr_assert_eq(rec, 1, "from the end of the hole on it is exact");
    cr_assert_eq(replay("later", 30, T0, seqs, 8, &rec), 0);
    cr_assert_eq(rec, 1, "a user whose seqs are all above the hole lost nothing");
    cr_assert_eq(replay("new", 5, T0, seqs, 8, &rec), 0);
    cr_assert_eq(rec, 0, "a user met later: the floor covers the hole");
    cr_assert_eq(put_at("held", 25, 0, 60), 1, "seqs after it are applied as usual");
    cr_assert_eq(replay("held", 20, T0, seqs, 8, &rec), 1);
    cr_assert_eq(seqs[0], 25);
    cr_assert_eq(rec, 1);
}

/* What a cache's writer leaves for its successor (mailbox_js keeps the cache with it). */
Test(mailbox, cache_source_left_for_the_next_writer)
{
    open_new(2u << 20, 8, 0);
    uint64_t ep, at, handed;
    cr_assert_eq(th_mbx_source_left(&mb, &ep, &at, &handed), 0, "not a cache");
    th_mbx_set_source_seq(&mb, 100);
    cr_assert_eq(th_mbx_source_left(&mb, &ep, &at, &handed), 0, "no source epoch recorded");
    th_mbx_set_source_epoch(&mb, 0x77);
    th_mbx_set_source_handed(&mb, 90);
    th_mbx_writer_end(&mb);
    char err[160] = "";
    cr_assert_eq(th_mbx_writer_begin(&mb, getpid(), T0, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(th_mbx_source_left(&mb, &ep, &at, &handed), 1);
    cr_assert_eq(ep, 0x77);
    cr_assert_eq(at, 100);
    cr_assert_eq(handed, 90);
    th_mbx_set_source_handed(&mb, 120); /* never past what was applied */
    cr_assert_eq(th_mbx_source_left(&mb, &ep, &at, &handed), 1);
    cr_assert_eq(handed, 100);
}

/*
 * A new writer of a cache (its predecessor died while other nodes stored on)
 * starts with epoch 0, before it counts as alive: no resume may be answered
 * recovered:true from the stale content while it refills (cluster_jetstream
 * caught a resume between th_mbx_writer_begin and the notifier's own reset).
 */
Test(mailbox, new_writer_of_a_cache_matches_no_epoch)
{
    open_new(2u << 20, 8, 0);
    th_mbx_set_epoch(&mb, 0x1234);
    th_mbx_set_source_seq(&mb, 100);
    th_mbx_writer_end(&mb); /* the notifier is gone */
    char err[160] = "", ep[TH_MBX_EPOCH_LEN + 1];
    cr_assert_eq(th_mbx_writer_begin(&mb, getpid(), T0, err, sizeof(err)), 0, "%s", err);
    uint64_t at;
    int filled;
    cr_assert_eq(th_mbx_source(&mb, &at, &filled), 1);
    cr_assert_eq(filled, 0, "a restarted cache writer kept the stale epoch");
    th_mbx_epoch(&mb, ep);
    cr_assert_str_eq(ep, "0000000000000000");

    /* A mailbox of its own keeps its epoch over a writer restart. */
    fini();
    open_new(2u << 20, 8, 0);
    char e1[TH_MBX_EPOCH_LEN + 1];
    th_mbx_epoch(&mb, e1);
    th_mbx_writer_end(&mb);
    cr_assert_eq(th_mbx_writer_begin(&mb, getpid(), T0, err, sizeof(err)), 0, "%s", err);
    th_mbx_epoch(&mb, ep);
    cr_assert_str_eq(ep, e1);
}

/*
 * A writer killed with kill -9 and not yet reaped by its parent (a zombie)
 * is dead: a cache it wrote must read as stale at once, not only after the
 * supervisor's waitpid (cluster_jetstream resumed from such a cache in that
 * window and answered recovered:true without what others had stored).
 */
Test(mailbox, a_killed_unreaped_writer_is_dead)
{
    open_new(2u << 20, 8, 0);
    pid_t child = fork();
    if (child == 0) {
        pause();
        _exit(0);
    }
    uint64_t start = th_proc_start_time(child);
    cr_assert_neq(start, 0);
    atomic_store(&mb.hdr->writer_pid, child);
    atomic_store(&mb.hdr->writer_start, start);
    cr_assert_eq(th_mbx_writer_alive(&mb), 1, "a live writer");
    kill(child, SIGKILL);
    /* Not reaped: wait until the kernel made it a zombie (bounded). */
    siginfo_t si;
    int rc = waitid(P_PID, (id_t)child, &si, WEXITED | WNOWAIT);
    cr_assert_eq(rc, 0, "waitid: %d", errno);
    cr_assert_eq(kill(child, 0), 0, "a zombie still answers kill(pid, 0)");
    cr_assert_eq(th_mbx_writer_alive(&mb), 0, "a zombie writer counted as alive");
    waitpid(child, NULL, 0);
    atomic_store(&mb.hdr->writer_pid, getpid());
    atomic_store(&mb.hdr->writer_start, th_proc_start_time(getpid()));
}

/* /proc/PID/stat as the kernel has it: state letter and field 9 (flags); 0 when gone. */
static char raw_stat(pid_t pid, unsigned long *flags)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    size_t n = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
    if (f)
        fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')'), st;
    if (!p || sscanf(p + 2, "%c %*d %*d %*d %*d %*d %lu", &st, flags) != 2)
        return 0;
    return st;
}

/*
 * Between a kill -9 and its zombie state a process is exiting (PF_EXITING in
 * /proc/PID/stat flags): its threads are being torn down, its sockets close
 * (the broker drops its subscriptions, other nodes store for its users with
 * nobody mirroring), yet kill(pid, 0) succeeds and the state is R or D. It
 * never runs user code again: a writer in that state is dead. A child with
 * a large touched heap makes the window milliseconds long (freeing it); the
 * parent looks at the writer each time /proc shows it exiting and not yet a
 * zombie (cluster_jetstream test_6 resumed in that window, under TSan, and
 * answered recovered:true without what another node had stored).
 */
Test(mailbox, an_exiting_writer_is_dead)
{
    open_new(2u << 20, 8, 0);
    unsigned seen = 0;
    for (int attempt = 0; attempt < 8 && seen < 3; attempt++) {
        int ready[2];
        cr_assert_eq(pipe(ready), 0);
        pid_t child = fork();
        if (child == 0) {
            size_t big = 512u << 20;
            char *m = mmap(NULL, big, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            for (size_t k = 0; m != MAP_FAILED && k < big; k += 4096)
                m[k] = 1;
            (void)!write(ready[1], "r", 1);
            pause();
            _exit(0);
        }
        char c;
        cr_assert_eq(read(ready[0], &c, 1), 1);
        close(ready[0]);
        close(ready[1]);
        atomic_store(&mb.hdr->writer_pid, child);
        atomic_store(&mb.hdr->writer_start, th_proc_start_time(child));
        cr_assert_eq(th_mbx_writer_alive(&mb), 1, "a live writer");
        kill(child, SIGKILL);
        unsigned long flags = 0;
        for (char st; (st = raw_stat(child, &flags)) && st != 'Z';)
            if (flags & 0x4 /* PF_EXITING */) {
                cr_assert_eq(th_mbx_writer_alive(&mb), 0, "an exiting writer counted as alive");
                seen++;
                break;
            }
        waitpid(child, NULL, 0);
    }
    atomic_store(&mb.hdr->writer_pid, getpid());
    atomic_store(&mb.hdr->writer_start, th_proc_start_time(getpid()));
    if (!seen)
        cr_skip_test("never saw a killed child exiting before its zombie state: not checked");
}
