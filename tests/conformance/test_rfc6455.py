"""RFC 6455 conformance of tether's socket workers, over raw sockets.

The case groups follow the standard WebSocket conformance suites: framing
sizes (whole, in TCP chops, one byte at a time, in WebSocket fragments),
ping/pong, reserved bits and opcodes, masking, fragmentation, UTF-8
(including failure at the first bad fragment), close codes and reasons, and
the --max-message limit. tether does not echo data messages, so every text
message sent is a valid app-level {"type":"ping"} (padded to the size under
test) and its delivery is proven by the app-level pong; failures are proven
by the close code. One group serves the whole script; each case opens its
own connection (as a user of its own, so the per-user cap never interferes).
"""
import itertools
import json
import os
import socket
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: harness
from harness import ws as rawws  # noqa: E402
from harness.ws import BINARY, CLOSE, CONT, PING, PONG, TEXT, frame, ping_message  # noqa: E402
import harness as th  # noqa: E402

MAX_MESSAGE = 65536
MAX_FRAGMENTS = 1024  # worker/ws.h TH_WS_MAX_FRAGMENTS: more fragments close with 1009
T = 10.0 if th.SANITIZED else 5.0
GROUP = None
_users = itertools.count()


def setUpModule():
    global GROUP
    GROUP = th.Group(workers=2, slots=4096,
                     extra_args=["--max-message", str(MAX_MESSAGE), "--log-level", "info",
                                 # thousands of frames per case: the rate limit has its own suite
                                 "--max-msgs-per-sec", "0", "--max-bytes-per-sec", "0"])
    GROUP.__enter__()


def tearDownModule():
    if GROUP is not None:
        GROUP.finish()


class RFC6455(unittest.TestCase):
    """Cases are added below by the add_* generators, one test method each."""

    def conn(self):
        ws = rawws.WS(GROUP.port, GROUP.token("conf-%d" % next(_users)), timeout=T)
        self.addCleanup(ws.close)
        return ws

    def assertCloses(self, ws, code, timeout=T):
        try:
            got, reason, before = ws.expect_close(timeout)
        except rawws.Closed:
            self.fail("TCP closed without a close frame (wanted %s)" % code)
        except socket.timeout:
            self.fail("no close frame within %ss (wanted %s)" % (timeout, code))
        self.assertEqual(got, code, "close code (reason %r)" % reason)
        self.assertTrue(ws.expect_eof(), "server kept the TCP connection open after the close handshake")
        return before

    def assertAlive(self, ws):
        pong = ws.app_ping()
        self.assertRegex(pong.get("timestamp", ""), r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


CASES = {}


def add(name, fn):
    name = "test_" + name
    assert name not in CASES, name
    CASES[name] = fn
    setattr(RFC6455, name, lambda self, fn=fn: fn(self))


def chunks(data, size):
    return [data[i:i + size] for i in range(0, len(data), size)] or [b""]


def fragments(payload, size, opcode=TEXT):
    """payload as a fragmented message of fragments of at most size bytes."""
    parts = chunks(payload, size)
    out = []
    for i, part in enumerate(parts):
        out.append(frame(opcode if i == 0 else CONT, part, fin=i == len(parts) - 1))
    return b"".join(out)


# -- framing -----------------------------------------------------------------
SIZES = [0, 1, 15, 16, 124, 125, 126, 127, 128, 255, 256, 1000, 4095, 4096, 8192, 16384, 32768,
         65534, 65535, 65536]
AUTOBAHN_SIZES = [0, 125, 126, 127, 128, 65535, 65536]


def framing_case(size, chop, frag, opcode=TEXT):
    """A message of size bytes, written in TCP chops and/or WebSocket fragments.
    A text message is a padded app ping (its pong proves it arrived whole); a
    binary message, or text too short for a ping, must get one error reply."""
    def run(self):
        ws = self.conn()
        is_ping = opcode == TEXT and size >= 15
        msg = ping_message(size) if is_ping else (b" " * size if opcode == TEXT else os.urandom(size))
        data = fragments(msg, frag, opcode) if frag else frame(opcode, msg)
        # small messages one byte at a time also pause, so each byte is a read of its own
        delay = 0.0002 if chop == 1 and size <= 256 else 0.0
        self.assertTrue(ws.send_raw(data, chop=chop, delay=delay), "server closed while the message was sent")
        if is_ping:
            self.assertAlive_after_message(ws)
        else:
            self.assertErrorReply(ws)
            self.assertAlive(ws)
    return run


def assert_alive_after_message(self, ws):
    """The message sent was itself a ping: its pong proves it arrived whole."""
    try:
        ws.expect_app_pong()
    except socket.timeout:
        self.fail("no pong for the message")


def assert_error_reply(self, ws):
    """A message the app cannot use (binary, not JSON) gets a {"type":"error"} reply."""
    fin, rsv, op, payload = ws.recv_frame()
    self.assertEqual(op, TEXT, "wanted an error reply, got opcode %d %r" % (op, payload[:60]))
    self.assertEqual(json.loads(payload).get("type"), "error", payload)


RFC6455.assertAlive_after_message = assert_alive_after_message
RFC6455.assertErrorReply = assert_error_reply

for size in SIZES:
    chops = [None, 3, 7, 64, 997, 4096]
    if size <= 256 or size == 65536:
        chops.append(1)
    for chop in chops:
        add("framing_text_%05d_%s" % (size, "whole" if chop is None else
                                      "one_byte_at_a_time" if chop == 1 else "chops_%d" % chop),
            framing_case(size, chop, None))
    frags = [7, 64, 1000] + ([1] if size <= 256 else []) + ([4096] if size >= 4096 else [])
    for frag in frags:
        if frag >= size or -(-size // frag) > MAX_FRAGMENTS:
            continue  # nothing to fragment, or more fragments than tether allows a message
        add("framing_text_%05d_fragments_of_%d" % (size, frag), framing_case(size, None, frag))
for size in AUTOBAHN_SIZES:
    add("framing_binary_%05d_whole" % size, framing_case(size, None, None, BINARY))
    add("framing_binary_%05d_chops_997" % size, framing_case(size, 997, None, BINARY))
    add("framing_binary_%05d_fragments_of_64" % size, framing_case(size, None, 64, BINARY))
    if size <= 128:
        add("framing_binary_%05d_one_byte_at_a_time" % size, framing_case(size, 1, None, BINARY))
for size in (126, 65535):
    add("framing_text_%05d_fragments_of_64_chops_13" % size, framing_case(size, 13, 64))


def several_messages_one_write(self):
    ws = self.conn()
    ws.send_raw(b"".join(frame(TEXT, ping_message(n)) for n in (15, 200, 70000 // 10)))
    for _ in range(3):
        ws.expect_app_pong()


add("framing_three_messages_in_one_write", several_messages_one_write)


# -- ping / pong -------------------------------------------------------------
def ping_case(payload, chop=None):
    def run(self):
        ws = self.conn()
        ws.send(PING, payload, chop=chop)
        ok, got = ws.expect_pong(payload)
        self.assertTrue(ok, "pong payload %r != ping payload %r" % (got[:40], payload[:40]))
        self.assertAlive(ws)
    return run


for n in range(126):
    add("ping_payload_%03d" % n, ping_case(os.urandom(n)))
add("ping_binary_payload_125", ping_case(bytes(range(125))))
add("ping_one_byte_at_a_time", ping_case(b"hello", chop=1))


def ping_too_big(length_form):
    def run(self):
        ws = self.conn()
        ws.send(PING, b"p" * length_form)
        self.assertCloses(ws, 1002)
    return run


add("ping_payload_126_fails", ping_too_big(126))
add("ping_payload_65536_fails", ping_too_big(65536))


def many_pings(self):
    ws = self.conn()
    ws.send_raw(b"".join(frame(PING, b"n%d" % i) for i in range(10)))
    for i in range(10):
        ok, got = ws.expect_pong(b"n%d" % i)
        self.assertTrue(ok, "pong %d out of order: %r" % (i, got))


add("ping_ten_in_one_write_answered_in_order", many_pings)


def unsolicited_pong(n):
    def run(self):
        ws = self.conn()
        ws.send(PONG, b"u" * n)
        self.assertAlive(ws)
    return run


for n in (0, 1, 125):
    add("pong_unsolicited_%03d_ignored" % n, unsolicited_pong(n))


# -- reserved bits, reserved opcodes, masking --------------------------------
def bad_frame_case(data, code=1002, prefix=b""):
    def run(self):
        ws = self.conn()
        ws.send_raw(prefix + data)
        self.assertCloses(ws, code)
    return run


for rsv in range(1, 8):
    add("rsv%d_text" % rsv, bad_frame_case(frame(TEXT, ping_message(15), rsv=rsv)))
    add("rsv%d_binary" % rsv, bad_frame_case(frame(BINARY, b"\x00\xff", rsv=rsv)))
    add("rsv%d_ping" % rsv, bad_frame_case(frame(PING, b"x", rsv=rsv)))
    add("rsv%d_close" % rsv, bad_frame_case(frame(CLOSE, rawws.close_payload(1000), rsv=rsv)))
    add("rsv%d_continuation" % rsv,
        bad_frame_case(frame(CONT, b"}", rsv=rsv), prefix=frame(TEXT, b'{"type":"ping"', fin=False)))

for op in list(range(3, 8)) + list(range(11, 16)):
    add("opcode_%02d_empty" % op, bad_frame_case(frame(op, b"")))
    add("opcode_%02d_payload" % op, bad_frame_case(frame(op, b"reserved")))
    add("opcode_%02d_not_fin" % op, bad_frame_case(frame(op, b"r", fin=False)))
    add("opcode_%02d_inside_fragmented_message" % op,
        bad_frame_case(frame(op, b"r"), prefix=frame(TEXT, b'{"type":', fin=False)))

add("unmasked_text", bad_frame_case(frame(TEXT, ping_message(15), mask=False)))
add("unmasked_binary", bad_frame_case(frame(BINARY, b"abc", mask=False)))
add("unmasked_ping", bad_frame_case(frame(PING, b"abc", mask=False)))
add("unmasked_close", bad_frame_case(frame(CLOSE, rawws.close_payload(1000), mask=False)))
add("unmasked_empty_text", bad_frame_case(frame(TEXT, b"", mask=False)))


def valid_then_bad(self):
    """A bad frame after a good message fails, and the good one was served first."""
    ws = self.conn()
    ws.send_raw(frame(TEXT, ping_message(15)) + frame(TEXT, b"x", rsv=4))
    before = self.assertCloses(ws, 1002)
    self.assertTrue(any(op == TEXT and b"pong" in p for op, p in before), before)


add("rsv_after_valid_message_pong_then_1002", valid_then_bad)


# -- fragmentation -----------------------------------------------------------
def fragmented_ping_case(sizes):
    def run(self):
        ws = self.conn()
        msg = ping_message(sum(sizes))
        out, off = [], 0
        for i, n in enumerate(sizes):
            out.append(frame(TEXT if i == 0 else CONT, msg[off:off + n], fin=i == len(sizes) - 1))
            off += n
        ws.send_raw(b"".join(out))
        self.assertAlive_after_message(ws)
    return run


add("fragmented_2", fragmented_ping_case([10, 20]))
add("fragmented_3", fragmented_ping_case([1, 1, 30]))
add("fragmented_empty_first", fragmented_ping_case([0, 30]))
add("fragmented_empty_last", fragmented_ping_case([30, 0]))
add("fragmented_empty_middle_x10", fragmented_ping_case([5] + [0] * 10 + [25]))
add("fragmented_100", fragmented_ping_case([1] * 100))


def ping_between_fragments(npings):
    def run(self):
        ws = self.conn()
        msg = ping_message(40)
        ws.send_raw(frame(TEXT, msg[:10], fin=False))
        for i in range(npings):
            ws.send(PING, b"mid%d" % i)
            ok, got = ws.expect_pong(b"mid%d" % i)  # answered before the message completes
            self.assertTrue(ok, got)
            ws.send_raw(frame(CONT, msg[10 + i:11 + i], fin=False))
        ws.send_raw(frame(CONT, msg[10 + npings:], fin=True))
        self.assertAlive_after_message(ws)
    return run


add("fragmented_ping_between_fragments_1", ping_between_fragments(1))
add("fragmented_ping_between_fragments_3", ping_between_fragments(3))


def pong_between_fragments(self):
    ws = self.conn()
    msg = ping_message(40)
    ws.send_raw(frame(TEXT, msg[:10], fin=False) + frame(PONG, b"unsolicited") + frame(CONT, msg[10:]))
    self.assertAlive_after_message(ws)


add("fragmented_pong_between_fragments_ignored", pong_between_fragments)


def close_between_fragments(self):
    ws = self.conn()
    ws.send_raw(frame(TEXT, b'{"type":', fin=False) + frame(CLOSE, rawws.close_payload(1000)))
    self.assertCloses(ws, 1000)


add("fragmented_close_between_fragments_echoed", close_between_fragments)

add("fragmented_ping_control_frame", bad_frame_case(frame(PING, b"a", fin=False) + frame(CONT, b"b")))
add("fragmented_pong_control_frame", bad_frame_case(frame(PONG, b"a", fin=False) + frame(CONT, b"b")))
add("fragmented_close_control_frame",
    bad_frame_case(frame(CLOSE, rawws.close_payload(1000), fin=False) + frame(CONT, b"")))
add("fragmented_ping_control_frame_alone", bad_frame_case(frame(PING, b"a", fin=False)))
add("continuation_fin_with_nothing_to_continue", bad_frame_case(frame(CONT, b"x")))
add("continuation_not_fin_with_nothing_to_continue", bad_frame_case(frame(CONT, b"x", fin=False)))
add("continuation_empty_with_nothing_to_continue", bad_frame_case(frame(CONT, b"")))
add("continuation_after_completed_message",
    bad_frame_case(frame(CONT, b"x"), prefix=frame(TEXT, ping_message(15))))
add("text_inside_fragmented_text",
    bad_frame_case(frame(TEXT, b"}"), prefix=frame(TEXT, b'{"type":"ping"', fin=False)))
add("text_not_fin_inside_fragmented_text",
    bad_frame_case(frame(TEXT, b"}", fin=False), prefix=frame(TEXT, b'{"type":"ping"', fin=False)))
add("binary_inside_fragmented_text",
    bad_frame_case(frame(BINARY, b"}"), prefix=frame(TEXT, b'{"type":"ping"', fin=False)))
add("text_inside_fragmented_binary",
    bad_frame_case(frame(TEXT, b"x"), prefix=frame(BINARY, b"ab", fin=False)))


# -- UTF-8 -------------------------------------------------------------------
VALID_TEXT = '{"type":"ping","pad":"κόσμε € 𝄞 é \u007f\u0080\u07ff\u0800\ud7ff\ue000\uffff\U00010000\U0010ffff"}'.encode()


def valid_split_at(offset):
    def run(self):
        ws = self.conn()
        ws.send_raw(frame(TEXT, VALID_TEXT[:offset], fin=False) + frame(CONT, VALID_TEXT[offset:]))
        self.assertAlive_after_message(ws)
    return run


# every split point that falls inside a multi-byte code point
for off in range(1, len(VALID_TEXT)):
    if (VALID_TEXT[off] & 0xC0) == 0x80:
        add("utf8_valid_split_inside_code_point_at_%03d" % off, valid_split_at(off))


def valid_each_byte_a_fragment(self):
    ws = self.conn()
    ws.send_raw(fragments(VALID_TEXT, 1))
    self.assertAlive_after_message(ws)


add("utf8_valid_one_byte_fragments", valid_each_byte_a_fragment)
def valid_whole(self):
    ws = self.conn()
    ws.send_text(VALID_TEXT)
    self.assertAlive_after_message(ws)


add("utf8_valid_whole", valid_whole)

INVALID = {
    "overlong_c0_80": b"\xc0\x80", "overlong_c1_bf": b"\xc1\xbf", "overlong_slash_2": b"\xc0\xaf",
    "overlong_e0_80_80": b"\xe0\x80\x80", "overlong_e0_9f_bf": b"\xe0\x9f\xbf",
    "overlong_slash_3": b"\xe0\x80\xaf", "overlong_f0_80_80_80": b"\xf0\x80\x80\x80",
    "overlong_f0_8f_bf_bf": b"\xf0\x8f\xbf\xbf", "overlong_slash_4": b"\xf0\x80\x80\xaf",
    "five_byte_f8": b"\xf8\x88\x80\x80\x80", "six_byte_fc": b"\xfc\x84\x80\x80\x80\x80",
    "surrogate_d800": b"\xed\xa0\x80", "surrogate_db7f": b"\xed\xad\xbf", "surrogate_db80": b"\xed\xae\x80",
    "surrogate_dbff": b"\xed\xaf\xbf", "surrogate_dc00": b"\xed\xb0\x80", "surrogate_dfff": b"\xed\xbf\xbf",
    "surrogate_pair": b"\xed\xa0\x80\xed\xb0\x80",
    "above_max_f4_90": b"\xf4\x90\x80\x80", "above_max_f5": b"\xf5\x80\x80\x80",
    "above_max_f7": b"\xf7\xbf\xbf\xbf", "byte_fe": b"\xfe", "byte_ff": b"\xff",
    "lone_continuation_80": b"\x80", "lone_continuation_bf": b"\xbf",
    "lone_continuations_x3": b"\x80\xbf\x80", "continuation_after_ascii": b"a\x80",
    "truncated_2_then_ascii": b"\xc2A", "truncated_3_then_ascii": b"\xe2\x82A",
    "truncated_4_then_ascii": b"\xf0\x9f\x98A", "truncated_3_then_lead": b"\xe2\x82\xe2\x82\xac",
}
TRUNCATED_AT_END = {"truncated_2": b"\xc2", "truncated_3": b"\xe2\x82", "truncated_4": b"\xf0\x9f\x98",
                    "truncated_4_one": b"\xf0"}
PREFIX = b'{"type":"ping","pad":"ok '


def invalid_whole(bad):
    def run(self):
        ws = self.conn()
        ws.send_text(PREFIX + bad + b'"}')
        self.assertCloses(ws, 1007)
    return run


def invalid_first_fragment(bad):
    """The bad fragment goes without FIN; the close must come before the rest is sent."""
    def run(self):
        ws = self.conn()
        ws.send_raw(frame(TEXT, PREFIX + bad + b"tail", fin=False))
        self.assertCloses(ws, 1007)
    return run


def invalid_later_fragment(bad):
    def run(self):
        ws = self.conn()
        ws.send_raw(frame(TEXT, PREFIX, fin=False))
        ws.send(PING, b"sync")
        ok, _ = ws.expect_pong(b"sync")  # the valid first fragment was accepted
        self.assertTrue(ok)
        ws.send_raw(frame(CONT, bad + b"more", fin=False))
        self.assertCloses(ws, 1007)
    return run


def invalid_one_byte_fragments(bad):
    def run(self):
        ws = self.conn()
        ws.send_raw(fragments(PREFIX + bad + b'"}', 1))
        self.assertCloses(ws, 1007)
    return run


for name, bad in INVALID.items():
    add("utf8_invalid_%s_whole" % name, invalid_whole(bad))
    add("utf8_invalid_%s_first_fragment_fails_early" % name, invalid_first_fragment(bad))
    add("utf8_invalid_%s_later_fragment_fails_early" % name, invalid_later_fragment(bad))
    add("utf8_invalid_%s_one_byte_fragments" % name, invalid_one_byte_fragments(bad))


def truncated_at_end_whole(bad):
    def run(self):
        ws = self.conn()
        ws.send_text(b'{"type":"ping"}' + bad)
        self.assertCloses(ws, 1007)
    return run


def truncated_fragment_then_fin(bad):
    """A fragment ending inside a code point is fine until the message ends there."""
    def run(self):
        ws = self.conn()
        ws.send_raw(frame(TEXT, b'{"type":"ping"}' + bad, fin=False))
        ws.send(PING, b"still-ok")
        ok, _ = ws.expect_pong(b"still-ok")
        self.assertTrue(ok)
        ws.send_raw(frame(CONT, b""))
        self.assertCloses(ws, 1007)
    return run


for name, bad in TRUNCATED_AT_END.items():
    add("utf8_invalid_%s_at_message_end" % name, truncated_at_end_whole(bad))
    add("utf8_invalid_%s_fragment_then_empty_fin" % name, truncated_fragment_then_fin(bad))


def first_bad_index(b):
    """Index of the first byte that makes b invalid UTF-8 (Unicode Table 3-7), or None."""
    i = 0
    while i < len(b):
        c = b[i]
        if c < 0x80:
            i += 1
            continue
        if 0xC2 <= c <= 0xDF:
            n, lo, hi = 2, 0x80, 0xBF
        elif 0xE0 <= c <= 0xEF:
            n, lo, hi = 3, 0xA0 if c == 0xE0 else 0x80, 0x9F if c == 0xED else 0xBF
        elif 0xF0 <= c <= 0xF4:
            n, lo, hi = 4, 0x90 if c == 0xF0 else 0x80, 0x8F if c == 0xF4 else 0xBF
        else:
            return i
        for k in range(1, n):
            if i + k >= len(b):
                return None
            if not ((lo if k == 1 else 0x80) <= b[i + k] <= (hi if k == 1 else 0xBF)):
                return i + k
        i += n
    return None


def invalid_split_at(bad, j):
    """Fragment boundary j bytes into the bad sequence: the close must come right
    after the fragment holding the first bad byte, not before and not later."""
    def run(self):
        ws = self.conn()
        msg = PREFIX + bad + b"tail"
        cut = len(PREFIX) + j
        first_bad = first_bad_index(msg)
        ws.send_raw(frame(TEXT, msg[:cut], fin=False))
        if first_bad < cut:
            self.assertCloses(ws, 1007)
            return
        ws.send(PING, b"not-yet")
        ok, _ = ws.expect_pong(b"not-yet")
        self.assertTrue(ok)
        ws.send_raw(frame(CONT, msg[cut:], fin=False))
        self.assertCloses(ws, 1007)
    return run


for name, bad in INVALID.items():
    for j in range(1, len(bad)):
        add("utf8_invalid_%s_split_at_%d" % (name, j), invalid_split_at(bad, j))


def binary_not_validated(self):
    """Binary messages carry no UTF-8 promise: invalid bytes get the one error
    reply every binary message gets (tether takes JSON text only), and the
    connection stays open: no close of any code, and the next ping answered."""
    ws = self.conn()
    ws.send(BINARY, b"\xff\xfe\xc0\x80")
    fin, rsv, op, payload = ws.recv_frame()
    self.assertEqual(op, TEXT, "expected the error reply, got opcode %d %r" % (op, payload[:40]))
    self.assertEqual(json.loads(payload)["type"], "error", payload)
    self.assertAlive(ws)


add("utf8_binary_not_validated", binary_not_validated)


# -- close -------------------------------------------------------------------
VALID_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999]
INVALID_CODES = [0, 999, 1004, 1005, 1006, 1016, 1100, 2000, 2999, 5000, 65535]


def close_echo(code, reason=b""):
    def run(self):
        ws = self.conn()
        ws.send_close(code, reason)
        self.assertCloses(ws, code)
    return run


for code in VALID_CODES:
    add("close_code_%04d_echoed" % code, close_echo(code))
    add("close_code_%04d_with_reason_echoed" % code, close_echo(code, b"bye"))
for code in INVALID_CODES:
    add("close_code_%05d_fails" % code, bad_frame_case(frame(CLOSE, rawws.close_payload(code))))
def peer_may_send(code):
    """RFC 6455 7.4: codes a peer may send (1004-1006, 1015 reserved; 1012-1014, 1016-2999 unassigned)."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1011 or 3000 <= code <= 4999


# Sweep: every code up to 1100, then a stride through the rest of the 16-bit space.
SWEEP = sorted((set(range(0, 1101)) | set(range(1101, 3000, 37)) | set(range(3000, 5000, 97)) |
                set(range(5000, 65536, 1999)) | {2999, 3000, 4999, 5000, 65535}) -
               set(VALID_CODES) - set(INVALID_CODES))
for code in SWEEP:
    if peer_may_send(code):
        add("close_sweep_%05d_echoed" % code, close_echo(code))
    else:
        add("close_sweep_%05d_fails" % code, bad_frame_case(frame(CLOSE, rawws.close_payload(code))))

add("close_reason_123_bytes_echoed", close_echo(1000, b"r" * 123))
add("close_reason_utf8_echoed", close_echo(1000, "κόσμε 𝄞".encode()))


def close_empty(self):
    ws = self.conn()
    ws.send_close()
    try:
        code, _, _ = ws.expect_close(T)
    except (rawws.Closed, socket.timeout) as e:
        self.fail("no close reply to an empty close: %r" % e)
    self.assertIn(code, (None, 1000))
    self.assertTrue(ws.expect_eof())


add("close_empty_payload_answered", close_empty)
add("close_one_byte_payload_fails", bad_frame_case(frame(CLOSE, b"\x03")))
add("close_payload_126_fails", bad_frame_case(frame(CLOSE, rawws.close_payload(1000, b"r" * 124))))
for name, bad in list(INVALID.items())[::3] + list(TRUNCATED_AT_END.items()):
    add("close_reason_invalid_utf8_%s_fails" % name,
        bad_frame_case(frame(CLOSE, rawws.close_payload(1000, b"why " + bad)), code=1007))


def frames_after_close(extra):
    def run(self):
        ws = self.conn()
        ws.send_raw(frame(CLOSE, rawws.close_payload(1000)) + extra)
        before = self.assertCloses(ws, 1000)
        self.assertEqual(before, [], "server answered frames sent after the close")
    return run


add("close_then_app_ping_ignored", frames_after_close(frame(TEXT, ping_message(15))))
add("close_then_protocol_ping_ignored", frames_after_close(frame(PING, b"late")))
add("close_then_reserved_opcode_ignored", frames_after_close(frame(5, b"x")))
add("close_then_garbage_ignored", frames_after_close(b"\xff" * 64))


def server_closes_without_client_reply(trigger, code):
    """After its close frame the server must end the TCP connection even if the
    client never answers the close."""
    def run(self):
        ws = self.conn()
        ws.send_raw(trigger)
        got, _, _ = ws.expect_close(T, reply=False)
        self.assertEqual(got, code)
        self.assertTrue(ws.expect_eof(T), "TCP still open %ss after the server's close" % T)
    return run


add("close_protocol_error_tcp_ends_without_client_reply", server_closes_without_client_reply(frame(5, b""), 1002))
add("close_echo_tcp_ends_without_client_reply",
    server_closes_without_client_reply(frame(CLOSE, rawws.close_payload(1000)), 1000))


def nothing_after_server_close(trigger, code):
    """RFC 6455 5.5.1: after its close frame the server sends no more frames, even
    when the backend has a notification for the client at that very moment."""
    def run(self):
        for i in range(10):
            user = "after-close-%d" % next(_users)
            ws = rawws.WS(GROUP.port, GROUP.token(user), timeout=T)
            self.addCleanup(ws.close)
            ws.send_raw(trigger)
            status, _ = GROUP.notify(user, {"round": i})
            self.assertIn(status, (200, 202, 404, 503))  # 202: no live connection, stored
            got, _, before = ws.expect_close(T, reply=False)
            self.assertEqual(got, code)
            self.assertTrue(ws.expect_eof(T), "TCP still open %ss after the server's close" % T)
            self.assertEqual(ws.buf, b"", "bytes after the server's close frame: %r" % ws.buf[:80])
    return run


add("close_no_notification_after_close_echo", nothing_after_server_close(frame(CLOSE, rawws.close_payload(1000)), 1000))
add("close_no_notification_after_protocol_error", nothing_after_server_close(frame(6, b""), 1002))


def notification_while_fragmented_message_pending(self):
    """Server frames may interleave with a client's fragmented message."""
    user = "frag-notify-%d" % next(_users)
    ws = rawws.WS(GROUP.port, GROUP.token(user), timeout=T)
    self.addCleanup(ws.close)
    msg = ping_message(100)
    ws.send_raw(frame(TEXT, msg[:30], fin=False))
    ws.send(PING, b"sync")
    self.assertTrue(ws.expect_pong(b"sync")[0])
    status, body = GROUP.notify(user, {"k": "v"}, type_="meal_log.completed")
    self.assertEqual(status, 200, body)
    fin, rsv, op, payload = ws.recv_frame()
    self.assertEqual(op, TEXT)
    note = json.loads(payload)
    self.assertEqual((note["type"], note["data"]), ("meal_log.completed", {"k": "v"}))
    ws.send_raw(frame(CONT, msg[30:]))
    self.assertAlive_after_message(ws)


add("notification_while_fragmented_message_pending", notification_while_fragmented_message_pending)


def close_one_byte_at_a_time(self):
    ws = self.conn()
    ws.send(CLOSE, rawws.close_payload(3000, b"slow"), chop=1)
    self.assertCloses(ws, 3000)


add("close_one_byte_at_a_time", close_one_byte_at_a_time)


# -- --max-message -----------------------------------------------------------
add("max_message_plus_one_whole_fails_1009", bad_frame_case(frame(TEXT, ping_message(MAX_MESSAGE + 1)), 1009))
add("max_message_plus_one_binary_fails_1009", bad_frame_case(frame(BINARY, b"b" * (MAX_MESSAGE + 1)), 1009))


def over_max_fragments(self):
    """Fragments adding up past the limit fail before the message ends."""
    ws = self.conn()
    msg = ping_message(MAX_MESSAGE + 100)
    ws.send_raw(frame(TEXT, msg[:MAX_MESSAGE // 2], fin=False) +
                frame(CONT, msg[MAX_MESSAGE // 2:MAX_MESSAGE + 50], fin=False))
    self.assertCloses(ws, 1009)


add("max_message_fragments_fail_1009_before_fin", over_max_fragments)


def header_only(length, code):
    """A header declaring a huge payload closes at once, before any payload:
    the payload is never sent, so the close can only come from the header."""
    def run(self):
        ws = self.conn()
        ws.send_raw(frame(TEXT, b"", length=length))
        self.assertCloses(ws, code)
    return run


add("max_message_header_declares_2_62_fails_1009_at_once", header_only(1 << 62, 1009))
add("max_message_header_declares_max_plus_one_fails_1009_at_once", header_only(MAX_MESSAGE + 1, 1009))
add("length_with_top_bit_set_fails_1002", header_only(1 << 63, 1002))


def max_message_exact(self):
    ws = self.conn()
    ws.send_raw(fragments(ping_message(MAX_MESSAGE), 30000))
    self.assertAlive_after_message(ws)


add("max_message_exact_in_fragments_passes", max_message_exact)


# -- the opening handshake ---------------------------------------------------
def raw_upgrade(self, head, after=b"", chop=None):
    """Send an upgrade head (plus bytes pipelined behind it); return a WS-like reader
    positioned after the 101 response."""
    s = socket.create_connection(("127.0.0.1", GROUP.port), timeout=T)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    ws = rawws.WS.__new__(rawws.WS)
    ws.port, ws.timeout, ws.sock, ws.buf = GROUP.port, T, s, b""
    self.addCleanup(ws.close)
    ws.send_raw(head + after, chop=chop, delay=0.0002 if chop == 1 else 0.0)
    while b"\r\n\r\n" not in ws.buf:
        chunk = s.recv(65536)
        self.assertTrue(chunk, "closed during the handshake")
        ws.buf += chunk
    n = ws.buf.index(b"\r\n\r\n") + 4
    status, hdrs, _ = rawws.parse_response_head(ws.buf[:n])
    ws.buf = ws.buf[n:]
    return status, hdrs, ws


def upgrade_case(mutate=None, after=b"", chop=None, auth_header=False):
    def run(self):
        key = "dGhlIHNhbXBsZSBub25jZQ=="
        head, _ = rawws.handshake_request(GROUP.port, token=GROUP.token("hs-%d" % next(_users)), key=key,
                                          auth_header=auth_header)
        if mutate:
            head = mutate(head)
        status, hdrs, ws = raw_upgrade(self, head, after, chop)
        self.assertEqual(status, 101)
        self.assertEqual(hdrs.get("sec-websocket-accept"), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")  # RFC 6455 1.3
        self.assertIn("websocket", hdrs.get("upgrade", "").lower())
        if after:
            ok, got = ws.expect_pong(b"pipelined")
            self.assertTrue(ok, got)
        self.assertAlive(ws)
    return run


add("handshake_rfc_example_key", upgrade_case())
add("handshake_token_in_authorization_header", upgrade_case(auth_header=True))
add("handshake_one_byte_at_a_time", upgrade_case(chop=1))
add("handshake_with_frame_pipelined_in_same_write", upgrade_case(after=frame(PING, b"pipelined")))
add("handshake_with_frame_pipelined_chopped", upgrade_case(after=frame(PING, b"pipelined"), chop=7))
add("handshake_header_names_lower_case", upgrade_case(mutate=lambda h: b"\r\n".join(
    l.split(b":", 1)[0].lower() + b":" + l.split(b":", 1)[1] if b":" in l and not l.startswith(b"GET") else l
    for l in h.split(b"\r\n"))))
add("handshake_header_values_mixed_case", upgrade_case(mutate=lambda h: h.replace(
    b"Upgrade: websocket", b"Upgrade: WebSocket").replace(b"Connection: Upgrade", b"Connection: keep-alive, UPGRADE")))
add("handshake_extra_headers_and_spaces", upgrade_case(mutate=lambda h: h.replace(
    b"Upgrade: websocket", b"Upgrade:   websocket  \r\nOrigin: http://example.com\r\nSec-WebSocket-Extensions: permessage-deflate")))


def extensions_not_negotiated(self):
    """tether implements no extension: it must not accept permessage-deflate."""
    head, _ = rawws.handshake_request(GROUP.port, token=GROUP.token("hs-ext"), extra_headers=[
        ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits")])
    status, hdrs, ws = raw_upgrade(self, head)
    self.assertEqual(status, 101)
    self.assertNotIn("sec-websocket-extensions", hdrs)


add("handshake_extensions_not_negotiated", extensions_not_negotiated)


def healthz(self):
    status, _, _ = rawws.http_exchange(GROUP.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    self.assertEqual(status, 200)


add("healthz_on_client_port", healthz)


class SmallLimit(unittest.TestCase):
    """The same limit with a small --max-message (125 bytes, the smallest allowed): the boundary is exact
    for whole and fragmented messages, and control frames are not subject to it."""
    LIMIT = 125  # the smallest value tether run accepts

    @classmethod
    def setUpClass(cls):
        cls.group = th.Group(workers=1, slots=256, extra_args=["--max-message", str(cls.LIMIT), "--log-level", "info",
                                                               "--max-msgs-per-sec", "0", "--max-bytes-per-sec", "0"])
        cls.group.__enter__()

    @classmethod
    def tearDownClass(cls):
        cls.group.finish()

    def conn(self):
        ws = rawws.WS(self.group.port, self.group.token("small-%d" % next(_users)), timeout=T)
        self.addCleanup(ws.close)
        return ws

    assertCloses = RFC6455.assertCloses
    assertAlive = RFC6455.assertAlive
    assertAlive_after_message = assert_alive_after_message


def small_case(size, frag, ok):
    def run(self):
        ws = self.conn()
        msg = ping_message(size)
        ws.send_raw(fragments(msg, frag) if frag else frame(TEXT, msg))
        if ok:
            self.assertAlive_after_message(ws)
        else:
            self.assertCloses(ws, 1009)
    return run


for _size in (SmallLimit.LIMIT - 1, SmallLimit.LIMIT, SmallLimit.LIMIT + 1, 127, 65536):
    for _frag in (None, 10, 33):
        setattr(SmallLimit, "test_small_limit_%05d_%s" % (_size, "whole" if _frag is None else "fragments_of_%d" % _frag),
                small_case(_size, _frag, _size <= SmallLimit.LIMIT))


def _small_control(self):
    ws = self.conn()
    ws.send(PING, b"p" * 125)
    self.assertTrue(ws.expect_pong(b"p" * 125)[0])
    ws.send(PONG, b"q" * 125)
    ws.send_close(1000, b"r" * 123)
    self.assertCloses(ws, 1000)


SmallLimit.test_small_limit_control_frames_up_to_125_unaffected = _small_control


if __name__ == "__main__":
    unittest.main(verbosity=1)
