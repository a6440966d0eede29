"""Docker 26 with its classic store, copied out through ``docker save`` (a remote DOCKER_HOST):
a layer the cache already has is skipped as it passes, never hashed, compressed or written.

Docker 25 and later save the classic store in the OCI layout, each uncompressed layer named
``blobs/sha256/<diff ID>``; Docker 20.10 to 24 name it by a v1 ID (test_docker_save_stream.py).
Docker 26 comes from trixie's rootfs (tests/testbed/containerd_store.py) with the containerd
image store switched off.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from forklift_boot import cli
from forklift_boot.archive import docker_save, layer_blobs
from forklift_boot.archive.layer_blobs import StoredLayer
from forklift_boot.cache import ImageCache
from forklift_boot.cache.verify import verify_cache
from tests.testbed import images
from tests.testbed.containerd_store import ContainerdStoreFactory
from tests.testbed.images import PublishedImage
from tests.testbed.socket_proxy import SocketProxy

pytestmark = [pytest.mark.docker, pytest.mark.registry]


@pytest.fixture
def docker26_classic(
    fresh_containerd_store_dockerd: ContainerdStoreFactory,
    published_images: dict[str, PublishedImage],
) -> Iterator[tuple[str, docker.DockerClient]]:
    """(a tcp:// DOCKER_HOST, a client) of Docker 26 on its classic store, alpha and beta pulled."""
    daemon = fresh_containerd_store_dockerd(
        daemon_config={"features": {"containerd-snapshotter": False}}
    )
    client = daemon.client()
    info = client.info()
    assert info["ServerVersion"].startswith("26.")
    assert info["Driver"] == "overlay2"  # not the containerd snapshotter
    for name in ("alpha", "beta"):
        images.pull(client, published_images[name])
    proxy = SocketProxy(daemon.sock, tcp=True)  # remote: cache-img uses docker save
    try:
        yield proxy.host, client
    finally:
        proxy.close()
        client.close()


def test_a_docker_26_save_passes_known_layers_unread(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    docker26_classic: tuple[str, docker.DockerClient],
    published_images: dict[str, PublishedImage],
) -> None:
    host, _ = docker26_classic
    alpha, beta = published_images["alpha"], published_images["beta"]
    stored: list[str] = []  # diff IDs of the layers read into store_layer
    real = layer_blobs.store_layer

    def counting(*args: Any, **kwargs: Any) -> StoredLayer:
        layer = real(*args, **kwargs)
        stored.append(layer.diff_id)
        return layer

    monkeypatch.setattr(docker_save, "store_layer", counting)
    cache = tmp_path / "cache"

    def cache_img(ref: str) -> None:
        argv = ["cache-img", "--cache-dir", str(cache), "--compress", "gzip", ref]
        code = cli.main(argv, env={"DOCKER_HOST": host, "HOME": "/nonexistent"})
        assert code == 0, capsys.readouterr().err

    cache_img(alpha.tag_ref)
    assert sorted(stored) == sorted(set(alpha.diff_ids))
    stored.clear()
    cache_img(beta.tag_ref)
    # Worked out from the images as built: beta shares busybox and /etc with alpha.
    shared = set(alpha.diff_ids) & set(beta.diff_ids)
    assert len(shared) >= 2
    assert sorted(stored) == sorted(set(beta.diff_ids) - shared)
    with ImageCache(cache).reading() as reader:
        assert verify_cache(reader) == []
    entries = json.loads((cache / "index.json").read_text())["manifests"]
    names = {entry["annotations"]["io.containerd.image.name"] for entry in entries}
    assert names == {alpha.full_tag_ref, beta.full_tag_ref}
