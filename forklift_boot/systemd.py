"""systemd: progress as ``STATUS=``, start timeouts extended while work progresses, and unit
state and control over D-Bus. The only module that imports pystemd."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pystemd.daemon import notify as sd_notify
from pystemd.dbusexc import DBusBaseError
from pystemd.dbuslib import DBusAddress
from pystemd.systemd1 import Unit

from forklift_boot.cache import human_bytes
from forklift_boot.errors import EngineError, ForkliftBootError
from forklift_boot.report import ImageOutcome

log = logging.getLogger(__name__)

# While bytes keep moving, ask for this much more time, at most every EXTEND_EVERY seconds:
# a slow SD card never hits the unit's start timeout, a hung daemon still does.
EXTEND_BY_SECONDS = 120
EXTEND_EVERY_SECONDS = 10
POLL_SECONDS = 0.2


class SystemdError(ForkliftBootError):
    """systemd could not be reached or refused a request."""


def notify(*states: str) -> None:
    """sd_notify(3): only call when ``NOTIFY_SOCKET`` is set (the caller checks the environment)."""
    sd_notify(False, *states)


class SystemdProgress:
    """Reports progress to the service manager, and wraps another progress (the log lines)."""

    def __init__(self, verb: str, inner: Any) -> None:
        self.verb = verb
        self.inner = inner
        self._label = ""
        self._size = 0
        self._done = 0
        self._last_status = 0.0
        self._last_extend = 0.0

    def start_image(self, index: int, total: int, name: str, size: int) -> None:
        self.inner.start_image(index, total, name, size)
        self._label = f"{self.verb} {index}/{total}: {name}"
        self._size, self._done = size, 0
        self._status(force=True)

    def add_bytes(self, count: int) -> None:
        self.inner.add_bytes(count)
        self._done += count
        self._status()

    def finish_image(self, outcome: ImageOutcome) -> None:
        self.inner.finish_image(outcome)

    def _status(self, *, force: bool = False) -> None:
        now = time.monotonic()
        states = []
        if force or now - self._last_status >= 1:
            self._last_status = now
            states.append(
                f"STATUS={self._label}: {human_bytes(self._done)}/{human_bytes(self._size)}"
            )
        if now - self._last_extend >= EXTEND_EVERY_SECONDS:
            self._last_extend = now
            states.append(f"EXTEND_TIMEOUT_USEC={EXTEND_BY_SECONDS * 1_000_000}")
        if states:
            notify(*states)


@dataclass(frozen=True)
class UnitState:
    name: str
    active_state: str
    sub_state: str
    result: str
    exit_status: int | None
    last_run: datetime | None  # when the last run finished (or started, if it still runs)
    status_text: str

    def to_json(self) -> dict[str, Any]:
        return {
            "unit": self.name,
            "active_state": self.active_state,
            "sub_state": self.sub_state,
            "result": self.result,
            "exit_status": self.exit_status,
            "last_run": self.last_run.isoformat() if self.last_run else None,
            "status": self.status_text,
        }


class SystemdManager:
    """The system's service manager, on the system bus (or a given bus socket, for tests)."""

    def __init__(self, bus_socket: str | None = None) -> None:
        self.bus_socket = bus_socket

    def unit_state(self, name: str) -> UnitState:
        def read(unit: Any) -> UnitState:
            service = unit.Service
            finished = int(service.ExecMainExitTimestamp or 0)
            started = int(service.ExecMainStartTimestamp or 0)
            stamp = finished or started
            return UnitState(
                name=name,
                active_state=_text(unit.Unit.ActiveState),
                sub_state=_text(unit.Unit.SubState),
                result=_text(service.Result),
                exit_status=int(service.ExecMainStatus) if stamp else None,
                last_run=datetime.fromtimestamp(stamp / 1e6, UTC) if stamp else None,
                status_text=_text(service.StatusText),
            )

        state: UnitState = self._with_unit(name, read)
        return state

    def wait_active(self, name: str, timeout: float) -> None:
        """Waits until ``name`` is active; a bounded wait with a clear error."""
        deadline = time.monotonic() + timeout
        while True:
            state = self._with_unit(name, lambda unit: _text(unit.Unit.ActiveState))
            if state == "active":
                return
            if state == "failed" or time.monotonic() > deadline:
                raise EngineError(
                    f"couldn't use Docker: {name} is {state} after waiting {timeout:.0f} s; "
                    f"see `systemctl status {name}` and `journalctl -u {name}`"
                )
            time.sleep(POLL_SECONDS)

    def stop(self, names: Sequence[str], timeout: float) -> None:
        for name in names:
            self._with_unit(name, lambda unit: unit.Unit.Stop(b"replace"))
        self._wait_states(names, {"inactive", "failed"}, timeout, "stop")

    def start(self, names: Sequence[str], timeout: float) -> None:
        for name in names:
            self._with_unit(name, lambda unit: unit.Unit.Start(b"replace"))
        self._wait_states(names, {"active"}, timeout, "start")

    def _wait_states(
        self, names: Sequence[str], wanted: set[str], timeout: float, verb: str
    ) -> None:
        deadline = time.monotonic() + timeout
        for name in names:
            while (
                state := self._with_unit(name, lambda unit: _text(unit.Unit.ActiveState))
            ) not in wanted:
                if time.monotonic() > deadline:
                    raise SystemdError(
                        f"couldn't {verb} {name}: it is {state} after {timeout:.0f} s"
                    )
                time.sleep(POLL_SECONDS)

    def _with_unit(self, name: str, action: Any) -> Any:
        try:
            if self.bus_socket is None:
                unit = Unit(name.encode())
                unit.load()
                return action(unit)
            with DBusAddress(f"unix:path={self.bus_socket}".encode()) as bus:
                unit = Unit(name.encode(), bus=bus)
                unit.load()
                return action(unit)
        except DBusBaseError as err:
            raise SystemdError(f"couldn't reach systemd for {name}: {err}") from err


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")
