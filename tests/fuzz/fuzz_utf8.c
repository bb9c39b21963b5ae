/*
 * Fuzz target for the incremental UTF-8 validator (shm/proto/utf8.h).
 *
 * Compared with a reference validator written here straight from RFC 3629 /
 * Unicode Table 3-7 (a plain decoder, not an automaton): the verdict on the
 * whole input (valid, invalid, or ending inside a code point) must match,
 * the validator must reject exactly at the first bad byte (a prefix that
 * stops before it is not rejected, one that includes it is), and feeding the
 * same bytes split at input-chosen points must end in the same state.
 */
#include "tests/fuzz/fuzz.h"
#include "shm/proto/utf8.h"

enum { REF_VALID, REF_INCOMPLETE, REF_INVALID };

/* Legal range of the second byte after lead byte c (Table 3-7); 0 if c cannot lead. */
static int lead_info(uint8_t c, int *len, uint8_t *lo, uint8_t *hi)
{
    *lo = 0x80, *hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF)
        *len = 2;
    else if (c >= 0xE0 && c <= 0xEF)
        *len = 3;
    else if (c >= 0xF0 && c <= 0xF4)
        *len = 4;
    else
        return 0;
    if (c == 0xE0)
        *lo = 0xA0; /* overlong below U+0800 */
    else if (c == 0xED)
        *hi = 0x9F; /* surrogates U+D800..DFFF */
    else if (c == 0xF0)
        *lo = 0x90; /* overlong below U+10000 */
    else if (c == 0xF4)
        *hi = 0x8F; /* above U+10FFFF */
    return 1;
}

/* Returns REF_*; *bad is the index of the first byte that cannot be valid. */
static int ref_validate(const uint8_t *p, size_t n, size_t *bad)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        int len;
        uint8_t lo, hi;
        if (!lead_info(c, &len, &lo, &hi)) {
            *bad = i;
            return REF_INVALID;
        }
        for (int k = 1; k < len; k++) {
            if (i + (size_t)k >= n)
                return REF_INCOMPLETE;
            uint8_t b = p[i + (size_t)k];
            uint8_t l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
            if (b < l || b > h) {
                *bad = i + (size_t)k;
                return REF_INVALID;
            }
        }
        i += (size_t)len;
    }
    return REF_VALID;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint32_t seed = data[0] * 2246822519u + (uint32_t)size;
    data++, size--;
    uint8_t *buf = fuzz_dup(data, size);

    uint32_t whole = th_utf8_feed(TH_UTF8_ACCEPT, buf, size);
    size_t bad = 0;
    int ref = ref_validate(buf, size, &bad);
    if (ref == REF_VALID)
        FUZZ_CHECK(whole == TH_UTF8_ACCEPT, "valid input gave state %u", whole);
    else if (ref == REF_INCOMPLETE)
        FUZZ_CHECK(whole != TH_UTF8_ACCEPT && whole != TH_UTF8_REJECT,
                   "input ending inside a code point gave state %u", whole);
    else {
        FUZZ_CHECK(whole == TH_UTF8_REJECT, "invalid input (bad byte at %zu) gave state %u", bad,
                   whole);
        /* Fails at the first bad byte: not before it, and at it. */
        FUZZ_CHECK(th_utf8_feed(TH_UTF8_ACCEPT, buf, bad) != TH_UTF8_REJECT,
                   "rejected before the first bad byte (at %zu)", bad);
        FUZZ_CHECK(th_utf8_feed(TH_UTF8_ACCEPT, buf, bad + 1) == TH_UTF8_REJECT,
                   "not rejected at the first bad byte (at %zu)", bad);
    }

    /* Split at input-chosen points, each piece an exact-size copy. */
    uint32_t state = TH_UTF8_ACCEPT;
    size_t off = 0;
    while (off < size) {
        size_t k = 1 + fuzz_rand(&seed) % (size - off < 8 ? size - off : (size - off) / 2 + 1);
        if (k > size - off)
            k = size - off;
        uint8_t *piece = fuzz_dup(buf + off, k);
        state = th_utf8_feed(state, piece, k);
        free(piece);
        off += k;
    }
    FUZZ_CHECK(state == whole, "split feeding ended in %u, whole in %u", state, whole);
    /* An empty feed changes nothing. */
    FUZZ_CHECK(th_utf8_feed(whole, buf, 0) == whole, "empty feed changed the state");
    free(buf);
    return 0;
}
