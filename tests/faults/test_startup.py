"""Refused starts cost nothing: bad flags exit 2 with a message naming the
flag; a second group on a live group's --shm-name exits 1 and leaves the
first group untouched; a port in use exits 1 and leaves no segment; when the
supervisor is SIGKILLed its children exit too, and the segment it left is
taken over by the next start. A start whose --slots/--workers need more
than the kernel allows (here an open-file limit lowered with prlimit) logs
a warning naming the setting and the value to set, and still serves."""
import json
import os
import signal
import socket
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: harness

import harness as th  # noqa: E402
from harness import ws as rawws  # noqa: E402
from harness.faults import pid_running, role_pids, segment_exists  # noqa: E402


def run_once(group, extra, timeout=20):
    """Run `tether run` with the group's flags plus extra; it must exit by itself."""
    p = subprocess.run(group.args + list(extra), env=group.env, capture_output=True, text=True,
                       timeout=timeout)
    return p.returncode, p.stdout + p.stderr


class Startup(unittest.TestCase):
    def test_kernel_settings_too_low_for_the_scale_are_named(self):
        lowered = ["prlimit", "--nofile=1024:1024"]
        with th.Group(workers=1, slots=4096, prefix=lowered) as g:
            needle = "sizing: open-file limit (RLIMIT_NOFILE, ulimit -n) is 1024"
            self.assertTrue(g.wait_log(needle), g.log())
            line = next(l for l in g.log().splitlines() if needle in l)
            self.assertIn("WARN", line.upper())
            self.assertIn("to 4196", line)  # 4,096 connections + the worker's own 100
            status, _ = g.api("GET", "/healthz")
            self.assertEqual(status, 200)
        with th.Group(workers=2, slots=1024, prefix=lowered) as g:
            self.assertTrue(g.wait_log("backend API on"), g.log())
            self.assertNotIn("open-file limit", g.log())  # 512 a worker fit in 1,024

    def test_bad_flags_exit_2(self):
        g = th.Group(workers=1)
        cases = [(["--workers", "0"], "--workers"),
                 (["--stale-after", "60", "--sweep-every", "60"], "--stale-after"),
                 (["--stale-after", "10", "--sweep-every", "30"], "--sweep-every"),
                 (["--listen", "nonsense"], "--listen"),
                 (["--bogus-flag", "1"], "--bogus-flag")]
        for extra, needle in cases:
            with self.subTest(extra=extra):
                rc, out = run_once(g, extra)
                self.assertEqual(rc, 2, out)
                self.assertIn(needle, out)
                self.assertEqual(len(out.strip().splitlines()), 1, out)
                self.assertFalse(segment_exists(g), "a refused start left its segment")

    def test_second_group_same_segment_exits_1(self):
        with th.Group(workers=1) as g:
            before = g.dump()
            pids_before = role_pids(g)
            other = th.Group(workers=1)
            # Same segment name, own ports: it must stop at the segment.
            args = [a if a != other.shm_name else g.shm_name for a in other.args]
            p = subprocess.run(args, env=g.env, capture_output=True, text=True, timeout=20)
            self.assertEqual(p.returncode, 1, p.stderr)
            self.assertIn(g.shm_name.lstrip("/"), p.stderr)
            # The first group is untouched: same processes, same segment, still serving.
            self.assertTrue(segment_exists(g))
            self.assertEqual(role_pids(g), pids_before)
            self.assertEqual(g.dump()["slots_total"], before["slots_total"])
            status, _ = g.api("GET", "/healthz")
            self.assertEqual(status, 200)
            self.assertEqual(g.stop(), 0)

    def test_port_in_use_exits_1(self):
        for flag in ("--listen", "--api-listen"):
            with self.subTest(flag=flag), socket.socket() as holder:
                holder.bind(("127.0.0.1", 0))
                holder.listen(1)
                port = holder.getsockname()[1]
                g = th.Group(workers=1)
                rc, out = run_once(g, [flag, "127.0.0.1:%d" % port])
                self.assertEqual(rc, 1, out)
                self.assertIn("127.0.0.1:%d" % port, out)
                self.assertIn(flag, out)
                self.assertFalse(segment_exists(g), "a refused start left its segment")
                self.assertFalse(os.path.exists(g.env["TETHER_RUNTIME_DIR"]))

    def restart_same_segment(self, g):
        """Start g again (same segment name and ports) after its group died."""
        g.logf.close()
        g.start()

    def test_children_follow_a_killed_supervisor_and_segment_is_taken_over(self):
        with th.Group(workers=2) as g:
            clients = [rawws.WS(g.port, g.token("follow-%d" % i)) for i in range(3)]
            self.assertEqual(g.dump()["slots_used"], 3)
            kids = list(role_pids(g).values())
            self.assertEqual(len(kids), 4)
            os.kill(g.proc.pid, signal.SIGKILL)   # the supervisor only
            g.proc.wait(10)
            # PR_SET_PDEATHSIG: every role gets SIGTERM and drains by itself: the
            # clients get the drain's 1001, not a cut connection.
            for ws in clients:
                self.assertEqual(ws.expect_close(15)[0], 1001)
                ws.close()
            self.assertTrue(th.wait_until(lambda: not any(pid_running(p) for p in kids), 15),
                            "children outlived the supervisor")
            self.assertTrue(segment_exists(g), "a SIGKILLed supervisor cannot remove its segment")
            self.restart_same_segment(g)   # must take the dead group's segment over
            ws = rawws.WS(g.port, g.token("follow-new"))
            ws.app_ping()
            d = g.dump()
            self.assertEqual([c["user_id"] for c in d["connections"]], ["follow-new"], d)
            ws.close()
            self.assertEqual(g.stop(), 0)
            self.assertFalse(segment_exists(g))

    def test_take_over_a_crashed_groups_segment_with_live_slots(self):
        """kill -9 of the whole group (no process left to release anything): the
        segment stays with its slots in use; the next group on that name takes it
        over and starts empty, and the old users connect and get notifications."""
        with th.Group(workers=2) as g:
            clients = [rawws.WS(g.port, g.token("crashed-%d" % i)) for i in range(3)]
            self.assertEqual(g.dump()["slots_used"], 3)
            kids = list(role_pids(g).values())
            os.killpg(g.proc.pid, signal.SIGKILL)
            g.proc.wait(10)
            self.assertTrue(th.wait_until(lambda: not any(pid_running(p) for p in kids), 15))
            for ws in clients:
                ws.close()
            left = g.dump()   # tether-dump reads the dead group's segment
            self.assertEqual(left["slots_used"], 3, left)
            self.assertEqual(sorted(c["user_id"] for c in left["connections"]),
                             ["crashed-0", "crashed-1", "crashed-2"], left)
            self.restart_same_segment(g)
            d = g.dump()
            self.assertEqual((d["slots_used"], d["connections"]), (0, []), d)
            self.assertEqual(g.api("GET", "/v1/presence/crashed-0")[1]["connections"], [])
            ws = rawws.WS(g.port, g.token("crashed-0"))
            ws.app_ping()
            status, body = g.notify("crashed-0", {"after": "take-over"})
            self.assertEqual((status, body.get("connections")), (200, 1), body)
            fin, rsv, op, payload = ws.recv_frame()
            self.assertEqual(json.loads(payload)["data"], {"after": "take-over"})
            self.assertEqual(g.dump()["slots_used"], 1)
            ws.close()
            self.assertEqual(g.stop(), 0)
            self.assertFalse(segment_exists(g))


if __name__ == "__main__":
    unittest.main(verbosity=2)
