"""The backend API's HTTP surface against a real group: bad JSON and
fields (400 naming the field), oversized bodies (413), chunked bodies (411),
unknown paths and methods, keep-alive, pipelined requests answered in order
on one raw socket, and a batch with mixed results."""
import asyncio
import http.client
import json
import os
import resource
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: harness

import harness as th  # noqa: E402
from harness.aio import connect_user, wait_connected  # noqa: E402
from harness.rawhttp import post, raw_request, read_responses  # noqa: E402

# These suites test what a user without a live connection gets today (404):
# the mailbox (202 stored) is tested in tests/notifier_it/test_notifier_mailbox.py.
NO_MAILBOX = ["--mailbox-ttl", "0"]


class Http(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.g = th.Group(workers=2, extra_args=NO_MAILBOX).start()
        cls.port = cls.g.api_port

    @classmethod
    def tearDownClass(cls):
        cls.g.__exit__(None, None, None)

    def one(self, data):
        return raw_request(self.port, data)[0]

    def test_bad_json_and_fields(self):
        cases = [
            ("{not json", "invalid JSON"),
            ("[]", "JSON object"),
            ({"type": "t"}, "user_id"),
            ({"user_id": "", "type": "t"}, "user_id"),
            ({"user_id": "x" * 65, "type": "t"}, "user_id"),
            ({"user_id": "a\nb", "type": "t"}, "user_id"),
            ({"user_id": 12, "type": "t"}, "user_id"),
            ({"user_id": "u"}, "type"),
            ({"user_id": "u", "type": ""}, "type"),
            ({"user_id": "u", "type": "t", "id": 3}, "id"),
            ("", "invalid JSON"),
        ]
        for body, needle in cases:
            st, hdrs, raw = self.one(post("/v1/notify", body))
            self.assertEqual(st, 400, (body, raw))
            self.assertEqual(hdrs["content-type"], "application/json")
            self.assertIn(needle, json.loads(raw)["error"], body)

    def test_oversized_bodies_413(self):
        big = json.dumps({"user_id": "u", "type": "t", "data": "x" * 70000})
        st, hdrs, raw = self.one(post("/v1/notify", big))
        self.assertEqual(st, 413)
        self.assertIn("65536", json.loads(raw)["error"])
        # Refused from the head alone: no need to send the megabyte.
        head = b"POST /v1/notify/batch HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n"
        st, _, raw = self.one(head)
        self.assertEqual(st, 413)
        self.assertIn("error", json.loads(raw))
        # The whole oversized body sent before reading: the answer still
        # arrives (the server drains before closing instead of resetting).
        huge = json.dumps({"user_id": "u", "type": "t", "data": "z" * 3000000})
        st, hdrs, raw = self.one(post("/v1/notify", huge))
        self.assertEqual(st, 413)
        self.assertEqual(hdrs.get("connection"), "close")
        # A batch body may be larger than a single notify.
        items = [{"user_id": "nobody-%d" % i, "type": "t", "data": {"y": "y" * 900}} for i in range(100)]
        st, _, raw = self.one(post("/v1/notify/batch", items))
        self.assertEqual(st, 200)
        self.assertEqual(len(json.loads(raw)["results"]), 100)
        # At most 10,000 notifications in one batch, whatever their size.
        st, _, raw = self.one(post("/v1/notify/batch", "[" + ",".join(["{}"] * 10001) + "]"))
        self.assertEqual(st, 413)
        self.assertIn("10000", json.loads(raw)["error"])

    def test_chunked_refused_411(self):
        data = (b"POST /v1/notify HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"2\r\n{}\r\n0\r\n\r\n")
        st, hdrs, raw = self.one(data)
        self.assertEqual(st, 411)
        self.assertIn("Content-Length", json.loads(raw)["error"])
        self.assertEqual(hdrs.get("connection"), "close")

    def test_bad_head_and_paths(self):
        st, _, raw = self.one(b"BLAH\r\n\r\n")
        self.assertEqual(st, 400)
        st, _, raw = self.one(b"GET /v2/nothing HTTP/1.1\r\n\r\n")
        self.assertEqual(st, 404)
        self.assertIn("error", json.loads(raw))
        st, _, raw = self.one(b"GET /v1/notify HTTP/1.1\r\n\r\n")
        self.assertEqual(st, 405)
        st, _, raw = self.one(b"GET /h HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n")
        self.assertEqual(st, 431)

    def test_pipelined_in_order(self):
        data = (post("/v1/notify", {"user_id": "pipe-a", "type": "t"}) +
                b"GET /v1/presence/pipe-b HTTP/1.1\r\n\r\n" +
                post("/v1/notify", "{broken") +
                b"GET /healthz HTTP/1.1\r\n\r\n" +
                post("/v1/notify/batch", [{"user_id": "pipe-c", "type": "t"}]) +
                b"GET /nope HTTP/1.1\r\n\r\n")
        out = raw_request(self.port, data, count=6)
        self.assertEqual([s for s, _, _ in out], [404, 200, 400, 200, 200, 404])
        self.assertEqual(json.loads(out[0][2])["user_id"], "pipe-a")
        self.assertEqual(json.loads(out[1][2])["user_id"], "pipe-b")
        self.assertEqual(json.loads(out[4][2])["results"][0]["user_id"], "pipe-c")

    def test_deep_pipeline_pauses_and_resumes(self):
        # More requests than the server reads ahead (it pauses past 256 owed answers).
        reqs = []
        for i in range(700):
            if i % 2:
                reqs.append(post("/v1/notify", {"user_id": "deep-%d" % i, "type": "t"}))
            else:
                reqs.append(b"GET /v1/presence/deep-%d HTTP/1.1\r\n\r\n" % i)
        out = raw_request(self.port, b"".join(reqs), count=700, timeout=30)
        for i, (st, _, raw) in enumerate(out):
            self.assertEqual(st, 404 if i % 2 else 200, i)
            self.assertEqual(json.loads(raw)["user_id"], "deep-%d" % i)

    def test_pipelined_byte_by_byte_and_keep_alive(self):
        data = post("/v1/notify", {"user_id": "drip", "type": "t"}) * 3
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for i in range(len(data)):
                s.send(data[i:i + 1])
            out = read_responses(s, 3)
            self.assertEqual([st for st, _, _ in out], [404, 404, 404])
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        for _ in range(20):
            conn.request("GET", "/healthz")
            r = conn.getresponse()
            r.read()
            self.assertEqual(r.status, 200)
        conn.close()

    def test_expect_100_continue(self):
        body = json.dumps({"user_id": "expecting", "type": "t", "data": {"x": "x" * 2000}}).encode()
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(b"POST /v1/notify HTTP/1.1\r\nExpect: 100-continue\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body))
            got = b""
            while b"\r\n\r\n" not in got:
                got += s.recv(100)
            self.assertEqual(got, b"HTTP/1.1 100 Continue\r\n\r\n")
            s.sendall(body)
            (st, _, raw), = read_responses(s, 1)
            self.assertEqual((st, json.loads(raw)["user_id"]), (404, "expecting"))
        # A body over the limit is refused from the head: no 100 first.
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(b"POST /v1/notify HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 70000\r\n\r\n")
            (st, _, _), = read_responses(s, 1)
            self.assertEqual(st, 413)

    def test_connection_close_honoured(self):
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n"
                      b"GET /healthz HTTP/1.1\r\n\r\n")
            (st, hdrs, _), = read_responses(s, 1)
            self.assertEqual(hdrs.get("connection"), "close")
            self.assertEqual(s.recv(100), b"")  # closed, second request not answered

    def test_connection_cap(self):
        """1,024 concurrent API connections are served; one more is closed at
        once (bounded memory), and capacity comes back when they go."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < 1200:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
        socks = []
        try:
            for _ in range(1024):
                socks.append(socket.create_connection(("127.0.0.1", self.port), timeout=10))
            socks[-1].sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
            self.assertEqual(read_responses(socks[-1], 1)[0][0], 200)
            extra = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            try:
                extra.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
                try:
                    self.assertEqual(extra.recv(100), b"")
                except ConnectionResetError:
                    pass
            finally:
                extra.close()
        finally:
            for s in socks:
                s.close()
        deadline = time.time() + 10
        while True:
            try:
                if self.one(b"GET /healthz HTTP/1.1\r\n\r\n")[0] == 200:
                    break
            except (ConnectionError, OSError):
                pass
            self.assertLess(time.time(), deadline, "capacity never came back")
            time.sleep(0.05)

    def test_batch_mixed(self):
        async def go():
            ws = await connect_user(self.g, "batch-on")
            await wait_connected(self.g, "batch-on", 1)
            items = [{"user_id": "batch-on", "type": "t", "data": {"i": 0}, "id": "b0"},
                     {"user_id": "batch-off", "type": "t"},
                     {"user_id": "batch-on"},
                     "not an object",
                     {"user_id": "batch-on", "type": "t", "data": {"i": 4}}]
            loop = asyncio.get_running_loop()
            out = await loop.run_in_executor(None, raw_request, self.port, post("/v1/notify/batch", items))
            st, _, raw = out[0]
            self.assertEqual(st, 200)
            res = json.loads(raw)["results"]
            self.assertEqual([r["code"] for r in res], [200, 404, 400, 400, 200])
            self.assertEqual(res[0], {"status": "delivered", "user_id": "batch-on", "id": "b0",
                                      "connections": 1, "code": 200})
            self.assertEqual(res[1], {"status": "not_connected", "user_id": "batch-off",
                                      "last_seen": None, "code": 404})
            self.assertIn("type", res[2]["error"])
            got = sorted([json.loads(await asyncio.wait_for(ws.recv(), 5))["data"]["i"] for _ in range(2)])
            self.assertEqual(got, [0, 4])
            await ws.close()
        asyncio.run(asyncio.wait_for(go(), 30))
        st, _, raw = self.one(post("/v1/notify/batch", {"user_id": "x"}))
        self.assertEqual(st, 400)
        self.assertIn("array", json.loads(raw)["error"])
        st, _, raw = self.one(post("/v1/notify/batch", []))
        self.assertEqual((st, json.loads(raw)), (200, {"results": []}))


if __name__ == "__main__":
    unittest.main(verbosity=2)
