"""Docker's containerd image store beyond the common contract (test_store_contract.py): images
pulled as a multi-platform index, and caches carried across stores.

Docker 26 (trixie's docker.io) runs with the containerd image store from a debootstrapped
rootfs; image IDs there are the digest of what a name points at (index or manifest), and a
digest ref resolves only to an image whose target has that digest (docs/testbed.md).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from forklift_boot import cli
from tests.testbed import images
from tests.testbed.images import PublishedImage
from tests.testbed.multi_platform import BuiltMulti
from tests.testbed.registry import Registry
from tests.testbed.stores import DockerStore, ImageStore

pytestmark = [pytest.mark.docker, pytest.mark.registry]

Capture = pytest.CaptureFixture[str]


def run(capsys: Capture, host: str, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv), env={"DOCKER_HOST": host, "HOME": "/nonexistent"})
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def every_ref(published: dict[str, PublishedImage]) -> list[str]:
    return [ref for image in published.values() for ref in image.refs]


def cache_entries(cache: Path) -> dict[str, dict[str, Any]]:
    index = json.loads((cache / "index.json").read_text())
    return {e["annotations"]["io.containerd.image.name"]: e for e in index["manifests"]}


def blobs_in(cache: Path) -> set[str]:
    return {f"sha256:{path.name}" for path in (cache / "blobs" / "sha256").iterdir()}


def layer_digests(manifest: bytes) -> set[str]:
    document = json.loads(manifest)
    return {document["config"]["digest"]} | {layer["digest"] for layer in document["layers"]}


@pytest.fixture
def containerd_store(image_stores: Any, published_images: dict[str, PublishedImage]) -> DockerStore:
    store: DockerStore = image_stores("docker-containerd-store")
    store.remove_all(published_images.values())
    return store


@dataclass(frozen=True)
class TwoStores:
    classic: DockerStore
    containerd: DockerStore


@pytest.fixture
def two_stores(
    image_stores: Any, containerd_store: DockerStore, published_images: dict[str, PublishedImage]
) -> TwoStores:
    classic: DockerStore = image_stores("docker-classic")
    classic.remove_all(published_images.values())
    return TwoStores(classic, containerd_store)


def remove_multi(client: docker.DockerClient, built: BuiltMulti) -> None:
    for ref in ("fbmulti:1.0", f"fbmulti@{built.index_digest}"):
        with contextlib.suppress(docker.errors.ImageNotFound):
            client.api.remove_image(ref, force=True)


@pytest.fixture
def multi_client(
    containerd_store: DockerStore, built_multi: BuiltMulti
) -> Iterator[docker.DockerClient]:
    """A client of the containerd store without fbmulti, before and after the test."""
    client = containerd_store.client()
    remove_multi(client, built_multi)
    yield client
    remove_multi(client, built_multi)
    client.close()


def test_a_pulled_index_is_cached_as_it_is_and_its_digest_resolves_after_a_load(
    capsys: Capture,
    tmp_path: Path,
    containerd_store: DockerStore,
    built_multi: BuiltMulti,
    multi_client: docker.DockerClient,
) -> None:
    client = multi_client
    registry = built_multi.registry
    digest = built_multi.index_digest
    images.pull_ref(client, "fbmulti:1.0")
    # The store names the index: its digest is the image ID (the registry's, not ours).
    assert images.inspect(client, "fbmulti:1.0")["Id"] == digest
    refs = ["fbmulti:1.0", f"fbmulti@{digest}", f"fbmulti:1.0@{digest}"]
    cache = tmp_path / "cache"
    code, _, err = run(
        capsys, containerd_store.docker_host, "cache-img", "--cache-dir", str(cache), *refs
    )
    assert code == 0, err
    entry = cache_entries(cache)["docker.io/library/fbmulti:1.0"]
    assert entry["digest"] == digest
    amd64 = built_multi.manifests["amd64"]
    # The index byte for byte and this machine's platform only: nothing of arm64.
    assert blobs_in(cache) == {digest, amd64.digest} | layer_digests(amd64.data)
    remove_multi(client, built_multi)
    with registry.offline():
        code, _, err = run(
            capsys, containerd_store.docker_host, "load-img", "--cache-dir", str(cache), *refs
        )
        assert code == 0, err
        for ref in refs:
            assert images.inspect(client, ref)["Id"] == digest, ref
            container = client.containers.create(ref, command=["/bin/busybox", "true"])
            container.remove()


def test_an_index_with_two_pulled_platforms_is_cached_for_this_one(
    capsys: Capture,
    tmp_path: Path,
    containerd_store: DockerStore,
    built_multi: BuiltMulti,
    multi_client: docker.DockerClient,
) -> None:
    """Docker 26 saves every platform it has; the cache keeps the device's only, unless
    --all-platforms asks for all."""
    client = multi_client
    images.pull_ref(client, "fbmulti:1.0", platform="linux/arm64")
    images.pull_ref(client, "fbmulti:1.0")
    cache = tmp_path / "cache"
    code, _, err = run(
        capsys, containerd_store.docker_host, "cache-img", "--cache-dir", str(cache), "fbmulti:1.0"
    )
    assert code == 0, err
    amd64, arm64 = built_multi.manifests["amd64"], built_multi.manifests["arm64"]
    one = {built_multi.index_digest, amd64.digest} | layer_digests(amd64.data)
    assert blobs_in(cache) == one
    assert (
        run(capsys, containerd_store.docker_host, "cache", "verify", "--cache-dir", str(cache))[0]
        == 0
    )
    every = tmp_path / "every"
    code, _, err = run(
        capsys,
        containerd_store.docker_host,
        "cache-img",
        "--all-platforms",
        "--cache-dir",
        str(every),
        "fbmulti:1.0",
    )
    assert code == 0, err
    assert blobs_in(every) == one | {arm64.digest} | layer_digests(arm64.data)


def test_classic_cache_into_the_containerd_store_tags_resolve_digests_reported(
    capsys: Capture,
    tmp_path: Path,
    two_stores: TwoStores,
    published_images: dict[str, PublishedImage],
    registry: Registry,
) -> None:
    """A cache filled from the classic store holds Docker's export, not the registry's
    manifests: in the containerd image store its tag refs resolve, its digest refs can't."""
    classic_store, containerd_store = two_stores.classic, two_stores.containerd
    refs = every_ref(published_images)
    classic_store.put(published_images.values())
    cache = str(tmp_path / "cache")
    code, _, err = run(capsys, classic_store.docker_host, "cache-img", "--cache-dir", cache, *refs)
    assert code == 0, err
    with registry.offline():
        code, out, err = run(
            capsys,
            containerd_store.docker_host,
            "load-img",
            "--cache-dir",
            cache,
            "--json",
            *refs,
        )
    assert code == 3, err  # some refs do not resolve: a failure, said once per image
    report = json.loads(out)
    digest_refs = {ref for ref in refs if "@" in ref}
    client = containerd_store.client()
    for image in published_images.values():
        tag_refs = [ref for ref in image.refs if "@" not in ref]
        ids = {images.inspect(client, ref)["Id"] for ref in tag_refs}
        assert len(ids) == 1, (image.name, ids)  # every tag spelling: one image
        info = images.inspect(client, tag_refs[0])
        # The same filesystem as the published image (its layers' diff IDs, from Docker's build).
        assert tuple(info["RootFS"]["Layers"]) == image.diff_ids
        container = client.containers.create(tag_refs[0], command=["/bin/busybox", "true"])
        container.remove()
        for ref in image.refs:
            if "@" in ref:
                with pytest.raises(docker.errors.ImageNotFound):
                    client.images.get(ref)
    unresolved = {
        ref: outcome["detail"]
        for outcome in report["images"]
        if outcome["status"] == "unresolved"
        for ref in outcome["refs"]
        if "@" in ref
    }
    assert set(unresolved) == digest_refs
    assert all("not the registry's manifest" in detail for detail in unresolved.values())
    client.close()


def test_containerd_store_cache_into_the_classic_store_every_ref_resolves(
    capsys: Capture,
    tmp_path: Path,
    two_stores: TwoStores,
    published_images: dict[str, PublishedImage],
    registry: Registry,
) -> None:
    classic_store, containerd_store = two_stores.classic, two_stores.containerd
    refs = every_ref(published_images)
    containerd_store.put(published_images.values())
    cache = str(tmp_path / "cache")
    code, _, err = run(
        capsys, containerd_store.docker_host, "cache-img", "--cache-dir", cache, *refs
    )
    assert code == 0, err
    with registry.offline():
        code, _, err = run(
            capsys, classic_store.docker_host, "load-img", "--cache-dir", cache, *refs
        )
        assert code == 0, err
        store: ImageStore = classic_store
        store.assert_resolves(published_images.values(), refs)


def test_shared_layers_are_sent_once(
    capsys: Capture,
    tmp_path: Path,
    containerd_store: DockerStore,
    published_images: dict[str, PublishedImage],
    registry: Registry,
) -> None:
    """The store keeps what a load sent: a layer shared by later images is not sent again."""
    refs = [image.tag_ref for image in published_images.values()]
    containerd_store.put(published_images.values())
    cache = tmp_path / "cache"
    code, _, err = run(
        capsys, containerd_store.docker_host, "cache-img", "--cache-dir", str(cache), *refs
    )
    assert code == 0, err
    containerd_store.remove_all(published_images.values())
    with registry.offline():
        code, out, err = run(
            capsys,
            containerd_store.docker_host,
            "load-img",
            "--json",
            "--cache-dir",
            str(cache),
            *refs,
        )
    assert code == 0, err
    assert "sending every layer" not in err, err
    # Each blob of the cache (the four images' manifests, configs and layers, each once).
    every_blob = sum(path.stat().st_size for path in (cache / "blobs" / "sha256").iterdir())
    assert json.loads(out)["bytes_written"] == every_blob
    containerd_store.assert_resolves(published_images.values(), refs)
    containerd_store.remove_all(published_images.values())
