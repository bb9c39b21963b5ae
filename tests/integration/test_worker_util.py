"""Helpers for the socket-worker integration tests (test_worker_*.py).

A tiny raw-socket WebSocket client for what a library refuses to send
(unmasked frames, a wrong Sec-WebSocket-Version) or to read (HTTP status
lines of refused upgrades), and asyncio glue for Debian's python3-websockets
10.4 (no sync client in that version).
"""
import asyncio
import base64
import json
import os
import socket
import struct
import unittest

import websockets
import websockets.exceptions

from tether_harness import Group


def http_get(port, target, headers=(), timeout=5):
    """One raw GET on the client port. Returns (status, headers dict, body bytes)."""
    req = "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n" % target
    req += "".join("%s: %s\r\n" % h for h in headers) + "\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(req.encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            if b"\r\n\r\n" in data and data.startswith(b"HTTP/1.1 101"):
                break
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    hdrs = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    return status, hdrs, body


def upgrade_headers(version="13"):
    key = base64.b64encode(os.urandom(16)).decode()
    return [("Upgrade", "websocket"), ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", version)]


def raw_ws(port, token, timeout=5):
    """A raw socket past a successful upgrade (the 101 head consumed)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    req = "GET /ws?token=%s HTTP/1.1\r\nHost: 127.0.0.1\r\n" % token
    req += "".join("%s: %s\r\n" % h for h in upgrade_headers()) + "\r\n"
    s.sendall(req.encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("closed during the upgrade: %r" % data)
        data += chunk
    assert data.startswith(b"HTTP/1.1 101"), data
    return s, data.partition(b"\r\n\r\n")[2]


def frame(opcode, payload=b"", mask=True):
    n = len(payload)
    b0 = 0x80 | opcode
    m = 0x80 if mask else 0
    if n < 126:
        hdr = struct.pack("!BB", b0, m | n)
    elif n < 65536:
        hdr = struct.pack("!BBH", b0, m | 126, n)
    else:
        hdr = struct.pack("!BBQ", b0, m | 127, n)
    if not mask:
        return hdr + payload
    key = os.urandom(4)
    return hdr + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def read_frames(s, buf=b"", timeout=5):
    """Read server frames until EOF; returns [(opcode, payload)]."""
    s.settimeout(timeout)
    frames = []
    while True:
        while len(buf) >= 2:
            n = buf[1] & 0x7F
            off = 2
            if n == 126:
                if len(buf) < 4:
                    break
                n, off = struct.unpack("!H", buf[2:4])[0], 4
            elif n == 127:
                if len(buf) < 10:
                    break
                n, off = struct.unpack("!Q", buf[2:10])[0], 10
            if len(buf) < off + n:
                break
            frames.append((buf[0] & 0x0F, buf[off:off + n]))
            buf = buf[off + n:]
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, socket.timeout):
            return frames
        if not chunk:
            return frames
        buf += chunk


def close_code(payload):
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None


def run(coro, timeout=30):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def connect(url, **kw):
    return await websockets.connect(url, open_timeout=5, close_timeout=5, **kw)


async def app_ping(ws):
    await ws.send(json.dumps({"type": "ping"}))
    return json.loads(await asyncio.wait_for(ws.recv(), 5))


def slots_of(group, user=None):
    conns = group.dump()["connections"]
    return [c for c in conns if user is None or c["user_id"] == user]


SANITIZER_MARKS = ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer", "runtime error:")


def stop_and_check(testcase, group):
    """Stop the group (exit 0 expected) and fail on any sanitizer report in its log."""
    rc = group.stop()
    group.__exit__(None, None, None)
    log = group.log()
    for mark in SANITIZER_MARKS:
        testcase.assertNotIn(mark, log)
    testcase.assertEqual(rc, 0, log[-2000:])


class GroupTestCase(unittest.TestCase):
    """One 2-worker group for the whole class; stopped and checked at the end."""

    @classmethod
    def setUpClass(cls):
        cls.g = Group(workers=2).__enter__()

    @classmethod
    def tearDownClass(cls):
        stop_and_check(cls(), cls.g)
