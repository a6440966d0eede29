"""cache-img takes blobs from containerd's content store directory (issue 12): a standalone
containerd (``--from containerd``, its root found by introspection) and Docker 26 with the
containerd image store (``--from docker --containerd-root``: Docker does not report it).

The cache's layers are hard links of the content store's files (same inode, two links) when
both are on one mount; the cache holds exactly the registry's blobs byte for byte; removing the
images and the engine's garbage collection leave the cache intact and loadable with the registry
stopped; across mounts (a tmpfs cache) and with ``--link=false`` the layers are copies; ``cache
verify`` finds a block damaged in the shared file; at most 1 MB is written per image.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from forklift_boot import cli
from forklift_boot.config import dpkg_architecture
from forklift_boot.images import Wanted
from forklift_boot.platforms import default_platform
from forklift_boot.refs import parse_image_ref
from forklift_boot.stores.containerd.ctr import Ctr
from forklift_boot.stores.containerd.source import ContainerdSource
from forklift_boot.stores.docker.engine import DockerEngine
from forklift_boot.stores.docker.source import DockerSource
from tests.testbed import faults, images
from tests.testbed.containerd_store import ContainerdStoreDaemon
from tests.testbed.images import PublishedImage
from tests.testbed.multi_platform import BuiltMulti
from tests.testbed.registry import Registry
from tests.testbed.stores import NO_DOCKER, ImageStore

pytestmark = [pytest.mark.docker, pytest.mark.containerd, pytest.mark.registry]

Capture = pytest.CaptureFixture[str]

CONTENT_DIR = "io.containerd.content.v1.content"
MB = 1 << 20
STORES = ("containerd-default", "docker-containerd-store")


@dataclass(frozen=True)
class LinkedStore:
    store: ImageStore
    root: Path  # containerd's root directory, as the host sees it
    source_args: tuple[str, ...]  # cache-img's, with --containerd-root where Docker needs it

    def content_path(self, digest: str) -> Path:
        return self.root / CONTENT_DIR / "blobs" / "sha256" / digest.removeprefix("sha256:")


@pytest.fixture(params=STORES)
def linked(
    request: pytest.FixtureRequest, published_images: dict[str, PublishedImage]
) -> Iterator[LinkedStore]:
    """The store with the published images pulled from the registry; emptied afterwards."""
    store: ImageStore = request.getfixturevalue("image_stores")(request.param)
    store.remove_all(published_images.values())
    if request.param == "docker-containerd-store":
        daemon: ContainerdStoreDaemon = request.getfixturevalue("containerd_store_dockerd")
        root = daemon.containerd_root
        args = (*store.source_args, "--containerd-root", str(root))
    else:
        root = request.getfixturevalue("containerd").dir / "root"
        args = store.source_args  # containerd says where its content store is
    store.put(published_images.values())
    yield LinkedStore(store, root, args)
    store.remove_all(published_images.values())


def run(capsys: Capture, store: ImageStore, *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv), env={"DOCKER_HOST": store.docker_host, "HOME": "/nonexistent"})
    return code, capsys.readouterr().err


def written_bytes() -> int:
    """This process's bytes sent to storage so far (/proc/self/io, write_bytes)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == "write_bytes":
            return int(value)
    raise AssertionError("no write_bytes in /proc/self/io")


def registry_blobs(
    registry: Registry, published: dict[str, PublishedImage]
) -> dict[str, tuple[str, str]]:
    """digest -> (repository, kind) of every blob the registry serves for the images: each
    manifest, config and layer."""
    blobs: dict[str, tuple[str, str]] = {}
    for image in published.values():
        repo = image.registry_repo
        body = registry.manifest(repo, image.tag)
        blobs[registry.manifest_digest(repo, image.tag)] = (repo, "manifest")
        document = json.loads(body)
        blobs[document["config"]["digest"]] = (repo, "config")
        for layer in document["layers"]:
            blobs[layer["digest"]] = (repo, "layer")
    return blobs


def registry_bytes(registry: Registry, repo: str, kind: str, digest: str) -> bytes:
    path = "manifests" if kind == "manifest" else "blobs"
    with urllib.request.urlopen(f"{registry.url}/v2/{repo}/{path}/{digest}", timeout=10) as r:
        data: bytes = r.read()
    return data


def cache_blobs(cache: Path) -> dict[str, os.stat_result]:
    return {f"sha256:{p.name}": p.lstat() for p in (cache / "blobs" / "sha256").iterdir()}


def config_of(manifest: bytes) -> str:
    digest: str = json.loads(manifest)["config"]["digest"]
    return digest


def layers_of(manifest: bytes) -> set[str]:
    return {layer["digest"] for layer in json.loads(manifest)["layers"]}


def tag_refs(published: dict[str, PublishedImage]) -> list[str]:
    return [image.tag_ref for image in published.values()]


def wait_collected(linked: LinkedStore, digests: list[str], timeout: float = 30) -> None:
    """Until the engine's garbage collector has unlinked every one of ``digests``."""
    deadline = time.monotonic() + timeout
    while any(linked.content_path(digest).exists() for digest in digests):
        assert time.monotonic() < deadline, "the engine kept the blobs after the images went"
        time.sleep(0.1)


def test_layers_are_the_content_stores_files_and_outlive_the_engines_copy(
    capsys: Capture,
    tmp_path: Path,
    linked: LinkedStore,
    published_images: dict[str, PublishedImage],
    registry: Registry,
) -> None:
    store = linked.store
    cache = tmp_path / "cache"
    expected = registry_blobs(registry, published_images)
    before = written_bytes()
    code, err = run(
        capsys,
        store,
        "cache-img",
        *linked.source_args,
        "--cache-dir",
        str(cache),
        *tag_refs(published_images),
    )
    written = written_bytes() - before
    assert code == 0, err
    assert "exporting it instead" not in err, err
    blobs = cache_blobs(cache)
    # Exactly the registry's blobs, byte for byte.
    assert set(blobs) == set(expected)
    for digest, (repo, kind) in expected.items():
        data = (cache / "blobs" / "sha256" / digest[7:]).read_bytes()
        assert data == registry_bytes(registry, repo, kind, digest), (kind, digest)
    layers = [digest for digest, (_, kind) in expected.items() if kind == "layer"]
    assert layers
    for digest in layers:
        shared = linked.content_path(digest).stat()
        assert (blobs[digest].st_dev, blobs[digest].st_ino) == (shared.st_dev, shared.st_ino)
        assert blobs[digest].st_nlink >= 2
    # Nothing but the small blobs and the index is written: at most 1 MB per image.
    assert written <= MB * len(published_images), written

    store.remove_all(published_images.values())
    wait_collected(linked, layers)
    for digest in layers:
        assert cache_blobs(cache)[digest].st_nlink == 1
    code, err = run(capsys, store, "cache", "verify", "--cache-dir", str(cache))
    assert code == 0, err
    with registry.offline():
        code, err = run(
            capsys,
            store,
            "load-img",
            *store.target_args,
            "--cache-dir",
            str(cache),
            *tag_refs(published_images),
        )
        assert code == 0, err
        store.assert_resolves(published_images.values(), tag_refs(published_images))


@pytest.mark.parametrize("how", ["tmpfs", "link=false"])
def test_across_mounts_or_with_link_false_layers_are_copies(
    capsys: Capture,
    tmp_path: Path,
    linked: LinkedStore,
    published_images: dict[str, PublishedImage],
    *,
    registry: Registry,
    how: str,
) -> None:
    if how == "tmpfs":
        cache_parent = Path(tempfile.mkdtemp(prefix="fb-links-", dir="/dev/shm"))
        assert cache_parent.stat().st_dev != linked.root.stat().st_dev
        extra: tuple[str, ...] = ()
    else:
        cache_parent = tmp_path
        extra = ("--link=false",)
    try:
        cache = cache_parent / "cache"
        code, err = run(
            capsys,
            linked.store,
            "cache-img",
            *linked.source_args,
            *extra,
            "--cache-dir",
            str(cache),
            *tag_refs(published_images),
        )
        assert code == 0, err
        assert "exporting it instead" not in err, err
        expected = registry_blobs(registry, published_images)
        blobs = cache_blobs(cache)
        assert set(blobs) == set(expected)
        for digest, (_, kind) in expected.items():
            if kind != "layer":
                continue
            assert blobs[digest].st_nlink == 1, digest
            assert blobs[digest].st_ino != linked.content_path(digest).stat().st_ino
            # A copy, hashed as it was written: same bytes as the engine's.
            data = (cache / "blobs" / "sha256" / digest[7:]).read_bytes()
            assert data == linked.content_path(digest).read_bytes()
        code, err = run(capsys, linked.store, "cache", "verify", "--cache-dir", str(cache))
        assert code == 0, err
    finally:
        shutil.rmtree(cache_parent, ignore_errors=True)


def test_cache_verify_finds_a_block_damaged_in_the_shared_file(
    capsys: Capture,
    tmp_path: Path,
    linked: LinkedStore,
    published_images: dict[str, PublishedImage],
    registry: Registry,
) -> None:
    cache = tmp_path / "cache"
    code, err = run(
        capsys,
        linked.store,
        "cache-img",
        *linked.source_args,
        "--cache-dir",
        str(cache),
        *tag_refs(published_images),
    )
    assert code == 0, err
    layer = next(
        d for d, (_, k) in registry_blobs(registry, published_images).items() if k == "layer"
    )
    # The damage happens to the engine's file: the cache's is the same inode. Undone afterwards,
    # as the engine is shared with other tests.
    with linked.content_path(layer).open("r+b") as file:
        first = file.read(1)
        file.seek(0)
        file.write(bytes([first[0] ^ 0xFF]))
    try:
        code = cli.main(
            ["cache", "verify", "--cache-dir", str(cache)], env={"HOME": "/nonexistent"}
        )
        out = capsys.readouterr().out
    finally:
        with linked.content_path(layer).open("r+b") as file:
            file.write(first)
    assert code == 1, out
    assert layer in out, out


def test_a_blob_missing_from_the_content_store_falls_back_to_the_export(
    capsys: Capture,
    tmp_path: Path,
    linked: LinkedStore,
    published_images: dict[str, PublishedImage],
    registry: Registry,
) -> None:
    """A root whose content store lacks the layers (as after a lazy pull): the images come
    from the engine's export stream instead, the same blobs, none of them links."""
    expected = registry_blobs(registry, published_images)
    partial = tmp_path / "root"
    blobs_dir = partial / CONTENT_DIR / "blobs" / "sha256"
    blobs_dir.mkdir(parents=True)
    for digest, (_, kind) in expected.items():
        if kind != "layer":
            shutil.copyfile(linked.content_path(digest), blobs_dir / digest[7:])
    args = [a for a in linked.source_args if a != str(linked.root) and a != "--containerd-root"]
    cache = tmp_path / "cache"
    code, err = run(
        capsys,
        linked.store,
        "cache-img",
        *args,
        "--containerd-root",
        str(partial),
        "--cache-dir",
        str(cache),
        *tag_refs(published_images),
    )
    assert code == 0, err
    assert "exporting it instead" in err, err
    blobs = cache_blobs(cache)
    assert set(blobs) == set(expected)
    assert all(blobs[d].st_nlink == 1 for d, (_, k) in expected.items() if k == "layer")
    code, err = run(capsys, linked.store, "cache", "verify", "--cache-dir", str(cache))
    assert code == 0, err


def test_a_containerd_root_without_a_content_store_is_a_usage_error(
    capsys: Capture,
    tmp_path: Path,
    linked: LinkedStore,
    published_images: dict[str, PublishedImage],
) -> None:
    args = [a for a in linked.source_args if a != str(linked.root) and a != "--containerd-root"]
    code, err = run(
        capsys,
        linked.store,
        "cache-img",
        *args,
        "--containerd-root",
        str(tmp_path),
        "--cache-dir",
        str(tmp_path / "cache"),
        *tag_refs(published_images),
    )
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert f"--containerd-root {tmp_path}" in lines[0], err
    assert "config.toml" in lines[0], err
    assert not (tmp_path / "cache").exists()


def test_layers_the_cache_has_are_not_taken_again(
    capsys: Capture,
    tmp_path: Path,
    linked: LinkedStore,
    published_images: dict[str, PublishedImage],
    registry: Registry,
) -> None:
    """Known layers are skipped by digest: a content store that lacks them (here a root with
    every blob but the first image's layers) still serves the other images, no export."""
    first, *others = published_images.values()
    cache = tmp_path / "cache"
    code, err = run(
        capsys,
        linked.store,
        "cache-img",
        *linked.source_args,
        "--cache-dir",
        str(cache),
        first.tag_ref,
    )
    assert code == 0, err
    first_layers = {
        d for d, (_, k) in registry_blobs(registry, {"": first}).items() if k == "layer"
    }
    partial = tmp_path / "root"
    blobs_dir = partial / CONTENT_DIR / "blobs" / "sha256"
    blobs_dir.mkdir(parents=True)
    expected = registry_blobs(registry, published_images)
    for digest in expected:
        if digest not in first_layers:
            shutil.copyfile(linked.content_path(digest), blobs_dir / digest[7:])
    args = [a for a in linked.source_args if a != str(linked.root) and a != "--containerd-root"]
    code, err = run(
        capsys,
        linked.store,
        "cache-img",
        *args,
        "--containerd-root",
        str(partial),
        "--cache-dir",
        str(cache),
        *tag_refs(published_images),
    )
    assert code == 0, err
    assert "exporting it instead" not in err, err
    blobs = cache_blobs(cache)
    assert set(blobs) == set(expected)
    for digest, (_, kind) in expected.items():
        if kind == "layer" and digest not in first_layers:
            assert blobs[digest].st_ino == (blobs_dir / digest[7:]).stat().st_ino, digest
    assert others  # the other images brought layers of their own
    assert any(d not in first_layers for d, (_, k) in expected.items() if k == "layer")


def test_a_pulled_index_is_linked_for_this_platform_or_all_pulled_ones(
    capsys: Capture,
    tmp_path: Path,
    image_stores: Any,
    containerd_store_dockerd: ContainerdStoreDaemon,
    built_multi: BuiltMulti,
) -> None:
    """Docker 26 with two platforms of an index pulled: the index as it is, this machine's
    platform (or with --all-platforms both), layers linked."""
    store: ImageStore = image_stores("docker-containerd-store")
    root = containerd_store_dockerd.containerd_root
    client = docker.DockerClient(base_url=store.docker_host)
    for ref in ("fbmulti:1.0", f"fbmulti@{built_multi.index_digest}"):
        with contextlib.suppress(docker.errors.ImageNotFound):
            client.api.remove_image(ref, force=True)
    try:
        images.pull_ref(client, "fbmulti:1.0", platform="linux/arm64")
        images.pull_ref(client, "fbmulti:1.0")
        amd64, arm64 = built_multi.manifests["amd64"], built_multi.manifests["arm64"]
        one = {built_multi.index_digest, amd64.digest, config_of(amd64.data)}
        one |= layers_of(amd64.data)
        every = one | {arm64.digest, config_of(arm64.data)} | layers_of(arm64.data)
        for flags, expected in (((), one), (("--all-platforms",), every)):
            cache = tmp_path / ("every" if flags else "one")
            code, err = run(
                capsys,
                store,
                "cache-img",
                "--containerd-root",
                str(root),
                *flags,
                "--cache-dir",
                str(cache),
                "fbmulti:1.0",
            )
            assert code == 0, err
            assert "exporting it instead" not in err, err
            blobs = cache_blobs(cache)
            assert set(blobs) == expected
            for digest in expected & (layers_of(amd64.data) | layers_of(arm64.data)):
                shared = (root / CONTENT_DIR / "blobs" / "sha256" / digest[7:]).stat()
                assert blobs[digest].st_ino == shared.st_ino, digest
            code, err = run(capsys, store, "cache", "verify", "--cache-dir", str(cache))
            assert code == 0, err
    finally:
        for ref in ("fbmulti:1.0", f"fbmulti@{built_multi.index_digest}"):
            with contextlib.suppress(docker.errors.ImageNotFound):
                client.api.remove_image(ref, force=True)
        client.close()


@pytest.mark.parametrize("crash_at", ["blob-adopted", "blob-renamed"])
def test_killed_while_linking_leaves_a_cache_the_rerun_completes(
    tmp_path: Path,
    linked: LinkedStore,
    published_images: dict[str, PublishedImage],
    registry: Registry,
    crash_at: str,
) -> None:
    """kill -9 with a layer linked to a temporary name, or just renamed to its digest: no entry
    names anything yet, only a temporary may be left, and the rerun links everything."""
    cache = tmp_path / "cache"
    args = ("cache-img", *linked.source_args, "--cache-dir", str(cache))
    crashed = faults.run(
        *args, *tag_refs(published_images), docker_host=linked.store.docker_host, crash_at=crash_at
    )
    assert crashed.returncode == -signal.SIGKILL, f"{crash_at} not reached:\n{crashed.stderr}"
    leftovers = faults.temporaries(cache)
    assert len(leftovers) == (1 if crash_at == "blob-adopted" else 0), leftovers
    assert json.loads((cache / "index.json").read_text())["manifests"] == []
    rerun = faults.run(*args, *tag_refs(published_images), docker_host=linked.store.docker_host)
    assert rerun.returncode == 0, rerun.stderr
    assert faults.temporaries(cache) == []
    expected = registry_blobs(registry, published_images)
    blobs = cache_blobs(cache)
    assert set(blobs) == set(expected)
    for digest, (_, kind) in expected.items():
        if kind == "layer":
            assert blobs[digest].st_ino == linked.content_path(digest).stat().st_ino
    verified = faults.run(
        "cache", "verify", "--cache-dir", str(cache), docker_host=linked.store.docker_host
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.mark.parametrize("link", [True, False])
def test_linked_layers_need_no_free_space(
    tmp_path: Path,
    linked: LinkedStore,
    published_images: dict[str, PublishedImage],
    registry: Registry,
    *,
    link: bool,
) -> None:
    """The free-space check asks for what storing will write (SourceImage.size): with layers
    linked on one mount, the manifest and config only; copied, the layers too."""
    cache = tmp_path / "cache"  # the same mount as the content store (the first test shows it)
    source: DockerSource | ContainerdSource
    if linked.store.docker_host != NO_DOCKER:
        engine = DockerEngine(linked.store.docker_host)
        source = DockerSource(engine, containerd_root=linked.root, link=link, cache_dir=cache)
    else:
        args = dict(zip(linked.source_args[2::2], linked.source_args[3::2], strict=True))
        ctr = Ctr(args["--containerd-address"], args["--namespace"])
        here = default_platform(None, dpkg_architecture(), platform.machine())
        source = ContainerdSource(ctr, here, link=link, cache_dir=cache)
    layer_bytes = {
        image.canonical_name: sum(
            len(registry_bytes(registry, image.registry_repo, "layer", digest))
            for digest in layers_of(registry.manifest(image.registry_repo, image.tag))
        )
        for image in published_images.values()
    }
    assert layer_bytes
    assert all(layer_bytes.values())
    for image in published_images.values():
        ref = parse_image_ref(image.tag_ref)
        found = source.find(Wanted(ref.with_default_tag().canonical, (ref,), essential=True))
        assert found is not None, image.tag_ref
        if link:
            assert found.size < 64 * 1024, (image.tag_ref, found.size)  # manifest and config
        else:
            assert found.size >= layer_bytes[image.canonical_name], image.tag_ref
