/*
 * Unit tests of notifier/metrics.c: the latency histogram's buckets and the
 * Prometheus text names the contract fixes, rendered from a segment header
 * built in ordinary memory.
 */
#include "notifier/metrics.h"

#include "shm/rt/clock.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

Test(hist, buckets_are_cumulative)
{
    struct th_hist h = {0};
    th_hist_add(&h, 40000);      /* 40 us: first bucket */
    th_hist_add(&h, 300000);     /* 300 us: le=0.0005 */
    th_hist_add(&h, 2000000000); /* 2 s: +Inf only */
    cr_assert_eq(h.count[0], 1);
    cr_assert_eq(h.count[3], 1);
    cr_assert_eq(h.count[TH_HIST_BUCKETS], 1);
    cr_assert_eq(h.total, 3);
}

static struct th_reg_hdr *fake_hdr(void)
{
    struct th_reg_hdr *hdr = aligned_alloc(64, sizeof(*hdr));
    memset(hdr, 0, sizeof(*hdr));
    hdr->nworkers = 2;
    hdr->nslots = 16;
    atomic_store(&hdr->used, 3);
    atomic_store(&hdr->counters.pings, 7);
    atomic_store(&hdr->counters.notify_delivered, 5);
    atomic_store(&hdr->counters.notify_bad_request, 2);
    return hdr;
}

Test(metrics, contract_names)
{
    struct th_reg reg = {0};
    reg.hdr = fake_hdr();
    struct th_notifier_stats st = {.api_conns = 4, .owed = 9};
    th_hist_add(&st.confirm, 100000);
    struct th_buf b = {0};
    th_metrics_render(&b, &reg, &st);
    cr_assert(strstr(b.p, "\ntether_connections 3\n"));
    cr_assert(strstr(b.p, "\ntether_pings_total 7\n"));
    cr_assert(strstr(b.p, "tether_notifications_total{status=\"delivered\"} 5\n"));
    cr_assert(strstr(b.p, "tether_notifications_total{status=\"bad_request\"} 2\n"));
    cr_assert(strstr(b.p, "tether_notifications_total{status=\"not_connected\"} 0\n"));
    cr_assert(strstr(b.p, "\ntether_stale_evictions_total 0\n"));
    cr_assert(strstr(b.p, "\ntether_worker_restarts_total 0\n"));
    cr_assert(strstr(b.p, "tether_notify_confirm_seconds_bucket{le=\"5e-05\"} 0\n"));
    cr_assert(strstr(b.p, "tether_notify_confirm_seconds_bucket{le=\"0.0001\"} 1\n"));
    cr_assert(strstr(b.p, "tether_notify_confirm_seconds_count 1\n"));
    cr_assert(strstr(b.p, "\ntether_api_connections 4\n"));
    cr_assert(strstr(b.p, "\ntether_notifications_pending 9\n"));
    th_buf_free(&b);
    free(reg.hdr);
}

Test(health, degraded_until_every_role_is_alive)
{
    struct th_reg reg = {0};
    reg.hdr = fake_hdr();
    struct th_buf b = {0};
    cr_assert_eq(th_health_render(&b, &reg, 3, -1), 503);
    cr_assert(strstr(b.p, "\"status\":\"degraded\""));
    b.len = 0;
    pid_t me = getpid();
    uint64_t now = th_now_ns();
    struct th_proc_sh *up[] = {&reg.hdr->roles[TH_ROLE_SUPERVISOR],
                               &reg.hdr->roles[TH_ROLE_JANITOR], &reg.hdr->workers[0]};
    for (size_t i = 0; i < 3; i++) {
        atomic_store(&up[i]->pid, me);
        atomic_store(&up[i]->heartbeat_ns, now);
    }
    cr_assert_eq(th_health_render(&b, &reg, 3, -1), 503); /* worker 1 missing */
    b.len = 0;
    atomic_store(&reg.hdr->workers[1].pid, me);
    cr_assert_eq(th_health_render(&b, &reg, 3, -1), 503, "a pid without a heartbeat is not up");
    b.len = 0;
    atomic_store(&reg.hdr->workers[1].heartbeat_ns, now);
    cr_assert_eq(th_health_render(&b, &reg, 3, -1), 200);
    cr_assert(strstr(b.p, "\"status\":\"ok\""));
    cr_assert(strstr(b.p, "\"workers\":[{\"index\":0,"));
    b.len = 0;
    cr_assert(strstr(b.p, "\"hung\":[]"), "%s", b.p);
    b.len = 0;
    /* Declared hung by the supervisor: 503 at once, naming it, heartbeat or not. */
    atomic_store(&reg.hdr->workers[1].hung_ns, now);
    cr_assert_eq(th_health_render(&b, &reg, 3, -1), 503);
    cr_assert(strstr(b.p, "\"hung\":[\"worker[1]\"]"), "%s", b.p);
    cr_assert(strstr(b.p, "{\"index\":1,\"pid\":"), "%s", b.p);
    b.len = 0;
    atomic_store(&reg.hdr->workers[1].hung_ns, 0);
    cr_assert_eq(th_health_render(&b, &reg, 3, -1), 200);
    b.len = 0;
    /* A stopped (SIGSTOP) or wedged process keeps its pid but its heartbeat ages past --hung-after.
     */
    atomic_store(&reg.hdr->roles[TH_ROLE_JANITOR].heartbeat_ns, now - 4 * TH_NS_PER_S);
    cr_assert_eq(th_health_render(&b, &reg, 3, -1), 503);
    b.len = 0;
    cr_assert_eq(th_health_render(&b, &reg, 5, -1), 200, "within a longer --hung-after it is up");
    cr_assert(!strstr(b.p, "\"broker\""), "one node: no broker field: %s", b.p);
    /* --nats: the broker's state is reported; away it does not fail the node (local works). */
    b.len = 0;
    cr_assert_eq(th_health_render(&b, &reg, 5, 0), 200);
    cr_assert(strstr(b.p, "\"broker\":\"down\""), "%s", b.p);
    b.len = 0;
    cr_assert_eq(th_health_render(&b, &reg, 5, 1), 200);
    cr_assert(strstr(b.p, "\"broker\":\"up\""), "%s", b.p);
    th_buf_free(&b);
    free(reg.hdr);
}
