"""The HTTP handler of `cache serve`: one request of the pull side of the distribution API,
answered from the cache.

One class, read better whole: BaseHTTPRequestHandler keeps a request's state on the handler,
and its endpoints, checks and ways of answering share that state.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import parse_qs

from forklift_boot import __version__
from forklift_boot.cache import BUFFER_SIZE, MAX_JSON_BLOB_SIZE
from forklift_boot.errors import CacheError, printable
from forklift_boot.exchange.serve.api import (
    API_VERSION_HEADER,
    ApiError,
    RangeNotSatisfiableError,
    blob_unknown,
    catalog_name,
    check_digest,
    manifest_unknown,
    next_page_link,
    paginate,
    parse_byte_range,
    repository_name,
    single_param,
)
from forklift_boot.exchange.serve.catalog import ServedRepository
from forklift_boot.exchange.serve.connection import HeadReader
from forklift_boot.refs import REGISTRY_HOST_RE, TAG_RE

if TYPE_CHECKING:
    from forklift_boot.exchange.serve.server import CacheServer

__all__ = ["IDLE_TIMEOUT_SECONDS", "CacheRequestHandler"]

log = logging.getLogger(__name__)

# An idle keep-alive connection (or a client that stops reading) frees its thread after this.
IDLE_TIMEOUT_SECONDS = 60.0
# The methods the image cache answers; any other gets 405 and this list.
_ALLOWED_METHODS = "GET, HEAD"
# A refused write's body is read and dropped up to this size, so the connection stays usable.
_MAX_DISCARDED_BODY = 1 << 20

_MANIFEST_PATH_RE = re.compile(r"/v2/(?P<name>.+)/manifests/(?P<reference>[^/]+)")
_BLOB_PATH_RE = re.compile(r"/v2/(?P<name>.+)/blobs/(?P<digest>[^/]+)")
_TAGS_PATH_RE = re.compile(r"/v2/(?P<name>.+)/tags/list")
_LENGTH_RE = re.compile(r"[0-9]+")  # ASCII digits only


class CacheRequestHandler(BaseHTTPRequestHandler):
    server: CacheServer
    protocol_version = "HTTP/1.1"
    server_version = f"forklift-boot/{__version__}"
    timeout = IDLE_TIMEOUT_SECONDS

    def setup(self) -> None:
        super().setup()
        self._status = 0
        self._sent = 0
        self._headers_sent = False
        # Requests are read through a HeadReader, which bounds the time a head takes.
        self.rfile.close()
        self._reader = HeadReader(self.connection, IDLE_TIMEOUT_SECONDS)
        self.rfile = io.BufferedReader(self._reader)
        self._requests = 0

    def handle_one_request(self) -> None:
        # The first request's head counts from the connection's start, so a connection that
        # sends nothing goes as soon as one that trickles; a keep-alive connection may wait
        # idle for its next request, whose head then counts from its first byte.
        self._reader.start_head(self.server.header_timeout, now=self._requests == 0)
        self._requests += 1
        super().handle_one_request()

    def parse_request(self) -> bool:
        parsed = super().parse_request()
        self._reader.end_head()
        if parsed and not hasattr(self, "do_" + self.command):
            # BaseHTTPRequestHandler would answer 501 with an HTML page.
            self._discard_body()
            self._handle(send_body=True, refuse="the image cache answers GET and HEAD only")
            return False
        return parsed

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
        self._handle(send_body=True, refuse="the image cache is served read-only")

    def _handle(self, *, send_body: bool, refuse: str | None = None) -> None:
        """Answer the request; ``refuse``: with 405 and this message."""
        started = time.monotonic()
        self._status, self._sent, self._headers_sent = 0, 0, False
        try:
            if refuse is not None:
                raise ApiError(405, "UNSUPPORTED", refuse, headers={"Allow": _ALLOWED_METHODS})
            if self._has_body():
                # Behind a proxy that reads the body as part of this request, taking it for the
                # next request would let a client smuggle one past the proxy.
                self.close_connection = True
                raise ApiError(
                    400,
                    "UNSUPPORTED",
                    f"a {self.command} request to the image cache has no body",
                )
            self._route(send_body)
        except ApiError as err:
            self._send_error(err, send_body=send_body)
        except CacheError as err:
            # index.json unreadable, a blob that can't be opened: the cache's problem.
            log.warning("couldn't answer %s %s: %s", self.command, printable(self.path), err)
            self._fail(ApiError(500, "UNKNOWN", str(err)), send_body=send_body)
        except (ConnectionError, TimeoutError) as err:
            log.debug("%s: connection lost: %s", self.address_string(), err)
            self.close_connection = True
        except Exception as err:
            log.warning(
                "couldn't answer %s %s: %s", self.command, printable(self.path), err, exc_info=True
            )
            self._fail(ApiError(500, "UNKNOWN", f"internal error: {err}"), send_body=send_body)
        finally:
            log.debug(
                '%s "%s %s" %s %d bytes %.3f s',
                self.address_string(),
                printable(self.command),
                printable(self.path),
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
        namespace = single_param(params, "ns")
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
        page, next_params = paginate(names, params)
        self._send_json(
            {"repositories": page},
            send_body=send_body,
            headers=next_page_link("/v2/_catalog", next_params),
        )

    def _tags(
        self, name: str, params: dict[str, list[str]], namespace: str | None, *, send_body: bool
    ) -> None:
        repository = self._repository(name, namespace)
        page, next_params = paginate(sorted(repository.tags), params)
        self._send_json(
            {"name": name, "tags": page},
            send_body=send_body,
            headers=next_page_link(f"/v2/{name}/tags/list", next_params),
        )

    def _manifest(
        self, name: str, reference: str, namespace: str | None, *, send_body: bool
    ) -> None:
        repository = self._repository(name, namespace)
        if ":" in reference:
            digest = check_digest(reference)
            media_type = repository.manifests.get(digest)
            if media_type is None:
                raise manifest_unknown(name, reference)
        else:
            if TAG_RE.fullmatch(reference) is None:
                raise ApiError(400, "TAG_INVALID", "invalid tag", {"tag": reference})
            descriptor = repository.tags.get(reference)
            if descriptor is None:
                raise manifest_unknown(name, reference)
            digest, media_type = descriptor.digest, descriptor.media_type
        data = self._read_manifest(digest)
        if data is None:
            raise manifest_unknown(name, reference)
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
        digest = check_digest(digest)
        if digest not in repository.blobs:
            raise blob_unknown(digest)
        file = self.server.catalog.open_blob(digest)
        if file is None:
            raise blob_unknown(digest)
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

    def _repository(self, name: str, namespace: str | None) -> ServedRepository:
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

    def _has_body(self) -> bool:
        """Whether the request says it has a body (or says it unclearly)."""
        if self.headers.get("Transfer-Encoding") is not None:
            return True
        lengths = self.headers.get_all("Content-Length") or []
        return any(_LENGTH_RE.fullmatch(value.strip()) is None or int(value) for value in lengths)

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
