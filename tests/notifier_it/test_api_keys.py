"""Backend API keys (--api-key-file): /v1/* needs "Authorization: Bearer
<key>"; missing or wrong gets 401 JSON, delivers and stores nothing, is
counted in tether_api_unauthorized_total and logged without the key;
/healthz and /metrics stay open. Keys rotate with SIGHUP (a bad new file
keeps the old keys). Without a key file, a non-loopback --api-listen makes
`tether run` exit 2 with a one-line reason."""
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: harness

import harness as th  # noqa: E402
from harness.aio import connect, run  # noqa: E402

OLD = "old-key-0123456789abcdef"
NEW = "new-key-fedcba9876543210"


def write_keys(path, *keys):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("# backend keys\n" + "".join(k + "\n" for k in keys))
    os.replace(tmp, path)


def metric(g, name):
    _, text = g.api("GET", "/metrics")
    for line in text.splitlines():
        if line.startswith(name + " "):
            return int(float(line.split()[1]))
    raise AssertionError("%s not in /metrics" % name)


def bearer(key):
    return {"Authorization": "Bearer " + key}


class ApiKeys(unittest.TestCase):
    def test_keys_required_and_rotated(self):
        base = th.Group(workers=1)
        keyfile = os.path.join(base.tmp, "api-keys")
        write_keys(keyfile, OLD)
        g = th.Group(workers=1, extra_args=["--api-key-file", keyfile])
        with g:
            body = {"user_id": "k-user", "type": "t", "data": {"n": 0}}

            async def go():
                ws = await connect(g.ws_url("k-user"))
                for headers, why in (({}, "missing"), (bearer(NEW), "invalid"),
                                     ({"Authorization": "Basic " + OLD}, "missing"),
                                     (bearer(OLD + "x"), "invalid")):
                    st, reply = await asyncio.to_thread(g.api, "POST", "/v1/notify", body, headers)
                    self.assertEqual(st, 401, reply)
                    self.assertIn(why, reply["error"])
                st, reply = await asyncio.to_thread(g.api, "GET", "/v1/presence/k-user")
                self.assertEqual(st, 401, reply)
                st, reply = await asyncio.to_thread(g.api, "POST", "/v1/notify/batch", [body])
                self.assertEqual(st, 401, reply)
                # Nothing of the refused ones arrives: the first frame is the accepted one.
                ok = dict(body, data={"n": 1})
                st, reply = await asyncio.to_thread(g.api, "POST", "/v1/notify", ok, bearer(OLD))
                self.assertEqual(st, 200, reply)
                frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
                self.assertEqual(frame["data"], {"n": 1})
                st, reply = await asyncio.to_thread(g.api, "GET", "/v1/presence/k-user", None,
                                                    bearer(OLD))
                self.assertEqual(st, 200, reply)
                await ws.close()
            run(go())
            self.assertEqual(metric(g, "tether_api_unauthorized_total"), 6)
            self.assertEqual(g.api("GET", "/healthz")[0], 200, "open without a key")
            self.assertNotIn(OLD, g.log(), "a key was logged")
            self.assertIn("API request refused: wrong API key", g.log())

            # Rotation: both keys, then only the new one.
            write_keys(keyfile, OLD, NEW)
            g.proc.send_signal(signal.SIGHUP)
            self.assertTrue(g.wait_log("API keys reloaded: 2 key(s)"), g.log()[-2000:])
            self.assertIn(g.notify_with(bearer(NEW))[0], (202, 404))
            self.assertIn(g.notify_with(bearer(OLD))[0], (202, 404))
            write_keys(keyfile, NEW)
            g.proc.send_signal(signal.SIGHUP)
            self.assertTrue(g.wait_log("API keys reloaded: 1 key(s)"), g.log()[-2000:])
            self.assertEqual(g.notify_with(bearer(OLD))[0], 401, "removed key still accepted")
            self.assertIn(g.notify_with(bearer(NEW))[0], (202, 404))
            # A bad file keeps the keys in force.
            with open(keyfile, "w") as f:
                f.write("short\n")
            g.proc.send_signal(signal.SIGHUP)
            self.assertTrue(g.wait_log("API keys not reloaded, keeping the 1 loaded"),
                            g.log()[-2000:])
            self.assertIn(g.notify_with(bearer(NEW))[0], (202, 404))

    def test_non_loopback_api_needs_keys(self):
        g = th.Group(workers=1)
        with socket.socket() as s:  # a port free on every address, not just loopback
            s.bind(("0.0.0.0", 0))
            port = s.getsockname()[1]
        g.args = [a if a != "127.0.0.1:%d" % g.api_port else "127.0.0.1:%d" % port for a in g.args]
        g.api_port = port
        args = [a if not a.startswith("127.0.0.1:%d" % g.api_port) else "0.0.0.0:%d" % g.api_port
                for a in g.args]
        p = subprocess.run(args, env=g.env, capture_output=True, text=True, timeout=20)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn("--api-listen 0.0.0.0:%d is not a loopback address" % g.api_port, p.stderr)
        self.assertIn("--api-key-file", p.stderr)
        self.assertEqual(len(p.stderr.strip().splitlines()), 1, p.stderr)
        # A key file that cannot be read, or holds no key: exit 2 as well, naming it.
        for content in (None, "# nothing\n"):
            path = os.path.join(g.tmp, "keys-%s" % ("none" if content is None else "empty"))
            if content is not None:
                with open(path, "w") as f:
                    f.write(content)
            p = subprocess.run(args + ["--api-key-file", path], env=g.env, capture_output=True,
                               text=True, timeout=20)
            self.assertEqual(p.returncode, 2, p.stderr)
            self.assertIn("--api-key-file %s" % path, p.stderr)
        # With keys, the same non-loopback address starts.
        keyfile = os.path.join(g.tmp, "api-keys")
        write_keys(keyfile, NEW)
        g.args = args + ["--api-key-file", keyfile]
        with g:
            self.assertIn(g.notify_with(bearer(NEW))[0], (202, 404))


def notify_with(self, headers, user="nobody-here"):
    return self.api("POST", "/v1/notify", {"user_id": user, "type": "t", "data": {}}, headers)


th.Group.notify_with = notify_with

if __name__ == "__main__":
    unittest.main()
