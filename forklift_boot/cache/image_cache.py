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
from forklift_boot.cache.lock import hold_lock
from forklift_boot.cache.reader import CacheReader
from forklift_boot.cache.writer import CacheWriter
from forklift_boot.errors import CacheError

__all__ = ["ImageCache"]

log = logging.getLogger(__name__)

DEFAULT_LOCK_TIMEOUT = 60.0


class ImageCache:
    """One OCI image layout directory shared by every cached image.

    Readers share a lock and writers hold it alone, so garbage collection never removes
    a blob that someone is reading.
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
    def writing(self, timeout: float = DEFAULT_LOCK_TIMEOUT) -> Iterator[CacheWriter]:
        """A writer under the exclusive lock; creates the layout if needed and sweeps the
        temporaries that an interrupted writer left."""
        if self.cache_dir.is_dir() and not (self.cache_dir / OCI_LAYOUT_FILE).exists():
            # Checked before the lock too, so a mistyped --cache-dir doesn't get a lock file.
            refuse_foreign_directory(self.cache_dir)
        make_directories(self.cache_dir)
        with hold_lock(self.cache_dir / LOCK_FILE, exclusive=True, timeout=timeout):
            create_layout(self.cache_dir)
            swept = sweep_temporaries(self.cache_dir)
            if swept:
                log.info("removed %d leftover temporary files from %s", swept, self.cache_dir)
            writer = CacheWriter(self.cache_dir)
            try:
                yield writer
            finally:
                writer.close()
