"""Tests for writing and reading cache blobs: durability, digests, verified streams."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from forklift_boot.cache import (
    MAX_JSON_BLOB_SIZE,
    MEDIA_OCI_CONFIG,
    CacheWriter,
    DamagedBlobError,
    ImageCache,
)
from forklift_boot.errors import CacheError


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def blob_names(cache_dir: Path) -> list[str]:
    return sorted(p.name for p in (cache_dir / "blobs" / "sha256").iterdir())


def flip_byte(path: Path, offset: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[CacheWriter]:
    with ImageCache(tmp_path / "cache").writing() as cache_writer:
        yield cache_writer


def test_blob_appears_only_under_its_digest_on_commit(writer: CacheWriter) -> None:
    data = b"layer bytes " * 1000
    with writer.blob_writer() as blob:
        blob.write(data[:5000])
        blob.write(data[5000:])
        names = blob_names(writer.cache_dir)
        assert len(names) == 1
        assert names[0].startswith(".tmp-")
        assert not writer.has_blob(sha256(data))
        stored = blob.commit(expected_digest=sha256(data), expected_size=len(data))
    assert (stored.digest, stored.size, stored.is_new) == (sha256(data), len(data), True)
    assert blob_names(writer.cache_dir) == [sha256(data).removeprefix("sha256:")]
    assert writer.blob_path(stored.digest).read_bytes() == data
    assert writer.blob_size(stored.digest) == len(data)


def test_a_source_checked_blob_is_named_by_the_source_and_not_hashed_again(
    writer: CacheWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = b"layer tar bytes " * 1000
    digest = sha256(data)
    # The writer must not hash: every sha256 object made while writing fails the test.
    monkeypatch.setattr(
        "forklift_boot.cache.blob_writer.hashlib.sha256",
        lambda *_: pytest.fail("hashed a blob its source checks"),
    )
    with writer.blob_writer(source_checks=digest) as blob:
        blob.write(data)
        stored = blob.commit()
    monkeypatch.undo()
    assert (stored.digest, stored.size, stored.is_new) == (digest, len(data), True)
    assert writer.blob_path(stored.digest).read_bytes() == data


def test_a_source_checked_blob_refuses_a_malformed_digest(writer: CacheWriter) -> None:
    with pytest.raises(CacheError), writer.blob_writer(source_checks="sha256:../../x"):
        pass
    assert blob_names(writer.cache_dir) == []


def test_existing_blob_is_never_rewritten(writer: CacheWriter) -> None:
    data = b"shared base layer"
    first = writer.write_blob(data, MEDIA_OCI_CONFIG)
    before = writer.blob_path(first.digest).stat()
    with writer.blob_writer() as blob:
        blob.write(data)
        stored = blob.commit()
    after = writer.blob_path(first.digest).stat()
    assert not stored.is_new
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert blob_names(writer.cache_dir) == [first.digest.removeprefix("sha256:")]


def test_truncated_existing_blob_is_replaced(writer: CacheWriter) -> None:
    data = b"0123456789" * 10
    digest = writer.write_blob(data, MEDIA_OCI_CONFIG).digest
    writer.blob_path(digest).write_bytes(data[:30])
    with writer.blob_writer() as blob:
        blob.write(data)
        assert blob.commit().is_new
    assert writer.blob_path(digest).read_bytes() == data


def test_digest_mismatch_is_refused_and_leaves_nothing(writer: CacheWriter) -> None:
    with writer.blob_writer() as blob:
        blob.write(b"what arrived")
        with pytest.raises(CacheError, match=r"the bytes received hash to sha256:"):
            blob.commit(expected_digest=sha256(b"what was promised"))
    assert blob_names(writer.cache_dir) == []


def test_size_mismatch_is_refused_and_leaves_nothing(writer: CacheWriter) -> None:
    data = b"twelve bytes"
    with writer.blob_writer() as blob:
        blob.write(data)
        with pytest.raises(CacheError, match="received 12 bytes, expected 13"):
            blob.commit(expected_digest=sha256(data), expected_size=13)
    assert blob_names(writer.cache_dir) == []


def test_malformed_expected_digest_is_refused(writer: CacheWriter) -> None:
    with writer.blob_writer() as blob:
        blob.write(b"x")
        with pytest.raises(CacheError, match="invalid blob digest"):
            blob.commit(expected_digest="sha256:../../etc/passwd")
    assert blob_names(writer.cache_dir) == []


def test_leaving_without_commit_removes_the_temporary(writer: CacheWriter) -> None:
    with writer.blob_writer() as blob:
        blob.write(b"abandoned")
    assert blob_names(writer.cache_dir) == []

    def write_then_fail() -> None:
        with writer.blob_writer() as blob:
            blob.write(b"interrupted")
            raise RuntimeError("the source stream broke")

    with pytest.raises(RuntimeError):
        write_then_fail()
    assert blob_names(writer.cache_dir) == []


def test_writer_refuses_use_after_commit(writer: CacheWriter) -> None:
    with writer.blob_writer() as blob:
        blob.write(b"done")
        blob.commit()
        with pytest.raises(CacheError, match="after commit"):
            blob.write(b"more")


def test_copy_from_streams_a_file_object(writer: CacheWriter) -> None:
    data = bytes(range(256)) * 10_000  # larger than one 1 MiB buffer
    with writer.blob_writer() as blob:
        assert blob.copy_from(io.BytesIO(data)) == len(data)
        stored = blob.commit(expected_digest=sha256(data))
    assert stored.size == len(data)


def test_open_blob_streams_a_sound_blob(writer: CacheWriter) -> None:
    data = b"a" * (3 << 20)
    digest = writer.write_blob(data, MEDIA_OCI_CONFIG).digest
    with writer.open_blob(digest, expected_size=len(data)) as file:
        assert file.read(10) == b"a" * 10
        assert len(file.read()) == len(data) - 10


def test_open_blob_raises_at_eof_on_a_flipped_byte(writer: CacheWriter) -> None:
    data = b"b" * 100_000
    digest = writer.write_blob(data, MEDIA_OCI_CONFIG).digest
    flip_byte(writer.blob_path(digest), 50_000)
    with writer.open_blob(digest) as file:
        assert len(file.read(1000)) == 1000  # not checked until the end is reached
        assert len(file.read(98_000)) == 98_000
        with pytest.raises(DamagedBlobError, match=rf"{digest}.*is corrupt") as caught:
            file.read(4096)
    assert caught.value.digest == digest


def test_open_blob_raises_on_a_truncated_blob(writer: CacheWriter) -> None:
    data = b"c" * 1000
    digest = writer.write_blob(data, MEDIA_OCI_CONFIG).digest
    writer.blob_path(digest).write_bytes(data[:600])
    with (
        writer.open_blob(digest, expected_size=len(data)) as file,
        pytest.raises(DamagedBlobError, match="has 600 bytes, expected 1000"),
    ):
        file.read()


def test_open_blob_fails_as_soon_as_a_blob_is_too_long(writer: CacheWriter) -> None:
    data = b"d" * (3 << 20)
    digest = writer.write_blob(data, MEDIA_OCI_CONFIG).digest
    with (
        writer.open_blob(digest, expected_size=1 << 20) as file,
        pytest.raises(DamagedBlobError, match="longer than its 1048576 bytes"),
    ):
        file.read(2 << 20)


def test_open_blob_without_verify_reads_damaged_bytes(writer: CacheWriter) -> None:
    digest = writer.write_blob(b"plain", MEDIA_OCI_CONFIG).digest
    flip_byte(writer.blob_path(digest))
    with writer.open_blob(digest, verify=False) as file:
        assert file.read() == b"qlain"


def test_open_blob_names_a_missing_blob(writer: CacheWriter) -> None:
    digest = sha256(b"never stored")
    with pytest.raises(DamagedBlobError, match=rf"{digest}.*is missing"):
        writer.open_blob(digest)


def test_read_json_verifies_and_parses(writer: CacheWriter) -> None:
    config = {"architecture": "arm64", "os": "linux"}
    digest = writer.write_blob(json.dumps(config).encode(), MEDIA_OCI_CONFIG).digest
    assert writer.read_json(digest) == config
    flip_byte(writer.blob_path(digest), 3)
    with pytest.raises(DamagedBlobError, match="is corrupt"):
        writer.read_json(digest)


def test_read_json_refuses_large_and_unparsable_blobs(writer: CacheWriter) -> None:
    big = writer.write_blob(b" " * (MAX_JSON_BLOB_SIZE + 1), MEDIA_OCI_CONFIG).digest
    with pytest.raises(DamagedBlobError, match="larger than 4 MiB"):
        writer.read_json(big)
    garbage = writer.write_blob(b"\x1f\x8b not json", MEDIA_OCI_CONFIG).digest
    with pytest.raises(DamagedBlobError, match="isn't valid JSON"):
        writer.read_json(garbage)


@pytest.mark.parametrize(
    "digest",
    ["sha256:abc", "sha512:" + "0" * 128, "sha256:" + "A" * 64, "sha256:../" + "0" * 61],
)
def test_blob_path_refuses_bad_digests(writer: CacheWriter, digest: str) -> None:
    with pytest.raises(CacheError, match="invalid blob digest"):
        writer.blob_path(digest)
