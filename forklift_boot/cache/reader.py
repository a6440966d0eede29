"""Reading the cache: its images, its blobs (verified as they are read), and its health."""

from __future__ import annotations

import io
import logging
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO

from forklift_boot.cache.blobs import DamagedBlobError, digest_hex, open_blob_file, open_verified
from forklift_boot.cache.descriptors import CachedImage, Descriptor
from forklift_boot.cache.files import kind_of, lstat_or_none
from forklift_boot.cache.index import IndexDocument, read_index
from forklift_boot.cache.json_limits import load_json
from forklift_boot.cache.layout import blobs_dir, check_directories
from forklift_boot.cache.verify import verify_cache
from forklift_boot.cache.walk import walk_blobs
from forklift_boot.errors import CacheError

__all__ = ["MAX_JSON_BLOB_SIZE", "CacheReader"]

log = logging.getLogger(__name__)

# Manifests, indexes and configs are small; anything bigger is not one, and stays on disk.
MAX_JSON_BLOB_SIZE = 4 << 20


class CacheReader:
    """A view of the cache while ImageCache holds its lock; unusable once the lock is released."""

    def __init__(self, cache_dir: Path) -> None:
        check_directories(cache_dir)
        self.cache_dir = cache_dir
        self._blobs_dir = blobs_dir(cache_dir)
        self._is_open = True

    def close(self) -> None:
        """Called by ImageCache when it releases the lock."""
        self._is_open = False

    # --- images -------------------------------------------------------------------------

    def images(self) -> list[CachedImage]:
        """forklift-boot's images, by canonical name; entries of other tools are left out."""
        images: list[CachedImage] = []
        for number, entry in enumerate(self._read_index().entries):
            try:
                image = CachedImage.from_entry(entry, f"index.json entry {number}")
            except (CacheError, ValueError) as err:
                # One bad entry must not hide the other images; `verify` reports it.
                log.warning("ignoring an entry of %s/index.json: %s", self.cache_dir, err)
                continue
            if image is not None:
                images.append(image)
        return sorted(images, key=lambda image: image.canonical)

    def find(self, canonical: str) -> CachedImage | None:
        return next((i for i in self.images() if i.canonical == canonical), None)

    def referenced_blobs(self, image: CachedImage) -> list[Descriptor]:
        """Every blob ``image`` needs, root first: the index if any, then per cached platform
        its manifest, config and layers. CacheError if any of them is missing or damaged."""
        walk = walk_blobs(self, image.descriptor)
        problem = walk.image_problem()
        if problem is not None:
            raise CacheError(
                f"couldn't read {image.canonical} from the image cache {self.cache_dir}: {problem}"
            )
        return [reached.descriptor for reached in walk.reached]

    # --- blobs --------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        """Where the blob lives (or would live); CacheError for a digest that isn't sha256."""
        return self._blobs_dir / digest_hex(digest)

    def has_blob(self, digest: str) -> bool:
        """Whether the blob is there; DamagedBlobError if its name is taken by anything but a
        regular file (a link is never followed: it could lead out of the cache)."""
        self._check_open()
        return self._blob_stat(digest) is not None

    def blob_size(self, digest: str) -> int:
        self._check_open()
        found = self._blob_stat(digest)
        if found is None:
            raise DamagedBlobError(digest, "is missing", self.cache_dir)
        return found.st_size

    def _blob_stat(self, digest: str) -> os.stat_result | None:
        found = lstat_or_none(self.blob_path(digest))
        if found is not None and not stat.S_ISREG(found.st_mode):
            raise DamagedBlobError(
                digest, f"is {kind_of(found.st_mode)}, not a regular file", self.cache_dir
            )
        return found

    def open_blob(
        self, digest: str, *, verify: bool = True, expected_size: int | None = None
    ) -> BinaryIO:
        """Open a blob for streaming.

        With ``verify``, the reader hashes what passes through it; reaching the end raises
        DamagedBlobError if the bytes don't match ``digest`` (or ``expected_size``), and a
        blob that grows past ``expected_size`` fails at once.
        """
        self._check_open()
        path = self.blob_path(digest)
        if verify:
            return open_verified(path, digest, expected_size, self.cache_dir)
        return io.BufferedReader(open_blob_file(path, digest, self.cache_dir))

    def read_json(self, digest: str, *, expected_size: int | None = None) -> Any:
        """A manifest, index or config blob, parsed after its digest has been checked."""
        return self.read_document(digest, expected_size=expected_size)[1]

    def read_document(self, digest: str, *, expected_size: int | None = None) -> tuple[bytes, Any]:
        """A manifest, index or config blob: its bytes, their digest checked, and their JSON."""
        size = self.blob_size(digest)
        if size > MAX_JSON_BLOB_SIZE:
            raise DamagedBlobError(
                digest,
                "is larger than 4 MiB, too large for a manifest, index or config",
                self.cache_dir,
            )
        with self.open_blob(digest, expected_size=expected_size) as file:
            # Reading to the end runs the digest check.
            data = file.read(MAX_JSON_BLOB_SIZE + 1)
        if len(data) > MAX_JSON_BLOB_SIZE:  # it grew since the stat
            raise DamagedBlobError(digest, "is larger than 4 MiB", self.cache_dir)
        try:
            return data, load_json(data)
        except ValueError as err:
            raise DamagedBlobError(digest, f"isn't valid JSON ({err})", self.cache_dir) from err

    # --- health -------------------------------------------------------------------------

    def verify(self) -> list[str]:
        """One message per problem; an empty list means the cache is sound.

        Every blob that an entry reaches is hashed in full, so this reads the whole cache.
        """
        self._check_open()
        return verify_cache(self)

    def _read_index(self) -> IndexDocument:
        self._check_open()
        return read_index(self.cache_dir)

    def _check_open(self) -> None:
        if not self._is_open:
            raise CacheError(
                f"the image cache {self.cache_dir} was used after its lock was released"
            )
