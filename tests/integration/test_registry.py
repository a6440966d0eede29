"""cache-img --from registry against a real docker-registry (Debian's distribution 2.8) on loopback.

Images are pushed for the tests: crafted byte by byte over HTTP (an OCI index of amd64, arm64/v8
and arm/v7 images plus an attestation), and built by dockerd 20.10 for two platforms with an
index PUT over them. Authentication runs against the same storage served by a second registry
with htpasswd, and a third with token auth whose tokens come from a token server written for
the tests. Faults come from an HTTP proxy in front of the registry that also counts every byte
it served, so "resumed" and "downloaded nothing" are measured outside the product.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from forklift_boot import cli
from tests.testbed import images, oci
from tests.testbed.credentials import PASSWORD, USER, basic, docker_config, htpasswd_auth_yaml
from tests.testbed.dockerd import DaemonFactory, DockerDaemon
from tests.testbed.fault_proxy import Fault, FaultProxy
from tests.testbed.images import PublishedImage
from tests.testbed.multi_platform import BuiltMulti
from tests.testbed.oci import Blob, CraftedImage
from tests.testbed.registry import Registry, free_port
from tests.testbed.token_server import SERVICE, TokenServer

pytestmark = [pytest.mark.registry]

Capture = pytest.CaptureFixture[str]

CRAFTED = "fbreg/crafted"  # an OCI index: amd64, arm64/v8, arm/v7, an attestation
SINGLE = "fbreg/single"  # one Docker schema 2 image, no index
FOREIGN = "fbreg/foreign"  # a Docker schema 2 image with a non-distributable layer
BIG = 3 << 20  # amd64's own layer: big enough to cut mid-way


@dataclass(frozen=True)
class Crafted:
    host: str  # the registry's 127.0.0.1:PORT
    index: Blob
    amd64: CraftedImage
    arm64: CraftedImage
    armv7: CraftedImage
    attestation: CraftedImage
    single: CraftedImage
    foreign: CraftedImage
    foreign_layer: dict[str, Any]

    @property
    def big_layer(self) -> Blob:
        return self.amd64.layers[1]


def blob_set(*crafted: CraftedImage) -> set[str]:
    return {blob.digest for image in crafted for blob in (image.manifest, *image.blobs)}


@pytest.fixture(scope="module")
def crafted(registry: Registry) -> Crafted:
    shared = {"etc/forklift-shared": b"one layer every platform shares\n"}
    amd64 = oci.craft_image([shared, {"app/amd64": oci.pseudo_random("amd64", BIG)}])
    arm64 = oci.craft_image(
        [shared, {"app/arm64": b"arm64 only\n"}], architecture="arm64", variant="v8"
    )
    armv7 = oci.craft_image([shared, {"app/armv7": b"armv7 only\n"}], architecture="arm")
    armv7 = oci.craft_image(
        [shared, {"app/armv7": b"armv7 only\n"}], architecture="arm", variant="v7"
    )
    attestation = oci.craft_image([{"intoto.json": b"{}"}], architecture="unknown")
    for image in (amd64, arm64, armv7, attestation):
        oci.push_image(registry.url, CRAFTED, image.manifest.digest, image)
    attestation_child = {
        **attestation.manifest.descriptor(),
        "platform": {"architecture": "unknown", "os": "unknown"},
        "annotations": {"vnd.docker.reference.type": "attestation-manifest"},
    }
    index = oci.index_of([amd64.child(), arm64.child(), armv7.child(), attestation_child])
    oci.put_manifest(registry.url, CRAFTED, "1.0", index)
    oci.put_manifest(registry.url, CRAFTED, "1.0-alias", index)
    single = oci.craft_image([shared, {"app/single": b"single\n"}], oci=False)
    oci.push_image(registry.url, SINGLE, "1.0", single)
    foreign_layer = {
        "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "digest": "sha256:" + "f" * 64,
        "size": 1234,
        "urls": ["https://example.invalid/windows-base-layer"],
    }
    foreign = oci.craft_image([{"app/f": b"f\n"}], oci=False, extra_layers=[foreign_layer])
    # Debian's registry refuses foreign layer URLs unless its configuration allows them.
    allow_urls = "validation:\n  manifests:\n    urls:\n      allow:\n        - ^https://\n"
    with Registry(storage=registry.storage, extra_config=allow_urls) as allowing:
        oci.push_image(allowing.url, FOREIGN, "1.0", foreign)
    return Crafted(
        registry.host, index, amd64, arm64, armv7, attestation, single, foreign, foreign_layer
    )


@pytest.fixture
def proxy(registry: Registry, crafted: Crafted) -> Iterator[FaultProxy]:
    """The fault-injecting, counting proxy in front of the registry with the crafted images."""
    with FaultProxy(registry.host) as fault_proxy:
        yield fault_proxy


def run(capsys: Capture, *argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    base = {"HOME": "/nonexistent", "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    code = cli.main(list(argv), env={**base, **(env or {})})
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def cache_img(capsys: Capture, cache: Path, *argv: str, **env: str) -> tuple[int, str, str]:
    return run(capsys, "cache-img", "--from", "registry", "--cache-dir", str(cache), *argv, env=env)


def blobs_in(cache: Path) -> set[str]:
    return {"sha256:" + p.name for p in (cache / "blobs" / "sha256").iterdir()}


def entries(cache: Path) -> dict[str, dict[str, Any]]:
    index = json.loads((cache / "index.json").read_text())
    return {e["annotations"]["io.containerd.image.name"]: e for e in index["manifests"]}


def verify(capsys: Capture, cache: Path) -> None:
    code, out, err = run(capsys, "cache", "verify", "--cache-dir", str(cache))
    assert (code, out) == (0, ""), err


# Platforms


def test_an_index_cached_for_one_platform(
    capsys: Capture, tmp_path: Path, registry: Registry, crafted: Crafted
) -> None:
    digest = crafted.index.digest
    tag_ref = f"{registry.host}/{CRAFTED}:1.0"
    digest_ref = f"{registry.host}/{CRAFTED}@{digest}"
    both_ref = f"{registry.host}/{CRAFTED}:1.0@{digest}"
    cache = tmp_path / "cache"
    code, out, err = cache_img(
        capsys, cache, "--platform", "linux/arm64", tag_ref, digest_ref, both_ref
    )
    assert (code, out) == (0, ""), err
    assert "cached 3/3 images (3 new)" in err
    # Exactly arm64's manifest, config and layers, and the index the digest refs pin.
    assert blobs_in(cache) == blob_set(crafted.arm64) | {digest}
    stored_index = (cache / "blobs/sha256" / digest.removeprefix("sha256:")).read_bytes()
    assert stored_index == crafted.index.data  # byte for byte: its digest stays the ref's
    found = entries(cache)
    tag_entry = found[tag_ref]
    assert tag_entry["digest"] == crafted.arm64.manifest.digest
    assert tag_entry["mediaType"] == oci.OCI_MANIFEST
    assert tag_entry["platform"] == {"architecture": "arm64", "os": "linux", "variant": "v8"}
    for ref in (digest_ref, both_ref):
        assert found[ref]["digest"] == digest
        assert found[ref]["mediaType"] == oci.OCI_INDEX
        assert "platform" not in found[ref]
    for entry in found.values():
        annotations = entry["annotations"]
        assert annotations["run.forklift.boot.image-id"] == crafted.arm64.image_id
        assert annotations["run.forklift.boot.registry-digest"] == digest
        assert annotations["run.forklift.boot.platform"] == "linux/arm64"
    verify(capsys, cache)


@pytest.mark.parametrize(
    ("platform", "image"),
    [("linux/amd64", "amd64"), ("linux/arm/v7", "armv7"), ("armhf", "armv7")],
)
def test_platform_flag_and_environment(
    capsys: Capture, tmp_path: Path, crafted: Crafted, platform: str, image: str
) -> None:
    wanted: CraftedImage = getattr(crafted, image)
    ref = f"{crafted.host}/{CRAFTED}:1.0"
    code, _, err = cache_img(capsys, tmp_path / "flag", "--platform", platform, ref)
    assert code == 0, err
    assert blobs_in(tmp_path / "flag") == blob_set(wanted)
    code, _, err = cache_img(capsys, tmp_path / "env", ref, FORKLIFT_PLATFORM=platform)
    assert code == 0, err
    assert blobs_in(tmp_path / "env") == blob_set(wanted)


def test_all_platforms_keeps_every_platform_and_the_index(
    capsys: Capture, tmp_path: Path, registry: Registry, crafted: Crafted
) -> None:
    cache = tmp_path / "cache"
    ref = f"{registry.host}/{CRAFTED}:1.0"
    code, _, err = cache_img(capsys, cache, "--all-platforms", "--platform", "linux/arm64", ref)
    assert code == 0, err
    # Every platform; the attestation is no platform's image and stays out.
    expected = blob_set(crafted.amd64, crafted.arm64, crafted.armv7) | {crafted.index.digest}
    assert blobs_in(cache) == expected
    entry = entries(cache)[ref]
    assert entry["digest"] == crafted.index.digest  # the index holds the platforms together
    assert entry["annotations"]["run.forklift.boot.image-id"] == crafted.arm64.image_id
    verify(capsys, cache)


def test_no_image_for_the_platform_is_a_clear_failure(
    capsys: Capture, tmp_path: Path, registry: Registry, crafted: Crafted
) -> None:
    ok = f"{registry.host}/{SINGLE}:1.0"
    ref = f"{registry.host}/{CRAFTED}:1.0"
    code, _, err = cache_img(capsys, tmp_path / "c", "--platform", "linux/s390x", ref, ok)
    assert code == 3
    assert "has no linux/s390x image (it has: linux/amd64, linux/arm/v7, linux/arm64)" in err
    # A single-platform image is taken as it is, with a warning.
    assert "single-platform image for linux/amd64, not linux/s390x" in err
    assert list(entries(tmp_path / "c")) == [ok]


def test_missing_images_and_the_default_platform(
    capsys: Capture, tmp_path: Path, registry: Registry, crafted: Crafted
) -> None:
    missing = f"{registry.host}/fbreg/nothing:1.0"
    code, _, err = cache_img(capsys, tmp_path / "c", missing, f"{registry.host}/{CRAFTED}:1.0")
    assert code == 3
    assert "neither its registry nor the cache has it" in err
    # No Docker here (DOCKER_HOST names no socket): dpkg's architecture decides.
    assert "fetching images for linux/amd64 (this machine's" in err
    assert blobs_in(tmp_path / "c") == blob_set(crafted.amd64)


def test_non_distributable_layers_are_skipped(
    capsys: Capture, tmp_path: Path, registry: Registry, crafted: Crafted
) -> None:
    cache = tmp_path / "cache"
    code, _, err = cache_img(
        capsys, cache, "--platform", "linux/amd64", f"{registry.host}/{FOREIGN}:1.0"
    )
    assert code == 0, err
    assert f"skipping the non-distributable layer {crafted.foreign_layer['digest']}" in err
    assert blobs_in(cache) == blob_set(crafted.foreign)
    verify(capsys, cache)


# Counted at the proxy: second runs, mirrors, offline


def test_a_second_run_downloads_nothing(
    capsys: Capture, tmp_path: Path, proxy: FaultProxy, crafted: Crafted
) -> None:
    cache = tmp_path / "cache"
    refs = [
        f"{proxy.host}/{CRAFTED}:1.0",
        f"{proxy.host}/{CRAFTED}@{crafted.index.digest}",
        f"{proxy.host}/{SINGLE}:1.0",
    ]
    code, _, err = cache_img(capsys, cache, "--platform", "linux/amd64", *refs)
    assert code == 0, err
    expected = blob_set(crafted.amd64, crafted.single)
    assert {s.path.rpartition("/")[2] for s in proxy.blob_gets()} == {
        d
        for d in expected
        if d not in {crafted.amd64.manifest.digest, crafted.single.manifest.digest}
    }  # every blob once; the shared layer once for both images
    assert len(proxy.blob_gets()) == len(expected) - 2
    proxy.reset()
    code, _, err = cache_img(capsys, cache, "--platform", "linux/amd64", *refs)
    assert code == 0, err
    assert "cached 3/3 images (0 new)" in err
    assert proxy.served == []  # not a single request
    # A new tag for content the cache has: one HEAD, and the index and blobs from the cache.
    code, _, err = cache_img(
        capsys, cache, "--platform", "linux/amd64", f"{proxy.host}/{CRAFTED}:1.0-alias"
    )
    assert code == 0, err
    assert [(s.method, s.path) for s in proxy.served] == [
        ("HEAD", f"/v2/{CRAFTED}/manifests/1.0-alias")
    ]
    verify(capsys, cache)


def test_docker_hub_names_through_mirrors(
    capsys: Capture, tmp_path: Path, proxy: FaultProxy, crafted: Crafted
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: the next mirror takes over
    cache = tmp_path / "cache"
    ref = f"{CRAFTED}:1.0"  # docker.io/fbreg/crafted: no network here but the mirrors
    code, _, err = cache_img(
        capsys,
        cache,
        "--platform", "linux/arm64",
        "--registry-mirror", dead,
        "--registry-mirror", proxy.url,
        ref,
    )  # fmt: skip
    assert code == 0, err
    assert f"mirror 127.0.0.1:{dead.rpartition(':')[2]} failed" in err
    assert list(entries(cache)) == [f"docker.io/{CRAFTED}:1.0"]
    assert blobs_in(cache) == blob_set(crafted.arm64)
    assert {s.path.split("/")[2:4] == ["fbreg", "crafted"] for s in proxy.served} == {True}


def test_offline_never_touches_the_network(
    capsys: Capture, tmp_path: Path, proxy: FaultProxy, crafted: Crafted
) -> None:
    code, _, err = cache_img(capsys, tmp_path / "c", "--offline", f"{proxy.host}/{CRAFTED}:1.0")
    assert code == 3
    assert "--offline forbids network access" in err
    assert proxy.served == []


# Faults


def test_429_with_retry_after_is_honoured(
    capsys: Capture, tmp_path: Path, proxy: FaultProxy, crafted: Crafted
) -> None:
    proxy.add(Fault("HEAD", "/manifests/1.0$", status=429, headers={"Retry-After": "1"}))
    blob = crafted.arm64.layers[1].digest
    proxy.add(Fault("GET", blob, status=429, headers={"Retry-After": "1"}))
    code, _, err = cache_img(
        capsys, tmp_path / "c", "--platform", "linux/arm64", f"{proxy.host}/{CRAFTED}:1.0"
    )
    assert code == 0, err
    assert "(HTTP 429, too many requests); trying again in 1.0 s" in err
    heads = [s for s in proxy.served if s.method == "HEAD"]
    assert [s.status for s in heads] == [429, 200]
    assert heads[1].time - heads[0].time >= 0.95
    gets = proxy.blob_gets(blob)
    assert [s.status for s in gets] == [429, 200]
    assert gets[1].time - gets[0].time >= 0.95


def test_503_is_retried_with_backoff(
    capsys: Capture, tmp_path: Path, proxy: FaultProxy, crafted: Crafted
) -> None:
    proxy.add(Fault("GET", crafted.big_layer.digest, times=2, status=503))
    proxy.add(Fault("GET", "/manifests/sha256:", status=502))
    code, _, err = cache_img(
        capsys, tmp_path / "c", "--platform", "linux/amd64", f"{proxy.host}/{CRAFTED}:1.0"
    )
    assert code == 0, err
    assert [s.status for s in proxy.blob_gets(crafted.big_layer.digest)] == [503, 503, 200]
    assert err.count("(HTTP 503); trying again in") == 2
    verify(capsys, tmp_path / "c")


def test_a_cut_download_resumes_with_range(
    capsys: Capture, tmp_path: Path, proxy: FaultProxy, crafted: Crafted
) -> None:
    big = crafted.big_layer
    proxy.add(Fault("GET", big.digest, cut_after=1_000_000))
    cache = tmp_path / "cache"
    code, _, err = cache_img(
        capsys, cache, "--json", "--platform", "linux/amd64", f"{proxy.host}/{CRAFTED}:1.0"
    )
    assert code == 0, err
    assert "at byte 1000000 of" in err
    gets = proxy.blob_gets(big.digest)
    assert [(s.status, s.range) for s in gets] == [(200, None), (206, "bytes=1000000-")]
    # Counted at the proxy: the blob crossed the wire once in all, not once and a bit.
    assert proxy.blob_bytes(big.digest) == big.size
    assert big.digest in blobs_in(cache)
    verify(capsys, cache)


def test_a_corrupted_blob_is_refused_and_never_cached(
    capsys: Capture, tmp_path: Path, proxy: FaultProxy, crafted: Crafted
) -> None:
    big = crafted.big_layer
    proxy.add(Fault("GET", big.digest, times=100, flip_at=12345))
    cache = tmp_path / "cache"
    ok = f"{proxy.host}/{SINGLE}:1.0"
    ref = f"{proxy.host}/{CRAFTED}:1.0"
    code, _, err = cache_img(capsys, cache, "--platform", "linux/amd64", ref, ok)
    assert code == 3
    assert f"couldn't download blob {big.digest}" in err
    assert "it was not cached" in err
    assert "cached 1/2 images" in err  # the other image is still cached
    assert big.digest not in blobs_in(cache)
    assert not [p for p in (cache / "blobs/sha256").iterdir() if p.name.startswith(".")]
    assert list(entries(cache)) == [ok]
    # Not retried from scratch (it wasn't resumed), nor again when the image is retried alone.
    assert len(proxy.blob_gets(big.digest)) == 1
    verify(capsys, cache)


@pytest.mark.parametrize("jobs", [1, 3])
def test_jobs_bounds_parallel_downloads(
    capsys: Capture, tmp_path: Path, proxy: FaultProxy, crafted: Crafted, jobs: int
) -> None:
    proxy.add(Fault("GET", "/blobs/", times=100, delay=0.3))
    cache = tmp_path / "cache"
    argv = ("--all-platforms", "--jobs", str(jobs), f"{proxy.host}/{CRAFTED}:1.0")
    code, _, err = cache_img(capsys, cache, *argv)
    assert code == 0, err
    assert len(proxy.blob_gets()) == 7  # 3 configs, the shared layer, 3 own layers
    assert proxy.max_in_flight == jobs


# Authentication


@pytest.fixture(scope="module")
def htpasswd_registry(
    registry: Registry, crafted: Crafted, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Registry]:
    """The same images behind htpasswd basic auth."""
    auth = htpasswd_auth_yaml(tmp_path_factory.mktemp("htpasswd") / "htpasswd")
    with Registry(storage=registry.storage, extra_config=auth) as protected:
        yield protected


def test_htpasswd_basic_auth_from_config_json(
    capsys: Capture, tmp_path: Path, htpasswd_registry: Registry, crafted: Crafted
) -> None:
    host = htpasswd_registry.host
    ref = f"{host}/{CRAFTED}:1.0"
    code, _, err = cache_img(capsys, tmp_path / "none", "--platform", "linux/arm64", ref)
    assert code == 3
    assert f"it needs a user name and password; log in with `docker login {host}`" in err

    wrong = docker_config(tmp_path / "wrong", {"auths": {host: {"auth": basic(USER, "nope")}}})
    code, _, err = cache_img(
        capsys, tmp_path / "w", "-v", "--platform", "linux/arm64", ref, DOCKER_CONFIG=wrong
    )
    assert code == 3
    assert "access denied (HTTP 401)" in err

    right = docker_config(
        tmp_path / "right", {"auths": {f"http://{host}": {"auth": basic(USER, PASSWORD)}}}
    )
    cache = tmp_path / "cache"
    code, out, err = cache_img(
        capsys, cache, "-v", "--platform", "linux/arm64", ref, DOCKER_CONFIG=right
    )
    assert code == 0, err
    assert blobs_in(cache) == blob_set(crafted.arm64)
    for secret in (PASSWORD, basic(USER, PASSWORD)):
        assert secret not in err + out


@dataclass(frozen=True)
class TokenAuth:
    server: TokenServer
    registry: Registry  # the same images behind bearer tokens from ``server`` (auth: token:)


@pytest.fixture(scope="module")
def token_auth(registry: Registry, crafted: Crafted) -> Iterator[TokenAuth]:
    with (
        TokenServer(users={USER: PASSWORD}) as server,
        Registry(storage=registry.storage, extra_config=server.registry_auth_yaml()) as protected,
    ):
        yield TokenAuth(server, protected)


HELPER = """#!/bin/sh
[ "$1" = get ] || exit 2
read -r server
echo "$server" >> "$(dirname "$0")/asked"
if [ "$server" = "{host}" ]; then
  printf '{{"ServerURL":"%s","Username":"{user}","Secret":"{password}"}}' "$server"
else
  echo "credentials not found in native keychain"; exit 1
fi
"""


def test_bearer_tokens_with_a_credential_helper(
    capsys: Capture,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    token_auth: TokenAuth,
    crafted: Crafted,
) -> None:
    token_server = token_auth.server
    host = token_auth.registry.host
    ref = f"{host}/{CRAFTED}:1.0"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-fbtest"
    helper.write_text(HELPER.format(host=host, user=USER, password=PASSWORD))
    helper.chmod(helper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    config = docker_config(tmp_path / "docker", {"credHelpers": {host: "fbtest"}})

    cache = tmp_path / "cache"
    code, out, err = cache_img(
        capsys, cache, "-v", "--platform", "linux/arm64", ref, DOCKER_CONFIG=config
    )
    assert code == 0, err
    assert blobs_in(cache) == blob_set(crafted.arm64)
    assert (bin_dir / "asked").read_text().splitlines() == [host]  # the host, on stdin, once
    granted = [r for r in token_server.requests if r["granted"]]
    assert granted
    assert {r["user"] for r in granted} == {USER}
    assert {tuple(r["scope"]) for r in granted} == {(f"repository:{CRAFTED}:pull",)}
    assert {r["service"] for r in granted} == {SERVICE}
    assert PASSWORD not in err + out
    assert "Bearer" not in err + out

    token_server.requests.clear()
    code, _, err = cache_img(capsys, tmp_path / "anon", "--platform", "linux/arm64", ref)
    assert code == 3
    assert "its token service refused anonymous access (HTTP 401)" in err
    assert token_server.requests
    assert not any(r["granted"] for r in token_server.requests)


def test_anonymous_bearer_tokens(
    capsys: Capture, tmp_path: Path, registry: Registry, crafted: Crafted
) -> None:
    with (
        TokenServer() as server,
        Registry(storage=registry.storage, extra_config=server.registry_auth_yaml()) as protected,
    ):
        ref = f"{protected.host}/{SINGLE}:1.0"
        code, _, err = cache_img(capsys, tmp_path / "c", "--platform", "linux/amd64", ref)
        assert code == 0, err
        assert [r["user"] for r in server.requests] == [None]  # one token for the repository
    assert blobs_in(tmp_path / "c") == blob_set(crafted.single)


@pytest.mark.docker
def test_auto_takes_what_docker_has_and_fetches_the_rest(
    capsys: Capture,
    tmp_path: Path,
    dockerd: DockerDaemon,
    published_images: dict[str, PublishedImage],
    proxy: FaultProxy,
) -> None:
    alpha = published_images["alpha"]  # in Docker; docker.io is out of reach here
    single = f"{proxy.host}/{SINGLE}:1.0"  # only in the registry
    cache = tmp_path / "cache"
    argv = ("cache-img", "--from", "auto", "--cache-dir", str(cache), alpha.tag_ref, single)
    code, _, err = run(capsys, *argv, env={"DOCKER_HOST": dockerd.host})
    assert code == 0, err
    assert "cached 2/2 images (2 new)" in err
    found = entries(cache)
    assert found[alpha.full_tag_ref]["annotations"]["run.forklift.boot.image-id"] == alpha.image_id
    assert {s.path.split("/")[2:4] == ["fbreg", "single"] for s in proxy.served} == {True}
    assert proxy.blob_gets()

    # Offline: Docker's images still come, registries are never asked.
    proxy.reset()
    offline = tmp_path / "offline"
    flags = ("--from", "auto", "--offline", "--cache-dir", str(offline))
    code, _, err = run(
        capsys, "cache-img", *flags, alpha.tag_ref, single, env={"DOCKER_HOST": dockerd.host}
    )
    assert code == 3
    assert "--offline forbids network access" in err
    assert list(entries(offline)) == [alpha.full_tag_ref]
    assert proxy.served == []


# Built by dockerd for two platforms, then a round trip through a fresh dockerd


def layer_digests(manifest: Blob) -> set[str]:
    document = json.loads(manifest.data)
    return {document["config"]["digest"]} | {layer["digest"] for layer in document["layers"]}


@pytest.mark.docker
def test_built_multi_platform_image_one_platform_or_all(
    capsys: Capture, tmp_path: Path, registry: Registry, built_multi: BuiltMulti
) -> None:
    name = f"{registry.host}/{built_multi.repo}"
    refs = [f"{name}:1.0", f"{name}@{built_multi.index_digest}"]
    arm64 = {built_multi.manifests["arm64"].digest} | layer_digests(built_multi.manifests["arm64"])
    amd64 = {built_multi.manifests["amd64"].digest} | layer_digests(built_multi.manifests["amd64"])
    # Each has its own config and layer (busybox is shared).
    assert arm64 - amd64
    assert amd64 - arm64

    one = tmp_path / "one"
    code, _, err = cache_img(capsys, one, "--platform", "linux/arm64", *refs)
    assert code == 0, err
    assert blobs_in(one) == arm64 | {built_multi.index_digest}
    assert {e["annotations"]["run.forklift.boot.image-id"] for e in entries(one).values()} == {
        built_multi.arm64.image_id
    }

    every = tmp_path / "all"
    code, _, err = cache_img(capsys, every, "--all-platforms", "--platform", "linux/amd64", *refs)
    assert code == 0, err
    assert blobs_in(every) == arm64 | amd64 | {built_multi.index_digest}
    verify(capsys, every)


@pytest.mark.docker
def test_round_trip_registry_to_cache_to_fresh_dockerd(
    capsys: Capture,
    tmp_path: Path,
    built_multi: BuiltMulti,
    published_images: dict[str, PublishedImage],
    fresh_dockerd: DaemonFactory,
) -> None:
    registry = built_multi.registry
    digest = built_multi.index_digest
    local = f"{registry.host}/{built_multi.repo}"
    # Docker Hub's name through the mirror, and the loopback name: tag, digest, both.
    multi_refs = (
        "fbmulti:1.0",
        f"fbmulti@{digest}",
        f"fbmulti:1.0@{digest}",
        f"docker.io/library/fbmulti:1.0@{digest}",
        f"{local}:1.0",
        f"{local}@{digest}",
        f"{local}:1.0@{digest}",
    )
    expected = dict.fromkeys(multi_refs, built_multi.amd64.image_id)
    delta = published_images["delta"]  # a plain manifest, no index
    expected |= dict.fromkeys(delta.refs, delta.image_id)
    cache = tmp_path / "cache"
    # No daemon at all: DOCKER_HOST names no socket.
    code, _, err = cache_img(
        capsys,
        cache,
        "--platform", "linux/amd64",
        "--registry-mirror", registry.url,
        *expected,
    )  # fmt: skip
    assert code == 0, err
    with registry.offline():
        daemon = fresh_dockerd()
        host = {"DOCKER_HOST": daemon.host}
        code, _, err = run(capsys, "load-img", "--cache-dir", str(cache), *expected, env=host)
        assert code == 0, err
        client = daemon.client()  # dockerd was restarted to record the digest references
        for ref, image_id in expected.items():
            assert images.inspect(client, ref)["Id"] == image_id, ref
            container = client.containers.create(ref, command=["/bin/busybox", "true"])
            assert container.attrs["Image"] == image_id, ref
            container.remove()
        # And again: everything resolves, nothing is loaded.
        started = time.monotonic()
        code, _, err = run(capsys, "load-img", "--cache-dir", str(cache), *expected, env=host)
        assert code == 0, err
        assert "0 loaded" in err
        assert time.monotonic() - started < 30
        client.close()
