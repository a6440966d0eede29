"""``cache verify``: every blob against its digest; ``--repair`` copies damaged images again."""

from __future__ import annotations

import argparse
import logging
from typing import TextIO

from forklift_boot import requirements
from forklift_boot.cache import CachedImage, CacheReader, ImageCache
from forklift_boot.cli.engines import docker_engine
from forklift_boot.cli.options import Command, add_bool, add_compress
from forklift_boot.cli.output import TerminalProgress, print_report
from forklift_boot.config import Settings
from forklift_boot.errors import CacheError, printable
from forklift_boot.flows import cache_images
from forklift_boot.stores.docker.source import DockerSource

log = logging.getLogger("forklift_boot")


def add_arguments(verify: argparse.ArgumentParser) -> None:
    add_bool(verify, "--repair", "remove damaged blobs and copy their images again")
    add_compress(verify)


def cache_verify(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    cache = ImageCache(settings.cache_dir)
    if not args.repair:
        with cache.reading() as reader:
            problems = reader.verify()
        out.writelines(printable(problem) + "\n" for problem in problems)
        log.info("%d problems in %s", len(problems), settings.cache_dir)
        return 1 if problems else 0
    with cache.writing() as writer:
        before = {image.canonical: image for image in writer.images()}
        removed = writer.repair()
        damaged = [image for image in before.values() if _is_incomplete(writer, image)]
        writer.remove_images([image.canonical for image in damaged])
    for digest in removed:
        out.write(f"removed damaged blob {digest}\n")
    code = 0
    if damaged:
        log.info("copying %d damaged images again from Docker", len(damaged))
        refs = sorted({ref for image in damaged for ref in (image.refs or (image.canonical,))})
        engine = docker_engine(settings)
        report = cache_images(
            requirements.list_given_images(refs, "the damaged cache entries"),
            # A linked blob is the engine's own file: a damaged one is damaged there too, and
            # only a hashed copy keeps it out of the cache.
            DockerSource(engine, link=False),
            cache,
            compress=args.compress,
            progress=TerminalProgress("caching"),
        )
        print_report(report, out, as_json=False)
        code = report.exit_code
    with cache.reading() as reader:
        remaining = reader.verify()
    out.writelines(printable(problem) + "\n" for problem in remaining)
    return 1 if remaining else code


def _is_incomplete(reader: CacheReader, image: CachedImage) -> bool:
    """A blob of the image is missing or damaged (``referenced_blobs`` raises then)."""
    try:
        reader.referenced_blobs(image)
    except CacheError:
        return True
    return False


COMMAND = Command(
    "Checks every blob of the cache against its digest",
    description=(
        "Checks every blob against its digest and every entry for completeness; --repair "
        "removes damaged blobs and copies their images again from Docker where it has them."
    ),
    add_arguments=add_arguments,
    handler=cache_verify,
)
