/*
 * What the notifier reports about the group: /metrics (Prometheus text,
 * counters from the segment header plus the notifier's own notify-to-confirmed
 * latency histogram) and /healthz (is every role and worker alive).
 */
#ifndef TETHER_NOTIFIER_METRICS_H
#define TETHER_NOTIFIER_METRICS_H

#include "notifier/api.h"
#include "shm/registry.h"

#include <stdint.h>

#define TH_HIST_BUCKETS 15

/* Notify-to-confirmed latency, kept in the notifier process only. */
struct th_hist {
    uint64_t count[TH_HIST_BUCKETS + 1]; /* last: +Inf */
    uint64_t total;
    double sum_s;
};

void th_hist_add(struct th_hist *h, uint64_t ns);
/* Prometheus histogram lines for h under name. */
void th_hist_render(struct th_buf *b, const char *name, const char *help, const struct th_hist *h);

/* What only the notifier process knows, exported next to the group's counters. */
struct th_notifier_stats {
    struct th_hist confirm; /* notify-to-confirmed latency */
    unsigned api_conns;     /* open backend API connections */
    uint64_t owed;          /* notifications accepted, answer not yet written */
    uint64_t stored;        /* notify answers 202 stored (the mailbox's counter) */
};

/* Prometheus text for the whole group into b. */
void th_metrics_render(struct th_buf *b, const struct th_reg *reg,
                       const struct th_notifier_stats *st);

/*
 * Health JSON into b; returns 200 when everything is up (alive, heartbeat
 * within hung_after_s, not declared hung), else 503. "hung" lists the
 * processes the supervisor declared hung, e.g. ["worker[1]"]. broker: -1
 * (one node: no field), 0 or 1: "broker":"down"/"up" (with --nats); a
 * broker that is away does not make it 503, since local delivery works.
 */
int th_health_render(struct th_buf *b, const struct th_reg *reg, uint32_t hung_after_s, int broker);

struct th_mbx;
/*
 * The mailbox's gauges and counters (tether_mailbox_*, tether_resumes_total)
 * into b; nothing when mbx is NULL.
 */
void th_metrics_render_mailbox(struct th_buf *b, const struct th_mbx *mbx);

#endif
