"""OCI descriptors and the index.json entries that name cached images."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from forklift_boot.cache.media import (
    ANNOTATION_IMAGE_ID,
    ANNOTATION_IMAGE_NAME,
    ANNOTATION_PLATFORM,
    ANNOTATION_REF_NAME,
    ANNOTATION_REFS,
    ANNOTATION_REGISTRY_DIGEST,
)
from forklift_boot.errors import CacheError

__all__ = ["CachedImage", "Descriptor"]

# Every blob is named, hashed and verified as sha256 (the layout's blobs/sha256/, registries,
# archives), so a descriptor of another algorithm is refused when it is read, before anything
# is fetched or copied by it.
_SHA256_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")
# Algorithms the OCI image spec registers besides sha256, named in the refusal.
_OTHER_ALGORITHMS = ("sha512", "sha384", "blake3")
_KNOWN_FIELDS = ("mediaType", "digest", "size", "annotations", "platform")
# Annotations that CachedImage's fields own: rewritten from the fields on every write.
_MANAGED_ANNOTATIONS = (
    ANNOTATION_IMAGE_NAME,
    ANNOTATION_REF_NAME,
    ANNOTATION_REFS,
    ANNOTATION_IMAGE_ID,
    ANNOTATION_REGISTRY_DIGEST,
    ANNOTATION_PLATFORM,
)


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor: what a blob is, its digest and its size.

    ``extra`` keeps any other fields (``urls``, ``artifactType``, ``data``...) so that a
    descriptor read from another tool's JSON is written back unchanged.
    """

    media_type: str
    digest: str
    size: int
    # Mappings are left out of the hash: a descriptor is identified by its digest.
    annotations: Mapping[str, str] = field(default_factory=dict, hash=False)
    platform: Mapping[str, Any] | None = field(default=None, hash=False)
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        # Private copies, so that changing the caller's dicts later changes nothing here.
        object.__setattr__(self, "annotations", dict(self.annotations))
        if self.platform is not None:
            object.__setattr__(self, "platform", dict(self.platform))
        object.__setattr__(self, "extra", dict(self.extra))

    def to_json(self) -> dict[str, Any]:
        """The descriptor as a JSON object, in the field order of the image spec."""
        obj: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        obj.update(self.extra)
        if self.annotations:
            obj["annotations"] = dict(self.annotations)
        if self.platform is not None:
            obj["platform"] = dict(self.platform)
        return obj

    @classmethod
    def from_json(cls, obj: object, where: str = "descriptor") -> Descriptor:
        """Parse a JSON descriptor; CacheError names ``where`` if it is malformed."""
        if not isinstance(obj, dict):
            raise _invalid(where, "not a JSON object")
        media_type = obj.get("mediaType")
        digest = obj.get("digest")
        size = obj.get("size")
        annotations = obj.get("annotations", {})
        platform = obj.get("platform")
        if not isinstance(media_type, str):
            raise _invalid(where, "mediaType is missing or not a string")
        if not isinstance(digest, str):
            raise _invalid(where, "digest is missing or not a string")
        # bool is an int in Python, but not in JSON.
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise _invalid(where, "size is missing or not a non-negative integer")
        if not isinstance(annotations, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
        ):
            raise _invalid(where, "annotations are not a map of strings")
        if platform is not None and not isinstance(platform, dict):
            raise _invalid(where, "platform is not a JSON object")
        if not _SHA256_DIGEST.fullmatch(digest):
            raise _invalid(where, _digest_problem(digest))
        extra = {k: v for k, v in obj.items() if k not in _KNOWN_FIELDS}
        return cls(media_type, digest, size, annotations, platform, extra)


@dataclass(frozen=True)
class CachedImage:
    """One index.json entry: a required image under its canonical name.

    ``canonical`` is the full canonical reference (``docker.io/library/nginx:1.27@sha256:...``)
    and becomes both name annotations; ``refs`` are the spellings as written that share it.
    The other fields mirror forklift-boot's annotations; on write they replace whatever the
    descriptor's annotations say for the same keys, and every other annotation is kept.
    """

    canonical: str
    refs: tuple[str, ...]
    descriptor: Descriptor
    image_id: str | None = None
    registry_digest: str | None = None
    platform: str | None = None

    def __post_init__(self) -> None:
        if not self.canonical:
            raise ValueError("a cached image needs a canonical name")
        if any("," in ref or not ref for ref in self.refs):
            # The refs annotation is comma-separated; no valid reference contains a comma.
            raise ValueError(f"invalid refs for {self.canonical}: {self.refs!r}")
        object.__setattr__(self, "refs", tuple(sorted(set(self.refs))))

    def to_entry(self) -> dict[str, Any]:
        """The index.json entry: the descriptor with the name and forklift-boot annotations."""
        annotations = {
            ANNOTATION_IMAGE_NAME: self.canonical,
            ANNOTATION_REF_NAME: self.canonical,
        }
        optional = {
            ANNOTATION_REFS: ",".join(self.refs) or None,
            ANNOTATION_IMAGE_ID: self.image_id,
            ANNOTATION_REGISTRY_DIGEST: self.registry_digest,
            ANNOTATION_PLATFORM: self.platform,
        }
        annotations.update({k: v for k, v in optional.items() if v is not None})
        annotations.update(
            {k: v for k, v in self.descriptor.annotations.items() if k not in _MANAGED_ANNOTATIONS}
        )
        entry = self.descriptor.to_json()
        entry["annotations"] = annotations
        return entry

    @classmethod
    def from_entry(cls, entry: object, where: str = "index.json entry") -> CachedImage | None:
        """Read an index.json entry; None when it names no image (another tool's entry)."""
        descriptor = Descriptor.from_json(entry, where)
        canonical = descriptor.annotations.get(ANNOTATION_IMAGE_NAME)
        if not canonical:
            return None
        refs = descriptor.annotations.get(ANNOTATION_REFS, "")
        return cls(
            canonical=canonical,
            refs=tuple(ref for ref in refs.split(",") if ref),
            descriptor=descriptor,
            image_id=descriptor.annotations.get(ANNOTATION_IMAGE_ID),
            registry_digest=descriptor.annotations.get(ANNOTATION_REGISTRY_DIGEST),
            platform=descriptor.annotations.get(ANNOTATION_PLATFORM),
        )


def _digest_problem(digest: str) -> str:
    """Why a digest is refused, without echoing it (it may hold anything)."""
    algorithm = digest.partition(":")[0]
    if algorithm in _OTHER_ALGORITHMS:
        return (
            f"its digest uses {algorithm}, which forklift-boot does not support"
            " (sha256 only); the image can't be cached"
        )
    return "its digest is not sha256:<64 lowercase hex digits>"


def _invalid(where: str, reason: str) -> CacheError:
    return CacheError(f"{where} isn't a valid OCI descriptor: {reason}")
