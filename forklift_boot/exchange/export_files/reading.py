"""Reading a layer's tar from the cache: decompressed, one streamed pass, errors named."""

from __future__ import annotations

import gzip
import io
import shutil
import subprocess
import tarfile
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import IO

from forklift_boot.archive.streams import Prefixed
from forklift_boot.cache import BUFFER_SIZE, CacheReader, Descriptor
from forklift_boot.errors import CacheError

# tarfile's stream mode copies what is left of its buffer on every read: with 1 MiB a layer of
# 20,000 small files read 2-3x slower than with 10-256 KiB (measured).
TAR_BUFFER_SIZE = 64 << 10

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_READ_ERRORS = (OSError, EOFError, zlib.error, tarfile.TarError)

_Stream = IO[bytes] | io.BufferedIOBase  # a layer's decompressed tar


@contextmanager
def _reading(image: str, layer: Descriptor) -> Iterator[None]:
    try:
        yield
    except CacheError:
        raise
    except _READ_ERRORS as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise CacheError(
            f"couldn't read layer {layer.digest} of {image} from the image cache: "
            f"{reason or type(err).__name__}; run `forklift-boot cache verify`"
        ) from err


@contextmanager
def _open_layer(reader: CacheReader, image: str, layer: Descriptor) -> Iterator[_Stream]:
    """The layer's tar stream, decompressed by what its first bytes say (gzip, zstd or
    none), as Docker does; media types are not always right."""
    blob = reader.open_blob(layer.digest, expected_size=layer.size)
    try:
        head = blob.read(4)
        raw = io.BufferedReader(Prefixed(head, blob), buffer_size=BUFFER_SIZE)
        if head.startswith(_GZIP_MAGIC):
            with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                yield stream
        elif head == _ZSTD_MAGIC:
            with _zstd_decompressed(raw, image, layer.digest) as stream:
                yield stream
        else:
            yield raw
    finally:
        blob.close()


def _open_tar(stream: _Stream) -> tarfile.TarFile:
    # Stream mode: one pass, members in order, data read from the stream as it comes.
    return tarfile.open(fileobj=stream, mode="r|", bufsize=TAR_BUFFER_SIZE)


def _forget_members(tar: tarfile.TarFile) -> None:
    # Even in stream mode TarFile lists every member it read (a layer of 100,000 files would
    # hold 100,000 TarInfo objects); only the current one is needed.
    tar.members.clear()  # type: ignore[attr-defined]  # an attribute typeshed leaves out


def _drain(stream: _Stream) -> None:
    while stream.read(BUFFER_SIZE):
        pass


@contextmanager
def _zstd_decompressed(raw: IO[bytes], image: str, digest: str) -> Iterator[IO[bytes]]:
    """zstd through the ``zstd`` program (Debian's zstd package), fed by a thread so the blob
    is read, and its digest checked, as it streams."""
    program = shutil.which("zstd")
    if program is None:
        raise CacheError(
            f"couldn't read layer {digest} of {image}: it is zstd-compressed and the zstd "
            "program is missing; install it (apt-get install zstd)"
        )
    process = subprocess.Popen(
        [program, "-d", "-c", "-q"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    stdin = process.stdin
    errors: list[BaseException] = []

    def feed() -> None:
        try:
            while chunk := raw.read(BUFFER_SIZE):
                stdin.write(chunk)
        except BrokenPipeError:
            pass  # zstd stopped (it failed, or we did); its exit status says which
        except BaseException as err:  # re-raised in the caller's thread
            errors.append(err)
        finally:
            with suppress(BrokenPipeError):
                stdin.close()

    def stop(*, kill: bool) -> tuple[int, bytes]:
        if kill:
            process.kill()
        stdout.close()
        feeder.join()
        stderr = process.stderr.read() if process.stderr is not None else b""
        if process.stderr is not None:
            process.stderr.close()
        return process.wait(), stderr

    stdout = process.stdout
    feeder = threading.Thread(target=feed, name="zstd-feed", daemon=True)
    feeder.start()
    try:
        yield stdout
    except BaseException:
        stop(kill=True)
        if errors:  # a damaged blob explains a truncated stream better than tar does
            raise errors[0] from None
        raise
    returncode, stderr = stop(kill=False)
    if errors:
        raise errors[0]
    if returncode != 0:
        reason = stderr.decode(errors="replace").strip().splitlines()
        raise CacheError(
            f"couldn't read layer {digest} of {image}: zstd failed"
            f" ({reason[-1] if reason else f'exit status {returncode}'}); run "
            "`forklift-boot cache verify`"
        )
