/*
 * Per-stage timestamps of the notify path, for a build configured with
 * -DTETHER_STAGES=ON (a measuring build; every other build compiles the
 * calls away). Each process keeps (key, stage, monotonic ns) records in
 * memory and writes them at exit to $TETHER_STAGES_DIR/stages-<pid>.txt,
 * one "key stage ns" line each; the key is the leg's control-channel seq,
 * which the notifier and the worker both see, so tools/stages can join the
 * two processes' records and print where a notification's microseconds go.
 * Without TETHER_STAGES_DIR nothing is recorded.
 */
#ifndef TETHER_SHM_RT_STAGE_H
#define TETHER_SHM_RT_STAGE_H

#include <stdint.h>

enum th_stage {
    TH_ST_N_RECV = 1, /* notifier: the request's bytes came in (recv completion) */
    TH_ST_N_PARSED,   /* body parsed and validated */
    TH_ST_N_RENDERED, /* stored in the mailbox, frame rendered, handed to the route */
    TH_ST_N_SENT,     /* its packet left for the worker (sendmmsg returned) */
    TH_ST_W_RECV,     /* worker: the packet's recv completion handled */
    TH_ST_W_QUEUED,   /* the WebSocket frame queued on the connection */
    TH_ST_W_SUBMIT,   /* the loop submits the socket send (io_uring_enter) */
    TH_ST_N_REPLY,    /* notifier: the worker's confirmation read */
    TH_ST_N_ANSWER,   /* the HTTP answer written for sending (key: the notifier's item) */
    TH_ST_LINK,       /* key = first leg's seq, ns = the notifier's item key it belongs to */
    TH_ST_N_FLUSH,    /* notifier: the flush before the loop's wait calls sendmmsg */
};

#ifdef TETHER_STAGES
void th_stage_mark(uint64_t key, enum th_stage st, uint64_t mono_ns);
/* Write the records (once, at exit). */
void th_stage_flush(void);
#define TH_STAGE(key, st, ns) th_stage_mark((key), (st), (ns))
#else
#define TH_STAGE(key, st, ns) ((void)0)
static inline void th_stage_flush(void) {}
#endif

#endif
