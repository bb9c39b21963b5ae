/*
 * Internals of one socket worker, shared by its files (not a public API):
 * worker.c (set-up, io_uring loop, completion dispatch), conn.c (connection
 * table, send queue, closing), upgrade.c (HTTP handshake, auth, claim),
 * session.c (RFC 6455 frames and the app protocol), control.c (control
 * socket server and the fire-and-forget client to peer workers).
 *
 * Everything here is owned by the worker's single thread: no locks.
 */
#ifndef TETHER_WORKER_WK_H
#define TETHER_WORKER_WK_H

#include "shm/rt/config.h"
#include "shm/registry.h"
#include "shm/rt/channel.h"
#include "shm/rt/uring.h"
#include "shm/proto/http.h"
#include "shm/proto/jwt.h"
#include "shm/proto/tls.h"
#include "worker/ws.h"
#include "worker/resume.h"
#include "shm/mailbox.h"

#include <liburing.h>
#include <stdint.h>

/*
 * Clients per worker: the descriptor budget in shm/rt/config.h
 * (TH_WORKER_FDS), less the ones the worker needs itself (up to WK_MAX_CTL
 * control clients among them); if those ever run short, accept pauses on
 * EMFILE and retries at the next tick.
 */
#define WK_MAX_CONNS TH_WORKER_MAX_CONNS
#define WK_MAX_CTL 64u     /* control-socket clients (notifier, janitor, peers, tools) */
#define WK_RING_SQ 4096u   /* submission queue entries */
#define WK_RING_CQ 16384u  /* completion queue entries (multishot recvs of many connections) */
#define WK_BUF_COUNT 1024u /* provided recv buffers shared by all connections */
#define WK_BUF_SIZE 4096u
#define WK_BGID 1
#define WK_HANDSHAKE_S 10u /* slowloris bound: time to finish the HTTP upgrade */
#define WK_ADOPT_BATCH 64u /* clients taken from an adopted listener per readiness */
#define WK_CLOSE_WAIT_S 5u /* after our close frame: wait this long for the peer */
/* All send queues of one worker together: past this, whoever adds is closed (or BUSY). */
#define WK_QUEUE_BUDGET (256ull << 20)
/*
 * A pong or a notification to an idle connection takes a send queue and a
 * WK_SQ_SMALL-byte buffer and gives both back once sent, so at scale every
 * ping was two mallocs and two frees on cold allocator state; the worker
 * keeps up to WK_SQ_CACHE of each on a free list instead (LIFO: the ones
 * reused are the ones still in cache).
 */
#define WK_SQ_SMALL 256u
#define WK_SQ_CACHE 512u

/* The kind of a user_data (th_ud_make in shm/rt/uring.h: kind | index | generation). */
enum wk_op {
    OP_ACCEPT = 1, /* multishot accept on the client listener */
    OP_RECV,       /* multishot recv of connection index */
    OP_SEND,       /* one send of connection index's in-flight buffer */
    OP_CTL_ACCEPT, /* multishot accept on the control listener */
    OP_CTL_RECV,   /* a packet from control client index */
    OP_CTL_SEND,   /* the replies to control client index's last packet */
    OP_CANCEL,     /* completions of our own cancel requests: ignored */
    OP_ADOPT,      /* readiness of an adopted peer's listener (index = that worker) */
};

enum conn_state {
    CS_FREE = 0,
    CS_HANDSHAKE, /* reading the HTTP request head */
    CS_OPEN,      /* WebSocket established, slot claimed */
    CS_CLOSING,   /* final bytes queued (close frame or HTTP error): flush, FIN, wait for EOF */
    CS_DEAD,      /* socket shut down: waiting for in-flight operations to finish */
};

enum conn_flag {
    CF_RECV_ARMED = 1u << 0, /* a multishot recv is outstanding */
    CF_SENDING = 1u << 1,    /* a send is outstanding */
    CF_FLUSH_LISTED = 1u << 2,
    CF_REGISTERED = 1u << 3,  /* holds registry slot h */
    CF_FIN_SENT = 1u << 4,    /* shutdown(SHUT_WR) done */
    CF_SEQ_KNOWN = 1u << 5,   /* seq_hi is the last seq queued to this client (worker/resume.h) */
    CF_RESUMED = 1u << 6,     /* its client asked for a replay (TH_HO_F_IF_RESUMED, resume.h) */
    CF_SNIFFED = 1u << 12,    /* first bytes seen: TLS (tls set) or plain (worker/tls.c) */
    CF_TLS_ACTIVE = 1u << 13, /* TLS traffic since the last tick */
    CF_TLS_BUSY = 1u << 14,   /* libssl keeps its record buffers (worker/tls.c) */
};

/* Outbound bytes of one connection: allocated on demand, freed once drained. */
struct sendq {
    uint8_t *fly; /* buffer handed to the kernel: never moved while CF_SENDING */
    uint32_t fly_len, fly_off, fly_cap;
    uint8_t *pend; /* bytes queued since: grows by realloc */
    uint32_t pend_len, pend_cap;
    uint8_t *plain; /* TLS only: plaintext of this batch, sealed into pend before the send */
    uint32_t plain_len, plain_cap;
};

/*
 * One client connection. Compact on purpose: an idle open connection holds
 * only this struct (no heap), so user-space memory per idle connection is
 * sizeof(struct conn) plus its share of the table's page rounding.
 */
struct conn {
    int32_t fd;
    uint32_t gen;        /* bumped when the entry is reused: stale completions are ignored */
    struct th_handle h;  /* registry slot while CF_REGISTERED */
    uint32_t exp_s;      /* token exp (Unix seconds), 0 = none */
    uint32_t deadline_s; /* monotonic seconds: handshake or close-wait deadline, 0 = none */
    uint16_t flags;
    uint8_t state;
    uint8_t pad;
    uint16_t head_len, head_cap; /* partial HTTP head, only while CS_HANDSHAKE */
    uint32_t next;               /* free-list / flush-list link */
    uint32_t head_scanned;
    char *head;
    struct sendq *sq;
    struct th_tls *tls; /* wss:// connections: the engine's state (worker/tls.c) */
    struct th_ws_reader rd;
    uint64_t seq_hi;      /* with CF_SEQ_KNOWN: last notification seq queued */
    struct wk_replay *rp; /* a replay from the mailbox under way (worker/resume.c) */
    /* Inbound rate limits (worker/session.c): theoretical arrival times of the
     * frame and byte token buckets, monotonic ns (GCRA: one word per bucket). */
    uint64_t rl_frames_tat, rl_bytes_tat;
};

struct ctl_client {
    int fd; /* -1 when unused */
    uint32_t gen;
    unsigned busy; /* io_uring operations on buf/rep in flight: the entry is reused only at 0 */
    uint8_t *buf;  /* the packet being received (TH_HO_MAX_PACKET), kept for the next client */
    struct th_ho_msg rep[TH_HO_BATCH_MAX + 1]; /* the replies to it, being sent */
};

struct worker {
    const struct th_config *cfg;
    struct th_reg *reg;
    unsigned index;
    int listen_fd, ctl_fd; /* listen_fd = listen_fds[index], this worker's own */
    const int *listen_fds; /* every worker's client listener (cfg->workers of them) */
    char ctl_path[TH_PATH_MAX];
    struct io_uring ring;
    struct io_uring_buf_ring *br;
    size_t br_size;
    uint8_t *bufs;
    unsigned br_returned; /* buffers added since the last advance */

    struct conn *conns; /* WK_MAX_CONNS, calloc'd: untouched pages cost nothing */
    uint32_t free_head; /* free list of conn indexes (UINT32_MAX = empty) */
    uint32_t high;      /* entries ever used: the tick scans [0, high) */
    uint32_t live;      /* entries not CS_FREE */
    uint32_t *tick_due; /* per connection: the monotonic second the tick looks at it, 0 = no need */
    uint32_t *flush;    /* connections with bytes to send after this batch */
    uint32_t nflush;
    uint64_t queued_bytes;               /* sum of wk_conn_queued() over all connections */
    struct sendq *sq_cache[WK_SQ_CACHE]; /* free send queues (conn.c) */
    uint8_t *small_cache[WK_SQ_CACHE];   /* free WK_SQ_SMALL-byte buffers */
    uint32_t n_sq_cache, n_small_cache;

    struct ctl_client ctl[WK_MAX_CTL];
    int peer_fd[TH_MAX_WORKERS]; /* lazily opened, non-blocking, to other workers */

    struct th_http_req req; /* scratch for the handshake parser */

    uint64_t now_ns; /* realtime, read once per loop iteration */
    uint64_t mono_ns;
    uint32_t mono_s;
    uint64_t pong_sec; /* second of the cached timestamp */
    char pong[80];     /* cached pong frame payload */
    size_t pong_len;

    uint64_t c_frames, c_pings,
        c_acks; /* counter deltas, added to the segment once per iteration */

    uint32_t feeding; /* connection whose reader is running (its buffer must stay), or UINT32_MAX */
    int accepting;    /* multishot accept armed */
    uint32_t accept_gen;    /* generation of the current accept request */
    int accept_paused;      /* EMFILE/ENFILE, table full or no SQE: re-arm at the next tick */
    int ctl_accept_paused;  /* control accept could not be armed: retried at the next tick */
    uint64_t beat_mono;     /* last heartbeat stamp (monotonic ns) */
    uint64_t released_seen; /* th_proc_sh.released at the last tick (conn.c) */
    uint64_t adopting;      /* peers whose adopter the supervisor made us */
    uint64_t adopt_mask;    /* ... of those, the ones with a readiness poll armed */
    uint32_t adopt_gen[TH_MAX_WORKERS]; /* generation of each adopted listener's poll */
    int draining;
    uint32_t drain_deadline_s;
    struct wk_resume *rs; /* the mailbox and the replays; NULL when the mailbox is off */

    struct th_tls_ctx *tls;        /* certificate + key for new handshakes; NULL: plain only */
    struct th_jwt_keys *jwt_keys;  /* token keys in force (worker/auth.c); swapped on SIGHUP */
    struct th_jwt_rules jwt_rules; /* --jwt-audience / --jwt-issuer */
    uint8_t *tls_scratch;          /* TH_TLS_RECORD_MAX: plaintext of one record */
    uint32_t tls_handshakes; /* finished since the last tick (worker/tls.c trims the heap then) */
};

/* worker.c */
void wk_arm_recv(struct worker *w, uint32_t idx);
void wk_conn_input(struct worker *w, uint32_t idx, uint8_t *p, size_t n);

/* conn.c */
int wk_conn_alloc(struct worker *w, int fd);
void wk_conn_send(struct worker *w, uint32_t idx, const void *p, size_t n);
int wk_conn_wire(struct worker *w, uint32_t idx, const uint8_t *p, size_t n);
void wk_conn_send_frame(struct worker *w, uint32_t idx, enum th_ws_opcode op, const void *p,
                        size_t n);
size_t wk_conn_queued(const struct conn *c);
void wk_conn_flush_all(struct worker *w);
void wk_on_send(struct worker *w, uint32_t idx, int res);
void wk_conn_close(struct worker *w, uint32_t idx, uint16_t code);
void wk_conn_finish(struct worker *w, uint32_t idx);
void wk_conn_abort(struct worker *w, uint32_t idx);
void wk_conn_maybe_free(struct worker *w, uint32_t idx);
void wk_conn_unregister(struct worker *w, uint32_t idx);
int wk_conn_heard_since(struct worker *w, uint32_t idx, uint64_t judged_ns);
void wk_conn_cache_free(struct worker *w);
void wk_conn_tick(struct worker *w);
void wk_conn_opened(struct worker *w, uint32_t idx, uint32_t exp_s);
size_t wk_conn_user(const struct worker *w, const struct conn *c, char out[TH_USER_MAX + 1]);

/* upgrade.c */
void wk_handshake_input(struct worker *w, uint32_t idx, uint8_t *p, size_t n);
void wk_http_reply(struct worker *w, uint32_t idx, int status, const char *extra_hdrs,
                   const char *body);

/* session.c */
void wk_ws_input(struct worker *w, uint32_t idx, uint8_t *p, size_t n);
void wk_evict(struct worker *w, const struct th_conn_info *victim, uint16_t code);

/* auth.c */
int wk_auth_setup(struct worker *w);
void wk_auth_reload(struct worker *w);
void wk_auth_shutdown(struct worker *w);
/* Is a browser upgrade from origin[0..n) allowed by --allowed-origins (empty list: all)? */
int wk_origin_allowed(const char *list, const char *origin, size_t n);

/* tls.c */
int wk_tls_setup(struct worker *w);
void wk_tls_reload(struct worker *w);
int wk_tls_sniff(struct worker *w, uint32_t idx, const uint8_t *p, size_t n);
void wk_tls_input(struct worker *w, uint32_t idx, uint8_t *p, size_t n);
void wk_tls_seal(struct worker *w, uint32_t idx);
void wk_tls_finish(struct worker *w, uint32_t idx);
void wk_tls_tick(struct worker *w);

/* control.c */
int wk_ctl_listen(struct worker *w);
void wk_ctl_arm_accept(struct worker *w);
void wk_ctl_on_accept(struct worker *w, int res);
void wk_ctl_on_recv(struct worker *w, uint32_t i, uint32_t gen, int res);
void wk_ctl_on_send(struct worker *w, uint32_t i, uint32_t gen, int res);
int wk_peer_close(struct worker *w, unsigned peer, struct th_handle h, uint32_t conn_id,
                  uint16_t code);
void wk_ctl_shutdown(struct worker *w);
#ifdef TETHER_STAGES
/* Stage records: seqs handled in this iteration, stamped TH_ST_W_SUBMIT at the loop's submit. */
void wk_stage_pending(struct worker *w, uint64_t seq);
void wk_stage_submit(struct worker *w);
#else
#define wk_stage_pending(w, seq) ((void)0)
#define wk_stage_submit(w) ((void)0)
#endif
/* After the ring is gone (no operation can write into them any more): the buffers. */
void wk_ctl_free(struct worker *w);

#endif
