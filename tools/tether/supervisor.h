/*
 * The supervisor behind `tether run`: creates the segment and the listeners,
 * forks the socket workers, the janitor and the notifier, restarts any that
 * dies (with backoff), reclaims a dead worker's slots at once, and on
 * SIGTERM/SIGINT drains the group and removes the segment and sockets.
 */
#ifndef TETHER_TOOLS_TETHER_SUPERVISOR_H
#define TETHER_TOOLS_TETHER_SUPERVISOR_H

#include "shm/rt/config.h"

/* Returns the process exit status: 0 after a clean drain, 1 on a start-up failure. */
int th_supervisor_run(const struct th_config *cfg);

#endif
