/*
 * What tether-load --resume checks, as a client app would: per user the
 * last seq it processed and the epoch it came with (sent back as
 * ?since=&epoch= on every reconnect), the seqs seen (a frame whose seq was
 * already seen is a duplicate the client drops; one below the last but
 * never seen arrived out of order), and per notification (tether-load's own
 * id number n) whether the API accepted it (200/202) and whether the client
 * processed it. lost = accepted and never processed; dup = processed twice
 * although the seqs differed (a duplicate the client's seq dedup cannot
 * catch: the server stored it twice).
 *
 * No I/O; the load loop feeds it frames and API answers.
 */
#ifndef TETHER_LOAD_TRACK_H
#define TETHER_LOAD_TRACK_H

#include <stddef.h>
#include <stdint.h>

#define TRK_EPOCH_MAX 64

struct trk_user {
    uint64_t last; /* highest seq processed in this epoch (0 = none) */
    char epoch[TRK_EPOCH_MAX + 1];
    uint64_t *seen; /* bit per seq of this epoch */
    size_t seen_words;
};

struct trk_counts {
    uint64_t resumes, recovered_false, replayed; /* resumed frames and their replay counts */
    uint64_t dup_frames;    /* frames dropped by seq dedup (server sent a seq twice) */
    uint64_t dup;           /* processed twice under different seqs */
    uint64_t reordered;     /* processed after a higher seq of the same user */
    uint64_t epoch_changes; /* the user's epoch changed (its stored notifications were lost) */
    uint64_t bad_frames;    /* a notification without a parsable seq */
};

struct trk {
    char idpfx[64];                /* ids of ours are idpfx followed by n in decimal */
    uint8_t *accepted, *processed; /* per notification n */
    size_t cap;
    struct trk_counts c;
};

enum trk_frame { TRK_OTHER = 0, TRK_NOTE_NEW, TRK_NOTE_DROPPED, TRK_RESUMED };

/* Mark notification n as accepted by the API (a 200 or 202 answer). 0 or -ENOMEM. */
int trk_accepted(struct trk *t, uint64_t n);
/*
 * One text frame received by user u. For a notification, *n_out is the
 * notification number parsed from its id ("<prefix>-<n>"; UINT64_MAX when
 * the id is not ours). Returns what the frame was: a notification processed
 * now (TRK_NOTE_NEW), one dropped as a duplicate (TRK_NOTE_DROPPED), a
 * resumed frame, or something else (pong, error).
 */
enum trk_frame trk_frame(struct trk *t, struct trk_user *u, const char *p, size_t n,
                         uint64_t *n_out);
/* Accepted notifications never processed, among n < upto. */
uint64_t trk_lost(const struct trk *t, uint64_t upto);
/* Query parameters for user u's next connection: "since=S&epoch=E" (or "since=0"). */
int trk_resume_query(const struct trk_user *u, char *out, size_t cap);
void trk_user_free(struct trk_user *u);
void trk_free(struct trk *t);

#endif
