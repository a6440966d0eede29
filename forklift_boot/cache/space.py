"""Free-space checks before a step fills a filesystem, and byte counts for people."""

from __future__ import annotations

import os
from pathlib import Path

import psutil

from forklift_boot.cache.durable import cache_os_error
from forklift_boot.errors import CacheError

__all__ = ["ensure_free_space", "human_bytes"]

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def ensure_free_space(
    directory: Path,
    needed_bytes: int,
    what: str,
    *,
    action: str = "cache images",
    hint: str = "free some space or choose another --cache-dir",
) -> None:
    """Raise CacheError before writing ``needed_bytes`` under ``directory`` would fill its disk.

    ``directory`` need not exist yet: the filesystem is that of its nearest existing parent.
    """
    existing = directory.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        free = psutil.disk_usage(str(existing)).free
    except OSError as err:
        raise cache_os_error("measure free space on", existing, err) from err
    if free >= needed_bytes:
        return
    mount_point = _mount_point(existing)
    raise CacheError(
        f"couldn't {action}: {what} needs {human_bytes(needed_bytes)} but only"
        f" {human_bytes(free)} are free on {mount_point} (the filesystem of {directory}); {hint}"
    )


def human_bytes(n: int) -> str:
    """``512 B``, ``1.2 GiB``, ``300 MiB``: binary units, one decimal below 10."""
    if abs(n) < 1024:
        return f"{n} B"
    value = float(n)
    for unit in _UNITS[1:]:
        value /= 1024
        text = f"{value:.1f}" if abs(value) < 9.95 else f"{value:.0f}"
        # Rounding may reach the next unit: 1023.9 KiB reads better as 1.0 MiB.
        if abs(float(text)) < 1024 or unit == _UNITS[-1]:
            return f"{text} {unit}"
    raise AssertionError("unreachable")  # the last unit always returns


def _mount_point(path: Path) -> Path:
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path
