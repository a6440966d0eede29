"""The `cache copy` and `cache merge` commands: images from one image cache into another."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TextIO

from forklift_boot.cache import ImageCache
from forklift_boot.cli.options import Command, add_bool, add_source_options
from forklift_boot.cli.output import print_report, progress_for
from forklift_boot.cli.sources import names_images, required_images
from forklift_boot.config import Settings
from forklift_boot.exchange.copy import copy_images

__all__ = ["COPY", "MERGE", "cache_copy", "cache_merge"]


def add_copy_arguments(copy: argparse.ArgumentParser) -> None:
    copy.add_argument("--to", required=True, metavar="DIR", help="the image cache to copy into")
    add_source_options(copy)
    add_bool(
        copy,
        "--keep-existing",
        "where both caches name an image differently, keep the destination's (default: the "
        "copy replaces it)",
    )
    add_bool(copy, "--json", "print the report as JSON on stdout")


def add_merge_arguments(merge: argparse.ArgumentParser) -> None:
    merge.add_argument("from_dir", metavar="FROM_DIR", help="the image cache to merge in")
    add_bool(
        merge,
        "--keep-existing",
        "where both caches name an image differently, keep this cache's (default: FROM_DIR's "
        "replaces it)",
    )
    add_bool(merge, "--json", "print the report as JSON on stdout")


def cache_copy(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    """The configured cache's images (all, or those named) into ``--to``."""
    required = required_images(args, settings) if names_images(args) else None
    report = copy_images(
        ImageCache(settings.cache_dir),
        ImageCache(Path(args.to)),
        required,
        keep_existing=args.keep_existing,
        progress=progress_for("copying", settings),
        action="copy",
    )
    print_report(report, out, as_json=args.json, notify_systemd=settings.notify_socket)
    return report.exit_code


def cache_merge(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    """Every image of ``FROM_DIR`` into the configured cache."""
    report = copy_images(
        ImageCache(Path(args.from_dir)),
        ImageCache(settings.cache_dir),
        None,
        keep_existing=args.keep_existing,
        progress=progress_for("copying", settings),
        action="merge",
    )
    print_report(report, out, as_json=args.json, notify_systemd=settings.notify_socket)
    return report.exit_code


COPY = Command(
    "Copies cached images into another image cache (a USB stick)",
    description=(
        "Copies the cache's images, all of them or those the given refs or source need, into "
        "another cache directory (created if missing, merged into if it is one): only blobs it "
        "lacks, each checked against its digest as it streams; its index.json changes last, "
        "so an interrupted copy leaves both caches valid and a rerun copies only the rest."
    ),
    add_arguments=add_copy_arguments,
    handler=cache_copy,
)
MERGE = Command(
    "Merges another image cache (a USB stick) into this one",
    description=(
        "Copies every image of FROM_DIR into the cache, as `cache copy` does the other way "
        "round: only the blobs the cache lacks, verified as they stream, index.json last."
    ),
    add_arguments=add_merge_arguments,
    handler=cache_merge,
)
