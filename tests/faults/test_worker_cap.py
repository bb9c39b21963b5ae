"""The per-worker connection cap (README, capacity: a worker holds at most
19,900 connections, WK_MAX_CONNS in worker/wk.h) and "a full worker stops
accepting", with a real one-worker group and tether-load holding 19,900 idle
clients: every one of them is served, a client past the cap gets no answer
(it waits in the listen queue: the full worker has stopped accepting), and
once clients leave the worker accepts again and that waiting client gets its
101.

Labelled "long" (about a minute on a shared 2-core machine, several in a
sanitizer build), so tools/test leaves it out; run it by hand:
    ctest --test-dir build -L long
    /usr/bin/python3 tests/faults/test_worker_cap.py
"""
import os
import signal
import socket
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: harness

import harness as th  # noqa: E402
from harness import ws as rawws  # noqa: E402

WK_MAX_CONNS = 19900


class WorkerCap(unittest.TestCase):
    def test_full_worker_stops_accepting_and_resumes(self):
        with th.Group(workers=1, slots=32768, extra_args=["--log-level", "warn"]) as g:
            ready = os.path.join(g.tmp, "ready")
            load = subprocess.Popen(
                [os.path.join(th.BIN, "tether-load"), "--url", g.ws_url(), "--secret-file", g.secret_file,
                 "--connections", str(WK_MAX_CONNS), "--idle", "--duration", "600", "--connect-rate", "0",
                 "--ready-file", ready], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                up = th.wait_until(lambda: os.path.exists(ready) or load.poll() is not None, 600, 0.2)
                self.assertTrue(up and load.poll() is None, "tether-load: %r" % (load.poll(),))
                # Every client's upgrade done (the ready file may come before the last claims).
                full = th.wait_until(lambda: g.dump()["slots_used"] == WK_MAX_CONNS, 120, 0.5)
                self.assertTrue(full, "slots used: %d" % g.dump()["slots_used"])
                # One more client: the TCP connect succeeds (listen queue), nothing answers.
                late = socket.create_connection(("127.0.0.1", g.port), timeout=10)
                late.sendall(rawws.handshake_request(g.port, token=g.token("late"))[0])
                late.settimeout(2)
                with self.assertRaises(socket.timeout, msg="a full worker answered a client"):
                    late.recv(1)
                self.assertEqual(g.dump()["slots_used"], WK_MAX_CONNS)
            finally:
                load.send_signal(signal.SIGTERM)
                out, err = load.communicate(timeout=120)
            # Room again: the worker resumes accepting and the waiting client is served.
            late.settimeout(30)
            head = late.recv(4096)
            self.assertTrue(head.startswith(b"HTTP/1.1 101"), head[:80])
            late.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
