"""Image tar streams: reading ``docker save`` output into the cache, and writing load archives.

Both directions stream with fixed buffers: a layer never sits in memory whole.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from forklift_boot.archive.gzip import ParallelGzip
from forklift_boot.cache import (
    ANNOTATION_IMAGE_NAME,
    ANNOTATION_REF_NAME,
    BUFFER_SIZE,
    MAX_JSON_BLOB_SIZE,
    MEDIA_OCI_CONFIG,
    MEDIA_OCI_LAYER,
    MEDIA_OCI_LAYER_GZIP,
    MEDIA_OCI_MANIFEST,
    CacheReader,
    CacheWriter,
    Descriptor,
    build_oci_manifest,
)
from forklift_boot.cache.json_limits import load_json
from forklift_boot.errors import CacheError, EngineError

ByteCounter = Callable[[int], None]
_TAR_MAGIC_OFFSET = 257
GZIP_WBITS_AUTO = 47  # zlib: detect a gzip or zlib header


@dataclass(frozen=True)
class ImportedImage:
    """One image of a ``docker save`` stream, now in the cache."""

    image_id: str  # sha256 of the config bytes, Docker's image ID
    manifest: Descriptor  # the OCI manifest forklift-boot wrote for it
    config: Mapping[str, Any]
    repo_tags: tuple[str, ...]
    new_layer_bytes: int  # bytes of new layer blobs; a layer shared in the stream counts once


@dataclass
class _Layer:
    blob: Descriptor
    diff_id: str
    is_new: bool


@dataclass
class _SaveStream:
    writer: CacheWriter
    compress: str
    known_layers: Mapping[str, Descriptor]
    layers: dict[str, _Layer] = field(default_factory=dict)  # archive path -> stored layer
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
    such a layer is read (``docker save`` can't skip it, skopeo#2107) but not stored again.
    Config bytes are kept exactly, so image IDs survive the round trip.
    """
    stream = _SaveStream(writer, compress, known_layers)
    source = io.BufferedReader(_ChunkReader(chunks, on_bytes), BUFFER_SIZE)
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
        stream.manifest = _parse_json(body, name)
    elif name.endswith("/layer.tar") or (name.startswith("blobs/") and _is_tar(head)):
        stream.layers[name] = _store_layer(body, stream)
    elif _is_config_path(name) or (name.startswith("blobs/") and head.startswith(b"{")):
        data = body.read(MAX_JSON_BLOB_SIZE + 1)
        if len(data) > MAX_JSON_BLOB_SIZE:
            raise EngineError(f"couldn't read the image stream from Docker: {name} is too large")
        document = _parse_json(io.BytesIO(data), name)
        if isinstance(document, dict) and "rootfs" in document:
            stored = stream.writer.write_blob(data, MEDIA_OCI_CONFIG)
            stream.configs[name] = stored
            stream.config_docs[name] = document
    # Anything else (VERSION, v1 json, repositories, index.json, oci-layout) is derived data.


def _store_layer(body: IO[bytes], stream: _SaveStream) -> _Layer:
    with stream.writer.blob_writer() as blob:
        if stream.compress == "gzip":
            diff_hash = hashlib.sha256()
            gzip = ParallelGzip(level=1)
            try:
                while chunk := body.read(BUFFER_SIZE):
                    diff_hash.update(chunk)
                    for compressed in gzip.write(chunk):
                        blob.write(compressed)
                for compressed in gzip.finish():
                    blob.write(compressed)
            finally:
                gzip.close()
            media_type, diff_id = MEDIA_OCI_LAYER_GZIP, f"sha256:{diff_hash.hexdigest()}"
        else:
            blob.copy_from(body)
            # Stored as it came: the blob's own digest is the diff ID (one hash, not two).
            media_type, diff_id = MEDIA_OCI_LAYER, blob.digest
        known = stream.known_layers.get(diff_id)
        if known is not None:
            # The cache has this layer (perhaps compressed another way): keep that copy.
            blob.discard()
            return _Layer(known, diff_id, is_new=False)
        stored = blob.commit()
    return _Layer(Descriptor(media_type, stored.digest, stored.size), diff_id, is_new=stored.is_new)


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


def _credit_new_layers(layers: list[_Layer], counted: set[str]) -> int:
    """Bytes of new layers not yet credited to another image of the stream (shared: once)."""
    total = 0
    for layer in layers:
        if layer.is_new and layer.blob.digest not in counted:
            counted.add(layer.blob.digest)
            total += layer.blob.size
    return total


# OCI layouts (``ctr images export``): blobs kept byte for byte


@dataclass(frozen=True)
class ImportedLayout:
    """An OCI layout stream, now in the cache exactly as it was sent."""

    names: Mapping[str, Descriptor]  # index.json image name -> its descriptor (no annotations)
    new_blobs: Mapping[str, int]  # digest -> size of blobs the cache did not have
    # Every index.json entry by digest, named or not (Docker saves an image asked for by
    # digest alone without a name).
    by_digest: Mapping[str, Descriptor] = field(default_factory=dict)


def import_oci_layout(
    chunks: Iterable[bytes],
    writer: CacheWriter,
    *,
    what: str,
    on_bytes: ByteCounter = lambda n: None,
) -> ImportedLayout:
    """Stores every ``blobs/sha256/<hex>`` of an OCI layout tar unchanged (checked against its
    name) and returns the images its ``index.json`` names (``io.containerd.image.name``, else
    ``org.opencontainers.image.ref.name``). Compressed layers, manifests and indexes keep their
    bytes, so registry digests survive. ``manifest.json`` and anything else is ignored.
    """
    new_blobs: dict[str, int] = {}
    index: Any = None
    source = io.BufferedReader(_ChunkReader(chunks, on_bytes), BUFFER_SIZE)
    try:
        with tarfile.open(fileobj=source, mode="r|") as archive:
            for member in archive:
                name = posixpath.normpath(member.name)
                if not member.isfile():
                    continue
                file = archive.extractfile(member)
                if file is None:
                    continue
                if name.startswith("blobs/sha256/") and name.count("/") == 2:
                    digest = "sha256:" + name.rsplit("/", 1)[1]
                    with writer.blob_writer() as blob:
                        blob.copy_from(file)
                        try:
                            stored = blob.commit(expected_digest=digest, expected_size=member.size)
                        except CacheError as err:
                            raise EngineError(
                                f"couldn't read the image stream from {what}: {err}"
                            ) from err
                    if stored.is_new:
                        new_blobs[digest] = stored.size
                elif name == "index.json":
                    index = _parse_json(file, name)
        # Read to the end (tar padding), so that the producer finishes and reports its status.
        while source.read(BUFFER_SIZE):
            pass
    except tarfile.TarError as err:
        raise EngineError(f"couldn't read the image stream from {what}: {err}") from err
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise EngineError(f"couldn't read the image stream from {what}: it has no index.json")
    names: dict[str, Descriptor] = {}
    by_digest: dict[str, Descriptor] = {}
    for entry in index["manifests"]:
        descriptor = Descriptor.from_json(entry, f"index.json of the stream from {what}")
        annotations = descriptor.annotations
        image_name = annotations.get(ANNOTATION_IMAGE_NAME) or annotations.get(ANNOTATION_REF_NAME)
        if not writer.has_blob(descriptor.digest):
            raise EngineError(
                f"couldn't read the image stream from {what}: {image_name or 'an entry'} "
                f"({descriptor.digest}) is not in it"
            )
        plain = Descriptor(
            descriptor.media_type, descriptor.digest, descriptor.size, platform=descriptor.platform
        )
        by_digest[descriptor.digest] = plain
        if image_name:
            names[image_name] = plain
    return ImportedLayout(names=names, new_blobs=new_blobs, by_digest=by_digest)


# Load archives


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

    Docker 20.10 to 29 and both of Docker's stores load it (PEERS.md §5). Every blob is
    verified against its digest while it streams; a damaged blob ends the stream with
    DamagedBlobError, so Docker sees a truncated archive and loads nothing of it.
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


# Small helpers


def _is_tar(head: bytes) -> bool:
    return head[_TAR_MAGIC_OFFSET : _TAR_MAGIC_OFFSET + 5] == b"ustar"


def _is_config_path(name: str) -> bool:
    """A legacy config: ``<64 hex>.json`` at the top of the archive."""
    stem = name.removesuffix(".json")
    return name.endswith(".json") and "/" not in name and len(stem) == 64


def _parse_json(file: IO[bytes], name: str) -> Any:
    data = file.read(MAX_JSON_BLOB_SIZE + 1)
    if len(data) > MAX_JSON_BLOB_SIZE:
        raise EngineError(f"couldn't read the image stream from Docker: {name} is too large")
    try:
        return load_json(data)
    except ValueError as err:
        raise EngineError(f"couldn't read the image stream from Docker: {name}: {err}") from err


class _ChunkReader(io.RawIOBase):
    """A file over an iterator of byte chunks, so tarfile can read a stream."""

    def __init__(self, chunks: Iterable[bytes], on_bytes: ByteCounter) -> None:
        self._chunks = iter(chunks)
        self._pending = memoryview(b"")
        self._on_bytes = on_bytes

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            try:
                chunk = next(self._chunks)
            except StopIteration:
                return 0
            self._on_bytes(len(chunk))
            self._pending = memoryview(chunk)
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


class Prefixed(io.RawIOBase):
    """A file whose first bytes were already read (to sniff its type)."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self._head = memoryview(head)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._head:
            size = min(len(buffer), len(self._head))
            buffer[:size] = self._head[:size]
            self._head = self._head[size:]
            return size
        data = self._rest.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def write_docker_archive(
    reader: CacheReader, image: ArchiveImage, diff_ids: Sequence[str]
) -> Iterator[bytes]:
    """The legacy ``docker save`` layout (Docker 20.10): uncompressed ``<id>/layer.tar`` files,
    ``<config>.json`` and ``manifest.json``, which ``docker load`` and older tools (dive) read.

    A tar header needs the size first, so a compressed layer is read twice: once to count its
    uncompressed bytes, once to stream them.
    """
    config_name = image.config.digest.removeprefix("sha256:") + ".json"
    yield _tar_header(config_name, image.config.size)
    yield from _blob_chunks(reader, image.config)
    yield _padding(image.config.size)
    layer_names = []
    for layer, diff_id in zip(image.layers, diff_ids, strict=True):
        name = diff_id.removeprefix("sha256:") + "/layer.tar"
        layer_names.append(name)
        size = sum(len(chunk) for chunk in _uncompressed_chunks(reader, layer))
        yield _tar_header(name, size)
        yield from _uncompressed_chunks(reader, layer)
        yield _padding(size)
    manifest = [{"Config": config_name, "RepoTags": list(image.repo_tags), "Layers": layer_names}]
    yield from _tar_file("manifest.json", json.dumps(manifest).encode())
    yield b"\0" * (2 * tarfile.BLOCKSIZE)


def _blob_chunks(reader: CacheReader, descriptor: Descriptor) -> Iterator[bytes]:
    with reader.open_blob(descriptor.digest, expected_size=descriptor.size) as file:
        while chunk := file.read(BUFFER_SIZE):
            yield chunk


def _uncompressed_chunks(reader: CacheReader, layer: Descriptor) -> Iterator[bytes]:
    if not layer.media_type.endswith(("gzip", "+gzip")):
        yield from _blob_chunks(reader, layer)
        return
    # Output is capped per call, so a highly compressible layer never fills memory.
    decompressor = zlib.decompressobj(GZIP_WBITS_AUTO)
    for chunk in _blob_chunks(reader, layer):
        data = chunk
        while data:
            if output := decompressor.decompress(data, BUFFER_SIZE):
                yield output
            if decompressor.eof:
                # Several gzip members follow each other (compression.py): start the next one.
                data = decompressor.unused_data
                decompressor = zlib.decompressobj(GZIP_WBITS_AUTO)
            else:
                data = decompressor.unconsumed_tail
