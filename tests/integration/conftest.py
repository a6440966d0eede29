"""Fixtures for tests against a real dockerd and docker-registry (tests/testbed).

Tests that use them carry ``@pytest.mark.docker`` and/or ``@pytest.mark.registry``. Missing
components skip on a laptop and fail in CI (``require_component``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import docker
import pytest

from tests.conftest import require_component
from tests.testbed import images
from tests.testbed.containerd import Containerd
from tests.testbed.dockerd import DaemonFactory, DockerDaemon
from tests.testbed.images import PublishedImage
from tests.testbed.registry import Registry


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
