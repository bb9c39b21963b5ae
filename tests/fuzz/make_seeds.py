#!/usr/bin/python3
"""Writes the hand-made seed inputs of the regression corpus
(tests/fuzz/corpus/<target>/seed-*). Run again after changing a seed; inputs
the fuzzers found are added by `tools/fuzz --save` and kept as they are.
Each input starts with the target's selector byte(s), see fuzz_<target>.c.
"""
import base64
import hashlib
import hmac
import json
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: harness
from harness import ws  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FUZZ_SECRET = b"fuzz-secret-0123456789"  # fuzz_jwt.c
NOW = 1700000000


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=")


def token(header, claims, secret=FUZZ_SECRET):
    si = b64(json.dumps(header).encode()) + b"." + b64(json.dumps(claims).encode())
    return si + b"." + b64(hmac.new(secret, si, hashlib.sha256).digest())


def frame(op, payload=b"", fin=True, rsv=0, mask=True, length=None, key=b"\x01\x02\x03\x04"):
    """The test tree's one frame encoder, with a fixed mask key (seeds are reproducible)."""
    return ws.frame(op, payload, fin=fin, rsv=rsv, mask=mask, length=length, key=key)


UPGRADE = (b"GET /ws?token=abc.def.ghi&x=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUpgrade: websocket\r\n"
           b"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           b"Sec-WebSocket-Version: 13\r\n\r\n")


def http_seeds():
    write("http", "upgrade", b"\x06" + UPGRADE)
    write("http", "upgrade-bytewise", b"\x1e" + UPGRADE)
    write("http", "upgrade-small-max", b"\x05" + UPGRADE)
    write("http", "bearer", b"\x06GET /ws HTTP/1.1\r\nAuthorization: Bearer a.b.c\r\nHost: x\r\n\r\n")
    write("http", "healthz-1.0", b"\x00GET /healthz HTTP/1.0\r\n\r\n")
    write("http", "post-body", b"\x06POST /v1/notify HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}")
    write("http", "partial", b"\x06GET /ws HTTP/1.1\r\nHost: x\r\n")
    write("http", "bare-lf", b"\x06GET / HTTP/1.1\nHost: x\n\n")
    write("http", "obs-fold", b"\x06GET / HTTP/1.1\r\nA: b\r\n  c\r\n\r\n")
    write("http", "65-headers", b"\x06GET / HTTP/1.1\r\n" + b"".join(b"H%d: v\r\n" % i for i in range(65)) + b"\r\n")
    write("http", "value-ctl", b"\x06GET / HTTP/1.1\r\nA: b\x01c\r\n\r\n")
    write("http", "trim", b"\x06GET /?q HTTP/1.1\r\nA: \t b \t\r\nB:\r\n\r\n")
    write("http", "lone-cr", b"\x06GET / HTTP/1.1\r\nA: b\rc\r\n\r\n")


def ws_seeds():
    ping = b'{"type":"ping"}'
    write("ws", "text", b"\x06\x00" + frame(1, ping))
    write("ws", "text-bytewise", b"\xc6\x00" + frame(1, ping))
    write("ws", "fragmented-ping-between", b"\x06\x11" + frame(1, ping[:5], fin=False) + frame(9, b"hi") +
          frame(0, ping[5:10], fin=False) + frame(10, b"") + frame(0, ping[10:]))
    write("ws", "close-reason", b"\x06\x22" + frame(8, struct.pack("!H", 1000) + b"bye") + frame(1, ping))
    write("ws", "close-empty", b"\x06\x22" + frame(8))
    write("ws", "close-bad-code", b"\x06\x22" + frame(8, struct.pack("!H", 1005)))
    write("ws", "close-bad-utf8", b"\x06\x22" + frame(8, struct.pack("!H", 1000) + b"\xc0\x80"))
    write("ws", "len16", b"\x06\x33" + frame(1, b'{"type":"ping","pad":"' + b"x" * 200 + b'"}'))
    write("ws", "len64-nonminimal", b"\x07\x33" + b"\x82\xff" + struct.pack("!Q", 10) + b"\x01\x02\x03\x04" + b"\x00" * 10)
    write("ws", "len64-huge", b"\x06\x00" + frame(1, b"", length=1 << 62))
    write("ws", "len64-topbit", b"\x06\x00" + frame(1, b"", length=1 << 63))
    write("ws", "too-big", b"\x02\x44" + frame(1, b"x" * 17))
    write("ws", "rsv", b"\x06\x00" + frame(1, b"x", rsv=4))
    write("ws", "opcode3", b"\x06\x00" + frame(3, b"x"))
    write("ws", "unmasked", b"\x06\x00" + frame(1, b"x", mask=False))
    write("ws", "bad-utf8-early", b"\x06\x00" + frame(1, b"ok\xed\xa0\x80", fin=False) + frame(0, b"rest"))
    write("ws", "utf8-split", b"\x06\x55" + frame(1, "é€".encode()[:2], fin=False) + frame(0, "é€".encode()[2:]))
    write("ws", "truncated-at-end", b"\x06\x00" + frame(1, b"ok\xe2\x82"))
    write("ws", "cont-nothing", b"\x06\x00" + frame(0, b"x"))
    write("ws", "text-in-text", b"\x06\x00" + frame(1, b"a", fin=False) + frame(1, b"b"))
    write("ws", "ping-fragmented", b"\x06\x00" + frame(9, b"a", fin=False))
    write("ws", "ping-126", b"\x06\x00" + frame(9, b"p" * 126))
    write("ws", "stop-after-2", b"\x16\x00" + frame(9, b"a") + frame(10, b"b") + frame(1, ping))
    write("ws", "many-fragments", b"\x06\x00" + frame(1, b"{", fin=False) + frame(0, b"", fin=False) * 1100)


def utf8_seeds():
    write("utf8", "ascii", b"\x01" + b'{"type":"ping"}')
    write("utf8", "mixed", b"\x02" + "κόσμε € 𝄞 \u007f\u0080\u07ff\u0800\ud7ff\ue000\uffff\U00010000\U0010ffff".encode())
    for i, bad in enumerate([b"\xc0\x80", b"\xe0\x9f\xbf", b"\xf0\x8f\xbf\xbf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
                             b"\xf5", b"\xff", b"\x80", b"\xe2\x82A", b"\xf0\x9f\x98"]):
        write("utf8", "bad-%d" % i, bytes([i * 37 & 0xff]) + b"abc" + bad + b"xyz")


def jwt_seeds():
    good = {"alg": "HS256", "typ": "JWT"}
    write("jwt", "valid", b"\x00" + token(good, {"sub": "u1", "exp": NOW + 3600}))
    write("jwt", "valid-nbf", b"\x00" + token(good, {"sub": "user-2", "nbf": NOW - 5, "iat": NOW}))
    write("jwt", "expired", b"\x00" + token(good, {"sub": "u1", "exp": NOW - 1}))
    write("jwt", "alg-none", b"\x00" + token({"alg": "none"}, {"sub": "u1"})[:-43])
    write("jwt", "two-parts", b"\x00abc.def")
    write("jwt", "signed-claims", b"\x01" + b'{"alg":"HS256"}\x00{"sub":"u1","exp":1700003600,"nbf":1600000000}')
    write("jwt", "signed-claims-only", b"\x01" + b'{"sub":"u1"}')
    write("jwt", "signed-dup", b"\x01" + b'{"alg":"HS256","alg":"none"}\x00{"sub":"u1","sub":"u2"}')
    write("jwt", "signed-crit", b"\x01" + b'{"alg":"HS256","crit":["x"]}\x00{"sub":"u1"}')
    write("jwt", "signed-float-exp", b"\x01" + b'{"alg":"HS256"}\x00{"sub":"u1","exp":1e300,"nbf":-1e300}')
    write("jwt", "signed-sub-ctl", b"\x01" + b'{"alg":"HS256"}\x00{"sub":"a\\u007fb"}')
    write("jwt", "sign-sub", b"\x02user-1")
    write("jwt", "sign-sub-expired", b"\x0e" + b"u" * 64)


def notifier_seeds():
    body = json.dumps({"user_id": "u1", "type": "meal_log.completed", "data": {"k": [1, 2.5, None]},
                       "id": "n-1"}).encode()
    post = b"POST /v1/notify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    write("notifier", "notify", b"\x00" + post + body)
    write("notifier", "pipeline", b"\x02" + post + body + b"GET /v1/presence/u%31 HTTP/1.1\r\n\r\n" +
          b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\nGET /healthz HTTP/1.0\r\n\r\n")
    write("notifier", "batch", b"\x04POST /v1/notify/batch HTTP/1.1\r\nContent-Length: 2\r\n\r\n[]")
    write("notifier", "te", b"\x00POST /v1/notify HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    write("notifier", "cl-conflict", b"\x00POST /v1/notify HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}")
    write("notifier", "too-large", b"\x00POST /v1/notify HTTP/1.1\r\nContent-Length: 9999999\r\n\r\n")
    write("notifier", "405", b"\x00GET /v1/notify HTTP/1.1\r\n\r\n")
    write("notifier", "body", b"\x01" + body)
    write("notifier", "body-no-id", b"\x01" + b'{"user_id":"u\\u0001","type":"t"}')
    write("notifier", "body-null-data", b"\x01" + b'{"user_id":"u","type":"t","data":null,"id":null}')
    write("notifier", "body-bad", b"\x01" + b'{"user_id":"u","type":"t","data":')


if __name__ == "__main__":
    http_seeds()
    ws_seeds()
    utf8_seeds()
    jwt_seeds()
    notifier_seeds()
