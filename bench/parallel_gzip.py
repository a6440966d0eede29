"""Compresses one file with the gzip encoder cache-img picks (level 1; archive/gzip_encoders.py).

    .venv/pypi/bin/python -m bench.parallel_gzip IN OUT

What ``cache-img --compress gzip`` does to each layer, without Docker, so that bench/round_trip.py
can time it next to ``gzip -1`` and ``pigz -1`` over the same bytes.
"""

from __future__ import annotations

import os
import sys

from forklift_boot.archive.gzip_encoders import open_gzip_encoder

CHUNK = 1 << 20  # what cache-img reads at a time (forklift_boot.cache.BUFFER_SIZE)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    source, destination = argv
    gzip = open_gzip_encoder(level=1)
    try:
        with open(source, "rb") as inp, open(destination, "wb") as out:
            while chunk := inp.read(CHUNK):
                for part in gzip.write(chunk):
                    out.write(part)
            for part in gzip.finish():
                out.write(part)
            out.flush()
            os.fsync(out.fileno())
    finally:
        gzip.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
