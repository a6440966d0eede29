"""The ``forklift-boot`` command line: arguments, output and exit codes."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence

from forklift_boot import __version__, config
from forklift_boot.cli import (
    cache_del,
    cache_img,
    cache_ls,
    cache_verify,
    export_file,
    export_img,
    load_img,
    ls_img,
    push,
    serve,
    status,
    transfer,
)
from forklift_boot.cli.options import (
    Command,
    CommandGroup,
    Handler,
    add_command,
    add_global_options,
)
from forklift_boot.cli.output import configure_logging
from forklift_boot.errors import ForkliftBootError

log = logging.getLogger("forklift_boot")

Entry = Command | CommandGroup

# The commands in the order --help lists them: (name, alias, what it is).
CACHE = CommandGroup(
    "Queries and manages the image cache",
    title="cache commands",
    commands=[
        ("ls-img", "list-images", cache_ls.COMMAND),
        ("verify", None, cache_verify.COMMAND),
        ("del-img", "delete-images", cache_del.COMMAND),
        ("export-img", "export-image", export_img.COMMAND),
        ("copy", None, transfer.COPY),
        ("merge", None, transfer.MERGE),
        ("push", None, push.COMMAND),
        ("serve", None, serve.COMMAND),
        ("export-file", None, export_file.COMMAND),
    ],
)
COMMANDS: list[tuple[str, str | None, Entry]] = [
    ("ls-img", "list-images", ls_img.COMMAND),
    ("cache-img", "cache-images", cache_img.COMMAND),
    ("load-img", "load-images", load_img.COMMAND),
    ("cache", None, CACHE),
    ("status", None, status.COMMAND),
]


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


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="forklift-boot",
        description=("Keeps an offline cache of the container images a Forklift pallet needs."),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_global_options(parser, in_command=False)
    _add_commands(parser, "commands", COMMANDS)
    return parser


def _add_commands(
    parser: argparse.ArgumentParser, title: str, table: Sequence[tuple[str, str | None, Entry]]
) -> None:
    commands = parser.add_subparsers(title=title, metavar="COMMAND", required=True)
    for name, alias, entry in table:
        if isinstance(entry, CommandGroup):
            group = commands.add_parser(name, help=entry.summary)
            add_global_options(group, in_command=True)
            _add_commands(group, entry.title, entry.commands)
            continue
        command = add_command(
            commands,
            name,
            alias,
            entry.summary,
            description=entry.description,
            handler=entry.handler,
        )
        entry.add_arguments(command)
