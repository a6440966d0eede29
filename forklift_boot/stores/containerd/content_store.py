"""containerd's content store directory, read directly: an image's blobs taken into the cache.

Docker's containerd image store and a standalone containerd keep every blob as pulled under
``<root>/io.containerd.content.v1.content/blobs/sha256/<hex>``, written once, renamed into place
after containerd checked it, never changed in place, and unlinked by its garbage collector
(docs/architecture.md, "Docker's stores"). The image's index, manifests and configs are small:
they are read here and checked against their digests. Layers are taken whole by
``cache.adopt.adopt_blob``: a hard link on the same mount, so that the cache costs no extra space
while the engine holds the image and survives the engine removing it. A blob that is not there
(a lazily pulled or collected layer) makes the image fall back to the engine's export.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forklift_boot.archive.oci_layout import ImportedLayout, copied_from_layout
from forklift_boot.cache import (
    INDEX_MEDIA_TYPES,
    MAX_JSON_BLOB_SIZE,
    MEDIA_OCI_INDEX,
    MEDIA_OCI_MANIFEST,
    CacheWriter,
    Descriptor,
)
from forklift_boot.cache.adopt import COPIED, LINKED, PRESENT, REFLINKED, UnusableSource, adopt_blob
from forklift_boot.errors import CacheError
from forklift_boot.images import ByteCounter, CopiedImage, SourceImage
from forklift_boot.platforms import best_match, parse_platform, platform_of

log = logging.getLogger(__name__)

CONTENT_DIR = "io.containerd.content.v1.content"
DEFAULT_ROOT = Path("/var/lib/containerd")
DEFAULT_CONFIG = Path("/etc/containerd/config.toml")


def configured_root(config: Path = DEFAULT_CONFIG) -> Path:
    """containerd's ``root =`` from its configuration, else its default."""
    try:
        document = tomllib.loads(config.read_text())
    except FileNotFoundError:
        return DEFAULT_ROOT
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        log.debug(
            "couldn't read %s (%s); taking containerd's root as %s", config, err, DEFAULT_ROOT
        )
        return DEFAULT_ROOT
    root = document.get("root")
    return Path(root) if isinstance(root, str) and root else DEFAULT_ROOT


def is_content_store(content_dir: Path) -> bool:
    """Whether ``content_dir`` has a ``blobs/sha256`` directory this process can read."""
    blobs = content_dir / "blobs" / "sha256"
    return blobs.is_dir() and os.access(blobs, os.R_OK | os.X_OK)


@dataclass
class Tally:
    """How the blobs of one copy were taken, for the log."""

    counts: dict[str, int] = field(default_factory=dict)

    def add(self, how: str) -> None:
        self.counts[how] = self.counts.get(how, 0) + 1

    def describe(self) -> str:
        order = (LINKED, REFLINKED, COPIED, PRESENT)
        return ", ".join(f"{self.counts[how]} {how}" for how in order if how in self.counts)


class _Missing(Exception):
    """A blob the image needs is not usable in the content store: export the image instead."""


class ContentStore:
    """A content store directory (``<root>/io.containerd.content.v1.content``), read only.

    ``share``: hard-link (or reflink) layers into the cache; otherwise copy them.
    """

    def __init__(self, content_dir: Path, *, share: bool = True) -> None:
        self.content_dir = content_dir
        self.share = share
        self._blobs = content_dir / "blobs" / "sha256"

    def links_into(self, cache_dir: Path) -> bool:
        """Whether layers go into ``cache_dir`` as hard links (one filesystem, ``share`` on):
        then storing an image writes almost nothing, and the free-space check must know."""
        if not self.share:
            return False
        existing = cache_dir.absolute()
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        try:
            return os.stat(self.content_dir).st_dev == os.stat(existing).st_dev
        except OSError:
            return False

    def path(self, digest: str) -> Path:
        algorithm, _, hex_digest = digest.partition(":")
        if algorithm != "sha256" or len(hex_digest) != 64 or not _is_hex(hex_digest):
            raise _Missing(f"{digest} is not a sha256 digest")
        return self._blobs / hex_digest

    def copy_images(
        self,
        writer: CacheWriter,
        images: Sequence[tuple[SourceImage, Descriptor, str, str]],
        *,
        all_platforms: bool,
        on_bytes: ByteCounter,
    ) -> dict[str, CopiedImage]:
        """Copies each (image, its manifest or index, its name, its platform) whose blobs are all
        here, keyed by canonical name and by image ID; spellings of one root are copied once.
        The images left out are for the caller's export stream."""
        copied: dict[str, CopiedImage] = {}
        credited: set[str] = set()
        by_root: dict[str, CopiedImage | None] = {}
        for image, root, name, platform in images:
            if root.digest not in by_root:
                by_root[root.digest] = self.copy_image(
                    writer,
                    root,
                    platform=platform,
                    all_platforms=all_platforms,
                    name=name,
                    credited=credited,
                    on_bytes=on_bytes,
                )
            result = by_root[root.digest]
            if result is not None:
                copied[image.wanted.canonical] = result
                copied.setdefault(image.image_id, result)
        return copied

    def copy_image(
        self,
        writer: CacheWriter,
        root: Descriptor,
        *,
        platform: str,
        all_platforms: bool,
        name: str,
        credited: set[str],
        on_bytes: ByteCounter,
    ) -> CopiedImage | None:
        """Copies the image whose manifest or index is ``root`` (size 0: unknown) into the
        cache: for an index, the ``platform`` manifest, or with ``all_platforms`` every one whose
        blobs are all here. None, with the reason logged, when a blob it needs is not here."""
        try:
            return self._copy_image(
                writer,
                root,
                platform=platform,
                all_platforms=all_platforms,
                name=name,
                credited=credited,
                on_bytes=on_bytes,
            )
        except _Missing as err:
            log.info(
                "%s: %s in containerd's content store %s; exporting it instead",
                name,
                err,
                self.content_dir,
            )
            return None

    def _copy_image(
        self,
        writer: CacheWriter,
        root: Descriptor,
        *,
        platform: str,
        all_platforms: bool,
        name: str,
        credited: set[str],
        on_bytes: ByteCounter,
    ) -> CopiedImage:
        root_data, root_document = self._read_document(root.digest, root.size or None)
        media_type = _media_type(root, root_document)
        documents: dict[str, tuple[str, bytes]] = {root.digest: (media_type, root_data)}
        layers: dict[str, Descriptor] = {}
        if media_type in INDEX_MEDIA_TYPES:
            children = _children(root_document, name)
            try:
                chosen = best_match(
                    parse_platform(platform), [(platform_of(c.platform), c) for c in children]
                )
            except ValueError as err:
                raise _Missing(f"no {platform} manifest ({err})") from err
            if chosen is None:
                raise _Missing(f"the index of {name} has no {platform} manifest")
            self._add_manifest(chosen, documents, layers, writer.has_blob)
            if all_platforms:
                for child in children:
                    if child.digest not in documents:
                        try:
                            child_documents: dict[str, tuple[str, bytes]] = {}
                            child_layers: dict[str, Descriptor] = {}
                            self._add_manifest(
                                child, child_documents, child_layers, writer.has_blob
                            )
                        except _Missing:
                            continue  # a platform containerd did not pull
                        documents.update(child_documents)
                        layers.update(child_layers)
        else:
            self._add_manifest(
                Descriptor(media_type, root.digest, len(root_data)),
                documents,
                layers,
                writer.has_blob,
            )
        new_blobs: dict[str, int] = {}
        tally = Tally()
        # Layers first, the documents that name them after, as a registry push orders them.
        for layer in sorted(layers.values(), key=lambda d: d.digest):
            try:
                adopted = adopt_blob(
                    writer, self.path(layer.digest), layer.digest, layer.size, share=self.share
                )
            except UnusableSource as err:
                raise _Missing(str(err)) from err
            tally.add(adopted.how)
            if adopted.blob.is_new:
                new_blobs[layer.digest] = layer.size
                on_bytes(layer.size)
        for digest, (_, data) in documents.items():
            if writer.has_blob(digest):
                continue  # e.g. the config of an image cached under another name
            with writer.blob_writer() as blob:
                blob.write(data)
                stored = blob.commit(expected_digest=digest, expected_size=len(data))
            if stored.is_new:
                new_blobs[digest] = stored.size
                on_bytes(stored.size)
        log.debug("%s from %s: layers %s", name, self.content_dir, tally.describe() or "none")
        layout = ImportedLayout(names={}, new_blobs=new_blobs)
        descriptor = Descriptor(media_type, root.digest, len(root_data))
        return copied_from_layout(
            writer, layout, descriptor, platform=platform, name=name, credited=credited
        )

    def _add_manifest(
        self,
        manifest: Descriptor,
        documents: dict[str, tuple[str, bytes]],
        layers: dict[str, Descriptor],
        cached: Callable[[str], bool],
    ) -> None:
        """The manifest and its config go into ``documents``, its layers into ``layers``;
        _Missing if any of them is not here (layers the cache has need not be)."""
        if manifest.digest not in documents:
            data, document = self._read_document(manifest.digest, manifest.size or None)
            documents[manifest.digest] = (manifest.media_type, data)
        else:
            data = documents[manifest.digest][1]
            document = json.loads(data)
        self._add_layers(document, layers, manifest.digest, cached)
        try:
            config = Descriptor.from_json(document.get("config"), f"config of {manifest.digest}")
        except (CacheError, AttributeError) as err:
            raise _Missing(f"{manifest.digest} is no image manifest") from err
        config_data, _ = self._read_document(config.digest, config.size)
        documents[config.digest] = (config.media_type, config_data)

    def _add_layers(
        self,
        document: Any,
        layers: dict[str, Descriptor],
        name: str,
        cached: Callable[[str], bool],
    ) -> None:
        try:
            found = [
                Descriptor.from_json(layer, f"layer of {name}") for layer in document["layers"]
            ]
        except (CacheError, KeyError, TypeError) as err:
            raise _Missing(f"{name} is no image manifest") from err
        for layer in found:
            layers[layer.digest] = layer
            if cached(layer.digest):
                continue  # known by digest: never read, linked or copied again
            try:
                info = self.path(layer.digest).lstat()
            except OSError as err:
                raise _Missing(f"layer {layer.digest} is {_absent(err)}") from err
            if not stat.S_ISREG(info.st_mode) or info.st_size != layer.size:
                raise _Missing(f"layer {layer.digest} is not a file of {layer.size} bytes")

    def _read_document(self, digest: str, size: int | None) -> tuple[bytes, Any]:
        """A manifest, index or config, its digest (and size, when known) checked."""
        path = self.path(digest)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as err:
            raise _Missing(f"{digest} is {_absent(err)}") from err
        with os.fdopen(fd, "rb") as file:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise _Missing(f"{digest} is not a regular file")
            data = file.read(MAX_JSON_BLOB_SIZE + 1)
        if len(data) > MAX_JSON_BLOB_SIZE or (size is not None and len(data) != size):
            raise _Missing(f"{digest} has {len(data)} bytes, expected {size}")
        if f"sha256:{hashlib.sha256(data).hexdigest()}" != digest:
            raise _Missing(f"{digest} does not match its digest")
        try:
            return data, json.loads(data)
        except ValueError as err:
            raise _Missing(f"{digest} is not JSON") from err


def _media_type(root: Descriptor, document: Any) -> str:
    """The root's media type: the record's, else the document's own, else by its shape."""
    if root.media_type:
        return root.media_type
    if isinstance(document, dict):
        declared = document.get("mediaType")
        if isinstance(declared, str) and declared:
            return declared
        if isinstance(document.get("manifests"), list):
            return MEDIA_OCI_INDEX
    return MEDIA_OCI_MANIFEST


def _children(document: Any, name: str) -> list[Descriptor]:
    try:
        return [Descriptor.from_json(child, f"index of {name}") for child in document["manifests"]]
    except (CacheError, KeyError, TypeError) as err:
        raise _Missing(f"the index of {name} is malformed") from err


def _absent(err: OSError) -> str:
    return "not there" if isinstance(err, FileNotFoundError) else (err.strerror or str(err))


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def content_store_for(
    root: Path | None, candidates: Sequence[Path], *, share: bool
) -> ContentStore | None:
    """The content store of ``--containerd-root`` (which must hold one), else of the first
    candidate content directory that this process can read; None when there is none."""
    if root is not None:
        return ContentStore(root / CONTENT_DIR, share=share)
    for content_dir in candidates:
        if is_content_store(content_dir):
            return ContentStore(content_dir, share=share)
    log.debug(
        "no readable containerd content store in %s", ", ".join(map(str, candidates)) or "none"
    )
    return None
