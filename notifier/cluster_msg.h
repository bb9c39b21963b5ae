/*
 * The cluster route's broker messages (route_nats.c), as a pure core: the
 * text forms other nodes send, parsed and checked here with no I/O and no
 * state, so the unit tests and a fuzz target drive it directly. What comes
 * over the broker is input like any other: every parser takes a
 * NUL-terminated string (th_cm_text makes one, refusing inner NULs and
 * oversize bodies), accepts exactly one form, and returns -EINVAL for
 * anything else; numbers are strict decimal with a bound, node ids exactly
 * 16 lowercase hex digits, user ids hex of a valid id (th_userid_valid).
 *
 *   on tether.u.<hex user>   "TN1\0" + nseq (8 bytes LE) + frame   a notification
 *                            "TH1 <id>"  hello (a new holder)  "TB1 <id>"  bye
 *                            "TI1 <id> <hex user>"  a holder answering a hello
 *   on <inbox>.<i>_<g>       "TR2 <status> <confirmed> <id>[ <peer id>...]"
 *   on <inbox>.b             "TR3 <id>\n" then "<i>_<g> <status> <confirmed>[ <peer id>...]\n"
 *                            per delivery: one holder's answers to one asker, batched
 *   on tether.n              "TK1 <id> <node name>"  heartbeat   "TX1 <id>"  leaving
 *   on tether.p              "TP1 <hex user>"  presence question
 *   on <inbox>.p<i>_<g>      "TQ1 <id> <0|1> <last_seen ns> <node name>\n" then
 *                            "<worker> <connected_at ns> <last_seen ns>\n" per connection
 */
#ifndef TETHER_NOTIFIER_CLUSTER_MSG_H
#define TETHER_NOTIFIER_CLUSTER_MSG_H

#include <stddef.h>
#include <stdint.h>

#include "shm/proto/userid.h" /* TH_USER_MAX */
#include "shm/rt/channel.h"   /* TH_HO_MAX_PAYLOAD */

#define TH_CM_NAME_MAX 64u  /* node names (TH_NODE_MAX) */
#define TH_CM_PEERS_MAX 16u /* peer ids one reply may carry */
#define TH_CM_REQ_HDR 12u   /* "TN1\0" + nseq */

/* d[0..n) as a NUL-terminated string in buf; its length, or -EINVAL (empty, >= cap, inner NUL). */
int th_cm_text(const void *d, size_t n, char *buf, size_t cap);

/* Hex of s[0..n) into out (2n digits + NUL); returns 2n. */
size_t th_cm_hex_put(char *out, const char *s, size_t n);
/* The user id hl hex digits at h name; its length, or -EINVAL unless a valid id. */
int th_cm_hex_user(const char *h, size_t hl, char *user);
/* The user of "tether.u.<hex>"; its length or -EINVAL. */
int th_cm_subject_user(const char *subj, char *user);
/* 16 hex digits + NUL. */
void th_cm_id_hex(char out[17], uint64_t id);

/*
 * The token after "<inbox>." of a reply subject: 'b' (a batch of delivery
 * replies), 'p' ("p<idx>_<gen>", a presence answer) or 'd'
 * ("<idx>_<gen>", a delivery reply), idx and gen filled for the last two;
 * -EINVAL for anything else.
 */
int th_cm_reply_token(const char *tok, uint32_t *idx, uint32_t *gen);
/*
 * Where a holder sends its batched confirmations ("TR3") for a request
 * whose reply subject is reply ("<P>.<idx>_<gen>", a delivery reply): "<I>.b"
 * when P is "<I>.a" (an asker taking single replies on "<I>.a.*" and
 * batches on "<I>.b", two subscriptions that no subject matches both of),
 * else "<P>.b" (an asker with one "<P>.*" subscription for both). Into out
 * with its NUL; the length, or -EINVAL (not a delivery reply, or >= cap).
 */
int th_cm_batch_subject(const char *reply, char *out, size_t cap);

/*
 * The largest frame a request may carry: what the local handoff takes
 * with the user id (a longer one is a packet no worker reads, answered
 * only by the handoff timeout). Nodes send frames of at most
 * TH_MBX_MAX_FRAME.
 */
#define TH_CM_FRAME_MAX (TH_HO_MAX_PAYLOAD - TH_USER_MAX)
/*
 * "TN1\0" + nseq + frame: 0 with *nseq and the frame, or -EINVAL. The
 * frame is 1 to TH_CM_FRAME_MAX bytes of UTF-8: it goes to clients as a
 * WebSocket text frame, and one that is not UTF-8 makes every client fail
 * its connection (RFC 6455 8.1).
 */
int th_cm_request(const void *d, size_t n, uint64_t *nseq, const char **frame, size_t *flen);
/* Is it a notification request (the "TN1\0" magic), whatever else it holds? */
int th_cm_is_request(const void *d, size_t n);

struct th_cm_reply {
    unsigned status, confirmed;
    uint64_t id;
    unsigned npeers;
    uint64_t peers[TH_CM_PEERS_MAX];
};
int th_cm_reply(const char *s, struct th_cm_reply *out);

/*
 * A batch of delivery replies: th_cm_reply_batch takes the head line
 * "TR3 <id>\n" and returns the offset of the first reply line;
 * th_cm_reply_line takes the line at s + *off: 1 (idx, gen and out filled
 * except out->id, *off moved past it), 0 at the end, -EINVAL. Every line
 * ends with '\n'.
 */
int th_cm_reply_batch(const char *s, uint64_t *id);
int th_cm_reply_line(const char *s, size_t *off, uint32_t *idx, uint32_t *gen,
                     struct th_cm_reply *out);
/* One reply line into out (cap >= TH_CM_LINE_MAX); its length. */
#define TH_CM_LINE_MAX (40u + TH_CM_PEERS_MAX * 17u)
size_t th_cm_reply_line_put(char *out, uint32_t idx, uint32_t gen, unsigned status,
                            unsigned confirmed, const uint64_t *peers, unsigned npeers);

/* "TH1 <id>" (*bye 0) or "TB1 <id>" (*bye 1). */
int th_cm_holder(const char *s, uint64_t *id, int *bye);
/* "TI1 <id> <hex user>": the user's length, or -EINVAL. */
int th_cm_hello_answer(const char *s, uint64_t *id, char *user);
/* "TK1 <id> <name>" (*leaving 0, name filled) or "TX1 <id>" (*leaving 1). */
int th_cm_node(const char *s, uint64_t *id, int *leaving, char name[TH_CM_NAME_MAX + 1]);
/* "TP1 <hex user>": the user's length, or -EINVAL. */
int th_cm_presence_question(const char *s, char *user);

struct th_cm_presence_head {
    uint64_t id;
    int has_last_seen;
    uint64_t last_seen;
    char name[TH_CM_NAME_MAX + 1];
};
/* The head line of a presence answer; returns the offset of the first connection line. */
int th_cm_presence_head(const char *s, struct th_cm_presence_head *out);
struct th_cm_pconn {
    unsigned worker;
    uint64_t connected_at, last_seen;
};
/* The connection line at s + *off: 1 (filled, *off moved past it), 0 at the end, -EINVAL. */
int th_cm_presence_line(const char *s, size_t *off, struct th_cm_pconn *out);

#endif
