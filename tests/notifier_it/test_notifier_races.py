"""The notifier under churn and failure, against a real group:

- slots released and reused by other users between the registry lookup and
  the handoff never cause cross-delivery: every client checks it only ever
  receives its own user's notifications while other users churn;
- a worker that stops answering gets a 503 within the handoff bound, and its
  late replies are dropped harmlessly;
- a worker killed (kill -9) during a handoff: an answer within the bound, no
  hang, and delivery works again through the restarted worker.

A worker "that stops answering" is frozen with ptrace (harness.faults.Freeze)
in a group with a long --hung-after: a SIGSTOP would be seen by the
supervisor and declared hung at once, and the notifier then answers without
any handoff (tests/faults/test_hung.py covers that path).
"""
import asyncio
import http.client
import json
import os
import signal
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: harness

import harness as th  # noqa: E402
from harness.aio import connect_user, wait_connected, wait_for  # noqa: E402
from harness.faults import Freeze  # noqa: E402
from harness.rawhttp import post, raw_request  # noqa: E402

NOT_HUNG = ["--hung-after", "600"]  # the frozen worker must stay undeclared for the whole test

# These suites test what a user without a live connection gets today (404):
# the mailbox (202 stored) is tested in tests/notifier_it/test_notifier_mailbox.py.
NO_MAILBOX = ["--mailbox-ttl", "0"]


def notify_loop(port, users, stop, results):
    """Keep-alive notifier client: cycles through users until stop is set."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    i = 0
    while not stop.is_set():
        u = users[i % len(users)]
        i += 1
        body = json.dumps({"user_id": u, "type": "race", "data": {"to": u, "n": i}})
        conn.request("POST", "/v1/notify", body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        results.append((u, r.status, json.loads(r.read())))
    conn.close()


def pending(g):
    """tether_notifications_pending: notifications waiting for a worker's answer."""
    st, text = g.api("GET", "/metrics")
    return sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith("tether_notifications_pending"))


class Races(unittest.TestCase):
    def test_no_cross_delivery_under_churn(self):
        with th.Group(workers=2, slots=64, extra_args=NO_MAILBOX) as g:
            churners = ["churn-%d" % k for k in range(6)]
            wrong = []
            received = {"steady": 0}

            async def check(ws, user):
                async for msg in ws:
                    f = json.loads(msg)
                    if f["data"]["to"] != user:
                        wrong.append((user, f))
                    if user == "steady":
                        received["steady"] += 1

            async def churn(user, stop):
                while not stop.is_set():
                    ws = await connect_user(g, user)
                    t = asyncio.ensure_future(check(ws, user))
                    await asyncio.sleep(0.005)
                    await ws.close()
                    await t

            async def go():
                stop = threading.Event()
                steady = await connect_user(g, "steady")
                await wait_connected(g, "steady", 1)
                st_task = asyncio.ensure_future(check(steady, "steady"))
                results = []
                loop = asyncio.get_running_loop()
                senders = [loop.run_in_executor(None, notify_loop, g.api_port, churners + ["steady"], stop,
                                                results) for _ in range(3)]
                churns = [asyncio.ensure_future(churn(u, stop)) for u in churners]
                await asyncio.sleep(3)
                stop.set()
                await asyncio.gather(*senders, *churns)
                # Every notification confirmed (200) for steady reaches it: wait for that.
                steady_ok = sum(1 for u, st, b in results if u == "steady" and st == 200)
                await wait_for(lambda: received["steady"] >= steady_ok, 10)
                await steady.close()
                await st_task
                return results

            results = asyncio.run(asyncio.wait_for(go(), 60))
            self.assertEqual(wrong, [])
            codes = {}
            for u, st, body in results:
                codes[st] = codes.get(st, 0) + 1
                self.assertIn(st, (200, 404), body)
            steady_ok = sum(1 for u, st, b in results if u == "steady" and st == 200)
            self.assertEqual(received["steady"], steady_ok)
            self.assertGreater(codes.get(200, 0), 0)
            self.assertEqual(g.proc.poll(), None)

    def worker_of(self, g, user):
        """pid of the worker holding user's connection (presence + healthz;
        tether-dump --json shows the same)."""
        w = g.api("GET", "/v1/presence/" + user)[1]["connections"][0]["worker"]
        return [x["pid"] for x in g.api("GET", "/healthz")[1]["workers"] if x["index"] == w][0]

    def test_stopped_worker_503_then_recovers(self):
        with th.Group(workers=1, extra_args=["--handoff-timeout-ms", "200"] + NOT_HUNG + NO_MAILBOX) as g:
            async def go():
                ws = await connect_user(g, "sleepy")
                await wait_connected(g, "sleepy", 1)
                pid = self.worker_of(g, "sleepy")
                frozen = Freeze(pid).freeze()
                try:
                    t0 = time.time()
                    st, body = await asyncio.get_running_loop().run_in_executor(None, g.notify, "sleepy")
                    elapsed = time.time() - t0
                finally:
                    frozen.thaw()
                self.assertEqual(st, 503, body)
                self.assertEqual(body["status"], "unavailable")
                self.assertTrue(body["id"])
                # The bound at its value (tolerance: see test_delivery_promises.SLACK_S).
                self.assertGreaterEqual(elapsed, 0.2)
                self.assertLess(elapsed, 0.2 + (1.0 if th.SANITIZED else 0.4))
                # The late frame reaches the client; the late reply is dropped.
                first = json.loads(await asyncio.wait_for(ws.recv(), 5))
                self.assertEqual(first["id"], body["id"])
                st, body = await asyncio.get_running_loop().run_in_executor(None, g.notify, "sleepy")
                self.assertEqual(st, 200, body)
                self.assertEqual(json.loads(await asyncio.wait_for(ws.recv(), 5))["id"], body["id"])
                await ws.close()
            asyncio.run(asyncio.wait_for(go(), 30))
            st, text = g.api("GET", "/metrics")
            self.assertRegex(text, r'status="unavailable"\} [1-9]')

    def test_pipeline_of_pending_notifies_in_order(self):
        """600 notifies pipelined on one socket while the user's worker is
        stopped: reading pauses past 256 owed answers and resumes as they
        time out; every answer arrives, in order, within the bound."""
        with th.Group(workers=1, extra_args=NOT_HUNG + NO_MAILBOX) as g:
            async def go():
                ws = await connect_user(g, "held")
                await wait_connected(g, "held", 1)
                pid = self.worker_of(g, "held")
                frozen = Freeze(pid).freeze()
                try:
                    data = b"".join(post("/v1/notify", {"user_id": "held", "type": "t", "id": "p-%d" % i})
                                    for i in range(600))
                    t0 = time.time()
                    out = await asyncio.get_running_loop().run_in_executor(
                        None, lambda: raw_request(g.api_port, data, count=600, timeout=30))
                    elapsed = time.time() - t0
                finally:
                    frozen.thaw()
                self.assertEqual([json.loads(b)["id"] for _, _, b in out], ["p-%d" % i for i in range(600)])
                self.assertEqual({st for st, _, _ in out}, {503})
                self.assertLess(elapsed, 20)
                await ws.close()
            asyncio.run(asyncio.wait_for(go(), 60))

    def test_owed_answers_bound_pauses_reading(self):
        """One notify held by a frozen worker, then 15 batches of 10,000
        answered at once but owed behind it (150,000 > the 100,000 bound):
        reading pauses; once the worker resumes and confirms the first, every
        answer arrives, in order."""
        with th.Group(workers=1, extra_args=["--handoff-timeout-ms", "60000"] + NOT_HUNG + NO_MAILBOX) as g:
            async def go():
                ws = await connect_user(g, "held2")
                await wait_connected(g, "held2", 1)
                pid = self.worker_of(g, "held2")
                batch = post("/v1/notify/batch", [{"user_id": "gone-%d" % i, "type": "t"} for i in range(10000)])
                data = post("/v1/notify", {"user_id": "held2", "type": "t", "id": "first"}) + batch * 15
                frozen = Freeze(pid).freeze()
                loop = asyncio.get_running_loop()
                try:
                    fut = loop.run_in_executor(None, lambda: raw_request(g.api_port, data, count=16, timeout=60))
                    paused = await loop.run_in_executor(
                        None, g.wait_log, "notifications owed an answer: reading paused", 40)
                finally:
                    frozen.thaw()
                out = await fut
                self.assertTrue(paused, "reading never paused")
                self.assertEqual(out[0][0], 200)
                self.assertEqual(json.loads(out[0][2])["id"], "first")
                for st, _, raw in out[1:]:
                    self.assertEqual(st, 200)
                    res = json.loads(raw)["results"]
                    self.assertEqual(len(res), 10000)
                    self.assertEqual(res[-1]["user_id"], "gone-9999")
                self.assertEqual(json.loads(await ws.recv())["id"], "first")
                await ws.close()
            asyncio.run(asyncio.wait_for(go(), 120))

    def test_worker_killed_during_handoff(self):
        with th.Group(workers=1, extra_args=NOT_HUNG + NO_MAILBOX) as g:
            async def go():
                ws = await connect_user(g, "victim")
                await wait_connected(g, "victim", 1)
                pid = self.worker_of(g, "victim")
                frozen = Freeze(pid).freeze()  # hold the handoff open ...
                loop = asyncio.get_running_loop()
                t0 = time.time()
                fut = loop.run_in_executor(None, g.notify, "victim")
                # The notifier holds the handoff open (one notification pending) ...
                self.assertTrue(await wait_for(lambda: pending(g) >= 1, 10), "the handoff never started")
                os.kill(pid, signal.SIGKILL)  # ... and kill the worker in the middle of it
                self.assertTrue(th.wait_until(frozen.reap_killed, 5, 0.01))  # back to the supervisor
                st, body = await fut
                self.assertLess(time.time() - t0, 5)
                self.assertIn(st, (503, 404), body)
                try:
                    await ws.close()
                except Exception:
                    pass
                # The supervisor restarts the worker; delivery works through the new one.
                self.assertTrue(th.wait_until(lambda: g.api("GET", "/healthz")[0] == 200 and all(
                    w["pid"] != pid for w in g.api("GET", "/healthz")[1]["workers"]), 20), "worker not restarted")
                ws2 = await connect_user(g, "victim")
                await wait_connected(g, "victim", 1)
                st, body = await loop.run_in_executor(None, g.notify, "victim")
                self.assertEqual(st, 200, body)
                self.assertEqual(json.loads(await asyncio.wait_for(ws2.recv(), 5))["id"], body["id"])
                await ws2.close()
            asyncio.run(asyncio.wait_for(go(), 60))


if __name__ == "__main__":
    unittest.main(verbosity=2)
