"""Tests for adopting an existing file as a cache blob: hard link, copy, refusals."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from forklift_boot.cache import CacheWriter, ImageCache
from forklift_boot.cache.adopt import COPIED, LINKED, PRESENT, UnusableSource, adopt_blob

DATA = b"a layer, as containerd keeps it\n" * 1000
DIGEST = f"sha256:{hashlib.sha256(DATA).hexdigest()}"


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[CacheWriter]:
    with ImageCache(tmp_path / "cache").writing() as cache_writer:
        yield cache_writer


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "store" / DIGEST.removeprefix("sha256:")
    path.parent.mkdir()
    path.write_bytes(DATA)
    return path


def blob_dir_names(writer: CacheWriter) -> list[str]:
    return sorted(p.name for p in writer.blob_path(DIGEST).parent.iterdir())


def test_a_file_on_the_same_mount_is_hard_linked(writer: CacheWriter, source: Path) -> None:
    adopted = adopt_blob(writer, source, DIGEST, len(DATA))
    assert adopted.how == LINKED
    assert adopted.blob.is_new
    assert (adopted.blob.digest, adopted.blob.size) == (DIGEST, len(DATA))
    blob = writer.blob_path(DIGEST).stat()
    assert blob.st_ino == source.stat().st_ino
    assert blob.st_nlink == 2
    assert blob_dir_names(writer) == [DIGEST[7:]]  # no temporary left


def test_a_blob_the_cache_has_is_left_as_it_is(writer: CacheWriter, source: Path) -> None:
    with writer.blob_writer() as blob:
        blob.write(DATA)
        blob.commit()
    before = writer.blob_path(DIGEST).stat()
    adopted = adopt_blob(writer, source, DIGEST, len(DATA))
    assert adopted.how == PRESENT
    assert not adopted.blob.is_new
    assert writer.blob_path(DIGEST).stat().st_ino == before.st_ino
    assert source.stat().st_nlink == 1


def test_without_share_the_file_is_copied_and_hashed(writer: CacheWriter, source: Path) -> None:
    adopted = adopt_blob(writer, source, DIGEST, len(DATA), share=False)
    assert adopted.how == COPIED
    assert adopted.blob.is_new
    blob = writer.blob_path(DIGEST)
    assert blob.stat().st_ino != source.stat().st_ino
    assert blob.stat().st_nlink == 1
    assert blob.read_bytes() == DATA


def test_a_copy_whose_bytes_do_not_match_keeps_nothing(writer: CacheWriter, source: Path) -> None:
    source.write_bytes(DATA[:-1] + b"?")  # same size, other bytes
    with pytest.raises(UnusableSource, match="hash to sha256:"):
        adopt_blob(writer, source, DIGEST, len(DATA), share=False)
    assert blob_dir_names(writer) == []


def test_another_mount_gets_a_copy(writer: CacheWriter) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == writer.cache_dir.stat().st_dev:
        pytest.skip("needs /dev/shm on a mount of its own")
    with tempfile.TemporaryDirectory(dir=shm) as other:
        path = Path(other) / "blob"
        path.write_bytes(DATA)
        adopted = adopt_blob(writer, path, DIGEST, len(DATA))
        # tmpfs has no reflinks either: a hashed copy.
        assert adopted.how == COPIED
        assert writer.blob_path(DIGEST).stat().st_nlink == 1
        assert writer.blob_path(DIGEST).read_bytes() == DATA


def test_a_symlink_is_refused(writer: CacheWriter, source: Path, tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(source)
    with pytest.raises(UnusableSource, match="couldn't open"):
        adopt_blob(writer, link, DIGEST, len(DATA))
    assert blob_dir_names(writer) == []
    assert source.stat().st_nlink == 1


def test_a_file_of_another_size_is_refused(writer: CacheWriter, source: Path) -> None:
    with pytest.raises(UnusableSource, match=f"has {len(DATA)} bytes, expected {len(DATA) + 1}"):
        adopt_blob(writer, source, DIGEST, len(DATA) + 1)
    assert blob_dir_names(writer) == []


def test_a_missing_file_is_refused(writer: CacheWriter, tmp_path: Path) -> None:
    with pytest.raises(UnusableSource, match="No such file"):
        adopt_blob(writer, tmp_path / "gone", DIGEST, len(DATA))


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_what_is_not_a_regular_file_is_refused(
    writer: CacheWriter, tmp_path: Path, kind: str
) -> None:
    path = tmp_path / kind
    if kind == "directory":
        path.mkdir()
    else:
        os.mkfifo(path)
    with pytest.raises(UnusableSource, match="not a regular file"):
        adopt_blob(writer, path, DIGEST, len(DATA))
    assert blob_dir_names(writer) == []
