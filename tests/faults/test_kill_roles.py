"""kill -9 each role in turn (a worker, the janitor, the notifier) while
clients ping and notifications flow. Each role comes back with a new pid;
clients of surviving workers receive every notification the API confirmed;
clients of the killed worker reconnect and are reachable again; after one
sweep no slot belongs to a dead process; tether-dump --json stays
consistent throughout. A worker killed again and again is restarted with a
doubling delay."""
import asyncio
import os
import signal
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: harness

import harness as th  # noqa: E402
from harness.faults import Client, dump_consistent, in_thread, role_pids, wait_for  # noqa: E402

WORKERS = 2


class Background:
    """An endless coroutine (_run) started and cancelled around a test."""

    def start(self):
        self.task = asyncio.ensure_future(self._run())
        return self

    async def stop(self):
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass


class Flow(Background):
    """Notifications to a set of users, as fast as the API answers."""

    def __init__(self, group, users):
        self.g, self.users = group, list(users)
        self.sent = {u: [] for u in self.users}  # ids the API confirmed (200)
        self.failed = []                          # (user, status or error, body)
        self.task = None
        self.n = 0

    async def _run(self):
        while True:
            for u in self.users:
                self.n += 1
                nid = "%s-%d" % (u, self.n)
                try:
                    status, body = await in_thread(self.g.notify, u, {"n": self.n}, "meal_log.completed", nid)
                except OSError as e:
                    self.failed.append((u, repr(e), None))
                    continue
                if status == 200:
                    self.sent[u].append(nid)
                else:
                    self.failed.append((u, status, body))
            await asyncio.sleep(0.05)



class DumpWatch(Background):
    """Checks every tether-dump --json snapshot while the faults happen."""

    def __init__(self, tc, group):
        self.tc, self.g, self.count, self.task = tc, group, 0, None

    async def _run(self):
        while True:
            dump_consistent(self.tc, await in_thread(self.g.dump), WORKERS, quiet=False)
            self.count += 1
            await asyncio.sleep(0.2)



class KillRoles(unittest.TestCase):
    def setUp(self):
        self.g = th.Group(workers=WORKERS, extra_args=["--stale-after", "30", "--sweep-every", "1"])
        self.g.start()

    def tearDown(self):
        self.g.__exit__(None, None, None)

    async def open_spread(self):
        """Clients until every worker serves at least one (the kernel picks the
        worker among those the supervisor steers to: each open waits until
        that is every worker)."""
        clients = {}
        for i in range(40):
            self.assertTrue(await wait_for(self.g.steered_to_all, 10),
                            "new clients never went to every worker")
            u = "user-%d" % i
            clients[u] = await Client(self.g, u, ping_every=0.5).open()
            if len(clients) >= 6:
                d = await in_thread(self.g.dump)
                if len({c["worker"] for c in d["connections"]}) == WORKERS:
                    break
        d = await in_thread(self.g.dump)
        self.assertEqual({c["worker"] for c in d["connections"]}, set(range(WORKERS)),
                         "40 clients and a worker still serves none: %r" % d["connections"])
        self.assertTrue(await wait_for(lambda: all(c.pongs > 0 for c in clients.values()), 10))
        return clients

    async def flowing(self, flow, users, timeout=10):
        """Wait until the flow has one more confirmed notification for each of users."""
        n0 = {u: len(flow.sent[u]) for u in users}
        ok = await wait_for(lambda: all(len(flow.sent[u]) > n0[u] for u in users), timeout)
        self.assertTrue(ok, "notifications stopped: sent %r, failed %r" % (
            {u: len(flow.sent[u]) for u in users}, flow.failed[-5:]))

    async def assert_received(self, flow, clients, users):
        for u in users:
            want = set(flow.sent[u])
            ok = await wait_for(lambda: want <= clients[u].note_ids(), 5)
            self.assertTrue(ok, "%s missed %s" % (u, sorted(want - clients[u].note_ids())))

    async def all_reachable(self, clients):
        flow = Flow(self.g, clients)
        for u in clients:
            status, body = await in_thread(self.g.notify, u, {}, "meal_log.completed", "check-" + u)
            self.assertEqual(status, 200, (u, body))
            flow.sent[u].append("check-" + u)
        await self.assert_received(flow, clients, clients)

    async def new_pid(self, name, old):
        ok = await wait_for(lambda: role_pids(self.g).get(name) not in (None, old), 15)
        self.assertTrue(ok, "%s not restarted:\n%s" % (name, self.g.log()[-3000:]))

    async def no_dead_owner_after_sweep(self, clients):
        # Two more sweeps logged (--sweep-every 1, debug log): one ran wholly after now.
        sweeps = lambda: self.g.log().count("janitor: sweep of ")  # noqa: E731
        n0 = sweeps()
        self.assertTrue(await wait_for(lambda: sweeps() >= n0 + 2, 10), "the janitor did not sweep")
        d = await in_thread(self.g.dump)
        dump_consistent(self, d, WORKERS)
        alive = {w["index"]: w["alive"] for w in d["workers"]}
        self.assertTrue(all(alive[c["worker"]] for c in d["connections"]), d)
        self.assertEqual(sorted(c["user_id"] for c in d["connections"]), sorted(clients), d)

    async def kill_worker(self, clients):
        d = await in_thread(self.g.dump)
        victim = d["connections"][0]["worker"]
        pid = d["workers"][victim]["pid"]
        victims = [c["user_id"] for c in d["connections"] if c["worker"] == victim]
        survivors = [u for u in clients if u not in victims]
        self.assertTrue(victims and survivors, d["connections"])
        flow = Flow(self.g, survivors).start()
        await self.flowing(flow, survivors)
        os.kill(pid, signal.SIGKILL)
        self.assertTrue(await wait_for(lambda: all(clients[u].closed for u in victims), 10))
        await self.new_pid("tether-worker%d" % victim, pid)
        for u in victims:
            await clients[u].reopen_until_ok()
        await self.flowing(flow, survivors)
        await flow.stop()
        self.assertEqual(flow.failed, [])
        self.assertTrue(all(flow.sent[u] for u in survivors))
        await self.assert_received(flow, clients, survivors)
        self.assertFalse(any(clients[u].closed for u in survivors))
        await self.all_reachable(clients)
        await self.no_dead_owner_after_sweep(clients)
        self.assertIn("reclaimed", self.g.log())

    async def kill_role(self, clients, name):
        pid = role_pids(self.g)[name]
        flow = Flow(self.g, clients).start() if name != "tether-notifier" else None
        if flow:
            await self.flowing(flow, clients)
        os.kill(pid, signal.SIGKILL)
        await self.new_pid(name, pid)
        ok = await wait_for(lambda: self.g.api("GET", "/healthz")[0] == 200, 15, 0.2)
        self.assertTrue(ok, "/healthz not back to 200 after %s restart" % name)
        if flow:
            await self.flowing(flow, clients)
            await flow.stop()
            self.assertEqual(flow.failed, [])
            await self.assert_received(flow, clients, clients)
        self.assertFalse(any(c.closed for c in clients.values()))
        await self.all_reachable(clients)
        await self.no_dead_owner_after_sweep(clients)

    def test_kill_each_role(self):
        async def scenario():
            clients = await self.open_spread()
            watch = DumpWatch(self, self.g).start()
            await self.kill_worker(clients)
            await self.kill_role(clients, "tether-janitor")
            await self.kill_role(clients, "tether-notifier")
            await watch.stop()
            self.assertGreater(watch.count, 10)
            for c in clients.values():
                await c.close()

        asyncio.run(scenario())
        status, metrics = self.g.api("GET", "/metrics")
        self.assertEqual(status, 200)
        restarts = [l for l in metrics.splitlines() if l.startswith("tether_worker_restarts_total")]
        self.assertEqual(len(restarts), 1, metrics)
        self.assertGreaterEqual(float(restarts[0].split()[-1]), 1)
        self.assertEqual(self.g.stop(), 0)

    def test_crash_loop_backs_off(self):
        """A worker that keeps dying is restarted after 100, 200, 400, 800 ms: never a spin."""
        for _ in range(4):
            pid = role_pids(self.g)["tether-worker1"]
            os.kill(pid, signal.SIGKILL)
            self.assertTrue(th.wait_until(lambda: role_pids(self.g).get("tether-worker1") not in (None, pid), 10))
        delays = [int(l.split("restarting in ")[1].split()[0]) for l in self.g.log().splitlines()
                  if "worker[1] killed by signal 9" in l]
        self.assertEqual(delays, [100, 200, 400, 800], self.g.log()[-2000:])
        status, metrics = self.g.api("GET", "/metrics")
        self.assertIn("tether_worker_restarts_total 4", metrics)
        self.assertEqual(self.g.api("GET", "/healthz")[0], 200)
        self.assertEqual(self.g.stop(), 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
