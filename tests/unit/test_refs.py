"""Tests for forklift_boot.refs, with expected values worked out from the grammar."""

from __future__ import annotations

import dataclasses
import re

import pytest

from forklift_boot.errors import ImageRefError
from forklift_boot.refs import (
    PATH_COMPONENT_RE,
    REGISTRY_HOST_RE,
    REPOSITORY_RE,
    TAG_RE,
    ImageRef,
    host_path_component,
    is_image_id,
    parse_image_ref,
    path_component_host,
)

HEX = "a97d837baef1734cfaa19c24f333bfdf402b78de634b63b7f51c422d0270300e"
DIGEST = f"sha256:{HEX}"
HEX_512 = "0123456789abcdef" * 8

# (written, domain, path, tag, digest)
PARSE_CASES: list[tuple[str, str, str, str | None, str | None]] = [
    ("nginx", "docker.io", "library/nginx", None, None),
    ("nginx:1.27", "docker.io", "library/nginx", "1.27", None),
    ("someone/app:tag", "docker.io", "someone/app", "tag", None),
    ("someone/team/app", "docker.io", "someone/team/app", None, None),
    ("docker.io/library/redis", "docker.io", "library/redis", None, None),
    ("docker.io/redis", "docker.io", "library/redis", None, None),
    ("index.docker.io/redis", "docker.io", "library/redis", None, None),
    ("index.docker.io/someone/app", "docker.io", "someone/app", None, None),
    ("docker.io/library/a/b", "docker.io", "library/a/b", None, None),
    ("ghcr.io/planktoscope/segmenter", "ghcr.io", "planktoscope/segmenter", None, None),
    ("127.0.0.1:5000/app:dev", "127.0.0.1:5000", "app", "dev", None),
    ("registry:5000/app", "registry:5000", "app", None, None),
    ("localhost/app", "localhost", "app", None, None),
    ("localhost:5000/team/app:1", "localhost:5000", "team/app", "1", None),
    ("[::1]:5000/app:1", "[::1]:5000", "app", "1", None),
    ("[2001:db8::1]/app", "[2001:db8::1]", "app", None, None),
    # A single component is never a domain, so these are Docker Hub images.
    ("localhost", "docker.io", "library/localhost", None, None),
    ("localhost:5000", "docker.io", "library/localhost", "5000", None),
    ("example.com", "docker.io", "library/example.com", None, None),
    # An uppercase first component can only be a domain.
    ("Example/app", "Example", "app", None, None),
    # "nginx:1" contains ":", so it is taken as host "nginx", port 1.
    ("nginx:1/2", "nginx:1", "2", None, None),
    # Looks like a domain but "_" is not allowed in one: the whole name is a path.
    ("foo_bar.com/x", "", "foo_bar.com/x", None, None),
    (
        "a__b--c_d/e.f---g:Tag_1.0-x",
        "docker.io",
        "a__b--c_d/e.f---g",
        "Tag_1.0-x",
        None,
    ),
    ("nginx:" + "t" * 128, "docker.io", "library/nginx", "t" * 128, None),
    (f"nginx@{DIGEST}", "docker.io", "library/nginx", None, DIGEST),
    (f"nginx:1.27@{DIGEST}", "docker.io", "library/nginx", "1.27", DIGEST),
    (f"ghcr.io/x/y@sha512:{HEX_512}", "ghcr.io", "x/y", None, f"sha512:{HEX_512}"),
    (f"docker.io/{HEX}", "docker.io", f"library/{HEX}", None, None),
    # Not an ID to the parser: image "sha256" with a 64-character tag.
    (DIGEST, "docker.io", "library/sha256", HEX, None),
    # Path length is counted after "library/" is added: 8 + 247 = 255.
    ("a" * 247, "docker.io", "library/" + "a" * 247, None, None),
    ("example.com/" + "a" * 255, "example.com", "a" * 255, None, None),
]


@pytest.mark.parametrize(("text", "domain", "path", "tag", "digest"), PARSE_CASES)
def test_parse(text: str, domain: str, path: str, tag: str | None, digest: str | None) -> None:
    assert parse_image_ref(text) == ImageRef(text, domain, path, tag, digest)


@pytest.mark.parametrize("text", [case[0] for case in PARSE_CASES if case[0] != f"docker.io/{HEX}"])
def test_canonical_and_familiar_forms_parse_back_to_the_same_image(text: str) -> None:
    ref = parse_image_ref(text)
    for form in (ref.canonical, ref.familiar):
        again = parse_image_ref(form)
        assert (again.domain, again.path, again.tag, again.digest) == (
            ref.domain,
            ref.path,
            ref.tag,
            ref.digest,
        )


def test_familiar_form_of_a_hex_name_is_refused_like_in_docker() -> None:
    ref = parse_image_ref(f"docker.io/{HEX}")
    assert ref.familiar == HEX
    with pytest.raises(ImageRefError):
        parse_image_ref(ref.familiar)


# (written, canonical, familiar)
FORM_CASES = [
    ("nginx", "docker.io/library/nginx", "nginx"),
    ("nginx:1.27", "docker.io/library/nginx:1.27", "nginx:1.27"),
    ("docker.io/library/nginx:1.27", "docker.io/library/nginx:1.27", "nginx:1.27"),
    ("index.docker.io/someone/app:v2", "docker.io/someone/app:v2", "someone/app:v2"),
    ("docker.io/library/a/b", "docker.io/library/a/b", "library/a/b"),
    ("localhost/app", "localhost/app", "localhost/app"),
    ("localhost:5000", "docker.io/library/localhost:5000", "localhost:5000"),
    ("foo_bar.com/x", "foo_bar.com/x", "foo_bar.com/x"),
    (f"ghcr.io/x/y@{DIGEST}", f"ghcr.io/x/y@{DIGEST}", f"ghcr.io/x/y@{DIGEST}"),
    (
        f"nginx:1.27@{DIGEST}",
        f"docker.io/library/nginx:1.27@{DIGEST}",
        f"nginx:1.27@{DIGEST}",
    ),
]


@pytest.mark.parametrize(("text", "canonical", "familiar"), FORM_CASES)
def test_forms(text: str, canonical: str, familiar: str) -> None:
    ref = parse_image_ref(text)
    assert ref.canonical == canonical
    assert ref.familiar == familiar
    assert ref.written == text


@pytest.mark.parametrize(
    ("text", "name", "familiar_name"),
    [
        ("nginx:1", "docker.io/library/nginx", "nginx"),
        ("someone/app", "docker.io/someone/app", "someone/app"),
        ("docker.io/library/a/b", "docker.io/library/a/b", "library/a/b"),
        ("ghcr.io/x/y:1", "ghcr.io/x/y", "ghcr.io/x/y"),
        ("ghcr.io/library/y", "ghcr.io/library/y", "ghcr.io/library/y"),
        ("localhost:5000/app", "localhost:5000/app", "localhost:5000/app"),
    ],
)
def test_names(text: str, name: str, familiar_name: str) -> None:
    ref = parse_image_ref(text)
    assert ref.name == name
    assert ref.familiar_name == familiar_name


@pytest.mark.parametrize(
    ("text", "name_only", "tagged", "digested"),
    [
        ("nginx", True, None, None),
        ("nginx:1", False, "docker.io/library/nginx:1", None),
        (f"nginx@{DIGEST}", False, None, f"docker.io/library/nginx@{DIGEST}"),
        (
            f"nginx:1@{DIGEST}",
            False,
            "docker.io/library/nginx:1",
            f"docker.io/library/nginx@{DIGEST}",
        ),
    ],
)
def test_tag_and_digest_views(
    text: str, name_only: bool, tagged: str | None, digested: str | None
) -> None:
    ref = parse_image_ref(text)
    assert ref.is_name_only is name_only
    assert ref.tagged == tagged
    assert ref.digested == digested


def test_with_default_tag_adds_latest_to_a_name_only_ref() -> None:
    ref = parse_image_ref("nginx").with_default_tag()
    assert ref == ImageRef("nginx", "docker.io", "library/nginx", "latest", None)
    assert ref.canonical == "docker.io/library/nginx:latest"
    assert ref.familiar == "nginx:latest"


@pytest.mark.parametrize("text", ["nginx:1.27", f"nginx@{DIGEST}", f"nginx:1@{DIGEST}"])
def test_with_default_tag_keeps_a_tag_or_digest(text: str) -> None:
    ref = parse_image_ref(text)
    assert ref.with_default_tag() == ref


def test_image_ref_is_frozen() -> None:
    ref = parse_image_ref("nginx")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ref.tag = "1"  # type: ignore[misc]


INVALID_FORMAT = "invalid reference format"
LOWERCASE = "repository name must be lowercase"

# (written, reason)
ERROR_CASES = [
    ("", "repository name must have at least one component"),
    (HEX, "cannot specify 64-byte hexadecimal strings"),
    ("Foo:1", LOWERCASE),
    ("someone/App", LOWERCASE),
    ("docker.io/someone/App:1", LOWERCASE),
    ("localhost:5000/App", LOWERCASE),
    # Uppercase host, but "_" makes it no host: the grammar's lowercase retry.
    ("Foo_Bar/x", LOWERCASE),
    # Without a tag, Docker lowercase-checks up to the digest's ":".
    (f"nginx@SHA256:{HEX}", LOWERCASE),
    ("nginx:", INVALID_FORMAT),
    ("nginx:-1", INVALID_FORMAT),
    ("nginx:.1", INVALID_FORMAT),
    ("nginx:a+b", INVALID_FORMAT),
    ("nginx:" + "t" * 129, INVALID_FORMAT),
    ("nginx:bad/tag", INVALID_FORMAT),
    ("nginx:1:2", INVALID_FORMAT),
    ("nginx@", INVALID_FORMAT),
    ("nginx@sha256:", INVALID_FORMAT),
    ("nginx@sha256:abc", INVALID_FORMAT),
    (f"nginx:1.27@sha256:{HEX[:31]}", INVALID_FORMAT),
    ("foo//bar", INVALID_FORMAT),
    ("docker///docker", INVALID_FORMAT),
    ("/nginx", INVALID_FORMAT),
    ("someone/", INVALID_FORMAT),
    ("-nginx", INVALID_FORMAT),
    ("nginx_", INVALID_FORMAT),
    ("ngi..nx", INVALID_FORMAT),
    ("ngi___nx", INVALID_FORMAT),
    (" nginx", INVALID_FORMAT),
    ("nginx ", INVALID_FORMAT),
    ("nginx\n", INVALID_FORMAT),
    ("https://ghcr.io/x/y", INVALID_FORMAT),
    ("[::1]:5000", INVALID_FORMAT),
    ("[fe80::1%eth0]:5000/app", INVALID_FORMAT),
    ("ngïnx", INVALID_FORMAT),
    ("nginx:tägg", INVALID_FORMAT),
    ("a" * 248, "repository name must not be more than 255 characters"),
    (
        "example.com/" + "a" * 256,
        "repository name must not be more than 255 characters",
    ),
    (f"nginx@sha256:{HEX[:40]}", "invalid checksum digest length"),
    (f"nginx@sha512:{HEX}", "invalid checksum digest length"),
    (f"nginx@sha256:{HEX.upper()}", "invalid checksum digest format"),
    (f"nginx:1@SHA256:{HEX}", "invalid checksum digest format"),
    (f"nginx@md5:{HEX[:32]}", "unsupported digest algorithm"),
    (f"nginx@sha256+b64:{HEX}", "unsupported digest algorithm"),
]


@pytest.mark.parametrize(("text", "reason"), ERROR_CASES)
def test_errors(text: str, reason: str) -> None:
    with pytest.raises(ImageRefError) as caught:
        parse_image_ref(text)
    assert str(caught.value).endswith(f": {reason}")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Foo:1", 'invalid image reference "Foo:1": repository name must be lowercase'),
        (
            "",
            'invalid image reference "": repository name must have at least one component',
        ),
        ("nginx\n", 'invalid image reference "nginx\\n": invalid reference format'),
        (
            HEX,
            f'invalid image reference "{HEX}": cannot specify 64-byte hexadecimal strings',
        ),
    ],
)
def test_error_message(text: str, message: str) -> None:
    with pytest.raises(ImageRefError) as caught:
        parse_image_ref(text)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (HEX, True),
        (DIGEST, True),
        (HEX.upper(), False),
        (HEX[:63], False),
        (HEX + "0", False),
        (f"sha512:{HEX}", False),
        (f"{DIGEST}\n", False),
        ("nginx", False),
        ("", False),
    ],
)
def test_is_image_id(text: str, expected: bool) -> None:
    assert is_image_id(text) is expected


# The grammar's pieces, as cache serve and cache push check names with them.


@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [
        (PATH_COMPONENT_RE, "a.b__c-d---e", True),
        (PATH_COMPONENT_RE, "a..b", False),  # one period at a time
        (PATH_COMPONENT_RE, "a___b", False),  # one or two underscores
        (PATH_COMPONENT_RE, "-a", False),
        (PATH_COMPONENT_RE, "a/b", False),
        (REPOSITORY_RE, "library/alpha", True),
        (REPOSITORY_RE, "a//b", False),
        (REPOSITORY_RE, "A/b", False),
        (TAG_RE, "_v1.0-rc", True),
        (TAG_RE, "a" * 128, True),
        (TAG_RE, "a" * 129, False),
        (TAG_RE, ".v1", False),
        (TAG_RE, "v\u00e9", False),  # Go's \w is ASCII only
        (REGISTRY_HOST_RE, "Registry.Example.com:5000", True),
        (REGISTRY_HOST_RE, "127.0.0.1", True),
        (REGISTRY_HOST_RE, "[::1]:5000", True),
        (REGISTRY_HOST_RE, "-r.example", False),
        (REGISTRY_HOST_RE, "r_1.example", False),
        (REGISTRY_HOST_RE, "r.example:", False),
        (REGISTRY_HOST_RE, "::1", False),  # IPv6 only in brackets
    ],
)
def test_grammar_patterns(pattern: re.Pattern[str], text: str, expected: bool) -> None:
    assert (pattern.fullmatch(text) is not None) is expected


# A registry host as a repository-name component, as cache push writes it and cache serve
# reads it back.


@pytest.mark.parametrize(
    ("host", "component"),
    [
        ("127.0.0.1:5000", "127.0.0.1_5000"),
        ("localhost:5000", "localhost_5000"),
        ("registry.example.com:443", "registry.example.com_443"),
        ("my-registry.lan:5000", "my-registry.lan_5000"),
    ],
)
def test_host_with_port_and_its_component_map_both_ways(host: str, component: str) -> None:
    assert host_path_component(host) == component
    assert path_component_host(component) == host


@pytest.mark.parametrize("host", ["ghcr.io", "docker.io", "localhost", "127.0.0.1"])
def test_host_without_port_is_its_own_component(host: str) -> None:
    assert host_path_component(host) == host
    # Read as it is, by Docker's rules: nothing to map back.
    assert path_component_host(host) is None


def test_host_components_are_lowercase_and_ipv6_has_none() -> None:
    assert host_path_component("Registry.Example.COM:5000") == "registry.example.com_5000"
    assert host_path_component("[::1]:5000") is None
    assert host_path_component("[fe80::1]") is None


@pytest.mark.parametrize(
    "component",
    [
        "library",
        "app_1",  # no dot and not localhost: a path, as Docker reads a first component
        "registry_5000",
        "127.0.0.1_",
        "_5000",
        "127.0.0.1_50a0",
        "127.0.0.1__5000",
        "127.0.0.1:5000",
        "Localhost_5000",
    ],
)
def test_components_that_stand_for_no_host(component: str) -> None:
    assert path_component_host(component) is None


def test_a_single_label_host_with_a_port_does_not_read_back() -> None:
    # Its component has no dot, so it reads as a path (Docker Hub's "registry_5000/x"):
    # cache push names it so, and cache serve serves such an image only under ?ns=.
    assert host_path_component("registry:5000") == "registry_5000"
    assert path_component_host("registry_5000") is None


# Real references from the pallet-standard fixture's compose files.
# (written, name, familiar_name, tag)
PALLET_CASES = [
    (
        (
            "docker.io/portainer/portainer-ce:2.23.0"
            "@sha256:bac59ebb8208d09aa3f1b13f2467b8145cad01c754dc8c59a7d5cf0677d5c963"
        ),
        "docker.io/portainer/portainer-ce",
        "portainer/portainer-ce",
        "2.23.0",
    ),
    (
        "ghcr.io/sargassum-world/pslocal:0.3.8",
        "ghcr.io/sargassum-world/pslocal",
        "ghcr.io/sargassum-world/pslocal",
        "0.3.8",
    ),
    (
        (
            "nginxdemos/hello:0.4"
            "@sha256:a97d837baef1734cfaa19c24f333bfdf402b78de634b63b7f51c422d0270300e"
        ),
        "docker.io/nginxdemos/hello",
        "nginxdemos/hello",
        "0.4",
    ),
    (
        (
            "traefik/whoami:v1.10.3"
            "@sha256:43a68d10b9dfcfc3ffbfe4dd42100dc9aeaf29b3a5636c856337a5940f1b4f1c"
        ),
        "docker.io/traefik/whoami",
        "traefik/whoami",
        "v1.10.3",
    ),
    (
        (
            "nodered/node-red:4.0.5-minimal"
            "@sha256:ef19233ba9ee55770460cda733daea83ca258f4f2c9bddf4f2860522a1ea93bb"
        ),
        "docker.io/nodered/node-red",
        "nodered/node-red",
        "4.0.5-minimal",
    ),
    (
        (
            "docker.io/library/alpine:3.20.3"
            "@sha256:beefdbd8a1da6d2915566fde36db9db0b524eb737fc57cd1367effd16dc0d06d"
        ),
        "docker.io/library/alpine",
        "alpine",
        "3.20.3",
    ),
    (
        (
            "docker.io/library/eclipse-mosquitto:2.0.20"
            "@sha256:090d745b6435d10a31acb82eee999ec36a2d7f416cc4f578c0a298c42af2ea14"
        ),
        "docker.io/library/eclipse-mosquitto",
        "eclipse-mosquitto",
        "2.0.20",
    ),
    (
        (
            "ghcr.io/planktoscope/device-backend-processing-segmenter:2024.0.0-beta.2"
            "@sha256:e13204f9001a5e5c51af7771c0d6332da1c836df92ca38546d01a6c32ff1fa14"
        ),
        "ghcr.io/planktoscope/device-backend-processing-segmenter",
        "ghcr.io/planktoscope/device-backend-processing-segmenter",
        "2024.0.0-beta.2",
    ),
    (
        (
            "tecnativa/docker-socket-proxy:0.3.0"
            "@sha256:9e4b9e7517a6b660f2cc903a19b257b1852d5b3344794e3ea334ff00ae677ac2"
        ),
        "docker.io/tecnativa/docker-socket-proxy",
        "tecnativa/docker-socket-proxy",
        "0.3.0",
    ),
    (
        (
            "docker.io/lucaslorentz/caddy-docker-proxy:2.9.1"
            "@sha256:7f9a60e1d12da8ef4714cdeaccfce151cfd4b2deb0561f522b90e67784e68a91"
        ),
        "docker.io/lucaslorentz/caddy-docker-proxy",
        "lucaslorentz/caddy-docker-proxy",
        "2.9.1",
    ),
]


@pytest.mark.parametrize(("text", "name", "familiar_name", "tag"), PALLET_CASES)
def test_pallet_standard_refs(text: str, name: str, familiar_name: str, tag: str) -> None:
    ref = parse_image_ref(text)
    assert ref.name == name
    assert ref.familiar_name == familiar_name
    assert ref.tag == tag
    digest = text.partition("@")[2] or None
    assert ref.digest == digest
    assert ref.canonical == f"{name}:{tag}" + (f"@{digest}" if digest else "")
