"""The janitor evicts a silent client with close code 4000 and the
contract's log line, counts it, and never evicts a client that keeps
pinging. Short thresholds (--stale-after 2 --sweep-every 1) also show the
start-up warning about thresholds under 300 s."""
import asyncio
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: harness

import harness as th  # noqa: E402
from harness.faults import Client, in_thread, wait_for  # noqa: E402


class Stale(unittest.TestCase):
    def test_silent_evicted_pinging_kept(self):
        with th.Group(workers=2, extra_args=["--stale-after", "2", "--sweep-every", "1"]) as g:
            self.assertIn("--stale-after 2 s is under 300 s", g.log())

            async def scenario():
                silent = await Client(g, "silent-user").open()
                alive = await Client(g, "pinging-user", ping_every=0.5).open()
                # Silent for 2 s, then at most one sweep period and some slack for a loaded box.
                self.assertTrue(await wait_for(lambda: silent.closed, 8), "silent client not evicted")
                # The pinging client must outlive three more sweeps (each past its
                # --stale-after 2 s since it connected): counted in the debug log.
                sweeps = lambda: g.log().count("janitor: sweep of ")  # noqa: E731
                n0 = sweeps()
                self.assertTrue(await wait_for(lambda: sweeps() >= n0 + 3 or alive.closed, 10),
                                "the janitor stopped sweeping")
                self.assertFalse(alive.closed, "pinging client evicted (code %s)" % alive.close_code)
                self.assertGreater(alive.pongs, 0)
                status, body = await in_thread(g.notify, "pinging-user", {"n": 1})
                self.assertEqual(status, 200, body)
                self.assertTrue(await wait_for(lambda: len(alive.notes) == 1, 5))
                # The evicted user is gone from the registry, the other one is still there.
                dump = await in_thread(g.dump)
                self.assertEqual([c["user_id"] for c in dump["connections"]], ["pinging-user"], dump)
                code = silent.close_code
                await silent.close()
                await alive.close()
                return code

            self.assertEqual(asyncio.run(scenario()), 4000)
            log = g.log()
            self.assertIn("[ConnectionManager] Removing stale connection: silent-user (LastSeen: ", log)
            self.assertNotIn("Removing stale connection: pinging-user", log)
            status, metrics = g.api("GET", "/metrics")
            self.assertEqual(status, 200)
            evictions = [l for l in metrics.splitlines() if l.startswith("tether_stale_evictions_total")]
            self.assertEqual(len(evictions), 1, metrics)
            self.assertGreaterEqual(float(evictions[0].split()[-1]), 1)


if __name__ == "__main__":
    unittest.main(verbosity=2)
