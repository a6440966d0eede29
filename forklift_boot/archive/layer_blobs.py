"""Storing one uncompressed layer tar as a cache blob, gzip-compressed or as it is.

Both ways of copying out of Docker's classic store (a ``docker save`` stream, or the layer read
straight from the data root) store layers here, so the blobs they write are the same bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from forklift_boot.archive.gzip_encoders import open_gzip_encoder
from forklift_boot.cache import MEDIA_OCI_LAYER, MEDIA_OCI_LAYER_GZIP, CacheWriter, Descriptor

# zlib's level 1; the encoders map it onto their own scale (gzip_encoders._isal_level).
GZIP_LEVEL = 1


@dataclass(frozen=True)
class StoredLayer:
    blob: Descriptor
    diff_id: str
    is_new: bool  # False when the cache already had the blob, or a blob of this diff ID


def store_layer(
    chunks: Iterable[bytes | bytearray | memoryview],
    writer: CacheWriter,
    *,
    compress: str,
    known_layers: Mapping[str, Descriptor],
    diff_id: str | None = None,
    gzip_workers: int | None = None,
) -> StoredLayer:
    """Writes the tar that ``chunks`` yields as one blob; returns it with its diff ID.

    Each chunk is used before the next is asked for (a reader may reuse its buffer).
    ``diff_id``, when given, is the digest that the chunks' source checks itself before it
    stops iterating (it raises on a mismatch, and nothing is committed): the tar is then not
    hashed a second time here. A layer whose diff ID is in ``known_layers`` is not stored
    again: the cache's copy (perhaps compressed another way) is returned.
    """
    # Stored as it comes, the blob's digest is the diff ID: a source that checks it is trusted
    # with it (one sha256 per byte, not two).
    source_checks = diff_id if compress != "gzip" else None
    with writer.blob_writer(source_checks=source_checks) as blob:
        if compress == "gzip":
            hasher = hashlib.sha256() if diff_id is None else None
            encoder = open_gzip_encoder(GZIP_LEVEL, gzip_workers)
            try:
                for chunk in chunks:
                    if hasher is not None:
                        hasher.update(chunk)
                    for compressed in encoder.write(chunk):
                        blob.write(compressed)
                for compressed in encoder.finish():
                    blob.write(compressed)
            finally:
                encoder.close()
            media_type = MEDIA_OCI_LAYER_GZIP
            actual = f"sha256:{hasher.hexdigest()}" if hasher is not None else str(diff_id)
        else:
            for chunk in chunks:
                blob.write(chunk)
            media_type, actual = MEDIA_OCI_LAYER, blob.digest
        known = known_layers.get(actual)
        if known is not None:
            blob.discard()
            return StoredLayer(known, actual, is_new=False)
        stored = blob.commit()
    return StoredLayer(Descriptor(media_type, stored.digest, stored.size), actual, stored.is_new)
