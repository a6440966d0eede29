"""An HTTP proxy in front of a real registry that injects faults and counts what went through.

It forwards every method, streams request bodies through fixed buffers (responses, small
here, are read whole) and keeps the client's ``Host`` header, so that the upload ``Location``
URLs the registry builds from it point back at the proxy. Every exchange is recorded with the
body bytes the client sent and the body bytes really written back to it, so tests measure
downloads and uploads outside the product. Faults are rules matched by method and path (a
regex), each applied a number of times: an HTTP status with headers instead of forwarding
(429 with ``Retry-After``, 503), a delay, a connection cut after N response body bytes, a
flipped byte in the response body; and, for the whole proxy, a limit on request bodies (413,
as a proxy with a body-size limit answers). Standard library only.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.testbed.http_server import serve_in_background

_BUFFER = 1 << 16
# Hop-by-hop headers (RFC 7230 6.1) are the proxy's own business; lengths are set per hop.
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
}


@dataclass
class Fault:
    method: str
    path: str  # regex, searched in the request path (with its query)
    times: int = 1
    status: int | None = None  # answer this instead of forwarding
    headers: Mapping[str, str] = field(default_factory=dict)
    cut_after: int | None = None  # forward, but close the connection after this many body bytes
    flip_at: int | None = None  # forward with the byte at this offset changed
    delay: float = 0.0  # forward after this many seconds

    def matches(self, method: str, path: str) -> bool:
        return self.times > 0 and method == self.method and re.search(self.path, path) is not None


@dataclass(frozen=True)
class Served:
    method: str
    path: str
    status: int
    range: str | None
    sent_bytes: int  # the request body's bytes, as the client sent them
    body_bytes: int  # the response body's bytes written to the client
    time: float


class FaultProxy:
    def __init__(self, upstream: str, *, max_body: int | None = None) -> None:
        """``upstream``: ``127.0.0.1:PORT`` of the real registry; ``max_body``: refuse larger
        request bodies with 413."""
        self.upstream = upstream
        self.max_body = max_body
        self.faults: list[Fault] = []
        self.served: list[Served] = []
        self.in_flight = 0
        self.max_in_flight = 0  # most requests being answered at once
        self._lock = threading.Lock()
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = serve_in_background(Handler)
        self.port = self._server.server_address[1]

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def add(self, fault: Fault) -> None:
        with self._lock:
            self.faults.append(fault)

    def reset(self) -> None:
        with self._lock:
            self.faults.clear()
            self.served.clear()
            self.max_in_flight = 0

    def enter(self, change: int) -> None:
        with self._lock:
            self.in_flight += change
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(method, path):
                    fault.times -= 1
                    return fault
        return None

    def record(self, served: Served) -> None:
        with self._lock:
            self.served.append(served)

    def amend(self, served: Served, body_bytes: int) -> None:
        """The client left before the whole body was written: count what it got."""
        with self._lock:
            index = self.served.index(served)
            self.served[index] = replace(served, body_bytes=body_bytes)

    # What tests ask

    def made(self, method: str, pattern: str = "") -> list[Served]:
        """Requests of ``method`` whose path matches ``pattern`` (a regex)."""
        return [s for s in list(self.served) if s.method == method and re.search(pattern, s.path)]

    def blob_gets(self, digest: str | None = None) -> list[Served]:
        """GETs of blobs (of one digest), as served."""
        return [
            s
            for s in list(self.served)
            if s.method == "GET"
            and "/blobs/sha256:" in s.path
            and (digest is None or s.path.endswith(digest))
        ]

    def blob_bytes(self, digest: str | None = None) -> int:
        """Blob bytes downloaded (of one digest)."""
        return sum(s.body_bytes for s in self.blob_gets(digest))

    def blob_uploads(self) -> list[Served]:
        """PATCH and PUT requests to upload sessions: the ones that carry blob bytes."""
        return [
            s
            for s in list(self.served)
            if s.method in ("PATCH", "PUT") and "/blobs/uploads/" in s.path
        ]

    def blob_bytes_sent(self) -> int:
        """Blob bytes uploaded."""
        return sum(s.sent_bytes for s in self.blob_uploads())

    def mounts(self) -> list[Served]:
        return [s for s in self.made("POST", r"/blobs/uploads/\?.*mount=") if s.status == 201]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Handler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._proxy()

    def do_HEAD(self) -> None:
        self._proxy()

    def do_POST(self) -> None:
        self._proxy()

    def do_PUT(self) -> None:
        self._proxy()

    def do_PATCH(self) -> None:
        self._proxy()

    def do_DELETE(self) -> None:
        self._proxy()

    def _proxy(self) -> None:
        self.owner.enter(+1)
        try:
            self._forward()
        finally:
            self.owner.enter(-1)

    def _forward(self) -> None:
        owner = self.owner
        method, path = self.command, self.path
        length = int(self.headers.get("Content-Length") or 0)
        if self.headers.get("Transfer-Encoding"):
            # The clients under test always send Content-Length; refuse what we can't count.
            self._answer(411, {}, length)
            self.close_connection = True
            return
        fault = owner.take_fault(method, path)
        if fault is not None and fault.status is not None:
            self._discard(length)
            self._answer(fault.status, fault.headers, length)
            return
        if owner.max_body is not None and length > owner.max_body:
            self._discard(length)
            self._answer(413, {}, length)
            return
        if fault is not None and fault.delay:
            time.sleep(fault.delay)
        upstream = http.client.HTTPConnection(owner.upstream, timeout=120)
        try:
            upstream.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in _HOP_BY_HOP:
                    upstream.putheader(name, value)
            if length or method in ("POST", "PUT", "PATCH"):
                upstream.putheader("Content-Length", str(length))
            upstream.endheaders()
            left = length
            while left > 0:
                chunk = self.rfile.read(min(_BUFFER, left))
                if not chunk:
                    raise ConnectionError("the client closed the request body early")
                upstream.send(chunk)
                left -= len(chunk)
            response = upstream.getresponse()
            data = b"" if method == "HEAD" else response.read()
            status = response.status
            reply_headers = [
                (k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP
            ]
            declared = response.getheader("Content-Length")
        finally:
            upstream.close()
        if fault is not None and fault.flip_at is not None and len(data) > fault.flip_at:
            flipped = bytearray(data)
            flipped[fault.flip_at] ^= 0xFF
            data = bytes(flipped)
        cut_after = fault.cut_after if fault is not None else None
        body = data if cut_after is None else data[:cut_after]
        # Recorded before the client has its answer: a test then sees every request the
        # product made once the product returns.
        served = Served(
            method, path, status, self.headers.get("Range"), length, len(body), time.monotonic()
        )
        owner.record(served)
        self.send_response(status)
        for name, value in reply_headers:
            self.send_header(name, value)
        # HEAD: the length of the body a GET would have; else all of it, even when cut.
        self.send_header(
            "Content-Length", declared if method == "HEAD" and declared else str(len(data))
        )
        self.end_headers()
        written = 0
        try:
            for start in range(0, len(body), _BUFFER):
                self.wfile.write(body[start : start + _BUFFER])
                written = min(len(body), start + _BUFFER)
        except OSError:
            owner.amend(served, written)
            raise
        if cut_after is not None:
            self.wfile.flush()
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    def _discard(self, length: int) -> None:
        left = length
        while left > 0:
            chunk = self.rfile.read(min(_BUFFER, left))
            if not chunk:
                return
            left -= len(chunk)

    def _answer(self, status: int, headers: Mapping[str, str], sent: int) -> None:
        self.owner.record(
            Served(
                self.command,
                self.path,
                status,
                self.headers.get("Range"),
                sent,
                0,
                time.monotonic(),
            )
        )
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()
