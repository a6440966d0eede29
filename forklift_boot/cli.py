"""The ``forklift-boot`` command line: arguments, output and exit codes."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from forklift_boot import __version__, config, requirements
from forklift_boot.errors import ForkliftBootError, UsageError
from forklift_boot.requirements import RequiredImage

log = logging.getLogger("forklift_boot")

Handler = Callable[[argparse.Namespace, config.Settings, TextIO], int]


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    parser = _build_parser()
    try:
        args = _parse_args(parser, argv)
    except SystemExit as exit_:  # argparse reports usage errors itself, with exit code 2
        return exit_.code if isinstance(exit_.code, int) else 2
    _configure_logging(verbose=args.verbose, journal=bool(env.get("JOURNAL_STREAM")))
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


# Commands


def _list_images(args: argparse.Namespace, settings: config.Settings, out: TextIO) -> int:
    images = _required_images(args, settings)
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


def _required_images(args: argparse.Namespace, settings: config.Settings) -> list[RequiredImage]:
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
            f"couldn't choose what to list: {' and '.join(sources)} were both given; "
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


def _read_images_file(name: str) -> tuple[list[str], str]:
    if name == "-":
        return sys.stdin.read().splitlines(), "standard input"
    try:
        return Path(name).read_text(encoding="utf-8").splitlines(), name
    except OSError as err:
        raise UsageError(f"couldn't read images file {name}: {err.strerror or err}") from err


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
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, flag: str, help_text: str
) -> None:
    """A Forklift-style boolean: ``--flag`` turns it on, ``--flag=false`` off.

    ``--flag=true``/``--flag=false`` are registered as exact option strings (argparse matches
    those before splitting at ``=``), so a bare ``--flag`` never swallows the next argument.
    """
    dest = flag.removeprefix("--").replace("-", "_")
    parser.add_argument(flag, dest=dest, action="store_true", default=False, help=help_text)
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
        description="Keeps an offline cache of the container images a Forklift pallet needs.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_global_options(parser, in_command=False)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    ls_img = commands.add_parser(
        "ls-img",
        aliases=["list-images"],
        help="Lists the images that a pallet, a bundle or the stage store requires",
        description="Lists the container images required by the stage store's bundles (by "
        "default), one staged bundle, a pallet, or the given refs: one per line, sorted, exactly "
        "as the compose files write them.",
    )
    ls_img.set_defaults(handler=_list_images)
    _add_source_options(ls_img)
    _add_bool(ls_img, "--json", "print a JSON list with each image's parsed reference and users")
    _add_global_options(ls_img, in_command=True)
    return parser


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


# Logging

_SYSLOG_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class _StderrFormatter(logging.Formatter):
    """Forklift's style on a terminal (``Warning: ...``); syslog priorities under journald."""

    def __init__(self, *, journal: bool) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        if self.journal:
            priority = _SYSLOG_PRIORITY.get(record.levelno, 6)
            return "\n".join(f"<{priority}>{line}" for line in message.splitlines())
        if record.levelno >= logging.ERROR:
            return f"Error: {message}"
        if record.levelno >= logging.WARNING:
            return f"Warning: {message}"
        return message


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is now (tests and callers may replace it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _configure_logging(*, verbose: bool, journal: bool) -> None:
    handler = _StderrHandler()
    handler.setFormatter(_StderrFormatter(journal=journal))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False
