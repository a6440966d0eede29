"""Reading tar streams: byte-chunk iterators as files, files whose first bytes were already
read, and JSON members with a size cap."""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import IO, Any

from forklift_boot.cache import MAX_JSON_BLOB_SIZE
from forklift_boot.cache.json_limits import load_json
from forklift_boot.errors import EngineError
from forklift_boot.images import ByteCounter


def parse_json(file: IO[bytes], name: str) -> Any:
    data = file.read(MAX_JSON_BLOB_SIZE + 1)
    if len(data) > MAX_JSON_BLOB_SIZE:
        raise EngineError(f"couldn't read the image stream from Docker: {name} is too large")
    try:
        return load_json(data)
    except ValueError as err:
        raise EngineError(f"couldn't read the image stream from Docker: {name}: {err}") from err


class ChunkReader(io.RawIOBase):
    """A file over an iterator of byte chunks, so tarfile can read a stream."""

    def __init__(self, chunks: Iterable[bytes], on_bytes: ByteCounter) -> None:
        self._chunks = iter(chunks)
        self._pending = memoryview(b"")
        self._on_bytes = on_bytes

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            try:
                chunk = next(self._chunks)
            except StopIteration:
                return 0
            self._on_bytes(len(chunk))
            self._pending = memoryview(chunk)
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


class Prefixed(io.RawIOBase):
    """A file whose first bytes were already read (to sniff its type)."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self._head = memoryview(head)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._head:
            size = min(len(buffer), len(self._head))
            buffer[:size] = self._head[:size]
            self._head = self._head[size:]
            return size
        data = self._rest.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)
