"""Fault-test helpers (harness.faults): asyncio WebSocket clients (Debian's
python3-websockets) that ping on a schedule and record what they receive,
and small views of a group's processes (roles told apart by process name,
which the supervisor sets to tether-worker<N>, tether-janitor,
tether-notifier)."""
import asyncio
import ctypes
import json
import os

import websockets

from harness.aio import in_thread, wait_for  # noqa: F401  (the fault tests' names for them)


class Client:
    """One WebSocket client. ping_every=None: silent (no app pings and no
    protocol keepalive either, so only what the test sends refreshes it)."""

    def __init__(self, group, user, ping_every=None):
        self.group, self.user, self.ping_every = group, user, ping_every
        self.ws = None
        self.notes = []          # notification objects received
        self.pongs = 0
        self.close_code = None   # set once the connection is closed
        self.tasks = []

    async def open(self, timeout=10):
        self.close_code = None
        self.ws = await asyncio.wait_for(
            websockets.connect(self.group.ws_url(self.user), ping_interval=None, close_timeout=2,
                               open_timeout=timeout), timeout)
        self.tasks = [asyncio.ensure_future(self._read())]
        if self.ping_every:
            self.tasks.append(asyncio.ensure_future(self._ping()))
        return self

    async def _read(self):
        try:
            async for msg in self.ws:
                obj = json.loads(msg)
                if obj.get("type") == "pong":
                    self.pongs += 1
                else:
                    self.notes.append(obj)
        except websockets.ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code if self.ws.close_code is not None else 1006

    async def _ping(self):
        try:
            while True:
                await self.ws.send('{"type":"ping"}')
                await asyncio.sleep(self.ping_every)
        except websockets.ConnectionClosed:
            pass

    @property
    def closed(self):
        return self.close_code is not None

    def note_ids(self):
        return {n.get("id") for n in self.notes}

    async def reopen_until_ok(self, timeout=15):
        """Reconnect (after the worker serving it died) until it succeeds."""
        loop = asyncio.get_event_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                await self.close()
                return await self.open()
            except (OSError, asyncio.TimeoutError, websockets.InvalidHandshake,
                    websockets.ConnectionClosed):
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.2)

    async def close(self):
        for t in self.tasks:
            t.cancel()
        self.tasks = []
        if self.ws is not None:
            try:
                await asyncio.wait_for(self.ws.close(), 3)
            except Exception:
                pass


def proc_name(pid):
    try:
        with open("/proc/%d/comm" % pid) as f:
            return f.read().strip()
    except OSError:
        return None


def role_pids(group):
    """{"tether-janitor": pid, "tether-notifier": pid, "tether-worker0": pid, ...}"""
    return {proc_name(p): p for p in group.child_pids() if proc_name(p)}


def pid_running(pid):
    """True if pid exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def dump_consistent(testcase, dump, nworkers, quiet=True):
    """What must hold in every tether-dump --json snapshot. quiet=False while
    clients connect and disconnect: a slot being claimed counts as used
    before it is listed."""
    if quiet:
        testcase.assertEqual(dump["slots_used"], len(dump["connections"]), dump)
    else:
        testcase.assertGreaterEqual(dump["slots_used"] + 2 * nworkers, len(dump["connections"]), dump)
    testcase.assertEqual(len(dump["workers"]), nworkers, dump)
    slots = [c["slot"] for c in dump["connections"]]
    testcase.assertEqual(len(slots), len(set(slots)), dump)
    for c in dump["connections"]:
        testcase.assertTrue(0 <= c["worker"] < nworkers, c)
        testcase.assertGreaterEqual(c["age_s"], 0, c)


def segment_exists(group):
    return os.path.exists("/dev/shm" + group.shm_name)


class Freeze:
    """Hold a process still without any stop signal reaching its parent, as
    a debugger does (PTRACE_SEIZE + PTRACE_INTERRUPT): the supervisor sees
    no SIGCHLD, only the heartbeat stopping, so it declares the process hung
    after --hung-after (a SIGSTOP is seen, and declared, at once). Every call
    must come from the thread that froze it (ptrace is per thread)."""
    SEIZE, INTERRUPT, DETACH = 0x4206, 0x4207, 17
    WALL = 0x40000000

    def __init__(self, pid):
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        self.pid = pid

    def _call(self, req):
        if self.libc.ptrace(req, self.pid, None, None) != 0:
            raise OSError(ctypes.get_errno(), "ptrace %#x of %d" % (req, self.pid))

    def freeze(self):
        self._call(self.SEIZE)
        self._call(self.INTERRUPT)
        os.waitpid(self.pid, self.WALL)  # returns once it sits in its ptrace stop
        return self

    def thaw(self):
        """Let it run again (detach: it resumes where it stopped)."""
        self._call(self.DETACH)

    def reap_killed(self):
        """Once it was killed: reap it as its tracer, which hands it back to
        its real parent (the supervisor) to reap. True when done."""
        try:
            while True:
                pid, status = os.waitpid(self.pid, self.WALL | os.WNOHANG)
                if pid == 0:
                    return False
                if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                    return True
        except ChildProcessError:
            return True
