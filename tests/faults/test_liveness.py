"""Liveness promises of the contract that no other suite checked, with real
groups and Debian's python3-websockets as the client:

- "every frame the client sends refreshes LastSeen; nothing the server sends
  does": a client sending only protocol pings (websockets' own keepalive, no
  app ping) outlives several sweeps past --stale-after, while a client that
  only receives notifications is evicted with 4000 although it got them;
- /healthz is 503 and names the role while a worker is dead (in the crash
  loop's 800 ms back-off), 200 again once it is back;
- close 1011 provoked: the worker cannot grow a message buffer (its address
  space capped with prlimit while a 12 MiB message arrives), the client gets
  1011, and the worker goes on serving.

The watchdog killing a stalled child and /healthz while a role is stalled
are tests/faults/test_hung.py's.
"""
import asyncio
import os
import resource
import signal
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: harness

import websockets  # noqa: E402

import harness as th  # noqa: E402
from harness import ws as rawws  # noqa: E402
from harness.aio import in_thread, wait_for  # noqa: E402
from harness.faults import role_pids  # noqa: E402
from harness.ws import TEXT, frame  # noqa: E402


def sweeps(g):
    """Janitor sweeps so far (one debug line each; the harness logs at debug)."""
    return g.log().count("janitor: sweep of ")


class Liveness(unittest.TestCase):
    def test_protocol_pings_keep_a_client_and_receiving_does_not(self):
        with th.Group(workers=2, extra_args=["--stale-after", "2", "--sweep-every", "1"]) as g:
            async def go():
                # websockets sends a protocol ping every 0.5 s and never an app ping.
                pinger = await websockets.connect(g.ws_url("proto-pinger"), ping_interval=0.5,
                                                  ping_timeout=5, close_timeout=2)
                receiver = await websockets.connect(g.ws_url("receiver"), ping_interval=None,
                                                    close_timeout=2)
                got = []

                async def read():
                    try:
                        async for msg in receiver:
                            got.append(msg)
                    except websockets.ConnectionClosed:
                        pass
                reader = asyncio.ensure_future(read())
                # Notifications to the receiver every 0.3 s until it is evicted.
                delivered = 0
                for _ in range(60):
                    if reader.done():
                        break
                    st, body = await in_thread(g.notify, "receiver", {"keep": "alive?"})
                    delivered += st == 200
                    await asyncio.sleep(0.3)
                # Evicted while notifications were still flowing to it (18 s of them,
                # against --stale-after 2 and a sweep a second).
                self.assertTrue(reader.done(), "receive-only client kept while it was receiving")
                await reader
                self.assertEqual(receiver.close_code, 4000, "receiver not evicted as stale")
                self.assertGreater(delivered, 0)
                self.assertEqual(len(got), delivered, "every confirmed notification reached it")
                # The pinger must outlive three more sweeps, each past its 2 s.
                n0 = sweeps(g)
                self.assertTrue(await wait_for(lambda: sweeps(g) >= n0 + 3 or pinger.closed, 15))
                self.assertFalse(pinger.closed, "protocol-pinging client closed (%s)" % pinger.close_code)
                d = await in_thread(g.dump)
                self.assertEqual([c["user_id"] for c in d["connections"]], ["proto-pinger"], d)
                self.assertLess(d["connections"][0]["age_s"], 60)
                await pinger.close()
            asyncio.run(asyncio.wait_for(go(), 60))
            self.assertIn("Removing stale connection: receiver", g.log())
            self.assertNotIn("Removing stale connection: proto-pinger", g.log())

    def test_healthz_503_while_a_worker_is_dead(self):
        with th.Group(workers=2) as g:
            # Each restart of a crash loop waits twice as long: 100, 200, 400, 800 ms.
            # The 800 ms of the fourth leave a window no loaded machine misses.
            for k in range(4):
                pid = role_pids(g)["tether-worker1"]
                os.kill(pid, signal.SIGKILL)
                if k == 3:
                    down = th.wait_until(lambda: healthz_names_dead_worker(g, 1), 5, 0.01)
                    self.assertTrue(down, "/healthz never said worker 1 is down: %r" % (g.api("GET", "/healthz"),))
                back = th.wait_until(lambda: role_pids(g).get("tether-worker1") not in (None, pid)
                                     and g.api("GET", "/healthz")[0] == 200, 10)
                self.assertTrue(back, g.api("GET", "/healthz"))
            self.assertIn("restarting in 800 ms", g.log())

    def test_close_1011_when_the_worker_cannot_allocate(self):
        env = {}
        if th.SANITIZED:  # the allocator must fail like glibc's, not abort the worker
            env["ASAN_OPTIONS"] = os.environ.get("ASAN_OPTIONS", "") + ":allocator_may_return_null=1"
        with th.Group(workers=1, extra_args=["--max-message", str(16 << 20)], env=env) as g:
            victim = rawws.WS(g.port, g.token("oom"), timeout=20)
            victim.app_ping()
            pid = role_pids(g)["tether-worker0"]
            old = resource.prlimit(pid, resource.RLIMIT_AS)
            # Room for 2 MiB more than it maps now: a 12 MiB message cannot be buffered.
            resource.prlimit(pid, resource.RLIMIT_AS, (vm_size(pid) + (2 << 20), old[1]))
            try:
                victim.send_raw(frame(TEXT, rawws.ping_message(12 << 20)))
                code, _, _ = victim.expect_close(20)
            finally:
                resource.prlimit(pid, resource.RLIMIT_AS, old)
            self.assertEqual(code, 1011)
            victim.close()
            # Same worker, still serving.
            ws = rawws.WS(g.port, g.token("after-oom"))
            self.assertEqual(ws.app_ping()["type"], "pong")
            self.assertEqual(role_pids(g)["tether-worker0"], pid)
            ws.close()


def healthz_names_dead_worker(g, index):
    st, body = g.api("GET", "/healthz")
    return st == 503 and any(w["index"] == index and not w["alive"] for w in body["workers"])


def vm_size(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize for %d" % pid)


if __name__ == "__main__":
    unittest.main(verbosity=2)
