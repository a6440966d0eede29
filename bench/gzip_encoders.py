"""Measures the gzip encoders cache-img can use, over one tar of real files (issue 12). By hand:

    .venv/pypi/bin/python -m bench.gzip_encoders [--size MB] [--runs N] [--work-dir DIR]
                                                 [--output FILE]

The corpus is a tar of files from this machine (shared libraries, the Python standard library,
docs and locales, C headers) with a quarter of its bytes from ``os.urandom``, as in
bench/image_set.py. It is written to ``--work-dir`` (default /dev/shm, a tmpfs: every run reads
it from memory, no disk, no cache to drop) and each encoder writes its output there too.

Each encoder runs in its own process under GNU time (``bench.measuring.spawn``), reading the
corpus on stdin and writing gzip on stdout: the forklift-boot ones through
``forklift_boot.archive.gzip_encoders`` (bench/gzip_encode.py, 1 MiB writes as cache-img does), the
programs also alone as a reference. For each: the median wall time of ``--runs`` runs, CPU
seconds (user + system, children included) per GB of input, the output ratio, the peak RSS of
the process tree (the sum of each process's high-water mark, sampled), whether the runs' outputs are
byte-identical, and a check that Python's gzip decodes the output back to the corpus and that
``gzip -t`` accepts it. The host's other busy CPU during the run is shown: the machine is shared.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import io
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench import image_set
from bench.image_set import MB, RANDOM_FILE_SIZE
from bench.measuring import Command, StepError, Table, spawn
from forklift_boot.archive.gzip_encoders import MAX_WORKERS, available_encoders

GB = 1000 * MB
CHUNK = 1 << 20  # what cache-img reads at a time (forklift_boot.cache.BUFFER_SIZE)
SAMPLE_SECONDS = 0.02

# (share of the corpus, host directories; none means os.urandom files), in tar order.
CORPUS = (
    (0.30, (sysconfig.get_config_var("LIBDIR") or "/usr/lib",)),
    (0.10, ("/usr/lib/python3.11", sysconfig.get_paths()["purelib"])),
    (0.10, ()),
    (0.15, ("/usr/share/doc", "/usr/share/locale")),
    (0.10, ("/usr/include",)),
    (0.15, ()),
    (0.10, ("/usr/share",)),
)


# The corpus


def build_corpus(path: Path, size: int) -> tuple[int, int]:
    """Writes the tar; returns its size and the bytes of random content in it."""
    random_bytes = 0
    seen: set[str] = set()
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for share, sources in CORPUS:
            budget = int(size * share)
            if not sources:
                for offset in range(0, budget, RANDOM_FILE_SIZE):
                    data = os.urandom(min(RANDOM_FILE_SIZE, budget - offset))
                    info = tarfile.TarInfo(f"random/{random_bytes // RANDOM_FILE_SIZE:04d}.bin")
                    info.size, info.mode, info.mtime = len(data), 0o644, image_set.MTIME
                    tar.addfile(info, io.BytesIO(data))
                    random_bytes += len(data)
                continue
            content = 0
            for file_path in _walk(sources):
                if content >= budget or file_path in seen:
                    continue
                seen.add(file_path)
                try:
                    info = tar.gettarinfo(file_path, arcname=file_path.lstrip("/"))
                except OSError:
                    continue
                if info.isreg() and content + info.size > budget:
                    continue
                added = image_set.add_host_file(tar, info, file_path)
                content += added or 0
    return path.stat().st_size, random_bytes


def _walk(sources: tuple[str, ...]) -> Iterator[str]:
    for source in sources:
        for root, dirs, names in os.walk(source):
            dirs.sort()
            for name in sorted(names):
                yield os.path.join(root, name)


# Measuring


@dataclass(frozen=True)
class Case:
    label: str
    level: int
    workers: int
    argv: tuple[str, ...]


@dataclass
class Result:
    case: Case
    seconds: float
    cpu: float
    tree_rss: int
    process_rss: int
    output_bytes: int
    other_cpu: float
    runs: list[float] = field(default_factory=list)
    deterministic: bool = True
    check: str = ""


class TreePeak:
    """Sums the high-water RSS (VmHWM) of each process below this one, ``time`` excluded:
    an upper bound of the tree's peak, since the processes' peaks need not coincide."""

    def __init__(self) -> None:
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreePeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def total(self) -> int:
        return sum(self.peaks.values())

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(SAMPLE_SECONDS):
            for proc in me.children(recursive=True):
                with contextlib.suppress(psutil.Error, OSError):
                    if proc.name() == "time":
                        continue
                    hwm = _vm_hwm(proc.pid)
                    self.peaks[proc.pid] = max(self.peaks.get(proc.pid, 0), hwm)


def _vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _busy() -> float:
    times = psutil.cpu_times()
    return float(times.user + times.nice + times.system + times.irq + times.softirq)


def run_case(case: Case, corpus: Path, out: Path, runs: int, log_path: Path) -> Result:
    taken: list[Result] = []
    digests: set[str] = set()
    for _ in range(runs):
        out.unlink(missing_ok=True)
        busy = _busy()
        start = time.perf_counter()
        with TreePeak() as peak:
            usage = spawn(Command(case.argv, stdin=corpus, stdout=out), dict(os.environ), log_path)
        seconds = time.perf_counter() - start
        other = max(_busy() - busy - usage.cpu, 0.0)
        digests.add(_sha256(out))
        taken.append(
            Result(
                case,
                seconds,
                usage.cpu,
                max(peak.total, usage.peak_rss),
                usage.peak_rss,
                out.stat().st_size,
                other,
            )
        )
    chosen = sorted(taken, key=lambda r: r.seconds)[(len(taken) - 1) // 2]
    chosen.runs = [r.seconds for r in taken]
    chosen.deterministic = len(digests) == 1
    chosen.check = check_output(out, corpus)
    return chosen


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_output(out: Path, corpus: Path) -> str:
    """'ok' when Python's gzip gives back the corpus byte for byte and ``gzip -t`` passes."""
    with gzip.open(out, "rb") as decoded, corpus.open("rb") as original:
        while True:
            expected = original.read(CHUNK)
            got = decoded.read(CHUNK)
            if got != expected:
                return "python gzip: differs"
            if not expected:
                break
    test = subprocess.run(["gzip", "-t", str(out)], capture_output=True, text=True, check=False)
    if test.returncode != 0:
        return f"gzip -t: {test.stderr.strip()}"
    return "ok"


def cases(python: str) -> list[Case]:
    cores = min(os.cpu_count() or 1, MAX_WORKERS)
    module = (python, "-m", "bench.gzip_encode")
    have = {choice.name for choice in available_encoders()}
    found: list[Case] = [
        Case("zlib, one stream, this thread", 1, 1, (*module, "zlib-stream", "1", "1")),
        Case(
            "zlib: cache-img's fallback, 1 MiB blocks", 1, cores, (*module, "zlib", "1", str(cores))
        ),
        Case("zlib: 1 MiB blocks in threads", 1, cores, (*module, "module:zlib", "1", str(cores))),
    ]
    if "isal" in have:
        isal = (*module, "module:isal.isal_zlib")
        found.append(Case("PyPI isal: blocks in threads", 2, 1, (*isal, "2", "1")))
        for level in (0, 1, 2, 3):
            found.append(
                Case("PyPI isal: blocks in threads", level, cores, (*isal, str(level), str(cores)))
            )
    if "igzip" in have:
        igzip = shutil.which("igzip") or "igzip"
        for level in (0, 1, 2, 3):
            found.append(
                Case("igzip: through a pipe", level, 1, (*module, "program:igzip", str(level), "1"))
            )
        for level in (1, 2):
            found.append(Case("igzip program alone", level, 1, (igzip, f"-{level}", "-n", "-c")))
        found.append(Case("igzip program alone, -T 2", 2, 2, (igzip, "-2", "-n", "-T2", "-c")))
    if "zlib-ng" in have:
        zlib_ng = (*module, "module:zlib_ng.zlib_ng")
        for level in (1, 2):
            found.append(
                Case(
                    "PyPI zlib-ng: blocks in threads",
                    level,
                    cores,
                    (*zlib_ng, str(level), str(cores)),
                )
            )
    if "pigz" in have:
        pigz = shutil.which("pigz") or "pigz"
        found.append(Case("pigz: through a pipe", 1, cores, (*module, "pigz", "1", str(cores))))
        found.append(Case("pigz program alone", 1, cores, (pigz, "-1", "-n", f"-p{cores}", "-c")))
    return found


def table(results: list[Result], corpus_bytes: int, random_bytes: int) -> str:
    gb = corpus_bytes / GB
    out = Table(
        f"gzip encoders over a {corpus_bytes / MB:,.0f} MB tar "
        f"({random_bytes / corpus_bytes:.0%} random), {os.cpu_count()} cores",
        (
            "encoder",
            "level",
            "threads",
            "CPU s/GB",
            "wall s/GB",
            "ratio",
            "peak RSS tree MB",
            "largest process MB",
            "deterministic",
            "check",
            "runs s",
            "others' CPU s",
        ),
    )
    for r in results:
        out.row(
            r.case.label,
            r.case.level,
            r.case.workers,
            f"{r.cpu / gb:.2f}",
            f"{r.seconds / gb:.2f}",
            f"{r.output_bytes / corpus_bytes:.4f}",
            f"{r.tree_rss / MB:.1f}",
            f"{r.process_rss / MB:.1f}",
            "yes" if r.deterministic else "no",
            r.check,
            "/".join(f"{s:.2f}" for s in r.runs),
            f"{r.other_cpu:.1f}",
        )
    return out.text()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=640, help="corpus MB (default 640)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work-dir", type=Path, default=Path("/dev/shm"))
    parser.add_argument("--output", type=Path, help="also write the table here")
    parser.add_argument(
        "--only", help="run only the cases whose label contains one of these (comma-separated)"
    )
    args = parser.parse_args(argv)
    work = image_set.scratch_dir(args.work_dir)
    try:
        corpus, out, log_path = work / "corpus.tar", work / "out.gz", work / "log"
        start = time.monotonic()
        corpus_bytes, random_bytes = build_corpus(corpus, args.size * MB)
        print(
            f"corpus: {corpus_bytes / MB:,.0f} MB, {random_bytes / corpus_bytes:.0%} random, "
            f"built in {time.monotonic() - start:.0f} s",
            file=sys.stderr,
        )
        results = []
        for case in cases(sys.executable):
            if args.only and not any(part in case.label for part in args.only.split(",")):
                continue
            try:
                result = run_case(case, corpus, out, args.runs, log_path)
            except StepError as err:
                print(f"  {case.label} level {case.level}: failed: {err}", file=sys.stderr)
                continue
            results.append(result)
            print(
                f"  {case.label:<40} level {case.level} x{case.workers}: "
                f"{result.seconds:6.2f} s, cpu {result.cpu:6.2f} s, "
                f"ratio {result.output_bytes / corpus_bytes:.4f}, "
                f"rss {result.tree_rss / MB:.0f} MB, {result.check}",
                file=sys.stderr,
                flush=True,
            )
        text = table(results, corpus_bytes, random_bytes)
        print(text)
        if args.output:
            args.output.write_text(text)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
