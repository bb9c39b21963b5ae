/*
 * tether-dump: a read-only look into a registry segment, live or left by a
 * dead group. It maps the segment O_RDONLY/PROT_READ, so it cannot change
 * it, and takes no lock, so it cannot block anybody: every slot is copied
 * with the registry's own seqlock check (th_reg_read), and a slot caught in
 * the middle of a claim or release is shown as such rather than waited for.
 *
 *   tether-dump [--shm-name NAME] [--user ID] [--json]
 *
 * The mailbox beside the segment (tools/dump/mailbox_view.c) follows it.
 *
 * Exit 0 on success, 1 if the segment is missing or its header is bad, 2 for
 * a bad flag. A missing segment with a mailbox left (a stopped group) still
 * shows the mailbox, with exit 1.
 */
#include "shm/rt/clock.h"
#include "shm/mailbox.h"
#include "shm/registry.h"
#include "tools/dump/mailbox_view.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct opts {
    char name[256];
    const char *user;
    size_t ulen;
    int json;
};

static void usage(FILE *out)
{
    fputs("usage: tether-dump [--shm-name NAME] [--user ID] [--json]\n"
          "Read-only view of a tether registry segment (live or left by a dead group).\n"
          "  --shm-name NAME  POSIX shared-memory segment (default /tether)\n"
          "  --user ID        only this user's connections (and its last LastSeen)\n"
          "  --json           one JSON object instead of the text table\n"
          "  --help           this text\n"
          "Exit status: 0 ok, 1 segment missing or bad, 2 bad flag.\n",
          out);
}

static int bad_flag(const char *msg, const char *flag)
{
    fprintf(stderr, "tether-dump: %s '%s' (see --help)\n", msg, flag);
    return 2;
}

/* Returns -1 to go on, else the exit status. Accepts "--flag value" and "--flag=value". */
static int parse_args(int argc, char **argv, struct opts *o)
{
    snprintf(o->name, sizeof(o->name), "/tether");
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *eq = strchr(a, '=');
        size_t flen = eq ? (size_t)(eq - a) : strlen(a);
        int takes = (flen == 10 && !strncmp(a, "--shm-name", 10)) ||
                    (flen == 6 && !strncmp(a, "--user", 6));
        const char *val = eq ? eq + 1 : NULL;
        if (takes && !val && i + 1 < argc)
            val = argv[++i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--json")) {
            o->json = 1;
        } else if (!takes) {
            return bad_flag("unknown flag", a);
        } else if (!val || !*val) {
            return bad_flag("missing value for", a);
        } else if (flen == 6) {
            o->user = val;
            o->ulen = strlen(val);
            if (o->ulen > TH_USER_MAX)
                return bad_flag("user id longer than 64 bytes for", a);
        } else if (snprintf(o->name, sizeof(o->name), "%s%s", val[0] == '/' ? "" : "/", val) >=
                   (int)sizeof(o->name)) {
            return bad_flag("segment name too long for", a);
        }
    }
    return -1;
}

/* ---- shared helpers ---- */

static const char *role_name(int role)
{
    static const char *names[TH_ROLE_COUNT] = {"supervisor", "janitor", "notifier"};
    return names[role];
}

static int proc_alive(const struct th_proc_sh *p)
{
    int32_t pid = atomic_load(&p->pid);
    return pid > 0 && th_pid_alive(pid);
}

/* Declared hung by the supervisor (stopped, or its heartbeat --hung-after old). */
static int proc_hung(const struct th_proc_sh *p)
{
    return atomic_load(&p->pid) > 0 && atomic_load(&p->hung_ns) != 0;
}

static double age_s(uint64_t now, uint64_t then)
{
    return now > then ? (double)(now - then) / 1e9 : 0.0;
}

static char *rfc3339(char *buf, size_t cap, uint64_t ns)
{
    th_fmt_rfc3339(buf, cap, ns);
    return buf;
}

/* A user id made printable for the text table: non-printing bytes as \xNN. */
static const char *printable(const char *u, size_t len, char *buf, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < len && o + 5 < cap; i++) {
        unsigned char c = (unsigned char)u[i];
        if (c >= 0x20 && c < 0x7f && c != '\\')
            buf[o++] = (char)c;
        else
            o += (size_t)snprintf(buf + o, cap - o, "\\x%02x", c);
    }
    buf[o] = 0;
    return buf;
}

static int wanted(const struct opts *o, const char *user, size_t len)
{
    return !o->user || (len == o->ulen && memcmp(user, o->user, len) == 0);
}

/* ---- text ---- */

static void text_header(const struct th_reg *r, const char *name)
{
    const struct th_reg_hdr *h = r->hdr;
    int32_t cpid = atomic_load(&h->creator_pid);
    char t[40];
    printf("segment %s  layout version %u  slots %u/%u used  boot epoch %016llx\n", name,
           h->version, th_reg_count_used(r), h->nslots, (unsigned long long)h->boot_epoch);
    printf("created %s by pid %d (%s)\n", rfc3339(t, sizeof(t), h->created_ns), (int)cpid,
           th_pid_alive(cpid) ? "alive" : "dead");
    printf("index %u buckets, %u unindexed slots  stale after %us, sweep every %us\n", h->nbuckets,
           atomic_load(&h->unindexed), h->stale_after_s, h->sweep_every_s);
    for (int i = 0; i < TH_ROLE_COUNT; i++)
        printf("%-10s pid %-8d %s%s\n", role_name(i), (int)atomic_load(&h->roles[i].pid),
               proc_alive(&h->roles[i]) ? "alive" : "dead", proc_hung(&h->roles[i]) ? " HUNG" : "");
    for (uint32_t w = 0; w < h->nworkers && w < TH_MAX_WORKERS; w++)
        printf("worker %-3u pid %-8d %s%s  restarts %llu\n", w,
               (int)atomic_load(&h->workers[w].pid), proc_alive(&h->workers[w]) ? "alive" : "dead",
               proc_hung(&h->workers[w]) ? " HUNG" : "",
               (unsigned long long)atomic_load(&h->workers[w].restarts));
}

/* A slot caught mid-claim or mid-release: shown raw, its fields may be half-written. */
/* A slot caught mid-claim or mid-release: shown raw, its fields may be half-written. */
static void text_transient(const struct th_reg *r, uint32_t i, const struct opts *o)
{
    struct th_conn_info ci;
    uint64_t c = th_reg_peek(r, i, &ci);
    char pu[TH_USER_MAX * 4 + 1];
    if (th_ctl_state(c) == TH_SLOT_FREE || th_ctl_state(c) == TH_SLOT_LIVE ||
        !wanted(o, ci.user, ci.user_len))
        return;
    printf("%-8u %-24s %-6s %-10u %-9s (actor pid %d)\n", i,
           printable(ci.user, ci.user_len, pu, sizeof(pu)), "-", th_ctl_gen(c),
           th_slot_state_name(th_ctl_state(c)), (int)th_ctl_actor(c));
}

static void text_row(const struct th_conn_info *ci, uint64_t now)
{
    char pu[TH_USER_MAX * 4 + 1], ca[40], ls[40], age[32];
    th_fmt_duration(age, sizeof(age), now > ci->last_seen ? now - ci->last_seen : 0);
    printf("%-8u %-24s %-6u %-10u %-9s %-20s %-20s %s\n", ci->slot,
           printable(ci->user, ci->user_len, pu, sizeof(pu)), ci->worker, ci->gen, "live",
           rfc3339(ca, sizeof(ca), ci->connected_at), rfc3339(ls, sizeof(ls), ci->last_seen), age);
}

static void text_user_last_seen(const struct th_reg *r, const struct opts *o)
{
    uint64_t ns;
    char t[40];
    if (th_reg_last_seen(r, o->user, o->ulen, &ns))
        printf("user last seen %s\n", rfc3339(t, sizeof(t), ns));
    else
        printf("user never seen (or forgotten)\n");
}

static void print_text(const struct th_reg *r, const char *name, const struct opts *o)
{
    uint64_t now = th_now_ns();
    text_header(r, name);
    if (o->user)
        text_user_last_seen(r, o);
    printf("%-8s %-24s %-6s %-10s %-9s %-20s %-20s %s\n", "slot", "user", "worker", "gen", "state",
           "connected_at", "last_seen", "age");
    for (uint32_t i = 0; i < r->hdr->nslots; i++) {
        struct th_conn_info ci;
        if (th_ctl_state(atomic_load(&r->slots[i].ctl)) == TH_SLOT_FREE)
            continue;
        if (th_reg_read(r, i, &ci)) {
            if (wanted(o, ci.user, ci.user_len))
                text_row(&ci, now);
        } else {
            text_transient(r, i, o);
        }
    }
    th_dump_mailbox_text(o->name, o->user, o->ulen);
}

/* ---- JSON ---- */

/* A JSON string for a user id; bytes that are not UTF-8 become \xNN text. */
static json_t *json_user(const char *u, size_t len)
{
    json_t *s = json_stringn(u, len);
    if (s)
        return s;
    char buf[TH_USER_MAX * 4 + 1];
    return json_string(printable(u, len, buf, sizeof(buf)));
}

static json_t *json_time(uint64_t ns)
{
    char t[40];
    return ns ? json_string(rfc3339(t, sizeof(t), ns)) : json_null();
}

/* One process entry; key/val (the worker index or the role name) goes first. */
static json_t *json_proc(const struct th_proc_sh *p, const char *key, json_t *val)
{
    return json_pack("{s:o,s:i,s:b,s:b,s:o,s:o,s:I}", key, val, "pid", (int)atomic_load(&p->pid),
                     "alive", proc_alive(p), "hung", proc_hung(p), "started",
                     json_time(atomic_load(&p->started_ns)), "heartbeat",
                     json_time(atomic_load(&p->heartbeat_ns)), "restarts",
                     (json_int_t)atomic_load(&p->restarts));
}

static json_t *json_workers(const struct th_reg_hdr *h)
{
    json_t *a = json_array();
    for (uint32_t w = 0; w < h->nworkers && w < TH_MAX_WORKERS; w++) {
        json_array_append_new(a, json_proc(&h->workers[w], "index", json_integer(w)));
    }
    return a;
}

static json_t *json_roles(const struct th_reg_hdr *h)
{
    json_t *a = json_array();
    for (int i = 0; i < TH_ROLE_COUNT; i++) {
        json_array_append_new(a, json_proc(&h->roles[i], "role", json_string(role_name(i))));
    }
    return a;
}

static json_t *json_conn(const struct th_conn_info *ci, uint64_t now)
{
    return json_pack("{s:I,s:o,s:i,s:o,s:o,s:f,s:I,s:I,s:s}", "slot", (json_int_t)ci->slot,
                     "user_id", json_user(ci->user, ci->user_len), "worker", (int)ci->worker,
                     "connected_at", json_time(ci->connected_at), "last_seen",
                     json_time(ci->last_seen), "age_s", age_s(now, ci->last_seen), "gen",
                     (json_int_t)ci->gen, "conn_id", (json_int_t)ci->conn_id, "state", "live");
}

#define JSON_FLAGS (JSON_COMPACT | JSON_ENSURE_ASCII)

/*
 * "connections":[...] written one object at a time: a tree of every
 * connection first would cost about 1.5 KB of heap per connection (156 MB
 * at 100,000), a million-slot registry 1.5 GB. Returns 0 or -1.
 */
static int print_conns(const struct th_reg *r, const struct opts *o)
{
    uint64_t now = th_now_ns();
    int first = 1, rc = 0;
    fputs("\"connections\":[", stdout);
    for (uint32_t i = 0; i < r->hdr->nslots && rc == 0; i++) {
        struct th_conn_info ci;
        if (!th_reg_read(r, i, &ci) || !wanted(o, ci.user, ci.user_len))
            continue;
        json_t *c = json_conn(&ci, now);
        if (!first)
            fputc(',', stdout);
        first = 0;
        rc = c ? json_dumpf(c, stdout, JSON_FLAGS) : -1;
        json_decref(c);
    }
    fputc(']', stdout);
    return rc;
}

static int print_json(const struct th_reg *r, const struct opts *o)
{
    const struct th_reg_hdr *h = r->hdr;
    char epoch[20];
    snprintf(epoch, sizeof(epoch), "%016llx", (unsigned long long)h->boot_epoch);
    int32_t cpid = atomic_load(&h->creator_pid);
    json_t *root =
        json_pack("{s:I,s:I,s:o,s:i,s:s,s:i,s:b,s:o,s:I,s:o}", "slots_total", (json_int_t)h->nslots,
                  "slots_used", (json_int_t)th_reg_count_used(r), "workers", json_workers(h),
                  "layout_version", (int)h->version, "boot_epoch", epoch, "creator_pid", (int)cpid,
                  "creator_alive", th_pid_alive(cpid), "roles", json_roles(h), "unindexed",
                  (json_int_t)atomic_load(&h->unindexed), "created_at", json_time(h->created_ns));
    if (!root)
        return 1;
    if (o->user) {
        uint64_t ns;
        json_object_set_new(root, "user_id", json_user(o->user, o->ulen));
        json_object_set_new(root, "user_last_seen",
                            th_reg_last_seen(r, o->user, o->ulen, &ns) ? json_time(ns)
                                                                       : json_null());
    }
    json_object_set_new(root, "mailbox", th_dump_mailbox_json(o->name, o->user, o->ulen));
    /* Everything but the connections, less its closing brace; they follow as a stream. */
    char *head = json_dumps(root, JSON_FLAGS);
    json_decref(root);
    size_t hl = head ? strlen(head) : 0;
    if (hl < 2 || head[hl - 1] != '}') {
        free(head);
        return 1;
    }
    fwrite(head, 1, hl - 1, stdout);
    free(head);
    fputc(',', stdout);
    int rc = print_conns(r, o);
    fputs("}\n", stdout);
    return rc == 0 ? 0 : 1;
}

/* No segment (the group was stopped): still show the mailbox it left, if any. */
static void mailbox_only(const struct opts *o)
{
    struct th_mbx m;
    if (th_mbx_attach(&m, o->name, 0, NULL, 0) < 0)
        return; /* nothing at all: stdout stays empty */
    th_mbx_detach(&m);
    if (!o->json) {
        th_dump_mailbox_text(o->name, o->user, o->ulen);
        return;
    }
    json_t *root = json_pack("{s:o}", "mailbox", th_dump_mailbox_json(o->name, o->user, o->ulen));
    if (root && json_dumpf(root, stdout, JSON_COMPACT | JSON_ENSURE_ASCII) == 0)
        fputc('\n', stdout);
    json_decref(root);
}

int main(int argc, char **argv)
{
    struct opts o = {0};
    int rc = parse_args(argc, argv, &o);
    if (rc >= 0)
        return rc;
    struct th_reg r;
    char err[512];
    if ((rc = th_reg_attach(&r, o.name, 0, err, sizeof(err))) < 0) {
        fprintf(stderr, "tether-dump: %s\n", err);
        if (rc == -ENOENT) /* a stopped group: its mailbox stays for the next start */
            mailbox_only(&o);
        return 1;
    }
    rc = o.json ? print_json(&r, &o) : (print_text(&r, o.name, &o), 0);
    th_reg_detach(&r);
    if (fflush(stdout) != 0)
        return 1;
    return rc;
}
