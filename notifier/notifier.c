/*
 * The notifier role's entry point: role set-up (shm/rt/role.h: signals,
 * its entry in the segment's role table), then the API server loop
 * (notifier/server.c).
 */
#include "notifier/notifier.h"
#include "notifier/server.h"
#include "shm/rt/clock.h"
#include "shm/rt/log.h"
#include "shm/rt/role.h"

int th_notifier_main(const struct th_config *cfg, struct th_reg *reg, int api_fd)
{
    if (th_role_signals(0, NULL) < 0) /* the ring wait returns EINTR on a signal */
        return 1;
    th_role_publish(&reg->hdr->roles[TH_ROLE_NOTIFIER], th_now_ns());
    th_info("[Notifier] serving the backend API on %s:%u", cfg->api_host, cfg->api_port);
    int rc = th_server_run(cfg, reg, api_fd);
    if (rc < 0)
        return 1;
    th_info("[Notifier] stopped");
    return 0;
}
