/*
 * Client side of the worker control channel (see shm/rt/channel.h): the
 * blocking helpers used by the janitor, the tests and any role that sends a
 * few requests at a time. The worker's serving side lives in its io_uring
 * loop; the notifier drives the same wire format asynchronously.
 */
#include "shm/rt/channel.h"
#include "shm/rt/config.h"
#include "shm/rt/clock.h"
#include "shm/rt/paths.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

int th_ho_connect_path(const char *path, int nonblock)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (!path[0] || strlen(path) >= sizeof(sa.sun_path))
        return -ENAMETOOLONG;
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0), 0);
    if (fd < 0)
        return -errno;
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

int th_ho_connect(const char *shm_name, unsigned index, int nonblock)
{
    char path[TH_PATH_MAX];
    int rc = th_worker_sock_path(shm_name, index, path, sizeof(path));
    if (rc < 0)
        return rc;
    return th_ho_connect_path(path, nonblock);
}

int th_ho_set_sndbuf(int fd)
{
    int sz = TH_HO_SNDBUF;
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sz, sizeof(sz)) == 0)
        return 0;
    return setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz)) == 0 ? 0 : -errno;
}

int th_ho_send(int fd, const struct th_ho_msg *m, const void *payload)
{
    struct iovec iov[2] = {{(void *)m, sizeof(*m)}, {(void *)payload, payload ? m->len : 0}};
    struct msghdr mh = {.msg_iov = iov, .msg_iovlen = payload && m->len ? 2 : 1};
    ssize_t n = sendmsg(fd, &mh, MSG_NOSIGNAL);
    if (n < 0)
        return -errno;
    return (size_t)n == sizeof(*m) + (payload ? m->len : 0) ? 0 : -EMSGSIZE;
}

int th_ho_call(int fd, const struct th_ho_msg *m, const void *payload, int timeout_ms)
{
    int rc = th_ho_send(fd, m, payload);
    if (rc < 0)
        return rc;
    uint64_t deadline = th_mono_ns() + (uint64_t)timeout_ms * TH_NS_PER_MS;
    for (;;) {
        uint64_t now = th_mono_ns();
        if (now >= deadline)
            return -ETIMEDOUT;
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int pr = poll(&pfd, 1, (int)((deadline - now + TH_NS_PER_MS - 1) / TH_NS_PER_MS));
        if (pr < 0 && errno != EINTR)
            return -errno;
        if (pr <= 0)
            continue;
        struct th_ho_msg reply;
        ssize_t n = recv(fd, &reply, sizeof(reply), 0);
        if (n == 0)
            return -ECONNRESET;
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            return -errno;
        }
        if ((size_t)n == sizeof(reply) && reply.magic == TH_HO_MAGIC && reply.type == TH_HO_REPLY &&
            reply.seq == m->seq)
            return reply.code;
    }
}
