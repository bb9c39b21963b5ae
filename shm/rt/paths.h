/*
 * Runtime paths of a process group: the runtime directory and the worker
 * control sockets in it, derived from the segment name (and
 * $TETHER_RUNTIME_DIR), so every role finds the same paths without being told.
 */
#ifndef TETHER_SHM_RT_PATHS_H
#define TETHER_SHM_RT_PATHS_H

#include <stddef.h>

#include "shm/rt/config.h" /* TH_PATH_MAX */

/*
 * Runtime directory for a segment name: $TETHER_RUNTIME_DIR if set, else
 * /run/tether-<name> for root, /tmp/tether-<uid>-<name> otherwise (the
 * leading '/' of the segment name dropped). Returns 0 or -1 if it won't fit.
 */
int th_runtime_dir(const char *shm_name, char *buf, size_t cap);
/* mkdir -p: create path and its missing parents with mode. Returns 0 or -errno. */
int th_mkdir_p(const char *path, unsigned mode);
/* "<runtime dir>/worker-<index>.sock" */
int th_worker_sock_path(const char *shm_name, unsigned index, char *buf, size_t cap);

#endif
