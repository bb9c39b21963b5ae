/*
 * Tests of tether-dump (tools/dump) against segments this test writes: the
 * JSON must parse and say exactly what was put in (slots, users with awkward
 * bytes, workers and their liveness, times), --user must filter and give the
 * user's last LastSeen, the text table must carry the same facts, the dump
 * must not change one byte of the segment, and bad input must fail the way
 * the contract says (exit 1 for a missing or bad segment, 2 for a bad flag).
 */
#include <criterion/criterion.h>

#include "reg_test.h"
#include "shm/rt/clock.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <sys/wait.h>

#ifndef TETHER_DUMP_BIN
#error "TETHER_DUMP_BIN must name the tether-dump binary"
#endif

TestSuite(dump, .fini = reg_test_fini);

struct run {
    int status;
    char out[1 << 16];
    char err[4096];
};

static void slurp(int fd, char *buf, size_t cap)
{
    size_t n = 0;
    ssize_t k;
    while (n + 1 < cap && (k = read(fd, buf + n, cap - 1 - n)) > 0)
        n += (size_t)k;
    buf[n] = 0;
}

/* Run tether-dump with up to 6 arguments; capture stdout, stderr and the exit status. */
static void run_dump(struct run *r, const char *a1, const char *a2, const char *a3, const char *a4,
                     const char *a5, const char *a6)
{
    int po[2], pe[2];
    cr_assert_eq(pipe(po), 0);
    cr_assert_eq(pipe(pe), 0);
    pid_t p = fork();
    if (p == 0) {
        dup2(po[1], 1);
        dup2(pe[1], 2);
        char *argv[] = {TETHER_DUMP_BIN, (char *)a1, (char *)a2, (char *)a3,
                        (char *)a4,      (char *)a5, (char *)a6, NULL};
        execv(argv[0], argv);
        _exit(127);
    }
    close(po[1]);
    close(pe[1]);
    slurp(po[0], r->out, sizeof(r->out));
    slurp(pe[0], r->err, sizeof(r->err));
    close(po[0]);
    close(pe[0]);
    int st;
    waitpid(p, &st, 0);
    r->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static json_t *dump_json(const char *user)
{
    static struct run r;
    if (user)
        run_dump(&r, "--shm-name", name, "--json", "--user", user, NULL);
    else
        run_dump(&r, "--shm-name", name, "--json", NULL, NULL, NULL);
    cr_assert_eq(r.status, 0, "tether-dump failed: %s", r.err);
    json_error_t e;
    json_t *j = json_loads(r.out, 0, &e);
    cr_assert_not_null(j, "dump output is not JSON (%s): %s", e.text, r.out);
    return j;
}

static const uint64_t T0 = 1762596449ull * TH_NS_PER_S; /* 2025-11-08T10:07:29Z */

struct fixture {
    struct th_handle h[4];
    const char *user[4];
    size_t ulen[4];
    uint16_t worker[4];
    pid_t dead;
};

static const char USER64[] = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdeF";

/* Four live connections with awkward ids, one released user (carol), two workers. */
static void fill(struct fixture *f)
{
    reg_test_create(&reg, name, sizeof(name), "dump", 32);
    reg.hdr->nworkers = 2;
    pid_t p = fork();
    if (p == 0)
        _exit(0);
    waitpid(p, NULL, 0);
    f->dead = p;
    atomic_store(&reg.hdr->workers[0].pid, getpid());
    atomic_store(&reg.hdr->workers[1].pid, f->dead);
    atomic_store(&reg.hdr->workers[5].pid, getpid()); /* beyond nworkers: must not be listed */
    atomic_store(&reg.hdr->roles[TH_ROLE_SUPERVISOR].pid, getpid());
    const char *users[4] = {"alice", "bob \"the\" \\ne\nw", "\xc3\xbcn\xc3\xaf", USER64};
    for (int i = 0; i < 4; i++) {
        f->user[i] = users[i];
        f->ulen[i] = strlen(users[i]);
        f->worker[i] = (uint16_t)(i % 2);
        cr_assert_eq(th_reg_claim(&reg, users[i], f->ulen[i], f->worker[i], 10 + i,
                                  T0 + i * TH_NS_PER_S, 0, &f->h[i], NULL, NULL),
                     0);
        th_reg_touch(&reg, f->h[i], T0 + (10 + i) * TH_NS_PER_S);
    }
    struct th_handle c;
    cr_assert_eq(th_reg_claim(&reg, "carol", 5, 0, 1, T0, 0, &c, NULL, NULL), 0);
    th_reg_touch(&reg, c, T0 + 60 * TH_NS_PER_S);
    cr_assert_eq(th_reg_release(&reg, c), 0);
}

static void fmt_time(char *buf, uint64_t ns)
{
    th_fmt_rfc3339(buf, 40, ns);
}

/* The JSON connection for slot s matches what fill() wrote for connection i. */
static void check_conn(json_t *c, const struct fixture *f, int i)
{
    char ca[40], ls[40];
    fmt_time(ca, T0 + i * TH_NS_PER_S);
    fmt_time(ls, T0 + (10 + i) * TH_NS_PER_S);
    json_t *u = json_object_get(c, "user_id");
    cr_assert(json_is_string(u));
    cr_assert_eq(json_string_length(u), f->ulen[i]);
    cr_assert_eq(memcmp(json_string_value(u), f->user[i], f->ulen[i]), 0);
    cr_assert_eq(json_integer_value(json_object_get(c, "worker")), f->worker[i]);
    cr_assert_str_eq(json_string_value(json_object_get(c, "connected_at")), ca);
    cr_assert_str_eq(json_string_value(json_object_get(c, "last_seen")), ls);
    double age = json_number_value(json_object_get(c, "age_s"));
    double want = (double)(th_now_ns() - (T0 + (10 + i) * TH_NS_PER_S)) / 1e9;
    cr_assert(age > want - 60 && age <= want, "age_s %f, expected about %f", age, want);
}

static int conn_index(const struct fixture *f, json_int_t slot)
{
    for (int i = 0; i < 4; i++)
        if (f->h[i].slot == slot)
            return i;
    return -1;
}

Test(dump, json_matches_what_was_written)
{
    struct fixture f;
    fill(&f);
    json_t *j = dump_json(NULL);
    cr_assert_eq(json_integer_value(json_object_get(j, "slots_total")), 32);
    cr_assert_eq(json_integer_value(json_object_get(j, "slots_used")), 4);
    json_t *w = json_object_get(j, "workers");
    cr_assert_eq(json_array_size(w), 2, "only workers below nworkers");
    cr_assert_eq(json_integer_value(json_object_get(json_array_get(w, 0), "index")), 0);
    cr_assert_eq(json_integer_value(json_object_get(json_array_get(w, 0), "pid")), getpid());
    cr_assert(json_is_true(json_object_get(json_array_get(w, 0), "alive")));
    cr_assert_eq(json_integer_value(json_object_get(json_array_get(w, 1), "pid")), f.dead);
    cr_assert(json_is_false(json_object_get(json_array_get(w, 1), "alive")));
    cr_assert(json_is_false(json_object_get(json_array_get(w, 0), "hung")));
    json_decref(j);
    atomic_store(&reg.hdr->workers[0].hung_ns, T0); /* the supervisor declared it hung */
    j = dump_json(NULL);
    w = json_object_get(j, "workers");
    cr_assert(json_is_true(json_object_get(json_array_get(w, 0), "hung")), "hung_ns shows");
    atomic_store(&reg.hdr->workers[0].hung_ns, 0);
    json_t *conns = json_object_get(j, "connections");
    cr_assert_eq(json_array_size(conns), 4);
    int seen[4] = {0};
    for (size_t k = 0; k < 4; k++) {
        json_t *c = json_array_get(conns, k);
        int i = conn_index(&f, json_integer_value(json_object_get(c, "slot")));
        cr_assert_geq(i, 0, "unknown slot in dump");
        check_conn(c, &f, i);
        seen[i]++;
    }
    cr_assert(seen[0] == 1 && seen[1] == 1 && seen[2] == 1 && seen[3] == 1);
    json_decref(j);
}

Test(dump, user_filter_and_last_seen)
{
    struct fixture f;
    fill(&f);
    json_t *j = dump_json("alice");
    json_t *conns = json_object_get(j, "connections");
    cr_assert_eq(json_array_size(conns), 1);
    check_conn(json_array_get(conns, 0), &f, 0);
    cr_assert_eq(json_integer_value(json_object_get(j, "slots_used")), 4, "totals stay whole");
    json_decref(j);
    j = dump_json("carol");
    char ls[40];
    fmt_time(ls, T0 + 60 * TH_NS_PER_S);
    cr_assert_eq(json_array_size(json_object_get(j, "connections")), 0);
    cr_assert_str_eq(json_string_value(json_object_get(j, "user_last_seen")), ls);
    json_decref(j);
    j = dump_json("nobody");
    cr_assert(json_is_null(json_object_get(j, "user_last_seen")));
    json_decref(j);
}

Test(dump, text_has_header_and_rows)
{
    struct fixture f;
    fill(&f);
    static struct run r;
    run_dump(&r, "--shm-name", name, NULL, NULL, NULL, NULL);
    cr_assert_eq(r.status, 0, "%s", r.err);
    char ver[32];
    snprintf(ver, sizeof(ver), "layout version %d", TH_REG_VERSION);
    cr_assert(strstr(r.out, ver) != NULL, "%s", r.out);
    cr_assert(strstr(r.out, "slots 4/32 used") != NULL, "%s", r.out);
    char line[128];
    snprintf(line, sizeof(line), "worker 1   pid %-8d dead", (int)f.dead);
    cr_assert(strstr(r.out, line) != NULL, "no '%s' in %s", line, r.out);
    cr_assert(strstr(r.out, "worker 5") == NULL, "worker beyond nworkers listed");
    char ca[40];
    fmt_time(ca, T0);
    snprintf(line, sizeof(line), "%-8u %-24s %-6u", f.h[0].slot, "alice", 0);
    cr_assert(strstr(r.out, line) != NULL, "no row '%s' in %s", line, r.out);
    cr_assert(strstr(r.out, ca) != NULL);
    cr_assert(strstr(r.out, "bob \"the\" \\x5cne\\x0aw") != NULL, "escaped id: %s", r.out);
    run_dump(&r, "--shm-name", name, "--user", "alice", NULL, NULL);
    cr_assert(strstr(r.out, "carol") == NULL && strstr(r.out, USER64) == NULL, "%s", r.out);
    cr_assert(strstr(r.out, " alice ") != NULL, "%s", r.out);
}

Test(dump, never_changes_the_segment)
{
    struct fixture f;
    fill(&f);
    char *before = malloc(reg.size);
    memcpy(before, reg.base, reg.size);
    static struct run r;
    run_dump(&r, "--shm-name", name, "--json", NULL, NULL, NULL);
    run_dump(&r, "--shm-name", name, "--user", "alice", NULL, NULL);
    cr_assert_eq(memcmp(before, reg.base, reg.size), 0);
    free(before);
}

Test(dump, shows_transient_slots_in_text)
{
    struct fixture f;
    fill(&f);
    atomic_store(&reg.slots[30].ctl, th_ctl_make_actor(3, 4242, TH_SLOT_CLAIMING));
    static struct run r;
    run_dump(&r, "--shm-name", name, NULL, NULL, NULL, NULL);
    cr_assert(strstr(r.out, "claiming") != NULL && strstr(r.out, "actor pid 4242"), "%s", r.out);
    json_t *j = dump_json(NULL);
    cr_assert_eq(json_array_size(json_object_get(j, "connections")), 4, "not a connection");
    cr_assert_eq(json_integer_value(json_object_get(j, "slots_used")), 5, "but a used slot");
    json_decref(j);
}

Test(dump, works_on_a_dead_groups_segment)
{
    reg_test_name(name, sizeof(name), "dumpdead");
    pid_t p = fork();
    if (p == 0) {
        struct th_reg r;
        struct th_handle h;
        char err[256];
        if (th_reg_create(&r, name, 8, err, sizeof(err)) ||
            th_reg_claim(&r, "zed", 3, 0, 1, T0, 0, &h, NULL, NULL))
            _exit(1);
        _exit(0);
    }
    int st;
    waitpid(p, &st, 0);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    json_t *j = dump_json(NULL);
    cr_assert(json_is_false(json_object_get(j, "creator_alive")));
    cr_assert_eq(json_integer_value(json_object_get(j, "creator_pid")), p);
    json_t *c = json_array_get(json_object_get(j, "connections"), 0);
    cr_assert_str_eq(json_string_value(json_object_get(c, "user_id")), "zed");
    json_decref(j);
}

Test(dump, missing_or_bad_segment_exits_1)
{
    static struct run r;
    reg_test_name(name, sizeof(name), "dumpmissing");
    run_dump(&r, "--shm-name", name, "--json", NULL, NULL, NULL);
    cr_assert_eq(r.status, 1);
    cr_assert(strstr(r.err, name) != NULL, "%s", r.err);
    cr_assert_eq(r.out[0], 0, "nothing on stdout");
    reg_test_create(&reg, name, sizeof(name), "dumpbad", 8);
    reg.hdr->version = 99;
    run_dump(&r, "--shm-name", name, NULL, NULL, NULL, NULL);
    cr_assert_eq(r.status, 1);
    cr_assert(strstr(r.err, "version 99") != NULL, "%s", r.err);
}

Test(dump, bad_flags_exit_2_with_one_line)
{
    static struct run r;
    const char *bad[][2] = {{"--frobnicate", NULL}, {"--shm-name", NULL}, {"--user", ""}};
    for (int i = 0; i < 3; i++) {
        run_dump(&r, bad[i][0], bad[i][1], NULL, NULL, NULL, NULL);
        cr_assert_eq(r.status, 2, "%s", bad[i][0]);
        cr_assert(strchr(r.err, '\n') == r.err + strlen(r.err) - 1, "one line: %s", r.err);
        cr_assert(strstr(r.err, bad[i][0]) != NULL, "names the flag: %s", r.err);
    }
    run_dump(&r, "--help", NULL, NULL, NULL, NULL, NULL);
    cr_assert_eq(r.status, 0);
    cr_assert(strstr(r.out, "--shm-name") != NULL);
    name[0] = 0;
}
