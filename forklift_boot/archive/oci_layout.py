"""Reading OCI layout streams into the cache, blobs unchanged, and recording their images.

``ctr images export`` and ``docker save`` on Docker's containerd image store both send the
registry's own index or manifest with its compressed blobs. The cache keeps them byte for
byte; this module says what each image of such a stream is: its entry's descriptor (an index as
it is, a manifest with its config's platform), its config digest for the wanted platform (the
image ID of the classic store and of ``docker inspect`` on other machines), and the bytes of new
blobs it brought.
"""

from __future__ import annotations

import io
import logging
import posixpath
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from forklift_boot.archive.streams import ChunkReader, parse_json
from forklift_boot.cache import (
    ANNOTATION_IMAGE_NAME,
    ANNOTATION_REF_NAME,
    BUFFER_SIZE,
    INDEX_MEDIA_TYPES,
    CacheReader,
    CacheWriter,
    Descriptor,
)
from forklift_boot.cache.selection import choose_platform_manifest
from forklift_boot.cache.walk import walk_blobs
from forklift_boot.errors import CacheError, EngineError
from forklift_boot.images import ByteCounter, CopiedImage
from forklift_boot.platforms import platform_object

log = logging.getLogger(__name__)


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
    source = io.BufferedReader(ChunkReader(chunks, on_bytes), BUFFER_SIZE)
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
                    index = parse_json(file, name)
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


def copied_from_layout(
    reader: CacheReader,
    layout: ImportedLayout,
    descriptor: Descriptor,
    *,
    platform: str,
    name: str,
    credited: set[str],
) -> CopiedImage:
    """The cache entry for ``descriptor`` of ``layout``; its new blobs go into ``credited``
    (a blob shared by two images of one stream counts for the first only)."""
    if descriptor.media_type in INDEX_MEDIA_TYPES:
        manifest = choose_platform_manifest(reader, descriptor, platform, name)
    else:
        manifest = descriptor
    config_digest = config_digest_of(reader, manifest, name)
    if descriptor.media_type not in INDEX_MEDIA_TYPES:
        config = reader.read_json(config_digest)
        descriptor = Descriptor(
            descriptor.media_type,
            descriptor.digest,
            descriptor.size,
            platform=platform_object(config),
        )
    new_bytes = 0
    for reached in walk_blobs(reader, descriptor).reached:
        digest = reached.descriptor.digest
        if digest in layout.new_blobs and digest not in credited:
            credited.add(digest)
            new_bytes += layout.new_blobs[digest]
    return CopiedImage(descriptor, new_bytes, image_id=config_digest)


def drop_other_platforms(
    writer: CacheWriter,
    layout: ImportedLayout,
    images: Sequence[tuple[Descriptor, str]],
) -> None:
    """Removes the blobs the stream brought only for platforms nobody asked for.

    ``images`` are the stream's entries with the platform wanted of each: an index keeps
    itself and that platform's manifest, config and layers. Only blobs new to the cache are
    candidates, so nothing another cached image needs is touched.
    """
    keep: set[str] = set()
    for descriptor, platform in images:
        manifest = descriptor
        if descriptor.media_type in INDEX_MEDIA_TYPES:
            keep.add(descriptor.digest)
            manifest = choose_platform_manifest(writer, descriptor, platform, descriptor.digest)
        keep.update(reached.descriptor.digest for reached in walk_blobs(writer, manifest).reached)
    unwanted = sorted(set(layout.new_blobs) - keep)
    if unwanted:
        writer.remove_blobs(unwanted)
        log.info(
            "left out %d blobs of other platforms than %s",
            len(unwanted),
            ", ".join(sorted({platform for _, platform in images})),
        )


def config_digest_of(reader: CacheReader, manifest: Descriptor, name: str) -> str:
    document = reader.read_json(manifest.digest)
    try:
        digest = document["config"]["digest"]
    except (KeyError, TypeError) as err:
        raise EngineError(f"the manifest of {name} has no config") from err
    if not isinstance(digest, str):
        raise EngineError(f"the manifest of {name} has no config")
    return digest
