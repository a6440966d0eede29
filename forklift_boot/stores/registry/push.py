"""The push side of the OCI distribution API: the blob and manifest requests that put a cached
image on a registry (where it goes is ``targets``).

Blobs are looked up with ``HEAD``, mounted from another repository of the same registry when
this run already put them there, and otherwise uploaded straight from the cache file through
fixed buffers: small ones in one ``PUT``, big ones in one streamed ``PATCH`` (or in
``--chunk-size`` pieces for a proxy that limits request bodies) and a closing ``PUT``.
Manifests and indexes are sent byte for byte, so their digests stay the ones the cache has.
Everything goes through ``RegistryClient.request``: the same credentials, tokens (scoped
``pull,push``), retries and one-line errors as pulling.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from urllib.parse import urljoin

import requests

from forklift_boot.cache import BUFFER_SIZE, CacheReader, Descriptor
from forklift_boot.cache.blobs import hash_file
from forklift_boot.errors import CacheError, RegistryError, printable
from forklift_boot.stores.registry.bodies import registry_error
from forklift_boot.stores.registry.client import RegistryClient
from forklift_boot.stores.registry.manifests import MANIFEST_ACCEPT
from forklift_boot.stores.registry.targets import PushTarget
from forklift_boot.stores.registry.transport import RegistryAccessError

__all__ = [
    "MONOLITHIC_LIMIT",
    "ManifestRefusedError",
    "PushRepository",
]

log = logging.getLogger(__name__)

# Blobs up to this size go in one PUT with the upload's POST before it: two requests.
MONOLITHIC_LIMIT = 8 << 20


# Requests


class ManifestRefusedError(RegistryError):
    """The registry refused a manifest; ``code`` is its error code (``MANIFEST_BLOB_UNKNOWN``)."""

    def __init__(self, message: str, code: str) -> None:
        self.code = code
        super().__init__(message)


class _UploadLostError(RegistryError):
    """The registry dropped or refused an upload session: start a new one."""


class _BlobBody:
    """``length`` bytes of a cached blob from ``offset``, read through a fixed buffer each
    time it is iterated (a retried request sends it again). Its length makes requests send a
    ``Content-Length`` rather than chunked transfer encoding, which some registries refuse."""

    def __init__(
        self,
        reader: CacheReader,
        digest: str,
        offset: int,
        length: int,
        on_bytes: Callable[[int], None],
    ) -> None:
        self.reader = reader
        self.digest = digest
        self.offset = offset
        self.length = length
        self.on_bytes = on_bytes

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[bytes]:
        # Unverified: the registry checks the digest of what it receives, and a refusal makes
        # us hash the cache's copy to say whose fault it is.
        with self.reader.open_blob(self.digest, verify=False) as file:
            file.seek(self.offset)
            left = self.length
            while left > 0:
                chunk = file.read(min(BUFFER_SIZE, left))
                if not chunk:
                    # The file shrank under us; the registry sees a short body and refuses it.
                    return
                left -= len(chunk)
                self.on_bytes(len(chunk))
                yield chunk


class PushRepository:
    """One repository on the target registry, with pull and push access."""

    def __init__(self, client: RegistryClient, target: PushTarget, path: str) -> None:
        self.client = client
        self.endpoint = target.endpoint
        self.path = path
        self.display = f"{target.endpoint.host}/{path}"

    # --- blobs --------------------------------------------------------------------------

    def has_blob(self, digest: str) -> bool:
        what = f"look up blob {digest} in {self.path}"
        with self._request("HEAD", f"blobs/{digest}", what) as response:
            if response.status_code == 404:
                return False
            self._check(response, what, {200})
            return True

    def mount_blob(self, digest: str, source: str) -> str | None:
        """Asks the registry to link a blob that ``source`` (a repository on the same
        registry) has; None when it did, else the ``Location`` of the upload session it
        opened instead (or of a new one when it refused the mount outright)."""
        what = f"mount blob {digest} from {source} into {self.path}"
        try:
            response = self._request(
                "POST", "blobs/uploads/", what, params={"mount": digest, "from": source},
                mount_from=source,
            )  # fmt: skip
        except RegistryAccessError as err:
            # No pull access to ``source`` with these credentials: upload it instead.
            log.debug("%s; uploading it instead", err)
            return self.start_upload(digest)
        with response:
            if response.status_code == 201:
                return None
            if response.status_code == 202:
                return self._location(response, what)
        log.debug("%s: HTTP %d; uploading it instead", what, response.status_code)
        return self.start_upload(digest)

    def start_upload(self, digest: str) -> str:
        what = f"start the upload of blob {digest} to {self.path}"
        with self._request("POST", "blobs/uploads/", what) as response:
            self._check(response, what, {202})
            return self._location(response, what)

    def upload_blob(
        self,
        reader: CacheReader,
        descriptor: Descriptor,
        on_bytes: Callable[[int], None],
        *,
        location: str | None = None,
        chunk_size: int | None = None,
    ) -> None:
        """Uploads a cached blob into the upload session at ``location`` (a new one if None).
        A session the registry drops, or a transfer it finds corrupt, is started over once."""
        digest, size = descriptor.digest, descriptor.size
        if reader.blob_size(digest) != size:
            raise CacheError(
                f"couldn't push blob {digest}: the cache's copy has {reader.blob_size(digest)} "
                f"bytes, its manifest says {size}; run `forklift-boot cache verify --repair`"
            )
        for attempt in (1, 2):
            if location is None:
                location = self.start_upload(digest)
            try:
                self._send(reader, descriptor, location, on_bytes, chunk_size)
                return
            except _UploadLostError as err:
                if attempt == 2:
                    raise
                log.warning("%s; uploading it again", err)
                location = None

    def _send(
        self,
        reader: CacheReader,
        descriptor: Descriptor,
        location: str,
        on_bytes: Callable[[int], None],
        chunk_size: int | None,
    ) -> None:
        digest, size = descriptor.digest, descriptor.size
        what = f"upload blob {digest} to {self.path}"
        if size <= min(MONOLITHIC_LIMIT, chunk_size or MONOLITHIC_LIMIT):
            # requests sends an empty iterable chunked: an empty blob goes as empty bytes.
            body = _BlobBody(reader, digest, 0, size, on_bytes) if size else b""
            self._finish_upload(reader, descriptor, location, body, what)
            return
        # One streamed PATCH, as docker push does; or pieces that say where they go.
        piece = chunk_size or size
        offset = 0
        while offset < size:
            length = min(piece, size - offset)
            headers = {"Content-Type": "application/octet-stream"}
            if chunk_size is not None:
                headers["Content-Range"] = f"{offset}-{offset + length - 1}"
            body = _BlobBody(reader, digest, offset, length, on_bytes)
            with self._request(
                "PATCH", "", what, url=location, headers=headers, body=body
            ) as response:
                self._check_upload(response, what, {202}, length)
                location = self._location(response, what)
            offset += length
        self._finish_upload(reader, descriptor, location, b"", what)

    def _finish_upload(
        self,
        reader: CacheReader,
        descriptor: Descriptor,
        location: str,
        body: _BlobBody | bytes,
        what: str,
    ) -> None:
        headers = {"Content-Type": "application/octet-stream"}
        with self._request(
            "PUT", "", what, url=location, params={"digest": descriptor.digest},
            headers=headers, body=body,
        ) as response:  # fmt: skip
            if response.status_code == 400 and self._error_code(response) == "DIGEST_INVALID":
                found, _ = hash_file(reader.blob_path(descriptor.digest))
                if found != descriptor.digest:
                    raise CacheError(
                        f"couldn't push blob {descriptor.digest}: the cache's copy is damaged "
                        f"(it hashes to {found}); run `forklift-boot cache verify --repair`"
                    )
                raise _UploadLostError(
                    f"couldn't {what} on {self.endpoint.host}: it received bytes that don't "
                    "hash to the digest (a corrupted transfer)"
                )
            self._check_upload(response, what, {201, 204}, len(body))

    # --- manifests ----------------------------------------------------------------------

    def manifest_digest(self, reference: str) -> str | None:
        """The digest the registry serves for a tag or digest, or None if it has none."""
        what = f"look up {self._at(reference)}"
        with self._request(
            "HEAD", f"manifests/{reference}", what, headers={"Accept": MANIFEST_ACCEPT}
        ) as response:
            if response.status_code == 404:
                return None
            self._check(response, what, {200})
            digest = response.headers.get("Docker-Content-Digest")
        if digest is None and reference.startswith("sha256:"):
            return reference
        return digest

    def put_manifest(self, reference: str, data: bytes, media_type: str) -> str:
        """Sends a manifest or index byte for byte under a tag or its digest; returns the
        digest, checked against what the registry says it stored."""
        what = f"push the manifest of {self._at(reference)}"
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        with self._request(
            "PUT", f"manifests/{reference}", what, headers={"Content-Type": media_type},
            body=data,
        ) as response:  # fmt: skip
            if response.status_code in (400, 404):
                code = self._error_code(response)
                raise ManifestRefusedError(
                    f"couldn't {what} on {self.endpoint.host}: refused with HTTP "
                    f"{response.status_code}{self._error_detail(response)}",
                    code,
                )
            self._check(response, what, {200, 201})
            stored = response.headers.get("Docker-Content-Digest")
        if stored and stored != digest:
            raise RegistryError(
                f"couldn't {what} on {self.endpoint.host}: it stored {printable(stored)} for a "
                f"manifest whose digest is {digest}; the registry rewrites manifests, so digest "
                "references can't resolve there"
            )
        return digest

    # --- helpers ------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        what: str,
        *,
        url: str | None = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        body: bytes | _BlobBody | None = None,
        mount_from: str | None = None,
    ) -> requests.Response:
        return self.client.request(
            self.endpoint, self.path, method, path, what=what, url=url, params=params,
            headers=headers, body=body, push=True, mount_from=mount_from,
        )  # fmt: skip

    def _location(self, response: requests.Response, what: str) -> str:
        location = response.headers.get("Location")
        if not location:
            raise RegistryError(
                f"couldn't {what} on {self.endpoint.host}: its answer has no Location"
            )
        return urljoin(response.url or self.endpoint.base_url, location)

    def _check(self, response: requests.Response, what: str, expected: set[int]) -> None:
        status = response.status_code
        if status in expected:
            return
        hint = ""
        if (
            status == 404
            and "/v2/" in response.url
            and not response.headers.get("Docker-Distribution-Api-Version")
        ):
            hint = "; is it a registry (the OCI distribution API under /v2/)?"
        elif status == 405:
            hint = "; the registry doesn't allow pushing there (read-only, or a proxy cache)"
        detail = self._error_detail(response)
        raise RegistryError(f"couldn't {what} on {self.endpoint.host}: HTTP {status}{detail}{hint}")

    def _check_upload(
        self, response: requests.Response, what: str, expected: set[int], sent: int
    ) -> None:
        status = response.status_code
        if status in expected:
            return
        if status == 413:
            raise RegistryError(
                f"couldn't {what} on {self.endpoint.host}: a request body of {sent} bytes is "
                "too large for it or for a proxy in front of it (HTTP 413); raise that limit "
                "(nginx: client_max_body_size 0) or pass a smaller --chunk-size, e.g. 16M"
            )
        code = self._error_code(response)
        if (
            status == 416
            or (status == 404 and code == "BLOB_UPLOAD_UNKNOWN")
            or (status == 400 and code in ("BLOB_UPLOAD_INVALID", "SIZE_INVALID"))
        ):
            raise _UploadLostError(
                f"couldn't {what} on {self.endpoint.host}: it dropped the upload (HTTP "
                f"{status}{self._error_detail(response)})"
            )
        self._check(response, what, expected)

    def _at(self, reference: str) -> str:
        separator = "@" if reference.startswith("sha256:") else ":"
        return f"{self.path}{separator}{reference}"

    def _error_code(self, response: requests.Response) -> str:
        return registry_error(response, self.client.min_rate)[0]

    def _error_detail(self, response: requests.Response) -> str:
        """`` (MANIFEST_BLOB_UNKNOWN: blob unknown to registry)`` from its JSON error body."""
        return registry_error(response, self.client.min_rate)[1]
