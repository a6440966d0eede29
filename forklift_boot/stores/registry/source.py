"""Registries as an image source: manifests, configs and layers stored byte for byte.

A ref resolves to what the registry serves for it. An image index is resolved to the manifest
for the wanted platform (or every platform with ``all_platforms``); the cache entry points at
that platform manifest, or at the index itself, kept byte for byte, when the ref pins the
index's digest (or every platform is kept), so that the digest the ref names stays valid.
One class, one module: finding and copying share the resolved manifests and the cache lookups.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forklift_boot.cache import (
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    MAX_JSON_BLOB_SIZE,
    NONDISTRIBUTABLE_LAYER_MEDIA_TYPES,
    CacheReader,
    CacheWriter,
    Descriptor,
)
from forklift_boot.cache.json_limits import load_json
from forklift_boot.errors import CacheError, CancelledError, ForkliftBootError, RegistryError
from forklift_boot.images import ByteCounter, CopiedImage, SourceImage, Wanted
from forklift_boot.platforms import (
    Platform,
    best_match,
    matches,
    parse_platform,
    platform_object,
    platform_of,
)
from forklift_boot.refs import ImageRef
from forklift_boot.report import DEFAULT_JOBS
from forklift_boot.stores.registry.client import RegistryClient
from forklift_boot.stores.registry.manifests import Manifest, manifest_media_type
from forklift_boot.stores.registry.repository import Repository

__all__ = ["RegistrySource"]

log = logging.getLogger(__name__)


@dataclass
class _Resolved:
    """What a wanted image resolved to, kept between ``find`` and ``copy``."""

    wanted: Wanted
    repository: Repository
    top: Manifest  # what the registry served for the ref: a manifest or an index
    entry: Descriptor  # what the index.json entry points at
    manifests: list[Manifest]  # the platform manifests to store
    chosen: Manifest  # the one for the wanted platform: its config digest is the image ID
    platform: Platform  # the chosen manifest's platform
    # Small blobs already in memory (configs read to learn a platform), by digest.
    fetched: dict[str, bytes] = field(default_factory=dict)

    @property
    def image_id(self) -> str:
        return _descriptor(
            self.chosen.document().get("config"), self.wanted.refs[0], "config"
        ).digest

    @property
    def documents(self) -> list[Manifest]:
        """Every manifest and index to store, children before the index that lists them; the
        index only when the entry points at it."""
        if self.top.is_index and self.entry.digest == self.top.digest:
            return [*self.manifests, self.top]
        return list(self.manifests)


class RegistrySource:
    """Fetches images from their registries (``docker.io`` through its mirrors first)."""

    def __init__(
        self,
        client: RegistryClient,
        platform: str,
        *,
        all_platforms: bool = False,
        jobs: int = DEFAULT_JOBS,
        cache_dir: Path | None = None,
    ) -> None:
        self.client = client
        self.platform = parse_platform(platform)
        self.all_platforms = all_platforms
        self.jobs = max(1, jobs)
        self.description = "its registry"
        # find() runs inside the orchestrator's exclusive lock on the cache, so reading the
        # cache's blobs here (to skip manifests it has) needs no lock of its own.
        self._peek = CacheReader(cache_dir) if cache_dir is not None else None
        self._resolved: dict[str, _Resolved] = {}
        # Blobs that failed in this run: an image retried alone fails at once.
        self._failed: dict[str, RegistryError] = {}

    # --- find ---------------------------------------------------------------------------

    def find(self, wanted: Wanted) -> SourceImage | None:
        """Resolves the ref on its registry; None if the registry has no such image."""
        ref = wanted.refs[0].with_default_tag()
        repository = self.client.repository(ref)
        reference = ref.digest or ref.tag or "latest"
        top = self._fetch_top(repository, ref, reference)
        if top is None:
            return None
        if ref.digest and top.digest != ref.digest:
            raise RegistryError(
                f"couldn't fetch {ref.written}: {repository.name} served {top.digest} for it"
            )
        if top.is_index:
            resolved = self._resolve_index(wanted, ref, repository, top)
        elif top.media_type in MANIFEST_MEDIA_TYPES:
            resolved = self._resolve_manifest(wanted, ref, repository, top)
        else:
            raise RegistryError(
                f"couldn't fetch {ref.written} from {repository.name}: it is a {top.media_type}, "
                "not an image (Docker schema 1 and artifacts are not supported)"
            )
        self._resolved[wanted.canonical] = resolved
        size = sum(
            manifest.size + sum(d.size for d in self._blobs_of(manifest, wanted, warn=False))
            for manifest in resolved.manifests
        )
        if resolved.entry.digest == top.digest and top.is_index:
            size += top.size
        return SourceImage(
            wanted=wanted,
            image_id=resolved.image_id,
            registry_digest=top.digest,
            platform=str(resolved.platform),
            size=size,
        )

    def _fetch_top(self, repository: Repository, ref: ImageRef, reference: str) -> Manifest | None:
        if ref.digest:
            cached = self._cached(ref.digest, "")
            if cached is not None:  # content addressed: no need to ask
                return cached
        # HEAD first: a digest the cache has needs no GET (and no pull from a rate limit).
        head = repository.head_manifest(reference)
        if head is None:
            return None
        if head.digest:
            cached = self._cached(head.digest, head.media_type)
            if cached is not None:
                return cached
        return repository.get_manifest(reference, expected_digest=ref.digest)

    def _resolve_index(
        self, wanted: Wanted, ref: ImageRef, repository: Repository, index: Manifest
    ) -> _Resolved:
        children = self._index_children(index, ref)
        candidates = [(platform_of(child.platform), child) for child in children]
        preferred = best_match(self.platform, candidates)
        if self.all_platforms:
            chosen_children = [child for platform, child in candidates if platform is not None]
        else:
            chosen_children = [preferred] if preferred is not None else []
        if not chosen_children:
            offered = ", ".join(sorted({str(p) for p, _ in candidates if p})) or "none"
            raise RegistryError(
                f"couldn't fetch {ref.written}: {repository.name} has no {self.platform} image "
                f"(it has: {offered}); pass --platform for one of those"
            )
        if preferred is None:
            log.warning(
                "%s has no %s image; keeping all of its platforms, and %s as its image ID",
                ref.written,
                self.platform,
                platform_of(chosen_children[0].platform),
            )
        manifests = [self._child_manifest(repository, ref, child) for child in chosen_children]
        by_digest = {manifest.digest: manifest for manifest in manifests}
        child = preferred or chosen_children[0]
        chosen = by_digest[child.digest]
        # The ref pins the index, or every platform is kept: the entry is the index.
        if ref.digest or self.all_platforms:
            entry = index.descriptor()
        else:
            entry = Descriptor(
                chosen.media_type, chosen.digest, chosen.size, platform=child.platform
            )
        platform = platform_of(child.platform) or self.platform
        return _Resolved(wanted, repository, index, entry, manifests, chosen, platform)

    def _resolve_manifest(
        self, wanted: Wanted, ref: ImageRef, repository: Repository, manifest: Manifest
    ) -> _Resolved:
        config = _descriptor(manifest.document().get("config"), ref, "config")
        data = self._cached_bytes(config.digest) or repository.fetch_small_blob(config)
        platform = _config_platform(data)
        found = platform_of(platform)
        if found is not None and not matches(self.platform, found):
            log.warning(
                "%s is a single-platform image for %s, not %s; caching it anyway",
                ref.written,
                found,
                self.platform,
            )
        return _Resolved(
            wanted,
            repository,
            manifest,
            manifest.descriptor(platform),
            [manifest],
            manifest,
            found or self.platform,
            {config.digest: data},
        )

    def _index_children(self, index: Manifest, ref: ImageRef) -> list[Descriptor]:
        try:
            document = index.document()
            children = [
                Descriptor.from_json(child, f"image index of {ref.written}")
                for child in document["manifests"]
            ]
        except (ValueError, KeyError, TypeError, CacheError) as err:
            raise RegistryError(
                f"couldn't read the image index of {ref.written}: it is malformed ({err})"
            ) from err
        # Attestations and other artifacts are not images: leave them out.
        return [child for child in children if child.media_type in MANIFEST_MEDIA_TYPES]

    def _child_manifest(self, repository: Repository, ref: ImageRef, child: Descriptor) -> Manifest:
        cached = self._cached(child.digest, child.media_type)
        if cached is not None:
            return cached
        manifest = repository.get_manifest(child.digest)
        if manifest is None:
            raise RegistryError(
                f"couldn't fetch {ref.written}: the manifest {child.digest} that its index lists "
                f"is missing from {repository.name}"
            )
        if manifest.media_type in INDEX_MEDIA_TYPES:
            raise RegistryError(
                f"couldn't fetch {ref.written}: its index lists another index; nested indexes "
                "are not supported"
            )
        return manifest

    # --- copy ---------------------------------------------------------------------------

    def copy(
        self,
        images: Sequence[SourceImage],
        writer: CacheWriter,
        *,
        compress: str,
        known_layers: Mapping[str, Descriptor],
        on_bytes: ByteCounter,
    ) -> dict[str, CopiedImage]:
        """Downloads every blob the cache lacks, ``jobs`` at a time, then the manifests.

        ``compress`` and ``known_layers`` don't apply: registry blobs are stored as served.
        Results are keyed by image ID and by canonical name (a tag's entry is the platform
        manifest, a pinned index's entry the index, and both share an image ID).
        """
        del compress, known_layers  # registry blobs are kept byte for byte
        plans = [self._resolved_for(image) for image in images]
        stored: dict[str, int] = {}
        needed: dict[str, tuple[Descriptor, Repository]] = {}
        for plan in plans:
            # Configs that find() already fetched go in from memory, never downloaded twice.
            for digest, data in plan.fetched.items():
                if not writer.has_blob(digest):
                    stored[digest] = _store_bytes(writer, data, digest)
            for manifest in plan.manifests:
                for blob in self._blobs_of(manifest, plan.wanted, warn=True):
                    needed.setdefault(blob.digest, (blob, plan.repository))
        stored |= self._download(needed, writer, _Locked(on_bytes), plans)
        results: dict[str, CopiedImage] = {}
        credited: set[str] = set()
        for plan in plans:
            # Manifests last, children before the index: blobs before what names them.
            for document in plan.documents:
                if not writer.has_blob(document.digest):
                    stored[document.digest] = _store_bytes(writer, document.data, document.digest)
            digests = {d.digest for m in plan.manifests for d in self._blobs_of(m, plan.wanted)}
            digests |= {document.digest for document in plan.documents}
            new_bytes = sum(stored.get(digest, 0) for digest in digests - credited)
            credited |= digests
            copied = CopiedImage(manifest=plan.entry, new_bytes=new_bytes)
            results.setdefault(plan.image_id, copied)
            results[plan.wanted.canonical] = copied
        return results

    def _resolved_for(self, image: SourceImage) -> _Resolved:
        plan = self._resolved.get(image.wanted.canonical)
        if plan is None:
            if self.find(image.wanted) is None:
                raise RegistryError(f"couldn't fetch {image.wanted.written[0]}: it is gone")
            plan = self._resolved[image.wanted.canonical]
        return plan

    def _download(
        self,
        needed: Mapping[str, tuple[Descriptor, Repository]],
        writer: CacheWriter,
        on_bytes: ByteCounter,
        plans: Sequence[_Resolved],
    ) -> dict[str, int]:
        """Downloads the blobs the cache lacks; returns the sizes of those it stored. If any
        fails, the others are still stored, and the first failure is raised."""
        missing = [(d, repo) for d, repo in needed.values() if not writer.has_blob(d.digest)]
        stored: dict[str, int] = {}
        errors: dict[str, ForkliftBootError] = {}
        stop = threading.Event()

        def counted(count: int) -> None:
            if stop.is_set():  # interrupted: leave the download between two chunks
                raise CancelledError
            on_bytes(count)

        def fetch(descriptor: Descriptor, repository: Repository) -> None:
            if descriptor.digest in self._failed:
                errors[descriptor.digest] = self._failed[descriptor.digest]
                return
            try:
                blob = repository.download_blob(descriptor, writer, counted)
            except CancelledError:
                return  # its temporary is gone with its blob writer
            except RegistryError as err:
                self._failed[descriptor.digest] = err
                errors[descriptor.digest] = err
                return
            except CacheError as err:
                errors[descriptor.digest] = err
                return
            stored[descriptor.digest] = blob.size if blob.is_new else 0

        pool = ThreadPoolExecutor(max(1, min(self.jobs, len(missing))), "forklift-boot-fetch")
        try:
            for future in [pool.submit(fetch, d, repo) for d, repo in missing]:
                future.result()
        except BaseException:
            # SIGTERM or Ctrl-C: stop the other downloads now rather than after they finish.
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        if errors:
            first = next(iter(errors.values()))
            if len(errors) > 1:
                log.error("%d blobs failed to download; the first: %s", len(errors), first)
            if any(isinstance(err, CacheError) for err in errors.values()):
                raise next(err for err in errors.values() if isinstance(err, CacheError))
            failed = set(errors)
            names = [
                plan.wanted.written[0]
                for plan in plans
                if any(
                    blob.digest in failed
                    for manifest in plan.manifests
                    for blob in self._blobs_of(manifest, plan.wanted)
                )
            ]
            raise RegistryError(f"{first} (needed by {', '.join(names)})")
        return stored

    def _blobs_of(
        self, manifest: Manifest, wanted: Wanted, *, warn: bool = False
    ) -> list[Descriptor]:
        """The config and the distributable layers of a platform manifest."""
        ref = wanted.refs[0]
        try:
            document = manifest.document()
            config = _descriptor(document.get("config"), ref, "config")
            layers = [_descriptor(layer, ref, "layer") for layer in document.get("layers") or []]
        except (ValueError, AttributeError) as err:
            raise RegistryError(
                f"couldn't read the manifest {manifest.digest} of {ref.written}: {err}"
            ) from err
        kept = [config]
        for layer in layers:
            if layer.media_type in NONDISTRIBUTABLE_LAYER_MEDIA_TYPES:
                if warn:
                    log.warning(
                        "skipping the non-distributable layer %s of %s: registries may not "
                        "redistribute it, so the image loads only where that layer exists",
                        layer.digest,
                        ref.written,
                    )
                continue
            kept.append(layer)
        return kept

    # --- the cache's own copies ---------------------------------------------------------

    def _cached(self, digest: str, media_type: str) -> Manifest | None:
        data = self._cached_bytes(digest)
        if data is None:
            return None
        return Manifest(data, manifest_media_type(media_type, data), digest)

    def _cached_bytes(self, digest: str) -> bytes | None:
        if self._peek is None:
            return None
        try:
            if not self._peek.has_blob(digest) or self._peek.blob_size(digest) > MAX_JSON_BLOB_SIZE:
                return None
            with self._peek.open_blob(digest) as file:
                data = file.read(MAX_JSON_BLOB_SIZE + 1)
                file.read()  # reaching the end runs the digest check
        except ForkliftBootError:
            return None  # damaged: fetch it again
        log.debug("using %s from the cache", digest)
        return data


class _Locked:
    """Progress callbacks from download threads, one at a time."""

    def __init__(self, then: Callable[[int], None]) -> None:
        self._then = then
        self._lock = threading.Lock()

    def __call__(self, count: int) -> None:
        with self._lock:
            self._then(count)


def _store_bytes(writer: CacheWriter, data: bytes, digest: str) -> int:
    """A manifest, index or config kept exactly as served; returns the bytes newly written."""
    with writer.blob_writer() as blob:
        blob.write(data)
        stored = blob.commit(expected_digest=digest, expected_size=len(data))
    return stored.size if stored.is_new else 0


def _descriptor(obj: object, ref: ImageRef, what: str) -> Descriptor:
    try:
        return Descriptor.from_json(obj, f"{what} of {ref.written}")
    except CacheError as err:
        raise RegistryError(f"couldn't read the manifest of {ref.written}: {err}") from err


def _config_platform(data: bytes) -> dict[str, Any] | None:
    try:
        config = load_json(data)
    except ValueError:
        return None
    if not isinstance(config, dict) or not config.get("architecture"):
        return None
    return platform_object(config)
