"""Docker's classic reference store: recording digest references that ``docker load`` drops.

moby#22011: loading an image on the classic (graph driver) store keeps its tags but not the
registry digest, so ``name@sha256:...`` and ``name:tag@sha256:...`` stop resolving. The only
record of a digest reference there is ``<data-root>/image/<driver>/repositories.json``, which
dockerd reads at start only and rewrites from memory on any tag change (docs/architecture.md,
"Docker's stores"): it may be edited only while dockerd is stopped.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forklift_boot.errors import EngineError

BACKUP_SUFFIX = ".forklift-boot.bak"


@dataclass(frozen=True)
class DigestReference:
    """``"<repository>@<digest>": "<image ID>"`` under ``Repositories[<repository>]``."""

    repository: str  # the familiar name, as Docker keys the file: "foo", "user/bar", "ghcr.io/x"
    digest: str
    image_id: str

    @property
    def key(self) -> str:
        return f"{self.repository}@{self.digest}"


def reference_store_path(data_root: Path, storage_driver: str) -> Path:
    return data_root / "image" / storage_driver / "repositories.json"


def missing_references(path: Path, wanted: Sequence[DigestReference]) -> list[DigestReference]:
    """The references the file lacks (or maps to another image)."""
    repositories = _read(path).get("Repositories") or {}
    return [
        ref
        for ref in wanted
        if (repositories.get(ref.repository) or {}).get(ref.key) != ref.image_id
    ]


def add_references(path: Path, references: Sequence[DigestReference]) -> None:
    """Adds the references; only while dockerd is stopped. Keeps a backup, replaces atomically."""
    document = _read(path)
    repositories = document.setdefault("Repositories", {})
    for ref in references:
        repositories.setdefault(ref.repository, {})[ref.key] = ref.image_id
    temp = path.with_name(path.name + ".forklift-boot.tmp")
    try:
        if path.exists():
            shutil.copy2(path, path.with_name(path.name + BACKUP_SUFFIX))
        with temp.open("w", encoding="utf-8") as file:
            json.dump(document, file, separators=(",", ":"))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
        directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as err:
        temp.unlink(missing_ok=True)
        raise EngineError(
            f"couldn't record digest references in {path}: {err.strerror or err}"
        ) from err


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise EngineError(f"couldn't read Docker's reference store {path}: {err.strerror}") from err
    try:
        document = json.loads(text) if text.strip() else {}
    except ValueError as err:
        raise EngineError(
            f"couldn't read Docker's reference store {path}: {err}; restore it from "
            f"{path.name + BACKUP_SUFFIX} if forklift-boot left one"
        ) from err
    if not isinstance(document, dict):
        raise EngineError(f"couldn't read Docker's reference store {path}: not a JSON object")
    return document
