"""Changing the cache: blobs, index entries under the commit lock, garbage and repairs alone."""

from __future__ import annotations

import logging
import re
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from forklift_boot.cache.blob_writer import BlobWriter
from forklift_boot.cache.blobs import hash_file
from forklift_boot.cache.descriptors import CachedImage, Descriptor
from forklift_boot.cache.durable import cache_os_error, fsync_directory
from forklift_boot.cache.files import NotRegularFileError
from forklift_boot.cache.index import entry_names, write_index
from forklift_boot.cache.layout import check_directories
from forklift_boot.cache.lock import DEFAULT_LOCK_TIMEOUT, hold_commit_lock
from forklift_boot.cache.reader import CacheReader
from forklift_boot.cache.walk import BlobWalk, walk_blobs
from forklift_boot.errors import CacheError

__all__ = ["CacheWriter"]

log = logging.getLogger(__name__)

_BLOB_NAME = re.compile(r"[a-f0-9]{64}")


class CacheWriter(CacheReader):
    """A reader that may also change the cache, under the lock ImageCache.writing() holds:
    exclusive, or shared with readers and other writers (``exclusive`` False), when it may
    add blobs and entries but not collect garbage or repair."""

    def __init__(
        self,
        cache_dir: Path,
        *,
        exclusive: bool = True,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    ) -> None:
        super().__init__(cache_dir)
        self.exclusive = exclusive
        self._lock_timeout = lock_timeout

    @contextmanager
    def blob_writer(self, *, source_checks: str | None = None) -> Iterator[BlobWriter]:
        """A BlobWriter whose temporary is removed on leaving the block unless committed
        (``source_checks``: see BlobWriter)."""
        self._check_open()
        writer = BlobWriter(self._blobs_dir, source_checks=source_checks)
        try:
            yield writer
        finally:
            writer.discard()

    def write_blob(self, data: bytes, media_type: str) -> Descriptor:
        """Store a small blob (a manifest, index or config) durably; returns its descriptor."""
        with self.blob_writer() as writer:
            writer.write(data)
            return writer.commit().to_descriptor(media_type)

    def put_images(self, images: Sequence[CachedImage]) -> None:
        """Add entries, replacing any entry of the same name; all their blobs must be present.

        index.json is replaced in one atomic step, after every blob it names is durable
        (blob commits fsync as they go). Entries of other names stay byte for byte.
        """
        names = [image.canonical for image in images]
        if len(set(names)) != len(names):
            raise ValueError(f"put_images got a canonical name twice: {names}")
        with self._committing():
            # Checked under the commit lock: a sharing writer's remove_blobs waits for it.
            for image in images:
                problem = walk_blobs(self, image.descriptor).image_problem()
                if problem is not None:
                    raise CacheError(
                        f"couldn't add {image.canonical} to the image cache {self.cache_dir}:"
                        f" {problem}"
                    )
            document = self._read_index()
            replaced = set(names)
            kept = [entry for entry in document.entries if not entry_names(entry) & replaced]
            document.entries = kept + [image.to_entry() for image in images]
            write_index(self.cache_dir, document)

    def remove_images(self, canonicals: Sequence[str]) -> list[str]:
        """Drop the entries of these names (blobs stay until collect_garbage); returns the
        names that were present."""
        with self._committing():
            document = self._read_index()
            wanted = set(canonicals)
            removed = sorted({name for e in document.entries for name in entry_names(e) & wanted})
            if removed:
                document.entries = [e for e in document.entries if not entry_names(e) & wanted]
                write_index(self.cache_dir, document)
        return removed

    def remove_blobs(self, digests: Sequence[str]) -> None:
        """Delete these blobs, which the caller knows no entry needs (e.g. just written).

        Sharing the cache, another writer may have recorded the same blob meanwhile (its
        commit found this one's copy): blobs an entry reaches are kept then, and all of them
        if an entry can't be followed. Under the commit lock, so no entry is recorded while.
        """
        check_directories(self.cache_dir)  # never delete through a link
        with self._committing():
            if not self.exclusive:
                try:
                    reachable = self._reachable_digests()
                except CacheError as err:
                    log.debug("keeping unused blobs for garbage collection: %s", err)
                    return
                digests = [digest for digest in digests if digest not in reachable]
            for digest in digests:
                path = self.blob_path(digest)
                try:
                    path.unlink(missing_ok=True)
                except OSError as err:
                    raise cache_os_error("remove unused blob", path, err) from err
            if digests:
                fsync_directory(self._blobs_dir)

    def collect_garbage(self) -> int:
        """Delete the blobs that no index.json entry reaches; returns the bytes freed.

        Every entry counts, other tools' too. If an entry can't be followed to the end (a
        damaged manifest), nothing is deleted: its layers might be the ones still needed.
        """
        self._require_exclusive("collect garbage in")
        reachable = self._reachable_digests()
        check_directories(self.cache_dir)  # never delete through a link
        freed = 0
        removed = 0
        for path in self._blob_files():
            if f"sha256:{path.name}" in reachable:
                continue
            try:
                size = path.stat().st_size
                path.unlink()
            except OSError as err:
                raise cache_os_error("remove unused blob", path, err) from err
            freed += size
            removed += 1
        if removed:
            fsync_directory(self._blobs_dir)
            log.info("removed %d unused blobs from %s", removed, self.cache_dir)
        return freed

    def repair(self) -> list[str]:
        """Delete every reachable blob whose bytes don't match its digest; returns their digests.

        The entries stay, so the next cache-img fetches those blobs again.
        """
        self._require_exclusive("repair")
        check_directories(self.cache_dir)  # never delete through a link
        removed: list[str] = []
        checked: set[str] = set()
        for _, walk in self._walk_entries(skip_invalid=True):
            missing = {reached.descriptor.digest for reached in walk.missing}
            for reached in walk.reached:
                digest = reached.descriptor.digest
                if digest in checked or digest in missing:
                    continue
                checked.add(digest)
                try:
                    path = self.blob_path(digest)
                except CacheError:
                    continue  # an unsupported digest names no blob of ours
                try:
                    actual, _ = hash_file(path)
                except NotRegularFileError:
                    actual = None  # a link in place of a blob: removed, never followed
                if actual != digest:
                    try:
                        path.unlink()
                    except OSError as err:
                        raise cache_os_error("remove damaged blob", path, err) from err
                    removed.append(digest)
        if removed:
            fsync_directory(self._blobs_dir)
            log.warning("removed %d damaged blobs from %s", len(removed), self.cache_dir)
        return removed

    @contextmanager
    def _committing(self) -> Iterator[None]:
        self._check_open()
        with hold_commit_lock(self.cache_dir, timeout=self._lock_timeout):
            yield

    def _require_exclusive(self, action: str) -> None:
        if not self.exclusive:
            # A writer sharing the cache may not delete: others' stored blobs aren't recorded yet.
            raise CacheError(
                f"couldn't {action} the image cache {self.cache_dir}: it needs the cache alone"
                " (ImageCache.writing(exclusive=True))"
            )

    def _reachable_digests(self) -> set[str]:
        reachable: set[str] = set()
        for label, walk in self._walk_entries():
            if not walk.is_complete:
                raise CacheError(
                    f"couldn't collect garbage in the image cache {self.cache_dir}: {label} can't"
                    f" be followed ({walk.describe_problems()}); run `forklift-boot cache verify`"
                )
            reachable.update(reached.descriptor.digest for reached in walk.reached)
        return reachable

    def _walk_entries(self, *, skip_invalid: bool = False) -> Iterator[tuple[str, BlobWalk]]:
        for number, entry in enumerate(self._read_index().entries):
            label = " or ".join(sorted(entry_names(entry))) or f"index.json entry {number}"
            try:
                root = Descriptor.from_json(entry, f"index.json entry {number} ({label})")
            except CacheError:
                # What such an entry points at is unknown: fatal for GC, skipped by repair.
                if skip_invalid:
                    continue
                raise
            yield label, walk_blobs(self, root)

    def _blob_files(self) -> list[Path]:
        try:
            return sorted(
                path
                for path in self._blobs_dir.iterdir()
                # Temporaries and unknown files are not blobs; the sweep handles the former.
                if _BLOB_NAME.fullmatch(path.name) and stat.S_ISREG(path.lstat().st_mode)
            )
        except FileNotFoundError:
            return []
        except OSError as err:
            raise cache_os_error("list", self._blobs_dir, err) from err
