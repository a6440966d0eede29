"""Tests for `cache serve`'s registry: a real HTTP server on loopback over a cache written for the
test, asked with http.client; expected bytes and digests come from the images as crafted
(tests/testbed/oci.py, hashlib), never from the server's own code."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import random
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from forklift_boot import cli
from forklift_boot.cache import CachedImage, CacheWriter, Descriptor, ImageCache
from forklift_boot.cli.serve import parse_listen
from forklift_boot.errors import UsageError
from forklift_boot.exchange.serve import (
    ApiError,
    CacheServer,
    RangeNotSatisfiableError,
    catalog_name,
    parse_byte_range,
    repository_name,
)
from tests.testbed import oci
from tests.testbed.oci import Blob, CraftedImage
from tests.testbed.registry import free_port

Capture = pytest.CaptureFixture[str]

BIG = (1 << 20) * 3 + 12345  # more than three of the server's 1 MiB chunks
ALPHA = "docker.io/library/alpha"
MULTI = "ghcr.io/acme/multi"
DELTA = "127.0.0.1:5000/fbtest/delta"


@dataclass(frozen=True)
class Bytes:
    """What the cache holds, as crafted."""

    alpha: CraftedImage  # OCI manifest, one big layer: alpha:1.0, alpha:latest, alpha@digest
    alpha2: CraftedImage  # another alpha: alpha:1.1@digest (pinned only), alpha:1.0@digest
    amd64: CraftedImage  # the cached platform of multi:2.0's index
    arm64: CraftedImage  # listed in the index, not cached
    index: Blob
    delta: CraftedImage  # Docker schema 2, on a registry with a port


def craft() -> Bytes:
    shared = {"etc/shared": b"shared layer\n"}
    alpha = oci.craft_image([shared, {"app/big": random.Random(7).randbytes(BIG)}])
    alpha2 = oci.craft_image([shared, {"app/alpha2": b"second alpha\n"}])
    amd64 = oci.craft_image([shared, {"app/amd64": b"amd64\n"}])
    arm64 = oci.craft_image([shared, {"app/arm64": b"arm64\n"}], architecture="arm64", variant="v8")
    index = oci.index_of([amd64.child(), arm64.child()])
    delta = oci.craft_image([{"app/delta": b"delta\n"}], oci=False)
    return Bytes(alpha, alpha2, amd64, arm64, index, delta)


def put(writer: CacheWriter, blob: Blob) -> Descriptor:
    descriptor = writer.write_blob(blob.data, blob.media_type)
    assert descriptor.digest == blob.digest
    return descriptor


def put_image(writer: CacheWriter, image: CraftedImage) -> Descriptor:
    for blob in image.blobs:
        put(writer, blob)
    return put(writer, image.manifest)


def fill(cache_dir: Path, crafted: Bytes) -> None:
    with ImageCache(cache_dir).writing() as writer:
        alpha = put_image(writer, crafted.alpha)
        alpha2 = put_image(writer, crafted.alpha2)
        put_image(writer, crafted.amd64)  # arm64 stays out: a platform that wasn't cached
        for blob in crafted.arm64.blobs:
            put(writer, blob)
        index = put(writer, crafted.index)
        delta = put_image(writer, crafted.delta)
        a2 = crafted.alpha2.manifest.digest
        images = [
            (f"{ALPHA}:1.0", alpha),
            (f"{ALPHA}:latest", alpha),
            (f"{ALPHA}@{crafted.alpha.manifest.digest}", alpha),
            (f"{ALPHA}:1.0@{a2}", alpha2),  # pinned: the plain 1.0 wins for the tag
            (f"{ALPHA}:1.1@{a2}", alpha2),  # pinned only: serves tag 1.1
            (f"{MULTI}:2.0", index),
            (f"{DELTA}:4.0", delta),
        ]
        writer.put_images([CachedImage(name, (name,), d) for name, d in images])


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        assert self.headers["Content-Type"] == "application/json; charset=utf-8"
        return json.loads(self.body)

    def error_code(self) -> str:
        errors = self.json()["errors"]
        assert len(errors) == 1
        assert errors[0]["message"]
        code: str = errors[0]["code"]
        return code


class Client:
    def __init__(self, port: int) -> None:
        self.port = port

    def request(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> Response:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(method, path, body=body, headers=dict(headers or {}))
            response = connection.getresponse()
            return Response(response.status, response.headers, response.read())
        finally:
            connection.close()

    def get(self, path: str, **headers: str) -> Response:
        return self.request("GET", path, {k.replace("_", "-"): v for k, v in headers.items()})

    def head(self, path: str) -> Response:
        return self.request("HEAD", path)


@contextlib.contextmanager
def serving(cache_dir: Path, *, verify: bool = True, **limits: Any) -> Iterator[Client]:
    server = CacheServer(cache_dir, ("127.0.0.1", 0), verify=verify, **limits)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Client(server.server_port)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def crafted() -> Bytes:
    return craft()


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, crafted: Bytes) -> Iterator[Client]:
    """A server over a cache that no test changes."""
    cache_dir = tmp_path_factory.mktemp("served") / "cache"
    fill(cache_dir, crafted)
    with serving(cache_dir) as served:
        yield served


@pytest.fixture
def cache_dir(tmp_path: Path, crafted: Bytes) -> Path:
    """A cache of the test's own, which it may change or damage."""
    path = tmp_path / "cache"
    fill(path, crafted)
    return path


@pytest.fixture
def warnings(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    # cli.main (run by other tests) stops forklift_boot's records from reaching the root logger.
    # The serve package's logger: its modules' records (catalog, handler, server) propagate to it.
    logger = logging.getLogger("forklift_boot.exchange.serve")
    logger.addHandler(caplog.handler)
    caplog.handler.setLevel(logging.WARNING)
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)


def blob_path(cache_dir: Path, digest: str) -> Path:
    return cache_dir / "blobs" / "sha256" / digest.removeprefix("sha256:")


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# The base endpoint


def test_base_endpoint_says_registry_2(client: Client) -> None:
    for method in ("GET", "HEAD"):
        response = client.request(method, "/v2/")
        assert response.status == 200
        assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"
        assert response.body == (b"{}" if method == "GET" else b"")
    assert client.get("/v2").status == 200


# Manifests


def assert_manifest(response: Response, blob: Blob, *, with_body: bool = True) -> None:
    assert response.status == 200, response.body
    assert response.headers["Content-Type"] == blob.media_type
    assert response.headers["Docker-Content-Digest"] == blob.digest
    assert response.headers["Content-Length"] == str(blob.size)
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert response.body == (blob.data if with_body else b"")


@pytest.mark.parametrize("name", ["library/alpha", "alpha", "docker.io/library/alpha"])
def test_manifest_by_tag_and_by_digest(client: Client, crafted: Bytes, name: str) -> None:
    manifest = crafted.alpha.manifest
    for reference in ("1.0", "latest", manifest.digest):
        path = f"/v2/{name}/manifests/{reference}"
        assert_manifest(client.get(path), manifest)
        assert_manifest(client.head(path), manifest, with_body=False)


def test_a_plain_tag_wins_over_a_pinned_one_and_a_pinned_one_serves_its_tag(
    client: Client, crafted: Bytes
) -> None:
    assert_manifest(client.get("/v2/library/alpha/manifests/1.0"), crafted.alpha.manifest)
    assert_manifest(client.get("/v2/library/alpha/manifests/1.1"), crafted.alpha2.manifest)
    digest = crafted.alpha2.manifest.digest
    assert_manifest(client.get(f"/v2/library/alpha/manifests/{digest}"), crafted.alpha2.manifest)


def test_an_index_and_the_platforms_it_has(client: Client, crafted: Bytes) -> None:
    assert_manifest(client.get("/v2/ghcr.io/acme/multi/manifests/2.0"), crafted.index)
    assert crafted.index.media_type == "application/vnd.oci.image.index.v1+json"
    amd64 = crafted.amd64.manifest
    assert_manifest(client.get(f"/v2/ghcr.io/acme/multi/manifests/{amd64.digest}"), amd64)
    # Listed in the index, its config and layers even lie in the cache, but the manifest doesn't.
    arm64 = client.get(f"/v2/ghcr.io/acme/multi/manifests/{crafted.arm64.manifest.digest}")
    assert (arm64.status, arm64.error_code()) == (404, "MANIFEST_UNKNOWN")
    config = client.get(f"/v2/ghcr.io/acme/multi/blobs/{crafted.arm64.config.digest}")
    assert (config.status, config.error_code()) == (404, "BLOB_UNKNOWN")


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("127.0.0.1_5000/fbtest/delta", ""),  # `cache push`'s spelling of a host with a port
        ("fbtest/delta", "?ns=127.0.0.1:5000"),  # containerd's mirror request
        ("fbtest/delta", "?ns=127.0.0.1%3A5000"),  # the same, as Go's url.Values encodes it
    ],
)
def test_docker_schema_2_from_a_registry_with_a_port(
    client: Client, crafted: Bytes, path: str, query: str
) -> None:
    manifest = crafted.delta.manifest
    assert manifest.media_type == "application/vnd.docker.distribution.manifest.v2+json"
    assert_manifest(client.get(f"/v2/{path}/manifests/4.0{query}"), manifest)
    layer = crafted.delta.layers[0]
    response = client.get(f"/v2/{path}/blobs/{layer.digest}{query}")
    assert (response.status, response.body) == (200, layer.data)


@pytest.mark.parametrize(
    ("path", "ns"),
    [("library/alpha", "docker.io"), ("alpha", "docker.io"), ("library/alpha", "index.docker.io")],
)
def test_containerd_mirror_requests_for_docker_hub(
    client: Client, crafted: Bytes, path: str, ns: str
) -> None:
    assert_manifest(client.get(f"/v2/{path}/manifests/1.0?ns={ns}"), crafted.alpha.manifest)


def test_ns_names_the_registry(client: Client) -> None:
    # ghcr.io's acme/multi is not Docker Hub's, nor the other way round.
    response = client.get("/v2/acme/multi/manifests/2.0?ns=docker.io")
    assert (response.status, response.error_code()) == (404, "NAME_UNKNOWN")
    response = client.get("/v2/library/alpha/manifests/1.0?ns=ghcr.io")
    assert (response.status, response.error_code()) == (404, "NAME_UNKNOWN")
    assert client.get("/v2/acme/multi/manifests/2.0?ns=ghcr.io").status == 200
    response = client.get("/v2/library/alpha/manifests/1.0?ns=a/b")
    assert (response.status, response.error_code()) == (400, "NAME_INVALID")


# Blobs


def test_blobs_get_and_head(client: Client, crafted: Bytes) -> None:
    for blob in (crafted.alpha.config, *crafted.alpha.layers):
        response = client.get(f"/v2/library/alpha/blobs/{blob.digest}")
        assert response.status == 200
        assert response.body == blob.data  # the big layer crosses several chunks
        assert response.headers["Docker-Content-Digest"] == blob.digest
        assert response.headers["Content-Length"] == str(blob.size)
        assert response.headers["Content-Type"] == "application/octet-stream"
        assert response.headers["Accept-Ranges"] == "bytes"
        head = client.head(f"/v2/library/alpha/blobs/{blob.digest}")
        assert (head.status, head.body) == (200, b"")
        assert head.headers["Content-Length"] == str(blob.size)
        assert head.headers["Docker-Content-Digest"] == blob.digest


def test_blobs_are_served_without_verification_too(cache_dir: Path, crafted: Bytes) -> None:
    big = crafted.alpha.layers[1]
    with serving(cache_dir, verify=False) as served:
        response = served.get(f"/v2/library/alpha/blobs/{big.digest}")
    assert (response.status, sha256(response.body)) == (200, big.digest)


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [
        ("bytes=0-9", 0, 9),
        ("bytes=10-", 10, -1),  # negative: counted from the end (-1 is the last byte)
        ("bytes=-5", -5, -1),
        ("bytes=5-5", 5, 5),
        ("bytes=100-999999999999", 100, -1),  # a last byte past the end is the end
        ("bytes=1048573-1048579", 1048573, 1048579),  # across the server's first 1 MiB chunk
        ("bytes=-999999999", 0, -1),  # a suffix longer than the blob is all of it
    ],
)
def test_byte_ranges(client: Client, crafted: Bytes, header: str, first: int, last: int) -> None:
    big = crafted.alpha.layers[1]
    size = big.size
    first, last = first % size, last % size
    response = client.get(f"/v2/library/alpha/blobs/{big.digest}", Range=header)
    assert response.status == 206
    assert response.headers["Content-Range"] == f"bytes {first}-{last}/{size}"
    assert response.headers["Content-Length"] == str(last - first + 1)
    assert response.body == big.data[first : last + 1]
    assert response.headers["Docker-Content-Digest"] == big.digest
    head = client.request("HEAD", f"/v2/library/alpha/blobs/{big.digest}", {"Range": header})
    assert (head.status, head.body) == (206, b"")


@pytest.mark.parametrize(
    "header", ["bytes=999999999-", "bytes=abc", "bytes=5-2", "bytes=-0", "bytes=-", "bytes=1-x"]
)
def test_unsatisfiable_or_malformed_ranges_are_416(
    client: Client, crafted: Bytes, header: str
) -> None:
    layer = crafted.alpha.layers[1]
    response = client.get(f"/v2/library/alpha/blobs/{layer.digest}", Range=header)
    assert response.status == 416
    assert response.headers["Content-Range"] == f"bytes */{layer.size}"
    assert response.error_code() == "RANGE_INVALID"


@pytest.mark.parametrize(
    "headers",
    [
        {"Range": "bytes=0-1,5-6"},  # several ranges: the whole blob (RFC 9110 lets a server)
        {"Range": "items=0-5"},  # another unit
        {"Range": "bytes=0-5", "If-Range": '"sha256:' + "0" * 64 + '"'},  # another blob's
    ],
)
def test_ranges_that_get_the_whole_blob(
    client: Client, crafted: Bytes, headers: dict[str, str]
) -> None:
    layer = crafted.alpha.layers[0]
    response = client.request("GET", f"/v2/library/alpha/blobs/{layer.digest}", headers)
    assert (response.status, response.body) == (200, layer.data)


def test_if_range_with_the_blobs_etag_honours_the_range(client: Client, crafted: Bytes) -> None:
    layer = crafted.alpha.layers[0]
    headers = {"Range": "bytes=0-3", "If-Range": f'"{layer.digest}"'}
    response = client.request("GET", f"/v2/library/alpha/blobs/{layer.digest}", headers)
    assert (response.status, response.body) == (206, layer.data[:4])


# Listing


def test_tags_list_and_its_pages(client: Client) -> None:
    response = client.get("/v2/library/alpha/tags/list")
    assert response.status == 200
    assert response.json() == {"name": "library/alpha", "tags": ["1.0", "1.1", "latest"]}
    assert "Link" not in response.headers
    first = client.get("/v2/library/alpha/tags/list?n=2")
    assert first.json()["tags"] == ["1.0", "1.1"]
    assert first.headers["Link"] == '</v2/library/alpha/tags/list?n=2&last=1.1>; rel="next"'
    second = client.get("/v2/library/alpha/tags/list?n=2&last=1.1")
    assert (second.json()["tags"], second.headers["Link"]) == (["latest"], None)
    assert client.get("/v2/library/alpha/tags/list?n=0").json()["tags"] == []
    assert client.get("/v2/library/alpha/tags/list?last=1.0").json()["tags"] == ["1.1", "latest"]
    mirror = client.get("/v2/fbtest/delta/tags/list?ns=127.0.0.1:5000&n=5")
    assert mirror.json() == {"name": "fbtest/delta", "tags": ["4.0"]}
    for bad in ("abc", "-1", "1.5", "%C2%B2", "%D9%A3", "9999999999"):
        response = client.get(f"/v2/library/alpha/tags/list?n={bad}")
        assert (response.status, response.error_code()) == (400, "PAGINATION_NUMBER_INVALID")


def test_catalog_and_its_pages(client: Client) -> None:
    everything = ["127.0.0.1_5000/fbtest/delta", "ghcr.io/acme/multi", "library/alpha"]
    assert client.get("/v2/_catalog").json() == {"repositories": everything}
    first = client.get("/v2/_catalog?n=2")
    assert first.json()["repositories"] == everything[:2]
    assert first.headers["Link"] == '</v2/_catalog?n=2&last=ghcr.io%2Facme%2Fmulti>; rel="next"'
    second = client.get("/v2/_catalog?n=2&last=ghcr.io%2Facme%2Fmulti")
    assert second.json()["repositories"] == everything[2:]
    by_registry = {
        "docker.io": ["library/alpha"],
        "ghcr.io": ["acme/multi"],
        "127.0.0.1:5000": ["fbtest/delta"],
        "quay.io": [],
    }
    for ns, names in by_registry.items():
        assert client.get(f"/v2/_catalog?ns={ns}").json() == {"repositories": names}


# Errors


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/v2/library/nothing/manifests/1.0", 404, "NAME_UNKNOWN"),
        ("/v2/library/nothing/blobs/sha256:" + "a" * 64, 404, "NAME_UNKNOWN"),
        ("/v2/library/nothing/tags/list", 404, "NAME_UNKNOWN"),
        ("/v2/library/alpha/manifests/9.9", 404, "MANIFEST_UNKNOWN"),
        ("/v2/library/alpha/manifests/sha256:" + "a" * 64, 404, "MANIFEST_UNKNOWN"),
        ("/v2/library/alpha/blobs/sha256:" + "a" * 64, 404, "BLOB_UNKNOWN"),
        ("/v2/library/alpha/blobs/sha256:" + "A" * 64, 400, "DIGEST_INVALID"),
        ("/v2/library/alpha/blobs/sha512:" + "a" * 128, 400, "DIGEST_INVALID"),
        ("/v2/library/alpha/blobs/sha256:abc", 400, "DIGEST_INVALID"),
        ("/v2/library/alpha/blobs/latest", 400, "DIGEST_INVALID"),
        ("/v2/library/alpha/manifests/sha256:" + "a" * 63, 400, "DIGEST_INVALID"),
        ("/v2/library/alpha/manifests/-bad", 400, "TAG_INVALID"),
        ("/v2/library/alpha/manifests/" + "a" * 129, 400, "TAG_INVALID"),
        ("/v2/Library/alpha/manifests/1.0", 400, "NAME_INVALID"),
        ("/v2/library/alpha/uploads/", 404, "UNSUPPORTED"),
        ("/v2/library/alpha/blobs/uploads/", 404, "UNSUPPORTED"),
        ("/", 404, "UNSUPPORTED"),
    ],
)
def test_error_codes(client: Client, path: str, status: int, code: str) -> None:
    response = client.get(path)
    assert (response.status, response.error_code()) == (status, code)
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    head = client.head(path)
    assert (head.status, head.body) == (status, b"")


def test_a_manifest_is_not_a_blob_of_another_repository(client: Client, crafted: Bytes) -> None:
    # A layer the cache has, but in delta's image only: alpha doesn't serve it.
    layer = crafted.delta.layers[0]
    response = client.get(f"/v2/library/alpha/blobs/{layer.digest}")
    assert (response.status, response.error_code()) == (404, "BLOB_UNKNOWN")
    # A config is a blob of its repository, not a manifest.
    config = crafted.alpha.config.digest
    response = client.get(f"/v2/library/alpha/manifests/{config}")
    assert (response.status, response.error_code()) == (404, "MANIFEST_UNKNOWN")


@pytest.mark.parametrize("method", ["PUT", "POST", "PATCH", "DELETE"])
def test_writes_are_refused_and_the_connection_stays_usable(
    client: Client, crafted: Bytes, method: str
) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", client.port, timeout=30)
    try:
        for path in ("/v2/library/alpha/blobs/uploads/", "/v2/library/alpha/manifests/1.0"):
            connection.request(method, path, body=b"x" * 1000)
            response = connection.getresponse()
            body = response.read()
            assert response.status == 405
            assert response.headers["Allow"] == "GET, HEAD"
            assert json.loads(body)["errors"][0]["code"] == "UNSUPPORTED"
        # Keep-alive: the same connection answers a read.
        connection.request("GET", "/v2/library/alpha/manifests/1.0")
        response = connection.getresponse()
        assert (response.status, response.read()) == (200, crafted.alpha.manifest.data)
    finally:
        connection.close()


@pytest.mark.parametrize("method", ["OPTIONS", "TRACE", "PROPFIND", "CONNECT", "BREW", "get"])
def test_other_methods_are_405_with_the_api_error(
    client: Client, crafted: Bytes, method: str
) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", client.port, timeout=30)
    try:
        connection.request(method, "/v2/library/alpha/manifests/1.0", body=b"x" * 100)
        response = connection.getresponse()
        body = response.read()
        assert response.status == 405
        assert response.headers["Allow"] == "GET, HEAD"
        assert response.headers["Content-Type"] == "application/json; charset=utf-8"
        assert json.loads(body)["errors"][0]["code"] == "UNSUPPORTED"
        # Keep-alive: the body was read and dropped, and the same connection answers a read.
        connection.request("GET", "/v2/library/alpha/manifests/1.0")
        response = connection.getresponse()
        assert (response.status, response.read()) == (200, crafted.alpha.manifest.data)
    finally:
        connection.close()


def test_the_cache_is_unchanged_by_writes(cache_dir: Path) -> None:
    before = {p: p.read_bytes() for p in cache_dir.rglob("*") if p.is_file()}
    with serving(cache_dir) as served:
        served.request("DELETE", "/v2/library/alpha/manifests/1.0")
        served.request("PUT", "/v2/library/alpha/manifests/9.9", body=b"{}")
        served.request("POST", "/v2/library/alpha/blobs/uploads/", body=b"")
    after = {p: p.read_bytes() for p in cache_dir.rglob("*") if p.is_file()}
    assert after == before


TRAVERSALS = [
    "/v2/../../etc/passwd/blobs/sha256:" + "a" * 64,
    "/v2/library/alpha/../../../etc/passwd/manifests/1.0",
    "/v2/library/alpha/blobs/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/v2/library/alpha/blobs/sha256:..%2F..%2Findex.json",
    "/v2/library/alpha/blobs/sha256%3A" + "a" * 64,
    "/v2/library%2Falpha/manifests/1.0",
    "/v2/library/alpha/manifests/..%2F..%2Foci-layout",
    "/v2/./library/alpha/manifests/1.0",
    "/v2//library/alpha/manifests/1.0",
    "/../../../etc/passwd",
    "/v2/library/alpha/manifests/1.0/../../../../etc/passwd",
    "/v2/library/alpha/blobs/%00",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_traversal_attempts_are_refused(client: Client, path: str) -> None:
    response = client.get(path)
    assert response.status in (400, 404), (response.status, response.body[:200])
    assert response.error_code() in {"NAME_INVALID", "DIGEST_INVALID", "TAG_INVALID", "UNSUPPORTED"}
    assert b"root:" not in response.body


def test_a_symlink_in_place_of_a_blob_is_not_followed(
    cache_dir: Path, crafted: Bytes, tmp_path: Path
) -> None:
    """Only regular files the cache wrote are served, even with the right content: the
    image whose layer is a link is not served at all (the walk refuses the link)."""
    layer = crafted.alpha.layers[0]
    outside = tmp_path / "outside"
    outside.write_bytes(layer.data)
    path = blob_path(cache_dir, layer.digest)
    path.unlink()
    path.symlink_to(outside)
    with serving(cache_dir) as served:
        response = served.get(f"/v2/library/alpha/blobs/{layer.digest}")
    assert (response.status, response.error_code()) == (404, "NAME_UNKNOWN")


def test_a_client_that_resets_mid_request_is_no_traceback(
    client: Client, capfd: pytest.CaptureFixture[str]
) -> None:
    with socket.create_connection(("127.0.0.1", client.port)) as sock:
        sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")  # the headers never end
        time.sleep(0.2)
        # Close with a reset (SO_LINGER 0), as a killed client would.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    time.sleep(0.3)
    assert client.get("/v2/").status == 200
    assert "Traceback" not in capfd.readouterr().err


# Damage and change


def test_a_damaged_blob_is_cut_short_and_logged(
    cache_dir: Path, crafted: Bytes, warnings: pytest.LogCaptureFixture
) -> None:
    big = crafted.alpha.layers[1]
    path = blob_path(cache_dir, big.digest)
    data = bytearray(path.read_bytes())
    data[BIG // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with serving(cache_dir) as served:
        connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
        connection.request("GET", f"/v2/library/alpha/blobs/{big.digest}")
        response = connection.getresponse()
        assert response.status == 200
        with pytest.raises(http.client.IncompleteRead) as excinfo:
            response.read()
        connection.close()
        # Never the whole damaged blob: the last chunk is held back until the hash is known.
        assert len(excinfo.value.partial) < big.size
        assert bytes(excinfo.value.partial) == bytes(data[: len(excinfo.value.partial)])
        # A range can't be checked: it is sent as stored.
        response_range = served.get(f"/v2/library/alpha/blobs/{big.digest}", Range="bytes=0-")
        assert response_range.body == bytes(data)
    assert f"stopped sending blob {big.digest}" in warnings.text
    assert "cache verify --repair" in warnings.text


def test_a_damaged_manifest_is_a_500_then_not_served(
    cache_dir: Path, crafted: Bytes, warnings: pytest.LogCaptureFixture
) -> None:
    manifest = crafted.delta.manifest
    with serving(cache_dir) as served:
        assert served.get("/v2/127.0.0.1_5000/fbtest/delta/manifests/4.0").status == 200
        path = blob_path(cache_dir, manifest.digest)
        path.write_bytes(path.read_bytes().replace(b"schemaVersion", b"schemaversion"))
        response = served.get("/v2/127.0.0.1_5000/fbtest/delta/manifests/4.0")
        assert (response.status, response.error_code()) == (500, "UNKNOWN")
        assert f"not serving manifest {manifest.digest}" in warnings.text
        # Once index.json changes, the catalog is rebuilt without the damaged image.
        with ImageCache(cache_dir).writing() as writer:
            writer.remove_images([f"{ALPHA}:latest"])
        response = served.get("/v2/127.0.0.1_5000/fbtest/delta/manifests/4.0")
        assert (response.status, response.error_code()) == (404, "NAME_UNKNOWN")
    assert f"not serving {DELTA}:4.0 from the image cache" in warnings.text


def test_images_added_and_deleted_while_serving(cache_dir: Path, crafted: Bytes) -> None:
    extra = oci.craft_image([{"app/new": b"new\n"}])
    with serving(cache_dir) as served:
        assert served.get("/v2/library/newcomer/manifests/1").status == 404
        with ImageCache(cache_dir).writing() as writer:
            descriptor = put_image(writer, extra)
            writer.put_images([CachedImage("docker.io/library/newcomer:1", (), descriptor)])
        assert_manifest(served.get("/v2/newcomer/manifests/1"), extra.manifest)
        with ImageCache(cache_dir).writing() as writer:
            writer.remove_images(["docker.io/library/newcomer:1"])
            writer.collect_garbage()
        response = served.get("/v2/newcomer/manifests/1")
        assert (response.status, response.error_code()) == (404, "NAME_UNKNOWN")


def test_a_blob_collected_mid_download_is_still_sent_whole(tmp_path: Path) -> None:
    """No lock is held while sending: gc runs and unlinks the blob, the open file is sent on."""
    cache = tmp_path / "cache"
    # Far more than the loopback socket buffers hold, so the server is mid-file at the delete.
    image = oci.craft_image([{"app/f": b"f\n"}])
    huge = Blob("application/vnd.oci.image.layer.v1.tar", random.Random(3).randbytes(64 << 20))
    manifest = Blob(
        oci.OCI_MANIFEST,
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": oci.OCI_MANIFEST,
                "config": image.config.descriptor(),
                "layers": [huge.descriptor()],
            }
        ).encode(),
    )
    with ImageCache(cache).writing() as writer:
        put(writer, image.config)
        put(writer, huge)
        descriptor = put(writer, manifest)
        writer.put_images([CachedImage("docker.io/library/huge:1", (), descriptor)])
    with serving(cache) as served:
        connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
        connection.request("GET", f"/v2/library/huge/blobs/{huge.digest}")
        response = connection.getresponse()
        hasher = hashlib.sha256(response.read(1 << 16))
        received = 1 << 16
        with ImageCache(cache).writing(timeout=5) as writer:  # no reader lock stands in the way
            writer.remove_images(["docker.io/library/huge:1"])
            assert writer.collect_garbage() > huge.size
        assert not blob_path(cache, huge.digest).exists()
        while chunk := response.read(1 << 20):
            hasher.update(chunk)
            received += len(chunk)
        connection.close()
        assert (received, "sha256:" + hasher.hexdigest()) == (huge.size, huge.digest)
        # A new request finds neither the image nor the blob.
        response2 = served.get(f"/v2/library/huge/blobs/{huge.digest}")
        assert (response2.status, response2.error_code()) == (404, "NAME_UNKNOWN")


def test_requests_are_answered_while_a_writer_holds_the_lock(
    cache_dir: Path, crafted: Bytes
) -> None:
    with serving(cache_dir) as served, ImageCache(cache_dir).writing():
        assert_manifest(served.get("/v2/library/alpha/manifests/1.0"), crafted.alpha.manifest)


def test_an_unreadable_index_is_a_500(cache_dir: Path, warnings: pytest.LogCaptureFixture) -> None:
    with serving(cache_dir) as served:
        (cache_dir / "index.json").write_text("{not json")
        response = served.get("/v2/library/alpha/manifests/1.0")
        assert (response.status, response.error_code()) == (500, "UNKNOWN")
        assert "couldn't answer GET /v2/library/alpha/manifests/1.0" in warnings.text
        (cache_dir / "index.json").unlink()
        response = served.get("/v2/_catalog")
        assert response.json() == {"repositories": []}


# Pure parts


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-0", (0, 0)),
        ("bytes=0-", (0, 99)),
        ("bytes=-1", (99, 99)),
        ("bytes=-100", (0, 99)),
        ("bytes=-1000", (0, 99)),
        ("bytes=50-1000", (50, 99)),
        (" bytes= 1 - 2 ", (1, 2)),
        ("bytes =1-2", None),  # not the bytes unit as written: ignored
        ("bytes=0-1,3-4", None),
        ("chunks=0-1", None),
    ],
)
def test_parse_byte_range(header: str | None, expected: tuple[int, int] | None) -> None:
    assert parse_byte_range(header, 100) == expected


@pytest.mark.parametrize(
    "header", ["bytes=100-", "bytes=100-200", "bytes=-0", "bytes=2-1", "bytes=", "bytes=a-b"]
)
def test_parse_byte_range_refuses(header: str) -> None:
    with pytest.raises(RangeNotSatisfiableError):
        parse_byte_range(header, 100)
    with pytest.raises(RangeNotSatisfiableError):
        parse_byte_range("bytes=0-", 0)  # nothing to send a byte of


@pytest.mark.parametrize(
    ("name", "ns", "canonical", "listed_as"),
    [
        ("library/alpha", None, "docker.io/library/alpha", "library/alpha"),
        ("alpha", None, "docker.io/library/alpha", "library/alpha"),
        ("docker.io/library/alpha", None, "docker.io/library/alpha", "library/alpha"),
        ("fbtest/gamma", None, "docker.io/fbtest/gamma", "fbtest/gamma"),
        ("ghcr.io/acme/app", None, "ghcr.io/acme/app", "ghcr.io/acme/app"),
        ("localhost/app", None, "localhost/app", "localhost/app"),
        ("127.0.0.1_5000/fb/delta", None, "127.0.0.1:5000/fb/delta", "127.0.0.1_5000/fb/delta"),
        ("localhost_5000/app", None, "localhost:5000/app", "localhost_5000/app"),
        ("acme/app", "ghcr.io", "ghcr.io/acme/app", "acme/app"),
        ("alpha", "docker.io", "docker.io/library/alpha", "library/alpha"),
        ("library/alpha", "registry-1.docker.io", "docker.io/library/alpha", "library/alpha"),
        ("fb/delta", "127.0.0.1:5000", "127.0.0.1:5000/fb/delta", "fb/delta"),
        ("x", "[::1]:5000", "[::1]:5000/x", "x"),
    ],
)
def test_repository_names(name: str, ns: str | None, canonical: str, listed_as: str) -> None:
    assert repository_name(name, ns) == canonical
    assert catalog_name(canonical, ns) == listed_as


def test_names_with_no_form_without_ns() -> None:
    assert catalog_name("[::1]:5000/x") is None
    assert catalog_name("ghcr.io/acme/app", "docker.io") is None


@pytest.mark.parametrize(
    "name",
    ["", "../x", "a/../b", "a//b", "a/", "/a", "A/b", "a%2Fb", "a:b", "a@b", "-a", "a" * 256],
)
def test_invalid_repository_names(name: str) -> None:
    with pytest.raises(ApiError) as excinfo:
        repository_name(name)
    assert (excinfo.value.status, excinfo.value.code) == (400, "NAME_INVALID")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:5000", ("127.0.0.1", 5000)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
        ("[::1]:5000", ("::1", 5000)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["5000", ":5000", "127.0.0.1", "127.0.0.1:70000", "::1:5000"])
def test_parse_listen_refuses(text: str) -> None:
    with pytest.raises(UsageError, match="invalid --listen"):
        parse_listen(text)


# The command's failures (it never gets to serve)


def run(capsys: Capture, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv), env={"HOME": "/nonexistent"})
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_serve_refuses_a_directory_that_is_no_cache(capsys: Capture, tmp_path: Path) -> None:
    code, out, err = run(capsys, "cache", "serve", "--cache-dir", str(tmp_path))
    assert (code, out) == (1, "")
    assert f"couldn't serve the image cache {tmp_path}: it isn't one (no oci-layout file)" in err


def test_serve_refuses_a_bad_listen_address(capsys: Capture, cache_dir: Path) -> None:
    code, _, err = run(capsys, "cache", "serve", "--cache-dir", str(cache_dir), "--listen", "x")
    assert code == 2
    assert "invalid --listen 'x'" in err


def test_serve_says_when_the_port_is_taken(capsys: Capture, cache_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", free_port()))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        code, _, err = run(
            capsys, "cache", "serve", "--cache-dir", str(cache_dir), "--listen", address
        )
    assert code == 1
    assert f"couldn't listen on {address}: Address already in use" in err


# Hostile clients: every connection bounded in time, one request per request


def receive_all(sock: socket.socket, limit: float = 10.0) -> bytes:
    """Everything until the server closes (or resets) the connection; fails after ``limit``."""
    sock.settimeout(limit)
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def responses(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The HTTP responses in ``data``: status, header fields (lowercase names), body."""
    found = []
    while data:
        head, _, data = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        fields = dict(line.split(": ", 1) for line in lines[1:])
        fields = {name.lower(): value for name, value in fields.items()}
        length = int(fields.get("content-length", "0"))
        found.append((int(lines[0].split()[1]), fields, data[:length]))
        data = data[length:]
    return found


def test_a_head_trickled_a_line_at_a_time_is_cut_at_the_deadline(cache_dir: Path) -> None:
    """Twenty clients send a header line every 0.2 s, forever: each keeps its connection only
    as long as the deadline for a request's head (1 s here), not for as long as it trickles."""
    with serving(cache_dir, header_timeout=1.0) as served:
        sockets = [socket.create_connection(("127.0.0.1", served.port)) for _ in range(20)]
        try:
            started = time.monotonic()
            for sock in sockets:
                sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
            closed: dict[socket.socket, float] = {}
            number = 0
            while len(closed) < len(sockets) and time.monotonic() - started < 10:
                number += 1
                still_open = [sock for sock in sockets if sock not in closed]
                readable, _, _ = select.select(still_open, [], [], 0.2)
                for sock in still_open:
                    try:
                        if sock in readable and not sock.recv(4096):
                            raise ConnectionResetError
                        sock.sendall(f"X-Trickle-{number}: {number}\r\n".encode())
                    except OSError:
                        closed[sock] = time.monotonic() - started
            assert len(closed) == len(sockets), "a trickling connection stayed open for 10 s"
            assert min(closed.values()) > 0.9, closed
            assert max(closed.values()) < 3.0, closed
        finally:
            for sock in sockets:
                sock.close()
        assert served.get("/v2/").status == 200


def test_a_connection_that_sends_nothing_is_closed_at_the_deadline(cache_dir: Path) -> None:
    with (
        serving(cache_dir, header_timeout=1.0) as served,
        socket.create_connection(("127.0.0.1", served.port)) as sock,
    ):
        started = time.monotonic()
        assert receive_all(sock) == b""
        assert 0.9 < time.monotonic() - started < 3.0


def test_a_keep_alive_connection_may_wait_longer_than_the_deadline(
    cache_dir: Path, crafted: Bytes
) -> None:
    """Between requests the idle timeout applies; the next head's deadline counts from its
    first byte."""
    with serving(cache_dir, header_timeout=0.5) as served:
        connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
        try:
            for _ in range(2):
                connection.request("GET", "/v2/library/alpha/manifests/1.0")
                response = connection.getresponse()
                assert (response.status, response.read()) == (200, crafted.alpha.manifest.data)
                time.sleep(1.0)
            assert connection.sock is not None  # the same connection answered both
        finally:
            connection.close()


def test_connections_beyond_the_cap_are_refused_at_once(cache_dir: Path) -> None:
    with serving(cache_dir, max_connections=4, header_timeout=30.0) as served:
        held = [socket.create_connection(("127.0.0.1", served.port)) for _ in range(4)]
        try:
            for sock in held:  # each holds a thread, its head never ending
                sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
            time.sleep(0.3)
            with socket.create_connection(("127.0.0.1", served.port)) as extra:
                started = time.monotonic()
                answer = responses(receive_all(extra))
                assert time.monotonic() - started < 2.0
            [(status, fields, body)] = answer
            assert (status, fields["connection"], fields["retry-after"]) == (503, "close", "1")
            assert json.loads(body)["errors"][0]["code"] == "UNAVAILABLE"
        finally:
            for sock in held:
                sock.close()
        # The closed connections free their places.
        deadline = time.monotonic() + 5
        while served.get("/v2/").status != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert served.get("/v2/").status == 200


SMUGGLED = b"GET /v2/_catalog HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize(
    "framing",
    [
        f"Content-Length: {len(SMUGGLED)}".encode(),
        b"Transfer-Encoding: chunked",
        b"Content-Length: 0\r\nContent-Length: 5",
        b"Content-Length: x",
    ],
)
@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
def test_a_get_or_head_with_a_body_is_400_and_the_connection_closed(
    client: Client, method: bytes, framing: bytes
) -> None:
    """What follows the head is never read as a second, pipelined request: a proxy in front
    would take it for this request's body, and a client could smuggle a request past it."""
    body = SMUGGLED
    if b"chunked" in framing:
        body = f"{len(SMUGGLED):x}\r\n".encode() + SMUGGLED + b"\r\n0\r\n\r\n"
    with socket.create_connection(("127.0.0.1", client.port)) as sock:
        sock.sendall(method + b" /v2/ HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n\r\n" + body)
        answer = responses(receive_all(sock))
    [(status, fields, data)] = answer  # one answer: the "body" was no request
    assert (status, fields["connection"]) == (400, "close")
    if method == b"GET":
        assert json.loads(data)["errors"][0]["code"] == "UNSUPPORTED"


def test_a_get_with_an_empty_body_is_answered(client: Client) -> None:
    with socket.create_connection(("127.0.0.1", client.port)) as sock:
        sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n" + SMUGGLED)
        sock.shutdown(socket.SHUT_WR)
        answer = responses(receive_all(sock))
    # Pipelining stays: the second request is answered too.
    assert [status for status, _, _ in answer] == [200, 200]
    assert json.loads(answer[1][2])["repositories"]


# Hostile caches: one bad entry fails alone, and its name never reaches a log raw


def add_entries(cache_dir: Path, *entries: dict[str, Any]) -> None:
    """Entries written into index.json as another device's cache might hold them: unchecked."""
    index_path = cache_dir / "index.json"
    index = json.loads(index_path.read_bytes())
    index["manifests"] += list(entries)
    replacement = cache_dir / "index.json.new"
    replacement.write_text(json.dumps(index))
    replacement.rename(index_path)  # as the cache replaces it: a new inode


def test_a_deeply_nested_manifest_fails_alone(
    cache_dir: Path, crafted: Bytes, warnings: pytest.LogCaptureFixture
) -> None:
    depth = 100_000
    deep = (
        b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "x": '
        + b"[" * depth
        + b"]" * depth
        + b"}"
    )
    descriptor = Descriptor("application/vnd.oci.image.manifest.v1+json", sha256(deep), len(deep))
    blob_path(cache_dir, descriptor.digest).write_bytes(deep)
    deep_name = "docker.io/library/deep:1"
    with serving(cache_dir) as served:
        assert served.get("/v2/library/alpha/manifests/1.0").status == 200
        add_entries(cache_dir, CachedImage(deep_name, (deep_name,), descriptor).to_entry())
        response = served.get("/v2/library/alpha/manifests/1.0")
        assert (response.status, response.body) == (200, crafted.alpha.manifest.data)
        assert served.get(f"/v2/library/alpha/blobs/{crafted.alpha.layers[0].digest}").status == 200
        response = served.get("/v2/library/deep/manifests/1")
        assert (response.status, response.error_code()) == (404, "NAME_UNKNOWN")
    assert f"not serving {deep_name} from the image cache" in warnings.text
    assert "deeper than 64 levels" in warnings.text


def test_a_name_with_escape_sequences_is_not_served_nor_logged_raw(
    cache_dir: Path, crafted: Bytes, warnings: pytest.LogCaptureFixture
) -> None:
    manifest = crafted.alpha.manifest
    descriptor = Descriptor(manifest.media_type, manifest.digest, len(manifest.data))
    hostile = "\x1b[31mError: FAKE\x1b[0m\n../../../../etc/passwd"
    with serving(cache_dir) as served:
        add_entries(cache_dir, CachedImage(hostile, (), descriptor).to_entry())
        response = served.get("/v2/_catalog")
        assert response.status == 200
        assert sorted(response.json()["repositories"]) == [
            "127.0.0.1_5000/fbtest/delta",
            "ghcr.io/acme/multi",
            "library/alpha",
        ]
    assert "not serving \\x1b[31mError: FAKE\\x1b[0m\\n../../../../etc/passwd" in warnings.text
    assert "\x1b" not in warnings.text
    assert "\n../" not in warnings.text
