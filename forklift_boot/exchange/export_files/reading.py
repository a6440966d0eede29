"""Reading a layer's tar in one streamed pass, its entries one at a time, headers capped."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, cast

from forklift_boot.archive.layers import LayerStream
from forklift_boot.cache import BUFFER_SIZE

# tarfile's stream mode copies what is left of its buffer on every read: with 1 MiB a layer of
# 20,000 small files read 2-3x slower than with 10-256 KiB (measured).
TAR_BUFFER_SIZE = 64 << 10
# The extended headers of one entry (PAX records, GNU long names and links, sparse maps):
# tarfile reads each one whole into memory, so a header claiming 1.5 GiB took 3.2 GB. Real
# ones hold a path or two and a few numbers.
MAX_HEADER_SIZE = 1 << 20
# Extended headers in a row before one entry: tarfile reads each one by recursing, so a long
# chain ends in a RecursionError. Real entries have at most a few (a PAX record, a long name).
MAX_HEADER_CHAIN = 32


class HeaderTooLarge(Exception):
    """An entry's headers go beyond MAX_HEADER_SIZE or MAX_HEADER_CHAIN."""


class _HeaderBudget:
    """The layer's tar, counting what tarfile reads while it reads an entry's headers (a file
    object with ``read`` only, which is all tarfile's stream mode calls: no copy added)."""

    def __init__(self, stream: LayerStream) -> None:
        self._stream = stream
        self._counted: int | None = None  # bytes read for the current entry's headers
        self._depth = 0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        if self._counted is not None:
            self._counted += len(data)
            # tarfile reads ahead by TAR_BUFFER_SIZE: allow for it, so a 1 MiB header passes.
            if self._counted > MAX_HEADER_SIZE + TAR_BUFFER_SIZE:
                raise HeaderTooLarge(
                    f"has an entry whose headers take more than {MAX_HEADER_SIZE >> 20} MiB"
                )
        return data

    @contextmanager
    def counting(self) -> Iterator[None]:
        """While tarfile reads one entry's headers (extended ones read the next by recursing)."""
        if self._depth >= MAX_HEADER_CHAIN:
            raise HeaderTooLarge(
                f"has an entry with more than {MAX_HEADER_CHAIN} extended headers in a row"
            )
        outer = self._depth == 0
        if outer:
            self._counted = 0
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if outer:
                self._counted = None


def _open_tar(stream: LayerStream) -> tarfile.TarFile:
    # Stream mode: one pass, members in order, data read from the stream as it comes.
    budget = _HeaderBudget(stream)

    class _CappedTarInfo(tarfile.TarInfo):
        @classmethod
        def fromtarfile(cls, tar: tarfile.TarFile) -> _CappedTarInfo:
            with budget.counting():
                return super().fromtarfile(tar)

    return tarfile.open(
        fileobj=cast(IO[bytes], budget),
        mode="r|",
        bufsize=TAR_BUFFER_SIZE,
        tarinfo=_CappedTarInfo,
    )


def _forget_members(tar: tarfile.TarFile) -> None:
    # Even in stream mode TarFile lists every member it read (a layer of 100,000 files would
    # hold 100,000 TarInfo objects); only the current one is needed.
    tar.members.clear()  # type: ignore[attr-defined]  # an attribute typeshed leaves out


def _drain(stream: LayerStream) -> None:
    while stream.read(BUFFER_SIZE):
        pass
