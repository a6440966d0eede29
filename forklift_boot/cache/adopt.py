"""Adopting a file that already holds a blob (an engine's content store): linked, reflinked or
copied into the cache under its digest.

A hard link or a reflink shares the bytes with the engine's own verified file: its name is
trusted here, and ``cache verify`` reads the shared bytes. A copy is hashed while written, as
every other blob is. The source is opened without following symlinks and must be a regular file
of the expected size; the link is checked to be that very file. As with BlobWriter, the blob
appears under its final name only by a rename, and the directory is fsynced after it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from forklift_boot.cache.blob_writer import StoredBlob
from forklift_boot.cache.durable import (
    cache_os_error,
    fsync_directory,
    remove_quietly,
    temporary_name,
)
from forklift_boot.cache.writer import CacheWriter
from forklift_boot.errors import CacheError
from forklift_boot.faults import checkpoint

__all__ = [
    "COPIED",
    "LINKED",
    "PRESENT",
    "REFLINKED",
    "AdoptedBlob",
    "UnusableSource",
    "adopt_blob",
]

LINKED = "linked"
REFLINKED = "reflinked"
COPIED = "copied"
PRESENT = "present"  # the cache had it already

# linux/fs.h: _IOW(0x94, 9, int), share the source's extents (btrfs, XFS, bcachefs).
FICLONE = 0x40049409

# link() can't share the file here: another mount (bind mounts included), a filesystem without
# hard links, too many links, or protected_hardlinks for a file we don't own.
_CANT_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP, errno.EACCES}


class UnusableSource(CacheError):
    """The source file is gone, is not a regular file of the expected size, or its bytes do not
    match the digest: the caller takes the blob another way."""


@dataclass(frozen=True)
class AdoptedBlob:
    blob: StoredBlob
    how: str  # LINKED, REFLINKED, COPIED or PRESENT


def adopt_blob(
    writer: CacheWriter, source: Path, digest: str, size: int, *, share: bool = True
) -> AdoptedBlob:
    """Put the file ``source`` into the cache as blob ``digest`` of ``size`` bytes.

    With ``share``, a hard link when the cache and the source are on one mount, else a reflink
    where the filesystem has them, else a hashed copy; without, a hashed copy. A blob the cache
    already has (a regular file of that size) is left as it is.
    """
    final = writer.blob_path(digest)  # refuses a malformed digest before any path is used
    if writer.has_blob(digest):
        with contextlib.suppress(OSError):
            existing = final.lstat()
            if stat.S_ISREG(existing.st_mode) and existing.st_size == size:
                return AdoptedBlob(StoredBlob(digest, size, is_new=False), PRESENT)
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise UnusableSource(f"couldn't open {source}: {err.strerror or err}") from err
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            raise UnusableSource(f"{source} is not a regular file")
        if opened.st_size != size:
            raise UnusableSource(f"{source} has {opened.st_size} bytes, expected {size}")
        how = (_link(source, opened, final) or _reflink(fd, final)) if share else None
        if how is None:
            return AdoptedBlob(_copy(writer, fd, source, digest, size), COPIED)
    finally:
        os.close(fd)
    return AdoptedBlob(StoredBlob(digest, size, is_new=True), how)


def _link(source: Path, opened: os.stat_result, final: Path) -> str | None:
    """Hard-link ``source`` to a temporary, check it is the file opened, rename it to ``final``.
    None when this filesystem or mount can't link it."""
    temp = final.with_name(temporary_name())
    try:
        os.link(source, temp, follow_symlinks=False)
    except FileNotFoundError as err:
        raise UnusableSource(f"{source} vanished: {err.strerror}") from err
    except OSError as err:
        if err.errno in _CANT_LINK:
            return None
        raise cache_os_error("link a blob into", final.parent, err) from err
    try:
        linked = temp.lstat()
        if (linked.st_dev, linked.st_ino) != (opened.st_dev, opened.st_ino):
            raise UnusableSource(f"{source} was replaced while it was being linked")
        _sync_and_rename(temp, final)
    except BaseException:
        remove_quietly(temp)
        raise
    return LINKED


def _reflink(source_fd: int, final: Path) -> str | None:
    """A reflink of the open source into a temporary renamed to ``final``; None where the
    filesystem has no reflinks (or not across these two)."""
    temp = final.with_name(temporary_name())
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except OSError as err:
        raise cache_os_error("create a blob in", final.parent, err) from err
    try:
        try:
            fcntl.ioctl(fd, FICLONE, source_fd)
        except OSError:
            # EOPNOTSUPP, EXDEV, EINVAL, ENOTTY: no reflinks here; a copy will do.
            os.close(fd)
            remove_quietly(temp)
            return None
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        _sync_and_rename(temp, final, sync_file=False)
    except OSError as err:
        remove_quietly(temp)
        raise cache_os_error("store blob", final, err) from err
    except BaseException:
        remove_quietly(temp)
        raise
    return REFLINKED


def _sync_and_rename(temp: Path, final: Path, *, sync_file: bool = True) -> None:
    if sync_file:
        # The engine syncs what it commits; this costs nothing then, and covers it if not.
        fd = os.open(temp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    checkpoint("blob-adopted")
    try:
        os.rename(temp, final)
    except OSError as err:
        raise cache_os_error("store blob", final, err) from err
    checkpoint("blob-renamed")
    fsync_directory(final.parent)


def _copy(writer: CacheWriter, fd: int, source: Path, digest: str, size: int) -> StoredBlob:
    """Copied through a BlobWriter, hashed while written; UnusableSource if the bytes don't
    match ``digest`` (nothing is kept then)."""
    with writer.blob_writer() as blob, os.fdopen(fd, "rb", buffering=0, closefd=False) as file:
        try:
            blob.copy_from(file)
        except OSError as err:
            raise UnusableSource(f"couldn't read {source}: {err.strerror or err}") from err
        if blob.digest != digest or blob.size != size:
            raise UnusableSource(
                f"{source} holds {blob.size} bytes that hash to {blob.digest}, not {digest}"
            )
        return blob.commit(expected_digest=digest, expected_size=size)
