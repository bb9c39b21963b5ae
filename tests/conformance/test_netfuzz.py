"""A network fuzzer for the whole socket worker (upgrade, reader, session,
send path), complementing the libFuzzer targets that exercise the parsers
alone: thousands of mutated client byte streams (bit flips, inserted,
deleted and duplicated bytes, frames spliced from a library of valid and
invalid frames), each on its own authenticated connection, written in random
chops, with a notification for that client posted to the backend API midway
(so deliveries race streams that are failing or closing), and ended with a
half-close. Deterministic (fixed seed; TETHER_NETFUZZ_SEED
and TETHER_NETFUZZ_CASES override).

Every stream must end with the server closing the TCP connection (it saw
our EOF or a protocol error), every server frame must be well formed (FIN,
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
    """Frames to splice: valid ones, and one of each kind of protocol error."""
    k = lambda: bytes(rng.randrange(256) for _ in range(4))  # noqa: E731
    return [
        frame(TEXT, ping_message(15), key=k()), frame(TEXT, ping_message(300), key=k()),
        frame(TEXT, b'{"type":"ack","id":"x"}', key=k()), frame(TEXT, b"not json", key=k()),
        frame(TEXT, b'{"type":', fin=False, key=k()), frame(CONT, b'"ping"}', key=k()),
        frame(CONT, b" ", fin=False, key=k()), frame(BINARY, os.urandom(20), key=k()),
        frame(PING, b"abc", key=k()), frame(PONG, b"", key=k()),
        frame(CLOSE, rawws.close_payload(1000, b"bye"), key=k()), frame(CLOSE, b"", key=k()),
        frame(TEXT, "κόσμε".encode(), key=k()), frame(TEXT, b"\xed\xa0\x80", key=k()),
        frame(TEXT, b"x", rsv=4, key=k()), frame(7, b"", key=k()), frame(PING, b"p" * 126, key=k()),
        frame(TEXT, b"x", mask=False), frame(TEXT, b"", length=1 << 62, key=k()),
        frame(TEXT, b"a" * 70000, key=k()),
    ]


def mutate(rng, lib):
    out = bytearray(b"".join(rng.choice(lib) for _ in range(rng.randint(1, 6))))
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
            out[pos:pos] = rng.choice(lib)
        else:
            n = rng.randint(1, 16)
            out[pos:pos] = out[pos:pos + n]
    return bytes(out)


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
        with th.Group(workers=2, slots=256, extra_args=["--log-level", "info"]) as g:
            pids0 = sorted(w["pid"] for w in g.dump()["workers"])
            problems, hangs, t0 = [], 0, time.monotonic()
            # A notification for each fuzzed connection races its stream (delivered to
            # a connection that may be failing or closing): frames must stay well formed.
            api, notes = http.client.HTTPConnection("127.0.0.1", g.api_port, timeout=30), {}
            for i in range(CASES):
                data = mutate(rng, lib)
                user = "nf-%d" % (i % 40)
                ws = rawws.WS(g.port, g.token(user), timeout=T)
                chop = rng.choice([None, None, 1, 3, 64, 1000])
                half = rng.randrange(len(data) + 1)
                ws.send_raw(data[:half], chop=chop if chop != 1 or half < 2000 else 7)
                notify(api, user, i, notes)
                ws.send_raw(data[half:], chop=chop if chop != 1 or len(data) - half < 2000 else 7)
                try:
                    ws.sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                if not ws.expect_eof(T):
                    hangs += 1
                    problems.append("case %d: TCP still open %ss after our EOF, input %r" % (i, T, data[:80]))
                why = check_stream(ws.buf)
                if why:
                    problems.append("case %d: %s; input %r" % (i, why, data[:80]))
                ws.close()
                if len(problems) > 10:
                    break
            api.close()
            print("netfuzz: %d mutated streams in %.1fs (seed %d); racing notifications answered %s"
                  % (i + 1, time.monotonic() - t0, SEED, dict(sorted(notes.items()))), file=sys.stderr)
            self.assertEqual(set(notes) - {200, 404, 503}, set(), "unexpected notify statuses")
            self.assertEqual(problems, [])
            self.assertEqual(sorted(w["pid"] for w in g.dump()["workers"]), pids0, "a worker was restarted")
            self.assertTrue(th.wait_until(lambda: g.dump()["slots_used"] == 0, T), "slots left taken")
            status = g.stop()
        self.assertEqual(status, 0)


if __name__ == "__main__":
    unittest.main(verbosity=1)
