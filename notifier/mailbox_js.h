/*
 * The cluster mailbox (issue 13): with --nats and --mailbox-ttl > 0 every
 * accepted notification is stored in one JetStream stream that all nodes
 * share, so a client resumes on any node and a node's death loses nothing.
 *
 * The stream is the truth; each node's shared-memory mailbox
 * (shm/mailbox.h) becomes a local cache of it, filled by this module from
 * an ordered consumer of the whole stream (the mirror), in stream order.
 * The workers never link libnats: they resume from that cache exactly as
 * on one node. Seqs are the stream's sequence numbers (strictly increasing
 * per user across nodes because the stream orders every write; not
 * contiguous per user), the epoch is derived from the stream's creation
 * time, and an id's idempotency holds across nodes through the stream's
 * Nats-Msg-Id de-duplication window (= --mailbox-ttl).
 *
 * Only th_notifier links libnats; every call below runs on the notifier's
 * loop thread (libnats threads only queue and wake it, as in route_nats.c).
 * Opening comment of mailbox_js.c: subjects, headers, the mirror, the
 * gate that keeps remote frames from overtaking it.
 */
#ifndef TETHER_NOTIFIER_MAILBOX_JS_H
#define TETHER_NOTIFIER_MAILBOX_JS_H

#include <liburing.h>
#include <stddef.h>
#include <stdint.h>

#include "notifier/route.h"
#include "shm/mailbox.h"
#include "shm/rt/config.h"

struct th_mjs;

/* The outcome of one th_mjs_store, handed to its callback. */
struct th_mjs_result {
    int stored;        /* JetStream confirmed the write; seq below */
    int duplicate;     /* the id was stored before: seq is the first one's, nothing new stored */
    uint64_t seq;      /* with stored */
    uint64_t pos;      /* its entry in the local cache, 0 if not there (yet) */
    const char *frame; /* what to deliver: with seq and epoch when stored, else the given frame */
    size_t flen;
};
/* Called exactly once per accepted th_mjs_store, never from inside it. */
typedef void (*th_mjs_done_fn)(void *arg, const struct th_mjs_result *res);

/*
 * Start the module (its NATS connection and set-up thread run in the
 * background: until the stream is there, stores fail at once). cache is
 * the shm mailbox this process writes; local is the local route, used for
 * the mirror's own deliveries. *gated receives the route to hand to
 * th_route_nats_new instead of local: it holds a frame carrying a seq the
 * mirror has not reached yet, so a remote node's live frame never
 * overtakes what this node's workers can replay. NULL on failure (local is
 * then untouched and still the caller's).
 */
struct th_mjs *th_mjs_new(const struct th_config *cfg, struct th_mbx *cache, struct io_uring *ring,
                          struct th_route *local, struct th_route **gated);

/*
 * Store a notification for user under id (the idempotency key) for ttl_s
 * seconds. frame is the client frame without seq/epoch; at is the byte
 * offset where ,"seq":N,"epoch":"E" goes (right after the id). Returns 0
 * (done is called later, on this thread) or -errno when it cannot even be
 * tried (-ENOTCONN: JetStream is away; -EAGAIN: too many in flight): the
 * caller then goes on as "not stored".
 */
int th_mjs_store(struct th_mjs *j, const char *user, size_t ulen, const char *id, size_t idlen,
                 uint32_t ttl_s, const char *frame, size_t flen, size_t at, th_mjs_done_fn done,
                 void *arg);

/* A completion for the module's eventfd read (user_data kind TH_UD_JS). */
void th_mjs_on_cqe(struct th_mjs *j, int res);
/* Before every wait: time out what is due, keep the eventfd read armed; next deadline. */
uint64_t th_mjs_tick(struct th_mjs *j, uint64_t now_mono);

/* For /metrics. */
struct th_mjs_stats {
    int up;             /* stream set up and the connection up */
    uint64_t stored;    /* writes JetStream confirmed */
    uint64_t failed;    /* writes not confirmed (answered "stored":false / 503) */
    uint64_t dups;      /* writes JetStream de-duplicated (same id) */
    uint64_t retried;   /* publishes again: the user's last seq was another than this cache's */
    uint64_t mirrored;  /* stream messages applied to the cache */
    uint64_t mirror_at; /* last stream seq applied */
};
void th_mjs_stats(const struct th_mjs *j, struct th_mjs_stats *out);

/*
 * Stop, in two steps around the route chain's destroy: th_mjs_close drains
 * and closes the connection (no callbacks are made for stores in flight;
 * the gated route passes everything through from then on), th_mjs_free
 * frees the state once route_nats' destroy has waited for every libnats
 * thread (a late libnats callback still finds the queue).
 */
void th_mjs_close(struct th_mjs *j);
void th_mjs_free(struct th_mjs *j);

#endif
