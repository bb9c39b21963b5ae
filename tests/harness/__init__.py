"""tether's one Python test harness: `from harness import ...`.

Test scripts put tests/ on sys.path from their own path (two lines at the
top), so `/usr/bin/python3 tests/<folder>/test_x.py` runs by hand against
build/bin (or $TETHER_BIN) without PYTHONPATH.

  harness.group     Group: a real `tether run` on free loopback ports with its
                    own segment, runtime dir and secret; start()/finish() or a
                    with-block; ws_url, token, api, notify, dump, log, wait_log.
                    Leaving a group fails on any sanitizer report of any of its
                    processes. make_token (HS256 by Python's hmac), wait_until.
  harness.sanitizer the one sanitizer-report check (check, reports).
  harness.ws        the one raw frame encoder (frame) and a raw RFC 6455
                    client (WS), raw upgrade helpers (raw_ws, read_frames).
  harness.aio       python3-websockets glue: run, connect, connect_user,
                    app_ping, in_thread, wait_for, wait_connected, api, notify,
                    nothing_more.
  harness.rawhttp   raw HTTP/1.1 on the API port (pipelining, bad framing).
  harness.faults    fault-test clients (Client) and role/process views; Freeze
                    (ptrace stop), Starve (runnable, off the CPU) and Flood.
  harness.unit      GroupTestCase (one group per class), stop_and_check.
  harness.nats      NatsServer (Debian's nats-server on a free port, its files in
                    a temp folder close() removes; jetstream=True; stop()/start()
                    keep the port), cluster(n) (JetStream servers forming one NATS
                    cluster), start_nodes (groups with --nats/--node), kill_group,
                    port_open.
"""
from harness import sanitizer  # noqa: F401
from harness.group import BIN, SANITIZED, Group, free_port, make_token, wait_until  # noqa: F401
