"""The exported tree as a tar stream (``-o -``), as ``docker cp CONTAINER:SOURCE -`` writes it."""

from __future__ import annotations

import os
import tarfile
import time
from typing import IO

from forklift_boot.errors import ForkliftBootError
from forklift_boot.exchange.export_files.reading import TAR_BUFFER_SIZE
from forklift_boot.exchange.export_files.tree import (
    BLOCK_DEVICE,
    CHAR_DEVICE,
    DIRECTORY,
    FIFO,
    SYMLINK,
    Parts,
    _Node,
    _Tree,
)


class _TarOutput(_Tree):
    """Writes the tree, once extracted, as a tar stream."""

    def write_tar(self, out: IO[bytes]) -> None:
        if not self.subtree:
            top: Parts = ()
        else:
            top = (self.subtree[-1],)
        size = len(self.subtree)
        seen: dict[tuple[int, int], str] = {}
        try:
            with tarfile.open(
                fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, bufsize=TAR_BUFFER_SIZE
            ) as tar:
                for parts, node in self.walk():
                    name = "/".join(top + parts[size:])
                    if not name:
                        continue  # the image root itself, as docker export leaves it out
                    self._add_to_tar(tar, name, parts, node, seen)
        except OSError as err:
            raise ForkliftBootError(
                f"couldn't write {self.source} of {self.image} as a tar: {err.strerror or err}"
            ) from err

    def _add_to_tar(
        self,
        tar: tarfile.TarFile,
        name: str,
        parts: Parts,
        node: _Node,
        seen: dict[tuple[int, int], str],
    ) -> None:
        info = tarfile.TarInfo(name)
        meta = node.meta
        info.mode = self._mode(meta, node.kind)
        info.uid, info.gid = meta.uid, meta.gid
        path = self._disk_path(parts)
        status = os.lstat(path) if node.on_disk else None
        mtime_ns = meta.mtime_ns
        if mtime_ns is None:  # made by the unpacker: whenever that was
            mtime_ns = status.st_mtime_ns if status is not None else time.time_ns()
            mtime_ns -= mtime_ns % 1_000_000_000
        # Whole seconds as an int: tarfile writes a PAX header for every float.
        seconds, rest = divmod(mtime_ns, 1_000_000_000)
        info.mtime = seconds if not rest else mtime_ns / 1e9
        if status is not None and node.kind != DIRECTORY and status.st_nlink > 1:
            key = (status.st_dev, status.st_ino)
            if key in seen:
                info.type = tarfile.LNKTYPE
                info.linkname = seen[key]
                tar.addfile(info)
                return
            seen[key] = name
        if node.kind == DIRECTORY:
            info.type = tarfile.DIRTYPE
        elif node.kind == SYMLINK:
            info.type = tarfile.SYMTYPE
            info.linkname = node.link
        elif node.kind == FIFO:
            info.type = tarfile.FIFOTYPE
        elif node.kind in (CHAR_DEVICE, BLOCK_DEVICE):
            if not self.options.keep_devices:
                self.skipped.append(self._shown(parts))
                return
            info.type = tarfile.CHRTYPE if node.kind == CHAR_DEVICE else tarfile.BLKTYPE
            info.devmajor, info.devminor = meta.devmajor, meta.devminor
        else:
            assert status is not None
            info.size = status.st_size
            with path.open("rb") as file:
                tar.addfile(info, file)
            return
        tar.addfile(info)
