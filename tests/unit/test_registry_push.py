"""The pure parts of pushing: where an image goes under a prefix, the target argument, sizes,
the token scopes a push asks for, and the summary line."""

from __future__ import annotations

import re

import pytest

from forklift_boot.errors import RegistryError
from forklift_boot.exchange.push import PUSHED, PushCounts, PushReport
from forklift_boot.exchange.serve import repository_name
from forklift_boot.refs import parse_image_ref
from forklift_boot.report import ALREADY_THERE, FAILED, MISSING, ImageOutcome
from forklift_boot.stores.registry.client import _AuthKey
from forklift_boot.stores.registry.targets import parse_push_target, parse_size


@pytest.mark.parametrize(
    ("ref", "prefix", "repository"),
    [
        # Docker Hub's official images keep library/, as Harbor proxy caches and mirrors do.
        ("alpha:1.0", "fleet", "fleet/docker.io/library/alpha"),
        ("docker.io/library/alpha:1.0", "fleet", "fleet/docker.io/library/alpha"),
        ("index.docker.io/library/alpha", "fleet", "fleet/docker.io/library/alpha"),
        ("fbtest/gamma:3.0", "a/b", "a/b/docker.io/fbtest/gamma"),
        # Same path, other registry: different repositories.
        ("ghcr.io/fbtest/gamma:3.0", "a/b", "a/b/ghcr.io/fbtest/gamma"),
        ("127.0.0.1:5000/fbtest/delta:4.0", "fleet", "fleet/127.0.0.1_5000/fbtest/delta"),
        ("localhost:5000/app:1", "fleet", "fleet/localhost_5000/app"),
        ("localhost/app:1", "", "localhost/app"),
        ("Registry.Example.COM/x/y:1", "p", "p/registry.example.com/x/y"),
        ("quay.io/a/b/c@sha256:" + "a" * 64, "p", "p/quay.io/a/b/c"),
    ],
)
def test_images_go_under_the_prefix_with_their_registry(
    ref: str, prefix: str, repository: str
) -> None:
    target = parse_push_target(f"registry.example.net:5000/{prefix}" if prefix else "r.example")
    assert target.repository_for(parse_image_ref(ref)) == repository


@pytest.mark.parametrize(
    "ref",
    [
        "alpha:1.0",
        "fbtest/gamma:3.0",
        "ghcr.io/fbtest/gamma:3.0",
        "127.0.0.1:5000/fbtest/delta:4.0",
        "localhost:5000/app:1",
        "localhost/app:1",
        "registry.example.com:443/a/b/c:1",
    ],
)
def test_cache_serve_reads_a_pushed_name_as_the_same_repository(ref: str) -> None:
    # Without a prefix, a client pulls the same name from the registry cache push filled and
    # from cache serve.
    image = parse_image_ref(ref)
    pushed_as = parse_push_target("r.example").repository_for(image)
    assert repository_name(pushed_as) == image.name


def test_names_that_cannot_be_repositories() -> None:
    target = parse_push_target("registry.example.net/fleet")
    with pytest.raises(RegistryError, match="IPv6 registry address"):
        target.repository_for(parse_image_ref("[::1]:5000/x:1"))
    long_prefix = "/".join(["segment"] * 30)
    with pytest.raises(RegistryError, match="longer than the 255 characters"):
        parse_push_target(f"registry.example.net/{long_prefix}").repository_for(
            parse_image_ref("ghcr.io/some/app:1")
        )


@pytest.mark.parametrize(
    ("given", "plain_http", "expected"),
    [
        ("registry.example.com/fleet", False, ("https://registry.example.com", "registry.example.com", "fleet", "registry.example.com/fleet")),
        ("registry.example.com:5000/a/b/", False, ("https://registry.example.com:5000", "registry.example.com:5000", "a/b", "registry.example.com:5000/a/b")),
        ("registry.example.com", False, ("https://registry.example.com", "registry.example.com", "", "registry.example.com")),
        # Loopback is plain HTTP, as for pulling and as Docker treats 127.0.0.0/8.
        ("127.0.0.1:5000/fleet", False, ("http://127.0.0.1:5000", "127.0.0.1:5000", "fleet", "127.0.0.1:5000/fleet")),
        ("localhost:5000", False, ("http://localhost:5000", "localhost:5000", "", "localhost:5000")),
        ("[::1]:5000/f", False, ("http://[::1]:5000", "[::1]:5000", "f", "[::1]:5000/f")),
        ("lan-registry:5000/fleet", True, ("http://lan-registry:5000", "lan-registry:5000", "fleet", "lan-registry:5000/fleet")),
        ("http://10.0.0.2:5000/fleet", False, ("http://10.0.0.2:5000", "10.0.0.2:5000", "fleet", "10.0.0.2:5000/fleet")),
        ("https://127.0.0.1:5000/fleet", False, ("https://127.0.0.1:5000", "127.0.0.1:5000", "fleet", "127.0.0.1:5000/fleet")),
        ("Registry.Example.com/fleet", False, ("https://registry.example.com", "registry.example.com", "fleet", "registry.example.com/fleet")),
        # Docker Hub's API is not at docker.io; its credentials are docker.io's.
        ("docker.io/someone", False, ("https://registry-1.docker.io", "docker.io", "someone", "registry-1.docker.io/someone")),
    ],
)  # fmt: skip
def test_push_targets(given: str, plain_http: bool, expected: tuple[str, str, str, str]) -> None:
    target = parse_push_target(given, plain_http=plain_http)
    endpoint = target.endpoint
    assert (endpoint.base_url, endpoint.credentials_host, target.prefix, target.display) == expected
    assert not endpoint.is_mirror


@pytest.mark.parametrize(
    ("given", "plain_http", "message"),
    [
        ("", False, "is not a HOST"),
        ("/fleet", False, "is not a HOST"),
        ("registry.example.com/Fleet", False, "'Fleet' is not a repository name component"),
        ("registry.example.com/fleet/x:1", False, "'x:1' is not a repository name component"),
        ("registry.example.com/fleet//x", False, "'' is not a repository name component"),
        ("registry.example.com/-x", False, "'-x' is not a repository name component"),
        ("ftp://registry.example.com/fleet", False, "expected [http(s)://]HOST"),
        ("https://user:pw@registry.example.com/fleet", False, "no credentials"),
        ("https://registry.example.com/fleet?x=1", False, "no credentials, query"),
        ("https://registry.example.com/fleet", True, "--plain-http contradicts"),
        ("under_score.example.com/fleet", False, "is not a HOST"),
    ],
)
def test_invalid_push_targets(given: str, plain_http: bool, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_push_target(given, plain_http=plain_http)


@pytest.mark.parametrize(
    ("given", "size"),
    [
        ("16M", 16 << 20),
        ("512k", 512 << 10),
        ("1G", 1 << 30),
        ("1048576", 1 << 20),
        ("8MiB", 8 << 20),
    ],
)
def test_sizes(given: str, size: int) -> None:
    assert parse_size(given) == size


@pytest.mark.parametrize("given", ["", "0", "-1", "1T", "lots", "1.5M"])
def test_invalid_sizes(given: str) -> None:
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(given)


def test_token_scopes_for_pulling_and_pushing() -> None:
    base = "https://registry.example.com"
    # Pulling keeps what the registry's challenge names (as before push existed).
    assert _AuthKey(base, "a/b").scopes("repository:a/b:pull") == ["repository:a/b:pull"]
    assert _AuthKey(base, "a/b").scopes(None) == ["repository:a/b:pull"]
    # Pushing asks for what it needs, whatever a HEAD's challenge said.
    push = _AuthKey(base, "fleet/x", push=True)
    assert push.scopes("repository:fleet/x:pull") == ["repository:fleet/x:pull,push"]
    mount = _AuthKey(base, "fleet/x", push=True, mount_from="fleet/y")
    assert mount.scopes(None) == ["repository:fleet/x:pull,push", "repository:fleet/y:pull"]
    # Tokens are kept per access: a mount's token is not the plain push token.
    assert len({_AuthKey(base, "a/b"), push, mount, _AuthKey(base, "fleet/x", push=True)}) == 3


def test_the_summary_line_and_exit_code() -> None:
    report = PushReport(
        "registry.example.com/fleet",
        counts=PushCounts(uploaded=7, mounted=3, present=2, manifests=5, bytes_sent=3 << 20),
    )
    report.outcomes += [
        ImageOutcome("docker.io/library/alpha:1.0", ("alpha:1.0",), PUSHED),
        ImageOutcome("docker.io/library/beta:2.0", ("beta:2.0",), ALREADY_THERE),
        ImageOutcome("docker.io/library/gone:1", ("gone:1",), MISSING, "not in the cache"),
    ]
    report.finished = report.started + 1.25
    assert report.summary() == (
        "pushed 2/3 images to registry.example.com/fleet (1 already there); blobs: 7 uploaded, "
        "3 mounted, 2 already there; 3.0 MiB sent, 1.2 s; failed: gone:1 (not in the cache)"
    )
    assert report.exit_code == 3
    document = report.to_json()
    assert document["blobs_uploaded"] == 7
    assert document["bytes_sent"] == 3 << 20
    assert [image["status"] for image in document["images"]] == [PUSHED, ALREADY_THERE, MISSING]
    # An image that isn't needed now fails nothing.
    report.outcomes[2] = ImageOutcome("x", ("gone:1",), FAILED, "why", essential=False)
    assert report.exit_code == 0
    assert report.summary().endswith("1.2 s; not needed now, but missing: gone:1 (why)")
    assert "bytes_written" not in report.to_json()["images"][0]


def test_a_run_stopped_by_the_registry_exits_1_and_says_why() -> None:
    report = PushReport("registry.example.com/fleet")
    report.outcomes.append(ImageOutcome("docker.io/library/alpha:1.0", ("alpha:1.0",), PUSHED))
    assert (report.exit_code, report.to_json()["error"]) == (0, None)
    report.error = "couldn't look up fleet/beta:2.0 on registry.example.com: access denied"
    report.outcomes.append(
        ImageOutcome("docker.io/library/beta:2.0", ("beta:2.0",), FAILED, report.error)
    )
    assert report.exit_code == 1
    document = report.to_json()
    assert (document["action"], document["exit_code"]) == ("push", 1)
    assert document["error"] == report.error
