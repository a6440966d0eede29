"""Is an OS image smaller with gzip or with uncompressed layers in its cache? (forklift#245)

    sudo .venv/pypi/bin/python -m bench.sd_card_size [--scale 1.0] [--json FILE]

Run by hand from the repository root, as root (a private dockerd, mkfs.ext4, drop_caches); not in
CI. At --scale 1 it takes about 15 minutes on a 2-core VM, most of it in ``xz -9``; --scale 0.1
is a 2-minute check. Results: docs/benchmarks.md.

An OS maintainer (PlanktoScope OS, built with pi-gen) ships the image cache inside the root
filesystem and compresses the whole SD card image, ``xz -T0 -1`` for development builds and
``xz -T0 -9`` for releases. Layers that forklift-boot already gzipped are close to incompressible
for xz, while uncompressed layers give xz the whole file content. This script measures which
choice gives the smaller download, the smaller footprint on the card, and the faster boot:

1. In a private dockerd (tests/testbed/dockerd.py), it builds four images of real files, no
   random bytes, ``FROM scratch`` + ``COPY`` one layer at a time: a Debian base (files of a
   debootstrapped rootfs), the Python standard library, two site-packages, Node.js with its
   modules, and two Go programs. Three images share the Debian base, two also the Python layer;
   the Go image stands alone, as real apps do (about 560 MB of unique content at --scale 1).
2. ``forklift-boot cache-img --compress gzip`` and ``--compress none`` into two caches, each at
   ``var/cache/forklift/images`` of its own root tree (timed, after dropping the page cache).
3. ``forklift-boot load-img --all-cached`` from each cache into a fresh private dockerd (timed,
   cold), checking that every image comes back with the ID it was built with.
4. For each tree, and for a baseline tree without a cache, an ext4 image: ``mkfs.ext4 -d TREE``
   into a file of the tree's size rounded up to a MiB plus a fixed margin (the same for all
   three). Then ``xz -T0 -1``, ``xz -T0 -9`` and, when installed, ``zstd -T0`` and ``pigz``/``gzip``
   of each ext4 image; the baseline's sizes are subtracted, which leaves what the cache adds.

xz's output does not depend on the number of threads (-T0 cuts the input into blocks whose size
the preset fixes), so the sizes would be the same on a Raspberry Pi for the same input; only the
times are this machine's. Prints Markdown tables and removes everything it created (daemons,
mounts, temporary directories) on the way out, also after Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import glob
import json
import os
import platform
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import docker
import psutil

import forklift_boot
from bench import image_set
from bench.image_set import MB, add_host_file
from tests.testbed.dockerd import DockerDaemon

ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20
REPOSITORY = "fbsdcard"
CACHE_PATH = "var/cache/forklift/images"  # where the OS image keeps the cache
VARIANTS = ("gzip", "none")
REQUIRED_TOOLS = ("dockerd", "mkfs.ext4", "dumpe2fs", "e2fsck", "xz")
# A fixed UUID and hash seed: the three filesystems differ only in what they hold.
FS_UUID = "6b1e3c52-5d4f-4c1a-9a43-2f0d7b1c8e10"
DEFAULT_ROOTFS_GLOB = "/var/cache/forklift-boot/rootfs/*/"
PURELIB = "lib/python3.11/site-packages"


@dataclass(frozen=True)
class Layer:
    """One ``COPY``: host files or directories (each with where it goes in the image), in order,
    up to ``size`` bytes of file content at scale 1. A relative host path is under the rootfs."""

    name: str
    size: int
    sources: tuple[tuple[str, str], ...]  # (host path, path in the image)


def layers(rootfs: Path) -> tuple[Layer, ...]:
    venv_pypi, venv_debian = ROOT / ".venv/pypi" / PURELIB, ROOT / ".venv/debian" / PURELIB
    return (
        Layer(
            "debian",
            200 * MB,
            tuple(
                (str(rootfs / part), f"/{part}")
                for part in ("etc", "usr/lib", "usr/share", "usr/sbin", "usr/bin")
            ),
        ),
        Layer(
            "python",
            100 * MB,
            (
                ("/usr/lib/python3.11", "/usr/local/lib/python3.11"),
                ("/usr/lib/python3", "/usr/local/lib/python3"),
            ),
        ),
        Layer("backend", 80 * MB, ((str(venv_pypi), "/opt/backend/" + PURELIB),)),
        Layer("worker", 30 * MB, ((str(venv_debian), "/opt/worker/" + PURELIB),)),
        Layer(
            "node",
            120 * MB,
            (("/usr/lib/node_modules", "/usr/lib/node"), ("/usr/bin/node", "/usr/local/bin/node")),
        ),
        Layer(
            "go",
            40 * MB,
            (
                ("/usr/bin/docker-registry", "/bin/registry"),
                ("/usr/bin/skopeo", "/bin/skopeo"),
            ),
        ),
    )


# Image name -> its layers, base first.
IMAGES: Mapping[str, tuple[str, ...]] = {
    "backend": ("debian", "python", "backend"),
    "worker": ("debian", "python", "worker"),
    "web": ("debian", "node"),
    "registry": ("go",),
}


def ref_of(name: str) -> str:
    return f"{REPOSITORY}/{name}:1"


@dataclass
class Step:
    seconds: float
    client_cpu: float = 0.0  # user + system of the command and its children
    daemon_cpu: float = 0.0  # dockerd and its children (docker-untar, unpigz)


@dataclass
class Results:
    machine: dict[str, str] = field(default_factory=dict)
    layers: dict[str, dict[str, int]] = field(default_factory=dict)  # content bytes, files
    image_sizes: dict[str, int] = field(default_factory=dict)  # docker inspect Size
    build_seconds: float = 0.0
    cache_img: dict[str, Step] = field(default_factory=dict)
    load_img: dict[str, Step] = field(default_factory=dict)
    cache_bytes: dict[str, int] = field(default_factory=dict)  # blocks used (du)
    cache_apparent: dict[str, int] = field(default_factory=dict)  # sum of file sizes
    image_file: dict[str, int] = field(default_factory=dict)  # ext4 image file size
    ext4_used: dict[str, int] = field(default_factory=dict)  # blocks in use in the ext4
    compressed: dict[str, dict[str, int]] = field(default_factory=dict)  # method -> variant -> B
    compress_seconds: dict[str, dict[str, float]] = field(default_factory=dict)


class BenchError(RuntimeError):
    pass


# Building the images


def _walk(host: str) -> Iterator[str]:
    if not os.path.isdir(host) or os.path.islink(host):
        yield host
        return
    for root, dirs, names in os.walk(host):
        dirs.sort()
        for name in sorted(names):
            yield os.path.join(root, name)


def _add_files(tar: tarfile.TarFile, layer: Layer, budget: int) -> tuple[int, int]:
    """Regular files and symlinks of the layer's sources in order, up to ``budget`` bytes."""
    content = files = 0
    for host, target in layer.sources:
        for path in _walk(host):
            if content >= budget * 0.99:
                return content, files
            try:
                st = os.lstat(path)
                # Too big for what is left (node's 99 MB at a small --scale); the first file
                # goes in anyway, so that no layer is empty.
                if stat.S_ISREG(st.st_mode) and content + st.st_size > budget and content:
                    continue
                arcname = "layer" + target + path[len(host) :]
                info = tar.gettarinfo(path, arcname=arcname)
            except OSError:
                continue  # gone or unreadable since the walk
            if info.islnk():
                continue  # a hard link inside a source would point outside ``target``
            added = add_host_file(tar, info, path)
            if added is not None:
                content += added
                files += 1
    return content, files


def build_images(
    client: docker.DockerClient, specs: Sequence[Layer], scale: float, work: Path, results: Results
) -> dict[str, str]:
    """Builds IMAGES one layer at a time (each layer once); returns name -> image ID."""
    by_name = {spec.name: spec for spec in specs}
    start = time.monotonic()
    built: dict[tuple[str, ...], str] = {}
    for name, layer_names in IMAGES.items():
        for depth in range(1, len(layer_names) + 1):
            prefix = layer_names[:depth]
            if prefix in built:
                continue
            spec = by_name[prefix[-1]]
            parent = built.get(prefix[:-1])
            context = work / f"context-{spec.name}.tar"
            try:
                with tarfile.open(context, "w", format=tarfile.PAX_FORMAT) as tar:
                    dockerfile = f"FROM {parent or 'scratch'}\nCOPY layer/ /\n".encode()
                    image_set._add_bytes(tar, "Dockerfile", dockerfile)  # same builder as there
                    content, files = _add_files(tar, spec, int(spec.size * scale))
                if files == 0:
                    raise BenchError(f"layer {spec.name}: no files found in {spec.sources}")
                results.layers[spec.name] = {"content_bytes": content, "files": files}
                built[prefix] = image_set._build(client, context, f"{name}, layer {spec.name}")
            finally:
                context.unlink(missing_ok=True)
        client.api.tag(built[layer_names], f"{REPOSITORY}/{name}", "1")
    results.build_seconds = time.monotonic() - start
    ids = {}
    for name in IMAGES:
        attrs = client.images.get(ref_of(name)).attrs
        ids[name] = str(attrs["Id"])
        results.image_sizes[name] = int(attrs["Size"])
    return ids


# Running and measuring


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def _daemon_cpu(pid: int) -> float:
    """CPU seconds of dockerd and its descendants, reaped ones included."""
    try:
        process = psutil.Process(pid)
        processes = [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    cpu = 0.0
    for proc in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = proc.cpu_times()
            cpu += times.user + times.system + times.children_user + times.children_system
    return cpu


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdout: Path | None = None,
    log: Path,
) -> None:
    with log.open("a") as log_file:
        log_file.write(f"\n$ {' '.join(argv)}\n")
        log_file.flush()
        with open(stdout or os.devnull, "wb") as out:
            result = subprocess.run(
                argv, stdout=out, stderr=log_file, env=env, check=False, stdin=subprocess.DEVNULL
            )
    if result.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise BenchError(f"`{' '.join(argv)}` exited {result.returncode}:\n{tail}")


def timed(
    argv: Sequence[str],
    *,
    log: Path,
    env: Mapping[str, str] | None = None,
    stdout: Path | None = None,
    daemon_pid: int | None = None,
) -> Step:
    """Runs a command after ``sync`` and dropping the page cache; a final ``sync`` is timed."""
    drop_caches()
    cpu, daemon = _children_cpu(), _daemon_cpu(daemon_pid) if daemon_pid else 0.0
    start = time.monotonic()
    run(argv, env=env, stdout=stdout, log=log)
    os.sync()
    seconds = time.monotonic() - start
    return Step(
        seconds,
        _children_cpu() - cpu,
        (_daemon_cpu(daemon_pid) - daemon) if daemon_pid else 0.0,
    )


def check_report(path: Path, expected: str, count: int) -> None:
    statuses = [image["status"] for image in json.loads(path.read_text())["images"]]
    if statuses.count(expected) != count:
        raise BenchError(f"forklift-boot reported {statuses}, expected {count} x {expected}")


def tree_usage(path: Path) -> tuple[int, int]:
    """(bytes of blocks allocated, sum of file sizes) of a tree, like ``du -B1`` and ``du -b``."""
    blocks = apparent = 0
    for root, dirs, names in os.walk(path):
        for name in [*dirs, *names]:
            st = os.lstat(os.path.join(root, name))
            blocks += st.st_blocks * 512
            apparent += st.st_size if stat.S_ISREG(st.st_mode) else 0
    return blocks, apparent


# Filesystems and their compression


def make_ext4(tree: Path, image: Path, margin: int, log: Path) -> tuple[int, int]:
    """``mkfs.ext4 -d tree`` into a file sized to fit plus ``margin``; (file size, used bytes)."""
    blocks, _ = tree_usage(tree)
    size = -(-blocks // MIB) * MIB + margin
    with image.open("wb") as file:
        file.truncate(size)  # sparse, as pi-gen's image before it is filled
    run(
        [
            "mkfs.ext4",
            *("-q", "-F", "-t", "ext4", "-b", "4096", "-L", "rootfs"),
            *("-U", FS_UUID, "-E", f"hash_seed={FS_UUID},root_owner=0:0"),
            *("-d", str(tree), str(image)),
        ],
        log=log,
    )
    run(["e2fsck", "-fn", str(image)], log=log)
    header = subprocess.run(
        ["dumpe2fs", "-h", str(image)], capture_output=True, text=True, check=True
    ).stdout
    fields = {}
    for line in header.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    block_size = int(fields["Block size"])
    used = (int(fields["Block count"]) - int(fields["Free blocks"])) * block_size
    return size, used


def compressors() -> dict[str, tuple[str, ...]]:
    """Label -> argv reading stdin, writing stdout. xz as PlanktoScope's builds and releases."""
    methods: dict[str, tuple[str, ...]] = {
        "xz -T0 -1": ("xz", "-T0", "-1", "-c"),
        "xz -T0 -9": ("xz", "-T0", "-9", "-c"),
    }
    if shutil.which("zstd"):
        methods["zstd -T0 -3"] = ("zstd", "-T0", "-3", "-c", "-q")
    if shutil.which("pigz"):
        methods["pigz -6"] = ("pigz", "-6", "-c")
    elif shutil.which("gzip"):
        methods["gzip -6"] = ("gzip", "-6", "-c")
    return methods


def compress(image: Path, argv: Sequence[str], out: Path, log: Path) -> tuple[int, float]:
    start = time.monotonic()
    with log.open("a") as log_file, image.open("rb") as source, out.open("wb") as sink:
        log_file.write(f"\n$ {' '.join(argv)} < {image} > {out}\n")
        log_file.flush()
        result = subprocess.run(argv, stdin=source, stdout=sink, stderr=log_file, check=False)
    if result.returncode != 0:
        raise BenchError(f"`{' '.join(argv)}` exited {result.returncode} (see {log})")
    seconds = time.monotonic() - start
    size = out.stat().st_size
    out.unlink()
    return size, seconds


# The machine and the report


def machine(work: Path, daemon_host: str, command: Sequence[str]) -> dict[str, str]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break

    def first_line(argv: Sequence[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
        except OSError as err:
            return f"({err})"
        text = (done.stdout or done.stderr).strip()
        return text.splitlines()[0] if text else "?"

    os_name = "?"
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="minutes"),
        "command": " ".join(command),
        "cpu": f"{os.cpu_count()} x {cpu}",
        "ram": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "disk free": f"{psutil.disk_usage(str(work)).free / 1e9:.0f} GB under {work.parent}",
        "os": f"{os_name}, Linux {platform.release()}",
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        "forklift-boot": forklift_boot.__version__,
        "dockerd": first_line(
            ["docker", "-H", daemon_host, "version", "--format", "{{.Server.Version}}"]
        ),
        "xz": first_line(["xz", "--version"]),
        "mke2fs": first_line(["mkfs.ext4", "-V"]),
    }
    if shutil.which("zstd"):
        info["zstd"] = first_line(["zstd", "--version"])
    return info


def _mb(n: float) -> str:
    return f"{n / MB:,.1f}"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "-"


def render(results: Results) -> str:
    lines = ["## Machine", ""]
    lines += [f"- {key}: {value}" for key, value in results.machine.items()]
    lines += ["", "## Images", "", "| layer | files | content MB |", "|---|---:|---:|"]
    for name, layer in results.layers.items():
        lines.append(f"| {name} | {layer['files']:,} | {_mb(layer['content_bytes'])} |")
    content = sum(layer["content_bytes"] for layer in results.layers.values())
    lines += ["", "| image | layers | `docker inspect` Size MB |", "|---|---|---:|"]
    for name, names in IMAGES.items():
        lines.append(f"| {name} | {' + '.join(names)} | {_mb(results.image_sizes[name])} |")
    lines += [
        "",
        f"Unique content {_mb(content)} MB, the images separately "
        f"{_mb(sum(results.image_sizes.values()))} MB; built in {results.build_seconds:.0f} s.",
        "",
        '## Sizes (MB; "cache" = with the cache minus the baseline without one)',
        "",
        "| what | baseline | gzip cache | none cache | gzip - base | none - base | gzip/none |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]

    def row(label: str, values: Mapping[str, int]) -> None:
        base = values.get("baseline", 0)
        gz, none = values["gzip"] - base, values["none"] - base
        lines.append(
            f"| {label} | {_mb(base) if 'baseline' in values else '-'} | "
            f"{_mb(values['gzip'])} | {_mb(values['none'])} | {_mb(gz)} | {_mb(none)} | "
            f"{_ratio(gz, none)} |"
        )

    row("cache on disk (du)", results.cache_bytes)
    row("cache, sum of file sizes", results.cache_apparent)
    row("ext4 image file (sized to fit + margin)", results.image_file)
    row("ext4 blocks in use (space on the card)", results.ext4_used)
    for method, sizes in results.compressed.items():
        row(f"ext4 image \\| {method}", sizes)
    lines += [
        "",
        "## Times (s; this x86 VM)",
        "",
        "| step | gzip cache | none cache | gzip/none |",
        "|---|---:|---:|---:|",
    ]

    def time_row(label: str, values: Mapping[str, float]) -> None:
        lines.append(
            f"| {label} | {values['gzip']:.1f} | {values['none']:.1f} | "
            f"{_ratio(values['gzip'], values['none'])} |"
        )

    time_row("cache-img, wall", {k: s.seconds for k, s in results.cache_img.items()})
    time_row(
        "cache-img, forklift-boot CPU", {k: s.client_cpu for k, s in results.cache_img.items()}
    )
    time_row("cache-img, dockerd CPU", {k: s.daemon_cpu for k, s in results.cache_img.items()})
    time_row(
        "load-img --all-cached, cold, wall", {k: s.seconds for k, s in results.load_img.items()}
    )
    time_row("load-img, forklift-boot CPU", {k: s.client_cpu for k, s in results.load_img.items()})
    time_row("load-img, dockerd CPU", {k: s.daemon_cpu for k, s in results.load_img.items()})
    for method, seconds in results.compress_seconds.items():
        base = seconds.get("baseline", 0.0)
        time_row(
            f"{method} of the ext4 image (baseline {base:.1f})",
            {k: v for k, v in seconds.items() if k != "baseline"},
        )
    lines.append(
        f"\nLoad average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
        f" (at the start: {results.machine.get('load average at start', '?')})."
    )
    return "\n".join(lines) + "\n"


# Main


def find_rootfs(given: Path | None) -> Path:
    if given is not None:
        if not (given / "usr").is_dir():
            sys.exit(f"bench.sd_card_size: {given} has no usr/: not a root filesystem")
        return given
    found = sorted(glob.glob(DEFAULT_ROOTFS_GLOB))
    for path in found:
        if Path(path, "usr").is_dir():
            return Path(path)
    sys.exit(
        "bench.sd_card_size: no Debian rootfs under "
        f"{DEFAULT_ROOTFS_GLOB}; make one with `debootstrap bookworm DIR` and pass --rootfs DIR"
    )


def _check_host(scale: float, work_parent: Path) -> None:
    if os.geteuid() != 0:
        sys.exit("bench.sd_card_size: run as root (private dockerd, drop_caches)")
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        sys.exit(
            f"bench.sd_card_size: missing {', '.join(missing)} (docker.io, e2fsprogs, xz-utils)"
        )
    # Daemon store, two caches, three ext4 images and a compressed copy: about 7x the content.
    needed = int(7 * 0.7e9 * scale)
    free = psutil.disk_usage(str(work_parent)).free
    if free < needed:
        sys.exit(f"bench.sd_card_size: needs about {needed / 1e9:.1f} GB free, {free / 1e9:.1f} GB")


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the clean-up below


def forklift_boot_argv(python: str, *args: str) -> list[str]:
    return [python, "-m", "forklift_boot", *args, "--json"]


def check_loaded(client: docker.DockerClient, ids: Mapping[str, str]) -> None:
    for name, image_id in ids.items():
        got = client.images.get(ref_of(name)).id
        if got != image_id:
            raise BenchError(f"{ref_of(name)} loaded as {got}, built as {image_id}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.sd_card_size",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--scale", type=float, default=1.0, help="layer sizes x this (1.0: ~560 MB unique)"
    )
    parser.add_argument(
        "--rootfs", type=Path, help=f"a Debian root filesystem (default: {DEFAULT_ROOTFS_GLOB})"
    )
    parser.add_argument(
        "--margin-mib", type=int, default=256, help="free space added to each ext4 (MiB)"
    )
    parser.add_argument("--python", default=sys.executable, help="interpreter for forklift-boot")
    parser.add_argument("--work-dir", type=Path, help="parent of the scratch directory (/tmp)")
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    args = parser.parse_args(argv)
    command = [Path(sys.executable).name, "-m", "bench.sd_card_size", *(argv or sys.argv[1:])]
    os.chdir(ROOT)  # `-m forklift_boot` imports from here
    rootfs = find_rootfs(args.rootfs)
    _check_host(args.scale, args.work_dir or Path("/tmp"))
    signal.signal(signal.SIGTERM, _terminate)
    results = Results()
    work = image_set.scratch_dir(args.work_dir)
    log = work / "commands.log"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
    }
    try:
        trees = {variant: work / f"tree-{variant}" for variant in ("baseline", *VARIANTS)}
        for tree in trees.values():
            (tree / CACHE_PATH).mkdir(parents=True)
        refs = [ref_of(name) for name in IMAGES]
        with DockerDaemon() as daemon:
            results.machine = machine(work, daemon.host, command)
            results.machine["rootfs"] = str(rootfs)
            client = daemon.client()
            print(f"building images at --scale {args.scale} in {work} ...", file=sys.stderr)
            ids = build_images(client, layers(rootfs), args.scale, work, results)
            client.close()
            for variant in VARIANTS:
                print(f"cache-img --compress {variant} ...", file=sys.stderr)
                cache, report = trees[variant] / CACHE_PATH, work / "report.json"
                results.cache_img[variant] = timed(
                    forklift_boot_argv(
                        args.python,
                        "cache-img",
                        "--cache-dir",
                        str(cache),
                        "--compress",
                        variant,
                        *refs,
                    ),
                    log=log,
                    env={**env, "DOCKER_HOST": daemon.host},
                    stdout=report,
                    daemon_pid=daemon.pid,
                )
                check_report(report, "cached", len(refs))
        for variant in VARIANTS:
            print(f"load-img --all-cached from the {variant} cache ...", file=sys.stderr)
            with DockerDaemon() as fresh:
                report = work / "report.json"
                results.load_img[variant] = timed(
                    forklift_boot_argv(
                        args.python,
                        "load-img",
                        "--all-cached",
                        "--cache-dir",
                        str(trees[variant] / CACHE_PATH),
                    ),
                    log=log,
                    env={**env, "DOCKER_HOST": fresh.host},
                    stdout=report,
                    daemon_pid=fresh.pid,
                )
                check_report(report, "loaded", len(refs))
                client = fresh.client()
                check_loaded(client, ids)
                client.close()
        for variant, tree in trees.items():
            if variant in VARIANTS:
                blocks, apparent = tree_usage(tree / CACHE_PATH)
                results.cache_bytes[variant], results.cache_apparent[variant] = blocks, apparent
        methods = compressors()
        for variant, tree in trees.items():
            print(f"ext4 image of the {variant} tree ...", file=sys.stderr)
            image = work / f"{variant}.ext4"
            size, used = make_ext4(tree, image, args.margin_mib * MIB, log)
            results.image_file[variant], results.ext4_used[variant] = size, used
            shutil.rmtree(tree)  # the ext4 image holds it now; keeps the disk use down
            for method, method_argv in methods.items():
                print(f"  {method} ...", file=sys.stderr)
                out = work / f"{variant}.ext4.out"
                compressed, seconds = compress(image, method_argv, out, log)
                results.compressed.setdefault(method, {})[variant] = compressed
                results.compress_seconds.setdefault(method, {})[variant] = seconds
            image.unlink()
        text = render(results)
        print(text)
        if args.json is not None:
            document = asdict(results)
            args.json.write_text(json.dumps(document, indent=2) + "\n")
    except BenchError as err:
        print(f"bench.sd_card_size: {err}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
