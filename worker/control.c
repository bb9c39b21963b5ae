/*
 * The worker's control socket (wire format in shm/rt/channel.h), served
 * inside the io_uring loop with no syscall of its own: a multishot accept on
 * the SOCK_SEQPACKET listener and, per client, one io_uring recv into that
 * client's packet buffer. A received packet's requests (one or a batch) are
 * handled at once and their replies go back as one packet by an io_uring
 * send linked to the client's next recv, so the reply buffer is free again
 * before the next packet lands and replies to one client leave in order. A
 * requester that does not read its replies stalls only itself: the send
 * waits for room and that client's next recv waits for the send.
 *
 * Also the other direction: closing a connection owned by another worker
 * (4001 replacement) over a non-blocking socket per peer, opened lazily,
 * fire-and-forget; its replies are drained before each send so they never
 * pile up.
 */
#include "worker/wk.h"
#include "shm/rt/clock.h"
#include "shm/rt/log.h"
#include "shm/rt/paths.h"
#include "shm/rt/stage.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

int wk_ctl_listen(struct worker *w)
{
    char dir[TH_PATH_MAX];
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (th_runtime_dir(w->cfg->shm_name, dir, sizeof(dir)) < 0 ||
        th_worker_sock_path(w->cfg->shm_name, w->index, w->ctl_path, sizeof(w->ctl_path)) < 0 ||
        strlen(w->ctl_path) >= sizeof(sa.sun_path)) {
        th_error("control socket path for worker %u is too long", w->index);
        return -ENAMETOOLONG;
    }
    char why[320];
    int rc = th_runtime_dir_prepare(dir, why, sizeof(why));
    if (rc < 0) {
        th_error("%s", why);
        return rc;
    }
    strcpy(sa.sun_path, w->ctl_path);
    unlink(w->ctl_path); /* a stale socket of a previous incarnation */
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 64) < 0) {
        rc = -errno;
        th_error("control socket %s: %s", w->ctl_path, strerror(-rc));
        if (fd >= 0)
            close(fd);
        return rc;
    }
    w->ctl_fd = fd;
    struct th_proc_sh *me = &w->reg->hdr->workers[w->index];
    memcpy(me->sock_path, w->ctl_path, strlen(w->ctl_path) + 1); /* fits: checked above */
    return 0;
}

void wk_ctl_arm_accept(struct worker *w)
{
    struct io_uring_sqe *sqe = th_uring_sqe(&w->ring);
    if (!sqe) {
        w->ctl_accept_paused = 1; /* the tick tries again */
        return;
    }
    io_uring_prep_multishot_accept(sqe, w->ctl_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, th_ud_make(OP_CTL_ACCEPT, 0, 0));
}

static void ctl_drop(struct worker *w, uint32_t i)
{
    struct ctl_client *c = &w->ctl[i];
    if (c->fd < 0)
        return;
    shutdown(c->fd, SHUT_RDWR); /* completes the recv in flight; its buffer stays reserved */
    close(c->fd);
    c->fd = -1;
    c->gen++;
}

/* Wait for client i's next packet. */
static void arm_recv(struct worker *w, uint32_t i)
{
    struct ctl_client *c = &w->ctl[i];
    struct io_uring_sqe *sqe = th_uring_sqe(&w->ring);
    if (!sqe) { /* unwatched, it could never be served: hang up, the client reconnects */
        ctl_drop(w, i);
        return;
    }
    /* MSG_TRUNC: the packet's real length, so an oversized one is recognised. */
    io_uring_prep_recv(sqe, c->fd, c->buf, TH_HO_MAX_PACKET, MSG_TRUNC);
    io_uring_sqe_set_data64(sqe, th_ud_make(OP_CTL_RECV, i, c->gen));
    c->busy++;
}

void wk_ctl_on_accept(struct worker *w, int res)
{
    if (res < 0) {
        if (res != -ECANCELED)
            th_warn("control accept: %s", strerror(-res));
        return;
    }
    for (uint32_t i = 0; i < WK_MAX_CTL; i++) {
        struct ctl_client *c = &w->ctl[i];
        if (c->fd >= 0 || c->busy)
            continue; /* in use, or a dropped client's operations still hold its buffers */
        if (!c->buf && !(c->buf = malloc(TH_HO_MAX_PACKET)))
            break;
        th_ho_set_sndbuf(res); /* best effort, as TH_HO_SNDBUF explains */
        c->fd = res;
        c->gen++;
        arm_recv(w, i);
        return;
    }
    th_warn("control socket: no room for another client (%u at most), refusing one", WK_MAX_CTL);
    close(res);
}

/* (slot, gen) -> our connection index, or -1 when it is not (or no longer) ours. */
static int lookup(struct worker *w, uint32_t slot, uint32_t gen)
{
    if (slot >= w->reg->hdr->nslots)
        return -1;
    struct th_slot *s = &w->reg->slots[slot];
    uint64_t ctl = atomic_load_explicit(&s->ctl, memory_order_acquire);
    if (th_ctl_gen(ctl) != gen || th_ctl_owner(ctl) != w->index ||
        th_ctl_state(ctl) != TH_SLOT_LIVE)
        return -1;
    uint32_t idx = atomic_load_explicit(&s->conn_id, memory_order_relaxed);
    if (idx >= w->high)
        return -1;
    struct conn *c = &w->conns[idx];
    if (!(c->flags & CF_REGISTERED) || c->h.slot != slot || c->h.gen != gen)
        return -1;
    return (int)idx;
}

/*
 * A close request for a slot that may already be released (the per-user
 * cap): the connection is named by index and recognised by the handle it
 * holds, which no other connection can hold.
 */
static int lookup_conn(struct worker *w, uint32_t conn1, uint32_t slot, uint32_t gen)
{
    if (conn1 == 0 || conn1 - 1 >= w->high)
        return -1;
    struct conn *c = &w->conns[conn1 - 1];
    if (!(c->flags & CF_REGISTERED) || c->h.slot != slot || c->h.gen != gen)
        return -1;
    return (int)(conn1 - 1);
}

/*
 * A delivery named by (slot, user id) (TH_HO_F_USER): the notifier took the
 * slot from the index without reading it, so the slot may have been released
 * or reused since, or (rarely) be another user's with the same hash. Ours only
 * if the slot is live, owned by us, holds exactly this id, and is the slot of
 * a connection we hold under that generation.
 */
static int lookup_user(struct worker *w, uint32_t slot, const uint8_t *user, size_t ulen)
{
    struct th_conn_ref ref;
    if (!th_reg_confirm(w->reg, slot, (uint16_t)w->index, (const char *)user, ulen, &ref))
        return -1;
    return lookup(w, slot, ref.gen);
}

static uint16_t handle(struct worker *w, struct th_ho_msg *m, const uint8_t *payload)
{
    if (m->type == TH_HO_DELIVER && (m->code & TH_HO_F_USER)) {
        size_t ulen = m->conn;
        if (ulen == 0 || ulen > TH_USER_MAX || ulen > m->len)
            return TH_HO_BAD;
        int idx = lookup_user(w, m->slot, payload, ulen);
        if (idx < 0)
            return TH_HO_GONE;
        struct conn *c = &w->conns[idx];
        m->len -= (uint32_t)ulen; /* the frame follows the id */
        if (c->state != CS_OPEN || w->queued_bytes + m->len + 10 > WK_QUEUE_BUDGET)
            return TH_HO_BUSY;
        return wk_resume_deliver(w, (uint32_t)idx, m, payload + ulen);
    }
    int idx = lookup(w, m->slot, m->gen);
    if (idx < 0 && m->type == TH_HO_CLOSE)
        idx = lookup_conn(w, m->conn, m->slot, m->gen);
    if (m->type == TH_HO_DELIVER) {
        if (idx < 0)
            return TH_HO_GONE;
        struct conn *c = &w->conns[idx];
        /* Past --send-queue-cap the send below closes the client (contract), so no pre-check here.
         */
        if (c->state != CS_OPEN || w->queued_bytes + m->len + 10 > WK_QUEUE_BUDGET)
            return TH_HO_BUSY;
        return wk_resume_deliver(w, (uint32_t)idx, m, payload);
    }
    if (m->type == TH_HO_CLOSE) {
        if (!th_ws_close_code_valid(m->code))
            return TH_HO_BAD;
        if (idx < 0)
            return TH_HO_GONE;
        if (m->code == TH_WS_STALE && wk_conn_heard_since(w, (uint32_t)idx, m->nseq))
            return TH_HO_KEPT; /* the janitor's verdict is older than what we hold unread */
        wk_conn_close(w, (uint32_t)idx, m->code);
        return TH_HO_OK;
    }
    return TH_HO_BAD;
}

/*
 * Handle every request of one packet (channel.h: back to back, at most
 * TH_HO_BATCH_MAX) and write their replies into rep (TH_HO_BATCH_MAX + 1
 * entries). Returns the number of replies.
 */
static unsigned packet(struct worker *w, const uint8_t *p, size_t n, struct th_ho_msg *rep)
{
    unsigned k = 0;
    const uint8_t *prev = NULL; /* the previous DELIVER's payload, for TH_HO_F_SAME_FRAME */
    uint32_t prev_len = 0;
    for (size_t off = 0; n - off >= sizeof(struct th_ho_msg);) {
        struct th_ho_msg m;
        memcpy(&m, p + off, sizeof(m));
        size_t left = n - off - sizeof(m), wire = m.len;
        const uint8_t *payload = p + off + sizeof(m);
        int ok = m.magic == TH_HO_MAGIC && m.len <= left && k < TH_HO_BATCH_MAX;
        if (ok && m.type == TH_HO_DELIVER && (m.code & TH_HO_F_SAME_FRAME)) {
            ok = prev && m.len == 0;
            payload = prev;
            m.len = prev_len;
            m.code &= (uint16_t)~TH_HO_F_SAME_FRAME;
        } else if (ok && m.type == TH_HO_DELIVER) {
            prev = payload;
            prev_len = m.len;
        }
        TH_STAGE(m.seq, TH_ST_W_RECV, w->mono_ns);
        rep[k] = (struct th_ho_msg){.magic = TH_HO_MAGIC,
                                    .type = TH_HO_REPLY,
                                    .code = ok ? handle(w, &m, payload) : TH_HO_BAD,
                                    .slot = m.slot,
                                    .gen = m.gen,
                                    .seq = m.seq};
        k++;
        TH_STAGE(m.seq, TH_ST_W_QUEUED, th_mono_ns());
        wk_stage_pending(w, m.seq);
        if (!ok)
            break; /* the next header cannot be found (or is one too many) */
        off += sizeof(m) + wire;
    }
    return k;
}

/*
 * A packet from client i (res: its length, or <= 0 when the client is gone):
 * handle it, then send the replies and wait for the next packet, the recv
 * linked behind the send.
 */
void wk_ctl_on_recv(struct worker *w, uint32_t i, uint32_t gen, int res)
{
    if (i >= WK_MAX_CTL)
        return;
    struct ctl_client *c = &w->ctl[i];
    c->busy--;
    if (c->fd < 0 || c->gen != gen)
        return;
    if (res <= 0) {
        if (res < 0 && res != -ECANCELED && res != -ECONNRESET)
            th_warn("control recv: %s", strerror(-res));
        ctl_drop(w, i);
        return;
    }
    /* A packet over the limit was cut short: it cannot be trusted, not even its seq. */
    unsigned k = (size_t)res > TH_HO_MAX_PACKET ? 0 : packet(w, c->buf, (size_t)res, c->rep);
    if (k) {
        /*
         * The frames this packet queued get their sends ahead of the reply:
         * the kernel issues a submission's SQEs in order, and the reply wakes
         * the notifier (and through it the HTTP answer, or a confirmation to
         * another node), work that need not run before the client has its
         * frame.
         */
        wk_conn_flush_all(w);
        struct io_uring_sqe *sqe = th_uring_sqe(&w->ring);
        if (!sqe) {
            ctl_drop(w, i);
            return;
        }
        io_uring_prep_send(sqe, c->fd, c->rep, k * sizeof(c->rep[0]), MSG_NOSIGNAL);
        io_uring_sqe_set_data64(sqe, th_ud_make(OP_CTL_SEND, i, c->gen));
        sqe->flags |= IOSQE_IO_LINK;
        c->busy++;
    }
    arm_recv(w, i);
}

void wk_ctl_on_send(struct worker *w, uint32_t i, uint32_t gen, int res)
{
    if (i >= WK_MAX_CTL)
        return;
    struct ctl_client *c = &w->ctl[i];
    c->busy--;
    if (res < 0 && c->fd >= 0 && c->gen == gen && res != -EPIPE && res != -ECONNRESET)
        th_warn("control reply: %s", strerror(-res)); /* the linked recv is cancelled: dropped */
}

int wk_peer_close(struct worker *w, unsigned peer, struct th_handle h, uint32_t conn_id,
                  uint16_t code)
{
    static uint64_t seq;
    struct th_ho_msg m = {.magic = TH_HO_MAGIC,
                          .type = TH_HO_CLOSE,
                          .code = code,
                          .slot = h.slot,
                          .gen = h.gen,
                          .seq = ++seq,
                          .conn = conn_id + 1};
    if (peer >= TH_MAX_WORKERS)
        return -EINVAL;
    for (int attempt = 0; attempt < 2; attempt++) {
        if (w->peer_fd[peer] < 0 &&
            (w->peer_fd[peer] = th_ho_connect(w->cfg->shm_name, peer, 1)) < 0)
            return w->peer_fd[peer];
        struct th_ho_msg reply;
        while (recv(w->peer_fd[peer], &reply, sizeof(reply), MSG_DONTWAIT) > 0)
            ; /* earlier replies: fire-and-forget */
        if (send(w->peer_fd[peer], &m, sizeof(m), MSG_DONTWAIT | MSG_NOSIGNAL) ==
            (ssize_t)sizeof(m))
            return 0;
        int e = errno;
        close(w->peer_fd[peer]);
        w->peer_fd[peer] = -1;
        if (e == EAGAIN)
            return -EAGAIN;
    }
    return -EPIPE;
}

void wk_ctl_shutdown(struct worker *w)
{
    for (uint32_t i = 0; i < WK_MAX_CTL; i++)
        ctl_drop(w, i);
    for (unsigned p = 0; p < TH_MAX_WORKERS; p++)
        if (w->peer_fd[p] >= 0)
            close(w->peer_fd[p]);
    if (w->ctl_fd >= 0) {
        close(w->ctl_fd);
        unlink(w->ctl_path);
    }
}

void wk_ctl_free(struct worker *w)
{
    for (uint32_t i = 0; i < WK_MAX_CTL; i++) {
        free(w->ctl[i].buf);
        w->ctl[i].buf = NULL;
    }
}

#ifdef TETHER_STAGES
#include "shm/rt/clock.h"
static uint64_t stage_seqs[4096];
static unsigned nstage;

void wk_stage_pending(struct worker *w, uint64_t seq)
{
    (void)w;
    if (nstage < sizeof(stage_seqs) / sizeof(stage_seqs[0]))
        stage_seqs[nstage++] = seq;
}

void wk_stage_submit(struct worker *w)
{
    (void)w;
    uint64_t now = th_mono_ns();
    for (unsigned i = 0; i < nstage; i++)
        TH_STAGE(stage_seqs[i], TH_ST_W_SUBMIT, now);
    nstage = 0;
}
#endif
