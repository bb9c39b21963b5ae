/*
 * Tests of the tether-token tool: a token it prints verifies with
 * th_jwt_verify under the same secret (newline in the file ignored, as
 * `tether run` does) and fails under another; --ttl sets or drops "exp";
 * bad or missing flags exit 2 with one line naming the flag.
 */
#include "shm/proto/jwt.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char secret_path[64];

static void make_secret(void)
{
    snprintf(secret_path, sizeof(secret_path), "/tmp/tether-token-test-%d", (int)getpid());
    FILE *f = fopen(secret_path, "w");
    cr_assert(f != NULL);
    fputs("s3cret-for-token-test\n", f);
    fclose(f);
}

static void drop_secret(void)
{
    unlink(secret_path);
}

/* Run tether-token with args (stderr folded into out); returns the exit status. */
static int run_tool(const char *args, char *out, size_t cap)
{
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "'%s' %s 2>&1", TH_TOKEN_BIN, args);
    FILE *p = popen(cmd, "r");
    cr_assert(p != NULL);
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = '\0';
    int st = pclose(p);
    cr_assert(WIFEXITED(st), "tether-token did not exit normally");
    return WEXITSTATUS(st);
}

static int verify_with(const char *tok, const char *secret, struct th_jwt_claims *c)
{
    return th_jwt_verify(tok, strlen(tok), (const uint8_t *)secret, strlen(secret),
                         (int64_t)time(NULL), c);
}

TestSuite(token, .init = make_secret, .fini = drop_secret);

Test(token, prints_a_token_that_verifies)
{
    char out[8192], args[256];
    snprintf(args, sizeof(args), "--secret-file %s --user alice", secret_path);
    cr_assert_eq(run_tool(args, out, sizeof(out)), 0, "output: %s", out);
    char *nl = strchr(out, '\n');
    cr_assert(nl && nl[1] == '\0', "exactly one line: %s", out);
    *nl = '\0';
    struct th_jwt_claims c;
    cr_assert_eq(verify_with(out, "s3cret-for-token-test", &c), TH_JWT_OK);
    cr_assert_str_eq(c.sub, "alice");
    int64_t now = (int64_t)time(NULL);
    cr_assert(c.exp >= now + 3590 && c.exp <= now + 3600, "default ttl 3600, exp %lld",
              (long long)c.exp);
    cr_assert_eq(verify_with(out, "another-secret", &c), TH_JWT_BAD_SIG);
    cr_assert_eq(verify_with(out, "s3cret-for-token-test\n", &c), TH_JWT_BAD_SIG,
                 "the file's newline is not part of the secret");
}

Test(token, ttl_flag)
{
    char out[8192], args[256];
    struct th_jwt_claims c;
    snprintf(args, sizeof(args), "--secret-file=%s --user=bob --ttl=0", secret_path);
    cr_assert_eq(run_tool(args, out, sizeof(out)), 0, "output: %s", out);
    *strchr(out, '\n') = '\0';
    cr_assert_eq(verify_with(out, "s3cret-for-token-test", &c), TH_JWT_OK);
    cr_assert_eq(c.exp, 0, "--ttl 0 means no exp");
    snprintf(args, sizeof(args), "--ttl 60 --user bob --secret-file %s", secret_path);
    cr_assert_eq(run_tool(args, out, sizeof(out)), 0);
    *strchr(out, '\n') = '\0';
    cr_assert_eq(verify_with(out, "s3cret-for-token-test", &c), TH_JWT_OK);
    cr_assert_leq(c.exp, (int64_t)time(NULL) + 60);
}

Test(token, bad_flags_exit_2_naming_the_flag)
{
    char out[8192], args[512];
    static const struct {
        const char *fmt, *flag;
    } cases[] = {
        {"--user u", "--secret-file"},
        {"--secret-file %s", "--user"},
        {"--secret-file %s --user u --ttl abc", "--ttl"},
        {"--secret-file %s --user u --ttl -5", "--ttl"},
        {"--secret-file %s --user u --ttl", "--ttl"},
        {"--secret-file %s --user u --bogus 1", "--bogus"},
        {"--secret-file %s --user ''", "--user"},
        {"--secret-file %s --user "
         "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
         "--user"},
        {"--secret-file /nonexistent/secret --user u", "--secret-file"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(args, sizeof(args), cases[i].fmt, secret_path);
        cr_assert_eq(run_tool(args, out, sizeof(out)), 2, "case %zu: %s", i, out);
        cr_assert_not_null(strstr(out, cases[i].flag), "case %zu: %s", i, out);
        cr_assert_eq(strchr(out, '\n'), out + strlen(out) - 1, "case %zu: one line: %s", i, out);
    }
}

Test(token, help)
{
    char out[8192];
    cr_assert_eq(run_tool("--help", out, sizeof(out)), 0);
    cr_assert_not_null(strstr(out, "--secret-file"));
    cr_assert_not_null(strstr(out, "--ttl"));
}
