"""Writes small file trees (pallets, bundles, stage stores) for tests."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path


def write_tree(root: Path, files: Mapping[str, str]) -> Path:
    """Writes each ``relative path -> text`` (dedented) under ``root``; returns ``root``."""
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return root


PALLET_FILE = """
    forklift-version: v0.8.0
    pallet:
      path: github.com/example/{name}
"""


def package(image: str, features: Mapping[str, str] | None = None) -> dict[str, str]:
    """A package directory's files: a compose.yml with one service, and one file per feature."""
    lines = ["deployment:", "  compose-files: [compose.yml]"]
    files = {"compose.yml": f"services:\n  app:\n    image: {image}\n"}
    if features:
        lines.append("features:")
        for name, feature_image in features.items():
            lines += [f"  {name}:", f"    compose-files: [compose-{name}.yml]"]
            files[f"compose-{name}.yml"] = f"services:\n  {name}:\n    image: {feature_image}\n"
    files["forklift-package.yml"] = "\n".join(lines) + "\n"
    return files


def under(prefix: str, files: Mapping[str, str]) -> dict[str, str]:
    return {f"{prefix}/{rel}": text for rel, text in files.items()}
