/*
 * The janitor: every sweep_every_s seconds, evicts connections whose LastSeen
 * is older than stale_after_s (asks the owning worker to close them with
 * 4000), and repairs what dead processes left in the segment
 * (th_reg_repair).
 */
#ifndef TETHER_JANITOR_JANITOR_H
#define TETHER_JANITOR_JANITOR_H

#include "shm/rt/config.h"
#include "shm/registry.h"

/* Warnings and refusals for the stale/sweep settings. Returns 0, or -EINVAL with err set. */
int th_janitor_check_config(const struct th_config *cfg, char *err, size_t errlen);

/* Run until SIGTERM/SIGINT. Returns the process exit status. */
int th_janitor_main(const struct th_config *cfg, struct th_reg *reg);

#endif
