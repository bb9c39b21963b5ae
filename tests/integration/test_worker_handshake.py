"""Socket worker: the HTTP side of a client connection.

Drives a real `tether run` group: a WebSocket upgrade with the token in the
query or in `Authorization: Bearer`, /healthz on the client port, 404 for
other paths, 426 for a wrong Sec-WebSocket-Version, and every 401 case
(no token, bad signature, expired, alg none) leaving the registry empty.
"""
import base64
import hashlib
import json
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: harness

import websockets
import websockets.exceptions

from harness import make_token, wait_until  # noqa: E402
from harness.aio import app_ping, connect, run  # noqa: E402
from harness.unit import GroupTestCase, slots_of  # noqa: E402
from harness.ws import http_get, upgrade_headers  # noqa: E402

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Handshake(GroupTestCase):
    def test_upgrade_query_token_accept_key(self):
        hdrs = upgrade_headers()
        key = dict(hdrs)["Sec-WebSocket-Key"]
        status, h, _ = http_get(self.g.port, "/ws?token=" + self.g.token("hs-q"), hdrs)
        self.assertEqual(status, 101)
        want = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
        self.assertEqual(h["sec-websocket-accept"], want)
        self.assertEqual(h["upgrade"].lower(), "websocket")

    def test_bearer_header_and_registry(self):
        async def go():
            ws = await connect(self.g.ws_url(), extra_headers={
                "Authorization": "Bearer " + self.g.token("hs-bearer")})
            pong = await app_ping(ws)
            self.assertEqual(pong["type"], "pong")
            live = wait_until(lambda: slots_of(self.g, "hs-bearer"), timeout=5)
            self.assertEqual(len(live), 1)
            await ws.close()
        run(go())
        self.assertTrue(self.g.wait_log("[WebSocket] User hs-bearer connected and added to registry"))

    def test_healthz_on_client_port(self):
        status, h, body = http_get(self.g.port, "/healthz")
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body)["status"], "ok")

    def test_other_path_404(self):
        status, _, _ = http_get(self.g.port, "/nope?token=" + self.g.token("hs-404"), upgrade_headers())
        self.assertEqual(status, 404)

    def test_wrong_version_426(self):
        status, h, _ = http_get(self.g.port, "/ws?token=" + self.g.token("hs-426"),
                                upgrade_headers(version="8"))
        self.assertEqual(status, 426)
        self.assertEqual(h["sec-websocket-version"], "13")

    def test_not_an_upgrade_400(self):
        status, _, _ = http_get(self.g.port, "/ws?token=" + self.g.token("hs-400"))
        self.assertEqual(status, 400)

    def test_garbage_400(self):
        import socket
        with socket.create_connection(("127.0.0.1", self.g.port), timeout=5) as s:
            s.sendall(b"\x00\x01garbage\r\n\r\n")
            self.assertTrue(s.recv(100).startswith(b"HTTP/1.1 400"))

    def test_head_too_big_431(self):
        hdrs = upgrade_headers() + [("X-Pad-%d" % i, "x" * 200) for i in range(60)]
        status, _, _ = http_get(self.g.port, "/ws?token=" + self.g.token("hs-431"), hdrs)
        self.assertEqual(status, 431)

    def _refused(self, url, headers=None):
        async def go():
            with self.assertRaises(websockets.exceptions.InvalidStatusCode) as cm:
                await connect(url, extra_headers=headers or {})
            return cm.exception.status_code
        return run(go())

    def test_401_cases_take_no_slot(self):
        secret = self.g.secret
        bad = {
            "no token": self.g.ws_url(),
            "bad signature": self.g.ws_url(token=make_token("wrong-secret", "hs-401")),
            "expired": self.g.ws_url(token=make_token(secret, "hs-401", ttl=-10)),
            "alg none": self.g.ws_url(token=make_token(secret, "hs-401", alg="none")),
            "HS384": self.g.ws_url(token=make_token(secret, "hs-401", alg="HS384")),
            "not yet valid": self.g.ws_url(token=make_token(
                secret, "hs-401", extra={"nbf": 2000000000})),
        }
        for why, url in bad.items():
            with self.subTest(why):
                self.assertEqual(self._refused(url), 401)
        self.assertEqual(self._refused(self.g.ws_url(), {"Authorization": "Bearer x.y.z"}), 401)
        self.assertEqual(slots_of(self.g, "hs-401"), [])

    def test_head_in_pieces(self):
        import socket
        import time
        req = "GET /ws?token=%s HTTP/1.1\r\nHost: x\r\n" % self.g.token("hs-pieces")
        req += "".join("%s: %s\r\n" % h for h in upgrade_headers()) + "\r\n"
        with socket.create_connection(("127.0.0.1", self.g.port), timeout=5) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            data = req.encode()
            for i in range(0, len(data), 7):
                s.sendall(data[i:i + 7])
                time.sleep(0.002)
            self.assertTrue(s.recv(100).startswith(b"HTTP/1.1 101"))

    def test_slowloris_closed(self):
        import socket
        import time
        with socket.create_connection(("127.0.0.1", self.g.port), timeout=20) as s:
            s.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
            t0 = time.time()
            self.assertEqual(s.recv(100), b"")  # closed without an answer
            self.assertGreaterEqual(time.time() - t0, 8)


if __name__ == "__main__":
    unittest.main()
