"""What a copy between image caches will do: the images, each followed through its blobs."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from forklift_boot.cache import CachedImage, CacheReader
from forklift_boot.cache.index import read_index
from forklift_boot.cache.walk import BlobWalk, DocumentStash, ReachedBlob, walk_blobs
from forklift_boot.errors import printable
from forklift_boot.exchange.copy.report import TransferReport, image_outcome
from forklift_boot.exchange.names import entry_name_problem, foreign_refs
from forklift_boot.images import group_by_canonical, missing_outcome
from forklift_boot.report import FAILED
from forklift_boot.requirements import RequiredImage

__all__ = ["CopyPlan", "plan_copy", "source_problem"]

log = logging.getLogger(__name__)


@dataclass
class CopyPlan:
    """A source image to copy: its entry, everything it reaches, and how it was asked for."""

    image: CachedImage
    walk: BlobWalk
    essential: bool = True

    @property
    def blobs(self) -> list[ReachedBlob]:
        return self.walk.reached


def plan_copy(
    reader: CacheReader,
    stash: DocumentStash,
    required: Sequence[RequiredImage] | None,
    report: TransferReport,
) -> list[CopyPlan]:
    """The source's images to copy, each followed through its blobs; damaged ones, wanted
    ones the source lacks and (copying all) entries whose name is no image reference become
    outcomes right away."""
    listed = reader.images()
    admitted, refused = _check_names(reader.cache_dir, listed)
    images: dict[str, CachedImage] = {}
    for image in admitted:
        if image.canonical in images:
            log.warning(
                "%s/index.json names %s twice; copying the first entry",
                reader.cache_dir,
                image.canonical,
            )
            continue
        images[image.canonical] = image
    selected: list[tuple[CachedImage, bool]]
    if required is None:
        for image, message in refused:
            log.error("%s", message)
            report.outcomes.append(image_outcome(image, FAILED, message))
        selected = [(image, True) for image in images.values()]
        others = len(read_index(reader.cache_dir).entries) - len(listed)
        if others > 0:
            log.warning(
                "left out %d index.json entries of %s that name no forklift-boot image "
                "(another tool's)",
                others,
                reader.cache_dir,
            )
    else:
        selected = []
        for wanted in group_by_canonical(required):
            found = images.get(wanted.canonical)
            if found is None:
                detail = f"not in the image cache {reader.cache_dir}"
                report.outcomes.append(missing_outcome(wanted, detail))
            else:
                selected.append((found, wanted.essential))
    plans: list[CopyPlan] = []
    for image, essential in selected:
        # A document nested too deeply is a damaged blob of this image (cache.json_limits).
        walk = walk_blobs(stash, image.descriptor)
        problem = walk.image_problem()
        if problem is None:
            plans.append(CopyPlan(image, walk, essential))
            continue
        message = source_problem(image.canonical, reader.cache_dir, problem)
        log.error("%s", message)
        report.outcomes.append(image_outcome(image, FAILED, message, essential=essential))
    return plans


def _check_names(
    source_dir: Path, listed: Sequence[CachedImage]
) -> tuple[list[CachedImage], list[tuple[CachedImage, str]]]:
    """The entries whose name is an image reference, with only the refs that mean it; and
    the others, their names shown escaped, with why.

    The source may be another device's cache: only names that are image references come in,
    and only refs that mean the entry's own name (no ``app:1`` claiming ``nginx:1.27`` for
    the report and for load-img).
    """
    admitted: list[CachedImage] = []
    refused: list[tuple[CachedImage, str]] = []
    for image in listed:
        problem = entry_name_problem(image.canonical)
        if problem is not None:
            message = f"couldn't copy an entry of {source_dir}/index.json: {problem}"
            refused.append((replace(image, canonical=printable(image.canonical), refs=()), message))
            continue
        foreign = foreign_refs(image)
        if foreign:
            log.warning(
                "%s/index.json gives %s refs that don't name it; left them out: %s",
                source_dir,
                image.canonical,
                ", ".join(printable(ref) for ref in foreign),
            )
            refs = tuple(ref for ref in image.refs if ref not in foreign)
            admitted.append(replace(image, refs=refs))
        else:
            admitted.append(image)
    return admitted, refused


def source_problem(name: str, source_dir: Path, problem: str) -> str:
    return (
        f"couldn't copy {name} from the image cache {source_dir}: {problem}; "
        f"check it with `forklift-boot cache verify --cache-dir {source_dir}`"
    )
