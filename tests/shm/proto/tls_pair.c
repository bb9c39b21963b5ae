/* The in-memory client/server pair of tests/shm/proto/tls_pair.h. */
#include "tls_pair.h"

#include <stdlib.h>
#include <string.h>

void (*tp_server_hook)(int entering);

static void server(int entering)
{
    if (tp_server_hook)
        tp_server_hook(entering);
}

int tp_buf_sink(void *arg, const uint8_t *p, size_t n)
{
    struct tp_buf *b = arg;
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2;
        if (!(b->p = realloc(b->p, b->cap)))
            abort();
    }
    memcpy(b->p + b->n, p, n);
    b->n += n;
    return 0;
}

int tp_plain_sink(void *arg, const uint8_t *p, size_t n)
{
    return tp_buf_sink(&((struct tp_pair *)arg)->plain, p, n);
}

int tp_wire_sink(void *arg, const uint8_t *p, size_t n)
{
    return tp_buf_sink(&((struct tp_pair *)arg)->wire, p, n);
}

int tp_pair_init(struct tp_pair *p, struct th_tls_ctx *sctx, SSL_CTX *cctx, SSL_SESSION *sess)
{
    memset(p, 0, sizeof(*p));
    p->cctx = cctx;
    p->c = SSL_new(cctx);
    p->c_in = BIO_new(BIO_s_mem());
    p->c_out = BIO_new(BIO_s_mem());
    if (!p->c || !p->c_in || !p->c_out)
        return -1;
    SSL_set_bio(p->c, p->c_in, p->c_out);
    SSL_set_connect_state(p->c);
    SSL_set_tlsext_host_name(p->c, "localhost");
    SSL_set1_host(p->c, "localhost");
    if (sess)
        SSL_set_session(p->c, sess);
    server(1);
    p->s = th_tls_new(sctx);
    server(0);
    return p->s ? 0 : -1;
}

void tp_pair_free(struct tp_pair *p)
{
    SSL_set_quiet_shutdown(p->c, 1); /* or libssl marks the client's session not resumable */
    SSL_shutdown(p->c);
    SSL_free(p->c);
    server(1);
    th_tls_free(p->s);
    server(0);
    free(p->wire.p);
    free(p->plain.p);
}

int tp_pump(struct tp_pair *p)
{
    static uint8_t tmp[65536], scratch[TH_TLS_RECORD_MAX];
    for (int round = 0; round < 64; round++) {
        int moved = 0;
        int n = BIO_read(p->c_out, tmp, sizeof(tmp));
        if (n > 0) {
            moved = 1;
            size_t step = p->chop ? p->chop : (size_t)n;
            for (size_t off = 0; off < (size_t)n; off += step) {
                size_t k = (size_t)n - off < step ? (size_t)n - off : step;
                server(1);
                p->last_rc = th_tls_input(p->s, tmp + off, k, scratch, sizeof(scratch),
                                          tp_plain_sink, tp_wire_sink, p);
                server(0);
                if (p->last_rc != TH_TLS_OK)
                    return p->last_rc;
            }
        }
        if (p->wire.n) {
            moved = 1;
            BIO_write(p->c_in, p->wire.p, (int)p->wire.n);
            p->wire.n = 0;
        }
        if (!SSL_is_init_finished(p->c)) {
            int r = SSL_do_handshake(p->c);
            if (r <= 0 && SSL_get_error(p->c, r) != SSL_ERROR_WANT_READ)
                return -100; /* the client gave up */
        }
        if (!moved && BIO_pending(p->c_out) == 0)
            break;
    }
    return p->last_rc;
}
