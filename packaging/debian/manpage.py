"""Writes the man page forklift-boot(1) to stdout, from the command line's own argparse parser.

Run at package build time by debian/rules, with PYTHONPATH at the package tree:

    PYTHONPATH=debian/forklift-boot/usr/lib/python3/dist-packages python3 debian/manpage.py

Every command, option and help text comes from ``forklift_boot.cli._build_parser()``, so the page
follows the code; only the sections the parser does not know (exit status, environment, files,
units) are written here. (help2man sees only the top-level --help, and bookworm's
argparse-manpage 1.2.2 leaves the whatis entry empty and does not escape text, which lintian
reports.) The date is SOURCE_DATE_EPOCH's, which dpkg-buildpackage takes from debian/changelog.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator

from forklift_boot import __version__
from forklift_boot.cli import _build_parser

PROG = "forklift-boot"
# Options every command also accepts; documented once, under GLOBAL OPTIONS.
GLOBAL_GROUP = "global options"

EXIT_STATUS = [
    ("0", "Done, or nothing to do."),
    ("1", "Failed."),
    ("2", "Usage error."),
    ("3", "Some images failed; the others are done."),
]
ENVIRONMENT = [
    ("DOCKER_HOST", "The Docker daemon (default unix:///var/run/docker.sock)."),
    ("FORKLIFT_WORKSPACE", "As --workspace."),
    ("FORKLIFT_STAGE_STORE", "As --stage-store."),
    ("FORKLIFT_BOOT_CACHE_DIR", "As --cache-dir."),
    ("FORKLIFT_PLATFORM", "As --platform."),
    (
        "NOTIFY_SOCKET",
        "Set by systemd: progress (STATUS=) and start-timeout extensions (EXTEND_TIMEOUT_USEC=) "
        "go there.",
    ),
    ("JOURNAL_STREAM", "Set by systemd: log lines carry syslog priority prefixes."),
]
FILES = [
    (
        "/var/cache/forklift/images",
        "The image cache when run as root (an OCI image layout), unless configured otherwise.",
    ),
    ("/var/lib/forklift/stages", "Forklift's stage store, when it exists."),
    (
        "/lib/systemd/system/forklift-boot-load-img.service",
        "Runs forklift-boot load-img at every boot, after docker.service and before "
        "forklift-apply.service.",
    ),
    (
        "/lib/systemd/system/forklift-boot-cache-img.service",
        "Runs forklift-boot cache-img at every boot, once the system is up. Configure both units "
        "with drop-ins (systemctl edit), for example Environment=FORKLIFT_STAGE_STORE=...; "
        "systemctl start runs them again.",
    ),
]
SEE_ALSO = ["docker(1)", "journalctl(1)", "systemctl(1)", "systemd.service(5)"]


def escape(text: str) -> str:
    """Text as roff shows it literally: one line, backslashes and minus signs escaped."""
    text = " ".join(text.split()).replace("\\", "\\e").replace("-", "\\-")
    # A line starting with . or ' would be a request.
    return "\\&" + text if text.startswith((".", "'")) else text


def subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, list[str], str | None]]:
    """(name, aliases, summary) of each command of ``parser``, in the order of --help."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            by_parser: dict[int, list[str]] = {}
            for name, sub in action.choices.items():
                by_parser.setdefault(id(sub), []).append(name)
            for choice in action._choices_actions:
                names = by_parser[id(action.choices[choice.dest])]
                yield choice.dest, [n for n in names if n != choice.dest], choice.help


def command_parser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            sub: argparse.ArgumentParser = action.choices[name]
            return sub
    raise KeyError(name)


def documented(group: argparse._ArgumentGroup) -> list[argparse.Action]:
    return [
        action
        for action in group._group_actions
        if action.help != argparse.SUPPRESS
        and not isinstance(action, argparse._HelpAction | argparse._SubParsersAction)
    ]


def options(parser: argparse.ArgumentParser, *, skip_global: bool) -> Iterator[str]:
    """One .TP entry per documented argument, under its group's title."""
    formatter = parser._get_formatter()
    for group in parser._action_groups:
        if skip_global and group.title == GLOBAL_GROUP:
            continue
        actions = documented(group)
        if not actions:
            continue
        if group.title not in {"options", "positional arguments", GLOBAL_GROUP}:
            yield f".PP\n{escape(str(group.title).capitalize())}:"
        for action in actions:
            invocation = formatter._format_action_invocation(action)
            yield f".TP\n\\fB{escape(invocation)}\\fR"
            if action.help:
                yield escape(formatter._expand_help(action))


def usage(parser: argparse.ArgumentParser) -> str:
    """The command's usage without the global options and -h (described once)."""
    actions = [
        action
        for group in parser._action_groups
        if group.title != GLOBAL_GROUP
        for action in documented(group)
    ]
    formatter = argparse.HelpFormatter(parser.prog, width=10_000)
    formatter.add_usage(None, actions, [], prefix="")
    return formatter.format_help().strip()


def commands(parser: argparse.ArgumentParser, path: str) -> Iterator[str]:
    for name, aliases, summary in subcommands(parser):
        sub = command_parser(parser, name)
        title = f"{path} {name}" + (f" (alias {', '.join(aliases)})" if aliases else "")
        yield f'.SS "{escape(title)}"'
        yield f".B {PROG}\n[\\fIglobal options\\fR]\n{escape(usage(sub)[len(PROG) :])}"
        yield f".PP\n{escape(sub.description or summary or '')}"
        nested = list(subcommands(sub))
        if nested:
            yield ".PP\nCommands:"
            for nested_name, _, nested_summary in nested:
                yield f".TP\n\\fB{escape(nested_name)}\\fR\n{escape(nested_summary or '')}"
        yield from options(sub, skip_global=True)
        if nested:
            yield from commands(sub, f"{path} {name}")


def definitions(title: str, items: list[tuple[str, str]]) -> Iterator[str]:
    yield f".SH {title}"
    for term, text in items:
        yield f".TP\n\\fB{escape(term)}\\fR\n{escape(text)}"


def manpage() -> str:
    parser = _build_parser()
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))
    date = time.strftime("%Y-%m-%d", time.gmtime(epoch))
    description = (parser.description or "").rstrip(".")
    lines = [
        f'.TH {PROG.upper()} 1 "{date}" "{PROG} {__version__}" "User Commands"',
        # No hyphenation, ragged right: option names and paths stay whole.
        ".nh",
        ".ad l",
        ".SH NAME",
        f"{PROG} \\- {escape(description)}",
        ".SH SYNOPSIS",
        f".B {PROG}\n[\\fIglobal options\\fR]\n\\fIcommand\\fR\n[\\fIoptions\\fR]",
        ".br",
        f".B {PROG}\n\\fIcommand\\fR \\fB\\-\\-help\\fR",
        ".SH DESCRIPTION",
        escape(parser.description or ""),
        ".PP",
        "Global options go before or after the command. Boolean options also take "
        + escape("--option=true and --option=false."),
        ".SH GLOBAL OPTIONS",
        *options(parser, skip_global=False),
        ".SH COMMANDS",
        *commands(parser, PROG),
        *definitions("EXIT STATUS", EXIT_STATUS),
        *definitions("ENVIRONMENT", ENVIRONMENT),
        *definitions("FILES", FILES),
        ".SH SEE ALSO",
        ",\n".join(f"\\fB{page.split('(')[0]}\\fR({page.split('(')[1]}" for page in SEE_ALSO),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(manpage())
