"""The Docker round trip on Debian's dockerd 20.10 (classic store): cache-img, rmi, load-img.

Images are real registry images (pushed to and pulled from a loopback registry, so digests are
real); loads happen with the registry stopped; every ref as written must then resolve through
the Engine API and a container must be creatable from it, offline.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from forklift_boot import cli
from tests.testbed import images
from tests.testbed.containerd import Containerd
from tests.testbed.dockerd import DaemonFactory, DockerDaemon
from tests.testbed.images import PublishedImage
from tests.testbed.registry import Registry
from tests.testbed.socket_proxy import SocketProxy
from tests.treebuilder import write_tree

pytestmark = [pytest.mark.docker, pytest.mark.registry]

Capture = pytest.CaptureFixture[str]


@pytest.fixture
def daemon(
    fresh_dockerd: DaemonFactory, published_images: dict[str, PublishedImage]
) -> DockerDaemon:
    """A private dockerd that pulled the four published images (real RepoDigests)."""
    daemon = fresh_dockerd()
    client = daemon.client()
    for image in published_images.values():
        images.pull(client, image)
    client.close()
    return daemon


@pytest.fixture
def proxy(daemon: DockerDaemon) -> Iterator[SocketProxy]:
    proxy = SocketProxy(daemon.sock)
    yield proxy
    proxy.close()


def every_ref(published: dict[str, PublishedImage]) -> list[str]:
    return [ref for image in published.values() for ref in image.refs]


def run(capsys: Capture, host: str, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv), env={"DOCKER_HOST": host, "HOME": "/nonexistent"})
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def remove_all(client: docker.DockerClient, published: dict[str, PublishedImage]) -> None:
    for image in published.values():
        client.api.remove_image(image.image_id, force=True)
    assert not client.images.list(all=True)


def assert_every_ref_resolves_offline(
    client: docker.DockerClient, published: dict[str, PublishedImage], refs: list[str]
) -> None:
    ids = {ref: image.image_id for image in published.values() for ref in image.refs}
    for ref in refs:
        # The Engine API's GET /images/<ref>/json, as Compose asks it.
        assert images.inspect(client, ref)["Id"] == ids[ref], ref
        # The SDK's create never pulls: it works only if the daemon resolves the ref itself.
        container = client.containers.create(ref, command=["/bin/busybox", "true"])
        assert container.attrs["Image"] == ids[ref]
        container.remove()


def test_round_trip_every_ref_resolves_offline(
    capsys: Capture,
    tmp_path: Path,
    daemon: DockerDaemon,
    published_images: dict[str, PublishedImage],
    registry: Registry,
) -> None:
    refs = every_ref(published_images)
    assert len(refs) == 3 * 6 + 3  # three Docker Hub images in 6 spellings, delta in 3
    cache = str(tmp_path / "cache")
    code, out, err = run(capsys, daemon.host, "cache-img", "--cache-dir", cache, *refs)
    assert (code, out) == (0, ""), err
    assert f"cached {len(refs) - 9}/{len(refs) - 9} images" in err  # 12 canonical names
    client = daemon.client()
    remove_all(client, published_images)
    with registry.offline():
        code, _, err = run(capsys, daemon.host, "load-img", "--cache-dir", cache, *refs)
        assert code == 0, err
        client = daemon.client()  # dockerd was restarted to record the digest references
        assert_every_ref_resolves_offline(client, published_images, refs)
    # Image IDs are config digests: identical after the round trip (checked per ref above).
    assert {i.id for i in client.images.list()} == {
        image.image_id for image in published_images.values()
    }
    assert run(capsys, daemon.host, "cache", "verify", "--cache-dir", cache)[0] == 0


def unique_layer_bytes(client: docker.DockerClient, image_ids: list[str]) -> tuple[int, int]:
    """From Docker's own ``docker save`` of all images: (bytes of unique layer tars, count)."""
    response = client.api.get(
        client.api.base_url + f"/v{client.api.api_version}/images/get",
        params={"names": image_ids},
        stream=True,
    )
    digests: dict[str, int] = {}
    with tarfile.open(fileobj=response.raw, mode="r|") as archive:
        for member in archive:
            if member.isfile() and member.name.endswith("layer.tar"):
                file = archive.extractfile(member)
                assert file is not None
                digests[hashlib.sha256(file.read()).hexdigest()] = member.size
    return sum(digests.values()), len(digests)


def test_cache_holds_each_unique_layer_once(
    capsys: Capture,
    tmp_path: Path,
    daemon: DockerDaemon,
    published_images: dict[str, PublishedImage],
) -> None:
    cache = tmp_path / "cache"
    refs = [image.tag_ref for image in published_images.values()]
    assert (
        run(
            capsys, daemon.host, "cache-img", "--compress", "none", "--cache-dir", str(cache), *refs
        )[0]
        == 0
    )
    client = daemon.client()
    expected_bytes, expected_count = unique_layer_bytes(
        client, [image.image_id for image in published_images.values()]
    )
    index = json.loads((cache / "index.json").read_text())
    layers: dict[str, int] = {}
    for entry in index["manifests"]:
        manifest = json.loads((cache / "blobs/sha256" / entry["digest"][7:]).read_bytes())
        config = (cache / "blobs/sha256" / manifest["config"]["digest"][7:]).read_bytes()
        # Config bytes are Docker's: their digest is the image ID.
        assert (
            "sha256:" + hashlib.sha256(config).hexdigest()
            == entry["annotations"]["run.forklift.boot.image-id"]
        )
        layers.update({layer["digest"]: layer["size"] for layer in manifest["layers"]})
    assert (sum(layers.values()), len(layers)) == (expected_bytes, expected_count)


def test_thin_load_sends_only_the_missing_layers(
    capsys: Capture,
    tmp_path: Path,
    daemon: DockerDaemon,
    proxy: SocketProxy,
    published_images: dict[str, PublishedImage],
) -> None:
    cache = str(tmp_path / "cache")
    beta = published_images["beta"]
    assert run(capsys, daemon.host, "cache-img", "--cache-dir", cache, beta.tag_ref)[0] == 0
    client = daemon.client()
    # alpha stays: it shares beta's busybox and /etc layers; only beta's own layer is missing.
    client.api.remove_image(beta.image_id, force=True)
    with ImageBlobs(Path(cache), beta.tag_ref) as blobs:
        full_archive = blobs.total
        own_layer = blobs.layer_sizes[-1]
    proxy.reset()
    code, _, err = run(capsys, proxy.host, "load-img", "--cache-dir", cache, beta.tag_ref)
    assert code == 0, err
    loads = proxy.paths("POST")
    assert [path for path in loads if "/images/load" in path]
    # Headers, the config, the manifest and beta's own layer: far less than the full archive.
    assert proxy.bytes_to_daemon < own_layer + 64 * 1024 < full_archive
    assert images.inspect(client, beta.tag_ref)["Id"] == beta.image_id
    with pytest.raises(docker.errors.APIError):
        images.inspect(client, beta.digest_ref)  # recording digests needs a restart: not here


class ImageBlobs:
    """Sizes of a cached image's blobs, read straight from the layout."""

    def __init__(self, cache: Path, ref: str) -> None:
        self.cache, self.ref = cache, ref

    def __enter__(self) -> ImageBlobs:
        index = json.loads((self.cache / "index.json").read_text())
        entry = next(
            e
            for e in index["manifests"]
            if self.ref in e["annotations"]["run.forklift.boot.refs"].split(",")
        )
        manifest = json.loads((self.cache / "blobs/sha256" / entry["digest"][7:]).read_bytes())
        self.layer_sizes = [layer["size"] for layer in manifest["layers"]]
        self.total = entry["size"] + manifest["config"]["size"] + sum(self.layer_sizes)
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def snapshot(directory: Path) -> dict[str, tuple[int, int, int]]:
    return {
        str(path.relative_to(directory)): (
            path.stat().st_ino,
            path.stat().st_mtime_ns,
            path.stat().st_size,
        )
        for path in sorted(directory.rglob("*"))
    }


def test_rerun_with_everything_present_exports_and_writes_nothing(
    capsys: Capture,
    tmp_path: Path,
    daemon: DockerDaemon,
    proxy: SocketProxy,
    published_images: dict[str, PublishedImage],
) -> None:
    cache = tmp_path / "cache"
    refs = every_ref(published_images)
    assert run(capsys, daemon.host, "cache-img", "--cache-dir", str(cache), *refs)[0] == 0
    before = snapshot(cache)
    proxy.reset()
    code, _, err = run(capsys, proxy.host, "cache-img", "--cache-dir", str(cache), *refs)
    assert code == 0, err
    assert "(0 new), 0 B written" in err
    assert not [path for path in proxy.paths() if "/images/get" in path]  # no export at all
    assert snapshot(cache) == before  # not a byte written, not a file touched
    # load-img with everything present: nothing loaded, nothing restarted.
    assert run(capsys, daemon.host, "load-img", "--cache-dir", str(cache), *refs)[0] == 0
    proxy.reset()
    pid = daemon.pid
    code, _, err = run(capsys, proxy.host, "load-img", "--cache-dir", str(cache), *refs)
    assert code == 0, err
    assert "(0 loaded, 0 tagged, 12 already there)" in err
    assert not proxy.paths("POST")
    assert daemon.pid == pid


def test_missing_images_fail_the_applied_bundle_and_warn_for_fallbacks(
    capsys: Capture,
    tmp_path: Path,
    daemon: DockerDaemon,
    published_images: dict[str, PublishedImage],
) -> None:
    alpha = published_images["alpha"].tag_ref
    bundle = (
        "forklift-version: v0.8.0-alpha.6\nexports:\n  app:\n    compose-app:\n      images: [{}]\n"
    )
    store = write_tree(
        tmp_path / "stages",
        {
            "forklift-stage-store.yml": "staged:\n  next: 2\n  names: {factory-reset: 1}\n",
            "1/forklift-bundle.yml": bundle.format("nowhere/old:1"),
            "2/forklift-bundle.yml": bundle.format(alpha),
        },
    )
    cache = str(tmp_path / "cache")
    code, _, err = run(capsys, daemon.host, "cache-img", "--cache-dir", cache, "--ss", str(store))
    assert code == 0, err  # the fallback's image is missing: a warning
    assert "Warning: nowhere/old:1 (needed only by a fallback bundle)" in err
    assert "cached 1/2 images (1 new)" in err
    code, _, err = run(
        capsys, daemon.host, "cache-img", "--cache-dir", cache, "nowhere/new:1", alpha
    )
    assert code == 3, err
    assert "Error: nowhere/new:1: neither Docker at" in err
    assert "failed: nowhere/new:1" in err


def test_load_from_the_stage_store_loads_what_will_be_applied(
    capsys: Capture,
    tmp_path: Path,
    daemon: DockerDaemon,
    published_images: dict[str, PublishedImage],
) -> None:
    alpha, beta = published_images["alpha"], published_images["beta"]
    bundle = (
        "forklift-version: v0.8.0-alpha.6\nexports:\n  app:\n    compose-app:\n      images: [{}]\n"
    )
    store = write_tree(
        tmp_path / "stages",
        {
            "forklift-stage-store.yml": "staged:\n  next: 2\n  history: [1]\n",
            "1/forklift-bundle.yml": bundle.format(beta.tag_ref),
            "2/forklift-bundle.yml": bundle.format(alpha.tag_ref),
        },
    )
    cache = str(tmp_path / "cache")
    assert run(capsys, daemon.host, "cache-img", "--cache-dir", cache, "--ss", str(store))[0] == 0
    client = daemon.client()
    remove_all(client, published_images)
    assert run(capsys, daemon.host, "load-img", "--cache-dir", cache, "--ss", str(store))[0] == 0
    assert [i.id for i in client.images.list()] == [alpha.image_id]  # next only, not current
    assert (
        run(
            capsys,
            daemon.host,
            "load-img",
            "--cache-dir",
            cache,
            "--ss",
            str(store),
            "--bundles",
            "current",
        )[0]
        == 0
    )
    assert {i.id for i in client.images.list()} == {alpha.image_id, beta.image_id}


def test_name_only_ref_means_latest(
    capsys: Capture,
    tmp_path: Path,
    daemon: DockerDaemon,
    published_images: dict[str, PublishedImage],
) -> None:
    client = daemon.client()
    client.api.tag(published_images["alpha"].image_id, "zeta", "latest")
    cache = str(tmp_path / "cache")
    code, _, err = run(capsys, daemon.host, "cache-img", "--cache-dir", cache, "zeta")
    assert code == 0
    assert "Warning: zeta has no tag; it means zeta:latest" in err
    remove_all(client, published_images)
    assert run(capsys, daemon.host, "load-img", "--cache-dir", cache, "zeta")[0] == 0
    assert images.inspect(client, "zeta")["Id"] == published_images["alpha"].image_id


def test_ls_img_status(
    capsys: Capture,
    tmp_path: Path,
    daemon: DockerDaemon,
    published_images: dict[str, PublishedImage],
) -> None:
    alpha, beta = published_images["alpha"], published_images["beta"]
    cache = str(tmp_path / "cache")
    assert run(capsys, daemon.host, "cache-img", "--cache-dir", cache, alpha.tag_ref)[0] == 0
    daemon.client().api.remove_image(alpha.image_id, force=True)
    code, out, _ = run(
        capsys,
        daemon.host,
        "ls-img",
        "--status",
        "--json",
        "--cache-dir",
        cache,
        alpha.tag_ref,
        beta.tag_ref,
    )
    assert code == 0
    status = {
        row["ref"]: (row["cached"], row["in_docker"], row["resolvable"]) for row in json.loads(out)
    }
    assert status == {alpha.tag_ref: (True, False, False), beta.tag_ref: (False, True, True)}


@pytest.mark.parametrize("format_", ["docker", "oci"])
def test_export_img_loads_with_docker_load(
    capsys: Capture,
    tmp_path: Path,
    daemon: DockerDaemon,
    published_images: dict[str, PublishedImage],
    format_: str,
) -> None:
    delta = published_images["delta"]
    cache = str(tmp_path / "cache")
    assert run(capsys, daemon.host, "cache-img", "--cache-dir", cache, delta.tag_ref)[0] == 0
    archive = tmp_path / "delta.tar"
    code, _, err = run(
        capsys,
        daemon.host,
        "cache",
        "export-img",
        "--cache-dir",
        cache,
        delta.tag_ref,
        "-o",
        str(archive),
        "--format",
        format_,
    )
    assert code == 0, err
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    if format_ == "docker":
        # Legacy layout with uncompressed layer.tar files, as Docker 20.10 saves and dive reads.
        assert len([n for n in names if n.endswith("/layer.tar")]) == len(delta.diff_ids)
        assert not any(n.startswith("blobs/") for n in names)
    else:
        assert {"oci-layout", "index.json", "manifest.json"} <= set(names)
    client = daemon.client()
    client.api.remove_image(delta.image_id, force=True)
    result = subprocess.run(
        ["docker", "--host", daemon.host, "load", "-i", str(archive)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "DOCKER_API_VERSION": "1.41"},
    )
    assert result.returncode == 0, result.stderr
    assert images.inspect(client, delta.tag_ref)["Id"] == delta.image_id


def test_cache_ls_and_del_img(
    capsys: Capture,
    tmp_path: Path,
    daemon: DockerDaemon,
    published_images: dict[str, PublishedImage],
) -> None:
    alpha, beta = published_images["alpha"], published_images["beta"]
    cache = tmp_path / "cache"
    assert (
        run(
            capsys, daemon.host, "cache-img", "--cache-dir", str(cache), alpha.tag_ref, beta.tag_ref
        )[0]
        == 0
    )
    code, out, _ = run(capsys, daemon.host, "cache", "ls-img", "--json", "--cache-dir", str(cache))
    listing = json.loads(out)
    sizes = {row["name"]: (row["size"], row["shared_size"]) for row in listing["images"]}
    # busybox and /etc are shared; each image has one layer of its own.
    assert sizes["docker.io/library/alpha:1.0"][1] == sizes["docker.io/library/beta:2.0"][1] > 0
    blobs_before = len(list((cache / "blobs/sha256").iterdir()))
    code, out, _ = run(
        capsys, daemon.host, "cache", "del-img", "--cache-dir", str(cache), "beta:2.0"
    )
    assert (code, out) == (0, "deleted docker.io/library/beta:2.0\n")
    # beta's own layer, config and manifest go; the shared layers stay for alpha.
    assert len(list((cache / "blobs/sha256").iterdir())) == blobs_before - 3
    assert run(capsys, daemon.host, "cache", "verify", "--cache-dir", str(cache))[0] == 0


def test_cache_is_readable_by_skopeo(
    capsys: Capture,
    tmp_path: Path,
    daemon: DockerDaemon,
    published_images: dict[str, PublishedImage],
) -> None:
    alpha = published_images["alpha"]
    cache = tmp_path / "cache"
    assert run(capsys, daemon.host, "cache-img", "--cache-dir", str(cache), alpha.tag_ref)[0] == 0
    result = subprocess.run(
        ["skopeo", "inspect", "--raw", f"oci:{cache}:docker.io/library/alpha:1.0"],
        capture_output=True,
        text=True,
        check=True,
    )
    manifest = json.loads(result.stdout)
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert len(manifest["layers"]) == len(alpha.diff_ids)
    result = subprocess.run(
        ["skopeo", "inspect", "--config", f"oci:{cache}:docker.io/library/alpha:1.0"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(result.stdout)["rootfs"]["diff_ids"] == list(alpha.diff_ids)


@pytest.mark.containerd
def test_cache_imports_unchanged_into_containerd(
    capsys: Capture,
    tmp_path: Path,
    daemon: DockerDaemon,
    published_images: dict[str, PublishedImage],
    containerd: Containerd,
) -> None:
    cache = tmp_path / "cache"
    refs = [published_images[name].tag_ref for name in ("alpha", "delta")]
    assert run(capsys, daemon.host, "cache-img", "--cache-dir", str(cache), *refs)[0] == 0
    archive = tmp_path / "cache.tar"
    with tarfile.open(archive, "w") as tar:
        for name in ("oci-layout", "index.json", "blobs"):
            tar.add(cache / name, arcname=name)
    namespace = f"t{os.getpid()}"
    containerd.ctr("images", "import", str(archive), namespace=namespace)
    names = containerd.ctr("images", "ls", "-q", namespace=namespace).stdout.split()
    delta = published_images["delta"]
    assert set(names) == {"docker.io/library/alpha:1.0", delta.full_tag_ref}
    check = containerd.ctr("images", "check", namespace=namespace).stdout
    assert check.count("complete") == 2, check
