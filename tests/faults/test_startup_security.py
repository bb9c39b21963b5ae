"""Start-up refusals that protect the group: a runtime directory another
user could reach (wrong mode, a symlink, foreign owner) makes `tether run`
exit 1 with a one-line reason and touch nothing in it."""
import os
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: harness

import harness as th  # noqa: E402
from harness.faults import segment_exists  # noqa: E402


def run_once(group, extra=(), env=None, timeout=20):
    e = dict(group.env)
    e.update(env or {})
    p = subprocess.run(group.args + list(extra), env=e, capture_output=True, text=True,
                       timeout=timeout)
    return p.returncode, p.stdout + p.stderr


class RuntimeDir(unittest.TestCase):
    def test_refused_unless_private(self):
        g = th.Group(workers=1)
        base = tempfile.mkdtemp(prefix="tether-rundir-")
        wide = os.path.join(base, "wide")
        os.mkdir(wide)
        os.chmod(wide, 0o777)
        planted = os.path.join(wide, "worker-0.sock")
        open(planted, "w").close()
        link = os.path.join(base, "link")
        os.symlink(wide, link)
        foreign = os.path.join(base, "foreign")
        os.mkdir(foreign, 0o700)
        cases = [(wide, "mode 0777"), (link, "symbolic link")]
        if os.geteuid() == 0:
            os.chown(foreign, 65534, 65534)
            cases.append((foreign, "belongs to uid 65534"))
        for path, needle in cases:
            with self.subTest(path=path):
                rc, out = run_once(g, env={"TETHER_RUNTIME_DIR": path})
                self.assertEqual(rc, 1, out)
                self.assertIn(needle, out)
                self.assertIn(path, out)
                self.assertFalse(segment_exists(g), "a refused start left its segment")
        self.assertTrue(os.path.exists(planted), "a refused directory was cleaned up by us")
        # The same start in a private directory runs.
        ok = os.path.join(base, "ok")
        g.env["TETHER_RUNTIME_DIR"] = ok
        g.start()
        self.assertEqual(os.stat(ok).st_mode & 0o777, 0o700)
        g.finish()


if __name__ == "__main__":
    unittest.main()
