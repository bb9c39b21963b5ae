"""The one raw WebSocket frame encoder and raw-socket RFC 6455 client of the
test tree (harness.ws).

WebSocket libraries refuse to send bad frames (reserved bits, unmasked
frames, fragmented pings, invalid close codes), so this client builds every
byte itself: the upgrade request with its Sec-WebSocket-Key, masked (or
deliberately unmasked) frames with any header bits, writes whole or in chops,
and reads the server's frames back to extract pongs and close codes.
tether does not echo data messages, so tests observe the server through what
it sends back: the close code, an app-level {"type":"pong"} to a
{"type":"ping"} message, and protocol pongs echoing a ping's payload.
"""
import base64
import hashlib
import json
import os
import socket
import struct
import time

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class Closed(Exception):
    """The server closed the TCP connection."""


def mask_bytes(data, key):
    """XOR data with the 4-byte key, fast for large payloads."""
    n = len(data)
    if n == 0:
        return b""
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(k, "little")).to_bytes(n, "little")


def frame(opcode, payload=b"", fin=True, rsv=0, mask=True, length=None, key=None):
    """One client frame. length overrides the declared payload length."""
    if isinstance(payload, str):
        payload = payload.encode()
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | ((rsv & 7) << 4) | (opcode & 0xF)
    mbit = 0x80 if mask else 0
    if n < 126:
        hdr = struct.pack("!BB", b0, mbit | n)
    elif n < 65536:
        hdr = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        hdr = struct.pack("!BBQ", b0, mbit | 127, n)
    if not mask:
        return hdr + payload
    key = key if key is not None else os.urandom(4)
    return hdr + key + mask_bytes(payload, key)


def close_payload(code, reason=b""):
    if isinstance(reason, str):
        reason = reason.encode()
    return struct.pack("!H", code) + reason


def ping_message(size):
    """A valid app-level {"type":"ping"} text message of exactly size bytes (>= 15)."""
    base = b'{"type":"ping"}'
    if size < len(base):
        raise ValueError("a ping message needs at least %d bytes" % len(base))
    if size < 24:  # pad with JSON whitespace
        return b'{"type":"ping"' + b" " * (size - len(base)) + b"}"
    return b'{"type":"ping","pad":"' + b"x" * (size - 24) + b'"}'


def handshake_request(port, path="/ws", token=None, key=None, extra_headers=(), auth_header=False):
    key = key or base64.b64encode(os.urandom(16)).decode()
    target = path
    hdrs = [("Host", "127.0.0.1:%d" % port), ("Upgrade", "websocket"), ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", "13")]
    if token is not None:
        if auth_header:
            hdrs.append(("Authorization", "Bearer " + token))
        else:
            target = path + "?token=" + token
    hdrs.extend(extra_headers)
    lines = ["GET %s HTTP/1.1" % target] + ["%s: %s" % h for h in hdrs]
    return ("\r\n".join(lines) + "\r\n\r\n").encode(), key


def accept_for(key):
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def http_exchange(port, raw, timeout=10, chop=None):
    """Send a raw request head; return (status, headers dict, body bytes so far)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        try:
            s.sendall(raw)
        except OSError:
            pass  # the server may answer (431) and close before reading it all
        buf = b""
        while b"\r\n\r\n" not in buf:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            buf += chunk
        return parse_response_head(buf)
    finally:
        s.close()


def parse_response_head(buf):
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode(errors="replace").split("\r\n")
    parts = lines[0].split(" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
    hdrs = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        hdrs[name.strip().lower()] = value.strip()
    return status, hdrs, rest


class WS:
    """One raw WebSocket connection to a tether worker."""

    def __init__(self, port, token, timeout=5.0, rcvbuf=None, auth_header=False, wrap=None):
        """wrap: a function from the connected socket to the one to speak on
        (e.g. an ssl.SSLContext's wrap_socket, for wss://)."""
        self.port = port
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if wrap:
            self.sock = wrap(self.sock)
        self.buf = b""
        self.handshake(token, auth_header)

    def handshake(self, token, auth_header):
        req, key = handshake_request(self.port, token=token, auth_header=auth_header)
        self.sock.sendall(req)
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise Closed("closed during handshake: %r" % self.buf)
            self.buf += chunk
        head_len = self.buf.index(b"\r\n\r\n") + 4
        status, hdrs, _ = parse_response_head(self.buf[:head_len])
        self.buf = self.buf[head_len:]
        if status != 101:
            raise AssertionError("handshake answered %s: %r" % (status, hdrs))
        if hdrs.get("sec-websocket-accept") != accept_for(key):
            raise AssertionError("bad Sec-WebSocket-Accept %r" % hdrs.get("sec-websocket-accept"))

    # -- sending -------------------------------------------------------------
    def send_raw(self, data, chop=None, delay=0.0):
        """Write data whole, or in chops of chop bytes with delay between them.
        Returns False if the server closed the connection before all was sent."""
        try:
            if not chop:
                self.sock.sendall(data)
                return True
            for i in range(0, len(data), chop):
                self.sock.sendall(data[i:i + chop])
                if delay:
                    time.sleep(delay)
            return True
        except (BrokenPipeError, ConnectionResetError):
            return False

    def send(self, opcode, payload=b"", **kw):
        chop = kw.pop("chop", None)
        delay = kw.pop("delay", 0.0)
        return self.send_raw(frame(opcode, payload, **kw), chop, delay)

    def send_text(self, payload, **kw):
        return self.send(TEXT, payload, **kw)

    def send_close(self, code=None, reason=b""):
        return self.send(CLOSE, b"" if code is None else close_payload(code, reason))

    # -- receiving -----------------------------------------------------------
    def _fill(self, need, deadline):
        while len(self.buf) < need:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("timed out waiting for server data")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise Closed("server closed the TCP connection")
            self.buf += chunk

    def recv_frame(self, timeout=None):
        """Next server frame as (fin, rsv, opcode, payload). Raises Closed or socket.timeout."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        self._fill(2, deadline)
        b0, b1 = self.buf[0], self.buf[1]
        if b1 & 0x80:
            raise AssertionError("server sent a masked frame")
        n, off = b1 & 0x7F, 2
        if n == 126:
            self._fill(4, deadline)
            n, off = struct.unpack("!H", self.buf[2:4])[0], 4
        elif n == 127:
            self._fill(10, deadline)
            n, off = struct.unpack("!Q", self.buf[2:10])[0], 10
        self._fill(off + n, deadline)
        payload = self.buf[off:off + n]
        self.buf = self.buf[off + n:]
        return bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0xF, payload

    def expect_close(self, timeout=None, reply=True):
        """Read until the server's close frame; return (code or None, reason, frames before it).
        code None means an empty close payload; raises Closed if TCP ended first."""
        before = []
        while True:
            fin, rsv, op, payload = self.recv_frame(timeout)
            if op == CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                if reply:
                    try:
                        self.sock.sendall(frame(CLOSE, payload[:2]))
                    except OSError:
                        pass
                return code, payload[2:], before
            before.append((op, payload))

    def expect_eof(self, timeout=3.0):
        """After the close handshake the server must close the TCP connection."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._fill(len(self.buf) + 1, deadline)
            except Closed:
                return True
            except socket.timeout:
                return False

    def expect_pong(self, payload, timeout=None):
        """Next protocol pong must echo payload; app frames in between are skipped."""
        while True:
            fin, rsv, op, got = self.recv_frame(timeout)
            if op == PONG:
                return got == payload, got
            if op == CLOSE:
                code = struct.unpack("!H", got[:2])[0] if len(got) >= 2 else None
                raise AssertionError("closed with %s waiting for a pong" % code)

    def app_ping(self, timeout=None):
        """Send {"type":"ping"} and wait for the app-level pong. Returns the pong object;
        raises AssertionError if the server closes instead."""
        self.send_text(b'{"type":"ping"}')
        return self.expect_app_pong(timeout)

    def expect_app_pong(self, timeout=None):
        while True:
            fin, rsv, op, payload = self.recv_frame(timeout)
            if op == TEXT:
                msg = json.loads(payload)
                if msg.get("type") == "pong":
                    return msg
            elif op == CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                raise AssertionError("closed with %s instead of answering a ping" % code)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# -- short helpers for one-shot raw exchanges (the worker integration tests) ---

def upgrade_headers(version="13"):
    key = base64.b64encode(os.urandom(16)).decode()
    return [("Upgrade", "websocket"), ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", version)]


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
    status, hdrs, body = parse_response_head(data)
    return status, hdrs, body


def raw_ws(port, token, timeout=5):
    """A raw socket past a successful upgrade: (socket, bytes read past the 101 head)."""
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


def parse_frame(buf):
    """Split one server frame off buf: ((opcode, payload), rest), or (None, buf)
    while the frame is incomplete."""
    if len(buf) < 2:
        return None, buf
    n, off = buf[1] & 0x7F, 2
    if n == 126:
        if len(buf) < 4:
            return None, buf
        n, off = struct.unpack("!H", buf[2:4])[0], 4
    elif n == 127:
        if len(buf) < 10:
            return None, buf
        n, off = struct.unpack("!Q", buf[2:10])[0], 10
    if len(buf) < off + n:
        return None, buf
    return (buf[0] & 0x0F, buf[off:off + n]), buf[off + n:]


def read_frames(s, buf=b"", timeout=5):
    """Read server frames until the server closes TCP; returns [(opcode, payload)].
    A server that has not closed TCP within timeout fails (AssertionError): a
    timeout is not an end of stream. A reset counts as closed."""
    s.settimeout(timeout)
    frames = []
    while True:
        while True:
            f, buf = parse_frame(buf)
            if f is None:
                break
            frames.append(f)
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return frames
        except socket.timeout:
            raise AssertionError("the server did not close the TCP connection within %ss "
                                 "(frames so far: %r)" % (timeout, frames))
        if not chunk:
            return frames
        buf += chunk


def close_code(payload):
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
