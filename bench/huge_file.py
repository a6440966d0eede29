"""A layer holding a 9 GiB file, cached the direct way with gzip, against ``docker save``.

    sudo .venv/pypi/bin/python -m bench.huge_file

Runs the test that CI leaves out (``pytest -m big``: minutes and about 27 GiB of writes),
``tests/integration/test_layer_store_docker.py::test_a_file_over_8_gib``, which commits a
container holding the file (dockerd writes every zero), reads the layer straight from the
classic store, caches it with ``cache-img --compress gzip`` and checks the blob, then saves it
with ``docker save``. Prints the test's timings and each against ``docker save``'s.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST = "tests/integration/test_layer_store_docker.py::test_a_file_over_8_gib"
MARK = "timings (s):"


def main() -> int:
    argv = [sys.executable, "-m", "pytest", "-m", "big", TEST, "-s", "-q", "-p", "no:cacheprovider"]
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith(MARK)]
    if result.returncode != 0 or not lines:
        sys.stdout.write(result.stdout[-4000:] + result.stderr[-2000:])
        print(f"huge_file: the test failed (exit code {result.returncode})", file=sys.stderr)
        return 1
    timings: dict[str, float] = json.loads(lines[-1].removeprefix(MARK))
    floor = timings["docker save"]
    print(f"{'step':<28} {'s':>8} {'x docker save':>14}")
    for step, seconds in timings.items():
        print(f"{step:<28} {seconds:>8.1f} {seconds / floor:>14.2f}")
    print(*(line for line in result.stdout.splitlines() if line.startswith("cached blob:")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
