"""Docker's classic image store read straight from its data root: image configs and layer tars."""

from __future__ import annotations

import binascii
import errno
import gzip
import hashlib
import io
import json
import os
import re
import stat
import zlib
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forklift_boot.errors import EngineError

# One buffer per open layer: file contents are read into it and it is hashed and handed out
# whole, so a layer of many small files costs one hash update and one yield per MiB.
CHUNK_SIZE = 1 << 20
# A tar-split line holds one tar header (with its PAX/GNU extension records) or one file's name:
# far below this. dockerd puts all bytes after the end-of-archive blocks into one segment, so a
# layer tar with a long tail (or a corrupt file) would need more: refuse it, docker save copes.
MAX_LINE = 4 << 20
# Image configs are a few KiB; history-heavy ones some hundreds.
MAX_CONFIG_SIZE = 16 << 20
# Directory fds held open while walking one file's parents (one per level).
MAX_DEPTH = 256

# Drivers whose layer files lie under <root>/<driver>/<cache-id>/diff as the layer tar has them.
# vfs, btrfs and zfs keep each layer as a full snapshot, aufs and devicemapper differ again, and
# fuse-overlayfs is untested: those (and any other) are refused, the caller uses docker save.
SUPPORTED_DRIVERS = ("overlay2",)

_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
_CACHE_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z_.-]{0,127}")
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO where a regular file should be must not hang the open.
_OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
# Reading a layer's files must not write to the card: on a relatime mount the first read of each
# file after dockerd extracted it writes its inode (11 MB for 13,000 files in bench/round_trip.py,
# docs/benchmarks.md). The kernel allows O_NOATIME to the file's owner and to CAP_FOWNER only.
_OPEN_FILE_NOATIME = _OPEN_FILE | os.O_NOATIME
_SEGMENT = 2
_FILE = 1


class DirectReadError(EngineError):
    """Docker's store can't be read directly, or what was read doesn't check out.

    Not a failure of the image: the caller copies it with ``docker save`` instead.
    """


@dataclass
class ReadCounter:
    """What was read from the data root, so tests and benchmarks can prove a layer was not read."""

    bytes_read: int = 0  # file contents, tar-split files (compressed), metadata and configs
    files_opened: int = 0  # every file opened (directories not counted)
    layers_opened: int = 0


@dataclass(frozen=True)
class LayerPaths:
    """Where one layer's parts are (paths only; nothing is held open)."""

    chain_id: str
    layer_dir: Path  # image/<driver>/layerdb/sha256/<chain>
    diff_dir: Path  # <driver>/<cache-id>/diff


def hex_of(digest: str, what: str) -> str:
    """The hex part of ``sha256:<64 hex>``; anything else (a path, another algorithm) is refused."""
    match = _DIGEST.fullmatch(digest)
    if match is None:
        raise DirectReadError(f"couldn't use {what} {digest!r}: not a sha256 digest")
    return match.group(1)


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """Docker's chain IDs: chain(0) = diff(0), chain(n) = sha256("chain(n-1) diff(n)")."""
    chains: list[str] = []
    for diff_id in diff_ids:
        hex_of(diff_id, "diff ID")
        if not chains:
            chains.append(diff_id)
        else:
            text = f"{chains[-1]} {diff_id}".encode()
            chains.append("sha256:" + hashlib.sha256(text).hexdigest())
    return chains


def config_diff_ids(config: bytes) -> list[str]:
    """``rootfs.diff_ids`` of an image config, bottom layer first."""
    try:
        parsed = json.loads(config)
        diff_ids = parsed["rootfs"]["diff_ids"]
    except (ValueError, TypeError, KeyError) as err:
        raise DirectReadError(f"couldn't read the layers of an image config: {err}") from err
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
        raise DirectReadError("couldn't read the layers of an image config: diff_ids not a list")
    for diff_id in diff_ids:
        hex_of(diff_id, "diff ID")
    return list(diff_ids)


class ClassicStore:
    """Read-only access to the image configs and layers of Docker's classic store.

    ``root`` is ``DockerRootDir`` and ``driver`` is ``Driver`` from ``GET /info``, and both must
    be seen from this process as dockerd sees them (same machine, same mount namespace).
    """

    def __init__(self, root: Path, driver: str, counter: ReadCounter | None = None) -> None:
        self.root = root
        self.driver = driver
        self.counter = counter if counter is not None else ReadCounter()
        self.image_dir = root / "image" / driver

    @classmethod
    def from_engine_info(
        cls, info: Mapping[str, Any], counter: ReadCounter | None = None
    ) -> ClassicStore:
        """From the Engine API's ``GET /info`` answer (``DockerRootDir``, ``Driver``)."""
        root, driver = info.get("DockerRootDir"), info.get("Driver")
        if not isinstance(root, str) or not root or not isinstance(driver, str):
            raise DirectReadError("couldn't find Docker's data root: GET /info did not say it")
        return cls(Path(root), driver, counter)

    def check(self) -> None:
        """Raises DirectReadError unless layers of this store can be read directly."""
        if self.driver not in SUPPORTED_DRIVERS:
            raise DirectReadError(
                f"couldn't read Docker's store directly: storage driver {self.driver!r} "
                f"(only {', '.join(SUPPORTED_DRIVERS)} is supported)"
            )
        for path in (self.image_dir / "layerdb" / "sha256", self.root / self.driver):
            try:
                # Path.is_dir raises PermissionError (not False) below a directory it can't search.
                is_dir = stat.S_ISDIR(os.stat(path).st_mode)
            except FileNotFoundError:
                is_dir = False
            except OSError as err:
                raise DirectReadError(
                    f"couldn't read Docker's store directly: {path}: {err.strerror}"
                ) from err
            if not is_dir:
                raise DirectReadError(f"couldn't read Docker's store directly: no {path}")
            if not os.access(path, os.R_OK | os.X_OK):
                raise DirectReadError(f"couldn't read Docker's store directly: {path} not readable")

    def is_supported(self) -> bool:
        try:
            self.check()
        except DirectReadError:
            return False
        return True

    def image_config(self, image_id: str) -> bytes:
        """The config's exact bytes, checked: their sha256 is the image ID."""
        path = self.image_dir / "imagedb" / "content" / "sha256" / hex_of(image_id, "image ID")
        data = self._read_small(path, MAX_CONFIG_SIZE, f"the config of image {image_id}")
        if "sha256:" + hashlib.sha256(data).hexdigest() != image_id:
            raise DirectReadError(f"couldn't use the config of image {image_id}: {path} changed")
        return data

    def layer_paths(self, chain_id: str) -> LayerPaths:
        layer_dir = self.image_dir / "layerdb" / "sha256" / hex_of(chain_id, "chain ID")
        cache_id = self._read_small(layer_dir / "cache-id", 4096, f"layer {chain_id}")
        text = cache_id.decode("ascii", "replace").strip()
        if _CACHE_ID.fullmatch(text) is None:
            raise DirectReadError(f"couldn't use layer {chain_id}: bad cache-id {text[:80]!r}")
        return LayerPaths(chain_id, layer_dir, self.root / self.driver / text / "diff")

    def open_layer(self, chain_id: str, diff_id: str) -> LayerReader:
        """The layer's tar, rebuilt from tar-split and the diff directory, checked as it streams.

        ``diff_id`` is what the image config says; the layer's own ``diff`` file must agree.
        """
        hex_of(diff_id, "diff ID")
        paths = self.layer_paths(chain_id)
        recorded = self._read_small(paths.layer_dir / "diff", 4096, f"layer {chain_id}")
        if recorded.strip() != diff_id.encode():
            raise DirectReadError(
                f"couldn't use layer {chain_id}: it holds {recorded.strip()[:80]!r}, "
                f"the image config says {diff_id}"
            )
        return LayerReader(paths, diff_id, self.counter)

    def _read_small(self, path: Path, limit: int, what: str) -> bytes:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as err:
            raise DirectReadError(f"couldn't read {what}: {path}: {err.strerror}") from err
        self.counter.files_opened += 1
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
                raise DirectReadError(f"couldn't read {what}: {path} is not a small regular file")
            data = b""
            while len(data) < info.st_size:
                part = os.read(fd, info.st_size - len(data))
                if not part:
                    break
                data += part
            self.counter.bytes_read += len(data)
            return data
        except OSError as err:
            raise DirectReadError(f"couldn't read {what}: {path}: {err.strerror}") from err
        finally:
            os.close(fd)


class LayerReader(io.RawIOBase):
    """One layer's tar as a stream: ``chunks()`` (fastest) or ``read``/``readinto``.

    Bytes come out as they are read and hashed; the stream's end raises DirectReadError if their
    sha256 is not the diff ID, and any inconsistency (a file missing, shorter or longer than
    tar-split says, a name leaving the diff directory, corrupt tar-split) raises when it is met.
    The caller keeps what it wrote only after the end was reached without an error.
    """

    def __init__(self, paths: LayerPaths, diff_id: str, counter: ReadCounter) -> None:
        super().__init__()
        self.paths = paths
        self.diff_id = diff_id
        self.counter = counter
        self.size = 0  # bytes handed out so far
        self.digest: str | None = None  # set once the whole layer was read and checked
        self._chunks: Generator[memoryview, None, None] | None = None
        self._pending = memoryview(b"")

    # The io.RawIOBase side, for consumers that want a file object.
    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if self._chunks is not None:
            self._chunks.close()  # closes the files of a layer left half-read
        super().close()

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")
        while not self._pending:
            if self._chunks is None:
                self._chunks = self.chunks()
            try:
                self._pending = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(target), len(self._pending))
        target[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def chunks(self) -> Generator[memoryview, None, None]:
        """The tar in chunks of up to CHUNK_SIZE; each view is valid until the next is asked for."""
        self.counter.layers_opened += 1
        self.size, self.digest = 0, None
        what = f"layer {self.diff_id}"
        tar_split_path = self.paths.layer_dir / "tar-split.json.gz"
        try:
            raw = io.FileIO(tar_split_path, "rb")
        except OSError as err:
            raise DirectReadError(
                f"couldn't read {what}: {tar_split_path}: {err.strerror}"
            ) from err
        self.counter.files_opened += 1
        try:
            diff_fd = os.open(self.paths.diff_dir, _OPEN_DIR & ~os.O_NOFOLLOW)
        except OSError as err:
            raw.close()
            raise DirectReadError(
                f"couldn't read {what}: {self.paths.diff_dir}: {err.strerror}"
            ) from err
        walker = _DirWalker(diff_fd, what)
        try:
            with gzip.GzipFile(fileobj=raw, mode="rb") as tar_split:
                yield from self._assemble(tar_split, walker, what)
        except (OSError, EOFError, zlib.error) as err:
            # gzip.BadGzipFile is an OSError; EOFError is a truncated gzip stream.
            raise DirectReadError(f"couldn't read {what}: tar-split: {err}") from err
        finally:
            self.counter.bytes_read += raw.tell()
            raw.close()
            walker.close()

    def _assemble(
        self, tar_split: gzip.GzipFile, walker: _DirWalker, what: str
    ) -> Iterator[memoryview]:
        buf = bytearray(CHUNK_SIZE)
        view = memoryview(buf)
        pos = 0
        hasher = hashlib.sha256()
        counter = self.counter
        readline, a2b = tar_split.readline, binascii.a2b_base64
        # json.loads would detect the encoding and build a decoder for every line.
        decode = json.JSONDecoder().raw_decode
        readv, fstat, close = os.readv, os.fstat, os.close
        position = 0
        while line := readline(MAX_LINE + 1):
            if len(line) > MAX_LINE:
                raise DirectReadError(f"couldn't read {what}: tar-split line over {MAX_LINE} bytes")
            try:
                text = line.decode("utf-8")
                entry, end = decode(text)
                if end != len(text) and text[end:] != "\n":
                    raise ValueError(f"entry {position}: more than one JSON value on a line")
                kind = entry["type"]
                if entry["position"] != position:
                    raise ValueError(f"entry {position} says position {entry['position']}")
                # tar-split (Go) omits a zero size and an empty name, and writes an empty
                # payload as "" or null.
                if kind == _SEGMENT:
                    payload = a2b(entry["payload"] or "", strict_mode=True)
                elif kind == _FILE:
                    size = entry.get("size", 0)
                    if type(size) is not int or size < 0:
                        raise ValueError(f"entry {position}: bad size {size!r}")
                else:
                    raise ValueError(f"entry {position}: unknown type {kind!r}")
            except (ValueError, TypeError, KeyError, binascii.Error) as err:
                raise DirectReadError(f"couldn't read {what}: corrupt tar-split: {err}") from err
            position += 1
            if kind == _SEGMENT:
                n = len(payload)
                start = 0
                while n - start > CHUNK_SIZE - pos:
                    take = CHUNK_SIZE - pos
                    view[pos:] = payload[start : start + take]
                    start += take
                    hasher.update(view)
                    self.size += CHUNK_SIZE
                    yield view
                    pos = 0
                view[pos : pos + n - start] = payload[start:]
                pos += n - start
                continue
            if size == 0:  # directories, links, devices, whiteouts, empty files: no content
                continue
            name = _entry_name(entry, what)
            fd = walker.open_file(name)
            counter.files_opened += 1
            try:
                info = fstat(fd)
                if not stat.S_ISREG(info.st_mode):
                    raise DirectReadError(f"couldn't read {what}: {_show(name)} is not a file")
                if info.st_size != size:
                    raise DirectReadError(
                        f"couldn't read {what}: {_show(name)} has {info.st_size} bytes, "
                        f"tar-split says {size}"
                    )
                if size > CHUNK_SIZE:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
                left = size
                while left:
                    if pos == CHUNK_SIZE:
                        hasher.update(view)
                        self.size += CHUNK_SIZE
                        yield view
                        pos = 0
                    got = readv(fd, [view[pos : pos + min(left, CHUNK_SIZE - pos)]])
                    if got == 0:
                        raise DirectReadError(
                            f"couldn't read {what}: {_show(name)} ended {left} bytes early"
                        )
                    pos += got
                    left -= got
                    counter.bytes_read += got
            except OSError as err:
                raise DirectReadError(f"couldn't read {what}: {_show(name)}: {err}") from err
            finally:
                close(fd)
        if pos:
            hasher.update(view[:pos])
            self.size += pos
            yield view[:pos]
        digest = "sha256:" + hasher.hexdigest()
        if digest != self.diff_id:
            raise DirectReadError(f"couldn't read {what}: the files rebuild a tar of {digest}")
        self.digest = digest


def _entry_name(entry: Mapping[str, Any], what: str) -> bytes:
    name = entry.get("name")
    try:
        if isinstance(name, str) and name:
            return name.encode("utf-8")
        raw = entry.get("name_raw")
        if isinstance(raw, str) and raw:
            return binascii.a2b_base64(raw, strict_mode=True)
    except (ValueError, binascii.Error) as err:
        raise DirectReadError(f"couldn't read {what}: corrupt tar-split name: {err}") from err
    raise DirectReadError(f"couldn't read {what}: corrupt tar-split: a file entry without a name")


def _show(name: bytes) -> str:
    return repr(name.decode("utf-8", "backslashreplace"))


class _DirWalker:
    """Opens files under one directory by name, never leaving it: no ``..``, no symlinks on the way.

    Keeps the fds of the last file's parent directories, since a tar lists a directory's files
    together: most opens then cost one ``openat``.
    """

    def __init__(self, root_fd: int, what: str) -> None:
        self.root_fd = root_fd
        self.what = what
        self.names: list[bytes] = []  # the open parent directories, outermost first
        self.fds: list[int] = []
        self.last_parent: bytes | None = None  # the previous file's parent, as the tar spelt it

    def open_file(self, name: bytes) -> int:
        parent, _, base = name.rpartition(b"/")
        if parent == self.last_parent and base not in (b"", b".", b"..") and b"\0" not in base:
            # Most files: a sibling of the previous one, whose parent was checked then.
            try:
                return self._open_leaf(base, self.fds[-1] if self.fds else self.root_fd)
            except OSError as err:
                raise self._error(name, err) from err
        # dockerd extracts "/a", "./a" and "a" to the same file.
        parts = [p for p in name.split(b"/") if p and p != b"."]
        if not parts or b".." in parts or len(parts) > MAX_DEPTH or b"\0" in name:
            raise DirectReadError(f"couldn't read {self.what}: refused file name {_show(name)}")
        parents = parts[:-1]
        keep = 0
        for have, want in zip(self.names, parents, strict=False):
            if have != want:
                break
            keep += 1
        self._close_from(keep)
        self.last_parent = None
        try:
            for part in parents[keep:]:
                dir_fd = self.fds[-1] if self.fds else self.root_fd
                self.fds.append(os.open(part, _OPEN_DIR, dir_fd=dir_fd))
                self.names.append(part)
            fd = self._open_leaf(parts[-1], self.fds[-1] if self.fds else self.root_fd)
        except OSError as err:
            raise self._error(name, err) from err
        self.last_parent = parent
        return fd

    def _open_leaf(self, name: bytes, dir_fd: int) -> int:
        try:
            return os.open(name, _OPEN_FILE_NOATIME, dir_fd=dir_fd)
        except PermissionError as err:
            if err.errno != errno.EPERM:
                raise
            # Another owner's file, and no CAP_FOWNER (the hardened unit): its atime changes.
            return os.open(name, _OPEN_FILE, dir_fd=dir_fd)

    def _error(self, name: bytes, err: OSError) -> DirectReadError:
        reason = err.strerror
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            reason = "a symlink or non-directory on its path"
        return DirectReadError(f"couldn't read {self.what}: {_show(name)}: {reason}")

    def _close_from(self, keep: int) -> None:
        while len(self.fds) > keep:
            os.close(self.fds.pop())
            self.names.pop()
        self.last_parent = None

    def close(self) -> None:
        self._close_from(0)
        os.close(self.root_fd)
