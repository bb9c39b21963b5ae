/*
 * One tether-load process: a single io_uring loop that opens its share of
 * the WebSocket clients at a paced rate, pings them (evenly spread over the
 * interval, or as fast as possible with one ping outstanding per connection),
 * posts notifications to the backend API over keep-alive connections and
 * times both kinds of answer. Received data comes through one multishot
 * recvmsg per socket over a provided-buffer ring (registered by hand: liburing
 * 2.3 has no io_uring_setup_buf_ring), each read carrying the kernel's
 * receive timestamp (SO_TIMESTAMPNS), so a pong or a notification is timed
 * from when it reached this host, not from when this process got round to
 * it. That is what lets an interval run sleep between its pacing ticks
 * instead of waking for every pong (see next_wake): at a million clients the
 * load generator shares two cores with the server, and a wake-up per pong
 * was a large part of its cost. Nothing blocks but the ring wait.
 *
 * Notifications go only to users of this process, so the send timestamp
 * (CLOCK_MONOTONIC, carried as data.t_ns) and the arrival time are read in
 * the same process, and "lost" is counted here without cross-process state.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <liburing.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "shm/rt/stage.h"
#include "tools/load/load.h"

#include <openssl/err.h>
#include <openssl/ssl.h>

#define BUF_ENTRIES 4096
#define BUF_SIZE 2048 /* a recvmsg header and one timestamp cmsg, then the bytes */
#define BGID 7
#define MAX_INFLIGHT 256 /* handshakes under way at once */
#define HS_MAX 4096

/*
 * user_data: op in the top byte, the connection's generation (24 bits: a
 * --resume client reconnects on the same entry, and a completion of its
 * previous socket must not act on the new one), connection or API index below.
 */
enum op {
    OP_CONNECT = 1,
    OP_HS_SEND,
    OP_RECV,
    OP_PING_SEND,
    OP_CTRL_SEND,
    OP_TLS_SEND, /* wss://: ciphertext of one connection (its tx buffer) */
    OP_API_CONNECT,
    OP_API_SEND,
    OP_API_RECV
};
static inline uint64_t ud_pack(enum op op, uint32_t idx)
{
    return ((uint64_t)op << 56) | idx;
}
static inline uint64_t ud_pack_gen(enum op op, uint32_t idx, uint32_t gen)
{
    return ud_pack(op, idx) | ((uint64_t)(gen & 0xffffffu) << 32);
}
static inline enum op ud_op(uint64_t ud)
{
    return (enum op)(ud >> 56);
}
static inline uint32_t ud_idx(uint64_t ud)
{
    return (uint32_t)ud;
}
static inline uint32_t ud_gen(uint64_t ud)
{
    return (uint32_t)(ud >> 32) & 0xffffffu;
}

#define RESUME_MAX_ATTEMPTS 20 /* a notify that got no answer, or 503, is re-sent (same id) */

enum cstate { CS_NEW, CS_CONNECTING, CS_HANDSHAKE, CS_OPEN, CS_DEAD };

struct conn {
    int fd;
    uint8_t state;
    uint8_t ping_out;  /* a ping is waiting for its pong */
    uint8_t ctrl_busy; /* ctrl (handshake or pong reply) buffer in flight */
    uint32_t plen, pcap;
    char *partial; /* bytes of an incomplete response or frame */
    char *ctrl;    /* handshake request, later a pong reply */
    uint64_t ping_ns;
    uint32_t gen;          /* bumped by every connect of this entry */
    uint64_t reconnect_ns; /* --resume: connect again at this time (0 = not due) */
    struct trk_user tu;    /* --resume: the user's last seq and epoch */
    SSL *ssl;              /* wss:// only: the client side over two memory BIOs */
    char *tx;              /* wss://: ciphertext handed to the kernel, freed on completion */
    uint32_t tx_len, tx_off;
    uint32_t tx_gen; /* the connect (gen) tx was sent on: --resume may have reconnected since */
};

enum astate { AS_DOWN, AS_CONNECTING, AS_IDLE, AS_BUSY };

#define API_MAX_ATTEMPTS 8 /* a request that never reached the server: sent again this often */
#define API_RETRY_NS 100000000ull     /* first retry after 0.1 s, doubling up to 3.2 s */
#define API_RECONNECT_NS 100000000ull /* a failed connection is reopened after 0.1 s */
/* The notifier closes keep-alive connections idle for 60 s (TH_API_IDLE_S): replace ours sooner. */
#define API_IDLE_NS (20ull * 1000000000ull)

struct api_conn {
    int fd;
    int state;
    int req_len;
    int resp_len;
    uint64_t down_ns; /* when it failed (0: reopen at once) */
    uint64_t last_ns; /* last answer (or connect): idle since */
    uint64_t n;       /* notification number of the request in req */
    int attempts;     /* times it was sent */
    int tries;        /* connection failures while it was owed */
    int pending;      /* req must be (re)sent: no answer came, or 503 (--resume) */
    uint64_t retry_ns;
    char req[640];
    char resp[2048];
    /* --api https://: the client over two memory BIOs; the recv takes ciphertext into rx,
     * tx is the one send in flight (tx_fd: the socket it went to; a reconnect drops the rest) */
    SSL *ssl;
    int tx_busy, tx_fd;
    uint32_t tx_len, tx_off;
    char rx[4096], tx[4096];
};

enum phase { PH_CONNECT, PH_RUN, PH_DRAIN, PH_DONE };

/*
 * Without --resume, every notification n of this process: sent, answered
 * 200 (delivered), received (a second arrival is a duplicate). lost = 200
 * and never received; unsettled counts those still awaited.
 */
enum { NT_SENT = 1, NT_DELIVERED = 2, NT_RECEIVED = 4, NT_ANSWERED = 8 };
struct notes {
    uint8_t *st;
    size_t cap;
    uint64_t unsettled, dup;
};

static int notes_sent(struct notes *t, uint64_t n)
{
    if (n >= t->cap) {
        size_t nc = t->cap ? t->cap * 2 : 65536;
        while (nc <= n)
            nc *= 2;
        uint8_t *p = realloc(t->st, nc);
        if (!p)
            return -ENOMEM;
        memset(p + t->cap, 0, nc - t->cap);
        t->st = p;
        t->cap = nc;
    }
    t->st[n] = NT_SENT;
    return 0;
}

/* Any answer (200, 404, 503, ...) to notification n. */
static void notes_answered(struct notes *t, uint64_t n)
{
    if (n < t->cap)
        t->st[n] |= NT_ANSWERED;
}

/* Answered (whatever the status) and never received: 200s lost, 503s and 404s not delivered. */
static uint64_t notes_undelivered(const struct notes *t)
{
    uint64_t k = 0;
    for (size_t i = 0; i < t->cap; i++)
        k += (t->st[i] & (NT_ANSWERED | NT_RECEIVED)) == NT_ANSWERED;
    return k;
}

static void notes_delivered(struct notes *t, uint64_t n)
{
    if (n >= t->cap || (t->st[n] & NT_DELIVERED))
        return;
    t->st[n] |= NT_DELIVERED;
    t->unsettled += !(t->st[n] & NT_RECEIVED);
}

/* Returns 0 for a notification of ours seen for the first time, -1 otherwise. */
static int notes_received(struct notes *t, uint64_t n)
{
    if (n >= t->cap || !(t->st[n] & NT_SENT))
        return -1;
    if (t->st[n] & NT_RECEIVED) {
        t->dup++;
        return -1;
    }
    t->st[n] |= NT_RECEIVED;
    t->unsettled -= !!(t->st[n] & NT_DELIVERED);
    return 0;
}

struct child {
    const struct load_opts *o;
    int id, report_fd;
    long first, count;
    struct io_uring ring;
    struct io_uring_buf_ring *br;
    char *bufs;
    struct conn *conns;
    struct api_conn *api;
    long next_conn, inflight;
    enum phase phase;
    uint64_t t0, run_t0, drain_t0, last_progress;
    uint64_t ping_sched, notify_sched;
    struct msghdr rmsg;   /* the multishot recvmsg's template: no name, one timestamp cmsg */
    uint64_t rx_ns;       /* monotonic arrival of the bytes being parsed (kernel stamp) */
    int64_t real_to_mono; /* CLOCK_MONOTONIC - CLOCK_REALTIME, read once per loop iteration */
    int batch_wait;       /* interval pings: wait for pacing ticks, not for each completion */
    unsigned api_rr;
    uint64_t rng;
    int saturate;
    double notify_rate;
    int hs_errors_shown;
    struct load_counts c;
    struct trk trk;     /* --resume bookkeeping */
    struct notes notes; /* the same without --resume */
    uint64_t next_n;    /* notifications numbered so far */
    uint64_t reconnect_scan_ns, drop_sched, lost_check_ns;
    struct lhist rtt, delivery;
    unsigned char ping_frame[21];
    SSL_CTX *tls;      /* wss:// */
    SSL_CTX *api_tls;  /* --api https:// */
    SSL_SESSION *sess; /* --tls-resume: offered on every handshake after the first */
    unsigned char plain[16384];
};

static volatile sig_atomic_t g_stop;
static void on_stop(int sig)
{
    (void)sig;
    g_stop = 1;
}

uint64_t load_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static struct io_uring_sqe *get_sqe(struct child *ch)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&ch->ring);
    while (!sqe) {
        io_uring_submit(&ch->ring);
        sqe = io_uring_get_sqe(&ch->ring);
    }
    return sqe;
}

static void user_name(const struct child *ch, long global, char *out, size_t cap)
{
    snprintf(out, cap, "%s-%ld", ch->o->user_prefix, global);
}

/* ---- set-up ---------------------------------------------------------- */

static int ring_init(struct child *ch)
{
    struct io_uring_params p = {0};
    p.flags = IORING_SETUP_CQSIZE | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
    p.cq_entries = 65536;
    int r = io_uring_queue_init_params(4096, &ch->ring, &p);
    if (r < 0) { /* kernels before 6.1 lack the last two flags */
        memset(&p, 0, sizeof p);
        p.flags = IORING_SETUP_CQSIZE;
        p.cq_entries = 65536;
        r = io_uring_queue_init_params(4096, &ch->ring, &p);
    }
    if (r < 0) {
        fprintf(stderr, "tether-load: io_uring_queue_init: %s\n", strerror(-r));
        return r;
    }
    return 0;
}

static int bufring_init(struct child *ch)
{
    size_t sz = BUF_ENTRIES * sizeof(struct io_uring_buf);
    void *mem = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ch->bufs = malloc((size_t)BUF_ENTRIES * BUF_SIZE);
    if (mem == MAP_FAILED || !ch->bufs)
        return -ENOMEM;
    ch->br = mem;
    struct io_uring_buf_reg reg = {
        .ring_addr = (unsigned long)mem, .ring_entries = BUF_ENTRIES, .bgid = BGID};
    int r = io_uring_register_buf_ring(&ch->ring, &reg, 0);
    if (r < 0) {
        fprintf(stderr, "tether-load: io_uring_register_buf_ring: %s\n", strerror(-r));
        return r;
    }
    io_uring_buf_ring_init(ch->br);
    int mask = io_uring_buf_ring_mask(BUF_ENTRIES);
    for (int i = 0; i < BUF_ENTRIES; i++)
        io_uring_buf_ring_add(ch->br, ch->bufs + (size_t)i * BUF_SIZE, BUF_SIZE, (unsigned short)i,
                              mask, i);
    io_uring_buf_ring_advance(ch->br, BUF_ENTRIES);
    return 0;
}

static void buf_recycle(struct child *ch, unsigned bid)
{
    io_uring_buf_ring_add(ch->br, ch->bufs + (size_t)bid * BUF_SIZE, BUF_SIZE, (unsigned short)bid,
                          io_uring_buf_ring_mask(BUF_ENTRIES), 0);
    io_uring_buf_ring_advance(ch->br, 1);
}

/* A masked text frame {"type":"ping"} with a fixed non-zero key, built once. */
static void build_ping(struct child *ch)
{
    static const char msg[] = "{\"type\":\"ping\"}";
    static const unsigned char key[4] = {0x37, 0xfa, 0x21, 0x3d};
    ch->ping_frame[0] = 0x81;
    ch->ping_frame[1] = 0x80 | (unsigned char)(sizeof msg - 1);
    memcpy(ch->ping_frame + 2, key, 4);
    for (size_t i = 0; i < sizeof msg - 1; i++)
        ch->ping_frame[6 + i] = (unsigned char)msg[i] ^ key[i % 4];
}

/* ---- connection life ------------------------------------------------- */

static uint64_t rnd(struct child *ch)
{
    ch->rng ^= ch->rng << 13;
    ch->rng ^= ch->rng >> 7;
    ch->rng ^= ch->rng << 17;
    return ch->rng;
}

static void conn_kill(struct child *ch, struct conn *c, int was_open)
{
    if (c->state == CS_DEAD)
        return;
    if (ch->o->resume) /* reconnect on every close: soon, a little later after a failed attempt */
        c->reconnect_ns =
            load_mono_ns() + (was_open ? 20 : 200) * 1000000ull + rnd(ch) % (100 * 1000000ull);
    if (was_open)
        ch->c.disconnects++;
    else
        ch->c.connect_errors++;
    if (c->state == CS_CONNECTING || c->state == CS_HANDSHAKE)
        ch->inflight--;
    if (c->ssl) { /* a quiet shutdown first, or libssl marks the session not resumable */
        SSL_set_quiet_shutdown(c->ssl, 1);
        SSL_shutdown(c->ssl);
        SSL_free(c->ssl);
        c->ssl = NULL;
        ERR_clear_error();
    }
    if (c->fd >= 0) {
        shutdown(c->fd, SHUT_RDWR); /* ends the multishot recv, which holds a file ref */
        close(c->fd);
    }
    c->fd = -1;
    c->state = CS_DEAD;
    c->ping_out = 0;
    free(c->partial);
    c->partial = NULL;
    c->plen = c->pcap = 0;
    if (!c->ctrl_busy) {
        free(c->ctrl);
        c->ctrl = NULL;
    }
}

static int bind_source(int fd, long global)
{
    long a = 2 + global / LOAD_PER_SOURCE;
    if (a > 254)
        return -ERANGE;
    int one = 1;
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl((127u << 24) | (unsigned)a);
    return bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 ? -errno : 0;
}

static void conn_start(struct child *ch, long i)
{
    struct conn *c = &ch->conns[i];
    if (!ch->c.connect_start_ns)
        ch->c.connect_start_ns = load_mono_ns();
    ch->inflight++;
    c->gen++;
    c->reconnect_ns = 0;
    c->state = CS_CONNECTING;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0 || (ch->o->spread_sources && bind_source(c->fd, ch->first + i) < 0)) {
        if (ch->hs_errors_shown++ < 3)
            fprintf(stderr, "tether-load: socket/bind for connection %ld: %s\n", ch->first + i,
                    strerror(errno));
        conn_kill(ch, c, 0);
        return;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(c->fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one); /* arrival times */
    struct io_uring_sqe *sqe = get_sqe(ch);
    io_uring_prep_connect(sqe, c->fd, (struct sockaddr *)&ch->o->ws_addr, sizeof ch->o->ws_addr);
    io_uring_sqe_set_data64(sqe, ud_pack_gen(OP_CONNECT, (uint32_t)i, c->gen));
}

static void arm_recv(struct child *ch, long i)
{
    struct io_uring_sqe *sqe = get_sqe(ch);
    io_uring_prep_recvmsg_multishot(sqe, ch->conns[i].fd, &ch->rmsg, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = BGID;
    io_uring_sqe_set_data64(sqe, ud_pack_gen(OP_RECV, (uint32_t)i, ch->conns[i].gen));
}

static void wire_send(struct child *ch, long i, const void *p, size_t n, enum op op);
static int tls_start(struct child *ch, long i);

/* The HTTP upgrade request (right after connect, or after the TLS handshake). */
static void send_upgrade(struct child *ch, long i)
{
    struct conn *c = &ch->conns[i];
    char user[96], token[600], rq[128] = "";
    user_name(ch, ch->first + i, user, sizeof user);
    c->ctrl = malloc(HS_MAX);
    if (!c->ctrl ||
        load_sign_token(user, ch->o->secret, ch->o->secret_len, token, sizeof token) < 0) {
        conn_kill(ch, c, 0);
        return;
    }
    if (ch->o->resume) { /* every connection resumes, the first one with since=0 */
        rq[0] = '&';
        trk_resume_query(&c->tu, rq + 1, sizeof rq - 1);
    }
    int n = snprintf(c->ctrl, HS_MAX,
                     "GET %s%ctoken=%s%s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n",
                     ch->o->ws_path, strchr(ch->o->ws_path, '?') ? '&' : '?', token, rq,
                     ch->o->ws_host);
    c->ctrl_busy = 1;
    wire_send(ch, i, c->ctrl, (size_t)n, OP_HS_SEND);
}

static void on_connected(struct child *ch, long i, int res)
{
    struct conn *c = &ch->conns[i];
    if (res < 0) {
        if (ch->hs_errors_shown++ < 3)
            fprintf(stderr, "tether-load: connect: %s\n", strerror(-res));
        conn_kill(ch, c, 0);
        return;
    }
    c->state = CS_HANDSHAKE;
    if (ch->tls) {
        if (tls_start(ch, i) < 0)
            conn_kill(ch, c, 0);
    } else {
        send_upgrade(ch, i);
    }
    if (c->state != CS_DEAD)
        arm_recv(ch, i);
}

static int partial_append(struct conn *c, const char *p, size_t n)
{
    if (c->plen + n > c->pcap) {
        uint32_t cap = c->pcap ? c->pcap : 512;
        while (cap < c->plen + n)
            cap *= 2;
        char *np = realloc(c->partial, cap);
        if (!np)
            return -ENOMEM;
        c->partial = np;
        c->pcap = cap;
    }
    memcpy(c->partial + c->plen, p, n);
    c->plen += (uint32_t)n;
    return 0;
}

static void send_ping(struct child *ch, long i, uint64_t now)
{
    struct conn *c = &ch->conns[i];
    c->ping_out = 1;
    c->ping_ns = now;
    ch->c.pings_sent++;
    wire_send(ch, i, ch->ping_frame, sizeof ch->ping_frame, OP_PING_SEND);
}

/* ---- inbound frames -------------------------------------------------- */

static void on_text(struct child *ch, long i, const char *p, size_t n)
{
    struct conn *c = &ch->conns[i];
    uint64_t now = ch->rx_ns; /* when the frame reached this host */
    const char *t = memmem(p, n, "\"t_ns\":", 7);
    if (ch->o->resume && !memmem(p, n, "\"pong\"", 6)) {
        uint64_t num;
        enum trk_frame r = trk_frame(&ch->trk, &c->tu, p, n, &num);
        if (r == TRK_NOTE_NEW) {
            ch->c.notifications_received++;
            ch->c.last_note_ns = now;
            if (t) {
                uint64_t sent = strtoull(t + 7, NULL, 10);
                lh_record(&ch->delivery, now > sent ? now - sent : 0);
            }
        } else if (r == TRK_OTHER) {
            ch->c.other_messages++;
        }
    } else if (t) {
        uint64_t sent = strtoull(t + 7, NULL, 10);
        const char *ln = memmem(p, n, "\"load_n\":", 9);
        if (!ln || notes_received(&ch->notes, strtoull(ln + 9, NULL, 10)) < 0) {
            ch->c.other_messages++; /* a duplicate, or not one of ours */
            return;
        }
        ch->c.notifications_received++;
        lh_record(&ch->delivery, now > sent ? now - sent : 0);
        TH_STAGE(sent, TH_ST_L_RX, now);
    } else if (memmem(p, n, "\"pong\"", 6)) {
        ch->c.pongs_received++;
        if (c->ping_out) {
            lh_record(&ch->rtt, now > c->ping_ns ? now - c->ping_ns : 0);
            c->ping_out = 0;
        }
        if (ch->saturate && ch->phase == PH_RUN)
            send_ping(ch, i, load_mono_ns());
    } else {
        ch->c.other_messages++;
    }
}

static void send_pong_reply(struct child *ch, long i, const unsigned char *payload, size_t n)
{
    struct conn *c = &ch->conns[i];
    if (c->ctrl_busy || n > 125)
        return; /* a reply is already in flight; the server will ping again */
    if (!c->ctrl && !(c->ctrl = malloc(6 + 125)))
        return;
    unsigned char *f = (unsigned char *)c->ctrl;
    f[0] = 0x8a;
    f[1] = 0x80 | (unsigned char)n;
    memset(f + 2, 0, 4); /* zero key: payload goes as is */
    memcpy(f + 6, payload, n);
    c->ctrl_busy = 1;
    wire_send(ch, i, f, 6 + n, OP_CTRL_SEND);
}

/* Parses whole server frames from p; returns bytes consumed or -1 to drop the connection. */
static long parse_frames(struct child *ch, long i, const unsigned char *p, size_t n)
{
    size_t off = 0;
    while (n - off >= 2) {
        const unsigned char *f = p + off;
        unsigned op = f[0] & 0x0f;
        uint64_t len = f[1] & 0x7f;
        size_t hdr = 2;
        if (f[1] & 0x80)
            return -1; /* servers never mask */
        if (len == 126) {
            if (n - off < 4)
                break;
            len = ((uint64_t)f[2] << 8) | f[3];
            hdr = 4;
        } else if (len == 127) {
            if (n - off < 10)
                break;
            len = 0;
            for (int k = 0; k < 8; k++)
                len = (len << 8) | f[2 + k];
            hdr = 10;
        }
        if (len > (1u << 24))
            return -1;
        if (n - off < hdr + len)
            break;
        const unsigned char *pl = f + hdr;
        if (op == 0x1 || op == 0x0)
            on_text(ch, i, (const char *)pl, (size_t)len);
        else if (op == 0x8)
            return -1;
        else if (op == 0x9)
            send_pong_reply(ch, i, pl, (size_t)len);
        off += hdr + (size_t)len;
    }
    return (long)off;
}

/* Frames may straddle recv buffers: keep the tail in c->partial. */
static int on_frame_bytes(struct child *ch, long i, const char *data, size_t n)
{
    struct conn *c = &ch->conns[i];
    const char *p = data;
    size_t len = n;
    if (c->plen) {
        if (partial_append(c, data, n) < 0)
            return -1;
        p = c->partial;
        len = c->plen;
    }
    long used = parse_frames(ch, i, (const unsigned char *)p, len);
    if (used < 0 || c->state != CS_OPEN)
        return -1;
    size_t rest = len - (size_t)used;
    if (rest && p == c->partial)
        memmove(c->partial, c->partial + used, rest);
    else if (rest && partial_append(c, p + used, rest) < 0)
        return -1;
    if (p == c->partial)
        c->plen = (uint32_t)rest;
    return 0;
}

static void show_bad_handshake(struct child *ch, const char *resp)
{
    if (ch->hs_errors_shown++ >= 3)
        return;
    const char *e = strstr(resp, "\r\n");
    fprintf(stderr, "tether-load: handshake refused: %.*s\n", e ? (int)(e - resp) : 60, resp);
}

static int on_handshake_bytes(struct child *ch, long i, const char *data, size_t n)
{
    struct conn *c = &ch->conns[i];
    if (partial_append(c, data, n) < 0 || partial_append(c, "", 1) < 0)
        return -1;
    c->plen--; /* keep a NUL after the bytes for strstr */
    char *end = strstr(c->partial, "\r\n\r\n");
    if (!end)
        return c->plen > HS_MAX ? -1 : 0;
    if (strncmp(c->partial, "HTTP/1.1 101", 12) != 0) {
        show_bad_handshake(ch, c->partial);
        return -1;
    }
    c->state = CS_OPEN;
    ch->inflight--;
    ch->c.connections_ok++;
    size_t hl = (size_t)(end + 4 - c->partial);
    size_t rest = c->plen - hl;
    char *tmp = c->partial;
    c->partial = NULL;
    c->plen = c->pcap = 0;
    int r = rest ? on_frame_bytes(ch, i, tmp + hl, rest) : 0;
    free(tmp);
    return r;
}

/* Bytes from the server (plaintext of a wss:// connection) for the HTTP or frame parser. */
static void plain_bytes(struct child *ch, long i, const char *p, size_t n)
{
    struct conn *c = &ch->conns[i];
    if (c->state == CS_HANDSHAKE) {
        if (on_handshake_bytes(ch, i, p, n) < 0)
            conn_kill(ch, c, 0);
    } else if (c->state == CS_OPEN) {
        if (on_frame_bytes(ch, i, p, n) < 0)
            conn_kill(ch, c, 1);
    }
}

static void tls_input(struct child *ch, long i, const char *p, size_t n);

/*
 * One read's buffer: the recvmsg header, the timestamp cmsg, the bytes.
 * Sets ch->rx_ns to the kernel's arrival time (the clock now when there is
 * none) and returns the bytes' length (0: the peer's EOF), -1 when malformed.
 */
static long rx_unpack(struct child *ch, char *buf, int res, char **data)
{
    struct io_uring_recvmsg_out *o = io_uring_recvmsg_validate(buf, res, &ch->rmsg);
    if (!o)
        return -1;
    ch->rx_ns = 0;
    for (struct cmsghdr *cm = io_uring_recvmsg_cmsg_firsthdr(o, &ch->rmsg); cm;
         cm = io_uring_recvmsg_cmsg_nexthdr(o, &ch->rmsg, cm)) {
        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_TIMESTAMPNS &&
            cm->cmsg_len >= CMSG_LEN(sizeof(struct timespec))) {
            struct timespec ts;
            memcpy(&ts, CMSG_DATA(cm), sizeof ts);
            int64_t real = (int64_t)ts.tv_sec * 1000000000ll + ts.tv_nsec;
            if (real > 0)
                ch->rx_ns = (uint64_t)(real + ch->real_to_mono);
        }
    }
    uint64_t now = load_mono_ns();
    if (!ch->rx_ns || ch->rx_ns > now)
        ch->rx_ns = now; /* no stamp (or a clock step): the latest it can be */
    *data = io_uring_recvmsg_payload(o, &ch->rmsg);
    return (long)io_uring_recvmsg_payload_length(o, res, &ch->rmsg);
}

static void on_recv(struct child *ch, long i, struct io_uring_cqe *cqe)
{
    struct conn *c = &ch->conns[i];
    int res = cqe->res;
    if (cqe->flags & IORING_CQE_F_BUFFER) {
        unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
        char *data = NULL;
        long n = res > 0 ? rx_unpack(ch, ch->bufs + (size_t)bid * BUF_SIZE, res, &data) : 0;
        if (n > 0 && c->ssl)
            tls_input(ch, i, data, (size_t)n);
        else if (n > 0)
            plain_bytes(ch, i, data, (size_t)n);
        buf_recycle(ch, bid);
        if (n <= 0 && res > 0)
            res = n < 0 ? -EBADMSG : 0; /* EOF (no bytes) or a malformed read: over */
        if (res <= 0 && c->state != CS_DEAD) {
            if (c->state == CS_HANDSHAKE && ch->hs_errors_shown++ < 3)
                fprintf(stderr, "tether-load: connection closed during the handshake: %s\n",
                        res ? strerror(-res) : "EOF");
            conn_kill(ch, c, c->state == CS_OPEN);
            return;
        }
    }
    if (c->state == CS_DEAD || (cqe->flags & IORING_CQE_F_MORE))
        return;
    if (res > 0 || res == -ENOBUFS) {
        arm_recv(ch, i);
        return;
    }
    if (c->state == CS_HANDSHAKE && ch->hs_errors_shown++ < 3)
        fprintf(stderr, "tether-load: connection closed during the handshake: %s\n",
                res ? strerror(-res) : "EOF");
    conn_kill(ch, c, c->state == CS_OPEN); /* EOF or error */
}

/* ---- backend API -----------------------------------------------------
 * A few keep-alive connections per process, each with one request at a
 * time. tether-load must lose nothing itself, so the API connections are
 * opened when the load starts (not before a long connect phase, during
 * which the notifier would close them idle after 60 s), a connection idle
 * for API_IDLE_NS is replaced before it is used, and a request that failed
 * on the connection before any byte of an answer came back (refused, reset,
 * closed by the server) is sent again on a new connection, a little later
 * each time, up to API_MAX_ATTEMPTS: counted as api_retries, and as
 * api_failed only when it never got an answer. tether's own answers (404,
 * 503) are counted apart from these.
 */

static void api_down(struct child *ch, int k);

static void api_connect(struct child *ch, int k)
{
    struct api_conn *a = &ch->api[k];
    a->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (a->fd < 0) {
        api_down(ch, k);
        return;
    }
    int one = 1;
    setsockopt(a->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    a->state = AS_CONNECTING;
    struct io_uring_sqe *sqe = get_sqe(ch);
    io_uring_prep_connect(sqe, a->fd, (struct sockaddr *)&ch->o->api_addr, sizeof ch->o->api_addr);
    io_uring_sqe_set_data64(sqe, ud_pack(OP_API_CONNECT, (uint32_t)k));
}

/* --resume: a 503 is sent again with the same id, a little later. */
static void api_retry_later(struct child *ch, struct api_conn *a, uint64_t delay_ns)
{
    if (!ch->o->resume || a->attempts >= RESUME_MAX_ATTEMPTS)
        return;
    a->pending = 1;
    a->retry_ns = load_mono_ns() + delay_ns;
}

/*
 * The connection failed (connect, send or receive). A request on it that
 * had no answer yet is owed again: certainly safe when no byte of the
 * answer came (the server did not act on it, or closed an idle connection
 * as this request left), and always with --resume (the id makes it
 * idempotent). Otherwise it is given up.
 */
static void api_down(struct child *ch, int k)
{
    struct api_conn *a = &ch->api[k];
    uint64_t now = load_mono_ns();
    if (a->state == AS_BUSY || a->pending) {
        int limit = ch->o->resume ? RESUME_MAX_ATTEMPTS : API_MAX_ATTEMPTS;
        if ((a->resp_len == 0 || ch->o->resume) && a->tries < limit) {
            a->pending = 1;
            a->retry_ns = now + (API_RETRY_NS << (a->tries < 5 ? a->tries : 5));
            ch->c.api_retries++;
            a->tries++;
        } else {
            a->pending = 0;
            ch->c.api_failed++;
        }
    }
    if (a->fd >= 0)
        close(a->fd);
    a->fd = -1;
    SSL_free(a->ssl);
    a->ssl = NULL;
    a->state = AS_DOWN;
    a->resp_len = 0;
    a->down_ns = now;
}

/* A keep-alive connection unused this long is replaced before its next request. */
static void api_refresh_idle(struct child *ch, int k, uint64_t now)
{
    struct api_conn *a = &ch->api[k];
    if (a->state == AS_IDLE && now - a->last_ns > API_IDLE_NS) {
        close(a->fd);
        a->fd = -1;
        SSL_free(a->ssl);
        a->ssl = NULL;
        a->state = AS_DOWN;
        a->down_ns = 0; /* not a failure: reconnect at once */
        ch->c.api_reconnects++;
    }
    if (a->state == AS_DOWN && now - a->down_ns > API_RECONNECT_NS &&
        (!a->pending || now >= a->retry_ns))
        api_connect(ch, k);
}

static void api_recv(struct child *ch, int k)
{
    struct api_conn *a = &ch->api[k];
    struct io_uring_sqe *sqe = get_sqe(ch);
    if (a->ssl)
        io_uring_prep_recv(sqe, a->fd, a->rx, sizeof a->rx, 0);
    else
        io_uring_prep_recv(sqe, a->fd, a->resp + a->resp_len,
                           sizeof a->resp - 1 - (size_t)a->resp_len, 0);
    io_uring_sqe_set_data64(sqe, ud_pack(OP_API_RECV, (uint32_t)k));
}

/*
 * Picks a random open connection of this process (a few tries), or -1.
 * With --resume any user will do: one between two connections gets the
 * notification from the mailbox when it resumes.
 */
static long pick_open(struct child *ch)
{
    for (int tries = 0; tries < 8; tries++) {
        long i = (long)(rnd(ch) % (uint64_t)ch->count);
        if (ch->o->resume || ch->conns[i].state == CS_OPEN)
            return i;
    }
    return -1;
}

static void api_send_req(struct child *ch, int k);

static int api_send_notify(struct child *ch, int k)
{
    struct api_conn *a = &ch->api[k];
    long i = pick_open(ch);
    if (i < 0)
        return -1;
    char user[96], body[320];
    user_name(ch, ch->first + i, user, sizeof user);
    int bl;
    a->n = ch->next_n++;
    a->attempts = 0;
    a->tries = 0;
    a->pending = 0;
    if (ch->o->resume) { /* numbered ids: lost and duplicates are counted per notification */
        bl = snprintf(body, sizeof body,
                      "{\"user_id\":\"%s\",\"type\":\"load.test\",\"id\":\"%s%llu\","
                      "\"data\":{\"t_ns\":%llu}}",
                      user, ch->trk.idpfx, (unsigned long long)a->n,
                      (unsigned long long)load_mono_ns());
    } else { /* no id (the server's idempotency lookup is not what is measured): load_n instead */
        bl = snprintf(
            body, sizeof body,
            "{\"user_id\":\"%s\",\"type\":\"load.test\",\"data\":{\"t_ns\":%llu,\"load_n\":%llu}}",
            user, (unsigned long long)load_mono_ns(), (unsigned long long)a->n);
        if (notes_sent(&ch->notes, a->n) < 0)
            return -1;
    }
    a->req_len =
        snprintf(a->req, sizeof a->req,
                 "POST /v1/notify HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                 "Content-Length: %d\r\n\r\n%s",
                 ch->o->api_host, bl, body);
    ch->c.notifications_sent++;
    api_send_req(ch, k);
    return 0;
}

static int api_tls_write(struct child *ch, int k, const char *p, int n);

static void api_send_req(struct child *ch, int k)
{
    struct api_conn *a = &ch->api[k];
    a->attempts++;
    a->pending = 0;
    a->state = AS_BUSY;
    a->resp_len = 0;
    if (a->ssl) {
        if (api_tls_write(ch, k, a->req, a->req_len) < 0)
            api_down(ch, k);
        else
            api_recv(ch, k);
        return;
    }
    struct io_uring_sqe *sqe = get_sqe(ch);
    io_uring_prep_send(sqe, a->fd, a->req, (size_t)a->req_len, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, ud_pack(OP_API_SEND, (uint32_t)k));
    api_recv(ch, k);
}

/* A complete response counts its status; returns 1 when complete, 0 when more is due. */
static int api_response(struct child *ch, struct api_conn *a)
{
    a->resp[a->resp_len] = 0;
    char *end = strstr(a->resp, "\r\n\r\n");
    if (!end)
        return 0;
    const char *cl = strcasestr(a->resp, "\r\ncontent-length:");
    long body = cl && cl < end ? strtol(cl + 17, NULL, 10) : 0;
    if ((end + 4 - a->resp) + body > a->resp_len)
        return 0;
    int status = a->resp_len > 12 ? atoi(a->resp + 9) : 0;
    if (status >= 200 && status < 300)
        ch->c.notify_2xx++;
    else if (status == 404)
        ch->c.notify_404++;
    else if (status == 503)
        ch->c.notify_503++;
    else
        ch->c.notify_other++;
    if (!ch->o->resume)
        notes_answered(&ch->notes, a->n);
    if (!ch->o->resume && status == 200)
        notes_delivered(&ch->notes, a->n);
    if (ch->o->resume && (status == 200 || status == 202)) {
        ch->c.notify_accepted++;
        trk_accepted(&ch->trk, a->n);
    } else if (status == 503) {
        api_retry_later(ch, a, 50000000ull);
    }
    return 1;
}

/* Connected (and with https://, handshake done): idle, or sending what is owed. */
static void api_ready(struct child *ch, int k)
{
    struct api_conn *a = &ch->api[k];
    a->state = AS_IDLE;
    a->last_ns = load_mono_ns();
    if (a->pending && a->last_ns >= a->retry_ns) {
        ch->c.notify_retries += ch->o->resume;
        api_send_req(ch, k);
    }
}

/* n more bytes of the response in resp: complete, or receive more. */
static void api_got(struct child *ch, int k, int n)
{
    struct api_conn *a = &ch->api[k];
    a->resp_len += n;
    if (api_response(ch, a)) {
        a->state = AS_IDLE;
        a->last_ns = load_mono_ns();
        a->tries = 0;
    } else if (a->resp_len >= (int)sizeof a->resp - 1) {
        api_down(ch, k);
    } else {
        api_recv(ch, k);
    }
}

/*
 * --api https://: one send in flight per API connection, from its tx buffer;
 * its completion sends what libssl wrote meanwhile.
 */
static void api_tls_flush(struct child *ch, int k)
{
    struct api_conn *a = &ch->api[k];
    if (a->tx_busy || !a->ssl)
        return;
    int n = BIO_read(SSL_get_wbio(a->ssl), a->tx, sizeof a->tx);
    if (n <= 0)
        return;
    a->tx_len = (uint32_t)n;
    a->tx_off = 0;
    a->tx_busy = 1;
    a->tx_fd = a->fd;
    struct io_uring_sqe *sqe = get_sqe(ch);
    io_uring_prep_send(sqe, a->fd, a->tx, (size_t)n, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, ud_pack(OP_API_SEND, (uint32_t)k));
}

static void api_tls_sent(struct child *ch, int k, int res)
{
    struct api_conn *a = &ch->api[k];
    a->tx_busy = 0;
    if (res > 0 && a->tx_fd == a->fd && (a->tx_off += (uint32_t)res) < a->tx_len) {
        a->tx_busy = 1; /* the rest of a short send */
        struct io_uring_sqe *sqe = get_sqe(ch);
        io_uring_prep_send(sqe, a->fd, a->tx + a->tx_off, a->tx_len - a->tx_off, MSG_NOSIGNAL);
        io_uring_sqe_set_data64(sqe, ud_pack(OP_API_SEND, (uint32_t)k));
        return;
    }
    api_tls_flush(ch, k); /* a failed send: the recv fails too */
}

static int api_tls_write(struct child *ch, int k, const char *p, int n)
{
    struct api_conn *a = &ch->api[k];
    if (SSL_write(a->ssl, p, n) != n) {
        ERR_clear_error();
        return -1;
    }
    api_tls_flush(ch, k);
    return 0;
}

/* The TCP connection is up: the ClientHello, then the handshake in api_tls_input. */
static int api_tls_start(struct child *ch, int k)
{
    struct api_conn *a = &ch->api[k];
    BIO *r = BIO_new(BIO_s_mem()), *w = BIO_new(BIO_s_mem());
    if (!(a->ssl = SSL_new(ch->api_tls)) || !r || !w) {
        BIO_free(r);
        BIO_free(w);
        return -1;
    }
    SSL_set_bio(a->ssl, r, w);
    SSL_set_connect_state(a->ssl);
    SSL_do_handshake(a->ssl);
    ERR_clear_error();
    api_tls_flush(ch, k);
    api_recv(ch, k);
    return 0;
}

/*
 * n ciphertext bytes in rx. During the handshake: go on with it (done: the
 * connection is ready). After: plaintext appended to resp; returns its
 * length, or -1 (close).
 */
static int api_tls_input(struct child *ch, int k, int n)
{
    struct api_conn *a = &ch->api[k];
    BIO_write(SSL_get_rbio(a->ssl), a->rx, n);
    if (!SSL_is_init_finished(a->ssl)) {
        int r = SSL_do_handshake(a->ssl);
        if (r != 1 && SSL_get_error(a->ssl, r) != SSL_ERROR_WANT_READ) {
            if (ch->hs_errors_shown++ < 3)
                fprintf(stderr, "tether-load: API TLS handshake: %s\n",
                        ERR_reason_error_string(ERR_peek_last_error()));
            ERR_clear_error();
            return -1;
        }
        api_tls_flush(ch, k);
        if (r != 1)
            api_recv(ch, k);
        else
            api_ready(ch, k);
        return 0;
    }
    int got = 0, r = 0;
    while (a->resp_len + got < (int)sizeof a->resp - 1 &&
           (r = SSL_read(a->ssl, a->resp + a->resp_len + got,
                         (int)sizeof a->resp - 1 - a->resp_len - got)) > 0)
        got += r;
    int e = got ? SSL_ERROR_NONE : SSL_get_error(a->ssl, r);
    ERR_clear_error();
    api_tls_flush(ch, k); /* e.g. a KeyUpdate answer */
    return e == SSL_ERROR_NONE || e == SSL_ERROR_WANT_READ ? got : -1;
}

static void on_api(struct child *ch, enum op op, int k, int res)
{
    struct api_conn *a = &ch->api[k];
    if (op == OP_API_SEND && a->ssl) {
        api_tls_sent(ch, k, res);
    } else if (op == OP_API_CONNECT) {
        if (res < 0 || (ch->api_tls && api_tls_start(ch, k) < 0))
            api_down(ch, k);
        else if (!ch->api_tls)
            api_ready(ch, k); /* https://: once the handshake is done (api_tls_input) */
    } else if (op == OP_API_RECV && a->ssl && res > 0 && a->state != AS_BUSY) {
        if (api_tls_input(ch, k, res) < 0) /* the handshake */
            api_down(ch, k);
    } else if (op == OP_API_RECV && a->ssl && res > 0) {
        int got = api_tls_input(ch, k, res);
        if (got < 0)
            api_down(ch, k);
        else
            api_got(ch, k, got);
    } else if (op == OP_API_RECV) {
        /* A send error needs no handling of its own: the recv fails too. */
        if (res <= 0 || a->state != AS_BUSY) {
            api_down(ch, k);
            return;
        }
        api_got(ch, k, res);
    }
}
/* ---- dispatch and pacing --------------------------------------------- */

/* ---- wss:// -----------------------------------------------------------
 * A client SSL per connection over two memory BIOs: what the frame and
 * handshake code sends is written into it, and what piles up in the write
 * BIO goes out in one send at a time (the connection's tx buffer, freed on
 * completion). Received bytes go into the read BIO; plaintext comes out of
 * SSL_read into the same parsers as ws:// bytes.
 */
static int tls_ctx_new(const struct load_opts *o, SSL_CTX **out)
{
    static const unsigned char alpn[] = "\x08http/1.1";
    SSL_CTX *c = *out = SSL_CTX_new(TLS_client_method());
    if (!c)
        return -ENOMEM;
    SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION);
    SSL_CTX_set_mode(c, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_alpn_protos(c, alpn, sizeof alpn - 1);
    if (o->tls_ca[0]) {
        if (SSL_CTX_load_verify_locations(c, o->tls_ca, NULL) != 1) {
            fprintf(stderr, "tether-load: --ca %s: cannot load\n", o->tls_ca);
            return -EINVAL;
        }
        SSL_CTX_set_verify(c, SSL_VERIFY_PEER, NULL);
    }
    return 0;
}

/* wss:// clients and https:// API connections: a context each (API sessions are not offered). */
static int tls_init(struct child *ch)
{
    int r = 0;
    if (ch->o->tls && (r = tls_ctx_new(ch->o, &ch->tls)) < 0)
        return r;
    return ch->o->api_tls ? tls_ctx_new(ch->o, &ch->api_tls) : 0;
}

static void tls_send_tx(struct child *ch, long i)
{
    struct conn *c = &ch->conns[i];
    c->tx_gen = c->gen;
    struct io_uring_sqe *sqe = get_sqe(ch);
    io_uring_prep_send(sqe, c->fd, c->tx + c->tx_off, c->tx_len - c->tx_off, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, ud_pack(OP_TLS_SEND, (uint32_t)i));
}

/* Send what the SSL wrote, unless a send is already out (its completion flushes again). */
static void tls_flush(struct child *ch, long i)
{
    struct conn *c = &ch->conns[i];
    if (c->tx || !c->ssl || c->state == CS_DEAD)
        return;
    BIO *w = SSL_get_wbio(c->ssl);
    size_t n = BIO_ctrl_pending(w);
    if (!n)
        return;
    if (!(c->tx = malloc(n))) {
        conn_kill(ch, c, c->state == CS_OPEN);
        return;
    }
    c->tx_len = (uint32_t)BIO_read(w, c->tx, (int)n);
    c->tx_off = 0;
    tls_send_tx(ch, i);
}

/*
 * A ciphertext send completed. With --resume the entry may be on a new
 * socket by now (a reconnect after a close or a drop): the rest of the old
 * socket's bytes and its error concern the old connection only; the new
 * one's records, written meanwhile, go out now.
 */
static void tls_sent(struct child *ch, long i, int res)
{
    struct conn *c = &ch->conns[i];
    int same = c->tx_gen == c->gen && c->state != CS_DEAD;
    if (res > 0 && same && (c->tx_off += (uint32_t)res) < c->tx_len) {
        tls_send_tx(ch, i);
        return;
    }
    free(c->tx);
    c->tx = NULL;
    if (res < 0 && same)
        conn_kill(ch, c, c->state == CS_OPEN);
    else
        tls_flush(ch, i);
}

static void wire_send(struct child *ch, long i, const void *p, size_t n, enum op op)
{
    struct conn *c = &ch->conns[i];
    if (!ch->tls) {
        struct io_uring_sqe *sqe = get_sqe(ch);
        io_uring_prep_send(sqe, c->fd, p, n, MSG_NOSIGNAL);
        io_uring_sqe_set_data64(sqe, op == OP_PING_SEND ? ud_pack_gen(op, (uint32_t)i, c->gen)
                                                        : ud_pack(op, (uint32_t)i));
        if (op == OP_PING_SEND) /* the frame is static: only a failure needs a completion */
            sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
        return;
    }
    int ok = c->ssl && SSL_write(c->ssl, p, (int)n) == (int)n;
    if (op == OP_HS_SEND || op == OP_CTRL_SEND) { /* the SSL copied it: the buffer is free */
        c->ctrl_busy = 0;
        if (op == OP_HS_SEND) {
            free(c->ctrl);
            c->ctrl = NULL;
        }
    }
    if (!ok) {
        ERR_clear_error();
        conn_kill(ch, c, c->state == CS_OPEN);
        return;
    }
    tls_flush(ch, i);
}

static int tls_start(struct child *ch, long i)
{
    struct conn *c = &ch->conns[i];
    BIO *r = BIO_new(BIO_s_mem()), *w = BIO_new(BIO_s_mem());
    if (!(c->ssl = SSL_new(ch->tls)) || !r || !w) {
        BIO_free(r);
        BIO_free(w);
        return -ENOMEM;
    }
    SSL_set_bio(c->ssl, r, w);
    SSL_set_connect_state(c->ssl);
    if (ch->sess)
        SSL_set_session(c->ssl, ch->sess);
    SSL_do_handshake(c->ssl); /* the ClientHello */
    ERR_clear_error();
    tls_flush(ch, i);
    return 0;
}

static void tls_input(struct child *ch, long i, const char *p, size_t n)
{
    struct conn *c = &ch->conns[i];
    int was_open = c->state == CS_OPEN;
    BIO_write(SSL_get_rbio(c->ssl), p, (int)n);
    if (!SSL_is_init_finished(c->ssl)) {
        int r = SSL_do_handshake(c->ssl);
        if (r != 1 && SSL_get_error(c->ssl, r) != SSL_ERROR_WANT_READ) {
            if (ch->hs_errors_shown++ < 3)
                fprintf(stderr, "tether-load: TLS handshake: %s\n",
                        ERR_reason_error_string(ERR_peek_last_error()));
            ERR_clear_error();
            conn_kill(ch, c, 0);
            return;
        }
        if (r == 1) {
            ch->c.tls_resumed += SSL_session_reused(c->ssl);
            send_upgrade(ch, i);
        }
    }
    int k = 0;
    while (c->ssl && (k = SSL_read(c->ssl, ch->plain, sizeof ch->plain)) > 0) {
        plain_bytes(ch, i, (const char *)ch->plain, (size_t)k);
        if (ch->o->tls_resume && !ch->sess && c->state == CS_OPEN) {
            SSL_SESSION *s = SSL_get1_session(c->ssl); /* TLS 1.3: the ticket came before the 101 */
            if (s && SSL_SESSION_is_resumable(s))
                ch->sess = s;
            else
                SSL_SESSION_free(s);
        }
    }
    if (!c->ssl)
        return; /* killed by the parsers */
    int e = SSL_get_error(c->ssl, k);
    ERR_clear_error();
    if (e == SSL_ERROR_ZERO_RETURN || e == SSL_ERROR_SSL) {
        conn_kill(ch, c, was_open);
        return;
    }
    tls_flush(ch, i);
}

static void on_cqe(struct child *ch, struct io_uring_cqe *cqe)
{
    uint64_t ud = io_uring_cqe_get_data64(cqe);
    enum op op = ud_op(ud);
    uint32_t i = ud_idx(ud);
    struct conn *c = op <= OP_TLS_SEND ? &ch->conns[i] : NULL;
    if ((op == OP_CONNECT || op == OP_RECV || op == OP_PING_SEND) &&
        ud_gen(ud) != (c->gen & 0xffffffu)) {
        /* A completion of this entry's previous socket (--resume reconnected it). */
        if (op == OP_RECV && (cqe->flags & IORING_CQE_F_BUFFER))
            buf_recycle(ch, cqe->flags >> IORING_CQE_BUFFER_SHIFT);
        return;
    }
    switch (op) {
    case OP_CONNECT:
        on_connected(ch, i, cqe->res);
        break;
    case OP_RECV:
        on_recv(ch, i, cqe);
        break;
    case OP_HS_SEND:
    case OP_CTRL_SEND:
        c->ctrl_busy = 0;
        if (op == OP_HS_SEND || c->state == CS_DEAD) { /* the 4 KiB request buffer is done */
            free(c->ctrl);
            c->ctrl = NULL;
        }
        if (cqe->res < 0)
            conn_kill(ch, c, c->state == CS_OPEN);
        break;
    case OP_PING_SEND:
        if (cqe->res < 0)
            conn_kill(ch, c, 1);
        break;
    case OP_TLS_SEND:
        tls_sent(ch, (long)i, cqe->res);
        break;
    default:
        on_api(ch, op, (int)i, cqe->res);
    }
}

static void pace_connects(struct child *ch, uint64_t now)
{
    double rate = ch->o->connect_rate > 0 ? ch->o->connect_rate / ch->o->procs : 0;
    long due = rate > 0 ? (long)((double)(now - ch->t0) * 1e-9 * rate) + 1 : ch->count;
    /* --tls-resume: the first client alone until it is up (its session, TLS 1.3's ticket
     * included, comes before the 101), so every later handshake can resume */
    int first_pending = ch->o->tls_resume && ch->next_conn == 1 && !ch->sess &&
                        (ch->conns[0].state == CS_CONNECTING || ch->conns[0].state == CS_HANDSHAKE);
    while (ch->next_conn < ch->count && ch->next_conn < due && ch->inflight < MAX_INFLIGHT &&
           !first_pending) {
        conn_start(ch, ch->next_conn++);
        first_pending = ch->o->tls_resume && ch->next_conn == 1 && !ch->sess;
    }
    if (ch->next_conn == ch->count && ch->inflight == 0) {
        ch->c.connect_end_ns = now;
        ch->c.connect_done = 1;
        ch->phase = ch->c.connections_ok ? PH_RUN : PH_DONE; /* nothing to load */
        ch->run_t0 = now + (uint64_t)(ch->o->settle * 1e9);  /* --settle: idle until then */
        ch->c.ping_start_ns = ch->run_t0;
        ch->last_progress = 0; /* tell the parent at once */
        if (ch->saturate && !ch->o->idle)
            for (long i = 0; i < ch->count; i++)
                if (ch->conns[i].state == CS_OPEN)
                    send_ping(ch, i, now);
    }
}

/* Interval pings: connection i's ping falls at phase i/count of each interval. */
static void pace_pings(struct child *ch, uint64_t now)
{
    if (ch->saturate || ch->o->idle || ch->count == 0)
        return;
    double per_s = (double)ch->count / ch->o->ping_interval;
    uint64_t due = (uint64_t)((double)(now - ch->run_t0) * 1e-9 * per_s);
    for (; ch->ping_sched < due; ch->ping_sched++) {
        long i = (long)(ch->ping_sched % (uint64_t)ch->count);
        struct conn *c = &ch->conns[i];
        if (c->state != CS_OPEN)
            continue;
        if (c->ping_out)
            ch->c.pings_skipped++;
        else
            send_ping(ch, i, now);
    }
}

/* Re-send requests that got no answer (--resume: or 503), also while draining. */
static void pace_retries(struct child *ch, uint64_t now)
{
    for (int k = 0; k < ch->o->api_conns; k++) {
        struct api_conn *a = &ch->api[k];
        if (!a->pending || now < a->retry_ns)
            continue;
        api_refresh_idle(ch, k, now);
        if (a->state == AS_IDLE) {
            ch->c.notify_retries += ch->o->resume;
            api_send_req(ch, k);
        }
    }
}

/* --resume: clients whose reconnect is due connect again (every close is followed by one). */
static void pace_reconnects(struct child *ch, uint64_t now)
{
    if (now - ch->reconnect_scan_ns < 5000000ull)
        return;
    ch->reconnect_scan_ns = now;
    for (long i = 0; i < ch->count && ch->inflight < MAX_INFLIGHT; i++) {
        struct conn *c = &ch->conns[i];
        /* a handshake or pong buffer still in the kernel's hands waits for its completion */
        if (c->state == CS_DEAD && c->reconnect_ns && now >= c->reconnect_ns && !c->ctrl_busy) {
            ch->c.reconnects++;
            conn_start(ch, i);
        }
    }
}

/*
 * --drop-rate: cut random open clients without a close frame or FIN (RST, as
 * when a phone loses its network); each reconnects after 0..--drop-max s.
 */
static void pace_drops(struct child *ch, uint64_t now)
{
    double rate = ch->o->drop_rate / ch->o->procs;
    if (rate <= 0)
        return;
    uint64_t due = (uint64_t)((double)(now - ch->run_t0) * 1e-9 * rate);
    for (; ch->drop_sched < due; ch->drop_sched++) {
        long i = (long)(rnd(ch) % (uint64_t)ch->count);
        struct conn *c = &ch->conns[i];
        if (c->state != CS_OPEN)
            continue;
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        shutdown(c->fd, SHUT_RD); /* ends our recv without sending anything */
        close(c->fd);
        c->fd = -1;
        conn_kill(ch, c, 1);
        ch->c.disconnects--;
        ch->c.drops++;
        c->reconnect_ns = now + rnd(ch) % ((uint64_t)(ch->o->drop_max_s * 1e9) + 1);
    }
}

static void pace_notifies(struct child *ch, uint64_t now)
{
    if (ch->notify_rate <= 0)
        return;
    uint64_t due = (uint64_t)((double)(now - ch->run_t0) * 1e-9 * ch->notify_rate);
    /* Round robin, so no keep-alive connection sits idle while others work. */
    for (int j = 0; j < ch->o->api_conns && ch->notify_sched < due; j++) {
        int k = (int)(ch->api_rr++ % (unsigned)ch->o->api_conns);
        struct api_conn *a = &ch->api[k];
        if (a->pending)
            continue;
        api_refresh_idle(ch, k, now);
        if (a->state != AS_IDLE)
            continue;
        if (api_send_notify(ch, k) < 0)
            break;
        ch->notify_sched++;
    }
}

static int settled(struct child *ch, uint64_t now)
{
    for (long i = 0; i < ch->count; i++)
        if (ch->conns[i].ping_out)
            return 0;
    for (int k = 0; k < ch->o->api_conns; k++)
        if (ch->api[k].state == AS_BUSY || ch->api[k].pending)
            return 0;
    if (!ch->o->resume)
        return ch->notes.unsettled == 0;
    if (now - ch->lost_check_ns < 100000000ull) /* a scan over every notification: 10 a second */
        return 0;
    ch->lost_check_ns = now;
    return trk_lost(&ch->trk, ch->next_n) == 0;
}

static void report(struct child *ch, uint32_t type)
{
    if (ch->o->resume) {
        const struct trk_counts *t = &ch->trk.c;
        ch->c.resumes = t->resumes, ch->c.recovered_false = t->recovered_false;
        ch->c.replayed = t->replayed, ch->c.dup = t->dup, ch->c.dup_frames = t->dup_frames;
        ch->c.reordered = t->reordered, ch->c.epoch_changes = t->epoch_changes;
        ch->c.bad_frames = t->bad_frames;
        if (type == LR_FINAL)
            ch->c.lost_resume = trk_lost(&ch->trk, ch->next_n);
    } else {
        ch->c.lost_notes = ch->notes.unsettled;
        ch->c.dup = ch->notes.dup;
        if (type == LR_FINAL)
            ch->c.undelivered = notes_undelivered(&ch->notes);
    }
    struct load_rec r = {.type = type, .child = (uint32_t)ch->id, .c = ch->c};
    if (write(ch->report_fd, &r, sizeof r) != (ssize_t)sizeof r)
        return;
    if (type == LR_FINAL) {
        if (write(ch->report_fd, &ch->rtt, sizeof ch->rtt) < 0 ||
            write(ch->report_fd, &ch->delivery, sizeof ch->delivery) < 0)
            return;
    }
}

static void step(struct child *ch, uint64_t now)
{
    if (g_stop && ch->phase < PH_DRAIN) {
        ch->phase = PH_DRAIN;
        ch->drain_t0 = now;
        ch->c.ping_end_ns = now;
    }
    if (ch->phase == PH_CONNECT)
        pace_connects(ch, now);
    if (ch->o->resume && (ch->phase == PH_RUN || ch->phase == PH_DRAIN))
        pace_reconnects(ch, now);
    if (ch->phase == PH_RUN || ch->phase == PH_DRAIN)
        pace_retries(ch, now);
    if (ch->phase == PH_RUN && now >= ch->run_t0) {
        pace_pings(ch, now);
        pace_notifies(ch, now);
        pace_drops(ch, now);
        if (now - ch->run_t0 >= (uint64_t)(ch->o->duration * 1e9)) {
            ch->phase = PH_DRAIN;
            ch->drain_t0 = now;
            ch->c.ping_end_ns = now;
        }
    }
    if (ch->phase == PH_DRAIN &&
        (settled(ch, now) || now - ch->drain_t0 >= (uint64_t)(ch->o->grace * 1e9)))
        ch->phase = PH_DONE;
    if (now - ch->last_progress >= 1000000000ull) {
        ch->last_progress = now;
        report(ch, LR_PROGRESS);
    }
}

/*
 * When the loop must wake next if no completion comes first. The paced work
 * (pings spread over --ping-interval, notifications, connects, drops) is
 * sent in batches at most PACE_NS late rather than each at its exact
 * instant: at a million clients over 67 processes, one wake-up a millisecond
 * per process was 67,000 wake-ups a second of the load generator's own,
 * most of them with nothing due, on the machine it shares with the server.
 * A ping's round trip is timed from when it is actually sent, so nothing
 * measured moves; each client still pings every --ping-interval on average.
 *
 * While interval pings run (batch_wait), the wait does not end at each
 * completion either: it asks for BATCH_WAIT_NR of them, so the kernel
 * (IORING_SETUP_DEFER_TASKRUN) leaves the process asleep while pongs arrive
 * and it wakes at the next pacing tick, BATCH_PACE_NS apart, to take them all
 * at once. The pongs' and notifications' arrival times come from the
 * kernel's receive timestamps (rx_unpack), so the batching delays nothing
 * that is measured; it costs a notification's API connection up to a tick
 * per request, hence batching only when the notify rate leaves room for
 * that (child_setup). Connects, --saturate, --resume and the drain wake for
 * every completion as before.
 */
#define PACE_NS 5000000ull        /* paced sends at most 5 ms late */
#define BATCH_PACE_NS 10000000ull /* ... 10 ms while batching the waits */
#define BATCH_WAIT_NR 1024u       /* < BUF_ENTRIES: the reads it waits for each hold a buffer */
#define WAIT_MAX_NS 100000000ull

static uint64_t due_at(uint64_t start, uint64_t n, double per_s)
{
    return start + (uint64_t)((double)n / per_s * 1e9);
}

static uint64_t next_wake(const struct child *ch, uint64_t now)
{
    uint64_t soon = now + PACE_NS, wake = now + WAIT_MAX_NS;
    if (ch->phase == PH_CONNECT || ch->phase == PH_DRAIN || ch->o->resume)
        return soon; /* pacing connects, waiting to settle, rescanning reconnects */
    if (ch->batch_wait)
        soon = now + BATCH_PACE_NS;
    if (ch->phase != PH_RUN)
        return wake;
    if (now < ch->run_t0)
        return ch->run_t0 < wake ? ch->run_t0 : wake; /* --settle */
    uint64_t end = ch->run_t0 + (uint64_t)(ch->o->duration * 1e9), t;
    wake = end < wake ? end : wake;
    if (!ch->saturate && !ch->o->idle && ch->count > 0 &&
        (t = due_at(ch->run_t0, ch->ping_sched + 1, (double)ch->count / ch->o->ping_interval)) <
            wake)
        wake = t;
    uint64_t note = 0; /* the next notification's send time, kept exact (below) */
    if (ch->notify_rate > 0 &&
        (t = due_at(ch->run_t0, ch->notify_sched + 1, ch->notify_rate)) < wake)
        wake = note = t;
    if (ch->o->drop_rate > 0 &&
        (t = due_at(ch->run_t0, ch->drop_sched + 1, ch->o->drop_rate / ch->o->procs)) < wake)
        wake = t;
    for (int k = 0; k < ch->o->api_conns; k++)
        if (ch->api[k].pending && ch->api[k].retry_ns < wake)
            wake = ch->api[k].retry_ns;
    if (ch->last_progress + 1000000000ull < wake)
        wake = ch->last_progress + 1000000000ull;
    wake = wake < soon ? soon : wake;
    /*
     * A notification leaves when it is due, not at the next tick: sent in
     * bursts of a tick's worth, each would queue behind the others in the
     * server and the delivery figures would time that queue, not the server
     * (a few wake-ups a millisecond at most; --million posts 20 a second).
     * One already late (every API connection busy) waits for the tick.
     */
    return note > now && note < wake ? note : wake;
}

static int child_setup(struct child *ch)
{
    ch->conns = calloc((size_t)ch->count + 1, sizeof *ch->conns);
    ch->api = calloc((size_t)ch->o->api_conns + 1, sizeof *ch->api);
    if (!ch->conns || !ch->api)
        return -ENOMEM;
    for (long i = 0; i < ch->count; i++)
        ch->conns[i].fd = -1;
    int r = ring_init(ch);
    if (r < 0 || (r = bufring_init(ch)) < 0)
        return r;
    build_ping(ch);
    if ((r = tls_init(ch)) < 0)
        return r;
    snprintf(ch->trk.idpfx, sizeof ch->trk.idpfx, "%s-p%d-", ch->o->user_prefix, ch->id);
    ch->saturate = !ch->o->idle && ch->o->ping_interval <= 0;
    ch->notify_rate = ch->o->notify_rate / ch->o->procs;
    /* batched waits: an API connection then takes up to a tick per request; leave 4x room */
    ch->batch_wait = !ch->saturate && !ch->o->resume &&
                     ch->notify_rate * 4 <= ch->o->api_conns * (1e9 / BATCH_PACE_NS);
    ch->rmsg.msg_controllen = CMSG_SPACE(sizeof(struct timespec));
    ch->rng = 0x9e3779b97f4a7c15ull ^ ((uint64_t)getpid() << 20) ^ (uint64_t)ch->id;
    ch->t0 = load_mono_ns();
    ch->c.target = (uint64_t)ch->count;
    for (int k = 0; k < ch->o->api_conns; k++)
        ch->api[k].fd = -1; /* opened when the load starts (pace_notifies) */
    return 0;
}

int load_child_run(const struct load_opts *o, int id, long first, long count, int report_fd,
                   int hold_fd)
{
    static struct child ch; /* one per process; histograms are large */
    ch.o = o;
    ch.id = id;
    ch.first = first;
    ch.count = count;
    ch.report_fd = report_fd;
    signal(SIGINT, on_stop);
    signal(SIGTERM, on_stop);
    signal(SIGPIPE, SIG_IGN);
    if (child_setup(&ch) < 0)
        return 1;
    while (ch.phase != PH_DONE) {
        uint64_t now = load_mono_ns();
        step(&ch, now);
        uint64_t wait = next_wake(&ch, now) - now;
        struct __kernel_timespec ts = {.tv_sec = (long long)(wait / 1000000000ull),
                                       .tv_nsec = (long long)(wait % 1000000000ull)};
        struct io_uring_cqe *cqe;
        unsigned nr = ch.batch_wait && ch.phase == PH_RUN ? BATCH_WAIT_NR : 1;
        io_uring_submit_and_wait_timeout(&ch.ring, &cqe, nr, &ts, NULL);
        struct timespec rt;
        clock_gettime(CLOCK_REALTIME, &rt); /* for the kernel's receive stamps (rx_unpack) */
        ch.real_to_mono =
            (int64_t)load_mono_ns() - ((int64_t)rt.tv_sec * 1000000000ll + rt.tv_nsec);
        unsigned head, n = 0;
        io_uring_for_each_cqe(&ch.ring, head, cqe)
        {
            on_cqe(&ch, cqe);
            n++;
        }
        io_uring_cq_advance(&ch.ring, n);
    }
    /* Connections still connecting when the run ended never made it. */
    if (!o->resume) /* (--resume counts every reconnect in connections_ok) */
        ch.c.connect_errors += ch.c.target - ch.c.connections_ok - ch.c.connect_errors;
    report(&ch, LR_FINAL);
    char b;
    while (read(hold_fd, &b, 1) < 0 && errno == EINTR) /* EOF: every process has reported */
        ;
    return 0;
}
