/*
 * The one user-id rule of the contract: a user id is 1 to TH_USER_MAX bytes
 * with no control characters (C0 or DEL). The JWT verifier applies it to
 * "sub" and the notifier's API to "user_id" and presence paths, so both entry
 * points refuse exactly the same ids. The registry stores what it is given
 * and checks only the length half (th_userid_len_ok): the segment must stay
 * well-formed whatever a caller passes, and tether-dump must show any bytes
 * it finds there (tests/shm claims binary ids on purpose).
 */
#ifndef TETHER_SHM_PROTO_USERID_H
#define TETHER_SHM_PROTO_USERID_H

#include <stdbool.h>
#include <stddef.h>

#define TH_USER_MAX 64

/* The rule in words, for error replies: "1 to 64 bytes without control characters". */
#define TH_USERID_STR_(x) #x
#define TH_USERID_STR(x) TH_USERID_STR_(x)
#define TH_USERID_RULE_TEXT "1 to " TH_USERID_STR(TH_USER_MAX) " bytes without control characters"

/* Does s (n bytes, not necessarily NUL-terminated) satisfy the whole rule? */
bool th_userid_valid(const char *s, size_t n);

/* The length half of the rule: 1 to TH_USER_MAX bytes. */
static inline bool th_userid_len_ok(size_t n)
{
    return n >= 1 && n <= TH_USER_MAX;
}

#endif
