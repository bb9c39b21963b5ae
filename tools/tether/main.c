/*
 * `tether`: the command users run. `tether run [flags]` starts the process
 * group (tools/tether/supervisor.c); everything about flags lives in
 * shm/rt/config.c so the roles and this command agree on them.
 */
#include "tools/tether/supervisor.h"
#include "notifier/apikey.h"
#include "shm/rt/config.h"
#include "shm/rt/jwtkeys.h"

#include <stdio.h>
#include <string.h>

static void usage(FILE *out)
{
    fprintf(out, "usage: tether run [flags]    run the process group (tether run --help)\n"
                 "       tether --help\n");
}

/* Key files named by flags must be readable and well-formed before anything starts. */
static int check_key_files(const struct th_config *cfg, char *err, size_t errlen)
{
    if (cfg->api_key_file[0]) {
        struct th_apikeys k;
        int rc = th_apikeys_load(cfg->api_key_file, &k, err, errlen);
        if (rc < 0)
            return rc;
        th_apikeys_free(&k);
    }
    static struct th_jwt_keys ks;
    int rc = th_jwt_keys_load(cfg, &ks, err, errlen);
    th_jwt_keys_free(&ks);
    return rc < 0 ? rc : 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "run") != 0) {
        fprintf(stderr, "tether: unknown command '%s'\n", argv[1]);
        usage(stderr);
        return 2;
    }
    struct th_config cfg;
    char err[512];
    th_config_defaults(&cfg);
    switch (th_config_parse(&cfg, argc - 2, argv + 2, err, sizeof(err))) {
    case TH_CONFIG_HELP:
        th_config_usage(stdout);
        return 0;
    case TH_CONFIG_ERROR:
        fprintf(stderr, "tether run: %s\n", err);
        return 2;
    }
    if (check_key_files(&cfg, err, sizeof(err)) < 0) {
        fprintf(stderr, "tether run: %s\n", err);
        return 2;
    }
    return th_supervisor_run(&cfg);
}
