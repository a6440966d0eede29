"""Forklift's import groups (``requirements/pallets/**/*.imports.yml``) and features: which
files of a required pallet a pallet maps in, matched with doublestar's globs, as
``pallets-imports.go`` reads them."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from forklift_boot.errors import RequirementsError
from forklift_boot.requirements.files import get_bool, get_str, get_str_list, load_yaml_mapping
from forklift_boot.requirements.trees import check_inside, real_tree

PALLET_REQS_DIR = "requirements/pallets"
IMPORT_EXT = ".imports.yml"


@dataclass(frozen=True)
class ImportGroup:
    name: str
    modifiers: tuple[dict[str, Any], ...]
    disabled: bool
    file: Path


def load_import_groups(root_dir: Path) -> list[ImportGroup]:
    reqs_dir = root_dir / PALLET_REQS_DIR
    if not reqs_dir.is_dir():
        return []
    groups = []
    for file in sorted(reqs_dir.rglob("*" + IMPORT_EXT)):
        name = file.relative_to(reqs_dir).as_posix().removesuffix(IMPORT_EXT)
        check_inside(file, [real_tree(root_dir)], f"import group {name}")
        groups.append(load_import_group(file, name))
    return groups


def load_import_group(file: Path, name: str) -> ImportGroup:
    what = "import group" if file.name.endswith(IMPORT_EXT) else "feature file"
    data = load_yaml_mapping(file, what)
    raw_modifiers = data.get("modifiers") or []
    if not isinstance(raw_modifiers, list):
        raise RequirementsError(f"couldn't parse {what} {file}: `modifiers` must be a list", file)
    modifiers = []
    for raw in raw_modifiers:
        if not isinstance(raw, dict):
            raise RequirementsError(
                f"couldn't parse {what} {file}: each modifier must be a mapping", file
            )
        # Forklift's ImportDef.AddDefaults.
        target = get_str(raw, "target", file, what) or "/"
        modifiers.append(
            {
                "type": get_str(raw, "type", file, what) or "add",
                "target": target,
                "source": get_str(raw, "source", file, what) or target,
                "only-matching-any": get_str_list(raw, "only-matching-any", file, what) or [""],
            }
        )
    return ImportGroup(name, tuple(modifiers), get_bool(data, "disabled", file, what), file)


def matches_with_children(pattern: str, name: str) -> bool:
    """doublestar's Match of ``pattern``, or of ``pattern/**`` (the path is inside a match)."""
    return bool(
        _glob_regex(pattern).fullmatch(name)
        or _glob_regex(posixpath.join(pattern, "**")).fullmatch(name)
    )


@lru_cache(maxsize=256)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A regex for a doublestar pattern: ``**`` spans directories, ``*``/``?`` do not."""
    out: list[str] = []
    segments = pattern.split("/")
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == "**" and last:
            # doublestar: a trailing `/**` also matches the directory itself (`a/**` matches `a`).
            if out:
                out[-1] = "(?:/.*)?"
            else:
                out.append(".*")
            continue
        if segment == "**":
            out.append("(?:[^/]*/)*")
            continue
        out.append(_glob_segment(segment))
        if not last:
            out.append("/")
    return re.compile("".join(out))


def _glob_segment(segment: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(segment):
        char = segment[i]
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            end = segment.find("]", i + 2)
            if end == -1:
                out.append(re.escape(char))
            else:
                body = segment[i + 1 : end]
                negate = body[:1] in ("!", "^")
                body = body[1:] if negate else body
                escaped = body.replace("\\", "\\\\")
                out.append("[" + ("^" if negate else "") + escaped + "]")
                i = end
        elif char == "{":
            end = segment.find("}", i)
            if end == -1:
                out.append(re.escape(char))
            else:
                options = segment[i + 1 : end].split(",")
                out.append("(?:" + "|".join(_glob_segment(o) for o in options) + ")")
                i = end
        elif char == "\\" and i + 1 < len(segment):
            i += 1
            out.append(re.escape(segment[i]))
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out)
