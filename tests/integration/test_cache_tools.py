"""The cache as other tools see it: skopeo reads the layout forklift-boot writes, unchanged.

containerd's `ctr images import` gets its test with the containerd fixture.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from forklift_boot.cache import (
    MEDIA_OCI_CONFIG,
    MEDIA_OCI_INDEX,
    MEDIA_OCI_LAYER_GZIP,
    MEDIA_OCI_MANIFEST,
    CachedImage,
    CacheWriter,
    Descriptor,
    ImageCache,
    build_oci_manifest,
)

SKOPEO = shutil.which("skopeo")
pytestmark = pytest.mark.skipif(SKOPEO is None, reason="skopeo is not installed")

NAME = "docker.io/forklift-boot-test/tools"


@dataclass(frozen=True)
class BuiltImage:
    manifest: Descriptor
    config: Descriptor
    layer: Descriptor
    layer_bytes: bytes


def build_image(writer: CacheWriter, text: bytes, arch: str = "amd64") -> BuiltImage:
    """A one-layer image made by hand: a gzip layer tar, an OCI config, an OCI manifest."""
    tar_buffer = io.BytesIO()
    with tarfile.open(fileobj=tar_buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        member = tarfile.TarInfo("hello.txt")
        member.size = len(text)
        member.mtime = 0
        tar.addfile(member, io.BytesIO(text))
    tar_bytes = tar_buffer.getvalue()
    layer_bytes = gzip.compress(tar_bytes, mtime=0)
    layer = writer.write_blob(layer_bytes, MEDIA_OCI_LAYER_GZIP)
    config = {
        "created": "2024-01-01T00:00:00Z",
        "architecture": arch,
        "os": "linux",
        "config": {"Cmd": ["/hello"]},
        "rootfs": {
            "type": "layers",
            "diff_ids": [f"sha256:{hashlib.sha256(tar_bytes).hexdigest()}"],
        },
        "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "test_cache_tools"}],
    }
    config_descriptor = writer.write_blob(json.dumps(config).encode(), MEDIA_OCI_CONFIG)
    manifest = writer.write_blob(build_oci_manifest(config_descriptor, [layer]), MEDIA_OCI_MANIFEST)
    return BuiltImage(manifest, config_descriptor, layer, layer_bytes)


def skopeo(*args: str) -> str:
    assert SKOPEO is not None
    result = subprocess.run(
        [SKOPEO, *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def inspect(cache_dir: Path, canonical: str, *options: str) -> Any:
    return json.loads(skopeo(*options, "inspect", f"oci:{cache_dir}:{canonical}"))


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    # skopeo splits "oci:DIR:REF" at the first colon, so the directory must not contain one.
    assert ":" not in str(tmp_path)
    return tmp_path / "cache"


def test_skopeo_inspects_images_by_canonical_name(cache_dir: Path) -> None:
    with ImageCache(cache_dir).writing() as writer:
        built = build_image(writer, b"hello from the cache\n")
        tagged = f"{NAME}:1"
        pinned = f"{NAME}:1@{built.manifest.digest}"
        writer.put_images(
            [
                CachedImage(tagged, ("forklift-boot-test/tools:1",), built.manifest),
                CachedImage(
                    pinned, (f"forklift-boot-test/tools:1@{built.manifest.digest}",), built.manifest
                ),
            ]
        )
    for canonical in (tagged, pinned):
        info = inspect(cache_dir, canonical)
        assert info["Digest"] == built.manifest.digest
        assert info["Layers"] == [built.layer.digest]
        assert (info["Os"], info["Architecture"]) == ("linux", "amd64")
        raw = skopeo("inspect", "--config", "--raw", f"oci:{cache_dir}:{canonical}")
        assert hashlib.sha256(raw.encode()).hexdigest() == built.config.digest.removeprefix(
            "sha256:"
        )
    with ImageCache(cache_dir).reading() as reader:
        assert reader.verify() == []


def test_skopeo_copies_the_layers_out(cache_dir: Path, tmp_path: Path) -> None:
    with ImageCache(cache_dir).writing() as writer:
        built = build_image(writer, b"copied\n")
        writer.put_images([CachedImage(f"{NAME}:copy", (f"{NAME}:copy",), built.manifest)])
    out_dir = tmp_path / "out"
    skopeo("copy", "--quiet", f"oci:{cache_dir}:{NAME}:copy", f"dir:{out_dir}")
    assert (out_dir / built.layer.digest.removeprefix("sha256:")).read_bytes() == built.layer_bytes


def test_skopeo_reads_a_partly_cached_image_index(cache_dir: Path) -> None:
    with ImageCache(cache_dir).writing() as writer:
        amd64 = build_image(writer, b"amd64\n", arch="amd64")
        # The arm64 manifest is listed but was never cached.
        arm64_absent = Descriptor(MEDIA_OCI_MANIFEST, "sha256:" + "2" * 64, 1000)
        index_bytes = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": MEDIA_OCI_INDEX,
                "manifests": [
                    {
                        **amd64.manifest.to_json(),
                        "platform": {"architecture": "amd64", "os": "linux"},
                    },
                    {
                        **arm64_absent.to_json(),
                        "platform": {"architecture": "arm64", "os": "linux"},
                    },
                ],
            }
        ).encode()
        index = writer.write_blob(index_bytes, MEDIA_OCI_INDEX)
        canonical = f"{NAME}:multi@{index.digest}"
        writer.put_images([CachedImage(canonical, (canonical,), index, platform="linux/amd64")])
    raw = skopeo("inspect", "--raw", f"oci:{cache_dir}:{canonical}")
    assert raw.encode() == index_bytes  # the index is kept byte for byte
    info = inspect(cache_dir, canonical, "--override-os", "linux", "--override-arch", "amd64")
    # skopeo names the image by its index digest and describes the platform's manifest.
    assert info["Digest"] == index.digest
    assert info["Layers"] == [amd64.layer.digest]
    assert info["Architecture"] == "amd64"
