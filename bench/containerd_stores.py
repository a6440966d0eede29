"""Times forklift-boot against the peers on containerd-backed stores, all in one run (by hand).

    sudo .venv/pypi/bin/python -m bench.containerd_stores [--scale 1.0] [--runs 1] [--json FILE]

Run from the repository root, as root (it starts its own daemons and drops the page cache); not
in CI. Results: docs/benchmarks.md. It builds bench/image_set.py's four images of real files in a
private classic dockerd (Debian's 20.10, tests/testbed/dockerd.py), pushes them to a loopback
docker-registry (tests/testbed/registry.py) and stops that dockerd. Then, with
``sync; echo 3 > /proc/sys/vm/drop_caches`` before each step and a final ``sync`` inside its
timing (bench/measuring.py, as bench/round_trip.py does):

1. Docker 26.1 with the containerd image store (trixie's docker.io with containerd 1.7, run from
   the cached rootfs of scripts/build-rootfs-docker; tests/testbed/containerd_store.py) pulls the
   images from the registry, so it holds the registry's manifests and gzip blobs. Measured:
   ``forklift-boot cache-img --from docker`` (DOCKER_HOST pointing at it; as one ``docker save``
   stream, then from containerd's content store with ``--containerd-root`` copied and linked)
   against ``docker save`` of the same images to /dev/null (the daemon's floor) and to a file;
   then, after removing every image (and waiting until containerd has collected their content
   and snapshots), ``forklift-boot load-img`` from the linked cache against ``docker load -i``
   of the saved tar.
2. A standalone containerd (Debian's 1.6, tests/testbed/containerd.py) pulls them with
   ``ctr images pull --plain-http``. Measured: ``forklift-boot cache-img --from containerd``
   (from its content store, copied and linked) against ``ctr images export`` (to /dev/null and
   to a file), then ``forklift-boot load-img --into containerd`` against ``ctr images import``
   of the exported tar.

Daemon CPU and bytes read and written are those of the daemons' whole process tree (containerd and
dockerd, or containerd alone) plus the commands' (GNU time); bytes read are page cache misses after
``drop_caches``: with hard links, the content store's blobs are not read at all. Every load is
checked: each ref resolves to the digest it was pulled as. Prints Markdown tables with ratios to
the peers measured in the same run, and removes everything it created (daemons, temporary
directories) on the way out, also after Ctrl-C or SIGTERM. On the 2-core VM of docs/benchmarks.md,
--scale 1 (1.4 GB of unique content, 0.75 GB of gzip blobs) took 10.4 minutes with --runs 3,
--scale 0.25 1.8 minutes with --runs 1.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import psutil

import forklift_boot
from bench import image_set
from bench.image_set import MB, REPOSITORY
from bench.measuring import (
    TIME,
    Command,
    Measurement,
    StepError,
    Table,
    check_report,
    device_of,
    first_line,
    mb,
    measure,
    remove,
    scratch,
    seconds_text,
    terminate,
    tree_size,
)
from tests.testbed.containerd import Containerd
from tests.testbed.containerd_store import ContainerdStoreDaemon
from tests.testbed.dockerd import DockerDaemon
from tests.testbed.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
BUILD_ROOTFS = ROOT / "scripts" / "build-rootfs-docker"
TOOLS = ("dockerd", "docker", "docker-registry", "containerd", "ctr", "unshare", "nsenter")
# Rough bytes on disk per byte of unique content: the classic store while building, the
# registry, two daemons' content stores and snapshots, tars and caches.
DISK_FACTOR = 10
GC_TIMEOUT = 120  # seconds for containerd to collect removed images' content and snapshots
TAG = "1"


@dataclass(frozen=True)
class ProcessTree:
    """The process whose descendants do a daemon's work (measure() reads ``pid`` each step)."""

    find_pid: Callable[[], int]

    @property
    def pid(self) -> int:
        return self.find_pid()


@dataclass
class Context:
    """Everything a step needs: the daemon, the images, paths and the commands' environment."""

    daemon: ProcessTree
    daemon_name: str
    work: Path
    python: str
    env: dict[str, str]
    device: str | None
    log_path: Path
    runs: int
    refs: Mapping[str, str]  # image name -> 127.0.0.1:PORT/fbbench/<name>:1
    digests: Mapping[str, str]  # image name -> the registry's manifest digest
    results: list[Measurement] = field(default_factory=list)
    load_averages: dict[str, float] = field(default_factory=dict)  # "section/name" -> 1-min

    def path(self, name: str) -> Path:
        return self.work / name


@dataclass
class Published:
    """The images as the registry holds them, and what it took to put them there."""

    refs: dict[str, str]
    digests: dict[str, str]
    uncompressed: dict[str, int]  # image name -> `docker inspect` Size in the classic store
    blob_bytes: int  # unique blobs (configs and gzip layers) plus manifests, as pulled
    per_image_blob_bytes: int  # the same for each image on its own, summed: shared layers count
    images: image_set.BuiltImages
    setup_seconds: dict[str, float] = field(default_factory=dict)


def step(
    ctx: Context,
    section: str,
    name: str,
    commands: Sequence[Command],
    **kwargs: Any,
) -> Measurement:
    """measure(), noting the host's 1-minute load average as the step starts."""
    ctx.load_averages[f"{section}/{name}"] = os.getloadavg()[0]
    return measure(ctx, section, name, commands, **kwargs)


def _forklift_boot(ctx: Context, *args: str, report: Path) -> Command:
    refs = list(ctx.refs.values())
    return Command((ctx.python, "-m", "forklift_boot", *args, *refs, "--json"), stdout=report)


# Setup: build in a classic dockerd, push to the registry


def publish_images(registry: Registry, scale: float, work: Path) -> Published:
    refs = {name: f"{registry.host}/{image_set.ref_of(name)}" for name in image_set.IMAGES}
    with DockerDaemon(mirror=registry.host) as builder:
        client = builder.client()
        print(f"building images at --scale {scale} in {work} ...", file=sys.stderr, flush=True)
        images = image_set.build_images(client, scale, work)
        start = time.monotonic()
        for name, ref in refs.items():
            repository = ref.rpartition(":")[0]
            client.api.tag(images.image_ids[name], repository, TAG)
            _follow(client.api.push(repository, TAG, stream=True, decode=True), f"push {ref}")
        push_seconds = time.monotonic() - start
        client.close()
    digests, blob_sizes, per_image = {}, {}, 0
    for name in image_set.IMAGES:
        repository = f"{REPOSITORY}/{name}"
        digests[name] = registry.manifest_digest(repository, TAG)
        manifest = registry.manifest(repository, TAG)
        blob_sizes[digests[name]] = len(manifest)
        document = json.loads(manifest)
        for blob in [document["config"], *document["layers"]]:
            blob_sizes[blob["digest"]] = int(blob["size"])
        per_image += len(manifest) + sum(
            int(blob["size"]) for blob in [document["config"], *document["layers"]]
        )
    return Published(
        refs=refs,
        digests=digests,
        uncompressed=dict(images.sizes),
        blob_bytes=sum(blob_sizes.values()),
        per_image_blob_bytes=per_image,
        images=images,
        setup_seconds={"build (classic dockerd)": images.build_seconds, "push": push_seconds},
    )


def _follow(stream: Iterator[dict[str, Any]], what: str) -> None:
    for chunk in stream:
        if "error" in chunk:
            raise StepError(f"couldn't {what}: {chunk['error']}")


# 1. Docker with the containerd image store


def docker_image_ids(client: docker.DockerClient, ctx: Context) -> dict[str, str]:
    return {name: str(client.images.get(ref).id) for name, ref in ctx.refs.items()}


def reset_docker(client: docker.DockerClient, store: ContainerdStoreDaemon) -> None:
    """Removes every image, then waits until containerd has collected their content and
    snapshots: a load after it starts from nothing."""
    for _ in range(20):
        ids = client.api.images(all=True, quiet=True)
        if not ids:
            break
        for image_id in ids:
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                client.api.remove_image(image_id, force=True)
    else:
        raise StepError("couldn't remove every image from the containerd-store dockerd")
    _wait_collected(lambda *args: store.ctr(*args).stdout, "dockerd's containerd (moby)")


def _wait_collected(ctr: Callable[..., str], where: str) -> None:
    deadline = time.monotonic() + GC_TIMEOUT
    while True:
        content = ctr("content", "ls", "-q").split()
        snapshots = ctr("snapshots", "ls").splitlines()[1:]  # a header line first
        if not content and not snapshots:
            return
        if time.monotonic() > deadline:
            raise StepError(
                f"{where} still holds {len(content)} blobs and {len(snapshots)} snapshots "
                f"{GC_TIMEOUT} s after removing every image"
            )
        time.sleep(0.2)


def run_docker_store(ctx: Context, store: ContainerdStoreDaemon) -> dict[str, int]:
    client = store.client()
    refs = list(ctx.refs.values())
    names = list(ctx.refs)
    saved, cache, report = ctx.path("docker-save.tar"), ctx.path("cache-docker"), ctx.path("r.json")
    pulled = docker_image_ids(client, ctx)

    def check_ids() -> None:
        got = docker_image_ids(client, ctx)
        if got != pulled:
            raise StepError(f"after the load the images are {got}, pulled as {pulled}")

    def check_loaded() -> None:
        check_report(report, "loaded", len(names))()
        check_ids()

    export, load = "docker export", "docker load"
    step(ctx, export, "docker save a b c d > /dev/null", [Command(("docker", "save", *refs))])
    step(
        ctx,
        export,
        "docker save -o save.tar a b c d",
        [Command(("docker", "save", "-o", str(saved), *refs))],
        output=saved,
    )
    root = ("--containerd-root", str(store.containerd_root))
    # Before issue 12's content store links: one `docker save` stream (no content store given,
    # and this host's containerd configuration names none that exists).
    streamed = ctx.path("cache-docker-stream")
    step(
        ctx,
        export,
        "forklift-boot cache-img --from docker (docker save stream)",
        [
            _forklift_boot(
                ctx, "cache-img", "--cache-dir", str(streamed), "--from", "docker", report=report
            )
        ],
        output=streamed,
        check=check_report(report, "cached", len(names)),
    )
    remove(streamed)
    copied = ctx.path("cache-docker-copy")
    step(
        ctx,
        export,
        "forklift-boot cache-img --from docker --link=false",
        [
            _forklift_boot(
                ctx,
                "cache-img",
                "--cache-dir",
                str(copied),
                "--from",
                "docker",
                *root,
                "--link=false",
                report=report,
            )
        ],
        output=copied,
        check=check_report(report, "cached", len(names)),
    )
    remove(copied)
    step(
        ctx,
        export,
        "forklift-boot cache-img --from docker --containerd-root (links)",
        [
            _forklift_boot(
                ctx,
                "cache-img",
                "--cache-dir",
                str(cache),
                "--from",
                "docker",
                *root,
                report=report,
            )
        ],
        output=cache,
        check=check_report(report, "cached", len(names)),
    )
    sizes = {"docker save tar": tree_size(saved), "forklift-boot cache (Docker)": tree_size(cache)}

    def cold() -> None:
        reset_docker(client, store)

    step(
        ctx,
        load,
        "docker load -i save.tar",
        [Command(("docker", "load", "-q", "-i", str(saved)))],
        setup=cold,
        check=check_ids,
    )
    step(
        ctx,
        load,
        "forklift-boot load-img",
        [_forklift_boot(ctx, "load-img", "--cache-dir", str(cache), report=report)],
        setup=cold,
        check=check_loaded,
    )
    client.close()
    return sizes


# 2. Standalone containerd


def containerd_pid(instance: Containerd) -> int:
    """The testbed's containerd, found by its config file on the command line."""
    config = str(instance.dir / "config.toml")
    for process in psutil.process_iter(["cmdline"]):
        if config in (process.info["cmdline"] or []):
            return process.pid
    raise StepError(f"no containerd runs with {config}")


def containerd_images(instance: Containerd) -> dict[str, str]:
    """``ctr images ls``: name -> target digest."""
    images = {}
    for line in instance.ctr("images", "ls").stdout.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 3:
            images[fields[0]] = fields[2]
    return images


def pull_containerd(instance: Containerd, refs: Mapping[str, str]) -> float:
    start = time.monotonic()
    for ref in refs.values():
        instance.ctr("images", "pull", "--plain-http", ref)
    return time.monotonic() - start


def reset_containerd(instance: Containerd) -> None:
    names = list(containerd_images(instance))
    if names:
        instance.ctr("images", "rm", "--sync", *names)
    _wait_collected(lambda *args: instance.ctr(*args).stdout, "the standalone containerd")


def run_containerd(ctx: Context, instance: Containerd) -> dict[str, int]:
    refs = list(ctx.refs.values())
    names = list(ctx.refs)
    exported, cache = ctx.path("ctr-export.tar"), ctx.path("cache-containerd")
    report = ctx.path("r.json")
    address = ("--containerd-address", str(instance.sock), "--namespace", "default")
    ctr = ("ctr", "-a", str(instance.sock), "-n", "default")
    expected = {ref: ctx.digests[name] for name, ref in ctx.refs.items()}

    def check_images() -> None:
        got = {
            ref: digest for ref, digest in containerd_images(instance).items() if ref in expected
        }
        if got != expected:
            raise StepError(f"containerd holds {got}, expected {expected}")

    def check_loaded() -> None:
        check_report(report, "loaded", len(names))()
        check_images()

    check_images()  # as pulled
    export, load = "containerd export", "containerd load"
    step(
        ctx,
        export,
        "ctr images export - a b c d > /dev/null",
        [Command((*ctr, "images", "export", "-", *refs))],
    )
    step(
        ctx,
        export,
        "ctr images export export.tar a b c d",
        [Command((*ctr, "images", "export", str(exported), *refs))],
        output=exported,
    )
    copied = ctx.path("cache-containerd-copy")
    step(
        ctx,
        export,
        "forklift-boot cache-img --from containerd --link=false",
        [
            _forklift_boot(
                ctx,
                "cache-img",
                "--cache-dir",
                str(copied),
                "--from",
                "containerd",
                *address,
                "--link=false",
                report=report,
            )
        ],
        output=copied,
        check=check_report(report, "cached", len(names)),
    )
    remove(copied)
    step(
        ctx,
        export,
        "forklift-boot cache-img --from containerd (links)",
        [
            _forklift_boot(
                ctx,
                "cache-img",
                "--cache-dir",
                str(cache),
                "--from",
                "containerd",
                *address,
                report=report,
            )
        ],
        output=cache,
        check=check_report(report, "cached", len(names)),
    )
    sizes = {
        "ctr images export tar": tree_size(exported),
        "forklift-boot cache (containerd)": tree_size(cache),
    }

    def cold() -> None:
        reset_containerd(instance)

    step(
        ctx,
        load,
        "ctr images import export.tar",
        [Command((*ctr, "images", "import", str(exported)))],
        setup=cold,
        check=check_images,
    )
    step(
        ctx,
        load,
        "forklift-boot load-img --into containerd",
        [
            _forklift_boot(
                ctx,
                "load-img",
                "--cache-dir",
                str(cache),
                "--into",
                "containerd",
                *address,
                report=report,
            )
        ],
        setup=cold,
        check=check_loaded,
    )
    return sizes


# Reporting

PEERS = {
    "docker export": ("docker save -o", "docker save a b c d > /dev/null"),
    "docker load": ("docker load -i", None),
    "containerd export": ("ctr images export export.tar", "ctr images export - "),
    "containerd load": ("ctr images import", None),
}
TITLES = {
    "docker export": "Docker 26.1, containerd image store: copy out",
    "docker load": "Docker 26.1, containerd image store: load (every image removed first)",
    "containerd export": "Standalone containerd 1.6: copy out",
    "containerd load": "Standalone containerd 1.6: load (every image removed first)",
}


def render(ctx: Context, published: Published, sizes: Mapping[str, int]) -> str:
    blobs = published.blob_bytes

    def find(section: str, prefix: str) -> Measurement:
        return next(m for m in ctx.results if m.section == section and m.name.startswith(prefix))

    out = []
    for section, (peer_prefix, floor_prefix) in PEERS.items():
        peer = find(section, peer_prefix)
        floor = find(section, floor_prefix) if floor_prefix else None
        daemon = "dockerd + containerd" if section.startswith("docker") else "containerd"
        header = ["step", "s", "MB/s (B/s)", f"x {peer_prefix.split(' export.tar')[0]}"]
        if floor is not None:
            header.append("x to /dev/null")
        header += [
            *(["on disk MB"] if floor is not None else []),
            "client CPU s",
            f"{daemon} CPU s",
            "other CPU s",
            "read MB",
            "written MB",
            "peak RSS MB",
            "load avg",
        ]
        table = Table(f"{TITLES[section]} (B = {mb(blobs)} MB of registry blobs)", header)
        for m in ctx.results:
            if m.section != section:
                continue
            row: list[object] = [
                m.name,
                seconds_text(m),
                f"{blobs / MB / m.seconds:.0f}",
                f"{m.seconds / peer.seconds:.2f}",
            ]
            if floor is not None:
                row.append(f"{m.seconds / floor.seconds:.2f}")
                row.append(mb(m.output_bytes) if m.output_bytes is not None else "-")
            row += [
                f"{m.client_cpu:.1f}",
                f"{m.daemon_cpu:.1f}",
                f"{m.other_cpu:.1f}",
                mb(m.client_read + m.daemon_read),
                mb(m.written),
                f"{m.peak_rss / MB:.0f}",
                f"{ctx.load_averages[f'{section}/{m.name}']:.1f}",
            ]
            table.row(*row)
        out.append(table.text())

    table = Table("Sizes", ["what", "MB", "x registry blobs"])
    table.row("registry blobs (configs, gzip layers, manifests)", mb(blobs), "1.00")
    per_image = published.per_image_blob_bytes
    table.row(
        "registry blobs of each image on its own, summed", mb(per_image), f"{per_image / blobs:.3f}"
    )
    for name, size in sizes.items():
        table.row(name, mb(size), f"{size / blobs:.3f}")
    unique = sum(layer.content_bytes for layer in published.images.layers.values())
    separately = sum(published.uncompressed.values())
    table.row("file content of the unique layers, uncompressed", mb(unique), "-")
    table.row("the four images separately (`docker inspect` Size)", mb(separately), "-")
    out.append(table.text())

    interference = sum(m.other_cpu for m in ctx.results)
    busy = sum(m.seconds for m in ctx.results)
    out.append(
        f"Other CPU on the host during the timed steps (busy CPU minus the commands and the "
        f"daemons: other work, kernel writeback): {interference:.0f} CPU-s over {busy:.0f} s.\n"
    )
    return "\n".join(out)


def machine(work: Path, device: str | None, python: str) -> dict[str, str]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="minutes"),
        "command": " ".join(
            [Path(sys.executable).name, "-m", "bench.containerd_stores", *sys.argv[1:]]
        ),
        "cpu": f"{os.cpu_count()} x {cpu}",
        "ram": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "disk": f"{device}; {psutil.disk_usage(str(work)).free / 1e9:.0f} GB free",
        "kernel": platform.release(),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": f"{platform.python_version()} ({python})",
        "forklift-boot": forklift_boot.__version__,
        "docker CLI": first_line(["docker", "version", "--format", "{{.Client.Version}}"]),
        "host containerd (standalone)": first_line(["containerd", "--version"]),
        "host ctr": first_line(["ctr", "--version"]),
        "classic dockerd (builds only)": first_line(["dockerd", "--version"]),
        "docker-registry": first_line(["docker-registry", "--version"]),
    }


# Main


def _check_host(scale: float, work_parent: Path) -> None:
    if os.geteuid() != 0:
        sys.exit("bench.containerd_stores: run as root (private daemons, drop_caches)")
    missing = [tool for tool in (*TOOLS, TIME) if shutil.which(tool) is None]
    if missing:
        sys.exit(f"bench.containerd_stores: missing {', '.join(missing)} (see scripts/setup-env)")
    needed = int(DISK_FACTOR * 1.4e9 * scale)
    free = psutil.disk_usage(str(work_parent)).free
    if free < needed:
        sys.exit(
            f"bench.containerd_stores: needs about {needed / 1e9:.0f} GB free, {free / 1e9:.0f} GB"
        )


def docker_rootfs() -> Path:
    """The cached trixie rootfs with Docker 26.1 (built on first use, about a minute)."""
    result = subprocess.run(
        [str(BUILD_ROOTFS)], capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False
    )
    if result.returncode != 0:
        sys.exit(f"bench.containerd_stores: {BUILD_ROOTFS} failed:\n{result.stderr}")
    return Path(result.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--scale", type=float, default=1.0, help="layer sizes x this (1.0: ~1.4 GB unique)"
    )
    parser.add_argument("--runs", type=int, default=1, help="runs per step; the median is kept")
    parser.add_argument("--python", default=sys.executable, help="interpreter for forklift-boot")
    parser.add_argument("--work-dir", type=Path, help="parent of the scratch directory (/tmp)")
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    args = parser.parse_args(argv)
    os.chdir(ROOT)  # `-m forklift_boot` imports from here
    _check_host(args.scale, args.work_dir or Path("/tmp"))
    signal.signal(signal.SIGTERM, terminate)
    rootfs = docker_rootfs()
    started = time.monotonic()
    with scratch(args.work_dir) as work, Registry() as registry:
        tmp = work / "tmp"
        tmp.mkdir()
        device = device_of(work)
        info = machine(work, device, args.python)
        published = publish_images(registry, args.scale, work)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            "LANG": "C.UTF-8",
            "TMPDIR": str(tmp),
        }
        results: list[Measurement] = []
        load_averages: dict[str, float] = {}
        sizes: dict[str, int] = {}

        def context(daemon: ProcessTree, daemon_name: str, host: str | None) -> Context:
            step_env = dict(env, DOCKER_HOST=host) if host else env
            return Context(
                daemon,
                daemon_name,
                work,
                args.python,
                step_env,
                device,
                work / "commands.log",
                max(args.runs, 1),
                published.refs,
                published.digests,
                results,
                load_averages,
            )

        with ContainerdStoreDaemon(rootfs, mirror=registry.host) as store:
            client = store.client()
            info["Docker (containerd image store)"] = str(client.version()["Version"])
            info["containerd in the rootfs"] = store.run("containerd", "--version").stdout.strip()
            start = time.monotonic()
            for ref in published.refs.values():
                repository = ref.rpartition(":")[0]
                _follow(client.api.pull(repository, TAG, stream=True, decode=True), f"pull {ref}")
            published.setup_seconds["pull into Docker (containerd store)"] = (
                time.monotonic() - start
            )
            ctx = context(ProcessTree(lambda: store.init_pid), "dockerd+containerd", store.host)
            pulled = docker_image_ids(client, ctx)
            if pulled != published.digests:
                print(f"note: image IDs {pulled} != registry digests", file=sys.stderr)
            client.close()
            sizes.update(run_docker_store(ctx, store))
        for path in (ctx.path("docker-save.tar"), ctx.path("cache-docker")):
            remove(path)

        with Containerd() as instance:
            pid = containerd_pid(instance)
            seconds = pull_containerd(instance, published.refs)
            published.setup_seconds["pull into containerd (ctr --plain-http)"] = seconds
            ctx = context(ProcessTree(lambda: pid), "containerd", None)
            sizes.update(run_containerd(ctx, instance))
        info["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        info["total minutes"] = f"{(time.monotonic() - started) / 60:.1f}"
        setup = ", ".join(f"{k} {v:.0f} s" for k, v in published.setup_seconds.items())
        text = "\n".join(
            [
                "## Machine\n",
                *(f"- {key}: {value}" for key, value in info.items()),
                f"- setup (untimed): {setup}",
                "",
                render(ctx, published, sizes),
            ]
        )
        print(text)
        if args.json is not None:
            document = {
                "machine": info,
                "setup_seconds": published.setup_seconds,
                "sizes": sizes,
                "blob_bytes": published.blob_bytes,
                "images": {
                    "refs": published.refs,
                    "digests": published.digests,
                    "uncompressed": published.uncompressed,
                    "layers": {k: asdict(v) for k, v in published.images.layers.items()},
                },
                "load_averages": load_averages,
                "results": [asdict(m) for m in results],
            }
            args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
