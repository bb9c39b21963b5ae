/*
 * Unit tests of the resume-parameter parser (shm/proto/resume_req.c): the
 * 64-bit boundary of since, the epoch length and alphabet bounds, absent
 * and empty values, and an epoch without since. Every query is parsed from a
 * guarded copy, so reading past its end crashes the test.
 */
#include "shm/proto/resume_req.h"
#include "tests/shm/proto/guard.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

static struct guard g;

static int parse(const char *q, struct th_resume_req *r, const char **why)
{
    guard_free(&g);
    size_t n = strlen(q);
    struct th_str s = {(const char *)guard_copy(&g, q, n ? n : 1), n};
    *why = NULL;
    return th_resume_parse(&s, r, why);
}

static void expect_bad(const char *q, const char *reason)
{
    struct th_resume_req r;
    const char *why;
    cr_expect_eq(parse(q, &r, &why), -EINVAL, "query '%s' accepted", q);
    cr_expect(why && strstr(why, reason), "query '%s': reason '%s', want '%s'", q, why ? why : "",
              reason);
}

Test(resume_req, no_since_is_no_resume)
{
    struct th_resume_req r;
    const char *why;
    cr_assert_eq(parse("token=abc", &r, &why), 0);
    cr_expect_eq(r.want, 0);
    cr_expect_null(r.epoch);
    cr_assert_eq(parse("", &r, &why), 0);
    cr_expect_eq(r.want, 0);
}

Test(resume_req, since_and_epoch)
{
    struct th_resume_req r;
    const char *why;
    cr_assert_eq(parse("token=x&since=17&epoch=3d15540311ddfde9", &r, &why), 0);
    cr_expect_eq(r.want, 1);
    cr_expect_eq(r.since, 17);
    cr_assert_eq(r.epoch_len, 16);
    cr_expect(!memcmp(r.epoch, "3d15540311ddfde9", 16));
}

Test(resume_req, since_zero_without_epoch)
{
    struct th_resume_req r;
    const char *why;
    cr_assert_eq(parse("since=0", &r, &why), 0);
    cr_expect_eq(r.want, 1);
    cr_expect_eq(r.since, 0);
    cr_expect_null(r.epoch);
    cr_assert_eq(parse("since=0&epoch=", &r, &why), 0, "an empty epoch counts as absent");
    cr_expect_null(r.epoch);
}

Test(resume_req, since_64bit_boundary)
{
    struct th_resume_req r;
    const char *why;
    cr_assert_eq(parse("since=18446744073709551615", &r, &why), 0);
    cr_expect_eq(r.since, UINT64_MAX);
    cr_assert_eq(parse("since=00000000000000000009", &r, &why), 0, "20 digits with leading zeros");
    cr_expect_eq(r.since, 9);
    expect_bad("since=18446744073709551616", "decimal within 64 bits");
    expect_bad("since=99999999999999999999", "decimal within 64 bits");
    expect_bad("since=000000000000000000001", "decimal within 64 bits"); /* 21 digits */
}

Test(resume_req, since_not_decimal)
{
    expect_bad("since=", "decimal");
    expect_bad("since", "decimal");
    expect_bad("since=-1", "decimal");
    expect_bad("since=+1", "decimal");
    expect_bad("since=1.5", "decimal");
    expect_bad("since=0x10", "decimal");
    expect_bad("since=%31", "decimal");
    expect_bad("since=1%20", "decimal");
    expect_bad("since=12a", "decimal");
}

Test(resume_req, epoch_bounds)
{
    struct th_resume_req r;
    const char *why;
    char q[128];
    memcpy(q, "since=1&epoch=", 14);
    memset(q + 14, 'a', 64);
    q[14 + 64] = 0;
    cr_assert_eq(parse(q, &r, &why), 0, "64 bytes is allowed");
    cr_expect_eq(r.epoch_len, 64);
    q[14 + 64] = 'a', q[14 + 65] = 0;
    expect_bad(q, "epoch over 64 bytes");
    expect_bad("since=1&epoch=ab%2Fcd", "epoch must be");
    expect_bad("since=1&epoch=a+b", "epoch must be");
    expect_bad("since=1&epoch=a\"b", "epoch must be");
}

Test(resume_req, epoch_without_since)
{
    expect_bad("epoch=3d15540311ddfde9", "epoch without since");
}

Test(resume_req, first_of_repeated_params)
{
    struct th_resume_req r;
    const char *why;
    cr_assert_eq(parse("since=5&since=x", &r, &why), 0);
    cr_expect_eq(r.since, 5);
}
