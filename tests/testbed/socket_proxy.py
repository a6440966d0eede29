"""A counting proxy in front of a daemon's unix socket: what the product really sent.

Tests point DOCKER_HOST at it to count request bytes and see which API calls were made, so
that "zero exports" and "only the missing layers" are measured outside the product.
"""

from __future__ import annotations

import contextlib
import re
import socket
import tempfile
import threading
from pathlib import Path

_REQUEST_LINE = re.compile(rb"(GET|POST|PUT|DELETE|HEAD) (\S+) HTTP/1\.[01]\r\n")


class SocketProxy:
    """``tcp=True`` listens on a loopback TCP port instead: a DOCKER_HOST of ``tcp://``, as a
    remote Docker is reached."""

    def __init__(self, target_socket: Path, *, tcp: bool = False) -> None:
        self.target = str(target_socket)
        self.dir = Path(tempfile.mkdtemp(prefix="fb-p"))
        self.path = self.dir / "proxy.sock"
        self.bytes_to_daemon = 0
        self.requests: list[tuple[str, str]] = []  # (method, path) as seen on the wire
        self._lock = threading.Lock()
        self._tcp = tcp
        if tcp:
            self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._server.bind(("127.0.0.1", 0))
        else:
            self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._server.bind(str(self.path))
        self._server.listen(16)
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def host(self) -> str:
        if self._tcp:
            return f"tcp://127.0.0.1:{self._server.getsockname()[1]}"
        return f"unix://{self.path}"

    def reset(self) -> None:
        with self._lock:
            self.bytes_to_daemon = 0
            self.requests.clear()

    def paths(self, method: str | None = None) -> list[str]:
        with self._lock:
            return [p for m, p in self.requests if method is None or m == method]

    def close(self) -> None:
        self._server.close()
        self.path.unlink(missing_ok=True)
        self.dir.rmdir()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(self.target)
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, to_daemon: bool) -> None:
        try:
            while data := source.recv(1 << 16):
                if to_daemon:
                    with self._lock:
                        self.bytes_to_daemon += len(data)
                        for method, path in _REQUEST_LINE.findall(data):
                            self.requests.append((method.decode(), path.decode()))
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
