"""The images a command's source options name: refs, a pallet, a bundle, the stage store, a file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from forklift_boot import requirements
from forklift_boot.config import Settings
from forklift_boot.errors import ImageRefError, RequirementsError, UsageError
from forklift_boot.refs import parse_image_ref
from forklift_boot.requirements import RequiredImage


def required_images(args: argparse.Namespace, settings: Settings) -> list[RequiredImage]:
    """The images of the one source the arguments name; the stage store by default."""
    given = {
        "--pallet": args.pallet,
        "--bundle": args.bundle,
        "image refs": args.refs,
        "--images-file": args.images_file,
    }
    sources = [name for name, value in given.items() if value]
    if len(sources) > 1:
        raise UsageError(
            f"couldn't choose the images: {' and '.join(sources)} were both given; "
            "pass one source at a time"
        )
    source = sources[0] if sources else "the stage store"
    if args.bundles is not None and source != "the stage store":
        raise UsageError(f"--bundles selects bundles of the stage store; it can't go with {source}")
    if args.include_disabled and source != "--pallet":
        raise UsageError(
            "--include-disabled applies to --pallet only (bundles hold no disabled deployments)"
        )
    if args.with_file_exports and source not in ("--pallet", "--bundle", "the stage store"):
        raise UsageError("--with-file-exports applies to pallets, bundles and the stage store")

    if args.pallet:
        _check_workspace(settings)
        return requirements.list_pallet_images(
            Path(args.pallet),
            settings.workspace_dir,
            include_disabled=args.include_disabled,
            with_file_exports=args.with_file_exports,
        )
    if args.bundle:
        return requirements.list_bundle_images(
            Path(args.bundle), with_file_exports=args.with_file_exports
        )
    if args.refs:
        return requirements.list_given_images(args.refs, "the command line")
    if args.images_file:
        return requirements.list_given_images(*_read_images_file(args.images_file))
    selectors = [s.strip() for s in args.bundles.split(",") if s.strip()] if args.bundles else None
    return requirements.list_stage_store_images(
        settings.stage_store_dir, selectors, with_file_exports=args.with_file_exports
    )


def source_given(args: argparse.Namespace) -> bool:
    return bool(args.pallet or args.bundle or args.refs or args.images_file)


def names_images(args: argparse.Namespace) -> bool:
    """Any option that chooses images was given; with none, `cache push` and `cache copy` take
    every cached image rather than the stage store's."""
    return (
        source_given(args)
        or args.bundles is not None
        or bool(args.include_disabled or args.with_file_exports)
    )


def _check_workspace(settings: Settings) -> None:
    """Forklift's LoadWorkspace: a workspace that was named must exist (a pallet needs it for
    its required repositories and pallets; stage stores and bundles need none)."""
    if settings.workspace_given and not settings.workspace_dir.is_dir():
        raise RequirementsError(
            f"couldn't find workspace at {settings.workspace_dir}; pass an existing directory "
            "to --workspace (or FORKLIFT_WORKSPACE)",
            settings.workspace_dir,
        )


def _read_images_file(name: str) -> tuple[list[str], str]:
    if name == "-":
        return sys.stdin.read().splitlines(), "standard input"
    try:
        return Path(name).read_text(encoding="utf-8").splitlines(), name
    except OSError as err:
        raise UsageError(f"couldn't read images file {name}: {err.strerror or err}") from err


def canonical(text: str) -> str:
    try:
        return parse_image_ref(text).with_default_tag().canonical
    except ImageRefError as err:
        raise UsageError(str(err)) from err
