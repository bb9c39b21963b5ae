"""Socket worker: limits that involve the registry.

4001 replacement past --max-conns-per-user (same worker and across
workers through the control socket), HTTP 503 once --slots is exhausted
with the refused client taking nothing, and 1008 when a token's exp passes
on a live connection.
"""
import asyncio
import os
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: harness

import websockets
import websockets.exceptions

from harness import Group, wait_until  # noqa: E402
from harness.aio import app_ping, connect, run  # noqa: E402
from harness.unit import slots_of, stop_and_check  # noqa: E402


async def closed_code(ws, timeout=8):
    await asyncio.wait_for(ws.wait_closed(), timeout)
    return ws.close_code


class Limits(unittest.TestCase):
    def test_replacement_4001(self):
        # Cap 1: every new connection of the user replaces the previous one.
        # Workers take clients in batches of 16, so 40 rounds cross workers
        # (the replacement then goes through the owner's control socket).
        with Group(workers=2, extra_args=["--max-conns-per-user", "1"]) as g:
            async def go():
                old = await connect(g.ws_url("l-dev"))
                owner = [wait_until(lambda: slots_of(g, "l-dev"), timeout=5)[0]["worker"]]
                for i in range(40):
                    new = await connect(g.ws_url("l-dev"))
                    self.assertEqual(await closed_code(old), 4001, "round %d" % i)
                    live = wait_until(lambda: len(slots_of(g, "l-dev")) == 1 and slots_of(g, "l-dev"),
                                      timeout=5)
                    self.assertTrue(live, "round %d: %r" % (i, slots_of(g, "l-dev")))
                    owner.append(live[0]["worker"])
                    old = new
                self.assertEqual((await app_ping(old))["type"], "pong")
                await old.close()
                crossings = sum(1 for a, b in zip(owner, owner[1:]) if a != b)
                self.assertGreater(crossings, 0, owner)
            run(go(), timeout=60)
            stop_and_check(self, g)

    def test_registry_full_503(self):
        with Group(workers=1, slots=16) as g:  # 16 is the smallest --slots
            async def go():
                held = [await connect(g.ws_url("l-full-%d" % i)) for i in range(16)]
                with self.assertRaises(websockets.exceptions.InvalidStatusCode) as cm:
                    await connect(g.ws_url("l-full-x"))
                self.assertEqual(cm.exception.status_code, 503)
                self.assertEqual(slots_of(g, "l-full-x"), [])
                # Counted once, in tether_registry_full_total (README: capacity).
                metrics = g.api("GET", "/metrics")[1]
                self.assertIn("\ntether_registry_full_total 1\n", metrics)
                await held[0].close()
                wait_until(lambda: len(slots_of(g)) == 15, timeout=5)
                extra = await connect(g.ws_url("l-full-y"))  # a slot came back
                for ws in held[1:] + [extra]:
                    await ws.close()
            run(go())
            stop_and_check(self, g)

    def test_slot_released_elsewhere_4001(self):
        # Another process releases a silent client's slot and tells nobody (the janitor's
        # direct release while a worker does not answer, or a cap claim whose 4001 request
        # got lost): the owner worker finds out by itself and closes the connection with
        # 4001, while the other client on the same worker stays served. The wait is a bound,
        # not a measure: the owner looks at the next tick after the release is counted.
        helper = os.path.join(os.path.dirname(os.environ.get("TETHER_BIN", "build/bin")), "tests",
                              "th_release_slot")
        with Group(workers=1) as g:
            async def go():
                victim = await connect(g.ws_url("l-lost"))
                other = await connect(g.ws_url("l-kept"))
                self.assertTrue(wait_until(lambda: len(slots_of(g)) == 2, timeout=5))
                r = subprocess.run([helper, g.shm_name, "l-lost"], capture_output=True, text=True,
                                   timeout=30)
                self.assertEqual((r.returncode, r.stdout.strip()), (0, "1"), r.stderr)
                self.assertEqual(await closed_code(victim, timeout=30), 4001)
                self.assertEqual(slots_of(g, "l-lost"), [])
                self.assertEqual((await app_ping(other))["type"], "pong")
                self.assertEqual(len(slots_of(g, "l-kept")), 1)
                await other.close()
            run(go(), timeout=60)
            self.assertIn("lost registry slot", g.log())
            stop_and_check(self, g)

    def test_token_expiry_1008(self):
        with Group(workers=1) as g:
            async def go():
                ws = await connect(g.ws_url(token=g.token("l-exp", ttl=2)))
                self.assertEqual(await closed_code(ws, timeout=8), 1008)
            run(go())
            self.assertTrue(wait_until(lambda: not slots_of(g, "l-exp"), timeout=5))
            stop_and_check(self, g)

    def test_drain_1001(self):
        g = Group(workers=2, extra_args=["--drain-timeout", "5"]).start()
        try:
            async def go():
                clients = [await connect(g.ws_url("l-drain-%d" % i)) for i in range(6)]
                wait_until(lambda: len(slots_of(g)) == 6, timeout=5)
                stopping = asyncio.get_running_loop().run_in_executor(None, g.stop)
                codes = [await closed_code(ws) for ws in clients]
                return codes, await stopping
            codes, rc = run(go())
            self.assertEqual(codes, [1001] * 6)
            self.assertEqual(rc, 0)
            self.assertIn("draining", g.log())
        finally:
            stop_and_check(self, g)


if __name__ == "__main__":
    unittest.main()
