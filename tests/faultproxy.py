"""A fault-injecting HTTP/1.1 proxy in front of the local S3 endpoint (tests only).

    with FaultProxy(upstream_url, seed=7) as proxy:
        proxy.set_rules(Rule("slowdown", methods={"PUT"}, probability=0.3))
        ... mount with --endpoint-url proxy.url ...
        proxy.clear()                       # pass everything through again
        proxy.faults                        # Counter: faults injected per kind

Fault kinds (a rule fires on a matching request by `probability` (seeded) or when its n-th
matching request is in `schedule` (1-based), at most `limit` times):

- ``error500`` / ``slowdown``: answer 500 InternalError / 503 SlowDown (S3 XML error body)
  without forwarding the request.
- ``reset``: forward the request (the server acts on it), send the first `fraction` of the
  raw response (headers and body), then reset the connection (RST).
- ``reset_request``: forward the request head and the first `fraction` of its body, then reset
  both connections (the server sees a broken upload; the client sees a reset).
- ``stall``: forward the request, then send nothing for `stall_seconds` and close.
- ``delay``: wait `stall_seconds`, then forward the request and its answer unchanged (a slow
  request that succeeds).
- ``truncate``: forward the request, send the response with fewer body bytes than its
  Content-Length (`fraction` of it; of the head when there is no body), then close (FIN).

Requests are parsed with Content-Length or chunked bodies; `Expect: 100-continue` is answered
by the proxy itself. Responses from ministack always carry Content-Length (chunked responses
are handled too).
"""

from __future__ import annotations

import collections
import random
import socket
import struct
import threading
import uuid
from dataclasses import dataclass, field
from urllib.parse import urlsplit

KINDS = ("error500", "slowdown", "reset", "reset_request", "stall", "truncate", "delay")
_ERRORS = {
    "error500": (
        500,
        "Internal Server Error",
        "InternalError",
        "We encountered an internal error.",
    ),
    "slowdown": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
}


@dataclass
class Rule:
    """When to inject one kind of fault."""

    kind: str
    methods: set[str] | None = None  # None: every method
    probability: float = 0.0
    schedule: set[int] = field(default_factory=set)  # 1-based indices of matching requests
    limit: int | None = None  # at most this many injections
    path_contains: str | None = None
    fraction: float = 0.5  # reset/truncate: share of the response (or request body) sent
    stall_seconds: float = 3.0
    seen: int = 0
    fired: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}")


class _Closed(Exception):
    """The peer closed the connection."""


class _Conn:
    """A socket with a read buffer."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise _Closed()
        self.buf += data

    def read_until(self, marker: bytes, limit: int = 1 << 20) -> bytes:
        while marker not in self.buf:
            if len(self.buf) > limit:
                raise _Closed()
            self._fill()
        i = self.buf.index(marker) + len(marker)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_body(self, headers: dict[str, str]) -> bytes:
        """The raw body bytes as framed (chunked bodies stay chunked)."""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            raw = b""
            while True:
                line = self.read_until(b"\r\n")
                raw += line
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    while True:  # trailers until an empty line
                        trailer = self.read_until(b"\r\n")
                        raw += trailer
                        if trailer == b"\r\n":
                            return raw
                raw += self.read_exact(size + 2)
        return self.read_exact(int(headers.get("content-length", "0") or 0))

    def read_to_eof(self) -> bytes:
        try:
            while True:
                self._fill()
        except (_Closed, OSError):
            pass
        out, self.buf = self.buf, b""
        return out


def _parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return lines[0], headers


def _rst(sock: socket.socket | None) -> None:
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def _drop_header(head: bytes, name: str) -> bytes:
    lines = head.split(b"\r\n")
    keep = [ln for ln in lines if not ln.lower().startswith(name.lower().encode() + b":")]
    return b"\r\n".join(keep)


def error_response(kind: str) -> bytes:
    status, reason, code, message = _ERRORS[kind]
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<RequestId>{uuid.uuid4().hex}</RequestId></Error>"
    ).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n"
        f"Content-Length: {len(body)}\r\nx-amz-request-id: {uuid.uuid4().hex}\r\n\r\n"
    ).encode()
    return head + body


class FaultProxy:
    """Threaded HTTP/1.1 keep-alive proxy on 127.0.0.1 (a free port) injecting faults."""

    def __init__(self, upstream: str, seed: int = 0) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self.faults: collections.Counter[str] = collections.Counter()
        self.requests: collections.Counter[str] = collections.Counter()
        self.log: list[tuple[str, str, str]] = []  # (method, path, fault kind or "")
        self._stop = threading.Event()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._socks: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True, name="faultproxy")

    # ------------------------------------------------------------ control

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        try:
            self._listener.close()
        except OSError:
            pass
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def set_rules(self, *rules: Rule) -> None:
        with self._lock:
            self._rules = list(rules)

    def clear(self) -> None:
        """Pass every request through from now on."""
        self.set_rules()

    def total_faults(self) -> int:
        with self._lock:
            return sum(self.faults.values())

    def _decide(self, method: str, path: str) -> Rule | None:
        with self._lock:
            self.requests[method] += 1
            for rule in self._rules:
                if rule.methods is not None and method not in rule.methods:
                    continue
                if rule.path_contains is not None and rule.path_contains not in path:
                    continue
                rule.seen += 1
                if rule.limit is not None and rule.fired >= rule.limit:
                    continue
                hit = rule.seen in rule.schedule or (
                    rule.probability > 0 and self._rng.random() < rule.probability
                )
                if hit:
                    rule.fired += 1
                    self.faults[rule.kind] += 1
                    self.log.append((method, path, rule.kind))
                    return rule
            self.log.append((method, path, ""))
            return None

    # ------------------------------------------------------------ serving

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _track(self, sock: socket.socket | None, add: bool) -> None:
        if sock is None:
            return
        with self._lock:
            (self._socks.add if add else self._socks.discard)(sock)

    def _connect_upstream(self) -> _Conn:
        sock = socket.create_connection(self.upstream, timeout=120)
        self._track(sock, True)
        return _Conn(sock)

    def _serve(self, client_sock: socket.socket) -> None:
        self._track(client_sock, True)
        client = _Conn(client_sock)
        up: _Conn | None = None
        try:
            while not self._stop.is_set():
                try:
                    head = client.read_until(b"\r\n\r\n")
                except (_Closed, OSError):
                    return
                request_line, headers = _parse_head(head)
                method, path = (request_line.split(" ") + ["", ""])[:2]
                if "100-continue" in headers.get("expect", "").lower():
                    client.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                    head = _drop_header(head, "expect")
                body = client.read_body(headers)
                rule = self._decide(method, path)
                if rule is not None and rule.kind in _ERRORS:
                    client.sock.sendall(error_response(rule.kind))
                    continue
                if rule is not None and rule.kind == "delay":
                    self._stop.wait(rule.stall_seconds)
                    rule = None
                if up is None:
                    up = self._connect_upstream()
                if rule is not None and rule.kind == "reset_request":
                    up.sock.sendall(head + body[: int(len(body) * rule.fraction)])
                    _rst(up.sock)
                    _rst(client.sock)
                    return
                try:
                    up.sock.sendall(head + body)
                    response, keep = self._read_response(up, method)
                except (_Closed, OSError):
                    # a kept-alive upstream connection the server closed: one fresh attempt
                    self._track(up.sock, False)
                    up.sock.close()
                    up = self._connect_upstream()
                    up.sock.sendall(head + body)
                    response, keep = self._read_response(up, method)
                if not keep:
                    self._track(up.sock, False)
                    up.sock.close()
                    up = None
                if rule is None:
                    client.sock.sendall(response)
                    continue
                self._inject(rule, client.sock, response, method)
                return
        except (_Closed, OSError):
            return
        finally:
            self._track(client_sock, False)
            try:
                client_sock.close()
            except OSError:
                pass
            if up is not None:
                self._track(up.sock, False)
                up.sock.close()

    def _read_response(self, up: _Conn, method: str) -> tuple[bytes, bool]:
        """One complete raw response from upstream, and whether the connection stays usable."""
        head = up.read_until(b"\r\n\r\n")
        status_line, headers = _parse_head(head)
        status = int(status_line.split(" ")[1])
        keep = headers.get("connection", "").lower() != "close"
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            return head, keep
        if "content-length" in headers or "chunked" in headers.get("transfer-encoding", ""):
            return head + up.read_body(headers), keep
        return head + up.read_to_eof(), False

    def _inject(self, rule: Rule, sock: socket.socket, response: bytes, method: str) -> None:
        head_len = response.index(b"\r\n\r\n") + 4
        body_len = len(response) - head_len
        if rule.kind == "stall":
            self._stop.wait(rule.stall_seconds)
            sock.close()
        elif rule.kind == "reset":
            sock.sendall(response[: max(1, int(len(response) * rule.fraction))])
            _rst(sock)
        elif rule.kind == "truncate":
            if body_len > 0:
                cut = head_len + min(body_len - 1, int(body_len * rule.fraction))
            else:
                cut = max(1, int(head_len * rule.fraction))
            sock.sendall(response[:cut])
            sock.shutdown(socket.SHUT_WR)
            sock.close()
