"""The test bed's Docker engines built on containerd: Docker 26.1 with the containerd image store
(tests/testbed/containerd_store.py, docs/testbed.md) and dockerd 20.10 on a standalone
containerd. Expected values come from the registry (its digests) and from the OCI image-spec and
containerd's documented annotations, never from the daemons' own reports of themselves."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.conftest import REPO_DIR
from tests.testbed import images
from tests.testbed.containerd import Containerd
from tests.testbed.containerd_store import (
    PREFIX,
    ContainerdStoreDaemon,
    ContainerdStoreFactory,
    sweep_stale,
)
from tests.testbed.dockerd import DockerDaemon
from tests.testbed.nspawn import host_network_state
from tests.testbed.registry import Registry

pytestmark = [pytest.mark.docker, pytest.mark.containerd, pytest.mark.registry]

SNAPSHOTTER = ["driver-type", "io.containerd.snapshotter.v1"]


@pytest.fixture(scope="module")
def client(containerd_store_dockerd: ContainerdStoreDaemon) -> Iterator[docker.DockerClient]:
    client = containerd_store_dockerd.client()
    yield client
    client.close()


@pytest.fixture
def removed_after(client: docker.DockerClient) -> Iterator[list[str]]:
    """Refs to remove from the shared daemon after the test, whatever its outcome (later tests
    may expect a daemon without images)."""
    refs: list[str] = []
    yield refs
    images.remove_images(client, refs)


def _small_image(client: docker.DockerClient, name: str) -> images.BuiltImage:
    return images.build_image(
        client, [images.busybox_layer(), images.app_layer(name)], name, ["/bin/busybox", "true"]
    )


def _push(
    client: docker.DockerClient, built: images.BuiltImage, registry: Registry, repo: str, tag: str
) -> str:
    """Pushes ``built`` as ``HOST/repo:tag``; returns the registry's manifest digest, checked
    against what the push reported. Docker 26.1's containerd store reports it only in a status
    line (``<tag>: digest: sha256:... size: N``), with no ``aux`` message as 20.10 sends (so
    ``images.publish`` cannot be used with it)."""
    target = f"{registry.host}/{repo}"
    client.api.tag(built.ref, target, tag)
    chunks = list(client.api.push(target, tag=tag, stream=True, decode=True))
    assert not [c for c in chunks if "error" in c], chunks
    digest = registry.manifest_digest(repo, tag)
    reported = [c["status"].split()[2] for c in chunks if " digest: " in c.get("status", "")]
    assert reported == [digest], chunks
    assert not [c for c in chunks if "aux" in c], chunks
    return digest


def _ctr_names(daemon: ContainerdStoreDaemon) -> set[str]:
    return set(daemon.ctr("images", "ls", "-q").stdout.split())


def _tar_members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]  # files only
            for m in tar.getmembers()
            if m.isfile()
        }


def _rootfs_fingerprint(rootfs: Path) -> dict[str, tuple[int, int, int]]:
    """(mode, size, mtime) of every entry: any write into the shared rootfs changes it."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(rootfs):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            found[path] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return found


def test_the_engine_is_docker_26_with_the_containerd_snapshotter(
    client: docker.DockerClient,
) -> None:
    info = client.info()
    assert SNAPSHOTTER in info["DriverStatus"], info["DriverStatus"]
    assert info["Driver"] == "overlayfs"
    assert info["ServerVersion"].startswith("26.1."), info["ServerVersion"]
    # The SDK (docker 5.0.3 on the Debian stack too) negotiates the daemon's API version.
    assert client.api.api_version == "1.45"
    assert client.version()["ApiVersion"] == "1.45"


def test_build_push_pull_by_digest_save_and_create_offline(
    containerd_store_dockerd: ContainerdStoreDaemon,
    client: docker.DockerClient,
    registry: Registry,
    removed_after: list[str],
) -> None:
    daemon = containerd_store_dockerd
    built = _small_image(client, "csbed")
    repo = "fbtest/csbed"
    name = f"{registry.host}/{repo}"
    tag_ref = f"{name}:1"
    removed_after += [built.ref, tag_ref]
    digest = _push(client, built, registry, repo, "1")
    digest_ref = f"{name}@{digest}"
    removed_after.append(digest_ref)
    # In the containerd store the image ID is the digest of what the name points at: the
    # manifest that went to the registry.
    assert images.inspect(client, tag_ref)["Id"] == digest
    assert tag_ref in _ctr_names(daemon)
    # The host's ctr (containerd 1.6 client) talks to the inner containerd (1.7) too.
    host_ctr = subprocess.run(
        ["ctr", "-a", str(daemon.containerd_sock), "-n", "moby", "images", "ls", "-q"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert tag_ref in host_ctr.stdout.split()

    # docker save by tag: an OCI layout whose index names the image (containerd's annotation).
    saved = b"".join(client.api.get_image(tag_ref))
    members = _tar_members(saved)
    assert json.loads(members["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(members["index.json"])
    [entry] = index["manifests"]
    assert entry["digest"] == digest
    assert entry["annotations"]["io.containerd.image.name"] == tag_ref
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "1"
    assert f"blobs/sha256/{digest.removeprefix('sha256:')}" in members

    images.remove_images(client, [tag_ref, built.ref])
    assert tag_ref not in _ctr_names(daemon)
    # By digest: stores the name repo@digest, no tag.
    pulled = list(client.api.pull(name, tag=digest, stream=True, decode=True))
    assert not [chunk for chunk in pulled if "error" in chunk], pulled
    assert digest_ref in _ctr_names(daemon)
    assert tag_ref not in _ctr_names(daemon)

    with registry.offline():
        container = client.containers.create(digest_ref, ["/bin/busybox", "true"])
        container.remove()
        images.remove_images(client, [digest_ref])
        client.images.load(saved)
        # The load restores the tag; repo:tag@digest resolves without a pull (Fact A).
        container = client.containers.create(f"{tag_ref}@{digest}", ["/bin/busybox", "true"])
        container.remove()


def test_docker_hub_names_come_from_the_mirror(
    containerd_store_dockerd: ContainerdStoreDaemon,
    client: docker.DockerClient,
    registry: Registry,
    removed_after: list[str],
) -> None:
    built = _small_image(client, "csmirror")
    removed_after += [built.ref, f"{registry.host}/library/fbcsmirror:1", "fbcsmirror:1"]
    digest = _push(client, built, registry, "library/fbcsmirror", "1")
    images.remove_images(client, [f"{registry.host}/library/fbcsmirror:1", built.ref])
    images.pull_ref(client, "fbcsmirror:1")
    info = images.inspect(client, "fbcsmirror:1")
    assert info["Id"] == digest
    assert f"fbcsmirror@{digest}" in info["RepoDigests"]
    assert "docker.io/library/fbcsmirror:1" in _ctr_names(containerd_store_dockerd)


def test_containers_run(client: docker.DockerClient, removed_after: list[str]) -> None:
    built = _small_image(client, "csrun")
    removed_after.append(built.ref)
    output = client.containers.run(
        built.ref, ["/bin/busybox", "echo", "hi"], remove=True, network_mode="none"
    )
    assert output == b"hi\n"


def test_the_shared_daemon_is_left_as_found(
    containerd_store_dockerd: ContainerdStoreDaemon, client: docker.DockerClient
) -> None:
    """What the tests above built, pushed, pulled and loaded is gone again (other tests share
    the daemon), in Docker's view and in containerd's."""
    ours = ("csbed", "csmirror", "csrun")
    tags = [t for image in client.images.list(all=True) for t in image.tags]
    assert [t for t in tags if any(name in t for name in ours)] == []
    assert [n for n in _ctr_names(containerd_store_dockerd) if any(x in n for x in ours)] == []


def test_the_host_network_and_the_rootfs_stay_untouched_and_state_survives_restarts(
    fresh_containerd_store_dockerd: ContainerdStoreFactory, docker_rootfs: Path
) -> None:
    network_before = host_network_state()
    rootfs_before = _rootfs_fingerprint(docker_rootfs)
    started = time.monotonic()
    rebuilt = subprocess.run(
        [str(REPO_DIR / "scripts" / "build-rootfs-docker")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(rebuilt.stdout.strip()) == docker_rootfs  # reused, not rebuilt
    assert time.monotonic() - started < 10

    daemon = fresh_containerd_store_dockerd()
    first_start = daemon.timings["start"]
    client = daemon.client()
    built = _small_image(client, "csrestart")
    assert client.containers.run(built.ref, ["/bin/busybox", "true"], remove=True) == b""
    sleeper = client.containers.run(
        built.ref, ["/bin/busybox", "sleep", "600"], detach=True, stop_signal="SIGKILL"
    )
    cgroups = Path("/sys/fs/cgroup")
    assert [*cgroups.glob(f"*/{daemon.name}/{sleeper.id}")]  # not in the shared /docker
    daemon.stop()  # dockerd stops the container, then itself, then containerd
    first_stop = daemon.timings["stop"]
    daemon.start()
    assert images.inspect(client, built.ref)["Id"] == built.image_id  # kept across a restart
    sleeper.reload()
    assert sleeper.status == "exited"
    sleeper.start()
    daemon.kill()  # as in a crash: everything in the namespace dies at once, the shim too
    assert not daemon.is_running()
    daemon.start()
    assert images.inspect(client, built.ref)["Id"] == built.image_id
    sleeper.reload()
    assert sleeper.status == "exited"
    sleeper.remove()
    second = fresh_containerd_store_dockerd()  # a second instance on the same rootfs
    assert built.ref not in {t for i in second.client().images.list() for t in i.tags}
    client.close()
    daemon.close()
    second.close()
    print(
        f"start {first_start:.2f}s, stop {first_stop:.2f}s, restart {daemon.timings['start']:.2f}s,"
        f" second instance {second.timings['start']:.2f}s (stop {second.timings['stop']:.2f}s)"
    )
    assert max(first_start, daemon.timings["start"], second.timings["start"]) < 5
    assert not daemon.dir.exists()
    assert not [*cgroups.glob(f"*/{daemon.name}"), *cgroups.glob(f"*/docker/{sleeper.id}")]
    with open("/proc/self/mounts") as mounts:
        assert not [line for line in mounts if daemon.name in line or second.name in line]
    assert host_network_state() == network_before
    assert _rootfs_fingerprint(docker_rootfs) == rootfs_before


def test_a_killed_session_stops_its_daemons_and_the_next_sweeps_them(docker_rootfs: Path) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="fb-cst"))  # short: socket paths
    child = (
        "import sys, time\n"
        f"sys.path.insert(0, {str(REPO_DIR)!r})\n"
        "from pathlib import Path\n"
        "from tests.testbed.containerd_store import ContainerdStoreDaemon\n"
        f"d = ContainerdStoreDaemon(Path({str(docker_rootfs)!r}), workdir=Path({str(workdir)!r}))\n"
        "d.start()\n"
        "print(d.init_pid, d.pid, d.containerd_pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    session = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    try:
        assert session.stdout is not None
        pids = [int(pid) for pid in session.stdout.readline().split()]
        assert len(pids) == 3, "the child session did not start its daemons"
        [instance] = list(workdir.glob(f"{PREFIX}*"))
        assert sweep_stale(workdir, min_age=0) == []  # its owner is alive: kept
        session.send_signal(signal.SIGKILL)
        session.wait()
        deadline = time.monotonic() + 30
        while any(Path(f"/proc/{pid}").exists() for pid in pids):
            assert time.monotonic() < deadline, "the daemons outlived their session"
            time.sleep(0.05)
        # A clean stop, not a kill: both daemons said so in their logs.
        assert "Daemon shutdown complete" in (instance / "log" / "dockerd.log").read_text()
        assert "fb-start: containerd exited: 0" in (instance / "setup.log").read_text()
        assert sweep_stale(workdir, min_age=0) == [instance]
        assert not instance.exists()
    finally:
        if session.poll() is None:
            session.kill()
            session.wait()
        sweep_stale(workdir, min_age=0)
        workdir.rmdir()


def test_dockerd_20_10_on_a_standalone_containerd(
    dockerd_on_containerd: DockerDaemon, containerd: Containerd
) -> None:
    client = dockerd_on_containerd.client()
    info = client.info()
    assert info["ServerVersion"].startswith("20.10."), info["ServerVersion"]
    assert info["Driver"] == "overlay2"
    assert SNAPSHOTTER not in info["DriverStatus"]
    # dockerd did not start a containerd of its own.
    assert not (dockerd_on_containerd.dir / "exec" / "containerd").exists()

    built = _small_image(client, "csext")
    try:
        # Images stay in Docker's classic store: none in containerd's moby namespace.
        image_db = dockerd_on_containerd.data_root / "image" / "overlay2" / "imagedb" / "content"
        assert (image_db / "sha256" / built.image_id.removeprefix("sha256:")).is_file()
        assert containerd.ctr("images", "ls", "-q", namespace="moby").stdout.split() == []
        # Containers run in the standalone containerd, namespace moby.
        container = client.containers.run(
            built.ref, ["/bin/busybox", "sleep", "60"], detach=True, network_mode="none"
        )
        try:
            listed = containerd.ctr("containers", "ls", "-q", namespace="moby").stdout.split()
            assert container.id in listed
            tasks = containerd.ctr("tasks", "ls", namespace="moby").stdout.splitlines()[1:]
            assert [line.split()[2] for line in tasks if line.startswith(container.id)] == [
                "RUNNING"
            ]
        finally:
            container.remove(force=True)
        assert container.id not in containerd.ctr("containers", "ls", "-q", namespace="moby").stdout
    finally:
        images.remove_images(client, [built.ref])
        client.close()
