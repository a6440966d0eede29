"""``cache export-file``: a file or directory tree out of a cached image's filesystem."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TextIO

from forklift_boot.cache import ImageCache, human_bytes
from forklift_boot.cli.options import Command, add_bool
from forklift_boot.cli.platforms import entry_platform, host_platform
from forklift_boot.config import Settings
from forklift_boot.errors import ForkliftBootError, UsageError
from forklift_boot.exchange.export_files import (
    ExportResult,
    export_image_path,
    write_image_path_tar,
)
from forklift_boot.images import Wanted, plan_load
from forklift_boot.refs import parse_image_ref

log = logging.getLogger("forklift_boot")


def add_arguments(export_file: argparse.ArgumentParser) -> None:
    export_file.add_argument("ref", metavar="image_ref")
    export_file.add_argument(
        "source", metavar="SOURCE", help="path in the image, e.g. usr/bin/tool ('/' for all)"
    )
    export_file.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="DEST",
        help="where to write it (created; its parent too); '-' writes a tar to stdout, as "
        "`docker cp CONTAINER:SOURCE -` does",
    )
    add_bool(
        export_file,
        "--keep-devices",
        "create the image's device nodes (as root), or put them in the tar of '-o -'",
    )
    add_bool(
        export_file,
        "--keep-setid",
        "keep the set-user-ID and set-group-ID bits of the image's files",
    )


def cache_export_file(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    ref = parse_image_ref(args.ref)
    wanted = Wanted(ref.with_default_tag().canonical, (ref,), essential=True)
    to_stdout = args.output == "-"
    if to_stdout and out.isatty():
        raise UsageError(
            "couldn't export to standard output: it is a terminal; redirect it to a file or "
            "a pipe (`| tar -x`)"
        )
    if settings.platform:
        host_platform(settings)  # a bad --platform: a usage error before anything is read
    with ImageCache(settings.cache_dir).reading() as reader:
        entry = reader.find(wanted.canonical)
        if entry is None:
            raise ForkliftBootError(
                f"couldn't export {args.source} from {args.ref}: the image is not in the cache "
                f"{settings.cache_dir}; cache it first (forklift-boot cache-img {args.ref})"
            )
        plan = plan_load(reader, entry, wanted, entry_platform(settings, entry))
        if to_stdout:
            out.flush()
            result = write_image_path_tar(
                reader,
                args.ref,
                plan.layers,
                args.source,
                out.buffer,
                keep_devices=args.keep_devices,
                keep_setid=args.keep_setid,
            )
            out.buffer.flush()
        else:
            result = export_image_path(
                reader,
                args.ref,
                plan.layers,
                args.source,
                Path(args.output),
                keep_devices=args.keep_devices,
                keep_setid=args.keep_setid,
            )
    _log_result(args, result)
    return 0


def _log_result(args: argparse.Namespace, result: ExportResult) -> None:
    if result.skipped:
        log.warning(
            "left out %d device nodes%s: %s",
            len(result.skipped),
            ", which only root can create" if args.keep_devices else " (--keep-devices keeps them)",
            _some(result.skipped),
        )
    if result.setid_dropped:
        log.warning(
            "dropped the set-user-ID/set-group-ID bits of %d files (--keep-setid keeps them): %s",
            len(result.setid_dropped),
            _some(result.setid_dropped),
        )
    where = "standard output" if args.output == "-" else args.output
    log.info(
        "exported %s (%s%s) from %s to %s: %d entries, %s of file data",
        args.source,
        result.kind,
        f" {result.source}" if result.source.strip("/") != args.source.strip("/") else "",
        args.ref,
        where,
        result.entries,
        human_bytes(result.bytes_written),
    )


def _some(paths: tuple[str, ...]) -> str:
    return ", ".join(paths[:3]) + (", ..." if len(paths) > 3 else "")


COMMAND = Command(
    "Writes a file or directory of a cached image's filesystem",
    description=(
        "Writes SOURCE, a path in the image's filesystem (its layers applied in order, "
        "whiteouts honoured, symlinks in SOURCE's path followed inside the image), to DEST, "
        "as Forklift's oci-image file exports place it: a file becomes the file DEST, a "
        "directory becomes the directory DEST. Modes, times, symlinks and hardlinks are "
        "kept; owners too when run as root. Device nodes and set-user-ID/set-group-ID bits "
        "are left out unless asked for. Built beside DEST and renamed into place; a layer "
        "entry that would land outside DEST is refused."
    ),
    add_arguments=add_arguments,
    handler=cache_export_file,
)
