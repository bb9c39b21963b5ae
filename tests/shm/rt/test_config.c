/*
 * Unit tests of `tether run` flag and environment parsing (shm/rt/config.c):
 * defaults, both flag forms, environment fallback and precedence, the
 * one-line errors that name the flag, and secret loading.
 */
#include "shm/rt/config.h"
#include "shm/rt/log.h"
#include "shm/rt/paths.h"

#include <criterion/criterion.h>

#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static struct th_config cfg;
static char err[512];

static int parse(int argc, char **argv)
{
    th_config_defaults(&cfg);
    err[0] = '\0';
    return th_config_parse(&cfg, argc, argv, err, sizeof(err));
}

static void clean_env(void)
{
    unsetenv("TETHER_JWT_SECRET");
    unsetenv("TETHER_STALE_AFTER");
    unsetenv("TETHER_WORKERS");
    unsetenv("TETHER_RUNTIME_DIR");
    unsetenv("TETHER_HUNG_AFTER");
    unsetenv("TETHER_MAILBOX_TTL");
}

TestSuite(config, .init = clean_env);

Test(config, defaults_match_the_contract)
{
    setenv("TETHER_JWT_SECRET", "s", 1);
    cr_assert_eq(parse(0, NULL), TH_CONFIG_OK);
    cr_assert_str_eq(cfg.listen_host, "0.0.0.0");
    cr_assert_eq(cfg.listen_port, 8080);
    cr_assert_str_eq(cfg.api_host, "127.0.0.1");
    cr_assert_eq(cfg.api_port, 8081);
    cr_assert_str_eq(cfg.shm_name, "/tether");
    cr_assert_eq(cfg.slots, 65536);
    cr_assert_eq(cfg.stale_after_s, 300);
    cr_assert_eq(cfg.sweep_every_s, 60);
    cr_assert_eq(cfg.max_conns_per_user, 8);
    cr_assert_eq(cfg.max_message, 65536);
    cr_assert_eq(cfg.send_queue_cap, 1048576);
    cr_assert_eq(cfg.drain_timeout_s, 10);
    cr_assert_eq(cfg.hung_after_s, 3);
    cr_assert_eq(cfg.log_level, TH_LOG_INFO);
    cr_assert_eq(cfg.log_format, TH_LOG_TEXT);
    cr_assert_eq(cfg.workers, (uint32_t)sysconf(_SC_NPROCESSORS_ONLN));
    cr_assert_eq(cfg.jwt_secret_len, 1);
}

Test(config, both_flag_forms_and_env_precedence)
{
    setenv("TETHER_JWT_SECRET", "secret", 1);
    setenv("TETHER_STALE_AFTER", "600", 1);
    setenv("TETHER_WORKERS", "3", 1);
    char *argv[] = {"--workers=5", "--listen",     "127.0.0.1:9000", "--shm-name",
                    "t1",          "--log-format", "json",           "--api-listen=[::1]:9001"};
    cr_assert_eq(parse(8, argv), TH_CONFIG_OK, "%s", err);
    cr_assert_eq(cfg.stale_after_s, 600, "environment applies when no flag is given");
    cr_assert_eq(cfg.workers, 5, "the command line wins over the environment");
    cr_assert_str_eq(cfg.listen_host, "127.0.0.1");
    cr_assert_eq(cfg.listen_port, 9000);
    cr_assert_str_eq(cfg.api_host, "::1");
    cr_assert_eq(cfg.api_port, 9001);
    cr_assert_str_eq(cfg.shm_name, "/t1");
    cr_assert_eq(cfg.log_format, TH_LOG_JSON);
}

Test(config, errors_name_the_flag)
{
    setenv("TETHER_JWT_SECRET", "s", 1);
    char *a1[] = {"--workers", "0"};
    cr_assert_eq(parse(2, a1), TH_CONFIG_ERROR);
    cr_assert(strstr(err, "--workers"), "%s", err);
    char *a2[] = {"--nope"};
    cr_assert_eq(parse(1, a2), TH_CONFIG_ERROR);
    cr_assert(strstr(err, "--nope"), "%s", err);
    char *a3[] = {"--slots"};
    cr_assert_eq(parse(1, a3), TH_CONFIG_ERROR);
    cr_assert(strstr(err, "missing value"), "%s", err);
    char *a4[] = {"--listen", "localhost"};
    cr_assert_eq(parse(2, a4), TH_CONFIG_ERROR);
    char *a5[] = {"--log-level", "loud"};
    cr_assert_eq(parse(2, a5), TH_CONFIG_ERROR);
    char *a6[] = {"--slots", "-1"};
    cr_assert_eq(parse(2, a6), TH_CONFIG_ERROR);
    char *a7[] = {"--shm-name", "a/b"};
    cr_assert_eq(parse(2, a7), TH_CONFIG_ERROR);
    setenv("TETHER_STALE_AFTER", "5m", 1);
    cr_assert_eq(parse(0, NULL), TH_CONFIG_ERROR);
    cr_assert(strstr(err, "TETHER_STALE_AFTER"), "%s", err);
    char *help[] = {"--help"};
    cr_assert_eq(parse(1, help), TH_CONFIG_HELP);
}

/* A --nats typo stops `run` at config time (exit 2), not the notifier after start-up. */
Test(config, nats_urls_and_node_name)
{
    setenv("TETHER_JWT_SECRET", "s", 1);
    const char *good[] = {"nats://127.0.0.1:4222",
                          "127.0.0.1:4222",
                          "localhost",
                          "tls://n1.example:4443,nats://n2:4222",
                          "nats://a:1, nats://b:2",
                          "nats://user:pw@host:1",
                          "nats://[::1]:4222",
                          "[::1]"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        char *a[] = {"--nats", (char *)good[i]};
        cr_assert_eq(parse(2, a), TH_CONFIG_OK, "%s: %s", good[i], err);
        cr_assert_str_eq(cfg.nats_urls, good[i]);
    }
    const char *bad[] = {"nats://",         "nats://:4222",    "nats://h:0",     "nats://h:65536",
                         "nats://h:42x",    "http://h:80",     "nats://h:4222,", ",nats://h:1",
                         "nats://h 1:4222", "nats://h:4222/x", "::1:4222",       "[::1",
                         "nats://h:"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char *a[] = {"--nats", (char *)bad[i]};
        cr_assert_eq(parse(2, a), TH_CONFIG_ERROR, "%s accepted", bad[i]);
        cr_assert(strstr(err, "--nats"), "%s", err);
    }
    char *n1[] = {"--nats", "h:1", "--node", "a b"};
    cr_assert_eq(parse(4, n1), TH_CONFIG_ERROR);
    cr_assert(strstr(err, "--node"), "%s", err);
    char long_name[TH_NODE_MAX + 2];
    memset(long_name, 'n', sizeof(long_name) - 1);
    long_name[sizeof(long_name) - 1] = 0;
    char *n2[] = {"--node", long_name};
    cr_assert_eq(parse(2, n2), TH_CONFIG_ERROR);
    long_name[TH_NODE_MAX] = 0;
    cr_assert_eq(parse(2, n2), TH_CONFIG_OK, "%s", err);
}

Test(config, hung_after_flag_env_and_bounds)
{
    setenv("TETHER_JWT_SECRET", "s", 1);
    setenv("TETHER_HUNG_AFTER", "7", 1);
    cr_assert_eq(parse(0, NULL), TH_CONFIG_OK, "%s", err);
    cr_assert_eq(cfg.hung_after_s, 7, "TETHER_HUNG_AFTER applies");
    char *a1[] = {"--hung-after", "2"};
    cr_assert_eq(parse(2, a1), TH_CONFIG_OK, "%s", err);
    cr_assert_eq(cfg.hung_after_s, 2, "the flag wins over the environment");
    unsetenv("TETHER_HUNG_AFTER");
    char *a2[] = {"--hung-after", "0"};
    cr_assert_eq(parse(2, a2), TH_CONFIG_ERROR, "0 would declare every role hung");
    cr_assert(strstr(err, "--hung-after"), "%s", err);
    char *a3[] = {"--hung-after", "3s"};
    cr_assert_eq(parse(2, a3), TH_CONFIG_ERROR);
    cr_assert(strstr(err, "--hung-after"), "%s", err);
}

Test(config, mailbox_flags_defaults_env_and_bounds)
{
    setenv("TETHER_JWT_SECRET", "s", 1);
    cr_assert_eq(parse(0, NULL), TH_CONFIG_OK, "%s", err);
    cr_assert_eq(cfg.mailbox_ttl_s, 120);
    cr_assert_eq(cfg.mailbox_per_user, 64);
    cr_assert_eq(cfg.mailbox_bytes, 67108864);
    setenv("TETHER_MAILBOX_TTL", "0", 1);
    cr_assert_eq(parse(0, NULL), TH_CONFIG_OK, "%s", err);
    cr_assert_eq(cfg.mailbox_ttl_s, 0, "0 turns the mailbox off");
    unsetenv("TETHER_MAILBOX_TTL");
    char *a1[] = {"--mailbox-per-user", "1024", "--mailbox-bytes", "16777216"};
    cr_assert_eq(parse(4, a1), TH_CONFIG_OK, "%s", err);
    cr_assert_eq(cfg.mailbox_per_user, 1024);
    char *a2[] = {"--mailbox-per-user", "0"};
    cr_assert_eq(parse(2, a2), TH_CONFIG_ERROR);
    cr_assert(strstr(err, "--mailbox-per-user"), "%s", err);
    char *a3[] = {"--mailbox-bytes", "1048575"};
    cr_assert_eq(parse(2, a3), TH_CONFIG_ERROR);
    cr_assert(strstr(err, "--mailbox-bytes"), "%s", err);
    char *a4[] = {"--mailbox-bytes", "1048576", "--mailbox-per-user", "1024"};
    cr_assert_eq(parse(4, a4), TH_CONFIG_ERROR, "the user records would not fit");
    cr_assert(strstr(err, "--mailbox-bytes 1048576 is too small for --mailbox-per-user 1024"), "%s",
              err);
    char *a5[] = {"--mailbox-ttl", "-1"};
    cr_assert_eq(parse(2, a5), TH_CONFIG_ERROR);
    cr_assert(strstr(err, "--mailbox-ttl"), "%s", err);
}

Test(config, secret_is_required_and_loaded_from_file)
{
    cr_assert_eq(parse(0, NULL), TH_CONFIG_ERROR);
    cr_assert(strstr(err, "JWT"), "%s", err);

    char path[] = "/tmp/tether-secret-XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    cr_assert_eq(write(fd, "abc\n", 4), 4);
    close(fd);
    char *argv[] = {"--jwt-secret-file", path};
    cr_assert_eq(parse(2, argv), TH_CONFIG_OK, "%s", err);
    cr_assert_eq(cfg.jwt_secret_len, 3, "a trailing newline is not part of the secret");
    cr_assert_eq(memcmp(cfg.jwt_secret, "abc", 3), 0);
    unlink(path);
    cr_assert_eq(parse(2, argv), TH_CONFIG_ERROR, "a missing file is an error");
    cr_assert(strstr(err, "--jwt-secret-file"), "%s", err);
}

Test(config, runtime_dir_follows_the_segment_name)
{
    char buf[256];
    setenv("TETHER_RUNTIME_DIR", "/tmp/x", 1);
    cr_assert_eq(th_worker_sock_path("/tether", 3, buf, sizeof(buf)), 0);
    cr_assert_str_eq(buf, "/tmp/x/worker-3.sock");
    unsetenv("TETHER_RUNTIME_DIR");
    cr_assert_eq(th_runtime_dir("/tether", buf, sizeof(buf)), 0);
    cr_assert(strstr(buf, "tether-tether") != NULL, "%s", buf);
    cr_assert_eq(th_runtime_dir("/tether", buf, 4), -ENAMETOOLONG, "too small a buffer is refused");
}

Test(config, runtime_dir_choice)
{
    char buf[256];
    cr_assert_eq(th_runtime_dir_pick("/t", 1000, "/x/y", "/run/user/1000", buf, sizeof(buf)), 0);
    cr_assert_str_eq(buf, "/x/y", "explicit first");
    cr_assert_eq(th_runtime_dir_pick("/t", 0, NULL, "/run/user/0", buf, sizeof(buf)), 0);
    cr_assert_str_eq(buf, "/run/tether-t", "root");
    cr_assert_eq(th_runtime_dir_pick("/t", 1000, "", "/run/user/1000", buf, sizeof(buf)), 0);
    cr_assert_str_eq(buf, "/run/user/1000/tether-t", "XDG_RUNTIME_DIR");
    cr_assert_eq(th_runtime_dir_pick("/t", 1000, NULL, "relative", buf, sizeof(buf)), 0);
    cr_assert_str_eq(buf, "/tmp/tether-1000-t", "a relative XDG_RUNTIME_DIR is ignored");
    cr_assert_eq(th_runtime_dir_pick("/t", 1000, NULL, NULL, buf, sizeof(buf)), 0);
    cr_assert_str_eq(buf, "/tmp/tether-1000-t");
}

/* A scratch directory for the ownership tests, removed by the caller. */
static void scratch(char *base, size_t cap)
{
    snprintf(base, cap, "/tmp/th-rundir-%d-XXXXXX", (int)getpid());
    cr_assert_not_null(mkdtemp(base));
}

Test(config, runtime_dir_is_created_0700_and_accepted_again)
{
    char base[128], dir[192], why[320] = "";
    struct stat st;
    scratch(base, sizeof(base));
    snprintf(dir, sizeof(dir), "%s/a/run", base);
    cr_assert_eq(th_runtime_dir_prepare(dir, why, sizeof(why)), 0, "%s", why);
    cr_assert_eq(lstat(dir, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0700);
    cr_assert_eq(th_runtime_dir_prepare(dir, why, sizeof(why)), 0, "ours: accepted again: %s", why);
    rmdir(dir);
    snprintf(dir, sizeof(dir), "%s/a", base);
    rmdir(dir);
    rmdir(base);
}

Test(config, runtime_dir_refused_when_open_to_others_a_symlink_or_foreign)
{
    char base[128], dir[192], why[320] = "";
    scratch(base, sizeof(base));
    snprintf(dir, sizeof(dir), "%s/run", base);
    cr_assert_eq(mkdir(dir, 0700), 0);
    cr_assert_eq(chmod(dir, 0777), 0);
    cr_assert_eq(th_runtime_dir_prepare(dir, why, sizeof(why)), -EPERM);
    cr_assert(strstr(why, "mode 0777") && strstr(why, "chmod 700"), "%s", why);
    cr_assert_eq(chmod(dir, 0750), 0);
    cr_assert_eq(th_runtime_dir_prepare(dir, why, sizeof(why)), -EPERM, "group access: refused");
    cr_assert_eq(chmod(dir, 0700), 0);
    if (geteuid() == 0) { /* planted by another user */
        cr_assert_eq(chown(dir, 65534, 65534), 0);
        cr_assert_eq(th_runtime_dir_prepare(dir, why, sizeof(why)), -EPERM);
        cr_assert(strstr(why, "belongs to uid 65534"), "%s", why);
        cr_assert_eq(chown(dir, 0, 0), 0);
    }
    char link[224];
    snprintf(link, sizeof(link), "%s/link", base);
    cr_assert_eq(symlink(dir, link), 0);
    cr_assert_eq(th_runtime_dir_prepare(link, why, sizeof(why)), -ENOTDIR);
    cr_assert(strstr(why, "symbolic link"), "%s", why);
    unlink(link);
    rmdir(dir);
    rmdir(base);
}
