/*
 * An established WebSocket session: the RFC 6455 reader's callbacks and the
 * app protocol on top (JSON ping -> pong, ack, error replies).
 *
 * Every complete inbound frame stamps the connection's LastSeen with one
 * relaxed store (the clock is read once per loop iteration, not per frame)
 * and counts in frames_in; server-sent frames never stamp it. Replies go
 * through the connection's send queue and leave in one send per connection
 * at the end of the completion batch.
 */
#include "worker/wk.h"
#include "shm/rt/clock.h"
#include "shm/rt/log.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>

struct sess {
    struct worker *w;
    uint32_t idx;
};

/*
 * LastSeen stamp. The slot is checked first: a janitor that found this
 * worker unresponsive may have released it (and someone may have claimed it
 * since), and our stamp must never land on another connection's slot. A
 * connection that lost its slot that way is closed as stale (4000).
 */
/*
 * Inbound rate limits (--max-msgs-per-sec, --max-bytes-per-sec): a token
 * bucket per connection kept as one "theoretical arrival time" (GCRA). Each
 * frame (or each read's bytes) pushes it forward by its cost; when it would
 * run more than the burst tolerance ahead of now, the client is over. The
 * burst is 2 s of the rate (for bytes at least one --max-message), so a 30 s
 * pinger or a chatty app never notices, while a flooder is closed within a
 * few milliseconds of CPU. Returns 1 when over (the bucket is left as is).
 */
static int bucket_over(uint64_t *tat, uint64_t now, uint64_t cost, uint64_t tolerance)
{
    uint64_t t = *tat > now ? *tat : now;
    if (t + cost > now + tolerance)
        return 1;
    *tat = t + cost;
    return 0;
}

#define RL_BURST_NS (2 * TH_NS_PER_S)

/* Close 1008 with a reason that names the limit; counted and logged once per connection. */
static void close_over_limit(struct worker *w, uint32_t idx, const char *flag)
{
    char body[64], user[TH_USER_MAX + 1];
    int n = snprintf(body + 2, sizeof(body) - 2, "rate limit: %s", flag);
    body[0] = (char)(TH_WS_POLICY >> 8), body[1] = (char)(TH_WS_POLICY & 0xff);
    atomic_fetch_add_explicit(&w->reg->hdr->counters.rate_limited, 1, memory_order_relaxed);
    wk_conn_user(w, &w->conns[idx], user);
    th_info("[WebSocket] User %s closed: over %s", user, flag);
    wk_conn_send_frame(w, idx, TH_WS_CLOSE, body, (size_t)n + 2);
    wk_conn_finish(w, idx);
}

/* Bytes of one read, before they are parsed: 0, or 1 when the connection was closed. */
static int bytes_over(struct worker *w, uint32_t idx, size_t n)
{
    uint64_t rate = w->cfg->max_bytes_per_sec;
    if (!rate)
        return 0;
    uint64_t tol = RL_BURST_NS, msg = (uint64_t)w->cfg->max_message + 14;
    if (msg * TH_NS_PER_S / rate > tol)
        tol = msg * TH_NS_PER_S / rate;
    if (!bucket_over(&w->conns[idx].rl_bytes_tat, w->mono_ns, n * TH_NS_PER_S / rate, tol))
        return 0;
    close_over_limit(w, idx, "--max-bytes-per-sec");
    return 1;
}

static void on_frame(void *ctx)
{
    struct sess *s = ctx;
    struct conn *c = &s->w->conns[s->idx];
    s->w->c_frames++;
    uint32_t rate = s->w->cfg->max_msgs_per_sec;
    if (rate && c->state == CS_OPEN &&
        bucket_over(&c->rl_frames_tat, s->w->mono_ns, TH_NS_PER_S / rate, RL_BURST_NS)) {
        close_over_limit(s->w, s->idx, "--max-msgs-per-sec");
        return;
    }
    if (!(c->flags & CF_REGISTERED))
        return;
    uint64_t ctl = atomic_load_explicit(&s->w->reg->slots[c->h.slot].ctl, memory_order_relaxed);
    if (th_ctl_gen(ctl) == c->h.gen && th_ctl_state(ctl) == TH_SLOT_LIVE) {
        th_reg_touch(s->w->reg, c->h, s->w->now_ns);
        return;
    }
    c->flags &= ~CF_REGISTERED; /* released by someone else: not ours to release again */
    wk_conn_close(s->w, s->idx, TH_WS_STALE);
}

static int on_ping(void *ctx, const uint8_t *p, size_t n)
{
    struct sess *s = ctx;
    wk_conn_send_frame(s->w, s->idx, TH_WS_PONG, p, n);
    return s->w->conns[s->idx].state == CS_OPEN ? 0 : 1;
}

static int on_pong(void *ctx, const uint8_t *p, size_t n)
{
    (void)ctx, (void)p, (void)n; /* the frame already refreshed LastSeen */
    return 0;
}

/* A peer's close: echo its code (1000 when it sent none), then close TCP. */
static int on_close(void *ctx, uint16_t code, const uint8_t *reason, size_t n)
{
    (void)reason, (void)n;
    struct sess *s = ctx;
    wk_conn_close(s->w, s->idx, code == TH_WS_NO_STATUS ? TH_WS_NORMAL : code);
    return 1;
}

static void send_error(struct worker *w, uint32_t idx, const char *why)
{
    char buf[160];
    int n = snprintf(buf, sizeof(buf), "{\"type\":\"error\",\"error\":\"%s\"}", why);
    wk_conn_send_frame(w, idx, TH_WS_TEXT, buf, (size_t)n);
}

static void send_pong(struct worker *w, uint32_t idx)
{
    uint64_t sec = w->now_ns / TH_NS_PER_S;
    if (sec != w->pong_sec || !w->pong_len) {
        char ts[40];
        th_fmt_rfc3339(ts, sizeof(ts), w->now_ns);
        w->pong_len = (size_t)snprintf(w->pong, sizeof(w->pong),
                                       "{\"type\":\"pong\",\"timestamp\":\"%s\"}", ts);
        w->pong_sec = sec;
    }
    wk_conn_send_frame(w, idx, TH_WS_TEXT, w->pong, w->pong_len);
}

static void app_ping(struct worker *w, uint32_t idx)
{
    w->c_pings++;
    send_pong(w, idx);
    if (TH_LOG_DEBUG <= th_log_level_now) {
        char user[TH_USER_MAX + 1];
        wk_conn_user(w, &w->conns[idx], user);
        th_debug("[WebSocket] User %s - connection refreshed via ping", user);
        th_debug("[ConnectionManager] Updated LastSeen for user %s", user);
    }
}

/* One client text message: a JSON object with a "type". */
static void app_text(struct worker *w, uint32_t idx, const uint8_t *p, size_t n)
{
    /* The ping every client sends, byte for byte as the README spells it: answered without
     * building a JSON tree (any other spelling of it goes through the parser below). */
    static const char ping[] = "{\"type\":\"ping\"}";
    if (n == sizeof(ping) - 1 && !memcmp(p, ping, n)) {
        app_ping(w, idx);
        return;
    }
    json_error_t jerr;
    json_t *root = json_loadb((const char *)p, n, JSON_REJECT_DUPLICATES, &jerr);
    const char *type = root ? json_string_value(json_object_get(root, "type")) : NULL;
    if (!root || !json_is_object(root))
        send_error(w, idx, "invalid JSON: expected an object");
    else if (!type)
        send_error(w, idx, "missing \\\"type\\\"");
    else if (!strcmp(type, "ping"))
        app_ping(w, idx);
    else if (!strcmp(type, "ack") && json_object_get(root, "id"))
        w->c_acks++;
    else if (!strcmp(type, "ack"))
        send_error(w, idx, "ack without \\\"id\\\"");
    else
        send_error(w, idx, "unknown type");
    json_decref(root);
}

static int on_message(void *ctx, enum th_ws_opcode op, const uint8_t *p, size_t n)
{
    struct sess *s = ctx;
    if (op == TH_WS_TEXT)
        app_text(s->w, s->idx, p, n);
    else
        send_error(s->w, s->idx, "binary messages are not supported");
    return s->w->conns[s->idx].state == CS_OPEN ? 0 : 1;
}

static const struct th_ws_callbacks callbacks = {
    .on_message = on_message,
    .on_ping = on_ping,
    .on_pong = on_pong,
    .on_close = on_close,
    .on_frame = on_frame,
};

void wk_ws_input(struct worker *w, uint32_t idx, uint8_t *p, size_t n)
{
    struct sess s = {w, idx};
    if (w->conns[idx].state == CS_OPEN && bytes_over(w, idx, n)) {
        th_ws_reader_free(&w->conns[idx].rd);
        return;
    }
    w->feeding = idx;
    int rc = th_ws_reader_feed(&w->conns[idx].rd, p, n, &callbacks, &s);
    w->feeding = UINT32_MAX;
    if (rc >= 1000 && w->conns[idx].state == CS_OPEN)
        wk_conn_close(w, idx, (uint16_t)rc); /* protocol error: 1002, 1007, 1009 */
    if (w->conns[idx].state != CS_OPEN)
        th_ws_reader_free(&w->conns[idx].rd);
}

/*
 * Close a connection whose slot a claim released for the per-user cap:
 * directly when it is ours, else through its worker's control socket
 * (fire-and-forget; the owner's slot check in wk_conn_tick, at its next
 * tick once the release is counted in th_proc_sh.released, is the fallback).
 */
void wk_evict(struct worker *w, const struct th_conn_info *victim, uint16_t code)
{
    struct th_handle h = {victim->slot, victim->gen};
    if (victim->worker != w->index) {
        if (wk_peer_close(w, victim->worker, h, victim->conn_id, code) < 0)
            th_warn("could not ask worker %u to close slot %u", victim->worker, victim->slot);
        return;
    }
    if (victim->conn_id >= w->high)
        return;
    struct conn *c = &w->conns[victim->conn_id];
    if ((c->flags & CF_REGISTERED) && c->h.slot == h.slot && c->h.gen == h.gen) {
        c->flags &= ~CF_REGISTERED; /* released by the claim already */
        wk_conn_close(w, victim->conn_id, code);
    }
}
