"""CacheServer: the threaded HTTP server of `cache serve`."""

from __future__ import annotations

import logging
import socket
import socketserver
import sys
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from forklift_boot.exchange.serve.api import API_VERSION_HEADER, ApiError
from forklift_boot.exchange.serve.catalog import CacheCatalog
from forklift_boot.exchange.serve.handler import CacheRequestHandler

__all__ = ["HEADER_TIMEOUT_SECONDS", "MAX_CONNECTIONS", "CacheServer"]

log = logging.getLogger(__name__)

# A request's line and header fields must arrive within this; a client that trickles them
# would otherwise hold a thread for as long as it likes.
HEADER_TIMEOUT_SECONDS = 10.0
# Connections served at once, each by a thread; one more is answered 503 and closed at once.
# A pulling client opens a few connections (Docker and containerd download 3 layers at a
# time), so this lets a few dozen devices pull at the same moment.
MAX_CONNECTIONS = 128


class CacheServer(ThreadingHTTPServer):
    """A threaded HTTP server answering registry pulls from the cache at ``cache_dir``."""

    daemon_threads = True
    # Connections waiting to be accepted: a fleet of devices may pull at the same moment.
    request_queue_size = 64

    def __init__(
        self,
        cache_dir: Path,
        address: tuple[str, int],
        *,
        verify: bool = True,
        header_timeout: float = HEADER_TIMEOUT_SECONDS,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        # The family is the address's (an IPv6 literal needs AF_INET6); set before binding.
        host, port = address
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        self.address_family = infos[0][0]
        self.catalog = CacheCatalog(cache_dir)
        self.verify = verify
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        self._connections = 0
        self._connections_lock = threading.Lock()
        self._is_full = False  # the last connection was refused: one warning per run of them
        super().__init__((str(infos[0][4][0]), int(infos[0][4][1])), CacheRequestHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can hang without DNS.
        socketserver.TCPServer.server_bind(self)
        host, port = self.socket.getsockname()[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            is_admitted = self._connections < self.max_connections
            if is_admitted:
                self._connections += 1
            was_full, self._is_full = self._is_full, not is_admitted
        if is_admitted:
            try:
                super().process_request(request, client_address)  # starts its thread
            except BaseException:
                self._release()
                raise
            return
        (log.debug if was_full else log.warning)(
            "refused a connection from %s: %d connections are being served, the most at once",
            client_address[0],
            self.max_connections,
        )
        self._refuse(request)
        self.shutdown_request(request)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release()

    def _release(self) -> None:
        with self._connections_lock:
            self._connections -= 1

    def _refuse(self, request: socket.socket) -> None:
        """503 and the API's error, sent without waiting: the accepting thread must not block."""
        err = ApiError(
            503,
            "UNAVAILABLE",
            f"the image cache serves {self.max_connections} connections at once; try again",
        )
        body = err.body()
        head = (
            "HTTP/1.1 503 Service Unavailable\r\n"
            f"{API_VERSION_HEADER[0]}: {API_VERSION_HEADER[1]}\r\n"
            "Content-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Retry-After: 1\r\n"
            "Connection: close\r\n\r\n"
        )
        try:
            request.setblocking(False)
            request.send(head.encode("ascii") + body)
            # What the client sent already is read, so closing doesn't reset the connection
            # (and drop the answer) before the client reads it.
            request.recv(1 << 16)
        except OSError:
            pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver's default prints a traceback to stderr; a client going away is routine.
        err = sys.exc_info()[1]
        if isinstance(err, ConnectionError | TimeoutError):
            log.debug("%s: connection lost: %s", client_address[0], err)
        else:
            log.warning("couldn't serve %s: %s", client_address[0], err, exc_info=True)

    @property
    def address(self) -> str:
        """``HOST:PORT`` as a client writes it (``[::1]:5000`` for IPv6)."""
        host = self.server_name
        return f"[{host}]:{self.server_port}" if ":" in host else f"{host}:{self.server_port}"
