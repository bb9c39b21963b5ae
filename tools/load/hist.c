/*
 * Log-linear histogram: values below 128 ns have a bucket each; above, the
 * top 7 significant bits pick the bucket inside its power of two.
 */
#include "tools/load/hist.h"

static unsigned bucket_of(uint64_t v)
{
    if (v < (2u << LH_SUB_BITS))
        return (unsigned)v;
    unsigned e = 63 - (unsigned)__builtin_clzll(v);
    if (e > LH_MAX_EXP) {
        e = LH_MAX_EXP;
        v = (2ull << LH_MAX_EXP) - 1;
    }
    unsigned m = (unsigned)(v >> (e - LH_SUB_BITS)); /* in [64, 127] */
    return (e - LH_SUB_BITS) * (1u << LH_SUB_BITS) + m;
}

/* Largest value that falls in bucket i. */
static uint64_t bucket_top(unsigned i)
{
    if (i < (2u << LH_SUB_BITS))
        return i;
    unsigned e = i / (1u << LH_SUB_BITS) + LH_SUB_BITS - 1;
    uint64_t m = i % (1u << LH_SUB_BITS) + (1u << LH_SUB_BITS);
    return ((m + 1) << (e - LH_SUB_BITS)) - 1;
}

void lh_record(struct lhist *h, uint64_t ns)
{
    h->b[bucket_of(ns)]++;
    h->count++;
    if (ns > h->max_ns)
        h->max_ns = ns;
}

void lh_merge(struct lhist *into, const struct lhist *from)
{
    for (unsigned i = 0; i < LH_BUCKETS; i++)
        into->b[i] += from->b[i];
    into->count += from->count;
    if (from->max_ns > into->max_ns)
        into->max_ns = from->max_ns;
}

uint64_t lh_quantile(const struct lhist *h, double q)
{
    if (h->count == 0)
        return 0;
    uint64_t rank = (uint64_t)(q * (double)h->count);
    if (rank >= h->count)
        rank = h->count - 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < LH_BUCKETS; i++) {
        seen += h->b[i];
        if (seen > rank) {
            uint64_t top = bucket_top(i);
            return top < h->max_ns ? top : h->max_ns;
        }
    }
    return h->max_ns;
}
