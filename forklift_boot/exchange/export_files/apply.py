"""Applying one layer's entries to the tree, as Docker's overlay2 driver does.

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
cost little, and only within the exported tree.

Safety (Python's ``tarfile.data_filter`` was the reference, but Debian's Python 3.11.2 lacks it):
an absolute entry name or one with a ``..`` component, an entry under a symlink or file created
earlier in the same layer (extracting it would write through that symlink), a hardlink to an
absolute path, through ``..`` or to anything but an earlier file of the same layer, are refused
with one line naming the image, the layer and the entry.
"""

from __future__ import annotations

import logging
import tarfile
from pathlib import Path

from forklift_boot.archive.layers import open_layer
from forklift_boot.cache import Descriptor
from forklift_boot.errors import ForkliftBootError
from forklift_boot.exchange.export_files.disk import _Disk, _remove_path
from forklift_boot.exchange.export_files.reading import (
    _drain,
    _forget_members,
    _open_tar,
)
from forklift_boot.exchange.export_files.tree import (
    _IMPLICIT_DIR,
    BLOCK_DEVICE,
    CHAR_DEVICE,
    DIRECTORY,
    FILE,
    MAX_DEPTH,
    SYMLINK,
    Parts,
    _kind,
    _Meta,
    _meta,
    _Node,
    _Pending,
)

log = logging.getLogger(__name__)

WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
# AUFS bookkeeping at the top of old layers (.wh..wh.plnk, .wh..wh.aufs); Docker skips them.
AUFS_META_PREFIX = ".wh..wh."


class _Applier(_Disk):
    """Applies a layer's entries, one at a time, to the tree and the disk."""

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
        with open_layer(self.reader, self.image, layer) as stream, _open_tar(stream) as tar:
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
