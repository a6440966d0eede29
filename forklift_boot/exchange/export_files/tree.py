"""The image's filesystem tree as the layers applied so far leave it, and SOURCE in it.

Only the entries under SOURCE are written; the rest of the image is kept in memory as its
directories and symlinks, which is what resolving SOURCE through in-image symlinks needs.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from forklift_boot.cache import CacheReader, Descriptor
from forklift_boot.errors import ForkliftBootError

DIRECTORY = "directory"
FILE = "file"
SYMLINK = "symlink"
CHAR_DEVICE = "character device"
BLOCK_DEVICE = "block device"
FIFO = "fifo"

MAX_SYMLINK_HOPS = 40  # Linux's limit (ELOOP)
# Deeper names are refused: nothing real nests this deep, and shutil.rmtree recurses.
MAX_DEPTH = 256

Parts = tuple[str, ...]


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


@dataclass(frozen=True)
class _Options:
    preserve_owner: bool
    display_root: str  # the destination, for messages ("-" for a tar stream)
    to_tar: bool = False  # device nodes then go from the tree into the tar, not onto the disk
    # A file export is configuration and assets for the host: device nodes and set-user-ID
    # or set-group-ID bits from an image come only when asked for.
    keep_devices: bool = False
    keep_setid: bool = False


class _Tree:
    """What one pass over the layers knows: the tree, the layer being read, what was written;
    and how its paths map to the disk and to messages."""

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

    def _unsafe(self, entry: str, problem: str) -> ForkliftBootError:
        return ForkliftBootError(
            f"couldn't export {self.source} from {self.image}: layer {self._digest} entry "
            f"{entry!r} {problem}; refusing to extract it"
        )

    def _mode(self, meta: _Meta, kind: str) -> int:
        """The mode to give a path: without its set-user-ID and set-group-ID bits unless they
        are kept (a directory's set-group-ID bit only picks its entries' group: it stays)."""
        if kind == DIRECTORY or self.options.keep_setid:
            return meta.mode
        return meta.mode & ~(stat.S_ISUID | stat.S_ISGID)

    def _setid_dropped(self) -> list[str]:
        """The exported paths whose set-user-ID or set-group-ID bits were left out."""
        if self.options.keep_setid:
            return []
        return [
            self._shown(parts)
            for parts, node in self.walk()
            if node.kind not in (DIRECTORY, CHAR_DEVICE, BLOCK_DEVICE)
            and node.meta.mode & (stat.S_ISUID | stat.S_ISGID)
        ]

    def _unsafe_layer(self, problem: str) -> ForkliftBootError:
        return ForkliftBootError(
            f"couldn't export {self.source} from {self.image}: layer {self._digest} {problem}; "
            "refusing to extract it"
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
