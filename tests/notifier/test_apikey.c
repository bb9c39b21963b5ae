/*
 * Unit tests of the backend API key set (notifier/apikey.c): the file
 * format (comments, blank lines, trimming, the bounds on a key), a refused
 * file as a whole, matching any of several keys and nothing else, and the
 * Authorization header's bearer token.
 */
#include "notifier/apikey.h"

#include <criterion/criterion.h>

#include <errno.h>
#include <string.h>

static int parse(const char *text, struct th_apikeys *k, char *err)
{
    return th_apikeys_parse(text, strlen(text), k, err, 200);
}

Test(apikey, several_keys_comments_and_trimming)
{
    struct th_apikeys k;
    char err[200] = "";
    cr_assert_eq(
        parse("# backend keys\n\n  old-key-0123456789abcdef  \r\nnew-key-0123456789abcdef\n"
              "\t# rotated 2026-12-01\n",
              &k, err),
        2, "%s", err);
    cr_assert(th_apikeys_match(&k, "old-key-0123456789abcdef", 24));
    cr_assert(th_apikeys_match(&k, "new-key-0123456789abcdef", 24));
    cr_assert_not(th_apikeys_match(&k, "new-key-0123456789abcde", 23), "a prefix");
    cr_assert_not(th_apikeys_match(&k, "new-key-0123456789abcdefg", 25), "longer");
    cr_assert_not(th_apikeys_match(&k, "NEW-KEY-0123456789ABCDEF", 24), "case matters");
    cr_assert_not(th_apikeys_match(&k, "", 0));
    cr_assert_not(th_apikeys_match(&k, "# backend keys", 14), "a comment is not a key");
    th_apikeys_free(&k);
    cr_assert_eq(k.n, 0);
}

Test(apikey, last_line_without_newline)
{
    struct th_apikeys k;
    char err[200];
    cr_assert_eq(parse("only-key-0123456789", &k, err), 1);
    cr_assert(th_apikeys_match(&k, "only-key-0123456789", 19));
    th_apikeys_free(&k);
}

Test(apikey, bad_files_are_refused_whole)
{
    struct th_apikeys k;
    char err[200];
    cr_assert_eq(parse("", &k, err), -EINVAL);
    cr_assert(strstr(err, "no key"), "%s", err);
    cr_assert_eq(parse("# only a comment\n\n", &k, err), -EINVAL);
    cr_assert_eq(parse("good-key-0123456789abcdef\nshort\n", &k, err), -EINVAL);
    cr_assert(strstr(err, "line 2"), "%s", err);
    cr_assert_null(k.digest, "nothing kept from a refused file");
    cr_assert_eq(parse("a key with spaces inside 0123\n", &k, err), -EINVAL);
    cr_assert_eq(parse("tab\tinside-0123456789abcdef\n", &k, err), -EINVAL);
    cr_assert_eq(parse("ctl-\x01-0123456789abcdef\n", &k, err), -EINVAL);
    char longk[300];
    memset(longk, 'k', 257);
    longk[257] = 0;
    cr_assert_eq(parse(longk, &k, err), -EINVAL, "over 256 bytes");
    longk[256] = 0;
    cr_assert_eq(parse(longk, &k, err), 1, "256 bytes");
    th_apikeys_free(&k);
}

Test(apikey, bearer_header)
{
    const char *t;
    size_t n;
    cr_assert(th_apikey_bearer("Bearer abc", 10, &t, &n));
    cr_assert(n == 3 && !memcmp(t, "abc", 3));
    cr_assert(th_apikey_bearer("bearer   abc  ", 14, &t, &n));
    cr_assert(n == 3 && !memcmp(t, "abc", 3));
    cr_assert_not(th_apikey_bearer("Basic abc", 9, &t, &n));
    cr_assert_not(th_apikey_bearer("Bearer ", 7, &t, &n));
    cr_assert_not(th_apikey_bearer("Bearer    ", 10, &t, &n));
    cr_assert_not(th_apikey_bearer("Bearerabc", 9, &t, &n));
}
