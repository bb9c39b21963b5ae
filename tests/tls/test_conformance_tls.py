"""The RFC 6455 conformance suite (tests/conformance/test_rfc6455.py) over
wss://: every case's raw client (harness.ws.WS) is wrapped in Python's ssl,
trusting a CA made at test time, and the group serves --tls-cert/--tls-key.
The few cases that open plain sockets of their own (the raw handshake
cases), and the class that starts
its own group (a small --max-message), still run plainly (the port serves
both without --tls-only), so nothing is skipped.
"""
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/: harness
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "conformance"))
from harness import tls  # noqa: E402
from harness import ws as rawws  # noqa: E402
import test_rfc6455 as conf  # noqa: E402

PKI = tls.Pki()
CTX = PKI.client_context()
_plain_ws = rawws.WS


class TLSWS(_plain_ws):
    def __init__(self, port, token, **kw):
        if port == conf.GROUP.port:  # not a class's own plain group (the small --max-message cases)
            kw["wrap"] = lambda s: CTX.wrap_socket(s, server_hostname="localhost")
        super().__init__(port, token, **kw)


def setUpModule():
    rawws.WS = TLSWS
    conf.GROUP = tls.group(PKI, workers=2, slots=4096,
                           extra_args=["--max-message", str(conf.MAX_MESSAGE), "--log-level", "info",
                                       "--max-msgs-per-sec", "0", "--max-bytes-per-sec", "0"])
    conf.GROUP.__enter__()


def tearDownModule():
    try:
        conf.tearDownModule_plain()
    finally:
        rawws.WS = _plain_ws
        PKI.cleanup()


conf.setUpModule, conf.tearDownModule_plain, conf.tearDownModule = setUpModule, conf.tearDownModule, tearDownModule

if __name__ == "__main__":
    unittest.main(module=conf)
