/*
 * --nats URL[,URL...] into libnats options. libnats 3.4's natsOptions_SetURL
 * does not connect when given a comma-separated list (with retry on a failed
 * connect it never does, checked against a three-server cluster), so the
 * list is split here and handed over with natsOptions_SetServers.
 */
#ifndef TETHER_NOTIFIER_NATS_OPTS_H
#define TETHER_NOTIFIER_NATS_OPTS_H

#include <nats/nats.h>

/* Split list at commas (spaces around a URL ignored); NATS_INVALID_ARG when empty or too long. */
natsStatus th_nats_set_servers(natsOptions *opts, const char *list);

#endif
