"""Refused starts cost nothing: bad flags exit 2 with a message naming the
flag; a second group on a live group's --shm-name exits 1 and leaves the
first group untouched; a port in use exits 1 and leaves no segment; when the
supervisor is SIGKILLed its children exit too, and the segment it left is
taken over by the next start."""
import os
import signal
import socket
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: harness

import harness as th  # noqa: E402
from harness.faults import pid_running, role_pids, segment_exists  # noqa: E402


def run_once(group, extra, timeout=20):
    """Run `tether run` with the group's flags plus extra; it must exit by itself."""
    p = subprocess.run(group.args + list(extra), env=group.env, capture_output=True, text=True,
                       timeout=timeout)
    return p.returncode, p.stdout + p.stderr


class Startup(unittest.TestCase):
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

    def test_children_follow_a_killed_supervisor_and_segment_is_taken_over(self):
        g = th.Group(workers=2)
        g.start()
        try:
            kids = list(role_pids(g).values())
            self.assertEqual(len(kids), 4)
            os.kill(g.proc.pid, signal.SIGKILL)   # the supervisor only
            g.proc.wait(10)
            # PR_SET_PDEATHSIG: every role gets SIGTERM and exits by itself.
            deadline = time.time() + 15
            while any(pid_running(p) for p in kids) and time.time() < deadline:
                time.sleep(0.05)
            self.assertEqual([p for p in kids if pid_running(p)], [], "children outlived the supervisor")
            self.assertTrue(segment_exists(g), "a SIGKILLed supervisor cannot remove its segment")
            g.logf.close()
            g.start()   # same segment name and ports: must take the dead group's segment over
            self.assertEqual(g.dump()["slots_used"], 0)
            self.assertEqual(g.stop(), 0)
            self.assertFalse(segment_exists(g))
        finally:
            if g.proc.poll() is None:
                os.killpg(g.proc.pid, signal.SIGKILL)
            if segment_exists(g):
                os.unlink("/dev/shm" + g.shm_name)
            g.logf.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
