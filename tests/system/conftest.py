"""Fixtures for system tests in a booted systemd (tests/testbed/nspawn.py, docs/testbed.md).

Tests that use them carry ``@pytest.mark.systemd``. They need root, systemd-nspawn (package
systemd-container), debootstrap and nsenter; without them the tests skip on a laptop and fail
in CI (``require_component``). The rootfs is built once per machine by scripts/build-rootfs
(about 1-2 minutes; cached under /var/cache/forklift-boot/rootfs by a hash of that script).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO_DIR, require_component
from tests.testbed.nspawn import BootedContainer, host_network_state, sweep_stale

BUILD_ROOTFS = REPO_DIR / "scripts" / "build-rootfs"
TOOLS = {
    "systemd-nspawn": "systemd-container",
    "debootstrap": "debootstrap",
    "nsenter": "util-linux",
    "journalctl": "systemd",
}


def _need_nspawn(config: pytest.Config) -> None:
    if os.geteuid() != 0:
        require_component(config, "needs root to build the rootfs and run systemd-nspawn")
    missing = [f"{tool} ({pkg})" for tool, pkg in TOOLS.items() if shutil.which(tool) is None]
    if missing:
        require_component(config, f"needs {', '.join(missing)}: apt-get install the packages")


@pytest.fixture(scope="session")
def rootfs(request: pytest.FixtureRequest) -> Path:
    """The cached bookworm rootfs (read-only: boot copies of it); built on first use."""
    _need_nspawn(request.config)
    result = subprocess.run(
        [str(BUILD_ROOTFS)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=1800,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"scripts/build-rootfs failed (rc {result.returncode}):\n{result.stderr}")
    path = Path(result.stdout.strip().splitlines()[-1])
    assert (path / "usr" / "sbin" / "dockerd").exists(), f"incomplete rootfs: {path}"
    return path


@pytest.fixture(scope="session")
def host_network_before(rootfs: Path) -> dict[str, set[str]]:
    """The host's interfaces and firewall rules before the container's dockerd starts."""
    return host_network_state()


@pytest.fixture(scope="session")
def booted(
    rootfs: Path,
    host_network_before: dict[str, set[str]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[BootedContainer]:
    """A booted copy of the rootfs, shared by the session: tests may reboot it but must leave
    it running. ``art_dir`` (host) is bind-mounted read-only at /srv/art inside."""
    sweep_stale()  # copies left by killed sessions (CI reuses the machine)
    with BootedContainer(rootfs, art_dir=tmp_path_factory.mktemp("art")) as container:
        yield container


# The loopback registry and the images published to it (tests/integration/conftest.py).
from tests.integration.conftest import (  # noqa: E402
    docker_client,
    dockerd,
    published_images,
    registry,
)

__all__ = ["booted", "docker_client", "dockerd", "published_images", "registry", "rootfs"]
