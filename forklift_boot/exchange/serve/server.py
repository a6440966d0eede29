"""CacheServer: the threaded HTTP server of `cache serve`."""

from __future__ import annotations

import logging
import socket
import socketserver
import sys
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from forklift_boot.exchange.serve.catalog import CacheCatalog
from forklift_boot.exchange.serve.handler import CacheRequestHandler

__all__ = ["CacheServer"]

log = logging.getLogger(__name__)


class CacheServer(ThreadingHTTPServer):
    """A threaded HTTP server answering registry pulls from the cache at ``cache_dir``."""

    daemon_threads = True
    # Connections waiting to be accepted: a fleet of devices may pull at the same moment.
    request_queue_size = 64

    def __init__(self, cache_dir: Path, address: tuple[str, int], *, verify: bool = True) -> None:
        # The family is the address's (an IPv6 literal needs AF_INET6); set before binding.
        host, port = address
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        self.address_family = infos[0][0]
        self.catalog = CacheCatalog(cache_dir)
        self.verify = verify
        super().__init__((str(infos[0][4][0]), int(infos[0][4][1])), CacheRequestHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can hang without DNS.
        socketserver.TCPServer.server_bind(self)
        host, port = self.socket.getsockname()[:2]
        self.server_name = str(host)
        self.server_port = int(port)

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
