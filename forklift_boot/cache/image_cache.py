"""ImageCache: the entry point that locks the cache directory and hands out readers and writers."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from forklift_boot.cache.durable import make_directories
from forklift_boot.cache.layout import (
    LOCK_FILE,
    OCI_LAYOUT_FILE,
    create_layout,
    refuse_foreign_directory,
    sweep_temporaries,
)
from forklift_boot.cache.lock import (
    DEFAULT_LOCK_TIMEOUT,
    hold_commit_lock,
    hold_lock,
    hold_write_lock,
)
from forklift_boot.cache.reader import CacheReader
from forklift_boot.cache.writer import CacheWriter
from forklift_boot.errors import CacheError

__all__ = ["DEFAULT_LOCK_TIMEOUT", "ImageCache"]

log = logging.getLogger(__name__)


class ImageCache:
    """One OCI image layout directory shared by every cached image.

    Readers share the cache lock. Writers share it too while they add blobs (each is written
    to a temporary of its own and renamed), and replace index.json one at a time under the
    commit lock; what deletes blobs (garbage collection, repairs, the sweep of temporaries)
    holds the cache lock alone, so it never removes a blob that someone is reading or a
    writer has stored but not yet recorded, nor a writer's temporary.
    """

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir

    @contextmanager
    def reading(self, timeout: float = DEFAULT_LOCK_TIMEOUT) -> Iterator[CacheReader]:
        """A reader under the shared lock. A cache directory that doesn't exist reads as an
        empty cache and is not created."""
        if self.cache_dir.exists() and not self.cache_dir.is_dir():
            raise CacheError(f"couldn't read the image cache {self.cache_dir}: not a directory")
        reader = CacheReader(self.cache_dir)
        try:
            if not self.cache_dir.exists():
                yield reader
                return
            with hold_lock(self.cache_dir / LOCK_FILE, exclusive=False, timeout=timeout):
                yield reader
        finally:
            reader.close()

    @contextmanager
    def writing(
        self, timeout: float = DEFAULT_LOCK_TIMEOUT, *, exclusive: bool = True
    ) -> Iterator[CacheWriter]:
        """A writer; creates the layout if needed and sweeps the temporaries that an
        interrupted writer left.

        ``exclusive`` holds the cache lock alone for the whole block, as garbage collection
        and repairs need. Without it the lock is shared, so readers and other writers go on
        while this one waits on a network or a daemon: it may add blobs and entries (and
        remove blobs no entry needs), not collect garbage. It sweeps only if it finds the
        cache unused when it starts: another writer's temporaries may be in flight.
        """
        if self.cache_dir.is_dir() and not (self.cache_dir / OCI_LAYOUT_FILE).exists():
            # Checked before the lock too, so a mistyped --cache-dir doesn't get a lock file.
            refuse_foreign_directory(self.cache_dir)
        make_directories(self.cache_dir)
        lock_path = self.cache_dir / LOCK_FILE
        if exclusive:
            with hold_lock(lock_path, exclusive=True, timeout=timeout):
                self._prepare(timeout, sweep=True)
                with self._writer(timeout, exclusive=True) as writer:
                    yield writer
            return
        with hold_write_lock(lock_path) as lock:
            if lock.try_exclusive():
                self._prepare(timeout, sweep=True)
                # Nothing is written yet, so the moment flock may hold nothing is harmless.
                lock.share(timeout)
            else:
                lock.share(timeout)
                self._prepare(timeout, sweep=False)
            with self._writer(timeout, exclusive=False) as writer:
                yield writer

    def _prepare(self, timeout: float, *, sweep: bool) -> None:
        # Under the commit lock: a writer sharing the cache lock may be replacing index.json.
        with hold_commit_lock(self.cache_dir, timeout=timeout):
            create_layout(self.cache_dir)
        if not sweep:
            log.debug("not sweeping %s: another forklift-boot is using it", self.cache_dir)
            return
        swept = sweep_temporaries(self.cache_dir)
        if swept:
            log.info("removed %d leftover temporary files from %s", swept, self.cache_dir)

    @contextmanager
    def _writer(self, timeout: float, *, exclusive: bool) -> Iterator[CacheWriter]:
        writer = CacheWriter(self.cache_dir, exclusive=exclusive, lock_timeout=timeout)
        try:
            yield writer
        finally:
            writer.close()
