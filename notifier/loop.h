/*
 * user_data packing for the notifier's io_uring ring, in one place: the
 * kind of operation in the top byte, an index (connection, worker channel)
 * in the next 24 bits and a generation in the low 32, so a completion that
 * arrives after its connection slot was reused is recognised and dropped.
 */
#ifndef TETHER_NOTIFIER_LOOP_H
#define TETHER_NOTIFIER_LOOP_H

#include <liburing.h>
#include <stdint.h>

enum th_ud_kind {
    TH_UD_NONE = 0,   /* cancellations and other fire-and-forget SQEs */
    TH_UD_ACCEPT = 1, /* multishot accept on the API socket */
    TH_UD_RECV = 2,   /* recv on an API connection (idx = connection) */
    TH_UD_SEND = 3,   /* send on an API connection */
    TH_UD_ROUTE = 4,  /* owned by the route (notifier/route.h) */
};

static inline uint64_t th_ud_make(unsigned kind, uint32_t idx, uint32_t gen)
{
    return ((uint64_t)kind << 56) | ((uint64_t)(idx & 0xffffffu) << 32) | gen;
}
static inline unsigned th_ud_kind(uint64_t ud)
{
    return (unsigned)(ud >> 56);
}
static inline uint32_t th_ud_idx(uint64_t ud)
{
    return (uint32_t)(ud >> 32) & 0xffffffu;
}
static inline uint32_t th_ud_gen(uint64_t ud)
{
    return (uint32_t)ud;
}

/* An SQE, submitting what is queued first if the submission queue is full. */
static inline struct io_uring_sqe *th_get_sqe(struct io_uring *ring)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (!sqe) {
        io_uring_submit(ring);
        sqe = io_uring_get_sqe(ring);
    }
    return sqe;
}

#endif
