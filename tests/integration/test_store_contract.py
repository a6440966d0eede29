"""One contract, every image store (issue 6): Docker's classic store, a dockerd that runs its
containers in a standalone containerd (``--containerd=``), Docker 26 with the containerd image
store, and a standalone containerd in the ``default`` and ``k8s.io`` namespaces.

Each: put the four published images in the store from the loopback registry, cache-img out of
it, remove them, load-img with the registry stopped; then every ref as written (tag, digest,
``name:tag@sha256:``, short and full) resolves as that store's users resolve it, and a rerun
changes nothing. CI's summary lists each store as passed (tests/integration/conftest.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from forklift_boot import cli
from tests.testbed.images import PublishedImage
from tests.testbed.registry import Registry
from tests.testbed.stores import STORE_NAMES, ImageStore

pytestmark = [pytest.mark.docker, pytest.mark.containerd, pytest.mark.registry]

Capture = pytest.CaptureFixture[str]


@pytest.fixture(params=STORE_NAMES)
def store(
    request: pytest.FixtureRequest, published_images: dict[str, PublishedImage]
) -> Iterator[ImageStore]:
    """The store named by the parameter, emptied before and after the test."""
    chosen: ImageStore = request.getfixturevalue("image_stores")(request.param)
    chosen.remove_all(published_images.values())
    yield chosen
    chosen.remove_all(published_images.values())


def run(capsys: Capture, store: ImageStore, *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv), env={"DOCKER_HOST": store.docker_host, "HOME": "/nonexistent"})
    return code, capsys.readouterr().err


def every_ref(published: dict[str, PublishedImage]) -> list[str]:
    return [ref for image in published.values() for ref in image.refs]


def test_round_trip_every_ref_resolves_offline(
    capsys: Capture,
    tmp_path: Path,
    store: ImageStore,
    published_images: dict[str, PublishedImage],
    registry: Registry,
) -> None:
    refs = every_ref(published_images)
    assert len(refs) == 3 * 6 + 3  # three Docker Hub images in 6 spellings, delta in 3
    store.put(published_images.values())
    cache = str(tmp_path / "cache")
    code, err = run(capsys, store, "cache-img", *store.source_args, "--cache-dir", cache, *refs)
    assert code == 0, err
    assert "cached 12/12 images" in err, err
    store.remove_all(published_images.values())
    with registry.offline():
        code, err = run(capsys, store, "load-img", *store.target_args, "--cache-dir", cache, *refs)
        assert code == 0, err
        store.assert_resolves(published_images.values(), refs)
        before = store.present()
        code, err = run(capsys, store, "load-img", *store.target_args, "--cache-dir", cache, *refs)
        assert code == 0, err
        assert "(0 loaded, 0 tagged, 12 already there)" in err, err
        assert store.present() == before
    assert run(capsys, store, "cache", "verify", "--cache-dir", cache)[0] == 0


def test_cache_holds_the_registry_manifests_and_blobs(
    capsys: Capture,
    tmp_path: Path,
    store: ImageStore,
    published_images: dict[str, PublishedImage],
    registry: Registry,
) -> None:
    """Stores that pulled from a registry keep its manifest bytes; the classic store's export
    has no manifest, and forklift-boot writes (and compresses) one of its own."""
    store.put(published_images.values())
    cache_dir = tmp_path / "cache"
    refs = [image.tag_ref for image in published_images.values()]
    code, err = run(
        capsys, store, "cache-img", *store.source_args, "--cache-dir", str(cache_dir), *refs
    )
    assert code == 0, err
    index = json.loads((cache_dir / "index.json").read_text())
    by_name = {
        entry["annotations"]["io.containerd.image.name"]: entry for entry in index["manifests"]
    }
    registry_blobs: dict[str, int] = {}  # digest -> size, as the registry serves them
    for image in published_images.values():
        entry = by_name[image.full_tag_ref]
        body = registry.manifest(image.registry_repo, image.tag)
        digest = registry.manifest_digest(image.registry_repo, image.tag)
        document = json.loads(body)
        registry_blobs[digest] = len(body)
        for blob in [document["config"], *document["layers"]]:
            registry_blobs[blob["digest"]] = blob["size"]
        if store.keeps_registry_manifests:
            assert entry["digest"] == digest
            assert (cache_dir / "blobs" / "sha256" / digest[7:]).read_bytes() == body
        else:
            assert entry["digest"] != digest
    blobs = {
        f"sha256:{path.name}": path.stat().st_size
        for path in (cache_dir / "blobs" / "sha256").iterdir()
    }
    if store.keeps_registry_manifests:
        # Exactly the registry's compressed blobs, each once (the images share a layer).
        assert blobs == registry_blobs
    # Configs keep their bytes everywhere: image IDs survive.
    assert {image.image_id for image in published_images.values()} <= set(blobs)
