"""Names from outside (a foreign cache's index.json, a client's request): checked as image
references before forklift-boot acts on them, and shown with their control characters escaped."""

from __future__ import annotations

from forklift_boot.cache import CachedImage
from forklift_boot.errors import ImageRefError, printable
from forklift_boot.refs import parse_image_ref

__all__ = ["entry_name_problem", "foreign_refs"]


def entry_name_problem(canonical: str) -> str | None:
    """Why an index.json entry's name is not an image reference as forklift-boot writes one
    (parsed and normalised, ``:latest`` added to a bare name), or None when it is."""
    try:
        ref = parse_image_ref(canonical)
    except ImageRefError as err:
        return printable(str(err))
    normal = ref.with_default_tag().canonical
    if normal != canonical:
        return f"{printable(canonical)} is not a canonical image reference (that would be {normal})"
    return None


def foreign_refs(image: CachedImage) -> tuple[str, ...]:
    """The refs annotation's spellings that don't name ``image``: each must be an image
    reference meaning the entry's own canonical name, as the refs forklift-boot writes are."""
    foreign = []
    for ref in image.refs:
        try:
            means = parse_image_ref(ref).with_default_tag().canonical
        except ImageRefError:
            means = None
        if means != image.canonical:
            foreign.append(ref)
    return tuple(foreign)
