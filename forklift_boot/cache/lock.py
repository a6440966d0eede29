"""The cache locks, waited for with a bounded timeout: the cache lock and the commit lock.

The cache lock (a flock on ``.lock``) is shared by readers and by writers adding blobs, and
exclusive for whatever deletes (garbage collection, repairs, the sweep of temporaries). The
commit lock (a flock on the cache directory) serialises the writers that replace index.json.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from forklift_boot.cache.durable import cache_os_error
from forklift_boot.cache.files import NotRegularFileError, kind_of
from forklift_boot.errors import CacheError

__all__ = ["DEFAULT_LOCK_TIMEOUT", "WriteLock", "hold_commit_lock", "hold_lock", "hold_write_lock"]

log = logging.getLogger(__name__)

DEFAULT_LOCK_TIMEOUT = 60.0
_POLL_INTERVAL = 0.05
# Errors that mean "a reader may not create the lock file here", e.g. a read-only USB stick.
_CANNOT_CREATE_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS)


@contextmanager
def hold_lock(lock_path: Path, *, exclusive: bool, timeout: float) -> Iterator[None]:
    """Hold a flock on ``lock_path`` for the duration of the block.

    A reader that can neither create nor open the lock file reads without it: no writer can
    work in a directory that this process cannot even create a file in either.
    """
    fd = _open_lock_file(lock_path, exclusive=exclusive)
    if fd is None:
        log.debug("reading %s without a lock: the lock file can't be created", lock_path.parent)
        yield
        return
    try:
        _acquire(fd, lock_path, lock_path.parent, exclusive=exclusive, timeout=timeout)
        yield
    finally:
        # Closing the descriptor releases the lock.
        os.close(fd)


class WriteLock:
    """The cache lock as a writer holds it: exclusive while it cleans up, then shared."""

    def __init__(self, fd: int, lock_path: Path) -> None:
        self._fd = fd
        self._lock_path = lock_path

    def try_exclusive(self) -> bool:
        """Take the lock exclusive if nobody else holds it now; never waits."""
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError as err:
            raise cache_os_error("lock", self._lock_path, err) from err
        return True

    def share(self, timeout: float) -> None:
        """Hold the lock shared (from exclusive: other readers and writers may come in).

        flock may drop the old lock before it takes the new one, so this is called only
        where holding nothing for a moment is harmless: before the writer writes anything.
        """
        _acquire(
            self._fd, self._lock_path, self._lock_path.parent, exclusive=False, timeout=timeout
        )


@contextmanager
def hold_write_lock(lock_path: Path) -> Iterator[WriteLock]:
    """The cache lock's file opened by a writer, nothing locked yet; closed (and whatever was
    locked released) when the block ends."""
    fd = _open_lock_file(lock_path, exclusive=True)
    assert fd is not None  # a writer's open creates the file or raises
    try:
        yield WriteLock(fd, lock_path)
    finally:
        os.close(fd)


@contextmanager
def hold_commit_lock(cache_dir: Path, *, timeout: float) -> Iterator[None]:
    """The commit lock: one writer at a time reads, changes and replaces index.json.

    It is a flock on the cache directory itself, so that the layout gains no file: readers
    never take it (index.json is replaced atomically), and only writers, who already hold
    the cache lock, wait for it, each for as long as another's commit takes.
    """
    try:
        fd = os.open(cache_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        raise cache_os_error("open", cache_dir, err) from err
    try:
        _acquire(fd, cache_dir, cache_dir, exclusive=True, timeout=timeout)
        yield
    finally:
        os.close(fd)


def _open_lock_file(lock_path: Path, *, exclusive: bool) -> int | None:
    fd = _open_lock_descriptor(lock_path, exclusive=exclusive)
    if fd is None:
        return None
    try:
        found = os.fstat(fd)
    except OSError as err:
        os.close(fd)
        raise cache_os_error("open the lock file", lock_path, err) from err
    if not stat.S_ISREG(found.st_mode):
        # A pipe or a device from a foreign cache: never wait on it or lock through it.
        os.close(fd)
        raise NotRegularFileError(lock_path, kind_of(found.st_mode))
    return fd


def _open_lock_descriptor(lock_path: Path, *, exclusive: bool) -> int | None:
    # No link followed, no wait for a pipe's writer.
    flags = os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        return os.open(lock_path, flags | os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        _refuse_link(lock_path, err)
        if exclusive or err.errno not in _CANNOT_CREATE_ERRNOS:
            raise cache_os_error("open the lock file", lock_path, err) from err
    try:
        # flock works on a read-only descriptor too.
        return os.open(lock_path, flags | os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError as err:
        _refuse_link(lock_path, err)
        raise cache_os_error("open the lock file", lock_path, err) from err


def _refuse_link(lock_path: Path, err: OSError) -> None:
    if err.errno == errno.ELOOP:
        raise NotRegularFileError(lock_path, "a symbolic link") from err


def _acquire(fd: int, locked: Path, cache_dir: Path, *, exclusive: bool, timeout: float) -> None:
    operation = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
    deadline = time.monotonic() + timeout
    is_waiting = False
    while True:
        try:
            fcntl.flock(fd, operation)
        except BlockingIOError:
            pass
        except OSError as err:
            raise cache_os_error("lock", locked, err) from err
        else:
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise CacheError(
                f"couldn't lock the image cache {cache_dir}: another forklift-boot is"
                f" using it (waited {timeout:g} s); try again when it finishes"
            )
        if not is_waiting:
            is_waiting = True
            log.info(
                "waiting up to %g s for another forklift-boot to finish with %s",
                timeout,
                cache_dir,
            )
        time.sleep(min(_POLL_INTERVAL, remaining))
