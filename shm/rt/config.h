/*
 * The configuration of one tether process group: every `tether run` flag of
 * the contract, parsed once by the supervisor and inherited by the roles it
 * forks. Each flag may also come from the environment as TETHER_<NAME>
 * (e.g. TETHER_STALE_AFTER); a flag on the command line wins.
 *
 * The runtime paths derived from the segment name are in shm/rt/paths.h.
 */
#ifndef TETHER_SHM_RT_CONFIG_H
#define TETHER_SHM_RT_CONFIG_H

#include <stddef.h>
#include <stdio.h>
#include <stdint.h>

#define TH_ADDR_MAX 64
#define TH_SHM_NAME_MAX 64
#define TH_SECRET_MAX 1024
#define TH_PATH_MAX 4096

/*
 * Each process may hold at most TH_WORKER_FDS file descriptors (a hard limit
 * on this deployment), so one worker serves at most TH_WORKER_MAX_CONNS
 * clients and the group's capacity scales with --workers (and is bounded by
 * --slots). The other 100 cover stdio, the log file, the two listeners, the
 * ring, the control clients and the peer sockets of a few workers.
 */
#define TH_WORKER_FDS 20000u
#define TH_WORKER_MAX_CONNS (TH_WORKER_FDS - 100u)

struct th_config {
    char listen_host[TH_ADDR_MAX];
    uint16_t listen_port;
    char api_host[TH_ADDR_MAX];
    uint16_t api_port;
    uint32_t workers;
    char shm_name[TH_SHM_NAME_MAX]; /* always starts with '/' */
    uint32_t slots;
    uint32_t stale_after_s;
    uint32_t sweep_every_s;
    uint32_t max_conns_per_user;
    uint32_t max_message;
    uint64_t send_queue_cap;
    uint32_t drain_timeout_s;
    uint32_t handoff_timeout_ms; /* notifier's bound for a worker's confirmation */
    uint32_t hung_after_s;       /* heartbeat age past which the supervisor replaces a role */
    uint32_t mailbox_ttl_s;      /* 0: mailbox off */
    uint32_t mailbox_per_user;   /* stored notifications per user */
    uint64_t mailbox_bytes;      /* the mailbox object's size */
    char jwt_secret_file[TH_PATH_MAX];
    unsigned char jwt_secret[TH_SECRET_MAX];
    size_t jwt_secret_len;
    int log_level;  /* enum th_log_level */
    int log_format; /* enum th_log_format */
    char log_file[TH_PATH_MAX];
    char tls_cert[TH_PATH_MAX]; /* wss:// on --listen when both are set */
    char tls_key[TH_PATH_MAX];
    uint32_t tls_only;              /* refuse plain upgrades */
    char api_tls_cert[TH_PATH_MAX]; /* https:// on --api-listen when both are set */
    char api_tls_key[TH_PATH_MAX];
    /* Security (issue 18): who may call the API, which tokens count, which
     * pages may connect, how fast one client may send. */
    char api_key_file[TH_PATH_MAX];    /* backend API keys, one a line; "" = none (loopback only) */
    char jwt_key_file[TH_PATH_MAX];    /* PEM public keys (RS256, ES256, EdDSA) */
    char jwt_jwks_file[TH_PATH_MAX];   /* a JWKS document */
    char jwt_audience[TH_PATH_MAX];    /* required aud when set */
    char jwt_issuer[TH_PATH_MAX];      /* required iss when set */
    char allowed_origins[TH_PATH_MAX]; /* comma-separated origins and *.domain patterns */
    uint32_t max_msgs_per_sec;         /* per connection, token bucket, 0 = off */
    uint32_t max_bytes_per_sec;        /* per connection, token bucket, 0 = off */
    /* Cluster (issue 12): several nodes over NATS. */
#define TH_NODE_MAX 64u          /* --node bytes, printable, no spaces */
    char nats_urls[TH_PATH_MAX]; /* comma-separated NATS URLs; "" = one node, no broker */
    char node[TH_PATH_MAX];      /* this node's name (default: the host name), <= TH_NODE_MAX */
    uint32_t nats_replicas; /* JetStream mailbox replicas (issue 13; with --nats and the mailbox) */
};

enum { TH_CONFIG_OK = 0, TH_CONFIG_HELP = 1, TH_CONFIG_ERROR = -1 };

/* Fill in the contract's defaults (workers = number of online CPUs). */
void th_config_defaults(struct th_config *c);
/*
 * Apply TETHER_* environment variables, then argv (argv[0] is the first flag,
 * not the program name). Returns TH_CONFIG_OK, TH_CONFIG_HELP for --help, or
 * TH_CONFIG_ERROR with a one-line message naming the flag in err.
 * Loads the JWT secret from --jwt-secret-file or TETHER_JWT_SECRET.
 */
int th_config_parse(struct th_config *c, int argc, char **argv, char *err, size_t errlen);
/* Usage text for `tether run --help`. */
void th_config_usage(FILE *out);

/* Parse "HOST:PORT" (HOST may be empty for 0.0.0.0). Returns 0 or -EINVAL. */
int th_parse_hostport(const char *s, char *host, size_t hostcap, uint16_t *port);

#endif
