"""gzip that uses every core: a layer is cut into blocks, each compressed as a gzip member.

A gzip file may hold several members one after the other (RFC 1952 §2.2); Docker, containerd,
gzip, pigz and Python all read such a file as one stream. zlib releases the GIL, so blocks
compress in parallel threads, which matters on a Raspberry Pi whose single core is far slower
than its SD card. The output depends only on the input and the level, never on thread timing.
"""

from __future__ import annotations

import os
import zlib
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

BLOCK_SIZE = 4 << 20
GZIP_WBITS = 31  # zlib's gzip wrapper: header with mtime 0, so equal input gives equal output


def _compress_block(block: bytes, level: int) -> bytes:
    compressor = zlib.compressobj(level, zlib.DEFLATED, GZIP_WBITS)
    return compressor.compress(block) + compressor.flush()


class ParallelGzip:
    """Feed bytes in order with ``write``; compressed members come out, in order, as ready.

    Memory stays bounded: at most ``2 * workers`` blocks are in flight.
    """

    def __init__(self, level: int = 6, workers: int | None = None) -> None:
        self.level = level
        self.workers = workers or os.cpu_count() or 1
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="gzip")
        self._pending: deque[Future[bytes]] = deque()
        self._buffer = bytearray()

    def write(self, data: bytes | memoryview) -> Iterator[bytes]:
        """Accepts ``data``; yields whatever compressed output is ready without waiting long."""
        self._buffer += data
        while len(self._buffer) >= BLOCK_SIZE:
            block = bytes(self._buffer[:BLOCK_SIZE])
            del self._buffer[:BLOCK_SIZE]
            self._pending.append(self._pool.submit(_compress_block, block, self.level))
            # Bound memory: wait for the oldest block once the pipeline is full.
            while len(self._pending) >= 2 * self.workers or (
                self._pending and self._pending[0].done()
            ):
                yield self._pending.popleft().result()

    def finish(self) -> Iterator[bytes]:
        """Compresses what is left; yields the rest of the output."""
        if self._buffer or not self._pending:
            # An empty input still becomes one (empty) gzip member, a valid gzip file.
            block = bytes(self._buffer)
            self._buffer.clear()
            self._pending.append(self._pool.submit(_compress_block, block, self.level))
        while self._pending:
            yield self._pending.popleft().result()
        self._pool.shutdown()

    def close(self) -> None:
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
