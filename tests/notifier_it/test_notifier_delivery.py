"""Notifier delivery through a real group: one user, two devices, not
connected (never seen and after a disconnect), backend-chosen ids, the
contract's log lines, presence and metrics shapes."""
import asyncio
import json
import os
import re
import signal
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: harness

import harness as th  # noqa: E402
from harness.aio import api, connect_user, notify, wait_connected  # noqa: E402



def user_hash(uid):
    """th_user_hash (shm/registry.c): FNV-1a, then murmur3's fmix32."""
    h = 2166136261
    for c in uid.encode():
        h = ((h ^ c) * 16777619) & 0xFFFFFFFF
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")

# These suites test what a user without a live connection gets today (404):
# the mailbox (202 stored) is tested in tests/notifier_it/test_notifier_mailbox.py.
NO_MAILBOX = ["--mailbox-ttl", "0"]


class Delivery(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.g = th.Group(workers=2, extra_args=NO_MAILBOX).start()

    @classmethod
    def tearDownClass(cls):
        cls.g.__exit__(None, None, None)

    def run_async(self, coro):
        return asyncio.run(asyncio.wait_for(coro, 30))

    def test_one_user_frame_content(self):
        async def go():
            ws = await connect_user(self.g, "alice")
            await wait_connected(self.g, "alice", 1)
            st, body = await notify(self.g, "alice", {"meal": "lunch", "kcal": 640})
            self.assertEqual(st, 200, body)
            self.assertEqual(body["status"], "delivered")
            self.assertEqual(body["user_id"], "alice")
            self.assertEqual(body["connections"], 1)
            self.assertTrue(body["id"])
            frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
            self.assertEqual(list(frame), ["type", "id", "timestamp", "data"])
            self.assertEqual(frame["type"], "meal_log.completed")
            self.assertEqual(frame["id"], body["id"])
            self.assertRegex(frame["timestamp"], RFC3339)
            self.assertEqual(frame["data"], {"meal": "lunch", "kcal": 640})
            await ws.close()
        self.run_async(go())
        log = self.g.log()
        self.assertIn("[Notifier] Attempting to send notification to user alice", log)
        self.assertIn("[Notifier] User alice IS connected - sending notification", log)

    def test_backend_id_and_generated_ids_unique(self):
        async def go():
            ws = await connect_user(self.g, "idu")
            await wait_connected(self.g, "idu", 1)
            st, body = await notify(self.g, "idu", {}, nid="backend-42")
            self.assertEqual((st, body["id"]), (200, "backend-42"))
            self.assertEqual(json.loads(await ws.recv())["id"], "backend-42")
            ids = set()
            for _ in range(5):
                st, body = await notify(self.g, "idu")
                self.assertEqual(st, 200)
                ids.add(body["id"])
                self.assertEqual(json.loads(await ws.recv())["id"], body["id"])
            self.assertEqual(len(ids), 5)
            await ws.close()
        self.run_async(go())

    def test_two_devices_both_receive(self):
        async def go():
            a = await connect_user(self.g, "bob")
            b = await connect_user(self.g, "bob")
            await wait_connected(self.g, "bob", 2)
            st, body = await notify(self.g, "bob", {"n": 1})
            self.assertEqual(st, 200, body)
            self.assertEqual(body["connections"], 2)
            fa = json.loads(await asyncio.wait_for(a.recv(), 5))
            fb = json.loads(await asyncio.wait_for(b.recv(), 5))
            self.assertEqual(fa, fb)
            self.assertEqual(fa["data"], {"n": 1})
            await a.close()
            await b.close()
        self.run_async(go())

    def test_four_devices_same_frame(self):
        """Four devices over two workers: at least two share a worker, whose
        requests then carry the frame once (TH_HO_F_SAME_FRAME); every
        device gets the same frame, each notification once."""
        async def go():
            devs = [await connect_user(self.g, "quad") for _ in range(4)]
            await wait_connected(self.g, "quad", 4)
            for k in range(3):
                st, body = await notify(self.g, "quad", {"k": k, "pad": "x" * 300})
                self.assertEqual((st, body["connections"]), (200, 4), body)
            got = [[json.loads(await asyncio.wait_for(d.recv(), 5)) for _ in range(3)] for d in devs]
            for frames in got:
                self.assertEqual(frames, got[0])
            self.assertEqual([f["data"]["k"] for f in got[0]], [0, 1, 2])
            for d in devs:
                await d.close()
        self.run_async(go())

    def test_batch_items_and_counts_exact(self):
        """A batch's outcomes are counted once the answer is out (the notifier
        adds them to the segment once per loop iteration, before answers
        leave): /metrics right after the answer shows every item."""
        def counts():
            st, text = self.g.api("GET", "/metrics")
            self.assertEqual(st, 200)
            return {k: int(re.search(r'status="%s"\} (\d+)' % k, text).group(1))
                    for k in ("delivered", "not_connected")}

        async def go():
            ws = await connect_user(self.g, "bcount")
            await wait_connected(self.g, "bcount", 1)
            before = counts()
            items = [{"user_id": "bcount" if k % 2 == 0 else "bcount-nobody-%d" % k, "type": "t",
                      "data": {"k": k}} for k in range(7)]
            st, body = await api(self.g, "POST", "/v1/notify/batch", items)
            self.assertEqual(st, 200, body)
            self.assertEqual([r["code"] for r in body["results"]], [200, 404, 200, 404, 200, 404, 200])
            self.assertEqual([r["user_id"] for r in body["results"]], [i["user_id"] for i in items])
            after = counts()
            self.assertEqual(after["delivered"] - before["delivered"], 4)
            self.assertEqual(after["not_connected"] - before["not_connected"], 3)
            frames = [json.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(4)]
            self.assertEqual([f["data"]["k"] for f in frames], [0, 2, 4, 6])
            self.assertEqual([f["id"] for f in frames], [body["results"][k]["id"] for k in (0, 2, 4, 6)])
            for f in frames:
                self.assertRegex(f["timestamp"], RFC3339)
            await ws.close()
        self.run_async(go())

    def test_hash_twin_is_not_this_user(self):
        """Two ids with the same registry hash (th_user_hash): the notify
        path's index-only lookup names the connected twin's slot for the other
        one too, and the owner worker's check against its slot turns it away:
        404 with nothing delivered, never a frame to the wrong user; the real
        user still gets exactly its own notifications, singly and in a batch."""
        twin, other = "nmnazuedof", "cufsryzrur"  # found by a birthday search over random ids
        self.assertEqual(user_hash(twin), user_hash(other), "the pair no longer collides")

        async def go():
            ws = await connect_user(self.g, twin)
            await wait_connected(self.g, twin, 1)
            st, body = await notify(self.g, other, {"for": "other"})
            self.assertEqual((st, body), (404, {"status": "not_connected", "user_id": other, "last_seen": None}))
            st, body = await api(self.g, "POST", "/v1/notify/batch",
                                 [{"user_id": u, "type": "t", "data": {"for": u}} for u in (other, twin, other)])
            self.assertEqual(st, 200, body)
            self.assertEqual([r["code"] for r in body["results"]], [404, 200, 404])
            self.assertEqual(body["results"][1]["connections"], 1)
            st, body = await notify(self.g, twin, {"for": "twin"})
            self.assertEqual((st, body["connections"]), (200, 1), body)
            frames = [json.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(2)]
            self.assertEqual([f["data"] for f in frames], [{"for": twin}, {"for": "twin"}])
            st, pres = await api(self.g, "GET", "/v1/presence/" + other)
            self.assertEqual((st, pres["connected"]), (200, False), pres)
            await ws.close()
        self.run_async(go())

    def test_never_seen(self):
        st, body = self.g.notify("ghost-never")
        self.assertEqual(st, 404)
        self.assertEqual(body, {"status": "not_connected", "user_id": "ghost-never", "last_seen": None})
        self.assertTrue(self.g.wait_log("[Notifier] User ghost-never NOT connected (never in registry)"))

    def test_after_disconnect_last_seen(self):
        async def go():
            ws = await connect_user(self.g, "carol")
            await wait_connected(self.g, "carol", 1)
            await ws.close()
            await wait_connected(self.g, "carol", 0)
        self.run_async(go())
        st, body = self.g.notify("carol")
        self.assertEqual(st, 404, body)
        self.assertEqual(body["status"], "not_connected")
        self.assertRegex(body["last_seen"], RFC3339)
        self.assertTrue(re.search(r"\[Notifier\] User carol NOT connected \(LastSeen: "
                                  r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ, [0-9.]+(ms|s) ago\)", self.g.log()))

    def test_presence_shape(self):
        async def go():
            ws = await connect_user(self.g, "dave")
            await wait_connected(self.g, "dave", 1)
            st, body = await api(self.g, "GET", "/v1/presence/dave")
            self.assertEqual(st, 200)
            self.assertEqual(set(body), {"user_id", "connected", "last_seen", "connections"})
            self.assertEqual(body["user_id"], "dave")
            self.assertIs(body["connected"], True)
            self.assertRegex(body["last_seen"], RFC3339)
            c = body["connections"][0]
            self.assertEqual(set(c), {"worker", "connected_at", "last_seen"})
            self.assertIn(c["worker"], (0, 1))
            await ws.close()
        self.run_async(go())
        st, body = self.g.api("GET", "/v1/presence/nobody-here")
        self.assertEqual((st, body), (200, {"user_id": "nobody-here", "connected": False,
                                            "last_seen": None, "connections": []}))
        st, body = self.g.api("GET", "/v1/presence/a%01b")
        self.assertEqual(st, 400)
        self.assertIn("error", body)

    def test_metrics_and_healthz_shape(self):
        self.g.notify("metrics-nobody")
        self.g.api("POST", "/v1/notify", "{bad")
        st, text = self.g.api("GET", "/metrics")
        self.assertEqual(st, 200)
        for name in ("tether_connections", "tether_pings_total", "tether_stale_evictions_total",
                     "tether_worker_restarts_total", "tether_notify_confirm_seconds_count",
                     "tether_api_connections", "tether_notifications_pending"):
            self.assertRegex(text, r"(?m)^%s \d+(\.\d+)?$" % name)
        for status in ("delivered", "not_connected", "unavailable", "bad_request"):
            self.assertRegex(text, r'(?m)^tether_notifications_total\{status="%s"\} \d+$' % status)
        nc = int(re.search(r'status="not_connected"\} (\d+)', text).group(1))
        bad = int(re.search(r'status="bad_request"\} (\d+)', text).group(1))
        self.assertGreaterEqual(nc, 1)
        self.assertGreaterEqual(bad, 1)
        st, body = self.g.api("GET", "/healthz")
        self.assertEqual(st, 200)
        self.assertEqual(body["status"], "ok")
        self.assertEqual([w["index"] for w in body["workers"]], [0, 1])
        self.assertTrue(all(w["alive"] for w in body["workers"]))
        self.assertTrue(body["janitor"]["alive"] and body["supervisor"]["alive"])


class Signals(unittest.TestCase):
    def test_sighup_reopens_log_and_sigterm_exits_0(self):
        g = th.Group(workers=1, extra_args=NO_MAILBOX)
        path = os.path.join(g.tmp, "api.log")
        g.args += ["--log-file", path]

        def read(p):
            with open(p, errors="replace") as f:
                return f.read()
        with g:
            g.notify("before-rotate")
            self.assertTrue(th.wait_until(lambda: "user before-rotate" in read(path), 10))
            os.rename(path, path + ".1")
            notifier = g.api("GET", "/healthz")[1]["notifier"]["pid"]
            os.kill(notifier, signal.SIGHUP)
            # The reopen happens on the notifier's next loop turn; keep asking until it shows.
            self.assertTrue(th.wait_until(
                lambda: g.notify("after-rotate")[0] == 404 and os.path.exists(path) and
                "[Notifier] Attempting to send notification to user after-rotate" in read(path), 10))
            self.assertEqual(g.stop(), 0)
        # Only the notifier got SIGHUP: the supervisor still writes to the rotated file.
        self.assertIn("notifier exited with status 0", read(path + ".1"))
        self.assertIn("[Notifier] stopped", read(path))


if __name__ == "__main__":
    unittest.main(verbosity=2)
