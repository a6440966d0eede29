"""Image platforms (``os/arch[/variant]``), normalised and matched as containerd's matcher does.

Pure: no I/O. containerd's ``platforms.Normalize`` and ``platforms.Only`` are the reference
(containerd/platforms database.go and compare.go): ``linux/arm64`` is ``linux/arm64/v8``,
``linux/arm`` is ``linux/arm/v7``, ``amd64/v1`` is ``amd64``; a wanted platform also accepts
the older ones it can run, best first (``arm/v7`` takes ``arm/v6``, ``amd64`` takes ``386``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = [
    "Platform",
    "best_match",
    "compatible_platforms",
    "default_platform",
    "format_platform",
    "matches",
    "parse_platform",
    "platform_object",
    "platform_of",
    "platform_text",
]

_KNOWN_OS = frozenset(
    {
        "aix", "android", "darwin", "dragonfly", "freebsd", "hurd", "illumos", "ios", "js",
        "linux", "nacl", "netbsd", "openbsd", "plan9", "solaris", "windows", "zos",
    }
)  # fmt: skip
_KNOWN_ARCH = frozenset(
    {
        "386", "amd64", "amd64p32", "arm", "armbe", "arm64", "arm64be", "ppc64", "ppc64le",
        "loong64", "mips", "mipsle", "mips64", "mips64le", "mips64p32", "mips64p32le", "ppc",
        "riscv", "riscv64", "s390", "s390x", "sparc", "sparc64", "wasm",
    }
)  # fmt: skip

# `dpkg --print-architecture` names that are not GOARCH names (Debian's ports).
_DPKG_ARCH = {
    "i386": ("386", ""),
    "armhf": ("arm", "v7"),
    "armel": ("arm", "v6"),
    "ppc64el": ("ppc64le", ""),
    "mips64el": ("mips64le", ""),
    "mipsel": ("mipsle", ""),
}
# `uname -m` names (platform.machine()).
_MACHINE_ARCH = {
    "x86_64": ("amd64", ""),
    "amd64": ("amd64", ""),
    "i386": ("386", ""),
    "i486": ("386", ""),
    "i586": ("386", ""),
    "i686": ("386", ""),
    "aarch64": ("arm64", ""),
    "arm64": ("arm64", ""),
    "armv8l": ("arm", "v8"),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "armv5tel": ("arm", "v5"),
    "ppc64le": ("ppc64le", ""),
    "s390x": ("s390x", ""),
    "riscv64": ("riscv64", ""),
}


@dataclass(frozen=True, order=True)
class Platform:
    """A normalised platform: compare two with ``==`` after ``parse_platform``/``platform_of``."""

    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text

    def to_json(self) -> dict[str, str]:
        """The ``platform`` object of an OCI descriptor."""
        obj = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            obj["variant"] = self.variant
        return obj


def normalize(os_name: str, architecture: str, variant: str = "") -> Platform:
    """containerd's ``Normalize``: lowercase, GOARCH names, canonical variants."""
    os_name = os_name.lower() or "linux"
    if os_name == "macos":
        os_name = "darwin"
    arch, variant = architecture.lower(), variant.lower()
    if arch == "i386":
        arch, variant = "386", ""
    elif arch in ("x86_64", "x86-64", "amd64"):
        arch = "amd64"
        if variant == "v1":
            variant = ""
    elif arch in ("aarch64", "arm64"):
        arch = "arm64"
        if variant in ("8", "v8"):
            variant = ""
    elif arch == "armhf":
        arch, variant = "arm", "v7"
    elif arch == "armel":
        arch, variant = "arm", "v6"
    elif arch == "arm":
        if variant in ("", "7"):
            variant = "v7"
        elif variant in ("5", "6", "8"):
            variant = "v" + variant
    return Platform(os_name, arch, variant)


def parse_platform(text: str) -> Platform:
    """``os/arch[/variant]``, or just ``arch`` (Linux); dpkg and uname names are accepted.

    ValueError names what is wrong; callers turn it into a usage error.
    """
    parts = text.strip().split("/")
    if not text.strip() or any(not part for part in parts) or len(parts) > 3:
        raise ValueError(f"invalid platform {text!r}: expected os/arch[/variant], e.g. linux/arm64")
    if len(parts) == 1:
        if parts[0].lower() in _KNOWN_OS:
            raise ValueError(
                f"invalid platform {text!r}: {parts[0]} is an operating system; "
                f"give the architecture too, e.g. {parts[0].lower()}/arm64"
            )
        parts = ["linux", *parts]
    os_name, arch = parts[0].lower(), parts[1].lower()
    variant = parts[2] if len(parts) == 3 else ""
    if not variant:
        arch, variant = _DPKG_ARCH.get(arch) or _MACHINE_ARCH.get(arch) or (arch, "")
    platform = normalize(os_name, arch, variant)
    if platform.os not in _KNOWN_OS:
        raise ValueError(f"invalid platform {text!r}: unknown operating system {platform.os!r}")
    if platform.architecture not in _KNOWN_ARCH:
        raise ValueError(
            f"invalid platform {text!r}: unknown architecture {platform.architecture!r} "
            "(expected a Go architecture name such as amd64, arm64 or arm)"
        )
    return platform


def format_platform(text: str) -> str:
    """The canonical spelling of a platform string (``linux/arm64/v8`` -> ``linux/arm64``)."""
    return str(parse_platform(text))


def platform_of(descriptor_platform: Mapping[str, Any] | None) -> Platform | None:
    """The normalised platform of an image index entry's ``platform`` object, None if it has
    none (or names no architecture, as attestation manifests do: ``unknown/unknown``)."""
    if not isinstance(descriptor_platform, Mapping):
        return None
    os_name = descriptor_platform.get("os")
    arch = descriptor_platform.get("architecture")
    variant = descriptor_platform.get("variant") or ""
    if not isinstance(os_name, str) or not isinstance(arch, str) or not isinstance(variant, str):
        return None
    if not arch or arch == "unknown" or os_name == "unknown":
        return None
    return normalize(os_name, arch, variant)


def platform_object(config: Mapping[str, Any]) -> dict[str, str]:
    """An image index's ``platform`` object for an image config, as the config spells it."""
    platform = {
        "os": str(config.get("os", "linux")),
        "architecture": str(config.get("architecture", "")),
    }
    if config.get("variant"):
        platform["variant"] = str(config["variant"])
    return platform


def platform_text(descriptor_platform: Mapping[str, Any] | None) -> str:
    """``os/arch[/variant]`` as a descriptor's ``platform`` object spells it, not normalised
    (``format_platform`` is the canonical spelling of a platform string)."""
    platform = descriptor_platform or {}
    text = f"{platform.get('os', '')}/{platform.get('architecture', '')}"
    return f"{text}/{platform['variant']}" if platform.get("variant") else text


def compatible_platforms(wanted: Platform) -> list[Platform]:
    """What ``wanted`` accepts, best first: containerd's ``platformVector`` (``Only``)."""
    wanted = normalize(wanted.os, wanted.architecture, wanted.variant)
    vector = [wanted]
    if wanted.architecture == "amd64":
        level = _version(wanted.variant)
        if level is not None and level > 1:
            vector += [
                Platform(wanted.os, "amd64", _amd64_variant(n)) for n in range(level - 1, 0, -1)
            ]
        vector.append(Platform(wanted.os, "386"))
    elif wanted.architecture == "arm":
        level = _version(wanted.variant)
        if level is not None and level > 5:
            vector += [Platform(wanted.os, "arm", f"v{n}") for n in range(level - 1, 4, -1)]
    elif wanted.architecture == "arm64":
        vector = _arm64_vector(wanted)
    return _unique(vector)


def matches(wanted: Platform, candidate: Platform) -> bool:
    """Whether an image for ``candidate`` runs where ``wanted`` is asked (``Only(wanted)``)."""
    return normalize(candidate.os, candidate.architecture, candidate.variant) in (
        compatible_platforms(wanted)
    )


_T = TypeVar("_T")


def best_match(wanted: Platform, candidates: Iterable[tuple[Platform | None, _T]]) -> _T | None:
    """The candidate whose platform ``wanted`` prefers most (the first of equals), or None."""
    order = {platform: rank for rank, platform in enumerate(compatible_platforms(wanted))}
    best: tuple[int, _T] | None = None
    for platform, item in candidates:
        if platform is None:
            continue
        rank = order.get(normalize(platform.os, platform.architecture, platform.variant))
        if rank is not None and (best is None or rank < best[0]):
            best = (rank, item)
    return best[1] if best is not None else None


def default_platform(docker_platform: str | None, dpkg_arch: str | None, machine: str) -> str:
    """The platform to fetch for when none is given: Docker's when it answers, else dpkg's
    architecture (the OS's own, e.g. armhf on a 64-bit kernel), else the machine's."""
    if docker_platform:
        try:
            return format_platform(docker_platform)
        except ValueError:
            pass
    if dpkg_arch and dpkg_arch.strip():
        arch = dpkg_arch.strip().lower()
        if arch in _DPKG_ARCH:
            return str(normalize("linux", *_DPKG_ARCH[arch]))
        try:
            return format_platform(f"linux/{arch}")
        except ValueError:
            pass
    arch_variant = _MACHINE_ARCH.get(machine.strip().lower(), (machine.strip().lower(), ""))
    return str(normalize("linux", *arch_variant))


def _arm64_vector(wanted: Platform) -> list[Platform]:
    variant = wanted.variant or "v8"
    vector = [wanted]
    major_text, has_minor, minor_text = variant.partition(".")
    major = _version(major_text)
    if major is not None and major >= 8:
        minor = int(minor_text) if has_minor and len(variant) == 4 and minor_text.isdigit() else 0
        if major == 9:
            vector += [
                Platform(wanted.os, "arm64", "v9" if n == 0 else f"v9.{n}")
                for n in range(minor - 1, -1, -1)
            ]
            # v9.0 diverged from v8.5, so v9.x runs what v8.(x+5) runs.
            minor, major = minor + 5, 8
            vector.append(Platform(wanted.os, "arm64", f"v8.{minor}"))
        vector += [
            Platform(wanted.os, "arm64", "" if n == 0 and major == 8 else _arm64_variant(major, n))
            for n in range(minor - 1, -1, -1)
        ]
    arm_variant = "v8" if variant.startswith(("v8.", "v9.")) else variant
    arm = normalize(wanted.os, "arm", arm_variant)
    arm_level = _version(arm.variant)
    vector.append(arm)
    if arm_level is not None and arm_level > 5:
        vector += [Platform(wanted.os, "arm", f"v{n}") for n in range(arm_level - 1, 4, -1)]
    return vector


def _arm64_variant(major: int, minor: int) -> str:
    return f"v{major}" if minor == 0 else f"v{major}.{minor}"


def _amd64_variant(level: int) -> str:
    return "" if level == 1 else f"v{level}"  # amd64/v1 normalises to plain amd64


def _version(variant: str) -> int | None:
    text = variant.removeprefix("v")
    return int(text) if text.isdigit() else None


def _unique(platforms: Sequence[Platform]) -> list[Platform]:
    return list(dict.fromkeys(platforms))
