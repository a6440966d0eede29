"""``ls-img``: the images a source requires, optionally with where each one is."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any, TextIO

from forklift_boot.cache import ImageCache
from forklift_boot.cli.options import Command, add_bool, add_source_options
from forklift_boot.cli.sources import required_images
from forklift_boot.config import Settings
from forklift_boot.requirements import RequiredImage
from forklift_boot.stores.docker.engine import DockerEngine

log = logging.getLogger("forklift_boot")


def add_arguments(ls_img: argparse.ArgumentParser) -> None:
    add_source_options(ls_img)
    add_bool(ls_img, "--status", "also show whether each image is cached, in Docker, resolvable")
    add_bool(ls_img, "--json", "print JSON: each image's parsed reference and users")


def list_images(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    images = required_images(args, settings)
    if args.status:
        return _list_status(images, settings, out, as_json=args.json)
    if args.json:
        json.dump([image_json(image) for image in images], out, indent=2)
        out.write("\n")
    else:
        out.writelines(image.written + "\n" for image in images)
    return 0


def image_json(image: RequiredImage) -> dict[str, Any]:
    ref = image.ref
    return {
        "ref": ref.written,
        "canonical": ref.canonical,
        "name": ref.name,
        "tag": ref.tag,
        "digest": ref.digest,
        "deployments": list(image.deployments),
        "bundles": list(image.bundles),
    }


def _list_status(
    images: list[RequiredImage], settings: Settings, out: TextIO, *, as_json: bool
) -> int:
    """Per image: cached, in Docker (by the cached image ID), resolvable as written."""
    engine = DockerEngine(settings.docker_host)
    docker_up = engine.is_answering()
    if not docker_up:
        log.warning("Docker at %s does not answer: its columns show `?`", settings.docker_host)
    rows = []
    with ImageCache(settings.cache_dir).reading() as reader:
        for image in images:
            entry = reader.find(image.ref.with_default_tag().canonical)
            resolved = engine.inspect_image(image.written) if docker_up else None
            in_docker: bool | None = None
            if docker_up:
                # By config digest (classic store) or by the cached index or manifest's
                # digest (the containerd image store's image ID).
                in_docker = resolved is not None or (
                    entry is not None
                    and any(
                        engine.inspect_image(image_id) is not None
                        for image_id in (entry.image_id, entry.descriptor.digest)
                        if image_id
                    )
                )
            rows.append(
                {
                    **image_json(image),
                    "cached": entry is not None,
                    "in_docker": in_docker,
                    "resolvable": (resolved is not None) if docker_up else None,
                }
            )
    if as_json:
        json.dump(rows, out, indent=2)
        out.write("\n")
        return 0
    mark = {True: "yes", False: "no", None: "?"}
    out.write(f"{'CACHED':<7} {'DOCKER':<7} {'RESOLVES':<9} REF\n")
    for row in rows:
        out.write(
            f"{mark[row['cached']]:<7} {mark[row['in_docker']]:<7} {mark[row['resolvable']]:<9} "
            f"{row['ref']}\n"
        )
    return 0


COMMAND = Command(
    "Lists the images that a pallet, a bundle or the stage store requires",
    description=(
        "Lists the container images required by the stage store's bundles (by default), one "
        "staged bundle, a pallet, or the given refs: one per line, sorted, exactly as the "
        "compose files write them."
    ),
    add_arguments=add_arguments,
    handler=list_images,
)
