"""Checking a whole cache: layout, index, every reachable blob hashed in full, leftovers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from forklift_boot.cache.blobs import hash_file
from forklift_boot.cache.descriptors import Descriptor
from forklift_boot.cache.durable import cache_os_error
from forklift_boot.cache.index import entry_name, read_index
from forklift_boot.cache.layout import LOCK_FILE, find_temporaries, layout_problem
from forklift_boot.cache.walk import walk_blobs
from forklift_boot.errors import CacheError

if TYPE_CHECKING:
    from forklift_boot.cache.reader import CacheReader

__all__ = ["verify_cache"]


def verify_cache(reader: CacheReader) -> list[str]:
    """One message per problem found; empty when the cache is sound (or doesn't exist)."""
    cache_dir = reader.cache_dir
    if not cache_dir.is_dir() or _is_empty(cache_dir):
        return []  # no cache yet is an empty cache, not a broken one
    problems: list[str] = []
    layout = layout_problem(cache_dir)
    if layout is not None:
        problems.append(layout)
    problems += [
        f"leftover temporary file {path.relative_to(cache_dir)} (from an interrupted write;"
        " the next cache-img removes it)"
        for path in find_temporaries(cache_dir)
    ]
    try:
        document = read_index(cache_dir)
    except CacheError as err:
        return [*problems, str(err)]

    checked: set[str] = set()
    for number, entry in enumerate(document.entries):
        label = entry_name(entry) or f"index.json entry {number}"
        try:
            root = Descriptor.from_json(entry, f"index.json entry {number} ({label})")
        except CacheError as err:
            problems.append(str(err))
            continue
        walk = walk_blobs(reader, root)
        missing = {reached.descriptor.digest for reached in walk.missing}
        for reached in walk.reached:
            digest = reached.descriptor.digest
            if digest in checked:
                continue  # a layer shared by several images is reported once
            checked.add(digest)
            where = f"blob {digest} ({reached.role} of {label})"
            if digest in walk.damaged:
                problems.append(f"{where} {walk.damaged[digest]}")
            elif digest in missing:
                problems.append(f"{where} is missing")
            elif digest not in walk.verified:
                actual, _ = hash_file(reader.blob_path(digest))
                if actual != digest:
                    problems.append(f"{where} is corrupt: its content hashes to {actual}")
        if walk.is_complete and walk.is_index_root and not walk.manifest_count:
            problems.append(f"{label}: none of the manifests its image index lists is cached")
    return problems


def _is_empty(cache_dir: Path) -> bool:
    try:
        return all(path.name == LOCK_FILE for path in cache_dir.iterdir())
    except OSError as err:
        raise cache_os_error("list", cache_dir, err) from err
