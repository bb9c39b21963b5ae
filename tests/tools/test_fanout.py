"""tether-fanout (tools/peers/fanout), the loopback fan-out ceiling that
tools/bench --batch-ceiling sets beside tether's batch figure.

A short run must print one JSON summary whose numbers hold together: every
byte the sender sent reached the receiver (bytes received equal bytes sent,
which is frames times the frame size exactly, for a frame smaller than a
WebSocket 16-bit header needs, one that needs it, and one larger than a
receive buffer; with --size-jitter and several --pairs too), each submit
carried at most --batch sends, CPU per frame and segments per frame are
finite and not negative; it must also work with a receiver woken per read.
Bad flags exit 2. Speed is not asserted: tools/bench measures it.
"""
import json
import math
import os
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: harness

import harness as th  # noqa: E402

FANOUT = os.path.join(th.BIN, "tether-fanout")


def run(args, timeout=60):
    return subprocess.run([FANOUT] + args, capture_output=True, text=True, timeout=timeout)


class FanoutTest(unittest.TestCase):
    def summary(self, args):
        r = run(args)
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.strip().splitlines()
        self.assertEqual(len(lines), 1, r.stdout)
        return json.loads(lines[0])

    def check(self, s, conns, frame, batch, jitter=0):
        self.assertEqual(s["connections"], conns)
        self.assertEqual(s["frame_bytes"], frame)
        self.assertGreater(s["frames"], 0)
        self.assertEqual(s["bytes_received"], s["bytes_sent"])
        if jitter:  # sizes frame .. frame + jitter by turns on each connection
            self.assertGreater(s["bytes_sent"], s["frames"] * frame)
            self.assertLess(s["bytes_sent"], s["frames"] * (frame + jitter))
        else:
            self.assertEqual(s["bytes_sent"], s["frames"] * frame)
        self.assertGreater(s["frames_per_s"], 0)
        self.assertGreater(s["frames_per_submit"], 0)
        self.assertLessEqual(s["frames_per_submit"], batch)
        for k in ("sender_us_per_frame", "receiver_us_per_frame", "data_segments_per_frame",
                  "receiver_cqes_per_frame"):
            self.assertTrue(math.isfinite(s[k]) and s[k] >= 0, (k, s[k]))
        self.assertGreater(s["data_segments_per_frame"], 0)  # our own frames went out as segments
        self.assertGreater(s["receiver_cqes_per_frame"], 0)

    def test_sizes(self):
        for frame in (60, 170, 3000):
            with self.subTest(frame=frame):
                s = self.summary(["--connections", "300", "--seconds", "0.5", "--batch", "64",
                                  "--frame-bytes", str(frame)])
                self.check(s, 300, frame, 64)

    def test_size_jitter_and_pairs(self):
        s = self.summary(["--connections", "301", "--seconds", "0.5", "--batch", "100", "--pairs", "3",
                          "--size-jitter", "3"])
        self.check(s, 301, 170, 100, jitter=3)
        self.assertEqual(s["pairs"], 3)

    def test_woken_per_read(self):
        s = self.summary(["--connections", "50", "--seconds", "0.3", "--batch", "50", "--rx-wait-nr", "1"])
        self.check(s, 50, 170, 50)
        self.assertEqual(s["rx_wait_nr"], 1)

    def test_bad_flags(self):
        for args in (["--batch", "0"], ["--connections", "10", "--batch", "11"], ["--frame-bytes", "1"],
                     ["--seconds", "0"], ["--rx-wait-nr", "0"], ["--pairs", "0"],
                     ["--connections", "100", "--pairs", "2", "--batch", "51"], ["--size-jitter", "-1"],
                     ["--nope", "1"], ["--batch"]):
            with self.subTest(args=args):
                r = run(args)
                self.assertEqual(r.returncode, 2, (args, r.stdout, r.stderr))
                self.assertEqual(r.stdout, "")


if __name__ == "__main__":
    unittest.main(verbosity=2)
