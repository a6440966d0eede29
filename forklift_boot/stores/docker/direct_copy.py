"""Copying images straight out of Docker's classic store into the cache, several layers at once.

Each wanted layer is rebuilt from the data root (classic_store.LayerReader), checked against the
diff ID in the image's config while it streams, and stored with archive.layer_blobs, which the
``docker save`` path uses too: with ``--compress none`` both write the same blobs, the same
config and the same manifest. A layer the cache has (by diff ID) is not opened at all. An image
whose config or any layer does not check out is handed back, with the reason, for ``docker
save``; nothing it read is kept.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

from forklift_boot.archive.gzip_encoders import MAX_WORKERS
from forklift_boot.archive.layer_blobs import StoredLayer, store_layer
from forklift_boot.cache import (
    MEDIA_OCI_CONFIG,
    MEDIA_OCI_MANIFEST,
    CacheWriter,
    Descriptor,
    build_oci_manifest,
)
from forklift_boot.faults import checkpoint
from forklift_boot.images import ByteCounter, CopiedImage
from forklift_boot.platforms import platform_object
from forklift_boot.stores.docker.classic_store import (
    ClassicStore,
    DirectReadError,
    chain_ids,
    config_diff_ids,
)

log = logging.getLogger(__name__)

# Layers read, hashed and compressed at once: a fixed number, not one per core, so memory stays
# bounded on any machine (per layer: the reader's 1 MiB buffer, the blob file's 1 MiB buffer,
# and the encoder's blocks in flight). Four overlap disk reads with hashing
# (bench/classic_store_read.py: 0.24x docker save's time, against 0.56x one layer at a time).
LAYERS_AT_ONCE = 4


@dataclass
class DirectCopy:
    """What copying a set of images directly gave."""

    copied: dict[str, CopiedImage] = field(default_factory=dict)  # by image ID
    failed: dict[str, str] = field(default_factory=dict)  # image ID -> why, for docker save
    stored_layers: dict[str, Descriptor] = field(default_factory=dict)  # by diff ID
    layers_read: int = 0
    layers_skipped: int = 0  # the cache had them: not opened


@dataclass(frozen=True)
class _Image:
    image_id: str
    config: bytes
    diff_ids: list[str]


class _Stopped(Exception):
    """Another layer's failure (a full disk, an interrupt) stops this one."""


def copy_direct(
    store: ClassicStore,
    image_ids: Sequence[str],
    writer: CacheWriter,
    *,
    compress: str,
    known_layers: Mapping[str, Descriptor],
    on_bytes: ByteCounter,
    layers_at_once: int = LAYERS_AT_ONCE,
) -> DirectCopy:
    """Stores each image's layers, config and OCI manifest; returns what was copied and what
    must go through ``docker save``. A CacheError (the cache's disk) stops everything."""
    result = DirectCopy()
    images: list[_Image] = []
    for image_id in image_ids:
        try:
            config = store.image_config(image_id)
            images.append(_Image(image_id, config, config_diff_ids(config)))
        except DirectReadError as err:
            result.failed[image_id] = str(err)
    # Each layer once, by diff ID (images share them, at any depth); known ones not at all.
    to_read: dict[str, str] = {}  # diff ID -> a chain ID that holds it
    for image in images:
        for chain_id, diff_id in zip(chain_ids(image.diff_ids), image.diff_ids, strict=True):
            if diff_id in known_layers:
                continue
            to_read.setdefault(diff_id, chain_id)
    result.layers_skipped = len(
        {d for image in images for d in image.diff_ids if d in known_layers}
    )
    stored, broken = _read_layers(
        store,
        to_read,
        writer,
        compress=compress,
        known_layers=known_layers,
        on_bytes=on_bytes,
        layers_at_once=layers_at_once,
    )
    result.layers_read = len(stored)
    result.stored_layers = {diff_id: layer.blob for diff_id, layer in stored.items()}
    checkpoint("direct-layers-stored")
    counted: set[str] = set()
    for image in images:
        reasons = [broken[d] for d in image.diff_ids if d in broken]
        if reasons:
            result.failed[image.image_id] = reasons[0]
            continue
        layers = [
            stored[d] if d in stored else StoredLayer(known_layers[d], d, is_new=False)
            for d in image.diff_ids
        ]
        # image_config checked the bytes: their digest is the image ID.
        config_blob = writer.write_blob(image.config, MEDIA_OCI_CONFIG)
        manifest = writer.write_blob(
            build_oci_manifest(config_blob, [layer.blob for layer in layers]), MEDIA_OCI_MANIFEST
        )
        new_bytes = 0
        for layer in layers:
            if layer.is_new and layer.blob.digest not in counted:
                counted.add(layer.blob.digest)
                new_bytes += layer.blob.size
        platform = platform_object(json.loads(image.config))
        result.copied[image.image_id] = CopiedImage(
            manifest=Descriptor(manifest.media_type, manifest.digest, manifest.size, platform),
            new_bytes=new_bytes,
        )
    return result


def _read_layers(
    store: ClassicStore,
    to_read: Mapping[str, str],
    writer: CacheWriter,
    *,
    compress: str,
    known_layers: Mapping[str, Descriptor],
    on_bytes: ByteCounter,
    layers_at_once: int,
) -> tuple[dict[str, StoredLayer], dict[str, str]]:
    """Stores each layer, ``layers_at_once`` in threads; returns (stored, diff ID -> why not)."""
    stored: dict[str, StoredLayer] = {}
    broken: dict[str, str] = {}
    if not to_read:
        return stored, broken
    stop = threading.Event()
    lock = threading.Lock()
    # Fewer encoder threads per layer when several layers compress at once (one at least).
    gzip_workers = max(1, MAX_WORKERS // layers_at_once)

    def count(n: int) -> None:
        with lock:  # progress is not thread-safe
            on_bytes(n)

    def copy_one(chain_id: str, diff_id: str) -> StoredLayer:
        chunks = store.open_layer(chain_id, diff_id).chunks()
        try:
            return store_layer(
                _watched(chunks, stop, count),
                writer,
                compress=compress,
                known_layers=known_layers,
                diff_id=diff_id,
                gzip_workers=gzip_workers,
            )
        finally:
            chunks.close()  # a layer left half-read closes its files now

    pool = ThreadPoolExecutor(min(layers_at_once, len(to_read)), thread_name_prefix="layer")
    try:
        futures = {
            pool.submit(copy_one, chain_id, diff_id): diff_id
            for diff_id, chain_id in to_read.items()
        }
        for future in as_completed(futures):
            diff_id = futures[future]
            try:
                stored[diff_id] = future.result()
            except DirectReadError as err:
                log.debug("layer %s: %s", diff_id, err)
                broken[diff_id] = str(err)
    finally:
        # After an error (the cache's disk) or an interrupt, running layers stop at their next
        # MiB and queued ones never start; their temporaries are removed as they unwind.
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
    return stored, broken


def _watched(
    chunks: Iterator[memoryview], stop: threading.Event, count: ByteCounter
) -> Iterator[memoryview]:
    first = True
    for chunk in chunks:
        if stop.is_set():
            raise _Stopped
        count(len(chunk))
        yield chunk
        if first:
            checkpoint("direct-layer-partial")
            first = False
