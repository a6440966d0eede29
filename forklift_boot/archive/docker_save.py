"""Reading ``docker save`` streams into the cache, both the legacy and the OCI layout.

The stream is read with fixed buffers: a layer never sits in memory whole.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

from forklift_boot.archive.layer_blobs import StoredLayer, store_layer
from forklift_boot.archive.streams import ChunkReader, Prefixed, parse_json
from forklift_boot.cache import (
    BUFFER_SIZE,
    MAX_JSON_BLOB_SIZE,
    MEDIA_OCI_CONFIG,
    MEDIA_OCI_MANIFEST,
    CacheWriter,
    Descriptor,
    build_oci_manifest,
)
from forklift_boot.errors import EngineError
from forklift_boot.images import ByteCounter

_TAR_MAGIC_OFFSET = 257


@dataclass(frozen=True)
class ImportedImage:
    """One image of a ``docker save`` stream, now in the cache."""

    image_id: str  # sha256 of the config bytes, Docker's image ID
    manifest: Descriptor  # the OCI manifest forklift-boot wrote for it
    config: Mapping[str, Any]
    repo_tags: tuple[str, ...]
    new_layer_bytes: int  # bytes of new layer blobs; a layer shared in the stream counts once


@dataclass
class _SaveStream:
    writer: CacheWriter
    compress: str
    known_layers: Mapping[str, Descriptor]
    layers: dict[str, StoredLayer] = field(default_factory=dict)  # archive path -> stored layer
    configs: dict[str, Descriptor] = field(default_factory=dict)  # archive path -> config blob
    config_docs: dict[str, Any] = field(default_factory=dict)
    new_config_bytes: dict[str, int] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)  # archive path -> path it links to
    counted: set[str] = field(default_factory=set)  # new layers already credited to an image
    manifest: list[Any] | None = None


def import_docker_save(
    chunks: Iterable[bytes],
    writer: CacheWriter,
    *,
    compress: str,
    known_layers: Mapping[str, Descriptor],
    on_bytes: ByteCounter = lambda n: None,
) -> list[ImportedImage]:
    """Stores every image of a ``docker save`` stream; blobs are written as they arrive.

    Reads both the legacy layout (Docker 20.10 to 24: ``<id>/layer.tar``, ``<id>.json``) and
    the OCI layout Docker 25 and later save (``blobs/sha256/<hex>``), each with its
    ``manifest.json``. ``known_layers`` maps diff IDs to layer blobs the cache already has:
    such a layer is not stored again. Docker 25 and later name it by its diff ID, so its bytes
    are skipped as they pass; before 25 they are hashed to learn it (``docker save`` sends
    every layer either way, skopeo#2107).
    Config bytes are kept exactly, so image IDs survive the round trip.
    """
    stream = _SaveStream(writer, compress, known_layers)
    source = io.BufferedReader(ChunkReader(chunks, on_bytes), BUFFER_SIZE)
    try:
        with tarfile.open(fileobj=source, mode="r|") as archive:
            for member in archive:
                _take_member(archive, member, stream)
    except tarfile.TarError as err:
        raise EngineError(f"couldn't read the image stream from Docker: {err}") from err
    if stream.manifest is None:
        raise EngineError(
            "couldn't read the image stream from Docker: it has no manifest.json "
            "(is this a docker save stream?)"
        )
    return [_store_image(entry, stream) for entry in stream.manifest]


def _take_member(archive: tarfile.TarFile, member: tarfile.TarInfo, stream: _SaveStream) -> None:
    name = posixpath.normpath(member.name)
    if member.issym() or member.islnk():
        # Docker before 25 links a layer shared by two images to its first copy (moby#24003).
        target = member.linkname
        if member.issym():
            target = posixpath.join(posixpath.dirname(name), target)
        stream.links[name] = posixpath.normpath(target)
        return
    if not member.isfile():
        return
    file = archive.extractfile(member)
    if file is None:
        return
    head = file.read(512)
    body = io.BufferedReader(Prefixed(head, file), BUFFER_SIZE)
    if name == "manifest.json":
        stream.manifest = parse_json(body, name)
    elif name.endswith("/layer.tar") or (name.startswith("blobs/") and _is_tar(head)):
        stream.layers[name] = _known_layer(name, stream) or _store_layer(body, stream)
    elif _is_config_path(name) or (name.startswith("blobs/") and head.startswith(b"{")):
        data = body.read(MAX_JSON_BLOB_SIZE + 1)
        if len(data) > MAX_JSON_BLOB_SIZE:
            raise EngineError(f"couldn't read the image stream from Docker: {name} is too large")
        document = parse_json(io.BytesIO(data), name)
        if isinstance(document, dict) and "rootfs" in document:
            stored = stream.writer.write_blob(data, MEDIA_OCI_CONFIG)
            stream.configs[name] = stored
            stream.config_docs[name] = document
    # Anything else (VERSION, v1 json, repositories, index.json, oci-layout) is derived data.


def _known_layer(name: str, stream: _SaveStream) -> StoredLayer | None:
    """The cache's blob for a layer that Docker 25 and later name by its diff ID
    (``blobs/sha256/<diff ID>``), if the cache has one: the stream's bytes are then skipped,
    neither hashed, compressed nor written. The name needn't be trusted: the image's config
    (checked against its ID) lists the diff IDs, and the cache's blob is the one stored under
    that diff ID when its bytes were checked. Docker 20.10 to 24 name layers by a v1 ID, so
    their layers are read and dropped after hashing (known_layers in store_layer)."""
    directory, _, hex_part = name.rpartition("/")
    if directory != "blobs/sha256":
        return None
    known = stream.known_layers.get(f"sha256:{hex_part}")
    if known is None:
        return None
    return StoredLayer(known, f"sha256:{hex_part}", is_new=False)


def _store_layer(body: IO[bytes], stream: _SaveStream) -> StoredLayer:
    return store_layer(
        iter(lambda: body.read(BUFFER_SIZE), b""),
        stream.writer,
        compress=stream.compress,
        known_layers=stream.known_layers,
    )


def _store_image(entry: Any, stream: _SaveStream) -> ImportedImage:
    if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str):
        raise EngineError("couldn't read the image stream from Docker: malformed manifest.json")
    config_path = posixpath.normpath(entry["Config"])
    config = stream.configs.get(config_path)
    if config is None:
        raise EngineError(
            f"couldn't read the image stream from Docker: config {config_path} is missing"
        )
    document = stream.config_docs[config_path]
    layers = []
    for written_path in entry.get("Layers") or []:
        path = posixpath.normpath(written_path)
        path = stream.links.get(path, path)
        layer = stream.layers.get(path)
        if layer is None:
            raise EngineError(
                f"couldn't read the image stream from Docker: layer {path} of {config.digest} "
                "is missing"
            )
        layers.append(layer)
    expected = list((document.get("rootfs") or {}).get("diff_ids") or [])
    actual = [layer.diff_id for layer in layers]
    if expected != actual:
        raise EngineError(
            f"couldn't store image {config.digest}: its layers hash to {actual}, but its config "
            f"lists {expected}; Docker sent a damaged stream"
        )
    manifest_bytes = build_oci_manifest(config, [layer.blob for layer in layers])
    manifest = stream.writer.write_blob(manifest_bytes, MEDIA_OCI_MANIFEST)
    return ImportedImage(
        image_id=config.digest,
        manifest=manifest,
        config=document,
        repo_tags=tuple(entry.get("RepoTags") or ()),
        new_layer_bytes=_credit_new_layers(layers, stream.counted),
    )


def _credit_new_layers(layers: list[StoredLayer], counted: set[str]) -> int:
    """Bytes of new layers not yet credited to another image of the stream (shared: once)."""
    total = 0
    for layer in layers:
        if layer.is_new and layer.blob.digest not in counted:
            counted.add(layer.blob.digest)
            total += layer.blob.size
    return total


def _is_tar(head: bytes) -> bool:
    return head[_TAR_MAGIC_OFFSET : _TAR_MAGIC_OFFSET + 5] == b"ustar"


def _is_config_path(name: str) -> bool:
    """A legacy config: ``<64 hex>.json`` at the top of the archive."""
    stem = name.removesuffix(".json")
    return name.endswith(".json") and "/" not in name and len(stem) == 64
