"""A network fuzzer for the notifier's backend API server (framing, routing,
keep-alive pipelining, replies), complementing fuzz_notifier, which drives
the pure request functions alone: thousands of mutated request streams
(pipelined requests spliced from a library of valid and invalid ones, then
bit flips, inserted, deleted and duplicated bytes), written in random chops
and ended with a half-close. Deterministic (TETHER_NETFUZZ_SEED and
TETHER_NETFUZZ_CASES override).

Every stream must end with the server closing the connection, the bytes
back must be a sequence of well-formed HTTP/1.1 responses with a known
status and a Content-Length body (JSON, except /metrics), and afterwards the
notifier must not have been restarted, /healthz must answer 200, and the log
must hold no sanitizer report.
"""
import json
import os
import random
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: harness
from harness import ws as rawws  # noqa: E402
import harness as th  # noqa: E402

SEED = int(os.environ.get("TETHER_NETFUZZ_SEED", "7230"))
CASES = int(os.environ.get("TETHER_NETFUZZ_CASES", "2000"))
T = 10.0 if th.SANITIZED else 5.0
STATUSES = {100, 200, 400, 404, 405, 408, 411, 413, 431, 500, 503}


def post(path, body, extra=b""):
    return (b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n"
            % (path, extra, len(body)) + body)


LIBRARY = [
    post(b"/v1/notify", json.dumps({"user_id": "nf-user", "type": "t", "data": {"a": [1, 2]}}).encode()),
    post(b"/v1/notify", json.dumps({"user_id": "nf-user", "type": "t", "id": "id-1"}).encode()),
    post(b"/v1/notify", b'{"user_id":"\\u00e9","type":"t","data":null}'),
    post(b"/v1/notify", b"{bad json"),
    post(b"/v1/notify", b'{"\\\xc3\xa9":1}'),
    post(b"/v1/notify/batch", json.dumps([{"user_id": "a", "type": "t"}, {"user_id": "b"}]).encode()),
    post(b"/v1/notify", b"{}", extra=b"Expect: 100-continue\r\n"),
    b"GET /v1/presence/nf-user HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v1/presence/%ff%41 HTTP/1.1\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\n\r\n", b"GET /metrics HTTP/1.1\r\n\r\n", b"GET /nope HTTP/1.1\r\n\r\n",
    b"DELETE /v1/notify HTTP/1.1\r\n\r\n", b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"POST /v1/notify HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /v1/notify HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
    b"POST /v1/notify HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    b"GET /healthz HTTP/1.1\r\nX: " + b"x" * 9000 + b"\r\n\r\n",
]


def mutate(rng):
    out = bytearray(b"".join(rng.choice(LIBRARY) for _ in range(rng.randint(1, 5))))
    for _ in range(rng.randint(0, 6)):
        op = rng.randrange(5)
        pos = rng.randrange(len(out) + 1)
        if op == 0 and out:
            out[min(pos, len(out) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            out[pos:pos] = bytes([rng.choice(b"\r\n :/0123456789{}\"\x00\xff")])
        elif op == 2 and out:
            del out[pos:pos + rng.randint(1, 8)]
        elif op == 3:
            out[pos:pos] = rng.choice(LIBRARY)
        else:
            n = rng.randint(1, 32)
            out[pos:pos] = out[pos:pos + n]
    return bytes(out)


def check_responses(data, statuses):
    """Parse the reply bytes (statuses seen go to the dict); return a problem or None."""
    off = 0
    while off < len(data):
        end = data.find(b"\r\n\r\n", off)
        if end < 0:
            return "truncated response head %r" % data[off:off + 80]
        status, hdrs, _ = rawws.parse_response_head(data[off:end + 4])
        if status not in STATUSES:
            return "status %r in %r" % (status, data[off:off + 80])
        off = end + 4
        statuses[status] = statuses.get(status, 0) + 1
        if status == 100:
            continue
        if "content-length" not in hdrs:
            return "no Content-Length for %d" % status
        n = int(hdrs["content-length"])
        body = data[off:off + n]
        if len(body) < n:
            return "truncated body for %d" % status
        off += n
        if "json" in hdrs.get("content-type", ""):
            try:
                json.loads(body.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                return "%d body is not UTF-8 JSON: %r" % (status, body[:80])
    return None


class ApiNetFuzz(unittest.TestCase):
    def test_mutated_request_streams(self):
        rng = random.Random(SEED)
        with th.Group(workers=1, slots=64, extra_args=["--log-level", "info"]) as g:
            problems, statuses, t0 = [], {}, time.monotonic()
            for i in range(CASES):
                data = mutate(rng)
                s = socket.create_connection(("127.0.0.1", g.api_port), timeout=T)
                chop = rng.choice([None, None, 1, 7, 100])
                try:
                    step = chop if chop != 1 or len(data) < 2000 else 13
                    for k in range(0, len(data), step or len(data) or 1):
                        s.sendall(data[k:k + (step or len(data))])
                    s.shutdown(socket.SHUT_WR)
                except OSError:
                    pass  # the server may answer (413, 431) and close before reading it all
                buf, deadline = b"", time.monotonic() + T
                while time.monotonic() < deadline:
                    try:
                        chunk = s.recv(65536)
                    except ConnectionResetError:
                        break
                    except socket.timeout:
                        problems.append("case %d: connection still open %ss after our EOF: %r" % (i, T, data[:80]))
                        break
                    if not chunk:
                        break
                    buf += chunk
                s.close()
                why = check_responses(buf, statuses)
                if why:
                    problems.append("case %d: %s; input %r" % (i, why, data[:100]))
                if len(problems) > 10:
                    break
            print("api netfuzz: %d mutated request streams in %.1fs (seed %d), replies %s"
                  % (i + 1, time.monotonic() - t0, SEED, dict(sorted(statuses.items()))), file=sys.stderr)
            self.assertEqual(problems, [])
            self.assertEqual(g.api("GET", "/healthz")[0], 200)
            self.assertEqual(g.log().count("notifier started"), 1, "the notifier was restarted")
            status = g.stop()
        self.assertEqual(status, 0)


if __name__ == "__main__":
    unittest.main(verbosity=1)
