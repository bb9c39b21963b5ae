/*
 * https:// on --api-listen (--api-tls-cert/--api-tls-key): the TLS engine
 * (shm/proto/tls.h) between the API server's sockets (notifier/server.c)
 * and its HTTP code. The server keeps one of these per connection while
 * TLS is configured; everything else in the server stays as for plain HTTP:
 *
 * - recv: ciphertext arrives in this wrapper's buffer (th_api_tls_rbuf),
 *   th_api_tls_input appends the plaintext to the connection's input buffer,
 *   where the request framer reads it as it reads plain bytes;
 * - send: the answers are rendered as plaintext into the connection's out
 *   buffer; th_api_tls_wire seals them into records on the wrapper's wire
 *   buffer (behind any handshake flight) and gives that to the send path.
 *
 * A connection's first byte decides, as on the client listener: 0x16 is a
 * TLS handshake; anything else is plain HTTP, which keeps /healthz and
 * /metrics (probes) while /v1/... gets 403 {"error":"TLS required: use
 * https://"}, so neither a bearer key nor a notification crosses the wire
 * in the clear. The handshake must finish within TH_API_TLS_HANDSHAKE_S.
 */
#ifndef TETHER_NOTIFIER_API_TLS_H
#define TETHER_NOTIFIER_API_TLS_H

#include "notifier/api.h"
#include "shm/rt/config.h"

#include <stddef.h>
#include <stdint.h>

#define TH_API_TLS_HANDSHAKE_S 10 /* accept to finished handshake, as for wss:// */

struct th_tls_ctx;
struct th_api_tls; /* one API connection's TLS side */

/* On when the supervisor handed a pair over (th_notifier_use_tls, notifier/notifier.h). */
int th_api_tls_on(void);
/* SIGHUP: load the pair again; a bad pair keeps the current one and logs why. */
void th_api_tls_reload(const struct th_config *cfg);

struct th_api_tls *th_api_tls_new(uint64_t now_ns); /* NULL when out of memory */
void th_api_tls_free(struct th_api_tls *t);

/* Where the next recv goes and how much it may take (0: out of memory, retry later). */
size_t th_api_tls_rbuf(struct th_api_tls *t, char **p);

enum { TH_API_TLS_OK = 0, TH_API_TLS_EOF = 1, TH_API_TLS_FATAL = -1 };
/*
 * n bytes arrived in the rbuf: plaintext is appended to *in (grown with
 * realloc; the server stops receiving at max bytes, one recv may complete
 * records held from earlier ones: never past max + 3 records), anything to send waits for
 * th_api_tls_wire. TH_API_TLS_EOF: the peer's close_notify (treat as its
 * FIN). TH_API_TLS_FATAL: bad TLS or out of memory; an alert may be queued,
 * send it and close.
 */
int th_api_tls_input(struct th_api_tls *t, size_t n, char **in, size_t *in_len, size_t *in_cap,
                     size_t max);
/*
 * Seal out's plaintext (out is emptied) and return the buffer the send path
 * takes next (its storage may be swapped with the one in flight). A plain
 * connection returns out itself. NULL: sealing failed, close.
 */
struct th_buf *th_api_tls_wire(struct th_api_tls *t, struct th_buf *out);
/* Queue our close_notify once; 1 when it was queued now (send it before the FIN). */
int th_api_tls_close(struct th_api_tls *t);
/* 1 when this request must be refused 403: a /v1/... request over plain HTTP. */
int th_api_tls_refuses(const struct th_api_tls *t, int route);
/*
 * Once a second: keep libssl's record buffers for a connection with traffic
 * in the last second, release them for a quiet one. Returns -1 when the
 * handshake is overdue (close the connection).
 */
int th_api_tls_tick(struct th_api_tls *t, uint64_t now_ns);

#endif
