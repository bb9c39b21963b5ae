/*
 * Unit tests of the incremental UTF-8 validator (shm/proto/utf8.c): boundary
 * code points, overlongs, surrogates, values above U+10FFFF, lone and
 * missing continuation bytes, splits inside code points (the Autobahn 6.x
 * style sequences), the first-bad-byte guarantee, and an exhaustive
 * comparison with a straightforward reference decoder.
 */
#include "shm/proto/utf8.h"
#include "tests/shm/proto/guard.h"

#include <criterion/criterion.h>
#include <string.h>

/* Validate a whole string from a guarded copy. */
static uint32_t check(const char *s, size_t n)
{
    struct guard g;
    const uint8_t *p = guard_copy(&g, s, n);
    uint32_t st = th_utf8_feed(TH_UTF8_ACCEPT, p, n);
    guard_free(&g);
    return st;
}

/* Index of the byte at which byte-by-byte feeding first rejects, or -1. */
static long reject_at(const char *s, size_t n)
{
    uint32_t st = TH_UTF8_ACCEPT;
    for (size_t i = 0; i < n; i++) {
        st = th_utf8_feed(st, (const uint8_t *)s + i, 1);
        if (st == TH_UTF8_REJECT)
            return (long)i;
    }
    return -1;
}

#define S(lit) lit, sizeof(lit) - 1

Test(utf8, valid_boundaries)
{
    static const struct {
        const char *s;
        size_t n;
    } ok[] = {
        {S("")},
        {S("plain ascii, with \x01 controls \x7f")},
        {S("\x00")},
        {S("\xc2\x80")},         /* U+0080 */
        {S("\xdf\xbf")},         /* U+07FF */
        {S("\xe0\xa0\x80")},     /* U+0800 */
        {S("\xed\x9f\xbf")},     /* U+D7FF, last before the surrogates */
        {S("\xee\x80\x80")},     /* U+E000, first after */
        {S("\xef\xbf\xbf")},     /* U+FFFF */
        {S("\xef\xbf\xbe")},     /* U+FFFE: a noncharacter, still valid UTF-8 */
        {S("\xf0\x90\x80\x80")}, /* U+10000 */
        {S("\xf4\x8f\xbf\xbf")}, /* U+10FFFF */
        {S("\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5")}, /* Autobahn 6.2: kosme */
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
        cr_assert_eq(check(ok[i].s, ok[i].n), TH_UTF8_ACCEPT, "case %zu", i);
}

/* Each entry: the bytes and the index where validation must fail. */
static const struct {
    const char *s;
    size_t n;
    long at;
} bad_cases[] = {
    {S("\x80"), 0}, /* lone continuation */
    {S("\xbf"), 0},
    {S("a\x80"), 1},
    {S("\xc2\x80\x80"), 2}, /* one continuation too many */
    {S("\xc0\x80"), 0},     /* overlong NUL: C0 and C1 never valid */
    {S("\xc0\xaf"), 0},     /* overlong '/' */
    {S("\xc1\xbf"), 0},
    {S("\xe0\x80\xaf"), 1},             /* overlong '/' in 3 bytes */
    {S("\xe0\x9f\xbf"), 1},             /* overlong U+07FF */
    {S("\xf0\x80\x80\xaf"), 1},         /* overlong '/' in 4 bytes */
    {S("\xf0\x8f\xbf\xbf"), 1},         /* overlong U+FFFF */
    {S("\xf8\x88\x80\x80\x80"), 0},     /* 5-byte form */
    {S("\xfc\x84\x80\x80\x80\x80"), 0}, /* 6-byte form */
    {S("\xfe"), 0},
    {S("\xff"), 0},
    {S("\xed\xa0\x80"), 1}, /* U+D800 */
    {S("\xed\xad\xbf"), 1}, /* U+DB7F */
    {S("\xed\xae\x80"), 1},
    {S("\xed\xaf\xbf"), 1},             /* U+DBFF */
    {S("\xed\xb0\x80"), 1},             /* U+DC00 */
    {S("\xed\xbf\xbf"), 1},             /* U+DFFF */
    {S("\xed\xa0\x80\xed\xb0\x80"), 1}, /* a surrogate pair spelled out */
    {S("\xf4\x90\x80\x80"), 1},         /* U+110000 fails at the second byte */
    {S("\xf5\x80\x80\x80"), 0},
    {S("\xf7\xbf\xbf\xbf"), 0},
    {S("\xc2\x41"), 1}, /* lead byte followed by ASCII */
    {S("\xe1\x80\x41"), 2},
    {S("\xf1\x80\x80\x41"), 3},
    {S("\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64"), 12},
    {S("abcdefghijklmnop\xc0"), 16}, /* after a run the fast path skipped */
};

Test(utf8, invalid_sequences_fail_at_the_first_bad_byte)
{
    for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
        cr_assert_eq(check(bad_cases[i].s, bad_cases[i].n), TH_UTF8_REJECT, "case %zu", i);
        cr_assert_eq(reject_at(bad_cases[i].s, bad_cases[i].n), bad_cases[i].at,
                     "case %zu failed at %ld", i, reject_at(bad_cases[i].s, bad_cases[i].n));
    }
}

Test(utf8, f4_90_rejected_at_the_second_byte)
{
    uint32_t st = th_utf8_feed(TH_UTF8_ACCEPT, (const uint8_t *)"\xf4", 1);
    cr_assert(st != TH_UTF8_ACCEPT && st != TH_UTF8_REJECT);
    cr_assert_eq(th_utf8_feed(st, (const uint8_t *)"\x90", 1), TH_UTF8_REJECT);
}

Test(utf8, truncated_sequences_are_neither_accept_nor_reject)
{
    static const char *trunc[] = {"\xc2", "\xe0\xa0", "\xe1", "\xf0\x90\x80", "\xf4", "\xed"};
    for (size_t i = 0; i < sizeof(trunc) / sizeof(trunc[0]); i++) {
        uint32_t st = check(trunc[i], strlen(trunc[i]));
        cr_assert(st != TH_UTF8_ACCEPT && st != TH_UTF8_REJECT, "case %zu", i);
        /* Ending the message there is the caller's 1007; more ASCII rejects. */
        cr_assert_eq(th_utf8_feed(st, (const uint8_t *)"a", 1), TH_UTF8_REJECT);
    }
}

Test(utf8, reject_is_sticky)
{
    uint32_t st = check(S("\xff"));
    cr_assert_eq(th_utf8_feed(st, (const uint8_t *)"abc", 3), TH_UTF8_REJECT);
    cr_assert_eq(th_utf8_feed(st, (const uint8_t *)"", 0), TH_UTF8_REJECT);
    cr_assert_eq(th_utf8_feed(12345, (const uint8_t *)"a", 1), TH_UTF8_REJECT, "unknown state");
}

Test(utf8, every_split_of_a_valid_text)
{
    static const char text[] =
        "Hello-\xc2\xb5@\xc3\x9f\xc3\xb6\xc3\xa4\xc3\xbc\xc3\xa0\xc3\xa1-UTF-8!!"
        "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5 \xf0\x9f\x98\x80 "
        "\xe2\x82\xac\xf4\x8f\xbf\xbf end";
    size_t n = sizeof(text) - 1;
    for (size_t i = 0; i <= n; i++) {
        for (size_t j = i; j <= n; j++) {
            uint32_t st = th_utf8_feed(TH_UTF8_ACCEPT, (const uint8_t *)text, i);
            st = th_utf8_feed(st, (const uint8_t *)text + i, j - i);
            st = th_utf8_feed(st, (const uint8_t *)text + j, n - j);
            cr_assert_eq(st, TH_UTF8_ACCEPT, "split at %zu and %zu", i, j);
        }
    }
}

Test(utf8, non_ascii_at_every_position_of_a_word)
{
    char buf[40];
    for (size_t pos = 0; pos < 24; pos++) {
        memset(buf, 'x', sizeof(buf));
        buf[pos] = (char)0x80; /* a lone continuation byte hidden in an ASCII run */
        cr_assert_eq(check(buf, sizeof(buf)), TH_UTF8_REJECT, "pos %zu", pos);
        cr_assert_eq(reject_at(buf, sizeof(buf)), (long)pos);
        memcpy(buf + pos, "\xc3\xa9", 2);
        cr_assert_eq(check(buf, sizeof(buf)), TH_UTF8_ACCEPT, "pos %zu", pos);
    }
}

/* Reference: decode one code point naively; 1 if s[0..n) is exactly one valid scalar. */
static int ref_valid(const uint8_t *s, size_t n)
{
    uint32_t cp, min;
    if (n == 1)
        return s[0] < 0x80;
    if (n == 2 && (s[0] & 0xE0) == 0xC0)
        cp = s[0] & 0x1F, min = 0x80;
    else if (n == 3 && (s[0] & 0xF0) == 0xE0)
        cp = s[0] & 0x0F, min = 0x800;
    else if (n == 4 && (s[0] & 0xF8) == 0xF0)
        cp = s[0] & 0x07, min = 0x10000;
    else
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3F);
    }
    return cp >= min && cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF);
}

/* Does the validator accept s[0..n) as complete? */
static int dfa_valid(const uint8_t *s, size_t n)
{
    return th_utf8_feed(TH_UTF8_ACCEPT, s, n) == TH_UTF8_ACCEPT;
}

Test(utf8, exhaustive_against_reference_up_to_three_bytes)
{
    uint8_t s[3];
    for (unsigned a = 0; a < 256; a++) {
        s[0] = (uint8_t)a;
        cr_assert_eq(dfa_valid(s, 1), ref_valid(s, 1), "%02x", a);
        for (unsigned b = 0; b < 256; b++) {
            s[1] = (uint8_t)b;
            /* An ASCII first byte followed by anything is covered by the 1-byte check. */
            if (a >= 0x80)
                cr_assert_eq(dfa_valid(s, 2), ref_valid(s, 2), "%02x %02x", a, b);
            if (a < 0xE0 || a > 0xEF || (b & 0xC0) != 0x80)
                continue;
            for (unsigned c = 0; c < 256; c++) {
                s[2] = (uint8_t)c;
                cr_assert_eq(dfa_valid(s, 3), ref_valid(s, 3), "%02x %02x %02x", a, b, c);
            }
        }
    }
}

Test(utf8, four_byte_leads_against_reference)
{
    static const uint8_t tails[] = {0x00, 0x41, 0x7f, 0x80, 0x8f, 0x90,
                                    0x9f, 0xa0, 0xbf, 0xc0, 0xff};
    uint8_t s[4];
    for (unsigned a = 0xF0; a < 0x100; a++)
        for (unsigned b = 0; b < 256; b++)
            for (size_t c = 0; c < sizeof(tails); c++)
                for (size_t d = 0; d < sizeof(tails); d++) {
                    s[0] = (uint8_t)a, s[1] = (uint8_t)b, s[2] = tails[c], s[3] = tails[d];
                    cr_assert_eq(dfa_valid(s, 4), ref_valid(s, 4), "%02x %02x %02x %02x", a, b,
                                 s[2], s[3]);
                }
}
