"""Tools for fault tests: forklift-boot as a subprocess that may be killed, Docker's image set
as one comparable value, a tiny tmpfs, and an strace log of a run's fsyncs and renames.

forklift-boot always runs as its own process (``python -m forklift_boot``), so that SIGKILL and
SIGTERM hit it and not pytest.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import docker
from docker.errors import ImageNotFound, NotFound

from tests.testbed import images
from tests.testbed.dockerd import DockerDaemon, _ping

# Settings that would change what a run does or how it logs, and must come from the test only.
_CLEARED_ENV = ("FORKLIFT_BOOT_CRASH_AT", "FORKLIFT_BOOT_CACHE_DIR", "JOURNAL_STREAM")
TEMP_MARKER = ".tmp-"


def product_env(docker_host: str, crash_at: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _CLEARED_ENV}
    env["DOCKER_HOST"] = docker_host
    if crash_at is not None:
        env["FORKLIFT_BOOT_CRASH_AT"] = crash_at
    return env


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "forklift_boot", *args]


def run(
    *args: str, docker_host: str, crash_at: str | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """``forklift-boot ARGS`` to the end; its exit code, stdout and stderr."""
    return subprocess.run(
        command(*args),
        env=product_env(docker_host, crash_at),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class Started:
    """A running forklift-boot; its stderr goes to a file, readable while it runs."""

    def __init__(self, *args: str, docker_host: str, log_dir: Path) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix="stderr-", dir=log_dir)
        os.close(handle)
        self.stderr_path = Path(name)
        with self.stderr_path.open("wb") as stderr:
            self.proc = subprocess.Popen(
                command(*args),
                env=product_env(docker_host),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout=timeout)

    def kill(self) -> int:
        """SIGKILL unless it finished already; the exit code (-9 when killed)."""
        self.signal(signal.SIGKILL)
        return self.wait()


def wait_for(
    condition: Callable[[], object], timeout: float, what: str, interval: float = 0.005
) -> None:
    """Polls ``condition()`` until it is true; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# Docker's image set


@dataclass(frozen=True)
class DockerState:
    """Which images Docker has (by ID) and what each ref of interest resolves to."""

    image_ids: frozenset[str]
    resolves: tuple[tuple[str, str | None], ...]  # (ref, image ID or None), sorted by ref

    @classmethod
    def expected(
        cls, present: Iterable[tuple[str, Iterable[str]]], refs: Iterable[str]
    ) -> DockerState:
        """The state where exactly ``present`` (image ID, its refs) are there and resolve."""
        owner = {ref: image_id for image_id, image_refs in present for ref in image_refs}
        return cls(
            frozenset(owner.values()),
            tuple(sorted((ref, owner.get(ref)) for ref in set(refs))),
        )

    def describe(self) -> str:
        lines = [f"images: {sorted(self.image_ids)}"]
        lines += [f"  {ref} -> {image_id}" for ref, image_id in self.resolves]
        return "\n".join(lines)


def docker_state(client: docker.DockerClient, refs: Iterable[str]) -> DockerState:
    ids = frozenset(client.api.images(quiet=True))
    resolves: list[tuple[str, str | None]] = []
    for ref in sorted(set(refs)):
        try:
            resolves.append((ref, str(images.inspect(client, ref)["Id"])))
        except (ImageNotFound, NotFound):
            resolves.append((ref, None))
    return DockerState(ids, tuple(resolves))


def remove_every_image(client: docker.DockerClient) -> None:
    """``docker rmi -f`` of every image by ID: its tags and digest references go with it."""
    for image_id in client.api.images(quiet=True):
        with contextlib.suppress(ImageNotFound, NotFound):
            client.api.remove_image(image_id, force=True)


def wait_until_answering(daemon: DockerDaemon, timeout: float) -> float:
    """Waits until the daemon (ours, or one that forklift-boot or its watchdog started) answers
    ``_ping``; returns the seconds it took."""
    started = time.monotonic()
    wait_for(
        lambda: daemon.is_running() and _ping(daemon.sock),
        timeout,
        f"Docker at {daemon.host} to run again",
        interval=0.05,
    )
    return time.monotonic() - started


def process_gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


# The cache on disk


def temporaries(cache_dir: Path) -> list[Path]:
    """Every file under the cache directory named as a temporary (``.tmp-`` in its name)."""
    if not cache_dir.exists():
        return []
    return sorted(p for p in cache_dir.rglob("*") if TEMP_MARKER in p.name)


def blob_files(cache_dir: Path) -> list[Path]:
    blobs = cache_dir / "blobs" / "sha256"
    return sorted(blobs.iterdir()) if blobs.is_dir() else []


# A tiny filesystem


@contextlib.contextmanager
def tmpfs(size: str) -> Iterator[Path]:
    """A fresh tmpfs of ``size`` (``2m``), mounted on a temp dir; unmounted afterwards."""
    mount_point = Path(tempfile.mkdtemp(prefix="fb-fs"))
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mount_point)],
            check=True,
            capture_output=True,
        )
        try:
            yield mount_point
        finally:
            if subprocess.run(["umount", str(mount_point)], check=False).returncode != 0:
                subprocess.run(["umount", "-l", str(mount_point)], check=False)
    finally:
        shutil.rmtree(mount_point, ignore_errors=True)


def fill(directory: Path, name: str, size: int) -> Path:
    """A file of ``size`` zero bytes, really allocated (tmpfs counts pages written)."""
    path = directory / name
    block = b"\0" * (1 << 20)
    with path.open("wb") as file:
        left = size
        while left > 0:
            left -= file.write(block[: min(left, len(block))])
    return path


# strace


@dataclass(frozen=True)
class Syscall:
    seq: int
    pid: int
    name: str
    args: str
    result: str

    def paths(self) -> list[str]:
        """The quoted strings among the arguments (paths, for the calls traced here)."""
        return [
            m.encode().decode("unicode_escape")
            for m in re.findall(r'"((?:[^"\\]|\\.)*)"', self.args)
        ]

    def fd_path(self) -> str | None:
        """With ``strace -y``: the path of the file descriptor argument (``fsync(5</a/b>)``)."""
        match = re.match(r"\d+<(.*)>", self.args)
        return match[1] if match else None

    @property
    def ok(self) -> bool:
        """The call succeeded (strace shows ``-1 ENOENT (...)`` or ``?`` otherwise)."""
        return not self.result.startswith(("-1", "?"))


_LINE = re.compile(r"^(\d+)\s+(.*)$")
_CALL = re.compile(r"^(\w+)\((.*)\)\s+=\s+(.*)$")
_UNFINISHED = " <unfinished ...>"
_RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)$")


def strace_command(trace_file: Path, syscalls: Sequence[str], argv: Sequence[str]) -> list[str]:
    """``strace -f -y`` with full-length strings (the default cuts them at 32 characters)."""
    return [
        "strace", "-f", "-y", "-qq", "-s", "4096", "-o", str(trace_file),
        "-e", f"trace={','.join(syscalls)}", "--", *argv,
    ]  # fmt: skip


def parse_strace(text: str) -> list[Syscall]:
    """``strace -f -o FILE`` output, unfinished/resumed pairs joined, in the order they ended."""
    calls: list[Syscall] = []
    pending: dict[int, str] = {}
    for line in text.splitlines():
        match = _LINE.match(line)
        if match is None:
            continue
        pid, rest = int(match[1]), match[2]
        if rest.endswith(_UNFINISHED):
            pending[pid] = rest.removesuffix(_UNFINISHED)
            continue
        resumed = _RESUMED.match(rest)
        if resumed is not None:
            rest = pending.pop(pid, f"{resumed[1]}(") + resumed[2]
        call = _CALL.match(rest)
        if call is not None:
            calls.append(Syscall(len(calls), pid, call[1], call[2], call[3]))
    return calls


def renames(calls: Iterable[Syscall]) -> list[tuple[int, str, str]]:
    """Successful rename, renameat, renameat2: (seq, old path, new path)."""
    found = []
    for call in calls:
        if call.name.startswith("rename") and call.ok:
            old, new = call.paths()[-2:]
            found.append((call.seq, old, new))
    return found


def fsyncs(calls: Iterable[Syscall]) -> list[tuple[int, str]]:
    """Successful fsync and fdatasync: (seq, path of the file descriptor)."""
    return [
        (call.seq, call.fd_path() or "")
        for call in calls
        if call.name in ("fsync", "fdatasync") and call.ok
    ]


def created(calls: Iterable[Syscall]) -> dict[str, Syscall]:
    """The last successful openat with O_CREAT of each path."""
    return {
        call.paths()[0]: call
        for call in calls
        if call.name == "openat" and "O_CREAT" in call.args and call.ok
    }
