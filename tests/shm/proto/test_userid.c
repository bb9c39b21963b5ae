/*
 * Unit tests of the user-id rule (shm/proto/userid.c): the length bounds, the
 * control characters it refuses (C0 and DEL) and the bytes it lets through,
 * over a guarded copy so a read past n bytes crashes.
 */
#include "shm/proto/userid.h"
#include "tests/shm/proto/guard.h"

#include <criterion/criterion.h>
#include <string.h>

static bool valid(const char *s, size_t n)
{
    struct guard g;
    const uint8_t *p = guard_copy(&g, s, n);
    bool ok = th_userid_valid((const char *)p, n);
    guard_free(&g);
    return ok;
}

Test(userid, lengths)
{
    char buf[TH_USER_MAX + 1];
    memset(buf, 'u', sizeof(buf));
    cr_assert_not(valid(buf, 0), "empty");
    cr_assert(valid(buf, 1));
    cr_assert(valid(buf, TH_USER_MAX));
    cr_assert_not(valid(buf, TH_USER_MAX + 1), "over TH_USER_MAX");
    cr_assert_not(th_userid_valid(NULL, 3));
    cr_assert_not(th_userid_len_ok(0));
    cr_assert(th_userid_len_ok(TH_USER_MAX));
    cr_assert_not(th_userid_len_ok(TH_USER_MAX + 1));
}

Test(userid, control_characters_anywhere_are_refused)
{
    for (int c = 0; c < 256; c++) {
        char s[3] = {'a', (char)c, 'b'};
        bool want = !(c < 0x20 || c == 0x7f);
        cr_assert_eq(valid(s, 3), want, "byte 0x%02x in the middle", c);
        cr_assert_eq(valid(s + 1, 1), want, "byte 0x%02x alone", c);
    }
}

Test(userid, rule_text_names_the_bound)
{
    cr_assert_str_eq(TH_USERID_RULE_TEXT, "1 to 64 bytes without control characters");
}
