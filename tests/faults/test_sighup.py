"""Log rotation: with --log-file, SIGHUP to the supervisor makes it and every
role reopen the file, so after `mv tether.log tether.log.1; kill -HUP` each
role writes to the new file and nothing more goes to the old one. A SIGHUP
costs no restart."""
import asyncio
import os
import signal
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: harness

import harness as th  # noqa: E402
from harness import wait_until  # noqa: E402
from harness.faults import Client, in_thread, role_pids  # noqa: E402


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


class Sighup(unittest.TestCase):
    def test_every_role_reopens_its_log(self):
        g = th.Group(workers=2)
        logfile = os.path.join(g.tmp, "rotated.log")
        g.args += ["--log-file", logfile, "--stale-after", "3", "--sweep-every", "1"]
        with g:
            pids = role_pids(g)
            self.assertIn("supervisor: tether starting", read(logfile))
            os.rename(logfile, logfile + ".1")
            g.proc.send_signal(signal.SIGHUP)
            self.assertTrue(wait_until(lambda: "SIGHUP: log reopened" in read(logfile), 5))

            async def traffic():
                # Enough clients that the kernel hands some to each worker.
                clients = [await Client(g, "hup-%d" % i).open() for i in range(12)]
                status, _ = await in_thread(g.notify, "hup-0", {})
                self.assertEqual(status, 200)
                for c in clients:
                    await c.close()

            def roles_in(text):
                return {r for r in ("supervisor:", "janitor:", "notifier:") if r in text} | \
                       {l.split()[2] for l in text.splitlines() if len(l.split()) > 2 and
                        l.split()[2].startswith("worker[")}

            asyncio.run(traffic())
            want = {"supervisor:", "janitor:", "notifier:"}
            # The janitor's debug sweep line comes every second; workers log each connection.
            self.assertTrue(wait_until(lambda: want <= roles_in(read(logfile)), 5), read(logfile))
            self.assertTrue(any(r.startswith("worker[") for r in roles_in(read(logfile))))
            old = read(logfile + ".1")
            self.assertNotIn("[WebSocket] User hup-", old, "a role kept writing to the rotated file")
            self.assertEqual(role_pids(g), pids, "SIGHUP must not restart anything")
            self.assertEqual(g.stop(), 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
