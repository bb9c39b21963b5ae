/*
 * Formatting of registry and log timestamps (see shm/rt/clock.h).
 */
#include "shm/rt/clock.h"

#include <stdio.h>

static size_t fmt_utc(char *buf, size_t cap, uint64_t ns, int with_ms)
{
    time_t s = (time_t)(ns / TH_NS_PER_S);
    struct tm tm;
    gmtime_r(&s, &tm);
    int n;
    if (with_ms)
        n = snprintf(buf, cap, "%04d-%02d-%02dT%02d:%02d:%02d.%03uZ", tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     (unsigned)((ns % TH_NS_PER_S) / TH_NS_PER_MS));
    else
        n = snprintf(buf, cap, "%04d-%02d-%02dT%02d:%02d:%02dZ", tm.tm_year + 1900, tm.tm_mon + 1,
                     tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
    return n < 0 ? 0 : (size_t)n;
}

size_t th_fmt_rfc3339(char *buf, size_t cap, uint64_t ns)
{
    return fmt_utc(buf, cap, ns, 0);
}

size_t th_fmt_rfc3339_ms(char *buf, size_t cap, uint64_t ns)
{
    return fmt_utc(buf, cap, ns, 1);
}

size_t th_fmt_duration(char *buf, size_t cap, uint64_t ns)
{
    uint64_t ms = ns / TH_NS_PER_MS, s = ms / 1000;
    int n;
    if (s == 0)
        n = snprintf(buf, cap, "%llums", (unsigned long long)ms);
    else if (s < 60)
        n = snprintf(buf, cap, "%llu.%01llus", (unsigned long long)s,
                     (unsigned long long)(ms % 1000) / 100);
    else if (s < 3600)
        n = snprintf(buf, cap, "%llum%02llus", (unsigned long long)(s / 60),
                     (unsigned long long)(s % 60));
    else
        n = snprintf(buf, cap, "%lluh%02llum", (unsigned long long)(s / 3600),
                     (unsigned long long)(s / 60 % 60));
    return n < 0 ? 0 : (size_t)n;
}
