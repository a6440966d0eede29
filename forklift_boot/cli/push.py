"""``forklift-boot cache push``: cached images to a registry that a fleet shares."""

from __future__ import annotations

import argparse
from typing import TextIO

from forklift_boot.cache import ImageCache
from forklift_boot.cli.options import (
    Command,
    add_bool,
    add_registry_limits,
    add_source_options,
    positive_int,
    registry_limits,
)
from forklift_boot.cli.output import print_report, progress_for
from forklift_boot.cli.sources import names_images, required_images
from forklift_boot.config import Settings
from forklift_boot.errors import UsageError
from forklift_boot.exchange.push import cached_as_wanted, push_images
from forklift_boot.images import group_by_canonical
from forklift_boot.report import DEFAULT_JOBS
from forklift_boot.stores.registry.auth import CredentialStore
from forklift_boot.stores.registry.client import RegistryClient
from forklift_boot.stores.registry.targets import parse_push_target, parse_size


def add_arguments(push: argparse.ArgumentParser) -> None:
    push.add_argument(
        "destination",
        metavar="REGISTRY[/PREFIX]",
        help="e.g. registry.example.com:5000/fleet; HTTPS unless on loopback, http://... or "
        "--plain-http",
    )
    add_source_options(push)
    add_bool(push, "--plain-http", "talk HTTP, not HTTPS, to the registry (a trusted LAN only)")
    push.add_argument(
        "--jobs",
        type=positive_int,
        default=DEFAULT_JOBS,
        metavar="N",
        help=f"blobs uploaded at once (default {DEFAULT_JOBS})",
    )
    push.add_argument(
        "--chunk-size",
        metavar="SIZE",
        help="upload big blobs in pieces of SIZE (e.g. 16M) for a proxy that limits request "
        "bodies (default: one streamed request per blob)",
    )
    add_bool(push, "--json", "print the report as JSON on stdout")
    add_registry_limits(push)


def cache_push(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    """Pushes the images a source names (refs, a pallet, a bundle, the stage store's
    ``--bundles``, an images file), or with none of those every cached image."""
    try:
        target = parse_push_target(args.destination, plain_http=args.plain_http)
        chunk_size = parse_size(args.chunk_size) if args.chunk_size else None
    except ValueError as err:
        raise UsageError(str(err)) from err
    wanted = group_by_canonical(required_images(args, settings)) if names_images(args) else None
    client = RegistryClient(
        credentials=CredentialStore(settings.docker_config_dir), **registry_limits(args)
    )
    try:
        with ImageCache(settings.cache_dir).reading() as reader:
            if wanted is None:
                wanted = cached_as_wanted(reader.images())
            report = push_images(
                reader,
                wanted,
                target,
                client,
                jobs=args.jobs,
                chunk_size=chunk_size,
                progress=progress_for("pushing", settings),
            )
    finally:
        client.close()
    print_report(report, out, as_json=args.json, notify_systemd=settings.notify_socket)
    return report.exit_code


COMMAND = Command(
    "Pushes cached images to a registry that a fleet shares",
    description=(
        "Pushes the cached images (all of them, or those the given refs or source need) to "
        "an existing registry, each under REGISTRY/PREFIX/<its registry>/<its repository> "
        "with its tag (or digest), manifests byte for byte so digests stay the same; blobs "
        "the registry has are skipped and shared ones mounted. Credentials come from "
        "Docker's config.json (`docker login`)."
    ),
    add_arguments=add_arguments,
    handler=cache_push,
)
