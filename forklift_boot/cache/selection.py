"""Read-only queries over cached images: which manifest a platform takes, which layers are known."""

from __future__ import annotations

from collections.abc import Iterator

from forklift_boot.cache.descriptors import Descriptor
from forklift_boot.cache.media import INDEX_MEDIA_TYPES
from forklift_boot.cache.reader import CacheReader
from forklift_boot.errors import CacheError, ForkliftBootError
from forklift_boot.platforms import best_match, parse_platform, platform_of, platform_text


def known_layer_blobs(reader: CacheReader) -> dict[str, Descriptor]:
    """Layer blobs the cache has, by diff ID, from every cached manifest and its config."""
    known: dict[str, Descriptor] = {}
    for image in reader.images():
        for manifest in _platform_manifests(reader, image.descriptor):
            try:
                document = reader.read_json(manifest.digest)
                config = reader.read_json(document["config"]["digest"])
                diff_ids = config["rootfs"]["diff_ids"]
                layers = [Descriptor.from_json(layer) for layer in document["layers"]]
            except (ForkliftBootError, KeyError, TypeError):
                continue  # a damaged entry: `cache verify` reports it
            for diff_id, layer in zip(diff_ids, layers, strict=False):
                if reader.has_blob(layer.digest):
                    known.setdefault(diff_id, layer)
    return known


def _platform_manifests(reader: CacheReader, descriptor: Descriptor) -> Iterator[Descriptor]:
    if descriptor.media_type not in INDEX_MEDIA_TYPES:
        yield descriptor
        return
    try:
        index = reader.read_json(descriptor.digest)
    except ForkliftBootError:
        return
    for child in index.get("manifests") or []:
        child_descriptor = Descriptor.from_json(child)
        if reader.has_blob(child_descriptor.digest):
            yield child_descriptor


def choose_platform_manifest(
    reader: CacheReader, index: Descriptor, platform: str, name: str
) -> Descriptor:
    """The manifest of an image index in the cache that ``platform`` prefers, matched as
    containerd does (``linux/arm64`` takes ``linux/arm64/v8``, ``linux/arm/v7`` takes
    ``linux/arm/v6``); only manifests the cache holds count."""
    document = reader.read_json(index.digest, expected_size=index.size)
    present = []
    for child in document.get("manifests") or []:
        descriptor = Descriptor.from_json(child, f"index of {name}")
        if reader.has_blob(descriptor.digest):
            present.append(descriptor)
    try:
        wanted = parse_platform(platform)
    except ValueError as err:
        raise CacheError(f"couldn't load {name}: {err}") from err
    chosen = best_match(wanted, [(platform_of(d.platform), d) for d in present])
    if chosen is not None:
        return chosen
    cached = ", ".join(platform_text(d.platform) for d in present) or "none"
    raise CacheError(
        f"couldn't load {name}: the cache has no {platform} manifest "
        f"(cached: {cached}); cache it with --platform {platform}"
    )
