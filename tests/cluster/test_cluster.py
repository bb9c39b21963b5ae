"""Several nodes over NATS (issue 12, CONTRACT "Cluster"), real processes on
loopback: one nats-server (Debian's, started here on a free port) and two
tether groups (distinct ports and --shm-name) with --nats and --node, and
Debian's python3-websockets as the client.

- a notification posted to node A reaches a user connected only to node B
  (200, connections 1, nodes 1) and the client gets that very frame;
- a user with a device on each node gets it on both: connections 2, nodes 2;
- a user held nowhere answers 404 (--mailbox-ttl 0) as on one node;
- ids that look like NATS wildcards or tokens ("x.>") reach only themselves:
  "x.y", "x.*", ">" posted elsewhere answer 404;
- nats-server stopped: a user held only on B, posted to A, gets 503 (never a
  false 404/200) while a user held on A still gets 200; nats-server started
  again: cross-node delivery comes back without restarting tether.
Node B subscribes to a user's subject within its registry scan period after
the connect, so the first cross-node delivery is retried until it lands
(bounded), never slept for.
"""
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: harness

import harness as th  # noqa: E402
from harness.aio import connect_user, in_thread, notify, wait_connected  # noqa: E402

NATS = shutil.which("nats-server") or "/usr/sbin/nats-server"


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


async def frame_with_id(ws, nid, timeout=10):
    """Read frames until the notification nid arrives; return it (parsed)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        msg = json.loads(await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.time())))
        if msg.get("id") == nid:
            return msg
    raise AssertionError("notification %s never arrived" % nid)


async def notify_until(group, user, want, data, timeout=10):
    """Post until the answer's status is want (B's subscription may lag the connect)."""
    deadline = time.time() + timeout
    while True:
        st, body = await notify(group, user, data)
        if st == want or time.time() > deadline:
            return st, body
        await asyncio.sleep(0.05)


class Cluster(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.nats_port = th.free_port()
        cls.nats_log = open(os.path.join("/tmp", "tether-nats-%d.log" % os.getpid()), "wb")
        cls.nats = subprocess.Popen([NATS, "-a", "127.0.0.1", "-p", str(cls.nats_port)],
                                    stdout=cls.nats_log, stderr=cls.nats_log)
        if not th.wait_until(lambda: port_open(cls.nats_port), timeout=10):
            cls.nats.kill()
            raise RuntimeError("nats-server did not listen on %d" % cls.nats_port)
        url = "nats://127.0.0.1:%d" % cls.nats_port
        cls.a = th.Group(workers=1, extra_args=["--nats", url, "--node", "a", "--mailbox-ttl", "0"])
        cls.b = th.Group(workers=1, extra_args=["--nats", url, "--node", "b", "--mailbox-ttl", "0"])
        try:
            cls.a.start()
            cls.b.start()
            for g in (cls.a, cls.b):
                if not g.wait_log("NATS IS connected", timeout=20):
                    raise RuntimeError("node never connected to NATS:\n" + g.log()[-3000:])
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        for g in (cls.a, cls.b):
            g.finish()
        if cls.nats.poll() is None:
            cls.nats.terminate()
            cls.nats.wait(10)
        cls.nats_log.close()

    def test_1_remote_user(self):
        async def go():
            ws = await connect_user(self.b, "bob")
            try:
                await wait_connected(self.b, "bob", 1)
                st, body = await notify_until(self.a, "bob", 200, {"n": 1})
                self.assertEqual(st, 200, body)
                self.assertEqual((body["connections"], body["nodes"]), (1, 1), body)
                msg = await frame_with_id(ws, body["id"])
                self.assertEqual(msg["data"], {"n": 1})
            finally:
                await ws.close()
        th.aio.run(go())

    def test_2_user_on_two_nodes(self):
        async def go():
            wa = await connect_user(self.a, "carol")
            wb = await connect_user(self.b, "carol")
            try:
                await wait_connected(self.a, "carol", 1)
                await wait_connected(self.b, "carol", 1)
                # Until B subscribes, A alone confirms (200, nodes 1): post until both do.
                deadline = time.time() + 10
                while True:
                    st, body = await notify(self.a, "carol", {"n": 2})
                    self.assertEqual(st, 200, body)
                    if body["nodes"] == 2 or time.time() > deadline:
                        break
                    await asyncio.sleep(0.05)
                self.assertEqual((body["connections"], body["nodes"]), (2, 2), body)
                for ws in (wa, wb):
                    self.assertEqual((await frame_with_id(ws, body["id"]))["data"], {"n": 2})
            finally:
                await wa.close()
                await wb.close()
        th.aio.run(go())

    def test_3_nobody(self):
        st, body = self.a.notify("nobody-anywhere", {"n": 3})
        self.assertEqual(st, 404, body)
        self.assertEqual(body["status"], "not_connected")

    def test_3_subjects_hold_one_user_each(self):
        """Ids that would be NATS wildcards or tokens name only themselves."""
        async def go():
            ws = await connect_user(self.b, "x.>")
            try:
                await wait_connected(self.b, "x.>", 1)
                st, body = await notify_until(self.a, "x.>", 200, {"n": 8})
                self.assertEqual((st, body["connections"], body["nodes"]), (200, 1, 1), body)
                self.assertEqual((await frame_with_id(ws, body["id"]))["data"], {"n": 8})
                for other in ("x.y", "x.*", "x", ">", "x. >"):
                    st, body = await notify(self.a, other, {"n": 9})
                    self.assertEqual(st, 404, (other, body))
            finally:
                await ws.close()
        th.aio.run(go())

    def test_4_broker_down(self):
        async def go():
            wd = await connect_user(self.a, "dave")
            we = await connect_user(self.b, "erin")
            try:
                await wait_connected(self.a, "dave", 1)
                await wait_connected(self.b, "erin", 1)
                st, body = await notify_until(self.a, "erin", 200, {"n": 4})
                self.assertEqual(st, 200, body)
                self.__class__.nats.terminate()
                await in_thread(self.__class__.nats.wait, 10)
                # A notices the broker's EOF at once; until then a publish may still go out.
                st, body = await notify_until(self.a, "erin", 503, {"n": 5})
                self.assertEqual(st, 503, body)
                self.assertEqual(body["status"], "unavailable")
                st, body = await notify(self.a, "dave", {"n": 6})
                self.assertEqual(st, 200, body)
                self.assertEqual(body["connections"], 1, body)
                self.assertEqual((await frame_with_id(wd, body["id"]))["data"], {"n": 6})
                st, body = await notify(self.a, "nobody-anywhere", {"n": 7})
                self.assertEqual(st, 503, body)  # may be elsewhere: never a false 404
                # Broker back on the same port: libnats reconnects and restores B's
                # subscriptions; cross-node delivery resumes without a restart.
                self.__class__.nats = subprocess.Popen(
                    [NATS, "-a", "127.0.0.1", "-p", str(self.nats_port)],
                    stdout=self.nats_log, stderr=self.nats_log)
                st, body = await notify_until(self.a, "erin", 200, {"n": 10}, timeout=15)
                self.assertEqual((st, body["connections"], body["nodes"]), (200, 1, 1), body)
                self.assertEqual((await frame_with_id(we, body["id"]))["data"], {"n": 10})
            finally:
                await wd.close()
                await we.close()
        th.aio.run(go())


if __name__ == "__main__":
    unittest.main(verbosity=2)
