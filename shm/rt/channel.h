/*
 * The worker control channel: how the notifier, the janitor and other
 * workers ask a socket worker to act on one of its connections.
 *
 * Each worker listens on a SOCK_SEQPACKET Unix socket at
 * th_worker_sock_path(shm_name, index) (shm/rt/paths.h; also published in the segment's
 * worker table). A request is struct th_ho_msg followed by len payload
 * bytes. A packet carries 1 to TH_HO_BATCH_MAX requests back to back (the
 * next header right after the previous payload, no padding), so a busy
 * requester hands many notifications over in one send. Every request gets
 * exactly one reply (a th_ho_msg of type TH_HO_REPLY, same seq, status in
 * code, no payload); the replies to one packet's requests come back together
 * in one packet, in request order, so a one-request packet gets a one-reply
 * packet as before. Packets may be answered in any order relative to each
 * other (match on seq). Parsing a packet stops at a header whose len runs
 * past the packet's end or at the TH_HO_BATCH_MAX+1st request: that one is
 * answered TH_HO_BAD and the bytes after it are ignored.
 *
 * The worker checks (slot, gen) against the connection it holds in that
 * slot, so a message for a connection that went away never reaches another
 * connection that reuses the slot: it answers TH_HO_GONE instead. A
 * delivery found through the registry index alone (TH_HO_F_USER: the
 * notifier never read the slot, so it knows no gen) names the user instead,
 * and the worker delivers only if that slot is live, its own and holds
 * exactly that user id (th_reg_confirm), else TH_HO_GONE.
 */
#ifndef TETHER_SHM_RT_CHANNEL_H
#define TETHER_SHM_RT_CHANNEL_H

#include <stddef.h>
#include <stdint.h>

#define TH_HO_MAGIC 0x54480001u
#define TH_HO_MAX_PAYLOAD (256u * 1024u) /* one notification frame's text */
#define TH_HO_BATCH_MAX 64u              /* requests in one packet */
/* The largest packet a worker reads (a bigger one is dropped unanswered): one
 * request with the largest payload, or several smaller ones. */
#define TH_HO_MAX_PACKET (sizeof(struct th_ho_msg) + TH_HO_MAX_PAYLOAD)
/*
 * Socket buffer of both ends of a channel. Replies are tiny but each costs an
 * skb: room for thousands keeps a requester with many requests in flight from
 * seeing replies dropped, and the requester's side holds a window of frames.
 */
#define TH_HO_SNDBUF (4 << 20)

enum th_ho_type {
    TH_HO_DELIVER = 1, /* payload = text frame body; reply OK once queued to the socket */
    TH_HO_CLOSE = 2,   /* close with code (shm/proto/wsclose.h); reply OK once closing */
    TH_HO_REPLY = 3,
};

enum th_ho_status {
    TH_HO_OK = 0,
    TH_HO_GONE = 1, /* no such connection (slot released or reused: generation differs) */
    TH_HO_BUSY = 2, /* connection closing or its send queue is over the cap */
    TH_HO_BAD = 3,  /* malformed request */
    /*
     * A stale close (TH_HO_CLOSE, 4000) refused: the connection was heard
     * from after the janitor read its LastSeen (the slot's LastSeen moved, or
     * its bytes wait unread behind a worker that was starved). Still open,
     * still registered; the next sweep judges it again.
     */
    TH_HO_KEPT = 4,
};

struct th_ho_msg {
    uint32_t magic;
    uint16_t type;
    uint16_t code; /* close code for TH_HO_CLOSE, status for TH_HO_REPLY, flags for TH_HO_DELIVER */
    uint32_t slot;
    uint32_t gen;
    uint64_t seq; /* chosen by the requester, echoed in the reply */
    uint32_t len; /* payload bytes following the header */
    /* TH_HO_CLOSE: the owner's connection index + 1, for a slot a claimer
     * already released for the per-user cap (0: find it through the slot). */
    uint32_t conn;
    /* TH_HO_DELIVER: the notification's per-user mailbox seq, 0 = none.
     * TH_HO_CLOSE with 4000: the LastSeen the janitor judged stale (0 = unknown). */
    uint64_t nseq;
};

/*
 * TH_HO_DELIVER flags in code. NOT_STORED: the frame has a seq but is not
 * in the mailbox (ttl_s 0), so the worker sends it as it comes instead of
 * assuming a replay carries it (worker/resume.h).
 */
#define TH_HO_F_NOT_STORED 1u
/*
 * SAME_FRAME: len is 0 on the wire and the payload is the previous
 * request's in the same packet (another connection of the same user gets
 * the same frame, sent once). Without a previous request it is TH_HO_BAD.
 */
#define TH_HO_F_SAME_FRAME 2u
/*
 * USER: gen is unknown (sent 0, ignored); conn is the user id's length (1 to
 * TH_USER_MAX) and the payload is the id followed by the frame (len counts
 * both; with SAME_FRAME, the previous request's id and frame). The worker
 * confirms the id against its slot (above). An id length of 0, past 64 or
 * past len is TH_HO_BAD.
 */
#define TH_HO_F_USER 4u
/*
 * IF_RESUMED: deliver only if the connection resumed (its client asked for
 * a replay, so the worker knows its place in the mailbox: worker/resume.h),
 * else answer TH_HO_GONE. The JetStream catch-up (th_route_local_deliver_by)
 * hands a notification stored before a connection connected only on these
 * terms: not news for a client that connected without since, but one that
 * resumed may have been answered from a cache that did not hold it yet.
 */
#define TH_HO_F_IF_RESUMED 8u

/*
 * Connect to worker index's control socket (SOCK_CLOEXEC; SOCK_NONBLOCK when
 * nonblock, for callers inside an event loop). Returns fd or -errno.
 */
int th_ho_connect(const char *shm_name, unsigned index, int nonblock);
/* Connect to a control socket path, as th_ho_connect. Returns fd or -errno. */
int th_ho_connect_path(const char *path, int nonblock);
/* Give fd the channel's TH_HO_SNDBUF (SO_SNDBUFFORCE, else SO_SNDBUF up to the
 * system's cap). Returns 0 or -errno of the SO_SNDBUF attempt. */
int th_ho_set_sndbuf(int fd);
/* Send one request (header + payload in one packet). Returns 0 or -errno. */
int th_ho_send(int fd, const struct th_ho_msg *m, const void *payload);
/*
 * Blocking request/response with a timeout: sends m and waits up to
 * timeout_ms for the reply with the same seq (other replies are dropped).
 * Returns the reply status (>= 0) or -errno (-ETIMEDOUT, -ECONNRESET, ...).
 */
int th_ho_call(int fd, const struct th_ho_msg *m, const void *payload, int timeout_ms);

#endif
