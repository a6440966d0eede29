"""A watchdog that starts Docker again if forklift-boot dies while Docker is stopped.

forklift-boot starts it (``python -m forklift_boot.restart_guard``) before stopping dockerd and
keeps a pipe to its standard input open. On ``done`` it exits; on end of input without ``done``
(forklift-boot was killed: the kernel closed the pipe) it starts Docker the way the spec on the
first line says, unless Docker already runs. Nothing here may depend on forklift-boot's state.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import psutil


def is_running(argv: list[str]) -> bool:
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["cmdline"] == argv and proc.info["status"] != psutil.STATUS_ZOMBIE:
            return True
    return False


def start_docker(spec: dict[str, Any]) -> None:
    if "systemd_units" in spec:
        subprocess.run(["systemctl", "start", *spec["systemd_units"]], check=False)
        return
    argv = spec["argv"]
    if is_running(argv):
        return
    log_path = spec.get("log_path")
    output = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    subprocess.Popen(
        argv,
        cwd=spec.get("cwd") or "/",
        env=spec.get("environ"),
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def main() -> int:
    spec = json.loads(sys.stdin.readline())
    # Signal readiness, so that forklift-boot stops Docker only once the guard is watching.
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "done":
            return 0
    start_docker(spec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
