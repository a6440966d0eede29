"""``cache serve``: the cache as a read-only registry, until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import logging
import re
import signal
from pathlib import Path
from typing import TextIO

from forklift_boot.cli.options import Command, add_bool, positive_int
from forklift_boot.config import Settings
from forklift_boot.errors import CacheError, ForkliftBootError, UsageError
from forklift_boot.exchange.serve import HEADER_TIMEOUT_SECONDS, MAX_CONNECTIONS, CacheServer
from forklift_boot.stores.registry.endpoints import is_loopback_host
from forklift_boot.systemd import notify

__all__ = ["COMMAND", "DEFAULT_LISTEN", "cache_serve", "parse_listen"]

log = logging.getLogger("forklift_boot")

DEFAULT_LISTEN = "127.0.0.1:5000"
_LISTEN_RE = re.compile(
    r"(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.-]+)):(?P<port>\d{1,5})"
)


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPV6]:PORT`` (port 0: any free port); UsageError otherwise."""
    match = _LISTEN_RE.fullmatch(text)
    port = int(match["port"]) if match else -1
    if match is None or port > 65535:
        raise UsageError(
            f"invalid --listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:5000 or [::1]:5000"
        )
    return match["ipv6"] or match["host"], port


def add_arguments(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"address to listen on (default {DEFAULT_LISTEN}; port 0 picks a free one)",
    )
    add_bool(
        serve, "--verify", "check each whole blob against its digest as it is sent", default=True
    )
    serve.add_argument(
        "--max-connections",
        type=positive_int,
        default=MAX_CONNECTIONS,
        metavar="N",
        help=f"clients served at once; more get HTTP 503 at once (default {MAX_CONNECTIONS})",
    )
    serve.add_argument(
        "--header-timeout",
        type=positive_int,
        default=int(HEADER_TIMEOUT_SECONDS),
        metavar="SECONDS",
        help="the longest a client may take to send a request's line and headers (default "
        f"{HEADER_TIMEOUT_SECONDS:g})",
    )


def cache_serve(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    host, port = parse_listen(args.listen)
    cache_dir = settings.cache_dir
    if not (cache_dir / "oci-layout").is_file():
        raise CacheError(
            f"couldn't serve the image cache {cache_dir}: it isn't one (no oci-layout file);"
            " fill it with `forklift-boot cache-img`, or name another with --cache-dir"
        )
    try:
        server = CacheServer(
            cache_dir,
            (host, port),
            verify=args.verify,
            header_timeout=args.header_timeout,
            max_connections=args.max_connections,
        )
    except OSError as err:
        raise ForkliftBootError(f"couldn't listen on {args.listen}: {err.strerror or err}") from err
    with server:
        try:
            _announce(server, cache_dir, settings, out)
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        except SystemExit as exit_:
            # cli.main turns SIGTERM into SystemExit(128 + SIGTERM): for a server, the way to stop.
            if exit_.code != 128 + signal.SIGTERM:
                raise
        if settings.notify_socket:
            notify("STOPPING=1")
    log.info("stopped serving the image cache")
    return 0


def _announce(server: CacheServer, cache_dir: Path, settings: Settings, out: TextIO) -> None:
    if not is_loopback_host(server.server_name):
        log.warning(
            "serving the image cache to the network at %s: whoever reaches it can pull every"
            " cached image",
            server.address,
        )
    log.info(
        "serving the image cache %s read-only at http://%s (Ctrl-C or SIGTERM stops)",
        cache_dir,
        server.address,
    )
    # The address is the command's data: with port 0 it is how a caller learns the port.
    out.write(server.address + "\n")
    out.flush()
    if settings.notify_socket:
        notify("READY=1", f"STATUS=serving {cache_dir} at http://{server.address}")


COMMAND = Command(
    "Serves the cache read-only as a registry",
    description=(
        "Serves the cached images read-only over the pull side of the OCI distribution API "
        "(plain HTTP), until SIGTERM or Ctrl-C: `docker pull HOST:PORT/library/nginx:1.27`, "
        "Docker's registry-mirrors for Docker Hub, containerd's hosts.toml mirrors for any "
        "registry. Prints the address it listens on."
    ),
    add_arguments=add_arguments,
    handler=cache_serve,
)
