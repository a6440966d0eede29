"""A private ``dockerd`` (Debian docker.io 20.10) on its own socket, data root and exec root."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Protocol

import docker

from tests.testbed.registry import tail


def _ping(sock_path: Path) -> bool:
    """``GET /_ping`` over the unix socket with the standard library (no SDK retries to wait for)."""
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(2)
            sock.connect(str(sock_path))
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return sock.recv(64).split(b" ", 2)[1:2] == [b"200"]
    except OSError:
        return False


def _process_state(pid: int) -> str | None:
    """The state letter from /proc/PID/stat ("R", "S", "Z", ...), None if there is no such PID."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[0]


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path) + "/"
    with open("/proc/self/mounts") as mounts:
        return [m for line in mounts if (m := line.split()[1]).startswith(prefix)]


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _process_state(pid) not in ("Z", None):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _terminate_and_wait(pid: int, timeout: float) -> None:
    os.kill(pid, signal.SIGTERM)
    if not _wait_gone(pid, timeout):
        os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, 10)


class DockerDaemon:
    """dockerd with distinct --data-root/--exec-root/--pidfile/-H (docs/testbed.md: they coexist).

    ``mirror`` is a loopback registry host ("127.0.0.1:PORT"): dockerd then pulls Docker Hub
    names (``busybox:1.36``) from it (docs/testbed.md, "Docker Hub names offline").
    """

    def __init__(self, mirror: str | None = None, extra_args: tuple[str, ...] = ()) -> None:
        # Short dir under /tmp, not pytest's tmp_path: unix socket paths are limited to 108 bytes
        # and a too-long one makes dockerd die at start-up (docs/testbed.md).
        self.dir = Path(tempfile.mkdtemp(prefix="fb-d"))
        self.sock = self.dir / "docker.sock"
        self.log_path = self.dir / "dockerd.log"
        args = [
            shutil.which("dockerd") or "/usr/sbin/dockerd",
            *("--data-root", str(self.data_root), "--exec-root", str(self.dir / "exec")),
            *("--pidfile", str(self.dir / "pid"), "-H", self.host),
            "--iptables=false",
            "--bridge=none",
        ]
        if mirror is not None:
            args += ["--registry-mirror", f"http://{mirror}", "--insecure-registry", mirror]
        self._argv = (*args, *extra_args)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def argv(self) -> tuple[str, ...]:
        """The exact command line; identical across restarts."""
        return self._argv

    @property
    def host(self) -> str:
        return f"unix://{self.sock}"

    @property
    def data_root(self) -> Path:
        return self.dir / "root"

    @property
    def pid(self) -> int:
        """The running dockerd: ours, or the one forklift-boot started in its place."""
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        adopted = self._adopted_pid()
        if adopted is None:
            raise RuntimeError("dockerd is not running")
        return adopted

    def is_running(self) -> bool:
        if self._proc is not None and self._proc.poll() is None:
            return True
        return self._adopted_pid() is not None

    def _adopted_pid(self) -> int | None:
        """A dockerd with our exact command line that we did not start (forklift-boot restarts
        the daemon it finds behind the socket, with its own command line)."""
        try:
            pid = int((self.dir / "pid").read_text())
        except (OSError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
        except OSError:
            return None
        if _process_state(pid) in ("Z", None) or [a.decode() for a in cmdline] != list(self._argv):
            return None
        return pid

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.host, timeout=600)

    def start(self, timeout: float = 60) -> None:
        if self.is_running():
            return
        with self.log_path.open("ab") as log:
            # Own session: a Ctrl-C in pytest must not reach dockerd before teardown stops it.
            self._proc = subprocess.Popen(
                self._argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        # Wait for _ping, not for the socket file: it exists ~50 ms before the API answers.
        while not _ping(self.sock):
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"dockerd exited rc={self._proc.returncode}:\n{tail(self.log_path)}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"dockerd not ready in {timeout}s:\n{tail(self.log_path)}")
            time.sleep(0.02)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM and wait: 1-3 s idle (docs/testbed.md), plus up to 10 s per running container
        that ignores SIGTERM (dockerd's stop grace); SIGKILL if dockerd hangs."""
        adopted = (
            self._adopted_pid() if self._proc is None or self._proc.poll() is not None else None
        )
        if adopted is not None:
            _terminate_and_wait(adopted, timeout)
            return
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def kill(self) -> None:
        """SIGKILL, as a crash would; the next ``start()`` recovers like after a real crash."""
        adopted = (
            self._adopted_pid() if self._proc is None or self._proc.poll() is not None else None
        )
        if adopted is not None:
            os.kill(adopted, signal.SIGKILL)
            _wait_gone(adopted, 30)
        elif self._proc is not None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None
        self._forget_dead_containerd()

    def _shims(self) -> list[int]:
        """PIDs of containerd shims serving this daemon's containerd (one per running container)."""
        address = f"{self.dir}/exec/containerd/containerd.sock".encode()
        pids = []
        for proc in Path("/proc").iterdir():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:  # not a PID dir, or it just exited
                continue
            if b"containerd-shim" in cmdline and address in cmdline.split(b"\0"):
                pids.append(int(proc.name))
        return pids

    def _forget_dead_containerd(self, timeout: float = 10) -> None:
        """Removes containerd's pidfile once the containerd child has died.

        containerd dies with dockerd (parent-death signal), but this machine's PID 1 reaps
        orphans late, and dockerd's "is containerd still running?" check is fooled by the zombie:
        the next start then waits for it and fails ("timeout waiting for containerd to start").
        On a host whose init reaps promptly the pidfile would name a dead process, as here.
        """
        pidfile = self.dir / "exec" / "containerd" / "containerd.pid"
        try:
            pid = int(pidfile.read_text())
        except (OSError, ValueError):
            return
        deadline = time.monotonic() + timeout
        while _process_state(pid) not in ("Z", None):
            if time.monotonic() > deadline:
                return  # still alive: dockerd reattaches to it on start
            time.sleep(0.02)
        pidfile.unlink(missing_ok=True)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        try:
            if not self.is_running() and self._shims():
                # Killed with containers running: their shims outlive dockerd. A start makes
                # dockerd reconnect and stop them (no live-restore), with their mounts and cgroups.
                self.start()
            self.stop()
        finally:
            # dockerd bind-mounts the data root onto itself; after a crash or a failed start the
            # mount stays and rmtree fails with EBUSY (docs/testbed.md).
            if _mounts_under(self.dir):
                umount = ["umount", "-R", str(self.data_root)]
                subprocess.run(umount, check=False, stderr=subprocess.DEVNULL)
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> DockerDaemon:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DaemonFactory(Protocol):
    """Type of the ``fresh_dockerd`` fixture: starts a new daemon, closed after the test."""

    def __call__(
        self, *, mirror: bool = True, extra_args: tuple[str, ...] = ()
    ) -> DockerDaemon: ...
