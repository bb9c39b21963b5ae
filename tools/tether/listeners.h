/*
 * The client listeners: one SO_REUSEPORT listening socket per worker on
 * --listen, all in one kernel reuseport group, created by the supervisor so
 * they outlive any worker (a queued client survives its worker's restart),
 * and inherited by every worker (a live worker can take over a hung peer's
 * queue). The supervisor chooses which listeners the kernel hands new
 * clients to with a classic BPF program on the group (SO_ATTACH_REUSEPORT_CBPF):
 * a connection is steered at SYN time, so a listener left out of the set
 * gets no new client from that moment. Internal to the supervisor.
 */
#ifndef TETHER_TOOLS_TETHER_LISTENERS_H
#define TETHER_TOOLS_TETHER_LISTENERS_H

#include <stddef.h>
#include <stdint.h>

/*
 * Bind and listen n sockets on host:port, fds[i] joining the group i-th
 * (the kernel's index of a socket in its group is its listen order, which
 * the steering program relies on). A port some other process holds is
 * refused even if that process also uses SO_REUSEPORT: a plain socket is
 * bound first as a probe. Returns 0, or -errno with err naming the step.
 */
int th_listeners_open(const char *host, uint16_t port, unsigned n, int backlog, int *fds, char *err,
                      size_t errlen);

/*
 * Steer new clients evenly (at random) over the listeners whose bit is set
 * in mask (bit i = fds[i]); an empty mask lets the kernel spread them over
 * all n by flow hash, as without a program. Returns 0 or -errno.
 */
int th_listeners_steer(int any_fd, unsigned n, uint64_t mask);

void th_listeners_close(int *fds, unsigned n);

#endif
