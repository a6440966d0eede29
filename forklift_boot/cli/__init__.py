"""The ``forklift-boot`` command line: arguments, output and exit codes."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

from forklift_boot import __version__, config
from forklift_boot.cli import commands as commands_
from forklift_boot.cli import export_file as export_file_
from forklift_boot.cli import push as push_
from forklift_boot.cli import serve as serve_
from forklift_boot.cli import transfer as transfer_
from forklift_boot.cli.output import configure_logging
from forklift_boot.errors import ForkliftBootError
from forklift_boot.report import DEFAULT_JOBS
from forklift_boot.stores.containerd import ctr as containerd_store

DEFAULT_COMPRESSION = "gzip"

log = logging.getLogger("forklift_boot")

Handler = Callable[[argparse.Namespace, config.Settings, TextIO], int]


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    parser = _build_parser()
    try:
        args = _parse_args(parser, argv)
    except SystemExit as exit_:  # argparse reports usage errors itself, with exit code 2
        return exit_.code if isinstance(exit_.code, int) else 2
    configure_logging(verbose=args.verbose, journal=bool(env.get("JOURNAL_STREAM")))
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (systemctl stop, a unit's timeout) unwinds like an exception, so temporaries
        # are removed and a stopped Docker is started again; a second one kills at once.
        signal.signal(signal.SIGTERM, _terminate)
    try:
        settings = config.load_settings(
            workspace=args.workspace,
            stage_store=args.stage_store,
            cache=args.cache_dir,
            platform=args.platform,
            env=env,
        )
        log.debug("settings: %s", settings)
        handler: Handler = args.handler
        return handler(args, settings, sys.stdout)
    except ForkliftBootError as err:
        log.error("%s", err)
        return err.exit_code
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130


def _terminate(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise SystemExit(128 + signum)


# Parsing


def _parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    # Refs may come between options (`ls-img a:1 --json b:2`); argparse's positional stops at the
    # first option, so the refs it leaves over are collected here.
    args, extra = parser.parse_known_args(argv)
    unknown = [arg for arg in extra if arg.startswith("-")]
    if unknown or (extra and not hasattr(args, "refs")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    if extra:
        args.refs = [*args.refs, *extra]
    return args


def _add_bool(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    flag: str,
    help_text: str,
    *,
    default: bool = False,
) -> None:
    """A Forklift-style boolean: ``--flag`` turns it on, ``--flag=false`` off.

    ``--flag=true``/``--flag=false`` are registered as exact option strings (argparse matches
    those before splitting at ``=``), so a bare ``--flag`` never swallows the next argument.
    """
    dest = flag.removeprefix("--").replace("-", "_")
    if default:
        help_text += " (default; --{}=false turns it off)".format(flag.removeprefix("--"))
    parser.add_argument(flag, dest=dest, action="store_true", default=default, help=help_text)
    parser.add_argument(f"{flag}=true", dest=dest, action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(f"{flag}=false", dest=dest, action="store_false", help=argparse.SUPPRESS)


def _add_global_options(parser: argparse.ArgumentParser, *, in_command: bool) -> None:
    # Global flags are accepted before or after the command. Inside a command their default is
    # SUPPRESS, so that a value given before the command is not reset to None.
    default: Any = argparse.SUPPRESS if in_command else None
    group = parser.add_argument_group("global options")
    group.add_argument(
        "--workspace",
        "--ws",
        metavar="DIR",
        default=default,
        help="Forklift workspace (env FORKLIFT_WORKSPACE; default $HOME)",
    )
    group.add_argument(
        "--stage-store",
        "--ss",
        metavar="DIR",
        default=default,
        help="stage store (env FORKLIFT_STAGE_STORE; default /var/lib/forklift/stages when it "
        "exists, else <workspace>/.local/share/forklift/stages)",
    )
    group.add_argument(
        "--cache-dir",
        metavar="DIR",
        default=default,
        help="image cache (env FORKLIFT_BOOT_CACHE_DIR; default /var/cache/forklift/images as "
        "root, else ~/.cache/forklift/images)",
    )
    group.add_argument(
        "--platform",
        metavar="OS/ARCH[/VARIANT]",
        default=default,
        help="image platform (env FORKLIFT_PLATFORM)",
    )
    group.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default if in_command else False,
        help="log debug messages",
    )


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="forklift-boot",
        description=("Keeps an offline cache of the container images a Forklift pallet needs."),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_global_options(parser, in_command=False)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    ls_img = _command(
        commands,
        "ls-img",
        "list-images",
        "Lists the images that a pallet, a bundle or the stage store requires",
        description=(
            "Lists the container images required by the stage store's bundles (by default), one "
            "staged bundle, a pallet, or the given refs: one per line, sorted, exactly as the "
            "compose files write them."
        ),
        handler=commands_.list_images,
    )
    _add_source_options(ls_img)
    _add_bool(ls_img, "--status", "also show whether each image is cached, in Docker, resolvable")
    _add_bool(ls_img, "--json", "print JSON: each image's parsed reference and users")

    cache_img = _command(
        commands,
        "cache-img",
        "cache-images",
        "Copies the required images out of Docker or from registries into the image cache",
        description=(
            "Copies every required image that the cache lacks out of Docker (DOCKER_HOST "
            "honoured), with one `docker save` stream, or with --from registry from the images' "
            "registries with no daemon. From the stage store it keeps every bundle a device may "
            "fall back to."
        ),
        handler=commands_.cache_images_command,
    )
    _add_source_options(cache_img)
    _add_compress(cache_img)
    _add_bool(cache_img, "--json", "print the report as JSON on stdout")
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
    _add_containerd_options(cache_img)
    _add_bool(
        fetch,
        "--all-platforms",
        "keep every platform of a multi-platform image that the source has (registries, "
        "containerd, Docker's containerd image store); by default one platform only",
    )
    fetch.add_argument(
        "--jobs",
        type=_positive_int,
        default=DEFAULT_JOBS,
        metavar="N",
        help=f"blobs downloaded at once (default {DEFAULT_JOBS})",
    )
    fetch.add_argument(
        "--registry-mirror",
        action="append",
        default=[],
        metavar="URL",
        help="a Docker Hub mirror to try before docker.io (repeatable; as dockerd's option)",
    )
    _add_bool(fetch, "--offline", "never touch the network (registries refuse, Docker still works)")

    load_img = _command(
        commands,
        "load-img",
        "load-images",
        "Loads the required images from the image cache into Docker",
        description=(
            "Loads what Docker lacks from the cache, so that every image reference resolves "
            "exactly "
            "as the compose files write it, offline. From the stage store it loads what `forklift "
            "stage apply` will apply (next, or current when next failed) unless --bundles says "
            "otherwise."
        ),
        handler=commands_.load_images_command,
    )
    _add_source_options(load_img)
    load_img.add_argument(
        "--into",
        dest="target",
        choices=["docker", "containerd"],
        default="docker",
        help="docker: load into Docker (default); containerd: import with ctr",
    )
    _add_containerd_options(load_img)
    _add_bool(load_img, "--all-cached", "load every cached image")
    _add_bool(
        load_img, "--thin", "leave out layers Docker already has (classic store)", default=True
    )
    _add_bool(
        load_img,
        "--record-digests",
        "record digest references in Docker's classic store, restarting Docker if needed",
        default=True,
    )
    _add_bool(load_img, "--json", "print the report as JSON on stdout")

    cache = commands.add_parser("cache", help="Queries and manages the image cache")
    _add_global_options(cache, in_command=True)
    cache_commands = cache.add_subparsers(title="cache commands", metavar="COMMAND", required=True)
    cache_ls = _command(
        cache_commands,
        "ls-img",
        "list-images",
        "Lists the cached images with their sizes",
        description=(
            "Lists the cached images: canonical name, size, bytes shared with other images, and "
            "the refs as written."
        ),
        handler=commands_.cache_list,
    )
    _add_bool(cache_ls, "--json", "print JSON")
    verify = _command(
        cache_commands,
        "verify",
        None,
        "Checks every blob of the cache against its digest",
        description=(
            "Checks every blob against its digest and every entry for completeness; --repair "
            "removes damaged blobs and copies their images again from Docker where it has them."
        ),
        handler=commands_.cache_verify,
    )
    _add_bool(verify, "--repair", "remove damaged blobs and copy their images again")
    _add_compress(verify)
    delete = _command(
        cache_commands,
        "del-img",
        "delete-images",
        "Deletes cached images",
        description=(
            "Deletes the given images from the cache, or with none, every image that no bundle of "
            "the stage store needs; then removes the blobs no image uses."
        ),
        handler=commands_.cache_delete,
    )
    delete.add_argument("refs", nargs="*", metavar="image_ref")
    export = _command(
        cache_commands,
        "export-img",
        "export-image",
        "Writes a cached image as an image archive",
        description=(
            "Writes a cached image as a tar that `docker load` reads: by default the legacy "
            "docker-archive layout with uncompressed layer.tar files (which older tools such as "
            "dive "
            "read), or with --format oci the layout Docker 25 saves."
        ),
        handler=commands_.cache_export,
    )
    export.add_argument("ref", metavar="image_ref")
    export.add_argument("-o", "--output", required=True, metavar="FILE", help="'-' for stdout")
    export.add_argument("--format", choices=["docker", "oci"], default="docker")

    copy = _command(
        cache_commands,
        "copy",
        None,
        "Copies cached images into another image cache (a USB stick)",
        description=(
            "Copies the cache's images, all of them or those the given refs or source need, into "
            "another cache directory (created if missing, merged into if it is one): only blobs it "
            "lacks, each checked against its digest as it streams; its index.json changes last, "
            "so an interrupted copy leaves both caches valid and a rerun copies only the rest."
        ),
        handler=transfer_.cache_copy,
    )
    copy.add_argument("--to", required=True, metavar="DIR", help="the image cache to copy into")
    _add_source_options(copy)
    _add_bool(
        copy,
        "--keep-existing",
        "where both caches name an image differently, keep the destination's (default: the "
        "copy replaces it)",
    )
    _add_bool(copy, "--json", "print the report as JSON on stdout")
    merge = _command(
        cache_commands,
        "merge",
        None,
        "Merges another image cache (a USB stick) into this one",
        description=(
            "Copies every image of FROM_DIR into the cache, as `cache copy` does the other way "
            "round: only the blobs the cache lacks, verified as they stream, index.json last."
        ),
        handler=transfer_.cache_merge,
    )
    merge.add_argument("from_dir", metavar="FROM_DIR", help="the image cache to merge in")
    _add_bool(
        merge,
        "--keep-existing",
        "where both caches name an image differently, keep this cache's (default: FROM_DIR's "
        "replaces it)",
    )
    _add_bool(merge, "--json", "print the report as JSON on stdout")

    push = _command(
        cache_commands,
        "push",
        None,
        "Pushes cached images to a registry that a fleet shares",
        description=(
            "Pushes the cached images (all of them, or those the given refs or source need) to "
            "an existing registry, each under REGISTRY/PREFIX/<its registry>/<its repository> "
            "with its tag (or digest), manifests byte for byte so digests stay the same; blobs "
            "the registry has are skipped and shared ones mounted. Credentials come from "
            "Docker's config.json (`docker login`)."
        ),
        handler=push_.cache_push,
    )
    push.add_argument(
        "destination",
        metavar="REGISTRY[/PREFIX]",
        help="e.g. registry.example.com:5000/fleet; HTTPS unless on loopback, http://... or "
        "--plain-http",
    )
    _add_source_options(push)
    _add_bool(push, "--plain-http", "talk HTTP, not HTTPS, to the registry (a trusted LAN only)")
    push.add_argument(
        "--jobs",
        type=_positive_int,
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
    _add_bool(push, "--json", "print the report as JSON on stdout")

    serve = _command(
        cache_commands,
        "serve",
        None,
        "Serves the cache read-only as a registry",
        description=(
            "Serves the cached images read-only over the pull side of the OCI distribution API "
            "(plain HTTP), until SIGTERM or Ctrl-C: `docker pull HOST:PORT/library/nginx:1.27`, "
            "Docker's registry-mirrors for Docker Hub, containerd's hosts.toml mirrors for any "
            "registry. Prints the address it listens on."
        ),
        handler=serve_.cache_serve,
    )
    serve.add_argument(
        "--listen",
        default=serve_.DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"address to listen on (default {serve_.DEFAULT_LISTEN}; port 0 picks a free one)",
    )
    _add_bool(
        serve, "--verify", "check each whole blob against its digest as it is sent", default=True
    )

    export_file = _command(
        cache_commands,
        "export-file",
        None,
        "Writes a file or directory of a cached image's filesystem",
        description=(
            "Writes SOURCE, a path in the image's filesystem (its layers applied in order, "
            "whiteouts honoured, symlinks in SOURCE's path followed inside the image), to DEST, "
            "as Forklift's oci-image file exports place it: a file becomes the file DEST, a "
            "directory becomes the directory DEST. Modes, times, symlinks and hardlinks are "
            "kept; owners too when run as root. Device nodes and set-user-ID/set-group-ID bits "
            "are left out unless asked for. Built beside DEST and renamed into place; a layer "
            "entry that would land outside DEST is refused."
        ),
        handler=export_file_.cache_export_file,
    )
    export_file.add_argument("ref", metavar="image_ref")
    export_file.add_argument(
        "source", metavar="SOURCE", help="path in the image, e.g. usr/bin/tool ('/' for all)"
    )
    export_file.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="DEST",
        help="where to write it (created; its parent too); '-' writes a tar to stdout, as "
        "`docker cp CONTAINER:SOURCE -` does",
    )
    _add_bool(
        export_file,
        "--keep-devices",
        "create the image's device nodes (as root), or put them in the tar of '-o -'",
    )
    _add_bool(
        export_file,
        "--keep-setid",
        "keep the set-user-ID and set-group-ID bits of the image's files",
    )

    status = _command(
        commands,
        "status",
        None,
        "Shows the units' last runs and the cache",
        description=(
            "Shows each forklift-boot unit's last result, time and last status message (from "
            "systemd), and a summary of the cache."
        ),
        handler=commands_.status,
    )
    _add_bool(status, "--json", "print JSON")
    return parser


def _command(
    commands: Any,
    name: str,
    alias: str | None,
    summary: str,
    *,
    description: str,
    handler: Handler,
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        name, aliases=[alias] if alias else [], help=summary, description=description
    )
    parser.set_defaults(handler=handler)
    _add_global_options(parser, in_command=True)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, not {text!r}")
    return value


def _add_containerd_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("containerd (--from/--into containerd)")
    group.add_argument(
        "--containerd-address",
        default=containerd_store.DEFAULT_ADDRESS,
        metavar="SOCKET",
        help=f"containerd's socket (default {containerd_store.DEFAULT_ADDRESS})",
    )
    group.add_argument(
        "--namespace",
        default=containerd_store.DEFAULT_NAMESPACE,
        metavar="NS",
        help="containerd namespace: default (ctr, nerdctl), k8s.io (CRI: k3s, kubelet), moby "
        f"(default {containerd_store.DEFAULT_NAMESPACE})",
    )


def _add_compress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--compress",
        choices=["gzip", "none"],
        default=DEFAULT_COMPRESSION,
        help="how to store layers copied out of Docker's classic store, which hands them out "
        f"uncompressed (default {DEFAULT_COMPRESSION}: see docs/benchmarks.md)",
    )


def _add_source_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("source (one at a time; default: the stage store)")
    group.add_argument(
        "refs", nargs="*", metavar="image_ref", help="image references, e.g. nginx:1.27"
    )
    group.add_argument("--pallet", metavar="DIR", help="a pallet directory")
    group.add_argument("--bundle", metavar="DIR", help="one staged bundle directory")
    group.add_argument(
        "--bundles",
        metavar="NAMES",
        help="comma-separated bundles of the stage store: next, current, rollback, pending, "
        "a name such as factory-reset, or an index (default: next, current, rollback and "
        "every named bundle)",
    )
    group.add_argument(
        "--images-file",
        metavar="FILE",
        help="a file with one image reference per line ('-' for standard input), e.g. the output "
        "of `forklift plt ls-img`",
    )
    _add_bool(group, "--include-disabled", "also list images of disabled deployments (--pallet)")
    _add_bool(group, "--with-file-exports", "also list the images of oci-image file exports")
