"""Connect/disconnect churn: many short-lived connections ended every way a
client can end one (clean close handshake, plain TCP close, reset, mid-frame,
mid-handshake, refused token) must leave no registry slot taken, and the group
must stop cleanly with no sanitizer report in its log. tools/test runs this in
the ASan+UBSan build too (TETHER_SANITIZED=1) with the same 10,000 cycles
(TETHER_CYCLES overrides the count; the count used is printed).
"""
import os
import socket
import struct
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: harness
from harness import ws as rawws  # noqa: E402
from harness.ws import CLOSE, PING, TEXT, frame  # noqa: E402
import harness as th  # noqa: E402

CYCLES = int(os.environ.get("TETHER_CYCLES", 10000))
THREADS = 4  # concurrent churn, so slot reclaim races with new connections
T = 10.0 if th.SANITIZED else 5.0


def clean_close(g, i):
    ws = rawws.WS(g.port, g.token("cyc-%d" % (i % 50)), timeout=T)
    ws.send_close(1000)
    code, _, _ = ws.expect_close(T, reply=False)
    assert code == 1000, code
    ws.close()


def tcp_close(g, i):
    ws = rawws.WS(g.port, g.token("cyc-%d" % (i % 50)), timeout=T)
    ws.close()


def reset(g, i):
    ws = rawws.WS(g.port, g.token("cyc-%d" % (i % 50)), timeout=T)
    ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.close()


def mid_frame(g, i):
    ws = rawws.WS(g.port, g.token("cyc-%d" % (i % 50)), timeout=T)
    ws.send_raw(frame(TEXT, b'{"type":"ping","pad":"' + b"x" * 3000, fin=False)[:1500])
    ws.close()


def after_ping(g, i):
    ws = rawws.WS(g.port, g.token("cyc-%d" % (i % 50)), timeout=T)
    ws.send(PING, b"x")
    ws.expect_pong(b"x")
    ws.send_raw(frame(CLOSE, b""))
    ws.close()


def mid_handshake(g, i):
    req, _ = rawws.handshake_request(g.port, token=g.token("cyc-hs"))
    s = socket.create_connection(("127.0.0.1", g.port), timeout=T)
    s.sendall(req[:len(req) // 2])
    s.close()


def bad_token(g, i):
    req, _ = rawws.handshake_request(g.port, token="not.a.token")
    status, _, _ = rawws.http_exchange(g.port, req, timeout=T)
    assert status == 401, status


STYLES = [clean_close, tcp_close, reset, mid_frame, after_ping, mid_handshake, bad_token, clean_close]


class Cycles(unittest.TestCase):
    def test_connect_disconnect_cycles_leave_no_slot_and_no_sanitizer_report(self):
        g = th.Group(workers=2, slots=512, extra_args=["--log-level", "info"])
        with g:
            t0 = time.monotonic()
            errors = []

            def churn(first):
                try:
                    for i in range(first, CYCLES, THREADS):
                        STYLES[i % len(STYLES)](g, i)
                except Exception as e:  # reported below, with the cycle's style
                    errors.append("cycle %d (%s): %r" % (i, STYLES[i % len(STYLES)].__name__, e))

            threads = [threading.Thread(target=churn, args=(k,)) for k in range(THREADS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            took = time.monotonic() - t0
            print("cycles: %d connect/disconnect cycles from %d threads in %.1fs (sanitized=%s)"
                  % (CYCLES, THREADS, took, th.SANITIZED), file=sys.stderr)
            self.assertEqual(errors, [])
            used = th.wait_until(lambda: g.dump()["slots_used"] == 0, 2 * T)
            self.assertTrue(used, "slots still taken: %r" % g.dump())
            alive = rawws.WS(g.port, g.token("after"), timeout=T)
            alive.app_ping()
            alive.close()
            status = g.stop()
        self.assertEqual(status, 0, "tether run exited %s" % status)


if __name__ == "__main__":
    unittest.main(verbosity=1)
