"""Recording images that arrived as an OCI layout stream, blobs unchanged.

``ctr images export`` and ``docker save`` on Docker's containerd image store both send the
registry's own index or manifest with its compressed blobs. The cache keeps them byte for
byte; this module says what each image of such a stream is: its entry's descriptor (an index as
it is, a manifest with its config's platform), its config digest for the wanted platform (the
image ID of the classic store and of ``docker inspect`` on other machines), and the bytes of new
blobs it brought.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from forklift_boot.archive import ImportedLayout
from forklift_boot.cache import INDEX_MEDIA_TYPES, CacheReader, CacheWriter, Descriptor
from forklift_boot.cache.selection import choose_platform_manifest
from forklift_boot.cache.walk import walk_blobs
from forklift_boot.errors import EngineError
from forklift_boot.images import CopiedImage
from forklift_boot.platforms import platform_object

log = logging.getLogger(__name__)


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
