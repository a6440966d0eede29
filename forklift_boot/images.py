"""The shared vocabulary of sources, targets and flows: wanted, found, copied and planned images,
and the ImageSource / ImageTarget protocols.

Call order, cache-img: for each wanted image the flow asks ``source.find``; it then hands every
found image to one ``source.copy`` under the cache's write lock and records the returned
manifests in the index. Load-img: the flow makes a ``LoadPlan`` per cached image (``plan_load``),
asks ``target.resolve``/``identity``/``has_image`` what is already there, calls
``target.ensure_space`` once, ``target.load`` per image, and ``target.make_resolvable`` once for
the refs that still don't resolve. With read-through (``load-img --fetch``), the flow first asks
a ``TagLookup`` what each tag names at its registry and fetches what is missing or newer into
the cache through an ``ImageSource`` (cache-img's own flow), before any of that.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from forklift_boot.cache import (
    INDEX_MEDIA_TYPES,
    CachedImage,
    CacheReader,
    CacheWriter,
    Descriptor,
)
from forklift_boot.cache.selection import choose_platform_manifest
from forklift_boot.errors import CacheError
from forklift_boot.refs import ImageRef
from forklift_boot.report import MISSING, ImageOutcome
from forklift_boot.requirements import RequiredImage

log = logging.getLogger(__name__)

ByteCounter = Callable[[int], None]


@dataclass(frozen=True)
class Wanted:
    """One cache entry: a canonical name and every spelling of it that the compose files use."""

    canonical: str
    refs: tuple[ImageRef, ...]
    essential: bool

    @property
    def written(self) -> tuple[str, ...]:
        return tuple(ref.written for ref in self.refs)

    def outcome(self, status: str, detail: str = "", *, bytes_written: int = 0) -> ImageOutcome:
        return ImageOutcome(
            name=self.canonical,
            refs=self.written,
            status=status,
            detail=detail,
            essential=self.essential,
            bytes_written=bytes_written,
        )


def group_by_canonical(required: Sequence[RequiredImage]) -> list[Wanted]:
    """Spellings of the same canonical reference share one entry (``nginx:1`` and
    ``docker.io/library/nginx:1``); a name-only ref means ``:latest``, as Docker reads it."""
    groups: dict[str, list[RequiredImage]] = {}
    for image in required:
        if image.ref.is_name_only:
            log.warning(
                "%s has no tag; it means %s:latest, which may change under the same name",
                image.written,
                image.written,
            )
        groups.setdefault(image.ref.with_default_tag().canonical, []).append(image)
    return [
        Wanted(
            canonical,
            tuple(image.ref for image in images),
            essential=any(image.essential for image in images),
        )
        for canonical, images in sorted(groups.items())
    ]


# Copying into the cache


@dataclass(frozen=True)
class SourceImage:
    """A wanted image as the source has it."""

    wanted: Wanted
    image_id: str
    registry_digest: str | None
    platform: str
    size: int  # uncompressed bytes, an upper bound of what storing it writes


@dataclass(frozen=True)
class CopiedImage:
    manifest: Descriptor
    new_bytes: int
    # The config digest, where the source's image ID is something else (Docker's containerd
    # image store names an image by its manifest or index digest).
    image_id: str | None = None


class ImageSource(Protocol):
    description: str

    def find(self, wanted: Wanted) -> SourceImage | None: ...

    def copy(
        self,
        images: Sequence[SourceImage],
        writer: CacheWriter,
        *,
        compress: str,
        known_layers: Mapping[str, Descriptor],
        on_bytes: ByteCounter,
    ) -> dict[str, CopiedImage]:
        """Copies the images into the cache's blobs; returns them by image ID.

        A source whose entries of one image differ (a registry's platform manifest for a tag,
        its image index for a pinned digest) also keys them by canonical name, which wins.
        """
        ...


class TagLookup(Protocol):
    """What a registry serves for a ref now, asked with a short, bounded wait."""

    description: str

    def current_digest(self, wanted: Wanted) -> str | None:
        """The digest the registry serves for the wanted ref now; None when it has no such
        image. RegistryUnreachableError when it can't be reached in the time allowed, any
        other RegistryError when it refuses."""
        ...


# Loading from the cache


@dataclass(frozen=True)
class LoadPlan:
    """A cached image, resolved to one platform manifest, and the refs it must answer to."""

    wanted: Wanted
    entry: CachedImage
    manifest: Descriptor
    config: Descriptor
    layers: tuple[Descriptor, ...]
    diff_ids: tuple[str, ...]

    @property
    def image_id(self) -> str:
        return self.config.digest

    @property
    def archive_size(self) -> int:
        return self.manifest.size + self.config.size + sum(layer.size for layer in self.layers)


class ImageTarget(Protocol):
    description: str
    platform: str

    def resolve(self, ref: str) -> str | None:
        """The image ID that the ref as written resolves to, or None."""
        ...

    def identity(self, plan: LoadPlan, ref: ImageRef | None = None) -> str:
        """The image ID that ``resolve`` gives for ``ref`` (any ref: None) once the plan's
        image answers to it."""
        ...

    def has_image(self, image_id: str) -> bool: ...

    def ensure_space(self, plans: Sequence[LoadPlan]) -> None: ...

    def load(
        self, reader: CacheReader, plan: LoadPlan, *, thin: bool, on_bytes: ByteCounter
    ) -> None: ...

    def make_resolvable(
        self, pending: Sequence[tuple[LoadPlan, ImageRef]], *, record_digests: bool
    ) -> dict[str, str]:
        """Tags and digest records so that each ref resolves; returns ref -> why it can't."""
        ...


def find_cached(reader: CacheReader, wanted: Wanted) -> CachedImage | None:
    """The cache entry of a wanted image: its own, else, for ``name:tag@digest``, the entry of
    ``name@digest`` (the same image, as Docker ignores the tag of such a ref when it pulls;
    load-img's read-through keeps an image whose tag moved on under that name)."""
    entry = reader.find(wanted.canonical)
    if entry is not None:
        return entry
    ref = wanted.refs[0]
    if ref.tag is not None and ref.digested is not None:
        return reader.find(ref.digested)
    return None


def plan_load(reader: CacheReader, entry: CachedImage, wanted: Wanted, platform: str) -> LoadPlan:
    """Resolves a cache entry to the manifest for ``platform``, with its config and layers."""
    manifest = entry.descriptor
    if manifest.media_type in INDEX_MEDIA_TYPES:
        manifest = choose_platform_manifest(reader, entry.descriptor, platform, entry.canonical)
    document: Any = reader.read_json(manifest.digest, expected_size=manifest.size)
    try:
        config = Descriptor.from_json(document["config"], f"config of {entry.canonical}")
        layers = tuple(
            Descriptor.from_json(layer, f"layer of {entry.canonical}")
            for layer in document["layers"]
        )
    except (KeyError, TypeError) as err:
        raise CacheError(
            f"couldn't read the manifest of {entry.canonical}: it is malformed ({err}); "
            "run `forklift-boot cache verify --repair`"
        ) from err
    config_document = reader.read_json(config.digest, expected_size=config.size)
    diff_ids = tuple((config_document.get("rootfs") or {}).get("diff_ids") or ())
    if len(diff_ids) != len(layers):
        raise CacheError(f"couldn't load {entry.canonical}: its config and manifest disagree")
    return LoadPlan(wanted, entry, manifest, config, layers, diff_ids)


def missing_outcome(item: Wanted, detail: str) -> ImageOutcome:
    """The outcome of a wanted image that isn't there, logged: an error, or a warning when
    only a fallback bundle needs it."""
    if item.essential:
        log.error("%s: %s", ", ".join(item.written), detail)
    else:
        log.warning("%s (needed only by a fallback bundle): %s", ", ".join(item.written), detail)
    return item.outcome(MISSING, detail)
