"""Socket worker: limits that involve the registry.

4001 replacement past --max-conns-per-user (same worker and across
workers through the control socket), HTTP 503 once --slots is exhausted
with the refused client taking nothing, and 1008 when a token's exp passes
on a live connection.
"""
import asyncio
import os
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
