"""cache-img straight from Docker's classic store against ``docker save`` (by hand, not in CI).

    sudo .venv/pypi/bin/python -m bench.direct_copy [--scale 0.4] [--runs 3]

Starts a private dockerd 20.10 (tests/testbed/dockerd.py), builds bench/image_set.py's four
images, then, each step from a cold page cache (the median of --runs): ``docker save a b c d >
/dev/null`` (the floor), cache-img ``--compress none|gzip`` the direct way (the daemon's unix
socket) and the ``docker save`` way (the same socket behind a ``tcp://`` proxy, which
forklift-boot treats as a remote Docker), and the update (a and d into a cache that has b and
c, against an empty cache). Prints each step's seconds, ratio to the floor, bytes written
(forklift-boot and dockerd) against the bytes the cache gained, and peak RSS.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import docker

from bench import image_set
from bench.image_set import MB, BuiltImages, ref_of
from bench.measuring import (
    Command,
    Measurement,
    device_of,
    measure,
    remove,
    scratch,
    terminate,
    tree_size,
)
from tests.testbed.dockerd import DockerDaemon
from tests.testbed.socket_proxy import SocketProxy

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Context:
    daemon: DockerDaemon
    client: docker.DockerClient
    work: Path
    python: str
    images: BuiltImages
    env: dict[str, str]
    device: str | None
    log_path: Path
    runs: int
    results: list[Measurement] = field(default_factory=list)
    daemon_name: str = "dockerd"


def cache_img(ctx: Context, host: str, cache: Path, compress: str, names: Sequence[str]) -> Command:
    refs = [ref_of(name) for name in names]
    argv = ("cache-img", "--cache-dir", str(cache), "--compress", compress, *refs)
    return Command(("env", f"DOCKER_HOST={host}", ctx.python, "-m", "forklift_boot", *argv))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=float, default=0.4, help="bench/image_set.py's scale")
    parser.add_argument("--runs", type=int, default=3, help="runs per step; the median is kept")
    parser.add_argument("--python", default=sys.executable, help="interpreter for forklift-boot")
    parser.add_argument("--work-dir", type=Path, help="parent of the scratch directory (/tmp)")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    signal.signal(signal.SIGTERM, terminate)
    with scratch(args.work_dir) as work, DockerDaemon() as daemon:
        client = daemon.client()
        print(f"building images at --scale {args.scale} in {work} ...", file=sys.stderr)
        images = image_set.build_images(client, args.scale, work)
        proxy = SocketProxy(daemon.sock, tcp=True)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            "LANG": "C.UTF-8",
        }
        ctx = Context(
            daemon,
            client,
            work,
            args.python,
            images,
            env,
            device_of(work),
            work / "commands.log",
            max(args.runs, 1),
        )
        run(ctx, proxy.host)
        proxy.close()
        client.close()
    return 0


def run(ctx: Context, remote: str) -> None:
    names = list(image_set.IMAGES)
    local = ctx.daemon.host
    floor = measure(
        ctx,
        "export",
        "docker save a b c d > /dev/null",
        [Command(("docker", "-H", local, "save", *[ref_of(n) for n in names]))],
    )
    rows: list[tuple[str, Measurement, int]] = []
    for compress in ("none", "gzip"):
        for how, host in (("direct", local), ("docker save path", remote)):
            cache = ctx.work / f"cache-{compress}-{how.split()[0]}"
            label = f"cache-img --compress {compress} ({how})"
            m = measure(
                ctx, "export", label, [cache_img(ctx, host, cache, compress, names)], output=cache
            )
            rows.append((label, m, tree_size(cache)))
    seed = ctx.work / "seed"
    update = ctx.work / "update"

    def with_b_c() -> None:
        remove(update)
        shutil.copytree(seed, update)

    measure(ctx, "update", "seed b c", [cache_img(ctx, local, seed, "gzip", ["b", "c"])])
    for label, setup in (("a d, empty cache", None), ("a d, b c cached", with_b_c)):
        before = tree_size(seed) if setup is not None else 0
        m = measure(
            ctx,
            "update",
            f"cache-img --compress gzip {label}",
            [cache_img(ctx, local, update, "gzip", ["a", "d"])],
            setup=setup if setup is not None else lambda: remove(update),
        )
        rows.append((f"update: {label}", m, tree_size(update) - before))
    print("\n| step | s (runs) | x floor | written MB | written / gained | peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| docker save a b c d > /dev/null | {floor.seconds:.2f} | 1.00 | - | - | - |")
    for label, m, gained in rows:
        runs = ", ".join(f"{s:.1f}" for s in m.runs)
        print(
            f"| {label} | {m.seconds:.2f} ({runs}) | {m.seconds / floor.seconds:.2f} | "
            f"{m.written / MB:.0f} | {m.written / max(gained, 1):.2f} | {m.peak_rss / MB:.0f} |"
        )


if __name__ == "__main__":
    sys.exit(main())
