"""``load-img``: what Docker or containerd lacks, from the cache, every ref resolving as written."""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Iterator
from typing import TextIO

from forklift_boot import requirements
from forklift_boot.cache import ImageCache
from forklift_boot.cli.engines import docker_engine
from forklift_boot.cli.options import (
    Command,
    add_bool,
    add_containerd_options,
    add_registry_limits,
    add_registry_mirror,
    add_source_options,
    registry_limits,
)
from forklift_boot.cli.output import print_report, progress_for, status_for
from forklift_boot.cli.platforms import host_platform
from forklift_boot.cli.sources import required_images, source_given
from forklift_boot.config import Settings
from forklift_boot.errors import UsageError
from forklift_boot.flows import load_images
from forklift_boot.flows.read_through import FETCH_MODES, FETCH_NEVER, ReadThrough
from forklift_boot.platforms import parse_platform
from forklift_boot.requirements import RequiredImage
from forklift_boot.stores.containerd.ctr import Ctr
from forklift_boot.stores.containerd.target import ContainerdTarget
from forklift_boot.stores.docker.target import DockerTarget
from forklift_boot.stores.registry.auth import CredentialStore
from forklift_boot.stores.registry.client import RegistryClient
from forklift_boot.stores.registry.lookup import RegistryLookup, lookup_client
from forklift_boot.stores.registry.source import RegistrySource

log = logging.getLogger("forklift_boot")

# Seconds that one run waits for registries to answer, all requests together (--fetch-timeout).
DEFAULT_FETCH_TIMEOUT = 10.0


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
    fetch = load_img.add_argument_group("read-through (images from registries)")
    fetch.add_argument(
        "--fetch",
        choices=FETCH_MODES,
        default=FETCH_NEVER,
        help="never: load from the cache only, offline (default); missing: fetch what neither "
        "Docker nor the cache has from its registry into the cache, then load it; newer: also "
        "ask the registry what each cached tag names now and fetch it when it changed (the "
        "previous image stays cached as name@digest); when registries can't be reached the "
        "cache answers",
    )
    fetch.add_argument(
        "--fetch-timeout",
        type=_seconds,
        default=DEFAULT_FETCH_TIMEOUT,
        metavar="SECONDS",
        help=f"the longest a run waits for registries to answer, every request together "
        f"(default {DEFAULT_FETCH_TIMEOUT:g}); then they count as unreachable",
    )
    add_registry_mirror(fetch)
    add_registry_limits(fetch)


def load_images_command(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    if args.fetch == FETCH_NEVER and args.registry_mirror:
        raise UsageError("--registry-mirror applies to --fetch missing or --fetch newer")
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
        platform = host_platform(settings)
        with _read_through(args, settings, platform) as fetch:
            report = load_images(
                images,
                ContainerdTarget(ctr, platform),
                cache,
                thin=args.thin,
                record_digests=args.record_digests,
                progress=progress_for("loading", settings),
                engine=f"containerd (namespace {args.namespace})",
                fetch=fetch,
            )
        print_report(report, out, as_json=args.json, notify_systemd=settings.notify_socket)
        return report.exit_code
    if settings.platform:
        host_platform(settings)  # a bad --platform: a usage error before Docker is asked
    engine = docker_engine(settings)
    try:
        info = engine.info()
        target = DockerTarget(engine, info, docker_load_platform(settings, info.platform))
        with _read_through(args, settings, target.platform) as fetch:
            report = load_images(
                images,
                target,
                cache,
                thin=args.thin,
                record_digests=args.record_digests,
                progress=progress_for("loading", settings),
                fetch=fetch,
            )
    finally:
        engine.close()
    print_report(report, out, as_json=args.json, notify_systemd=settings.notify_socket)
    return report.exit_code


@contextlib.contextmanager
def _read_through(
    args: argparse.Namespace, settings: Settings, platform: str
) -> Iterator[ReadThrough | None]:
    """The registries behind the cache for ``--fetch missing|newer``: lookups with short
    timeouts under one deadline for the run, fetches with the client cache-img uses."""
    if args.fetch == FETCH_NEVER:
        yield None
        return
    credentials = CredentialStore(settings.docker_config_dir)
    try:
        lookups = lookup_client(
            mirrors=args.registry_mirror, credentials=credentials, seconds=args.fetch_timeout
        )
        fetches = RegistryClient(
            mirrors=args.registry_mirror, credentials=credentials, **registry_limits(args)
        )
    except ValueError as err:
        raise UsageError(str(err)) from err
    try:
        yield ReadThrough(
            mode=args.fetch,
            source=RegistrySource(fetches, platform, cache_dir=settings.cache_dir),
            lookup=RegistryLookup(lookups),
            progress=progress_for("fetching", settings),
            on_status=status_for(settings),
        )
    finally:
        lookups.close()
        fetches.close()


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"expected seconds between 0 and 3600, got {text!r}")
    return value


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
        "as the compose files write it, offline (with --fetch, what the cache lacks or has "
        "older comes from the registries into the cache first). From the stage store it loads "
        "what `forklift stage apply` will apply (next, or current when next failed) unless "
        "--bundles says otherwise."
    ),
    add_arguments=add_arguments,
    handler=load_images_command,
)
