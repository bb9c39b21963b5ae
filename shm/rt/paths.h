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
 * Runtime directory for a segment name (the leading '/' dropped): explicit
 * (in practice $TETHER_RUNTIME_DIR) if non-empty, else /run/tether-<name> for
 * root, else $XDG_RUNTIME_DIR/tether-<name> when xdg is set (a per-user 0700
 * directory), else /tmp/tether-<euid>-<name>. Pure. 0, or -ENAMETOOLONG if it won't fit.
 */
int th_runtime_dir_pick(const char *shm_name, unsigned euid, const char *explicit_dir,
                        const char *xdg, char *buf, size_t cap);
/* th_runtime_dir_pick with getenv("TETHER_RUNTIME_DIR"), geteuid(), getenv("XDG_RUNTIME_DIR"). */
int th_runtime_dir(const char *shm_name, char *buf, size_t cap);
/* mkdir -p: create path and its missing parents with mode. Returns 0 or -errno. */
int th_mkdir_p(const char *path, unsigned mode);
/*
 * Create the runtime directory (parents too) if missing, then refuse it
 * unless it is a real directory (not a symlink) owned by this euid with no
 * group or other permissions: in a shared /tmp another local user could
 * otherwise have made it first and plant the control sockets. Returns 0, or
 * -errno with a one-line reason in err (what is wrong and how to fix it).
 */
int th_runtime_dir_prepare(const char *dir, char *err, size_t errlen);
/* "<runtime dir>/worker-<index>.sock". Returns 0 or -ENAMETOOLONG. */
int th_worker_sock_path(const char *shm_name, unsigned index, char *buf, size_t cap);

#endif
