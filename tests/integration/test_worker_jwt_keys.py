"""Socket worker: tokens signed with RS256, ES256 and EdDSA public keys from
--jwt-key-file (PEM) and --jwt-jwks-file (JWKS), chosen by kid, with
--jwt-audience and --jwt-issuer, beside the HS256 secret.

Keys are made and tokens signed with the `openssl` command (nobody on the
team wrote it), so tether's verifier is checked against an independent
signer. Covered: every algorithm accepted with the right key and refused
with a wrong key, an unknown kid, an alg that does not fit the key's type,
the RSA-public-key-as-HMAC-secret confusion, alg none, a bad aud or iss, an
expired token; a JWKS with several keys (and a skipped encryption key);
rotation by SIGHUP (a removed key is refused at once, live connections stay,
a bad new file keeps the keys); an unusable key file refused at start
(exit 2)."""
import asyncio
import base64
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: harness

import harness as th  # noqa: E402
from harness.aio import app_ping, connect, run  # noqa: E402
from harness.ws import http_get, upgrade_headers  # noqa: E402

AUD, ISS = "tether-test-aud", "https://idp.test/"


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def ossl(*args, data=None):
    return subprocess.run(["openssl"] + list(args), input=data, capture_output=True,
                          check=True).stdout


def der_to_raw(der):
    """ECDSA DER SEQUENCE{INTEGER r, INTEGER s} -> r || s, 32 bytes each (RFC 7518 3.4)."""
    assert der[0] == 0x30
    i = 2 if der[1] < 0x80 else 3
    out = b""
    for _ in range(2):
        assert der[i] == 0x02
        n = der[i + 1]
        v = der[i + 2:i + 2 + n].lstrip(b"\x00")
        out += v.rjust(32, b"\x00")
        i += 2 + n
    return out


class Keys:
    """Private keys on disk, made by openssl."""

    def __init__(self, d):
        self.d = d
        self.path = {}
        for name, args in (("rsa1", ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
                           ("rsa2", ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
                           ("rsa_small", ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"]),
                           ("ec1", ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]),
                           ("ec384", ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"]),
                           ("ed1", ["-algorithm", "ED25519"])):
            p = os.path.join(d, name + ".key")
            ossl("genpkey", *args, "-out", p)
            self.path[name] = p

    def pub_pem(self, name):
        return ossl("pkey", "-in", self.path[name], "-pubout").decode()

    def pub_der(self, name):
        return ossl("pkey", "-in", self.path[name], "-pubout", "-outform", "DER")

    def jwk(self, name, kid, **extra):
        if name.startswith("rsa"):
            mod = ossl("rsa", "-in", self.path[name], "-noout", "-modulus").decode()
            n = bytes.fromhex(mod.strip().split("=", 1)[1])
            k = {"kty": "RSA", "n": b64u(n), "e": b64u(b"\x01\x00\x01")}
        elif name.startswith("ec"):
            pt = self.pub_der(name)[-65:]
            k = {"kty": "EC", "crv": "P-256", "x": b64u(pt[1:33]), "y": b64u(pt[33:])}
        else:
            k = {"kty": "OKP", "crv": "Ed25519", "x": b64u(self.pub_der(name)[-32:])}
        k["kid"] = kid
        k.update(extra)
        return k

    def sign(self, name, alg, msg):
        if alg == "EdDSA":
            f = os.path.join(self.d, "msg")
            with open(f, "wb") as fh:
                fh.write(msg)
            return ossl("pkeyutl", "-sign", "-inkey", self.path[name], "-rawin", "-in", f)
        sig = ossl("dgst", "-sha256", "-sign", self.path[name], data=msg)
        return der_to_raw(sig) if alg == "ES256" else sig


def token(keys, name, alg, kid=None, claims=None, ttl=3600, header=None):
    hdr = header or {"alg": alg, "typ": "JWT"}
    if kid is not None and header is None:
        hdr["kid"] = kid
    c = {"sub": "jk-user", "aud": AUD, "iss": ISS, "exp": int(time.time()) + ttl}
    c.update(claims or {})
    c = {k: v for k, v in c.items() if v is not None}
    msg = (b64u(json.dumps(hdr).encode()) + "." + b64u(json.dumps(c).encode())).encode()
    if alg == "HS256":
        sig = hmac.new(name.encode() if isinstance(name, str) else name, msg, hashlib.sha256).digest()
    elif alg == "none":
        sig = b""
    else:
        sig = keys.sign(name, alg, msg)
    return msg.decode() + "." + b64u(sig)


def upgrade(g, tok):
    status, _, body = http_get(g.port, "/ws?token=" + tok, upgrade_headers())
    return status, body.decode(errors="replace")


def write(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


class JwtKeys(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="tether-jwk-")
        cls.keys = Keys(cls.dir)

    def pem_file(self, *names):
        text = "".join("kid: %s\n%s" % (n, self.keys.pub_pem(n)) for n in names)
        path = os.path.join(self.dir, "keys-%d.pem" % os.getpid())
        write(path, text)
        return path

    def test_algorithms_kids_rules_and_rotation(self):
        k = self.keys
        pem = self.pem_file("rsa1", "ec1", "ed1")
        jwks = os.path.join(self.dir, "jwks.json")
        write(jwks, json.dumps({"keys": [
            k.jwk("rsa2", "rsa2", use="sig", alg="RS256"),
            k.jwk("ec1", "enc-key", use="enc"),  # skipped: not a signing key
        ]}))
        g = th.Group(workers=2, extra_args=["--jwt-key-file", pem, "--jwt-jwks-file", jwks,
                                            "--jwt-audience", AUD, "--jwt-issuer", ISS])
        with g:
            ok = {
                "RS256 kid rsa1 (PEM)": token(k, "rsa1", "RS256", "rsa1"),
                "ES256 kid ec1 (PEM)": token(k, "ec1", "ES256", "ec1"),
                "EdDSA kid ed1 (PEM)": token(k, "ed1", "EdDSA", "ed1"),
                "RS256 kid rsa2 (JWKS)": token(k, "rsa2", "RS256", "rsa2"),
                "RS256 without kid tries each RSA key": token(k, "rsa2", "RS256"),
                "EdDSA without kid": token(k, "ed1", "EdDSA"),
                "HS256 secret still works": token(k, g.secret, "HS256"),
                "aud as an array": token(k, "ec1", "ES256", "ec1", {"aud": ["other", AUD]}),
            }
            for what, tok in ok.items():
                with self.subTest(what):
                    self.assertEqual(upgrade(g, tok)[0], 101, what)
            rsa_pem = k.pub_pem("rsa1")
            bad = {
                "wrong key for the kid": (token(k, "rsa2", "RS256", "rsa1"), "bad signature"),
                "ES256 signed by another key": (token(k, "ec384", "ES256", "ec1"), "bad signature"),
                "unknown kid": (token(k, "rsa1", "RS256", "nope"), "no key with this kid"),
                "ES256 header on an RSA kid": (token(k, "ec1", "ES256", "rsa1"), "no key with this kid"),
                "RS256 header on an EC kid": (token(k, "rsa1", "RS256", "ec1"), "no key with this kid"),
                "HS256 keyed with the RSA public key's PEM (kid)":
                    (token(k, rsa_pem, "HS256", "rsa1"), "bad signature"),
                "HS256 keyed with the RSA public key's PEM":
                    (token(k, rsa_pem, "HS256"), "bad signature"),
                "alg none": (token(k, None, "none"), "algorithm"),
                "EdDSA sig under an RS256 header": (
                    token(k, "ed1", "EdDSA", header={"alg": "RS256", "kid": "rsa1"}), "bad signature"),
                "wrong audience": (token(k, "rsa1", "RS256", "rsa1", {"aud": "someone-else"}),
                                   "wrong audience"),
                "no audience": (token(k, "rsa1", "RS256", "rsa1", {"aud": None}), "wrong audience"),
                "wrong issuer": (token(k, "ed1", "EdDSA", "ed1", {"iss": "https://evil/"}),
                                 "wrong issuer"),
                "expired": (token(k, "ec1", "ES256", "ec1", ttl=-10), "token expired"),
            }
            for what, (tok, why) in bad.items():
                with self.subTest(what):
                    status, body = upgrade(g, tok)
                    self.assertEqual(status, 401, "%s: %s" % (what, body))
                    self.assertIn(why, body, what)
            self.assertEqual(g.dump()["slots_used"], 0)

            # Rotation: drop rsa1 from the PEM file; a live rsa1 connection stays.
            async def rotate():
                ws = await connect(g.ws_url(token=token(k, "rsa1", "RS256", "rsa1")))
                write(pem, "kid: ec1\n" + k.pub_pem("ec1"))
                before = g.log().count("token keys reloaded")
                g.proc.send_signal(signal.SIGHUP)
                for _ in range(100):
                    if g.log().count("token keys reloaded") >= before + 2:  # both workers
                        break
                    await asyncio.sleep(0.05)
                self.assertGreaterEqual(g.log().count("token keys reloaded"), before + 2, g.log()[-3000:])
                status, body = upgrade(g, token(k, "rsa1", "RS256", "rsa1"))
                self.assertEqual(status, 401, body)
                self.assertIn("no key with this kid", body)
                self.assertEqual(upgrade(g, token(k, "ec1", "ES256", "ec1"))[0], 101)
                self.assertEqual((await app_ping(ws))["type"], "pong", "live connection dropped")
                # A bad new file: the keys in force stay.
                write(pem, "kid: x\n-----BEGIN PUBLIC KEY-----\ngarbage\n-----END PUBLIC KEY-----\n")
                g.proc.send_signal(signal.SIGHUP)
                self.assertTrue(g.wait_log("token keys not reloaded, keeping the"), g.log()[-3000:])
                self.assertEqual(upgrade(g, token(k, "ec1", "ES256", "ec1"))[0], 101)
                await ws.close()
            run(rotate(), timeout=60)

    def test_unusable_key_files_exit_2(self):
        k = self.keys
        g = th.Group(workers=1)
        small = os.path.join(self.dir, "small.pem")
        write(small, k.pub_pem("rsa_small"))
        p384 = os.path.join(self.dir, "p384.pem")
        write(p384, k.pub_pem("ec384"))
        empty_jwks = os.path.join(self.dir, "empty.json")
        write(empty_jwks, json.dumps({"keys": [k.jwk("ec1", "e", use="enc")]}))
        for flag, path, why in (("--jwt-key-file", small, "2048 bits"),
                                ("--jwt-key-file", p384, "P-256"),
                                ("--jwt-jwks-file", empty_jwks, "no usable signing key"),
                                ("--jwt-key-file", os.path.join(self.dir, "missing"), "No such file")):
            with self.subTest(why):
                p = subprocess.run(g.args + [flag, path], env=g.env, capture_output=True, text=True,
                                   timeout=20)
                self.assertEqual(p.returncode, 2, p.stderr)
                self.assertIn(flag + " " + path, p.stderr)
                self.assertIn(why, p.stderr)


if __name__ == "__main__":
    unittest.main()
