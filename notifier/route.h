/*
 * How a notification reaches a user's connections, behind one small
 * interface so the HTTP side never knows where they live. The local route
 * (route_local.c) looks the user up in this node's registry and hands the
 * frame to the owning workers over their control sockets; a second route
 * (another node via a message broker) would implement the same operations.
 *
 * A route is driven by the notifier's single-threaded io_uring loop: it may
 * queue SQEs on the loop's ring (th_uring_sqe) with user_data from
 * th_ud_make(TH_UD_ROUTE, idx, gen) (shm/rt/uring.h); the loop hands the
 * matching completions back through on_cqe, calls flush() before every wait
 * (so deliveries queued by one batch of requests leave in as few syscalls as
 * possible), and calls expire() with the monotonic clock whenever
 * next_deadline() has passed.
 */
#ifndef TETHER_NOTIFIER_ROUTE_H
#define TETHER_NOTIFIER_ROUTE_H

#include <liburing.h>
#include <stddef.h>
#include <stdint.h>

#include "shm/rt/config.h"
#include "shm/rt/uring.h"
#include "shm/registry.h"

/* The kinds of user_data on the notifier's ring (th_ud_make's kind). */
enum th_ud_kind {
    TH_UD_NONE = 0,   /* cancellations and other fire-and-forget SQEs */
    TH_UD_ACCEPT = 1, /* multishot accept on the API socket */
    TH_UD_RECV = 2,   /* recv on an API connection (idx = connection) */
    TH_UD_SEND = 3,   /* send on an API connection */
    TH_UD_ROUTE = 4,  /* owned by the route: handed to its on_cqe */
    TH_UD_JS = 5,     /* the JetStream mailbox's eventfd read (mailbox_js.c) */
};

/* The outcome of one delivery, as the route saw it. */
struct th_route_result {
    int status;         /* 200 delivered, 404 not connected, 503 unavailable */
    unsigned confirmed; /* connections whose worker confirmed (TH_HO_OK), all nodes */
    unsigned nodes;     /* 200 over a cluster (--nats): nodes that confirmed; 0 = one node */
    int has_last_seen;  /* 404: LastSeen known */
    uint64_t last_seen_ns;
    uint64_t mono_ns; /* when the outcome was read (monotonic), 0: not given (read the clock) */
};

/* Called exactly once per deliver(), possibly before deliver() returns. */
typedef void (*th_route_done_fn)(void *arg, const struct th_route_result *res);

#define TH_NODE_NAME_MAX TH_NODE_MAX

/* One connection another node holds, as its presence answer listed it. */
struct th_route_pconn {
    char node[TH_NODE_NAME_MAX + 1];
    unsigned worker;
    uint64_t connected_at, last_seen; /* wall ns */
};

/* What the other nodes said about a user's presence. */
struct th_route_presence {
    const struct th_route_pconn *conns; /* valid during the callback only */
    unsigned n;
    int has_last_seen;     /* some node's registry knows a LastSeen */
    uint64_t last_seen_ns; /* the latest of them */
    unsigned nodes;        /* nodes that answered */
    int partial;           /* broker away or a live node did not answer in time */
};
typedef void (*th_route_presence_fn)(void *arg, const struct th_route_presence *p);

struct th_buf;

struct th_route;
struct th_route_ops {
    /*
     * Deliver frame (flen bytes, copied if the route needs it later) to
     * every live connection of user. nseq is its mailbox seq (0: none) and
     * ho_flags its TH_HO_F_* bits (shm/rt/channel.h), both passed on with
     * the frame. Returns 0 (done will be called) or -errno (done will not
     * be called; treat as unavailable).
     */
    int (*deliver)(struct th_route *r, const char *user, size_t ulen, const char *frame,
                   size_t flen, uint64_t nseq, unsigned ho_flags, th_route_done_fn done, void *arg);
    /* A completion for an SQE this route queued (user_data payload given back). */
    void (*on_cqe)(struct th_route *r, uint32_t idx, uint32_t gen, int res, unsigned flags);
    /* Send what deliver() queued (batched); the loop calls it before it waits. */
    void (*flush)(struct th_route *r);
    /* Monotonic ns of the next timeout to act on, or UINT64_MAX. */
    uint64_t (*next_deadline)(struct th_route *r);
    /* Fail every delivery whose bound passed by now_mono. */
    void (*expire)(struct th_route *r, uint64_t now_mono);
    void (*destroy)(struct th_route *r);
    /*
     * Optional (NULL on one node). Ask the other nodes which connections of
     * user they hold; done is called exactly once (possibly before this
     * returns) with what answered within --handoff-timeout-ms. Returns 0 or
     * -errno (done will not be called).
     */
    int (*presence)(struct th_route *r, const char *user, size_t ulen, th_route_presence_fn done,
                    void *arg);
    /* Optional: 1 broker connected, 0 away (for /healthz "broker"). */
    int (*broker_up)(struct th_route *r);
    /* Optional: the route's Prometheus lines appended to b. */
    void (*render_metrics)(struct th_route *r, struct th_buf *b);
};

struct th_route {
    const struct th_route_ops *ops;
};

/*
 * The local route: registry lookup plus worker handoff. cfg->handoff_timeout_ms
 * bounds how long a delivery waits for workers. Returns NULL on out of memory.
 */
struct th_route *th_route_local_new(const struct th_config *cfg, struct th_reg *reg,
                                    struct io_uring *ring);

/*
 * The local route's deliver for a notification stored at connected_by
 * (realtime ns) and handed over only now (the JetStream mirror catching up
 * after its notifier or broker connection was down): the user's
 * connections that were there by then (their slot's connected_at is not
 * later) get it, and later ones only if they resumed (TH_HO_F_IF_RESUMED:
 * their worker decides). A client that connected since without asking for
 * a replay does not get older notifications as live ones; one that resumed
 * may have been answered from a cache that did not hold it yet, and its
 * worker drops it by seq if the replay sent it. local must come from
 * th_route_local_new. As deliver().
 */
int th_route_local_deliver_by(struct th_route *local, uint64_t connected_by, const char *user,
                              size_t ulen, const char *frame, size_t flen, uint64_t nseq,
                              unsigned ho_flags, th_route_done_fn done, void *arg);

/*
 * The cluster route (route_nats.c, with --nats): wraps local (and owns it
 * from then on) and adds the nodes that hold the user, over NATS. Returns
 * NULL (local destroyed) on out of memory or a bad --nats list.
 */
struct th_route *th_route_nats_new(const struct th_config *cfg, struct th_reg *reg,
                                   struct io_uring *ring, struct th_route *local);

/*
 * " on node NAME" with --nats (appended to the contract's notifier log lines
 * so an operator sees which node said it), "" on one node.
 */
const char *th_route_where(const struct th_config *cfg);

#endif
