"""Writing one blob durably: hashed while written, fsynced, then renamed to its digest."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from forklift_boot.cache.blobs import BUFFER_SIZE, digest_hex
from forklift_boot.cache.descriptors import Descriptor
from forklift_boot.cache.durable import (
    cache_os_error,
    fsync_directory,
    remove_quietly,
    temporary_name,
)
from forklift_boot.cache.files import kind_of, lstat_or_none
from forklift_boot.errors import CacheError
from forklift_boot.faults import checkpoint

__all__ = ["BlobWriter", "ReadableStream", "StoredBlob"]

log = logging.getLogger(__name__)


class ReadableStream(Protocol):
    """Anything with ``read(n)``: files, tar members, HTTP response bodies."""

    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class StoredBlob:
    digest: str
    size: int
    # False when the cache already had this blob and kept its own copy.
    is_new: bool

    def to_descriptor(self, media_type: str) -> Descriptor:
        return Descriptor(media_type, self.digest, self.size)


class BlobWriter:
    """Bytes go to ``blobs/sha256/.tmp-<random>`` and appear under their digest only on commit.

    Until then nothing carries the final name, so a crash leaves only a temporary, which
    the next writer sweeps.

    ``source_checks`` names the digest the bytes' source computes and checks itself while they
    stream (a layer read from Docker's store raises before its end on a mismatch). Hashing them
    a second time here would only double the CPU a Pi spends on sha256: the blob is committed
    under that digest, and only after the source reached its end without an error.
    """

    def __init__(self, blobs_dir: Path, *, source_checks: str | None = None) -> None:
        self._blobs_dir = blobs_dir
        self._temp_path = blobs_dir / temporary_name()
        self._source_digest = source_checks
        self._hasher = hashlib.sha256() if source_checks is None else None
        if source_checks is not None:
            digest_hex(source_checks)  # a malformed digest never names a file
        self._size = 0
        self._is_done = False
        try:
            fd = os.open(
                self._temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644
            )
        except OSError as err:
            raise cache_os_error("create a blob in", blobs_dir, err) from err
        except BaseException:
            # SIGTERM's SystemExit right after the file was created: nothing may stay behind.
            remove_quietly(self._temp_path)
            raise
        try:
            self._file = os.fdopen(fd, "wb", buffering=BUFFER_SIZE)
        except BaseException:
            with contextlib.suppress(OSError):  # fdopen's file object may have closed it
                os.close(fd)
            remove_quietly(self._temp_path)
            raise

    @property
    def size(self) -> int:
        """Bytes written so far."""
        return self._size

    @property
    def digest(self) -> str:
        """The digest of the bytes written so far (a registry download checks it before
        committing, so a corrupt transfer is told apart from a failing disk)."""
        return self._digest()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._check_writable()
        try:
            self._file.write(data)
        except OSError as err:
            raise cache_os_error("write a blob to", self._blobs_dir, err) from err
        if self._hasher is not None:
            self._hasher.update(data)
        self._size += len(data)
        if self._size > BUFFER_SIZE:
            checkpoint("blob-partial")
        return len(data)

    def copy_from(self, source: ReadableStream) -> int:
        """Write everything ``source`` yields, in fixed-size chunks; returns the byte count."""
        copied = 0
        while chunk := source.read(BUFFER_SIZE):
            copied += self.write(chunk)
        return copied

    def commit(
        self, expected_digest: str | None = None, expected_size: int | None = None
    ) -> StoredBlob:
        """Make the blob durable under its digest.

        If the cache already has a blob of that digest and size, it is left untouched and the
        temporary dropped. On a digest or size mismatch nothing is kept and CacheError says
        what arrived.
        """
        self._check_writable()
        if expected_digest is not None:
            digest_hex(expected_digest)  # refuse a malformed digest before anything else
        self._is_done = True
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        except OSError as err:
            self.discard()
            raise cache_os_error("write a blob to", self._blobs_dir, err) from err
        digest = self._digest()
        name = expected_digest or digest
        if expected_size is not None and self._size != expected_size:
            self.discard()
            raise CacheError(
                f"couldn't store blob {name}: received {self._size} bytes, expected {expected_size}"
            )
        if expected_digest is not None and digest != expected_digest:
            self.discard()
            raise CacheError(
                f"couldn't store blob {expected_digest}: the bytes received hash to {digest}"
            )
        final_path = self._blobs_dir / digest_hex(digest)
        existing = lstat_or_none(final_path)
        existing_size = existing.st_size if existing is not None else None
        if existing is not None and not stat.S_ISREG(existing.st_mode):
            # A link (or a pipe) in the blob's place is replaced, never written through.
            log.warning("replacing %s in place of blob %s", kind_of(existing.st_mode), digest)
            existing_size = None
        if existing_size == self._size:
            # Content addressing: same digest, same bytes. Never rewrite a blob in place.
            self.discard()
            return StoredBlob(digest, self._size, is_new=False)
        if existing_size is not None:
            log.warning(
                "replacing blob %s: it has %d bytes on disk, but its content has %d",
                digest,
                existing_size,
                self._size,
            )
        try:
            os.rename(self._temp_path, final_path)
        except OSError as err:
            self.discard()
            raise cache_os_error("store blob", final_path, err) from err
        checkpoint("blob-renamed")
        fsync_directory(self._blobs_dir)
        return StoredBlob(digest, self._size, is_new=True)

    def discard(self) -> None:
        """Drop the temporary (what leaving ``blob_writer()`` without a commit does)."""
        self._is_done = True
        if not self._file.closed:
            # The write already failed if this fails; removing the temporary is what matters.
            with contextlib.suppress(OSError):
                self._file.close()
        remove_quietly(self._temp_path)

    def _digest(self) -> str:
        if self._hasher is None:
            return str(self._source_digest)
        return f"sha256:{self._hasher.hexdigest()}"

    def _check_writable(self) -> None:
        if self._is_done:
            raise CacheError("a blob writer was used after commit or discard")
