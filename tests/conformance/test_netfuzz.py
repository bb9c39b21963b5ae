"""A network fuzzer for the whole socket worker (upgrade, reader, session,
send path), complementing the libFuzzer targets that exercise the parsers
alone: thousands of mutated client byte streams (bit flips, inserted,
deleted and duplicated bytes, frames spliced from a library of valid and
invalid frames), each on its own authenticated connection, written in random
chops, with a notification for that client posted to the backend API midway
(so deliveries race streams that are failing or closing), and ended with a
half-close. Deterministic (fixed seed; TETHER_NETFUZZ_SEED and
TETHER_NETFUZZ_CASES override).

A stream that still opens with an intact library frame must get that frame's
reply first (a pong, an error message, a close with the right code), so a
worker that answers nothing fails; such a stream waits for that reply before
its half-close (the worker drops what it owes a client that half-closes).
Every stream must end with the server closing the TCP connection (it saw our
EOF or a protocol error), every server frame must be well formed (FIN,
unmasked, a known opcode, a legal close code), nothing may follow a close
frame, and afterwards the workers must be the same processes (none crashed
and was restarted), no slot may be left, and the log must hold no sanitizer
report.
"""
import http.client
import json
import os
import random
import socket
import struct
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: harness
from harness import ws as rawws  # noqa: E402
from harness.ws import BINARY, CLOSE, CONT, PING, PONG, TEXT, frame, ping_message  # noqa: E402
import harness as th  # noqa: E402

SEED = int(os.environ.get("TETHER_NETFUZZ_SEED", "6455"))
CASES = int(os.environ.get("TETHER_NETFUZZ_CASES", "3000"))
T = 10.0 if th.SANITIZED else 5.0
SERVER_CLOSE_CODES = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011}


def library(rng):
    """Frames to splice, valid ones and one of each kind of protocol error, each
    with the server's first reply to it when it opens a stream: "app-pong",
    "error" (an error message), ("pong", payload), ("close", codes), or None
    (no reply owed, or it depends on what follows)."""
    k = lambda: bytes(rng.randrange(256) for _ in range(4))  # noqa: E731
    return [
        (frame(TEXT, ping_message(15), key=k()), "app-pong"),
        (frame(TEXT, ping_message(300), key=k()), "app-pong"),
        (frame(TEXT, b'{"type":"ack","id":"x"}', key=k()), None),
        (frame(TEXT, b"not json", key=k()), "error"),
        (frame(TEXT, b'{"type":', fin=False, key=k()), None),
        (frame(CONT, b'"ping"}', key=k()), ("close", {1002})),
        (frame(CONT, b" ", fin=False, key=k()), ("close", {1002})),
        (frame(BINARY, os.urandom(20), key=k()), "error"),
        (frame(PING, b"abc", key=k()), ("pong", b"abc")),
        (frame(PONG, b"", key=k()), None),
        (frame(CLOSE, rawws.close_payload(1000, b"bye"), key=k()), ("close", {1000})),
        (frame(CLOSE, b"", key=k()), ("close", {None, 1000})),
        (frame(TEXT, "κόσμε".encode(), key=k()), "error"),
        (frame(TEXT, b"\xed\xa0\x80", key=k()), ("close", {1007})),
        (frame(TEXT, b"x", rsv=4, key=k()), ("close", {1002})),
        (frame(7, b"", key=k()), ("close", {1002})),
        (frame(PING, b"p" * 126, key=k()), ("close", {1002})),
        (frame(TEXT, b"x", mask=False), ("close", {1002})),
        (frame(TEXT, b"", length=1 << 62, key=k()), ("close", {1009})),
        (frame(TEXT, b"a" * 70000, key=k()), ("close", {1009})),
    ]


def mutate(rng, lib):
    """A mutated stream, and the first library entry if the stream still opens
    with it unchanged (so the server's first reply is known), else None."""
    pieces = [rng.choice(lib) for _ in range(rng.randint(1, 6))]
    out = bytearray(b"".join(p[0] for p in pieces))
    for _ in range(rng.randint(0, 8)):
        op = rng.randrange(5)
        pos = rng.randrange(len(out) + 1)
        if op == 0 and out:
            out[min(pos, len(out) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            out[pos:pos] = bytes([rng.randrange(256)])
        elif op == 2 and out:
            del out[pos:pos + rng.randint(1, 4)]
        elif op == 3:
            out[pos:pos] = rng.choice(lib)[0]
        else:
            n = rng.randint(1, 16)
            out[pos:pos] = out[pos:pos + n]
    out = bytes(out)
    return out, pieces[0] if out.startswith(pieces[0][0]) else None


def message_type(payload):
    """The "type" of a server text message, None if it is not a JSON object."""
    try:
        obj = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return obj.get("type") if isinstance(obj, dict) else None


def first_reply_problem(data, want, note_type, complete=True):
    """What the server's first frame (notifications for the client skipped)
    must be when the stream opened with an intact library frame. With
    complete=False, None while no reply has arrived yet, else a truth value."""
    off = 0
    while True:
        f, rest = rawws.parse_frame(data[off:])
        if f is None:
            return "no reply (wanted %r)" % (want,) if complete else None
        off = len(data) - len(rest)
        op, payload = f
        if op == TEXT and message_type(payload) == note_type:
            continue
        if not complete:
            return True
        break
    if want in ("app-pong", "error"):
        if op != TEXT or message_type(payload) != want.replace("app-", ""):
            return "first reply %d %r, wanted %s" % (op, payload[:60], want)
    elif want[0] == "pong":
        if (op, payload) != (PONG, want[1]):
            return "first reply %d %r, wanted a pong %r" % (op, payload[:60], want[1])
    elif op != CLOSE or rawws.close_code(payload) not in want[1]:
        return "first reply %d %r, wanted a close in %r" % (op, payload[:60], want[1])
    return None


def check_stream(data):
    """Parse the server's bytes; return a problem description or None."""
    off, closed = 0, False
    while off < len(data):
        if closed:
            return "bytes after the close frame"
        if len(data) - off < 2:
            return "truncated frame header"
        b0, b1 = data[off], data[off + 1]
        if not b0 & 0x80 or b0 & 0x70 or b1 & 0x80:
            return "frame with FIN clear, RSV set or a mask: %02x %02x" % (b0, b1)
        op, n, hl = b0 & 0xF, b1 & 0x7F, 2
        if n == 126:
            n, hl = struct.unpack("!H", data[off + 2:off + 4])[0], 4
        elif n == 127:
            n, hl = struct.unpack("!Q", data[off + 2:off + 10])[0], 10
        payload = data[off + hl:off + hl + n]
        if len(payload) < n:
            return "truncated frame payload"
        if op not in (TEXT, CLOSE, PONG):
            return "unexpected opcode %d" % op
        if op == TEXT:
            try:
                json.loads(payload.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                return "text frame that is not UTF-8 JSON: %r" % payload[:60]
        if op == CLOSE:
            closed = True
            if len(payload) == 1:
                return "1-byte close payload"
            if len(payload) >= 2:
                code = struct.unpack("!H", payload[:2])[0]
                if code not in SERVER_CLOSE_CODES and not 3000 <= code <= 4999:
                    return "close code %d" % code
        off += hl + n
    return None


def wait_first_reply(ws, want, note_type, deadline):
    """Read until the server's first reply (first_reply_problem no longer says
    "no reply"), the server closes, or the deadline passes."""
    while first_reply_problem(ws.buf, want, note_type, complete=False) is None:
        try:
            ws._fill(len(ws.buf) + 1, deadline)
        except (rawws.Closed, socket.timeout):
            return


def notify(api, user, i, notes):
    body = json.dumps({"user_id": user, "type": "race", "data": {"i": i}})
    api.request("POST", "/v1/notify", body=body, headers={"Content-Type": "application/json"})
    resp = api.getresponse()
    resp.read()
    notes[resp.status] = notes.get(resp.status, 0) + 1


class NetFuzz(unittest.TestCase):
    def test_mutated_streams(self):
        rng = random.Random(SEED)
        lib = library(rng)
        with th.Group(workers=2, slots=256, extra_args=["--log-level", "info", "--max-msgs-per-sec", "0",
                                                        "--max-bytes-per-sec", "0"]) as g:
            pids0 = sorted(w["pid"] for w in g.dump()["workers"])
            problems, hangs, t0 = [], 0, time.monotonic()
            # A notification for each fuzzed connection races its stream (delivered to
            # a connection that may be failing or closing): frames must stay well formed.
            api, notes = http.client.HTTPConnection("127.0.0.1", g.api_port, timeout=30), {}
            known = 0  # streams whose first reply was checked
            for i in range(CASES):
                data, first = mutate(rng, lib)
                user = "nf-%d" % (i % 40)
                ws = rawws.WS(g.port, g.token(user), timeout=T)
                chop = rng.choice([None, None, 1, 3, 64, 1000])
                half = rng.randrange(len(data) + 1)
                ws.send_raw(data[:half], chop=chop if chop != 1 or half < 2000 else 7)
                notify(api, user, i, notes)
                ws.send_raw(data[half:], chop=chop if chop != 1 or len(data) - half < 2000 else 7)
                want = first[1] if first is not None else None
                if want is not None:
                    # The worker drops what it owes a client that half-closes (the EOF
                    # aborts the connection), so a stream with a known first reply waits
                    # for it before its EOF; the other streams race their EOF as before.
                    wait_first_reply(ws, want, "race", time.monotonic() + T)
                try:
                    ws.sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                if not ws.expect_eof(T):
                    hangs += 1
                    problems.append("case %d: TCP still open %ss after our EOF, input %r" % (i, T, data[:80]))
                why = check_stream(ws.buf)
                if not why and want is not None:
                    known += 1
                    why = first_reply_problem(ws.buf, want, "race")
                if why:
                    problems.append("case %d: %s; input %r" % (i, why, data[:80]))
                ws.close()
                if len(problems) > 10:
                    break
            api.close()
            print("netfuzz: %d mutated streams in %.1fs (seed %d), %d with a known first reply; "
                  "racing notifications answered %s"
                  % (i + 1, time.monotonic() - t0, SEED, known, dict(sorted(notes.items()))), file=sys.stderr)
            self.assertEqual(set(notes) - {200, 202, 404, 503}, set(), "unexpected notify statuses")
            print("\n".join(problems), file=sys.stderr)
            self.assertEqual(problems, [])
            # Every notification races a connection that is open when it is posted, so
            # some must be delivered: a notifier that answers 404 or 503 to all fails.
            self.assertGreater(notes.get(200, 0), 0, notes)
            # The fixed seed opens hundreds of streams with an intact frame; a few would
            # mean the oracle above checked almost nothing.
            self.assertGreater(known, CASES // 10, "only %d streams had a known first reply" % known)
            self.assertEqual(sorted(w["pid"] for w in g.dump()["workers"]), pids0, "a worker was restarted")
            self.assertTrue(th.wait_until(lambda: g.dump()["slots_used"] == 0, T), "slots left taken")
            status = g.stop()
        self.assertEqual(status, 0)


if __name__ == "__main__":
    unittest.main(verbosity=1)
