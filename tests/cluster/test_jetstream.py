"""The cluster mailbox in JetStream (issue 13; CONTRACT "Recovery", "Cluster"),
real processes on loopback: one Debian nats-server with JetStream (-js, its
store in a temp dir removed at teardown) and three tether groups a, b, c
with --nats and the mailbox on; Debian's python3-websockets as the client.

- a notification for a user with no connection is stored (202 + seq) and a
  client resuming on a different node gets it (recovered true), then live
  frames after it;
- since+epoch on a third node after more offline notifications: exactly the
  missed ones, in order, recovered true;
- a whole node killed with SIGKILL (supervisor and every role) right after
  accepting notifications for offline clients: nothing is lost when they
  resume on another node;
- two nodes accept notifications for one user at the same time: every seq
  answered is distinct, and a resume elsewhere replays them all in strictly
  increasing seq order;
- the same id posted again to another node: the first seq, stored once;
- a node's notifier (its mirror) killed with SIGKILL while another node
  stores for its client: a resume there waits for the restarted notifier's
  refill and gets everything (recovered true);
- a message put in the stream by a raw NATS client with a frame that is not
  UTF-8, or a Tether-At inside a character, is dropped by the mirrors: the
  user's client never gets it (and stays connected), a resume never replays it;
- a Tether-Ttl past --mailbox-ttl (whose nanoseconds wrap around 2^64) keeps
  the cached entry --mailbox-ttl, not a wrapped fraction of a second;
- a node's notifier SIGSTOPped while another node stores for its client: a
  resume there waits (the notifier's pid is alive but it mirrors nothing),
  the supervisor replaces it after --hung-after, and the resume gets every
  notification (recovered true);
- JetStream away (nats-server stopped): a user held here still gets the
  frame and the reply says "stored":false; a user held nowhere gets 503,
  never 202; the server back (same store): stores work again, same epoch.
Waits are bounded conditions (mirror caught up, presence), never sleeps
standing in for them.
"""
import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: harness

import harness as th  # noqa: E402
from harness.aio import connect, in_thread, nothing_more, notify, wait_connected  # noqa: E402
from harness.faults import role_pids  # noqa: E402
from harness.nats import NatsServer, bare_send, finish_all, kill_group  # noqa: E402

CAUGHT_UP = "JetStream mirror caught up"


def resume_url(g, user, since=None, epoch=None):
    url = g.ws_url(user)
    if since is not None:
        url += "&since=%d" % since
    if epoch:
        url += "&epoch=" + epoch
    return url


async def recv_json(ws, timeout=10):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def resume(g, user, since, epoch=None, n=None, timeout=10):
    """Connect resuming; return (ws, resumed frame, the first n notifications:
    replayed, then live). n defaults to the replay count. A notification
    another node stored a moment ago may reach this node's cache just after
    the resume's snapshot: the mirror then hands it over live, after the
    replay, which is just as gap-free; so tests count frames, not "replay"."""
    ws = await connect(resume_url(g, user, since, epoch))
    r = await recv_json(ws, timeout)
    assert r.get("type") == "resumed", r
    frames = [await recv_json(ws, timeout) for _ in range(r["replay"] if n is None else n)]
    return ws, r, frames


def new_group(nats_urls, node, extra=()):
    return th.Group(workers=1, extra_args=["--nats", nats_urls, "--node", node,
                                           "--mailbox-per-user", "256"] + list(extra))


def start_caught_up(groups):
    for g in groups:
        g.start()
    for g in groups:
        if not g.wait_log(CAUGHT_UP, timeout=30):
            raise RuntimeError("node's mirror never caught up:\n" + g.log()[-4000:])


class JetStreamMailbox(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="tether-js-")
        cls.nats = NatsServer(jetstream=True).start()
        cls.groups = [new_group(cls.nats.url, n) for n in ("a", "b", "c")]
        cls.a, cls.b, cls.c = cls.groups
        try:
            start_caught_up(cls.groups)
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        finish_all(cls.groups, [cls.nats], cls.tmp)

    def post(self, g, user, data, nid=None):
        st, body = g.notify(user, data, nid=nid)
        self.assertIn(st, (200, 202), body)
        self.assertNotIn("stored", body)  # "stored":false only when JetStream failed
        return body

    def post_stored(self, g, user, data):
        """post, where the user's node may still be subscribed for a moment after
        its notifier was SIGKILLed (the broker has not yet seen the socket close):
        the asking node then waits for a confirmation that cannot come and answers
        503 at the handoff timeout, honestly, with the seq it stored."""
        st, body = g.notify(user, data)
        self.assertIn(st, (200, 202, 503), body)
        self.assertIn("seq", body, body)
        self.assertNotIn("stored", body)
        return body

    def test_1_offline_then_resume_on_another_node(self):
        async def go():
            body = self.post(self.a, "js-alice", {"n": 1})
            self.assertEqual(body["status"], "stored", body)
            ws, r, frames = await resume(self.b, "js-alice", 0, n=1)
            try:
                self.assertTrue(r["recovered"], r)
                self.assertEqual([f["seq"] for f in frames], [body["seq"]])
                self.assertEqual(frames[0]["data"], {"n": 1})
                self.assertEqual(frames[0]["epoch"], r["epoch"])
                await wait_connected(self.b, "js-alice", 1)
                # Live after the replay, posted to the third node: b's mirror hands it
                # over even before b's interest reaches c.
                b2 = self.post(self.c, "js-alice", {"n": 2})
                got = await recv_json(ws)
                self.assertEqual((got["seq"], got["data"]), (b2["seq"], {"n": 2}), got)
                self.assertGreater(got["seq"], body["seq"])
            finally:
                await ws.close()
        th.aio.run(go())

    def test_2_since_epoch_on_a_third_node(self):
        async def go():
            first = self.post(self.a, "js-bob", {"n": 0})
            ws, r, frames = await resume(self.b, "js-bob", 0, n=1)
            await ws.close()
            epoch = r["epoch"]
            self.assertEqual([f["seq"] for f in frames], [first["seq"]])
            await wait_for_gone(self.b, "js-bob")
            seqs = [self.post(self.b, "js-bob", {"n": i})["seq"] for i in range(1, 6)]
            ws, r, frames = await resume(self.c, "js-bob", first["seq"], epoch, n=5)
            try:
                self.assertEqual((r["recovered"], r["epoch"]), (True, epoch), r)
                self.assertEqual([f["seq"] for f in frames], seqs)
                self.assertEqual([f["data"]["n"] for f in frames], [1, 2, 3, 4, 5])
            finally:
                await ws.close()
        th.aio.run(go())

    def test_3_same_id_on_another_node_stored_once(self):
        # Sequential: b's cache already has the id from the stream (answered from it).
        one = self.post(self.a, "js-carol", {"n": 1}, nid="order-17")
        two = self.post(self.b, "js-carol", {"n": 1}, nid="order-17")
        self.assertEqual((two["seq"], two["id"]), (one["seq"], "order-17"), (one, two))
        # At once on two nodes: neither cache has it yet, the stream's de-duplication answers.
        rounds = 10
        answers = {}

        def post(g, nid, key):
            answers[key] = g.notify("js-carol", {"n": nid}, nid=nid)

        for k in range(rounds):
            nid = "retry-%d" % k
            ts = [threading.Thread(target=post, args=(g, nid, (k, g.shm_name))) for g in (self.a, self.b)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(30)
        seqs = []
        for k in range(rounds):
            pair = [answers[(k, g.shm_name)] for g in (self.a, self.b)]
            for st, body in pair:
                self.assertIn(st, (200, 202), body)
            self.assertEqual(pair[0][1]["seq"], pair[1][1]["seq"], pair)
            seqs.append(pair[0][1]["seq"])

        async def go():
            ws, r, frames = await resume(self.c, "js-carol", 0, n=1 + rounds)
            try:
                self.assertTrue(r["recovered"], r)
                self.assertTrue(await nothing_more(ws), "stored once")
                self.assertEqual([f["seq"] for f in frames], [one["seq"]] + sorted(seqs))
            finally:
                await ws.close()
        th.aio.run(go())
        dups = 0
        for g in (self.a, self.b):
            st, text = g.api("GET", "/metrics")
            for line in text.splitlines():
                if line.startswith(("tether_jetstream_duplicates_total ",
                                    "tether_mailbox_duplicates_total ")):
                    dups += int(line.split()[1])
        self.assertGreaterEqual(dups, 1 + rounds)  # every repeat answered as one

    def test_4_two_nodes_accept_at_once(self):
        n = 40
        answers = {"a": [], "b": []}

        def sender(g, key):
            for i in range(n):
                st, body = g.notify("js-dave", {"from": key, "i": i})
                answers[key].append((st, body))

        threads = [threading.Thread(target=sender, args=(g, k)) for g, k in ((self.a, "a"), (self.b, "b"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        seqs = []
        for key in answers:
            self.assertEqual(len(answers[key]), n)
            for st, body in answers[key]:
                self.assertEqual(st, 202, body)
                seqs.append(body["seq"])
            own = [b["seq"] for _, b in answers[key]]
            self.assertEqual(own, sorted(own), "one node's answers in posting order")
        self.assertEqual(len(set(seqs)), 2 * n, "every seq distinct")

        async def go():
            ws, r, frames = await resume(self.c, "js-dave", 0, n=2 * n)
            try:
                got = [f["seq"] for f in frames]
                self.assertTrue(r["recovered"], r)
                self.assertEqual(got, sorted(seqs))
                self.assertTrue(all(x < y for x, y in zip(got, got[1:])))
            finally:
                await ws.close()
        th.aio.run(go())

    def test_5_node_killed_nothing_lost(self):
        async def go():
            users = ["js-kill-%d" % i for i in range(5)]
            want = {}
            epoch = None
            for u in users:  # each client saw one notification on a, then went offline
                b0 = self.post(self.a, u, {"n": 0})
                ws, r, frames = await resume(self.a, u, 0, n=1)
                epoch = r["epoch"]
                await ws.close()
                want[u] = (b0["seq"], [])
            for u in users:
                await wait_for_gone(self.a, u)
            for i in range(1, 4):
                for u in users:
                    want[u][1].append(self.post(self.a, u, {"n": i})["seq"])
            kill_group(self.a)
            for k, u in enumerate(users):
                g = (self.b, self.c)[k % 2]
                ws, r, frames = await resume(g, u, want[u][0], epoch, n=len(want[u][1]))
                try:
                    self.assertEqual((r["recovered"], r["epoch"]), (True, epoch), r)
                    self.assertEqual([f["seq"] for f in frames], want[u][1], u)
                finally:
                    await ws.close()
            # The node comes back (fresh shared memory): its mirror refills from the stream.
            self.a.close()
            na = new_group(self.nats.url, "a")
            self.__class__.groups[0] = self.__class__.a = na
            start_caught_up([na])
            ws, r, frames = await resume(na, users[0], want[users[0]][0], epoch,
                                         n=len(want[users[0]][1]))
            try:
                self.assertEqual((r["recovered"], [f["seq"] for f in frames]),
                                 (True, want[users[0]][1]), r)
            finally:
                await ws.close()
        th.aio.run(go(), timeout=90)

    async def seen_then_gone(self, user):
        """user's client on b gets one notification stored through c and
        leaves (its connection gone from b's registry): returns b's epoch, that
        notification's answer and the CAUGHT_UP lines b has logged so far."""
        ws, r, _ = await resume(self.b, user, 0)
        epoch = r["epoch"]
        await wait_connected(self.b, user, 1)
        first = self.post(self.c, user, {"n": 0})
        self.assertEqual((await recv_json(ws))["seq"], first["seq"])
        await ws.close()
        await wait_for_gone(self.b, user)
        return epoch, first, self.b.log().count(CAUGHT_UP)

    async def refilled(self, ws, r, epoch, seqs, caught):
        """After b's notifier was replaced: the resume answered r got every seq
        in seqs, in order, under its epoch (or said it was not recovered, only
        after the worker logged why: a slow restart), and b's new notifier
        caught up (one more CAUGHT_UP line than caught). Closes ws."""
        try:
            if not r["recovered"]:
                self.assertIn("cluster mailbox cache is still behind", self.b.log(), r)
            else:
                self.assertEqual(r["epoch"], epoch, r)
                frames = [await recv_json(ws) for _ in seqs]
                self.assertEqual([f["seq"] for f in frames], seqs)
        finally:
            await ws.close()
        self.assertTrue(th.wait_until(lambda: self.b.log().count(CAUGHT_UP) > caught, 20))

    def test_6_notifier_killed_cache_refills(self):
        """b's notifier (its mirror) SIGKILLed while others store for b's client:
        a resume on b waits for the new notifier's refill, nothing missing."""
        async def go():
            epoch, first, caught = await self.seen_then_gone("js-frank")
            os.kill(role_pids(self.b)["tether-notifier"], signal.SIGKILL)
            seqs = [self.post_stored(self.c, "js-frank", {"n": i})["seq"] for i in (1, 2, 3)]
            # At once: the worker waits (up to 10 s) while b's notifier is dead or refilling.
            ws, r, frames = await resume(self.b, "js-frank", first["seq"], epoch, n=0, timeout=20)
            await self.refilled(ws, r, epoch, seqs, caught)
        th.aio.run(go(), timeout=60)

    def test_6b_notifier_stopped_then_replaced(self):
        """b's notifier SIGSTOPped (alive by its pid, mirroring nothing) while c
        stores for b's client: a resume on b meanwhile waits for the cache instead
        of answering from it; the supervisor replaces the stopped notifier after
        --hung-after and the resume then gets everything, nothing missing. (It was
        answered at once, recovered true with nothing replayed, and the successor
        handed the three only to connections older than them: a gap.)"""
        async def go():
            epoch, first, caught = await self.seen_then_gone("js-gina")
            pid = role_pids(self.b)["tether-notifier"]
            os.kill(pid, signal.SIGSTOP)
            try:
                # The scenario is a notifier stopped for longer than a heartbeat (the worker
                # tells a stopped one by its beat, TH_HEARTBEAT_NS): a time, not a condition.
                await asyncio.sleep(0.3)
                seqs = [self.post_stored(self.c, "js-gina", {"n": i})["seq"] for i in (1, 2, 3)]
                ws, r, frames = await resume(self.b, "js-gina", first["seq"], epoch, n=0,
                                             timeout=30)
                # Stopped until the supervisor replaces it (a SIGCONT before would let it
                # mirror on and hand the three over live, hiding the gap).
                self.assertTrue(th.wait_until(
                    lambda: role_pids(self.b).get("tether-notifier") not in (None, pid), 30))
            finally:
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            await self.refilled(ws, r, epoch, seqs, caught)
        th.aio.run(go(), timeout=90)

    def test_7_stream_frames_clients_cannot_take(self):
        """Anyone allowed to publish on tether.m.* can put bytes in the stream: a
        message whose frame is not UTF-8, or whose Tether-At would splice seq and
        epoch into the middle of a character, is dropped by every mirror (counted,
        logged) instead of going to the user's client as a text frame (which the
        client must fail its connection on) or into the cache for replays."""
        user = "js-bad"
        hexu = user.encode().hex()
        bad = [(b'{"type":"x","id":"bad1","data":"\xff"}', 1),
               ('{"type":"x","id":"bad2","data":"\u00e9"}'.encode(), 33)]  # inside the e-acute
        async def go():
            ws = await connect(self.a.ws_url(user))
            try:
                await wait_connected(self.a, user, 1)
                logged = self.a.log().count("dropped a malformed stream message")
                for k, (body, at) in enumerate(bad):
                    await in_thread(hpub, self.nats.port, "tether.m." + hexu, [
                        ("Nats-Msg-Id", "%s-%s" % (hexu, ("bad%d" % (k + 1)).encode().hex())),
                        ("Tether-At", str(at)), ("Tether-Ttl", "60")], body)
                self.assertTrue(th.wait_until(lambda: self.a.log().count(
                    "dropped a malformed stream message") > logged, 10), self.a.log()[-3000:])
                body = self.post(self.b, user, {"n": 1})
                while True:  # nothing before it but frames that parse
                    msg = await recv_json(ws)
                    self.assertNotIn(msg.get("id"), ("bad1", "bad2"), msg)
                    if msg.get("id") == body["id"]:
                        break
                self.assertEqual(msg["data"], {"n": 1})
            finally:
                await ws.close()
            # One frame, replayed or live: c's mirror may apply b's store just
            # after the resume's snapshot (resume() says why that is gap-free).
            ws, r, frames = await resume(self.c, user, 0, n=1)
            try:
                self.assertEqual([f["id"] for f in frames], [body["id"]], (r, frames))
                self.assertTrue(await nothing_more(ws), "the frame came twice")
            finally:
                await ws.close()
        th.aio.run(go(), timeout=60)

    def test_8_stream_ttl_past_the_mailbox_ttl(self):
        """Tether-Ttl is at most --mailbox-ttl when a node writes it; a larger one
        from another publisher keeps the entry --mailbox-ttl, no longer and no
        shorter: 18446744074 s times 10^9 wraps around 2^64 to 0.29 s, and the
        mirrors used to drop the entry from their caches that soon."""
        user = "js-ttl"
        hexu = user.encode().hex()
        body = b'{"type":"x","id":"ttl1","data":{}}'
        async def go():
            await in_thread(hpub, self.nats.port, "tether.m." + hexu, [
                ("Nats-Msg-Id", "%s-%s" % (hexu, b"ttl1".hex())),
                ("Tether-At", str(len(b'{"type":"x","id":"ttl1"'))),
                ("Tether-Ttl", "18446744074")], body)
            self.assertTrue(th.wait_until(lambda: self.c.api("GET", "/v1/presence/" + user)[1]
                                          .get("mailbox", {}).get("seq", 0) > 0, 10))
            await asyncio.sleep(1.0)  # the time the bug needed: past the wrapped 0.29 s
            ws, r, frames = await resume(self.c, user, 0)
            try:
                self.assertEqual([f["id"] for f in frames], ["ttl1"], (r, frames))
            finally:
                await ws.close()
        th.aio.run(go(), timeout=60)

    def test_9_jetstream_down(self):
        async def go():
            ws = await connect(resume_url(self.b, "js-erin", 0))
            r = await recv_json(ws)
            epoch = r["epoch"]
            try:
                await wait_connected(self.b, "js-erin", 1)
                self.nats.stop()
                st, body = self.b.notify("js-erin", {"n": 1})
                self.assertEqual(st, 200, body)
                self.assertIs(body.get("stored"), False, body)
                got = await recv_json(ws)
                self.assertEqual(got["data"], {"n": 1})
                self.assertNotIn("seq", got)
                st, body = self.b.notify("js-nobody", {"n": 2})
                self.assertEqual(st, 503, body)
                self.assertIs(body.get("stored"), False, body)
                self.nats.start()
                deadline = time.time() + 20
                while True:
                    st, body = await notify(self.c, "js-nobody", {"n": 3})
                    if st == 202 or time.time() > deadline:
                        break
                    self.assertEqual(st, 503, body)
                    await asyncio.sleep(0.1)
                self.assertEqual(st, 202, body)
            finally:
                await ws.close()
            ws, r, frames = await resume(self.a, "js-nobody", 0, n=1)
            try:
                self.assertEqual(r["epoch"], epoch, "same stream, same epoch")
                self.assertEqual([f["data"]["n"] for f in frames], [3])
            finally:
                await ws.close()
        th.aio.run(go(), timeout=60)


def hpub(port, subject, headers, payload):
    """Publish one message with NATS headers from a bare protocol client."""
    hdr = b"NATS/1.0\r\n" + b"".join(b"%s: %s\r\n" % (k.encode(), v.encode())
                                      for k, v in headers) + b"\r\n"
    bare_send(port, b"HPUB %s %d %d\r\n%s%s\r\n"
              % (subject.encode(), len(hdr), len(hdr) + len(payload), hdr, payload), headers=True)


async def wait_for_gone(g, user, timeout=5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        st, body = await in_thread(g.api, "GET", "/v1/presence/" + user)
        if st == 200 and not body["connected"]:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("%s still connected" % user)


if __name__ == "__main__":
    unittest.main(verbosity=2)
