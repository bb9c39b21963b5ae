/*
 * The resume request a client makes at the WebSocket upgrade:
 * `GET /ws?since=<seq>&epoch=<epoch>` (the last seq it processed and the
 * epoch it came with). A pure core: no I/O, nothing allocates, the epoch
 * points into the caller's query string.
 *
 * Rules (contract, "Recovery"): since is a decimal within 64 bits (digits
 * only, 1 to 20 of them, no sign, no spaces); epoch is at most 64 bytes of
 * [0-9A-Za-z_-] (what the mailbox hands out; anything else cannot match).
 * An empty epoch counts as absent (a client that has none yet may send
 * `epoch=`); an epoch without since is refused, since it asks for nothing
 * and is a client bug worth telling about. Anything malformed is answered
 * 400 with the reason, before a slot is claimed.
 */
#ifndef TETHER_SHM_PROTO_RESUME_REQ_H
#define TETHER_SHM_PROTO_RESUME_REQ_H

#include "shm/proto/http.h"

#include <stdint.h>

#define TH_EPOCH_MAX 64

struct th_resume_req {
    int want; /* since was given: send "resumed", replay what is stored */
    uint64_t since;
    const char *epoch; /* NULL when absent (or empty) */
    size_t epoch_len;
};

/* Parse the query. 0, or -EINVAL with *why set to a reason fit for a JSON string. */
int th_resume_parse(const struct th_str *query, struct th_resume_req *out, const char **why);

#endif
