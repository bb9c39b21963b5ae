/*
 * The cluster route (--nats): a notification posted to this node reaches the
 * user's connections here (through the local route it wraps) and on every
 * other node that holds the user, over NATS (libnats, core NATS).
 *
 * Subjects. A user's subject is "tether.u.<hex of the id's bytes>": the id is
 * hex-encoded, so no id (dots, '*', '>', spaces) can name another subject or
 * a wildcard. Replies come back on this node's own inbox "<inbox>.<pending>".
 *
 * Interest. A node subscribes to a user's subject while its registry holds at
 * least one live connection of that user and unsubscribes after the last: the
 * loop scans the registry every SCAN_NS (a periodic scan, not hooks in the
 * workers, because the workers must not link libnats and the registry is
 * already the one truth about who is here; the cost is one pass over the
 * slots every 100 ms and a window of up to SCAN_NS after a connect during
 * which other nodes do not yet see the user).
 *
 * Delivery. deliver() hands the frame to the local route and, when the broker
 * is connected, publishes it on the user's subject with a reply inbox. The
 * connection is made with no-echo, so this node never hears itself; when no
 * other node subscribes, the server answers at once with "no responders" and
 * the reply is the local one (404/202 without waiting). Otherwise every node
 * that holds the user delivers (no queue groups) and answers "TR1 <status>
 * <confirmed>"; the reply is gathered until the handoff timeout (the asker
 * cannot know how many nodes hold the user), then: any confirmed connection
 * anywhere -> 200 with "connections" summed and "nodes"; none -> 503
 * unavailable (a node may hold the user and be slow: never a false 404).
 * Broker down: local delivery goes on; a local 200 stays 200 (nodes:1), a
 * user not held here gets 503, since they may be held elsewhere.
 *
 * Threads. libnats runs its own threads (socket reader, flusher, one global
 * message-delivery thread). Its callbacks touch nothing of the loop: they
 * push the message onto a mutex-protected queue and write the route's
 * eventfd. The loop keeps one io_uring read armed on that eventfd (user_data
 * TH_UD_ROUTE with idx EV_IDX); its completion drains the queue on the loop
 * thread, which alone touches the pending table, the interest table and the
 * local route. The loop thread calls libnats' thread-safe publish/subscribe.
 */
#include <errno.h>
#include <nats/nats.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "notifier/route.h"
#include "shm/proto/userid.h"
#include "shm/rt/clock.h"
#include "shm/rt/log.h"

#define EV_IDX TH_UD_IDX_MAX /* the eventfd read; local route's idx stay far below */
#define SCAN_NS (100ull * 1000 * 1000)
#define NPEND 4096u   /* remote deliveries in flight */
#define NBUCKET 4096u /* interest table buckets */
#define SUBJ_PREFIX "tether.u."
#define SUBJ_MAX (sizeof(SUBJ_PREFIX) + 2 * TH_USER_MAX + 1)
#define MSG_MAGIC "TN1" /* request: "TN1\0", then nseq (8 bytes LE), then the frame */
#define MSG_HDR 12
#define MSG_MAX (17u << 20) /* larger requests are dropped and counted */
#define BAD_LOG_NS (1000ull * 1000 * 1000)

enum ev_kind { EV_REQUEST, EV_REPLY, EV_DOWN, EV_UP };

struct ev {
    struct ev *next;
    int kind;
    natsMsg *msg; /* EV_REQUEST, EV_REPLY: owned by the event */
};

struct interest {
    struct interest *next;
    natsSubscription *sub;
    uint64_t mark;
    size_t ulen;
    char user[TH_USER_MAX];
};

struct th_route_nats;
struct local_arg {
    struct th_route_nats *rn;
    uint32_t idx, gen;
};

/* One deliver() waiting for the local route and the other nodes. */
struct pend {
    struct local_arg la; /* the local route's callback arg: done comes before any reuse */
    uint32_t gen;
    int used, local_done, asked, no_resp;
    struct th_route_result local;
    unsigned remote_conf, remote_nodes;
    uint64_t deadline;
    th_route_done_fn done;
    void *arg;
    uint32_t next_free;
};

/* A request from another node being delivered here; answered on reply. */
struct remote {
    struct remote *prev, *next; /* rn->remotes: freed at destroy if still out */
    struct th_route_nats *rn;
    char reply[256];
};

struct th_route_nats {
    struct th_route base;
    const struct th_config *cfg;
    struct th_reg *reg;
    struct io_uring *ring;
    struct th_route *local;
    natsOptions *opts;
    natsConnection *nc;
    natsSubscription *inbox_sub;
    char inbox[128];
    int efd, armed;
    uint64_t efd_buf;
    pthread_mutex_t mu; /* guards qhead/qtail only */
    struct ev *qhead, *qtail;
    struct pend pend[NPEND];
    uint32_t free_head;
    struct interest *bucket[NBUCKET];
    uint64_t scan_mark, next_scan;
    uint64_t bad, bad_logged_ns;
    struct remote *remotes;
    int closing; /* destroy: queued events are only freed */
    int up;      /* loop's view of the broker (from EV_DOWN/EV_UP and the status) */
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
    e->next = NULL;
    e->kind = kind;
    e->msg = msg;
    pthread_mutex_lock(&rn->mu);
    if (rn->qtail)
        rn->qtail->next = e;
    else
        rn->qhead = e;
    rn->qtail = e;
    pthread_mutex_unlock(&rn->mu);
    uint64_t one = 1;
    if (write(rn->efd, &one, sizeof(one)) < 0) { /* EAGAIN: the counter is already set */
    }
}

static void on_request_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    (void)sub;
    push(closure, EV_REQUEST, msg);
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

/* ---- subjects -------------------------------------------------------------- */

static void user_subject(char out[SUBJ_MAX], const char *user, size_t ulen)
{
    static const char hex[] = "0123456789abcdef";
    size_t n = sizeof(SUBJ_PREFIX) - 1;
    memcpy(out, SUBJ_PREFIX, n);
    for (size_t i = 0; i < ulen; i++) {
        out[n++] = hex[(unsigned char)user[i] >> 4];
        out[n++] = hex[(unsigned char)user[i] & 15];
    }
    out[n] = 0;
}

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* The user id a subject names; -EINVAL unless it is exactly a valid one. */
static int subject_user(const char *subj, char *user)
{
    size_t pl = sizeof(SUBJ_PREFIX) - 1;
    if (strncmp(subj, SUBJ_PREFIX, pl) != 0)
        return -EINVAL;
    const char *h = subj + pl;
    size_t hl = strlen(h);
    if (hl == 0 || hl % 2 || hl / 2 > TH_USER_MAX)
        return -EINVAL;
    for (size_t i = 0; i < hl / 2; i++) {
        int a = hexval(h[2 * i]), b = hexval(h[2 * i + 1]);
        if (a < 0 || b < 0)
            return -EINVAL;
        user[i] = (char)(a << 4 | b);
    }
    if (!th_userid_valid(user, hl / 2))
        return -EINVAL;
    return (int)(hl / 2);
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

/* ---- interest: subscribe while the registry holds the user ----------------- */

static uint32_t hash_user(const char *u, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)u[i]) * 16777619u;
    return h % NBUCKET;
}

static int scan_visit(const struct th_conn_info *ci, void *arg)
{
    struct th_route_nats *rn = arg;
    size_t ulen = strnlen(ci->user, TH_USER_MAX);
    if (!ulen)
        return 0;
    struct interest **b = &rn->bucket[hash_user(ci->user, ulen)], *it;
    for (it = *b; it; it = it->next)
        if (it->ulen == ulen && memcmp(it->user, ci->user, ulen) == 0)
            break;
    if (it) {
        it->mark = rn->scan_mark;
        return 0;
    }
    it = calloc(1, sizeof(*it));
    if (!it)
        return 0; /* next scan tries again */
    char subj[SUBJ_MAX];
    user_subject(subj, ci->user, ulen);
    natsStatus s = natsConnection_Subscribe(&it->sub, rn->nc, subj, on_request_msg, rn);
    if (s != NATS_OK) {
        th_warn("[Cluster] node %s: subscribe for user %.*s failed: %s", rn->cfg->node, (int)ulen,
                ci->user, natsStatus_GetText(s));
        free(it);
        return 0;
    }
    memcpy(it->user, ci->user, ulen);
    it->ulen = ulen;
    it->mark = rn->scan_mark;
    it->next = *b;
    *b = it;
    return 0;
}

static void interest_scan(struct th_route_nats *rn)
{
    rn->scan_mark++;
    th_reg_foreach(rn->reg, scan_visit, rn);
    for (unsigned i = 0; i < NBUCKET; i++)
        for (struct interest **p = &rn->bucket[i]; *p;) {
            struct interest *it = *p;
            if (it->mark == rn->scan_mark) {
                p = &it->next;
                continue;
            }
            *p = it->next;
            natsSubscription_Unsubscribe(it->sub); /* fails only when closed: nothing to undo */
            natsSubscription_Destroy(it->sub);
            free(it);
        }
}

/* ---- pending deliveries of this node --------------------------------------- */

static void pend_finish(struct th_route_nats *rn, uint32_t i)
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
    } else if (!(p->asked && p->no_resp)) {
        res.status = 503; /* broker away or a node may hold the user: never a false 404 */
        res.confirmed = 0;
    }
    th_route_done_fn done = p->done;
    void *arg = p->arg;
    p->used = 0;
    p->gen++;
    p->next_free = rn->free_head;
    rn->free_head = i;
    done(arg, &res);
}

static void pend_check(struct th_route_nats *rn, uint32_t i, uint64_t now)
{
    struct pend *p = &rn->pend[i];
    if (!p->used || !p->local_done)
        return;
    if (!p->asked || p->no_resp || now >= p->deadline)
        pend_finish(rn, i);
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

static int broker_up(struct th_route_nats *rn)
{
    return rn->nc && natsConnection_Status(rn->nc) == NATS_CONN_STATUS_CONNECTED;
}

static int nats_deliver(struct th_route *r, const char *user, size_t ulen, const char *frame,
                        size_t flen, uint64_t nseq, unsigned ho_flags, th_route_done_fn done,
                        void *arg)
{
    struct th_route_nats *rn = (struct th_route_nats *)r;
    if (rn->free_head == UINT32_MAX || ulen == 0 || ulen > TH_USER_MAX)
        return -EAGAIN;
    char *msg = malloc(MSG_HDR + flen);
    if (!msg)
        return -ENOMEM;
    uint32_t i = rn->free_head;
    struct pend *p = &rn->pend[i];
    rn->free_head = p->next_free;
    p->used = 1;
    p->local_done = p->asked = p->no_resp = 0;
    p->remote_conf = p->remote_nodes = 0;
    memset(&p->local, 0, sizeof(p->local));
    p->done = done;
    p->arg = arg;
    p->deadline = th_mono_ns() + (uint64_t)rn->cfg->handoff_timeout_ms * 1000000ull;
    uint32_t gen = p->gen;
    if (broker_up(rn)) {
        char subj[SUBJ_MAX], reply[sizeof(rn->inbox) + 24];
        user_subject(subj, user, ulen);
        snprintf(reply, sizeof(reply), "%s.%u_%u", rn->inbox, i, gen);
        memcpy(msg, MSG_MAGIC, 4);
        for (int k = 0; k < 8; k++)
            msg[4 + k] = (char)(nseq >> (8 * k));
        memcpy(msg + MSG_HDR, frame, flen);
        natsStatus s =
            natsConnection_PublishRequest(rn->nc, subj, reply, msg, (int)(MSG_HDR + flen));
        if (s == NATS_OK)
            p->asked = 1;
        else
            th_warn("[Cluster] node %s: publish for user %.*s failed: %s", rn->cfg->node, (int)ulen,
                    user, natsStatus_GetText(s));
    }
    free(msg);
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

/* "TR1 <status> <confirmed>" from a node that holds the user. */
static void on_reply(struct th_route_nats *rn, natsMsg *m)
{
    const char *subj = natsMsg_GetSubject(m);
    size_t il = strlen(rn->inbox);
    unsigned idx, gen;
    char tail;
    if (strncmp(subj, rn->inbox, il) != 0 || subj[il] != '.' ||
        sscanf(subj + il + 1, "%u_%u%c", &idx, &gen, &tail) != 2 || idx >= NPEND) {
        bad_input(rn, "reply subject");
        return;
    }
    struct pend *p = &rn->pend[idx];
    if (!p->used || p->gen != gen)
        return; /* late: that delivery was answered */
    if (natsMsg_IsNoResponders(m)) {
        p->no_resp = 1;
    } else {
        char buf[64];
        int n = natsMsg_GetDataLength(m);
        unsigned st, conf;
        if (n <= 0 || n >= (int)sizeof(buf)) {
            bad_input(rn, "reply size");
            return;
        }
        memcpy(buf, natsMsg_GetData(m), (size_t)n);
        buf[n] = 0;
        if (sscanf(buf, "TR1 %u %u%c", &st, &conf, &tail) != 2 || conf > 1u << 20) {
            bad_input(rn, "reply body");
            return;
        }
        if (st == 200 && conf) {
            p->remote_conf += conf;
            p->remote_nodes++;
        }
    }
    pend_check(rn, idx, th_mono_ns());
}

/* ---- requests from other nodes --------------------------------------------- */

static void on_remote_done(void *arg, const struct th_route_result *res)
{
    struct remote *rm = arg;
    char body[48];
    int n = snprintf(body, sizeof(body), "TR1 %d %u", res->status,
                     res->status == 200 ? res->confirmed : 0);
    if (rm->rn->nc && rm->reply[0])
        natsConnection_Publish(rm->rn->nc, rm->reply, body, n); /* lost reply: the asker says 503 */
    if (rm->prev)
        rm->prev->next = rm->next;
    else
        rm->rn->remotes = rm->next;
    if (rm->next)
        rm->next->prev = rm->prev;
    free(rm);
}

static void on_request(struct th_route_nats *rn, natsMsg *m)
{
    char user[TH_USER_MAX];
    int ulen = subject_user(natsMsg_GetSubject(m), user);
    int n = natsMsg_GetDataLength(m);
    const char *d = natsMsg_GetData(m);
    const char *reply = natsMsg_GetReply(m);
    if (ulen < 0) {
        bad_input(rn, "subject");
        return;
    }
    if (n < MSG_HDR || (unsigned)n > MSG_MAX || memcmp(d, MSG_MAGIC, 4) != 0) {
        bad_input(rn, "request body");
        return;
    }
    if (!reply || strlen(reply) >= sizeof(((struct remote *)0)->reply)) {
        bad_input(rn, "reply inbox");
        return;
    }
    struct remote *rm = malloc(sizeof(*rm));
    if (!rm)
        return; /* the asker times out: 503 */
    rm->rn = rn;
    rm->prev = NULL;
    rm->next = rn->remotes;
    if (rn->remotes)
        rn->remotes->prev = rm;
    rn->remotes = rm;
    snprintf(rm->reply, sizeof(rm->reply), "%s", reply);
    /*
     * Flags belong to the asking node: not passed on. The seq is the
     * JetStream mailbox's (mailbox_js.c) when --nats runs with the mailbox
     * on: passed on, so the workers keep it in order with what they replay.
     */
    uint64_t nseq = 0;
    for (int k = 0; rn->cfg->mailbox_ttl_s && k < 8; k++)
        nseq |= (uint64_t)(unsigned char)d[4 + k] << (8 * k);
    int rc = rn->local->ops->deliver(rn->local, user, (size_t)ulen, d + MSG_HDR,
                                     (size_t)n - MSG_HDR, nseq, 0, on_remote_done, rm);
    if (rc < 0) {
        struct th_route_result res = {.status = 503};
        on_remote_done(rm, &res);
    }
}

static void drain_queue(struct th_route_nats *rn)
{
    pthread_mutex_lock(&rn->mu);
    struct ev *e = rn->qhead;
    rn->qhead = rn->qtail = NULL;
    pthread_mutex_unlock(&rn->mu);
    while (e) {
        struct ev *next = e->next;
        switch (rn->closing ? -1 : e->kind) {
        case EV_REQUEST:
            on_request(rn, e->msg);
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
            if (!rn->up)
                th_info("[Cluster] node %s: broker connected", rn->cfg->node);
            rn->up = 1;
            break;
        }
        if (e->msg)
            natsMsg_Destroy(e->msg);
        free(e);
        e = next;
    }
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

static void nats_on_cqe(struct th_route *r, uint32_t idx, uint32_t gen, int res, unsigned flags)
{
    struct th_route_nats *rn = (struct th_route_nats *)r;
    if (idx != EV_IDX) {
        rn->local->ops->on_cqe(rn->local, idx, gen, res, flags);
        return;
    }
    rn->armed = 0;
    if (res < 0 && res != -EAGAIN && res != -EINTR)
        th_warn("[Cluster] read of the broker eventfd failed: %s", strerror(-res));
    drain_queue(rn);
    arm(rn);
}

static void nats_flush(struct th_route *r)
{
    struct th_route_nats *rn = (struct th_route_nats *)r;
    arm(rn);
    rn->local->ops->flush(rn->local);
}

static uint64_t nats_next_deadline(struct th_route *r)
{
    struct th_route_nats *rn = (struct th_route_nats *)r;
    uint64_t d = rn->local->ops->next_deadline(rn->local);
    if (rn->next_scan < d)
        d = rn->next_scan;
    for (uint32_t i = 0; i < NPEND; i++)
        if (rn->pend[i].used && rn->pend[i].local_done && rn->pend[i].deadline < d)
            d = rn->pend[i].deadline;
    return d;
}

static void nats_expire(struct th_route *r, uint64_t now)
{
    struct th_route_nats *rn = (struct th_route_nats *)r;
    rn->local->ops->expire(rn->local, now);
    for (uint32_t i = 0; i < NPEND; i++)
        if (rn->pend[i].used)
            pend_check(rn, i, now);
    if (now >= rn->next_scan) {
        rn->next_scan = now + SCAN_NS;
        interest_scan(rn);
    }
}

static void nats_destroy(struct th_route *r)
{
    struct th_route_nats *rn = (struct th_route_nats *)r;
    for (unsigned i = 0; i < NBUCKET; i++)
        for (struct interest *it = rn->bucket[i], *next; it; it = next) {
            next = it->next;
            natsSubscription_Destroy(it->sub);
            free(it);
        }
    if (rn->inbox_sub)
        natsSubscription_Destroy(rn->inbox_sub);
    if (rn->nc) {
        natsConnection_Close(rn->nc);
        natsConnection_Destroy(rn->nc);
    }
    if (rn->opts)
        natsOptions_Destroy(rn->opts);
    nats_CloseAndWait(2000);            /* every libnats thread gone: the queue is ours alone */
    drain_queue(rn);                    /* replies to other nodes are dropped with the connection */
    rn->local->ops->destroy(rn->local); /* drops its deliveries without callbacks */
    for (struct remote *rm = rn->remotes, *next; rm; rm = next) {
        next = rm->next;
        free(rm);
    }
    if (rn->efd >= 0)
        close(rn->efd);
    pthread_mutex_destroy(&rn->mu);
    free(rn);
}

static const struct th_route_ops nats_ops = {
    .deliver = nats_deliver,
    .on_cqe = nats_on_cqe,
    .flush = nats_flush,
    .next_deadline = nats_next_deadline,
    .expire = nats_expire,
    .destroy = nats_destroy,
};

static int setup(struct th_route_nats *rn)
{
    natsStatus s;
    char name[TH_PATH_MAX + 8];
    snprintf(name, sizeof(name), "tether-%s", rn->cfg->node);
    if ((s = natsOptions_Create(&rn->opts)) != NATS_OK ||
        (s = natsOptions_SetURL(rn->opts, rn->cfg->nats_urls)) != NATS_OK ||
        (s = natsOptions_SetName(rn->opts, name)) != NATS_OK ||
        (s = natsOptions_SetNoEcho(rn->opts, true)) != NATS_OK ||
        (s = natsOptions_UseGlobalMessageDelivery(rn->opts, true)) != NATS_OK ||
        (s = natsOptions_SetMaxReconnect(rn->opts, -1)) != NATS_OK ||
        (s = natsOptions_SetReconnectWait(rn->opts, 250)) != NATS_OK ||
        (s = natsOptions_SetReconnectBufSize(rn->opts, 256 * 1024)) != NATS_OK ||
        (s = natsOptions_SetTimeout(rn->opts, 1000)) != NATS_OK ||
        (s = natsOptions_SetPingInterval(rn->opts, 1000)) != NATS_OK ||
        (s = natsOptions_SetMaxPingsOut(rn->opts, 2)) != NATS_OK ||
        (s = natsOptions_SetDisconnectedCB(rn->opts, on_down, rn)) != NATS_OK ||
        (s = natsOptions_SetReconnectedCB(rn->opts, on_up, rn)) != NATS_OK ||
        (s = natsOptions_SetRetryOnFailedConnect(rn->opts, true, on_up, rn)) != NATS_OK) {
        th_error("[Cluster] NATS options (--nats %s): %s", rn->cfg->nats_urls,
                 natsStatus_GetText(s));
        return -EINVAL;
    }
    th_info("[Cluster] node %s: Attempting NATS connection to %s", rn->cfg->node,
            rn->cfg->nats_urls);
    s = natsConnection_Connect(&rn->nc, rn->opts);
    if (s == NATS_OK) {
        rn->up = 1;
        th_info("[Cluster] node %s: NATS IS connected", rn->cfg->node);
    } else if (s == NATS_NOT_YET_CONNECTED) {
        th_warn("[Cluster] node %s: NATS NOT connected yet; retrying in the background",
                rn->cfg->node);
    } else {
        th_error("[Cluster] node %s: natsConnection_Connect: %s", rn->cfg->node,
                 natsStatus_GetText(s));
        return -ECONNREFUSED;
    }
    char *inbox = NULL;
    if ((s = natsInbox_Create(&inbox)) != NATS_OK)
        return -ENOMEM;
    snprintf(rn->inbox, sizeof(rn->inbox), "%s", inbox);
    natsInbox_Destroy(inbox);
    char wild[sizeof(rn->inbox) + 4];
    snprintf(wild, sizeof(wild), "%s.*", rn->inbox);
    if ((s = natsConnection_Subscribe(&rn->inbox_sub, rn->nc, wild, on_reply_msg, rn)) != NATS_OK) {
        th_error("[Cluster] node %s: inbox subscribe: %s", rn->cfg->node, natsStatus_GetText(s));
        return -EIO;
    }
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
    pthread_mutex_init(&rn->mu, NULL);
    for (uint32_t i = 0; i < NPEND; i++)
        rn->pend[i].next_free = i + 1 < NPEND ? i + 1 : UINT32_MAX;
    rn->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (rn->efd < 0 || setup(rn) < 0) {
        if (rn->efd < 0)
            th_error("[Cluster] eventfd: %s", strerror(errno));
        nats_destroy(&rn->base);
        return NULL;
    }
    return &rn->base;
}
