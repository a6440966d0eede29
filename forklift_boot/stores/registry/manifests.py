"""What a registry serves for a tag or digest: manifests and image indexes, byte for byte."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from forklift_boot.cache import (
    INDEX_MEDIA_TYPES,
    MEDIA_DOCKER_MANIFEST,
    MEDIA_DOCKER_MANIFEST_LIST,
    MEDIA_OCI_INDEX,
    MEDIA_OCI_MANIFEST,
    Descriptor,
)
from forklift_boot.cache.json_limits import load_json
from forklift_boot.errors import RegistryError

__all__ = ["MANIFEST_ACCEPT", "Manifest", "ManifestHead", "manifest_media_type"]

# Indexes first: a registry that has one for a tag serves it, and we pick the platform.
MANIFEST_ACCEPT = ", ".join(
    [MEDIA_OCI_INDEX, MEDIA_DOCKER_MANIFEST_LIST, MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST]
)
_DEFAULT_MANIFEST_TYPES = {"application/json", "text/plain", "application/octet-stream", ""}


@dataclass(frozen=True)
class ManifestHead:
    digest: str | None
    media_type: str
    size: int | None


@dataclass(frozen=True)
class Manifest:
    """A manifest or image index exactly as the registry served it."""

    data: bytes = field(repr=False)
    media_type: str
    digest: str

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_MEDIA_TYPES

    def document(self) -> dict[str, Any]:
        """The parsed JSON object; RegistryError if it is not one."""
        try:
            document = load_json(self.data)
        except ValueError as err:
            raise RegistryError(f"the manifest {self.digest} is not valid JSON ({err})") from err
        if not isinstance(document, dict):
            raise RegistryError(f"the manifest {self.digest} is not a JSON object")
        return document

    def descriptor(self, platform: dict[str, Any] | None = None) -> Descriptor:
        return Descriptor(self.media_type, self.digest, self.size, platform=platform)


def manifest_media_type(content_type: str | None, data: bytes) -> str:
    """The served Content-Type, else the document's own ``mediaType``, else its shape."""
    served = (content_type or "").split(";", 1)[0].strip().lower()
    if served not in _DEFAULT_MANIFEST_TYPES:
        return served
    try:
        document = load_json(data)
    except ValueError:
        return served
    if isinstance(document, dict):
        declared = document.get("mediaType")
        if isinstance(declared, str) and declared:
            return declared
        if "manifests" in document:
            return MEDIA_OCI_INDEX
        if "config" in document:
            return MEDIA_OCI_MANIFEST
    return served
