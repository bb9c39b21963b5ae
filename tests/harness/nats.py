"""A real nats-server for cluster tests (harness.nats): Debian's nats-server
(installed by tools/deps) on a free loopback port, its log (and JetStream
store, with jetstream=True) in a temp folder of its own that close()
removes. stop()/start() keep the port, so a test can take the broker away
and bring it back where the nodes expect it. Cluster helpers for several
tether groups sharing it are here too (nodes, node_args); cluster(n) makes
n JetStream servers forming one NATS cluster (issue 13), kill_group
SIGKILLs a whole tether node. Cut is a loopback TCP relay in front of a
server that a test can cut (every connection through it closed, new ones
refused) and mend, so one node loses the broker while the others keep it;
stream_info and stream_msg ask JetStream about a stream and one stored
message over the plain NATS protocol."""
import asyncio
import base64
import json
import os
import shutil
import signal
import selectors
import socket
import subprocess
import tempfile
import threading
import time

from harness.aio import in_thread, notify
from harness.group import Group, die_with_test, free_port

NATS = shutil.which("nats-server") or "/usr/sbin/nats-server"


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class NatsServer:
    def __init__(self, jetstream=False, name=None, cluster=None, cluster_port=None, routes=()):
        """name: --server_name; cluster (its name), cluster_port (this member's
        route port) and routes (the other members' route ports) for a cluster."""
        self.tmp = tempfile.mkdtemp(prefix="tether-nats-")
        self.port = free_port()
        self.jetstream = jetstream
        self.extra = ["--server_name", name] if name else []
        if cluster:
            self.extra += ["--cluster_name", cluster,
                           "--cluster", "nats://127.0.0.1:%d" % cluster_port,
                           "--routes", ",".join("nats://127.0.0.1:%d" % p for p in routes)]
        self.proc = None
        self.logf = None

    @property
    def url(self):
        return "nats://127.0.0.1:%d" % self.port

    def start(self, timeout=10):
        args = [NATS, "-a", "127.0.0.1", "-p", str(self.port)]
        if self.jetstream:
            args += ["-js", "-sd", os.path.join(self.tmp, "js")]
        args += self.extra
        self.logf = open(os.path.join(self.tmp, "nats.log"), "ab")
        self.proc = subprocess.Popen(args, stdout=self.logf, stderr=self.logf, preexec_fn=die_with_test())
        deadline = time.time() + timeout
        while not port_open(self.port):
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError("nats-server did not listen on %d:\n%s" % (self.port, self.log()))
            time.sleep(0.05)
        return self

    def stop(self, timeout=10, sig=signal.SIGTERM):
        """Stop it (sig, then SIGKILL); the port stays ours for start()."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.logf:
            self.logf.close()
            self.logf = None

    def log(self):
        try:
            with open(os.path.join(self.tmp, "nats.log"), "rb") as f:
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def close(self):
        self.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()
        return False


class Cut:
    """A TCP relay 127.0.0.1:port -> 127.0.0.1:target in a thread. cut():
    every relayed connection is closed at once and new ones are closed on
    accept until mend(). stall(): the connections relayed now carry nothing
    more either way (kept open, their bytes left in the kernel's buffers)
    until unstall(); connections made meanwhile are relayed as usual. url is
    what a node gets as --nats."""

    def __init__(self, target_port):
        self.target = target_port
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        self.is_cut = False
        self.pairs = {}  # socket -> its peer
        self.stalled = set()  # sockets taken out of the selector by stall()
        self.lock = threading.Lock()
        self.stopping = False
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.lsock, selectors.EVENT_READ)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return "nats://127.0.0.1:%d" % self.port

    def _drop(self, s):
        peer = self.pairs.pop(s, None)
        for x in (s, peer):
            if x is None:
                continue
            self.pairs.pop(x, None)
            self.stalled.discard(x)
            try:
                self.sel.unregister(x)
            except (KeyError, ValueError):
                pass
            x.close()

    def _run(self):
        while not self.stopping:
            with self.lock:
                if self.is_cut:
                    for s in list(self.pairs):
                        self._drop(s)
            for key, _ in self.sel.select(0.05):
                s = key.fileobj
                with self.lock:
                    if s is self.lsock:
                        c, _ = self.lsock.accept()
                        if self.is_cut:
                            c.close()
                            continue
                        try:
                            u = socket.create_connection(("127.0.0.1", self.target), timeout=2)
                        except OSError:
                            c.close()
                            continue
                        self.pairs[c], self.pairs[u] = u, c
                        self.sel.register(c, selectors.EVENT_READ)
                        self.sel.register(u, selectors.EVENT_READ)
                        continue
                    if s not in self.pairs or s in self.stalled:
                        continue  # (stalled after this select returned it)
                    try:
                        data = s.recv(65536)
                        if data:
                            self.pairs[s].sendall(data)
                            continue
                    except OSError:
                        pass
                    self._drop(s)

    def cut(self):
        with self.lock:
            self.is_cut = True
        deadline = time.time() + 5
        while self.pairs and time.time() < deadline:
            time.sleep(0.02)

    def stall(self):
        """Stop relaying on every connection open now. The relay thread reads
        only what select() returns, so once the sockets are out of the
        selector (under the lock it handles each socket under) nothing
        more of theirs is read or forwarded."""
        with self.lock:
            for s in list(self.pairs):
                self.sel.unregister(s)
                self.stalled.add(s)

    def unstall(self):
        with self.lock:
            for s in list(self.stalled):
                self.sel.register(s, selectors.EVENT_READ)
            self.stalled.clear()

    def mend(self):
        with self.lock:
            self.is_cut = False

    def close(self):
        self.stopping = True
        self.thread.join(5)
        for s in list(self.pairs):
            self._drop(s)
        self.lsock.close()


def bare_send(port, commands, headers=False):
    """Send NATS protocol commands (bytes: PUB/HPUB lines with their payloads)
    from a bare client that is not libnats, as anyone allowed on the broker
    could, and wait for the server's PONG: every command was taken (a -ERR
    fails the test)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        f = s.makefile("rb")
        f.readline()  # INFO
        connect = b'CONNECT {"verbose":false,"pedantic":false%s}\r\n' % (
            b',"headers":true' if headers else b"")
        s.sendall(connect + commands + b"PING\r\n")
        while True:
            line = f.readline()
            if not line or line.startswith(b"PONG"):
                return
            if line.startswith(b"-ERR"):
                raise AssertionError(line)


def js_api(port, subject, body=b"", timeout=5):
    """One JetStream API request over a plain NATS connection: the reply's JSON."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        f = s.makefile("rb")
        f.readline()  # INFO
        s.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nSUB _INBOX.t 1\r\n'
                  b"PUB %s _INBOX.t %d\r\n%s\r\n" % (subject.encode(), len(body), body))
        while True:
            line = f.readline()
            if not line:
                raise RuntimeError("nats-server closed the connection")
            if line.startswith(b"PING"):
                s.sendall(b"PONG\r\n")
            elif line.startswith(b"MSG "):
                n = int(line.split()[-1])
                return json.loads(f.read(n + 2)[:n])


def stream_info(port, stream, timeout=5):
    """$JS.API.STREAM.INFO.<stream>: the reply's JSON."""
    return js_api(port, "$JS.API.STREAM.INFO." + stream, timeout=timeout)


def stream_msg(port, stream, seq, timeout=5):
    """The stored message seq of stream: {"subject", "seq", "headers": {name: value}}, or
    None when it is not there (any more)."""
    r = js_api(port, "$JS.API.STREAM.MSG.GET." + stream, json.dumps({"seq": seq}).encode(), timeout)
    m = r.get("message")
    if not m:
        return None
    heads = {}
    for line in base64.b64decode(m.get("hdrs", "")).decode().split("\r\n")[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            heads[k.strip()] = v.strip()
    return {"subject": m["subject"], "seq": m["seq"], "headers": heads}


def node_args(nats, name, extra=()):
    """tether run flags for one node of the cluster on nats."""
    return ["--nats", nats.url, "--node", name] + list(extra)


def start_nodes(nats, names, extra=(), workers=1, **kw):
    """Start one group per name on nats; every one connected to the broker, or raise."""
    groups = []
    try:
        for name in names:
            g = Group(workers=workers, extra_args=node_args(nats, name, extra), **kw)
            groups.append(g)
            g.start()
        for g in groups:
            if not g.wait_log("NATS IS connected", timeout=20):
                raise RuntimeError("node never connected to NATS:\n" + g.log()[-3000:])
        return groups
    except BaseException:
        for g in groups:
            g.close()
        raise


def cluster(n=3, name="tc"):
    """n JetStream servers forming one NATS cluster (not started)."""
    cports = [free_port() for _ in range(n)]
    return [NatsServer(jetstream=True, name="n%d" % (i + 1), cluster=name, cluster_port=cports[i],
                       routes=[p for k, p in enumerate(cports) if k != i]) for i in range(n)]


def kill_group(g):
    """SIGKILL a whole tether node: the supervisor and every role (its process group)."""
    try:
        os.killpg(g.proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    g.proc.wait(10)


def finish_all(groups, servers, tmp):
    """Stop every group (failing on a sanitizer report or a bad exit, after
    all are stopped), and whatever happened every nats-server and tmp."""
    failure = None
    try:
        for g in groups:
            try:
                if g.proc and g.proc.poll() is None:
                    g.finish()
                else:
                    g.close()
            except Exception as e:  # the others still stop
                failure = failure or e
    finally:
        for n in servers:
            n.close()
        shutil.rmtree(tmp, ignore_errors=True)
    if failure:
        raise failure


# -- helpers the cluster suites share ----------------------------------------
async def frame_with_id(ws, nid, timeout=10):
    """Read frames until the notification nid arrives; return it (parsed)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        msg = json.loads(await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.time())))
        if msg.get("id") == nid:
            return msg
    raise AssertionError("notification %s never arrived" % nid)


async def notify_until(group, user, pred, data, timeout=10):
    """Post until pred(status, body) holds (subscriptions lag a connect by a scan)."""
    deadline = time.time() + timeout
    while True:
        st, body = await notify(group, user, data)
        if pred(st, body) or time.time() > deadline:
            return st, body
        await asyncio.sleep(0.05)


def reached(n):
    """notify_until's test: delivered (200) on n nodes."""
    return lambda st, body: st == 200 and body.get("nodes") == n


async def local_count(group, user, want, timeout=10):
    """Wait until group's own registry holds want connections of user."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len((await in_thread(group.dump, user))["connections"]) == want:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("%s never had %d connections on %s" % (user, want, group.shm_name))
