"""What the compose loader's steps pass each other: errors, sourced strings, documents, context."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forklift_boot.errors import RequirementsError
from forklift_boot.requirements.trees import is_inside, outside_message


class ComposeError(Exception):
    """A compose-go error message; the caller adds the file it came from."""


class Sourced(str):
    """A string that remembers the compose file it was read from."""

    file: Path

    def __new__(cls, text: str, file: Path) -> Sourced:
        sourced = super().__new__(cls, text)
        sourced.file = file
        return sourced


@dataclass(frozen=True)
class Context:
    env: Mapping[str, str]
    # compose-go's localResourceLoader dir: relative `include` paths and a top-level service's
    # `extends.file` are resolved here (the package dir), not in the including file's dir.
    resolver_dir: Path
    working_dir: Path  # relative `include` project_directory and env_file are resolved here
    included: tuple[Path, ...]  # the chain of files that included this one, for cycle errors
    # The files the caller opened itself (Forklift opens a package's compose files through the
    # merged pallet): the name compose-go sees -> the file read. Only for the files passed in.
    sources: Mapping[Path, Path] = field(default_factory=dict)
    # The real directories every other file read (include, extends, env_file) must be inside;
    # None reads anywhere, as compose-go does.
    within: tuple[Path, ...] | None = None


@dataclass(frozen=True)
class Document:
    data: dict[str, Any]
    resets: list[tuple[str, ...]]  # paths tagged !reset or !override


def load_error(file: Path, cause: str) -> RequirementsError:
    return RequirementsError(f"couldn't load compose file {file}: {cause}", file)


def check_within(path: Path, ctx: Context, where: str) -> None:
    """Refuse a file outside ``ctx.within``, naming it and where it was named, not its content."""
    if ctx.within is not None and not is_inside(path, ctx.within):
        raise ComposeError(outside_message(path, where))


def join(base: Path, path: str | Path) -> Path:
    """Go's filepath.Join: an absolute path wins, and the result is cleaned."""
    return Path(os.path.normpath(os.path.join(base, path)))
