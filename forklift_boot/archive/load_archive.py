"""Writing load archives: the tar streams ``docker load`` and ``ctr images import`` read.

Blobs stream from the cache with fixed buffers: a layer never sits in memory whole.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from forklift_boot.archive.layers import uncompressed_chunks
from forklift_boot.cache import (
    ANNOTATION_IMAGE_NAME,
    ANNOTATION_REF_NAME,
    BUFFER_SIZE,
    CacheReader,
    Descriptor,
)
from forklift_boot.images import ByteCounter


@dataclass(frozen=True)
class ArchiveImage:
    """One image to put in a load archive."""

    manifest: Descriptor  # a platform manifest in the cache
    config: Descriptor
    layers: tuple[Descriptor, ...]
    repo_tags: tuple[str, ...]  # manifest.json RepoTags: what the classic store tags
    # index.json io.containerd.image.name -> what it names: ``manifest``, or an image index in
    # the cache that lists it (its other platforms may be absent). What containerd stores name.
    names: Mapping[str, Descriptor]


def write_load_archive(
    reader: CacheReader,
    images: Sequence[ArchiveImage],
    *,
    omit_layers: frozenset[str] = frozenset(),
    on_bytes: ByteCounter = lambda n: None,
) -> Iterator[bytes]:
    """A tar in Docker 25's save format: an OCI layout plus ``manifest.json``.

    Docker 20.10 to 29 and both of Docker's stores load it (docs/architecture.md, "Load
    archives"). Every blob is verified against its digest while it streams; a damaged blob ends
    the stream with DamagedBlobError, so Docker sees a truncated archive and loads nothing of it.
    ``omit_layers`` leaves out layer blobs the daemon already has (the classic loader never
    opens a layer whose chain ID exists, image/tarexport/load.go).
    """
    yield from _tar_file("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    sent: set[str] = set()
    for image in images:
        for descriptor in (image.config, *image.layers, image.manifest, *image.names.values()):
            if descriptor.digest in sent or descriptor.digest in omit_layers:
                continue
            sent.add(descriptor.digest)
            yield from _tar_blob(reader, descriptor, on_bytes)
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                **target.to_json(),
                "annotations": {
                    ANNOTATION_IMAGE_NAME: name,
                    ANNOTATION_REF_NAME: name,
                },
            }
            for image in images
            for name, target in sorted(image.names.items())
        ],
    }
    manifest = [
        {
            "Config": _blob_path(image.config.digest),
            "RepoTags": list(image.repo_tags),
            "Layers": [_blob_path(layer.digest) for layer in image.layers],
        }
        for image in images
    ]
    yield from _tar_file("index.json", json.dumps(index).encode())
    yield from _tar_file("manifest.json", json.dumps(manifest).encode())
    yield b"\0" * (2 * tarfile.BLOCKSIZE)


def _tar_blob(
    reader: CacheReader, descriptor: Descriptor, on_bytes: ByteCounter
) -> Iterator[bytes]:
    yield _tar_header(_blob_path(descriptor.digest), descriptor.size)
    with reader.open_blob(descriptor.digest, expected_size=descriptor.size) as file:
        while chunk := file.read(BUFFER_SIZE):
            on_bytes(len(chunk))
            yield chunk
    yield _padding(descriptor.size)


def _tar_file(name: str, data: bytes) -> Iterator[bytes]:
    yield _tar_header(name, len(data))
    yield data
    yield _padding(len(data))


def _tar_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    return info.tobuf(format=tarfile.PAX_FORMAT)


def _padding(size: int) -> bytes:
    return b"\0" * (-size % tarfile.BLOCKSIZE)


def _blob_path(digest: str) -> str:
    return "blobs/sha256/" + digest.removeprefix("sha256:")


def write_docker_archive(
    reader: CacheReader, image: ArchiveImage, diff_ids: Sequence[str]
) -> Iterator[bytes]:
    """The legacy ``docker save`` layout (Docker 20.10): uncompressed ``<id>/layer.tar`` files,
    ``<config>.json`` and ``manifest.json``, which ``docker load`` and older tools (dive) read.

    A tar header needs the size first, so a compressed layer is read twice: once to count its
    uncompressed bytes, once to stream them.
    """
    what = next(iter(sorted(image.names)), image.manifest.digest)  # for messages
    config_name = image.config.digest.removeprefix("sha256:") + ".json"
    yield _tar_header(config_name, image.config.size)
    yield from _blob_chunks(reader, image.config)
    yield _padding(image.config.size)
    layer_names = []
    for layer, diff_id in zip(image.layers, diff_ids, strict=True):
        name = diff_id.removeprefix("sha256:") + "/layer.tar"
        layer_names.append(name)
        size = sum(len(chunk) for chunk in uncompressed_chunks(reader, what, layer))
        yield _tar_header(name, size)
        yield from uncompressed_chunks(reader, what, layer)
        yield _padding(size)
    manifest = [{"Config": config_name, "RepoTags": list(image.repo_tags), "Layers": layer_names}]
    yield from _tar_file("manifest.json", json.dumps(manifest).encode())
    yield b"\0" * (2 * tarfile.BLOCKSIZE)


def _blob_chunks(reader: CacheReader, descriptor: Descriptor) -> Iterator[bytes]:
    with reader.open_blob(descriptor.digest, expected_size=descriptor.size) as file:
        while chunk := file.read(BUFFER_SIZE):
            yield chunk
