"""tether-load driving a real tether group.

A short run (200 clients, pings every second, notifications flowing) must
report every client connected and every notification delivered, in one JSON
object on stdout, with exit status 0. Against a port nobody listens on it
must fail with a non-zero status; bad flags exit 2. Behind a proxy that
resets some API connections before they carry anything and closes others
after a few answers, tether-load must still lose nothing itself: each
request that never reached the notifier is sent again on a new connection. Speed is not asserted
here: tools/bench measures it.
"""
import json
import os
import select
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: harness

import harness as th  # noqa: E402

LOAD = os.path.join(th.BIN, "tether-load")


def run_load(args, timeout=60):
    return subprocess.run([LOAD] + args, capture_output=True, text=True, timeout=timeout)


class FlakyApiProxy:
    """A TCP proxy to the notifier's API that misbehaves as networks and idle
    timers do: every 4th connection is reset as soon as it is accepted
    (before a byte is read), every other one is closed right after it
    forwarded its 3rd answer (the next request on it meets a closed socket).
    Nothing it has read from a client is ever dropped unanswered, so a
    client that re-sends exactly the requests that got no answer loses
    nothing and duplicates nothing."""

    def __init__(self, upstream_port):
        self.upstream = upstream_port
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        self.accepted = self.resets = self.closes = 0
        self.stop = False
        threading.Thread(target=self.accept_loop, daemon=True).start()

    def accept_loop(self):
        while not self.stop:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            self.accepted += 1
            if self.accepted % 4 == 1:
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                c.close()
                self.resets += 1
                continue
            threading.Thread(target=self.pipe, args=(c,), daemon=True).start()

    def pipe(self, c):
        u = socket.create_connection(("127.0.0.1", self.upstream))
        answers = 0
        try:
            while answers < 3:
                r, _, _ = select.select([c, u], [], [], 30)
                if not r:
                    break
                if c in r:
                    b = c.recv(65536)
                    if not b:
                        break
                    u.sendall(b)
                if u in r:
                    b = u.recv(65536)
                    if not b:
                        break
                    answers += b.count(b"HTTP/1.")
                    c.sendall(b)
            self.closes += answers >= 3
        finally:
            c.close()
            u.close()

    def close(self):
        self.stop = True
        self.lsock.close()


class TetherLoadTest(unittest.TestCase):
    def test_api_connection_failures_are_retried(self):
        with th.Group(workers=2, slots=1024) as g:
            proxy = FlakyApiProxy(g.api_port)
            try:
                p = run_load(["--url", g.ws_url(), "--api", "http://127.0.0.1:%d" % proxy.port,
                              "--secret-file", g.secret_file, "--connections", "100",
                              "--ping-interval", "5", "--duration", "3", "--notify-rate", "40",
                              "--procs", "1", "--api-conns", "2"])
            finally:
                proxy.close()
            s = json.loads(p.stdout.strip().splitlines()[-1])
            self.assertGreater(proxy.resets, 0)
            self.assertGreater(proxy.closes, 0)
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            self.assertGreater(s["api_retries"], 0, s)
            self.assertEqual(s["api_failed"], 0, s)
            self.assertEqual(s["lost"], 0, s)
            self.assertEqual(s["dup"], 0, s)
            self.assertGreater(s["notifications_sent"], 40)
            self.assertEqual(s["notify_status"]["2xx"], s["notifications_sent"], s)
            self.assertEqual(s["notifications_received"], s["notifications_sent"], s)

    def test_run_against_tether(self):
        with th.Group(workers=2, slots=1024) as g:
            p = run_load(["--url", g.ws_url(), "--api", "http://127.0.0.1:%d" % g.api_port,
                          "--secret-file", g.secret_file, "--connections", "200",
                          "--ping-interval", "1", "--duration", "3", "--notify-rate", "50",
                          "--procs", "2"])
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            lines = p.stdout.strip().splitlines()
            self.assertEqual(len(lines), 1, p.stdout)
            s = json.loads(lines[0])
            self.assertEqual(s["connections_ok"], 200)
            self.assertEqual(s["connect_errors"], 0)
            self.assertEqual(s["disconnects"], 0)
            self.assertEqual(s["lost"], 0)
            self.assertEqual(s["undelivered"], 0)
            self.assertGreater(s["notifications_sent"], 50)
            self.assertEqual(s["notifications_received"], s["notifications_sent"])
            self.assertEqual(s["notify_status"]["2xx"], s["notifications_sent"])
            # Every ping answered; how many fit in 3 s depends on the machine, not on tether.
            self.assertGreater(s["pings_sent"], 0)
            self.assertEqual(s["pongs_received"], s["pings_sent"])
            self.assertGreater(s["pong_rtt_us"]["p50"], 0)
            self.assertLessEqual(s["pong_rtt_us"]["p50"], s["pong_rtt_us"]["p99"])
            self.assertLessEqual(s["pong_rtt_us"]["p99"], s["pong_rtt_us"]["max"])
            self.assertGreater(s["delivery_us"]["p50"], 0)

    def test_settle_holds_the_load_back(self):
        """--settle S: the clients stay idle S seconds after connecting, then the
        load runs for --duration: the run takes at least S + duration, and the
        pings of the run are all answered."""
        with th.Group(workers=1, slots=64) as g:
            t0 = time.monotonic()
            p = run_load(["--url", g.ws_url(), "--secret-file", g.secret_file, "--connections", "10",
                          "--ping-interval", "0.5", "--duration", "1", "--settle", "2"])
            elapsed = time.monotonic() - t0
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            s = json.loads(p.stdout)
            self.assertGreaterEqual(elapsed, 3.0)
            self.assertGreater(s["pings_sent"], 0)
            self.assertEqual(s["pongs_received"], s["pings_sent"])
            bad = run_load(["--url", g.ws_url(), "--secret-file", g.secret_file, "--connections", "1",
                            "--duration", "1", "--saturate", "--settle", "1"])
            self.assertEqual(bad.returncode, 2)
            self.assertIn("--settle", bad.stderr)

    def test_wrong_secret_fails(self):
        with th.Group(workers=1, slots=64) as g:
            bad = os.path.join(g.tmp, "wrong-secret")
            with open(bad, "w") as f:
                f.write("not-the-secret\n")
            p = run_load(["--url", g.ws_url(), "--secret-file", bad, "--connections", "5",
                          "--ping-interval", "1", "--duration", "1"])
            self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
            s = json.loads(p.stdout)
            self.assertEqual(s["connections_ok"], 0)
            self.assertEqual(s["connect_errors"], 5)
            self.assertIn("401", p.stderr)

    def test_no_server_fails(self):
        port = th.free_port()
        with tempfile.NamedTemporaryFile("w", suffix=".secret") as f:
            f.write("some-secret\n")
            f.flush()
            p = run_load(["--url", "ws://127.0.0.1:%d/ws" % port, "--secret-file", f.name,
                          "--connections", "20", "--ping-interval", "1", "--duration", "1"])
        self.assertNotEqual(p.returncode, 0)
        s = json.loads(p.stdout)
        self.assertEqual(s["connections_ok"], 0)
        self.assertEqual(s["connect_errors"], 20)

    def test_bad_flags_exit_2(self):
        for args in (["--bogus"], ["--connections", "x"], ["--url", "http://a/ws"],
                     ["--url", "ws://127.0.0.1:1/ws", "--secret-file", "/nonexistent",
                      "--connections", "1", "--duration", "1", "--idle"]):
            p = run_load(args)
            self.assertEqual(p.returncode, 2, args)
            self.assertEqual(len(p.stderr.strip().splitlines()), 1, p.stderr)
            self.assertEqual(p.stdout, "")


if __name__ == "__main__":
    unittest.main()
