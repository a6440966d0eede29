"""The options several commands share, and how a command is registered with argparse."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TextIO

from forklift_boot import config
from forklift_boot.stores.containerd import ctr
from forklift_boot.stores.registry.targets import parse_size
from forklift_boot.stores.registry.transport import MinimumRate, RetryPolicy

DEFAULT_COMPRESSION = "gzip"

Handler = Callable[[argparse.Namespace, config.Settings, TextIO], int]


@dataclass(frozen=True)
class Command:
    """One command: its --help texts, its own arguments and what runs it."""

    summary: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    handler: Handler


@dataclass(frozen=True)
class CommandGroup:
    """A command that holds commands (``cache``): its --help summary and its own table."""

    summary: str
    title: str
    commands: list[tuple[str, str | None, Command]]


def add_bool(
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


def add_global_options(parser: argparse.ArgumentParser, *, in_command: bool) -> None:
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


def add_command(
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
    add_global_options(parser, in_command=True)
    return parser


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, not {text!r}")
    return value


def add_containerd_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("containerd (--from/--into containerd)")
    group.add_argument(
        "--containerd-address",
        default=ctr.DEFAULT_ADDRESS,
        metavar="SOCKET",
        help=f"containerd's socket (default {ctr.DEFAULT_ADDRESS})",
    )
    group.add_argument(
        "--namespace",
        default=ctr.DEFAULT_NAMESPACE,
        metavar="NS",
        help="containerd namespace: default (ctr, nerdctl), k8s.io (CRI: k3s, kubelet), moby "
        f"(default {ctr.DEFAULT_NAMESPACE})",
    )


def add_compress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--compress",
        choices=["gzip", "none"],
        default=DEFAULT_COMPRESSION,
        help="how to store layers copied out of Docker's classic store, which hands them out "
        f"uncompressed (default {DEFAULT_COMPRESSION}: see docs/benchmarks.md)",
    )


def add_source_options(parser: argparse.ArgumentParser) -> None:
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
    add_bool(group, "--include-disabled", "also list images of disabled deployments (--pallet)")
    add_bool(group, "--with-file-exports", "also list the images of oci-image file exports")


def add_registry_mirror(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--registry-mirror",
        action="append",
        default=[],
        metavar="URL",
        help="a Docker Hub mirror to try before docker.io (repeatable; as dockerd's option)",
    )


def add_registry_limits(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """How long a command waits on a slow or busy registry (docs/threat-model.md)."""
    parser.add_argument(
        "--min-rate",
        metavar="SIZE",
        type=_rate,
        default=MinimumRate().min_bytes,
        help="give up on a registry transfer that receives less than SIZE in "
        f"{MinimumRate().window:g} s (default 64k; 0: never)",
    )
    parser.add_argument(
        "--retry-wait",
        metavar="SECONDS",
        type=positive_int,
        default=int(RetryPolicy().max_total_wait),
        help="the longest one registry request waits between its attempts, a Retry-After "
        "included; a single Retry-After may take half of it (default "
        f"{RetryPolicy().max_total_wait:g})",
    )


def registry_limits(args: argparse.Namespace) -> dict[str, Any]:
    """The RegistryClient arguments that ``add_registry_limits`` sets."""
    return {
        "min_rate": MinimumRate(min_bytes=args.min_rate),
        "retry": replace(
            RetryPolicy(),
            max_total_wait=float(args.retry_wait),
            max_retry_after=args.retry_wait / 2,
        ),
    }


def _rate(text: str) -> int:
    if text.strip() == "0":
        return 0
    try:
        return parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err
