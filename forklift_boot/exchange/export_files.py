"""Files out of a cached image: its layers applied in order, as a container would see them.

This is what Forklift's ``oci-image`` file exports need (FORKLIFT.md §4): one file or directory
tree of an image's flattened filesystem, placed at a destination path.

How layers are applied, and why bottom-up: each layer tar is read once, in a single streamed
pass, from the oldest layer to the newest, and applied to a private directory beside the
destination; a whiteout deletes what lower layers put there. This is what Docker's overlay2
driver does (a layer is unpacked on its own, then stacked over the lower ones), so the result
follows the same rules without having to look ahead: a hardlink may only name an earlier file of
the same layer, a directory that a layer creates without an entry of its own (a parent of one of
its entries) is ``0755`` root-owned and hides the attributes of the lower one, a directory over
a lower non-directory replaces it, and an opaque directory (``.wh..wh..opq``) hides everything
that lower layers had under it, whatever the order of the entries. Reading top-down would avoid
writing files that a later layer replaces, but a hardlink could then name a file not yet seen
and every decision would need the whole image's listing first; files replaced by later layers
cost little, and only within the exported tree. Only the entries under SOURCE are written; the
rest of the image is kept in memory as its directories and symlinks, which is what resolving
SOURCE through in-image symlinks needs.

SOURCE's symlinks are resolved inside the image root, in the image's final state, which is only
known after the last layer: the first pass extracts SOURCE as written, and only when a symlink
in its path leads elsewhere are the layers read a second time for the real path.

Safety (Python's ``tarfile.data_filter`` was the reference, but Debian's Python 3.11.2 lacks it):
an absolute entry name or one with a ``..`` component, an entry under a symlink or file created
earlier in the same layer (extracting it would write through that symlink), a hardlink to an
absolute path, through ``..`` or to anything but an earlier file of the same layer, are refused
with one line naming the image, the layer and the entry. Nothing is ever followed on the host:
every path written is checked against the in-memory tree, files are created with
``O_EXCL|O_NOFOLLOW`` after removing what was there, hardlinks are made with
``follow_symlinks=False``, and symlinks are stored exactly as the image has them (an absolute
target means the image's root, so it is kept as is). The tree is built in a temporary directory
beside the destination and renamed into place at the end, so an interrupted export leaves
nothing at the destination.
"""

from __future__ import annotations

import errno
import gzip
import io
import logging
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from forklift_boot.archive.streams import Prefixed
from forklift_boot.cache import BUFFER_SIZE, CacheReader, Descriptor
from forklift_boot.errors import CacheError, ForkliftBootError

__all__ = ["ExportResult", "export_image_path", "write_image_path_tar"]

log = logging.getLogger(__name__)

DIRECTORY = "directory"
FILE = "file"
SYMLINK = "symlink"
CHAR_DEVICE = "character device"
BLOCK_DEVICE = "block device"
FIFO = "fifo"

WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
# AUFS bookkeeping at the top of old layers (.wh..wh.plnk, .wh..wh.aufs); Docker skips them.
AUFS_META_PREFIX = ".wh..wh."
MAX_SYMLINK_HOPS = 40  # Linux's limit (ELOOP)
# Deeper names are refused: nothing real nests this deep, and shutil.rmtree recurses.
MAX_DEPTH = 256
# tarfile's stream mode copies what is left of its buffer on every read: with 1 MiB a layer of
# 20,000 small files read 2-3x slower than with 10-256 KiB (measured).
TAR_BUFFER_SIZE = 64 << 10

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_REWRITE_FLAGS = os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_ERRORS = (OSError, EOFError, zlib.error, tarfile.TarError)

Parts = tuple[str, ...]
_Stream = IO[bytes] | io.BufferedIOBase  # a layer's decompressed tar


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote."""

    source: str  # the path in the image that was exported, symlinks resolved ("/" = root)
    kind: str  # DIRECTORY, FILE, SYMLINK, ...
    entries: int  # files, directories, links and nodes in the exported tree
    bytes_written: int  # file bytes written, including files that a later layer replaced
    skipped: tuple[str, ...]  # device nodes left out (only root may create them)
    layer_passes: int  # 1, or 2 when a symlink in SOURCE's path led elsewhere


@dataclass(slots=True)
class _Meta:
    """A path's attributes; hardlinked names share one (changing it changes them all)."""

    mode: int
    uid: int
    gid: int
    mtime_ns: int | None  # None: whenever it was made (a directory Docker makes implicitly)
    devmajor: int = 0
    devminor: int = 0


# What Docker's layer unpacker gives a parent directory that has no entry of its own. Shared,
# never changed: only hardlinked files' attributes change in place.
_IMPLICIT_DIR = _Meta(0o755, 0, 0, None)
_NO_CHILDREN: dict[str, _Node] = {}


class _Node:
    """One path of the image as applied so far. Outside the exported tree only directories,
    symlinks and SOURCE's ancestors are kept (what resolving SOURCE needs); inside it,
    everything, mirroring the disk."""

    __slots__ = ("children", "kind", "layer", "link", "meta", "on_disk")

    def __init__(self, kind: str, layer: int, meta: _Meta, link: str = "") -> None:
        self.kind = kind
        self.layer = layer  # the last layer whose tar has this path (as an entry or a parent)
        self.meta = meta
        self.link = link  # a symlink's target
        self.children: dict[str, _Node] = {} if kind == DIRECTORY else _NO_CHILDREN
        self.on_disk = False


@dataclass
class _Pending:
    """Names inside the tree that are hardlinks to one file outside it, in the current layer."""

    entry: str  # the first such hardlink entry, for messages
    linkname: str
    before: int  # the link's position in the layer: its target comes earlier
    nodes: list[tuple[Parts, _Node]]
    meta: _Meta  # the copy's attributes, shared by its names; set once the layer is read again


def export_image_path(
    reader: CacheReader,
    image: str,
    layers: Sequence[Descriptor],
    source: str,
    destination: Path,
    *,
    preserve_owner: bool | None = None,
    create_devices: bool | None = None,
) -> ExportResult:
    """Writes SOURCE of the image whose layers are given (oldest first) to ``destination``.

    A file (or symlink, fifo, device) becomes the file ``destination``; a directory becomes the
    directory ``destination`` with its contents. ``destination``'s parent is created; an
    existing file is replaced by a file and an empty directory by a directory, anything else is
    refused. Ownership is kept, and device nodes created, when running as root (as tar does);
    otherwise device nodes are left out and listed in the result.
    """
    is_root = os.geteuid() == 0
    options = _Options(
        preserve_owner=is_root if preserve_owner is None else preserve_owner,
        create_devices=is_root if create_devices is None else create_devices,
        display_root=str(destination),
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
) -> ExportResult:
    """Writes SOURCE of the image as a tar stream, as ``docker cp CONTAINER:SOURCE -`` would:
    entries named from SOURCE's last component (no prefix for the image root), owners, modes
    and device nodes as in the image whoever runs it. The tree is built in a temporary
    directory under ``temp_parent`` ($TMPDIR by default) first."""
    options = _Options(preserve_owner=False, create_devices=False, display_root="-", to_tar=True)
    temp_dir = _make_temp_dir(None, image, source, parent=temp_parent)
    try:
        extraction = _extract(
            reader, image, layers, source=source, work_root=temp_dir / "export", options=options
        )
        extraction.write_tar(out)
    finally:
        _remove_tree(temp_dir)
    return extraction.result()


@dataclass(frozen=True)
class _Options:
    preserve_owner: bool
    create_devices: bool
    display_root: str  # the destination, for messages ("-" for a tar stream)
    to_tar: bool = False  # device nodes then go from the tree into the tar, not onto the disk


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


class _Extraction:
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
        self.reader = reader
        self.image = image
        self.layers = layers
        self.source = source
        self.subtree = subtree
        self.work_root = work_root
        self.options = options
        self.root = _Node(DIRECTORY, -1, _IMPLICIT_DIR)
        self.passes = 1
        self.bytes_written = 0
        self.skipped: list[str] = []
        self._layer = -1
        self._digest = ""
        # Per layer: hardlinks outside the tree (name -> the file it names, chains followed)
        # and the copies that hardlinks from inside to outside need.
        self._links: dict[Parts, Parts] = {}
        self._pending: dict[Parts, _Pending] = {}
        # Per layer: the last hardlink entry naming each file outside the tree (see _relabel).
        self._link_meta: dict[Parts, _Meta] = {}
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
            with self._reading(layer):
                with self._open_layer(layer) as stream:
                    with _open_tar(stream) as tar:
                        ordinal = 0
                        while (member := tar.next()) is not None:
                            self._apply(member, tar, ordinal)
                            _forget_members(tar)
                            ordinal += 1
                    _drain(stream)  # reading to the end checks the blob's digest
                if self._pending:
                    self._copy_pending(layer)

    def resolve(self, parts: Parts, follow_last: bool) -> Parts:
        """``parts`` with every symlink before the last component followed, inside the image
        root (an absolute target starts again at the root; ``..`` stops at the root)."""
        todo = list(reversed(parts))
        done: list[str] = []
        nodes = [self.root]
        hops = 0
        while todo:
            name = todo.pop()
            if name == "..":
                if done:
                    done.pop()
                    nodes.pop()
                continue
            child = nodes[-1].children.get(name)
            if child is None or (todo and child.kind not in (DIRECTORY, SYMLINK)):
                if not todo:
                    done.append(name)  # the last one: present as a file, or absent
                    return tuple(done)
                where = "/" + "/".join((*done, name))
                problem = "doesn't exist" if child is None else f"is a {child.kind}"
                raise ForkliftBootError(
                    f"couldn't export {self.source} from {self.image}: {where} {problem} "
                    "in the image"
                )
            if child.kind == SYMLINK and (todo or follow_last):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise ForkliftBootError(
                        f"couldn't export {self.source} from {self.image}: too many levels of "
                        "symbolic links in the image"
                    )
                if child.link.startswith("/"):
                    done.clear()
                    del nodes[1:]
                todo.extend(reversed([p for p in child.link.split("/") if p not in ("", ".")]))
                continue
            done.append(name)
            nodes.append(child)
        return tuple(done)

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
        )

    # --- the tree -------------------------------------------------------------------------

    def lookup(self, parts: Parts) -> _Node | None:
        node = self.root
        for name in parts:
            child = node.children.get(name)
            if child is None:
                return None
            node = child
        return node

    def walk(self) -> Iterator[tuple[Parts, _Node]]:
        """The exported tree, parents before children, names sorted."""
        top = self.lookup(self.subtree)
        if top is None:
            return
        stack = [(self.subtree, top)]
        while stack:
            parts, node = stack.pop()
            yield parts, node
            stack.extend(((*parts, n), c) for n, c in sorted(node.children.items(), reverse=True))

    def _is_inside(self, parts: Parts) -> bool:
        size = len(self.subtree)
        return len(parts) >= size and parts[:size] == self.subtree

    def _is_ancestor(self, parts: Parts) -> bool:
        return len(parts) < len(self.subtree) and self.subtree[: len(parts)] == parts

    def _disk_path(self, parts: Parts) -> Path:
        return self.work_root.joinpath(*parts[len(self.subtree) :])

    def _shown(self, parts: Parts) -> str:
        """A path inside the tree as the user will find it."""
        rel = parts[len(self.subtree) :]
        root = self.options.display_root
        if root == "-":
            return "/" + "/".join(parts)
        return os.path.join(root, *rel) if rel else root

    # --- applying one layer entry ---------------------------------------------------------

    def _apply(self, member: tarfile.TarInfo, tar: tarfile.TarFile, ordinal: int) -> None:
        parts = self._entry_parts(member.name, member.name)
        if not parts:
            if not member.isdir():
                raise self._unsafe(member.name, "names the image root but isn't a directory")
            return  # Docker's unpacker skips it too: the root keeps the layer's own attributes
        if parts[0].startswith(AUFS_META_PREFIX) and parts != (OPAQUE_WHITEOUT,):
            log.debug("skipping AUFS metadata %s in layer %s", member.name, self._digest)
            return
        if parts[-1].startswith(WHITEOUT_PREFIX):
            self._apply_whiteout(parts, member)
        elif member.islnk():
            self._apply_hardlink(parts, member, ordinal)
        else:
            self._apply_node(parts, member, tar)

    def _entry_parts(self, name: str, entry: str) -> Parts:
        if name.startswith("/"):
            raise self._unsafe(entry, f"names an absolute path {name!r}")
        parts = tuple(part for part in name.split("/") if part not in ("", "."))
        if ".." in parts:
            raise self._unsafe(entry, f"has a '..' component in {name!r}")
        if len(parts) > MAX_DEPTH:
            raise self._unsafe(entry, f"is nested more than {MAX_DEPTH} directories deep")
        return parts

    def _apply_node(self, parts: Parts, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        kind = _kind(member)
        if kind is None:
            raise self._unsafe(member.name, f"has an unknown tar type {member.type!r}")
        meta = _meta(member)
        parent = self._ensure_parent(parts, member.name)
        name = parts[-1]
        existing = parent.children.get(name)
        if existing is not None:
            if existing.kind == DIRECTORY and kind == DIRECTORY:
                # Directories merge: the lower one's entries stay, the upper's attributes win.
                existing.layer = self._layer
                existing.meta = meta
                return
            self._remove(parent, name, parts)
        self._links.pop(parts, None)
        link = member.linkname if kind == SYMLINK else ""
        if not self._is_inside(parts):
            if kind in (DIRECTORY, SYMLINK) or self._is_ancestor(parts):
                parent.children[name] = _Node(kind, self._layer, _IMPLICIT_DIR, link)
            return
        node = _Node(kind, self._layer, meta, link)
        parent.children[name] = node
        self._create(parts, node, member, tar)

    def _ensure_parent(self, parts: Parts, entry: str) -> _Node:
        """The directory that will hold ``parts``, made as Docker's unpacker makes a parent
        that the layer doesn't list: ``0755``, root's, over whatever lower layers had there."""
        node = self.root
        for depth in range(1, len(parts)):
            name = parts[depth - 1]
            child = node.children.get(name)
            if child is not None and child.kind == DIRECTORY:
                if child.layer != self._layer:
                    child.layer = self._layer
                    child.meta = _IMPLICIT_DIR
                node = child
                continue
            prefix = parts[:depth]
            if child is not None:
                if child.layer == self._layer:
                    # Extracting it would write through that symlink (or fail on that file).
                    what = f"a {child.kind}"
                    if child.kind == SYMLINK:
                        what += f" to {child.link!r}"
                    raise self._unsafe(
                        entry, f"is under /{'/'.join(prefix)}, {what} in the same layer"
                    )
                self._remove(node, name, prefix)
            child = _Node(DIRECTORY, self._layer, _IMPLICIT_DIR)
            node.children[name] = child
            if self._is_inside(prefix):
                self._mkdir(self._disk_path(prefix))
                child.on_disk = True
            node = child
        return node

    def _remove(self, parent: _Node, name: str, parts: Parts) -> None:
        """Drops ``parts`` from the tree and from the disk (all of the tree, for an ancestor)."""
        del parent.children[name]
        if self._is_inside(parts):
            _remove_path(self._disk_path(parts), self.write_error)
        elif self._is_ancestor(parts):
            _remove_path(self.work_root, self.write_error)

    def _apply_whiteout(self, parts: Parts, member: tarfile.TarInfo) -> None:
        parent = self._ensure_parent(parts, member.name)
        if parts[-1] == OPAQUE_WHITEOUT:
            self._hide_lower(parent, parts[:-1])
            return
        if parts[-1].startswith(AUFS_META_PREFIX):
            log.debug("skipping AUFS metadata %s in layer %s", member.name, self._digest)
            return
        target = parts[-1][len(WHITEOUT_PREFIX) :]
        if target in ("", ".", ".."):
            raise self._unsafe(member.name, "is a whiteout of no name")
        node = parent.children.get(target)
        # A whiteout hides lower layers only (image-spec, layer.md).
        if node is not None and node.layer != self._layer:
            self._remove(parent, target, (*parts[:-1], target))

    def _hide_lower(self, directory: _Node, parts: Parts) -> None:
        """An opaque directory: whatever lower layers put under it goes, this layer's stays."""
        stack = [(directory, parts)]
        while stack:
            node, where = stack.pop()
            for name, child in list(node.children.items()):
                if child.layer != self._layer:
                    self._remove(node, name, (*where, name))
                elif child.kind == DIRECTORY:
                    stack.append((child, (*where, name)))

    def _apply_hardlink(self, parts: Parts, member: tarfile.TarInfo, ordinal: int) -> None:
        if member.linkname.startswith("/"):
            raise self._unsafe(
                member.name, f"is a hardlink to an absolute path {member.linkname!r}"
            )
        target = self._entry_parts(member.linkname, member.name)
        if target == parts:
            raise self._unsafe(member.name, "is a hardlink to itself")
        parent = self._ensure_parent(parts, member.name)
        name = parts[-1]
        if name in parent.children:
            self._remove(parent, name, parts)
        if not self._is_inside(target):
            target = self._links.get(target, target)  # a hardlink names the first file
        if not self._is_inside(parts):
            self._links[parts] = target
            if self._is_ancestor(parts):  # SOURCE is under a file: say so, not "missing"
                parent.children[name] = _Node(FILE, self._layer, _IMPLICIT_DIR)
        elif self._is_inside(target):
            self._link_inside(parts, parent, target, member)
        else:
            self._link_outside(parts, parent, target, member, ordinal)
        self._relabel(target, member)

    def _relabel(self, target: Parts, member: tarfile.TarInfo) -> None:
        """Docker's unpacker gives the file a hardlink names the link entry's owner (and, unless
        it is a symlink, mode and time): the last entry of the layer for that file wins. Real
        layers repeat the file's own attributes in its hardlinks; crafted ones may not."""
        header = _meta(member)
        node = self.lookup(target) if self._is_inside(target) else None
        placeholder = next(
            (key for key, p in self._pending.items() if node is not None and node.meta is p.meta),
            None,
        )
        if node is None or placeholder is not None:
            # A file outside the tree: applied once its copy is made (_copy_pending).
            self._link_meta[placeholder or target] = header
            return
        if node.layer != self._layer or node.kind == DIRECTORY:
            return  # a link from outside the tree to nothing of this layer: nothing to label
        node.meta.uid, node.meta.gid = header.uid, header.gid
        if node.kind != SYMLINK:
            node.meta.mode, node.meta.mtime_ns = header.mode, header.mtime_ns
        if node.on_disk:
            self._set_meta(self._disk_path(target), node.meta, node.kind)

    def _link_inside(
        self, parts: Parts, parent: _Node, target: Parts, member: tarfile.TarInfo
    ) -> None:
        node = self.lookup(target)
        if node is None or node.layer != self._layer or node.kind == DIRECTORY:
            raise self._unsafe(
                member.name,
                f"is a hardlink to {member.linkname!r}, which isn't a file earlier in the same "
                "layer",
            )
        link = _Node(node.kind, self._layer, node.meta, node.link)
        parent.children[parts[-1]] = link
        for pending in self._pending.values():
            if node.meta is pending.meta:  # a copy from outside, still to be filled
                pending.nodes.append((parts, link))
        if node.on_disk:
            self._hardlink(self._disk_path(target), self._disk_path(parts))
            link.on_disk = True
        elif node.kind in (CHAR_DEVICE, BLOCK_DEVICE) and not self.options.to_tar:
            self.skipped.append(self._shown(parts))

    def _link_outside(
        self, parts: Parts, parent: _Node, target: Parts, member: tarfile.TarInfo, ordinal: int
    ) -> None:
        """A hardlink to a file outside the exported tree becomes a copy of it; the layer is
        read again for its content (``_copy_pending``). Several such names stay one file."""
        pending = self._pending.get(target)
        live = self._live_path(pending) if pending is not None else None
        path = self._disk_path(parts)
        if pending is not None and live is not None:
            self._hardlink(live, path)
        else:
            self._create_file(path, None, None)
            pending = _Pending(member.name, member.linkname, ordinal, [], _Meta(0o600, 0, 0, None))
            self._pending[target] = pending
        node = _Node(FILE, self._layer, pending.meta)
        parent.children[parts[-1]] = node
        node.on_disk = True
        pending.nodes.append((parts, node))

    def _live_path(self, pending: _Pending) -> Path | None:
        for parts, node in pending.nodes:
            if self.lookup(parts) is node:
                return self._disk_path(parts)
        return None

    def _copy_pending(self, layer: Descriptor) -> None:
        found: dict[Parts, _Meta | None] = {}
        with self._open_layer(layer) as stream, _open_tar(stream) as tar:
            ordinal = 0
            while (member := tar.next()) is not None:
                parts = tuple(p for p in member.name.split("/") if p not in ("", "."))
                pending = self._pending.get(parts)
                if pending is not None and ordinal < pending.before:
                    # The last entry of that name before the link is the file it names.
                    if not member.isreg():
                        found[parts] = None
                    else:
                        path = self._live_path(pending)
                        if path is not None:
                            self._copy_into(path, tar, member)
                        found[parts] = _meta(member)
                _forget_members(tar)
                ordinal += 1
            _drain(stream)
        for target, pending in self._pending.items():
            if target not in found:
                raise self._unsafe(
                    pending.entry,
                    f"is a hardlink to {pending.linkname!r}, which isn't a file earlier in the "
                    "same layer",
                )
            meta = found[target]
            if meta is None:
                raise ForkliftBootError(
                    f"couldn't export {self.source} from {self.image}: layer {self._digest} "
                    f"entry {pending.entry!r} is a hardlink to {pending.linkname!r}, outside "
                    "the exported tree and not a regular file, which can't be copied; export a "
                    "directory that holds both"
                )
            # Its attributes: the last hardlink entry's, as Docker applies them.
            final = self._link_meta.get(target, meta)
            pending.meta.mode, pending.meta.uid, pending.meta.gid = final.mode, final.uid, final.gid
            pending.meta.mtime_ns = final.mtime_ns
            path = self._live_path(pending)
            if path is not None:
                self._set_meta(path, pending.meta, FILE)

    # --- the disk -------------------------------------------------------------------------

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

    # --- reading layers -------------------------------------------------------------------

    @contextmanager
    def _reading(self, layer: Descriptor) -> Iterator[None]:
        try:
            yield
        except CacheError:
            raise
        except _READ_ERRORS as err:
            reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
            raise CacheError(
                f"couldn't read layer {layer.digest} of {self.image} from the image cache: "
                f"{reason or type(err).__name__}; run `forklift-boot cache verify`"
            ) from err

    @contextmanager
    def _open_layer(self, layer: Descriptor) -> Iterator[_Stream]:
        """The layer's tar stream, decompressed by what its first bytes say (gzip, zstd or
        none), as Docker does; media types are not always right."""
        blob = self.reader.open_blob(layer.digest, expected_size=layer.size)
        try:
            head = blob.read(4)
            raw = io.BufferedReader(Prefixed(head, blob), buffer_size=BUFFER_SIZE)
            if head.startswith(_GZIP_MAGIC):
                with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                    yield stream
            elif head == _ZSTD_MAGIC:
                with _zstd_decompressed(raw, self.image, layer.digest) as stream:
                    yield stream
            else:
                yield raw
        finally:
            blob.close()

    # --- output ---------------------------------------------------------------------------

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
        info.mode = meta.mode
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
            info.type = tarfile.CHRTYPE if node.kind == CHAR_DEVICE else tarfile.BLKTYPE
            info.devmajor, info.devminor = meta.devmajor, meta.devminor
        else:
            assert status is not None
            info.size = status.st_size
            with path.open("rb") as file:
                tar.addfile(info, file)
            return
        tar.addfile(info)

    # --- errors ---------------------------------------------------------------------------

    def _unsafe(self, entry: str, problem: str) -> ForkliftBootError:
        return ForkliftBootError(
            f"couldn't export {self.source} from {self.image}: layer {self._digest} entry "
            f"{entry!r} {problem}; refusing to extract it"
        )

    def write_error(self, path: Path, err: OSError) -> ForkliftBootError:
        return ForkliftBootError(
            f"couldn't export {self.source} from {self.image}: couldn't write under "
            f"{self.options.display_root} ({path.name}): {err.strerror or err}"
        )


def _kind(member: tarfile.TarInfo) -> str | None:
    if member.isreg():
        return FILE
    if member.isdir():
        return DIRECTORY
    if member.issym():
        return SYMLINK
    if member.ischr():
        return CHAR_DEVICE
    if member.isblk():
        return BLOCK_DEVICE
    if member.isfifo():
        return FIFO
    return None


def _meta(member: tarfile.TarInfo) -> _Meta:
    return _Meta(
        member.mode & 0o7777,
        member.uid,
        member.gid,
        round(member.mtime * 1_000_000_000),
        member.devmajor,
        member.devminor,
    )


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


# --- the destination --------------------------------------------------------------------


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


def _rename_into_place(extraction: _Extraction, destination: Path) -> None:
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
