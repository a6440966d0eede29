"""Running and timing the benches' steps, and writing their tables (bench/round_trip.py and
bench/containerd_stores.py).

Each step runs its commands under GNU time (CPU, peak RSS, bytes written) from a cold page cache
(``drop_caches``), with the CPU time and bytes written of the daemon that does the work (its whole
process tree) and the host's other busy CPU time, and keeps the median of ``--runs`` runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import psutil

from bench import image_set
from bench.image_set import MB

TIME = "/usr/bin/time"  # GNU time (Debian package time)


class StepError(RuntimeError):
    pass


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]
    stdin: Path | None = None
    stdout: Path | None = None  # None: /dev/null


@dataclass
class Measurement:
    section: str
    name: str
    seconds: float
    client_cpu: float  # user + system of the commands run (GNU time), their children included
    daemon_cpu: float  # user + system of the daemon's tree (dockerd, docker-untar, unpigz ...)
    other_cpu: float  # the host's busy CPU minus both: other work on the machine, kernel threads
    peak_rss: int  # bytes, the largest of the commands' peak RSS (GNU time %M)
    written: int  # bytes the commands and the daemon wrote into files (kernel I/O accounting)
    disk_read: int  # bytes read/written on the device of the work directory (diskstats):
    disk_written: int  # other work on the machine counts here too
    output_bytes: int | None = None
    runs: list[float] = field(default_factory=list)
    # Bytes the commands (GNU time %I) and the daemon's tree (/proc/PID/io read_bytes) read from
    # storage: after drop_caches, every byte they needed and the page cache lacked.
    client_read: int = 0
    daemon_read: int = 0
    client_written: int = 0  # the commands' share of ``written`` (GNU time %O)
    # The engine's data root when the bench gives it a block device of its own (a loop device):
    # the bytes read from it and written to it, by anyone (diskstats; only the bench uses it).
    root_read: int | None = None
    root_written: int | None = None
    load_average: float = 0.0  # 1-minute load average as the run started


class HasPid(Protocol):
    @property
    def pid(self) -> int: ...


class Bench(Protocol):
    """What :func:`measure` needs from a bench's context."""

    @property
    def daemon(self) -> HasPid:
        """The process whose tree does the daemon side of the work (dockerd, containerd)."""

    @property
    def daemon_name(self) -> str: ...

    @property
    def env(self) -> dict[str, str]: ...

    @property
    def device(self) -> str | None: ...

    @property
    def log_path(self) -> Path: ...

    @property
    def runs(self) -> int: ...

    @property
    def results(self) -> list[Measurement]: ...


def _root_device(ctx: Bench) -> str | None:
    """The block device holding the engine's data root, if the bench gave it one of its own."""
    device = getattr(ctx, "data_root_device", None)
    return device if isinstance(device, str) else None


# Running and measuring


@dataclass(frozen=True)
class Usage:
    cpu: float  # user + system seconds of the command and the children it waited for
    peak_rss: int  # bytes
    written: int  # bytes it caused to be written to storage (ru_oublock, 512-byte units)
    read: int = 0  # bytes it read from storage (ru_inblock, 512-byte units): page cache misses


def spawn(command: Command, env: dict[str, str], log_path: Path) -> Usage:
    """Runs one command to its end under GNU time, which reports its CPU time and peak RSS.

    Not os.wait4 on our own child: a child spawned from this process inherits this
    interpreter's high-water RSS at exec, so every ru_maxrss would read at least ours.
    """
    usage_path = log_path.with_name("time.out")
    argv = (TIME, "-f", "%U %S %M %O %I", "-o", str(usage_path), "--", *command.argv)
    write = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, str(command.stdin or os.devnull), os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(command.stdout or os.devnull), write, 0o644),
        (os.POSIX_SPAWN_OPEN, 2, str(log_path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
    ]
    with log_path.open("a") as log:
        log.write(f"\n$ {' '.join(command.argv)}\n")
    # Its own process group: on Ctrl-C or SIGTERM we stop the command and all its children.
    pid = os.posix_spawn(argv[0], list(argv), env, file_actions=actions, setpgroup=0)
    try:
        _, status = os.waitpid(pid, 0)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        raise
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise StepError(f"`{' '.join(command.argv)}` exited {code}:\n{tail(log_path)}")
    user, system, rss_kib, blocks_out, blocks_in = usage_path.read_text().split()[-5:]
    return Usage(
        float(user) + float(system),
        int(rss_kib) * 1024,
        int(blocks_out) * 512,
        int(blocks_in) * 512,
    )


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


@dataclass(frozen=True)
class TreeUsage:
    cpu: float = 0.0
    read: int = 0
    written: int = 0


def tree_usage(pid: int) -> TreeUsage:
    """CPU seconds and bytes read and written by a process and its descendants, reaped ones
    included (dockerd runs containerd, docker-untar and unpigz as children; the kernel adds a
    reaped child's counts to its parent's)."""
    try:
        process = psutil.Process(pid)
        processes = [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return TreeUsage()
    cpu, read, written = 0.0, 0, 0
    for proc in processes:
        with contextlib.suppress(psutil.NoSuchProcess, OSError):
            times = proc.cpu_times()
            cpu += times.user + times.system + times.children_user + times.children_system
            counts = _io(proc.pid)
            read += counts.get("read_bytes", 0)
            written += counts.get("write_bytes", 0)
    return TreeUsage(cpu, read, written)


def _io(pid: int) -> dict[str, int]:
    """/proc/PID/io, which counts a process's reaped children too.

    ``write_bytes``: bytes written into files, counted when the pages are dirtied. Gross, like
    GNU time's %O for the commands: dockerd's staged archive counts although it is deleted after
    the load, often before this 23 GiB machine writes it back; a device with little RAM (a
    Raspberry Pi) writes it to the card. ``read_bytes``: bytes the block layer read for it, so
    page cache hits are free: after drop_caches, what it read from disk that nobody had read
    (or written) since.
    """
    counts = {}
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("read_bytes", "write_bytes"):
            counts[key] = int(value)
    return counts


def _host_busy() -> float:
    times = psutil.cpu_times()
    return float(times.user + times.nice + times.system + times.irq + times.softirq)


def _disk(device: str | None) -> tuple[int, int]:
    if device is None:
        return 0, 0
    counters = psutil.disk_io_counters(perdisk=True).get(device)
    return (counters.read_bytes, counters.write_bytes) if counters else (0, 0)


def measure(
    ctx: Bench,
    section: str,
    name: str,
    commands: Sequence[Command] | Callable[[], Sequence[Command]],
    *,
    output: Path | None = None,
    setup: Callable[[], None] | None = None,
    check: Callable[[], None] | None = None,
) -> Measurement:
    """Runs the step ``ctx.runs`` times, each from a cold page cache; keeps the median run.

    ``setup`` runs (untimed) before each run, ``check`` after it (untimed). ``output`` is what
    the step leaves on disk: it is removed before each run and measured after.
    """
    taken: list[Measurement] = []
    for _ in range(ctx.runs):
        if output is not None:
            remove(output)
        if setup is not None:
            setup()
        steps = commands() if callable(commands) else commands
        drop_caches()
        root_device = _root_device(ctx)
        load_average = os.getloadavg()[0]
        daemon_before, busy_before = tree_usage(ctx.daemon.pid), _host_busy()
        read_before, written_before = _disk(ctx.device)
        root_before = _disk(root_device)
        cpu, rss, written, read = 0.0, 0, 0, 0
        start = time.perf_counter()
        for command in steps:
            usage = spawn(command, ctx.env, ctx.log_path)
            cpu += usage.cpu
            rss = max(rss, usage.peak_rss)
            written += usage.written
            read += usage.read
        os.sync()
        seconds = time.perf_counter() - start
        daemon_after = tree_usage(ctx.daemon.pid)
        daemon_cpu = daemon_after.cpu - daemon_before.cpu
        busy = _host_busy() - busy_before
        read_after, written_after = _disk(ctx.device)
        root_after = _disk(root_device)
        if check is not None:
            check()
        taken.append(
            Measurement(
                section,
                name,
                seconds,
                client_cpu=cpu,
                daemon_cpu=daemon_cpu,
                other_cpu=max(busy - cpu - daemon_cpu, 0.0),
                peak_rss=rss,
                written=written + daemon_after.written - daemon_before.written,
                disk_read=read_after - read_before,
                disk_written=written_after - written_before,
                output_bytes=tree_size(output) if output is not None else None,
                client_read=read,
                daemon_read=daemon_after.read - daemon_before.read,
                client_written=written,
                root_read=root_after[0] - root_before[0] if root_device else None,
                root_written=root_after[1] - root_before[1] if root_device else None,
                load_average=load_average,
            )
        )
    chosen = sorted(taken, key=lambda m: m.seconds)[(len(taken) - 1) // 2]
    chosen.runs = [m.seconds for m in taken]
    ctx.results.append(chosen)
    print(
        f"  {section:<12} {name:<58} {chosen.seconds:7.2f} s  "
        f"(cpu {chosen.client_cpu:.1f} s, {ctx.daemon_name} {chosen.daemon_cpu:.1f} s, "
        f"others {chosen.other_cpu:.1f} s, read {read_bytes(chosen) / MB:.0f} MB, "
        f"written {chosen.written / MB:.0f} MB, rss {chosen.peak_rss / MB:.0f} MB"
        + (f", root read {chosen.root_read / MB:.0f} MB" if chosen.root_read is not None else "")
        + ")",
        file=sys.stderr,
        flush=True,
    )
    return chosen


def tree_size(path: Path) -> int:
    """Apparent bytes of a file, or of every file under a directory."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def check_report(path: Path, expected: str, count: int) -> Callable[[], None]:
    def check() -> None:
        report = json.loads(path.read_text())
        statuses = [image["status"] for image in report["images"]]
        if statuses.count(expected) != count:
            raise StepError(f"forklift-boot reported {statuses}, expected {count} x {expected}")

    return check


# A Raspberry Pi 4 on an SD card: an estimate from the counters, not a measurement


@dataclass(frozen=True)
class PiModel:
    """What the estimate assumes (docs/benchmarks.md says where each number comes from)."""

    read_mb_s: float = 40.0  # SD card reads (the Pi 4's SD bus tops out near 50 MB/s)
    write_mb_s: float = 20.0  # SD card writes: between A1/A2's 10 MB/s floor and good cards' 45
    core_ratio: float = 3.0  # seconds on one Pi 4 core (Cortex-A72, 1.5 GHz) per second here
    cores: int = 4


PI = PiModel()


def read_bytes(m: Measurement) -> int:
    """What the step read from storage: the commands' and the daemon's page cache misses."""
    return m.client_read + m.daemon_read


def pi_estimate(m: Measurement, model: PiModel = PI) -> tuple[float, float, float]:
    """(card seconds, CPU seconds, estimate) on a Pi 4 for the bytes and CPU this step took.

    The card serves one request at a time: its seconds are reads ÷ read speed + writes ÷ write
    speed. The CPU work is this VM's CPU-s x ``core_ratio``, spread over as many cores as it
    was here (CPU-s ÷ s, at most the Pi's 4). The estimate is the larger of the two: it assumes
    each overlaps the other fully, so it is a lower bound when neither dominates.
    """
    card = read_bytes(m) / (model.read_mb_s * MB) + m.written / (model.write_mb_s * MB)
    cpu = m.client_cpu + m.daemon_cpu
    spread = min(max(cpu / m.seconds, 1.0), float(model.cores)) if m.seconds > 0 else 1.0
    cpu_seconds = cpu * model.core_ratio / spread
    return card, cpu_seconds, max(card, cpu_seconds)


# Reporting


def mb(n: float) -> str:
    return f"{n / MB:,.1f}"


class Table:
    def __init__(self, title: str, header: Sequence[str]) -> None:
        self.lines = [f"### {title}", "", "| " + " | ".join(header) + " |"]
        self.lines.append("|" + "|".join(["---", *["---:"] * (len(header) - 1)]) + "|")

    def row(self, *cells: object) -> None:
        self.lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def seconds_text(m: Measurement) -> str:
    if len(m.runs) > 1:
        return f"{m.seconds:.2f} ({'/'.join(f'{s:.2f}' for s in m.runs)})"
    return f"{m.seconds:.2f}"


# The machine


def device_of(path: Path) -> str | None:
    """The block device (``vda``, ``nvme0n1p2``) holding ``path``, for its diskstats."""
    dev = path.stat().st_dev
    link = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    return link.resolve().name if link.exists() else None


def first_line(argv: Sequence[str]) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    except OSError as err:
        return f"({err})"
    return (result.stdout or result.stderr).strip().splitlines()[0] if result else ""


# Main


def terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the clean-up below


@contextlib.contextmanager
def scratch(parent: Path | None) -> Iterator[Path]:
    work = image_set.scratch_dir(parent)
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)
