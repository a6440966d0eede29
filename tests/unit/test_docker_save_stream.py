"""archive/docker_save: a layer the cache has, in the OCI layout Docker 25 and later save, is
skipped unread; in the legacy layout (Docker 20.10 to 24) it is hashed and dropped.

The streams are written here as those Docker versions write them: the OCI layout names each
uncompressed layer ``blobs/sha256/<diff ID>``, the legacy one ``<v1 id>/layer.tar``.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from forklift_boot.archive import docker_save, layer_blobs
from forklift_boot.archive.docker_save import import_docker_save
from forklift_boot.archive.layer_blobs import StoredLayer
from forklift_boot.cache import CacheWriter, Descriptor, ImageCache
from forklift_boot.cache.verify import verify_cache


def sha(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def layer_tar(name: str, content: bytes) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    return out.getvalue()


BASE = layer_tar("base.txt", b"the base layer, shared\n" * 5000)
APP = layer_tar("app.txt", b"the app layer\n" * 3000)
CONFIG = json.dumps(
    {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [sha(BASE), sha(APP)]},
    }
).encode()


def stream_of(members: list[tuple[str, bytes]]) -> list[bytes]:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    whole = out.getvalue()
    return [whole[i : i + 65536] for i in range(0, len(whole), 65536)]


def oci_stream(layers: dict[str, bytes] | None = None) -> list[bytes]:
    """What Docker 25+ saves from its classic store (the parts forklift-boot reads)."""
    layers = layers if layers is not None else {sha(BASE): BASE, sha(APP): APP}
    names = [f"blobs/sha256/{digest[7:]}" for digest in layers]
    manifest = [{"Config": f"blobs/sha256/{sha(CONFIG)[7:]}", "RepoTags": ["x:1"], "Layers": names}]
    return stream_of(
        [
            ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
            *zip(names, layers.values(), strict=True),
            (f"blobs/sha256/{sha(CONFIG)[7:]}", CONFIG),
            ("manifest.json", json.dumps(manifest).encode()),
        ]
    )


def legacy_stream() -> list[bytes]:
    """What Docker 20.10 to 24 save: layers under v1 IDs, the config as ``<id>.json``."""
    manifest = [
        {
            "Config": f"{sha(CONFIG)[7:]}.json",
            "RepoTags": ["x:1"],
            "Layers": ["a" * 64 + "/layer.tar", "b" * 64 + "/layer.tar"],
        }
    ]
    return stream_of(
        [
            ("a" * 64 + "/layer.tar", BASE),
            ("b" * 64 + "/layer.tar", APP),
            (f"{sha(CONFIG)[7:]}.json", CONFIG),
            ("manifest.json", json.dumps(manifest).encode()),
        ]
    )


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[CacheWriter]:
    with ImageCache(tmp_path / "cache").writing() as cache_writer:
        yield cache_writer


@pytest.fixture
def stored(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The layers store_layer was given (read, hashed, perhaps compressed), by diff ID."""
    calls: list[str] = []
    real = layer_blobs.store_layer

    def counting(*args: Any, **kwargs: Any) -> StoredLayer:
        layer = real(*args, **kwargs)
        calls.append(layer.diff_id)
        return layer

    monkeypatch.setattr(docker_save, "store_layer", counting)
    return calls


def base_blob(writer: CacheWriter) -> Descriptor:
    """The base layer stored gzip-compressed, as an earlier cache-img would have."""
    with writer.blob_writer() as blob:
        blob.write(BASE)
        return blob.commit().to_descriptor("application/vnd.oci.image.layer.v1.tar")


def test_oci_layout_skips_a_known_layer_unread(writer: CacheWriter, stored: list[str]) -> None:
    known = {sha(BASE): base_blob(writer)}
    [image] = import_docker_save(oci_stream(), writer, compress="gzip", known_layers=known)
    assert stored == [sha(APP)]  # the base layer was neither hashed nor compressed
    assert image.image_id == sha(CONFIG)
    manifest = json.loads(writer.blob_path(image.manifest.digest).read_bytes())
    assert manifest["layers"][0]["digest"] == known[sha(BASE)].digest
    assert image.new_layer_bytes == manifest["layers"][1]["size"]
    assert verify_cache(writer) == []


def test_oci_layout_stores_an_unknown_layer(writer: CacheWriter, stored: list[str]) -> None:
    [image] = import_docker_save(oci_stream(), writer, compress="none", known_layers={})
    assert stored == [sha(BASE), sha(APP)]
    manifest = json.loads(writer.blob_path(image.manifest.digest).read_bytes())
    assert [layer["digest"] for layer in manifest["layers"]] == [sha(BASE), sha(APP)]


def test_a_name_that_lies_cannot_put_other_bytes_in_the_cache(
    writer: CacheWriter, stored: list[str]
) -> None:
    # The stream calls other bytes the base layer: the image still gets the cache's own blob
    # for that diff ID (its config, checked against the image ID, lists it), and nothing of
    # the impostor is written.
    known = {sha(BASE): base_blob(writer)}
    impostor = {sha(BASE): layer_tar("evil.txt", b"not the base layer"), sha(APP): APP}
    [image] = import_docker_save(oci_stream(impostor), writer, compress="none", known_layers=known)
    manifest = json.loads(writer.blob_path(image.manifest.digest).read_bytes())
    assert manifest["layers"][0]["digest"] == known[sha(BASE)].digest
    assert writer.blob_path(known[sha(BASE)].digest).read_bytes() == BASE
    assert stored == [sha(APP)]
    assert verify_cache(writer) == []


def test_legacy_layout_hashes_a_known_layer_and_drops_it(
    writer: CacheWriter, stored: list[str]
) -> None:
    known = {sha(BASE): base_blob(writer)}
    [image] = import_docker_save(legacy_stream(), writer, compress="gzip", known_layers=known)
    # Named by a v1 ID, the layer's diff ID is known only once it was read.
    assert stored == [sha(BASE), sha(APP)]
    manifest = json.loads(writer.blob_path(image.manifest.digest).read_bytes())
    assert manifest["layers"][0]["digest"] == known[sha(BASE)].digest
