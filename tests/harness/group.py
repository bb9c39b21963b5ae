"""Group start-up for tether's integration tests (harness.group).

Starts a real `tether run` process group on free loopback ports with a
segment name, runtime directory and secret of its own, so tests can run in
parallel, and gives tests the pieces they need: tokens (signed here with
Python's hmac, independently of tether's own signer), the WebSocket URL,
the backend API, `tether-dump --json`, and the group's log.

Clients nobody on the team wrote: Debian's python3-websockets (the
`websockets` package) is the main client used against these groups.
"""
import base64
import hashlib
import hmac
import http.client
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import sys
import threading
import time
import ctypes

from harness import sanitizer

# ctest sets TETHER_BIN to its build's bin/; by hand, the plain build's.
BIN = os.environ.get("TETHER_BIN") or os.path.normpath(os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "build", "bin"))
SANITIZED = os.environ.get("TETHER_SANITIZED") == "1"
_counter = itertools.count()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def make_token(secret, sub, ttl=3600, alg="HS256", extra=None, header=None):
    """An HS256 JWT signed with Python's hmac (not tether's code)."""
    hdr = header if header is not None else {"alg": alg, "typ": "JWT"}
    claims = {"sub": sub, "iat": int(time.time())}
    if ttl is not None:
        claims["exp"] = int(time.time()) + ttl
    if extra:
        claims.update(extra)
    signing_input = b64url(json.dumps(hdr).encode()) + "." + b64url(json.dumps(claims).encode())
    sig = hmac.new(secret.encode() if isinstance(secret, str) else secret,
                   signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(sig)


def die_with_test():
    """preexec_fn for a server a test starts: SIGTERM it when the test process
    dies, so a test killed by ctest's timeout (or by hand) leaves no group or
    nats-server running to load the rest of the run. Linux delivers it when
    the forking *thread* exits, so it is only asked for from the main thread
    (a server started from a worker thread may outlive it: then None)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec():
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    return preexec


class Group:
    """A running `tether run` process group. Use as a context manager, or
    start() and finish() (or __exit__) by hand.

    Leaving it (__exit__, finish) stops the group with SIGTERM, waits for every
    process, removes its segment, and raises sanitizer.SanitizerReport if any
    process of the group wrote a sanitizer report to the captured output: a
    suite that starts a group cannot pass over one.
    """

    def __init__(self, workers=2, slots=1024, extra_args=(), env=None, secret="test-secret-0123456789",
                 shm_name=None, keep_mailbox=False, bin_dir=None, port_fn=None, log_level="debug",
                 prefix=(), secret_file=None, api_ssl=None):
        """bin_dir (default BIN), port_fn (default free_port), log_level,
        prefix (a command to run tether under, e.g. taskset) and secret_file
        (an existing secret instead of writing `secret`) are for tools/bench,
        which starts its groups through this class too. api_ssl: an
        ssl.SSLContext for a group started with --api-tls-cert (api() then
        speaks https://, api_url says so)."""
        self.api_ssl = api_ssl
        self.workers = workers
        self.tmp = tempfile.mkdtemp(prefix="tether-it-")
        self.bin_dir = bin_dir or BIN
        port_fn = port_fn or free_port
        self.port = port_fn()
        self.api_port = port_fn()
        self.shm_name = shm_name or "/tether-it-%d-%d" % (os.getpid(), next(_counter))
        # The mailbox (<shm_name>.mailbox) outlives a graceful stop; a test that
        # restarts a group on the same shm_name keeps it until its last group.
        self.keep_mailbox = keep_mailbox
        if secret_file:
            with open(secret_file) as f:
                secret = f.read().strip()
        self.secret = secret
        self.secret_file = secret_file or os.path.join(self.tmp, "secret")
        if not secret_file:
            with open(self.secret_file, "w") as f:
                f.write(secret + "\n")
        self.log_path = os.path.join(self.tmp, "tether.log")
        self.args = list(prefix) + [os.path.join(self.bin_dir, "tether"), "run",
                     "--listen", "127.0.0.1:%d" % self.port,
                     "--api-listen", "127.0.0.1:%d" % self.api_port,
                     "--workers", str(workers), "--slots", str(slots),
                     "--shm-name", self.shm_name,
                     "--jwt-secret-file", self.secret_file,
                     "--log-level", log_level] + list(extra_args)
        self.env = dict(os.environ)
        self.env["TETHER_RUNTIME_DIR"] = os.path.join(self.tmp, "run")
        self.env.pop("TETHER_JWT_SECRET", None)
        if env:
            self.env.update(env)
        self.proc = None

    # -- lifecycle ---------------------------------------------------------
    def start(self, timeout=20 if not SANITIZED else 40):
        self.logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, stdout=self.logf, stderr=self.logf, env=self.env,
                                     start_new_session=True, preexec_fn=die_with_test())
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("tether run exited %s:\n%s" % (self.proc.returncode, self.log()))
            try:
                status, _ = self.api("GET", "/healthz")
                if status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("tether group not healthy within %ss:\n%s" % (timeout, self.log()))

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Stop the group; returns the supervisor's exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise

    def __enter__(self):
        return self.start()

    def close(self):
        """Stop (SIGTERM, then SIGKILL after the stop timeout) and clean up;
        idempotent. Returns the supervisor's exit status."""
        rc = None
        try:
            rc = self.stop()
        finally:
            if self.proc and self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            # Whatever happened, leave no segment behind.
            for path in ["/dev/shm" + self.shm_name] + \
                    ([] if self.keep_mailbox else ["/dev/shm" + self.shm_name + ".mailbox"]):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
            if getattr(self, "logf", None):
                self.logf.close()
        return self.proc.returncode if self.proc else rc

    def check_sanitizers(self):
        """Raise sanitizer.SanitizerReport if any process of the group reported."""
        sanitizer.check(self.log(), "the log of group %s (%s)" % (self.shm_name, self.log_path))

    def finish(self, expect_exit=0):
        """Stop the group, then fail on a sanitizer report and on an exit status
        other than expect_exit (None: any). The supervisor exits non-zero when a
        child ended abnormally during the drain (a LeakSanitizer exit among them)."""
        rc = self.close()
        self.check_sanitizers()
        if expect_exit is not None and rc != expect_exit:
            raise AssertionError("tether run exited %s, expected %s:\n%s"
                                 % (rc, expect_exit, self.log()[-3000:]))
        return rc

    def __exit__(self, exc_type, exc, tb):
        self.close()
        if exc_type is None:
            self.check_sanitizers()
            return False
        if sanitizer.reports(self.log()):
            # The test already failed; still show the report it may explain.
            print("\n".join(sanitizer.reports(self.log())), file=sys.stderr)
        self.print_warnings()
        return False

    def print_warnings(self, last=40):
        """After a failure: the group's WARN and ERROR lines (a hung or killed
        role, a handoff that timed out) where ctest --output-on-failure keeps
        them; the log itself is in a temporary directory CI does not keep."""
        lines = [line for line in self.log().splitlines() if " WARN " in line or " ERROR " in line]
        print("group %s, log %s: %d WARN/ERROR lines%s" % (self.shm_name, self.log_path, len(lines),
              ", the last %d:" % last if len(lines) > last else ":"), file=sys.stderr)
        for line in lines[-last:]:
            print("  " + line[:300], file=sys.stderr)

    # -- clients -----------------------------------------------------------
    def token(self, user, **kw):
        return make_token(self.secret, user, **kw)

    def ws_url(self, user=None, token=None):
        url = "ws://127.0.0.1:%d/ws" % self.port
        if token is None and user is not None:
            token = self.token(user)
        return url + ("?token=" + token if token else "")

    @property
    def api_url(self):
        """The API's base URL (https:// with api_ssl), e.g. for tether-load --api."""
        return "%s://127.0.0.1:%d" % ("https" if self.api_ssl else "http", self.api_port)

    def api_connection(self, timeout=10):
        """A keep-alive http.client connection to the API (HTTPS with api_ssl)."""
        if self.api_ssl:
            return http.client.HTTPSConnection("127.0.0.1", self.api_port, timeout=timeout,
                                               context=self.api_ssl)
        return http.client.HTTPConnection("127.0.0.1", self.api_port, timeout=timeout)

    def api(self, method, path, body=None, headers=None, timeout=10):
        """One request on a fresh connection. Returns (status, parsed JSON or text)."""
        conn = self.api_connection(timeout)
        try:
            data = body
            hdrs = dict(headers or {})
            if body is not None and not isinstance(body, (bytes, str)):
                data = json.dumps(body)
                hdrs.setdefault("Content-Type", "application/json")
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            raw = resp.read()
            try:
                return resp.status, json.loads(raw)
            except ValueError:
                return resp.status, raw.decode(errors="replace")
        finally:
            conn.close()

    def notify(self, user, data=None, type_="meal_log.completed", nid=None):
        body = {"user_id": user, "type": type_, "data": data or {}}
        if nid is not None:
            body["id"] = nid
        return self.api("POST", "/v1/notify", body)

    def dump(self, user=None):
        args = [os.path.join(self.bin_dir, "tether-dump"), "--shm-name", self.shm_name, "--json"]
        if user:
            args += ["--user", user]
        out = subprocess.run(args, capture_output=True, timeout=30, check=True)
        sanitizer.check(out.stderr.decode(errors="replace"), "tether-dump's stderr")
        return json.loads(out.stdout)

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def steered_to_all(self):
        """True when the supervisor's last steering line names every worker:
        /healthz is 200 once each worker has beaten, but the supervisor puts a
        worker into the steering set at its next tick (and leaves a starved
        one out), so a test that needs clients on every worker waits for this
        first (the line is info: the group must log at info or debug)."""
        lines = re.findall(r"new clients go to workers ([0-9,]+)\n", self.log())
        return bool(lines) and lines[-1] == ",".join(str(w) for w in range(self.workers))

    def wait_log(self, needle, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if needle in self.log():
                return True
            time.sleep(0.05)
        return False

    def child_pids(self):
        """pids of the supervisor's children (workers, janitor, notifier)."""
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]


def wait_until(pred, timeout=10, interval=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    return pred()
