"""Copying images from one image cache into another (a USB stick carries one): only missing
blobs, each verified while it streams, durable, and resumable after a crash at any moment.

The destination's index.json is replaced once, after every blob it will name is durable, so
it only ever names complete images; blobs copied before a crash stay, and a rerun skips them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal

from forklift_boot.cache import (
    BUFFER_SIZE,
    CachedImage,
    CacheReader,
    CacheWriter,
    ImageCache,
    ensure_free_space,
)
from forklift_boot.cache.blobs import hash_file
from forklift_boot.cache.durable import is_no_space, size_or_none
from forklift_boot.cache.layout import layout_problem
from forklift_boot.cache.walk import ROLE_INDEX, ROLE_MANIFEST, DocumentStash, ReachedBlob
from forklift_boot.errors import CacheError, UsageError
from forklift_boot.exchange.copy.plan import CopyPlan, plan_copy, source_problem
from forklift_boot.exchange.copy.report import (
    COPIED,
    KEPT,
    REPLACED,
    UPDATED,
    TransferReport,
    image_outcome,
)
from forklift_boot.faults import checkpoint
from forklift_boot.report import (
    ALREADY_THERE,
    FAILED,
    ImageOutcome,
    NoProgress,
    Progress,
)
from forklift_boot.requirements import RequiredImage

__all__ = ["copy_images"]

log = logging.getLogger(__name__)

# What a blob costs beyond its bytes on the destination's filesystem (its last, partial block),
# and room for index.json's temporary: added to the free-space check.
_BLOCK_SLACK = 4096
_INDEX_SLACK = 1 << 20


def copy_images(
    source: ImageCache,
    destination: ImageCache,
    required: Sequence[RequiredImage] | None = None,
    *,
    keep_existing: bool = False,
    progress: Progress | None = None,
    action: Literal["copy", "merge"] = "copy",
) -> TransferReport:
    """Copies the ``required`` images (all of them with None) from ``source`` into
    ``destination``, which is created if missing and otherwise merged into.

    Entries are matched by canonical name. Where both hold the same name with different
    manifests, the source's replaces the destination's (its blobs stay until `cache del-img`
    collects them), unless ``keep_existing``; the refs as written are always the union.
    ``action`` names the command in the report ("copy", or "merge" into the configured cache).
    """
    progress = progress or NoProgress()
    report = TransferReport(source.cache_dir, destination.cache_dir, action)
    _check_source(source.cache_dir)
    if _is_same_directory(source.cache_dir, destination.cache_dir):
        raise UsageError(
            f"couldn't copy images: {source.cache_dir} and {destination.cache_dir} are the same "
            "image cache; name another directory"
        )
    with source.reading() as reader:
        stash = DocumentStash(reader)
        plans = plan_copy(reader, stash, required, report)
        if not destination.cache_dir.exists():
            # Checked before the directory is created, so a copy that can't fit leaves nothing.
            _ensure_space(destination.cache_dir, _distinct(plans))
        with destination.writing() as writer:
            _Copier(reader, writer, stash, report, progress, keep_existing=keep_existing).run(plans)
    for outcome in report.outcomes:
        if outcome.status not in (COPIED, REPLACED, UPDATED, FAILED):  # shown as they ended
            progress.finish_image(outcome)
    report.outcomes.sort(key=lambda outcome: outcome.name)
    return report.finish()


# Copying


class _SourceBlobError(Exception):
    """A source blob turned out damaged or unreadable while it was copied."""

    def __init__(self, reached: ReachedBlob, problem: str) -> None:
        super().__init__(problem)
        self.reached = reached
        self.problem = problem


class _Copier:
    """Copies the planned images under both locks; one instance per run."""

    def __init__(
        self,
        reader: CacheReader,
        writer: CacheWriter,
        stash: DocumentStash,
        report: TransferReport,
        progress: Progress,
        *,
        keep_existing: bool,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.stash = stash
        self.report = report
        self.progress = progress
        self.keep_existing = keep_existing
        # Digests already counted as copied or skipped: a shared blob counts once.
        self.counted: set[str] = set()
        self.buffer = bytearray(BUFFER_SIZE)

    def run(self, plans: Sequence[CopyPlan]) -> None:
        existing = {image.canonical: image for image in self.writer.images()}
        to_copy: list[tuple[CopyPlan, CachedImage | None]] = []
        entries: list[CachedImage] = []
        for plan in plans:
            current = existing.get(plan.image.canonical)
            if current is not None and current.descriptor.digest != plan.image.descriptor.digest:
                if self.keep_existing:
                    self._keep(plan, current, entries)
                    continue
                log.warning(
                    "%s in %s is another image (manifest %s, image ID %s); the copy from %s "
                    "(manifest %s, image ID %s) replaces it (--keep-existing keeps it)",
                    plan.image.canonical,
                    self.writer.cache_dir,
                    current.descriptor.digest,
                    current.image_id or "unknown",
                    self.reader.cache_dir,
                    plan.image.descriptor.digest,
                    plan.image.image_id or "unknown",
                )
            to_copy.append((plan, current))
        missing = self._missing_sizes([plan for plan, _ in to_copy])
        _ensure_space(self.writer.cache_dir, missing)
        # What each image will copy, a blob shared by several counted for the first of them.
        sizes = [
            sum(missing.pop(b.descriptor.digest, 0) for b in plan.blobs) for plan, _ in to_copy
        ]
        total = sum(1 for size in sizes if size)
        number = 0
        copied: list[tuple[CopyPlan, ImageOutcome]] = []
        for position, ((plan, current), size) in enumerate(zip(to_copy, sizes, strict=True)):
            if size:
                number += 1
                self.progress.start_image(number, total, plan.image.canonical, size)
            try:
                new_bytes = self._copy_image(plan)
            except _SourceBlobError as err:
                self._fail_image(plan, err)
                continue
            except CacheError as err:
                self._stop(err, [p for p, _ in to_copy[position:]])
                break
            entry, status, detail = self._entry(plan, current, new_bytes)
            if entry is not None:
                entries.append(entry)
            outcome = image_outcome(plan.image, status, detail, plan.essential, new_bytes)
            copied.append((plan, outcome))
            if status in (COPIED, REPLACED, UPDATED):
                self.progress.finish_image(outcome)
        checkpoint("blobs-durable")
        if entries:
            try:
                self.writer.put_images(entries)
            except CacheError as err:
                # The blobs are durable and a rerun skips them; only the index could not change.
                message = f"couldn't record the copied images in {self.writer.cache_dir}: {err}"
                log.error("%s", message)
                self.report.error = self.report.error or message
                recorded = {entry.canonical for entry in entries}
                copied = [
                    (plan, image_outcome(plan.image, FAILED, message, plan.essential))
                    if plan.image.canonical in recorded
                    else (plan, outcome)
                    for plan, outcome in copied
                ]
        self.report.outcomes.extend(outcome for _, outcome in copied)

    def _keep(self, plan: CopyPlan, current: CachedImage, entries: list[CachedImage]) -> None:
        log.warning(
            "%s in %s is another image (manifest %s) than in %s (manifest %s); kept it "
            "(--keep-existing)",
            plan.image.canonical,
            self.writer.cache_dir,
            current.descriptor.digest,
            self.reader.cache_dir,
            plan.image.descriptor.digest,
        )
        refs = _union(current.refs, plan.image.refs)
        if refs != current.refs:
            entries.append(replace(current, refs=refs))
        detail = f"differs from the source's (manifest {plan.image.descriptor.digest})"
        self.report.outcomes.append(image_outcome(plan.image, KEPT, detail, plan.essential))

    def _entry(
        self, plan: CopyPlan, current: CachedImage | None, new_bytes: int
    ) -> tuple[CachedImage | None, str, str]:
        """The index entry to write (None: the current one stays), the outcome and its detail."""
        image = plan.image
        if current is None:
            return image, COPIED, ""
        refs = _union(current.refs, image.refs)
        if current.descriptor.digest != image.descriptor.digest:
            detail = f"was manifest {current.descriptor.digest}"
            return replace(image, refs=refs), REPLACED, detail
        if refs != current.refs:
            return replace(current, refs=refs), UPDATED, "refs added"
        if new_bytes:
            return None, UPDATED, "blobs it lacked added"
        return None, ALREADY_THERE, ""

    def _missing_sizes(self, plans: Sequence[CopyPlan]) -> dict[str, int]:
        """digest -> size of every blob the destination lacks (by name and size), each once,
        in the order the plans need them."""
        missing: dict[str, int] = {}
        for plan in plans:
            for reached in plan.blobs:
                digest = reached.descriptor.digest
                if digest not in missing and size_or_none(self.writer.blob_path(digest)) != (
                    reached.descriptor.size
                ):
                    missing[digest] = reached.descriptor.size
        return missing

    def _copy_image(self, plan: CopyPlan) -> int:
        """Copies what the destination lacks of one image, children before parents; returns
        the bytes written. A damaged source blob undoes this image's new blobs."""
        new_blobs: list[tuple[str, int]] = []  # digest, size
        written = 0
        try:
            for reached in reversed(plan.blobs):
                descriptor = reached.descriptor
                if descriptor.digest in self.counted:
                    continue  # this run copied it (or found it) for an earlier image
                if self._is_present(reached):
                    self.counted.add(descriptor.digest)
                    self.report.blobs_skipped += 1
                    self.report.bytes_skipped += descriptor.size
                    continue
                is_new = self._copy_blob(reached)
                self.counted.add(descriptor.digest)
                self.report.blobs_copied += 1
                self.report.bytes_copied += descriptor.size
                written += descriptor.size
                if is_new:
                    new_blobs.append((descriptor.digest, descriptor.size))
        except _SourceBlobError:
            # The destination stays as it was for this image: its new blobs go again, and
            # are neither counted as copied nor taken as present by a later image.
            self.writer.remove_blobs([digest for digest, _ in new_blobs])
            for digest, size in new_blobs:
                self.counted.discard(digest)
                self.report.blobs_copied -= 1
                self.report.bytes_copied -= size
            raise
        return written

    def _is_present(self, reached: ReachedBlob) -> bool:
        """The destination has the blob: the right size, as every write of the cache trusts it;
        manifests and indexes, which are read whole anyway, must also hash right."""
        descriptor = reached.descriptor
        path = self.writer.blob_path(descriptor.digest)
        if size_or_none(path) != descriptor.size:
            return False
        if reached.role not in (ROLE_INDEX, ROLE_MANIFEST):
            return True
        actual, _ = hash_file(path)
        if actual == descriptor.digest:
            return True
        log.warning(
            "blob %s in %s is corrupt (its content hashes to %s); copying it again",
            descriptor.digest,
            self.writer.cache_dir,
            actual,
        )
        self.writer.remove_blobs([descriptor.digest])
        return False

    def _copy_blob(self, reached: ReachedBlob) -> bool:
        """One blob into the destination, hashed as it streams; True if it was written anew."""
        descriptor = reached.descriptor
        document = self.stash.documents.get(descriptor.digest)
        with self.writer.blob_writer() as blob:
            if document is not None:
                blob.write(document)  # read and verified while the source was walked
                self.progress.add_bytes(len(document))
            else:
                self._stream(reached, blob.write)
            if blob.size != descriptor.size:
                raise _SourceBlobError(
                    reached, f"has {blob.size} bytes, expected {descriptor.size}"
                )
            if blob.digest != descriptor.digest:
                raise _SourceBlobError(reached, f"is corrupt: its content hashes to {blob.digest}")
            return blob.commit(descriptor.digest, descriptor.size).is_new

    def _stream(self, reached: ReachedBlob, write: Callable[[memoryview], int]) -> None:
        descriptor = reached.descriptor
        path = self.reader.blob_path(descriptor.digest)
        view = memoryview(self.buffer)
        size = 0
        try:
            with path.open("rb", buffering=0) as file:
                while count := file.readinto(self.buffer):
                    size += count
                    if size > descriptor.size:
                        # Stop before a blob that grew fills the destination.
                        raise _SourceBlobError(
                            reached, f"is longer than its {descriptor.size} bytes"
                        )
                    write(view[:count])
                    self.progress.add_bytes(count)
        except FileNotFoundError as err:
            raise _SourceBlobError(reached, "is missing") from err
        except OSError as err:
            cause = err.strerror or str(err)
            raise _SourceBlobError(reached, f"can't be read ({cause})") from err

    def _fail_image(self, plan: CopyPlan, err: _SourceBlobError) -> None:
        problem = f"blob {err.reached.descriptor.digest} ({err.reached.role}) {err.problem}"
        message = source_problem(plan.image.canonical, self.reader.cache_dir, problem)
        log.error("%s", message)
        outcome = image_outcome(plan.image, FAILED, message, plan.essential)
        self.report.outcomes.append(outcome)
        self.progress.finish_image(outcome)

    def _stop(self, err: CacheError, plans: Sequence[CopyPlan]) -> None:
        """The destination failed (full, read-only, I/O error): no other image can go there."""
        message = str(err)
        if _is_no_space(err):
            message = (
                f"couldn't copy {plans[0].image.canonical} to the image cache "
                f"{self.writer.cache_dir}: no space left on its filesystem; free some space "
                "there and run the command again (the blobs copied so far are kept)"
            )
        log.error("%s", message)
        self.report.error = message
        for number, plan in enumerate(plans):
            detail = message if number == 0 else "not copied: the destination failed"
            self.report.outcomes.append(image_outcome(plan.image, FAILED, detail, plan.essential))


# Helpers


def _check_source(cache_dir: Path) -> None:
    if not cache_dir.is_dir():
        raise CacheError(
            f"couldn't read the image cache {cache_dir}: "
            + ("not a directory" if cache_dir.exists() else "no such directory")
        )
    problem = layout_problem(cache_dir)
    if problem is not None:
        raise CacheError(f"couldn't read the image cache {cache_dir}: {problem}")


def _is_same_directory(first: Path, second: Path) -> bool:
    try:
        return os.path.samefile(first, second)
    except OSError:
        return first.resolve() == second.resolve()


def _distinct(plans: Sequence[CopyPlan]) -> dict[str, int]:
    return {b.descriptor.digest: b.descriptor.size for plan in plans for b in plan.blobs}


def _ensure_space(directory: Path, missing: dict[str, int]) -> None:
    if not missing:
        return
    needed = sum(missing.values()) + _BLOCK_SLACK * len(missing) + _INDEX_SLACK
    ensure_free_space(
        directory,
        needed,
        f"copying {len(missing)} blobs",
        action="copy images",
        hint="free some space or choose another destination",
    )


def _is_no_space(err: BaseException) -> bool:
    cause = err.__cause__
    return isinstance(cause, OSError) and is_no_space(cause)


def _union(first: Sequence[str], second: Sequence[str]) -> tuple[str, ...]:
    return tuple(sorted({*first, *second}))
