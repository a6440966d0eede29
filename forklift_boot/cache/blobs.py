"""Blob names, streamed hashing, and a blob reader that verifies what it reads."""

from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from forklift_boot.cache.durable import cache_os_error
from forklift_boot.cache.files import NotRegularFileError, open_regular
from forklift_boot.errors import CacheError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = [
    "BUFFER_SIZE",
    "DamagedBlobError",
    "digest_hex",
    "hash_file",
    "open_blob_file",
    "open_verified",
]

# Streams move through fixed buffers; no blob is ever held in memory whole.
BUFFER_SIZE = 1 << 20

# forklift-boot writes sha256 only, and the layout keeps those under blobs/sha256/.
_SHA256_DIGEST = re.compile(r"sha256:([a-f0-9]{64})")


class DamagedBlobError(CacheError):
    """A blob is missing, or its bytes are not what its digest and descriptor say."""

    def __init__(self, digest: str, problem: str, cache_dir: Path) -> None:
        self.digest = digest
        # e.g. "is missing", "has 12 bytes, expected 34": reads after "blob <digest> ".
        self.problem = problem
        super().__init__(
            f"couldn't read blob {digest} from the image cache {cache_dir}: it {problem}"
        )


def digest_hex(digest: str) -> str:
    """The hex part of a ``sha256:<hex>`` digest, the blob's file name."""
    match = _SHA256_DIGEST.fullmatch(digest)
    if match is None:
        # Checked before any path is built, so no digest can name a file outside blobs/.
        raise CacheError(
            f"invalid blob digest {digest!r}: the image cache stores sha256:<64 hex digits> only"
        )
    return match[1]


def hash_file(path: Path) -> tuple[str, int]:
    """The sha256 digest and size of a regular file, read in fixed-size chunks (a link is
    not followed: NotRegularFileError)."""
    hasher = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(open_regular(path), "rb", buffering=0) as file:
            buffer = bytearray(BUFFER_SIZE)
            view = memoryview(buffer)
            while count := file.readinto(buffer):
                hasher.update(view[:count])
                size += count
    except OSError as err:
        raise cache_os_error("read", path, err) from err
    return f"sha256:{hasher.hexdigest()}", size


def open_blob_file(path: Path, digest: str, cache_dir: Path) -> io.FileIO:
    """A blob's file, unbuffered; DamagedBlobError if it is missing or no regular file."""
    try:
        return io.FileIO(open_regular(path), "rb")
    except FileNotFoundError as err:
        raise DamagedBlobError(digest, "is missing", cache_dir) from err
    except NotRegularFileError as err:
        # Nothing was read from it, so nothing learned from it is said.
        raise DamagedBlobError(digest, err.problem, cache_dir) from err
    except OSError as err:
        raise cache_os_error("open", path, err) from err


def open_verified(path: Path, digest: str, expected_size: int | None, cache_dir: Path) -> BinaryIO:
    """Open a blob for reading; reading to its end raises DamagedBlobError on a mismatch."""
    file = open_blob_file(path, digest, cache_dir)
    raw = _VerifyingRawReader(file, path, digest, expected_size, cache_dir)
    return io.BufferedReader(raw, buffer_size=BUFFER_SIZE)


class _VerifyingRawReader(io.RawIOBase):
    """Hashes every byte it passes on; the check runs when the end of the file is reached.

    A reader that stops early is not checked: only a complete read proves a blob sound.
    """

    def __init__(
        self,
        file: io.FileIO,
        path: Path,
        digest: str,
        expected_size: int | None,
        cache_dir: Path,
    ) -> None:
        super().__init__()
        self._file = file
        self._path = path
        self._digest = digest
        self._expected_size = expected_size
        self._cache_dir = cache_dir
        self._hasher = hashlib.sha256()
        self._size = 0
        self._failure: DamagedBlobError | None = None
        self._is_checked = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        if self._failure is not None:
            raise self._failure
        try:
            count = self._file.readinto(buffer) or 0
        except OSError as err:
            raise cache_os_error("read", self._path, err) from err
        if count:
            self._hasher.update(memoryview(buffer).cast("B")[:count])
            self._size += count
            if self._expected_size is not None and self._size > self._expected_size:
                # Fail as soon as it is too long, before a consumer streams more of it.
                self._fail(f"is longer than its {self._expected_size} bytes")
        elif not self._is_checked:
            self._check()
        return count

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()

    def _check(self) -> None:
        self._is_checked = True
        if self._expected_size is not None and self._size != self._expected_size:
            self._fail(f"has {self._size} bytes, expected {self._expected_size}")
        actual = f"sha256:{self._hasher.hexdigest()}"
        if actual != self._digest:
            self._fail(f"is corrupt: its content hashes to {actual}")

    def _fail(self, problem: str) -> None:
        self._failure = DamagedBlobError(self._digest, problem, self._cache_dir)
        raise self._failure
