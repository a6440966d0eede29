"""load-img --platform into a real dockerd of another platform (issue 13, part 3).

An OS image build fills an arm64 rootfs's Docker from an amd64 machine: the cache holds the
foreign platform only, and every ref must resolve in the engine as written. The image is the
test bed's two-platform build (tests/testbed/multi_platform.py: FROM scratch, no emulation),
cached from the loopback registry with ``cache-img --from registry --platform``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from forklift_boot import cli
from tests.testbed import images
from tests.testbed.dockerd import DaemonFactory
from tests.testbed.multi_platform import BuiltMulti

pytestmark = [pytest.mark.docker, pytest.mark.registry]

Capture = pytest.CaptureFixture[str]


def run(capsys: Capture, *argv: str, env: dict[str, str]) -> tuple[int, str, str]:
    code = cli.main(list(argv), env={"HOME": "/nonexistent", **env})
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_load_img_platform_into_a_docker_of_another_platform(
    capsys: Capture, tmp_path: Path, built_multi: BuiltMulti, fresh_dockerd: DaemonFactory
) -> None:
    registry = built_multi.registry
    digest = built_multi.index_digest
    local = f"{registry.host}/{built_multi.repo}"
    refs = (
        "fbmulti:1.0",
        f"fbmulti@{digest}",
        f"docker.io/library/fbmulti:1.0@{digest}",
        f"{local}:1.0",
        f"{local}@{digest}",
        f"{local}:1.0@{digest}",
    )
    daemon = fresh_dockerd()
    client = daemon.client()
    native = {"x86_64": "amd64", "aarch64": "arm64"}[client.info()["Architecture"]]
    foreign = {"amd64": "arm64", "arm64": "amd64"}[native]
    foreign_image = {"amd64": built_multi.amd64, "arm64": built_multi.arm64}[foreign]
    cache = tmp_path / "cache"
    code, _, err = run(
        capsys,
        "cache-img", "--from", "registry", "--cache-dir", str(cache),
        "--platform", f"linux/{foreign}", "--registry-mirror", registry.url, *refs,
        env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"},
    )  # fmt: skip
    assert code == 0, err
    host = {"DOCKER_HOST": daemon.host}
    pinned = [ref for ref in refs if "@" in ref]  # these name the index, so a platform in it
    # The test bed's index writes arm64 with variant v8, as buildx does.
    cached = {"amd64": "linux/amd64", "arm64": "linux/arm64/v8"}[foreign]
    with registry.offline():
        # By default Docker's own platform, which the cache lacks.
        code, _, err = run(capsys, "load-img", "--cache-dir", str(cache), *pinned, env=host)
        assert code == 3, err
        assert "(0 loaded" in err
        lacks = f"the cache has no linux/{native} manifest (cached: {cached})"
        assert err.count(lacks) == len(pinned), err
        assert "whose platform is" not in err

        code, _, err = run(
            capsys,
            "load-img", "--cache-dir", str(cache), "--platform", f"linux/{foreign}", *refs,
            env=host,
        )  # fmt: skip
        assert code == 0, err
        warning = f"loading linux/{foreign} images into Docker, whose platform is linux/{native}"
        assert err.count(warning) == 1, err
        client.close()
        client = daemon.client()  # dockerd was restarted to record the digest references
        for ref in refs:
            info = images.inspect(client, ref)  # GET /images/<ref>/json
            assert (info["Id"], info["Architecture"]) == (foreign_image.image_id, foreign), ref

        # FORKLIFT_PLATFORM chooses it too: everything resolves, nothing is loaded.
        code, _, err = run(
            capsys,
            "load-img", "--cache-dir", str(cache), *refs,
            env={**host, "FORKLIFT_PLATFORM": f"linux/{foreign}"},
        )  # fmt: skip
        assert code == 0, err
        assert "0 loaded" in err
        assert err.count(warning) == 1, err
    client.close()
