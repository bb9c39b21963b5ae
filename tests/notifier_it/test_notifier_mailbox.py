"""The notifier's side of the mailbox, against real `tether run` groups:
202 stored / 200 delivered replies with seq, frames carrying seq and epoch
(read by python3-websockets), ttl_s, idempotent retries (also inside a
batch), a notifier killed with SIGKILL between storing and replying then
the backend's retry with the same id (one delivery), a graceful restart
keeping the epoch and the entries (and a layout change not keeping them),
TTL expiry, the per-user and byte bounds, presence, metrics, tether-dump.
Resume itself (?since=) is tests/recovery's."""
import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: harness

import harness as th  # noqa: E402
from harness.aio import api, app_ping, connect_user, in_thread, notify, run, wait_connected  # noqa: E402
from harness.faults import Freeze, role_pids  # noqa: E402


def metric(g, name):
    st, text = g.api("GET", "/metrics")
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError("no metric %s" % name)


def mailbox(g, user=None):
    return g.dump(user)["mailbox"]


def seqs_of(g, user):
    return [e["seq"] for e in mailbox(g, user)["user"]["entries"]]


async def next_note(ws, timeout=5):
    """The next notification frame (pongs skipped)."""
    while True:
        msg = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if msg.get("type") != "pong":
            return msg


async def no_more_notes(ws):
    """Nothing but the pong of a ping arrives: no further notification is queued."""
    msg = await app_ping(ws)
    if msg.get("type") != "pong":
        raise AssertionError("unexpected frame %r" % msg)


class Replies(unittest.TestCase):
    def test_stored_delivered_frames_presence_metrics(self):
        with th.Group(workers=2) as g:
            st, body = g.notify("off1", {"n": 1}, nid="a-1")
            self.assertEqual(st, 202, body)
            self.assertEqual((body["status"], body["seq"], body["id"]), ("stored", 1, "a-1"))
            self.assertEqual(body["expires_in_s"], 120)
            self.assertIsNone(body["last_seen"])
            st, body = g.notify("off1", {"n": 2})
            self.assertEqual((st, body["seq"]), (202, 2))
            st, p = g.api("GET", "/v1/presence/off1")
            self.assertEqual(p["mailbox"], {"pending": 2, "seq": 2})
            st, p = g.api("GET", "/v1/presence/nobody")
            self.assertEqual(p["mailbox"], {"pending": 0, "seq": 0})

            async def go():
                ws = await connect_user(g, "on1")
                await wait_connected(g, "on1", 1)
                st, body = await notify(g, "on1", {"k": 7}, nid="b-1")
                self.assertEqual((st, body["status"], body["seq"], body["connections"]), (200, "delivered", 1, 1))
                msg = await next_note(ws)
                self.assertEqual((msg["id"], msg["seq"], msg["data"]), ("b-1", 1, {"k": 7}))
                self.assertEqual(msg["epoch"], mailbox(g)["epoch"])
                self.assertRegex(msg["epoch"], "^[0-9a-f]{16}$")
                self.assertEqual(list(msg)[:5], ["type", "id", "seq", "epoch", "timestamp"])
                st, body = await notify(g, "on1", {"k": 8})
                self.assertEqual((st, body["seq"]), (200, 2))
                self.assertEqual((await next_note(ws))["seq"], 2)
                await ws.close()
            run(go())
            self.assertEqual(metric(g, 'tether_notifications_total{status="stored"}'), 2)
            self.assertEqual(metric(g, "tether_mailbox_stored_total"), 4)
            self.assertEqual(metric(g, "tether_mailbox_entries"), 4)
            self.assertGreater(metric(g, "tether_mailbox_bytes"), 4 * 64)
            self.assertEqual(seqs_of(g, "off1"), [1, 2])
            mb = mailbox(g, "on1")
            self.assertEqual((mb["entries"], mb["user"]["seq"]), (4, 2))

    def test_ttl_s_zero_and_bad_values(self):
        with th.Group(workers=1) as g:
            st, body = g.notify("z1")
            self.assertEqual((st, body["seq"]), (202, 1))
            st, body = g.api("POST", "/v1/notify", {"user_id": "z1", "type": "t", "ttl_s": 0})
            self.assertEqual((st, body["status"]), (404, "not_connected"), body)
            st, body = g.api("POST", "/v1/notify", {"user_id": "z1", "type": "t", "ttl_s": 5})
            self.assertEqual((st, body["seq"], body["expires_in_s"]), (202, 3, 5), body)
            st, body = g.api("POST", "/v1/notify", {"user_id": "z1", "type": "t", "ttl_s": 999999})
            self.assertEqual((st, body["expires_in_s"]), (202, 120), "capped at --mailbox-ttl")
            for bad in (-1, 1.5, "10", True):
                st, body = g.api("POST", "/v1/notify", {"user_id": "z1", "type": "t", "ttl_s": bad})
                self.assertEqual(st, 400, (bad, body))
                self.assertIn("ttl_s", body["error"])
            self.assertEqual(seqs_of(g, "z1"), [1, 3, 4], "seq 2 was not stored")

    def test_mailbox_off_is_todays_404(self):
        with th.Group(workers=1, extra_args=["--mailbox-ttl", "0"]) as g:
            st, body = g.notify("o1", nid="x")
            self.assertEqual(st, 404, body)
            self.assertNotIn("seq", body)
            st, p = g.api("GET", "/v1/presence/o1")
            self.assertNotIn("mailbox", p)
            self.assertIsNone(g.dump()["mailbox"])

            async def go():
                ws = await connect_user(g, "o2")
                await wait_connected(g, "o2", 1)
                st, body = await notify(g, "o2")
                self.assertEqual(st, 200)
                self.assertNotIn("seq", await next_note(ws))
                await ws.close()
            run(go())


class Idempotency(unittest.TestCase):
    def test_retry_same_id_same_result_one_delivery(self):
        with th.Group(workers=2) as g:
            st1, b1 = g.notify("i1", {"v": 1}, nid="req-1")
            st2, b2 = g.notify("i1", {"v": 2}, nid="req-1")
            self.assertEqual((st1, st2, b1["seq"], b2["seq"]), (202, 202, 1, 1))
            self.assertEqual(seqs_of(g, "i1"), [1], "stored once")
            st, b = g.notify("i2", nid="req-1")  # the key is per user
            self.assertEqual((st, b["seq"]), (202, 1))

            async def go():
                ws = await connect_user(g, "i3")
                await wait_connected(g, "i3", 1)
                st, b = await notify(g, "i3", {"v": 1}, nid="req-9")
                self.assertEqual((st, b["seq"]), (200, 1))
                self.assertEqual((await next_note(ws))["seq"], 1)
                st, b = await notify(g, "i3", {"v": 1}, nid="req-9")
                self.assertEqual((st, b["seq"], b["connections"]), (200, 1, 1), b)
                await no_more_notes(ws)
                # The same id twice in one batch: the second waits for the first's result.
                st, b = await api(g, "POST", "/v1/notify/batch",
                                  [{"user_id": "i3", "type": "t", "id": "req-10"},
                                   {"user_id": "i3", "type": "t", "id": "req-10"},
                                   {"user_id": "i3", "type": "t", "id": "req-11"}])
                res = b["results"]
                self.assertEqual([(r["code"], r["seq"]) for r in res], [(200, 2), (200, 2), (200, 3)], b)
                self.assertEqual([(await next_note(ws))["seq"] for _ in range(2)], [2, 3])
                await no_more_notes(ws)
                await ws.close()
            run(go())
            self.assertEqual(metric(g, "tether_mailbox_duplicates_total"), 3)

    def test_notifier_killed_between_store_and_reply_then_retry(self):
        # The only worker is frozen (ptrace, not a stop signal; never declared hung)
        # while the notifier waits for its confirmation: the notification is stored,
        # handed to the worker's socket, and the notifier dies before it can answer.
        args = ["--hung-after", "600", "--handoff-timeout-ms", "60000"]
        with th.Group(workers=1, extra_args=args) as g:
            async def go():
                ws = await connect_user(g, "k1")
                await wait_connected(g, "k1", 1)
                pids = role_pids(g)
                fr = Freeze(pids["tether-worker0"]).freeze()
                first = {}
                t = threading.Thread(target=lambda: first.update(r=safe_notify(g, "k1", "req-k")))
                t.start()
                try:
                    self.assertTrue(await in_thread(th.wait_until, lambda: seqs_of(g, "k1") == [1], 10),
                                    "stored before the reply")
                    os.kill(pids["tether-notifier"], signal.SIGKILL)
                    await in_thread(t.join, 15)
                    self.assertNotIn(200, [first.get("r", (None,))[0]], "the first request got no answer")
                    self.assertTrue(await in_thread(th.wait_until,
                                                    lambda: role_pids(g).get("tether-notifier") not in
                                                    (None, pids["tether-notifier"]), 15))
                finally:
                    fr.thaw()
                st, b = await in_thread(retry_until_answered, g, "k1", "req-k")
                self.assertEqual((st, b["seq"]), (200, 1), b)
                msg = await next_note(ws)
                self.assertEqual((msg["id"], msg["seq"]), ("req-k", 1))
                await no_more_notes(ws)  # one delivery, not two
                st, b = await notify(g, "k1", nid="req-k")
                self.assertEqual((st, b["seq"]), (200, 1), "the outcome is recorded now")
                await no_more_notes(ws)
                await ws.close()
            run(go(), 90)
            self.assertEqual(seqs_of(g, "k1"), [1])


def safe_notify(g, user, nid):
    try:
        return g.notify(user, nid=nid)
    except OSError as e:  # the notifier died under the request
        return (None, str(e))


def retry_until_answered(g, user, nid, timeout=15):
    """What a backend does after a timeout: retry with the same id until it gets an answer."""
    result = []

    def ok():
        r = safe_notify(g, user, nid)
        if r[0] in (200, 202):
            result.append(r)
            return True
        return False
    if not th.wait_until(ok, timeout, 0.2):
        raise AssertionError("no answer to the retry")
    return result[0]


class Restart(unittest.TestCase):
    def test_graceful_restart_keeps_epoch_and_entries(self):
        name = "/tether-it-mbx-%d" % os.getpid()
        g1 = th.Group(workers=1, shm_name=name, keep_mailbox=True).start()
        try:
            for k in range(3):
                self.assertEqual(g1.notify("r1", {"k": k})[1]["seq"], k + 1)
            epoch = mailbox(g1)["epoch"]
        finally:
            g1.finish()
        self.assertTrue(os.path.exists("/dev/shm" + name + ".mailbox"), "kept after SIGTERM")
        self.assertFalse(os.path.exists("/dev/shm" + name), "the registry is removed")
        out = subprocess.run([os.path.join(th.BIN, "tether-dump"), "--shm-name", name, "--json", "--user", "r1"],
                             capture_output=True, timeout=30)
        self.assertEqual(out.returncode, 1, "no segment")
        left = json.loads(out.stdout)["mailbox"]
        self.assertEqual((left["epoch"], [e["seq"] for e in left["user"]["entries"]]), (epoch, [1, 2, 3]))
        g2 = th.Group(workers=1, shm_name=name, keep_mailbox=True).start()
        try:
            self.assertTrue(g2.wait_log("mailbox re-attached"))
            self.assertEqual(mailbox(g2)["epoch"], epoch)
            self.assertEqual(seqs_of(g2, "r1"), [1, 2, 3])
            st, body = g2.notify("r1")
            self.assertEqual((st, body["seq"]), (202, 4), "the seq counter survived too")
        finally:
            g2.finish()
        # A layout change (--mailbox-per-user) cannot keep it: a new epoch, nothing stored.
        g3 = th.Group(workers=1, shm_name=name, extra_args=["--mailbox-per-user", "8"]).start()
        try:
            self.assertTrue(g3.wait_log("not kept (its layout differs"))
            self.assertNotEqual(mailbox(g3)["epoch"], epoch)
            self.assertEqual(seqs_of(g3, "r1"), [])
        finally:
            g3.finish()
        self.assertFalse(os.path.exists("/dev/shm" + name + ".mailbox"))


class Startup(unittest.TestCase):
    def test_mailbox_larger_than_shared_memory_refused(self):
        g = th.Group(workers=1, extra_args=["--mailbox-bytes", str(1 << 40)])
        with self.assertRaises(RuntimeError) as cm:
            g.start()
        g.close()
        self.assertIn("tether run exited 1", str(cm.exception))
        self.assertIn("of shared memory is free", g.log())
        self.assertFalse(os.path.exists("/dev/shm" + g.shm_name + ".mailbox"))
        self.assertFalse(os.path.exists("/dev/shm" + g.shm_name))


class Bounds(unittest.TestCase):
    def test_ttl_expiry(self):
        # The TTL is also how long the test has between the first store and
        # the look at both: with 2 s, a test process that waited 2.2 s for a
        # CPU there (provoked with a sleep) saw [] instead of [1, 2].
        ttl = 5
        with th.Group(workers=1, extra_args=["--mailbox-ttl", str(ttl)]) as g:
            self.assertEqual(g.notify("t1")[0], 202)
            self.assertEqual(g.notify("t1")[1]["expires_in_s"], ttl)
            self.assertEqual(seqs_of(g, "t1"), [1, 2])
            self.assertTrue(th.wait_until(lambda: metric(g, 'tether_mailbox_evicted_total{reason="ttl"}') == 2,
                                          ttl + 4))
            st, p = g.api("GET", "/v1/presence/t1")
            self.assertEqual(p["mailbox"], {"pending": 0, "seq": 2})
            self.assertEqual(metric(g, "tether_mailbox_entries"), 0)
            self.assertEqual(g.notify("t1")[1]["seq"], 3)

    def test_per_user_bound(self):
        with th.Group(workers=1, extra_args=["--mailbox-per-user", "3"]) as g:
            for k in range(5):
                g.notify("p1", {"k": k})
            g.notify("p2")
            self.assertEqual(seqs_of(g, "p1"), [3, 4, 5])
            self.assertEqual(metric(g, 'tether_mailbox_evicted_total{reason="per_user"}'), 2)
            st, p = g.api("GET", "/v1/presence/p1")
            self.assertEqual(p["mailbox"], {"pending": 3, "seq": 5})

    def test_byte_bound_oldest_first(self):
        with th.Group(workers=1, extra_args=["--mailbox-bytes", "1048576"]) as g:
            big = {"blob": "x" * 30000}
            for k in range(60):  # ~1.8 MiB into a log of about 0.6 MiB
                self.assertEqual(g.notify("b%d" % (k % 3), big)[0], 202)
            mb = mailbox(g)
            self.assertGreater(mb["evicted"]["full"], 0)
            self.assertLessEqual(mb["log_bytes"], mb["bytes_total"])
            kept = {u: seqs_of(g, u) for u in ("b0", "b1", "b2")}
            for u, s in kept.items():
                self.assertEqual(s[-1], 20, "the newest of %s is kept" % u)
                self.assertEqual(s, list(range(s[0], 21)), "the oldest went first")
            self.assertEqual(sum(map(len, kept.values())) + mb["evicted"]["full"], 60)
            st, body = g.notify("b0", {"blob": "y" * 60000})
            self.assertEqual((st, body["seq"]), (202, 21), "a frame near the limit still fits")


if __name__ == "__main__":
    unittest.main(verbosity=2)
