/*
 * Per-worker client listeners in one SO_REUSEPORT group, and the classic
 * BPF program that steers new clients over them (tools/tether/listeners.h).
 *
 * Why per-worker listeners rather than one shared socket: on a shared
 * socket every worker's multishot accept waits in the same queue, and the
 * kernel hands each connection to the first waiter (exclusive wake-up)
 * whether or not that process runs; a stopped worker's accept took clients
 * it could not serve for the 30 s the old watchdog needed. With a listener
 * each, the kernel picks the listener at SYN time by running our program,
 * and the supervisor regenerates the program to leave out any worker that
 * is hung, dead or full, so no new client waits on a worker that does not
 * run. The clients already queued on a left-out listener are taken by a
 * live worker the supervisor names (th_proc_sh.adopter).
 *
 * The program: A = random; A %= k; then a table of k (A == j -> return the
 * j-th steered listener's index in the group). Returning an index past the
 * group makes the kernel fall back to its flow-hash choice over all of
 * them, which is what an empty set asks for.
 */
#include "tools/tether/listeners.h"

#include <errno.h>
#include <linux/filter.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_LISTENERS 64

void th_listeners_close(int *fds, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        if (fds[i] >= 0)
            close(fds[i]);
        fds[i] = -1;
    }
}

static int bind_one(const struct addrinfo *ai, int reuseport, int backlog, const char **call)
{
    int one = 1;
    *call = "socket";
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    *call = "setsockopt SO_REUSEPORT";
    if (!reuseport || setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) == 0) {
        *call = "bind";
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
            *call = "listen";
            if (backlog == 0 || listen(fd, backlog) == 0)
                return fd;
        }
    }
    int e = errno;
    close(fd);
    return -e;
}

int th_listeners_open(const char *host, uint16_t port, unsigned n, int backlog, int *fds, char *err,
                      size_t errlen)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV},
                    *ai = NULL;
    char portstr[8];
    for (unsigned i = 0; i < n; i++)
        fds[i] = -1;
    if (n == 0 || n > MAX_LISTENERS) {
        snprintf(err, errlen, "%u listeners: between 1 and %d", n, MAX_LISTENERS);
        return -EINVAL;
    }
    snprintf(portstr, sizeof(portstr), "%u", port);
    int gai = getaddrinfo(host, portstr, &hints, &ai);
    if (gai != 0) {
        snprintf(err, errlen, "cannot resolve address: %s", gai_strerror(gai));
        return -EINVAL;
    }
    const char *call;
    /* The probe: a plain socket cannot share the port with anyone, reuseport or not. */
    int rc = bind_one(ai, 0, 0, &call);
    if (rc >= 0) {
        close(rc);
        for (unsigned i = 0; i < n && rc >= 0; i++)
            rc = fds[i] = bind_one(ai, 1, backlog, &call);
    }
    freeaddrinfo(ai);
    if (rc >= 0)
        return 0;
    th_listeners_close(fds, n);
    snprintf(err, errlen, "%s failed: %s", call, strerror(-rc));
    return rc;
}

int th_listeners_steer(int any_fd, unsigned n, uint64_t mask)
{
    struct sock_filter prog[2 + 2 * MAX_LISTENERS + 1];
    unsigned len = 0, k = 0, first = 0;
    if (n > MAX_LISTENERS)
        return -EINVAL;
    for (unsigned i = 0; i < n; i++)
        k += (mask >> i) & 1;
    if (k == 0) {
        prog[len++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, n); /* past the group: hash */
    } else {
        prog[len++] =
            (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, SKF_AD_OFF + SKF_AD_RANDOM);
        prog[len++] = (struct sock_filter)BPF_STMT(BPF_ALU | BPF_MOD | BPF_K, k);
        for (unsigned i = 0, j = 0; i < n; i++) {
            if (!((mask >> i) & 1))
                continue;
            if (j == 0)
                first = i;
            prog[len++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, j++, 0, 1);
            prog[len++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, i);
        }
        prog[len++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, first); /* not reached */
    }
    struct sock_fprog fp = {.len = (unsigned short)len, .filter = prog};
    if (setsockopt(any_fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, &fp, sizeof(fp)) < 0)
        return -errno;
    return 0;
}
