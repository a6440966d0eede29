"""Reading and atomically replacing index.json, keeping what other tools wrote in it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forklift_boot.cache.durable import write_file_atomically
from forklift_boot.cache.files import read_small_file
from forklift_boot.cache.json_limits import load_json
from forklift_boot.cache.media import ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, MEDIA_OCI_INDEX
from forklift_boot.errors import CacheError

__all__ = [
    "INDEX_FILE",
    "MAX_INDEX_SIZE",
    "IndexDocument",
    "entry_name",
    "entry_names",
    "read_index",
    "write_index",
]

INDEX_FILE = "index.json"
# Parsed whole, so bounded: thousands of entries take a few hundred KiB; a cache from a stick
# might hold a file of any size.
MAX_INDEX_SIZE = 16 << 20


@dataclass
class IndexDocument:
    """index.json as read: its entries as raw JSON objects, and every other top-level field.

    Entries stay raw so that the ones forklift-boot does not replace are written back
    exactly as another tool (or an older forklift-boot) wrote them.
    """

    entries: list[dict[str, Any]] = field(default_factory=list)
    fields: dict[str, Any] = field(
        default_factory=lambda: {"schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX}
    )

    def to_bytes(self) -> bytes:
        document = {**self.fields, "manifests": self.entries}
        return (json.dumps(document, indent=2) + "\n").encode()


def entry_names(entry: dict[str, Any]) -> set[str]:
    """Both names an entry goes by (containerd's and the OCI ref name), where set."""
    annotations = entry.get("annotations")
    if not isinstance(annotations, dict):
        return set()
    names = (annotations.get(key) for key in (ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME))
    return {name for name in names if isinstance(name, str) and name}


def entry_name(entry: dict[str, Any]) -> str | None:
    """The name an entry goes by: containerd's image name, else the OCI ref name."""
    annotations = entry.get("annotations")
    if not isinstance(annotations, dict):
        return None
    for key in (ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME):
        name = annotations.get(key)
        if isinstance(name, str) and name:
            return name
    return None


def read_index(cache_dir: Path) -> IndexDocument:
    """Read ``<cache_dir>/index.json``; a missing file is an empty index."""
    path = cache_dir / INDEX_FILE
    try:
        text = read_small_file(path, MAX_INDEX_SIZE, "an image cache's index")
    except FileNotFoundError:
        return IndexDocument()
    try:
        document = load_json(text)
    except ValueError as err:
        raise CacheError(f"couldn't read {path}: it isn't valid JSON ({err})") from err
    if not isinstance(document, dict):
        raise _not_an_index(path, "it is not a JSON object")
    entries = document.pop("manifests", [])
    if not isinstance(entries, list):
        raise _not_an_index(path, "manifests is not a list")
    for number, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise _not_an_index(path, f"manifests[{number}] is not a JSON object")
    return IndexDocument(entries=entries, fields=document)


def write_index(cache_dir: Path, document: IndexDocument) -> None:
    """Replace index.json atomically, entries sorted by name for stable output."""
    document.entries.sort(key=lambda entry: (entry_name(entry) or "", str(entry.get("digest"))))
    write_file_atomically(cache_dir / INDEX_FILE, document.to_bytes())


def _not_an_index(path: Path, reason: str) -> CacheError:
    return CacheError(f"couldn't read {path}: it isn't an OCI image index ({reason})")
