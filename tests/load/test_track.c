/*
 * Unit tests of tether-load --resume's bookkeeping (tools/load/track.c):
 * in-order frames, a duplicate seq dropped, a late seq counted as reordered,
 * the same notification under two seqs counted as dup, lost = accepted and
 * never processed, an epoch change resetting the user's seqs, and the
 * resume query sent on the next connection.
 */
#include "tools/load/track.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

static enum trk_frame feed(struct trk *t, struct trk_user *u, const char *s, uint64_t *n)
{
    return trk_frame(t, u, s, strlen(s), n);
}

static const char *note(uint64_t seq, const char *epoch, uint64_t n)
{
    static char buf[256];
    snprintf(buf, sizeof buf,
             "{\"type\":\"load.test\",\"id\":\"L-p0-%llu\",\"seq\":%llu,\"epoch\":\"%s\","
             "\"timestamp\":\"x\",\"data\":{\"t_ns\":1}}",
             (unsigned long long)n, (unsigned long long)seq, epoch);
    return buf;
}

Test(track, order_dup_reorder_lost)
{
    struct trk t = {.idpfx = "L-p0-"};
    struct trk_user u = {0};
    uint64_t n;
    for (uint64_t k = 0; k < 5; k++)
        cr_assert_eq(trk_accepted(&t, k), 0);
    cr_expect_eq(feed(&t, &u, note(1, "e1", 0), &n), TRK_NOTE_NEW);
    cr_expect_eq(n, 0);
    cr_expect_eq(feed(&t, &u, note(2, "e1", 1), &n), TRK_NOTE_NEW);
    cr_expect_eq(feed(&t, &u, note(2, "e1", 1), &n), TRK_NOTE_DROPPED, "same seq again");
    cr_expect_eq(t.c.dup_frames, 1);
    cr_expect_eq(feed(&t, &u, note(4, "e1", 3), &n), TRK_NOTE_NEW);
    cr_expect_eq(feed(&t, &u, note(3, "e1", 2), &n), TRK_NOTE_NEW);
    cr_expect_eq(t.c.reordered, 1, "3 after 4");
    cr_expect_eq(u.last, 4);
    cr_expect_eq(feed(&t, &u, note(5, "e1", 3), &n), TRK_NOTE_NEW);
    cr_expect_eq(t.c.dup, 1, "notification 3 processed under seq 4 and 5");
    cr_expect_eq(trk_lost(&t, 5), 1, "notification 4 never came");
    cr_expect_eq(t.c.epoch_changes, 0);
    char q[128];
    cr_assert_gt(trk_resume_query(&u, q, sizeof q), 0);
    cr_expect_str_eq(q, "since=5&epoch=e1");
    trk_user_free(&u);
    trk_free(&t);
}

Test(track, resumed_and_epoch_change)
{
    struct trk t = {.idpfx = "L-p0-"};
    struct trk_user u = {0};
    uint64_t n;
    char q[128];
    trk_resume_query(&u, q, sizeof q);
    cr_expect_str_eq(q, "since=0", "first connection: nothing seen yet");
    const char *r1 =
        "{\"type\":\"resumed\",\"recovered\":true,\"epoch\":\"e1\",\"since\":0,\"replay\":2}";
    cr_expect_eq(feed(&t, &u, r1, &n), TRK_RESUMED);
    cr_expect_str_eq(u.epoch, "e1");
    feed(&t, &u, note(7, "e1", 0), &n);
    const char *r2 =
        "{\"type\":\"resumed\",\"recovered\":false,\"epoch\":\"e2\",\"since\":7,\"replay\":0}";
    cr_expect_eq(feed(&t, &u, r2, &n), TRK_RESUMED);
    cr_expect_eq(t.c.resumes, 2);
    cr_expect_eq(t.c.recovered_false, 1);
    cr_expect_eq(t.c.replayed, 2);
    cr_expect_eq(t.c.epoch_changes, 1);
    cr_expect_eq(u.last, 0, "a new epoch starts over");
    cr_expect_eq(feed(&t, &u, note(1, "e2", 1), &n), TRK_NOTE_NEW, "seq 1 of the new epoch is new");
    cr_expect_eq(t.c.reordered, 0);
    cr_expect_eq(feed(&t, &u, "{\"type\":\"pong\",\"timestamp\":\"x\"}", &n), TRK_OTHER);
    cr_expect_eq(feed(&t, &u, "{\"type\":\"x\",\"id\":\"L-p0-9\"}", &n), TRK_OTHER);
    cr_expect_eq(t.c.bad_frames, 1, "a notification without seq");
    trk_user_free(&u);
    trk_free(&t);
}
