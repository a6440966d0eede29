"""The Docker engine the commands talk to, waited for under systemd."""

from __future__ import annotations

from forklift_boot.config import DEFAULT_DOCKER_HOST, Settings
from forklift_boot.stores.docker.engine import DockerEngine
from forklift_boot.systemd import SystemdManager

DOCKER_WAIT_SECONDS = 300


def docker_engine(settings: Settings) -> DockerEngine:
    """The Docker engine; as a systemd unit, first wait (bounded) for docker.service."""
    wait = None
    if settings.is_systemd_unit and settings.docker_host == DEFAULT_DOCKER_HOST:

        def wait() -> None:
            SystemdManager().wait_active("docker.service", DOCKER_WAIT_SECONDS)

    return DockerEngine(settings.docker_host, before_connect=wait)
