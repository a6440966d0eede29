"""``forklift-boot cache push``: cached images to a registry that a fleet shares."""

from __future__ import annotations

import argparse
from typing import TextIO

from forklift_boot.cache import ImageCache
from forklift_boot.cli.commands import names_images, required_images
from forklift_boot.cli.output import print_report, progress_for
from forklift_boot.config import Settings
from forklift_boot.errors import UsageError
from forklift_boot.exchange.push import cached_as_wanted, push_images
from forklift_boot.images import group_by_canonical
from forklift_boot.stores.registry.auth import CredentialStore
from forklift_boot.stores.registry.client import RegistryClient
from forklift_boot.stores.registry.targets import parse_push_target, parse_size


def cache_push(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    """Pushes the images a source names (refs, a pallet, a bundle, the stage store's
    ``--bundles``, an images file), or with none of those every cached image."""
    try:
        target = parse_push_target(args.destination, plain_http=args.plain_http)
        chunk_size = parse_size(args.chunk_size) if args.chunk_size else None
    except ValueError as err:
        raise UsageError(str(err)) from err
    wanted = group_by_canonical(required_images(args, settings)) if names_images(args) else None
    client = RegistryClient(credentials=CredentialStore(settings.docker_config_dir))
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
