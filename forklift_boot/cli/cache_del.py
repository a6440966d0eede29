"""``cache del-img``: the given images, or those no bundle needs, out of the cache."""

from __future__ import annotations

import argparse
import logging
from typing import TextIO

from forklift_boot import requirements
from forklift_boot.cache import ImageCache, human_bytes
from forklift_boot.cli.options import Command
from forklift_boot.cli.sources import canonical
from forklift_boot.config import Settings
from forklift_boot.errors import printable

log = logging.getLogger("forklift_boot")


def add_arguments(delete: argparse.ArgumentParser) -> None:
    delete.add_argument("refs", nargs="*", metavar="image_ref")


def cache_delete(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    cache = ImageCache(settings.cache_dir)
    if args.refs:
        names = {canonical(ref) for ref in args.refs}
    else:
        needed: set[str] = set()
        for image in requirements.list_every_stage_store_image(settings.stage_store_dir):
            needed.add(image.ref.with_default_tag().canonical)
            # load-img loads name:tag@digest from a name@digest entry when it has no entry of
            # its own (an image load-img --fetch newer kept after its tag moved on).
            if image.ref.digested is not None:
                needed.add(image.ref.digested)
        with cache.reading() as reader:
            names = {image.canonical for image in reader.images()} - needed
    with cache.writing() as writer:
        removed = writer.remove_images(sorted(names))
        freed = writer.collect_garbage()
    unknown = sorted(names - set(removed)) if args.refs else []
    out.writelines(f"deleted {printable(name)}\n" for name in removed)
    log.info("deleted %d images, freed %s", len(removed), human_bytes(freed))
    for name in unknown:
        log.warning("%s is not in the cache", name)
    return 0


COMMAND = Command(
    "Deletes cached images",
    description=(
        "Deletes the given images from the cache, or with none, every image that no bundle of "
        "the stage store needs; then removes the blobs no image uses."
    ),
    add_arguments=add_arguments,
    handler=cache_delete,
)
