/*
 * Runtime paths (see shm/rt/paths.h): where a group's control sockets live,
 * derived from the segment name alone so every role computes the same ones.
 */
#include "shm/rt/paths.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int th_runtime_dir_pick(const char *shm_name, unsigned euid, const char *explicit_dir,
                        const char *xdg, char *buf, size_t cap)
{
    const char *name = shm_name[0] == '/' ? shm_name + 1 : shm_name;
    int n;
    if (explicit_dir && *explicit_dir)
        n = snprintf(buf, cap, "%s", explicit_dir);
    else if (euid == 0)
        n = snprintf(buf, cap, "/run/tether-%s", name);
    else if (xdg && *xdg == '/')
        n = snprintf(buf, cap, "%s/tether-%s", xdg, name);
    else
        n = snprintf(buf, cap, "/tmp/tether-%u-%s", euid, name);
    return n < 0 || (size_t)n >= cap ? -ENAMETOOLONG : 0;
}

int th_runtime_dir(const char *shm_name, char *buf, size_t cap)
{
    return th_runtime_dir_pick(shm_name, (unsigned)geteuid(), getenv("TETHER_RUNTIME_DIR"),
                               getenv("XDG_RUNTIME_DIR"), buf, cap);
}

int th_runtime_dir_prepare(const char *dir, char *err, size_t errlen)
{
    struct stat st;
    int rc = th_mkdir_p(dir, 0700);
    if (rc < 0) {
        snprintf(err, errlen, "runtime directory %s: mkdir: %s", dir, strerror(-rc));
        return rc;
    }
    if (lstat(dir, &st) < 0) {
        rc = -errno;
        snprintf(err, errlen, "runtime directory %s: lstat: %s", dir, strerror(-rc));
        return rc;
    }
    if (!S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "runtime directory %s is %s, not a directory: remove it", dir,
                 S_ISLNK(st.st_mode) ? "a symbolic link" : "a file");
        return -ENOTDIR;
    }
    if (st.st_uid != geteuid()) {
        snprintf(err, errlen,
                 "runtime directory %s belongs to uid %u, not to us (uid %u): another user may "
                 "have created it; remove it or set TETHER_RUNTIME_DIR",
                 dir, (unsigned)st.st_uid, (unsigned)geteuid());
        return -EPERM;
    }
    if (st.st_mode & 077) {
        snprintf(err, errlen,
                 "runtime directory %s has mode %04o: group or others could plant control "
                 "sockets there; chmod 700 it or remove it",
                 dir, (unsigned)(st.st_mode & 07777));
        return -EPERM;
    }
    return 0;
}

int th_worker_sock_path(const char *shm_name, unsigned index, char *buf, size_t cap)
{
    char dir[TH_PATH_MAX];
    int rc = th_runtime_dir(shm_name, dir, sizeof(dir));
    if (rc < 0)
        return rc;
    int n = snprintf(buf, cap, "%s/worker-%u.sock", dir, index);
    return n < 0 || (size_t)n >= cap ? -ENAMETOOLONG : 0;
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
