"""Crash-safe file operations for the cache, and OSError translated into CacheError."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path

from forklift_boot.errors import CacheError
from forklift_boot.faults import checkpoint

__all__ = [
    "TEMP_MARKER",
    "cache_os_error",
    "fsync_directory",
    "is_no_space",
    "make_directories",
    "remove_quietly",
    "size_or_none",
    "temporary_name",
    "write_file_atomically",
]

# Every temporary the cache creates has this in its name, so a later writer can sweep it.
TEMP_MARKER = ".tmp-"

_NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def cache_os_error(action: str, path: Path, err: OSError) -> CacheError:
    """``couldn't <action> <path>: <cause>``, with a hint when the disk is full."""
    if is_no_space(err):
        cause = "no space left on device" if err.errno == errno.ENOSPC else "disk quota exceeded"
        return CacheError(
            f"couldn't {action} {path}: {cause}; free some space or choose another --cache-dir"
        )
    cause = err.strerror or str(err) or type(err).__name__
    return CacheError(f"couldn't {action} {path}: {cause[:1].lower()}{cause[1:]}")


def is_no_space(err: OSError) -> bool:
    """The filesystem is full, or the quota used up."""
    return err.errno in _NO_SPACE_ERRNOS


def temporary_name(final_name: str = "") -> str:
    """A fresh temporary name, e.g. ``index.json.tmp-1f2e...`` or ``.tmp-1f2e...``."""
    return f"{final_name}{TEMP_MARKER}{secrets.token_hex(8)}"


def fsync_directory(directory: Path) -> None:
    """Make renames and unlinks in ``directory`` durable."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as err:
        raise cache_os_error("sync directory", directory, err) from err


def make_directories(directory: Path) -> None:
    """``mkdir -p`` that also makes every new directory entry durable."""
    missing: list[Path] = []
    for path in (directory, *directory.parents):
        if path.is_dir():
            break
        missing.append(path)
    for path in reversed(missing):
        try:
            path.mkdir(exist_ok=True)
        except OSError as err:
            raise cache_os_error("create directory", path, err) from err
        fsync_directory(path.parent)


def write_file_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: temporary file, fsync, rename, fsync the directory.

    A crash at any point leaves either the old file or the new one, never a mix.
    """
    temp_path = path.with_name(temporary_name(path.name))
    try:
        fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        checkpoint(f"{path.name}-temp-written")
        os.replace(temp_path, path)
    except OSError as err:
        remove_quietly(temp_path)
        raise cache_os_error("write", path, err) from err
    checkpoint(f"{path.name}-renamed")
    fsync_directory(path.parent)


def remove_quietly(path: Path) -> None:
    """Best-effort cleanup on an error path, where the first error is the one to report."""
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def size_or_none(path: Path) -> int | None:
    """The size of the regular file ``path``; None if there is none. A link, a pipe or a
    device in its place counts as no file: it is never followed, and a write replaces it."""
    try:
        found = path.lstat()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise cache_os_error("read", path, err) from err
    return found.st_size if stat.S_ISREG(found.st_mode) else None
