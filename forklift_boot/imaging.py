"""Orchestration: copy required images into the cache, and load them from it into an engine.

Sees only small protocols (an image source, an image target) and the cache; never docker,
subprocess or pystemd.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from forklift_boot.cache import (
    INDEX_MEDIA_TYPES,
    CachedImage,
    CacheReader,
    CacheWriter,
    Descriptor,
    ImageCache,
    ensure_free_space,
)
from forklift_boot.errors import (
    CacheError,
    EngineError,
    EngineUnavailableError,
    ForkliftBootError,
    RegistryError,
)
from forklift_boot.faults import checkpoint
from forklift_boot.platforms import best_match, parse_platform, platform_of
from forklift_boot.refs import ImageRef
from forklift_boot.report import (
    ALREADY_CACHED,
    CACHED,
    FAILED,
    LOADED,
    MISSING,
    PRESENT,
    TAGGED,
    UNRESOLVED,
    ImageOutcome,
    NoProgress,
    Progress,
    Report,
)
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


class ReadThroughSource:
    """``--from auto``: what the first source (Docker) has, from there; the rest from the
    second (registries). A first source that can't be reached is skipped with a warning."""

    def __init__(
        self,
        first: ImageSource,
        second: ImageSource,
        *,
        accept: Callable[[SourceImage], bool] = lambda image: True,
    ) -> None:
        self.first = first
        self.second = second
        self.accept = accept  # e.g. only images of the wanted platform from Docker
        self.description = f"{first.description} or {second.description}"
        self._first_down = False
        self._from_first: set[str] = set()

    def find(self, wanted: Wanted) -> SourceImage | None:
        if not self._first_down:
            try:
                found = self.first.find(wanted)
            except EngineUnavailableError as err:
                log.warning("%s; fetching every image from %s", err, self.second.description)
                self._first_down = True
                found = None
            if found is not None and self.accept(found):
                self._from_first.add(wanted.canonical)
                return found
        return self.second.find(wanted)

    def copy(
        self,
        images: Sequence[SourceImage],
        writer: CacheWriter,
        *,
        compress: str,
        known_layers: Mapping[str, Descriptor],
        on_bytes: ByteCounter,
    ) -> dict[str, CopiedImage]:
        copied: dict[str, CopiedImage] = {}
        for source, part in (
            (self.first, [i for i in images if i.wanted.canonical in self._from_first]),
            (self.second, [i for i in images if i.wanted.canonical not in self._from_first]),
        ):
            if part:
                copied.update(
                    source.copy(
                        part,
                        writer,
                        compress=compress,
                        known_layers=known_layers,
                        on_bytes=on_bytes,
                    )
                )
        return copied


def cache_images(
    required: Sequence[RequiredImage],
    source: ImageSource,
    cache: ImageCache,
    *,
    compress: str,
    progress: Progress | None = None,
) -> Report:
    """Copies every required image the cache lacks out of ``source``; writes nothing else."""
    progress = progress or NoProgress()
    report = Report("cache")
    wanted = group_by_canonical(required)
    with cache.writing() as writer:
        cached = {image.canonical: image for image in writer.images()}
        to_copy: list[SourceImage] = []
        renamed: list[CachedImage] = []
        for item in wanted:
            entry = cached.get(item.canonical)
            if entry is not None:
                refs = tuple(sorted({*entry.refs, *item.written}))
                if refs != entry.refs:
                    renamed.append(replace(entry, refs=refs))
                report.add(item.outcome(ALREADY_CACHED))
                continue
            try:
                found = source.find(item)
            except RegistryError as err:
                # One image a registry can't serve must not stop the others.
                log.error("%s", err)
                report.add(item.outcome(FAILED, str(err)))
                continue
            if found is None:
                report.add(
                    missing_outcome(item, f"neither {source.description} nor the cache has it")
                )
            else:
                to_copy.append(found)
        if renamed:
            writer.put_images(renamed)  # new spellings of cached images: index only
        if to_copy:
            _copy(to_copy, source, writer, progress, report, compress=compress)
    for outcome in report.outcomes:
        if outcome.status != CACHED:
            progress.finish_image(outcome)
    return report.finish()


def _copy(
    images: list[SourceImage],
    source: ImageSource,
    writer: CacheWriter,
    progress: Progress,
    report: Report,
    *,
    compress: str,
) -> None:
    by_id = {image.image_id: image for image in images}
    needed = sum(image.size for image in by_id.values())
    ensure_free_space(writer.cache_dir, needed, f"caching {len(images)} images")
    known_layers = known_layer_blobs(writer)
    progress.start_image(1, 1, f"{len(by_id)} images from {source.description}", needed)
    try:
        copied = source.copy(
            images,
            writer,
            compress=compress,
            known_layers=known_layers,
            on_bytes=progress.add_bytes,
        )
    except (EngineError, RegistryError, CacheError) as err:
        if len(by_id) == 1 or isinstance(err, CacheError):
            for image in images:
                report.add(image.wanted.outcome(FAILED, str(err)))
            log.error("%s", err)
            return
        # One stream for all failed: find the image that breaks it, keep the others.
        log.warning(
            "exporting %d images at once failed (%s); trying one at a time", len(by_id), err
        )
        for image_id in by_id:
            alone = [image for image in images if image.image_id == image_id]
            _copy(alone, source, writer, progress, report, compress=compress)
        return
    checkpoint("blobs-durable")
    entries = []
    counted: set[str] = set()
    for image in images:
        result = copied.get(image.wanted.canonical) or copied[image.image_id]
        entries.append(
            CachedImage(
                canonical=image.wanted.canonical,
                refs=image.wanted.written,
                descriptor=result.manifest,
                image_id=result.image_id or image.image_id,
                registry_digest=image.registry_digest,
                platform=image.platform,
            )
        )
        new_bytes = 0 if image.image_id in counted else result.new_bytes
        counted.add(image.image_id)
        outcome = image.wanted.outcome(CACHED, bytes_written=new_bytes)
        report.add(outcome)
        progress.finish_image(outcome)
    writer.put_images(entries)


def known_layer_blobs(reader: CacheReader) -> dict[str, Descriptor]:
    """Layer blobs the cache has, by diff ID, from every cached manifest and its config."""
    known: dict[str, Descriptor] = {}
    for image in reader.images():
        for manifest in _platform_manifests(reader, image.descriptor):
            try:
                document = reader.read_json(manifest.digest)
                config = reader.read_json(document["config"]["digest"])
                diff_ids = config["rootfs"]["diff_ids"]
                layers = [Descriptor.from_json(layer) for layer in document["layers"]]
            except (ForkliftBootError, KeyError, TypeError):
                continue  # a damaged entry: `cache verify` reports it
            for diff_id, layer in zip(diff_ids, layers, strict=False):
                if reader.has_blob(layer.digest):
                    known.setdefault(diff_id, layer)
    return known


def _platform_manifests(reader: CacheReader, descriptor: Descriptor) -> Iterator[Descriptor]:
    if descriptor.media_type not in INDEX_MEDIA_TYPES:
        yield descriptor
        return
    try:
        index = reader.read_json(descriptor.digest)
    except ForkliftBootError:
        return
    for child in index.get("manifests") or []:
        child_descriptor = Descriptor.from_json(child)
        if reader.has_blob(child_descriptor.digest):
            yield child_descriptor


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


def load_images(
    required: Sequence[RequiredImage],
    target: ImageTarget,
    cache: ImageCache,
    *,
    thin: bool = True,
    record_digests: bool = True,
    progress: Progress | None = None,
    engine: str = "Docker",
) -> Report:
    """Loads what the target lacks (by image ID and by ref as written) from the cache."""
    progress = progress or NoProgress()
    report = Report("load", engine)
    outcomes: dict[str, ImageOutcome] = {}
    wanted = group_by_canonical(required)
    with cache.reading() as reader:
        plans: list[LoadPlan] = []
        for item in wanted:
            entry = reader.find(item.canonical)
            if entry is None:
                if all(target.resolve(ref) for ref in item.written):
                    outcomes[item.canonical] = item.outcome(PRESENT)
                else:
                    outcomes[item.canonical] = missing_outcome(
                        item, "not in the cache; cache it first"
                    )
                continue
            try:
                plan = plan_load(reader, entry, item, target.platform)
            except ForkliftBootError as err:
                outcomes[item.canonical] = item.outcome(FAILED, str(err))
                continue
            if _unresolved_refs(target, plan):
                plans.append(plan)
            else:
                outcomes[item.canonical] = item.outcome(PRESENT)
        # Spellings of one image (tag, digest, both) share an image ID: load it once.
        by_image: dict[str, list[LoadPlan]] = {}
        for plan in plans:
            by_image.setdefault(target.identity(plan), []).append(plan)
        to_load = [group for image_id, group in by_image.items() if not target.has_image(image_id)]
        target.ensure_space([group[0] for group in to_load])
        for index, group in enumerate(to_load, start=1):
            merged = _merge_plans(group)
            progress.start_image(index, len(to_load), merged.wanted.canonical, merged.archive_size)
            sent = _ByteCount(progress.add_bytes)
            try:
                target.load(reader, merged, thin=thin, on_bytes=sent)
                checkpoint("image-loaded")
                status, detail = LOADED, ""
            except (EngineError, CacheError) as err:
                log.error("couldn't load %s: %s", merged.wanted.canonical, err)
                status, detail = FAILED, str(err)
            for position, plan in enumerate(group):
                outcomes[plan.wanted.canonical] = plan.wanted.outcome(
                    status, detail, bytes_written=sent.total if position == 0 else 0
                )
        failed = {name for name, outcome in outcomes.items() if outcome.status == FAILED}
        in_target = [plan for plan in plans if plan.wanted.canonical not in failed]
        _make_resolvable(target, in_target, outcomes, record_digests=record_digests)
    for item in wanted:
        report.add(outcomes[item.canonical])
        progress.finish_image(outcomes[item.canonical])
    return report.finish()


def _make_resolvable(
    target: ImageTarget,
    plans: Sequence[LoadPlan],
    outcomes: dict[str, ImageOutcome],
    *,
    record_digests: bool,
) -> None:
    pending = [(plan, ref) for plan in plans for ref in _unresolved_refs(target, plan)]
    reasons = target.make_resolvable(pending, record_digests=record_digests) if pending else {}
    for plan in plans:
        still = _unresolved_refs(target, plan)
        previous = outcomes.get(plan.wanted.canonical)
        if still:
            why = "; ".join(
                f"{ref.written}: {reasons.get(ref.written, 'does not resolve')}" for ref in still
            )
            outcomes[plan.wanted.canonical] = plan.wanted.outcome(UNRESOLVED, why)
        elif previous is None:
            outcomes[plan.wanted.canonical] = plan.wanted.outcome(TAGGED)


class _ByteCount:
    """Counts the bytes that really went to the target, and passes them on to progress."""

    def __init__(self, then: ByteCounter) -> None:
        self.total = 0
        self.then = then

    def __call__(self, count: int) -> None:
        self.total += count
        self.then(count)


def _merge_plans(group: Sequence[LoadPlan]) -> LoadPlan:
    """One plan for cache entries of the same image, answering to all their refs."""
    refs = tuple(ref for plan in group for ref in plan.wanted.refs)
    essential = any(plan.wanted.essential for plan in group)
    return replace(group[0], wanted=Wanted(group[0].wanted.canonical, refs, essential))


def _unresolved_refs(target: ImageTarget, plan: LoadPlan) -> list[ImageRef]:
    return [
        ref for ref in plan.wanted.refs if target.resolve(ref.written) != target.identity(plan, ref)
    ]


def plan_load(reader: CacheReader, entry: CachedImage, wanted: Wanted, platform: str) -> LoadPlan:
    """Resolves a cache entry to the manifest for ``platform``, with its config and layers."""
    manifest = entry.descriptor
    if manifest.media_type in INDEX_MEDIA_TYPES:
        manifest = _choose_platform(reader, entry, platform)
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


def _choose_platform(reader: CacheReader, entry: CachedImage, platform: str) -> Descriptor:
    return choose_platform_manifest(reader, entry.descriptor, platform, entry.canonical)


def choose_platform_manifest(
    reader: CacheReader, index: Descriptor, platform: str, name: str
) -> Descriptor:
    """The manifest of an image index in the cache that ``platform`` prefers, matched as
    containerd does (``linux/arm64`` takes ``linux/arm64/v8``, ``linux/arm/v7`` takes
    ``linux/arm/v6``); only manifests the cache holds count."""
    document = reader.read_json(index.digest, expected_size=index.size)
    present = []
    for child in document.get("manifests") or []:
        descriptor = Descriptor.from_json(child, f"index of {name}")
        if reader.has_blob(descriptor.digest):
            present.append(descriptor)
    try:
        wanted = parse_platform(platform)
    except ValueError as err:
        raise CacheError(f"couldn't load {name}: {err}") from err
    chosen = best_match(wanted, [(platform_of(d.platform), d) for d in present])
    if chosen is not None:
        return chosen
    cached = ", ".join(_platform_of(d) for d in present) or "none"
    raise CacheError(
        f"couldn't load {name}: the cache has no {platform} manifest "
        f"(cached: {cached}); cache it with --platform {platform}"
    )


def _platform_of(descriptor: Descriptor) -> str:
    platform = descriptor.platform or {}
    text = f"{platform.get('os', '')}/{platform.get('architecture', '')}"
    return f"{text}/{platform['variant']}" if platform.get("variant") else text


def missing_outcome(item: Wanted, detail: str) -> ImageOutcome:
    """The outcome of a wanted image that isn't there, logged: an error, or a warning when
    only a fallback bundle needs it."""
    if item.essential:
        log.error("%s: %s", ", ".join(item.written), detail)
    else:
        log.warning("%s (needed only by a fallback bundle): %s", ", ".join(item.written), detail)
    return item.outcome(MISSING, detail)
