/*
 * The notifier's HTTP/1.1 server: one io_uring loop that accepts API
 * connections, frames pipelined requests (notifier/api.h), answers them in
 * order and hands notifications to a route (notifier/route.h) without
 * blocking on it.
 */
#ifndef TETHER_NOTIFIER_SERVER_H
#define TETHER_NOTIFIER_SERVER_H

#include "shm/rt/config.h"
#include "shm/registry.h"

#define TH_API_MAX_CONNS 1024   /* concurrent API connections; more are closed at accept */
#define TH_API_IDLE_S 60        /* idle keep-alive connections are closed after this */
#define TH_API_MAX_PIPELINE 256 /* answers owed on one connection before reading pauses */

/*
 * Serve api_fd until th_sig_stop is set (shm/rt/role.h); th_sig_hup set
 * means reopen the log. Returns 0 on a clean stop, -errno if the loop could
 * not start.
 */
int th_server_run(const struct th_config *cfg, struct th_reg *reg, int api_fd);

#endif
