/*
 * Incremental UTF-8 validation as a small deterministic automaton.
 *
 * Each byte is first mapped to one of twelve classes; the state says how
 * many continuation bytes are still owed and, right after a lead byte whose
 * range of legal second bytes is narrower than 80..BF, which narrower range
 * applies. That narrowing is what rejects overlongs (E0 80..9F, F0 80..8F),
 * surrogates (ED A0..BF) and code points above U+10FFFF (F4 90..BF) at the
 * second byte, so a bad message fails at the first bad byte. REJECT has no
 * way out, so a caller can feed a whole message and test the state once.
 */
#include "shm/proto/utf8.h"

#include <string.h>

/* States. ACCEPT and REJECT are fixed by the header; the rest are internal. */
enum {
    S_ACC = TH_UTF8_ACCEPT,
    S_REJ = TH_UTF8_REJECT,
    S_C1, /* one continuation byte owed, 80..BF */
    S_C2, /* two owed, 80..BF */
    S_C3, /* three owed, 80..BF */
    S_E0, /* after E0: A0..BF (shorter forms would be overlong), then S_C1 */
    S_ED, /* after ED: 80..9F (A0..BF would encode surrogates), then S_C1 */
    S_F0, /* after F0: 90..BF (overlong below), then S_C2 */
    S_F4, /* after F4: 80..8F (90.. is above U+10FFFF), then S_C2 */
    S_COUNT,
};

/* Byte classes. */
enum {
    K_ASCII, /* 00..7F */
    K_C80,   /* 80..8F */
    K_C90,   /* 90..9F */
    K_CA0,   /* A0..BF */
    K_BAD,   /* C0, C1 (always overlong), F5..FF (above U+10FFFF) */
    K_L2,    /* C2..DF */
    K_E0,
    K_L3, /* E1..EC, EE, EF */
    K_ED,
    K_F0,
    K_L4, /* F1..F3 */
    K_F4,
    K_COUNT,
};

static const uint8_t byte_class[256] = {
    [0x00 ... 0x7F] = K_ASCII,
    [0x80 ... 0x8F] = K_C80,
    [0x90 ... 0x9F] = K_C90,
    [0xA0 ... 0xBF] = K_CA0,
    [0xC0 ... 0xC1] = K_BAD,
    [0xC2 ... 0xDF] = K_L2,
    [0xE0] = K_E0,
    [0xE1 ... 0xEC] = K_L3,
    [0xED] = K_ED,
    [0xEE ... 0xEF] = K_L3,
    [0xF0] = K_F0,
    [0xF1 ... 0xF3] = K_L4,
    [0xF4] = K_F4,
    [0xF5 ... 0xFF] = K_BAD,
};

#define R S_REJ
static const uint8_t next_state[S_COUNT][K_COUNT] = {
    /*          ASCII  C80   C90   CA0   BAD  L2    E0    L3    ED    F0    L4    F4 */
    [S_ACC] = {S_ACC, R, R, R, R, S_C1, S_E0, S_C2, S_ED, S_F0, S_C3, S_F4},
    [S_REJ] = {R, R, R, R, R, R, R, R, R, R, R, R},
    [S_C1] = {R, S_ACC, S_ACC, S_ACC, R, R, R, R, R, R, R, R},
    [S_C2] = {R, S_C1, S_C1, S_C1, R, R, R, R, R, R, R, R},
    [S_C3] = {R, S_C2, S_C2, S_C2, R, R, R, R, R, R, R, R},
    [S_E0] = {R, R, R, S_C1, R, R, R, R, R, R, R, R},
    [S_ED] = {R, S_C1, S_C1, R, R, R, R, R, R, R, R, R},
    [S_F0] = {R, R, S_C2, S_C2, R, R, R, R, R, R, R, R},
    [S_F4] = {R, S_C2, R, R, R, R, R, R, R, R, R, R},
};
#undef R

/* Skip whole 8-byte words of ASCII: notification traffic is mostly ASCII JSON. */
static size_t ascii_prefix(const uint8_t *p, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        if (w & 0x8080808080808080ull)
            break;
    }
    return i;
}

uint32_t th_utf8_feed(uint32_t state, const uint8_t *p, size_t n)
{
    if (state >= S_COUNT)
        return S_REJ; /* not a state this automaton produced */
    size_t i = 0;
    while (i < n && state != S_REJ) {
        if (state == S_ACC) {
            i += ascii_prefix(p + i, n - i);
            if (i == n)
                break;
        }
        state = next_state[state][byte_class[p[i++]]];
    }
    return state;
}
