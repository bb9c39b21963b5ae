"""Abuse of tether's client port before the upgrade: slow and idle heads,
oversized or too many headers, malformed JWTs of every shape, and requests
that are not WebSocket upgrades. Each must be refused cheaply (401, 431, 4xx
or a timeout close) and none may take a registry slot.
"""
import base64
import hashlib
import hmac
import json
import os
import select
import socket
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: harness
from harness import ws as rawws  # noqa: E402
import harness as th  # noqa: E402

HANDSHAKE_TIMEOUT = 10.0
CROWD = 1000  # concurrent half-sent heads
MARGIN = 8.0 if th.SANITIZED else 4.0
SECRET = "abuse-secret-9876543210"
GROUP = None


def setUpModule():
    global GROUP
    GROUP = th.Group(workers=2, slots=256, secret=SECRET, extra_args=["--log-level", "info"])
    GROUP.__enter__()


def tearDownModule():
    if GROUP is not None:
        GROUP.finish()


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def raw_token(header, claims, secret=None, digest=hashlib.sha256, sig=None):
    """A token from raw header/claims bytes (or objects), signed unless sig is given."""
    enc = lambda v: v if isinstance(v, bytes) else json.dumps(v).encode()  # noqa: E731
    signing_input = b64(enc(header)) + "." + b64(enc(claims))
    if sig is None:
        key = (secret or SECRET).encode()
        sig = b64(hmac.new(key, signing_input.encode(), digest).digest())
    return signing_input + "." + sig


def claims(sub="jwt-user", **kw):
    c = {"sub": sub, "exp": int(time.time()) + 3600}
    c.update(kw)
    return {k: v for k, v in c.items() if v is not DROP}


DROP = object()
HS256 = {"alg": "HS256", "typ": "JWT"}


def bad_tokens():
    """(name, token) for every malformed shape; each must get 401."""
    now = int(time.time())
    good = raw_token(HS256, claims())
    h, p, s = good.split(".")
    flip = s[:-2] + ("A" if s[-2] != "A" else "B") + s[-1]
    return [
        ("empty", ""), ("one_part", "abc"), ("two_parts", h + "." + p), ("four_parts", good + ".x"),
        ("empty_parts", ".."), ("empty_signature", h + "." + p + "."),
        ("bad_base64_header", "!!!." + p + "." + s), ("bad_base64_claims", h + ".%%%." + s),
        ("bad_base64_signature", h + "." + p + ".***"),
        ("padded_garbage", h + "====." + p + "." + s),
        ("header_not_json", raw_token(b"not json", claims())),
        ("claims_not_json", raw_token(HS256, b"{sub: x}")),
        ("header_array", raw_token(b'["HS256"]', claims())),
        ("claims_array", raw_token(HS256, b'["sub"]')),
        ("claims_string", raw_token(HS256, b'"sub"')),
        ("claims_truncated_json", raw_token(HS256, b'{"sub":"u1"')),
        ("alg_none_unsigned", raw_token({"alg": "none"}, claims(), sig="")),
        ("alg_none_signed", raw_token({"alg": "none"}, claims())),
        ("alg_None_case", raw_token({"alg": "None"}, claims(), sig="")),
        ("alg_HS384", raw_token({"alg": "HS384"}, claims(), digest=hashlib.sha384)),
        ("alg_HS512", raw_token({"alg": "HS512"}, claims(), digest=hashlib.sha512)),
        ("alg_RS256", raw_token({"alg": "RS256"}, claims())),
        ("alg_lowercase_hs256", raw_token({"alg": "hs256"}, claims())),
        ("alg_missing", raw_token({"typ": "JWT"}, claims())),
        ("alg_number", raw_token({"alg": 256}, claims())),
        ("bad_signature_flipped", h + "." + p + "." + flip),
        ("bad_signature_other_secret", raw_token(HS256, claims(), secret="another-secret")),
        ("bad_signature_truncated", h + "." + p + "." + s[:-4]),
        ("bad_signature_claims_swapped", h + "." + b64(json.dumps(claims("someone-else")).encode()) + "." + s),
        ("expired", raw_token(HS256, claims(exp=now - 10))),
        ("expired_long_ago", raw_token(HS256, claims(exp=1))),
        ("exp_not_number", raw_token(HS256, claims(exp=str(now + 3600)))),
        ("exp_null", raw_token(HS256, claims(exp=None))),
        ("nbf_future", raw_token(HS256, claims(nbf=now + 3600))),
        ("nbf_not_number", raw_token(HS256, claims(nbf="0"))),
        ("sub_missing", raw_token(HS256, claims(sub=DROP))),
        ("sub_empty", raw_token(HS256, claims(sub=""))),
        ("sub_65_bytes", raw_token(HS256, claims(sub="u" * 65))),
        ("sub_65_bytes_utf8", raw_token(HS256, claims(sub="é" * 32 + "x"))),
        ("sub_newline", raw_token(HS256, claims(sub="evil\nuser"))),
        ("sub_nul", raw_token(HS256, claims(sub="evil\u0000user"))),
        ("sub_escape", raw_token(HS256, claims(sub="\u001b[31mred"))),
        ("sub_del", raw_token(HS256, claims(sub="del\u007f"))),
        ("sub_number", raw_token(HS256, claims(sub=12345))),
        ("sub_null", raw_token(HS256, claims(sub=None))),
        ("sub_object", raw_token(HS256, claims(sub={"id": "u1"}))),
        ("huge_token", raw_token(HS256, claims(pad="x" * 6000))[:7000]),
    ]


def good_tokens():
    """Positive controls for the boundaries above: these must be accepted."""
    now = int(time.time())
    return [
        ("sub_64_bytes", raw_token(HS256, claims(sub="u" * 64))),
        ("sub_1_byte", raw_token(HS256, claims(sub="u"))),
        ("no_exp", raw_token(HS256, claims(exp=DROP))),
        ("nbf_past", raw_token(HS256, claims(nbf=now - 60))),
        ("extra_header_fields", raw_token({"alg": "HS256", "typ": "JWT", "kid": "k1"}, claims())),
    ]


class JWT(unittest.TestCase):
    def status_for(self, token, auth_header=False):
        req, _ = rawws.handshake_request(GROUP.port, token=token, auth_header=auth_header)
        status, _, _ = rawws.http_exchange(GROUP.port, req)
        return status

    def test_no_token_401(self):
        req, _ = rawws.handshake_request(GROUP.port)
        self.assertEqual(rawws.http_exchange(GROUP.port, req)[0], 401)

    def test_authorization_not_bearer_401(self):
        req, _ = rawws.handshake_request(GROUP.port, extra_headers=[
            ("Authorization", "Basic " + base64.b64encode(b"u:p").decode())])
        self.assertEqual(rawws.http_exchange(GROUP.port, req)[0], 401)

    def test_no_slot_after_refusals(self):
        for name, tok in bad_tokens():
            self.status_for(tok)
        self.assertEqual(th.wait_until(lambda: GROUP.dump()["slots_used"] == 0, 5), True)


def add_jwt_case(name, token, want, auth_header):
    def run(self):
        self.assertEqual(self.status_for(token, auth_header), want, "token %r" % token[:120])
    setattr(JWT, "test_%s_%s_%d" % ("header" if auth_header else "query", name, want), run)


for _name, _tok in bad_tokens():
    add_jwt_case(_name, _tok, 401, False)
    add_jwt_case(_name, _tok, 401, True)
for _name, _tok in good_tokens():
    add_jwt_case(_name, _tok, 101, False)


class Headers(unittest.TestCase):
    def head(self, extra, target_pad=0):
        tok = GROUP.token("hdr-user")
        req, _ = rawws.handshake_request(GROUP.port, token=tok + ("&p=" + "x" * target_pad if target_pad else ""),
                                         extra_headers=extra)
        return req

    def padded_to(self, total):
        """A valid upgrade head of exactly total bytes (one X-Pad header absorbs the rest)."""
        base = len(self.head([("X-Pad", "")]))
        return self.head([("X-Pad", "p" * (total - base))])

    def test_head_over_8k_one_header_431(self):
        self.assertEqual(rawws.http_exchange(GROUP.port, self.head([("X-Big", "b" * 9000)]))[0], 431)

    def test_head_8193_bytes_431(self):
        req = self.padded_to(8193)
        self.assertEqual(len(req), 8193)
        self.assertEqual(rawws.http_exchange(GROUP.port, req)[0], 431)

    def test_head_8192_bytes_accepted(self):
        req = self.padded_to(8192)
        self.assertEqual(len(req), 8192)
        self.assertEqual(rawws.http_exchange(GROUP.port, req)[0], 101)

    def test_head_64k_431(self):
        self.assertEqual(rawws.http_exchange(GROUP.port, self.head([("X-Big", "b" * 65536)]))[0], 431)

    def test_long_request_line_431(self):
        self.assertEqual(rawws.http_exchange(GROUP.port, self.head([], target_pad=9000))[0], 431)

    def test_65_headers_431(self):
        n = 65 - 6  # the upgrade request itself has 5 headers (+1 counted below)
        extra = [("X-H%d" % i, "v") for i in range(n + 1)]
        req = self.head(extra)
        self.assertEqual(req.count(b"\r\n") - 2, 65)
        self.assertEqual(rawws.http_exchange(GROUP.port, req)[0], 431)

    def test_64_headers_accepted(self):
        extra = [("X-H%d" % i, "v") for i in range(64 - 5)]
        req = self.head(extra)
        self.assertEqual(req.count(b"\r\n") - 2, 64)
        self.assertEqual(rawws.http_exchange(GROUP.port, req)[0], 101)

    def test_1000_tiny_headers_431(self):
        self.assertEqual(rawws.http_exchange(GROUP.port, self.head([("a", "")] * 1000))[0], 431)

    def test_no_slot_after_refusals(self):
        rawws.http_exchange(GROUP.port, self.head([("X-Big", "b" * 9000)]))
        self.assertEqual(th.wait_until(lambda: GROUP.dump()["slots_used"] == 0, 5), True)


class NotUpgrades(unittest.TestCase):
    """Requests that are not valid upgrades: refused with 4xx, no slot."""

    def refused(self, raw):
        status, _, _ = rawws.http_exchange(GROUP.port, raw)
        self.assertIsNotNone(status, "no HTTP answer")
        self.assertGreaterEqual(status, 400)
        self.assertLess(status, 500)

    def upgrade(self, drop=(), add=(), method="GET", path="/ws"):
        tok = GROUP.token("nu-user")
        hdrs = [("Host", "x"), ("Upgrade", "websocket"), ("Connection", "Upgrade"),
                ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "13")]
        hdrs = [h for h in hdrs if h[0] not in drop] + list(add)
        lines = ["%s %s?token=%s HTTP/1.1" % (method, path, tok)] + ["%s: %s" % h for h in hdrs]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def test_missing_key(self):
        self.refused(self.upgrade(drop=("Sec-WebSocket-Key",)))

    def test_missing_upgrade(self):
        self.refused(self.upgrade(drop=("Upgrade",)))

    def test_version_8(self):
        self.refused(self.upgrade(drop=("Sec-WebSocket-Version",), add=(("Sec-WebSocket-Version", "8"),)))

    def test_post(self):
        self.refused(self.upgrade(method="POST"))

    def test_unknown_path(self):
        self.refused(self.upgrade(path="/nope"))

    def test_garbage_request_line(self):
        self.refused(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 TLS hello\r\n\r\n")

    def test_http_0_9(self):
        status, _, _ = rawws.http_exchange(GROUP.port, b"GET /ws\r\n\r\n")
        self.assertTrue(status is None or 400 <= status < 500, status)

    def test_no_slot_taken(self):
        self.refused(self.upgrade(drop=("Sec-WebSocket-Key",)))
        self.assertEqual(th.wait_until(lambda: GROUP.dump()["slots_used"] == 0, 5), True)


class BackendApiAbuse(unittest.TestCase):
    """The backend API refuses bad requests with a status and a body that is
    valid JSON (UTF-8), whatever bytes the request carried."""

    def raw(self, data):
        s = socket.create_connection(("127.0.0.1", GROUP.api_port), timeout=10)
        try:
            try:
                s.sendall(data)
            except OSError:
                pass
            buf = b""
            while True:
                try:
                    chunk = s.recv(65536)
                except (ConnectionResetError, socket.timeout):
                    break
                if not chunk:
                    break
                buf += chunk
                head, sep, body = buf.partition(b"\r\n\r\n")
                if sep:
                    status, hdrs, _ = rawws.parse_response_head(head + sep)
                    n = int(hdrs.get("content-length", "-1"))
                    if 0 <= n <= len(body):
                        return status, body[:n]
            status, hdrs, body = rawws.parse_response_head(buf)
            return status, body
        finally:
            s.close()

    def post(self, body, path="/v1/notify", extra=b""):
        return self.raw(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n%s"
                        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % (path.encode(), extra, len(body)) + body)

    def assertJsonError(self, status, body, want):
        self.assertEqual(status, want, body[:200])
        try:
            obj = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            self.fail("%d reply body is not valid UTF-8 JSON (%s): %r" % (status, e, body[:200]))
        self.assertIn("error", obj)


BAD_BODIES = {
    "not_json": b"hello", "truncated": b'{"user_id":"u1","type":', "array": b"[1,2]", "empty": b"",
    "no_user": b'{"type":"t"}', "no_type": b'{"user_id":"u1"}', "user_number": b'{"user_id":1,"type":"t"}',
    "user_65": b'{"user_id":"' + b"u" * 65 + b'","type":"t"}', "user_ctl": b'{"user_id":"a\\u0001","type":"t"}',
    "invalid_utf8": b'{"user_id":"\xff\xfe","type":"t"}',
    "bad_escape_before_2byte_char": b'{"\\\xc3\xa9":1}',
    "bad_escape_before_3byte_char": b'{"user_id":"u\\\xe2\x82\xac","type":"t"}',
    "nul_byte": b'{"user_id":"u\x001","type":"t"}', "deep_nesting": b"[" * 5000,
}


def add_api_case(name, body):
    def run(self):
        status, reply = self.post(body)
        self.assertJsonError(status, reply, 400)
    setattr(BackendApiAbuse, "test_notify_body_%s_400" % name, run)


for _name, _body in BAD_BODIES.items():
    add_api_case(_name, _body)


def _api_extra_cases():
    def too_large(self):
        status, reply = self.raw(b"POST /v1/notify HTTP/1.1\r\nHost: x\r\nContent-Length: 70000\r\n\r\n")
        self.assertEqual(status, 413, reply)

    def chunked(self):
        status, reply = self.raw(b"POST /v1/notify HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        self.assertEqual(status, 411, reply)

    def huge_head(self):
        status, reply = self.raw(b"GET /healthz HTTP/1.1\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n")
        self.assertEqual(status, 431, reply)

    def conflicting_lengths(self):
        status, reply = self.raw(b"POST /v1/notify HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}")
        self.assertEqual(status, 400, reply)

    def garbage(self):
        status, reply = self.raw(b"\x00\x01\x02 garbage\r\n\r\n")
        self.assertEqual(status, 400, reply)

    def presence_invalid_utf8_user(self):
        """A percent-encoded user id that is not UTF-8 must not put raw bytes in the JSON reply."""
        status, reply = self.raw(b"GET /v1/presence/%ff%fe HTTP/1.1\r\nConnection: close\r\n\r\n")
        self.assertIn(status, (200, 400, 404), reply)
        try:
            json.loads(reply.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            self.fail("presence reply is not valid UTF-8 JSON (%s): %r" % (e, reply[:200]))

    for fn in (too_large, chunked, huge_head, conflicting_lengths, garbage, presence_invalid_utf8_user):
        setattr(BackendApiAbuse, "test_api_" + fn.__name__, fn)


_api_extra_cases()


def slow_client(payload, interval, result, key, limit):
    """Send payload a byte every interval seconds; record when the server closed."""
    s = socket.create_connection(("127.0.0.1", GROUP.port))
    t0 = time.monotonic()
    try:
        i = 0
        while time.monotonic() - t0 < limit:
            if payload and i < len(payload):
                try:
                    s.sendall(payload[i:i + 1])
                except OSError:
                    break
                i += 1
            p = select.poll()
            p.register(s, select.POLLIN)
            if p.poll(interval * 1000):
                try:
                    if not s.recv(4096):
                        break
                except ConnectionResetError:
                    break
        result[key] = time.monotonic() - t0
    finally:
        s.close()


class Slowloris(unittest.TestCase):
    def test_slow_and_idle_heads_closed_within_handshake_timeout(self):
        tok = GROUP.token("slow-user")
        head, _ = rawws.handshake_request(GROUP.port, token=tok)
        limit = HANDSHAKE_TIMEOUT + MARGIN + 5
        cases = {"byte_every_2s": (head, 2.0), "byte_every_0.5s": (head, 0.5),
                 "idle": (b"", 1.0), "head_without_final_crlf": (head[:-2], 0.001)}
        result, threads = {}, []
        t0 = time.monotonic()
        crowd = []  # many half-sent heads at once: the worker must keep serving others
        for i in range(CROWD):
            c = socket.create_connection(("127.0.0.1", GROUP.port))
            c.sendall(head[:20 + i % 100])
            crowd.append(c)
        for key, (payload, interval) in cases.items():
            t = threading.Thread(target=slow_client, args=(payload, interval, result, key, limit))
            t.start()
            threads.append(t)
        ws = rawws.WS(GROUP.port, GROUP.token("not-slow"), timeout=10)
        ws.app_ping()  # served while the crowd is pending
        open_at = self.crowd_closed_by(crowd, t0, limit)
        ws.app_ping()  # a live WebSocket is not subject to the handshake timeout
        ws.close()
        for t in threads:
            t.join()
        print("slowloris: closed after %s; %d half-sent heads all closed by %.1fs"
              % (", ".join("%s %.1fs" % kv for kv in sorted(result.items())), CROWD, open_at), file=sys.stderr)
        for key in cases:
            self.assertLessEqual(result[key], HANDSHAKE_TIMEOUT + MARGIN,
                                 "%s still open after %.1fs" % (key, result[key]))
        self.assertLessEqual(open_at, HANDSHAKE_TIMEOUT + MARGIN,
                             "%d half-sent heads: the last closed after %.1fs" % (CROWD, open_at))
        self.assertEqual(th.wait_until(lambda: GROUP.dump()["slots_used"] == 0, 5), True)

    def crowd_closed_by(self, socks, t0, limit):
        """Wait until every socket sees EOF; return when the last one did (seconds since t0)."""
        pending, last = {s.fileno(): s for s in socks}, 0.0
        poller = select.poll()
        for fd in pending:
            poller.register(fd, select.POLLIN)
        while pending and time.monotonic() - t0 < limit:
            for fd, _ in poller.poll(500):
                s = pending[fd]
                try:
                    data = s.recv(4096)
                except ConnectionResetError:
                    data = b""
                if not data:
                    poller.unregister(fd)
                    del pending[fd]
                    s.close()
                    last = time.monotonic() - t0
        for s in pending.values():
            s.close()
        return last if not pending else float("inf")


if __name__ == "__main__":
    unittest.main(verbosity=1)
