/*
 * The one io_uring helper every event loop uses (worker/worker.c,
 * notifier/server.c and the notifier's route):
 *
 * - user_data codec: kind (8 bits) | index (24 bits) | generation (32 bits).
 *   The index names a table entry (connection, channel, job) and the
 *   generation its incarnation, so a completion that arrives after the entry
 *   was reused is recognised and dropped. The notifier's handoff seq uses the
 *   same packing (leg, job, job generation).
 * - th_uring_sqe: an SQE that never silently drops work: with the queue full
 *   it submits what is queued and retries; it fails only when the ring itself
 *   is broken, and then the caller must act (the result is warn_unused_result).
 * - th_uring_init: one ring set-up with one flag fallback chain.
 * - th_uring_wait: submit and wait with a timeout, the benign results
 *   (timeout, signal, busy) filtered out.
 * Errors are negative errno; the log line names the io_uring call that failed.
 */
#ifndef TETHER_SHM_RT_URING_H
#define TETHER_SHM_RT_URING_H

#include <liburing.h>
#include <stdint.h>

#define TH_UD_IDX_MAX 0xffffffu /* largest index the codec carries */

static inline uint64_t th_ud_make(unsigned kind, uint32_t idx, uint32_t gen)
{
    return ((uint64_t)(kind & 0xffu) << 56) | ((uint64_t)(idx & TH_UD_IDX_MAX) << 32) | gen;
}
static inline unsigned th_ud_kind(uint64_t ud)
{
    return (unsigned)(ud >> 56);
}
static inline uint32_t th_ud_idx(uint64_t ud)
{
    return (uint32_t)(ud >> 32) & TH_UD_IDX_MAX;
}
static inline uint32_t th_ud_gen(uint64_t ud)
{
    return (uint32_t)ud;
}

/*
 * Set up ring with sq_entries and a completion queue of cq_entries. Flags,
 * first that the kernel takes: single issuer + deferred task running (+
 * cooperative task running), single issuer + deferred, cooperative, none.
 * Returns 0 or -errno (logged, naming io_uring_queue_init_params).
 */
int th_uring_init(struct io_uring *ring, unsigned sq_entries, unsigned cq_entries);

/*
 * A free SQE. When the submission queue is full, submits what is queued
 * (retrying interrupted or busy submits) and takes one then. NULL only if
 * io_uring_submit fails for good (logged): the caller must handle it, e.g.
 * close the connection the request was for.
 */
__attribute__((warn_unused_result)) struct io_uring_sqe *th_uring_sqe(struct io_uring *ring);

/*
 * Submit what is queued and wait up to timeout_ns for at least one
 * completion. Returns 0 (completions may or may not be there: the caller
 * walks the CQ either way) or the -errno of a real failure, logged.
 */
int th_uring_wait(struct io_uring *ring, uint64_t timeout_ns);

#endif
