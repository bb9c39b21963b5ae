/*
 * tether-dump's mailbox view (tools/dump/mailbox_view.h). Read-only: the
 * gauges come from the header, a user's entries from the same resume
 * snapshot a worker takes (th_mbx_replay_begin, without copying frames),
 * so nothing here can block or change a running group.
 */
#include "tools/dump/mailbox_view.h"
#include "shm/mailbox.h"
#include "shm/rt/clock.h"

#include <stdio.h>
#include <stdlib.h>

static double age_s(uint64_t now, uint64_t then)
{
    return then && now > then ? (double)(now - then) / 1e9 : 0.0;
}

/* The user's stored notifications (seq order), through cb; returns the user's latest seq. */
typedef void (*entry_fn)(const struct th_mbx_item *it, uint64_t now, void *arg);
static uint64_t each_entry(const struct th_mbx *m, const char *user, size_t ulen, entry_fn fn,
                           void *arg)
{
    struct th_mbx_replay *rp = malloc(sizeof(*rp));
    struct th_mbx_item it;
    uint64_t now = th_now_ns(), latest = 0;
    if (!rp || th_mbx_replay_begin(m, user, ulen, 0, rp) < 0) {
        free(rp);
        return 0;
    }
    while (th_mbx_replay_next(m, rp, now, NULL, 0, &it) == 1)
        fn(&it, now, arg);
    latest = rp->latest;
    free(rp);
    return latest;
}

static void text_entry(const struct th_mbx_item *it, uint64_t now, void *arg)
{
    (void)arg;
    printf("  seq %-10llu age %8.1fs  expires in %7.1fs  %zu bytes\n", (unsigned long long)it->seq,
           age_s(now, it->stored_ns),
           it->expires_ns > now ? (double)(it->expires_ns - now) / 1e9 : 0.0, it->len);
}

void th_dump_mailbox_text(const char *shm_name, const char *user, size_t ulen)
{
    struct th_mbx m;
    struct th_mbx_stats st;
    char err[256];
    if (th_mbx_attach(&m, shm_name, 0, err, sizeof(err)) < 0) {
        printf("mailbox: none (%s)\n", err);
        return;
    }
    th_mbx_stats(&m, &st);
    uint64_t now = th_now_ns();
    printf("mailbox %s%s  epoch %s  %.1f KiB of %.1f MiB used (log %.1f KiB)  %llu entries  "
           "oldest %.1fs  %u users x %u\n",
           shm_name, TH_MBX_SUFFIX, st.epoch, (double)st.bytes / 1024,
           (double)st.bytes_total / (1 << 20), (double)st.log_bytes / 1024,
           (unsigned long long)st.entries, age_s(now, st.oldest_ns), st.nusers, st.per_user);
    if (user) {
        printf("mailbox user %.*s:\n", (int)ulen, user);
        uint64_t latest = each_entry(&m, user, ulen, text_entry, NULL);
        printf("  latest seq %llu\n", (unsigned long long)latest);
    }
    th_mbx_detach(&m);
}

static void json_entry(const struct th_mbx_item *it, uint64_t now, void *arg)
{
    json_array_append_new(
        arg, json_pack("{s:I,s:f,s:f,s:I}", "seq", (json_int_t)it->seq, "age_s",
                       age_s(now, it->stored_ns), "expires_in_s",
                       it->expires_ns > now ? (double)(it->expires_ns - now) / 1e9 : 0.0, "bytes",
                       (json_int_t)it->len));
}

json_t *th_dump_mailbox_json(const char *shm_name, const char *user, size_t ulen)
{
    struct th_mbx m;
    struct th_mbx_stats st;
    char err[256];
    if (th_mbx_attach(&m, shm_name, 0, err, sizeof(err)) < 0)
        return json_null();
    th_mbx_stats(&m, &st);
    const struct th_mbx_counters_sh *c = &m.hdr->counters;
    uint64_t now = th_now_ns();
    json_t *o =
        json_pack("{s:s,s:I,s:I,s:I,s:I,s:o,s:I,s:I,s:I,s:{s:I,s:I,s:I}}", "epoch", st.epoch,
                  "bytes_used", (json_int_t)st.bytes, "bytes_total", (json_int_t)st.bytes_total,
                  "log_bytes", (json_int_t)st.log_bytes, "entries", (json_int_t)st.entries,
                  "oldest_age_s", st.oldest_ns ? json_real(age_s(now, st.oldest_ns)) : json_null(),
                  "users", (json_int_t)st.nusers, "per_user", (json_int_t)st.per_user,
                  "stored_total", (json_int_t)atomic_load(&c->stored), "evicted", "ttl",
                  (json_int_t)atomic_load(&c->evicted[TH_MBX_EV_TTL]), "full",
                  (json_int_t)atomic_load(&c->evicted[TH_MBX_EV_FULL]), "per_user",
                  (json_int_t)atomic_load(&c->evicted[TH_MBX_EV_PER_USER]));
    if (o && user) {
        json_t *a = json_array();
        uint64_t latest = each_entry(&m, user, ulen, json_entry, a);
        json_object_set_new(o, "user",
                            json_pack("{s:I,s:o}", "seq", (json_int_t)latest, "entries", a));
    }
    th_mbx_detach(&m);
    return o ? o : json_null();
}
