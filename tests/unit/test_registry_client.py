"""The pure parts of the registry client: names to URLs, mirrors, Retry-After, backoff."""

from __future__ import annotations

import email.utils
import json
from pathlib import Path

import pytest

from forklift_boot import cli
from forklift_boot.cache import (
    MEDIA_DOCKER_MANIFEST,
    MEDIA_DOCKER_MANIFEST_LIST,
    MEDIA_OCI_INDEX,
    MEDIA_OCI_MANIFEST,
)
from forklift_boot.errors import RegistryError, RegistryUnreachableError
from forklift_boot.refs import parse_image_ref
from forklift_boot.stores.registry.client import RegistryClient
from forklift_boot.stores.registry.endpoints import (
    Endpoint,
    endpoints_for,
    is_loopback_host,
    mirror_base_url,
    registry_base_url,
    registry_host,
)
from forklift_boot.stores.registry.manifests import manifest_media_type
from forklift_boot.stores.registry.transport import (
    Deadline,
    RetryPolicy,
    Transport,
    parse_retry_after,
)


@pytest.mark.parametrize(
    ("ref", "base_url", "repository"),
    [
        ("nginx:1.27", "https://registry-1.docker.io", "library/nginx"),
        ("docker.io/library/nginx:1.27", "https://registry-1.docker.io", "library/nginx"),
        ("index.docker.io/library/nginx", "https://registry-1.docker.io", "library/nginx"),
        ("someone/app:2", "https://registry-1.docker.io", "someone/app"),
        ("ghcr.io/forklift-run/app:1@sha256:" + "a" * 64, "https://ghcr.io", "forklift-run/app"),
        ("registry.example.com:5000/a/b/c:1", "https://registry.example.com:5000", "a/b/c"),
        ("localhost/app:1", "http://localhost", "app"),
        ("localhost:5000/app:1", "http://localhost:5000", "app"),
        ("127.0.0.1:5000/fbtest/delta:4.0", "http://127.0.0.1:5000", "fbtest/delta"),
        ("127.1.2.3:80/x", "http://127.1.2.3:80", "x"),
        ("[::1]:5000/x:1", "http://[::1]:5000", "x"),
        ("10.0.0.1:5000/x:1", "https://10.0.0.1:5000", "x"),
    ],
)
def test_refs_map_to_registry_urls(ref: str, base_url: str, repository: str) -> None:
    parsed = parse_image_ref(ref)
    (endpoint,) = endpoints_for(parsed)
    assert endpoint.base_url == base_url
    assert not endpoint.is_mirror
    assert parsed.path == repository


def test_docker_hub_credentials_are_docker_ios() -> None:
    (endpoint,) = endpoints_for(parse_image_ref("nginx"))
    assert endpoint.credentials_host == "docker.io"
    assert endpoint.host == "registry-1.docker.io"
    assert registry_host("docker.io") == registry_host("index.docker.io") == "registry-1.docker.io"
    assert registry_host("ghcr.io") == "ghcr.io"


def test_mirrors_come_first_for_docker_hub_only() -> None:
    mirrors = [mirror_base_url(m) for m in ("https://mirror.gcr.io", "127.0.0.1:5000/")]
    endpoints = endpoints_for(parse_image_ref("alpha:1.0"), mirrors)
    assert [e.base_url for e in endpoints] == [
        "https://mirror.gcr.io",
        "http://127.0.0.1:5000",
        "https://registry-1.docker.io",
    ]
    assert [e.is_mirror for e in endpoints] == [True, True, False]
    # A mirror never gets Docker Hub's credentials, only its own.
    assert [e.credentials_host for e in endpoints] == [
        "mirror.gcr.io",
        "127.0.0.1:5000",
        "docker.io",
    ]
    assert endpoints_for(parse_image_ref("ghcr.io/a/b:1"), mirrors) == [
        Endpoint("https://ghcr.io", "ghcr.io")
    ]


@pytest.mark.parametrize(
    ("given", "base_url"),
    [
        ("https://mirror.gcr.io", "https://mirror.gcr.io"),
        ("https://mirror.gcr.io/", "https://mirror.gcr.io"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("mirror.example.com", "https://mirror.example.com"),
        ("https://proxy.example.com/dockerhub", "https://proxy.example.com/dockerhub"),
    ],
)
def test_mirror_urls(given: str, base_url: str) -> None:
    assert mirror_base_url(given) == base_url


@pytest.mark.parametrize(
    "given", ["ftp://mirror", "https://", "https://user:pw@mirror.example.com", "https://m?x=1"]
)
def test_invalid_mirror_urls(given: str) -> None:
    with pytest.raises(ValueError, match="invalid registry mirror"):
        mirror_base_url(given)
    with pytest.raises(ValueError, match="invalid registry mirror"):
        RegistryClient(mirrors=[given])


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("localhost:5000", True),
        ("127.0.0.1", True),
        ("127.0.0.1:5000", True),
        ("127.255.0.9:1", True),
        ("[::1]:5000", True),
        ("[::1]", True),
        ("128.0.0.1:5000", False),
        ("localhost.example.com", False),
        ("registry-1.docker.io", False),
        ("10.0.0.1:5000", False),
    ],
)
def test_loopback_hosts_use_http(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback
    assert registry_base_url(host).startswith("http://" if loopback else "https://")


NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        ("", None),
        ("0", 0.0),
        ("7", 7.0),
        (" 120 ", 120.0),
        ("soon", None),
        ("-3", None),
        ("1.5", None),  # delta-seconds are whole
        (email.utils.formatdate(NOW + 30, usegmt=True), 30.0),
        (email.utils.formatdate(NOW - 30, usegmt=True), 0.0),  # already past: no wait
        ("Tue, 14 Nov 2023 22:13:20 GMT", 0.0),  # NOW exactly
        ("Tue, 14 Nov 2023 22:14:20 GMT", 60.0),
    ],
)
def test_retry_after_seconds_or_http_date(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, NOW) == seconds


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=8.0)
    assert [policy.backoff(n, lambda: 0.0) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert [policy.backoff(n, lambda: 1.0) for n in range(1, 6)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    delays = {policy.backoff(3) for _ in range(50)}
    assert all(2.0 <= d <= 4.0 for d in delays)
    assert len(delays) > 1  # jitter: retries of many clients don't line up


@pytest.mark.parametrize(
    ("content_type", "document", "expected"),
    [
        (MEDIA_OCI_INDEX + "; charset=utf-8", {}, MEDIA_OCI_INDEX),
        (MEDIA_DOCKER_MANIFEST, {}, MEDIA_DOCKER_MANIFEST),
        ("application/json", {"mediaType": MEDIA_DOCKER_MANIFEST_LIST}, MEDIA_DOCKER_MANIFEST_LIST),
        ("", {"manifests": []}, MEDIA_OCI_INDEX),
        (None, {"config": {}, "layers": []}, MEDIA_OCI_MANIFEST),
        ("text/plain", {"schemaVersion": 2}, "text/plain"),
    ],
)
def test_manifest_media_type(content_type: str | None, document: object, expected: str) -> None:
    assert manifest_media_type(content_type, json.dumps(document).encode()) == expected


def test_offline_client_refuses_before_any_connection() -> None:
    client = RegistryClient(offline=True)
    repository = client.repository(parse_image_ref("nginx:1.27"))
    with pytest.raises(RegistryError, match="--offline forbids network access"):
        repository.head_manifest("1.27")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--registry-mirror", "https://m"], "--registry-mirror applies to --from registry"),
        (["--from", "registry", "--jobs", "0"], "expected a whole number of at least 1"),
        (["--from", "registry", "--platform", "linux/sparkle"], "unknown architecture"),
        (["--from", "registry", "--registry-mirror", "ftp://m"], "invalid registry mirror"),
        (["--from", "ftp"], "invalid choice"),
    ],
)
def test_cache_img_usage_errors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], message: str
) -> None:
    env = {"HOME": "/nonexistent", "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    code = cli.main(["cache-img", "--cache-dir", str(tmp_path), *argv, "nginx:1.27"], env=env)
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "index.json").exists()


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_deadline_cuts_the_timeouts_and_then_refuses_every_request() -> None:
    clock = FakeClock()
    transport = Transport(RetryPolicy(), timeout=(3.0, 5.0), deadline=Deadline(10.0, clock=clock))
    assert transport.timeout_now("look up a:1", "at r.example") == (3.0, 5.0)  # clock starts
    clock.now += 6.0
    assert transport.timeout_now("look up a:1", "at r.example") == (3.0, 4.0)
    clock.now += 3.5
    assert transport.timeout_now("look up a:1", "at r.example") == (0.5, 0.5)
    clock.now += 0.5
    with pytest.raises(RegistryUnreachableError) as raised:
        transport.timeout_now("look up a:1", "at r.example")
    assert str(raised.value) == (
        "couldn't look up a:1 at r.example: registries had 10 s to answer in this run, and "
        "that time is up"
    )


def test_without_a_deadline_the_timeouts_stay() -> None:
    transport = Transport(RetryPolicy(), timeout=(3.0, 5.0))
    assert transport.timeout_now("look up a:1", "at r.example") == (3.0, 5.0)
