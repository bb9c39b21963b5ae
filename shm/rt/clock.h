/*
 * Time helpers. Registry timestamps (connected-at, LastSeen) are CLOCK_REALTIME
 * nanoseconds since the Unix epoch so every process, the dump tool and a
 * post-mortem reader agree on them without a shared reference point.
 */
#ifndef TETHER_SHM_RT_CLOCK_H
#define TETHER_SHM_RT_CLOCK_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define TH_NS_PER_S 1000000000ULL
#define TH_NS_PER_MS 1000000ULL

static inline uint64_t th_clock_ns(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * TH_NS_PER_S + (uint64_t)ts.tv_nsec;
}
/* Wall clock, for registry stamps and logs. */
static inline uint64_t th_now_ns(void)
{
    return th_clock_ns(CLOCK_REALTIME);
}
/* Monotonic clock, for timeouts and intervals inside one process. */
static inline uint64_t th_mono_ns(void)
{
    return th_clock_ns(CLOCK_MONOTONIC);
}

/* "2025-11-08T10:07:29Z" (RFC 3339, UTC, seconds). Returns length. */
size_t th_fmt_rfc3339(char *buf, size_t cap, uint64_t ns);
/* "2025-11-08T10:07:29.123Z", for log lines. Returns length. */
size_t th_fmt_rfc3339_ms(char *buf, size_t cap, uint64_t ns);
/* Human duration "4m12s", "3h02m", "850ms". Returns length. */
size_t th_fmt_duration(char *buf, size_t cap, uint64_t ns);

#endif
