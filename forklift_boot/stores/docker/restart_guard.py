"""A watchdog that starts Docker again if forklift-boot dies while Docker is stopped.

forklift-boot starts it (``python -m forklift_boot.stores.docker.restart_guard``) before
stopping dockerd and keeps a pipe to its standard input open. On ``done`` it exits; on end of
input without ``done`` (forklift-boot was killed: the kernel closed the pipe) it starts Docker the
way the spec on the first line says, unless Docker already runs. ``stopping <pid>`` says that
dockerd was asked to stop: a dockerd that is still shutting down is waited for first, since it
would look running and then be gone. Nothing here may depend on forklift-boot's state.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import psutil

STOP_TIMEOUT = 90.0  # as long as forklift-boot gives dockerd to stop


def wait_exited(pid: int, timeout: float) -> None:
    """Until the process has exited (a zombie has), or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.1)


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
    stopping: tuple[int, float] | None = None
    for line in sys.stdin:
        words = line.split()
        if words == ["done"]:
            return 0
        if len(words) == 2 and words[0] == "stopping" and words[1].isdigit():
            stopping = (int(words[1]), time.monotonic() + STOP_TIMEOUT)
    if stopping is not None:
        pid, deadline = stopping
        wait_exited(pid, deadline - time.monotonic())
    start_docker(spec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
