"""Writing the exported tree to disk safely, and the destination it goes to.

Nothing is ever followed on the host: every path written is checked against the in-memory tree,
files are created with ``O_EXCL|O_NOFOLLOW`` after removing what was there, hardlinks are made
with ``follow_symlinks=False``, and symlinks are stored exactly as the image has them (an
absolute target means the image's root, so it is kept as is). The tree is built in a temporary
directory beside the destination and renamed into place at the end, so an interrupted export
leaves nothing at the destination.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tarfile
import tempfile
from contextlib import suppress
from pathlib import Path
from typing import IO, Any, cast

from forklift_boot.cache import BUFFER_SIZE, human_bytes
from forklift_boot.errors import ForkliftBootError
from forklift_boot.exchange.export_files.tree import (
    CHAR_DEVICE,
    DIRECTORY,
    FIFO,
    FILE,
    SYMLINK,
    Parts,
    _Meta,
    _Node,
    _Tree,
)

_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_REWRITE_FLAGS = os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC


_Data = tuple[tarfile.TarFile, tarfile.TarInfo]  # a file's data: its member in the layer


class _Disk(_Tree):
    """Creates the tree's entries under ``work_root``."""

    _free: int | None = None  # bytes free under work_root, as last asked less what was written

    def _create(
        self, parts: Parts, node: _Node, member: tarfile.TarInfo, tar: tarfile.TarFile
    ) -> None:
        path = self._disk_path(parts)
        kind = node.kind
        if kind == DIRECTORY:
            self._mkdir(path)
        elif kind == FILE:
            self._create_file(path, (tar, member), node.meta)
            node.on_disk = True
            return
        elif kind == SYMLINK:
            try:
                os.symlink(node.link, path)
            except OSError as err:
                raise self.write_error(path, err) from err
        elif kind == FIFO:
            try:
                os.mkfifo(path, 0o600)
            except OSError as err:
                raise self.write_error(path, err) from err
        else:
            if self.options.to_tar or not self.options.keep_devices:
                if not self.options.to_tar:  # a tar leaves them out when it is written
                    self.skipped.append(self._shown(parts))
                return
            file_type = stat.S_IFCHR if kind == CHAR_DEVICE else stat.S_IFBLK
            try:
                os.mknod(path, 0o600 | file_type, os.makedev(member.devmajor, member.devminor))
            except PermissionError:
                # Root without CAP_MKNOD (a user namespace, a container).
                self.skipped.append(self._shown(parts))
                return
            except OSError as err:
                raise self.write_error(path, err) from err
        node.on_disk = True
        if kind != DIRECTORY:  # directories get theirs at the end
            self._set_meta(path, node.meta, kind)

    def _create_file(self, path: Path, data: _Data | None, meta: _Meta | None) -> None:
        """A new file with the data of ``data``'s member, and ``meta`` set through its
        descriptor (as tar does: no path lookups, nothing followed)."""
        try:
            fd = os.open(path, _CREATE_FLAGS, 0o600)
        except OSError as err:
            raise self.write_error(path, err) from err
        try:
            if data is not None:
                self._write_data(fd, path, *data)
            if meta is not None and not self.options.to_tar:  # tar: as in _set_meta
                try:
                    if self.options.preserve_owner:
                        os.fchown(fd, meta.uid, meta.gid)  # before chmod: chown clears set-ID bits
                    os.fchmod(fd, self._mode(meta, FILE))
                    if meta.mtime_ns is not None:
                        os.utime(fd, ns=(meta.mtime_ns, meta.mtime_ns))
                except OSError as err:
                    raise self.write_error(path, err) from err
        finally:
            os.close(fd)

    def _copy_into(self, path: Path, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        try:
            fd = os.open(path, _REWRITE_FLAGS)
        except OSError as err:
            raise self.write_error(path, err) from err
        try:
            self._write_data(fd, path, tar, member)
        finally:
            os.close(fd)

    def _write_data(
        self, fd: int, path: Path, tar: tarfile.TarFile, member: tarfile.TarInfo
    ) -> None:
        """Writes the member's data; a sparse member's holes stay holes (a 10 KB layer may
        hold a sparse file of 1 TiB), and nothing is written that the filesystem has no room
        for."""
        data = tar.extractfile(member)
        if data is None:
            return
        fragments = self._fragments(member)
        self._reserve(member, sum(size for _, size in fragments))
        if fragments == [(0, member.size)]:
            self._copy(fd, path, data, member.size)
            return
        # The unbuffered reader under the buffered one: it moves over a hole without reading
        # (the buffered one asks the stream whether it can seek, which a stream can't say).
        raw: IO[bytes] = cast(Any, data).raw
        for offset, size in fragments:
            raw.seek(offset)
            try:
                os.lseek(fd, offset, os.SEEK_SET)
            except OSError as err:
                raise self.write_error(path, err) from err
            self._copy(fd, path, raw, size)
        try:
            os.ftruncate(fd, member.size)  # a hole at the end too
        except OSError as err:
            raise self.write_error(path, err) from err

    def _copy(self, fd: int, path: Path, data: IO[bytes], size: int) -> None:
        # Reading errors (a damaged layer) pass through; writing errors name the file.
        while size > 0 and (chunk := data.read(min(BUFFER_SIZE, size))):
            size -= len(chunk)
            view = memoryview(chunk)
            while view:
                try:
                    written = os.write(fd, view)
                except OSError as err:
                    raise self.write_error(path, err) from err
                view = view[written:]
            self.bytes_written += len(chunk)

    def _fragments(self, member: tarfile.TarInfo) -> list[tuple[int, int]]:
        """Where the member's data goes: (offset, size) pairs in order, holes between them."""
        # typeshed says bytes; tarfile keeps the map as a list of pairs.
        sparse = cast("list[tuple[int, int]] | None", member.sparse)
        if sparse is None:
            return [(0, member.size)]
        # GNU tar's old format leaves unused map slots zero: (0, 0), which tarfile keeps.
        sparse = [(offset, size) for offset, size in sparse if size != 0]
        end = 0
        for offset, size in sparse:
            if offset < end or size < 0 or offset + size > member.size:
                raise self._unsafe(member.name, "has a sparse map that doesn't fit its size")
            end = offset + size
        if self.options.to_tar and sum(size for _, size in sparse) < member.size:
            raise ForkliftBootError(
                f"couldn't export {self.source} from {self.image}: layer {self._digest} entry "
                f"{member.name!r} is a sparse file of {human_bytes(member.size)}, which a tar "
                "on standard output would carry whole, holes as zeros; export to a directory "
                "(-o DEST), which keeps it sparse"
            )
        return list(sparse)

    def _reserve(self, member: tarfile.TarInfo, size: int) -> None:
        """Refuses to start writing ``size`` bytes that the filesystem has no room for: a
        small layer may unpack into far more than the disk holds (a device's $TMPDIR is
        often RAM). Free space is asked again only when the estimate runs short."""
        if size <= 0:
            return
        if self._free is None or self._free < size:
            where = self.work_root.parent
            try:
                status = os.statvfs(where)
            except OSError as err:
                raise self.write_error(where, err) from err
            self._free = status.f_bavail * status.f_frsize
        if size > self._free:
            place = "the temporary directory's filesystem (set TMPDIR to a larger one)"
            if not self.options.to_tar:
                place = str(self.work_root.parent.parent)
            raise ForkliftBootError(
                f"couldn't export {self.source} from {self.image}: layer {self._digest} entry "
                f"{member.name!r} needs {human_bytes(size)}, more than the "
                f"{human_bytes(self._free)} free in {place}; free some space or export less"
            )
        self._free -= size

    def _mkdir(self, path: Path) -> None:
        try:
            # Owner-writable until the end, whatever the image says, so entries can go in.
            os.mkdir(path, 0o700)
        except OSError as err:
            raise self.write_error(path, err) from err

    def _hardlink(self, target: Path, path: Path) -> None:
        try:
            os.link(target, path, follow_symlinks=False)
        except OSError as err:
            raise self.write_error(path, err) from err

    def _set_meta(self, path: Path, meta: _Meta, kind: str) -> None:
        if self.options.to_tar:
            # The tar's headers come from the tree: the disk copy keeps the modes it was made
            # with, so a 0000 file or directory stays readable for a user other than root.
            return
        try:
            if self.options.preserve_owner:
                # Before chmod: chown clears set-user-ID bits.
                os.chown(path, meta.uid, meta.gid, follow_symlinks=False)
            if kind != SYMLINK:  # Linux has no symlink modes; the path is ours, not a link
                os.chmod(path, self._mode(meta, kind))
            if meta.mtime_ns is not None:
                os.utime(path, ns=(meta.mtime_ns, meta.mtime_ns), follow_symlinks=False)
        except OSError as err:
            raise self.write_error(path, err) from err


def _check_destination(destination: Path, image: str, source: str) -> None:
    """Refuses a destination that no export may replace, before reading anything."""
    try:
        status = destination.lstat()
    except FileNotFoundError:
        return
    except OSError as err:
        raise ForkliftBootError(
            f"couldn't export {source} from {image} to {destination}: {err.strerror or err}"
        ) from err
    if not stat.S_ISDIR(status.st_mode):
        return
    try:
        with os.scandir(destination) as entries:
            is_empty = next(entries, None) is None
    except OSError as err:
        raise ForkliftBootError(
            f"couldn't export {source} from {image}: couldn't read the directory "
            f"{destination}: {err.strerror or err}"
        ) from err
    if not is_empty:
        raise ForkliftBootError(
            f"couldn't export {source} from {image}: {destination} already exists and isn't "
            "empty; remove it, or give a path that doesn't exist yet"
        )


def _make_temp_dir(
    destination: Path | None, image: str, source: str, parent: Path | None = None
) -> Path:
    try:
        if destination is None:
            return Path(tempfile.mkdtemp(prefix="forklift-boot-export-", dir=parent))
        destination.parent.mkdir(parents=True, exist_ok=True)
        # Beside the destination, so the final rename stays on one filesystem.
        return Path(
            tempfile.mkdtemp(
                prefix=f".{destination.name}.", suffix=".partial", dir=destination.parent
            )
        )
    except OSError as err:
        where = destination if destination is not None else (parent or tempfile.gettempdir())
        raise ForkliftBootError(
            f"couldn't export {source} from {image}: couldn't create a temporary directory "
            f"for {where}: {err.strerror or err}"
        ) from err


def _rename_into_place(extraction: _Tree, destination: Path) -> None:
    node = extraction.lookup(extraction.subtree)
    assert node is not None
    try:
        # rename(2) replaces a file with a file and an empty directory with a directory.
        os.rename(extraction.work_root, destination)
    except OSError as err:
        if err.errno in (errno.ENOTEMPTY, errno.EEXIST):
            problem = f"{destination} already exists and isn't empty"
        elif err.errno == errno.EISDIR:
            name = extraction.subtree[-1] if extraction.subtree else "file"
            problem = (
                f"{destination} is a directory and /{'/'.join(extraction.subtree)} is a "
                f"{node.kind}; give the path to create, such as {destination / name}"
            )
        elif err.errno == errno.ENOTDIR:
            problem = f"{destination} exists and isn't a directory"
        else:
            problem = f"couldn't rename into {destination}: {err.strerror or err}"
        raise ForkliftBootError(
            f"couldn't export {extraction.source} from {extraction.image}: {problem}"
        ) from err


def _remove_path(path: Path, on_error: Any = None) -> None:
    """Removes a file, symlink or directory tree without following symlinks."""
    try:
        status = path.lstat()
    except FileNotFoundError:
        return
    try:
        if stat.S_ISDIR(status.st_mode):
            shutil.rmtree(path)
        else:
            path.unlink()
    except OSError as err:
        if on_error is None:
            raise
        raise on_error(path, err) from err


def _remove_tree(path: Path) -> None:
    """Removes the temporary directory; read-only directories inside it are opened first
    (only root may delete from them otherwise)."""
    if not path.exists():
        return
    if os.geteuid() != 0:
        for directory, _, _ in os.walk(path):  # never follows symlinks
            with suppress(OSError):
                os.chmod(directory, 0o700)
    shutil.rmtree(path, ignore_errors=True)
