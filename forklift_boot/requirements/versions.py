"""Forklift's version locks and semantic-version comparison (Go semver rules)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from forklift_boot.errors import RequirementsError
from forklift_boot.requirements.files import get_str, load_yaml_mapping

VERSION_LOCK_FILE = "forklift-version-lock.yml"

# semver 2.0.0, as blang/semver parses it (after Forklift strips the leading "v").
_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)


@dataclass(frozen=True, order=False)
class SemVer:
    major: int
    minor: int
    patch: int
    pre: tuple[str, ...]

    def __str__(self) -> str:
        core = f"{self.major}.{self.minor}.{self.patch}"
        return f"{core}-{'.'.join(self.pre)}" if self.pre else core

    def sort_key(self) -> tuple[int, int, int, int, tuple[tuple[int, int, str], ...]]:
        # A release sorts after all of its prereleases; numeric identifiers sort before others.
        pre = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.pre)
        return (self.major, self.minor, self.patch, 0 if self.pre else 1, pre)


def parse_semver(text: str) -> SemVer | None:
    """A ``vX.Y.Z[-pre][+build]`` version, or None when it is not one."""
    match = _SEMVER.match(text[1:] if text.startswith("v") else "")
    if match is None:
        return None
    major, minor, patch, pre, _build = match.groups()
    return SemVer(int(major), int(minor), int(patch), tuple(pre.split(".")) if pre else ())


def is_version_at_least(version: str, minimum: str) -> bool:
    """Whether ``version`` >= ``minimum``; an unparsable version counts as older."""
    parsed, floor = parse_semver(version), parse_semver(minimum)
    if floor is None:
        raise ValueError(f"invalid minimum version {minimum}")
    return parsed is not None and parsed.sort_key() >= floor.sort_key()


def load_locked_version(lock_dir: Path) -> str:
    """The version a requirement directory's ``forklift-version-lock.yml`` pins."""
    path = lock_dir / VERSION_LOCK_FILE
    what = "version lock"
    lock = load_yaml_mapping(path, what)
    lock_type = get_str(lock, "type", path, what)
    tag = get_str(lock, "tag", path, what)
    timestamp = get_str(lock, "timestamp", path, what)
    commit = get_str(lock, "commit", path, what)
    if lock_type == "version":
        parsed = _parse_tag(tag, path)
        return f"v{parsed}"
    if lock_type == "pseudoversion":
        return _pseudoversion(tag, timestamp, commit, path)
    raise RequirementsError(
        f"couldn't load version lock {path}: unknown lock type `{lock_type}` "
        "(expected `version` or `pseudoversion`)",
        path,
    )


def _parse_tag(tag: str, path: Path) -> SemVer:
    parsed = parse_semver(tag)
    if parsed is None:
        raise RequirementsError(
            f"couldn't load version lock {path}: tag `{tag}` is not a semantic version like v1.2.3",
            path,
        )
    return parsed


def _pseudoversion(tag: str, timestamp: str, commit: str, path: Path) -> str:
    """Go's pseudo-version, as Forklift's ``VersionLockDef.Pseudoversion`` forms it."""
    if not commit or not timestamp:
        raise RequirementsError(
            f"couldn't load version lock {path}: a pseudoversion needs `commit` and `timestamp`",
            path,
        )
    revision = commit[:12]
    if not tag:
        return f"v0.0.0-{timestamp}-{revision}"
    parsed = _parse_tag(tag, path)
    if parsed.pre:
        return f"v{parsed}.0.{timestamp}-{revision}"
    return f"v{parsed.major}.{parsed.minor}.{parsed.patch + 1}-0.{timestamp}-{revision}"
