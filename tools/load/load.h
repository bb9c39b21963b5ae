/*
 * tether-load internals shared by the parent (flags, fork, merge, summary)
 * and each load process (one io_uring loop over a share of the connections).
 * A child reports to the parent over a pipe: a progress record each second
 * and a final record followed by its two histograms.
 */
#ifndef TETHER_LOAD_LOAD_H
#define TETHER_LOAD_LOAD_H

#include <stddef.h>
#include <stdint.h>
#include <netinet/in.h>

#include "tools/load/hist.h"
#include "tools/load/track.h"

/*
 * Connections per 127.0.0.x source address (127.0.0.2 up: 1,265,000 in all).
 * Far below the ~28k ports of the default ephemeral range on purpose: the
 * kernel's port search for a connect() from a bound address slows down as
 * that address's ports fill (20,000 a source: 1,217 connects/s measured
 * here; 5,000 a source: 11,161/s, the same machine and minute).
 */
#define LOAD_PER_SOURCE 5000
#define LOAD_MAX_SPREAD (253L * LOAD_PER_SOURCE) /* 127.0.0.2 to 127.0.0.254 */

struct load_opts {
    struct sockaddr_in ws_addr;  /* --url host:port */
    char ws_host[128];           /* Host header */
    char ws_path[256];           /* path, e.g. /ws */
    struct sockaddr_in api_addr; /* --api host:port */
    char api_host[128];
    uint8_t secret[512];
    size_t secret_len;
    long connections;
    double ping_interval; /* seconds; 0 = saturate (one outstanding ping per connection) */
    int idle;             /* no pings at all */
    double duration;
    double settle; /* --settle: seconds idle after connecting, before pings and notifications */
    double notify_rate;  /* notifications per second, all processes together */
    double connect_rate; /* new connections per second, all processes; 0 = unlimited */
    int procs;
    int api_conns;      /* keep-alive API connections per process */
    int spread_sources; /* bind to 127.0.0.x source addresses */
    double grace;       /* seconds to wait for late pongs/notifications */
    char user_prefix[32];
    char ready_file[256];
    int resume;        /* --resume: reconnect on every close with ?since=&epoch=, track seqs */
    double drop_rate;  /* --drop-rate: clients per second cut without a close (RST) */
    double drop_max_s; /* --drop-max: a cut client reconnects after 0..this many seconds */
    int tls;           /* --url wss://: TLS over every client connection (tools/load/tls.c) */
    int tls_resume;    /* --tls-resume: offer the first connection's session on every later one */
    char tls_ca[256];  /* --ca FILE: verify the server against it (else no verification) */
    int api_tls;       /* --api https://: TLS on the API connections too (--ca applies) */
};

enum load_rec_type { LR_PROGRESS = 1, LR_FINAL = 2 };

struct load_counts {
    uint64_t target; /* connections this process should open */
    uint64_t connections_ok;
    uint64_t connect_errors; /* refused, reset, non-101 answers */
    uint64_t disconnects;    /* established connections the server closed */
    uint64_t pings_sent;
    uint64_t pongs_received;
    uint64_t pings_skipped; /* interval came while the previous ping was outstanding */
    uint64_t notifications_sent;
    uint64_t notifications_received;
    uint64_t notify_2xx, notify_404, notify_503, notify_other; /* tether's answers */
    /* tether-load's own API connection trouble, apart from tether's answers: */
    uint64_t api_retries;    /* requests sent again after their connection failed unanswered */
    uint64_t api_failed;     /* requests that never got an answer (given up) */
    uint64_t api_reconnects; /* idle keep-alive connections replaced before use */
    uint64_t lost_notes;     /* without --resume: answered 200 delivered, never received */
    uint64_t undelivered;    /* without --resume: answered (any status), never received */
    uint64_t other_messages; /* text frames neither pong nor load notification */
    /* --resume only (see track.h) */
    uint64_t reconnects, drops, notify_accepted, notify_retries;
    uint64_t resumes, recovered_false, replayed, lost_resume, dup, dup_frames, reordered;
    uint64_t epoch_changes, bad_frames;
    uint64_t tls_resumed;                      /* wss:// handshakes that resumed a session */
    uint64_t connect_start_ns, connect_end_ns; /* first connect issued, last handshake done */
    uint64_t ping_start_ns, ping_end_ns;
    uint64_t last_note_ns; /* --resume: when the last new notification arrived */
    int connect_done;
};

struct load_rec {
    uint32_t type;
    uint32_t child;
    struct load_counts c;
};

/* Child side: run the loop for connections [first, first+count), report on fd; after the final
 * report, hold the connections until hold_fd reads EOF (the parent has every final report). */
int load_child_run(const struct load_opts *o, int child, long first, long count, int report_fd,
                   int hold_fd);

/* HS256 token for sub, signed with libcrypto HMAC. Returns length or -1. */
int load_sign_token(const char *sub, const uint8_t *secret, size_t secret_len, char *out,
                    size_t cap);

uint64_t load_mono_ns(void);

#endif
