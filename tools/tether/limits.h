/*
 * The kernel settings a group of a given size needs, checked by `tether run`
 * at start-up so that an operator sizing for a million connections hears at
 * once which setting would stop it, instead of meeting EMFILE, dropped SYNs
 * or a full conntrack table hours later. th_limits_check is pure (the caller
 * fills struct th_sysenv, th_sysenv_read does it from /proc and getrlimit)
 * and says, per setting that is too low, what it is, what this scale needs
 * and why. Nothing is changed: raising limits is the operator's decision.
 */
#ifndef TETHER_TOOLS_LIMITS_H
#define TETHER_TOOLS_LIMITS_H

#include <stddef.h>
#include <stdint.h>

/* Per idle connection, for the memory estimate: the kernel's share on the
 * server side (TCP socket, file, inode, dentry, epoll/io_uring state; about
 * half of the ~9.6 KB both ends take, measured by tools/bench), and tether's
 * own (128-byte slot, index share, 152-byte struct conn, counted once per page). */
#define TH_CONN_KERNEL_BYTES 4800u
#define TH_CONN_USER_BYTES 450u
/* A small frame queued on every connection at once (a notification to all)
 * takes about one small skb each: what net.ipv4.tcp_mem's maximum should allow. */
#define TH_CONN_TCP_MEM_BYTES 2048u
/* Files a group needs besides its client sockets (listeners, rings, logs). */
#define TH_GROUP_SPARE_FILES 1024u

/* What the machine allows; a field left 0 was unknown and is not checked. */
struct th_sysenv {
    uint64_t nofile_cur, nofile_max; /* RLIMIT_NOFILE (after tether raised cur to max) */
    uint64_t nr_open;                /* fs.nr_open: ceiling of RLIMIT_NOFILE */
    uint64_t file_max;               /* fs.file-max: open files, system-wide */
    uint64_t somaxconn;              /* net.core.somaxconn: caps every listen backlog */
    uint64_t tcp_mem_max;            /* net.ipv4.tcp_mem third value, in pages */
    uint64_t page_size;              /* bytes */
    uint64_t port_lo, port_hi;       /* net.ipv4.ip_local_port_range */
    uint64_t conntrack_max;          /* net.netfilter.nf_conntrack_max, when loaded */
    uint64_t conntrack_count;        /* > 0: connections are being tracked */
    uint64_t mem_total;              /* bytes, /proc/meminfo MemTotal */
    uint64_t ehash;                  /* TCP established hash buckets (net.ipv4.tcp_ehash_entries) */
};

/* What the configuration asks for. */
struct th_scale {
    uint32_t workers, slots;
    uint32_t backlog;       /* listen() backlog of each client listener */
    uint32_t worker_cap;    /* connections one worker may hold (TH_WORKER_MAX_CONNS) */
    uint32_t worker_fds;    /* descriptors one worker needs at its cap (TH_WORKER_FDS) */
    uint64_t segment_bytes; /* registry + mailbox shared memory */
};

/* One finding: a warning (a setting too low for this scale) or a note. */
typedef void (*th_limits_emit)(void *ctx, int warning, const char *line);

/* Calls emit once per finding; returns the number of warnings. */
int th_limits_check(const struct th_sysenv *env, const struct th_scale *scale, th_limits_emit emit,
                    void *ctx);

/* Fills env from getrlimit and /proc/sys (unreadable values stay 0). */
void th_sysenv_read(struct th_sysenv *env);

#endif
