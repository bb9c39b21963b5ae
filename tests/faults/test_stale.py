"""The janitor evicts a silent client with close code 4000 and the
contract's log line, counts it, and never evicts a client that keeps
pinging. Short thresholds (--stale-after 4 --sweep-every 1) also show the
start-up warning about thresholds under 300 s. A worker asked to evict a
connection whose frames it has not read yet (it was frozen: its LastSeen is
old only because nobody stamped it) refuses (TH_HO_KEPT) and keeps it."""
import asyncio
import concurrent.futures
import os
import socket
import struct
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: harness

import harness as th  # noqa: E402
from harness.faults import Client, Freeze, in_thread, role_pids, wait_for  # noqa: E402

HO = "<IHHIIQIIQ"  # struct th_ho_msg (shm/rt/channel.h)
HO_OK, HO_KEPT, HO_CLOSE, WS_STALE = 0, 4, 2, 4000


class Stale(unittest.TestCase):
    def test_silent_evicted_pinging_kept(self):
        # --stale-after 4 against pings every 0.5 s: only a worker or client
        # starved for 3.5 s (past --hung-after 3) misses them all.
        with th.Group(workers=2, extra_args=["--stale-after", "4", "--sweep-every", "1"]) as g:
            self.assertIn("--stale-after 4 s is under 300 s", g.log())

            async def scenario():
                silent = await Client(g, "silent-user").open()
                alive = await Client(g, "pinging-user", ping_every=0.5).open()
                # Silent for 4 s, then at most one sweep period and some slack for a loaded box.
                self.assertTrue(await wait_for(lambda: silent.closed, 12), "silent client not evicted")
                # The pinging client must outlive three more sweeps (each past its
                # --stale-after 4 s since it connected): counted in the debug log.
                sweeps = lambda: g.log().count("janitor: sweep of ")  # noqa: E731
                n0 = sweeps()
                self.assertTrue(await wait_for(lambda: sweeps() >= n0 + 3 or alive.closed, 10),
                                "the janitor stopped sweeping")
                self.assertFalse(alive.closed, "pinging client evicted (code %s)" % alive.close_code)
                self.assertGreater(alive.pongs, 0)
                status, body = await in_thread(g.notify, "pinging-user", {"n": 1})
                self.assertEqual(status, 200, body)
                self.assertTrue(await wait_for(lambda: len(alive.notes) == 1, 5))
                # The evicted user is gone from the registry, the other one is still there.
                dump = await in_thread(g.dump)
                self.assertEqual([c["user_id"] for c in dump["connections"]], ["pinging-user"], dump)
                code = silent.close_code
                await silent.close()
                await alive.close()
                return code

            self.assertEqual(asyncio.run(scenario()), 4000)
            log = g.log()
            self.assertIn("[ConnectionManager] Removing stale connection: silent-user (LastSeen: ", log)
            self.assertNotIn("Removing stale connection: pinging-user", log)
            status, metrics = g.api("GET", "/metrics")
            self.assertEqual(status, 200)
            evictions = [l for l in metrics.splitlines() if l.startswith("tether_stale_evictions_total")]
            self.assertEqual(len(evictions), 1, metrics)
            self.assertGreaterEqual(float(evictions[0].split()[-1]), 1)

    def test_worker_behind_on_input_keeps_the_connection(self):
        """The janitor's request (TH_HO_CLOSE 4000) sent, as the janitor
        does, to a worker that is frozen while its client pings: once thawed
        it holds the ping unread behind the request and must answer KEPT
        (nseq 0: no LastSeen to compare, so only the unread input counts).
        The same request once the ping is read closes with 4000, and one
        judged on a LastSeen the slot no longer has is refused at once."""
        with th.Group(workers=1) as g:
            async def scenario():
                behind = await Client(g, "behind-user").open()
                moved = await Client(g, "moved-user").open()
                rows = await in_thread(lambda: {c["user_id"]: c for c in g.dump()["connections"]})
                b, m = rows["behind-user"], rows["moved-user"]
                worker = role_pids(g)["tether-worker0"]
                path = os.path.join(g.env["TETHER_RUNTIME_DIR"], "worker-0.sock")
                with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
                    s.settimeout(10)
                    s.connect(path)

                    def request(row, seq, judged):
                        s.send(struct.pack(HO, 0x54480001, HO_CLOSE, WS_STALE, row["slot"], row["gen"],
                                           seq, 0, 0, judged))

                    def reply(seq):
                        r = struct.unpack(HO, s.recv(64))
                        self.assertEqual(r[5], seq)
                        return r[2]

                    def ask(row, seq, judged):
                        request(row, seq, judged)
                        return reply(seq)

                    def frozen_ask():
                        # Freeze and thaw from one thread (ptrace is per thread); the ping is
                        # sent by the event loop while the worker is held.
                        f = Freeze(worker).freeze()
                        sent.result(10)
                        request(b, 1, 0)
                        f.thaw()
                        return reply(1)

                    sent = concurrent.futures.Future()

                    async def ping_when_frozen():
                        await asyncio.sleep(0.3)  # the freeze is in place by then
                        await behind.ws.send('{"type":"ping"}')
                        sent.set_result(True)

                    pinger = asyncio.ensure_future(ping_when_frozen())
                    code = await in_thread(frozen_ask)
                    await pinger
                    self.assertEqual(code, HO_KEPT, "a worker holding the client's ping unread evicted it")
                    self.assertTrue(await wait_for(lambda: behind.pongs == 1, 5), "the ping was not answered")
                    self.assertFalse(behind.closed)
                    # LastSeen moved since the janitor's reading: kept without looking further.
                    self.assertEqual(await in_thread(ask, m, 2, 1), HO_KEPT)
                    self.assertFalse(moved.closed)
                    # Nothing unread any more: the eviction goes through.
                    self.assertEqual(await in_thread(ask, b, 3, 0), HO_OK)
                    self.assertTrue(await wait_for(lambda: behind.closed, 5))
                    self.assertEqual(behind.close_code, WS_STALE)
                status, body = await in_thread(g.notify, "moved-user", {"n": 1})
                self.assertEqual(status, 200, body)
                await moved.close()

            asyncio.run(scenario())


if __name__ == "__main__":
    unittest.main(verbosity=2)
