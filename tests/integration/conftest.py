"""Fixtures for tests against a real dockerd and docker-registry (tests/testbed).

Tests that use them carry ``@pytest.mark.docker`` and/or ``@pytest.mark.registry``. Missing
components skip on a laptop and fail in CI (``require_component``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.conftest import REPO_DIR, require_component
from tests.testbed import images
from tests.testbed.containerd import Containerd
from tests.testbed.containerd_store import ContainerdStoreDaemon, ContainerdStoreFactory
from tests.testbed.containerd_store import sweep_stale as sweep_stale_containerd_stores
from tests.testbed.dockerd import DaemonFactory, DockerDaemon
from tests.testbed.images import PublishedImage
from tests.testbed.multi_platform import BuiltMulti, publish_multi_platform
from tests.testbed.registry import Registry
from tests.testbed.stores import STORE_NAMES, ContainerdStore, DockerStore, ImageStore

StoreFactory = Callable[[str], ImageStore]


def _need_docker_registry(request: pytest.FixtureRequest) -> None:
    if shutil.which("docker-registry") is None:
        require_component(request.config, "needs docker-registry (apt-get install docker-registry)")


def _need_dockerd(request: pytest.FixtureRequest) -> None:
    if shutil.which("dockerd") is None and not os.path.exists("/usr/sbin/dockerd"):
        require_component(request.config, "needs dockerd (apt-get install docker.io)")
    if os.geteuid() != 0:
        require_component(request.config, "needs root to run dockerd")


@pytest.fixture(scope="session")
def registry(request: pytest.FixtureRequest) -> Iterator[Registry]:
    """A loopback registry; a test may stop it (``with registry.offline():``) but must restart it."""
    _need_docker_registry(request)
    with Registry() as reg:
        yield reg


@pytest.fixture(scope="session")
def dockerd(request: pytest.FixtureRequest, registry: Registry) -> Iterator[DockerDaemon]:
    """The shared daemon; Docker Hub names (``alpha:1.0``) come from ``registry`` (as a mirror)."""
    _need_dockerd(request)
    with DockerDaemon(mirror=registry.host) as daemon:
        yield daemon


@pytest.fixture(scope="session")
def docker_client(dockerd: DockerDaemon) -> Iterator[docker.DockerClient]:
    client = dockerd.client()
    yield client
    client.close()


@pytest.fixture(scope="session")
def published_images(
    docker_client: docker.DockerClient, registry: Registry
) -> Iterator[dict[str, PublishedImage]]:
    """The four standard images (tests/testbed/images.py), in the registry and pulled back.

    ``alpha:1.0``, ``beta:2.0`` (Docker Hub ``library/``), ``fbtest/gamma:3.0`` (Docker Hub user
    namespace) and ``127.0.0.1:PORT/fbtest/delta:4.0``. They were deleted locally after the push and
    pulled again, so ``RepoDigests`` holds the registry's digests, as for any pulled image.
    """
    built = images.build_standard_images(docker_client)
    published = {
        "alpha": images.publish_hub(docker_client, built["alpha"], registry, "alpha", "1.0"),
        "beta": images.publish_hub(docker_client, built["beta"], registry, "beta", "2.0"),
        "gamma": images.publish_hub(docker_client, built["gamma"], registry, "fbtest/gamma", "3.0"),
        "delta": images.publish_local(
            docker_client, built["delta"], registry, "fbtest/delta", "4.0"
        ),
    }
    local_refs = [image.ref for image in built.values()] + [published["delta"].tag_ref]
    images.remove_images(docker_client, local_refs)
    for image in published.values():
        images.pull(docker_client, image)
    yield published
    images.remove_images(docker_client, [image.tag_ref for image in published.values()])


@pytest.fixture(scope="session")
def built_multi(docker_client: docker.DockerClient, registry: Registry) -> Iterator[BuiltMulti]:
    """A linux/amd64 + linux/arm64/v8 image in the registry as ``fbmulti:1.0`` (an index)."""
    built = publish_multi_platform(docker_client, registry)
    yield built
    images.remove_images(docker_client, built.built_refs())


@pytest.fixture
def fresh_dockerd(registry: Registry, request: pytest.FixtureRequest) -> Iterator[DaemonFactory]:
    """Starts private daemons (own data root; same mirror settings) that a test may kill."""
    _need_dockerd(request)
    daemons: list[DockerDaemon] = []

    def start(*, mirror: bool = True, extra_args: tuple[str, ...] = ()) -> DockerDaemon:
        daemon = DockerDaemon(mirror=registry.host if mirror else None, extra_args=extra_args)
        daemons.append(daemon)
        daemon.start()
        return daemon

    yield start
    for daemon in daemons:
        daemon.close()


@pytest.fixture(scope="session")
def containerd(request: pytest.FixtureRequest) -> Iterator[Containerd]:
    """A standalone containerd on its own socket, driven with ctr."""
    if shutil.which("containerd") is None or shutil.which("ctr") is None:
        require_component(request.config, "needs containerd and ctr (apt-get install containerd)")
    if os.geteuid() != 0:
        require_component(request.config, "needs root to run containerd")
    with Containerd() as daemon:
        yield daemon


@pytest.fixture(scope="session")
def dockerd_on_containerd(
    request: pytest.FixtureRequest, registry: Registry, containerd: Containerd
) -> Iterator[DockerDaemon]:
    """Debian bookworm's dockerd 20.10 on the standalone ``containerd`` (1.6) through
    ``--containerd=<socket>``, as docker.service runs it next to containerd.service: images stay
    in Docker's classic store (``ctr -n moby images ls`` is empty), containers run in that
    containerd's ``moby`` namespace. Docker Hub names come from ``registry`` (as a mirror)."""
    _need_dockerd(request)
    with DockerDaemon(mirror=registry.host, extra_args=("--containerd", str(containerd.sock))) as d:
        yield d


BUILD_ROOTFS_DOCKER = REPO_DIR / "scripts" / "build-rootfs-docker"
ROOTFS_TOOLS = {"debootstrap": "debootstrap", "unshare": "util-linux", "nsenter": "util-linux"}


def _need_docker_rootfs(request: pytest.FixtureRequest) -> None:
    if os.geteuid() != 0:
        require_component(request.config, "needs root to build the trixie rootfs and run dockerd")
    missing = [f"{tool} ({pkg})" for tool, pkg in ROOTFS_TOOLS.items() if not shutil.which(tool)]
    if missing:
        require_component(request.config, f"needs {', '.join(missing)}: apt-get install them")


@pytest.fixture(scope="session")
def docker_rootfs(request: pytest.FixtureRequest) -> Path:
    """The cached trixie rootfs with Docker 26.1 and containerd 1.7 (scripts/build-rootfs-docker:
    built on first use per machine, about a minute; read-only, shared by every daemon)."""
    _need_docker_rootfs(request)
    result = subprocess.run(
        [str(BUILD_ROOTFS_DOCKER)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=1800,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            f"scripts/build-rootfs-docker failed (rc {result.returncode}):\n{result.stderr}"
        )
    path = Path(result.stdout.strip().splitlines()[-1])
    assert (path / "usr" / "sbin" / "dockerd").exists(), f"incomplete rootfs: {path}"
    return path


@pytest.fixture(scope="session")
def containerd_store_dockerd(
    docker_rootfs: Path, registry: Registry
) -> Iterator[ContainerdStoreDaemon]:
    """Docker 26.1 with the containerd image store (tests/testbed/containerd_store.py), shared by
    the session; Docker Hub names (``alpha:1.0``) come from ``registry`` (as a mirror)."""
    sweep_stale_containerd_stores()  # instances left by killed sessions (CI reuses the machine)
    with ContainerdStoreDaemon(docker_rootfs, mirror=registry.host) as daemon:
        yield daemon


@pytest.fixture
def fresh_containerd_store_dockerd(
    docker_rootfs: Path, registry: Registry
) -> Iterator[ContainerdStoreFactory]:
    """Starts private containerd-store daemons (own state) that a test may stop, kill or restart."""
    daemons: list[ContainerdStoreDaemon] = []

    def start(
        *,
        mirror: bool = True,
        daemon_config: Mapping[str, Any] | None = None,
        extra_args: Sequence[str] = (),
    ) -> ContainerdStoreDaemon:
        daemon = ContainerdStoreDaemon(
            docker_rootfs,
            mirror=registry.host if mirror else None,
            daemon_config=daemon_config,
            extra_args=extra_args,
        )
        daemons.append(daemon)
        daemon.start()
        return daemon

    yield start
    for daemon in daemons:
        daemon.close()


# The store contract (test_store_contract.py): one fixture per store, and CI's per-store summary.

_store_results: dict[str, list[str]] = {}


@pytest.fixture(scope="session")
def image_stores(request: pytest.FixtureRequest) -> StoreFactory:
    """Starts each store's daemons on first use (a store that can't start fails its own tests)."""
    started: dict[str, ImageStore] = {}

    def get(name: str) -> ImageStore:
        if name not in started:
            started[name] = _start_store(request, name)
        return started[name]

    return get


def _start_store(request: pytest.FixtureRequest, name: str) -> ImageStore:
    registry: Registry = request.getfixturevalue("registry")
    if name.startswith("containerd-"):
        containerd: Containerd = request.getfixturevalue("containerd")
        namespace = name.removeprefix("containerd-")
        return ContainerdStore(name, containerd, registry, namespace)
    if name == "docker-containerd-store":
        daemon = request.getfixturevalue("containerd_store_dockerd")
        return DockerStore(name, daemon.host, is_containerd_store=True)
    if name == "docker-classic":
        daemon = request.getfixturevalue("classic_store_dockerd")
        return DockerStore(name, daemon.host, is_containerd_store=False)
    if name == "docker-with-external-containerd":
        daemon = request.getfixturevalue("dockerd_on_containerd")
        return DockerStore(name, daemon.host, is_containerd_store=False)
    raise ValueError(f"unknown store {name}")


@pytest.fixture(scope="session")
def classic_store_dockerd(
    request: pytest.FixtureRequest, registry: Registry
) -> Iterator[DockerDaemon]:
    """A dockerd of its own for the store contract, which empties it (``dockerd`` is shared)."""
    _need_dockerd(request)
    with DockerDaemon(mirror=registry.host) as daemon:
        yield daemon


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Collects the store contract's outcomes by store (the test parameter)."""
    if "test_store_contract.py" not in report.nodeid or "[" not in report.nodeid:
        return
    store = report.nodeid.rsplit("[", 1)[1].rstrip("]")
    if report.when == "call" or report.outcome != "passed":
        _store_results.setdefault(store, []).append(report.outcome)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """One line per store: passed only if every contract test of it ran and passed."""
    if not _store_results:
        return
    terminalreporter.section("image store contract")
    for store in STORE_NAMES:
        outcomes = _store_results.get(store, [])
        if not outcomes:
            verdict = "NOT RUN"
        elif all(outcome == "passed" for outcome in outcomes):
            verdict = f"passed ({len(outcomes)} tests)"
        else:
            verdict = "FAILED: " + ", ".join(sorted(set(outcomes)))
        terminalreporter.write_line(f"{store:<34} {verdict}")
