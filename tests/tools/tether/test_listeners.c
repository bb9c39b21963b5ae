/*
 * Unit tests of the client listeners (tools/tether/listeners.c) against the
 * real kernel: the steering program sends every new connection to a
 * listener of the set and none to the others, an empty set spreads them
 * over all, a port another process holds is refused even when it uses
 * SO_REUSEPORT too, and a listener left out keeps what was queued on it.
 */
#include "tools/tether/listeners.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#define N 3
#define CONNS 60

static int fds[N];
static char err[256];

static uint16_t port_of(int fd)
{
    struct sockaddr_in a;
    socklen_t len = sizeof(a);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    return ntohs(a.sin_port);
}

/* A free port: bind an ephemeral one and let it go. */
static uint16_t free_port(void)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(bind(s, (struct sockaddr *)&a, sizeof(a)), 0);
    uint16_t p = port_of(s);
    close(s);
    return p;
}

static void open_group(void)
{
    uint16_t port = free_port();
    cr_assert_eq(th_listeners_open("127.0.0.1", port, N, 128, fds, err, sizeof(err)), 0, "%s", err);
    for (int i = 1; i < N; i++)
        cr_assert_eq(port_of(fds[i]), port);
}

/* Open CONNS clients (kept in cl) and count how many each listener has queued. */
static void connect_and_count(int *cl, int counts[N])
{
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons(port_of(fds[0])),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    for (int k = 0; k < CONNS; k++) {
        cl[k] = socket(AF_INET, SOCK_STREAM, 0);
        cr_assert_eq(connect(cl[k], (struct sockaddr *)&a, sizeof(a)), 0, "connect: %s",
                     strerror(errno));
    }
    for (int i = 0; i < N; i++) {
        counts[i] = 0;
        int c;
        while ((c = accept(fds[i], NULL, NULL)) >= 0) {
            counts[i]++;
            close(c);
        }
        cr_assert_eq(errno, EAGAIN, "accept: %s", strerror(errno));
    }
    for (int k = 0; k < CONNS; k++)
        close(cl[k]);
}

Test(listeners, steering_sends_clients_only_to_the_set)
{
    int cl[CONNS], counts[N];
    open_group();
    cr_assert_eq(th_listeners_steer(fds[0], N, (1u << 0) | (1u << 2)), 0);
    connect_and_count(cl, counts);
    cr_assert_eq(counts[0] + counts[1] + counts[2], CONNS);
    cr_assert_eq(counts[1], 0, "listener 1 is out of the set: %d", counts[1]);
    cr_assert_gt(counts[0], 0, "random over {0,2}: both get some");
    cr_assert_gt(counts[2], 0);

    cr_assert_eq(th_listeners_steer(fds[2], N, 1u << 1), 0, "any socket of the group sets it");
    connect_and_count(cl, counts);
    cr_assert_eq(counts[1], CONNS, "only listener 1: %d %d %d", counts[0], counts[1], counts[2]);

    cr_assert_eq(th_listeners_steer(fds[0], N, 0), 0);
    connect_and_count(cl, counts);
    cr_assert_eq(counts[0] + counts[1] + counts[2], CONNS);
    cr_assert(counts[0] > 0 && counts[1] > 0 && counts[2] > 0,
              "empty set: spread over all (%d %d %d)", counts[0], counts[1], counts[2]);
    th_listeners_close(fds, N);
    cr_assert_eq(fds[0], -1);
}

Test(listeners, a_queued_client_stays_on_a_listener_left_out)
{
    open_group();
    cr_assert_eq(th_listeners_steer(fds[0], N, 1u << 1), 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons(port_of(fds[0])),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int c = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_eq(connect(c, (struct sockaddr *)&a, sizeof(a)), 0);
    /* Steer away from listener 1 after the client is queued there: an adopter must find it. */
    cr_assert_eq(th_listeners_steer(fds[0], N, 1u << 0), 0);
    struct pollfd p = {.fd = fds[1], .events = POLLIN};
    cr_assert_eq(poll(&p, 1, 1000), 1, "still readable on the left-out listener");
    int s = accept(fds[1], NULL, NULL);
    cr_assert_geq(s, 0);
    close(s);
    close(c);
    th_listeners_close(fds, N);
}

Test(listeners, a_port_held_elsewhere_is_refused_even_with_reuseport)
{
    int holder[N], one = 1;
    open_group(); /* another group of ours holds the port, SO_REUSEPORT and all */
    uint16_t port = port_of(fds[0]);
    cr_assert_eq(th_listeners_open("127.0.0.1", port, N, 128, holder, err, sizeof(err)),
                 -EADDRINUSE);
    cr_assert(strstr(err, "bind"), "%s", err);
    for (int i = 0; i < N; i++)
        cr_assert_eq(holder[i], -1, "nothing left open");
    th_listeners_close(fds, N);

    int plain = socket(AF_INET, SOCK_STREAM, 0); /* a plain listener of someone else */
    setsockopt(plain, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in a = {
        .sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(bind(plain, (struct sockaddr *)&a, sizeof(a)), 0);
    cr_assert_eq(listen(plain, 8), 0);
    cr_assert_eq(th_listeners_open("127.0.0.1", port, N, 128, holder, err, sizeof(err)),
                 -EADDRINUSE);
    close(plain);
    cr_assert_eq(th_listeners_open("127.0.0.1", port, N, 128, holder, err, sizeof(err)), 0,
                 "free again once it is gone: %s", err);
    th_listeners_close(holder, N);
}
