/*
 * Incremental UTF-8 validation (RFC 3629: no overlongs, no surrogates,
 * nothing above U+10FFFF) for WebSocket text messages, which arrive in
 * fragments split anywhere, even inside a code point. The state carries the
 * partial code point across calls; a text message fails at the first bad
 * byte, not at the end of the message.
 */
#ifndef TETHER_SHM_PROTO_UTF8_H
#define TETHER_SHM_PROTO_UTF8_H

#include <stddef.h>
#include <stdint.h>

#define TH_UTF8_ACCEPT 0u /* between code points: a message may end here */
#define TH_UTF8_REJECT 1u /* invalid: sticky */

/* Feed n bytes; returns the new state (TH_UTF8_ACCEPT, TH_UTF8_REJECT or "inside a code point"). */
uint32_t th_utf8_feed(uint32_t state, const uint8_t *p, size_t n);

#endif
