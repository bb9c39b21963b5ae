/*
 * The worker's side of recovery: resuming a client from the mailbox
 * (shm/mailbox.h) and keeping each connection's notifications in seq order,
 * without a gap or a duplicate between replayed and live frames.
 *
 * Per connection the worker keeps seq_hi, the last seq it queued to that
 * client (known once the client resumed, or from its first live frame).
 * A live frame (TH_HO_DELIVER with nseq) is then:
 *   nseq <= seq_hi        already sent (replayed): dropped, answered OK;
 *   nseq == seq_hi + 1    sent;
 *   nseq >  seq_hi + 1    a gap (the notifier died between storing and
 *                         handing off, or a live frame overtook another):
 *                         the gap is filled from the mailbox first, then
 *                         the frame goes out.
 * A replay (resume, or a gap) runs in chunks from the loop (wk_resume_run):
 * a few frames per connection per iteration, only while the connection's
 * send queue is under half of --send-queue-cap, each chunk a fresh snapshot
 * from seq_hi. Live frames that arrive meanwhile with a seq past the
 * replay's target are held, in order, and sent when it ends (they count
 * against the send-queue cap like queued bytes).
 *
 * If what a replay still had to send leaves the mailbox meanwhile (evicted
 * oldest first, the user's record recycled) and the client was not told
 * recovered:false already, the connection is closed with 1011: the client
 * resumes and learns recovered:false instead of carrying on with a hole.
 *
 * A frame the JetStream catch-up marks TH_HO_F_IF_RESUMED (stored before
 * this connection came, handed over only now) goes through these rules if
 * the connection resumed (CF_RESUMED: set with the resume, before its
 * snapshot), and is answered TH_HO_GONE otherwise: a resume answered from
 * a cache that lagged is owed it, a client that came without since is not.
 *
 * Frames without a seq (mailbox off) or not stored (ttl_s 0:
 * TH_HO_F_NOT_STORED) are sent as they come, outside this ordering.
 */
#ifndef TETHER_WORKER_RESUME_H
#define TETHER_WORKER_RESUME_H

#include "shm/rt/channel.h"
#include "shm/proto/resume_req.h"

#include <stddef.h>
#include <stdint.h>

struct worker;

/* Attach the mailbox when it is on (w->mbx stays NULL when off). 0 or -errno. */
int wk_resume_setup(struct worker *w);
void wk_resume_shutdown(struct worker *w);
/*
 * Right after the 101 of a connection that holds its slot: when the client
 * asked (rr->want), send the resumed frame and start the replay.
 */
void wk_resume_start(struct worker *w, uint32_t idx, const struct th_resume_req *rr,
                     const char *user, size_t ulen);
/* A TH_HO_DELIVER for open connection idx: returns the reply status. */
uint16_t wk_resume_deliver(struct worker *w, uint32_t idx, const struct th_ho_msg *m,
                           const uint8_t *payload);
/* Advance the replays a chunk. Returns 1 when one can go on at once (do not block). */
int wk_resume_run(struct worker *w);
/* The connection's entry is being freed: drop its replay state. */
void wk_resume_conn_free(struct worker *w, uint32_t idx);

#endif
