"""Pushing cached images to a registry, so that a fleet shares one copy: what each image needs
on the registry, the order of its requests, and the report.

An image's blobs go first (each once per repository: skipped when the registry has it,
mounted when this run already put it in another repository, else uploaded), then the
platform manifests an index lists, then the entry's manifest or index under its tag, or
under its digest when the ref has no tag. A pinned entry (``name:tag@digest``) goes under its
tag only when the cache has no plain ``name:tag`` entry, which says what the tag is now (as
cache serve has it); else by digest. An image whose tag (or digest) already names the cached
manifest there is left alone without looking at its blobs: the registry checked them when the
manifest went in.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from forklift_boot.cache import (
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    CachedImage,
    CacheReader,
    Descriptor,
    human_bytes,
)
from forklift_boot.cache.walk import ROLE_CONFIG, ROLE_LAYER, DocumentStash, walk_blobs
from forklift_boot.errors import CacheError, ForkliftBootError, ImageRefError, RegistryError
from forklift_boot.images import Wanted, missing_outcome
from forklift_boot.refs import ImageRef, parse_image_ref
from forklift_boot.report import (
    ALREADY_THERE,
    DEFAULT_JOBS,
    FAILED,
    ImageOutcome,
    NoProgress,
    Progress,
    RunReport,
)
from forklift_boot.stores.registry.client import RegistryClient
from forklift_boot.stores.registry.push import ManifestRefusedError, PushRepository
from forklift_boot.stores.registry.targets import PushTarget
from forklift_boot.stores.registry.transport import RegistryAccessError, RegistryConnectionError

__all__ = [
    "PUSHED",
    "PushCounts",
    "PushPlan",
    "PushReport",
    "cached_as_wanted",
    "plan_push",
    "push_images",
]

log = logging.getLogger(__name__)

PUSHED = "pushed"


# The report


@dataclass
class PushCounts:
    """What the run sent: blobs by how they got there, and the bytes of request bodies."""

    uploaded: int = 0
    mounted: int = 0  # linked from another repository of the registry: nothing sent
    present: int = 0  # the repository had it already
    manifests: int = 0
    bytes_sent: int = 0

    def to_json(self) -> dict[str, int]:
        return {
            "blobs_uploaded": self.uploaded,
            "blobs_mounted": self.mounted,
            "blobs_already_there": self.present,
            "manifests_pushed": self.manifests,
            "bytes_sent": self.bytes_sent,
        }


@dataclass
class PushReport(RunReport):
    """What a push did, image by image, and what it sent."""

    target: str  # host/prefix
    counts: PushCounts = field(default_factory=PushCounts)
    # Credentials the registry refused, or a registry that couldn't be reached: the run stopped
    # there; the images done before it are recorded.
    error: str | None = None

    @property
    def exit_code(self) -> int:
        return 1 if self.error is not None else super().exit_code

    def headline(self) -> str:
        """``pushed 4/5 images to host/prefix (1 already there); blobs: 7 uploaded, 3 mounted,
        2 already there; 12.3 MiB sent, 1.2 s``."""
        counts = self.counts
        done = self.count(PUSHED, ALREADY_THERE)
        return (
            f"pushed {done}/{len(self.outcomes)} images to {self.target} "
            f"({self.count(ALREADY_THERE)} already there); blobs: {counts.uploaded} uploaded, "
            f"{counts.mounted} mounted, {counts.present} already there; "
            f"{human_bytes(counts.bytes_sent)} sent, {self.seconds:.1f} s"
        )

    def json_fields(self) -> dict[str, Any]:
        return {
            "action": "push",
            "target": self.target,
            "error": self.error,
            **self.counts.to_json(),
        }

    def image_json(self, outcome: ImageOutcome) -> dict[str, Any]:
        # A push counts the bytes it sends per run (bytes_sent), not per image.
        document = super().image_json(outcome)
        del document["bytes_written"]
        return document


# Planning: what an image is in the cache


@dataclass(frozen=True)
class _Document:
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
    root: _Document  # what the entry points at
    children: tuple[_Document, ...]  # the cached platform manifests of an index root
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
    root = _Document(descriptor, stash.documents[descriptor.digest])
    children: list[_Document] = []
    missing: list[Descriptor] = []
    if root.is_index:
        # The walk checked the index; a platform it lacks was skipped, not read.
        listed = stash.parsed[root.digest]["manifests"]
        for number, item in enumerate(listed):
            child = Descriptor.from_json(item, f"manifests[{number}]")
            data = stash.documents.get(child.digest)
            if child.media_type in MANIFEST_MEDIA_TYPES and data is not None:
                children.append(_Document(child, data))
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


# Pushing


def push_images(
    reader: CacheReader,
    wanted: Sequence[Wanted],
    target: PushTarget,
    client: RegistryClient,
    *,
    jobs: int = DEFAULT_JOBS,
    chunk_size: int | None = None,
    progress: Progress | None = None,
) -> PushReport:
    """Pushes each wanted image that the cache holds. One image that fails doesn't stop the
    others; credentials the registry refuses, or a registry that can't be reached, stop the
    run: the report's ``error`` says why, and the images not pushed yet fail."""
    progress = progress or NoProgress()
    report = PushReport(target.display)
    pusher = _Pusher(
        reader, target, client, report.counts, jobs=jobs, chunk_size=chunk_size, progress=progress
    )
    for number, item in enumerate(wanted, 1):
        try:
            outcome = pusher.push_wanted(item, number, len(wanted))
        except (RegistryAccessError, RegistryConnectionError) as err:
            # Every other image would fail the same way.
            log.error("%s", err)
            report.error = str(err)
            outcome = item.outcome(FAILED, str(err))
            report.outcomes.append(outcome)
            progress.finish_image(outcome)
            report.outcomes += [
                rest.outcome(FAILED, "not pushed: the run stopped at the error above")
                for rest in wanted[number:]
            ]
            break
        report.outcomes.append(outcome)
        progress.finish_image(outcome)
    return report.finish()


class _CancelledError(Exception):
    """The run was interrupted while blobs were uploading."""


class _Pusher:
    """The requests of one run, and what it knows the registry has."""

    def __init__(
        self,
        reader: CacheReader,
        target: PushTarget,
        client: RegistryClient,
        counts: PushCounts,
        *,
        jobs: int,
        chunk_size: int | None,
        progress: Progress,
    ) -> None:
        self.reader = reader
        self.target = target
        self.client = client
        self.counts = counts
        self.jobs = max(1, jobs)
        self.chunk_size = chunk_size
        self.progress = progress
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # digest -> repositories of the target that have it, learnt in this run
        self._known: dict[str, list[str]] = {}
        self._entries = {image.canonical: image for image in reader.images()}

    def push_wanted(self, item: Wanted, number: int, total: int) -> ImageOutcome:
        entry = self._entries.get(item.canonical)
        if entry is None:
            return missing_outcome(item, "not in the cache; cache it first")
        try:
            plan = plan_push(self.reader, entry, self.target)
            self.progress.start_image(
                number, total, f"{item.canonical} to {plan.repository}", plan.size
            )
            status, detail = self.push(plan)
        except (RegistryAccessError, RegistryConnectionError):
            raise  # push_images stops the run
        except (RegistryError, CacheError) as err:
            log.error("%s", err)
            return item.outcome(FAILED, str(err))
        if detail and status == FAILED:
            log.error("couldn't push %s: %s", item.written[0], detail)
        elif detail:
            log.warning("%s: %s", item.written[0], detail)
        return item.outcome(status, detail)

    def push(self, plan: PushPlan) -> tuple[str, str]:
        """(status, detail) for one image."""
        repository = PushRepository(self.client, self.target, plan.repository)
        tag, pinned = plan.ref.tag, plan.ref.digest
        if pinned is not None and plan.ref.tagged in self._entries:
            # The plain entry says what the tag is now; this one keeps only its digest.
            tag = None
        root = plan.root
        if pinned is not None and pinned != root.digest:
            # Docker hands out images, not their registry manifests: cache-img --from docker
            # writes a manifest of its own, so the digest the ref pins can't be reproduced.
            problem = (
                f"the cache holds a copy whose manifest is {root.digest}, not the registry's "
                f"{pinned} (copied out of Docker?), so {plan.ref.name}@{pinned} can't resolve on "
                f"{self.target.display}; cache it with --from registry to push it by digest"
            )
            if tag is None:
                return FAILED, problem
            if repository.manifest_digest(tag) != root.digest:
                self._push_image(repository, plan, tag)
            return FAILED, f"pushed its tag only: {problem}"
        reference = tag or root.digest
        there = repository.manifest_digest(reference)
        if there == root.digest:
            return ALREADY_THERE, ""
        reduced = plan.reduced_index()
        if tag is not None and reduced is not None and there == _digest(reduced):
            return ALREADY_THERE, "there as a new index of its cached platforms"
        return PUSHED, self._push_image(repository, plan, reference)

    def _push_image(self, repository: PushRepository, plan: PushPlan, reference: str) -> str:
        """Blobs, then the index's manifests, then the root; returns a detail for the report
        when the root could not go as cached."""
        self._push_blobs(repository, plan.blobs)
        for child in plan.children:
            if repository.manifest_digest(child.digest) is None:
                self._put_manifest(repository, child.digest, child)
        try:
            self._put_manifest(repository, reference, plan.root)
        except ManifestRefusedError as err:
            if not (plan.missing_children and err.code == "MANIFEST_BLOB_UNKNOWN"):
                raise
            return self._push_partial_index(repository, plan, reference, err)
        return ""

    def _push_partial_index(
        self,
        repository: PushRepository,
        plan: PushPlan,
        reference: str,
        refused: ManifestRefusedError,
    ) -> str:
        """The registry wants every manifest an index lists, and the cache has only some
        platforms: a tag gets a new index of those; a digest can't be kept."""
        lacking = (
            f"its image index lists {len(plan.missing_children)} manifest(s) the cache doesn't "
            "hold (platforms or attestations that were not cached), and the registry refuses "
            "an index whose manifests it lacks"
        )
        if plan.ref.digest is not None or reference != plan.ref.tag or not plan.children:
            raise RegistryError(
                f"couldn't push {plan.image.canonical} to {repository.display}: {lacking}, so "
                "its digest can't be kept there; push it by tag, or copy it from its own "
                "registry with every platform (skopeo copy --all)"
            ) from refused
        data = plan.reduced_index()
        assert data is not None  # missing and cached children both exist
        digest = repository.put_manifest(reference, data, plan.root.descriptor.media_type)
        self._count_manifest(len(data))
        return (
            f"pushed as a new index of its {len(plan.children)} cached platforms ({digest}): "
            f"{lacking}"
        )

    def _put_manifest(
        self, repository: PushRepository, reference: str, document: _Document
    ) -> None:
        repository.put_manifest(reference, document.data, document.descriptor.media_type)
        self._count_manifest(len(document.data))

    def _count_manifest(self, size: int) -> None:
        with self._lock:
            self.counts.manifests += 1
            self.counts.bytes_sent += size

    # --- blobs --------------------------------------------------------------------------

    def _push_blobs(self, repository: PushRepository, blobs: Sequence[Descriptor]) -> None:
        """Every blob the repository lacks, ``jobs`` at a time. If one fails, the others
        still finish, and the first failure is raised."""
        todo = []
        for blob in blobs:
            if repository.path in self._known.get(blob.digest, ()):
                with self._lock:
                    self.counts.present += 1
            else:
                todo.append(blob)
        if not todo:
            return
        errors: list[ForkliftBootError] = []

        def push(blob: Descriptor) -> None:
            try:
                self._push_blob(repository, blob)
            except _CancelledError:
                return
            except (RegistryError, CacheError) as err:
                errors.append(err)

        pool = ThreadPoolExecutor(min(self.jobs, len(todo)), "forklift-boot-push")
        try:
            for future in [pool.submit(push, blob) for blob in todo]:
                future.result()
        except BaseException:
            # SIGTERM or Ctrl-C: leave the uploads between two buffers rather than at their end.
            self._stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        if errors:
            # Credentials or the connection first: they stop the run.
            fatal = [
                e for e in errors if isinstance(e, RegistryAccessError | RegistryConnectionError)
            ]
            raise (fatal or errors)[0]

    def _push_blob(self, repository: PushRepository, blob: Descriptor) -> None:
        with self._lock:
            sources = [r for r in self._known.get(blob.digest, ()) if r != repository.path]
        location = None
        if sources:
            location = repository.mount_blob(blob.digest, sources[0])
            if location is None:
                self._learn(blob.digest, repository.path, "mounted")
                return
        elif repository.has_blob(blob.digest):
            self._learn(blob.digest, repository.path, "present")
            return
        repository.upload_blob(
            self.reader, blob, self._on_bytes, location=location, chunk_size=self.chunk_size
        )
        self._learn(blob.digest, repository.path, "uploaded")

    def _learn(self, digest: str, repository: str, how: str) -> None:
        with self._lock:
            self._known.setdefault(digest, []).append(repository)
            setattr(self.counts, how, getattr(self.counts, how) + 1)

    def _on_bytes(self, count: int) -> None:
        if self._stop.is_set():
            raise _CancelledError
        with self._lock:
            self.counts.bytes_sent += count
            self.progress.add_bytes(count)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


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
