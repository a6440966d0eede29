"""Layer tars crafted entry by entry, and the cache entries and docker-archives made of them."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import struct
import subprocess
import tarfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from forklift_boot.cache import (
    MEDIA_DOCKER_LAYER,
    MEDIA_DOCKER_LAYER_GZIP,
    MEDIA_OCI_CONFIG,
    MEDIA_OCI_INDEX,
    MEDIA_OCI_LAYER,
    MEDIA_OCI_LAYER_GZIP,
    MEDIA_OCI_LAYER_ZSTD,
    MEDIA_OCI_MANIFEST,
    CachedImage,
    CacheWriter,
    Descriptor,
    ImageCache,
    build_oci_manifest,
)
from forklift_boot.refs import parse_image_ref

MTIME = 1_600_000_000  # 2020-09-13: anything Docker makes itself is far newer
COMPRESSIONS = ("gzip", "gzip-members", "zstd", "none")


@dataclass(frozen=True)
class Entry:
    info: tarfile.TarInfo
    data: bytes = b""


def _info(name: str, kind: bytes, mode: int, *, uid: int, gid: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.mtime = mtime
    return info


def file(
    name: str,
    data: bytes = b"",
    *,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    mtime: int = MTIME,
) -> Entry:
    info = _info(name, tarfile.REGTYPE, mode, uid=uid, gid=gid, mtime=mtime)
    info.size = len(data)
    return Entry(info, data)


def directory(
    name: str, *, mode: int = 0o755, uid: int = 0, gid: int = 0, mtime: int = MTIME
) -> Entry:
    return Entry(_info(name, tarfile.DIRTYPE, mode, uid=uid, gid=gid, mtime=mtime))


def symlink(name: str, target: str, *, uid: int = 0, gid: int = 0, mtime: int = MTIME) -> Entry:
    info = _info(name, tarfile.SYMTYPE, 0o777, uid=uid, gid=gid, mtime=mtime)
    info.linkname = target
    return Entry(info)


def hardlink(
    name: str, target: str, *, mode: int = 0o644, uid: int = 0, gid: int = 0, mtime: int = MTIME
) -> Entry:
    """A hardlink entry; Docker gives the file the attributes of the last entry naming it."""
    info = _info(name, tarfile.LNKTYPE, mode, uid=uid, gid=gid, mtime=mtime)
    info.linkname = target
    return Entry(info)


def fifo(name: str, *, mode: int = 0o640, mtime: int = MTIME) -> Entry:
    return Entry(_info(name, tarfile.FIFOTYPE, mode, uid=0, gid=0, mtime=mtime))


def char_device(name: str, major: int, minor: int, *, mode: int = 0o666) -> Entry:
    info = _info(name, tarfile.CHRTYPE, mode, uid=0, gid=0, mtime=MTIME)
    info.devmajor, info.devminor = major, minor
    return Entry(info)


def whiteout(path: str) -> Entry:
    """An OCI/Docker whiteout: ``dir/.wh.name`` hides ``dir/name`` of lower layers."""
    parent, _, name = path.rpartition("/")
    return file(f"{parent}/.wh.{name}" if parent else f".wh.{name}")


def opaque(directory_path: str) -> Entry:
    """``dir/.wh..wh..opq``: lower layers' entries under ``dir`` are hidden."""
    return file(f"{directory_path}/.wh..wh..opq")


def layer_tar(*entries: Entry) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            tar.addfile(entry.info, io.BytesIO(entry.data) if entry.info.isreg() else None)
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def compress(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(data, mtime=0)
    if compression == "gzip-members":
        # Several gzip members one after the other, as forklift-boot's parallel gzip writes
        # them (in 4 MiB blocks; small pieces here so that small layers get several).
        pieces = [data[i : i + 1000] for i in range(0, len(data), 1000)] or [b""]
        return b"".join(gzip.compress(piece, mtime=0) for piece in pieces)
    if compression == "zstd":
        zstd = shutil.which("zstd")
        assert zstd is not None, "the zstd program is needed (apt-get install zstd)"
        return subprocess.run(
            [zstd, "-q", "-c"], input=data, capture_output=True, check=True
        ).stdout
    assert compression == "none"
    return data


def layer_media_type(compression: str, style: str) -> str:
    if style == "docker":
        assert compression != "zstd", "Docker's media types have no zstd"
        return MEDIA_DOCKER_LAYER if compression == "none" else MEDIA_DOCKER_LAYER_GZIP
    if compression == "none":
        return MEDIA_OCI_LAYER
    return MEDIA_OCI_LAYER_ZSTD if compression == "zstd" else MEDIA_OCI_LAYER_GZIP


def image_config(layers: Sequence[bytes], architecture: str = "amd64") -> bytes:
    return json.dumps(
        {
            "architecture": architecture,
            "os": "linux",
            "config": {"Cmd": ["/nonexistent"]},
            "rootfs": {"type": "layers", "diff_ids": [sha256(layer) for layer in layers]},
        }
    ).encode()


@dataclass
class StoredImage:
    ref: str
    layer_digests: list[str] = field(default_factory=list)  # blob digests, oldest first


def put_image(
    cache_dir: Path,
    ref: str,
    layers: Sequence[bytes],
    *,
    compression: str = "gzip",
    style: str = "oci",
    media_type: str | None = None,
) -> StoredImage:
    """Stores an image of these (uncompressed) layer tars in the cache with its writer API;
    ``media_type`` labels the layers instead of the one ``compression`` calls for (a wrong
    label, as some images have)."""
    stored = StoredImage(ref)
    with ImageCache(cache_dir).writing() as writer:
        manifest = _write_manifest(
            writer,
            layers,
            compression=compression,
            style=style,
            stored=stored,
            architecture="amd64",
            media_type=media_type,
        )
        canonical = parse_image_ref(ref).with_default_tag().canonical
        writer.put_images([CachedImage(canonical, (ref,), manifest, platform="linux/amd64")])
    return stored


def put_index(
    cache_dir: Path,
    ref: str,
    per_platform: dict[str, Sequence[bytes]],
    *,
    cached_for: str | None = None,
) -> dict[str, StoredImage]:
    """Stores an image index with one manifest per ``os/arch`` platform; ``cached_for`` is
    the platform the entry records it was cached for (none by default)."""
    stored: dict[str, StoredImage] = {}
    children = []
    with ImageCache(cache_dir).writing() as writer:
        for platform, layers in per_platform.items():
            os_name, arch = platform.split("/")
            stored[platform] = StoredImage(ref)
            manifest = _write_manifest(
                writer,
                layers,
                compression="gzip",
                style="oci",
                stored=stored[platform],
                architecture=arch,
            )
            child = manifest.to_json()
            child["platform"] = {"os": os_name, "architecture": arch}
            children.append(child)
        index = json.dumps(
            {"schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX, "manifests": children}
        ).encode()
        descriptor = writer.write_blob(index, MEDIA_OCI_INDEX)
        canonical = parse_image_ref(ref).with_default_tag().canonical
        writer.put_images([CachedImage(canonical, (ref,), descriptor, platform=cached_for)])
    return stored


def _write_manifest(
    writer: CacheWriter,
    layers: Sequence[bytes],
    *,
    compression: str,
    style: str,
    stored: StoredImage,
    architecture: str,
    media_type: str | None = None,
) -> Descriptor:
    descriptors = []
    for layer in layers:
        descriptor = writer.write_blob(
            compress(layer, compression), media_type or layer_media_type(compression, style)
        )
        descriptors.append(descriptor)
        stored.layer_digests.append(descriptor.digest)
    config = writer.write_blob(image_config(layers, architecture), MEDIA_OCI_CONFIG)
    return writer.write_blob(build_oci_manifest(config, descriptors), MEDIA_OCI_MANIFEST)


def docker_archive(repo_tag: str, layers: Sequence[bytes]) -> bytes:
    """A legacy docker-archive (what ``docker save`` of 20.10 writes) that ``docker load``
    reads: the layers uncompressed, written here without forklift-boot's code."""
    buffer = io.BytesIO()
    config = image_config(layers)
    names = [f"layer{number}.tar" for number in range(len(layers))]
    manifest = json.dumps([{"Config": "config.json", "RepoTags": [repo_tag], "Layers": names}])
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in [
            ("config.json", config),
            *zip(names, layers, strict=True),
            ("manifest.json", manifest.encode()),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = MTIME
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def gzip_with_zeros(prefix: bytes, zeros: int, suffix: bytes) -> bytes:
    """A gzip stream of ``prefix``, ``zeros`` zero bytes and ``suffix``, made without holding
    the zeros: each MiB of them compresses, after a full flush, to the same bytes."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate; the gzip frame is ours
    parts = [compressor.compress(prefix), compressor.flush(zlib.Z_FULL_FLUSH)]
    crc = zlib.crc32(prefix)
    mib = bytes(1 << 20)
    whole, rest = divmod(zeros, len(mib))
    if whole:
        one = compressor.compress(mib) + compressor.flush(zlib.Z_FULL_FLUSH)
        parts.append(one * whole)
        for _ in range(whole):
            crc = zlib.crc32(mib, crc)
    parts += [compressor.compress(bytes(rest) + suffix), compressor.flush()]
    crc = zlib.crc32(bytes(rest) + suffix, crc)
    size = len(prefix) + zeros + len(suffix)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # no name, mtime 0, unknown OS
    return header + b"".join(parts) + struct.pack("<II", crc, size & 0xFFFFFFFF)


def put_blobs(cache_dir: Path, ref: str, blobs: Sequence[bytes], media_type: str) -> StoredImage:
    """Stores an image whose layer blobs are given as they are (crafted, perhaps huge once
    decompressed). Its diff IDs are the blobs' digests: export-file never reads them."""
    stored = StoredImage(ref)
    with ImageCache(cache_dir).writing() as writer:
        descriptors = [writer.write_blob(blob, media_type) for blob in blobs]
        stored.layer_digests = [descriptor.digest for descriptor in descriptors]
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": stored.layer_digests},
            }
        ).encode()
        config_descriptor = writer.write_blob(config, MEDIA_OCI_CONFIG)
        manifest = writer.write_blob(
            build_oci_manifest(config_descriptor, descriptors), MEDIA_OCI_MANIFEST
        )
        canonical = parse_image_ref(ref).with_default_tag().canonical
        writer.put_images([CachedImage(canonical, (ref,), manifest, platform="linux/amd64")])
    return stored


def raw_entries(*entries: Entry) -> bytes:
    """Entries' tar bytes without the end-of-archive blocks, to put crafted ones after."""
    parts = []
    for entry in entries:
        parts.append(entry.info.tobuf(format=tarfile.PAX_FORMAT))
        if entry.info.isreg():
            parts.append(entry.data + bytes(-len(entry.data) % tarfile.BLOCKSIZE))
    return b"".join(parts)
