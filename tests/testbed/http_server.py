"""A threaded HTTP server on a free loopback port, served from a background thread."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def serve_in_background(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    """Starts serving ``handler`` on 127.0.0.1 (port in ``server_address[1]``); stop it with
    ``shutdown()`` and ``server_close()``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
