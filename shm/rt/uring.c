/*
 * The io_uring helper (see shm/rt/uring.h): ring set-up with its flag
 * fallback chain, the SQE getter that submits instead of dropping work, and
 * the wait with its error filter.
 */
#include "shm/rt/uring.h"
#include "shm/rt/clock.h"
#include "shm/rt/log.h"

#include <errno.h>
#include <string.h>

/* Transient io_uring_enter results: interrupted, or the kernel wants a moment. */
static int transient(int rc)
{
    return rc == -EINTR || rc == -EAGAIN || rc == -EBUSY;
}

/* Submits a queue-full ring retries before the getter gives up. */
#define SUBMIT_TRIES 1000

int th_uring_init(struct io_uring *ring, unsigned sq_entries, unsigned cq_entries)
{
    /* EINVAL means "flag unknown to this kernel": try the next set. */
    static const unsigned tries[] = {
        IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_COOP_TASKRUN,
        IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
        IORING_SETUP_COOP_TASKRUN,
        0,
    };
    int rc = -EINVAL;
    for (size_t i = 0; i < sizeof(tries) / sizeof(tries[0]) && rc == -EINVAL; i++) {
        struct io_uring_params p;
        memset(&p, 0, sizeof(p));
        p.flags = tries[i] | IORING_SETUP_CQSIZE;
        p.cq_entries = cq_entries;
        rc = io_uring_queue_init_params(sq_entries, ring, &p);
        if (rc == 0)
            th_debug("io_uring set up with flags 0x%x", p.flags);
    }
    if (rc < 0)
        th_error("io_uring_queue_init_params: %s (kernel without io_uring, or disabled by sysctl "
                 "kernel.io_uring_disabled / seccomp)",
                 strerror(-rc));
    return rc;
}

struct io_uring_sqe *th_uring_sqe(struct io_uring *ring)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    for (int tries = 0; !sqe && tries < SUBMIT_TRIES; tries++) {
        int rc = io_uring_submit(ring);
        if (rc < 0 && !transient(rc)) {
            th_error("io_uring_submit: %s", strerror(-rc));
            return NULL;
        }
        sqe = io_uring_get_sqe(ring);
    }
    if (!sqe)
        th_error("io_uring_submit: the submission queue stayed full over %d submits", SUBMIT_TRIES);
    return sqe;
}

int th_uring_wait(struct io_uring *ring, uint64_t timeout_ns)
{
    struct __kernel_timespec ts = {.tv_sec = (long long)(timeout_ns / TH_NS_PER_S),
                                   .tv_nsec = (long long)(timeout_ns % TH_NS_PER_S)};
    struct io_uring_cqe *cqe;
    int rc = io_uring_submit_and_wait_timeout(ring, &cqe, 1, &ts, NULL);
    if (rc >= 0 || rc == -ETIME || transient(rc))
        return 0;
    th_warn("io_uring_submit_and_wait_timeout: %s", strerror(-rc));
    return rc;
}
