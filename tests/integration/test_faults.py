"""Real faults against cache-img and load-img: kill -9 at every named crash point and at random
moments, the order of fsync and rename under strace, a full disk, a flipped byte, Docker down,
two writers at once, and SIGTERM.

Every test has its own dockerd (``fresh_dockerd``) that forklift-boot may stop and restart, and
runs forklift-boot as a subprocess, so that the signals hit it and not pytest. After each fault
the cache verifies, a rerun of the same command succeeds, and Docker's image set (image IDs, and
what each ref resolves to) is the one before or after the operation.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import random
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import psutil
import pytest

from forklift_boot import cli
from forklift_boot.cache import ImageCache
from forklift_boot.refs import parse_image_ref
from tests.conftest import require_component
from tests.testbed import images
from tests.testbed.dockerd import DaemonFactory, DockerDaemon
from tests.testbed.faults import (
    TEMP_MARKER,
    DockerState,
    Started,
    blob_files,
    command,
    created,
    docker_state,
    fill,
    fsyncs,
    parse_strace,
    process_gone,
    product_env,
    remove_every_image,
    renames,
    run,
    strace_command,
    temporaries,
    tmpfs,
    wait_for,
    wait_until_answering,
)
from tests.testbed.images import Layer, PublishedImage
from tests.testbed.registry import Registry

pytestmark = [pytest.mark.docker, pytest.mark.registry]

# forklift_boot/faults.py checkpoints, by the command that reaches them.
CACHE_CRASH_POINTS = (
    "direct-layer-partial",
    "blob-partial",
    "blob-renamed",
    "direct-layers-stored",
    "index.json-temp-written",
    "index.json-renamed",
    "blobs-durable",
)
LOAD_CRASH_POINTS = ("image-loaded", "dockerd-stopped", "references-written", "dockerd-started")
RESTART_CRASH_POINTS = ("dockerd-stopped", "references-written", "dockerd-started")
# Docker must answer again this soon after forklift-boot died while it was stopped (watchdog).
WATCHDOG_TIMEOUT = 30.0
# A signalled forklift-boot must be gone this soon (a restart of Docker may have to finish).
PROMPT_EXIT = 15.0
BIG_LAYER_SIZE = 8 << 20  # incompressible: more than 1 MiB of one blob, gzip or not
SEED = 20261127
STORED = ("alpha", "delta", "big")  # what the operations under test copy and load
SEEDED = "gamma"  # cached before the operation: the layout and one entry already exist


@pytest.fixture(scope="module")
def big_image(docker_client: docker.DockerClient, registry: Registry) -> PublishedImage:
    """``127.0.0.1:PORT/fbtest/big:1.0``: busybox plus an 8 MiB layer of random bytes."""
    data = random.Random(SEED).randbytes(BIG_LAYER_SIZE)
    layers = (images.busybox_layer(), Layer({"big/random.bin": (data, 0o644)}))
    built = images.build_image(docker_client, layers, "big")
    published = images.publish_local(docker_client, built, registry, "fbtest/big", "1.0")
    images.remove_images(docker_client, [built.ref, published.tag_ref])
    return published


@dataclass
class Bed:
    """A private dockerd with the test images pulled by tag (so with their registry digests)."""

    daemon: DockerDaemon
    images: dict[str, PublishedImage]
    tmp_path: Path
    client: docker.DockerClient = field(init=False)

    def __post_init__(self) -> None:
        self.client = self.daemon.client()
        for image in self.images.values():
            images.pull(self.client, image)

    @property
    def cache_dir(self) -> Path:
        return self.tmp_path / "cache"

    def refs(self, *names: str) -> list[str]:
        """Every spelling of the images: tag, digest, tag@digest, short and fully qualified."""
        return [ref for name in names for ref in self.images[name].refs]

    def run(self, *args: str, crash_at: str | None = None) -> subprocess.CompletedProcess[str]:
        return run(*args, docker_host=self.daemon.host, crash_at=crash_at)

    def start(self, *args: str) -> Started:
        return Started(*args, docker_host=self.daemon.host, log_dir=self.tmp_path / "logs")

    def state(self) -> DockerState:
        # A client per call: forklift-boot may have restarted the daemon under an older one.
        client = self.daemon.client()
        try:
            return docker_state(client, self.refs(*self.images))
        finally:
            client.close()

    def expected(self, *names: str) -> DockerState:
        """Exactly these images in Docker, every spelling of them resolving."""
        present = [(self.images[n].image_id, self.images[n].refs) for n in names]
        return DockerState.expected(present, self.refs(*self.images))

    def cache_img(self, *names: str, cache_dir: Path | None = None) -> None:
        result = self.run(
            "cache-img", "--cache-dir", str(cache_dir or self.cache_dir), *self.refs(*names)
        )
        assert result.returncode == 0, result.stderr

    def forget_images(self) -> None:
        client = self.daemon.client()
        try:
            remove_every_image(client)
        finally:
            client.close()


@pytest.fixture
def bed(
    fresh_dockerd: DaemonFactory,
    published_images: dict[str, PublishedImage],
    big_image: PublishedImage,
    tmp_path: Path,
) -> Iterator[Bed]:
    wanted = {name: published_images[name] for name in ("alpha", "delta", "gamma")}
    test_bed = Bed(fresh_dockerd(), {**wanted, "big": big_image}, tmp_path)
    yield test_bed
    test_bed.client.close()


# Checks


def canonical_names(refs: list[str]) -> set[str]:
    return {parse_image_ref(ref).with_default_tag().canonical for ref in refs}


def cached(cache_dir: Path) -> dict[str, str | None]:
    """The cache's entries: canonical name -> image ID."""
    with ImageCache(cache_dir).reading() as reader:
        return {image.canonical: image.image_id for image in reader.images()}


def expected_entries(bed: Bed, *names: str) -> dict[str, str | None]:
    return {
        canonical: bed.images[name].image_id
        for name in names
        for canonical in canonical_names(list(bed.images[name].refs))
    }


def verify(cache_dir: Path) -> tuple[int, str]:
    """``forklift-boot cache verify``: exit code and stdout. In this process, to save the
    second an interpreter takes to import the docker SDK; it needs neither Docker nor signals."""
    stdout = io.StringIO()
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        with contextlib.redirect_stdout(stdout):
            code = cli.main(
                ["cache", "verify", "--cache-dir", str(cache_dir)], env={"HOME": "/nonexistent"}
            )
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    return code, stdout.getvalue()


def assert_sound(cache_dir: Path) -> None:
    """`cache verify` exits 0 and finds nothing; no temporary is left."""
    assert verify(cache_dir) == (0, "")
    assert temporaries(cache_dir) == []


def assert_sound_after_crash(cache_dir: Path) -> None:
    """What a crash may leave: temporaries, which the next writer sweeps, and nothing else.

    `cache verify` reports leftover temporaries as problems (and exits 1); every other kind of
    problem (a missing or damaged blob, an unreadable index) would be a broken cache.
    """
    code, stdout = verify(cache_dir)
    problems = stdout.splitlines()
    assert all(p.startswith("leftover temporary file") for p in problems), stdout
    assert code == (1 if problems else 0), stdout
    assert len(problems) == len(temporaries(cache_dir)), (problems, temporaries(cache_dir))


def assert_between(middle: DockerState, before: DockerState, after: DockerState) -> None:
    """No partial image: every image is one of before or after, every ref resolves to its own."""
    assert before.image_ids <= middle.image_ids <= after.image_ids, middle.describe()
    wanted = dict(after.resolves)
    for ref, image_id in middle.resolves:
        assert image_id in (None, wanted[ref]), f"{ref} resolves to {image_id}"


def refstore_temporaries(daemon: DockerDaemon) -> list[Path]:
    return sorted(daemon.data_root.glob("image/*/repositories.json*.tmp*"))


# 1. kill -9 at every named crash point


@pytest.mark.parametrize("crash_at", CACHE_CRASH_POINTS)
def test_cache_img_killed_at_crash_point(bed: Bed, crash_at: str) -> None:
    bed.cache_img(SEEDED)
    before_run = cached(bed.cache_dir)
    before = bed.state()
    args = ("cache-img", "--cache-dir", str(bed.cache_dir), *bed.refs(*STORED))

    crashed = bed.run(*args, crash_at=crash_at)
    assert crashed.returncode == -signal.SIGKILL, f"{crash_at} not reached:\n{crashed.stderr}"
    assert_sound_after_crash(bed.cache_dir)
    leftovers = [p.name for p in temporaries(bed.cache_dir)]
    if crash_at in ("direct-layer-partial", "blob-partial", "blob-renamed"):
        # Layers are copied several at once (stores/docker/direct_copy.py): others may be
        # half-written temporaries too; a crash leaves nothing else.
        assert all(TEMP_MARKER in name for name in leftovers), leftovers
        if crash_at == "blob-partial":
            # Over 1 MiB was written to one; the encoders' output comes in pieces smaller
            # than the blob file's 1 MiB buffer, so only some of it need be on disk.
            assert any(p.stat().st_size > 0 for p in temporaries(bed.cache_dir))
        elif crash_at == "direct-layer-partial":
            assert leftovers
    elif crash_at == "index.json-temp-written":
        assert [name.split(".tmp-")[0] for name in leftovers] == ["index.json"]
    else:
        assert leftovers == []
    # The index changes only at its rename: before it, the cache is as it was.
    if crash_at == "index.json-renamed":
        assert cached(bed.cache_dir) == {**before_run, **expected_entries(bed, *STORED)}
    else:
        assert cached(bed.cache_dir) == before_run
    assert bed.state() == before

    rerun = bed.run(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert_sound(bed.cache_dir)
    assert cached(bed.cache_dir) == expected_entries(bed, SEEDED, *STORED)
    assert bed.state() == before


@pytest.mark.parametrize("crash_at", LOAD_CRASH_POINTS)
def test_load_img_killed_at_crash_point(bed: Bed, crash_at: str) -> None:
    bed.cache_img(*STORED)
    bed.forget_images()
    before, after = bed.state(), bed.expected(*STORED)
    assert before == bed.expected()
    first_pid = bed.daemon.pid
    args = ("load-img", "--cache-dir", str(bed.cache_dir), *bed.refs(*STORED))

    crashed = bed.run(*args, crash_at=crash_at)
    assert crashed.returncode == -signal.SIGKILL, f"{crash_at} not reached:\n{crashed.stderr}"
    if crash_at in RESTART_CRASH_POINTS:
        wait_until_answering(bed.daemon, WATCHDOG_TIMEOUT)
        assert bed.daemon.pid != first_pid
    middle = bed.state()
    assert_between(middle, before, after)
    if crash_at == "image-loaded":
        assert len(middle.image_ids) == 1, middle.describe()
    elif crash_at == "dockerd-stopped":
        # Loaded and tagged; the digest references were never written.
        assert middle.image_ids == after.image_ids
        unresolved = {ref for ref, image_id in middle.resolves if image_id is None}
        assert unresolved & set(bed.refs(*STORED)) == {r for r in bed.refs(*STORED) if "@" in r}
    else:
        assert middle == after, middle.describe()
    assert_sound(bed.cache_dir)

    rerun = bed.run(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert bed.state() == after
    assert_sound(bed.cache_dir)
    assert refstore_temporaries(bed.daemon) == []


def test_watchdog_starts_docker_when_killed_while_docker_stops(bed: Bed) -> None:
    """The widest gap between two crash points: dockerd was told to stop and is shutting down
    (1-3 s) when forklift-boot dies. The watchdog must wait for it to go, then start it."""
    bed.cache_img(*STORED)
    bed.forget_images()
    first_pid = bed.daemon.pid
    log_size = bed.daemon.log_path.stat().st_size

    def dockerd_stopping() -> bool:
        with bed.daemon.log_path.open("rb") as log:
            log.seek(log_size)
            return b"Processing signal 'terminated'" in log.read()

    started = bed.start("load-img", "--cache-dir", str(bed.cache_dir), *bed.refs(*STORED))
    wait_for(dockerd_stopping, 60, "forklift-boot to stop dockerd")
    # Hold dockerd in the middle of its shutdown, so that the gap under test (told to stop, not
    # gone yet) does not depend on how fast this machine is; it resumes once forklift-boot died.
    os.kill(first_pid, signal.SIGSTOP)
    try:
        assert started.kill() == -signal.SIGKILL
        assert not process_gone(first_pid)
        time.sleep(1)  # the watchdog sees its pipe close while dockerd is still there
    finally:
        os.kill(first_pid, signal.SIGCONT)
    wait_until_answering(bed.daemon, WATCHDOG_TIMEOUT)
    assert bed.daemon.pid != first_pid
    assert_between(bed.state(), bed.expected(), bed.expected(*STORED))

    rerun = bed.run("load-img", "--cache-dir", str(bed.cache_dir), *bed.refs(*STORED))
    assert rerun.returncode == 0, rerun.stderr
    assert bed.state() == bed.expected(*STORED)


# 2. kill -9 at random moments
#
# The moments are drawn over the run's work, timed from when the work visibly starts (the cache's
# lock file appears, the first image starts loading): before that an interpreter is importing
# modules, which is as safe a moment to die as any but tests nothing.


def run_to_end(bed: Bed, args: tuple[str, ...], working: Callable[[Started], bool]) -> float:
    """Runs forklift-boot undisturbed; the seconds from the start of its work to its exit."""
    started = bed.start(*args)
    wait_for(lambda: working(started) or started.proc.poll() is not None, 60, "work to start")
    anchor = time.monotonic()
    assert started.wait(timeout=180) == 0, started.stderr
    return time.monotonic() - anchor


def kill_after(
    bed: Bed, args: tuple[str, ...], working: Callable[[Started], bool], delay: float
) -> int:
    """Starts forklift-boot and SIGKILLs it ``delay`` seconds into its work; its exit code."""
    started = bed.start(*args)
    wait_for(lambda: working(started) or started.proc.poll() is not None, 60, "work to start")
    time.sleep(delay)
    code = started.kill()
    assert code in (0, -signal.SIGKILL), started.stderr
    return code


def test_cache_img_killed_at_random_moments(bed: Bed) -> None:
    rng = random.Random(SEED)
    before = bed.state()

    def args(cache_dir: Path) -> tuple[str, ...]:
        return ("cache-img", "--cache-dir", str(cache_dir), *bed.refs(*STORED))

    def locked(cache_dir: Path) -> Callable[[Started], bool]:
        return lambda started: (cache_dir / ".lock").exists()

    clean = bed.tmp_path / "clean"
    work = run_to_end(bed, args(clean), locked(clean))
    outcomes: list[tuple[float, int]] = []
    for attempt in range(5):
        cache_dir = bed.tmp_path / f"cache-{attempt}"
        delay = rng.uniform(0, work)
        outcomes.append(
            (round(delay, 3), kill_after(bed, args(cache_dir), locked(cache_dir), delay))
        )
        assert_sound_after_crash(cache_dir)
        assert bed.state() == before

        rerun = bed.run(*args(cache_dir))
        assert rerun.returncode == 0, f"after kills {outcomes}: {rerun.stderr}"
        assert_sound(cache_dir)
        assert cached(cache_dir) == expected_entries(bed, *STORED)
        assert bed.state() == before
    assert any(code == -signal.SIGKILL for _, code in outcomes), (work, outcomes)


def test_load_img_killed_at_random_moments(bed: Bed) -> None:
    rng = random.Random(SEED + 1)
    bed.cache_img(*STORED)
    args = ("load-img", "--cache-dir", str(bed.cache_dir), *bed.refs(*STORED))
    after = bed.expected(*STORED)

    def loading(started: Started) -> bool:
        return "loading 1/" in started.stderr

    bed.forget_images()
    work = run_to_end(bed, args, loading)
    assert bed.state() == after
    outcomes: list[tuple[float, int]] = []
    for _ in range(5):
        bed.forget_images()
        before = bed.state()
        delay = rng.uniform(0, work)
        outcomes.append((round(delay, 3), kill_after(bed, args, loading, delay)))
        wait_until_answering(bed.daemon, WATCHDOG_TIMEOUT)
        assert_between(bed.state(), before, after)
        assert_sound(bed.cache_dir)

        rerun = bed.run(*args)
        assert rerun.returncode == 0, f"after kills {outcomes}: {rerun.stderr}"
        assert bed.state() == after
        assert refstore_temporaries(bed.daemon) == []
    assert any(code == -signal.SIGKILL for _, code in outcomes), (work, outcomes)


# 3. The order of fsync and rename


def test_blobs_are_durable_before_the_index_names_them(
    bed: Bed, request: pytest.FixtureRequest
) -> None:
    if shutil.which("strace") is None:
        require_component(request.config, "needs strace (apt-get install strace)")
    bed.cache_img(SEEDED)  # the layout exists: the traced run renames index.json once
    cache_dir = Path(os.path.realpath(bed.cache_dir))
    blobs_dir = str(cache_dir / "blobs" / "sha256")
    blobs_before = set(blob_files(cache_dir))
    trace = bed.tmp_path / "strace.log"
    syscalls = ("fsync", "fdatasync", "rename", "renameat", "renameat2", "openat")
    argv = strace_command(
        trace,
        syscalls,
        command("cache-img", "--cache-dir", str(cache_dir), *bed.refs(*STORED)),
    )
    result = subprocess.run(
        argv,
        env=product_env(bed.daemon.host),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    calls = parse_strace(trace.read_text())
    moves, syncs, opened = renames(calls), fsyncs(calls), created(calls)

    def synced(path: str, after: int, before: float) -> bool:
        return any(after < seq < before and synced_path == path for seq, synced_path in syncs)

    blob_moves = [
        (seq, old, new)
        for seq, old, new in moves
        if os.path.dirname(new) == blobs_dir and os.path.basename(old).startswith(".tmp-")
    ]
    new_blobs = set(blob_files(cache_dir)) - blobs_before
    assert {Path(new) for _, _, new in blob_moves} == new_blobs
    thread_of = {call.seq: call.pid for call in calls}
    for seq, old, new in blob_moves:
        # A new temporary (O_EXCL), fsynced, renamed, then the directory fsynced by the same
        # thread before it renames anything else: only then is the blob durable under its name
        # (and its commit returns). Layers are stored by several threads at once
        # (stores/docker/direct_copy.py), so another thread's rename may come in between.
        assert "O_EXCL" in opened[old].args
        assert synced(old, opened[old].seq, seq), f"{old} renamed to {new} without an fsync"
        thread = thread_of[seq]
        next_move = min(
            (s for s, _, _ in moves if s > seq and thread_of[s] == thread), default=float("inf")
        )
        assert any(
            seq < s < next_move and path == blobs_dir and thread_of[s] == thread
            for s, path in syncs
        ), f"no fsync of {blobs_dir} after {new}"

    index = str(cache_dir / "index.json")
    index_moves = [(seq, old) for seq, old, new in moves if new == index]
    assert len(index_moves) == 1, index_moves
    index_seq, index_temp = index_moves[0]
    assert os.path.basename(index_temp).startswith("index.json.tmp-")
    assert synced(index_temp, opened[index_temp].seq, index_seq)
    assert synced(str(cache_dir), index_seq, float("inf"))
    assert index_seq > max(seq for seq, _, _ in blob_moves)
    assert_sound(cache_dir)


# 4. A full disk


def test_cache_img_refuses_when_the_disk_is_too_small(bed: Bed) -> None:
    with tmpfs("2m") as filesystem:
        cache_dir = filesystem / "cache"
        result = bed.run("cache-img", "--cache-dir", str(cache_dir), *bed.refs(*STORED))
        assert result.returncode == 1, result.stderr
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("Error: ")
        assert str(cache_dir) in lines[0]
        assert "free" in lines[0]
        assert blob_files(cache_dir) == []
        assert {p.name for p in cache_dir.iterdir()} <= {
            ".lock",
            "oci-layout",
            "index.json",
            "blobs",
        }
        assert_sound(cache_dir)


def test_cache_img_fails_cleanly_when_the_disk_fills_mid_copy(bed: Bed) -> None:
    """The pre-flight estimate is Docker's image size; what is written is more (tar headers,
    config, manifest, whole pages per file). A filesystem filled to just the estimate passes
    the check and fills up during the copy."""
    big = bed.images["big"]
    args = ("cache-img", "--compress", "none", "--cache-dir")
    estimate = int(images.inspect(bed.client, big.tag_ref)["Size"])
    with tmpfs("32m") as filesystem:
        cache_dir = filesystem / "cache"
        with ImageCache(cache_dir).writing():
            pass  # the layout, so that what follows is only the copy
        page = os.statvfs(filesystem).f_frsize
        free = psutil.disk_usage(str(filesystem)).free
        filler = fill(filesystem, "filler", free - -(-estimate // page) * page)
        free = psutil.disk_usage(str(filesystem)).free
        assert estimate <= free < estimate + page, (estimate, free)

        result = bed.run(*args, str(cache_dir), *big.refs)
        assert result.returncode in (1, 3), result.stderr
        assert "no space left" in result.stderr, result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
        assert errors, result.stderr
        assert all(str(cache_dir) in line for line in errors), result.stderr
        assert_sound(cache_dir)
        assert cached(cache_dir) == {}

        filler.unlink()
        rerun = bed.run(*args, str(cache_dir), *big.refs)
        assert rerun.returncode == 0, rerun.stderr
        assert_sound(cache_dir)
        assert cached(cache_dir) == expected_entries(bed, "big")


# 5. A flipped byte


def test_a_flipped_byte_fails_one_image_and_is_repaired(bed: Bed) -> None:
    bed.cache_img("alpha", "delta")
    delta = bed.images["delta"]
    with ImageCache(bed.cache_dir).reading() as reader:
        entry = reader.find(parse_image_ref(delta.tag_ref).canonical)
        assert entry is not None
        manifest = reader.read_json(entry.descriptor.digest)
    damaged = manifest["layers"][-1]["digest"]  # delta's own last layer, in no other image
    path = bed.cache_dir / "blobs" / "sha256" / damaged.removeprefix("sha256:")
    content = bytearray(path.read_bytes())
    content[len(content) // 2] ^= 0x01
    path.write_bytes(bytes(content))

    code, stdout = verify(bed.cache_dir)
    assert code == 1
    assert damaged in stdout, stdout

    bed.forget_images()
    args = ("load-img", "--cache-dir", str(bed.cache_dir), *bed.refs("alpha", "delta"))
    loaded = bed.run(*args)
    assert loaded.returncode == 3, loaded.stderr
    assert damaged in loaded.stderr, loaded.stderr
    assert bed.state() == bed.expected("alpha"), bed.state().describe()  # no partial delta

    images.pull(bed.client, delta)  # repair copies the image again from Docker
    repaired = run(
        "cache", "verify", "--repair", "--cache-dir", str(bed.cache_dir),
        docker_host=bed.daemon.host,
    )  # fmt: skip
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert f"removed damaged blob {damaged}" in repaired.stdout, repaired.stdout
    assert_sound(bed.cache_dir)
    assert cached(bed.cache_dir) == expected_entries(bed, "alpha", "delta")

    bed.forget_images()
    rerun = bed.run(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert bed.state() == bed.expected("alpha", "delta")


# 6. Docker down


def test_docker_down(bed: Bed) -> None:
    bed.cache_img("alpha")
    host = bed.daemon.host
    bed.daemon.stop()
    unreachable = f"Error: couldn't reach Docker at {host}"

    for args in (
        ("cache-img", "--cache-dir", str(bed.cache_dir), *bed.refs("alpha", "delta")),
        ("load-img", "--cache-dir", str(bed.cache_dir), *bed.refs("alpha")),
    ):
        result = bed.run(*args)
        assert result.returncode == 1, result.stderr
        assert result.stderr.startswith(unreachable), result.stderr
        assert len(result.stderr.splitlines()) == 1, result.stderr
    assert_sound(bed.cache_dir)

    # Everything already cached: nothing to ask Docker.
    result = bed.run("cache-img", "--cache-dir", str(bed.cache_dir), *bed.refs("alpha"))
    assert result.returncode == 0, result.stderr
    assert_sound(bed.cache_dir)

    bed.daemon.start()
    rerun = bed.run("cache-img", "--cache-dir", str(bed.cache_dir), *bed.refs("alpha", "delta"))
    assert rerun.returncode == 0, rerun.stderr
    assert cached(bed.cache_dir) == expected_entries(bed, "alpha", "delta")
    assert bed.state() == bed.expected("alpha", "delta", "gamma", "big")


# 7. Two writers at once


def test_two_cache_img_runs_at_once(bed: Bed) -> None:
    args = ("cache-img", "--cache-dir", str(bed.cache_dir), *bed.refs(*STORED))
    before = bed.state()
    bed.cache_dir.mkdir()
    # Hold the lock until both are waiting for it, so that they really run at the same time.
    lock = os.open(bed.cache_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        runs = [bed.start(*args), bed.start(*args)]
        wait_for(lambda: all("waiting up to" in r.stderr for r in runs), 60, "both to wait")
    finally:
        os.close(lock)
    codes = [r.wait(timeout=120) for r in runs]
    assert codes == [0, 0], [r.stderr for r in runs]
    # Writers share the cache (each blob written to a temporary of its own, index.json
    # replaced under the commit lock): both may copy, and the first to start finds none cached.
    new = sorted(int(re.findall(r"\((\d+) new\)", r.stderr)[-1]) for r in runs)
    assert new[-1] == len(expected_entries(bed, *STORED)), [r.stderr for r in runs]

    assert_sound(bed.cache_dir)
    assert cached(bed.cache_dir) == expected_entries(bed, *STORED)
    index = (bed.cache_dir / "index.json").read_text()
    assert index.count('"digest"') == len(expected_entries(bed, *STORED))
    # Each blob once, every one of them used: the second run stored nothing.
    with ImageCache(bed.cache_dir).reading() as reader:
        used = {d.digest for image in reader.images() for d in reader.referenced_blobs(image)}
    assert {f"sha256:{p.name}" for p in blob_files(bed.cache_dir)} == used
    assert bed.state() == before


# 8. SIGTERM


def test_sigterm_during_cache_img(bed: Bed) -> None:
    before = bed.state()
    args = ("cache-img", "--cache-dir", str(bed.cache_dir), *bed.refs(*STORED))
    started = bed.start(*args)
    blobs = bed.cache_dir / "blobs" / "sha256"
    wait_for(
        lambda: (
            (blobs.is_dir() and any(p.name.startswith(".tmp-") for p in blobs.iterdir()))
            or started.proc.poll() is not None
        ),
        60,
        "a blob being written",
        interval=0.001,
    )
    assert started.proc.poll() is None, "cache-img finished before a blob was seen being written"
    signalled = time.monotonic()
    started.signal(signal.SIGTERM)
    code = started.wait(timeout=PROMPT_EXIT)
    assert code != 0, started.stderr
    assert time.monotonic() - signalled < PROMPT_EXIT
    assert_sound(bed.cache_dir)  # unwound: the temporary is gone already
    assert bed.state() == before

    rerun = bed.run(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert_sound(bed.cache_dir)
    assert cached(bed.cache_dir) == expected_entries(bed, *STORED)
    assert bed.state() == before


@pytest.mark.parametrize("moment", ["loading", "docker-stopped"])
def test_sigterm_during_load_img(bed: Bed, moment: str) -> None:
    bed.cache_img(*STORED)
    bed.forget_images()
    before, after = bed.state(), bed.expected(*STORED)
    first_pid = bed.daemon.pid
    args = ("load-img", "--cache-dir", str(bed.cache_dir), *bed.refs(*STORED))
    started = bed.start(*args)
    if moment == "loading":
        wait_for(lambda: "loading 1/" in started.stderr, 60, "the first load to start")
    else:
        # Right after the checkpoint dockerd-stopped: the daemon forklift-boot stopped is gone.
        wait_for(lambda: process_gone(first_pid), 60, "forklift-boot to stop dockerd")
    signalled = time.monotonic()
    started.signal(signal.SIGTERM)
    code = started.wait(timeout=PROMPT_EXIT)
    assert code != 0, started.stderr
    assert time.monotonic() - signalled < PROMPT_EXIT
    wait_until_answering(bed.daemon, WATCHDOG_TIMEOUT)
    assert_between(bed.state(), before, after)
    if moment == "docker-stopped":
        assert bed.daemon.pid != first_pid

    rerun = bed.run(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert bed.state() == after
    assert refstore_temporaries(bed.daemon) == []
    assert_sound(bed.cache_dir)
