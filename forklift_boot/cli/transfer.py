"""The `cache copy` and `cache merge` commands: images from one image cache into another."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TextIO

from forklift_boot.cache import ImageCache
from forklift_boot.cli.commands import names_images, required_images
from forklift_boot.cli.output import print_report, progress_for
from forklift_boot.config import Settings
from forklift_boot.exchange.copy import copy_images

__all__ = ["cache_copy", "cache_merge"]


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
