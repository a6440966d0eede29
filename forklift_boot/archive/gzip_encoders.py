"""Picking the fastest gzip encoder on this machine and running it behind one streaming interface.

Encoders, fastest first by bench/gzip_encoders.py on a 2-core amd64 VM (see PREFERENCE): the
PyPI ``isal`` library (ISA-L) in threads, the ``igzip`` program (Debian package ``isal``, the
same ISA-L) through a pipe, the PyPI ``zlib-ng`` library in threads, ``pigz`` through a pipe,
and zlib in threads (:class:`ZlibGzip`), which is always there.
Every one writes a standard gzip stream, the library ones as concatenated members (RFC 1952
§2.2), which Docker, containerd, gzip and Python read as one stream. Every one is
deterministic: its output depends on the input and the level only, not on the thread count or
timing (the library ones cut fixed blocks; igzip and pigz get ``-n``: no name, no mtime).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import logging
import os
import selectors
import shutil
import subprocess
import tempfile
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

from forklift_boot.errors import CacheError

log = logging.getLogger(__name__)

# Threads (or the program's threads) per stream, whatever the number of cores: memory in
# flight grows with it, and a Raspberry Pi 4 has 4 cores.
MAX_WORKERS = 4
# The library encoders' member size: 2 * workers blocks in flight (input and output each), so
# at most 4 * 2 * 2 MiB = 16 MiB; ISA-L's 32 KiB window makes larger members no smaller.
LIBRARY_BLOCK_SIZE = 1 << 20
PIPE_SIZE = 1 << 20  # Linux's default pipe-max-size: fewer wake-ups than the 64 KiB default
READ_SIZE = 1 << 20
GZIP_WBITS = 31  # a gzip wrapper, header mtime 0: equal input gives equal output

PREFERENCE = ("isal", "igzip", "zlib-ng", "pigz", "zlib")


class GzipEncoderError(CacheError):
    """A gzip encoder program failed or died while compressing."""


class GzipEncoder(Protocol):
    """Feed bytes in order with ``write``; compressed bytes come out, in order, as ready.

    ``write`` and ``finish`` are generators: nothing happens until they are iterated.
    ``close`` releases threads and child processes, also mid-stream; call it always.
    """

    name: str

    def write(self, data: bytes | bytearray | memoryview) -> Iterator[bytes]: ...

    def finish(self) -> Iterator[bytes]: ...

    def close(self) -> None: ...


# Zlib, the fallback that is always there


class ZlibGzip:
    """zlib blocks in threads, cut as the library encoders cut them (LIBRARY_BLOCK_SIZE);
    deterministic. 4 MiB blocks (the earlier encoder's) would hold 2 * 4 * 4 MiB in flight per
    stream (80 MB peak measured with its output); 1 MiB blocks cost 0.1% in size."""

    name = "zlib"

    def __init__(self, level: int, workers: int) -> None:
        self._gzip = ThreadedBlockGzip("zlib", zlib, level, workers)

    def write(self, data: bytes | bytearray | memoryview) -> Iterator[bytes]:
        return self._gzip.write(data)

    def finish(self) -> Iterator[bytes]:
        return self._gzip.finish()

    def close(self) -> None:
        self._gzip.close()


# Libraries that release the GIL (isal.isal_zlib, zlib_ng.zlib_ng): blocks in threads


class ThreadedBlockGzip:
    """Compresses ``block_size`` blocks in threads, each a gzip member; deterministic.

    With any zlib-compatible module (its ``compressobj``): zlib itself, isal's or zlib-ng's;
    at most ``2 * workers`` blocks are in flight.
    """

    def __init__(
        self,
        name: str,
        module: Any,
        level: int,
        workers: int,
        block_size: int = LIBRARY_BLOCK_SIZE,
    ) -> None:
        self.name = name
        self._module = module
        self._level = level
        self._workers = workers
        self._block_size = block_size
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix=f"gzip-{name}")
        self._pending: deque[Future[bytes]] = deque()
        self._buffer = bytearray()

    def _compress(self, block: bytes | memoryview) -> bytes:
        compressor = self._module.compressobj(self._level, self._module.DEFLATED, GZIP_WBITS)
        return bytes(compressor.compress(block) + compressor.flush())

    def write(self, data: bytes | bytearray | memoryview) -> Iterator[bytes]:
        size = self._block_size
        if not self._buffer and isinstance(data, bytes):
            # Whole blocks straight from the caller's bytes, which cannot change: no copy.
            # cache-img reads 1 MiB at a time, so every block goes this way.
            view = memoryview(data)
            whole = len(view) - len(view) % size
            for offset in range(0, whole, size):
                yield from self._submit(view[offset : offset + size])
            self._buffer += view[whole:]
            return
        self._buffer += data
        while len(self._buffer) >= size:
            block = bytes(self._buffer[:size])
            del self._buffer[:size]
            yield from self._submit(block)

    def _submit(self, block: bytes | memoryview) -> Iterator[bytes]:
        self._pending.append(self._pool.submit(self._compress, block))
        while len(self._pending) >= 2 * self._workers or (
            self._pending and self._pending[0].done()
        ):
            yield self._pending.popleft().result()

    def finish(self) -> Iterator[bytes]:
        if self._buffer or not self._pending:
            # An empty input still becomes one (empty) member, a valid gzip file.
            self._pending.append(self._pool.submit(self._compress, bytes(self._buffer)))
            self._buffer.clear()
        while self._pending:
            yield self._pending.popleft().result()
        self._pool.shutdown()

    def close(self) -> None:
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)


# Programs (igzip, pigz): a child process behind two pipes


class PipeGzip:
    """Streams through a gzip program; its input and output are served together (selectors),
    so neither side can fill its pipe while the other waits. Memory: the pipes' buffers.

    A child that exits early or fails raises GzipEncoderError; ``close`` kills and reaps it.
    """

    def __init__(self, name: str, argv: Sequence[str]) -> None:
        self.name = name
        # Kept open until close(): the child's last words, for the error message.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        try:
            self._process = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                bufsize=0,
            )
        except OSError:
            self._stderr.close()
            raise
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        self._stdin = self._process.stdin
        self._stdout = self._process.stdout
        for pipe in (self._stdin, self._stdout):
            with contextlib.suppress(OSError):  # a smaller pipe-max-size: keep the default
                fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        os.set_blocking(self._stdin.fileno(), False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._stdout, selectors.EVENT_READ)

    @property
    def pid(self) -> int:
        """The child's process ID (kept after it is reaped, for diagnostics)."""
        return self._process.pid

    def write(self, data: bytes | bytearray | memoryview) -> Iterator[bytes]:
        view = memoryview(data).cast("B")
        if not view:
            return
        with contextlib.suppress(KeyError):  # still registered by an abandoned write
            self._selector.register(self._stdin, selectors.EVENT_WRITE)
        try:
            while view:
                for key, _events in self._selector.select():
                    if key.fileobj is self._stdout:
                        chunk = os.read(self._stdout.fileno(), READ_SIZE)
                        if not chunk:
                            raise self._failure("closed its output before the end of its input")
                        yield chunk
                    elif view:
                        try:
                            written = os.write(self._stdin.fileno(), view)
                        except BlockingIOError:
                            continue
                        except BrokenPipeError:
                            raise self._failure("stopped reading its input") from None
                        view = view[written:]
        finally:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(self._stdin)

    def finish(self) -> Iterator[bytes]:
        try:
            self._stdin.close()
        except BrokenPipeError:
            raise self._failure("stopped reading its input") from None
        while chunk := os.read(self._stdout.fileno(), READ_SIZE):
            yield chunk
        if self._process.wait() != 0:
            raise self._failure("failed")

    def _failure(self, what: str) -> GzipEncoderError:
        try:
            code = self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            code = self._process.wait()
        self._stderr.seek(0)
        lines = self._stderr.read(4096).decode(errors="replace").strip().splitlines()
        status = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        detail = f": {lines[-1]}" if lines else ""
        return GzipEncoderError(
            f"gzip encoder {self.name} {what} ({status}{detail}); "
            f"rerun; if it fails again, remove the package that installs {self.name} to use zlib"
        )

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(self._stdout)
        self._selector.close()
        with contextlib.suppress(BrokenPipeError):
            self._stdin.close()
        self._stdout.close()
        self._stderr.close()


# Choosing


def _isal_level(level: int) -> int:
    """zlib's 0..9 onto ISA-L's 0..3. ISA-L 0, 1 and 2 cost the same CPU here (about 2 s/GB,
    bench/gzip_encoders.py) and 2 is the smallest, as small as zlib's 1: so 1..5 is 2."""
    return 0 if level <= 0 else 2 if level <= 5 else 3


def import_optional(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


@dataclass(frozen=True)
class EncoderChoice:
    """An available encoder and how to start one stream of it."""

    name: str
    start: Callable[[int, int], GzipEncoder]  # (zlib-style level, workers)


def available_encoders(
    which: Callable[[str], str | None] = shutil.which,
    load_module: Callable[[str], ModuleType | None] = import_optional,
) -> list[EncoderChoice]:
    """Every encoder this machine has, in PREFERENCE order; zlib is always last."""
    found: list[EncoderChoice] = []
    isal = load_module("isal.isal_zlib")
    if isal is not None:
        found.append(
            EncoderChoice(
                "isal", lambda level, n: ThreadedBlockGzip("isal", isal, _isal_level(level), n)
            )
        )
    igzip = which("igzip")
    if igzip is not None:
        # Debian's igzip accepts -T but is built without threads: one stream, one core.
        found.append(
            EncoderChoice(
                "igzip",
                lambda level, n: PipeGzip("igzip", (igzip, f"-{_isal_level(level)}", "-n", "-c")),
            )
        )
    zlib_ng = load_module("zlib_ng.zlib_ng")
    if zlib_ng is not None:
        found.append(
            EncoderChoice(
                "zlib-ng", lambda level, n: ThreadedBlockGzip("zlib-ng", zlib_ng, level, n)
            )
        )
    pigz = which("pigz")
    if pigz is not None:
        found.append(
            EncoderChoice(
                "pigz",
                lambda level, n: PipeGzip("pigz", (pigz, f"-{level}", "-n", f"-p{n}", "-c")),
            )
        )
    found.append(EncoderChoice("zlib", ZlibGzip))
    return found


def open_gzip_encoder(
    level: int = 1,
    workers: int | None = None,
    *,
    encoder: str | None = None,
    which: Callable[[str], str | None] = shutil.which,
    load_module: Callable[[str], ModuleType | None] = import_optional,
) -> GzipEncoder:
    """Starts one stream on the first available encoder of PREFERENCE, or on ``encoder``.

    ``level`` is zlib's (0..9); ``workers`` defaults to the cores, at most MAX_WORKERS.
    """
    count = max(1, min(workers or os.cpu_count() or 1, MAX_WORKERS))
    choices = available_encoders(which, load_module)
    if encoder is not None:
        choices = [choice for choice in choices if choice.name == encoder]
        if not choices:
            raise ValueError(f"gzip encoder {encoder} is not available here")
    choice = choices[0]
    log.debug("gzip encoder %s, level %d, %d workers", choice.name, level, count)
    return choice.start(level, count)
