/*
 * Runtime paths (see shm/rt/paths.h): where a group's control sockets live,
 * derived from the segment name alone so every role computes the same ones.
 */
#include "shm/rt/paths.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

int th_runtime_dir(const char *shm_name, char *buf, size_t cap)
{
    const char *name = shm_name[0] == '/' ? shm_name + 1 : shm_name;
    const char *env = getenv("TETHER_RUNTIME_DIR");
    int n;
    if (env && *env)
        n = snprintf(buf, cap, "%s", env);
    else if (geteuid() == 0)
        n = snprintf(buf, cap, "/run/tether-%s", name);
    else
        n = snprintf(buf, cap, "/tmp/tether-%u-%s", (unsigned)geteuid(), name);
    return n < 0 || (size_t)n >= cap ? -1 : 0;
}

int th_worker_sock_path(const char *shm_name, unsigned index, char *buf, size_t cap)
{
    char dir[TH_PATH_MAX];
    if (th_runtime_dir(shm_name, dir, sizeof(dir)) < 0)
        return -1;
    int n = snprintf(buf, cap, "%s/worker-%u.sock", dir, index);
    return n < 0 || (size_t)n >= cap ? -1 : 0;
}

int th_mkdir_p(const char *path, unsigned mode)
{
    char buf[TH_PATH_MAX];
    if (snprintf(buf, sizeof(buf), "%s", path) >= (int)sizeof(buf))
        return -ENAMETOOLONG;
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, mode) < 0 && errno != EEXIST)
            return -errno;
        *p = '/';
    }
    if (mkdir(buf, mode) < 0 && errno != EEXIST)
        return -errno;
    return 0;
}
