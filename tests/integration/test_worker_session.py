"""Socket worker: an established WebSocket session.

JSON ping/pong (RFC 3339 UTC timestamp), protocol ping echoed, LastSeen
moving in `tether-dump --json` after a ping, error replies that keep the
connection open, the close handshake (1000 echoed, then TCP close), 1002 for
an unmasked frame, and the registry slot released after each close.
"""
import asyncio
import json
import os
import re
import socket
import struct
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: harness

from harness import wait_until  # noqa: E402
from harness.aio import app_ping, connect, run  # noqa: E402
from harness.unit import GroupTestCase, slots_of  # noqa: E402
from harness.ws import close_code, frame, raw_ws, read_frames  # noqa: E402

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


class Session(GroupTestCase):
    def test_json_ping_pong_and_last_seen(self):
        async def go():
            ws = await connect(self.g.ws_url("s-ping"))
            before = wait_until(lambda: slots_of(self.g, "s-ping"), timeout=5)[0]["last_seen"]
            await asyncio.sleep(1.2)  # dump stamps have second resolution
            pong = await app_ping(ws)
            self.assertEqual(set(pong), {"type", "timestamp"})
            self.assertEqual(pong["type"], "pong")
            self.assertRegex(pong["timestamp"], RFC3339)
            after = slots_of(self.g, "s-ping")[0]["last_seen"]
            self.assertGreater(after, before)
            await ws.close()
        run(go())
        self.assertTrue(self.g.wait_log("[WebSocket] User s-ping - connection refreshed via ping"))
        self.assertTrue(self.g.wait_log("[ConnectionManager] Updated LastSeen for user s-ping"))

    def test_protocol_ping_echo(self):
        async def go():
            ws = await connect(self.g.ws_url("s-pping"))
            waiter = await ws.ping(b"echo-me-123")  # websockets checks the payload matches
            await asyncio.wait_for(waiter, 5)
            await ws.close()
        run(go())

    def test_errors_keep_connection(self):
        async def go():
            ws = await connect(self.g.ws_url("s-err"))
            for bad in ["not json", "[1,2]", json.dumps({"type": "nope"}), json.dumps({"x": 1})]:
                await ws.send(bad)
                reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
                self.assertEqual(reply["type"], "error", bad)
                self.assertTrue(reply["error"])
            await ws.send(b"\x01\x02")
            self.assertEqual(json.loads(await asyncio.wait_for(ws.recv(), 5))["type"], "error")
            await ws.send(json.dumps({"type": "ack", "id": "n-1"}))  # accepted: no reply
            self.assertEqual((await app_ping(ws))["type"], "pong")
            await ws.close()
        run(go())

    def test_close_1000_echoed_and_slot_released(self):
        async def go():
            ws = await connect(self.g.ws_url("s-close"))
            wait_until(lambda: slots_of(self.g, "s-close"), timeout=5)
            await ws.close(code=1000)
            self.assertEqual(ws.close_rcvd.code, 1000)
        run(go())
        self.assertTrue(wait_until(lambda: not slots_of(self.g, "s-close"), timeout=5))

    def test_close_without_code_gets_1000(self):
        s, rest = raw_ws(self.g.port, self.g.token("s-close0"))
        s.sendall(frame(0x8, b""))
        frames = read_frames(s, rest)
        s.close()
        self.assertEqual([(op, close_code(p)) for op, p in frames], [(0x8, 1000)])

    def test_unmasked_frame_1002(self):
        s, rest = raw_ws(self.g.port, self.g.token("s-1002"))
        wait_until(lambda: slots_of(self.g, "s-1002"), timeout=5)
        s.sendall(frame(0x1, b'{"type":"ping"}', mask=False))
        frames = read_frames(s, rest)
        s.close()
        self.assertEqual(frames[-1][0], 0x8)
        self.assertEqual(close_code(frames[-1][1]), 1002)
        self.assertTrue(wait_until(lambda: not slots_of(self.g, "s-1002"), timeout=5))

    def test_abrupt_disconnect_releases_slot(self):
        s, _ = raw_ws(self.g.port, self.g.token("s-reset"))
        self.assertTrue(wait_until(lambda: slots_of(self.g, "s-reset"), timeout=5))
        s.close()
        self.assertTrue(wait_until(lambda: not slots_of(self.g, "s-reset"), timeout=5))

    def test_split_frames_and_pipelined_pings(self):
        s, rest = raw_ws(self.g.port, self.g.token("s-split"))
        data = frame(0x1, b'{"type":"ping"}') * 3 + frame(0x8, b"\x03\xe8")
        for i in range(len(data)):  # one byte per write
            s.sendall(data[i:i + 1])
            time.sleep(0.001)
        frames = read_frames(s, rest)
        s.close()
        pongs = [json.loads(p)["type"] for op, p in frames if op == 0x1]
        self.assertEqual(pongs, ["pong"] * 3)
        self.assertEqual((frames[-1][0], close_code(frames[-1][1])), (0x8, 1000))

    def test_notification_delivered_and_ack(self):
        async def go():
            ws = await connect(self.g.ws_url("s-notify"))
            wait_until(lambda: slots_of(self.g, "s-notify"), timeout=5)
            status, body = await asyncio.get_running_loop().run_in_executor(
                None, lambda: self.g.notify("s-notify", {"meal": 7}, nid="n-42"))
            self.assertEqual((status, body.get("connections")), (200, 1), body)
            msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
            self.assertEqual((msg["type"], msg["id"], msg["data"]), ("meal_log.completed", "n-42", {"meal": 7}))
            await ws.send(json.dumps({"type": "ack", "id": msg["id"]}))
            self.assertEqual((await app_ping(ws))["type"], "pong")
            await ws.close()
        run(go())

    def test_control_socket_gone_and_bad(self):
        path = os.path.join(self.g.env["TETHER_RUNTIME_DIR"], "worker-0.sock")
        hdr = "<IHHIIQIIQ"  # struct th_ho_msg (shm/rt/channel.h), nseq last
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
            s.settimeout(5)
            s.connect(path)
            # A (slot, gen) nobody holds: GONE, and nothing else happens.
            s.send(struct.pack(hdr, 0x54480001, 1, 0, 0, 0xDEADBEEF, 7, 2, 0, 0) + b"{}")
            r = struct.unpack(hdr, s.recv(64))
            self.assertEqual((r[1], r[2], r[5]), (3, 1, 7))
            s.send(struct.pack(hdr, 0x12345678, 1, 0, 0, 0, 8, 0, 0, 0))  # bad magic: BAD
            r = struct.unpack(hdr, s.recv(64))
            self.assertEqual((r[1], r[2], r[5]), (3, 3, 8))
            s.send(struct.pack(hdr, 0x54480001, 2, 1234, 0, 0, 9, 0, 0, 0))  # invalid close code
            self.assertEqual(struct.unpack(hdr, s.recv(64))[2], 3)

    def test_control_packet_batches(self):
        """Several requests in one packet (shm/rt/channel.h): one reply packet,
        a reply per request in order; parsing stops at a length that runs
        past the packet (answered BAD) and past TH_HO_BATCH_MAX requests."""
        path = os.path.join(self.g.env["TETHER_RUNTIME_DIR"], "worker-0.sock")
        hdr = "<IHHIIQIIQ"
        size = struct.calcsize(hdr)

        def req(seq, typ=1, code=0, payload=b"{}", length=None):
            n = len(payload) if length is None else length
            return struct.pack(hdr, 0x54480001, typ, code, 0, 0xDEADBEEF, seq, n, 0, 0) + payload

        def replies(s):
            data = s.recv(1 << 16)
            self.assertEqual(len(data) % size, 0, data)
            return [struct.unpack(hdr, data[i:i + size]) for i in range(0, len(data), size)]

        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
            s.settimeout(5)
            s.connect(path)
            # GONE, BAD (invalid close code: parsing goes on), GONE with an empty payload.
            s.send(req(11) + req(12, typ=2, code=1234, payload=b"") + req(13, payload=b""))
            self.assertEqual([(r[1], r[2], r[5]) for r in replies(s)], [(3, 1, 11), (3, 3, 12), (3, 1, 13)])
            # The second header claims more payload than the packet holds: BAD, the rest is not read.
            s.send(req(21) + req(22, length=500) + req(23))
            self.assertEqual([(r[2], r[5]) for r in replies(s)], [(1, 21), (3, 22)])
            # 65 requests: 64 answered, the 65th BAD, nothing lost from the next packet.
            s.send(b"".join(req(100 + i) for i in range(65)))
            got = replies(s)
            self.assertEqual([r[5] for r in got], list(range(100, 165)))
            self.assertEqual([r[2] for r in got], [1] * 64 + [3])
            s.send(req(7))
            self.assertEqual([(r[2], r[5]) for r in replies(s)], [(1, 7)])
            # TH_HO_F_SAME_FRAME (code 2, len 0): the previous request's frame; first in a packet: BAD.
            s.send(req(31) + req(32, code=2, payload=b""))
            self.assertEqual([(r[2], r[5]) for r in replies(s)], [(1, 31), (1, 32)])
            s.send(req(41, code=2, payload=b"") + req(42))
            self.assertEqual([(r[2], r[5]) for r in replies(s)], [(3, 41)])

    def test_delivery_by_user_is_confirmed_against_the_slot(self):
        """TH_HO_F_USER (shm/rt/channel.h): the notifier names (slot, user id)
        without a gen; the owner delivers only when its slot holds exactly
        that id, answers GONE for any other id, prefix or slot, and BAD for an
        id length of 0, past 64 or past the payload."""
        hdr = "<IHHIIQIIQ"
        size = struct.calcsize(hdr)
        user = "s-byuser-" + "x" * 45  # 54 bytes: past the 48 on the slot's first line

        def req(seq, slot, uid, frame=b'{"n":1}', code=4, ulen=None, length=None):
            body = uid.encode() + frame
            n = len(body) if length is None else length
            ul = len(uid.encode()) if ulen is None else ulen
            return struct.pack(hdr, 0x54480001, 1, code, slot, 0, seq, n, ul, 0) + body

        def replies(s):
            data = s.recv(1 << 16)
            self.assertEqual(len(data) % size, 0, data)
            return [(r[2], r[5]) for r in (struct.unpack(hdr, data[i:i + size]) for i in range(0, len(data), size))]

        async def go():
            ws = await connect(self.g.ws_url(user))
            row = wait_until(lambda: slots_of(self.g, user), timeout=5)[0]
            slot, w = row["slot"], row["worker"]
            other = slot - 1 if slot > 0 else slot + 1
            path = os.path.join(self.g.env["TETHER_RUNTIME_DIR"], "worker-%d.sock" % w)
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
                s.settimeout(5)
                s.connect(path)
                s.send(req(1, slot, user, b'{"n":1}'))
                self.assertEqual(replies(s), [(0, 1)])
                self.assertEqual(json.loads(await asyncio.wait_for(ws.recv(), 5)), {"n": 1})
                # Another id (last byte, a prefix, a longer one), another slot: GONE, nothing sent.
                s.send(req(2, slot, user[:-1] + "y") + req(3, slot, user[:-1]) + req(4, slot, user + "z")
                       + req(5, other, user))
                self.assertEqual(replies(s), [(1, 2), (1, 3), (1, 4), (1, 5)])
                # SAME_FRAME with USER: the previous request's id and frame (conn: the id's length).
                same = struct.pack(hdr, 0x54480001, 1, 4 | 2, slot, 0, 7, 0, len(user), 0)
                s.send(req(6, slot, user, b'{"n":2}') + same)
                self.assertEqual(replies(s), [(0, 6), (0, 7)])
                self.assertEqual(json.loads(await asyncio.wait_for(ws.recv(), 5)), {"n": 2})
                self.assertEqual(json.loads(await asyncio.wait_for(ws.recv(), 5)), {"n": 2})
                # Bad id lengths: BAD (parsing goes on after each).
                s.send(req(8, slot, user, ulen=0) + req(9, slot, user, ulen=65) + req(10, slot, "ab", frame=b"", ulen=3))
                self.assertEqual(replies(s), [(3, 8), (3, 9), (3, 10)])
            self.assertEqual((await app_ping(ws))["type"], "pong")  # nothing else arrived before it
            await ws.close()
        run(go())

if __name__ == "__main__":
    unittest.main()
