"""A standalone containerd as source and target (issue 6): cache-img --from containerd,
ctr images rm, load-img --into containerd with the registry stopped, in ``default`` and
``k8s.io``; the cache keeps the registry's manifest; cross-store into a classic dockerd.

Images come from the loopback registry with ``ctr images pull --plain-http``; Docker Hub
names (alpha, beta, gamma) are pulled by their loopback name and tagged ``docker.io/...``.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from forklift_boot import cli
from forklift_boot.cache import ImageCache
from forklift_boot.refs import parse_image_ref
from tests.testbed import images
from tests.testbed.containerd import Containerd
from tests.testbed.dockerd import DaemonFactory, DockerDaemon
from tests.testbed.images import PublishedImage
from tests.testbed.registry import Registry

pytestmark = [pytest.mark.containerd, pytest.mark.registry]

Capture = pytest.CaptureFixture[str]
_namespaces = itertools.count()


def run(capsys: Capture, *argv: str, docker_host: str = "unix:///nonexistent") -> tuple[int, str]:
    code = cli.main(list(argv), env={"DOCKER_HOST": docker_host, "HOME": "/nonexistent"})
    captured = capsys.readouterr()
    return code, captured.err


@dataclass(frozen=True)
class Stores:
    containerd: Containerd
    registry: Registry
    published: dict[str, PublishedImage]


@pytest.fixture
def stores(
    containerd: Containerd, registry: Registry, published_images: dict[str, PublishedImage]
) -> Stores:
    return Stores(containerd, registry, published_images)


def pull_into(
    containerd: Containerd,
    registry: Registry,
    published: dict[str, PublishedImage],
    namespace: str,
) -> None:
    for image in published.values():
        loopback = f"{registry.host}/{image.registry_repo}:{image.tag}"
        containerd.ctr("images", "pull", "--plain-http", loopback, namespace=namespace)
        if image.full_tag_ref != loopback:
            containerd.ctr("images", "tag", loopback, image.full_tag_ref, namespace=namespace)
            containerd.ctr("images", "rm", loopback, namespace=namespace)


def names(containerd: Containerd, namespace: str) -> set[str]:
    return set(containerd.ctr("images", "ls", "-q", namespace=namespace).stdout.split())


def remove_all(containerd: Containerd, namespace: str) -> None:
    """Every name, CRI's ``sha256:<config>`` ones included, so that the load really loads."""
    present = names(containerd, namespace)
    if present:
        containerd.ctr("images", "rm", "--sync", *sorted(present), namespace=namespace)
    assert not names(containerd, namespace)


def every_ref(published: dict[str, PublishedImage]) -> list[str]:
    return [ref for image in published.values() for ref in image.refs]


def containerd_names(refs: list[str]) -> set[str]:
    """What containerd's CRI resolves each ref by: name:tag, or name@digest."""
    result = set()
    for ref in refs:
        parsed = parse_image_ref(ref)
        result.add(parsed.digested or parsed.tagged or "")
    return result


@pytest.mark.parametrize("namespace", ["default", "k8s.io"])
def test_containerd_round_trip_offline(
    capsys: Capture, tmp_path: Path, stores: Stores, namespace: str
) -> None:
    containerd, registry, published_images = stores.containerd, stores.registry, stores.published
    refs = every_ref(published_images)
    pull_into(containerd, registry, published_images, namespace)
    cache = str(tmp_path / "cache")
    where = ["--containerd-address", str(containerd.sock), "--namespace", namespace]
    code, err = run(
        capsys, "cache-img", "--from", "containerd", *where, "--cache-dir", cache, *refs
    )
    assert code == 0, err
    assert "cached 12/12 images" in err, err
    remove_all(containerd, namespace)
    with registry.offline():
        code, err = run(
            capsys, "load-img", "--into", "containerd", *where, "--cache-dir", cache, *refs
        )
        assert code == 0, err
        # 12 canonical names, 4 images: one import each, which names every spelling.
        assert "loading 4/4" in err, err
        assert "loading 5/" not in err, err
        assert f"12/12 images ready in containerd (namespace {namespace}) (12 loaded" in err, err
    wanted = containerd_names(refs)
    present = names(containerd, namespace)
    assert wanted <= present, wanted - present
    # Only CRI's own sha256:<config> names besides ours.
    assert all(name.startswith("sha256:") for name in present - wanted), present - wanted
    check = containerd.ctr("images", "check", namespace=namespace).stdout.splitlines()[1:]
    status = {line.split()[0]: line for line in check}
    for name in wanted:
        assert "complete" in status[name], status[name]
    # A second load finds everything present and changes nothing.
    code, err = run(capsys, "load-img", "--into", "containerd", *where, "--cache-dir", cache, *refs)
    assert code == 0, err
    assert "(0 loaded, 0 tagged, 12 already there)" in err, err
    assert names(containerd, namespace) == present
    remove_all(containerd, namespace)


def test_cache_from_containerd_keeps_registry_manifest(
    capsys: Capture,
    tmp_path: Path,
    containerd: Containerd,
    registry: Registry,
    published_images: dict[str, PublishedImage],
) -> None:
    namespace = f"fb-manifest-{next(_namespaces)}"
    pull_into(containerd, registry, published_images, namespace)
    cache = tmp_path / "cache"
    refs = [image.tag_ref for image in published_images.values()]
    where = ["--containerd-address", str(containerd.sock), "--namespace", namespace]
    code, err = run(
        capsys, "cache-img", "--from", "containerd", *where, "--cache-dir", str(cache), *refs
    )
    assert code == 0, err
    with ImageCache(cache).reading() as reader:
        for image in published_images.values():
            entry = reader.find(image.full_tag_ref)
            assert entry is not None, image.full_tag_ref
            expected = registry.manifest_digest(image.registry_repo, image.tag)
            assert entry.descriptor.digest == expected, image.name
            assert entry.image_id == image.image_id
            # The registry's compressed layers, byte for byte (same digests and sizes).
            manifest = reader.read_json(entry.descriptor.digest)
            for layer in manifest["layers"]:
                assert reader.blob_size(layer["digest"]) == layer["size"]
    remove_all(containerd, namespace)


def test_cross_store_containerd_to_classic_dockerd(
    capsys: Capture, tmp_path: Path, stores: Stores, fresh_dockerd: DaemonFactory
) -> None:
    containerd, registry, published_images = stores.containerd, stores.registry, stores.published
    namespace = f"fb-cross-{next(_namespaces)}"
    pull_into(containerd, registry, published_images, namespace)
    cache = str(tmp_path / "cache")
    refs = [image.tag_ref for image in published_images.values()]
    where = ["--containerd-address", str(containerd.sock), "--namespace", namespace]
    code, err = run(
        capsys, "cache-img", "--from", "containerd", *where, "--cache-dir", cache, *refs
    )
    assert code == 0, err
    daemon = fresh_dockerd()
    with registry.offline():
        code, err = run(capsys, "load-img", "--cache-dir", cache, *refs, docker_host=daemon.host)
        assert code == 0, err
        client = daemon.client()
        for image in published_images.values():
            assert images.inspect(client, image.tag_ref)["Id"] == image.image_id
        client.close()
    remove_all(containerd, namespace)


@pytest.mark.parametrize("direction", ["cache-img", "load-img"])
def test_unreachable_socket_is_one_line(capsys: Capture, tmp_path: Path, direction: str) -> None:
    socket = tmp_path / "nothing.sock"
    flag = ["--from", "containerd"] if direction == "cache-img" else ["--into", "containerd"]
    code, err = run(
        capsys,
        direction,
        *flag,
        "--containerd-address",
        str(socket),
        "--namespace",
        "k8s.io",
        "--cache-dir",
        str(tmp_path / "cache"),
        "alpha:1.0",
    )
    assert code != 0
    errors = [line for line in err.splitlines() if "Error" in line or "error" in line]
    assert errors, err
    assert any(str(socket) in line and "k8s.io" in line for line in errors), err
    if direction == "cache-img":
        assert any("alpha:1.0" in line for line in errors), err


def test_missing_image_names_namespace_and_ref(
    capsys: Capture, tmp_path: Path, containerd: Containerd
) -> None:
    code, err = run(
        capsys,
        "cache-img",
        "--from",
        "containerd",
        "--containerd-address",
        str(containerd.sock),
        "--namespace",
        "fb-empty",
        "--cache-dir",
        str(tmp_path / "cache"),
        "nothere:1.0",
    )
    assert code != 0
    line = next(line for line in err.splitlines() if "nothere:1.0" in line)
    assert "namespace fb-empty" in line, err


@pytest.mark.docker
def test_cross_store_classic_dockerd_to_containerd(
    capsys: Capture, tmp_path: Path, stores: Stores, dockerd: DockerDaemon
) -> None:
    """A cache filled by ``docker save`` on the classic store (forklift-boot's own manifests,
    not the registry's) still names every ref in containerd, digest refs by their name."""
    containerd, published_images = stores.containerd, stores.published
    namespace = f"fb-rev-{next(_namespaces)}"
    cache = str(tmp_path / "cache")
    refs = every_ref(published_images)
    code, err = run(capsys, "cache-img", "--cache-dir", cache, *refs, docker_host=dockerd.host)
    assert code == 0, err
    where = ["--containerd-address", str(containerd.sock), "--namespace", namespace]
    with stores.registry.offline():
        code, err = run(
            capsys, "load-img", "--into", "containerd", *where, "--cache-dir", cache, *refs
        )
    assert code == 0, err
    wanted = containerd_names(refs)
    assert wanted <= names(containerd, namespace)
    check = containerd.ctr("images", "check", namespace=namespace).stdout.splitlines()[1:]
    assert all("complete" in line for line in check), check
    listing = containerd.ctr("images", "ls", namespace=namespace).stdout
    assert len(listing.splitlines()) == len(wanted) + 1
    remove_all(containerd, namespace)


def test_failing_ctr_is_one_line(capsys: Capture, tmp_path: Path, containerd: Containerd) -> None:
    """ctr refuses an invalid namespace name: the error names it and the ref, on one line."""
    code, err = run(
        capsys,
        "cache-img",
        "--from",
        "containerd",
        "--containerd-address",
        str(containerd.sock),
        "--namespace",
        "Bad_Namespace!",
        "--cache-dir",
        str(tmp_path / "cache"),
        "alpha:1.0",
    )
    assert code == 1, err
    [line] = [line for line in err.splitlines() if line.startswith("Error:")]
    assert "namespace Bad_Namespace!" in line, err
    assert "alpha:1.0" in line, err


def test_shared_layers_are_imported_once(capsys: Capture, tmp_path: Path, stores: Stores) -> None:
    """containerd keeps what an import sent: a layer shared by later images is not sent again."""
    containerd, registry, published_images = stores.containerd, stores.registry, stores.published
    refs = [image.tag_ref for image in published_images.values()]
    pull_into(containerd, registry, published_images, "default")
    cache = tmp_path / "cache"
    where = ["--containerd-address", str(containerd.sock), "--namespace", "default"]
    code, err = run(
        capsys, "cache-img", "--from", "containerd", *where, "--cache-dir", str(cache), *refs
    )
    assert code == 0, err
    remove_all(containerd, "default")
    with registry.offline():
        code = cli.main(
            [
                "load-img",
                "--into",
                "containerd",
                *where,
                "--cache-dir",
                str(cache),
                "--json",
                *refs,
            ],
            env={"DOCKER_HOST": "unix:///nonexistent", "HOME": "/nonexistent"},
        )
        captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "sending every layer" not in captured.err, captured.err
    # Each blob of the cache (the four images' manifests, configs and layers), once.
    every_blob = sum(path.stat().st_size for path in (cache / "blobs" / "sha256").iterdir())
    assert json.loads(captured.out)["bytes_written"] == every_blob
    check = containerd.ctr("images", "check", namespace="default").stdout.splitlines()[1:]
    assert len(check) >= len(refs)
    assert all("complete" in line for line in check), check
    remove_all(containerd, "default")
