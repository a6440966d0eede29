"""Pallets, bundles, stage stores and compose files -> the images they require.

The only package that reads Forklift's YAML files.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from forklift_boot.errors import ImageRefError, RequirementsError
from forklift_boot.refs import ImageRef, parse_image_ref
from forklift_boot.requirements.bundles import images_of_bundle
from forklift_boot.requirements.deployments import ImageUse
from forklift_boot.requirements.pallets import Workspace, images_of_pallet
from forklift_boot.requirements.stages import StagedBundle, load_stage_store

__all__ = [
    "RequiredImage",
    "StagedBundle",
    "applied_bundle_selector",
    "list_bundle_images",
    "list_every_stage_store_image",
    "list_given_images",
    "list_pallet_images",
    "list_stage_store_images",
]


@dataclass(frozen=True)
class RequiredImage:
    """An image as the compose files write it, and what needs it."""

    ref: ImageRef
    deployments: tuple[str, ...]
    bundles: tuple[str, ...]  # labels of the bundles that need it; empty outside a stage store
    # Needed by what will be applied (next, or current once next failed), not only by a
    # fallback bundle: missing it is an error rather than a warning.
    essential: bool = True

    @property
    def written(self) -> str:
        return self.ref.written


def list_pallet_images(
    pallet_dir: Path, workspace_dir: Path, *, include_disabled: bool, with_file_exports: bool
) -> list[RequiredImage]:
    uses = images_of_pallet(
        _absolute(pallet_dir),
        Workspace(_absolute(workspace_dir)),
        include_disabled=include_disabled,
        with_file_exports=with_file_exports,
    )
    return _collect((use, None, True) for use in uses)


def list_bundle_images(bundle_dir: Path, *, with_file_exports: bool) -> list[RequiredImage]:
    uses = images_of_bundle(_absolute(bundle_dir), with_file_exports=with_file_exports)
    return _collect((use, None, True) for use in uses)


def list_stage_store_images(
    store_dir: Path, selectors: Sequence[str] | None, *, with_file_exports: bool
) -> list[RequiredImage]:
    """The union over the selected bundles; by default every bundle a device may fall back to.

    Images of the bundle ``forklift stage apply`` would apply are marked essential.
    """
    store = load_stage_store(_absolute(store_dir))
    bundles = store.select(selectors)
    return _collect(
        (use, bundle.label, bundle.index == store.applied_index)
        for bundle in bundles
        for use in images_of_bundle(bundle.bundle_dir, with_file_exports=with_file_exports)
    )


def list_every_stage_store_image(store_dir: Path) -> list[RequiredImage]:
    """The images of every bundle in the store, referenced by a name or not."""
    load_stage_store(store_dir)  # refuse a directory that is not a stage store
    indices = sorted(
        int(child.name)
        for child in store_dir.iterdir()
        if child.name.isdigit() and int(child.name) > 0 and child.is_dir()
    )
    if not indices:
        return []
    return list_stage_store_images(store_dir, [str(i) for i in indices], with_file_exports=True)


def applied_bundle_selector(store_dir: Path) -> list[str]:
    """The bundle ``forklift stage apply`` applies: ``next``, or ``current`` once next failed."""
    store = load_stage_store(store_dir)
    return [str(store.applied_index)] if store.applied_index else ["next"]


def list_given_images(refs: Iterable[str], origin: str) -> list[RequiredImage]:
    """Refs from the command line or a file (one per line; blank lines and ``#`` lines skipped)."""
    found: dict[str, ImageRef] = {}
    for number, line in enumerate(refs, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            found[text] = parse_image_ref(text)
        except ImageRefError as err:
            where = f"{origin}, line {number}" if origin != "the command line" else origin
            raise RequirementsError(f"couldn't parse image reference in {where}: {err}") from err
    return [RequiredImage(found[text], (), ()) for text in sorted(found)]


def _absolute(path: Path) -> Path:
    """``path`` made absolute against the current directory, symlinks kept.

    Package and compose file names are joined to their directories more than once on the way
    (compose-go joins the working dir again), so a relative directory would be doubled.
    """
    return Path(os.path.abspath(path))


def _collect(uses: Iterable[tuple[ImageUse, str | None, bool]]) -> list[RequiredImage]:
    """Sorted and unique by the ref as written, with the deployments and bundles needing each."""
    refs: dict[str, ImageRef] = {}
    deployments: dict[str, set[str]] = {}
    bundles: dict[str, set[str]] = {}
    essential: set[str] = set()
    for use, bundle, is_essential in uses:
        if use.image not in refs:
            refs[use.image] = _parse(use)
            deployments[use.image], bundles[use.image] = set(), set()
        deployments[use.image].add(use.deployment)
        if bundle is not None:
            bundles[use.image].add(bundle)
        if is_essential:
            essential.add(use.image)
    return [
        RequiredImage(
            refs[image],
            tuple(sorted(deployments[image])),
            tuple(sorted(bundles[image])),
            essential=image in essential,
        )
        for image in sorted(refs)
    ]


def _parse(use: ImageUse) -> ImageRef:
    try:
        return parse_image_ref(use.image)
    except ImageRefError as err:
        what = f"service {use.service}" if use.service else "an image"
        raise RequirementsError(
            f"couldn't parse the image of {what} of deployment {use.deployment} in {use.source}: "
            f"{err}; fix the image reference",
            use.source,
        ) from err
