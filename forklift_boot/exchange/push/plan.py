"""What a cached image is to `cache push`: its manifests and blobs, and where it goes."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from forklift_boot.cache import (
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    CachedImage,
    CacheReader,
    Descriptor,
)
from forklift_boot.cache.walk import ROLE_CONFIG, ROLE_LAYER, DocumentStash, walk_blobs
from forklift_boot.errors import CacheError, ImageRefError
from forklift_boot.images import Wanted
from forklift_boot.refs import ImageRef, parse_image_ref
from forklift_boot.stores.registry.targets import PushTarget

__all__ = ["CachedDocument", "PushPlan", "cached_as_wanted", "plan_push"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CachedDocument:
    """A manifest or index exactly as cached."""

    descriptor: Descriptor
    data: bytes

    @property
    def digest(self) -> str:
        return self.descriptor.digest

    @property
    def is_index(self) -> bool:
        return self.descriptor.media_type in INDEX_MEDIA_TYPES


@dataclass(frozen=True)
class PushPlan:
    """One cache entry and where it goes."""

    image: CachedImage
    ref: ImageRef  # its canonical name, parsed
    repository: str  # on the target registry
    root: CachedDocument  # what the entry points at
    children: tuple[CachedDocument, ...]  # the cached platform manifests of an index root
    missing_children: tuple[Descriptor, ...]  # those the index lists and the cache lacks
    blobs: tuple[Descriptor, ...]  # configs and layers, each once

    @property
    def size(self) -> int:
        return sum(blob.size for blob in self.blobs)

    def reduced_index(self) -> bytes | None:
        """The root index with only the manifests the cache holds, for a registry that
        refuses the whole one; None when nothing is missing or nothing is left."""
        if not (self.root.is_index and self.missing_children and self.children):
            return None
        document = json.loads(self.root.data)
        kept = {child.digest for child in self.children}
        document["manifests"] = [m for m in document["manifests"] if m.get("digest") in kept]
        return json.dumps(document, indent=2).encode()


def plan_push(reader: CacheReader, image: CachedImage, target: PushTarget) -> PushPlan:
    """What a cached image consists of, from one walk through its blobs; CacheError if part of
    it is missing or damaged."""
    try:
        ref = parse_image_ref(image.canonical)
    except ImageRefError as err:
        raise CacheError(
            f"couldn't push {image.canonical}: its cache entry's name is {err}"
        ) from err
    stash = DocumentStash(reader)
    walk = walk_blobs(stash, image.descriptor)
    problem = walk.image_problem()
    if problem is not None:
        raise CacheError(
            f"couldn't read {image.canonical} from the image cache {reader.cache_dir}: {problem}"
        )
    descriptor = image.descriptor
    if descriptor.digest not in stash.documents:
        raise CacheError(
            f"couldn't push {image.canonical}: its cache entry is a {descriptor.media_type}, not "
            "an image manifest or index"
        )
    root = CachedDocument(descriptor, stash.documents[descriptor.digest])
    children: list[CachedDocument] = []
    missing: list[Descriptor] = []
    if root.is_index:
        # The walk checked the index; a platform it lacks was skipped, not read.
        listed = stash.parsed[root.digest]["manifests"]
        for number, item in enumerate(listed):
            child = Descriptor.from_json(item, f"manifests[{number}]")
            data = stash.documents.get(child.digest)
            if child.media_type in MANIFEST_MEDIA_TYPES and data is not None:
                children.append(CachedDocument(child, data))
            else:
                missing.append(child)
    # Configs and layers, each once; a non-distributable layer the cache lacks was left out:
    # its own URLs serve it, never a registry.
    blobs = [r.descriptor for r in walk.reached if r.role in (ROLE_CONFIG, ROLE_LAYER)]
    return PushPlan(
        image,
        ref,
        target.repository_for(ref),
        root,
        tuple(children),
        tuple(missing),
        tuple(blobs),
    )


def cached_as_wanted(images: Sequence[CachedImage]) -> list[Wanted]:
    """Every cached image, under its canonical name with the refs written for it."""
    wanted = []
    for image in images:
        refs: list[ImageRef] = []
        for text in image.refs or (image.canonical,):
            try:
                refs.append(parse_image_ref(text))
            except ImageRefError:
                log.warning("ignoring the ref %r of %s: it doesn't parse", text, image.canonical)
        if not refs:
            refs.append(parse_image_ref(image.canonical))
        wanted.append(Wanted(image.canonical, tuple(refs), essential=True))
    return wanted
