"""A booted systemd (Debian bookworm) in ``systemd-nspawn``, for system tests of the units.

docs/testbed.md says what it relies on. The rootfs comes from ``scripts/build-rootfs``
(cached, read-only); each :class:`BootedContainer` boots its own copy, so state written inside
survives :meth:`BootedContainer.reboot` (no ``--volatile``).

- The container shares the host's network namespace (no ``--private-network``): apt reaches the
  mirror and dockerd a loopback registry. The rootfs's ``/etc/docker/daemon.json`` turns
  iptables and the default bridge off, so its dockerd leaves the host's network alone.
- The host's PID 1 is not systemd: ``--register=no --keep-unit`` (no machined, no scope unit).
  nspawn then creates ``payload/`` and ``supervisor/`` cgroups below its own cgroup; each
  container runs in a cgroup of its own (``fb-ns-<id>``) so that containers of concurrent test
  sessions do not share them, and teardown removes it.
- Commands run inside through ``nsenter`` with a clean environment (the caller's
  ``DOCKER_HOST``, ``PYTHONPATH``, venv ``PATH`` ... must not leak into the container).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.testbed import leftovers

ART_MOUNT = "/srv/art"
"""Where the host's artefact dir (``art_dir``) appears inside, read-only."""

CONTAINER_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
    "SYSTEMD_PAGER": "",
    "SYSTEMD_COLORS": "0",
}

PREFIX = "fb-ns-"
DEFAULT_WORKDIR = Path("/var/tmp")

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_CGROUP_FS = Path("/sys/fs/cgroup")
_NSPAWN_RUN = Path("/run/systemd/nspawn")


class ContainerError(RuntimeError):
    """The container did not boot, did not stop, or is not running."""


class ContainerCommandError(subprocess.CalledProcessError):
    """A command inside the container failed; the message carries its output."""

    def __str__(self) -> str:
        parts = [super().__str__()]
        for name, text in (("stdout", self.stdout), ("stderr", self.stderr)):
            if text:
                parts.append(f"{name}:\n{_last_lines(str(text), 30)}")
        return "\n".join(parts)


def _last_lines(text: str, lines: int) -> str:
    # The console output has CRLF line ends and colour codes.
    return "\n".join(_ANSI.sub("", text.replace("\r", "")).splitlines()[-lines:])


def _cgroup_hierarchies() -> list[Path]:
    """Mount points of the hierarchies nspawn uses: name=systemd (v1) and/or the unified one."""
    found = []
    if (_CGROUP_FS / "cgroup.controllers").exists():  # pure cgroup v2
        return [_CGROUP_FS]
    if (_CGROUP_FS / "systemd" / "cgroup.procs").exists():
        found.append(_CGROUP_FS / "systemd")
    if (_CGROUP_FS / "unified" / "cgroup.procs").exists():
        found.append(_CGROUP_FS / "unified")
    return found


def _own_cgroup(hierarchy: Path) -> str:
    """This process's cgroup path in ``hierarchy`` (from /proc/self/cgroup)."""
    v2 = hierarchy.name == "unified" or hierarchy == _CGROUP_FS
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        num, controllers, path = line.split(":", 2)
        if (v2 and num == "0" and not controllers) or (not v2 and controllers == "name=systemd"):
            return path.lstrip("/")
    return ""


def _cgroup_procs(group: Path) -> list[int]:
    pids: list[int] = []
    for procs in group.rglob("cgroup.procs"):
        with contextlib.suppress(OSError, ValueError):
            pids += [int(p) for p in procs.read_text().split()]
    return pids


def _cgroups_of(machine: str) -> list[Path]:
    return [h / _own_cgroup(h) / machine for h in _cgroup_hierarchies()]


def _remove_nspawn_leftovers(machine: str) -> None:
    """The container's empty cgroups (payload/, supervisor/; docs/testbed.md) and nspawn's
    leftovers in /run/systemd/nspawn (propagate/<machine>, and the empty dirs: /run is no
    tmpfs here)."""
    for group in _cgroups_of(machine):
        leftovers.remove_cgroup_tree(group)
    with contextlib.suppress(OSError):
        shutil.rmtree(_NSPAWN_RUN / "propagate" / machine)
    for path in (_NSPAWN_RUN / "locks", _NSPAWN_RUN / "propagate", _NSPAWN_RUN):
        with contextlib.suppress(OSError):  # only when empty: another container may use it
            path.rmdir()


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path) + "/"
    with open("/proc/self/mounts") as mounts:
        found = [m for line in mounts if (m := line.split()[1]).startswith(prefix)]
    return sorted(found, key=len, reverse=True)


def _remove_dir(path: Path) -> None:
    for mount in _mounts_under(path):  # none expected: nspawn mounts in its own namespace
        subprocess.run(["umount", "-l", mount], check=False)
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)


def sweep_stale(workdir: Path | None = None, min_age: float = 60) -> list[Path]:
    """Removes what killed test sessions left behind: container copies in ``workdir`` whose
    owner is gone (their lock is free, they are older than ``min_age`` seconds and nothing
    runs in their cgroups), with their cgroups and nspawn leftovers. Returns the dirs removed.
    A container whose pytest was killed powers itself off (parent-death signal), so its
    leftovers are swept by the next session."""

    def remove(path: Path) -> bool:
        if any(_cgroup_procs(group) for group in _cgroups_of(path.name)):
            return False  # still shutting down
        _remove_nspawn_leftovers(path.name)
        _remove_dir(path)
        return True

    return leftovers.sweep_unowned(Path(workdir or DEFAULT_WORKDIR), PREFIX, min_age, remove)


class BootedContainer:
    """A copy of ``rootfs`` booted with ``systemd-nspawn -b``, driven from the host.

    ``start()`` copies the rootfs (``cp -a --reflink=auto``) into a temp dir under ``workdir``
    and boots it; ``run()`` executes commands inside; ``reboot()`` powers it off and boots the
    same root again; ``close()`` powers it off and removes every trace (cgroups, nspawn's
    leftovers in /run/systemd/nspawn, the copy). Also a context manager.
    """

    def __init__(
        self,
        rootfs: Path,
        *,
        art_dir: Path | None = None,
        workdir: Path | None = None,
        boot_timeout: float = 120,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.rootfs = Path(rootfs)
        if not (self.rootfs / "usr" / "lib" / "systemd" / "systemd").exists():
            raise ContainerError(f"not a rootfs with systemd: {self.rootfs}")
        self.machine = f"{PREFIX}{uuid.uuid4().hex[:12]}"
        """nspawn's machine name, also the name of the temp dir and of our cgroups: unique, so
        concurrent containers do not collide (the hostname inside is the rootfs's)."""
        # /var/tmp by default: usually the filesystem of /var/cache (reflinks where supported).
        self.dir = Path(workdir or DEFAULT_WORKDIR) / self.machine
        self.dir.mkdir(mode=0o700)
        # Held while this object lives: sweep_stale() removes only dirs whose lock is free.
        self._lock = os.open(self.dir / ".lock", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        self.root = self.dir / "root"
        self.log_path = self.dir / "nspawn.log"
        self.art_dir = Path(art_dir) if art_dir is not None else self.dir / "art"
        self.art_dir.mkdir(parents=True, exist_ok=True)
        self.boot_timeout = boot_timeout
        self.extra_args = tuple(extra_args)
        self.system_state: str | None = None
        """``running`` or ``degraded`` after a boot."""
        self.failed_units: list[str] = []
        """The failed units when the last boot ended ``degraded``."""
        self.timings: dict[str, float] = {}
        """Seconds of the last ``copy``, ``boot`` (nspawn start to running), ``poweroff``."""
        self.boots = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        self._cgroups = _cgroups_of(self.machine)

    # -- life cycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Copies the rootfs (first time only) and boots it."""
        if not self.root.exists():
            started = time.monotonic()
            tmp = self.dir / "root.partial"
            subprocess.run(
                ["cp", "-a", "--reflink=auto", str(self.rootfs), str(tmp)],
                check=True,
                stdin=subprocess.DEVNULL,
            )
            tmp.rename(self.root)
            self.timings["copy"] = time.monotonic() - started
        self.boot()

    def boot(self) -> str:
        """Boots ``root``; waits (bounded) for ``running`` or ``degraded``, which it returns."""
        if self.is_running():
            raise ContainerError("already running")
        started = time.monotonic()
        deadline = started + self.boot_timeout
        argv = [
            shutil.which("systemd-nspawn") or "/usr/bin/systemd-nspawn",
            "--register=no",  # no machined: PID 1 on the host is not systemd
            "--keep-unit",  # no scope unit either; stays in our cgroup (payload/supervisor)
            "--quiet",
            f"--machine={self.machine}",
            f"--directory={self.root}",
            "--boot",
            "--console=passive",  # boot messages still go to nspawn's stdout (the log)
            "--link-journal=no",  # keep the journal in the rootfs, never in the host's
            f"--bind-ro={self.art_dir}:{ART_MOUNT}",
            *self.extra_args,
        ]
        # A shell moves itself into our cgroups and then execs nspawn: nspawn derives its
        # payload/supervisor cgroups from its own cgroup at start-up.
        for group in self._cgroups:
            group.mkdir(exist_ok=True)
        join = "".join(f'echo $$ > "{g}/cgroup.procs" && ' for g in self._cgroups)
        if shutil.which("setpriv") is not None:
            # If pytest dies without teardown, nspawn gets SIGTERM (a clean poweroff) instead of
            # running on forever; the next session's sweep_stale() removes the rest.
            argv = ["setpriv", "--pdeathsig", "TERM", *argv]
        with self.log_path.open("ab") as log:
            log.write(f"==== boot {self.boots + 1}: {' '.join(argv)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                ["/bin/sh", "-c", f'{join}exec "$@"', "sh", *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in pytest must not reach nspawn
            )
        self.boots += 1
        self._pid = None
        try:
            self._pid = self._wait_for_systemd(deadline)
            self.system_state = self._wait_for_boot(deadline)
        except BaseException:
            self._stop(timeout=30)
            raise
        self.failed_units = []
        if self.system_state == "degraded":
            listing = self.run(
                "systemctl", "list-units", "--state=failed", "--no-legend", "--plain"
            )
            self.failed_units = [line.split()[0] for line in listing.stdout.splitlines() if line]
        self.timings["boot"] = time.monotonic() - started
        return self.system_state

    def _wait_for_systemd(self, deadline: float) -> int:
        """The container's PID 1 as seen from the host, once its private bus socket exists."""
        assert self._proc is not None
        while True:
            if self._proc.poll() is not None:
                raise ContainerError(
                    f"systemd-nspawn exited rc={self._proc.returncode} during boot:\n{self.log_tail()}"
                )
            for child in leftovers.children(self._proc.pid):
                if (
                    leftovers.comm(child) == "systemd"
                    and Path(f"/proc/{child}/root/run/systemd/private").is_socket()
                ):
                    return child
            if time.monotonic() > deadline:
                raise ContainerError(
                    f"systemd did not come up within {self.boot_timeout:.0f}s:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def _wait_for_boot(self, deadline: float) -> str:
        remaining = max(deadline - time.monotonic(), 1)
        try:
            result = self.run(
                "systemctl", "is-system-running", "--wait", check=False, timeout=remaining
            )
        except subprocess.TimeoutExpired:
            jobs = self.run("systemctl", "list-jobs", "--no-legend", check=False, timeout=10)
            raise ContainerError(
                f"boot did not finish within {self.boot_timeout:.0f}s; jobs:\n{jobs.stdout}"
                f"nspawn log:\n{self.log_tail()}"
            ) from None
        state = result.stdout.strip()
        if state not in ("running", "degraded"):
            raise ContainerError(
                f"boot ended in state {state!r} (rc {result.returncode}, {result.stderr.strip()}):"
                f"\n{self.log_tail()}"
            )
        return state

    def poweroff(self, timeout: float = 60) -> None:
        """Clean shutdown: SIGTERM to nspawn makes it ask systemd to power off (1.5-2 s)."""
        started = time.monotonic()
        self._stop(timeout)
        self.timings["poweroff"] = time.monotonic() - started

    def reboot(self, timeout: float = 60) -> str:
        """Powers off and boots the same root again (files, enabled units, journal kept)."""
        self.poweroff(timeout)
        return self.boot()

    def close(self) -> None:
        """Powers off (or kills) the container and removes the copy and every leftover."""
        try:
            self._stop(timeout=60)
        finally:
            _remove_dir(self.dir)
            if self._lock >= 0:
                os.close(self._lock)
                self._lock = -1

    def _stop(self, timeout: float) -> None:
        proc, self._proc, self._pid = self._proc, None, None
        self.system_state = None
        try:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # nspawn: SIGRTMIN+4 to PID 1 = poweroff
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGTERM)  # a second one: immediate termination
                    try:
                        proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
                    raise ContainerError(
                        f"container did not power off within {timeout:.0f}s; terminated:\n"
                        f"{self.log_tail()}"
                    ) from None
        finally:
            self._clean_leftovers()

    def _clean_leftovers(self) -> None:
        """Kills what is left in our cgroups (only after a failed stop), then removes them and
        nspawn's own leftovers (docs/testbed.md: empty payload/supervisor cgroups; propagate/
        and locks/ in /run/systemd/nspawn, as /run is no tmpfs here)."""
        deadline = time.monotonic() + 10
        while pids := [p for g in self._cgroups for p in _cgroup_procs(g)]:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        _remove_nspawn_leftovers(self.machine)

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> BootedContainer:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- inside ---------------------------------------------------------------------------

    @property
    def systemd_pid(self) -> int:
        """The container's systemd (PID 1 inside) as a host PID."""
        if self._pid is None or not self.is_running():
            raise ContainerError("the container is not running")
        return self._pid

    @property
    def pystemd_bus_path(self) -> Path:
        """The container's system bus socket, reachable from the host (docs/testbed.md, "pystemd
        against the container")."""
        return Path(f"/proc/{self.systemd_pid}/root/run/dbus/system_bus_socket")

    @property
    def pystemd_bus_address(self) -> bytes:
        """For ``pystemd.dbuslib.DBusAddress(container.pystemd_bus_address)``."""
        return f"unix:path={self.pystemd_bus_path}".encode()

    @property
    def docker_socket_path(self) -> Path:
        """The container's dockerd socket, for a host-side docker SDK client."""
        return Path(f"/proc/{self.systemd_pid}/root/run/docker.sock")

    def run(
        self,
        *cmd: str,
        check: bool = True,
        input: str | None = None,
        timeout: float = 120,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Runs ``cmd`` inside (all namespaces, root and cwd of PID 1), clean environment.

        On ``timeout`` nsenter is killed; the command itself lives on inside until it ends or
        the container stops.
        """
        environment = [f"{k}={v}" for k, v in {**CONTAINER_ENV, **(env or {})}.items()]
        argv = [
            *("nsenter", "-t", str(self.systemd_pid), "-a", "-r", "-w"),
            *("env", "-i", *environment, *cmd),
        ]
        result = subprocess.run(
            argv,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise ContainerCommandError(result.returncode, list(cmd), result.stdout, result.stderr)
        return result

    def journal(self, unit: str | None = None, *, boot: int = 0, output: str = "cat") -> str:
        """The journal of ``unit`` (all units when None) in boot ``boot`` (0 = the current or
        last one, -1 = the one before): from inside while running, else from the rootfs's
        persistent journal with the host's journalctl."""
        args = ["--no-pager", "-q", "-o", output, "-b", str(boot)]
        if unit is not None:
            args += ["-u", unit]
        if self.is_running():
            return self.run("journalctl", *args).stdout
        result = subprocess.run(
            ["journalctl", "-D", str(self.root / "var" / "log" / "journal"), *args],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"},
        )
        return result.stdout

    def log_tail(self, lines: int = 40) -> str:
        """The end of nspawn's output (boot and shutdown messages, nspawn's errors)."""
        try:
            return _last_lines(self.log_path.read_text(errors="replace"), lines)
        except OSError:
            return "(no nspawn log)"

    def __repr__(self) -> str:
        state = self.system_state or "stopped"
        failed = f", failed: {self.failed_units}" if self.failed_units else ""
        return f"<BootedContainer {self.machine} {state} root={self.root}{failed}>"


def host_network_state() -> dict[str, set[str]]:
    """The host network namespace's interfaces and firewall rules (iptables nft and legacy,
    IPv4 and IPv6, nftables), without counters: compare a snapshot before and after a test to
    prove that a dockerd in the container (which shares this namespace) changed nothing."""
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True)
    state = {
        "links": {line.split(":")[1].strip().split("@")[0] for line in links.stdout.splitlines()}
    }
    tools = ["iptables-save", "ip6tables-save", "iptables-legacy-save", "ip6tables-legacy-save"]
    for tool in tools:
        if shutil.which(tool) is None:
            continue
        out = subprocess.run([tool], capture_output=True, text=True, check=False).stdout
        state[tool] = {
            re.sub(r"\[\d+:\d+\]", "", line)
            for line in out.splitlines()
            if not line.startswith("#")
        }
    if shutil.which("nft") is not None:
        out = subprocess.run(
            ["nft", "list", "ruleset"], capture_output=True, text=True, check=False
        ).stdout
        state["nft"] = {
            re.sub(r"counter packets \d+ bytes \d+", "", line) for line in out.splitlines()
        }
    return state
