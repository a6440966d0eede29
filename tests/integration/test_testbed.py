"""The test bed itself: shared layers, real digests through the mirror, offline means offline."""

from __future__ import annotations

from pathlib import Path

import docker
import pytest
from docker.errors import APIError

from tests.testbed import images
from tests.testbed.dockerd import DaemonFactory
from tests.testbed.images import PublishedImage
from tests.testbed.registry import Registry

pytestmark = [pytest.mark.docker, pytest.mark.registry]


def test_images_share_base_layers(published_images: dict[str, PublishedImage]) -> None:
    alpha, beta, gamma, delta = (published_images[n] for n in ("alpha", "beta", "gamma", "delta"))
    # busybox in every image; the /etc layer in alpha, beta and delta; the rest is each image's own.
    assert {img.diff_ids[0] for img in published_images.values()} == {alpha.diff_ids[0]}
    assert alpha.diff_ids[:2] == beta.diff_ids[:2] == delta.diff_ids[:2]
    assert gamma.diff_ids[1] not in alpha.diff_ids
    own = [img.diff_ids[-1] for img in published_images.values()] + [delta.diff_ids[2]]
    assert len(set(own)) == 5
    assert len({img.image_id for img in published_images.values()}) == 4
    assert len({img.registry_digest for img in published_images.values()}) == 4


@pytest.mark.parametrize("name", ["alpha", "gamma", "delta"])
def test_repo_digest_is_the_registry_digest(
    published_images: dict[str, PublishedImage],
    docker_client: docker.DockerClient,
    registry: Registry,
    name: str,
) -> None:
    image = published_images[name]
    info = images.inspect(docker_client, image.tag_ref)
    assert info["RepoTags"] == [image.tag_ref]
    assert info["RepoDigests"] == [image.digest_ref]
    assert registry.manifest_digest(image.registry_repo, image.tag) == image.registry_digest
    assert image.registry_digest != image.image_id
    for ref in image.refs:
        assert images.inspect(docker_client, ref)["Id"] == image.image_id, ref


def test_short_hub_names_came_through_the_mirror(
    published_images: dict[str, PublishedImage], registry: Registry
) -> None:
    log = registry.log_path.read_text()
    for name in ("alpha", "beta", "gamma"):
        repo = published_images[name].registry_repo
        assert f'"GET /v2/{repo}/manifests/' in log, repo
    assert published_images["alpha"].full_tag_ref == "docker.io/library/alpha:1.0"
    assert published_images["gamma"].full_digest_ref.startswith("docker.io/fbtest/gamma@sha256:")


def test_pull_fails_once_removed_and_registry_stopped(
    published_images: dict[str, PublishedImage], registry: Registry, fresh_dockerd: DaemonFactory
) -> None:
    client = fresh_dockerd().client()
    alpha, delta = published_images["alpha"], published_images["delta"]
    for image in (alpha, delta):
        images.pull(client, image)
    images.remove_images(client, [alpha.tag_ref, delta.tag_ref])
    with registry.offline():
        for image in (alpha, delta):
            # Hub names: the mirror is refused, dockerd falls back to registry-1.docker.io (no DNS).
            with pytest.raises(APIError, match=r"registry-1\.docker\.io|connection refused"):
                images.pull(client, image)
    images.pull(client, alpha)  # and back online


def test_daemon_restarts_with_the_same_argv(
    published_images: dict[str, PublishedImage], fresh_dockerd: DaemonFactory
) -> None:
    daemon = fresh_dockerd()
    alpha = published_images["alpha"]
    images.pull(daemon.client(), alpha)
    argv, first_pid = daemon.argv, daemon.pid
    assert Path(f"/proc/{first_pid}/cmdline").read_bytes().split(b"\0")[:-1] == [
        arg.encode() for arg in argv
    ]
    daemon.restart()
    assert (daemon.argv, daemon.is_running()) == (argv, True)
    assert daemon.pid != first_pid
    daemon.kill()  # a crash: the image store must survive it too
    assert not daemon.is_running()
    daemon.start()
    assert images.inspect(daemon.client(), alpha.digest_ref)["Id"] == alpha.image_id
