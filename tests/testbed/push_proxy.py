"""An HTTP proxy in front of a real registry that counts what a client sends it, for pushes.

Unlike ``fault_proxy`` it forwards every method (``PATCH`` and ``DELETE`` too), streams request
through fixed buffers (responses, small here, are read whole), and keeps the client's ``Host`` header, so the upload
``Location`` URLs that the registry builds from it point back at the proxy. Every request is
recorded with the body bytes it carried (counted here, outside the product). Faults: answer a
matching request with a status instead of forwarding it, or refuse bodies over a size (413, as a
proxy with a body-size limit does). Standard library only.
"""

from __future__ import annotations

import http.client
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
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
    status: int = 503
    headers: Mapping[str, str] = field(default_factory=dict)

    def matches(self, method: str, path: str) -> bool:
        return self.times > 0 and method == self.method and re.search(self.path, path) is not None


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    status: int
    sent_bytes: int  # the request body's bytes, as the client sent them
    received_bytes: int  # the response body's bytes


class PushProxy:
    def __init__(self, upstream: str, *, max_body: int | None = None) -> None:
        """``upstream``: ``127.0.0.1:PORT`` of the real registry; ``max_body``: refuse larger
        request bodies with 413."""
        self.upstream = upstream
        self.max_body = max_body
        self.faults: list[Fault] = []
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = serve_in_background(Handler)
        self.port = self._server.server_address[1]

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def add(self, fault: Fault) -> None:
        with self._lock:
            self.faults.append(fault)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.faults.clear()

    def take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(method, path):
                    fault.times -= 1
                    return fault
        return None

    def record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    # What tests ask

    def made(self, method: str, pattern: str = "") -> list[Request]:
        """Requests of ``method`` whose path matches ``pattern`` (a regex)."""
        return [r for r in list(self.requests) if r.method == method and re.search(pattern, r.path)]

    def blob_uploads(self) -> list[Request]:
        """PATCH and PUT requests to upload sessions: the ones that carry blob bytes."""
        return [
            r
            for r in list(self.requests)
            if r.method in ("PATCH", "PUT") and "/blobs/uploads/" in r.path
        ]

    def blob_bytes_sent(self) -> int:
        return sum(r.sent_bytes for r in self.blob_uploads())

    def mounts(self) -> list[Request]:
        return [r for r in self.made("POST", r"/blobs/uploads/\?.*mount=") if r.status == 201]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> PushProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Handler(BaseHTTPRequestHandler):
    owner: PushProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._forward()

    def do_HEAD(self) -> None:
        self._forward()

    def do_POST(self) -> None:
        self._forward()

    def do_PUT(self) -> None:
        self._forward()

    def do_PATCH(self) -> None:
        self._forward()

    def do_DELETE(self) -> None:
        self._forward()

    def _forward(self) -> None:
        owner = self.owner
        method, path = self.command, self.path
        length = int(self.headers.get("Content-Length") or 0)
        if self.headers.get("Transfer-Encoding"):
            # The clients under test always send Content-Length; refuse what we can't count.
            self._answer(method, path, 411, {}, length)
            self.close_connection = True
            return
        fault = owner.take_fault(method, path)
        if fault is not None or (owner.max_body is not None and length > owner.max_body):
            self._discard(length)
            status = fault.status if fault is not None else 413
            self._answer(method, path, status, fault.headers if fault else {}, length)
            return
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
            body = b"" if method == "HEAD" else response.read()
            # Recorded before the client has its answer: a test then sees every request the
            # product made once the product returns.
            owner.record(Request(method, path, response.status, length, len(body)))
            self.send_response(response.status)
            for name, value in response.getheaders():
                if name.lower() not in _HOP_BY_HOP:
                    self.send_header(name, value)
            declared = response.getheader("Content-Length")
            self.send_header(
                "Content-Length", declared if method == "HEAD" and declared else str(len(body))
            )
            self.end_headers()
            if body:
                self.wfile.write(body)
        finally:
            upstream.close()

    def _discard(self, length: int) -> None:
        left = length
        while left > 0:
            chunk = self.rfile.read(min(_BUFFER, left))
            if not chunk:
                return
            left -= len(chunk)

    def _answer(
        self, method: str, path: str, status: int, headers: Mapping[str, str], sent: int
    ) -> None:
        self.owner.record(Request(method, path, status, sent, 0))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()
