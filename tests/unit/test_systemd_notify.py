"""sd_notify through pystemd, received on a real datagram socket as systemd would."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from forklift_boot import systemd
from forklift_boot.report import ImageOutcome, NoProgress


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def received(sock: socket.socket) -> list[str]:
    messages = []
    sock.setblocking(False)
    try:
        while True:
            messages.append(sock.recv(4096).decode())
    except BlockingIOError:
        return messages


def test_progress_reports_status_and_extends_the_timeout(notify_socket: socket.socket) -> None:
    progress = systemd.SystemdProgress("caching", NoProgress())
    progress.start_image(3, 12, "ghcr.io/example/app:1", 900 * 1024 * 1024)
    progress.add_bytes(240 * 1024 * 1024)
    progress.finish_image(ImageOutcome("ghcr.io/example/app:1", ("app:1",), "cached"))
    messages = received(notify_socket)
    # The first message carries the status and asks for more time: bytes are moving.
    assert messages[0].splitlines() == [
        "STATUS=caching 3/12: ghcr.io/example/app:1: 0 B/900 MiB",
        f"EXTEND_TIMEOUT_USEC={systemd.EXTEND_BY_SECONDS * 1_000_000}",
    ]
    # Later messages within the same second are not repeated (no flood on every chunk).
    assert len(messages) == 1


def test_notify_sends_the_summary(notify_socket: socket.socket) -> None:
    systemd.notify("STATUS=cached 2/2 images (0 new), 0 B written, 0.1 s")
    assert received(notify_socket) == ["STATUS=cached 2/2 images (0 new), 0 B written, 0.1 s"]
