"""Platforms: parsed, normalised and matched as containerd's platform matcher does."""

from __future__ import annotations

import json

import pytest

from forklift_boot.platforms import (
    Platform,
    best_match,
    compatible_platforms,
    default_platform,
    format_platform,
    matches,
    parse_platform,
    platform_object,
    platform_of,
    platform_text,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("linux/amd64", "linux/amd64"),
        ("linux/amd64/v1", "linux/amd64"),
        ("linux/amd64/v3", "linux/amd64/v3"),
        ("linux/x86_64", "linux/amd64"),
        ("linux/arm64", "linux/arm64"),
        ("linux/arm64/v8", "linux/arm64"),
        ("linux/arm64/8", "linux/arm64"),
        ("linux/aarch64", "linux/arm64"),
        ("linux/arm64/v8.2", "linux/arm64/v8.2"),
        ("linux/arm", "linux/arm/v7"),
        ("linux/arm/7", "linux/arm/v7"),
        ("linux/arm/v6", "linux/arm/v6"),
        ("linux/arm/6", "linux/arm/v6"),
        ("Linux/ARM64", "linux/arm64"),
        ("linux/i386", "linux/386"),
        # Bare architectures mean Linux; Debian's and uname's names are accepted.
        ("arm64", "linux/arm64"),
        ("aarch64", "linux/arm64"),
        ("x86_64", "linux/amd64"),
        ("armhf", "linux/arm/v7"),
        ("armel", "linux/arm/v6"),
        ("armv7l", "linux/arm/v7"),
        ("ppc64el", "linux/ppc64le"),
        ("linux/armhf", "linux/arm/v7"),
        ("windows/amd64", "windows/amd64"),
    ],
)
def test_parse_and_normalise(text: str, expected: str) -> None:
    assert format_platform(text) == expected
    assert str(parse_platform(text)) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected os/arch"),
        ("linux/", "expected os/arch"),
        ("linux/arm64/v8/x", "expected os/arch"),
        ("linux", "is an operating system"),
        ("linux/sparkle", "unknown architecture"),
        ("plan10/amd64", "unknown operating system"),
    ],
)
def test_invalid_platforms_say_why(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_platform(text)


def test_platform_json_and_order() -> None:
    assert Platform("linux", "arm", "v7").to_json() == {
        "architecture": "arm",
        "os": "linux",
        "variant": "v7",
    }
    assert Platform("linux", "amd64").to_json() == {"architecture": "amd64", "os": "linux"}


@pytest.mark.parametrize(
    ("descriptor_platform", "expected"),
    [
        ({"os": "linux", "architecture": "arm64", "variant": "v8"}, "linux/arm64"),
        ({"os": "linux", "architecture": "arm64"}, "linux/arm64"),
        ({"os": "linux", "architecture": "arm"}, "linux/arm/v7"),
        ({"os": "linux", "architecture": "amd64", "variant": "v1"}, "linux/amd64"),
        ({"os": "windows", "architecture": "amd64", "os.version": "10.0.17763.1"}, "windows/amd64"),
    ],
)
def test_platform_of_an_index_entry(descriptor_platform: dict[str, str], expected: str) -> None:
    assert str(platform_of(descriptor_platform)) == expected


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        # As the config spells it, not normalised; os first, variant only when set.
        (
            {"architecture": "arm64", "os": "linux", "variant": "v8", "rootfs": {}},
            '{"os": "linux", "architecture": "arm64", "variant": "v8"}',
        ),
        (
            {"architecture": "amd64", "os": "linux", "variant": ""},
            '{"os": "linux", "architecture": "amd64"}',
        ),
        ({"architecture": "x86_64"}, '{"os": "linux", "architecture": "x86_64"}'),
        ({}, '{"os": "linux", "architecture": ""}'),
    ],
)
def test_platform_object_of_a_config(config: dict[str, object], expected: str) -> None:
    assert json.dumps(platform_object(config)) == expected


@pytest.mark.parametrize(
    ("descriptor_platform", "expected"),
    [
        ({"os": "linux", "architecture": "arm64", "variant": "v8"}, "linux/arm64/v8"),
        ({"architecture": "arm", "os": "linux"}, "linux/arm"),
        ({"os": "linux", "architecture": "amd64", "variant": ""}, "linux/amd64"),
        ({"os": "unknown", "architecture": "unknown"}, "unknown/unknown"),
        ({"architecture": "amd64"}, "/amd64"),
        (None, "/"),
    ],
)
def test_platform_text_spells_a_descriptor_platform_as_written(
    descriptor_platform: dict[str, str] | None, expected: str
) -> None:
    assert platform_text(descriptor_platform) == expected


@pytest.mark.parametrize(
    "descriptor_platform",
    [None, {}, {"os": "unknown", "architecture": "unknown"}, {"os": "linux"}, {"os": 1}],
)
def test_entries_without_a_platform_are_none(descriptor_platform: object) -> None:
    # Attestation manifests say unknown/unknown: they are not images for any platform.
    assert platform_of(descriptor_platform) is None  # type: ignore[arg-type]


def strings(platforms: list[Platform]) -> list[str]:
    return [str(p) for p in platforms]


def test_compatible_platforms_best_first_as_containerd_only() -> None:
    # containerd's platforms.Only: arm64 runs arm64, then 32-bit arm down to v5.
    assert strings(compatible_platforms(parse_platform("linux/arm64"))) == [
        "linux/arm64",
        "linux/arm/v8",
        "linux/arm/v7",
        "linux/arm/v6",
        "linux/arm/v5",
    ]
    assert strings(compatible_platforms(parse_platform("linux/arm/v7"))) == [
        "linux/arm/v7",
        "linux/arm/v6",
        "linux/arm/v5",
    ]
    assert strings(compatible_platforms(parse_platform("linux/arm/v6"))) == [
        "linux/arm/v6",
        "linux/arm/v5",
    ]
    assert strings(compatible_platforms(parse_platform("linux/amd64"))) == [
        "linux/amd64",
        "linux/386",
    ]
    assert strings(compatible_platforms(parse_platform("linux/amd64/v3"))) == [
        "linux/amd64/v3",
        "linux/amd64/v2",
        "linux/amd64",
        "linux/386",
    ]
    assert strings(compatible_platforms(parse_platform("linux/arm64/v8.2")))[:3] == [
        "linux/arm64/v8.2",
        "linux/arm64/v8.1",
        "linux/arm64",
    ]
    # v9.0 diverged from v8.5: v9.1 runs v9 and v8.6 down.
    assert strings(compatible_platforms(parse_platform("linux/arm64/v9.1")))[:4] == [
        "linux/arm64/v9.1",
        "linux/arm64/v9",
        "linux/arm64/v8.6",
        "linux/arm64/v8.5",
    ]


@pytest.mark.parametrize(
    ("wanted", "candidate", "expected"),
    [
        ("linux/arm64", "linux/arm64/v8", True),
        ("linux/arm64/v8", "linux/arm64", True),
        ("linux/arm", "linux/arm/v7", True),
        ("linux/arm/v7", "linux/arm/v6", True),
        ("linux/arm/v6", "linux/arm/v7", False),
        ("linux/amd64", "linux/amd64/v2", False),
        ("linux/amd64/v2", "linux/amd64", True),
        ("linux/amd64", "linux/386", True),
        ("linux/amd64", "linux/arm64", False),
        ("linux/arm64", "linux/amd64", False),
        ("linux/amd64", "windows/amd64", False),
    ],
)
def test_matches(wanted: str, candidate: str, expected: bool) -> None:
    assert matches(parse_platform(wanted), parse_platform(candidate)) is expected


# A Docker Hub style index: two platforms, arm variants, and buildx attestation manifests.
INDEX_CHILDREN: list[dict[str, object]] = [
    {"digest": "amd64", "platform": {"architecture": "amd64", "os": "linux"}},
    {"digest": "arm-v6", "platform": {"architecture": "arm", "os": "linux", "variant": "v6"}},
    {"digest": "arm-v7", "platform": {"architecture": "arm", "os": "linux", "variant": "v7"}},
    {"digest": "arm64", "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
    {"digest": "att-amd64", "platform": {"architecture": "unknown", "os": "unknown"}},
    {"digest": "no-platform"},
]


def choose(wanted: str, children: list[dict[str, object]] = INDEX_CHILDREN) -> object:
    candidates = [(platform_of(child.get("platform")), child["digest"]) for child in children]  # type: ignore[arg-type]
    return best_match(parse_platform(wanted), candidates)


@pytest.mark.parametrize(
    ("wanted", "chosen"),
    [
        ("linux/amd64", "amd64"),
        ("linux/arm64", "arm64"),
        ("linux/arm64/v8", "arm64"),
        ("linux/arm", "arm-v7"),
        ("linux/arm/v7", "arm-v7"),
        ("linux/arm/v6", "arm-v6"),
        ("linux/arm/v5", None),
        ("linux/s390x", None),
    ],
)
def test_platform_choice_from_an_index(wanted: str, chosen: str | None) -> None:
    assert choose(wanted) == chosen


def test_the_best_platform_wins_over_index_order() -> None:
    children = [INDEX_CHILDREN[1], INDEX_CHILDREN[2]]  # arm/v6 listed before arm/v7
    assert choose("linux/arm/v7", children) == "arm-v7"
    # Without an arm64 image, containerd runs arm/v7 on arm64, as Docker on a 64-bit Pi does.
    assert choose("linux/arm64", children) == "arm-v7"


@pytest.mark.parametrize(
    ("docker", "dpkg", "machine", "expected"),
    [
        ("linux/arm64", "armhf", "aarch64", "linux/arm64"),  # Docker's wins
        (None, "armhf", "aarch64", "linux/arm/v7"),  # 32-bit Raspberry Pi OS on a 64-bit kernel
        (None, "arm64", "aarch64", "linux/arm64"),
        (None, "amd64", "x86_64", "linux/amd64"),
        (None, "armel", "armv6l", "linux/arm/v6"),
        (None, None, "aarch64", "linux/arm64"),
        (None, None, "armv7l", "linux/arm/v7"),
        (None, None, "x86_64", "linux/amd64"),
        (None, "", "x86_64", "linux/amd64"),
        ("linux/arm/v7", None, "aarch64", "linux/arm/v7"),
    ],
)
def test_default_platform(
    docker: str | None, dpkg: str | None, machine: str, expected: str
) -> None:
    assert default_platform(docker, dpkg, machine) == expected
