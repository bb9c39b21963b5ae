/*
 * RFC 6455 server-side framing: the frame-header parser, the reader that
 * turns a client's byte stream into messages and control frames, and the
 * writer of server frames.
 *
 * The reader takes bytes as they come off the socket (from io_uring provided
 * buffers that go back to the kernel at once) and consumes all of them: a
 * partial frame header is kept inline (at most 14 bytes), a partial message
 * or control payload is copied into a buffer allocated when needed and freed
 * as soon as the message is complete, so an idle connection holds no buffer.
 * A message over max_message fails with 1009 before anything of the
 * declared size is allocated. Text is validated incrementally (1007 at the
 * first bad fragment).
 *
 * Protocol errors return the close code to send: 1002 (unmasked frame, RSV
 * bits, reserved opcode, control frame over 125 bytes or fragmented,
 * continuation with nothing to continue, data frame inside a fragmented
 * message, 64-bit length with the top bit set, bad close payload/code),
 * 1007 (invalid UTF-8 in text or a close reason), 1009 (too big, or more
 * than TH_WS_MAX_FRAGMENTS frames in one message). Non-minimal length
 * encodings are accepted. After a close frame the rest of the stream is
 * ignored.
 */
#ifndef TETHER_WORKER_WS_H
#define TETHER_WORKER_WS_H

#include <stddef.h>
#include <stdint.h>

#include "shm/proto/wsclose.h" /* the close codes (TH_WS_NORMAL, ...) */

enum th_ws_opcode {
    TH_WS_CONT = 0x0,
    TH_WS_TEXT = 0x1,
    TH_WS_BINARY = 0x2,
    TH_WS_CLOSE = 0x8,
    TH_WS_PING = 0x9,
    TH_WS_PONG = 0xA,
};

/* Frames per message; one more closes with 1009 (a flood of tiny fragments). */
#define TH_WS_MAX_FRAGMENTS 1024
/* th_ws_reader_init clamps max_message to this. */
#define TH_WS_MAX_MESSAGE_LIMIT (1u << 30)

struct th_ws_frame_hdr {
    uint8_t fin, rsv, opcode, masked;
    uint8_t mask[4];
    uint64_t len;   /* payload length */
    size_t hdr_len; /* bytes of header, 2 to 14 */
};

/*
 * Parse one frame header from buf[0..n). Returns the header length (> 0),
 * 0 if more bytes are needed, or -code (e.g. -1002) for a protocol error
 * detectable from the header alone.
 */
int th_ws_parse_frame_hdr(const uint8_t *buf, size_t n, struct th_ws_frame_hdr *h);
/* The same for a client reading server frames: unmasked required, masked is -1002. */
int th_ws_parse_server_frame_hdr(const uint8_t *buf, size_t n, struct th_ws_frame_hdr *h);

/* XOR-unmask p[0..n) that starts at payload offset off. */
void th_ws_unmask(uint8_t *p, size_t n, const uint8_t mask[4], uint64_t off);

/* Write an unmasked FIN frame header for len bytes; returns its length (2, 4 or 10). */
size_t th_ws_frame_hdr_write(uint8_t out[10], enum th_ws_opcode op, uint64_t len);
/* A client's masked frame header (fin 0 or 1); returns its length (6, 8 or 14). */
size_t th_ws_frame_hdr_write_masked(uint8_t out[14], enum th_ws_opcode op, int fin, uint64_t len,
                                    const uint8_t mask[4]);

/* Is this a close code a peer may send (1000-1003, 1007-1011, 3000-4999)? */
int th_ws_close_code_valid(uint16_t code);

/* What the reader reports; return nonzero from a callback to stop feeding. */
struct th_ws_callbacks {
    /* A complete text or binary message (text already validated). */
    int (*on_message)(void *ctx, enum th_ws_opcode op, const uint8_t *p, size_t n);
    int (*on_ping)(void *ctx, const uint8_t *p, size_t n);
    int (*on_pong)(void *ctx, const uint8_t *p, size_t n);
    /* A valid close frame: code (TH_WS_NO_STATUS when none) and UTF-8 reason. */
    int (*on_close)(void *ctx, uint16_t code, const uint8_t *reason, size_t n);
    /* Called once per complete inbound frame of any kind (LastSeen stamp). */
    void (*on_frame)(void *ctx);
};

/* Per-connection reader state. Keep it small: it lives in every connection. */
struct th_ws_reader {
    uint8_t hdr_buf[14];
    uint8_t hdr_have;
    uint8_t in_frame; /* inside a frame's payload */
    uint8_t msg_op;   /* opcode of the fragmented message in progress, 0 if none */
    uint8_t closed;   /* a close frame or a protocol error was seen: ignore the rest */
    uint32_t utf8_state;
    struct th_ws_frame_hdr cur;
    uint64_t cur_off; /* payload bytes of cur consumed so far */
    uint8_t *buf;     /* message or control payload being assembled, NULL when idle */
    uint32_t buf_len, buf_cap;
    uint32_t max_message;
    uint32_t frames_in_msg; /* fragments of the message in progress, to cap tiny-fragment floods */
};

void th_ws_reader_init(struct th_ws_reader *r, uint32_t max_message);
/* Free any buffer held. The reader may be reused after th_ws_reader_init. */
void th_ws_reader_free(struct th_ws_reader *r);
/*
 * Consume p[0..n) (unmasked in place). Returns 0 when all bytes were taken,
 * a close code (1002, 1007, 1009) on a protocol error, or the nonzero value
 * a callback returned (then the rest is not consumed).
 */
int th_ws_reader_feed(struct th_ws_reader *r, uint8_t *p, size_t n,
                      const struct th_ws_callbacks *cb, void *ctx);

/* Sec-WebSocket-Accept for a client key: base64(SHA-1(key + GUID)), 28 chars + NUL. */
void th_ws_accept_key(const char *key, size_t n, char out[29]);

#endif
