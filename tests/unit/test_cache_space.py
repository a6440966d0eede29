"""Tests for free-space checks, byte counts, and how OS errors read."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from forklift_boot.cache import ensure_free_space, human_bytes
from forklift_boot.cache.durable import cache_os_error
from forklift_boot.errors import CacheError


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (300 * 1024**2, "300 MiB"),
        (int(1.2 * 1024**3), "1.2 GiB"),
        (1024**2 - 1, "1.0 MiB"),  # 1023.999 KiB rounds up into the next unit
        (10 * 1024**3 - 1, "10 GiB"),
        (5 * 1024**6, "5.0 EiB"),
        (-2048, "-2.0 KiB"),
    ],
)
def test_human_bytes(n: int, text: str) -> None:
    assert human_bytes(n) == text


def test_enough_space_passes(tmp_path: Path) -> None:
    ensure_free_space(tmp_path, 1, "one byte")


def test_not_enough_space_names_the_step_and_the_filesystem(tmp_path: Path) -> None:
    target = tmp_path / "not" / "created" / "yet"
    with pytest.raises(CacheError) as caught:
        ensure_free_space(target, 1 << 62, "12 images")
    message = str(caught.value)
    assert message.startswith("couldn't cache images: 12 images needs 4.0 EiB but only ")
    assert f"(the filesystem of {target}); free some space or choose another --cache-dir" in message
    assert not (tmp_path / "not").exists()


def test_not_enough_space_with_another_action_and_hint(tmp_path: Path) -> None:
    with pytest.raises(CacheError, match=r"^couldn't load images: .*; prune unused images$"):
        ensure_free_space(
            tmp_path, 1 << 62, "nginx", action="load images", hint="prune unused images"
        )


def test_no_space_left_reads_as_such() -> None:
    err = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert str(cache_os_error("write a blob to", Path("/var/cache/x"), err)) == (
        "couldn't write a blob to /var/cache/x: no space left on device;"
        " free some space or choose another --cache-dir"
    )


def test_other_os_errors_name_the_path_and_cause() -> None:
    err = OSError(errno.EIO, os.strerror(errno.EIO))
    assert str(cache_os_error("read", Path("/c/blob"), err)) == (
        "couldn't read /c/blob: input/output error"
    )
