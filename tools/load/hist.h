/*
 * Fixed log-linear latency histogram for tether-load. Every process uses the
 * same bucket layout, so the parent merges children by adding bucket counts
 * and takes percentiles of the merged distribution (never an average of
 * per-child percentiles). 64 sub-buckets per power of two: relative error
 * under 1.6%, values in nanoseconds up to 2^40 (about 18 minutes).
 */
#ifndef TETHER_LOAD_HIST_H
#define TETHER_LOAD_HIST_H

#include <stdint.h>

#define LH_SUB_BITS 6
#define LH_MAX_EXP 40
#define LH_BUCKETS ((LH_MAX_EXP - LH_SUB_BITS + 1) * (1 << LH_SUB_BITS) + (1 << LH_SUB_BITS))

struct lhist {
    uint64_t count;
    uint64_t max_ns;
    uint64_t b[LH_BUCKETS];
};

void lh_record(struct lhist *h, uint64_t ns);
void lh_merge(struct lhist *into, const struct lhist *from);
/* Value at quantile q in [0,1], in ns (upper edge of the bucket, capped at max). */
uint64_t lh_quantile(const struct lhist *h, double q);

#endif
