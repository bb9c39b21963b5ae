/*
 * A socket worker: one pre-forked process running one io_uring loop that
 * accepts WebSocket clients on its own listener, authenticates them,
 * registers each connection in the registry, stamps LastSeen on every
 * inbound frame, answers pings, and serves its control socket
 * (shm/rt/channel.h) for notifications and evictions.
 */
#ifndef TETHER_WORKER_WORKER_H
#define TETHER_WORKER_WORKER_H

#include "shm/rt/config.h"
#include "shm/registry.h"

/*
 * Run worker `index` until SIGTERM/SIGINT (drain: close every client with
 * 1001, wait up to drain_timeout_s, release every slot) or a fatal error.
 * listen_fds[0..cfg->workers) are every worker's client listener (already
 * listening, non-blocking, one SO_REUSEPORT group): this worker accepts on
 * listen_fds[index], and on a peer's while the supervisor names it that
 * peer's adopter.
 * The caller has attached reg writable. Returns the process exit status:
 * 0 after a drain, 1 on a fatal error (logged, e.g. io_uring unavailable).
 */
struct th_tls_ctx;
/* Before th_worker_main: serve wss:// with this context (loaded before the fork). */
void th_worker_use_tls(struct th_tls_ctx *ctx);

int th_worker_main(const struct th_config *cfg, struct th_reg *reg, unsigned index,
                   const int *listen_fds);

#endif
