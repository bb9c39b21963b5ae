/*
 * Fuzz target for the cluster route's broker messages (notifier/cluster_msg.h).
 *
 * The first byte picks the parser, the rest is the message as it came off
 * the broker. Whatever the bytes: no parser reads past them (th_cm_text's
 * exact copy; ASan), an accepted message (a reply, each line of a batch of
 * replies) re-encodes to a string the same parser accepts again with the
 * same fields (ids and users round-trip
 * through their hex forms), counts stay within their bounds, an accepted
 * request's frame is 1 to TH_CM_FRAME_MAX bytes of UTF-8, and a refusal
 * is -EINVAL.
 */
#include "tests/fuzz/fuzz.h"
#include "notifier/cluster_msg.h"
#include "shm/proto/utf8.h"

#include <errno.h>

#define BUF 4096

static void check_reply(const char *s)
{
    struct th_cm_reply r, again;
    if (th_cm_reply(s, &r) != 0)
        return;
    FUZZ_CHECK(r.status <= 999 && r.confirmed <= (1u << 20) && r.npeers <= TH_CM_PEERS_MAX, "%s",
               s);
    char out[64 + TH_CM_PEERS_MAX * 17], id[17];
    th_cm_id_hex(id, r.id);
    int n = snprintf(out, sizeof(out), "TR2 %u %u %s", r.status, r.confirmed, id);
    for (unsigned k = 0; k < r.npeers; k++) {
        th_cm_id_hex(id, r.peers[k]);
        n += snprintf(out + n, sizeof(out) - (size_t)n, " %s", id);
    }
    FUZZ_CHECK(th_cm_reply(out, &again) == 0 && again.id == r.id && again.npeers == r.npeers &&
                   again.status == r.status && again.confirmed == r.confirmed,
               "re-encoded %s", out);
}

/* A batch of replies: every accepted line re-encodes (th_cm_reply_line_put) to the same fields. */
static void check_batch(const char *s)
{
    uint64_t id;
    int off = th_cm_reply_batch(s, &id);
    if (off < 0)
        return;
    FUZZ_CHECK((size_t)off <= strlen(s), "head");
    size_t o = (size_t)off, last = o;
    struct th_cm_reply r = {.id = id}, again;
    uint32_t i, g, i2, g2;
    int rc;
    while ((rc = th_cm_reply_line(s, &o, &i, &g, &r)) == 1) {
        FUZZ_CHECK(o > last && o <= strlen(s) && r.id == id && r.status <= 999 &&
                       r.confirmed <= (1u << 20) && r.npeers <= TH_CM_PEERS_MAX,
                   "line moves on");
        last = o;
        char line[TH_CM_LINE_MAX];
        size_t n = th_cm_reply_line_put(line, i, g, r.status, r.confirmed, r.peers, r.npeers);
        size_t o2 = 0;
        FUZZ_CHECK(n < sizeof(line) && th_cm_reply_line(line, &o2, &i2, &g2, &again) == 1 &&
                       o2 == n && i2 == i && g2 == g && again.status == r.status &&
                       again.confirmed == r.confirmed && again.npeers == r.npeers &&
                       !memcmp(again.peers, r.peers, r.npeers * sizeof(r.peers[0])),
                   "re-encoded %s", line);
    }
    FUZZ_CHECK(rc == 0 || rc == -EINVAL, "%d", rc);
}

static void check_user_forms(const char *s)
{
    char user[80], hex[200];
    uint64_t id;
    int n = th_cm_hello_answer(s, &id, user);
    FUZZ_CHECK(n == -EINVAL || (n >= 1 && n <= 64), "%d", n);
    if (n > 0) {
        th_cm_hex_put(hex, user, (size_t)n);
        char again[80];
        FUZZ_CHECK(th_cm_hex_user(hex, strlen(hex), again) == n && !memcmp(again, user, (size_t)n),
                   "round trip");
    }
    n = th_cm_presence_question(s, user);
    FUZZ_CHECK(n == -EINVAL || (n >= 1 && n <= 64), "%d", n);
    n = th_cm_subject_user(s, user);
    FUZZ_CHECK(n == -EINVAL || (n >= 1 && n <= 64), "%d", n);
}

static void check_presence(const char *s)
{
    struct th_cm_presence_head h;
    int off = th_cm_presence_head(s, &h);
    if (off < 0)
        return;
    FUZZ_CHECK((size_t)off <= strlen(s) && strlen(h.name) >= 1 && strlen(h.name) <= TH_CM_NAME_MAX,
               "head");
    size_t o = (size_t)off, last = o;
    struct th_cm_pconn c;
    int rc;
    while ((rc = th_cm_presence_line(s, &o, &c)) == 1) {
        FUZZ_CHECK(o > last && o <= strlen(s) && c.worker <= 0xffff, "line moves on");
        last = o;
    }
    FUZZ_CHECK(rc == 0 || rc == -EINVAL, "%d", rc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t *copy = fuzz_dup(data + 1, size - 1); /* exact size: ASan sees any over-read */
    uint64_t nseq, id;
    const char *frame;
    size_t flen;
    if (th_cm_request(copy, size - 1, &nseq, &frame, &flen) == 0)
        FUZZ_CHECK(flen + TH_CM_REQ_HDR == size - 1 && flen >= 1 && flen <= TH_CM_FRAME_MAX &&
                       th_utf8_feed(TH_UTF8_ACCEPT, (const uint8_t *)frame, flen) == TH_UTF8_ACCEPT,
                   "frame: length and UTF-8");
    char s[BUF];
    if (th_cm_text(copy, size - 1, s, sizeof(s)) >= 0) {
        int flag;
        char name[TH_CM_NAME_MAX + 1];
        uint32_t i, g;
        switch (data[0] % 4) {
        case 0:
            check_reply(s);
            check_batch(s);
            break;
        case 1:
            check_user_forms(s);
            break;
        case 2:
            check_presence(s);
            break;
        default:
            if (th_cm_node(s, &id, &flag, name) == 0 && !flag)
                FUZZ_CHECK(strlen(name) >= 1 && strlen(name) <= TH_CM_NAME_MAX, "name");
            th_cm_holder(s, &id, &flag);
            int k = th_cm_reply_token(s, &i, &g);
            FUZZ_CHECK(k == 'b' || k == 'p' || k == 'd' || k == -EINVAL, "%d", k);
            char bs[64];
            int bl = th_cm_batch_subject(s, bs, sizeof(bs));
            FUZZ_CHECK(bl == -EINVAL || ((size_t)bl == strlen(bs) && bl >= 2 &&
                                         memcmp(bs + bl - 2, ".b", 2) == 0 &&
                                         strncmp(bs, s, (size_t)bl - 2) == 0),
                       "batch subject %d", bl);
        }
    }
    free(copy);
    return 0;
}
