"""cache-img: copy every required image the cache lacks out of a source, and nothing else."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace

from forklift_boot.cache import CachedImage, CacheWriter, Descriptor, ImageCache, ensure_free_space
from forklift_boot.cache.selection import known_layer_blobs
from forklift_boot.errors import CacheError, EngineError, EngineUnavailableError, RegistryError
from forklift_boot.faults import checkpoint
from forklift_boot.images import (
    ByteCounter,
    CopiedImage,
    ImageSource,
    SourceImage,
    Wanted,
    group_by_canonical,
    missing_outcome,
)
from forklift_boot.refs import parse_image_ref
from forklift_boot.report import ALREADY_CACHED, CACHED, FAILED, NoProgress, Progress, Report
from forklift_boot.requirements import RequiredImage

log = logging.getLogger(__name__)


class FallbackSource:
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
    return cache_wanted(
        group_by_canonical(required), source, cache, compress=compress, progress=progress
    )


def cache_wanted(
    wanted: Sequence[Wanted],
    source: ImageSource,
    cache: ImageCache,
    *,
    compress: str,
    progress: Progress | None = None,
    refresh: Collection[str] = (),
) -> Report:
    """Copies the wanted images the cache lacks out of ``source``, and those named in
    ``refresh`` (canonical names) again even if cached: a refreshed entry whose image changed
    keeps its old image under a digest name (see ``_kept_as_digest``)."""
    progress = progress or NoProgress()
    report = Report("cache")
    # Shared: readers and other writers go on while images arrive over a network.
    with cache.writing(exclusive=False) as writer:
        cached = {image.canonical: image for image in writer.images()}
        to_copy: list[SourceImage] = []
        renamed: list[CachedImage] = []
        for item in wanted:
            entry = cached.get(item.canonical)
            if entry is not None and item.canonical not in refresh:
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
    # Read at commit time, not when the run started: another writer may have changed it.
    current = {image.canonical: image for image in writer.images()}
    kept = _kept_as_digest(entries, current)
    # A refreshed entry answers to every spelling the old one did.
    entries = [
        replace(e, refs=(*e.refs, *current[e.canonical].refs)) if e.canonical in current else e
        for e in entries
    ]
    entries.extend(kept)
    writer.put_images(entries)


def _kept_as_digest(
    entries: Sequence[CachedImage], current: Mapping[str, CachedImage]
) -> list[CachedImage]:
    """The images that ``entries`` replace under their tags, each kept as ``name@digest`` (the
    digest its registry served for the tag, else its manifest's), so that a bundle that pins it
    still loads until ``cache del-img`` finds no bundle that needs it."""
    kept: list[CachedImage] = []
    for entry in entries:
        old = current.get(entry.canonical)
        if old is None or old.descriptor.digest == entry.descriptor.digest:
            continue
        ref = parse_image_ref(old.canonical)
        if ref.digest is not None:
            continue  # a pinned entry never moves
        name = f"{ref.name}@{old.registry_digest or old.descriptor.digest}"
        if name in current or any(e.canonical == name for e in entries):
            continue
        log.info("keeping the previous image of %s as %s", old.canonical, name)
        kept.append(replace(old, canonical=name, refs=(name,)))
    return kept
