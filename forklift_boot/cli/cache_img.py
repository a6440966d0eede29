"""``cache-img``: the required images out of Docker, registries or containerd into the cache."""

from __future__ import annotations

import argparse
import logging
import platform as pyplatform
from pathlib import Path
from typing import TextIO

from forklift_boot.cache import ImageCache
from forklift_boot.cli.engines import docker_engine
from forklift_boot.cli.options import (
    Command,
    add_bool,
    add_compress,
    add_containerd_options,
    add_registry_limits,
    add_registry_mirror,
    add_source_options,
    positive_int,
    registry_limits,
)
from forklift_boot.cli.output import print_report, progress_for
from forklift_boot.cli.platforms import host_platform
from forklift_boot.cli.sources import required_images
from forklift_boot.config import Settings, dpkg_architecture
from forklift_boot.errors import ForkliftBootError, UsageError
from forklift_boot.flows import FallbackSource, cache_images
from forklift_boot.images import ImageSource
from forklift_boot.platforms import default_platform, format_platform, matches, parse_platform
from forklift_boot.report import DEFAULT_JOBS
from forklift_boot.stores.containerd.content_store import CONTENT_DIR, is_content_store
from forklift_boot.stores.containerd.ctr import Ctr
from forklift_boot.stores.containerd.source import ContainerdSource
from forklift_boot.stores.docker.engine import DockerEngine
from forklift_boot.stores.docker.source import DockerSource
from forklift_boot.stores.registry.auth import CredentialStore
from forklift_boot.stores.registry.client import RegistryClient
from forklift_boot.stores.registry.source import RegistrySource

log = logging.getLogger("forklift_boot")


def add_arguments(cache_img: argparse.ArgumentParser) -> None:
    add_source_options(cache_img)
    add_compress(cache_img)
    add_bool(cache_img, "--json", "print the report as JSON on stdout")
    fetch = cache_img.add_argument_group("where images come from")
    fetch.add_argument(
        "--from",
        dest="source",
        choices=["docker", "registry", "auto", "containerd"],
        default="docker",
        help="docker: copy out of Docker (default); registry: fetch from the images' registries, "
        "no daemon needed; auto: from Docker what it has (for the platform), the rest from "
        "registries; containerd: copy out of containerd with ctr, blobs unchanged",
    )
    add_containerd_options(cache_img)
    fetch.add_argument(
        "--containerd-root",
        type=Path,
        metavar="DIR",
        help="containerd's root directory (`root =` in its config.toml), whose content store "
        "--from containerd and --from docker on Docker's containerd image store take blobs "
        "from (default: where containerd says, else its config.toml's, else "
        "/var/lib/containerd; Docker does not say)",
    )
    add_bool(
        fetch,
        "--link",
        "hard-link blobs taken from containerd's content store into the cache when both are on "
        "one mount, else reflink them where the filesystem can, else copy them; the cache then "
        "shares those files with containerd (README: shared blobs)",
        default=True,
    )
    add_bool(
        fetch,
        "--all-platforms",
        "keep every platform of a multi-platform image that the source has (registries, "
        "containerd, Docker's containerd image store); by default one platform only",
    )
    fetch.add_argument(
        "--jobs",
        type=positive_int,
        default=DEFAULT_JOBS,
        metavar="N",
        help=f"blobs downloaded at once (default {DEFAULT_JOBS})",
    )
    add_registry_mirror(fetch)
    add_bool(fetch, "--offline", "never touch the network (registries refuse, Docker still works)")
    add_registry_limits(fetch)


def cache_images_command(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    _check_containerd_root(args)
    if args.source == "containerd":
        return _cache_from_containerd(args, settings, out)
    if args.source == "docker" and args.registry_mirror:
        raise UsageError("--registry-mirror applies to --from registry or --from auto")
    images = required_images(args, settings)
    # Fetching from registries needs no daemon: don't wait for docker.service there.
    engine = (
        docker_engine(settings) if args.source != "registry" else DockerEngine(settings.docker_host)
    )
    client: RegistryClient | None = None
    try:
        source: ImageSource = DockerSource(
            engine,
            all_platforms=args.all_platforms,
            containerd_root=args.containerd_root,
            link=args.link,
            cache_dir=settings.cache_dir,
        )
        if args.source != "docker":
            platform = _fetch_platform(settings, engine)
            try:
                client = RegistryClient(
                    mirrors=args.registry_mirror,
                    credentials=CredentialStore(settings.docker_config_dir),
                    offline=args.offline,
                    **registry_limits(args),
                )
            except ValueError as err:
                raise UsageError(str(err)) from err
            registry = RegistrySource(
                client,
                platform,
                all_platforms=args.all_platforms,
                jobs=args.jobs,
                cache_dir=settings.cache_dir,
            )
            if args.source == "registry":
                source = registry
            else:
                source = FallbackSource(
                    source, registry, accept=lambda image: _is_platform(image.platform, platform)
                )
        report = cache_images(
            images,
            source,
            ImageCache(settings.cache_dir),
            compress=args.compress,
            progress=progress_for("caching", settings),
        )
    finally:
        engine.close()
        if client is not None:
            client.close()
    print_report(report, out, as_json=args.json, notify_systemd=settings.notify_socket)
    return report.exit_code


def _cache_from_containerd(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    if args.registry_mirror:
        raise UsageError("--registry-mirror applies to --from registry or --from auto")
    images = required_images(args, settings)
    source = ContainerdSource(
        Ctr(args.containerd_address, args.namespace),
        host_platform(settings),
        all_platforms=args.all_platforms,
        containerd_root=args.containerd_root,
        link=args.link,
        cache_dir=settings.cache_dir,
    )
    report = cache_images(
        images,
        source,
        ImageCache(settings.cache_dir),
        compress=args.compress,
        progress=progress_for("caching", settings),
    )
    print_report(report, out, as_json=args.json, notify_systemd=settings.notify_socket)
    return report.exit_code


def _check_containerd_root(args: argparse.Namespace) -> None:
    root = args.containerd_root
    if root is None:
        return
    if args.source == "registry":
        raise UsageError("--containerd-root applies to --from containerd, docker or auto")
    if not is_content_store(root / CONTENT_DIR):
        raise UsageError(
            f"--containerd-root {root}: no readable content store at {root / CONTENT_DIR}; "
            "give containerd's root directory (`root =` in its config.toml)"
        )


def _fetch_platform(settings: Settings, engine: DockerEngine) -> str:
    """``--platform``/``FORKLIFT_PLATFORM``, else Docker's platform when it answers, else
    dpkg's architecture, else the machine's."""
    if settings.platform:
        try:
            return format_platform(settings.platform)
        except ValueError as err:
            raise UsageError(f"--platform: {err}") from err
    docker_platform = None
    if engine.is_answering():
        try:
            docker_platform = engine.info().platform
        except ForkliftBootError:
            docker_platform = None
    platform = default_platform(docker_platform, dpkg_architecture(), pyplatform.machine())
    log.info(
        "fetching images for %s (%s; --platform chooses another)",
        platform,
        "Docker's platform" if docker_platform else "this machine's",
    )
    return platform


def _is_platform(found: str, wanted: str) -> bool:
    try:
        return matches(parse_platform(wanted), parse_platform(found))
    except ValueError:
        return True  # Docker named a platform we can't read: take its image


COMMAND = Command(
    "Copies the required images out of Docker or from registries into the image cache",
    description=(
        "Copies every required image that the cache lacks out of Docker (DOCKER_HOST "
        "honoured), straight from its classic store's data root when it can read it, else "
        "with one `docker save` stream, or with --from registry from the images' "
        "registries with no daemon. From the stage store it keeps every bundle a device may "
        "fall back to."
    ),
    add_arguments=add_arguments,
    handler=cache_images_command,
)
