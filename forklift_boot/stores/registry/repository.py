"""The pull side of one repository: manifests and blobs from its registry or Docker Hub's mirrors.

Blobs stream into the cache, resume with ``Range`` after a cut and are verified before they are
kept.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Protocol, TypeVar

import requests

from forklift_boot.cache import MAX_JSON_BLOB_SIZE, BlobWriter, Descriptor, StoredBlob
from forklift_boot.errors import RegistryError, printable
from forklift_boot.refs import ImageRef
from forklift_boot.stores.registry.bodies import (
    RateGuard,
    TransferCutError,
    chunks,
    read_body,
    registry_error,
)
from forklift_boot.stores.registry.endpoints import Endpoint, endpoints_for
from forklift_boot.stores.registry.manifests import (
    MANIFEST_ACCEPT,
    Manifest,
    ManifestHead,
    manifest_media_type,
)
from forklift_boot.stores.registry.transport import TRANSIENT_ERRORS, reason

if TYPE_CHECKING:  # the client makes repositories: no import at run time
    from forklift_boot.stores.registry.client import RegistryClient

__all__ = ["BlobSink", "Repository"]

log = logging.getLogger(__name__)


class BlobSink(Protocol):
    """Where downloaded blobs go: the cache's writer (``CacheWriter.blob_writer``)."""

    def blob_writer(self) -> AbstractContextManager[BlobWriter]: ...


_T = TypeVar("_T")


class Repository:
    """One repository on its registry, and on Docker Hub's mirrors when it is there."""

    def __init__(self, client: RegistryClient, ref: ImageRef) -> None:
        self.client = client
        self.ref = ref
        self.path = ref.path
        self.endpoints = endpoints_for(ref, client.mirrors)
        self.name = ref.name
        self._preferred: Endpoint | None = None  # the endpoint that served the manifest

    # --- manifests ----------------------------------------------------------------------

    def head_manifest(self, reference: str) -> ManifestHead | None:
        """The digest and type of a tag or digest without fetching it (Docker Hub doesn't
        count a HEAD against its pull rate limit); None if the registry doesn't have it."""

        def head(endpoint: Endpoint) -> ManifestHead | None:
            response = self.client.request(
                endpoint,
                self.path,
                "HEAD",
                f"manifests/{reference}",
                headers={"Accept": MANIFEST_ACCEPT},
                what=f"look up {_at(self.path, reference)}",
            )
            with response:
                if response.status_code == 404:
                    return None
                if response.status_code == 405:  # HEAD not supported: the GET will tell
                    return ManifestHead(None, "", None)
                self._check(response, f"look up {reference}", endpoint)
                length = response.headers.get("Content-Length")
                return ManifestHead(
                    response.headers.get("Docker-Content-Digest"),
                    (response.headers.get("Content-Type") or "").split(";")[0].strip(),
                    int(length) if length and length.isdigit() else None,
                )

        return self._first(head, f"look up {self.name} {reference}")

    def get_manifest(
        self, reference: str, *, expected_digest: str | None = None
    ) -> Manifest | None:
        """The manifest or index exactly as served, its digest checked against
        ``expected_digest`` (or the reference, when that is a digest); None if there is none."""
        if expected_digest is None and reference.startswith("sha256:"):
            expected_digest = reference

        def get(endpoint: Endpoint) -> Manifest | None:
            what = f"fetch the manifest of {_at(self.path, reference)}"
            fetched = self._read(
                endpoint, f"manifests/{reference}", {"Accept": MANIFEST_ACCEPT}, MAX_JSON_BLOB_SIZE,
                what,
            )  # fmt: skip
            if fetched is None:
                return None
            data, headers = fetched
            served_digest = headers.get("Docker-Content-Digest")
            media_type = manifest_media_type(headers.get("Content-Type"), data)
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            wanted = expected_digest or (
                served_digest if served_digest and served_digest.startswith("sha256:") else None
            )
            if wanted is not None and digest != wanted:
                raise RegistryError(
                    f"couldn't {what} from {endpoint.host}: it hashes to {digest}, not "
                    f"{printable(wanted)}; the registry or a proxy changed it: nothing was "
                    "cached, try again"
                )
            if not media_type.startswith("application/vnd."):
                raise RegistryError(
                    f"couldn't {what} from {endpoint.host}: it is not an image manifest "
                    f"(Content-Type {printable(media_type) or 'missing'})"
                )
            return Manifest(data, media_type, digest)

        return self._first(get, f"fetch {self.name} {reference}")

    def _read(
        self, endpoint: Endpoint, path: str, headers: dict[str, str], limit: int, what: str
    ) -> tuple[bytes, Mapping[str, str]] | None:
        """A small body in memory (at most ``limit`` bytes), fetched again if the connection
        drops; None on 404."""
        policy = self.client.retry
        attempt = 0
        while True:
            attempt += 1
            response = self.client.request(
                endpoint, self.path, "GET", path, headers=headers, what=what
            )
            with response:
                if response.status_code == 404:
                    return None
                self._check(response, what, endpoint)
                try:
                    return (
                        read_body(response, limit, what, endpoint.host, self.client.min_rate),
                        response.headers,
                    )
                except TransferCutError as err:
                    if attempt >= policy.attempts:
                        raise
                    log.warning("%s; trying again", err)
            self.client.pause(attempt)

    def _first(self, call: Callable[[Endpoint], _T | None], what: str) -> _T | None:
        """``call`` on the preferred endpoint, then on the others: a mirror that fails or
        lacks the image hands over to the next one, and finally to the registry itself."""
        last_error: RegistryError | None = None
        for endpoint in self._ordered_endpoints():
            try:
                found = call(endpoint)
            except RegistryError as err:
                if not endpoint.is_mirror:
                    raise
                log.warning("mirror %s failed (%s); trying the next source", endpoint.host, err)
                last_error = err
                continue
            if found is None and endpoint.is_mirror:
                log.debug("mirror %s lacks %s", endpoint.host, what)
                continue
            if found is not None:
                self._preferred = endpoint
            return found
        if last_error is not None:
            raise last_error
        return None

    def _ordered_endpoints(self) -> list[Endpoint]:
        if self._preferred is None:
            return list(self.endpoints)
        return [self._preferred, *(e for e in self.endpoints if e != self._preferred)]

    def _check(self, response: requests.Response, what: str, endpoint: Endpoint) -> None:
        if response.status_code < 400:
            return
        raise RegistryError(
            f"couldn't {what} from {endpoint.host}/{self.path}: HTTP {response.status_code}"
            f"{registry_error(response, self.client.min_rate)[1]}"
        )

    # --- blobs --------------------------------------------------------------------------

    def fetch_small_blob(self, descriptor: Descriptor) -> bytes:
        """A config blob in memory (bounded), its digest and size checked."""
        if descriptor.size > MAX_JSON_BLOB_SIZE:
            raise RegistryError(
                f"couldn't fetch {descriptor.digest} of {self.name}: {descriptor.size} bytes is "
                "too large for an image config"
            )

        def get(endpoint: Endpoint) -> bytes | None:
            what = f"fetch blob {descriptor.digest} of {self.path}"
            fetched = self._read(
                endpoint, f"blobs/{descriptor.digest}", {"Accept-Encoding": "identity"},
                descriptor.size, what,
            )  # fmt: skip
            if fetched is None:
                return None
            data = fetched[0]
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            if len(data) != descriptor.size or digest != descriptor.digest:
                raise RegistryError(
                    f"couldn't {what} from {endpoint.host}: received {len(data)} bytes hashing "
                    f"to {digest}; nothing was cached, try again"
                )
            return data

        data: bytes | None = self._first(get, f"blob {descriptor.digest}")
        if data is None:
            raise RegistryError(
                f"couldn't fetch blob {descriptor.digest} of {self.name}: the registry doesn't "
                "have it (blob unknown); the image is incomplete there"
            )
        return data

    def download_blob(
        self,
        descriptor: Descriptor,
        sink: BlobSink,
        on_bytes: Callable[[int], None] = lambda n: None,
    ) -> StoredBlob:
        """Streams a blob into the cache through fixed buffers. A cut connection resumes
        with ``Range`` into the same temporary; the digest and size are checked before the
        blob enters the cache, and a blob that doesn't match is never kept."""
        last_error: RegistryError | None = None
        for endpoint in self._ordered_endpoints():
            try:
                return self._download_from(endpoint, descriptor, sink, on_bytes)
            except _BlobUnknownError as err:
                last_error = err
            except RegistryError as err:
                if not endpoint.is_mirror:
                    raise
                last_error = err
                log.warning("mirror %s failed (%s); trying the next source", endpoint.host, err)
        assert last_error is not None
        raise last_error

    def _download_from(
        self,
        endpoint: Endpoint,
        descriptor: Descriptor,
        sink: BlobSink,
        on_bytes: Callable[[int], None],
    ) -> StoredBlob:
        fresh_starts = 2  # a resumed download that fails its digest check starts over once
        while True:
            with sink.blob_writer() as blob:
                resumed = self._stream_into(endpoint, descriptor, blob, on_bytes)
                what = f"download blob {descriptor.digest} of {self.path} from {endpoint.host}"
                if blob.size == descriptor.size and blob.digest == descriptor.digest:
                    # A CacheError here is the disk's, not the registry's: it propagates.
                    return blob.commit(
                        expected_digest=descriptor.digest, expected_size=descriptor.size
                    )
                problem = f"received {blob.size} bytes hashing to {blob.digest}"
                fresh_starts -= 1
                if resumed and fresh_starts > 0:
                    log.warning("couldn't %s: %s; downloading it again", what, problem)
                    continue
                raise RegistryError(
                    f"couldn't {what}: {problem}, expected {descriptor.size} bytes hashing to "
                    f"{descriptor.digest}; it was not cached (a corrupted transfer, or a broken "
                    "registry or proxy): try again"
                )

    def _stream_into(
        self,
        endpoint: Endpoint,
        descriptor: Descriptor,
        blob: BlobWriter,
        on_bytes: Callable[[int], None],
    ) -> bool:
        """Fills ``blob`` up to the descriptor's size, resuming after cuts; returns whether
        any part came from a resumed request."""
        policy = self.client.retry
        size = descriptor.size
        failures = 0
        resumed = False
        what = f"download blob {descriptor.digest} of {self.path}"
        # One guard over every resume: a registry that trickles and cuts makes "progress"
        # on each request, but not at the minimum rate.
        guard = RateGuard(self.client.min_rate, what, endpoint.host)
        while blob.size < size:
            offset = blob.size
            headers = {"Accept-Encoding": "identity"}
            if offset:
                headers["Range"] = f"bytes={offset}-"
                resumed = True
            response = self.client.request(
                endpoint, self.path, "GET", f"blobs/{descriptor.digest}", headers=headers,
                what=what,
            )  # fmt: skip
            with response:
                if response.status_code == 404:
                    raise _BlobUnknownError(
                        f"couldn't {what} from {endpoint.host}: the registry doesn't have it "
                        "(blob unknown); the image is incomplete there"
                    )
                skip = 0
                if offset and response.status_code == 200:
                    skip = offset  # Range ignored: the whole blob again
                    log.debug(
                        "%s ignored the Range request; skipping %d bytes", endpoint.host, skip
                    )
                elif offset and response.status_code == 206:
                    start = _content_range_start(response.headers.get("Content-Range"))
                    if start != offset:
                        raise RegistryError(
                            f"couldn't {what} from {endpoint.host}: asked for bytes from {offset}, "
                            f"got a range starting at {start}"
                        )
                elif response.status_code == 416:
                    raise RegistryError(
                        f"couldn't {what} from {endpoint.host}: it refused the byte range "
                        f"{offset}- of a {size}-byte blob (HTTP 416)"
                    )
                else:
                    self._check(response, what, endpoint)
                try:
                    for chunk in chunks(response, skip, guard):
                        if blob.size + len(chunk) > size:
                            raise RegistryError(
                                f"couldn't {what} from {endpoint.host}: it sent more than the "
                                f"{size} bytes its manifest names; it was not cached"
                            )
                        blob.write(chunk)
                        on_bytes(len(chunk))
                except TRANSIENT_ERRORS as err:
                    cause = reason(err)
                else:
                    cause = "the connection closed early"
            if blob.size >= size:
                break
            # Cut short (urllib3 1.26 may end a short body without an error): resume.
            failures = 0 if blob.size > offset else failures + 1
            if failures >= policy.attempts:
                raise RegistryError(
                    f"couldn't {what} from {endpoint.host}: {cause} at byte {blob.size} of "
                    f"{size}, {failures} times without progress; try again later"
                )
            log.warning("%s: %s at byte %d of %d; resuming", what, cause, blob.size, size)
            if failures:
                self.client.pause(failures)
        return resumed


class _BlobUnknownError(RegistryError):
    """The endpoint doesn't have the blob: another endpoint may."""


def _at(repository: str, reference: str) -> str:
    """``repo:tag`` or ``repo@sha256:...``."""
    return f"{repository}@{reference}" if ":" in reference else f"{repository}:{reference}"


def _content_range_start(value: str | None) -> int | None:
    """The first byte of ``Content-Range: bytes START-END/SIZE``."""
    if not value or not value.startswith("bytes "):
        return None
    start = value[6:].partition("-")[0].strip()
    return int(start) if start.isdigit() else None
