"""Times reading layers straight out of Docker's classic store against ``cat`` and ``docker save``.

    sudo .venv/pypi/bin/python -m bench.classic_store_read [--scale 0.4] [--runs 3]

Run from the repository root, as root (it starts its own dockerd, tests/testbed/dockerd.py, and
drops the page cache before each cold step). It builds bench/image_set.py's images and, for image
``a`` (the largest) and for all four, measures with the page cache dropped (cold) and warm:

- direct: ClassicStore rebuilding every layer's tar and hashing it (what cache-img would read),
  one layer after the other and four at once (threads);
- cat: ``cat`` of the same diff directories' regular files to /dev/null, and piped into
  ``openssl dgst -sha256`` (reading plus one hash, as OpenSSL does it for hashlib);
- docker save of the same image(s) to /dev/null.

Prints the median seconds of ``--runs``, MB/s of layer tar bytes (MB = 10^6 bytes) and CPU
seconds of this process and its children (docker save's work is dockerd's: not counted there).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import resource
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence

from bench import image_set
from bench.measuring import drop_caches
from forklift_boot.stores.docker.classic_store import (
    ClassicStore,
    ReadCounter,
    chain_ids,
    config_diff_ids,
)
from tests.testbed.dockerd import DockerDaemon

MB = 1_000_000


def layers_of(store: ClassicStore, image_ids: Sequence[str]) -> list[tuple[str, str]]:
    """(chain ID, diff ID) of every distinct layer of the images."""
    seen: dict[str, str] = {}
    for image_id in image_ids:
        diff_ids = config_diff_ids(store.image_config(image_id))
        seen.update(zip(chain_ids(diff_ids), diff_ids, strict=True))
    return list(seen.items())


def read_direct(store: ClassicStore, layers: Sequence[tuple[str, str]]) -> int:
    total = 0
    for chain_id, diff_id in layers:
        reader = store.open_layer(chain_id, diff_id)
        for chunk in reader.chunks():
            total += len(chunk)
        assert reader.digest == diff_id
    return total


def read_direct_threads(
    store: ClassicStore, layers: Sequence[tuple[str, str]], threads: int
) -> int:
    """Layers read concurrently (reads and sha256 release the GIL): I/O overlaps hashing."""
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(lambda layer: read_direct(store, [layer]), layers))


def shell(command: str) -> Callable[[], object]:
    return lambda: subprocess.run(["sh", "-c", command], check=True, stdout=subprocess.DEVNULL)


def timed(step: Callable[[], object], runs: int, cold: bool) -> tuple[float, float, list[float]]:
    """Median wall seconds, median CPU seconds of this process and its children, every run's
    wall seconds."""
    walls, cpus = [], []
    for _ in range(runs):
        if cold:
            drop_caches()
        before = (
            resource.getrusage(resource.RUSAGE_SELF),
            resource.getrusage(resource.RUSAGE_CHILDREN),
        )
        started = time.monotonic()
        step()
        walls.append(time.monotonic() - started)
        after = (
            resource.getrusage(resource.RUSAGE_SELF),
            resource.getrusage(resource.RUSAGE_CHILDREN),
        )
        cpus.append(
            sum(
                a.ru_utime + a.ru_stime - b.ru_utime - b.ru_stime
                for a, b in zip(after, before, strict=True)
            )
        )
    return statistics.median(walls), statistics.median(cpus), walls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=0.4)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    work = image_set.scratch_dir()
    with DockerDaemon() as daemon:
        client = daemon.client()
        built = image_set.build_images(client, args.scale, work)
        counter = ReadCounter()
        store = ClassicStore.from_engine_info(client.info(), counter)
        store.check()
        print(f"built in {built.build_seconds:.0f} s; driver {store.driver}, root {store.root}")
        print("| what | step | cache | s | MB/s | CPU s | x docker save | runs (s) |")
        print("|---|---|---|---:|---:|---:|---:|---|")
        for label, names in (("image a", ["a"]), ("all four", list(built.refs))):
            image_ids = [built.image_ids[name] for name in names]
            layers = layers_of(store, image_ids)
            size = read_direct(store, layers)
            diff_dirs = " ".join(str(store.layer_paths(chain).diff_dir) for chain, _ in layers)
            files = f"find {diff_dirs} -type f -print0 | xargs -0 cat"
            refs = " ".join(built.refs[name] for name in names)
            steps: dict[str, Callable[[], object]] = {
                "direct (ClassicStore)": functools.partial(read_direct, store, layers),
                "direct, 4 layers at once": functools.partial(
                    read_direct_threads, store, layers, 4
                ),
                "cat > /dev/null": shell(f"{files} > /dev/null"),
                "cat | openssl sha256": shell(f"{files} | openssl dgst -sha256"),
                "docker save > /dev/null": shell(f"docker -H {daemon.host} save {refs} >/dev/null"),
            }
            for cold in (True, False):
                results = {name: timed(step, args.runs, cold) for name, step in steps.items()}
                floor = results["docker save > /dev/null"][0]
                for name, (wall, cpu, walls) in results.items():
                    print(
                        f"| {label} ({size / MB:.0f} MB, {len(layers)} layers) | {name} | "
                        f"{'cold' if cold else 'warm'} | {wall:.2f} | {size / MB / wall:.0f} | "
                        f"{cpu:.2f} | {wall / floor:.2f} | {' '.join(f'{w:.2f}' for w in walls)} |"
                    )
        client.close()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
