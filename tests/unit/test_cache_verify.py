"""Tests for checking, repairing and garbage-collecting the cache."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from forklift_boot.cache import (
    ANNOTATION_REF_NAME,
    MEDIA_OCI_CONFIG,
    MEDIA_OCI_LAYER,
    MEDIA_OCI_MANIFEST,
    CachedImage,
    CacheWriter,
    Descriptor,
    ImageCache,
    build_oci_manifest,
)
from forklift_boot.errors import CacheError

NGINX = "docker.io/library/nginx:1.27"
REDIS = "docker.io/library/redis:7"


def store_image(writer: CacheWriter, canonical: str, layers: Sequence[bytes]) -> list[Descriptor]:
    """Write and index an image; return its manifest, config and layer descriptors."""
    layer_descriptors = [writer.write_blob(layer, MEDIA_OCI_LAYER) for layer in layers]
    config = {"os": "linux", "architecture": "amd64", "name": canonical}
    config_descriptor = writer.write_blob(json.dumps(config).encode(), MEDIA_OCI_CONFIG)
    manifest = writer.write_blob(
        build_oci_manifest(config_descriptor, layer_descriptors), MEDIA_OCI_MANIFEST
    )
    writer.put_images([CachedImage(canonical, (canonical,), manifest)])
    return [manifest, config_descriptor, *layer_descriptors]


def flip_byte(path: Path, offset: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[CacheWriter]:
    with ImageCache(tmp_path / "cache").writing() as cache_writer:
        yield cache_writer


def test_a_sound_cache_verifies_clean(writer: CacheWriter) -> None:
    store_image(writer, NGINX, [b"base", b"nginx"])
    store_image(writer, REDIS, [b"base", b"redis"])
    assert writer.verify() == []


def test_verify_detects_a_flipped_byte(writer: CacheWriter) -> None:
    blobs = store_image(writer, NGINX, [b"base layer bytes"])
    layer = blobs[2].digest
    flip_byte(writer.blob_path(layer), 5)
    problems = writer.verify()
    assert len(problems) == 1
    assert problems[0].startswith(f"blob {layer} (layer of {NGINX}) is corrupt: ")


def test_verify_detects_a_truncated_blob(writer: CacheWriter) -> None:
    blobs = store_image(writer, NGINX, [b"0123456789"])
    path = writer.blob_path(blobs[2].digest)
    path.write_bytes(path.read_bytes()[:4])
    assert writer.verify() == [
        f"blob {blobs[2].digest} (layer of {NGINX}) has 4 bytes, expected 10"
    ]


def test_verify_detects_missing_and_damaged_manifests(writer: CacheWriter) -> None:
    nginx = store_image(writer, NGINX, [b"a"])
    redis = store_image(writer, REDIS, [b"b"])
    writer.blob_path(nginx[1].digest).unlink()
    flip_byte(writer.blob_path(redis[0].digest), 10)
    problems = writer.verify()
    assert len(problems) == 2
    assert problems[0] == f"blob {nginx[1].digest} (config of {NGINX}) is missing"
    assert problems[1].startswith(f"blob {redis[0].digest} (manifest of {REDIS}) is corrupt")


def test_verify_reports_a_shared_broken_layer_once(writer: CacheWriter) -> None:
    nginx = store_image(writer, NGINX, [b"shared base", b"nginx"])
    store_image(writer, REDIS, [b"shared base", b"redis"])
    flip_byte(writer.blob_path(nginx[2].digest))
    assert len(writer.verify()) == 1


def test_verify_detects_stray_temporaries(writer: CacheWriter) -> None:
    store_image(writer, NGINX, [b"a"])
    (writer.cache_dir / "blobs" / "sha256" / ".tmp-0123").write_bytes(b"partial")
    (writer.cache_dir / "index.json.tmp-4567").write_bytes(b"{")
    problems = writer.verify()
    assert len(problems) == 2
    assert problems[0].startswith("leftover temporary file blobs/sha256/.tmp-0123")
    assert problems[1].startswith("leftover temporary file index.json.tmp-4567")


def test_verify_reports_an_unparsable_index_and_layout(writer: CacheWriter) -> None:
    (writer.cache_dir / "index.json").write_text("[")
    (writer.cache_dir / "oci-layout").write_text('{"imageLayoutVersion": "9.9.9"}')
    problems = writer.verify()
    assert len(problems) == 2
    assert "imageLayoutVersion '9.9.9', expected 1.0.0" in problems[0]
    assert "index.json: it isn't valid JSON" in problems[1]


def test_verify_reports_an_entry_that_is_not_a_descriptor(writer: CacheWriter) -> None:
    document = json.loads((writer.cache_dir / "index.json").read_text())
    document["manifests"].append({"annotations": {ANNOTATION_REF_NAME: "weird"}})
    (writer.cache_dir / "index.json").write_text(json.dumps(document))
    assert writer.verify() == [
        "index.json entry 0 (weird) isn't a valid OCI descriptor: mediaType is missing or not a string"
    ]


def test_repair_removes_damaged_blobs_only(writer: CacheWriter) -> None:
    blobs = store_image(writer, NGINX, [b"good", b"bad"])
    flip_byte(writer.blob_path(blobs[3].digest))
    assert writer.repair() == [blobs[3].digest]
    assert not writer.has_blob(blobs[3].digest)
    assert all(writer.has_blob(d.digest) for d in blobs[:3])
    assert writer.verify() == [f"blob {blobs[3].digest} (layer of {NGINX}) is missing"]
    assert writer.repair() == []


# --- garbage collection -----------------------------------------------------------------


def test_gc_keeps_shared_layers_of_the_remaining_image(writer: CacheWriter) -> None:
    nginx = store_image(writer, NGINX, [b"shared base layer", b"nginx layer"])
    redis = store_image(writer, REDIS, [b"shared base layer", b"redis layer"])
    assert writer.collect_garbage() == 0

    writer.remove_images([NGINX])
    only_nginx = [d for d in nginx if d.digest not in {r.digest for r in redis}]
    assert len(only_nginx) == 3  # manifest, config, nginx layer; the base layer is shared
    assert writer.collect_garbage() == sum(d.size for d in only_nginx)

    assert not any(writer.has_blob(d.digest) for d in only_nginx)
    assert all(writer.has_blob(d.digest) for d in redis)
    assert writer.verify() == []


def test_gc_removes_unindexed_blobs_and_ignores_other_files(writer: CacheWriter) -> None:
    store_image(writer, NGINX, [b"kept"])
    orphan = writer.write_blob(b"never indexed", MEDIA_OCI_LAYER)
    blobs_dir = writer.cache_dir / "blobs" / "sha256"
    (blobs_dir / "README").write_text("not a blob")
    # Written behind the writer's back, as a crashed writer would leave it.
    (blobs_dir / ".tmp-crashed").write_bytes(b"x")
    assert writer.collect_garbage() == orphan.size
    assert not writer.has_blob(orphan.digest)
    assert (blobs_dir / "README").exists()
    assert (blobs_dir / ".tmp-crashed").exists()


def test_gc_keeps_blobs_of_foreign_entries(writer: CacheWriter) -> None:
    blobs = store_image(writer, NGINX, [b"from another tool"])
    document = json.loads((writer.cache_dir / "index.json").read_text())
    document["manifests"][0]["annotations"] = {ANNOTATION_REF_NAME: "other-tool"}
    (writer.cache_dir / "index.json").write_text(json.dumps(document))
    assert writer.images() == []
    assert writer.collect_garbage() == 0
    assert all(writer.has_blob(d.digest) for d in blobs)


def test_gc_refuses_when_a_manifest_cannot_be_followed(writer: CacheWriter) -> None:
    blobs = store_image(writer, NGINX, [b"layer"])
    writer.write_blob(b"garbage", MEDIA_OCI_LAYER)
    flip_byte(writer.blob_path(blobs[0].digest), 20)
    with pytest.raises(CacheError, match=rf"couldn't collect garbage .*{NGINX} can't be followed"):
        writer.collect_garbage()
    assert writer.has_blob(blobs[2].digest)


def test_gc_of_an_empty_cache(writer: CacheWriter) -> None:
    assert writer.collect_garbage() == 0


def test_gc_refuses_an_entry_that_is_not_a_descriptor(writer: CacheWriter) -> None:
    blobs = store_image(writer, NGINX, [b"layer"])
    document = json.loads((writer.cache_dir / "index.json").read_text())
    document["manifests"].append({"digest": "sha256:" + "3" * 64})
    (writer.cache_dir / "index.json").write_text(json.dumps(document))
    orphan = writer.write_blob(b"unreferenced", MEDIA_OCI_LAYER)
    with pytest.raises(CacheError, match="isn't a valid OCI descriptor"):
        writer.collect_garbage()
    assert writer.has_blob(orphan.digest)
    assert writer.repair() == []  # repair follows the entries it can
    assert all(writer.has_blob(d.digest) for d in blobs)
