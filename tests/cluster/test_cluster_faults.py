"""Cluster faults (issue 12 item 7), real processes on loopback: one
nats-server (temp folder removed at teardown) and three tether groups a, b,
c with --nats, the default --handoff-timeout-ms 200, python3-websockets
clients.

- nats-server stopped: a user held on the asking node still gets 200
  (nodes 1) and the frame; a user held elsewhere, and one held nowhere, get
  503 unavailable (never a false 404/200) within the handoff timeout (plus
  a 2 s margin for the machine); /healthz stays 200 with "broker":"down",
  tether_broker_up 0, presence lists a's own connection with "partial":true.
  Restarted on the same port: cross-node delivery is
  back within 2 s of it listening, without restarting tether, and
  tether_broker_reconnects_total counts it.
- SIGSTOP of every process of node c: users held on c alone get 503, users
  held on a and c get 200 with a's connection (nodes 1), users on b get 200,
  each answer bounded (no hang; a 503 because a running node confirmed
  late on a loaded machine is asked again: delivered()); after SIGCONT c
  answers again (nodes 2).
  Node c runs with --hung-after 600 so its own supervisor does not replace
  its just-resumed workers (that is the hung issue's business, not this one).
- kill -9 of node c's whole process group: its clients reconnect to a and
  b and are reachable from the other nodes within 2 s of reconnecting; a
  user also held on a keeps getting 200 from b meanwhile.
Time bounds are the issue's own promises (handoff timeout, 2 s); under the
sanitizers (TETHER_SANITIZED=1) the 2 s bounds are doubled.
"""
import asyncio
import json
import os
import signal
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: harness

import harness as th  # noqa: E402
from harness.aio import connect_user, in_thread, notify  # noqa: E402
from harness.nats import (NatsServer, frame_with_id, local_count, notify_until, port_open,  # noqa: E402
                          reached, start_nodes)

HANDOFF_S = 0.2
SLOW = 2 if th.SANITIZED else 1
MARGIN_S = 2.0 * SLOW  # the machine's share of an answer (API round trip on a loaded CI box)




async def timed_notify(group, user, data):
    t0 = time.monotonic()
    st, body = await notify(group, user, data)
    return st, body, time.monotonic() - t0


async def delivered(tc, group, user, want, data, tries=5):
    """A notify whose user is held on running nodes only: 200 with (connections,
    nodes) == want, every answer within the bound. A 503 "unavailable" is what
    CONTRACT.md (Backend API, Cluster) has a node answer when a running node's
    confirmation missed the handoff timeout, which a loaded machine causes
    (seen under ASan at load 12: b confirmed a's request after 200 ms): that
    request is made again, at most tries times. A fault that keeps b's users
    from being reached still fails every time; a 404 or another count at once."""
    for i in range(tries):
        st, body, dt = await timed_notify(group, user, data)
        tc.assertLess(dt, HANDOFF_S + MARGIN_S)
        if (st, body.get("status")) == (503, "unavailable") and i + 1 < tries:
            continue
        tc.assertEqual((st, body.get("connections"), body.get("nodes")), (200,) + want, body)
        return body






def metric(group, name):
    st, text = group.api("GET", "/metrics")
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError("no metric %s" % name)




class ClusterFaults(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.nats = NatsServer().start()
        try:
            cls.a, cls.b = start_nodes(cls.nats, ["a", "b"], ["--mailbox-ttl", "0"])
            try:
                (cls.c,) = start_nodes(cls.nats, ["c"], ["--mailbox-ttl", "0", "--hung-after", "600"])
            except BaseException:
                cls.a.close()
                cls.b.close()
                raise
        except BaseException:
            cls.nats.close()
            raise
        cls.stopped = False

    @classmethod
    def tearDownClass(cls):
        try:
            if cls.stopped:
                os.killpg(cls.c.proc.pid, signal.SIGCONT)
            cls.a.finish()
            cls.b.finish()
            cls.c.close()  # killed by test_3 (or stopped and resumed): no exit status to check
            cls.c.check_sanitizers()
        finally:
            cls.nats.close()

    def test_1_broker_stopped_and_restarted(self):
        async def go():
            wl = await connect_user(self.a, "local-l")
            wr = await connect_user(self.b, "remote-r")
            try:
                await local_count(self.a, "local-l", 1)
                await local_count(self.b, "remote-r", 1)
                st, body = await notify_until(self.a, "remote-r", reached(1), {"n": 1})
                self.assertEqual(st, 200, body)
                await in_thread(self.nats.stop)
                # A notices the broker's EOF at once; until then a publish may still go
                # out and wait the handoff timeout: 503 either way, never 404/200.
                for user in ("remote-r", "nobody-anywhere"):
                    st, body, dt = await timed_notify(self.a, user, {"n": 2})
                    self.assertEqual((st, body["status"]), (503, "unavailable"), (user, body))
                    self.assertLess(dt, HANDOFF_S + MARGIN_S, user)
                st, body, dt = await timed_notify(self.a, "local-l", {"n": 3})
                self.assertEqual((st, body["connections"], body["nodes"]), (200, 1, 1), body)
                self.assertLess(dt, HANDOFF_S + MARGIN_S)
                self.assertEqual((await frame_with_id(wl, body["id"]))["data"], {"n": 3})
                # Presence says what this node knows and that it is not the whole answer.
                st, pres = await in_thread(self.a.api, "GET", "/v1/presence/local-l")
                self.assertEqual((st, pres["connected"], pres.get("partial")), (200, True, True),
                                 pres)
                self.assertEqual([c["node"] for c in pres["connections"]], ["a"], pres)
                ok = await in_thread(th.wait_until, lambda: self.a.api("GET", "/healthz")[1]
                                     .get("broker") == "down", 10)
                self.assertTrue(ok, self.a.api("GET", "/healthz"))
                self.assertEqual(self.a.api("GET", "/healthz")[0], 200)
                self.assertEqual(await in_thread(metric, self.a, "tether_broker_up"), 0)
                self.assertIn("broker connection lost", self.a.log())
                # Back on the same port: libnats reconnects, restores the subscriptions,
                # and cross-node delivery resumes without a restart of tether.
                await in_thread(self.nats.start)
                t0 = time.monotonic()
                st, body = await notify_until(self.a, "remote-r", reached(1), {"n": 4},
                                              timeout=10)
                back = time.monotonic() - t0
                self.assertEqual((st, body["connections"], body["nodes"]), (200, 1, 1), body)
                self.assertLess(back, 2.0 * SLOW, "cross-node delivery back after %.2f s" % back)
                print("\n  cross-node delivery back %.2f s after nats-server listened" % back,
                      file=sys.stderr)
                self.assertEqual((await frame_with_id(wr, body["id"]))["data"], {"n": 4})
                self.assertGreaterEqual(await in_thread(metric, self.a,
                                                        "tether_broker_reconnects_total"), 1)
                self.assertEqual(await in_thread(metric, self.a, "tether_broker_up"), 1)
                self.assertTrue(self.a.wait_log("broker connected again", 5))
            finally:
                await wl.close()
                await wr.close()
        th.aio.run(go(), timeout=60)

    def test_2_stopped_node(self):
        async def go():
            wc = await connect_user(self.c, "only-c")
            wac = [await connect_user(self.a, "both-ac"), await connect_user(self.c, "both-ac")]
            wb = await connect_user(self.b, "only-b")
            try:
                await local_count(self.c, "only-c", 1)
                await local_count(self.c, "both-ac", 1)
                await local_count(self.b, "only-b", 1)
                for user, n in (("only-c", 1), ("both-ac", 2), ("only-b", 1)):
                    st, body = await notify_until(self.a, user, reached(n), {"warm": user})
                    self.assertEqual((st, body.get("nodes")), (200, n), (user, body))
                os.killpg(self.c.proc.pid, signal.SIGSTOP)
                self.__class__.stopped = True
                # Right after the stop and again once c's heartbeats are missed (2 s):
                # answered within the timeout every time, never hung, never false.
                t_end = time.monotonic() + 3.0
                rounds = 0
                while time.monotonic() < t_end or rounds < 2:
                    rounds += 1
                    st, body, dt = await timed_notify(self.a, "only-c", {"r": rounds})
                    self.assertEqual((st, body["status"]), (503, "unavailable"), body)
                    self.assertLess(dt, HANDOFF_S + MARGIN_S)
                    await delivered(self, self.b, "both-ac", (1, 1), {"r": rounds})
                    await delivered(self, self.a, "only-b", (1, 1), {"r": rounds})
                    await asyncio.sleep(0.2)
                os.killpg(self.c.proc.pid, signal.SIGCONT)
                self.__class__.stopped = False
                st, body = await notify_until(self.b, "both-ac", reached(2), {"n": "back"})
                self.assertEqual((st, body["connections"], body["nodes"]), (200, 2, 2), body)
                st, body = await notify_until(self.a, "only-c", reached(1), {"n": "back"})
                self.assertEqual((st, body["nodes"]), (200, 1), body)
                self.assertEqual((await frame_with_id(wc, body["id"]))["data"], {"n": "back"})
            finally:
                if self.__class__.stopped:
                    os.killpg(self.c.proc.pid, signal.SIGCONT)
                    self.__class__.stopped = False
                for ws in [wc, wb] + wac:
                    await ws.close()
        th.aio.run(go(), timeout=90)

    def test_3_node_killed(self):
        users = ["k%d" % i for i in range(6)]

        async def go():
            wss = [await connect_user(self.c, u) for u in users]
            shared = [await connect_user(self.a, "k-shared"), await connect_user(self.c, "k-shared")]
            try:
                for u in users:
                    await local_count(self.c, u, 1)
                for u in users:
                    st, body = await notify_until(self.a, u, reached(1), {"warm": u})
                    self.assertEqual(st, 200, body)
                st, body = await notify_until(self.b, "k-shared", reached(2), {"warm": 1})
                self.assertEqual(st, 200, body)
                os.killpg(self.c.proc.pid, signal.SIGKILL)
                await in_thread(self.c.proc.wait, 10)
                await delivered(self, self.b, "k-shared", (1, 1), {"n": "after"})
                for ws in wss:  # their node is gone
                    await ws.close()
                worst = 0.0
                for i, u in enumerate(users):
                    home, other = (self.a, self.b) if i % 2 == 0 else (self.b, self.a)
                    ws = await connect_user(home, u)
                    wss[i] = ws
                    t0 = time.monotonic()
                    st, body = await notify_until(other, u, reached(1), {"n": "moved"},
                                                  timeout=10)
                    dt = time.monotonic() - t0
                    worst = max(worst, dt)
                    self.assertEqual((st, body["connections"], body["nodes"]), (200, 1, 1),
                                     (u, body))
                    self.assertLess(dt, 2.0 * SLOW, "%s reachable %.2f s after reconnecting"
                                    % (u, dt))
                    self.assertEqual((await frame_with_id(ws, body["id"]))["data"], {"n": "moved"})
                print("\n  reconnected clients reachable across nodes after at most %.2f s" % worst,
                      file=sys.stderr)
            finally:
                for ws in wss + shared:
                    await ws.close()
        th.aio.run(go(), timeout=90)


if __name__ == "__main__":
    unittest.main(verbosity=2)
