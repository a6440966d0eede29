"""Following an index.json entry to every blob it needs: indexes, manifests, configs, layers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from forklift_boot.cache.blobs import DamagedBlobError
from forklift_boot.cache.descriptors import Descriptor
from forklift_boot.cache.media import (
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    NONDISTRIBUTABLE_LAYER_MEDIA_TYPES,
)
from forklift_boot.errors import CacheError

__all__ = [
    "ROLE_BLOB",
    "ROLE_CONFIG",
    "ROLE_INDEX",
    "ROLE_LAYER",
    "ROLE_MANIFEST",
    "BlobSource",
    "BlobWalk",
    "DocumentReader",
    "DocumentStash",
    "ReachedBlob",
    "walk_blobs",
]

ROLE_INDEX = "image index"
ROLE_MANIFEST = "manifest"
ROLE_CONFIG = "config"
ROLE_LAYER = "layer"
ROLE_BLOB = "blob"  # a root of a media type forklift-boot does not look into


class BlobSource(Protocol):
    def has_blob(self, digest: str) -> bool: ...
    def blob_size(self, digest: str) -> int: ...
    def read_json(self, digest: str, *, expected_size: int | None = None) -> Any: ...


class DocumentReader(Protocol):
    def has_blob(self, digest: str) -> bool: ...
    def blob_size(self, digest: str) -> int: ...
    def read_document(
        self, digest: str, *, expected_size: int | None = None
    ) -> tuple[bytes, Any]: ...


class DocumentStash:
    """A cache as walk_blobs sees it, keeping the manifests and indexes the walk reads
    (verified against their digests): their bytes, to copy or push them without a second
    read, and their JSON, to look into them without parsing them again."""

    def __init__(self, reader: DocumentReader) -> None:
        self._reader = reader
        self.documents: dict[str, bytes] = {}
        self.parsed: dict[str, Any] = {}

    def has_blob(self, digest: str) -> bool:
        return self._reader.has_blob(digest)

    def blob_size(self, digest: str) -> int:
        return self._reader.blob_size(digest)

    def read_json(self, digest: str, *, expected_size: int | None = None) -> Any:
        data, document = self._reader.read_document(digest, expected_size=expected_size)
        self.documents[digest] = data
        self.parsed[digest] = document
        return document


@dataclass(frozen=True)
class ReachedBlob:
    descriptor: Descriptor
    role: str


@dataclass
class BlobWalk:
    """What one entry needs, and what is wrong with it.

    Manifests that an image index lists but the cache lacks are platforms that were not
    cached: they are skipped, not missing.
    """

    # Every blob the entry needs, root first, each digest once; present or not.
    reached: list[ReachedBlob] = field(default_factory=list)
    missing: list[ReachedBlob] = field(default_factory=list)
    # digest -> problem, phrased to follow "blob <digest>": "has 3 bytes, expected 5".
    damaged: dict[str, str] = field(default_factory=dict)
    # Digests already proven sound by a verified read (manifests and indexes).
    verified: set[str] = field(default_factory=set)
    manifest_count: int = 0
    is_index_root: bool = False
    # False when a manifest or index could not be read, so `reached` may lack blobs.
    is_complete: bool = True

    @property
    def has_problems(self) -> bool:
        return bool(self.missing or self.damaged)

    def image_problem(self) -> str | None:
        """Why the entry's image can't be loaded from the cache, or None."""
        if self.has_problems:
            return self.describe_problems()
        if self.is_index_root and not self.manifest_count:
            return "none of the platform manifests its image index lists is cached"
        return None

    def describe_problems(self, limit: int = 3) -> str:
        """The first few problems as one phrase, for an error message."""
        lines = [f"blob {r.descriptor.digest} ({r.role}) is missing" for r in self.missing]
        roles = {r.descriptor.digest: r.role for r in self.reached}
        lines += [f"blob {d} ({roles.get(d, ROLE_BLOB)}) {p}" for d, p in self.damaged.items()]
        text = "; ".join(lines[:limit])
        if len(lines) > limit:
            text += f"; and {len(lines) - limit} more problems"
        return text


def walk_blobs(source: BlobSource, root: Descriptor) -> BlobWalk:
    """Follow ``root`` through the blobs the cache has, noting what is missing or damaged."""
    root_role = role_of(root.media_type, ROLE_BLOB)
    walk = BlobWalk(is_index_root=root_role == ROLE_INDEX)
    seen: set[str] = set()

    def visit(descriptor: Descriptor, role: str, *, is_optional: bool) -> None:
        digest = descriptor.digest
        if digest in seen:
            return
        is_document = role in (ROLE_INDEX, ROLE_MANIFEST)
        try:
            is_present = source.has_blob(digest)
        except DamagedBlobError as err:  # e.g. a link where the blob should be
            is_present = False
            walk.damaged[digest] = err.problem
            walk.is_complete = walk.is_complete and not is_document
        except CacheError:
            is_present = False
            walk.damaged[digest] = "has an invalid or unsupported digest"
            walk.is_complete = walk.is_complete and not is_document
        if not is_present and is_optional and digest not in walk.damaged:
            return
        seen.add(digest)
        reached = ReachedBlob(descriptor, role)
        walk.reached.append(reached)
        if not is_present:
            if digest not in walk.damaged:
                walk.missing.append(reached)
            return
        size = source.blob_size(digest)
        if size != descriptor.size:
            walk.damaged[digest] = f"has {size} bytes, expected {descriptor.size}"
            walk.is_complete = walk.is_complete and not is_document
            return
        if not is_document:
            return
        try:
            document = source.read_json(digest, expected_size=descriptor.size)
            children = _children(document, role)
        except DamagedBlobError as err:
            walk.damaged[digest] = err.problem
            walk.is_complete = False
            return
        except CacheError as err:
            walk.damaged[digest] = f"isn't a valid {role} ({err})"
            walk.is_complete = False
            return
        walk.verified.add(digest)
        if role == ROLE_MANIFEST:
            walk.manifest_count += 1
        for child, child_role in children:
            # An index lists every platform; only the cached ones are present. Layers only
            # their origin may serve are left out of a registry copy.
            is_optional = role == ROLE_INDEX or (
                child_role == ROLE_LAYER and child.media_type in NONDISTRIBUTABLE_LAYER_MEDIA_TYPES
            )
            visit(child, child_role, is_optional=is_optional)

    visit(root, root_role, is_optional=False)
    return walk


def role_of(media_type: str, default: str) -> str:
    if media_type in INDEX_MEDIA_TYPES:
        return ROLE_INDEX
    if media_type in MANIFEST_MEDIA_TYPES:
        return ROLE_MANIFEST
    return default


def _children(document: object, role: str) -> list[tuple[Descriptor, str]]:
    """The descriptors a manifest or index points at; CacheError if it is malformed."""
    if not isinstance(document, dict):
        raise CacheError("not a JSON object")
    if role == ROLE_INDEX:
        manifests = document.get("manifests")
        if not isinstance(manifests, list):
            raise CacheError("manifests is missing or not a list")
        children = [Descriptor.from_json(m, f"manifests[{n}]") for n, m in enumerate(manifests)]
        # Children of unknown types (artifacts) are kept if present, but not looked into.
        return [(child, role_of(child.media_type, ROLE_BLOB)) for child in children]
    layers = document.get("layers")
    if not isinstance(layers, list):
        raise CacheError("layers is missing or not a list")
    found = [(Descriptor.from_json(document.get("config"), "config"), ROLE_CONFIG)]
    found += [(Descriptor.from_json(x, f"layers[{n}]"), ROLE_LAYER) for n, x in enumerate(layers)]
    return found
