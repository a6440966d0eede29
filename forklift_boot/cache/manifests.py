"""The OCI image manifests that forklift-boot writes itself (docs/architecture.md, decision 3)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from forklift_boot.cache.descriptors import Descriptor
from forklift_boot.cache.media import MEDIA_OCI_MANIFEST

__all__ = ["build_oci_manifest"]


def build_oci_manifest(
    config: Descriptor,
    layers: Sequence[Descriptor],
    annotations: Mapping[str, str] | None = None,
) -> bytes:
    """The bytes of an OCI image manifest; compact JSON, so the same inputs give the same
    digest every time."""
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MEDIA_OCI_MANIFEST,
        "config": config.to_json(),
        "layers": [layer.to_json() for layer in layers],
    }
    if annotations:
        manifest["annotations"] = dict(annotations)
    return json.dumps(manifest, separators=(",", ":")).encode()
