"""cache push: cached images to a second, empty docker-registry (Debian's distribution 2.8).

Caches are filled with cache-img --from registry from the session's loopback registry (images
crafted byte by byte, and the four standard images built by dockerd that share layers), then
pushed to a fresh registry through a proxy that counts every request and the body bytes it
carried, so "uploaded once", "mounted" and "a second push sends nothing" are measured outside
the product. What was pushed is checked on the target registry itself, and by pulling it into
a clean private dockerd. Expected digests and sizes come from the source registry's manifests.
"""

from __future__ import annotations

import json
import math
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from forklift_boot import cli
from tests.testbed import images, oci
from tests.testbed.credentials import PASSWORD, USER, basic, docker_config, htpasswd_auth_yaml
from tests.testbed.dockerd import DaemonFactory, DockerDaemon
from tests.testbed.fault_proxy import Fault, FaultProxy, Served
from tests.testbed.images import PublishedImage
from tests.testbed.oci import Blob, CraftedImage
from tests.testbed.registry import Registry
from tests.testbed.token_server import TokenServer

pytestmark = [pytest.mark.registry]

Capture = pytest.CaptureFixture[str]

MULTI = "fbpush/multi"  # an OCI index of amd64 (a 9 MiB layer) and arm64/v8
ATTESTED = "fbpush/attested"  # the same two images and an attestation manifest
SINGLE = "fbpush/single"  # Docker schema 2 images, no index
OTHER = "fbpush/other"
MOVED = "fbpush/moved"  # a tag moved between two cache-img runs
BIG = 9 << 20  # above the 8 MiB that go in one PUT: a streamed PATCH
PREFIX = "fleet"


@dataclass(frozen=True)
class Crafted:
    host: str  # the source registry
    index: Blob  # amd64 + arm64
    attested: Blob  # amd64 + arm64 + an attestation
    amd64: CraftedImage
    arm64: CraftedImage
    attestation: CraftedImage
    single: CraftedImage
    other: CraftedImage  # shares its first layer with single

    @property
    def big_layer(self) -> Blob:
        return self.amd64.layers[1]


@pytest.fixture(scope="module")
def crafted(registry: Registry) -> Crafted:
    shared = {"etc/forklift-push-shared": b"one layer every image here shares\n"}
    amd64 = oci.craft_image([shared, {"app/amd64": oci.pseudo_random("push-amd64", BIG)}])
    arm64 = oci.craft_image(
        [shared, {"app/arm64": b"arm64 only\n"}], architecture="arm64", variant="v8"
    )
    attestation = oci.craft_image([{"intoto.json": b"{}"}], architecture="unknown")
    for repo in (MULTI, ATTESTED):
        for image in (amd64, arm64):
            oci.push_image(registry.url, repo, image.manifest.digest, image)
    oci.push_image(registry.url, ATTESTED, attestation.manifest.digest, attestation)
    index = oci.index_of([amd64.child(), arm64.child()])
    oci.put_manifest(registry.url, MULTI, "1.0", index)
    attestation_child = {
        **attestation.manifest.descriptor(),
        "platform": {"architecture": "unknown", "os": "unknown"},
        "annotations": {"vnd.docker.reference.type": "attestation-manifest"},
    }
    attested = oci.index_of([amd64.child(), arm64.child(), attestation_child])
    oci.put_manifest(registry.url, ATTESTED, "1.0", attested)
    single = oci.craft_image([shared, {"app/single": b"single\n"}], oci=False)
    other = oci.craft_image([shared, {"app/other": b"other\n"}], oci=False)
    oci.push_image(registry.url, SINGLE, "1.0", single)
    oci.push_image(registry.url, OTHER, "1.0", other)
    return Crafted(registry.host, index, attested, amd64, arm64, attestation, single, other)


@pytest.fixture
def target() -> Iterator[Registry]:
    """A second registry, empty."""
    with Registry() as empty:
        yield empty


@pytest.fixture
def proxy(target: Registry) -> Iterator[FaultProxy]:
    with FaultProxy(target.host) as counting:
        yield counting


# Helpers


def run(capsys: Capture, *argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    base = {"HOME": "/nonexistent", "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    code = cli.main(list(argv), env={**base, **(env or {})})
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def cache_img(capsys: Capture, cache: Path, *argv: str) -> None:
    code, _, err = run(capsys, "cache-img", "--from", "registry", "--cache-dir", str(cache), *argv)
    assert code == 0, err


def push(
    capsys: Capture, cache: Path, destination: str, *argv: str, **env: str
) -> tuple[int, str, str]:
    return run(capsys, "cache", "push", "--cache-dir", str(cache), destination, *argv, env=env)


def entries(cache: Path) -> dict[str, dict[str, Any]]:
    index = json.loads((cache / "index.json").read_text())
    return {e["annotations"]["io.containerd.image.name"]: e for e in index["manifests"]}


def repo_on_target(source_host: str, repo: str) -> str:
    return f"{PREFIX}/{source_host.replace(':', '_')}/{repo}"


def step(served: Served) -> tuple[str, str, tuple[tuple[str, str], ...], int]:
    """A request without its upload session's id and state: method, path, the query
    parameters that matter, status."""
    path, _, query = served.path.partition("?")
    path = re.sub(r"/blobs/uploads/[^/]+$", "/blobs/uploads/ID", path)
    kept = {k: v[0] for k, v in urllib.parse.parse_qs(query).items() if k in ("digest", "mount")}
    return served.method, path, tuple(sorted(kept.items())), served.status


def blob_puts(proxy: FaultProxy, digest: str) -> list[Served]:
    """The requests that completed an upload of ``digest`` (a PUT with ?digest=)."""
    quoted = urllib.parse.quote(digest, safe="")
    return [r for r in proxy.blob_uploads() if r.method == "PUT" and f"digest={quoted}" in r.path]


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, err
    return lines[0]


# Requests, in order


def test_request_sequence_into_an_empty_registry(
    capsys: Capture, tmp_path: Path, crafted: Crafted, target: Registry, proxy: FaultProxy
) -> None:
    cache = tmp_path / "cache"
    cache_img(capsys, cache, f"{crafted.host}/{SINGLE}:1.0", f"{crafted.host}/{OTHER}:1.0")
    code, out, err = push(capsys, cache, f"{proxy.host}/{PREFIX}", "--jobs", "1")
    assert (code, out) == (0, ""), err

    other, single = (f"/v2/{repo_on_target(crafted.host, r)}" for r in (OTHER, SINGLE))
    shared = crafted.single.layers[0].digest
    assert shared == crafted.other.layers[0].digest

    def upload(repo: str, blob: Blob) -> list[tuple[str, str, tuple[tuple[str, str], ...], int]]:
        return [
            ("HEAD", f"{repo}/blobs/{blob.digest}", (), 404),
            ("POST", f"{repo}/blobs/uploads/", (), 202),
            ("PUT", f"{repo}/blobs/uploads/ID", (("digest", blob.digest),), 201),
        ]

    expected = [
        # Images in name order: other first, all of it uploaded.
        ("HEAD", f"{other}/manifests/1.0", (), 404),
        *upload(other, crafted.other.config),
        *upload(other, crafted.other.layers[0]),
        *upload(other, crafted.other.layers[1]),
        ("PUT", f"{other}/manifests/1.0", (), 201),
        # single: the layer other has is mounted from there, nothing of it sent.
        ("HEAD", f"{single}/manifests/1.0", (), 404),
        *upload(single, crafted.single.config),
        ("POST", f"{single}/blobs/uploads/", (("mount", shared),), 201),
        *upload(single, crafted.single.layers[1]),
        ("PUT", f"{single}/manifests/1.0", (), 201),
    ]
    assert [step(r) for r in proxy.served] == expected
    mount = proxy.mounts()[0]
    assert urllib.parse.parse_qs(mount.path.partition("?")[2])["from"] == [other[4:]]
    sizes = [
        b.size for b in (*crafted.other.blobs, crafted.single.config, crafted.single.layers[1])
    ]
    assert proxy.blob_bytes_sent() == sum(sizes)
    assert "pushed 2/2 images" in err
    assert "blobs: 5 uploaded, 1 mounted, 0 already there" in err

    # Pushed byte for byte: the registry serves the cached manifests under their digests.
    for name, image in ((OTHER, crafted.other), (SINGLE, crafted.single)):
        served = oci.get_manifest(target.url, repo_on_target(crafted.host, name), "1.0")
        assert served.data == image.manifest.data
        assert served.media_type == oci.DOCKER_MANIFEST

    # Again: one HEAD per image, nothing else.
    proxy.reset()
    code, _, err = push(capsys, cache, f"{proxy.host}/{PREFIX}")
    assert code == 0, err
    assert [step(r) for r in proxy.served] == [
        ("HEAD", f"{other}/manifests/1.0", (), 200),
        ("HEAD", f"{single}/manifests/1.0", (), 200),
    ]
    assert "pushed 2/2 images" in err
    assert "(2 already there)" in err


def test_indexes_go_byte_for_byte_and_big_blobs_stream(
    capsys: Capture, tmp_path: Path, crafted: Crafted, target: Registry, proxy: FaultProxy
) -> None:
    cache = tmp_path / "cache"
    tag_ref = f"{crafted.host}/{MULTI}:1.0"
    digest_ref = f"{crafted.host}/{MULTI}@{crafted.index.digest}"
    cache_img(capsys, cache, "--all-platforms", tag_ref, digest_ref)
    code, out, err = push(capsys, cache, f"{proxy.host}/{PREFIX}", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert [image["status"] for image in report["images"]] == ["pushed", "already there"]

    repo = repo_on_target(crafted.host, MULTI)
    assert target.manifest_digest(repo, "1.0") == crafted.index.digest
    assert oci.get_manifest(target.url, repo, crafted.index.digest).data == crafted.index.data
    for image in (crafted.amd64, crafted.arm64):
        assert oci.get_manifest(target.url, repo, image.manifest.digest).data == image.manifest.data
    for name, entry in entries(cache).items():
        assert entry["digest"] == crafted.index.digest, name

    # Every blob once: 2 configs, the shared layer, 2 own layers.
    blobs = {b.digest: b for b in (*crafted.amd64.blobs, *crafted.arm64.blobs)}
    assert len(blobs) == 5
    assert proxy.blob_bytes_sent() == sum(b.size for b in blobs.values())
    assert report["blobs_uploaded"] == 5
    assert report["bytes_sent"] == proxy.blob_bytes_sent() + sum(
        r.sent_bytes for r in proxy.made("PUT", "/manifests/")
    )
    # The big layer in one streamed PATCH, then an empty PUT; the others in one PUT each.
    patches = proxy.made("PATCH")
    assert [r.sent_bytes for r in patches] == [crafted.big_layer.size]
    assert [r.sent_bytes for r in blob_puts(proxy, crafted.big_layer.digest)] == [0]
    for digest, blob in blobs.items():
        if digest != crafted.big_layer.digest:
            assert [r.sent_bytes for r in blob_puts(proxy, digest)] == [blob.size]

    proxy.reset()
    code, _, err = push(capsys, cache, f"{proxy.host}/{PREFIX}")
    assert code == 0, err
    assert proxy.blob_uploads() == []
    assert proxy.made("POST") == []
    assert len(proxy.served) == 2  # the tag and the digest, one HEAD each


def test_a_moved_tag_keeps_its_plain_entry_and_the_pinned_one_goes_by_digest(
    capsys: Capture, tmp_path: Path, registry: Registry, target: Registry, proxy: FaultProxy
) -> None:
    """The cache holds ``name:1.0@old`` (cached before the tag moved) and ``name:1.0`` (the
    tag now): the tag on the target names the plain entry's manifest, as cache serve has it,
    and the pinned manifest is there by its digest only."""
    old = oci.craft_image([{"app/moved": b"before the tag moved\n"}], oci=False)
    new = oci.craft_image([{"app/moved": b"after the tag moved\n"}], oci=False)
    oci.push_image(registry.url, MOVED, "1.0", old)
    cache = tmp_path / "cache"
    pinned = f"{registry.host}/{MOVED}:1.0@{old.manifest.digest}"
    plain = f"{registry.host}/{MOVED}:1.0"
    cache_img(capsys, cache, pinned)
    oci.push_image(registry.url, MOVED, "1.0", new)
    cache_img(capsys, cache, plain)
    assert {name: e["digest"] for name, e in entries(cache).items()} == {
        pinned: old.manifest.digest,
        plain: new.manifest.digest,
    }

    code, out, err = push(capsys, cache, f"{proxy.host}/{PREFIX}", "--json")
    assert code == 0, err
    assert [i["status"] for i in json.loads(out)["images"]] == ["pushed", "pushed"]
    repo = repo_on_target(registry.host, MOVED)
    assert target.manifest_digest(repo, "1.0") == new.manifest.digest
    assert oci.get_manifest(target.url, repo, old.manifest.digest).data == old.manifest.data
    # One manifest PUT each: the plain entry under the tag, the pinned one under its digest.
    assert sorted(r.path for r in proxy.made("PUT", "/manifests/")) == sorted(
        [f"/v2/{repo}/manifests/1.0", f"/v2/{repo}/manifests/{old.manifest.digest}"]
    )

    proxy.reset()
    code, _, err = push(capsys, cache, f"{proxy.host}/{PREFIX}")
    assert code == 0, err
    assert "(2 already there)" in err
    assert proxy.blob_uploads() == []
    assert proxy.made("POST") == []
    assert proxy.made("PUT") == []
    assert [r.method for r in proxy.served] == ["HEAD", "HEAD"]
    assert target.manifest_digest(repo, "1.0") == new.manifest.digest


def test_a_body_limit_is_explained_and_chunk_size_gets_past_it(
    capsys: Capture, tmp_path: Path, crafted: Crafted, target: Registry
) -> None:
    cache = tmp_path / "cache"
    cache_img(capsys, cache, "--platform", "linux/amd64", f"{crafted.host}/{MULTI}:1.0")
    limit = 2 << 20
    with FaultProxy(target.host, max_body=limit) as limited:
        code, _, err = push(capsys, cache, f"{limited.host}/{PREFIX}")
        assert code == 3
        line = one_error_line(err)
        assert f"a request body of {crafted.big_layer.size} bytes is too large" in line
        assert "(HTTP 413)" in line
        assert "--chunk-size" in line
        assert not target.has_manifest(repo_on_target(crafted.host, MULTI), "1.0")

        limited.reset()
        chunk = 1 << 20
        code, _, err = push(capsys, cache, f"{limited.host}/{PREFIX}", "--chunk-size", "1M")
        assert code == 0, err
        patches = limited.made("PATCH")
        size = crafted.big_layer.size
        assert len(patches) == math.ceil(size / chunk)
        assert [r.sent_bytes for r in patches] == [
            min(chunk, size - start) for start in range(0, size, chunk)
        ]
        assert all(r.status == 202 for r in patches)
        # The config and the shared layer went in the first run, before the big one failed.
        assert "blobs: 1 uploaded, 0 mounted, 2 already there" in err
    repo = repo_on_target(crafted.host, MULTI)
    assert target.manifest_digest(repo, "1.0") == crafted.amd64.manifest.digest


def test_indexes_with_platforms_the_cache_lacks(
    capsys: Capture, tmp_path: Path, crafted: Crafted, target: Registry, proxy: FaultProxy
) -> None:
    """distribution refuses an index whose manifests it lacks (MANIFEST_BLOB_UNKNOWN): a digest
    ref can't be kept then and fails; a tag gets an index of the cached platforms."""
    cache = tmp_path / "cache"
    digest_ref = f"{crafted.host}/{ATTESTED}@{crafted.attested.digest}"
    tag_ref = f"{crafted.host}/{ATTESTED}:1.0"
    cache_img(capsys, cache, "--platform", "linux/amd64", digest_ref)
    cache_img(capsys, cache, "--all-platforms", tag_ref)  # no attestation: it is no platform
    code, _, err = push(capsys, cache, f"{proxy.host}/{PREFIX}")
    assert code == 3
    line = one_error_line(err)
    assert f"couldn't push {digest_ref}" in line
    # The tag's entry cached arm64 too: only the attestation is missing.
    assert "lists 1 manifest(s) the cache doesn't hold" in line
    assert "its digest can't be kept there" in line
    assert "pushed 1/2 images" in err

    repo = repo_on_target(crafted.host, ATTESTED)
    assert not target.has_manifest(repo, crafted.attested.digest)
    served = oci.get_manifest(target.url, repo, "1.0")
    document = json.loads(served.data)
    assert served.media_type == oci.OCI_INDEX
    assert [m["digest"] for m in document["manifests"]] == [
        crafted.amd64.manifest.digest,
        crafted.arm64.manifest.digest,
    ]
    assert [m["platform"] for m in document["manifests"]] == [
        dict(crafted.amd64.platform),
        dict(crafted.arm64.platform),
    ]
    assert "pushed as a new index of its 2 cached platforms" in err

    proxy.reset()
    code, _, err = push(capsys, cache, f"{proxy.host}/{PREFIX}")
    assert code == 3
    assert proxy.blob_uploads() == []
    assert "there as a new index of its cached platforms" in err


def test_429_and_503_are_retried(
    capsys: Capture, tmp_path: Path, crafted: Crafted, target: Registry, proxy: FaultProxy
) -> None:
    cache = tmp_path / "cache"
    cache_img(capsys, cache, f"{crafted.host}/{SINGLE}:1.0")
    proxy.add(Fault("POST", r"/blobs/uploads/$", status=429, headers={"Retry-After": "0"}))
    proxy.add(Fault("PUT", r"/blobs/uploads/.*digest=", status=503, headers={"Retry-After": "0"}))
    proxy.add(Fault("PUT", r"/manifests/1\.0$", status=503, headers={"Retry-After": "0"}))
    code, _, err = push(capsys, cache, f"{proxy.host}/{PREFIX}", "--jobs", "1")
    assert code == 0, err
    assert err.count("(HTTP 429, too many requests); trying again in 0.0 s") == 1
    assert err.count("(HTTP 503); trying again in 0.0 s") == 2
    served = oci.get_manifest(target.url, repo_on_target(crafted.host, SINGLE), "1.0")
    assert served.data == crafted.single.manifest.data


def test_a_damaged_blob_fails_its_image_only(
    capsys: Capture, tmp_path: Path, crafted: Crafted, target: Registry, proxy: FaultProxy
) -> None:
    cache = tmp_path / "cache"
    cache_img(capsys, cache, f"{crafted.host}/{SINGLE}:1.0", f"{crafted.host}/{OTHER}:1.0")
    own = crafted.single.layers[1].digest
    path = cache / "blobs/sha256" / own.removeprefix("sha256:")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    code, _, err = push(capsys, cache, f"{proxy.host}/{PREFIX}")
    assert code == 3
    line = one_error_line(err)
    assert f"couldn't push blob {own}: the cache's copy is damaged" in line
    assert "cache verify --repair" in line
    assert "pushed 1/2 images" in err
    assert target.has_manifest(repo_on_target(crafted.host, OTHER), "1.0")
    assert not target.has_manifest(repo_on_target(crafted.host, SINGLE), "1.0")
    # The registry refused the bad bytes (DIGEST_INVALID); it was not sent a second time.
    assert len(blob_puts(proxy, own)) == 1


def test_usage_errors_and_images_not_cached(
    capsys: Capture, tmp_path: Path, crafted: Crafted, target: Registry
) -> None:
    cache = tmp_path / "cache"
    cache_img(capsys, cache, f"{crafted.host}/{SINGLE}:1.0")
    for argv, message in [
        (("127.0.0.1:5000/Fleet",), "'Fleet' is not a repository name component"),
        (("https://127.0.0.1:5000/f", "--plain-http"), "--plain-http contradicts"),
        (("127.0.0.1:5000/f", "--chunk-size", "lots"), "invalid size 'lots'"),
        (("127.0.0.1:5000/f", "--bundle", "b", "x:1"), "were both given"),
    ]:
        code, _, err = push(capsys, cache, *argv)
        assert code == 2, (argv, err)
        assert message in err, err

    code, _, err = push(
        capsys, cache, f"{target.host}/{PREFIX}", "nothere:1", f"{crafted.host}/{SINGLE}:1.0"
    )
    assert code == 3
    assert "Error: nothere:1: not in the cache; cache it first" in err
    assert "pushed 1/2 images" in err

    # HTTPS to a registry that speaks HTTP: one line, with what to do.
    code, _, err = push(capsys, cache, f"https://{target.host}/{PREFIX}")
    assert code == 1
    line = one_error_line(err)
    assert f"on {target.host}: TLS failed" in line
    assert "--plain-http" in line


# Credentials


def test_htpasswd_credentials_from_config_json(
    capsys: Capture, tmp_path: Path, crafted: Crafted
) -> None:
    cache = tmp_path / "cache"
    cache_img(capsys, cache, f"{crafted.host}/{SINGLE}:1.0", f"{crafted.host}/{OTHER}:1.0")
    auth = htpasswd_auth_yaml(tmp_path / "htpasswd")
    with Registry(extra_config=auth) as protected, FaultProxy(protected.host) as counting:
        host = counting.host
        code, _, err = push(capsys, cache, f"{host}/{PREFIX}")
        assert code == 1
        line = one_error_line(err)
        assert line.startswith(f"Error: couldn't look up {repo_on_target(crafted.host, OTHER)}:1.0")
        assert (
            f"on {host}: it needs a user name and password; log in with `docker login {host}`"
            in line
        )
        assert len(counting.served) == 1  # the run stops at the first refusal

        wrong = docker_config(tmp_path / "wrong", {"auths": {host: {"auth": basic(USER, "nope")}}})
        code, _, err = push(capsys, cache, f"{host}/{PREFIX}", DOCKER_CONFIG=wrong)
        assert code == 1
        line = one_error_line(err)
        assert f"access denied (HTTP 401) to the credentials from {wrong}/config.json" in line
        assert f"`docker login {host}` as a user who may push to" in line

        counting.reset()
        right = docker_config(
            tmp_path / "right", {"auths": {f"http://{host}": {"auth": basic(USER, PASSWORD)}}}
        )
        code, out, err = push(capsys, cache, f"{host}/{PREFIX}", "-v", DOCKER_CONFIG=right)
        assert code == 0, err
        assert "pushed 2/2 images" in err
        for secret in (PASSWORD, basic(USER, PASSWORD)):
            assert secret not in err + out
        # Basic credentials answer one challenge per registry, not one per repository.
        assert [r.status for r in counting.served].count(401) == 1
        single = f"/v2/{repo_on_target(crafted.host, SINGLE)}/manifests/1.0"
        assert [r.status for r in counting.made("PUT", re.escape(single))] == [201]


def test_a_refusal_stops_the_run_and_the_report_keeps_what_was_pushed(
    capsys: Capture, tmp_path: Path, crafted: Crafted, target: Registry, proxy: FaultProxy
) -> None:
    """Credentials refused (HTTP 403) on the second image: every later image would fail the
    same way, so the run stops, and the report still says what went and why it stopped."""
    cache = tmp_path / "cache"
    refs = [f"{crafted.host}/{r}:1.0" for r in (MULTI, OTHER, SINGLE)]  # in name order
    cache_img(capsys, cache, "--platform", "linux/arm64", refs[0])
    cache_img(capsys, cache, *refs[1:])
    other = repo_on_target(crafted.host, OTHER)
    proxy.add(Fault("HEAD", f"/v2/{re.escape(other)}/manifests/", status=403))
    code, out, err = push(capsys, cache, f"{proxy.host}/{PREFIX}", "--json")
    assert code == 1
    line = one_error_line(err)
    assert f"couldn't look up {other}:1.0 on {proxy.host}: access denied (HTTP 403)" in line
    assert "pushed 1/3 images" in err
    report = json.loads(out)
    assert report["exit_code"] == 1
    assert report["error"] == line.removeprefix("Error: ")
    assert [(i["refs"], i["status"]) for i in report["images"]] == [
        ([refs[0]], "pushed"),
        ([refs[1]], "failed"),
        ([refs[2]], "failed"),
    ]
    assert report["images"][1]["detail"] == report["error"]
    assert report["images"][2]["detail"] == "not pushed: the run stopped at the error above"
    assert report["manifests_pushed"] == 1
    multi = repo_on_target(crafted.host, MULTI)
    assert target.manifest_digest(multi, "1.0") == crafted.arm64.manifest.digest
    # Nothing was asked about the image after the refusal.
    single = repo_on_target(crafted.host, SINGLE)
    assert not [r for r in proxy.served if single in r.path]


def test_bearer_tokens_scoped_for_push_and_mount(
    capsys: Capture, tmp_path: Path, crafted: Crafted
) -> None:
    cache = tmp_path / "cache"
    cache_img(capsys, cache, f"{crafted.host}/{SINGLE}:1.0", f"{crafted.host}/{OTHER}:1.0")
    # A token service that grants pull only: the registry refuses the push, in one line.
    with (
        TokenServer(users={USER: PASSWORD}) as pull_only,
        Registry(extra_config=pull_only.registry_auth_yaml()) as protected,
    ):
        config = docker_config(
            tmp_path / "docker", {"auths": {protected.host: {"auth": basic(USER, PASSWORD)}}}
        )
        code, _, err = push(capsys, cache, f"{protected.host}/{PREFIX}", DOCKER_CONFIG=config)
        assert code == 1
        line = one_error_line(err)
        assert "access denied (HTTP 401) to the credentials from" in line
        assert "as a user who may push to" in line

    with (
        TokenServer(users={USER: PASSWORD}, grant_asked=True) as server,
        Registry(extra_config=server.registry_auth_yaml()) as protected,
    ):
        config = docker_config(
            tmp_path / "docker2", {"auths": {protected.host: {"auth": basic(USER, PASSWORD)}}}
        )
        code, _, err = push(
            capsys, cache, f"{protected.host}/{PREFIX}", "--jobs", "1", DOCKER_CONFIG=config
        )
        assert code == 0, err
        assert "1 mounted" in err
        other = repo_on_target(crafted.host, OTHER)
        single = repo_on_target(crafted.host, SINGLE)
        scopes = [tuple(r["scope"]) for r in server.requests if r["granted"]]
        # Push access, asked for once per repository, and one token for the mount, which also
        # needs to pull from the repository the blob comes from.
        assert scopes == [
            (f"repository:{other}:pull,push",),
            (f"repository:{single}:pull,push",),
            (f"repository:{single}:pull,push", f"repository:{other}:pull"),
        ]
        assert {r["user"] for r in server.requests} == {USER}
        assert "pushed 2/2 images" in err
        assert PASSWORD not in err


# The standard images, pulled back into a clean dockerd


def pull(client: docker.DockerClient, ref: str) -> None:
    """``docker pull``, raising on the errors Docker reports inside its progress stream."""
    for chunk in client.api.pull(ref, stream=True, decode=True):
        assert "error" not in chunk, (ref, chunk)


def source_manifest(registry: Registry, image: PublishedImage) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(
        oci.get_manifest(registry.url, image.registry_repo, image.tag).data
    )
    return document


@dataclass(frozen=True)
class DockerBed:
    source: Registry  # the session's registry, with the standard images
    published: dict[str, PublishedImage]
    dockerd: DockerDaemon  # the session's daemon, which has them pulled
    fresh_dockerd: DaemonFactory


@pytest.fixture
def docker_bed(
    registry: Registry,
    published_images: dict[str, PublishedImage],
    dockerd: DockerDaemon,
    fresh_dockerd: DaemonFactory,
) -> DockerBed:
    return DockerBed(registry, published_images, dockerd, fresh_dockerd)


@pytest.mark.docker
def test_the_standard_images_pushed_and_pulled_into_a_clean_dockerd(
    capsys: Capture, tmp_path: Path, docker_bed: DockerBed, target: Registry, proxy: FaultProxy
) -> None:
    registry, published_images = docker_bed.source, docker_bed.published
    published = list(published_images.values())
    refs = [ref for image in published for ref in (image.tag_ref, image.digest_ref)]
    cache = tmp_path / "cache"
    cache_img(capsys, cache, "--platform", "linux/amd64", "--registry-mirror", registry.url, *refs)
    cached = entries(cache)
    assert len(cached) == 8
    code, out, err = push(capsys, cache, f"{proxy.host}/{PREFIX}", "--json")
    assert code == 0, err
    assert "pushed 8/8 images" in err
    report = json.loads(out)

    # What the source registry says the images are made of, worked out without forklift-boot.
    manifests = {image.name: source_manifest(registry, image) for image in published}
    layer_sets = [[layer["digest"] for layer in m["layers"]] for m in manifests.values()]
    shared_by_all = set.intersection(*(set(layers) for layers in layer_sets))
    assert len(shared_by_all) == 1  # busybox
    busybox = shared_by_all.pop()
    sizes = {
        d["digest"]: d["size"] for m in manifests.values() for d in [m["config"], *m["layers"]]
    }
    # Every blob crossed the wire once; the busybox layer went once and was mounted 3 times.
    assert proxy.blob_bytes_sent() == sum(sizes.values())
    assert report["blobs_uploaded"] + report["blobs_mounted"] == sum(
        len(m["layers"]) + 1 for m in manifests.values()
    )
    assert report["blobs_uploaded"] == len(sizes)
    assert len(blob_puts(proxy, busybox)) == 1
    busybox_mounts = [r for r in proxy.mounts() if urllib.parse.quote(busybox, safe="") in r.path]
    assert len(busybox_mounts) == 3

    # The registry serves each cached manifest under the cached digest.
    for image in published:
        repo = f"{PREFIX}/{image.canonical_name.replace(':', '_')}"
        for name, entry in cached.items():
            if name.startswith(image.canonical_name + ":") or name.startswith(
                image.canonical_name + "@"
            ):
                assert entry["digest"] == image.registry_digest
        assert target.manifest_digest(repo, image.tag) == image.registry_digest
        assert target.manifest_digest(repo, image.registry_digest) == image.registry_digest

    # A second push sends nothing: no upload requests, no blob bytes.
    proxy.reset()
    code, _, err = push(capsys, cache, f"{proxy.host}/{PREFIX}")
    assert code == 0, err
    assert "(8 already there)" in err
    assert proxy.blob_uploads() == []
    assert proxy.blob_bytes_sent() == 0
    assert proxy.made("POST") == []
    assert [r.method for r in proxy.served] == ["HEAD"] * 8

    # A clean dockerd, no mirror: pull by tag and by digest straight from the pushed registry.
    daemon = docker_bed.fresh_dockerd(mirror=False)
    client = daemon.client()
    try:
        for image in published:
            name = f"{target.host}/{PREFIX}/{image.canonical_name.replace(':', '_')}"
            pull(client, f"{name}:{image.tag}")
            pull(client, f"{name}@{image.registry_digest}")
            assert images.inspect(client, f"{name}:{image.tag}")["Id"] == image.image_id
            by_digest = images.inspect(client, f"{name}@{image.registry_digest}")
            assert by_digest["Id"] == image.image_id
            assert f"{name}@{image.registry_digest}" in by_digest["RepoDigests"]
    finally:
        client.close()

    # Filled from Docker instead: manifests of forklift-boot's own, so a digest ref can't be
    # reproduced and fails (a tag beside it still goes); a plain tag goes, and pulls as the same
    # image.
    alpha, beta = published_images["alpha"], published_images["beta"]
    from_docker = tmp_path / "from-docker"
    code, _, err = run(
        capsys, "cache-img", "--cache-dir", str(from_docker),
        alpha.digest_ref, alpha.tag_digest_ref, beta.tag_ref,
        env={"DOCKER_HOST": docker_bed.dockerd.host},
    )  # fmt: skip
    assert code == 0, err
    from_docker_entries = entries(from_docker)
    for again in (False, True):
        code, _, err = push(capsys, from_docker, f"{target.host}/docker")
        assert code == 3
        errors = [line for line in err.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 2, err
        # In name order: alpha:1.0@sha256:... before alpha@sha256:...
        for ref, line in zip((alpha.tag_digest_ref, alpha.digest_ref), errors, strict=True):
            assert f"couldn't push {ref}: " in line
            assert "the cache holds a copy whose manifest is" in line
            assert "cache it with --from registry to push it by digest" in line
        assert "pushed its tag only" in errors[0]
        assert "pushed 1/3 images" in err
        assert f"({int(again)} already there)" in err
    alpha_digest = from_docker_entries[alpha.full_tag_digest_ref]["digest"]
    assert alpha_digest != alpha.registry_digest
    assert target.manifest_digest("docker/docker.io/library/alpha", alpha.tag) == alpha_digest
    assert not target.has_manifest("docker/docker.io/library/alpha", alpha.registry_digest)
    beta_name = f"{target.host}/docker/docker.io/library/beta"
    pushed_digest = target.manifest_digest("docker/docker.io/library/beta", beta.tag)
    assert pushed_digest == from_docker_entries[beta.full_tag_ref]["digest"]
    client = daemon.client()
    try:
        pull(client, f"{beta_name}:{beta.tag}")
        assert images.inspect(client, f"{beta_name}:{beta.tag}")["Id"] == beta.image_id
    finally:
        client.close()
