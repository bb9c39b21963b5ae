"""https:// on the backend API (--api-tls-cert/--api-tls-key) of real
`tether run` groups, certificates made at test time with the `openssl`
command (harness.tls.Pki).

Clients nobody on the team wrote: Python's http.client over ssl (keep-alive,
TLS 1.2 and 1.3, session resumption), curl (one connection for several
requests, a body sent after "Expect: 100-continue", a client that does not
trust the CA), python3-websockets receiving what the API delivered. Also:
plain HTTP on the TLS port (/healthz answered, /v1/... 403 and nothing
delivered), garbage instead of a ClientHello, a handshake stopping halfway
(closed by the 10 s deadline), records split at every byte, pipelined
requests in one record, bad requests over TLS (4xx JSON), a reload under
keep-alive load with no connection dropped (and a bad pair keeping the old
one), a notifier restarted after a reload serving the reloaded pair, and the
start-up refusals (exit 2 with one line).
"""
import asyncio
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: harness
import harness as th  # noqa: E402
from harness import aio, rawhttp, tls  # noqa: E402

T = 20 if th.SANITIZED else 10
PKI = None


def setUpModule():
    global PKI
    PKI = tls.Pki()


def tearDownModule():
    PKI.cleanup()


def tls_api(g, ctx=None, session=None, timeout=5.0):
    """A raw TLS socket to g's API, handshake done; an EOF without close_notify raises."""
    if ctx is None:
        ctx = PKI.client_context(alpn=None)
        ctx.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF  # Python's default hides a missing close_notify
    raw = socket.create_connection(("127.0.0.1", g.api_port), timeout=timeout)
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1", session=session,
                           suppress_ragged_eofs=False)


def curl(*args):
    p = subprocess.run(["curl", "-sS", "--max-time", str(T)] + list(args), capture_output=True,
                       text=True, timeout=T + 10)
    return p.returncode, p.stdout, p.stderr


class APITLS(unittest.TestCase):
    """One group with an https:// API for the cases that do not stop or reload it."""

    @classmethod
    def setUpClass(cls):
        cls.g = tls.api_group(PKI, workers=2).__enter__()

    @classmethod
    def tearDownClass(cls):
        cls.g.finish()

    def test_http_client_notify_reaches_a_websocket_client(self):
        async def go():
            ws = await aio.connect_user(self.g, "alice")
            await aio.wait_connected(self.g, "alice", 1)
            st, body = await aio.notify(self.g, "alice", {"meal": 3})
            self.assertEqual(st, 200, body)
            self.assertEqual(body["connections"], 1)
            msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
            self.assertEqual(msg["data"], {"meal": 3})
            await ws.close()
        aio.run(go())

    def test_keep_alive_tls12_and_tls13(self):
        for maximum, want in ((ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")):
            ctx = PKI.client_context(alpn=None, maximum=maximum)
            conn = http.client.HTTPSConnection("127.0.0.1", self.g.api_port, timeout=T, context=ctx)
            try:
                names = set()
                for i in range(20):
                    body = {"user_id": "ka-%d" % i, "type": "t", "data": {}}
                    conn.request("POST", "/v1/notify", json.dumps(body),
                                 {"Content-Type": "application/json"})
                    r = conn.getresponse()
                    raw = r.read()
                    self.assertIn(r.status, (202, 404), raw)
                    self.assertEqual(json.loads(raw)["user_id"], "ka-%d" % i)
                    names.add(conn.sock.getsockname())
                    self.assertEqual(conn.sock.version(), want)
                self.assertEqual(len(names), 1, "keep-alive connection replaced")
                conn.request("GET", "/v1/presence/ka-0")
                r = conn.getresponse()
                self.assertEqual(r.status, 200)
                self.assertEqual(json.loads(r.read())["connections"], [])
            finally:
                conn.close()

    def test_tether_load_over_https(self):
        # the team's load generator: keep-alive API connections over TLS (--api https://)
        p = subprocess.run([os.path.join(th.BIN, "tether-load"), "--url", self.g.ws_url(),
                            "--api", self.g.api_url, "--ca", PKI.ca, "--secret-file", self.g.secret_file,
                            "--connections", "20", "--ping-interval", "1", "--duration", "2",
                            "--notify-rate", "50", "--api-conns", "2", "--user-prefix", "hl"],
                           capture_output=True, text=True, timeout=120)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        s = json.loads(p.stdout)
        self.assertTrue(s["api_tls"])
        self.assertGreater(s["notifications_sent"], 0)
        self.assertEqual(s["notify_status"]["2xx"], s["notifications_sent"], s)
        self.assertEqual(s["lost"], 0)

    def test_session_resumption(self):
        ctx = PKI.client_context(alpn=None, maximum=ssl.TLSVersion.TLSv1_2)
        with tls_api(self.g, ctx) as s:
            sess = s.session
            self.assertFalse(s.session_reused)
        with tls_api(self.g, ctx, session=sess) as s:
            self.assertTrue(s.session_reused)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            self.assertEqual(rawhttp.read_responses(s, 1)[0][0], 200)

    def test_curl(self):
        base = self.g.api_url
        self.assertTrue(base.startswith("https://"))
        # two requests, one connection
        rc, out, err = curl("--cacert", PKI.ca, "-o", "/dev/null", "-o", "/dev/null",
                            "-w", "%{http_code} %{num_connects}\n", base + "/healthz",
                            base + "/v1/presence/nobody")
        self.assertEqual(rc, 0, err)
        self.assertEqual(out.split(), ["200", "1", "200", "0"])
        # a 350 KiB batch sent only after our "100 Continue" (curl waits for it, or 1 s)
        batch = [{"user_id": "curl-%d" % i, "type": "t", "data": {"pad": "x" * 300}} for i in range(1000)]
        path = os.path.join(PKI.dir, "batch.json")
        with open(path, "w") as f:
            json.dump(batch, f)
        rc, out, err = curl("--cacert", PKI.ca, "-H", "Content-Type: application/json",
                            "-H", "Expect: 100-continue", "--data-binary", "@" + path, base + "/v1/notify/batch", "-v")
        self.assertEqual(rc, 0, err)
        self.assertIn("100 Continue", err)
        res = json.loads(out)["results"]
        self.assertEqual(len(res), 1000)
        self.assertTrue(all(r["code"] in (202, 404) for r in res), res[:3])
        # a client that does not trust our CA refuses the certificate (curl: 60)
        rc, out, err = curl(base + "/healthz")
        self.assertEqual(rc, 60, err)

    def test_plain_http_on_the_tls_port(self):
        async def go():
            ws = await aio.connect_user(self.g, "plain-victim")
            await aio.wait_connected(self.g, "plain-victim", 1)
            # /healthz and /metrics stay open for probes
            (st, _, body), = rawhttp.raw_request(self.g.api_port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            self.assertEqual(st, 200)
            self.assertEqual(json.loads(body)["status"], "ok")
            (st, _, body), = rawhttp.raw_request(self.g.api_port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            self.assertEqual(st, 200)
            # a notification in the clear is refused, and nothing is delivered
            req = rawhttp.post("/v1/notify", {"user_id": "plain-victim", "type": "t", "data": {}})
            (st, _, body), = rawhttp.raw_request(self.g.api_port, req)
            self.assertEqual(st, 403)
            self.assertEqual(json.loads(body), {"error": "TLS required: use https://"})
            with self.assertRaises(asyncio.TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.5)
            # ... while the same over TLS arrives
            st, body = await aio.notify(self.g, "plain-victim", {"ok": 1})
            self.assertEqual(st, 200, body)
            self.assertEqual(json.loads(await asyncio.wait_for(ws.recv(), 5))["data"], {"ok": 1})
            await ws.close()
        aio.run(go())

    def test_bad_requests_over_tls_get_4xx_json(self):
        with tls_api(self.g) as s:
            s.sendall(rawhttp.post("/v1/notify", "{not json"))
            (st, _, body), = rawhttp.read_responses(s, 1)
            self.assertEqual(st, 400)
            self.assertIn("error", json.loads(body))
            # the connection goes on after a 400 on a well-framed request
            s.sendall(b"GET /v1/nothing-here HTTP/1.1\r\nHost: x\r\n\r\n")
            (st, _, body), = rawhttp.read_responses(s, 1)
            self.assertEqual(st, 404)
            self.assertEqual(json.loads(body), {"error": "no such endpoint"})
        with tls_api(self.g) as s:
            s.sendall(b"POST /v1/notify HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n")
            (st, hdrs, body), = rawhttp.read_responses(s, 1)
            self.assertEqual(st, 413)
            self.assertIn("error", json.loads(body))
            self.assertEqual(hdrs.get("connection"), "close")
            s.settimeout(T)
            self.assertEqual(s.recv(100), b"")  # our close_notify (a bare FIN raises SSLEOFError)
        with tls_api(self.g) as s:
            s.sendall(b"\x00\x01garbage\r\n\r\n")
            (st, _, body), = rawhttp.read_responses(s, 1)
            self.assertEqual(st, 400)
            self.assertIn("error", json.loads(body))

    def test_pipelined_requests_in_one_record(self):
        with tls_api(self.g) as s:
            reqs = b"".join(rawhttp.post("/v1/notify", {"user_id": "pipe-%d" % i, "type": "t", "data": {}})
                            for i in range(50))
            s.sendall(reqs)
            res = rawhttp.read_responses(s, 50, timeout=T)
            self.assertEqual([json.loads(b)["user_id"] for _, _, b in res], ["pipe-%d" % i for i in range(50)])

    def test_garbage_instead_of_client_hello(self):
        for junk in (b"\x16\x03\x01\x00\x05hello", b"\x16" + os.urandom(300),
                     b"\x16\x03\x03\xff\xff" + b"A" * 64):
            with socket.create_connection(("127.0.0.1", self.g.api_port), timeout=T) as s:
                s.sendall(junk)
                data, took = tls.read_until_eof(s, T)
                self.assertLess(took, T)
                # an alert record or nothing; never an HTTP answer
                self.assertTrue(data == b"" or data[0] == 0x15, data[:40])
        self.assertEqual(self.g.api("GET", "/healthz")[0], 200)

    def test_handshake_stopping_halfway_is_closed_by_the_deadline(self):
        ctx = PKI.client_context(alpn=None)
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ctx.wrap_bio(inc, out, server_hostname="127.0.0.1")
        with self.assertRaises(ssl.SSLWantReadError):
            obj.do_handshake()
        with socket.create_connection(("127.0.0.1", self.g.api_port), timeout=30) as s:
            s.sendall(out.read())  # the ClientHello, then silence
            data, took = tls.read_until_eof(s, 30)
            self.assertGreater(len(data), 0)  # the server's flight came
            self.assertGreaterEqual(took, 8)  # ... and the close only at the deadline
            self.assertLess(took, 25)

    def test_records_split_at_every_byte(self):
        ctx = PKI.client_context(alpn=None)
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ctx.wrap_bio(inc, out, server_hostname="127.0.0.1")
        with socket.create_connection(("127.0.0.1", self.g.api_port), timeout=T) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def pump():
                data = out.read()
                for i in range(len(data)):  # every ciphertext byte its own send
                    s.sendall(data[i:i + 1])
            while True:
                try:
                    obj.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    pump()
                    chunk = s.recv(65536)
                    self.assertTrue(chunk, "closed during the handshake")
                    inc.write(chunk)
            pump()
            obj.write(rawhttp.post("/v1/notify", {"user_id": "split", "type": "t", "data": {"k": "v" * 200}}))
            pump()
            got = b""
            while b"\r\n\r\n" not in got or not got.endswith(b"\n}\n") and not got.endswith(b"}\n"):
                try:
                    got += obj.read(65536)
                except ssl.SSLWantReadError:
                    chunk = s.recv(65536)
                    self.assertTrue(chunk, "closed before the answer: %r" % got)
                    inc.write(chunk)
            self.assertTrue(got.startswith(b"HTTP/1.1 20") or got.startswith(b"HTTP/1.1 404"), got)
            self.assertIn(b'"user_id":"split"', got)


class Reload(unittest.TestCase):
    def peer_der(self, g):
        with tls_api(g) as s:
            return s.getpeercert(binary_form=True)

    def test_reload_under_keep_alive_load(self):
        live = PKI.live_pair("api-live")
        install = live.install
        install(PKI.cert, PKI.key)
        with tls.api_group(PKI, workers=1, cert=live.cert, key=live.key) as g:
            self.assertEqual(self.peer_der(g), PKI.der(PKI.cert))
            n = 8
            done = [0] * n
            errors = []
            stop = threading.Event()

            def client(i):
                conn = g.api_connection(timeout=T)
                try:
                    conn.connect()
                    name = conn.sock.getsockname()
                    while not stop.is_set():
                        body = json.dumps({"user_id": "load-%d" % i, "type": "t", "data": {"n": done[i]}})
                        conn.request("POST", "/v1/notify", body, {"Content-Type": "application/json"})
                        r = conn.getresponse()
                        r.read()
                        if r.status not in (202, 404) or conn.sock is None or conn.sock.getsockname() != name:
                            errors.append((i, r.status, "connection replaced" if conn.sock else "closed"))
                            return
                        done[i] += 1
                        time.sleep(0.02)  # paced: nothing here depends on how fast a loop runs
                except Exception as e:  # noqa: BLE001 (reported below)
                    errors.append((i, repr(e)))
                finally:
                    conn.close()

            threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
            for t in threads:
                t.start()
            try:
                def progress():
                    before = list(done)
                    self.assertTrue(th.wait_until(lambda: errors or all(d > b for d, b in zip(done, before)), T),
                                    done)
                    self.assertEqual(errors, [])
                progress()
                install(PKI.cert2, PKI.key2)
                g.proc.send_signal(signal.SIGHUP)
                self.assertTrue(g.wait_log("API TLS certificate reloaded", T), g.log()[-3000:])
                self.assertEqual(self.peer_der(g), PKI.der(PKI.cert2))
                progress()
                # a bad pair: the reloaded one stays, in the notifier and the supervisor
                install(PKI.cert, PKI.other_key)
                g.proc.send_signal(signal.SIGHUP)
                self.assertTrue(th.wait_until(lambda: g.log().count("API TLS reload failed") >= 2, T),
                                g.log()[-3000:])
                self.assertIn("does not match", g.log())
                self.assertEqual(self.peer_der(g), PKI.der(PKI.cert2))
                progress()
            finally:
                stop.set()
                for t in threads:
                    t.join(T)
            self.assertEqual(errors, [])
            self.assertTrue(all(d > 3 for d in done), done)
            # a notifier the supervisor restarts begins with the pair it reloaded last
            install(PKI.cert2, PKI.key2)
            g.proc.send_signal(signal.SIGHUP)
            self.assertTrue(g.wait_log("API TLS certificate reloaded", T))
            npid = int(g.log().split("notifier started (pid ")[-1].split(")")[0])
            self.assertIn(npid, g.child_pids())
            os.kill(npid, signal.SIGKILL)
            self.assertTrue(th.wait_until(lambda: g.log().count("notifier started (pid ") >= 2, T * 2))
            self.assertTrue(th.wait_until(lambda: self._healthy(g), T * 2))
            self.assertEqual(self.peer_der(g), PKI.der(PKI.cert2))

    def _healthy(self, g):
        try:
            return g.api("GET", "/healthz", timeout=2)[0] == 200
        except OSError:
            return False


class ResumeOverWSS(unittest.TestCase):
    def test_resume_with_drops_over_wss_and_https(self):
        """tether-load --resume over wss:// (both sides' TLS, the API's too): clients cut
        with RST reconnect on the same entry, resume with since/epoch, and nothing is lost,
        duplicated or reordered; later handshakes resume the TLS session."""
        g = tls.group(PKI, workers=2, extra_args=["--api-tls-cert", PKI.cert, "--api-tls-key", PKI.key,
                                                  "--max-msgs-per-sec", "0"])
        g.api_ssl = PKI.client_context(alpn=None)
        with g:
            n = 60 if th.SANITIZED else 200
            p = subprocess.run([os.path.join(th.BIN, "tether-load"), "--url", tls.wss_url(g),
                                "--api", g.api_url, "--ca", PKI.ca, "--secret-file", g.secret_file,
                                "--connections", str(n), "--ping-interval", "1", "--duration", "4",
                                "--notify-rate", "100", "--resume", "--drop-rate", "20", "--drop-max", "1",
                                "--tls-resume", "--user-prefix", "rz"],
                               capture_output=True, text=True, timeout=180)
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            s = json.loads(p.stdout)
            self.assertTrue(s["tls"] and s["api_tls"])
            self.assertGreater(s["resume"]["drops"], 0, s)
            self.assertGreater(s["resume"]["reconnects"], 0, s)
            self.assertEqual((s["lost"], s["dup"], s["reordered"], s["recovered_false"]), (0, 0, 0, 0), s)
            self.assertGreater(s["resume"]["accepted"], 0, s)
            self.assertGreater(s["tls_resumed"], 0, s)


class StartupRefusals(unittest.TestCase):
    def test_bad_pairs_exit_2_with_one_line(self):
        cases = tls.bad_pairs(PKI, "--api-tls-cert", "--api-tls-key") + \
            [("--api-tls-cert", ["--api-tls-key", PKI.key])]
        for want, flags in cases:
            rc, lines = tls.startup_refusal(*flags)
            self.assertEqual(rc, 2, (flags, lines))
            self.assertEqual(len(lines), 1, lines)
            self.assertIn(want, lines[0])
            self.assertIn("--api-tls-", lines[0])


if __name__ == "__main__":
    unittest.main()
