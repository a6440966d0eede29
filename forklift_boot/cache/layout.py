"""The OCI image layout on disk: creating it, checking it, and sweeping leftover temporaries."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from forklift_boot.cache.durable import (
    TEMP_MARKER,
    cache_os_error,
    fsync_directory,
    make_directories,
    write_file_atomically,
)
from forklift_boot.cache.files import FOREIGN_HINT, kind_of, lstat_or_none, read_small_file
from forklift_boot.cache.index import INDEX_FILE, IndexDocument, write_index
from forklift_boot.cache.json_limits import load_json
from forklift_boot.errors import CacheError

__all__ = [
    "LOCK_FILE",
    "OCI_LAYOUT_FILE",
    "blobs_dir",
    "check_directories",
    "create_layout",
    "find_temporaries",
    "layout_problem",
    "refuse_foreign_directory",
    "sweep_temporaries",
]

OCI_LAYOUT_FILE = "oci-layout"
LOCK_FILE = ".lock"
_LAYOUT_VERSION = "1.0.0"
# Byte for byte what skopeo and containerd write.
_LAYOUT_CONTENT = json.dumps({"imageLayoutVersion": _LAYOUT_VERSION}).encode()
_TOP_LEVEL_FILES = (INDEX_FILE, OCI_LAYOUT_FILE)
# oci-layout holds one short field; a cache from a stick might hold a file of any size there.
_MAX_LAYOUT_SIZE = 64 << 10


def blobs_dir(cache_dir: Path) -> Path:
    return cache_dir / "blobs" / "sha256"


def check_directories(cache_dir: Path) -> None:
    """Refuse a layout whose ``blobs`` or ``blobs/sha256`` is a link or no directory.

    Blobs are written, read and deleted through these directories, so a link there (a stick
    pointing it at the device's own cache) would lead every one of those out of the cache.
    The cache directory itself may be a link: an administrator's choice, not the layout's.
    """
    for path in (cache_dir / "blobs", blobs_dir(cache_dir)):
        found = lstat_or_none(path)
        if found is None:
            return
        if not stat.S_ISDIR(found.st_mode):
            raise CacheError(
                f"couldn't use {cache_dir} as the image cache: {path.relative_to(cache_dir)}"
                f" is {kind_of(found.st_mode)}, not a directory; {FOREIGN_HINT}"
            )


def create_layout(cache_dir: Path) -> None:
    """Create whatever part of the layout is missing; refuse a directory that isn't one."""
    make_directories(cache_dir)
    check_directories(cache_dir)
    layout_path = cache_dir / OCI_LAYOUT_FILE
    if layout_path.exists():
        problem = layout_problem(cache_dir)
        if problem is not None:
            raise CacheError(f"couldn't use {cache_dir} as the image cache: {problem}")
    else:
        refuse_foreign_directory(cache_dir)
        # oci-layout first: from then on the directory is recognisably a layout, even if
        # a crash stops the rest.
        write_file_atomically(layout_path, _LAYOUT_CONTENT)
    make_directories(blobs_dir(cache_dir))
    if not (cache_dir / INDEX_FILE).exists():
        write_index(cache_dir, IndexDocument())


def layout_problem(cache_dir: Path) -> str | None:
    """What is wrong with ``<cache_dir>/oci-layout``, or None."""
    path = cache_dir / OCI_LAYOUT_FILE
    try:
        layout = load_json(read_small_file(path, _MAX_LAYOUT_SIZE, OCI_LAYOUT_FILE))
    except FileNotFoundError:
        return f"{OCI_LAYOUT_FILE} is missing"
    except CacheError as err:
        return str(err)
    except ValueError as err:
        return f"{OCI_LAYOUT_FILE} isn't valid JSON ({err})"
    version = layout.get("imageLayoutVersion") if isinstance(layout, dict) else None
    if version != _LAYOUT_VERSION:
        return f"{OCI_LAYOUT_FILE} says imageLayoutVersion {version!r}, expected {_LAYOUT_VERSION}"
    return None


def find_temporaries(cache_dir: Path) -> list[Path]:
    """Files that an interrupted write left behind."""
    found: list[Path] = []
    try:
        blobs = blobs_dir(cache_dir)
        if blobs.is_dir():
            found.extend(p for p in blobs.iterdir() if p.name.startswith(TEMP_MARKER))
        if cache_dir.is_dir():
            found.extend(
                p
                for p in cache_dir.iterdir()
                if any(p.name.startswith(name + TEMP_MARKER) for name in _TOP_LEVEL_FILES)
            )
    except OSError as err:
        raise cache_os_error("list", cache_dir, err) from err
    return sorted(found)


def sweep_temporaries(cache_dir: Path) -> int:
    """Delete leftover temporaries; only safe under the exclusive lock. Returns their number."""
    check_directories(cache_dir)  # never delete through a link
    temporaries = find_temporaries(cache_dir)
    for path in temporaries:
        try:
            path.unlink(missing_ok=True)
        except OSError as err:
            raise cache_os_error("remove leftover temporary file", path, err) from err
    for directory in {path.parent for path in temporaries}:
        fsync_directory(directory)
    return len(temporaries)


def refuse_foreign_directory(cache_dir: Path) -> None:
    """Never turn a directory of someone's files (a mistyped --cache-dir) into a cache."""
    try:
        names = [
            p.name
            for p in cache_dir.iterdir()
            if p.name != LOCK_FILE
            and not any(p.name.startswith(n + TEMP_MARKER) for n in _TOP_LEVEL_FILES)
        ]
    except OSError as err:
        raise cache_os_error("list", cache_dir, err) from err
    if names:
        raise CacheError(
            f"couldn't use {cache_dir} as the image cache: it holds other files"
            f" ({', '.join(sorted(names)[:3])}) and no {OCI_LAYOUT_FILE};"
            " choose an empty directory or another --cache-dir"
        )
