"""``cache ls-img``: the cached images with their sizes and the bytes they share."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any, TextIO

from forklift_boot.cache import ImageCache, human_bytes
from forklift_boot.cli.options import Command, add_bool
from forklift_boot.config import Settings
from forklift_boot.errors import printable

log = logging.getLogger("forklift_boot")


def add_arguments(cache_ls: argparse.ArgumentParser) -> None:
    add_bool(cache_ls, "--json", "print JSON")


def cache_list(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    with ImageCache(settings.cache_dir).reading() as reader:
        images = reader.images()
        blobs = {image.canonical: reader.referenced_blobs(image) for image in images}
    users: dict[str, int] = {}
    for descriptors in blobs.values():
        for digest in {d.digest for d in descriptors}:
            users[digest] = users.get(digest, 0) + 1
    sizes = {d.digest: d.size for descriptors in blobs.values() for d in descriptors}
    rows: list[dict[str, Any]] = []
    for image in images:
        digests = {d.digest for d in blobs[image.canonical]}
        rows.append(
            {
                "name": image.canonical,
                "refs": list(image.refs),
                "image_id": image.image_id,
                "registry_digest": image.registry_digest,
                "platform": image.platform,
                "size": sum(sizes[d] for d in digests),
                "shared_size": sum(sizes[d] for d in digests if users[d] > 1),
            }
        )
    total = sum(sizes.values())
    if args.json:
        json.dump({"images": rows, "total_size": total}, out, indent=2)
        out.write("\n")
        return 0
    for row in rows:
        line = (
            f"{row['name']}  {human_bytes(row['size'])} ({human_bytes(row['shared_size'])} "
            f"shared)  {', '.join(row['refs'])}"
        )
        out.write(printable(line) + "\n")  # a foreign cache's names are anybody's text
    log.info("%d images, %s on disk in %s", len(rows), human_bytes(total), settings.cache_dir)
    return 0


COMMAND = Command(
    "Lists the cached images with their sizes",
    description=(
        "Lists the cached images: canonical name, size, bytes shared with other images, and "
        "the refs as written."
    ),
    add_arguments=add_arguments,
    handler=cache_list,
)
