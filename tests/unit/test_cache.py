"""Tests for ImageCache: creating the layout, locking across processes, sweeping leftovers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import forklift_boot
from forklift_boot.cache import MEDIA_OCI_LAYER, ImageCache
from forklift_boot.errors import CacheError

PROJECT_DIR = Path(forklift_boot.__file__).resolve().parents[1]

# Runs in another process: takes the lock for argv[2] seconds, or reports the CacheError.
LOCKER = """
import sys, time
from pathlib import Path
from forklift_boot.cache import ImageCache
from forklift_boot.errors import CacheError
cache = ImageCache(Path(sys.argv[1]))
mode, timeout, hold = sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
started = time.monotonic()
try:
    with (cache.writing if mode == "write" else cache.reading)(timeout=timeout):
        print(f"locked after {time.monotonic() - started:.2f} s", flush=True)
        time.sleep(hold)
except CacheError as err:
    print(f"{err} after {time.monotonic() - started:.2f} s")
    sys.exit(3)
"""


def lock_in_other_process(
    cache_dir: Path, mode: str, timeout: float, hold: float = 0.0
) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_DIR)}
    command = [sys.executable, "-c", LOCKER, str(cache_dir), mode, str(timeout), str(hold)]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    stdout, _ = process.communicate(timeout=30)
    return process.returncode, stdout.strip()


# --- layout -----------------------------------------------------------------------------


def test_writing_creates_the_layout(tmp_path: Path) -> None:
    cache_dir = tmp_path / "var" / "cache" / "forklift" / "images"
    with ImageCache(cache_dir).writing():
        pass
    assert sorted(p.name for p in cache_dir.iterdir()) == [
        ".lock",
        "blobs",
        "index.json",
        "oci-layout",
    ]
    assert (cache_dir / "oci-layout").read_bytes() == b'{"imageLayoutVersion": "1.0.0"}'
    assert json.loads((cache_dir / "index.json").read_text()) == {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [],
    }
    assert (cache_dir / "blobs" / "sha256").is_dir()


def test_writing_leaves_an_existing_index_alone(tmp_path: Path) -> None:
    with ImageCache(tmp_path).writing():
        pass
    (tmp_path / "index.json").write_text('{"schemaVersion": 2, "manifests": []}')
    with ImageCache(tmp_path).writing() as writer:
        assert writer.images() == []
    assert (tmp_path / "index.json").read_text() == '{"schemaVersion": 2, "manifests": []}'


def test_writing_refuses_a_directory_of_other_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("someone's files")
    with (
        pytest.raises(CacheError, match=r"holds other files \(notes.txt\) and no oci-layout"),
        ImageCache(tmp_path).writing(),
    ):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_writing_refuses_an_unknown_layout_version(tmp_path: Path) -> None:
    (tmp_path / "oci-layout").write_text('{"imageLayoutVersion": "2.0.0"}')
    with (
        pytest.raises(CacheError, match="imageLayoutVersion '2.0.0'"),
        ImageCache(tmp_path).writing(),
    ):
        pass


def test_writing_refuses_a_file_as_cache_dir(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with (
        pytest.raises(CacheError, match="couldn't create directory"),
        ImageCache(tmp_path / "file" / "x").writing(),
    ):
        pass
    with (
        pytest.raises(CacheError, match="not a directory"),
        ImageCache(tmp_path / "file").reading(),
    ):
        pass


# --- sweeping ---------------------------------------------------------------------------


def test_writing_sweeps_stale_temporaries(tmp_path: Path) -> None:
    with ImageCache(tmp_path).writing() as writer:
        kept = writer.write_blob(b"a real blob", MEDIA_OCI_LAYER)
    blobs_dir = tmp_path / "blobs" / "sha256"
    stale = [blobs_dir / ".tmp-abc", tmp_path / "index.json.tmp-def", tmp_path / "oci-layout.tmp-0"]
    for path in stale:
        path.write_bytes(b"left by a power cut")

    with ImageCache(tmp_path).reading() as reader:  # readers never delete anything
        assert len(reader.verify()) == 3
    assert all(path.exists() for path in stale)

    with ImageCache(tmp_path).writing() as writer:
        assert not any(path.exists() for path in stale)
        assert writer.has_blob(kept.digest)
        assert writer.verify() == []


def test_a_crash_before_the_first_index_leaves_a_usable_cache(tmp_path: Path) -> None:
    # oci-layout is written first; everything after it may be missing after a crash.
    (tmp_path / "oci-layout").write_bytes(b'{"imageLayoutVersion": "1.0.0"}')
    (tmp_path / "index.json.tmp-123").write_bytes(b"{")
    with ImageCache(tmp_path).reading() as reader:
        assert reader.images() == []
    with ImageCache(tmp_path).writing() as writer:
        assert writer.verify() == []


# --- locks ------------------------------------------------------------------------------


def test_a_second_writer_times_out(tmp_path: Path) -> None:
    with ImageCache(tmp_path).writing():
        started = time.monotonic()
        code, output = finish(lock_in_other_process(tmp_path, "write", timeout=0.5))
        elapsed = time.monotonic() - started
    assert code == 3
    assert output.startswith(
        f"couldn't lock the image cache {tmp_path}: another forklift-boot is using it"
        " (waited 0.5 s); try again when it finishes"
    )
    assert elapsed < 10


def test_readers_share_and_exclude_writers(tmp_path: Path) -> None:
    with ImageCache(tmp_path).writing():
        pass
    with ImageCache(tmp_path).reading():
        assert finish(lock_in_other_process(tmp_path, "read", timeout=0.5))[0] == 0
        assert finish(lock_in_other_process(tmp_path, "write", timeout=0.5))[0] == 3
    with ImageCache(tmp_path).writing():
        assert finish(lock_in_other_process(tmp_path, "read", timeout=0.5))[0] == 3


def test_a_waiting_writer_gets_the_lock_when_it_is_released(tmp_path: Path) -> None:
    holder = lock_in_other_process(tmp_path, "write", timeout=5, hold=0.5)
    assert holder.stdout is not None
    assert holder.stdout.readline().startswith("locked")
    started = time.monotonic()
    with ImageCache(tmp_path).writing(timeout=20):
        waited = time.monotonic() - started
    assert finish(holder)[0] == 0
    assert 0.1 < waited < 20


def test_reading_a_missing_directory_takes_no_lock(tmp_path: Path) -> None:
    with ImageCache(tmp_path / "absent").reading() as reader:
        assert reader.images() == []
    assert not (tmp_path / "absent").exists()
