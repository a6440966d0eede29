"""Times forklift-boot's cache round trip against its peers, all in one run (by hand, not in CI).

    sudo .venv/pypi/bin/python -m bench.round_trip [--scale 1.0] [--runs 1] [--json FILE]
        [--only export update memory compression load] [--load-variants]

Run from the repository root, as root (it starts its own dockerd and drops the page cache);
--scale 1 takes 12-16 minutes on a 2-core VM, --scale 0.1 about 2. Results: docs/benchmarks.md.
It starts a private dockerd (Debian's docker.io 20.10, tests/testbed/dockerd.py) whose data root
is an ext4 filesystem on a loop device of its own, so the device's counters are the bytes read
from and written to the data root, and builds four
images of real files that share base layers (bench/image_set.py: about 1.4 GB of unique content
at --scale 1, image a alone about 1 GB). Then, with ``sync; echo 3 > /proc/sys/vm/drop_caches``
before each step and a final ``sync`` inside its timing:

- export: ``forklift-boot cache-img --compress none|gzip`` against ``docker save`` of all images
  (to /dev/null: the daemon's floor; and to a file), ``docker save -o`` per image,
  ``skopeo copy docker-daemon: oci:`` per image (gzip, and uncompressed layers), and ``cp`` of the
  same bytes; then an update: cache-img of a and d into a cache that has b and c;
- compression: ``gzip -1``, ``pigz -1`` and the gzip encoder cache-img picks over the same tar;
- load: ``forklift-boot load-img`` from both caches against ``docker load -i`` of a tar of the same
  images, cold (no layer present) and with about half of the layers present (b and c loaded first);
- memory: forklift-boot's peak RSS caching and loading the >= 1 GB image alone, and ``docker load``
  of the archive load-img sends for it.

Every row also reports the bytes read (page cache misses) and written by the commands and
dockerd's tree, the data root's own reads and writes, CPU-s per GB of unique content, and an
estimate for a Raspberry Pi 4 on an SD card (bench/measuring.py, PiModel). It prints Markdown
tables with ratios to the peers measured in the same run, and removes everything it created
(daemon, mounts, loop device, temporary directories) on the way out, also after Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import docker
import docker.errors
import psutil

import forklift_boot
from bench import image_set
from bench.image_set import MB, BuiltImages, ref_of
from bench.measuring import (
    PI,
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
    pi_estimate,
    read_bytes,
    remove,
    scratch,
    seconds_text,
    spawn,
    terminate,
    tree_size,
)
from tests.testbed.dockerd import DockerDaemon

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ("dockerd", "docker", "skopeo", "gzip", "pigz", "cp", "mkfs.ext4", "losetup", "mount")
SECTIONS = ("export", "update", "memory", "compression", "load")
# Rough bytes on disk per byte of unique content: daemon store, tars, caches, layouts.
DISK_FACTOR = 14
# The data root's filesystem, per byte of unique content: the images, a staged export or load.
DATA_ROOT_FACTOR = 6


@dataclass
class Context:
    """Everything a step needs: the daemon, the images, paths and the commands' environment."""

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
    data_root_device: str | None = None  # the loop device holding dockerd's data root

    def path(self, name: str) -> Path:
        return self.work / name


# Docker state


def reset_images(ctx: Context) -> None:
    """Removes every image (and so every layer) from the private daemon."""
    for _ in range(20):
        ids = ctx.client.api.images(all=True, quiet=True)
        if not ids:
            break
        for image_id in ids:
            # A parent with children can't go first; the next pass gets it.
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                ctx.client.api.remove_image(image_id, force=True)
    else:
        raise StepError("couldn't remove every image from the private dockerd")
    layers = ctx.daemon.data_root / "image/overlay2/layerdb/sha256"
    if layers.is_dir() and any(layers.iterdir()):
        raise StepError(f"layers are left in {layers} after removing every image")


def load_tar(ctx: Context, tar: Path) -> None:
    with tar.open("rb") as file:
        ctx.client.images.load(file)


def check_images(ctx: Context, names: Sequence[str]) -> None:
    """Each ref resolves to the image ID it was built with (the round trip keeps IDs)."""
    for name in names:
        got = ctx.client.images.get(ref_of(name)).id
        if got != ctx.images.image_ids[name]:
            raise StepError(f"{ref_of(name)} is {got}, built as {ctx.images.image_ids[name]}")


# The commands


def docker_save(ctx: Context, names: Sequence[str], output: Path | None) -> Command:
    refs = [ref_of(name) for name in names]
    if output is None:
        return Command(("docker", "save", *refs))  # stdout to /dev/null
    return Command(("docker", "save", "-o", str(output), *refs))


def forklift_boot_cmd(ctx: Context, *args: str, report: Path) -> Command:
    return Command((ctx.python, "-m", "forklift_boot", *args, "--json"), stdout=report)


def cache_img(
    ctx: Context, cache: Path, compress: str, names: Sequence[str], report: Path
) -> Command:
    refs = [ref_of(name) for name in names]
    args = ("cache-img", "--cache-dir", str(cache), "--compress", compress, *refs)
    return forklift_boot_cmd(ctx, *args, report=report)


def load_img(
    ctx: Context, cache: Path, names: Sequence[str], report: Path, *, thin: bool = True
) -> Command:
    refs = [ref_of(name) for name in names]
    args = ["load-img", "--cache-dir", str(cache), *refs]
    if not thin:
        args.append("--thin=false")
    return forklift_boot_cmd(ctx, *args, report=report)


def skopeo_copy(ctx: Context, layout: Path, name: str, *extra: str) -> Command:
    ref = ref_of(name)
    return Command(
        (
            "skopeo",
            "copy",
            "--insecure-policy",
            "--src-daemon-host",
            ctx.daemon.host,
            *extra,
            f"docker-daemon:{ref}",
            f"oci:{layout}:{ref}",
        )
    )


# The sections


def prepare(ctx: Context) -> None:
    """Tars the measurements need as inputs or byte counts (untimed)."""
    tars = [(["a"], "a.tar"), (["a", "d"], "ad.tar"), (["b", "c"], "bc.tar")]
    tars.append((list(image_set.IMAGES), "all.tar"))  # export measures it again
    for names, tar in tars:
        spawn(docker_save(ctx, names, ctx.path(tar)), ctx.env, ctx.log_path)


def ensure_cache(ctx: Context, name: str, compress: str, names: Sequence[str]) -> Path:
    """A cache the load steps read, filled (untimed) when its section was left out."""
    cache = ctx.path(name)
    if not cache.exists():
        spawn(
            cache_img(ctx, cache, compress, names, ctx.path("report.json")), ctx.env, ctx.log_path
        )
    return cache


def run_export(ctx: Context) -> None:
    names = list(image_set.IMAGES)
    all_tar, copy = ctx.path("all.tar"), ctx.path("copy.tar")
    cp = Command(("cp", str(all_tar), str(copy)))
    measure(ctx, "export", "docker save -o all.tar (a b c d)", [docker_save(ctx, names, all_tar)])
    measure(ctx, "export", "cp all.tar (1st)", [cp], output=copy)
    measure(ctx, "export", "docker save a b c d > /dev/null", [docker_save(ctx, names, None)])
    per_image = ctx.path("per-image")

    def per_image_commands() -> list[Command]:
        per_image.mkdir()
        return [docker_save(ctx, [name], per_image / f"{name}.tar") for name in names]

    measure(
        ctx,
        "export",
        "docker save -o X.tar per image (4 calls)",
        per_image_commands,
        output=per_image,
    )
    skopeo_layout = ctx.path("skopeo-oci")
    for label, extra in (
        ("skopeo copy docker-daemon: oci: per image (gzip)", ()),
        ("skopeo copy ... --dest-oci-accept-uncompressed-layers", (UNCOMPRESSED,)),
    ):
        commands = [skopeo_copy(ctx, skopeo_layout, name, *extra) for name in names]
        measure(ctx, "export", label, commands, output=skopeo_layout)
    for compress in ("none", "gzip"):
        cache, report = ctx.path(f"cache-{compress}"), ctx.path("report.json")
        measure(
            ctx,
            "export",
            f"forklift-boot cache-img --compress {compress}",
            [cache_img(ctx, cache, compress, names, report)],
            output=cache,
            check=check_report(report, "cached", len(names)),
        )
    measure(ctx, "export", "cp all.tar (2nd)", [cp], output=copy)
    for path in (copy, per_image, skopeo_layout):
        remove(path)


def run_update(ctx: Context) -> None:
    """A device update: a and d arrive while b and c are cached (a's os/py/docs are known)."""
    cache, report = ctx.path("cache-update"), ctx.path("report.json")

    def seed() -> None:
        spawn(cache_img(ctx, cache, "gzip", ["b", "c"], report), ctx.env, ctx.log_path)

    for label, setup in (("empty cache", None), ("b c cached", seed)):
        measure(
            ctx,
            "update",
            f"forklift-boot cache-img --compress gzip a d ({label})",
            [cache_img(ctx, cache, "gzip", ["a", "d"], report)],
            output=cache,
            setup=setup,
            check=check_report(report, "cached", 2),
        )
    remove(cache)


def run_memory_cache(ctx: Context) -> None:
    report = ctx.path("report.json")
    measure(
        ctx,
        "memory",
        "python -m forklift_boot --version (imports only)",
        [Command((ctx.python, "-m", "forklift_boot", "--version"))],
    )
    for compress in ("gzip", "none"):
        cache = ctx.path(f"cache-a-{compress}")
        measure(
            ctx,
            "memory",
            f"forklift-boot cache-img --compress {compress} a",
            [cache_img(ctx, cache, compress, ["a"], report)],
            output=cache,
            check=check_report(report, "cached", 1),
        )


def run_compression(ctx: Context) -> None:
    all_tar, out = ctx.path("all.tar"), ctx.path("all.tar.gz")
    cores = str(os.cpu_count() or 1)
    commands = {
        "gzip -1": ("gzip", "-1", "-c"),
        f"pigz -1 -p {cores}": ("pigz", "-1", "-p", cores, "-c"),
    }
    for label, argv in commands.items():
        measure(ctx, "compression", label, [Command(argv, stdin=all_tar, stdout=out)], output=out)
    encode = (ctx.python, "-m", "bench.gzip_encode", "auto", "1", cores)
    measure(
        ctx,
        "compression",
        f"forklift-boot's gzip encoder (the one cache-img picks), level 1, {cores} threads",
        [Command(encode, stdin=all_tar, stdout=out)],
        output=out,
    )
    remove(out)
    # What each uncompressed byte costs cache-img in hashing (blob digest, diff ID).
    measure(
        ctx,
        "compression",
        "sha256 of all.tar (Python hashlib, no output)",
        [Command((ctx.python, "-c", SHA256, str(all_tar)))],
    )


def run_load(ctx: Context, variants: bool = False) -> None:
    names, rest = list(image_set.IMAGES), ["a", "d"]
    report = ctx.path("report.json")
    for compress in ("none", "gzip"):
        ensure_cache(ctx, f"cache-{compress}", compress, names)
        ensure_cache(ctx, f"cache-a-{compress}", compress, ["a"])

    def cold() -> None:
        reset_images(ctx)

    def half() -> None:
        reset_images(ctx)
        load_tar(ctx, ctx.path("bc.tar"))

    def docker_loaded(group: Sequence[str]) -> Callable[[], None]:
        return lambda: check_images(ctx, group)

    def fb_loaded(group: Sequence[str]) -> Callable[[], None]:
        check_statuses = check_report(report, "loaded", len(group))

        def check() -> None:
            check_statuses()
            check_images(ctx, group)

        return check

    def docker_load(tar: str) -> Command:
        return Command(("docker", "load", "-q", "-i", str(ctx.path(tar))))

    measure(
        ctx,
        "load cold",
        "docker load -i all.tar (a b c d)",
        [docker_load("all.tar")],
        setup=cold,
        check=docker_loaded(names),
    )
    for compress in ("none", "gzip"):
        measure(
            ctx,
            "load cold",
            f"forklift-boot load-img a b c d ({compress} cache)",
            [load_img(ctx, ctx.path(f"cache-{compress}"), names, report)],
            setup=cold,
            check=fb_loaded(names),
        )
    measure(
        ctx,
        "load half",
        "docker load -i ad.tar (b c present)",
        [docker_load("ad.tar")],
        setup=half,
        check=docker_loaded(rest),
    )
    for compress in ("none", "gzip"):
        for thin in (True, False):
            measure(
                ctx,
                "load half",
                f"forklift-boot load-img a d ({compress} cache{'' if thin else ', --thin=false'})",
                [load_img(ctx, ctx.path(f"cache-{compress}"), rest, report, thin=thin)],
                setup=half,
                check=fb_loaded(rest),
            )
    for compress in ("gzip", "none"):
        measure(
            ctx,
            "memory",
            f"forklift-boot load-img a ({compress} cache)",
            [load_img(ctx, ctx.path(f"cache-a-{compress}"), ["a"], report)],
            setup=cold,
            check=fb_loaded(["a"]),
        )
    # The same bytes as load-img a from the gzip cache, sent by `docker load`: what dockerd's
    # side of a gzip load costs without forklift-boot's client.
    a_oci = ctx.path("a-gzip-oci.tar")
    export = (
        ctx.python,
        "-m",
        "forklift_boot",
        "cache",
        "export-img",
        "--cache-dir",
        str(ctx.path("cache-a-gzip")),
        "--format",
        "oci",
        "-o",
        str(a_oci),
        ref_of("a"),
    )
    spawn(Command(export), ctx.env, ctx.log_path)
    measure(
        ctx,
        "memory",
        "docker load -i a.tar (cache export-img --format oci of the gzip cache)",
        [docker_load(a_oci.name)],
        setup=cold,
        check=docker_loaded(["a"]),
    )
    remove(a_oci)
    if not variants:
        return

    # Two load-img processes at once, never two that need the same missing layer: what
    # overlapping loads would gain (a and d share no layer; b and c need only their own once a
    # is in).
    def at_once(*groups: Sequence[str]) -> list[Command]:
        commands = []
        for group in groups:
            script = " & ".join(
                shlex.join(
                    load_img(ctx, ctx.path("cache-gzip"), [name], ctx.path(f"r-{name}.json")).argv
                )
                + f" > {shlex.quote(str(ctx.path(f'r-{name}.json')))}"
                for name in group
            )
            commands.append(Command(("sh", "-c", f"{script} & wait")))
        return commands

    measure(
        ctx,
        "load cold",
        "forklift-boot load-img, two at once: a|d, then b|c (gzip cache)",
        at_once(["a", "d"], ["b", "c"]),
        setup=cold,
        check=docker_loaded(names),
    )
    measure(
        ctx,
        "load half",
        "forklift-boot load-img, a|d at once (gzip cache)",
        at_once(["a", "d"]),
        setup=half,
        check=docker_loaded(rest),
    )


# Reporting

# Every table ends with these: what the step read and wrote, its CPU per GB of the section's
# unique content, and the Pi 4 estimate built from them (bench/measuring.py, PiModel).
COUNTER_HEADER = [
    "client CPU s",
    "dockerd CPU s",
    "other CPU s",
    "CPU s per GB",
    "read MB",
    "data root read MB",
    "written MB",
    "data root written MB",
    "peak RSS MB",
    "load",
    "Pi 4 est. s (card / CPU)",
]


def counters(m: Measurement, basis: int) -> list[str]:
    card, cpu, estimate = pi_estimate(m)

    def maybe(n: int | None) -> str:
        return "-" if n is None else mb(n)

    return [
        f"{m.client_cpu:.1f}",
        f"{m.daemon_cpu:.1f}",
        f"{m.other_cpu:.1f}",
        f"{(m.client_cpu + m.daemon_cpu) / (basis / 1e9):.1f}",
        mb(read_bytes(m)),
        maybe(m.root_read),
        mb(m.written),
        maybe(m.root_written),
        f"{m.peak_rss / MB:.0f}",
        f"{m.load_average:.1f}",
        f"**{estimate:.0f}** ({card:.0f} / {cpu:.0f})",
    ]


def render(ctx: Context, sizes: dict[str, int]) -> str:
    def find(section: str, prefix: str) -> Measurement | None:
        return next(
            (m for m in ctx.results if m.section == section and m.name.startswith(prefix)), None
        )

    def ratio(m: Measurement, peer: Measurement | None) -> str:
        return "-" if peer is None else f"{m.seconds / peer.seconds:.2f}"

    unique = sizes["all.tar"]
    cps = [find("export", f"cp all.tar ({n})") for n in ("1st", "2nd")]
    cp = statistics.mean(m.seconds for m in cps if m is not None) if all(cps) else None

    def x_cp(m: Measurement, basis: int) -> str:
        return "-" if cp is None else f"{m.seconds / (cp * basis / unique):.1f}"

    floor = find("export", "docker save a b c d > /dev/null")
    out = []
    if any(m.section == "export" for m in ctx.results):
        table = Table(
            f"Export: U = {mb(unique)} MB of unique content (`docker save` of all four images)",
            ["step", "s", "MB/s (U/s)", "x cp", "x save floor", "on disk MB", *COUNTER_HEADER],
        )
        for m in ctx.results:
            if m.section != "export":
                continue
            on_disk = (
                sizes["all.tar"] if m.name.startswith("docker save -o all.tar") else m.output_bytes
            )
            table.row(
                m.name,
                seconds_text(m),
                f"{unique / MB / m.seconds:.0f}",
                x_cp(m, unique),
                ratio(m, floor),
                mb(on_disk) if on_disk is not None else "-",
                *counters(m, unique),
            )
        out.append(table.text())

    empty = find("update", "forklift-boot cache-img --compress gzip a d (empty cache)")
    cached = find("update", "forklift-boot cache-img --compress gzip a d (b c cached)")
    if empty is not None and cached is not None:
        basis = sizes["ad.tar"]
        table = Table(
            f"Update: cache-img of a and d ({mb(basis)} MB as `docker save a d`)",
            ["step", "s", "x cp", "on disk MB", *COUNTER_HEADER],
        )
        for m in (empty, cached):
            table.row(
                m.name,
                seconds_text(m),
                x_cp(m, basis),
                mb(m.output_bytes or 0),
                *counters(m, basis),
            )

        def part(a: float | None, b: float | None) -> str:
            return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}"

        table.row(
            "**b c cached ÷ empty cache**",
            part(cached.seconds, empty.seconds),
            "",
            "",
            part(cached.client_cpu, empty.client_cpu),
            part(cached.daemon_cpu, empty.daemon_cpu),
            "",
            part(cached.client_cpu + cached.daemon_cpu, empty.client_cpu + empty.daemon_cpu),
            part(read_bytes(cached), read_bytes(empty)),
            part(cached.root_read, empty.root_read),
            part(cached.written, empty.written),
            part(cached.root_written, empty.root_written),
            "",
            "",
            part(pi_estimate(cached)[2], pi_estimate(empty)[2]),
        )
        known = set(image_set.IMAGES["a"]) & {
            layer for name in ("b", "c") for layer in image_set.IMAGES[name]
        }
        known_bytes = sum(ctx.images.layers[layer].content_bytes for layer in sorted(known))
        out.append(table.text())
        out.append(
            f"The cache has {', '.join(sorted(known))} ({mb(known_bytes)} MB of file content) "
            "before the update: a run that reads none of them reads at most "
            f"{mb(basis - known_bytes)} MB from the data root.\n"
        )

    if any(m.section == "compression" for m in ctx.results):
        table = Table(
            f"Compression of all.tar ({mb(unique)} MB) to a file",
            ["tool", "s", "MB/s in", "out MB", "out/in", *COUNTER_HEADER],
        )
        for m in ctx.results:
            if m.section == "compression":
                size = m.output_bytes
                table.row(
                    m.name,
                    seconds_text(m),
                    f"{unique / MB / m.seconds:.0f}",
                    "-" if size is None else mb(size),
                    "-" if size is None else f"{size / unique:.3f}",
                    *counters(m, unique),
                )
        out.append(table.text())

    for section, basis_name, peer_prefix in (
        ("load cold", "all.tar", "docker load -i all.tar"),
        ("load half", "ad.tar", "docker load -i ad.tar"),
    ):
        if not any(m.section == section for m in ctx.results):
            continue
        basis = sizes[basis_name]
        peer = find(section, peer_prefix)
        title = (
            f"Load, cold: every layer missing ({mb(basis)} MB)"
            if section == "load cold"
            else f"Load a and d with b and c present ({mb(basis)} MB as `docker save a d`)"
        )
        table = Table(
            title,
            ["step", "s", "MB/s", "x cp", "x docker load", "x load (Pi est.)", *COUNTER_HEADER],
        )
        for m in ctx.results:
            if m.section == section:
                pi_ratio = (
                    "-" if peer is None else f"{pi_estimate(m)[2] / pi_estimate(peer)[2]:.2f}"
                )
                table.row(
                    m.name,
                    seconds_text(m),
                    f"{basis / MB / m.seconds:.0f}",
                    x_cp(m, basis),
                    ratio(m, peer),
                    pi_ratio,
                    *counters(m, basis),
                )
        out.append(table.text())

    if any(m.section == "memory" for m in ctx.results):
        basis = sizes["a.tar"]
        table = Table(
            f"Memory: image a alone ({mb(basis)} MB as `docker save a`)",
            ["step", "s", "on disk MB", *COUNTER_HEADER],
        )
        for m in ctx.results:
            if m.section == "memory":
                disk_text = mb(m.output_bytes) if m.output_bytes is not None else "-"
                table.row(m.name, seconds_text(m), disk_text, *counters(m, basis))
        out.append(table.text())

    interference = sum(m.other_cpu for m in ctx.results)
    busy = sum(m.seconds for m in ctx.results)
    out.append(
        f"Other CPU on the host during the timed steps (busy CPU minus the commands and dockerd: "
        f"other work, kernel writeback): {interference:.0f} CPU-s over {busy:.0f} s of steps.\n"
    )
    out.append(
        f"Pi 4 estimate (not measured on a Pi): card s = read ÷ {PI.read_mb_s:.0f} MB/s + "
        f"written ÷ {PI.write_mb_s:.0f} MB/s; CPU s = (client + dockerd CPU-s) x "
        f"{PI.core_ratio:g} ÷ the cores it used here (at most {PI.cores}); estimate = the "
        "larger.\n"
    )
    return "\n".join(out)


# The machine


def machine(ctx: Context) -> dict[str, str]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    disk = "?"
    if ctx.device is not None:
        block = Path("/sys/class/block") / ctx.device
        with contextlib.suppress(OSError, ValueError):
            size = int((block / "size").read_text()) * 512
            queue = block / "queue" if (block / "queue").exists() else block.parent / "queue"
            rotational = (queue / "rotational").read_text().strip()
            disk = f"{ctx.device}, {size / 1e9:.0f} GB, rotational={rotational}"
    server = first_line(
        ["docker", "-H", ctx.daemon.host, "version", "--format", "{{.Server.Version}}"]
    )
    client = first_line(["docker", "version", "--format", "{{.Client.Version}}"])
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="minutes"),
        "command": " ".join([Path(sys.executable).name, "-m", "bench.round_trip", *sys.argv[1:]]),
        "cpu": f"{os.cpu_count()} x {cpu}",
        "ram": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "disk": f"{disk}; {psutil.disk_usage(str(ctx.work)).free / 1e9:.0f} GB free",
        "kernel": platform.release(),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": f"{platform.python_version()} ({ctx.python})",
        "forklift-boot": forklift_boot.__version__,
        "dockerd": f"{server} (CLI {client})",
        "skopeo": first_line(["skopeo", "--version"]),
        "pigz": first_line(["pigz", "--version"]),
        "gzip": first_line(["gzip", "--version"]),
    }


def describe_images(images: BuiltImages, sizes: dict[str, int]) -> str:
    lines = ["| layer | files | content MB | random MB |", "|---|---:|---:|---:|"]
    for layer in images.layers.values():
        lines.append(
            f"| {layer.name} | {layer.files:,} | {mb(layer.content_bytes)} | "
            f"{mb(layer.random_bytes)} |"
        )
    lines += ["", "| image | layers | `docker inspect` Size MB |", "|---|---|---:|"]
    for name, layers in image_set.IMAGES.items():
        lines.append(f"| {name} | {' + '.join(layers)} | {mb(images.sizes[name])} |")
    content = sum(layer.content_bytes for layer in images.layers.values())
    random_share = sum(layer.random_bytes for layer in images.layers.values()) / max(content, 1)
    per_image = sum(images.sizes.values())
    lines += [
        "",
        f"Unique content {mb(content)} MB ({random_share:.0%} random), `docker save` of all "
        f"four {mb(sizes['all.tar'])} MB, the four images separately {mb(per_image)} MB; "
        f"built in {images.build_seconds:.0f} s.",
    ]
    return "\n".join(lines) + "\n"


# Main


@contextlib.contextmanager
def private_daemon(work: Path, scale: float) -> Iterator[tuple[DockerDaemon, str]]:
    """A private dockerd whose data root is an ext4 filesystem on a loop device of its own, so
    the device's counters (diskstats) are exactly the bytes read from and written to the data
    root. The loop device reads its file with direct I/O: no second copy in the page cache."""
    daemon = DockerDaemon()
    image = work / "data-root.ext4"
    with image.open("wb") as file:
        file.truncate(int(DATA_ROOT_FACTOR * 1.4e9 * scale) + 2 * 10**9)  # sparse
    # Inode tables written now, not by ext4lazyinit during the steps (it would count).
    mkfs = ["mkfs.ext4", "-q", "-i", "32768", "-E", "lazy_itable_init=0,lazy_journal_init=0"]
    subprocess.run([*mkfs, str(image)], check=True)
    losetup = ["losetup", "--find", "--show", "--direct-io=on", str(image)]
    device = subprocess.run(losetup, check=True, capture_output=True, text=True).stdout.strip()
    daemon.data_root.mkdir(parents=True)
    try:
        subprocess.run(["mount", device, str(daemon.data_root)], check=True)
    finally:
        # Detaching a mounted loop device marks it autoclear: it goes with the last umount.
        subprocess.run(["losetup", "-d", device], check=False)
    try:
        with daemon:
            yield daemon, Path(device).name
    finally:
        subprocess.run(
            ["umount", "-R", str(daemon.data_root)], check=False, stderr=subprocess.DEVNULL
        )
        shutil.rmtree(daemon.dir, ignore_errors=True)


def _check_host(scale: float, work_parent: Path) -> None:
    if os.geteuid() != 0:
        sys.exit("bench.round_trip: run as root (private dockerd, drop_caches)")
    missing = [tool for tool in (*TOOLS, TIME) if shutil.which(tool) is None]
    if missing:
        sys.exit(f"bench.round_trip: missing {', '.join(missing)} (apt-get install docker.io ...)")
    needed = int(DISK_FACTOR * 1.4e9 * scale)
    free = psutil.disk_usage(str(work_parent)).free
    if free < needed:
        sys.exit(f"bench.round_trip: needs about {needed / 1e9:.0f} GB free, {free / 1e9:.0f} GB")


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
    parser.add_argument(
        "--only",
        nargs="+",
        choices=SECTIONS,
        default=list(SECTIONS),
        help="measure only these sections (the inputs of the others are made untimed)",
    )
    parser.add_argument(
        "--load-variants",
        action="store_true",
        help="also time two load-img processes at once (overlapped loads)",
    )
    args = parser.parse_args(argv)
    os.chdir(ROOT)  # `-m forklift_boot` and `-m bench.gzip_encode` import from here
    _check_host(args.scale, args.work_dir or Path("/tmp"))
    signal.signal(signal.SIGTERM, terminate)
    with scratch(args.work_dir) as work, private_daemon(work, args.scale) as (daemon, root_dev):
        tmp = work / "tmp"
        tmp.mkdir()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            "LANG": "C.UTF-8",
            "DOCKER_HOST": daemon.host,
            "TMPDIR": str(tmp),  # skopeo's copy of the docker save stream goes here
        }
        client = daemon.client()
        print(f"building images at --scale {args.scale} in {work} ...", file=sys.stderr)
        images = image_set.build_images(client, args.scale, work)
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
            data_root_device=root_dev,
        )
        info = machine(ctx)
        prepare(ctx)
        sizes = {name: tree_size(ctx.path(name)) for name in ("all.tar", "a.tar", "ad.tar")}
        sections: dict[str, Callable[[Context], None]] = {
            "export": run_export,
            "update": run_update,
            "memory": run_memory_cache,
            "compression": run_compression,
            "load": functools.partial(run_load, variants=args.load_variants),
        }
        for section, run in sections.items():
            if section in args.only:
                run(ctx)
        info["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        client.close()
        text = "\n".join(
            [
                "## Machine\n",
                *(f"- {key}: {value}" for key, value in info.items()),
                "",
                "## Images\n",
                describe_images(images, sizes),
                render(ctx, sizes),
            ]
        )
        print(text)
        if args.json is not None:
            document = {
                "machine": info,
                "sizes": sizes,
                "images": {
                    "refs": dict(images.refs),
                    "sizes": dict(images.sizes),
                    "layers": {name: asdict(layer) for name, layer in images.layers.items()},
                },
                "results": [asdict(m) for m in ctx.results],
            }
            args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0


UNCOMPRESSED = "--dest-oci-accept-uncompressed-layers"
SHA256 = """
import hashlib, sys
digest = hashlib.sha256()
with open(sys.argv[1], "rb") as file:
    while chunk := file.read(1 << 20):
        digest.update(chunk)
"""

if __name__ == "__main__":
    sys.exit(main())
