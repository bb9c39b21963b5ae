/*
 * Helpers shared by the mailbox tests: a unique --shm-name per object (pid
 * plus a counter), self-checking frames whose bytes encode the user, the
 * seq and a checksum (so a torn or misplaced copy is recognisable without
 * knowing what the writer meant), and a pid that belongs to no process.
 */
#ifndef TETHER_TESTS_SHM_MBX_TEST_H
#define TETHER_TESTS_SHM_MBX_TEST_H

#include "shm/mailbox.h"

#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static inline void mbx_test_name(char *buf, size_t cap, const char *tag)
{
    static unsigned seq;
    snprintf(buf, cap, "/th-test-mbx-%s-%d-%u", tag, (int)getpid(), seq++);
}

/* A pid that certainly belongs to no process now: a child we have reaped. */
static inline pid_t mbx_dead_pid(void)
{
    pid_t p = fork();
    if (p == 0)
        _exit(0);
    waitpid(p, NULL, 0);
    return p;
}

static inline uint32_t mbx_sum(const char *s, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

/*
 * {"user":"<user>","seq":<seq>,"pad":"xxx...","sum":<8 hex>}: pad length
 * from seq (so sizes vary and entries wrap the arena at odd places), sum
 * over everything before ,"sum".
 */
static inline size_t mbx_frame(char *buf, size_t cap, const char *user, uint64_t seq, size_t padmax)
{
    size_t pad = padmax ? (size_t)(seq * 37 % padmax) : 0;
    int n = snprintf(buf, cap, "{\"user\":\"%s\",\"seq\":%llu,\"pad\":\"", user,
                     (unsigned long long)seq);
    if (n < 0 || (size_t)n + pad + 32 > cap)
        return 0;
    memset(buf + n, 'a' + (int)(seq % 26), pad);
    size_t len = (size_t)n + pad;
    len += (size_t)snprintf(buf + len, cap - len, "\"");
    uint32_t s = mbx_sum(buf, len);
    len += (size_t)snprintf(buf + len, cap - len, ",\"sum\":\"%08x\"}", s);
    return len;
}

/* Is this frame whole, for this user and seq? */
static inline int mbx_frame_ok(const char *f, size_t len, const char *user, uint64_t seq)
{
    char want[TH_USER_MAX + 64];
    int n = snprintf(want, sizeof(want), "{\"user\":\"%s\",\"seq\":%llu,\"pad\":\"", user,
                     (unsigned long long)seq);
    const char *sum = len > 18 ? f + len - 18 : NULL;
    if (n < 0 || len < (size_t)n + 19 || memcmp(f, want, (size_t)n) != 0 || !sum ||
        memcmp(sum, ",\"sum\":\"", 8) != 0)
        return 0;
    char hex[9];
    snprintf(hex, sizeof(hex), "%08x", mbx_sum(f, len - 18));
    return memcmp(sum + 8, hex, 8) == 0 && f[len - 1] == '}';
}

#endif
