"""An HTTP proxy in front of a real registry that injects faults and counts what it served.

Faults are rules matched by method and path (a regex), each applied a number of times: an
HTTP status with headers (429 with ``Retry-After``, 503), a connection cut after N body bytes,
a flipped byte in the body. Every response is recorded with the body bytes really written to
the socket, so tests measure downloads outside the product. Standard library only.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.testbed.http_server import serve_in_background

# Hop-by-hop headers (RFC 7230 6.1) are the proxy's own business.
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}


@dataclass
class Fault:
    method: str
    path: str  # regex, searched in the request path
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
    body_bytes: int  # body bytes written to the client
    time: float


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        """``upstream``: ``127.0.0.1:PORT`` of the real registry."""
        self.upstream = upstream
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
        return sum(s.body_bytes for s in self.blob_gets(digest))

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
        body = self.rfile.read(length) if length else None
        fault = owner.take_fault(method, path)
        if fault is not None and fault.status is not None:
            self.send_response(fault.status)
            for name, value in fault.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()
            owner.record(Served(method, path, fault.status, None, 0, time.monotonic()))
            return
        if fault is not None and fault.delay:
            time.sleep(fault.delay)
        upstream = http.client.HTTPConnection(owner.upstream, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            upstream.request(method, path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()
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
        self.send_response(status)
        for name, value in reply_headers:
            self.send_header(name, value)
        # HEAD: the length of the body a GET would have; else what we send.
        self.send_header(
            "Content-Length", declared if method == "HEAD" and declared else str(len(data))
        )
        self.end_headers()
        sent = 0
        if method != "HEAD":
            if fault is not None and fault.cut_after is not None:
                self.wfile.write(data[: fault.cut_after])
                self.wfile.flush()
                sent = min(len(data), fault.cut_after)
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
            else:
                self.wfile.write(data)
                sent = len(data)
        owner.record(
            Served(method, path, status, self.headers.get("Range"), sent, time.monotonic())
        )
