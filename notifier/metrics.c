/*
 * /metrics and /healthz rendering (see notifier/metrics.h). Everything but
 * the latency histogram is read from the segment header, written by the
 * other roles with relaxed atomic adds, so a scrape is a few dozen loads.
 */
#include "notifier/metrics.h"
#include "shm/mailbox.h"
#include "shm/rt/clock.h"

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

/* Upper bounds in seconds: 50 us to 1 s. */
static const double bounds[TH_HIST_BUCKETS] = {0.00005, 0.0001, 0.00025, 0.0005, 0.001,
                                               0.0025,  0.005,  0.01,    0.025,  0.05,
                                               0.1,     0.25,   0.5,     0.75,   1.0};

void th_hist_add(struct th_hist *h, uint64_t ns)
{
    double s = (double)ns / 1e9;
    unsigned i = 0;
    while (i < TH_HIST_BUCKETS && s > bounds[i])
        i++;
    h->count[i]++;
    h->total++;
    h->sum_s += s;
}

#define LOAD(x) ((unsigned long long)atomic_load_explicit(&(x), memory_order_relaxed))

static void counter(struct th_buf *b, const char *name, const char *help, unsigned long long v)
{
    th_buf_printf(b, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", name, help, name, name, v);
}

void th_hist_render(struct th_buf *b, const char *n, const char *help, const struct th_hist *h)
{
    th_buf_printf(b, "# HELP %s %s\n# TYPE %s histogram\n", n, help, n);
    unsigned long long cum = 0;
    for (unsigned i = 0; i < TH_HIST_BUCKETS; i++) {
        cum += h->count[i];
        th_buf_printf(b, "%s_bucket{le=\"%g\"} %llu\n", n, bounds[i], cum);
    }
    th_buf_printf(b, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.9f\n%s_count %llu\n", n,
                  (unsigned long long)h->total, n, h->sum_s, n, (unsigned long long)h->total);
}

void th_metrics_render(struct th_buf *b, const struct th_reg *reg,
                       const struct th_notifier_stats *st)
{
    const struct th_reg_hdr *hdr = reg->hdr;
    const struct th_counters_sh *c = &hdr->counters;
    th_buf_printf(b,
                  "# HELP tether_connections Live WebSocket connections (registry slots in use).\n"
                  "# TYPE tether_connections gauge\ntether_connections %llu\n",
                  LOAD(hdr->used));
    th_buf_printf(b,
                  "# HELP tether_slots Registry slots (the connection limit).\n"
                  "# TYPE tether_slots gauge\ntether_slots %u\n",
                  hdr->nslots);
    counter(b, "tether_pings_total", "Application pings received.", LOAD(c->pings));
    th_buf_puts(b, "# HELP tether_notifications_total Notify outcomes.\n"
                   "# TYPE tether_notifications_total counter\n");
    th_buf_printf(b,
                  "tether_notifications_total{status=\"delivered\"} %llu\n"
                  "tether_notifications_total{status=\"not_connected\"} %llu\n"
                  "tether_notifications_total{status=\"unavailable\"} %llu\n"
                  "tether_notifications_total{status=\"bad_request\"} %llu\n"
                  "tether_notifications_total{status=\"stored\"} %llu\n",
                  LOAD(c->notify_delivered), LOAD(c->notify_not_connected),
                  LOAD(c->notify_unavailable), LOAD(c->notify_bad_request),
                  (unsigned long long)st->stored);
    counter(b, "tether_stale_evictions_total", "Connections closed as stale (4000).",
            LOAD(c->stale_evictions));
    counter(b, "tether_worker_restarts_total", "Workers restarted by the supervisor.",
            LOAD(c->worker_restarts));
    counter(b, "tether_role_restarts_total", "Janitor/notifier restarts.", LOAD(c->role_restarts));
    counter(b, "tether_connections_opened_total", "Connections accepted into the registry.",
            LOAD(c->connections_opened));
    counter(b, "tether_connections_closed_total", "Connections released.",
            LOAD(c->connections_closed));
    counter(b, "tether_frames_in_total", "Client frames received.", LOAD(c->frames_in));
    counter(b, "tether_acks_total", "Client acks received.", LOAD(c->acks));
    counter(b, "tether_replaced_total", "Connections replaced by a newer device (4001).",
            LOAD(c->replaced));
    counter(b, "tether_registry_full_total", "Connections refused: registry full.",
            LOAD(c->registry_full));
    counter(b, "tether_dead_reclaimed_total", "Slots reclaimed from dead workers.",
            LOAD(c->dead_reclaimed));
    counter(b, "tether_repairs_total", "Half-done registry transitions completed.",
            LOAD(c->repairs));
    counter(b, "tether_api_unauthorized_total",
            "Backend API requests refused: no or wrong key (401).", LOAD(c->api_unauthorized));
    counter(b, "tether_origin_refused_total", "Upgrades refused: Origin not allowed (403).",
            LOAD(c->origin_refused));
    counter(b, "tether_rate_limited_total", "Connections closed over their rate limit (1008).",
            LOAD(c->rate_limited));
    counter(b, "tether_token_refused_total", "Upgrades refused: missing or bad token (401).",
            LOAD(c->token_refused));
    th_buf_printf(
        b,
        "# HELP tether_api_connections Open backend API connections (this notifier).\n"
        "# TYPE tether_api_connections gauge\ntether_api_connections %u\n"
        "# HELP tether_notifications_pending Notifications accepted and not yet answered.\n"
        "# TYPE tether_notifications_pending gauge\ntether_notifications_pending %llu\n",
        st->api_conns, (unsigned long long)st->owed);
    th_hist_render(b, "tether_notify_confirm_seconds",
                   "Notify request to worker confirmation latency (this notifier).", &st->confirm);
}

/*
 * A process counts as up when its pid lives, its loop stamped a heartbeat
 * within --hung-after, and the supervisor has not declared it hung (a
 * stopped or wedged process keeps its pid but not its heartbeat; a stop is
 * declared at once). Every hung process is also named in "hung". A starved
 * one (runnable, waiting for a CPU: left running by the supervisor) is
 * named in "starved" and flagged "starved":true; whether it counts as up is
 * unchanged by that (an old heartbeat is down: the node is not keeping up),
 * so "status" and the code mean what they meant before.
 */
struct health {
    struct th_buf *b;
    uint64_t now, max_age;
    char hung[TH_MAX_WORKERS * 16 + 64], starved[TH_MAX_WORKERS * 16 + 64];
    size_t hlen, slen;
};

/* Append "name" to a JSON list body when on (names are short and fixed: no escaping). */
static void name_add(char *list, size_t cap, size_t *len, int on, const char *name)
{
    if (!on || *len + strlen(name) + 4 >= cap)
        return;
    int n = snprintf(list + *len, cap - *len, "%s\"%s\"", *len ? "," : "", name);
    *len += n > 0 ? (size_t)n : 0;
}

/* One process entry {"pid":N,"alive":bool,"hung":bool,"starved":bool,"heartbeat_age_s":x};
 * returns up. */
static int proc_entry(struct health *h, const struct th_proc_sh *p, const char *name)
{
    int pid = (int)atomic_load_explicit(&p->pid, memory_order_relaxed);
    uint64_t hb = atomic_load_explicit(&p->heartbeat_ns, memory_order_relaxed);
    int hung = pid > 0 && th_proc_hung(p);
    int starved = pid > 0 && !hung && th_proc_starved(p);
    uint64_t age = hb && h->now > hb ? h->now - hb : 0;
    int alive = pid > 0 && th_pid_alive(pid);
    th_buf_printf(h->b,
                  "\"pid\":%d,\"alive\":%s,\"hung\":%s,\"starved\":%s,\"heartbeat_age_s\":%.1f}",
                  pid, alive ? "true" : "false", hung ? "true" : "false",
                  starved ? "true" : "false", (double)age / 1e9);
    name_add(h->hung, sizeof(h->hung), &h->hlen, hung, name);
    name_add(h->starved, sizeof(h->starved), &h->slen, starved, name);
    return alive && !hung && hb != 0 && age < h->max_age;
}

void th_metrics_render_mailbox(struct th_buf *b, const struct th_mbx *mbx)
{
    if (!mbx)
        return;
    struct th_mbx_stats st;
    const struct th_mbx_counters_sh *c = &mbx->hdr->counters;
    th_mbx_stats(mbx, &st);
    th_buf_printf(b,
                  "# HELP tether_mailbox_bytes Bytes of notifications stored for resume.\n"
                  "# TYPE tether_mailbox_bytes gauge\ntether_mailbox_bytes %llu\n"
                  "# HELP tether_mailbox_entries Notifications stored for resume.\n"
                  "# TYPE tether_mailbox_entries gauge\ntether_mailbox_entries %llu\n",
                  (unsigned long long)st.bytes, (unsigned long long)st.entries);
    counter(b, "tether_mailbox_stored_total", "Notifications stored in the mailbox.",
            LOAD(c->stored));
    th_buf_puts(b, "# HELP tether_mailbox_evicted_total Stored notifications dropped.\n"
                   "# TYPE tether_mailbox_evicted_total counter\n");
    th_buf_printf(b,
                  "tether_mailbox_evicted_total{reason=\"ttl\"} %llu\n"
                  "tether_mailbox_evicted_total{reason=\"full\"} %llu\n"
                  "tether_mailbox_evicted_total{reason=\"per_user\"} %llu\n",
                  (unsigned long long)LOAD(c->evicted[TH_MBX_EV_TTL]),
                  (unsigned long long)LOAD(c->evicted[TH_MBX_EV_FULL]),
                  (unsigned long long)LOAD(c->evicted[TH_MBX_EV_PER_USER]));
    counter(b, "tether_mailbox_replayed_total", "Stored notifications replayed on resume.",
            LOAD(c->replayed));
    counter(b, "tether_mailbox_duplicates_total", "Notify requests answered by idempotency id.",
            LOAD(c->duplicates));
    th_buf_puts(b, "# HELP tether_resumes_total Client resumes.\n"
                   "# TYPE tether_resumes_total counter\n");
    th_buf_printf(b,
                  "tether_resumes_total{recovered=\"true\"} %llu\n"
                  "tether_resumes_total{recovered=\"false\"} %llu\n",
                  (unsigned long long)LOAD(c->resumes_recovered),
                  (unsigned long long)LOAD(c->resumes_lost));
}

int th_health_render(struct th_buf *b, const struct th_reg *reg, uint32_t hung_after_s, int broker)
{
    const struct th_reg_hdr *hdr = reg->hdr;
    struct th_buf body = {0};
    struct health h = {
        .b = &body, .now = th_now_ns(), .max_age = (uint64_t)hung_after_s * TH_NS_PER_S};
    int ok = 1;
    th_buf_puts(&body, "\"supervisor\":{");
    ok &= proc_entry(&h, &hdr->roles[TH_ROLE_SUPERVISOR], "supervisor");
    th_buf_puts(&body, ",\"janitor\":{");
    ok &= proc_entry(&h, &hdr->roles[TH_ROLE_JANITOR], "janitor");
    th_buf_puts(&body, ",\"notifier\":{");
    proc_entry(&h, &hdr->roles[TH_ROLE_NOTIFIER], "notifier");
    th_buf_puts(&body, ",\"workers\":[");
    unsigned n = hdr->nworkers < TH_MAX_WORKERS ? hdr->nworkers : TH_MAX_WORKERS;
    for (unsigned i = 0; i < n; i++) {
        char name[24];
        snprintf(name, sizeof(name), "worker[%u]", i);
        th_buf_printf(&body, "%s{\"index\":%u,", i ? "," : "", i);
        ok &= proc_entry(&h, &hdr->workers[i], name);
    }
    th_buf_printf(&body, "],\"hung\":[%.*s],\"starved\":[%.*s]}", (int)h.hlen, h.hung, (int)h.slen,
                  h.starved);
    th_buf_printf(b, "{\"status\":\"%s\",", ok ? "ok" : "degraded");
    if (broker >= 0)
        th_buf_printf(b, "\"broker\":\"%s\",", broker ? "up" : "down");
    th_buf_put(b, body.p, body.len);
    th_buf_free(&body);
    return ok ? 200 : 503;
}
