"""What the image cache serves, by repository: CacheCatalog, rebuilt from index.json.

Reads take no lock, by design. A request's answer comes from one open descriptor of one blob
file, and the cache never changes a blob file in place: blobs are written under a temporary
name, fsynced and renamed to their digest; index.json is replaced by a rename; `cache del-img`,
gc and `verify --repair` only unlink. An open descriptor keeps reading the complete file it
opened, so a response is never half a file, whatever a writer does meanwhile; a blob deleted
before it was opened is a 404, as on any registry. Taking the shared lock per request would add
nothing to that and would stall every pull for as long as a `cache-img` holds the exclusive lock.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from forklift_boot.cache import CacheReader, Descriptor
from forklift_boot.cache.walk import ROLE_INDEX, ROLE_MANIFEST, walk_blobs
from forklift_boot.errors import CacheError, ImageRefError, printable
from forklift_boot.exchange.serve.api import DIGEST_RE
from forklift_boot.refs import parse_image_ref

__all__ = ["CacheCatalog", "ServedRepository"]

log = logging.getLogger(__name__)


@dataclass
class ServedRepository:
    """One repository as served: its tags, the manifests and blobs its images reach."""

    tags: dict[str, Descriptor] = field(default_factory=dict)
    manifests: dict[str, str] = field(default_factory=dict)  # digest -> media type
    blobs: set[str] = field(default_factory=set)


class CacheCatalog:
    """The cache's images by repository, rebuilt whenever index.json is replaced."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir
        self._lock = threading.Lock()
        self._version: tuple[int, ...] | None = None
        self._repositories: dict[str, ServedRepository] = {}

    def repositories(self) -> dict[str, ServedRepository]:
        """Canonical repository name -> what it serves; CacheError if index.json is unreadable."""
        with self._lock:
            version = self._index_version()
            if version != self._version or version is None:
                self._repositories = self._build()
                self._version = version
            return self._repositories

    def _index_version(self) -> tuple[int, ...] | None:
        # index.json is only ever replaced by a rename: a new inode means new contents.
        try:
            info = os.stat(self.cache_dir / "index.json")
        except FileNotFoundError:
            return None
        except OSError as err:
            raise CacheError(f"couldn't read {self.cache_dir}/index.json: {err.strerror}") from err
        return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)

    def _build(self) -> dict[str, ServedRepository]:
        # A reader without ImageCache's lock: see the module docstring.
        reader = CacheReader(self.cache_dir)
        repositories: dict[str, ServedRepository] = {}
        pinned_tags: dict[tuple[str, str], Descriptor] = {}
        for image in reader.images():
            try:
                ref = parse_image_ref(image.canonical)
            except ImageRefError as err:
                # A foreign cache's name may hold escape sequences: never printed raw.
                log.warning(
                    "not serving %s from the image cache: %s",
                    printable(image.canonical),
                    printable(str(err)),
                )
                continue
            # A document nested too deeply is a damaged blob of this image (cache.json_limits).
            walk = walk_blobs(reader, image.descriptor)
            problem = walk.image_problem()
            if problem is not None:
                log.warning(
                    "not serving %s from the image cache %s: %s; run `forklift-boot cache verify"
                    " --repair`",
                    image.canonical,
                    self.cache_dir,
                    problem,
                )
                continue
            repository = repositories.setdefault(ref.name, ServedRepository())
            missing = {reached.descriptor.digest for reached in walk.missing}
            for reached in walk.reached:
                digest = reached.descriptor.digest
                if digest in missing:
                    continue
                repository.blobs.add(digest)
                if reached.role in (ROLE_INDEX, ROLE_MANIFEST):
                    repository.manifests.setdefault(digest, reached.descriptor.media_type)
            if ref.tag is None:
                continue
            if ref.digest is None:
                # A plain tag entry says what the tag is now; it wins over pinned ones.
                repository.tags[ref.tag] = image.descriptor
            else:
                pinned_tags.setdefault((ref.name, ref.tag), image.descriptor)
        for (name, tag), descriptor in pinned_tags.items():
            repositories[name].tags.setdefault(tag, descriptor)
        log.debug(
            "serving %d repositories from %s",
            len(repositories),
            self.cache_dir,
        )
        return repositories

    def open_blob(self, digest: str) -> BinaryIO | None:
        """The blob file opened for reading, or None if the cache doesn't have it.

        ``digest`` must have been checked against the strict sha256 pattern. Symbolic links and
        anything but a regular file are refused: only what the cache wrote is served.
        """
        if DIGEST_RE.fullmatch(digest) is None:
            raise ValueError(f"unchecked digest {digest!r}")
        path = self.cache_dir / "blobs" / "sha256" / digest.removeprefix("sha256:")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as err:
            if err.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
                return None
            raise CacheError(f"couldn't open {path}: {err.strerror}") from err
        file = os.fdopen(fd, "rb", buffering=0)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            file.close()
            return None
        return file
