"""Compresses stdin to stdout with one of forklift-boot's gzip encoders (bench/gzip_encoders.py,
bench/round_trip.py's compression section).

    .venv/pypi/bin/python -m bench.gzip_encode ENCODER LEVEL WORKERS < IN > OUT

ENCODER is ``auto`` (the one cache-img picks here), a name of
forklift_boot.archive.gzip_encoders.PREFERENCE (LEVEL is then zlib's, mapped as cache-img maps it),
``module:M`` (ThreadedBlockGzip over the zlib-like module M, LEVEL its own), ``program:P``
(PipeGzip over ``P -LEVEL -n -c``), or ``zlib-stream``: one zlib stream in this thread, like
``gzip -1``. A module of its own so that the measured process imports what cache-img would and no
more (bench/image_set.py pulls in the Docker SDK).
"""

from __future__ import annotations

import importlib
import shutil
import sys
import zlib

from forklift_boot.archive.gzip_encoders import (
    GzipEncoder,
    PipeGzip,
    ThreadedBlockGzip,
    open_gzip_encoder,
)

CHUNK = 1 << 20  # what cache-img reads at a time (forklift_boot.cache.BUFFER_SIZE)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    encoder, level, workers = argv[0], int(argv[1]), int(argv[2])
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    if encoder == "zlib-stream":
        compressor = zlib.compressobj(level, zlib.DEFLATED, 31)
        while chunk := source.read(CHUNK):
            sink.write(compressor.compress(chunk))
        sink.write(compressor.flush())
        return 0
    gz: GzipEncoder
    kind, _, name = encoder.partition(":")
    if kind == "module":
        gz = ThreadedBlockGzip(name, importlib.import_module(name), level, workers)
    elif kind == "program":
        gz = PipeGzip(name, (shutil.which(name) or name, f"-{level}", "-n", "-c"))
    else:
        gz = open_gzip_encoder(level, workers, encoder=None if encoder == "auto" else encoder)
    try:
        while chunk := source.read(CHUNK):
            for part in gz.write(chunk):
                sink.write(part)
        for part in gz.finish():
            sink.write(part)
    finally:
        gz.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
