"""Fault-test helpers (harness.faults): asyncio WebSocket clients (Debian's
python3-websockets) that ping on a schedule and record what they receive,
and small views of a group's processes (roles told apart by process name,
which the supervisor sets to tether-worker<N>, tether-janitor,
tether-notifier)."""
import asyncio
import ctypes
import json
import os
import select
import signal
import tempfile
import threading

import websockets

from harness import ws as wsraw

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


# Run as the prefix of `tether run` (Group(prefix=...)): forks the busy loop
# Starve uses, then execs tether, so the loop is in tether's session. It
# must be: with the scheduler's autogroups (one task group per session) a
# loop in the test's session competes as a separate group and its nice level
# would count for nothing against tether's processes.
_HOG_LAUNCHER = r"""
import ctypes, os, signal, sys
go = []
pid = os.fork()
if pid == 0:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: dies with tether
    signal.signal(signal.SIGUSR1, lambda *a: go.append(1))
    while not go:
        signal.pause()
    while True:
        pass
with open(sys.argv[1], "w") as f:
    f.write(str(pid))
os.execv(sys.argv[2], sys.argv[2:])
"""


class Starve:
    """Keep a process runnable but off the CPU, as an overcommitted machine
    does (the supervisor must not take that for a hang): its main thread is
    pinned to one CPU at SCHED_IDLE beside a busy loop at nice -20 pinned to
    the same CPU (weights 3 against 88761: it gets a slice seconds apart),
    while every thread of the rest of the group and of this test is moved to
    the other CPUs. Start the group with prefix=starve.prefix() (the loop is
    forked there, sleeping until start()). The process stays runnable only
    while it has work, so the caller keeps feeding it (Flood). Needs root
    (nice -20) and two CPUs: possible() says whether this machine can."""

    def __init__(self):
        fd, self.pidfile = tempfile.mkstemp(prefix="tether-hog-")
        os.close(fd)
        self.all_cpus = os.sched_getaffinity(0)
        self.cpu = max(self.all_cpus)
        self.others = self.all_cpus - {self.cpu}
        self.hog = self.pid = None
        self.spare = []

    @staticmethod
    def possible():
        """Root, two CPUs, and the scheduler accounting the supervisor reads
        (a kernel without it keeps the old detector: starved is killed)."""
        return (os.geteuid() == 0 and len(os.sched_getaffinity(0)) >= 2
                and os.path.exists("/proc/self/schedstat"))

    def prefix(self):
        return ["/usr/bin/python3", "-c", _HOG_LAUNCHER, self.pidfile]

    def _pin_threads(self, pid, cpus):
        for tid in os.listdir("/proc/%d/task" % pid):
            try:
                os.sched_setaffinity(int(tid), cpus)
            except OSError:
                pass  # a thread that ended meanwhile

    def start(self, group, pid):
        with open(self.pidfile) as f:
            self.hog = int(f.read())
        os.unlink(self.pidfile)
        self.pid = pid
        self.spare = [p for p in [group.proc.pid] + group.child_pids() + [os.getpid()]
                      if p not in (pid, self.hog)]
        for p in self.spare:
            self._pin_threads(p, self.others)
        os.sched_setaffinity(self.hog, {self.cpu})
        os.setpriority(os.PRIO_PROCESS, self.hog, -20)
        os.sched_setaffinity(pid, {self.cpu})
        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
        os.kill(self.hog, signal.SIGUSR1)
        return self

    def stop(self):
        if self.hog:
            try:
                os.kill(self.hog, signal.SIGKILL)  # the supervisor reaps it (not one of its roles)
            except ProcessLookupError:
                pass
            self.hog = None
        try:
            os.sched_setscheduler(self.pid, os.SCHED_OTHER, os.sched_param(0))
            os.sched_setaffinity(self.pid, self.all_cpus)
        except OSError:
            pass  # it is gone: the test says so
        for p in self.spare:
            try:
                self._pin_threads(p, self.all_cpus)
            except OSError:
                pass


class Flood:
    """A raw WebSocket client (harness.ws.WS) sending acks, which get no reply,
    as fast as the server takes them, from a thread kept off `avoid_cpu`. Each
    ack carries an array of 8,000 numbers: parsing one costs the worker far
    more than writing it costs this thread, so a starved worker always has
    input waiting and never sleeps (a worker that keeps up and sleeps between
    reads is, rightly, scheduled soon after each wake-up). stop() ends the
    thread; sent counts the frames written whole."""

    def __init__(self, ws, avoid_cpu):
        self.ws, self.avoid = ws, avoid_cpu
        pad = b",".join([b"0"] * 8000)
        frame = wsraw.frame(0x1, b'{"type":"ack","id":"flood","pad":[' + pad + b']}')
        self.frames_per_chunk = 16
        self.chunk = frame * self.frames_per_chunk
        self.sent = 0
        self.error = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        os.sched_setaffinity(0, os.sched_getaffinity(0) - {self.avoid})
        s = self.ws.sock
        try:
            while not self._stop.is_set():
                off = 0
                while off < len(self.chunk):  # a chunk goes whole: the stream stays framed
                    if not select.select([], [s], [], 0.2)[1]:
                        continue
                    off += s.send(self.chunk[off:])
                self.sent += self.frames_per_chunk
        except OSError as e:
            self.error = e

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self._stop.set()
        self.thread.join(30)
