/*
 * Unit tests of the Origin allow-list (worker/auth.c wk_origin_allowed):
 * exact origins (case-insensitive), "*.domain" patterns with and without a
 * scheme, what a pattern must not admit (the bare domain, a look-alike
 * suffix, a path), and the empty list admitting everything.
 */
#include "worker/wk.h"

#include <criterion/criterion.h>
#include <string.h>

static int ok(const char *list, const char *origin)
{
    return wk_origin_allowed(list, origin, strlen(origin));
}

Test(origin, exact_and_patterns)
{
    const char *list = "https://app.example.com, http://localhost:3000,*.example.org,"
                       "https://*.corp.test";
    cr_assert(ok(list, "https://app.example.com"));
    cr_assert(ok(list, "HTTPS://APP.EXAMPLE.COM"), "origins compare case-insensitively");
    cr_assert(ok(list, "http://localhost:3000"));
    cr_assert_not(ok(list, "http://localhost:3001"));
    cr_assert_not(ok(list, "http://app.example.com"), "scheme is part of an origin");
    cr_assert_not(ok(list, "https://app.example.com.evil.net"));
    cr_assert(ok(list, "https://a.example.org"));
    cr_assert(ok(list, "http://b.c.example.org"), "any scheme for a bare pattern");
    cr_assert_not(ok(list, "https://example.org"), "the bare domain is not a subdomain");
    cr_assert_not(ok(list, "https://evilexample.org"), "a look-alike suffix");
    cr_assert(ok(list, "https://x.corp.test"));
    cr_assert_not(ok(list, "http://x.corp.test"), "the pattern's scheme must match");
    cr_assert_not(ok(list, "null"), "an opaque origin");
    cr_assert_not(ok(list, ""));
}

Test(origin, empty_list_admits_all)
{
    cr_assert(ok("", "https://anything.example"));
    cr_assert(ok(NULL, "null"));
}

Test(origin, malformed_patterns_admit_nothing)
{
    cr_assert_not(ok("*", "https://a.b"));
    cr_assert_not(ok("*.", "https://a.b"));
    cr_assert_not(ok("a*.example.com", "https://ab.example.com"));
    cr_assert_not(ok("*.*.example.com", "https://a.b.example.com"));
}
