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
from typing import IO, Any

from forklift_boot.cache import BUFFER_SIZE
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


class _Disk(_Tree):
    """Creates the tree's entries under ``work_root``."""

    def _create(
        self, parts: Parts, node: _Node, member: tarfile.TarInfo, tar: tarfile.TarFile
    ) -> None:
        path = self._disk_path(parts)
        kind = node.kind
        if kind == DIRECTORY:
            self._mkdir(path)
        elif kind == FILE:
            self._create_file(path, tar.extractfile(member), node.meta)
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
            if not self.options.create_devices:
                if not self.options.to_tar:
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

    def _create_file(self, path: Path, data: IO[bytes] | None, meta: _Meta | None) -> None:
        """A new file with ``data``, and ``meta`` set through its descriptor (as tar does: no
        path lookups, nothing followed)."""
        try:
            fd = os.open(path, _CREATE_FLAGS, 0o600)
        except OSError as err:
            raise self.write_error(path, err) from err
        try:
            self._write_data(fd, path, data)
            if meta is not None and not self.options.to_tar:  # tar: as in _set_meta
                try:
                    if self.options.preserve_owner:
                        os.fchown(fd, meta.uid, meta.gid)  # before chmod: chown clears set-ID bits
                    os.fchmod(fd, meta.mode)
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
            self._write_data(fd, path, tar.extractfile(member))
        finally:
            os.close(fd)

    def _write_data(self, fd: int, path: Path, data: IO[bytes] | None) -> None:
        # Reading errors (a damaged layer) pass through; writing errors name the file.
        while data is not None and (chunk := data.read(BUFFER_SIZE)):
            view = memoryview(chunk)
            while view:
                try:
                    written = os.write(fd, view)
                except OSError as err:
                    raise self.write_error(path, err) from err
                view = view[written:]
            self.bytes_written += len(chunk)

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
                os.chmod(path, meta.mode)
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
