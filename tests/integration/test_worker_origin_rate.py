"""Socket worker: the Origin allow-list and the inbound rate limits.

--allowed-origins: a browser upgrade from a listed origin (exact or a
*.domain pattern) passes, any other Origin gets 403 JSON and no slot, a
request without Origin (native apps) passes; python3-websockets sends the
Origin header as a browser would.
--max-msgs-per-sec / --max-bytes-per-sec: a client sending faster than its
bucket allows (past the 2 s burst) is closed with 1008 and a reason naming
the flag, counted in tether_rate_limited_total; a client pinging at a
normal pace beside it is untouched. No speed thresholds: the figures under
load are measured by tools/bench-flood."""
import asyncio
import json
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: harness

import websockets  # noqa: E402
import websockets.exceptions  # noqa: E402

import harness as th  # noqa: E402
from harness.aio import app_ping, connect, run  # noqa: E402
from harness.unit import slots_of  # noqa: E402
from harness.ws import TEXT, close_code, frame, http_get, raw_ws, read_frames, upgrade_headers  # noqa: E402


def metric(g, name):
    _, text = g.api("GET", "/metrics")
    for line in text.splitlines():
        if line.startswith(name + " "):
            return int(float(line.split()[1]))
    raise AssertionError("%s not in /metrics" % name)


class OriginAndRate(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.g = th.Group(workers=2, extra_args=[
            "--allowed-origins", "https://app.example.com, *.example.org",
            "--max-msgs-per-sec", "20", "--max-bytes-per-sec", "4096", "--max-message", "1024"])
        cls.g.__enter__()

    @classmethod
    def tearDownClass(cls):
        cls.g.__exit__(None, None, None)

    def test_origins(self):
        g = self.g

        async def go():
            for origin in ("https://app.example.com", "https://eu.example.org", None):
                ws = await connect(g.ws_url("o-ok"), origin=origin)
                self.assertEqual((await app_ping(ws))["type"], "pong", origin)
                await ws.close()
            for origin in ("https://evil.example", "http://app.example.com", "https://example.org",
                           "null"):
                with self.assertRaises(websockets.exceptions.InvalidStatusCode, msg=origin) as cm:
                    await connect(g.ws_url("o-bad"), origin=origin)
                self.assertEqual(cm.exception.status_code, 403, origin)
        before = metric(g, "tether_origin_refused_total")
        run(go())
        self.assertEqual(metric(g, "tether_origin_refused_total") - before, 4)
        self.assertFalse(slots_of(g, "o-bad"), "a refused origin took a slot")
        status, _, body = http_get(g.port, "/ws?token=" + g.token("o-raw"),
                                   upgrade_headers() + [("Origin", "https://evil.example")])
        self.assertEqual(status, 403)
        self.assertEqual(json.loads(body)["error"], "origin not allowed")

    def flood(self, user, payloads):
        """Send payloads as fast as possible; return the server's close (code, reason)."""
        s, rest = raw_ws(self.g.port, self.g.token(user))
        try:
            for p in payloads:
                s.sendall(frame(TEXT, p))
        except (BrokenPipeError, ConnectionResetError):
            pass
        frames = read_frames(s, rest, timeout=10)
        s.close()
        closes = [p for op, p in frames if op == 0x8]
        self.assertTrue(closes, "no close frame: %r" % frames[:5])
        return close_code(closes[0]), closes[0][2:].decode()

    def test_frames_over_the_rate_closed_1008(self):
        before = metric(self.g, "tether_rate_limited_total")

        async def steady():  # beside the flood: 4 pings a second for 3 s
            ws = await connect(self.g.ws_url("r-steady"))
            for _ in range(12):
                self.assertEqual((await app_ping(ws))["type"], "pong")
                await asyncio.sleep(0.25)
            await ws.close()

        async def go():
            task = asyncio.create_task(steady())
            code, reason = await asyncio.to_thread(self.flood, "r-flood", [b'{"type":"ping"}'] * 500)
            await task
            return code, reason
        code, reason = run(go(), timeout=60)
        self.assertEqual(code, 1008)
        self.assertEqual(reason, "rate limit: --max-msgs-per-sec")
        self.assertGreaterEqual(metric(self.g, "tether_rate_limited_total") - before, 1)
        self.assertIn("User r-flood closed: over --max-msgs-per-sec", self.g.log())

    def test_bytes_over_the_rate_closed_1008(self):
        # 12 frames (under the frame burst of 40) of 1000 bytes: over the 8 KiB byte burst.
        code, reason = self.flood("r-bytes", [b'{"type":"ping","pad":"' + b"x" * 970 + b'"}'] * 12)
        self.assertEqual(code, 1008)
        self.assertEqual(reason, "rate limit: --max-bytes-per-sec")

    def test_a_burst_within_the_bucket_passes(self):
        # 30 pings at once (burst 40), then a pause: nothing closed.
        s, rest = raw_ws(self.g.port, self.g.token("r-burst"))
        s.sendall(b"".join(frame(TEXT, b'{"type":"ping"}') for _ in range(30)))
        s.settimeout(5)
        buf, pongs, deadline = rest, 0, time.time() + 5
        while pongs < 30 and time.time() < deadline:
            buf += s.recv(65536)
            pongs = buf.count(b'"pong"')
        s.close()
        self.assertEqual(pongs, 30)


if __name__ == "__main__":
    unittest.main()
