"""What load-img makes of an image index cached from a registry: the platform manifest it picks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forklift_boot.cache import (
    MEDIA_OCI_CONFIG,
    MEDIA_OCI_INDEX,
    MEDIA_OCI_LAYER,
    MEDIA_OCI_MANIFEST,
    CachedImage,
    CacheWriter,
    Descriptor,
    ImageCache,
    build_oci_manifest,
)
from forklift_boot.errors import CacheError
from forklift_boot.images import Wanted, plan_load
from forklift_boot.refs import parse_image_ref

NAME = "docker.io/library/app@sha256:" + "0" * 64


def platform_manifest(writer: CacheWriter, platform: dict[str, str]) -> Descriptor:
    layer = writer.write_blob(json.dumps(platform).encode(), MEDIA_OCI_LAYER)
    config = {**platform, "rootfs": {"type": "layers", "diff_ids": [layer.digest]}}
    config_descriptor = writer.write_blob(json.dumps(config).encode(), MEDIA_OCI_CONFIG)
    manifest = writer.write_blob(build_oci_manifest(config_descriptor, [layer]), MEDIA_OCI_MANIFEST)
    return Descriptor(manifest.media_type, manifest.digest, manifest.size, platform=platform)


PLATFORMS = [
    {"architecture": "amd64", "os": "linux"},
    {"architecture": "arm64", "os": "linux", "variant": "v8"},
    {"architecture": "arm", "os": "linux", "variant": "v7"},
    {"architecture": "unknown", "os": "unknown"},
]


def cache_index(cache_dir: Path, present: list[int]) -> dict[str, Descriptor]:
    """An index of the four platforms, of which only ``present`` have their blobs cached."""
    cache = ImageCache(cache_dir)
    with cache.writing() as writer:
        children = [platform_manifest(writer, platform) for platform in PLATFORMS]
        index = writer.write_blob(
            json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": MEDIA_OCI_INDEX,
                    "manifests": [c.to_json() for c in children],
                }
            ).encode(),
            MEDIA_OCI_INDEX,
        )
        for number, child in enumerate(children):
            if number not in present:
                writer.blob_path(child.digest).unlink()
        writer.put_images([CachedImage(NAME, ("app@sha256:" + "0" * 64,), index)])
    return {str(number): child for number, child in enumerate(children)}


@pytest.mark.parametrize(
    ("target", "chosen"),
    [
        ("linux/amd64", "0"),
        ("linux/arm64", "1"),  # the index says arm64/v8: the same platform
        ("linux/arm64/v8", "1"),
        ("linux/arm", "2"),
        ("linux/arm/v7", "2"),
    ],
)
def test_load_picks_the_platform_as_containerd_matches(
    tmp_path: Path, target: str, chosen: str
) -> None:
    children = cache_index(tmp_path, present=[0, 1, 2])
    wanted = Wanted(NAME, (parse_image_ref("app@sha256:" + "0" * 64),), essential=True)
    with ImageCache(tmp_path).reading() as reader:
        entry = reader.find(NAME)
        assert entry is not None
        plan = plan_load(reader, entry, wanted, target)
    assert plan.manifest.digest == children[chosen].digest


def test_only_cached_platforms_count(tmp_path: Path) -> None:
    cache_index(tmp_path, present=[1])
    wanted = Wanted(NAME, (parse_image_ref("app@sha256:" + "0" * 64),), essential=True)
    with ImageCache(tmp_path).reading() as reader:
        entry = reader.find(NAME)
        assert entry is not None
        # arm64 can run arm/v7, but arm/v7 is not cached; amd64 can't run arm64.
        assert plan_load(reader, entry, wanted, "linux/arm64").manifest.platform == PLATFORMS[1]
        with pytest.raises(CacheError, match=r"no linux/amd64 manifest \(cached: linux/arm64/v8\)"):
            plan_load(reader, entry, wanted, "linux/amd64")
