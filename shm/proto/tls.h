/*
 * The TLS server engine: OpenSSL's libssl driven entirely from memory, so an
 * event loop (the worker's io_uring loop, the notifier's API loop) can run
 * TLS without a blocking call, a thread or a socket BIO. The engine does no
 * I/O of its own: the caller hands it the ciphertext it received and gets
 * back, through two sinks, the plaintext for its HTTP/WebSocket code and the
 * ciphertext to send (handshake flights, alerts, sealed records). Nothing is
 * buffered on the engine's side of the sinks: whatever the peer sent is
 * consumed by each call (a partial record waits inside libssl). libssl's
 * record buffers (about 34 KiB) are released after every call
 * (SSL_MODE_RELEASE_BUFFERS), unless the caller marks a busy connection
 * with th_tls_busy(t, 1): then they stay until th_tls_busy(t, 0).
 *
 * Settings: TLS 1.2 and 1.3, ALPN "http/1.1" (a client offering only other
 * protocols is refused), renegotiation refused, stateless session tickets.
 * The ticket keys come from a secret made once (th_tls_tickets_new) before
 * the processes that share it fork, and rotate every rotate_s seconds: each
 * period's keys are derived from the secret and the period number, so every
 * process rotates at the same instant without talking to the others, and a
 * ticket of the previous period is still accepted (and replaced).
 *
 * Threading: a context, a connection and a ticket set belong to one thread
 * (the one process-wide state is the BIO method, made once, thread-safely).
 */
#ifndef TETHER_SHM_PROTO_TLS_H
#define TETHER_SHM_PROTO_TLS_H

#include <stddef.h>
#include <stdint.h>

struct th_tls_tickets; /* ticket-key secret and the derived per-period keys */
struct th_tls_ctx;     /* a loaded certificate chain + key and the settings */
struct th_tls;         /* one server-side connection */

/* Where the engine delivers bytes. Return 0, or < 0 to stop the current call. */
typedef int (*th_tls_sink)(void *arg, const uint8_t *p, size_t n);

enum {
    TH_TLS_OK = 0,      /* all input consumed; the connection goes on */
    TH_TLS_CLOSED = 1,  /* the peer sent close_notify */
    TH_TLS_STOPPED = 2, /* a sink returned < 0 */
    TH_TLS_ERROR = -1,  /* fatal (bad record, failed handshake, renegotiation, ...):
                           the alert, if any, already went to the wire sink */
};

#define TH_TLS_RECORD_MAX 16384 /* largest plaintext one record carries: the scratch size */

/*
 * A fresh random secret. rotate_s: ticket-key period (0 = 3600). Returns NULL
 * when out of memory or when the random generator fails.
 */
struct th_tls_tickets *th_tls_tickets_new(unsigned rotate_s);
void th_tls_tickets_free(struct th_tls_tickets *tk);

/*
 * Load a PEM certificate chain (leaf first) and its PEM private key. Refuses
 * an unreadable file, a file without a certificate or key, a key that does
 * not match the certificate, and an expired certificate, with a one-line
 * reason in err naming the file. tk must outlive every connection of this
 * context. Returns NULL on failure.
 */
struct th_tls_ctx *th_tls_ctx_new(const char *cert_file, const char *key_file,
                                  struct th_tls_tickets *tk, char *err, size_t errlen);
/* Connections made from ctx keep what they use: freeing a replaced context is safe. */
void th_tls_ctx_free(struct th_tls_ctx *ctx);
struct th_tls_tickets *th_tls_ctx_tickets(const struct th_tls_ctx *ctx);
/* "CN=..., serial ..., expires ..." for the log line. */
void th_tls_ctx_describe(const struct th_tls_ctx *ctx, char *buf, size_t cap);

/* A server connection of ctx; NULL when out of memory. */
struct th_tls *th_tls_new(struct th_tls_ctx *ctx);
void th_tls_free(struct th_tls *t);

/*
 * Ciphertext received from the peer. Plaintext goes to `plain` in pieces of
 * at most scratch_cap bytes, each in `scratch` (reused by the next piece);
 * anything to send goes to `wire`. Returns a TH_TLS_* code.
 */
int th_tls_input(struct th_tls *t, const uint8_t *in, size_t n, uint8_t *scratch,
                 size_t scratch_cap, th_tls_sink plain, th_tls_sink wire, void *arg);
/*
 * Seal plaintext into records, passed to wire. TH_TLS_OK or TH_TLS_ERROR.
 * May be called from a sink of th_tls_input (that call then goes on), as may
 * th_tls_close.
 */
int th_tls_write(struct th_tls *t, const uint8_t *p, size_t n, th_tls_sink wire, void *arg);
/* Our close_notify, passed to wire (once; later calls do nothing). */
void th_tls_close(struct th_tls *t, th_tls_sink wire, void *arg);

/*
 * busy = 1: keep libssl's record buffers between calls (a connection with
 * steady traffic saves a malloc and free of each per record); busy = 0:
 * release them now and after every call (an idle connection costs less).
 */
void th_tls_busy(struct th_tls *t, int busy);

int th_tls_established(const struct th_tls *t); /* handshake finished */
int th_tls_resumed(const struct th_tls *t);     /* ... by a session ticket */
const char *th_tls_version(const struct th_tls *t);
/* Why the last call failed ("wrong version number", ...); clears libssl's error queue. */
const char *th_tls_last_error(char *buf, size_t cap);

#endif
