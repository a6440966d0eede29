"""`cache copy` and `cache merge` under real faults, and a USB stick carried to a fresh Docker.

forklift-boot runs as its own process, so SIGKILL hits it and not pytest: killed at every named
crash point and at random moments while a ~200 MB blob of real files from /usr streams, both
caches must pass `cache verify`, and a rerun must complete and copy exactly the blobs the
destination still lacked. Also a tiny tmpfs (refused up front), a disk that fills mid-copy, a
flipped byte in a source blob, one read of each source blob (strace), and the end-to-end: a
cache filled from the loopback registry, copied onto an ext4 "stick" on a loop device,
remounted, and loaded into a private dockerd with the registry stopped.

Expected blob sets and sizes come from what the tests wrote, hashed here, or from the files on
disk, never from forklift-boot's own report.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from forklift_boot import cli
from forklift_boot.cache import (
    MEDIA_OCI_CONFIG,
    MEDIA_OCI_LAYER,
    MEDIA_OCI_MANIFEST,
    CachedImage,
    CacheWriter,
    Descriptor,
    ImageCache,
    build_oci_manifest,
)
from tests.conftest import require_component
from tests.testbed import images
from tests.testbed.dockerd import DaemonFactory
from tests.testbed.faults import (
    Started,
    command,
    parse_strace,
    product_env,
    run,
    temporaries,
    tmpfs,
    wait_for,
)
from tests.testbed.images import PublishedImage
from tests.testbed.registry import Registry

NO_DOCKER = "unix:///nonexistent/docker.sock"  # nothing here needs Docker
BIG_SIZE = 200 << 20  # real file content from /usr, uncompressed: a layer as `docker save` has it
SEED = 20260611
SMALL_A = "docker.io/fbtest/a-small:1"
BIG_B = "docker.io/fbtest/b-big:1"
SMALL_C = "docker.io/fbtest/c-small:1"
# forklift_boot/faults.py checkpoints that a copy passes, in order.
CRASH_POINTS = (
    "blob-renamed",
    "blob-partial",
    "blobs-durable",
    "index.json-temp-written",
    "index.json-renamed",
)
COMMANDS = ("copy", "merge")


@pytest.fixture(autouse=True)
def _need_root(request: pytest.FixtureRequest) -> None:
    if os.geteuid() != 0:
        require_component(request.config, "needs root (tmpfs and loop mounts)")


@pytest.fixture(autouse=True)
def _keep_sigterm() -> Iterator[None]:
    """cli.main (run in this process for `cache verify`) installs a SIGTERM handler."""
    handler = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, handler)


# Building source caches with the cache's writer API


class _Tee:
    """Passes tar output to a blob writer and hashes it independently."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer
        self.hasher = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.writer.write(data)
        self.hasher.update(data)
        self.size += len(data)
        return len(data)


def write_usr_layer(writer: CacheWriter, size: int) -> tuple[str, int]:
    """An uncompressed tar of regular files from /usr, at least ``size`` bytes; its digest and
    size as hashed here. Each file is read whole before it goes in, so a file that changes
    meanwhile can't break the stream."""
    with writer.blob_writer() as blob:
        tee = _Tee(blob)
        # typeshed wants an IO for fileobj; a stream ("w|") only ever calls write().
        with tarfile.open(fileobj=tee, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
            for path in _usr_files():
                try:
                    data = path.read_bytes()
                except OSError:
                    continue
                info = tarfile.TarInfo(str(path).lstrip("/"))
                info.size, info.mode, info.mtime = len(data), 0o644, images.MTIME
                tar.addfile(info, io.BytesIO(data))
                if tee.size >= size:
                    break
        digest = f"sha256:{tee.hasher.hexdigest()}"
        blob.commit(digest, tee.size)
    return digest, tee.size


def _usr_files() -> Iterator[Path]:
    for top in ("/usr/lib", "/usr/share", "/usr/bin"):
        for directory, subdirs, files in os.walk(top):
            subdirs.sort()
            for name in sorted(files):
                path = Path(directory) / name
                if path.is_file() and not path.is_symlink() and path.stat().st_size < 32 << 20:
                    yield path


def add_image(
    writer: CacheWriter, canonical: str, layers: list[tuple[str, int]], blobs: dict[str, int]
) -> None:
    """An entry over layers already written (digest, size); records every blob in ``blobs``."""
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [digest for digest, _ in layers]},
        }
    ).encode()
    config_descriptor = writer.write_blob(config, MEDIA_OCI_CONFIG)
    layer_descriptors = [Descriptor(MEDIA_OCI_LAYER, d, size) for d, size in layers]
    manifest = build_oci_manifest(config_descriptor, layer_descriptors)
    manifest_descriptor = writer.write_blob(manifest, MEDIA_OCI_MANIFEST)
    writer.put_images([CachedImage(canonical, (canonical,), manifest_descriptor)])
    for data in (config, manifest):
        blobs[f"sha256:{hashlib.sha256(data).hexdigest()}"] = len(data)
    blobs.update(dict(layers))


def write_layer(writer: CacheWriter, data: bytes, blobs: dict[str, int]) -> tuple[str, int]:
    writer.write_blob(data, MEDIA_OCI_LAYER)
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    blobs[digest] = len(data)
    return digest, len(data)


@dataclass(frozen=True)
class SourceCache:
    dir: Path
    blobs: dict[str, int]  # every blob the test wrote: digest -> size
    per_image: dict[str, dict[str, int]]
    big_layer: str


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SourceCache]:
    """Three images: two small ones (every blob under 1 MiB, one layer shared) on either side
    of one with a ~200 MB layer of files from /usr. Nothing writes to it after this."""
    cache_dir = tmp_path_factory.mktemp("transfer") / "source"
    rng = random.Random(SEED)
    per_image: dict[str, dict[str, int]] = {}
    with ImageCache(cache_dir).writing() as writer:
        shared_blobs: dict[str, int] = {}
        shared = write_layer(writer, rng.randbytes(300_000), shared_blobs)
        a: dict[str, int] = dict(shared_blobs)
        add_image(writer, SMALL_A, [shared, write_layer(writer, rng.randbytes(500_000), a)], a)
        b: dict[str, int] = {}
        big = write_usr_layer(writer, BIG_SIZE)
        b[big[0]] = big[1]
        add_image(writer, BIG_B, [write_layer(writer, b"b's own\n", b), big], b)
        c: dict[str, int] = dict(shared_blobs)
        add_image(writer, SMALL_C, [shared, write_layer(writer, rng.randbytes(700_000), c)], c)
        per_image = {SMALL_A: a, BIG_B: b, SMALL_C: c}
    blobs = {d: s for image in per_image.values() for d, s in image.items()}
    on_disk = {f"sha256:{p.name}": p.stat().st_size for p in blob_files(cache_dir)}
    assert on_disk == blobs
    assert big[1] >= BIG_SIZE
    yield SourceCache(cache_dir, blobs, per_image, big[0])
    shutil.rmtree(cache_dir, ignore_errors=True)


@pytest.fixture
def work_dir() -> Iterator[Path]:
    """A scratch directory removed after the test (each holds up to a few hundred MB)."""
    path = Path(tempfile.mkdtemp(prefix="fb-transfer-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


# Running and checking


def transfer(
    how: str, source_dir: Path, dest_dir: Path, *extra: str, crash_at: str | None = None
) -> subprocess.CompletedProcess[str]:
    return run(*transfer_args(how, source_dir, dest_dir, *extra), docker_host=NO_DOCKER,
               crash_at=crash_at)  # fmt: skip


def transfer_args(how: str, source_dir: Path, dest_dir: Path, *extra: str) -> tuple[str, ...]:
    if how == "copy":
        return ("cache", "copy", "--cache-dir", str(source_dir), "--to", str(dest_dir), *extra)
    return ("cache", "merge", str(source_dir), "--cache-dir", str(dest_dir), *extra)


def report_of(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def blob_files(cache_dir: Path) -> list[Path]:
    blobs = cache_dir / "blobs" / "sha256"
    if not blobs.is_dir():
        return []
    return sorted(p for p in blobs.iterdir() if ".tmp-" not in p.name)


def still_missing(dest_dir: Path, wanted: dict[str, int]) -> dict[str, int]:
    """The wanted blobs the destination lacks (no file of that name and size)."""
    on_disk = {f"sha256:{p.name}": p.stat().st_size for p in blob_files(dest_dir)}
    return {d: size for d, size in wanted.items() if on_disk.get(d) != size}


def entries(cache_dir: Path) -> dict[str, str]:
    """canonical name -> manifest digest."""
    if not (cache_dir / "index.json").exists():
        return {}
    index = json.loads((cache_dir / "index.json").read_text())
    return {e["annotations"]["io.containerd.image.name"]: e["digest"] for e in index["manifests"]}


def verify(cache_dir: Path) -> tuple[int, str]:
    """`forklift-boot cache verify` in this process (it needs no signals and no Docker)."""
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = cli.main(["cache", "verify", "--cache-dir", str(cache_dir)], env={"HOME": "/x"})
    return code, stdout.getvalue()


def assert_sound(cache_dir: Path) -> None:
    assert verify(cache_dir) == (0, "")
    assert temporaries(cache_dir) == []


def assert_sound_after_crash(cache_dir: Path) -> None:
    """Only temporaries, which the next writer sweeps; no missing or damaged blob."""
    code, stdout = verify(cache_dir)
    problems = stdout.splitlines()
    assert all(p.startswith("leftover temporary file") for p in problems), stdout
    assert code == (1 if problems else 0), stdout
    assert len(problems) == len(temporaries(cache_dir)), (problems, temporaries(cache_dir))


def snapshot(cache_dir: Path) -> dict[str, tuple[int, int]]:
    """Every file but the lock: size and mtime; the source must never change."""
    return {
        str(p.relative_to(cache_dir)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in cache_dir.rglob("*")
        if p.is_file() and p.name != ".lock"
    }


def assert_rerun_copies_only_what_is_missing(
    how: str, source: SourceCache, dest_dir: Path
) -> dict[str, Any]:
    missing = still_missing(dest_dir, source.blobs)
    rerun = transfer(how, source.dir, dest_dir, "--json")
    assert rerun.returncode == 0, rerun.stderr
    report = report_of(rerun)
    assert report["blobs"]["copied"] == len(missing), (missing, report["blobs"])
    assert report["blobs"]["bytes_copied"] == sum(missing.values())
    assert report["blobs"]["skipped"] == len(source.blobs) - len(missing)
    assert_sound(dest_dir)
    assert set(entries(dest_dir)) >= {SMALL_A, BIG_B, SMALL_C}
    assert entries(dest_dir) == {**entries(dest_dir), **entries(source.dir)}
    assert still_missing(dest_dir, source.blobs) == {}
    return report


# 1. kill -9 at every named crash point


@pytest.mark.parametrize("how", COMMANDS)
@pytest.mark.parametrize("crash_at", CRASH_POINTS)
def test_killed_at_crash_point(
    source: SourceCache, work_dir: Path, how: str, crash_at: str
) -> None:
    dest = work_dir / "dest"
    # The destination already holds a-small: the layout and one entry exist.
    seeded = transfer("copy", source.dir, dest, SMALL_A)
    assert seeded.returncode == 0, seeded.stderr
    before_entries = entries(dest)
    before_source = snapshot(source.dir)

    crashed = transfer(how, source.dir, dest, crash_at=crash_at)
    assert crashed.returncode == -signal.SIGKILL, f"{crash_at} not reached:\n{crashed.stderr}"
    assert_sound_after_crash(dest)
    assert verify(source.dir) == (0, "")
    assert snapshot(source.dir) == before_source
    leftovers = [p.name for p in temporaries(dest)]
    if crash_at == "blob-partial":
        # The big layer, mid-way: part of it in a temporary, nothing under its name.
        big = source.blobs[source.big_layer]
        assert [0 < p.stat().st_size < big for p in temporaries(dest)] == [True]
        assert still_missing(dest, {source.big_layer: source.blobs[source.big_layer]})
    elif crash_at == "index.json-temp-written":
        assert [name.split(".tmp-")[0] for name in leftovers] == ["index.json"]
    else:
        assert leftovers == []
    if crash_at in ("blobs-durable", "index.json-temp-written", "index.json-renamed"):
        assert still_missing(dest, source.blobs) == {}
    # The index changes only at its rename, and then names every image at once.
    if crash_at == "index.json-renamed":
        assert entries(dest) == entries(source.dir)
    else:
        assert entries(dest) == before_entries

    assert_rerun_copies_only_what_is_missing(how, source, dest)
    assert snapshot(source.dir) == before_source


# 2. kill -9 at random moments


@pytest.mark.parametrize("how", COMMANDS)
def test_killed_at_random_moments(source: SourceCache, work_dir: Path, how: str) -> None:
    """Timed from when the destination's lock file appears (the copy's work starts), over as
    long as an undisturbed copy takes."""
    rng = random.Random(f"{SEED}-{how}")
    before_source = snapshot(source.dir)

    def start(dest: Path) -> Started:
        args = transfer_args(how, source.dir, dest)
        return Started(*args, docker_host=NO_DOCKER, log_dir=work_dir / "logs")

    def wait_for_work(started: Started, dest: Path) -> None:
        wait_for(
            lambda: (dest / ".lock").exists() or started.proc.poll() is not None,
            60,
            "the copy to start",
        )

    clean = work_dir / "clean"
    started = start(clean)
    wait_for_work(started, clean)
    anchor = time.monotonic()
    assert started.wait(timeout=300) == 0, started.stderr
    work = time.monotonic() - anchor
    shutil.rmtree(clean)

    outcomes: list[tuple[float, int, int]] = []
    for attempt in range(4):
        dest = work_dir / f"dest-{attempt}"
        delay = rng.uniform(0, work)
        started = start(dest)
        wait_for_work(started, dest)
        time.sleep(delay)
        code = started.kill()
        assert code in (0, -signal.SIGKILL), started.stderr
        assert_sound_after_crash(dest)
        assert verify(source.dir) == (0, "")
        missing = still_missing(dest, source.blobs)
        outcomes.append((round(delay, 3), code, sum(missing.values())))
        assert_rerun_copies_only_what_is_missing(how, source, dest)
        shutil.rmtree(dest)
    assert snapshot(source.dir) == before_source
    # At least one kill landed mid-copy, with part of the bytes there and part missing.
    assert any(0 < left < sum(source.blobs.values()) for _, _, left in outcomes), (work, outcomes)


# 3. One read of each source blob


def test_each_source_blob_is_read_once_while_it_is_copied(
    source: SourceCache, work_dir: Path, request: pytest.FixtureRequest
) -> None:
    """The digest is checked on the bytes as they stream: the big layer's file is opened
    once and read once, byte for byte, and the destination's copy is never read back."""
    if shutil.which("strace") is None:
        require_component(request.config, "needs strace (apt-get install strace)")
    dest = work_dir / "dest"
    trace = work_dir / "strace.log"
    syscalls = "openat,read,pread64,readv,preadv"
    # strace_command's, with `-s 0`: 200 MB of data has no place in the log.
    argv = ["strace", "-f", "-y", "-qq", "-s", "0", "-o", str(trace), "-e", f"trace={syscalls}"]
    argv += ["--", *command(*transfer_args("copy", source.dir, dest, BIG_B))]
    result = subprocess.run(
        argv, env=product_env(NO_DOCKER), capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr
    name = source.big_layer.removeprefix("sha256:")
    source_path = str((source.dir / "blobs" / "sha256" / name).resolve())
    dest_path = str((dest / "blobs" / "sha256" / name).resolve())
    calls = parse_strace(trace.read_text())
    opened = [c for c in calls if c.name == "openat" and c.ok and source_path in c.paths()]
    read = sum(
        int(c.result) for c in calls if c.name != "openat" and c.ok and c.fd_path() == source_path
    )
    read_back = [c for c in calls if c.fd_path() == dest_path and c.name != "openat"]
    assert len(opened) == 1, opened
    assert read == source.blobs[source.big_layer]
    assert read_back == []
    assert_sound(dest)


# 4. A full disk


def test_a_destination_too_small_is_refused_up_front(source: SourceCache) -> None:
    with tmpfs("2m") as filesystem:
        dest = filesystem / "usb" / "cache"
        result = transfer("copy", source.dir, dest)
        assert result.returncode == 1, result.stderr
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr
        blobs = len(source.blobs)
        assert lines[0].startswith(f"Error: couldn't copy images: copying {blobs} blobs needs ")
        assert f"free on {filesystem} (the filesystem of {dest})" in lines[0]
        assert not dest.exists()  # nothing was created

        # An existing cache there: refused the same way, and left as it was.
        with ImageCache(dest).writing():
            pass
        result = transfer("merge", source.dir, dest)
        assert result.returncode == 1, result.stderr
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert blob_files(dest) == []
        assert_sound(dest)


def test_a_disk_that_fills_mid_copy(source: SourceCache) -> None:
    """The free-space check passes; then, while the big layer streams, the rest of the disk is
    taken (the copy held with SIGSTOP meanwhile, so the moment does not depend on speed)."""
    total = sum(source.blobs.values())
    with tmpfs(f"{(total >> 20) + 16}m") as filesystem:
        dest = filesystem / "cache"
        started = Started(
            *transfer_args("copy", source.dir, dest, "--json"),
            docker_host=NO_DOCKER,
            log_dir=filesystem.parent / f"{filesystem.name}-logs",
        )
        blobs = dest / "blobs" / "sha256"

        def big_layer_streaming() -> bool:
            if started.proc.poll() is not None:
                return True
            with contextlib.suppress(OSError):
                return any(
                    p.name.startswith(".tmp-") and p.stat().st_size > 8 << 20
                    for p in blobs.iterdir()
                )
            return False

        wait_for(big_layer_streaming, 60, "the big layer to stream", interval=0.001)
        started.signal(signal.SIGSTOP)
        try:
            assert started.proc.poll() is None, "the copy ended before the big layer streamed"
            free = psutil.disk_usage(str(filesystem)).free
            filler = filesystem / "filler"
            # ENOSPC ends it: the disk is full.
            with filler.open("wb", buffering=0) as file, contextlib.suppress(OSError):
                while free > 0:
                    free -= file.write(b"\0" * min(free, 1 << 20))
        finally:
            started.signal(signal.SIGCONT)
        code = started.wait(timeout=120)
        stderr = started.stderr
        shutil.rmtree(started.stderr_path.parent, ignore_errors=True)
        assert code == 1, stderr
        errors = [line for line in stderr.splitlines() if line.startswith("Error: ")]
        assert errors == [
            f"Error: couldn't copy {BIG_B} to the image cache {dest}: no space left on its "
            "filesystem; free some space there and run the command again (the blobs copied so "
            "far are kept)"
        ], stderr
        assert_sound(dest)
        # a-small was complete before the disk filled: recorded; the big one is not.
        assert entries(dest) == {SMALL_A: entries(source.dir)[SMALL_A]}
        assert still_missing(dest, source.per_image[SMALL_A]) == {}

        filler.unlink()
        assert_rerun_copies_only_what_is_missing("copy", source, dest)


# 5. A flipped byte in a source blob


def test_a_flipped_byte_in_a_source_blob(work_dir: Path) -> None:
    """Found while the blob streams: one error line naming the source, the image and the blob;
    nothing of that image in the destination; the other image copied; exit code 3."""
    src = work_dir / "source"
    rng = random.Random(SEED + 5)
    damaged_image, fine_image = "docker.io/fbtest/damaged:1", "docker.io/fbtest/fine:1"
    with ImageCache(src).writing() as writer:
        d: dict[str, int] = {}
        bad = write_layer(writer, rng.randbytes(6 << 20), d)
        # Copied first (children last to first), then removed again when `bad` fails.
        good = write_layer(writer, rng.randbytes(3 << 20), d)
        add_image(writer, damaged_image, [bad, good], d)
        f: dict[str, int] = {}
        add_image(writer, fine_image, [write_layer(writer, rng.randbytes(1 << 20), f)], f)
    path = src / "blobs" / "sha256" / bad[0].removeprefix("sha256:")
    content = bytearray(path.read_bytes())
    content[len(content) // 2] ^= 0x01
    path.write_bytes(bytes(content))
    actual = f"sha256:{hashlib.sha256(content).hexdigest()}"
    before_source = snapshot(src)

    for how in COMMANDS:
        dest = work_dir / f"dest-{how}"
        result = transfer(how, src, dest, "--json")
        assert result.returncode == 3, result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
        assert errors == [
            f"Error: couldn't copy {damaged_image} from the image cache {src}: blob {bad[0]} "
            f"(layer) is corrupt: its content hashes to {actual}; check it with "
            f"`forklift-boot cache verify --cache-dir {src}`"
        ], result.stderr
        statuses = {i["name"]: i["status"] for i in report_of(result)["images"]}
        assert statuses == {damaged_image: "failed", fine_image: "copied"}
        assert {f"sha256:{p.name}": p.stat().st_size for p in blob_files(dest)} == f
        assert entries(dest) == {fine_image: entries(src)[fine_image]}
        assert report_of(result)["blobs"]["bytes_copied"] == sum(f.values())
        assert_sound(dest)
        assert snapshot(src) == before_source
        code, out = verify(src)
        assert code == 1
        assert bad[0] in out


# 6. The end to end: registry -> cache -> USB stick -> a fresh Docker, offline


@contextlib.contextmanager
def usb_stick(directory: Path, size: str) -> Iterator[tuple[Path, Path]]:
    """An ext4 filesystem image on a loop device, mounted; yields (mount point, image file)."""
    image = directory / "stick.img"
    mount_point = directory / "stick"
    mount_point.mkdir()
    subprocess.run(["truncate", "-s", size, str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount_point)], check=True)
    try:
        yield mount_point, image
    finally:
        if subprocess.run(["umount", str(mount_point)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], check=False)


def cli_run(*argv: str, **env: str) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = cli.main(list(argv), env={"HOME": "/nonexistent", "DOCKER_HOST": NO_DOCKER, **env})
    return code, stdout.getvalue(), stderr.getvalue()


@pytest.mark.docker
@pytest.mark.registry
def test_a_cache_carried_on_a_usb_stick_loads_offline(
    work_dir: Path,
    registry: Registry,
    published_images: dict[str, PublishedImage],
    fresh_dockerd: DaemonFactory,
    request: pytest.FixtureRequest,
) -> None:
    if shutil.which("mkfs.ext4") is None or shutil.which("losetup") is None:
        require_component(request.config, "needs mkfs.ext4 and loop devices")
    alpha, delta = published_images["alpha"], published_images["delta"]
    expected = dict.fromkeys(alpha.refs, alpha.image_id) | dict.fromkeys(delta.refs, delta.image_id)
    cache = work_dir / "ci-cache"
    code, _, err = cli_run(
        "cache-img", "--from", "registry", "--platform", "linux/amd64",
        "--registry-mirror", registry.url, "--cache-dir", str(cache), *expected,
    )  # fmt: skip
    assert code == 0, err
    filled = {f"sha256:{p.name}": p.stat().st_size for p in blob_files(cache)}

    with usb_stick(work_dir, "64M") as (mount_point, image):
        on_stick = mount_point / "forklift-cache"
        code, out, err = cli_run(
            "cache", "copy", "--cache-dir", str(cache), "--to", str(on_stick), "--json"
        )
        assert code == 0, err
        report = json.loads(out)
        assert report["blobs"]["copied"] == len(filled)
        assert report["blobs"]["bytes_copied"] == sum(filled.values())
        assert {i["status"] for i in report["images"]} == {"copied"}
        # Unplugged and plugged in again: what reached the stick is all there is.
        subprocess.run(["umount", str(mount_point)], check=True)
        subprocess.run(["mount", "-o", "loop", str(image), str(mount_point)], check=True)
        assert {f"sha256:{p.name}": p.stat().st_size for p in blob_files(on_stick)} == filled
        assert_sound(on_stick)

        with registry.offline():
            daemon = fresh_dockerd()
            code, _, err = cli_run(
                "load-img", "--cache-dir", str(on_stick), *expected, DOCKER_HOST=daemon.host
            )
            assert code == 0, err
            client = daemon.client()  # dockerd was restarted to record the digest references
            try:
                for ref, image_id in expected.items():
                    assert images.inspect(client, ref)["Id"] == image_id, ref
                    container = client.containers.create(ref, command=["/bin/busybox", "true"])
                    assert container.attrs["Image"] == image_id, ref
                    container.remove()
            finally:
                client.close()

            # And on a device: the stick merged into its own cache gives the same blobs.
            device = work_dir / "device-cache"
            code, _, err = cli_run("cache", "merge", str(on_stick), "--cache-dir", str(device))
            assert code == 0, err
            assert {f"sha256:{p.name}": p.stat().st_size for p in blob_files(device)} == filled
            assert entries(device) == entries(cache)
            assert_sound(device)
