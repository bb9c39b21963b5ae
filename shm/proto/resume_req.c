/*
 * Parsing of the resume parameters at the upgrade (rules in
 * shm/proto/resume_req.h). Kept apart from the replay itself so it stays a
 * pure function the unit tests and the fuzzers can drive directly.
 */
#include "shm/proto/resume_req.h"

#include <errno.h>
#include <string.h>

/* A decimal within 64 bits: 1-20 digits, no sign, no overflow. */
static int parse_u64(const struct th_str *s, uint64_t *out)
{
    uint64_t v = 0;
    if (s->n == 0 || s->n > 20)
        return -EINVAL;
    for (size_t i = 0; i < s->n; i++) {
        unsigned d = (unsigned char)s->p[i] - '0';
        if (d > 9 || v > (UINT64_MAX - d) / 10)
            return -EINVAL;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

static int epoch_char_ok(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-' ||
           c == '_';
}

int th_resume_parse(const struct th_str *query, struct th_resume_req *out, const char **why)
{
    struct th_str since, epoch;
    memset(out, 0, sizeof(*out));
    int has_since = th_http_query_param(query, "since", &since);
    int has_epoch = th_http_query_param(query, "epoch", &epoch) && epoch.n > 0;
    if (has_since && parse_u64(&since, &out->since) < 0) {
        *why = "since must be a decimal within 64 bits";
        return -EINVAL;
    }
    if (has_epoch && epoch.n > TH_EPOCH_MAX) {
        *why = "epoch over 64 bytes";
        return -EINVAL;
    }
    for (size_t i = 0; has_epoch && i < epoch.n; i++) {
        if (!epoch_char_ok(epoch.p[i])) {
            *why = "epoch must be letters, digits, '-' or '_'";
            return -EINVAL;
        }
    }
    if (has_epoch && !has_since) {
        *why = "epoch without since";
        return -EINVAL;
    }
    out->want = has_since;
    if (has_epoch)
        out->epoch = epoch.p, out->epoch_len = epoch.n;
    return 0;
}
