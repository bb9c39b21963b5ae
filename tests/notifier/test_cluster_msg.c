/*
 * Unit tests of the cluster route's broker message parsers
 * (notifier/cluster_msg.c): each form taken exactly, every near miss
 * refused (bounds, lengths, separators, trailing bytes, bad ids and users).
 */
#include "notifier/cluster_msg.h"

#include <criterion/criterion.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>

#define ID "0123456789abcdef"
#define ID2 "fedcba9876543210"

Test(cluster_msg, text_refuses_empty_oversize_and_nul)
{
    char buf[8];
    cr_assert_eq(th_cm_text("abc", 3, buf, sizeof(buf)), 3);
    cr_assert_str_eq(buf, "abc");
    cr_assert_eq(th_cm_text("", 0, buf, sizeof(buf)), -EINVAL);
    cr_assert_eq(th_cm_text("abcdefgh", 8, buf, sizeof(buf)), -EINVAL);
    cr_assert_eq(th_cm_text("a\0b", 3, buf, sizeof(buf)), -EINVAL);
}

Test(cluster_msg, subjects_name_one_valid_user)
{
    char user[64], hex[140];
    th_cm_hex_put(hex, "x.>", 3);
    cr_assert_str_eq(hex, "782e3e");
    cr_assert_eq(th_cm_subject_user("tether.u.782e3e", user), 3);
    cr_assert(memcmp(user, "x.>", 3) == 0);
    cr_assert_eq(th_cm_subject_user("tether.u.782E3E", user), -EINVAL, "upper case");
    cr_assert_eq(th_cm_subject_user("tether.u.782e3", user), -EINVAL, "odd");
    cr_assert_eq(th_cm_subject_user("tether.u.", user), -EINVAL, "empty");
    cr_assert_eq(th_cm_subject_user("tether.x.7878", user), -EINVAL);
    cr_assert_eq(th_cm_subject_user("tether.u.0a", user), -EINVAL, "control character");
    memset(hex, '7', 130);
    hex[130] = 0;
    char subj[160];
    snprintf(subj, sizeof(subj), "tether.u.%s", hex);
    cr_assert_eq(th_cm_subject_user(subj, user), -EINVAL, "65 bytes");
    hex[128] = 0;
    snprintf(subj, sizeof(subj), "tether.u.%s", hex);
    cr_assert_eq(th_cm_subject_user(subj, user), 64);
}

Test(cluster_msg, request_header)
{
    char msg[32] = "TN1";
    uint64_t nseq;
    const char *f;
    size_t fl;
    msg[4] = 7;
    msg[11] = 1;
    memcpy(msg + 12, "{}", 2);
    cr_assert_eq(th_cm_request(msg, 14, &nseq, &f, &fl), 0);
    cr_assert_eq(nseq, 7ull | 1ull << 56);
    cr_assert_eq(fl, 2);
    cr_assert(f == msg + 12);
    cr_assert_eq(th_cm_request(msg, 11, &nseq, &f, &fl), -EINVAL, "short header");
    cr_assert_eq(th_cm_request(msg, 12, &nseq, &f, &fl), -EINVAL, "no frame");
    cr_assert(th_cm_is_request(msg, 11));
    cr_assert(!th_cm_is_request("TN1 x", 5));
}

/* The frame goes to clients as a text frame: UTF-8 only, and no larger than the handoff takes. */
Test(cluster_msg, request_frame_is_utf8_within_the_handoff)
{
    static char msg[TH_CM_REQ_HDR + TH_CM_FRAME_MAX + 1] = "TN1";
    uint64_t nseq;
    const char *f;
    size_t fl;
    memcpy(msg + 12, "\"\xc3\xa9\"", 4);
    cr_assert_eq(th_cm_request(msg, 16, &nseq, &f, &fl), 0, "two-byte sequence");
    memcpy(msg + 12, "\"\xff\"", 3);
    cr_assert_eq(th_cm_request(msg, 15, &nseq, &f, &fl), -EINVAL, "0xff");
    memcpy(msg + 12, "\"\xc3\"", 3);
    cr_assert_eq(th_cm_request(msg, 15, &nseq, &f, &fl), -EINVAL, "cut sequence");
    memcpy(msg + 12, "\"\xed\xa0\x80\"", 5);
    cr_assert_eq(th_cm_request(msg, 17, &nseq, &f, &fl), -EINVAL, "surrogate");
    memset(msg + 12, 'a', TH_CM_FRAME_MAX + 1);
    cr_assert_eq(th_cm_request(msg, TH_CM_REQ_HDR + TH_CM_FRAME_MAX, &nseq, &f, &fl), 0);
    cr_assert_eq(fl, TH_CM_FRAME_MAX);
    cr_assert_eq(th_cm_request(msg, sizeof(msg), &nseq, &f, &fl), -EINVAL, "one byte over");
    cr_assert(TH_CM_FRAME_MAX + TH_USER_MAX <= TH_HO_MAX_PAYLOAD);
}

Test(cluster_msg, replies)
{
    struct th_cm_reply r;
    cr_assert_eq(th_cm_reply("TR2 200 3 " ID, &r), 0);
    cr_assert_eq(r.status, 200);
    cr_assert_eq(r.confirmed, 3);
    cr_assert_eq(r.id, 0x0123456789abcdefull);
    cr_assert_eq(r.npeers, 0);
    cr_assert_eq(th_cm_reply("TR2 404 0 " ID " " ID2 " " ID, &r), 0);
    cr_assert_eq(r.npeers, 2);
    cr_assert_eq(r.peers[0], 0xfedcba9876543210ull);
    const char *bad[] = {"TR2 200 3",
                         "TR2 200 3 " ID " ",
                         "TR2 200 3 " ID "x",
                         "TR2 2000 3 " ID,
                         "TR2 200 1048577 " ID,
                         "TR2 -1 3 " ID,
                         "TR2  200 3 " ID,
                         "TR1 200 3 " ID,
                         "TR2 200 3 0123456789ABCDEF",
                         "TR2 200 99999999999999999999999 " ID};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        cr_assert_eq(th_cm_reply(bad[i], &r), -EINVAL, "%s", bad[i]);
    char many[512] = "TR2 200 1 " ID;
    for (int i = 0; i < 17; i++)
        strcat(many, " " ID2);
    cr_assert_eq(th_cm_reply(many, &r), -EINVAL, "more peers than fit");
}

Test(cluster_msg, reply_batches)
{
    const char *s = "TR3 " ID "\n7_9 200 2\n4294967295_0 404 0 " ID2 " " ID "\n";
    uint64_t id;
    int off = th_cm_reply_batch(s, &id);
    cr_assert_eq(off, 21);
    cr_assert_eq(id, 0x0123456789abcdefull);
    struct th_cm_reply r = {.id = id};
    uint32_t i, g;
    size_t o = (size_t)off;
    cr_assert_eq(th_cm_reply_line(s, &o, &i, &g, &r), 1);
    cr_assert(i == 7 && g == 9 && r.status == 200 && r.confirmed == 2 && r.npeers == 0);
    cr_assert_eq(r.id, id, "the head's id stays");
    cr_assert_eq(th_cm_reply_line(s, &o, &i, &g, &r), 1);
    cr_assert(i == 4294967295u && g == 0 && r.status == 404 && r.npeers == 2);
    cr_assert_eq(r.peers[0], 0xfedcba9876543210ull);
    cr_assert_eq(th_cm_reply_line(s, &o, &i, &g, &r), 0, "the end");
    cr_assert_eq(o, strlen(s));

    const char *bad_head[] = {"TR3 " ID, "TR3 " ID " \n", "TR2 " ID "\n", "TR3 0123\n"};
    for (size_t k = 0; k < sizeof(bad_head) / sizeof(bad_head[0]); k++)
        cr_assert_eq(th_cm_reply_batch(bad_head[k], &id), -EINVAL, "%s", bad_head[k]);
    const char *bad_line[] = {
        "7_9 200 2",    "7_9 200 2 \n",      "7_9  200 2\n",         "7 200 2\n",
        "7_9 2000 2\n", "7_9 200 1048577\n", "4294967296_1 200 1\n", "7_9 200 2 " ID "x\n",
        "7_9 200\n"};
    for (size_t k = 0; k < sizeof(bad_line) / sizeof(bad_line[0]); k++) {
        o = 0;
        cr_assert_eq(th_cm_reply_line(bad_line[k], &o, &i, &g, &r), -EINVAL, "%s", bad_line[k]);
        cr_assert_eq(o, 0, "not moved on a bad line");
    }
    char many[512] = "1_1 200 1";
    for (int k = 0; k < 17; k++)
        strcat(many, " " ID2);
    strcat(many, "\n");
    o = 0;
    cr_assert_eq(th_cm_reply_line(many, &o, &i, &g, &r), -EINVAL, "more peers than fit");

    uint64_t peers[2] = {0xfedcba9876543210ull, 1};
    char line[TH_CM_LINE_MAX];
    size_t n = th_cm_reply_line_put(line, 12, 34, 503, 0, peers, 2);
    cr_assert_str_eq(line, "12_34 503 0 " ID2 " 0000000000000001\n");
    cr_assert_eq(n, strlen(line));
}

Test(cluster_msg, holders_nodes_hello_answers)
{
    uint64_t id;
    int flag;
    char user[64], name[TH_CM_NAME_MAX + 1];
    cr_assert_eq(th_cm_holder("TH1 " ID, &id, &flag), 0);
    cr_assert_eq(flag, 0);
    cr_assert_eq(th_cm_holder("TB1 " ID, &id, &flag), 0);
    cr_assert_eq(flag, 1);
    cr_assert_eq(th_cm_holder("TH1 " ID " ", &id, &flag), -EINVAL);
    cr_assert_eq(th_cm_holder("TH1 x", &id, &flag), -EINVAL);
    cr_assert_eq(th_cm_hello_answer("TI1 " ID " 6162", &id, user), 2);
    cr_assert(memcmp(user, "ab", 2) == 0);
    cr_assert_eq(th_cm_hello_answer("TI1 " ID " 616", &id, user), -EINVAL);
    cr_assert_eq(th_cm_hello_answer("TI1 " ID, &id, user), -EINVAL);
    cr_assert_eq(th_cm_node("TK1 " ID " node-a", &id, &flag, name), 0);
    cr_assert_eq(flag, 0);
    cr_assert_str_eq(name, "node-a");
    cr_assert_eq(th_cm_node("TX1 " ID, &id, &flag, name), 0);
    cr_assert_eq(flag, 1);
    cr_assert_eq(th_cm_node("TK1 " ID, &id, &flag, name), -EINVAL, "no name");
    cr_assert_eq(th_cm_node("TK1 " ID " a b", &id, &flag, name), -EINVAL, "space in name");
    char longname[128] = "TK1 " ID " ";
    memset(longname + strlen(longname), 'n', 65);
    cr_assert_eq(th_cm_node(longname, &id, &flag, name), -EINVAL, "65-byte name");
    cr_assert_eq(th_cm_presence_question("TP1 6162", user), 2);
    cr_assert_eq(th_cm_presence_question("TP1 ", user), -EINVAL);
}

Test(cluster_msg, presence_answers)
{
    struct th_cm_presence_head h;
    struct th_cm_pconn c;
    const char *s = "TQ1 " ID " 1 1700000000000000000 b\n0 1 2\n3 4 5\n";
    int off = th_cm_presence_head(s, &h);
    cr_assert_gt(off, 0);
    cr_assert_eq(h.has_last_seen, 1);
    cr_assert_eq(h.last_seen, 1700000000000000000ull);
    cr_assert_str_eq(h.name, "b");
    size_t o = (size_t)off;
    cr_assert_eq(th_cm_presence_line(s, &o, &c), 1);
    cr_assert_eq(c.worker, 0);
    cr_assert_eq(c.connected_at, 1);
    cr_assert_eq(c.last_seen, 2);
    cr_assert_eq(th_cm_presence_line(s, &o, &c), 1);
    cr_assert_eq(c.worker, 3);
    cr_assert_eq(th_cm_presence_line(s, &o, &c), 0);
    cr_assert_eq(th_cm_presence_head("TQ1 " ID " 2 0 b\n", &h), -EINVAL, "has_ls is 0 or 1");
    cr_assert_eq(th_cm_presence_head("TQ1 " ID " 0 0 b x\n", &h), -EINVAL);
    o = 0;
    cr_assert_eq(th_cm_presence_line("65536 1 2\n", &o, &c), -EINVAL, "worker bound");
    o = 0;
    cr_assert_eq(th_cm_presence_line("1 2\n", &o, &c), -EINVAL);
}

Test(cluster_msg, reply_tokens)
{
    uint32_t i, g;
    cr_assert_eq(th_cm_reply_token("b", &i, &g), 'b');
    cr_assert_eq(th_cm_reply_token("12_34", &i, &g), 'd');
    cr_assert_eq(i, 12);
    cr_assert_eq(g, 34);
    cr_assert_eq(th_cm_reply_token("p5_0", &i, &g), 'p');
    cr_assert_eq(i, 5);
    const char *bad[] = {"",   "h",     "hh", "bb",           "12",  "12_",
                         "_3", "12_3x", "p",  "4294967296_1", "1_-1"};
    for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++)
        cr_assert_eq(th_cm_reply_token(bad[k], &i, &g), -EINVAL, "%s", bad[k]);
}

Test(cluster_msg, batch_subjects)
{
    char out[32];
    /* An asker of now: single replies on "<I>.a.*", batches on "<I>.b". */
    cr_assert_eq(th_cm_batch_subject("_INBOX.x.a.12_34", out, sizeof(out)), 10);
    cr_assert_str_eq(out, "_INBOX.x.b");
    /* An asker of before (one "<I>.*" subscription): "<I>.b" as before. */
    cr_assert_eq(th_cm_batch_subject("_INBOX.x.12_34", out, sizeof(out)), 10);
    cr_assert_str_eq(out, "_INBOX.x.b");
    /* ".a" is only the asker's marker as a whole token. */
    cr_assert_eq(th_cm_batch_subject("_INBOX.xa.1_2", out, sizeof(out)), 11);
    cr_assert_str_eq(out, "_INBOX.xa.b");
    cr_assert_eq(th_cm_batch_subject("a.1_2", out, sizeof(out)), 3);
    cr_assert_str_eq(out, "a.b");
    /* Bounded by cap with the NUL: 10 + 1 fits 11, not 10. */
    cr_assert_eq(th_cm_batch_subject("_INBOX.x.a.1_2", out, 11), 10);
    cr_assert_eq(th_cm_batch_subject("_INBOX.x.a.1_2", out, 10), -EINVAL);
    const char *bad[] = {"", "1_2", ".1_2", "_INBOX.x.b", "_INBOX.x.p1_2", "_INBOX.x.a.", "x.a.1_"};
    for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++)
        cr_assert_eq(th_cm_batch_subject(bad[k], out, sizeof(out)), -EINVAL, "%s", bad[k]);
}
