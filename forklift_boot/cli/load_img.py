"""``load-img``: what Docker or containerd lacks, from the cache, every ref resolving as written."""

from __future__ import annotations

import argparse
import logging
from typing import TextIO

from forklift_boot import requirements
from forklift_boot.cache import ImageCache
from forklift_boot.cli.engines import docker_engine
from forklift_boot.cli.options import (
    Command,
    add_bool,
    add_containerd_options,
    add_source_options,
)
from forklift_boot.cli.output import print_report, progress_for
from forklift_boot.cli.platforms import host_platform
from forklift_boot.cli.sources import required_images, source_given
from forklift_boot.config import Settings
from forklift_boot.errors import UsageError
from forklift_boot.flows import load_images
from forklift_boot.platforms import parse_platform
from forklift_boot.requirements import RequiredImage
from forklift_boot.stores.containerd.ctr import Ctr
from forklift_boot.stores.containerd.target import ContainerdTarget
from forklift_boot.stores.docker.target import DockerTarget

log = logging.getLogger("forklift_boot")

log = logging.getLogger("forklift_boot")


def add_arguments(load_img: argparse.ArgumentParser) -> None:
    add_source_options(load_img)
    load_img.add_argument(
        "--into",
        dest="target",
        choices=["docker", "containerd"],
        default="docker",
        help="docker: load into Docker (default); containerd: import with ctr",
    )
    add_containerd_options(load_img)
    add_bool(load_img, "--all-cached", "load every cached image")
    add_bool(
        load_img, "--thin", "leave out layers Docker already has (classic store)", default=True
    )
    add_bool(
        load_img,
        "--record-digests",
        "record digest references in Docker's classic store, restarting Docker if needed",
        default=True,
    )
    add_bool(load_img, "--json", "print the report as JSON on stdout")


def load_images_command(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    cache = ImageCache(settings.cache_dir)
    if args.all_cached:
        if source_given(args) or args.bundles:
            raise UsageError("--all-cached loads everything cached; it takes no other source")
        images = _cached_as_required(cache)
    else:
        if not source_given(args) and args.bundles is None:
            # What `forklift stage apply` will apply: next, or current once next failed.
            args.bundles = ",".join(requirements.applied_bundle_selector(settings.stage_store_dir))
        images = required_images(args, settings)
    if args.target == "containerd":
        ctr = Ctr(args.containerd_address, args.namespace)
        report = load_images(
            images,
            ContainerdTarget(ctr, host_platform(settings)),
            cache,
            thin=args.thin,
            record_digests=args.record_digests,
            progress=progress_for("loading", settings),
            engine=f"containerd (namespace {args.namespace})",
        )
        print_report(report, out, as_json=args.json, notify_systemd=settings.notify_socket)
        return report.exit_code
    if settings.platform:
        host_platform(settings)  # a bad --platform: a usage error before Docker is asked
    engine = docker_engine(settings)
    try:
        info = engine.info()
        target = DockerTarget(engine, info, docker_load_platform(settings, info.platform))
        report = load_images(
            images,
            target,
            cache,
            thin=args.thin,
            record_digests=args.record_digests,
            progress=progress_for("loading", settings),
        )
    finally:
        engine.close()
    print_report(report, out, as_json=args.json, notify_systemd=settings.notify_socket)
    return report.exit_code


def docker_load_platform(settings: Settings, docker_platform: str) -> str:
    """The platform to load into Docker: ``--platform``/``FORKLIFT_PLATFORM``, else Docker's
    own; one warning when they differ."""
    if not settings.platform:
        return docker_platform
    wanted = host_platform(settings)
    if _differs(wanted, docker_platform):
        log.warning(
            "loading %s images into Docker, whose platform is %s (--platform or "
            "FORKLIFT_PLATFORM chose them)",
            wanted,
            docker_platform,
        )
    return wanted


def _differs(wanted: str, docker_platform: str) -> bool:
    try:
        return parse_platform(wanted) != parse_platform(docker_platform)
    except ValueError:
        return wanted != docker_platform  # Docker named a platform we can't read


def _cached_as_required(cache: ImageCache) -> list[RequiredImage]:
    with cache.reading() as reader:
        refs = sorted(
            {ref for image in reader.images() for ref in (image.refs or (image.canonical,))}
        )
    return requirements.list_given_images(refs, "the cache")


COMMAND = Command(
    "Loads the required images from the image cache into Docker",
    description=(
        "Loads what Docker lacks from the cache, so that every image reference resolves "
        "exactly "
        "as the compose files write it, offline. From the stage store it loads what `forklift "
        "stage apply` will apply (next, or current when next failed) unless --bundles says "
        "otherwise."
    ),
    add_arguments=add_arguments,
    handler=load_images_command,
)
