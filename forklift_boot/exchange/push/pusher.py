"""Pushing cached images to a registry: the order of each image's requests, and what the run
learns the registry has.

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
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from forklift_boot.cache import CacheReader, Descriptor
from forklift_boot.errors import CacheError, CancelledError, ForkliftBootError, RegistryError
from forklift_boot.exchange.push.plan import CachedDocument, PushPlan, plan_push
from forklift_boot.exchange.push.report import PUSHED, PushCounts, PushReport
from forklift_boot.images import Wanted, missing_outcome
from forklift_boot.report import (
    ALREADY_THERE,
    DEFAULT_JOBS,
    FAILED,
    ImageOutcome,
    NoProgress,
    Progress,
)
from forklift_boot.stores.registry.client import RegistryClient
from forklift_boot.stores.registry.push import ManifestRefusedError, PushRepository
from forklift_boot.stores.registry.targets import PushTarget
from forklift_boot.stores.registry.transport import RegistryAccessError, RegistryConnectionError

__all__ = ["push_images"]

log = logging.getLogger(__name__)


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
        self, repository: PushRepository, reference: str, document: CachedDocument
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
            except CancelledError:
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
            raise CancelledError
        with self._lock:
            self.counts.bytes_sent += count
            self.progress.add_bytes(count)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
