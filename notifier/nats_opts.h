/*
 * --nats URL[,URL...] into libnats options. libnats 3.4's natsOptions_SetURL
 * does not connect when given a comma-separated list (with retry on a failed
 * connect it never does, checked against a three-server cluster), so the
 * list is split here and handed over with natsOptions_SetServers.
 *
 * Both of the notifier's NATS connections (the cluster route and the
 * JetStream mailbox) are made with th_nats_options, so they agree on how a
 * broker fault is noticed and ridden out; each adds its own settings after.
 * Both close their subscriptions at stop with th_nats_sub_close.
 */
#ifndef TETHER_NOTIFIER_NATS_OPTS_H
#define TETHER_NOTIFIER_NATS_OPTS_H

#include <nats/nats.h>

/* Split list at commas (spaces around a URL ignored); NATS_INVALID_ARG when empty or too long. */
natsStatus th_nats_set_servers(natsOptions *opts, const char *list);

/*
 * Create *opts for list (--nats) under the connection name: the servers,
 * libnats' global delivery thread (callbacks only queue; the loop does the
 * work), sends at once (no wait for libnats' flusher thread), reconnect
 * forever every 250 ms, 1 s connect timeout, a ping every second and down
 * after two unanswered. On an error *opts may be set: the caller destroys it.
 */
natsStatus th_nats_options(natsOptions **opts, const char *list, const char *name);

/*
 * Close sub (unsubscribe and destroy) outside a drain. Its close is a
 * control message posted to libnats' global delivery pool; one still queued
 * when nats_CloseAndWait stops the pool is never freed (LeakSanitizer saw it
 * after a cut broker connection), so *open counts the closes whose
 * on-complete callback, run by the pool after the subscription's last
 * message callback, has not come yet; th_nats_closes_wait waits for them.
 */
void th_nats_sub_close(natsSubscription *sub, _Atomic unsigned *open);

/* Wait until *open is 0, at most ms (a pool that never gets to them only costs the leak). */
void th_nats_closes_wait(_Atomic unsigned *open, int ms);

#endif
