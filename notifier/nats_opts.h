/*
 * --nats URL[,URL...] into libnats options. libnats 3.4's natsOptions_SetURL
 * does not connect when given a comma-separated list (with retry on a failed
 * connect it never does, checked against a three-server cluster), so the
 * list is split here and handed over with natsOptions_SetServers.
 *
 * Both of the notifier's NATS connections (the cluster route and the
 * JetStream mailbox) are made with th_nats_options, so they agree on how a
 * broker fault is noticed and ridden out; each adds its own settings after.
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

#endif
