"""Stopping and starting the Docker daemon around an offline edit of its files, crash-safely.

Two ways, as docs/architecture.md, decision 5 says: through systemd (``docker.socket`` and
``docker.service``) when systemd manages Docker, else by restarting the dockerd process found
behind the socket with its own command line, as in an OS-image build or a test. Either way a
watchdog (``restart_guard``) starts Docker again if forklift-boot dies while Docker is down.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import psutil

from forklift_boot.errors import EngineError

log = logging.getLogger(__name__)

STOP_TIMEOUT = 90.0  # dockerd stops containers first; each may take its 10 s grace period
DOCKER_UNITS = ("docker.socket", "docker.service")


@dataclass(frozen=True)
class DockerDaemon:
    """The dockerd process behind a socket, as found on this machine."""

    pid: int
    argv: tuple[str, ...]
    cwd: str
    environ: dict[str, str]
    log_path: str | None  # where its output went, to send the restarted daemon's there too
    systemd_unit: str | None  # "docker.service" when systemd started it


def find_daemon(docker_host: str) -> DockerDaemon:
    """The local dockerd listening on ``docker_host`` (``unix://PATH``)."""
    if not docker_host.startswith("unix://"):
        raise EngineError(
            f"Docker at {docker_host} is not on this machine; digest references can only be "
            "recorded for a local daemon"
        )
    socket = os.path.realpath(docker_host.removeprefix("unix://"))
    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.info["name"] != "dockerd":
            continue
        argv = proc.info["cmdline"] or []
        if socket in {os.path.realpath(h.removeprefix("unix://")) for h in _hosts(argv)}:
            return _describe(proc, argv)
        if "fd://" in _hosts(argv) and _systemd_unit(proc.pid) and socket == "/run/docker.sock":
            return _describe(proc, argv)
    raise EngineError(
        f"couldn't find the dockerd process serving {docker_host} on this machine "
        "(is forklift-boot running as root, in the same PID namespace as Docker?)"
    )


class UnitControl(Protocol):
    """Stops and starts systemd units and waits for them (forklift_boot.systemd)."""

    def stop(self, names: Sequence[str], timeout: float) -> None: ...

    def start(self, names: Sequence[str], timeout: float) -> None: ...


def restart_around(
    daemon: DockerDaemon,
    edit: Callable[[], None],
    wait_ready: Callable[[], None],
    *,
    units: UnitControl | None = None,
    checkpoint: Callable[[str], None] = lambda name: None,
) -> None:
    """Stops dockerd, runs ``edit``, starts dockerd again and waits until it answers.

    A dockerd that systemd runs is stopped and started through ``units`` (``docker.socket``
    too, or a client's connection would start it again too early). Docker is started again
    whatever happens: by this function when ``edit`` fails, and by the watchdog when
    forklift-boot itself is killed.
    """
    if daemon.systemd_unit and units is None:
        raise EngineError("systemd runs Docker, but forklift-boot cannot reach systemd")
    spec: dict[str, object]
    if daemon.systemd_unit:
        spec = {"systemd_units": list(DOCKER_UNITS)}
    else:
        spec = {
            "argv": list(daemon.argv),
            "cwd": daemon.cwd,
            "environ": daemon.environ,
            "log_path": daemon.log_path,
        }
    with _Watchdog(spec) as watchdog:
        log.info("stopping Docker (pid %d) to record digest references", daemon.pid)
        watchdog.stopping(daemon.pid)
        if units is not None and daemon.systemd_unit:
            units.stop(DOCKER_UNITS, STOP_TIMEOUT)
        else:
            _stop(daemon)
        checkpoint("dockerd-stopped")
        try:
            edit()
            checkpoint("references-written")
        finally:
            if units is not None and daemon.systemd_unit:
                units.start(DOCKER_UNITS, STOP_TIMEOUT)
            else:
                _start(daemon)
            checkpoint("dockerd-started")
            wait_ready()
        watchdog.release()
    log.info("Docker is running again")


def _stop(daemon: DockerDaemon) -> None:
    try:
        proc = psutil.Process(daemon.pid)
        proc.terminate()
        _wait_exited(proc, STOP_TIMEOUT)
    except psutil.NoSuchProcess:
        return
    except psutil.TimeoutExpired as err:
        raise EngineError(
            f"couldn't stop dockerd (pid {daemon.pid}) within {STOP_TIMEOUT:.0f} s; "
            "no reference was changed"
        ) from err


def _wait_exited(proc: psutil.Process, timeout: float) -> None:
    """Until the process has exited, zombie or not: a dockerd that is not our child stays a
    zombie until its own parent reaps it, and psutil's ``wait()`` waits for that too."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            proc.wait(timeout=0.1)
            return
        except psutil.TimeoutExpired:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return
            if time.monotonic() > deadline:
                raise


def _start(daemon: DockerDaemon) -> None:
    log_path = daemon.log_path
    with open(log_path, "ab") if log_path else open(os.devnull, "wb") as output:
        subprocess.Popen(
            list(daemon.argv),
            cwd=daemon.cwd or "/",
            env=daemon.environ,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


class _Watchdog:
    """``python -m forklift_boot.stores.docker.restart_guard``, fed by a pipe that dies with us."""

    def __init__(self, spec: dict[str, object]) -> None:
        self.spec = spec
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> _Watchdog:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "forklift_boot.stores.docker.restart_guard"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,  # a terminal's Ctrl-C must not reach it
        )
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(self.spec) + "\n")
        self.proc.stdin.flush()
        if self.proc.stdout.readline().strip() != "ready":
            raise EngineError("couldn't start the watchdog that restarts Docker; nothing changed")
        return self

    def stopping(self, pid: int) -> None:
        """dockerd is about to be stopped: if we die, the watchdog waits for it to exit."""
        if self.proc is not None and self.proc.stdin is not None:
            self.proc.stdin.write(f"stopping {pid}\n")
            self.proc.stdin.flush()

    def release(self) -> None:
        """Docker runs again: the watchdog may go."""
        if self.proc is not None and self.proc.stdin is not None:
            self.proc.stdin.write("done\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=30)

    def __exit__(self, *exc: object) -> None:
        # On an exception the pipe closes without "done": the watchdog makes sure Docker runs.
        if self.proc is not None and self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def _describe(proc: psutil.Process, argv: list[str]) -> DockerDaemon:
    try:
        environ = proc.environ()
        cwd = proc.cwd()
    except psutil.AccessDenied as err:
        raise EngineError(
            "couldn't read the dockerd process's command line and environment; run as root"
        ) from err
    return DockerDaemon(
        pid=proc.pid,
        argv=tuple(argv),
        cwd=cwd,
        environ=environ,
        log_path=_output_file(proc.pid),
        systemd_unit=_systemd_unit(proc.pid),
    )


def _hosts(argv: list[str]) -> list[str]:
    """dockerd's ``-H``/``--host`` values; its default socket when there are none."""
    hosts = []
    for index, arg in enumerate(argv):
        if arg in ("-H", "--host") and index + 1 < len(argv):
            hosts.append(argv[index + 1])
        elif arg.startswith(("--host=", "-H=")):
            hosts.append(arg.split("=", 1)[1])
        elif arg.startswith("-H") and len(arg) > 2:
            hosts.append(arg[2:])
    return hosts or ["unix:///var/run/docker.sock"]


def _output_file(pid: int) -> str | None:
    try:
        target = os.readlink(f"/proc/{pid}/fd/1")
    except OSError:
        return None
    return target if target.startswith("/") and Path(target).is_file() else None


def _systemd_unit(pid: int) -> str | None:
    try:
        cgroups = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return None
    for line in cgroups.splitlines():
        unit = line.rsplit("/", 1)[-1]
        if unit.endswith(".service"):
            return unit
    return None


def wait_until(ready: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise EngineError(f"{what} did not answer within {timeout:.0f} s")
        time.sleep(0.1)
