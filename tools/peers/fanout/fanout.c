/*
 * tether-fanout: the fan-out ceiling of this machine's loopback TCP, the
 * yardstick for tether's batch path (issue 15). A sender writes one small
 * WebSocket text frame (a server-to-client frame as tether renders a
 * notification, --frame-bytes) to each of N loopback TCP connections in
 * turn, as fast as it can: a batch of --batch sends (each to a different
 * connection, so each is its own segment, as tether's batch of 500 users
 * is) goes in one io_uring_submit_and_wait. A receiver process holds the
 * other ends with one multishot recv each over a provided-buffer ring and
 * only counts bytes: no parsing, no timestamps, no replies. Neither side
 * does anything a server or client could skip, so the frames per second it
 * reaches, with its CPU per frame, is what any server on this box can do
 * with its clients on the same box; tether's batch figure is read against
 * it (tools/bench --batch-ceiling).
 *
 * --pairs P runs P such sender/receiver pairs at once, each with its share
 * of the connections, so the box's every core can send (tether has a worker
 * per CPU). In a pair the sender is a forked process of main and its
 * receiver a forked child of that, each on its own ring; they meet over
 * pipes (ready, go, stop with the count sent, the receiver's report, the
 * pair's result to main). The sender's CPU is measured over its sending
 * window, the receiver's from go until it holds every byte sent, so both
 * divide by the same frame count; frames/s is all pairs' frames over the
 * longest window. --size-jitter J sends sizes frame_bytes .. frame_bytes + J
 * by turns on each connection, as tether's frames vary with their seq and
 * id (the receiving kernel's choice between ACKing at once and ACKing when
 * the reader drains the socket looks at segment sizes; on loopback that
 * choice moves the ACK's cost between the two sides). Segments and ACKs per frame come from the
 * system-wide /proc/net/snmp and /proc/net/netstat deltas over that window
 * (other traffic on the box adds to them). One JSON line on stdout.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define BUF_ENTRIES 4096
#define BUF_SIZE 1024
#define BGID 3
#define UD_CTL UINT64_MAX
#define MAX_PAIRS 64 /* the receiver's read of the stop message */

struct opts {
    long conns;
    double seconds;
    int frame_bytes;
    int size_jitter; /* frame sizes frame_bytes + 0..size_jitter, by turns */
    int batch;
    int sender_cpu, receiver_cpu; /* -1: not pinned */
    int pairs;                    /* sender/receiver pairs, each with conns/pairs connections */
    int rx_wait_nr;               /* completions the receiver sleeps for (or RX_TICK_NS) */
};

/*
 * The receiver sleeps until rx_wait_nr reads completed or RX_TICK_NS passed,
 * as tether-load does while it only receives (its batch_wait): with
 * IORING_SETUP_DEFER_TASKRUN the kernel then queues the reads' task work
 * without waking the receiver per frame, which spares both sides a wake-up
 * a frame. --rx-wait-nr 1 wakes it for every read (a client per phone is
 * closer to that, but on another machine).
 */
#define RX_TICK_NS 10000000ll

/* What the receiver sends back once it holds every byte sent. */
struct rx_report {
    int err; /* 0, or the negative errno of the call that failed */
    uint64_t bytes;
    uint64_t rearms; /* multishot recvs re-armed (buffer ring ran dry) */
    uint64_t cqes;
    double cpu_user_s, cpu_sys_s;
};

/* What one sender/receiver pair reports to main once its window is over. */
struct pair_result {
    int err;
    uint64_t frames, bytes, partial, submits;
    double secs, su, ss; /* the sender's window and CPU over it */
    struct rx_report rx;
};

/* Kernel TCP counters summed over the box (see the opening comment). */
struct tcp_counters {
    uint64_t out_segs, retrans, data_sent, hp_acks, pure_acks, delayed_acks;
};

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void cpu_s(double *user, double *sys)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    *user = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6;
    *sys = (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static int pin(int cpu)
{
    if (cpu < 0)
        return 0;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(0, sizeof set, &set) == 0 ? 0 : -errno;
}

/* Value of column name in the "<prefix>:" header/value line pair of path. */
static uint64_t proc_counter(const char *path, const char *prefix, const char *name)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    char head[4096], vals[4096];
    uint64_t out = 0;
    size_t plen = strlen(prefix);
    while (fgets(head, sizeof head, f) && fgets(vals, sizeof vals, f)) {
        if (strncmp(head, prefix, plen) != 0 || head[plen] != ':')
            continue;
        char *hs, *vs;
        char *h = strtok_r(head + plen + 1, " \n", &hs);
        char *v = strtok_r(vals + plen + 1, " \n", &vs);
        for (; h && v; h = strtok_r(NULL, " \n", &hs), v = strtok_r(NULL, " \n", &vs))
            if (strcmp(h, name) == 0)
                out = strtoull(v, NULL, 10);
        break;
    }
    fclose(f);
    return out;
}

static void tcp_read(struct tcp_counters *c)
{
    c->out_segs = proc_counter("/proc/net/snmp", "Tcp", "OutSegs");
    c->retrans = proc_counter("/proc/net/snmp", "Tcp", "RetransSegs");
    c->data_sent = proc_counter("/proc/net/netstat", "TcpExt", "TCPOrigDataSent");
    c->hp_acks = proc_counter("/proc/net/netstat", "TcpExt", "TCPHPAcks");
    c->pure_acks = proc_counter("/proc/net/netstat", "TcpExt", "TCPPureAcks");
    c->delayed_acks = proc_counter("/proc/net/netstat", "TcpExt", "DelayedACKs");
}

static int ring_init(struct io_uring *ring, unsigned entries)
{
    struct io_uring_params p = {0};
    p.flags = IORING_SETUP_CQSIZE | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
    p.cq_entries = 4 * entries;
    int r = io_uring_queue_init_params(entries, ring, &p);
    if (r < 0) { /* kernels before 6.1 lack the last two flags */
        memset(&p, 0, sizeof p);
        p.flags = IORING_SETUP_CQSIZE;
        p.cq_entries = 4 * entries;
        r = io_uring_queue_init_params(entries, ring, &p);
    }
    return r;
}

static int raise_nofile(long need)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return -errno;
    if (rl.rlim_cur >= (rlim_t)need)
        return 0;
    rl.rlim_cur = (rlim_t)need;
    if (rl.rlim_max < (rlim_t)need)
        rl.rlim_max = (rlim_t)need; /* root only; others get EPERM and a clear error */
    return setrlimit(RLIMIT_NOFILE, &rl) == 0 ? 0 : -errno;
}

/* All of n bytes through a pipe between the processes, or -EPIPE. */
static int pipe_all(int fd, void *p, size_t n, int out)
{
    char *c = p;
    while (n) {
        ssize_t k = out ? write(fd, c, n) : read(fd, c, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return -EPIPE;
        c += k, n -= (size_t)k;
    }
    return 0;
}

static int write_all(int fd, const void *p, size_t n)
{
    return pipe_all(fd, (void *)p, n, 1);
}

static int read_all(int fd, void *p, size_t n)
{
    return pipe_all(fd, p, n, 0);
}

/* ---- receiver (child) ------------------------------------------------ */

struct rx {
    struct io_uring ring;
    struct io_uring_buf_ring *br;
    char *bufs;
    int *fds;
    long n;
    uint64_t stop_msg; /* bytes sent, from the sender */
    uint64_t target;   /* bytes to wait for once stop_msg arrived; 0 before */
    struct rx_report rep;
};

static int rx_bufring(struct rx *x)
{
    size_t sz = BUF_ENTRIES * sizeof(struct io_uring_buf);
    void *mem = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    x->bufs = malloc((size_t)BUF_ENTRIES * BUF_SIZE);
    if (mem == MAP_FAILED || !x->bufs)
        return -ENOMEM;
    x->br = mem;
    struct io_uring_buf_reg reg = {
        .ring_addr = (unsigned long)mem, .ring_entries = BUF_ENTRIES, .bgid = BGID};
    int r = io_uring_register_buf_ring(&x->ring, &reg, 0);
    if (r < 0)
        return r;
    io_uring_buf_ring_init(x->br);
    int mask = io_uring_buf_ring_mask(BUF_ENTRIES);
    for (int i = 0; i < BUF_ENTRIES; i++)
        io_uring_buf_ring_add(x->br, x->bufs + (size_t)i * BUF_SIZE, BUF_SIZE, (unsigned short)i,
                              mask, i);
    io_uring_buf_ring_advance(x->br, BUF_ENTRIES);
    return 0;
}

static struct io_uring_sqe *rx_sqe(struct rx *x)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&x->ring);
    while (!sqe) {
        io_uring_submit(&x->ring);
        sqe = io_uring_get_sqe(&x->ring);
    }
    return sqe;
}

static void rx_arm(struct rx *x, long i)
{
    struct io_uring_sqe *sqe = rx_sqe(x);
    io_uring_prep_recv_multishot(sqe, x->fds[i], NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = BGID;
    io_uring_sqe_set_data64(sqe, (uint64_t)i);
}

static void rx_arm_ctl(struct rx *x, int ctl)
{
    struct io_uring_sqe *sqe = rx_sqe(x);
    io_uring_prep_read(sqe, ctl, &x->stop_msg, sizeof x->stop_msg, 0);
    io_uring_sqe_set_data64(sqe, UD_CTL);
}

/* One completion; returns a negative errno on a failure that ends the run. */
static int rx_cqe(struct rx *x, struct io_uring_cqe *cqe)
{
    uint64_t ud = io_uring_cqe_get_data64(cqe);
    x->rep.cqes++;
    if (ud == UD_CTL) {
        if (cqe->res != (int)sizeof x->stop_msg)
            return cqe->res < 0 ? cqe->res : -EPIPE;
        x->target = x->stop_msg; /* bytes sent */
        return 0;
    }
    if (cqe->res == -ENOBUFS) { /* the ring ran dry; this recv ended: arm it again */
        x->rep.rearms++;
        rx_arm(x, (long)ud);
        return 0;
    }
    if (cqe->res <= 0)
        return cqe->res < 0 ? cqe->res : -ECONNRESET;
    x->rep.bytes += (uint64_t)cqe->res;
    unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
    io_uring_buf_ring_add(x->br, x->bufs + (size_t)bid * BUF_SIZE, BUF_SIZE, (unsigned short)bid,
                          io_uring_buf_ring_mask(BUF_ENTRIES), 0);
    io_uring_buf_ring_advance(x->br, 1);
    if (!(cqe->flags & IORING_CQE_F_MORE)) {
        x->rep.rearms++;
        rx_arm(x, (long)ud);
    }
    return 0;
}

static int rx_connect_all(struct rx *x, uint16_t port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (long i = 0; i < x->n; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0)
            return -errno;
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
            int e = -errno;
            close(fd);
            return e;
        }
        x->fds[i] = fd;
    }
    return 0;
}

static int rx_loop(struct rx *x, int wait_nr)
{
    while (!x->target || x->rep.bytes < x->target) {
        struct __kernel_timespec ts = {.tv_sec = 0, .tv_nsec = RX_TICK_NS};
        struct io_uring_cqe *first;
        int r = io_uring_submit_and_wait_timeout(&x->ring, &first, (unsigned)wait_nr, &ts, NULL);
        if (r < 0 && r != -EINTR && r != -ETIME)
            return r;
        struct io_uring_cqe *cqe;
        unsigned head, seen = 0;
        int err = 0;
        io_uring_for_each_cqe(&x->ring, head, cqe)
        {
            seen++;
            if (!err)
                err = rx_cqe(x, cqe);
        }
        io_uring_cq_advance(&x->ring, seen);
        if (err)
            return err;
    }
    return 0;
}

/* The child: connect, arm, report ready, count until every byte sent is in. */
static int receiver(const struct opts *o, uint16_t port, int ready_fd, int ctl_fd, int rep_fd)
{
    struct rx x = {.n = o->conns};
    x.fds = calloc((size_t)o->conns, sizeof *x.fds);
    int r = !x.fds ? -ENOMEM : pin(o->receiver_cpu);
    if (!r)
        r = ring_init(&x.ring, 4096);
    if (!r)
        r = rx_bufring(&x);
    if (!r)
        r = rx_connect_all(&x, port);
    if (!r) {
        for (long i = 0; i < x.n; i++)
            rx_arm(&x, i);
        io_uring_submit(&x.ring);
        r = write_all(ready_fd, "r", 1);
    }
    char go;
    if (!r)
        r = read_all(ctl_fd, &go, 1);
    double u0, s0, u1, s1;
    cpu_s(&u0, &s0);
    if (!r) {
        rx_arm_ctl(&x, ctl_fd);
        r = rx_loop(&x, o->rx_wait_nr);
    }
    cpu_s(&u1, &s1);
    x.rep.err = r;
    x.rep.cpu_user_s = u1 - u0, x.rep.cpu_sys_s = s1 - s0;
    write_all(rep_fd, &x.rep, sizeof x.rep);
    return r ? 1 : 0;
}

/* ---- sender (parent) ------------------------------------------------- */

struct tx {
    struct io_uring ring;
    int *fds;
    uint32_t *off;               /* bytes of the current frame already sent, per connection */
    uint8_t *seq;                /* frames started per connection (mod 256): picks its size */
    uint16_t *size;              /* the current frame's size index, per connection */
    const unsigned char **frame; /* one frame per size */
    int base, sizes;
    uint64_t bytes;
    long n, rr;
    uint64_t frames, partial, submits;
};

static int tx_listen(uint16_t *port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -errno;
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sa;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, 4096) != 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &len) != 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    *port = ntohs(sa.sin_port);
    return fd;
}

static int tx_accept_all(struct tx *t, int lfd)
{
    int one = 1;
    struct timeval tv = {.tv_sec = 30}; /* a receiver that failed to connect ends the wait */
    setsockopt(lfd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    for (long i = 0; i < t->n; i++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            return -errno;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* as tether's worker */
        t->fds[i] = fd;
    }
    return 0;
}

/* The frame every connection gets: a server text frame, 16-bit length form
 * past 125 payload bytes, payload a JSON-looking notification padded with x. */
static void frame_build(unsigned char *f, int total)
{
    int hl = total - 2 > 125 ? 4 : 2;
    int plen = total - hl;
    f[0] = 0x81;
    if (hl == 2) {
        f[1] = (unsigned char)plen;
    } else {
        f[1] = 126;
        f[2] = (unsigned char)(plen >> 8), f[3] = (unsigned char)plen;
    }
    static const char head[] = "{\"type\":\"bench.ceiling\",\"data\":\"";
    memset(f + hl, 'x', (size_t)plen);
    if ((size_t)plen >= sizeof head + 1) {
        memcpy(f + hl, head, sizeof head - 1);
        f[total - 2] = '"', f[total - 1] = '}';
    }
}

/* Queue a send of connection i's next frame (or the rest of its current one). */
static void tx_prep(struct tx *t, long i)
{
    if (!t->off[i])
        t->size[i] = (uint16_t)(t->seq[i]++ % t->sizes);
    int flen = t->base + t->size[i];
    struct io_uring_sqe *sqe = io_uring_get_sqe(&t->ring); /* batch <= SQ entries */
    io_uring_prep_send(sqe, t->fds[i], t->frame[t->size[i]] + t->off[i], (size_t)flen - t->off[i],
                       MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, (uint64_t)i);
}

/* Submit the queued sends in one syscall and reap all of them. */
static int tx_reap(struct tx *t, int queued)
{
    int r = io_uring_submit_and_wait(&t->ring, (unsigned)queued);
    if (r < 0)
        return r;
    t->submits++;
    for (int got = 0; got < queued; got++) {
        struct io_uring_cqe *cqe;
        r = io_uring_wait_cqe(&t->ring, &cqe);
        if (r < 0)
            return r;
        long i = (long)io_uring_cqe_get_data64(cqe);
        int res = cqe->res;
        io_uring_cqe_seen(&t->ring, cqe);
        if (res <= 0)
            return res < 0 ? res : -ECONNRESET;
        t->bytes += (uint64_t)res;
        t->off[i] += (uint32_t)res;
        if (t->off[i] < (uint32_t)(t->base + t->size[i])) {
            t->partial++;
            continue;
        }
        t->off[i] = 0;
        t->frames++;
    }
    return 0;
}

/* One batch: sends to consecutive connections (never one twice: batch <= n). */
static int tx_batch(struct tx *t, int batch)
{
    for (int k = 0; k < batch; k++) {
        tx_prep(t, t->rr);
        t->rr = t->rr + 1 == t->n ? 0 : t->rr + 1;
    }
    return tx_reap(t, batch);
}

/* After the window: the rest of every partly sent frame, nothing new. */
static int tx_finish(struct tx *t, int batch)
{
    for (int any = 1; any;) {
        int queued = 0, r;
        any = 0;
        for (long i = 0; i < t->n; i++) {
            if (!t->off[i])
                continue;
            any = 1;
            tx_prep(t, i);
            if (++queued == batch) {
                if ((r = tx_reap(t, queued)))
                    return r;
                queued = 0;
            }
        }
        if (queued && (r = tx_reap(t, queued)))
            return r;
    }
    return 0;
}

/* Send until the window closes, then complete every partly sent frame. */
static int tx_run(struct tx *t, const struct opts *o)
{
    double end = mono_s() + o->seconds;
    int r = 0;
    while (!r && mono_s() < end)
        r = tx_batch(t, o->batch);
    return r ? r : tx_finish(t, o->batch);
}

static void usage(void)
{
    fprintf(stderr, "usage: tether-fanout [--connections N] [--seconds S] [--frame-bytes B]\n"
                    "                     [--batch K] [--sender-cpu C] [--receiver-cpu C]\n"
                    "                     [--rx-wait-nr N] [--pairs P] [--size-jitter J]\n");
    exit(2);
}

static void parse(int argc, char **argv, struct opts *o)
{
    *o = (struct opts){.conns = 10000,
                       .seconds = 5,
                       .frame_bytes = 170,
                       .batch = 500,
                       .sender_cpu = -1,
                       .receiver_cpu = -1,
                       .pairs = 1,
                       .rx_wait_nr = 1024};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v)
            usage();
        if (!strcmp(a, "--connections"))
            o->conns = strtol(v, NULL, 10);
        else if (!strcmp(a, "--seconds"))
            o->seconds = strtod(v, NULL);
        else if (!strcmp(a, "--frame-bytes"))
            o->frame_bytes = atoi(v);
        else if (!strcmp(a, "--batch"))
            o->batch = atoi(v);
        else if (!strcmp(a, "--sender-cpu"))
            o->sender_cpu = atoi(v);
        else if (!strcmp(a, "--receiver-cpu"))
            o->receiver_cpu = atoi(v);
        else if (!strcmp(a, "--size-jitter"))
            o->size_jitter = atoi(v);
        else if (!strcmp(a, "--pairs"))
            o->pairs = atoi(v);
        else if (!strcmp(a, "--rx-wait-nr"))
            o->rx_wait_nr = atoi(v);
        else
            usage();
        i++;
    }
    if (o->conns < 1 || o->conns > 1000000 || o->seconds <= 0 || o->frame_bytes < 2 ||
        o->size_jitter < 0 || o->size_jitter > 64 || o->frame_bytes + o->size_jitter > 65535 ||
        o->batch < 1 || o->batch > 4096 || o->pairs < 1 || o->pairs > MAX_PAIRS ||
        o->batch > o->conns / o->pairs || o->rx_wait_nr < 1 || o->rx_wait_nr > BUF_ENTRIES / 2) {
        fprintf(stderr,
                "tether-fanout: need 1 <= --pairs <= %d, 1 <= --batch <= min(4096, "
                "--connections / --pairs), 2 <= --frame-bytes <= 65535, --seconds > 0, "
                "1 <= --rx-wait-nr <= %d, 0 <= --size-jitter <= 64\n",
                MAX_PAIRS, BUF_ENTRIES / 2);
        exit(2);
    }
}

static void report(const struct opts *o, const struct pair_result *a, double secs,
                   const struct tcp_counters *c0, const struct tcp_counters *c1)
{
    double f = a->frames ? (double)a->frames : 1;
    uint64_t segs = c1->out_segs - c0->out_segs, data = c1->data_sent - c0->data_sent;
    uint64_t retr = c1->retrans - c0->retrans;
    const struct rx_report *rx = &a->rx;
    printf("{\"connections\":%ld,\"pairs\":%d,\"frame_bytes\":%d,\"size_jitter\":%d,\"batch\":%d,"
           "\"rx_wait_nr\":%d,"
           "\"seconds\":%.3f,\"frames\":%llu,\"frames_per_s\":%.0f,\"bytes_sent\":%llu,\"bytes_"
           "received\":%llu,"
           "\"sender_us_per_frame\":%.3f,\"sender_user_us\":%.3f,\"sender_sys_us\":%.3f,"
           "\"receiver_us_per_frame\":%.3f,\"receiver_user_us\":%.3f,\"receiver_sys_us\":%.3f,"
           "\"frames_per_submit\":%.1f,\"partial_sends\":%llu,\"receiver_cqes_per_frame\":%.3f,"
           "\"receiver_rearms\":%llu,\"data_segments_per_frame\":%.3f,"
           "\"pure_acks_sent_per_frame\":%.3f,\"hp_acks_per_frame\":%.3f,"
           "\"pure_acks_rcvd_per_frame\":%.3f,\"delayed_acks_per_frame\":%.3f,"
           "\"retrans_per_frame\":%.4f}\n",
           o->conns, o->pairs, o->frame_bytes, o->size_jitter, o->batch, o->rx_wait_nr, secs,
           (unsigned long long)a->frames, (double)a->frames / secs, (unsigned long long)a->bytes,
           (unsigned long long)rx->bytes, (a->su + a->ss) * 1e6 / f, a->su * 1e6 / f,
           a->ss * 1e6 / f, (rx->cpu_user_s + rx->cpu_sys_s) * 1e6 / f, rx->cpu_user_s * 1e6 / f,
           rx->cpu_sys_s * 1e6 / f, a->submits ? (double)a->frames / (double)a->submits : 0,
           (unsigned long long)a->partial, (double)rx->cqes / f, (unsigned long long)rx->rearms,
           (double)data / f, (double)(segs - data - retr) / f,
           (double)(c1->hp_acks - c0->hp_acks) / f, (double)(c1->pure_acks - c0->pure_acks) / f,
           (double)(c1->delayed_acks - c0->delayed_acks) / f, (double)retr / f);
}

static int fail(const char *call, int err)
{
    fprintf(stderr, "tether-fanout: %s: %s\n", call, strerror(-err));
    return err;
}

/* Set up one sender with its conns connections and its receiver (forked). */
static int pair_setup(const struct opts *o, long conns, struct tx *t, pid_t *rx_pid, int *ctl_w,
                      int *rep_r)
{
    uint16_t port = 0;
    int lfd = tx_listen(&port);
    if (lfd < 0)
        return fail("listen on 127.0.0.1", lfd);
    int ready[2], ctl[2], rep[2];
    if (pipe(ready) || pipe(ctl) || pipe(rep))
        return fail("pipe", -errno);
    struct opts mine = *o;
    mine.conns = conns;
    pid_t pid = fork();
    if (pid < 0)
        return fail("fork", -errno);
    if (pid == 0) {
        close(lfd), close(ready[0]), close(ctl[1]), close(rep[0]);
        _exit(receiver(&mine, port, ready[1], ctl[0], rep[1]) ? 1 : 0);
    }
    close(ready[1]), close(ctl[0]), close(rep[1]);
    *rx_pid = pid, *ctl_w = ctl[1], *rep_r = rep[0];
    t->n = conns;
    t->fds = calloc((size_t)conns, sizeof *t->fds);
    t->off = calloc((size_t)conns, sizeof *t->off);
    t->seq = calloc((size_t)conns, sizeof *t->seq);
    t->size = calloc((size_t)conns, sizeof *t->size);
    t->base = o->frame_bytes, t->sizes = o->size_jitter + 1;
    t->frame = calloc((size_t)t->sizes, sizeof *t->frame);
    int r;
    if (!t->fds || !t->off || !t->seq || !t->size || !t->frame)
        return fail("calloc", -ENOMEM);
    for (int k = 0; k < t->sizes; k++) {
        unsigned char *f = malloc((size_t)(t->base + k));
        if (!f)
            return fail("malloc", -ENOMEM);
        frame_build(f, t->base + k);
        t->frame[k] = f;
    }
    if ((r = pin(o->sender_cpu)) || (r = ring_init(&t->ring, 4096)))
        return fail("sched_setaffinity / io_uring_queue_init", r);
    if ((r = tx_accept_all(t, lfd)))
        return fail("accept4", r);
    close(lfd);
    char c;
    if ((r = read_all(ready[0], &c, 1)))
        return fail("receiver set-up (see its error above)", r);
    close(ready[0]);
    return 0;
}

/*
 * One pair (a forked process of main's): set up, say ready on ready_fd,
 * wait for go on go_fd, send for the window, hand the receiver the count,
 * take its report and put the pair's result on res_fd.
 */
static int pair_run(const struct opts *o, long conns, int ready_fd, int go_fd, int res_fd)
{
    struct pair_result res = {0};
    struct tx t = {0};
    pid_t rx_pid = -1;
    int ctl = -1, rep = -1;
    int r = pair_setup(o, conns, &t, &rx_pid, &ctl, &rep);
    write_all(ready_fd, r ? "e" : "r", 1);
    char go = 0;
    if (!r && !(r = read_all(go_fd, &go, 1)) && go != 'g')
        r = -ECANCELED;
    double u0, s0, u1, s1, t0 = mono_s(), t1;
    cpu_s(&u0, &s0);
    if (!r && (r = write_all(ctl, "g", 1)))
        fail("write go", r);
    if (!r && (r = tx_run(&t, o)))
        fail("io_uring send", r);
    t1 = mono_s();
    cpu_s(&u1, &s1);
    if (!r && (r = write_all(ctl, &t.bytes, sizeof t.bytes)))
        fail("write stop", r);
    if (!r && (r = read_all(rep, &res.rx, sizeof res.rx)))
        fail("read receiver report", r);
    if (!r && (r = res.rx.err))
        fail("receiver", r);
    if (rx_pid > 0) {
        if (r)
            kill(rx_pid, SIGKILL);
        waitpid(rx_pid, NULL, 0);
    }
    res.err = r;
    res.frames = t.frames, res.bytes = t.bytes, res.partial = t.partial, res.submits = t.submits;
    res.secs = t1 - t0, res.su = u1 - u0, res.ss = s1 - s0;
    write_all(res_fd, &res, sizeof res);
    return r ? 1 : 0;
}

static void add_result(struct pair_result *a, const struct pair_result *p)
{
    a->frames += p->frames, a->bytes += p->bytes, a->partial += p->partial,
        a->submits += p->submits;
    a->su += p->su, a->ss += p->ss;
    a->secs = p->secs > a->secs ? p->secs : a->secs;
    a->rx.bytes += p->rx.bytes, a->rx.rearms += p->rx.rearms, a->rx.cqes += p->rx.cqes;
    a->rx.cpu_user_s += p->rx.cpu_user_s, a->rx.cpu_sys_s += p->rx.cpu_sys_s;
    if (!a->err)
        a->err = p->err;
}

int main(int argc, char **argv)
{
    struct opts o;
    parse(argc, argv, &o);
    signal(SIGPIPE, SIG_IGN);
    int r = raise_nofile(o.conns / o.pairs + 64);
    if (r)
        return fail("setrlimit(RLIMIT_NOFILE)", r) ? 1 : 1;
    int ready[2], go[2], res[2];
    if (pipe(ready) || pipe(go) || pipe(res))
        return fail("pipe", -errno) ? 1 : 1;
    pid_t pids[MAX_PAIRS];
    for (int k = 0; k < o.pairs; k++) {
        long conns = o.conns / o.pairs + (k < o.conns % o.pairs);
        if ((pids[k] = fork()) < 0)
            return fail("fork", -errno) ? 1 : 1;
        if (pids[k] == 0) {
            close(ready[0]), close(go[1]), close(res[0]);
            _exit(pair_run(&o, conns, ready[1], go[0], res[1]));
        }
    }
    close(ready[1]), close(go[0]), close(res[1]);
    int ok = 1;
    for (int k = 0; k < o.pairs; k++) {
        char c = 0;
        ok &= read_all(ready[0], &c, 1) == 0 && c == 'r';
    }
    struct tcp_counters c0, c1;
    tcp_read(&c0);
    for (int k = 0; k < o.pairs; k++)
        write_all(go[1], ok ? "g" : "x", 1);
    struct pair_result all = {0}, one;
    for (int k = 0; k < o.pairs; k++) {
        if (read_all(res[0], &one, sizeof one) != 0)
            one = (struct pair_result){.err = -EPIPE};
        add_result(&all, &one);
    }
    tcp_read(&c1);
    for (int k = 0; k < o.pairs; k++)
        waitpid(pids[k], NULL, 0);
    if (!ok || all.err) {
        fprintf(stderr, "tether-fanout: a pair failed (see above)\n");
        return 1;
    }
    report(&o, &all, all.secs, &c0, &c1);
    return all.rx.bytes == all.bytes ? 0 : 1;
}
