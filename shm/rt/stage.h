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

#include <stddef.h>
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
    /*
     * The cluster steps, keyed by the load generator's "t_ns" (its send
     * time, read from the notification's data), which every process sees:
     * tools/stages joins the asker's, the holder's and the client's records
     * on it, and a leg to it through TH_ST_T_KEY.
     */
    TH_ST_T_KEY,     /* key = leg seq, ns = the notification's t_ns */
    TH_ST_H_WAKE,    /* asker: its loop woke with the request's bytes */
    TH_ST_H_RECV,    /* asker: the request's recv completion handled */
    TH_ST_R_PUB,     /* asker: the request published (in libnats' buffer) */
    TH_ST_R_WRITTEN, /* asker: libnats' buffer written to the broker socket */
    TH_ST_R_WAKE,    /* holder: its loop woke with the broker's bytes */
    TH_ST_R_REQ,     /* holder: the request handled (before the local route) */
    TH_ST_R_REPLY,   /* asker: the holder's confirmation applied */
    TH_ST_L_RX,      /* tether-load: the frame's kernel receive time */
    TH_ST_SCAN,      /* cluster route's interest scan: key = its start, ns = its end */
    TH_ST_ITER,      /* a loop iteration over 200 us: key = its wake, ns = its end */
    TH_ST_ITER_CPU,  /* ... key = its wake, ns = the thread's CPU time in it */
    TH_ST_R_POLL,    /* holder: the broker socket's poll completion taken (read next) */
};

#ifdef TETHER_STAGES
void th_stage_mark(uint64_t key, enum th_stage st, uint64_t mono_ns);
/* Write the records (once, at exit). */
void th_stage_flush(void);
/* The "t_ns" number in p[0..n) (the load generator's send time), 0 if none. */
uint64_t th_stage_tns(const void *p, size_t n);
/* A loop calls it right after its wait returns; th_stage_wake_ns says when. */
void th_stage_woke(void);
/* ... and this right before the next wait: a long iteration is recorded. */
void th_stage_iter(void);
extern uint64_t th_stage_wake_ns;
#define TH_STAGE(key, st, ns) th_stage_mark((key), (st), (ns))
#define TH_STAGE_WOKE() th_stage_woke()
#define TH_STAGE_ITER() th_stage_iter()
#else
#define TH_STAGE_ITER() ((void)0)
#define TH_STAGE(key, st, ns) ((void)0)
#define TH_STAGE_WOKE() ((void)0)
static inline void th_stage_flush(void) {}
#endif

#endif
