"""Tests for the cache's index.json: entries, names, foreign entries, and walking images."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from forklift_boot.cache import (
    ANNOTATION_IMAGE_ID,
    ANNOTATION_IMAGE_NAME,
    ANNOTATION_PLATFORM,
    ANNOTATION_REF_NAME,
    ANNOTATION_REFS,
    ANNOTATION_REGISTRY_DIGEST,
    MEDIA_OCI_CONFIG,
    MEDIA_OCI_INDEX,
    MEDIA_OCI_LAYER,
    MEDIA_OCI_LAYER_GZIP,
    MEDIA_OCI_MANIFEST,
    CachedImage,
    CacheWriter,
    Descriptor,
    ImageCache,
    build_oci_manifest,
)
from forklift_boot.errors import CacheError
from forklift_boot.refs import parse_image_ref

NGINX = "docker.io/library/nginx:1.27"


def store_manifest(
    writer: CacheWriter, layers: Sequence[bytes], arch: str = "amd64"
) -> tuple[Descriptor, list[Descriptor]]:
    """Write layers, a config and an OCI manifest; return the manifest and what it names."""
    layer_descriptors = [writer.write_blob(layer, MEDIA_OCI_LAYER) for layer in layers]
    config = {
        "architecture": arch,
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [d.digest for d in layer_descriptors]},
    }
    config_descriptor = writer.write_blob(json.dumps(config).encode(), MEDIA_OCI_CONFIG)
    manifest = writer.write_blob(
        build_oci_manifest(config_descriptor, layer_descriptors), MEDIA_OCI_MANIFEST
    )
    return manifest, [manifest, config_descriptor, *layer_descriptors]


def image(canonical: str, descriptor: Descriptor, *refs: str) -> CachedImage:
    return CachedImage(canonical=canonical, refs=refs or (canonical,), descriptor=descriptor)


def index_json(cache_dir: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((cache_dir / "index.json").read_text())
    return document


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[CacheWriter]:
    with ImageCache(tmp_path / "cache").writing() as cache_writer:
        yield cache_writer


# --- descriptors and entries --------------------------------------------------------------


def test_descriptor_round_trips_unknown_fields() -> None:
    obj = {
        "mediaType": MEDIA_OCI_MANIFEST,
        "digest": "sha256:" + "a" * 64,
        "size": 123,
        "urls": ["https://example.com/layer"],
        "artifactType": "application/example",
        "annotations": {"org.example": "kept"},
        "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"},
    }
    descriptor = Descriptor.from_json(obj)
    assert descriptor.platform == {"architecture": "arm64", "os": "linux", "variant": "v8"}
    assert descriptor.to_json() == obj
    assert Descriptor.from_json(descriptor.to_json()) == descriptor


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ([], "not a JSON object"),
        ({"digest": "sha256:x", "size": 1}, "mediaType"),
        ({"mediaType": "m", "size": 1}, "digest"),
        ({"mediaType": "m", "digest": "d", "size": -1}, "size"),
        ({"mediaType": "m", "digest": "d", "size": True}, "size"),
        ({"mediaType": "m", "digest": "d", "size": 1, "annotations": {"a": 1}}, "annotations"),
    ],
)
def test_descriptor_refuses_malformed_json(obj: object, reason: str) -> None:
    with pytest.raises(CacheError, match=rf"entry 7 isn't a valid OCI descriptor: .*{reason}"):
        Descriptor.from_json(obj, "entry 7")


def test_cached_image_entry_annotations() -> None:
    descriptor = Descriptor(
        MEDIA_OCI_MANIFEST,
        "sha256:" + "b" * 64,
        10,
        annotations={
            "org.example.kept": "yes",
            ANNOTATION_IMAGE_NAME: "stale",
            ANNOTATION_REFS: "x",
        },
    )
    cached = CachedImage(
        canonical=NGINX,
        refs=("nginx:1.27", "docker.io/nginx:1.27", "nginx:1.27"),
        descriptor=descriptor,
        image_id="sha256:" + "c" * 64,
        platform="linux/arm64/v8",
    )
    assert cached.refs == ("docker.io/nginx:1.27", "nginx:1.27")
    entry = cached.to_entry()
    assert entry["annotations"] == {
        ANNOTATION_IMAGE_NAME: NGINX,
        ANNOTATION_REF_NAME: NGINX,
        ANNOTATION_REFS: "docker.io/nginx:1.27,nginx:1.27",
        ANNOTATION_IMAGE_ID: "sha256:" + "c" * 64,
        ANNOTATION_PLATFORM: "linux/arm64/v8",
        "org.example.kept": "yes",
    }
    assert ANNOTATION_REGISTRY_DIGEST not in entry["annotations"]  # absent keys are omitted
    again = CachedImage.from_entry(entry)
    assert again is not None
    assert (again.canonical, again.refs, again.image_id) == (NGINX, cached.refs, cached.image_id)
    assert (again.registry_digest, again.platform) == (None, "linux/arm64/v8")
    assert again.to_entry() == entry


def test_entry_without_containerd_name_is_not_an_image() -> None:
    entry = {
        "mediaType": MEDIA_OCI_MANIFEST,
        "digest": "sha256:" + "d" * 64,
        "size": 1,
        "annotations": {ANNOTATION_REF_NAME: "latest"},
    }
    assert CachedImage.from_entry(entry) is None


def test_cached_image_refuses_refs_with_commas() -> None:
    descriptor = Descriptor(MEDIA_OCI_MANIFEST, "sha256:" + "e" * 64, 1)
    with pytest.raises(ValueError, match="invalid refs"):
        CachedImage(NGINX, ("a,b",), descriptor)


# --- put, find, remove ------------------------------------------------------------------


def test_put_images_writes_a_sorted_oci_index(writer: CacheWriter) -> None:
    manifest, _ = store_manifest(writer, [b"layer"])
    ref = parse_image_ref("nginxdemos/hello:0.4")
    writer.put_images(
        [image(NGINX, manifest, "nginx:1.27"), image(ref.canonical, manifest, ref.written)]
    )
    document = index_json(writer.cache_dir)
    assert document["schemaVersion"] == 2
    assert document["mediaType"] == MEDIA_OCI_INDEX
    names = [e["annotations"][ANNOTATION_IMAGE_NAME] for e in document["manifests"]]
    assert names == ["docker.io/library/nginx:1.27", "docker.io/nginxdemos/hello:0.4"]
    assert [i.canonical for i in writer.images()] == names
    found = writer.find("docker.io/nginxdemos/hello:0.4")
    assert found is not None
    assert found.refs == ("nginxdemos/hello:0.4",)
    assert writer.find("docker.io/library/absent:1") is None
    assert json.loads((writer.cache_dir / "oci-layout").read_text()) == {
        "imageLayoutVersion": "1.0.0"
    }


def test_put_images_replaces_by_name_and_keeps_foreign_entries(writer: CacheWriter) -> None:
    old, _ = store_manifest(writer, [b"old"])
    new, _ = store_manifest(writer, [b"new"])
    foreign, _ = store_manifest(writer, [b"foreign"])
    writer.put_images([image(NGINX, old)])
    # What skopeo or an older forklift-boot might have added by hand.
    document = index_json(writer.cache_dir)
    foreign_entry = {
        **foreign.to_json(),
        "annotations": {ANNOTATION_REF_NAME: "other-tool", "org.example.note": "keep me"},
        "org.example.unknown-field": [1, 2, 3],
    }
    document["manifests"].insert(0, foreign_entry)
    document["annotations"] = {"org.example.index": "top-level field"}
    (writer.cache_dir / "index.json").write_text(json.dumps(document))

    writer.put_images([image(NGINX, new)])

    document = index_json(writer.cache_dir)
    assert document["annotations"] == {"org.example.index": "top-level field"}
    assert foreign_entry in document["manifests"]
    ours = [e for e in document["manifests"] if e != foreign_entry]
    assert [e["digest"] for e in ours] == [new.digest]
    assert [i.canonical for i in writer.images()] == [NGINX]  # the foreign entry isn't one


def test_put_images_refuses_an_image_with_a_missing_blob(writer: CacheWriter) -> None:
    manifest, blobs = store_manifest(writer, [b"base", b"app"])
    writer.blob_path(blobs[3].digest).unlink()
    before = (writer.cache_dir / "index.json").read_bytes()
    with pytest.raises(
        CacheError, match=rf"couldn't add {NGINX} .*{blobs[3].digest} \(layer\) is missing"
    ):
        writer.put_images([image(NGINX, manifest)])
    assert (writer.cache_dir / "index.json").read_bytes() == before


def test_put_images_refuses_a_missing_manifest(writer: CacheWriter) -> None:
    absent = Descriptor(MEDIA_OCI_MANIFEST, "sha256:" + "f" * 64, 100)
    with pytest.raises(CacheError, match=r"\(manifest\) is missing"):
        writer.put_images([image(NGINX, absent)])


def test_put_images_refuses_duplicate_names(writer: CacheWriter) -> None:
    manifest, _ = store_manifest(writer, [b"x"])
    with pytest.raises(ValueError, match="twice"):
        writer.put_images([image(NGINX, manifest), image(NGINX, manifest)])


def test_remove_images(writer: CacheWriter) -> None:
    manifest, _ = store_manifest(writer, [b"x"])
    writer.put_images([image(NGINX, manifest), image("docker.io/library/redis:7", manifest)])
    assert writer.remove_images([NGINX, "docker.io/library/absent:1"]) == [NGINX]
    assert [i.canonical for i in writer.images()] == ["docker.io/library/redis:7"]
    assert writer.remove_images(["docker.io/library/absent:1"]) == []
    # Blobs stay until garbage collection.
    assert writer.has_blob(manifest.digest)


def test_referenced_blobs_of_a_manifest(writer: CacheWriter) -> None:
    manifest, blobs = store_manifest(writer, [b"base", b"app"])
    cached = image(NGINX, manifest)
    writer.put_images([cached])
    assert writer.referenced_blobs(cached) == blobs


def test_partly_present_index_is_walked(writer: CacheWriter) -> None:
    """An entry pinned to a registry's image index, with only one platform cached."""
    amd64, amd64_blobs = store_manifest(writer, [b"amd64 layer"], arch="amd64")
    arm64_absent = Descriptor(MEDIA_OCI_MANIFEST, "sha256:" + "1" * 64, 500)
    platforms = [{"architecture": "amd64", "os": "linux"}, {"architecture": "arm64", "os": "linux"}]
    index = {
        "schemaVersion": 2,
        "mediaType": MEDIA_OCI_INDEX,
        "manifests": [
            {**d.to_json(), "platform": p}
            for d, p in zip([amd64, arm64_absent], platforms, strict=True)
        ],
    }
    index_descriptor = writer.write_blob(json.dumps(index).encode(), MEDIA_OCI_INDEX)
    cached = CachedImage(
        canonical=f"{NGINX}@{index_descriptor.digest}",
        refs=(f"nginx:1.27@{index_descriptor.digest}",),
        descriptor=index_descriptor,
        platform="linux/amd64",
    )
    writer.put_images([cached])
    referenced = writer.referenced_blobs(cached)
    assert [d.digest for d in referenced] == [d.digest for d in [index_descriptor, *amd64_blobs]]
    assert referenced[1].platform == {"architecture": "amd64", "os": "linux"}
    assert writer.verify() == []

    # With no platform present at all, the entry is useless and refused.
    writer.blob_path(amd64.digest).unlink()
    with pytest.raises(CacheError, match="none of the platform manifests"):
        writer.referenced_blobs(cached)
    with pytest.raises(CacheError, match="none of the platform manifests"):
        writer.put_images([cached])


def test_referenced_blobs_refuses_a_damaged_manifest(writer: CacheWriter) -> None:
    manifest, _ = store_manifest(writer, [b"x"])
    cached = image(NGINX, manifest)
    writer.put_images([cached])
    path = writer.blob_path(manifest.digest)
    path.write_bytes(path.read_bytes().replace(b"schemaVersion", b"schemaversion"))
    with pytest.raises(CacheError, match=rf"{manifest.digest} \(manifest\) is corrupt"):
        writer.referenced_blobs(cached)


# --- reading ----------------------------------------------------------------------------


def test_reading_a_missing_cache_creates_nothing(tmp_path: Path) -> None:
    cache_dir = tmp_path / "no" / "cache"
    with ImageCache(cache_dir).reading() as reader:
        assert reader.images() == []
        assert not reader.has_blob("sha256:" + "0" * 64)
        assert reader.verify() == []
    assert not (tmp_path / "no").exists()


def test_reading_an_empty_directory_is_an_empty_cache(tmp_path: Path) -> None:
    with ImageCache(tmp_path).reading() as reader:
        assert reader.images() == []
        assert reader.verify() == []


def test_reader_is_unusable_after_its_lock_is_released(tmp_path: Path) -> None:
    with ImageCache(tmp_path).reading() as reader:
        pass
    with pytest.raises(CacheError, match="after its lock was released"):
        reader.images()


def test_a_malformed_entry_does_not_hide_the_others(writer: CacheWriter) -> None:
    manifest, _ = store_manifest(writer, [b"x"])
    writer.put_images([image(NGINX, manifest)])
    document = index_json(writer.cache_dir)
    document["manifests"].append({"annotations": {ANNOTATION_IMAGE_NAME: "broken"}})
    (writer.cache_dir / "index.json").write_text(json.dumps(document))
    assert [i.canonical for i in writer.images()] == [NGINX]


def test_unparsable_index_is_a_cache_error(writer: CacheWriter) -> None:
    (writer.cache_dir / "index.json").write_text("{not json")
    with pytest.raises(CacheError, match=r"index.json: it isn't valid JSON"):
        writer.images()


def test_gzip_media_type_is_just_a_blob(writer: CacheWriter) -> None:
    layer = writer.write_blob(b"\x1f\x8b\x08 pretend gzip", MEDIA_OCI_LAYER_GZIP)
    assert layer.media_type == MEDIA_OCI_LAYER_GZIP
    assert writer.has_blob(layer.digest)
