"""Resume parameters at the upgrade: a malformed since or epoch is refused
with HTTP 400 and a JSON reason, before any registry slot is claimed, and
well-formed ones upgrade (101).

Raw sockets, so the status line and body of a refused upgrade can be read;
the registry is read with tether-dump --json.
"""
import json
import os
import socket
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: harness

from harness.unit import GroupTestCase  # noqa: E402

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def upgrade(port, target, timeout=5):
    """One upgrade request. Returns (status, body bytes) -- body empty for a 101."""
    req = ("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (target, KEY))
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(req.encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status != 101:
            clen = [int(l.split(b":")[1]) for l in head.split(b"\r\n")
                    if l.lower().startswith(b"content-length:")]
            while clen and len(body) < clen[0]:
                chunk = s.recv(65536)
                if not chunk:
                    break
                body += chunk
        return status, body


class ResumeParams(GroupTestCase):
    GROUP_ARGS = {"workers": 1, "slots": 64}

    def target(self, user, query):
        return "/ws?token=%s&%s" % (self.g.token(user), query)

    def test_malformed_refused_400_no_slot(self):
        cases = [
            ("since=", "since must be a decimal within 64 bits"),
            ("since=-1", "since must be a decimal within 64 bits"),
            ("since=1.0", "since must be a decimal within 64 bits"),
            ("since=0x1f", "since must be a decimal within 64 bits"),
            ("since=18446744073709551616", "since must be a decimal within 64 bits"),
            ("since=%31", "since must be a decimal within 64 bits"),
            ("since=1&epoch=" + "a" * 65, "epoch over 64 bytes"),
            ("since=1&epoch=ab%2Fcd", "epoch must be letters, digits, '-' or '_'"),
            ("epoch=3d15540311ddfde9", "epoch without since"),
        ]
        for i, (q, reason) in enumerate(cases):
            with self.subTest(query=q):
                status, body = upgrade(self.g.port, self.target("bad%d" % i, q))
                self.assertEqual(status, 400, body)
                self.assertEqual(json.loads(body), {"error": reason})
        self.assertEqual(self.g.dump()["slots_used"], 0)
        for i in range(len(cases)):
            self.assertNotIn("User bad%d connected" % i, self.g.log())

    def test_wellformed_upgrades(self):
        for i, q in enumerate(["since=0", "since=0&epoch=", "since=18446744073709551615&epoch=x",
                               "since=17&epoch=3d15540311ddfde9", "since=5&epoch=" + "Z" * 64]):
            with self.subTest(query=q):
                status, body = upgrade(self.g.port, self.target("good%d" % i, q))
                self.assertEqual(status, 101, body)

    def test_auth_checked_first(self):
        status, body = upgrade(self.g.port, "/ws?since=x")
        self.assertEqual(status, 401, body)


if __name__ == "__main__":
    unittest.main()
