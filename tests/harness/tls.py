"""TLS pieces for the wss:// tests (harness.tls): a test PKI made with the
`openssl` command at test time (a CA, two server pairs signed by it, an
expired certificate, a key of no certificate), client SSL contexts that
trust that CA, and a Group started with --tls-cert/--tls-key.

    pki = tls.Pki()                     # in a temporary directory
    g = tls.group(pki, workers=2)       # a harness Group serving wss://
    a = tls.api_group(pki)              # ... whose backend API is https://
    url = tls.wss_url(g, "alice")       # wss://127.0.0.1:PORT/ws?token=...
    ctx = pki.client_context()          # for websockets.connect(url, ssl=ctx)
"""
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time

from harness.group import Group

EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]


def _openssl(cwd, *args):
    subprocess.run(["openssl"] + list(args), cwd=cwd, check=True, capture_output=True, timeout=30)


class Pki:
    """A CA and server certificates for 127.0.0.1/localhost, made now."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="tether-pki-")
        d = self.dir
        _openssl(d, "req", "-x509", *EC, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
                 "-subj", "/CN=tether test CA")
        with open(os.path.join(d, "san.ext"), "w") as f:
            f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        self.ca = os.path.join(d, "ca.pem")
        self.cert, self.key = self.server_pair("srv")
        self.cert2, self.key2 = self.server_pair("srv2")  # a second pair (reload tests)
        self.expired = os.path.join(d, "expired.pem")
        _openssl(d, "x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-out", "expired.pem", "-days", "-1", "-extfile", "san.ext")
        self.other_key = os.path.join(d, "other.key")
        _openssl(d, "genpkey", "-algorithm", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-out", "other.key")

    def server_pair(self, name):
        d = self.dir
        _openssl(d, "req", *EC, "-keyout", name + ".key", "-out", name + ".csr", "-subj", "/CN=localhost")
        _openssl(d, "x509", "-req", "-in", name + ".csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", name + ".pem", "-days", "1", "-extfile", "san.ext")
        return os.path.join(d, name + ".pem"), os.path.join(d, name + ".key")

    def der(self, cert_path):
        """The DER bytes of a PEM certificate (to compare with getpeercert(True))."""
        with open(cert_path) as f:
            return ssl.PEM_cert_to_DER_cert(f.read())

    def client_context(self, alpn=("http/1.1",), maximum=None):
        ctx = ssl.create_default_context(cafile=self.ca)
        if alpn:
            ctx.set_alpn_protocols(list(alpn))
        if maximum:
            ctx.maximum_version = maximum
        return ctx

    def live_pair(self, name):
        """Paths a running group is started with and a reload test replaces (LivePair)."""
        return LivePair(os.path.join(self.dir, name))

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


class LivePair:
    """A certificate and key file a test swaps under a running group, as a deploy
    tool would: each file replaced atomically (write beside it, rename)."""

    def __init__(self, folder):
        os.makedirs(folder, exist_ok=True)
        self.cert, self.key = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")

    def install(self, cert, key):
        for src, dst in ((cert, self.cert), (key, self.key)):
            with open(src, "rb") as f:
                data = f.read()
            with open(dst + ".tmp", "wb") as f:
                f.write(data)
            os.rename(dst + ".tmp", dst)


def group(pki, workers=2, slots=1024, extra_args=(), cert=None, key=None, **kw):
    """A Group (not started) serving wss:// with pki's pair (or cert/key given)."""
    args = ["--tls-cert", cert or pki.cert, "--tls-key", key or pki.key] + list(extra_args)
    return Group(workers=workers, slots=slots, extra_args=args, **kw)


def api_group(pki, workers=1, slots=1024, extra_args=(), cert=None, key=None, **kw):
    """A Group (not started) whose backend API is https:// (--api-tls-cert) with
    pki's pair (or cert/key given); its api() trusts pki's CA."""
    args = ["--api-tls-cert", cert or pki.cert, "--api-tls-key", key or pki.key] + list(extra_args)
    return Group(workers=workers, slots=slots, extra_args=args, api_ssl=pki.client_context(alpn=None),
                 **kw)


def bad_pairs(pki, cert_flag, key_flag):
    """(what the refusal's one line says, flags) for every pair start-up must refuse."""
    return [("No such file", [cert_flag, "/nonexistent.pem", key_flag, pki.key]),
            ("No such file", [cert_flag, pki.cert, key_flag, "/nonexistent.key"]),
            ("does not match", [cert_flag, pki.cert, key_flag, pki.other_key]),
            ("expired", [cert_flag, pki.expired, key_flag, pki.key]),
            ("no usable PEM", [cert_flag, pki.key, key_flag, pki.key]),
            (key_flag, [cert_flag, pki.cert])]


def startup_refusal(*extra):
    """`tether run` with flags it must refuse: (exit status, its non-empty stderr lines)."""
    g = Group(workers=1)
    p = subprocess.run(g.args + list(extra), capture_output=True, text=True, env=g.env, timeout=30)
    shutil.rmtree(g.tmp, ignore_errors=True)
    return p.returncode, [line for line in p.stderr.splitlines() if line.strip()]


def wss_url(g, user=None, token=None):
    return "wss" + g.ws_url(user, token)[2:]


def read_until_eof(s, timeout):
    """Read a socket until EOF (or reset, or a TLS error); returns (bytes, seconds it took)."""
    s.settimeout(timeout)
    t0, data = time.time(), b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except (ConnectionResetError, ssl.SSLError):
        pass
    return data, time.time() - t0


def connect(port, ctx, timeout=5.0, session=None):
    """A TLS socket to 127.0.0.1:port, handshake done."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return ctx.wrap_socket(raw, server_hostname="localhost", session=session)
