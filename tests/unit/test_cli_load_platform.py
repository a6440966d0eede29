"""load-img into Docker: which platform it loads (issue 13, part 3); the real load is in
tests/integration/test_load_platform.py."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from forklift_boot import cli, config
from forklift_boot.cli.load_img import docker_load_platform

DOCKER = "linux/amd64"  # as EngineInfo.platform spells an x86_64 engine


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    """The warnings forklift-boot logs; on its own logger, since cli.main stops propagation."""
    handler = _Collect()
    logger = logging.getLogger("forklift_boot")
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


def settings(flag: str | None, **env: str) -> config.Settings:
    return config.load_settings(
        workspace=None,
        stage_store=None,
        cache=None,
        platform=flag,
        env={"HOME": "/nonexistent", **env},
    )


def test_docker_platform_by_default(warnings: list[str]) -> None:
    assert docker_load_platform(settings(None), DOCKER) == DOCKER
    assert warnings == []


def test_forklift_platform_chooses_and_warns_once(warnings: list[str]) -> None:
    chosen = docker_load_platform(settings(None, FORKLIFT_PLATFORM="linux/arm64/v8"), DOCKER)
    assert chosen == "linux/arm64"  # the canonical spelling, as --into containerd gets it
    assert warnings == [
        "loading linux/arm64 images into Docker, whose platform is linux/amd64 "
        "(--platform or FORKLIFT_PLATFORM chose them)"
    ]


def test_the_flag_beats_the_environment() -> None:
    chosen = settings("linux/arm/v7", FORKLIFT_PLATFORM="linux/arm64")
    assert docker_load_platform(chosen, DOCKER) == "linux/arm/v7"


@pytest.mark.parametrize("given", ["linux/amd64", "amd64", "x86_64", "linux/amd64/v1"])
def test_dockers_own_platform_however_spelled_is_no_warning(
    warnings: list[str], given: str
) -> None:
    assert docker_load_platform(settings(None, FORKLIFT_PLATFORM=given), DOCKER) == DOCKER
    assert warnings == []


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["--platform", "linux/sparkle"], {}),
        ([], {"FORKLIFT_PLATFORM": "linux/sparkle"}),
    ],
)
def test_a_bad_platform_is_a_usage_error_before_docker_is_asked(
    capsys: pytest.CaptureFixture[str], argv: list[str], env: dict[str, str]
) -> None:
    # No Docker answers there: before --platform counted on load-img, this failed on Docker (1).
    base = {"HOME": "/nonexistent", "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    code = cli.main(["load-img", "nginx:1.27", *argv], env={**base, **env})
    err = capsys.readouterr().err
    assert code == 2, err
    assert "--platform: invalid platform 'linux/sparkle': unknown architecture" in err
    assert "docker" not in err.lower()
