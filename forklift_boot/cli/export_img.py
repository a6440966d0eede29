"""``cache export-img``: a cached image as an archive that ``docker load`` reads."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from forklift_boot.archive.load_archive import (
    ArchiveImage,
    write_docker_archive,
    write_load_archive,
)
from forklift_boot.cache import ImageCache
from forklift_boot.cli.options import Command
from forklift_boot.cli.platforms import entry_platform, host_platform
from forklift_boot.config import Settings
from forklift_boot.errors import ForkliftBootError
from forklift_boot.images import Wanted, plan_load
from forklift_boot.refs import parse_image_ref

log = logging.getLogger("forklift_boot")


def add_arguments(export: argparse.ArgumentParser) -> None:
    export.add_argument("ref", metavar="image_ref")
    export.add_argument("-o", "--output", required=True, metavar="FILE", help="'-' for stdout")
    export.add_argument("--format", choices=["docker", "oci"], default="docker")


def cache_export(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    ref = parse_image_ref(args.ref)
    wanted = Wanted(ref.with_default_tag().canonical, (ref,), essential=True)
    destination = Path(args.output)
    if settings.platform:
        host_platform(settings)  # a bad --platform: a usage error before anything is read
    with ImageCache(settings.cache_dir).reading() as reader:
        entry = reader.find(wanted.canonical)
        if entry is None:
            raise ForkliftBootError(f"couldn't export {args.ref}: it is not in the cache")
        plan = plan_load(reader, entry, wanted, entry_platform(settings, entry))
        tagged = ref.with_default_tag()
        image = ArchiveImage(
            plan.manifest,
            plan.config,
            plan.layers,
            repo_tags=(f"{tagged.familiar_name}:{tagged.tag}",) if tagged.tag else (),
            names={tagged.tagged or wanted.canonical: plan.manifest},
        )
        chunks = (
            write_docker_archive(reader, image, plan.diff_ids)
            if args.format == "docker"
            else write_load_archive(reader, [image])
        )
        _write_file(destination, chunks)
    log.info("exported %s to %s (%s format)", args.ref, destination, args.format)
    return 0


def _write_file(destination: Path, chunks: Any) -> None:
    """Writes to a temporary name and renames, so a failed export leaves no partial file."""
    if str(destination) == "-":
        for chunk in chunks:
            sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
        return
    temp = destination.with_name(f".{destination.name}.tmp-{os.getpid()}")
    try:
        with temp.open("wb") as file:
            for chunk in chunks:
                file.write(chunk)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, destination)
    except OSError as err:
        raise ForkliftBootError(f"couldn't write {destination}: {err.strerror or err}") from err
    finally:
        temp.unlink(missing_ok=True)


COMMAND = Command(
    "Writes a cached image as an image archive",
    description=(
        "Writes a cached image as a tar that `docker load` reads: by default the legacy "
        "docker-archive layout with uncompressed layer.tar files (which older tools such as "
        "dive "
        "read), or with --format oci the layout Docker 25 saves."
    ),
    add_arguments=add_arguments,
    handler=cache_export,
)
