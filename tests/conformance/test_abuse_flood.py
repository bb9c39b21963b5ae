"""Abuse of an open connection: a client that never reads while notifications
flood it must be closed once its unsent data passes --send-queue-cap, and a
client sending 100,000 tiny fragments must be cut off rather than buffered
forever. In both cases the worker's memory must stay bounded (VmHWM of the
worker process from /proc, the worker found through tether-dump --json) and
the worker must keep serving its other clients.
"""
import http.client
import json
import os
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: harness
from harness import ws as rawws  # noqa: E402
from harness.ws import CONT, TEXT, frame  # noqa: E402
import harness as th  # noqa: E402

SEND_QUEUE_CAP = 65536
MAX_MESSAGE = 1 << 20  # large, so the fragment cap (not the size limit) must act
RSS_BOUND_KB = (96 if th.SANITIZED else 24) * 1024
T = 10.0 if th.SANITIZED else 5.0
GROUP = None


def setUpModule():
    global GROUP
    GROUP = th.Group(workers=1, slots=64, extra_args=[
        "--send-queue-cap", str(SEND_QUEUE_CAP), "--max-message", str(MAX_MESSAGE), "--log-level", "info",
        # these floods test the frame and queue limits, not the per-connection rate limit
        "--max-msgs-per-sec", "0", "--max-bytes-per-sec", "0"])
    GROUP.__enter__()


def tearDownModule():
    if GROUP is not None:
        GROUP.finish()


def proc_kb(pid, field):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak(pid):
    """Reset VmHWM so it measures this test alone (Linux >= 4.0; best effort)."""
    try:
        with open("/proc/%d/clear_refs" % pid, "w") as f:
            f.write("5")
    except OSError:
        pass


def worker_pid(user):
    dump = GROUP.dump()
    conns = [c for c in dump["connections"] if c["user_id"] == user]
    assert conns, "user %s not in the registry: %r" % (user, dump)
    w = conns[0]["worker"]
    return [x["pid"] for x in dump["workers"] if x["index"] == w][0]


class Flood(unittest.TestCase):
    def test_never_reading_client_closed_at_send_queue_cap(self):
        bystander = rawws.WS(GROUP.port, GROUP.token("bystander"), timeout=T)
        self.addCleanup(bystander.close)
        sink = rawws.WS(GROUP.port, GROUP.token("sink"), timeout=T, rcvbuf=4096)
        self.addCleanup(sink.close)
        pid = worker_pid("sink")
        reset_peak(pid)
        rss0 = proc_kb(pid, "VmRSS")
        api = http.client.HTTPConnection("127.0.0.1", GROUP.api_port, timeout=30)
        body = json.dumps({"user_id": "sink", "type": "flood", "data": {"blob": "x" * 8000}})
        delivered, busy, gone, t0 = 0, 0, False, time.monotonic()
        while time.monotonic() - t0 < 60 and delivered + busy < 20000:
            api.request("POST", "/v1/notify", body=body, headers={"Content-Type": "application/json"})
            resp = api.getresponse()
            resp.read()
            if resp.status in (202, 404):  # no live connection any more (202: kept in the mailbox)
                gone = True
                break
            self.assertIn(resp.status, (200, 503), "notify answered %s" % resp.status)
            if resp.status == 200:
                delivered += 1
            else:
                busy += 1  # the notification that crossed the cap may be refused as it closes
                if busy > 200:
                    break
        api.close()
        print("flood: %d notifications of ~8 KiB confirmed, %d refused (503) before the close (%.1fs)"
              % (delivered, busy, time.monotonic() - t0), file=sys.stderr)
        hwm = proc_kb(pid, "VmHWM")
        print("flood: worker VmRSS before %d kB, VmHWM after %d kB" % (rss0, hwm), file=sys.stderr)
        self.assertTrue(gone, "the never-reading client was not closed: %d notifications confirmed, then %d "
                        "refused with 503 while it stayed connected" % (delivered, busy))
        self.assertLessEqual(busy, 10, "%d notifications refused before the client was closed" % busy)
        self.assertLess(hwm - rss0, RSS_BOUND_KB, "worker memory grew by %d kB" % (hwm - rss0))
        self.assertTrue(th.wait_until(lambda: not [c for c in GROUP.dump()["connections"]
                                                   if c["user_id"] == "sink"], T))
        bystander.app_ping()  # the worker still serves others


class PingFlood(unittest.TestCase):
    """Pings from a client that never reads its pongs: the pongs pile up in the
    client's send queue, so it must be closed at the cap like any slow reader."""

    def flood(self, one, user):
        ws = rawws.WS(GROUP.port, GROUP.token(user), timeout=T, rcvbuf=4096)
        self.addCleanup(ws.close)
        pid = worker_pid(user)
        reset_peak(pid)
        rss0 = proc_kb(pid, "VmRSS")
        batch = one * 500
        ws.sock.settimeout(T)
        sent, t0 = 0, time.monotonic()
        while sent < 400000 and time.monotonic() - t0 < 60:
            try:
                ws.sock.sendall(batch)
            except (BrokenPipeError, ConnectionResetError):
                break
            except socket.timeout:
                break  # the server stopped reading us: also a way to bound it, checked below
            sent += 500
        gone = th.wait_until(lambda: not [c for c in GROUP.dump()["connections"] if c["user_id"] == user], T)
        hwm = proc_kb(pid, "VmHWM")
        print("ping flood (%d-byte frames): %d sent in %.1fs; worker VmRSS %d kB, VmHWM %d kB"
              % (len(one), sent, time.monotonic() - t0, rss0, hwm), file=sys.stderr)
        self.assertTrue(gone, "the client flooding pings without reading is still connected after %d" % sent)
        self.assertLess(hwm - rss0, RSS_BOUND_KB, "worker memory grew by %d kB" % (hwm - rss0))

    def test_protocol_ping_flood_without_reading_closed(self):
        self.flood(frame(rawws.PING, b"p" * 125), "pingflood-proto")

    def test_app_ping_flood_without_reading_closed(self):
        self.flood(frame(TEXT, b'{"type":"ping"}'), "pingflood-app")


class TinyFragments(unittest.TestCase):
    def flood(self, fragment_payload, user):
        ws = rawws.WS(GROUP.port, GROUP.token(user), timeout=T)
        self.addCleanup(ws.close)
        pid = worker_pid(user)
        reset_peak(pid)
        rss0 = proc_kb(pid, "VmRSS")
        ws.send_raw(frame(TEXT, b'{"type":"ping"', fin=False))
        batch = frame(CONT, fragment_payload, fin=False) * 1000
        sent = 0
        for _ in range(100):
            if not ws.send_raw(batch):
                break
            sent += 1000
        finished = ws.send_raw(frame(CONT, b"}", fin=True))
        try:
            code, _, before = ws.expect_close(T)
        except rawws.Closed:
            self.fail("TCP closed without a close frame (sent %d fragments)" % sent)
        except socket.timeout:
            self.fail("still open after 100,000 fragments (sent %d, final frame sent: %s)" % (sent, finished))
        print("fragments of %d bytes: closed with %s after ~%d sent" % (len(fragment_payload), code, sent),
              file=sys.stderr)
        # The fragment cap's own code (worker/ws.h: more than TH_WS_MAX_FRAGMENTS frames
        # in one message is "too big"), not just any close.
        self.assertEqual(code, 1009, "close code for a message of too many fragments")
        self.assertFalse([p for op, p in before if b"pong" in p], "the 100,000-fragment message was served")
        hwm = proc_kb(pid, "VmHWM")
        self.assertLess(hwm - rss0, RSS_BOUND_KB, "worker memory grew by %d kB" % (hwm - rss0))
        return code

    def test_100000_empty_fragments_capped(self):
        self.flood(b"", "frag-empty")

    def test_100000_one_byte_fragments_capped(self):
        self.flood(b" ", "frag-one")


if __name__ == "__main__":
    unittest.main(verbosity=1)
