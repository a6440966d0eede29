"""Times `forklift-boot ls-img` over the pallet-standard fixture (run by hand, not in CI).

    .venv/pypi/bin/python -m bench.ls_img [--runs 20]

Run from the repository root. The pallet is found as the tests find it (tests/pallet_standard.py;
the README's testing paragraph says where it looks).

Prints the median and spread of in-process runs (parsing, merging, compose loading) and of
whole command runs (interpreter start-up included), next to `python -c pass` as the floor.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import subprocess
import sys
import time

from forklift_boot import cli
from tests import pallet_standard


def _time(run: object, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return times


def _report(name: str, times: list[float], floor: float | None = None) -> None:
    median = statistics.median(times)
    ratio = f", {median / floor:.1f}x the interpreter floor" if floor else ""
    print(
        f"{name:<34} median {median * 1000:7.1f} ms  (min {min(times) * 1000:.1f}, "
        f"max {max(times) * 1000:.1f}, n={len(times)}){ratio}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    try:
        pallet = pallet_standard.locate()
    except pallet_standard.PalletStandardUnavailable as error:
        sys.exit(f"error: {error}")
    argv = ["ls-img", "--pallet", str(pallet), "--workspace", "/nonexistent"]

    def in_process() -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            assert cli.main(argv, env={}) == 0

    def whole_command() -> None:
        subprocess.run(
            [sys.executable, "-m", "forklift_boot", *argv], check=True, stdout=subprocess.DEVNULL
        )

    def interpreter() -> None:
        subprocess.run([sys.executable, "-c", "pass"], check=True)

    floor = statistics.median(_time(interpreter, args.runs))
    _report("python -c pass (floor)", [floor])
    _report("ls-img in process", _time(in_process, args.runs))
    _report("forklift-boot ls-img (command)", _time(whole_command, args.runs), floor)


if __name__ == "__main__":
    main()
