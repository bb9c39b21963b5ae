"""Raw HTTP/1.1 on the backend API port (harness.rawhttp), for what
http.client will not send: pipelining, chunked bodies, oversized heads."""
import json
import socket


def read_responses(sock, count, timeout=10):
    """Read count HTTP/1.1 responses (Content-Length framed) from sock.
    Returns [(status, headers dict, body bytes)]."""
    sock.settimeout(timeout)
    buf = b""
    out = []
    while len(out) < count:
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed after %d responses: %r" % (len(out), buf))
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        hdrs = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        n = int(hdrs.get("content-length", "0"))
        while len(rest) < n:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed inside a body")
            rest += chunk
        out.append((int(lines[0].split()[1]), hdrs, rest[:n]))
        buf = rest[n:]
    return out


def raw_request(port, data, count=1, timeout=10):
    """Send raw bytes on a fresh connection and read count responses."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        return read_responses(s, count, timeout)


def post(path, body, extra=""):
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    return (("POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             "Content-Length: %d\r\n%s\r\n") % (path, len(body), extra)).encode() + body
