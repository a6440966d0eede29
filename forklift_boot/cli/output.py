"""What the command line shows: log lines on stderr, live progress, and reports."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import TextIO

from forklift_boot.cache import human_bytes
from forklift_boot.config import Settings
from forklift_boot.errors import printable
from forklift_boot.report import ImageOutcome, Progress, RunReport
from forklift_boot.systemd import SystemdProgress, notify

log = logging.getLogger("forklift_boot")


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
        # The last way out: text from outside (a name, an error body) can't forge a line here.
        message = printable(record.getMessage())
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


def configure_logging(*, verbose: bool, journal: bool) -> None:
    handler = _StderrHandler()
    handler.setFormatter(_StderrFormatter(journal=journal))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False


class TerminalProgress:
    """Live progress on one line of a terminal; elsewhere one line per image."""

    def __init__(self, verb: str, stream: TextIO | None = None) -> None:
        self.verb = verb
        self.stream = stream or sys.stderr
        self.is_live = self.stream.isatty()
        self._label = ""
        self._size = 0
        self._done = 0
        self._started = time.monotonic()
        self._shown = 0.0

    def start_image(self, index: int, total: int, name: str, size: int) -> None:
        self._label = f"{self.verb} {index}/{total}: {name}"
        self._size, self._done, self._started = size, 0, time.monotonic()
        if self.is_live:
            self._show()
        else:
            log.info("%s (%s)", self._label, human_bytes(size))

    def add_bytes(self, count: int) -> None:
        self._done += count
        now = time.monotonic()
        if self.is_live and now - self._shown > 0.2:
            self._show()

    def finish_image(self, outcome: ImageOutcome) -> None:
        if self.is_live:
            self.stream.write("\r\033[K")
        detail = f": {outcome.detail}" if outcome.detail else ""
        if outcome.is_failure:
            return  # already logged as an error where it happened
        log.info(
            "%s %s%s", outcome.status, outcome.refs[0] if outcome.refs else outcome.name, detail
        )

    def _show(self) -> None:
        self._shown = time.monotonic()
        elapsed = max(self._shown - self._started, 1e-3)
        rate = human_bytes(int(self._done / elapsed))
        self.stream.write(
            f"\r\033[K{self._label}: {human_bytes(self._done)}/{human_bytes(self._size)}, {rate}/s"
        )
        self.stream.flush()


def progress_for(verb: str, settings: Settings) -> Progress:
    """Progress on the terminal, and as systemd's ``STATUS=`` when systemd listens."""
    progress: Progress = TerminalProgress(verb)
    if settings.notify_socket:
        progress = SystemdProgress(verb, progress)
    return progress


def status_for(settings: Settings) -> Callable[[str], None]:
    """A line for systemd's ``STATUS=`` when systemd listens, and the debug log."""

    def status(text: str) -> None:
        log.debug("%s", text)
        if settings.notify_socket:
            notify(f"STATUS={text}")

    return status


def print_report(
    report: RunReport, out: TextIO, *, as_json: bool, notify_systemd: bool = False
) -> None:
    """The summary line on stderr (and as systemd's ``STATUS=`` with ``notify_systemd``); with
    ``--json`` the whole report on stdout."""
    summary = report.summary()
    log.info("%s", summary)
    if as_json:
        json.dump(report.to_json(), out, indent=2)
        out.write("\n")
    if notify_systemd:
        notify(f"STATUS={summary}")
