"""The commands: each builds the real objects from the settings and prints the result."""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform as pyplatform
import sys
from pathlib import Path
from typing import Any, TextIO

from forklift_boot import requirements
from forklift_boot.archive.load_archive import (
    ArchiveImage,
    write_docker_archive,
    write_load_archive,
)
from forklift_boot.cache import CachedImage, CacheReader, ImageCache, human_bytes
from forklift_boot.cli.output import TerminalProgress, print_report, progress_for
from forklift_boot.config import DEFAULT_DOCKER_HOST, Settings, dpkg_architecture
from forklift_boot.errors import CacheError, ForkliftBootError, ImageRefError, UsageError
from forklift_boot.flows import FallbackSource, cache_images, load_images
from forklift_boot.images import ImageSource, Wanted, plan_load
from forklift_boot.platforms import default_platform, format_platform, matches, parse_platform
from forklift_boot.refs import parse_image_ref
from forklift_boot.requirements import RequiredImage
from forklift_boot.stores.containerd.ctr import Ctr
from forklift_boot.stores.containerd.source import ContainerdSource
from forklift_boot.stores.containerd.target import ContainerdTarget
from forklift_boot.stores.docker.engine import DockerEngine
from forklift_boot.stores.docker.source import DockerSource
from forklift_boot.stores.docker.target import DockerTarget
from forklift_boot.stores.registry.auth import CredentialStore
from forklift_boot.stores.registry.client import RegistryClient
from forklift_boot.stores.registry.source import RegistrySource
from forklift_boot.systemd import SystemdManager

log = logging.getLogger("forklift_boot")


# ls-img


def list_images(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    images = required_images(args, settings)
    if args.status:
        return _list_status(images, settings, out, as_json=args.json)
    if args.json:
        json.dump([_image_json(image) for image in images], out, indent=2)
        out.write("\n")
    else:
        out.writelines(image.written + "\n" for image in images)
    return 0


def _image_json(image: RequiredImage) -> dict[str, Any]:
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
                    **_image_json(image),
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


# cache-img and load-img


def cache_images_command(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    if args.source == "containerd":
        return _cache_from_containerd(args, settings, out)
    if args.source == "docker" and args.registry_mirror:
        raise UsageError("--registry-mirror applies to --from registry or --from auto")
    images = required_images(args, settings)
    # Fetching from registries needs no daemon: don't wait for docker.service there.
    engine = _docker(settings) if args.source != "registry" else DockerEngine(settings.docker_host)
    client: RegistryClient | None = None
    try:
        source: ImageSource = DockerSource(engine, all_platforms=args.all_platforms)
        if args.source != "docker":
            platform = _fetch_platform(settings, engine)
            try:
                client = RegistryClient(
                    mirrors=args.registry_mirror,
                    credentials=CredentialStore(settings.docker_config_dir),
                    offline=args.offline,
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


def host_platform(settings: Settings) -> str:
    """``--platform``/``FORKLIFT_PLATFORM``, else dpkg's architecture, else the machine's."""
    if settings.platform:
        try:
            return format_platform(settings.platform)
        except ValueError as err:
            raise UsageError(f"--platform: {err}") from err
    return default_platform(None, dpkg_architecture(), pyplatform.machine())


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


def load_images_command(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    cache = ImageCache(settings.cache_dir)
    if args.all_cached:
        if _source_given(args) or args.bundles:
            raise UsageError("--all-cached loads everything cached; it takes no other source")
        images = _cached_as_required(cache)
    else:
        if not _source_given(args) and args.bundles is None:
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
    engine = _docker(settings)
    try:
        target = DockerTarget(engine, engine.info())
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


def status(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    """Each unit's last run (result, time, last STATUS=) and a summary of the cache."""
    manager = SystemdManager()
    units: list[dict[str, Any]] = []
    for name in UNITS:
        try:
            units.append(manager.unit_state(name).to_json())
        except ForkliftBootError as err:
            units.append({"unit": name, "error": str(err)})
    with ImageCache(settings.cache_dir).reading() as reader:
        images = reader.images()
        sizes = {d.digest: d.size for image in images for d in reader.referenced_blobs(image)}
    total = sum(sizes.values())
    cache = {"directory": str(settings.cache_dir), "images": len(images), "size": total}
    if args.json:
        json.dump({"units": units, "cache": cache}, out, indent=2)
        out.write("\n")
        return 0
    for unit in units:
        out.write(f"{unit['unit']}:\n")
        if "error" in unit:
            out.write(f"  Error: {unit['error']}\n")
            continue
        out.write(f"  State: {unit['active_state']} ({unit['sub_state']})\n")
        out.write(f"  Last result: {unit['result']}")
        out.write(
            f" (exit status {unit['exit_status']})\n" if unit["exit_status"] is not None else "\n"
        )
        out.write(f"  Last run: {unit['last_run'] or '(never)'}\n")
        out.write(f"  Last status: {unit['status'] or '(none)'}\n")
    out.write(f"Cache: {cache['directory']}\n")
    out.write(f"  Images: {len(images)}\n  Size: {human_bytes(total)}\n")
    return 0


UNITS = ("forklift-boot-cache-img.service", "forklift-boot-load-img.service")
DOCKER_WAIT_SECONDS = 300


def _docker(settings: Settings) -> DockerEngine:
    """The Docker engine; as a systemd unit, first wait (bounded) for docker.service."""
    wait = None
    if settings.is_systemd_unit and settings.docker_host == DEFAULT_DOCKER_HOST:

        def wait() -> None:
            SystemdManager().wait_active("docker.service", DOCKER_WAIT_SECONDS)

    return DockerEngine(settings.docker_host, before_connect=wait)


def _cached_as_required(cache: ImageCache) -> list[RequiredImage]:
    with cache.reading() as reader:
        refs = sorted(
            {ref for image in reader.images() for ref in (image.refs or (image.canonical,))}
        )
    return requirements.list_given_images(refs, "the cache")


# cache ls-img, verify, del-img, export-img


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
        out.write(
            f"{row['name']}  {human_bytes(row['size'])} ({human_bytes(row['shared_size'])} "
            f"shared)  {', '.join(row['refs'])}\n"
        )
    log.info("%d images, %s on disk in %s", len(rows), human_bytes(total), settings.cache_dir)
    return 0


def cache_verify(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    cache = ImageCache(settings.cache_dir)
    if not args.repair:
        with cache.reading() as reader:
            problems = reader.verify()
        out.writelines(problem + "\n" for problem in problems)
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
        engine = _docker(settings)
        report = cache_images(
            requirements.list_given_images(refs, "the damaged cache entries"),
            DockerSource(engine),
            cache,
            compress=args.compress,
            progress=TerminalProgress("caching"),
        )
        print_report(report, out, as_json=False)
        code = report.exit_code
    with cache.reading() as reader:
        remaining = reader.verify()
    out.writelines(problem + "\n" for problem in remaining)
    return 1 if remaining else code


def _is_incomplete(reader: CacheReader, image: CachedImage) -> bool:
    """A blob of the image is missing or damaged (``referenced_blobs`` raises then)."""
    try:
        reader.referenced_blobs(image)
    except CacheError:
        return True
    return False


def cache_delete(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    cache = ImageCache(settings.cache_dir)
    if args.refs:
        names = {_canonical(ref) for ref in args.refs}
    else:
        needed = {
            image.ref.with_default_tag().canonical
            for image in requirements.list_every_stage_store_image(settings.stage_store_dir)
        }
        with cache.reading() as reader:
            names = {image.canonical for image in reader.images()} - needed
    with cache.writing() as writer:
        removed = writer.remove_images(sorted(names))
        freed = writer.collect_garbage()
    unknown = sorted(names - set(removed)) if args.refs else []
    out.writelines(f"deleted {name}\n" for name in removed)
    log.info("deleted %d images, freed %s", len(removed), human_bytes(freed))
    for name in unknown:
        log.warning("%s is not in the cache", name)
    return 0


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


# Helpers


def required_images(args: argparse.Namespace, settings: Settings) -> list[RequiredImage]:
    """The images of the one source the arguments name; the stage store by default."""
    given = {
        "--pallet": args.pallet,
        "--bundle": args.bundle,
        "image refs": args.refs,
        "--images-file": args.images_file,
    }
    sources = [name for name, value in given.items() if value]
    if len(sources) > 1:
        raise UsageError(
            f"couldn't choose the images: {' and '.join(sources)} were both given; "
            "pass one source at a time"
        )
    source = sources[0] if sources else "the stage store"
    if args.bundles is not None and source != "the stage store":
        raise UsageError(f"--bundles selects bundles of the stage store; it can't go with {source}")
    if args.include_disabled and source != "--pallet":
        raise UsageError(
            "--include-disabled applies to --pallet only (bundles hold no disabled deployments)"
        )
    if args.with_file_exports and source not in ("--pallet", "--bundle", "the stage store"):
        raise UsageError("--with-file-exports applies to pallets, bundles and the stage store")

    if args.pallet:
        return requirements.list_pallet_images(
            Path(args.pallet),
            settings.workspace_dir,
            include_disabled=args.include_disabled,
            with_file_exports=args.with_file_exports,
        )
    if args.bundle:
        return requirements.list_bundle_images(
            Path(args.bundle), with_file_exports=args.with_file_exports
        )
    if args.refs:
        return requirements.list_given_images(args.refs, "the command line")
    if args.images_file:
        return requirements.list_given_images(*_read_images_file(args.images_file))
    selectors = [s.strip() for s in args.bundles.split(",") if s.strip()] if args.bundles else None
    return requirements.list_stage_store_images(
        settings.stage_store_dir, selectors, with_file_exports=args.with_file_exports
    )


def _source_given(args: argparse.Namespace) -> bool:
    return bool(args.pallet or args.bundle or args.refs or args.images_file)


def names_images(args: argparse.Namespace) -> bool:
    """Any option that chooses images was given; with none, `cache push` and `cache copy` take
    every cached image rather than the stage store's."""
    return (
        _source_given(args)
        or args.bundles is not None
        or bool(args.include_disabled or args.with_file_exports)
    )


def _read_images_file(name: str) -> tuple[list[str], str]:
    if name == "-":
        return sys.stdin.read().splitlines(), "standard input"
    try:
        return Path(name).read_text(encoding="utf-8").splitlines(), name
    except OSError as err:
        raise UsageError(f"couldn't read images file {name}: {err.strerror or err}") from err


def _canonical(text: str) -> str:
    try:
        return parse_image_ref(text).with_default_tag().canonical
    except ImageRefError as err:
        raise UsageError(str(err)) from err


def entry_platform(settings: Settings, entry: CachedImage) -> str:
    """The platform to take from a cached image index: ``--platform``, else the one it was
    cached for, else this machine's (as ``host_platform``)."""
    if settings.platform or not entry.platform:
        return host_platform(settings)
    return entry.platform


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
