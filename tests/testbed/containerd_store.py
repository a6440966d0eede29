"""Docker 26.1 with the containerd image store (Debian trixie's docker.io), run from a rootfs.

See docs/testbed.md, "Docker 26 with the containerd image store". The rootfs comes from
``scripts/build-rootfs-docker`` (cached, shared, never written): each
:class:`ContainerdStoreDaemon` mounts an overlay over it with its own upper dir, plus its own
``/var/lib/docker`` and ``/var/lib/containerd``, and runs ``containerd`` then
``dockerd --containerd`` there, chrooted, in a private mount and PID namespace
(``unshare --mount --pid --fork``):

- Every mount (overlay, /proc, /sys, /dev, binds, and the snapshots containerd mounts) lives in
  that mount namespace and goes away with its last process: nothing is ever mounted on the host,
  so nothing can be left mounted there, and the cached rootfs stays untouched.
- The start script is PID 1 of the PID namespace: when it exits, the kernel kills whatever is
  left (container shims included). SIGTERM to it stops dockerd, then containerd.
- The network namespace is the host's (no private network): dockerd reaches the test session's
  registry on 127.0.0.1 directly. daemon.json turns iptables and the default bridge off, so the
  host's interfaces and firewall stay untouched (``nspawn.host_network_state`` checks it).
- Chosen over ``systemd-nspawn`` (which also works): nspawn needs three workarounds for
  dockerd (``--bind=/sys/fs/cgroup``, ``--system-call-filter=@keyring``,
  ``--kill-signal=SIGTERM``), leaves ``/run/systemd/nspawn`` and payload/supervisor cgroups
  behind on this host (PID 1 is not systemd, /run is no tmpfs), and has no way to put a private
  writable layer over a shared root other than ``--volatile=overlay`` (tmpfs-backed). Here there
  is nothing to clean up on the host but the instance's temp dir.

The host sees the daemons' sockets in ``<dir>/sock`` (bound at ``/run/docker-host`` inside):
``docker.sock`` (:attr:`host`) and ``containerd.sock`` (:attr:`containerd_sock`); their logs in
``<dir>/log`` (``/var/log``). State (images, containers, the overlay's upper dir) survives
``stop()``/``start()`` and ``restart()``; ``close()`` removes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import docker

from tests.testbed import leftovers
from tests.testbed.dockerd import _ping
from tests.testbed.registry import tail

PREFIX = "fb-cs-"
CGROUP_FS = Path("/sys/fs/cgroup")
DEFAULT_WORKDIR = Path("/tmp")
"""Short paths: unix socket paths are limited to 108 bytes (docs/testbed.md)."""

SOCKET_DIR = "/run/docker-host"
"""Where ``<dir>/sock`` appears inside: dockerd's and containerd's sockets."""

BASE_DAEMON_CONFIG: dict[str, Any] = {
    "features": {"containerd-snapshotter": True},
    "iptables": False,  # the host's network namespace: no rules, no docker0
    "bridge": "none",
}

INNER_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
}

CONTAINERD_CONFIG = f"""\
version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
# Like the containerd dockerd starts itself: no CRI (k8s.io), which only slows the start.
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{SOCKET_DIR}/containerd.sock"
"""

# Runs in the new mount and PID namespaces (as PID 1) before the chroot: $1 = the instance dir,
# $2 = the rootfs, the rest = dockerd's extra arguments. Mounts made here are private to the
# namespace.
SETUP_SCRIPT = """\
set -eu
I=$1 M=$1/merged
mount -t overlay overlay -o "lowerdir=$2,upperdir=$I/upper,workdir=$I/work" "$M"
mount -t proc proc "$M/proc"
mount --rbind /sys "$M/sys"
mount --rbind /dev "$M/dev"
mount -t tmpfs -o mode=755 tmpfs "$M/run"
mkdir -p "$M/run/docker-host" "$M/var/lib/docker" "$M/var/lib/containerd"
mount --bind "$I/sock" "$M/run/docker-host"
mount --bind "$I/docker" "$M/var/lib/docker"
mount --bind "$I/containerd" "$M/var/lib/containerd"
mount --bind "$I/log" "$M/var/log"
shift 2
exec chroot "$M" /bin/sh /fb-start.sh "$@"
"""

# PID 1 after the chroot (with a trap that also covers a start-up in progress):
# containerd, then dockerd on it; SIGTERM stops dockerd, then containerd. If dockerd exits by
# itself, containerd is stopped too and the script exits with dockerd's status.
START_SCRIPT = f"""\
#!/bin/sh
C= D=
stop() {{
  [ -z "$D" ] || {{ kill -TERM "$D" 2>/dev/null; wait "$D"; echo "fb-start: dockerd exited: $?"; }}
  [ -z "$C" ] || {{ kill -TERM "$C" 2>/dev/null; wait "$C"; echo "fb-start: containerd exited: $?"; }}
  exit 0
}}
trap stop TERM INT
containerd --config /etc/containerd/fb-config.toml >>/var/log/containerd.log 2>&1 &
C=$!
while [ ! -S {SOCKET_DIR}/containerd.sock ]; do
  kill -0 "$C" 2>/dev/null || {{ echo "containerd exited" >&2; exit 1; }}
  sleep 0.02
done
dockerd -H unix://{SOCKET_DIR}/docker.sock --containerd {SOCKET_DIR}/containerd.sock "$@" \\
  >>/var/log/dockerd.log 2>&1 &
D=$!
wait "$D"
rc=$?
D=
echo "fb-start: dockerd exited by itself: $rc"
kill -TERM "$C" 2>/dev/null
wait "$C"
exit "$rc"
"""


class DaemonError(RuntimeError):
    """The daemons did not start or stop, or are not running."""


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time in ticks): with the PID, names one process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return fields[19] if fields[0] not in ("Z", "X") else None


def _wait_gone(pid: int, start_time: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _start_time(pid) == start_time:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _cgroups_of(name: str) -> list[Path]:
    """The instance's cgroup (``cgroup-parent``) in every hierarchy: the v1 controllers and
    the unified one (hybrid layout, as here), or the root of a pure cgroup v2 mount."""
    if (CGROUP_FS / "cgroup.controllers").exists():
        return [CGROUP_FS / name]
    return [h / name for h in CGROUP_FS.iterdir() if (h / "cgroup.procs").exists()]


def _remove_cgroups(name: str) -> None:
    """rmdir the instance's cgroups, deepest first. Containers leave theirs behind when the
    daemons are killed (their state in /run is gone with the namespace, so no one cleans them);
    after a clean stop they are empty already. Only after every process in them has died."""
    for group in _cgroups_of(name):
        leftovers.remove_cgroup_tree(group)


def _remove_dir(path: Path) -> None:
    # Nothing is mounted here on the host (the mounts live in the daemon's namespace); if a
    # namespace is still being torn down, retry briefly.
    for _ in range(50):
        result = subprocess.run(
            ["rm", "-rf", "--one-file-system", str(path)], capture_output=True, check=False
        )
        if result.returncode == 0 or not path.exists():
            return
        time.sleep(0.1)


def sweep_stale(workdir: Path | None = None, min_age: float = 60) -> list[Path]:
    """Removes instances that killed test sessions left behind: dirs in ``workdir`` whose owner
    is gone (their lock is free) and that are older than ``min_age`` seconds. A daemon still
    running there (its session was SIGKILLed and the shutdown hung) is killed first. Returns
    the dirs removed. Normally there is none: when pytest dies, ``unshare`` is killed
    (parent-death signal) and its child, the start script, gets SIGTERM (``--kill-child``)."""

    def remove(path: Path) -> bool:
        for pid, start_time in _recorded_pids(path):
            if _start_time(pid) == start_time:
                with contextlib.suppress(ProcessLookupError):
                    # unshare, then PID 1 of the namespace: that one takes all along.
                    os.kill(pid, signal.SIGKILL)
                _wait_gone(pid, start_time, 10)
        _remove_cgroups(path.name)
        _remove_dir(path)
        return True

    return leftovers.sweep_unowned(Path(workdir or DEFAULT_WORKDIR), PREFIX, min_age, remove)


def _recorded_pids(path: Path) -> list[tuple[int, str]]:
    """The (PID, start time) pairs in ``<dir>/pids``: unshare, then the namespace's PID 1."""
    try:
        lines = (path / "pids").read_text().split("\n")
    except OSError:
        return []
    pairs = []
    for line in lines:
        with contextlib.suppress(ValueError):
            pid, start_time = line.split()
            pairs.append((int(pid), start_time))
    return pairs


class ContainerdStoreDaemon:
    """containerd 1.7 + dockerd 26.1 (containerd image store) from ``rootfs``, driven from the host.

    ``mirror`` is a loopback registry host ("127.0.0.1:PORT"): Docker Hub names (``alpha:1.0``)
    are pulled from it and it is an insecure (plain HTTP) registry, as with
    :class:`tests.testbed.dockerd.DockerDaemon`. daemon.json is :data:`BASE_DAEMON_CONFIG`, the
    mirror settings and ``"cgroup-parent": "/<name>"`` (containers' cgroups below the instance's
    own, removed when it stops), updated with ``daemon_config``; ``extra_args`` go to dockerd's
    command line. Same life cycle as ``DockerDaemon``: ``start()``, ``stop()``, ``restart()``,
    ``kill()``, ``close()``, context manager; state survives everything but ``close()``.
    """

    def __init__(
        self,
        rootfs: Path,
        *,
        mirror: str | None = None,
        daemon_config: Mapping[str, Any] | None = None,
        extra_args: Sequence[str] = (),
        workdir: Path | None = None,
    ) -> None:
        self.rootfs = Path(rootfs)
        for binary in ("usr/sbin/dockerd", "usr/bin/containerd", "usr/bin/ctr", "bin/sh"):
            if not (self.rootfs / binary).exists():
                raise DaemonError(f"not a rootfs from scripts/build-rootfs-docker: {self.rootfs}")
        config: dict[str, Any] = json.loads(json.dumps(BASE_DAEMON_CONFIG))  # a deep copy
        if mirror is not None:
            config["registry-mirrors"] = [f"http://{mirror}"]
            config["insecure-registries"] = [mirror]
        self.name = f"{PREFIX}{uuid.uuid4().hex[:12]}"
        # Containers' cgroups below one of our own (not the shared /docker), removed at stop.
        config["cgroup-parent"] = f"/{self.name}"
        config.update(daemon_config or {})
        self.daemon_config: dict[str, Any] = config
        """daemon.json as written at each start."""
        self.extra_args = tuple(extra_args)
        self.dir = Path(workdir or DEFAULT_WORKDIR) / self.name
        self.dir.mkdir(mode=0o700)
        # Held while this object lives: sweep_stale() removes only dirs whose lock is free.
        self._lock = os.open(self.dir / ".lock", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        for sub in ("upper", "work", "merged", "sock", "log", "docker", "containerd"):
            (self.dir / sub).mkdir()
        self.timings: dict[str, float] = {}
        """Seconds of the last ``start`` (spawn to dockerd's ``_ping``) and ``stop``."""
        self._proc: subprocess.Popen[bytes] | None = None

    # -- where things are ------------------------------------------------------------------

    @property
    def sock(self) -> Path:
        """dockerd's socket on the host."""
        return self.dir / "sock" / "docker.sock"

    @property
    def host(self) -> str:
        """``DOCKER_HOST`` / ``base_url`` for the docker CLI and SDK."""
        return f"unix://{self.sock}"

    @property
    def containerd_sock(self) -> Path:
        """containerd's socket on the host (``ctr -a <it> -n moby ...`` from the host works)."""
        return self.dir / "sock" / "containerd.sock"

    @property
    def data_root(self) -> Path:
        """dockerd's ``/var/lib/docker`` on the host (images are in containerd's root)."""
        return self.dir / "docker"

    @property
    def containerd_root(self) -> Path:
        """containerd's ``/var/lib/containerd`` on the host: content store and snapshots."""
        return self.dir / "containerd"

    @property
    def log_path(self) -> Path:
        return self.dir / "log" / "dockerd.log"

    @property
    def containerd_log_path(self) -> Path:
        return self.dir / "log" / "containerd.log"

    @property
    def setup_log_path(self) -> Path:
        """Output of unshare, the mounts and the start script itself."""
        return self.dir / "setup.log"

    # -- processes ---------------------------------------------------------------------------

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def init_pid(self) -> int:
        """The start script, PID 1 of the daemons' namespace, as a host PID."""
        if not self.is_running():
            raise DaemonError("not running")
        assert self._proc is not None
        for child in leftovers.children(self._proc.pid):
            return child
        raise DaemonError("not running (no PID 1 in the namespace)")

    def _daemon_pid(self, comm: str) -> int:
        for child in leftovers.children(self.init_pid):
            if leftovers.comm(child) == comm:
                return child
        raise DaemonError(f"{comm} is not running")

    @property
    def pid(self) -> int:
        """dockerd's host PID."""
        return self._daemon_pid("dockerd")

    @property
    def containerd_pid(self) -> int:
        """containerd's host PID."""
        return self._daemon_pid("containerd")

    # -- life cycle ---------------------------------------------------------------------------

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.host, timeout=600)

    def start(self, timeout: float = 60) -> None:
        """Mounts and starts containerd and dockerd; returns once dockerd answers ``_ping``."""
        if self.is_running():
            return
        started = time.monotonic()
        self._write_config()
        argv = [
            *("unshare", "--mount", "--propagation", "private", "--pid", "--fork"),
            # The start script gets SIGTERM (a clean stop) if unshare dies ...
            "--kill-child=SIGTERM",
            *("/bin/sh", "-c", SETUP_SCRIPT, "fb-setup", str(self.dir), str(self.rootfs)),
            *self.extra_args,
        ]
        if shutil.which("setpriv") is not None:
            # ... and unshare dies with pytest (sweep_stale() removes the rest).
            argv = ["setpriv", "--pdeathsig", "KILL", *argv]
        with self.setup_log_path.open("ab") as log:
            shown = " ".join("SETUP_SCRIPT" if arg == SETUP_SCRIPT else arg for arg in argv)
            log.write(f"==== start {time.strftime('%H:%M:%S')}: {shown}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in pytest must not reach the daemons
            )
        deadline = started + timeout
        try:
            self._wait_until_ready(deadline, timeout)
        except BaseException:
            self.kill()
            raise
        self.timings["start"] = time.monotonic() - started

    def _write_config(self) -> None:
        """daemon.json, containerd's config and the start script, into the overlay's upper dir
        (the daemons are stopped, so the overlay is not mounted)."""
        upper = self.dir / "upper"
        (upper / "etc" / "docker").mkdir(parents=True, exist_ok=True)
        (upper / "etc" / "containerd").mkdir(parents=True, exist_ok=True)
        daemon_json = json.dumps(self.daemon_config, indent=2) + "\n"
        (upper / "etc" / "docker" / "daemon.json").write_text(daemon_json)
        (upper / "etc" / "containerd" / "fb-config.toml").write_text(CONTAINERD_CONFIG)
        (upper / "fb-start.sh").write_text(START_SCRIPT)

    def _wait_until_ready(self, deadline: float, timeout: float) -> None:
        assert self._proc is not None
        recorded = False
        # Wait for _ping, not for the socket file: it exists before the API answers.
        while not _ping(self.sock):
            if self._proc.poll() is not None:
                raise DaemonError(f"the daemons exited rc={self._proc.returncode}:\n{self.logs()}")
            if not recorded and (children := leftovers.children(self._proc.pid)):
                self._record_pids(children[0])
                recorded = True
            if time.monotonic() > deadline:
                raise DaemonError(f"dockerd not ready in {timeout:.0f}s:\n{self.logs()}")
            time.sleep(0.02)
        if not recorded:
            self._record_pids(self.init_pid)

    def _record_pids(self, init_pid: int) -> None:
        """For sweep_stale(): unshare's and PID 1's host PIDs with their start times."""
        assert self._proc is not None
        lines = [
            f"{pid} {start}\n"
            for pid in (self._proc.pid, init_pid)
            if (start := _start_time(pid)) is not None
        ]
        (self.dir / "pids").write_text("".join(lines))

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM to the start script: dockerd stops (its containers first), then containerd;
        then the namespaces and their mounts go. SIGKILL if that takes longer than ``timeout``."""
        proc = self._proc
        if proc is None:
            return
        started = time.monotonic()
        if proc.poll() is None:
            for child in leftovers.children(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise DaemonError(
                    f"the daemons did not stop within {timeout:.0f}s; killed:\n{self.logs()}"
                ) from None
        self._proc = None
        _remove_cgroups(self.name)
        self.timings["stop"] = time.monotonic() - started

    def kill(self) -> None:
        """SIGKILL to PID 1 of the namespace: dockerd, containerd and every shim die at once, as
        in a power cut. The next ``start()`` recovers like after a crash."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        children = leftovers.children(proc.pid)
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        if not children:  # unshare has not forked yet
            proc.kill()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        _remove_cgroups(self.name)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        """Stops the daemons and removes the instance dir (state, logs, sockets)."""
        try:
            self.stop()
        finally:
            _remove_dir(self.dir)
            if self._lock >= 0:
                os.close(self._lock)
                self._lock = -1

    def __enter__(self) -> ContainerdStoreDaemon:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- inside -------------------------------------------------------------------------------

    def run(
        self, *cmd: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Runs ``cmd`` in the daemons' mount namespace and root (the trixie rootfs), with a
        clean environment (the caller's DOCKER_HOST, venv PATH ... must not leak in)."""
        environment = [f"{k}={v}" for k, v in INNER_ENV.items()]
        argv = ["nsenter", "-t", str(self.init_pid), "-m", "-r", "-w", "env", "-i"]
        result = subprocess.run(
            [*argv, *environment, *cmd],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise subprocess.CalledProcessError(
                result.returncode, list(cmd), result.stdout, result.stderr
            )
        return result

    def ctr(
        self, *args: str, namespace: str = "moby", check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``ctr -n <namespace> args...`` with the rootfs's own ctr (same version as its
        containerd); dockerd keeps images and containers in namespace ``moby``."""
        address = f"{SOCKET_DIR}/containerd.sock"
        return self.run("ctr", "-a", address, "-n", namespace, *args, check=check)

    def logs(self, lines: int = 20) -> str:
        """The ends of the setup, containerd and dockerd logs, for error messages."""
        return "\n".join(
            f"--- {path.name}:\n{tail(path, lines)}"
            for path in (self.setup_log_path, self.containerd_log_path, self.log_path)
        )

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<ContainerdStoreDaemon {self.name} {state} host={self.host}>"


class ContainerdStoreFactory(Protocol):
    """Type of the ``fresh_containerd_store_dockerd`` fixture: a new daemon, closed after the test."""

    def __call__(
        self,
        *,
        mirror: bool = True,
        daemon_config: Mapping[str, Any] | None = None,
        extra_args: Sequence[str] = (),
    ) -> ContainerdStoreDaemon: ...
