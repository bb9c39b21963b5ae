"""The JetStream mailbox's corners (issue 13, second round; CONTRACT
"Recovery", "Cluster"), real processes on loopback: Debian's nats-server
with JetStream, two tether groups per class, python3-websockets clients.

- A client that stays connected to a node whose notifier (its JetStream
  mirror) was killed gets what another node stored meanwhile as soon as the
  restarted notifier has it, in order, each once, without waiting for a
  further notification or a resume of its own. The restarted notifier
  keeps the cache and mirrors on from where its predecessor was (no
  refill of the whole stream). A client that connected without since after
  they were stored does not get them (they were not live for it).
- ttl_s shorter than --mailbox-ttl holds on every node: a resume on
  another node, or on a node whose notifier restarted, never replays a
  notification whose own ttl_s has passed.
- Tether-Prev (the user's previous seq, which tells a node that never saw
  it that it left the stream) is exact even while two nodes write one user
  at once (published expecting the user's last seq; the stream corrects a
  stale one), and a user's notifications evicted by the per-user limit
  before a node mirrored them make a resume from before them
  recovered:false there, one from after them recovered:true.
- recovered stays exact when a notification left the stream (max age)
  before a node mirrored it: the node's broker connection is cut (a relay
  in front of nats-server, harness.nats.Cut) while another node stores,
  and the message expires before the connection is back; or the node's
  notifier is down until it expired. A resume there from before it
  answers recovered:false (it was true from the stale cache before), one
  from after it stays recovered:true.
- A resume answered recovered:true from a running notifier's cache while
  its mirror lags (the node's broker connections stalled in the relay: no
  timing window to hit) gets what another node stored before it, in order,
  each once, even when the notifier is killed before applying them: the
  successor's catch-up hands them to the resumed connection too (the
  worker takes them only for a connection that resumed), and a client that
  connected without since meanwhile does not get them.
Waits are bounded conditions (frames, the stream's first seq, log lines).
"""
import contextlib
import os
import signal
import sys
import tempfile
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: harness

import harness as th  # noqa: E402
from harness.aio import connect, nothing_more, wait_connected  # noqa: E402
from harness.faults import role_pids  # noqa: E402
from harness.nats import Cut, NatsServer, finish_all, local_count, stream_info, stream_msg  # noqa: E402
from test_jetstream import (CAUGHT_UP, recv_json, resume, resume_url,  # noqa: E402
                            start_caught_up, wait_for_gone)

STREAM = "TETHER_MAILBOX"
NO_REFILL = "no refill"


def group(nats_url, node, ttl):
    return th.Group(workers=1, extra_args=["--nats", nats_url, "--node", node,
                                           "--mailbox-ttl", str(ttl), "--mailbox-per-user", "64"])


@contextlib.contextmanager
def notifier_down(g):
    """g's notifier SIGKILLed and kept dead (its supervisor stopped) inside
    the block; restarted by the supervisor after it.

    A post to another node right after the kill may still find g's interest
    in the broker (nats-server has not yet read the dead connection's EOF,
    or g had not yet dropped a user it no longer holds): then nobody
    confirms and the answer is an honest 503 with the seq it stored, not
    202. Posts inside the block that only need the seq accept both."""
    os.kill(g.proc.pid, signal.SIGSTOP)
    try:
        os.kill(role_pids(g)["tether-notifier"], signal.SIGKILL)
        yield
    finally:
        os.kill(g.proc.pid, signal.SIGCONT)


class Base(unittest.TestCase):
    TTL = 120
    CUT = False

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="tether-jsgaps-")
        cls.nats = NatsServer(jetstream=True).start()
        cls.cut = Cut(cls.nats.port) if cls.CUT else None
        b_url = cls.cut.url if cls.cut else cls.nats.url
        cls.groups = [group(cls.nats.url, "a", cls.TTL), group(b_url, "b", cls.TTL)]
        cls.a, cls.b = cls.groups
        try:
            start_caught_up(cls.groups)
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        if cls.cut:
            cls.cut.close()
        finish_all(cls.groups, [cls.nats], cls.tmp)

    def post(self, g, user, data, ttl_s=None, ok=(200, 202)):
        body = {"user_id": user, "type": "meal_log.completed", "data": data}
        if ttl_s is not None:
            body["ttl_s"] = ttl_s
        st, body = g.api("POST", "/v1/notify", body)
        self.assertIn(st, ok, body)
        self.assertNotIn("stored", body)  # "stored":false only when JetStream failed
        self.assertIn("seq", body)
        return body

    def first_seq(self):
        return stream_info(self.nats.port, STREAM)["state"]["first_seq"]


class Connected(Base):
    def test_1_connected_client_gets_what_was_stored_while_its_notifier_was_down(self):
        """Gap: before, b's clients got these only with their next live frame or resume."""
        async def go():
            ws, r, _ = await resume(self.b, "gp-con", 0)  # seqs known from the resume
            ws2 = await connect(self.b.ws_url("gp-con"))  # no since: from its first frame on
            ws3 = None
            try:
                await wait_connected(self.b, "gp-con", 2)
                first = self.post(self.a, "gp-con", {"n": 0})
                for w in (ws, ws2):
                    self.assertEqual((await recv_json(w))["seq"], first["seq"])
                kept = self.b.log().count(NO_REFILL)
                with notifier_down(self.b):
                    # Stored (a seq) whatever a could tell about b's connection: 202, or 503
                    # while a still counts b as a holder it cannot reach.
                    seqs = [self.post(self.a, "gp-con", {"n": i}, ok=(200, 202, 503))["seq"]
                            for i in (1, 2, 3)]
                    # Connected after they were stored, without since: none of them for it.
                    ws3 = await connect(self.b.ws_url("gp-con"))
                    await local_count(self.b, "gp-con", 3, timeout=20)
                # No further notification, no resume: the restarted mirror hands them over.
                for w in (ws, ws2):
                    frames = [await recv_json(w, 30) for _ in range(3)]
                    self.assertEqual([f["seq"] for f in frames], seqs)
                    self.assertEqual([f["data"]["n"] for f in frames], [1, 2, 3])
                    self.assertTrue(all(f["epoch"] == r["epoch"] for f in frames), frames)
                self.assertTrue(th.wait_until(lambda: self.b.log().count(NO_REFILL) > kept, 20),
                                "the restarted notifier refilled the whole stream")
                for w in (ws, ws2, ws3):
                    await nothing_more(w, 1.0)  # nothing twice (the first one neither)
                last = self.post(self.a, "gp-con", {"n": 4})
                for w in (ws, ws2, ws3):
                    self.assertEqual((await recv_json(w))["seq"], last["seq"])
            finally:
                await ws.close()
                await ws2.close()
                if ws3:
                    await ws3.close()
        th.aio.run(go(), timeout=90)

    def test_2_ttl_s_on_another_node(self):
        """ttl_s 1 (< --mailbox-ttl): never replayed after it passed, on any node."""
        async def go():
            short = self.post(self.a, "gp-ttl", {"n": "short"}, ttl_s=1)
            keep = self.post(self.a, "gp-ttl", {"n": "keep"})
            self.assertGreater(keep["seq"], short["seq"])
            for g in (self.a, self.b):  # each node's own copy expired it
                self.assertTrue(th.wait_until(
                    lambda: g.api("GET", "/v1/presence/gp-ttl")[1]["mailbox"]["pending"] == 1, 10))
            ws, r, frames = await resume(self.b, "gp-ttl", 0)
            try:
                self.assertEqual([f["seq"] for f in frames], [keep["seq"]], frames)
                self.assertFalse(r["recovered"], "seq %d expired after since 0" % short["seq"])
                await nothing_more(ws, 0.5)
            finally:
                await ws.close()
            # The same after b's notifier restarted and mirrored the stream again.
            caught = self.b.log().count(CAUGHT_UP)
            os.kill(role_pids(self.b)["tether-notifier"], signal.SIGKILL)
            self.assertTrue(th.wait_until(lambda: self.b.log().count(CAUGHT_UP) > caught, 30))
            ws, r, frames = await resume(self.b, "gp-ttl", 0)
            try:
                self.assertEqual([f["seq"] for f in frames], [keep["seq"]], frames)
                self.assertFalse(r["recovered"], r)
            finally:
                await ws.close()
        th.aio.run(go(), timeout=90)


class PerUser(Base):
    """--mailbox-per-user 64 (the stream's per-subject limit)."""

    def test_1_prev_exact_with_two_writers(self):
        n = 30  # 2 x 30 stay under the per-user limit: every one is still in the stream
        answers = {"a": [], "b": []}

        def sender(g, key):
            for i in range(n):
                answers[key].append(g.notify("gp-two", {"from": key, "i": i}))

        threads = [threading.Thread(target=sender, args=(g, k)) for g, k in ((self.a, "a"), (self.b, "b"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        seqs = sorted(body["seq"] for key in answers for st, body in answers[key]
                      if st in (200, 202) and "seq" in body)
        self.assertEqual(len(seqs), 2 * n, answers)
        prevs = [stream_msg(self.nats.port, STREAM, q)["headers"].get("Tether-Prev") for q in seqs]
        want = [None] + [str(q) for q in seqs[:-1]]
        self.assertEqual(prevs, want, "Tether-Prev must name the user's real previous seq")

    def test_2_evicted_before_mirrored(self):
        """b's notifier down while a stores 70 for a user whose per-user limit is 64."""
        async def go():
            s = self.post(self.a, "gp-evict", {"n": 0})["seq"]
            ws, r, frames = await resume(self.b, "gp-evict", 0, n=1)
            epoch = r["epoch"]
            await ws.close()
            await wait_for_gone(self.b, "gp-evict")
            with notifier_down(self.b):
                # 503 with a seq is stored too (see notifier_down): only the seq matters here.
                seqs = [self.post(self.a, "gp-evict", {"n": i}, ok=(200, 202, 503))["seq"]
                        for i in range(1, 71)]
            self.assertIsNone(stream_msg(self.nats.port, STREAM, seqs[5]), "not evicted")
            ws, r, frames = await resume(self.b, "gp-evict", s, epoch, timeout=30)
            await ws.close()
            self.assertFalse(r["recovered"], "seqs %s were evicted unmirrored: %s" % (seqs[:6], r))
            self.assertEqual([f["seq"] for f in frames], seqs[6:])
            ws, r, frames = await resume(self.b, "gp-evict", seqs[5], epoch, timeout=30)
            await ws.close()
            self.assertTrue(r["recovered"], r)
            self.assertEqual([f["seq"] for f in frames], seqs[6:])
        th.aio.run(go(), timeout=90)


class Expired(Base):
    """--mailbox-ttl 3: messages leave the stream (max age) within the test."""
    TTL = 3
    CUT = True

    async def seen_on_b(self, user):
        s = self.post(self.a, user, {"n": 0})
        ws, r, frames = await resume(self.b, user, 0, n=1)
        self.assertEqual(frames[0]["seq"], s["seq"])
        await ws.close()
        await wait_for_gone(self.b, user)
        return s["seq"], r["epoch"]

    def wait_gone_from_stream(self, seq):
        self.assertTrue(th.wait_until(lambda: self.first_seq() > seq, 20),
                        "seq %d never left the stream (max age %d s)" % (seq, self.TTL))

    def test_1_broker_cut_while_it_expired(self):
        """b's broker connection cut; a stores M; M expires; the connection is back."""
        async def go():
            s, epoch = await self.seen_on_b("gp-cut")
            self.cut.cut()
            try:
                # 503 with a seq is stored too: b unsubscribes a user's subject only at its
                # next registry scan after the client left, and the relay closes b's
                # connection a moment after cut() returns; a request that reaches b's
                # subscription in between is never answered, so a answers 503 at the
                # handoff timeout with the seq it stored (see notifier_down). Only the
                # seq matters here.
                m = self.post(self.a, "gp-cut", {"n": 1}, ok=(200, 202, 503))["seq"]
                # While the mirror is away, a resume on b must not answer from the stale
                # cache (it waits for the mirror; this one is read after the mend below).
                early = await connect(resume_url(self.b, "gp-cut", s, epoch))
                self.wait_gone_from_stream(m)
            finally:
                self.cut.mend()
            try:
                r = await recv_json(early, 30)
                self.assertEqual(r["type"], "resumed")
                self.assertFalse(r["recovered"], "seq %d was never replayed: %s" % (m, r))
                self.assertEqual(r["replay"], 0)
            finally:
                await early.close()
            ws, r, _ = await resume(self.b, "gp-cut", s, epoch, n=0, timeout=30)
            await ws.close()
            self.assertFalse(r["recovered"], "seq %d left unmirrored: %s" % (m, r))
            # Exact, not merely pessimistic: from a seq after the hole, recovered again.
            # (503 with a seq: stored, but b's route may still be re-subscribing after the
            # cut, so a could not tell whether b holds the user.)
            n = self.post(self.a, "gp-cut", {"n": 2}, ok=(200, 202, 503))["seq"]
            ws, r, frames = await resume(self.b, "gp-cut", s, epoch, n=1, timeout=30)
            await ws.close()
            self.assertEqual([f["seq"] for f in frames], [n])
            ws, r, _ = await resume(self.b, "gp-cut", n, epoch, n=0, timeout=30)
            await ws.close()
            self.assertTrue(r["recovered"], r)
            self.assertIn("before this node mirrored them", self.b.log())
        th.aio.run(go(), timeout=90)

    def test_2_notifier_down_while_it_expired(self):
        """b's notifier dead while a stores M and M expires: the restart keeps the cache
        and still knows M is gone."""
        async def go():
            s, epoch = await self.seen_on_b("gp-down")
            kept = self.b.log().count(NO_REFILL)
            with notifier_down(self.b):
                m = self.post(self.a, "gp-down", {"n": 1}, ok=(200, 202, 503))["seq"]
                self.wait_gone_from_stream(m)
            ws, r, _ = await resume(self.b, "gp-down", s, epoch, n=0, timeout=30)
            await ws.close()
            self.assertFalse(r["recovered"], "seq %d expired unmirrored: %s" % (m, r))
            # Failed once (ASan, load ~6: the line never came in 20 s, the resume above
            # had passed) and not again in 9 runs; the class's groups print nothing on a
            # failure, so the message carries b's lines that tell which start it was.
            self.assertTrue(th.wait_until(lambda: self.b.log().count(NO_REFILL) > kept, 20),
                            "\n".join(line for line in self.b.log().splitlines()
                                      if " DEBUG " not in line and ("[Mailbox]" in line or " WARN " in line
                                                                    or "notifier" in line))[-4000:])
        th.aio.run(go(), timeout=90)



class Lagging(Base):
    """b's broker connections go through the relay (harness.nats.Cut), which
    can stall them: b's notifier keeps running and beating, its mirror
    simply gets nothing more."""
    CUT = True

    def test_1_resumed_while_the_mirror_lagged_then_notifier_killed(self):
        """Gap: a resume answered from a running notifier's cache while its mirror
        lags (another node stored after since, not mirrored here yet) is
        recovered:true; the live mirror would hand those over as it applies them.
        If the notifier dies first, its successor applies them while catching up
        and handed them only to connections that were there when they were
        stored: not the resumed one, which then never got them."""
        async def go():
            user = "gp-lag"
            ws0, r0, _ = await resume(self.b, user, 0)
            epoch = r0["epoch"]
            await wait_connected(self.b, user, 1)
            first = self.post(self.a, user, {"n": 0})
            self.assertEqual((await recv_json(ws0))["seq"], first["seq"])
            await ws0.close()
            await wait_for_gone(self.b, user)
            kept = self.b.log().count(NO_REFILL)
            self.cut.stall()
            ws = plain = None
            try:
                # 503 with a seq is stored too: b may still be subscribed to the user's
                # subject (see notifier_down), and its answer cannot pass the relay.
                seqs = [self.post(self.a, user, {"n": i}, ok=(200, 202, 503))["seq"]
                        for i in (1, 2, 3)]
                ws = await connect(resume_url(self.b, user, first["seq"], epoch))
                r = await recv_json(ws)
                # The window itself: answered at once from the lagging cache (b's
                # notifier beats and its mirror is past since), which holds none of them.
                self.assertEqual((r["type"], r["recovered"], r["replay"]),
                                 ("resumed", True, 0), r)
                # Connected after they were stored, without since: not news for it.
                plain = await connect(self.b.ws_url(user))
                await local_count(self.b, user, 2)
                os.kill(role_pids(self.b)["tether-notifier"], signal.SIGKILL)
            finally:
                self.cut.unstall()
            try:
                frames = [await recv_json(ws, 30) for _ in seqs]
                self.assertEqual([f["seq"] for f in frames], seqs, frames)
                self.assertEqual([f["data"]["n"] for f in frames], [1, 2, 3])
                self.assertTrue(all(f["epoch"] == epoch for f in frames), frames)
                self.assertTrue(th.wait_until(lambda: self.b.log().count(NO_REFILL) > kept, 20),
                                "the restarted notifier refilled the whole stream")
                for w in (ws, plain):
                    await nothing_more(w, 1.0)  # none twice, none to the plain connection
                # 503 with a seq is stored too: b's route may still be re-subscribing.
                last = self.post(self.a, user, {"n": 4}, ok=(200, 202, 503))
                for w in (ws, plain):
                    self.assertEqual((await recv_json(w, 30))["seq"], last["seq"])
            finally:
                for w in (ws, plain):
                    if w:
                        await w.close()
        th.aio.run(go(), timeout=90)


if __name__ == "__main__":
    unittest.main(verbosity=2)
