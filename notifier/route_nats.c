/*
 * The cluster route (--nats): a notification posted to this node reaches the
 * user's connections here (through the local route it wraps) and on every
 * other node that holds the user, over NATS (libnats, core NATS).
 *
 * Subjects. A user's subject is "tether.u.<hex of the id's bytes>": the id is
 * hex-encoded, so no id (dots, '*', '>', spaces) can name another subject or
 * a wildcard. Every node also listens on "tether.n" (heartbeats) and
 * "tether.p" (presence questions); replies come back on this node's own
 * inbox: single ones (and the server's "no responders") on the reply
 * subject a request names, "<inbox>.a.<token>", a holder's batched ones on
 * "<inbox>.b" (th_cm_batch_subject; no subject matches both
 * subscriptions). Nodes are told apart by a random 64-bit id drawn at start
 * (a restarted notifier is a new node to the others).
 *
 * Interest. A node subscribes to a user's subject while its registry holds at
 * least one live connection of that user and unsubscribes after the last: the
 * loop scans the registry every SCAN_NS (a periodic scan, not hooks in the
 * workers, because the workers must not link libnats and the registry is
 * already the one truth about who is here; the cost is one pass over the
 * slots every 100 ms while users come and go, every second otherwise, and
 * a window of up to SCAN_NS after a connect during which other nodes do not
 * yet see the user). A pass goes in steps of at most SCAN_STEP_NS with the
 * I/O in between and the loop waiting SCAN_GAP_NS from one step to the next
 * (scan_step: in one go it held the loop for milliseconds, every
 * notification arriving meanwhile waited; back to back, it held a CPU), and
 * a user it did not meet is looked up by id before its interest goes (a
 * connection that moved behind the pass is still here).
 *
 * Holders know each other. Right after subscribing, a node publishes a hello
 * on the user's subject; every other holder adds it to that user's peer set
 * and answers with its own id on the same subject (no reply inbox, so a
 * lone holder's hello draws no "no responders" status), so each holder
 * keeps the set of the other holders (a bye before unsubscribing takes a
 * node out). Subscribe-then-
 * publish on one connection is ordered by the server, so of two nodes that
 * start holding a user at once, at least one hears the other and answers.
 *
 * Delivery. deliver() hands the frame to the local route and, when the broker
 * is connected, publishes it on the user's subject with a reply inbox. The
 * connection is made with no-echo, so this node never hears itself; when no
 * other node subscribes, the server answers at once with "no responders" and
 * the reply is the local one (404/202 without waiting). Otherwise every node
 * that holds the user delivers (no queue groups) and answers "TR2 <status>
 * <confirmed> <its id> <its peer set>". The asker waits for the union of the
 * sets it heard (and its own set, if it holds the user too): once every node
 * of it answered, the reply goes at once; else at --handoff-timeout-ms with
 * what it has. Any confirmed connection anywhere -> 200 with "connections"
 * summed over the confirmations and "nodes" counted; none -> 503 unavailable
 * (a node may hold the user and be slow: never a false 404). A node not
 * heard on "tether.n" for DEAD_NS (killed, stopped, cut off) is left out of
 * the sets, so it costs at most one timeout per delivery while it is being
 * noticed and nothing after. Broker down: local delivery goes on; a local
 * 200 stays 200 (nodes:1), a user not held here gets 503, since they may be
 * held elsewhere. After a reconnect libnats restores the subscriptions and
 * this node says hello again for every user it holds.
 *
 * Presence asks every live node on "tether.p" (presence is rare; last_seen
 * must be the latest anywhere, also for a user who is connected nowhere now)
 * and is gathered by the same rule: done when every node heard on
 * "tether.n" answered, else at the timeout, marked partial.
 *
 * Threads. libnats runs in its external event-loop mode on the notifier's
 * io_uring loop: it starts no socket reader, and the loop reads and writes
 * the broker socket for it (natsConnection_ProcessReadEvent/WriteEvent).
 * Its el_* callbacks, called with its connection lock held from the loop
 * thread or from its own reconnect and ping-timer threads, only store what
 * it wants polled in one atomic word (rn->el) and, from another thread,
 * write the route's eventfd; the loop keeps one io_uring poll armed per
 * wanted direction. What the loop publishes during one iteration sits in
 * libnats' buffer and leaves in one send at flush(), and a holder's
 * confirmations to one asker leave as one message ("TR3", batched per
 * iteration), so a burst of notifications costs a few syscalls and broker
 * messages, not a few per notification. Messages never cross a thread
 * either: libnats hands each message it parses (inside ProcessReadEvent, on
 * the loop thread) to its connection message filter, which notes ours in a
 * loop-only array; the loop handles them right after the read, in the order
 * the broker sent them (filter_install says why this hook, not in nats.h,
 * is used only with libnats 3.4). Without it (another libnats, or
 * TETHER_NATS_NO_FILTER=1) they take the subscriptions' path: a holder's
 * batched replies come on "<inbox>.b", a synchronous subscription (libnats
 * appends to its list while parsing and wakes nobody, since nobody waits on
 * it) emptied with NextMsg(0) right after each read; everything else
 * (requests, hellos, tether.n, tether.p, single replies and the server's
 * "no responders" on "<inbox>.a.*", which NextMsg would turn into an error
 * without its subject) reaches our callbacks on libnats' one global
 * delivery thread, which push them onto a lock-free list and write the
 * eventfd on empty -> not empty; the loop keeps one io_uring read armed on
 * that eventfd (user_data TH_UD_ROUTE with idx EV_IDX) and its completion
 * drains the list. Either way only the loop thread touches the pending,
 * presence, node and interest tables and the local route. The status
 * callbacks (down, up, reconnected) always come from libnats' threads, over
 * the list. natsMsg_Destroy wakes libnats' garbage-collector thread;
 * handled messages are destroyed in batches (msg_done) so it wakes once per
 * batch, not once per message.
 */
#include <dlfcn.h>
#include <errno.h>
#include <inttypes.h>
#include <nats/nats.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <unistd.h>

#include "notifier/api.h"
#include "notifier/cluster_msg.h"
#include "notifier/metrics.h"
#include "notifier/nats_opts.h"
#include "notifier/route.h"
#include "shm/proto/userid.h"
#include "shm/rt/clock.h"
#include "shm/rt/log.h"
#include "shm/rt/mpsc.h"
#include "shm/rt/stage.h"

#define EV_IDX TH_UD_IDX_MAX             /* the eventfd read; local route's idx stay far below */
#define SOCK_IN_IDX (TH_UD_IDX_MAX - 1)  /* POLLIN on libnats' socket */
#define SOCK_OUT_IDX (TH_UD_IDX_MAX - 2) /* POLLOUT on it, while a write is left over */
#define MS_NS (1000ull * 1000)
#define SCAN_NS (100 * MS_NS)
#define SCAN_STEP_NS (50 * 1000ull) /* one step of a registry pass (scan_step) */
#define SCAN_GAP_NS (150 * 1000ull) /* the loop's wait between two steps (I/O ends it at once) */
#define SCAN_CHUNK 256u             /* slots (or buckets) between two looks at the clock */
#define HB_NS (500 * MS_NS)         /* heartbeat period on tether.n */
#define DEAD_NS (2000 * MS_NS)      /* a node silent this long is not waited for */
#define NPEND 4096u                 /* remote deliveries in flight */
#define NPRES 256u                  /* presence questions in flight */
#define NBUCKET 4096u               /* interest table buckets */
#define MAX_NODES 64u               /* other nodes known from their heartbeats */
#define MAX_PEERS 16u               /* other holders one holder remembers per user */
#define PEND_NODES 16u              /* nodes one delivery waits for (more: the timeout) */
#define PRES_CONNS 256u             /* connections one presence answer lists */
#define SUBJ_PREFIX "tether.u."
#define SUBJ_NODES "tether.n"
#define SUBJ_PRESENCE "tether.p"
#define SUBJ_MAX (sizeof(SUBJ_PREFIX) + 2 * TH_USER_MAX + 1)
#define MSG_HDR TH_CM_REQ_HDR
#define TEXT_MAX 2048u /* the text messages (replies, hellos, heartbeats) */
#define PANS_MAX (PRES_CONNS * 64u + 256u)
#define BAD_LOG_NS (1000 * MS_NS)
#define NBATCH 16u                /* askers one iteration's confirmations are batched for */
#define BATCH_BYTES (16u * 1024u) /* a batch goes out once it holds this much */
#define BATCH_TEXT (BATCH_BYTES + TH_CM_LINE_MAX + 32u)
#define NDEAD 128u            /* handled messages whose destroy waits for the next batch */
#define DEAD_BYTES (1u << 20) /* ... or until they hold this much */

enum scan_phase { SCAN_IDLE, SCAN_SLOTS, SCAN_SWEEP };
enum ev_kind { EV_USER, EV_NODES, EV_PRESENCE, EV_REPLY, EV_DOWN, EV_UP, EV_RECONNECTED };

/* How a remote gather ended (tether_route_remote_total{result}). */
enum gather_result { R_COMPLETE, R_TIMEOUT, R_NOT_HELD, R_BROKER_DOWN, R_NRESULTS };
static const char *const result_names[R_NRESULTS] = {"complete", "timeout", "not_held",
                                                     "broker_down"};

struct ev {
    struct th_mpsc_node link; /* first: a taken node is its ev */
    int kind;
    natsMsg *msg; /* owned by the event (NULL for EV_DOWN/UP) */
};

/* Another node, as its heartbeats (or answers) showed it. */
struct node {
    uint64_t id, heard_ns;
    char name[TH_NODE_NAME_MAX + 1];
};

/* A user this node holds: subscribed to its subject, with the other holders. */
struct interest {
    struct interest *next;
    natsSubscription *sub;
    uint64_t mark;
    uint64_t peers[MAX_PEERS];
    unsigned npeers;
    size_t ulen;
    char user[TH_USER_MAX];
};

struct th_route_nats;
struct local_arg {
    struct th_route_nats *rn;
    uint32_t idx, gen;
};

/* The nodes a gather waits for, and which of them answered. */
struct waitset {
    unsigned n, over; /* over: more nodes than fit: wait for the timeout */
    uint64_t id[PEND_NODES];
    uint8_t answered[PEND_NODES];
};

/* One deliver() waiting for the local route and the other nodes. */
struct pend {
    struct local_arg la; /* the local route's callback arg: done comes before any reuse */
    uint32_t gen;
    int used, local_done, asked, no_resp;
    struct th_route_result local;
    unsigned remote_conf, remote_nodes;
    struct waitset ws;
    uint64_t t_pub, deadline;
#ifdef TETHER_STAGES
    uint64_t st_tns; /* the notification's t_ns (stage records) */
#endif
    th_route_done_fn done;
    void *arg;
    uint32_t next_free;
    uint32_t fprev, fnext; /* in rn's FIFO of pending deliveries (deadline order) */
    uint8_t ulen;
    char user[TH_USER_MAX]; /* for the log line at the end */
};

/* One presence question out on tether.p. */
struct pres {
    uint32_t gen;
    int used;
    uint64_t deadline;
    unsigned nwait, nans;
    uint64_t wait[MAX_NODES];
    uint8_t answered[MAX_NODES];
    struct th_route_pconn *conns;
    unsigned nconns;
    int has_ls;
    uint64_t ls;
    th_route_presence_fn done;
    void *arg;
    uint32_t next_free;
};

/*
 * This node's confirmations to one asking node, gathered during one loop
 * iteration and published at flush() as one "TR3" message on its batch
 * subject, "<its inbox>.b" (one broker message per asker per iteration
 * instead of one per delivery).
 */
struct batch {
    char subj[256 + 2];
    size_t slen; /* the asker's batch subject: subj[0..slen) */
    struct th_buf b;
};

/* A request from another node being delivered here; answered on reply. */
struct remote {
    struct remote *prev, *next; /* rn->remotes: freed at destroy if still out */
    struct th_route_nats *rn;
    size_t ulen;
    char user[TH_USER_MAX];
    char reply[256];
};

/*
 * The word rn->el: socket (low 32 bits, all ones = none: connecting,
 * reconnecting, closed), generation (bumped at every attach and detach),
 * and whether libnats wants read and write events polled.
 */
#define EL_NOSOCK 0xffffffffull
#define EL_GEN_SHIFT 32
#define EL_GEN_MASK 0x3fffffffull
#define EL_RD (1ull << 62)
#define EL_WR (1ull << 63)

/* One io_uring poll on libnats' socket: at most one in flight, tagged with seq. */
struct elpoll {
    int armed, cancelling;
    uint32_t seq, gen; /* gen: el_gen of the socket it polls */
};

struct th_route_nats {
    struct th_route base;
    const struct th_config *cfg;
    struct th_reg *reg;
    struct io_uring *ring;
    struct th_route *local;
    natsOptions *opts;
    natsConnection *nc;
    natsSubscription *reply_sub, *inbox_sub, *nodes_sub, *pres_sub; /* inbox_sub: synchronous */
    char inbox[128];
    uint64_t me; /* this node's id */
    char me_hex[17];
    int efd, armed;
    uint64_t efd_buf;
    _Atomic(struct th_mpsc_node *) qhead; /* events pushed by libnats' threads (shm/rt/mpsc.h) */
    struct pend pend[NPEND];
    uint32_t free_head;
    unsigned npend_used;
    uint32_t fhead, ftail; /* pending deliveries, oldest first: one timeout, so deadline order */
    struct pres pres[NPRES];
    uint32_t pres_free;
    unsigned npres_used;
    struct node nodes[MAX_NODES];
    unsigned nnodes;
    struct interest *bucket[NBUCKET];
    uint64_t scan_mark, next_scan, next_hb, next_full_scan, scan_stamp;
    uint64_t scan_next;        /* the pass in progress takes its next step from then */
    uint64_t scan_t0;          /* when the pass in progress began (stage records) */
    uint32_t scan_pos;         /* the pass in progress goes on from this slot or bucket ... */
    int scanning;              /* ... in this phase (a step per iteration, from scan_next) */
    size_t ninterest, nmarked; /* interests held; of them, met by this pass */
    uint64_t bad, bad_logged_ns;
    struct remote *remotes;
    struct batch batch[NBATCH];
    unsigned nbatch;
    char btext[BATCH_TEXT]; /* a received batch as text (loop thread only) */
    natsMsg *dead[NDEAD];   /* handled, destroyed together (msg_done; loop thread only) */
    natsMsg **taken;        /* parsed on the loop thread by the filter, not yet handled */
    unsigned ntaken, taken_cap;
    int filtered; /* libnats' message filter is ours (filter_install) */
    unsigned ndead;
    size_t dead_bytes;
    /*
     * libnats' socket (external event-loop mode) in one word (EL_* below):
     * written by the el_* callbacks on whichever thread libnats calls them
     * from (with its connection lock held, so one at a time), read by the
     * loop, which polls what they ask for (el_sync).
     */
    _Atomic uint64_t el;
    struct elpoll pin, pout; /* the loop's io_uring polls on the socket (loop thread only) */
    pthread_t loop_thread;   /* callbacks from it need no wake: flush() runs before every wait */
    int closing;             /* destroy: queued events are only freed */
    int up;                  /* loop's view of the broker (from EV_DOWN/EV_UP and the status) */
    /* metrics */
    uint64_t reconnects, served, results[R_NRESULTS];
    struct th_hist confirm; /* publish to a holder's answer */
#ifdef TETHER_STAGES
    uint64_t st_pub[256]; /* t_ns of the requests published since the last write */
    unsigned st_npub;
    uint64_t st_poll_ns; /* the last poll completion on the broker socket */
#endif
};

/* ---- libnats threads: queue and wake, nothing else ------------------------ */

static void push(struct th_route_nats *rn, int kind, natsMsg *msg)
{
    struct ev *e = malloc(sizeof(*e));
    if (!e) {
        if (msg)
            natsMsg_Destroy(msg);
        return;
    }
    e->kind = kind;
    e->msg = msg;
    int was_empty = th_mpsc_push(&rn->qhead, &e->link); /* e is the loop's from here on */
    /*
     * Wake the loop only on empty -> not empty: the loop takes the whole
     * queue after each eventfd read, so a non-empty queue always has a wake
     * on its way (one write per burst, not per message).
     */
    uint64_t one = 1;
    if (was_empty && write(rn->efd, &one, sizeof(one)) < 0) { /* EAGAIN: already set */
    }
}

static void on_user_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    (void)sub;
    push(closure, EV_USER, msg);
}

static void on_nodes_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    (void)sub;
    push(closure, EV_NODES, msg);
}

static void on_presence_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    (void)sub;
    push(closure, EV_PRESENCE, msg);
}

static void on_reply_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    (void)sub;
    push(closure, EV_REPLY, msg);
}

static void on_down(natsConnection *nc, void *closure)
{
    (void)nc;
    push(closure, EV_DOWN, NULL);
}

static void on_up(natsConnection *nc, void *closure)
{
    (void)nc;
    push(closure, EV_UP, NULL);
}

static void on_reconnected(natsConnection *nc, void *closure)
{
    (void)nc;
    push(closure, EV_RECONNECTED, NULL);
}

/*
 * The external event-loop callbacks. libnats calls them with its connection
 * lock held, from the loop thread (publish, ProcessRead/WriteEvent) or its
 * own (reconnect, ping timer): they only note what libnats wants under mu
 * and, from another thread, wake the loop, which polls accordingly.
 */
static void el_wake(struct th_route_nats *rn)
{
    uint64_t one = 1;
    if (!pthread_equal(pthread_self(), rn->loop_thread) &&
        write(rn->efd, &one, sizeof(one)) < 0) { /* EAGAIN: a wake is pending anyway */
    }
}

/* rn->el = f(rn->el), then wake the loop when called from another thread. */
static void el_update(struct th_route_nats *rn, uint64_t (*f)(uint64_t, uint64_t), uint64_t arg)
{
    uint64_t old = atomic_load(&rn->el);
    while (!atomic_compare_exchange_weak(&rn->el, &old, f(old, arg)))
        ;
    el_wake(rn);
}

static uint64_t el_next_gen(uint64_t w)
{
    return (((w >> EL_GEN_SHIFT) + 1) & EL_GEN_MASK) << EL_GEN_SHIFT;
}

static uint64_t el_f_attach(uint64_t w, uint64_t sock)
{
    return el_next_gen(w) | (sock & EL_NOSOCK) | EL_RD | (w & EL_WR); /* read from now on */
}

static uint64_t el_f_detach(uint64_t w, uint64_t unused)
{
    (void)unused;
    return el_next_gen(w) | EL_NOSOCK;
}

static uint64_t el_f_flag(uint64_t w, uint64_t flag_on)
{
    uint64_t flag = flag_on & (EL_RD | EL_WR);
    return flag_on & 1 ? w | flag : w & ~flag;
}

static natsStatus el_attach(void **user, void *loop, natsConnection *nc, natsSock sock)
{
    (void)nc;
    struct th_route_nats *rn = loop;
    *user = rn;
    el_update(rn, el_f_attach, (uint64_t)(uint32_t)sock);
    return NATS_OK;
}

static natsStatus el_read(void *user, bool add)
{
    el_update(user, el_f_flag, EL_RD | (add ? 1 : 0));
    return NATS_OK;
}

static natsStatus el_write(void *user, bool add)
{
    el_update(user, el_f_flag, EL_WR | (add ? 1 : 0));
    return NATS_OK;
}

static natsStatus el_detach(void *user)
{
    el_update(user, el_f_detach, 0);
    return NATS_OK;
}

/* ---- handled messages ------------------------------------------------------- */

/*
 * natsMsg_Destroy hands the message to libnats' garbage-collector thread
 * (a lock and, while that thread sleeps, a condition signal: a futex wake
 * and a context switch per message when done one by one). Handled
 * messages are kept here and destroyed NDEAD at a time (or once they hold
 * DEAD_BYTES, and at every registry-scan tick), so the collector wakes
 * once per batch. Loop thread only.
 */
static void msgs_free(struct th_route_nats *rn)
{
    for (unsigned i = 0; i < rn->ndead; i++)
        natsMsg_Destroy(rn->dead[i]);
    rn->ndead = 0;
    rn->dead_bytes = 0;
}

static void msg_done(struct th_route_nats *rn, natsMsg *m)
{
    if (rn->closing) { /* destroy: no batch outlives the library */
        natsMsg_Destroy(m);
        return;
    }
    if (rn->ndead == NDEAD)
        msgs_free(rn);
    rn->dead[rn->ndead++] = m;
    rn->dead_bytes += (size_t)natsMsg_GetDataLength(m);
    if (rn->dead_bytes >= DEAD_BYTES)
        msgs_free(rn);
}

/* ---- subjects and message text --------------------------------------------- */

static void user_subject(char out[SUBJ_MAX], const char *user, size_t ulen)
{
    size_t n = sizeof(SUBJ_PREFIX) - 1;
    memcpy(out, SUBJ_PREFIX, n);
    th_cm_hex_put(out + n, user, ulen);
}

/* The message's data as a NUL-terminated string in buf; -EINVAL if too big or holding NULs. */
static int msg_text(natsMsg *m, char *buf, size_t cap)
{
    int n = natsMsg_GetDataLength(m);
    return n <= 0 ? -EINVAL : th_cm_text(natsMsg_GetData(m), (size_t)n, buf, cap);
}

/* Bad input from the broker: counted, logged once a second at most. */
static void bad_input(struct th_route_nats *rn, const char *why)
{
    rn->bad++;
    uint64_t now = th_mono_ns();
    if (now - rn->bad_logged_ns >= BAD_LOG_NS) {
        rn->bad_logged_ns = now;
        th_warn("[Cluster] node %s dropped a malformed broker message (%s); %llu so far",
                rn->cfg->node, why, (unsigned long long)rn->bad);
    }
}

static int broker_up(struct th_route_nats *rn)
{
    return rn->nc && natsConnection_Status(rn->nc) == NATS_CONN_STATUS_CONNECTED;
}

/* ---- nodes: who is alive (heartbeats on tether.n) -------------------------- */

static struct node *node_find(struct th_route_nats *rn, uint64_t id)
{
    for (unsigned i = 0; i < rn->nnodes; i++)
        if (rn->nodes[i].id == id)
            return &rn->nodes[i];
    return NULL;
}

/* Heard from node id just now (name NULL: keep the one known). */
static struct node *node_heard(struct th_route_nats *rn, uint64_t id, const char *name)
{
    struct node *n = node_find(rn, id);
    uint64_t now = th_mono_ns();
    if (!n) {
        if (rn->nnodes < MAX_NODES) {
            n = &rn->nodes[rn->nnodes++];
        } else { /* full: the longest silent one goes */
            n = &rn->nodes[0];
            for (unsigned i = 1; i < rn->nnodes; i++)
                if (rn->nodes[i].heard_ns < n->heard_ns)
                    n = &rn->nodes[i];
        }
        memset(n, 0, sizeof(*n));
        n->id = id;
    }
    n->heard_ns = now;
    if (name)
        snprintf(n->name, sizeof(n->name), "%s", name);
    return n;
}

/* Heard within DEAD_NS: a node worth waiting for. Unknown ids are not. */
static int node_live(struct th_route_nats *rn, uint64_t id, uint64_t now)
{
    struct node *n = node_find(rn, id);
    return n && now - n->heard_ns < DEAD_NS;
}

static void heartbeat(struct th_route_nats *rn)
{
    char body[TH_NODE_NAME_MAX + 32];
    int n = snprintf(body, sizeof(body), "TK1 %s %s", rn->me_hex, rn->cfg->node);
    natsConnection_Publish(rn->nc, SUBJ_NODES, body, n); /* lost: the next one counts */
}

/* "TK1 <id> <name>" (alive) or "TX1 <id>" (leaving) on tether.n. */
static void on_nodes(struct th_route_nats *rn, natsMsg *m)
{
    char buf[TEXT_MAX], name[TH_CM_NAME_MAX + 1];
    uint64_t id;
    int leaving;
    if (msg_text(m, buf, sizeof(buf)) < 0 || th_cm_node(buf, &id, &leaving, name) < 0) {
        bad_input(rn, "node message");
        return;
    }
    if (!leaving) {
        node_heard(rn, id, name);
        return;
    }
    struct node *n = node_find(rn, id);
    if (n)
        n->heard_ns = th_mono_ns() - DEAD_NS; /* gone: never waited for again */
}

/* ---- interest: subscribe while the registry holds the user ----------------- */

static uint32_t hash_user(const char *u, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)u[i]) * 16777619u;
    return h % NBUCKET;
}

static struct interest *interest_find(struct th_route_nats *rn, const char *user, size_t ulen)
{
    for (struct interest *it = rn->bucket[hash_user(user, ulen)]; it; it = it->next)
        if (it->ulen == ulen && memcmp(it->user, user, ulen) == 0)
            return it;
    return NULL;
}

/* Remember another holder (a dead one makes room when the set is full). */
static void peer_add(struct th_route_nats *rn, struct interest *it, uint64_t id)
{
    for (unsigned i = 0; i < it->npeers; i++)
        if (it->peers[i] == id)
            return;
    if (it->npeers < MAX_PEERS) {
        it->peers[it->npeers++] = id;
        return;
    }
    uint64_t now = th_mono_ns();
    for (unsigned i = 0; i < it->npeers; i++)
        if (!node_live(rn, it->peers[i], now)) {
            it->peers[i] = id;
            return;
        }
}

static void peer_del(struct interest *it, uint64_t id)
{
    for (unsigned i = 0; i < it->npeers; i++)
        if (it->peers[i] == id) {
            it->peers[i] = it->peers[--it->npeers];
            return;
        }
}

/*
 * "TH1 <me>" on the user's subject: the other holders add us and answer
 * on that subject too ("TI1"). No reply inbox: a lone holder's hello would
 * draw a "no responders" status from the server for nothing.
 */
static void say_hello(struct th_route_nats *rn, struct interest *it)
{
    char subj[SUBJ_MAX], body[24];
    user_subject(subj, it->user, it->ulen);
    int n = snprintf(body, sizeof(body), "TH1 %s", rn->me_hex);
    natsConnection_Publish(rn->nc, subj, body, n); /* lost: fewer early answers */
}

static void say_bye(struct th_route_nats *rn, struct interest *it)
{
    char subj[SUBJ_MAX], body[24];
    user_subject(subj, it->user, it->ulen);
    int n = snprintf(body, sizeof(body), "TB1 %s", rn->me_hex);
    natsConnection_Publish(rn->nc, subj, body, n);
}

static int scan_visit(const struct th_conn_info *ci, void *arg)
{
    struct th_route_nats *rn = arg;
    size_t ulen = strnlen(ci->user, TH_USER_MAX);
    if (!ulen)
        return 0;
    struct interest *it = interest_find(rn, ci->user, ulen);
    if (it) {
        rn->nmarked += it->mark != rn->scan_mark;
        it->mark = rn->scan_mark;
        return 0;
    }
    it = calloc(1, sizeof(*it));
    if (!it)
        return 0; /* next scan tries again */
    char subj[SUBJ_MAX];
    user_subject(subj, ci->user, ulen);
    natsStatus s = natsConnection_Subscribe(&it->sub, rn->nc, subj, on_user_msg, rn);
    if (s != NATS_OK) {
        th_warn("[Cluster] node %s: subscribe for user %.*s failed: %s", rn->cfg->node, (int)ulen,
                ci->user, natsStatus_GetText(s));
        free(it);
        return 0;
    }
    memcpy(it->user, ci->user, ulen);
    it->ulen = ulen;
    it->mark = rn->scan_mark;
    rn->ninterest++;
    rn->nmarked++;
    struct interest **b = &rn->bucket[hash_user(ci->user, ulen)];
    it->next = *b;
    *b = it;
    if (rn->up)
        say_hello(rn, it); /* down: said for every user when the broker is back */
    return 0;
}

/*
 * A user the pass did not meet: still here after all? A connection that
 * moved to a slot the pass had already gone by (a reconnect during the
 * pass) is found by its user in the index: no unsubscribe, no bye.
 */
static int still_held(struct th_route_nats *rn, const struct interest *it)
{
    struct th_conn_ref ref;
    return th_reg_find_conns(rn->reg, it->user, it->ulen, &ref, 1) > 0;
}

/* After the slots: drop, in bucket i, the interest of every user the pass did not meet. */
static void sweep_bucket(struct th_route_nats *rn, unsigned i)
{
    for (struct interest **p = &rn->bucket[i]; *p;) {
        struct interest *it = *p;
        if (it->mark == rn->scan_mark || still_held(rn, it)) {
            p = &it->next;
            continue;
        }
        *p = it->next;
        rn->ninterest--;
        if (rn->up)
            say_bye(rn, it);
        natsSubscription_Unsubscribe(it->sub); /* fails only when closed: nothing to undo */
        natsSubscription_Destroy(it->sub);
        free(it);
    }
}

/*
 * One step of the pass, at most SCAN_STEP_NS (a look at the clock every
 * SCAN_CHUNK slots or buckets), at the end of a flush (what the iteration
 * queued has left), so the loop goes back to its I/O between steps: done
 * at once, a pass over 65,536 slots and 10,000 users took milliseconds,
 * and every notification arriving meanwhile waited for it. The next step
 * is due SCAN_GAP_NS after this one ends (scan_next), and the loop's wait
 * runs until then (nats_next_deadline): a pass takes at most a quarter of
 * a CPU instead of all of it for its milliseconds, so on a small machine
 * the processes a notification goes through (the broker, this node's
 * worker, the other nodes' notifiers) are not queued behind it, and I/O
 * in the gap still wakes the loop at once. Phase SCAN_SLOTS visits the
 * slots from scan_pos; then, only if some interest was not met (nmarked <
 * ninterest: a user left), SCAN_SWEEP goes over the buckets.
 */
static void scan_step(struct th_route_nats *rn)
{
    uint64_t t0 = th_mono_ns(), t = t0;
    uint32_t n = rn->reg->hdr->nslots;
    while (rn->scanning == SCAN_SLOTS && t - t0 < SCAN_STEP_NS) {
        rn->scan_pos = th_reg_foreach_range(rn->reg, rn->scan_pos, SCAN_CHUNK, scan_visit, rn);
        if (rn->scan_pos >= n) {
            rn->scanning = rn->nmarked < rn->ninterest ? SCAN_SWEEP : SCAN_IDLE;
            rn->scan_pos = 0;
        }
        t = th_mono_ns();
    }
    while (rn->scanning == SCAN_SWEEP && t - t0 < SCAN_STEP_NS) {
        for (unsigned k = 0; k < SCAN_CHUNK && rn->scan_pos < NBUCKET; k++)
            sweep_bucket(rn, rn->scan_pos++);
        if (rn->scan_pos >= NBUCKET)
            rn->scanning = SCAN_IDLE;
        t = th_mono_ns();
    }
    rn->scan_next = t + SCAN_GAP_NS;
    if (rn->scanning == SCAN_IDLE)
        TH_STAGE(rn->scan_t0, TH_ST_SCAN, t);
}

/*
 * The registry changes users only by claims and releases, which the roles
 * count (connections_opened/closed, bumped after the slot changed): while
 * neither moved there is nothing to scan for. A full pass still runs every
 * second, whatever the counters say (a writer killed between a claim and
 * its count).
 */
static void maybe_scan(struct th_route_nats *rn, uint64_t now)
{
    const struct th_counters_sh *c = &rn->reg->hdr->counters;
    uint64_t stamp = atomic_load_explicit(&c->connections_opened, memory_order_acquire) +
                     atomic_load_explicit(&c->connections_closed, memory_order_acquire);
    if (rn->scanning || (stamp == rn->scan_stamp && now < rn->next_full_scan))
        return;
    rn->scan_stamp = stamp;
    rn->next_full_scan = now + 10 * SCAN_NS;
    rn->scan_mark++;
    rn->nmarked = 0;
    rn->scan_pos = 0;
    rn->scanning = SCAN_SLOTS; /* its steps follow the flushes (nats_flush) */
    rn->scan_next = now;       /* the first at once */
    rn->scan_t0 = now;
}

/* Broker back: the others may have come and gone meanwhile; ask again. */
static void rehello_all(struct th_route_nats *rn)
{
    for (unsigned i = 0; i < NBUCKET; i++)
        for (struct interest *it = rn->bucket[i]; it; it = it->next) {
            it->npeers = 0;
            say_hello(rn, it);
        }
}

/* ---- waitsets: the nodes a delivery waits for -------------------------------- */

static int ws_find(const struct waitset *w, uint64_t id)
{
    for (unsigned i = 0; i < w->n; i++)
        if (w->id[i] == id)
            return (int)i;
    return -1;
}

/* Wait for id too (not ourselves, not a node silent for DEAD_NS). */
static void ws_expect(struct th_route_nats *rn, struct waitset *w, uint64_t id, uint64_t now)
{
    if (id == rn->me || ws_find(w, id) >= 0 || !node_live(rn, id, now))
        return;
    if (w->n == PEND_NODES) {
        w->over = 1;
        return;
    }
    w->id[w->n] = id;
    w->answered[w->n++] = 0;
}

/* id answered; returns 0 for a first answer, -EEXIST for a repeat. */
static int ws_answered(struct waitset *w, uint64_t id)
{
    int i = ws_find(w, id);
    if (i >= 0) {
        if (w->answered[i])
            return -EEXIST;
        w->answered[i] = 1;
        return 0;
    }
    if (w->n == PEND_NODES) {
        w->over = 1;
        return 0;
    }
    w->id[w->n] = id;
    w->answered[w->n++] = 1;
    return 0;
}

static int ws_complete(const struct waitset *w)
{
    if (w->n == 0 || w->over)
        return 0;
    for (unsigned i = 0; i < w->n; i++)
        if (!w->answered[i])
            return 0;
    return 1;
}

/* ---- pending deliveries of this node --------------------------------------- */

#define NO_PEND UINT32_MAX

static void fifo_unlink(struct th_route_nats *rn, uint32_t i)
{
    struct pend *p = &rn->pend[i];
    if (p->fprev != NO_PEND)
        rn->pend[p->fprev].fnext = p->fnext;
    else
        rn->fhead = p->fnext;
    if (p->fnext != NO_PEND)
        rn->pend[p->fnext].fprev = p->fprev;
    else
        rn->ftail = p->fprev;
}

static void fifo_append(struct th_route_nats *rn, uint32_t i)
{
    struct pend *p = &rn->pend[i];
    p->fnext = NO_PEND;
    p->fprev = rn->ftail;
    if (rn->ftail != NO_PEND)
        rn->pend[rn->ftail].fnext = i;
    else
        rn->fhead = i;
    rn->ftail = i;
}

static void pend_finish(struct th_route_nats *rn, uint32_t i, enum gather_result why)
{
    struct pend *p = &rn->pend[i];
    struct th_route_result res = p->local;
    unsigned local_conf = p->local.status == 200 ? p->local.confirmed : 0;
    unsigned conf = local_conf + p->remote_conf;
    unsigned nodes = (local_conf ? 1u : 0u) + p->remote_nodes;
    if (conf) {
        res.status = 200;
        res.confirmed = conf;
        res.nodes = nodes;
    } else if (why != R_NOT_HELD) {
        res.status = 503; /* broker away or a node may hold the user: never a false 404 */
        res.confirmed = 0;
    }
    rn->results[why]++;
    if (why == R_COMPLETE || why == R_TIMEOUT)
        th_info("[Cluster] User %.*s: %u connection(s) confirmed on %u other node(s)%s on node %s",
                (int)p->ulen, p->user, p->remote_conf, p->remote_nodes,
                why == R_TIMEOUT ? ", gave up waiting at the handoff timeout" : "", rn->cfg->node);
    th_route_done_fn done = p->done;
    void *arg = p->arg;
    p->used = 0;
    p->gen++;
    fifo_unlink(rn, i);
    p->next_free = rn->free_head;
    rn->free_head = i;
    rn->npend_used--;
    done(arg, &res);
}

static void pend_check(struct th_route_nats *rn, uint32_t i, uint64_t now)
{
    struct pend *p = &rn->pend[i];
    if (!p->used || !p->local_done)
        return;
    if (!p->asked)
        pend_finish(rn, i, R_BROKER_DOWN);
    else if (p->no_resp)
        pend_finish(rn, i, R_NOT_HELD);
    else if (ws_complete(&p->ws))
        pend_finish(rn, i, R_COMPLETE);
    else if (now >= p->deadline)
        pend_finish(rn, i, R_TIMEOUT);
}

static void on_local_done(void *arg, const struct th_route_result *res)
{
    struct local_arg *la = arg;
    struct th_route_nats *rn = la->rn;
    uint32_t i = la->idx, gen = la->gen;
    struct pend *p = &rn->pend[i];
    if (!p->used || p->gen != gen)
        return;
    p->local = *res;
    p->local_done = 1;
    pend_check(rn, i, th_mono_ns());
}

/* Publish the request on the user's subject; 1 when it went out. */
static int ask_holders(struct th_route_nats *rn, uint32_t i, const char *user, size_t ulen,
                       const char *frame, size_t flen, uint64_t nseq)
{
    struct pend *p = &rn->pend[i];
    char subj[SUBJ_MAX], reply[sizeof(rn->inbox) + 26];
    char *msg = malloc(MSG_HDR + flen);
    if (!msg)
        return 0;
    user_subject(subj, user, ulen);
    snprintf(reply, sizeof(reply), "%s.a.%u_%u", rn->inbox, i, p->gen);
    memcpy(msg, "TN1", 4); /* with its NUL: notifier/cluster_msg.h */
    for (int k = 0; k < 8; k++)
        msg[4 + k] = (char)(nseq >> (8 * k));
    memcpy(msg + MSG_HDR, frame, flen);
    p->t_pub = th_mono_ns();
    natsStatus s = natsConnection_PublishRequest(rn->nc, subj, reply, msg, (int)(MSG_HDR + flen));
    free(msg);
#ifdef TETHER_STAGES
    p->st_tns = th_stage_tns(frame, flen);
    TH_STAGE(p->st_tns, TH_ST_R_PUB, th_mono_ns());
    if (rn->st_npub < sizeof(rn->st_pub) / sizeof(rn->st_pub[0]))
        rn->st_pub[rn->st_npub++] = p->st_tns;
#endif
    if (s != NATS_OK) {
        th_warn("[Cluster] node %s: publish for user %.*s failed: %s", rn->cfg->node, (int)ulen,
                user, natsStatus_GetText(s));
        return 0;
    }
    /* Holding the user too: the holders we know are waited for as well. */
    struct interest *it = interest_find(rn, user, ulen);
    for (unsigned k = 0; it && k < it->npeers; k++)
        ws_expect(rn, &p->ws, it->peers[k], p->t_pub);
    return 1;
}

static int nats_deliver(struct th_route *r, const char *user, size_t ulen, const char *frame,
                        size_t flen, uint64_t nseq, unsigned ho_flags, th_route_done_fn done,
                        void *arg)
{
    struct th_route_nats *rn = (struct th_route_nats *)r;
    if (rn->free_head == UINT32_MAX || ulen == 0 || ulen > TH_USER_MAX)
        return -EAGAIN;
    uint32_t i = rn->free_head;
    struct pend *p = &rn->pend[i];
    rn->free_head = p->next_free;
    rn->npend_used++;
    fifo_append(rn, i);
    p->used = 1;
    p->local_done = p->asked = p->no_resp = 0;
    p->remote_conf = p->remote_nodes = 0;
    memset(&p->ws, 0, sizeof(p->ws));
    memset(&p->local, 0, sizeof(p->local));
    p->done = done;
    p->arg = arg;
    p->ulen = (uint8_t)ulen;
    memcpy(p->user, user, ulen);
    p->deadline = th_mono_ns() + (uint64_t)rn->cfg->handoff_timeout_ms * MS_NS;
    uint32_t gen = p->gen;
    if (broker_up(rn))
        p->asked = ask_holders(rn, i, user, ulen, frame, flen, nseq);
    p->la = (struct local_arg){rn, i, gen};
    int rc = rn->local->ops->deliver(rn->local, user, ulen, frame, flen, nseq, ho_flags,
                                     on_local_done, &p->la);
    if (rc < 0) {
        if (p->used && p->gen == gen) {
            p->local.status = 503;
            p->local_done = 1;
            pend_check(rn, i, th_mono_ns());
        }
    }
    return 0;
}

/* Node rp->id's answer for delivery idx/gen: count it, wait for the holders it knows too. */
static void apply_reply(struct th_route_nats *rn, uint32_t idx, uint32_t gen,
                        const struct th_cm_reply *rp, uint64_t now)
{
    if (idx >= NPEND)
        return;
    struct pend *p = &rn->pend[idx];
    if (!p->used || p->gen != gen)
        return; /* late: that delivery was answered */
    if (ws_answered(&p->ws, rp->id) < 0)
        return; /* a node answers once */
    node_heard(rn, rp->id, NULL);
    th_hist_add(&rn->confirm, now - p->t_pub);
    TH_STAGE(p->st_tns, TH_ST_R_REPLY, now);
    if (rp->status == 200 && rp->confirmed) {
        p->remote_conf += rp->confirmed;
        p->remote_nodes++;
    }
    for (unsigned k = 0; k < rp->npeers; k++)
        ws_expect(rn, &p->ws, rp->peers[k], now);
    pend_check(rn, idx, now);
}

/* "TR2 <status> <confirmed> <id> [<peer id>...]" from a node that holds the user. */
static void on_deliver_reply(struct th_route_nats *rn, natsMsg *m, uint32_t idx, uint32_t gen)
{
    struct pend *p = &rn->pend[idx];
    if (!p->used || p->gen != gen)
        return; /* late: that delivery was answered */
    uint64_t now = th_mono_ns();
    if (natsMsg_IsNoResponders(m)) {
        p->no_resp = 1;
        pend_check(rn, idx, now);
        return;
    }
    char buf[TEXT_MAX];
    struct th_cm_reply rp;
    if (msg_text(m, buf, sizeof(buf)) < 0 || th_cm_reply(buf, &rp) < 0) {
        bad_input(rn, "reply body");
        return;
    }
    apply_reply(rn, idx, gen, &rp, now);
}

/* "TR3 <id>\n" + "<idx>_<gen> <status> <confirmed> [<peer id>...]\n" lines: one holder's batch. */
static void on_reply_batch(struct th_route_nats *rn, natsMsg *m)
{
    struct th_cm_reply rp = {0};
    int off;
    if (msg_text(m, rn->btext, sizeof(rn->btext)) < 0 ||
        (off = th_cm_reply_batch(rn->btext, &rp.id)) < 0) {
        bad_input(rn, "reply batch");
        return;
    }
    uint64_t now = th_mono_ns();
    uint32_t idx, gen;
    size_t o = (size_t)off;
    int rc;
    while ((rc = th_cm_reply_line(rn->btext, &o, &idx, &gen, &rp)) == 1)
        apply_reply(rn, idx, gen, &rp, now); /* lines before a bad one count */
    if (rc < 0)
        bad_input(rn, "reply batch line");
}

/* ---- presence: ask every live node ------------------------------------------ */

static void pres_finish(struct th_route_nats *rn, uint32_t i, int partial)
{
    struct pres *q = &rn->pres[i];
    struct th_route_presence res = {.conns = q->conns,
                                    .n = q->nconns,
                                    .has_last_seen = q->has_ls,
                                    .last_seen_ns = q->ls,
                                    .nodes = q->nans,
                                    .partial = partial};
    th_route_presence_fn done = q->done;
    void *arg = q->arg;
    struct th_route_pconn *conns = q->conns;
    q->conns = NULL;
    q->used = 0;
    q->gen++;
    q->next_free = rn->pres_free;
    rn->pres_free = i;
    rn->npres_used--;
    done(arg, &res); /* may ask again: the slot is free already */
    free(conns);
}

static void pres_check(struct th_route_nats *rn, uint32_t i, uint64_t now)
{
    struct pres *q = &rn->pres[i];
    if (!q->used)
        return;
    unsigned waiting = 0;
    for (unsigned k = 0; k < q->nwait; k++)
        waiting += !q->answered[k];
    if (!waiting)
        pres_finish(rn, i, 0);
    else if (now >= q->deadline)
        pres_finish(rn, i, 1);
}

static int nats_presence(struct th_route *r, const char *user, size_t ulen,
                         th_route_presence_fn done, void *arg)
{
    struct th_route_nats *rn = (struct th_route_nats *)r;
    if (rn->pres_free == UINT32_MAX || ulen == 0 || ulen > TH_USER_MAX)
        return -EAGAIN;
    uint32_t i = rn->pres_free;
    struct pres *q = &rn->pres[i];
    rn->pres_free = q->next_free;
    rn->npres_used++;
    uint64_t now = th_mono_ns();
    q->used = 1;
    q->nwait = q->nans = q->nconns = 0;
    q->has_ls = 0;
    q->ls = 0;
    q->conns = NULL;
    q->done = done;
    q->arg = arg;
    q->deadline = now + (uint64_t)rn->cfg->handoff_timeout_ms * MS_NS;
    if (!broker_up(rn)) {
        pres_finish(rn, i, 1);
        return 0;
    }
    for (unsigned k = 0; k < rn->nnodes; k++)
        if (now - rn->nodes[k].heard_ns < DEAD_NS) {
            q->wait[q->nwait] = rn->nodes[k].id;
            q->answered[q->nwait++] = 0;
        }
    char body[8 + 2 * TH_USER_MAX], reply[sizeof(rn->inbox) + 26];
    memcpy(body, "TP1 ", 4);
    size_t n = 4 + th_cm_hex_put(body + 4, user, ulen);
    snprintf(reply, sizeof(reply), "%s.a.p%u_%u", rn->inbox, i, q->gen);
    if (natsConnection_PublishRequest(rn->nc, SUBJ_PRESENCE, reply, body, (int)n) != NATS_OK) {
        pres_finish(rn, i, 1);
        return 0;
    }
    pres_check(rn, i, now); /* no other live node: answered at once */
    return 0;
}

/* "TP1 <hex user>": answer with this node's connections of the user and its LastSeen. */
static void on_presence_question(struct th_route_nats *rn, natsMsg *m)
{
    char buf[TEXT_MAX], user[TH_USER_MAX];
    const char *reply = natsMsg_GetReply(m);
    int ulen;
    if (msg_text(m, buf, sizeof(buf)) < 0 || !reply ||
        (ulen = th_cm_presence_question(buf, user)) < 0) {
        bad_input(rn, "presence question");
        return;
    }
    static struct th_conn_info infos[PRES_CONNS];
    int n = th_reg_find_user(rn->reg, user, (size_t)ulen, infos, PRES_CONNS);
    uint64_t ls = 0;
    int has_ls = th_reg_last_seen(rn->reg, user, (size_t)ulen, &ls) == 1;
    struct th_buf b = {0};
    th_buf_printf(&b, "TQ1 %s %d %" PRIu64 " %s\n", rn->me_hex, has_ls, has_ls ? ls : 0,
                  rn->cfg->node);
    for (int k = 0; k < n; k++)
        th_buf_printf(&b, "%u %" PRIu64 " %" PRIu64 "\n", infos[k].worker, infos[k].connected_at,
                      infos[k].last_seen);
    if (!b.oom)
        natsConnection_Publish(rn->nc, reply, b.p, (int)b.len);
    th_buf_free(&b);
}

/* One presence answer's connection lines into q (bounded by PRES_CONNS). */
static int pres_take_lines(struct pres *q, const char *s, size_t off, const char *name)
{
    struct th_cm_pconn pc;
    int rc;
    while ((rc = th_cm_presence_line(s, &off, &pc)) == 1) {
        if (q->nconns >= PRES_CONNS)
            continue;
        struct th_route_pconn *c = &q->conns[q->nconns++];
        snprintf(c->node, sizeof(c->node), "%s", name);
        c->worker = pc.worker;
        c->connected_at = pc.connected_at;
        c->last_seen = pc.last_seen;
        if (!q->has_ls || pc.last_seen > q->ls)
            q->has_ls = 1, q->ls = pc.last_seen;
    }
    return rc;
}

/* "TQ1 <id> <has_ls> <ls> <name>\n" then "<worker> <connected_at> <last_seen>\n" lines. */
static void on_presence_answer(struct th_route_nats *rn, natsMsg *m, uint32_t idx, uint32_t gen)
{
    struct pres *q = &rn->pres[idx];
    if (!q->used || q->gen != gen)
        return;
    if (natsMsg_IsNoResponders(m)) {
        pres_finish(rn, idx, 0); /* no other node at all */
        return;
    }
    char *buf = malloc(PANS_MAX);
    struct th_cm_presence_head h;
    int off;
    if (!buf)
        return;
    if (msg_text(m, buf, PANS_MAX) < 0 || (off = th_cm_presence_head(buf, &h)) < 0) {
        bad_input(rn, "presence answer");
        free(buf);
        return;
    }
    if (!q->conns && !(q->conns = calloc(PRES_CONNS, sizeof(*q->conns)))) {
        free(buf);
        return;
    }
    unsigned k;
    for (k = 0; k < q->nwait && q->wait[k] != h.id; k++)
        ;
    if (k < q->nwait && q->answered[k]) {
        free(buf);
        return; /* a node answers once */
    }
    if (pres_take_lines(q, buf, (size_t)off, h.name) < 0)
        bad_input(rn, "presence lines");
    if (h.has_last_seen && (!q->has_ls || h.last_seen > q->ls))
        q->has_ls = 1, q->ls = h.last_seen;
    if (k == q->nwait && k < MAX_NODES)
        q->wait[q->nwait++] = h.id; /* not waited for (no heartbeat yet): a repeat is dropped */
    if (k < q->nwait)
        q->answered[k] = 1;
    q->nans++;
    node_heard(rn, h.id, h.name);
    free(buf);
    pres_check(rn, idx, th_mono_ns());
}

/* ---- replies on our inbox ------------------------------------------------------ */

/* What follows "<inbox>." in subj, or NULL when subj is not on our inbox (the reply path
 * and the loop thread's filter both ask). */
static const char *inbox_token(const struct th_route_nats *rn, const char *subj)
{
    size_t il = strlen(rn->inbox);
    return il && strncmp(subj, rn->inbox, il) == 0 && subj[il] == '.' ? subj + il + 1 : NULL;
}

static void on_reply(struct th_route_nats *rn, natsMsg *m)
{
    const char *tok = inbox_token(rn, natsMsg_GetSubject(m));
    uint32_t idx = 0, gen = 0;
    int kind = -EINVAL;
    if (tok) {
        if (tok[0] == 'a' && tok[1] == '.')
            tok += 2; /* "<inbox>.a.*": single replies ("<inbox>.a.b": a batch from before) */
        kind = th_cm_reply_token(tok, &idx, &gen);
    }
    if (kind == 'b')
        on_reply_batch(rn, m);
    else if (kind == 'p' && idx < NPRES)
        on_presence_answer(rn, m, idx, gen);
    else if (kind == 'd' && idx < NPEND)
        on_deliver_reply(rn, m, idx, gen);
    else
        bad_input(rn, "reply subject");
}

/* ---- messages on a user's subject from other nodes --------------------------- */

static void batch_send(struct th_route_nats *rn, struct batch *bt)
{
    if (rn->nc && !bt->b.oom && bt->b.len)
        natsConnection_Publish(rn->nc, bt->subj, bt->b.p, (int)bt->b.len); /* lost: timeouts */
    bt->b.len = 0;
    bt->b.oom = 0;
}

/* Every batch gathered this iteration goes out (before libnats' buffer is written). */
static void batches_send(struct th_route_nats *rn)
{
    for (unsigned i = 0; i < rn->nbatch; i++)
        batch_send(rn, &rn->batch[i]);
    rn->nbatch = 0;
}

/*
 * Add one confirmation to the batch for the asker whose batch subject is
 * subj[0..slen) (th_cm_batch_subject); 0, or -ENOSPC (no batch free: answer
 * alone).
 */
static int batch_add(struct th_route_nats *rn, const char *subj, size_t slen, const char *line,
                     size_t llen)
{
    struct batch *bt = NULL;
    for (unsigned i = 0; i < rn->nbatch && !bt; i++)
        if (rn->batch[i].slen == slen && memcmp(rn->batch[i].subj, subj, slen) == 0)
            bt = &rn->batch[i];
    if (!bt) {
        if (rn->nbatch == NBATCH || slen + 1 > sizeof(bt->subj))
            return -ENOSPC;
        bt = &rn->batch[rn->nbatch++];
        memcpy(bt->subj, subj, slen + 1);
        bt->slen = slen;
    }
    if (!bt->b.len)
        th_buf_printf(&bt->b, "TR3 %s\n", rn->me_hex);
    th_buf_put(&bt->b, line, llen);
    if (bt->b.len >= BATCH_BYTES)
        batch_send(rn, bt);
    return 0;
}

/*
 * "<idx>_<gen> <status> <confirmed> <peers...>" into the asker's batch (who
 * else it should wait for), or alone as "TR2 ..." when the reply subject is
 * not of the "<inbox>[.a].<idx>_<gen>" form.
 */
static void on_remote_done(void *arg, const struct th_route_result *res)
{
    struct remote *rm = arg;
    struct th_route_nats *rn = rm->rn;
    uint64_t peers[MAX_PEERS];
    unsigned np = 0, conf = res->status == 200 ? res->confirmed : 0;
    struct interest *it = interest_find(rn, rm->user, rm->ulen);
    uint64_t now = th_mono_ns();
    for (unsigned k = 0; it && k < it->npeers; k++)
        if (node_live(rn, it->peers[k], now))
            peers[np++] = it->peers[k];
    const char *dot = strrchr(rm->reply, '.');
    uint32_t idx, gen;
    char line[TH_CM_LINE_MAX], bsubj[sizeof(rm->reply)];
    int bl = th_cm_batch_subject(rm->reply, bsubj, sizeof(bsubj));
    if (bl > 0 && th_cm_reply_token(dot + 1, &idx, &gen) == 'd') {
        size_t n = th_cm_reply_line_put(line, idx, gen, (unsigned)res->status, conf, peers, np);
        if (batch_add(rn, bsubj, (size_t)bl, line, n) == 0)
            goto done;
    }
    char body[64 + MAX_PEERS * 17];
    int n = snprintf(body, sizeof(body), "TR2 %d %u %s", res->status, conf, rn->me_hex);
    for (unsigned k = 0; k < np; k++) {
        body[n++] = ' ';
        th_cm_id_hex(body + n, peers[k]);
        n += 16;
    }
    if (rn->nc && rm->reply[0])
        natsConnection_Publish(rn->nc, rm->reply, body, n); /* lost: the asker times out */
done:
    if (rm->prev)
        rm->prev->next = rm->next;
    else
        rn->remotes = rm->next;
    if (rm->next)
        rm->next->prev = rm->prev;
    free(rm);
}

static void on_request(struct th_route_nats *rn, natsMsg *m, const char *user, int ulen)
{
    int n = natsMsg_GetDataLength(m);
    const char *reply = natsMsg_GetReply(m), *frame;
    size_t flen;
    uint64_t nseq;
    if (n <= 0 || th_cm_request(natsMsg_GetData(m), (size_t)n, &nseq, &frame, &flen) < 0) {
        bad_input(rn, "request: frame empty, over the handoff's size or not UTF-8");
        return;
    }
    if (!reply || strlen(reply) >= sizeof(((struct remote *)0)->reply)) {
        bad_input(rn, "reply inbox");
        return;
    }
    TH_STAGE(th_stage_tns(frame, flen), TH_ST_R_WAKE, th_stage_wake_ns);
    TH_STAGE(th_stage_tns(frame, flen), TH_ST_R_POLL, rn->st_poll_ns);
    TH_STAGE(th_stage_tns(frame, flen), TH_ST_R_REQ, th_mono_ns());
    struct remote *rm = malloc(sizeof(*rm));
    if (!rm)
        return; /* the asker times out: 503 */
    rm->rn = rn;
    rm->prev = NULL;
    rm->next = rn->remotes;
    if (rn->remotes)
        rn->remotes->prev = rm;
    rn->remotes = rm;
    memcpy(rm->user, user, (size_t)ulen);
    rm->ulen = (size_t)ulen;
    snprintf(rm->reply, sizeof(rm->reply), "%s", reply);
    rn->served++;
    /*
     * Flags belong to the asking node: not passed on. The seq is the
     * JetStream mailbox's (mailbox_js.c) when --nats runs with the mailbox
     * on: passed on, so the workers keep it in order with what they replay.
     */
    if (!rn->cfg->mailbox_ttl_s)
        nseq = 0;
    int rc = rn->local->ops->deliver(rn->local, user, (size_t)ulen, frame, flen, nseq, 0,
                                     on_remote_done, rm);
    if (rc < 0) {
        struct th_route_result res = {.status = 503};
        on_remote_done(rm, &res);
    }
}

/* "TH1 <id>" (a new holder: add it, answer with our id) or "TB1 <id>" (it left). */
/*
 * "TH1 <id>" (a new holder: add it, answer "TI1 <me> <hex user>" on the
 * user's subject), "TI1 <id> <hex user>" (a holder answering someone's
 * hello: add it) or "TB1 <id>" (it left).
 */
static void on_holder_news(struct th_route_nats *rn, natsMsg *m, const char *user, int ulen)
{
    char buf[TEXT_MAX], auser[TH_USER_MAX];
    uint64_t id;
    int bye, answer = 0, alen;
    if (msg_text(m, buf, sizeof(buf)) < 0) {
        bad_input(rn, "holder message");
        return;
    }
    if (th_cm_holder(buf, &id, &bye) < 0) {
        alen = th_cm_hello_answer(buf, &id, auser);
        if (alen != ulen || memcmp(auser, user, (size_t)ulen) != 0) {
            bad_input(rn, "holder message");
            return;
        }
        answer = 1;
        bye = 0;
    }
    struct interest *it = interest_find(rn, user, (size_t)ulen);
    if (!it || id == rn->me)
        return; /* not holding (any more): nothing to keep */
    if (bye) {
        peer_del(it, id);
        return;
    }
    node_heard(rn, id, NULL);
    peer_add(rn, it, id);
    if (answer)
        return;
    char body[24 + 2 * TH_USER_MAX];
    int n = snprintf(body, sizeof(body), "TI1 %s ", rn->me_hex);
    n += (int)th_cm_hex_put(body + n, user, (size_t)ulen);
    natsConnection_Publish(rn->nc, natsMsg_GetSubject(m), body, n);
}

static void on_user_subject(struct th_route_nats *rn, natsMsg *m)
{
    char user[TH_USER_MAX];
    int ulen = th_cm_subject_user(natsMsg_GetSubject(m), user);
    int n = natsMsg_GetDataLength(m);
    if (ulen < 0) {
        bad_input(rn, "subject");
        return;
    }
    if (n > 0 && th_cm_is_request(natsMsg_GetData(m), (size_t)n))
        on_request(rn, m, user, ulen);
    else
        on_holder_news(rn, m, user, ulen);
}

/* ---- the broker's state as the loop sees it ----------------------------------- */

static void broker_came_up(struct th_route_nats *rn, int reconnect)
{
    if (reconnect)
        rn->reconnects++;
    if (!rn->up)
        th_info("[Cluster] node %s: broker connected%s", rn->cfg->node,
                reconnect ? " again; subscriptions restored" : "");
    rn->up = 1;
    uint64_t now = th_mono_ns();
    for (unsigned i = 0; i < rn->nnodes; i++)
        rn->nodes[i].heard_ns = now; /* heard nothing while away: not dead for that */
    heartbeat(rn);
    rn->next_hb = now + HB_NS;
    rehello_all(rn);
}

static void drain_queue(struct th_route_nats *rn)
{
    struct ev *e = (struct ev *)th_mpsc_take(&rn->qhead);
    while (e) {
        struct ev *next = (struct ev *)e->link.next;
        switch (rn->closing ? -1 : e->kind) {
        case EV_USER:
            on_user_subject(rn, e->msg);
            break;
        case EV_NODES:
            on_nodes(rn, e->msg);
            break;
        case EV_PRESENCE:
            on_presence_question(rn, e->msg);
            break;
        case EV_REPLY:
            on_reply(rn, e->msg);
            break;
        case EV_DOWN:
            if (rn->up)
                th_warn("[Cluster] node %s: broker connection lost; reconnecting (local "
                        "delivery goes on, users maybe elsewhere get 503)",
                        rn->cfg->node);
            rn->up = 0;
            break;
        case EV_UP:
        case EV_RECONNECTED:
            broker_came_up(rn, e->kind == EV_RECONNECTED);
            break;
        }
        if (e->msg)
            msg_done(rn, e->msg);
        free(e);
        e = next;
    }
}

/* ---- messages taken on the loop thread (libnats' message filter) ----------- */

/*
 * libnats 3.4 parses what the loop reads inside ProcessReadEvent and, before
 * it looks for the subscription, hands every message to the connection's
 * message filter, which may keep it (*msg = NULL). That hook
 * (natsConn_setFilterWithClosure) is not in nats.h: it is looked up at
 * start and used only with libnats 3.4.x, whose processMsg was read for
 * this; else (or with TETHER_NATS_NO_FILTER=1, a diagnostic) messages take
 * the subscriptions' path as before. The filter only notes the message
 * (it runs inside libnats' parser); the loop handles what it noted right
 * after ProcessReadEvent returns, in the order the broker sent it. The
 * subscriptions stay: they are what makes the server route a user's
 * subject here (interest), and the path when the filter is not ours.
 */
typedef void (*filter_fn)(natsConnection *nc, natsMsg **msg, void *closure);
typedef void (*set_filter_fn)(natsConnection *nc, filter_fn f, void *closure);

static int our_subject(const struct th_route_nats *rn, const char *subj)
{
    return strncmp(subj, "tether.", 7) == 0 || inbox_token(rn, subj) != NULL;
}

static void on_parsed(natsConnection *nc, natsMsg **msg, void *closure)
{
    (void)nc;
    struct th_route_nats *rn = closure;
    if (!*msg || !pthread_equal(pthread_self(), rn->loop_thread) ||
        !our_subject(rn, natsMsg_GetSubject(*msg)))
        return; /* libnats delivers it to the subscription */
    if (rn->ntaken == rn->taken_cap) {
        unsigned cap = rn->taken_cap ? 2 * rn->taken_cap : 64;
        natsMsg **t = realloc(rn->taken, cap * sizeof(*t));
        if (!t)
            return;
        rn->taken = t;
        rn->taken_cap = cap;
    }
    rn->taken[rn->ntaken++] = *msg;
    *msg = NULL;
}

static void filter_install(struct th_route_nats *rn)
{
    set_filter_fn set = NULL;
    void *sym = dlsym(RTLD_DEFAULT, "natsConn_setFilterWithClosure");
    const char *v = nats_GetVersion(), *off = getenv("TETHER_NATS_NO_FILTER");
    memcpy(&set, &sym, sizeof(set));
    if (!set || !v || strncmp(v, "3.4.", 4) != 0 || (off && strcmp(off, "1") == 0)) {
        th_info("[Cluster] node %s: broker messages reach the loop through libnats' delivery "
                "thread (libnats %s)",
                rn->cfg->node, v ? v : "?");
        return;
    }
    set(rn->nc, on_parsed, rn);
    rn->filtered = 1;
    th_info("[Cluster] node %s: broker messages handled on the loop thread (libnats %s)",
            rn->cfg->node, v);
}

static void handle_msg(struct th_route_nats *rn, natsMsg *m)
{
    const char *subj = natsMsg_GetSubject(m);
    if (strncmp(subj, SUBJ_PREFIX, sizeof(SUBJ_PREFIX) - 1) == 0)
        on_user_subject(rn, m);
    else if (strcmp(subj, SUBJ_NODES) == 0)
        on_nodes(rn, m);
    else if (strcmp(subj, SUBJ_PRESENCE) == 0)
        on_presence_question(rn, m);
    else if (strncmp(subj, "tether.", 7) == 0)
        bad_input(rn, "subject");
    else
        on_reply(rn, m);
}

/* What the filter noted during the last read, oldest first (a handler never reads). */
static void taken_run(struct th_route_nats *rn)
{
    for (unsigned i = 0; i < rn->ntaken; i++) {
        natsMsg *m = rn->taken[i];
        if (!rn->closing)
            handle_msg(rn, m);
        msg_done(rn, m);
    }
    rn->ntaken = 0;
}

/* ---- the loop's side of the interface --------------------------------------- */

static void arm(struct th_route_nats *rn)
{
    if (rn->armed || rn->efd < 0)
        return;
    struct io_uring_sqe *sqe = th_uring_sqe(rn->ring);
    if (!sqe) {
        th_error("[Cluster] io_uring_get_sqe failed: broker messages wait");
        return;
    }
    io_uring_prep_read(sqe, rn->efd, &rn->efd_buf, sizeof(rn->efd_buf), 0);
    io_uring_sqe_set_data64(sqe, th_ud_make(TH_UD_ROUTE, EV_IDX, 0));
    rn->armed = 1;
}

struct el_state {
    int sock, rd, wr;
    uint32_t gen;
};

static struct el_state el_get(struct th_route_nats *rn)
{
    uint64_t w = atomic_load(&rn->el);
    uint32_t sock = (uint32_t)(w & EL_NOSOCK);
    struct el_state st = {sock == EL_NOSOCK ? -1 : (int)sock, !!(w & EL_RD), !!(w & EL_WR),
                          (uint32_t)((w >> EL_GEN_SHIFT) & EL_GEN_MASK)};
    return st;
}

/*
 * Keep one poll of kind mask on the socket while want holds: arm it, or
 * cancel it once the socket changed (a reconnect) or is no longer wanted.
 * A poll armed on a number libnats closed and reused meanwhile is on the
 * old generation and cancelled as soon as the loop sees the new one.
 */
static void el_poll(struct th_route_nats *rn, struct elpoll *p, uint32_t idx, unsigned mask,
                    const struct el_state *st, int want)
{
    struct io_uring_sqe *sqe;
    if (p->armed) {
        if ((!want || p->gen != st->gen) && !p->cancelling && (sqe = th_uring_sqe(rn->ring))) {
            io_uring_prep_poll_remove(sqe, th_ud_make(TH_UD_ROUTE, idx, p->seq));
            io_uring_sqe_set_data64(sqe, th_ud_make(TH_UD_NONE, 0, 0));
            p->cancelling = 1;
        }
        return;
    }
    if (!want || st->sock < 0 || !(sqe = th_uring_sqe(rn->ring)))
        return; /* no SQE: the next flush tries again */
    if (mask == POLLOUT)
        th_debug("[Cluster] node %s: broker socket full, %s", rn->cfg->node,
                 "the rest of libnats' buffer waits for POLLOUT");
    io_uring_prep_poll_add(sqe, st->sock, mask);
    io_uring_sqe_set_data64(sqe, th_ud_make(TH_UD_ROUTE, idx, ++p->seq));
    p->armed = 1;
    p->cancelling = 0;
    p->gen = st->gen;
}

/*
 * Bring the polls in line with what libnats wants. What the loop published
 * since the last call sits in libnats' buffer: written here, one send for a
 * whole iteration's requests and confirmations; POLLOUT only if the socket
 * took less than all of it.
 */
static void el_sync(struct th_route_nats *rn)
{
    struct el_state st = el_get(rn);
    if (st.wr && st.sock >= 0 && !rn->pout.armed) {
        natsConnection_ProcessWriteEvent(rn->nc);
        st = el_get(rn);
#ifdef TETHER_STAGES
        for (unsigned k = 0; k < rn->st_npub; k++)
            TH_STAGE(rn->st_pub[k], TH_ST_R_WRITTEN, th_mono_ns());
        rn->st_npub = 0;
#endif
    }
    el_poll(rn, &rn->pin, SOCK_IN_IDX, POLLIN, &st, st.rd);
    el_poll(rn, &rn->pout, SOCK_OUT_IDX, POLLOUT, &st, st.wr);
}

/*
 * Batched replies ("<inbox>.b"), taken on the loop thread right after the
 * read that parsed them: a synchronous subscription (libnats only appends
 * to its list; it signals nobody, since nobody ever waits on it), so they
 * skip the delivery thread and its wake-ups. Pending is read first:
 * NextMsg on an empty subscription sets libnats' thread-local error.
 */
static void inbox_take(struct th_route_nats *rn)
{
    int n = 0;
    natsMsg *m;
    if (!rn->inbox_sub || natsSubscription_GetPending(rn->inbox_sub, &n, NULL) != NATS_OK)
        return;
    while (n > 0) {
        natsStatus s = natsSubscription_NextMsg(&m, rn->inbox_sub, 0);
        if (s == NATS_SLOW_CONSUMER) { /* said once after a drop; the next call goes on */
            bad_input(rn, "replies dropped by libnats (slow consumer)");
            continue;
        }
        if (s != NATS_OK)
            return;
        n--;
        on_reply(rn, m);
        msg_done(rn, m);
    }
}

/* A poll on the socket came back: hand the event to libnats if it is still that socket's. */
static void el_on_poll(struct th_route_nats *rn, struct elpoll *p, uint32_t seq, int res, int in)
{
    if (!p->armed || seq != p->seq)
        return;
    p->armed = 0;
    int current = !p->cancelling && res >= 0 && p->gen == el_get(rn).gen;
    p->cancelling = 0;
    if (current && in) {
#ifdef TETHER_STAGES
        rn->st_poll_ns = th_mono_ns();
#endif
        natsConnection_ProcessReadEvent(rn->nc); /* reads once; the poll is armed again below */
        taken_run(rn);
        inbox_take(rn);
    } else if (current)
        natsConnection_ProcessWriteEvent(rn->nc);
    el_sync(rn);
}

static void nats_on_cqe(struct th_route *r, uint32_t idx, uint32_t gen, int res, unsigned flags)
{
    struct th_route_nats *rn = (struct th_route_nats *)r;
    if (idx == SOCK_IN_IDX || idx == SOCK_OUT_IDX) {
        el_on_poll(rn, idx == SOCK_IN_IDX ? &rn->pin : &rn->pout, gen, res, idx == SOCK_IN_IDX);
        return;
    }
    if (idx != EV_IDX) {
        rn->local->ops->on_cqe(rn->local, idx, gen, res, flags);
        return;
    }
    rn->armed = 0;
    if (res < 0 && res != -EAGAIN && res != -EINTR)
        th_warn("[Cluster] read of the broker eventfd failed: %s", strerror(-res));
    drain_queue(rn);
    arm(rn);
    el_sync(rn); /* a callback from another thread may have asked for something */
}

static void nats_flush(struct th_route *r)
{
    struct th_route_nats *rn = (struct th_route_nats *)r;
    arm(rn);
    rn->local->ops->flush(rn->local); /* first: a leg it fails at once confirms below */
    batches_send(rn);
    el_sync(rn);
    /* After this iteration's output left, before the wait; an iteration woken by I/O in the gap
     * does not take a step. */
    if (rn->scanning && th_mono_ns() >= rn->scan_next) {
        scan_step(rn);
        el_sync(rn); /* its subscriptions and hellos */
    }
}

static uint64_t nats_next_deadline(struct th_route *r)
{
    struct th_route_nats *rn = (struct th_route_nats *)r;
    uint64_t d = rn->local->ops->next_deadline(rn->local);
    if (rn->scanning && rn->scan_next < d)
        d = rn->scan_next; /* a pass in progress: its next step after the gap */
    if (rn->next_scan < d)
        d = rn->next_scan;
    if (rn->next_hb < d)
        d = rn->next_hb;
    for (uint32_t i = rn->fhead; i != NO_PEND; i = rn->pend[i].fnext)
        if (rn->pend[i].local_done) { /* the oldest waiting on the others: the earliest */
            if (rn->pend[i].deadline < d)
                d = rn->pend[i].deadline;
            break;
        }
    for (uint32_t i = 0; rn->npres_used && i < NPRES; i++)
        if (rn->pres[i].used && rn->pres[i].deadline < d)
            d = rn->pres[i].deadline;
    return d;
}

static void nats_expire(struct th_route *r, uint64_t now)
{
    struct th_route_nats *rn = (struct th_route_nats *)r;
    rn->local->ops->expire(rn->local, now);
    for (uint32_t i = rn->fhead, next; i != NO_PEND && rn->pend[i].deadline <= now; i = next) {
        next = rn->pend[i].fnext; /* read first: pend_check may finish (unlink) i */
        pend_check(rn, i, now);
    }
    for (uint32_t i = 0; rn->npres_used && i < NPRES; i++)
        if (rn->pres[i].used && rn->pres[i].deadline <= now)
            pres_check(rn, i, now);
    if (now >= rn->next_scan) {
        rn->next_scan = now + SCAN_NS;
        msgs_free(rn); /* a slow trickle's handled messages are not kept longer */
        maybe_scan(rn, now);
    }
    if (now >= rn->next_hb) {
        rn->next_hb = now + HB_NS;
        if (broker_up(rn))
            heartbeat(rn);
    }
}

static int nats_broker_up(struct th_route *r)
{
    return broker_up((struct th_route_nats *)r);
}

static void nats_render_metrics(struct th_route *r, struct th_buf *b)
{
    struct th_route_nats *rn = (struct th_route_nats *)r;
    th_buf_printf(b,
                  "# HELP tether_broker_up 1 while the NATS connection is up.\n"
                  "# TYPE tether_broker_up gauge\ntether_broker_up %d\n"
                  "# HELP tether_broker_reconnects_total NATS reconnections.\n"
                  "# TYPE tether_broker_reconnects_total counter\n"
                  "tether_broker_reconnects_total %" PRIu64 "\n"
                  "# HELP tether_route_served_total Deliveries done here for other nodes.\n"
                  "# TYPE tether_route_served_total counter\ntether_route_served_total %" PRIu64
                  "\n"
                  "# HELP tether_route_bad_messages_total Malformed broker messages dropped.\n"
                  "# TYPE tether_route_bad_messages_total counter\n"
                  "tether_route_bad_messages_total %" PRIu64 "\n"
                  "# HELP tether_route_remote_total How asking the other nodes ended.\n"
                  "# TYPE tether_route_remote_total counter\n",
                  broker_up(rn), rn->reconnects, rn->served, rn->bad);
    for (int k = 0; k < R_NRESULTS; k++)
        th_buf_printf(b, "tether_route_remote_total{result=\"%s\"} %" PRIu64 "\n", result_names[k],
                      rn->results[k]);
    th_hist_render(b, "tether_route_remote_confirm_seconds",
                   "Publish to a holding node's confirmation (this notifier).", &rn->confirm);
}

static int written(struct th_route_nats *rn)
{
    return !el_get(rn).wr;
}

static int closed(struct th_route_nats *rn)
{
    return natsConnection_IsClosed(rn->nc);
}

/*
 * At stop the loop no longer runs, so nothing moves libnats' bytes: do it
 * here with poll(2) until done(rn) or ms passed (the bye messages written,
 * the drain's unsubscribes and PING answered).
 */
static void el_pump(struct th_route_nats *rn, int ms, int (*done)(struct th_route_nats *))
{
    uint64_t end = th_mono_ns() + (uint64_t)ms * MS_NS;
    while (!done(rn) && th_mono_ns() < end) {
        struct el_state st = el_get(rn);
        if (st.sock < 0) { /* reconnecting or closing: libnats' threads move it along */
            usleep(5 * 1000);
            continue;
        }
        struct pollfd pfd = {.fd = st.sock, .events = (short)(POLLIN | (st.wr ? POLLOUT : 0))};
        if (poll(&pfd, 1, 10) <= 0)
            continue;
        if (pfd.revents & POLLOUT)
            natsConnection_ProcessWriteEvent(rn->nc);
        if (pfd.revents & (POLLIN | POLLHUP | POLLERR))
            natsConnection_ProcessReadEvent(rn->nc);
    }
}

/* Tell the others we leave (they stop waiting for us at once), then close. */
static void say_leaving(struct th_route_nats *rn)
{
    if (!broker_up(rn))
        return;
    for (unsigned i = 0; i < NBUCKET; i++)
        for (struct interest *it = rn->bucket[i]; it; it = it->next)
            say_bye(rn, it);
    char body[24];
    int n = snprintf(body, sizeof(body), "TX1 %s", rn->me_hex);
    natsConnection_Publish(rn->nc, SUBJ_NODES, body, n);
    el_pump(rn, 500, written);
}

/*
 * Drain: every message libnats already holds for a subscription reaches our
 * callback (and the queue, freed below) before the connection closes;
 * a plain close could leave some in the global delivery pool, never freed.
 */
static void drain_connection(struct th_route_nats *rn)
{
    /*
     * Nobody takes the synchronous inbox's batches now, and its drain would
     * only end when someone did: unsubscribed first (its queued replies are
     * freed with it), so the drain waits for the other subscriptions alone.
     */
    if (rn->inbox_sub)
        natsSubscription_Unsubscribe(rn->inbox_sub);
    if (!broker_up(rn) || natsConnection_DrainTimeout(rn->nc, 1000) != NATS_OK)
        return;
    el_pump(rn, 1500, closed);
}

static void nats_destroy(struct th_route *r)
{
    struct th_route_nats *rn = (struct th_route_nats *)r;
    _Atomic unsigned open = 0;
    if (rn->nc) {
        batches_send(rn); /* confirmations of the last iteration */
        say_leaving(rn);
        drain_connection(rn);
    }
    for (unsigned i = 0; i < NBUCKET; i++)
        for (struct interest *it = rn->bucket[i], *next; it; it = next) {
            next = it->next;
            th_nats_sub_close(it->sub, &open);
            free(it);
        }
    natsSubscription *subs[] = {rn->reply_sub, rn->inbox_sub, rn->nodes_sub, rn->pres_sub};
    for (unsigned i = 0; i < 4; i++)
        if (subs[i])
            th_nats_sub_close(subs[i], &open);
    th_nats_closes_wait(&open, 1000);
    if (rn->nc) {
        natsConnection_Close(rn->nc);
        natsConnection_Destroy(rn->nc);
    }
    if (rn->opts)
        natsOptions_Destroy(rn->opts);
    /*
     * Messages queued meanwhile (heartbeats while another module stopped)
     * are destroyed while the library is still up: natsMsg_Destroy after
     * nats_CloseAndWait crashes in libnats' message GC.
     */
    rn->closing = 1;
    taken_run(rn); /* noted while stopping (el_pump): only destroyed */
    msgs_free(rn);
    drain_queue(rn);
    nats_CloseAndWait(2000);            /* every libnats thread gone: the queue is ours alone */
    drain_queue(rn);                    /* replies to other nodes are dropped with the connection */
    rn->local->ops->destroy(rn->local); /* drops its deliveries without callbacks */
    for (struct remote *rm = rn->remotes, *next; rm; rm = next) {
        next = rm->next;
        free(rm);
    }
    free(rn->taken);
    for (uint32_t i = 0; i < NPRES; i++)
        free(rn->pres[i].conns);
    for (unsigned i = 0; i < NBATCH; i++)
        th_buf_free(&rn->batch[i].b);
    if (rn->efd >= 0)
        close(rn->efd);
    free(rn);
}

static const struct th_route_ops nats_ops = {
    .deliver = nats_deliver,
    .on_cqe = nats_on_cqe,
    .flush = nats_flush,
    .next_deadline = nats_next_deadline,
    .expire = nats_expire,
    .destroy = nats_destroy,
    .presence = nats_presence,
    .broker_up = nats_broker_up,
    .render_metrics = nats_render_metrics,
};

static int setup_options(struct th_route_nats *rn)
{
    natsStatus s;
    char name[TH_NODE_NAME_MAX + 8];
    snprintf(name, sizeof(name), "tether-%.*s", (int)TH_NODE_NAME_MAX, rn->cfg->node);
    /* (Requests and confirmations go out at once: no wait for libnats' flusher thread.) */
    if ((s = th_nats_options(&rn->opts, rn->cfg->nats_urls, name)) != NATS_OK ||
        (s = natsOptions_SetNoEcho(rn->opts, true)) != NATS_OK ||
        (s = natsOptions_SetReconnectBufSize(rn->opts, 256 * 1024)) != NATS_OK ||
        (s = natsOptions_SetDisconnectedCB(rn->opts, on_down, rn)) != NATS_OK ||
        (s = natsOptions_SetReconnectedCB(rn->opts, on_reconnected, rn)) != NATS_OK ||
        (s = natsOptions_SetRetryOnFailedConnect(rn->opts, true, on_up, rn)) != NATS_OK ||
        (s = natsOptions_SetEventLoop(rn->opts, rn, el_attach, el_read, el_write, el_detach)) !=
            NATS_OK) {
        th_error("[Cluster] NATS options (--nats %s): %s", rn->cfg->nats_urls,
                 natsStatus_GetText(s));
        return -EINVAL;
    }
    return 0;
}

static int setup_subscriptions(struct th_route_nats *rn)
{
    natsStatus s;
    char *inbox = NULL;
    if ((s = natsInbox_Create(&inbox)) != NATS_OK)
        return -ENOMEM;
    snprintf(rn->inbox, sizeof(rn->inbox), "%s", inbox);
    natsInbox_Destroy(inbox);
    char wild[sizeof(rn->inbox) + 8], bsubj[sizeof(rn->inbox) + 4];
    snprintf(wild, sizeof(wild), "%s.a.*", rn->inbox);
    snprintf(bsubj, sizeof(bsubj), "%s.b", rn->inbox);
    if ((s = natsConnection_Subscribe(&rn->reply_sub, rn->nc, wild, on_reply_msg, rn)) != NATS_OK ||
        (s = natsConnection_SubscribeSync(&rn->inbox_sub, rn->nc, bsubj)) != NATS_OK ||
        (s = natsConnection_Subscribe(&rn->nodes_sub, rn->nc, SUBJ_NODES, on_nodes_msg, rn)) !=
            NATS_OK ||
        (s = natsConnection_Subscribe(&rn->pres_sub, rn->nc, SUBJ_PRESENCE, on_presence_msg, rn)) !=
            NATS_OK) {
        th_error("[Cluster] node %s: natsConnection_Subscribe: %s", rn->cfg->node,
                 natsStatus_GetText(s));
        return -EIO;
    }
    return 0;
}

static int setup(struct th_route_nats *rn)
{
    if (getrandom(&rn->me, sizeof(rn->me), 0) != sizeof(rn->me))
        rn->me = th_now_ns() ^ ((uint64_t)getpid() << 32);
    th_cm_id_hex(rn->me_hex, rn->me);
    if (setup_options(rn) < 0)
        return -EINVAL;
    th_info("[Cluster] node %s: Attempting NATS connection to %s", rn->cfg->node,
            rn->cfg->nats_urls);
    natsStatus s = natsConnection_Connect(&rn->nc, rn->opts);
    if (s == NATS_OK || s == NATS_NOT_YET_CONNECTED)
        filter_install(rn); /* before any subscription: nothing parsed yet */
    if (s == NATS_OK) {
        th_info("[Cluster] node %s: NATS IS connected", rn->cfg->node);
    } else if (s == NATS_NOT_YET_CONNECTED) {
        th_warn("[Cluster] node %s: NATS NOT connected yet; retrying in the background",
                rn->cfg->node);
    } else {
        th_error("[Cluster] node %s: natsConnection_Connect: %s", rn->cfg->node,
                 natsStatus_GetText(s));
        return -ECONNREFUSED;
    }
    if (setup_subscriptions(rn) < 0)
        return -EIO;
    if (s == NATS_OK)
        broker_came_up(rn, 0);
    return 0;
}

struct th_route *th_route_nats_new(const struct th_config *cfg, struct th_reg *reg,
                                   struct io_uring *ring, struct th_route *local)
{
    struct th_route_nats *rn = calloc(1, sizeof(*rn));
    if (!rn) {
        local->ops->destroy(local);
        return NULL;
    }
    rn->base.ops = &nats_ops;
    rn->cfg = cfg;
    rn->reg = reg;
    rn->ring = ring;
    rn->local = local;
    atomic_init(&rn->qhead, NULL);
    atomic_init(&rn->el, EL_NOSOCK);
    rn->loop_thread = pthread_self();
    for (uint32_t i = 0; i < NPEND; i++)
        rn->pend[i].next_free = i + 1 < NPEND ? i + 1 : UINT32_MAX;
    rn->fhead = rn->ftail = NO_PEND;
    for (uint32_t i = 0; i < NPRES; i++)
        rn->pres[i].next_free = i + 1 < NPRES ? i + 1 : UINT32_MAX;
    rn->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (rn->efd < 0 || setup(rn) < 0) {
        if (rn->efd < 0)
            th_error("[Cluster] eventfd: %s", strerror(errno));
        nats_destroy(&rn->base);
        return NULL;
    }
    return &rn->base;
}
