/*
 * Test support: an OpenSSL client in memory paired with one server
 * connection of the TLS engine (shm/proto/tls.h), and the pump that moves
 * bytes between them until neither has anything new. Used by the engine's
 * unit tests (test_tls.c) and by tether-bench-tls (tests/bench), which
 * charges every server call to the server through tp_server_hook.
 */
#ifndef TETHER_TESTS_TLS_PAIR_H
#define TETHER_TESTS_TLS_PAIR_H

#include "shm/proto/tls.h"

#include <openssl/ssl.h>
#include <stddef.h>
#include <stdint.h>

struct tp_buf {
    uint8_t *p;
    size_t n, cap;
};

/* Append (aborts when out of memory: a test cannot go on without its bytes). */
int tp_buf_sink(void *arg, const uint8_t *p, size_t n);

struct tp_pair {
    SSL_CTX *cctx; /* the client's context (not owned) */
    SSL *c;
    BIO *c_in, *c_out; /* what the client reads (server wire), what it wrote */
    struct th_tls *s;
    struct tp_buf wire,
        plain; /* server -> client bytes not yet delivered; plaintext the server got */
    int last_rc;
    size_t chop; /* deliver client bytes to the server in pieces this big (0 = whole) */
};

/* Sinks of the server's calls, arg = the pair. */
int tp_plain_sink(void *arg, const uint8_t *p, size_t n);
int tp_wire_sink(void *arg, const uint8_t *p, size_t n);

/* Called with 1 before and 0 after every server call the helpers make (NULL: none). */
extern void (*tp_server_hook)(int entering);

/* A client of cctx for host (offering sess when given) and a server connection of sctx. */
int tp_pair_init(struct tp_pair *p, struct th_tls_ctx *sctx, SSL_CTX *cctx, SSL_SESSION *sess);
void tp_pair_free(struct tp_pair *p);
/* Move bytes both ways until neither side has anything new. Returns the server's last
 * code, or -100 when the client gave up. */
int tp_pump(struct tp_pair *p);

#endif
