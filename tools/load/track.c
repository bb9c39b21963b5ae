/*
 * tether-load --resume's client-side bookkeeping (see track.h). Frames are
 * parsed with jansson: only the resume runs pay for it, at notification
 * rates, never the ping path.
 */
#include "tools/load/track.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int grow(uint8_t **a, size_t *cap, size_t need, size_t old_cap, int second)
{
    if (need <= old_cap)
        return 0;
    size_t nc = old_cap ? old_cap : 4096;
    while (nc < need)
        nc *= 2;
    uint8_t *p = realloc(*a, nc);
    if (!p)
        return -ENOMEM;
    memset(p + old_cap, 0, nc - old_cap);
    *a = p;
    if (second)
        *cap = nc;
    return 0;
}

/* Both per-notification arrays always have the same capacity. */
static int ensure(struct trk *t, uint64_t n)
{
    size_t old = t->cap;
    if (n >= (uint64_t)1 << 32)
        return -ERANGE;
    if (grow(&t->accepted, &t->cap, (size_t)n + 1, old, 0) < 0 ||
        grow(&t->processed, &t->cap, (size_t)n + 1, old, 1) < 0)
        return -ENOMEM;
    return 0;
}

int trk_accepted(struct trk *t, uint64_t n)
{
    int rc = ensure(t, n);
    if (rc == 0)
        t->accepted[n] = 1;
    return rc;
}

static int seen_test_set(struct trk_user *u, uint64_t seq)
{
    size_t w = (size_t)(seq / 64);
    if (w >= u->seen_words) {
        size_t nw = u->seen_words ? u->seen_words * 2 : 4;
        while (nw <= w)
            nw *= 2;
        uint64_t *p = realloc(u->seen, nw * sizeof(*p));
        if (!p)
            return -ENOMEM;
        memset(p + u->seen_words, 0, (nw - u->seen_words) * sizeof(*p));
        u->seen = p, u->seen_words = nw;
    }
    uint64_t bit = 1ull << (seq % 64);
    int was = (u->seen[w] & bit) != 0;
    u->seen[w] |= bit;
    return was;
}

/* A different epoch: the old seqs mean nothing any more. */
static void set_epoch(struct trk *t, struct trk_user *u, const char *e)
{
    if (!e || !*e || strlen(e) > TRK_EPOCH_MAX || !strcmp(u->epoch, e))
        return;
    if (u->epoch[0])
        t->c.epoch_changes++;
    snprintf(u->epoch, sizeof(u->epoch), "%s", e);
    u->last = 0;
    if (u->seen)
        memset(u->seen, 0, u->seen_words * sizeof(*u->seen));
}

static uint64_t id_number(const struct trk *t, const char *id)
{
    size_t pl = strlen(t->idpfx);
    if (!id || strncmp(id, t->idpfx, pl) != 0 || !id[pl])
        return UINT64_MAX;
    char *end;
    unsigned long long v = strtoull(id + pl, &end, 10);
    return *end ? UINT64_MAX : (uint64_t)v;
}

static enum trk_frame note(struct trk *t, struct trk_user *u, json_t *root, uint64_t *n_out)
{
    json_t *js = json_object_get(root, "seq");
    const char *ep = json_string_value(json_object_get(root, "epoch"));
    *n_out = id_number(t, json_string_value(json_object_get(root, "id")));
    if (!json_is_integer(js) || json_integer_value(js) <= 0) {
        t->c.bad_frames++;
        return TRK_OTHER;
    }
    uint64_t seq = (uint64_t)json_integer_value(js);
    set_epoch(t, u, ep);
    int was = seen_test_set(u, seq);
    if (was) {
        t->c.dup_frames++; /* the client drops it */
        return TRK_NOTE_DROPPED;
    }
    if (seq < u->last)
        t->c.reordered++;
    else
        u->last = seq;
    if (*n_out != UINT64_MAX && ensure(t, *n_out) == 0) {
        if (t->processed[*n_out])
            t->c.dup++;
        t->processed[*n_out] = 1;
    }
    return TRK_NOTE_NEW;
}

enum trk_frame trk_frame(struct trk *t, struct trk_user *u, const char *p, size_t n,
                         uint64_t *n_out)
{
    *n_out = UINT64_MAX;
    json_t *root = json_loadb(p, n, 0, NULL);
    const char *type = json_string_value(json_object_get(root, "type"));
    enum trk_frame r = TRK_OTHER;
    if (!type || !strcmp(type, "pong") || !strcmp(type, "error")) {
        r = TRK_OTHER;
    } else if (!strcmp(type, "resumed")) {
        t->c.resumes++;
        if (!json_is_true(json_object_get(root, "recovered")))
            t->c.recovered_false++;
        t->c.replayed += (uint64_t)json_integer_value(json_object_get(root, "replay"));
        set_epoch(t, u, json_string_value(json_object_get(root, "epoch")));
        r = TRK_RESUMED;
    } else {
        r = note(t, u, root, n_out);
    }
    json_decref(root);
    return r;
}

uint64_t trk_lost(const struct trk *t, uint64_t upto)
{
    uint64_t lost = 0;
    for (uint64_t i = 0; i < upto && i < t->cap; i++)
        lost += t->accepted[i] && !t->processed[i];
    return lost;
}

int trk_resume_query(const struct trk_user *u, char *out, size_t cap)
{
    int n = u->epoch[0]
                ? snprintf(out, cap, "since=%llu&epoch=%s", (unsigned long long)u->last, u->epoch)
                : snprintf(out, cap, "since=%llu", (unsigned long long)u->last);
    return n > 0 && (size_t)n < cap ? n : -ENOSPC;
}

void trk_user_free(struct trk_user *u)
{
    free(u->seen);
    memset(u, 0, sizeof(*u));
}

void trk_free(struct trk *t)
{
    free(t->accepted);
    free(t->processed);
    t->accepted = t->processed = NULL;
    t->cap = 0;
}
