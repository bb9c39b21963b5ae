/*
 * The notifier: serves the backend HTTP API (POST /v1/notify,
 * /v1/notify/batch, GET /v1/presence/<user>, /healthz, /metrics), finds a
 * user's live connections in the registry and hands each notification to the
 * owning worker over its control socket (shm/rt/channel.h).
 */
#ifndef TETHER_NOTIFIER_NOTIFIER_H
#define TETHER_NOTIFIER_NOTIFIER_H

#include "shm/rt/config.h"
#include "shm/registry.h"

/*
 * Run until SIGTERM/SIGINT. api_fd is the already listening, non-blocking API
 * socket. Returns the process exit status (0 on a clean stop).
 */
int th_notifier_main(const struct th_config *cfg, struct th_reg *reg, int api_fd);

struct th_tls_ctx;
/*
 * --api-tls-cert/--api-tls-key: the pair the supervisor loaded (and checked)
 * before the fork; the API then serves https:// (notifier/api_tls.h). Call
 * before th_notifier_main; NULL or no call: plain http://.
 */
void th_notifier_use_tls(struct th_tls_ctx *ctx);

#endif
