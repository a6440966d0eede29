"""The directory trees a pallet may lead forklift-boot to read, and the checks that keep it there.

A pallet, the pallets it requires, the repositories its packages come from and a staged bundle
are the only trees forklift-boot reads requirement files from. A file is inside a tree when its
real path (every symlink resolved) is: a link may point anywhere inside the trees, never out.
Forklift itself lets compose-go read ``include:``, ``extends: file:`` and ``env_file:`` from
anywhere on disk; forklift-boot refuses that on purpose (README, "Files a pallet may read").
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable
from pathlib import Path

from forklift_boot.errors import RequirementsError


def real_tree(directory: Path) -> Path:
    """A tree's root with its symlinks resolved (an administrator may link a whole tree)."""
    return Path(os.path.realpath(directory))


def is_inside(path: Path, trees: Iterable[Path]) -> bool:
    """Whether ``path``, symlinks resolved, is one of ``trees`` (real paths) or inside one."""
    # realpath, not Path.resolve: a symlink loop is left for the read to report, not raised here.
    real = Path(os.path.realpath(path))
    return any(real == tree or real.is_relative_to(tree) for tree in trees)


def outside_message(path: Path, where: str) -> str:
    """The one line refusing ``path``: the file and where it was named, never its content."""
    return (
        f"{path} ({where}) is outside the pallet and the repositories and pallets it requires; "
        "forklift-boot reads no file outside them: move the file into the pallet"
    )


def check_inside(path: Path, trees: Iterable[Path], where: str) -> None:
    if not is_inside(path, trees):
        raise RequirementsError(f"couldn't read {outside_message(path, where)}", path)


def has_parent_step(relative: str) -> bool:
    """Whether a slash-separated path climbs with ``..`` anywhere (``a/../../b``, ``../x``)."""
    return ".." in relative.split("/")


def refuse_parent_steps(package_path: str, where: Path) -> None:
    """A package path is a place inside a pallet, repository or bundle: ``..`` leaves it."""
    if has_parent_step(package_path):
        raise RequirementsError(
            f"couldn't load package {package_path} ({where}): the path leaves the pallet or "
            "repository with `..`; name the package by its path without `..`",
            where,
        )


def package_subdir(subdir: str, package_path: str, where: Path) -> str:
    """A package's directory inside a pallet, repository or bundle, cleaned; ``..`` refused."""
    refuse_parent_steps(package_path, where)
    refuse_parent_steps(subdir, where)
    stripped = subdir.strip("/")
    return posixpath.normpath(stripped) if stripped else "."
