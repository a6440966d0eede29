"""Passes over an image's layers that extract SOURCE, and what they wrote.

SOURCE's symlinks are resolved inside the image root, in the image's final state, which is only
known after the last layer: the first pass extracts SOURCE as written, and only when a symlink
in its path leads elsewhere are the layers read a second time for the real path.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from forklift_boot.archive.layers import open_layer, read_errors
from forklift_boot.cache import CacheReader, Descriptor
from forklift_boot.errors import ForkliftBootError
from forklift_boot.exchange.export_files.apply import _Applier
from forklift_boot.exchange.export_files.disk import _remove_path
from forklift_boot.exchange.export_files.output import _TarOutput
from forklift_boot.exchange.export_files.reading import (
    HeaderTooLarge,
    _drain,
    _forget_members,
    _open_tar,
)
from forklift_boot.exchange.export_files.tree import (
    _IMPLICIT_DIR,
    BLOCK_DEVICE,
    CHAR_DEVICE,
    DIRECTORY,
    Parts,
    _Options,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote."""

    source: str  # the path in the image that was exported, symlinks resolved ("/" = root)
    kind: str  # DIRECTORY, FILE, SYMLINK, ...
    entries: int  # files, directories, links and nodes in the exported tree
    bytes_written: int  # file bytes written, including files that a later layer replaced
    skipped: tuple[str, ...]  # device nodes left out (not asked for, or not allowed)
    layer_passes: int  # 1, or 2 when a symlink in SOURCE's path led elsewhere
    setid_dropped: tuple[str, ...] = ()  # files whose set-user/group-ID bits were left out


def _extract(
    reader: CacheReader,
    image: str,
    layers: Sequence[Descriptor],
    *,
    source: str,
    work_root: Path,
    options: _Options,
) -> _Extraction:
    given, follow_last = _source_parts(source)
    wanted = _collapse(given)  # a guess, right unless a symlink in SOURCE leads elsewhere
    extraction = _Extraction(
        reader, image, layers, source=source, subtree=wanted, work_root=work_root, options=options
    )
    extraction.run()
    resolved = extraction.resolve(given, follow_last)
    if resolved != wanted:
        log.info(
            "%s is /%s in %s (through symlinks in the image); reading its layers again",
            source,
            "/".join(resolved),
            image,
        )
        _remove_path(work_root, extraction.write_error)
        extraction = _Extraction(
            reader,
            image,
            layers,
            source=source,
            subtree=resolved,
            work_root=work_root,
            options=options,
        )
        extraction.passes = 2
        extraction.run()
        if extraction.resolve(given, follow_last) != resolved:  # the same layers: can't happen
            raise ForkliftBootError(f"couldn't export {source} from {image}: it keeps changing")
    extraction.finish()
    return extraction


def _source_parts(source: str) -> tuple[Parts, bool]:
    """SOURCE as path components under the image root, and whether a trailing ``/`` asks for a
    final symlink to be followed. ``..`` stays in for the resolver (it can't leave the root)."""
    parts = tuple(part for part in source.split("/") if part not in ("", "."))
    return parts, source.rstrip("/") != source or source.endswith("/.")


def _collapse(parts: Parts) -> Parts:
    """``parts`` with each ``..`` taking away the component before it (none at the root)."""
    collapsed: list[str] = []
    for part in parts:
        if part != "..":
            collapsed.append(part)
        elif collapsed:
            collapsed.pop()
    return tuple(collapsed)


class _Extraction(_Applier, _TarOutput):
    """One pass over the layers, extracting the tree under ``subtree`` to ``work_root``."""

    def __init__(
        self,
        reader: CacheReader,
        image: str,
        layers: Sequence[Descriptor],
        *,
        source: str,
        subtree: Parts,
        work_root: Path,
        options: _Options,
    ) -> None:
        super().__init__(
            reader,
            image,
            layers,
            source=source,
            subtree=subtree,
            work_root=work_root,
            options=options,
        )
        if not subtree:
            self._mkdir(work_root)
            self.root.on_disk = True

    # --- passes ---------------------------------------------------------------------------

    def run(self) -> None:
        for number, layer in enumerate(self.layers):
            self._layer = number
            self._digest = layer.digest
            self._links.clear()
            self._pending.clear()
            self._link_meta.clear()
            # Each layer's own root directory hides the lower ones' attributes, as for any
            # directory.
            self.root.layer = number
            self.root.meta = _IMPLICIT_DIR
            try:
                with read_errors(self.image, layer):
                    with open_layer(self.reader, self.image, layer) as stream:
                        with _open_tar(stream) as tar:
                            ordinal = 0
                            while (member := tar.next()) is not None:
                                self._apply(member, tar, ordinal)
                                _forget_members(tar)
                                ordinal += 1
                        _drain(stream)  # reading to the end checks the blob's digest
                    if self._pending:
                        self._copy_pending(layer)
            except HeaderTooLarge as err:
                raise self._unsafe_layer(str(err)) from None

    def finish(self) -> None:
        """Checks that SOURCE was found, then gives directories their modes and times (last,
        since adding entries changes a directory's mtime and a read-only one refuses them),
        all but the top one, which gets its own once renamed into place (``finish_top``)."""
        node = self.lookup(self.subtree)
        where = "/" + "/".join(self.subtree)
        if node is None:
            raise ForkliftBootError(
                f"couldn't export {self.source} from {self.image}: {where} doesn't exist in the "
                "image"
            )
        if node.kind in (CHAR_DEVICE, BLOCK_DEVICE) and not self.options.keep_devices:
            raise ForkliftBootError(
                f"couldn't export {self.source} from {self.image}: {where} is a {node.kind}, "
                "and device nodes are left out unless asked for (--keep-devices)"
            )
        if not node.on_disk and not self.options.to_tar:
            raise ForkliftBootError(
                f"couldn't export {self.source} from {self.image}: {where} is a {node.kind}, "
                "which only root can create"
            )
        if self.options.to_tar:
            return  # the tar's headers come from the tree; the disk copy stays readable
        directories = [
            (parts, child)
            for parts, child in self.walk()
            if child.kind == DIRECTORY and parts != self.subtree
        ]
        for parts, child in reversed(directories):
            self._set_meta(self._disk_path(parts), child.meta, DIRECTORY)

    def finish_top(self, path: Path) -> None:
        """Gives the exported directory, now at ``path``, its mode and times: only after the
        rename, since moving a directory to another parent rewrites its ``..`` entry, which
        needs write permission on it (a ``0555`` directory would refuse, except to root)."""
        node = self.lookup(self.subtree)
        if node is not None and node.kind == DIRECTORY:
            self._set_meta(path, node.meta, DIRECTORY)

    def result(self) -> ExportResult:
        node = self.lookup(self.subtree)
        assert node is not None  # checked by finish()
        return ExportResult(
            source="/" + "/".join(self.subtree),
            kind=node.kind,
            entries=sum(1 for _ in self.walk()),
            bytes_written=self.bytes_written,
            skipped=tuple(self.skipped),
            layer_passes=self.passes,
            setid_dropped=tuple(self._setid_dropped()),
        )
