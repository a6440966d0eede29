"""Files out of a cached image: its layers applied in order, as a container would see them.

This is what Forklift's ``oci-image`` file exports need: one file or directory tree of an
image's flattened filesystem, placed at a destination path. ``tree`` holds the image's
filesystem as the layers leave it, ``apply`` applies a layer's entries to it, ``disk`` writes
them and checks the destination, ``reading`` decompresses the layers, ``extraction`` runs the
passes over them and ``output`` writes the tar of ``-o -``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from forklift_boot.cache import CacheReader, Descriptor
from forklift_boot.exchange.export_files.disk import (
    _check_destination,
    _make_temp_dir,
    _remove_tree,
    _rename_into_place,
)
from forklift_boot.exchange.export_files.extraction import ExportResult, _extract
from forklift_boot.exchange.export_files.tree import _Options

__all__ = ["ExportResult", "export_image_path", "write_image_path_tar"]


def export_image_path(
    reader: CacheReader,
    image: str,
    layers: Sequence[Descriptor],
    source: str,
    destination: Path,
    *,
    preserve_owner: bool | None = None,
    keep_devices: bool = False,
    keep_setid: bool = False,
) -> ExportResult:
    """Writes SOURCE of the image whose layers are given (oldest first) to ``destination``.

    A file (or symlink, fifo, device) becomes the file ``destination``; a directory becomes the
    directory ``destination`` with its contents. ``destination``'s parent is created; an
    existing file is replaced by a file and an empty directory by a directory, anything else is
    refused. Ownership is kept when running as root (as tar does). Device nodes are left out
    and set-user-ID and set-group-ID bits dropped, both listed in the result, unless
    ``keep_devices`` (as root: mknod needs it) or ``keep_setid``.
    """
    is_root = os.geteuid() == 0
    options = _Options(
        preserve_owner=is_root if preserve_owner is None else preserve_owner,
        display_root=str(destination),
        keep_devices=keep_devices,
        keep_setid=keep_setid,
    )
    _check_destination(destination, image, source)
    temp_dir = _make_temp_dir(destination, image, source)
    try:
        extraction = _extract(
            reader, image, layers, source=source, work_root=temp_dir / "export", options=options
        )
        _rename_into_place(extraction, destination)
        extraction.finish_top(destination)
    finally:
        _remove_tree(temp_dir)
    return extraction.result()


def write_image_path_tar(
    reader: CacheReader,
    image: str,
    layers: Sequence[Descriptor],
    source: str,
    out: IO[bytes],
    *,
    temp_parent: Path | None = None,
    keep_devices: bool = False,
    keep_setid: bool = False,
) -> ExportResult:
    """Writes SOURCE of the image as a tar stream, as ``docker cp CONTAINER:SOURCE -`` would:
    entries named from SOURCE's last component (no prefix for the image root), owners and
    modes as in the image whoever runs it, except that device nodes and set-user-ID and
    set-group-ID bits are left out unless ``keep_devices`` or ``keep_setid``. The tree is
    built in a temporary directory under ``temp_parent`` ($TMPDIR by default) first."""
    options = _Options(
        preserve_owner=False,
        display_root="-",
        to_tar=True,
        keep_devices=keep_devices,
        keep_setid=keep_setid,
    )
    temp_dir = _make_temp_dir(None, image, source, parent=temp_parent)
    try:
        extraction = _extract(
            reader, image, layers, source=source, work_root=temp_dir / "export", options=options
        )
        extraction.write_tar(out)
    finally:
        _remove_tree(temp_dir)
    return extraction.result()
