"""Layer blobs decompressed to their tars: gzip, zstd or none, told by the blob's first bytes.

Docker decides by the first bytes too (pkg/archive's DetectCompression): media types are not
always right (a registry's ``tar+gzip`` label on a plain tar, a zstd layer under a gzip type),
so the media type is only a hint, logged when the bytes disagree. Every reader streams with
fixed buffers: a layer never sits in memory whole, however well it compresses.
"""

from __future__ import annotations

import gzip
import io
import logging
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

log = logging.getLogger(__name__)

GZIP = "gzip"
ZSTD = "zstd"
NONE = "none"

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# A zstd stream may start with a skippable frame: 0x184D2A50 to 0x184D2A5F, little-endian.
_ZSTD_SKIPPABLE_TAIL = b"\x2a\x4d\x18"
_READ_ERRORS = (OSError, EOFError, zlib.error, tarfile.TarError)

LayerStream = IO[bytes] | io.BufferedIOBase  # a layer's decompressed tar


def compression_of(head: bytes) -> str:
    """GZIP, ZSTD or NONE, by a blob's first four bytes."""
    if head.startswith(_GZIP_MAGIC):
        return GZIP
    if head == _ZSTD_MAGIC or (
        len(head) == 4 and head[0] & 0xF0 == 0x50 and head[1:] == _ZSTD_SKIPPABLE_TAIL
    ):
        return ZSTD
    return NONE


def _labelled(media_type: str) -> str:
    if media_type.endswith(("gzip", "+gzip")):
        return GZIP
    if media_type.endswith("+zstd"):
        return ZSTD
    return NONE


@contextmanager
def read_errors(image: str, layer: Descriptor) -> Iterator[None]:
    """Turns what a damaged layer raises while it is read into one CacheError naming it."""
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
def open_layer(reader: CacheReader, image: str, layer: Descriptor) -> Iterator[LayerStream]:
    """The layer's tar stream, decompressed by what its first bytes say (gzip, zstd or
    none), as Docker does; media types are not always right. Reading it to the end checks
    the blob's digest."""
    blob = reader.open_blob(layer.digest, expected_size=layer.size)
    try:
        head = blob.read(4)
        raw = io.BufferedReader(Prefixed(head, blob), buffer_size=BUFFER_SIZE)
        compression = compression_of(head)
        if compression != _labelled(layer.media_type):
            log.debug(
                "layer %s of %s is %s-compressed, though its media type is %s",
                layer.digest,
                image,
                compression,
                layer.media_type,
            )
        if compression == GZIP:
            with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                yield stream
        elif compression == ZSTD:
            with _zstd_decompressed(raw, image, layer.digest) as stream:
                yield stream
        else:
            yield raw
    finally:
        blob.close()


def uncompressed_chunks(reader: CacheReader, image: str, layer: Descriptor) -> Iterator[bytes]:
    """The layer's tar, in chunks of at most BUFFER_SIZE; a damaged layer raises CacheError."""
    with read_errors(image, layer), open_layer(reader, image, layer) as stream:
        while chunk := stream.read(BUFFER_SIZE):
            yield chunk


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
