"""Content-store blobs reach the cache as reflinks across a bind mount of one XFS filesystem.

This is the hardened unit's case: ``ReadWritePaths=`` bind-mounts the cache, so ``link()`` fails
with EXDEV between it and containerd's content store although both are on one filesystem. Where
that filesystem has reflinks (XFS, btrfs), the blob shares the store's extents instead of being
copied. A real XFS in a loop device, mounted twice; the shared extents are read back with
``filefrag`` (FIEMAP's "shared" flag), not inferred from free space.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from forklift_boot.cache import ImageCache
from forklift_boot.cache.adopt import COPIED, REFLINKED, adopt_blob
from tests.conftest import require_component

DATA = os.urandom(3 << 20)  # several extents' worth, not inline
DIGEST = f"sha256:{hashlib.sha256(DATA).hexdigest()}"


def run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def xfs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(store mount, cache mount): one XFS with reflinks, the second a bind mount of a subdir."""
    if os.geteuid() != 0:
        require_component(request.config, "needs root to mount a loop device")
    if shutil.which("mkfs.xfs") is None:
        require_component(request.config, "needs mkfs.xfs (apt-get install xfsprogs)")
    image = tmp_path / "xfs.img"
    with image.open("wb") as file:
        file.truncate(320 << 20)  # XFS's smallest filesystem is 300 MB
    run("mkfs.xfs", "-q", "-m", "reflink=1", str(image))
    store_mount, cache_mount = tmp_path / "var", tmp_path / "cache-bind"
    store_mount.mkdir()
    cache_mount.mkdir()
    run("mount", "-o", "loop", str(image), str(store_mount))
    try:
        (store_mount / "cache").mkdir()
        run("mount", "--bind", str(store_mount / "cache"), str(cache_mount))
        try:
            yield store_mount, cache_mount
        finally:
            run("umount", str(cache_mount))
    finally:
        run("umount", str(store_mount))


def shared_extents(path: Path) -> int:
    """Extents of ``path`` that FIEMAP flags as shared with another file."""
    lines = run("filefrag", "-v", str(path)).splitlines()
    return sum(1 for line in lines if "shared" in line.split(":")[-1])


def test_a_blob_across_a_bind_mount_of_one_xfs_is_a_reflink(xfs: tuple[Path, Path]) -> None:
    store_mount, cache_mount = xfs
    source = store_mount / "content" / DIGEST.removeprefix("sha256:")
    source.parent.mkdir()
    source.write_bytes(DATA)
    os.sync()  # extents allocated, so FIEMAP reports them
    assert source.stat().st_dev == (cache_mount).stat().st_dev  # one filesystem ...
    with ImageCache(cache_mount / "images").writing() as writer:
        with pytest.raises(OSError, match="Invalid cross-device link"):
            os.link(source, cache_mount / "probe")  # ... but link() across the mounts: EXDEV
        adopted = adopt_blob(writer, source, DIGEST, len(DATA))
        blob = writer.blob_path(DIGEST)
    assert adopted.how == REFLINKED
    assert adopted.blob.is_new
    assert blob.stat().st_nlink == 1  # its own inode, not a hard link
    assert blob.stat().st_ino != source.stat().st_ino
    assert blob.read_bytes() == DATA
    assert shared_extents(blob) > 0
    assert shared_extents(source) > 0
    # Neither changes the other: a reflinked file is copied on write.
    with source.open("r+b") as file:
        file.write(b"X")
    assert blob.read_bytes() == DATA


def test_without_share_it_is_a_copy_even_where_reflinks_work(xfs: tuple[Path, Path]) -> None:
    store_mount, cache_mount = xfs
    source = store_mount / "content" / DIGEST.removeprefix("sha256:")
    source.parent.mkdir()
    source.write_bytes(DATA)
    os.sync()
    with ImageCache(cache_mount / "images").writing() as writer:
        adopted = adopt_blob(writer, source, DIGEST, len(DATA), share=False)
        blob = writer.blob_path(DIGEST)
    assert adopted.how == COPIED
    os.sync()
    assert shared_extents(blob) == 0
    assert blob.read_bytes() == DATA
