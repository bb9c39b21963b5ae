"""Socket worker: --max-conns-per-user holds under a burst of concurrent connects.

20 and then 64 sockets of one user opened at once (python3-websockets,
asyncio.gather) against two workers with --max-conns-per-user 2, repeated:
once the burst settles the user holds at most 2 live slots, exactly as many
client sockets are still open, every other one was closed with 4001, and
after the clients leave nothing of theirs is left in the registry.
"""
import asyncio
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: harness

from harness import Group, wait_until  # noqa: E402
from harness.aio import connect, run  # noqa: E402
from harness.unit import slots_of, stop_and_check  # noqa: E402

CAP = 2


async def burst(g, user, n):
    """Open n sockets of one user at once; return them (all must complete the upgrade)."""
    socks = await asyncio.gather(*(connect(g.ws_url(user)) for _ in range(n)))
    return list(socks)


async def settle(testcase, g, user, socks, label):
    """Wait until open sockets == live slots <= CAP; check the closed ones got 4001."""
    def state():
        live = slots_of(g, user)
        still_open = [s for s in socks if s.close_code is None]
        return live, still_open
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        await asyncio.sleep(0.05)
        live, still_open = state()
        if len(live) <= CAP and len(still_open) == len(live):
            break
        testcase.assertLess(asyncio.get_running_loop().time(), deadline,
                            "%s: %d live slots, %d sockets open" % (label, len(live), len(still_open)))
    testcase.assertGreaterEqual(len(live), 1, label)
    codes = sorted({s.close_code for s in socks if s.close_code is not None})
    testcase.assertEqual(codes, [4001], "%s: close codes of the replaced sockets" % label)
    return live


class CapBurst(unittest.TestCase):
    def test_bursts_over_two_workers(self):
        with Group(workers=2, extra_args=["--max-conns-per-user", str(CAP)]) as g:
            async def go():
                workers = set()
                for n, rounds in ((20, 5), (64, 3)):
                    for r in range(rounds):
                        user = "burst-%d-%d" % (n, r)
                        socks = await burst(g, user, n)
                        live = await settle(self, g, user, socks, "%d at once, round %d" % (n, r))
                        workers.update(c["worker"] for c in live)
                        # The survivors work: a ping each, and a notification reaches them.
                        for s in socks:
                            if s.close_code is None:
                                await s.send('{"type":"ping"}')
                                self.assertIn('"pong"', await asyncio.wait_for(s.recv(), 5))
                        status, body = g.notify(user)
                        self.assertEqual(status, 200, body)
                        self.assertEqual(body["connections"], len(live), body)
                        await asyncio.gather(*(s.close() for s in socks))
                        self.assertTrue(wait_until(lambda: not slots_of(g, user), timeout=5),
                                        "slots left after the clients closed: %r" % slots_of(g, user))
                # Other users still get in: the burst did not fill the registry.
                other = await connect(g.ws_url("bystander"))
                self.assertTrue(wait_until(lambda: slots_of(g, "bystander"), timeout=5))
                await other.close()
                return workers
            workers = run(go(), timeout=120)
            dump = g.dump()
            self.assertEqual(dump["slots_used"], 0, dump)
            print("live slots were owned by workers %s" % sorted(workers))
            stop_and_check(self, g)


if __name__ == "__main__":
    unittest.main()
