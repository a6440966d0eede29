"""The exception hierarchy that every module raises and the CLI turns into exit codes."""

from __future__ import annotations

from pathlib import Path


class ForkliftBootError(Exception):
    """Base of every error forklift-boot reports as a one-line message."""

    exit_code = 1


class UsageError(ForkliftBootError):
    """The command line asks for something contradictory or incomplete."""

    exit_code = 2


class RequirementsError(ForkliftBootError):
    """A pallet, bundle, stage store or compose file cannot be evaluated.

    The message names the file; ``path`` carries it for programs.
    """

    def __init__(self, message: str, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else None
        super().__init__(message)


class ImageRefError(ForkliftBootError):
    """A string is not a valid image reference."""


class CacheError(ForkliftBootError):
    """The image cache cannot be read or written."""


class EngineError(ForkliftBootError):
    """Docker or containerd refused or failed an operation."""


class EngineUnavailableError(EngineError):
    """Docker or containerd cannot be reached at all."""


class RegistryError(ForkliftBootError):
    """A registry refused or failed a request."""


class RegistryUnreachableError(RegistryError):
    """A registry can't be reached: refused, timed out, silent, TLS failed."""


class CancelledError(Exception):
    """A worker thread leaves its transfer between two chunks because the run was interrupted;
    the pool that started it swallows it, so it never reaches the user."""


def printable(text: str) -> str:
    """``text`` safe for a terminal, a log line or the journal: control and other unprintable
    characters escaped as Python writes them (``\\x1b``, ``\\n``, ``\\u2028``), so that a name
    or an error body from outside can't colour, move or forge lines of forklift-boot's output."""
    if text.isprintable():
        return text
    return "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
        for char in text
    )
