"""The cache lock: shared for readers, exclusive for writers, waited for with a bounded timeout."""

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

__all__ = ["hold_lock"]

log = logging.getLogger(__name__)

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
        _acquire(fd, lock_path, exclusive=exclusive, timeout=timeout)
        yield
    finally:
        # Closing the descriptor releases the lock.
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


def _acquire(fd: int, lock_path: Path, *, exclusive: bool, timeout: float) -> None:
    operation = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
    deadline = time.monotonic() + timeout
    is_waiting = False
    while True:
        try:
            fcntl.flock(fd, operation)
        except BlockingIOError:
            pass
        except OSError as err:
            raise cache_os_error("lock", lock_path, err) from err
        else:
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise CacheError(
                f"couldn't lock the image cache {lock_path.parent}: another forklift-boot is"
                f" using it (waited {timeout:g} s); try again when it finishes"
            )
        if not is_waiting:
            is_waiting = True
            log.info(
                "waiting up to %g s for another forklift-boot to finish with %s",
                timeout,
                lock_path.parent,
            )
        time.sleep(min(_POLL_INTERVAL, remaining))
