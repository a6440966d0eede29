"""Layer blobs as their uncompressed tar bytes."""

from __future__ import annotations

import zlib
from collections.abc import Iterator

from forklift_boot.cache import BUFFER_SIZE, CacheReader, Descriptor

GZIP_WBITS_AUTO = 47  # zlib: detect a gzip or zlib header


def _blob_chunks(reader: CacheReader, descriptor: Descriptor) -> Iterator[bytes]:
    with reader.open_blob(descriptor.digest, expected_size=descriptor.size) as file:
        while chunk := file.read(BUFFER_SIZE):
            yield chunk


def uncompressed_chunks(reader: CacheReader, layer: Descriptor) -> Iterator[bytes]:
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
                # Several gzip members follow each other (archive/gzip.py): start the next one.
                data = decompressor.unused_data
                decompressor = zlib.decompressobj(GZIP_WBITS_AUTO)
            else:
                data = decompressor.unconsumed_tail
