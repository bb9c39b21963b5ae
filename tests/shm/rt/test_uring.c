/*
 * Unit tests of the io_uring helper (shm/rt/uring.c): the user_data codec
 * round-trips and masks, and th_uring_sqe never drops work: with a tiny
 * submission queue, many more requests than it holds are all taken (it
 * submits when full) and every one of them completes.
 */
#include "shm/rt/uring.h"
#include "shm/rt/clock.h"

#include <criterion/criterion.h>

Test(uring, user_data_codec)
{
    uint64_t ud = th_ud_make(7, 0x123456, 0xdeadbeef);
    cr_assert_eq(th_ud_kind(ud), 7);
    cr_assert_eq(th_ud_idx(ud), 0x123456);
    cr_assert_eq(th_ud_gen(ud), 0xdeadbeef);
    ud = th_ud_make(255, TH_UD_IDX_MAX, UINT32_MAX);
    cr_assert_eq(th_ud_kind(ud), 255);
    cr_assert_eq(th_ud_idx(ud), TH_UD_IDX_MAX);
    cr_assert_eq(th_ud_gen(ud), UINT32_MAX);
    ud = th_ud_make(1, TH_UD_IDX_MAX + 2, 0); /* an index too wide is masked, not spilled */
    cr_assert_eq(th_ud_kind(ud), 1);
    cr_assert_eq(th_ud_idx(ud), 1);
}

Test(uring, full_queue_is_submitted_not_dropped)
{
    struct io_uring ring;
    int rc = th_uring_init(&ring, 8, 1024);
    if (rc == -ENOSYS || rc == -EPERM)
        cr_skip_test("io_uring unavailable here (%d)", rc);
    cr_assert_eq(rc, 0, "th_uring_init: %d", rc);
    enum { N = 300 };
    for (uint32_t i = 0; i < N; i++) {
        struct io_uring_sqe *sqe = th_uring_sqe(&ring);
        cr_assert_not_null(sqe, "request %u of %d (queue holds 8)", i, N);
        io_uring_prep_nop(sqe);
        io_uring_sqe_set_data64(sqe, th_ud_make(1, i, 42));
    }
    static char seen[N];
    int done = 0;
    uint64_t deadline = th_mono_ns() + 10 * TH_NS_PER_S;
    while (done < N && th_mono_ns() < deadline) {
        cr_assert_eq(th_uring_wait(&ring, 100 * TH_NS_PER_MS), 0);
        struct io_uring_cqe *cqe;
        unsigned head, n = 0;
        io_uring_for_each_cqe(&ring, head, cqe)
        {
            uint64_t ud = io_uring_cqe_get_data64(cqe);
            cr_assert_eq(th_ud_gen(ud), 42);
            cr_assert_lt(th_ud_idx(ud), N);
            cr_assert_eq(seen[th_ud_idx(ud)], 0, "request %u completed twice", th_ud_idx(ud));
            seen[th_ud_idx(ud)] = 1;
            done++, n++;
        }
        io_uring_cq_advance(&ring, n);
    }
    cr_assert_eq(done, N, "%d of %d requests completed", done, N);
    io_uring_queue_exit(&ring);
}
