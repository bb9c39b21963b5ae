"""Hung roles (--hung-after, default 3 s) with real processes.

A worker stopped with SIGSTOP: 200 new connections over the next 10 s all
get their 101 within 1 s each (the supervisor's steering program leaves
the stopped worker out at once, and a live worker adopts what was already
queued for it); a notification to one of its clients answers 503 within
50 ms (it is declared hung in the segment, so the notifier does not wait on
it); /healthz is 503 and names it; it is killed and replaced within
--hung-after + 1 s, and its clients reconnect and are reachable. Clients
already queued for it when it stopped are accepted by a live worker. A short
stop is forgiven (taken back, nobody disconnected). A worker frozen without
a stop signal (ptrace: a debugger, or a loop that never returns) is found
by its heartbeat alone and replaced the same way. A stopped janitor and a
stopped notifier are replaced within the bound and no client of a worker
is disconnected. A worker that is starved (runnable, kept waiting for a CPU
well past --hung-after, as on an overcommitted machine) is not hung: it is
neither declared nor killed, and its clients stay connected and served;
while it is starved, new clients go to the other worker and /healthz flags
it "starved" (not "hung"); once it beats again it takes clients again.
"""
import asyncio
import os
import re
import signal
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: harness

import websockets  # noqa: E402

import harness as th  # noqa: E402
from harness import ws as wsraw  # noqa: E402
from harness.faults import Client, Flood, Freeze, Starve, in_thread, role_pids, wait_for  # noqa: E402

HUNG_AFTER = 3
# The bounds. A sanitized build's notifier is several times slower,
# so there the notify bound only shows that nothing waited for the (2 s)
# handoff timeout.
NOTIFY_BOUND_S = 0.05 if not th.SANITIZED else 0.25
CONNECT_BOUND_S = 1.0
ARGS = ["--hung-after", str(HUNG_AFTER), "--handoff-timeout-ms", "2000",
        "--stale-after", "60", "--sweep-every", "1"]


def healthz(g):
    try:
        return g.api("GET", "/healthz", timeout=2)
    except OSError:
        return None, None


def events(g):
    """The group log without the per-frame debug lines: what to show on a failure."""
    return "\n".join(line for line in g.log().splitlines() if " DEBUG " not in line)[-4000:]


def proc_state(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def timed(fn, *args):
    t = time.monotonic()
    r = fn(*args)
    return time.monotonic() - t, r


class Hung(unittest.TestCase):
    async def open_spread(self, g, n_min=6):
        """Pinging clients until both workers serve some (the kernel picks the worker)."""
        clients = {}
        for i in range(60):
            u = "user-%d" % i
            clients[u] = await Client(g, u, ping_every=0.5).open()
            if len(clients) >= n_min:
                d = await in_thread(g.dump)
                if len({c["worker"] for c in d["connections"]}) == 2:
                    break
        self.assertTrue(await wait_for(lambda: all(c.pongs > 0 for c in clients.values()), 10))
        return clients

    async def victim_of(self, g, clients):
        d = await in_thread(g.dump)
        victim = d["connections"][0]["worker"]
        pid = [w["pid"] for w in d["workers"] if w["index"] == victim][0]
        victims = [c["user_id"] for c in d["connections"] if c["worker"] == victim]
        return victim, pid, victims, [u for u in clients if u not in victims]

    async def reachable(self, g, clients, users, tag):
        for u in users:
            nid = "%s-%s" % (tag, u)
            st, body = await in_thread(g.notify, u, {}, "meal_log.completed", nid)
            self.assertEqual(st, 200, (u, body))
            self.assertTrue(await wait_for(lambda: nid in clients[u].note_ids(), 5), (u, nid))

    async def wait_declared(self, g, name, timeout=2):
        """Until /healthz is 503 and names `name` as hung; returns its body."""
        got = {}

        def check():
            st, body = healthz(g)
            got["last"] = (st, body)
            return st == 503 and isinstance(body, dict) and name in body.get("hung", [])
        self.assertTrue(await wait_for(check, timeout), got.get("last"))
        return got["last"][1]

    async def storm(self, g, n, every):
        """n new clients, one every `every` s, each timed from connect to its 101."""
        times, errors, socks = [], [], []

        async def one(i):
            t = time.monotonic()
            try:
                ws = await websockets.connect(g.ws_url("storm-%d" % i), ping_interval=None,
                                              open_timeout=10, close_timeout=2)
                times.append(time.monotonic() - t)
                socks.append(ws)
            except Exception as e:  # noqa: BLE001 - every failure is reported
                errors.append((i, repr(e)))
        tasks = []
        for i in range(n):
            tasks.append(asyncio.ensure_future(one(i)))
            await asyncio.sleep(every)
        await asyncio.gather(*tasks)
        return times, errors, socks

    def test_stopped_worker(self):
        with th.Group(workers=2, extra_args=ARGS) as g:
            async def go():
                clients = await self.open_spread(g)
                victim, pid, victims, survivors = await self.victim_of(g, clients)
                name = "worker[%d]" % victim
                loop = asyncio.get_running_loop()
                t_stop = loop.time()
                os.kill(pid, signal.SIGSTOP)
                # From the moment it is stopped (a client it accepted just
                # before is its own, and goes with it).
                self.assertTrue(await wait_for(lambda: proc_state(pid) == "T", 2, 0.001))
                storm = asyncio.ensure_future(self.storm(g, 200, 0.05))

                body = await self.wait_declared(g, name)
                self.assertEqual(body["status"], "degraded")
                during = []
                for k in range(3):
                    dt, (st, nb) = await in_thread(timed, g.notify, victims[0], {}, "meal_log.completed",
                                                   "during-%d" % k)
                    during.append(dt)
                    self.assertEqual(st, 503, nb)
                    self.assertEqual(nb["status"], "unavailable")
                self.assertLess(max(during), NOTIFY_BOUND_S, during)
                self.assertLess(loop.time() - t_stop, HUNG_AFTER, "still hung while notifying")

                def replaced():
                    st, hb = healthz(g)
                    return st == 200 and [w for w in hb["workers"]
                                          if w["index"] == victim and w["pid"] not in (pid, 0)]
                self.assertTrue(await wait_for(replaced, HUNG_AFTER + 3, 0.02), events(g))
                t_replaced = loop.time() - t_stop
                self.assertLessEqual(t_replaced, HUNG_AFTER + 1, t_replaced)

                self.assertTrue(await wait_for(lambda: all(clients[u].closed for u in victims), 5))
                for u in victims:
                    await clients[u].reopen_until_ok()

                times, errors, socks = await storm
                self.assertEqual(errors, [])
                self.assertEqual(len(times), 200)
                self.assertLess(max(times), CONNECT_BOUND_S, sorted(times)[-5:])
                # None of them landed on the stopped worker (it would have
                # dropped them when it was killed).
                self.assertTrue(all(ws.open for ws in socks))
                self.assertFalse(any(clients[u].closed for u in survivors))
                await self.reachable(g, clients, clients, "after")
                for ws in socks:
                    await ws.close()
                for c in clients.values():
                    await c.close()
                log = g.log()
                self.assertIn("%s (pid %d) hung: stopped by signal" % (name, pid), log)
                self.assertRegex(log, r"%s \(pid %d\) hung: heartbeat [0-9.]+s old \(--hung-after 3 s\): "
                                 r"SIGKILL, replacing it" % (name.replace("[", r"\[").replace("]", r"\]"), pid))
                self.assertIn("replacing hung pid %d" % pid, log)
                print("\nstopped worker: notify during the hang %s ms; replaced after %.2f s; "
                      "200 connects: median %.1f ms, max %.1f ms"
                      % ([round(d * 1000, 1) for d in during], t_replaced,
                         sorted(times)[100] * 1000, max(times) * 1000), file=sys.stderr)
            th.aio.run(go(), 90)

    def test_queued_clients_of_a_stopped_worker_are_adopted(self):
        """Clients the kernel queued for a worker before the supervisor could
        steer away from it (held open here by stopping the supervisor first)
        are accepted by the live worker it names as adopter."""
        with th.Group(workers=2, extra_args=ARGS) as g:
            async def go():
                clients = await self.open_spread(g)
                victim, pid, _, _ = await self.victim_of(g, clients)
                sup = g.proc.pid
                loop = asyncio.get_running_loop()
                done = {}

                async def one(i):
                    ws = await websockets.connect(g.ws_url("queued-%d" % i), ping_interval=None,
                                                  open_timeout=20, close_timeout=2)
                    done[i] = loop.time()
                    return ws
                os.kill(sup, signal.SIGSTOP)
                try:
                    os.kill(pid, signal.SIGSTOP)
                    self.assertTrue(await wait_for(lambda: proc_state(pid) == "T", 2, 0.001))
                    tasks = [asyncio.ensure_future(one(i)) for i in range(30)]
                    await asyncio.sleep(1)  # the live worker serves its share meanwhile
                    waiting = 30 - len(done)
                finally:
                    t_cont = loop.time()
                    os.kill(sup, signal.SIGCONT)
                socks = await asyncio.gather(*tasks)
                took = max(done.values()) - t_cont
                self.assertGreater(waiting, 0, "no client was queued for the stopped worker")
                self.assertLess(took, CONNECT_BOUND_S, took)
                self.assertIn("accepts the clients queued for hung worker[%d]" % victim, g.log())
                # They belong to the live worker, not the stopped one.
                d = await in_thread(g.dump)
                owners = {c["user_id"]: c["worker"] for c in d["connections"]}
                self.assertTrue(all(owners["queued-%d" % i] != victim for i in range(30)), owners)
                for ws in socks:
                    await ws.close()
                for c in clients.values():
                    await c.close()
                print("\n%d clients queued for the stopped worker, all served %.0f ms after the "
                      "supervisor resumed" % (waiting, took * 1000), file=sys.stderr)
            th.aio.run(go(), 60)

    def test_short_stop_is_taken_back(self):
        with th.Group(workers=2, extra_args=ARGS) as g:
            async def go():
                clients = await self.open_spread(g)
                victim, pid, victims, _ = await self.victim_of(g, clients)
                os.kill(pid, signal.SIGSTOP)
                try:
                    await self.wait_declared(g, "worker[%d]" % victim)
                    st, body = await in_thread(g.notify, victims[0], {}, "meal_log.completed", "held")
                    self.assertEqual(st, 503, body)
                    await asyncio.sleep(1)  # well inside --hung-after
                finally:
                    os.kill(pid, signal.SIGCONT)

                def back():
                    st, hb = healthz(g)
                    return st == 200 and [w["pid"] for w in hb["workers"] if w["index"] == victim] == [pid]
                self.assertTrue(await wait_for(back, HUNG_AFTER), events(g))
                self.assertFalse(any(c.closed for c in clients.values()))
                await self.reachable(g, clients, clients, "back")
                # The 503 was never handed to the stopped worker: it does not arrive late.
                self.assertNotIn("held", clients[victims[0]].note_ids())
                self.assertIn("worker[%d] (pid %d) beats again" % (victim, pid), g.log())
                for c in clients.values():
                    await c.close()
            th.aio.run(go(), 60)

    def test_frozen_worker_found_by_heartbeat(self):
        with th.Group(workers=2, extra_args=ARGS) as g:
            async def go():
                clients = await self.open_spread(g)
                victim, pid, victims, survivors = await self.victim_of(g, clients)
                tracer = Freeze(pid)
                loop = asyncio.get_running_loop()
                tracer.freeze()  # no SIGCHLD reaches the supervisor: only the heartbeat tells
                t0 = loop.time()
                await self.wait_declared(g, "worker[%d]" % victim, HUNG_AFTER + 2)
                t_declared = loop.time() - t0
                self.assertGreaterEqual(t_declared, HUNG_AFTER - 0.5)
                self.assertTrue(await wait_for(tracer.reap_killed, 3, 0.01), "not killed")

                def replaced():
                    st, hb = healthz(g)
                    return st == 200 and [w for w in hb["workers"]
                                          if w["index"] == victim and w["pid"] not in (pid, 0)]
                self.assertTrue(await wait_for(replaced, 3, 0.02), events(g))
                t_replaced = loop.time() - t0
                self.assertLessEqual(t_replaced, HUNG_AFTER + 1, t_replaced)
                self.assertTrue(await wait_for(lambda: all(clients[u].closed for u in victims), 5))
                for u in victims:
                    await clients[u].reopen_until_ok()
                self.assertFalse(any(clients[u].closed for u in survivors))
                await self.reachable(g, clients, clients, "after")
                self.assertRegex(g.log(), r"worker\[%d\] \(pid %d\) hung: its heartbeat stopped"
                                 % (victim, pid))
                for c in clients.values():
                    await c.close()
                print("\nfrozen worker: declared after %.2f s, replaced after %.2f s"
                      % (t_declared, t_replaced), file=sys.stderr)
            th.aio.run(go(), 60)

    def test_stopped_janitor_and_notifier(self):
        with th.Group(workers=2, extra_args=ARGS) as g:
            async def go():
                clients = await self.open_spread(g)
                loop = asyncio.get_running_loop()
                took = {}
                for role, key in (("janitor", "tether-janitor"), ("notifier", "tether-notifier")):
                    pid = role_pids(g)[key]
                    t0 = loop.time()
                    os.kill(pid, signal.SIGSTOP)
                    # The bound is the supervisor's: it logs the replacement right after
                    # the fork. The new process's own start-up (slow under ASan on a
                    # loaded machine) is waited for separately, with a looser bound.
                    started = re.compile(r"%s started \(pid \d+\), replacing hung pid %d" % (role, pid))
                    ok = await wait_for(lambda: started.search(g.log()), HUNG_AFTER + 3, 0.02)
                    self.assertTrue(ok, "%s not replaced:\n%s" % (role, events(g)))
                    took[role] = loop.time() - t0
                    self.assertLessEqual(took[role], HUNG_AFTER + 1, took)
                    ok = await wait_for(lambda: role_pids(g).get(key) not in (None, pid), 10, 0.02)
                    self.assertTrue(ok, "%s replacement not up:\n%s" % (role, events(g)))
                    self.assertTrue(await wait_for(lambda: healthz(g)[0] == 200, 5), healthz(g))
                    self.assertIn("%s (pid %d) hung: stopped by signal" % (role, pid), g.log())
                    self.assertFalse(any(c.closed for c in clients.values()), role)
                    self.assertTrue(all(c.pongs > 0 for c in clients.values()))
                await asyncio.sleep(1.5)  # a sweep of the new janitor (--sweep-every 1) evicts nobody
                self.assertFalse(any(c.closed for c in clients.values()))
                await self.reachable(g, clients, clients, "roles")
                for c in clients.values():
                    await c.close()
                print("\nstopped janitor replaced after %.2f s, notifier after %.2f s"
                      % (took["janitor"], took["notifier"]), file=sys.stderr)
            th.aio.run(go(), 60)

    @unittest.skipUnless(Starve.possible(), "needs root (nice -20), two CPUs and /proc/PID/schedstat")
    async def starved_is_left_out(self, g, victim, name, starving):
        """While `victim` is starved: /healthz flags it starved (not hung; the
        status still counts its old heartbeat as down), the steering set is
        the other worker alone, and clients connecting meanwhile all land
        there and are answered. Returns those clients (open)."""
        other = 1 - victim
        at = starving.search(g.log()).end()
        alone = re.compile(r"new clients go to workers %d\n" % other)
        self.assertTrue(await wait_for(lambda: alone.search(g.log(), at), 10), events(g))

        def flagged():
            st, hb = healthz(g)
            return hb and st == 503 and name in hb["starved"] and name not in hb["hung"] and \
                [w["starved"] for w in hb["workers"] if w["index"] == victim] == [True]
        self.assertTrue(await wait_for(flagged, 10, 0.1), healthz(g))
        steer_lines = re.compile(r"new clients go to workers [0-9,]+\n")

        def still_alone():  # the set has not changed back since (the victim did not beat)
            lines = steer_lines.findall(g.log(), at)
            return bool(lines) and lines[-1] == "new clients go to workers %d\n" % other
        fresh = []
        for k in range(8):
            if not still_alone():
                break
            f = await in_thread(wsraw.WS, g.port, g.token("fresh-%d" % k))
            fresh.append(f)
            self.assertEqual((await in_thread(f.app_ping, 10))["type"], "pong")
        d = await in_thread(g.dump)
        where = {c["user_id"]: c["worker"] for c in d["connections"]}
        self.assertGreaterEqual(len(fresh), 6, "the victim beat again too soon:\n" + events(g))
        self.assertEqual({where["fresh-%d" % k] for k in range(len(fresh))}, {other}, where)
        return fresh

    def test_starved_worker_is_left_running(self):
        """A worker kept runnable but off the CPU (harness.faults.Starve, fed
        by a client flooding it with acks so it always has work) is not
        declared or killed however old its heartbeat gets: its clients stay
        connected, and it serves them again once the CPU is back."""
        args = ARGS + ["--max-msgs-per-sec", "0", "--max-bytes-per-sec", "0"]
        starve = Starve()
        with th.Group(workers=2, extra_args=args, prefix=starve.prefix()) as g:
            async def go():
                clients = await self.open_spread(g)
                ws = await in_thread(wsraw.WS, g.port, g.token("flood"))
                d = await in_thread(g.dump)
                victim = [c["worker"] for c in d["connections"] if c["user_id"] == "flood"][0]
                pid = [w["pid"] for w in d["workers"] if w["index"] == victim][0]
                name = "worker[%d]" % victim
                victims = [c["user_id"] for c in d["connections"]
                           if c["worker"] == victim and c["user_id"] in clients]
                flood = Flood(ws, starve.cpu)
                starving = re.compile(r"%s \(pid %d\) starved: heartbeat [0-9.hms]+ old, but it is "
                                      r"runnable, waiting for a CPU" % (re.escape(name), pid))
                seen = {}

                def old_heartbeat():
                    st, hb = healthz(g)
                    ages = [w["heartbeat_age_s"] for w in (hb or {}).get("workers", [])
                            if w["pid"] == pid]
                    seen["age"] = max([seen.get("age", 0)] + ages)
                    return seen["age"] >= HUNG_AFTER + 2
                starve.start(g, pid)
                try:
                    flood.start()
                    # The supervisor puts it down to the CPU shortage, and keeps doing so
                    # until its heartbeat is --hung-after + 2 s old (it would have been
                    # killed at --hung-after).
                    ok = await wait_for(lambda: starving.search(g.log()), 30, 0.1)
                    self.assertTrue(ok, "never starved past --hung-after:\n" + events(g))
                    fresh = await self.starved_is_left_out(g, victim, name, starving)
                    self.assertTrue(await wait_for(old_heartbeat, 30, 0.1), seen)
                finally:
                    starve.stop()
                    await in_thread(flood.stop)
                self.assertIsNone(flood.error)
                back = re.compile(r"%s \(pid %d\) beats again after [0-9.hms]+ starved"
                                  % (re.escape(name), pid))
                self.assertTrue(await wait_for(lambda: back.search(g.log()), 30, 0.1), events(g))
                self.assertTrue(await wait_for(lambda: healthz(g)[0] == 200, 10), healthz(g))
                # Beating again: steered to again, and no longer flagged.
                both = re.compile(r"new clients go to workers 0,1\n")
                at = back.search(g.log()).end()
                self.assertTrue(await wait_for(lambda: both.search(g.log(), at), 10), events(g))
                st, hb = healthz(g)
                self.assertEqual(hb["starved"], [], hb)
                self.assertFalse(any(w["starved"] for w in hb["workers"]), hb)
                st, hb = healthz(g)
                self.assertEqual([w["pid"] for w in hb["workers"] if w["index"] == victim], [pid])
                log = g.log()
                self.assertNotIn("%s (pid %d) hung" % (name, pid), log)
                self.assertNotIn("replacing hung pid", log)
                self.assertGreater(len(victims), 0)
                self.assertFalse(any(c.closed for c in clients.values()))
                pongs = {u: clients[u].pongs for u in victims}
                self.assertTrue(await wait_for(
                    lambda: all(clients[u].pongs > pongs[u] for u in victims), 10))
                await self.reachable(g, clients, clients, "fed")
                self.assertEqual((await in_thread(ws.app_ping, 10))["type"], "pong")
                ws.close()
                for f in fresh:
                    self.assertEqual((await in_thread(f.app_ping, 10))["type"], "pong")
                    f.close()
                for c in clients.values():
                    await c.close()
                print("\nstarved worker: heartbeat %.1f s old at most, %d acks flooded, left "
                      "running (%d of its clients kept, %d new clients steered to the other)"
                      % (seen["age"], flood.sent, len(victims), len(fresh)), file=sys.stderr)
            th.aio.run(go(), 120)


if __name__ == "__main__":
    unittest.main(verbosity=2)
