"""The cache served read-only as a registry: the pull side of the OCI distribution API.

Reads take no lock, by design. A request's answer comes from one open descriptor of one blob
file, and the cache never changes a blob file in place: blobs are written under a temporary
name, fsynced and renamed to their digest; index.json is replaced by a rename; `cache del-img`,
gc and `verify --repair` only unlink. An open descriptor keeps reading the complete file it
opened, so a response is never half a file, whatever a writer does meanwhile; a blob deleted
before it was opened is a 404, as on any registry. Taking the shared lock per request would add
nothing to that and would stall every pull for as long as a `cache-img` holds the exclusive lock.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import socket
import socketserver
import stat
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import parse_qs, quote, urlencode

from forklift_boot import __version__
from forklift_boot.cache import BUFFER_SIZE, MAX_JSON_BLOB_SIZE, CacheReader, Descriptor
from forklift_boot.cache.walk import ROLE_INDEX, ROLE_MANIFEST, walk_blobs
from forklift_boot.errors import CacheError, ImageRefError
from forklift_boot.refs import (
    NAME_TOTAL_LENGTH_MAX,
    REGISTRY_HOST_RE,
    REPOSITORY_RE,
    TAG_RE,
    host_path_component,
    parse_image_ref,
    path_component_host,
)

__all__ = [
    "ApiError",
    "CacheCatalog",
    "CacheServer",
    "RangeNotSatisfiableError",
    "Repository",
    "catalog_name",
    "parse_byte_range",
    "repository_name",
]

log = logging.getLogger(__name__)

API_VERSION_HEADER = ("Docker-Distribution-API-Version", "registry/2.0")
# An idle keep-alive connection (or a client that stops reading) frees its thread after this.
IDLE_TIMEOUT_SECONDS = 60.0
# A refused write's body is read and dropped up to this size, so the connection stays usable.
_MAX_DISCARDED_BODY = 1 << 20

# The cache stores sha256 blobs only; a digest is checked before it names anything.
_DIGEST_RE = re.compile(r"sha256:[a-f0-9]{64}")
_DOCKER_HUB = "docker.io"
# containerd sends the registry's host as written in the ref; Docker Hub has several spellings.
_DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_MANIFEST_PATH_RE = re.compile(r"/v2/(?P<name>.+)/manifests/(?P<reference>[^/]+)")
_BLOB_PATH_RE = re.compile(r"/v2/(?P<name>.+)/blobs/(?P<digest>[^/]+)")
_TAGS_PATH_RE = re.compile(r"/v2/(?P<name>.+)/tags/list")
_RANGE_RE = re.compile(r"bytes=([0-9]*)-([0-9]*)")
_COUNT_RE = re.compile(r"[0-9]{1,9}")  # ASCII digits only: int() also reads "٣"


class ApiError(Exception):
    """A registry API error: its HTTP status and the JSON error body's code and message."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        detail: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.detail = dict(detail or {})
        self.headers = dict(headers or {})

    def body(self) -> bytes:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail:
            error["detail"] = self.detail
        return json.dumps({"errors": [error]}).encode()


class RangeNotSatisfiableError(Exception):
    """A Range header that is malformed or asks for bytes past the end (HTTP 416)."""


# Names


def repository_name(name: str, namespace: str | None = None) -> str:
    """The canonical repository (``docker.io/library/alpha``) that a request's name means.

    Without ``namespace`` the name is read by Docker's rules, so ``library/alpha`` and ``alpha``
    are Docker Hub's, and ``ghcr.io/x/y`` is ghcr.io's; a first component ``HOST_PORT`` stands
    for ``HOST:PORT`` (``127.0.0.1_5000/x``, as `cache push` names it: a repository name can't
    hold a ``:``). ``namespace`` is the registry host that containerd adds as ``?ns=`` when it
    asks a mirror; then the name is the path in that registry. ApiError NAME_INVALID when the
    name or namespace is not one.
    """
    # distribution/reference's path grammar: components start and end with [a-z0-9], so no
    # "..", no "%", no empty component can get through.
    if len(name) > NAME_TOTAL_LENGTH_MAX or REPOSITORY_RE.fullmatch(name) is None:
        raise _name_invalid(name)
    if namespace is not None:
        if REGISTRY_HOST_RE.fullmatch(namespace) is None:
            raise ApiError(
                400, "NAME_INVALID", "invalid ns parameter: not a registry host", {"ns": namespace}
            )
        host = _DOCKER_HUB if namespace.lower() in _DOCKER_HUB_ALIASES else namespace
        path = f"library/{name}" if host == _DOCKER_HUB and "/" not in name else name
        return f"{host}/{path}"
    first, _, rest = name.partition("/")
    text = name
    if rest and (host_port := path_component_host(first)) is not None:
        text = f"{host_port}/{rest}"
    try:
        return parse_image_ref(text).name
    except ImageRefError as err:
        raise _name_invalid(name) from err


def catalog_name(repository: str, namespace: str | None = None) -> str | None:
    """How a client names ``repository`` (canonical) in a request, or None if it can't.

    Docker Hub's repositories go by their path (``library/alpha``), others by host and path
    (``ghcr.io/x/y``, ``127.0.0.1_5000/x``); an IPv6 host has no such form. With ``namespace``,
    only that registry's repositories, by path.
    """
    host, _, path = repository.partition("/")
    if namespace is not None:
        wanted = _DOCKER_HUB if namespace.lower() in _DOCKER_HUB_ALIASES else namespace
        return path if host == wanted else None
    if host == _DOCKER_HUB:
        name = path
    elif (component := host_path_component(host)) is not None:
        name = f"{component}/{path}"
    else:
        return None
    try:
        return name if repository_name(name) == repository else None
    except ApiError:
        return None


def _name_invalid(name: str) -> ApiError:
    return ApiError(400, "NAME_INVALID", "invalid repository name", {"name": name})


# Ranges


def parse_byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The one byte range (first, last; inclusive) that a Range header asks for, or None to
    send the whole blob.

    Other units and lists of ranges are ignored, which RFC 9110 allows (the whole blob is the
    answer); a malformed or unsatisfiable ``bytes=`` range raises RangeNotSatisfiableError, as
    Go's http.ServeContent (and so distribution's registry) answers it.
    """
    if header is None:
        return None
    text = header.strip()
    if not text.startswith("bytes=") or "," in text:
        return None
    match = _RANGE_RE.fullmatch(text.replace(" ", ""))
    if match is None or match[1] == match[2] == "":
        raise RangeNotSatisfiableError(header)
    if match[1] == "":
        # A suffix: the last N bytes.
        count = int(match[2])
        if count == 0 or size == 0:
            raise RangeNotSatisfiableError(header)
        return max(size - count, 0), size - 1
    first = int(match[1])
    last = int(match[2]) if match[2] else size - 1
    if first > last or first >= size:
        raise RangeNotSatisfiableError(header)
    return first, min(last, size - 1)


# What the cache holds, by repository


@dataclass
class Repository:
    """One repository as served: its tags, the manifests and blobs its images reach."""

    tags: dict[str, Descriptor] = field(default_factory=dict)
    manifests: dict[str, str] = field(default_factory=dict)  # digest -> media type
    blobs: set[str] = field(default_factory=set)


class CacheCatalog:
    """The cache's images by repository, rebuilt whenever index.json is replaced."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir
        self._lock = threading.Lock()
        self._version: tuple[int, ...] | None = None
        self._repositories: dict[str, Repository] = {}

    def repositories(self) -> dict[str, Repository]:
        """Canonical repository name -> what it serves; CacheError if index.json is unreadable."""
        with self._lock:
            version = self._index_version()
            if version != self._version or version is None:
                self._repositories = self._build()
                self._version = version
            return self._repositories

    def _index_version(self) -> tuple[int, ...] | None:
        # index.json is only ever replaced by a rename: a new inode means new contents.
        try:
            info = os.stat(self.cache_dir / "index.json")
        except FileNotFoundError:
            return None
        except OSError as err:
            raise CacheError(f"couldn't read {self.cache_dir}/index.json: {err.strerror}") from err
        return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)

    def _build(self) -> dict[str, Repository]:
        # A reader without ImageCache's lock: see the module docstring.
        reader = CacheReader(self.cache_dir)
        repositories: dict[str, Repository] = {}
        pinned_tags: dict[tuple[str, str], Descriptor] = {}
        for image in reader.images():
            try:
                ref = parse_image_ref(image.canonical)
            except ImageRefError as err:
                log.warning("not serving %s from the image cache: %s", image.canonical, err)
                continue
            walk = walk_blobs(reader, image.descriptor)
            problem = walk.image_problem()
            if problem is not None:
                log.warning(
                    "not serving %s from the image cache %s: %s; run `forklift-boot cache verify"
                    " --repair`",
                    image.canonical,
                    self.cache_dir,
                    problem,
                )
                continue
            repository = repositories.setdefault(ref.name, Repository())
            missing = {reached.descriptor.digest for reached in walk.missing}
            for reached in walk.reached:
                digest = reached.descriptor.digest
                if digest in missing:
                    continue
                repository.blobs.add(digest)
                if reached.role in (ROLE_INDEX, ROLE_MANIFEST):
                    repository.manifests.setdefault(digest, reached.descriptor.media_type)
            if ref.tag is None:
                continue
            if ref.digest is None:
                # A plain tag entry says what the tag is now; it wins over pinned ones.
                repository.tags[ref.tag] = image.descriptor
            else:
                pinned_tags.setdefault((ref.name, ref.tag), image.descriptor)
        for (name, tag), descriptor in pinned_tags.items():
            repositories[name].tags.setdefault(tag, descriptor)
        log.debug(
            "serving %d repositories from %s",
            len(repositories),
            self.cache_dir,
        )
        return repositories

    def open_blob(self, digest: str) -> BinaryIO | None:
        """The blob file opened for reading, or None if the cache doesn't have it.

        ``digest`` must have been checked against the strict sha256 pattern. Symbolic links and
        anything but a regular file are refused: only what the cache wrote is served.
        """
        if _DIGEST_RE.fullmatch(digest) is None:
            raise ValueError(f"unchecked digest {digest!r}")
        path = self.cache_dir / "blobs" / "sha256" / digest.removeprefix("sha256:")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as err:
            if err.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
                return None
            raise CacheError(f"couldn't open {path}: {err.strerror}") from err
        file = os.fdopen(fd, "rb", buffering=0)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            file.close()
            return None
        return file


# HTTP


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
        super().__init__((str(infos[0][4][0]), int(infos[0][4][1])), _Handler)

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


class _Handler(BaseHTTPRequestHandler):
    server: CacheServer
    protocol_version = "HTTP/1.1"
    server_version = f"forklift-boot/{__version__}"
    timeout = IDLE_TIMEOUT_SECONDS

    def setup(self) -> None:
        super().setup()
        self._status = 0
        self._sent = 0
        self._headers_sent = False

    def do_GET(self) -> None:
        self._handle(send_body=True)

    def do_HEAD(self) -> None:
        self._handle(send_body=False)

    def do_PUT(self) -> None:
        self._handle_write()

    def do_POST(self) -> None:
        self._handle_write()

    def do_PATCH(self) -> None:
        self._handle_write()

    def do_DELETE(self) -> None:
        self._handle_write()

    # Logging: one debug line per request, problems as warnings.

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if isinstance(code, int):
            self._status = code

    def log_error(self, format: str, *args: Any) -> None:
        # Malformed requests and timeouts: the client's problem, not the server's.
        log.debug("%s: %s", self.address_string(), format % args)

    # Dispatch

    def _handle_write(self) -> None:
        self._discard_body()
        self._handle(send_body=True, refuse=True)

    def _handle(self, *, send_body: bool, refuse: bool = False) -> None:
        started = time.monotonic()
        self._status, self._sent, self._headers_sent = 0, 0, False
        try:
            if refuse:
                raise ApiError(
                    405,
                    "UNSUPPORTED",
                    "the image cache is served read-only",
                    headers={"Allow": "GET, HEAD"},
                )
            self._route(send_body)
        except ApiError as err:
            self._send_error(err, send_body=send_body)
        except CacheError as err:
            # index.json unreadable, a blob that can't be opened: the cache's problem.
            log.warning("couldn't answer %s %s: %s", self.command, self.path, err)
            self._fail(ApiError(500, "UNKNOWN", str(err)), send_body=send_body)
        except (ConnectionError, TimeoutError) as err:
            log.debug("%s: connection lost: %s", self.address_string(), err)
            self.close_connection = True
        except Exception as err:
            log.warning("couldn't answer %s %s: %s", self.command, self.path, err, exc_info=True)
            self._fail(ApiError(500, "UNKNOWN", f"internal error: {err}"), send_body=send_body)
        finally:
            log.debug(
                '%s "%s %s" %s %d bytes %.3f s',
                self.address_string(),
                self.command,
                self.path,
                self._status or "-",
                self._sent,
                time.monotonic() - started,
            )

    def _fail(self, err: ApiError, *, send_body: bool) -> None:
        if self._headers_sent:
            self.close_connection = True  # mid-body: the client sees a short response
        else:
            self._send_error(err, send_body=send_body)

    def _route(self, send_body: bool) -> None:
        path, _, query = self.path.partition("?")
        params = parse_qs(query, keep_blank_values=True)
        namespace = _single(params, "ns")
        if path in ("/v2", "/v2/"):
            self._send_json({}, send_body=send_body)
            return
        if path == "/v2/_catalog":
            self._catalog(params, namespace, send_body=send_body)
            return
        if match := _TAGS_PATH_RE.fullmatch(path):
            self._tags(match["name"], params, namespace, send_body=send_body)
            return
        if match := _MANIFEST_PATH_RE.fullmatch(path):
            self._manifest(match["name"], match["reference"], namespace, send_body=send_body)
            return
        if match := _BLOB_PATH_RE.fullmatch(path):
            self._blob(match["name"], match["digest"], namespace, send_body=send_body)
            return
        raise ApiError(404, "UNSUPPORTED", "not an endpoint of the registry API", {"path": path})

    # Endpoints

    def _catalog(
        self, params: dict[str, list[str]], namespace: str | None, *, send_body: bool
    ) -> None:
        if namespace is not None and REGISTRY_HOST_RE.fullmatch(namespace) is None:
            raise ApiError(
                400, "NAME_INVALID", "invalid ns parameter: not a registry host", {"ns": namespace}
            )
        names = sorted(
            name
            for repository in self.server.catalog.repositories()
            if (name := catalog_name(repository, namespace)) is not None
        )
        page, next_params = _paginate(names, params)
        self._send_json(
            {"repositories": page}, send_body=send_body, headers=_link("/v2/_catalog", next_params)
        )

    def _tags(
        self, name: str, params: dict[str, list[str]], namespace: str | None, *, send_body: bool
    ) -> None:
        repository = self._repository(name, namespace)
        page, next_params = _paginate(sorted(repository.tags), params)
        self._send_json(
            {"name": name, "tags": page},
            send_body=send_body,
            headers=_link(f"/v2/{name}/tags/list", next_params),
        )

    def _manifest(
        self, name: str, reference: str, namespace: str | None, *, send_body: bool
    ) -> None:
        repository = self._repository(name, namespace)
        if ":" in reference:
            digest = _check_digest(reference)
            media_type = repository.manifests.get(digest)
            if media_type is None:
                raise _manifest_unknown(name, reference)
        else:
            if TAG_RE.fullmatch(reference) is None:
                raise ApiError(400, "TAG_INVALID", "invalid tag", {"tag": reference})
            descriptor = repository.tags.get(reference)
            if descriptor is None:
                raise _manifest_unknown(name, reference)
            digest, media_type = descriptor.digest, descriptor.media_type
        data = self._read_manifest(digest)
        if data is None:
            raise _manifest_unknown(name, reference)
        self._start(
            200,
            {
                "Content-Type": media_type,
                "Content-Length": str(len(data)),
                "Docker-Content-Digest": digest,
                "ETag": f'"{digest}"',
            },
        )
        if send_body:
            self._write(data)

    def _blob(self, name: str, digest: str, namespace: str | None, *, send_body: bool) -> None:
        repository = self._repository(name, namespace)
        digest = _check_digest(digest)
        if digest not in repository.blobs:
            raise _blob_unknown(digest)
        file = self.server.catalog.open_blob(digest)
        if file is None:
            raise _blob_unknown(digest)
        with file:
            size = os.fstat(file.fileno()).st_size
            headers = {
                "Content-Type": "application/octet-stream",
                "Docker-Content-Digest": digest,
                "ETag": f'"{digest}"',
                "Accept-Ranges": "bytes",
            }
            range_header = self.headers.get("Range")
            if_range = self.headers.get("If-Range")
            if if_range is not None and if_range.strip() != f'"{digest}"':
                range_header = None  # the client's copy is of another blob: send it whole
            try:
                byte_range = parse_byte_range(range_header, size)
            except RangeNotSatisfiableError:
                raise ApiError(
                    416,
                    "RANGE_INVALID",
                    "requested range not satisfiable",
                    {"range": range_header, "size": size},
                    headers={"Content-Range": f"bytes */{size}"},
                ) from None
            if byte_range is None:
                self._start(200, {**headers, "Content-Length": str(size)})
                if send_body:
                    if self.server.verify:
                        self._send_verified(file, size, digest)
                    else:
                        self._send_file(file, 0, size)
                return
            first, last = byte_range
            count = last - first + 1
            self._start(
                206,
                {
                    **headers,
                    "Content-Length": str(count),
                    "Content-Range": f"bytes {first}-{last}/{size}",
                },
            )
            if send_body:
                # Part of a blob can't be checked against its digest; the client checks the whole.
                self._send_file(file, first, count)

    # Helpers

    def _repository(self, name: str, namespace: str | None) -> Repository:
        canonical = repository_name(name, namespace)
        repository = self.server.catalog.repositories().get(canonical)
        if repository is None:
            raise ApiError(
                404, "NAME_UNKNOWN", "repository name not known to registry", {"name": name}
            )
        return repository

    def _read_manifest(self, digest: str) -> bytes | None:
        file = self.server.catalog.open_blob(digest)
        if file is None:
            return None
        with file:
            data = file.read(MAX_JSON_BLOB_SIZE + 1)
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual != digest:
            log.warning(
                "not serving manifest %s of the image cache %s: it is damaged (its content hashes"
                " to %s); run `forklift-boot cache verify --repair`",
                digest,
                self.server.catalog.cache_dir,
                actual,
            )
            raise ApiError(500, "UNKNOWN", "the cached manifest is damaged", {"digest": digest})
        return data

    def _send_verified(self, file: BinaryIO, size: int, digest: str) -> None:
        """The whole blob, hashed on the way; the last chunk is held back until the hash is
        known, so a damaged blob reaches the client short, never complete with wrong bytes."""
        hasher = hashlib.sha256()
        pending = b""
        total = 0
        while chunk := file.read(BUFFER_SIZE):
            hasher.update(chunk)
            total += len(chunk)
            if pending:
                self._write(pending)
            pending = chunk
            if total > size:
                break
        actual = "sha256:" + hasher.hexdigest()
        if total != size or actual != digest:
            problem = (
                f"has {total} bytes, expected {size}"
                if total != size
                else f"its content hashes to {actual}"
            )
            log.warning(
                "stopped sending blob %s of the image cache %s: it is damaged (%s); run"
                " `forklift-boot cache verify --repair`",
                digest,
                self.server.catalog.cache_dir,
                problem,
            )
            self.close_connection = True
            return
        if pending:
            self._write(pending)

    def _send_file(self, file: BinaryIO, offset: int, count: int) -> None:
        # sendfile(2): the kernel copies from the page cache to the socket, no Python buffers.
        sent = self.connection.sendfile(file, offset, count)
        self._sent += sent
        if sent < count:  # the file is shorter than its size said: damaged
            self.close_connection = True

    def _send_json(
        self, document: Any, *, send_body: bool, headers: Mapping[str, str] | None = None
    ) -> None:
        data = json.dumps(document).encode()
        self._start(
            200,
            {
                "Content-Type": "application/json; charset=utf-8",
                "Content-Length": str(len(data)),
                **(headers or {}),
            },
        )
        if send_body:
            self._write(data)

    def _send_error(self, err: ApiError, *, send_body: bool) -> None:
        data = err.body()
        self._start(
            err.status,
            {
                "Content-Type": "application/json; charset=utf-8",
                "Content-Length": str(len(data)),
                **err.headers,
            },
        )
        if send_body:
            self._write(data)

    def _start(self, status: int, headers: Mapping[str, str]) -> None:
        self.send_response(status)
        self.send_header(*API_VERSION_HEADER)
        for key, value in headers.items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self._headers_sent = True

    def _write(self, data: bytes) -> None:
        self.wfile.write(data)
        self._sent += len(data)

    def _discard_body(self) -> None:
        """Read a refused request's body, so the connection can serve the next request; a big
        or chunked one closes the connection instead."""
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding") is not None:
            self.close_connection = True
            return
        try:
            remaining = int(length) if length is not None else 0
        except ValueError:
            remaining = -1
        if not 0 <= remaining <= _MAX_DISCARDED_BODY:
            self.close_connection = True
            return
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, BUFFER_SIZE))
            if not chunk:
                self.close_connection = True
                return
            remaining -= len(chunk)


def _single(params: dict[str, list[str]], key: str) -> str | None:
    values = params.get(key)
    return values[0] if values else None


def _check_digest(text: str) -> str:
    if _DIGEST_RE.fullmatch(text) is None:
        raise ApiError(
            400,
            "DIGEST_INVALID",
            "invalid digest: the image cache serves sha256:<64 lowercase hex digits> only",
            {"digest": text},
        )
    return text


def _manifest_unknown(name: str, reference: str) -> ApiError:
    return ApiError(
        404,
        "MANIFEST_UNKNOWN",
        "manifest unknown",
        {"name": name, "reference": reference},
    )


def _blob_unknown(digest: str) -> ApiError:
    return ApiError(404, "BLOB_UNKNOWN", "blob unknown to registry", {"digest": digest})


def _paginate(
    items: list[str], params: dict[str, list[str]]
) -> tuple[list[str], dict[str, str] | None]:
    """One page of sorted ``items`` after ``last``, at most ``n``; and the next page's query
    parameters if there are more."""
    last = _single(params, "last")
    if last is not None:
        items = [item for item in items if item > last]
    count_text = _single(params, "n")
    if count_text is None:
        return items, None
    if _COUNT_RE.fullmatch(count_text) is None:
        raise ApiError(
            400,
            "PAGINATION_NUMBER_INVALID",
            "invalid number of results requested",
            {"n": count_text},
        )
    count = int(count_text)
    page = items[:count]
    if len(items) <= count or not page:
        return page, None
    next_params = {"n": str(count), "last": page[-1]}
    namespace = _single(params, "ns")
    if namespace is not None:
        next_params["ns"] = namespace
    return page, next_params


def _link(path: str, next_params: dict[str, str] | None) -> dict[str, str]:
    if next_params is None:
        return {}
    return {"Link": f'<{quote(path)}?{urlencode(next_params)}>; rel="next"'}
