"""SIGTERM (and SIGINT) drain the group: every client sees close code 1001,
the supervisor exits 0 within --drain-timeout plus its 2 s slack, and no
process, segment, control socket or runtime directory of the group is
left."""
import asyncio
import os
import signal
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: harness

import harness as th  # noqa: E402
from harness.faults import Client, in_thread, pid_running, role_pids, segment_exists, wait_for  # noqa: E402

DRAIN_S = 3


class Drain(unittest.TestCase):
    def drain(self, sig):
        g = th.Group(workers=2, extra_args=["--drain-timeout", str(DRAIN_S)])
        with g:
            async def scenario():
                clients = [await Client(g, "drain-%d" % i, ping_every=0.5).open() for i in range(6)]
                self.assertTrue(await wait_for(lambda: all(c.pongs > 0 for c in clients), 10))
                kids = list(role_pids(g).values())
                self.assertEqual(len(kids), 2 + 2, role_pids(g))
                t0 = time.monotonic()
                rc = await in_thread(g.stop, sig, DRAIN_S + 20)
                elapsed = time.monotonic() - t0
                await wait_for(lambda: all(c.closed for c in clients), 5)
                codes = [c.close_code for c in clients]
                for c in clients:
                    await c.close()
                return rc, elapsed, codes, kids

            rc, elapsed, codes, kids = asyncio.run(scenario())
            self.assertEqual(rc, 0, g.log())
            self.assertLess(elapsed, DRAIN_S + 2 + 1, "drain took %.1fs" % elapsed)
            self.assertEqual(codes, [1001] * len(codes), g.log())
            # Orphans would be reparented, not reaped by us: give them a moment, then none may run.
            deadline = time.time() + 3
            while any(pid_running(p) for p in kids) and time.time() < deadline:
                time.sleep(0.05)
            self.assertEqual([p for p in kids if pid_running(p)], [])
            self.assertFalse(segment_exists(g))
            self.assertFalse(os.path.exists(g.env["TETHER_RUNTIME_DIR"]))
            self.assertIn("draining", g.log())

    def test_sigterm(self):
        self.drain(signal.SIGTERM)

    def test_sigint(self):
        self.drain(signal.SIGINT)


if __name__ == "__main__":
    unittest.main(verbosity=2)
