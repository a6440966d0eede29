"""Opening a cache's files as what they must be: regular files, no links followed, bounded reads.

A cache may come from a USB stick or another device, so nothing in it is trusted: a FIFO
would hang a read, a link to /dev/zero would never end, and a link to /etc/shadow would read
a file outside the cache. Each refusal names the file and what it is, never what it holds.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from forklift_boot.cache.durable import cache_os_error
from forklift_boot.cache.space import human_bytes
from forklift_boot.errors import CacheError

__all__ = [
    "FOREIGN_HINT",
    "NotRegularFileError",
    "kind_of",
    "lstat_or_none",
    "open_regular",
    "read_small_file",
]

# What the user can do about a file that a cache must not hold.
FOREIGN_HINT = "remove it or use another image cache"

_KINDS = (
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a directory"),
)


class NotRegularFileError(CacheError):
    """A file of the cache is a link, a pipe, a device or a directory."""

    def __init__(self, path: Path, kind: str) -> None:
        self.path = path
        # e.g. "is a symbolic link, not a regular file": reads after "<path> ".
        self.problem = f"is {kind}, not a regular file"
        super().__init__(f"couldn't read {path}: it {self.problem}; {FOREIGN_HINT}")


def kind_of(mode: int) -> str:
    """``a symbolic link``, ``a named pipe (FIFO)``...; ``a regular file`` for one."""
    return next((kind for test, kind in _KINDS if test(mode)), "a regular file")


def lstat_or_none(path: Path) -> os.stat_result | None:
    """The entry itself (a link is not followed); None if there is none."""
    try:
        return path.lstat()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise cache_os_error("read", path, err) from err


def open_regular(path: Path) -> int:
    """A read-only descriptor of ``path``, which must be a regular file.

    The entry is checked before it is opened (opening a device may do something), opened
    without following a link and without waiting for a pipe's writer, and checked again.
    FileNotFoundError passes through; anything else not a regular file is NotRegularFileError.
    """
    found = path.lstat()  # FileNotFoundError for the caller
    if not stat.S_ISREG(found.st_mode):
        raise NotRegularFileError(path, kind_of(found.st_mode))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        if err.errno == errno.ELOOP:  # replaced by a link since the lstat
            raise NotRegularFileError(path, "a symbolic link") from err
        raise
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            raise NotRegularFileError(path, kind_of(opened.st_mode))
        # Regular files never block; clear the flag so reads behave as usual.
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_small_file(path: Path, limit: int, what: str) -> bytes:
    """The whole of a file parsed whole (index.json, oci-layout), at most ``limit`` bytes.

    FileNotFoundError passes through; a larger file is refused before it is read.
    """
    try:
        fd = open_regular(path)
    except (FileNotFoundError, CacheError):
        raise
    except OSError as err:
        raise cache_os_error("read", path, err) from err
    try:
        with os.fdopen(fd, "rb", buffering=0) as file:
            is_small = os.fstat(file.fileno()).st_size <= limit
            # Read one byte past the limit: a file that grew since the fstat is refused too.
            data = file.read(limit + 1) if is_small else b""
    except OSError as err:
        raise cache_os_error("read", path, err) from err
    if not is_small or len(data) > limit:
        raise CacheError(
            f"couldn't read {path}: it is larger than {human_bytes(limit)}, too large for"
            f" {what}; {FOREIGN_HINT}"
        )
    return data
